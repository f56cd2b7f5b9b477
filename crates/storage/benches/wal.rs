//! WAL benchmarks, side by side with the floor (a raw write + fdatasync loop) on the same disk in
//! the same run.
//!
//! ```text
//! cargo bench -p balsa-storage --bench wal -- [--dir PATH] [--quick] [--recovery-gib N]
//! ```

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use balsa_raft::{Entry, EntryKind};
use balsa_storage::group::GroupCommitLog;
use balsa_storage::{StdFs, Wal, WalOptions};
use bytes::Bytes;

const ENTRY_BYTES: usize = 256;

struct Args {
    dir: PathBuf,
    quick: bool,
    recovery_gib: f64,
}

fn args() -> Args {
    let mut a = Args { dir: PathBuf::from("target/bench-wal"), quick: false, recovery_gib: 1.0 };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--dir" => a.dir = PathBuf::from(it.next().expect("--dir PATH")),
            "--quick" => a.quick = true,
            "--recovery-gib" => {
                a.recovery_gib = it.next().and_then(|v| v.parse().ok()).expect("--recovery-gib N")
            }
            "--bench" => {}
            other => panic!("unknown argument {other}"),
        }
    }
    // `cargo test --benches` runs this with no arguments: keep that quick.
    if std::env::args().len() == 1 {
        a.quick = true;
    }
    a
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn report(name: &str, mut lat: Vec<Duration>, elapsed: Duration) -> Duration {
    lat.sort_unstable();
    let p50 = percentile(&lat, 0.50);
    println!(
        "{name:<34} {:>9.0} ops/s   p50 {:>7.1} us   p99 {:>7.1} us   max {:>8.1} us",
        lat.len() as f64 / elapsed.as_secs_f64(),
        p50.as_secs_f64() * 1e6,
        percentile(&lat, 0.99).as_secs_f64() * 1e6,
        lat.last().unwrap().as_secs_f64() * 1e6
    );
    p50
}

fn fresh(dir: &Path, name: &str) -> PathBuf {
    let d = dir.join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The floor: append 256 bytes and fdatasync, one at a time.
fn raw_fdatasync(dir: &Path, n: usize) -> Duration {
    let d = fresh(dir, "raw");
    let mut f = OpenOptions::new().create(true).append(true).open(d.join("raw.log")).unwrap();
    let buf = [7u8; ENTRY_BYTES];
    let mut lat = Vec::with_capacity(n);
    let start = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        f.write_all(&buf).unwrap();
        f.sync_data().unwrap();
        lat.push(t.elapsed());
    }
    report("raw write+fdatasync (floor)", lat, start.elapsed())
}

fn entry(index: u64) -> Entry {
    Entry {
        term: 1,
        index,
        kind: EntryKind::Normal,
        data: Bytes::from(vec![(index % 251) as u8; ENTRY_BYTES]),
    }
}

/// One appender: append one entry, sync, repeat.
fn wal_single(dir: &Path, n: usize) -> Duration {
    let d = fresh(dir, "single");
    let mut wal = Wal::open(StdFs, &d, WalOptions::default(), 0).unwrap();
    let mut lat = Vec::with_capacity(n);
    let start = Instant::now();
    for i in 1..=n as u64 {
        let e = [entry(i)];
        let t = Instant::now();
        wal.append(&e).unwrap();
        wal.sync().unwrap();
        lat.push(t.elapsed());
    }
    report("wal, 1 appender", lat, start.elapsed())
}

/// Many appenders, each waiting for its entry to be durable before the next.
fn wal_concurrent(dir: &Path, appenders: usize, duration: Duration) {
    let d = fresh(dir, "group");
    let wal = Wal::open(StdFs, &d, WalOptions::default(), 0).unwrap();
    let log = Arc::new(GroupCommitLog::new(wal));
    let start = Instant::now();
    let handles: Vec<_> = (0..appenders)
        .map(|t| {
            let log = log.clone();
            std::thread::spawn(move || {
                let payload = Bytes::from(vec![t as u8; ENTRY_BYTES]);
                let mut lat = Vec::new();
                while start.elapsed() < duration {
                    let s = Instant::now();
                    log.append_durable(1, std::slice::from_ref(&payload)).unwrap();
                    lat.push(s.elapsed());
                }
                lat
            })
        })
        .collect();
    let lat: Vec<Duration> = handles.into_iter().flat_map(|h| h.join().unwrap()).collect();
    let elapsed = start.elapsed();
    let (appends, syncs) = log.counters();
    report(&format!("wal, {appenders} appenders (group commit)"), lat, elapsed);
    println!(
        "{:<34} {:.1} appends per fdatasync ({appends} appends, {syncs} syncs)",
        "",
        appends as f64 / syncs as f64
    );
}

/// Writes `gib` GiB of 256-byte entries, then times recovery (scan, checksums, index).
fn recovery(dir: &Path, gib: f64) {
    let d = fresh(dir, "recovery");
    let count = (gib * (1u64 << 30) as f64 / (ENTRY_BYTES + 30) as f64) as u64;
    {
        let mut wal = Wal::open(StdFs, &d, WalOptions::default(), 0).unwrap();
        let mut batch = Vec::with_capacity(4096);
        for i in 1..=count {
            batch.push(entry(i));
            if batch.len() == 4096 {
                wal.append(&batch).unwrap();
                batch.clear();
            }
        }
        wal.append(&batch).unwrap();
        wal.sync().unwrap();
    }
    let bytes: u64 = std::fs::read_dir(&d).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum();
    for pass in ["page cache warm", "page cache dropped"] {
        if pass == "page cache dropped" && std::fs::write("/proc/sys/vm/drop_caches", "3").is_err() {
            println!("recovery (page cache dropped)      skipped: cannot drop caches (not root)");
            continue;
        }
        let t = Instant::now();
        let wal = Wal::open(StdFs, &d, WalOptions::default(), 0).unwrap();
        let elapsed = t.elapsed();
        assert_eq!(wal.last_index(), count);
        println!(
            "recovery of {:.2} GiB ({count} entries, {}): {:.2} s ({:.0} MiB/s)",
            bytes as f64 / (1u64 << 30) as f64,
            pass,
            elapsed.as_secs_f64(),
            bytes as f64 / (1 << 20) as f64 / elapsed.as_secs_f64()
        );
    }
    let _ = std::fs::remove_dir_all(&d);
}

fn main() {
    let a = args();
    std::fs::create_dir_all(&a.dir).unwrap();
    let (n, secs, gib) = if a.quick { (200, 1, 0.01) } else { (5_000, 5, a.recovery_gib) };
    println!("balsa-storage WAL benchmark in {} ({ENTRY_BYTES}-byte entries)", a.dir.display());
    let floor = raw_fdatasync(&a.dir, n);
    let single = wal_single(&a.dir, n);
    println!(
        "{:<34} {:.2}x the raw fdatasync p50",
        "wal 1-appender p50 is",
        single.as_secs_f64() / floor.as_secs_f64()
    );
    wal_concurrent(&a.dir, 64, Duration::from_secs(secs));
    recovery(&a.dir, gib);
    let _ = std::fs::remove_dir_all(&a.dir);
}
