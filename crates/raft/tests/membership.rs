//! Membership changes: joint consensus (paper section 6), learners and their promotion (thesis
//! 4.2.1), removed servers (thesis 4.2.3), configurations that follow the log through truncation,
//! and configurations in snapshots (paper section 7).
//!
//! Snapshot transfer is only judged by its outcome (the new server's log, state machine and
//! configuration), never by the shape of the InstallSnapshot messages.

mod common;

use std::collections::BTreeSet;

use balsa_raft::{
    ConfChangeError, Config, EntryKind, Index, Membership, MembershipChange, Message, MessageBody, NodeId,
    RequestVoteResponse, Role, Snapshot, SnapshotError, SnapshotMeta, Term,
};
use common::{between, cmd, test_config, votes_only, Cluster, ELECTION_TICKS as T};
use MembershipChange::{AddLearner, AddVoter, Promote, Remove, SetVoters};

// ----- helpers ---------------------------------------------------------------------------------

fn set(ids: &[NodeId]) -> BTreeSet<NodeId> {
    ids.iter().copied().collect()
}

/// C_old,new: `old` outgoing, `new` incoming.
fn joint(old: &[NodeId], new: &[NodeId]) -> Membership {
    Membership { voters: set(new), voters_outgoing: set(old), ..Membership::default() }
}

fn with_learners(voters: &[NodeId], learners: &[NodeId]) -> Membership {
    Membership { voters: set(voters), learners: set(learners), ..Membership::default() }
}

/// Asks `id` for a change and carries out its Ready.
fn change(c: &mut Cluster, id: NodeId, ch: MembershipChange) -> Result<Index, ConfChangeError> {
    let result = c.raft_mut(id).change_membership(ch);
    c.process(id);
    result
}

/// Asks `id` for a change that must be refused, and checks the refusal changed nothing: no
/// entry appended, same configuration, nothing sent. Returns the error.
fn refused(c: &mut Cluster, id: NodeId, ch: MembershipChange) -> ConfChangeError {
    let status = c.raft(id).status();
    let membership = c.raft(id).membership().clone();
    let sent = c.sent.len();
    let result = change(c, id, ch.clone());
    let err = result.expect_err(&format!("{ch:?} at {id} must be refused"));
    assert_eq!(c.raft(id).status(), status, "{ch:?} at {id}: a refused change alters nothing");
    assert_eq!(c.raft(id).membership(), &membership, "{ch:?} at {id}: configuration kept");
    assert_eq!(c.sent.len(), sent, "{ch:?} at {id}: a refused change sends nothing");
    err
}

fn commit(c: &Cluster, id: NodeId) -> Index {
    c.raft(id).status().commit_index
}

fn last_index(c: &Cluster, id: NodeId) -> Index {
    c.raft(id).status().last_index
}

/// Configuration entries in the in-memory log of `id` (after its snapshot): index, term, config.
fn config_entries(c: &Cluster, id: NodeId) -> Vec<(Index, Term, Membership)> {
    let st = c.raft(id).status();
    (st.snapshot_index + 1..=st.last_index)
        .filter_map(|i| c.raft(id).entry(i))
        .filter(|e| e.kind == EntryKind::ConfChange)
        .map(|e| (e.index, e.term, Membership::decode(&e.data).expect("well-formed configuration")))
        .collect()
}

/// An AppendEntries that carries the entry at `index`.
fn carries(m: &Message, index: Index) -> bool {
    matches!(&m.body, MessageBody::AppendEntries(ae) if ae.entries.iter().any(|e| e.index == index))
}

/// A vote or pre-vote request.
fn is_vote_request(m: &Message) -> bool {
    matches!(m.body, MessageBody::RequestVote(_))
}

/// Whether `id` reported itself (pre-)candidate or leader in a Ready from record `from` on.
fn campaigned_since(c: &Cluster, from: usize, id: NodeId) -> bool {
    c.records[from..]
        .iter()
        .filter(|r| r.node == id)
        .filter_map(|r| r.soft_state)
        .any(|s| s.role != Role::Follower)
}

/// Whether any server became a real candidate or leader in a Ready from record `from` on.
fn anyone_stood_for_election_since(c: &Cluster, from: usize) -> bool {
    c.records[from..]
        .iter()
        .filter_map(|r| r.soft_state)
        .any(|s| matches!(s.role, Role::Candidate | Role::Leader))
}

fn granted_pre_vote(from: NodeId, to: NodeId, term: Term) -> Message {
    Message {
        from,
        to,
        term,
        body: MessageBody::RequestVoteResponse(RequestVoteResponse { pre_vote: true, vote_granted: true }),
    }
}

/// Nodes 1..=3 voters, 4 and 5 fresh servers (empty disks, no configuration), 1 leads and has
/// committed one command. Returns the leader's term.
fn three_plus_two_fresh() -> (Cluster, Term) {
    let mut c = Cluster::new(3);
    c.add_node(4, Membership::default());
    c.add_node(5, Membership::default());
    let term = c.elect(1);
    c.propose(1, "before").expect("leader");
    c.run(2);
    assert_eq!(c.node(2).commands(), vec!["before".to_string()]);
    (c, term)
}

// ----- 1. joint consensus ----------------------------------------------------------------------

/// Reference: paper section 6: "the leader ... stores the configuration for C_old,new as a log
/// entry"; "a server always uses the latest configuration in its log, regardless of whether the
/// entry is committed"; "once C_old,new has been committed ... the leader [can] create a log
/// entry describing C_new"; and the cluster then runs in C_new alone.
#[test]
fn joint_consensus_goes_through_c_old_new_to_c_new_each_taking_effect_when_appended() {
    let (mut c, term) = three_plus_two_fresh();
    let old = Membership::new([1, 2, 3]);
    let jm = joint(&[1, 2, 3], &[1, 4, 5]);
    let new = Membership::new([1, 4, 5]);
    for id in [1, 2, 3] {
        assert_eq!(c.raft(id).membership(), &old, "node {id}");
    }
    for id in [4, 5] {
        assert_eq!(c.raft(id).membership(), &Membership::default(), "fresh node {id} knows nothing");
        assert_eq!(c.raft(id).status().current_term, 0, "fresh node {id} never campaigned");
    }

    let last = last_index(&c, 1);
    let j = change(&mut c, 1, SetVoters(set(&[1, 4, 5]))).expect("the leader accepts");
    assert_eq!(j, last + 1, "the joint entry is appended at the end of the log");
    let e = c.raft(1).entry(j).expect("appended").clone();
    assert_eq!((e.kind, e.term), (EntryKind::ConfChange, term));
    assert_eq!(Membership::decode(&e.data), Some(jm.clone()), "the entry describes C_old,new");
    assert_eq!(c.raft(1).membership(), &jm, "the leader uses C_old,new as soon as it appends it");
    assert!(commit(&c, 1) < j);

    // Follower 2 stores the entry: it switches to C_old,new then, long before the entry commits.
    let ae = c.pop_next(|m| m.to == 2 && carries(m, j)).expect("the leader replicates the entry to 2");
    assert_eq!(c.raft(2).membership(), &old, "not before it has the entry");
    assert!(c.deliver(ae));
    assert_eq!(last_index(&c, 2), j);
    assert_eq!(c.raft(2).membership(), &jm, "a follower uses C_old,new as soon as it appends it");
    assert!(commit(&c, 2) < j && commit(&c, 1) < j, "and the entry is not committed yet");
    assert!(c.applied_at(j).is_none());

    // Let everything through: C_old,new commits, and the leader appends C_new on its own.
    c.deliver_all();
    assert!(commit(&c, 1) > j, "C_old,new and then C_new committed");
    let configs = config_entries(&c, 1);
    assert_eq!(
        configs,
        vec![(j, term, jm.clone()), (j + 1, term, new.clone())],
        "the leader appended C_new right after C_old,new committed, in its own term"
    );
    assert_eq!(c.applied_at(j + 1).map(|(t, k, _)| (t, k)), Some((term, EntryKind::ConfChange)));
    for id in [1, 4, 5] {
        assert_eq!(c.raft(id).membership(), &new, "node {id} runs in C_new");
        assert_eq!(config_entries(&c, id), configs, "node {id} holds both configuration entries");
    }
    c.run(1); // the followers learn the last commit index
    c.assert_converged(1, &[4, 5]);
    assert_eq!(c.node(4).commands(), vec!["before".to_string()], "the new servers got the old log");
    // The servers left out are no longer replicated to (thesis 4.2.3).
    assert!(c.raft(1).progress(2).is_none() && c.raft(1).progress(3).is_none());
    let sent = c.sent.len();
    c.run(3);
    assert!(!c.sent[sent..].iter().any(|m| m.from == 1 && (m.to == 2 || m.to == 3)));

    // C_new alone decides now: without 2 and 3 (and then without 4) it still commits...
    c.crash(2);
    c.crash(3);
    let a = c.propose(1, "after").expect("leader");
    c.run(2);
    assert!(commit(&c, 1) >= a, "{{1, 4, 5}} commits without the old servers");
    c.crash(4);
    let b = c.propose(1, "after-2").expect("leader");
    c.run(2);
    assert!(commit(&c, 1) >= b && commit(&c, 5) >= b, "{{1, 5}} is a majority of C_new");
    // ...but not without a majority of C_new.
    c.crash(5);
    let lost = c.propose(1, "needs-a-majority").expect("leader");
    c.run(2);
    assert!(commit(&c, 1) < lost, "one server of C_new is not a majority");
    assert_eq!(c.node(1).commands(), vec!["before", "after", "after-2"]);
}

