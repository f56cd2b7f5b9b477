//! The leader's knowledge of each follower (paper Figure 2, "volatile state on leaders": nextIndex
//! and matchIndex), with the flow-control states of thesis section 10.2.

use std::collections::VecDeque;

use crate::types::Index;

/// How the leader is currently replicating to a follower.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressState {
    /// Searching for the point where the logs match: one AppendEntries at a time.
    Probe,
    /// Logs match: stream entries optimistically, up to the in-flight window.
    Replicate,
    /// The follower needs entries the leader compacted; a snapshot up to `pending_index` is on
    /// its way.
    Snapshot {
        /// The snapshot's last included index.
        pending_index: Index,
    },
}

/// One follower's replication state.
#[derive(Clone, Debug)]
pub struct Progress {
    /// Highest index known to be replicated on the follower.
    pub match_index: Index,
    /// Index of the next entry to send.
    pub next_index: Index,
    /// Flow-control state.
    pub state: ProgressState,
    /// In Probe: an AppendEntries is outstanding, wait for its answer (or a heartbeat answer).
    pub probe_sent: bool,
    /// In Replicate: last indexes of messages sent and not yet acknowledged, oldest first.
    pub inflight: VecDeque<Index>,
    /// Heard from in the current CheckQuorum period.
    pub recent_active: bool,
    /// Leader tick of the last answer from this follower.
    pub last_response_tick: u64,
    /// Highest read round the follower echoed in this term (thesis 6.4).
    pub read_round_acked: u64,
    /// Leader ticks since the snapshot in flight was sent, to resend one that was lost.
    pub snapshot_elapsed_ticks: u64,
    /// Leader ticks since `match_index` last moved, to notice lost AppendEntries in Replicate.
    pub stalled_ticks: u64,
    /// Consecutive leader ticks a learner marked for promotion has been caught up.
    pub caught_up_ticks: u64,
    /// In Snapshot: data bytes sent, and bytes the follower confirmed without a gap.
    pub snapshot_sent: u64,
    /// See `snapshot_sent`.
    pub snapshot_acked: u64,
    /// In Snapshot: the last chunk went out.
    pub snapshot_done_sent: bool,
    /// In Snapshot: the follower streaming it on the leader's behalf, if delegated.
    pub snapshot_helper: Option<u64>,
    /// Delegated snapshot transfers to this follower that made no progress; after one, the
    /// leader sends snapshots itself.
    pub delegations_failed: u32,
    /// The highest commit index this follower can have learned from what was sent to it: a
    /// message's `leader_commit`, capped at the last entry it vouches for. A follower whose
    /// acknowledgement arrives after the commit it takes part in (the other follower was
    /// faster) would otherwise learn that commit only at the next heartbeat.
    pub commit_sent: Index,
}

impl Progress {
    /// Progress for a follower of a new leader: probe from the end of the leader's log
    /// (section 5.3, "initialized to leader last log index + 1").
    pub fn new(next_index: Index) -> Self {
        Self {
            match_index: 0,
            next_index,
            state: ProgressState::Probe,
            probe_sent: false,
            inflight: VecDeque::new(),
            recent_active: false,
            last_response_tick: 0,
            read_round_acked: 0,
            snapshot_elapsed_ticks: 0,
            stalled_ticks: 0,
            caught_up_ticks: 0,
            snapshot_sent: 0,
            snapshot_acked: 0,
            snapshot_done_sent: false,
            snapshot_helper: None,
            commit_sent: 0,
            delegations_failed: 0,
        }
    }

    /// Whether another AppendEntries with entries may be sent now.
    pub fn is_paused(&self, max_inflight: usize) -> bool {
        match self.state {
            ProgressState::Probe => self.probe_sent,
            ProgressState::Replicate => self.inflight.len() >= max_inflight,
            ProgressState::Snapshot { .. } => true,
        }
    }

    /// Back to probing from just after the known match.
    pub fn become_probe(&mut self) {
        let next = match self.state {
            ProgressState::Snapshot { pending_index } => self.match_index.max(pending_index) + 1,
            _ => self.match_index + 1,
        };
        self.reset_state(ProgressState::Probe);
        self.next_index = next;
    }

