//! The messages servers exchange: the RPCs of paper Figure 2 and the thesis' extensions
//! (PreVote, TimeoutNow, ReadIndex). One struct per message kind, one handler per kind in the core.

use bytes::Bytes;

use crate::types::{Entry, Index, NodeId, SnapshotMeta, Term};

/// An envelope: who sends, who receives, and the sender's term.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// The sender.
    pub from: NodeId,
    /// The receiver.
    pub to: NodeId,
    /// The sender's current term (for a pre-vote request: the term it would campaign in).
    pub term: Term,
    /// What the message says.
    pub body: MessageBody,
}

/// The kinds of message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MessageBody {
    /// A candidate (or pre-candidate) asks for a vote.
    RequestVote(RequestVote),
    /// The answer to `RequestVote`.
    RequestVoteResponse(RequestVoteResponse),
    /// The leader replicates entries, or sends a heartbeat when `entries` is empty.
    AppendEntries(AppendEntries),
    /// The answer to `AppendEntries` and `InstallSnapshot`.
    AppendEntriesResponse(AppendEntriesResponse),
    /// One chunk of a snapshot, to a follower whose next entry the leader compacted away.
    InstallSnapshot(InstallSnapshot),
    /// How much of a snapshot a follower has received, to whoever sends it the chunks.
    InstallSnapshotResponse(InstallSnapshotResponse),
    /// The leader asks a follower to stream its snapshot to a catching-up server, so that adding
    /// members does not load the leader alone (deck 003, Omni-Paxos).
    CatchUp(CatchUp),
    /// A follower forwards client commands to the leader, which appends them if it still leads
    /// (and drops them otherwise: the client's request id tells it, by time-out, to retry).
    Propose(Propose),
    /// The leader tells its chosen successor to campaign now (thesis section 3.10).
    TimeoutNow,
    /// A follower forwards a linearizable read to the leader (thesis section 6.4).
    ReadIndex(ReadIndexRequest),
    /// The leader's answer to `ReadIndex`.
    ReadIndexResponse(ReadIndexResponse),
}

/// RequestVote RPC arguments (paper Figure 2), with PreVote and leadership transfer flags.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestVote {
    /// True for a pre-vote (thesis 9.6): the voter answers as if asked in `term` but changes
    /// nothing, so a server that cannot win never disrupts the cluster by bumping terms.
    pub pre_vote: bool,
    /// Index of the candidate's last log entry (section 5.4.1).
    pub last_log_index: Index,
    /// Term of the candidate's last log entry (section 5.4.1).
    pub last_log_term: Term,
    /// Set when the election follows a TimeoutNow: voters that still hear from a leader must vote
    /// anyway, because that leader asked for the transfer (thesis 3.10 and 4.2.3).
    pub leadership_transfer: bool,
}

/// RequestVote RPC results.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestVoteResponse {
    /// Echoes the request's flag, so that a late pre-vote answer is never counted as a vote.
    pub pre_vote: bool,
    /// True means the candidate received the vote.
    pub vote_granted: bool,
}

/// AppendEntries RPC arguments (paper Figure 2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppendEntries {
    /// Index of the log entry immediately preceding the new ones.
    pub prev_log_index: Index,
    /// Term of that entry.
    pub prev_log_term: Term,
    /// Entries to store (empty for a heartbeat).
    pub entries: Vec<Entry>,
    /// The leader's commit index.
    pub leader_commit: Index,
    /// The leader's read round when this was sent; echoed in the response so the leader knows
    /// which ReadIndex requests a quorum has confirmed (thesis 6.4).
    pub read_round: u64,
}

/// AppendEntries RPC results, with the conflict hint of section 5.3's "fast repair".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppendEntriesResponse {
    /// True if the follower contained an entry matching `prev_log_index` and `prev_log_term`.
    pub success: bool,
    /// On success: the index up to which the follower's log now matches the leader's.
    pub match_index: Index,
    /// On failure: the `prev_log_index` that did not match (lets the leader drop stale replies).
    pub rejected_index: Index,
    /// On failure: where the leader should look next.
    pub hint: ConflictHint,
    /// Echo of `AppendEntries::read_round`.
    pub read_round: u64,
}

