//! Partitions between groups of nodes, on real sockets: both directions and one way, open and
//! new connections, heal by DELETE and by `duration`, reset mode, proxies named whole, HTTP
//! proxies, the config file, and bad input.

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use support::{Echo, Fallacy, assert_reset, assert_silent, connect, read_exact, round_trip};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const QUIET: Duration = Duration::from_millis(300);
const SOON: Duration = Duration::from_secs(5);

/// A proxy `name` on 127.0.0.1:0 joining `from` to `to`.
async fn labelled(f: &Fallacy, name: &str, up: SocketAddr, from: &str, to: &str) -> SocketAddr {
    let body = json!({"name": name, "listen": "127.0.0.1:0", "upstream": up.to_string(),
                      "labels": {"from": from, "to": to}});
    let (status, p) = f.call("POST", "/proxies", Some(&body.to_string())).await;
    assert_eq!(status, 201, "{p}");
    assert_eq!(p["labels"], json!({"from": from, "to": to}));
    p["listen"].as_str().unwrap().parse().unwrap()
}

async fn partition(f: &Fallacy, body: Value) -> Value {
    let (status, p) = f.call("POST", "/partitions", Some(&body.to_string())).await;
    assert_eq!(status, 201, "{p}");
    p
}

async fn heal(f: &Fallacy, name: &str) {
    let (status, body) = f.call("DELETE", &format!("/partitions/{name}"), None).await;
    assert_eq!(status, 204, "{body}");
}

