//! The write-ahead log: recovery, truncation, compaction, damage.

mod common;

use std::fs;

use balsa_raft::HardState;
use balsa_storage::wal::SPARE_NAME;
use balsa_storage::{StdFs, StorageError, Wal, WalOptions};
use common::{entries, entry, TempDir};

fn open(dir: &std::path::Path, segment_bytes: u64) -> balsa_storage::Result<Wal<StdFs>> {
    Wal::open(StdFs, dir, WalOptions::with_segment_bytes(segment_bytes), 0)
}

/// Length of a segment file without its preallocated zeros.
fn logical_len(data: &[u8]) -> usize {
    data.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1)
}

fn segment_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    v.sort();
    v
}

#[test]
fn entries_and_hard_state_survive_reopen() {
    let d = TempDir::new("reopen");
    {
        let mut wal = open(&d.0, 1 << 20).unwrap();
        wal.append(&entries(1, 100, 1)).unwrap();
        wal.set_hard_state(HardState { current_term: 3, voted_for: Some(2), commit_index: 90 }).unwrap();
        wal.sync().unwrap();
    }
    let wal = open(&d.0, 1 << 20).unwrap();
    assert_eq!((wal.first_index(), wal.last_index()), (1, 100));
    assert_eq!(wal.entries(1, 100).unwrap(), entries(1, 100, 1));
    assert_eq!(wal.entries(40, 42).unwrap(), entries(40, 42, 1));
    assert_eq!(wal.hard_state(), HardState { current_term: 3, voted_for: Some(2), commit_index: 90 });
    assert!(wal.torn_tail().is_none());
    assert!(matches!(wal.entries(90, 101), Err(StorageError::OutOfRange { index: 101, .. })));
}

/// Raft section 5.3: a conflicting suffix is replaced. Here across segment boundaries, and
/// without rewriting a byte: a new segment supersedes the old suffix.
#[test]
fn truncating_a_suffix_supersedes_old_entries_across_segments() {
    let d = TempDir::new("truncate");
    {
        let mut wal = open(&d.0, 2_000).unwrap();
        for lo in (1..=200).step_by(10) {
            wal.append(&entries(lo, lo + 9, 1)).unwrap();
        }
        wal.sync().unwrap();
        assert!(wal.segment_count() > 3);
        wal.append(&entries(57, 70, 2)).unwrap();
        wal.sync().unwrap();
        assert_eq!(wal.last_index(), 70);
        assert_eq!(wal.term(56), Some(1));
        assert_eq!(wal.term(57), Some(2));
        assert_eq!(wal.term(71), None, "superseded entries are gone");
    }
    let wal = open(&d.0, 2_000).unwrap();
    let mut expect = entries(1, 56, 1);
    expect.extend(entries(57, 70, 2));
    assert_eq!(wal.entries(1, 70).unwrap(), expect);
    assert_eq!(wal.last_index(), 70);
}

#[test]
fn compaction_removes_whole_segments_only() {
    let d = TempDir::new("compact");
    let mut wal = open(&d.0, 1_500).unwrap();
    wal.append(&entries(1, 300, 1)).unwrap();
    for lo in (301..=600).step_by(20) {
        wal.append(&entries(lo, lo + 19, 1)).unwrap();
    }
    wal.sync().unwrap();
    let before = segment_files(&d.0).len();
    wal.compact(450).unwrap();
    assert_eq!(wal.first_index(), 451);
    // The files go on a thread of their own, which dropping the log waits for.
    drop(wal);
    let after = segment_files(&d.0).len();
    assert!(after < before, "segments holding only compacted entries are removed ({before} -> {after})");
    let wal = Wal::open(StdFs, &d.0, WalOptions::with_segment_bytes(1_500), 450).unwrap();
    assert_eq!((wal.first_index(), wal.last_index()), (451, 600));
    assert_eq!(wal.entries(451, 600).unwrap(), entries(451, 600, 1));
}

#[test]
fn reset_for_an_installed_snapshot_discards_the_log() {
    let d = TempDir::new("reset");
    let mut wal = open(&d.0, 1_000).unwrap();
    wal.append(&entries(1, 50, 1)).unwrap();
    wal.reset(80).unwrap();
    wal.append(&entries(81, 85, 3)).unwrap();
    wal.sync().unwrap();
    drop(wal);
    let wal = Wal::open(StdFs, &d.0, WalOptions::with_segment_bytes(1_000), 80).unwrap();
    assert_eq!((wal.first_index(), wal.last_index()), (81, 85));
    assert_eq!(wal.entries(81, 85).unwrap(), entries(81, 85, 3));
}

