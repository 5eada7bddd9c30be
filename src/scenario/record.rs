//! What a scenario measured: every proxy's traffic, cut at each phase boundary, and a time
//! series sampled in between.
//!
//! The figures come from the proxies' own counters and latency histograms (the ones behind
//! `/stats` and `/metrics`), so they are what fallacy saw of the clients, whatever the load
//! generator. Latency is `client_observed` of `/stats`: for requests that succeeded upstream,
//! what the client saw, or would have seen had it not given up first, so a tail past the
//! client's timeout still shows. A phase's figures are the difference of two copies of those counters, taken at
//! the instant the phase opened and the instant it closed: the boundaries are exact, not
//! rounded to a sampling interval.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value, json};
use tokio::time::Instant;

use crate::measure::histogram::Snapshot;
use crate::measure::millis;
use crate::proxy::Link;

/// The most samples a series keeps (the oldest go first, for scenarios that repeat forever).
pub const MAX_SAMPLES: usize = 2000;
/// The most phases and changes kept, for the same reason.
pub const MAX_PHASES: usize = 1000;

/// One proxy's running totals at an instant.
#[derive(Debug, Clone)]
struct Totals {
    requests: u64,
    failed: u64,
    false_timeouts: u64,
    retries: u64,
    bytes: u64,
    connections: u64,
    latency: Snapshot,
}

fn totals(link: &Link) -> Totals {
    let counts = link.stats().counts(Instant::now());
    let (up, down) = link.metrics().bytes_moved();
    Totals {
        requests: counts.requests,
        failed: counts.failed,
        false_timeouts: counts.false_timeouts,
        retries: counts.retries,
        bytes: up + down,
        connections: link.connections_total(),
        latency: link.stats().client.snapshot(),
    }
}

/// The traffic of an interval: differences of totals, with the interval's latency histogram.
#[derive(Debug, Clone)]
pub struct Figures {
    seconds: f64,
    requests: u64,
    errors: u64,
    false_timeouts: u64,
    retries: u64,
    bytes: u64,
    connections: u64,
    latency: Snapshot,
}

impl Figures {
    fn between(then: &Totals, now: &Totals, seconds: f64) -> Figures {
        Figures {
            seconds,
            requests: now.requests.saturating_sub(then.requests),
            errors: now.failed.saturating_sub(then.failed),
            false_timeouts: now.false_timeouts.saturating_sub(then.false_timeouts),
            retries: now.retries.saturating_sub(then.retries),
            bytes: now.bytes.saturating_sub(then.bytes),
            connections: now.connections.saturating_sub(then.connections),
            latency: now.latency.since(&then.latency),
        }
    }

    fn empty(seconds: f64) -> Figures {
        Figures {
            seconds,
            requests: 0,
            errors: 0,
            false_timeouts: 0,
            retries: 0,
            bytes: 0,
            connections: 0,
            latency: Snapshot::empty(),
        }
    }

    fn add(&mut self, other: &Figures) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.false_timeouts += other.false_timeouts;
        self.retries += other.retries;
        self.bytes += other.bytes;
        self.connections += other.connections;
        self.latency.merge(&other.latency);
    }

    fn idle(&self) -> bool {
        self.requests == 0 && self.bytes == 0 && self.connections == 0
    }

    /// The figures as the report reads them. Amplification is attempts per logical request
    /// within the interval: requests over requests that were not retries.
    pub fn to_json(&self) -> Value {
        let per_s = |n: u64| {
            if self.seconds > 0.0 {
                n as f64 / self.seconds
            } else {
                0.0
            }
        };
        let q = |q: f64| self.latency.quantile(q).map(millis);
        let amplification = (self.requests > 0).then(|| {
            self.requests as f64 / self.requests.saturating_sub(self.retries).max(1) as f64
        });
        json!({
            "seconds": self.seconds,
            "requests": self.requests,
            "requests_per_s": per_s(self.requests),
            "errors": self.errors,
            "errors_per_s": per_s(self.errors),
            "error_rate": (self.requests > 0).then(|| self.errors as f64 / self.requests as f64),
            "false_timeouts": self.false_timeouts,
            "false_timeouts_per_s": per_s(self.false_timeouts),
            "retries": self.retries,
            "amplification": amplification,
            "latency_samples": self.latency.total(),
            "p50_ms": q(0.5),
            "p99_ms": q(0.99),
            "bytes": self.bytes,
            "bytes_per_s": per_s(self.bytes),
            "connections": self.connections,
        })
    }
}

