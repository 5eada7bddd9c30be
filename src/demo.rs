//! `fallacy demo`: the timeout false-positive lesson, self-contained.
//!
//! "Send requests with a 100 ms timeout, introduce delays, observe the false positives: what
//! timeout balances fast detection against false alarms?"
//!
//! ```text
//! client (100 ms timeout, 3 jittered retries) ──▶ fallacy HTTP proxy ──▶ upstream ("ok" at once)
//!                                                  http_delay: lognormal p50 20 ms, p99 300 ms
//! ```
//!
//! It runs twice, retries off then on, each through its own proxy so the figures stay apart,
//! and reads the answers from fallacy's own measurements: false timeouts, timeout advice and
//! retry amplification. Everything runs in this process on 127.0.0.1:0.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::measure::advice::{self, Advice, NoAdvice};
use crate::measure::{Cause, Outcome, ProxyStats};
use crate::proxy::Link;
use crate::{Server, config};

/// What the demo does; the defaults are the lesson.
#[derive(Debug, Clone)]
pub struct Options {
    /// Logical requests per run (one run without retries, one with).
    pub requests: usize,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// The client's timeout per attempt.
    pub timeout: Duration,
    /// Retries per logical request in the second run.
    pub retries: u32,
    /// Seeds fallacy's delays and the client's jitter.
    pub seed: u64,
    /// Draw a progress bar on stderr (hidden when stderr is not a terminal).
    pub progress: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            requests: 3000,
            concurrency: 32,
            timeout: Duration::from_millis(100),
            retries: 3,
            seed: 42,
            progress: true,
        }
    }
}

/// The injected latency, as the lesson states it.
const P50: &str = "20ms";
const P99: &str = "300ms";
/// Timeouts the table weighs.
const CANDIDATES_MS: [u64; 9] = [25, 50, 100, 150, 200, 300, 500, 750, 1000];
/// False-timeout rates the advice is asked for.
const TARGETS: [f64; 3] = [0.05, 0.01, 0.001];

/// One run's figures: the client's own count, and fallacy's.
#[derive(Debug, Clone)]
pub struct Run {
    /// Whether the client retried.
    pub retries_on: bool,
    /// Logical requests.
    pub logical: u64,
    /// Attempts the client made.
    pub attempts: u64,
    /// Logical requests that ended with a 200.
    pub succeeded: u64,
    /// Attempts that timed out at the client.
    pub timeouts: u64,
    /// Retries fallacy counted.
    pub fallacy_retries: u64,
    /// Abandoned requests the upstream answered successfully, as fallacy counted them.
    pub false_timeouts: u64,
    /// Of those, the ones fallacy's delay caused.
    pub false_timeouts_injected: u64,
    /// Attempts per logical request, as fallacy measured it.
    pub amplification: f64,
    /// Wall time of the run.
    pub took: Duration,
}

/// Everything the demo prints.
#[derive(Debug, Clone)]
pub struct Report {
    /// What ran.
    pub options: Options,
    /// (timeout, share of successful requests slower than it) from the run without retries.
    pub candidates: Vec<(Duration, f64)>,
    /// Advice per target rate.
    pub advice: Vec<(f64, Result<Advice, NoAdvice>)>,
    /// Successful requests the table and advice rest on.
    pub samples: u64,
    /// Retries off, then on.
    pub runs: Vec<Run>,
}

/// Runs the lesson: an upstream, fallacy, and a client, all in this process.
pub async fn run(options: Options) -> anyhow::Result<Report> {
    let stop = CancellationToken::new();
    let _stop_on_exit = stop.clone().drop_guard();
    let upstream = upstream(stop.clone(), Bytes::from_static(b"ok")).await?;
    let server = fallacy(upstream, &options, stop.clone()).await?;
    let bar = progress(&options);
    let mut runs = Vec::new();
    let mut samples_link = None;
    for (name, retries_on) in [("demo_no_retry", false), ("demo_retry", true)] {
        let link = server.store.link(name).await.context("demo proxy")?;
        let addr = server
            .store
            .get(name)
            .await
            .context("demo proxy")?
            .listen
            .parse::<SocketAddr>()
            .context("demo proxy address")?;
        bar.set_message(if retries_on {
            format!("retries on ({} per request)", options.retries)
        } else {
            "retries off".to_owned()
        });
        runs.push(drive(addr, &link, &options, retries_on, &bar).await);
        if !retries_on {
            samples_link = Some(link);
        }
    }
    bar.finish_and_clear();
    let link = samples_link.context("the run without retries")?;
    let snapshot = link.stats().client.snapshot();
    let candidates = CANDIDATES_MS
        .iter()
        .filter_map(|&ms| {
            let d = Duration::from_millis(ms);
            snapshot.fraction_above(d).map(|f| (d, f))
        })
        .collect();
    let advice = TARGETS
        .iter()
        .map(|&rate| (rate, advice::advise(&snapshot, rate)))
        .collect();
    stop.cancel();
    Ok(Report {
        options,
        candidates,
        advice,
        samples: snapshot.total(),
        runs,
    })
}

