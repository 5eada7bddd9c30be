//! There is more than one administrator (fallacy 6): toxics and partitions carry a `ttl` and an
//! `owner`, `GET /audit` tells who changed what, and admins racing each other get clean
//! answers, never a panic or a ghost toxic.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::{Echo, Fallacy, connect, round_trip};

async fn with_proxy() -> (Fallacy, Echo, std::net::SocketAddr) {
    let f = Fallacy::start().await;
    let echo = Echo::start().await;
    let addr = f.proxy("p", echo.addr).await;
    (f, echo, addr)
}

async fn toxics(f: &Fallacy) -> Value {
    f.call("GET", "/proxies/p/toxics", None).await.1
}

/// Polls (bounded) until proxy `p` has no toxic left.
async fn gone_within(f: &Fallacy, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    while toxics(f).await != json!([]) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the toxic outlived its ttl"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_toxic_with_a_ttl_removes_itself_and_shows_its_owner() {
    let (f, _echo, addr) = with_proxy().await;
    let t = f
        .toxic(
            "p",
            json!({"name": "slow", "type": "latency", "attributes": {"latency": 200}, "ttl": "400ms", "owner": "ci-job-7"}),
        )
        .await;
    assert_eq!(t["ttl"], "400ms");
    assert_eq!(t["owner"], "ci-job-7");
    let mut s = connect(addr).await;
    assert!(round_trip(&mut s, b"a").await >= Duration::from_millis(200));
    gone_within(&f, Duration::from_secs(5)).await;
    // The open connection is back to full speed.
    assert!(round_trip(&mut s, b"b").await < Duration::from_millis(100));
}

#[tokio::test]
async fn an_update_with_a_new_ttl_moves_the_expiry_and_one_without_keeps_it() {
    let (f, _echo, _addr) = with_proxy().await;
    f.toxic("p", json!({"name": "n", "type": "noop", "ttl": 300}))
        .await;
    // Extended before it runs out: it survives the first deadline.
    let (status, t) = f
        .call(
            "PATCH",
            "/proxies/p/toxics/n",
            Some(r#"{"ttl": "2s", "owner": "me"}"#),
        )
        .await;
    assert_eq!(status, 200, "{t}");
    assert_eq!(
        (t["ttl"].as_str(), t["owner"].as_str()),
        (Some("2s"), Some("me"))
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(toxics(&f).await.as_array().unwrap().len(), 1);
    // An update that says nothing of the ttl keeps the deadline.
    let (_, t) = f
        .call("PATCH", "/proxies/p/toxics/n", Some(r#"{"toxicity": 0.5}"#))
        .await;
    assert_eq!(t["ttl"], "2s");
    gone_within(&f, Duration::from_secs(5)).await;
}

#[tokio::test]
async fn bad_ttls_and_owners_are_refused_by_field() {
    let (f, _echo, _addr) = with_proxy().await;
    for (body, words) in [
        (json!({"type": "noop", "ttl": "soon"}), "ttl: "),
        (
            json!({"type": "noop", "ttl": 0}),
            "ttl: must be more than 0",
        ),
        (
            json!({"type": "noop", "ttl": -5}),
            "ttl: -5 is not a positive whole number",
        ),
        (
            json!({"type": "noop", "ttl": true}),
            "ttl: must be a duration",
        ),
        (
            json!({"type": "noop", "owner": "x".repeat(300)}),
            "owner: at most 200 bytes",
        ),
    ] {
        let (status, err) = f
            .call("POST", "/proxies/p/toxics", Some(&body.to_string()))
            .await;
        assert_eq!(status, 400, "{body}: {err}");
        assert!(
            err["error"].as_str().unwrap().contains(words),
            "{body}: {err}"
        );
    }
    assert_eq!(toxics(&f).await, json!([]));
}

#[tokio::test]
async fn the_audit_log_names_each_change_its_owner_and_result() {
    let (f, _echo, _addr) = with_proxy().await;
    f.toxic("p", json!({"name": "a", "type": "noop", "owner": "alice"}))
        .await;
    let resp = f
        .http
        .delete(f.url("/proxies/p/toxics/a"))
        .header("x-fallacy-owner", "bob")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let (status, _) = f.call("DELETE", "/proxies/p/toxics/a", None).await;
    assert_eq!(status, 404);
    // Reads are not changes.
    f.call("GET", "/proxies", None).await;
    let (status, log) = f.call("GET", "/audit?limit=3", None).await;
    assert_eq!(status, 200, "{log}");
    let rows: Vec<(String, String, Value, u64)> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["method"].as_str().unwrap().to_owned(),
                e["path"].as_str().unwrap().to_owned(),
                e["owner"].clone(),
                e["status"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            (
                "POST".into(),
                "/proxies/p/toxics".into(),
                json!("alice"),
                200
            ),
            (
                "DELETE".into(),
                "/proxies/p/toxics/a".into(),
                json!("bob"),
                204
            ),
            (
                "DELETE".into(),
                "/proxies/p/toxics/a".into(),
                Value::Null,
                404
            ),
        ]
    );
    assert!(log[0]["time"].as_str().unwrap().ends_with("GMT"), "{log}");
    assert!(log[0]["time_unix_ms"].as_u64().unwrap() > 1_700_000_000_000);
    let (status, err) = f.call("GET", "/audit?limit=0", None).await;
    assert_eq!(status, 400, "{err}");
}

/// Updates racing deletes: each answer is a clean 200, 204 or 404, and no toxic is left
/// behind that the last answers said was gone.
#[tokio::test]
async fn racing_admins_get_clean_answers_and_no_ghost_toxics() {
    let (f, _echo, _addr) = with_proxy().await;
    let f = std::sync::Arc::new(f);
    for round in 0..20 {
        let name = format!("t{round}");
        f.toxic(
            "p",
            json!({"name": name, "type": "latency", "attributes": {"latency": 1}}),
        )
        .await;
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..6 {
            let (f, name) = (f.clone(), name.clone());
            tasks.spawn(async move {
                let path = format!("/proxies/p/toxics/{name}");
                if i % 2 == 0 {
                    f.call("DELETE", &path, None).await.0
                } else {
                    f.call("PATCH", &path, Some(r#"{"attributes": {"latency": 2}}"#))
                        .await
                        .0
                }
            });
        }
        let mut deletes_ok = 0;
        while let Some(status) = tasks.join_next().await {
            let status = status.unwrap();
            assert!([200, 204, 404].contains(&status), "status {status}");
            deletes_ok += usize::from(status == 204);
        }
        assert_eq!(deletes_ok, 1, "exactly one delete found the toxic");
        assert_eq!(toxics(&f).await, json!([]), "round {round}: a ghost toxic");
    }
}
