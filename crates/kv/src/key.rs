//! A key as the keyspace's tree holds it: short keys (most of them: etcd's are paths of a few
//! dozen bytes at most, the benchmark's 16) inline, longer ones shared.
//!
//! Why not `Bytes`, which a request's key arrives as: a `Bytes` key points into the payload it
//! came with, somewhere in the heap, so every comparison on the way down the tree is a cache miss
//! on that payload. A lookup among 10,000 keys compares about a dozen keys, and a put, a get and
//! a snapshot's walk each make lookups (or reads every key). Inline, the bytes sit in the tree's
//! node, next to the keys they are compared with. Both forms are 32 bytes, as `Bytes` alone was.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::fmt;

use bytes::Bytes;

/// Longest key held inline.
const INLINE_BYTES: usize = 23;

/// A key of the keyspace. Ordered, compared and hashed as its bytes, so the tree is searched with
/// a plain `&[u8]` ([`Borrow`]).
#[derive(Clone)]
pub(crate) enum Key {
    /// Up to [`INLINE_BYTES`] bytes, in place; `len` says how many of `bytes` are the key.
    Inline { len: u8, bytes: [u8; INLINE_BYTES] },
    /// A longer key, sharing the buffer it arrived in.
    Shared(Bytes),
}

impl Key {
    /// The key's bytes.
    pub(crate) fn as_slice(&self) -> &[u8] {
        match self {
            Key::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Key::Shared(b) => b,
        }
    }

    /// The key as `Bytes`, for what leaves the keyspace (a read's or an event's `KeyValue`): a
    /// copy of an inline key, a shared handle on a long one.
    pub(crate) fn to_bytes(&self) -> Bytes {
        match self {
            Key::Inline { .. } => Bytes::copy_from_slice(self.as_slice()),
            Key::Shared(b) => b.clone(),
        }
    }
}

impl From<&Bytes> for Key {
    fn from(key: &Bytes) -> Self {
        match u8::try_from(key.len()) {
            Ok(len) if key.len() <= INLINE_BYTES => {
                let mut bytes = [0; INLINE_BYTES];
                bytes[..key.len()].copy_from_slice(key);
                Key::Inline { len, bytes }
            }
            _ => Key::Shared(key.clone()),
        }
    }
}

impl Borrow<[u8]> for Key {
    fn borrow(&self) -> &[u8] {
        self.as_slice()
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for Key {}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Key {
    fn cmp(&self, other: &Self) -> Ordering {
        self.as_slice().cmp(other.as_slice())
    }
}

impl std::hash::Hash for Key {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_slice().hash(state)
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&Bytes::copy_from_slice(self.as_slice()), f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_no_larger_than_the_bytes_it_replaced() {
        assert_eq!(std::mem::size_of::<Key>(), std::mem::size_of::<Bytes>());
    }

    #[test]
    fn short_keys_are_inline_and_long_ones_shared_and_both_order_as_their_bytes() {
        let short = Bytes::from_static(b"0123456789abcdefghijklm");
        let long = Bytes::from_static(b"0123456789abcdefghijklmn");
        assert!(matches!(Key::from(&short), Key::Inline { len: 23, .. }));
        assert!(matches!(Key::from(&long), Key::Shared(_)));
        let empty = Key::from(&Bytes::new());
        assert_eq!(empty.as_slice(), b"");
        // Inline and shared keys interleave by their bytes, not by their form.
        let mut keys: Vec<Key> =
            [&long, &short, &Bytes::from_static(b"1"), &Bytes::new()].into_iter().map(Key::from).collect();
        keys.sort();
        let sorted: Vec<&[u8]> = keys.iter().map(Key::as_slice).collect();
        assert_eq!(sorted, [&b""[..], &short[..], &long[..], &b"1"[..]]);
        assert_eq!(Key::from(&short).to_bytes(), short);
        assert_eq!(Key::from(&long).to_bytes(), long);
    }
}
