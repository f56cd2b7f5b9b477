//! Snapshot files: written to a temporary file, synced, renamed into place, directory synced;
//! checksummed end to end; the newest `keep` retained; read back whole or in chunks for
//! InstallSnapshot.
//!
//! Layout: `"BALSASNP"`, version (u32), metadata length (u32), metadata, data length (u64), data,
//! CRC32C of everything before it (u32).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use balsa_raft::{Index, Snapshot, SnapshotData, SnapshotMeta, SnapshotSource, Term};
use bytes::{Buf, Bytes};

use crate::codec;
use crate::error::{Result, StorageError};
use crate::vfs::{Background, Vfs};

const MAGIC: &[u8; 8] = b"BALSASNP";
const VERSION: u32 = 1;

/// Bytes written per step when a snapshot file is written; each step is synced before the next
/// (see [`crate::vfs::BACKGROUND_SYNC_BYTES`]).
pub(crate) const WRITE_STEP: usize = crate::vfs::BACKGROUND_SYNC_BYTES as usize;

/// The snapshot directory.
#[derive(Clone)]
pub struct SnapshotStore<V: Vfs> {
    vfs: V,
    dir: PathBuf,
    keep: usize,
}

pub(crate) fn snapshot_name(index: Index, term: Term) -> String {
    format!("{index:016x}-{term:016x}.snap")
}

fn parse_name(name: &str) -> Option<(Index, Term)> {
    let stem = name.strip_suffix(".snap")?;
    let (i, t) = stem.split_once('-')?;
    Some((u64::from_str_radix(i, 16).ok()?, u64::from_str_radix(t, 16).ok()?))
}

/// The file's bytes before the data: magic, version, metadata, data length.
pub(crate) fn header(meta: &SnapshotMeta, data_len: u64) -> Vec<u8> {
    let mut encoded = Vec::new();
    codec::put_snapshot_meta(&mut encoded, meta);
    let mut out = Vec::with_capacity(24 + encoded.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(encoded.len() as u32).to_le_bytes());
    out.extend_from_slice(&encoded);
    out.extend_from_slice(&data_len.to_le_bytes());
    out
}

/// Serializes a snapshot into the file layout (whole, in memory: for tests and tools; the store
/// writes files piece by piece).
pub fn encode(snapshot: &Snapshot) -> std::io::Result<Vec<u8>> {
    let mut out = header(&snapshot.meta, snapshot.data.len());
    out.extend_from_slice(&snapshot.data.to_bytes()?);
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    Ok(out)
}

/// A snapshot's data read from its file by `pread` on a handle kept open, so it stays readable
/// even after retention removes the file. This is what the Raft core reads InstallSnapshot
/// chunks from: the data is never held in memory for the snapshot's life.
#[derive(Debug)]
pub struct FileSource {
    file: File,
    path: PathBuf,
    data_offset: u64,
    data_len: u64,
}

impl SnapshotSource for FileSource {
    fn len(&self) -> u64 {
        self.data_len
    }

    fn read(&self, offset: u64, len: usize) -> std::io::Result<Bytes> {
        let mut buf = vec![0; len];
        self.file.read_exact_at(&mut buf, self.data_offset + offset)?;
        Ok(Bytes::from(buf))
    }
}

