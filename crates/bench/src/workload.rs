//! What one client sends: keys, values, and one operation per workload.
//!
//! **Extension point.** A new workload (balsa's log-stream append, once that service exists) is
//! a variant of [`Workload`] and of [`ClientOp`], plus an arm in [`ClientOp::call`] that sends one
//! request over the client's [`Conn`] and returns what the run needs (`Ok` with the write's
//! revision, if any). The runner (`run.rs`) handles timing, warmup, rate, histograms and
//! reporting for every workload alike.

use std::collections::HashMap;

use balsa_server::pb::etcdserverpb::{
    compare, kv_client::KvClient, request_op, response_op, Compare, PutRequest, RangeRequest, RequestOp,
    TxnRequest,
};
use tonic::transport::Channel;
use tonic::Status;

use crate::BenchError;

/// A workload, as named in results.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
    /// Log-stream append (balsa's service; not in this build yet).
    LogAppend,
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
            Workload::LogAppend => "log-append",
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

/// One client's gRPC stubs (cheap clones sharing one of the run's connections).
#[derive(Clone)]
pub struct Conn {
    /// etcd's KV service.
    pub kv: KvClient<Channel>,
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
    /// Not available yet.
    LogAppend,
}

impl ClientOp {
    /// The operation of `workload` (the watch workload's writers put).
    pub fn new(workload: Workload) -> Self {
        match workload {
            Workload::Put | Workload::Watch { .. } => ClientOp::Put,
            Workload::Get { serializable } => ClientOp::Get { serializable },
            Workload::Txn => ClientOp::Txn { seen: HashMap::new(), succeeded: 0 },
            Workload::LogAppend => ClientOp::LogAppend,
        }
    }

    /// Sends one operation and waits for its answer. `Ok(Some(revision))` for a write that
    /// created a revision.
    pub async fn call(
        &mut self,
        conn: &mut Conn,
        keys: &Keys,
        value: &[u8],
        rng: &mut Rng,
    ) -> Result<Option<i64>, Status> {
        let index = rng.below(keys.space);
        match self {
            ClientOp::Put => {
                let put = PutRequest { key: keys.key(index), value: value.to_vec(), ..Default::default() };
                let response = conn.kv.put(put).await?.into_inner();
                Ok(response.header.map(|h| h.revision))
            }
            ClientOp::Get { serializable } => {
                let range =
                    RangeRequest { key: keys.key(index), serializable: *serializable, ..Default::default() };
                conn.kv.range(range).await?;
                Ok(None)
            }
            ClientOp::Txn { seen, succeeded } => {
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
            ClientOp::LogAppend => Err(Status::unimplemented("log-append is not available in this build")),
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
    conn: &mut Conn,
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
    let response = conn.kv.txn(txn).await?.into_inner();
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
    fn workload_names() {
        let names: Vec<_> = [
            Workload::Put,
            Workload::Get { serializable: false },
            Workload::Get { serializable: true },
            Workload::Txn,
            Workload::Watch { watchers: 1 },
            Workload::LogAppend,
        ]
        .iter()
        .map(Workload::name)
        .collect();
        assert_eq!(names, ["put", "get", "get-serializable", "txn", "watch", "log-append"]);
    }
}
