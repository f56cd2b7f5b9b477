//! A keyspace of registers holding strings, with read, write and compare-and-swap.
//!
//! Every key starts absent. Keys are independent objects, so [`Register::partition`] splits a
//! history per key (P-compositionality) and each key is searched on its own.

use crate::{Model, Operation};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// The register model. Stateless: the state lives in the search.
#[derive(Clone, Copy, Debug, Default)]
pub struct Register;

/// A request to the register service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Input {
    Read {
        key: String,
    },
    Write {
        key: String,
        value: String,
    },
    /// Sets `key` to `new` if its value is `expected` (`None`: if the key is absent).
    Cas {
        key: String,
        expected: Option<String>,
        new: String,
    },
}

impl Input {
    /// The key the request is about.
    pub fn key(&self) -> &str {
        match self {
            Input::Read { key } | Input::Write { key, .. } | Input::Cas { key, .. } => key,
        }
    }
}

/// An answer of the register service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Output {
    /// The value read; `None` if the key is absent.
    Read(Option<String>),
    Write,
    /// Whether the swap happened.
    Cas(bool),
}

impl Model for Register {
    /// Present keys and their values. After partitioning, a search sees one key, so this map
    /// holds at most one entry and hashes cheaply.
    type State = BTreeMap<String, String>;
    type Input = Input;
    type Output = Output;

    fn init(&self) -> Self::State {
        BTreeMap::new()
    }

    fn step(&self, state: &Self::State, input: &Input, output: Option<&Output>) -> Option<Self::State> {
        match (input, output) {
            (Input::Read { key }, Some(Output::Read(seen))) => {
                (state.get(key) == seen.as_ref()).then(|| state.clone())
            }
            (Input::Read { .. }, None) => Some(state.clone()),
            (Input::Write { key, value }, None | Some(Output::Write)) => {
                let mut next = state.clone();
                next.insert(key.clone(), value.clone());
                Some(next)
            }
            (Input::Cas { key, expected, new }, output) => {
                let matches = state.get(key) == expected.as_ref();
                match output {
                    Some(Output::Cas(succeeded)) if *succeeded != matches => None,
                    Some(Output::Cas(_)) | None => {
                        let mut next = state.clone();
                        if matches {
                            next.insert(key.clone(), new.clone());
                        }
                        Some(next)
                    }
                    // An answer of the wrong kind is never correct.
                    Some(_) => None,
                }
            }
            _ => None,
        }
    }

    fn partition(&self, history: &[Operation<Input, Output>]) -> Vec<Vec<usize>> {
        let mut by_key: HashMap<&str, usize> = HashMap::new();
        let mut parts: Vec<Vec<usize>> = Vec::new();
        for (index, op) in history.iter().enumerate() {
            let part = *by_key.entry(op.input.key()).or_insert_with(|| {
                parts.push(Vec::new());
                parts.len() - 1
            });
            parts[part].push(index);
        }
        parts
    }

    fn describe(&self, op: &Operation<Input, Output>) -> String {
        let what = match &op.input {
            Input::Read { key } => format!("read({key})"),
            Input::Write { key, value } => format!("write({key}, {value:?})"),
            Input::Cas { key, expected, new } => {
                format!("cas({key}, {}, {new:?})", show(expected.as_ref()))
            }
        };
        let answer = match &op.output {
            None => "unknown (timed out)".to_string(),
            Some(Output::Read(value)) => show(value.as_ref()),
            Some(Output::Write) => "ok".to_string(),
            Some(Output::Cas(succeeded)) => succeeded.to_string(),
        };
        let returned = op.return_ns.map_or("?".to_string(), |r| r.to_string());
        format!("client {} [{}..{}]: {what} -> {answer}", op.client, op.call_ns, returned)
    }
}

fn show(value: Option<&String>) -> String {
    value.map_or("absent".to_string(), |v| format!("{v:?}"))
}
