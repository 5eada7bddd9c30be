//! `reset_peer`: when the first data (or FIN) arrives, wait `timeout` milliseconds, then reset
//! both legs with RST ("connection reset by peer"). Data after the trigger is dropped.

use tokio::time::Instant;

use super::spec::TimeoutAttrs;
use super::{Chunk, Toxic, ToxicCx, Verdict};

#[derive(Debug)]
pub(super) struct ResetPeer {
    timeout: std::time::Duration,
    reset_at: Option<Instant>,
    fired: bool,
}

impl ResetPeer {
    pub(super) fn new(attrs: &TimeoutAttrs) -> ResetPeer {
        ResetPeer {
            timeout: attrs.timeout.duration(),
            reset_at: None,
            fired: false,
        }
    }

    fn trigger(&mut self, at: Instant) -> Verdict {
        let reset_at = *self.reset_at.get_or_insert(at + self.timeout);
        if reset_at <= at {
            Verdict::Reset(reset_at)
        } else {
            Verdict::Continue
        }
    }
}

impl Toxic for ResetPeer {
    fn on_chunk(&mut self, chunk: Chunk, _cx: &mut ToxicCx, _out: &mut Vec<Chunk>) -> Verdict {
        self.trigger(chunk.at)
    }

    fn on_eof(&mut self, at: &mut Instant, _cx: &mut ToxicCx) -> Verdict {
        match self.trigger(*at) {
            Verdict::Continue => Verdict::Swallow,
            other => other,
        }
    }

    fn deadline(&self) -> Option<Instant> {
        // Fired once: a deadline left in the past would wake the duplex loop forever.
        self.reset_at.filter(|_| !self.fired)
    }

    fn on_deadline(&mut self, now: Instant, _cx: &mut ToxicCx) -> Verdict {
        self.fired = true;
        Verdict::Reset(now)
    }

    /// Once triggered it has dropped bytes: removed before its reset, it must not let the
    /// stream go on without them (found by bench/soak), so the connection closes, as for
    /// `timeout`.
    fn closes_on_removal(&self) -> bool {
        self.reset_at.is_some() && !self.fired
    }
}
