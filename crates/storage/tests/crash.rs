//! A writer process killed with SIGKILL at random moments: on restart every record it reported
//! durable is there, intact, and nothing damaged is returned after it.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use balsa_raft::rng::SplitMix64;
use balsa_storage::{StdFs, Wal, WalOptions};
use common::TempDir;

/// Must match `payload` in src/main.rs (the crash writer).
fn payload(index: u64) -> Vec<u8> {
    let len = 16 + (index % 200) as usize;
    index.to_le_bytes().iter().copied().cycle().take(len).collect()
}

#[test]
fn sigkill_at_random_moments_loses_nothing_synced() {
    let d = TempDir::new("sigkill");
    let mut rng = SplitMix64::new(0xC0FFEE);
    let mut durable = 0u64;
    let mut kills = 0;
    let started = Instant::now();
    for round in 0..25 {
        let mut child = Command::new(env!("CARGO_BIN_EXE_balsa-storage"))
            .args(["crash-writer", d.0.to_str().unwrap(), "8192"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the crash writer");
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            BufReader::new(stdout).lines().map_while(Result::ok).filter_map(|l| l.parse::<u64>().ok()).last()
        });
        std::thread::sleep(Duration::from_millis(rng.range(5, 60)));
        child.kill().expect("SIGKILL");
        let status = child.wait().unwrap();
        assert!(!status.success(), "round {round}: the writer must have been killed, not have exited");
        kills += 1;
        if let Some(last) = reader.join().unwrap() {
            assert!(last >= durable, "durable index went backwards");
            durable = last;
        }
        let wal = Wal::open(StdFs, &d.0.join("wal"), WalOptions::with_segment_bytes(8192), 0)
            .unwrap_or_else(|e| panic!("round {round}: recovery failed: {e}"));
        let last = wal.last_index();
        assert!(last >= durable, "round {round}: recovered up to {last}, but {durable} was reported durable");
        for (k, e) in wal.entries(1, last).unwrap().iter().enumerate() {
            assert_eq!(e.index, k as u64 + 1);
            assert_eq!(&e.data[..], &payload(e.index)[..], "round {round}: entry {} damaged", e.index);
        }
        assert!(wal.hard_state().commit_index <= last);
    }
    assert_eq!(kills, 25);
    assert!(durable > 1_000, "the writer made progress: {durable}");
    assert!(started.elapsed() < Duration::from_secs(60));
}
