//! Leader election scenarios: randomized timeouts, crashes, stale leaders, PreVote, lazy voters
//! and CheckQuorum, and proposals at non-leaders.

mod common;

use balsa_raft::{Membership, MessageBody, ProposeError, Role};
use common::{test_config, Cluster, ELECTION_TICKS as T};

/// Every running server's term, by id.
fn terms(c: &Cluster) -> Vec<(u64, u64)> {
    c.ids().into_iter().filter(|&id| c.is_up(id)).map(|id| (id, c.raft(id).current_term())).collect()
}

/// Reference: paper section 5.2 (randomized election timeouts, "at most one candidate can win the
/// election for a particular term") and Figure 3 (Election Safety).
#[test]
fn randomized_timeouts_elect_exactly_one_leader() {
    for n in [3u64, 5] {
        for seed in 0..20u64 {
            let mut c = Cluster::with_configs(Membership::new(1..=n), |id| {
                let mut cfg = test_config(id);
                cfg.seed = seed * 100 + id;
                cfg
            });
            // Nobody may campaign before the minimum timeout T.
            c.run(T - 1);
            assert!(c.leader().is_none(), "n={n} seed={seed}: leader before any timeout could fire");
            assert!(terms(&c).iter().all(|&(_, t)| t == 0), "n={n} seed={seed}: term moved before T");

            let waited = c.run_until(10 * T, |c| c.leader().is_some());
            assert!(waited.is_some(), "n={n} seed={seed}: no leader within 10 election timeouts");
            let leader = c.leader().expect("leader");
            let term = c.raft(leader).current_term();

            // Let it settle: exactly one leader, everybody agrees on it and on the term, and the
            // term stops moving (no further elections while the leader is healthy).
            c.run(5 * T);
            let leaders: Vec<_> =
                c.ids().into_iter().filter(|&id| c.raft(id).role() == Role::Leader).collect();
            assert_eq!(leaders, vec![leader], "n={n} seed={seed}: exactly one leader");
            for id in c.ids() {
                assert_eq!(c.raft(id).current_term(), term, "n={n} seed={seed}: node {id} term");
                assert_eq!(c.raft(id).leader_id(), Some(leader), "n={n} seed={seed}: node {id} leader");
            }
            // One leader per term over the whole run (the harness also asserts it on every step).
            let by_term = c.leaders_by_term();
            assert_eq!(by_term.get(&term), Some(&leader));
            assert!(by_term.keys().all(|&t| t <= term));
            // The leader's no-op committed on every server.
            for id in c.ids() {
                assert!(c.raft(id).status().commit_index >= 1, "n={n} seed={seed}: node {id} commit");
            }
        }
    }
}

/// Reference: paper section 5.2 (split votes are resolved by randomized timeouts) and Figure 3.
/// Under random message loss elections take longer, but never produce two leaders in a term.
#[test]
fn lossy_network_still_elects_one_leader_per_term() {
    for seed in 0..10u64 {
        let mut c = Cluster::with_configs(Membership::new(1..=5), |id| {
            let mut cfg = test_config(id);
            cfg.seed = seed * 7 + id;
            cfg
        });
        c.set_loss(seed, 300);
        c.run(30 * T);
        c.set_loss(0, 0);
        let leader = c.wait_for_leader(20 * T);
        c.run(3 * T);
        assert_eq!(c.leader(), Some(leader), "seed {seed}: leader changed once the network was healthy");
        for id in c.ids() {
            assert_eq!(c.raft(id).leader_id(), Some(leader), "seed {seed}: node {id}");
        }
    }
}

