//! Global facts about header revisions, checked without a search.
//!
//! [`check_revisions`] checks, over the whole history (answered requests only):
//! - every header revision is at least 1, and a write's at least 2 (the store starts empty at 1);
//! - distinct writes returned distinct revisions (each writing request takes its own);
//! - revisions respect real time: if A returned before B was called, B's header revision is at
//!   least A's, and strictly greater if B wrote.
//!
//! All three hold for any correct etcd, whatever the linearization. With [`super::KvByKey`] run
//! per group of keys ([`check_split`]) they cover what splitting loses, except orderings that
//! only a linearization could expose: e.g. group 1 implying revision 5 precedes 7 while
//! group 2's concurrent requests imply the reverse through values rather than time. The exact
//! [`super::Kv`] finds those on histories small enough to check unsplit.

use super::{Input, KvByKey, Output};
use crate::{check_with, validate, CheckOptions, Counterexample, Model, OpRef, Operation, Verdict};
use std::time::Duration;

/// Checks the global revision facts listed in the module docs; the error names the two
/// requests (or one) at fault.
pub fn check_revisions(history: &[Operation<Input, Output>]) -> Result<(), Counterexample> {
    let answered: Vec<(usize, &Output, u64, u64)> = history
        .iter()
        .enumerate()
        .filter_map(|(i, op)| Some((i, op.output.as_ref()?, op.call_ns, op.return_ns?)))
        .collect();
    let violation = |summary: String, earlier: Option<usize>, culprit: usize| {
        let name = |index: usize| OpRef { index, text: KvByKey.describe(&history[index]) };
        Counterexample {
            summary,
            partition: None,
            partition_len: history.len(),
            prefix: earlier.into_iter().map(name).collect(),
            stuck: vec![name(culprit)],
        }
    };
    for &(i, output, _, _) in &answered {
        let floor = if output.wrote() { 2 } else { 1 };
        if output.header_revision() < floor {
            let summary = format!("header revision {} is below {floor}", output.header_revision());
            return Err(violation(summary, None, i));
        }
    }
    let mut writes: Vec<(i64, usize)> = answered
        .iter()
        .filter(|(_, output, _, _)| output.wrote())
        .map(|&(i, output, _, _)| (output.header_revision(), i))
        .collect();
    writes.sort_unstable();
    if let Some(pair) = writes.windows(2).find(|pair| pair[0].0 == pair[1].0) {
        let summary = format!("two writes both took revision {}", pair[0].0);
        return Err(violation(summary, Some(pair[0].1), pair[1].1));
    }
    // Sweep calls in time order, folding in every answer that came strictly before the call.
    let mut by_return: Vec<_> = answered.clone();
    by_return.sort_unstable_by_key(|&(_, _, _, ret)| ret);
    let mut by_call = answered;
    by_call.sort_unstable_by_key(|&(_, _, call, _)| call);
    let mut done = by_return.iter().peekable();
    let mut highest: Option<(i64, usize)> = None;
    for &(b, output, call, _) in &by_call {
        while let Some(&(a, earlier, _, _)) = done.next_if(|&&(_, _, _, ret)| ret < call) {
            if highest.is_none_or(|(h, _)| earlier.header_revision() > h) {
                highest = Some((earlier.header_revision(), a));
            }
        }
        let Some((h, a)) = highest else { continue };
        let revision = output.header_revision();
        if revision < h || (output.wrote() && revision == h) {
            let summary =
                format!("revision {revision} after revision {h} had already been returned (real-time order)");
            return Err(violation(summary, Some(a), b));
        }
    }
    Ok(())
}

/// Checks a long etcd history: [`validate`], [`check_revisions`], then [`KvByKey`] per group of
/// keys within `budget`. Sound (never illegal for a correct etcd); see the module docs for
/// what it cannot see.
pub fn check_split(history: &[Operation<Input, Output>], budget: Duration) -> Verdict {
    if let Err(e) = validate(history) {
        return Verdict::Unknown { reason: format!("invalid history: {e}") };
    }
    if let Err(counterexample) = check_revisions(history) {
        return Verdict::Illegal(counterexample);
    }
    check_with(&KvByKey, history, &CheckOptions::with_budget(budget))
}
