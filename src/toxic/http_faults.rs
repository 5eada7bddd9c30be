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
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / self.rate))
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
