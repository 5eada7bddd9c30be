//! What the toxics do to one request: decided up front, in creation order, before anything is
//! forwarded. Pure: no I/O, no sleeping; `http::service` carries the decision out.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use rand::rngs::SmallRng;
use tokio::time::Instant;

use crate::toxic::http_faults::{Phase, retry_after_secs};
use crate::toxic::{Direction, Latency, ToxicCx, ToxicKind, ToxicSpec};

/// An answer fallacy gives instead of the upstream's.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// A response made up here.
    Respond {
        /// The status code.
        status: StatusCode,
        /// The body (plain text).
        body: String,
        /// `Retry-After`, in whole seconds.
        retry_after: Option<u64>,
    },
    /// Reset the connection (HTTP/1) or the stream (HTTP/2).
    Reset,
}

/// The plan for one request.
#[derive(Debug, Default)]
pub struct Decision {
    /// Toxics that acted, in order: what `x-fallacy-fault` lists.
    pub names: Vec<String>,
    /// Set by the first toxic that answers; later ones do not answer again.
    pub answer: Option<Answer>,
    /// Before the request goes upstream (or before the made-up answer).
    pub before_request: Duration,
    /// Before the response headers go to the client.
    pub before_headers: Duration,
    /// Before the first byte of the response body.
    pub before_body: Duration,
    /// What happens to the request on its way up (`upstream` stream).
    pub request: Shaping,
    /// What happens to the response on its way down (`downstream` stream).
    pub response: Shaping,
}

/// Header edits and body shaping for one direction of one exchange.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Shaping {
    /// Headers set, replacing any of the same name.
    pub set_headers: Vec<(HeaderName, HeaderValue)>,
    /// Headers removed.
    pub remove_headers: Vec<HeaderName>,
    /// The body stops after this many bytes, and the exchange is aborted.
    pub truncate: Option<u64>,
    /// The body is paced at this many bytes per second.
    pub rate: Option<f64>,
    /// The fraction of body bytes that get a bit flipped.
    pub flip: Option<f64>,
}

impl Shaping {
    /// Whether the body passes untouched.
    pub fn body_untouched(&self) -> bool {
        self.truncate.is_none() && self.rate.is_none() && self.flip.is_none()
    }

    /// Applies the header edits.
    pub fn edit(&self, headers: &mut HeaderMap) {
        for name in &self.remove_headers {
            headers.remove(name);
        }
        for (name, value) in &self.set_headers {
            headers.insert(name.clone(), value.clone());
        }
    }
}

impl Decision {
    fn shaping(&mut self, direction: Direction) -> &mut Shaping {
        match direction {
            Direction::Upstream => &mut self.request,
            Direction::Downstream => &mut self.response,
        }
    }

    fn acted(&mut self, spec: &ToxicSpec) {
        if !self.names.contains(&spec.name) {
            self.names.push(spec.name.clone());
        }
    }
}

/// A connection's state across its requests: the seeded generator, and the delay samplers,
/// kept per toxic so that `correlation` links successive requests.
pub struct ConnFaults {
    cx: ToxicCx,
    samplers: HashMap<usize, (Arc<ToxicSpec>, Latency)>,
}

impl ConnFaults {
    /// A generator for one body's bit flips, drawn from the connection's (so seeded runs
    /// flip the same bits).
    pub fn body_rng(&mut self) -> SmallRng {
        use rand::{Rng, SeedableRng};
        SmallRng::seed_from_u64(self.cx.rng.random())
    }

    /// Whether a `downgrade` toxic applies to this connection (drawn once, at its start).
    pub fn downgrades(&mut self, toxics: &[Arc<ToxicSpec>]) -> Option<String> {
        toxics
            .iter()
            .filter(|t| matches!(t.kind, ToxicKind::Downgrade(_)))
            .find(|t| t.applies(&mut self.cx))
            .map(|t| t.name.clone())
    }

    /// State for one client connection.
    pub fn new(rng: SmallRng) -> ConnFaults {
        ConnFaults {
            cx: ToxicCx { rng },
            samplers: HashMap::new(),
        }
    }

    fn delay(&mut self, spec: &Arc<ToxicSpec>) -> Duration {
        let key = Arc::as_ptr(spec) as usize;
        let (_, sampler) = self.samplers.entry(key).or_insert_with(|| {
            let latency = match &spec.kind {
                ToxicKind::Latency(a) => Latency::new(a),
                ToxicKind::HttpDelay(a) => Latency::new(&a.latency),
                _ => Latency::new(&Default::default()),
            };
            // The spec is kept alongside, so its address cannot be reused by another.
            (spec.clone(), latency)
        });
        sampler.draw(0, &mut self.cx)
    }

