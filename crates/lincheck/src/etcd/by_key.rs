//! A model of etcd that stays sound when a history is split into groups of keys.
//!
//! The exact model's state includes the global revision, which every write anywhere moves, so
//! a group of keys checked alone cannot know it. [`KvByKey`] keeps instead, per group:
//!
//! - each key's value, and what is known of its `mod_revision`, `create_revision` and
//!   `version` ([`Slot`]): exact after an acknowledged write (the write's revision is its
//!   `header_revision`), a lower bound after a write whose answer was lost;
//! - `floor`, a lower bound on the global revision at this point of the linearization: the
//!   largest header revision seen so far in the group. An answer's header revision must be at
//!   least the floor, and strictly above it for a request that wrote; a key's `mod_revision`
//!   must not exceed the header revision that reported it.
//!
//! Each of these holds in every global linearization restricted to the group, so a violation
//! in one group is a violation of etcd (soundness). What it cannot see, and
//! [`super::check_revisions`] covers in part: two groups using the same revision, and revision
//! order across groups.
//!
//! A request whose answer was lost and whose guard cannot be decided (it compares a revision
//! known only as a lower bound) leaves the keys it might write [`Slot::Unknown`]: the next read
//! of such a key is believed, and pins it again.
//!
//! [`KvByKey::partition`] groups keys that one request touches together (union-find): a
//! transaction over several keys must be checked with all of them.

use super::{as_txn, output_as_txn, CompareResult, Input, Output, Target, TxnOp, TxnResult};
use crate::{Model, Operation};
use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};

/// etcd's keyspace, as facts that survive splitting a history per group of keys.
#[derive(Clone, Copy, Debug, Default)]
pub struct KvByKey;

/// What a group knows.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct GroupState {
    /// A lower bound on the store's global revision here.
    pub floor: i64,
    /// Keys of the group not in the map are absent.
    pub keys: BTreeMap<String, Slot>,
}

/// What is known of one key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Slot {
    Absent,
    Present(View),
    /// Anything: a lost answer left it undecided; the next read pins it.
    Unknown,
}

/// A present key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct View {
    pub value: String,
    pub create_revision: Rev,
    pub mod_revision: Rev,
    /// `None`: not known (after an undecided request).
    pub version: Option<i64>,
}

/// A revision, exactly or as a lower bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rev {
    Known(i64),
    AtLeast(i64),
}

/// Three-valued comparison of a revision with an operand.
fn compare_rev(rev: Rev, operand: i64, result: CompareResult) -> Option<bool> {
    match rev {
        Rev::Known(r) => Some(result.holds(r.cmp(&operand))),
        Rev::AtLeast(low) if low > operand => Some(result.holds(Ordering::Greater)),
        Rev::AtLeast(_) => None,
    }
}

impl GroupState {
    fn slot(&self, key: &str) -> &Slot {
        self.keys.get(key).unwrap_or(&Slot::Absent)
    }

    /// The guard's value: `None` if it depends on something not known.
    fn guard(&self, compares: &[super::Compare]) -> Option<bool> {
        let mut decided = Some(true);
        for c in compares {
            let value = match (self.slot(&c.key), &c.target) {
                (Slot::Unknown, _) => None,
                (Slot::Absent, Target::Value(_)) => Some(false),
                (Slot::Absent, Target::Version(n))
                | (Slot::Absent, Target::CreateRevision(n))
                | (Slot::Absent, Target::ModRevision(n)) => Some(c.result.holds(0.cmp(n))),
                (Slot::Present(v), Target::Value(s)) => {
                    Some(c.result.holds(v.value.as_bytes().cmp(s.as_bytes())))
                }
                (Slot::Present(v), Target::Version(n)) => v.version.map(|x| c.result.holds(x.cmp(n))),
                (Slot::Present(v), Target::CreateRevision(n)) => compare_rev(v.create_revision, *n, c.result),
                (Slot::Present(v), Target::ModRevision(n)) => compare_rev(v.mod_revision, *n, c.result),
            };
            match value {
                Some(false) => return Some(false),
                Some(true) => {}
                None => decided = None,
            }
        }
        decided
    }

    /// The key after a put at `revision` (exact or a lower bound).
    fn put(&mut self, key: &str, value: &str, revision: Rev) {
        let (create_revision, version) = match self.slot(key) {
            Slot::Absent => (revision, Some(1)),
            Slot::Present(v) => (v.create_revision, v.version.map(|n| n + 1)),
            Slot::Unknown => (Rev::AtLeast(1), None),
        };
        let view = View { value: value.to_string(), create_revision, mod_revision: revision, version };
        self.keys.insert(key.to_string(), Slot::Present(view));
    }

