//! What clients did about the faults: false timeouts, retries, and the timeout to advise.
//!
//! ```text
//! http::Conn::serve ── Exchange::new (start, planned injected delay, fingerprint parts)
//!        │   the upstream leg (delay before the request + forward) lives in the Exchange
//!        ├─ head sent ─────────────▶ Exchange::answered: latency, retry bookkeeping
//!        ├─ injected reset ────────▶ Exchange::reset
//!        └─ dropped by hyper (the client closed, reset, or reset its h2 stream)
//!                 └─ Drop: abandoned; the leg goes on in a task for up to abandon_grace
//!                    to learn the outcome: upstream_ok (a false timeout), _error, _pending
//! ```
//!
//! Figures live twice on purpose: as Prometheus metrics (coarse buckets, for dashboards) and
//! in [`ProxyStats`] (fine histograms and counts, for `/stats` and `/timeout-advice`).

pub mod advice;
pub mod histogram;
pub mod retry;
mod tcp;

pub use tcp::TcpTrack;

use std::future::Future;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::HeaderName;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::proxy::Link;
use histogram::LogHistogram;
use retry::{Fingerprint, RetryTracker};

/// How long the upstream leg of an abandoned request is kept to learn its outcome.
pub const DEFAULT_ABANDON_GRACE: Duration = Duration::from_secs(30);
/// How far back a failure or an idempotency key makes a request a retry.
pub const DEFAULT_RETRY_WINDOW: Duration = Duration::from_secs(10);
/// The longest `abandon_grace`: every abandoned request holds an upstream connection that long.
pub const MAX_ABANDON_GRACE: Duration = Duration::from_secs(600);
/// The longest `retry_window`.
pub const MAX_RETRY_WINDOW: Duration = Duration::from_secs(3600);
/// Headers that carry an idempotency key unless configured.
pub const DEFAULT_IDEMPOTENCY_HEADERS: [&str; 2] = ["idempotency-key", "x-request-id"];
/// At most this many idempotency headers.
const MAX_IDEMPOTENCY_HEADERS: usize = 16;
/// The highest `price_per_gb` accepted: far above any real tariff, far from overflow.
pub const MAX_PRICE_PER_GB: f64 = 1e6;
/// The most abandoned requests a proxy follows at once (each holds an upstream connection and a
/// task for up to abandon_grace). Past it, a new abandonment is counted at once as pending
/// rather than followed, so a timeout storm cannot pile up connections for the whole grace.
pub const MAX_FOLLOWED: usize = 1024;
/// The highest connection limit accepted: beyond any file-descriptor limit Linux allows.
pub const MAX_CONNECTIONS_LIMIT: u64 = 100_000_000;
/// Bytes of a request body that go into its fingerprint.
pub const BODY_HASH_LIMIT: usize = 64 * 1024;

/// A proxy's measurement settings.
#[derive(Debug, Clone, PartialEq)]
pub struct MeasureSettings {
    /// See [`DEFAULT_ABANDON_GRACE`].
    pub abandon_grace: Duration,
    /// See [`DEFAULT_RETRY_WINDOW`].
    pub retry_window: Duration,
    /// Headers whose value identifies a logical request, in order of preference.
    pub idempotency_headers: Vec<HeaderName>,
    /// What a gigabyte (10^9 bytes, both directions) costs, for `transport_cost_total`.
    pub price_per_gb: f64,
    /// The most connections the proxy holds at once; 0 is no limit of its own. Kept with the
    /// measurement settings because it shares their path: API, config, reload, read per accept.
    pub max_connections: u64,
}

impl Default for MeasureSettings {
    fn default() -> Self {
        MeasureSettings {
            abandon_grace: DEFAULT_ABANDON_GRACE,
            retry_window: DEFAULT_RETRY_WINDOW,
            idempotency_headers: DEFAULT_IDEMPOTENCY_HEADERS
                .iter()
                .map(|h| HeaderName::from_static(h))
                .collect(),
            price_per_gb: 0.0,
            max_connections: 0,
        }
    }
}

/// Changes to [`MeasureSettings`]; `None` keeps the current value.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MeasurePatch {
    /// New `abandon_grace`.
    pub abandon_grace: Option<Duration>,
    /// New `retry_window`.
    pub retry_window: Option<Duration>,
    /// New idempotency headers.
    pub idempotency_headers: Option<Vec<HeaderName>>,
    /// New price per GB.
    pub price_per_gb: Option<f64>,
    /// New connection limit (0: none).
    pub max_connections: Option<u64>,
}

