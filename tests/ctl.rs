//! `fallacy ctl` against real servers on loopback: a workflow through its commands, a fleet of
//! two, and the one-line errors it owes bad input. (That it reaches every route is a unit test
//! in src/ctl.rs.)

mod support;

use std::process::Output;
use std::time::Duration;

use serde_json::{Value, json};
use support::{Echo, Fallacy};

async fn ctl(target: &str, args: &[&str]) -> Output {
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_fallacy"))
        .arg("ctl")
        .args(["--target", target])
        .args(args)
        .env_remove("FALLACY_ADMIN_TOKEN")
        .env_remove("FALLACY_TARGET")
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("fallacy ctl hung")
        .unwrap()
}

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs a command that must succeed; answers stdout.
async fn ok(target: &str, args: &[&str]) -> String {
    let o = ctl(target, args).await;
    assert!(o.status.success(), "{args:?}: {}", err(&o));
    out(&o)
}

#[tokio::test]
async fn a_workflow_through_ctl_changes_the_server_as_the_api_would() {
    let f = Fallacy::start().await;
    let echo = Echo::start().await;
    let t = f.admin.to_string();
    let t = t.as_str();
    let upstream = echo.addr.to_string();
    ok(
        t,
        &[
            "create",
            "db",
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            &upstream,
        ],
    )
    .await;
    ok(
        t,
        &[
            "create",
            "app",
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            &upstream,
            "--disabled",
        ],
    )
    .await;
    let list = ok(t, &["list"]).await;
    assert!(list.starts_with("NAME"), "{list}");
    assert!(
        list.lines()
            .any(|l| l.starts_with("db ") && l.contains(&upstream)),
        "{list}"
    );

    ok(
        t,
        &[
            "toxic",
            "add",
            "db",
            "--type",
            "latency",
            "-a",
            "latency=300",
            "-a",
            "jitter=5",
        ],
    )
    .await;
    ok(
        t,
        &[
            "toxic",
            "update",
            "db",
            "latency_downstream",
            "-a",
            "latency=50",
            "--toxicity",
            "0.5",
        ],
    )
    .await;
    let (_, toxic) = f
        .call("GET", "/proxies/db/toxics/latency_downstream", None)
        .await;
    assert_eq!(toxic["attributes"], json!({"latency": 50, "jitter": 5}));
    assert_eq!(toxic["toxicity"], 0.5);
    let shown: Value = serde_json::from_str(
        &ok(t, &["--json", "toxic", "show", "db", "latency_downstream"]).await,
    )
    .unwrap();
    assert_eq!(shown, toxic);
    assert!(
        ok(t, &["toxic", "list", "db"])
            .await
            .contains("latency_downstream  latency")
    );
    assert!(ok(t, &["show", "db"]).await.contains("enabled: true"));

    ok(t, &["toggle", "app"]).await;
    assert_eq!(f.call("GET", "/proxies/app", None).await.1["enabled"], true);
    ok(t, &["disable", "app"]).await;
    assert_eq!(
        f.call("GET", "/proxies/app", None).await.1["enabled"],
        false
    );
    ok(t, &["update", "db", "--upstream", "127.0.0.1:7"]).await;
    assert_eq!(
        f.call("GET", "/proxies/db", None).await.1["upstream"],
        "127.0.0.1:7"
    );

    ok(
        t,
        &["partition", "create", "split", "--a", "app", "--b", "db"],
    )
    .await;
    assert!(ok(t, &["partition", "list"]).await.contains("split"));
    ok(t, &["partition", "heal", "split"]).await;
    assert_eq!(f.call("GET", "/partitions", None).await.1, json!([]));

    let dir = tempfile::tempdir().unwrap();
    let scenario = dir.path().join("s.toml");
    std::fs::write(
        &scenario,
        "name = \"blip\"\nduration = \"60s\"\n[[step]]\nat = \"0s\"\nname = \"slow\"\nadd = { proxy = \"db\", name = \"blip\", type = \"latency\", attributes = { latency = 5 } }\n",
    )
    .unwrap();
    ok(t, &["scenario", "start", scenario.to_str().unwrap()]).await;
    assert!(ok(t, &["scenario", "list"]).await.contains("blip"));
    let stopped: Value =
        serde_json::from_str(&ok(t, &["--json", "scenario", "stop", "blip"]).await).unwrap();
    assert_eq!(stopped["state"], "stopped");

    let populate = dir.path().join("p.json");
    std::fs::write(
        &populate,
        json!([{"name": "cache", "listen": "127.0.0.1:0", "upstream": upstream}]).to_string(),
    )
    .unwrap();
    ok(t, &["populate", populate.to_str().unwrap()]).await;
    let stats: Value = serde_json::from_str(&ok(t, &["--json", "stats", "db"]).await).unwrap();
    assert_eq!(stats["proxy"], "db");
    let audit = ok(t, &["audit", "--limit", "3"]).await;
    assert!(audit.contains("/populate"), "{audit}");
    assert_eq!(ok(t, &["version"]).await.trim(), env!("CARGO_PKG_VERSION"));
    assert_eq!(ok(t, &["health"]).await.trim(), "ready");
    ok(t, &["metrics"]).await;
    let spec: Value = serde_json::from_str(&ok(t, &["openapi"]).await).unwrap();
    assert_eq!(spec["openapi"], "3.1.0");
    let watch = ok(t, &["watch", "--count", "1", "--interval", "100ms"]).await;
    assert!(
        watch.starts_with("PROXY") && watch.contains("db "),
        "{watch}"
    );
    ok(t, &["reset"]).await;
    assert_eq!(f.call("GET", "/proxies/db/toxics", None).await.1, json!([]));
    ok(t, &["delete", "cache"]).await;
    assert_eq!(f.call("GET", "/proxies/cache", None).await.0, 404);
    ok(t, &["shutdown"]).await;
}