fn progress(options: &Options) -> ProgressBar {
    if !options.progress {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(2 * options.requests as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} {msg:28} [{bar:30}] {pos}/{len} requests ({elapsed})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(100));
    bar
}

/// An upstream that answers every request at once with `body`.
pub(crate) async fn upstream(stop: CancellationToken, body: Bytes) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("cannot bind the demo upstream on 127.0.0.1")?;
    let addr = listener.local_addr()?;
    let app = axum::Router::new().fallback(move || {
        let body = body.clone();
        async move { body }
    });
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await;
    });
    Ok(addr)
}

/// fallacy with two identical HTTP proxies, one per run.
async fn fallacy(
    upstream: SocketAddr,
    options: &Options,
    stop: CancellationToken,
) -> anyhow::Result<Server> {
    let proxy = |name: &str| {
        format!(
            r#"
[[proxy]]
name = "{name}"
listen = "127.0.0.1:0"
upstream = "{upstream}"
protocol = "http"
abandon_grace = "5s"

[[proxy.toxic]]
name = "lognormal"
type = "http_delay"
attributes = {{ distribution = "lognormal", p50 = "{P50}", p99 = "{P99}" }}
"#
        )
    };
    let text = format!(
        "[server]\nseed = {}\n{}{}",
        options.seed,
        proxy("demo_no_retry"),
        proxy("demo_retry")
    );
    start_embedded(&text, stop).await
}

/// A fallacy server in this process, from a config the program wrote itself, with its admin
/// API on 127.0.0.1:0.
pub(crate) async fn start_embedded(text: &str, stop: CancellationToken) -> anyhow::Result<Server> {
    let config = config::parse(text, false).map_err(|d| {
        anyhow::anyhow!(
            "the built-in config is invalid: {}",
            d.iter()
                .map(|d| format!("{}: {}", d.field, d.message))
                .collect::<Vec<_>>()
                .join("; ")
        )
    })?;
    let admin = TcpListener::bind("127.0.0.1:0")
        .await
        .context("cannot bind an admin API on 127.0.0.1")?;
    Ok(Server::start(admin, config, None, stop).await?)
}