/// An upstream that keeps talking on its own ("tick" every 50 ms) and records what it
/// receives, so each direction can be watched apart.
async fn talker() -> (SocketAddr, Arc<Mutex<Vec<u8>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let got = Arc::new(Mutex::new(Vec::new()));
    let seen = got.clone();
    tokio::spawn(async move {
        let Ok(Ok((s, _))) =
            tokio::time::timeout(support::SERVER_LIFETIME, listener.accept()).await
        else {
            return;
        };
        let (mut r, mut w) = s.into_split();
        let seen2 = seen.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            while let Ok(n) = r.read(&mut buf).await {
                if n == 0 {
                    return;
                }
                seen2.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        for _ in 0..400 {
            if w.write_all(b"tick").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    (addr, got)
}

#[tokio::test]
async fn a_one_way_partition_holds_a_to_b_and_lets_b_to_a_flow_then_delivers_on_heal() {
    let f = Fallacy::start().await;
    let (up, received) = talker().await;
    let addr = labelled(&f, "app-db", up, "app", "db").await;
    let mut s = connect(addr).await;
    assert_eq!(read_exact(&mut s, 4, SOON).await, b"tick");
    let p = partition(
        &f,
        json!({"name": "split", "a": ["app"], "b": ["db"], "direction": "a_to_b"}),
    )
    .await;
    assert_eq!(p["proxies"], json!(["app-db"]));
    assert_eq!(p["mode"], "blackhole");
    let (_, proxy) = f.call("GET", "/proxies/app-db", None).await;
    assert_eq!(
        proxy["partitioned"],
        json!({"upstream": true, "downstream": false, "mode": "blackhole"})
    );
    // app to db is held: the open connection stays open, the bytes do not arrive ...
    s.write_all(b"order 1").await.unwrap();
    tokio::time::sleep(QUIET).await;
    assert!(received.lock().unwrap().is_empty(), "a held byte arrived");
    // ... while db to app flows.
    assert_eq!(read_exact(&mut s, 4, SOON).await, b"tick");
    heal(&f, "split").await;
    let deadline = tokio::time::Instant::now() + SOON;
    while received.lock().unwrap().as_slice() != b"order 1" {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the held bytes never came"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (_, list) = f.call("GET", "/partitions", None).await;
    assert_eq!(list, json!([]));
}

#[tokio::test]
async fn a_blackhole_holds_open_and_new_connections_until_it_heals() {
    let f = Fallacy::start().await;
    let echo = Echo::start().await;
    let addr = labelled(&f, "app-db", echo.addr, "app", "db").await;
    let mut open = connect(addr).await;
    round_trip(&mut open, b"before").await;
    partition(&f, json!({"name": "split", "a": ["db"], "b": ["app"]})).await;
    open.write_all(b"during").await.unwrap();
    assert_silent(&mut open, QUIET).await;
    // A new connection is accepted (the listener is fallacy's) but its dial waits.
    let mut new = connect(addr).await;
    new.write_all(b"new").await.unwrap();
    assert_silent(&mut new, QUIET).await;
    heal(&f, "split").await;
    assert_eq!(read_exact(&mut open, 6, SOON).await, b"during");
    assert_eq!(read_exact(&mut new, 3, SOON).await, b"new");
    round_trip(&mut open, b"after").await;
}

#[tokio::test]
async fn a_partition_heals_itself_after_its_duration() {
    let f = Fallacy::start().await;
    let echo = Echo::start().await;
    let addr = labelled(&f, "app-db", echo.addr, "app", "db").await;
    let mut s = connect(addr).await;
    let p = partition(
        &f,
        json!({"name": "blip", "a": ["app"], "b": ["db"], "duration": "400ms"}),
    )
    .await;
    assert_eq!(p["duration"], "400ms");
    let start = std::time::Instant::now();
    let took = round_trip(&mut s, b"held").await;
    assert!(took >= Duration::from_millis(350), "{took:?}");
    assert!(start.elapsed() < Duration::from_secs(3));
    let (_, list) = f.call("GET", "/partitions", None).await;
    assert_eq!(list, json!([]));
    let (status, _) = f.call("DELETE", "/partitions/blip", None).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn reset_mode_resets_open_connections_and_refuses_new_ones() {
    let f = Fallacy::start().await;
    let echo = Echo::start().await;
    let addr = labelled(&f, "app-db", echo.addr, "app", "db").await;
    let mut open = connect(addr).await;
    round_trip(&mut open, b"hi").await;
    partition(
        &f,
        json!({"name": "cut", "a": ["app"], "b": ["db"], "mode": "reset", "direction": "a_to_b"}),
    )
    .await;
    assert_reset(&mut open, SOON).await;
    support::assert_refused(addr, SOON).await;
    heal(&f, "cut").await;
    let mut after = connect(addr).await;
    round_trip(&mut after, b"back").await;
}

/// The README's example: three nodes, six proxies, node 3 isolated from 1 and 2; the link
/// between 1 and 2 keeps working, and a proxy named in a group is cut whole.
#[tokio::test]
async fn isolating_a_node_of_three_cuts_its_links_only() {
    let f = Fallacy::start().await;
    let echo = Echo::start().await;
    let mut addrs = std::collections::BTreeMap::new();
    for (a, b) in [(1, 2), (2, 1), (1, 3), (3, 1), (2, 3), (3, 2)] {
        let name = format!("n{a}-n{b}");
        let addr = labelled(&f, &name, echo.addr, &format!("n{a}"), &format!("n{b}")).await;
        addrs.insert(name, addr);
    }
    let p = partition(&f, json!({"name": "iso3", "a": ["n3"], "b": ["n1", "n2"]})).await;
    assert_eq!(p["proxies"], json!(["n1-n3", "n2-n3", "n3-n1", "n3-n2"]));
    let mut ok = connect(addrs["n1-n2"]).await;
    round_trip(&mut ok, b"fine").await;
    let mut cut = connect(addrs["n1-n3"]).await;
    cut.write_all(b"lost").await.unwrap();
    assert_silent(&mut cut, QUIET).await;
    heal(&f, "iso3").await;
    assert_eq!(read_exact(&mut cut, 4, SOON).await, b"lost");
    // A proxy's own name cuts it whole, labels or not.
    partition(&f, json!({"name": "one", "a": ["n1-n2"], "b": ["n3"]})).await;
    let mut whole = connect(addrs["n1-n2"]).await;
    whole.write_all(b"x").await.unwrap();
    assert_silent(&mut whole, QUIET).await;
}

#[tokio::test]
async fn an_http_proxy_holds_requests_during_a_partition() {
    let f = Fallacy::start().await;
    let app = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
    let up = support::serve_app(app).await;
    let body = json!({"name": "web", "listen": "127.0.0.1:0", "upstream": up.to_string(),
                      "protocol": "http", "labels": {"from": "app", "to": "web"}});
    let (_, p) = f.call("POST", "/proxies", Some(&body.to_string())).await;
    let url = format!("http://{}/", p["listen"].as_str().unwrap());
    partition(&f, json!({"name": "s", "a": ["app"], "b": ["web"]})).await;
    let c = reqwest::Client::new();
    let held = tokio::spawn({
        let (c, url) = (c.clone(), url.clone());
        async move { c.get(url).send().await.unwrap().text().await.unwrap() }
    });
    tokio::time::sleep(QUIET).await;
    assert!(!held.is_finished(), "the request went through a partition");
    heal(&f, "s").await;
    assert_eq!(
        tokio::time::timeout(SOON, held).await.unwrap().unwrap(),
        "ok"
    );
    partition(
        &f,
        json!({"name": "r", "a": ["app"], "b": ["web"], "mode": "reset"}),
    )
    .await;
    assert!(
        c.get(&url).send().await.is_err(),
        "reset mode answers nothing"
    );
}

#[tokio::test]
async fn bad_partitions_are_refused_by_field_and_change_nothing() {
    let f = Fallacy::start().await;
    let echo = Echo::start().await;
    labelled(&f, "app-db", echo.addr, "app", "db").await;
    partition(&f, json!({"name": "s", "a": ["app"], "b": ["db"]})).await;
    for (body, status, words) in [
        (
            json!({"name": "s", "a": ["app"], "b": ["db"]}),
            409,
            "partition already exists",
        ),
        (
            json!({"name": "t", "a": ["app"], "b": ["dbx"]}),
            400,
            "b[0]: unknown node or proxy \"dbx\"",
        ),
        (
            json!({"name": "t", "a": ["app", "db"], "b": ["db"]}),
            400,
            "in both groups",
        ),
        (json!({"a": ["app"], "b": ["db"]}), 400, "name: required"),
        (
            json!({"name": "t", "a": ["app"], "b": ["db"], "direction": "b_to_a"}),
            400,
            "direction",
        ),
        (
            json!({"name": "t", "a": ["app"], "b": ["db"], "duration": "soon"}),
            400,
            "duration",
        ),
        (json!([1]), 400, "partition: must be a JSON object"),
    ] {
        let (got, err) = f.call("POST", "/partitions", Some(&body.to_string())).await;
        assert_eq!(got, status, "{body}: {err}");
        assert!(
            err["error"].as_str().unwrap().contains(words),
            "{body}: {err}"
        );
    }
    let (_, list) = f.call("GET", "/partitions", None).await;
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    let (status, _) = f.call("GET", "/partitions/nope", None).await;
    assert_eq!(status, 404);
    let (status, _) = f.call("DELETE", "/partitions/nope", None).await;
    assert_eq!(status, 404);
    let (status, err) = f
        .call(
            "PATCH",
            "/proxies/app-db",
            Some(r#"{"labels": {"from": "app"}}"#),
        )
        .await;
    assert_eq!(status, 400);
    assert!(
        err["error"].as_str().unwrap().contains("labels.to"),
        "{err}"
    );
    // POST /reset heals partitions with the toxics.
    let (status, _) = f.call("POST", "/reset", None).await;
    assert_eq!(status, 204);
    let (_, list) = f.call("GET", "/partitions", None).await;
    assert_eq!(list, json!([]));
}

/// A `[[partition]]` in the config file is in force from the start, and heals like any other.
#[tokio::test]
async fn a_config_file_partition_is_in_force_from_the_start() {
    let echo = Echo::start().await;
    let text = format!(
        "[[proxy]]\nname = \"app-db\"\nupstream = \"{}\"\nlabels = {{ from = \"app\", to = \"db\" }}\n\n\
         [[partition]]\nname = \"boot\"\na = [\"app\"]\nb = [\"db\"]\ndirection = \"a_to_b\"\n",
        echo.addr
    );
    let config = fallacy::config::parse(&text, false).unwrap();
    let f = Fallacy::with_config(config).await;
    let (_, list) = f.call("GET", "/partitions", None).await;
    assert_eq!(list[0]["name"], "boot");
    assert_eq!(list[0]["proxies"], json!(["app-db"]));
    let (_, p) = f.call("GET", "/proxies/app-db", None).await;
    let mut s = connect(p["listen"].as_str().unwrap().parse().unwrap()).await;
    s.write_all(b"x").await.unwrap();
    assert_silent(&mut s, QUIET).await;
    heal(&f, "boot").await;
    assert_eq!(read_exact(&mut s, 1, SOON).await, b"x");
}
