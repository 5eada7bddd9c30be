//! `bandwidth`: pace the stream at `rate` KB/s (1 KB = 1000 B, as Toxiproxy).
//!
//! A virtual clock: each byte occupies the link for 1/rate seconds, and a chunk is released
//! when its last byte would have been transmitted. With `burst`, the clock may lag up to
//! `burst` bytes' worth behind the present, which is a token bucket of that depth: after an
//! idle spell that many bytes go at once. Big chunks are cut into pieces worth
//! [`PIECE_TIME`] of transmission, so a 64 KiB read at 10 KB/s trickles out instead of
//! arriving in one lump 6.4 s later.
//!
//! With `shared`, every connection of the proxy draws on one link: each connection paces at
//! `rate / n`, where `n` counts the connections that currently have bytes in flight on the link.
//! That is processor sharing: fair between busy connections, and the whole rate for one alone.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::spec::BandwidthAttrs;
use super::{Chunk, Toxic, ToxicCx, ToxicKind, Verdict};

/// How much transmission time one emitted piece represents. Small enough that the receiver
/// sees a smooth rate, large enough that fast links do not pay a write per few bytes.
const PIECE_TIME: Duration = Duration::from_millis(5);

/// The link shared by the connections of a `shared` bandwidth toxic.
#[derive(Debug, Default)]
pub struct SharedLink {
    next_id: AtomicU64,
    /// Connection id -> when its queued bytes finish on the link.
    busy: Mutex<HashMap<u64, Instant>>,
}

impl PartialEq for SharedLink {
    /// Two links are equal only if they are the same link.
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self, other)
    }
}

impl SharedLink {
    /// Records that connection `id` is busy until `until`, and returns how many connections
    /// (this one included) are busy at `now`.
    fn share(&self, id: u64, now: Instant, until: Instant) -> u64 {
        let mut busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        busy.insert(id, until);
        busy.values().filter(|t| **t > now).count().max(1) as u64
    }

    fn leave(&self, id: u64) {
        self.busy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
    }
}

#[derive(Debug)]
pub(super) struct Bandwidth {
    bytes_per_sec: u64,
    burst: Duration,
    /// When the link finishes sending what it was given so far.
    busy_until: Option<Instant>,
    shared: Option<(Arc<SharedLink>, u64)>,
}

impl Bandwidth {
    pub(super) fn new(attrs: &BandwidthAttrs) -> Bandwidth {
        let bytes_per_sec = u64::try_from(attrs.rate).unwrap_or(0).saturating_mul(1000);
        let burst_bytes = u64::try_from(attrs.burst.unwrap_or(0)).unwrap_or(0);
        let shared = attrs.link.clone().map(|link| {
            let id = link.next_id.fetch_add(1, Ordering::Relaxed);
            (link, id)
        });
        let mut b = Bandwidth {
            bytes_per_sec,
            burst: Duration::ZERO,
            busy_until: None,
            shared,
        };
        if bytes_per_sec > 0 {
            b.burst = b.transmit_time(burst_bytes as usize, bytes_per_sec);
        }
        b
    }

    fn transmit_time(&self, bytes: usize, bytes_per_sec: u64) -> Duration {
        Duration::from_nanos(((bytes as u128 * 1_000_000_000) / u128::from(bytes_per_sec)) as u64)
    }
}

impl Drop for Bandwidth {
    fn drop(&mut self) {
        if let Some((link, id)) = &self.shared {
            link.leave(*id);
        }
    }
}

impl Toxic for Bandwidth {
    fn on_chunk(&mut self, mut chunk: Chunk, _cx: &mut ToxicCx, out: &mut Vec<Chunk>) -> Verdict {
        if self.bytes_per_sec == 0 {
            out.push(chunk);
            return Verdict::Continue;
        }
        // The clock may lag behind the present by the burst allowance, never more: an idle
        // link banks at most `burst` bytes.
        let floor = chunk.at.checked_sub(self.burst).unwrap_or(chunk.at);
        let mut clock = self.busy_until.map_or(floor, |b| b.max(floor));
        let rate = match &self.shared {
            None => self.bytes_per_sec,
            Some((link, id)) => {
                let need = self.transmit_time(chunk.data.len(), self.bytes_per_sec);
                let n = link.share(*id, chunk.at, clock.max(chunk.at) + need);
                (self.bytes_per_sec / n).max(1)
            }
        };
        let piece =
            (rate as u128 * PIECE_TIME.as_nanos() / 1_000_000_000).clamp(1, 64 * 1024) as usize;
        while !chunk.data.is_empty() {
            let data = chunk.data.split_to(piece.min(chunk.data.len()));
            clock += self.transmit_time(data.len(), rate);
            out.push(Chunk {
                data,
                at: clock.max(chunk.at),
            });
        }
        self.busy_until = Some(clock);
        if let Some((link, id)) = &self.shared {
            link.share(*id, chunk.at, clock);
        }
        Verdict::Continue
    }

    fn reconfigure(&mut self, kind: &ToxicKind) -> bool {
        if let ToxicKind::Bandwidth(attrs) = kind {
            let busy_until = self.busy_until;
            *self = Bandwidth::new(attrs);
            self.busy_until = busy_until;
            true
        } else {
            false
        }
    }
}
