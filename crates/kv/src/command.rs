//! Requests and responses, shaped like etcd's `etcdserverpb` messages so the API layer maps them
//! field for field. Writes become [`Command`]s in the Raft log; reads are served from the state.

use bytes::Bytes;

use crate::members::{MemberAttrs, MemberTable};
use crate::streams::{StreamCommand, StreamResponse};
use crate::types::{KeyRange, KeyValue};

/// etcd's `PutRequest`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PutRequest {
    /// The key.
    pub key: Bytes,
    /// The value.
    pub value: Bytes,
    /// Lease to attach (0: none).
    pub lease: i64,
    /// Return the previous value.
    pub prev_kv: bool,
    /// Keep the current value (the key must exist).
    pub ignore_value: bool,
    /// Keep the current lease (the key must exist).
    pub ignore_lease: bool,
}

/// etcd's `DeleteRangeRequest`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeleteRangeRequest {
    /// The keys.
    pub range: KeyRange,
    /// Return the deleted values.
    pub prev_kv: bool,
}

/// Sort order of a range (etcd's `RangeRequest.SortOrder`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SortOrder {
    /// Key order (or ascending, if a target other than the key is given).
    #[default]
    None,
    /// Lowest first.
    Ascend,
    /// Highest first.
    Descend,
}

/// What a range is sorted by (etcd's `RangeRequest.SortTarget`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SortTarget {
    /// The key.
    #[default]
    Key,
    /// The version.
    Version,
    /// The create revision.
    Create,
    /// The mod revision.
    Mod,
    /// The value.
    Value,
}

/// etcd's `RangeRequest`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeRequest {
    /// The keys.
    pub range: KeyRange,
    /// At most this many results (0: no limit).
    pub limit: i64,
    /// Read at this revision (0: current).
    pub revision: i64,
    /// Sort order.
    pub sort_order: SortOrder,
    /// Sort key.
    pub sort_target: SortTarget,
    /// Return keys without values.
    pub keys_only: bool,
    /// Return only the count.
    pub count_only: bool,
    /// Filters on mod and create revisions (0: none).
    pub min_mod_revision: i64,
    /// See `min_mod_revision`.
    pub max_mod_revision: i64,
    /// See `min_mod_revision`.
    pub min_create_revision: i64,
    /// See `min_mod_revision`.
    pub max_create_revision: i64,
}

impl RangeRequest {
    /// A plain read of `range` at the current revision.
    pub fn of(range: KeyRange) -> Self {
        Self {
            range,
            limit: 0,
            revision: 0,
            sort_order: SortOrder::None,
            sort_target: SortTarget::Key,
            keys_only: false,
            count_only: false,
            min_mod_revision: 0,
            max_mod_revision: 0,
            min_create_revision: 0,
            max_create_revision: 0,
        }
    }
}

/// What a compare looks at, with the operand (etcd's `Compare.target` and `target_union`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CompareTarget {
    /// The version.
    Version(i64),
    /// The create revision.
    Create(i64),
    /// The mod revision.
    Mod(i64),
    /// The value.
    Value(Bytes),
    /// The lease.
    Lease(i64),
}

/// The relation a compare checks (etcd's `Compare.result`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompareResult {
    /// Equal.
    Equal,
    /// Greater.
    Greater,
    /// Less.
    Less,
    /// Not equal.
    NotEqual,
}

/// etcd's `Compare`: holds if it holds for every key in the range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compare {
    /// The keys.
    pub range: KeyRange,
    /// What is compared, and with what.
    pub target: CompareTarget,
    /// The relation.
    pub result: CompareResult,
}

/// One operation of a transaction branch (etcd's `RequestOp`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RequestOp {
    /// A read.
    Range(RangeRequest),
    /// A write.
    Put(PutRequest),
    /// A delete.
    DeleteRange(DeleteRangeRequest),
    /// A nested transaction.
    Txn(TxnRequest),
}

/// etcd's `TxnRequest`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TxnRequest {
    /// All must hold for `success` to run; otherwise `failure` runs.
    pub compare: Vec<Compare>,
    /// Operations if the compares hold.
    pub success: Vec<RequestOp>,
    /// Operations otherwise.
    pub failure: Vec<RequestOp>,
}

