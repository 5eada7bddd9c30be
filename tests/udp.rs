//! UDP proxies with real datagrams: sessions per client, and the datagram toxics (loss that
//! really drops, duplicates, reordering, corruption, latency, pacing), plus bad input.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::Fallacy;
use tokio::net::UdpSocket;

/// A UDP echo server on 127.0.0.1:0, for the harness lifetime.
async fn udp_echo() -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        let serve = async {
            while let Ok((n, peer)) = socket.recv_from(&mut buf).await {
                let _ = socket.send_to(&buf[..n], peer).await;
            }
        };
        let _ = tokio::time::timeout(support::SERVER_LIFETIME, serve).await;
    });
    addr
}

async fn setup() -> (Fallacy, SocketAddr) {
    let f = Fallacy::start().await;
    let up = udp_echo().await;
    let body = json!({"name": "u", "listen": "127.0.0.1:0", "upstream": up.to_string(), "protocol": "udp"});
    let (status, p) = f.call("POST", "/proxies", Some(&body.to_string())).await;
    assert_eq!(status, 201, "{p}");
    assert_eq!(p["protocol"], "udp");
    (f, p["listen"].as_str().unwrap().parse().unwrap())
}

async fn client(proxy: SocketAddr) -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    s.connect(proxy).await.unwrap();
    s
}

/// Sends `n` numbered datagrams (4-byte big-endian numbers plus `pad` bytes), then collects
/// what comes back until `quiet` passes without a datagram.
async fn exchange(s: &UdpSocket, n: u32, pad: usize, quiet: Duration) -> Vec<Vec<u8>> {
    for i in 0..n {
        let mut d = i.to_be_bytes().to_vec();
        d.resize(4 + pad, 0xAB);
        s.send(&d).await.unwrap();
    }
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65_536];
    while let Ok(Ok(len)) = tokio::time::timeout(quiet, s.recv(&mut buf)).await {
        got.push(buf[..len].to_vec());
    }
    got
}

fn numbers(got: &[Vec<u8>]) -> Vec<u32> {
    got.iter()
        .map(|d| u32::from_be_bytes([d[0], d[1], d[2], d[3]]))
        .collect()
}

async fn toxic(f: &Fallacy, t: Value) {
    f.toxic("u", t).await;
}

#[tokio::test]
async fn datagrams_pass_whole_and_each_client_gets_its_own_answers() {
    let (f, proxy) = setup().await;
    let (a, b) = (client(proxy).await, client(proxy).await);
    let got_a = exchange(&a, 50, 1000, Duration::from_millis(300)).await;
    let got_b = exchange(&b, 20, 10, Duration::from_millis(300)).await;
    assert_eq!(numbers(&got_a), (0..50).collect::<Vec<_>>());
    assert!(got_a.iter().all(|d| d.len() == 1004));
    assert_eq!(numbers(&got_b), (0..20).collect::<Vec<_>>());
    let (_, p) = f.call("GET", "/proxies/u", None).await;
    assert_eq!(p["protocol"], "udp");
}

#[tokio::test]
async fn packet_loss_really_drops_datagrams() {
    let (f, proxy) = setup().await;
    toxic(
        &f,
        json!({"type": "packet_loss", "stream": "upstream", "attributes": {"rate": 0.5}}),
    )
    .await;
    let s = client(proxy).await;
    let got = exchange(&s, 400, 10, Duration::from_millis(300)).await;
    // Binomial(400, 0.5): 200 ± 10; five standard deviations either way.
    assert!(
        (150..=250).contains(&got.len()),
        "{} of 400 came back",
        got.len()
    );
    let mut sorted = numbers(&got);
    sorted.dedup();
    assert_eq!(sorted.len(), got.len(), "nothing duplicated");
}

#[tokio::test]
async fn duplicate_sends_twice_and_corrupt_flips_one_bit_per_byte() {
    let (f, proxy) = setup().await;
    toxic(
        &f,
        json!({"type": "duplicate", "stream": "downstream", "attributes": {"rate": 1.0}}),
    )
    .await;
    let s = client(proxy).await;
    let got = exchange(&s, 10, 10, Duration::from_millis(300)).await;
    let mut n = numbers(&got);
    n.sort_unstable();
    assert_eq!(n, (0..10).flat_map(|i| [i, i]).collect::<Vec<_>>());

    let (f, proxy) = setup().await;
    toxic(
        &f,
        json!({"type": "corrupt", "stream": "upstream", "attributes": {"rate": 1.0}}),
    )
    .await;
    let s = client(proxy).await;
    let got = exchange(&s, 5, 100, Duration::from_millis(300)).await;
    assert_eq!(got.len(), 5);
    for d in &got {
        assert_eq!(d.len(), 104);
        assert!(d[4..].iter().all(|b| (b ^ 0xAB).count_ones() == 1), "{d:?}");
    }
}

#[tokio::test]
async fn reorder_lets_later_datagrams_overtake_held_ones() {
    let (f, proxy) = setup().await;
    toxic(
        &f,
        json!({"type": "reorder", "stream": "upstream", "attributes": {"rate": 0.3, "gap": 2}}),
    )
    .await;
    let s = client(proxy).await;
    let got = exchange(&s, 200, 10, Duration::from_millis(500)).await;
    let n = numbers(&got);
    let mut sorted = n.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        (0..200).collect::<Vec<_>>(),
        "every datagram arrives once"
    );
    assert_ne!(n, sorted, "some arrive out of order");
}

