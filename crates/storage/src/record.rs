//! Record framing in log segments: `[len: u32][type: u8][crc32c(type, payload): u32][payload]`.
//!
//! A record is valid only if its whole frame is present and its checksum matches, so a write torn
//! by a crash is recognised as such and never mistaken for data.

use bytes::Bytes;

/// Bytes of framing before each payload.
pub const HEADER_BYTES: usize = 9;

/// Largest payload accepted; anything larger is treated as a corrupt length field.
pub const MAX_PAYLOAD_BYTES: usize = 64 << 20;

/// What a record holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordType {
    /// First record of every segment: magic, version, segment number, first index.
    SegmentHeader = 1,
    /// A log entry.
    Entry = 2,
    /// Term, vote and commit index; the last one in the log wins.
    HardState = 3,
}

impl RecordType {
    fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::SegmentHeader),
            2 => Some(Self::Entry),
            3 => Some(Self::HardState),
            _ => None,
        }
    }
}

/// Appends one framed record to `out`.
pub fn encode(out: &mut Vec<u8>, ty: RecordType, payload: &[u8]) {
    encode_with(out, ty, |buf| buf.extend_from_slice(payload));
}

/// Like [`encode`], with the payload written by `write` straight into `out` (behind room left
/// for the header, filled in after): no payload buffer of its own to allocate and copy from.
pub fn encode_with(out: &mut Vec<u8>, ty: RecordType, write: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER_BYTES]);
    write(out);
    let payload = &out[start + HEADER_BYTES..];
    assert!(payload.len() <= MAX_PAYLOAD_BYTES, "record of {} bytes", payload.len());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&[ty as u8]), payload);
    let len = payload.len() as u32;
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4] = ty as u8;
    out[start + 5..start + HEADER_BYTES].copy_from_slice(&crc.to_le_bytes());
}

/// The outcome of reading at an offset.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// A valid record, and the offset after it.
    Record {
        /// Its type.
        ty: RecordType,
        /// Its payload (sharing the segment buffer).
        payload: Bytes,
        /// Where the next record starts.
        next: usize,
    },
    /// Clean end: no bytes left, or only zeros (preallocated space).
    End,
    /// Not a valid record.
    Invalid {
        /// Why.
        reason: &'static str,
    },
}

/// Reads the record starting at `offset` of `buf`.
pub fn decode(buf: &Bytes, offset: usize) -> Decoded {
    let rest = &buf[offset..];
    if rest.iter().all(|&b| b == 0) {
        // Nothing more, or zeros: space preallocated for the segment (or zero-filled by a crash).
        // The log continues here, and the next write goes exactly here, over the zeros.
        return Decoded::End;
    }
    if rest.len() < HEADER_BYTES {
        return Decoded::Invalid { reason: "short header" };
    }
    let len = u32::from_le_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
    let Some(ty) = RecordType::from_u8(rest[4]) else {
        return Decoded::Invalid { reason: "unknown record type" };
    };
    if len > MAX_PAYLOAD_BYTES {
        return Decoded::Invalid { reason: "implausible length" };
    }
    if rest.len() < HEADER_BYTES + len {
        return Decoded::Invalid { reason: "record extends past the end of the file" };
    }
    let crc = u32::from_le_bytes(rest[5..9].try_into().expect("4 bytes"));
    let payload = &rest[HEADER_BYTES..HEADER_BYTES + len];
    if crc32c::crc32c_append(crc32c::crc32c(&[rest[4]]), payload) != crc {
        return Decoded::Invalid { reason: "checksum mismatch" };
    }
    let start = offset + HEADER_BYTES;
    Decoded::Record { ty, payload: buf.slice(start..start + len), next: start + len }
}

/// Whether a complete record with a matching checksum starts at `offset` (cheap rejection first,
/// for scanning damaged regions byte by byte).
pub fn is_valid_at(buf: &[u8], offset: usize) -> bool {
    let rest = &buf[offset..];
    if rest.len() < HEADER_BYTES || RecordType::from_u8(rest[4]).is_none() {
        return false;
    }
    let len = u32::from_le_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
    if len > MAX_PAYLOAD_BYTES || rest.len() < HEADER_BYTES + len {
        return false;
    }
    let crc = u32::from_le_bytes(rest[5..9].try_into().expect("4 bytes"));
    crc32c::crc32c_append(crc32c::crc32c(&[rest[4]]), &rest[HEADER_BYTES..HEADER_BYTES + len]) == crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_detect_damage() {
        let mut out = Vec::new();
        encode(&mut out, RecordType::Entry, b"hello");
        encode(&mut out, RecordType::HardState, b"");
        let buf = Bytes::from(out.clone());
        let Decoded::Record { ty, payload, next } = decode(&buf, 0) else { panic!() };
        assert_eq!((ty, &payload[..]), (RecordType::Entry, &b"hello"[..]));
        let Decoded::Record { ty, next: end, .. } = decode(&buf, next) else { panic!() };
        assert_eq!(ty, RecordType::HardState);
        assert_eq!(decode(&buf, end), Decoded::End);
        // Every single-bit flip of the first record is caught.
        for bit in 0..(HEADER_BYTES + 5) * 8 {
            let mut damaged = out.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            let d = decode(&Bytes::from(damaged), 0);
            let intact = matches!(&d, Decoded::Record { ty: RecordType::Entry, payload, .. } if &payload[..] == b"hello");
            assert!(!intact, "bit {bit} flipped unnoticed: {d:?}");
        }
        // Every truncation is caught.
        for cut in 1..HEADER_BYTES + 5 {
            assert!(matches!(decode(&Bytes::copy_from_slice(&out[..cut]), 0), Decoded::Invalid { .. }));
        }
    }
}