    /// Stream from just after the known match.
    pub fn become_replicate(&mut self) {
        self.delegations_failed = 0;
        self.reset_state(ProgressState::Replicate);
        self.next_index = self.match_index + 1;
    }

    /// A snapshot up to `pending_index` was sent.
    pub fn become_snapshot(&mut self, pending_index: Index) {
        self.reset_state(ProgressState::Snapshot { pending_index });
    }

    fn reset_state(&mut self, state: ProgressState) {
        self.state = state;
        self.probe_sent = false;
        self.inflight.clear();
        self.snapshot_elapsed_ticks = 0;
        self.snapshot_sent = 0;
        self.snapshot_acked = 0;
        self.snapshot_done_sent = false;
        self.snapshot_helper = None;
    }

    /// Records that entries up to `last` were sent.
    pub fn sent_entries(&mut self, last: Index) {
        match self.state {
            ProgressState::Replicate => {
                self.next_index = last + 1;
                self.inflight.push_back(last);
            }
            ProgressState::Probe => self.probe_sent = true,
            ProgressState::Snapshot { .. } => {
                unreachable!("no entries are sent while a snapshot is in flight")
            }
        }
    }

    /// The follower acknowledged its log matches up to `index`. Returns whether `match_index`
    /// moved forward.
    pub fn acknowledge(&mut self, index: Index) -> bool {
        let advanced = index > self.match_index;
        if advanced {
            self.match_index = index;
            self.probe_sent = false;
            self.stalled_ticks = 0;
        }
        self.next_index = self.next_index.max(index + 1);
        while self.inflight.front().is_some_and(|&last| last <= index) {
            self.inflight.pop_front();
        }
        advanced
    }

    /// The follower rejected an AppendEntries whose previous index was `rejected`; the leader
    /// computed `next` from the follower's hint. Returns false if the rejection is stale (an
    /// answer to an older message) and was ignored.
    pub fn reject(&mut self, rejected: Index, next: Index) -> bool {
        // The follower has acknowledged everything up to match_index, so a rejection at or below
        // it answers an older message that the network delayed or reordered.
        if rejected <= self.match_index {
            return false;
        }
        match self.state {
            ProgressState::Replicate => {
                self.become_probe();
                self.next_index = next.clamp(self.match_index + 1, rejected);
                true
            }
            ProgressState::Probe => {
                if rejected != self.next_index - 1 {
                    return false;
                }
                self.next_index = next.clamp(self.match_index + 1, rejected);
                self.probe_sent = false;
                true
            }
            ProgressState::Snapshot { .. } => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_sends_one_at_a_time() {
        let mut p = Progress::new(11);
        assert!(!p.is_paused(4));
        p.sent_entries(12);
        assert!(p.is_paused(4));
        assert_eq!(p.next_index, 11, "probing does not move next optimistically");
        assert!(p.acknowledge(12));
        assert!(!p.is_paused(4));
    }

    #[test]
    fn replicate_window_is_bounded() {
        let mut p = Progress::new(1);
        p.become_replicate();
        for last in [5, 10, 15] {
            p.sent_entries(last);
        }
        assert!(p.is_paused(3));
        p.acknowledge(10);
        assert_eq!(p.inflight.len(), 1);
        assert!(!p.is_paused(3));
        assert_eq!(p.next_index, 16);
    }

    #[test]
    fn stale_rejections_are_ignored() {
        let mut p = Progress::new(10);
        p.match_index = 5;
        p.become_replicate();
        assert!(!p.reject(4, 1), "rejection at or below match is stale");
        assert_eq!(p.state, ProgressState::Replicate);
        assert!(p.reject(8, 7));
        assert_eq!(p.state, ProgressState::Probe);
        assert_eq!(p.next_index, 7);
        assert!(!p.reject(8, 3), "probe answers a different index");
        assert!(p.reject(6, 1));
        assert_eq!(p.next_index, 6, "next never drops below match + 1");
        // A reordered rejection from before the follower acknowledged index 5.
        p.become_probe();
        assert_eq!(p.next_index, 6);
        assert!(!p.reject(5, 1), "rejection at the match index is stale, even in probe");
    }
}
