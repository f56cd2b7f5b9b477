//! The linearizability check of the register history, by balsa-lincheck.

use std::time::Duration;

use balsa_lincheck::register::Register;
use balsa_lincheck::Verdict;

use crate::register::RegOp;

/// `ok`, `illegal: <counterexample>` or `unknown: <why>` for the register history.
pub fn register(ops: &[RegOp], budget: Duration) -> String {
    match balsa_lincheck::check(&Register, ops, budget) {
        Verdict::Ok => "ok".to_string(),
        other => other.to_string(),
    }
}
