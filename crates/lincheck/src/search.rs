//! The search: Wing & Gong's depth-first search for a linearization, with Lowe's
//! just-in-time list and memo.
//!
//! Every call and every known return is an entry in one doubly linked list sorted by time. The
//! operations that may come next in a linearization are exactly the calls that appear before
//! the first return still in the list (an operation whose return has passed must already be
//! linearized). The search walks the list from its head: at a call it asks the model whether
//! the operation can take effect now; if so it *lifts* the operation (unlinks its call and
//! return, pushes it on a stack) and starts again from the head. Reaching a return means that
//! operation could not be placed: pop the last lifted operation, relink it, undo its state and
//! try the next call after it. When every operation with a known return is lifted, the history
//! is linearizable; when the stack is empty at a return, it is not.
//!
//! **Memo (Lowe).** A search node is fully described by (set of linearized operations, model
//! state): the remaining list follows from the set. A node seen before is not explored again.
//!
//! **Unknown outcomes.** An operation without a return has its return at +infinity, so it has no
//! return entry: it never blocks the search and may be left out of the linearization. Two rules
//! keep such operations from multiplying the search space (a timed-out write that is later
//! overwritten could otherwise be slotted in anywhere, doubling the nodes per such write):
//! - the memo is keyed by (required operations linearized, state) and keeps the *sets of
//!   optional operations* seen with it; a node is skipped if a stored set is a subset of its own.
//!   Sound because from (R, O, s) every continuation of (R, O', s) with O ⊆ O' is possible too:
//!   the optional operations in O' \ O have no return entry, so they constrain nothing and can
//!   simply stay out. (Induction on the length of the shortest successful continuation.)
//! - at each node the required calls are tried before the optional ones, so "leave it out" is
//!   explored first and the supersets it subsumes are skipped.

use crate::bitset::Bitset;
use crate::fingerprint::{self, Fingerprint, Keys};
use crate::{Model, Operation};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// How often (in search steps) the deadline is looked at: often enough to stop within
/// milliseconds, rarely enough that reading the clock costs nothing measurable.
const STEPS_PER_CLOCK_CHECK: u64 = 256;

/// When to give up: a deadline for the whole check, and a flag another partition's search
/// raises once it found the history illegal.
pub(crate) struct Stop<'a> {
    pub(crate) deadline: Instant,
    pub(crate) cancelled: &'a AtomicBool,
}

impl Stop<'_> {
    fn should_stop(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed) || Instant::now() >= self.deadline
    }
}

/// The result of searching one partition. Indices are positions in the partition's slice.
#[derive(Debug)]
pub(crate) enum Outcome {
    Linearizable,
    Illegal {
        /// The longest sequence of operations the search managed to linearize, in order.
        prefix: Vec<usize>,
        /// The operations that could come next after `prefix`, none of which could be placed.
        stuck: Vec<usize>,
    },
    /// Stopped by the deadline or by cancellation before deciding.
    Stopped {
        steps: u64,
    },
}

const NIL: usize = usize::MAX;
const HEAD: usize = 0;

/// The time-sorted list of call and return entries. Entry 0 is the head sentinel.
struct EntryList {
    next: Vec<usize>,
    prev: Vec<usize>,
    /// For each entry, the operation it belongs to (unused for the head).
    op: Vec<usize>,
    is_call: Vec<bool>,
    /// For each operation, its call entry and its return entry (none for unknown outcomes).
    call_entry: Vec<usize>,
    return_entry: Vec<Option<usize>>,
}

impl EntryList {
    /// Sorts by time. On equal times calls come before returns: an operation that returned at
    /// `t` and one called at `t` are treated as concurrent. Clocks are coarse and a tie gives no
    /// evidence of order, so the checker assumes the weaker relation and never reports a
    /// violation that depends on it.
    fn new<I, O>(ops: &[&Operation<I, O>]) -> Self {
        let mut events: Vec<(u64, u8, usize)> = Vec::with_capacity(ops.len() * 2);
        for (i, op) in ops.iter().enumerate() {
            events.push((op.call_ns, 0, i));
            if let Some(return_ns) = op.return_ns {
                events.push((return_ns, 1, i));
            }
        }
        events.sort_unstable();
        let entries = events.len() + 1;
        let mut list = EntryList {
            next: (1..=entries).map(|n| if n == entries { NIL } else { n }).collect(),
            prev: (0..entries).map(|n| n.wrapping_sub(1)).collect(),
            op: vec![NIL; entries],
            is_call: vec![false; entries],
            call_entry: vec![NIL; ops.len()],
            return_entry: vec![None; ops.len()],
        };
        for (position, &(_, kind, i)) in events.iter().enumerate() {
            let entry = position + 1;
            list.op[entry] = i;
            list.is_call[entry] = kind == 0;
            if kind == 0 {
                list.call_entry[i] = entry;
            } else {
                list.return_entry[i] = Some(entry);
            }
        }
        list
    }

    fn unlink(&mut self, entry: usize) {
        let (prev, next) = (self.prev[entry], self.next[entry]);
        self.next[prev] = next;
        if next != NIL {
            self.prev[next] = prev;
        }
    }

    /// Undoes `unlink(entry)`; valid only in the reverse order of the unlinks (dancing links).
    fn relink(&mut self, entry: usize) {
        let (prev, next) = (self.prev[entry], self.next[entry]);
        self.next[prev] = entry;
        if next != NIL {
            self.prev[next] = entry;
        }
    }

    fn lift(&mut self, op: usize) {
        self.unlink(self.call_entry[op]);
        if let Some(ret) = self.return_entry[op] {
            self.unlink(ret);
        }
    }

    fn unlift(&mut self, op: usize) {
        if let Some(ret) = self.return_entry[op] {
            self.relink(ret);
        }
        self.relink(self.call_entry[op]);
    }

