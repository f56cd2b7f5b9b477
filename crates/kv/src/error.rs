//! Expected failures, with etcd's messages so the API layer can pass them on unchanged.

use thiserror::Error;

/// Why a request was refused. The `Display` text is etcd's error message.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum KvError {
    /// The revision asked for was compacted away.
    #[error("mvcc: required revision has been compacted")]
    Compacted {
        /// The compaction point.
        compact_revision: i64,
    },
    /// The revision asked for does not exist yet.
    #[error("mvcc: required revision is a future revision")]
    FutureRevision,
    /// An empty key.
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    /// `ignore_value` or `ignore_lease` on a key that does not exist.
    #[error("etcdserver: key not found")]
    KeyNotFound,
    /// The lease does not exist (or expired).
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    /// A lease with this id exists already.
    #[error("etcdserver: lease already exists")]
    LeaseExists,
    /// A lease id must be positive.
    #[error("etcdserver: lease id must be positive")]
    InvalidLeaseId,
    /// A transaction writes the same key twice.
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    /// The session does not exist: it expired (unused for its timeout) or was never opened.
    #[error("balsa: session {client_id} expired or unknown; register a new session")]
    SessionExpired {
        /// The client id given.
        client_id: u64,
    },
    /// A sequence number below the session's last one: that request was superseded.
    #[error("balsa: sequence number {seq} is stale (the session's last is {last_seq})")]
    StaleSequence {
        /// The number given.
        seq: u64,
        /// The session's last applied number.
        last_seq: u64,
    },
    /// A session timeout outside 1 s ..= 24 h.
    #[error("balsa: session timeout must be between 1 s and 24 h")]
    InvalidSessionTimeout,
    /// A command that cannot be decoded.
    #[error("malformed command: {0}")]
    Malformed(&'static str),
    /// A log stream request was refused.
    #[error("{0}")]
    Stream(#[from] crate::streams::StreamError),
}