/// Reference: paper section 5.2 (a new leader is elected when followers stop hearing from the
/// leader) and section 5.4 / Figure 3 (Leader Completeness: committed entries survive).
#[test]
fn leader_crash_elects_new_leader_in_higher_term_and_keeps_committed_entries() {
    for n in [3u64, 5] {
        let mut c = Cluster::new(n);
        let old = c.wait_for_leader(10 * T);
        let old_term = c.raft(old).current_term();
        let mut indexes = Vec::new();
        for i in 0..5 {
            indexes.push(c.propose(old, &format!("cmd{i}")).expect("leader accepts"));
            c.deliver_all();
        }
        c.run(2);
        let committed = c.raft(old).status().commit_index;
        assert!(committed >= *indexes.last().expect("proposed"), "n={n}: all five commands committed");

        c.crash(old);
        let waited = c.run_until(10 * T, |c| c.leader().is_some());
        assert!(waited.is_some(), "n={n}: the remaining majority elects a leader");
        let new = c.leader().expect("leader");
        assert_ne!(new, old);
        let new_term = c.raft(new).current_term();
        assert!(new_term > old_term, "n={n}: new leader's term {new_term} must exceed {old_term}");

        // Committed entries are in the new leader's log, unchanged, and stay applied everywhere.
        for &i in &indexes {
            let (term, _, data) = c.applied_at(i).expect("applied before the crash");
            assert_eq!(c.raft(new).term_at(i), Some(term), "n={n}: entry {i} kept");
            assert_eq!(c.raft(new).entry(i).map(|e| e.data.clone()), Some(data));
        }
        let after = c.propose(new, "after-crash").expect("new leader accepts");
        assert!(after > committed);
        c.run(3);

        // The old leader comes back as a follower of the new term and catches up.
        c.restart(old);
        c.run(3 * T);
        assert_eq!(c.leader(), Some(new), "n={n}: the restarted node does not disrupt the leader");
        assert_eq!(c.raft(old).role(), Role::Follower);
        assert_eq!(c.raft(old).current_term(), new_term);
        let up: Vec<_> = c.ids();
        c.assert_converged(new, &up);
        for id in c.ids() {
            let cmds = c.node(id).commands();
            assert_eq!(cmds.last().map(String::as_str), Some("after-crash"), "n={n}: node {id} applied");
            assert_eq!(cmds.len(), 6);
        }
    }
}

/// Reference: paper section 5.3 (a follower's conflicting uncommitted entries are overwritten by
/// the leader), section 5.4.2, and thesis section 6.2 (CheckQuorum: a leader that cannot reach a
/// majority steps down); thesis 9.6 (the healed side does not disrupt the new leader).
#[test]
fn stale_leader_steps_down_and_its_uncommitted_entries_are_overwritten() {
    let mut c = Cluster::new(5);
    let old = c.elect(1);
    let committed = c.propose(1, "committed").expect("leader");
    c.run(2);
    assert!(c.raft(1).status().commit_index >= committed);

    // Minority {1, 2} against majority {3, 4, 5}.
    c.partition(&[&[1, 2], &[3, 4, 5]]);
    let lost: Vec<_> = (0..3).map(|i| c.propose(1, &format!("lost{i}")).expect("still leader")).collect();
    c.deliver_all();
    assert_eq!(c.raft(2).term_at(lost[2]), Some(old), "the minority follower stored them");

    // CheckQuorum: the old leader gives up within two election timeouts, without a new term.
    let stepped_down = c.run_until(2 * T, |c| c.raft(1).role() != Role::Leader);
    assert!(stepped_down.is_some(), "a leader cut off from the majority must step down");
    assert_eq!(c.raft(1).current_term(), old, "stepping down does not change the term");
    assert_eq!(c.raft(1).leader_id(), None);

    // The majority elects a new leader and commits new entries.
    let new = c.run_until(10 * T, |c| [3, 4, 5].iter().any(|&id| c.raft(id).role() == Role::Leader));
    assert!(new.is_some(), "the majority side elects a leader");
    let new_leader = c.leader().expect("leader");
    assert!([3, 4, 5].contains(&new_leader));
    let new_term = c.raft(new_leader).current_term();
    assert!(new_term > old);
    for i in 0..4 {
        c.propose(new_leader, &format!("new{i}")).expect("new leader");
    }
    c.run(2);
    // The minority never commits or applies its entries, and never raises its term (PreVote).
    for id in [1, 2] {
        assert_eq!(c.raft(id).current_term(), old, "node {id} term while partitioned");
        assert!(c.raft(id).status().commit_index < lost[0], "node {id} must not commit");
        assert!(!c.node(id).commands().iter().any(|s| s.starts_with("lost")));
    }

    c.heal();
    c.run(3 * T);
    assert_eq!(c.leader(), Some(new_leader), "healing does not disrupt the new leader");
    assert_eq!(c.raft(new_leader).current_term(), new_term, "nor raise the term");
    for id in c.ids() {
        assert_eq!(c.raft(id).current_term(), new_term, "node {id} adopted the new term");
        assert_eq!(c.raft(id).leader_id(), Some(new_leader));
    }
    c.assert_converged(new_leader, &c.ids());
    // The committed entry is kept everywhere; the uncommitted ones are gone everywhere.
    for id in c.ids() {
        let cmds = c.node(id).commands();
        assert_eq!(cmds[0], "committed", "node {id}");
        assert!(!cmds.iter().any(|s| s.starts_with("lost")), "node {id} applied a lost entry");
        assert_eq!(cmds.iter().filter(|s| s.starts_with("new")).count(), 4, "node {id}");
        for &i in &lost {
            let data = c.raft(id).entry(i).map(|e| e.data.clone());
            assert!(
                !data.is_some_and(|d| d.starts_with(b"lost")),
                "node {id} still holds a lost entry at {i}"
            );
            assert_eq!(c.raft(id).term_at(i).filter(|&t| t != new_term), None, "node {id} entry {i}");
        }
    }
}

