//! The vocabulary of the Raft paper: terms, indexes, log entries, hard state and snapshots.

use std::fmt;
use std::io;
use std::sync::Arc;

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
    /// The serialized state machine, behind a handle: the core reads it only chunk by chunk,
    /// when it streams the snapshot to a peer.
    pub data: SnapshotData,
}

/// Where a snapshot's bytes can be read from. The core never holds a snapshot's data itself: it
/// holds a [`SnapshotData`] handle and reads a chunk when it sends one. A driver backs it with
/// the durable snapshot file (reads are `pread`s); tests and the simulator with bytes in memory.
pub trait SnapshotSource: Send + Sync + fmt::Debug {
    /// Length of the data in bytes.
    fn len(&self) -> u64;
    /// Whether the data is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Exactly `len` bytes from `offset`; the core only asks within `0..self.len()`.
    fn read(&self, offset: u64, len: usize) -> io::Result<Bytes>;
    /// The whole data, if it is in memory already (so reading it whole costs no copy).
    fn in_memory(&self) -> Option<&Bytes> {
        None
    }
}

/// A cheap, shareable handle on a snapshot's data ([`SnapshotSource`]). Cloning it clones an
/// `Arc`; the bytes are read only through [`SnapshotData::read`].
#[derive(Clone)]
pub struct SnapshotData(Arc<dyn SnapshotSource>);

struct InMemory(Bytes);

impl fmt::Debug for InMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} bytes in memory", self.0.len())
    }
}

impl SnapshotSource for InMemory {
    fn len(&self) -> u64 {
        self.0.len() as u64
    }
    fn read(&self, offset: u64, len: usize) -> io::Result<Bytes> {
        let end = offset.checked_add(len as u64).filter(|&end| end <= self.len());
        let end =
            end.ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "read past the snapshot"))?;
        Ok(self.0.slice(offset as usize..end as usize))
    }
    fn in_memory(&self) -> Option<&Bytes> {
        Some(&self.0)
    }
}

impl SnapshotData {
    /// Data read from `source`.
    pub fn from_source(source: Arc<dyn SnapshotSource>) -> Self {
        Self(source)
    }

    /// Length of the data in bytes.
    pub fn len(&self) -> u64 {
        self.0.len()
    }

    /// Whether the data is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `len` bytes from `offset` (fewer at the end of the data; none past it).
    pub fn read(&self, offset: u64, len: usize) -> io::Result<Bytes> {
        let total = self.len();
        if offset >= total {
            return Ok(Bytes::new());
        }
        self.0.read(offset, ((total - offset).min(len as u64)) as usize)
    }

    /// The whole data: shared if it is in memory, read into memory otherwise. For restoring a
    /// state machine; the caller drops it once restored.
    pub fn to_bytes(&self) -> io::Result<Bytes> {
        match self.0.in_memory() {
            Some(b) => Ok(b.clone()),
            None => self.0.read(0, self.len() as usize),
        }
    }

    /// Whether the data is held in memory (rather than read from a file when needed).
    pub fn is_in_memory(&self) -> bool {
        self.0.in_memory().is_some()
    }
}

impl From<Bytes> for SnapshotData {
    fn from(data: Bytes) -> Self {
        Self(Arc::new(InMemory(data)))
    }
}

impl From<Vec<u8>> for SnapshotData {
    fn from(data: Vec<u8>) -> Self {
        Bytes::from(data).into()
    }
}

impl Default for SnapshotData {
    fn default() -> Self {
        Bytes::new().into()
    }
}

impl fmt::Debug for SnapshotData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SnapshotData({:?})", self.0)
    }
}

/// Equal when the contents are equal (read whole; meant for tests). A read error is unequal.
impl PartialEq for SnapshotData {
    fn eq(&self, other: &Self) -> bool {
        if Arc::ptr_eq(&self.0, &other.0) {
            return true;
        }
        self.len() == other.len() && matches!((self.to_bytes(), other.to_bytes()), (Ok(a), Ok(b)) if a == b)
    }
}

impl Eq for SnapshotData {}

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
