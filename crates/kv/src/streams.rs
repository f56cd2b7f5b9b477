//! Log streams: named, append-only sequences of records kept in the replicated state — the log
//! server of deck 004, where publishers append and each consumer reads from its own offset.
//!
//! A record's offset is its position in its stream: dense, from 0, assigned when the append is
//! *applied*, so every replica gives the same record the same offset. Records are removed only
//! from the front, by the stream's retention (size and/or age) or an explicit trim; the offset of
//! the first record kept (`first_offset`) only grows.
//!
//! Deterministic like the rest of the state machine: no clock. An append carries the time its
//! proposer stamped on it, and a stream's clock is the largest such time it has seen, so age
//! retention is decided by committed data and applied identically everywhere (a proposer with a
//! slow clock cannot move a stream's time backwards).

use std::collections::BTreeMap;

use balsa_chunked::ChunkedDeque;

use bytes::Bytes;
use thiserror::Error;

use crate::codec::{Reader, Writer};
use crate::error::KvError;

/// The longest stream name, in bytes.
pub const MAX_STREAM_NAME_BYTES: usize = 256;

/// One record of a stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The stream's clock when the record was applied (milliseconds since the Unix epoch, from
    /// the proposer's clock, never earlier than an earlier record's).
    pub timestamp_ms: u64,
    /// The payload.
    pub data: Bytes,
}

/// How much of a stream is kept. Zero means no limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Retention {
    /// Keep at most this many payload bytes (the newest record is always kept).
    pub max_bytes: u64,
    /// Remove records this much older than the stream's clock.
    pub max_age_ms: u64,
}

/// A stream: its settings and the records retention has kept.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stream {
    /// Tells this stream from an earlier one of the same name that was deleted (subscribers
    /// notice the difference).
    pub id: u64,
    /// What is kept.
    pub retention: Retention,
    /// Offset of the first record kept (the end offset if none is).
    pub first_offset: u64,
    /// The records kept, oldest first. In chunks: a stream kept without limits holds millions,
    /// and a `VecDeque` that doubles copies them all (`balsa-chunked`).
    pub records: ChunkedDeque<Record>,
    /// Payload bytes kept.
    pub bytes: u64,
    /// The stream's clock: the latest timestamp applied to it.
    pub clock_ms: u64,
}

impl Stream {
    /// The offset the next record will get.
    pub fn end_offset(&self) -> u64 {
        self.first_offset + self.records.len() as u64
    }

    fn info(&self, name: &str) -> StreamInfo {
        StreamInfo {
            name: name.to_string(),
            id: self.id,
            retention: self.retention,
            first_offset: self.first_offset,
            end_offset: self.end_offset(),
            bytes: self.bytes,
            records: self.records.len() as u64,
            clock_ms: self.clock_ms,
        }
    }

    fn pop_front(&mut self) {
        if let Some(r) = self.records.pop_front() {
            self.bytes -= r.data.len() as u64;
            self.first_offset += 1;
        }
    }

    /// Removes what the retention no longer keeps; the newest record always stays.
    fn apply_retention(&mut self) {
        let Retention { max_bytes, max_age_ms } = self.retention;
        while self.records.len() > 1 {
            let oldest = &self.records[0];
            let too_big = max_bytes > 0 && self.bytes > max_bytes;
            let too_old = max_age_ms > 0 && oldest.timestamp_ms.saturating_add(max_age_ms) <= self.clock_ms;
            if !(too_big || too_old) {
                break;
            }
            self.pop_front();
        }
    }
}

/// What operators see of a stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamInfo {
    /// The name.
    pub name: String,
    /// The stream's incarnation (see [`Stream::id`]).
    pub id: u64,
    /// What is kept.
    pub retention: Retention,
    /// Offset of the first record kept.
    pub first_offset: u64,
    /// The offset the next record will get.
    pub end_offset: u64,
    /// Payload bytes kept.
    pub bytes: u64,
    /// Records kept.
    pub records: u64,
    /// The stream's clock, ms.
    pub clock_ms: u64,
}