impl FileSource {
    /// The file read from.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Parses and verifies a snapshot file's bytes.
pub fn decode(bytes: Bytes, path: &Path) -> Result<Snapshot> {
    let bad =
        |reason: &str| StorageError::Corrupt { path: path.to_path_buf(), offset: 0, reason: reason.into() };
    if bytes.len() < 28 || &bytes[..8] != MAGIC {
        return Err(bad("not a balsa snapshot"));
    }
    let (body, trailer) = bytes.split_at(bytes.len() - 4);
    if crc32c::crc32c(body) != u32::from_le_bytes(trailer.try_into().expect("4 bytes")) {
        return Err(bad("checksum mismatch"));
    }
    let mut b = bytes.slice(8..bytes.len() - 4);
    if b.get_u32_le() != VERSION {
        return Err(bad("unsupported snapshot version"));
    }
    let meta_len = b.get_u32_le() as usize;
    if b.len() < meta_len + 8 {
        return Err(bad("truncated metadata"));
    }
    let mut meta_bytes = b.split_to(meta_len);
    let meta = codec::get_snapshot_meta(&mut meta_bytes).map_err(|e| bad(e.0))?;
    let data_len = b.get_u64_le() as usize;
    if b.len() != data_len {
        return Err(bad("data length does not match the file"));
    }
    Ok(Snapshot { meta, data: b.into() })
}

impl<V: Vfs> SnapshotStore<V> {
    /// Opens the directory, removing temporary files left by a crash mid-write.
    pub fn open(vfs: V, dir: &Path, keep: usize) -> Result<Self> {
        vfs.create_dir_all(dir).map_err(|e| StorageError::io("create directory", dir, e))?;
        let store = Self { vfs, dir: dir.to_path_buf(), keep: keep.max(1) };
        let names = store.vfs.list(dir).map_err(|e| StorageError::io("list", dir, e))?;
        for name in names.iter().filter(|n| n.ends_with(".tmp")) {
            let path = dir.join(name);
            store.vfs.remove(&path).map_err(|e| StorageError::io("remove", &path, e))?;
        }
        Ok(store)
    }

    /// Snapshot files present, oldest first.
    pub fn list(&self) -> Result<Vec<(Index, Term, PathBuf)>> {
        let names = self.vfs.list(&self.dir).map_err(|e| StorageError::io("list", &self.dir, e))?;
        let mut found: Vec<_> =
            names.iter().filter_map(|n| parse_name(n).map(|(i, t)| (i, t, self.dir.join(n)))).collect();
        found.sort();
        Ok(found)
    }

    /// Writes a snapshot durably, then removes all but the newest `keep`.
    pub fn save(&self, snapshot: &Snapshot) -> Result<PathBuf>
    where
        V: Clone,
    {
        let path = self.write(snapshot)?;
        self.retain()?;
        Ok(path)
    }

    /// Writes a snapshot durably (temporary file, sync, rename, directory sync) and removes
    /// nothing, so it may run on another thread while the owner of the store goes on: a crash
    /// at any point leaves the previous snapshots intact, and only the owner removes files
    /// ([`SnapshotStore::retain`]). Piece by piece, through a [`SnapshotStream`], so that
    /// writing never makes a second copy of the whole state.
    ///
    /// [`SnapshotStream`]: crate::snapshot_stream::SnapshotStream
    pub fn write(&self, snapshot: &Snapshot) -> Result<PathBuf>
    where
        V: Clone,
    {
        let mut stream = self.stream(snapshot.meta.clone())?;
        let mut at = 0u64;
        while at < snapshot.data.len() {
            let piece =
                snapshot.data.read(at, WRITE_STEP).map_err(|e| StorageError::io("read", self.dir(), e))?;
            if piece.is_empty() {
                return Err(StorageError::Invalid(format!("snapshot data ended at {at}")));
            }
            stream.append(&piece)?;
            at += piece.len() as u64;
        }
        stream.finish_file(&[])
    }

    pub(crate) fn sync_dir(&self) -> Result<()> {
        self.vfs
            .sync_dir(&self.dir)
            .map_err(|source| StorageError::SyncFailed { path: self.dir.clone(), source })
    }

    /// The directory the snapshot files are in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn vfs(&self) -> &V {
        &self.vfs
    }

    /// Removes all but the newest `keep` snapshot files.
    pub fn retain(&self) -> Result<()> {
        let old = self.beyond_retention()?;
        if old.is_empty() {
            return Ok(());
        }
        for path in &old {
            self.vfs.remove(path).map_err(|e| StorageError::io("remove", path, e))?;
        }
        self.sync_dir()
    }

    /// As [`SnapshotStore::retain`], through [`Vfs::remove_all`] (in the background on the real
    /// file system); `None` if nothing is to go.
    pub fn retain_in_background(&self) -> Result<Option<Background>> {
        let old = self.beyond_retention()?;
        Ok((!old.is_empty()).then(|| self.vfs.remove_all(old, &self.dir)))
    }

