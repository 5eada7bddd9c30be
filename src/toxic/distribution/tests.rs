//! Distribution fidelity: Kolmogorov–Smirnov tests on 10,000 seeded samples per distribution,
//! correlation that keeps the marginal, clamps, and every validation error.

use std::sync::Arc;

use rand::SeedableRng;
use rand::rngs::SmallRng;
use rstest::rstest;
use serde_json::{Value, json};

use super::*;
use crate::toxic::{ToxicKind, ToxicSpec};

const N: usize = 10_000;

/// The KS critical distance at the 1 % level for `n` samples.
fn ks_critical(n: usize) -> f64 {
    1.628 / (n as f64).sqrt()
}

/// The KS distance between samples and a CDF. Ties (discrete targets) are compared as steps:
/// at each distinct value, the empirical CDF just before and at it.
fn ks_distance(mut samples: Vec<f64>, cdf: impl Fn(f64) -> f64) -> f64 {
    samples.sort_by(f64::total_cmp);
    let n = samples.len() as f64;
    let mut d: f64 = 0.0;
    let mut i = 0;
    while i < samples.len() {
        let x = samples[i];
        let mut j = i;
        while j < samples.len() && samples[j] == x {
            j += 1;
        }
        let below = cdf(x - f64::EPSILON * x.abs().max(1.0));
        d = d
            .max((below - i as f64 / n).abs())
            .max((cdf(x) - j as f64 / n).abs());
        i = j;
    }
    d
}

fn draw(dist: &Distribution, correlation: f64, seed: u64, n: usize) -> Vec<f64> {
    let mut sampler = Sampler::new(dist.clone(), correlation);
    let mut rng = SmallRng::seed_from_u64(seed);
    (0..n).map(|_| sampler.next(&mut rng)).collect()
}

fn distributions() -> Vec<(&'static str, Distribution)> {
    vec![
        (
            "uniform",
            Distribution::Uniform {
                min: 5.0,
                max: 25.0,
            },
        ),
        (
            "normal",
            Distribution::Normal {
                mean: 100.0,
                stddev: 15.0,
            },
        ),
        (
            "lognormal",
            Distribution::lognormal_from_quantiles(20.0, 300.0),
        ),
        (
            "lognormal-mu-sigma",
            Distribution::LogNormal {
                mu: 1.0,
                sigma: 0.5,
            },
        ),
        (
            "pareto",
            Distribution::Pareto {
                scale: 10.0,
                shape: 2.5,
            },
        ),
        (
            "pareto-heavy",
            Distribution::Pareto {
                scale: 1.0,
                shape: 0.8,
            },
        ),
        ("exponential", Distribution::Exponential { mean: 40.0 }),
    ]
}

/// 10,000 samples per test, 20 fixed seeds per distribution. At the 1 % level an exact sampler
/// still fails about one seed in a hundred, so the test allows 2 of 20 and also checks that the
/// mean distance is what theory says for a correct sampler (about 0.87/√n). A biased sampler
/// fails both by a wide margin. Deterministic: the seeds are fixed.
#[test]
fn every_distribution_passes_a_ks_test_at_one_percent() {
    for (name, dist) in distributions() {
        let ds: Vec<f64> = (0..20)
            .map(|seed| ks_distance(draw(&dist, 0.0, seed, N), |x| dist.cdf(x)))
            .collect();
        let failures = ds.iter().filter(|d| **d >= ks_critical(N)).count();
        let mean = ds.iter().sum::<f64>() / ds.len() as f64;
        assert!(
            failures <= 2,
            "{name}: {failures}/20 seeds fail KS at 1 %: {ds:.4?}"
        );
        assert!(
            (0.007..0.0105).contains(&mean),
            "{name}: mean KS distance {mean:.4}"
        );
    }
}

#[test]
fn empirical_reproduces_its_samples() {
    let values: Vec<f64> = (0..200).map(|i| f64::from(i * i % 97)).collect();
    let mut sorted = values.clone();
    sorted.sort_by(f64::total_cmp);
    let dist = Distribution::Empirical(Arc::new(sorted));
    let samples = draw(&dist, 0.0, 7, N);
    assert!(samples.iter().all(|s| values.contains(s)));
    // Discrete: compare with the empirical CDF (KS is conservative for discrete targets).
    let d = ks_distance(samples, |x| dist.cdf(x));
    assert!(d < ks_critical(N), "KS distance {d:.4}");
}

