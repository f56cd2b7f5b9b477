//! The simulator inside `cargo test`: many seeds, every safety property checked after every
//! event, convergence and the client oracle checked at the end of each run.

use balsa_sim::{run_seed, run_seeds, SimConfig};

fn assert_no_violations(seeds: std::ops::Range<u64>, nodes: Option<usize>) {
    let failures = run_seeds(seeds.clone(), nodes, 2);
    let report: Vec<String> = failures
        .iter()
        .map(|(seed, v)| {
            format!(
                "seed {seed}: {} (replay: cargo run -p balsa-sim --release -- --seed {seed} --trace)",
                v.what
            )
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} seeds failed:\n{}",
        failures.len(),
        seeds.end - seeds.start,
        report.join("\n")
    );
}

/// 500 seeds with the cluster size drawn per seed (3, 5 or 7 servers).
#[test]
fn five_hundred_seeds_mixed_sizes() {
    assert_no_violations(0..500, None);
}

#[test]
fn three_node_clusters() {
    assert_no_violations(10_000..10_100, Some(3));
}

#[test]
fn seven_node_clusters() {
    assert_no_violations(20_000..20_060, Some(7));
}

/// TigerBeetle's rule: one seed replays a whole run, event for event.
#[test]
fn a_seed_replays_identically() {
    let run = |seed| {
        let mut cfg = SimConfig::from_seed(seed, None);
        cfg.trace = true;
        balsa_sim::run_with_trace(cfg)
    };
    let (a, trace_a) = run(12_345);
    let (b, trace_b) = run(12_345);
    assert_eq!(a, b);
    assert!(trace_a.len() > 1_000, "the run does real work");
    assert_eq!(trace_a, trace_b, "same seed, same trace");
    let (_, trace_c) = run(12_346);
    assert_ne!(trace_a, trace_c, "another seed, another run");
}

/// The runs are not idle: faults happen, leaders change, clients get answers.
#[test]
fn runs_exercise_the_cluster() {
    let mut elections = 0;
    let mut ops = 0;
    let mut faults = 0;
    for seed in 0..20 {
        let s = run_seed(SimConfig::from_seed(seed, None)).expect("safe");
        assert!(s.committed_index > 50, "seed {seed} committed only {}", s.committed_index);
        elections += s.elections;
        ops += s.ops_completed;
        faults += s.faults;
    }
    assert!(elections > 40, "only {elections} elections in 20 runs");
    assert!(faults > 60, "only {faults} faults in 20 runs");
    assert!(ops > 5_000, "only {ops} client operations in 20 runs");
}

/// Issue 4's measurement as a regression test, at a small scale: replacing two of three voters
/// completes with clients served throughout, and catch-up from peers takes the snapshot traffic
/// off the leader (Omni-Paxos' lesson, deck 003).
#[test]
fn replacing_two_of_three_offloads_the_leader_with_catch_up_from_peers() {
    use balsa_sim::cluster::scenario::replace_two_of_three;
    let state = 16 << 20;
    let with = replace_two_of_three(state, true, 1, false).expect("completes with helpers");
    let without = replace_two_of_three(state, false, 1, false).expect("completes without helpers");
    assert!(without.leader_bytes >= 2 * state, "the leader sends both snapshots: {}", without.leader_bytes);
    assert!(with.leader_bytes < state / 8, "helpers send the snapshots: leader sent {}", with.leader_bytes);
    assert!(with.others_bytes >= 2 * state);
    assert!(with.change_us < without.change_us, "parallel catch-up is faster");
    for r in [&with, &without] {
        assert!(r.ops_per_s_during > 0.5 * r.ops_per_s_before, "clients keep being served: {r:?}");
    }
}
