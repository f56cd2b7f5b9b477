//! One contract, several stores: what a Raft driver needs from durable storage.

use std::path::Path;

use balsa_raft::{Entry, HardState, InitialState, Membership, PersistBatch, Snapshot};

use crate::error::{Result, StorageError};
use crate::snapshot::SnapshotStore;
use crate::snapshot_stream::SnapshotStream;
use crate::vfs::{Background, StdFs, Vfs};
use crate::wal::{TornTail, Wal, WalOptions};

/// The persistence contract of `shared/DESIGN.md`, as a trait.
///
/// A driver calls [`LogStore::write`] with each Ready's batch, then [`LogStore::sync`], and only
/// then releases the Ready's gated messages. Entries in a batch replace every stored entry at or
/// after the first one's index.
pub trait LogStore {
    /// Writes a batch: snapshot (made durable at once), hard state, entries. Hard state and
    /// entries are durable only after [`LogStore::sync`].
    fn write(&mut self, batch: &PersistBatch) -> Result<()>;
    /// Makes every write so far durable.
    fn sync(&mut self) -> Result<()>;
    /// Durably stores a snapshot the state machine took, and drops the log prefix it covers.
    fn save_snapshot(&mut self, snapshot: &Snapshot) -> Result<()>;
    /// What a restarting server recovers. `membership` is used if no snapshot records one.
    fn initial_state(&self, membership: &Membership) -> Result<InitialState>;
}

/// Options of the disk store.
#[derive(Clone, Copy, Debug)]
pub struct StoreOptions {
    /// Log segment size.
    pub wal: WalOptions,
    /// Snapshots kept.
    pub keep_snapshots: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self { wal: WalOptions::default(), keep_snapshots: 2 }
    }
}

/// The real store: a WAL in `DIR/wal` and snapshots in `DIR/snap`.
pub struct DiskStore<V: Vfs + Clone = StdFs> {
    wal: Wal<V>,
    snapshots: SnapshotStore<V>,
    snapshot: Option<Snapshot>,
    /// Snapshot files past retention being removed after an install (see [`Vfs::remove_all`]);
    /// collected at the next install, so a failure still stops the store, one install late.
    snapshot_removal: Option<Background>,
}

/// What a store's files take on disk, for etcd's `Status` (`dbSize`, `dbSizeInUse`). Read
/// from the directory by whoever asks, without the store: the node's driver never waits for it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiskUsage {
    /// Every file of the store: log segments (preallocated), the spare segment, snapshots.
    pub total_bytes: u64,
    /// What recovery reads: the log segments and the newest snapshot (not the spare segment,
    /// nor the older snapshot kept as a fallback, nor a temporary file).
    pub in_use_bytes: u64,
}

/// Sizes the files of the store in `dir`.
pub fn disk_usage(dir: &Path) -> std::io::Result<DiskUsage> {
    let mut usage = DiskUsage::default();
    let files = |sub: &str| -> std::io::Result<Vec<(String, u64)>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir.join(sub))? {
            let entry = entry?;
            let meta = entry.metadata()?;
            if meta.is_file() {
                out.push((entry.file_name().to_string_lossy().into_owned(), meta.len()));
            }
        }
        Ok(out)
    };
    for (name, len) in files("wal")? {
        usage.total_bytes += len;
        if name.ends_with(".wal") {
            usage.in_use_bytes += len;
        }
    }
    let snaps = files("snap")?;
    let newest = snaps.iter().filter(|(name, _)| name.ends_with(".snap")).max_by(|a, b| a.0.cmp(&b.0));
    usage.in_use_bytes += newest.map_or(0, |(_, len)| *len);
    usage.total_bytes += snaps.iter().map(|(_, len)| len).sum::<u64>();
    Ok(usage)
}

impl DiskStore<StdFs> {
    /// Opens (recovering) or creates a store on the real file system.
    pub fn open(dir: &Path, options: StoreOptions) -> Result<Self> {
        Self::open_with(StdFs, dir, options)
    }
}

