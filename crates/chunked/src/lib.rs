//! A double-ended queue kept in fixed-size chunks: growing it never moves what it already holds.
//!
//! A `VecDeque` doubles its buffer when full and copies every element into the new one. balsa
//! keeps two queues that reach millions of elements: the Raft core's log between snapshots (a
//! member whose state keeps its history waits for a log as large as its last snapshot) and a log
//! stream's retained records. Under jemalloc on the VM balsa is measured on, each doubling took
//! fresh pages and a copy: pushing the 2,097,152nd element of 56 bytes took 321 ms and the
//! 4,194,304th 2.8 s, a member's driver stalled for that long (docs/BENCHMARKS.md, fifteenth
//! pass). Here a full chunk is followed by a new one, and dropping from the front frees whole
//! chunks, which the allocator hands back out to the next ones.
//!
//! ```
//! use balsa_chunked::ChunkedDeque;
//!
//! let mut log: ChunkedDeque<u64, 4> = (1..=10).collect::<Vec<_>>().into();
//! log.drop_front(3); // compaction: 4..=10 are left
//! log.truncate(5); // a conflicting suffix removed: 4..=8
//! log.push_back(9);
//! assert_eq!(log.len(), 6);
//! assert_eq!(log[0], 4);
//! assert_eq!(log.iter_from(4).copied().collect::<Vec<_>>(), vec![8, 9]);
//! assert_eq!(log.partition_point(|&x| x < 7), 3);
//! ```

use std::collections::VecDeque;

/// Elements per chunk unless told otherwise: 4,096 log entries of 56 bytes make 224 KiB.
pub const DEFAULT_CHUNK: usize = 4096;

/// The queue. Every chunk but the first and the last holds exactly `CHUNK` elements; the first
/// may hold fewer (its front was dropped), the last may hold fewer (it is being filled). So the
/// element at position `i` is found with one division, as in a flat buffer.
#[derive(Debug, Clone)]
pub struct ChunkedDeque<T, const CHUNK: usize = DEFAULT_CHUNK> {
    /// The chunks, oldest first; each allocated with room for `CHUNK` and never grown past it. A
    /// chunk is a ring, so taking its oldest element moves nothing either.
    chunks: VecDeque<VecDeque<T>>,
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
        items.into_iter().collect()
    }
}

impl<T, const CHUNK: usize> ChunkedDeque<T, CHUNK> {
    /// Elements held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The oldest element.
    pub fn front(&self) -> Option<&T> {
        self.chunks.front().and_then(|c| c.front())
    }

    /// The newest element.
    pub fn back(&self) -> Option<&T> {
        self.chunks.back().and_then(|c| c.back())
    }

    /// The chunk and the place in it of position `i` (which must be below `len`).
    fn locate(&self, i: usize) -> (usize, usize) {
        let first = self.chunks.front().map_or(0, VecDeque::len);
        if i < first {
            (0, i)
        } else {
            let rest = i - first;
            (1 + rest / CHUNK, rest % CHUNK)
        }
    }

    /// The element at position `i` (0 is the oldest).
    pub fn get(&self, i: usize) -> Option<&T> {
        if i >= self.len {
            return None;
        }
        let (c, k) = self.locate(i);
        Some(&self.chunks[c][k])
    }

    /// Appends `item` at the back; never moves what is held.
    pub fn push_back(&mut self, item: T) {
        match self.chunks.back_mut() {
            Some(last) if last.len() < CHUNK => last.push_back(item),
            _ => {
                let mut chunk = VecDeque::with_capacity(CHUNK);
                chunk.push_back(item);
                self.chunks.push_back(chunk);
            }
        }
        self.len += 1;
    }

    /// Keeps the first `len` elements.
    pub fn truncate(&mut self, len: usize) {
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
    pub fn drop_front(&mut self, mut n: usize) {
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

    /// Removes and returns the oldest element.
    pub fn pop_front(&mut self) -> Option<T> {
        let first = self.chunks.front_mut()?;
        // The first chunk is never empty (an emptied one is dropped), so this takes an element.
        let item = first.pop_front();
        if first.is_empty() {
            self.chunks.pop_front();
        }
        self.len -= 1;
        item
    }

    /// Removes everything.
    pub fn clear(&mut self) {
        self.chunks.clear();
        self.len = 0;
    }

    /// The elements, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &T> + '_ {
        self.iter_from(0)
    }

    /// The elements from position `start` on, in order (none if `start >= len`).
    pub fn iter_from(&self, start: usize) -> impl Iterator<Item = &T> + '_ {
        let (c, k) = if start < self.len { self.locate(start) } else { (self.chunks.len(), 0) };
        self.chunks
            .range(c..)
            .enumerate()
            .flat_map(move |(n, chunk)| chunk.range(if n == 0 { k } else { 0 }..))
    }

    /// The number of elements at the front for which `pred` holds, assuming it holds for a prefix
    /// and not after (as `slice::partition_point`): a binary search.
    pub fn partition_point(&self, mut pred: impl FnMut(&T) -> bool) -> usize {
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

impl<T: PartialEq, const CHUNK: usize> PartialEq for ChunkedDeque<T, CHUNK> {
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len && self.iter().eq(other.iter())
    }
}

impl<T: Eq, const CHUNK: usize> Eq for ChunkedDeque<T, CHUNK> {}

impl<T, const CHUNK: usize> FromIterator<T> for ChunkedDeque<T, CHUNK> {
    fn from_iter<I: IntoIterator<Item = T>>(items: I) -> Self {
        let mut deque = Self::default();
        for item in items {
            deque.push_back(item);
        }
        deque
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

    /// Random pushes, truncations and front drops, each checked against a `VecDeque` holding the
    /// same elements: every position, iteration from any place, the partition point and the
    /// chunks' shape (all but the first and last full, none past `CHUNK`).
    /// SplitMix64 (the simulator's generator lives in `balsa-raft`, which depends on this crate).
    struct Rng(u64);

    impl Rng {
        fn next_u64(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
    }

    #[test]
    fn behaves_as_a_vecdeque_under_random_operations() {
        for seed in 0..200u64 {
            let mut rng = Rng(seed);
            let mut ours: ChunkedDeque<u64, 3> = ChunkedDeque::default();
            let mut model: VecDeque<u64> = VecDeque::new();
            let mut next = 0u64;
            for _ in 0..200 {
                match rng.next_u64() % 9 {
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
                    7 => assert_eq!(ours.pop_front(), model.pop_front(), "seed {seed}"),
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
        assert_eq!(ours.is_empty(), model.is_empty(), "seed {seed}");
        assert_eq!(ours.front(), model.front(), "seed {seed}");
        assert_eq!(ours.back(), model.back(), "seed {seed}");
        assert_eq!(*ours, model.iter().copied().collect::<ChunkedDeque<u64, 3>>(), "seed {seed}");
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
