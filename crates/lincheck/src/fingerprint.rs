//! A set of operation indices known by its 128-bit fingerprint (Zobrist hashing): each index has
//! a fixed random 128-bit key, and the set's fingerprint is the XOR of its members' keys, so
//! adding or removing a member costs one XOR whatever the set's size.
//!
//! The search's memo is keyed by "which required operations are linearized". Keyed by the set
//! itself (a bitset), every memo entry cost n/8 bytes and every step hashed n/64 words: on a
//! history of 440,000 operations per key that is 24 GB of memo and quadratic time (a 12-minute
//! chaos run's check was killed for lack of memory). With a fingerprint an entry costs 16 bytes.
//! Two different sets share a fingerprint with probability 2^-128 per pair; a collision could only
//! make the memo skip a node it has not seen, so it could turn "linearizable" into "illegal",
//! never the reverse, and at one in 2^128 per pair of nodes it does not happen in practice
//! (model checkers such as TLC rely on 64-bit fingerprints the same way).

/// Fixed random keys for indices `0..len`, drawn from a fixed seed: a check is reproducible.
pub(crate) struct Keys {
    keys: Vec<u128>,
}

impl Keys {
    pub(crate) fn new(len: usize) -> Self {
        let mut state = 0x9e37_79b9_7f4a_7c15_u64 ^ len as u64;
        let mut next = move || {
            // SplitMix64: a well-mixed sequence from a counter.
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        Keys { keys: (0..len).map(|_| (u128::from(next()) << 64) | u128::from(next())).collect() }
    }
}

/// The fingerprint of a set of indices; starts empty.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub(crate) struct Fingerprint(u128);

impl Fingerprint {
    /// Adds `index` if absent, removes it if present (the caller knows which it is doing).
    pub(crate) fn toggle(&mut self, keys: &Keys, index: usize) {
        self.0 ^= keys.keys[index];
    }

    /// One fingerprint for (this set, a state's fingerprint): the state's is mixed (multiplied
    /// by an odd constant, then rotated) before the XOR, so that a set and a state that happen
    /// to carry equal fingerprints do not cancel into a common value.
    pub(crate) fn with_state(self, state: u128) -> u128 {
        self.0 ^ state.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835).rotate_left(61)
    }
}

/// A 128-bit fingerprint of a model state (two independent 64-bit hashes of it), so the memo
/// keeps 16 bytes per state instead of a clone. The same collision argument as for sets holds.
pub(crate) fn of_state<S: std::hash::Hash>(state: &S) -> u128 {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let mut low = DefaultHasher::new();
    state.hash(&mut low);
    let mut high = DefaultHasher::new();
    0x2545_f491_4f6c_dd1d_u64.hash(&mut high);
    state.hash(&mut high);
    (u128::from(high.finish()) << 64) | u128::from(low.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    /// The fingerprint depends on the set only, not on the order members came and went, and
    /// the sets of a small universe all get distinct fingerprints.
    #[test]
    fn a_set_has_one_fingerprint_and_distinct_sets_differ() {
        let keys = Keys::new(12);
        let of = |members: &[usize]| {
            let mut f = Fingerprint::default();
            for &m in members {
                f.toggle(&keys, m);
            }
            f
        };
        assert_eq!(of(&[1, 5, 9]), of(&[9, 1, 5]));
        assert_eq!(of(&[1, 5, 9, 7, 7]), of(&[1, 5, 9]), "added then removed");
        assert_eq!(of(&[]), Fingerprint::default());
        let all: HashSet<Fingerprint> = (0u32..1 << 12)
            .map(|mask| of(&(0..12).filter(|i| mask & (1 << i) != 0).collect::<Vec<_>>()))
            .collect();
        assert_eq!(all.len(), 1 << 12, "every subset of 12 indices has its own fingerprint");
    }
}
