//! Metric names, their help texts, and the few helpers the data path calls.
//!
//! Labels are bounded: `proxy`, `direction`, `toxic`, `outcome` and friends, never a connection
//! id or a client address. The data path takes counter handles once per connection and only
//! does atomic adds per chunk.

use metrics::{Counter, Gauge, counter, describe_counter, describe_gauge, gauge};

use crate::toxic::Direction;

/// Connections accepted, per proxy.
pub const CONNECTIONS_TOTAL: &str = "fallacy_connections_total";
/// Connections open now, per proxy.
pub const CONNECTIONS_ACTIVE: &str = "fallacy_connections_active";
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

/// Registers the help text of every metric. Call once after installing a recorder.
pub fn describe() {
    describe_counter!(
        CONNECTIONS_TOTAL,
        "Client connections accepted by the proxy."
    );
    describe_gauge!(CONNECTIONS_ACTIVE, "Client connections currently open.");
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
}

/// A proxy's metric handles, resolved once when the proxy is created so that a new connection
/// costs a few atomic operations instead of registry look-ups.
#[derive(Debug, Clone)]
pub(crate) struct ProxyMetrics {
    connections: Counter,
    active: Gauge,
    bytes_upstream: Counter,
    bytes_downstream: Counter,
    connect_errors: Counter,
    /// HTTP proxies only: a TCP proxy shows no request series rather than a zero forever.
    requests: Option<Counter>,
}

impl ProxyMetrics {
    pub(crate) fn new(proxy: &str, http: bool) -> ProxyMetrics {
        let p = || proxy.to_owned();
        ProxyMetrics {
            connections: counter!(CONNECTIONS_TOTAL, "proxy" => p()),
            active: gauge!(CONNECTIONS_ACTIVE, "proxy" => p()),
            bytes_upstream: counter!(BYTES_TOTAL, "proxy" => p(), "direction" => "upstream"),
            bytes_downstream: counter!(BYTES_TOTAL, "proxy" => p(), "direction" => "downstream"),
            connect_errors: counter!(UPSTREAM_CONNECT_ERRORS_TOTAL, "proxy" => p()),
            requests: http.then(|| counter!(REQUESTS_TOTAL, "proxy" => p())),
        }
    }

    /// The live byte counter of one direction.
    pub(crate) fn bytes(&self, direction: Direction) -> Counter {
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

pub(crate) fn toxic_applied(proxy: &str, toxic: &str) {
    counter!(TOXIC_APPLIED_TOTAL, "proxy" => proxy.to_owned(), "toxic" => toxic.to_owned())
        .increment(1);
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