impl MeasurePatch {
    /// The keys this reads, as the API, populate files and TOML spell them.
    pub const KEYS: [&'static str; 5] = [
        "abandon_grace",
        "retry_window",
        "idempotency_headers",
        "price_per_gb",
        "max_connections",
    ];

    /// Sets one key from its JSON value (TOML values are converted first). Durations are a
    /// string with a unit or an integer of milliseconds. The error says what is wrong.
    pub fn set(&mut self, key: &str, value: &Value) -> Result<(), String> {
        match key {
            "abandon_grace" => {
                self.abandon_grace = Some(duration(value, MAX_ABANDON_GRACE)?);
            }
            "retry_window" => {
                let window = duration(value, MAX_RETRY_WINDOW)?;
                if window.is_zero() {
                    return Err("must be more than 0 (a zero window sees no retries)".into());
                }
                self.retry_window = Some(window);
            }
            "idempotency_headers" => {
                let Value::Array(list) = value else {
                    return Err(
                        "must be an array of header names, e.g. [\"idempotency-key\"]".into(),
                    );
                };
                if list.len() > MAX_IDEMPOTENCY_HEADERS {
                    return Err(format!("at most {MAX_IDEMPOTENCY_HEADERS} headers"));
                }
                let names = list
                    .iter()
                    .map(|v| match v {
                        Value::String(s) => HeaderName::from_bytes(s.as_bytes())
                            .map_err(|_| format!("{s:?} is not a valid header name")),
                        other => Err(format!("{other} is not a header name (a string)")),
                    })
                    .collect::<Result<_, _>>()?;
                self.idempotency_headers = Some(names);
            }
            "price_per_gb" => match value.as_f64() {
                Some(p) if p.is_finite() && (0.0..=MAX_PRICE_PER_GB).contains(&p) => {
                    self.price_per_gb = Some(p);
                }
                Some(p) => {
                    return Err(format!("{p} is out of range: 0 to {MAX_PRICE_PER_GB}"));
                }
                None => return Err(format!("{value} is not a number (a price per 10^9 bytes)")),
            },
            "max_connections" => match value.as_u64() {
                Some(n) if n <= MAX_CONNECTIONS_LIMIT => self.max_connections = Some(n),
                Some(n) => {
                    return Err(format!(
                        "{n} is out of range: 0 (no limit) to {MAX_CONNECTIONS_LIMIT}"
                    ));
                }
                None => {
                    return Err(format!(
                        "{value} is not a connection count (an integer, 0 for no limit)"
                    ));
                }
            },
            other => return Err(format!("unknown measurement key {other:?}")),
        }
        Ok(())
    }

    /// Reads every key of [`MeasurePatch::KEYS`] present in `map`; errors name the key.
    pub fn from_map(
        map: &serde_json::Map<String, Value>,
    ) -> Result<MeasurePatch, (String, String)> {
        let mut patch = MeasurePatch::default();
        for key in Self::KEYS {
            match map.get(key) {
                None | Some(Value::Null) => {}
                Some(v) => patch.set(key, v).map_err(|m| (key.to_owned(), m))?,
            }
        }
        Ok(patch)
    }

    /// The settings with this patch applied.
    pub fn apply(&self, to: &MeasureSettings) -> MeasureSettings {
        MeasureSettings {
            abandon_grace: self.abandon_grace.unwrap_or(to.abandon_grace),
            retry_window: self.retry_window.unwrap_or(to.retry_window),
            idempotency_headers: self
                .idempotency_headers
                .clone()
                .unwrap_or_else(|| to.idempotency_headers.clone()),
            price_per_gb: self.price_per_gb.unwrap_or(to.price_per_gb),
            max_connections: self.max_connections.unwrap_or(to.max_connections),
        }
    }
}

fn duration(value: &Value, max: Duration) -> Result<Duration, String> {
    let d = crate::units::duration_value(value)?;
    if d > max {
        return Err(format!(
            "{} is too long: at most {}",
            crate::units::format_duration(d),
            crate::units::format_duration(max)
        ));
    }
    Ok(d)
}

