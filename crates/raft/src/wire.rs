//! The wire format of Raft messages between servers: little-endian integers, u32-length-prefixed
//! byte strings, one tag byte per message kind. A transport frames each encoded message; decoding
//! a malformed frame is an error (the connection is closed), never a panic.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use thiserror::Error;

use crate::membership::Membership;
use crate::message::*;
use crate::types::{Entry, EntryKind, SnapshotMeta};

/// A frame that is not a valid message.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[error("malformed raft message: {0}")]
pub struct WireError(pub &'static str);

struct R(Bytes);

impl R {
    fn need(&self, n: usize) -> Result<(), WireError> {
        if self.0.remaining() < n {
            return Err(WireError("truncated"));
        }
        Ok(())
    }
    fn u8(&mut self) -> Result<u8, WireError> {
        self.need(1)?;
        Ok(self.0.get_u8())
    }
    fn u64(&mut self) -> Result<u64, WireError> {
        self.need(8)?;
        Ok(self.0.get_u64_le())
    }
    fn bool(&mut self) -> Result<bool, WireError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(WireError("bad boolean")),
        }
    }
    fn len(&mut self) -> Result<usize, WireError> {
        self.need(4)?;
        let n = self.0.get_u32_le() as usize;
        if n > self.0.remaining() {
            return Err(WireError("length beyond the frame"));
        }
        Ok(n)
    }
    fn bytes(&mut self) -> Result<Bytes, WireError> {
        let n = self.len()?;
        Ok(self.0.split_to(n))
    }
    fn opt_u64(&mut self) -> Result<Option<u64>, WireError> {
        Ok(if self.bool()? { Some(self.u64()?) } else { None })
    }
}

fn put_bytes(b: &mut BytesMut, v: &[u8]) {
    b.put_u32_le(v.len() as u32);
    b.put_slice(v);
}

fn put_opt(b: &mut BytesMut, v: Option<u64>) {
    b.put_u8(u8::from(v.is_some()));
    if let Some(v) = v {
        b.put_u64_le(v);
    }
}

fn put_entry(b: &mut BytesMut, e: &Entry) {
    b.put_u64_le(e.term);
    b.put_u64_le(e.index);
    b.put_u8(match e.kind {
        EntryKind::Normal => 1,
        EntryKind::Noop => 2,
        EntryKind::ConfChange => 3,
    });
    put_bytes(b, &e.data);
}

fn get_entry(r: &mut R) -> Result<Entry, WireError> {
    let (term, index) = (r.u64()?, r.u64()?);
    let kind = match r.u8()? {
        1 => EntryKind::Normal,
        2 => EntryKind::Noop,
        3 => EntryKind::ConfChange,
        _ => return Err(WireError("entry kind")),
    };
    Ok(Entry { term, index, kind, data: r.bytes()? })
}

fn put_meta(b: &mut BytesMut, m: &SnapshotMeta) {
    b.put_u64_le(m.last_included_index);
    b.put_u64_le(m.last_included_term);
    put_bytes(b, &m.membership.encode());
}

fn get_meta(r: &mut R) -> Result<SnapshotMeta, WireError> {
    let (last_included_index, last_included_term) = (r.u64()?, r.u64()?);
    let membership = Membership::decode(&r.bytes()?).ok_or(WireError("configuration"))?;
    Ok(SnapshotMeta { last_included_index, last_included_term, membership })
}

impl Message {
    /// Serializes the message for a peer connection.
    pub fn encode(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(self.size_bytes());
        self.encode_into(&mut b);
        b.freeze()
    }

