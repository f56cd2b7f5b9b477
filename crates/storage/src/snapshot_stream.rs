//! A snapshot file written as its data is produced, so the whole encoding never sits in memory.
//!
//! Why: a server encodes its state a step at a time; held whole until written, the encoding of
//! the benchmark's 1M keys took 320 MB on top of the state (a member's resident size peaked at
//! 875 MiB against 556 at rest), and its fresh pages cost about a quarter of the encoding's time
//! in page faults. Streamed, each step's bytes go to the file and their buffer is reused.
//!
//! The file is the one [`SnapshotStore::write`] makes, byte for byte. Two things are known only
//! at the end: the data's length (in the header, before the data) and the first bytes of the data
//! (a state's encoding starts with its key count). Both are written last, in place, and the
//! checksum is put together from a checksum of the header, of the data's first
//! [`PATCHABLE_BYTES`] and of the rest ([`crc32c::crc32c_combine`]), so no byte is read back.
//! Until [`SnapshotStream::finish`] renames it, the file has the temporary name that recovery
//! removes; a stream dropped unfinished removes it at once.

use std::path::PathBuf;

use balsa_raft::{Snapshot, SnapshotMeta};

use crate::error::{Result, StorageError};
use crate::snapshot::{header, snapshot_name, SnapshotStore, WRITE_STEP};
use crate::vfs::{Vfs, VfsFile};

/// How many of the data's first bytes [`SnapshotStream::finish`] may rewrite.
pub const PATCHABLE_BYTES: usize = 64;

/// A snapshot file being written; see the module docs.
pub struct SnapshotStream<V: Vfs + Clone> {
    store: SnapshotStore<V>,
    meta: SnapshotMeta,
    file: V::File,
    /// The temporary file, and the name it gets when finished.
    tmp: PathBuf,
    path: PathBuf,
    /// The header's length: fixed, since the data length in it is a fixed-width integer.
    head_len: u64,
    /// Data bytes appended so far.
    data_len: u64,
    /// The data's first bytes (up to [`PATCHABLE_BYTES`]), which `finish` may change.
    prefix: Vec<u8>,
    /// Checksum of the data after `prefix`.
    rest_crc: u32,
    /// Bytes written since the last sync (synced every [`WRITE_STEP`], as `write` does).
    unsynced: usize,
    finished: bool,
}

impl<V: Vfs + Clone> SnapshotStore<V> {
    /// Starts the file of a snapshot with `meta`, its data to come by [`SnapshotStream::append`].
    pub fn stream(&self, meta: SnapshotMeta) -> Result<SnapshotStream<V>> {
        let name = snapshot_name(meta.last_included_index, meta.last_included_term);
        let (path, tmp) = (self.dir().join(&name), self.dir().join(format!("{name}.tmp")));
        let mut file = self.vfs().create(&tmp).map_err(|e| StorageError::io("create", &tmp, e))?;
        let head = header(&meta, 0);
        file.write_at(0, &head).map_err(|e| StorageError::io("write", &tmp, e))?;
        Ok(SnapshotStream {
            store: self.clone(),
            meta,
            file,
            tmp,
            path,
            head_len: head.len() as u64,
            data_len: 0,
            prefix: Vec::with_capacity(PATCHABLE_BYTES),
            rest_crc: 0,
            unsynced: 0,
            finished: false,
        })
    }
}

impl<V: Vfs + Clone> SnapshotStream<V> {
    /// Appends data bytes.
    pub fn append(&mut self, data: &[u8]) -> Result<()> {
        let into_prefix = (PATCHABLE_BYTES - self.prefix.len()).min(data.len());
        self.prefix.extend_from_slice(&data[..into_prefix]);
        self.rest_crc = crc32c::crc32c_append(self.rest_crc, &data[into_prefix..]);
        let at = self.head_len + self.data_len;
        self.file.write_at(at, data).map_err(|e| StorageError::io("write", &self.tmp, e))?;
        self.data_len += data.len() as u64;
        self.unsynced += data.len();
        if self.unsynced >= WRITE_STEP {
            // Not all at the end: the WAL's fsyncs would wait behind the whole file.
            self.sync()?;
        }
        Ok(())
    }

    /// Rewrites the data's first `head.len()` bytes (at most [`PATCHABLE_BYTES`], and no more
    /// than were appended) with `head`, completes the header and the checksum, syncs, and
    /// renames the file into place. Returns the snapshot with its data as the store keeps it.
    pub fn finish(self, head: &[u8]) -> Result<Snapshot> {
        let (store, meta, head_len, data_len) =
            (self.store.clone(), self.meta.clone(), self.head_len, self.data_len);
        let path = self.finish_file(head)?;
        let data = store.data_at(&path, head_len, data_len)?;
        Ok(Snapshot { meta, data })
    }

    /// As [`SnapshotStream::finish`], returning where the file is.
    pub(crate) fn finish_file(mut self, head: &[u8]) -> Result<PathBuf> {
        if head.len() > self.prefix.len() {
            return Err(StorageError::Invalid(format!(
                "a snapshot's first {} bytes patched, {} written and {PATCHABLE_BYTES} patchable",
                head.len(),
                self.prefix.len()
            )));
        }
        self.prefix[..head.len()].copy_from_slice(head);
        let header = header(&self.meta, self.data_len);
        let rest_len = self.data_len as usize - self.prefix.len();
        let data_crc = crc32c::crc32c_combine(crc32c::crc32c(&self.prefix), self.rest_crc, rest_len);
        let crc = crc32c::crc32c_combine(crc32c::crc32c(&header), data_crc, self.data_len as usize);
        let write = |file: &mut V::File, at: u64, bytes: &[u8], tmp: &PathBuf| {
            file.write_at(at, bytes).map_err(|e| StorageError::io("write", tmp, e))
        };
        write(&mut self.file, 0, &header, &self.tmp)?;
        write(&mut self.file, self.head_len, &self.prefix, &self.tmp)?;
        write(&mut self.file, self.head_len + self.data_len, &crc.to_le_bytes(), &self.tmp)?;
        self.sync()?;
        let vfs = self.store.vfs();
        vfs.rename(&self.tmp, &self.path).map_err(|e| StorageError::io("rename", &self.tmp, e))?;
        self.finished = true;
        self.store.sync_dir()?;
        Ok(self.path.clone())
    }

    fn sync(&mut self) -> Result<()> {
        self.unsynced = 0;
        self.file.sync_data().map_err(|source| StorageError::SyncFailed { path: self.tmp.clone(), source })
    }
}

impl<V: Vfs + Clone> Drop for SnapshotStream<V> {
    /// An unfinished file goes (recovery would remove it too, at the next start).
    fn drop(&mut self) {
        if !self.finished {
            let _ = self.store.vfs().remove(&self.tmp);
        }
    }
}
