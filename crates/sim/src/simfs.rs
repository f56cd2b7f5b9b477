//! A simulated, faulty file system for the real storage code (`balsa-storage` over [`Vfs`]).
//!
//! - Writes are volatile until `sync_data`; directory changes (create, rename, remove) until
//!   `sync_dir`.
//! - [`SimFs::crash`] keeps what was synced, plus each file's unsynced writes up to a random
//!   point, the last of them cut short and maybe ending in garbage: a torn last write.
//! - Reads return a flipped bit at a set rate (a transient read error: the next read is clean).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use balsa_raft::rng::SplitMix64;
use balsa_storage::{Vfs, VfsFile};

#[derive(Debug, Default)]
struct FileData {
    /// What the running system reads: `durable` with `pending` applied.
    data: Vec<u8>,
    /// What survives a crash.
    durable: Vec<u8>,
    /// Writes since the last sync, in order: offset and bytes.
    pending: Vec<(usize, Vec<u8>)>,
}

fn write_into(buf: &mut Vec<u8>, offset: usize, bytes: &[u8]) {
    if buf.len() < offset + bytes.len() {
        buf.resize(offset + bytes.len(), 0);
    }
    buf[offset..offset + bytes.len()].copy_from_slice(bytes);
}

impl FileData {
    fn sync(&mut self) {
        for (offset, bytes) in self.pending.drain(..) {
            write_into(&mut self.durable, offset, &bytes);
        }
    }
}

#[derive(Debug)]
struct FsState {
    files: BTreeMap<u64, FileData>,
    /// Directory entries as the running system sees them.
    names: BTreeMap<PathBuf, u64>,
    /// Directory entries that survive a crash.
    durable_names: BTreeMap<PathBuf, u64>,
    next_inode: u64,
    rng: SplitMix64,
    read_flip_per_mille: u64,
    /// Counters for summaries.
    torn_writes: u64,
    read_flips: u64,
}

/// One simulated disk. Cloning shares it (like a mount).
#[derive(Clone, Debug)]
pub struct SimFs {
    state: Rc<RefCell<FsState>>,
}

/// An open simulated file.
#[derive(Debug)]
pub struct SimFile {
    fs: SimFs,
    inode: u64,
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("{} not found", path.display()))
}

impl SimFs {
    /// An empty disk whose faults come from `seed`.
    pub fn new(seed: u64, read_flip_per_mille: u64) -> Self {
        let state = FsState {
            files: BTreeMap::new(),
            names: BTreeMap::new(),
            durable_names: BTreeMap::new(),
            next_inode: 1,
            rng: SplitMix64::new(seed),
            read_flip_per_mille,
            torn_writes: 0,
            read_flips: 0,
        };
        Self { state: Rc::new(RefCell::new(state)) }
    }

    /// Power loss: unsynced directory changes vanish; each file keeps its synced bytes and a
    /// random prefix of the rest, the end of which may be garbage.
    pub fn crash(&self) {
        let mut st = self.state.borrow_mut();
        st.names = st.durable_names.clone();
        let inodes: Vec<u64> = st.files.keys().copied().collect();
        for inode in inodes {
            let pending = std::mem::take(&mut st.files.get_mut(&inode).expect("inode").pending);
            if pending.is_empty() {
                continue;
            }
            st.torn_writes += 1;
            // Writes before a random point land whole, the one at it lands cut short (its end
            // maybe garbage), the rest are lost.
            let cut = st.rng.range(0, pending.len() as u64 + 1) as usize;
            let mut landed: Vec<(usize, Vec<u8>)> = pending[..cut].to_vec();
            if let Some((offset, bytes)) = pending.get(cut) {
                let keep = st.rng.range(0, bytes.len() as u64 + 1) as usize;
                let mut part = bytes[..keep].to_vec();
                if keep > 0 && st.rng.chance(1, 2) {
                    let noisy = st.rng.range(1, 9).min(keep as u64) as usize;
                    for b in &mut part[keep - noisy..] {
                        *b = st.rng.next_u64() as u8;
                    }
                }
                landed.push((*offset, part));
            }
            let f = st.files.get_mut(&inode).expect("inode");
            for (offset, bytes) in landed {
                write_into(&mut f.durable, offset, &bytes);
            }
            f.data = f.durable.clone();
        }
        let live: std::collections::BTreeSet<u64> = st.names.values().copied().collect();
        st.files.retain(|inode, _| live.contains(inode));
    }

    /// (torn writes at crashes, flipped reads) so far.
    pub fn fault_counts(&self) -> (u64, u64) {
        let st = self.state.borrow();
        (st.torn_writes, st.read_flips)
    }

    fn inode(&self, path: &Path) -> io::Result<u64> {
        self.state.borrow().names.get(path).copied().ok_or_else(|| not_found(path))
    }

