//! What clients did (HTTP proxies): abandoned requests by outcome and cause, false timeouts,
//! retries by fingerprint and idempotency key, the retry window, `/stats` and timeout advice.
//! Real upstream (axum), real clients (reqwest; Python `requests` with urllib3's `Retry`).

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::Query;
use axum::http::StatusCode;
use axum::routing::{get, post};
use serde_json::{Value, json};
use support::Fallacy;
use tokio::net::TcpListener;

#[derive(serde::Deserialize)]
struct Wait {
    #[serde(default)]
    ms: u64,
}

/// `/slow?ms=N` answers 200 after N ms, `/fail?ms=N` 503 after N ms, `POST /orders` echoes.
async fn upstream() -> SocketAddr {
    let app = Router::new()
        .route(
            "/slow",
            get(|Query(w): Query<Wait>| async move {
                tokio::time::sleep(Duration::from_millis(w.ms)).await;
                "ok"
            }),
        )
        .route(
            "/fail",
            get(|Query(w): Query<Wait>| async move {
                tokio::time::sleep(Duration::from_millis(w.ms)).await;
                (StatusCode::SERVICE_UNAVAILABLE, "down")
            }),
        )
        .route("/orders", post(|body: String| async move { body }));
    support::serve_app(app).await
}

/// A server with one HTTP proxy `web` (plus `extra` fields) in front of [`upstream`].
async fn setup(extra: Value) -> (Fallacy, String) {
    let f = Fallacy::start().await;
    let up = upstream().await;
    let mut body = json!({"name": "web", "listen": "127.0.0.1:0", "upstream": up.to_string(), "protocol": "http"});
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    let (status, proxy) = f.call("POST", "/proxies", Some(&body.to_string())).await;
    assert_eq!(status, 201, "{proxy}");
    let base = format!("http://{}", proxy["listen"].as_str().unwrap());
    (f, base)
}

async fn stats(f: &Fallacy) -> Value {
    let (status, s) = f.call("GET", "/proxies/web/stats", None).await;
    assert_eq!(status, 200, "{s}");
    s
}

/// Polls `/stats` until `done` holds (outcomes of abandoned requests arrive later), for at
/// most 5 s; returns the last answer either way.
async fn stats_when(f: &Fallacy, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let s = stats(f).await;
        if done(&s) || Instant::now() > deadline {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn abandoned(s: &Value, outcome: &str, cause: &str) -> u64 {
    s["abandoned"][outcome][cause].as_u64().unwrap()
}

/// Asserts that the client gives up on `url` (its timeout fires).
async fn gives_up(c: &reqwest::Client, url: String) {
    let err = c.get(&url).send().await.unwrap_err();
    assert!(err.is_timeout(), "{url}: {err}");
}

fn impatient() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_millis(100))
        .build()
        .unwrap()
}

#[tokio::test]
async fn abandoned_requests_count_by_what_the_upstream_did_and_what_made_them_slow() {
    let (f, base) = setup(json!({"abandon_grace": "400ms"})).await;
    let c = impatient();
    // A fast upstream behind a 300 ms injected delay: the client gives up at 100 ms, the
    // upstream had answered at once. A false timeout, caused by the fault.
    f.toxic("web", json!({"name": "slow", "type": "http_delay", "attributes": {"latency": 300}, "match": {"path": "/slow"}}))
        .await;
    for _ in 0..3 {
        gives_up(&c, format!("{base}/slow?ms=1")).await;
    }
    f.call("DELETE", "/proxies/web/toxics/slow", None).await;
    // A slow upstream by itself, answering 200 at 250 ms: a false timeout of its own making.
    gives_up(&c, format!("{base}/slow?ms=250")).await;
    // A slow upstream that fails: the timeout was right.
    gives_up(&c, format!("{base}/fail?ms=250")).await;
    // An upstream slower than abandon_grace: nobody knows.
    gives_up(&c, format!("{base}/slow?ms=2000")).await;
    // A patient request is no abandonment.
    let ok = reqwest::get(format!("{base}/slow?ms=1")).await.unwrap();
    assert_eq!(ok.status(), 200);

    let s = stats_when(&f, |s| {
        s["requests"]["abandoned"] == 6 && abandoned(s, "upstream_pending", "upstream") == 1
    })
    .await;
    assert_eq!(abandoned(&s, "upstream_ok", "injected"), 3, "{s:#}");
    assert_eq!(abandoned(&s, "upstream_ok", "upstream"), 1, "{s:#}");
    assert_eq!(abandoned(&s, "upstream_error", "upstream"), 1, "{s:#}");
    assert_eq!(abandoned(&s, "upstream_error", "injected"), 0, "{s:#}");
    assert_eq!(abandoned(&s, "upstream_pending", "upstream"), 1, "{s:#}");
    assert_eq!(s["timeout_false_positives"], 4, "{s:#}");
    assert_eq!(s["requests"]["total"], 7, "{s:#}");
    assert_eq!(s["requests"]["answered"], 1, "{s:#}");
    // The client-side latency keeps what the abandoned successes would have taken (about
    // 300 ms and 250 ms): a timeout advised from it would not have fired on them.
    assert_eq!(s["latency"]["client_observed"]["samples"], 5, "{s:#}");
    let p90 = s["latency"]["client_observed"]["p90_ms"].as_f64().unwrap();
    assert!((295.0..400.0).contains(&p90), "{s:#}");
}

