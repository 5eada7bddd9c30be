//! Which requests are retries, and how many attempts each logical request took.
//!
//! A request is a retry when, within the retry window before it started:
//! - it carries an idempotency key another request carried, or
//! - without a key, an earlier request with the same fingerprint failed and no success has
//!   followed that failure.
//!
//! So a load test that hits one URL all day is not a storm: each success closes its logical
//! request, and the next identical request opens a new one.
//!
//! Requests are recorded when their outcome is known (answered, failed or abandoned), since
//! the fingerprint hashes the body and a failure must be known before the retry it provokes.
//! A failure only makes retries of requests that started after it, so requests that merely
//! overlap are never counted as each other's retries.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

/// What identifies repeated attempts of one logical request.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Fingerprint {
    /// The value of an idempotency header (with the header's name).
    Key(String),
    /// Client IP, method, authority, path, query and the first 64 KiB of the body, hashed.
    Hash(u64),
}

/// Fingerprints followed at most at once; beyond it new ones count as new logical requests
/// without being followed, so memory stays bounded whatever the clients send.
pub const MAX_TRACKED: usize = 100_000;

/// The sliding window of `retry_amplification`, in one-second slots.
pub const AMPLIFICATION_WINDOW_SECS: u64 = 60;

/// Keys remember this many recent starts.
const STARTS_KEPT: usize = 8;

#[derive(Debug)]
struct Entry {
    /// When the last failure was recorded, if no success followed it.
    open_failure: Option<Instant>,
    /// Keys only: when recent attempts started.
    starts: Vec<Instant>,
    /// Attempts of the logical request still open (0 once a success closed it).
    attempts: u32,
    touched: Instant,
}

/// How one recorded request counted.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Recorded {
    /// It repeated an earlier attempt.
    pub retry: bool,
    /// Logical requests this closed, by their attempt counts (for the histogram).
    pub closed: Vec<u32>,
}

/// Per-proxy retry bookkeeping. Callers hold it behind a mutex; every operation is O(1)
/// except the sweep, which runs at most once a second.
#[derive(Debug)]
pub struct RetryTracker {
    entries: HashMap<Fingerprint, Entry>,
    last_sweep: Option<Instant>,
    origin: Instant,
    /// (second since `origin`, attempts, logical requests), one slot per second.
    slots: [(u64, u64, u64); AMPLIFICATION_WINDOW_SECS as usize],
}

impl Default for RetryTracker {
    fn default() -> Self {
        RetryTracker {
            entries: HashMap::new(),
            last_sweep: None,
            origin: Instant::now(),
            slots: [(u64::MAX, 0, 0); AMPLIFICATION_WINDOW_SECS as usize],
        }
    }
}

impl RetryTracker {
    /// Records a request that started at `start` and whose outcome (`failed` or not) is known
    /// now.
    pub fn record(
        &mut self,
        fp: Fingerprint,
        start: Instant,
        now: Instant,
        failed: bool,
        window: Duration,
    ) -> Recorded {
        let mut out = Recorded::default();
        out.closed.extend(self.sweep(now, window));
        let within = |t: Instant| t <= start && start.duration_since(t) <= window;
        let keyed = matches!(fp, Fingerprint::Key(_));
        // A success nobody failed before needs no memory: the next identical request is a new
        // logical one either way. Most requests of a healthy load test end here, without
        // touching the map.
        if !keyed && !failed && !self.entries.contains_key(&fp) {
            self.count(now, 1, 1);
            out.closed.push(1);
            return out;
        }
        let tracked = self.entries.len() < MAX_TRACKED || self.entries.contains_key(&fp);
        let entry = if tracked {
            Some(self.entries.entry(fp).or_insert(Entry {
                open_failure: None,
                starts: Vec::new(),
                attempts: 0,
                touched: now,
            }))
        } else {
            None
        };
        let Some(entry) = entry else {
            self.count(now, 1, 1);
            out.closed.push(1);
            return out;
        };
        out.retry = if keyed {
            entry.starts.iter().any(|&s| s < start && within(s))
        } else {
            entry.open_failure.is_some_and(within)
        };
        if out.retry {
            entry.attempts += 1;
        } else {
            if entry.attempts > 0 {
                out.closed.push(entry.attempts);
            }
            entry.attempts = 1;
        }
        if keyed {
            if entry.starts.len() == STARTS_KEPT {
                entry.starts.remove(0);
            }
            entry.starts.push(start);
        }
        if failed {
            entry.open_failure = Some(now);
        } else {
            entry.open_failure = None;
            if entry.attempts > 0 {
                out.closed.push(entry.attempts);
            }
            entry.attempts = 0;
        }
        entry.touched = now;
        self.count(now, 1, u64::from(!out.retry));
        out
    }

