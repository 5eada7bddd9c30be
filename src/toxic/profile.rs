//! `profile`: a named kind of network (3G, LTE, lossy Wi-Fi, GEO satellite, cross-region cloud)
//! that expands into a one-way latency and a bandwidth for the toxic's direction.
//!
//! The numbers and their public sources are in `docs/profiles.md`. Each connection draws its
//! path latency once from the profile's lognormal (a path's latency varies between
//! connections far more than within one) and applies it to every chunk, then paces the stream
//! at the profile's downlink (downstream toxic) or uplink (upstream toxic) rate.
//!
//! `mix = {lte = 0.7, "3g" = 0.3}` gives each connection one profile, drawn with these weights.
//! A profile with a loss rate also runs the `loss` model (independent losses, the connection's
//! round trip as `rtt`, Linux's 200 ms `rto_min`) between the bottleneck and the propagation.

use std::collections::BTreeMap;
use std::time::Duration;

use rand::Rng;
use serde::{Deserialize, Serialize};

use std::sync::Arc;

use super::bandwidth::Bandwidth;
use super::distribution::Distribution;
use super::loss::{DEFAULT_MSS, DEFAULT_RTO_MIN, Loss, LossModel, LossProcess};
use super::spec::{AttrError, BandwidthAttrs, Direction};
use super::{Chunk, Toxic, ToxicCx, Verdict};

/// One link profile. Latencies are one-way, in milliseconds; rates in KB/s (1 KB = 1000 B).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Profile {
    /// The name users write.
    pub name: &'static str,
    /// Server to client.
    pub down_kbps: i64,
    /// Client to server.
    pub up_kbps: i64,
    /// Median one-way latency.
    pub p50_ms: f64,
    /// 99th percentile one-way latency.
    pub p99_ms: f64,
    /// A physical floor, where there is one (a GEO satellite hop cannot be faster).
    pub min_ms: Option<f64>,
    /// Chance a segment is lost (0 where no source gives a figure).
    pub loss: f64,
}

/// The built-in profiles (sources: docs/profiles.md).
pub const PROFILES: &[Profile] = &[
    // WebPageTest "3G" and Lighthouse/Chrome's 3G class: 1.6/0.768 Mbit/s, 300 ms RTT; p99 from
    // the top of Chrome's 3G class (1400 ms RTT).
    Profile {
        name: "3g",
        down_kbps: 200,
        up_kbps: 96,
        p50_ms: 150.0,
        p99_ms: 700.0,
        min_ms: None,
        loss: 0.0,
    },
    // WebPageTest "LTE" 12 Mbit/s down, measured 6 Mbit/s median uplink; 70 ms RTT median.
    Profile {
        name: "lte",
        down_kbps: 1500,
        up_kbps: 750,
        p50_ms: 35.0,
        p99_ms: 340.0,
        min_ms: None,
        loss: 0.0,
    },
    // Firefox DevTools "Wi-Fi" 30/15 Mbit/s; 20 ms RTT median, 250 ms RTT p99 (Sui et al. 2016);
    // 10 % loss (MSR 2009, an 802.11 frame-loss figure: an upper bound for what TCP sees).
    Profile {
        name: "wifi-lossy",
        down_kbps: 3750,
        up_kbps: 1875,
        p50_ms: 10.0,
        p99_ms: 125.0,
        min_ms: None,
        loss: 0.10,
    },
    // GEO satellite (Ookla Q2 2021: HughesNet/Viasat medians ~600+ ms RTT, 18/3.4 Mbit/s); one
    // hop to geostationary orbit and back is at least ~239 ms one way.
    Profile {
        name: "satellite",
        down_kbps: 2266,
        up_kbps: 423,
        p50_ms: 315.0,
        p99_ms: 500.0,
        min_ms: Some(239.0),
        loss: 0.0,
    },
    // AWS us-east-1 <-> eu-west-1: ~74 ms RTT; 5 Gbit/s per flow between regions.
    Profile {
        name: "cross-region",
        down_kbps: 625_000,
        up_kbps: 625_000,
        p50_ms: 37.0,
        p99_ms: 55.0,
        min_ms: None,
        loss: 0.0,
    },
];

/// `profile` attributes: exactly one of `name` and `mix`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProfileAttrs {
    /// One profile for every connection.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A profile per connection, drawn with these weights.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mix: Option<BTreeMap<String, f64>>,
    /// The resolved profiles and cumulative weights.
    #[serde(skip)]
    pub(crate) resolved: Vec<(Profile, f64)>,
}

