//! # balsa-lincheck: is this history linearizable?
//!
//! A chaos test records what clients saw: each request with the time it was sent, the time its
//! answer came (if it came) and the answer. This crate decides whether those answers could
//! have come from one correct copy of the service.
//!
//! ## Linearizability
//!
//! A history is *linearizable* (Herlihy & Wing, 1990) if each operation can be given a single
//! instant — its *linearization point*, somewhere between its call and its return — such that
//! executing the operations one at a time in the order of those points, on a sequential model
//! of the service, produces exactly the answers the clients received. It is the promise etcd
//! makes for its default reads and writes: once a write is acknowledged, every read that starts
//! later sees it (or something newer), and no two clients disagree about the order of writes.
//!
//! ## The algorithm
//!
//! Wing & Gong's search (1993) tries orderings depth first; Lowe (2017) made it practical with a
//! *just-in-time* list of call and return entries and a memo of (linearized operations, model
//! state) pairs, so each node of the search is explored once. See [`search`](crate) in
//! `search.rs` for the details. The problem is NP-complete in general; two things keep it fast:
//!
//! - **P-compositionality** (Herlihy & Wing; Horn & Kroening, 2015): a history is linearizable
//!   iff each of its per-object sub-histories is. A [`Model`] splits a history in
//!   [`Model::partition`] (per key for a register) and each part is searched on its own, in
//!   parallel.
//! - The memo: histories from real systems have little concurrency per key, so the number of
//!   distinct (set, state) nodes stays close to the number of operations. Sets are keyed by a
//!   128-bit fingerprint, so an entry costs the same on a history of ten operations or of a
//!   million (a bitset key made the memo quadratic in the history's length).
//!
//! The whole check has a time budget. A search that runs past it reports
//! [`Verdict::Unknown`], never [`Verdict::Ok`].
//!
//! ## Unknown outcomes
//!
//! A request that timed out (or whose connection was lost) has `return_ns: None` and
//! `output: None`. It may have taken effect at any point after its call — even after every
//! other operation — or never. The checker treats its return as being at +infinity and its
//! answer as anything, and does not require it to be placed: a history is linearizable if
//! every operation *with a known return* can be placed, with any subset of the unknown ones.
//!
//! Times are compared with `<`: an operation that returned at `t` and one called at `t` count as
//! concurrent (no evidence of order). A malformed history (a return before its call, an output
//! without a return time) is reported as [`Verdict::Unknown`] naming the operation; call
//! [`validate`] to get it as a typed [`HistoryError`].
//!
//! ## Example
//!
//! ```
//! use balsa_lincheck::register::{Input, Output, Register};
//! use balsa_lincheck::{check, Operation, Verdict};
//! use std::time::Duration;
//!
//! let write = |v: &str| Input::Write { key: "x".into(), value: v.into() };
//! let read = || Input::Read { key: "x".into() };
//! // Client 1 writes "a" over [0, 10]; client 2 reads "a" over [5, 15], overlapping the write.
//! let history = vec![
//!     Operation::completed(1, 0, 10, write("a"), Output::Write),
//!     Operation::completed(2, 5, 15, read(), Output::Read(Some("a".into()))),
//! ];
//! assert_eq!(check(&Register, &history, Duration::from_secs(1)), Verdict::Ok);
//!
//! // A read that starts after the write returned must not miss it.
//! let stale = vec![
//!     Operation::completed(1, 0, 10, write("a"), Output::Write),
//!     Operation::completed(2, 20, 30, read(), Output::Read(None)),
//! ];
//! match check(&Register, &stale, Duration::from_secs(1)) {
//!     Verdict::Illegal(counterexample) => {
//!         assert_eq!(counterexample.stuck[0].index, 1); // the read
//!         println!("{counterexample}");
//!     }
//!     other => panic!("expected a violation, got {other}"),
//! }
//! ```
//!
//! ## Models
//!
//! - [`register::Register`]: keys holding strings, with read, write and compare-and-swap.
//! - [`etcd::Kv`]: etcd's keyspace with revisions and transactions, exact (not split), and
//!   [`etcd::KvByKey`] with [`etcd::check_split`] for long histories — see [`etcd`] for exactly
//!   what each checks.
//!
//! ## Speed
//!
//! Measured on the 2-core development machine under `cargo test`'s profile (`opt-level = 1`),
//! `cargo test -p balsa-lincheck --test perf -- --nocapture`: a 10,000-operation register
//! history from 10 clients over 8 keys, 211 of them timed out, checks `Ok` in about 60 ms; the
//! same history with one late read changed to a value never written is found `Illegal` in
//! about 0.8 s (the search must exhaust that key's orders). A 3,000-operation etcd history over
//! 10 keys whose transactions join keys into one group checks with [`etcd::check_split`] in
//! about 60 ms.
//!
//! The known weak spot: lost answers inside one *large* partition. Each stays a candidate until
//! the end, so dead ends multiply: the etcd history above with 2% lost requests took 0.4 s at
//! 600 operations, 2 s at 800 and over 5 s at 1,000 (exact model), against milliseconds with
//! none. Per-key splitting keeps register histories clear of this; for etcd, keep multi-key
//! transactions to a few keys so groups stay small. Past the budget the answer is `Unknown`.

