//! The log's write and sync of a busy round, on a thread of its own.
//!
//! A member's tasks share one thread: the driver, the client connections, the peer readers. A
//! write and fdatasync done by the driver itself holds that thread for a disk's round trip (0.2
//! ms idle, 0.6 ms and more under load on this machine), and every request and answer that
//! arrives meanwhile waits for it, then for the driver's next round, so under load a member's
//! gRPC work came after its disk's instead of beside it. A round with many entries hands its
//! batch, with the store, to a writer thread and awaits it: the client connections and peer
//! readers run meanwhile (the driver itself waits, holding the Ready, as the core's contract
//! asks). A round with few entries, one client's, writes on the driver's thread as before: two
//! more thread wake-ups would be most of what a lone put waits for beside its sync.
//!
//! Nothing is acknowledged early: the gated messages and `advance` still come after the batch is
//! durable, and a failed write or sync still stops the node.

use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use balsa_raft::PersistBatch;
use balsa_storage::vfs::{StdFs, Vfs};
use balsa_storage::{DiskStore, LogStore, StorageError};
use tokio::sync::oneshot;

use crate::metrics::Metrics;

/// A batch of at least this many entries is written on the writer thread; fewer, on the driver's.
/// One client's puts come one per round; 256 clients' come 20-60 per round.
pub const OFFLOAD_MIN_ENTRIES: usize = 4;

/// Writes the rounds' batches to the store: on its thread when a round is busy, else in place.
/// Generic over the store's file system for tests (a disk whose syncs fail).
pub struct LogWriter<V: Vfs + Clone = StdFs> {
    /// The store; `None` only while a batch is on the writer thread (the driver awaits it).
    store: Option<DiskStore<V>>,
    /// Where batches go to the writer thread; `None` if the thread could not start (every batch
    /// is then written in place).
    jobs: Option<mpsc::Sender<Job<V>>>,
    /// The writer thread, joined when the writer is dropped.
    thread: Option<JoinHandle<()>>,
    /// WAL fsync and roll timings.
    metrics: Arc<Metrics>,
}

/// A batch to write, with the store to write it to, and where to hand both back.
struct Job<V: Vfs + Clone> {
    store: DiskStore<V>,
    batch: PersistBatch,
    done: oneshot::Sender<Done<V>>,
}

/// A written batch, the store, and how the write went.
struct Done<V: Vfs + Clone> {
    store: DiskStore<V>,
    batch: PersistBatch,
    result: Result<(), StorageError>,
}

impl<V> LogWriter<V>
where
    V: Vfs + Clone + Send + 'static,
    V::File: Send,
{
    /// Takes over `store` and starts the writer thread.
    pub fn new(store: DiskStore<V>, metrics: Arc<Metrics>) -> Self {
        let (jobs, incoming) = mpsc::channel::<Job<V>>();
        let for_thread = metrics.clone();
        let spawned = std::thread::Builder::new().name("balsa-log-writer".into()).spawn(move || {
            while let Ok(Job { mut store, batch, done }) = incoming.recv() {
                let result = write_and_sync(&mut store, &batch, &for_thread);
                // The driver is gone if nobody takes the answer: the store closes with this thread.
                let _ = done.send(Done { store, batch, result });
            }
        });
        let (jobs, thread) = match spawned {
            Ok(thread) => (Some(jobs), Some(thread)),
            Err(e) => {
                tracing::warn!(error = %e, "no thread for the log's writes; the driver writes them");
                (None, None)
            }
        };
        Self { store: Some(store), jobs, thread, metrics }
    }

    /// The store, between rounds.
    pub fn store(&self) -> &DiskStore<V> {
        self.store.as_ref().expect("the store is back once a round's batch is written")
    }

    /// The store, between rounds.
    pub fn store_mut(&mut self) -> &mut DiskStore<V> {
        self.store.as_mut().expect("the store is back once a round's batch is written")
    }

    /// Whether `batch` goes to the writer thread: it has enough entries to be worth the hand-off,
    /// and no snapshot (installing one replaces the state machine, which the driver does
    /// right after; the rare large write is simplest done in place).
    pub fn offloads(&self, batch: &PersistBatch) -> bool {
        self.jobs.is_some() && batch.snapshot.is_none() && batch.entries.len() >= OFFLOAD_MIN_ENTRIES
    }

    /// Writes `batch` and makes it durable if it must be, then hands it back for
    /// [`PersistBatch::durable`]. A failure is the store's: the node must stop.
    pub async fn persist(&mut self, batch: PersistBatch) -> Result<PersistBatch, StorageError> {
        if !self.offloads(&batch) {
            return self.write_in_place(batch);
        }
        let store = self.store.take().expect("one batch at a time");
        let (done, answer) = oneshot::channel();
        let jobs = self.jobs.as_ref().expect("offloads() checked the thread");
        if let Err(mpsc::SendError(job)) = jobs.send(Job { store, batch, done }) {
            // The thread is gone (it would only be if it panicked): write in place from now on.
            tracing::error!("the log's writer thread ended; the driver writes the log");
            self.jobs = None;
            self.store = Some(job.store);
            return self.write_in_place(job.batch);
        }
        let Ok(Done { store, batch, result }) = answer.await else {
            tracing::error!("the log's writer thread ended during a write; the store is lost");
            return Err(StorageError::Poisoned);
        };
        self.store = Some(store);
        result.map(|()| batch)
    }
}