/// Reference: thesis section 9.6 (PreVote): a server that cannot win an election does not
/// increase its term, so on rejoining it does not force the leader to step down.
#[test]
fn prevote_keeps_an_isolated_node_from_raising_its_term() {
    let mut c = Cluster::new(3);
    let leader = c.wait_for_leader(10 * T);
    let term = c.raft(leader).current_term();
    let lonely = c.ids().into_iter().find(|&id| id != leader).expect("follower");
    let first_record = c.records.len();

    c.isolate(lonely);
    for i in 0..10 {
        c.run(T);
        assert_eq!(c.raft(lonely).current_term(), term, "round {i}: isolated node raised its term");
        c.propose(leader, &format!("while-away{i}")).expect("the majority keeps working");
    }
    // It kept trying (pre-votes went out), but never became a real candidate.
    assert!(
        c.count_sent(|m| m.from == lonely && matches!(&m.body, MessageBody::RequestVote(r) if r.pre_vote))
            > 0
    );
    assert!(!c.records[first_record..]
        .iter()
        .any(|r| r.node == lonely && r.soft_state.is_some_and(|s| s.role == Role::Candidate)));

    c.heal();
    c.run(3 * T);
    assert_eq!(c.leader(), Some(leader), "the leader was not disrupted");
    for id in c.ids() {
        assert_eq!(c.raft(id).current_term(), term, "node {id}: no new term");
    }
    assert_eq!(c.raft(lonely).leader_id(), Some(leader));
    c.assert_converged(leader, &c.ids());
    assert_eq!(c.node(lonely).commands().len(), 10);
}

/// Contrast for the PreVote test (thesis 9.6): without PreVote the isolated server's term grows,
/// and when it rejoins the leader has to step down. This shows the assertions above can fail.
#[test]
fn without_prevote_an_isolated_node_disrupts_the_leader_on_rejoin() {
    let mut c = Cluster::with_configs(Membership::new(1..=3), |id| {
        let mut cfg = test_config(id);
        cfg.pre_vote = false;
        cfg
    });
    let term = c.elect(1);
    c.isolate(3);
    c.run(10 * T);
    assert!(c.raft(3).current_term() > term, "without PreVote the isolated node bumps its term");
    c.heal();
    c.run(3 * T);
    let new_term = c.leader().map(|l| c.raft(l).current_term()).unwrap_or(0);
    assert!(new_term > term, "the rejoining node forced a new term");
}

/// Reference: thesis section 4.2.3 (a server that heard from a current leader within the minimum
/// election timeout does not update its term or grant its vote) and 6.2.
#[test]
fn lazy_voter_ignores_a_disruptive_candidate() {
    // Node 3 runs without PreVote so that it sends real RequestVotes in ever higher terms.
    let mut c = Cluster::with_configs(Membership::new(1..=3), |id| {
        let mut cfg = test_config(id);
        cfg.pre_vote = id != 3;
        cfg
    });
    let term = c.elect(1);
    c.run(2);
    let voted_before = c.raft(2).status().voted_for;
    let first_record = c.records.len();

    // Node 3 can no longer hear the leader but still reaches node 2.
    c.block(1, 3);
    c.run(6 * T);
    assert!(c.raft(3).current_term() > term, "node 3 campaigned in higher terms");
    assert!(
        c.delivered.iter().any(|m| m.from == 3
            && m.to == 2
            && m.term > term
            && matches!(&m.body, MessageBody::RequestVote(r) if !r.pre_vote)),
        "node 2 did receive node 3's vote requests"
    );
    // Node 2 heard from the leader recently: it ignored them completely.
    assert_eq!(c.raft(2).current_term(), term, "the lazy voter kept its term");
    assert_eq!(c.raft(2).status().voted_for, voted_before, "and its vote");
    assert_eq!(c.raft(2).leader_id(), Some(1));
    assert!(
        !c.records[first_record..]
            .iter()
            .filter(|r| r.node == 2)
            .flat_map(|r| r.messages.iter().chain(&r.gated))
            .any(|m| matches!(m.body, MessageBody::RequestVoteResponse(_))),
        "the lazy voter must not answer"
    );
    assert_eq!(c.leader(), Some(1));
    assert_eq!(c.raft(1).current_term(), term, "the leader was not disrupted");
    // And the cluster still commits.
    let i = c.propose(1, "still-working").expect("leader");
    c.run(2);
    assert!(c.raft(2).status().commit_index >= i);
}