#[tokio::test]
async fn latency_and_bandwidth_delay_datagrams() {
    let (f, proxy) = setup().await;
    toxic(
        &f,
        json!({"type": "latency", "attributes": {"latency": 100}}),
    )
    .await;
    let s = client(proxy).await;
    let start = Instant::now();
    let got = exchange(&s, 1, 10, Duration::from_millis(500)).await;
    assert_eq!(got.len(), 1);
    // The reply arrived at least 100 ms after the send (the quiet period is on top).
    assert!(start.elapsed() >= Duration::from_millis(600));
    // 20 datagrams of 1000 B at 100 KB/s take 0.2 s to pass, whole.
    let (f, proxy) = setup().await;
    toxic(
        &f,
        json!({"type": "bandwidth", "stream": "upstream", "attributes": {"rate": 100}}),
    )
    .await;
    let s = client(proxy).await;
    let start = Instant::now();
    let mut buf = vec![0u8; 2000];
    for i in 0..20u32 {
        let mut d = i.to_be_bytes().to_vec();
        d.resize(1000, 0);
        s.send(&d).await.unwrap();
    }
    for _ in 0..20 {
        let n = tokio::time::timeout(Duration::from_secs(5), s.recv(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(n, 1000);
    }
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(190), "{took:?}");
    assert!(took < Duration::from_millis(1000), "{took:?}");
}

#[tokio::test]
async fn toxics_refuse_the_wrong_kind_of_proxy() {
    let (f, _proxy) = setup().await;
    for (t, words) in [
        (
            json!({"type": "slicer", "attributes": {"average_size": 10}}),
            "slicer does not act on datagrams",
        ),
        (
            json!({"type": "loss", "attributes": {"rate": 0.1}}),
            "loss does not act on datagrams",
        ),
        (
            json!({"type": "http_abort"}),
            "http_abort does not act on datagrams",
        ),
        (
            json!({"type": "packet_loss", "attributes": {"rate": 2}}),
            "attributes.rate: must be a probability",
        ),
        (
            json!({"type": "reorder", "attributes": {"rate": 0.5, "gap": 5000}}),
            "attributes.gap",
        ),
        (
            json!({"type": "latency", "attributes": {"latency": 1, "per": "connection"}}),
            "attributes.per",
        ),
    ] {
        let (status, err) = f
            .call("POST", "/proxies/u/toxics", Some(&t.to_string()))
            .await;
        assert_eq!(status, 400, "{t}: {err}");
        assert!(err["error"].as_str().unwrap().contains(words), "{t}: {err}");
    }
    for (body, words) in [
        (
            json!({"name": "v", "upstream": "nowhere", "protocol": "udp"}),
            "upstream: \"nowhere\" is not host:port",
        ),
        (
            json!({"name": "v", "upstream": "127.0.0.1:99999", "protocol": "udp"}),
            "upstream:",
        ),
    ] {
        let (status, err) = f.call("POST", "/proxies", Some(&body.to_string())).await;
        assert_eq!(status, 400, "{body}: {err}");
        assert!(
            err["error"].as_str().unwrap().contains(words),
            "{body}: {err}"
        );
    }
    let (status, err) = f
        .call("PATCH", "/proxies/u", Some(r#"{"upstream": "nowhere"}"#))
        .await;
    assert_eq!(status, 400, "{err}");
    let echo = support::Echo::start().await;
    f.proxy("t", echo.addr).await;
    let (status, err) = f
        .call(
            "POST",
            "/proxies/t/toxics",
            Some(r#"{"type": "duplicate", "attributes": {"rate": 0.1}}"#),
        )
        .await;
    assert_eq!(status, 400);
    assert!(
        err["error"].as_str().unwrap().contains("acts on datagrams"),
        "{err}"
    );
}

/// A partition drops the datagrams of the directions it holds, and heals.
#[tokio::test]
async fn a_partition_drops_udp_datagrams_until_it_heals() {
    let f = Fallacy::start().await;
    let up = udp_echo().await;
    let body = json!({"name": "u", "listen": "127.0.0.1:0", "upstream": up.to_string(),
                      "protocol": "udp", "labels": {"from": "app", "to": "dns"}});
    let (_, p) = f.call("POST", "/proxies", Some(&body.to_string())).await;
    let s = client(p["listen"].as_str().unwrap().parse().unwrap()).await;
    assert_eq!(
        exchange(&s, 3, 1, Duration::from_millis(200)).await.len(),
        3
    );
    let (status, _) = f
        .call(
            "POST",
            "/partitions",
            Some(r#"{"name": "x", "a": ["app"], "b": ["dns"], "direction": "a_to_b"}"#),
        )
        .await;
    assert_eq!(status, 201);
    assert_eq!(
        exchange(&s, 3, 1, Duration::from_millis(200)).await.len(),
        0
    );
    let (status, _) = f.call("DELETE", "/partitions/x", None).await;
    assert_eq!(status, 204);
    assert_eq!(
        exchange(&s, 3, 1, Duration::from_millis(200)).await.len(),
        3
    );
}
