//! Expected failures, as typed errors. Broken invariants panic instead.

use thiserror::Error;

use crate::types::{Index, NodeId};

/// Why a proposal was refused.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum ProposeError {
    /// Only the leader accepts proposals; try the hinted leader.
    #[error("not the leader (leader hint: {leader_hint:?})")]
    NotLeader {
        /// The leader this server believes in, if any.
        leader_hint: Option<NodeId>,
    },
    /// The leader is handing over leadership and accepts no new entries (thesis 3.10).
    #[error("leadership transfer to {to} in progress")]
    TransferInProgress {
        /// The designated successor.
        to: NodeId,
    },
}

/// Why a linearizable read could not be served.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum ReadIndexError {
    /// No leader known, or the leader lost leadership before confirming the read.
    #[error("not the leader (leader hint: {leader_hint:?})")]
    NotLeader {
        /// The leader this server believes in, if any.
        leader_hint: Option<NodeId>,
    },
}

/// Why a leadership transfer was refused.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum TransferError {
    /// Only the leader can transfer leadership.
    #[error("not the leader (leader hint: {leader_hint:?})")]
    NotLeader {
        /// The leader this server believes in, if any.
        leader_hint: Option<NodeId>,
    },
    /// Leadership can only go to a voter.
    #[error("{id} is not a voter")]
    NotVoter {
        /// The requested successor.
        id: NodeId,
    },
}

/// Why a message was not accepted.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum StepError {
    /// The message is addressed to another server.
    #[error("message for {to} delivered to {me}")]
    WrongRecipient {
        /// The addressee.
        to: NodeId,
        /// This server.
        me: NodeId,
    },
    /// The sender field is 0 or this server itself.
    #[error("invalid sender {from}")]
    InvalidSender {
        /// The claimed sender.
        from: NodeId,
    },
}

/// Why a locally taken snapshot was refused.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum SnapshotError {
    /// Snapshots may only cover applied entries.
    #[error("snapshot at {index} covers entries not yet applied (applied {applied})")]
    NotApplied {
        /// The snapshot's last included index.
        index: Index,
        /// The last applied index.
        applied: Index,
    },
    /// A newer snapshot already exists.
    #[error("snapshot at {index} is not newer than the current one at {current}")]
    Stale {
        /// The snapshot's last included index.
        index: Index,
        /// The current snapshot's index.
        current: Index,
    },
    /// The snapshot's configuration is not the one in effect at its index (use
    /// [`crate::Raft::membership_at`]).
    #[error("snapshot at {index} carries a configuration other than the one in effect there")]
    MembershipMismatch {
        /// The snapshot's last included index.
        index: Index,
    },
    /// The metadata does not describe this server's log.
    #[error("snapshot term {term} at {index} does not match the log")]
    TermMismatch {
        /// The snapshot's last included index.
        index: Index,
        /// The term it claims.
        term: u64,
    },
}

/// Why a membership change was refused.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum ConfChangeError {
    /// Only the leader changes the configuration.
    #[error("not the leader (leader hint: {leader_hint:?})")]
    NotLeader {
        /// The leader this server believes in, if any.
        leader_hint: Option<NodeId>,
    },
    /// One change at a time: an earlier one has not committed yet (or the cluster is still in
    /// the joint configuration, or this leader has not yet committed an entry of its term).
    #[error("a membership change is already in progress")]
    InProgress,
    /// Leadership is being handed over.
    #[error("leadership transfer to {to} in progress")]
    TransferInProgress {
        /// The designated successor.
        to: NodeId,
    },
    /// The change makes no sense for the current configuration.
    #[error("invalid membership change: {0}")]
    Invalid(String),
}
