//! Metric names, their help texts, and the few helpers the data path calls.
//!
//! Labels are bounded: `proxy`, `direction`, `toxic`, `outcome` and friends, never a connection
//! id or a client address. The data path takes counter handles once per connection and only
//! does atomic adds per chunk.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use metrics::{
    Counter, Gauge, Histogram, counter, describe_counter, describe_gauge, describe_histogram,
    gauge, histogram,
};

use crate::limits::Refusal;
use crate::measure::{Cause, Outcome, abandon_labels};
use crate::toxic::Direction;

/// Connections accepted, per proxy.
pub const CONNECTIONS_TOTAL: &str = "fallacy_connections_total";
/// Connections open now, per proxy.
pub const CONNECTIONS_ACTIVE: &str = "fallacy_connections_active";
/// Connections reset at accept by a connection limit, per proxy and limit.
pub const CONNECTIONS_REFUSED_TOTAL: &str = "fallacy_connections_refused_total";
/// Bytes read from the sender, per proxy and direction, counted as they flow.
pub const BYTES_TOTAL: &str = "fallacy_bytes_total";
/// Times a toxic was drawn to apply to a connection and direction.
pub const TOXIC_APPLIED_TOTAL: &str = "fallacy_toxic_applied_total";
/// HTTP requests received, per proxy.
pub const REQUESTS_TOTAL: &str = "fallacy_requests_total";
/// Upstream connects that failed or timed out.
pub const UPSTREAM_CONNECT_ERRORS_TOTAL: &str = "fallacy_upstream_connect_errors_total";
/// Admin API requests, by outcome (the HTTP status class).
pub const ADMIN_REQUESTS_TOTAL: &str = "fallacy_admin_requests_total";
/// Upstream response times, to the head, without fallacy's delay.
pub const UPSTREAM_RESPONSE_SECONDS: &str = "fallacy_upstream_response_seconds";
/// Times from a request's head to its response head, as the client saw them.
pub const CLIENT_OBSERVED_SECONDS: &str = "fallacy_client_observed_seconds";
/// Delays fallacy added to requests.
pub const INJECTED_DELAY_SECONDS: &str = "fallacy_injected_delay_seconds";
/// Requests the client gave up on before the response head, by outcome and cause.
pub const CLIENT_ABANDONED_TOTAL: &str = "fallacy_client_abandoned_total";
/// Abandoned requests the upstream answered successfully.
pub const TIMEOUT_FALSE_POSITIVE_TOTAL: &str = "fallacy_timeout_false_positive_total";
/// Requests that repeated an earlier attempt.
pub const RETRIES_TOTAL: &str = "fallacy_retries_total";
/// Attempts per logical request.
pub const REQUEST_ATTEMPTS: &str = "fallacy_request_attempts";
/// Attempts per logical request over the last minute.
pub const RETRY_AMPLIFICATION: &str = "fallacy_retry_amplification";

/// Tokio tasks alive in the process, sampled every 5 s: a leak shows as growth at rest.
pub const TASKS_ALIVE: &str = "fallacy_tasks_alive";

/// 1 for the phase a running scenario is in, 0 for the phases it has left.
pub const SCENARIO_PHASE: &str = "fallacy_scenario_phase";

/// Money spent moving bytes, at the proxy's `price_per_gb`.
pub const TRANSPORT_COST_TOTAL: &str = "fallacy_transport_cost_total";

/// Buckets of the `_seconds` histograms: 1 ms to 60 s, dense where timeouts usually sit.
pub const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0,
    3.0, 5.0, 10.0, 30.0, 60.0,
];
/// Buckets of `request_attempts`.
pub const ATTEMPTS_BUCKETS: &[f64] = &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 16.0];

/// The Prometheus exporter as fallacy configures it: real histograms (not summaries) with
/// [`SECONDS_BUCKETS`] and [`ATTEMPTS_BUCKETS`].
pub fn prometheus_builder() -> metrics_exporter_prometheus::PrometheusBuilder {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
        .and_then(|b| {
            b.set_buckets_for_metric(Matcher::Full(REQUEST_ATTEMPTS.into()), ATTEMPTS_BUCKETS)
        })
        .expect("the bucket lists are constant and not empty")
}

