//! The disk store against the in-memory model, snapshots, full disks and failed syncs.

mod common;

use std::path::Path;
use std::sync::atomic::Ordering;

use balsa_raft::{HardState, Membership, PersistBatch, Snapshot, SnapshotMeta};
use balsa_storage::testing::FaultyFs;
use balsa_storage::{DiskStore, LogStore, MemStore, StdFs, StorageError, StoreOptions, WalOptions};
use bytes::Bytes;
use common::{entries, TempDir};
use proptest::prelude::*;

fn options(segment_bytes: u64) -> StoreOptions {
    StoreOptions { wal: WalOptions::with_segment_bytes(segment_bytes), keep_snapshots: 2 }
}

fn batch(
    hard_state: Option<HardState>,
    snapshot: Option<Snapshot>,
    entries: Vec<balsa_raft::Entry>,
) -> PersistBatch {
    let mut b = PersistBatch::default();
    b.hard_state = hard_state;
    b.snapshot = snapshot;
    b.entries = entries;
    b
}

fn snapshot(index: u64, term: u64) -> Snapshot {
    let meta = SnapshotMeta {
        last_included_index: index,
        last_included_term: term,
        membership: Membership::new([1, 2, 3]),
    };
    Snapshot { meta, data: Bytes::from(format!("state up to {index}")).into() }
}

/// A store in `dir` holding entries 1..=40 of term 1, synced.
fn with_forty_entries(dir: &Path, segment_bytes: u64) -> DiskStore {
    let mut disk = DiskStore::open(dir, options(segment_bytes)).unwrap();
    disk.write(&batch(None, None, entries(1, 40, 1))).unwrap();
    disk.sync().unwrap();
    disk
}

#[derive(Clone, Debug)]
enum Op {
    /// Append `count` entries of `term` starting `back` entries before the end (0 = at the end).
    Append {
        back: u64,
        count: u64,
        term: u64,
    },
    HardState {
        term: u64,
        commit_back: u64,
    },
    /// Local snapshot `back` entries before the end.
    Compact {
        back: u64,
    },
    /// Snapshot received from a leader, `ahead` entries past the end.
    Install {
        ahead: u64,
    },
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u64..4, 1u64..20, 0u64..3).prop_map(|(back, count, term)| Op::Append { back, count, term }),
        2 => (0u64..5, 0u64..10).prop_map(|(term, commit_back)| Op::HardState { term, commit_back }),
        1 => (0u64..30).prop_map(|back| Op::Compact { back }),
        1 => (1u64..30).prop_map(|ahead| Op::Install { ahead }),
        2 => Just(Op::Restart),
    ]
}

/// Applies one operation to both stores (keeping the ops within what a Raft driver can ask).
fn apply(op: &Op, disk: &mut DiskStore, mem: &mut MemStore, term: &mut u64) {
    let floor = mem.snapshot.as_ref().map_or(0, |s| s.meta.last_included_index);
    let last = mem.entries.last().map_or(floor, |e| e.index);
    match *op {
        Op::Append { back, count, term: bump } => {
            // Raft never truncates committed entries (Log Matching, section 5.3).
            let lo = (last + 1).saturating_sub(back).max(floor + 1).max(mem.hard_state.commit_index + 1);
            *term += bump;
            let b = batch(None, None, entries(lo, lo + count - 1, *term));
            disk.write(&b).unwrap();
            mem.write(&b).unwrap();
        }
        Op::HardState { term: bump, commit_back } => {
            *term += bump;
            let hs = HardState {
                current_term: *term,
                voted_for: Some(*term % 3 + 1),
                commit_index: last.saturating_sub(commit_back),
            };
            let b = batch(Some(hs), None, Vec::new());
            disk.write(&b).unwrap();
            mem.write(&b).unwrap();
        }
        Op::Compact { back } => {
            let at = last.saturating_sub(back);
            if at > floor {
                let t = mem.entries.iter().find(|e| e.index == at).unwrap().term;
                disk.save_snapshot(&snapshot(at, t)).unwrap();
                mem.save_snapshot(&snapshot(at, t)).unwrap();
            }
        }
        Op::Install { ahead } => {
            *term += 1;
            let b = batch(None, Some(snapshot(last + ahead, *term)), Vec::new());
            disk.write(&b).unwrap();
            mem.write(&b).unwrap();
        }
        Op::Restart => {}
    }
    disk.sync().unwrap();
}