/// Reference: paper section 6: in C_old,new "agreement (for elections and entry commitment)
/// requires separate majorities from both the old and new configurations". A majority of one set
/// alone — whichever — commits nothing, not the joint entry, not a later command.
#[test]
fn in_the_joint_phase_commitment_needs_majorities_of_both_sets() {
    for reachable in [[1, 2, 3], [1, 4, 5]] {
        let (mut c, _) = three_plus_two_fresh();
        let committed = commit(&c, 1);
        let j = change(&mut c, 1, SetVoters(set(&[1, 4, 5]))).expect("leader");
        let x = c.propose(1, "x").expect("leader");
        // Only messages among `reachable` arrive; the others wait in the queue.
        let inside = move |m: &Message| reachable.contains(&m.from) && reachable.contains(&m.to);
        c.deliver_matching(inside);

        for &id in &reachable[1..] {
            assert_eq!(last_index(&c, id), x, "{reachable:?}: node {id} stores everything");
            assert_eq!(c.raft(id).membership(), &joint(&[1, 2, 3], &[1, 4, 5]), "{reachable:?}: node {id}");
            assert_eq!(c.raft(1).progress(id).expect("tracked").match_index, x, "{reachable:?}");
        }
        assert_eq!(
            commit(&c, 1),
            committed,
            "{reachable:?}: a whole voter set has the entries, the other set has only the leader: \
             nothing may commit"
        );
        for id in 2..=5 {
            assert!(commit(&c, id) <= committed, "{reachable:?}: node {id}");
        }
        assert!(c.applied_at(j).is_none() && c.applied_at(x).is_none(), "{reachable:?}");
        assert_eq!(config_entries(&c, 1).len(), 1, "{reachable:?}: no C_new before C_old,new commits");

        // The held messages arrive: now both majorities have the entries.
        c.deliver_all();
        c.run(3);
        assert!(commit(&c, 1) > x, "{reachable:?}: committed once both sets have a majority");
        assert_eq!(c.raft(1).membership(), &Membership::new([1, 4, 5]), "{reachable:?}");
        assert_eq!(c.node(5).commands(), vec!["before", "x"], "{reachable:?}");
    }
}

/// Reference: paper section 6: elections in C_old,new need separate majorities of both sets.
/// With C_old = {1, 2, 3}, C_new = {1, 4, 5} and the leader 1 gone, neither half can elect a
/// leader, and not even three of the four survivors can if they miss a majority of one set. Once
/// both majorities can vote, the new leader finishes the change on its own.
#[test]
fn in_the_joint_phase_an_election_needs_majorities_of_both_sets() {
    let (mut c, term) = three_plus_two_fresh();
    let jm = joint(&[1, 2, 3], &[1, 4, 5]);
    let j = change(&mut c, 1, SetVoters(set(&[1, 4, 5]))).expect("leader");
    // Every server stores C_old,new, but no acknowledgement of it reaches the leader.
    c.set_filter(move |m| {
        !(m.to == 1
            && matches!(&m.body, MessageBody::AppendEntriesResponse(r) if r.success && r.match_index >= j))
    });
    c.deliver_all();
    for id in 2..=5 {
        assert_eq!(last_index(&c, id), j, "node {id} stores C_old,new");
        assert_eq!(c.raft(id).membership(), &jm, "node {id}");
    }
    assert!(commit(&c, 1) < j);
    c.crash(1);
    c.clear_filter();
    c.clear_queue();

    let groups: [&[&[NodeId]]; 4] = [
        &[&[2, 3], &[4, 5]], // each side is a whole majority of one set only
        &[&[2, 3, 4], &[5]], // old majority, but only 4 of the new set
        &[&[2, 4, 5], &[3]], // new majority, but only 2 of the old set
        &[&[3, 4, 5], &[2]], // the same with 3
    ];
    for g in groups {
        c.heal();
        c.partition(g);
        let records = c.records.len();
        let delivered = c.delivered.len();
        c.run(10 * T);
        assert_eq!(c.leader(), None, "{g:?}: no leader without majorities of both sets");
        assert!(!anyone_stood_for_election_since(&c, records), "{g:?}: no pre-vote was won");
        for id in 2..=5 {
            assert_eq!(c.raft(id).current_term(), term, "{g:?}: node {id} term (PreVote)");
        }
        // Pre-votes were granted inside each group: the candidates did get a majority of one set.
        assert!(
            c.delivered[delivered..].iter().any(|m| matches!(
                &m.body,
                MessageBody::RequestVoteResponse(r) if r.pre_vote && r.vote_granted
            )),
            "{g:?}: servers did grant pre-votes"
        );
    }

    // All four can vote: a leader is elected, commits C_old,new and appends C_new; a leader from
    // the old side hands over to C_new. Node 1 is still down: {4, 5} is a majority of C_new.
    c.heal();
    let ticks = c.run_until(20 * T, |c| {
        c.leader().is_some_and(|l| {
            [4, 5].contains(&l) && c.raft(l).membership() == &Membership::new([1, 4, 5]) && commit(c, l) > j
        })
    });
    assert!(ticks.is_some(), "the change completes once both majorities can vote");
    let leader = c.leader().expect("leader");
    let configs = config_entries(&c, leader);
    assert_eq!(configs[0], (j, term, jm.clone()), "C_old,new kept");
    assert!(configs[1..].iter().all(|(_, t, m)| *t > term && m == &Membership::new([1, 4, 5])));
    let x = c.propose(leader, "in-c-new").expect("leader");
    c.run(2);
    let other = if leader == 4 { 5 } else { 4 };
    assert!(commit(&c, leader) >= x && commit(&c, other) >= x);

    // The old leader comes back: it adopts C_new and catches up.
    c.restart(1);
    assert_eq!(c.raft(1).membership(), &jm, "from its own log");
    c.run(3 * T);
    assert_eq!(c.leader(), Some(leader), "no disruption");
    assert_eq!(c.raft(1).membership(), &Membership::new([1, 4, 5]));
    c.assert_converged(leader, &[1, 4, 5]);
    assert_eq!(c.node(1).commands(), vec!["before", "in-c-new"]);
}