/// Registers the help text of every metric. Call once after installing a recorder.
pub fn describe() {
    describe_counter!(
        CONNECTIONS_TOTAL,
        "Client connections accepted by the proxy."
    );
    describe_gauge!(CONNECTIONS_ACTIVE, "Client connections currently open.");
    describe_gauge!(
        TASKS_ALIVE,
        "Tokio tasks alive in the process (connections, listeners, followed requests, timers), \
         sampled every 5 s."
    );
    describe_counter!(
        CONNECTIONS_REFUSED_TOTAL,
        "Client connections reset at accept because a limit was reached: reason=proxy_limit \
         (the proxy's max_connections) or server_limit ([server] max_connections)."
    );
    describe_counter!(
        BYTES_TOTAL,
        "Bytes received from the sending side, live (updated per chunk, not at close). \
         direction=upstream is client to server, downstream is server to client."
    );
    describe_counter!(
        TOXIC_APPLIED_TOTAL,
        "Connection directions (TCP) or requests (HTTP) a toxic acted on, after the toxicity \
         draw and the match."
    );
    describe_counter!(
        REQUESTS_TOTAL,
        "HTTP requests received by HTTP proxies (each request of a keep-alive connection)."
    );
    describe_counter!(
        UPSTREAM_CONNECT_ERRORS_TOTAL,
        "Upstream connects that were refused, unresolvable or timed out; the client was closed."
    );
    describe_counter!(
        ADMIN_REQUESTS_TOTAL,
        "Admin API requests, by outcome (2xx, 4xx, 5xx)."
    );
    describe_histogram!(
        INJECTED_DELAY_SECONDS,
        metrics::Unit::Seconds,
        "Delay fallacy added to a request: HTTP, the delay planned before the response head; \
         TCP, the time toxics held the request and the first byte of its answer (from 0.1 ms)."
    );
    describe_counter!(
        CLIENT_ABANDONED_TOTAL,
        "Requests the client gave up on (closed, reset, or reset its HTTP/2 stream) before the \
         response head. outcome: what the upstream then did within abandon_grace \
         (upstream_ok = a false timeout). cause=injected: the upstream alone would have \
         answered before the client gave up, so fallacy's fault made it give up."
    );
    describe_counter!(
        TIMEOUT_FALSE_POSITIVE_TOTAL,
        "Abandoned requests that the upstream answered successfully: timeouts that were wrong."
    );
    describe_counter!(
        RETRIES_TOTAL,
        "Requests that were retries: an idempotency key seen within retry_window, or the same \
         fingerprint after a failure that no success has followed."
    );
    describe_histogram!(
        REQUEST_ATTEMPTS,
        metrics::Unit::Count,
        "Attempts per logical request, counted when it closes (a success, or retry_window \
         without another attempt)."
    );
    describe_gauge!(
        SCENARIO_PHASE,
        "1 while a running scenario is in this phase, 0 once it has left it: join or annotate \
         the other series with it to read them per phase."
    );
    describe_gauge!(
        RETRY_AMPLIFICATION,
        "Attempts per logical request over the last 60 s (1 without traffic)."
    );
}

/// A live byte counter: the Prometheus series, and a total fallacy reads back for `/stats` and
/// the transport cost (the exporter's counters cannot be read).
#[derive(Debug, Clone)]
pub struct ByteCount {
    counter: Counter,
    total: Arc<AtomicU64>,
}

impl ByteCount {
    /// Counts bytes that passed.
    pub fn increment(&self, n: u64) {
        self.counter.increment(n);
        self.total.fetch_add(n, Ordering::Relaxed);
    }
}

/// A proxy's metric handles, resolved once when the proxy is created so that a new connection
/// costs a few atomic operations instead of registry look-ups.
#[derive(Debug, Clone)]
pub(crate) struct ProxyMetrics {
    connections: Counter,
    active: Gauge,
    /// By [`crate::limits::Refusal`]: the proxy's limit, then the server's.
    refused: [Counter; 2],
    bytes_upstream: ByteCount,
    bytes_downstream: ByteCount,
    connect_errors: Counter,
    /// HTTP proxies only: a TCP proxy shows no request series rather than a zero forever.
    requests: Option<Counter>,
    /// What clients did (boxed: the connection path only needs the fields above).
    measure: Box<MeasureMetrics>,
}

