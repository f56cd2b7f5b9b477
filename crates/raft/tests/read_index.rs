//! Linearizable reads with ReadIndex (thesis section 6.4).

mod common;

use balsa_raft::{MessageBody, ReadIndexError, ReadState, Role};
use common::{between, cmd, Cluster, ELECTION_TICKS as T};

fn ok(context: &str, index: u64) -> ReadState {
    ReadState { context: cmd(context), result: Ok(index) }
}

fn successes(states: &[ReadState]) -> usize {
    states.iter().filter(|s| s.result.is_ok()).count()
}

/// Reference: thesis section 6.4, steps 1–3: the leader records its commit index as the read
/// index, then "sends a new round of heartbeats and waits for their acknowledgments from a
/// majority of the cluster" before the read may proceed.
#[test]
fn read_at_the_leader_completes_only_after_a_quorum_heartbeat_round() {
    let mut c = Cluster::new(5);
    c.elect(1);
    c.propose(1, "a").expect("leader");
    c.run(2);
    assert!(c.queue.is_empty());
    let commit = c.raft(1).status().commit_index;

    c.read_index(1, "r1").expect("leader registers the read");
    assert!(c.node(1).read_states.is_empty(), "no answer before the heartbeat round");
    let round: Vec<_> = c.queue.iter().filter(|m| m.from == 1).map(|m| m.to).collect();
    assert_eq!(round, vec![2, 3, 4, 5], "the read triggered a heartbeat round to everyone");

    c.deliver_matching(|m| between(m, 1, 2));
    assert!(c.node(1).read_states.is_empty(), "two of five is no quorum");
    c.deliver_matching(|m| between(m, 1, 3));
    assert_eq!(c.node(1).read_states, vec![ok("r1", commit)], "three of five confirm leadership");
    c.deliver_all();
    assert_eq!(c.node(1).read_states.len(), 1, "answered exactly once");

    // Several reads registered together share one round.
    let before = c.sent.len();
    c.raft_mut(1).read_index(cmd("r2")).expect("leader");
    c.raft_mut(1).read_index(cmd("r3")).expect("leader");
    c.process(1);
    let heartbeats =
        c.sent[before..].iter().filter(|m| matches!(m.body, MessageBody::AppendEntries(_))).count();
    assert_eq!(heartbeats, 4, "one round for both reads");
    c.deliver_all();
    assert_eq!(c.node(1).read_states[1..], [ok("r2", commit), ok("r3", commit)]);
}

/// Reference: thesis section 6.4 ("if the leader is deposed, it will not be able to gather
/// acknowledgements from a majority, so the read fails") and 6.2.
#[test]
fn leader_partitioned_from_the_majority_never_serves_a_read() {
    let mut c = Cluster::new(5);
    c.elect(1);
    c.run(2);
    c.partition(&[&[1, 2], &[3, 4, 5]]);
    c.read_index(1, "local").expect("still leader, the read is registered");
    c.read_index(2, "forwarded").expect("node 2 forwards to node 1");

    for tick in 0..4 * T {
        c.run(1);
        assert_eq!(successes(&c.node(1).read_states), 0, "tick {tick}: a minority leader served a read");
        assert_eq!(successes(&c.node(2).read_states), 0, "tick {tick}: a minority leader served a read");
        // Keep asking while it still believes it leads.
        if c.raft(1).role() == Role::Leader {
            c.read_index(1, "again").expect("leader");
        }
    }
    assert_ne!(c.raft(1).role(), Role::Leader);
    // Every read it registered failed once it stepped down, so clients can retry elsewhere.
    let local = &c.node(1).read_states;
    assert!(!local.is_empty());
    assert!(local.iter().all(|s| matches!(s.result, Err(ReadIndexError::NotLeader { .. }))));
    assert!(local.iter().any(|s| s.context == cmd("local")));
    let forwarded = &c.node(2).read_states;
    assert_eq!(forwarded.len(), 1);
    assert!(matches!(forwarded[0].result, Err(ReadIndexError::NotLeader { .. })));
    // Now it knows no leader at all and refuses outright.
    assert_eq!(c.read_index(1, "late"), Err(ReadIndexError::NotLeader { leader_hint: None }));
}

