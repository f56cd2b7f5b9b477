//! The keyspace's vocabulary, named as in etcd's `mvccpb`.

use bytes::Bytes;

/// A key-value pair at some revision (etcd's `mvccpb.KeyValue`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyValue {
    /// The key.
    pub key: Bytes,
    /// Revision of the last creation of this key (since it last did not exist).
    pub create_revision: i64,
    /// Revision of the last modification.
    pub mod_revision: i64,
    /// Number of modifications since creation (1 after creation; 0 means deleted).
    pub version: i64,
    /// The value.
    pub value: Bytes,
    /// Lease the key is attached to (0: none).
    pub lease: i64,
}

/// What happened to a key at a revision (etcd's `mvccpb.Event`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// Put or delete.
    pub kind: EventKind,
    /// The key after the event (for a delete: key, mod revision, version 0).
    pub kv: KeyValue,
    /// The key before the event, if it existed.
    pub prev_kv: Option<KeyValue>,
}

/// Kinds of event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// Created or modified.
    Put,
    /// Deleted.
    Delete,
}

/// A store revision: the main revision of the write transaction, and the position of the change
/// within it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Revision {
    /// Increases by one per write transaction.
    pub main: i64,
    /// Position within the transaction.
    pub sub: i64,
}

/// A set of keys as etcd's requests name them: `key` alone, `[key, range_end)`, or everything
/// from `key` when `range_end` is `"\0"` (everything at all when `key` is `"\0"` too).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRange {
    /// First key.
    pub key: Bytes,
    /// End (exclusive), empty for a single key, `"\0"` for "to the end".
    pub range_end: Bytes,
}

impl KeyRange {
    /// One key.
    pub fn single(key: impl Into<Bytes>) -> Self {
        Self { key: key.into(), range_end: Bytes::new() }
    }

    /// All keys with `prefix` (what `etcdctl get --prefix` sends).
    pub fn prefix(prefix: impl Into<Bytes>) -> Self {
        let key: Bytes = prefix.into();
        Self { range_end: prefix_end(&key), key }
    }

    /// Whether `k` is in the range.
    pub fn contains(&self, k: &[u8]) -> bool {
        if self.range_end.is_empty() {
            return k == &self.key[..];
        }
        if &self.range_end[..] == b"\0" {
            return k >= &self.key[..];
        }
        k >= &self.key[..] && k < &self.range_end[..]
    }
}

/// The smallest key after every key with `prefix` (etcd's `GetPrefixRangeEnd`): `"\0"` if the
/// prefix is empty or all 0xff.
pub fn prefix_end(prefix: &[u8]) -> Bytes {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Bytes::from(end);
        }
    }
    Bytes::from_static(b"\0")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_follow_etcd_conventions() {
        assert!(KeyRange::single("a").contains(b"a"));
        assert!(!KeyRange::single("a").contains(b"ab"));
        let p = KeyRange::prefix("ab");
        assert_eq!(&p.range_end[..], b"ac");
        assert!(p.contains(b"ab") && p.contains(b"abz") && !p.contains(b"ac") && !p.contains(b"aa"));
        let from = KeyRange { key: Bytes::from_static(b"m"), range_end: Bytes::from_static(b"\0") };
        assert!(from.contains(b"m") && from.contains(b"zzz") && !from.contains(b"a"));
        assert_eq!(&prefix_end(b"a\xff")[..], b"b");
        assert_eq!(&prefix_end(b"\xff\xff")[..], b"\0");
        assert_eq!(&prefix_end(b"")[..], b"\0");
    }
}
