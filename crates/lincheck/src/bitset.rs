//! A fixed-size set of operation indices, packed 64 to a word.
//!
//! The search's memo is keyed by "which operations are linearized", so this set is hashed and
//! cloned once per step: a packed `Vec<u64>` keeps both cheap (1,000 operations are 16 words).

/// A set of indices in `0..len`, `len` fixed at creation.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Bitset {
    words: Vec<u64>,
}

impl Bitset {
    /// An empty set able to hold indices `0..len`.
    pub(crate) fn new(len: usize) -> Self {
        Bitset { words: vec![0; len.div_ceil(64)] }
    }

    pub(crate) fn insert(&mut self, index: usize) {
        self.words[index / 64] |= 1 << (index % 64);
    }

    pub(crate) fn remove(&mut self, index: usize) {
        self.words[index / 64] &= !(1 << (index % 64));
    }

    #[cfg(test)]
    pub(crate) fn contains(&self, index: usize) -> bool {
        self.words[index / 64] & (1 << (index % 64)) != 0
    }

    /// Whether the set has no member.
    pub(crate) fn is_empty(&self) -> bool {
        self.words.iter().all(|&w| w == 0)
    }

    /// Whether every member of `self` is in `other` (both made with the same `len`).
    pub(crate) fn is_subset_of(&self, other: &Bitset) -> bool {
        self.words.iter().zip(&other.words).all(|(mine, theirs)| mine & !theirs == 0)
    }
}

#[cfg(test)]
mod tests {
    use super::Bitset;

    #[test]
    fn insert_remove_and_subset() {
        let mut a = Bitset::new(130);
        let mut b = Bitset::new(130);
        for i in [0, 63, 64, 129] {
            a.insert(i);
            b.insert(i);
        }
        b.insert(5);
        assert!(a.contains(129) && !a.contains(5));
        assert!(a.is_subset_of(&b));
        assert!(!b.is_subset_of(&a));
        b.remove(5);
        assert_eq!(a, b);
        a.remove(64);
        assert!(!a.contains(64) && a.contains(63));
    }
}
