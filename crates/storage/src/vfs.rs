//! The few file-system calls the store makes, behind a trait, so the simulator can run the real
//! log and recovery code over a simulated disk that loses unsynced writes and tears the last one.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::direct::DirectLog;

/// An open file the store writes to.
pub trait VfsFile {
    /// Writes `buf` at `offset`, extending the file if needed (not yet durable). A file opened
    /// with [`Vfs::open_log`] may hold the bytes in memory until [`VfsFile::sync_data`].
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()>;
    /// Makes every append so far durable (fdatasync).
    fn sync_data(&mut self) -> io::Result<()>;
}

/// A file system.
pub trait Vfs {
    /// The file handle type.
    type File: VfsFile;
    /// Creates a directory and its parents.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// File names in `dir`, sorted.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Creates (or truncates) a file for writing. The caller syncs the directory.
    fn create(&self, path: &Path) -> io::Result<Self::File>;
    /// Opens an existing file for writing.
    fn open_write(&self, path: &Path) -> io::Result<Self::File>;
    /// Opens an existing file for a log's appends: writes go on from where the last one ended,
    /// each is synced before anything depends on it, and nothing follows the last append but
    /// zeros or the end of the file. The real file system writes such a file past the page cache
    /// where it can ([`crate::direct`]); by default it is [`Vfs::open_write`].
    fn open_log(&self, path: &Path) -> io::Result<Self::File> {
        self.open_write(path)
    }
    /// The whole content of a file.
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// `len` bytes at `offset`.
    fn read_at(&self, path: &Path, offset: u64, len: usize) -> io::Result<Vec<u8>>;
    /// An open, read-only OS file handle on `path` that may move to other threads and keeps
    /// reading the file even after it is removed — if this file system has one. The real one
    /// does; the simulator's does not (it returns `None`), so there snapshots stay in memory.
    fn open_shared(&self, path: &Path) -> io::Result<Option<File>> {
        let _ = path;
        Ok(None)
    }
    /// Cuts a file to `len` bytes and syncs it.
    fn truncate(&self, path: &Path, len: u64) -> io::Result<()>;
    /// Renames a file. The caller syncs the directory.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes a file. The caller syncs the directory.
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Makes the directory's entries (creations, renames, removals) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Creates (or truncates) `path` and fills it with `len` zero bytes, synced (the directory
    /// is not). The caller collects the outcome later with [`Background::wait`], so a file system
    /// may do the work in the background: the real one runs it on a thread of its own. This
    /// default does it at once, which keeps the simulator's disk deterministic.
    fn zero_fill(&self, path: &Path, len: u64) -> Background
    where
        Self: Sized,
    {
        Background::done(zero_fill_now(self, path, len))
    }
    /// Removes `paths`, then syncs `dir`: the clean-up of files nothing reads any more and whose
    /// survival through a crash recovery tolerates (log segments and snapshots older than a
    /// durable snapshot). As with [`Vfs::zero_fill`], the caller collects the outcome later; the
    /// real file system works on a thread of its own (a removal and its directory sync took
    /// 13–43 ms of a member's driver at 1M keys), this default at once.
    fn remove_all(&self, paths: Vec<PathBuf>, dir: &Path) -> Background
    where
        Self: Sized,
    {
        Background::done(remove_all_now(self, &paths, dir))
    }
}