/// A crash can cut the last write at any byte, and leave the rest of the preallocated segment
/// zero or not. Recovery must keep every synced entry, return nothing after the cut, and report
/// the cut of a partial record.
#[test]
fn a_torn_tail_is_cut_at_every_possible_byte() {
    let d = TempDir::new("torn");
    {
        let mut wal = open(&d.0, 1 << 16).unwrap();
        wal.append(&entries(1, 20, 1)).unwrap();
        wal.sync().unwrap();
    }
    let seg = segment_files(&d.0).pop().unwrap();
    let synced = logical_len(&fs::read(&seg).unwrap());
    {
        let mut wal = open(&d.0, 1 << 16).unwrap();
        wal.append(&entries(21, 23, 1)).unwrap();
        wal.set_hard_state(HardState { current_term: 1, voted_for: None, commit_index: 23 }).unwrap();
        wal.sync().unwrap();
    }
    let full = fs::read(&seg).unwrap();
    let written = logical_len(&full);
    assert!(written > synced + 100, "the second write is in the file");
    for cut in synced..written {
        for zero_padded in [false, true] {
            let mut torn = full[..cut].to_vec();
            if zero_padded {
                torn.resize(full.len(), 0);
            }
            fs::write(&seg, &torn).unwrap();
            let wal = open(&d.0, 1 << 16).unwrap();
            let last = wal.last_index();
            assert!((20..=23).contains(&last), "cut at {cut}: last {last}");
            assert_eq!(wal.entries(1, last).unwrap(), entries(1, last, 1), "cut at {cut}");
            let kept = logical_len(&fs::read(&seg).unwrap());
            match wal.torn_tail() {
                Some(t) => {
                    assert!(t.offset as usize == kept && kept >= synced && kept < cut, "cut at {cut}: {t:?}")
                }
                None => assert_eq!(kept, cut, "cut at {cut} fell on a record boundary"),
            }
        }
    }
    fs::write(&seg, &full).unwrap();
}

/// Damage before the tail is never mistaken for a torn write: the log refuses to open and names
/// the file and offset.
#[test]
fn a_flipped_bit_before_the_tail_stops_recovery_with_file_and_offset() {
    let d = TempDir::new("bitflip");
    {
        let mut wal = open(&d.0, 1 << 20).unwrap();
        wal.append(&entries(1, 30, 1)).unwrap();
        wal.sync().unwrap();
    }
    let seg = segment_files(&d.0).pop().unwrap();
    let good = fs::read(&seg).unwrap();
    let mut caught = 0;
    // Flip one bit at a time inside the records of entries 1..29 (the last record is the tail).
    for pos in (80..logical_len(&good) - 80).step_by(7) {
        let mut bad = good.clone();
        bad[pos] ^= 0x10;
        fs::write(&seg, &bad).unwrap();
        match open(&d.0, 1 << 20) {
            Err(StorageError::Corrupt { path, offset, .. }) => {
                assert_eq!(path, seg);
                assert!(
                    offset as usize <= pos,
                    "offset {offset} names the damaged record at or before {pos}"
                );
                caught += 1;
            }
            Err(e) => panic!("flip at {pos}: unexpected error {e}"),
            Ok(wal) => panic!("flip at {pos} went unnoticed: last {}", wal.last_index()),
        }
        assert_eq!(fs::read(&seg).unwrap(), bad, "a refused log is left untouched");
    }
    assert!(caught > 50);
    fs::write(&seg, &good).unwrap();
    assert_eq!(open(&d.0, 1 << 20).unwrap().last_index(), 30);
}

/// Zero-filled space after the last record (preallocated, or left by a crash) is where the log
/// continues: the next write goes there, over the zeros, never after them.
#[test]
fn appends_continue_over_zero_filled_space() {
    let d = TempDir::new("zeros");
    let options = WalOptions { segment_bytes: 1 << 20, preallocate: false };
    {
        let mut wal = Wal::open(StdFs, &d.0, options, 0).unwrap();
        wal.append(&entries(1, 10, 1)).unwrap();
        wal.sync().unwrap();
    }
    let seg = segment_files(&d.0).pop().unwrap();
    let mut data = fs::read(&seg).unwrap();
    let clean_len = data.len();
    data.extend_from_slice(&[0u8; 37]);
    fs::write(&seg, &data).unwrap();
    {
        let mut wal = Wal::open(StdFs, &d.0, options, 0).unwrap();
        assert!(wal.torn_tail().is_none(), "zeros are not damage");
        wal.append(&entries(11, 20, 1)).unwrap();
        wal.sync().unwrap();
    }
    let after = fs::read(&seg).unwrap();
    assert!(after[clean_len..clean_len + 9].iter().any(|&b| b != 0), "the write went over the zeros");
    let wal = Wal::open(StdFs, &d.0, options, 0).unwrap();
    assert_eq!(wal.entries(1, 20).unwrap(), entries(1, 20, 1));
}