    /// Forgets fingerprints not seen for a window, closing their logical requests. Runs at
    /// most once a second unless `force`d through [`RetryTracker::expire`].
    fn sweep(&mut self, now: Instant, window: Duration) -> Vec<u32> {
        if self
            .last_sweep
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            return Vec::new();
        }
        self.expire(now, window)
    }

    /// Forgets every fingerprint not seen within `window` of `now`; returns the attempt
    /// counts of the logical requests that closed.
    pub fn expire(&mut self, now: Instant, window: Duration) -> Vec<u32> {
        self.last_sweep = Some(now);
        let mut closed = Vec::new();
        self.entries.retain(|_, e| {
            let keep = now.duration_since(e.touched) <= window;
            if !keep && e.attempts > 0 {
                closed.push(e.attempts);
            }
            keep
        });
        closed
    }

    /// Fingerprints followed now.
    pub fn tracked(&self) -> usize {
        self.entries.len()
    }

    fn count(&mut self, now: Instant, attempts: u64, logical: u64) {
        let second = now.duration_since(self.origin).as_secs();
        let slot = &mut self.slots[(second % AMPLIFICATION_WINDOW_SECS) as usize];
        if slot.0 != second {
            *slot = (second, 0, 0);
        }
        slot.1 += attempts;
        slot.2 += logical;
    }

    /// Attempts and logical requests recorded in the last [`AMPLIFICATION_WINDOW_SECS`].
    pub fn window_counts(&self, now: Instant) -> (u64, u64) {
        let second = now.duration_since(self.origin).as_secs();
        self.slots
            .iter()
            .filter(|s| {
                s.0 != u64::MAX && s.0 <= second && second - s.0 < AMPLIFICATION_WINDOW_SECS
            })
            .fold((0, 0), |(a, l), s| (a + s.1, l + s.2))
    }

    /// Attempts per logical request over the window; 1 when nothing was recorded in it (no
    /// traffic amplifies nothing).
    pub fn amplification(&self, now: Instant) -> f64 {
        match self.window_counts(now) {
            (_, 0) => 1.0,
            (attempts, logical) => attempts as f64 / logical as f64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: Duration = Duration::from_secs(10);

    fn ms(base: Instant, ms: u64) -> Instant {
        base + Duration::from_millis(ms)
    }

    #[test]
    fn identical_requests_after_successes_are_new_logical_requests() {
        let mut t = RetryTracker::default();
        let b = Instant::now();
        for i in 0..100 {
            let r = t.record(
                Fingerprint::Hash(1),
                ms(b, i * 10),
                ms(b, i * 10 + 5),
                false,
                W,
            );
            assert!(!r.retry);
            assert_eq!(r.closed, vec![1]);
        }
        assert_eq!(t.window_counts(ms(b, 1000)), (100, 100));
        assert_eq!(t.amplification(ms(b, 1000)), 1.0);
    }

    #[test]
    fn successes_without_a_failure_before_them_leave_nothing_behind() {
        let mut t = RetryTracker::default();
        let b = Instant::now();
        for i in 0..1000 {
            t.record(Fingerprint::Hash(i), ms(b, i), ms(b, i + 1), false, W);
        }
        assert_eq!(t.tracked(), 0);
        t.record(Fingerprint::Hash(1), ms(b, 2000), ms(b, 2001), true, W);
        assert_eq!(t.tracked(), 1, "a failure is remembered");
    }

    #[test]
    fn a_request_after_a_failure_is_a_retry_until_a_success() {
        let mut t = RetryTracker::default();
        let b = Instant::now();
        let fp = || Fingerprint::Hash(7);
        assert!(!t.record(fp(), ms(b, 0), ms(b, 10), true, W).retry);
        assert!(t.record(fp(), ms(b, 20), ms(b, 30), true, W).retry);
        let third = t.record(fp(), ms(b, 40), ms(b, 50), false, W);
        assert!(third.retry);
        assert_eq!(
            third.closed,
            vec![3],
            "one logical request of three attempts"
        );
        // The success closed it: the next identical request is new.
        assert!(!t.record(fp(), ms(b, 60), ms(b, 70), false, W).retry);
        assert_eq!(t.window_counts(ms(b, 100)), (4, 2));
        assert_eq!(t.amplification(ms(b, 100)), 2.0);
    }

    #[test]
    fn a_failure_only_makes_retries_of_requests_that_started_after_it() {
        let mut t = RetryTracker::default();
        let b = Instant::now();
        // B started (at 5) before A failed (at 50): it overlapped, it did not retry A.
        t.record(Fingerprint::Hash(1), ms(b, 0), ms(b, 50), true, W);
        assert!(
            !t.record(Fingerprint::Hash(1), ms(b, 5), ms(b, 60), false, W)
                .retry
        );
        // Another fingerprint is unaffected.
        t.record(Fingerprint::Hash(2), ms(b, 0), ms(b, 1), true, W);
        assert!(
            !t.record(Fingerprint::Hash(3), ms(b, 2), ms(b, 3), false, W)
                .retry
        );
    }

    #[test]
    fn the_window_expires_failures_and_keys() {
        let mut t = RetryTracker::default();
        let b = Instant::now();
        t.record(Fingerprint::Hash(1), ms(b, 0), ms(b, 0), true, W);
        assert!(
            !t.record(Fingerprint::Hash(1), ms(b, 10_001), ms(b, 10_002), true, W)
                .retry
        );
        let key = || Fingerprint::Key("idempotency-key: a".into());
        t.record(key(), ms(b, 0), ms(b, 1), false, W);
        assert!(t.record(key(), ms(b, 9_999), ms(b, 10_000), false, W).retry);
        assert!(
            !t.record(key(), ms(b, 20_000), ms(b, 20_001), false, W)
                .retry
        );
    }

    #[test]
    fn keys_repeat_even_after_a_success() {
        let mut t = RetryTracker::default();
        let b = Instant::now();
        let key = || Fingerprint::Key("x-request-id: 42".into());
        assert!(!t.record(key(), ms(b, 0), ms(b, 5), false, W).retry);
        assert!(t.record(key(), ms(b, 10), ms(b, 15), false, W).retry);
    }

    #[test]
    fn expiry_closes_open_logical_requests_and_forgets_them() {
        let mut t = RetryTracker::default();
        let b = Instant::now();
        t.record(Fingerprint::Hash(1), ms(b, 0), ms(b, 1), true, W);
        t.record(Fingerprint::Hash(1), ms(b, 2), ms(b, 3), true, W);
        assert_eq!(t.tracked(), 1);
        assert_eq!(t.expire(ms(b, 10_004), W), vec![2]);
        assert_eq!(t.tracked(), 0);
    }

    #[test]
    fn amplification_slides() {
        let mut t = RetryTracker::default();
        let b = t.origin;
        t.record(Fingerprint::Hash(1), ms(b, 0), ms(b, 1), true, W);
        t.record(Fingerprint::Hash(1), ms(b, 2), ms(b, 3), false, W);
        assert_eq!(t.amplification(ms(b, 59_000)), 2.0);
        assert_eq!(
            t.amplification(ms(b, 61_000)),
            1.0,
            "the window moved past them"
        );
    }
}
