//! Test harness: a real fallacy server, real upstreams, real sockets, all on 127.0.0.1:0.
//!
//! Every server started here stops by itself: when its guard is dropped, and in any case after
//! [`SERVER_LIFETIME`].

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use fallacy::Server;
use fallacy::config::Config;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// No test server lives longer than this, whatever happens to the test.
pub const SERVER_LIFETIME: Duration = Duration::from_secs(120);

/// A fallacy server running in this process, with its admin API on a real port.
pub struct Fallacy {
    pub server: Server,
    pub admin: SocketAddr,
    pub http: reqwest::Client,
    /// Sent as a bearer token when the config sets one.
    pub token: Option<String>,
}

impl Fallacy {
    pub async fn start() -> Fallacy {
        Fallacy::with_config(Config::default()).await
    }

    pub async fn with_config(config: Config) -> Fallacy {
        let token = config.admin_token.as_ref().map(|t| t.expose().to_owned());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let server = Server::start(listener, config, None, shutdown.clone())
            .await
            .unwrap();
        let s = server.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = s.clone().run_until_shutdown() => {}
                _ = tokio::time::sleep(SERVER_LIFETIME) => s.shutdown.cancel(),
            }
        });
        Fallacy {
            server,
            admin,
            http: reqwest::Client::new(),
            token,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    /// Sends a request with a raw body; returns status and parsed JSON (Null when empty).
    pub async fn call(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        let (status, text) = self.call_raw(method, path, body).await;
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, value)
    }

    pub async fn call_raw(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self.http.request(method, self.url(path));
        if let Some(token) = &self.token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.body(body.to_owned());
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.text().await.unwrap())
    }

    /// Creates a proxy on 127.0.0.1:0 to `upstream`; returns the address it listens on.
    pub async fn proxy(&self, name: &str, upstream: SocketAddr) -> SocketAddr {
        let body = json!({"name": name, "listen": "127.0.0.1:0", "upstream": upstream.to_string()});
        let (status, proxy) = self.call("POST", "/proxies", Some(&body.to_string())).await;
        assert_eq!(status, 201, "{proxy}");
        proxy["listen"].as_str().unwrap().parse().unwrap()
    }

    /// Adds a toxic and asserts it was accepted.
    pub async fn toxic(&self, proxy: &str, toxic: Value) -> Value {
        let (status, body) = self
            .call(
                "POST",
                &format!("/proxies/{proxy}/toxics"),
                Some(&toxic.to_string()),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body
    }
}

impl Drop for Fallacy {
    fn drop(&mut self) {
        self.server.shutdown.cancel();
    }
}

/// Serves an axum app on 127.0.0.1:0 until the test's runtime ends, and at most
/// [`SERVER_LIFETIME`]; returns its address.
pub async fn serve_app(app: axum::Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = tokio::time::timeout(SERVER_LIFETIME, axum::serve(listener, app)).await;
    });
    addr
}

/// An upstream that echoes every byte, and on EOF finishes echoing then shuts down its write
/// side (so half-close can be observed end to end).
pub struct Echo {
    pub addr: SocketAddr,
    stop: CancellationToken,
}

