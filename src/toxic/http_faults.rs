//! Attributes of the HTTP faults (`http_abort`, `http_delay`, `maintenance`, `rate_limit`),
//! validated when decoded, and the token buckets behind `rate_limit`.
//!
//! The faults act in `http::faults`, once per request; nothing here runs on the byte path.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::spec::{AttrError, LatencyAttrs, Millis};

fn status_ok(status: i64, path: &str) -> Result<(), AttrError> {
    if (200..=599).contains(&status) {
        Ok(())
    } else {
        Err(AttrError::attribute(
            path,
            format!("must be an HTTP status from 200 to 599, got {status}"),
        ))
    }
}

fn not_negative(d: Option<Millis>, path: &str) -> Result<(), AttrError> {
    match d {
        Some(m) if m.0 < 0 => Err(AttrError::attribute(path, "must not be negative")),
        _ => Ok(()),
    }
}

/// `http_abort`: answer without asking the upstream, or reset the connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct HttpAbortAttrs {
    /// The status answered (200..=599).
    pub status: i64,
    /// The body answered; a short text naming the fault by default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// Sent as `Retry-After` (whole seconds, rounded up) when given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<Millis>,
    /// Reset the client's connection (RST; on HTTP/2, the stream) instead of answering.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reset: Option<bool>,
}

impl Default for HttpAbortAttrs {
    fn default() -> Self {
        HttpAbortAttrs {
            status: 503,
            body: None,
            retry_after: None,
            reset: None,
        }
    }
}

impl HttpAbortAttrs {
    pub(super) fn check(&self) -> Result<(), AttrError> {
        status_ok(self.status, "status")?;
        not_negative(self.retry_after, "retry_after")
    }
}

/// `maintenance`: 503 with `Retry-After` for every matched request.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MaintenanceAttrs {
    /// `Retry-After`; 30 s when not given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<Millis>,
    /// The body; a short text by default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
}

impl MaintenanceAttrs {
    /// What `Retry-After` says when the attribute is not given.
    pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(30);

    pub(super) fn check(&self) -> Result<(), AttrError> {
        not_negative(self.retry_after, "retry_after")
    }

    /// The `Retry-After` duration.
    pub fn retry_after(&self) -> Duration {
        self.retry_after
            .map_or(Self::DEFAULT_RETRY_AFTER, Millis::duration)
    }
}

/// Where `http_delay` waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Phase {
    /// Before the request goes to the upstream.
    Request,
    /// Before the response headers go to the client (the default).
    #[default]
    Headers,
    /// After the headers, before the first byte of the body.
    Body,
}

/// `http_delay`: `latency`'s attributes (every distribution) plus `phase`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct HttpDelayAttrs {
    /// The delay, exactly as a `latency` toxic takes it.
    #[serde(flatten)]
    pub latency: LatencyAttrs,
    /// `request`, `headers` (default) or `body`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// When the request carries a deadline: `"exceed"` waits the deadline plus `margin` (the
    /// client's timeout fires), `"meet"` the deadline minus `margin` (it just makes it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deadline: Option<String>,
    /// The distance from the deadline. Default: 5 ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub margin: Option<Millis>,
    /// Where the deadline is read: `grpc-timeout` (default; gRPC's format, such as `250m`), or
    /// any other header holding milliseconds or a duration (`x-timeout-ms: 300`, `"1.5s"`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deadline_header: Option<String>,
    /// `phase`, parsed when the attributes are decoded.
    #[serde(skip)]
    pub(crate) parsed_phase: Phase,
}