/// What the upstream did with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It answered, and not with a 5xx or 429: a client that gave up was wrong to.
    UpstreamOk,
    /// It failed: 5xx, 429, a reset or no connection. Or a fault answered in its place.
    UpstreamError,
    /// It had not answered within `abandon_grace`.
    UpstreamPending,
}

impl Outcome {
    /// The `outcome` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::UpstreamOk => "upstream_ok",
            Outcome::UpstreamError => "upstream_error",
            Outcome::UpstreamPending => "upstream_pending",
        }
    }
    const ALL: [Outcome; 3] = [
        Outcome::UpstreamOk,
        Outcome::UpstreamError,
        Outcome::UpstreamPending,
    ];
}

/// What made an abandoned request slow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// The upstream alone would have answered before the client gave up: fallacy's delay (or
    /// answer) made it give up.
    Injected,
    /// The upstream was slow (or failed) by itself.
    Upstream,
}

impl Cause {
    /// The `cause` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::Injected => "injected",
            Cause::Upstream => "upstream",
        }
    }
    const ALL: [Cause; 2] = [Cause::Injected, Cause::Upstream];
}

/// Every (outcome, cause) pair, for metrics and `/stats`.
pub fn abandon_labels() -> impl Iterator<Item = (Outcome, Cause)> {
    Outcome::ALL
        .into_iter()
        .flat_map(|o| Cause::ALL.into_iter().map(move |c| (o, c)))
}

fn slot(outcome: Outcome, cause: Cause) -> usize {
    outcome as usize * 2 + cause as usize
}

/// A proxy's live figures.
#[derive(Debug, Default)]
pub struct ProxyStats {
    /// Upstream response times (to the head) of requests it answered successfully, without
    /// the delay fallacy added.
    pub upstream: LogHistogram,
    /// What clients saw, or would have seen had they waited, for requests that succeeded:
    /// the upstream's time plus fallacy's delays.
    pub client: LogHistogram,
    /// Every upstream answer's time, failures included: `fallacy_upstream_response_seconds`.
    pub upstream_all: LogHistogram,
    /// What clients saw of every answered request: `fallacy_client_observed_seconds`.
    pub observed: LogHistogram,
    abandoned: [AtomicU64; 6],
    requests: AtomicU64,
    answered: AtomicU64,
    failed: AtomicU64,
    retries: AtomicU64,
    retry: Mutex<RetryTracker>,
    /// Transport cost so far, and the byte total it was last brought up to.
    cost: Mutex<(f64, u64)>,
    /// Abandoned requests whose upstream leg is being followed now (see [`MAX_FOLLOWED`]).
    followed: std::sync::atomic::AtomicUsize,
}

/// A copy of [`ProxyStats`]' counters.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counts {
    /// Requests received.
    pub requests: u64,
    /// Requests whose response head was sent.
    pub answered: u64,
    /// Requests that failed (5xx, 429, reset, abandoned).
    pub failed: u64,
    /// Abandoned requests per (outcome, cause).
    pub abandoned: Vec<(Outcome, Cause, u64)>,
    /// Abandoned requests the upstream answered successfully.
    pub false_timeouts: u64,
    /// Requests that were retries.
    pub retries: u64,
    /// Attempts and logical requests in the amplification window.
    pub window_attempts: u64,
    /// See `window_attempts`.
    pub window_logical: u64,
    /// Attempts per logical request in that window.
    pub amplification: f64,
}

impl ProxyStats {
    /// A copy of the counters now.
    pub fn counts(&self, now: Instant) -> Counts {
        let abandoned: Vec<_> = abandon_labels()
            .map(|(o, c)| (o, c, self.abandoned[slot(o, c)].load(Ordering::Relaxed)))
            .collect();
        let false_timeouts = abandoned
            .iter()
            .filter(|(o, _, _)| *o == Outcome::UpstreamOk)
            .map(|(_, _, n)| n)
            .sum();
        let tracker = self.retry.lock().unwrap_or_else(|e| e.into_inner());
        let (window_attempts, window_logical) = tracker.window_counts(now);
        Counts {
            requests: self.requests.load(Ordering::Relaxed),
            answered: self.answered.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            abandoned,
            false_timeouts,
            retries: self.retries.load(Ordering::Relaxed),
            window_attempts,
            window_logical,
            amplification: tracker.amplification(now),
        }
    }

