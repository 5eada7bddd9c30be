//! API fuzzing: schemathesis (PyPI, pinned in `.ci/run`) generates requests from the live
//! `GET /openapi.json` of the real `fallacy serve` and checks every answer: no 5xx but the
//! documented bind failure (a 500 `{"error": "listen ..."}` from an operation that binds), status
//! codes, content types and bodies as the document says, deleted things gone and created things
//! there (stateful phase, following the document's links), and no request slower than
//! `REQUEST_TIMEOUT` (a hang). A fixed seed makes a CI run repeatable.
//!
//! Everything stays on loopback: `tests/compat/schemathesis/hooks.py` rewrites every generated
//! `listen` to 127.0.0.1:0 (or, sometimes, to the admin API's own address, which is taken, so
//! the bind failure is exercised) and every `upstream` to a closed loopback port, right before
//! each request is sent; `POST /shutdown` is left out. The same file holds the custom checks.

mod support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

/// The whole schemathesis run: about 45 s on an idle 2-core machine.
const LIMIT: Duration = Duration::from_secs(180);
/// Per request, in seconds: an answer slower than this is a hang and fails the run.
const REQUEST_TIMEOUT: &str = "10";
/// Test cases per operation and phase, sized so that the run stays well inside `LIMIT`.
const MAX_EXAMPLES: &str = "100";
const SEED: &str = "1126";
/// Every check that holds for this API. Left out: `negative_data_rejection` (fallacy reads
/// bodies as leniently as Toxiproxy's Go decoder: keys in any case, `null` as absent, unknown
/// keys ignored, so much of what the schemas rule out is accepted on purpose), `ignored_auth`
/// (no token is set here), `positive_data_acceptance` (a valid shape can still name a proxy
/// that is not there).
const CHECKS: &str = "not_a_server_error_but_bind,listens_on_loopback,status_code_conformance,\
content_type_conformance,response_schema_conformance,response_headers_conformance,\
use_after_free,ensure_resource_availability,unsupported_method,allow_header_conformance";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let stderr_path = dir.path().join("fallacy.stderr");
    let mut server = Command::new(env!("CARGO_BIN_EXE_fallacy"))
        .args(["serve", "--admin", "127.0.0.1:0"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut line = String::new();
    tokio::time::timeout(
        Duration::from_secs(30),
        BufReader::new(server.stdout.take().unwrap()).read_line(&mut line),
    )
    .await
    .expect("fallacy did not print its admin address")
    .unwrap();
    let admin = line
        .trim()
        .strip_prefix("fallacy admin API on http://")
        .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
        .to_owned();
    let base = format!("http://{admin}");
    // A loopback port nobody listens on: what every generated upstream becomes.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();

    let started = Instant::now();
    let child = support::loopback_client("python3")
        .args(["-m", "schemathesis.cli", "run"])
        .arg(format!("{base}/openapi.json"))
        .args(["--url", &base])
        .args(["--checks", CHECKS])
        .args(["--exclude-path", "/shutdown"])
        .args(["--seed", SEED, "--max-examples", MAX_EXAMPLES])
        .args(["--request-timeout", REQUEST_TIMEOUT])
        .args(["--workers", "1", "--generation-unique-inputs"])
        .args(["--generation-database", "none", "--no-color"])
        // Hypothesis and schemathesis leave their folders in the working directory.
        .current_dir(dir.path())
        .env(
            "SCHEMATHESIS_HOOKS",
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/compat/schemathesis/hooks.py"
            ),
        )
        .env("FALLACY_FUZZ_BUSY_LISTEN", &admin)
        .env("FALLACY_FUZZ_UPSTREAM", closed.to_string())
        .spawn()
        .expect("python3 is needed for the API fuzz test");
    let out = tokio::time::timeout(LIMIT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("schemathesis did not finish within {LIMIT:?}"))
        .unwrap();
    let took = started.elapsed();
    let report = |why: &str| {
        let log = std::fs::read_to_string(&stderr_path).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        format!(
            "{why} (schemathesis: {}, {took:.0?}); if schemathesis is missing, install it with \
             `.ci/run` or `pip install schemathesis==4.32.5`\n--- schemathesis stdout\n{}\n\
             --- schemathesis stderr\n{}\n--- fallacy stderr (last lines)\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
        )
    };
    assert!(out.status.success(), "{}", report("schemathesis failed"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("Schemathesis v4.32.5") && stdout.contains("passed"),
        "{}",
        report("not the pinned schemathesis, or it ran nothing")
    );

    // The server is still up and answering, every proxy it holds listens on loopback, and it
    // never panicked.
    let http = reqwest::Client::new();
    let health = http.get(format!("{base}/healthz")).send().await;
    assert!(
        health.is_ok_and(|r| r.status() == 200),
        "{}",
        report("fallacy is gone")
    );
    let proxies: Value = http
        .get(format!("{base}/proxies"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let proxies = proxies.as_object().unwrap();
    assert!(!proxies.is_empty(), "{}", report("no proxy was created"));
    for (name, proxy) in proxies {
        let listen = proxy["listen"].as_str().unwrap_or_default();
        assert!(
            listen.starts_with("127.0.0.1:"),
            "{name:?} listens on {listen:?}"
        );
    }
    let log = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    assert!(!log.contains("panicked"), "{}", report("fallacy panicked"));
}