    /// Appends the message's encoding to `b`: a transport building one write out of several
    /// messages encodes each in place instead of copying it in.
    pub fn encode_into(&self, out: &mut BytesMut) {
        let b = out;
        b.reserve(self.size_bytes());
        b.put_u64_le(self.from);
        b.put_u64_le(self.to);
        b.put_u64_le(self.term);
        match &self.body {
            MessageBody::RequestVote(v) => {
                b.put_u8(1);
                b.put_u8(u8::from(v.pre_vote));
                b.put_u64_le(v.last_log_index);
                b.put_u64_le(v.last_log_term);
                b.put_u8(u8::from(v.leadership_transfer));
            }
            MessageBody::RequestVoteResponse(v) => {
                b.put_u8(2);
                b.put_u8(u8::from(v.pre_vote));
                b.put_u8(u8::from(v.vote_granted));
            }
            MessageBody::AppendEntries(a) => {
                b.put_u8(3);
                b.put_u64_le(a.prev_log_index);
                b.put_u64_le(a.prev_log_term);
                b.put_u64_le(a.leader_commit);
                b.put_u64_le(a.read_round);
                b.put_u32_le(a.entries.len() as u32);
                a.entries.iter().for_each(|e| put_entry(b, e));
            }
            MessageBody::AppendEntriesResponse(r) => {
                b.put_u8(4);
                b.put_u8(u8::from(r.success));
                b.put_u64_le(r.match_index);
                b.put_u64_le(r.rejected_index);
                put_opt(b, r.hint.conflict_term);
                b.put_u64_le(r.hint.conflict_index);
                b.put_u64_le(r.read_round);
            }
            MessageBody::InstallSnapshot(s) => {
                b.put_u8(5);
                b.put_u64_le(s.leader);
                put_meta(b, &s.meta);
                b.put_u64_le(s.offset);
                b.put_u8(u8::from(s.done));
                put_bytes(b, &s.data);
            }
            MessageBody::InstallSnapshotResponse(r) => {
                b.put_u8(6);
                b.put_u64_le(r.index);
                b.put_u64_le(r.snapshot_term);
                b.put_u64_le(r.received);
                b.put_u8(u8::from(r.rewind));
            }
            MessageBody::CatchUp(c) => {
                b.put_u8(7);
                b.put_u64_le(c.target);
            }
            MessageBody::TimeoutNow => b.put_u8(8),
            MessageBody::Propose(p) => {
                b.put_u8(11);
                b.put_u32_le(p.commands.len() as u32);
                p.commands.iter().for_each(|c| put_bytes(b, c));
            }
            MessageBody::ReadIndex(r) => {
                b.put_u8(9);
                put_bytes(b, &r.context);
            }
            MessageBody::ReadIndexResponse(r) => {
                b.put_u8(10);
                put_bytes(b, &r.context);
                put_opt(b, r.read_index);
            }
        }
    }

