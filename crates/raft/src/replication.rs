//! Log replication (paper section 5.3), the commit rule (5.4.2) and snapshots (section 7).

use crate::message::{AppendEntries, AppendEntriesResponse, ConflictHint, MessageBody};
use crate::progress::ProgressState;
use crate::raft::Raft;
use crate::types::{Index, NodeId};

impl Raft {
    /// Sends `to` the entries it is missing, if its flow control allows. Returns whether
    /// anything was sent.
    pub(crate) fn send_append(&mut self, to: NodeId) -> bool {
        let max_inflight = self.config.max_inflight_msgs;
        let Some(pr) = self.progress.get(&to) else { return false };
        if pr.is_paused(max_inflight) {
            return false;
        }
        let (next, state) = (pr.next_index, pr.state);
        let prev_log_index = next - 1;
        let Some(prev_log_term) = self.log.term(prev_log_index) else {
            return self.send_snapshot(to);
        };
        let entries = if next <= self.log.last_index() {
            self.log.entries_from(next, self.config.max_msg_bytes)
        } else {
            Vec::new()
        };
        if entries.is_empty() && state == ProgressState::Replicate {
            return false;
        }
        let last_sent = entries.last().map_or(prev_log_index, |e| e.index);
        let pr = self.progress.get_mut(&to).expect("checked above");
        pr.sent_entries(last_sent);
        pr.commit_sent = pr.commit_sent.max(self.log.commit_index.min(last_sent));
        let body = AppendEntries {
            prev_log_index,
            prev_log_term,
            entries,
            leader_commit: self.log.commit_index,
            read_round: self.reads.round,
        };
        self.send(to, MessageBody::AppendEntries(body));
        true
    }

    /// A heartbeat is an AppendEntries with no entries whose previous entry is the follower's
    /// known match, so it always passes the consistency check and can safely carry the commit
    /// index (followers commit only up to what they have verified).
    pub(crate) fn send_heartbeat(&mut self, to: NodeId) {
        let commit = self.log.commit_index;
        let Some(pr) = self.progress.get_mut(&to) else { return };
        let (prev_log_index, prev_log_term) = match self.log.term(pr.match_index) {
            Some(t) => (pr.match_index, t),
            None => (0, 0),
        };
        pr.commit_sent = pr.commit_sent.max(commit.min(prev_log_index));
        let body = AppendEntries {
            prev_log_index,
            prev_log_term,
            entries: Vec::new(),
            leader_commit: self.log.commit_index,
            read_round: self.reads.round,
        };
        self.send(to, MessageBody::AppendEntries(body));
    }

    /// Starts a new read round and sends every member a heartbeat carrying it.
    pub(crate) fn broadcast_heartbeat(&mut self) {
        self.reads.start_round(self.now_ticks, self.config.election_timeout_ticks);
        let peers: Vec<NodeId> = self.progress.keys().copied().collect();
        for id in peers {
            self.send_heartbeat(id);
        }
    }

    /// Sends what accumulated since the last Ready: new entries, and a heartbeat to every
    /// follower that got no entries but must learn a new commit index or a new read round.
    pub(crate) fn flush_broadcasts(&mut self) {
        let new_round = std::mem::take(&mut self.reads.broadcast_pending);
        if new_round {
            self.reads.start_round(self.now_ticks, self.config.election_timeout_ticks);
        }
        let commit = self.log.commit_index;
        let new_commit = commit > self.commit_broadcast;
        if !std::mem::take(&mut self.broadcast_pending) && !new_round && !new_commit {
            return;
        }
        self.commit_broadcast = commit;
        let peers: Vec<NodeId> = self.progress.keys().copied().collect();
        for id in peers {
            if !self.send_append(id) && (new_round || new_commit) {
                self.send_heartbeat(id);
            }
        }
    }

    /// Follower side of AppendEntries (Figure 2, "Receiver implementation").
    pub(crate) fn handle_append_entries(&mut self, from: NodeId, ae: AppendEntries) {
        let read_round = ae.read_round;
        let mut prev = ae.prev_log_index;
        let mut prev_term = ae.prev_log_term;
        let mut entries = ae.entries;
        let snapshot_index = self.log.snapshot_index();
        if prev < snapshot_index {
            // Entries up to our snapshot are committed, so they match the leader's: skip them.
            let skip = ((snapshot_index - prev) as usize).min(entries.len());
            if let Some(e) = entries.get(skip.wrapping_sub(1)).filter(|e| e.index == snapshot_index) {
                assert_eq!(e.term, self.log.snapshot_term(), "leader disagrees with a committed entry");
            }
            if skip < (snapshot_index - prev) as usize {
                let match_index = prev + entries.len() as u64;
                return self.reply_append(from, true, match_index, 0, ConflictHint::default(), read_round);
            }
            entries.drain(..skip);
            prev = snapshot_index;
            prev_term = self.log.snapshot_term();
        }
        if self.log.term(prev) != Some(prev_term) {
            let hint = self.conflict_hint(prev);
            return self.reply_append(from, false, 0, prev, hint, read_round);
        }
        let empty = entries.is_empty();
        let (last_new, first_written) = self.log.merge(prev, entries);
        if let Some(from) = first_written {
            // New entries (and maybe a truncation): the configuration follows the log.
            self.config_log.truncate_from(from);
            self.observe_config_entries(from);
        }
        // Figure 2: "set commitIndex = min(leaderCommit, index of last new entry)".
        self.log.commit_to(ae.leader_commit.min(last_new));
        let (term, round, matched) = self.answered_append;
        let answered = term == self.current_term && read_round <= round && last_new <= matched;
        if empty && answered {
            // A notice of the new commit index: the leader already heard this round and this
            // match from us. Heartbeats open a new round each, so they are always answered
            // (CheckQuorum, ReadIndex and leases count those answers).
            return;
        }
        self.answered_append = if term == self.current_term {
            (term, round.max(read_round), matched.max(last_new))
        } else {
            (self.current_term, read_round, last_new)
        };
        self.reply_append(from, true, last_new, 0, ConflictHint::default(), read_round);
    }

