//! The exact model: the whole keyspace and the global revision.

use super::{as_txn, output_as_txn, Compare, Input, Output, Target, TxnOp, TxnResult};
use crate::Model;
use std::collections::BTreeMap;

/// etcd's keyspace, checked exactly (one partition: the global revision couples every key).
#[derive(Clone, Copy, Debug, Default)]
pub struct Kv;

/// The whole store: what one sequential etcd would hold.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct KvState {
    /// The store's revision: 1 when empty, +1 per writing request.
    pub revision: i64,
    pub keys: BTreeMap<String, KeyValue>,
}

/// One present key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct KeyValue {
    pub value: String,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub version: i64,
}

impl KvState {
    fn compare(&self, compare: &Compare) -> bool {
        let kv = self.keys.get(&compare.key);
        let ordering = match (&compare.target, kv) {
            (Target::Value(_), None) => return false,
            (Target::Value(v), Some(kv)) => kv.value.as_bytes().cmp(v.as_bytes()),
            (Target::Version(n), kv) => kv.map_or(0, |kv| kv.version).cmp(n),
            (Target::CreateRevision(n), kv) => kv.map_or(0, |kv| kv.create_revision).cmp(n),
            (Target::ModRevision(n), kv) => kv.map_or(0, |kv| kv.mod_revision).cmp(n),
        };
        compare.result.holds(ordering)
    }

    /// Runs a transaction: (succeeded, results, next state).
    fn apply(
        &self,
        compares: &[Compare],
        success: &[TxnOp],
        failure: &[TxnOp],
    ) -> (bool, Vec<TxnResult>, KvState) {
        let succeeded = compares.iter().all(|c| self.compare(c));
        let branch = if succeeded { success } else { failure };
        let mut next = self.clone();
        // All writes of one request share the next revision; reads see earlier writes.
        let write_revision = self.revision + 1;
        let mut wrote = false;
        let mut results = Vec::with_capacity(branch.len());
        for op in branch {
            results.push(match op {
                TxnOp::Get { key } => {
                    let kv = next.keys.get(key);
                    TxnResult::Get {
                        value: kv.map(|kv| kv.value.clone()),
                        mod_revision: kv.map(|kv| kv.mod_revision),
                    }
                }
                TxnOp::Put { key, value } => {
                    wrote = true;
                    let (create_revision, version) = next
                        .keys
                        .get(key)
                        .map_or((write_revision, 1), |kv| (kv.create_revision, kv.version + 1));
                    next.keys.insert(
                        key.clone(),
                        KeyValue {
                            value: value.clone(),
                            create_revision,
                            mod_revision: write_revision,
                            version,
                        },
                    );
                    TxnResult::Put
                }
                TxnOp::Delete { key } => {
                    let deleted = i64::from(next.keys.remove(key).is_some());
                    wrote |= deleted > 0;
                    TxnResult::Delete { deleted }
                }
            });
        }
        if wrote {
            next.revision = write_revision;
        }
        (succeeded, results, next)
    }
}

impl Model for Kv {
    type State = KvState;
    type Input = Input;
    type Output = Output;

    fn init(&self) -> KvState {
        KvState { revision: 1, keys: BTreeMap::new() }
    }

    fn step(&self, state: &KvState, input: &Input, output: Option<&Output>) -> Option<KvState> {
        let (compares, success, failure) = as_txn(input);
        let (succeeded, results, next) = state.apply(compares, &success, failure);
        match output {
            None => Some(next),
            Some(output) => {
                let seen = output_as_txn(input, output)?;
                (seen == (succeeded, results, next.revision)).then_some(next)
            }
        }
    }

    fn describe(&self, op: &crate::Operation<Input, Output>) -> String {
        super::describe(op)
    }
}
