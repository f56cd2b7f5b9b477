//! Binary encodings: commands for the Raft log, the whole state for snapshots. Little-endian
//! integers, u32-length-prefixed byte strings, one tag byte per variant. Decoding never panics:
//! malformed input is an error.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::command::*;
use crate::error::KvError;
use crate::key::Key;
use crate::machine::{Lease, StateMachine};
use crate::members::MemberAttrs;
use crate::mvcc::{Mvcc, Version};
use crate::sessions::{Session, Sessions};
use crate::streams::{Retention, StreamError, StreamInfo, StreamResponse};
use crate::types::{KeyRange, KeyValue, Revision};

/// The tag of [`Command::Sessioned`].
const SESSIONED: u8 = 33;

/// Nesting limit for transactions inside transactions, so hostile input cannot exhaust the stack.
const MAX_TXN_DEPTH: u32 = 32;

/// Writes the encoding (shared with `streams.rs`).
pub(crate) struct W(BytesMut);
pub(crate) use W as Writer;

impl W {
    /// Bytes written so far.
    pub(crate) fn written(&self) -> usize {
        self.0.len()
    }
    pub(crate) fn u8(&mut self, v: u8) {
        self.0.put_u8(v);
    }
    pub(crate) fn i64(&mut self, v: i64) {
        self.0.put_i64_le(v);
    }
    pub(crate) fn u64(&mut self, v: u64) {
        self.0.put_u64_le(v);
    }
    pub(crate) fn bool(&mut self, v: bool) {
        self.0.put_u8(u8::from(v));
    }
    pub(crate) fn bytes(&mut self, v: &[u8]) {
        self.0.put_u32_le(v.len() as u32);
        self.0.put_slice(v);
    }
    pub(crate) fn len(&mut self, n: usize) {
        self.0.put_u32_le(n as u32);
    }
}

/// Reads the encoding (shared with `streams.rs`). The flag says whether byte strings are copied
/// out (restoring a snapshot: keys and values must not share, and so keep alive, the whole
/// snapshot buffer for as long as any one of them lives) or shared with the input (a command).
pub(crate) struct R(Bytes, bool);
pub(crate) use R as Reader;

fn bad(what: &'static str) -> KvError {
    KvError::Malformed(what)
}

impl R {
    pub(crate) fn need(&self, n: usize, what: &'static str) -> Result<(), KvError> {
        if self.0.remaining() < n {
            return Err(bad(what));
        }
        Ok(())
    }
    pub(crate) fn u8(&mut self) -> Result<u8, KvError> {
        self.need(1, "truncated")?;
        Ok(self.0.get_u8())
    }
    pub(crate) fn i64(&mut self) -> Result<i64, KvError> {
        self.need(8, "truncated")?;
        Ok(self.0.get_i64_le())
    }
    pub(crate) fn u64(&mut self) -> Result<u64, KvError> {
        self.need(8, "truncated")?;
        Ok(self.0.get_u64_le())
    }
    pub(crate) fn bool(&mut self) -> Result<bool, KvError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(bad("bad boolean")),
        }
    }
    pub(crate) fn len(&mut self) -> Result<usize, KvError> {
        self.need(4, "truncated")?;
        let n = self.0.get_u32_le() as usize;
        // Every element takes at least one byte: a count larger than what is left is a lie.
        if n > self.0.remaining() {
            return Err(bad("length beyond the input"));
        }
        Ok(n)
    }
    pub(crate) fn bytes(&mut self) -> Result<Bytes, KvError> {
        let n = self.len()?;
        let b = self.0.split_to(n);
        Ok(if self.1 { Bytes::copy_from_slice(&b) } else { b })
    }
    pub(crate) fn string(&mut self) -> Result<String, KvError> {
        String::from_utf8(self.bytes()?.to_vec()).map_err(|_| bad("text that is not UTF-8"))
    }
}

fn put_range(w: &mut W, r: &KeyRange) {
    w.bytes(&r.key);
    w.bytes(&r.range_end);
}

fn get_range(r: &mut R) -> Result<KeyRange, KvError> {
    Ok(KeyRange { key: r.bytes()?, range_end: r.bytes()? })
}

fn put_put(w: &mut W, p: &PutRequest) {
    w.bytes(&p.key);
    w.bytes(&p.value);
    w.i64(p.lease);
    w.bool(p.prev_kv);
    w.bool(p.ignore_value);
    w.bool(p.ignore_lease);
}

fn get_put(r: &mut R) -> Result<PutRequest, KvError> {
    Ok(PutRequest {
        key: r.bytes()?,
        value: r.bytes()?,
        lease: r.i64()?,
        prev_kv: r.bool()?,
        ignore_value: r.bool()?,
        ignore_lease: r.bool()?,
    })
}