    fn conflict_hint(&self, prev: Index) -> ConflictHint {
        if prev > self.log.last_index() {
            return ConflictHint { conflict_term: None, conflict_index: self.log.last_index() + 1 };
        }
        ConflictHint {
            conflict_term: self.log.term(prev),
            conflict_index: self.log.first_index_of_term_run(prev),
        }
    }

    pub(crate) fn reply_append(
        &mut self,
        to: NodeId,
        success: bool,
        match_index: Index,
        rejected_index: Index,
        hint: ConflictHint,
        read_round: u64,
    ) {
        let body = AppendEntriesResponse { success, match_index, rejected_index, hint, read_round };
        self.send(to, MessageBody::AppendEntriesResponse(body));
    }

    /// Leader side of an AppendEntries (or InstallSnapshot) answer.
    pub(crate) fn handle_append_response(&mut self, from: NodeId, r: AppendEntriesResponse) {
        let stall_limit = 2 * self.config.heartbeat_interval_ticks;
        let snapshot_resend = 2 * self.config.election_timeout_ticks;
        let last_index = self.log.last_index();
        let Some(pr) = self.progress.get_mut(&from) else { return };
        pr.recent_active = true;
        pr.last_response_tick = self.now_ticks;
        pr.read_round_acked = pr.read_round_acked.max(r.read_round);
        if !r.success {
            let next = self.next_from_hint(r.rejected_index, r.hint);
            let pr = self.progress.get_mut(&from).expect("present");
            if pr.reject(r.rejected_index, next) {
                self.send_append(from);
            }
            self.release_confirmed_reads();
            return;
        }
        let advanced = pr.acknowledge(r.match_index);
        let mut resend_snapshot = false;
        match pr.state {
            ProgressState::Probe if advanced => pr.become_replicate(),
            ProgressState::Probe => pr.probe_sent = false,
            ProgressState::Snapshot { pending_index } if pr.match_index >= pending_index => {
                pr.become_replicate()
            }
            ProgressState::Snapshot { .. } if advanced && pr.snapshot_helper.is_some() => {
                // A helper's snapshot may be older than our log's start: continue from what it
                // brought, and if entries are still missing, send our own snapshot next (the
                // helper cannot do better than it just did).
                pr.become_probe();
                pr.next_index = pr.match_index + 1;
                pr.delegations_failed += 1;
            }
            ProgressState::Snapshot { .. } if pr.snapshot_elapsed_ticks >= snapshot_resend => {
                pr.snapshot_elapsed_ticks = 0;
                if pr.snapshot_helper.is_some() {
                    // A delegation that stalled is not tried again for this follower: the
                    // leader sends its own snapshot.
                    pr.delegations_failed += 1;
                    pr.become_probe();
                } else {
                    // Nothing confirmed for a while: resend from the last confirmed byte (the
                    // receiver keeps what it has), like a retransmission timeout.
                    pr.snapshot_sent = pr.snapshot_acked;
                    pr.snapshot_done_sent = false;
                    resend_snapshot = true;
                }
            }
            ProgressState::Replicate
                if !advanced && pr.stalled_ticks >= stall_limit && pr.match_index < last_index =>
            {
                // Nothing acknowledged for two heartbeat intervals although the follower answers:
                // an AppendEntries was lost. Resend from the known match.
                pr.become_probe();
                pr.stalled_ticks = 0;
            }
            _ => {}
        }
        if resend_snapshot {
            self.send_snapshot(from);
        }
        if advanced && self.maybe_commit() {
            self.broadcast_pending = true;
        }
        if self.progress[&from].match_index < self.log.last_index() {
            self.send_append(from);
        }
        let pr = &self.progress[&from];
        let vouched = self.log.term(pr.match_index).is_some();
        if vouched && pr.commit_sent < self.log.commit_index.min(pr.match_index) {
            // Its entries were committed before its answer came (a faster follower made the
            // quorum): tell it now, not at the next heartbeat. A follower applies, and answers
            // the clients whose proposals it forwarded, only once it knows the commit.
            self.send_heartbeat(from);
        }
        if self.lead_transferee.map(|(id, _)| id) == Some(from) {
            self.continue_transfer(from);
        }
        self.release_confirmed_reads();
    }

    /// Fast repair (section 5.3): jump back a whole term per round trip.
    fn next_from_hint(&self, rejected: Index, hint: ConflictHint) -> Index {
        match hint.conflict_term {
            Some(term) => match self.log.last_index_of_term(term, rejected) {
                Some(i) => i + 1,
                None => hint.conflict_index,
            },
            None => hint.conflict_index,
        }
    }

    /// Section 5.4.2 and Figure 8: commit the highest index stored on a quorum, but only if it
    /// holds an entry of the current term; earlier entries commit indirectly with it.
    pub(crate) fn maybe_commit(&mut self) -> bool {
        let me = self.config.id;
        let persisted = self.log.persisted_index;
        let progress = &self.progress;
        let candidate = self.membership.committed_index(|id| {
            if id == me {
                persisted
            } else {
                progress.get(&id).map_or(0, |p| p.match_index)
            }
        });
        if candidate <= self.log.commit_index || self.log.term(candidate) != Some(self.current_term) {
            return false;
        }
        self.log.commit_to(candidate);
        self.release_reads_awaiting_commit();
        true
    }
}
