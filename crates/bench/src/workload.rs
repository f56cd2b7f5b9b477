//! What one client sends: keys, values, and one operation per workload.
//!
//! **Adding a workload.** A new workload is a variant of [`Workload`] and of [`ClientOp`], plus an
//! arm in [`ClientOp::call`] that sends one request over the client's [`UnaryChannel`] and returns what
//! the run needs (`Ok` with the write's revision, if any), and any setup it needs before the run
//! in `run.rs` (log-append creates its streams there). The runner handles timing, warmup, rate,
//! histograms and reporting for every workload alike.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use balsa_server::pb::balsapb::{AppendRequest, AppendResponse};
use balsa_server::pb::etcdserverpb::{
    compare, request_op, response_op, Compare, PutRequest, PutResponse, RangeRequest, RangeResponse,
    RequestOp, TxnRequest, TxnResponse,
};
use tonic::Status;

use crate::grpc::UnaryChannel;
use crate::BenchError;

/// etcd's KV.Put.
pub const KV_PUT: &str = "/etcdserverpb.KV/Put";
/// etcd's KV.Range.
pub const KV_RANGE: &str = "/etcdserverpb.KV/Range";
/// etcd's KV.Txn.
pub const KV_TXN: &str = "/etcdserverpb.KV/Txn";
/// balsa's Log.Append.
pub const LOG_APPEND: &str = "/balsapb.Log/Append";

/// A workload, as named in results.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Workload {
    /// Puts.
    Put,
    /// Single-key ranges.
    Get {
        /// Without a ReadIndex round.
        serializable: bool,
    },
    /// Compare-and-swap on mod_revision.
    Txn,
    /// Watch fan-out (the writers put).
    Watch {
        /// Watch streams.
        watchers: usize,
    },
    /// Appends to balsa's log streams (`balsapb.Log`).
    LogAppend(LogStreams),
}

/// The streams of a log-append run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogStreams {
    /// Their names; client `i` appends to `names[i % len]`. Never empty.
    pub names: Vec<String>,
    /// The retention they are created with (payload bytes per stream; 0: no limit).
    pub retention_bytes: u64,
}

/// The longest stream name balsa takes, in bytes (balsa-kv's `MAX_STREAM_NAME_BYTES`).
const MAX_STREAM_NAME_BYTES: usize = 256;

impl LogStreams {
    /// `count` streams named after `base` (`base` itself for one, `base-0` .. otherwise), or
    /// after the key prefix without its trailing `/` when no base is given.
    pub fn new(
        base: Option<&str>,
        prefix: &str,
        count: u32,
        retention_bytes: u64,
    ) -> Result<Self, BenchError> {
        let base = match base {
            Some(b) => b.to_string(),
            None => match prefix.trim_end_matches('/') {
                "" => "bench".to_string(),
                p => p.to_string(),
            },
        };
        let names: Vec<String> = match count {
            0 => return Err(BenchError::Usage("--streams: at least one".into())),
            1 => vec![base],
            n => (0..n).map(|i| format!("{base}-{i}")).collect(),
        };
        // The server's rule, checked here so that a bad name is a usage error before any load.
        if let Some(bad) = names.iter().find(|n| n.is_empty() || n.len() > MAX_STREAM_NAME_BYTES) {
            return Err(BenchError::Usage(format!(
                "--stream: {bad:?} is not a stream name (1 to {MAX_STREAM_NAME_BYTES} bytes)"
            )));
        }
        Ok(Self { names, retention_bytes })
    }
}

impl Workload {
    /// The name in results and tables.
    pub fn name(&self) -> &'static str {
        match self {
            Workload::Put => "put",
            Workload::Get { serializable: false } => "get",
            Workload::Get { serializable: true } => "get-serializable",
            Workload::Txn => "txn",
            Workload::Watch { .. } => "watch",
            Workload::LogAppend(_) => "log-append",
        }
    }
}

/// The keys of a run: `prefix` followed by the key number, zero-padded to `key_size` bytes.
#[derive(Debug, Clone)]
pub struct Keys {
    /// The common prefix (watched by the watch workload).
    pub prefix: Vec<u8>,
    /// Digits after the prefix.
    width: usize,
    /// How many distinct keys.
    pub space: u64,
}

impl Keys {
    /// Keys of exactly `key_size` bytes; refused if the prefix and the largest number do not fit.
    pub fn new(prefix: &str, key_size: usize, space: u64) -> Result<Self, BenchError> {
        assert!(space > 0, "a key space holds at least one key");
        let digits = (space - 1).to_string().len();
        let needed = prefix.len() + digits;
        if key_size < needed {
            return Err(BenchError::Usage(format!(
                "--key-size {key_size} cannot hold {space} keys after the prefix {prefix:?}: at least {needed}"
            )));
        }
        Ok(Self { prefix: prefix.as_bytes().to_vec(), width: key_size - prefix.len(), space })
    }

