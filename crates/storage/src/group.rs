//! Group commit: many threads append, one fdatasync covers every append queued while the
//! previous one ran.
//!
//! Appenders never touch the file. Each takes the next indexes under a lock, queues its entries
//! in memory and waits. A flusher thread owns the log: whenever entries are queued it takes all
//! of them, writes them with one `write` and makes them durable with one fdatasync, then wakes
//! the appenders that covered. Entries queued during a sync go out in the next one, which starts
//! at once, so the disk stays busy and appenders only ever copy memory.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use balsa_raft::{Entry, EntryKind, Index, Term};
use bytes::Bytes;

use crate::error::{Result, StorageError};
use crate::vfs::Vfs;
use crate::wal::Wal;

/// Longest the flusher holds a flush for appenders it just woke.
const MAX_HOLD: Duration = Duration::from_micros(200);

#[derive(Default)]
struct State {
    /// Entries waiting for the flusher, in index order.
    queue: Vec<Entry>,
    /// Index the next appended entry gets.
    next_index: Index,
    /// Appends queued so far (a ticket counter).
    written: u64,
    /// Appends known durable.
    synced: u64,
    /// Writing or syncing failed: every waiter and every later call fails (fsyncgate).
    failed: bool,
    /// Closing: the flusher exits once everything queued is durable.
    shutdown: bool,
    /// Syncs performed, for reporting how well appends were grouped.
    syncs: u64,
    /// Number of the flush that will take what is queued now. Appenders wait on the condition
    /// variable of their flush's parity, so a finished sync wakes only those it covered.
    generation: u64,
    /// Appends the last sync covered, and appends queued since it finished: the flusher holds
    /// the next flush briefly until the appenders it just woke have queued again.
    last_covered: u64,
    queued_since_sync: u64,
}

struct Shared {
    state: Mutex<State>,
    /// Signals the flusher: entries queued, or shutdown.
    work: Condvar,
    /// Signals appenders: a sync finished; indexed by the flush generation's parity.
    done: [Condvar; 2],
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A log shared by concurrent appenders.
pub struct GroupCommitLog<V: Vfs + Send + 'static>
where
    V::File: Send,
{
    shared: Arc<Shared>,
    /// The flusher hands the log back when it exits.
    flusher: Option<JoinHandle<Wal<V>>>,
}

impl<V: Vfs + Send + 'static> GroupCommitLog<V>
where
    V::File: Send,
{
    /// Takes over an open log and starts its flusher thread.
    pub fn new(wal: Wal<V>) -> Self {
        let state = State { next_index: wal.last_index() + 1, ..State::default() };
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            work: Condvar::new(),
            done: [Condvar::new(), Condvar::new()],
        });
        let for_flusher = shared.clone();
        let flusher = std::thread::Builder::new()
            .name("balsa-wal-flusher".into())
            .spawn(move || flush_loop(&for_flusher, wal))
            .expect("spawn the WAL flusher thread");
        Self { shared, flusher: Some(flusher) }
    }

    /// Appends commands as entries of `term` at the end of the log and returns once they are
    /// durable. Returns the index of the first.
    pub fn append_durable(&self, term: Term, commands: &[Bytes]) -> Result<Index> {
        let mut st = self.shared.lock();
        if st.failed || st.shutdown {
            return Err(StorageError::Poisoned);
        }
        let first = st.next_index;
        for (k, data) in commands.iter().enumerate() {
            let entry = Entry { term, index: first + k as u64, kind: EntryKind::Normal, data: data.clone() };
            st.queue.push(entry);
        }
        st.next_index += commands.len() as u64;
        st.written += 1;
        st.queued_since_sync += 1;
        let ticket = st.written;
        let done = &self.shared.done[(st.generation % 2) as usize];
        self.shared.work.notify_one();
        while st.synced < ticket {
            if st.failed {
                return Err(StorageError::Poisoned);
            }
            st = done.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        Ok(first)
    }

    /// (appends, syncs) so far: how many appends each sync covered on average.
    pub fn counters(&self) -> (u64, u64) {
        let st = self.shared.lock();
        (st.written, st.syncs)
    }

    fn stop(&mut self) -> Option<Wal<V>> {
        self.shared.lock().shutdown = true;
        self.shared.work.notify_all();
        self.flusher.take().and_then(|h| h.join().ok())
    }

    /// Stops the flusher once everything queued is durable and gives the log back.
    pub fn into_inner(mut self) -> Wal<V> {
        self.stop().expect("the flusher thread returns the log")
    }
}

impl<V: Vfs + Send + 'static> Drop for GroupCommitLog<V>
where
    V::File: Send,
{
    fn drop(&mut self) {
        self.stop();
    }
}

fn flush_loop<V: Vfs>(shared: &Shared, mut wal: Wal<V>) -> Wal<V> {
    let mut st = shared.lock();
    loop {
        while st.queue.is_empty() && !st.shutdown {
            st = shared.work.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        if st.queue.is_empty() {
            return wal;
        }
        // Appenders woken by the last sync are about to queue again; give them a moment to
        // join this flush rather than the next one (bounded, and free for a lone appender).
        let hold_until = Instant::now() + MAX_HOLD;
        while st.queued_since_sync < st.last_covered && !st.shutdown {
            let Some(left) = hold_until.checked_duration_since(Instant::now()) else { break };
            st = shared.work.wait_timeout(st, left).unwrap_or_else(|p| p.into_inner()).0;
        }
        let batch = std::mem::take(&mut st.queue);
        let covered = st.written - st.synced;
        let target = st.written;
        let done = &shared.done[(st.generation % 2) as usize];
        st.generation += 1;
        drop(st);
        let outcome = wal.append(&batch).and_then(|()| wal.sync());
        st = shared.lock();
        st.syncs += 1;
        match outcome {
            Ok(()) => {
                st.synced = target;
                st.last_covered = covered;
                st.queued_since_sync = 0;
            }
            Err(_) => {
                st.failed = true;
                shared.done.iter().for_each(Condvar::notify_all);
                return wal;
            }
        }
        done.notify_all();
    }
}
