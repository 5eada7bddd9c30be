//! `latency`: every chunk waits for a delay drawn from a distribution.
//!
//! Without `distribution` it is Toxiproxy's toxic: `latency` ± uniform `jitter`. The delay
//! counts from the moment the chunk was read, not from when the previous chunk left, so a stream
//! under latency keeps its throughput (the chunks are pipelined).

use std::sync::Arc;
use std::time::Duration;

use super::distribution::{Distribution, Sampler};
use super::spec::{AttrError, LatencyAttrs, Millis};
use super::{Chunk, Toxic, ToxicCx, ToxicKind, Verdict};
use crate::units::parse_duration;

/// The distributions `distribution` accepts.
pub const DISTRIBUTIONS: &[&str] = &[
    "constant",
    "uniform",
    "normal",
    "lognormal",
    "pareto",
    "exponential",
    "empirical",
];

/// Validated latency settings, shared by every connection of a toxic.
#[derive(Debug, Clone, PartialEq)]
pub struct LatencyModel {
    dist: Distribution,
    /// Clamps, in ms.
    min: Option<f64>,
    max: Option<f64>,
    correlation: f64,
    per_connection: bool,
    /// Microseconds per 1000 bytes.
    per_kb_us: f64,
}

fn required(value: Option<Millis>, name: &str, dist: &str) -> Result<f64, AttrError> {
    value
        .map(Millis::as_ms)
        .ok_or_else(|| AttrError::attribute(name, format!("required by distribution {dist:?}")))
}

fn show(ms: f64) -> String {
    format!("{ms}ms")
}

fn finite(value: Option<f64>, name: &str) -> Result<Option<f64>, AttrError> {
    match value {
        Some(v) if !v.is_finite() => Err(AttrError::attribute(
            name,
            format!("must be a finite number, got {v}"),
        )),
        other => Ok(other),
    }
}

