//! `timeout`: a black hole. Data is dropped; after `timeout` milliseconds the connection is
//! closed. With `timeout = 0` it stays open (and silent) until the toxic is removed, which
//! closes it, since the dropped bytes cannot be given back (Toxiproxy does the same).

use tokio::time::Instant;

use super::spec::TimeoutAttrs;
use super::{Chunk, Toxic, ToxicCx, Verdict};

#[derive(Debug)]
pub(super) struct Timeout {
    close_at: Option<Instant>,
}

impl Timeout {
    /// The clock starts when the toxic starts acting on the connection.
    pub(super) fn new(attrs: &TimeoutAttrs, now: Instant) -> Timeout {
        let d = attrs.timeout.duration();
        Timeout {
            close_at: (!d.is_zero()).then(|| now + d),
        }
    }
}

impl Toxic for Timeout {
    fn on_chunk(&mut self, _chunk: Chunk, _cx: &mut ToxicCx, _out: &mut Vec<Chunk>) -> Verdict {
        Verdict::Continue
    }

    fn on_eof(&mut self, at: &mut Instant, _cx: &mut ToxicCx) -> Verdict {
        Verdict::Close(*at)
    }

    fn deadline(&self) -> Option<Instant> {
        self.close_at
    }

    fn on_deadline(&mut self, now: Instant, _cx: &mut ToxicCx) -> Verdict {
        // Fired once: a deadline left in the past would wake the duplex loop forever.
        self.close_at = None;
        Verdict::Close(now)
    }

    fn closes_on_removal(&self) -> bool {
        true
    }
}
