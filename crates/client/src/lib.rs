//! # balsa-client
//!
//! A Rust client for balsa over etcd's v3 gRPC API (the same calls etcd serves, though it is
//! tested against balsa only). It does
//! what a bare gRPC stub leaves to you: it keeps a list of endpoints, finds the leader, sends
//! writes there, retries what failed because a member was down or a leader was changing, and
//! resumes watches where they stopped.
//!
//! ## Connecting
//!
//! Give it every member you know; it asks each for its status and remembers which one leads.
//!
//! ```no_run
//! use balsa_client::{Client, ClientOptions};
//!
//! # async fn demo() -> balsa_client::Result<()> {
//! let client = Client::connect(&["127.0.0.1:2379", "127.0.0.1:22379", "127.0.0.1:32379"],
//!                              ClientOptions::default()).await?;
//! println!("leader at {:?}", client.leader_endpoint());
//! # Ok(()) }
//! ```
//!
//! ## Keys and values
//!
//! Every call takes an options value whose default is the common case; builder methods ask for
//! the rest.
//!
//! ```no_run
//! # use balsa_client::*;
//! # async fn demo(client: Client) -> Result<()> {
//! client.put("app/a", "1", PutOptions::new()).await?;
//! client.put("app/b", "2", PutOptions::new()).await?;
//!
//! let one = client.get("app/a", GetOptions::new()).await?;              // linearizable
//! let all = client.get("app/", GetOptions::new().prefix().sort(SortTarget::Key, SortOrder::Descend)).await?;
//! let stale_ok = client.get("app/a", GetOptions::new().serializable()).await?; // any member
//! let then = client.get("app/a", GetOptions::new().revision(one.revision - 1)).await?;
//! assert_eq!(all.count, 2);
//!
//! let gone = client.delete("app/", DeleteOptions::new().prefix().prev_kv()).await?;
//! assert_eq!(gone.deleted, 2);
//! # let _ = (stale_ok, then); Ok(()) }
//! ```
//!
//! ## Transactions
//!
//! A [`Txn`] is compares, then operations if they all hold, else others — atomically, at one
//! revision. Here, a compare-and-swap:
//!
//! ```no_run
//! # use balsa_client::*;
//! # async fn demo(client: Client) -> Result<()> {
//! let swapped = client
//!     .txn(Txn::new()
//!         .when([Compare::value("leader", CompareOp::Equal, "node-1")])
//!         .and_then([TxnOp::put("leader", "node-2", PutOptions::new())])
//!         .or_else([TxnOp::get("leader", GetOptions::new())]))
//!     .await?;
//! if !swapped.succeeded {
//!     println!("someone else got there first: {:?}", swapped.responses);
//! }
//! # Ok(()) }
//! ```
//!
//! ## Watches that resume
//!
//! A [`Watcher`] yields [`WatchEvent`]s. If the member serving it dies, it reconnects to another
//! and continues from the revision after the last one it received: no event is lost or
//! repeated. If the history it needs has been compacted, it fails with
//! [`Error::Compacted`] instead of silently skipping.
//!
//! ```no_run
//! # use balsa_client::*;
//! # async fn demo(client: Client) -> Result<()> {
//! let mut watcher = client.watch("app/", WatchOptions::new().prefix().prev_kv()).await?;
//! loop {
//!     let event = watcher.next().await?;
//!     println!("{:?} {} at {}", event.kind, String::from_utf8_lossy(&event.kv.key), event.revision());
//! }
//! # }
//! ```
//!
//! ## Leases
//!
//! A key put with a lease is deleted when the lease ends. [`KeepAlive`] renews a lease every
//! TTL/3 in the background; drop it and the lease runs out.
//!
//! ```no_run
//! # use balsa_client::*;
//! # async fn demo(client: Client) -> Result<()> {
//! let lease = client.lease_grant(10, 0).await?;
//! client.put("svc/me", "10.0.0.7:80", PutOptions::new().lease(lease.id)).await?;
//! let mut alive = client.lease_keep_alive(lease.id).await?;
//! tokio::select! {
//!     why = alive.lost() => eprintln!("registration lost: {why}"),
//!     _ = tokio::time::sleep(std::time::Duration::from_secs(60)) => {}
//! }
//! drop(alive); // the key disappears within 10 s
//! # Ok(()) }
//! ```
//!
//! ## Members and maintenance
//!
//! [`Client::member_list`], [`Client::member_add`], [`Client::member_remove`],
//! [`Client::member_promote`]; [`Client::cluster_status`] asks every endpoint for its term,
//! commit and applied index; [`Client::snapshot_save`] streams a snapshot to a file.
//!
//! ## Errors and retries
//!
//! Every failure is an [`Error`]. "Not leader", "unavailable", transport failures and time-outs
//! are retried — the leader forgotten, a jittered exponential pause, the leader found again —
//! until [`ClientOptions::retry_budget`] is spent; each attempt has
//! [`ClientOptions::request_timeout`]. Other errors return at once.
//!
//! ## Exactly-once writes: sessions (on by default)
//!
//! Retrying a write whose answer was lost (a time-out, a leader that died after receiving it)
//! could apply it twice. So by default [`Client::connect`] registers a session with the
//! cluster, and every write carries the session's id and a sequence number that stays the same
//! across its retries: the cluster applies it once and answers a retry from memory. The cluster
//! remembers one outstanding write per session, so the client keeps a pool of sessions and gives
//! each in-flight write its own ([`ClientOptions::max_sessions`]). A session that expired
//! ([`Error::SessionExpired`]) on a retry means the write's outcome is unknown; the client does
//! not resend it (see [`Session`]). `ClientOptions { sessions: false, .. }` gives etcd's
//! at-least-once behaviour.
//!
//! ## Log streams
//!
//! ```no_run
//! # use balsa_client::*;
//! # async fn demo(client: Client) -> Result<()> {
//! client.log_create("orders", Retention::default()).await?;
//! let appended = client.log_append("orders", ["o-1", "o-2"]).await?; // exactly once
//! let mut sub = client.log_subscribe("orders", appended.first_offset).await?;
//! let first = sub.next().await?; // resumes on another member if its stream breaks
//! assert_eq!(first.offset, appended.first_offset);
//! # Ok(()) }
//! ```
//!
//! ## Why not depend on balsa-server
//!
//! The generated types come from the server's own `.proto` files, compiled here into client
//! stubs only (`build.rs`), so this crate needs tokio, tonic and prost — not the server's
//! storage, Raft core, metrics and HTTP stack. There is still one copy of the API: the files
//! are read where balsa-server keeps them.

