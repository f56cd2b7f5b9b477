//! A search that runs too long says "unknown", never "ok".

mod common;

use balsa_lincheck::register::Register;
use balsa_lincheck::{check, Verdict};
use common::*;
use std::time::{Duration, Instant};

/// 40 fully concurrent writes and, concurrent with them, reads that each rule out a different
/// few orders. Deciding it means visiting a large part of 2^40 subsets: far beyond any budget.
fn pathological() -> Vec<RegOp> {
    let mut history: Vec<RegOp> = (0..40).map(|i| write(i, 0, 1_000, "x", &format!("v{i}"))).collect();
    history.push(read(99, 0, 1_000, "x", Some("v7")));
    history.push(read(98, 0, 1_000, "x", Some("v3")));
    history.push(read(97, 2_000, 3_000, "x", Some("never written")));
    history
}

#[test]
fn a_tiny_budget_gives_unknown() {
    let started = Instant::now();
    let verdict = check(&Register, &pathological(), Duration::from_millis(100));
    let elapsed = started.elapsed();
    println!("{verdict} after {elapsed:?}");
    assert!(matches!(&verdict, Verdict::Unknown { reason } if reason.contains("budget")), "{verdict}");
    // It stops close to the deadline, not whenever the search happens to finish.
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
}

#[test]
fn a_zero_budget_never_says_ok_for_work_left_undone() {
    let history = linearizable_register_history(&mut Rng(1), 2_000, 4, 1, 0);
    let verdict = check(&Register, &history, Duration::ZERO);
    // With no time at all, the only acceptable answers are "unknown" or a real "ok" found
    // before the first clock check (256 steps, fewer than 2,000 operations need).
    assert!(verdict.is_unknown(), "{verdict}");
}
