//! Input validation: configurations the core refuses to run with, and messages it refuses.

mod common;

use balsa_raft::{
    Config, ConfigError, InitialState, Membership, Message, MessageBody, Raft, ReadMode, StepError,
};
use common::{test_config, Cluster, ELECTION_TICKS as T};

fn rejected(c: &Config) -> ConfigError {
    let err = c.validate().expect_err("invalid");
    let initial = InitialState { membership: Membership::new([c.id.max(1)]), ..Default::default() };
    match Raft::new(c.clone(), initial) {
        Err(e) => assert_eq!(e, err, "Raft::new reports the same error"),
        Ok(_) => panic!("Raft::new accepted an invalid config"),
    }
    err
}

/// Reference: paper section 5.6 (timing: broadcastTime << electionTimeout) and thesis 6.4.1
/// (lease reads depend on CheckQuorum and a clock-drift margin below the election timeout).
#[test]
fn config_validate_rejects_every_unworkable_setting() {
    assert_eq!(Config::new(1).validate(), Ok(()));
    assert_eq!(test_config(7).validate(), Ok(()));

    assert_eq!(rejected(&Config::new(0)), ConfigError::ZeroId);

    for (heartbeat, election) in [(0, 10), (10, 10), (11, 10), (1, 1), (0, 0)] {
        let mut c = Config::new(1);
        c.heartbeat_interval_ticks = heartbeat;
        c.election_timeout_ticks = election;
        assert_eq!(
            rejected(&c),
            ConfigError::Timers { heartbeat_ticks: heartbeat, election_ticks: election },
            "heartbeat {heartbeat}, election {election}"
        );
    }
    let mut c = Config::new(1);
    c.heartbeat_interval_ticks = 9;
    assert_eq!(c.validate(), Ok(()), "heartbeat just below the timeout is allowed");

    let mut c = Config::new(1);
    c.max_inflight_msgs = 0;
    assert_eq!(rejected(&c), ConfigError::Flow);
    let mut c = Config::new(1);
    c.max_msg_bytes = 0;
    assert_eq!(rejected(&c), ConfigError::Flow);

    let mut c = Config::new(1);
    c.read_mode = ReadMode::Lease;
    assert_eq!(c.validate(), Ok(()), "lease reads with CheckQuorum and a small margin");
    c.check_quorum = false;
    assert_eq!(rejected(&c), ConfigError::Lease);
    let mut c = Config::new(1);
    c.read_mode = ReadMode::Lease;
    c.lease_margin_ticks = c.election_timeout_ticks;
    assert_eq!(rejected(&c), ConfigError::Lease);
    c.read_mode = ReadMode::Safe;
    assert_eq!(c.validate(), Ok(()), "the margin only matters for lease reads");

    // Errors explain themselves.
    let text = ConfigError::Timers { heartbeat_ticks: 10, election_ticks: 10 }.to_string();
    assert!(text.contains("10"), "{text}");
}

/// Reference: paper Figure 2 (every RPC has a sender and a receiver): a message addressed to
/// another server, or claiming to come from nobody or from the receiver itself, is a driver bug,
/// reported as an error and otherwise ignored.
#[test]
fn step_rejects_misaddressed_messages_and_changes_nothing() {
    let mut c = Cluster::new(3);
    let term = c.elect(1);
    c.run(2);
    let heartbeat = |from, to| Message {
        from,
        to,
        term: term + 3,
        body: MessageBody::AppendEntries(balsa_raft::AppendEntries {
            prev_log_index: 0,
            prev_log_term: 0,
            entries: Vec::new(),
            leader_commit: 0,
            read_round: 0,
        }),
    };
    let before = c.raft(2).status();
    let raft = c.raft_mut(2);
    assert_eq!(raft.step(heartbeat(1, 3)), Err(StepError::WrongRecipient { to: 3, me: 2 }));
    assert_eq!(raft.step(heartbeat(0, 2)), Err(StepError::InvalidSender { from: 0 }));
    assert_eq!(raft.step(heartbeat(2, 2)), Err(StepError::InvalidSender { from: 2 }));
    assert!(!raft.has_ready(), "a refused message produces no work");
    assert_eq!(c.raft(2).status(), before, "nor any change, not even of the term");
    assert!(StepError::WrongRecipient { to: 3, me: 2 }.to_string().contains('3'));

    // The cluster is unaffected.
    c.run(T);
    assert_eq!(c.leader(), Some(1));
    assert_eq!(c.raft(2).current_term(), term);
}