    /// Adds the cost of the bytes moved since the last call at the price set now, and returns
    /// the total. Called on every scrape and read, and before the price changes, so each byte
    /// is priced once, at about the price in force when it moved.
    pub fn transport_cost(link: &Link) -> f64 {
        let (up, down) = link.metrics().bytes_moved();
        let price = link.measure().price_per_gb;
        let mut cost = link.stats().cost.lock().unwrap_or_else(|e| e.into_inner());
        let moved = (up + down).saturating_sub(cost.1);
        cost.0 += moved as f64 / 1e9 * price;
        cost.1 = up + down;
        cost.0
    }

    /// Closes the logical requests whose window has passed (so the attempts histogram does not
    /// wait for traffic), and publishes the amplification. Called on every scrape and read.
    pub fn refresh(link: &Link) -> Counts {
        let now = Instant::now();
        let window = link.measure().retry_window;
        let stats = link.stats();
        let closed = stats
            .retry
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .expire(now, window);
        for attempts in closed {
            link.metrics().attempts(attempts);
        }
        let counts = stats.counts(now);
        link.metrics().amplification(counts.amplification);
        counts
    }
}

/// Milliseconds to the microsecond, as the JSON answers show them (the histograms hold
/// microseconds; more digits would be float noise).
pub fn millis(d: Duration) -> f64 {
    d.as_micros() as f64 / 1000.0
}

/// `GET /proxies/{p}/stats`: the live figures as JSON.
pub fn stats_json(link: &Link) -> Value {
    let counts = ProxyStats::refresh(link);
    let stats = link.stats();
    let quantiles = |h: &LogHistogram| {
        let s = h.snapshot();
        let q = |q: f64| s.quantile(q).map(millis);
        json!({
            "samples": s.total(),
            "p50_ms": q(0.5), "p90_ms": q(0.9), "p99_ms": q(0.99), "p999_ms": q(0.999),
        })
    };
    let mut abandoned = serde_json::Map::new();
    for (o, c, n) in &counts.abandoned {
        let entry = abandoned.entry(o.as_str()).or_insert_with(|| json!({}));
        entry[c.as_str()] = json!(n);
    }
    let abandoned_total: u64 = counts.abandoned.iter().map(|(_, _, n)| n).sum();
    let succeeded = stats.client.count();
    let measure = link.measure();
    let (up, down) = link.metrics().bytes_moved();
    json!({
        "proxy": link.name(),
        "protocol": link.protocol().as_str(),
        "connections_total": link.connections_total(),
        "bytes": {"upstream": up, "downstream": down},
        "transport_cost": ProxyStats::transport_cost(link),
        "requests": {
            "total": counts.requests,
            "answered": counts.answered,
            "failed": counts.failed,
            "abandoned": abandoned_total,
        },
        "latency": {
            "upstream": quantiles(&stats.upstream),
            "client_observed": quantiles(&stats.client),
        },
        "abandoned": abandoned,
        "timeout_false_positives": counts.false_timeouts,
        // Of the requests that succeeded upstream, the share whose client gave up first.
        "false_timeout_rate": (succeeded > 0).then(|| counts.false_timeouts as f64 / succeeded as f64),
        "retries": {
            "total": counts.retries,
            "window_seconds": retry::AMPLIFICATION_WINDOW_SECS,
            "attempts_in_window": counts.window_attempts,
            "logical_requests_in_window": counts.window_logical,
            "amplification": counts.amplification,
        },
        "settings": {
            "abandon_grace": crate::units::format_duration(measure.abandon_grace),
            "retry_window": crate::units::format_duration(measure.retry_window),
            "idempotency_headers": measure.idempotency_headers.iter().map(|h| h.as_str()).collect::<Vec<_>>(),
            "price_per_gb": measure.price_per_gb,
        },
    })
}

/// `GET /proxies/{p}/timeout-advice`: from what clients saw (fallacy's delays included), and
/// from the upstream alone for comparison.
pub fn advice_json(link: &Link, rate: f64) -> Result<Value, advice::NoAdvice> {
    let stats = link.stats();
    let a = advice::advise(&stats.client.snapshot(), rate)?;
    let ms = millis;
    let upstream_only = advice::advise(&stats.upstream.snapshot(), rate)
        .ok()
        .map(|u| {
            json!({
                "timeout_ms": ms(u.timeout),
                "timeout_ms_at_confidence": ms(u.timeout_at_confidence),
                "samples": u.samples,
            })
        });
    Ok(json!({
        "proxy": link.name(),
        "false_timeout_rate": rate,
        "timeout_ms": ms(a.timeout),
        "samples": a.samples,
        "confidence": advice::CONFIDENCE,
        "timeout_ms_at_confidence": ms(a.timeout_at_confidence),
        "upstream_only": upstream_only,
    }))
}