impl HttpDelayAttrs {
    pub(super) fn check(&mut self) -> Result<(), AttrError> {
        match self.latency.per.as_deref() {
            None | Some("request") => {}
            Some(other) => {
                return Err(AttrError::attribute(
                    "per",
                    format!(
                        "http_delay waits once per request; leave per out or use \"request\", got {other:?}"
                    ),
                ));
            }
        }
        match self.deadline.as_deref() {
            None | Some("exceed" | "meet") => {}
            Some(other) => {
                return Err(AttrError::attribute(
                    "deadline",
                    format!("must be \"exceed\" or \"meet\", got {other:?}"),
                ));
            }
        }
        if self.margin.is_some_and(|m| m.0 < 0) {
            return Err(AttrError::attribute("margin", "must not be negative"));
        }
        if let Some(h) = &self.deadline_header {
            if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
                return Err(AttrError::attribute(
                    "deadline_header",
                    format!("{h:?} is not a valid header name"),
                ));
            }
        }
        self.parsed_phase = match self.phase.as_deref() {
            Some("request") => Phase::Request,
            None | Some("headers") => Phase::Headers,
            Some("body") => Phase::Body,
            Some(other) => {
                return Err(AttrError::attribute(
                    "phase",
                    format!("must be \"request\", \"headers\" or \"body\", got {other:?}"),
                ));
            }
        };
        Ok(())
    }

    /// Where the delay goes.
    pub fn phase(&self) -> Phase {
        self.parsed_phase
    }

    /// The delay that targets the request's deadline, when `deadline` is set and the request
    /// carries one it can read.
    pub fn deadline_delay(&self, headers: &http::HeaderMap) -> Option<Duration> {
        let aim = self.deadline.as_deref()?;
        let name = self.deadline_header.as_deref().unwrap_or("grpc-timeout");
        let value = headers.get(name)?.to_str().ok()?.trim();
        let deadline = if name.eq_ignore_ascii_case("grpc-timeout") {
            grpc_timeout(value)?
        } else {
            match value.parse::<u64>() {
                Ok(ms) => Duration::from_millis(ms),
                Err(_) => crate::units::parse_duration(value).ok()?,
            }
        };
        let margin = self
            .margin
            .map_or(Duration::from_millis(5), Millis::duration);
        Some(match aim {
            "exceed" => deadline + margin,
            _ => deadline.saturating_sub(margin),
        })
    }
}

/// gRPC's `grpc-timeout`: up to 8 digits and a unit, H M S m u n.
fn grpc_timeout(v: &str) -> Option<Duration> {
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// `http_truncate`: the body stops after `bytes` bytes and the exchange is aborted, so the
/// receiver sees a body shorter than announced (or a chunked body without its end).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct HttpTruncateAttrs {
    /// Body bytes let through.
    pub bytes: i64,
}

impl HttpTruncateAttrs {
    pub(super) fn check(&self) -> Result<(), AttrError> {
        if self.bytes < 0 {
            return Err(AttrError::attribute(
                "bytes",
                format!("must not be negative, got {}", self.bytes),
            ));
        }
        Ok(())
    }
}

/// `http_slow_body`: the body paced at `rate` KB/s (1 KB = 1000 B, as `bandwidth`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct HttpSlowBodyAttrs {
    /// KB/s, above 0.
    pub rate: i64,
}

impl HttpSlowBodyAttrs {
    pub(super) fn check(&self) -> Result<(), AttrError> {
        if self.rate <= 0 {
            return Err(AttrError::attribute(
                "rate",
                format!("must be a rate in KB/s above 0, got {}", self.rate),
            ));
        }
        Ok(())
    }
}

/// `tamper`: rewrites what passes: headers set or removed, body bytes flipped.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TamperAttrs {
    /// Headers set (replacing any of the same name).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub set_headers: Option<std::collections::BTreeMap<String, String>>,
    /// Headers removed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remove_headers: Option<Vec<String>>,
    /// The fraction (0..1) of body bytes that get one random bit flipped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flip: Option<f64>,
}

impl TamperAttrs {
    pub(super) fn check(&self) -> Result<(), AttrError> {
        for (name, value) in self.set_headers.iter().flatten() {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(AttrError::attribute(
                    &format!("set_headers.{name}"),
                    "is not a valid header name",
                ));
            }
            if http::HeaderValue::from_str(value).is_err() {
                return Err(AttrError::attribute(
                    &format!("set_headers.{name}"),
                    format!("{value:?} is not a valid header value"),
                ));
            }
        }
        for (i, name) in self.remove_headers.iter().flatten().enumerate() {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(AttrError::attribute(
                    &format!("remove_headers[{i}]"),
                    format!("{name:?} is not a valid header name"),
                ));
            }
        }
        match self.flip {
            Some(f) if !(0.0..=1.0).contains(&f) => Err(AttrError::attribute(
                "flip",
                format!("must be a fraction within 0..1, got {f}"),
            )),
            _ => Ok(()),
        }
    }
}

