//! `bandwidth`: pace the stream at `rate` KB/s (1 KB = 1000 B, as Toxiproxy).
//!
//! Each byte occupies the link for 1/rate seconds; a chunk is released when its last byte would
//! have been transmitted. Big chunks are cut into pieces worth [`PIECE_TIME`] of transmission,
//! so a 64 KiB read at 10 KB/s trickles out instead of arriving in one lump 6.4 s later.

use std::time::Duration;

use tokio::time::Instant;

use super::spec::BandwidthAttrs;
use super::{Chunk, Toxic, ToxicCx, Verdict};

/// How much transmission time one emitted piece represents. Small enough that the receiver
/// sees a smooth rate, large enough that fast links do not pay a write per few bytes.
const PIECE_TIME: Duration = Duration::from_millis(5);

#[derive(Debug)]
pub(super) struct Bandwidth {
    bytes_per_sec: u64,
    /// When the link finishes sending what it was given so far.
    busy_until: Option<Instant>,
}

impl Bandwidth {
    pub(super) fn new(attrs: &BandwidthAttrs) -> Bandwidth {
        Bandwidth {
            bytes_per_sec: u64::try_from(attrs.rate).unwrap_or(0).saturating_mul(1000),
            busy_until: None,
        }
    }

    fn transmit_time(&self, bytes: usize) -> Duration {
        Duration::from_nanos(
            ((bytes as u128 * 1_000_000_000) / u128::from(self.bytes_per_sec)) as u64,
        )
    }
}

impl Toxic for Bandwidth {
    fn on_chunk(&mut self, mut chunk: Chunk, _cx: &mut ToxicCx, out: &mut Vec<Chunk>) -> Verdict {
        if self.bytes_per_sec == 0 {
            out.push(chunk);
            return Verdict::Continue;
        }
        let piece = (self.bytes_per_sec as u128 * PIECE_TIME.as_nanos() / 1_000_000_000)
            .clamp(1, 64 * 1024) as usize;
        // An idle link does not bank credit: sending starts when the data arrives.
        let mut clock = self.busy_until.map_or(chunk.at, |b| b.max(chunk.at));
        while !chunk.data.is_empty() {
            let data = chunk.data.split_to(piece.min(chunk.data.len()));
            clock += self.transmit_time(data.len());
            out.push(Chunk { data, at: clock });
        }
        self.busy_until = Some(clock);
        Verdict::Continue
    }

    fn reconfigure(&mut self, kind: &super::ToxicKind) -> bool {
        if let super::ToxicKind::Bandwidth(attrs) = kind {
            self.bytes_per_sec = Bandwidth::new(attrs).bytes_per_sec;
            true
        } else {
            false
        }
    }
}