impl<V: Vfs + Clone> LogWriter<V> {
    /// Writes `batch` on the caller's thread.
    fn write_in_place(&mut self, batch: PersistBatch) -> Result<PersistBatch, StorageError> {
        let store = self.store.as_mut().expect("the store is back once a round's batch is written");
        write_and_sync(store, &batch, &self.metrics)?;
        Ok(batch)
    }
}

impl<V: Vfs + Clone> Drop for LogWriter<V> {
    fn drop(&mut self) {
        // Closing the channel ends the thread's loop.
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Writes `batch` to `store` and syncs it if it must be, timing the sync and any segment roll.
fn write_and_sync<V: Vfs + Clone>(
    store: &mut DiskStore<V>,
    batch: &PersistBatch,
    metrics: &Metrics,
) -> Result<(), StorageError> {
    let (rolls, start) = (store.wal().rolls(), Instant::now());
    if !batch.is_empty() {
        store.write(batch)?;
    }
    if store.wal().rolls() != rolls {
        metrics.wal_roll_time(start.elapsed());
    }
    if batch.must_sync() {
        metrics.time_fsync(|| store.sync())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};
    use std::sync::atomic::Ordering;

    use balsa_raft::{Config, Membership, Raft, Role};
    use balsa_storage::testing::FaultyFs;
    use balsa_storage::StoreOptions;
    use bytes::Bytes;

    use super::*;

    /// A fresh directory, removed when dropped.
    struct Dir(PathBuf);

    impl Dir {
        fn new(name: &str) -> Self {
            let path = std::env::temp_dir().join(format!("balsa-log-writer-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&path);
            Self(path)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A one-voter core over a store in `dir`, elected, every Ready carried out through `writer`.
    async fn leader(dir: &Path, fs: &FaultyFs) -> (Raft, LogWriter<FaultyFs>) {
        let store = DiskStore::open_with(fs.clone(), dir, StoreOptions::default()).unwrap();
        let initial = store.initial_state(&Membership::new([1])).unwrap();
        let mut raft = Raft::new(Config::new(1), initial).unwrap();
        let mut writer = LogWriter::new(store, Arc::new(Metrics::new()));
        for _ in 0..1000 {
            if raft.role() == Role::Leader {
                break;
            }
            raft.tick();
            carry_out(&mut raft, &mut writer).await.unwrap();
        }
        assert_eq!(raft.role(), Role::Leader, "a lone voter elects itself");
        carry_out(&mut raft, &mut writer).await.unwrap();
        (raft, writer)
    }

    /// Carries out every Ready, persisting through `writer`.
    async fn carry_out(raft: &mut Raft, writer: &mut LogWriter<FaultyFs>) -> Result<(), StorageError> {
        while raft.has_ready() {
            let mut ready = raft.ready();
            let batch = writer.persist(std::mem::take(&mut ready.persist)).await?;
            let receipt = batch.durable();
            let _ = ready.gated_messages.release(&receipt);
            raft.advance(receipt);
        }
        Ok(())
    }

    fn propose(raft: &mut Raft, count: usize) -> Vec<Bytes> {
        let data: Vec<Bytes> = (0..count).map(|i| Bytes::from(format!("entry {i}"))).collect();
        for d in &data {
            raft.propose(d.clone()).unwrap();
        }
        data
    }

    fn last_sync_thread(fs: &FaultyFs) -> String {
        fs.sync_threads.lock().unwrap().last().cloned().expect("a sync ran")
    }

    /// A round of many entries is written and synced on the writer thread, and is on disk when
    /// `persist` returns: a store reopened from the directory holds every entry.
    #[tokio::test(flavor = "current_thread")]
    async fn a_busy_rounds_batch_is_synced_on_the_writer_thread_and_is_durable() {
        let dir = Dir::new("busy");
        let fs = FaultyFs::healthy();
        let (mut raft, mut writer) = leader(&dir.0, &fs).await;
        let data = propose(&mut raft, 2 * OFFLOAD_MIN_ENTRIES);
        let mut ready = raft.ready();
        let batch = std::mem::take(&mut ready.persist);
        assert_eq!(batch.entries.len(), data.len(), "one round holds every proposal");
        assert!(writer.offloads(&batch));
        let batch = writer.persist(batch).await.unwrap();
        assert_eq!(last_sync_thread(&fs), "balsa-log-writer");
        raft.advance(batch.durable());
        drop(writer);
        let store = DiskStore::open(&dir.0, StoreOptions::default()).unwrap();
        let stored: Vec<Bytes> = store
            .initial_state(&Membership::new([1]))
            .unwrap()
            .entries
            .into_iter()
            .map(|e| e.data)
            .filter(|d| !d.is_empty())
            .collect();
        assert_eq!(stored, data);
    }

    /// One client's round (a single entry) is written in place: no thread hand-off on the path of
    /// a lone put.
    #[tokio::test(flavor = "current_thread")]
    async fn a_round_of_few_entries_is_synced_in_place() {
        let dir = Dir::new("few");
        let fs = FaultyFs::healthy();
        let (mut raft, mut writer) = leader(&dir.0, &fs).await;
        propose(&mut raft, OFFLOAD_MIN_ENTRIES - 1);
        carry_out(&mut raft, &mut writer).await.unwrap();
        assert_ne!(last_sync_thread(&fs), "balsa-log-writer");
        assert_eq!(last_sync_thread(&fs), std::thread::current().name().unwrap_or("unnamed"));
    }

    /// A sync that fails on the writer thread is the store's failure (the node stops on it), the
    /// store is back with the driver, and nothing later is taken as durable.
    #[tokio::test(flavor = "current_thread")]
    async fn a_failed_sync_on_the_writer_thread_fails_the_round_and_every_later_one() {
        let dir = Dir::new("failed");
        let fs = FaultyFs::healthy();
        let (mut raft, mut writer) = leader(&dir.0, &fs).await;
        fs.fail_sync.store(true, Ordering::SeqCst);
        propose(&mut raft, 2 * OFFLOAD_MIN_ENTRIES);
        let mut ready = raft.ready();
        let failed = writer.persist(std::mem::take(&mut ready.persist)).await;
        assert!(matches!(failed, Err(StorageError::SyncFailed { .. })), "{failed:?}");
        assert_eq!(last_sync_thread(&fs), "balsa-log-writer");
        fs.fail_sync.store(false, Ordering::SeqCst);
        let after = writer.store_mut().sync();
        assert!(matches!(after, Err(StorageError::Poisoned)), "the store stays failed: {after:?}");
    }
}