/// Records read from a stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamRead {
    /// The stream's incarnation.
    pub id: u64,
    /// Records with their offsets, in order.
    pub records: Vec<(u64, Record)>,
    /// The offset to read from next.
    pub next_offset: u64,
    /// Offset of the first record kept.
    pub first_offset: u64,
    /// The offset the next appended record will get.
    pub end_offset: u64,
}

/// A change to the streams, as it goes through the Raft log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamCommand {
    /// Create a stream (again with the same retention: nothing changes).
    Create {
        /// Its name.
        stream: String,
        /// What it keeps (the proposer fills in server defaults, so replicas agree).
        retention: Retention,
    },
    /// Append records; they get the next offsets, in order.
    Append {
        /// The stream.
        stream: String,
        /// The proposer's clock when it proposed, ms since the Unix epoch.
        timestamp_ms: u64,
        /// The payloads.
        records: Vec<Bytes>,
    },
    /// Remove every record before an offset.
    Trim {
        /// The stream.
        stream: String,
        /// The first offset to keep (at most the end offset).
        before_offset: u64,
    },
    /// Remove a stream and its records.
    Delete {
        /// The stream.
        stream: String,
    },
}

/// The result of a [`StreamCommand`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamResponse {
    /// From `Append`: the offsets the records got, and what retention kept afterwards.
    Appended {
        /// The first record's offset.
        first_offset: u64,
        /// The last record's offset.
        last_offset: u64,
        /// The stream afterwards.
        info: StreamInfo,
    },
    /// From `Create` and `Trim`: the stream afterwards; from `Delete`: the stream as it was.
    Info(StreamInfo),
}

/// Why a stream request was refused.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum StreamError {
    /// No stream has this name.
    #[error("stream {stream:?} not found")]
    NotFound {
        /// The name asked for.
        stream: String,
    },
    /// The stream exists with another retention.
    #[error("stream {stream:?} already exists with another retention")]
    Exists {
        /// The name.
        stream: String,
    },
    /// The offset is before the first record kept.
    #[error(
        "stream {stream:?}: offset {offset} was removed by retention; the first available offset is {first}"
    )]
    Removed {
        /// The stream.
        stream: String,
        /// The offset asked for.
        offset: u64,
        /// The first offset still available.
        first: u64,
    },
    /// The offset is after the end of the stream.
    #[error("stream {stream:?}: offset {offset} is beyond the end of the stream ({end})")]
    BeyondEnd {
        /// The stream.
        stream: String,
        /// The offset asked for.
        offset: u64,
        /// The offset the next record will get.
        end: u64,
    },
    /// A request that makes no sense (an empty name, an append of nothing).
    #[error("{0}")]
    Invalid(&'static str),
}

/// Every stream, by name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Streams {
    /// The streams.
    pub streams: BTreeMap<String, Stream>,
    /// The id the next created stream gets.
    pub next_id: u64,
}

/// Checks a stream name: 1 to [`MAX_STREAM_NAME_BYTES`] bytes.
pub fn check_name(name: &str) -> Result<(), StreamError> {
    if name.is_empty() {
        return Err(StreamError::Invalid("a stream name is required"));
    }
    if name.len() > MAX_STREAM_NAME_BYTES {
        return Err(StreamError::Invalid("a stream name is at most 256 bytes"));
    }
    Ok(())
}