/// Per proxy, then all of them together.
fn figures(
    names: &[String],
    then: &[Totals],
    now: &[Totals],
    seconds: f64,
) -> (Vec<(String, Figures)>, Figures) {
    let mut total = Figures::empty(seconds);
    let per: Vec<(String, Figures)> = names
        .iter()
        .zip(then.iter().zip(now))
        .map(|(name, (a, b))| {
            let f = Figures::between(a, b, seconds);
            total.add(&f);
            (name.clone(), f)
        })
        .collect();
    (per, total)
}

/// A phase as played: its name, its cycle, and when it opened (from the start).
#[derive(Debug, Clone)]
struct Open {
    cycle: u32,
    name: String,
    at: Instant,
    marks: Vec<Totals>,
}

/// The figures of a scenario, phase by phase and over time.
pub struct Recorder {
    links: Vec<Arc<Link>>,
    names: Vec<String>,
    origin: Instant,
    open: Option<Open>,
    phases: VecDeque<Value>,
    changes: VecDeque<Value>,
    last: (Instant, Vec<Totals>),
    series: VecDeque<Value>,
    /// Requests and retries (all proxies) at each recent sample, for the series' amplification.
    recent: VecDeque<(Instant, u64, u64)>,
}

/// The series' amplification is taken over this trailing window: over one short interval, the
/// retries of requests that began earlier swamp the few new ones (at a recovery, say).
pub const AMPLIFICATION_WINDOW: Duration = Duration::from_secs(1);

impl Recorder {
    /// Starts recording the given proxies, in a first phase named `baseline`.
    pub fn new(links: Vec<Arc<Link>>, origin: Instant) -> Recorder {
        let names = links.iter().map(|l| l.name().to_owned()).collect();
        let marks: Vec<Totals> = links.iter().map(|l| totals(l)).collect();
        Recorder {
            links,
            names,
            origin,
            open: Some(Open {
                cycle: 0,
                name: "baseline".into(),
                at: origin,
                marks: marks.clone(),
            }),
            phases: VecDeque::new(),
            changes: VecDeque::new(),
            last: (origin, marks),
            series: VecDeque::new(),
            recent: VecDeque::from([(origin, 0, 0)]),
        }
    }

    fn marks(&self) -> Vec<Totals> {
        self.links.iter().map(|l| totals(l)).collect()
    }

