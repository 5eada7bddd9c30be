//! `latency`: every chunk waits `latency` ± `jitter`.
//!
//! The delay counts from the moment the chunk was read, not from when the previous chunk left,
//! so a stream under latency keeps its throughput (the chunks are pipelined).

use std::time::Duration;

use rand::Rng;

use super::spec::LatencyAttrs;
use super::{Chunk, Toxic, ToxicCx, Verdict};

#[derive(Debug)]
pub(super) struct Latency {
    latency_ns: i64,
    jitter_ns: i64,
}

impl Latency {
    pub(super) fn new(attrs: &LatencyAttrs) -> Latency {
        Latency {
            latency_ns: attrs.latency.0,
            jitter_ns: attrs.jitter.0,
        }
    }

    /// Toxiproxy's rule: latency plus a uniform draw in [-jitter, +jitter]; a negative total
    /// (or negative attributes, which Toxiproxy accepts) means no delay.
    pub(super) fn draw(&self, cx: &mut ToxicCx) -> Duration {
        let jitter = if self.jitter_ns > 0 {
            cx.rng.random_range(-self.jitter_ns..=self.jitter_ns)
        } else {
            0
        };
        super::nonneg_nanos(self.latency_ns.saturating_add(jitter))
    }
}

impl Toxic for Latency {
    fn on_chunk(&mut self, mut chunk: Chunk, cx: &mut ToxicCx, out: &mut Vec<Chunk>) -> Verdict {
        chunk.at += self.draw(cx);
        out.push(chunk);
        Verdict::Continue
    }

    fn reconfigure(&mut self, kind: &super::ToxicKind) -> bool {
        if let super::ToxicKind::Latency(attrs) = kind {
            *self = Latency::new(attrs);
            true
        } else {
            false
        }
    }
}