/// A timeout storm cannot pile up followed requests: past `MAX_FOLLOWED` per proxy, an
/// abandonment is counted at once as pending, and its upstream connection is closed.
#[tokio::test]
async fn past_the_cap_abandoned_requests_are_not_followed() {
    let cap = fallacy::measure::MAX_FOLLOWED as u64;
    let (f, base) = setup(json!({"abandon_grace": "600s"})).await;
    let c = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let extra = 60;
    let mut sent = 0;
    while sent < cap + extra {
        let batch = (cap + extra - sent).min(128);
        let all = (0..batch).map(|_| gives_up(&c, format!("{base}/slow?ms=600000")));
        futures_util::future::join_all(all).await;
        sent += batch;
    }
    // The followed ones wait out their grace; the rest are counted now, as pending.
    let s = stats_when(&f, |s| {
        abandoned(s, "upstream_pending", "upstream") >= extra
    })
    .await;
    assert_eq!(
        abandoned(&s, "upstream_pending", "upstream"),
        extra,
        "{s:#}"
    );
    assert_eq!(s["requests"]["abandoned"], extra, "{s:#}");
}

/// An HTTP/2 client that gives up resets its stream, not the connection: that is an
/// abandonment too, and the connection serves on.
#[tokio::test]
async fn an_h2_stream_reset_is_an_abandonment() {
    let (f, base) = setup(json!({})).await;
    f.toxic("web", json!({"name": "slow", "type": "http_delay", "attributes": {"latency": 300}, "match": {"path": "/slow"}}))
        .await;
    let c = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let err = c
        .get(format!("{base}/slow"))
        .timeout(Duration::from_millis(100))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err}");
    let ok = c
        .post(format!("{base}/orders"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.version(), reqwest::Version::HTTP_2);
    assert_eq!(ok.text().await.unwrap(), "x");
    let s = stats_when(&f, |s| s["requests"]["abandoned"] == 1).await;
    assert_eq!(abandoned(&s, "upstream_ok", "injected"), 1, "{s:#}");
    assert_eq!(
        s["connections_total"], 1,
        "one h2 connection for both: {s:#}"
    );
}

#[tokio::test]
async fn an_injected_answer_that_the_client_abandons_counts_as_an_injected_error() {
    let (f, base) = setup(json!({})).await;
    f.toxic(
        "web",
        json!({"type": "http_abort", "attributes": {"status": 503}}),
    )
    .await;
    f.toxic(
        "web",
        json!({"type": "http_delay", "attributes": {"latency": 300, "phase": "request"}}),
    )
    .await;
    gives_up(&impatient(), format!("{base}/slow")).await;
    let s = stats_when(&f, |s| s["requests"]["abandoned"] == 1).await;
    assert_eq!(abandoned(&s, "upstream_error", "injected"), 1, "{s:#}");
    assert_eq!(s["timeout_false_positives"], 0);
}

