//! Timeout advice: the smallest timeout whose false-timeout rate stays within a target.
//!
//! A timeout T would have fired falsely on every request that eventually succeeded but took
//! longer than T. Over `n` such durations, the estimate is the order statistic with at most
//! `n * rate` samples above it. That alone is optimistic on few samples, so the answer also
//! carries a distribution-free upper confidence bound (from the binomial law of the count above
//! the true quantile), and refuses to answer when not even the largest sample is a bound at
//! that confidence: the "rule of three" says about `3 / rate` samples are needed.

use std::time::Duration;

use super::histogram::Snapshot;

/// The confidence of the upper bound.
pub const CONFIDENCE: f64 = 0.95;

/// An answer for one target rate.
#[derive(Debug, Clone, PartialEq)]
pub struct Advice {
    /// The smallest timeout that at most `rate` of the observed successes exceeded.
    pub timeout: Duration,
    /// A timeout that keeps the true rate within the target with [`CONFIDENCE`].
    pub timeout_at_confidence: Duration,
    /// Durations the answer rests on.
    pub samples: u64,
}

/// Why there is no answer.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum NoAdvice {
    /// The rate is not strictly between 0 and 1.
    #[error("false_timeout_rate must be a number strictly between 0 and 1, got {0}")]
    BadRate(f64),
    /// Too few samples for the bound to exist.
    #[error(
        "not enough data: {samples} successful requests observed, at least {needed} needed to advise for a false-timeout rate of {rate} at {confidence}% confidence",
        confidence = CONFIDENCE * 100.0
    )]
    NotEnoughData {
        /// The rate asked for.
        rate: f64,
        /// Samples there are.
        samples: u64,
        /// Samples needed.
        needed: u64,
    },
}

/// Advises from the durations of requests that succeeded.
pub fn advise(durations: &Snapshot, rate: f64) -> Result<Advice, NoAdvice> {
    if !(rate > 0.0 && rate < 1.0) {
        return Err(NoAdvice::BadRate(rate));
    }
    let n = durations.total();
    // With m samples allowed above it, the order statistic n - m is the point estimate.
    let allowed = (n as f64 * rate).floor() as u64;
    let bound = max_above_at_confidence(n, rate);
    let (Some(above), Some(timeout)) = (bound, durations.at_rank(n - allowed)) else {
        return Err(NoAdvice::NotEnoughData {
            rate,
            samples: n,
            needed: samples_needed(rate),
        });
    };
    let timeout_at_confidence = durations.at_rank(n - above).unwrap_or(timeout);
    Ok(Advice {
        timeout,
        timeout_at_confidence,
        samples: n,
    })
}

/// The fewest samples for which the largest one bounds the `1 - rate` quantile at
/// [`CONFIDENCE`]: the smallest n with (1 - rate)^n <= 1 - CONFIDENCE.
pub fn samples_needed(rate: f64) -> u64 {
    // ln_1p: `(1.0 - rate).ln()` is exactly 0 below rate ~1e-16, which made this 0. The cast
    // saturates for the tiniest rates.
    ((1.0 - CONFIDENCE).ln() / (-rate).ln_1p()).ceil() as u64
}

/// The most samples that may lie above the order statistic used as the bound: the largest m
/// with P(Binomial(n, rate) <= m) <= 1 - CONFIDENCE. Then the statistic n - m is at least the
/// true `1 - rate` quantile with probability CONFIDENCE. `None` when even m = 0 fails.
fn max_above_at_confidence(n: u64, rate: f64) -> Option<u64> {
    if n == 0 {
        return None;
    }
    let alpha = 1.0 - CONFIDENCE;
    let (nf, mean) = (n as f64, n as f64 * rate);
    let var = mean * (1.0 - rate);
    if var > 400.0 {
        // The normal approximation is accurate here, and the exact sum would be long.
        let m = mean - 1.644_853_626_951_472_2 * var.sqrt() - 0.5;
        return (m >= 0.0).then(|| m.floor() as u64);
    }
    // Exact, in log space: (1 - rate)^n underflows for large n.
    let (lp, lq) = (rate.ln(), (1.0 - rate).ln());
    let mut log_pmf = nf * lq;
    let mut log_cdf = log_pmf;
    if log_cdf > alpha.ln() {
        return None;
    }
    let mut m = 0u64;
    while m < n {
        let k = m as f64;
        log_pmf += (nf - k).ln() - (k + 1.0).ln() + lp - lq;
        let next = log_add(log_cdf, log_pmf);
        if next > alpha.ln() {
            break;
        }
        log_cdf = next;
        m += 1;
    }
    Some(m)
}