impl<V: Vfs + Clone> DiskStore<V> {
    /// Opens a store over any file system.
    pub fn open_with(vfs: V, dir: &Path, options: StoreOptions) -> Result<Self> {
        let snapshots = SnapshotStore::open(vfs.clone(), &dir.join("snap"), options.keep_snapshots)?;
        let snapshot = snapshots.latest()?;
        let floor = snapshot.as_ref().map_or(0, |s| s.meta.last_included_index);
        let mut wal = Wal::open(vfs, &dir.join("wal"), options.wal, floor)?;
        if let Some(s) = &snapshot {
            // A crash between saving a received snapshot and resetting the log can leave entries
            // that contradict the snapshot; they were never committed (the snapshot's entry is),
            // so they go.
            let t = wal.term(s.meta.last_included_index);
            if t.is_some_and(|t| t != s.meta.last_included_term) {
                wal.reset(s.meta.last_included_index)?;
            }
        }
        Ok(Self { wal, snapshots, snapshot, snapshot_removal: None })
    }

    /// The log, for inspection.
    pub fn wal(&self) -> &Wal<V> {
        &self.wal
    }

    /// A torn tail cut during recovery.
    pub fn torn_tail(&self) -> Option<&TornTail> {
        self.wal.torn_tail()
    }

    /// Entries `lo..=hi`.
    pub fn entries(&self, lo: u64, hi: u64) -> Result<Vec<Entry>> {
        self.wal.entries(lo, hi)
    }

    /// The latest snapshot. Its data is a handle on the file (on the real file system; in the
    /// simulator's, the bytes), so that a driver can give it to the core after installing a
    /// snapshot, in place of the copy in memory.
    pub fn snapshot(&self) -> Option<&Snapshot> {
        self.snapshot.as_ref()
    }

    /// The latest hard state.
    pub fn hard_state(&self) -> HardState {
        self.wal.hard_state()
    }

    /// A handle that writes snapshot files, for a driver that saves snapshots on another thread:
    /// [`SnapshotWriter::write`] there, then [`DiskStore::install_snapshot`] here. Together they
    /// are [`LogStore::save_snapshot`].
    pub fn snapshot_writer(&self) -> SnapshotWriter<V> {
        SnapshotWriter { snapshots: self.snapshots.clone() }
    }

    /// Makes a snapshot that [`SnapshotWriter::write`] has written durably the latest, and drops
    /// the log prefix it covers (and snapshot files beyond the newest `keep`). Returns `false`,
    /// changing nothing, if the store already holds a snapshot at or after its index (one from
    /// the leader may have been installed while this one was written).
    ///
    /// The log is compacted only here, never before the snapshot file is durable: that is what
    /// makes removing the entries safe.
    pub fn install_snapshot(&mut self, snapshot: &Snapshot) -> Result<bool> {
        let index = snapshot.meta.last_included_index;
        if self.snapshot.as_ref().is_some_and(|s| s.meta.last_included_index >= index) {
            return Ok(false);
        }
        let term = snapshot.meta.last_included_term;
        if !self.snapshots.list()?.iter().any(|(i, t, _)| (*i, *t) == (index, term)) {
            return Err(StorageError::Invalid(format!(
                "snapshot at {index} (term {term}) installed before it was written"
            )));
        }
        self.collect_snapshot_removal()?;
        self.snapshot_removal = self.snapshots.retain_in_background()?;
        self.wal.compact(index)?;
        let data = self.snapshots.stored_data(snapshot)?;
        self.snapshot = Some(Snapshot { meta: snapshot.meta.clone(), data });
        Ok(true)
    }
}

/// Writes snapshot files and nothing else (no log compaction, no removal of old files), so it
/// can run on a thread of its own while the store's owner goes on. See
/// [`DiskStore::snapshot_writer`].
#[derive(Clone)]
pub struct SnapshotWriter<V: Vfs + Clone> {
    snapshots: SnapshotStore<V>,
}

impl<V: Vfs + Clone> SnapshotWriter<V> {
    /// Writes `snapshot` durably: temporary file, sync, rename, directory sync. A crash at any
    /// point leaves the previous snapshot intact (a temporary file left behind is removed when
    /// the store is opened).
    pub fn write(&self, snapshot: &Snapshot) -> Result<()> {
        self.snapshots.write(snapshot).map(|_| ())
    }

    /// Starts writing the file of a snapshot with `meta` as its data is produced (the same file
    /// [`SnapshotWriter::write`] makes, without the data held whole; see [`SnapshotStream`]).
    pub fn stream(&self, meta: balsa_raft::SnapshotMeta) -> Result<SnapshotStream<V>> {
        self.snapshots.stream(meta)
    }
}