    /// Every snapshot file but the newest `keep`.
    fn beyond_retention(&self) -> Result<Vec<PathBuf>> {
        let all = self.list()?;
        let old = all.len().saturating_sub(self.keep);
        Ok(all.into_iter().take(old).map(|(_, _, path)| path).collect())
    }

    /// The newest snapshot. If it fails verification that is an error, not a reason to fall
    /// back: the log before it may already be gone.
    ///
    /// On a file system with shareable handles ([`Vfs::open_shared`]) the snapshot's data is
    /// verified by streaming it once and then left in the file ([`FileSource`]); elsewhere it is
    /// read into memory.
    pub fn latest(&self) -> Result<Option<Snapshot>>
    where
        V: Clone,
    {
        let Some((index, term, path)) = self.list()?.pop() else { return Ok(None) };
        if self.vfs.open_shared(&path).map_err(|e| StorageError::io("open", &path, e))?.is_some() {
            // A failed verification is retried once with a fresh read (a transient read error).
            let reader = self.reader(index, term).or_else(|_| self.reader(index, term))?;
            let data = self.shared_data(&path, reader.data_offset, reader.data_len)?;
            return Ok(Some(Snapshot { meta: reader.meta, data: data.expect("shareable, checked above") }));
        }
        // A failed verification is retried with a fresh read: only damage that reads back the
        // same way twice is reported.
        let mut previous: Option<Vec<u8>> = None;
        loop {
            let bytes = self.vfs.read(&path).map_err(|e| StorageError::io("read", &path, e))?;
            match decode(Bytes::from(bytes.clone()), &path) {
                Ok(s) => return Ok(Some(s)),
                Err(e) if previous.as_ref() == Some(&bytes) => return Err(e),
                Err(_) => previous = Some(bytes),
            }
        }
    }
}

impl<V: Vfs> SnapshotStore<V> {
    fn shared_data(&self, path: &Path, data_offset: u64, data_len: u64) -> Result<Option<SnapshotData>> {
        let Some(file) = self.vfs.open_shared(path).map_err(|e| StorageError::io("open", path, e))? else {
            return Ok(None);
        };
        let source = FileSource { file, path: path.to_path_buf(), data_offset, data_len };
        Ok(Some(SnapshotData::from_source(Arc::new(source))))
    }

    /// The data of the snapshot file at `path` (`data_len` bytes from `data_offset`), as the
    /// store keeps it: read from the file if the file system can share a handle on it, else
    /// read into memory. Not verified again: the file was just written and synced.
    pub(crate) fn data_at(&self, path: &Path, data_offset: u64, data_len: u64) -> Result<SnapshotData> {
        if let Some(data) = self.shared_data(path, data_offset, data_len)? {
            return Ok(data);
        }
        let len =
            usize::try_from(data_len).map_err(|_| StorageError::Invalid("snapshot too large".into()))?;
        let bytes =
            self.vfs.read_at(path, data_offset, len).map_err(|e| StorageError::io("read", path, e))?;
        Ok(Bytes::from(bytes).into())
    }

    /// The data of `snapshot`, whose file [`SnapshotStore::write`] has written, as the store
    /// keeps it: read from the file if the file system can share a handle on it, else the
    /// snapshot's own handle. Not verified again: the file was just written and synced.
    pub fn stored_data(&self, snapshot: &Snapshot) -> Result<SnapshotData> {
        let (index, term) = (snapshot.meta.last_included_index, snapshot.meta.last_included_term);
        let path = self.dir.join(snapshot_name(index, term));
        let data_offset = header(&snapshot.meta, snapshot.data.len()).len() as u64;
        Ok(self
            .shared_data(&path, data_offset, snapshot.data.len())?
            .unwrap_or_else(|| snapshot.data.clone()))
    }
}