mod bitset;
pub mod etcd;
mod fingerprint;
pub mod history;
pub mod register;
mod report;
mod search;

pub use history::{from_json_lines, to_json_lines, validate, HistoryError, Operation};
pub use report::{Counterexample, OpRef, Verdict};

use search::{Outcome, Stop};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A sequential specification of the service under test.
pub trait Model {
    /// The service's state. Hashed into the search's memo, so keep it small.
    type State: Clone + Eq + std::hash::Hash + std::fmt::Debug;
    type Input: Clone + std::fmt::Debug;
    type Output: Clone + std::fmt::Debug;

    /// The state before any operation.
    fn init(&self) -> Self::State;

    /// Applies `input` to `state`. Returns the next state if `output` is an answer a correct
    /// system could give here (`output` `None`: the answer is unknown, any is allowed), `None`
    /// if this answer is impossible in this state.
    fn step(
        &self,
        state: &Self::State,
        input: &Self::Input,
        output: Option<&Self::Output>,
    ) -> Option<Self::State>;

    /// P-compositionality: splits a history into independent parts, as lists of indices into
    /// `history`, each in history order. The history is linearizable iff every part is. The
    /// default is one part holding everything.
    fn partition(&self, history: &[Operation<Self::Input, Self::Output>]) -> Vec<Vec<usize>> {
        vec![(0..history.len()).collect()]
    }

    /// A human rendering of an operation for reports.
    fn describe(&self, op: &Operation<Self::Input, Self::Output>) -> String {
        describe_debug(op)
    }
}

/// The default rendering: `client 3 [100..250]: Input -> Output`.
pub fn describe_debug<I: std::fmt::Debug, O: std::fmt::Debug>(op: &Operation<I, O>) -> String {
    match (&op.return_ns, &op.output) {
        (Some(ret), Some(out)) => {
            format!("client {} [{}..{}]: {:?} -> {:?}", op.client, op.call_ns, ret, op.input, out)
        }
        _ => format!("client {} [{}..?]: {:?} -> unknown (timed out)", op.client, op.call_ns, op.input),
    }
}

/// How to run a check.
#[derive(Clone, Debug)]
pub struct CheckOptions {
    /// Wall-clock time for the whole check; past it the verdict is `Unknown`.
    pub budget: Duration,
    /// How many partitions are searched at once (at least 1).
    pub threads: usize,
}

impl CheckOptions {
    /// `budget`, and one thread per available core.
    pub fn with_budget(budget: Duration) -> Self {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        CheckOptions { budget, threads }
    }
}