impl Streams {
    /// Applies a committed command. A refused command changes nothing.
    pub fn apply(&mut self, command: &StreamCommand) -> Result<StreamResponse, StreamError> {
        match command {
            StreamCommand::Create { stream, retention } => {
                check_name(stream)?;
                if let Some(s) = self.streams.get(stream) {
                    if s.retention != *retention {
                        return Err(StreamError::Exists { stream: stream.clone() });
                    }
                    return Ok(StreamResponse::Info(s.info(stream)));
                }
                let s = Stream { id: self.next_id, retention: *retention, ..Stream::default() };
                self.next_id += 1;
                let info = s.info(stream);
                self.streams.insert(stream.clone(), s);
                Ok(StreamResponse::Info(info))
            }
            StreamCommand::Append { stream, timestamp_ms, records } => {
                if records.is_empty() {
                    return Err(StreamError::Invalid("an append needs at least one record"));
                }
                let s = self.get_mut(stream)?;
                s.clock_ms = s.clock_ms.max(*timestamp_ms);
                let first_offset = s.end_offset();
                for data in records {
                    s.bytes += data.len() as u64;
                    s.records.push_back(Record { timestamp_ms: s.clock_ms, data: data.clone() });
                }
                let last_offset = s.end_offset() - 1;
                s.apply_retention();
                Ok(StreamResponse::Appended { first_offset, last_offset, info: s.info(stream) })
            }
            StreamCommand::Trim { stream, before_offset } => {
                let s = self.get_mut(stream)?;
                if *before_offset > s.end_offset() {
                    return Err(StreamError::BeyondEnd {
                        stream: stream.clone(),
                        offset: *before_offset,
                        end: s.end_offset(),
                    });
                }
                while s.first_offset < *before_offset {
                    s.pop_front();
                }
                Ok(StreamResponse::Info(s.info(stream)))
            }
            StreamCommand::Delete { stream } => {
                let s = self.streams.remove(stream).ok_or_else(|| not_found(stream))?;
                Ok(StreamResponse::Info(s.info(stream)))
            }
        }
    }

    fn get_mut(&mut self, stream: &str) -> Result<&mut Stream, StreamError> {
        self.streams.get_mut(stream).ok_or_else(|| not_found(stream))
    }

    /// A stream, if it exists.
    pub fn get(&self, stream: &str) -> Result<&Stream, StreamError> {
        self.streams.get(stream).ok_or_else(|| not_found(stream))
    }

    /// What operators see of one stream.
    pub fn info(&self, stream: &str) -> Result<StreamInfo, StreamError> {
        Ok(self.get(stream)?.info(stream))
    }

    /// What operators see of every stream, by name.
    pub fn list(&self) -> Vec<StreamInfo> {
        self.streams.iter().map(|(name, s)| s.info(name)).collect()
    }