fn find(name: &str, path: &str) -> Result<Profile, AttrError> {
    PROFILES
        .iter()
        .find(|p| p.name == name)
        .copied()
        .ok_or_else(|| {
            let known: Vec<&str> = PROFILES.iter().map(|p| p.name).collect();
            AttrError::new(
                path,
                &format!("unknown profile {name:?}; use one of {}", known.join(", ")),
            )
        })
}

impl ProfileAttrs {
    /// Checks the attributes and resolves the profiles.
    pub fn resolve(mut self) -> Result<ProfileAttrs, AttrError> {
        self.resolved = match (&self.name, &self.mix) {
            (Some(name), None) => vec![(find(name, "attributes.name")?, 1.0)],
            (None, Some(mix)) => {
                if mix.is_empty() {
                    return Err(AttrError::new(
                        "attributes.mix",
                        "needs at least one profile",
                    ));
                }
                let mut total = 0.0;
                let mut resolved = Vec::new();
                for (name, weight) in mix {
                    let path = format!("attributes.mix.{name}");
                    if !weight.is_finite() || *weight <= 0.0 {
                        return Err(AttrError::new(
                            &path,
                            &format!("weight must be greater than 0, got {weight}"),
                        ));
                    }
                    total += weight;
                    resolved.push((find(name, &path)?, total));
                }
                resolved
                    .iter_mut()
                    .for_each(|(_, cumulative)| *cumulative /= total);
                resolved
            }
            (Some(_), Some(_)) => {
                return Err(AttrError::new(
                    "attributes.mix",
                    "give either name or mix, not both",
                ));
            }
            (None, None) => {
                return Err(AttrError::new(
                    "attributes.name",
                    "required: a profile name, or mix = {...}",
                ));
            }
        };
        Ok(self)
    }
}

/// One connection and direction's view of a profile.
#[derive(Debug)]
pub(super) struct ProfileToxic {
    /// Which profile this connection drew (from `mix`).
    #[cfg(test)]
    pub(super) profile: &'static str,
    delay: Duration,
    bandwidth: Bandwidth,
    loss: Option<Loss>,
}

impl ProfileToxic {
    pub(super) fn new(
        attrs: &ProfileAttrs,
        direction: Direction,
        cx: &mut ToxicCx,
    ) -> ProfileToxic {
        let u: f64 = cx.rng.random();
        let profile = attrs
            .resolved
            .iter()
            .find(|(_, cumulative)| u < *cumulative)
            .or(attrs.resolved.last())
            .map_or(PROFILES[0], |(p, _)| *p);
        let dist = Distribution::lognormal_from_quantiles(profile.p50_ms, profile.p99_ms);
        let mut ms = dist.quantile(cx.rng.random());
        if let Some(min) = profile.min_ms {
            ms = ms.max(min);
        }
        let rate = match direction {
            Direction::Downstream => profile.down_kbps,
            Direction::Upstream => profile.up_kbps,
        };
        tracing::debug!(profile = profile.name, delay_ms = ms, %direction, "profile drawn");
        let delay = Duration::from_secs_f64(ms / 1e3);
        let loss = (profile.loss > 0.0).then(|| {
            Loss::new(Arc::new(LossModel {
                process: LossProcess::Bernoulli(profile.loss),
                // The path's round trip: this one-way latency, both ways.
                rtt: delay * 2,
                rto_min: DEFAULT_RTO_MIN,
                mss: DEFAULT_MSS,
            }))
        });
        ProfileToxic {
            #[cfg(test)]
            profile: profile.name,
            delay,
            loss,
            bandwidth: Bandwidth::new(&BandwidthAttrs {
                rate,
                ..BandwidthAttrs::default()
            }),
        }
    }
}

impl Toxic for ProfileToxic {
    fn on_chunk(&mut self, chunk: Chunk, cx: &mut ToxicCx, out: &mut Vec<Chunk>) -> Verdict {
        // Serialisation on the bottleneck first, then loss recovery, then propagation.
        let start = out.len();
        let mut verdict = self.bandwidth.on_chunk(chunk, cx, out);
        if let Some(loss) = self.loss.as_mut() {
            let paced: Vec<Chunk> = out.drain(start..).collect();
            for c in paced {
                let v = loss.on_chunk(c, cx, out);
                if v != Verdict::Continue {
                    verdict = v;
                }
            }
        }
        for c in &mut out[start..] {
            c.at += self.delay;
        }
        verdict
    }
}
