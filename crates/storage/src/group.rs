//! Group commit: many threads append, one fdatasync covers every append queued while the
//! previous sync ran.
//!
//! An appender writes its records under the lock (cheap: a `write` into the page cache) and then
//! waits until a sync covers them. If no sync is running it becomes the syncer: it notes how far
//! the log has been written, releases the lock, syncs a duplicate handle of the active segment, and
//! wakes everyone that sync covered. Appends arriving meanwhile pile up for the next sync.

use std::sync::{Condvar, Mutex, MutexGuard};

use balsa_raft::{Entry, EntryKind, Index, Term};
use bytes::Bytes;

use crate::error::{Result, StorageError};
use crate::vfs::{Vfs, VfsFile};
use crate::wal::Wal;

struct State<V: Vfs> {
    wal: Wal<V>,
    /// Appends written so far (a ticket counter).
    written: u64,
    /// Appends known durable.
    synced: u64,
    /// A thread is syncing outside the lock.
    syncing: bool,
    /// A sync failed: every waiter and every later call fails (fsyncgate).
    failed: bool,
    /// Syncs performed, for reporting how well appends were grouped.
    syncs: u64,
}

/// A log shared by concurrent appenders.
pub struct GroupCommitLog<V: Vfs> {
    state: Mutex<State<V>>,
    synced: Condvar,
}

impl<V: Vfs> GroupCommitLog<V>
where
    V::File: Send,
{
    /// Wraps an open log.
    pub fn new(wal: Wal<V>) -> Self {
        let state = State { wal, written: 0, synced: 0, syncing: false, failed: false, syncs: 0 };
        Self { state: Mutex::new(state), synced: Condvar::new() }
    }

    fn lock(&self) -> MutexGuard<'_, State<V>> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Appends commands as entries of `term` at the end of the log and returns once they are
    /// durable. Returns the index of the first.
    pub fn append_durable(&self, term: Term, commands: &[Bytes]) -> Result<Index> {
        let (first, ticket) = {
            let mut st = self.lock();
            if st.failed {
                return Err(StorageError::Poisoned);
            }
            let first = st.wal.last_index() + 1;
            let entries: Vec<Entry> = commands
                .iter()
                .enumerate()
                .map(|(k, data)| Entry {
                    term,
                    index: first + k as u64,
                    kind: EntryKind::Normal,
                    data: data.clone(),
                })
                .collect();
            st.wal.append(&entries)?;
            st.written += 1;
            (first, st.written)
        };
        self.wait_durable(ticket)?;
        Ok(first)
    }

    fn wait_durable(&self, ticket: u64) -> Result<()> {
        let mut st = self.lock();
        loop {
            if st.synced >= ticket {
                return Ok(());
            }
            if st.failed {
                return Err(StorageError::Poisoned);
            }
            if st.syncing {
                st = self.synced.wait(st).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            st.syncing = true;
            let target = st.written;
            let handle = st.wal.sync_handle();
            drop(st);
            let outcome = handle.and_then(|mut h| {
                h.sync_data().map_err(|source| StorageError::SyncFailed { path: "wal".into(), source })
            });
            st = self.lock();
            st.syncing = false;
            st.syncs += 1;
            match outcome {
                Ok(()) => st.synced = st.synced.max(target),
                Err(e) => {
                    st.failed = true;
                    st.wal.poison();
                    self.synced.notify_all();
                    return Err(e);
                }
            }
            self.synced.notify_all();
        }
    }

    /// (appends, syncs) so far: how many appends each sync covered on average.
    pub fn counters(&self) -> (u64, u64) {
        let st = self.lock();
        (st.written, st.syncs)
    }

    /// Gives the log back.
    pub fn into_inner(self) -> Wal<V> {
        self.state.into_inner().unwrap_or_else(|p| p.into_inner()).wal
    }
}