// ----- 2. replacing members --------------------------------------------------------------------

/// Reference: paper section 6 (joint consensus lets "individual servers ... transition between
/// configurations at different times" and replaces any set of servers at once): every server of
/// the cluster replaced by fresh ones, including the leader; the new cluster elects its own
/// leaders and keeps committing after the old servers are gone for good.
#[test]
fn every_member_can_be_replaced_at_once_by_fresh_servers() {
    let mut c = Cluster::new(3);
    for id in [4, 5, 6] {
        c.add_node(id, Membership::default());
    }
    let term = c.elect(1);
    for i in 0..5 {
        c.propose(1, &format!("old{i}")).expect("leader");
    }
    c.run(2);
    let j = change(&mut c, 1, SetVoters(set(&[4, 5, 6]))).expect("leader");
    assert_eq!(c.raft(1).membership(), &joint(&[1, 2, 3], &[4, 5, 6]));
    let ticks = c.run_until(5 * T, |c| c.leader().is_some_and(|l| l >= 4));
    assert!(ticks.is_some_and(|t| t <= 2), "a server of C_new leads right after C_new commits: {ticks:?}");
    let leader = c.leader().expect("leader");
    let new = Membership::new([4, 5, 6]);
    assert_eq!(c.raft(leader).current_term(), term + 1, "it took over in the very next term");
    assert!(commit(&c, leader) > j + 1);
    assert_eq!(c.raft(1).role(), Role::Follower);
    for id in [1, 4, 5, 6] {
        assert_eq!(c.raft(id).membership(), &new, "node {id}");
    }

    // The removed voters 2 and 3 never learn of C_new; they time out, but cannot get elected
    // (C_new's voters hear from their leader and ignore them) and the leader keeps its term.
    c.run(5 * T);
    assert_eq!(c.leader(), Some(leader));
    assert_eq!(c.raft(leader).current_term(), term + 1);
    assert!(c.leaders_by_term().iter().all(|(&t, &l)| t <= term || l >= 4));

    for i in 0..5 {
        c.propose(leader, &format!("new{i}")).expect("leader");
    }
    c.run(2);
    for id in [4, 5, 6] {
        assert_eq!(c.node(id).commands().len(), 10, "node {id} applied the old and the new commands");
    }
    assert!(!c.node(2).commands().iter().any(|s| s.starts_with("new")), "2 is out of the cluster");

    // The old servers go away for good; the new cluster survives the loss of its leader.
    for id in [1, 2, 3] {
        c.remove_node(id);
    }
    c.crash(leader);
    let next = c.wait_for_leader(10 * T);
    assert!(next >= 4 && next != leader);
    let y = c.propose(next, "without-the-first-leader").expect("leader");
    c.run(2);
    let survivors: Vec<NodeId> = [4, 5, 6].into_iter().filter(|&id| id != leader).collect();
    for &id in &survivors {
        assert!(commit(&c, id) >= y, "node {id}");
        assert_eq!(c.node(id).commands().len(), 11);
    }
    c.restart(leader);
    c.run(3 * T);
    c.assert_converged(next, &[4, 5, 6]);
}

// ----- 3. one change at a time -----------------------------------------------------------------

/// Reference: paper section 6 and thesis 4.1 (one change at a time: "a leader ... must not begin
/// a new configuration change until the previous one has committed"; and the fix of thesis 4.1's
/// bug: a leader first commits an entry of its own term), plus the API's refusals: only the
/// leader changes the configuration, and nonsensical changes are refused without effect.
#[test]
fn changes_go_one_at_a_time_through_the_leader_and_invalid_ones_are_refused() {
    let mut c = Cluster::with_configs(with_learners(&[1, 2, 3], &[4]), test_config);
    c.add_node(5, Membership::default());
    for id in 1..=5 {
        assert_eq!(refused(&mut c, id, AddLearner(5)), ConfChangeError::NotLeader { leader_hint: None });
    }

    // A new leader that has not committed an entry of its own term yet.
    c.set_filter(votes_only());
    c.elect(1);
    assert_eq!(commit(&c, 1), 0);
    assert_eq!(refused(&mut c, 1, AddLearner(5)), ConfChangeError::InProgress);
    c.clear_filter();
    c.run(2);
    assert_eq!(commit(&c, 1), 1);

    for id in [2, 3, 4, 5] {
        let hint = if id == 5 { None } else { Some(1) };
        assert_eq!(refused(&mut c, id, AddLearner(5)), ConfChangeError::NotLeader { leader_hint: hint });
    }

    let invalid = [
        Remove(9),                  // not a member
        Promote(2),                 // already a voter
        Promote(9),                 // not a member
        SetVoters(BTreeSet::new()), // no voters
        AddVoter(0),                // reserved id
        AddLearner(0),
        SetVoters(set(&[0, 1, 2])),
        AddLearner(2), // already a voter
        AddVoter(4),   // already a learner
        AddLearner(1),
    ];
    for ch in invalid {
        let err = refused(&mut c, 1, ch.clone());
        assert!(matches!(err, ConfChangeError::Invalid(_)), "{ch:?}: {err:?}");
    }

    // A change in flight (not committed) blocks the next one, whatever it is.
    let j = change(&mut c, 1, AddLearner(5)).expect("valid");
    assert_eq!(c.raft(1).membership(), &with_learners(&[1, 2, 3], &[4, 5]), "no joint step for a learner");
    for ch in [Remove(4), Promote(4), SetVoters(set(&[1, 2])), AddLearner(6)] {
        assert_eq!(refused(&mut c, 1, ch), ConfChangeError::InProgress);
    }
    c.run(2);
    assert!(commit(&c, 1) >= j);
    assert_eq!(config_entries(&c, 1).len(), 1, "one step: no second entry for a learner");

    // A voter change: refused while C_old,new is uncommitted, and while C_new is.
    let j2 = change(&mut c, 1, Promote(4)).expect("valid");
    assert_eq!(c.raft(1).membership().voters_outgoing, set(&[1, 2, 3]));
    assert_eq!(refused(&mut c, 1, Remove(5)), ConfChangeError::InProgress);
    while commit(&c, 1) < j2 {
        assert!(c.deliver_one(), "C_old,new commits");
    }
    assert_eq!(last_index(&c, 1), j2 + 1, "C_new appended");
    assert!(commit(&c, 1) < j2 + 1);
    assert!(!c.raft(1).membership().is_joint());
    assert_eq!(refused(&mut c, 1, Remove(5)), ConfChangeError::InProgress);
    c.deliver_all();
    c.run(2);
    assert_eq!(c.raft(1).membership(), &with_learners(&[1, 2, 3, 4], &[5]));

    // Settled: the next change is accepted.
    change(&mut c, 1, Remove(5)).expect("accepted once the previous change committed");
    c.run(2);
    assert_eq!(c.raft(1).membership(), &Membership::new([1, 2, 3, 4]));

    // No change while leadership is being handed over.
    c.isolate(3);
    c.raft_mut(1).transfer_leader(3).expect("voter");
    c.process(1);
    assert_eq!(refused(&mut c, 1, Remove(4)), ConfChangeError::TransferInProgress { to: 3 });
}

