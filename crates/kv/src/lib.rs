//! # balsa-kv: the replicated state machine
//!
//! An MVCC keyspace with etcd's semantics, so that etcd's v3 API can be served over it unchanged:
//! a store-wide revision that grows by one per write transaction; per key a create revision, a
//! mod revision and a version; reads at any revision since the last compaction; transactions with
//! compares on value, version, create and mod revision and lease; leases whose keys go when they
//! are revoked; and the history a watch replays from an old revision.
//!
//! It is deterministic — no clock, no randomness, ordered maps only — because every replica
//! applies the same committed commands and must end in the same state. Time-based behaviour (a
//! lease expiring) is decided by the leader and committed as a command.
//!
//! ```
//! use balsa_kv::{Command, KeyRange, PutRequest, RangeRequest, StateMachine};
//!
//! let mut sm = StateMachine::default();
//! let put = |k: &str, v: &str| Command::Put(PutRequest { key: k.as_bytes().to_vec().into(), value: v.as_bytes().to_vec().into(), ..Default::default() });
//! sm.apply(&put("greeting", "hello")).unwrap();
//! sm.apply(&put("greeting", "hi")).unwrap();
//! let now = sm.range(&RangeRequest::of(KeyRange::single("greeting"))).unwrap();
//! assert_eq!(&now.kvs[0].value[..], b"hi");
//! assert_eq!((now.kvs[0].version, now.revision), (2, 3)); // revisions start at 1
//! let mut then = RangeRequest::of(KeyRange::single("greeting"));
//! then.revision = 2;
//! assert_eq!(&sm.range(&then).unwrap().kvs[0].value[..], b"hello");
//! ```

#![warn(missing_docs)]

pub mod codec;
pub mod command;
pub mod error;
mod key;
pub mod machine;
pub mod members;
pub mod mvcc;
pub mod sessions;
pub mod streams;
pub mod types;

pub use codec::SnapshotEncoder;
pub use command::{
    Command, Compare, CompareResult, CompareTarget, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, RequestOp, Response, ResponseOp, SortOrder, SortTarget,
    TxnRequest, TxnResponse,
};
pub use error::KvError;
pub use machine::{Lease, StateMachine};
pub use members::{MemberAttrs, MemberTable};
pub use mvcc::{Mvcc, Put};
pub use sessions::{Admission, Session, Sessions};
pub use streams::{Retention, StreamCommand, StreamError, StreamInfo, StreamRead, StreamResponse, Streams};
pub use types::{prefix_end, Event, EventKind, KeyRange, KeyValue, Revision};
