//! Entry payloads packed into shared buffers.
//!
//! The keyspace keeps keys and values as slices of the entries they came in, so an entry's
//! allocation lives as long as its key does. A follower's entries share the frame they arrived
//! in; the leader's own proposals used to take one allocation each (and `Bytes` adds a shared
//! header to it on the first slice), and each command a follower forwarded came in a frame of its
//! own. With clients on every member, two thirds of the leader's entries are forwarded: it held
//! 60 MiB more than a follower at a million keys. Packing both kinds into buffers of
//! [`BUFFER_BYTES`] brings the leader down to a follower's size.
//!
//! The price is a frame's: one live key keeps its buffer's other bytes alive. A small buffer
//! bounds that to about two dozen entries.

use bytes::{Bytes, BytesMut};

/// Size of one shared buffer: about two dozen entries of a 16-byte key and a 256-byte value.
pub(crate) const BUFFER_BYTES: usize = 8 << 10;

/// The buffer payloads are written into, one after the other.
#[derive(Default)]
pub(crate) struct Payloads {
    /// The current buffer's unused part; the written parts handed out share its allocation.
    buf: BytesMut,
}

impl Payloads {
    /// The payload `write` appends, as a slice of the current buffer (a fresh one when less than
    /// an eighth of it is left; a payload larger than what is left grows it).
    pub(crate) fn pack(&mut self, write: impl FnOnce(&mut BytesMut)) -> Bytes {
        if self.buf.capacity() < BUFFER_BYTES / 8 {
            self.buf = BytesMut::with_capacity(BUFFER_BYTES);
        }
        write(&mut self.buf);
        self.buf.split().freeze()
    }
}

#[cfg(test)]
mod tests {
    use bytes::BufMut;

    use super::*;

    /// Payloads are what was written, and consecutive ones sit side by side in one allocation
    /// until it is used up; one larger than a buffer is whole too.
    #[test]
    fn payloads_share_buffers_and_are_what_was_written() {
        let mut p = Payloads::default();
        let written: Vec<Vec<u8>> = (0..100u8).map(|i| vec![i; 300]).collect();
        let packed: Vec<Bytes> = written.iter().map(|w| p.pack(|b| b.put_slice(w))).collect();
        assert!(packed.iter().zip(&written).all(|(p, w)| p[..] == w[..]));
        let adjacent = packed.windows(2).filter(|w| w[0].as_ptr().wrapping_add(300) == w[1].as_ptr()).count();
        // 24 payloads of 300 bytes fit in a buffer of 8 KiB before less than 1 KiB is left: 23 of
        // every 24 neighbours share one.
        assert!(adjacent >= 90, "only {adjacent} of 99 neighbours share a buffer");
        let big = vec![7u8; 3 * BUFFER_BYTES];
        assert_eq!(p.pack(|b| b.put_slice(&big))[..], big[..]);
        assert_eq!(p.pack(|b| b.put_slice(b"after"))[..], b"after"[..]);
    }
}
