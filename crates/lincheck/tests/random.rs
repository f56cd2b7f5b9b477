//! Randomized self-tests: the search against a brute-force reference on thousands of small
//! histories, and on larger histories that are linearizable by construction.

mod common;

use balsa_lincheck::register::{Input, Output, Register};
use balsa_lincheck::{check, Operation, Verdict};
use common::*;
use std::time::Duration;

const BUDGET: Duration = Duration::from_secs(30);

/// A small history with random intervals and random answers from a tiny value set, so that
/// roughly half are linearizable and half are not.
fn random_small_history(rng: &mut Rng, len: usize, unknown_percent: u64) -> Vec<RegOp> {
    let value = |rng: &mut Rng| ["a", "b", "c"][rng.below(3) as usize].to_string();
    (0..len)
        .map(|_| {
            // Coarse times make ties (same-instant return and call) common.
            let call = rng.below(20);
            let ret = call + rng.below(8);
            let key = ["x", "y"][rng.below(2) as usize].to_string();
            let (input, output) = match rng.below(3) {
                0 => {
                    let seen = (!rng.chance(25)).then(|| value(rng));
                    (Input::Read { key }, Output::Read(seen))
                }
                1 => {
                    let value = value(rng);
                    (Input::Write { key, value }, Output::Write)
                }
                _ => {
                    let expected = (!rng.chance(30)).then(|| value(rng));
                    let new = value(rng);
                    let ok = rng.chance(50);
                    (Input::Cas { key, expected, new }, Output::Cas(ok))
                }
            };
            if rng.chance(unknown_percent) {
                Operation::unknown(rng.below(4), call, input)
            } else {
                Operation::completed(rng.below(4), call, ret, input, output)
            }
        })
        .collect()
}

#[test]
fn search_agrees_with_brute_force_on_small_random_histories() {
    let mut rng = Rng(0x5eed);
    let (mut ok, mut illegal) = (0, 0);
    for case in 0..4_000 {
        let len = 1 + rng.below(8) as usize;
        let history = random_small_history(&mut rng, len, 15);
        if agrees_with_brute_force(case, &history) {
            ok += 1;
        } else {
            illegal += 1;
        }
    }
    println!("{ok} linearizable, {illegal} not");
    // Both kinds must be well represented, or the test proves little.
    assert!(ok > 800 && illegal > 800, "{ok} ok, {illegal} illegal");
}

/// Whether `history` is linearizable, after checking that the search and brute force agree
/// (a disagreement fails the test, printing the history).
fn agrees_with_brute_force(case: usize, history: &[Operation<Input, Output>]) -> bool {
    let expected = brute_force(&Register, history);
    let verdict = check(&Register, history, BUDGET);
    match (&verdict, expected) {
        (Verdict::Ok, true) | (Verdict::Illegal(_), false) => expected,
        _ => panic!(
            "case {case}: search says {verdict}, brute force says linearizable={expected}\n{}",
            balsa_lincheck::to_json_lines(history)
        ),
    }
}

/// Half the operations with unknown outcomes, on one key: the memo's sets of optional
/// operations are large and varied, so a wrong subsumption test (skipping a node that has more
/// freedom than the one stored) shows up as a wrong verdict.
#[test]
fn search_agrees_with_brute_force_when_half_the_outcomes_are_unknown() {
    let mut rng = Rng(0x0dd5);
    let (mut ok, mut illegal) = (0, 0);
    for case in 0..3_000 {
        let len = 2 + rng.below(7) as usize;
        let mut history = random_small_history(&mut rng, len, 50);
        for op in &mut history {
            // One key, so every operation is in the same partition.
            match &mut op.input {
                Input::Read { key } | Input::Write { key, .. } | Input::Cas { key, .. } => *key = "x".into(),
            }
        }
        if agrees_with_brute_force(case, &history) {
            ok += 1;
        } else {
            illegal += 1;
        }
    }
    println!("{ok} linearizable, {illegal} not");
    assert!(ok > 600 && illegal > 600, "{ok} ok, {illegal} illegal");
}

#[test]
fn corrupted_linearizable_histories_agree_with_brute_force() {
    let mut rng = Rng(42);
    let mut illegal = 0;
    for case in 0..2_000 {
        let mut history = linearizable_register_history(&mut rng, 8, 3, 2, 15);
        assert!(check(&Register, &history, BUDGET).is_ok(), "case {case}");
        // Corrupt one known answer.
        let victim = rng.below(history.len() as u64) as usize;
        match &mut history[victim].output {
            Some(Output::Read(seen)) => {
                *seen = match rng.below(3) {
                    0 => None,
                    n => Some(format!("v{}", rng.below(8) + n)),
                }
            }
            Some(Output::Cas(succeeded)) => *succeeded = !*succeeded,
            _ => continue,
        }
        let expected = brute_force(&Register, &history);
        let verdict = check(&Register, &history, BUDGET);
        assert_eq!(verdict.is_ok(), expected, "case {case}: {verdict}");
        assert_eq!(verdict.is_illegal(), !expected, "case {case}: {verdict}");
        illegal += usize::from(!expected);
    }
    assert!(illegal > 300, "only {illegal} corruptions were detectable");
}

#[test]
fn generated_linearizable_histories_check_ok() {
    let mut rng = Rng(7);
    for case in 0..200 {
        let clients = 1 + rng.below(6);
        let history = linearizable_register_history(&mut rng, 300, clients, 3, 5);
        let verdict = check(&Register, &history, BUDGET);
        assert!(verdict.is_ok(), "case {case}: {verdict}");
    }
}
