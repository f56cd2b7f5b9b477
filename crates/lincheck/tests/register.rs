//! Hand-made register histories, each with the verdict a person can check on paper.

mod common;

use balsa_lincheck::register::Register;
use balsa_lincheck::{check, Counterexample, Operation, Verdict};
use common::*;
use std::time::Duration;

const BUDGET: Duration = Duration::from_secs(10);

fn verdict(history: &[RegOp]) -> Verdict {
    check(&Register, history, BUDGET)
}

fn illegal(history: &[RegOp]) -> Counterexample {
    match verdict(history) {
        Verdict::Illegal(counterexample) => {
            println!("{counterexample}");
            counterexample
        }
        other => panic!("expected Illegal, got {other}"),
    }
}

fn stuck_indices(counterexample: &Counterexample) -> Vec<usize> {
    counterexample.stuck.iter().map(|op| op.index).collect()
}

#[test]
fn sequential_history_is_linearizable() {
    let history = vec![
        read(1, 0, 1, "x", None),
        write(1, 2, 3, "x", "a"),
        read(2, 4, 5, "x", Some("a")),
        cas(2, 6, 7, "x", Some("a"), "b", true),
        cas(1, 8, 9, "x", Some("a"), "c", false),
        read(1, 10, 11, "x", Some("b")),
    ];
    assert_eq!(verdict(&history), Verdict::Ok);
}

#[test]
fn overlapping_writes_may_be_read_in_either_order() {
    for (first, second) in [("a", "b"), ("b", "a")] {
        let history = vec![
            write(1, 0, 10, "x", "a"),
            write(2, 0, 10, "x", "b"),
            read(3, 20, 30, "x", Some(first)),
            read(3, 40, 50, "x", Some(first)),
        ];
        assert_eq!(verdict(&history), Verdict::Ok, "final value {first}");
        // A read concurrent with both writes may see the other value in between.
        let history = vec![
            write(1, 0, 10, "x", "a"),
            write(2, 0, 10, "x", "b"),
            read(3, 0, 10, "x", Some(second)),
            read(3, 20, 30, "x", Some(first)),
        ];
        assert_eq!(verdict(&history), Verdict::Ok);
    }
}

#[test]
fn cas_race_where_exactly_one_wins() {
    let history = vec![
        write(1, 0, 1, "x", "0"),
        cas(1, 10, 20, "x", Some("0"), "a", true),
        cas(2, 10, 20, "x", Some("0"), "b", false),
        read(3, 30, 40, "x", Some("a")),
    ];
    assert_eq!(verdict(&history), Verdict::Ok);
}

#[test]
fn two_cas_from_the_same_expected_value_cannot_both_succeed() {
    let history = vec![
        write(1, 0, 1, "x", "0"),
        cas(1, 10, 20, "x", Some("0"), "a", true),
        cas(2, 10, 20, "x", Some("0"), "b", true),
    ];
    let counterexample = illegal(&history);
    assert_eq!(counterexample.prefix.len(), 2);
    let stuck = stuck_indices(&counterexample);
    assert!(stuck.contains(&1) || stuck.contains(&2), "{stuck:?}");
    assert!(counterexample.stuck[0].text.contains("cas(x"));
}

#[test]
fn stale_read_after_a_completed_write_is_illegal() {
    let history =
        vec![write(1, 0, 10, "x", "a"), write(1, 20, 30, "x", "b"), read(2, 40, 50, "x", Some("a"))];
    let counterexample = illegal(&history);
    assert_eq!(stuck_indices(&counterexample), vec![2]);
    assert!(counterexample.stuck[0].text.contains("read(x) -> \"a\""));
    assert_eq!(counterexample.prefix.len(), 2);
}

#[test]
fn a_read_of_a_value_never_written_is_illegal() {
    let history = vec![write(1, 0, 10, "x", "a"), read(2, 5, 15, "x", Some("zzz"))];
    assert_eq!(stuck_indices(&illegal(&history)), vec![1]);
}

#[test]
fn reads_must_not_go_back_in_time() {
    // The writes overlap, so either order is fine, but once a read returned "b" (the newer
    // value in that order), a later read must not see "a" again.
    let history = vec![
        write(1, 0, 100, "x", "a"),
        write(2, 0, 100, "x", "b"),
        read(3, 10, 20, "x", Some("a")),
        read(3, 30, 40, "x", Some("b")),
        read(3, 50, 60, "x", Some("a")),
    ];
    let counterexample = illegal(&history);
    assert!(stuck_indices(&counterexample).contains(&4));
}

#[test]
fn keys_are_independent() {
    let history = vec![
        write(1, 0, 10, "x", "a"),
        write(2, 0, 10, "y", "b"),
        read(3, 20, 30, "x", Some("a")),
        read(3, 20, 30, "y", Some("b")),
        read(4, 20, 30, "z", None),
    ];
    assert_eq!(verdict(&history), Verdict::Ok);
    let mut bad = history.clone();
    bad[3] = read(3, 20, 30, "y", Some("a"));
    let counterexample = illegal(&bad);
    assert_eq!(stuck_indices(&counterexample), vec![3]);
    assert_eq!(counterexample.partition_len, 2);
}