fn put_range_req(w: &mut W, q: &RangeRequest) {
    put_range(w, &q.range);
    w.i64(q.limit);
    w.i64(q.revision);
    w.u8(q.sort_order as u8);
    w.u8(q.sort_target as u8);
    w.bool(q.keys_only);
    w.bool(q.count_only);
    for v in [q.min_mod_revision, q.max_mod_revision, q.min_create_revision, q.max_create_revision] {
        w.i64(v);
    }
}

fn get_range_req(r: &mut R) -> Result<RangeRequest, KvError> {
    let range = get_range(r)?;
    let (limit, revision) = (r.i64()?, r.i64()?);
    let sort_order = match r.u8()? {
        0 => SortOrder::None,
        1 => SortOrder::Ascend,
        2 => SortOrder::Descend,
        _ => return Err(bad("sort order")),
    };
    let sort_target = match r.u8()? {
        0 => SortTarget::Key,
        1 => SortTarget::Version,
        2 => SortTarget::Create,
        3 => SortTarget::Mod,
        4 => SortTarget::Value,
        _ => return Err(bad("sort target")),
    };
    Ok(RangeRequest {
        range,
        limit,
        revision,
        sort_order,
        sort_target,
        keys_only: r.bool()?,
        count_only: r.bool()?,
        min_mod_revision: r.i64()?,
        max_mod_revision: r.i64()?,
        min_create_revision: r.i64()?,
        max_create_revision: r.i64()?,
    })
}

fn put_txn(w: &mut W, t: &TxnRequest) {
    w.len(t.compare.len());
    for c in &t.compare {
        put_range(w, &c.range);
        w.u8(c.result as u8);
        match &c.target {
            CompareTarget::Version(v) => (w.u8(0), w.i64(*v)).1,
            CompareTarget::Create(v) => (w.u8(1), w.i64(*v)).1,
            CompareTarget::Mod(v) => (w.u8(2), w.i64(*v)).1,
            CompareTarget::Value(v) => (w.u8(3), w.bytes(v)).1,
            CompareTarget::Lease(v) => (w.u8(4), w.i64(*v)).1,
        }
    }
    for ops in [&t.success, &t.failure] {
        w.len(ops.len());
        for op in ops {
            match op {
                RequestOp::Range(q) => (w.u8(0), put_range_req(w, q)).1,
                RequestOp::Put(p) => (w.u8(1), put_put(w, p)).1,
                RequestOp::DeleteRange(d) => (w.u8(2), put_range(w, &d.range), w.bool(d.prev_kv)).1,
                RequestOp::Txn(t) => (w.u8(3), put_txn(w, t)).1,
            };
        }
    }
}

fn get_txn(r: &mut R, depth: u32) -> Result<TxnRequest, KvError> {
    if depth > MAX_TXN_DEPTH {
        return Err(bad("transactions nested too deep"));
    }
    let mut compare = Vec::new();
    for _ in 0..r.len()? {
        let range = get_range(r)?;
        let result = match r.u8()? {
            0 => CompareResult::Equal,
            1 => CompareResult::Greater,
            2 => CompareResult::Less,
            3 => CompareResult::NotEqual,
            _ => return Err(bad("compare result")),
        };
        let target = match r.u8()? {
            0 => CompareTarget::Version(r.i64()?),
            1 => CompareTarget::Create(r.i64()?),
            2 => CompareTarget::Mod(r.i64()?),
            3 => CompareTarget::Value(r.bytes()?),
            4 => CompareTarget::Lease(r.i64()?),
            _ => return Err(bad("compare target")),
        };
        compare.push(Compare { range, target, result });
    }
    let mut branches = [Vec::new(), Vec::new()];
    for branch in &mut branches {
        for _ in 0..r.len()? {
            branch.push(match r.u8()? {
                0 => RequestOp::Range(get_range_req(r)?),
                1 => RequestOp::Put(get_put(r)?),
                2 => RequestOp::DeleteRange(DeleteRangeRequest { range: get_range(r)?, prev_kv: r.bool()? }),
                3 => RequestOp::Txn(get_txn(r, depth + 1)?),
                _ => return Err(bad("transaction operation")),
            });
        }
    }
    let [success, failure] = branches;
    Ok(TxnRequest { compare, success, failure })
}

impl Command {
    /// Serializes the command for a log entry.
    pub fn encode(&self) -> Bytes {
        let mut buf = BytesMut::new();
        self.encode_into(&mut buf);
        buf.freeze()
    }

