//! Each toxic's observable behaviour on real loopback sockets, byte integrity and half-close
//! under every non-destructive toxic, live changes on open connections, and toxicity.
//!
//! Timings use real time with tolerances: generous upper bounds (the machine is shared), tight
//! lower bounds (a delay must never be shorter than asked).

mod support;

use std::time::{Duration, Instant};

use fallacy::config::Config;
use rstest::rstest;
use serde_json::{Value, json};
use support::{
    Echo, Fallacy, Silent, assert_closed, assert_reset, assert_silent, assert_took, connect,
    random_bytes, read_exact, read_to_end, round_trip,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Slack allowed on top of a requested delay before a test calls it wrong.
const SLACK: Duration = Duration::from_millis(150);

async fn setup() -> (Fallacy, Echo, std::net::SocketAddr) {
    let f = Fallacy::start().await;
    let echo = Echo::start().await;
    let addr = f.proxy("p", echo.addr).await;
    (f, echo, addr)
}

/// Sends `data`, half-closes, and returns everything echoed back up to EOF.
async fn echo_through(addr: std::net::SocketAddr, data: &[u8]) -> Vec<u8> {
    let mut s = connect(addr).await;
    let (mut r, mut w) = s.split();
    let send = async {
        w.write_all(data).await.unwrap();
        w.shutdown().await.unwrap();
    };
    let recv = async {
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(30), r.read_to_end(&mut out))
            .await
            .expect("echo timed out")
            .unwrap();
        out
    };
    let ((), out) = tokio::join!(send, recv);
    out
}

#[rstest]
#[case::no_toxic(None)]
#[case::noop(Some(json!({"type": "noop"})))]
#[case::latency(Some(json!({"type": "latency", "attributes": {"latency": 5, "jitter": 5}})))]
#[case::bandwidth(Some(json!({"type": "bandwidth", "attributes": {"rate": 20000}})))]
#[case::slicer(Some(json!({"type": "slicer", "attributes": {"average_size": 700, "size_variation": 300, "delay": 10}})))]
#[case::slow_close(Some(json!({"type": "slow_close", "attributes": {"delay": 10}})))]
#[case::limit_data_not_reached(Some(json!({"type": "limit_data", "attributes": {"bytes": 100000000}})))]
#[case::loss(Some(json!({"type": "loss", "attributes": {"rate": 0.001, "rtt": "1ms", "rto_min": "2ms"}})))]
#[case::loss_bursts(Some(json!({"type": "loss", "attributes": {"p": 0.001, "r": 0.5, "rtt": "1ms", "rto_min": "2ms"}})))]
#[case::corrupt_none(Some(json!({"type": "corrupt", "attributes": {"rate": 0}})))]
#[tokio::test]
async fn bytes_are_exact_both_ways_and_half_close_is_kept(#[case] toxic: Option<Value>) {
    let (f, _echo, addr) = setup().await;
    if let Some(toxic) = toxic {
        for stream in ["upstream", "downstream"] {
            let mut t = toxic.clone();
            t["stream"] = json!(stream);
            t["name"] = json!(format!("t_{stream}"));
            f.toxic("p", t).await;
        }
    }
    // 1 MB, then shut down the write side: all of it must come back, then EOF.
    let data = random_bytes(1 << 20, 42);
    let back = echo_through(addr, &data).await;
    assert_eq!(back.len(), data.len());
    assert!(back == data, "bytes differ");
}

#[tokio::test]
async fn latency_delays_each_way() {
    let (f, _echo, addr) = setup().await;
    let mut s = connect(addr).await;
    let base = round_trip(&mut s, b"warm").await;
    f.toxic(
        "p",
        json!({"type": "latency", "attributes": {"latency": 100}}),
    )
    .await;
    let down = round_trip(&mut s, b"ping").await;
    assert!(down >= Duration::from_millis(100), "{down:?}");
    assert!(down < Duration::from_millis(100) + base + SLACK, "{down:?}");
    f.toxic(
        "p",
        json!({"type": "latency", "stream": "upstream", "attributes": {"latency": 50}}),
    )
    .await;
    let both = round_trip(&mut s, b"ping").await;
    assert!(both >= Duration::from_millis(150), "{both:?}");
    assert!(both < Duration::from_millis(150) + base + SLACK, "{both:?}");
}

