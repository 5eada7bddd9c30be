//! Restarts and failing upstreams: a reload under load loses no byte, and an upstream that
//! refuses, then accepts, then stalls never wedges the proxy or its admin API.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::json;
use support::{Echo, Fallacy, random_bytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Streams `data` through `addr` (an echo behind the proxy) in pieces while reading the echo
/// back; returns what came back. Bounded by `within`.
async fn stream_through(addr: SocketAddr, data: Vec<u8>, within: Duration) -> Vec<u8> {
    let s = TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    let (mut rd, mut wr) = s.into_split();
    let len = data.len();
    let writer = tokio::spawn(async move {
        for piece in data.chunks(4096) {
            wr.write_all(piece).await.unwrap();
            // Keep the stream going for the whole run of reloads.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        wr.shutdown().await.unwrap();
    });
    let mut back = Vec::with_capacity(len);
    tokio::time::timeout(within, rd.read_to_end(&mut back))
        .await
        .expect("the stream stalled")
        .expect("the stream failed");
    writer.await.unwrap();
    back
}

/// Reloads every 25 ms that change the toxics (non-destructive ones: latency, slicer, bandwidth)
/// while eight connections stream through: every byte arrives, in order, on every connection.
#[tokio::test]
async fn a_reload_under_load_loses_no_byte() {
    let echo = Echo::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fallacy.toml");
    let file = |toxic: &str| {
        format!(
            "[[proxy]]\nname = \"p\"\nlisten = \"127.0.0.1:0\"\nupstream = \"{}\"\n{toxic}",
            echo.addr
        )
    };
    let toxics = [
        "",
        "[[proxy.toxic]]\nname = \"t\"\ntype = \"latency\"\nattributes = { latency = 3, jitter = 2 }\n",
        "[[proxy.toxic]]\nname = \"t\"\ntype = \"slicer\"\nattributes = { average_size = 300, size_variation = 100, delay = 50 }\n",
        "[[proxy.toxic]]\nname = \"t\"\ntype = \"bandwidth\"\nstream = \"upstream\"\nattributes = { rate = 5000 }\n",
    ];
    std::fs::write(&path, file(toxics[0])).unwrap();
    let f = Fallacy::with_config(fallacy::config::load(&path).unwrap()).await;
    let (_, proxy) = f.call("GET", "/proxies/p", None).await;
    let addr: SocketAddr = proxy["listen"].as_str().unwrap().parse().unwrap();

    let streams: Vec<_> = (0..8)
        .map(|i| {
            let data = random_bytes(1024 * 1024, i);
            tokio::spawn(async move {
                let back = stream_through(addr, data.clone(), Duration::from_secs(60)).await;
                (back == data, back.len(), data.len())
            })
        })
        .collect();
    // Reload every 25 ms for as long as the streams run (each takes a second or more).
    let mut reloads = 0;
    while !streams.iter().all(|s| s.is_finished()) && reloads < 400 {
        tokio::time::sleep(Duration::from_millis(25)).await;
        reloads += 1;
        std::fs::write(&path, file(toxics[reloads % toxics.len()])).unwrap();
        let asked = Instant::now();
        let (status, report) = f.call("POST", "/reload", None).await;
        assert_eq!(status, 200, "{report}");
        assert!(
            asked.elapsed() < Duration::from_secs(1),
            "a reload under load took {:?}",
            asked.elapsed()
        );
    }
    assert!(
        reloads >= 20,
        "only {reloads} reloads while the streams ran"
    );
    for s in streams {
        let (same, got, sent) = s.await.unwrap();
        assert!(same, "{got} of {sent} bytes, or reordered");
    }
}

/// How a test upstream behaves.
#[derive(Clone, Copy)]
enum Mood {
    /// Echoes at once.
    Echo,
    /// Accepts and says nothing for this long, then echoes.
    Stall(Duration),
}

/// An upstream on `addr` (a port first taken from the kernel) that behaves as `mood` until the
/// test ends.
async fn upstream_on(addr: SocketAddr, mood: Mood) {
    let listener = TcpListener::bind(addr)
        .await
        .expect("rebind the upstream's port");
    tokio::spawn(async move {
        let until = tokio::time::Instant::now() + support::SERVER_LIFETIME;
        while let Ok(Ok((mut s, _))) = tokio::time::timeout_at(until, listener.accept()).await {
            tokio::spawn(async move {
                if let Mood::Stall(d) = mood {
                    tokio::time::sleep(d).await;
                }
                let mut buf = [0u8; 1024];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
}

/// One exchange through the proxy: Some(true) echoed, Some(false) closed or reset, None no
/// answer within `patience`.
async fn exchange(addr: SocketAddr, patience: Duration) -> Option<bool> {
    let attempt = async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        s.write_all(b"ping").await.ok()?;
        let mut buf = [0u8; 4];
        Some(s.read_exact(&mut buf).await.is_ok() && &buf == b"ping")
    };
    match tokio::time::timeout(patience, attempt).await {
        Ok(Some(ok)) => Some(ok),
        Ok(None) => Some(false),
        Err(_) => None,
    }
}

/// Asserts the admin API answers within 100 ms.
async fn admin_answers_quickly(f: &Fallacy) {
    let asked = Instant::now();
    let (status, _) = f.call("GET", "/proxies/p", None).await;
    assert_eq!(status, 200);
    let took = asked.elapsed();
    assert!(
        took < Duration::from_millis(100),
        "the admin API took {took:?}"
    );
}

#[tokio::test]
async fn an_upstream_that_refuses_then_stalls_never_wedges_the_proxy() {
    let f = Fallacy::start().await;
    // A port the kernel picked, then freed: nothing listens there yet.
    let free = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = free.local_addr().unwrap();
    drop(free);
    let proxy = f.proxy("p", up).await;

    // Refusing: every client connection is closed, quickly, and the API stays responsive.
    for _ in 0..20 {
        assert_eq!(exchange(proxy, Duration::from_secs(2)).await, Some(false));
    }
    admin_answers_quickly(&f).await;

    // Stalling: accepted, silent for 1.5 s. Impatient clients give up; patient ones get
    // their echo; the proxy keeps answering the API meanwhile.
    upstream_on(up, Mood::Stall(Duration::from_millis(1500))).await;
    let impatient: Vec<_> = (0..20)
        .map(|_| tokio::spawn(exchange(proxy, Duration::from_millis(200))))
        .collect();
    let patient = tokio::spawn(exchange(proxy, Duration::from_secs(5)));
    for _ in 0..5 {
        admin_answers_quickly(&f).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for t in impatient {
        assert_eq!(t.await.unwrap(), None, "a stalled upstream answered early");
    }
    assert_eq!(
        patient.await.unwrap(),
        Some(true),
        "the patient client got no echo"
    );
}

#[tokio::test]
async fn a_recovered_upstream_is_used_again_at_once() {
    let f = Fallacy::start().await;
    let free = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = free.local_addr().unwrap();
    drop(free);
    let proxy = f.proxy("p", up).await;
    assert_eq!(exchange(proxy, Duration::from_secs(2)).await, Some(false));
    upstream_on(up, Mood::Echo).await;
    for _ in 0..20 {
        assert_eq!(exchange(proxy, Duration::from_secs(2)).await, Some(true));
    }
    admin_answers_quickly(&f).await;
    // The echo upstream of the support module still works alongside.
    let echo = Echo::start().await;
    f.call(
        "POST",
        "/proxies/p",
        Some(&json!({"upstream": echo.addr.to_string()}).to_string()),
    )
    .await;
    assert_eq!(exchange(proxy, Duration::from_secs(2)).await, Some(true));
}

/// A proxy deleted with a `flap` toxic on it leaves no task behind. The flap's driver held its
/// link strongly, which kept the link's change channel open, so it never saw the proxy go and
/// ran until the server stopped: the 30-minute soak ended with 12 tasks more at rest.
#[tokio::test]
async fn a_deleted_proxy_leaves_no_flap_driver_behind() {
    use fallacy::toxic::Envelope;
    use tokio_util::sync::CancellationToken;

    let stop = CancellationToken::new();
    let store = support::bare_store(&stop);
    let alive = || {
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks()
    };
    let before = alive();
    for _ in 0..3 {
        store.create(support::new_proxy("p")).await.unwrap();
        let flap = json!({"name": "f", "type": "flap", "attributes": {"up": 5, "down": 5}});
        let flap: Envelope = serde_json::from_value(flap).unwrap();
        store.add_toxic("p", flap).await.unwrap();
        // Long enough to go down and up at least once.
        tokio::time::sleep(Duration::from_millis(30)).await;
        store.delete("p").await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while alive() > before {
        assert!(
            Instant::now() < deadline,
            "{} tasks alive 2 s after the deletes, {before} before",
            alive()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.cancel();
}