fn same_state(disk: &DiskStore, mem: &MemStore) {
    let members = Membership::new([1, 2, 3]);
    let a = disk.initial_state(&members).unwrap();
    let b = mem.initial_state(&members).unwrap();
    assert_eq!(a.hard_state, b.hard_state);
    assert_eq!(a.snapshot, b.snapshot);
    assert_eq!(a.applied_index, b.applied_index);
    assert_eq!(a.entries, b.entries);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]

    /// Random append / truncate / compact / install / restart sequences: the disk store always
    /// recovers exactly what the in-memory model holds.
    #[test]
    fn disk_store_matches_the_model(ops in prop::collection::vec(op(), 1..60), segment in 300u64..3_000) {
        let d = TempDir::new("model");
        let mut disk = DiskStore::open(&d.0, options(segment)).unwrap();
        let mut mem = MemStore::default();
        let mut term = 1;
        for op in &ops {
            apply(op, &mut disk, &mut mem, &mut term);
            if let Op::Restart = op {
                drop(disk);
                disk = DiskStore::open(&d.0, options(segment)).unwrap();
            }
            same_state(&disk, &mem);
        }
        drop(disk);
        let disk = DiskStore::open(&d.0, options(segment)).unwrap();
        same_state(&disk, &mem);
    }
}

#[test]
fn snapshots_are_verified_and_only_the_newest_are_kept() {
    let d = TempDir::new("snaps");
    {
        let mut disk = with_forty_entries(&d.0, 1 << 20);
        for at in [10, 20, 30] {
            disk.save_snapshot(&snapshot(at, 1)).unwrap();
        }
    }
    let snap_dir = d.0.join("snap");
    let mut names: Vec<_> = std::fs::read_dir(&snap_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names.len(), 2, "keep_snapshots = 2: {names:?}");
    // A leftover temporary file from a crash mid-write is ignored and removed.
    std::fs::write(snap_dir.join("00000000000000ff-0000000000000001.snap.tmp"), b"partial").unwrap();
    let disk = DiskStore::open(&d.0, options(1 << 20)).unwrap();
    assert_eq!(disk.snapshot().unwrap().meta.last_included_index, 30);
    assert!(!snap_dir.join("00000000000000ff-0000000000000001.snap.tmp").exists());
    drop(disk);
    // A damaged newest snapshot stops recovery: falling back to an older one could lose the log
    // prefix it replaced.
    let newest = snap_dir.join(names.last().unwrap());
    let mut bytes = std::fs::read(&newest).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(&newest, &bytes).unwrap();
    match DiskStore::open(&d.0, options(1 << 20)) {
        Err(StorageError::Corrupt { path, .. }) => assert_eq!(path, newest),
        Err(e) => panic!("unexpected {e}"),
        Ok(_) => panic!("a damaged snapshot went unnoticed"),
    }
}