/// A state change, as it goes through the Raft log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Write a key.
    Put(PutRequest),
    /// Delete keys.
    DeleteRange(DeleteRangeRequest),
    /// A transaction (may also only read).
    Txn(TxnRequest),
    /// Forget history before a revision.
    Compact {
        /// The revision.
        revision: i64,
    },
    /// Create a lease. The id is chosen before proposing, so every replica agrees.
    LeaseGrant {
        /// Lease id (positive).
        id: i64,
        /// Time to live, seconds.
        ttl_secs: i64,
    },
    /// Remove a lease and every key attached to it; the leader proposes it when a lease
    /// expires, so expiry is decided once and committed like any write.
    LeaseRevoke {
        /// Lease id.
        id: i64,
    },
    /// Renew a lease. It changes no state here: each server restarts the lease's clock when it
    /// applies it, and the leader's clock decides expiry. Through the log so any member can take
    /// a keep-alive and the answer says whether the lease still exists.
    LeaseKeepAlive {
        /// Lease id.
        id: i64,
    },
    /// Record (or replace) a member's attributes.
    MemberPut(MemberAttrs),
    /// Forget a member's attributes (after it left the Raft configuration).
    MemberForget {
        /// The member's id.
        id: u64,
    },
    /// Open a client session (exactly-once writes, see `sessions`).
    SessionRegister {
        /// How long the session lives unused, by committed leader time.
        timeout_ms: u64,
        /// The proposer's clock: starts the committed clock if no leader clock is committed yet
        /// (it never moves a running clock, which only the leader's `Clock` does).
        now_ms: u64,
    },
    /// Close a client session.
    SessionClose {
        /// The session.
        client_id: u64,
    },
    /// The leader's clock, committed so every replica expires sessions at the same point.
    Clock {
        /// Milliseconds since the Unix epoch.
        now_ms: u64,
    },
    /// A write made within a session: applied once, however often it is retried.
    Sessioned {
        /// The session.
        client_id: u64,
        /// The client's number for this write (each new write a higher one).
        seq: u64,
        /// The write: a put, delete, transaction, compaction, lease grant or revoke.
        command: Box<Command>,
    },
    /// A change to the log streams (`streams.rs`).
    Stream(StreamCommand),
}

impl Command {
    /// Whether the command may run in a session: the writes clients make through the KV and
    /// Lease services, and stream appends (their results can be remembered and replayed).
    pub fn is_sessionable(&self) -> bool {
        matches!(
            self,
            Command::Put(_)
                | Command::DeleteRange(_)
                | Command::Txn(_)
                | Command::Compact { .. }
                | Command::LeaseGrant { .. }
                | Command::LeaseRevoke { .. }
                | Command::Stream(crate::streams::StreamCommand::Append { .. })
        )
    }

    /// Whether applying the command may remove versions from the keyspace: a compaction, alone
    /// or in a session. Nothing else does (a delete writes a tombstone), which is what lets a
    /// [`crate::SnapshotEncoder`] read an earlier state from a later one; a caller finishes the
    /// encoding before applying a command that compacts. (Log streams' records, which trims,
    /// deletes and retention remove, are looked after by
    /// [`crate::SnapshotEncoder::before_apply`].)
    pub fn compacts(&self) -> bool {
        matches!(self.unsessioned(), Command::Compact { .. })
    }

    /// The command a session wraps (through any depth of wrapping), or this one: what it does
    /// to the state, whoever asked.
    pub fn unsessioned(&self) -> &Command {
        let mut command = self;
        while let Command::Sessioned { command: inner, .. } = command {
            command = inner;
        }
        command
    }
}

/// etcd's `RangeResponse`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeResponse {
    /// Store revision the read saw.
    pub revision: i64,
    /// The values (empty with `count_only`).
    pub kvs: Vec<KeyValue>,
    /// More values matched than `limit` allowed.
    pub more: bool,
    /// How many matched.
    pub count: i64,
}

/// etcd's `PutResponse`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PutResponse {
    /// Store revision after the write.
    pub revision: i64,
    /// The previous value, if asked for and present.
    pub prev_kv: Option<KeyValue>,
}

/// etcd's `DeleteRangeResponse`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeleteRangeResponse {
    /// Store revision after the delete.
    pub revision: i64,
    /// Keys deleted.
    pub deleted: i64,
    /// The deleted values, if asked for.
    pub prev_kvs: Vec<KeyValue>,
}

/// One result of a transaction branch (etcd's `ResponseOp`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResponseOp {
    /// A read's result.
    Range(RangeResponse),
    /// A write's result.
    Put(PutResponse),
    /// A delete's result.
    DeleteRange(DeleteRangeResponse),
    /// A nested transaction's result.
    Txn(TxnResponse),
}

/// etcd's `TxnResponse`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnResponse {
    /// Store revision after the transaction.
    pub revision: i64,
    /// Whether the compares held.
    pub succeeded: bool,
    /// One result per operation of the branch that ran.
    pub responses: Vec<ResponseOp>,
}

/// The result of applying a [`Command`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    /// From [`Command::Put`].
    Put(PutResponse),
    /// From [`Command::DeleteRange`].
    DeleteRange(DeleteRangeResponse),
    /// From [`Command::Txn`].
    Txn(TxnResponse),
    /// From [`Command::Compact`]: the revision after.
    Compact {
        /// Store revision.
        revision: i64,
    },
    /// From [`Command::LeaseGrant`].
    LeaseGrant {
        /// The lease.
        id: i64,
        /// Its TTL.
        ttl_secs: i64,
    },
    /// From [`Command::LeaseRevoke`]: the revision after.
    LeaseRevoke {
        /// Store revision.
        revision: i64,
    },
    /// From [`Command::LeaseKeepAlive`]: the lease's granted TTL.
    LeaseKeepAlive {
        /// The lease.
        id: i64,
        /// Its TTL, seconds.
        ttl_secs: i64,
    },
    /// From [`Command::MemberPut`] and [`Command::MemberForget`]: the member table after.
    Members(MemberTable),
    /// From [`Command::SessionRegister`].
    SessionRegistered {
        /// The new session's client id.
        client_id: u64,
    },
    /// From [`Command::SessionClose`] and [`Command::Clock`].
    Done,
    /// From [`Command::Stream`].
    Stream(StreamResponse),
}