/// The handles of what clients did.
#[derive(Debug, Clone)]
struct MeasureMetrics {
    injected_delay: Histogram,
    /// By `measure::abandon_labels` order.
    abandoned: Vec<Counter>,
    false_positives: Counter,
    retries: Counter,
    attempts: Histogram,
    amplification: Gauge,
}

impl ProxyMetrics {
    pub(crate) fn new(proxy: &str, http: bool) -> ProxyMetrics {
        let p = || proxy.to_owned();
        ProxyMetrics {
            connections: counter!(CONNECTIONS_TOTAL, "proxy" => p()),
            active: gauge!(CONNECTIONS_ACTIVE, "proxy" => p()),
            refused: [Refusal::Proxy, Refusal::Total].map(|why| {
                let c =
                    counter!(CONNECTIONS_REFUSED_TOTAL, "proxy" => p(), "reason" => why.as_str());
                // Present from the start: an alert on its rate needs a series to read.
                c.increment(0);
                c
            }),
            bytes_upstream: ByteCount {
                counter: counter!(BYTES_TOTAL, "proxy" => p(), "direction" => "upstream"),
                total: Arc::default(),
            },
            bytes_downstream: ByteCount {
                counter: counter!(BYTES_TOTAL, "proxy" => p(), "direction" => "downstream"),
                total: Arc::default(),
            },
            connect_errors: counter!(UPSTREAM_CONNECT_ERRORS_TOTAL, "proxy" => p()),
            requests: http.then(|| counter!(REQUESTS_TOTAL, "proxy" => p())),
            measure: {
                let m = MeasureMetrics {
                    injected_delay: histogram!(INJECTED_DELAY_SECONDS, "proxy" => p()),
                    abandoned: abandon_labels()
                        .map(|(o, c)| {
                            counter!(CLIENT_ABANDONED_TOTAL, "proxy" => p(),
                                "outcome" => o.as_str(), "cause" => c.as_str())
                        })
                        .collect(),
                    false_positives: counter!(TIMEOUT_FALSE_POSITIVE_TOTAL, "proxy" => p()),
                    retries: counter!(RETRIES_TOTAL, "proxy" => p()),
                    attempts: histogram!(REQUEST_ATTEMPTS, "proxy" => p()),
                    amplification: gauge!(RETRY_AMPLIFICATION, "proxy" => p()),
                };
                // Present from the start, so a dashboard shows 0 rather than "no data".
                for c in m.abandoned.iter().chain([&m.false_positives, &m.retries]) {
                    c.increment(0);
                }
                m.amplification.set(1.0);
                Box::new(m)
            },
        }
    }

    pub(crate) fn refused(&self, why: Refusal) {
        self.refused[why as usize].increment(1);
    }

    pub(crate) fn injected_delay(&self, d: Duration) {
        {
            let m = &self.measure;
            m.injected_delay.record(d.as_secs_f64());
        }
    }

    pub(crate) fn abandoned(&self, outcome: Outcome, cause: Cause) {
        {
            let m = &self.measure;
            let i = abandon_labels()
                .position(|l| l == (outcome, cause))
                .unwrap_or_default();
            m.abandoned[i].increment(1);
            if outcome == Outcome::UpstreamOk {
                m.false_positives.increment(1);
            }
        }
    }

    pub(crate) fn retry(&self) {
        {
            let m = &self.measure;
            m.retries.increment(1);
        }
    }

    pub(crate) fn attempts(&self, attempts: u32) {
        {
            let m = &self.measure;
            m.attempts.record(f64::from(attempts));
        }
    }

    pub(crate) fn amplification(&self, factor: f64) {
        {
            let m = &self.measure;
            m.amplification.set(factor);
        }
    }

    /// Bytes moved so far: (upstream, downstream).
    pub fn bytes_moved(&self) -> (u64, u64) {
        (
            self.bytes_upstream.total.load(Ordering::Relaxed),
            self.bytes_downstream.total.load(Ordering::Relaxed),
        )
    }

