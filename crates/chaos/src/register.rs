//! The register workload: reads, writes and compare-and-swaps on a few keys, every operation
//! recorded for the linearizability checker. Written values are unique (`client-seq`), so a read
//! names the write it saw; acknowledged writes keep their revision for the watch and lost-write
//! checks.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use balsa_client::{Client, Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp};
use balsa_raft::rng::SplitMix64;
use serde::{Deserialize, Serialize};

use crate::history::{push, Clock, Counts, Shared, OP_LIMIT};

/// The prefix of the register keys (the watchers watch it).
pub const PREFIX: &str = "reg/";

/// Register key number `k`.
pub fn key(k: usize) -> String {
    format!("{PREFIX}{k}")
}

pub use balsa_lincheck::register::{Input as RegInput, Output as RegOutput};

/// One recorded operation (the checker's shape: see `balsa_lincheck::Operation`).
pub type RegOp = balsa_lincheck::Operation<RegInput, RegOutput>;

/// An acknowledged write: where it landed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Written {
    /// The key.
    pub key: String,
    /// The value.
    pub value: String,
    /// The revision the write was given.
    pub revision: i64,
}

/// What the register clients record.
#[derive(Clone, Default)]
pub struct Recorded {
    /// Every operation with a known outcome, and every write with an unknown one (failed reads
    /// had no effect and are left out).
    pub ops: Shared<RegOp>,
    /// Acknowledged writes and successful swaps, with their revisions.
    pub acked: Shared<Written>,
    /// Every value any write tried to set, per key (a value seen anywhere must be one of them).
    pub attempted: Shared<(String, String)>,
    /// Outcome counts, per client, summed at the end.
    pub counts: Shared<Counts>,
}

/// One register client: runs until `stop`.
pub async fn client(
    id: u64,
    client: Client,
    keys: usize,
    seed: u64,
    clock: Clock,
    stop: Arc<AtomicBool>,
    rec: Recorded,
) {
    let mut rng = SplitMix64::new(seed);
    let mut counts = Counts::default();
    // The checker's process id: a client whose operation's outcome is unknown moves on as a new
    // process (the old one may still be "in" that operation, forever).
    let mut process = id << 20;
    let mut last_seen: Vec<Option<String>> = vec![None; keys];
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let k = rng.range(0, keys as u64) as usize;
        let key = key(k);
        seq += 1;
        let value = format!("{id}-{seq}");
        // Every fourth client only reads: it never learns of a new leader from a failed write,
        // so it keeps asking whichever member it found, which must then refuse to answer from
        // a stale state (a cut-off leader, a lagging follower) rather than answer wrongly.
        let choice = if id % 4 == 3 { 0 } else { rng.range(0, 10) };
        let call_ns = clock.now_ns();
        let (input, outcome) = if choice < 5 {
            let r = tokio::time::timeout(OP_LIMIT, client.get(key.clone(), GetOptions::new())).await;
            let got = match r {
                Ok(Ok(resp)) => resp.kvs.first().map(|kv| String::from_utf8_lossy(&kv.value).into_owned()),
                _ => {
                    counts.failed += 1;
                    continue;
                }
            };
            last_seen[k] = got.clone();
            (RegInput::Read { key }, Some((RegOutput::Read(got), None)))
        } else if choice < 8 {
            push(&rec.attempted, (key.clone(), value.clone()));
            let r = tokio::time::timeout(OP_LIMIT, client.put(key.clone(), value.clone(), PutOptions::new()))
                .await;
            let outcome = match r {
                Ok(Ok(p)) => Some((RegOutput::Write, Some(p.revision))),
                _ => None,
            };
            (RegInput::Write { key, value }, outcome)
        } else {
            push(&rec.attempted, (key.clone(), value.clone()));
            let expected = last_seen[k].clone();
            let compare = match &expected {
                Some(v) => Compare::value(key.clone(), CompareOp::Equal, v.clone()),
                None => Compare::version(key.clone(), CompareOp::Equal, 0),
            };
            let txn = Txn::new().when([compare]).and_then([TxnOp::put(
                key.clone(),
                value.clone(),
                PutOptions::new(),
            )]);
            let r = tokio::time::timeout(OP_LIMIT, client.txn(txn)).await;
            let outcome = match r {
                Ok(Ok(t)) => Some((RegOutput::Cas(t.succeeded), t.succeeded.then_some(t.revision))),
                _ => None,
            };
            (RegInput::Cas { key, expected, new: value }, outcome)
        };
        let op = match outcome {
            Some((output, revision)) => {
                counts.ok += 1;
                if let (
                    Some(revision),
                    RegInput::Write { key, value } | RegInput::Cas { key, new: value, .. },
                ) = (revision, &input)
                {
                    push(&rec.acked, Written { key: key.clone(), value: value.clone(), revision });
                }
                RegOp::completed(process, call_ns, clock.now_ns(), input, output)
            }
            None => {
                counts.unknown += 1;
                let op = RegOp::unknown(process, call_ns, input);
                process += 1;
                op
            }
        };
        push(&rec.ops, op);
    }
    push(&rec.counts, counts);
}

/// After the heal: one linearizable read of every key, recorded like the clients' reads, so a
/// lost acknowledged write shows as a history that cannot be linearized.
pub async fn final_reads(client: &Client, keys: usize, clock: Clock, rec: &Recorded) -> Result<(), String> {
    for k in 0..keys {
        let key = key(k);
        let call_ns = clock.now_ns();
        let resp = tokio::time::timeout(OP_LIMIT, client.get(key.clone(), GetOptions::new()))
            .await
            .map_err(|_| format!("final read of {key}: no answer"))?
            .map_err(|e| format!("final read of {key}: {e}"))?;
        let got = resp.kvs.first().map(|kv| String::from_utf8_lossy(&kv.value).into_owned());
        push(
            &rec.ops,
            RegOp::completed(
                u64::MAX - k as u64,
                call_ns,
                clock.now_ns(),
                RegInput::Read { key },
                RegOutput::Read(got),
            ),
        );
    }
    Ok(())
}
