//! A lock-free latency histogram with about 1.6 % resolution from 1 µs to days.
//!
//! Prometheus histograms have a dozen fixed buckets: fine for a dashboard, too coarse to say
//! which timeout keeps false alarms under 0.1 %. This one keeps 64 linear sub-buckets per power
//! of two (an HDR layout), so any quantile is known to within 1/64 of its value, and recording
//! is one atomic add, safe from every connection at once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Sub-buckets per power of two, and the count of exact buckets below the first power.
const SUB: u64 = 64;
const SUB_BITS: u32 = 6;
/// Powers of two kept above the exact range: 2^6 µs .. 2^46 µs (about 2.2 years).
const POWERS: u64 = 40;
const BUCKETS: usize = (SUB + POWERS * SUB) as usize;

/// Counts of durations in microseconds.
pub struct LogHistogram {
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl std::fmt::Debug for LogHistogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogHistogram")
            .field("count", &self.count())
            .finish_non_exhaustive()
    }
}

impl Default for LogHistogram {
    fn default() -> Self {
        LogHistogram {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }
}

fn index(micros: u64) -> usize {
    if micros < SUB {
        return micros as usize;
    }
    let power = u64::from(63 - micros.leading_zeros()); // >= SUB_BITS
    let shift = power - u64::from(SUB_BITS);
    let sub = (micros >> shift) - SUB; // 0..SUB
    let i = SUB + shift * SUB + sub;
    (i as usize).min(BUCKETS - 1)
}

/// The largest value (µs) that lands in bucket `i`.
fn upper(i: usize) -> u64 {
    let i = i as u64;
    if i < SUB {
        return i;
    }
    let shift = (i - SUB) / SUB;
    let sub = (i - SUB) % SUB;
    ((SUB + sub + 1) << shift) - 1
}

impl LogHistogram {
    /// Counts one duration.
    pub fn record(&self, d: Duration) {
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.buckets[index(micros)].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// How many durations were counted.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// A consistent-enough copy for a computation: bucket counts and their total.
    pub fn snapshot(&self) -> Snapshot {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let total = counts.iter().sum();
        let sum = Duration::from_micros(self.sum_micros.load(Ordering::Relaxed));
        Snapshot { counts, total, sum }
    }

    /// Forgets everything counted.
    pub fn clear(&self) {
        for b in self.buckets.iter() {
            b.store(0, Ordering::Relaxed);
        }
        self.count.store(0, Ordering::Relaxed);
        self.sum_micros.store(0, Ordering::Relaxed);
    }
}

/// A frozen copy of a [`LogHistogram`].
#[derive(Debug, Clone)]
pub struct Snapshot {
    counts: Vec<u64>,
    total: u64,
    sum: Duration,
}

impl Snapshot {
    /// Samples in the copy.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// The `rank`-th smallest sample (1-based), rounded up to its bucket's upper edge so that a
    /// timeout set to it is never shorter than the sample. `None` when `rank` is out of range.
    pub fn at_rank(&self, rank: u64) -> Option<Duration> {
        if rank == 0 || rank > self.total {
            return None;
        }
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(Duration::from_micros(upper(i)));
            }
        }
        None
    }

    /// The fraction of samples longer than `d` (a timeout of `d` would have cut them off);
    /// `None` when empty. Samples in the bucket that holds `d` count as not longer, so the
    /// figure is exact to the bucket's 1/64.
    pub fn fraction_above(&self, d: Duration) -> Option<f64> {
        if self.total == 0 {
            return None;
        }
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let last = index(micros);
        let within: u64 = self.counts[..=last].iter().sum();
        Some((self.total - within) as f64 / self.total as f64)
    }