/// A real retrying client, Python `requests` with urllib3's `Retry` (which honours
/// `Retry-After`), against `http_abort` on half the requests: fallacy's retry count equals the
/// retries the client made, by body fingerprint and by idempotency key.
#[tokio::test]
async fn a_real_retrying_client_makes_exactly_the_retries_fallacy_counts() {
    let (f, base) = setup(json!({})).await;
    f.toxic("web", json!({"name": "flaky", "type": "http_abort", "toxicity": 0.5, "attributes": {"status": 503}, "match": {"path": "/orders"}}))
        .await;
    let script = r#"
import sys, uuid, requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry
base = sys.argv[1]
s = requests.Session()
retry = Retry(total=8, status_forcelist=[503, 429], allowed_methods=None, backoff_factor=0,
              respect_retry_after_header=True, raise_on_status=False)
s.mount("http://", HTTPAdapter(max_retries=retry))
retries = 0
for i in range(40):
    headers = {}
    # The second half carries idempotency keys and identical bodies: the key must decide.
    if i >= 20:
        headers["Idempotency-Key"] = str(uuid.uuid4())
        body = "same order"
    else:
        body = "order %d" % i
    r = s.post(base + "/orders", data=body, headers=headers, timeout=10)
    retries += len(r.raw.retries.history)
# A load test hammering one URL after successes is not a storm.
for i in range(20):
    assert s.get(base + "/slow", timeout=10).status_code == 200
print(retries)
"#;
    let out = tokio::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&base)
        .output()
        .await
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let client_retries: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert!(
        client_retries > 5,
        "the fault should have caused retries: {client_retries}"
    );
    let s = stats(&f).await;
    assert_eq!(s["retries"]["total"], client_retries, "{s:#}");
    assert_eq!(s["requests"]["total"], 60 + client_retries, "{s:#}");
    let amplification = s["retries"]["amplification"].as_f64().unwrap();
    let expected = (60 + client_retries) as f64 / 60.0;
    assert!(
        (amplification - expected).abs() < 1e-9,
        "{amplification} vs {expected}"
    );
}

#[tokio::test]
async fn the_fingerprint_hashes_the_body_and_a_success_closes_the_logical_request() {
    let (f, base) = setup(json!({})).await;
    let c = reqwest::Client::new();
    let post = |body: &'static str| c.post(format!("{base}/orders")).body(body).send();
    f.toxic(
        "web",
        json!({"name": "down", "type": "http_abort", "attributes": {"status": 503}}),
    )
    .await;
    assert_eq!(post("a").await.unwrap().status(), 503);
    assert_eq!(
        post("b").await.unwrap().status(),
        503,
        "another body: a new request"
    );
    assert_eq!(post("a").await.unwrap().status(), 503, "a's retry");
    f.call("DELETE", "/proxies/web/toxics/down", None).await;
    assert_eq!(
        post("a").await.unwrap().status(),
        200,
        "a's retry, which succeeds"
    );
    assert_eq!(
        post("a").await.unwrap().status(),
        200,
        "after a success: a new request"
    );
    let s = stats(&f).await;
    assert_eq!(s["retries"]["total"], 2, "{s:#}");
    assert_eq!(s["retries"]["logical_requests_in_window"], 3, "{s:#}");
    assert_eq!(s["requests"]["failed"], 3, "{s:#}");
}

#[tokio::test]
async fn idempotency_headers_and_the_retry_window_are_configurable() {
    let (f, base) = setup(json!({"retry_window": "300ms", "idempotency_headers": ["x-op"]})).await;
    let c = reqwest::Client::new();
    let send = |key: &'static str| c.get(format!("{base}/slow")).header("x-op", key).send();
    send("k1").await.unwrap();
    send("k1").await.unwrap();
    assert_eq!(
        stats(&f).await["retries"]["total"],
        1,
        "the same key within the window"
    );
    // The default header is not one any more: a new key in it does not separate requests,
    // but these succeed, so they are not retries either.
    let with_default = |key: &'static str| {
        c.get(format!("{base}/slow"))
            .header("idempotency-key", key)
            .send()
    };
    with_default("z").await.unwrap();
    with_default("z").await.unwrap();
    assert_eq!(stats(&f).await["retries"]["total"], 1);
    // The window passes: the same key is a new logical request.
    tokio::time::sleep(Duration::from_millis(400)).await;
    send("k1").await.unwrap();
    let s = stats(&f).await;
    assert_eq!(s["retries"]["total"], 1, "{s:#}");
    assert_eq!(s["settings"]["retry_window"], "300ms");
    assert_eq!(s["settings"]["idempotency_headers"], json!(["x-op"]));
}