impl<V: Vfs + Clone> DiskStore<V> {
    /// Waits for the removal of old snapshot files started by the last install, if any, and
    /// returns its failure: before anything else lists or removes snapshot files.
    fn collect_snapshot_removal(&mut self) -> Result<()> {
        Background::collect(&mut self.snapshot_removal)
            .map_err(|e| StorageError::io("remove snapshots in", self.snapshots.dir(), e))
    }
}

impl<V: Vfs + Clone> LogStore for DiskStore<V> {
    fn write(&mut self, batch: &PersistBatch) -> Result<()> {
        if let Some(s) = &batch.snapshot {
            self.collect_snapshot_removal()?;
            self.snapshots.save(s)?;
            self.wal.reset(s.meta.last_included_index)?;
            let data = self.snapshots.stored_data(s)?;
            self.snapshot = Some(Snapshot { meta: s.meta.clone(), data });
        }
        // Hard state before entries: a write torn by a crash may then lose entries (never
        // acknowledged), but never leave entries of a term the hard state has not reached.
        if let Some(hs) = batch.hard_state {
            self.wal.set_hard_state(hs)?;
        }
        self.wal.append(&batch.entries)?;
        Ok(())
    }

    fn sync(&mut self) -> Result<()> {
        self.wal.sync()
    }

    fn save_snapshot(&mut self, snapshot: &Snapshot) -> Result<()> {
        self.snapshot_writer().write(snapshot)?;
        self.install_snapshot(snapshot)?;
        Ok(())
    }

    fn initial_state(&self, membership: &Membership) -> Result<InitialState> {
        let floor = self.snapshot.as_ref().map_or(0, |s| s.meta.last_included_index);
        let lo = self.wal.first_index().max(floor + 1);
        let entries = self.wal.entries(lo, self.wal.last_index())?;
        let mut hard_state = self.wal.hard_state();
        // The hard state is written before the entries of its batch, so a torn write can leave a
        // commit index past the surviving entries. Commit is a hint (the leader repeats it), so
        // it is clamped rather than trusted.
        hard_state.commit_index = hard_state.commit_index.min(self.wal.last_index());
        Ok(InitialState {
            hard_state,
            snapshot: self.snapshot.clone(),
            entries,
            applied_index: floor,
            membership: membership.clone(),
        })
    }
}

/// The in-memory store: the same contract, nothing durable across process restarts. For tests,
/// and as the reference model the disk store is checked against.
#[derive(Clone, Debug, Default)]
pub struct MemStore {
    /// Term, vote, commit.
    pub hard_state: HardState,
    /// The latest snapshot.
    pub snapshot: Option<Snapshot>,
    /// Entries after the snapshot.
    pub entries: Vec<Entry>,
}

impl LogStore for MemStore {
    fn write(&mut self, batch: &PersistBatch) -> Result<()> {
        if let Some(s) = &batch.snapshot {
            self.snapshot = Some(s.clone());
            self.entries.clear();
        }
        if let Some(first) = batch.entries.first() {
            let floor = self.snapshot.as_ref().map_or(0, |s| s.meta.last_included_index);
            let last = self.entries.last().map_or(floor, |e| e.index);
            if first.index > last + 1 || first.index <= floor {
                return Err(StorageError::Invalid(format!("append at {} after {last}", first.index)));
            }
            self.entries.retain(|e| e.index < first.index);
            self.entries.extend(batch.entries.iter().cloned());
        }
        if let Some(hs) = batch.hard_state {
            self.hard_state = hs;
        }
        Ok(())
    }

    fn sync(&mut self) -> Result<()> {
        Ok(())
    }

    fn save_snapshot(&mut self, snapshot: &Snapshot) -> Result<()> {
        let index = snapshot.meta.last_included_index;
        self.entries.retain(|e| e.index > index);
        self.snapshot = Some(snapshot.clone());
        Ok(())
    }

    fn initial_state(&self, membership: &Membership) -> Result<InitialState> {
        let floor = self.snapshot.as_ref().map_or(0, |s| s.meta.last_included_index);
        Ok(InitialState {
            hard_state: self.hard_state,
            snapshot: self.snapshot.clone(),
            entries: self.entries.iter().filter(|e| e.index > floor).cloned().collect(),
            applied_index: floor,
            membership: membership.clone(),
        })
    }
}
