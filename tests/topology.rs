//! Topology changes (fallacy 5): switching the upstream at runtime, with and without draining
//! the open connections, and several upstreams with failover or round robin.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::json;
use support::{Echo, Fallacy, connect, dead_addr, read_exact, read_to_end, round_trip};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

/// An upstream that says its name (one byte) on every connection, then holds it open.
async fn namer(name: u8) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let serve = async {
            let mut held = Vec::new();
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                let _ = s.write_all(&[name]).await;
                held.push(s);
            }
        };
        let _ = tokio::time::timeout(support::SERVER_LIFETIME, serve).await;
    });
    addr
}

async fn first_byte(addr: SocketAddr) -> u8 {
    let mut s = connect(addr).await;
    read_exact(&mut s, 1, Duration::from_secs(5)).await[0]
}

#[tokio::test]
async fn an_upstream_change_with_drain_closes_open_connections() {
    let f = Fallacy::start().await;
    let (a, b) = (Echo::start().await, namer(b'B').await);
    let addr = f.proxy("p", a.addr).await;
    let mut old = connect(addr).await;
    round_trip(&mut old, b"on a").await;
    // Without drain the open connection keeps its upstream ...
    let body = json!({"upstream": b.to_string()}).to_string();
    let (status, p) = f.call("PATCH", "/proxies/p", Some(&body)).await;
    assert_eq!(status, 200, "{p}");
    round_trip(&mut old, b"still a").await;
    assert_eq!(first_byte(addr).await, b'B');
    // ... with it, open connections close, and new ones go to the new upstream.
    let body = json!({"upstream": a.addr.to_string()}).to_string();
    let (status, _) = f.call("PATCH", "/proxies/p?drain=true", Some(&body)).await;
    assert_eq!(status, 200);
    assert!(
        read_to_end(&mut old, Duration::from_secs(5))
            .await
            .unwrap_or_default()
            .is_empty()
    );
    let mut new = connect(addr).await;
    round_trip(&mut new, b"on a again").await;
    let (status, err) = f.call("PATCH", "/proxies/p?drain=maybe", Some("{}")).await;
    assert_eq!(status, 400);
    assert!(
        err["error"]
            .as_str()
            .unwrap()
            .contains("drain must be true or false"),
        "{err}"
    );
}

#[tokio::test]
async fn failover_skips_a_dead_upstream() {
    let f = Fallacy::start().await;
    let (dead, live) = (dead_addr().await, namer(b'L').await);
    let body = json!({"name": "p", "listen": "127.0.0.1:0",
                      "upstreams": [dead.to_string(), live.to_string()]});
    let (status, p) = f.call("POST", "/proxies", Some(&body.to_string())).await;
    assert_eq!(status, 201, "{p}");
    assert_eq!(p["upstream"], dead.to_string(), "upstream shows the first");
    assert_eq!(p["policy"], "failover");
    let addr: SocketAddr = p["listen"].as_str().unwrap().parse().unwrap();
    for _ in 0..3 {
        assert_eq!(first_byte(addr).await, b'L');
    }
}

#[tokio::test]
async fn round_robin_takes_turns() {
    let f = Fallacy::start().await;
    let (a, b) = (namer(b'A').await, namer(b'B').await);
    let body = json!({"name": "p", "listen": "127.0.0.1:0", "upstreams": [a.to_string(), b.to_string()],
                      "policy": "round_robin"});
    let (_, p) = f.call("POST", "/proxies", Some(&body.to_string())).await;
    let addr: SocketAddr = p["listen"].as_str().unwrap().parse().unwrap();
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(first_byte(addr).await);
    }
    assert!(
        seen == b"ABAB" || seen == b"BABA",
        "{:?}",
        String::from_utf8_lossy(&seen)
    );
    // A plain upstream replaces the set.
    let (_, p) = f
        .call(
            "PATCH",
            "/proxies/p",
            Some(&json!({"upstream": a.to_string()}).to_string()),
        )
        .await;
    assert!(p.get("upstreams").is_none(), "{p}");
    assert_eq!(first_byte(addr).await, b'A');
    assert_eq!(first_byte(addr).await, b'A');
}

#[tokio::test]
async fn bad_upstream_sets_are_refused_by_field() {
    let f = Fallacy::start().await;
    for (body, words) in [
        (
            json!({"name": "p", "upstreams": []}),
            "upstreams: must list at least one address",
        ),
        (
            json!({"name": "p", "upstreams": ["nowhere"]}),
            "upstreams[0]:",
        ),
        (
            json!({"name": "p", "upstreams": [5]}),
            "upstreams[0]: must be a string",
        ),
        (
            json!({"name": "p", "upstreams": "127.0.0.1:1"}),
            "upstreams: must be a list",
        ),
        (
            json!({"name": "p", "upstream": "127.0.0.1:1", "policy": "round_robin"}),
            "policy: needs upstreams",
        ),
        (
            json!({"name": "p", "upstreams": ["127.0.0.1:1"], "policy": "random"}),
            "policy: must be \"failover\" or \"round_robin\"",
        ),
        (
            json!({"name": "p", "upstream": "127.0.0.1:2", "upstreams": ["127.0.0.1:1"]}),
            "must be the first of upstreams",
        ),
    ] {
        let (status, err) = f.call("POST", "/proxies", Some(&body.to_string())).await;
        assert_eq!(status, 400, "{body}: {err}");
        assert!(
            err["error"].as_str().unwrap().contains(words),
            "{body}: {err}"
        );
    }
    let (_, all) = f.call("GET", "/proxies", None).await;
    assert_eq!(all, json!({}));
}

/// `flap`: the link starts up, goes down (connections reset, new ones refused), comes back,
/// and removing the toxic brings it up at once.
#[tokio::test]
async fn flap_takes_the_link_down_and_up_again() {
    let f = Fallacy::start().await;
    let echo = Echo::start().await;
    let addr = f.proxy("p", echo.addr).await;
    let t = f
        .toxic(
            "p",
            json!({"name": "f", "type": "flap", "attributes": {"up": 400, "down": "400ms"}}),
        )
        .await;
    assert_eq!(t["attributes"], json!({"down": 400, "up": 400}));
    let mut s = connect(addr).await;
    round_trip(&mut s, b"up").await;
    tokio::time::sleep(Duration::from_millis(550)).await;
    // Down: the open connection was reset, a new one is refused.
    support::assert_reset(&mut s, Duration::from_secs(2)).await;
    support::assert_refused(addr, Duration::from_secs(2)).await;
    // Up again after the down period.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let mut back = connect(addr).await;
    round_trip(&mut back, b"back").await;
    // Removed while up or down: up at once, for good.
    let (status, _) = f.call("DELETE", "/proxies/p/toxics/f", None).await;
    assert_eq!(status, 204);
    for _ in 0..3 {
        let mut s = connect(addr).await;
        round_trip(&mut s, b"steady").await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for (attrs, words) in [
        (
            json!({"up": 0, "down": 1}),
            "attributes.up: must be more than 0",
        ),
        (
            json!({"up": 1, "down": 1, "distribution": "pareto"}),
            "attributes.distribution",
        ),
        (
            json!({"up": 1, "down": 1, "mode": "drop"}),
            "attributes.mode",
        ),
    ] {
        let body = json!({"type": "flap", "attributes": attrs}).to_string();
        let (status, err) = f.call("POST", "/proxies/p/toxics", Some(&body)).await;
        assert_eq!(status, 400, "{err}");
        assert!(err["error"].as_str().unwrap().contains(words), "{err}");
    }
}
