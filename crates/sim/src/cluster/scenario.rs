//! Scripted runs that measure rather than hunt: replacing two of three members of a cluster
//! holding a large state, with and without catch-up from peers.

use std::collections::BTreeSet;

use balsa_raft::{MembershipChange, NodeId, Role};
use bytes::Bytes;

use super::{Cluster, Event};
use crate::config::SimConfig;
use crate::history::Micros;

/// What the replacement scenario measured.
#[derive(Clone, Debug)]
pub struct ReplacementReport {
    /// Size of the state machine (its snapshot).
    pub state_bytes: u64,
    /// Whether snapshot transfers were delegated to followers.
    pub delegate: bool,
    /// From the first change to the commit of the final configuration.
    pub change_us: Micros,
    /// Client operations per second in the second before the change.
    pub ops_per_s_before: f64,
    /// Client operations per second while the change ran.
    pub ops_per_s_during: f64,
    /// Bytes the leader sent while the change ran.
    pub leader_bytes: u64,
    /// Bytes every other server sent while the change ran.
    pub others_bytes: u64,
    /// The configuration changes made, in order.
    pub steps: Vec<String>,
}

const WARMUP_US: Micros = 1_000_000;
const CHANGE_AT_US: Micros = 2_000_000;
const LIMIT_US: Micros = 300_000_000;

/// Replaces two of three voters the safe way (thesis 4.2.1): two fresh servers join as learners,
/// are promoted once caught up (each a joint change), then the two old followers are removed.
/// The cluster holds `state_bytes` of state, so the new servers catch up by snapshot; the leader
/// keeps serving clients throughout.
pub fn replace_two_of_three(
    state_bytes: u64,
    delegate: bool,
    seed: u64,
    trace: bool,
) -> Result<ReplacementReport, String> {
    let mut cfg = SimConfig::from_seed(seed, Some(3));
    cfg.trace = trace;
    cfg.fault_phase_us = 0;
    cfg.heal_phase_us = LIMIT_US;
    cfg.clients = 4;
    cfg.keys = 4;
    cfg.reconfigure = false;
    cfg.snapshot_every_entries = None;
    cfg.snapshot_chunk_bytes = 1 << 20;
    cfg.max_inflight_msgs = 4;
    cfg.max_msg_bytes = 64 << 10;
    cfg.delegate_snapshots = delegate;
    cfg.snapshot_catch_up_entries = 100;
    cfg.memory_store = true;
    cfg.pre_vote = true;
    cfg.check_quorum = true;
    cfg.read_mode = balsa_raft::ReadMode::Safe;
    cfg.tick_skew_per_mille = 0;
    let mut c = Cluster::new(cfg);
    c.clients_stop_us = Micros::MAX;
    c.start();
    let result = run_replacement(&mut c, state_bytes, delegate);
    if trace {
        for line in &c.trace {
            println!("{line}");
        }
    }
    result
}

fn run_replacement(c: &mut Cluster, state_bytes: u64, delegate: bool) -> Result<ReplacementReport, String> {
    let fail = |v: super::Violation| format!("violation at {}us: {}", v.at_us, v.what);
    while c.step_until(WARMUP_US).map_err(fail)? {}
    // Give every server the same large state and a snapshot of it, as a long-running cluster
    // would have: servers joining now must catch up by snapshot.
    let ballast = Bytes::from(vec![0u8; state_bytes as usize]);
    for id in c.node_ids.clone() {
        c.nodes.get_mut(&id).expect("node").kv.ballast = ballast.clone();
    }
    drop(ballast);
    // A server with a write in flight cannot snapshot this instant; try again shortly.
    let mut pending: Vec<NodeId> = c.node_ids.clone();
    while !pending.is_empty() {
        pending.retain(|&id| !c.snapshot_now(id));
        let next = c.now_us + 1_000;
        while c.step_until(next).map_err(fail)? {}
    }
    while c.step_until(CHANGE_AT_US).map_err(fail)? {}
    let leader = c.leader().ok_or("no leader before the change")?;
    let old: Vec<NodeId> = c.node_ids.iter().copied().filter(|&id| id != leader).collect();
    let fresh = [c.add_server().ok_or("cannot add")?, c.add_server().ok_or("cannot add")?];
    let mut plan = vec![
        MembershipChange::AddVoter(fresh[0]),
        MembershipChange::AddVoter(fresh[1]),
        MembershipChange::Remove(old[0]),
        MembershipChange::Remove(old[1]),
    ];
    plan.reverse();
    let target: BTreeSet<NodeId> = [leader, fresh[0], fresh[1]].into();
    let bytes_at_start = c.bytes_sent.clone();
    let mut steps = Vec::new();
    let done_us = loop {
        if !c.step_until(LIMIT_US).map_err(fail)? {
            return Err("the change did not finish in time".into());
        }
        let raft = c.nodes[&leader].raft.as_ref().expect("the leader stays up");
        if raft.role() != Role::Leader {
            return Err("the leader lost leadership".into());
        }
        let committed = raft.membership_at(raft.status().commit_index);
        if committed.voters == target && !committed.is_joint() && committed.learners.is_empty() {
            break c.now_us;
        }
        let promoted = fresh.iter().all(|id| raft.membership().voters.contains(id));
        let Some(next) = plan.last().cloned() else { continue };
        let is_removal = matches!(next, MembershipChange::Remove(_));
        if is_removal && !promoted {
            continue;
        }
        let raft = c.nodes.get_mut(&leader).expect("leader").raft.as_mut().expect("up");
        if raft.change_membership(next.clone()).is_ok() {
            steps.push(format!("{:.3}s {next:?}", c.now_us as f64 / 1e6));
            plan.pop();
            c.schedule(0, Event::Tick(leader));
        }
    };
    let history = &c.history;
    let completed_in = |lo: Micros, hi: Micros| {
        history.iter().filter(|o| o.completed_us.is_some_and(|t| t >= lo && t < hi)).count()
    };
    let before = completed_in(CHANGE_AT_US - 1_000_000, CHANGE_AT_US) as f64;
    let during = completed_in(CHANGE_AT_US, done_us) as f64 / ((done_us - CHANGE_AT_US) as f64 / 1e6);
    let sent = |id: &NodeId| {
        c.bytes_sent.get(id).copied().unwrap_or(0) - bytes_at_start.get(id).copied().unwrap_or(0)
    };
    let leader_bytes = sent(&leader);
    let others_bytes = c.node_ids.iter().filter(|&&id| id != leader).map(sent).sum();
    Ok(ReplacementReport {
        state_bytes,
        delegate,
        change_us: done_us - CHANGE_AT_US,
        ops_per_s_before: before,
        ops_per_s_during: during,
        leader_bytes,
        others_bytes,
        steps,
    })
}