/// A snapshot file read in chunks without loading it whole (for streaming InstallSnapshot).
/// Opening it verifies the checksum in one streaming pass; chunks are then read by offset, so a
/// transfer interrupted by a lost chunk or a new leader can resume anywhere.
pub struct SnapshotReader<V: Vfs> {
    vfs: V,
    path: PathBuf,
    /// The snapshot's metadata.
    pub meta: balsa_raft::SnapshotMeta,
    /// Where the data starts in the file.
    data_offset: u64,
    /// Data bytes.
    pub data_len: u64,
}

/// Bytes read per step while verifying.
const VERIFY_STEP: usize = 1 << 20;

impl<V: Vfs> SnapshotStore<V> {
    /// Opens the snapshot `index`/`term` for chunked reading.
    pub fn reader(&self, index: Index, term: Term) -> Result<SnapshotReader<V>>
    where
        V: Clone,
    {
        let path = self.dir.join(snapshot_name(index, term));
        let bad =
            |reason: &str| StorageError::Corrupt { path: path.clone(), offset: 0, reason: reason.into() };
        let read = |offset: u64, len: usize| {
            self.vfs.read_at(&path, offset, len).map_err(|e| StorageError::io("read", &path, e))
        };
        let head = read(0, 16)?;
        if &head[..8] != MAGIC || u32::from_le_bytes(head[8..12].try_into().expect("4")) != VERSION {
            return Err(bad("not a balsa snapshot of this version"));
        }
        let meta_len = u32::from_le_bytes(head[12..16].try_into().expect("4")) as usize;
        let mut meta_bytes = Bytes::from(read(16, meta_len + 8)?);
        let meta = codec::get_snapshot_meta(&mut meta_bytes.split_to(meta_len)).map_err(|e| bad(e.0))?;
        let data_len = meta_bytes.get_u64_le();
        let data_offset = 16 + meta_len as u64 + 8;
        // Verify the whole file's checksum, streaming.
        let body_len = data_offset + data_len;
        let mut crc = 0u32;
        let mut at = 0u64;
        while at < body_len {
            let n = ((body_len - at) as usize).min(VERIFY_STEP);
            crc = crc32c::crc32c_append(crc, &read(at, n)?);
            at += n as u64;
        }
        let stored = read(body_len, 4)?;
        if crc != u32::from_le_bytes(stored[..4].try_into().expect("4")) {
            return Err(bad("checksum mismatch"));
        }
        Ok(SnapshotReader { vfs: self.vfs.clone(), path, meta, data_offset, data_len })
    }
}

impl<V: Vfs> SnapshotReader<V> {
    /// Up to `len` data bytes from `offset`; empty at or past the end.
    pub fn read_chunk(&self, offset: u64, len: usize) -> Result<Bytes> {
        if offset >= self.data_len {
            return Ok(Bytes::new());
        }
        let n = ((self.data_len - offset) as usize).min(len);
        let buf = self
            .vfs
            .read_at(&self.path, self.data_offset + offset, n)
            .map_err(|e| StorageError::io("read", &self.path, e))?;
        Ok(Bytes::from(buf))
    }
}

/// A verified snapshot handed out in chunks of at most `chunk_bytes` (for InstallSnapshot).
pub struct Chunks {
    data: Bytes,
    chunk_bytes: usize,
    offset: usize,
}

impl Chunks {
    /// Chunks of a snapshot's data (read whole into memory first).
    pub fn new(snapshot: &Snapshot, chunk_bytes: usize) -> std::io::Result<Self> {
        Ok(Self { data: snapshot.data.to_bytes()?, chunk_bytes: chunk_bytes.max(1), offset: 0 })
    }
}

impl Iterator for Chunks {
    /// Offset of the chunk and its bytes.
    type Item = (u64, Bytes);

    fn next(&mut self) -> Option<Self::Item> {
        if self.offset >= self.data.len() {
            return None;
        }
        let end = (self.offset + self.chunk_bytes).min(self.data.len());
        let chunk = (self.offset as u64, self.data.slice(self.offset..end));
        self.offset = end;
        Some(chunk)
    }
}