/// The upstream leg's result.
#[derive(Debug, Clone, Copy)]
pub struct UpstreamResult {
    /// From sending the request to receiving the response head (or failing).
    pub elapsed: Duration,
    /// Answered without a 5xx or 429.
    pub ok: bool,
}

/// The upstream leg of a request: the delay before it, then the forward. Boxed so that an
/// abandoned request can hand it to a task of its own.
pub type Leg<T> = Pin<Box<dyn Future<Output = (T, UpstreamResult)> + Send>>;

/// One request, from its head to its answer or abandonment. Dropping it unanswered counts an
/// abandonment.
pub struct Exchange<T: Send + 'static> {
    link: Arc<Link>,
    start: Instant,
    /// fallacy's planned delay before the response head.
    injected: Duration,
    fingerprint: Fingerprint,
    /// The body's hash, when the fingerprint hashes a body that is still being read.
    body: Option<Arc<BodyHashCell>>,
    leg: Option<Leg<T>>,
    upstream: Option<UpstreamResult>,
    /// A fault answered (or will answer) instead of the upstream.
    injected_answer: bool,
    done: bool,
}

/// What a request looks like to the fingerprint.
pub struct RequestId<'a> {
    /// Client address.
    pub peer: IpAddr,
    /// The request head.
    pub parts: &'a http::request::Parts,
}

impl RequestId<'_> {
    /// The idempotency key if a configured header carries one, otherwise the hash of client,
    /// method, authority, path and query; [`with_body`] adds the body once it is read.
    pub fn fingerprint(&self, headers: &[HeaderName]) -> Fingerprint {
        for name in headers {
            if let Some(v) = self.parts.headers.get(name) {
                return Fingerprint::Key(format!(
                    "{name}: {}",
                    String::from_utf8_lossy(v.as_bytes())
                ));
            }
        }
        let mut h = DefaultHasher::new();
        self.peer.hash(&mut h);
        self.parts.method.as_str().hash(&mut h);
        let authority = self
            .parts
            .headers
            .get(http::header::HOST)
            .map(|v| v.as_bytes())
            .or_else(|| self.parts.uri.authority().map(|a| a.as_str().as_bytes()));
        authority.hash(&mut h);
        self.parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .hash(&mut h);
        Fingerprint::Hash(h.finish())
    }
}

/// A hash fingerprint with the body's hash mixed in; keys stay as they are.
pub fn with_body(fp: Fingerprint, body_hash: u64) -> Fingerprint {
    match fp {
        Fingerprint::Hash(base) if body_hash != 0 => {
            let mut h = DefaultHasher::new();
            (base, body_hash).hash(&mut h);
            Fingerprint::Hash(h.finish())
        }
        other => other,
    }
}

/// Hashes the first [`BODY_HASH_LIMIT`] bytes it is fed.
#[derive(Debug, Default)]
pub struct BodyHasher {
    hasher: DefaultHasher,
    fed: usize,
}

impl BodyHasher {
    /// Feeds bytes as they pass; beyond the limit they are ignored.
    pub fn feed(&mut self, bytes: &[u8]) {
        let take = bytes.len().min(BODY_HASH_LIMIT - self.fed);
        if take > 0 {
            self.hasher.write(&bytes[..take]);
            self.fed += take;
        }
    }

    /// The hash so far (0 for an empty body).
    pub fn value(&self) -> u64 {
        if self.fed == 0 {
            0
        } else {
            self.hasher.finish()
        }
    }

    /// Whether it has all the bytes it takes.
    pub fn full(&self) -> bool {
        self.fed == BODY_HASH_LIMIT
    }
}

/// A body hash published as the body streams by (read when the exchange ends).
#[derive(Debug, Default)]
pub struct BodyHashCell {
    hasher: Mutex<BodyHasher>,
    value: AtomicU64,
}