#[tokio::test]
async fn jitter_stays_within_bounds() {
    let (f, _echo, addr) = setup().await;
    f.toxic(
        "p",
        json!({"type": "latency", "attributes": {"latency": 60, "jitter": 40}}),
    )
    .await;
    let mut s = connect(addr).await;
    let mut seen = Vec::new();
    for _ in 0..15 {
        seen.push(round_trip(&mut s, b"j").await);
    }
    for d in &seen {
        assert!(*d >= Duration::from_millis(20), "{seen:?}");
        assert!(*d < Duration::from_millis(100) + SLACK, "{seen:?}");
    }
    let (min, max) = (seen.iter().min().unwrap(), seen.iter().max().unwrap());
    assert!(
        *max - *min > Duration::from_millis(10),
        "jitter should vary the delay: {seen:?}"
    );
}

#[tokio::test]
async fn bandwidth_paces_the_stream() {
    let (f, _echo, addr) = setup().await;
    // 200 KB/s downstream: 100 KB takes about half a second.
    f.toxic(
        "p",
        json!({"type": "bandwidth", "attributes": {"rate": 200}}),
    )
    .await;
    let data = random_bytes(100_000, 1);
    let start = Instant::now();
    let back = echo_through(addr, &data).await;
    let took = start.elapsed();
    assert_eq!(back, data);
    assert!(took >= Duration::from_millis(480), "{took:?}");
    assert!(took < Duration::from_millis(500) + SLACK * 2, "{took:?}");
}

#[tokio::test]
async fn slicer_spreads_a_chunk_over_time() {
    let (f, _echo, addr) = setup().await;
    // 2000 bytes in ~10-byte pieces, 1 ms apart: about 200 ms for one echo.
    f.toxic(
        "p",
        json!({"type": "slicer", "attributes": {"average_size": 10, "size_variation": 0, "delay": 1000}}),
    )
    .await;
    let mut s = connect(addr).await;
    let data = random_bytes(2000, 2);
    let took = round_trip(&mut s, &data).await;
    assert!(took >= Duration::from_millis(150), "{took:?}");
}

