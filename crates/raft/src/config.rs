//! Configuration of one Raft server, validated before the core starts.

use thiserror::Error;

use crate::types::NodeId;

/// How ReadIndex requests confirm leadership (thesis section 6.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadMode {
    /// Every read batch waits for a heartbeat round acknowledged by a quorum. Safe with any
    /// clock behaviour.
    Safe,
    /// The leader answers at once while its lease holds: a quorum acknowledged a message it sent
    /// less than `election_timeout_ticks - lease_margin_ticks` ago, and those voters will not
    /// vote for anyone else until an election timeout has passed since they heard it. This
    /// assumes clocks (tick rates) of servers differ by less than the margin over one election
    /// timeout (thesis 6.4.1). Requires `check_quorum`.
    Lease,
}

/// Settings of one server. Time is counted in ticks, which the driver delivers at a fixed rate.
#[derive(Clone, Debug)]
pub struct Config {
    /// This server's id; never 0.
    pub id: NodeId,
    /// T of the paper: followers wait a random timeout in `[T, 2T)` before campaigning.
    pub election_timeout_ticks: u64,
    /// How often the leader sends heartbeats; must be well below the election timeout.
    pub heartbeat_interval_ticks: u64,
    /// Run a pre-vote before each election (thesis 9.6).
    pub pre_vote: bool,
    /// A leader that has not heard from a quorum in an election timeout steps down, and a
    /// follower that has heard from a leader within an election timeout ignores vote requests
    /// (thesis 6.2 and 4.2.3).
    pub check_quorum: bool,
    /// Upper bound on AppendEntries messages in flight to one follower in the replicate state.
    pub max_inflight_msgs: usize,
    /// Upper bound on the entry bytes of one AppendEntries message (one entry always fits).
    pub max_msg_bytes: usize,
    /// How reads are confirmed.
    pub read_mode: ReadMode,
    /// Safety margin for lease reads, in ticks; see [`ReadMode::Lease`].
    pub lease_margin_ticks: u64,
    /// A learner marked for promotion counts as caught up while within this many entries of
    /// the leader's log (thesis 4.2.1)...
    pub learner_catch_up_lag_entries: u64,
    /// ...and is promoted to voter after staying caught up for this many leader ticks.
    pub learner_catch_up_ticks: u64,
    /// Bytes of snapshot data per InstallSnapshot message.
    pub snapshot_chunk_bytes: usize,
    /// Snapshot chunks unacknowledged at once, to one receiver. Each is read from the snapshot's
    /// source and queued for the network when sent, so this bounds both memory and the work a
    /// resend repeats (at 256 chunks of 1 MiB, a chaos run's leader queued gigabytes).
    pub snapshot_inflight_chunks: usize,
    /// When a server needs a snapshot, ask an up-to-date follower to stream it instead of the
    /// leader (Omni-Paxos' lesson: new members must not saturate the leader).
    pub delegate_snapshots: bool,
    /// Entries kept before a snapshot's point when compacting (0: compact exactly at it), so a
    /// server restored from a slightly older snapshot (one a follower served) continues from the
    /// log rather than needing the leader's snapshot too. 1024 suits catch-up from peers.
    pub snapshot_catch_up_entries: u64,
    /// Seeds the election-timeout randomness, so a run replays exactly.
    pub seed: u64,
}

/// A configuration the core refuses to run with.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    /// Node id 0 is reserved.
    #[error("node id must not be 0")]
    ZeroId,
    /// The timers cannot work.
    #[error("heartbeat interval ({heartbeat_ticks} ticks) must be at least 1 and below the election timeout ({election_ticks} ticks)")]
    Timers {
        /// The configured heartbeat interval.
        heartbeat_ticks: u64,
        /// The configured election timeout.
        election_ticks: u64,
    },
    /// Replication could never make progress.
    #[error("max_inflight_msgs, max_msg_bytes, snapshot_chunk_bytes and snapshot_inflight_chunks must be at least 1")]
    Flow,
    /// Lease reads rely on CheckQuorum's lazy voters.
    #[error("lease reads need check_quorum and a lease margin below the election timeout")]
    Lease,
}

impl Config {
    /// Defaults that suit a LAN with a 10 ms tick: 1 s election timeout, 100 ms heartbeats.
    pub fn new(id: NodeId) -> Self {
        Self {
            id,
            election_timeout_ticks: 10,
            heartbeat_interval_ticks: 1,
            pre_vote: true,
            check_quorum: true,
            max_inflight_msgs: 256,
            max_msg_bytes: 1 << 20,
            read_mode: ReadMode::Safe,
            lease_margin_ticks: 2,
            learner_catch_up_lag_entries: 64,
            learner_catch_up_ticks: 10,
            snapshot_chunk_bytes: 1 << 20,
            snapshot_inflight_chunks: 8,
            delegate_snapshots: false,
            snapshot_catch_up_entries: 0,
            seed: id,
        }
    }

    /// Checks the settings; the core calls this before it starts.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.id == 0 {
            return Err(ConfigError::ZeroId);
        }
        if self.heartbeat_interval_ticks == 0 || self.heartbeat_interval_ticks >= self.election_timeout_ticks
        {
            return Err(ConfigError::Timers {
                heartbeat_ticks: self.heartbeat_interval_ticks,
                election_ticks: self.election_timeout_ticks,
            });
        }
        if self.max_inflight_msgs == 0
            || self.max_msg_bytes == 0
            || self.snapshot_chunk_bytes == 0
            || self.snapshot_inflight_chunks == 0
        {
            return Err(ConfigError::Flow);
        }
        if self.read_mode == ReadMode::Lease
            && (!self.check_quorum || self.lease_margin_ticks >= self.election_timeout_ticks)
        {
            return Err(ConfigError::Lease);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_settings() {
        assert_eq!(Config::new(0).validate(), Err(ConfigError::ZeroId));
        let mut c = Config::new(1);
        c.heartbeat_interval_ticks = 10;
        assert!(matches!(c.validate(), Err(ConfigError::Timers { .. })));
        let mut c = Config::new(1);
        c.read_mode = ReadMode::Lease;
        c.check_quorum = false;
        assert_eq!(c.validate(), Err(ConfigError::Lease));
        let mut c = Config::new(1);
        c.max_inflight_msgs = 0;
        assert_eq!(c.validate(), Err(ConfigError::Flow));
        assert_eq!(Config::new(1).validate(), Ok(()));
    }
}
