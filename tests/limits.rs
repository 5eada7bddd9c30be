//! Connection limits: a proxy's own `max_connections` and the server's, through the API and
//! the config, on real sockets. (The automatic limit from the open-file limit, and descriptor
//! exhaustion itself, run the binary under `ulimit -n`: see tests/cli.rs.)

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use fallacy::config::Config;
use serde_json::json;
use support::{Echo, Fallacy, assert_reset, connect};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Whether `ping` comes back through `s` within `within` (false on a reset or EOF).
async fn echoes(s: &mut TcpStream, within: Duration) -> bool {
    let exchange = async {
        s.write_all(b"ping").await?;
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await?;
        Ok::<_, std::io::Error>(&buf == b"ping")
    };
    matches!(tokio::time::timeout(within, exchange).await, Ok(Ok(true)))
}

/// Connects through `addr`; the connection must carry bytes.
async fn admitted(addr: SocketAddr) -> TcpStream {
    let mut s = connect(addr).await;
    assert!(echoes(&mut s, Duration::from_secs(2)).await, "not admitted");
    s
}

/// Connects, or `None` when the proxy's reset came so fast that connect() reported it.
async fn try_connect(addr: SocketAddr) -> Option<TcpStream> {
    match tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr)).await {
        Ok(Ok(s)) => Some(s),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => None,
        other => panic!("connect: {other:?}"),
    }
}

/// A connection past the limit: reset at once, no byte carried.
async fn assert_refused(addr: SocketAddr) {
    if let Some(mut s) = try_connect(addr).await {
        assert_reset(&mut s, Duration::from_secs(2)).await;
    }
}

/// Retries (bounded) until a new connection through `addr` carries bytes: a slot comes back
/// when the closed connection's task has ended, a moment after the close.
async fn admitted_soon(addr: SocketAddr) -> TcpStream {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(mut s) = try_connect(addr).await {
            if echoes(&mut s, Duration::from_millis(500)).await {
                return s;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the freed slot never came back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_proxy_at_its_limit_resets_new_connections_until_one_closes() {
    let echo = Echo::start().await;
    let f = Fallacy::start().await;
    let body = json!({"name": "p", "listen": "127.0.0.1:0", "upstream": echo.addr.to_string(),
                      "max_connections": 2});
    let (status, proxy) = f.call("POST", "/proxies", Some(&body.to_string())).await;
    assert_eq!(status, 201, "{proxy}");
    assert_eq!(proxy["max_connections"], 2, "{proxy}");
    let addr: SocketAddr = proxy["listen"].as_str().unwrap().parse().unwrap();

    let first = admitted(addr).await;
    let _second = admitted(addr).await;
    assert_refused(addr).await;
    drop(first);
    let _third = admitted_soon(addr).await;
    assert_refused(addr).await;

    // Raised through the API: the next connections are admitted; 0 lifts the limit and the
    // proxy's JSON no longer shows one.
    let (status, proxy) = f
        .call("POST", "/proxies/p", Some(r#"{"max_connections": 0}"#))
        .await;
    assert_eq!(status, 200, "{proxy}");
    assert!(proxy.get("max_connections").is_none(), "{proxy}");
    let mut more = Vec::new();
    for _ in 0..5 {
        more.push(admitted(addr).await);
    }
}

#[tokio::test]
async fn the_server_limit_counts_the_connections_of_every_proxy() {
    let echo = Echo::start().await;
    let f = Fallacy::with_config(Config {
        max_connections: Some(3),
        ..Config::default()
    })
    .await;
    let a = f.proxy("a", echo.addr).await;
    let b = f.proxy("b", echo.addr).await;
    let held = [admitted(a).await, admitted(b).await, admitted(b).await];
    assert_refused(a).await;
    assert_refused(b).await;
    drop(held);
    let _again = admitted_soon(a).await;
}

#[tokio::test]
async fn a_bad_max_connections_is_refused_naming_the_field_and_changes_nothing() {
    let echo = Echo::start().await;
    let f = Fallacy::start().await;
    for (value, words) in [
        (json!(-1), "-1 is not a connection count"),
        (json!("ten"), "\"ten\" is not a connection count"),
        (json!(2.5), "2.5 is not a connection count"),
        (
            json!(1_000_000_000u64),
            "out of range: 0 (no limit) to 100000000",
        ),
    ] {
        let body = json!({"name": "p", "listen": "127.0.0.1:0",
                          "upstream": echo.addr.to_string(), "max_connections": value});
        let (status, err) = f.call("POST", "/proxies", Some(&body.to_string())).await;
        assert_eq!(status, 400, "{body}: {err}");
        let message = err["error"].as_str().unwrap();
        assert!(
            message.contains("max_connections") && message.contains(words),
            "{body}: {err}"
        );
        let (status, _) = f.call("GET", "/proxies/p", None).await;
        assert_eq!(status, 404, "{body} created the proxy anyway");
    }
    // On an existing proxy the update is refused whole: the upstream does not change either.
    f.proxy("q", echo.addr).await;
    let (status, err) = f
        .call(
            "POST",
            "/proxies/q",
            Some(r#"{"upstream": "127.0.0.1:1", "max_connections": "many"}"#),
        )
        .await;
    assert_eq!(status, 400, "{err}");
    let (_, proxy) = f.call("GET", "/proxies/q", None).await;
    assert_eq!(proxy["upstream"], echo.addr.to_string(), "{proxy}");
}

/// `[server] idle_timeout`: a connection silent both ways that long is closed (FIN to both
/// sides); one that keeps talking stays open.
#[tokio::test]
async fn an_idle_connection_is_closed_and_a_busy_one_is_not() {
    let echo = Echo::start().await;
    let limit = Duration::from_millis(400);
    let f = Fallacy::with_config(Config {
        idle_timeout: Some(limit),
        ..Config::default()
    })
    .await;
    let addr = f.proxy("p", echo.addr).await;

    let mut idle = admitted(addr).await;
    let quiet_from = tokio::time::Instant::now();
    let closed = tokio::spawn(async move {
        let mut buf = [0u8; 8];
        let read = tokio::time::timeout(Duration::from_secs(3), idle.read(&mut buf)).await;
        let n = read
            .expect("the idle connection was never closed")
            .expect("closed with a FIN, not a reset");
        assert_eq!(n, 0, "data on an idle connection");
        quiet_from.elapsed()
    });
    let mut busy = admitted(addr).await;
    // The busy one talks every 100 ms for 1.5 s, well past the limit.
    for _ in 0..15 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            echoes(&mut busy, Duration::from_secs(1)).await,
            "the busy connection was closed"
        );
    }
    let after = closed.await.unwrap();
    // Checked every quarter of the limit: closed between 1 and 1.25 times it, plus the
    // scheduling of a busy machine; the busy one was still talking then.
    assert!(
        after >= limit && after < limit * 5 / 4 + Duration::from_millis(500),
        "closed after {after:?}"
    );
}
