//! The size target: 10,000 operations from 10 concurrent clients, checked in seconds.
//! Run with `--nocapture` to see the times (recorded in the crate docs).

mod common;

use balsa_lincheck::register::{Output, Register};
use balsa_lincheck::{check, Verdict};
use common::*;
use std::time::{Duration, Instant};

const BUDGET: Duration = Duration::from_secs(120);
const BOUND: Duration = Duration::from_secs(60);

#[test]
fn ten_thousand_operations_from_ten_clients() {
    let mut rng = Rng(2024);
    let mut history = linearizable_register_history(&mut rng, 10_000, 10, 8, 2);
    let unknown = history.iter().filter(|op| op.return_ns.is_none()).count();

    let started = Instant::now();
    let verdict = check(&Register, &history, BUDGET);
    let elapsed = started.elapsed();
    println!("10,000 ops ({unknown} unknown outcome), 10 clients, 8 keys: {verdict} in {elapsed:?}");
    assert_eq!(verdict, Verdict::Ok);
    assert!(elapsed < BOUND, "took {elapsed:?}");

    // Change one read late in the history to a value no write ever wrote.
    let victim = (history.len() * 9 / 10..history.len())
        .find(|&i| matches!(history[i].output, Some(Output::Read(Some(_)))))
        .expect("a read that saw a value");
    history[victim].output = Some(Output::Read(Some("never written".into())));
    let started = Instant::now();
    let verdict = check(&Register, &history, BUDGET);
    let elapsed = started.elapsed();
    println!("the same with one read changed: illegal={} in {elapsed:?}", verdict.is_illegal());
    match verdict {
        Verdict::Illegal(counterexample) => {
            assert!(counterexample.stuck.iter().any(|op| op.index == victim));
        }
        other => panic!("expected Illegal, got {other}"),
    }
    assert!(elapsed < BOUND, "took {elapsed:?}");
}

/// A long history on one key, as a long chaos run gives (400,000 operations a key in 12 minutes):
/// the memo must not grow with the square of the history's length. Keyed by bitsets, one entry per
/// step cost n/8 bytes — 100,000 operations came to over a gigabyte and a quadratic search; with
/// fingerprints this checks in seconds.
#[test]
fn a_hundred_thousand_operations_on_one_key() {
    let mut rng = Rng(7);
    let history = linearizable_register_history(&mut rng, 100_000, 10, 1, 0);
    let started = Instant::now();
    let verdict = check(&Register, &history, BUDGET);
    let elapsed = started.elapsed();
    let peak = peak_resident_mib();
    println!("100,000 ops, 10 clients, 1 key: {verdict} in {elapsed:?}, peak resident {peak} MiB");
    assert_eq!(verdict, Verdict::Ok);
    assert!(elapsed < BOUND, "took {elapsed:?}");
    // Bitset keys needed several GiB here; fingerprints need a few hundred MiB.
    assert!(peak < 1024, "the check's memory grew to {peak} MiB");
}

/// The process's peak resident size (Linux `VmHWM`), MiB.
fn peak_resident_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("Linux /proc");
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM");
    line.split_whitespace().nth(1).and_then(|kb| kb.parse::<u64>().ok()).expect("a size in kB") / 1024
}
