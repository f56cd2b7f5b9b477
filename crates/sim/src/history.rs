//! What clients did and saw, and the checks on it: no acknowledged write lost, no phantom value,
//! reads linearizable.

use std::collections::BTreeMap;

use crate::kv::ClientId;

/// Simulated time, in microseconds.
pub type Micros = u64;

/// One client operation, from invocation to (maybe) completion.
#[derive(Clone, Debug)]
pub struct Op {
    /// Who issued it.
    pub client: ClientId,
    /// Which register.
    pub key: u8,
    /// What it did.
    pub kind: OpKind,
    /// When the client first sent it.
    pub invoked_us: Micros,
    /// When the client got the answer; `None` if it never did (timed out for good, or the run
    /// ended): such an operation may or may not have taken effect.
    pub completed_us: Option<Micros>,
}

/// Reads and writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpKind {
    /// Write a unique value.
    Put {
        /// The value.
        value: u64,
    },
    /// Linearizable read; `result` is what it returned (`None` inside: register unset).
    Get {
        /// The answer, once there is one.
        result: Option<Option<u64>>,
    },
}

/// A safety violation found in a history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryViolation(pub String);

/// Checks every register's history against the order in which writes took effect in the
/// committed log (`effective`: key -> values in log order).
///
/// With the write order fixed, a history is linearizable iff one can place every operation at a
/// point inside its interval such that writes follow the log order and each read sits after the
/// write it saw and before the next one. That is a precedence graph over intervals, feasible iff
/// no operation must precede another that completed before it was invoked. The four families of
/// paths in that graph are checked below with prefix maxima, in O(n log n) per register.
pub fn check_history(ops: &[Op], effective: &BTreeMap<u8, Vec<u64>>) -> Result<(), HistoryViolation> {
    let mut write_of: BTreeMap<u64, &Op> = BTreeMap::new();
    for op in ops {
        if let OpKind::Put { value } = op.kind {
            write_of.insert(value, op);
        }
    }
    no_acknowledged_write_lost(ops, effective)?;
    let mut keys: Vec<u8> = ops.iter().map(|o| o.key).collect();
    keys.sort_unstable();
    keys.dedup();
    for key in keys {
        let order = effective.get(&key).map(Vec::as_slice).unwrap_or(&[]);
        check_register(key, ops, order, &write_of)?;
    }
    Ok(())
}

fn no_acknowledged_write_lost(
    ops: &[Op],
    effective: &BTreeMap<u8, Vec<u64>>,
) -> Result<(), HistoryViolation> {
    for op in ops {
        if let (OpKind::Put { value }, Some(done)) = (&op.kind, op.completed_us) {
            let present = effective.get(&op.key).is_some_and(|vs| vs.contains(value));
            if !present {
                return Err(HistoryViolation(format!(
                    "acknowledged write lost: client {} put k{}={value:#x} acked at {done}us is not in the committed log",
                    op.client, op.key
                )));
            }
        }
    }
    Ok(())
}

