//! `/metrics` with a real Prometheus recorder: live byte counters, connection counts, connect
//! errors, toxics applied. This file is its own test process, so it may install the global
//! recorder once; each test uses its own proxy names.

mod support;

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use fallacy::Server;
use fallacy::config::Config;
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use support::{Echo, assert_closed, connect, dead_addr, round_trip};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

fn recorder() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let handle = fallacy::metrics::prometheus_builder()
                .install_recorder()
                .unwrap();
            fallacy::metrics::describe();
            handle
        })
        .clone()
}

struct Running {
    admin: std::net::SocketAddr,
    http: reqwest::Client,
    shutdown: CancellationToken,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl Running {
    async fn start() -> Running {
        let handle = recorder();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let server = Server::start(listener, Config::default(), Some(handle), shutdown.clone())
            .await
            .unwrap();
        tokio::spawn(server.run_until_shutdown());
        Running {
            admin,
            http: reqwest::Client::new(),
            shutdown,
        }
    }

    async fn post(&self, path: &str, body: serde_json::Value) -> serde_json::Value {
        let resp = self
            .http
            .post(format!("http://{}{path}", self.admin))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success());
        resp.json().await.unwrap()
    }

    async fn proxy(&self, name: &str, upstream: std::net::SocketAddr) -> std::net::SocketAddr {
        let p = self
            .post(
                "/proxies",
                json!({"name": name, "listen": "127.0.0.1:0", "upstream": upstream.to_string()}),
            )
            .await;
        p["listen"].as_str().unwrap().parse().unwrap()
    }

    /// An HTTP proxy `name` in front of `app`; returns its base URL.
    async fn http_proxy(&self, name: &str, app: axum::Router) -> String {
        let up = support::serve_app(app).await;
        let p = self
            .post(
                "/proxies",
                json!({"name": name, "listen": "127.0.0.1:0", "upstream": up.to_string(), "protocol": "http"}),
            )
            .await;
        format!("http://{}", p["listen"].as_str().unwrap())
    }

    async fn scrape(&self) -> String {
        let resp = self
            .http
            .get(format!("http://{}/metrics", self.admin))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.text().await.unwrap()
    }