    /// Appends the command's encoding to `buf`: the server packs the entries it proposes into
    /// shared buffers instead of one allocation each.
    pub fn encode_into(&self, buf: &mut BytesMut) {
        let mut w = W(std::mem::take(buf));
        match self {
            Command::Put(p) => (w.u8(1), put_put(&mut w, p)).1,
            Command::DeleteRange(d) => (w.u8(2), put_range(&mut w, &d.range), w.bool(d.prev_kv)).1,
            Command::Txn(t) => (w.u8(3), put_txn(&mut w, t)).1,
            Command::Compact { revision } => (w.u8(4), w.i64(*revision)).1,
            Command::LeaseGrant { id, ttl_secs } => (w.u8(5), w.i64(*id), w.i64(*ttl_secs)).1,
            Command::LeaseRevoke { id } => (w.u8(6), w.i64(*id)).1,
            Command::LeaseKeepAlive { id } => (w.u8(7), w.i64(*id)).1,
            Command::MemberPut(m) => (w.u8(8), put_member(&mut w, m)).1,
            Command::MemberForget { id } => (w.u8(9), w.i64(*id as i64)).1,
            // Tags 10-19 are left for other commands; log streams take 20 (`streams.rs`).
            Command::Stream(c) => (w.u8(20), crate::streams::put_command(&mut w, c)).1,
            // Session commands take tags 30-33.
            Command::SessionRegister { timeout_ms, now_ms } => {
                (w.u8(30), w.u64(*timeout_ms), w.u64(*now_ms)).1
            }
            Command::SessionClose { client_id } => (w.u8(31), w.u64(*client_id)).1,
            Command::Clock { now_ms } => (w.u8(32), w.u64(*now_ms)).1,
            Command::Sessioned { client_id, seq, command } => {
                (w.u8(SESSIONED), w.u64(*client_id), w.u64(*seq), w.bytes(&command.encode())).1
            }
        }
        *buf = w.0;
    }

    /// Parses a log entry's payload.
    pub fn decode(data: Bytes) -> Result<Self, KvError> {
        let mut r = R(data, false);
        let cmd = match r.u8()? {
            1 => Command::Put(get_put(&mut r)?),
            2 => Command::DeleteRange(DeleteRangeRequest { range: get_range(&mut r)?, prev_kv: r.bool()? }),
            3 => Command::Txn(get_txn(&mut r, 0)?),
            4 => Command::Compact { revision: r.i64()? },
            5 => Command::LeaseGrant { id: r.i64()?, ttl_secs: r.i64()? },
            6 => Command::LeaseRevoke { id: r.i64()? },
            7 => Command::LeaseKeepAlive { id: r.i64()? },
            8 => Command::MemberPut(get_member(&mut r)?),
            9 => Command::MemberForget { id: r.i64()? as u64 },
            20 => Command::Stream(crate::streams::get_command(&mut r)?),
            30 => Command::SessionRegister { timeout_ms: r.u64()?, now_ms: r.u64()? },
            31 => Command::SessionClose { client_id: r.u64()? },
            32 => Command::Clock { now_ms: r.u64()? },
            SESSIONED => {
                let (client_id, seq, inner) = (r.u64()?, r.u64()?, r.bytes()?);
                // One level only: nesting sessions is meaningless, and refusing it here keeps
                // hostile input from recursing deep.
                if inner.first() == Some(&SESSIONED) {
                    return Err(bad("a sessioned command inside another"));
                }
                Command::Sessioned { client_id, seq, command: Box::new(Command::decode(inner)?) }
            }
            _ => return Err(bad("unknown command")),
        };
        if r.0.has_remaining() {
            return Err(bad("trailing bytes"));
        }
        Ok(cmd)
    }
}

fn put_member(w: &mut W, m: &MemberAttrs) {
    w.i64(m.id as i64);
    w.bytes(m.name.as_bytes());
    for urls in [&m.peer_urls, &m.client_urls] {
        w.len(urls.len());
        for u in urls {
            w.bytes(u.as_bytes());
        }
    }
}

fn get_member(r: &mut R) -> Result<MemberAttrs, KvError> {
    let id = r.i64()? as u64;
    let name = r.string()?;
    let mut lists = [Vec::new(), Vec::new()];
    for list in &mut lists {
        for _ in 0..r.len()? {
            list.push(r.string()?);
        }
    }
    let [peer_urls, client_urls] = lists;
    Ok(MemberAttrs { id, name, peer_urls, client_urls })
}

fn put_kv(w: &mut W, kv: &KeyValue) {
    w.bytes(&kv.value);
    for v in [kv.create_revision, kv.mod_revision, kv.version, kv.lease] {
        w.i64(v);
    }
}

fn get_kv(r: &mut R, key: &Bytes) -> Result<KeyValue, KvError> {
    Ok(KeyValue {
        key: key.clone(),
        value: r.bytes()?,
        create_revision: r.i64()?,
        mod_revision: r.i64()?,
        version: r.i64()?,
        lease: r.i64()?,
    })
}

impl StateMachine {
    /// Serializes the whole state (history since the last compaction included) for a snapshot.
    pub fn encode(&self) -> Bytes {
        self.encode_sized(0)
    }

    /// As [`StateMachine::encode`], into a buffer of `capacity` bytes to start with: a caller
    /// that knows about how large the encoding will be (the last snapshot's size) saves the
    /// buffer's doublings, each a copy of everything encoded so far and fresh pages to fault in.
    pub fn encode_sized(&self, capacity: usize) -> Bytes {
        let mut encoder = self.begin_snapshot(capacity);
        encoder.step(self, usize::MAX);
        encoder.finish()
    }

