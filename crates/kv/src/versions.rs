//! A key's versions as the keyspace's tree holds them: the newest in the tree's node itself, the
//! older ones in a vector.
//!
//! Why not one `Vec<Version>`: nearly every access to a key wants its newest version (a put
//! builds on it, a get at the current revision returns it), and in a vector that is somewhere
//! else in the heap, at the end of the key's history: a cache miss after the one of finding the
//! key, which the put or get then waits for. Apply was 11% of the members' CPU samples at
//! 256-client puts, 4% reading that last version (docs/BENCHMARKS.md, twelfth pass). Held in the
//! node, the newest version is next to what the search just read. A key written once has no
//! vector at all (no allocation); the next write moves the old newest into one.

use crate::mvcc::Version;

/// A key's versions, in revision order; never empty.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Versions {
    /// Every version but the newest, oldest first.
    older: Vec<Version>,
    /// The newest version.
    newest: Version,
}

impl Versions {
    /// A key's first version.
    pub(crate) fn new(first: Version) -> Self {
        Self { older: Vec::new(), newest: first }
    }

    /// A key's versions from its older ones, oldest first, and its newest.
    pub(crate) fn from_parts(older: Vec<Version>, newest: Version) -> Self {
        Self { older, newest }
    }

    /// The newest version.
    pub(crate) fn last(&self) -> &Version {
        &self.newest
    }

    /// The oldest version.
    pub(crate) fn first(&self) -> &Version {
        self.older.first().unwrap_or(&self.newest)
    }

    /// The version at `index` in revision order, if there is one.
    pub(crate) fn get(&self, index: usize) -> Option<&Version> {
        match index.cmp(&self.older.len()) {
            std::cmp::Ordering::Less => Some(&self.older[index]),
            std::cmp::Ordering::Equal => Some(&self.newest),
            std::cmp::Ordering::Greater => None,
        }
    }

    /// Every version, oldest first.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Version> {
        self.older.iter().chain(std::iter::once(&self.newest))
    }

    /// How many versions, from the oldest, satisfy `pred`, for a `pred` that holds for a prefix
    /// of them (as [`slice::partition_point`]).
    pub(crate) fn partition_point(&self, pred: impl Fn(&Version) -> bool) -> usize {
        let in_older = self.older.partition_point(&pred);
        if in_older < self.older.len() {
            return in_older;
        }
        in_older + usize::from(pred(&self.newest))
    }

    /// Adds a newer version.
    pub(crate) fn push(&mut self, newer: Version) {
        let old = std::mem::replace(&mut self.newest, newer);
        self.older.push(old);
    }

    /// Forgets history before main revision `revision` as a compaction does: keeps the latest
    /// version at or before it and everything after, and drops a tombstone that is older than
    /// `revision` when it would be the first version left. Returns whether any version is left
    /// (none: the key goes).
    pub(crate) fn compact(&mut self, revision: i64) -> bool {
        let keep_from = self.partition_point(|v| v.main <= revision).saturating_sub(1);
        // `keep_from` is at most `len - 1`: the newest always survives this step.
        self.older.drain(..keep_from);
        if self.first().is_tombstone() && self.first().main < revision {
            if self.older.is_empty() {
                return false;
            }
            self.older.remove(0);
        }
        // Give back the room of the history just dropped: a key rewritten a thousand times
        // would otherwise keep space for a thousand versions after compaction.
        if self.older.capacity() > 2 * self.older.len() {
            self.older.shrink_to_fit();
        }
        true
    }
}

#[cfg(test)]
impl Versions {
    /// How many versions the key has.
    pub(crate) fn len(&self) -> usize {
        self.older.len() + 1
    }

    /// Room for older versions.
    pub(crate) fn older_capacity(&self) -> usize {
        self.older.capacity()
    }
}

impl std::ops::Index<usize> for Versions {
    type Output = Version;

    fn index(&self, index: usize) -> &Version {
        self.get(index).expect("a version index within the key's history")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Revision;

    fn put(main: i64) -> Version {
        Version::restored(
            Revision { main, sub: 0 },
            Some(crate::types::KeyValue {
                key: bytes::Bytes::from_static(b"k"),
                create_revision: 1,
                mod_revision: main,
                version: main,
                value: bytes::Bytes::new(),
                lease: 0,
            }),
        )
        .unwrap()
    }

    fn tombstone(main: i64) -> Version {
        Version::restored(Revision { main, sub: 0 }, None).unwrap()
    }

    fn mains(v: &Versions) -> Vec<i64> {
        v.iter().map(|v| v.main).collect()
    }

    /// The split into a newest and older ones is invisible: order, indexing, search and length
    /// are those of the one sequence.
    #[test]
    fn reads_as_one_sequence_in_revision_order() {
        let mut v = Versions::new(put(2));
        assert_eq!((v.iter().count(), v.first().main, v.last().main), (1, 2, 2));
        assert_eq!(v.older_capacity(), 0, "a key written once allocates nothing");
        for main in [4, 6, 8] {
            v.push(put(main));
        }
        assert_eq!(mains(&v), [2, 4, 6, 8]);
        assert_eq!((v.iter().count(), v.first().main, v.last().main), (4, 2, 8));
        assert_eq!(v.get(3).map(|v| v.main), Some(8));
        assert_eq!(v[1].main, 4);
        assert!(v.get(4).is_none());
        for (at, expected) in [(1, 0), (2, 1), (5, 2), (7, 3), (8, 4), (100, 4)] {
            assert_eq!(v.partition_point(|x| x.main <= at), expected, "versions at or before {at}");
        }
        assert_eq!(mains(&Versions::from_parts(vec![put(1)], put(3))), [1, 3]);
    }

    /// Compaction keeps the version a read at the compaction revision needs, and drops a key
    /// whose only remaining version is an older deletion.
    #[test]
    fn compaction_keeps_what_a_read_at_the_revision_needs() {
        let mut v = Versions::from_parts(vec![put(2), put(4), put(6)], put(8));
        assert!(v.compact(5));
        assert_eq!(mains(&v), [4, 6, 8], "4 is the value at revision 5");
        assert!(v.compact(8));
        assert_eq!(mains(&v), [8], "the newest alone");
        let mut deleted = Versions::from_parts(vec![put(2)], tombstone(4));
        assert!(deleted.compact(4), "a deletion at exactly the revision is kept");
        assert_eq!(mains(&deleted), [4]);
        assert!(!deleted.compact(5), "a deletion before the revision, alone: the key goes");
        let mut rewritten = Versions::from_parts(vec![put(2), tombstone(4)], put(6));
        assert!(rewritten.compact(5));
        assert_eq!(mains(&rewritten), [6], "the old deletion goes, the later write stays");
    }
}
