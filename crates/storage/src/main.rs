//! `balsa-storage`: inspect and verify a data directory.
//!
//! ```text
//! balsa-storage check DIR     verify every segment and snapshot, print a summary
//! ```
//!
//! (`crash-writer DIR` is a helper for the crash test: it appends forever and prints each
//! durable index.)

use std::path::Path;
use std::process::ExitCode;

use balsa_raft::{Entry, EntryKind, HardState};
use balsa_storage::snapshot::SnapshotStore;
use balsa_storage::{DiskStore, StdFs, StoreOptions, Wal, WalOptions};
use bytes::Bytes;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["check", dir] => check(Path::new(dir)),
        ["crash-writer", dir, segment_bytes] => crash_writer(Path::new(dir), segment_bytes),
        _ => Err("usage: balsa-storage check DIR".to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Verifies a data directory. Opening recovers it (a torn tail is cut and reported); then every
/// entry is read back and checked.
fn check(dir: &Path) -> Result<(), String> {
    if !dir.join("wal").is_dir() {
        return Err(format!("{} holds no balsa data (no wal/ directory)", dir.display()));
    }
    let snaps = SnapshotStore::open(StdFs, &dir.join("snap"), usize::MAX).map_err(|e| e.to_string())?;
    for (index, term, path) in snaps.list().map_err(|e| e.to_string())? {
        let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        balsa_storage::snapshot::decode(bytes.into(), &path).map_err(|e| e.to_string())?;
        println!("snapshot  {}  index {index} term {term}  ok", path.display());
    }
    let store = DiskStore::open(dir, StoreOptions::default()).map_err(|e| e.to_string())?;
    if let Some(t) = store.torn_tail() {
        println!(
            "torn tail {}  cut at offset {} ({} bytes of an unsynced write)",
            t.path.display(),
            t.offset,
            t.discarded_bytes
        );
    }
    let wal = store.wal();
    let (first, last) = (wal.first_index(), wal.last_index());
    let mut checked = 0u64;
    let mut lo = first;
    while lo <= last {
        let hi = last.min(lo + 65_535);
        checked += store.entries(lo, hi).map_err(|e| e.to_string())?.len() as u64;
        lo = hi + 1;
    }
    let hs = store.hard_state();
    println!("log       {} segments, entries {first}..={last}, {checked} verified", wal.segment_count());
    println!("hard      term {} vote {:?} commit {}", hs.current_term, hs.voted_for, hs.commit_index);
    println!("ok");
    Ok(())
}

/// Appends batches forever, printing the last durable index after each sync; the crash test
/// kills it with SIGKILL at random moments.
fn crash_writer(dir: &Path, segment_bytes: &str) -> Result<(), String> {
    let segment_bytes = segment_bytes.parse().map_err(|_| "bad segment size".to_string())?;
    let mut wal = Wal::open(StdFs, &dir.join("wal"), WalOptions::with_segment_bytes(segment_bytes), 0)
        .map_err(|e| e.to_string())?;
    let mut index = wal.last_index();
    loop {
        let batch: Vec<Entry> = (1..=7)
            .map(|k| Entry { term: 1, index: index + k, kind: EntryKind::Normal, data: payload(index + k) })
            .collect();
        wal.append(&batch).map_err(|e| e.to_string())?;
        index += 7;
        wal.set_hard_state(HardState { current_term: 1, voted_for: Some(1), commit_index: index })
            .map_err(|e| e.to_string())?;
        wal.sync().map_err(|e| e.to_string())?;
        println!("{index}");
    }
}

/// The content entry `index` must have: its index repeated, so any mix-up shows.
pub fn payload(index: u64) -> Bytes {
    let len = 16 + (index % 200) as usize;
    Bytes::from(index.to_le_bytes().iter().copied().cycle().take(len).collect::<Vec<u8>>())
}