/// `rate_limit`: a token bucket of `rate` requests per second, `burst` deep, for the whole
/// proxy or per client address; over the limit a request gets 429 with `Retry-After`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RateLimitAttrs {
    /// Requests per second (> 0).
    pub rate: f64,
    /// Requests that may come at once; `rate` rounded up (at least 1) by default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub burst: Option<i64>,
    /// `global` (default) or `client` (one bucket per client IP address).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per: Option<String>,
    /// The buckets, made when the attributes are decoded and kept by in-place updates.
    #[serde(skip)]
    pub(crate) limiter: Option<Arc<RateLimiter>>,
}

impl RateLimitAttrs {
    pub(super) fn check(&mut self) -> Result<(), AttrError> {
        if !self.rate.is_finite() || self.rate <= 0.0 {
            return Err(AttrError::attribute(
                "rate",
                format!(
                    "must be a number of requests per second above 0, got {}",
                    self.rate
                ),
            ));
        }
        let burst = match self.burst {
            Some(b) if b < 1 => {
                return Err(AttrError::attribute(
                    "burst",
                    format!("must be at least 1, got {b}"),
                ));
            }
            Some(b) => b as f64,
            None => self.rate.ceil().max(1.0),
        };
        let per_client = match self.per.as_deref() {
            None | Some("global") => false,
            Some("client") => true,
            Some(other) => {
                return Err(AttrError::attribute(
                    "per",
                    format!("must be \"global\" or \"client\", got {other:?}"),
                ));
            }
        };
        self.limiter = Some(Arc::new(RateLimiter::new(self.rate, burst, per_client)));
        Ok(())
    }
}

/// Token buckets. Behind a plain mutex: a request holds it for a few arithmetic operations.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    per_client: bool,
    buckets: Mutex<HashMap<Option<IpAddr>, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Per-client buckets kept at most; full ones are dropped first when there are more.
const MAX_CLIENTS: usize = 10_000;

impl PartialEq for RateLimiter {
    fn eq(&self, other: &Self) -> bool {
        self.rate == other.rate && self.burst == other.burst && self.per_client == other.per_client
    }
}

impl RateLimiter {
    fn new(rate: f64, burst: f64, per_client: bool) -> RateLimiter {
        RateLimiter {
            rate,
            burst,
            per_client,
            buckets: Mutex::default(),
        }
    }

    /// Takes a token for a request from `client` at `now`. `Err` holds how long until a token
    /// would be there: what `Retry-After` says.
    pub fn acquire(&self, client: IpAddr, now: Instant) -> Result<(), Duration> {
        let key = self.per_client.then_some(client);
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= MAX_CLIENTS && !buckets.contains_key(&key) {
            let (rate, burst) = (self.rate, self.burst);
            buckets.retain(|_, b| refill(*b, rate, burst, now).tokens < burst);
        }
        let bucket = buckets.entry(key).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        *bucket = refill(*bucket, self.rate, self.burst, now);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            // Capped at 1e9 s, as latency draws are: a rate near 0 (`1e-300`) makes the wait
            // too long for a Duration, and from_secs_f64 panicked on the second request (fuzz
            // target http_request; input kept in fuzz/regressions/http_request/).
            Err(Duration::from_secs_f64(
                ((1.0 - bucket.tokens) / self.rate).min(1e9),
            ))
        }
    }
}

fn refill(b: Bucket, rate: f64, burst: f64, now: Instant) -> Bucket {
    let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
    Bucket {
        tokens: (b.tokens + elapsed * rate).min(burst),
        at: now,
    }
}