impl LatencyModel {
    /// Checks the attributes and builds the model. Every error names the attribute and what it
    /// accepts.
    pub fn build(a: &LatencyAttrs) -> Result<LatencyModel, AttrError> {
        let nonneg = |v: f64, name: &str| {
            if v < 0.0 {
                Err(AttrError::attribute(
                    name,
                    format!("must not be negative, got {}", show(v)),
                ))
            } else {
                Ok(v)
            }
        };
        let dist = match a.distribution.as_deref() {
            // Toxiproxy's model: negative values are accepted (and mean no delay).
            None => {
                let (l, j) = (a.latency.as_ms(), a.jitter.as_ms().max(0.0));
                if j > 0.0 {
                    Distribution::Uniform {
                        min: l - j,
                        max: l + j,
                    }
                } else {
                    Distribution::Constant(l)
                }
            }
            Some("constant") => Distribution::Constant(nonneg(a.latency.as_ms(), "latency")?),
            Some("uniform") => {
                let min = nonneg(required(a.min, "min", "uniform")?, "min")?;
                let max = required(a.max, "max", "uniform")?;
                if max < min {
                    return Err(AttrError::attribute(
                        "max",
                        format!("must be at least min ({}), got {}", show(min), show(max)),
                    ));
                }
                Distribution::Uniform { min, max }
            }
            Some("normal") => Distribution::Normal {
                mean: nonneg(required(a.mean, "mean", "normal")?, "mean")?,
                stddev: nonneg(required(a.stddev, "stddev", "normal")?, "stddev")?,
            },
            Some("lognormal") => {
                match (a.p50, a.p99, finite(a.mu, "mu")?, finite(a.sigma, "sigma")?) {
                    (Some(p50), Some(p99), _, _) => {
                        let (p50, p99) = (p50.as_ms(), p99.as_ms());
                        if p50 <= 0.0 {
                            return Err(AttrError::attribute(
                                "p50",
                                format!("must be greater than 0, got {}", show(p50)),
                            ));
                        }
                        if p99 < p50 {
                            return Err(AttrError::attribute(
                                "p99",
                                format!("must be at least p50 ({}), got {}", show(p50), show(p99)),
                            ));
                        }
                        Distribution::lognormal_from_quantiles(p50, p99)
                    }
                    (None, None, Some(mu), Some(sigma)) => {
                        if sigma < 0.0 {
                            return Err(AttrError::attribute(
                                "sigma",
                                format!("must not be negative, got {sigma}"),
                            ));
                        }
                        Distribution::LogNormal { mu, sigma }
                    }
                    (Some(_), None, _, _) => {
                        return Err(AttrError::attribute(
                            "p99",
                            "required with p50 by distribution \"lognormal\"",
                        ));
                    }
                    (None, Some(_), _, _) => {
                        return Err(AttrError::attribute(
                            "p50",
                            "required with p99 by distribution \"lognormal\"",
                        ));
                    }
                    _ => {
                        return Err(AttrError::attribute(
                            "p50",
                            "distribution \"lognormal\" needs p50 and p99, or mu and sigma",
                        ));
                    }
                }
            }
            Some("pareto") => {
                let scale = required(a.scale, "scale", "pareto")?;
                if scale <= 0.0 {
                    return Err(AttrError::attribute(
                        "scale",
                        format!("must be greater than 0, got {}", show(scale)),
                    ));
                }
                let shape = finite(a.shape, "shape")?.ok_or_else(|| {
                    AttrError::attribute("shape", "required by distribution \"pareto\"")
                })?;
                if shape <= 0.0 {
                    return Err(AttrError::attribute(
                        "shape",
                        format!("must be greater than 0, got {shape}"),
                    ));
                }
                Distribution::Pareto { scale, shape }
            }
            Some("exponential") => {
                let mean = required(a.mean, "mean", "exponential")?;
                if mean <= 0.0 {
                    return Err(AttrError::attribute(
                        "mean",
                        format!("must be greater than 0, got {}", show(mean)),
                    ));
                }
                Distribution::Exponential { mean }
            }
            Some("empirical") => Distribution::Empirical(Arc::new(empirical(a)?)),
            Some(other) => {
                return Err(AttrError::attribute(
                    "distribution",
                    format!(
                        "unknown distribution {other:?}; use one of {}",
                        DISTRIBUTIONS.join(", ")
                    ),
                ));
            }
        };
        let min = a
            .min
            .map(Millis::as_ms)
            .filter(|_| a.distribution.as_deref() != Some("uniform"));
        let max = a
            .max
            .map(Millis::as_ms)
            .filter(|_| a.distribution.as_deref() != Some("uniform"));
        if let (Some(lo), Some(hi)) = (min, max) {
            if hi < lo {
                return Err(AttrError::attribute(
                    "max",
                    format!("must be at least min ({}), got {}", show(lo), show(hi)),
                ));
            }
        }
        let correlation = finite(a.correlation, "correlation")?.unwrap_or(0.0);
        if !(0.0..=1.0).contains(&correlation) {
            return Err(AttrError::attribute(
                "correlation",
                format!("must be within 0..1, got {correlation}"),
            ));
        }
        let per_connection = match a.per.as_deref() {
            None | Some("chunk") => false,
            Some("connection") => true,
            // HTTP proxies only: the store refuses it on a TCP proxy, which knows which it is.
            Some("request") => false,
            Some(other) => {
                return Err(AttrError::attribute(
                    "per",
                    format!("must be \"chunk\", \"connection\" or \"request\", got {other:?}"),
                ));
            }
        };
        let per_kb_us = finite(a.per_byte, "per_byte")?.unwrap_or(0.0);
        if per_kb_us < 0.0 {
            return Err(AttrError::attribute(
                "per_byte",
                format!("must not be negative, got {per_kb_us}"),
            ));
        }
        Ok(LatencyModel {
            dist,
            min,
            max,
            correlation,
            per_connection,
            per_kb_us,
        })
    }

    /// The distribution (before clamps).
    pub fn distribution(&self) -> &Distribution {
        &self.dist
    }
}

/// The largest `file` of empirical samples read (a million delays take about 8 MB).
const MAX_SAMPLES_FILE: u64 = 16 * 1024 * 1024;

/// Reads a `file` of empirical samples: a regular file of at most [`MAX_SAMPLES_FILE`] bytes.
/// It is read while the request or config that names it is checked, so a device or a pipe
/// must not be read: `/dev/zero` never ends (fuzz target config_toml ran out of memory on
/// it; input kept in fuzz/regressions/config_toml/), and a FIFO would block the admin API's
/// thread.
fn read_samples_file(path: &str) -> std::io::Result<String> {
    use std::io::Read;
    if !std::fs::metadata(path)?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let mut text = String::new();
    std::fs::File::open(path)?
        .take(MAX_SAMPLES_FILE + 1)
        .read_to_string(&mut text)?;
    if text.len() as u64 > MAX_SAMPLES_FILE {
        return Err(std::io::Error::other(format!(
            "larger than {} MiB",
            MAX_SAMPLES_FILE >> 20
        )));
    }
    Ok(text)
}

