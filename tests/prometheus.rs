//! A real Prometheus (Debian's `prometheus`, which `.ci/run` installs) scrapes the real
//! `fallacy serve` while a deterministic workload runs: five requests abandoned by an impatient
//! client although the upstream answered (false timeouts caused by an injected delay), and
//! four orders tried three times each against an injected 503. The counts read back through
//! Prometheus's HTTP API are exact. `promtool check metrics` lints the exposition.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// Stops the process on drop: every server this test starts stops with it. With `term`,
/// SIGTERM first, so that `timeout` (which wraps Prometheus, as a bound should this process
/// die) passes it on to its child; SIGKILL otherwise, or if it lingers.
struct Guard(Child, bool);

impl Drop for Guard {
    fn drop(&mut self) {
        if !self.1 {
            let _ = self.0.kill();
            let _ = self.0.wait();
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        for _ in 0..50 {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn require(tool: &str) -> String {
    let path = format!("/usr/bin/{tool}");
    assert!(
        std::path::Path::new(&path).exists(),
        "{path} is missing: install Debian's prometheus package (apt-get install prometheus), \
         as .ci/run does"
    );
    path
}

/// Runs `promtool ARGS`, feeding it `stdin`, and asserts it is content.
fn promtool(args: &[&str], stdin: Option<&str>) {
    let mut child = Command::new(require("promtool"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).unwrap();
    }
    drop(input);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool {args:?}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// POSTs JSON to the admin API and returns the answer's JSON.
async fn post(http: &reqwest::Client, admin: SocketAddr, path: &str, body: Value) -> Value {
    let response = http
        .post(format!("http://{admin}{path}"))
        .json(&body)
        .send()
        .await;
    response.unwrap().json().await.unwrap()
}

async fn scrape(http: &reqwest::Client, admin: SocketAddr) -> String {
    let response = http.get(format!("http://{admin}/metrics")).send().await;
    response.unwrap().text().await.unwrap()
}

/// A port that was free a moment ago: Prometheus takes its listen address on the command
/// line and cannot report a port it picked itself.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn upstream() -> SocketAddr {
    let app = axum::Router::new()
        .route("/slow", axum::routing::get(|| async { "ok" }))
        .route(
            "/orders",
            axum::routing::post(|body: String| async move { body }),
        );
    support::serve_app(app).await
}

/// Starts `fallacy serve` on 127.0.0.1:0 and returns its admin address (from its start-up
/// line, never a sleep).
fn fallacy() -> (Guard, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_fallacy"))
        .args(["serve", "--admin", "127.0.0.1:0"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .rsplit("http://")
        .next()
        .unwrap()
        .parse()
        .unwrap_or_else(|e| panic!("{e}: {line:?}"));
    (Guard(child, false), addr)
}

/// Asks Prometheus for one instant value, polling (bounded) until it equals `want`.
async fn expect(http: &reqwest::Client, prom: &str, query: &str, want: f64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = Value::Null;
    while Instant::now() < deadline {
        let answer: Result<Value, _> = async {
            http.get(format!("{prom}/api/v1/query"))
                .query(&[("query", query)])
                .send()
                .await?
                .json()
                .await
        }
        .await;
        if let Ok(v) = answer {
            let got = v["data"]["result"][0]["value"][1]
                .as_str()
                .and_then(|s| s.parse::<f64>().ok());
            if got.is_some_and(|g| (g - want).abs() < 1e-9) {
                return;
            }
            last = v;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("{query}: want {want}, Prometheus last said {last}");
}

#[tokio::test]
async fn prometheus_scrapes_exact_false_timeouts_and_retries() {
    let prometheus = require("prometheus");
    let (_fallacy, admin) = fallacy();
    let http = reqwest::Client::new();
    let up = upstream().await;
    let base = post(
        &http,
        admin,
        "/proxies",
        json!({"name": "web", "listen": "127.0.0.1:0",
        "upstream": up.to_string(), "protocol": "http", "retry_window": "1s"}),
    )
    .await;
    let base = format!("http://{}", base["listen"].as_str().unwrap());
    for toxic in [
        json!({"name": "slow", "type": "http_delay", "attributes": {"latency": 300}, "match": {"path": "/slow"}}),
        json!({"name": "down", "type": "http_abort", "attributes": {"status": 503}, "match": {"path": "/orders"}}),
    ] {
        let r = http
            .post(format!("http://{admin}/proxies/web/toxics"))
            .json(&toxic)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }

    // Prometheus, scraping fallacy every second, in a directory of its own.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    let mut f = std::fs::File::create(&config).unwrap();
    write!(
        f,
        "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: fallacy\n    static_configs:\n      - targets: ['{admin}']\n"
    )
    .unwrap();
    promtool(&["check", "config", config.to_str().unwrap()], None);
    let port = free_port();
    let prom = format!("http://127.0.0.1:{port}");
    let _prometheus = Guard(
        Command::new("timeout")
            .args(["120", &prometheus])
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
        true,
    );

    // The workload. Five impatient GETs, each on its own path (so none is another's retry):
    // the upstream answers at once, fallacy's 300 ms delay makes the client give up at 100 ms.
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    for i in 0..5 {
        let err = impatient
            .get(format!("{base}/slow?i={i}"))
            .send()
            .await
            .unwrap_err();
        assert!(err.is_timeout());
    }
    // Four orders, three attempts each, all answered 503: eight retries.
    for order in 0..4 {
        for _ in 0..3 {
            let r = http
                .post(format!("{base}/orders"))
                .body(format!("order {order}"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 503);
        }
    }

    let job = r#"job="fallacy",proxy="web""#;
    for (query, want) in [
        (
            format!("fallacy_timeout_false_positive_total{{{job}}}"),
            5.0,
        ),
        (
            format!(
                r#"fallacy_client_abandoned_total{{{job},outcome="upstream_ok",cause="injected"}}"#
            ),
            5.0,
        ),
        (format!("sum(fallacy_client_abandoned_total{{{job}}})"), 5.0),
        (format!("fallacy_retries_total{{{job}}}"), 8.0),
        (format!("fallacy_requests_total{{{job}}}"), 17.0),
        // 17 attempts for 9 logical requests in the last minute.
        (format!("fallacy_retry_amplification{{{job}}}"), 17.0 / 9.0),
        // Once the 1 s retry window has passed, every logical request is closed: five of one
        // attempt, four of three.
        (
            format!(r#"fallacy_request_attempts_bucket{{{job},le="1"}}"#),
            5.0,
        ),
        (
            format!(r#"fallacy_request_attempts_bucket{{{job},le="3"}}"#),
            9.0,
        ),
        (
            format!("fallacy_injected_delay_seconds_count{{{job}}}"),
            5.0,
        ),
    ] {
        expect(&http, &prom, &query, want).await;
    }

    // promtool's lint of the exposition itself.
    let text = scrape(&http, admin).await;
    promtool(&["check", "metrics"], Some(&text));
}

/// `config/grafana/fallacy.json`: panels for the false-timeout rate, amplification, latency
/// quantiles, faults applied and bytes; every PromQL query parses (`promtool check rules`) and
/// names only metrics the real binary exports, with the right type for histogram series.
#[tokio::test]
async fn the_grafana_dashboard_queries_only_metrics_fallacy_exports() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("config/grafana/fallacy.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(dashboard["uid"], "fallacy");
    let panels = dashboard["panels"].as_array().unwrap();
    let mut ids = std::collections::HashSet::new();
    let mut exprs = Vec::new();
    for p in panels {
        assert!(
            ids.insert(p["id"].as_u64().unwrap()),
            "duplicate panel id: {p}"
        );
        for key in ["x", "y", "w", "h"] {
            assert!(p["gridPos"][key].is_u64(), "{}: gridPos.{key}", p["title"]);
        }
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{} has no query", p["title"]);
        for t in targets {
            exprs.push((
                p["title"].as_str().unwrap().to_owned(),
                t["expr"].as_str().unwrap().to_owned(),
            ));
        }
    }
    let titles: Vec<String> = panels
        .iter()
        .map(|p| p["title"].as_str().unwrap().to_lowercase())
        .collect();
    for needed in [
        "false-timeout rate",
        "amplification",
        "latency",
        "faults applied",
        "bytes",
    ] {
        assert!(
            titles.iter().any(|t| t.contains(needed)),
            "no panel for {needed}: {titles:?}"
        );
    }

    // Every query parses, with Grafana's variables as Grafana would fill them in.
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("dashboard.rules.yml");
    let mut text = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (_, expr)) in exprs.iter().enumerate() {
        let filled = expr
            .replace("$__rate_interval", "1m")
            .replace("$proxy", ".*");
        text.push_str(&format!(
            "      - record: dashboard:query{i}\n        expr: {}\n",
            serde_json::to_string(&filled).unwrap()
        ));
    }
    std::fs::write(&rules, text).unwrap();
    promtool(&["check", "rules", rules.to_str().unwrap()], None);

    // What the real binary exports, after an HTTP proxy served a request through a toxic.
    let (_fallacy, admin) = fallacy();
    let http = reqwest::Client::new();
    let up = upstream().await;
    let proxy = post(
        &http,
        admin,
        "/proxies",
        json!({"name": "web", "listen": "127.0.0.1:0",
        "upstream": up.to_string(), "protocol": "http"}),
    )
    .await;
    http.post(format!("http://{admin}/proxies/web/toxics"))
        .json(&json!({"type": "http_delay", "attributes": {"latency": 1}}))
        .send()
        .await
        .unwrap();
    let base = format!("http://{}", proxy["listen"].as_str().unwrap());
    assert_eq!(
        http.get(format!("{base}/slow"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let exposition = scrape(&http, admin).await;
    let types: std::collections::HashMap<&str, &str> = exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .collect();
    let name = regex::Regex::new(r"fallacy_[a-z_]+").unwrap();
    for (title, expr) in &exprs {
        for m in name.find_iter(expr) {
            let series = m.as_str();
            let (base, histogram_part) = ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|s| series.strip_suffix(s).map(|b| (b, true)))
                .unwrap_or((series, false));
            match types.get(base) {
                Some(kind) if histogram_part => assert_eq!(*kind, "histogram", "{title}: {series}"),
                Some(_) => {}
                None => panic!(
                    "{title}: {series} is not exported; fallacy exports {:?}",
                    types.keys()
                ),
            }
        }
    }
}
