//! `slow_close`: hold the FIN for `delay` milliseconds; data flows untouched.

use std::time::Duration;

use tokio::time::Instant;

use super::spec::SlowCloseAttrs;
use super::{Chunk, Toxic, ToxicCx, Verdict};

#[derive(Debug)]
pub(super) struct SlowClose {
    delay: Duration,
}

impl SlowClose {
    pub(super) fn new(attrs: &SlowCloseAttrs) -> SlowClose {
        SlowClose {
            delay: attrs.delay.duration(),
        }
    }
}

impl Toxic for SlowClose {
    fn on_chunk(&mut self, chunk: Chunk, _cx: &mut ToxicCx, out: &mut Vec<Chunk>) -> Verdict {
        out.push(chunk);
        Verdict::Continue
    }

    fn on_eof(&mut self, at: &mut Instant, _cx: &mut ToxicCx) -> Verdict {
        *at += self.delay;
        Verdict::Continue
    }
}