    /// The operations whose calls precede the first remaining return: the candidates.
    fn frontier(&self) -> Vec<usize> {
        let mut ops = Vec::new();
        let mut entry = self.next[HEAD];
        while entry != NIL {
            ops.push(self.op[entry]);
            if !self.is_call[entry] {
                break;
            }
            entry = self.next[entry];
        }
        ops.sort_unstable();
        ops.dedup();
        ops
    }
}

/// The memo: for each (required set, state), the optional sets it was reached with. The required
/// set and the state are known by one 128-bit fingerprint (see `fingerprint.rs`: an entry's size
/// does not grow with the history, and no state is cloned into it). Nodes reached with no
/// optional operation placed — nearly all of them — are a plain set of fingerprints (16 bytes
/// each: an empty optional set subsumes every other); the others keep their optional sets, as
/// bitsets over the optional operations only, which are few.
#[derive(Default)]
struct Memo {
    plain: HashSet<u128>,
    with_optional: HashMap<u128, Vec<Bitset>>,
}

impl Memo {
    /// Records the node; false if it (or a node that subsumes it) was seen before.
    fn insert<S: std::hash::Hash>(&mut self, required: Fingerprint, optional: &Bitset, state: &S) -> bool {
        let key = required.with_state(fingerprint::of_state(state));
        if self.plain.contains(&key) {
            return false;
        }
        if optional.is_empty() {
            self.with_optional.remove(&key);
            return self.plain.insert(key);
        }
        let sets = self.with_optional.entry(key).or_default();
        if sets.iter().any(|seen| seen.is_subset_of(optional)) {
            return false;
        }
        sets.push(optional.clone());
        true
    }
}

/// Searches for a linearization of `ops` (one partition, any order).
pub(crate) fn search<M: Model>(
    model: &M,
    ops: &[&Operation<M::Input, M::Output>],
    stop: &Stop<'_>,
) -> Outcome {
    let mut list = EntryList::new(ops);
    let optional: Vec<bool> = ops.iter().map(|op| op.return_ns.is_none()).collect();
    let required_total = optional.iter().filter(|&&o| !o).count();
    let mut required_done = 0;
    // Optional operations get their own dense numbering for the optional sets' bitsets.
    let mut optional_count = 0;
    let optional_slot: Vec<usize> = optional
        .iter()
        .map(|&o| {
            if !o {
                return usize::MAX;
            }
            optional_count += 1;
            optional_count - 1
        })
        .collect();
    let keys = Keys::new(ops.len());
    let mut required_set = Fingerprint::default();
    let mut optional_set = Bitset::new(optional_count);
    let mut memo = Memo::default();
    let mut state = model.init();
    // (operation lifted, the state before it)
    let mut stack: Vec<(usize, M::State)> = Vec::new();
    // The deepest dead end so far, for the report: its prefix (the stack then) and frontier.
    // `unchanged` is how much of the stack has not been popped since: only the rest is copied
    // at the next deeper dead end, so recording costs O(pushes) in all, not O(depth) each time.
    let mut best: Option<(Vec<usize>, Vec<usize>)> = None;
    let mut unchanged = 0;
    // Two passes over the frontier: required calls first, then optional ones.
    let mut optional_pass = false;
    let mut entry = list.next[HEAD];
    let mut steps: u64 = 0;

    loop {
        if required_done == required_total {
            return Outcome::Linearizable;
        }
        steps += 1;
        if steps.is_multiple_of(STEPS_PER_CLOCK_CHECK) && stop.should_stop() {
            return Outcome::Stopped { steps };
        }
        let at_frontier_end = entry == NIL || !list.is_call[entry];
        if at_frontier_end && !optional_pass {
            optional_pass = true;
            entry = list.next[HEAD];
            continue;
        }
        if at_frontier_end {
            // No candidate fits: this node is a dead end. Remember the deepest one for the report.
            if best.as_ref().is_none_or(|(prefix, _)| stack.len() > prefix.len()) {
                let (prefix, frontier) = best.get_or_insert_with(Default::default);
                prefix.truncate(unchanged);
                prefix.extend(stack[unchanged..].iter().map(|&(op, _)| op));
                *frontier = list.frontier();
                unchanged = stack.len();
            }
            let popped = stack.pop();
            unchanged = unchanged.min(stack.len());
            let Some((op, previous)) = popped else {
                let (prefix, stuck) = best.unwrap_or_default();
                return Outcome::Illegal { prefix, stuck };
            };
            state = previous;
            if optional[op] {
                optional_set.remove(optional_slot[op]);
            } else {
                required_set.toggle(&keys, op);
                required_done -= 1;
            }
            list.unlift(op);
            optional_pass = optional[op];
            entry = list.next[list.call_entry[op]];
            continue;
        }
        let op = list.op[entry];
        if optional[op] == optional_pass {
            if let Some(next) = model.step(&state, &ops[op].input, ops[op].output.as_ref()) {
                // An optional operation that changes nothing is never worth placing: the node it
                // leads to is subsumed by this one.
                if !(optional[op] && next == state) {
                    let mut required_next = required_set;
                    if optional[op] {
                        optional_set.insert(optional_slot[op]);
                    } else {
                        required_next.toggle(&keys, op);
                    }
                    if memo.insert(required_next, &optional_set, &next) {
                        required_set = required_next;
                        stack.push((op, std::mem::replace(&mut state, next)));
                        if !optional[op] {
                            required_done += 1;
                        }
                        list.lift(op);
                        optional_pass = false;
                        entry = list.next[HEAD];
                        continue;
                    }
                    if optional[op] {
                        optional_set.remove(optional_slot[op]);
                    }
                }
            }
        }
        entry = list.next[entry];
    }
}
