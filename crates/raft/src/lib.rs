//! # balsa-raft: Raft as a deterministic state machine
//!
//! This crate is the consensus core of balsa. It implements Raft as described in the paper
//! ("In Search of an Understandable Consensus Algorithm", Ongaro and Ousterhout, 2014) and
//! Ongaro's thesis ("Consensus: Bridging Theory and Practice", 2014): leader election with
//! randomized timeouts, PreVote, CheckQuorum, log replication with fast repair, the commit rule
//! for entries of earlier terms, leadership transfer, ReadIndex reads, membership changes by
//! joint consensus with learners ([`Raft::change_membership`]), and snapshots transferred in
//! chunks, by the leader or by an up-to-date follower.
//!
//! The core does no I/O, reads no clock and uses no thread randomness. A driver feeds it
//! *events* — [`Raft::tick`], [`Raft::step`], [`Raft::propose`], [`Raft::read_index`] — and
//! carries out the [`Ready`] it hands back: write this, send that, apply these. Because the same
//! inputs always produce the same outputs, a whole cluster can be simulated from one seed
//! (see the `balsa-sim` crate).
//!
//! ## The driver loop
//!
//! ```
//! use balsa_raft::{Config, InitialState, Membership, Raft, Role};
//!
//! // A single-server cluster: it elects itself once its election timeout passes.
//! let initial = InitialState { membership: Membership::new([1]), ..Default::default() };
//! let mut node = Raft::new(Config::new(1), initial).unwrap();
//! let mut applied = Vec::new();
//! for _ in 0..30 {
//!     node.tick();
//!     while node.has_ready() {
//!         let mut ready = node.ready();
//!         // 1. Messages that need nothing durable may leave now (a single server has none).
//!         assert!(ready.messages.is_empty());
//!         // 2. Write ready.persist (hard state, snapshot, entries) and fsync. Here: nothing
//!         //    to keep, so the batch is simply declared durable.
//!         let receipt = std::mem::take(&mut ready.persist).durable();
//!         // 3. Votes and acknowledgements may leave only now.
//!         let _after_fsync = ready.gated_messages.release(&receipt);
//!         // 4. Apply committed entries in order.
//!         applied.extend(ready.committed_entries);
//!         // 5. Tell the core the batch is durable.
//!         node.advance(receipt);
//!     }
//!     if node.role() == Role::Leader && applied.len() == 1 {
//!         node.propose("hello".into()).unwrap();
//!     }
//! }
//! assert_eq!(node.role(), Role::Leader);
//! // The leader's no-op, then our command.
//! assert_eq!(applied.len(), 2);
//! assert_eq!(&applied[1].data[..], b"hello");
//! ```
//!
//! ## Persistence ordering
//!
//! Raft's safety rests on two writes reaching the disk before anyone hears of them: the vote
//! (one vote per term, section 5.2) and appended entries a follower acknowledges (section 5.3).
//! [`Ready`] separates `messages` (safe to send at once) from `gated_messages`, which only a
//! [`Durable`] receipt — obtained by consuming the [`PersistBatch`] — releases. The leader's own
//! AppendEntries may leave before its write completes (thesis 10.2.1), but the leader counts
//! itself towards a commit only up to what [`Raft::advance`] reported durable.
//!
//! ## What is where
//!
//! | file | idea |
//! | --- | --- |
//! | `raft.rs` | roles, timers, message dispatch, Ready/advance, invariants |
//! | `election.rs` | RequestVote, PreVote, leadership transfer |
//! | `replication.rs` | AppendEntries, fast repair, commit rule |
//! | `snapshot.rs` | InstallSnapshot: chunked, flow-controlled, resumable, served by helpers |
//! | `read_index.rs` | ReadIndex and lease reads |
//! | `log.rs` | the in-memory log and its commit/durable/applied positions |
//! | `progress.rs` | per-follower flow control (probe, replicate, snapshot) |
//! | `membership.rs` | configurations and quorum arithmetic (a majority of each voter set) |
//! | `conf_change.rs` | joint consensus, learners and their promotion, configuration history |

#![warn(missing_docs)]

mod conf_change;
mod config;
mod election;
mod error;
mod log;
mod membership;
mod message;
mod progress;
mod raft;
mod read_index;
mod ready;
mod replication;
pub mod rng;
mod snapshot;
mod types;
pub mod wire;

pub use conf_change::MembershipChange;
pub use config::{Config, ConfigError, ReadMode};
pub use error::{ConfChangeError, ProposeError, ReadIndexError, SnapshotError, StepError, TransferError};
pub use membership::{Membership, VoteResult};
pub use message::{
    AppendEntries, AppendEntriesResponse, CatchUp, ConflictHint, InstallSnapshot, InstallSnapshotResponse,
    Message, MessageBody, Propose, ReadIndexRequest, ReadIndexResponse, RequestVote, RequestVoteResponse,
};
pub use progress::{Progress, ProgressState};
pub use raft::{InitialState, Raft, Status};
pub use ready::{Durable, GatedMessages, PersistBatch, ReadState, Ready};
pub use types::{
    Entry, EntryKind, HardState, Index, NodeId, Role, Snapshot, SnapshotData, SnapshotMeta, SnapshotSource,
    SoftState, Term, ENTRY_OVERHEAD_BYTES,
};
