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