    /// Decides what the current toxics do to a request from `client`.
    pub fn decide(
        &mut self,
        toxics: &[Arc<ToxicSpec>],
        req: &Parts,
        client: IpAddr,
        now: Instant,
    ) -> Decision {
        if self.samplers.len() > toxics.len() {
            // Toxics were removed or updated: forget their samplers.
            self.samplers
                .retain(|_, (spec, _)| toxics.iter().any(|t| Arc::ptr_eq(t, spec)));
        }
        let mut d = Decision::default();
        for spec in toxics {
            if !spec.kind.is_http() && !matches!(spec.kind, ToxicKind::Latency(_)) {
                continue;
            }
            if let Some(m) = &spec.matcher {
                if !m.matches(&req.method, req.uri.path(), &req.headers) {
                    continue;
                }
            }
            if !spec.applies(&mut self.cx) {
                continue;
            }
            match &spec.kind {
                ToxicKind::Latency(_) => {
                    let wait = self.delay(spec);
                    match spec.direction {
                        Direction::Upstream => d.before_request += wait,
                        Direction::Downstream => d.before_headers += wait,
                    }
                    d.acted(spec);
                }
                ToxicKind::HttpDelay(a) => {
                    let wait = match a.deadline_delay(&req.headers) {
                        Some(wait) => wait,
                        None => self.delay(spec),
                    };
                    match a.phase() {
                        Phase::Request => d.before_request += wait,
                        Phase::Headers => d.before_headers += wait,
                        Phase::Body => d.before_body += wait,
                    }
                    d.acted(spec);
                }
                ToxicKind::HttpTruncate(a) => {
                    let s = d.shaping(spec.direction);
                    let bytes = a.bytes.max(0) as u64;
                    s.truncate = Some(s.truncate.map_or(bytes, |t| t.min(bytes)));
                    d.acted(spec);
                }
                ToxicKind::HttpSlowBody(a) => {
                    let s = d.shaping(spec.direction);
                    let rate = a.rate as f64 * 1000.0;
                    s.rate = Some(s.rate.map_or(rate, |r| r.min(rate)));
                    d.acted(spec);
                }
                ToxicKind::Tamper(a) => {
                    let s = d.shaping(spec.direction);
                    // Names and values were checked when the toxic was decoded.
                    for (name, value) in a.set_headers.iter().flatten() {
                        if let (Ok(n), Ok(v)) = (
                            HeaderName::from_bytes(name.as_bytes()),
                            HeaderValue::from_str(value),
                        ) {
                            s.set_headers.push((n, v));
                        }
                    }
                    for name in a.remove_headers.iter().flatten() {
                        if let Ok(n) = HeaderName::from_bytes(name.as_bytes()) {
                            s.remove_headers.push(n);
                        }
                    }
                    if let Some(f) = a.flip.filter(|f| *f > 0.0) {
                        s.flip = Some(s.flip.map_or(f, |g| g.max(f)));
                    }
                    d.acted(spec);
                }
                _ if d.answer.is_some() => {}
                ToxicKind::HttpAbort(a) => {
                    d.answer = Some(if a.reset == Some(true) {
                        Answer::Reset
                    } else {
                        Answer::Respond {
                            // Checked to be 200..=599 when decoded.
                            status: StatusCode::from_u16(a.status as u16)
                                .unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
                            body: a.body.clone().unwrap_or_else(|| {
                                format!("fault injected by fallacy: {} (http_abort)\n", spec.name)
                            }),
                            retry_after: a.retry_after.map(|r| retry_after_secs(r.duration())),
                        }
                    });
                    d.acted(spec);
                }
                ToxicKind::Maintenance(a) => {
                    d.answer = Some(Answer::Respond {
                        status: StatusCode::SERVICE_UNAVAILABLE,
                        body: a.body.clone().unwrap_or_else(|| {
                            format!("down for maintenance (fallacy: {})\n", spec.name)
                        }),
                        retry_after: Some(retry_after_secs(a.retry_after())),
                    });
                    d.acted(spec);
                }
                ToxicKind::RateLimit(a) => {
                    let Some(limiter) = &a.limiter else { continue };
                    if let Err(wait) = limiter.acquire(client, now) {
                        d.answer = Some(Answer::Respond {
                            status: StatusCode::TOO_MANY_REQUESTS,
                            body: format!("rate limited by fallacy: {}\n", spec.name),
                            retry_after: Some(retry_after_secs(wait)),
                        });
                        d.acted(spec);
                    }
                }
                _ => {}
            }
        }
        d
    }
}