    /// Reads records from `from` on: at most `max_records`, and at most `max_bytes` of payload
    /// unless the first record alone is larger (a read that can return a record always does).
    /// Reading at the end offset returns no records.
    pub fn read(
        &self,
        stream: &str,
        from: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<StreamRead, StreamError> {
        let s = self.get(stream)?;
        check_offset(stream, s, from)?;
        let mut records = Vec::new();
        let mut bytes = 0usize;
        let start = (from - s.first_offset) as usize;
        for (i, r) in (start..).zip(s.records.iter_from(start)) {
            if records.len() >= max_records || (!records.is_empty() && bytes + r.data.len() > max_bytes) {
                break;
            }
            bytes += r.data.len();
            records.push((s.first_offset + i as u64, r.clone()));
        }
        Ok(StreamRead {
            id: s.id,
            next_offset: from + records.len() as u64,
            records,
            first_offset: s.first_offset,
            end_offset: s.end_offset(),
        })
    }
}

/// Whether `offset` can be read from `s`: not removed, not beyond the end.
pub fn check_offset(name: &str, s: &Stream, offset: u64) -> Result<(), StreamError> {
    if offset < s.first_offset {
        return Err(StreamError::Removed { stream: name.to_string(), offset, first: s.first_offset });
    }
    if offset > s.end_offset() {
        return Err(StreamError::BeyondEnd { stream: name.to_string(), offset, end: s.end_offset() });
    }
    Ok(())
}

fn not_found(stream: &str) -> StreamError {
    StreamError::NotFound { stream: stream.to_string() }
}

// ---- codec (tags and layout documented in codec.rs) ----

pub(crate) fn put_command(w: &mut Writer, c: &StreamCommand) {
    match c {
        StreamCommand::Create { stream, retention } => {
            w.u8(0);
            w.bytes(stream.as_bytes());
            w.u64(retention.max_bytes);
            w.u64(retention.max_age_ms);
        }
        StreamCommand::Append { stream, timestamp_ms, records } => {
            w.u8(1);
            w.bytes(stream.as_bytes());
            w.u64(*timestamp_ms);
            w.len(records.len());
            for r in records {
                w.bytes(r);
            }
        }
        StreamCommand::Trim { stream, before_offset } => {
            w.u8(2);
            w.bytes(stream.as_bytes());
            w.u64(*before_offset);
        }
        StreamCommand::Delete { stream } => {
            w.u8(3);
            w.bytes(stream.as_bytes());
        }
    }
}

pub(crate) fn get_command(r: &mut Reader) -> Result<StreamCommand, KvError> {
    Ok(match r.u8()? {
        0 => StreamCommand::Create {
            stream: r.string()?,
            retention: Retention { max_bytes: r.u64()?, max_age_ms: r.u64()? },
        },
        1 => {
            let stream = r.string()?;
            let timestamp_ms = r.u64()?;
            let mut records = Vec::new();
            for _ in 0..r.len()? {
                records.push(r.bytes()?);
            }
            StreamCommand::Append { stream, timestamp_ms, records }
        }
        2 => StreamCommand::Trim { stream: r.string()?, before_offset: r.u64()? },
        3 => StreamCommand::Delete { stream: r.string()? },
        _ => return Err(KvError::Malformed("unknown stream command")),
    })
}

/// The streams' encoding up to the first stream: the next id and the count of streams. Each
/// stream follows: [`put_stream_header`], then a [`put_record`] per record (the snapshot encoder
/// writes them, `crate::SnapshotEncoder`; [`get_streams`] reads them).
pub(crate) fn put_streams_head(w: &mut Writer, s: &Streams) {
    w.u64(s.next_id);
    w.len(s.streams.len());
}

/// One stream's encoding before its records: name, settings, offsets, clock, record count.
pub(crate) fn put_stream_header(w: &mut Writer, name: &str, st: &Stream) {
    w.bytes(name.as_bytes());
    for v in [st.id, st.retention.max_bytes, st.retention.max_age_ms, st.first_offset, st.clock_ms] {
        w.u64(v);
    }
    w.len(st.records.len());
}

/// One record's encoding.
pub(crate) fn put_record(w: &mut Writer, rec: &Record) {
    w.u64(rec.timestamp_ms);
    w.bytes(&rec.data);
}

impl Streams {
    /// The stream whose records `command` would remove if applied now, if any: a trim, a
    /// delete, or an append that makes its stream's retention drop records held before it. A
    /// snapshot being encoded, which reads streams' records from the live state, encodes that
    /// stream's remaining records before the command is applied (`SnapshotEncoder::before_apply`).
    pub(crate) fn would_remove_records<'a>(&self, command: &'a StreamCommand) -> Option<&'a str> {
        match command {
            StreamCommand::Create { .. } => None,
            StreamCommand::Trim { stream, .. } | StreamCommand::Delete { stream } => Some(stream),
            StreamCommand::Append { stream, timestamp_ms, records } => {
                let st = self.streams.get(stream)?;
                st.append_removes(*timestamp_ms, records).then_some(stream.as_str())
            }
        }
    }
}

impl Stream {
    /// Whether appending `records` stamped `timestamp_ms` makes the retention remove a record
    /// held now: [`Stream::apply_retention`] after the append removes the oldest one if the
    /// stream is then too big or that record too old (at least two records are held then, and
    /// the newest always stays).
    fn append_removes(&self, timestamp_ms: u64, records: &[Bytes]) -> bool {
        let Some(oldest) = self.records.front() else { return false };
        if records.is_empty() {
            return false;
        }
        let Retention { max_bytes, max_age_ms } = self.retention;
        let bytes = self.bytes + records.iter().map(|r| r.len() as u64).sum::<u64>();
        let clock_ms = self.clock_ms.max(timestamp_ms);
        let too_big = max_bytes > 0 && bytes > max_bytes;
        let too_old = max_age_ms > 0 && oldest.timestamp_ms.saturating_add(max_age_ms) <= clock_ms;
        too_big || too_old
    }
}