    fn ms(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.origin).as_millis() as u64
    }

    /// The phase in force, if any.
    pub fn phase(&self) -> Option<(u32, &str)> {
        self.open.as_ref().map(|o| (o.cycle, o.name.as_str()))
    }

    fn phase_json(&self, open: &Open, now: Instant, marks: &[Totals], ended: bool) -> Value {
        let seconds = now.saturating_duration_since(open.at).as_secs_f64();
        let (per, total) = figures(&self.names, &open.marks, marks, seconds);
        let proxies: Map<String, Value> = per
            .iter()
            .filter(|(_, f)| !f.idle())
            .map(|(n, f)| (n.clone(), f.to_json()))
            .collect();
        json!({
            "cycle": open.cycle,
            "phase": open.name,
            "start_ms": self.ms(open.at),
            "end_ms": self.ms(now),
            "open": !ended,
            "total": total.to_json(),
            "proxies": proxies,
        })
    }

    /// Closes the phase in force at `now` and opens `name`. A phase that lasted under a
    /// millisecond and saw nothing (the baseline of a scenario whose first step is at 0 s) is
    /// left out.
    pub fn enter(&mut self, cycle: u32, name: &str, now: Instant) {
        let marks = self.marks();
        self.close(now, &marks);
        self.open = Some(Open {
            cycle,
            name: name.to_owned(),
            at: now,
            marks,
        });
    }

    fn close(&mut self, now: Instant, marks: &[Totals]) {
        if let Some(open) = self.open.take() {
            let phase = self.phase_json(&open, now, marks, true);
            let brief = now.saturating_duration_since(open.at) < Duration::from_millis(1);
            if !(brief && phase["total"]["requests"] == 0) {
                push_bounded(&mut self.phases, phase, MAX_PHASES);
            }
        }
    }

    /// Closes the last phase: the scenario is over or stopped.
    pub fn finish(&mut self, now: Instant) {
        if now.saturating_duration_since(self.last.0) >= Duration::from_millis(50) {
            // The series runs to the end (a sliver of an interval would only be noise).
            self.sample(now);
        }
        let marks = self.marks();
        self.close(now, &marks);
    }

    /// Notes a change applied at `now`.
    pub fn change(&mut self, now: Instant, phase: &str, what: &str) {
        let change = json!({"at_ms": self.ms(now), "phase": phase, "change": what});
        push_bounded(&mut self.changes, change, MAX_PHASES);
    }

    /// When the next sample is due.
    pub fn next_sample(&self, every: Duration) -> Instant {
        self.last.0 + every
    }

    /// Samples the interval since the last sample, for the time series.
    pub fn sample(&mut self, now: Instant) {
        let marks = self.marks();
        let seconds = now.saturating_duration_since(self.last.0).as_secs_f64();
        let (_, total) = figures(&self.names, &self.last.1, &marks, seconds);
        let mut point = total.to_json();
        let (mut requests, mut retries) = self.recent.back().map_or((0, 0), |r| (r.1, r.2));
        requests += total.requests;
        retries += total.retries;
        self.recent.push_back((now, requests, retries));
        // Keep one sample at or before the window's start, to measure from.
        while self.recent.len() > 2
            && now.saturating_duration_since(self.recent[1].0) >= AMPLIFICATION_WINDOW
        {
            self.recent.pop_front();
        }
        let (_, r0, t0) = self.recent[0];
        let (dr, dt) = (requests - r0, retries - t0);
        point["amplification"] =
            json!((dr > 0).then(|| dr as f64 / dr.saturating_sub(dt).max(1) as f64));
        point["t_ms"] = json!(self.ms(now));
        point["phase"] = json!(self.open.as_ref().map(|o| o.name.as_str()));
        push_bounded(&mut self.series, point, MAX_SAMPLES);
        self.last = (now, marks);
    }

    /// The latest sample, for progress displays.
    pub fn latest(&self) -> Option<&Value> {
        self.series.back()
    }

    /// Phases so far (the one in force marked `"open": true`, its figures up to now), the
    /// changes applied, and with `series` the time series.
    pub fn to_json(&self, series: bool) -> Value {
        let mut phases: Vec<Value> = self.phases.iter().cloned().collect();
        if let Some(open) = &self.open {
            phases.push(self.phase_json(open, Instant::now(), &self.marks(), false));
        }
        let mut out = json!({
            "proxies": self.names,
            "phases": phases,
            "changes": self.changes,
        });
        if series {
            out["series"] = json!(self.series);
        }
        out
    }
}

fn push_bounded(list: &mut VecDeque<Value>, item: Value, max: usize) {
    if list.len() == max {
        list.pop_front();
    }
    list.push_back(item);
}

/// How often to sample a scenario: about 200 points over its length, from 100 ms to 5 s.
pub fn sample_every(cycle: Duration, repeat: u32) -> Duration {
    let total = cycle * repeat.max(1);
    (total / 200).clamp(Duration::from_millis(100), Duration::from_secs(5))
}