    /// Key number `index` (taken modulo the key space).
    pub fn key(&self, index: u64) -> Vec<u8> {
        let mut key = self.prefix.clone();
        key.extend_from_slice(format!("{:0width$}", index % self.space, width = self.width).as_bytes());
        key
    }

    /// The end of the prefix's range (etcd's `--prefix`): the prefix with its last byte
    /// incremented, or `\0` (everything) for an empty prefix.
    pub fn prefix_end(&self) -> Vec<u8> {
        let mut end = self.prefix.clone();
        while let Some(last) = end.pop() {
            if last < u8::MAX {
                end.push(last + 1);
                return end;
            }
        }
        vec![0]
    }
}

/// A small, fast, seeded generator for key choice (SplitMix64): no dependency, reproducible.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..bound` (bound > 0; the slight modulo bias is irrelevant here).
    pub fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound
    }
}

/// How a client chooses the key of its next operation.
#[derive(Debug, Clone)]
pub enum KeyPick {
    /// At random from the key space (seeded per client).
    Random(Rng),
    /// The next number of a counter shared by every client (`--sequential-keys`).
    Sequential(Arc<AtomicU64>),
}

impl KeyPick {
    /// The number of the next key, below `space`.
    pub fn next(&mut self, space: u64) -> u64 {
        match self {
            KeyPick::Random(rng) => rng.below(space),
            KeyPick::Sequential(next) => next.fetch_add(1, Ordering::Relaxed) % space,
        }
    }
}

/// What one client sends, with the state its workload keeps between operations.
pub enum ClientOp {
    /// A put of a random key.
    Put,
    /// A range of one random key.
    Get {
        /// Serializable.
        serializable: bool,
    },
    /// Compare-and-swap.
    Txn {
        /// The mod_revision this client last saw per key (absent: 0, "does not exist").
        seen: HashMap<u64, i64>,
        /// Transactions whose compare held.
        succeeded: u64,
    },
    /// An append of one record to a stream.
    LogAppend {
        /// The stream this client appends to.
        stream: String,
    },
}

impl ClientOp {
    /// The operation of `workload` for client number `client` (the watch workload's writers
    /// put; log-append clients take the streams in turn).
    pub fn new(workload: &Workload, client: usize) -> Self {
        match workload {
            Workload::Put | Workload::Watch { .. } => ClientOp::Put,
            Workload::Get { serializable } => ClientOp::Get { serializable: *serializable },
            Workload::Txn => ClientOp::Txn { seen: HashMap::new(), succeeded: 0 },
            Workload::LogAppend(streams) => {
                ClientOp::LogAppend { stream: streams.names[client % streams.names.len()].clone() }
            }
        }
    }

    /// Sends one operation and waits for its answer. `Ok(Some(revision))` for a write that
    /// created a revision.
    pub async fn call(
        &mut self,
        conn: &mut UnaryChannel,
        keys: &Keys,
        value: &[u8],
        pick: &mut KeyPick,
    ) -> Result<Option<i64>, Status> {
        match self {
            ClientOp::Put => {
                let key = keys.key(pick.next(keys.space));
                let put = PutRequest { key, value: value.to_vec(), ..Default::default() };
                let response: PutResponse = conn.call(KV_PUT, &put).await?;
                Ok(response.header.map(|h| h.revision))
            }
            ClientOp::Get { serializable } => {
                let key = keys.key(pick.next(keys.space));
                let range = RangeRequest { key, serializable: *serializable, ..Default::default() };
                let _: RangeResponse = conn.call(KV_RANGE, &range).await?;
                Ok(None)
            }
            ClientOp::Txn { seen, succeeded } => {
                let index = pick.next(keys.space);
                let expected = seen.get(&index).copied().unwrap_or(0);
                let (revision, current) = compare_and_swap(conn, keys.key(index), value, expected).await?;
                match current {
                    None => {
                        *succeeded += 1;
                        seen.insert(index, revision);
                    }
                    Some(current) => {
                        seen.insert(index, current);
                    }
                }
                Ok(Some(revision))
            }
            ClientOp::LogAppend { stream } => {
                // No key: the record goes to the end of the stream. No revision either (offsets
                // are the stream's own), so nothing for the run to match.
                let append = AppendRequest { stream: stream.clone(), records: vec![value.to_vec()] };
                let _: AppendResponse = conn.call(LOG_APPEND, &append).await?;
                Ok(None)
            }
        }
    }

    /// Transactions whose compare held (txn only).
    pub fn successes(&self) -> Option<u64> {
        match self {
            ClientOp::Txn { succeeded, .. } => Some(*succeeded),
            _ => None,
        }
    }
}