/// Reference: thesis section 6.4: a follower "issues a request to the leader to ask for the
/// current readIndex"; the leader runs steps 1–3 and answers.
#[test]
fn read_at_a_follower_is_forwarded_and_resolved() {
    let mut c = Cluster::new(3);
    c.elect(1);
    for i in 0..3 {
        c.propose(1, &format!("w{i}")).expect("leader");
    }
    c.run(2);
    let commit = c.raft(1).status().commit_index;

    c.read_index(2, "f").expect("follower knows the leader");
    let forwarded: Vec<_> = c.queue.iter().filter(|m| matches!(m.body, MessageBody::ReadIndex(_))).collect();
    assert_eq!(forwarded.len(), 1);
    assert_eq!((forwarded[0].from, forwarded[0].to), (2, 1));
    c.deliver_all();
    assert_eq!(c.node(2).read_states, vec![ok("f", commit)]);
    assert!(c.node(1).read_states.is_empty(), "the leader does not surface a forwarded read itself");
    assert!(c.node(2).applied_index >= commit, "the follower can serve it once applied");

    // A follower that knows no leader refuses at once.
    let mut lonely = Cluster::new(3);
    assert_eq!(lonely.read_index(2, "nobody"), Err(ReadIndexError::NotLeader { leader_hint: None }));
}

/// Reference: thesis section 6.4, step 1: "if the leader has not yet marked an entry from its
/// current term committed, it waits until it has done so" (its no-op, section 6.4 and 3.6.2).
#[test]
fn new_leader_serves_no_read_before_its_noop_commits() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.propose(1, "a").expect("leader");
    c.run(2);
    let old_commit = c.raft(2).status().commit_index;
    c.crash(1);

    // Node 2's AppendEntries carrying entries are lost; its heartbeats get through, so heartbeat
    // rounds are acknowledged by a quorum all along.
    c.set_filter(|m| {
        !(m.from == 2 && matches!(&m.body, MessageBody::AppendEntries(ae) if !ae.entries.is_empty()))
    });
    let term = c.elect(2);
    let noop = c.raft(2).status().last_index;
    assert_eq!(c.raft(2).term_at(noop), Some(term));
    assert_eq!(c.raft(2).status().commit_index, old_commit);

    c.read_index(2, "early").expect("leader registers the read");
    c.run(3 * T);
    assert_eq!(c.raft(2).role(), Role::Leader);
    assert!(c.raft(2).progress(3).expect("follower").read_round_acked > 0, "rounds were acknowledged");
    assert_eq!(c.raft(2).status().commit_index, old_commit, "the no-op cannot commit");
    assert!(c.node(2).read_states.is_empty(), "no read before the leader commits an entry of its term");

    c.clear_filter();
    c.run(2);
    assert!(c.raft(2).status().commit_index >= noop);
    let states = &c.node(2).read_states;
    assert_eq!(states.len(), 1);
    let index = states[0].result.clone().expect("served once the no-op committed");
    assert!(index >= noop, "read index {index} must cover the new leader's no-op at {noop}");
}

/// Reference: thesis section 6.4 (only a leader that confirms it still leads may answer a read)
/// and paper section 5.1 (requests from an older term are not acted on). A follower's forwarded
/// read is delayed until its old leader lost leadership: it must never be answered successfully.
#[test]
fn forwarded_read_reaching_a_deposed_leader_is_never_served() {
    let mut c = Cluster::new(3);
    let term = c.elect(1);
    c.run(2);
    c.read_index(3, "r").expect("forwarded to node 1");
    let held = c.take_matching(|m| matches!(m.body, MessageBody::ReadIndex(_)));
    assert_eq!(held.len(), 1);

    // Leadership moves from 1 to 2 while node 3 hears nothing.
    c.isolate(3);
    c.raft_mut(1).transfer_leader(2).expect("voter");
    c.process(1);
    c.run_until(T, |c| c.raft(2).role() == Role::Leader).expect("transfer completes");
    assert_eq!(c.raft(2).current_term(), term + 1);
    assert_eq!(c.raft(1).role(), Role::Follower);

    // The delayed read finally arrives at node 1.
    assert!(c.deliver(held.into_iter().next().expect("held")));
    c.heal();
    c.run(3);
    assert_eq!(c.raft(3).leader_id(), Some(2));
    assert_eq!(successes(&c.node(3).read_states), 0, "a deposed leader served a read");
    assert_eq!(successes(&c.node(1).read_states), 0);
}