    /// Checks one answered read against what is known, and pins what it reveals.
    fn read(
        &mut self,
        key: &str,
        value: &Option<String>,
        mod_revision: Option<i64>,
        header: i64,
    ) -> Option<()> {
        match (value, mod_revision) {
            (None, None) => match self.slot(key) {
                Slot::Present(_) => return None,
                Slot::Absent | Slot::Unknown => {
                    self.keys.remove(key);
                }
            },
            (Some(value), Some(m)) if m <= header => match self.keys.get_mut(key) {
                None | Some(Slot::Absent) => return None,
                Some(Slot::Present(v)) => {
                    let fits = match v.mod_revision {
                        Rev::Known(r) => r == m,
                        Rev::AtLeast(low) => m >= low,
                    };
                    if &v.value != value || !fits {
                        return None;
                    }
                    v.mod_revision = Rev::Known(m);
                }
                Some(slot @ Slot::Unknown) => {
                    *slot = Slot::Present(View {
                        value: value.clone(),
                        create_revision: Rev::AtLeast(1),
                        mod_revision: Rev::Known(m),
                        version: None,
                    });
                }
            },
            _ => return None,
        }
        Some(())
    }

    /// Applies an answered branch: each request with its result, at header revision `header`.
    fn apply_answered(&mut self, branch: &[TxnOp], results: &[TxnResult], header: i64) -> Option<()> {
        if branch.len() != results.len() {
            return None;
        }
        for (op, result) in branch.iter().zip(results) {
            match (op, result) {
                (TxnOp::Get { key }, TxnResult::Get { value, mod_revision }) => {
                    self.read(key, value, *mod_revision, header)?
                }
                (TxnOp::Put { key, value }, TxnResult::Put) => self.put(key, value, Rev::Known(header)),
                (TxnOp::Delete { key }, TxnResult::Delete { deleted }) => {
                    let possible = match self.slot(key) {
                        Slot::Absent => *deleted == 0,
                        Slot::Present(_) => *deleted == 1,
                        Slot::Unknown => *deleted == 0 || *deleted == 1,
                    };
                    if !possible {
                        return None;
                    }
                    self.keys.remove(key);
                }
                _ => return None,
            }
        }
        Some(())
    }

    /// Applies a branch whose answer was lost.
    fn apply_lost(&mut self, branch: &[TxnOp]) {
        let revision = Rev::AtLeast(self.floor + 1);
        let mut surely_wrote = false;
        for op in branch {
            match op {
                TxnOp::Get { .. } => {}
                TxnOp::Put { key, value } => {
                    surely_wrote = true;
                    self.put(key, value, revision);
                }
                TxnOp::Delete { key } => {
                    surely_wrote |= matches!(self.slot(key), Slot::Present(_));
                    self.keys.remove(key);
                }
            }
        }
        if surely_wrote {
            self.floor += 1;
        }
    }
}

impl Model for KvByKey {
    type State = GroupState;
    type Input = Input;
    type Output = Output;

    fn init(&self) -> GroupState {
        GroupState { floor: 1, keys: BTreeMap::new() }
    }

    fn step(&self, state: &GroupState, input: &Input, output: Option<&Output>) -> Option<GroupState> {
        let (compares, success, failure) = as_txn(input);
        let guard = state.guard(compares);
        let mut next = state.clone();
        let Some(output) = output else {
            match guard {
                Some(true) => next.apply_lost(&success),
                Some(false) => next.apply_lost(failure),
                None => {
                    for op in success.iter().chain(failure) {
                        if !matches!(op, TxnOp::Get { .. }) {
                            next.keys.insert(op.key().to_string(), Slot::Unknown);
                        }
                    }
                }
            }
            return Some(next);
        };
        let (succeeded, results, header) = output_as_txn(input, output)?;
        if guard == Some(!succeeded) {
            return None;
        }
        let fits_floor = if output.wrote() { header > state.floor } else { header >= state.floor };
        if !fits_floor {
            return None;
        }
        let branch = if succeeded { &success[..] } else { failure };
        next.apply_answered(branch, &results, header)?;
        next.floor = header;
        Some(next)
    }

    /// Groups of keys joined by the requests that touch several at once (union-find).
    fn partition(&self, history: &[Operation<Input, Output>]) -> Vec<Vec<usize>> {
        let mut key_ids: HashMap<&str, usize> = HashMap::new();
        let mut parent: Vec<usize> = Vec::new();
        fn root(parent: &mut [usize], mut x: usize) -> usize {
            while parent[x] != x {
                parent[x] = parent[parent[x]];
                x = parent[x];
            }
            x
        }
        // Each operation's first key (or a fresh id for an operation touching none).
        let mut first_key = Vec::with_capacity(history.len());
        for op in history {
            let mut ids: Vec<usize> = Vec::new();
            for key in super::keys_touched(&op.input) {
                ids.push(*key_ids.entry(key).or_insert_with(|| {
                    parent.push(parent.len());
                    parent.len() - 1
                }));
            }
            if ids.is_empty() {
                parent.push(parent.len());
                ids.push(parent.len() - 1);
            }
            let first = ids[0];
            for &other in &ids[1..] {
                let (a, b) = (root(&mut parent, first), root(&mut parent, other));
                parent[a] = b;
            }
            first_key.push(first);
        }
        let mut group_of_root: HashMap<usize, usize> = HashMap::new();
        let mut groups: Vec<Vec<usize>> = Vec::new();
        for (index, first) in first_key.into_iter().enumerate() {
            let r = root(&mut parent, first);
            let group = *group_of_root.entry(r).or_insert_with(|| {
                groups.push(Vec::new());
                groups.len() - 1
            });
            groups[group].push(index);
        }
        groups
    }

    fn describe(&self, op: &Operation<Input, Output>) -> String {
        super::describe(op)
    }
}