    /// Prometheus histogram lines (`_bucket` per bound in seconds, `+Inf`, `_sum`, `_count`)
    /// for a series labelled `labels` (such as `proxy="web"`). A sample counts under a bound
    /// when its whole bucket lies under it, so a count is exact to the bucket's 1/64.
    pub fn write_prometheus(&self, out: &mut String, name: &str, labels: &str, bounds: &[f64]) {
        use std::fmt::Write;
        let mut i = 0;
        let mut below = 0;
        for &le in bounds {
            let limit = (le * 1e6) as u64;
            while i < self.counts.len() && upper(i) <= limit {
                below += self.counts[i];
                i += 1;
            }
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {below}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", self.total);
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", self.sum.as_secs_f64());
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", self.total);
    }

    /// What was counted between `earlier` (a copy of the same histogram) and this copy: the
    /// figures of one interval, such as a scenario's phase.
    pub fn since(&self, earlier: &Snapshot) -> Snapshot {
        let counts: Vec<u64> = self
            .counts
            .iter()
            .zip(earlier.counts.iter().chain(std::iter::repeat(&0)))
            .map(|(now, then)| now.saturating_sub(*then))
            .collect();
        Snapshot {
            total: counts.iter().sum(),
            counts,
            sum: self.sum.saturating_sub(earlier.sum),
        }
    }

    /// Adds another histogram's counts, so that several proxies read as one.
    pub fn merge(&mut self, other: &Snapshot) {
        if self.counts.len() < other.counts.len() {
            self.counts.resize(other.counts.len(), 0);
        }
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine += theirs;
        }
        self.total += other.total;
        self.sum += other.sum;
    }

    /// An empty copy, to merge into.
    pub fn empty() -> Snapshot {
        Snapshot {
            counts: Vec::new(),
            total: 0,
            sum: Duration::ZERO,
        }
    }

    /// The `q` quantile (0..=1) by the nearest-rank method; `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        self.at_rank(rank)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_lands_in_a_bucket_whose_upper_edge_is_within_one_sixty_fourth() {
        for v in (0..5000u64)
            .chain((0..40).map(|p| 1u64 << p))
            .chain([u64::MAX / 4])
        {
            let i = index(v);
            let up = upper(i);
            if i == BUCKETS - 1 {
                // Beyond two years: clamped into the last bucket.
                continue;
            }
            assert!(up >= v, "value {v}: upper {up}");
            if i > 0 {
                assert!(upper(i - 1) < v, "value {v} belongs to an earlier bucket");
            }
            if v >= SUB {
                assert!((up - v) as f64 <= v as f64 / 64.0, "value {v}: upper {up}");
            }
        }
    }

    #[test]
    fn quantiles_follow_nearest_rank() {
        let h = LogHistogram::default();
        for ms in 1..=100 {
            h.record(Duration::from_millis(ms));
        }
        let s = h.snapshot();
        assert_eq!(s.total(), 100);
        let p99 = s.quantile(0.99).unwrap();
        assert!(p99 >= Duration::from_millis(99) && p99 < Duration::from_micros(99 * 1000 + 1600));
        assert!(s.quantile(0.0).unwrap() >= Duration::from_millis(1));
        assert_eq!(s.at_rank(101), None);
        assert_eq!(s.fraction_above(Duration::from_millis(90)), Some(0.1));
        assert_eq!(s.fraction_above(Duration::from_millis(100)), Some(0.0));
        assert_eq!(s.fraction_above(Duration::ZERO), Some(1.0));
        let mut text = String::new();
        s.write_prometheus(&mut text, "x_seconds", "proxy=\"p\"", &[0.05, 0.1]);
        // 50 ms and 100 ms sit in buckets that reach a little past the bound: counted above.
        assert_eq!(
            text,
            "x_seconds_bucket{proxy=\"p\",le=\"0.05\"} 49\n\
             x_seconds_bucket{proxy=\"p\",le=\"0.1\"} 99\n\
             x_seconds_bucket{proxy=\"p\",le=\"+Inf\"} 100\n\
             x_seconds_sum{proxy=\"p\"} 5.05\n\
             x_seconds_count{proxy=\"p\"} 100\n"
        );
        // An interval's figures are the difference of two copies; copies merge.
        let before = h.snapshot();
        for _ in 0..10 {
            h.record(Duration::from_millis(500));
        }
        let interval = h.snapshot().since(&before);
        assert_eq!(interval.total(), 10);
        assert!(interval.quantile(0.01).unwrap() >= Duration::from_millis(500));
        let mut both = Snapshot::empty();
        both.merge(&interval);
        both.merge(&before);
        assert_eq!(both.total(), 110);
        let p50 = both.quantile(0.5).unwrap();
        assert!(p50 >= Duration::from_millis(55) && p50 < Duration::from_micros(55_900));
        h.clear();
        assert_eq!(h.snapshot().quantile(0.5), None);
        assert_eq!(h.snapshot().fraction_above(Duration::ZERO), None);
    }
}