    /// Begins encoding the state as it is now, a step at a time ([`SnapshotEncoder::step`]), so
    /// that a large state need not be encoded in one go on the thread that applies commands.
    /// Leases, members, sessions and the streams' headers are encoded here; the keys and the
    /// streams' records as the steps go.
    pub fn begin_snapshot(&self, capacity: usize) -> SnapshotEncoder {
        let mut head = W(BytesMut::with_capacity(capacity));
        head.i64(self.mvcc.current);
        head.i64(self.mvcc.compacted);
        head.len(0); // the key count, filled in by `finish`
        let mut tail = W(BytesMut::new());
        tail.len(self.leases.len());
        for (id, lease) in &self.leases {
            tail.i64(*id);
            tail.i64(lease.ttl_secs);
            tail.len(lease.keys.len());
            for k in &lease.keys {
                tail.bytes(k);
            }
        }
        tail.len(self.members.len());
        for m in self.members.values() {
            put_member(&mut tail, m);
        }
        put_sessions(&mut tail, &self.sessions);
        crate::streams::put_streams_head(&mut tail, &self.streams);
        let streams = self.streams.streams.iter().map(|(name, st)| StreamPart::of(name, st)).collect();
        SnapshotEncoder {
            w: head,
            revision: self.mvcc.current,
            compacted: self.mvcc.compacted,
            keys: 0,
            resume_after: None,
            keys_done: false,
            tail: tail.0.freeze(),
            streams,
            done: false,
        }
    }

    /// Restores a state serialized by [`StateMachine::encode`]. Keys and values are copied out
    /// of `data`, so the state keeps nothing of it alive once restored.
    pub fn decode(data: Bytes) -> Result<Self, KvError> {
        let mut r = R(data, true);
        let (current, compacted) = (r.i64()?, r.i64()?);
        let mut keys = BTreeMap::new();
        for _ in 0..r.len()? {
            let key = r.bytes()?;
            // Exactly the room needed (see `Mvcc::put`); `len` has checked the count against
            // the bytes left, so a hostile count cannot make this large.
            let count = r.len()?;
            if count == 0 {
                // The keyspace never holds a key without versions (its last one goes with it).
                return Err(bad("a key without versions"));
            }
            let mut versions = Vec::with_capacity(count);
            for _ in 0..count {
                let rev = Revision { main: r.i64()?, sub: r.i64()? };
                let kv = match r.u8()? {
                    0 => None,
                    1 => Some(get_kv(&mut r, &key)?),
                    _ => return Err(bad("version tag")),
                };
                versions.push(Version::restored(rev, kv)?);
            }
            keys.insert(Key::from(&key), versions);
        }
        let mut leases = BTreeMap::new();
        for _ in 0..r.len()? {
            let (id, ttl_secs) = (r.i64()?, r.i64()?);
            let mut lease_keys = BTreeSet::new();
            for _ in 0..r.len()? {
                lease_keys.insert(r.bytes()?);
            }
            leases.insert(id, Lease { ttl_secs, keys: lease_keys });
        }
        let mut members = BTreeMap::new();
        for _ in 0..r.len()? {
            let m = get_member(&mut r)?;
            members.insert(m.id, m);
        }
        let sessions = get_sessions(&mut r)?;
        let streams = crate::streams::get_streams(&mut r)?;
        if r.0.has_remaining() {
            return Err(bad("trailing bytes"));
        }
        Ok(Self { mvcc: Mvcc { keys, current, compacted }, leases, members, sessions, streams })
    }
}

fn put_sessions(w: &mut W, s: &Sessions) {
    w.u64(s.next_id);
    w.u64(s.clock_ms);
    w.len(s.table.len());
    for (id, session) in &s.table {
        w.u64(*id);
        w.u64(session.timeout_ms);
        w.u64(session.last_active_ms);
        w.u64(session.last_seq);
        match &session.last_result {
            None => w.u8(0),
            Some(result) => (w.u8(1), put_result(w, result)).1,
        }
    }
}

fn get_sessions(r: &mut R) -> Result<Sessions, KvError> {
    let (next_id, clock_ms) = (r.u64()?, r.u64()?);
    let mut table = BTreeMap::new();
    for _ in 0..r.len()? {
        let id = r.u64()?;
        let (timeout_ms, last_active_ms, last_seq) = (r.u64()?, r.u64()?, r.u64()?);
        let last_result = match r.u8()? {
            0 => None,
            1 => Some(get_result(r)?),
            _ => return Err(bad("session result tag")),
        };
        table.insert(id, Session { timeout_ms, last_active_ms, last_seq, last_result });
    }
    Ok(Sessions { table, next_id, clock_ms })
}

/// A remembered result: a response of a sessionable command, or the error it met.
fn put_result(w: &mut W, result: &Result<Response, KvError>) {
    match result {
        Ok(resp) => (w.u8(1), put_response(w, resp)).1,
        Err(e) => (w.u8(0), put_error(w, e)).1,
    }
}