// ----- 4. the leader is not in C_new -------------------------------------------------------------

/// Reference: paper section 6: "the leader ... may not be part of the new configuration ... the
/// leader steps down (returns to follower state) once it has committed the C_new log entry ...
/// there will be a period of time (while it is committing C_new) when the leader is managing a
/// cluster that does not include itself; it replicates log entries but does not count itself in
/// majorities." Here it also hands over with TimeoutNow, so C_new has a leader at once.
#[test]
fn a_leader_removed_from_the_configuration_manages_the_change_then_steps_down() {
    let mut c = Cluster::new(3);
    let term = c.elect(1);
    c.propose(1, "before").expect("leader");
    c.run(2);
    let j = change(&mut c, 1, Remove(1)).expect("leader");
    assert_eq!(c.raft(1).membership(), &joint(&[1, 2, 3], &[2, 3]));

    // Joint phase with node 3 unreachable: {1, 2} is a majority of C_old, but of C_new = {2, 3}
    // only 2 has the entry. The leader must not count itself there.
    c.deliver_matching(|m| between(m, 1, 2));
    assert_eq!(c.raft(1).progress(2).expect("tracked").match_index, j);
    assert!(commit(&c, 1) < j, "the leader is not a voter of C_new");

    // Node 3 catches up until C_old,new commits; the leader appends C_new = {2, 3}.
    while commit(&c, 1) < j {
        assert!(c.deliver_one(), "C_old,new commits with node 3");
    }
    assert_eq!(last_index(&c, 1), j + 1);
    assert_eq!(c.raft(1).membership(), &Membership::new([2, 3]));
    assert_eq!(c.raft(1).role(), Role::Leader, "it keeps leading while C_new commits");

    // C_new phase with node 3 unreachable again: 1 and 2 hold C_new, but 1 is not in C_new.
    c.deliver_matching(|m| between(m, 1, 2));
    assert_eq!(c.raft(1).progress(2).expect("tracked").match_index, j + 1);
    let during = c.propose(1, "during").expect("it still accepts commands");
    for _ in 0..3 {
        c.tick_all();
        c.deliver_matching(|m| between(m, 1, 2));
    }
    assert_eq!(c.raft(2).status().last_index, during, "it still replicates");
    assert_eq!(commit(&c, 1), j, "its own copy does not count towards C_new");
    assert_eq!(c.raft(1).role(), Role::Leader);
    assert_eq!(c.count_sent(|m| matches!(m.body, MessageBody::TimeoutNow)), 0);

    // Node 3 is back: C_new commits, the leader hands over and steps down.
    let records = c.records.len();
    c.deliver_all();
    let ticks = c.run_until(T, |c| c.leader().is_some_and(|l| l != 1));
    assert!(ticks.is_some_and(|t| t <= 1), "C_new has a leader at once: {ticks:?}");
    let leader = c.leader().expect("leader");
    assert!([2, 3].contains(&leader));
    assert_eq!(c.raft(leader).current_term(), term + 1, "elected in the very next term, after TimeoutNow");
    let timeout_now: Vec<_> = c.sent.iter().filter(|m| matches!(m.body, MessageBody::TimeoutNow)).collect();
    assert_eq!(timeout_now.len(), 1);
    assert_eq!((timeout_now[0].from, timeout_now[0].to), (1, leader));
    assert_eq!(c.raft(1).role(), Role::Follower);
    assert_eq!(c.raft(1).membership(), &Membership::new([2, 3]));
    assert!(c.applied_at(j + 1).is_some(), "C_new committed before the leader stepped down");
    assert_eq!(c.node(leader).commands(), vec!["before", "during"], "nothing committed was lost");

    // The old leader, no voter of its own configuration, never campaigns; C_new carries on.
    let sent = c.sent.len();
    c.run(10 * T);
    assert!(!campaigned_since(&c, records, 1), "node 1 must not campaign");
    assert!(!c.sent[sent..].iter().any(|m| m.from == 1 && is_vote_request(m)), "node 1 asked for votes");
    assert_eq!(c.leader(), Some(leader));
    assert_eq!(c.raft(leader).current_term(), term + 1);
    let x = c.propose(leader, "after").expect("leader");
    c.run(2);
    for id in [2, 3] {
        assert!(commit(&c, id) >= x, "node {id}");
    }
    assert!(!c.node(1).commands().contains(&"after".to_string()), "node 1 is out");
}

// ----- 5. learners -------------------------------------------------------------------------------

/// Reference: thesis 4.2.1: a server added as a non-voting member "receives log entries but is
/// not considered for majorities"; it neither votes nor campaigns, whatever happens to the
/// leader; adding or removing a learner leaves the voter set alone, so takes one step.
#[test]
fn a_learner_receives_the_log_but_never_votes_or_campaigns() {
    let mut c = Cluster::new(3);
    c.add_node(4, Membership::default());
    let term = c.elect(1);
    c.run(2);
    let j = change(&mut c, 1, AddLearner(4)).expect("leader");
    let m = with_learners(&[1, 2, 3], &[4]);
    assert_eq!(c.raft(1).membership(), &m, "one step, no joint configuration");
    for i in 0..5 {
        c.propose(1, &format!("c{i}")).expect("leader");
    }
    c.run(3);
    assert_eq!(config_entries(&c, 1).iter().map(|e| e.0).collect::<Vec<_>>(), vec![j]);
    c.assert_converged(1, &[2, 3, 4]);
    assert_eq!(c.node(4).commands(), c.node(1).commands());
    assert_eq!(c.node(4).commands().len(), 5);
    assert_eq!(c.raft(4).membership(), &m);

    // A learner's vote is not counted, even when it is granted.
    c.crash(1);
    c.block(2, 3);
    c.run_until(5 * T, |c| c.raft(2).role() == Role::PreCandidate).expect("2 starts a pre-vote");
    let pre_term = c.raft(2).current_term() + 1;
    assert!(c.deliver(granted_pre_vote(4, 2, pre_term)));
    assert_eq!(c.raft(2).role(), Role::PreCandidate, "the learner's grant does not count");
    assert!(c.deliver(granted_pre_vote(3, 2, pre_term)));
    assert_eq!(c.raft(2).role(), Role::Candidate, "a voter's grant does");
    c.heal();
    let leader = c.wait_for_leader(10 * T);
    assert!([2, 3].contains(&leader));
    c.run(2);
    assert_eq!(c.raft(4).leader_id(), Some(leader));
    // Nobody ever asked the learner for a vote, and it never answered or asked.
    assert_eq!(c.count_sent(|m| m.to == 4 && is_vote_request(m)), 0);
    assert_eq!(c.count_sent(|m| m.from == 4 && matches!(m.body, MessageBody::RequestVoteResponse(_))), 0);

    // Every voter is gone: the learner waits forever and never campaigns, not even when told to.
    let learner_term = c.raft(4).current_term();
    assert!(learner_term > term);
    for id in [2, 3] {
        c.crash(id);
    }
    let records = c.records.len();
    c.run(20 * T);
    let timeout_now = Message { from: leader, to: 4, term: learner_term, body: MessageBody::TimeoutNow };
    assert!(c.deliver(timeout_now));
    c.run(5 * T);
    assert!(!campaigned_since(&c, records, 4), "the learner must not campaign");
    assert_eq!(c.count_sent(|m| m.from == 4 && is_vote_request(m)), 0);
    assert_eq!(c.raft(4).role(), Role::Follower);
    assert_eq!(c.raft(4).current_term(), learner_term);
}