/// Contrast for the lazy-voter test: with CheckQuorum (and so lazy voting) off on node 2, the
/// same partial partition deposes the healthy leader.
#[test]
fn without_lazy_voters_a_partial_partition_deposes_the_leader() {
    let mut c = Cluster::with_configs(Membership::new(1..=3), |id| {
        let mut cfg = test_config(id);
        cfg.pre_vote = id != 3;
        cfg.check_quorum = id != 2;
        cfg
    });
    let term = c.elect(1);
    c.block(1, 3);
    c.run(6 * T);
    assert!(c.raft(2).current_term() > term, "node 2 followed node 3 into a higher term");
}

/// Reference: thesis section 6.2 (CheckQuorum): "a leader steps down if an election timeout
/// elapses without a successful round of heartbeats to a majority of its cluster".
#[test]
fn leader_cut_off_from_majority_steps_down_within_an_election_timeout() {
    let mut c = Cluster::new(5);
    let term = c.elect(1);
    c.run(T / 2 + 3); // somewhere in the middle of a CheckQuorum period

    // With two followers lost the leader still has a majority: it stays.
    c.isolate(4);
    c.isolate(5);
    c.run(5 * T);
    assert_eq!(c.raft(1).role(), Role::Leader, "a leader with a majority must not step down");
    assert_eq!(c.raft(1).current_term(), term);

    // Cut it off completely: it must step down within about one timeout (at most two, given
    // where in the period the cut falls), and not before it missed a whole period.
    c.isolate(1);
    let ticks = c.run_until(3 * T, |c| c.raft(1).role() != Role::Leader).expect("leader steps down");
    assert!(ticks <= 2 * T, "stepped down after {ticks} ticks, more than two election timeouts");
    assert!(ticks >= 1);
    assert_eq!(c.raft(1).role(), Role::Follower);
    assert_eq!(c.raft(1).current_term(), term, "stepping down alone does not change the term");
    assert_eq!(c.raft(1).leader_id(), None);
}

/// Reference: thesis section 6.2 ("if the server receiving the request is not the leader, it
/// rejects the request and supplies the leader's address") and paper section 8.
#[test]
fn proposals_at_a_non_leader_fail_fast_with_the_leader_hint() {
    let mut c = Cluster::new(3);
    // Before any election nobody knows a leader.
    for id in c.ids() {
        assert_eq!(c.propose(id, "early"), Err(ProposeError::NotLeader { leader_hint: None }));
        assert_eq!(c.raft(id).status().last_index, 0, "a refused proposal appends nothing");
    }
    let term = c.elect(2);
    c.run(2);
    for id in [1, 3] {
        let before = c.raft(id).status();
        let sent_before = c.sent.len();
        assert_eq!(c.propose(id, "x"), Err(ProposeError::NotLeader { leader_hint: Some(2) }));
        assert_eq!(
            c.raft_mut(id).propose_batch([common::cmd("a"), common::cmd("b")]),
            Err(ProposeError::NotLeader { leader_hint: Some(2) })
        );
        assert_eq!(c.raft(id).status(), before, "node {id}: a refused proposal changes nothing");
        assert_eq!(c.sent.len(), sent_before, "node {id}: and sends nothing");
    }
    // A server campaigning for itself knows no leader.
    c.isolate(3);
    c.run_until(3 * T, |c| c.raft(3).role() == Role::PreCandidate).expect("node 3 starts a pre-vote");
    assert_eq!(c.propose(3, "y"), Err(ProposeError::NotLeader { leader_hint: None }));
    // The leader itself accepts, and the command commits in its term.
    let i = c.propose(2, "ok").expect("leader");
    c.run(2);
    assert_eq!(c.raft(1).term_at(i), Some(term));
    assert!(c.raft(1).status().commit_index >= i);
    assert_eq!(c.node(1).commands(), vec!["ok".to_string()]);
}
