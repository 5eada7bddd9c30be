//! Toxics for UDP proxies, where a chunk is one datagram: loss really drops it, duplicates and
//! reordering are what a network does to datagrams, and pacing never splits one.

use std::collections::VecDeque;
use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;

use super::loss::{LossProcess, LossState};
use super::spec::ReorderAttrs;
use super::{Chunk, Toxic, ToxicCx, Verdict};

/// `packet_loss`: drops datagrams, independently or in Gilbert-Elliott bursts.
#[derive(Debug)]
pub(super) struct PacketLoss {
    process: LossProcess,
    state: LossState,
}

impl PacketLoss {
    pub(super) fn new(process: LossProcess) -> PacketLoss {
        PacketLoss {
            process,
            state: LossState::default(),
        }
    }
}

impl Toxic for PacketLoss {
    fn on_chunk(&mut self, chunk: Chunk, cx: &mut ToxicCx, out: &mut Vec<Chunk>) -> Verdict {
        if !self.process.lost(&mut self.state, &mut cx.rng) {
            out.push(chunk);
        }
        Verdict::Continue
    }
}

/// `duplicate`: sends a datagram twice with chance `rate`.
#[derive(Debug)]
pub(super) struct Duplicate {
    rate: f64,
}

impl Duplicate {
    pub(super) fn new(rate: f64) -> Duplicate {
        Duplicate { rate }
    }
}

impl Toxic for Duplicate {
    fn on_chunk(&mut self, chunk: Chunk, cx: &mut ToxicCx, out: &mut Vec<Chunk>) -> Verdict {
        if self.rate > 0.0 && cx.rng.random::<f64>() < self.rate {
            out.push(chunk.clone());
        }
        out.push(chunk);
        Verdict::Continue
    }
}

/// How long a held datagram waits for the ones meant to overtake it.
const REORDER_HOLD: Duration = Duration::from_millis(200);

/// `reorder`: holds a datagram back (chance `rate`) until `gap` later ones have gone ahead, or
/// 200 ms if they do not come.
#[derive(Debug)]
pub(super) struct Reorder {
    rate: f64,
    gap: u32,
    /// Held datagrams and how many more must pass each.
    held: VecDeque<(Chunk, u32, Instant)>,
}

impl Reorder {
    pub(super) fn new(a: &ReorderAttrs) -> Reorder {
        Reorder {
            rate: a.rate,
            gap: u32::try_from(a.gap.max(1)).unwrap_or(1),
            held: VecDeque::new(),
        }
    }
}

impl Toxic for Reorder {
    fn on_chunk(&mut self, chunk: Chunk, cx: &mut ToxicCx, out: &mut Vec<Chunk>) -> Verdict {
        let at = chunk.at;
        if self.rate > 0.0 && cx.rng.random::<f64>() < self.rate {
            self.held.push_back((chunk, self.gap, at + REORDER_HOLD));
            return Verdict::Continue;
        }
        out.push(chunk);
        // This one overtook every held datagram; those whose gap is used up follow it.
        for h in self.held.iter_mut() {
            h.1 = h.1.saturating_sub(1);
        }
        while let Some(pos) = self.held.iter().position(|h| h.1 == 0) {
            if let Some((mut c, _, _)) = self.held.remove(pos) {
                c.at = c.at.max(at);
                out.push(c);
            }
        }
        Verdict::Continue
    }

    fn deadline(&self) -> Option<Instant> {
        self.held.iter().map(|h| h.2).min()
    }

    fn release(&mut self, now: Instant, out: &mut Vec<Chunk>) {
        while let Some(pos) = self.held.iter().position(|h| h.2 <= now) {
            if let Some((mut c, _, _)) = self.held.remove(pos) {
                c.at = c.at.max(now);
                out.push(c);
            }
        }
    }
}

/// `bandwidth` on a UDP proxy: each datagram leaves when the link has sent the ones before it
/// at `rate`; a datagram is never split.
#[derive(Debug)]
pub(crate) struct Pace {
    /// Bytes per second.
    rate: f64,
    free_at: Option<Instant>,
}

impl Pace {
    pub(crate) fn new(kb_per_s: i64) -> Pace {
        Pace {
            rate: kb_per_s as f64 * 1000.0,
            free_at: None,
        }
    }
}

impl Toxic for Pace {
    fn on_chunk(&mut self, mut chunk: Chunk, _cx: &mut ToxicCx, out: &mut Vec<Chunk>) -> Verdict {
        if self.rate > 0.0 {
            let start = self.free_at.map_or(chunk.at, |f| f.max(chunk.at));
            let took = Duration::from_secs_f64(chunk.data.len() as f64 / self.rate);
            chunk.at = start + took;
            self.free_at = Some(chunk.at);
        }
        out.push(chunk);
        Verdict::Continue
    }
}