fn promotion_config(id: NodeId) -> Config {
    let mut cfg = test_config(id);
    cfg.learner_catch_up_lag_entries = 2;
    cfg.learner_catch_up_ticks = 5;
    cfg
}

/// Reference: thesis 4.2.1: "the new server joins the cluster as a non-voting member ... once
/// [it] has caught up with the rest of the cluster, the reconfiguration can proceed". AddVoter
/// adds a learner marked for promotion; the leader promotes it on its own once it has been
/// within `learner_catch_up_lag_entries` of the log for `learner_catch_up_ticks` ticks — and not
/// while it lags.
#[test]
fn add_voter_joins_as_a_learner_and_is_promoted_once_caught_up() {
    let mut c = Cluster::with_configs(Membership::new([1, 2, 3]), promotion_config);
    c.add_node_with(promotion_config(4), Membership::default());
    let lag = 2;
    let catch_up_ticks = 5;
    let term = c.elect(1);
    for i in 0..20 {
        c.propose(1, &format!("c{i}")).expect("leader");
    }
    c.run(2);

    // The new server cannot be reached yet.
    c.isolate(4);
    let j = change(&mut c, 1, AddVoter(4)).expect("leader");
    let learner = Membership {
        voters: set(&[1, 2, 3]),
        learners: set(&[4]),
        promote: set(&[4]),
        ..Membership::default()
    };
    assert_eq!(c.raft(1).membership(), &learner, "it joins as a learner, voters unchanged");
    c.run(5 * T);
    assert!(commit(&c, 1) >= j);
    assert_eq!(c.raft(1).membership(), &learner, "not promoted while it lags behind");
    assert_eq!(config_entries(&c, 1).len(), 1);
    assert_eq!(c.raft(1).progress(4).expect("tracked").match_index, 0);

    // Reachable: it catches up at once, and is promoted after the catch-up period, not before.
    c.heal();
    let (mut caught_up_at, mut promoted_at) = (None, None);
    for t in 1..=5 * T {
        c.tick_all();
        c.deliver_all();
        let leader = c.raft(1);
        let caught_up = leader.progress(4).is_some_and(|p| p.match_index + lag >= leader.status().last_index);
        if caught_up && caught_up_at.is_none() {
            caught_up_at = Some(t);
        }
        if leader.membership().is_voter(4) {
            promoted_at = Some(t);
            break;
        }
    }
    let caught_up_at = caught_up_at.expect("the learner caught up");
    let promoted_at = promoted_at.expect("the learner was promoted");
    assert!(
        promoted_at >= caught_up_at + catch_up_ticks && promoted_at <= caught_up_at + catch_up_ticks + 1,
        "caught up at tick {caught_up_at}, promoted at tick {promoted_at}; expected {catch_up_ticks} ticks later"
    );
    c.run(3);
    let full = Membership::new([1, 2, 3, 4]);
    let configs = config_entries(&c, 1);
    assert_eq!(configs.len(), 3, "learner, then C_old,new and C_new of the promotion: {configs:?}");
    assert_eq!(configs[1].2, joint(&[1, 2, 3], &[1, 2, 3, 4]));
    assert_eq!(configs[2].2, full);
    assert!(configs.iter().all(|(_, t, _)| *t == term), "appended by the leader on its own");
    for id in 1..=4 {
        assert_eq!(c.raft(id).membership(), &full, "node {id}");
    }

    // Node 4 counts now: with 2 down, three of {1, 3, 4} are needed.
    c.crash(2);
    c.block(1, 4);
    let y = c.propose(1, "needs-4").expect("leader");
    c.deliver_all();
    assert!(commit(&c, 1) < y, "{{1, 3}} is no majority of four voters");
    c.heal();
    c.run(2);
    assert!(commit(&c, 1) >= y, "node 4's acknowledgement completes the majority");
    // And it may lead.
    c.elect(4);
    let z = c.propose(4, "led-by-4").expect("leader");
    c.run(2);
    assert!(commit(&c, 3) >= z);
}

/// Reference: thesis 4.2.1: the point of adding servers as learners is that the cluster does not
/// lose availability while a new server has nothing ("the leader should also abort the change if
/// the new server is unavailable"). A server marked for promotion that has never answered — its
/// match index is 0 — has not caught up, however short the log.
#[test]
fn add_voter_does_not_promote_a_server_that_never_answered() {
    let mut c = Cluster::new(3); // default lag of 64 entries, 10 ticks
    c.elect(1);
    for i in 0..3 {
        c.propose(1, &format!("c{i}")).expect("leader");
    }
    c.run(2);
    // Server 4 was never started: nothing it could have acknowledged.
    change(&mut c, 1, AddVoter(4)).expect("leader");
    c.run(5 * T);
    assert_eq!(c.raft(1).progress(4).map(|p| p.match_index), Some(0), "4 never answered");
    assert!(
        !c.raft(1).membership().is_voter(4),
        "a server that never answered was promoted: {:?}",
        c.raft(1).membership()
    );
    // What the promotion costs: one more failure and the cluster is stuck.
    c.crash(2);
    let x = c.propose(1, "x").expect("leader");
    c.run(2);
    assert!(commit(&c, 1) >= x, "{{1, 3}} must still commit: 4 should not count");
}

/// Reference: thesis 4.2.1: learners can be promoted on request (Promote), and a plain learner
/// (AddLearner) is never promoted on its own.
#[test]
fn promote_makes_a_learner_a_voter_and_plain_learners_stay_learners() {
    let mut c = Cluster::new(3);
    c.add_node(4, Membership::default());
    let term = c.elect(1);
    change(&mut c, 1, AddLearner(4)).expect("leader");
    c.run(10 * T);
    assert_eq!(c.raft(1).membership(), &with_learners(&[1, 2, 3], &[4]), "no promotion on its own");
    assert!(c.raft(1).membership().promote.is_empty());

    let j = change(&mut c, 1, Promote(4)).expect("leader");
    assert_eq!(c.raft(1).membership(), &joint(&[1, 2, 3], &[1, 2, 3, 4]), "a voter change goes joint");
    c.run(3);
    for id in 1..=4 {
        assert_eq!(c.raft(id).membership(), &Membership::new([1, 2, 3, 4]), "node {id}");
    }
    assert!(commit(&c, 1) > j);
    assert_eq!(c.raft(1).current_term(), term);
    assert!(matches!(refused(&mut c, 1, Promote(4)), ConfChangeError::Invalid(_)), "already a voter");
}

// ----- 6. removed servers ------------------------------------------------------------------------

