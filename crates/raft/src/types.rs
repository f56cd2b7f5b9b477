//! The vocabulary of the Raft paper: terms, indexes, log entries, hard state and snapshots.

use bytes::Bytes;

use crate::membership::Membership;

/// Identifies a server. `0` is never a valid id: it is reserved so that "no node" needs no Option
/// in hot paths of callers that encode ids on the wire.
pub type NodeId = u64;

/// A Raft term (paper section 5.1): a logical clock that only moves forward.
pub type Term = u64;

/// A position in the replicated log. The first entry has index 1; index 0 means "before the log".
pub type Index = u64;

/// What a log entry carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EntryKind {
    /// A client command for the state machine.
    Normal,
    /// The empty entry a new leader appends so that it can commit entries of earlier terms
    /// (paper section 5.4.2, thesis section 3.6.2). The state machine skips it.
    Noop,
    /// A new cluster configuration ([`crate::Membership::encode`]). It takes effect on every
    /// server as soon as it is appended, not when committed (paper section 6). The state machine
    /// skips it; drivers may watch it to open or close peer connections.
    ConfChange,
}

/// One entry of the replicated log (paper Figure 2: "each entry contains command for state
/// machine, and term when entry was received by leader").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The leader's term when the entry was created; with `index` it names the entry uniquely
    /// (Log Matching Property, section 5.3).
    pub term: Term,
    /// The entry's position in the log.
    pub index: Index,
    /// Command or no-op.
    pub kind: EntryKind,
    /// The opaque command. `Bytes` so that sending one entry to several peers does not copy it.
    pub data: Bytes,
}

/// Bytes an entry is assumed to cost beyond its payload when batching by size: term, index, kind
/// and framing. A rough figure is enough; it only bounds message sizes.
pub const ENTRY_OVERHEAD_BYTES: usize = 24;

impl Entry {
    /// The size this entry counts for when messages are batched up to a byte limit.
    pub fn size_bytes(&self) -> usize {
        self.data.len() + ENTRY_OVERHEAD_BYTES
    }
}

/// The state every server must persist before answering an RPC (paper Figure 2, "Persistent state
/// on all servers"), plus the commit index so that a restarted server can re-apply without waiting
/// for a leader.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HardState {
    /// Latest term this server has seen.
    pub current_term: Term,
    /// Candidate that received this server's vote in `current_term`.
    pub voted_for: Option<NodeId>,
    /// Highest log index known to be committed. Persisting it is an optimisation, not a safety
    /// requirement: a lagging value only means re-learning commits from the leader.
    pub commit_index: Index,
}

/// Describes the state a snapshot replaces (paper section 7, Figure 12 "lastIncludedIndex",
/// "lastIncludedTerm", and the configuration as of that index).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotMeta {
    /// Index of the last entry the snapshot covers.
    pub last_included_index: Index,
    /// Term of that entry, so the consistency check of the next AppendEntries still works.
    pub last_included_term: Term,
    /// The configuration in effect at `last_included_index`.
    pub membership: Membership,
}

/// A state machine snapshot: the metadata Raft needs and the application's opaque bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// What the snapshot covers.
    pub meta: SnapshotMeta,
    /// The serialized state machine.
    pub data: Bytes,
}

/// The role a server plays (paper Figure 4), with PreCandidate for thesis section 9.6.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Passive: answers RPCs from leaders and candidates.
    Follower,
    /// Asking for pre-votes: has not incremented its term (thesis 9.6).
    PreCandidate,
    /// Asking for votes in a new term.
    Candidate,
    /// Handles all client requests and replicates the log.
    Leader,
}

/// Role and known leader; reported in `Ready::soft_state` whenever either changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SoftState {
    /// This server's role.
    pub role: Role,
    /// The leader this server follows, if it knows one.
    pub leader_id: Option<NodeId>,
    /// The term of that knowledge.
    pub term: Term,
}