/// Whole seconds for a `Retry-After` header: rounded up, at least 1 unless the wait is zero.
pub fn retry_after_secs(wait: Duration) -> u64 {
    let secs = wait.as_secs_f64().ceil() as u64;
    if wait.is_zero() { 0 } else { secs.max(1) }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use proptest::prelude::*;

    use super::*;

    fn limiter(rate: f64, burst: f64, per_client: bool) -> RateLimiter {
        RateLimiter::new(rate, burst, per_client)
    }

    #[test]
    fn a_bucket_lets_burst_through_then_paces_at_rate() {
        let l = limiter(10.0, 3.0, false);
        let t0 = Instant::now();
        let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
        for _ in 0..3 {
            assert!(l.acquire(ip, t0).is_ok());
        }
        let wait = l.acquire(ip, t0).unwrap_err();
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-6, "{wait:?}");
        assert!(l.acquire(ip, t0 + Duration::from_millis(100)).is_ok());
        assert!(l.acquire(ip, t0 + Duration::from_millis(100)).is_err());
    }

    #[test]
    fn per_client_buckets_are_separate() {
        let l = limiter(1.0, 1.0, true);
        let t0 = Instant::now();
        let a = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
        let b = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
        assert!(l.acquire(a, t0).is_ok());
        assert!(l.acquire(a, t0).is_err());
        assert!(l.acquire(b, t0).is_ok());
    }

    #[test]
    fn deadlines_are_read_from_grpc_timeout_or_a_named_header() {
        assert_eq!(grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        for bad in ["", "m", "12", "1x", "123456789m", "-1m", "1.5S"] {
            assert_eq!(grpc_timeout(bad), None, "{bad:?}");
        }
        let mut a = HttpDelayAttrs {
            deadline: Some("exceed".into()),
            ..Default::default()
        };
        a.check().unwrap();
        let mut h = http::HeaderMap::new();
        assert_eq!(a.deadline_delay(&h), None, "no header: no deadline");
        h.insert("grpc-timeout", "100m".parse().unwrap());
        assert_eq!(a.deadline_delay(&h), Some(Duration::from_millis(105)));
        a.deadline = Some("meet".into());
        a.margin = Some(Millis(20_000_000));
        assert_eq!(a.deadline_delay(&h), Some(Duration::from_millis(80)));
        a.deadline_header = Some("x-timeout".into());
        h.insert("x-timeout", "1.5s".parse().unwrap());
        assert_eq!(a.deadline_delay(&h), Some(Duration::from_millis(1480)));
        h.insert("x-timeout", "300".parse().unwrap());
        assert_eq!(a.deadline_delay(&h), Some(Duration::from_millis(280)));
        // A margin beyond the deadline: answer at once, never a negative wait.
        a.margin = Some(Millis(500_000_000));
        assert_eq!(a.deadline_delay(&h), Some(Duration::ZERO));
        // An unreadable deadline: no deadline (the drawn delay applies).
        h.insert("x-timeout", "soon".parse().unwrap());
        assert_eq!(a.deadline_delay(&h), None);
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1500)), 2);
        assert_eq!(retry_after_secs(Duration::ZERO), 0);
    }

    proptest! {
        /// Over any window, a bucket admits at most burst + rate × window requests, and the
        /// wait it names for a refused request is positive and at most one token's time.
        #[test]
        fn admits_no_more_than_burst_plus_rate(
            rate in 0.5f64..1000.0,
            burst in 1u32..50,
            gaps in proptest::collection::vec(0u64..20_000, 1..300),
        ) {
            let l = limiter(rate, f64::from(burst), false);
            let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
            let t0 = Instant::now();
            let mut t = t0;
            let mut admitted = 0u64;
            for gap in gaps {
                t += Duration::from_micros(gap);
                match l.acquire(ip, t) {
                    Ok(()) => admitted += 1,
                    Err(wait) => {
                        prop_assert!(!wait.is_zero());
                        prop_assert!(wait.as_secs_f64() <= 1.0 / rate + 1e-9);
                    }
                }
            }
            let window = (t - t0).as_secs_f64();
            prop_assert!(admitted as f64 <= f64::from(burst) + rate * window + 1e-6);
        }
    }
}