impl BodyHashCell {
    /// Feeds bytes read from the client's body.
    pub fn feed(&self, bytes: &[u8]) {
        let mut h = self.hasher.lock().unwrap_or_else(|e| e.into_inner());
        if !h.full() {
            h.feed(bytes);
            self.value.store(h.value(), Ordering::Relaxed);
        }
    }
}

impl<T: Send + 'static> Exchange<T> {
    /// Starts measuring a request that arrived at `start`, which fallacy will delay by
    /// `injected` before its response head.
    pub fn new(
        link: Arc<Link>,
        start: Instant,
        injected: Duration,
        fingerprint: Fingerprint,
    ) -> Self {
        link.stats().requests.fetch_add(1, Ordering::Relaxed);
        if !injected.is_zero() {
            link.metrics().injected_delay(injected);
        }
        Exchange {
            link,
            start,
            injected,
            fingerprint,
            body: None,
            leg: None,
            upstream: None,
            injected_answer: false,
            done: false,
        }
    }

    /// Whether the fingerprint wants the body (it has no idempotency key).
    pub fn hashes_body(&self) -> bool {
        matches!(self.fingerprint, Fingerprint::Hash(_))
    }

    /// The body's hash, read by fallacy itself before an injected answer.
    pub fn set_body_hash(&mut self, hash: u64) {
        self.fingerprint = with_body(self.fingerprint.clone(), hash);
    }

    /// A cell the forwarded body feeds, when the fingerprint wants the body.
    pub fn body_hash_cell(&mut self) -> Option<Arc<BodyHashCell>> {
        self.hashes_body()
            .then(|| self.body.insert(Arc::default()).clone())
    }

    /// A fault answers instead of the upstream.
    pub fn injected_answer(&mut self) {
        self.injected_answer = true;
    }

    /// Runs the upstream leg to its end, keeping it here meanwhile so that an abandonment
    /// can finish it elsewhere.
    pub async fn run_leg(&mut self, leg: Leg<T>) -> T {
        let leg = self.leg.insert(leg);
        let (out, result) = leg.await;
        self.leg = None;
        self.upstream = Some(result);
        self.link.stats().upstream_all.record(result.elapsed);
        if result.ok {
            self.link.stats().upstream.record(result.elapsed);
        }
        out
    }

    /// The response head with `status` is on its way to the client.
    pub fn answered(mut self, status: http::StatusCode) {
        self.done = true;
        let observed = self.start.elapsed();
        let failed = status.is_server_error() || status == http::StatusCode::TOO_MANY_REQUESTS;
        let stats = self.link.stats();
        stats.answered.fetch_add(1, Ordering::Relaxed);
        stats.observed.record(observed);
        if !failed {
            stats.client.record(observed);
        }
        self.record_attempt(failed);
    }

    /// A fault reset the exchange.
    pub fn reset(mut self) {
        self.done = true;
        self.record_attempt(true);
    }

    fn record_attempt(&self, failed: bool) {
        record_attempt(&self.link, self.final_fingerprint(), self.start, failed);
    }

    fn final_fingerprint(&self) -> Fingerprint {
        match &self.body {
            Some(cell) => with_body(self.fingerprint.clone(), cell.value.load(Ordering::Relaxed)),
            None => self.fingerprint.clone(),
        }
    }
}

fn record_attempt(link: &Link, fp: Fingerprint, start: Instant, failed: bool) {
    let stats = link.stats();
    let window = link.measure().retry_window;
    if failed {
        stats.failed.fetch_add(1, Ordering::Relaxed);
    }
    let recorded = stats
        .retry
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .record(fp, start, Instant::now(), failed, window);
    let metrics = link.metrics();
    if recorded.retry {
        stats.retries.fetch_add(1, Ordering::Relaxed);
        metrics.retry();
    }
    for attempts in recorded.closed {
        metrics.attempts(attempts);
    }
}

/// A place among the abandoned requests a proxy follows, given back however the task ends.
struct Followed(Arc<Link>);

