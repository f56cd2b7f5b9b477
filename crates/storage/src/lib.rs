//! # balsa-storage: the disk under a Raft server
//!
//! A Raft server is only as safe as its disk. This crate keeps the three things Raft needs to
//! survive a crash — the log, the hard state (term, vote, commit) and snapshots — and recovers them
//! without ever dropping something it acknowledged.
//!
//! - [`wal`]: the write-ahead log, in append-only segment files of checksummed records; suffix
//!   truncation and prefix removal never rewrite data; the hard state lives in the log too, so one
//!   sync covers entries and vote together.
//! - [`snapshot`]: snapshot files, written atomically (temporary file, sync, rename, directory sync)
//!   and verified end to end.
//! - [`store`]: the [`LogStore`] contract a driver uses, with a disk implementation
//!   ([`DiskStore`]) and an in-memory one ([`MemStore`]).
//! - [`group`]: group commit for many concurrent appenders (one fdatasync covers every append
//!   queued while the previous one ran).
//! - [`vfs`]: the file-system calls, behind a trait, so the simulator runs this very code on a
//!   disk that loses unsynced writes and tears the last one.
//! - [`direct`]: the real file system's log files, written past the page cache (`O_DIRECT`)
//!   where the file system allows it.
//!
//! ```
//! use balsa_raft::{Entry, EntryKind, HardState, Membership, Config, InitialState, Raft};
//! use balsa_storage::{DiskStore, LogStore, StoreOptions};
//!
//! let dir = std::env::temp_dir().join(format!("balsa-doc-{}", std::process::id()));
//! let _ = std::fs::remove_dir_all(&dir);
//! let members = Membership::new([1]);
//! {
//!     let mut store = DiskStore::open(&dir, StoreOptions::default()).unwrap();
//!     let mut node = Raft::new(Config::new(1), store.initial_state(&members).unwrap()).unwrap();
//!     for _ in 0..30 {
//!         node.tick();
//!         while node.has_ready() {
//!             let mut ready = node.ready();
//!             store.write(&ready.persist).unwrap();
//!             if ready.persist.must_sync() {
//!                 store.sync().unwrap(); // durable: now gated messages may leave
//!             }
//!             let receipt = std::mem::take(&mut ready.persist).durable();
//!             let _ = ready.gated_messages.release(&receipt);
//!             node.advance(receipt);
//!         }
//!     }
//! }
//! // After a "crash", the term, the vote and the leader's no-op are still there.
//! let store = DiskStore::open(&dir, StoreOptions::default()).unwrap();
//! let state = store.initial_state(&members).unwrap();
//! assert_eq!(state.hard_state.voted_for, Some(1));
//! assert_eq!(state.entries.len(), 1);
//! // Dropping the store waits for its background work (the next segment's zero fill), so the
//! // folder can then be removed.
//! drop(store);
//! std::fs::remove_dir_all(&dir).unwrap();
//! ```

#![warn(missing_docs)]

pub mod codec;
pub mod direct;
pub mod error;
pub mod group;
pub mod record;
pub mod snapshot;
pub mod snapshot_stream;
pub mod store;
pub mod testing;
pub mod vfs;
pub mod wal;

pub use error::{Result, StorageError};
pub use store::{disk_usage, DiskStore, DiskUsage, LogStore, MemStore, SnapshotWriter, StoreOptions};
pub use vfs::{Background, StdFs, Vfs, VfsFile};
pub use wal::{TornTail, Wal, WalOptions};