/// Runs every logical request of one run through `addr`, then waits (bounded) until fallacy
/// knows the outcome of every abandoned attempt.
async fn drive(
    addr: SocketAddr,
    link: &Arc<Link>,
    options: &Options,
    retries_on: bool,
    bar: &ProgressBar,
) -> Run {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build(connector);
    let next = Arc::new(AtomicUsize::new(0));
    let counts = Arc::new([(); 4].map(|_| AtomicU64::new(0))); // attempts, succeeded, timeouts, logical
    let start = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..options.concurrency {
        let (client, next, counts, bar) =
            (client.clone(), next.clone(), counts.clone(), bar.clone());
        let options = options.clone();
        let seed = options.seed ^ (w as u64 + 1) ^ u64::from(retries_on) << 32;
        workers.spawn(async move {
            let mut rng = SmallRng::seed_from_u64(seed);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= options.requests {
                    return;
                }
                counts[3].fetch_add(1, Ordering::Relaxed);
                // A path per logical request: its attempts share a fingerprint, and no other.
                let uri: hyper::Uri = match format!("http://{addr}/item/{i}").parse() {
                    Ok(u) => u,
                    Err(_) => return,
                };
                let tries = if retries_on { 1 + options.retries } else { 1 };
                for attempt in 0..tries {
                    if attempt > 0 {
                        backoff(attempt, &mut rng).await;
                    }
                    counts[0].fetch_add(1, Ordering::Relaxed);
                    match try_once(&client, &uri, None, options.timeout).await {
                        Attempt::Ok => {
                            counts[1].fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                        Attempt::Failed => {}
                        Attempt::TimedOut => {
                            counts[2].fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                bar.inc(1);
            }
        });
    }
    while workers.join_next().await.is_some() {}
    let took = start.elapsed();
    // Outcomes of abandoned attempts arrive once the upstream answers (here, at once).
    let deadline = Instant::now() + Duration::from_secs(5);
    let counts_now = loop {
        let c = ProxyStats::refresh(link);
        let known: u64 = c.abandoned.iter().map(|(_, _, n)| n).sum();
        if c.answered + known >= c.requests || Instant::now() > deadline {
            break c;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let injected = counts_now
        .abandoned
        .iter()
        .filter(|(o, c, _)| *o == Outcome::UpstreamOk && *c == Cause::Injected)
        .map(|(_, _, n)| n)
        .sum();
    Run {
        retries_on,
        logical: counts[3].load(Ordering::Relaxed),
        attempts: counts[0].load(Ordering::Relaxed),
        succeeded: counts[1].load(Ordering::Relaxed),
        timeouts: counts[2].load(Ordering::Relaxed),
        fallacy_retries: counts_now.retries,
        false_timeouts: counts_now.false_timeouts,
        false_timeouts_injected: injected,
        amplification: counts_now.amplification,
        took,
    }
}

/// How one attempt of a client with a timeout ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Attempt {
    /// A 2xx, body read.
    Ok,
    /// Another status, or a connection error.
    Failed,
    /// The client gave up.
    TimedOut,
}

/// One GET with a timeout over the whole exchange, body included, as a client library does;
/// with `key`, an `Idempotency-Key` header that its retries repeat.
pub(crate) async fn try_once(
    client: &Client<HttpConnector, Empty<Bytes>>,
    uri: &hyper::Uri,
    key: Option<&str>,
    timeout: Duration,
) -> Attempt {
    let mut request = http::Request::get(uri.clone());
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    let Ok(request) = request.body(Empty::new()) else {
        return Attempt::Failed;
    };
    let call = async {
        let response = client.request(request).await.ok()?;
        let ok = response.status().is_success();
        response.into_body().collect().await.ok()?;
        Some(ok)
    };
    match tokio::time::timeout(timeout, call).await {
        Ok(Some(true)) => Attempt::Ok,
        Ok(_) => Attempt::Failed,
        Err(_) => Attempt::TimedOut,
    }
}

/// Waits before retry number `attempt` (from 1): full jitter on an exponential base of 10 ms.
pub(crate) async fn backoff(attempt: u32, rng: &mut SmallRng) {
    let cap = 10u64 << (attempt - 1).min(10);
    tokio::time::sleep(Duration::from_millis(rng.random_range(0..=cap))).await;
}

fn pct(f: f64) -> String {
    format!("{:.2} %", f * 100.0)
}

impl Report {
    /// The human-readable table.
    pub fn render(&self) -> String {
        let o = &self.options;
        let mut out = String::new();
        let line = |out: &mut String, s: String| {
            out.push_str(&s);
            out.push('\n');
        };
        line(
            &mut out,
            format!(
                "fallacy demo: {} requests through an HTTP proxy that delays each response by a lognormal (p50 {P50}, p99 {P99}); the client times out at {} ms.",
                o.requests,
                o.timeout.as_millis()
            ),
        );
        line(&mut out, String::new());
        line(
            &mut out,
            format!(
                "False timeouts by timeout: the share of requests that succeeded upstream but took longer ({} samples, retries off)",
                self.samples
            ),
        );
        line(&mut out, String::new());
        line(&mut out, "| timeout | false-timeout rate |".into());
        line(&mut out, "|---:|---:|".into());
        for (d, f) in &self.candidates {
            let mark = if *d == o.timeout {
                "  <- the client's"
            } else {
                ""
            };
            line(
                &mut out,
                format!("| {} ms | {}{mark} |", d.as_millis(), pct(*f)),
            );
        }
        line(&mut out, String::new());
        line(
            &mut out,
            "Advice: the smallest timeout with at most this false-timeout rate".into(),
        );
        line(&mut out, String::new());
        line(
            &mut out,
            format!(
                "| target | timeout | at {:.0} % confidence |",
                advice::CONFIDENCE * 100.0
            ),
        );
        line(&mut out, "|---:|---:|---:|".into());
        for (rate, a) in &self.advice {
            match a {
                Ok(a) => line(
                    &mut out,
                    format!(
                        "| {} | {:.0} ms | {:.0} ms |",
                        pct(*rate),
                        a.timeout.as_secs_f64() * 1000.0,
                        a.timeout_at_confidence.as_secs_f64() * 1000.0
                    ),
                ),
                Err(e) => line(&mut out, format!("| {} | {e} | |", pct(*rate))),
            }
        }
        line(&mut out, String::new());
        line(
            &mut out,
            "Retries: what the client did, and what fallacy saw".into(),
        );
        line(&mut out, String::new());
        line(&mut out, "| client | requests | attempts | timeouts | false timeouts (injected) | retries counted | amplification | succeeded | took |".into());
        line(
            &mut out,
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|".into(),
        );
        for r in &self.runs {
            line(
                &mut out,
                format!(
                    "| {} | {} | {} | {} | {} ({}) | {} | {:.3}x | {} | {:.1} s |",
                    if r.retries_on {
                        format!("{} retries, jittered", o.retries)
                    } else {
                        "no retries".into()
                    },
                    r.logical,
                    r.attempts,
                    r.timeouts,
                    r.false_timeouts,
                    r.false_timeouts_injected,
                    r.fallacy_retries,
                    r.amplification,
                    r.succeeded,
                    r.took.as_secs_f64()
                ),
            );
        }
        line(&mut out, String::new());
        if let Some(r) = self.runs.iter().find(|r| r.retries_on) {
            line(
                &mut out,
                format!(
                    "The client made {} retries; fallacy counted {}. Each timeout here is a false alarm: the upstream answers at once, and fallacy's delay alone made the client give up.",
                    r.attempts - r.logical,
                    r.fallacy_retries
                ),
            );
        }
        let late: u64 = self
            .runs
            .iter()
            .map(|r| r.timeouts.saturating_sub(r.false_timeouts))
            .sum();
        if late > 0 {
            line(
                &mut out,
                format!(
                    "{late} attempt(s) timed out at the client in the instant fallacy sent the answer: fallacy counts an attempt as answered once its response is handed to the connection."
                ),
            );
        }
        out
    }

    /// The same figures for machines.
    pub fn to_json(&self) -> Value {
        let ms = crate::measure::millis;
        json!({
            "requests": self.options.requests,
            "concurrency": self.options.concurrency,
            "client_timeout_ms": ms(self.options.timeout),
            "retries": self.options.retries,
            "seed": self.options.seed,
            "injected": {"type": "http_delay", "distribution": "lognormal", "p50": P50, "p99": P99},
            "samples": self.samples,
            "candidates": self.candidates.iter().map(|(d, f)| json!({"timeout_ms": ms(*d), "false_timeout_rate": f})).collect::<Vec<_>>(),
            "advice": self.advice.iter().map(|(rate, a)| match a {
                Ok(a) => json!({"false_timeout_rate": rate, "timeout_ms": ms(a.timeout), "timeout_ms_at_confidence": ms(a.timeout_at_confidence), "samples": a.samples}),
                Err(e) => json!({"false_timeout_rate": rate, "error": e.to_string()}),
            }).collect::<Vec<_>>(),
            "runs": self.runs.iter().map(|r| json!({
                "retries_on": r.retries_on,
                "logical_requests": r.logical,
                "attempts": r.attempts,
                "client_retries": r.attempts - r.logical,
                "timeouts": r.timeouts,
                "false_timeouts": r.false_timeouts,
                "false_timeouts_injected": r.false_timeouts_injected,
                "fallacy_retries": r.fallacy_retries,
                "amplification": r.amplification,
                "succeeded": r.succeeded,
                "seconds": r.took.as_secs_f64(),
            })).collect::<Vec<_>>(),
        })
    }
}
