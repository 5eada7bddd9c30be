//! `corrupt`: flips one random bit in a share of the bytes that pass. Destructive on purpose:
//! TCP's checksum would have caught this on a real link, so it models a corrupting middlebox
//! or memory, and what the application does with bytes it cannot trust.
//!
//! The corrupted bytes are picked by geometric skips (the gap to the next one is drawn once),
//! so a low rate costs one draw per corrupted byte rather than one per byte.

use bytes::BytesMut;
use rand::Rng;

use super::spec::{AttrError, CorruptAttrs};
use super::{Chunk, Toxic, ToxicCx, ToxicKind, Verdict};

/// Checks `rate`.
pub fn check(a: &CorruptAttrs) -> Result<(), AttrError> {
    if !(0.0..=1.0).contains(&a.rate) || a.rate.is_nan() {
        return Err(AttrError::attribute(
            "rate",
            format!(
                "must be a fraction of bytes between 0 and 1, got {}",
                a.rate
            ),
        ));
    }
    Ok(())
}

#[derive(Debug)]
pub(super) struct Corrupt {
    rate: f64,
    /// Bytes to let through before the next corrupted one.
    skip: Option<u64>,
}

impl Corrupt {
    pub(super) fn new(a: &CorruptAttrs) -> Corrupt {
        Corrupt {
            rate: a.rate,
            skip: None,
        }
    }

    /// Bytes before the next corrupted one: geometric with success chance `rate`.
    fn gap(&self, rng: &mut impl Rng) -> u64 {
        if self.rate >= 1.0 {
            return 0;
        }
        let u: f64 = rng.random();
        ((1.0 - u).ln() / (1.0 - self.rate).ln())
            .floor()
            .min(u64::MAX as f64) as u64
    }
}

impl Toxic for Corrupt {
    fn on_chunk(&mut self, mut chunk: Chunk, cx: &mut ToxicCx, out: &mut Vec<Chunk>) -> Verdict {
        if self.rate <= 0.0 {
            out.push(chunk);
            return Verdict::Continue;
        }
        let len = chunk.data.len() as u64;
        let mut at = match self.skip {
            Some(s) => s,
            None => self.gap(&mut cx.rng),
        };
        if at < len {
            let mut bytes = BytesMut::from(&chunk.data[..]);
            while at < len {
                bytes[at as usize] ^= 1 << cx.rng.random_range(0..8);
                at = at + 1 + self.gap(&mut cx.rng);
            }
            chunk.data = bytes.freeze();
        }
        self.skip = Some(at - len);
        out.push(chunk);
        Verdict::Continue
    }

    fn reconfigure(&mut self, kind: &ToxicKind) -> bool {
        if let ToxicKind::Corrupt(a) = kind {
            self.rate = a.rate;
            self.skip = None;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use rand::SeedableRng;
    use rand::rngs::SmallRng;

    use super::*;

    fn run(rate: f64, chunks: usize, size: usize) -> (usize, usize) {
        let mut t = Corrupt::new(&CorruptAttrs { rate });
        let mut cx = ToxicCx {
            rng: SmallRng::seed_from_u64(9),
        };
        let at = tokio::time::Instant::now();
        let (mut changed, mut total) = (0, 0);
        for _ in 0..chunks {
            let mut out = Vec::new();
            t.on_chunk(
                Chunk {
                    data: Bytes::from(vec![0u8; size]),
                    at,
                },
                &mut cx,
                &mut out,
            );
            assert_eq!(out.len(), 1);
            assert_eq!(out[0].data.len(), size, "corruption never changes lengths");
            for b in out[0].data.iter() {
                assert!(*b == 0 || b.count_ones() == 1, "one bit per corrupted byte");
                changed += usize::from(*b != 0);
            }
            total += size;
        }
        (changed, total)
    }

    #[test]
    fn the_share_of_corrupted_bytes_is_the_rate() {
        for rate in [0.001, 0.01, 0.2] {
            let (changed, total) = run(rate, 200, 5000);
            let share = changed as f64 / total as f64;
            assert!((share - rate).abs() / rate < 0.05, "rate {rate}: {share}");
        }
        assert_eq!(run(0.0, 10, 1000).0, 0);
        assert_eq!(run(1.0, 10, 1000).0, 10_000);
    }
}
