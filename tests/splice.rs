//! The splice(2) fast path: bulk bytes through a proxy without toxics go by splice, and a toxic
//! added and removed mid-stream loses, duplicates and reorders nothing; half-close still
//! works after it. A file of its own, so the process-wide splice counter is this test's.

mod support;

use std::time::Duration;

use serde_json::json;
use support::{Echo, Fallacy, connect, random_bytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOTAL: usize = 24 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_bytes_are_spliced_and_survive_a_toxic_coming_and_going() {
    let f = Fallacy::start().await;
    let echo = Echo::start().await;
    let addr = f.proxy("bulk", echo.addr).await;
    let data = random_bytes(TOTAL, 7);
    let before = fallacy::proxy::duplex::spliced_bytes();

    let stream = connect(addr).await;
    let (mut rd, mut wr) = stream.into_split();
    let sent = data.clone();
    let writer = tokio::spawn(async move {
        for piece in sent.chunks(256 * 1024) {
            wr.write_all(piece).await.unwrap();
        }
        // Half-close: the echo finishes and closes its side; we must still read it all.
        wr.shutdown().await.unwrap();
    });
    let mut got = Vec::with_capacity(TOTAL);
    let mut buf = vec![0u8; 256 * 1024];
    let mut toxic_on = false;
    let mut toxic_off = false;
    loop {
        let n = tokio::time::timeout(Duration::from_secs(30), rd.read(&mut buf))
            .await
            .expect("the stream stalled")
            .unwrap();
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        if !toxic_on && got.len() >= TOTAL / 4 {
            toxic_on = true;
            // Both directions get a toxic while bytes are in flight.
            f.toxic("bulk", json!({"name": "up", "type": "latency", "stream": "upstream", "attributes": {"latency": 1}})).await;
            f.toxic("bulk", json!({"name": "down", "type": "slicer", "attributes": {"average_size": 1000, "size_variation": 500}})).await;
        }
        if toxic_on && !toxic_off && got.len() >= TOTAL / 2 {
            toxic_off = true;
            assert_eq!(
                f.call("DELETE", "/proxies/bulk/toxics/up", None).await.0,
                204
            );
            assert_eq!(
                f.call("DELETE", "/proxies/bulk/toxics/down", None).await.0,
                204
            );
        }
    }
    writer.await.unwrap();
    assert_eq!(got.len(), TOTAL, "every byte came back, and then EOF");
    let first_bad = got.iter().zip(&data).position(|(a, b)| a != b);
    assert_eq!(first_bad, None, "the bytes came back in order");
    assert!(toxic_on && toxic_off);
    let spliced = fallacy::proxy::duplex::spliced_bytes() - before;
    assert!(
        spliced > (TOTAL as u64),
        "only {spliced} of {} bytes went by splice",
        2 * TOTAL
    );
}