    /// The value of one series, or None when absent.
    async fn value(&self, series: &str) -> Option<f64> {
        self.scrape().await.lines().find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.trim().parse().ok())
        })
    }

    /// Polls (bounded) until the series has the value: counters are updated by the connection
    /// task, which may run just after the client saw its bytes.
    async fn expect(&self, series: &str, want: f64) {
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let got = self.value(series).await;
            if got == Some(want) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{series}: got {got:?}, want {want}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Asserts every metric named has HELP text in the exposition.
fn assert_described(text: &str, names: &[&str]) {
    for name in names {
        assert!(
            text.contains(&format!("# HELP {name} ")),
            "no HELP for {name}:\n{text}"
        );
    }
}

#[tokio::test]
async fn byte_counters_are_live_while_the_connection_is_open() {
    let f = Running::start().await;
    let echo = Echo::start().await;
    let addr = f.proxy("live", echo.addr).await;
    let mut s = connect(addr).await;
    round_trip(&mut s, &[1u8; 1000]).await;
    // The connection is still open: the counters already show the bytes.
    f.expect(
        r#"fallacy_bytes_total{proxy="live",direction="upstream"}"#,
        1000.0,
    )
    .await;
    f.expect(
        r#"fallacy_bytes_total{proxy="live",direction="downstream"}"#,
        1000.0,
    )
    .await;
    f.expect(r#"fallacy_connections_active{proxy="live"}"#, 1.0)
        .await;
    drop(s);
    f.expect(r#"fallacy_connections_active{proxy="live"}"#, 0.0)
        .await;
    f.expect(r#"fallacy_connections_total{proxy="live"}"#, 1.0)
        .await;
}

#[tokio::test]
async fn unreachable_upstreams_are_counted() {
    let f = Running::start().await;
    let addr = f.proxy("dead", dead_addr().await).await;
    for _ in 0..2 {
        let mut s = connect(addr).await;
        assert_closed(&mut s, Duration::from_secs(5)).await;
    }
    f.expect(
        r#"fallacy_upstream_connect_errors_total{proxy="dead"}"#,
        2.0,
    )
    .await;
    f.expect(r#"fallacy_connections_total{proxy="dead"}"#, 2.0)
        .await;
}

#[tokio::test]
async fn applied_toxics_are_counted_per_connection_direction() {
    let f = Running::start().await;
    let echo = Echo::start().await;
    let addr = f.proxy("tox", echo.addr).await;
    f.post("/proxies/tox/toxics", json!({"type": "noop", "name": "n"}))
        .await;
    for _ in 0..3 {
        let mut s = connect(addr).await;
        round_trip(&mut s, b"x").await;
    }
    f.expect(r#"fallacy_toxic_applied_total{proxy="tox",toxic="n"}"#, 3.0)
        .await;
}

#[tokio::test]
async fn every_metric_has_help_text() {
    let f = Running::start().await;
    let echo = Echo::start().await;
    let addr = f.proxy("help", echo.addr).await;
    let mut s = connect(addr).await;
    round_trip(&mut s, b"x").await;
    let text = f.scrape().await;
    assert_described(
        &text,
        &[
            "fallacy_connections_total",
            "fallacy_connections_active",
            "fallacy_bytes_total",
            "fallacy_admin_requests_total",
        ],
    );
}

#[tokio::test]
async fn a_proxy_that_cannot_listen_leaves_no_metric_series() {
    let f = Running::start().await;
    let blocker = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = blocker.local_addr().unwrap().to_string();
    let resp = f
        .http
        .post(format!("http://{}/proxies", f.admin))
        .json(&json!({"name": "ghost", "listen": taken, "upstream": "127.0.0.1:1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 500);
    assert!(!f.scrape().await.contains("proxy=\"ghost\""));
}

/// On an HTTP proxy `fallacy_bytes_total` counts the bodies both ways as they pass and
/// `fallacy_requests_total` the requests; a TCP proxy shows no request series at all.
#[tokio::test]
async fn http_proxies_count_requests_and_body_bytes() {
    let f = Running::start().await;
    let app = axum::Router::new().route(
        "/echo",
        axum::routing::post(|body: axum::body::Bytes| async move { body }),
    );
    let base = f.http_proxy("web-bytes", app).await;
    f.proxy("tcp-no-requests", dead_addr().await).await;
    let c = reqwest::Client::new();
    let body = vec![7u8; 100_000];
    for _ in 0..3 {
        let r = c
            .post(format!("{base}/echo"))
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.bytes().await.unwrap().len(), body.len());
    }
    f.expect(r#"fallacy_requests_total{proxy="web-bytes"}"#, 3.0)
        .await;
    f.expect(
        r#"fallacy_bytes_total{proxy="web-bytes",direction="upstream"}"#,
        300_000.0,
    )
    .await;
    f.expect(
        r#"fallacy_bytes_total{proxy="web-bytes",direction="downstream"}"#,
        300_000.0,
    )
    .await;
    let text = f.scrape().await;
    assert!(
        !text.contains(r#"fallacy_requests_total{proxy="tcp-no-requests"}"#),
        "{text}"
    );
}

/// The measurement metrics of an HTTP proxy, exactly: one false timeout caused by an injected
/// delay, one retry after an injected 503, the attempts of the logical request it made, the
/// amplification, and real histograms (buckets, not summaries).
#[tokio::test]
async fn http_measurement_metrics_count_what_clients_did() {
    let f = Running::start().await;
    let app = axum::Router::new()
        .route("/", axum::routing::get(|| async { "ok" }))
        .route(
            "/echo",
            axum::routing::post(|body: axum::body::Bytes| async move { body }),
        );
    let base = f.http_proxy("web-measure", app).await;
    let series = |name: &str, labels: &str| format!("{name}{{proxy=\"web-measure\"{labels}}}");
    // Present at 0 before anything happened.
    f.expect(&series("fallacy_timeout_false_positive_total", ""), 0.0)
        .await;
    f.expect(&series("fallacy_retry_amplification", ""), 1.0)
        .await;

    f.post(
        "/proxies/web-measure/toxics",
        json!({"name": "slow", "type": "http_delay", "attributes": {"latency": 300}, "match": {"method": "GET"}}),
    )
    .await;
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    assert!(impatient.get(&base).send().await.unwrap_err().is_timeout());
    f.expect(
        &series(
            "fallacy_client_abandoned_total",
            ",outcome=\"upstream_ok\",cause=\"injected\"",
        ),
        1.0,
    )
    .await;
    f.expect(&series("fallacy_timeout_false_positive_total", ""), 1.0)
        .await;

    f.post(
        "/proxies/web-measure/toxics",
        json!({"name": "down", "type": "http_abort", "attributes": {"status": 503}, "match": {"method": "POST"}}),
    )
    .await;
    let c = reqwest::Client::new();
    let post = || c.post(format!("{base}/echo")).body("order 1").send();
    assert_eq!(post().await.unwrap().status(), 503);
    let _ = f
        .http
        .delete(format!(
            "http://{}/proxies/web-measure/toxics/down",
            f.admin
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(post().await.unwrap().status(), 200);
    f.expect(&series("fallacy_retries_total", ""), 1.0).await;
    // The abandoned GET (its own logical request, closed by the window later) and the POST:
    // one logical request of two attempts, closed by its success.
    f.expect(&series("fallacy_request_attempts_bucket", ",le=\"2\""), 1.0)
        .await;
    f.expect(&series("fallacy_request_attempts_bucket", ",le=\"1\""), 0.0)
        .await;
    // Three attempts, two logical requests in the window.
    f.expect(&series("fallacy_retry_amplification", ""), 1.5)
        .await;
    // The two answered requests (503 and 200) and the upstream's answers, in real buckets.
    f.expect(&series("fallacy_client_observed_seconds_count", ""), 2.0)
        .await;
    f.expect(&series("fallacy_upstream_response_seconds_count", ""), 2.0)
        .await;
    f.expect(
        &series("fallacy_injected_delay_seconds_bucket", ",le=\"0.3\""),
        1.0,
    )
    .await;
    f.expect(
        &series("fallacy_injected_delay_seconds_bucket", ",le=\"0.2\""),
        0.0,
    )
    .await;
    let text = f.scrape().await;
    assert_described(
        &text,
        &[
            "fallacy_upstream_response_seconds",
            "fallacy_client_observed_seconds",
            "fallacy_injected_delay_seconds",
            "fallacy_client_abandoned_total",
            "fallacy_timeout_false_positive_total",
            "fallacy_retries_total",
            "fallacy_request_attempts",
            "fallacy_retry_amplification",
        ],
    );
}

/// TCP proxies measure requests too: a round trip through a 20 ms latency toxic is one
/// answered request, 20 ms of injected delay, and client-observed and upstream latencies.
#[tokio::test]
async fn tcp_requests_show_their_latency_and_injected_delay() {
    let f = Running::start().await;
    let echo = Echo::start().await;
    let addr = f.proxy("tcp-latency", echo.addr).await;
    f.post(
        "/proxies/tcp-latency/toxics",
        json!({"type": "latency", "attributes": {"latency": 20}}),
    )
    .await;
    let mut s = connect(addr).await;
    round_trip(&mut s, b"ping").await;
    for (series, value) in [
        (
            r#"fallacy_injected_delay_seconds_bucket{proxy="tcp-latency",le="0.025"}"#,
            1.0,
        ),
        (
            r#"fallacy_injected_delay_seconds_bucket{proxy="tcp-latency",le="0.01"}"#,
            0.0,
        ),
        (
            r#"fallacy_client_observed_seconds_count{proxy="tcp-latency"}"#,
            1.0,
        ),
        (
            r#"fallacy_upstream_response_seconds_count{proxy="tcp-latency"}"#,
            1.0,
        ),
        (
            r#"fallacy_client_observed_seconds_bucket{proxy="tcp-latency",le="0.01"}"#,
            0.0,
        ),
        (
            r#"fallacy_upstream_response_seconds_bucket{proxy="tcp-latency",le="0.01"}"#,
            1.0,
        ),
    ] {
        f.expect(series, value).await;
    }
}

/// A running scenario's phase is a gauge with a `phase` label: 1 in it, 0 once left.
#[tokio::test]
async fn scenario_phases_show_as_a_gauge() {
    let f = Running::start().await;
    let echo = Echo::start().await;
    f.proxy("phased", echo.addr).await;
    let body = json!({"name": "phases", "duration": "5s", "step": [
        {"at": "0s", "name": "brownout", "add": {"proxy": "phased", "name": "n", "type": "noop"}},
        {"at": "300ms", "name": "calm", "remove": {"proxy": "phased", "toxic": "n"}},
    ]});
    f.post("/scenarios", body).await;
    f.expect(r#"fallacy_scenario_phase{phase="brownout"}"#, 1.0)
        .await;
    f.expect(r#"fallacy_scenario_phase{phase="calm"}"#, 1.0)
        .await;
    f.expect(r#"fallacy_scenario_phase{phase="brownout"}"#, 0.0)
        .await;
    let text = f.scrape().await;
    assert_described(&text, &["fallacy_scenario_phase"]);
}
