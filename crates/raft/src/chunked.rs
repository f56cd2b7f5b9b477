//! A double-ended queue kept in fixed-size chunks, for the log's entries: growing it never moves
//! what it already holds.
//!
//! A `VecDeque` doubles its buffer when full and copies every element into the new one. The log
//! of a member whose state keeps its history holds millions of entries between snapshots (the
//! driver waits for a log as large as the last snapshot), and under jemalloc on this project's VM
//! each doubling took fresh pages and a copy: pushing the 2,097,152nd entry took 321 ms and the
//! 4,194,304th 2.8 s, a driver stalled for that long (docs/BENCHMARKS.md, fifteenth pass). Here
//! a full chunk is followed by a new one, and compaction frees whole chunks, which the allocator
//! hands back out to the next ones.

use std::collections::VecDeque;

/// Elements per chunk in the log: 4,096 entries of 56 bytes, 224 KiB.
pub(crate) const LOG_CHUNK: usize = 4096;

/// The queue. Every chunk but the first and the last holds exactly `CHUNK` elements; the first
/// may hold fewer (its front was dropped), the last may hold fewer (it is being filled). So the
/// element at position `i` is found with one division, as in a flat buffer.
#[derive(Debug, Clone)]
pub(crate) struct ChunkedDeque<T, const CHUNK: usize = LOG_CHUNK> {
    /// The chunks, oldest first; each allocated with room for `CHUNK` and never grown past it.
    chunks: VecDeque<Vec<T>>,
    /// Elements held, summed over the chunks (kept, not recounted, as `len` is on every path).
    len: usize,
}

impl<T, const CHUNK: usize> Default for ChunkedDeque<T, CHUNK> {
    fn default() -> Self {
        Self { chunks: VecDeque::new(), len: 0 }
    }
}

impl<T, const CHUNK: usize> From<Vec<T>> for ChunkedDeque<T, CHUNK> {
    fn from(items: Vec<T>) -> Self {
        let mut deque = Self::default();
        for item in items {
            deque.push_back(item);
        }
        deque
    }
}

impl<T, const CHUNK: usize> ChunkedDeque<T, CHUNK> {
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn back(&self) -> Option<&T> {
        self.chunks.back().and_then(|c| c.last())
    }

    /// The chunk and the place in it of position `i` (which must be below `len`).
    fn locate(&self, i: usize) -> (usize, usize) {
        let first = self.chunks.front().map_or(0, Vec::len);
        if i < first {
            (0, i)
        } else {
            let rest = i - first;
            (1 + rest / CHUNK, rest % CHUNK)
        }
    }

    pub(crate) fn get(&self, i: usize) -> Option<&T> {
        if i >= self.len {
            return None;
        }
        let (c, k) = self.locate(i);
        Some(&self.chunks[c][k])
    }

    pub(crate) fn push_back(&mut self, item: T) {
        match self.chunks.back_mut() {
            Some(last) if last.len() < CHUNK => last.push(item),
            _ => {
                let mut chunk = Vec::with_capacity(CHUNK);
                chunk.push(item);
                self.chunks.push_back(chunk);
            }
        }
        self.len += 1;
    }

    /// Keeps the first `len` elements.
    pub(crate) fn truncate(&mut self, len: usize) {
        if len >= self.len {
            return;
        }
        if len == 0 {
            return self.clear();
        }
        // The chunk holding the new last element keeps up to it; the ones after go.
        let (c, k) = self.locate(len - 1);
        self.chunks.truncate(c + 1);
        self.chunks[c].truncate(k + 1);
        self.len = len;
    }

    /// Drops the first `n` elements (all of them if there are fewer).
    pub(crate) fn drop_front(&mut self, mut n: usize) {
        n = n.min(self.len);
        self.len -= n;
        while n > 0 {
            let first = self.chunks.front_mut().expect("elements left to drop are in a chunk");
            if n >= first.len() {
                n -= first.len();
                self.chunks.pop_front();
            } else {
                first.drain(..n);
                n = 0;
            }
        }
    }

    pub(crate) fn clear(&mut self) {
        self.chunks.clear();
        self.len = 0;
    }