/// Where a snapshot being encoded a step at a time stands in a stream it reads live: the stream
/// (by name, and by id in case it was deleted and created again), the next offset to encode, and
/// the end offset when the snapshot began (records appended since are not in it).
#[derive(Debug)]
pub(crate) struct LiveRecords {
    pub(crate) name: String,
    pub(crate) id: u64,
    pub(crate) next: u64,
    pub(crate) end: u64,
}

impl LiveRecords {
    pub(crate) fn of(name: &str, st: &Stream) -> Self {
        Self { name: name.to_string(), id: st.id, next: st.first_offset, end: st.end_offset() }
    }

    /// Encodes records from `streams` until `w` holds `limit` bytes or every record is in;
    /// returns whether every record is. Panics if the records it still needs are gone (a broken
    /// invariant: they are encoded before a command that would remove them is applied, see
    /// [`Streams::would_remove_records`]).
    pub(crate) fn step(&mut self, streams: &Streams, w: &mut Writer, limit: usize) -> bool {
        let st = streams
            .streams
            .get(&self.name)
            .filter(|st| st.id == self.id)
            .unwrap_or_else(|| panic!("stream {:?} was deleted during a snapshot", self.name));
        assert!(st.first_offset <= self.next, "stream {:?} was trimmed during a snapshot", self.name);
        let from = usize::try_from(self.next - st.first_offset).expect("an offset in memory");
        for rec in st.records.iter_from(from) {
            if self.next == self.end || w.written() >= limit {
                break;
            }
            put_record(w, rec);
            self.next += 1;
        }
        self.next == self.end
    }
}