fn get_result(r: &mut R) -> Result<Result<Response, KvError>, KvError> {
    match r.u8()? {
        1 => Ok(Ok(get_response(r, 0)?)),
        0 => Ok(Err(get_error(r)?)),
        _ => Err(bad("result tag")),
    }
}

fn put_error(w: &mut W, e: &KvError) {
    match e {
        KvError::Compacted { compact_revision } => (w.u8(1), w.i64(*compact_revision)).1,
        KvError::FutureRevision => w.u8(2),
        KvError::EmptyKey => w.u8(3),
        KvError::KeyNotFound => w.u8(4),
        KvError::LeaseNotFound => w.u8(5),
        KvError::LeaseExists => w.u8(6),
        KvError::InvalidLeaseId => w.u8(7),
        KvError::DuplicateKey => w.u8(8),
        KvError::SessionExpired { client_id } => (w.u8(9), w.u64(*client_id)).1,
        KvError::StaleSequence { seq, last_seq } => (w.u8(10), w.u64(*seq), w.u64(*last_seq)).1,
        KvError::InvalidSessionTimeout => w.u8(11),
        KvError::Malformed(_) => w.u8(12),
        KvError::Stream(e) => (w.u8(13), put_stream_error(w, e)).1,
    }
}

fn get_error(r: &mut R) -> Result<KvError, KvError> {
    Ok(match r.u8()? {
        1 => KvError::Compacted { compact_revision: r.i64()? },
        2 => KvError::FutureRevision,
        3 => KvError::EmptyKey,
        4 => KvError::KeyNotFound,
        5 => KvError::LeaseNotFound,
        6 => KvError::LeaseExists,
        7 => KvError::InvalidLeaseId,
        8 => KvError::DuplicateKey,
        9 => KvError::SessionExpired { client_id: r.u64()? },
        10 => KvError::StaleSequence { seq: r.u64()?, last_seq: r.u64()? },
        11 => KvError::InvalidSessionTimeout,
        // The text of a malformed-command error is not kept; the kind is.
        12 => KvError::Malformed("a malformed command (remembered by a session)"),
        13 => KvError::Stream(get_stream_error(r)?),
        _ => return Err(bad("error tag")),
    })
}

/// How far ahead of the version it copies a snapshot's step reads the versions to come: their
/// values [`LOOKAHEAD_VERSIONS`] ahead, and the versions themselves (where a value's address is)
/// twice as far. Values are slices of the buffers the entries they came in were applied from,
/// so read in key order each is somewhere else in memory, a cache miss; waited for one at a
/// time they were most of an encoding's time (in the `keyspace` bench, 10,000 keys with 70
/// versions each, 284 ms where the same bytes copied from cache take 17). Read ahead, the misses
/// of many versions are in flight at once: 165-180 ms. (A prefetch instruction would not wait
/// at all, but needs `unsafe`, which this workspace forbids.)
const LOOKAHEAD_VERSIONS: usize = 16;

/// Reads a byte of every 64-byte cache line `value` touches, and returns them folded together.
fn read_every_line(value: &[u8]) -> u8 {
    let mut folded = value.last().copied().unwrap_or(0);
    for byte in value.iter().step_by(64) {
        folded ^= byte;
    }
    folded
}

/// A snapshot of a [`StateMachine`] being encoded a step at a time, begun by
/// [`StateMachine::begin_snapshot`]. The keyspace is multi-versioned, so the state as it was when
/// the snapshot began can be read from a later state: every key's versions up to the revision it
/// began at. That holds as long as nothing those versions were is removed in between, and only a
/// compaction removes versions: a caller applying commands between steps finishes the encoding
/// before it applies one that compacts ([`Command::compacts`]). Log streams' records are read
/// from the live state too, up to each stream's end when the snapshot began; a caller applying
/// commands between steps calls [`SnapshotEncoder::before_apply`] first, which encodes a
/// stream's remaining records before a command removes some of them (a trim, a delete, an append
/// its retention makes drop records). The bytes are those [`StateMachine::encode`] gives for
/// the state at the beginning.
pub struct SnapshotEncoder {
    /// The encoding so far: revision, compaction point, key count (filled in last), keys.
    w: W,
    /// The revision the snapshot stands at: versions written after it are left out.
    revision: i64,
    /// The compaction point when it began; a step on a state compacted since is refused.
    compacted: i64,
    /// Keys encoded so far.
    keys: usize,
    /// The last key encoded by a step that ran out of budget: the next resumes after it.
    resume_after: Option<Key>,
    /// Every key is in, and the tail after them.
    keys_done: bool,
    /// Leases, members, sessions and the streams' count as they were when the snapshot began:
    /// what follows the keys.
    tail: Bytes,
    /// The streams still to encode after the tail, in order. A stream kept without limits held
    /// hundreds of MB after a minute of appends, and encoding its records in one go held the
    /// driver for seconds (docs/BENCHMARKS.md, eighteenth pass).
    streams: std::collections::VecDeque<StreamPart>,
    /// Everything is in.
    done: bool,
}

