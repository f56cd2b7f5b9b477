//! Helpers shared by the integration tests: a seeded RNG, register history builders, random
//! linearizable histories, and a brute-force reference checker.
#![allow(dead_code)]

use balsa_lincheck::register::{Input, Output};
use balsa_lincheck::{Model, Operation};

pub type RegOp = Operation<Input, Output>;

/// SplitMix64: a tiny, seeded, reproducible generator (no dependency needed).
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

pub fn read(client: u64, call: u64, ret: u64, key: &str, seen: Option<&str>) -> RegOp {
    Operation::completed(
        client,
        call,
        ret,
        Input::Read { key: key.into() },
        Output::Read(seen.map(String::from)),
    )
}

pub fn write(client: u64, call: u64, ret: u64, key: &str, value: &str) -> RegOp {
    Operation::completed(
        client,
        call,
        ret,
        Input::Write { key: key.into(), value: value.into() },
        Output::Write,
    )
}

pub fn write_unknown(client: u64, call: u64, key: &str, value: &str) -> RegOp {
    Operation::unknown(client, call, Input::Write { key: key.into(), value: value.into() })
}

pub fn cas(
    client: u64,
    call: u64,
    ret: u64,
    key: &str,
    expected: Option<&str>,
    new: &str,
    ok: bool,
) -> RegOp {
    Operation::completed(
        client,
        call,
        ret,
        Input::Cas { key: key.into(), expected: expected.map(String::from), new: new.into() },
        Output::Cas(ok),
    )
}

/// The reference: tries every order (and every subset of unknown-outcome operations) that
/// respects real time. Exponential; for histories of at most about 8 operations. Independent of
/// the crate's search: no list, no memo, no partitioning.
pub fn brute_force<M: Model>(model: &M, history: &[Operation<M::Input, M::Output>]) -> bool {
    fn go<M: Model>(
        model: &M,
        history: &[Operation<M::Input, M::Output>],
        placed: &mut Vec<bool>,
        state: &M::State,
    ) -> bool {
        let all_required_placed =
            history.iter().zip(placed.iter()).all(|(op, &p)| p || op.return_ns.is_none());
        if all_required_placed {
            return true;
        }
        for x in 0..history.len() {
            if placed[x] {
                continue;
            }
            // x may go next unless some unplaced operation returned strictly before x's call.
            let blocked = (0..history.len()).any(|y| {
                !placed[y] && y != x && history[y].return_ns.is_some_and(|r| r < history[x].call_ns)
            });
            if blocked {
                continue;
            }
            if let Some(next) = model.step(state, &history[x].input, history[x].output.as_ref()) {
                placed[x] = true;
                let found = go(model, history, placed, &next);
                placed[x] = false;
                if found {
                    return true;
                }
            }
        }
        false
    }
    go(model, history, &mut vec![false; history.len()], &model.init())
}

/// Random intervals with linearization points inside them, executed on a real register: a
/// linearizable history by construction. `unknown_percent` of the operations lose their answer
/// (and, half of those, never take effect at all).
pub fn linearizable_register_history(
    rng: &mut Rng,
    ops: usize,
    clients: u64,
    keys: usize,
    unknown_percent: u64,
) -> Vec<RegOp> {
    use std::collections::BTreeMap;
    // Each client issues operations back to back; an operation occupies [call, ret] and takes
    // effect at a point drawn inside it.
    let mut next_free = vec![0u64; clients as usize];
    let mut planned = Vec::with_capacity(ops);
    for n in 0..ops {
        let client = rng.below(clients);
        let call = next_free[client as usize] + rng.below(50);
        let ret = call + 1 + rng.below(200);
        let point = call + rng.below(ret - call + 1);
        next_free[client as usize] = ret + 1;
        let key = format!("k{}", rng.below(keys as u64));
        let input = match rng.below(10) {
            0..=3 => Input::Read { key },
            4..=7 => Input::Write { key, value: format!("v{n}") },
            _ => Input::Cas {
                key,
                expected: if rng.chance(20) { None } else { Some(format!("v{}", rng.below(n as u64 + 1))) },
                new: format!("v{n}"),
            },
        };
        let unknown = rng.chance(unknown_percent);
        let takes_effect = !unknown || rng.chance(50);
        // Ties in linearization points are broken by the plan order: still inside the intervals.
        planned.push((point, n, client, call, ret, input, unknown, takes_effect));
    }
    planned.sort_by_key(|p| (p.0, p.1));
    let mut store: BTreeMap<String, String> = BTreeMap::new();
    let mut history = Vec::with_capacity(ops);
    for (_, _, client, call, ret, input, unknown, takes_effect) in planned {
        let output = match &input {
            Input::Read { key } => Output::Read(store.get(key).cloned()),
            Input::Write { key, value } => {
                if takes_effect {
                    store.insert(key.clone(), value.clone());
                }
                Output::Write
            }
            Input::Cas { key, expected, new } => {
                let ok = store.get(key) == expected.as_ref();
                if ok && takes_effect {
                    store.insert(key.clone(), new.clone());
                }
                Output::Cas(ok)
            }
        };
        history.push(if unknown {
            Operation::unknown(client, call, input)
        } else {
            Operation::completed(client, call, ret, input, output)
        });
    }
    history.sort_by_key(|op| op.call_ns);
    history
}