    /// Parses a frame received from a peer.
    pub fn decode(frame: Bytes) -> Result<Self, WireError> {
        let mut r = R(frame);
        let (from, to, term) = (r.u64()?, r.u64()?, r.u64()?);
        let body = match r.u8()? {
            1 => MessageBody::RequestVote(RequestVote {
                pre_vote: r.bool()?,
                last_log_index: r.u64()?,
                last_log_term: r.u64()?,
                leadership_transfer: r.bool()?,
            }),
            2 => MessageBody::RequestVoteResponse(RequestVoteResponse {
                pre_vote: r.bool()?,
                vote_granted: r.bool()?,
            }),
            3 => {
                let (prev_log_index, prev_log_term, leader_commit, read_round) =
                    (r.u64()?, r.u64()?, r.u64()?, r.u64()?);
                let n = r.len()?;
                let entries = (0..n).map(|_| get_entry(&mut r)).collect::<Result<Vec<_>, _>>()?;
                MessageBody::AppendEntries(AppendEntries {
                    prev_log_index,
                    prev_log_term,
                    entries,
                    leader_commit,
                    read_round,
                })
            }
            4 => MessageBody::AppendEntriesResponse(AppendEntriesResponse {
                success: r.bool()?,
                match_index: r.u64()?,
                rejected_index: r.u64()?,
                hint: ConflictHint { conflict_term: r.opt_u64()?, conflict_index: r.u64()? },
                read_round: r.u64()?,
            }),
            5 => MessageBody::InstallSnapshot(InstallSnapshot {
                leader: r.u64()?,
                meta: get_meta(&mut r)?,
                offset: r.u64()?,
                done: r.bool()?,
                data: r.bytes()?,
            }),
            6 => MessageBody::InstallSnapshotResponse(InstallSnapshotResponse {
                index: r.u64()?,
                snapshot_term: r.u64()?,
                received: r.u64()?,
                rewind: r.bool()?,
            }),
            7 => MessageBody::CatchUp(CatchUp { target: r.u64()? }),
            8 => MessageBody::TimeoutNow,
            11 => {
                let n = r.len()?;
                let commands = (0..n).map(|_| r.bytes()).collect::<Result<Vec<_>, _>>()?;
                MessageBody::Propose(Propose { commands })
            }
            9 => MessageBody::ReadIndex(ReadIndexRequest { context: r.bytes()? }),
            10 => MessageBody::ReadIndexResponse(ReadIndexResponse {
                context: r.bytes()?,
                read_index: r.opt_u64()?,
            }),
            _ => return Err(WireError("unknown message kind")),
        };
        if r.0.has_remaining() {
            return Err(WireError("trailing bytes"));
        }
        Ok(Message { from, to, term, body })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<Message> {
        let entry = |i, kind| Entry { term: 3, index: i, kind, data: Bytes::from(vec![i as u8; i as usize]) };
        let meta = SnapshotMeta {
            last_included_index: 9,
            last_included_term: 2,
            membership: Membership::new([1, 2, 3]),
        };
        let bodies = vec![
            MessageBody::RequestVote(RequestVote {
                pre_vote: true,
                last_log_index: 7,
                last_log_term: 2,
                leadership_transfer: true,
            }),
            MessageBody::RequestVoteResponse(RequestVoteResponse { pre_vote: false, vote_granted: true }),
            MessageBody::AppendEntries(AppendEntries {
                prev_log_index: 4,
                prev_log_term: 2,
                entries: vec![
                    entry(5, EntryKind::Normal),
                    entry(6, EntryKind::Noop),
                    entry(7, EntryKind::ConfChange),
                ],
                leader_commit: 5,
                read_round: 11,
            }),
            MessageBody::AppendEntriesResponse(AppendEntriesResponse {
                success: false,
                match_index: 0,
                rejected_index: 9,
                hint: ConflictHint { conflict_term: Some(2), conflict_index: 6 },
                read_round: 3,
            }),
            MessageBody::AppendEntriesResponse(AppendEntriesResponse {
                success: true,
                match_index: 9,
                rejected_index: 0,
                hint: ConflictHint::default(),
                read_round: 0,
            }),
            MessageBody::InstallSnapshot(InstallSnapshot {
                leader: 1,
                meta,
                offset: 64,
                data: Bytes::from_static(b"chunk"),
                done: true,
            }),
            MessageBody::InstallSnapshotResponse(InstallSnapshotResponse {
                index: 9,
                snapshot_term: 2,
                received: 69,
                rewind: true,
            }),
            MessageBody::CatchUp(CatchUp { target: 5 }),
            MessageBody::TimeoutNow,
            MessageBody::Propose(Propose { commands: vec![Bytes::from_static(b"put x"), Bytes::new()] }),
            MessageBody::ReadIndex(ReadIndexRequest { context: Bytes::from_static(b"ctx") }),
            MessageBody::ReadIndexResponse(ReadIndexResponse {
                context: Bytes::from_static(b"ctx"),
                read_index: Some(12),
            }),
            MessageBody::ReadIndexResponse(ReadIndexResponse { context: Bytes::new(), read_index: None }),
        ];
        bodies.into_iter().map(|body| Message { from: 1, to: 2, term: 3, body }).collect()
    }

    #[test]
    fn every_message_kind_round_trips_and_every_truncation_is_an_error() {
        for m in samples() {
            let bytes = m.encode();
            assert_eq!(Message::decode(bytes.clone()).as_ref(), Ok(&m));
            for cut in 0..bytes.len() {
                assert!(Message::decode(bytes.slice(..cut)).is_err(), "{} cut at {cut}", m.kind_name());
            }
            let mut longer = bytes.to_vec();
            longer.push(7);
            assert_eq!(Message::decode(Bytes::from(longer)), Err(WireError("trailing bytes")));
        }
    }

    #[test]
    fn encoding_into_a_buffer_appends_the_same_bytes() {
        let mut buf = BytesMut::from(&b"before"[..]);
        let mut expected = b"before".to_vec();
        for m in samples() {
            m.encode_into(&mut buf);
            expected.extend_from_slice(&m.encode());
        }
        assert_eq!(&buf[..], &expected[..]);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut rng = crate::rng::SplitMix64::new(5);
        for len in 0..400usize {
            let garbage: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
            let _ = Message::decode(Bytes::from(garbage));
        }
        // A huge entry count with no entries behind it is refused before allocating.
        let mut b = BytesMut::new();
        b.put_u64_le(1);
        b.put_u64_le(2);
        b.put_u64_le(3);
        b.put_u8(3);
        for _ in 0..4 {
            b.put_u64_le(0);
        }
        b.put_u32_le(u32::MAX);
        assert_eq!(Message::decode(b.freeze()), Err(WireError("length beyond the frame")));
    }
}
