//! The fuzz harnesses: one function per target, each fed raw bytes, each panicking only on a
//! bug. `fuzz/fuzz_targets/*.rs` call them under libFuzzer; `tests/fuzz_regressions.rs`
//! includes this file as a module and feeds them every saved crash input
//! (`fuzz/regressions/<target>/*`) and seed (`fuzz/seeds/<target>/*`), so a crash found once
//! stays a plain `cargo test` failure.
//!
//! Everything listens on 127.0.0.1:0, and nothing dials anything but loopback: the admin
//! target rewrites every `listen` it is given to `127.0.0.1:0`, its proxies' upstreams are
//! never dialled (no client connects to them), and the HTTP target's upstream is in-process.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{Method, Request, StatusCode};
use fallacy::Server;
use fallacy::admin::{AdminState, router};
use fallacy::proxy::Settings;
use fallacy::scenario::{Model, Scenario, runner};
use fallacy::state::Store;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

// === config_toml, config_json ===================================================================

/// `fallacy::config::parse(text, false)`: the TOML config file.
pub fn config_toml(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        check_config(text, false);
    }
}

/// `fallacy::config::parse(text, true)`: a Toxiproxy populate file (JSON).
pub fn config_json(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        check_config(text, true);
    }
}

fn check_config(text: &str, json: bool) {
    match fallacy::config::parse(text, json) {
        Ok(_) => {}
        Err(diagnostics) => {
            assert!(!diagnostics.is_empty(), "refused without a diagnostic");
            // Reading a config must not exhaust memory. Under libFuzzer a huge allocation is
            // a crash by itself; tests/fuzz_regressions.rs limits its address space instead, so
            // there the read fails with "out of memory", and that is the bug.
            // (The message ends with the OS's error; the text before it may quote the input.)
            for d in &diagnostics {
                assert!(
                    !(d.field.ends_with("file") && d.message.ends_with(": out of memory")),
                    "reading the config ran out of memory: {d:?}"
                );
            }
            // Each diagnostic points into the text: 1-based, at most one line past the last.
            let lines = text.split('\n').count();
            for d in &diagnostics {
                assert!(
                    d.line >= 1 && d.line <= lines + 1 && d.column >= 1,
                    "diagnostic outside the text ({lines} lines): {d:?}"
                );
            }
        }
    }
}

// === api_json ===================================================================================