fn lease_cluster(n: u64, seed: u64) -> Cluster {
    Cluster::with_configs(balsa_raft::Membership::new(1..=n), |id| {
        let mut cfg = common::test_config(id);
        cfg.read_mode = balsa_raft::ReadMode::Lease;
        cfg.seed = seed * 10 + id;
        cfg
    })
}

/// Reference: thesis section 6.4.1: with a lease, the leader answers without a heartbeat round,
/// but only while a majority acknowledged it less than an election timeout (minus a clock-drift
/// margin) ago; voters will not elect anyone else before then (lazy voters, 4.2.3). The harness
/// checks every served read against the highest index known committed when it was asked.
#[test]
fn lease_reads_are_local_and_never_outlive_the_lease() {
    let mut served_after_cut = 0;
    for seed in 0..10 {
        let mut c = lease_cluster(5, seed);
        c.elect(1);
        c.run(3 + seed); // vary where in the heartbeat/CheckQuorum cycle the cut falls
        let commit = c.raft(1).status().commit_index;
        let sent = c.sent.len();
        c.read_index(1, "healthy").expect("leader");
        assert_eq!(c.node(1).read_states, vec![ok("healthy", commit)], "seed {seed}: served at once");
        assert_eq!(c.sent.len(), sent, "seed {seed}: without a heartbeat round");

        c.partition(&[&[1], &[2, 3, 4, 5]]);
        let mut new_leader_committed = false;
        for i in 0..4 * T {
            c.run(1);
            if let Some(l) = c.leader().filter(|&l| l != 1) {
                let index = c.propose(l, &format!("w{i}")).expect("new leader");
                c.deliver_all();
                new_leader_committed |= c.raft(l).status().commit_index >= index;
            }
            if c.raft(1).role() == Role::Leader {
                c.read_index(1, &format!("p{i}")).expect("leader");
                if c.node(1)
                    .read_states
                    .last()
                    .is_some_and(|s| s.context == cmd(&format!("p{i}")) && s.result.is_ok())
                {
                    served_after_cut += 1;
                    assert!(i < T, "seed {seed}: lease read served {i} ticks after the cut");
                }
            }
        }
        assert!(new_leader_committed, "seed {seed}: the majority moved on (so a stale read would show)");
        assert_ne!(c.raft(1).role(), Role::Leader);
    }
    assert!(served_after_cut > 0, "the lease was in use after the cut in some runs");
}

/// Reference: thesis section 6.4.1 and 3.10: a leader that sent TimeoutNow lets its successor be
/// elected before its lease runs out, so from then on it must not serve reads from the lease.
#[test]
fn leadership_transfer_revokes_the_lease() {
    let mut c = lease_cluster(3, 0);
    c.elect(1);
    c.run(2);
    c.read_index(1, "before").expect("leader");
    assert!(c.node(1).read_states[0].result.is_ok());

    c.raft_mut(1).transfer_leader(2).expect("voter");
    c.process(1);
    let timeout_now = c.take_matching(|m| matches!(m.body, MessageBody::TimeoutNow));
    assert_eq!(timeout_now.len(), 1, "node 2 was up to date: TimeoutNow at once");
    // From now on node 1 hears nothing; node 2 wins with node 3's vote and commits a write.
    c.isolate(1);
    c.deliver(timeout_now.into_iter().next().expect("TimeoutNow"));
    c.deliver_all();
    assert_eq!(c.raft(2).role(), Role::Leader);
    let w = c.propose(2, "w").expect("new leader");
    c.deliver_all();
    assert!(c.raft(2).status().commit_index >= w);

    assert_eq!(c.raft(1).role(), Role::Leader, "node 1 has not noticed yet");
    for i in 0..T {
        if c.raft(1).role() == Role::Leader {
            c.read_index(1, &format!("after{i}")).expect("still believes it leads");
        }
        c.run(1);
    }
    assert_eq!(successes(&c.node(1).read_states), 1, "only the read from before the transfer");
}