/// `disk_usage` sizes the files from outside the store: the total counts every file, "in use"
/// only what recovery reads (log segments and the newest snapshot).
#[test]
fn disk_usage_counts_every_file_and_what_recovery_reads() {
    let d = TempDir::new("usage");
    let mut disk = with_forty_entries(&d.0, 1 << 16);
    disk.save_snapshot(&snapshot(10, 1)).unwrap();
    disk.save_snapshot(&snapshot(30, 1)).unwrap();
    let size = |sub: &str, pick: &dyn Fn(&str) -> bool| -> u64 {
        std::fs::read_dir(d.0.join(sub))
            .unwrap()
            .map(|e| e.unwrap())
            .filter(|e| pick(&e.file_name().to_string_lossy()))
            .map(|e| e.metadata().unwrap().len())
            .sum()
    };
    let segments = size("wal", &|n| n.ends_with(".wal"));
    let all_wal = size("wal", &|_| true);
    let newest = size("snap", &|n| n.starts_with("000000000000001e-"));
    let all_snaps = size("snap", &|_| true);
    assert!(segments > 0 && newest > 0 && all_snaps > newest, "two snapshots and a log on disk");
    let usage = balsa_storage::disk_usage(&d.0).unwrap();
    assert_eq!(usage.total_bytes, all_wal + all_snaps);
    assert_eq!(usage.in_use_bytes, segments + newest);
    assert!(balsa_storage::disk_usage(&d.0.join("missing")).is_err(), "no store there");
}

/// A driver writes snapshot files on another thread and installs them afterwards. Until it
/// installs one the store and its log are untouched; a crash in between finds the snapshot
/// durable and the log after it intact; installing compacts the log; an older snapshot than
/// the store's is refused without a change, and one never written is an error.
#[test]
fn a_snapshot_written_on_another_thread_counts_once_installed() {
    let d = TempDir::new("split");
    {
        let mut disk = with_forty_entries(&d.0, 1 << 20);
        disk.save_snapshot(&snapshot(10, 1)).unwrap();
        let writer = disk.snapshot_writer();
        std::thread::spawn(move || writer.write(&snapshot(30, 1))).join().unwrap().unwrap();
        assert_eq!(disk.snapshot().unwrap().meta.last_included_index, 10, "written, not installed");
        assert_eq!(disk.wal().first_index(), 11);
        // A crash now.
    }
    let mut disk = DiskStore::open(&d.0, options(1 << 20)).unwrap();
    assert_eq!(disk.snapshot().unwrap().meta.last_included_index, 30, "the written snapshot is durable");
    assert_eq!(disk.entries(31, 40).unwrap(), entries(31, 40, 1));
    disk.write(&batch(None, None, entries(41, 60, 1))).unwrap();
    disk.sync().unwrap();
    let writer = disk.snapshot_writer();
    writer.write(&snapshot(50, 1)).unwrap();
    assert_eq!(disk.wal().first_index(), 31, "nothing compacted before the install");
    assert!(disk.install_snapshot(&snapshot(50, 1)).unwrap());
    assert_eq!(disk.snapshot().unwrap().meta.last_included_index, 50);
    assert_eq!(disk.wal().first_index(), 51);
    assert_eq!(disk.entries(51, 60).unwrap(), entries(51, 60, 1));
    // Overtaken (say by a leader's snapshot installed while this one was written): no change.
    writer.write(&snapshot(45, 1)).unwrap();
    assert!(!disk.install_snapshot(&snapshot(45, 1)).unwrap());
    assert_eq!(disk.snapshot().unwrap().meta.last_included_index, 50);
    assert!(matches!(disk.install_snapshot(&snapshot(55, 1)), Err(StorageError::Invalid(_))));
    assert_eq!(disk.wal().first_index(), 51, "a refused install compacts nothing");
    drop(disk);
    let disk = DiskStore::open(&d.0, options(1 << 20)).unwrap();
    assert_eq!(disk.snapshot().unwrap().meta.last_included_index, 50);
    assert_eq!(disk.entries(51, 60).unwrap(), entries(51, 60, 1));
}

