//! Delay distributions for the `latency` toxic, and the one mechanism that samples them all.
//!
//! Every sample starts as a standard normal `z`. Successive `z`s are correlated as an AR(1)
//! process, `z = ρ·z_prev + √(1-ρ²)·ε`, which keeps `z` standard normal whatever ρ is. The
//! delay is then `F⁻¹(Φ(z))` for the requested CDF `F` (a Gaussian copula): the *marginal*
//! distribution is exactly the one requested, with or without correlation. (netem's correlation
//! blends successive values instead, which narrows the distribution it promised.) Normal and
//! lognormal use `z` directly.
//!
//! All values are milliseconds as `f64`, so sub-millisecond delays survive.

use std::sync::Arc;

use rand::Rng;
use rand_distr::StandardNormal;

/// A delay distribution, in milliseconds.
#[derive(Debug, Clone, PartialEq)]
pub enum Distribution {
    /// Always the same delay.
    Constant(f64),
    /// Uniform on `[min, max]`.
    Uniform {
        /// Lower bound.
        min: f64,
        /// Upper bound.
        max: f64,
    },
    /// Normal; negative draws become 0.
    Normal {
        /// Mean.
        mean: f64,
        /// Standard deviation.
        stddev: f64,
    },
    /// Lognormal: `ln(delay in ms)` is normal with these parameters (μ = ln of the median).
    LogNormal {
        /// μ.
        mu: f64,
        /// σ.
        sigma: f64,
    },
    /// Pareto: `F(x) = 1 - (scale/x)^shape` for `x ≥ scale`.
    Pareto {
        /// The minimum value.
        scale: f64,
        /// The tail index; smaller is heavier.
        shape: f64,
    },
    /// Exponential with this mean.
    Exponential {
        /// Mean.
        mean: f64,
    },
    /// Each sample drawn from these values, equally likely (sorted).
    Empirical(Arc<Vec<f64>>),
}

/// The z-score of the 99th percentile of a standard normal, used to fit a lognormal from its
/// p50 and p99.
pub const Z99: f64 = 2.326_347_874_040_841;

impl Distribution {
    /// A lognormal with this median and 99th percentile: σ = ln(p99/p50)/z₉₉, μ = ln p50.
    pub fn lognormal_from_quantiles(p50: f64, p99: f64) -> Distribution {
        Distribution::LogNormal {
            mu: p50.ln(),
            sigma: (p99 / p50).ln() / Z99,
        }
    }

    /// The delay for a standard-normal draw `z`.
    pub fn from_z(&self, z: f64) -> f64 {
        match self {
            Distribution::Normal { mean, stddev } => mean + stddev * z,
            Distribution::LogNormal { mu, sigma } => (mu + sigma * z).exp(),
            _ => self.quantile(phi(z)),
        }
    }

    /// The inverse CDF at `u` in (0, 1).
    pub fn quantile(&self, u: f64) -> f64 {
        let u = u.clamp(f64::MIN_POSITIVE, 1.0 - f64::EPSILON);
        match self {
            Distribution::Constant(v) => *v,
            Distribution::Uniform { min, max } => min + (max - min) * u,
            Distribution::Normal { mean, stddev } => mean + stddev * phi_inverse(u),
            Distribution::LogNormal { mu, sigma } => (mu + sigma * phi_inverse(u)).exp(),
            Distribution::Pareto { scale, shape } => scale * (1.0 - u).powf(-1.0 / shape),
            Distribution::Exponential { mean } => -mean * (1.0 - u).ln(),
            Distribution::Empirical(values) => {
                let i = ((u * values.len() as f64) as usize).min(values.len() - 1);
                values[i]
            }
        }
    }

    /// The CDF at `x` (used by tests and by the fidelity checks).
    pub fn cdf(&self, x: f64) -> f64 {
        match self {
            Distribution::Constant(v) => f64::from(u8::from(x >= *v)),
            Distribution::Uniform { min, max } => ((x - min) / (max - min)).clamp(0.0, 1.0),
            Distribution::Normal { mean, stddev } => phi((x - mean) / stddev),
            Distribution::LogNormal { mu, sigma } => {
                if x <= 0.0 {
                    0.0
                } else {
                    phi((x.ln() - mu) / sigma)
                }
            }
            Distribution::Pareto { scale, shape } => {
                if x < *scale {
                    0.0
                } else {
                    1.0 - (scale / x).powf(*shape)
                }
            }
            Distribution::Exponential { mean } => {
                if x < 0.0 {
                    0.0
                } else {
                    1.0 - (-x / mean).exp()
                }
            }
            Distribution::Empirical(values) => {
                values.partition_point(|v| *v <= x) as f64 / values.len() as f64
            }
        }
    }
}

/// Draws successive delays from a distribution, with optional correlation between them.
#[derive(Debug, Clone)]
pub struct Sampler {
    dist: Distribution,
    rho: f64,
    /// √(1-ρ²), cached.
    innovation: f64,
    z: Option<f64>,
}

impl Sampler {
    /// `correlation` must be within 0..=1.
    pub fn new(dist: Distribution, correlation: f64) -> Sampler {
        let rho = correlation.clamp(0.0, 1.0);
        Sampler {
            dist,
            rho,
            innovation: (1.0 - rho * rho).sqrt(),
            z: None,
        }
    }

    /// The next delay in milliseconds (may be negative for a normal; callers clamp).
    pub fn next(&mut self, rng: &mut impl Rng) -> f64 {
        let eps: f64 = rng.sample(StandardNormal);
        let z = match self.z {
            Some(prev) if self.rho > 0.0 => self.rho * prev + self.innovation * eps,
            _ => eps,
        };
        self.z = Some(z);
        self.dist.from_z(z)
    }
}

/// The standard normal CDF.
pub fn phi(z: f64) -> f64 {
    0.5 * erfc(-z / std::f64::consts::SQRT_2)
}

/// The complementary error function, to about 1.2e-7 relative error everywhere (the
/// Chebyshev-fitted form in Numerical Recipes, 2nd ed., section 6.2). Ample for sampling and
/// for KS tests at 10,000 samples (critical distance 0.016).
fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let r = t * poly.exp();
    if x >= 0.0 { r } else { 2.0 - r }
}

/// The inverse of [`phi`]: Acklam's rational approximation (relative error 1.15e-9).
pub fn phi_inverse(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969_683_028_665_376e1,
        2.209_460_984_245_205e2,
        -2.759_285_104_469_687e2,
        1.383_577_518_672_69e2,
        -3.066_479_806_614_716e1,
        2.506_628_277_459_239,
    ];
    const B: [f64; 5] = [
        -5.447_609_879_822_406e1,
        1.615_858_368_580_409e2,
        -1.556_989_798_598_866e2,
        6.680_131_188_771_972e1,
        -1.328_068_155_288_572e1,
    ];
    const C: [f64; 6] = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    const D: [f64; 4] = [
        7.784_695_709_041_462e-3,
        3.224_671_290_700_398e-1,
        2.445_134_137_142_996,
        3.754_408_661_907_416,
    ];
    const LOW: f64 = 0.024_25;
    if p < LOW {
        let q = (-2.0 * p.ln()).sqrt();
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    } else if p <= 1.0 - LOW {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    } else {
        let q = (-2.0 * (1.0 - p).ln()).sqrt();
        -(((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    }
}

#[cfg(test)]
mod tests;