#[tokio::test]
async fn a_fleet_gets_the_same_change_and_json_by_target() {
    let (a, b) = (Fallacy::start().await, Fallacy::start().await);
    let echo = Echo::start().await;
    a.proxy("db", echo.addr).await;
    b.proxy("db", echo.addr).await;
    let (ta, tb) = (a.admin.to_string(), b.admin.to_string());
    let o = tokio::process::Command::new(env!("CARGO_BIN_EXE_fallacy"))
        .args(["ctl", "-t", &ta, "-t", &tb, "--json"])
        .args([
            "toxic",
            "add",
            "db",
            "--type",
            "latency",
            "-a",
            "latency=10",
        ])
        .output()
        .await
        .unwrap();
    assert!(o.status.success(), "{}", err(&o));
    let answers: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(answers[&ta]["name"], "latency_downstream", "{answers}");
    assert_eq!(answers[&tb]["name"], "latency_downstream", "{answers}");
    for f in [&a, &b] {
        assert_eq!(
            f.call("GET", "/proxies/db/toxics", None).await.1[0]["attributes"]["latency"],
            10
        );
    }
    // Comma-separated works too, and one failing target fails the command.
    let dead = support::dead_addr().await.to_string();
    let o = ctl(&format!("{ta},{dead}"), &["list"]).await;
    assert_eq!(o.status.code(), Some(1));
    assert!(out(&o).contains(&format!("== {ta}")), "{}", out(&o));
    assert!(
        err(&o).contains(&format!("fallacy ctl: {dead}: GET")),
        "{}",
        err(&o)
    );
}

#[tokio::test]
async fn bad_input_gets_one_line_and_a_nonzero_exit() {
    let f = Fallacy::start().await;
    let t = f.admin.to_string();
    let dead = support::dead_addr().await.to_string();
    let cases: Vec<(String, Vec<&str>, i32, &str)> = vec![
        (dead.clone(), vec!["list"], 1, "Connection refused"),
        (
            t.clone(),
            vec!["show", "nope"],
            1,
            "GET /proxies/nope: 404 proxy not found",
        ),
        (
            t.clone(),
            vec!["toxic", "add", "nope", "--type", "latency"],
            1,
            "404 proxy not found",
        ),
        (
            t.clone(),
            vec!["toxic", "add", "x", "--type", "latency", "-a", "latency"],
            2,
            "expected KEY=VALUE",
        ),
        (
            t.clone(),
            vec!["update", "x"],
            2,
            "give --listen, --upstream or both",
        ),
        (
            "https://127.0.0.1:1".into(),
            vec!["list"],
            2,
            "plain http://",
        ),
        (
            t.clone(),
            vec!["populate", "/nonexistent.json"],
            2,
            "cannot read",
        ),
        (
            t.clone(),
            vec!["reload"],
            1,
            "409 fallacy was started without --config",
        ),
    ];
    for (target, args, code, words) in cases {
        let o = ctl(&target, &args).await;
        let e = err(&o);
        assert_eq!(o.status.code(), Some(code), "{args:?}: {e}");
        assert!(e.contains(words), "{args:?}: {e}");
        assert_eq!(e.trim_end().lines().count(), 1, "one line: {e}");
        assert!(!e.contains("panicked") && !e.contains("backtrace"), "{e}");
    }
    // A token the server wants, missing then given.
    let guarded = Fallacy::with_config(fallacy::config::Config {
        admin_token: Some("s3cret".into()),
        ..Default::default()
    })
    .await;
    let g = guarded.admin.to_string();
    let o = ctl(&g, &["list"]).await;
    assert_eq!(o.status.code(), Some(1));
    assert!(err(&o).contains("401"), "{}", err(&o));
    let o = ctl(&g, &["--token", "s3cret", "list"]).await;
    assert!(o.status.success(), "{}", err(&o));
}

#[tokio::test]
async fn completions_and_the_man_page_cover_ctl() {
    let run = |args: &'static [&'static str]| async move {
        let o = tokio::process::Command::new(env!("CARGO_BIN_EXE_fallacy"))
            .args(args)
            .output()
            .await
            .unwrap();
        assert!(o.status.success(), "{args:?}");
        out(&o)
    };
    let bash = run(&["completions", "bash"]).await;
    assert!(
        bash.contains("fallacy__subcmd__ctl__subcmd__toxic") && bash.contains("complete -F"),
        "bash"
    );
    assert!(
        run(&["completions", "zsh"])
            .await
            .contains("#compdef fallacy")
    );
    let man = run(&["man"]).await;
    assert!(
        man.starts_with(".ie") || man.contains(".TH fallacy"),
        "{}",
        &man[..200.min(man.len())]
    );
    assert!(man.contains("ctl"), "the man page lists ctl");
}
