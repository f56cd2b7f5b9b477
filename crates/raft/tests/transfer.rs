//! Leadership transfer (thesis section 3.10).

mod common;

use balsa_raft::{Membership, MessageBody, ProposeError, Role, TransferError};
use common::{test_config, Cluster, ELECTION_TICKS as T};

/// Reference: thesis section 3.10: "the prior leader sends its log entries to the target server
/// ... the prior leader sends a TimeoutNow request to the target server ... the target server is
/// likely to ... become leader in the next term"; the prior leader "stops accepting new client
/// requests"; and thesis 4.2.3 (voters in lease still vote for a transfer election).
#[test]
fn transfer_to_a_lagging_follower_catches_it_up_and_it_leads_the_next_term() {
    let mut membership = Membership::new([1, 2, 3]);
    membership.learners.insert(4);
    let mut c = Cluster::with_configs(membership, test_config);
    let term = c.elect(1);
    c.run(2);

    // Refusals.
    assert_eq!(c.raft_mut(2).transfer_leader(3), Err(TransferError::NotLeader { leader_hint: Some(1) }));
    assert_eq!(c.raft_mut(1).transfer_leader(4), Err(TransferError::NotVoter { id: 4 }), "4 is a learner");
    assert_eq!(c.raft_mut(1).transfer_leader(9), Err(TransferError::NotVoter { id: 9 }), "9 is no member");
    assert_eq!(c.raft(1).role(), Role::Leader);
    assert!(c.propose(1, "still-open").is_ok(), "refused transfers change nothing");
    c.run(2);

    // Node 3 falls behind.
    c.block(1, 3);
    for i in 0..5 {
        c.propose(1, &format!("before{i}")).expect("leader");
        c.deliver_all();
    }
    c.run(2);
    c.heal();
    let leader_last = c.raft(1).status().last_index;
    assert!(c.raft(3).status().last_index < leader_last, "node 3 lags");
    assert!(c.raft(1).status().commit_index == leader_last, "committed by nodes 1 and 2");

    c.raft_mut(1).transfer_leader(3).expect("3 is a voter");
    c.process(1);
    assert_eq!(c.propose(1, "during"), Err(ProposeError::TransferInProgress { to: 3 }));
    assert!(c.raft(3).status().last_index < leader_last, "TimeoutNow must wait until 3 caught up");
    assert_eq!(c.count_sent(|m| matches!(m.body, MessageBody::TimeoutNow)), 0);

    let mut ticks = 0;
    while c.raft(3).role() != Role::Leader {
        assert!(ticks < T, "transfer did not complete within an election timeout");
        if c.raft(1).role() == Role::Leader {
            assert_eq!(c.propose(1, "during"), Err(ProposeError::TransferInProgress { to: 3 }));
        }
        c.run(1);
        ticks += 1;
    }
    // The TimeoutNow went out only once node 3 held the leader's whole log.
    let timeout_now =
        c.sent.iter().position(|m| matches!(m.body, MessageBody::TimeoutNow)).expect("TimeoutNow");
    assert_eq!(c.sent[timeout_now].to, 3);
    assert!(
        c.sent[..timeout_now].iter().any(|m| m.from == 3
            && matches!(&m.body, MessageBody::AppendEntriesResponse(r) if r.success && r.match_index == leader_last)),
        "node 3 acknowledged the whole log before it was told to campaign"
    );

    assert_eq!(c.raft(3).current_term(), term + 1, "the successor leads the very next term");
    assert_eq!(c.leaders_by_term().get(&(term + 1)), Some(&3));
    assert_eq!(c.raft(1).role(), Role::Follower);
    assert_eq!(c.raft(1).leader_id(), Some(3));
    // Node 3's no-op follows the old leader's last entry: nothing was lost, nothing squeezed in.
    assert_eq!(c.raft(3).status().last_index, leader_last + 1);
    assert_eq!(c.raft(3).term_at(leader_last), c.raft(1).term_at(leader_last));

    c.propose(3, "after").expect("new leader accepts");
    c.run(3);
    c.assert_converged(3, &[1, 2, 3, 4]);
    for id in c.ids() {
        let cmds = c.node(id).commands();
        assert!(!cmds.contains(&"during".to_string()), "node {id}: a refused proposal was applied");
        assert_eq!(cmds.len(), 7, "node {id}: five before, still-open, after");
        assert_eq!(cmds.last().map(String::as_str), Some("after"));
    }
}

/// Reference: thesis section 3.10: "if the transfer does not complete within about an election
/// timeout, the prior leader aborts the transfer and resumes accepting client requests".
#[test]
fn transfer_to_an_unreachable_follower_is_abandoned_after_an_election_timeout() {
    let mut c = Cluster::new(3);
    let term = c.elect(1);
    c.run(2);
    assert_eq!(c.raft_mut(1).transfer_leader(1), Ok(()), "transfer to itself is a no-op");
    assert!(c.propose(1, "self-transfer-is-no-op").is_ok());
    c.run(1);

    c.isolate(3);
    c.raft_mut(1).transfer_leader(3).expect("voter");
    c.process(1);
    for _ in 0..T / 2 {
        assert_eq!(c.propose(1, "x"), Err(ProposeError::TransferInProgress { to: 3 }));
        c.run(1);
    }
    // Within an election timeout of the request the leader gives up and accepts proposals again.
    let mut accepted = None;
    for _ in T / 2..T {
        c.run(1);
        if let Ok(i) = c.propose(1, "resumed") {
            accepted = Some(i);
            break;
        }
    }
    let i = accepted.expect("proposals resume after the transfer is abandoned");
    assert_eq!(c.raft(1).role(), Role::Leader, "the leader keeps leading");
    assert_eq!(c.raft(1).current_term(), term);
    c.run(2);
    assert!(c.raft(2).status().commit_index >= i);
    assert_eq!(c.raft(3).current_term(), term, "the unreachable target never campaigned in a new term");
}