#[test]
fn correlation_keeps_the_marginal_and_links_successive_delays() {
    let dist = Distribution::lognormal_from_quantiles(20.0, 300.0);
    for rho in [0.5, 0.9] {
        let samples = draw(&dist, rho, 99, 50 * N);
        // Correlated samples are worth fewer independent ones: check the marginal on every
        // 20th sample (nearly independent at these ρ), which must pass the plain KS test.
        let thinned: Vec<f64> = samples.iter().step_by(20).copied().collect();
        let d = ks_distance(thinned.clone(), |x| dist.cdf(x));
        assert!(
            d < ks_critical(thinned.len()),
            "ρ={rho}: KS distance {d:.4}"
        );
        // Lag-1 correlation of the underlying normal scores is ρ.
        let z: Vec<f64> = samples.iter().map(|x| x.ln()).collect();
        let mean = z.iter().sum::<f64>() / z.len() as f64;
        let var = z.iter().map(|v| (v - mean).powi(2)).sum::<f64>();
        let cov = z
            .windows(2)
            .map(|w| (w[0] - mean) * (w[1] - mean))
            .sum::<f64>();
        let r = cov / var;
        assert!((r - rho).abs() < 0.02, "ρ={rho}: lag-1 correlation {r:.3}");
    }
}

#[test]
fn seeds_reproduce_the_same_sequence() {
    let dist = Distribution::Pareto {
        scale: 10.0,
        shape: 2.5,
    };
    assert_eq!(draw(&dist, 0.3, 42, 100), draw(&dist, 0.3, 42, 100));
    assert_ne!(draw(&dist, 0.3, 42, 100), draw(&dist, 0.3, 43, 100));
}

#[test]
fn lognormal_fit_hits_its_quantiles() {
    let dist = Distribution::lognormal_from_quantiles(20.0, 300.0);
    assert!((dist.quantile(0.5) - 20.0).abs() < 1e-6);
    assert!((dist.quantile(0.99) - 300.0).abs() < 1e-3);
    assert!((dist.cdf(300.0) - 0.99).abs() < 1e-6);
}

#[test]
fn phi_and_its_inverse_agree() {
    for p in [1e-6, 0.001, 0.02, 0.3, 0.5, 0.77, 0.99, 0.999_99] {
        let z = phi_inverse(p);
        assert!(
            (phi(z) - p).abs() < 1e-6 * p.max(1e-3),
            "p={p} z={z} phi={}",
            phi(z)
        );
    }
    assert!((phi(0.0) - 0.5).abs() < 1e-7);
    assert!((phi(1.96) - 0.975).abs() < 1e-4);
}

fn latency(attributes: Value) -> Result<ToxicKind, crate::toxic::AttrError> {
    ToxicKind::decode("latency", attributes)
}

#[rstest]
#[case(json!({"distribution": "gauss"}), "attributes.distribution", "unknown distribution")]
#[case(json!({"distribution": "uniform", "max": 5}), "attributes.min", "required")]
#[case(json!({"distribution": "uniform", "min": 10, "max": 5}), "attributes.max", "at least min")]
#[case(json!({"distribution": "uniform", "min": -1, "max": 5}), "attributes.min", "negative")]
#[case(json!({"distribution": "normal", "mean": 10}), "attributes.stddev", "required")]
#[case(json!({"distribution": "normal", "mean": 10, "stddev": -2}), "attributes.stddev", "negative")]
#[case(json!({"distribution": "lognormal", "p50": "20ms"}), "attributes.p99", "required")]
#[case(json!({"distribution": "lognormal", "p50": "20ms", "p99": "10ms"}), "attributes.p99", "at least p50")]
#[case(json!({"distribution": "lognormal", "p50": 0, "p99": 10}), "attributes.p50", "greater than 0")]
#[case(json!({"distribution": "lognormal", "mu": 1.0, "sigma": -1.0}), "attributes.sigma", "negative")]
#[case(json!({"distribution": "lognormal"}), "attributes.p50", "p50 and p99, or mu and sigma")]
#[case(json!({"distribution": "pareto", "scale": 10, "shape": 0}), "attributes.shape", "greater than 0")]
#[case(json!({"distribution": "pareto", "scale": 10, "shape": -1.5}), "attributes.shape", "greater than 0")]
#[case(json!({"distribution": "pareto", "shape": 2}), "attributes.scale", "required")]
#[case(json!({"distribution": "exponential", "mean": 0}), "attributes.mean", "greater than 0")]
#[case(json!({"distribution": "empirical"}), "attributes.samples", "samples")]
#[case(json!({"distribution": "empirical", "samples": []}), "attributes.samples", "no samples")]
#[case(json!({"distribution": "empirical", "samples": [1, -2]}), "attributes.samples[1]", "negative")]
#[case(json!({"distribution": "empirical", "file": "/nonexistent/delays.txt"}), "attributes.file", "cannot read")]
#[case(json!({"correlation": 1.5}), "attributes.correlation", "within 0..1")]
#[case(json!({"correlation": -0.1}), "attributes.correlation", "within 0..1")]
#[case(json!({"min": 50, "max": 10}), "attributes.max", "at least min")]
#[case(json!({"per": "packet"}), "attributes.per", "\"chunk\", \"connection\" or \"request\"")]
#[case(json!({"per_byte": -1.0}), "attributes.per_byte", "negative")]
#[case(json!({"shape": "wide", "distribution": "pareto", "scale": 1}), "attributes.shape", "invalid type")]
fn bad_latency_attributes_name_the_attribute(
    #[case] attributes: Value,
    #[case] path: &str,
    #[case] needle: &str,
) {
    let err = latency(attributes).unwrap_err();
    assert_eq!(err.path, path, "{err}");
    assert!(
        err.message.contains(needle),
        "{:?} should contain {needle:?}",
        err.message
    );
}