fn check_register(
    key: u8,
    ops: &[Op],
    order: &[u64],
    write_of: &BTreeMap<u64, &Op>,
) -> Result<(), HistoryViolation> {
    let never = Micros::MAX;
    let mut inv = Vec::with_capacity(order.len());
    let mut resp = Vec::with_capacity(order.len());
    for value in order {
        let op = write_of.get(value).ok_or_else(|| {
            HistoryViolation(format!("k{key}: committed value {value:#x} was never written by a client"))
        })?;
        inv.push(op.invoked_us);
        resp.push(op.completed_us.unwrap_or(never));
    }
    // Writes among themselves: W_i before W_j in the log needs inv(W_i) < resp(W_j).
    let mut max_inv = 0;
    for j in 0..order.len() {
        if j > 0 && resp[j] < max_inv {
            return Err(HistoryViolation(format!(
                "k{key}: write {:#x} completed at {}us, before an earlier write in the log was invoked at {max_inv}us",
                order[j], resp[j]
            )));
        }
        max_inv = max_inv.max(inv[j]);
    }
    let position: BTreeMap<u64, usize> = order.iter().enumerate().map(|(i, &v)| (v, i + 1)).collect();
    // Completed reads as (position of the write they saw, 0 = initial), invocation, response.
    let mut reads = Vec::new();
    for op in ops.iter().filter(|o| o.key == key) {
        let (OpKind::Get { result: Some(result) }, Some(done)) = (&op.kind, op.completed_us) else {
            continue;
        };
        let pos = match result {
            None => 0,
            Some(v) => *position.get(v).ok_or_else(|| {
                HistoryViolation(format!(
                    "k{key}: client {} read phantom value {v:#x} that never committed",
                    op.client
                ))
            })?,
        };
        reads.push((pos, op.invoked_us, done, op.client));
    }
    let prefix_max_inv: Vec<Micros> = inv
        .iter()
        .scan(0, |m, &i| {
            *m = (*m).max(i);
            Some(*m)
        })
        .collect();
    let mut suffix_min_resp = vec![never; order.len() + 1];
    for j in (0..order.len()).rev() {
        suffix_min_resp[j] = suffix_min_resp[j + 1].min(resp[j]);
    }
    for &(pos, r_inv, r_resp, client) in &reads {
        // The write it saw (and all before it) must have been invoked before the read ended.
        if pos > 0 && r_resp < prefix_max_inv[pos - 1] {
            return Err(HistoryViolation(format!(
                "k{key}: client {client} read the value at log position {pos} at {r_resp}us, before that write (or an earlier one) was invoked"
            )));
        }
        // No later write may have completed before the read began (stale read).
        if suffix_min_resp[pos] < r_inv {
            return Err(HistoryViolation(format!(
                "k{key}: stale read by client {client} invoked at {r_inv}us saw position {pos}, but a later write had completed at {}us",
                suffix_min_resp[pos]
            )));
        }
    }
    // Reads among themselves: a read that saw an older write must not follow one that saw a newer.
    reads.sort_unstable();
    let mut max_inv_below = 0;
    let mut i = 0;
    while i < reads.len() {
        let pos = reads[i].0;
        let group_end = reads[i..].iter().position(|r| r.0 != pos).map_or(reads.len(), |n| i + n);
        for r in &reads[i..group_end] {
            if r.2 < max_inv_below {
                return Err(HistoryViolation(format!(
                    "k{key}: client {} saw log position {pos} and finished at {}us, yet a read invoked later, at {max_inv_below}us, saw an older value",
                    r.3, r.2
                )));
            }
        }
        for r in &reads[i..group_end] {
            max_inv_below = max_inv_below.max(r.1);
        }
        i = group_end;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(client: ClientId, value: u64, inv: Micros, done: Option<Micros>) -> Op {
        Op { client, key: 0, kind: OpKind::Put { value }, invoked_us: inv, completed_us: done }
    }

    fn get(client: ClientId, result: Option<u64>, inv: Micros, done: Micros) -> Op {
        Op {
            client,
            key: 0,
            kind: OpKind::Get { result: Some(result) },
            invoked_us: inv,
            completed_us: Some(done),
        }
    }

    fn effective(values: &[u64]) -> BTreeMap<u8, Vec<u64>> {
        BTreeMap::from([(0, values.to_vec())])
    }

    #[test]
    fn accepts_a_linearizable_history() {
        let ops = vec![
            put(1, 10, 0, Some(5)),
            get(2, Some(10), 3, 8),
            put(1, 11, 6, Some(9)),
            get(2, Some(11), 10, 12),
        ];
        assert_eq!(check_history(&ops, &effective(&[10, 11])), Ok(()));
        // Concurrent read may see either value.
        let ops = vec![
            put(1, 10, 0, Some(5)),
            put(1, 11, 6, Some(20)),
            get(2, Some(10), 7, 9),
            get(3, Some(11), 8, 10),
        ];
        assert_eq!(check_history(&ops, &effective(&[10, 11])), Ok(()));
    }

    #[test]
    fn catches_a_stale_read() {
        let ops = vec![put(1, 10, 0, Some(5)), put(1, 11, 6, Some(9)), get(2, Some(10), 10, 12)];
        assert!(check_history(&ops, &effective(&[10, 11])).unwrap_err().0.contains("stale read"));
    }

    #[test]
    fn catches_a_read_of_the_future_and_a_phantom() {
        let ops = vec![get(2, Some(10), 0, 2), put(1, 10, 5, Some(9))];
        assert!(check_history(&ops, &effective(&[10])).is_err());
        let ops = vec![get(2, Some(99), 0, 2)];
        assert!(check_history(&ops, &effective(&[])).unwrap_err().0.contains("phantom"));
    }

    #[test]
    fn catches_a_lost_acknowledged_write() {
        let ops = vec![put(1, 10, 0, Some(5))];
        assert!(check_history(&ops, &effective(&[])).unwrap_err().0.contains("lost"));
        // Unacknowledged and absent: fine.
        let ops = vec![put(1, 10, 0, None)];
        assert_eq!(check_history(&ops, &effective(&[])), Ok(()));
    }

    #[test]
    fn catches_reads_going_backwards() {
        // Write 11 is still in flight; one read sees it, a later read sees the older value.
        let ops =
            vec![put(1, 10, 0, Some(1)), put(1, 11, 2, None), get(2, Some(11), 3, 4), get(3, Some(10), 5, 6)];
        assert!(check_history(&ops, &effective(&[10, 11])).is_err());
    }

    #[test]
    fn catches_write_order_against_real_time() {
        // 11 completed before 10 was invoked, yet the log puts 10 first.
        let ops = vec![put(1, 11, 0, Some(1)), put(2, 10, 5, Some(6))];
        assert!(check_history(&ops, &effective(&[10, 11])).is_err());
    }
}
