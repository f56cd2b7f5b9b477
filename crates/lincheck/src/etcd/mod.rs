//! etcd's v3 keyspace: revisions, versions and transactions.
//!
//! The store starts empty at revision 1. Every request that writes (a put, a delete that
//! deletes something, a transaction whose chosen branch does either) takes the next revision;
//! all writes of one transaction share it. A key carries its `create_revision`, its
//! `mod_revision` (the revision of its last write) and its `version` (writes since it was
//! created); a delete removes it, and the next put starts a new generation at version 1.
//! Answers carry the store's revision after the request (`header_revision`).
//!
//! Two ways to check, both sound (a correct etcd is never reported illegal):
//!
//! - [`Kv`] is exact: the whole keyspace and the global revision are the state, so every
//!   answer, header revisions included, must be what one sequential etcd would have said.
//!   It cannot be split (the global revision couples all keys), so it is for histories of a
//!   few hundred operations with modest concurrency.
//! - [`check_split`] is for long histories. It runs [`KvByKey`], a model that keeps only facts
//!   that stay true when the history is split into groups of keys (see [`by_key`]), on each
//!   group separately, after [`check_revisions`], a global pass over header revisions (see
//!   [`revisions`]). It misses some violations the exact model would find — those that need
//!   the global revision of several groups at once — and says which in those modules' docs.
//!
//! Compare semantics follow etcd: comparing the value of a missing key is false; the version,
//! create and mod revisions of a missing key compare as 0. Values compare as byte strings.

pub mod by_key;
mod exact;
pub mod revisions;

pub use by_key::KvByKey;
pub use exact::{KeyValue, Kv, KvState};
pub use revisions::{check_revisions, check_split};

use serde::{Deserialize, Serialize};
use std::cmp::Ordering;

/// A request to etcd's KV service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Input {
    Get { key: String },
    Put { key: String, value: String },
    Delete { key: String },
    Txn { compares: Vec<Compare>, success: Vec<TxnOp>, failure: Vec<TxnOp> },
}

/// One comparison of a transaction's guard.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compare {
    pub key: String,
    /// What is compared, and the operand.
    pub target: Target,
    pub result: CompareResult,
}

/// The field a [`Compare`] looks at, with the value it is compared to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    Value(String),
    Version(i64),
    CreateRevision(i64),
    ModRevision(i64),
}

/// How the key's field must relate to the operand (`field <result> operand`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CompareResult {
    Equal,
    NotEqual,
    Less,
    Greater,
}

impl CompareResult {
    /// Whether `field.cmp(operand) == ordering` satisfies this result.
    pub fn holds(self, ordering: Ordering) -> bool {
        match self {
            CompareResult::Equal => ordering == Ordering::Equal,
            CompareResult::NotEqual => ordering != Ordering::Equal,
            CompareResult::Less => ordering == Ordering::Less,
            CompareResult::Greater => ordering == Ordering::Greater,
        }
    }
}

/// One request inside a transaction branch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TxnOp {
    Get { key: String },
    Put { key: String, value: String },
    Delete { key: String },
}

impl TxnOp {
    pub fn key(&self) -> &str {
        match self {
            TxnOp::Get { key } | TxnOp::Put { key, .. } | TxnOp::Delete { key } => key,
        }
    }
}

/// An answer of etcd's KV service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Output {
    Get { value: Option<String>, mod_revision: Option<i64>, header_revision: i64 },
    Put { header_revision: i64 },
    Delete { deleted: i64, header_revision: i64 },
    Txn { succeeded: bool, results: Vec<TxnResult>, header_revision: i64 },
}

impl Output {
    pub fn header_revision(&self) -> i64 {
        match self {
            Output::Get { header_revision, .. }
            | Output::Put { header_revision }
            | Output::Delete { header_revision, .. }
            | Output::Txn { header_revision, .. } => *header_revision,
        }
    }

    /// Whether this answer shows the request wrote (and so took a revision of its own).
    pub fn wrote(&self) -> bool {
        match self {
            Output::Get { .. } => false,
            Output::Put { .. } => true,
            Output::Delete { deleted, .. } => *deleted > 0,
            Output::Txn { results, .. } => results.iter().any(|r| match r {
                TxnResult::Put => true,
                TxnResult::Delete { deleted } => *deleted > 0,
                TxnResult::Get { .. } => false,
            }),
        }
    }
}

/// The answer to one [`TxnOp`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TxnResult {
    Get { value: Option<String>, mod_revision: Option<i64> },
    Put,
    Delete { deleted: i64 },
}

/// Every request as a transaction: (compares, success, failure). A plain get, put or delete is
/// a transaction without compares, so it always takes its success branch.
pub(crate) fn as_txn(input: &Input) -> (&[Compare], Vec<TxnOp>, &[TxnOp]) {
    match input {
        Input::Get { key } => (&[], vec![TxnOp::Get { key: key.clone() }], &[]),
        Input::Put { key, value } => (&[], vec![TxnOp::Put { key: key.clone(), value: value.clone() }], &[]),
        Input::Delete { key } => (&[], vec![TxnOp::Delete { key: key.clone() }], &[]),
        Input::Txn { compares, success, failure } => (compares, success.clone(), failure),
    }
}

/// Every answer as a transaction's: (succeeded, results, header revision); `None` if the
/// answer is not of the request's kind.
pub(crate) fn output_as_txn(input: &Input, output: &Output) -> Option<(bool, Vec<TxnResult>, i64)> {
    Some(match (input, output) {
        (Input::Get { .. }, Output::Get { value, mod_revision, header_revision }) => (
            true,
            vec![TxnResult::Get { value: value.clone(), mod_revision: *mod_revision }],
            *header_revision,
        ),
        (Input::Put { .. }, Output::Put { header_revision }) => {
            (true, vec![TxnResult::Put], *header_revision)
        }
        (Input::Delete { .. }, Output::Delete { deleted, header_revision }) => {
            (true, vec![TxnResult::Delete { deleted: *deleted }], *header_revision)
        }
        (Input::Txn { .. }, Output::Txn { succeeded, results, header_revision }) => {
            (*succeeded, results.clone(), *header_revision)
        }
        _ => return None,
    })
}

/// The keys a request reads or writes (compares included), for partitioning.
pub(crate) fn keys_touched(input: &Input) -> Vec<&str> {
    match input {
        Input::Get { key } | Input::Put { key, .. } | Input::Delete { key } => vec![key],
        Input::Txn { compares, success, failure } => compares
            .iter()
            .map(|c| c.key.as_str())
            .chain(success.iter().chain(failure).map(TxnOp::key))
            .collect(),
    }
}

/// A readable rendering shared by both models.
pub(crate) fn describe(op: &crate::Operation<Input, Output>) -> String {
    let returned = op.return_ns.map_or("?".to_string(), |r| r.to_string());
    let answer = op.output.as_ref().map_or("unknown (timed out)".to_string(), |o| format!("{o:?}"));
    format!("client {} [{}..{returned}]: {:?} -> {answer}", op.client, op.call_ns, op.input)
}