#[test]
fn an_unknown_write_may_be_observed_later() {
    let history = vec![
        write(1, 0, 10, "x", "a"),
        write_unknown(2, 20, "x", "b"),
        read(3, 30, 40, "x", Some("a")),
        read(3, 1_000, 1_010, "x", Some("b")),
        read(3, 2_000, 2_010, "x", Some("b")),
    ];
    assert_eq!(verdict(&history), Verdict::Ok);
}

#[test]
fn an_unknown_write_may_never_take_effect() {
    let history = vec![
        write(1, 0, 10, "x", "a"),
        write_unknown(2, 20, "x", "b"),
        read(3, 30, 40, "x", Some("a")),
        read(3, 1_000, 1_010, "x", Some("a")),
    ];
    assert_eq!(verdict(&history), Verdict::Ok);
}

#[test]
fn an_unknown_write_cannot_take_effect_before_its_call() {
    // The read started (and ended) before the write was even sent.
    let history = vec![read(1, 0, 10, "x", Some("b")), write_unknown(2, 20, "x", "b")];
    assert_eq!(stuck_indices(&illegal(&history)), vec![0]);
    // Started before, still running when the write was sent: fine.
    let history = vec![read(1, 0, 30, "x", Some("b")), write_unknown(2, 20, "x", "b")];
    assert_eq!(verdict(&history), Verdict::Ok);
}

#[test]
fn an_unknown_write_takes_effect_at_most_once() {
    // Seen, then overwritten, then seen again: it cannot have happened twice.
    let history = vec![
        write_unknown(1, 0, "x", "u"),
        read(2, 10, 20, "x", Some("u")),
        write(2, 30, 40, "x", "a"),
        read(2, 50, 60, "x", Some("u")),
    ];
    assert_eq!(stuck_indices(&illegal(&history)), vec![3]);
}

/// The memo keeps, per (answered operations placed, state), the sets of unknown-outcome
/// operations placed alongside, and may skip a node only if a stored set is a *subset* of the
/// node's own (the node then has no more freedom than one already explored). This history is
/// linearizable only as `b`, read b, `a`, read a; the search meets the state `x = b` with no
/// answered operation placed first via `a`, `b` (optional set {a, b}: a dead end, `a` is spent)
/// and only later via `b` alone (optional set {b}). A memo that skipped the second node because
/// {b} ⊆ {a, b} (the subset test the wrong way round) would call this history illegal.
#[test]
fn the_memo_does_not_skip_a_node_with_fewer_unknown_operations_placed() {
    let history = vec![
        write_unknown(1, 0, "x", "a"),
        write_unknown(2, 1, "x", "b"),
        read(3, 2, 3, "x", Some("b")),
        read(3, 4, 5, "x", Some("a")),
    ];
    assert!(brute_force(&Register, &history));
    assert_eq!(verdict(&history), Verdict::Ok);
    // The same with more unknown writes in front, so the dead-end sets are larger.
    let history = vec![
        write_unknown(1, 0, "x", "a"),
        write_unknown(2, 1, "x", "c"),
        write_unknown(4, 2, "x", "b"),
        read(3, 3, 4, "x", Some("b")),
        read(3, 5, 6, "x", Some("c")),
        read(3, 7, 8, "x", Some("a")),
    ];
    assert!(brute_force(&Register, &history));
    assert_eq!(verdict(&history), Verdict::Ok);
}

#[test]
fn a_return_and_a_call_at_the_same_instant_are_concurrent() {
    // The read is called at 10, the very nanosecond the write returned: no evidence of order.
    let history = vec![write(1, 0, 10, "x", "a"), read(2, 10, 20, "x", None)];
    assert_eq!(verdict(&history), Verdict::Ok);
    let history = vec![write(1, 0, 10, "x", "a"), read(2, 11, 20, "x", None)];
    assert!(verdict(&history).is_illegal());
}

#[test]
fn malformed_histories_are_unknown_never_ok() {
    let mut backwards = write(1, 10, 20, "x", "a");
    backwards.return_ns = Some(5);
    let verdict = verdict(&[backwards]);
    assert!(
        matches!(&verdict, Verdict::Unknown { reason } if reason.contains("before its call")),
        "{verdict}"
    );
    let mut no_output = write(1, 10, 20, "x", "a");
    no_output.output = None;
    assert!(check(&Register, &[no_output], BUDGET).is_unknown());
}

#[test]
fn an_empty_history_is_linearizable() {
    let history: Vec<RegOp> = Vec::new();
    assert_eq!(verdict(&history), Verdict::Ok);
}

#[test]
fn json_lines_round_trip() {
    let history = vec![
        write(1, 0, 10, "x", "a"),
        write_unknown(2, 20, "x", "b"),
        cas(3, 30, 40, "x", None, "c", false),
        read(3, 50, 60, "x", None),
    ];
    let text = balsa_lincheck::to_json_lines(&history);
    println!("{text}");
    assert_eq!(text.lines().count(), 4);
    let back: Vec<RegOp> = balsa_lincheck::from_json_lines(&text).expect("parses");
    assert_eq!(back, history);
    let broken = balsa_lincheck::from_json_lines::<
        balsa_lincheck::register::Input,
        balsa_lincheck::register::Output,
    >("\n{\"client\":1}\n");
    assert!(matches!(broken, Err(balsa_lincheck::HistoryError::Json { line: 2, .. })));
    let _: Vec<Operation<(), ()>> = Vec::new();
}