/// The admin API's routes, as the fuzzer picks them: `{p}`, `{t}`, `{n}` and `{s}` become a
/// proxy, toxic, partition or scenario name; `{q}` the first line of the body (the rest stays
/// the body), percent-encoded. `RAW` reads `METHOD /path` from that first line instead.
const ROUTES: &[(&str, &str)] = &[
    ("GET", "/proxies"),
    ("POST", "/proxies"),
    ("POST", "/populate"),
    ("GET", "/proxies/{p}"),
    ("POST", "/proxies/{p}"),
    ("PATCH", "/proxies/{p}"),
    ("POST", "/proxies/{p}?{q}"),
    ("DELETE", "/proxies/{p}"),
    ("GET", "/proxies/{p}/toxics"),
    ("POST", "/proxies/{p}/toxics"),
    ("GET", "/proxies/{p}/toxics/{t}"),
    ("POST", "/proxies/{p}/toxics/{t}"),
    ("PATCH", "/proxies/{p}/toxics/{t}"),
    ("DELETE", "/proxies/{p}/toxics/{t}"),
    ("GET", "/proxies/{p}/stats"),
    ("GET", "/proxies/{p}/timeout-advice?{q}"),
    ("POST", "/reset"),
    ("GET", "/partitions"),
    ("POST", "/partitions"),
    ("GET", "/partitions/{n}"),
    ("DELETE", "/partitions/{n}"),
    ("GET", "/audit?{q}"),
    ("GET", "/scenarios"),
    ("POST", "/scenarios"),
    ("GET", "/scenarios/{s}?{q}"),
    ("DELETE", "/scenarios/{s}"),
    ("GET", "/version"),
    ("GET", "/metrics"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/openapi.json"),
    ("GET", "/log-level"),
    ("PUT", "/log-level"),
    ("POST", "/reload"),
    ("POST", "/shutdown"),
    ("RAW", ""),
];

const PROXIES: &[&str] = &["db", "web", "dns", "pool", "nope", "a%20b", "%C3%A9", ""];
const TOXICS: &[&str] = &["t", "latency_downstream", "nope", "slow", "a%2Fb"];
const PARTITIONS: &[&str] = &["split", "nope", "x"];
const SCENARIOS: &[&str] = &["s", "nope", "db-brownout"];

/// Requests an input may make (more are ignored).
const MAX_REQUESTS: usize = 8;

/// The state every input starts from: these proxies (never dialled: nothing connects to
/// them), a toxic `t` on `db` and `web`, and a partition `split`.
const SETUP: &[(&str, &str, &str)] = &[
    (
        "POST",
        "/proxies",
        r#"{"name":"db","listen":"127.0.0.1:0","upstream":"127.0.0.1:9","labels":{"from":"app","to":"db"}}"#,
    ),
    (
        "POST",
        "/proxies",
        r#"{"name":"web","listen":"127.0.0.1:0","upstream":"127.0.0.1:9","protocol":"http","labels":{"from":"client","to":"backend"}}"#,
    ),
    (
        "POST",
        "/proxies",
        r#"{"name":"dns","listen":"127.0.0.1:0","upstream":"127.0.0.1:9","protocol":"udp"}"#,
    ),
    (
        "POST",
        "/proxies",
        r#"{"name":"pool","listen":"127.0.0.1:0","upstreams":["127.0.0.1:9","127.0.0.1:10"],"policy":"round_robin"}"#,
    ),
    (
        "POST",
        "/proxies/db/toxics",
        r#"{"name":"t","type":"latency","attributes":{"latency":1}}"#,
    ),
    (
        "POST",
        "/proxies/web/toxics",
        r#"{"name":"t","type":"http_abort","match":{"path":"/x"}}"#,
    ),
    (
        "POST",
        "/partitions",
        r#"{"name":"split","a":["app"],"b":["db"]}"#,
    ),
];

/// Set `FALLACY_FUZZ_STRICT=1` to also hold every error answer to the README's shape
/// (`{"error": "...", "status": N}`).
fn strict() -> bool {
    static STRICT: OnceLock<bool> = OnceLock::new();
    *STRICT.get_or_init(|| std::env::var_os("FALLACY_FUZZ_STRICT").is_some_and(|v| v == "1"))
}

/// Ignores SIGPIPE, as the Rust runtime does before `main`: libFuzzer's `main` is C++, so
/// without this a write to a socket whose peer is gone (hyper answering a client that left,
/// through the byte path's socket pair) kills the process, a harness artefact.
fn ignore_sigpipe() {
    use nix::sys::signal::{SigHandler, Signal, signal};
    static ONCE: std::sync::Once = std::sync::Once::new();
    // SAFETY: installs SIG_IGN, no handler code runs; done once, before any socket is made.
    ONCE.call_once(|| unsafe {
        signal(Signal::SIGPIPE, SigHandler::SigIgn).expect("SIGPIPE ignored");
    });
}

fn current_thread() -> tokio::runtime::Runtime {
    ignore_sigpipe();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// A fresh store, its admin router and the tokens that stop its tasks.
struct Fresh {
    store: Store,
    router: Router,
    accept_root: CancellationToken,
    conn_root: CancellationToken,
    tracker: TaskTracker,
}

impl Fresh {
    fn new() -> Fresh {
        let (accept_root, conn_root) = (CancellationToken::new(), CancellationToken::new());
        let tracker = TaskTracker::new();
        let store = Store::new(
            Settings::default(),
            accept_root.clone(),
            conn_root.clone(),
            tracker.clone(),
        );
        let router = router(AdminState::new(
            store.clone(),
            None,
            CancellationToken::new(),
        ));
        Fresh {
            store,
            router,
            accept_root,
            conn_root,
            tracker,
        }
    }

    /// Creates the [`SETUP`] state; every request must succeed.
    async fn setup(&self) {
        for (method, path, body) in SETUP {
            let (status, answer) = call(&self.router, method, path, &[], body.as_bytes()).await;
            assert!(
                status.is_success(),
                "setup {method} {path}: {status} {answer:?}"
            );
        }
        self.store.set_ready();
    }

    /// Stops the scenarios the input started, then every listener and connection.
    async fn teardown(self) {
        let (_, list) = call(&self.router, "GET", "/scenarios", &[], b"").await;
        let list: Value = serde_json::from_slice(&list).unwrap_or(Value::Null);
        for s in list.as_array().into_iter().flatten() {
            if let Some(name) = s["name"].as_str() {
                let path = format!("/scenarios/{}", percent_encode(name.as_bytes()));
                call(&self.router, "DELETE", &path, &[], b"").await;
            }
        }
        self.accept_root.cancel();
        self.conn_root.cancel();
        self.tracker.close();
        if tokio::time::timeout(Duration::from_secs(5), self.tracker.wait())
            .await
            .is_err()
        {
            panic!(
                "{} proxy tasks still running 5 s after every token was cancelled",
                self.tracker.len()
            );
        }
    }
}

async fn call(
    router: &Router,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (StatusCode, Bytes) {
    let mut request = Request::builder().method(method).uri(uri);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(Body::from(body.to_vec()))
        .expect("a request the harness built");
    let response = router.clone().oneshot(request).await.expect("infallible");
    let status = response.status();
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("the answer's body reads whole");
    (status, body)
}

/// Every byte but unreserved ones as `%XX`.
fn percent_encode(bytes: &[u8]) -> String {
    let mut out = String::new();
    for &b in bytes {
        if b.is_ascii_alphanumeric() || b"-._~=&".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Rewrites every `listen` (any case: the API matches keys case-insensitively) to
/// `127.0.0.1:0`, at any depth, so the fuzzer cannot make fallacy bind anything else.
fn pin_listen(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                if key.to_lowercase() == "listen" && v.is_string() {
                    *v = Value::String("127.0.0.1:0".into());
                } else {
                    pin_listen(v);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(pin_listen),
        _ => {}
    }
}

/// The body as the API would read it (its first JSON value, as `parse_body` does), with
/// `listen` pinned; what follows the value is kept. A body that is not JSON goes as it is:
/// the API refuses it with the same parser, so it binds nothing.
fn pinned_body(body: &[u8]) -> Vec<u8> {
    let mut values = serde_json::Deserializer::from_slice(body).into_iter::<Value>();
    match values.next() {
        Some(Ok(mut value)) => {
            let rest = &body[values.byte_offset()..];
            pin_listen(&mut value);
            let mut out = serde_json::to_vec(&value).expect("a Value serialises");
            out.extend_from_slice(rest);
            out
        }
        _ => body.to_vec(),
    }
}

/// One request of an input: `[route][names][body...]`.
struct ApiRequest {
    method: String,
    uri: String,
    headers: Vec<(&'static str, &'static str)>,
    body: Vec<u8>,
}

fn api_request(segment: &[u8]) -> Option<ApiRequest> {
    let (&route, rest) = segment.split_first()?;
    let (names, body) = rest.split_first().map_or((0, &[][..]), |(n, b)| (*n, b));
    let (method, template) = ROUTES[usize::from(route) % ROUTES.len()];
    let pick = |list: &[&'static str], shift: u8| list[usize::from(names >> shift) % list.len()];
    let mut headers = Vec::new();
    if names & 0x40 != 0 {
        headers.push(("user-agent", "Mozilla/5.0 (fuzz)"));
    }
    if names & 0x80 != 0 {
        headers.push(("x-fallacy-owner", "fuzz"));
    }
    let (first_line, after) = match body.iter().position(|&b| b == b'\n') {
        Some(i) => (&body[..i], &body[i + 1..]),
        None => (body, &[][..]),
    };
    let (method, uri, body) = if method == "RAW" {
        let line = std::str::from_utf8(first_line).ok()?;
        let (m, path) = line.split_once(' ')?;
        Method::from_bytes(m.as_bytes()).ok()?;
        path.parse::<axum::http::Uri>().ok()?;
        (m.to_owned(), path.to_owned(), after)
    } else if template.contains("{q}") {
        let uri = template.replace("{q}", &percent_encode(first_line));
        (method.to_owned(), uri, after)
    } else {
        (method.to_owned(), template.to_owned(), body)
    };
    let uri = uri
        .replace("{p}", pick(PROXIES, 0))
        .replace("{t}", pick(TOXICS, 3))
        .replace("{n}", pick(PARTITIONS, 3))
        .replace("{s}", pick(SCENARIOS, 3));
    Some(ApiRequest {
        method,
        uri,
        headers,
        body: pinned_body(body),
    })
}

/// The answers the README documents as 5xx: a bind failure (500 `listen ...`) where a
/// listener is bound, and 501 from `/log-level` when no logger of fallacy's is installed.
fn documented_5xx(method: &str, path: &str, status: StatusCode, error: &str) -> bool {
    let binds = matches!(
        (method, path),
        ("POST", "/proxies" | "/populate" | "/reset")
    ) || (matches!(method, "POST" | "PATCH")
        && path.starts_with("/proxies/")
        && path.matches('/').count() == 2);
    (status == StatusCode::INTERNAL_SERVER_ERROR && binds && error.starts_with("listen "))
        || (status == StatusCode::NOT_IMPLEMENTED && path == "/log-level")
}

fn check_answer(req: &ApiRequest, status: StatusCode, body: &[u8]) {
    let path = req.uri.split('?').next().unwrap_or_default();
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let error = parsed
        .as_ref()
        .and_then(|v| v["error"].as_str())
        .unwrap_or_default();
    if status.is_server_error() {
        assert!(
            documented_5xx(&req.method, path, status, error),
            "{} {} answered {status}: {}",
            req.method,
            req.uri,
            String::from_utf8_lossy(body)
        );
    }
    if status.is_success() && !body.is_empty() && path != "/metrics" {
        assert!(
            parsed.is_some(),
            "{} {} answered {status} with a body that is not JSON: {}",
            req.method,
            req.uri,
            String::from_utf8_lossy(body)
        );
    }
    if strict() && (status.is_client_error() || status.is_server_error()) {
        let shape = parsed.as_ref().is_some_and(|v| {
            v["error"].is_string() && v["status"].as_u64() == Some(u64::from(status.as_u16()))
        });
        assert!(
            shape,
            "{} {} answered {status} without the {{error, status}} body: {}",
            req.method,
            req.uri,
            String::from_utf8_lossy(body)
        );
    }
}

/// The admin API: a fresh store with [`SETUP`]'s state per input, then up to
/// [`MAX_REQUESTS`] requests split on `0xFF`, each `[route][names][body]`, through the real
/// router. No answer may be a 5xx but the documented ones.
pub fn api_json(data: &[u8]) {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    let rt = RT.get_or_init(current_thread);
    rt.block_on(async {
        let fresh = Fresh::new();
        fresh.setup().await;
        for segment in data.split(|&b| b == 0xFF).take(MAX_REQUESTS) {
            let Some(req) = api_request(segment) else {
                continue;
            };
            let headers: Vec<(&str, &str)> = req.headers.clone();
            let (status, body) =
                call(&fresh.router, &req.method, &req.uri, &headers, &req.body).await;
            check_answer(&req, status, &body);
        }
        fresh.teardown().await;
    });
}

// === scenario_file ==============================================================================

/// The proxies a scenario is checked and played against: the lab's `api`, and one of each
/// other kind (never dialled: nothing connects to them).
const SCENARIO_PROXIES: &[&str] = &[
    r#"{"name":"api","listen":"127.0.0.1:0","upstream":"127.0.0.1:9","protocol":"http","labels":{"from":"client","to":"backend"}}"#,
    r#"{"name":"db","listen":"127.0.0.1:0","upstream":"127.0.0.1:9","labels":{"from":"app","to":"db"}}"#,
    r#"{"name":"dns","listen":"127.0.0.1:0","upstream":"127.0.0.1:9","protocol":"udp"}"#,
    r#"{"name":"pool","listen":"127.0.0.1:0","upstreams":["127.0.0.1:9","127.0.0.1:10"],"policy":"round_robin"}"#,
];

/// The most virtual time a scenario is played for, and the most wall time.
const PLAY_VIRTUAL: Duration = Duration::from_secs(600);
const PLAY_WALL: Duration = Duration::from_millis(300);

/// What `fallacy scenario check FILE` does (read it, check it against the proxies, plan a
/// cycle), then the plan's invariants, then play it on paused time and require that stopping
/// (or finishing) leaves the proxies as they were.
pub fn scenario_file(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok((scenario, json)) = Scenario::from_text(text) else {
        return;
    };
    // The JSON shape (what `scenario run` posts) reads back to the same scenario.
    let again = Scenario::from_json(&json).expect("a scenario's JSON shape reads back");
    assert_eq!(again, scenario, "the JSON shape reads back differently");
    let cycles = scenario.repeat.max(1);
    let per_cycle = scenario.plan_cycle(0).len();
    if per_cycle.saturating_mul(cycles as usize) <= 100_000 {
        let plan = scenario.plan();
        assert!(
            plan.windows(2).all(|w| w[0].at <= w[1].at),
            "the plan is not in time order"
        );
    }
    for cycle in 0..cycles.min(3) {
        let mut model = Model::default();
        for change in scenario.plan_cycle(cycle) {
            model.apply(&change.action);
        }
        assert_eq!(
            model,
            Model::default(),
            "cycle {cycle} does not end where it started"
        );
    }
    ignore_sigpipe();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("a tokio runtime");
    rt.block_on(play(scenario));
}

async fn play(scenario: Scenario) {
    let fresh = Fresh::new();
    for body in SCENARIO_PROXIES {
        let (status, answer) = call(&fresh.router, "POST", "/proxies", &[], body.as_bytes()).await;
        assert_eq!(status, StatusCode::CREATED, "{answer:?}");
    }
    if runner::check(&fresh.store, &scenario).await.is_err() {
        fresh.teardown().await;
        return;
    }
    let before = snapshot(&fresh.store).await;
    let cycles = if scenario.repeat == 0 {
        3
    } else {
        scenario.repeat.min(3)
    };
    let cap = scenario.duration.saturating_mul(cycles).min(PLAY_VIRTUAL);
    let tick = (cap / 256).max(Duration::from_micros(1));
    let running = runner::start(fresh.store.clone(), scenario).await;
    let (start, wall) = (tokio::time::Instant::now(), std::time::Instant::now());
    // Time moves only here, a tick at a time, so a toxic with nanosecond periods (flap) cannot
    // hold the clock back.
    while !running.done() && start.elapsed() <= cap && wall.elapsed() < PLAY_WALL {
        tokio::time::advance(tick).await;
        for _ in 0..8 {
            tokio::task::yield_now().await;
        }
    }
    let report = running.stop().await;
    let after = snapshot(&fresh.store).await;
    // Re-enabling a proxy binds the port it had again, which another process may have taken
    // meanwhile (the API's documented 500 `listen ...`): then it stays disabled, rightly.
    let port_taken = report["errors"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|e| e.as_str().is_some_and(|e| e.contains(": listen ")));
    if port_taken {
        fresh.teardown().await;
        return;
    }
    assert_eq!(
        before, after,
        "the proxies differ after the scenario ended; its changes: {}, its errors: {}",
        report["changes"], report["errors"]
    );
    fresh.teardown().await;
}

/// Everything a scenario may change and must give back: each proxy (its bound port aside,
/// which a disable and enable may change) and the partitions.
async fn snapshot(store: &Store) -> (Vec<String>, usize) {
    let proxies = store
        .list()
        .await
        .into_iter()
        .map(|mut p| {
            p.listen.clear();
            format!("{p:?}")
        })
        .collect();
    (proxies, store.list_partitions().await.len())
}

// === http_request ===============================================================================

/// The HTTP proxies' config: `web` reads the client socket directly, `bytes` through the byte
/// path (a byte toxic is on it). HTTP toxics `match` requests the fuzzer can reach; `/alive`
/// matches none, so the liveness probe always gets the upstream's 200.
const HTTP_CONFIG: &str = r#"
[server]
seed = 7
connect_timeout = "1s"
header_read_timeout = "1s"
max_connections = 0

[[proxy]]
name = "web"
listen = "127.0.0.1:0"
upstream = "UPSTREAM"
protocol = "http"
abandon_grace = "1s"
TOXICS

[[proxy]]
name = "bytes"
listen = "127.0.0.1:0"
upstream = "UPSTREAM"
protocol = "http"
abandon_grace = "1s"
TOXICS

[[proxy.toxic]]
name = "chop"
type = "slicer"
stream = "upstream"
attributes = { average_size = 7, size_variation = 3, delay = 0 }

[[proxy.toxic]]
name = "chop-down"
type = "slicer"
stream = "downstream"
toxicity = 0.5
attributes = { average_size = 100, size_variation = 50, delay = 0 }
"#;

const HTTP_TOXICS: &str = r#"
[[proxy.toxic]]
name = "abort"
type = "http_abort"
attributes = { status = 503, retry_after = "2s", body = "down" }
match = { path = "/abort*" }

[[proxy.toxic]]
name = "reset"
type = "http_abort"
attributes = { reset = true }
match = { header = { name = "x-reset" } }

[[proxy.toxic]]
name = "delay"
type = "http_delay"
attributes = { latency = 1, jitter = 1, phase = "body" }
match = { method = "POST" }

[[proxy.toxic]]
name = "deadline"
type = "http_delay"
attributes = { deadline = "meet", margin = "1ms" }
match = { path = "/grpc*", header = { name = "grpc-timeout" } }

[[proxy.toxic]]
name = "maint"
type = "maintenance"
attributes = { retry_after = "1s" }
match = { path = "/maint" }

[[proxy.toxic]]
name = "quota"
type = "rate_limit"
attributes = { rate = 1000, per = "client" }
match = { path = "/rl*" }

[[proxy.toxic]]
name = "trunc"
type = "http_truncate"
attributes = { bytes = 10 }
match = { path = "/trunc*" }

[[proxy.toxic]]
name = "trunc-up"
type = "http_truncate"
stream = "upstream"
attributes = { bytes = 3 }
match = { method = "PUT" }

[[proxy.toxic]]
name = "slow"
type = "http_slow_body"
attributes = { rate = 10000 }
match = { path = "/slow*" }

[[proxy.toxic]]
name = "tamper"
type = "tamper"
attributes = { set_headers = { "x-t" = "1" }, remove_headers = ["content-type"], flip = 0.01 }
match = { header = { name = "x-tamper", regex = "^y" } }

[[proxy.toxic]]
name = "tamper-up"
type = "tamper"
stream = "upstream"
attributes = { flip = 0.1 }
match = { method = "PATCH" }

[[proxy.toxic]]
name = "no-h2"
type = "downgrade"
toxicity = 0.3
"#;

/// How long one input may keep its connection, and how long the probe may take.
const HTTP_INPUT: Duration = Duration::from_millis(200);
const HTTP_IDLE: Duration = Duration::from_millis(30);
const PROBE: Duration = Duration::from_secs(5);

struct HttpLab {
    rt: tokio::runtime::Runtime,
    web: SocketAddr,
    bytes: SocketAddr,
    upstream: SocketAddr,
    /// The admin API of the lab's server, in-process, for the proxy of toxic mode.
    admin: Router,
    _server: Server,
}

fn http_lab() -> &'static HttpLab {
    static LAB: OnceLock<HttpLab> = OnceLock::new();
    LAB.get_or_init(|| {
        ignore_sigpipe();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let (server, web, bytes, upstream) = rt.block_on(async {
            let upstream = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let up = upstream.local_addr().expect("address");
            let app = Router::new().fallback(|body: Bytes| async move {
                // 2 KiB and the request body's size: enough for truncation and bit flips.
                format!("{}{}\n", "x".repeat(2048), body.len())
            });
            tokio::spawn(async move { axum::serve(upstream, app).await });
            let text = HTTP_CONFIG
                .replace("TOXICS", HTTP_TOXICS)
                .replace("UPSTREAM", &up.to_string());
            let config = fallacy::config::parse(&text, false).expect("the fuzz lab's config");
            let admin = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let server = Server::start(admin, config, None, CancellationToken::new())
                .await
                .expect("the fuzz lab starts");
            let addr = |name: &'static str| {
                let store = server.store.clone();
                async move {
                    let view = store.get(name).await.expect("the lab's proxy");
                    view.listen.parse::<SocketAddr>().expect("a bound address")
                }
            };
            let (web, bytes) = (addr("web").await, addr("bytes").await);
            (server, web, bytes, up)
        });
        let admin = router(AdminState::new(
            server.store.clone(),
            None,
            CancellationToken::new(),
        ));
        HttpLab {
            rt,
            web,
            bytes,
            upstream,
            admin,
            _server: server,
        }
    })
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The HTTP request path: `[mode][bytes...]` written raw to an HTTP proxy. Mode bit 0: the
/// `bytes` proxy (byte toxics) instead of `web`; bit 1: prefix the h2c preface; bit 2: keep
/// the write side open and read until the proxy goes quiet, instead of half-closing at once.
/// Bit 3, toxic mode: the bytes are `toxic JSON 0xFF request`: a fresh HTTP proxy (bit 5: a
/// TCP proxy) gets that toxic (any type: HTTP faults, and byte toxics on its byte path), the
/// request goes through it, then the proxy is deleted, which must not hang. Afterwards the
/// proxy used must still answer a plain GET.
pub fn http_request(data: &[u8]) {
    let Some((&mode, bytes)) = data.split_first() else {
        return;
    };
    let lab = http_lab();
    lab.rt.block_on(async {
        if mode & 8 != 0 {
            let (toxic, request) = match bytes.iter().position(|&b| b == 0xFF) {
                Some(i) => (&bytes[..i], &bytes[i + 1..]),
                None => (bytes, &[][..]),
            };
            toxic_exchange(lab, mode, toxic, request).await;
        } else {
            let proxy = if mode & 1 != 0 { lab.bytes } else { lab.web };
            exchange(proxy, mode, bytes).await;
            live(proxy).await;
        }
    });
}

/// A fresh proxy `f` with the input's toxic, one exchange through it, then its deletion.
async fn toxic_exchange(lab: &HttpLab, mode: u8, toxic: &[u8], request: &[u8]) {
    let protocol = if mode & 32 != 0 { "tcp" } else { "http" };
    let body = format!(
        r#"{{"name":"f","listen":"127.0.0.1:0","upstream":"{}","protocol":"{protocol}","abandon_grace":"100ms"}}"#,
        lab.upstream
    );
    let (status, answer) = call(&lab.admin, "POST", "/proxies", &[], body.as_bytes()).await;
    assert_eq!(status, StatusCode::CREATED, "{answer:?}");
    let proxy: Value = serde_json::from_slice(&answer).expect("a proxy");
    let addr: SocketAddr = proxy["listen"]
        .as_str()
        .and_then(|l| l.parse().ok())
        .expect("a bound address");
    let (status, answer) = call(&lab.admin, "POST", "/proxies/f/toxics", &[], toxic).await;
    if std::env::var_os("FUZZ_DEBUG").is_some() {
        eprintln!("toxic: {status} {answer:?}");
    }
    if status.is_server_error() {
        panic!("adding the toxic answered {status}: {answer:?}");
    }
    if status.is_success() {
        exchange(addr, mode, request).await;
    }
    let deleted =
        tokio::time::timeout(PROBE, call(&lab.admin, "DELETE", "/proxies/f", &[], b"")).await;
    match deleted {
        Ok((StatusCode::NO_CONTENT, _)) => {}
        Ok((status, answer)) => panic!("deleting the proxy answered {status}: {answer:?}"),
        Err(_) => panic!("deleting the proxy took over {PROBE:?}"),
    }
    live(lab.web).await;
}

/// Writes `bytes` to the proxy as the mode says (bit 4: in pieces split on `0xFE`, 2 ms
/// apart, so that toxics see several chunks), and reads what comes back for at most
/// [`HTTP_INPUT`].
async fn exchange(proxy: SocketAddr, mode: u8, bytes: &[u8]) {
    let talk = async {
        let mut s = TcpStream::connect(proxy).await.expect("the proxy accepts");
        if mode & 2 != 0 {
            s.write_all(H2_PREFACE).await?;
        }
        if mode & 16 != 0 {
            for (i, piece) in bytes.split(|&b| b == 0xFE).enumerate() {
                if i > 0 {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                s.write_all(piece).await?;
            }
        } else {
            s.write_all(bytes).await?;
        }
        let half_close = mode & 4 == 0;
        if half_close {
            s.shutdown().await?;
        }
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let read = if half_close {
                s.read(&mut buf).await?
            } else {
                match tokio::time::timeout(HTTP_IDLE, s.read(&mut buf)).await {
                    Ok(read) => read?,
                    Err(_) => 0,
                }
            };
            if read == 0 {
                return Ok::<(), std::io::Error>(());
            }
        }
    };
    // The proxy may reset, or keep a connection open (h2): neither is a bug.
    let _ = tokio::time::timeout(HTTP_INPUT, talk).await;
}

/// The proxy still answers a plain GET with the upstream's 200.
async fn live(proxy: SocketAddr) {
    let alive = tokio::time::timeout(PROBE, probe(proxy)).await;
    match alive {
        Ok(Ok(head)) => assert!(
            head.starts_with("HTTP/1.1 200"),
            "the proxy answered the probe with {head:?}"
        ),
        Ok(Err(e)) => panic!("the proxy failed the probe: {e}"),
        Err(_) => panic!("the proxy did not answer the probe within {PROBE:?}"),
    }
}

/// A plain GET through the proxy; answers the status line.
async fn probe(proxy: SocketAddr) -> std::io::Result<String> {
    let mut s = TcpStream::connect(proxy).await?;
    s.write_all(b"GET /alive HTTP/1.1\r\nhost: fuzz\r\nconnection: close\r\n\r\n")
        .await?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).await?;
    let text = String::from_utf8_lossy(&answer);
    Ok(text.lines().next().unwrap_or_default().to_owned())
}