/// A four-server cluster led by 1 in which 4 was removed while cut off, so it never learned of
/// its removal and still believes it is a voter. Returns the leader's term.
fn removed_while_isolated(config: impl Fn(NodeId) -> Config) -> (Cluster, Term) {
    let mut c = Cluster::with_configs(Membership::new(1..=4), config);
    let term = c.elect(1);
    c.run(2);
    c.isolate(4);
    let j = change(&mut c, 1, Remove(4)).expect("leader");
    c.run(3);
    assert!(commit(&c, 1) > j, "C_old,new and C_new committed without 4");
    for id in 1..=3 {
        assert_eq!(c.raft(id).membership(), &Membership::new([1, 2, 3]), "node {id}");
    }
    assert_eq!(c.raft(4).membership(), &Membership::new(1..=4), "4 never heard of its removal");
    (c, term)
}

/// Reference: thesis 4.2.3: "removed servers (those not in C_new) can disrupt the cluster ...
/// they will time out and start new elections"; with PreVote (thesis 9.6) and CheckQuorum's
/// lazy voters ("if a server receives a RequestVote within the minimum election timeout of
/// hearing from a current leader, it does not update its term or grant its vote") they cannot.
#[test]
fn a_removed_server_that_never_learned_of_it_cannot_disrupt_the_cluster() {
    let (mut c, term) = removed_while_isolated(test_config);
    c.run(10 * T);
    assert!(c.count_sent(|m| m.from == 4 && is_vote_request(m)) >= 3, "4 timed out again and again");
    assert_eq!(c.raft(4).current_term(), term, "PreVote kept its term");

    c.heal();
    let delivered = c.delivered.len();
    let sent = c.sent.len();
    c.run(10 * T);
    assert!(
        c.delivered[delivered..].iter().any(|m| m.from == 4 && is_vote_request(m)),
        "4's requests did reach the cluster"
    );
    assert!(
        !c.sent[sent..].iter().any(|m| m.to == 4 && matches!(m.body, MessageBody::RequestVoteResponse(_))),
        "and were ignored"
    );
    assert_eq!(c.leader(), Some(1), "the leader was not disrupted");
    for id in 1..=3 {
        assert_eq!(c.raft(id).current_term(), term, "node {id} kept its term");
    }
    assert_eq!(c.leaders_by_term().len(), 1);
    let x = c.propose(1, "still-working").expect("leader");
    c.run(2);
    for id in 1..=3 {
        assert!(commit(&c, id) >= x, "node {id}");
    }
    assert!(c.node(4).commands().is_empty());
}

/// Contrast for thesis 4.2.3: without PreVote and CheckQuorum, the same removed server does
/// depose the leader when it comes back, which shows the assertions above can fail.
#[test]
fn without_prevote_and_check_quorum_a_removed_server_disrupts_the_cluster() {
    let (mut c, term) = removed_while_isolated(|id| {
        let mut cfg = test_config(id);
        cfg.pre_vote = false;
        cfg.check_quorum = false;
        cfg
    });
    c.run(10 * T);
    assert!(c.raft(4).current_term() > term);
    c.heal();
    c.run(10 * T);
    assert!(c.raft(1).current_term() > term, "the leader was forced into a new term");
    assert!(c.leaders_by_term().len() > 1, "and a new election followed");
}

/// Reference: thesis 4.2.3 and paper section 6: a server that is not a voter in its own latest
/// configuration never starts an election — neither a fresh server that knows no configuration,
/// nor a leader that removed itself, however long it waits, nor when told to (TimeoutNow).
#[test]
fn a_server_that_is_not_a_voter_in_its_own_configuration_never_campaigns() {
    let mut c = Cluster::new(3);
    c.add_node(4, Membership::default());
    c.isolate(4);
    let term = c.elect(1);
    c.run(2);
    change(&mut c, 1, Remove(1)).expect("leader");
    c.run_until(3 * T, |c| c.leader().is_some_and(|l| l != 1)).expect("C_new elects a leader");
    let new_leader = c.leader().expect("leader");
    assert_eq!(c.raft(1).membership(), &Membership::new([2, 3]));
    let records = c.records.len();
    let sent = c.sent.len();
    c.run(20 * T);
    for (id, id_term) in [(1, term), (4, 0)] {
        assert!(c.deliver(Message {
            from: new_leader,
            to: id,
            term: id_term,
            body: MessageBody::TimeoutNow
        }));
    }
    c.run(5 * T);
    for (id, id_term) in [(1, term), (4, 0)] {
        assert!(!campaigned_since(&c, records, id), "node {id} campaigned");
        assert!(
            !c.sent[sent..].iter().any(|m| m.from == id && is_vote_request(m)),
            "node {id} asked for votes"
        );
        assert_eq!(c.raft(id).current_term(), id_term, "node {id} term");
        assert_eq!(c.raft(id).role(), Role::Follower);
    }
    assert_eq!(c.raft(4).membership(), &Membership::default());
    assert_eq!(c.leader(), Some(new_leader));
}

// ----- 7. truncated configuration entries --------------------------------------------------------

/// Reference: paper section 6 ("a server always uses the latest configuration in its log") and
/// thesis 4.1 ("a log entry for a configuration change can be removed (if leadership changes);
/// in this case, a server must be prepared to fall back to the previous configuration").
#[test]
fn a_follower_falls_back_to_the_previous_configuration_when_its_entry_is_truncated() {
    let mut c = Cluster::new(5);
    let t1 = c.elect(1);
    c.run(2);
    let old = Membership::new(1..=5);
    let jm = joint(&[1, 2, 3, 4, 5], &[1, 2, 3, 4]);
    let j = change(&mut c, 1, SetVoters(set(&[1, 2, 3, 4]))).expect("leader");
    let ae = c.pop_next(|m| m.to == 2 && carries(m, j)).expect("replicated to 2");
    assert!(c.deliver(ae));
    assert_eq!(c.raft(2).membership(), &jm);
    c.crash(1);
    c.clear_queue();

    // Node 3 wins with 4 and 5 (2's log is longer); 2 hears nothing meanwhile.
    c.set_filter(|m| m.from != 2 && m.to != 2);
    let t2 = c.elect(3);
    assert_eq!(c.raft(3).membership(), &old);
    assert_eq!(c.raft(3).term_at(j), Some(t2), "3's no-op takes index {j}");
    assert_eq!(c.raft(2).membership(), &jm, "2 still holds the uncommitted entry");
    c.clear_filter();

    // The new leader's entry replaces 2's configuration entry: 2 is back in the old configuration.
    c.tick(3);
    let mut reverted = false;
    while let Some(m) = c.pop_next(|m| between(m, 2, 3)) {
        let overwrites = m.to == 2 && carries(&m, j);
        c.deliver(m);
        if overwrites {
            assert_eq!(c.raft(2).term_at(j), Some(t2), "entry {j} overwritten");
            assert_eq!(c.raft(2).membership(), &old, "2 falls back to C_old right after the truncation");
            reverted = true;
            break;
        }
    }
    assert!(reverted, "3 sent 2 its entry {j}");
    assert!(config_entries(&c, 2).is_empty());

    // The old leader still has the entry on disk: it restarts in C_old,new, then falls back too.
    c.restart(1);
    assert_eq!(c.raft(1).membership(), &jm);
    assert_eq!(c.raft(1).term_at(j), Some(t1));
    c.run(3 * T);
    assert_eq!(c.leader(), Some(3));
    for id in 1..=5 {
        assert_eq!(c.raft(id).membership(), &old, "node {id}");
    }
    c.assert_converged(3, &c.ids());
    assert!(c.applied_at(j).is_some_and(|(t, k, _)| t == t2 && k == EntryKind::Noop));

    // The new leader can make changes of its own.
    change(&mut c, 3, Remove(5)).expect("leader");
    c.run(3);
    assert_eq!(c.raft(2).membership(), &Membership::new([1, 2, 3, 4]));
}

