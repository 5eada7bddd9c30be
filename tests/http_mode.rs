//! HTTP proxies (`"protocol": "http"`): a real axum upstream, real HTTP clients (reqwest, and
//! raw sockets where the exact bytes matter), every HTTP fault, matchers, and bad input.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::routing::{get, post};
use serde_json::{Value, json};
use support::{Fallacy, assert_reset, dead_addr, random_bytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Bytes of `/big`, streamed in pieces (chunked encoding).
const BIG: usize = 3 << 20;

/// A real HTTP upstream on 127.0.0.1:0: `/` says hello, `POST /orders` and `/echo` echo the
/// body, `/big` streams a large chunked body, `/headers` shows the request's headers. It stops
/// when the test's runtime does, and in any case after the harness lifetime.
async fn upstream() -> SocketAddr {
    let app = Router::new()
        .route("/", get(|| async { "hello" }))
        .route(
            "/orders",
            post(|body: String| async move { body }).get(|| async { "orders" }),
        )
        .route("/echo", post(|body: axum::body::Bytes| async move { body }))
        .route(
            "/headers",
            get(|h: axum::http::HeaderMap| async move {
                let mut names: Vec<String> = h
                    .iter()
                    .map(|(k, v)| format!("{k}={}", v.to_str().unwrap_or("?")))
                    .collect();
                names.sort();
                names.join("\n")
            }),
        )
        .route(
            "/big",
            get(|| async {
                let data = random_bytes(BIG, 5);
                let pieces: Vec<Result<Vec<u8>, std::io::Error>> =
                    data.chunks(7_919).map(|c| Ok(c.to_vec())).collect();
                Body::from_stream(futures_util::stream::iter(pieces))
            }),
        );
    support::serve_app(app).await
}

async fn setup() -> (Fallacy, SocketAddr, String) {
    let f = Fallacy::start().await;
    let up = upstream().await;
    let body = json!({"name": "web", "listen": "127.0.0.1:0", "upstream": up.to_string(), "protocol": "http"});
    let (status, proxy) = f.call("POST", "/proxies", Some(&body.to_string())).await;
    assert_eq!(status, 201, "{proxy}");
    assert_eq!(proxy["protocol"], "http");
    let addr: SocketAddr = proxy["listen"].as_str().unwrap().parse().unwrap();
    (f, addr, format!("http://{addr}"))
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

async fn add(f: &Fallacy, toxic: Value) -> Value {
    f.toxic("web", toxic).await
}

#[tokio::test]
async fn requests_pass_through_unchanged_without_faults() {
    let (_f, _addr, base) = setup().await;
    let c = client();
    let r = c.get(format!("{base}/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("x-fallacy-fault").is_none());
    assert_eq!(r.text().await.unwrap(), "hello");
    let body = random_bytes(1 << 20, 3);
    let r = c
        .post(format!("{base}/echo"))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.bytes().await.unwrap().as_ref(), &body[..]);
    // A chunked, streamed response arrives byte for byte.
    let r = c.get(format!("{base}/big")).send().await.unwrap();
    assert_eq!(r.bytes().await.unwrap().as_ref(), &random_bytes(BIG, 5)[..]);
}

/// The proxy answers in the client's HTTP version whatever the upstream speaks: an HTTP/1.0
/// upstream must not turn a keep-alive HTTP/1.1 connection into a one-shot one.
#[tokio::test]
async fn responses_carry_the_clients_version_not_the_upstreams() {
    let f = Fallacy::start().await;
    let old = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = old.local_addr().unwrap();
    tokio::spawn(async move {
        // An HTTP/1.0 server: one response per connection, then close.
        for _ in 0..4 {
            let Ok((mut s, _)) = old.accept().await else {
                return;
            };
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            let _ = s
                .write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .await;
        }
    });
    let body = json!({"name": "old", "listen": "127.0.0.1:0", "upstream": up.to_string(), "protocol": "http"});
    let (_, proxy) = f.call("POST", "/proxies", Some(&body.to_string())).await;
    let mut s = TcpStream::connect(proxy["listen"].as_str().unwrap())
        .await
        .unwrap();
    s.write_all(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let first = read_until(&mut s, "ok").await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first:?}");
    // Same connection, second request: still served.
    s.write_all(b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let second = read_until(&mut s, "ok").await;
    assert!(second.starts_with("HTTP/1.1 200"), "{second:?}");
}

#[tokio::test]
async fn h2c_with_prior_knowledge_is_served() {
    let (_f, _addr, base) = setup().await;
    let c = reqwest::Client::builder()
        .http2_prior_knowledge()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let r = c.get(format!("{base}/headers")).send().await.unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    let text = r.text().await.unwrap();
    // The upstream, spoken to in HTTP/1.1, still learns the host the client asked for.
    assert!(
        text.contains(&format!("host={}", base.trim_start_matches("http://"))),
        "{text}"
    );
}

/// The README's promise: two curls make 10 % of POST /orders answer 503 with Retry-After,
/// naming the fault, and nothing else is touched.
#[tokio::test]
async fn ten_percent_of_post_orders_get_503_with_retry_after_and_the_fault_named() {
    let (f, _addr, base) = setup().await;
    add(
        &f,
        json!({"name": "orders-503", "type": "http_abort", "toxicity": 0.1,
               "attributes": {"status": 503, "retry_after": "2s"},
               "match": {"method": "POST", "path": "/orders"}}),
    )
    .await;
    let c = client();
    let (mut failed, n) = (0, 400);
    for i in 0..n {
        let r = c
            .post(format!("{base}/orders"))
            .body(format!("order {i}"))
            .send()
            .await
            .unwrap();
        if r.status() == 503 {
            failed += 1;
            assert_eq!(r.headers()["retry-after"], "2");
            assert_eq!(r.headers()["x-fallacy-fault"], "orders-503");
        } else {
            assert_eq!(r.status(), 200);
            assert!(r.headers().get("x-fallacy-fault").is_none());
            assert_eq!(r.text().await.unwrap(), format!("order {i}"));
        }
    }
    // Binomial(400, 0.1): mean 40, sd 6; 16..64 is four sd either way.
    assert!((16..=64).contains(&failed), "{failed} of {n} failed");
    for _ in 0..50 {
        let r = c.get(format!("{base}/orders")).send().await.unwrap();
        assert_eq!(r.status(), 200, "GET /orders is not matched");
    }
}

#[tokio::test]
async fn a_keep_alive_connection_serves_on_after_a_fault() {
    let (f, addr, _base) = setup().await;
    add(
        &f,
        json!({"name": "teapot", "type": "http_abort", "attributes": {"status": 418, "body": "no"},
                   "match": {"path": "/orders"}}),
    )
    .await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = "GET /orders HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n";
    s.write_all(req.as_bytes()).await.unwrap();
    let text = read_until(&mut s, "hello").await;
    assert!(text.starts_with("HTTP/1.1 418"), "{text}");
    assert!(text.contains("x-fallacy-fault: teapot"), "{text}");
    assert_eq!(text.matches("HTTP/1.1 ").count(), 2, "{text}");
}

async fn read_until(s: &mut TcpStream, needle: &str) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(10);
    while !String::from_utf8_lossy(&out).contains(needle) {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Ok(Ok(0)) | Err(_) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Ok(Err(e)) => panic!("read: {e}"),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn header_matchers_pick_requests() {
    let (f, _addr, base) = setup().await;
    add(
        &f,
        json!({"name": "tenant-a", "type": "http_abort", "attributes": {"status": 500},
                   "match": {"header": {"name": "x-tenant", "equals": "a"}}}),
    )
    .await;
    add(
        &f,
        json!({"name": "curl", "type": "http_abort", "attributes": {"status": 502},
                   "match": {"header": {"name": "user-agent", "regex": "^curl/"}}}),
    )
    .await;
    let c = client();
    let status = |r: reqwest::Response| r.status().as_u16();
    assert_eq!(
        status(c.get(&base).header("x-tenant", "a").send().await.unwrap()),
        500
    );
    assert_eq!(
        status(c.get(&base).header("x-tenant", "b").send().await.unwrap()),
        200
    );
    assert_eq!(
        status(
            c.get(&base)
                .header("user-agent", "curl/8.5")
                .send()
                .await
                .unwrap()
        ),
        502
    );
    assert_eq!(status(c.get(&base).send().await.unwrap()), 200);
    // The first toxic that answers wins; both are named only if both acted.
    let r = c
        .get(&base)
        .header("x-tenant", "a")
        .header("user-agent", "curl/1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 500);
    assert_eq!(r.headers()["x-fallacy-fault"], "tenant-a");
}

#[tokio::test]
async fn http_delay_waits_in_the_phase_asked_for() {
    let (f, _addr, base) = setup().await;
    let c = client();
    for (phase, ms) in [("request", 150u64), ("headers", 200), ("body", 250)] {
        add(
            &f,
            json!({"name": "slow", "type": "http_delay",
                       "attributes": {"latency": ms, "phase": phase}}),
        )
        .await;
        let t0 = Instant::now();
        let r = c.get(&base).send().await.unwrap();
        let headers_at = t0.elapsed();
        assert_eq!(r.headers()["x-fallacy-fault"], "slow");
        assert_eq!(r.text().await.unwrap(), "hello");
        let body_at = t0.elapsed();
        let want = Duration::from_millis(ms);
        if phase == "body" {
            assert!(
                headers_at < want,
                "{phase}: headers came after {headers_at:?}"
            );
            assert!(body_at >= want, "{phase}: body came after {body_at:?}");
        } else {
            assert!(
                headers_at >= want,
                "{phase}: headers came after {headers_at:?}"
            );
        }
        assert!(
            body_at < want + Duration::from_millis(400),
            "{phase}: {body_at:?}"
        );
        let (status, _) = f.call("DELETE", "/proxies/web/toxics/slow", None).await;
        assert_eq!(status, 204);
    }
}

#[tokio::test]
async fn latency_on_an_http_proxy_delays_each_request() {
    let (f, _addr, base) = setup().await;
    add(
        &f,
        json!({"type": "latency", "attributes": {"latency": 120}}),
    )
    .await;
    let c = client();
    for _ in 0..3 {
        let t0 = Instant::now();
        let r = c.get(&base).send().await.unwrap();
        assert_eq!(r.text().await.unwrap(), "hello");
        assert!(
            t0.elapsed() >= Duration::from_millis(120),
            "{:?}",
            t0.elapsed()
        );
    }
}

#[tokio::test]
async fn maintenance_answers_503_with_a_default_retry_after() {
    let (f, _addr, base) = setup().await;
    add(&f, json!({"name": "window", "type": "maintenance"})).await;
    let r = client().get(&base).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "30");
    assert_eq!(r.headers()["x-fallacy-fault"], "window");
}

#[tokio::test]
async fn rate_limit_answers_429_past_the_burst() {
    let (f, _addr, base) = setup().await;
    add(
        &f,
        json!({"name": "rl", "type": "rate_limit", "attributes": {"rate": 2, "burst": 5}}),
    )
    .await;
    let c = client();
    let mut codes = Vec::new();
    for _ in 0..10 {
        let r = c.get(&base).send().await.unwrap();
        if r.status() == 429 {
            let after: u64 = r.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!((1..=1).contains(&after), "retry-after {after}");
            assert_eq!(r.headers()["x-fallacy-fault"], "rl");
        }
        codes.push(r.status().as_u16());
    }
    // Ten requests well within a second: the burst of 5 passes, then about 2/s refill.
    let ok = codes.iter().filter(|&&c| c == 200).count();
    assert!((5..=6).contains(&ok), "{codes:?}");
}

#[tokio::test]
async fn an_abort_with_reset_resets_the_connection() {
    let (f, addr, _base) = setup().await;
    add(
        &f,
        json!({"name": "rst", "type": "http_abort", "attributes": {"reset": true}}),
    )
    .await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert_reset(&mut s, Duration::from_secs(5)).await;
}

#[tokio::test]
async fn the_fault_header_can_be_turned_off() {
    let (f, _addr, base) = setup().await;
    add(&f, json!({"name": "m", "type": "maintenance"})).await;
    let (status, proxy) = f
        .call("POST", "/proxies/web", Some(r#"{"fault_header": false}"#))
        .await;
    assert_eq!(status, 200, "{proxy}");
    assert_eq!(proxy["fault_header"], false);
    let r = client().get(&base).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().get("x-fallacy-fault").is_none());
}

#[tokio::test]
async fn a_dead_upstream_is_a_502_that_names_it() {
    let f = Fallacy::start().await;
    let dead = dead_addr().await;
    let body = json!({"name": "web", "listen": "127.0.0.1:0", "upstream": dead.to_string(), "protocol": "http"});
    let (status, proxy) = f.call("POST", "/proxies", Some(&body.to_string())).await;
    assert_eq!(status, 201);
    let r = client()
        .get(format!("http://{}/", proxy["listen"].as_str().unwrap()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    let text = r.text().await.unwrap();
    assert!(text.contains(&dead.to_string()), "{text}");
    // The innermost cause, the one a user can act on.
    assert!(text.to_lowercase().contains("refused"), "{text}");
}

#[tokio::test]
async fn malformed_requests_get_a_400_and_connect_a_clear_501() {
    let (_f, addr, _base) = setup().await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"THIS IS NOT HTTP\r\n\r\n").await.unwrap();
    let text = read_until(&mut s, "\r\n").await;
    assert!(text.starts_with("HTTP/1.1 400"), "{text:?}");
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
        .await
        .unwrap();
    let text = read_until(&mut s, "TCP proxy").await;
    assert!(text.starts_with("HTTP/1.1 501"), "{text:?}");
}

/// An upgrade (as WebSocket does) goes through: the upstream's 101 reaches the client, then
/// the bytes flow both ways untouched until a side closes.
#[tokio::test]
async fn upgrades_pass_through_as_a_byte_tunnel() {
    let f = Fallacy::start().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let Ok((mut s, _)) = listener.accept().await else {
            return;
        };
        let head = read_until(&mut s, "\r\n\r\n").await.to_ascii_lowercase();
        if !head.contains("upgrade: echo") || !head.contains("connection: upgrade") {
            // The proxy dropped the upgrade headers: answer something the test will reject.
            let _ = s
                .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
                .await;
            return;
        }
        s.write_all(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n",
        )
        .await
        .unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        }
    });
    let body = json!({"name": "ws", "listen": "127.0.0.1:0", "upstream": up.to_string(), "protocol": "http"});
    let (_, proxy) = f.call("POST", "/proxies", Some(&body.to_string())).await;
    let mut s = TcpStream::connect(proxy["listen"].as_str().unwrap())
        .await
        .unwrap();
    s.write_all(b"GET /chat HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
        .await
        .unwrap();
    let head = read_until(&mut s, "\r\n\r\n").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head:?}");
    let data = random_bytes(256 * 1024, 21);
    let (mut r, mut w) = s.split();
    let send = async {
        w.write_all(&data).await.unwrap();
    };
    let recv = async {
        let mut got = vec![0u8; data.len()];
        tokio::time::timeout(Duration::from_secs(10), r.read_exact(&mut got))
            .await
            .expect("echo through the tunnel timed out")
            .unwrap();
        got
    };
    let ((), got) = tokio::join!(send, recv);
    assert!(got == data, "bytes differ through the tunnel");
}

/// Every rejection names the field and changes nothing.
#[tokio::test]
async fn bad_http_input_is_refused_and_changes_nothing() {
    let (f, _addr, _base) = setup().await;
    let tcp = f.proxy("tcp", dead_addr().await).await;
    let _ = tcp;
    for (proxy, toxic, fragment) in [
        (
            "tcp",
            json!({"type": "http_abort"}),
            "type: http_abort acts on HTTP requests",
        ),
        (
            "tcp",
            json!({"type": "latency", "match": {"path": "/"}}),
            "match: matches HTTP requests",
        ),
        (
            "tcp",
            json!({"type": "latency", "attributes": {"per": "request"}}),
            "attributes.per",
        ),
        (
            "web",
            json!({"type": "bandwidth", "attributes": {"rate": 1}, "match": {"path": "/"}}),
            "match: bandwidth acts on the connection's bytes, not on requests",
        ),
        (
            "web",
            json!({"type": "connect_delay", "attributes": {"latency": 5}}),
            "type: connect_delay delays a TCP proxy's dial",
        ),
        (
            "web",
            json!({"type": "http_abort", "attributes": {"status": 99}}),
            "attributes.status: must be an HTTP status from 200 to 599, got 99",
        ),
        (
            "web",
            json!({"type": "http_abort", "attributes": {"status": 600}}),
            "attributes.status",
        ),
        (
            "web",
            json!({"type": "http_abort", "match": {"header": {"name": "x", "regex": "(["}}}),
            "match.header.regex: bad regex",
        ),
        (
            "web",
            json!({"type": "http_abort", "match": {"header": {"name": "bad name"}}}),
            "match.header.name",
        ),
        (
            "web",
            json!({"type": "http_abort", "match": {"mehtod": "GET"}}),
            "match.mehtod: unknown key",
        ),
        (
            "web",
            json!({"type": "http_abort", "toxicity": 1.5}),
            "toxicity must be between 0 and 1",
        ),
        (
            "web",
            json!({"type": "http_delay", "attributes": {"phase": "later"}}),
            "attributes.phase",
        ),
        (
            "web",
            json!({"type": "http_delay", "attributes": {"per": "chunk"}}),
            "attributes.per",
        ),
        (
            "web",
            json!({"type": "http_delay", "attributes": {"distribution": "lognormal", "p50": 20, "p99": 10}}),
            "attributes.p99",
        ),
        (
            "web",
            json!({"type": "rate_limit", "attributes": {"rate": 0}}),
            "attributes.rate",
        ),
        (
            "web",
            json!({"type": "rate_limit", "attributes": {"rate": 5, "burst": 0}}),
            "attributes.burst",
        ),
        (
            "web",
            json!({"type": "rate_limit", "attributes": {"rate": 5, "per": "user"}}),
            "attributes.per",
        ),
        (
            "web",
            json!({"type": "maintenance", "attributes": {"retry_after": -1}}),
            "attributes.retry_after",
        ),
        (
            "web",
            json!({"type": "http_truncate", "attributes": {"bytes": -1}}),
            "attributes.bytes",
        ),
        (
            "web",
            json!({"type": "http_slow_body", "attributes": {"rate": 0}}),
            "attributes.rate",
        ),
        (
            "web",
            json!({"type": "tamper", "attributes": {"set_headers": {"bad name": "x"}}}),
            "attributes.set_headers.bad name",
        ),
        (
            "web",
            json!({"type": "tamper", "attributes": {"set_headers": {"x": "a\nb"}}}),
            "not a valid header value",
        ),
        (
            "web",
            json!({"type": "tamper", "attributes": {"remove_headers": ["ok", "no pe"]}}),
            "attributes.remove_headers[1]",
        ),
        (
            "web",
            json!({"type": "tamper", "attributes": {"flip": 2}}),
            "attributes.flip",
        ),
        (
            "web",
            json!({"type": "http_delay", "attributes": {"deadline": "maybe"}}),
            "attributes.deadline",
        ),
        (
            "web",
            json!({"type": "http_delay", "attributes": {"deadline_header": "a b"}}),
            "attributes.deadline_header",
        ),
        (
            "tcp",
            json!({"type": "tamper"}),
            "type: tamper acts on HTTP requests",
        ),
    ] {
        let (status, body) = f
            .call(
                "POST",
                &format!("/proxies/{proxy}/toxics"),
                Some(&toxic.to_string()),
            )
            .await;
        assert_eq!(status, 400, "{toxic}: {body}");
        let error = body["error"].as_str().unwrap();
        assert!(error.contains(fragment), "{toxic}: {error}");
    }
    for proxy in ["tcp", "web"] {
        let (_, toxics) = f
            .call("GET", &format!("/proxies/{proxy}/toxics"), None)
            .await;
        assert_eq!(toxics, json!([]), "{proxy} changed");
    }
    let (status, body) = f
        .call("POST", "/proxies/web", Some(r#"{"protocol": "tcp"}"#))
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("protocol"),
        "{body}"
    );
    // "udp" is a protocol now (tests/udp.rs); a misspelled one is not.
    let (status, body) = f
        .call(
            "POST",
            "/proxies",
            Some(r#"{"name":"u","upstream":"127.0.0.1:1","protocol":"UDP"}"#),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("must be \"tcp\", \"http\" or \"udp\""),
        "{body}"
    );
    let (status, _) = f.call("GET", "/proxies/u", None).await;
    assert_eq!(status, 404);
    // An update that would put a byte toxic on the HTTP proxy is refused too.
    add(
        &f,
        json!({"name": "d", "type": "http_delay", "attributes": {"latency": 1}}),
    )
    .await;
    let (status, body) = f
        .call(
            "POST",
            "/proxies/web/toxics/d",
            Some(r#"{"match": {"path": "nope"}}"#),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    let (_, toxic) = f.call("GET", "/proxies/web/toxics/d", None).await;
    assert!(toxic.get("match").is_none(), "{toxic}");
}

#[tokio::test]
async fn match_is_shown_and_can_be_replaced_or_removed() {
    let (f, _addr, base) = setup().await;
    let t = add(
        &f,
        json!({"name": "a", "type": "http_abort", "attributes": {"status": 500},
                           "match": {"path": "/orders*"}}),
    )
    .await;
    assert_eq!(t["match"], json!({"path": "/orders*"}));
    let c = client();
    assert_eq!(c.get(&base).send().await.unwrap().status(), 200);
    let (status, t) = f
        .call("POST", "/proxies/web/toxics/a", Some(r#"{"match": null}"#))
        .await;
    assert_eq!(status, 200, "{t}");
    assert!(t.get("match").is_none(), "{t}");
    assert_eq!(c.get(&base).send().await.unwrap().status(), 500);
}

/// A client that never finishes its headers is cut off after `header_read_timeout`.
#[tokio::test]
async fn a_slow_loris_client_is_cut_off() {
    let config = fallacy::config::Config {
        header_read_timeout: Duration::from_millis(300),
        ..Default::default()
    };
    let f = Fallacy::with_config(config).await;
    let up = upstream().await;
    let body = json!({"name": "web", "listen": "127.0.0.1:0", "upstream": up.to_string(), "protocol": "http"});
    let (status, proxy) = f.call("POST", "/proxies", Some(&body.to_string())).await;
    assert_eq!(status, 201, "{proxy}");
    let mut s = TcpStream::connect(proxy["listen"].as_str().unwrap())
        .await
        .unwrap();
    let start = Instant::now();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    // A header line now and then, never the blank line that ends them.
    let mut buf = [0u8; 1024];
    let closed = loop {
        match tokio::time::timeout(Duration::from_millis(100), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            // hyper may answer 408 before closing: read on to the close.
            Ok(Ok(_)) => {}
            Err(_) => {
                if start.elapsed() > Duration::from_secs(5) {
                    break false;
                }
                let _ = s.write_all(b"X-Drip: 1\r\n").await;
            }
        }
    };
    assert!(
        closed,
        "the connection stayed open for {:?}",
        start.elapsed()
    );
    assert!(
        start.elapsed() >= Duration::from_millis(250),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn http_truncate_cuts_the_body_and_aborts() {
    let (f, _addr, base) = setup().await;
    add(&f, json!({"name": "cut", "type": "http_truncate", "attributes": {"bytes": 1000}, "match": {"path": "/big"}})).await;
    let c = client();
    let r = c.get(format!("{base}/big")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-fallacy-fault"], "cut");
    // The client gets the first 1000 bytes, then an error: never a clean, short body.
    let mut r = r;
    let mut got = Vec::new();
    let err = loop {
        match r.chunk().await {
            Ok(Some(c)) => got.extend_from_slice(&c),
            Ok(None) => panic!("the body ended cleanly after {} bytes", got.len()),
            Err(e) => break e,
        }
    };
    assert_eq!(got, random_bytes(BIG, 5)[..1000], "{err}");
    // Unmatched requests are untouched.
    assert_eq!(
        c.get(&base).send().await.unwrap().text().await.unwrap(),
        "hello"
    );
}

#[tokio::test]
async fn http_slow_body_paces_the_response() {
    let (f, _addr, base) = setup().await;
    add(
        &f,
        json!({"type": "http_slow_body", "attributes": {"rate": 100}}),
    )
    .await;
    let body = random_bytes(50_000, 4);
    let t0 = Instant::now();
    let r = client()
        .post(format!("{base}/echo"))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.bytes().await.unwrap().as_ref(), &body[..]);
    // 50 KB at 100 KB/s: half a second.
    let took = t0.elapsed();
    assert!(took >= Duration::from_millis(480), "{took:?}");
    assert!(took < Duration::from_millis(1200), "{took:?}");
}

#[tokio::test]
async fn tamper_edits_headers_and_flips_bits() {
    let (f, _addr, base) = setup().await;
    add(
        &f,
        json!({"name": "t-res", "type": "tamper", "attributes": {
        "set_headers": {"x-tampered": "yes"},
        "remove_headers": ["content-type"]}}),
    )
    .await;
    add(
        &f,
        json!({"name": "t-req", "type": "tamper", "stream": "upstream",
                   "attributes": {"flip": 0.5}, "match": {"path": "/echo"}}),
    )
    .await;
    let c = client();
    let r = c.get(&base).send().await.unwrap();
    assert_eq!(r.headers()["x-tampered"], "yes");
    assert!(r.headers().get("content-type").is_none());
    assert_eq!(r.headers()["x-fallacy-fault"], "t-res");
    // Half the request's bytes reach the upstream with one bit flipped.
    let body = vec![0u8; 20_000];
    let r = c
        .post(format!("{base}/echo"))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-fallacy-fault"], "t-res, t-req");
    let got = r.bytes().await.unwrap();
    assert_eq!(got.len(), body.len());
    let flipped = got.iter().filter(|&&b| b != 0).count();
    assert!(
        (9_000..=11_000).contains(&flipped),
        "{flipped} of 20000 flipped"
    );
    assert!(
        got.iter().all(|b| b.count_ones() <= 1),
        "more than one bit flipped in a byte"
    );
}

#[tokio::test]
async fn downgrade_refuses_http2_but_serves_http1() {
    let (f, _addr, base) = setup().await;
    add(&f, json!({"name": "h1", "type": "downgrade"})).await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    assert!(
        h2.get(&base).send().await.is_err(),
        "h2c prior knowledge must fail"
    );
    let r = client().get(&base).send().await.unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_11);
    assert_eq!(r.text().await.unwrap(), "hello");
    let (status, body) = f
        .call(
            "POST",
            "/proxies/web/toxics",
            Some(r#"{"type":"downgrade","name":"m","match":{"path":"/"}}"#),
        )
        .await;
    assert_eq!(status, 400, "{body}");
}

/// With a deadline in the request, http_delay can make the client's timeout fire for sure, or
/// answer just in time.
#[tokio::test]
async fn http_delay_targets_the_requests_deadline() {
    let (f, _addr, base) = setup().await;
    add(
        &f,
        json!({"name": "late", "type": "http_delay",
                   "attributes": {"latency": 1, "deadline": "exceed", "margin": "20ms"},
                   "match": {"header": {"name": "x-want", "equals": "late"}}}),
    )
    .await;
    add(&f, json!({"name": "just", "type": "http_delay",
                   "attributes": {"deadline": "meet", "margin": "60ms", "deadline_header": "x-timeout-ms"},
                   "match": {"header": {"name": "x-want", "equals": "just"}}})).await;
    let c = client();
    let t0 = Instant::now();
    let r = c
        .get(&base)
        .header("x-want", "late")
        .header("grpc-timeout", "150m")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        t0.elapsed() >= Duration::from_millis(170),
        "{:?}",
        t0.elapsed()
    );
    let t0 = Instant::now();
    let r = c
        .get(&base)
        .header("x-want", "just")
        .header("x-timeout-ms", "200")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(140) && took < Duration::from_millis(200),
        "{took:?}"
    );
    // Without a deadline the drawn delay applies (1 ms here).
    let t0 = Instant::now();
    c.get(&base).header("x-want", "late").send().await.unwrap();
    assert!(
        t0.elapsed() < Duration::from_millis(150),
        "{:?}",
        t0.elapsed()
    );
}

/// HTTP/2 requests go on over h2c, so an h2-only upstream (gRPC) works through the proxy,
/// trailers included; HTTP/1.1 requests stay HTTP/1.1.
#[tokio::test]
async fn http2_requests_reach_an_h2c_only_upstream_with_trailers() {
    use http_body_util::{BodyExt, StreamBody};
    use hyper::body::Frame;
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let f = Fallacy::start().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok(Ok((s, _))) =
                tokio::time::timeout(support::SERVER_LIFETIME, listener.accept()).await
            else {
                return;
            };
            let service = hyper::service::service_fn(
                |req: hyper::Request<hyper::body::Incoming>| async move {
                    let te = req
                        .headers()
                        .get("te")
                        .map(|v| v.to_str().unwrap().to_owned());
                    let mut trailers = hyper::HeaderMap::new();
                    trailers.insert("grpc-status", "0".parse().unwrap());
                    let frames: Vec<Result<Frame<bytes::Bytes>, std::convert::Infallible>> = vec![
                        Ok(Frame::data(bytes::Bytes::from(format!(
                            "{:?} te={te:?}",
                            req.version()
                        )))),
                        Ok(Frame::trailers(trailers)),
                    ];
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(StreamBody::new(
                        futures_util::stream::iter(frames),
                    )))
                },
            );
            tokio::spawn(
                hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), service),
            );
        }
    });
    let body = json!({"name": "grpc", "listen": "127.0.0.1:0", "upstream": up.to_string(), "protocol": "http"});
    let (_, proxy) = f.call("POST", "/proxies", Some(&body.to_string())).await;
    let client: hyper_util::client::legacy::Client<_, http_body_util::Empty<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build_http();
    let req = hyper::Request::get(format!(
        "http://{}/svc/Method",
        proxy["listen"].as_str().unwrap()
    ))
    .header("te", "trailers")
    .body(http_body_util::Empty::new())
    .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let collected = resp.into_body().collect().await.unwrap();
    let trailers = collected
        .trailers()
        .cloned()
        .expect("trailers are passed on");
    assert_eq!(trailers["grpc-status"], "0");
    let text = String::from_utf8(collected.to_bytes().to_vec()).unwrap();
    assert_eq!(text, r#"HTTP/2.0 te=Some("trailers")"#);
}

#[tokio::test]
async fn rewrite_host_replaces_the_forwarded_host() {
    let (f, addr, base) = setup().await;
    let c = client();
    let shown = |text: String| {
        text.lines()
            .find(|l| l.starts_with("host="))
            .map(str::to_owned)
    };
    let before = shown(
        c.get(format!("{base}/headers"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    );
    assert_eq!(before, Some(format!("host={addr}")));
    let (status, p) = f
        .call(
            "POST",
            "/proxies/web",
            Some(r#"{"rewrite_host": "api.internal:8080"}"#),
        )
        .await;
    assert_eq!(status, 200, "{p}");
    assert_eq!(p["rewrite_host"], "api.internal:8080");
    let after = shown(
        c.get(format!("{base}/headers"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    );
    assert_eq!(after.as_deref(), Some("host=api.internal:8080"));
    // Bad values are refused and change nothing; "" goes back to the client's Host.
    for bad in [r#"{"rewrite_host": "a b"}"#, r#"{"rewrite_host": "x/y"}"#] {
        let (status, body) = f.call("POST", "/proxies/web", Some(bad)).await;
        assert_eq!(status, 400, "{body}");
        assert!(
            body["error"].as_str().unwrap().contains("rewrite_host"),
            "{body}"
        );
    }
    let (_, p) = f.call("GET", "/proxies/web", None).await;
    assert_eq!(p["rewrite_host"], "api.internal:8080");
    let (status, p) = f
        .call("POST", "/proxies/web", Some(r#"{"rewrite_host": ""}"#))
        .await;
    assert_eq!(status, 200);
    assert!(p.get("rewrite_host").is_none(), "{p}");
    let (status, body) = f
        .call(
            "POST",
            "/proxies",
            Some(r#"{"name":"t","upstream":"127.0.0.1:1","rewrite_host":"x"}"#),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("rewrite_host: applies to HTTP proxies"),
        "{body}"
    );
}

/// Byte toxics act on an HTTP proxy's connections as on a TCP proxy's: here bandwidth paces the
/// response, a slicer cuts the request, and the bytes still arrive exact.
#[tokio::test]
async fn byte_toxics_act_on_the_connections_of_an_http_proxy() {
    let (f, _addr, base) = setup().await;
    add(
        &f,
        json!({"name": "thin", "type": "bandwidth", "attributes": {"rate": 200}}),
    )
    .await;
    add(
        &f,
        json!({"name": "cut", "type": "slicer", "stream": "upstream",
                   "attributes": {"average_size": 500, "size_variation": 100, "delay": 10}}),
    )
    .await;
    let body = random_bytes(100_000, 8);
    let t0 = Instant::now();
    let r = client()
        .post(format!("{base}/echo"))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // A byte toxic acts on the connection, not on a request: no fault header.
    assert!(r.headers().get("x-fallacy-fault").is_none());
    assert_eq!(r.bytes().await.unwrap().as_ref(), &body[..]);
    // 100 KB (plus headers) down at 200 KB/s: half a second.
    let took = t0.elapsed();
    assert!(took >= Duration::from_millis(480), "{took:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
}

#[tokio::test]
async fn limit_data_closes_an_http_connection_mid_body() {
    let (f, _addr, base) = setup().await;
    add(
        &f,
        json!({"type": "limit_data", "attributes": {"bytes": 5000}}),
    )
    .await;
    let r = client().get(format!("{base}/big")).send().await.unwrap();
    // The headers fit in the first 5000 bytes; the body does not.
    assert_eq!(r.status(), 200);
    let err = r.bytes().await.expect_err("the body must be cut short");
    assert!(
        err.is_body() || err.is_decode() || err.is_request(),
        "{err}"
    );
    // Toxics removed: new connections go straight to hyper again.
    let (status, _) = f
        .call("DELETE", "/proxies/web/toxics/limit_data_downstream", None)
        .await;
    assert_eq!(status, 204);
    let r = client().get(format!("{base}/big")).send().await.unwrap();
    assert_eq!(r.bytes().await.unwrap().len(), BIG);
}

/// An upstream change reaches the next request, even on a keep-alive connection that already
/// has an upstream connection of its own.
#[tokio::test]
async fn an_upstream_change_applies_to_the_next_request() {
    let (f, addr, _base) = setup().await;
    let other = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let other_addr = other.local_addr().unwrap();
    tokio::spawn(async move {
        let Ok((mut s, _)) = other.accept().await else {
            return;
        };
        let _ = read_until(&mut s, "\r\n\r\n").await;
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nother")
            .await;
    });
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(read_until(&mut s, "hello").await.ends_with("hello"));
    let body = json!({"upstream": other_addr.to_string()});
    let (status, _) = f
        .call("POST", "/proxies/web", Some(&body.to_string()))
        .await;
    assert_eq!(status, 200);
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let second = read_until(&mut s, "other").await;
    assert!(second.ends_with("other"), "{second:?}");
}

/// On one HTTP/2 connection, a faulted stream does not spoil the next ones.
#[tokio::test]
async fn an_h2c_connection_serves_on_after_a_fault() {
    let (f, _addr, base) = setup().await;
    add(
        &f,
        json!({"name": "no", "type": "http_abort", "attributes": {"status": 500},
                   "match": {"path": "/orders"}}),
    )
    .await;
    add(
        &f,
        json!({"name": "rst", "type": "http_abort", "attributes": {"reset": true},
                   "match": {"path": "/echo"}}),
    )
    .await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .pool_max_idle_per_host(1)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    for _ in 0..3 {
        let r = h2.get(format!("{base}/orders")).send().await.unwrap();
        assert_eq!(r.status(), 500);
        assert_eq!(r.version(), reqwest::Version::HTTP_2);
        // A reset stream is an error for that request only.
        assert!(
            h2.post(format!("{base}/echo"))
                .body("x")
                .send()
                .await
                .is_err()
        );
        let r = h2.get(&base).send().await.unwrap();
        assert_eq!(r.text().await.unwrap(), "hello");
    }
}