pub(crate) fn get_streams(r: &mut Reader) -> Result<Streams, KvError> {
    let next_id = r.u64()?;
    let mut streams = BTreeMap::new();
    for _ in 0..r.len()? {
        let name = r.string()?;
        let (id, max_bytes, max_age_ms, first_offset, clock_ms) =
            (r.u64()?, r.u64()?, r.u64()?, r.u64()?, r.u64()?);
        let mut records = ChunkedDeque::default();
        let mut bytes = 0u64;
        for _ in 0..r.len()? {
            let rec = Record { timestamp_ms: r.u64()?, data: r.bytes()? };
            bytes += rec.data.len() as u64;
            records.push_back(rec);
        }
        if first_offset.checked_add(records.len() as u64).is_none() {
            return Err(KvError::Malformed("stream offsets overflow"));
        }
        let retention = Retention { max_bytes, max_age_ms };
        streams.insert(name, Stream { id, retention, first_offset, records, bytes, clock_ms });
    }
    Ok(Streams { streams, next_id })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    /// `would_remove_records` foretells what applying the command does, over every small case:
    /// limits of bytes and of age, held records of a few sizes and times, appends of a few sizes
    /// and stamps (the answer is checked against the stream's first offset after the append).
    #[test]
    fn an_append_is_foretold_to_remove_records_exactly_when_it_does() {
        let mut cases = 0;
        for max_bytes in 0..=10u64 {
            for max_age_ms in [0, 3] {
                for held in 0..=3usize {
                    for append_len in 1..=4usize {
                        for stamp in [0u64, 2, 3, 4, 7] {
                            let mut streams = Streams::default();
                            let retention = Retention { max_bytes, max_age_ms };
                            let create = StreamCommand::Create { stream: "s".into(), retention };
                            streams.apply(&create).unwrap();
                            for i in 0..held {
                                let records = vec![Bytes::from(vec![b'h'; 1 + i])];
                                let append = StreamCommand::Append {
                                    stream: "s".into(),
                                    timestamp_ms: i as u64,
                                    records,
                                };
                                streams.apply(&append).unwrap();
                            }
                            let before = streams.get("s").unwrap().first_offset;
                            let records = vec![Bytes::from(vec![b'a'; append_len])];
                            let append =
                                StreamCommand::Append { stream: "s".into(), timestamp_ms: stamp, records };
                            let foretold = streams.would_remove_records(&append).is_some();
                            streams.apply(&append).unwrap();
                            let removed = streams.get("s").unwrap().first_offset > before;
                            assert_eq!(
                                foretold, removed,
                                "max_bytes {max_bytes}, max_age_ms {max_age_ms}, {held} held, {append_len} B at {stamp}"
                            );
                            cases += usize::from(removed);
                        }
                    }
                }
            }
        }
        assert!(cases > 100, "the grid reaches appends that remove records: {cases}");
        let mut streams = Streams::default();
        let create = StreamCommand::Create { stream: "s".into(), retention: Retention::default() };
        assert_eq!(streams.would_remove_records(&create), None);
        streams.apply(&create).unwrap();
        let trim = StreamCommand::Trim { stream: "s".into(), before_offset: 0 };
        assert_eq!(streams.would_remove_records(&trim), Some("s"));
        assert_eq!(streams.would_remove_records(&StreamCommand::Delete { stream: "s".into() }), Some("s"));
        let unknown = StreamCommand::Append { stream: "t".into(), timestamp_ms: 0, records: vec![b("r")] };
        assert_eq!(
            streams.would_remove_records(&unknown),
            None,
            "an append to no stream fails and removes nothing"
        );
    }

    fn create(sm: &mut Streams, name: &str, max_bytes: u64, max_age_ms: u64) {
        let c = StreamCommand::Create { stream: name.into(), retention: Retention { max_bytes, max_age_ms } };
        sm.apply(&c).unwrap();
    }

    fn append(sm: &mut Streams, name: &str, at: u64, records: &[&str]) -> Result<(u64, u64), StreamError> {
        let c = StreamCommand::Append {
            stream: name.into(),
            timestamp_ms: at,
            records: records.iter().map(|r| b(r)).collect(),
        };
        match sm.apply(&c)? {
            StreamResponse::Appended { first_offset, last_offset, .. } => Ok((first_offset, last_offset)),
            other => panic!("{other:?}"),
        }
    }

    fn offsets(r: &StreamRead) -> Vec<u64> {
        r.records.iter().map(|(o, _)| *o).collect()
    }

    #[test]
    fn offsets_are_dense_from_zero_per_stream() {
        let mut s = Streams::default();
        create(&mut s, "a", 0, 0);
        create(&mut s, "b", 0, 0);
        assert_eq!(append(&mut s, "a", 1, &["x", "y"]), Ok((0, 1)));
        assert_eq!(append(&mut s, "b", 1, &["z"]), Ok((0, 0)));
        assert_eq!(append(&mut s, "a", 2, &["w"]), Ok((2, 2)));
        let r = s.read("a", 1, 10, 1 << 20).unwrap();
        assert_eq!(offsets(&r), vec![1, 2]);
        assert_eq!((&r.records[0].1.data[..], r.next_offset, r.end_offset), (&b"y"[..], 3, 3));
        // Limits: records, bytes (but always one record), the end.
        assert_eq!(offsets(&s.read("a", 0, 2, 1 << 20).unwrap()), vec![0, 1]);
        assert_eq!(offsets(&s.read("a", 0, 10, 0).unwrap()), vec![0]);
        assert!(s.read("a", 3, 10, 100).unwrap().records.is_empty());
        assert!(matches!(s.read("a", 4, 10, 100), Err(StreamError::BeyondEnd { end: 3, .. })));
        assert!(matches!(s.read("nope", 0, 10, 100), Err(StreamError::NotFound { .. })));
        assert!(matches!(append(&mut s, "nope", 0, &["x"]), Err(StreamError::NotFound { .. })));
        assert!(matches!(append(&mut s, "a", 0, &[]), Err(StreamError::Invalid(_))));
    }

    #[test]
    fn create_is_idempotent_but_refuses_another_retention() {
        let mut s = Streams::default();
        create(&mut s, "a", 10, 0);
        create(&mut s, "a", 10, 0);
        let again = StreamCommand::Create {
            stream: "a".into(),
            retention: Retention { max_bytes: 11, max_age_ms: 0 },
        };
        assert!(matches!(s.apply(&again), Err(StreamError::Exists { .. })));
        let empty = StreamCommand::Create { stream: String::new(), retention: Retention::default() };
        assert!(matches!(s.apply(&empty), Err(StreamError::Invalid(_))));
        let long = StreamCommand::Create { stream: "x".repeat(257), retention: Retention::default() };
        assert!(matches!(s.apply(&long), Err(StreamError::Invalid(_))));
    }

    #[test]
    fn retention_by_size_keeps_the_newest_records() {
        let mut s = Streams::default();
        create(&mut s, "a", 10, 0);
        append(&mut s, "a", 0, &["1234", "5678"]).unwrap(); // 8 bytes
        append(&mut s, "a", 0, &["abcd"]).unwrap(); // 12 > 10: offset 0 goes
        let info = s.info("a").unwrap();
        assert_eq!((info.first_offset, info.end_offset, info.bytes, info.records), (1, 3, 8, 2));
        let err = s.read("a", 0, 10, 100).unwrap_err();
        assert_eq!(
            err.to_string(),
            "stream \"a\": offset 0 was removed by retention; the first available offset is 1"
        );
        // A record larger than the limit is still kept, alone.
        append(&mut s, "a", 0, &["0123456789abcdef"]).unwrap();
        let info = s.info("a").unwrap();
        assert_eq!((info.first_offset, info.end_offset, info.bytes), (3, 4, 16));
    }

    #[test]
    fn retention_by_age_follows_the_committed_timestamps() {
        let mut s = Streams::default();
        create(&mut s, "a", 0, 100);
        append(&mut s, "a", 1000, &["a"]).unwrap();
        append(&mut s, "a", 1050, &["b"]).unwrap();
        append(&mut s, "a", 1099, &["c"]).unwrap();
        assert_eq!(s.info("a").unwrap().first_offset, 0);
        append(&mut s, "a", 1100, &["d"]).unwrap(); // offset 0 (t=1000) is 100 ms old
        assert_eq!(s.info("a").unwrap().first_offset, 1);
        // A proposer with a slow clock does not move the stream's clock back.
        append(&mut s, "a", 500, &["e"]).unwrap();
        let r = s.read("a", 4, 10, 100).unwrap();
        assert_eq!(r.records[0].1.timestamp_ms, 1100);
        append(&mut s, "a", 1300, &["f"]).unwrap(); // everything older than 1200 goes
        let info = s.info("a").unwrap();
        assert_eq!((info.first_offset, info.end_offset, info.clock_ms), (5, 6, 1300));
    }

    #[test]
    fn trim_and_delete() {
        let mut s = Streams::default();
        create(&mut s, "a", 0, 0);
        append(&mut s, "a", 0, &["1", "2", "3"]).unwrap();
        s.apply(&StreamCommand::Trim { stream: "a".into(), before_offset: 2 }).unwrap();
        assert_eq!(s.info("a").unwrap().first_offset, 2);
        s.apply(&StreamCommand::Trim { stream: "a".into(), before_offset: 1 }).unwrap();
        assert_eq!(s.info("a").unwrap().first_offset, 2, "a trim never brings records back");
        assert!(s.apply(&StreamCommand::Trim { stream: "a".into(), before_offset: 4 }).is_err());
        s.apply(&StreamCommand::Trim { stream: "a".into(), before_offset: 3 }).unwrap();
        let info = s.info("a").unwrap();
        assert_eq!((info.first_offset, info.end_offset, info.records, info.bytes), (3, 3, 0, 0));
        assert_eq!(append(&mut s, "a", 0, &["4"]), Ok((3, 3)));
        let id = info.id;
        s.apply(&StreamCommand::Delete { stream: "a".into() }).unwrap();
        assert!(s.info("a").is_err());
        create(&mut s, "a", 0, 0);
        let again = s.info("a").unwrap();
        assert_eq!((again.end_offset, again.id == id), (0, false), "a new incarnation");
    }
}