fn log_add(a: f64, b: f64) -> f64 {
    let (hi, lo) = if a > b { (a, b) } else { (b, a) };
    hi + (lo - hi).exp().ln_1p()
}

#[cfg(test)]
mod tests {
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};

    use super::super::histogram::LogHistogram;
    use super::*;

    fn exponential(n: usize, mean_ms: f64, seed: u64) -> Snapshot {
        let h = LogHistogram::default();
        let mut rng = SmallRng::seed_from_u64(seed);
        for _ in 0..n {
            let u: f64 = rng.random();
            h.record(Duration::from_secs_f64(-mean_ms / 1000.0 * (1.0 - u).ln()));
        }
        h.snapshot()
    }

    #[test]
    fn matches_the_analytic_quantile_of_an_exponential() {
        // For an exponential with mean μ, P(X > T) = rate at T = -μ ln(rate).
        let (mean, rate) = (20.0, 0.01);
        let analytic = -mean * f64::ln(rate);
        let a = advise(&exponential(100_000, mean, 7), rate).unwrap();
        let got = a.timeout.as_secs_f64() * 1000.0;
        assert!(
            (got - analytic).abs() / analytic < 0.03,
            "{got} ms vs {analytic} ms"
        );
        assert!(a.timeout_at_confidence >= a.timeout);
        let bound = a.timeout_at_confidence.as_secs_f64() * 1000.0;
        assert!(
            bound < analytic * 1.06,
            "the bound is tight on 100k samples: {bound}"
        );
        assert_eq!(a.samples, 100_000);
    }

    #[test]
    fn the_bound_covers_the_true_quantile_about_as_often_as_it_says() {
        let (mean, rate) = (10.0, 0.05);
        let analytic = Duration::from_secs_f64(-mean * f64::ln(rate) / 1000.0);
        let covered = (0..200)
            .filter(|s| {
                advise(&exponential(300, mean, *s), rate)
                    .unwrap()
                    .timeout_at_confidence
                    >= analytic
            })
            .count();
        // 95 % nominal; the histogram's rounding up adds a little.
        assert!((180..=200).contains(&covered), "covered {covered} of 200");
    }

    #[test]
    fn refuses_without_enough_samples_and_says_how_many_it_needs() {
        assert_eq!(samples_needed(0.001), 2995);
        assert_eq!(samples_needed(0.05), 59);
        // Below ~1e-16, 1 - rate rounds to 1: the count must still grow, not fall to 0.
        assert_eq!(samples_needed(1e-17), 299_573_227_355_398_976);
        assert_eq!(samples_needed(1e-300), u64::MAX);
        let few = exponential(58, 10.0, 1);
        assert_eq!(
            advise(&few, 0.05),
            Err(NoAdvice::NotEnoughData {
                rate: 0.05,
                samples: 58,
                needed: 59
            })
        );
        assert!(advise(&exponential(59, 10.0, 1), 0.05).is_ok());
        let msg = advise(&few, 0.05).unwrap_err().to_string();
        assert!(msg.contains("58") && msg.contains("59"), "{msg}");
    }

    #[test]
    fn refuses_rates_outside_zero_to_one() {
        let s = exponential(10, 1.0, 1);
        for rate in [0.0, 1.0, -0.1, 1.5, f64::NAN] {
            assert!(
                matches!(advise(&s, rate), Err(NoAdvice::BadRate(_))),
                "{rate}"
            );
        }
    }

    #[test]
    fn the_normal_and_exact_paths_agree_where_they_meet() {
        // var = n p (1-p) just under and over 400.
        let p = 0.1;
        let exact = max_above_at_confidence(4400, p).unwrap();
        let normal = max_above_at_confidence(4500, p).unwrap();
        assert!(
            (normal as i64 - exact as i64 - 10).abs() <= 3,
            "{exact} {normal}"
        );
    }
}