/// Snapshots stream from the file in chunks, resumable at any offset, and damage is caught when
/// the reader opens.
#[test]
fn snapshot_files_are_read_in_chunks() {
    let d = TempDir::new("snapread");
    let store = balsa_storage::snapshot::SnapshotStore::open(StdFs, &d.0, 2).unwrap();
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let s = Snapshot { data: Bytes::from(data.clone()).into(), ..snapshot(77, 4) };
    let path = store.save(&s).unwrap();
    let reader = store.reader(77, 4).unwrap();
    assert_eq!(reader.meta, s.meta);
    assert_eq!(reader.data_len, data.len() as u64);
    let mut joined = Vec::new();
    let mut offset = 0;
    loop {
        let chunk = reader.read_chunk(offset, 64 << 10).unwrap();
        if chunk.is_empty() {
            break;
        }
        offset += chunk.len() as u64;
        joined.extend_from_slice(&chunk);
    }
    assert_eq!(joined, data);
    assert_eq!(
        &reader.read_chunk(1_000_000, 10).unwrap()[..],
        &data[1_000_000..1_000_010],
        "resume anywhere"
    );
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[2_000_000] ^= 4;
    std::fs::write(&path, &bytes).unwrap();
    assert!(matches!(store.reader(77, 4), Err(StorageError::Corrupt { .. })));
}

#[test]
fn snapshot_chunks_reassemble() {
    let s = Snapshot { data: Bytes::from(vec![7u8; 10_001]).into(), ..snapshot(5, 1) };
    let chunks: Vec<_> = balsa_storage::snapshot::Chunks::new(&s, 4096).unwrap().collect();
    assert_eq!(chunks.len(), 3);
    assert_eq!(chunks[2].0, 8192);
    let joined: Vec<u8> = chunks.iter().flat_map(|(_, b)| b.iter().copied()).collect();
    assert_eq!(joined, s.data.to_bytes().unwrap().to_vec());
}

/// Background writers sync as they go: a disk's cache flush waits for every write before it, so
/// the WAL's fsyncs would otherwise wait behind a whole snapshot file or spare segment.
#[test]
fn snapshot_files_and_zero_fills_never_leave_much_unsynced() {
    let d = TempDir::new("background-sync");
    let limit = balsa_storage::vfs::BACKGROUND_SYNC_BYTES;
    let fs = FaultyFs::healthy();
    let data: Vec<u8> = (0..10 * limit + 12_345).map(|i| (i % 251) as u8).collect();
    let s = Snapshot { data: Bytes::from(data.clone()).into(), ..snapshot(9, 2) };
    let store = balsa_storage::snapshot::SnapshotStore::open(fs.clone(), &d.0.join("snap"), 2).unwrap();
    store.write(&s).unwrap();
    let header_and_trailer = 4096;
    let most = fs.most_unsynced.load(Ordering::SeqCst);
    assert!(most <= limit + header_and_trailer, "{most} bytes of a snapshot file waited for one sync");
    let back = store.latest().unwrap().expect("the snapshot is there");
    assert_eq!(back.data.to_bytes().unwrap().to_vec(), data, "and whole");

    fs.most_unsynced.store(0, Ordering::SeqCst);
    let spare = d.0.join("spare");
    balsa_storage::vfs::zero_fill_now(&fs, &spare, 9 * limit + 7).unwrap();
    let most = fs.most_unsynced.load(Ordering::SeqCst);
    assert!(most <= limit, "{most} bytes of a zero-fill waited for one sync");
    assert_eq!(std::fs::metadata(&spare).unwrap().len(), 9 * limit + 7);
}

#[test]
fn a_full_disk_gives_a_clear_error_and_loses_nothing_synced() {
    let d = TempDir::new("enospc");
    let fs = FaultyFs::with_budget(40_000);
    let mut disk = DiskStore::open_with(fs.clone(), &d.0, options(4_096)).unwrap();
    let mut synced = 0;
    let err = loop {
        let b = batch(None, None, entries(synced + 1, synced + 10, 1));
        match disk.write(&b).and_then(|()| disk.sync()) {
            Ok(()) => synced += 10,
            Err(e) => break e,
        }
    };
    assert!(matches!(err, StorageError::NoSpace { .. }), "{err}");
    assert!(err.to_string().contains("no space left"), "{err}");
    assert!(synced > 0);
    // The store refuses further writes rather than continue after a partial write.
    assert!(disk.write(&batch(None, None, entries(synced + 1, synced + 1, 1))).is_err());
    drop(disk);
    fs.budget.store(i64::MAX, Ordering::SeqCst);
    let disk = DiskStore::open_with(fs, &d.0, options(4_096)).unwrap();
    // Every synced entry; of the failed write at most a valid prefix (complete records), never
    // a damaged one.
    let last = disk.wal().last_index();
    assert!((synced..synced + 10).contains(&last), "last {last}, synced {synced}");
    assert_eq!(disk.entries(1, last).unwrap(), entries(1, last, 1));
}