#[tokio::test]
async fn timeout_advice_follows_the_observed_latency_and_refuses_to_guess() {
    let (f, base) = setup(json!({})).await;
    let advice = |q: &'static str| {
        let f = &f;
        async move {
            f.call("GET", &format!("/proxies/web/timeout-advice{q}"), None)
                .await
        }
    };
    let (status, body) = advice("?false_timeout_rate=0.01").await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("not enough data: 0 successful requests observed, at least 299 needed"),
        "{body}"
    );
    for (q, words) in [
        ("", "false_timeout_rate is required"),
        ("?false_timeout_rate=abc", "is not a number"),
        ("?false_timeout_rate=0", "strictly between 0 and 1"),
        ("?false_timeout_rate=1", "strictly between 0 and 1"),
        ("?false_timeout_rate=-0.5", "strictly between 0 and 1"),
    ] {
        let (status, body) = advice(q).await;
        assert_eq!(status, 400, "{q}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains(words),
            "{q}: {body}"
        );
    }
    let (status, _) = f
        .call(
            "GET",
            "/proxies/nope/timeout-advice?false_timeout_rate=0.1",
            None,
        )
        .await;
    assert_eq!(status, 404);

    // Uniform 10..50 ms before the headers: the 0.9 quantile is 46 ms, plus the upstream's
    // fraction of a millisecond.
    f.toxic("web", json!({"type": "http_delay", "attributes": {"distribution": "uniform", "min": "10ms", "max": "50ms"}}))
        .await;
    let c = reqwest::Client::new();
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..10 {
        let (c, url) = (c.clone(), format!("{base}/slow?w={worker}"));
        tasks.spawn(async move {
            for _ in 0..40 {
                assert_eq!(c.get(&url).send().await.unwrap().status(), 200);
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    let (status, a) = advice("?false_timeout_rate=0.1").await;
    assert_eq!(status, 200, "{a}");
    assert_eq!(a["samples"], 400);
    assert_eq!(a["proxy"], "web");
    assert_eq!(a["confidence"], 0.95);
    let ms = a["timeout_ms"].as_f64().unwrap();
    assert!((43.0..52.0).contains(&ms), "{a}");
    assert!(a["timeout_ms_at_confidence"].as_f64().unwrap() >= ms, "{a}");
    // The upstream alone answers in well under 10 ms.
    assert!(
        a["upstream_only"]["timeout_ms"].as_f64().unwrap() < 10.0,
        "{a}"
    );
}

#[tokio::test]
async fn measurement_settings_are_shown_changed_and_refused_by_name() {
    let (f, _base) = setup(json!({"abandon_grace": 2000})).await;
    let (_, p) = f.call("GET", "/proxies/web", None).await;
    assert_eq!(p["abandon_grace"], "2s");
    assert_eq!(p["retry_window"], "10s");
    assert_eq!(
        p["idempotency_headers"],
        json!(["idempotency-key", "x-request-id"])
    );
    let (status, p) = f
        .call("PATCH", "/proxies/web", Some(r#"{"retry_window": "1m"}"#))
        .await;
    assert_eq!(status, 200, "{p}");
    assert_eq!(
        (p["retry_window"].as_str(), p["abandon_grace"].as_str()),
        (Some("60s"), Some("2s"))
    );
    for (body, words) in [
        (
            r#"{"abandon_grace": "2h"}"#,
            "abandon_grace: 7200s is too long: at most 600s",
        ),
        (r#"{"abandon_grace": "soon"}"#, "abandon_grace:"),
        (
            r#"{"retry_window": 0}"#,
            "retry_window: must be more than 0",
        ),
        (
            r#"{"idempotency_headers": ["ok", "not ok"]}"#,
            "idempotency_headers: \"not ok\" is not a valid header name",
        ),
    ] {
        let (status, err) = f.call("PATCH", "/proxies/web", Some(body)).await;
        assert_eq!(status, 400, "{body}: {err}");
        assert!(
            err["error"].as_str().unwrap().contains(words),
            "{body}: {err}"
        );
    }
    let (_, p) = f.call("GET", "/proxies/web", None).await;
    assert_eq!(p["retry_window"], "60s", "a refused change changes nothing");
    // TCP proxies keep Toxiproxy's shape unless a setting differs from its default.
    let up = upstream().await;
    f.proxy("plain", up).await;
    let (_, p) = f.call("GET", "/proxies/plain", None).await;
    assert!(p.get("abandon_grace").is_none(), "{p}");
}

/// Bytes both ways, priced at `price_per_gb` as they move: a price change applies to the
/// bytes after it.
#[tokio::test]
async fn stats_count_bytes_and_their_transport_cost() {
    let (f, base) = setup(json!({"price_per_gb": 1000})).await;
    let c = reqwest::Client::new();
    let order = "x".repeat(1000);
    let round_trip = || async {
        let r = c.post(format!("{base}/orders")).body(order.clone()).send();
        assert_eq!(r.await.unwrap().text().await.unwrap(), order);
    };
    round_trip().await;
    let s = stats_when(&f, |s| s["bytes"]["downstream"] == 1000).await;
    assert_eq!(
        s["bytes"],
        json!({"upstream": 1000, "downstream": 1000}),
        "{s:#}"
    );
    let cost = s["transport_cost"].as_f64().unwrap();
    assert!(
        (cost - 0.002).abs() < 1e-12,
        "2000 bytes at 1000 per 10^9: {cost}"
    );
    assert_eq!(s["settings"]["price_per_gb"], 1000.0);
    let (status, p) = f
        .call("PATCH", "/proxies/web", Some(r#"{"price_per_gb": 0}"#))
        .await;
    assert_eq!(status, 200, "{p}");
    round_trip().await;
    let s = stats_when(&f, |s| s["bytes"]["downstream"] == 2000).await;
    let cost = s["transport_cost"].as_f64().unwrap();
    assert!(
        (cost - 0.002).abs() < 1e-12,
        "free bytes add nothing: {cost}"
    );
    for (body, words) in [
        (
            r#"{"price_per_gb": -1}"#,
            "price_per_gb: -1 is out of range",
        ),
        (
            r#"{"price_per_gb": "cheap"}"#,
            "price_per_gb: \"cheap\" is not a number",
        ),
        (r#"{"price_per_gb": 1e7}"#, "out of range: 0 to 1000000"),
    ] {
        let (status, err) = f.call("PATCH", "/proxies/web", Some(body)).await;
        assert_eq!(status, 400, "{body}: {err}");
        assert!(
            err["error"].as_str().unwrap().contains(words),
            "{body}: {err}"
        );
    }
}

#[tokio::test]
async fn stats_answer_404_for_an_unknown_proxy() {
    let f = Fallacy::start().await;
    let (status, body) = f.call("GET", "/proxies/nope/stats", None).await;
    assert_eq!(status, 404, "{body}");
}

/// A line server: each line holds a number of milliseconds; it answers `ok\n` after that long.
/// It closes when its client does.
async fn line_upstream() -> SocketAddr {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let serve = async {
            loop {
                let Ok((s, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let (r, mut w) = s.into_split();
                    let mut lines = BufReader::new(r).lines();
                    while let Ok(Some(line)) = lines.next_line().await {
                        let ms = line.trim().parse().unwrap_or(0);
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                        if w.write_all(b"ok\n").await.is_err() {
                            return;
                        }
                    }
                });
            }
        };
        let _ = tokio::time::timeout(support::SERVER_LIFETIME, serve).await;
    });
    addr
}

async fn tcp_setup(extra: Value) -> (Fallacy, SocketAddr) {
    let f = Fallacy::start().await;
    let up = line_upstream().await;
    let mut body = json!({"name": "web", "listen": "127.0.0.1:0", "upstream": up.to_string()});
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    let (status, proxy) = f.call("POST", "/proxies", Some(&body.to_string())).await;
    assert_eq!(status, 201, "{proxy}");
    (f, proxy["listen"].as_str().unwrap().parse().unwrap())
}

/// Sends a line and waits up to `patience` for the answer; on timeout the client leaves,
/// with a FIN (a plain close) or a RST (`reset`). Returns whether it got the answer.
async fn ask(addr: SocketAddr, ms: u64, patience: Duration, reset: bool) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("{ms}\n").as_bytes()).await.unwrap();
    let mut buf = [0u8; 3];
    let read = tokio::time::timeout(patience, s.read_exact(&mut buf)).await;
    let answered = matches!(read, Ok(Ok(_))) && &buf == b"ok\n";
    if !answered && reset {
        // SO_LINGER 0: the close is a RST (zero linger never blocks the drop).
        socket2::SockRef::from(&s)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
    }
    answered
}

/// Asks once, then closes its side and waits for the proxy to close its own: the connection is
/// over at the proxy too, so a toxic added next cannot reach it.
async fn ask_to_the_end(addr: SocketAddr) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"1\n").await.unwrap();
    let mut buf = [0u8; 3];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ok\n");
    s.shutdown().await.unwrap();
    let rest = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut Vec::new())).await;
    assert!(matches!(rest, Ok(Ok(0))), "{rest:?}");
}

#[tokio::test]
async fn tcp_requests_are_answered_or_abandoned_by_outcome_and_cause() {
    let (f, addr) = tcp_setup(json!({"abandon_grace": "500ms"})).await;
    let patience = Duration::from_millis(100);
    // Answered: the first answer byte reached the client.
    assert!(ask(addr, 1, patience, false).await);
    // A slow upstream that answers at 250 ms; the client resets at 100 ms. Its leg stays
    // open: the answer comes, a false timeout of the upstream's own making.
    assert!(!ask(addr, 250, patience, true).await);
    // The same with a plain close (FIN): only writing the answer tells it apart from a
    // half-close.
    assert!(!ask(addr, 250, patience, false).await);
    // Slower than abandon_grace: pending.
    assert!(!ask(addr, 3000, patience, true).await);
    let s = stats_when(&f, |s| s["requests"]["abandoned"] == 3).await;
    assert_eq!(abandoned(&s, "upstream_ok", "upstream"), 2, "{s:#}");
    assert_eq!(abandoned(&s, "upstream_pending", "upstream"), 1, "{s:#}");
    assert_eq!(s["requests"]["answered"], 1, "{s:#}");
    assert_eq!(s["requests"]["total"], 4, "{s:#}");
    assert_eq!(s["protocol"], "tcp");

    // A fast upstream behind 300 ms of injected latency on the way back: fallacy's doing.
    f.toxic(
        "web",
        json!({"type": "latency", "attributes": {"latency": 300}}),
    )
    .await;
    assert!(!ask(addr, 1, patience, false).await);
    assert!(!ask(addr, 1, patience, true).await);
    let s = stats_when(&f, |s| s["requests"]["abandoned"] == 5).await;
    assert_eq!(abandoned(&s, "upstream_ok", "injected"), 2, "{s:#}");
    assert_eq!(s["timeout_false_positives"], 4, "{s:#}");
    // What the injected-delay victims would have waited: about 300 ms.
    let p99 = s["latency"]["client_observed"]["p99_ms"].as_f64().unwrap();
    assert!((295.0..400.0).contains(&p99), "{s:#}");
}

/// A client that half-closes and then reads its answer is not one that gave up.
#[tokio::test]
async fn a_half_closing_tcp_client_that_reads_its_answer_is_answered() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (f, addr) = tcp_setup(json!({})).await;
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"20\n").await.unwrap();
    s.shutdown().await.unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).await.unwrap();
    assert_eq!(answer, "ok\n");
    drop(s);
    let s = stats_when(&f, |s| s["requests"]["answered"] == 1).await;
    assert_eq!(s["requests"]["answered"], 1, "{s:#}");
    assert_eq!(s["requests"]["abandoned"], 0, "{s:#}");
    let p50 = s["latency"]["upstream"]["p50_ms"].as_f64().unwrap();
    assert!((20.0..60.0).contains(&p50), "{s:#}");
}

