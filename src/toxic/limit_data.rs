//! `limit_data`: let `bytes` bytes through, then close the connection.

use super::spec::LimitDataAttrs;
use super::{Chunk, Toxic, ToxicCx, ToxicKind, Verdict};

#[derive(Debug)]
pub(super) struct LimitData {
    limit: u64,
    /// Survives updates: raising the limit on a live connection continues from here.
    passed: u64,
}

impl LimitData {
    pub(super) fn new(attrs: &LimitDataAttrs) -> LimitData {
        LimitData {
            limit: u64::try_from(attrs.bytes).unwrap_or(0),
            passed: 0,
        }
    }
}

impl Toxic for LimitData {
    fn on_chunk(&mut self, mut chunk: Chunk, _cx: &mut ToxicCx, out: &mut Vec<Chunk>) -> Verdict {
        let remaining = self.limit.saturating_sub(self.passed);
        if (chunk.data.len() as u64) > remaining {
            chunk.data.truncate(remaining as usize);
        }
        let at = chunk.at;
        if !chunk.data.is_empty() {
            self.passed += chunk.data.len() as u64;
            out.push(chunk);
        }
        if self.passed >= self.limit {
            Verdict::Close(at)
        } else {
            Verdict::Continue
        }
    }

    fn reconfigure(&mut self, kind: &ToxicKind) -> bool {
        if let ToxicKind::LimitData(attrs) = kind {
            self.limit = LimitData::new(attrs).limit;
            true
        } else {
            false
        }
    }
}
