//! Histories: what clients saw, one [`Operation`] per request.
//!
//! A chaos harness records each request as it is invoked and answered, and writes the history
//! as JSON lines (one `Operation` per line, see [`to_json_lines`] and [`from_json_lines`]).

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::fmt;

/// One operation of a history, as a client saw it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operation<I, O> {
    /// Which client (process) issued it. Only used in reports: real-time order comes from the
    /// timestamps, so a client may have several operations in flight.
    pub client: u64,
    /// When it was invoked (monotonic nanoseconds, one clock for the whole history).
    pub call_ns: u64,
    /// When the response came. `None`: the outcome is unknown (timed out, connection lost); the
    /// operation may take effect at any point after `call_ns`, or never.
    pub return_ns: Option<u64>,
    /// What was asked.
    pub input: I,
    /// What was answered; `None` exactly when `return_ns` is `None`.
    pub output: Option<O>,
}

impl<I, O> Operation<I, O> {
    /// A completed operation.
    pub fn completed(client: u64, call_ns: u64, return_ns: u64, input: I, output: O) -> Self {
        Operation { client, call_ns, return_ns: Some(return_ns), input, output: Some(output) }
    }

    /// An operation whose outcome is unknown (it may take effect after `call_ns`, or never).
    pub fn unknown(client: u64, call_ns: u64, input: I) -> Self {
        Operation { client, call_ns, return_ns: None, input, output: None }
    }
}

/// Why a history cannot be checked. The checker reports these as [`crate::Verdict::Unknown`]
/// (never `Ok`); call [`validate`] first to get them typed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HistoryError {
    /// Operation `index` returned before it was called.
    ReturnBeforeCall { index: usize, call_ns: u64, return_ns: u64 },
    /// Operation `index` has a return time but no output, or an output but no return time.
    OutputMismatch { index: usize },
    /// Line `line` (1-based) of a JSON-lines history did not parse.
    Json { line: usize, message: String },
}

impl fmt::Display for HistoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HistoryError::ReturnBeforeCall { index, call_ns, return_ns } => {
                write!(f, "operation {index} returned at {return_ns} ns, before its call at {call_ns} ns")
            }
            HistoryError::OutputMismatch { index } => {
                write!(f, "operation {index}: output must be present exactly when return_ns is")
            }
            HistoryError::Json { line, message } => write!(f, "line {line}: {message}"),
        }
    }
}

impl std::error::Error for HistoryError {}

/// Checks that every operation is well formed: output present iff return time present, and no
/// return before its call.
pub fn validate<I, O>(history: &[Operation<I, O>]) -> Result<(), HistoryError> {
    for (index, op) in history.iter().enumerate() {
        if op.return_ns.is_some() != op.output.is_some() {
            return Err(HistoryError::OutputMismatch { index });
        }
        if let Some(return_ns) = op.return_ns {
            if return_ns < op.call_ns {
                return Err(HistoryError::ReturnBeforeCall { index, call_ns: op.call_ns, return_ns });
            }
        }
    }
    Ok(())
}

/// Parses a history written one JSON object per line; blank lines are skipped.
pub fn from_json_lines<I: DeserializeOwned, O: DeserializeOwned>(
    text: &str,
) -> Result<Vec<Operation<I, O>>, HistoryError> {
    let mut history = Vec::new();
    for (number, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let op = serde_json::from_str(line)
            .map_err(|e| HistoryError::Json { line: number + 1, message: e.to_string() })?;
        history.push(op);
    }
    Ok(history)
}

/// Writes a history one JSON object per line (each line ends with `\n`).
pub fn to_json_lines<I: Serialize, O: Serialize>(history: &[Operation<I, O>]) -> String {
    let mut text = String::new();
    for op in history {
        // Serializing plain data with derived impls cannot fail (no maps with non-string keys).
        text.push_str(&serde_json::to_string(op).unwrap_or_default());
        text.push('\n');
    }
    text
}