/// TCP retries are reconnects: a new connection from the same client after a fault ended
/// its previous one. Connections that end normally are not retried requests.
#[tokio::test]
async fn tcp_reconnects_after_a_fault_are_retries() {
    let (f, addr) = tcp_setup(json!({})).await;
    for _ in 0..3 {
        ask_to_the_end(addr).await;
    }
    assert_eq!(stats(&f).await["retries"]["total"], 0);
    f.toxic("web", json!({"name": "cut", "type": "reset_peer", "stream": "upstream", "attributes": {"timeout": 0}}))
        .await;
    for _ in 0..3 {
        assert!(!ask(addr, 1, Duration::from_secs(5), false).await);
    }
    let s = stats_when(&f, |s| s["retries"]["total"] == 2).await;
    assert_eq!(
        s["retries"]["total"], 2,
        "the second and third connections: {s:#}"
    );
    f.call("DELETE", "/proxies/web/toxics/cut", None).await;
    assert!(ask(addr, 1, Duration::from_secs(5), false).await);
    assert!(ask(addr, 1, Duration::from_secs(5), false).await);
    let s = stats_when(&f, |s| s["retries"]["logical_requests_in_window"] == 5).await;
    assert_eq!(
        s["retries"]["total"], 3,
        "the reconnect that worked, then a new one: {s:#}"
    );
    assert_eq!(s["retries"]["logical_requests_in_window"], 5, "{s:#}");
}