    /// The live byte counter of one direction.
    pub(crate) fn bytes(&self, direction: Direction) -> ByteCount {
        match direction {
            Direction::Upstream => self.bytes_upstream.clone(),
            Direction::Downstream => self.bytes_downstream.clone(),
        }
    }

    pub(crate) fn request(&self) {
        if let Some(requests) = &self.requests {
            requests.increment(1);
        }
    }

    pub(crate) fn upstream_connect_error(&self) {
        self.connect_errors.increment(1);
    }
}

/// Appends what fallacy keeps itself rather than in the exporter: the latency histograms
/// (from the fine histograms behind `/stats`: the data path then pays one atomic add per
/// sample, and nothing accumulates between scrapes) and `fallacy_transport_cost_total` (a
/// counter of money; the exporter's counters are integers).
pub(crate) fn render_own(text: &mut String, links: &[Arc<crate::proxy::Link>]) {
    use std::fmt::Write;
    if links.is_empty() {
        return;
    }
    let label = |link: &crate::proxy::Link| {
        let name = link
            .name()
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n");
        format!("proxy=\"{name}\"")
    };
    type Pick = fn(&crate::measure::ProxyStats) -> &crate::measure::histogram::LogHistogram;
    let histograms: [(&str, &str, Pick); 2] = [
        (
            UPSTREAM_RESPONSE_SECONDS,
            "Time from forwarding a request to the upstream's answer (HTTP: the response head; \
             TCP: the first byte back), without fallacy's delays.",
            |s| &s.upstream_all,
        ),
        (
            CLIENT_OBSERVED_SECONDS,
            "Time from a request to the answer the client got (HTTP: the response head; TCP: \
             the first byte), fallacy's delays included.",
            |s| &s.observed,
        ),
    ];
    for (name, help, pick) in histograms {
        let _ = writeln!(text, "# HELP {name} {help}");
        let _ = writeln!(text, "# TYPE {name} histogram");
        for link in links {
            pick(link.stats()).snapshot().write_prometheus(
                text,
                name,
                &label(link),
                SECONDS_BUCKETS,
            );
        }
    }
    let _ = writeln!(
        text,
        "# HELP {TRANSPORT_COST_TOTAL} Cost of the bytes moved both ways at the proxy's \
         price_per_gb (per 10^9 bytes), in the price's currency."
    );
    let _ = writeln!(text, "# TYPE {TRANSPORT_COST_TOTAL} counter");
    for link in links {
        let cost = crate::measure::ProxyStats::transport_cost(link);
        let _ = writeln!(text, "{TRANSPORT_COST_TOTAL}{{{}}} {cost}", label(link));
    }
}

pub(crate) fn toxic_applied(proxy: &str, toxic: &str) {
    counter!(TOXIC_APPLIED_TOTAL, "proxy" => proxy.to_owned(), "toxic" => toxic.to_owned())
        .increment(1);
}

/// A scenario moved from phase `from` (if any) to `to` (if any).
pub(crate) fn scenario_phase(from: Option<&str>, to: Option<&str>) {
    if let Some(from) = from {
        gauge!(SCENARIO_PHASE, "phase" => from.to_owned()).set(0.0);
    }
    if let Some(to) = to {
        gauge!(SCENARIO_PHASE, "phase" => to.to_owned()).set(1.0);
    }
}

/// Samples [`TASKS_ALIVE`]: the runtime this is called on, plus the data threads'.
pub(crate) fn tasks_alive(dataplane: Option<&crate::proxy::dataplane::DataPlane>) {
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        let data = dataplane.map_or(0, |d| d.tasks_alive());
        gauge!(TASKS_ALIVE).set((rt.metrics().num_alive_tasks() + data) as f64);
    }
}

pub(crate) fn admin_request(outcome: &'static str) {
    counter!(ADMIN_REQUESTS_TOTAL, "outcome" => outcome).increment(1);
}

/// Counts a connection in on creation and out on drop, whatever way the task ends.
pub(crate) struct ConnectionGuard {
    active: Gauge,
}

impl ConnectionGuard {
    pub(crate) fn open(metrics: &ProxyMetrics) -> ConnectionGuard {
        metrics.connections.increment(1);
        metrics.active.increment(1.0);
        ConnectionGuard {
            active: metrics.active.clone(),
        }
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.active.decrement(1.0);
    }
}
