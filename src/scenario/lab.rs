//! The lab: what `fallacy scenario run` plays against when given neither `--target` nor
//! `--config`. The same embedded upstream as `fallacy demo`, one HTTP proxy in front of it,
//! and a built-in client that keeps a steady load through it, with a timeout and retries, so
//! that a scenario's faults show in every figure of the report.
//!
//! ```text
//! client (rate/s, 100 ms timeout, 2 jittered retries) ──▶ proxy "api" (http) ──▶ upstream
//!   labels: from "client", to "backend"                     answers 2 KiB at once
//! ```
//!
//! The client opens a connection per attempt, so byte-stream toxics added mid-run (bandwidth,
//! corrupt, profile) reach every request, not only the connections opened after them. Each
//! logical request carries an `Idempotency-Key` its retries repeat, so fallacy counts every
//! retry, even after a failure it could not see (a client giving up mid-body).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::Server;
use crate::demo::{Attempt, backoff, start_embedded, try_once, upstream};

/// The lab proxy's name: the examples in `config/scenarios/` act on it.
pub const PROXY: &str = "api";
/// The size of each answer.
pub const BODY_BYTES: usize = 2048;

/// Starts the upstream and fallacy with the lab proxy.
pub async fn start(seed: u64, stop: CancellationToken) -> anyhow::Result<Server> {
    let body = Bytes::from(vec![b'x'; BODY_BYTES]);
    let upstream = upstream(stop.clone(), body).await?;
    let text = format!(
        r#"
[server]
seed = {seed}

[[proxy]]
name = "{PROXY}"
listen = "127.0.0.1:0"
upstream = "{upstream}"
protocol = "http"
abandon_grace = "5s"
labels = {{ from = "client", to = "backend" }}
price_per_gb = 0.09
"#
    );
    start_embedded(&text, stop).await
}

/// The built-in client's shape.
#[derive(Debug, Clone)]
pub struct Load {
    /// Logical requests started per second (an open loop: slow answers do not slow it).
    pub rate: u32,
    /// Per attempt.
    pub timeout: Duration,
    /// Retries after a failure or a timeout.
    pub retries: u32,
    /// Seeds the jitter.
    pub seed: u64,
}

impl Default for Load {
    fn default() -> Self {
        Load {
            rate: 100,
            timeout: Duration::from_millis(100),
            retries: 2,
            seed: 42,
        }
    }
}

/// What the built-in client did.
#[derive(Debug, Default)]
pub struct Counts {
    logical: AtomicU64,
    attempts: AtomicU64,
    succeeded: AtomicU64,
    timeouts: AtomicU64,
    failed: AtomicU64,
    skipped: AtomicU64,
}

impl Counts {
    /// As the report shows them.
    pub fn to_json(&self, load: &Load) -> Value {
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        json!({
            "rate_per_s": load.rate,
            "timeout_ms": load.timeout.as_millis() as u64,
            "retries": load.retries,
            "logical_requests": n(&self.logical),
            "attempts": n(&self.attempts),
            "succeeded": n(&self.succeeded),
            "attempts_timed_out": n(&self.timeouts),
            "attempts_failed": n(&self.failed),
            "skipped_at_capacity": n(&self.skipped),
        })
    }
}

/// The most logical requests in flight; past it, ticks are skipped (and counted) rather than
/// letting a black hole pile up tasks without bound.
const MAX_IN_FLIGHT: usize = 2000;

/// Sends `load.rate` logical requests per second to `addr` until `stop`, then waits for those
/// in flight (each is bounded by its timeouts).
pub async fn drive(
    addr: std::net::SocketAddr,
    load: Load,
    stop: CancellationToken,
    counts: Arc<Counts>,
) {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build(connector);
    let mut tick = tokio::time::interval(Duration::from_secs(1) / load.rate.max(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut in_flight = tokio::task::JoinSet::new();
    let mut i: u64 = 0;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        while in_flight.try_join_next().is_some() {}
        if in_flight.len() >= MAX_IN_FLIGHT {
            counts.skipped.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        i += 1;
        // A path per logical request: its attempts share a fingerprint, and no other.
        let Ok(uri) = format!("http://{addr}/item/{i}").parse::<hyper::Uri>() else {
            break;
        };
        let (client, counts, load) = (client.clone(), counts.clone(), load.clone());
        in_flight.spawn(async move {
            let mut rng = SmallRng::seed_from_u64(load.seed ^ i);
            let key = format!("lab-{i}");
            counts.logical.fetch_add(1, Ordering::Relaxed);
            for attempt in 0..=load.retries {
                if attempt > 0 {
                    backoff(attempt, &mut rng).await;
                }
                counts.attempts.fetch_add(1, Ordering::Relaxed);
                let slot = match try_once(&client, &uri, Some(&key), load.timeout).await {
                    Attempt::Ok => {
                        counts.succeeded.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    Attempt::Failed => &counts.failed,
                    Attempt::TimedOut => &counts.timeouts,
                };
                slot.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    while in_flight.join_next().await.is_some() {}
}