/// Real ENOSPC from a real (tiny) file system, when the test may mount one.
#[test]
fn a_full_tmpfs_gives_a_clear_error() {
    let d = TempDir::new("tmpfs");
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
        .arg(&d.0)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("NOTE: cannot mount tmpfs here (not root?); the FaultyFs test covers ENOSPC");
        return;
    }
    let result = std::panic::catch_unwind(|| {
        let mut disk = DiskStore::open(&d.0.join("data"), options(32 << 10)).unwrap();
        let mut synced = 0;
        let err = loop {
            let b = batch(None, None, entries(synced + 1, synced + 50, 1));
            match disk.write(&b).and_then(|()| disk.sync()) {
                Ok(()) => synced += 50,
                Err(e) => break e,
            }
        };
        assert!(matches!(err, StorageError::NoSpace { .. }), "{err}");
        drop(disk);
        // Free room by removing nothing: recovery must still work read-mostly on a full disk.
        let disk = DiskStore::open(&d.0.join("data"), options(32 << 10)).unwrap();
        assert!(disk.wal().last_index() >= synced);
        assert_eq!(disk.entries(1, synced).unwrap(), entries(1, synced, 1));
    });
    let _ = std::process::Command::new("umount").arg(&d.0).status();
    if let Err(p) = result {
        std::panic::resume_unwind(p);
    }
}

/// A store in `d` on a file system that fails only when told to, holding entries 1..=`last`
/// (term 1), synced.
fn synced_on_faulty_fs(d: &TempDir, last: u64) -> (FaultyFs, DiskStore<FaultyFs>) {
    let fs = FaultyFs::healthy();
    let mut disk = DiskStore::open_with(fs.clone(), &d.0, options(1 << 20)).unwrap();
    disk.write(&batch(None, None, entries(1, last, 1))).unwrap();
    disk.sync().unwrap();
    (fs, disk)
}

/// fsyncgate: after a failed sync the data's fate is unknown; the store must stop, not retry.
#[test]
fn a_failed_sync_poisons_the_store() {
    let d = TempDir::new("fsyncfail");
    let (fs, mut disk) = synced_on_faulty_fs(&d, 5);
    fs.fail_sync.store(true, Ordering::SeqCst);
    disk.write(&batch(None, None, entries(6, 6, 1))).unwrap();
    let err = disk.sync().unwrap_err();
    assert!(matches!(err, StorageError::SyncFailed { .. }) && err.is_fatal(), "{err}");
    fs.fail_sync.store(false, Ordering::SeqCst);
    assert!(matches!(disk.sync(), Err(StorageError::Poisoned)), "no retry after a failed fsync");
    assert!(matches!(disk.write(&batch(None, None, entries(7, 7, 1))), Err(StorageError::Poisoned)));
}

/// Old snapshot files and log segments are removed after the install that made them old, in the
/// background on the real file system; a removal that failed is not forgotten: the next install
/// returns its error (before, the install that started it did).
#[test]
fn a_failed_removal_of_old_files_stops_the_next_install() {
    let d = TempDir::new("removefail");
    let (fs, mut disk) = synced_on_faulty_fs(&d, 40);
    // Two kept: nothing is removed by the first two.
    disk.save_snapshot(&snapshot(10, 1)).unwrap();
    disk.save_snapshot(&snapshot(20, 1)).unwrap();
    fs.fail_remove.store(true, Ordering::SeqCst);
    disk.save_snapshot(&snapshot(30, 1)).unwrap();
    fs.fail_remove.store(false, Ordering::SeqCst);
    let err = disk.save_snapshot(&snapshot(40, 1)).unwrap_err();
    assert!(err.to_string().contains("remove"), "{err}");
}