/// One stream's part of a snapshot being encoded: its header as it was when the snapshot
/// began, then its records, read from the live stream as the steps go, or encoded ahead of the
/// steps when a command was about to remove some ([`SnapshotEncoder::before_apply`]).
#[derive(Debug)]
struct StreamPart {
    /// The header, until it is written out.
    header: Option<Bytes>,
    /// The records.
    records: PartRecords,
}

#[derive(Debug)]
enum PartRecords {
    /// Encoded ahead of the steps.
    Encoded(Bytes),
    /// Read from the live stream.
    Live(crate::streams::LiveRecords),
}

impl StreamPart {
    fn of(name: &str, st: &crate::streams::Stream) -> Self {
        let mut header = W(BytesMut::new());
        crate::streams::put_stream_header(&mut header, name, st);
        let records = PartRecords::Live(crate::streams::LiveRecords::of(name, st));
        Self { header: Some(header.0.freeze()), records }
    }
}

impl SnapshotEncoder {
    /// Encodes keys of `sm` in order, then the rest (leases, members, sessions, streams), until
    /// this step has added `budget_bytes` or everything is in; returns whether everything is.
    /// `sm` is the state the snapshot began at or one reached from it without a command that
    /// compacts ([`Command::compacts`]; a broken invariant: panics otherwise).
    pub fn step(&mut self, sm: &StateMachine, budget_bytes: usize) -> bool {
        assert!(!self.done, "a step after the snapshot was finished");
        let limit = self.w.0.len().saturating_add(budget_bytes);
        if !self.keys_done {
            if !self.step_keys(sm, budget_bytes) {
                return false;
            }
            self.keys_done = true;
            self.w.0.extend_from_slice(&self.tail);
        }
        self.done = self.step_streams(sm, limit);
        self.done
    }

    /// To be called before `command` is applied to `sm` while the encoding is in progress: if it
    /// would remove records of a stream still read from the live state (a trim, a delete, or an
    /// append that its stream's retention makes drop records), encodes that stream's remaining
    /// records now, ahead of the steps. The stall is at most that stream's records (what the
    /// whole snapshot's streams cost before steps read them live), and only when a stream loses
    /// records during an encoding; appends within a retention cost nothing here.
    pub fn before_apply(&mut self, sm: &StateMachine, command: &Command) {
        let Command::Stream(command) = command.unsessioned() else { return };
        let Some(name) = sm.streams.would_remove_records(command) else { return };
        for part in &mut self.streams {
            let PartRecords::Live(live) = &mut part.records else { continue };
            if live.name != name {
                continue;
            }
            let mut ahead = W(BytesMut::new());
            let done = live.step(&sm.streams, &mut ahead, usize::MAX);
            assert!(done, "an unlimited step encodes every record");
            part.records = PartRecords::Encoded(ahead.0.freeze());
        }
    }

    /// Encodes the streams' records (after the keys and the tail) until `w` holds `limit`
    /// bytes; returns whether every stream is in.
    fn step_streams(&mut self, sm: &StateMachine, limit: usize) -> bool {
        while let Some(part) = self.streams.front_mut() {
            if self.w.0.len() >= limit {
                return false;
            }
            if let Some(header) = part.header.take() {
                self.w.0.extend_from_slice(&header);
            }
            let finished = match &mut part.records {
                PartRecords::Encoded(bytes) => {
                    self.w.0.extend_from_slice(bytes);
                    true
                }
                PartRecords::Live(live) => live.step(&sm.streams, &mut self.w, limit),
            };
            if !finished {
                return false;
            }
            self.streams.pop_front();
        }
        true
    }

    /// The keys' part of [`SnapshotEncoder::step`]: returns whether every key is in.
    fn step_keys(&mut self, sm: &StateMachine, budget_bytes: usize) -> bool {
        assert_eq!(sm.mvcc.compacted, self.compacted, "the keyspace was compacted during a snapshot");
        let start_len = self.w.0.len();
        let from = match self.resume_after.take() {
            Some(key) => Bound::Excluded(key),
            None => Bound::Unbounded,
        };
        let versions_from = || {
            let keys = sm.mvcc.keys.range::<Key, _>((from.as_ref(), Bound::Unbounded));
            keys.flat_map(|(_, versions)| versions.iter())
        };
        let mut values_ahead = versions_from().skip(LOOKAHEAD_VERSIONS);
        let mut versions_ahead = versions_from().skip(2 * LOOKAHEAD_VERSIONS);
        for (key, versions) in sm.mvcc.keys.range::<Key, _>((from.as_ref(), Bound::Unbounded)) {
            for _ in versions {
                std::hint::black_box(versions_ahead.next().map(|v| v.main));
                std::hint::black_box(values_ahead.next().map(|v| read_every_line(&v.value)));
            }
            // Versions are in revision order: those the snapshot holds are a prefix. A key first
            // written after the snapshot began has none.
            let held = versions.partition_point(|v| v.main <= self.revision);
            if held == 0 {
                continue;
            }
            self.keys += 1;
            self.w.bytes(key.as_slice());
            self.w.len(held);
            // The format of a `(Revision, Option<KeyValue>)` per version, as before the keyspace
            // held versions compactly: snapshots taken by earlier builds restore unchanged.
            for v in &versions[..held] {
                self.w.i64(v.main);
                self.w.i64(i64::from(v.sub));
                if v.is_tombstone() {
                    self.w.u8(0);
                } else {
                    self.w.u8(1);
                    self.w.bytes(&v.value);
                    for n in [v.create_revision, v.main, v.version, v.lease] {
                        self.w.i64(n);
                    }
                }
            }
            if self.w.0.len() - start_len >= budget_bytes {
                self.resume_after = Some(key.clone());
                return false;
            }
        }
        true
    }

