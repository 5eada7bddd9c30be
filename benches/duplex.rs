//! The data path in isolation: bytes through `duplex::run` with no toxic, and with chains of
//! no-op toxics, against a direct socket-to-socket copy measured in the same run.
//!
//! `cargo bench --bench duplex`. Real loopback sockets; one direction, 4 MiB per iteration.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use fallacy::proxy::{Link, Protocol, Settings, duplex};
use fallacy::toxic::{Envelope, ToxicSpec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tokio_util::sync::CancellationToken;

const PAYLOAD: usize = 4 << 20;

fn noop(i: usize) -> Arc<ToxicSpec> {
    let env = Envelope::from_json(
        serde_json::json!({"type": "noop", "name": format!("n{i}"), "stream": "upstream"}),
    )
    .unwrap();
    let head = env.head().unwrap();
    Arc::new(env.into_spec(head).unwrap())
}

async fn pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (a, b) = tokio::join!(TcpStream::connect(l.local_addr().unwrap()), l.accept());
    let (a, b) = (a.unwrap(), b.unwrap().0);
    a.set_nodelay(true).unwrap();
    b.set_nodelay(true).unwrap();
    (a, b)
}

/// Returns (writer, reader): bytes written to `writer` come out of `reader`, through fallacy's
/// duplex with `toxics` when given, directly otherwise.
async fn path(toxics: Option<usize>, stop: &CancellationToken) -> (TcpStream, TcpStream) {
    let Some(n) = toxics else { return pair().await };
    let (writer, proxy_client) = pair().await;
    let (proxy_upstream, reader) = pair().await;
    let link = Arc::new(Link::new(
        "bench",
        "127.0.0.1:1",
        Protocol::Tcp,
        Arc::new(Settings::default()),
    ));
    link.set_toxics((0..n).map(noop).collect());
    let stop = stop.clone();
    tokio::spawn(async move {
        // As a TCP proxy runs it: with its requests measured.
        let track = fallacy::measure::TcpTrack::default();
        duplex::run(
            &proxy_client,
            &proxy_upstream,
            &link,
            1,
            &stop,
            Some(&track),
        )
        .await;
    });
    (writer, reader)
}

async fn transfer(writer: &mut TcpStream, reader: &mut TcpStream, buf: &mut [u8], data: &[u8]) {
    let send = writer.write_all(data);
    let recv = async {
        let mut left = PAYLOAD;
        while left > 0 {
            let n = reader.read(buf).await.unwrap();
            assert!(n > 0, "unexpected EOF");
            left -= n;
        }
    };
    let (sent, ()) = tokio::join!(send, recv);
    sent.unwrap();
}

fn bench(c: &mut Criterion) {
    let rt = Runtime::new().unwrap();
    let mut group = c.benchmark_group("duplex");
    group.throughput(Throughput::Bytes(PAYLOAD as u64));
    group.measurement_time(Duration::from_secs(5));
    let data = vec![0x5au8; PAYLOAD];
    for (label, toxics) in [
        ("direct", None),
        ("no_toxics", Some(0)),
        ("noop_x1", Some(1)),
        ("noop_x5", Some(5)),
    ] {
        let stop = CancellationToken::new();
        let (mut writer, mut reader) = rt.block_on(path(toxics, &stop));
        let mut buf = vec![0u8; 256 * 1024];
        group.bench_function(label, |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        transfer(&mut writer, &mut reader, &mut buf, &data).await;
                    }
                    start.elapsed()
                })
            })
        });
        stop.cancel();
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