/// The disk store keeps no snapshot bytes in memory: the snapshot it holds — after a local
/// snapshot, a leader's, and recovery — reads its data from the file, even once retention has
/// removed that file.
#[test]
fn the_disk_store_keeps_snapshot_data_in_its_file() {
    let d = TempDir::new("snapfile");
    let mut disk = with_forty_entries(&d.0, 1 << 20);
    let local = snapshot(10, 1);
    disk.save_snapshot(&local).unwrap();
    let stored = disk.snapshot().unwrap().clone();
    assert!(!stored.data.is_in_memory(), "read from the file");
    assert_eq!(stored, local);
    let leader = snapshot(60, 2);
    disk.write(&batch(None, Some(leader.clone()), vec![])).unwrap();
    assert!(!disk.snapshot().unwrap().data.is_in_memory());
    assert_eq!(disk.snapshot().unwrap(), &leader);
    drop(disk);
    let disk = DiskStore::open(&d.0, options(1 << 20)).unwrap();
    let recovered = disk.initial_state(&Membership::new([1, 2, 3])).unwrap().snapshot.unwrap();
    assert!(!recovered.data.is_in_memory(), "recovery leaves the data in the file");
    assert_eq!(recovered, leader);
    assert_eq!(&recovered.data.read(3, 5).unwrap()[..], &b"state up to 60"[3..8]);
    // Retention removes the first file; a handle on it still reads.
    let mut disk = disk;
    disk.write(&batch(None, Some(snapshot(70, 2)), vec![])).unwrap();
    disk.write(&batch(None, Some(snapshot(80, 2)), vec![])).unwrap();
    assert_eq!(stored.data.to_bytes().unwrap(), Bytes::from("state up to 10"));
}

/// A snapshot file streamed piece by piece, its first bytes patched at the end, is the file that
/// writing the whole snapshot at once makes, byte for byte, and reads back as that snapshot; a
/// stream dropped before its finish leaves no file behind.
#[test]
fn a_streamed_snapshot_file_is_the_file_written_whole() {
    let d = TempDir::new("stream");
    let limit = balsa_storage::vfs::BACKGROUND_SYNC_BYTES as usize;
    let data: Vec<u8> = (0..2 * limit + 77).map(|i| (i % 241) as u8).collect();
    let whole = Snapshot { data: Bytes::from(data.clone()).into(), ..snapshot(9, 2) };
    let one = balsa_storage::snapshot::SnapshotStore::open(StdFs, &d.0.join("whole"), 2).unwrap();
    let path = one.write(&whole).unwrap();
    let streamed = balsa_storage::snapshot::SnapshotStore::open(StdFs, &d.0.join("streamed"), 2).unwrap();
    let mut stream = streamed.stream(whole.meta.clone()).unwrap();
    // The first 20 bytes go out as zeros and are given at the finish, as a state's key count is.
    let mut first = data.clone();
    first[..20].fill(0);
    for piece in first.chunks(limit / 3 + 1) {
        stream.append(piece).unwrap();
    }
    let read = stream.finish(&data[..20]).unwrap();
    let name = path.file_name().unwrap();
    assert_eq!(std::fs::read(d.0.join("streamed").join(name)).unwrap(), std::fs::read(&path).unwrap());
    assert_eq!(read, whole);
    let abandoned = streamed.stream(snapshot(11, 2).meta).unwrap();
    drop(abandoned);
    let left: Vec<_> =
        std::fs::read_dir(d.0.join("streamed")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, vec![name.to_owned()], "only the finished file");
}
