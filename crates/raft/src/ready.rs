//! What the core asks the driver to do: `Ready` out, `advance` back in.
//!
//! The persistence ordering of the paper ("respond to RPCs only after updating stable storage") is
//! built into the types: messages that promise durable state are held in [`GatedMessages`], which
//! only [`PersistBatch::durable`] — consuming the batch after it has been written — can unlock.

use bytes::Bytes;

use crate::error::ReadIndexError;
use crate::message::Message;
use crate::types::{Entry, HardState, Index, Snapshot, SoftState, Term};

/// One batch of work for the driver. Carry it out in this order:
///
/// 1. send `messages` (they may go before the write: thesis 10.2.1);
/// 2. write `persist` — snapshot, then hard state, then entries (replacing any stored entry at
///    or after the first one's index) — and make it durable (fsync). Writing the hard state
///    first means a crash that tears the write never leaves entries of a newer term than the
///    stored one;
/// 3. turn the batch into a [`Durable`] receipt and send `gated_messages.release(&receipt)`;
/// 4. apply `committed_entries` in order, serve `read_states` once applied up to their index;
/// 5. call [`crate::Raft::advance`] with the receipt.
#[derive(Debug)]
#[must_use = "a Ready must be carried out and advanced"]
pub struct Ready {
    /// Role or leader changed since the previous Ready.
    pub soft_state: Option<SoftState>,
    /// Messages that may be sent at once.
    pub messages: Vec<Message>,
    /// State to make durable.
    pub persist: PersistBatch,
    /// Messages that may only leave after `persist` is durable.
    pub gated_messages: GatedMessages,
    /// Entries known committed and durable here, to apply in order.
    pub committed_entries: Vec<Entry>,
    /// Outcomes of ReadIndex requests made on this server.
    pub read_states: Vec<ReadState>,
}

/// State the driver must make durable before the gated messages leave.
#[derive(Debug, Default)]
#[must_use = "persist the batch, then call durable() to release the gated messages"]
pub struct PersistBatch {
    pub(crate) ready_id: u64,
    /// Index and term of the last entry of `entries`, recorded when the batch was built so the
    /// driver may move `entries` out (to a log writer) without copying them.
    pub(crate) last_entry: Option<(Index, Term)>,
    /// Changed term, vote or commit index.
    pub hard_state: Option<HardState>,
    /// A snapshot received from the leader, replacing the whole log and the state machine.
    pub snapshot: Option<Snapshot>,
    /// Entries to write. Any stored entry with an index at or after `entries[0].index` must be
    /// discarded first: the core only hands out a suffix that replaces what follows it.
    pub entries: Vec<Entry>,
    /// See [`PersistBatch::must_sync`].
    pub(crate) must_sync: bool,
}

impl PersistBatch {
    /// True if there is nothing to write (the receipt is still needed to release messages).
    pub fn is_empty(&self) -> bool {
        self.hard_state.is_none() && self.snapshot.is_none() && self.entries.is_empty()
    }

    /// Whether the write must be synced before [`PersistBatch::durable`]: it holds entries, a
    /// snapshot, or a new term or vote. A batch that only moves the commit index need not be
    /// (etcd's `MustSync` makes the same cut): the commit index is volatile state in Figure 2,
    /// and one lost in a crash is learned again from the leader, while a sync per commit would
    /// put a second fsync on every write's path, after the one that made it durable. An unsynced
    /// commit index reaches the disk with the next synced batch.
    pub fn must_sync(&self) -> bool {
        self.must_sync
    }

    /// Declares the batch durable and yields the receipt that releases gated messages and
    /// advances the core. Call it only after the write has been synced, where
    /// [`PersistBatch::must_sync`] says so.
    pub fn durable(self) -> Durable {
        Durable { ready_id: self.ready_id, last_entry: self.last_entry }
    }
}

/// Proof, by construction, that one Ready's batch was made durable.
#[derive(Debug)]
pub struct Durable {
    pub(crate) ready_id: u64,
    /// Index and term of the last entry written, if any.
    pub(crate) last_entry: Option<(Index, Term)>,
}

/// Messages that must wait for the Ready's batch to be durable.
#[derive(Debug, Default)]
pub struct GatedMessages {
    pub(crate) ready_id: u64,
    pub(crate) messages: Vec<Message>,
}

impl GatedMessages {
    /// Hands out the messages. Panics if the receipt belongs to another Ready: sending votes or
    /// acknowledgements on the strength of some other write would break the persistence contract.
    pub fn release(self, receipt: &Durable) -> Vec<Message> {
        assert_eq!(self.ready_id, receipt.ready_id, "receipt from another Ready");
        self.messages
    }

    /// Number of messages waiting.
    pub fn len(&self) -> usize {
        self.messages.len()
    }

    /// True if no message waits.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }
}

/// The outcome of a ReadIndex request (thesis 6.4): once this server has applied up to `index`,
/// a read of the state machine is linearizable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadState {
    /// The context passed to [`crate::Raft::read_index`].
    pub context: Bytes,
    /// The index to wait for, or why the read cannot be served here.
    pub result: Result<Index, ReadIndexError>,
}