    /// The elements from position `start` on, in order (none if `start >= len`).
    pub(crate) fn iter_from(&self, start: usize) -> impl Iterator<Item = &T> + '_ {
        let (c, k) = if start < self.len { self.locate(start) } else { (self.chunks.len(), 0) };
        self.chunks
            .range(c..)
            .enumerate()
            .flat_map(move |(n, chunk)| chunk[if n == 0 { k } else { 0 }..].iter())
    }

    /// The number of elements at the front for which `pred` holds, assuming it holds for a prefix
    /// and not after (as `slice::partition_point`): a binary search.
    pub(crate) fn partition_point(&self, mut pred: impl FnMut(&T) -> bool) -> usize {
        let (mut lo, mut hi) = (0, self.len);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if pred(self.get(mid).expect("mid is below len")) {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }
}

impl<T, const CHUNK: usize> std::ops::Index<usize> for ChunkedDeque<T, CHUNK> {
    type Output = T;

    fn index(&self, i: usize) -> &T {
        self.get(i).unwrap_or_else(|| panic!("position {i} beyond the {} held", self.len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;

    /// Random pushes, truncations and front drops, each checked against a `VecDeque` holding the
    /// same elements: every position, iteration from any place, the partition point and the
    /// chunks' shape (all but the first and last full, none past `CHUNK`).
    #[test]
    fn behaves_as_a_vecdeque_under_random_operations() {
        for seed in 0..200u64 {
            let mut rng = SplitMix64::new(seed);
            let mut ours: ChunkedDeque<u64, 3> = ChunkedDeque::default();
            let mut model: VecDeque<u64> = VecDeque::new();
            let mut next = 0u64;
            for _ in 0..200 {
                match rng.next_u64() % 8 {
                    0..=4 => {
                        ours.push_back(next);
                        model.push_back(next);
                        next += 1;
                    }
                    5 => {
                        let len = (rng.next_u64() % (model.len() as u64 + 2)) as usize;
                        ours.truncate(len);
                        model.truncate(len);
                    }
                    6 => {
                        let n = (rng.next_u64() % (model.len() as u64 + 2)) as usize;
                        ours.drop_front(n);
                        model.drain(..n.min(model.len()));
                    }
                    _ => {
                        ours.clear();
                        model.clear();
                    }
                }
                check_same(&ours, &model, seed);
            }
        }
    }

    fn check_same(ours: &ChunkedDeque<u64, 3>, model: &VecDeque<u64>, seed: u64) {
        assert_eq!(ours.len(), model.len(), "seed {seed}");
        assert_eq!(ours.back(), model.back(), "seed {seed}");
        for i in 0..model.len() + 2 {
            assert_eq!(ours.get(i), model.get(i), "seed {seed}, position {i}");
            let from: Vec<u64> = ours.iter_from(i).copied().collect();
            let want: Vec<u64> = model.range(i.min(model.len())..).copied().collect();
            assert_eq!(from, want, "seed {seed}, from {i}");
        }
        // Elements are increasing, so any threshold splits them into a prefix and the rest.
        let threshold = model.get(model.len() / 2).copied().unwrap_or(0);
        assert_eq!(ours.partition_point(|&x| x < threshold), model.partition_point(|&x| x < threshold));
        let n = ours.chunks.len();
        for (c, chunk) in ours.chunks.iter().enumerate() {
            assert!(chunk.len() <= 3 && chunk.capacity() <= 3, "seed {seed}: chunk {c} grew past CHUNK");
            assert!(!chunk.is_empty() || n == 1, "seed {seed}: an empty chunk kept among others");
            if c > 0 && c + 1 < n {
                assert_eq!(chunk.len(), 3, "seed {seed}: middle chunk {c} not full");
            }
        }
    }

    #[test]
    fn growing_never_moves_what_is_held() {
        let mut deque: ChunkedDeque<u64, 4> = ChunkedDeque::default();
        deque.push_back(0);
        let first = deque.get(0).unwrap() as *const u64;
        for i in 1..1000 {
            deque.push_back(i);
        }
        assert_eq!(deque.get(0).unwrap() as *const u64, first, "the first element moved as the deque grew");
    }

    #[test]
    #[should_panic(expected = "position 3 beyond the 3 held")]
    fn indexing_past_the_end_is_a_broken_invariant() {
        let deque: ChunkedDeque<u64, 2> = vec![1, 2, 3].into();
        let _ = deque[3];
    }
}