impl Echo {
    pub async fn start() -> Echo {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let token = stop.clone();
        tokio::spawn(async move {
            let deadline = tokio::time::sleep(SERVER_LIFETIME);
            tokio::pin!(deadline);
            loop {
                let (mut sock, _) = tokio::select! {
                    _ = token.cancelled() => return,
                    _ = &mut deadline => return,
                    accepted = listener.accept() => match accepted { Ok(a) => a, Err(_) => continue },
                };
                let token = token.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = tokio::select! {
                            _ = token.cancelled() => return,
                            n = sock.read(&mut buf) => match n { Ok(n) => n, Err(_) => return },
                        };
                        if n == 0 {
                            let _ = sock.shutdown().await;
                            return;
                        }
                        if sock.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Echo { addr, stop }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// An upstream that accepts connections, counts them, and never answers or closes on its own
/// (it closes everything when dropped).
pub struct Silent {
    pub addr: SocketAddr,
    stop: CancellationToken,
}

impl Silent {
    pub async fn start() -> Silent {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let token = stop.clone();
        tokio::spawn(async move {
            let mut held = Vec::new();
            let deadline = tokio::time::sleep(SERVER_LIFETIME);
            tokio::pin!(deadline);
            loop {
                tokio::select! {
                    _ = token.cancelled() => return,
                    _ = &mut deadline => return,
                    accepted = listener.accept() => if let Ok((s, _)) = accepted { held.push(s) },
                }
            }
        });
        Silent { addr, stop }
    }
}

impl Drop for Silent {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A free loopback address with nothing listening (bound then released).
pub async fn dead_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

/// Connects with a bound on the time it may take.
pub async fn connect(addr: SocketAddr) -> TcpStream {
    let s = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
        .await
        .expect("connect timed out")
        .expect("connect failed");
    s.set_nodelay(true).unwrap();
    s
}

/// Reads until EOF or `limit`, failing the test if it takes longer than `within`.
pub async fn read_to_end(s: &mut TcpStream, within: Duration) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    tokio::time::timeout(within, s.read_to_end(&mut out))
        .await
        .expect("read timed out")?;
    Ok(out)
}

/// Asserts the peer closes (FIN or RST) without sending anything, within `within`.
pub async fn assert_closed(s: &mut TcpStream, within: Duration) {
    let got = read_to_end(s, within).await.unwrap_or_default();
    assert!(
        got.is_empty(),
        "expected a close with no data, got {} bytes",
        got.len()
    );
}

/// Asserts `took` is at least `at_least` (a delay must never be shorter than asked) and less
/// than `at_least + slack` (the machine is shared, so the upper bound is generous).
pub fn assert_took(took: Duration, at_least: Duration, slack: Duration) {
    assert!(took >= at_least, "{took:?} is shorter than {at_least:?}");
    assert!(
        took < at_least + slack,
        "{took:?} is longer than {at_least:?} + {slack:?}"
    );
}

/// Asserts the peer sends nothing and keeps the connection open for `for_at_least`.
pub async fn assert_silent(s: &mut TcpStream, for_at_least: Duration) {
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(for_at_least, s.read(&mut buf)).await;
    assert!(read.is_err(), "expected silence, got {read:?}");
}

/// Asserts the next read fails with a connection reset, within `within`.
pub async fn assert_reset(s: &mut TcpStream, within: Duration) {
    let mut buf = [0u8; 64];
    let err = tokio::time::timeout(within, s.read(&mut buf))
        .await
        .expect("no reset in time")
        .expect_err("expected a reset, got data or EOF");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
}

/// A new connection to `addr` is accepted and reset at once. The reset can beat the client's
/// own connect to its end (the connect then fails with it), or come after it.
pub async fn assert_refused(addr: SocketAddr, within: Duration) {
    match tokio::time::timeout(within, TcpStream::connect(addr))
        .await
        .expect("connect timed out")
    {
        Ok(mut s) => {
            let _ = s.write_all(b"x").await;
            assert_reset(&mut s, within).await;
        }
        Err(err) => assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}"),
    }
}

/// Reads exactly `n` bytes within `within`.
pub async fn read_exact(s: &mut TcpStream, n: usize, within: Duration) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    tokio::time::timeout(within, s.read_exact(&mut buf))
        .await
        .expect("read timed out")
        .unwrap();
    buf
}

/// Deterministic pseudo-random bytes.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Sends one message and times how long its echo takes to come back in full.
pub async fn round_trip(s: &mut TcpStream, msg: &[u8]) -> Duration {
    let start = std::time::Instant::now();
    s.write_all(msg).await.unwrap();
    let back = read_exact(s, msg.len(), Duration::from_secs(20)).await;
    assert_eq!(back, msg);
    start.elapsed()
}

/// A store with no server around it, its proxies stopped by `stop`: for driving the state
/// directly (paused time, task counts).
pub fn bare_store(stop: &CancellationToken) -> fallacy::state::Store {
    fallacy::state::Store::new(
        fallacy::proxy::Settings::default(),
        stop.clone(),
        stop.clone(),
        tokio_util::task::TaskTracker::new(),
    )
}

/// A TCP proxy on a free port to the discard port, with every option at its default.
pub fn new_proxy(name: &str) -> fallacy::state::NewProxy {
    fallacy::state::NewProxy {
        name: name.into(),
        listen: "127.0.0.1:0".into(),
        upstream: "127.0.0.1:9".into(),
        enabled: true,
        protocol: fallacy::proxy::Protocol::Tcp,
        fault_header: true,
        rewrite_host: None,
        measure: Default::default(),
        labels: None,
        upstreams: None,
    }
}

/// A client process that must reach loopback directly: no HTTP proxy from the environment
/// between it and fallacy. Its output is captured, and it dies with its handle.
pub fn loopback_client(program: &str) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(program);
    command.env("NO_PROXY", "127.0.0.1,localhost");
    for var in [
        "http_proxy",
        "HTTP_PROXY",
        "https_proxy",
        "HTTPS_PROXY",
        "all_proxy",
        "ALL_PROXY",
    ] {
        command.env_remove(var);
    }
    command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    command
}
