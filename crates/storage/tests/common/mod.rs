//! Helpers shared by the storage tests.
#![allow(dead_code)]

use std::path::PathBuf;

use balsa_raft::{Entry, EntryKind, Term};
use bytes::Bytes;

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("balsa-test-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Entry `index` of `term` whose payload encodes both, so any mix-up shows.
pub fn entry(index: u64, term: Term) -> Entry {
    let mut data = index.to_le_bytes().to_vec();
    data.extend_from_slice(&term.to_le_bytes());
    data.extend(std::iter::repeat_n(index as u8, (index % 50) as usize));
    Entry { term, index, kind: EntryKind::Normal, data: Bytes::from(data) }
}

pub fn entries(lo: u64, hi: u64, term: Term) -> Vec<Entry> {
    (lo..=hi).map(|i| entry(i, term)).collect()
}
