//! # balsa-sim: a whole cluster replayed from one seed
//!
//! The simulator runs the real `balsa-raft` core on N simulated servers with a simulated
//! network (loss, duplication, reordering, delay, symmetric, one-way and partial partitions,
//! including deck 003's quorum-loss, constrained-election and chained shapes), the real storage
//! engine (`balsa-storage`) over a simulated disk (a crash loses what was not synced and tears
//! the last write; reads return flipped bits at a set rate) and simulated clients that write, retry and read.
//! Every random choice comes from the seed, and time is simulated, so a seed replays exactly.
//!
//! After every event it checks the five safety properties of Raft (see [`invariants`]); at the
//! end it heals every fault, requires a leader and full convergence within a bound, and checks
//! the client history: no acknowledged write lost, no phantom value, reads linearizable
//! (see [`history`]).
//!
//! ```
//! use balsa_sim::{run_seed, SimConfig};
//!
//! let summary = run_seed(SimConfig::from_seed(7, Some(3))).expect("seed 7 is safe");
//! assert!(summary.elections >= 1);
//! assert!(summary.ops_completed > 0);
//! ```

pub mod cluster;
pub mod config;
pub mod durability;
pub mod history;
pub mod invariants;
pub mod kv;
pub mod network;
pub mod simfs;

use std::panic::{self, AssertUnwindSafe};

pub use cluster::{Cluster, Summary, Violation};
pub use config::SimConfig;

/// Runs one seed. A panic inside the core (a broken internal invariant) is reported as a
/// violation, like a failed check.
pub fn run_seed(cfg: SimConfig) -> Result<Summary, Violation> {
    run_with_trace(cfg).0
}

/// Runs one seed and also returns the trace recorded (empty unless `cfg.trace`).
pub fn run_with_trace(cfg: SimConfig) -> (Result<Summary, Violation>, Vec<String>) {
    let mut cluster = Cluster::new(cfg);
    let result = panic::catch_unwind(AssertUnwindSafe(|| cluster.run()));
    let result = match result {
        Ok(r) => r,
        Err(payload) => {
            let msg = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panic".into());
            Err(Violation { at_us: 0, what: format!("panic in the core: {msg}") })
        }
    };
    (result, cluster.trace().to_vec())
}

/// Runs seeds `seeds` on `threads` threads and returns the failures in seed order.
pub fn run_seeds(seeds: std::ops::Range<u64>, nodes: Option<usize>, threads: usize) -> Vec<(u64, Violation)> {
    let seeds: Vec<u64> = seeds.collect();
    let chunks: Vec<Vec<u64>> = (0..threads.max(1))
        .map(|t| seeds.iter().copied().skip(t).step_by(threads.max(1)).collect())
        .collect();
    let mut failures: Vec<(u64, Violation)> = std::thread::scope(|scope| {
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|chunk| {
                scope.spawn(move || {
                    chunk
                        .into_iter()
                        .filter_map(|seed| {
                            run_seed(SimConfig::from_seed(seed, nodes)).err().map(|v| (seed, v))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().expect("runner thread")).collect()
    });
    failures.sort_by_key(|(seed, _)| *seed);
    failures
}
