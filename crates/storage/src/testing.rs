//! A file system for tests of what the store's users do when the disk misbehaves: the real one,
//! with faults on demand.

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::vfs::{StdFile, StdFs, Vfs, VfsFile};

/// The real file system that runs out of space after a byte budget, or fails syncs or removals
/// on demand; it also records the most bytes any file held written but not yet synced, and the
/// name of the thread each sync ran on. Clones share their switches and records.
#[derive(Clone)]
pub struct FaultyFs {
    /// Bytes writes may still add before they fail with ENOSPC (a write that crosses the budget
    /// lands in part, as on a real full disk).
    pub budget: Arc<AtomicI64>,
    /// Syncs fail with EIO while set.
    pub fail_sync: Arc<AtomicBool>,
    /// Removals fail with EIO while set.
    pub fail_remove: Arc<AtomicBool>,
    /// The most bytes one file held written and not yet synced.
    pub most_unsynced: Arc<AtomicU64>,
    /// The thread each sync ran on, in order ("unnamed" for a thread without a name).
    pub sync_threads: Arc<Mutex<Vec<String>>>,
}

impl FaultyFs {
    /// A file system whose writes fail once `budget` more bytes are written.
    pub fn with_budget(budget: i64) -> Self {
        Self {
            budget: Arc::new(AtomicI64::new(budget)),
            fail_sync: Arc::default(),
            fail_remove: Arc::default(),
            most_unsynced: Arc::default(),
            sync_threads: Arc::default(),
        }
    }

    /// A file system without faults until one is switched on.
    pub fn healthy() -> Self {
        Self::with_budget(i64::MAX)
    }

    /// The thread the last sync ran on.
    pub fn last_sync_thread(&self) -> Option<String> {
        self.sync_threads.lock().unwrap_or_else(|p| p.into_inner()).last().cloned()
    }
}

/// A file of [`FaultyFs`].
pub struct FaultyFile {
    inner: StdFile,
    fs: FaultyFs,
    unsynced: u64,
}

impl VfsFile for FaultyFile {
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()> {
        let left = self.fs.budget.fetch_sub(buf.len() as i64, Ordering::SeqCst);
        if left < buf.len() as i64 {
            // Like a real full disk: part of the write may land.
            let part = left.max(0) as usize;
            self.inner.write_at(offset, &buf[..part])?;
            return Err(io::Error::from_raw_os_error(28));
        }
        self.unsynced += buf.len() as u64;
        self.fs.most_unsynced.fetch_max(self.unsynced, Ordering::SeqCst);
        self.inner.write_at(offset, buf)
    }

    fn sync_data(&mut self) -> io::Result<()> {
        let thread = std::thread::current().name().unwrap_or("unnamed").to_string();
        self.fs.sync_threads.lock().unwrap_or_else(|p| p.into_inner()).push(thread);
        if self.fs.fail_sync.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(5));
        }
        self.unsynced = 0;
        self.inner.sync_data()
    }
}

impl Vfs for FaultyFs {
    type File = FaultyFile;
    fn create_dir_all(&self, d: &Path) -> io::Result<()> {
        StdFs.create_dir_all(d)
    }
    fn list(&self, d: &Path) -> io::Result<Vec<String>> {
        StdFs.list(d)
    }
    fn create(&self, p: &Path) -> io::Result<FaultyFile> {
        Ok(FaultyFile { inner: StdFs.create(p)?, fs: self.clone(), unsynced: 0 })
    }
    fn open_write(&self, p: &Path) -> io::Result<FaultyFile> {
        Ok(FaultyFile { inner: StdFs.open_write(p)?, fs: self.clone(), unsynced: 0 })
    }
    fn read(&self, p: &Path) -> io::Result<Vec<u8>> {
        StdFs.read(p)
    }
    fn read_at(&self, p: &Path, o: u64, l: usize) -> io::Result<Vec<u8>> {
        StdFs.read_at(p, o, l)
    }
    fn truncate(&self, p: &Path, l: u64) -> io::Result<()> {
        StdFs.truncate(p, l)
    }
    fn rename(&self, a: &Path, b: &Path) -> io::Result<()> {
        StdFs.rename(a, b)
    }
    fn remove(&self, p: &Path) -> io::Result<()> {
        if self.fail_remove.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(5));
        }
        StdFs.remove(p)
    }
    fn sync_dir(&self, d: &Path) -> io::Result<()> {
        StdFs.sync_dir(d)
    }
}