/// One compare-and-swap: put `key` if its mod_revision is `expected`, else read it. Returns the
/// header revision and, when the compare failed, the key's current mod_revision (0 if absent).
async fn compare_and_swap(
    conn: &mut UnaryChannel,
    key: Vec<u8>,
    value: &[u8],
    expected: i64,
) -> Result<(i64, Option<i64>), Status> {
    let compare = Compare {
        result: compare::CompareResult::Equal as i32,
        target: compare::CompareTarget::Mod as i32,
        key: key.clone(),
        target_union: Some(compare::TargetUnion::ModRevision(expected)),
        range_end: Vec::new(),
    };
    let put = PutRequest { key: key.clone(), value: value.to_vec(), ..Default::default() };
    let get = RangeRequest { key, ..Default::default() };
    let txn = TxnRequest {
        compare: vec![compare],
        success: vec![RequestOp { request: Some(request_op::Request::RequestPut(put)) }],
        failure: vec![RequestOp { request: Some(request_op::Request::RequestRange(get)) }],
    };
    let response: TxnResponse = conn.call(KV_TXN, &txn).await?;
    let revision = response.header.map_or(0, |h| h.revision);
    if response.succeeded {
        return Ok((revision, None));
    }
    let current = response
        .responses
        .into_iter()
        .find_map(|r| match r.response {
            Some(response_op::Response::ResponseRange(range)) => {
                Some(range.kvs.first().map_or(0, |kv| kv.mod_revision))
            }
            _ => None,
        })
        .unwrap_or(0);
    Ok((revision, Some(current)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_the_asked_size_and_prefix() {
        let keys = Keys::new("bench/", 16, 10_000).unwrap();
        assert_eq!(keys.key(0), b"bench/0000000000");
        assert_eq!(keys.key(9_999), b"bench/0000009999");
        assert_eq!(keys.key(10_000), keys.key(0), "modulo the key space");
        assert_eq!(keys.prefix_end(), b"bench0");
        assert!(Keys::new("bench/", 8, 1000).is_err(), "6 + 3 bytes do not fit in 8");
        assert!(Keys::new("bench/", 9, 1000).is_ok());
        assert_eq!(Keys::new("", 4, 1).unwrap().prefix_end(), [0]);
        assert_eq!(Keys::new("a\u{7f}", 4, 1).unwrap().prefix_end(), b"a\x80");
    }

    #[test]
    fn rng_is_seeded_and_bounded() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        let xs: Vec<u64> = (0..100).map(|_| a.below(10)).collect();
        let ys: Vec<u64> = (0..100).map(|_| b.below(10)).collect();
        assert_eq!(xs, ys);
        assert!(xs.iter().all(|&x| x < 10));
        assert!((0..10).all(|d| xs.contains(&d)), "every value of a small range shows up in 100 draws");
    }

    #[test]
    fn sequential_keys_are_shared_and_wrap() {
        let counter = Arc::new(AtomicU64::new(0));
        let (mut a, mut b) = (KeyPick::Sequential(counter.clone()), KeyPick::Sequential(counter));
        let taken: Vec<u64> = (0..3).flat_map(|_| [a.next(5), b.next(5)]).collect();
        assert_eq!(taken, [0, 1, 2, 3, 4, 0], "one sequence over both clients, modulo the space");
        let mut random = KeyPick::Random(Rng::new(1));
        assert!((0..100).all(|_| random.next(3) < 3));
    }

    #[test]
    fn log_streams_are_named_after_the_stream_or_the_prefix() {
        assert_eq!(LogStreams::new(None, "bench/", 1, 0).unwrap().names, ["bench"]);
        assert_eq!(LogStreams::new(None, "/", 1, 0).unwrap().names, ["bench"], "never an empty name");
        let many = LogStreams::new(Some("events"), "bench/", 3, 7).unwrap();
        assert_eq!(many.names, ["events-0", "events-1", "events-2"]);
        assert_eq!(many.retention_bytes, 7);
        assert!(LogStreams::new(Some(""), "bench/", 1, 0).is_err());
        assert!(LogStreams::new(Some(&"x".repeat(257)), "bench/", 1, 0).is_err());
        assert!(LogStreams::new(None, "bench/", 0, 0).is_err());
        let workload = Workload::LogAppend(many);
        let streams: Vec<String> = (0..4)
            .map(|c| match ClientOp::new(&workload, c) {
                ClientOp::LogAppend { stream } => stream,
                _ => panic!("a log append"),
            })
            .collect();
        assert_eq!(streams, ["events-0", "events-1", "events-2", "events-0"], "clients take streams in turn");
    }

    #[test]
    fn workload_names() {
        let names: Vec<_> = [
            Workload::Put,
            Workload::Get { serializable: false },
            Workload::Get { serializable: true },
            Workload::Txn,
            Workload::Watch { watchers: 1 },
            Workload::LogAppend(LogStreams::new(None, "b/", 1, 0).unwrap()),
        ]
        .iter()
        .map(Workload::name)
        .collect();
        assert_eq!(names, ["put", "get", "get-serializable", "txn", "watch", "log-append"]);
    }
}