    fn maybe_flip(&self, mut buf: Vec<u8>) -> Vec<u8> {
        let mut st = self.state.borrow_mut();
        let rate = st.read_flip_per_mille;
        if !buf.is_empty() && st.rng.chance(rate, 1000) {
            let bit = st.rng.range(0, buf.len() as u64 * 8);
            buf[(bit / 8) as usize] ^= 1 << (bit % 8);
            st.read_flips += 1;
        }
        buf
    }
}

impl VfsFile for SimFile {
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()> {
        let mut st = self.fs.state.borrow_mut();
        let f = st.files.get_mut(&self.inode).ok_or_else(|| io::Error::other("stale handle"))?;
        write_into(&mut f.data, offset as usize, buf);
        f.pending.push((offset as usize, buf.to_vec()));
        Ok(())
    }

    fn sync_data(&mut self) -> io::Result<()> {
        let mut st = self.fs.state.borrow_mut();
        st.files.get_mut(&self.inode).ok_or_else(|| io::Error::other("stale handle"))?.sync();
        Ok(())
    }
}

impl Vfs for SimFs {
    type File = SimFile;

    fn create_dir_all(&self, _dir: &Path) -> io::Result<()> {
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let st = self.state.borrow();
        Ok(st
            .names
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect())
    }

    fn create(&self, path: &Path) -> io::Result<SimFile> {
        let mut st = self.state.borrow_mut();
        let inode = st.next_inode;
        st.next_inode += 1;
        st.files.insert(inode, FileData::default());
        st.names.insert(path.to_path_buf(), inode);
        Ok(SimFile { fs: self.clone(), inode })
    }

    fn open_write(&self, path: &Path) -> io::Result<SimFile> {
        Ok(SimFile { fs: self.clone(), inode: self.inode(path)? })
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        let inode = self.inode(path)?;
        let data = self.state.borrow().files[&inode].data.clone();
        Ok(self.maybe_flip(data))
    }

    fn read_at(&self, path: &Path, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let inode = self.inode(path)?;
        let data = {
            let st = self.state.borrow();
            let d = &st.files[&inode].data;
            let (lo, hi) = (offset as usize, offset as usize + len);
            if hi > d.len() {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "read past end"));
            }
            d[lo..hi].to_vec()
        };
        Ok(self.maybe_flip(data))
    }

    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        let inode = self.inode(path)?;
        let mut st = self.state.borrow_mut();
        let f = st.files.get_mut(&inode).expect("inode");
        f.sync();
        f.durable.truncate(len as usize);
        f.data = f.durable.clone();
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut st = self.state.borrow_mut();
        let inode = st.names.remove(from).ok_or_else(|| not_found(from))?;
        st.names.insert(to.to_path_buf(), inode);
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        self.state.borrow_mut().names.remove(path).map(|_| ()).ok_or_else(|| not_found(path))
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut st = self.state.borrow_mut();
        st.durable_names.retain(|p, _| p.parent() != Some(dir));
        let entries: Vec<(PathBuf, u64)> =
            st.names.iter().filter(|(p, _)| p.parent() == Some(dir)).map(|(p, &i)| (p.clone(), i)).collect();
        st.durable_names.extend(entries);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crash_keeps_synced_data_and_durable_names_only() {
        let fs = SimFs::new(1, 0);
        let dir = Path::new("/d");
        let mut f = fs.create(&dir.join("a")).unwrap();
        f.write_at(0, b"synced").unwrap();
        f.sync_data().unwrap();
        fs.sync_dir(dir).unwrap();
        f.write_at(6, b"-volatile").unwrap();
        let mut g = fs.create(&dir.join("b")).unwrap();
        g.write_at(0, b"never named durably").unwrap();
        g.sync_data().unwrap();
        fs.crash();
        let a = fs.read(&dir.join("a")).unwrap();
        assert!(a.starts_with(b"synced") && a.len() <= 15, "synced bytes survive, the rest is torn");
        assert!(fs.read(&dir.join("b")).is_err(), "an unsynced directory entry is lost");
        assert_eq!(fs.list(dir).unwrap(), vec!["a".to_string()]);
    }

    #[test]
    fn renames_become_durable_with_the_directory() {
        let fs = SimFs::new(2, 0);
        let dir = Path::new("/d");
        let mut f = fs.create(&dir.join("x.tmp")).unwrap();
        f.write_at(0, b"data").unwrap();
        f.sync_data().unwrap();
        fs.sync_dir(dir).unwrap();
        fs.rename(&dir.join("x.tmp"), &dir.join("x")).unwrap();
        fs.crash();
        assert_eq!(fs.list(dir).unwrap(), vec!["x.tmp".to_string()], "the rename was not synced");
        fs.rename(&dir.join("x.tmp"), &dir.join("x")).unwrap();
        fs.sync_dir(dir).unwrap();
        fs.crash();
        assert_eq!(fs.read(&dir.join("x")).unwrap(), b"data");
    }
}
