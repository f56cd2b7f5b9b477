//! Linearizable reads without writing to the log: ReadIndex (thesis 6.4) and, opt-in, lease reads
//! (thesis 6.4.1).
//!
//! The leader records its commit index as the read index, then confirms it is still leader by a
//! heartbeat round that a quorum acknowledges. Rounds are numbered: every AppendEntries carries
//! the current round and every answer echoes it, so one round confirms every read registered
//! before it, and reads arriving together share one round.

use std::collections::VecDeque;

use bytes::Bytes;

use crate::config::ReadMode;
use crate::error::ReadIndexError;
use crate::message::{MessageBody, ReadIndexResponse};
use crate::raft::Raft;
use crate::ready::ReadState;
use crate::types::{Index, NodeId, Role};

/// A read waiting for its round to be confirmed.
#[derive(Debug)]
struct PendingRead {
    context: Bytes,
    /// Who asked: `None` for a read made on this server, else the follower that forwarded it.
    from: Option<NodeId>,
    index: Index,
    round: u64,
}

/// The leader's read bookkeeping; reset on every change of leadership.
#[derive(Debug, Default)]
pub(crate) struct ReadIndexState {
    /// The current round; only grows, also across terms.
    pub(crate) round: u64,
    /// A read joined a new round that has not been broadcast yet.
    pub(crate) broadcast_pending: bool,
    /// When each recent round started, in leader ticks: the lease clock.
    round_started: VecDeque<(u64, u64)>,
    /// Reads waiting for a quorum to confirm their round, oldest first.
    pending: VecDeque<PendingRead>,
    /// Reads that arrived before this leader committed an entry of its term (thesis 6.4 step 1).
    awaiting_commit: Vec<(Bytes, Option<NodeId>)>,
}

impl ReadIndexState {
    /// Opens the next round at `now_ticks`, forgetting rounds too old to matter for a lease.
    pub(crate) fn start_round(&mut self, now_ticks: u64, election_timeout_ticks: u64) {
        self.round += 1;
        self.round_started.push_back((self.round, now_ticks));
        while self.round_started.front().is_some_and(|&(_, t)| t + 2 * election_timeout_ticks < now_ticks) {
            self.round_started.pop_front();
        }
    }

    /// The tick at which `round` started, if remembered.
    fn started_at(&self, round: u64) -> Option<u64> {
        let i = self.round_started.partition_point(|&(r, _)| r < round);
        self.round_started.get(i).filter(|&&(r, _)| r == round).map(|&(_, t)| t)
    }

    pub(crate) fn reset(&mut self) {
        self.broadcast_pending = false;
        self.round_started.clear();
        debug_assert!(self.pending.is_empty() && self.awaiting_commit.is_empty());
    }
}

impl Raft {
    /// Registers a read at the leader, from this server (`from == None`) or a follower.
    pub(crate) fn leader_read(&mut self, context: Bytes, from: Option<NodeId>) {
        if self.log.term(self.log.commit_index) != Some(self.current_term) {
            // Until its no-op commits, a new leader does not know the latest commit index.
            self.reads.awaiting_commit.push((context, from));
            return;
        }
        let index = self.log.commit_index;
        let me = self.config.id;
        if self.membership.has_quorum(|id| id == me) || self.lease_valid() {
            return self.complete_read(context, from, Ok(index));
        }
        if !self.reads.broadcast_pending {
            self.reads.broadcast_pending = true;
        }
        // The round this read waits for is the one the next broadcast will open.
        let round = self.reads.round + 1;
        self.reads.pending.push_back(PendingRead { context, from, index, round });
    }

    pub(crate) fn handle_forwarded_read(&mut self, from: NodeId, context: Bytes) {
        if self.role == Role::Leader {
            self.leader_read(context, Some(from));
        } else {
            let body = ReadIndexResponse { context, read_index: None };
            self.send(from, MessageBody::ReadIndexResponse(body));
        }
    }

    fn complete_read(&mut self, context: Bytes, from: Option<NodeId>, result: Result<Index, ReadIndexError>) {
        match from {
            None => self.read_states.push(ReadState { context, result }),
            Some(peer) => {
                let body = ReadIndexResponse { context, read_index: result.ok() };
                self.send(peer, MessageBody::ReadIndexResponse(body));
            }
        }
    }

    /// Releases every read whose round a quorum has echoed.
    pub(crate) fn release_confirmed_reads(&mut self) {
        if self.reads.pending.is_empty() {
            return;
        }
        let me = self.config.id;
        let progress = &self.progress;
        let confirmed = self.membership.committed_index(|id| {
            if id == me {
                u64::MAX
            } else {
                progress.get(&id).map_or(0, |p| p.read_round_acked)
            }
        });
        while self.reads.pending.front().is_some_and(|r| r.round <= confirmed) {
            let read = self.reads.pending.pop_front().expect("checked");
            self.complete_read(read.context, read.from, Ok(read.index));
        }
    }

    /// The leader's first entry of its term committed: serve the reads that waited for it.
    pub(crate) fn release_reads_awaiting_commit(&mut self) {
        for (context, from) in std::mem::take(&mut self.reads.awaiting_commit) {
            self.leader_read(context, from);
        }
    }

    /// Leadership is lost: every waiting read fails, so clients retry elsewhere at once.
    pub(crate) fn fail_pending_reads(&mut self) {
        let hint = None;
        let waiting: Vec<_> = self.reads.pending.drain(..).map(|r| (r.context, r.from)).collect();
        let early = std::mem::take(&mut self.reads.awaiting_commit);
        for (context, from) in waiting.into_iter().chain(early) {
            self.complete_read(context, from, Err(ReadIndexError::NotLeader { leader_hint: hint }));
        }
    }

    /// Thesis 6.4.1: the lease holds while a quorum acknowledged a round that started less than
    /// an election timeout (minus the clock-drift margin) ago. Those voters heard from us no
    /// earlier than the round's start and will not vote for another candidate for an election
    /// timeout after that, so no other leader can exist yet.
    pub(crate) fn lease_valid(&self) -> bool {
        if self.config.read_mode != ReadMode::Lease || self.lease_revoked || self.role != Role::Leader {
            return false;
        }
        let me = self.config.id;
        let now = self.now_ticks;
        let start_of = |id: NodeId| {
            if id == me {
                return now;
            }
            self.progress.get(&id).and_then(|p| self.reads.started_at(p.read_round_acked)).unwrap_or(0)
        };
        let lease_start = self.membership.committed_index(start_of);
        let lease_ticks = self.config.election_timeout_ticks - self.config.lease_margin_ticks;
        lease_start > 0 && now < lease_start + lease_ticks
    }
}
