//! Binary encodings of the core's types, little-endian, shared by log records and snapshot files.

use balsa_raft::{Entry, EntryKind, HardState, Membership, SnapshotMeta};
use bytes::{Buf, BufMut, Bytes};

/// A value that cannot be decoded.
#[derive(Debug, PartialEq, Eq)]
pub struct DecodeError(pub &'static str);

fn need(buf: &[u8], n: usize, what: &'static str) -> Result<(), DecodeError> {
    if buf.remaining() < n {
        return Err(DecodeError(what));
    }
    Ok(())
}

/// Appends an entry: index, term, kind, payload length, payload.
pub fn put_entry(out: &mut Vec<u8>, e: &Entry) {
    out.put_u64_le(e.index);
    out.put_u64_le(e.term);
    out.put_u8(match e.kind {
        EntryKind::Normal => 1,
        EntryKind::Noop => 2,
        EntryKind::ConfChange => 3,
    });
    out.put_u32_le(e.data.len() as u32);
    out.put_slice(&e.data);
}

/// Reads an entry; the payload shares `buf`'s allocation.
pub fn get_entry(buf: &mut Bytes) -> Result<Entry, DecodeError> {
    need(buf, 21, "entry header")?;
    let index = buf.get_u64_le();
    let term = buf.get_u64_le();
    let kind = match buf.get_u8() {
        1 => EntryKind::Normal,
        2 => EntryKind::Noop,
        3 => EntryKind::ConfChange,
        _ => return Err(DecodeError("entry kind")),
    };
    let len = buf.get_u32_le() as usize;
    need(buf, len, "entry payload")?;
    let data = buf.split_to(len);
    Ok(Entry { term, index, kind, data })
}

/// Appends a hard state: term, vote (0 = none), commit index.
pub fn put_hard_state(out: &mut Vec<u8>, hs: &HardState) {
    out.put_u64_le(hs.current_term);
    out.put_u64_le(hs.voted_for.unwrap_or(0));
    out.put_u64_le(hs.commit_index);
}

/// Reads a hard state.
pub fn get_hard_state(buf: &mut Bytes) -> Result<HardState, DecodeError> {
    need(buf, 24, "hard state")?;
    let current_term = buf.get_u64_le();
    let vote = buf.get_u64_le();
    let commit_index = buf.get_u64_le();
    Ok(HardState { current_term, voted_for: (vote != 0).then_some(vote), commit_index })
}

/// Appends snapshot metadata: index, term, configuration (length-prefixed).
pub fn put_snapshot_meta(out: &mut Vec<u8>, m: &SnapshotMeta) {
    out.put_u64_le(m.last_included_index);
    out.put_u64_le(m.last_included_term);
    let membership = m.membership.encode();
    out.put_u32_le(membership.len() as u32);
    out.put_slice(&membership);
}

/// Reads snapshot metadata.
pub fn get_snapshot_meta(buf: &mut Bytes) -> Result<SnapshotMeta, DecodeError> {
    need(buf, 20, "snapshot meta")?;
    let last_included_index = buf.get_u64_le();
    let last_included_term = buf.get_u64_le();
    let len = buf.get_u32_le() as usize;
    need(buf, len, "configuration")?;
    let membership = Membership::decode(&buf.split_to(len)).ok_or(DecodeError("configuration"))?;
    Ok(SnapshotMeta { last_included_index, last_included_term, membership })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let e = Entry { term: 3, index: 9, kind: EntryKind::Normal, data: Bytes::from_static(b"abc") };
        let mut out = Vec::new();
        put_entry(&mut out, &e);
        let hs = HardState { current_term: 4, voted_for: Some(2), commit_index: 8 };
        put_hard_state(&mut out, &hs);
        let meta = SnapshotMeta {
            last_included_index: 5,
            last_included_term: 2,
            membership: Membership::new([1, 2, 3]),
        };
        put_snapshot_meta(&mut out, &meta);
        let mut b = Bytes::from(out);
        assert_eq!(get_entry(&mut b).unwrap(), e);
        assert_eq!(get_hard_state(&mut b).unwrap(), hs);
        assert_eq!(get_snapshot_meta(&mut b).unwrap(), meta);
        assert!(b.is_empty());
    }

    #[test]
    fn truncated_input_is_an_error_not_a_panic() {
        let e = Entry { term: 3, index: 9, kind: EntryKind::Noop, data: Bytes::from_static(b"abcdef") };
        let mut out = Vec::new();
        put_entry(&mut out, &e);
        for cut in 0..out.len() {
            let mut b = Bytes::copy_from_slice(&out[..cut]);
            assert!(get_entry(&mut b).is_err());
        }
        let mut bad_kind = out.clone();
        bad_kind[16] = 9;
        assert!(get_entry(&mut Bytes::from(bad_kind)).is_err());
        let mut b = Bytes::from_static(&[255, 255, 255, 255]);
        assert!(get_snapshot_meta(&mut b).is_err());
    }
}