/// Removes `paths` and syncs `dir`, on the calling thread. A file already gone is what was
/// wanted, not an error.
pub fn remove_all_now<V: Vfs>(vfs: &V, paths: &[PathBuf], dir: &Path) -> io::Result<()> {
    for path in paths {
        match vfs.remove(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    vfs.sync_dir(dir)
}

/// How long the real file system's zero-fills wait before they begin: 0 but in tests that need
/// a disk slow to prepare a log segment (the wait is for everything that waits on the fill).
static ZERO_FILL_DELAY_MS: AtomicU64 = AtomicU64::new(0);

/// For tests: makes every later zero-fill of the real file system begin `delay` late, for the
/// whole process (so a test that sets it has a test binary of its own).
pub fn set_zero_fill_delay(delay: Duration) {
    ZERO_FILL_DELAY_MS.store(delay.as_millis().try_into().unwrap_or(u64::MAX), Ordering::Relaxed);
}

/// How much a background writer (a segment's zero-fill, a snapshot file) leaves unsynced at
/// most. A disk's cache flush waits for every write before it, so the WAL's next fdatasync waits
/// for all the data a background writer has pending: a 64 MiB segment or a 70 MB snapshot synced
/// at the end held every member's fsyncs for 100–130 ms at once on this machine's shared disk.
/// Syncing every few MiB bounds that wait to a few ms.
pub const BACKGROUND_SYNC_BYTES: u64 = 4 << 20;

/// Creates `path` holding `len` zero bytes and syncs it, on the calling thread, a
/// [`BACKGROUND_SYNC_BYTES`] at a time.
///
/// The zeros are written as the log's appends are ([`Vfs::open_log`]: past the page cache where
/// the file system allows). Nothing reads them back before the log overwrites them, and through
/// the page cache each 64 MiB segment took 16,384 fresh pages of it: on this machine's VM a page
/// never used before (or handed back to the host since) costs several µs to touch, and copying
/// the zeros in took 15% of the members' CPU samples in a profile that caught a segment's fill.
pub fn zero_fill_now<V: Vfs>(vfs: &V, path: &Path, len: u64) -> io::Result<()> {
    const CHUNK: usize = 1 << 20;
    drop(vfs.create(path)?);
    let mut file = vfs.open_log(path)?;
    let zeros = vec![0u8; CHUNK];
    let mut at = 0;
    let mut unsynced = 0;
    while at < len {
        let n = ((len - at) as usize).min(CHUNK);
        file.write_at(at, &zeros[..n])?;
        at += n as u64;
        unsynced += n as u64;
        if unsynced >= BACKGROUND_SYNC_BYTES && at < len {
            file.sync_data()?;
            unsynced = 0;
        }
    }
    file.sync_data()
}

/// Work on a store's files started by [`Vfs::zero_fill`] or [`Vfs::remove_all`]: finished
/// already, or running on a thread. Dropping it waits for the thread, so no such work outlives the
/// store that started it (a store reopened on the same directory must not find a stale writer
/// or remover on its files).
#[derive(Debug)]
pub struct Background {
    state: Option<FillState>,
}

#[derive(Debug)]
enum FillState {
    Done(io::Result<()>),
    Running(std::thread::JoinHandle<io::Result<()>>),
}

impl Background {
    /// Work that has already ended with `result`.
    pub fn done(result: io::Result<()>) -> Self {
        Self { state: Some(FillState::Done(result)) }
    }

    /// Runs `work` on a thread of its own, named `name`.
    pub fn spawn(name: &str, work: impl FnOnce() -> io::Result<()> + Send + 'static) -> Self {
        match std::thread::Builder::new().name(name.into()).spawn(work) {
            Ok(thread) => Self { state: Some(FillState::Running(thread)) },
            Err(e) => Self::done(Err(e)),
        }
    }

    /// Waits for the work in `slot`, if any, leaving it empty, and returns its outcome: the
    /// previous job's, collected before the next one starts.
    pub fn collect(slot: &mut Option<Self>) -> io::Result<()> {
        slot.take().map_or(Ok(()), Self::wait)
    }

    /// Whether [`Background::wait`] would return at once.
    pub fn is_finished(&self) -> bool {
        match &self.state {
            Some(FillState::Running(thread)) => thread.is_finished(),
            _ => true,
        }
    }

    /// Waits for the work to end and returns its outcome.
    pub fn wait(mut self) -> io::Result<()> {
        match self.state.take().expect("taken only here and in drop") {
            FillState::Done(result) => result,
            FillState::Running(thread) => match thread.join() {
                Ok(result) => result,
                Err(panic) => std::panic::resume_unwind(panic),
            },
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(FillState::Running(thread)) = self.state.take() {
            let _ = thread.join();
        }
    }
}

/// The real file system.
#[derive(Clone, Copy, Debug, Default)]
pub struct StdFs;

/// A real file opened for appending: through the page cache, or (a log's, where the file
/// system allows) past it.
#[derive(Debug)]
pub enum StdFile {
    /// Written through the page cache.
    Buffered(File),
    /// Written with `O_DIRECT` ([`Vfs::open_log`]).
    Direct(DirectLog),
}

impl VfsFile for StdFile {
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()> {
        match self {
            StdFile::Buffered(file) => file.write_all_at(buf, offset),
            StdFile::Direct(log) => log.write_at(offset, buf),
        }
    }

    fn sync_data(&mut self) -> io::Result<()> {
        match self {
            StdFile::Buffered(file) => file.sync_data(),
            StdFile::Direct(log) => log.sync_data(),
        }
    }
}

impl Vfs for StdFs {
    type File = StdFile;

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        fs::create_dir_all(dir)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(dir)? {
            names.push(entry?.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        Ok(names)
    }

    fn create(&self, path: &Path) -> io::Result<StdFile> {
        let file = OpenOptions::new().create(true).write(true).truncate(true).open(path)?;
        Ok(StdFile::Buffered(file))
    }

    fn open_write(&self, path: &Path) -> io::Result<StdFile> {
        let file = OpenOptions::new().write(true).open(path)?;
        Ok(StdFile::Buffered(file))
    }

    fn open_log(&self, path: &Path) -> io::Result<StdFile> {
        match DirectLog::open(path)? {
            Some(log) => Ok(StdFile::Direct(log)),
            None => self.open_write(path),
        }
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        fs::read(path)
    }

    fn read_at(&self, path: &Path, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut file = File::open(path)?;
        file.seek(SeekFrom::Start(offset))?;
        let mut buf = vec![0; len];
        file.read_exact(&mut buf)?;
        Ok(buf)
    }

    fn open_shared(&self, path: &Path) -> io::Result<Option<File>> {
        File::open(path).map(Some)
    }

    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        let file = OpenOptions::new().write(true).open(path)?;
        file.set_len(len)?;
        file.sync_all()
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }

    fn zero_fill(&self, path: &Path, len: u64) -> Background {
        let path = path.to_path_buf();
        let delay = Duration::from_millis(ZERO_FILL_DELAY_MS.load(Ordering::Relaxed));
        Background::spawn("balsa-zero-fill", move || {
            std::thread::sleep(delay);
            zero_fill_now(&StdFs, &path, len)
        })
    }

    fn remove_all(&self, paths: Vec<PathBuf>, dir: &Path) -> Background {
        let dir = dir.to_path_buf();
        Background::spawn("balsa-remove", move || remove_all_now(&StdFs, &paths, &dir))
    }
}

/// Joins a directory and a file name.
pub fn join(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}