/// Segments are zero-filled when created, so writes overwrite allocated space.
#[test]
fn new_segments_are_preallocated() {
    let d = TempDir::new("prealloc");
    let mut wal = open(&d.0, 64 << 10).unwrap();
    wal.append(&entries(1, 3, 1)).unwrap();
    wal.sync().unwrap();
    let seg = segment_files(&d.0).pop().unwrap();
    assert_eq!(fs::metadata(&seg).unwrap().len(), 64 << 10);
}

#[test]
fn a_missing_segment_is_an_error() {
    let d = TempDir::new("missing");
    {
        let mut wal = open(&d.0, 1_000).unwrap();
        for lo in (1..=100).step_by(10) {
            wal.append(&entries(lo, lo + 9, 1)).unwrap();
        }
        wal.sync().unwrap();
    }
    let segs = segment_files(&d.0);
    assert!(segs.len() >= 3);
    fs::remove_file(&segs[1]).unwrap();
    match open(&d.0, 1_000) {
        Err(StorageError::MissingSegment { path, expected, found }) => {
            assert_eq!(path, segs[2]);
            assert!(expected < found);
        }
        other => panic!("expected a missing-segment error, got {:?}", other.map(|w| w.last_index())),
    }
}

#[test]
fn a_damaged_middle_segment_is_an_error_even_at_its_end() {
    let d = TempDir::new("midseg");
    {
        let mut wal = open(&d.0, 1_000).unwrap();
        for lo in (1..=100).step_by(10) {
            wal.append(&entries(lo, lo + 9, 1)).unwrap();
        }
        wal.sync().unwrap();
    }
    let segs = segment_files(&d.0);
    let mut data = fs::read(&segs[0]).unwrap();
    // The last record loses its last 3 bytes (a log written past the page cache is padded with
    // zeros to a whole block, so the file's own end may be zeros).
    let records_end = data.iter().rposition(|&b| b != 0).expect("records") + 1;
    data.truncate(records_end - 3);
    fs::write(&segs[0], &data).unwrap();
    assert!(matches!(open(&d.0, 1_000), Err(StorageError::Corrupt { .. })));
}

#[test]
fn appends_that_leave_gaps_or_go_below_the_floor_are_refused() {
    let d = TempDir::new("gaps");
    let mut wal = Wal::open(StdFs, &d.0, WalOptions::default(), 10).unwrap();
    assert!(matches!(wal.append(&[entry(5, 1)]), Err(StorageError::Invalid(_))));
    assert!(matches!(wal.append(&[entry(13, 1)]), Err(StorageError::Invalid(_))));
    assert!(matches!(wal.append(&[entry(11, 1), entry(13, 1)]), Err(StorageError::Invalid(_))));
    wal.append(&[entry(11, 1)]).unwrap();
    assert_eq!(wal.last_index(), 11);
}

/// Segments are zero-filled ahead of time (a spare file), so a roll renames the spare into
/// place rather than writing a whole segment of zeros on the append path. Every segment still
/// has the full preallocated length, and a fresh spare follows each roll.
#[test]
fn rolls_take_the_spare_made_ahead_of_time() {
    let d = TempDir::new("spare-roll");
    let spare = d.0.join(SPARE_NAME);
    {
        let mut wal = open(&d.0, 4_096).unwrap();
        for lo in (1..=300).step_by(10) {
            wal.append(&entries(lo, lo + 9, 1)).unwrap();
        }
        wal.sync().unwrap();
        assert!(wal.rolls() >= 3, "rolled {} times", wal.rolls());
        // Dropping the log waits for the fill under way.
    }
    let data = fs::read(&spare).unwrap();
    assert_eq!(data.len(), 4_096, "the next spare is filled to a segment's length");
    assert!(data.iter().all(|&b| b == 0));
    for path in segment_files(&d.0) {
        assert!(fs::metadata(&path).unwrap().len() >= 4_096, "{} preallocated", path.display());
    }
    let wal = open(&d.0, 4_096).unwrap();
    assert_eq!((wal.first_index(), wal.last_index()), (1, 300));
    assert_eq!(wal.entries(1, 300).unwrap(), entries(1, 300, 1));
    assert!(wal.torn_tail().is_none());
}