#[tokio::test]
async fn slow_close_holds_the_fin() {
    let (f, _echo, addr) = setup().await;
    f.toxic(
        "p",
        json!({"type": "slow_close", "attributes": {"delay": 300}}),
    )
    .await;
    let mut s = connect(addr).await;
    s.write_all(b"bye").await.unwrap();
    s.shutdown().await.unwrap();
    let start = Instant::now();
    assert_eq!(read_exact(&mut s, 3, Duration::from_secs(5)).await, b"bye");
    assert!(
        start.elapsed() < Duration::from_millis(200),
        "data is not delayed"
    );
    let rest = read_to_end(&mut s, Duration::from_secs(5)).await.unwrap();
    assert!(rest.is_empty());
    assert!(
        start.elapsed() >= Duration::from_millis(290),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn timeout_drops_data_then_closes() {
    let (f, _echo, addr) = setup().await;
    f.toxic(
        "p",
        json!({"type": "timeout", "attributes": {"timeout": 300}}),
    )
    .await;
    let mut s = connect(addr).await;
    let start = Instant::now();
    s.write_all(b"lost").await.unwrap();
    let got = read_to_end(&mut s, Duration::from_secs(5))
        .await
        .unwrap_or_default();
    assert!(got.is_empty(), "data should be dropped: {got:?}");
    let took = start.elapsed();
    assert_took(
        took,
        Duration::from_millis(290),
        Duration::from_millis(10) + SLACK,
    );
}

#[tokio::test]
async fn timeout_zero_holds_until_removed_then_closes() {
    let (f, _echo, addr) = setup().await;
    f.toxic("p", json!({"type": "timeout", "name": "hole"}))
        .await;
    let mut s = connect(addr).await;
    s.write_all(b"lost").await.unwrap();
    assert_silent(&mut s, Duration::from_millis(300)).await;
    assert_eq!(
        f.call_raw("DELETE", "/proxies/p/toxics/hole", None).await.0,
        204
    );
    // The bytes it dropped cannot be given back: the connection closes.
    assert_closed(&mut s, Duration::from_secs(2)).await;
}

#[tokio::test]
async fn reset_peer_removed_before_it_fires_closes_rather_than_lose_bytes() {
    let (f, _echo, addr) = setup().await;
    f.toxic(
        "p",
        json!({"type": "reset_peer", "name": "rst", "stream": "upstream", "attributes": {"timeout": 2000}}),
    )
    .await;
    let mut s = connect(addr).await;
    s.write_all(b"first;").await.unwrap();
    assert_silent(&mut s, Duration::from_millis(200)).await;
    assert_eq!(
        f.call_raw("DELETE", "/proxies/p/toxics/rst", None).await.0,
        204
    );
    // "first;" is gone: carrying on with "second;" alone would corrupt the stream.
    assert_closed(&mut s, Duration::from_secs(1)).await;
    // A connection it never triggered on goes on untouched after a removal.
    f.toxic(
        "p",
        json!({"type": "reset_peer", "name": "rst", "stream": "upstream", "attributes": {"timeout": 2000}}),
    )
    .await;
    let mut idle = connect(addr).await;
    f.call_raw("DELETE", "/proxies/p/toxics/rst", None).await;
    round_trip(&mut idle, b"second;").await;
}

#[tokio::test]
async fn reset_peer_resets_after_the_first_data() {
    let (f, _echo, addr) = setup().await;
    f.toxic(
        "p",
        json!({"type": "reset_peer", "stream": "upstream", "attributes": {"timeout": 200}}),
    )
    .await;
    let mut s = connect(addr).await;
    // Idle: nothing happens.
    assert_silent(&mut s, Duration::from_millis(250)).await;
    let start = Instant::now();
    s.write_all(b"boom").await.unwrap();
    assert_reset(&mut s, Duration::from_secs(5)).await;
    let took = start.elapsed();
    assert_took(
        took,
        Duration::from_millis(190),
        Duration::from_millis(10) + SLACK,
    );
}

#[tokio::test]
async fn reset_peer_with_zero_timeout_resets_at_once() {
    let (f, _echo, addr) = setup().await;
    f.toxic("p", json!({"type": "reset_peer", "stream": "upstream"}))
        .await;
    let mut s = connect(addr).await;
    s.write_all(b"boom").await.unwrap();
    assert_reset(&mut s, Duration::from_secs(2)).await;
}

#[rstest]
#[case::upstream("upstream")]
#[case::downstream("downstream")]
#[tokio::test]
async fn limit_data_closes_after_n_bytes(#[case] stream: &str) {
    let (f, _echo, addr) = setup().await;
    f.toxic(
        "p",
        json!({"type": "limit_data", "stream": stream, "attributes": {"bytes": 100}}),
    )
    .await;
    let mut s = connect(addr).await;
    let data = random_bytes(1000, 3);
    s.write_all(&data).await.unwrap();
    let got = read_to_end(&mut s, Duration::from_secs(5))
        .await
        .unwrap_or_default();
    if stream == "downstream" {
        assert_eq!(got, data[..100]);
    } else {
        // The upstream got 100 bytes, then the connection closed, possibly before its echo
        // came back: whatever arrived is a prefix of those 100 bytes.
        assert!(
            got.len() <= 100 && got == data[..got.len()],
            "{} bytes",
            got.len()
        );
    }
}

#[tokio::test]
async fn toxic_changes_reach_open_connections_without_closing_them() {
    let (f, _echo, addr) = setup().await;
    let mut s = connect(addr).await;
    assert!(round_trip(&mut s, b"a").await < Duration::from_millis(100));
    f.toxic(
        "p",
        json!({"type": "latency", "name": "slow", "attributes": {"latency": 200}}),
    )
    .await;
    let slow = round_trip(&mut s, b"b").await;
    assert!(slow >= Duration::from_millis(200), "added: {slow:?}");
    let (status, _) = f
        .call(
            "PATCH",
            "/proxies/p/toxics/slow",
            Some(r#"{"attributes": {"latency": 400}}"#),
        )
        .await;
    assert_eq!(status, 200);
    let slower = round_trip(&mut s, b"c").await;
    assert!(slower >= Duration::from_millis(400), "updated: {slower:?}");
    assert_eq!(
        f.call_raw("DELETE", "/proxies/p/toxics/slow", None).await.0,
        204
    );
    let fast = round_trip(&mut s, b"d").await;
    assert!(fast < Duration::from_millis(100), "removed: {fast:?}");
}

#[tokio::test]
async fn removing_a_latency_toxic_releases_held_bytes() {
    let (f, _echo, addr) = setup().await;
    f.toxic(
        "p",
        json!({"type": "latency", "name": "slow", "attributes": {"latency": 5000}}),
    )
    .await;
    let mut s = connect(addr).await;
    s.write_all(b"held").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let start = Instant::now();
    assert_eq!(
        f.call_raw("DELETE", "/proxies/p/toxics/slow", None).await.0,
        204
    );
    assert_eq!(read_exact(&mut s, 4, Duration::from_secs(2)).await, b"held");
    assert!(
        start.elapsed() < Duration::from_millis(500),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn toxicity_applies_to_about_that_fraction_of_connections() {
    let f = Fallacy::with_config(Config {
        seed: Some(7),
        ..Config::default()
    })
    .await;
    let echo = Echo::start().await;
    let addr = f.proxy("p", echo.addr).await;
    // limit_data 0 closes a connection at its first byte: easy to tell apart from an echo.
    f.toxic(
        "p",
        json!({"type": "limit_data", "stream": "upstream", "toxicity": 0.3, "attributes": {"bytes": 0}}),
    )
    .await;
    const N: usize = 300;
    let mut closed = 0;
    for _ in 0..N {
        let mut s = connect(addr).await;
        s.write_all(b"x").await.unwrap();
        let mut buf = [0u8; 1];
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .unwrap()
        {
            Ok(1) => {}
            _ => closed += 1,
        }
    }
    // Binomial(300, 0.3): mean 90, sd 7.9; allow 4 sd.
    assert!((58..=122).contains(&closed), "{closed} of {N} closed");
}

#[tokio::test]
async fn disabling_closes_open_connections_and_enabling_serves_again() {
    let (f, _echo, addr) = setup().await;
    let mut s = connect(addr).await;
    round_trip(&mut s, b"hi").await;
    assert_eq!(
        f.call("PATCH", "/proxies/p", Some(r#"{"enabled": false}"#))
            .await
            .0,
        200
    );
    assert_closed(&mut s, Duration::from_secs(2)).await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    assert_eq!(
        f.call("PATCH", "/proxies/p", Some(r#"{"enabled": true}"#))
            .await
            .0,
        200
    );
    let mut s = connect(addr).await;
    round_trip(&mut s, b"back").await;
}

#[tokio::test]
async fn deleting_closes_open_connections() {
    let (f, _echo, addr) = setup().await;
    let mut s = connect(addr).await;
    round_trip(&mut s, b"hi").await;
    assert_eq!(f.call_raw("DELETE", "/proxies/p", None).await.0, 204);
    assert_closed(&mut s, Duration::from_secs(2)).await;
}

#[tokio::test]
async fn unreachable_upstream_closes_the_client() {
    let f = Fallacy::start().await;
    let addr = f.proxy("p", support::dead_addr().await).await;
    let mut s = connect(addr).await;
    let start = Instant::now();
    assert_closed(&mut s, Duration::from_secs(5)).await;
    assert!(start.elapsed() < Duration::from_secs(2));
    // The proxy still serves: the listener did not die.
    let mut s = connect(addr).await;
    assert_closed(&mut s, Duration::from_secs(5)).await;
}

#[tokio::test]
async fn upstream_change_applies_to_new_connections_only() {
    let (f, _echo, addr) = setup().await;
    let mut old = connect(addr).await;
    round_trip(&mut old, b"old").await;
    let silent = Silent::start().await;
    let body = json!({"upstream": silent.addr.to_string()});
    assert_eq!(
        f.call("PATCH", "/proxies/p", Some(&body.to_string()))
            .await
            .0,
        200
    );
    // The open connection keeps its upstream.
    round_trip(&mut old, b"still").await;
    // A new one goes to the silent upstream: no echo.
    let mut new = connect(addr).await;
    new.write_all(b"hello").await.unwrap();
    assert_silent(&mut new, Duration::from_millis(300)).await;
}

#[tokio::test]
async fn shared_bandwidth_is_one_link_for_all_connections() {
    let (f, _echo, addr) = setup().await;
    // 200 KB/s for the whole proxy: two 50 KB echoes at once take about 0.5 s, not 0.25 s.
    f.toxic(
        "p",
        json!({"type": "bandwidth", "attributes": {"rate": 200, "shared": true}}),
    )
    .await;
    let data = random_bytes(50_000, 9);
    let start = Instant::now();
    let (a, b) = tokio::join!(echo_through(addr, &data), echo_through(addr, &data));
    let took = start.elapsed();
    assert!(a == data && b == data);
    assert!(took >= Duration::from_millis(450), "{took:?}");
    assert!(took < Duration::from_millis(500) + SLACK * 2, "{took:?}");
}

#[tokio::test]
async fn connect_delay_holds_the_dial_of_new_connections_only() {
    let (f, _echo, addr) = setup().await;
    let mut old = connect(addr).await;
    round_trip(&mut old, b"warm").await;
    f.toxic(
        "p",
        json!({"type": "connect_delay", "attributes": {"latency": 300}}),
    )
    .await;
    // The open connection is not affected.
    assert!(round_trip(&mut old, b"old").await < Duration::from_millis(100));
    // A new one waits for its dial: its first round trip takes the delay.
    let mut new = connect(addr).await;
    let took = round_trip(&mut new, b"new").await;
    assert_took(
        took,
        Duration::from_millis(290),
        Duration::from_millis(10) + SLACK,
    );
    assert!(round_trip(&mut new, b"again").await < Duration::from_millis(100));
}

#[tokio::test]
async fn a_profile_toxic_delays_and_paces() {
    let (f, _echo, addr) = setup().await;
    f.toxic(
        "p",
        json!({"type": "profile", "attributes": {"name": "satellite"}}),
    )
    .await;
    let mut s = connect(addr).await;
    // GEO satellite: at least 239 ms one way.
    let took = round_trip(&mut s, b"ping").await;
    assert!(took >= Duration::from_millis(239), "{took:?}");
}

#[tokio::test]
async fn a_lognormal_latency_stays_within_its_clamps() {
    let (f, _echo, addr) = setup().await;
    f.toxic(
        "p",
        json!({"type": "latency", "attributes": {"distribution": "lognormal", "p50": "20ms", "p99": "300ms", "min": "10ms", "max": "60ms"}}),
    )
    .await;
    let mut s = connect(addr).await;
    for _ in 0..10 {
        let d = round_trip(&mut s, b"l").await;
        assert!(
            d >= Duration::from_millis(10) && d < Duration::from_millis(60) + SLACK,
            "{d:?}"
        );
    }
}

#[tokio::test]
async fn per_connection_latency_delays_only_the_first_chunk() {
    let (f, _echo, addr) = setup().await;
    f.toxic(
        "p",
        json!({"type": "latency", "attributes": {"latency": 200, "per": "connection"}}),
    )
    .await;
    let mut s = connect(addr).await;
    assert!(round_trip(&mut s, b"first").await >= Duration::from_millis(200));
    assert!(round_trip(&mut s, b"second").await < Duration::from_millis(100));
}

#[tokio::test]
async fn bandwidth_burst_sends_a_bucketful_at_once() {
    let (f, _echo, addr) = setup().await;
    // 10 KB/s with a 20 KB bucket: a 10 KB echo is not paced at all (it would take 1 s).
    f.toxic(
        "p",
        json!({"type": "bandwidth", "attributes": {"rate": 10, "burst": 20000}}),
    )
    .await;
    let mut s = connect(addr).await;
    let took = round_trip(&mut s, &random_bytes(10_000, 4)).await;
    assert!(took < Duration::from_millis(300), "{took:?}");
}

/// The same seed gives the same delays: two servers seeded alike draw the same jitter for the
/// same connection number.
#[tokio::test]
async fn a_seed_replays_the_same_delays() {
    async fn delays(seed: u64) -> Vec<Duration> {
        let f = Fallacy::with_config(Config {
            seed: Some(seed),
            ..Config::default()
        })
        .await;
        let echo = Echo::start().await;
        let addr = f.proxy("p", echo.addr).await;
        f.toxic(
            "p",
            json!({"type": "latency", "attributes": {"latency": 150, "jitter": 140}}),
        )
        .await;
        let mut s = connect(addr).await;
        let mut out = Vec::new();
        for _ in 0..6 {
            out.push(round_trip(&mut s, b"s").await);
        }
        out
    }
    let (a, b) = tokio::join!(delays(11), delays(11));
    for (x, y) in a.iter().zip(&b) {
        let diff = if x > y { *x - *y } else { *y - *x };
        assert!(diff < Duration::from_millis(40), "{a:?} vs {b:?}");
    }
    let c = delays(12).await;
    assert!(
        a.iter()
            .zip(&c)
            .any(|(x, y)| (x.as_millis() as i64 - y.as_millis() as i64).abs() > 40),
        "another seed should draw other delays: {a:?} vs {c:?}"
    );
}

/// A reader slower than its writer keeps the proxy's writes blocked and its read side full:
/// the case where a swallowed readiness edge would hang the connection for good (the writer
/// blocked on a full window sends nothing more, so no new edge comes). Every byte must arrive.
#[rstest]
#[case::no_toxic(None)]
#[case::latency(Some(json!({"type": "latency", "stream": "downstream", "attributes": {"latency": 1}})))]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_gets_every_byte(#[case] toxic: Option<Value>) {
    let (f, _echo, addr) = setup().await;
    if let Some(t) = toxic {
        f.toxic("p", t).await;
    }
    let data = random_bytes(24 << 20, 11);
    let mut s = connect(addr).await;
    let (mut r, mut w) = s.split();
    let send = async {
        w.write_all(&data).await.unwrap();
        w.shutdown().await.unwrap();
    };
    let recv = async {
        let mut out = Vec::with_capacity(data.len());
        let mut buf = vec![0u8; 48 * 1024];
        loop {
            match r.read(&mut buf).await.unwrap() {
                0 => break out,
                n => out.extend_from_slice(&buf[..n]),
            }
            // Slower than the proxy, so its writes towards us block again and again.
            tokio::time::sleep(Duration::from_micros(300)).await;
        }
    };
    let joined = tokio::time::timeout(Duration::from_secs(30), async { tokio::join!(send, recv) });
    let ((), out) = joined
        .await
        .expect("the transfer stalled: a wake-up was lost");
    assert_eq!(out.len(), data.len());
    assert!(out == data, "bytes differ");
}

/// `loss` on a deterministic pattern: Gilbert-Elliott with p = r = 1 flips state on every
/// segment, so every other try is lost. The first SYN is lost (the dial waits 1 s); each
/// one-segment message is a tail loss whose retransmission arrives: one RTO (rtt + rto_min).
#[tokio::test]
async fn loss_costs_a_syn_retry_and_a_timeout_per_lost_tail_segment() {
    let (f, _echo, addr) = setup().await;
    f.toxic(
        "p",
        json!({"type": "loss", "stream": "upstream",
               "attributes": {"p": 1, "r": 1, "rtt": "10ms", "rto_min": "40ms"}}),
    )
    .await;
    let mut s = connect(addr).await;
    let took = round_trip(&mut s, b"first").await;
    assert_took(took, Duration::from_millis(1050), SLACK);
    for msg in [&b"second"[..], b"third", b"fourth"] {
        let took = round_trip(&mut s, msg).await;
        assert_took(took, Duration::from_millis(50), SLACK);
    }
    // Bytes pass whole and in order: 100 KB of segments, every other one lost and recovered.
    drop(s);
    let data = random_bytes(100_000, 7);
    assert!(echo_through(addr, &data).await == data);
}

/// `corrupt` at rate 1 flips exactly one bit in every byte, and never changes the length.
#[tokio::test]
async fn corrupt_flips_one_bit_per_corrupted_byte() {
    let (f, _echo, addr) = setup().await;
    f.toxic("p", json!({"type": "corrupt", "attributes": {"rate": 1.0}}))
        .await;
    let data = random_bytes(50_000, 8);
    let back = echo_through(addr, &data).await;
    assert_eq!(back.len(), data.len());
    assert!(
        back.iter()
            .zip(&data)
            .all(|(a, b)| (a ^ b).count_ones() == 1)
    );
}
