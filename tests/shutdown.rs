//! Graceful shutdown: stop accepting at once, let open connections finish within the grace
//! period, close what is left after it.

mod support;

use std::time::{Duration, Instant};

use fallacy::config::Config;
use serde_json::json;
use support::{Echo, Fallacy, assert_closed, connect, read_exact, read_to_end};
use tokio::io::AsyncWriteExt;

async fn setup(grace: Duration, latency_ms: u64) -> (Fallacy, Echo, std::net::SocketAddr) {
    let f = Fallacy::with_config(Config {
        shutdown_grace: grace,
        ..Config::default()
    })
    .await;
    let echo = Echo::start().await;
    let addr = f.proxy("p", echo.addr).await;
    f.toxic(
        "p",
        json!({"type": "latency", "attributes": {"latency": latency_ms}}),
    )
    .await;
    (f, echo, addr)
}

#[tokio::test]
async fn in_flight_data_is_delivered_after_shutdown_starts() {
    let (f, _echo, addr) = setup(Duration::from_secs(5), 300).await;
    let mut s = connect(addr).await;
    s.write_all(b"in flight").await.unwrap();
    f.server.shutdown.cancel();
    // The delayed echo still arrives, and the half-close still completes the exchange.
    assert_eq!(
        read_exact(&mut s, 9, Duration::from_secs(3)).await,
        b"in flight"
    );
    s.shutdown().await.unwrap();
    assert!(
        read_to_end(&mut s, Duration::from_secs(3))
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn connections_whose_connect_returned_are_served_after_shutdown_starts() {
    // A client's connect() returns once the kernel has completed the handshake, before fallacy
    // accepts. Those waiting in the listener's backlog when the drain starts are served too, not
    // reset by closing the listener.
    let (f, _echo, addr) = setup(Duration::from_secs(5), 50).await;
    let mut clients = Vec::new();
    for i in 0..40u8 {
        let mut s = connect(addr).await;
        s.write_all(&[i; 4]).await.unwrap();
        clients.push(s);
    }
    f.server.shutdown.cancel();
    for (i, mut s) in clients.into_iter().enumerate() {
        assert_eq!(
            read_exact(&mut s, 4, Duration::from_secs(3)).await,
            [i as u8; 4],
            "connection {i}"
        );
    }
}

#[tokio::test]
async fn new_connections_are_refused_once_shutdown_starts() {
    let (f, _echo, addr) = setup(Duration::from_secs(5), 0).await;
    f.server.shutdown.cancel();
    let deadline = Instant::now() + Duration::from_secs(3);
    // The listener closes promptly; poll (bounded) rather than sleep for it.
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            break;
        }
        assert!(Instant::now() < deadline, "listener still accepting");
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn connections_still_open_after_the_grace_period_are_closed() {
    let (f, _echo, addr) = setup(Duration::from_millis(300), 10_000).await;
    let mut s = connect(addr).await;
    s.write_all(b"never").await.unwrap();
    let start = Instant::now();
    f.server.shutdown.cancel();
    assert_closed(&mut s, Duration::from_secs(5)).await;
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(290) && took < Duration::from_secs(3),
        "{took:?}"
    );
}

#[tokio::test]
async fn post_shutdown_starts_the_drain() {
    let (f, _echo, addr) = setup(Duration::from_secs(5), 0).await;
    assert_eq!(f.call_raw("POST", "/shutdown", None).await.0, 204);
    assert!(f.server.shutdown.is_cancelled());
    let deadline = Instant::now() + Duration::from_secs(3);
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        assert!(Instant::now() < deadline, "listener still accepting");
        tokio::task::yield_now().await;
    }
}