/// The follower's hint after a failed consistency check: its term at the rejected index and the
/// first index it holds of that term, or, if its log is too short, its last index + 1. With it
/// the leader skips a whole term per round trip instead of one entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConflictHint {
    /// The follower's term at the rejected index, if it has an entry there.
    pub conflict_term: Option<Term>,
    /// First index of `conflict_term` in the follower's log, or its last index + 1.
    pub conflict_index: Index,
}

/// InstallSnapshot RPC (paper Figure 13): one chunk of a snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstallSnapshot {
    /// The leader the receiver follows and acknowledges the finished install to. The sender is
    /// the leader itself or a follower streaming on its behalf.
    pub leader: NodeId,
    /// Which snapshot (chunks of different snapshots never mix).
    pub meta: SnapshotMeta,
    /// Byte offset of this chunk in the snapshot's data.
    pub offset: u64,
    /// The chunk.
    pub data: Bytes,
    /// This is the last chunk.
    pub done: bool,
}

/// Progress of a snapshot transfer, from the receiver to the sender of the chunks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstallSnapshotResponse {
    /// Which snapshot (its last included index and term).
    pub index: Index,
    /// Term of that entry.
    pub snapshot_term: Term,
    /// Bytes received so far without a gap: the sender resumes here.
    pub received: u64,
    /// A chunk arrived out of order (one was lost): send again from `received`.
    pub rewind: bool,
}

/// Commands forwarded to the leader.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Propose {
    /// The commands, appended in this order.
    pub commands: Vec<Bytes>,
}

/// The leader asks the receiver to stream its latest snapshot to `target`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CatchUp {
    /// The server to bring up to date.
    pub target: NodeId,
}

/// A linearizable read forwarded by a follower.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadIndexRequest {
    /// Opaque to Raft: identifies the read at the follower that asked.
    pub context: Bytes,
}

/// The leader's answer to a forwarded read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadIndexResponse {
    /// The request's context.
    pub context: Bytes,
    /// The index the read must wait for, or `None` if the receiver could not serve it (not
    /// leader any more).
    pub read_index: Option<Index>,
}

impl Message {
    /// Whether this message may only be sent after the `Ready` it came in has been made
    /// durable. Votes, vote requests and append acknowledgements promise something about durable
    /// state (paper Figure 2: "respond to RPCs only after updating stable storage"); the leader's
    /// own replication traffic does not (thesis 10.2.1: the leader may write its log in parallel).
    pub fn requires_durability(&self) -> bool {
        matches!(
            self.body,
            MessageBody::RequestVote(_)
                | MessageBody::RequestVoteResponse(_)
                | MessageBody::AppendEntriesResponse(_)
        )
    }

    /// Roughly how many bytes the message puts on the wire (for transports and simulated
    /// bandwidth).
    pub fn size_bytes(&self) -> usize {
        let payload = match &self.body {
            MessageBody::AppendEntries(a) => a.entries.iter().map(Entry::size_bytes).sum(),
            MessageBody::InstallSnapshot(s) => s.data.len(),
            MessageBody::Propose(p) => p.commands.iter().map(Bytes::len).sum(),
            _ => 0,
        };
        48 + payload
    }

    /// A short name for traces.
    pub fn kind_name(&self) -> &'static str {
        match &self.body {
            MessageBody::RequestVote(r) if r.pre_vote => "PreVote",
            MessageBody::RequestVote(_) => "RequestVote",
            MessageBody::RequestVoteResponse(r) if r.pre_vote => "PreVoteResp",
            MessageBody::RequestVoteResponse(_) => "RequestVoteResp",
            MessageBody::AppendEntries(a) if a.entries.is_empty() => "Heartbeat",
            MessageBody::AppendEntries(_) => "AppendEntries",
            MessageBody::AppendEntriesResponse(_) => "AppendEntriesResp",
            MessageBody::InstallSnapshot(_) => "InstallSnapshot",
            MessageBody::InstallSnapshotResponse(_) => "InstallSnapshotResp",
            MessageBody::CatchUp(_) => "CatchUp",
            MessageBody::Propose(_) => "Propose",
            MessageBody::TimeoutNow => "TimeoutNow",
            MessageBody::ReadIndex(_) => "ReadIndex",
            MessageBody::ReadIndexResponse(_) => "ReadIndexResp",
        }
    }
}