/// Empirical samples from `samples` or `file`, sorted, all non-negative.
fn empirical(a: &LatencyAttrs) -> Result<Vec<f64>, AttrError> {
    let mut values: Vec<f64> = match (&a.samples, &a.file) {
        (Some(samples), _) => {
            for (i, s) in samples.iter().enumerate() {
                if s.0 < 0 {
                    return Err(AttrError::attribute(
                        &format!("samples[{i}]"),
                        format!("must not be negative, got {}", show(s.as_ms())),
                    ));
                }
            }
            samples.iter().map(|s| s.as_ms()).collect()
        }
        (None, Some(path)) => {
            let text = read_samples_file(path)
                .map_err(|e| AttrError::attribute("file", format!("cannot read {path:?}: {e}")))?;
            let mut values = Vec::new();
            for (n, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                // The line itself is not quoted: `file` can name any file fallacy can read, and
                // an error must not hand its contents to whoever called the API.
                let ms = match line.parse::<f64>() {
                    Ok(ms) if ms.is_finite() && ms >= 0.0 => Some(ms),
                    Ok(_) => None,
                    Err(_) => parse_duration(line).ok().map(|d| d.as_secs_f64() * 1e3),
                };
                let Some(ms) = ms else {
                    return Err(AttrError::attribute(
                        "file",
                        format!(
                            "{path}:{}: not a delay (non-negative milliseconds, or a duration \
                             such as 30ms)",
                            n + 1
                        ),
                    ));
                };
                values.push(ms);
            }
            values
        }
        (None, None) => {
            return Err(AttrError::attribute(
                "samples",
                "distribution \"empirical\" needs samples = [...] or file = \"path\"",
            ));
        }
    };
    if values.is_empty() {
        let source = a
            .file
            .as_deref()
            .map_or("samples".to_owned(), |f| format!("file {f:?}"));
        return Err(AttrError::attribute(
            if a.samples.is_some() {
                "samples"
            } else {
                "file"
            },
            format!("{source} has no samples"),
        ));
    }
    values.sort_by(f64::total_cmp);
    Ok(values)
}

#[derive(Debug)]
pub(crate) struct Latency {
    model: Arc<LatencyModel>,
    sampler: Sampler,
    /// For `per = "connection"`: the first chunk has had its delay.
    delayed_once: bool,
}

impl Latency {
    pub(crate) fn new(attrs: &LatencyAttrs) -> Latency {
        let model = attrs.model.clone().unwrap_or_else(|| {
            // Attributes built in code rather than decoded: Toxiproxy's model cannot fail.
            Arc::new(
                LatencyModel::build(&LatencyAttrs {
                    latency: attrs.latency,
                    jitter: attrs.jitter,
                    ..LatencyAttrs::default()
                })
                .unwrap_or(LatencyModel {
                    dist: Distribution::Constant(0.0),
                    min: None,
                    max: None,
                    correlation: 0.0,
                    per_connection: false,
                    per_kb_us: 0.0,
                }),
            )
        });
        let sampler = Sampler::new(model.dist.clone(), model.correlation);
        Latency {
            model,
            sampler,
            delayed_once: false,
        }
    }

    /// One delay for a chunk of `len` bytes.
    pub(crate) fn draw(&mut self, len: usize, cx: &mut ToxicCx) -> Duration {
        let m = &self.model;
        let mut ms = self.sampler.next(&mut cx.rng);
        if let Some(lo) = m.min {
            ms = ms.max(lo);
        }
        if let Some(hi) = m.max {
            ms = ms.min(hi);
        }
        ms += m.per_kb_us * len as f64 / 1e6;
        // Negative (normal draws, Toxiproxy's negative latency) means no delay; cap far away.
        Duration::from_secs_f64((ms / 1e3).clamp(0.0, 1e9))
    }
}

impl Toxic for Latency {
    fn on_chunk(&mut self, mut chunk: Chunk, cx: &mut ToxicCx, out: &mut Vec<Chunk>) -> Verdict {
        if !(self.model.per_connection && self.delayed_once) {
            chunk.at += self.draw(chunk.data.len(), cx);
            self.delayed_once = true;
        } else if self.model.per_kb_us > 0.0 {
            // Capped at 1e9 s as `draw` caps: a huge `per_byte` (1e300) overflowed a Duration
            // and from_secs_f64 panicked on a connection's second chunk (fuzz target
            // http_request; input kept in fuzz/regressions/http_request/).
            chunk.at += Duration::from_secs_f64(
                (self.model.per_kb_us * chunk.data.len() as f64 / 1e9).min(1e9),
            );
        }
        out.push(chunk);
        Verdict::Continue
    }

    fn reconfigure(&mut self, kind: &ToxicKind) -> bool {
        if let ToxicKind::Latency(attrs) = kind {
            let delayed_once = self.delayed_once;
            *self = Latency::new(attrs);
            // A connection that already had its one delay does not get another.
            self.delayed_once = delayed_once;
            true
        } else {
            false
        }
    }
}