#![warn(missing_docs)]

mod client;
mod cluster;
mod error;
mod kv;
mod lease;
mod log;
mod session;
mod watch;

pub use client::{Client, ClientOptions};
pub use cluster::{Member, MemberStatus, Role, SnapshotSaved, StatusResponse};
pub use error::{Error, Result};
pub use kv::{
    prefix_end, Compare, CompareOp, DeleteOptions, DeleteResponse, GetOptions, GetResponse, KeyValue,
    PutOptions, PutResponse, SortOrder, SortTarget, Txn, TxnOp, TxnOpResponse, TxnResponse,
};
pub use lease::{KeepAlive, LeaseGrant, LeaseState, LeaseTtl};
pub use log::{Appended, ReadRecords, Record, Retention, StreamInfo, Subscription};
pub use session::{Session, SessionInterceptor, CLIENT_ID_HEADER, SEQ_HEADER};
pub use watch::{EventKind, WatchEvent, WatchOptions, Watcher};

/// etcd's `mvccpb` package (generated).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}

/// balsa's own `balsapb` package (sessions, log streams): generated client stubs and messages.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod balsapb {
    tonic::include_proto!("balsapb");
}

/// etcd's `etcdserverpb` package (generated client stubs and messages), for calls this crate
/// does not wrap.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("etcdserverpb");
}
