//! `slicer`: cut each chunk into pieces of about `average_size` bytes (± `size_variation`),
//! `delay` microseconds apart. Useful to find parsers that assume one read is one message.

use std::time::Duration;

use rand::Rng;

use super::spec::SlicerAttrs;
use super::{Chunk, Toxic, ToxicCx, Verdict};

#[derive(Debug)]
pub(super) struct Slicer {
    average: usize,
    variation: usize,
    delay: Duration,
}

impl Slicer {
    pub(super) fn new(attrs: &SlicerAttrs) -> Slicer {
        Slicer {
            // An average below one byte would never stop splitting (Toxiproxy recurses forever).
            average: usize::try_from(attrs.average_size).unwrap_or(0).max(1),
            variation: usize::try_from(attrs.size_variation).unwrap_or(0),
            delay: attrs.delay.duration(),
        }
    }

    /// Piece lengths for a chunk of `len` bytes: halve until a piece is within `variation` of
    /// the average, moving each cut by a random offset in [-variation, +variation). Every piece
    /// is at least one byte long and the lengths add up to `len`.
    pub(super) fn sizes(&self, len: usize, rng: &mut impl Rng) -> Vec<usize> {
        let mut sizes = Vec::new();
        // Explicit stack of (start, end), right half pushed first so pieces come out in order.
        let mut stack = vec![(0usize, len)];
        while let Some((start, end)) = stack.pop() {
            let size = end - start;
            if size <= self.average + self.variation || size < 2 {
                if size > 0 {
                    sizes.push(size);
                }
                continue;
            }
            let mut mid = start + size / 2;
            if self.variation > 0 {
                let shift =
                    rng.random_range(0..self.variation * 2) as isize - self.variation as isize;
                mid = (mid as isize + shift).clamp(start as isize + 1, end as isize - 1) as usize;
            }
            stack.push((mid, end));
            stack.push((start, mid));
        }
        sizes
    }
}

impl Toxic for Slicer {
    fn on_chunk(&mut self, mut chunk: Chunk, cx: &mut ToxicCx, out: &mut Vec<Chunk>) -> Verdict {
        let mut at = chunk.at;
        for size in self.sizes(chunk.data.len(), &mut cx.rng) {
            out.push(Chunk {
                data: chunk.data.split_to(size),
                at,
            });
            at += self.delay;
        }
        Verdict::Continue
    }
}
