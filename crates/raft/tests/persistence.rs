//! Persistence ordering: what must be durable before which message may leave (paper Figure 2,
//! "Persistent state on all servers ... updated on stable storage before responding to RPCs").

mod common;

use std::collections::BTreeSet;

use balsa_raft::{HardState, Message, MessageBody, RequestVote, Role};
use common::{Cluster, ELECTION_TICKS as T};

fn request_vote(from: u64, to: u64, term: u64) -> Message {
    Message {
        from,
        to,
        term,
        body: MessageBody::RequestVote(RequestVote {
            pre_vote: false,
            last_log_index: 0,
            last_log_term: 0,
            leadership_transfer: false,
        }),
    }
}

/// The vote answers `id` sent to `to`, as `(term, granted)`, in the order they left.
fn vote_answers(c: &Cluster, id: u64, to: u64) -> Vec<(u64, bool)> {
    c.sent
        .iter()
        .filter(|m| m.from == id && m.to == to)
        .filter_map(|m| match &m.body {
            MessageBody::RequestVoteResponse(r) if !r.pre_vote => Some((m.term, r.vote_granted)),
            _ => None,
        })
        .collect()
}

/// Reference: paper Figure 2 (votedFor is persistent state, written before responding) and
/// section 5.2 ("each server will vote for at most one candidate in a given term"); thesis
/// 10.2.1 (only the leader's own AppendEntries may go out before its write).
#[test]
fn votes_and_acknowledgements_wait_for_their_write() {
    let mut c = Cluster::new(5);
    let leader = c.wait_for_leader(10 * T);
    for i in 0..5 {
        c.propose(leader, &format!("w{i}")).expect("leader");
        c.deliver_all();
    }
    c.run(3);

    let mut first_votes = BTreeSet::new();
    let mut granted = 0;
    let mut acks_with_entries = 0;
    for r in &c.records {
        for m in &r.messages {
            assert!(
                !matches!(
                    m.body,
                    MessageBody::RequestVote(_)
                        | MessageBody::RequestVoteResponse(_)
                        | MessageBody::AppendEntriesResponse(_)
                ),
                "{} from {} was not gated",
                m.kind_name(),
                r.node
            );
        }
        for m in &r.gated {
            match &m.body {
                MessageBody::RequestVoteResponse(v) if v.vote_granted && !v.pre_vote => {
                    granted += 1;
                    // The first grant of a term travels in the Ready that persists the vote.
                    if first_votes.insert((r.node, m.term)) {
                        let hs = r.hard_state.expect("the vote is in the same Ready's hard state");
                        assert_eq!((hs.current_term, hs.voted_for), (m.term, Some(m.to)));
                    }
                }
                MessageBody::RequestVote(v) if !v.pre_vote && first_votes.insert((r.node, m.term)) => {
                    let hs = r.hard_state.expect("a candidate persists its own vote first");
                    assert_eq!((hs.current_term, hs.voted_for), (m.term, Some(r.node)));
                }
                // An acknowledgement of entries written in this very Ready.
                MessageBody::AppendEntriesResponse(a)
                    if a.success && r.entries.last().is_some_and(|e| e.index == a.match_index) =>
                {
                    acks_with_entries += 1;
                }
                _ => {}
            }
        }
    }
    assert!(granted >= 2, "the election granted votes");
    assert!(acks_with_entries >= 5 * 4 / 2, "followers acknowledged entries in the Ready that wrote them");
    // The leader's AppendEntries left in `messages`, before its own write.
    assert!(c.records.iter().any(|r| r.node == leader
        && !r.entries.is_empty()
        && r.messages
            .iter()
            .any(|m| matches!(&m.body, MessageBody::AppendEntries(ae) if !ae.entries.is_empty()))));
}

/// Reference: paper section 5.2 and Figure 2: a voter that crashes and restarts remembers its
/// vote, so it cannot vote twice in one term; a vote whose write never completed was never
/// announced, so the restarted voter is free again.
#[test]
fn restarted_voter_does_not_vote_twice_in_a_term() {
    let mut c = Cluster::new(3);
    // Let node 3 get past its boot-time lazy-voter period (it ignores vote requests for an
    // election timeout after start, thesis 4.2.3), without talking to anyone.
    c.isolate(3);
    c.run(T);
    c.clear_queue();
    let term = c.raft(3).current_term() + 5;

    // Vote for 1, durably; crash; restart.
    c.deliver(request_vote(1, 3, term));
    assert_eq!(vote_answers(&c, 3, 1), vec![(term, true)]);
    assert_eq!(
        c.node(3).disk.hard_state,
        HardState { current_term: term, voted_for: Some(1), commit_index: 0 }
    );
    c.crash(3);
    c.restart(3);
    assert_eq!(c.raft(3).status().voted_for, Some(1));

    // Candidate 2 in the same term is refused; candidate 1 asking again gets the same answer.
    c.deliver(request_vote(2, 3, term));
    assert_eq!(vote_answers(&c, 3, 2), vec![(term, false)]);
    c.deliver(request_vote(1, 3, term));
    assert_eq!(vote_answers(&c, 3, 1), vec![(term, true), (term, true)]);
    assert_eq!(c.raft(3).status().voted_for, Some(1));
}