impl Followed {
    fn take(link: &Arc<Link>) -> Option<Followed> {
        let count = &link.stats().followed;
        if count.fetch_add(1, Ordering::Relaxed) >= MAX_FOLLOWED {
            count.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(Followed(link.clone()))
    }
}

impl Drop for Followed {
    fn drop(&mut self) {
        self.0.stats().followed.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Counts an abandonment once its outcome is known.
pub(crate) fn abandoned(
    link: &Link,
    outcome: Outcome,
    cause: Cause,
    would_have_taken: Option<Duration>,
) {
    let stats = link.stats();
    stats.abandoned[slot(outcome, cause)].fetch_add(1, Ordering::Relaxed);
    link.metrics().abandoned(outcome, cause);
    if let Some(d) = would_have_taken {
        // A success the client did not wait for still belongs in the client-side figures:
        // leaving it out would hide exactly the slow successes a timeout cuts off.
        stats.client.record(d);
    }
    tracing::debug!(
        proxy = link.name(),
        outcome = outcome.as_str(),
        cause = cause.as_str(),
        "client abandoned a request"
    );
}

/// What an abandonment was, once the upstream's result is known (or not).
fn classify(
    upstream: Option<UpstreamResult>,
    at: Duration,
    injected: Duration,
) -> (Outcome, Cause, Option<Duration>) {
    match upstream {
        None => (Outcome::UpstreamPending, Cause::Upstream, None),
        Some(u) => {
            // Without fallacy's delay the client would have had its answer at u.elapsed.
            let cause = if !injected.is_zero() && u.elapsed < at {
                Cause::Injected
            } else {
                Cause::Upstream
            };
            if u.ok {
                (Outcome::UpstreamOk, cause, Some(u.elapsed + injected))
            } else {
                (Outcome::UpstreamError, cause, None)
            }
        }
    }
}

impl<T: Send + 'static> Drop for Exchange<T> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        // The client left before the response head: the attempt failed from its point of view.
        let at = self.start.elapsed();
        self.record_attempt(true);
        if self.injected_answer {
            abandoned(&self.link, Outcome::UpstreamError, Cause::Injected, None);
            return;
        }
        let injected = self.injected;
        match (self.upstream, self.leg.take()) {
            (Some(u), _) => {
                let (o, c, d) = classify(Some(u), at, injected);
                abandoned(&self.link, o, c, d);
            }
            (None, Some(leg)) => {
                let link = self.link.clone();
                let grace = link.measure().abandon_grace;
                let Ok(rt) = tokio::runtime::Handle::try_current() else {
                    return abandoned(&link, Outcome::UpstreamPending, Cause::Upstream, None);
                };
                let Some(followed) = Followed::take(&link) else {
                    // Dropping the leg closes its upstream connection now.
                    return abandoned(&link, Outcome::UpstreamPending, Cause::Upstream, None);
                };
                rt.spawn(async move {
                    let _followed = followed;
                    let result = tokio::time::timeout(grace, leg).await.ok().map(|(_, u)| u);
                    if let Some(u) = result {
                        link.stats().upstream_all.record(u.elapsed);
                        if u.ok {
                            link.stats().upstream.record(u.elapsed);
                        }
                    }
                    let (o, c, d) = classify(result, at, injected);
                    abandoned(&link, o, c, d);
                });
            }
            (None, None) => abandoned(&self.link, Outcome::UpstreamPending, Cause::Upstream, None),
        }
    }
}

/// TCP: a connection ended; a new one from the same client after a failed one is a retry.
pub fn tcp_connection_ended(link: &Link, peer: IpAddr, start: Instant, failed: bool) {
    let mut h = DefaultHasher::new();
    ("tcp", peer).hash(&mut h);
    record_attempt(link, Fingerprint::Hash(h.finish()), start, failed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_parse_from_json_and_name_the_key_at_fault() {
        let map = |v: Value| v.as_object().unwrap().clone();
        let p = MeasurePatch::from_map(&map(serde_json::json!({
            "abandon_grace": "5s", "retry_window": 2500, "idempotency_headers": ["X-Key"]
        })))
        .unwrap();
        let s = p.apply(&MeasureSettings::default());
        assert_eq!(s.abandon_grace, Duration::from_secs(5));
        assert_eq!(s.retry_window, Duration::from_millis(2500));
        assert_eq!(
            s.idempotency_headers,
            vec![HeaderName::from_static("x-key")]
        );
        for (body, key, words) in [
            (
                serde_json::json!({"abandon_grace": "11m"}),
                "abandon_grace",
                "at most 600s",
            ),
            (
                serde_json::json!({"abandon_grace": -1}),
                "abandon_grace",
                "non-negative",
            ),
            (
                serde_json::json!({"abandon_grace": "5"}),
                "abandon_grace",
                "no unit",
            ),
            (
                serde_json::json!({"retry_window": "0s"}),
                "retry_window",
                "more than 0",
            ),
            (
                serde_json::json!({"retry_window": true}),
                "retry_window",
                "not a duration",
            ),
            (
                serde_json::json!({"idempotency_headers": "x"}),
                "idempotency_headers",
                "array",
            ),
            (
                serde_json::json!({"idempotency_headers": ["bad header"]}),
                "idempotency_headers",
                "not a valid header name",
            ),
            (
                serde_json::json!({"idempotency_headers": [1]}),
                "idempotency_headers",
                "not a header name",
            ),
        ] {
            let (k, m) = MeasurePatch::from_map(&map(body)).unwrap_err();
            assert_eq!(k, key);
            assert!(m.contains(words), "{m}");
        }
    }

    #[test]
    fn the_cause_is_injected_only_when_the_upstream_alone_was_fast_enough() {
        let ms = Duration::from_millis;
        let ok = |e| {
            Some(UpstreamResult {
                elapsed: ms(e),
                ok: true,
            })
        };
        // Client gave up at 100 ms; fallacy added 200 ms; the upstream took 30 ms.
        assert_eq!(
            classify(ok(30), ms(100), ms(200)),
            (Outcome::UpstreamOk, Cause::Injected, Some(ms(230)))
        );
        // The upstream took 150 ms by itself: the timeout would have fired anyway.
        assert_eq!(classify(ok(150), ms(100), ms(200)).1, Cause::Upstream);
        // No delay was injected.
        assert_eq!(classify(ok(30), ms(100), ms(0)).1, Cause::Upstream);
        let err = Some(UpstreamResult {
            elapsed: ms(5),
            ok: false,
        });
        assert_eq!(
            classify(err, ms(100), ms(200)),
            (Outcome::UpstreamError, Cause::Injected, None)
        );
        assert_eq!(
            classify(None, ms(100), ms(200)),
            (Outcome::UpstreamPending, Cause::Upstream, None)
        );
    }

    #[test]
    fn fingerprints_prefer_keys_then_hash_everything_that_names_the_request() {
        let parts = |uri: &str, key: Option<&str>| {
            let mut b = http::Request::builder()
                .method("POST")
                .uri(uri)
                .header("host", "svc");
            if let Some(k) = key {
                b = b.header("idempotency-key", k);
            }
            b.body(()).unwrap().into_parts().0
        };
        let headers = MeasureSettings::default().idempotency_headers;
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let fp = |p: &http::request::Parts, body: u64| {
            with_body(RequestId { peer: ip, parts: p }.fingerprint(&headers), body)
        };
        let a = parts("/orders?x=1", None);
        assert_eq!(fp(&a, 1), fp(&parts("/orders?x=1", None), 1));
        assert_ne!(fp(&a, 1), fp(&a, 2), "the body counts");
        assert_ne!(
            fp(&a, 1),
            fp(&parts("/orders?x=2", None), 1),
            "the query counts"
        );
        let other_ip = with_body(
            RequestId {
                peer: "127.0.0.2".parse().unwrap(),
                parts: &a,
            }
            .fingerprint(&headers),
            1,
        );
        assert_ne!(fp(&a, 1), other_ip, "the client counts");
        let k = parts("/orders", Some("abc"));
        assert_eq!(fp(&k, 1), Fingerprint::Key("idempotency-key: abc".into()));
        assert_eq!(
            fp(&k, 1),
            fp(&parts("/other", Some("abc")), 9),
            "a key wins over everything"
        );
    }

    #[test]
    fn the_body_hash_reads_only_the_first_64_kib() {
        let mut a = BodyHasher::default();
        let mut b = BodyHasher::default();
        assert_eq!(a.value(), 0);
        a.feed(&vec![1u8; BODY_HASH_LIMIT]);
        a.feed(b"tail one");
        b.feed(&vec![1u8; 1000]);
        b.feed(&vec![1u8; BODY_HASH_LIMIT - 1000]);
        b.feed(b"tail two");
        assert_eq!(a.value(), b.value());
        let mut c = BodyHasher::default();
        c.feed(&[2u8; 10]);
        assert_ne!(a.value(), c.value());
    }
}