/// Reference: paper section 6 and thesis 4.1: the same with C_new. A follower that appended
/// C_new, which a new leader holding only C_old,new overwrites, falls back to C_old,new; the new
/// leader then completes the change itself.
#[test]
fn a_follower_falls_back_to_the_joint_configuration_when_c_new_is_truncated() {
    let mut c = Cluster::new(5);
    c.add_node(6, Membership::default());
    let t1 = c.elect(1);
    // 6 first catches up as a learner, so that every AppendEntries carrying C_new carries
    // nothing else.
    change(&mut c, 1, AddLearner(6)).expect("leader");
    c.run(3);
    let jm = joint(&[1, 2, 3, 4, 5], &[1, 2, 3, 4, 5, 6]);
    let new = Membership::new(1..=6);
    let j = change(&mut c, 1, SetVoters(set(&[1, 2, 3, 4, 5, 6]))).expect("leader");
    // C_new (at j + 1) reaches node 2 only.
    c.set_filter(move |m| !(m.from == 1 && m.to != 2 && carries(m, j + 1)));
    c.deliver_all();
    assert!(commit(&c, 1) >= j && last_index(&c, 1) == j + 1, "C_old,new committed, C_new appended");
    assert_eq!(c.raft(2).membership(), &new);
    for id in 3..=6 {
        assert_eq!(last_index(&c, id), j, "node {id}");
        assert_eq!(c.raft(id).membership(), &jm, "node {id}");
    }
    c.crash(1);
    c.clear_queue();

    // Node 3 is elected by 4, 5, 6 (majorities of both sets); only votes get through, so its
    // no-op at j + 1 stays uncommitted and it appends nothing after it yet.
    c.set_filter(|m| {
        m.from != 2
            && m.to != 2
            && matches!(m.body, MessageBody::RequestVote(_) | MessageBody::RequestVoteResponse(_))
    });
    let t2 = c.elect(3);
    assert!(t2 > t1);
    assert_eq!(last_index(&c, 3), j + 1);
    assert_eq!(c.raft(3).membership(), &jm);
    assert_eq!(c.raft(2).membership(), &new, "2 still holds C_new");
    c.clear_filter();
    c.tick(3);
    let mut reverted = false;
    while let Some(m) = c.pop_next(|m| between(m, 2, 3)) {
        let overwrites = m.to == 2 && carries(&m, j + 1);
        c.deliver(m);
        if overwrites {
            assert_eq!(c.raft(2).term_at(j + 1), Some(t2));
            assert_eq!(c.raft(2).membership(), &jm, "2 falls back to C_old,new");
            reverted = true;
            break;
        }
    }
    assert!(reverted);

    // The new leader appends C_new on its own once C_old,new is committed in its term.
    c.run(3);
    let configs: Vec<_> = config_entries(&c, 3).into_iter().filter(|e| e.0 >= j).collect();
    assert_eq!(configs, vec![(j, t1, jm.clone()), (j + 2, t2, new.clone())]);
    for id in 2..=6 {
        assert_eq!(c.raft(id).membership(), &new, "node {id}");
    }
    c.restart(1);
    c.run(3 * T);
    c.assert_converged(3, &c.ids());
    assert_eq!(c.raft(1).membership(), &new);
}

// ----- 8. log compaction -------------------------------------------------------------------------

/// Reference: paper section 7: "servers take snapshots independently, covering just the
/// committed entries in their logs"; the policy fires when the log since the last snapshot
/// reaches either the entry count or the byte size, and counts applied entries only.
#[test]
fn snapshot_due_fires_on_either_threshold_and_only_over_applied_entries() {
    const NONE: u64 = u64::MAX;
    let mut c = Cluster::new(3);
    c.elect(1);
    c.run(2);
    for id in 1..=3 {
        let r = c.raft(id);
        assert_eq!(r.status().last_applied, 1, "the no-op");
        assert_eq!(r.snapshot_due(1, NONE), Some(1), "node {id}");
        assert_eq!(r.snapshot_due(2, NONE), None, "node {id}");
        assert_eq!(r.snapshot_due(NONE, 1), None, "node {id}: the no-op has no payload");
    }
    for i in 0..4 {
        c.propose(1, &format!("command-{i:02}")).expect("leader"); // 10 bytes each
    }
    c.run(2);
    for id in 1..=3 {
        let r = c.raft(id);
        assert_eq!(r.status().last_applied, 5);
        // Entries: 5 applied since the start.
        assert_eq!(r.snapshot_due(5, NONE), Some(5), "node {id}");
        assert_eq!(r.snapshot_due(6, NONE), None, "node {id}");
        // Bytes: 40 applied.
        assert_eq!(r.snapshot_due(NONE, 40), Some(5), "node {id}");
        assert_eq!(r.snapshot_due(NONE, 41), None, "node {id}");
        // Either threshold suffices.
        assert_eq!(r.snapshot_due(6, 40), Some(5), "node {id}");
        assert_eq!(r.snapshot_due(5, 41), Some(5), "node {id}");
        assert_eq!(r.snapshot_due(6, 41), None, "node {id}");
    }

    // Entries appended but not committed (the followers' answers are lost) do not count.
    c.set_filter(|m| m.to != 1);
    for i in 0..10 {
        c.propose(1, &format!("pending-{i:02}")).expect("leader"); // 10 bytes each
    }
    c.deliver_all();
    for id in 1..=3 {
        assert_eq!(last_index(&c, id), 15, "node {id} stores them");
        assert_eq!(c.raft(id).status().last_applied, 5, "node {id} applied none");
        assert_eq!(c.raft(id).snapshot_due(6, NONE), None, "node {id}: unapplied entries do not count");
        assert_eq!(c.raft(id).snapshot_due(NONE, 41), None, "node {id}: nor their bytes");
        assert_eq!(c.raft(id).snapshot_due(5, NONE), Some(5), "node {id}: the last applied, not the last");
    }
    c.clear_filter();
    c.run(2);
    for id in 1..=3 {
        assert_eq!(c.raft(id).snapshot_due(15, NONE), Some(15), "node {id}");
        assert_eq!(c.raft(id).snapshot_due(NONE, 140), Some(15), "node {id}");
        assert_eq!(c.raft(id).snapshot_due(NONE, 141), None, "node {id}");
    }

    // A snapshot resets both counts.
    c.compact(2, 15).expect("applied");
    assert_eq!(c.raft(2).snapshot_due(1, 1), None, "nothing applied since the snapshot");
    c.propose(1, "ten-bytes!").expect("leader");
    c.run(2);
    let r = c.raft(2);
    assert_eq!(r.snapshot_due(1, NONE), Some(16));
    assert_eq!(r.snapshot_due(2, NONE), None);
    assert_eq!(r.snapshot_due(NONE, 10), Some(16));
    assert_eq!(r.snapshot_due(NONE, 11), None, "bytes counted from the snapshot on");
}