/// A crash can leave the spare half-filled, or holding the first records of the next segment
/// (written and synced just before the rename that a crash cut off). It is not a segment:
/// recovery ignores and replaces it, and the log is intact and keeps growing through it.
#[test]
fn a_spare_left_by_a_crash_is_ignored_and_replaced() {
    let d = TempDir::new("spare-crash");
    let spare = d.0.join(SPARE_NAME);
    {
        let mut wal = open(&d.0, 4_096).unwrap();
        wal.append(&entries(1, 100, 1)).unwrap();
        wal.set_hard_state(HardState { current_term: 1, voted_for: Some(1), commit_index: 100 }).unwrap();
        wal.sync().unwrap();
    }
    let newest = segment_files(&d.0).pop().unwrap();
    let mut head = fs::read(&newest).unwrap();
    head.truncate(logical_len(&head).min(200));
    let leftovers: [(&str, Vec<u8>); 3] = [
        ("half-filled", vec![0; 2_048]),
        ("empty", Vec::new()),
        ("the next segment's first records", head.into_iter().chain(std::iter::repeat_n(0, 1_000)).collect()),
    ];
    let mut last = 100;
    for (what, bytes) in leftovers {
        fs::write(&spare, &bytes).unwrap();
        let mut wal = open(&d.0, 4_096).unwrap_or_else(|e| panic!("{what}: recovery failed: {e}"));
        assert!(wal.torn_tail().is_none(), "{what}: the spare is not part of the log");
        assert_eq!((wal.first_index(), wal.last_index()), (1, last), "{what}");
        assert_eq!(wal.entries(1, last).unwrap(), entries(1, last, 1), "{what}");
        assert_eq!(wal.hard_state().commit_index, 100, "{what}");
        // The log goes on, through rolls into fresh spares.
        wal.append(&entries(last + 1, last + 60, 1)).unwrap();
        wal.sync().unwrap();
        last += 60;
        drop(wal);
        assert_eq!(fs::read(&spare).unwrap(), vec![0; 4_096], "{what}: a fresh spare replaced it");
    }
    let wal = open(&d.0, 4_096).unwrap();
    assert_eq!(wal.entries(1, last).unwrap(), entries(1, last, 1));
}

/// Without preallocation there is no spare, and one left from before is removed.
#[test]
fn without_preallocation_no_spare_is_kept() {
    let d = TempDir::new("spare-off");
    let spare = d.0.join(SPARE_NAME);
    fs::write(&spare, vec![0; 100]).unwrap();
    let options = WalOptions { segment_bytes: 2_000, preallocate: false };
    let mut wal = Wal::open(StdFs, &d.0, options, 0).unwrap();
    for lo in (1..=100).step_by(10) {
        wal.append(&entries(lo, lo + 9, 1)).unwrap();
    }
    wal.sync().unwrap();
    assert!(wal.rolls() > 0);
    drop(wal);
    assert!(!spare.exists());
    let wal = Wal::open(StdFs, &d.0, options, 0).unwrap();
    assert_eq!(wal.entries(1, 100).unwrap(), entries(1, 100, 1));
}

/// A spare's zero fill on the real file system (written past the page cache where it can): the
/// file holds exactly `len` zero bytes afterwards, whatever a file of that name held before (a
/// spare left by a crash is filled again), including a length that is no whole number of blocks.
#[test]
fn a_zero_fill_leaves_exactly_len_zeros_over_whatever_was_there() {
    let d = TempDir::new("zero-fill");
    let spare = d.0.join(SPARE_NAME);
    for len in [(3 << 20) + 4096, (1 << 20) + 7, 0] {
        fs::write(&spare, vec![0xA5u8; 5 << 20]).unwrap();
        balsa_storage::vfs::zero_fill_now(&StdFs, &spare, len).unwrap();
        let data = fs::read(&spare).unwrap();
        assert!(
            data.len() as u64 >= len && data.len() as u64 <= len.next_multiple_of(4096),
            "{len}: {}",
            data.len()
        );
        assert!(data.iter().all(|&b| b == 0), "{len}: a byte of the old content survived");
    }
}