    /// The bytes encoded since the last call, for a caller that writes them out as it goes
    /// (see [`SnapshotEncoder::finish_streamed`]). The buffer they were in is reused once they
    /// are dropped.
    pub fn take_output(&mut self) -> Bytes {
        self.w.0.split().freeze()
    }

    /// For an encoding taken out a step at a time ([`SnapshotEncoder::take_output`]), once
    /// everything is in: the encoding's first bytes as they must finally read (the key count, unknown
    /// until now, filled in) and its last bytes, to follow what was taken. The first bytes
    /// replace the same number of bytes at the start of what was taken.
    pub fn finish_streamed(mut self) -> (Vec<u8>, Bytes) {
        assert!(self.done, "a snapshot finished before everything was encoded");
        let count = u32::try_from(self.keys).expect("fewer than 2^32 keys");
        let mut head = Vec::with_capacity(20);
        head.extend_from_slice(&self.revision.to_le_bytes());
        head.extend_from_slice(&self.compacted.to_le_bytes());
        head.extend_from_slice(&count.to_le_bytes());
        (head, self.w.0.split().freeze())
    }

    /// The whole encoding, once [`step`](Self::step) has said everything is in.
    pub fn finish(mut self) -> Bytes {
        assert!(self.done, "a snapshot finished before everything was encoded");
        let count = u32::try_from(self.keys).expect("fewer than 2^32 keys");
        self.w.0[16..20].copy_from_slice(&count.to_le_bytes());
        self.w.0.freeze()
    }
}

fn put_kvs(w: &mut W, kvs: &[KeyValue]) {
    w.len(kvs.len());
    for kv in kvs {
        w.bytes(&kv.key);
        put_kv(w, kv);
    }
}

fn get_kvs(r: &mut R) -> Result<Vec<KeyValue>, KvError> {
    let mut kvs = Vec::new();
    for _ in 0..r.len()? {
        let key = r.bytes()?;
        kvs.push(get_kv(r, &key)?);
    }
    Ok(kvs)
}

fn put_response(w: &mut W, resp: &Response) {
    match resp {
        Response::Put(p) => {
            w.u8(1);
            w.i64(p.revision);
            put_kvs(w, p.prev_kv.as_slice());
        }
        Response::DeleteRange(d) => (w.u8(2), put_delete_response(w, d)).1,
        Response::Txn(t) => (w.u8(3), put_txn_response(w, t)).1,
        Response::Compact { revision } => (w.u8(4), w.i64(*revision)).1,
        Response::LeaseGrant { id, ttl_secs } => (w.u8(5), w.i64(*id), w.i64(*ttl_secs)).1,
        Response::LeaseRevoke { revision } => (w.u8(6), w.i64(*revision)).1,
        Response::Stream(s) => (w.u8(7), put_stream_response(w, s)).1,
        // Not results of sessionable commands; never remembered.
        Response::LeaseKeepAlive { .. }
        | Response::Members(_)
        | Response::SessionRegistered { .. }
        | Response::Done => {
            unreachable!("only results of sessionable commands are remembered")
        }
    }
}

fn put_delete_response(w: &mut W, d: &DeleteRangeResponse) {
    w.i64(d.revision);
    w.i64(d.deleted);
    put_kvs(w, &d.prev_kvs);
}

fn put_txn_response(w: &mut W, t: &TxnResponse) {
    w.i64(t.revision);
    w.bool(t.succeeded);
    w.len(t.responses.len());
    for op in &t.responses {
        match op {
            ResponseOp::Range(rr) => {
                w.u8(1);
                w.i64(rr.revision);
                put_kvs(w, &rr.kvs);
                w.bool(rr.more);
                w.i64(rr.count);
            }
            ResponseOp::Put(p) => {
                w.u8(2);
                w.i64(p.revision);
                put_kvs(w, p.prev_kv.as_slice());
            }
            ResponseOp::DeleteRange(d) => (w.u8(3), put_delete_response(w, d)).1,
            ResponseOp::Txn(t) => (w.u8(4), put_txn_response(w, t)).1,
        }
    }
}

