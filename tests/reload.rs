//! Reloading the config file (`POST /reload`; SIGHUP is in tests/cli.rs): only what changed is
//! applied, untouched proxies keep their connections, an invalid file changes nothing.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use support::{Echo, Fallacy, connect, round_trip};

fn config(a_latency: u64, extra: &str, upstream_b: SocketAddr, upstream: SocketAddr) -> String {
    format!(
        r#"
[[proxy]]
name = "a"
listen = "127.0.0.1:0"
upstream = "{upstream}"
[[proxy.toxic]]
name = "slow"
type = "latency"
attributes = {{ latency = {a_latency} }}

[[proxy]]
name = "b"
listen = "127.0.0.1:0"
upstream = "{upstream_b}"
labels = {{ from = "app", to = "db" }}
{extra}
"#
    )
}

async fn listen(f: &Fallacy, name: &str) -> SocketAddr {
    f.call("GET", &format!("/proxies/{name}"), None).await.1["listen"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

async fn names(f: &Fallacy) -> Vec<String> {
    let (_, proxies) = f.call("GET", "/proxies", None).await;
    proxies.as_object().unwrap().keys().cloned().collect()
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

#[tokio::test]
async fn a_reload_applies_only_the_difference_and_an_invalid_file_nothing() {
    let (echo, echo2) = (Echo::start().await, Echo::start().await);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fallacy.toml");
    write(&path, &config(10, "", echo.addr, echo.addr));
    let f = Fallacy::with_config(fallacy::config::load(&path).unwrap()).await;
    let (a, b) = (listen(&f, "a").await, listen(&f, "b").await);
    let mut through_a = connect(a).await;
    let mut through_b = connect(b).await;
    round_trip(&mut through_a, b"one").await;
    round_trip(&mut through_b, b"one").await;
    // The API's own toxic on b, under another name, is not the file's business.
    f.toxic(
        "b",
        json!({"name": "mine", "type": "latency", "attributes": {"latency": 1}}),
    )
    .await;

    // a's toxic changes, c is added, b stays.
    let c = "[[proxy]]\nname = \"c\"\nlisten = \"127.0.0.1:0\"\nupstream = \"127.0.0.1:9\"\n";
    write(&path, &config(50, c, echo.addr, echo.addr));
    let (status, report) = f.call("POST", "/reload", None).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["added"], json!(["c"]));
    assert_eq!(report["changed"], json!(["a"]));
    assert_eq!(report["unchanged"], json!(["b"]));
    assert_eq!(report["removed"], json!([]));
    assert_eq!(report["errors"], json!([]));
    let (_, slow) = f.call("GET", "/proxies/a/toxics/slow", None).await;
    assert_eq!(slow["attributes"]["latency"], 50);
    assert_eq!(
        listen(&f, "a").await,
        a,
        "a toxic change keeps the listener"
    );
    // Both connections are still the ones opened before; a's now pays the new latency.
    let took = round_trip(&mut through_a, b"two").await;
    assert!(took >= Duration::from_millis(50), "{took:?}");
    round_trip(&mut through_b, b"two").await;

    // An invalid file: 400 naming the file and line; nothing changes.
    write(&path, "[[proxy]]\nname = \"a\"\nlisten = \n");
    let (status, err) = f.call("POST", "/reload", None).await;
    assert_eq!(status, 400, "{err}");
    let message = err["error"].as_str().unwrap();
    assert!(message.contains("fallacy.toml:3"), "{message}");
    assert!(message.contains("not applied"), "{message}");
    assert_eq!(names(&f).await, ["a", "b", "c"]);

    // c goes, b's upstream changes in place (its open connection keeps the old one), and a
    // partition appears.
    let partition = "[[partition]]\nname = \"split\"\na = [\"app\"]\nb = [\"db\"]\n";
    write(&path, &config(50, partition, echo2.addr, echo.addr));
    let (status, report) = f.call("POST", "/reload", None).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["removed"], json!(["c"]));
    assert_eq!(report["changed"], json!(["b"]));
    assert_eq!(names(&f).await, ["a", "b"]);
    let (_, b_now) = f.call("GET", "/proxies/b", None).await;
    assert_eq!(b_now["upstream"], echo2.addr.to_string());
    assert_eq!(listen(&f, "b").await, b);
    let (_, toxics) = f.call("GET", "/proxies/b/toxics", None).await;
    assert_eq!(toxics[0]["name"], "mine", "the API's toxic stays");
    let (status, _) = f.call("GET", "/partitions/split", None).await;
    assert_eq!(status, 200);

    // Back without the partition: it heals.
    write(&path, &config(50, "", echo2.addr, echo.addr));
    let (_, report) = f.call("POST", "/reload", None).await;
    assert_eq!(report["unchanged"], json!(["a", "b"]), "{report}");
    let (status, _) = f.call("GET", "/partitions/split", None).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn a_listen_address_in_use_is_reported_and_retried_at_the_next_reload() {
    let echo = Echo::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fallacy.toml");
    write(&path, &config(10, "", echo.addr, echo.addr));
    let f = Fallacy::with_config(fallacy::config::load(&path).unwrap()).await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().unwrap();
    let d = format!("[[proxy]]\nname = \"d\"\nlisten = \"{busy}\"\nupstream = \"127.0.0.1:9\"\n");
    write(&path, &config(10, &d, echo.addr, echo.addr));
    let (status, report) = f.call("POST", "/reload", None).await;
    assert_eq!(status, 200, "{report}");
    let errors = report["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{report}");
    assert!(
        errors[0].as_str().unwrap().contains("proxy \"d\""),
        "{report}"
    );
    assert_eq!(names(&f).await, ["a", "b"]);
    drop(taken);
    let (_, report) = f.call("POST", "/reload", None).await;
    assert_eq!(report["added"], json!(["d"]), "tried again: {report}");
}

#[tokio::test]
async fn without_a_config_file_there_is_nothing_to_reload() {
    let f = Fallacy::start().await;
    let (status, err): (u16, Value) = f.call("POST", "/reload", None).await;
    assert_eq!(status, 409, "{err}");
    assert!(
        err["error"].as_str().unwrap().contains("without --config"),
        "{err}"
    );
}