#[test]
fn empirical_files_take_milliseconds_and_durations() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("delays.txt");
    std::fs::write(&path, "# measured\n12.5\n\n30ms\n1s\n").unwrap();
    let kind = latency(json!({"distribution": "empirical", "file": path})).unwrap();
    let ToxicKind::Latency(attrs) = &kind else {
        panic!()
    };
    let model = attrs.model.as_ref().unwrap();
    assert_eq!(
        model.distribution(),
        &Distribution::Empirical(Arc::new(vec![12.5, 30.0, 1000.0]))
    );
    // The file path is what the API shows, not the samples.
    assert_eq!(kind.attributes()["file"], json!(path));
    // A bad line is named by number and never quoted: the file may hold anything.
    std::fs::write(&path, "1ms\nsecret-token\n").unwrap();
    let err = latency(json!({"distribution": "empirical", "file": path})).unwrap_err();
    assert!(err.message.contains(":2: not a delay"), "{err}");
    assert!(!err.message.contains("secret"), "{err}");
    std::fs::write(&path, "-5\n").unwrap();
    let err = latency(json!({"distribution": "empirical", "file": path})).unwrap_err();
    assert!(err.message.contains(":1: not a delay"), "{err}");
    std::fs::write(&path, "# nothing\n").unwrap();
    let err = latency(json!({"distribution": "empirical", "file": path})).unwrap_err();
    assert!(err.message.contains("no samples"), "{err}");
}

#[test]
fn extension_attributes_show_only_when_set() {
    let plain = latency(json!({"latency": 5})).unwrap();
    assert_eq!(
        plain.attributes(),
        json!({"latency": 5, "jitter": 0})
            .as_object()
            .unwrap()
            .clone()
    );
    let fancy = latency(
        json!({"distribution": "lognormal", "p50": "20ms", "p99": "300ms", "correlation": 0.25}),
    )
    .unwrap();
    assert_eq!(
        Value::Object(fancy.attributes()),
        json!({"latency": 0, "jitter": 0, "distribution": "lognormal", "p50": 20, "p99": 300, "correlation": 0.25})
    );
}

#[test]
fn clamps_per_connection_and_per_byte() {
    use tokio::time::Instant;

    use crate::toxic::{Chunk, ToxicCx};
    let spec = |attrs: Value| ToxicSpec {
        name: "l".into(),
        stream: "downstream".into(),
        direction: crate::toxic::Direction::Downstream,
        toxicity: 1.0,
        kind: latency(attrs).unwrap(),
        matcher: None,
        ttl: None,
        expires_at: None,
        owner: None,
    };
    let mut cx = ToxicCx {
        rng: SmallRng::seed_from_u64(1),
    };
    let now = Instant::now();
    let chunk = |len: usize| Chunk {
        data: bytes::Bytes::from(vec![0u8; len]),
        at: now,
    };
    let delays = |s: &ToxicSpec, cx: &mut ToxicCx, n: usize, len: usize| -> Vec<f64> {
        let mut t = s.kind.instantiate(now, s.direction, cx);
        (0..n)
            .map(|_| {
                let mut out = Vec::new();
                t.on_chunk(chunk(len), cx, &mut out);
                (out[0].at - now).as_secs_f64() * 1e3
            })
            .collect()
    };
    let clamped = spec(json!({"distribution": "exponential", "mean": 50, "min": 10, "max": 60}));
    for d in delays(&clamped, &mut cx, 2000, 1) {
        assert!((10.0 - 1e-6..=60.0 + 1e-6).contains(&d), "{d}");
    }
    let once = spec(json!({"latency": 30, "per": "connection"}));
    let got = delays(&once, &mut cx, 3, 1);
    assert!(
        (got[0] - 30.0).abs() < 1e-6 && got[1] == 0.0 && got[2] == 0.0,
        "{got:?}"
    );
    // 20 µs per 1000 bytes: 64 KB costs 1.31 ms more than 1 byte.
    let costly = spec(json!({"latency": 1, "per_byte": 20.0}));
    let got = delays(&costly, &mut cx, 1, 65_536);
    assert!(
        (got[0] - (1.0 + 20.0 * 65.536 / 1000.0)).abs() < 1e-6,
        "{got:?}"
    );
}