/// Reference: paper section 7 (Figure 12: the snapshot holds "the latest configuration as of
/// the last included index"). `membership_at` answers it, `snapshot_taken` refuses any other
/// configuration, and a server restarting from a snapshot and the log after it recovers the
/// configuration in effect.
#[test]
fn a_snapshot_carries_the_configuration_in_effect_at_its_index() {
    let mut c = Cluster::new(3);
    c.add_node(4, Membership::default());
    c.elect(1);
    c.propose(1, "a").expect("leader");
    c.run(2);
    let old = Membership::new([1, 2, 3]);
    let j = change(&mut c, 1, AddLearner(4)).expect("leader");
    c.run(2);
    let j2 = change(&mut c, 1, Promote(4)).expect("leader");
    c.run(3);
    c.propose(1, "b").expect("leader");
    c.run(2);
    let learner = with_learners(&[1, 2, 3], &[4]);
    let jm = joint(&[1, 2, 3], &[1, 2, 3, 4]);
    let new = Membership::new([1, 2, 3, 4]);
    for id in 1..=4 {
        let r = c.raft(id);
        assert_eq!(r.membership(), &new, "node {id}");
        if id != 4 {
            assert_eq!(r.membership_at(j - 1), old, "node {id}");
        }
        assert_eq!(r.membership_at(j), learner, "node {id}");
        assert_eq!(r.membership_at(j2 - 1), learner, "node {id}");
        assert_eq!(r.membership_at(j2), jm, "node {id}");
        assert_eq!(r.membership_at(j2 + 1), new, "node {id}");
        assert_eq!(r.membership_at(r.status().last_index), new, "node {id}");
    }

    // A snapshot at the joint entry must carry C_old,new, not the current configuration.
    let term = c.raft(1).term_at(j2).expect("in the log");
    let snapshot = |membership: Membership| Snapshot {
        meta: SnapshotMeta { last_included_index: j2, last_included_term: term, membership },
        data: cmd("").into(),
    };
    for wrong in [new.clone(), learner.clone(), old.clone()] {
        assert_eq!(
            c.raft_mut(1).snapshot_taken(snapshot(wrong)),
            Err(SnapshotError::MembershipMismatch { index: j2 })
        );
        assert_eq!(c.raft(1).status().snapshot_index, 0, "a refused snapshot compacts nothing");
    }
    assert_eq!(c.raft_mut(2).snapshot_taken(snapshot(jm.clone())), Ok(()), "the right one is taken");
    assert_eq!(c.raft(2).status().snapshot_index, j2);
    assert_eq!(c.raft(2).membership(), &new, "compaction does not change the configuration in effect");
    assert_eq!(c.raft(2).membership_at(j2), jm);
    // The harness's driver takes snapshots with membership_at: at the joint entry on node 3, and
    // past every configuration entry on node 1.
    c.compact(3, j2).expect("membership_at(j2) is the right configuration");
    let applied = c.node(1).applied_index;
    c.compact(1, applied).expect("applied");
    assert!(config_entries(&c, 1).is_empty(), "every configuration entry compacted away");
    assert_eq!(c.raft(1).membership(), &new);

    // Restarts recover the configuration from the snapshot (and the entries after it).
    for id in [1, 3] {
        let snapshot_membership = c.node(id).disk.snapshot.as_ref().map(|s| s.meta.membership.clone());
        assert_eq!(snapshot_membership, Some(if id == 1 { new.clone() } else { jm.clone() }), "node {id}");
        c.crash(id);
        c.restart(id);
        assert_eq!(c.raft(id).membership(), &new, "node {id} after a restart");
    }
    let leader = c.wait_for_leader(10 * T);
    c.propose(leader, "c").expect("leader");
    c.run(3);
    c.assert_converged(leader, &[1, 2, 3, 4]);
    assert_eq!(c.node(3).commands(), vec!["a", "b", "c"]);
}

/// Reference: paper section 7 (Figure 13: the leader sends a snapshot to "a new server joining
/// the cluster") with paper section 6 / thesis 4.2.1: a server added after the log was compacted
/// gets the prefix from a snapshot — with the configuration in it — and the rest from the log,
/// and is promoted. Both orders: the change compacted into the snapshot, or after it. With
/// whole or chunked snapshots, from the leader or delegated to a follower. Only outcomes are
/// checked.
#[test]
fn a_new_member_catches_up_through_a_snapshot_after_compaction_and_a_membership_change() {
    for change_before_compaction in [true, false] {
        for (chunk_bytes, delegate) in [(1 << 20, false), (16, false), (16, true)] {
            let what = format!(
                "change before compaction: {change_before_compaction}, chunk: {chunk_bytes}, delegate: {delegate}"
            );
            let config = move |id| {
                let mut cfg = promotion_config(id);
                cfg.snapshot_chunk_bytes = chunk_bytes;
                cfg.delegate_snapshots = delegate;
                cfg
            };
            let mut c = Cluster::with_configs(Membership::new([1, 2, 3]), config);
            c.elect(1);
            for i in 0..10 {
                c.propose(1, &format!("first-{i}")).expect("leader");
            }
            c.run(2);
            let mut j = 0;
            if change_before_compaction {
                // Node 4 does not exist yet: the leader's messages to it are lost.
                j = change(&mut c, 1, AddVoter(4)).expect("leader");
                for i in 0..10 {
                    c.propose(1, &format!("second-{i}")).expect("leader");
                }
                c.run(2);
                assert!(!c.raft(1).membership().is_voter(4), "{what}: 4 lags, so it is not promoted");
            }
            let snap = c.node(1).applied_index;
            for id in 1..=3 {
                let applied = c.node(id).applied_index;
                assert_eq!(applied, snap, "{what}: node {id}");
                c.compact(id, applied).expect("applied");
            }
            assert!(c.raft(1).entry(1).is_none(), "{what}: the prefix is gone");
            c.add_node_with(config(4), Membership::default());
            if !change_before_compaction {
                j = change(&mut c, 1, AddVoter(4)).expect("leader");
                for i in 0..10 {
                    c.propose(1, &format!("second-{i}")).expect("leader");
                }
            }
            assert!(j > 0 && (j <= snap) == change_before_compaction, "{what}");

            let full = Membership::new([1, 2, 3, 4]);
            let done = c.run_until(10 * T, |c| {
                c.raft(1).membership() == &full
                    && commit(c, 1) == last_index(c, 1)
                    && commit(c, 4) == commit(c, 1)
            });
            assert!(done.is_some(), "{what}: 4 caught up and was promoted");
            c.run(2);

            // 4 got the compacted prefix from a snapshot, with the configuration as of its index.
            let st = c.raft(4).status();
            assert_eq!(st.snapshot_index, snap, "{what}: node 4 starts from the snapshot");
            assert!(c.node(4).disk.snapshot.is_some(), "{what}");
            assert_eq!(c.raft(4).membership_at(snap), c.raft(1).membership_at(snap), "{what}");
            assert!(
                !c.records.iter().any(|r| r.node == 4 && r.entries.iter().any(|e| e.index <= snap)),
                "{what}: node 4 never stored compacted entries"
            );
            for id in 1..=4 {
                assert_eq!(c.raft(id).membership(), &full, "{what}: node {id}");
            }
            c.assert_converged(1, &[2, 3, 4]);
            assert_eq!(c.node(4).commands(), c.node(1).commands(), "{what}");
            assert_eq!(c.node(4).commands().len(), 20, "{what}");

            // A voter now: it comes back from its own disk and keeps up.
            c.crash(4);
            c.restart(4);
            assert_eq!(c.raft(4).membership(), &full, "{what}: after a restart");
            let x = c.propose(1, "after").expect("leader");
            c.run(3);
            assert!(commit(&c, 4) >= x, "{what}");
            assert_eq!(c.node(4).commands(), c.node(1).commands(), "{what}");
        }
    }
}