/// Reference: paper Figure 2 and section 5.2, the other side of the same rule: the vote is
/// promised only by the gated response, so a crash before the write loses nothing anyone saw.
#[test]
fn vote_lost_in_a_crash_before_its_write_was_never_announced() {
    let mut c = Cluster::new(3);
    c.isolate(3);
    c.run(T);
    c.clear_queue();
    let term = c.raft(3).current_term() + 5;

    // The request is taken in, but the node crashes before the Ready is written.
    c.raft_mut(3).step(request_vote(1, 3, term)).expect("valid");
    let abandoned = c.crash_mid_ready(3).expect("the vote produced a Ready");
    assert_eq!(abandoned.hard_state.map(|hs| hs.voted_for), Some(Some(1)));
    assert!(!abandoned.persisted);
    assert!(vote_answers(&c, 3, 1).is_empty(), "the vote never left");
    assert!(c.queue.iter().all(|m| m.from != 3), "nothing gated left");

    // After the restart the node never voted, as far as anyone can tell: it may vote for 2.
    c.restart(3);
    assert_eq!(c.raft(3).status().voted_for, None);
    c.run(T); // the boot-time lazy-voter period again
    c.clear_queue();
    assert!(c.raft(3).current_term() < term);
    c.deliver(request_vote(2, 3, term));
    assert_eq!(vote_answers(&c, 3, 2), vec![(term, true)]);
}

/// Reference: paper section 5.3 (an entry is committed once stored on a majority) with Figure 2
/// ("respond after updating stable storage") and thesis 10.2.1 ("the leader may write to its disk
/// in parallel ... it counts itself in the majority only once its entries are durable").
#[test]
fn entries_count_towards_commit_only_once_durable() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.run(2);
    let commit = c.raft(1).status().commit_index;

    // Follower 2's disk hangs; node 3 is unreachable. The leader's own write completes.
    c.block(1, 3);
    c.stall_disk(2);
    let i = c.propose(1, "slow").expect("leader");
    c.deliver_all();
    assert!(c.write_pending(2), "follower 2 took the entry in, but has not written it");
    assert_eq!(c.raft(2).status().last_index, i);
    assert_eq!(c.raft(2).status().persisted_index, i - 1);
    assert!(
        !c.sent
            .iter()
            .any(|m| m.from == 2
                && matches!(&m.body, MessageBody::AppendEntriesResponse(r) if r.match_index >= i)),
        "an acknowledgement left before the write"
    );
    assert_eq!(c.raft(1).status().commit_index, commit, "one durable copy of three is no majority");

    // Crashing now loses the entry on node 2; nothing may be committed on its account.
    c.crash(2);
    c.restart(2);
    assert_eq!(c.raft(2).status().last_index, i - 1);
    c.deliver_all();
    c.run(1);
    assert!(c.raft(1).status().commit_index >= i, "after the leader resends, node 2 acknowledges");

    // Now the leader's disk hangs: followers acknowledge, but 2 of 3 only counting the leader.
    c.stall_disk(1);
    let j = c.propose(1, "leader-slow").expect("leader");
    c.deliver_all();
    assert!(c.write_pending(1));
    assert_eq!(c.raft(1).status().persisted_index, i);
    assert!(c.raft(1).progress(2).expect("follower").match_index >= j);
    assert_eq!(c.raft(1).status().commit_index, i, "the leader counts itself only once durable");
    c.unstall_disk(1);
    c.deliver_all();
    assert!(c.raft(1).status().commit_index >= j);
    assert_eq!(c.raft(1).role(), Role::Leader);
}

/// Reference: paper Figure 2 lists commitIndex under "volatile state on all servers", and
/// currentTerm, votedFor and log[] under "persistent state". A Ready that only moves the commit
/// index asks for no sync (a crash that loses it costs a re-learned commit, never a broken
/// promise); one that carries entries or a new term or vote does.
#[test]
fn only_persistent_state_asks_for_a_sync() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.run(2);
    let i = c.propose(1, "x").expect("leader");
    // Follower 2 stores the entry (a synced batch) and the leader commits it with node 3.
    let to_2 = |m: &Message| m.to == 2;
    let append =
        c.pop_next(|m| to_2(m) && matches!(&m.body, MessageBody::AppendEntries(a) if !a.entries.is_empty()));
    let append = append.expect("the entry went to node 2");
    c.raft_mut(2).step(append).expect("well-formed");
    let mut ready = c.raft_mut(2).ready();
    assert!(!ready.persist.entries.is_empty());
    assert!(ready.persist.must_sync(), "entries must be synced before they are acknowledged");
    let receipt = std::mem::take(&mut ready.persist).durable();
    let acks = ready.gated_messages.release(&receipt);
    c.raft_mut(2).advance(receipt);
    for ack in acks {
        c.deliver(ack);
    }
    c.deliver_matching(|m| m.to != 2);
    assert!(c.raft(1).status().commit_index >= i);
    // The leader tells node 2 of the commit: only the commit index changes there.
    let heartbeat = c.pop_next(to_2).expect("the commit goes to node 2");
    c.raft_mut(2).step(heartbeat).expect("well-formed");
    let ready = c.raft_mut(2).ready();
    let hard = ready.persist.hard_state.expect("the commit index moved");
    assert!(hard.commit_index >= i);
    assert!(ready.persist.entries.is_empty() && ready.persist.snapshot.is_none());
    assert!(!ready.persist.must_sync(), "a commit index alone is volatile state");
    let receipt = ready.persist.durable();
    c.raft_mut(2).advance(receipt);
    // A vote in a new term is a promise: synced before the answer leaves.
    // (As a leadership transfer's: a server that hears from its leader ignores other votes.)
    let term = c.raft(2).current_term() + 1;
    let mut vote = request_vote(3, 2, term);
    if let MessageBody::RequestVote(rv) = &mut vote.body {
        rv.leadership_transfer = true;
    }
    c.raft_mut(2).step(vote).expect("well-formed");
    let ready = c.raft_mut(2).ready();
    let hard = ready.persist.hard_state.expect("term and vote changed");
    assert_eq!(hard.current_term, term);
    assert!(ready.persist.must_sync(), "a new term (and vote) must be synced first");
}