/// Checks `history` against `model` within `budget` (all cores). See [`check_with`].
pub fn check<M>(model: &M, history: &[Operation<M::Input, M::Output>], budget: Duration) -> Verdict
where
    M: Model + Sync,
    M::Input: Sync,
    M::Output: Sync,
{
    check_with(model, history, &CheckOptions::with_budget(budget))
}

/// Checks `history` against `model`: `Ok` if every partition has a linearization, `Illegal`
/// if one has none, `Unknown` if the history is malformed or the budget ran out first.
pub fn check_with<M>(model: &M, history: &[Operation<M::Input, M::Output>], options: &CheckOptions) -> Verdict
where
    M: Model + Sync,
    M::Input: Sync,
    M::Output: Sync,
{
    let started = Instant::now();
    if let Err(e) = validate(history) {
        return Verdict::Unknown { reason: format!("invalid history: {e}") };
    }
    let partitions = model.partition(history);
    if let Some(bad) = partitions.iter().flatten().find(|&&i| i >= history.len()) {
        return Verdict::Unknown {
            reason: format!("the model's partition named operation {bad}, outside the history"),
        };
    }
    let cancelled = AtomicBool::new(false);
    let stop = Stop { deadline: started + options.budget, cancelled: &cancelled };
    let outcomes = search_all(model, history, &partitions, &stop, options.threads.max(1));
    let (mut undecided, mut steps) = (0, 0);
    for (partition, outcome) in outcomes.into_iter().enumerate() {
        match outcome {
            Some(Outcome::Illegal { prefix, stuck }) => {
                let name = |position: usize| {
                    let index = partitions[partition][position];
                    OpRef { index, text: model.describe(&history[index]) }
                };
                return Verdict::Illegal(Counterexample {
                    summary: "no linearization: the search tried every order".to_string(),
                    partition: Some(partition),
                    partition_len: partitions[partition].len(),
                    prefix: prefix.into_iter().map(name).collect(),
                    stuck: stuck.into_iter().map(name).collect(),
                });
            }
            Some(Outcome::Linearizable) => {}
            Some(Outcome::Stopped { steps: s }) => {
                undecided += 1;
                steps += s;
            }
            None => undecided += 1,
        }
    }
    if undecided > 0 {
        return Verdict::Unknown {
            reason: format!(
                "budget of {:?} ran out with {undecided} of {} partitions undecided \
                 ({steps} search steps)",
                options.budget,
                partitions.len()
            ),
        };
    }
    Verdict::Ok
}

/// Searches every partition, `threads` at a time; an illegal partition cancels the rest.
/// `None` for a partition no thread reached.
fn search_all<M>(
    model: &M,
    history: &[Operation<M::Input, M::Output>],
    partitions: &[Vec<usize>],
    stop: &Stop<'_>,
    threads: usize,
) -> Vec<Option<Outcome>>
where
    M: Model + Sync,
    M::Input: Sync,
    M::Output: Sync,
{
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Outcome>>> = Mutex::new((0..partitions.len()).map(|_| None).collect());
    let worker = || loop {
        let partition = next.fetch_add(1, Ordering::Relaxed);
        let Some(indices) = partitions.get(partition) else {
            return;
        };
        let ops: Vec<_> = indices.iter().map(|&i| &history[i]).collect();
        let outcome = search::search(model, &ops, stop);
        if matches!(outcome, Outcome::Illegal { .. }) {
            stop.cancelled.store(true, Ordering::Relaxed);
        }
        // A poisoned lock means another worker panicked inside the model; keep its results.
        results.lock().unwrap_or_else(|e| e.into_inner())[partition] = Some(outcome);
    };
    std::thread::scope(|scope| {
        for _ in 1..threads.min(partitions.len()) {
            scope.spawn(worker);
        }
        worker();
    });
    results.into_inner().unwrap_or_else(|e| e.into_inner())
}