fn get_put_response(r: &mut R) -> Result<PutResponse, KvError> {
    let revision = r.i64()?;
    let mut prev = get_kvs(r)?;
    if prev.len() > 1 {
        return Err(bad("a put with two previous values"));
    }
    Ok(PutResponse { revision, prev_kv: prev.pop() })
}

fn get_delete_response(r: &mut R) -> Result<DeleteRangeResponse, KvError> {
    Ok(DeleteRangeResponse { revision: r.i64()?, deleted: r.i64()?, prev_kvs: get_kvs(r)? })
}

fn get_txn_response(r: &mut R, depth: u32) -> Result<TxnResponse, KvError> {
    if depth > MAX_TXN_DEPTH {
        return Err(bad("transactions nested too deep"));
    }
    let (revision, succeeded) = (r.i64()?, r.bool()?);
    let mut responses = Vec::new();
    for _ in 0..r.len()? {
        responses.push(match r.u8()? {
            1 => ResponseOp::Range(RangeResponse {
                revision: r.i64()?,
                kvs: get_kvs(r)?,
                more: r.bool()?,
                count: r.i64()?,
            }),
            2 => ResponseOp::Put(get_put_response(r)?),
            3 => ResponseOp::DeleteRange(get_delete_response(r)?),
            4 => ResponseOp::Txn(get_txn_response(r, depth + 1)?),
            _ => return Err(bad("txn response tag")),
        });
    }
    Ok(TxnResponse { revision, succeeded, responses })
}

fn get_response(r: &mut R, depth: u32) -> Result<Response, KvError> {
    Ok(match r.u8()? {
        1 => Response::Put(get_put_response(r)?),
        2 => Response::DeleteRange(get_delete_response(r)?),
        3 => Response::Txn(get_txn_response(r, depth)?),
        4 => Response::Compact { revision: r.i64()? },
        5 => Response::LeaseGrant { id: r.i64()?, ttl_secs: r.i64()? },
        6 => Response::LeaseRevoke { revision: r.i64()? },
        7 => Response::Stream(get_stream_response(r)?),
        _ => return Err(bad("response tag")),
    })
}

fn put_stream_info(w: &mut W, i: &StreamInfo) {
    w.bytes(i.name.as_bytes());
    for v in [
        i.id,
        i.retention.max_bytes,
        i.retention.max_age_ms,
        i.first_offset,
        i.end_offset,
        i.bytes,
        i.records,
        i.clock_ms,
    ] {
        w.u64(v);
    }
}

fn get_stream_info(r: &mut R) -> Result<StreamInfo, KvError> {
    let name = r.string()?;
    let id = r.u64()?;
    let retention = Retention { max_bytes: r.u64()?, max_age_ms: r.u64()? };
    Ok(StreamInfo {
        name,
        id,
        retention,
        first_offset: r.u64()?,
        end_offset: r.u64()?,
        bytes: r.u64()?,
        records: r.u64()?,
        clock_ms: r.u64()?,
    })
}

fn put_stream_response(w: &mut W, s: &StreamResponse) {
    match s {
        StreamResponse::Appended { first_offset, last_offset, info } => {
            (w.u8(1), w.u64(*first_offset), w.u64(*last_offset), put_stream_info(w, info)).1
        }
        StreamResponse::Info(info) => (w.u8(2), put_stream_info(w, info)).1,
    }
}

fn get_stream_response(r: &mut R) -> Result<StreamResponse, KvError> {
    Ok(match r.u8()? {
        1 => StreamResponse::Appended {
            first_offset: r.u64()?,
            last_offset: r.u64()?,
            info: get_stream_info(r)?,
        },
        2 => StreamResponse::Info(get_stream_info(r)?),
        _ => return Err(bad("stream response tag")),
    })
}

fn put_stream_error(w: &mut W, e: &StreamError) {
    match e {
        StreamError::NotFound { stream } => (w.u8(1), w.bytes(stream.as_bytes())).1,
        StreamError::Exists { stream } => (w.u8(2), w.bytes(stream.as_bytes())).1,
        StreamError::Removed { stream, offset, first } => {
            (w.u8(3), w.bytes(stream.as_bytes()), w.u64(*offset), w.u64(*first)).1
        }
        StreamError::BeyondEnd { stream, offset, end } => {
            (w.u8(4), w.bytes(stream.as_bytes()), w.u64(*offset), w.u64(*end)).1
        }
        // The text is not kept; the kind is.
        StreamError::Invalid(_) => w.u8(5),
    }
}

fn get_stream_error(r: &mut R) -> Result<StreamError, KvError> {
    Ok(match r.u8()? {
        1 => StreamError::NotFound { stream: r.string()? },
        2 => StreamError::Exists { stream: r.string()? },
        3 => StreamError::Removed { stream: r.string()?, offset: r.u64()?, first: r.u64()? },
        4 => StreamError::BeyondEnd { stream: r.string()?, offset: r.u64()?, end: r.u64()? },
        5 => StreamError::Invalid("an invalid stream request (remembered by a session)"),
        _ => return Err(bad("stream error tag")),
    })
}
