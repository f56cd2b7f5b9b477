//! The Raft state machine: roles, timers, message dispatch and the Ready/advance cycle.
//! Election, replication and reads live in their own files as further `impl Raft` blocks.

use std::collections::BTreeMap;

use bytes::Bytes;

use crate::conf_change::ConfigLog;
use crate::config::{Config, ConfigError};
use crate::error::{ProposeError, ReadIndexError, SnapshotError, StepError, TransferError};
use crate::log::RaftLog;
use crate::membership::Membership;
use crate::message::{AppendEntriesResponse, ConflictHint, Message, MessageBody, RequestVoteResponse};
use crate::progress::Progress;
use crate::read_index::ReadIndexState;
use crate::ready::{Durable, GatedMessages, PersistBatch, ReadState, Ready};
use crate::rng::SplitMix64;
use crate::types::{
    Entry, EntryKind, HardState, Index, NodeId, Role, Snapshot, SnapshotData, SnapshotMeta, SoftState, Term,
};

/// What a server recovered from its disk at start-up.
#[derive(Clone, Debug, Default)]
pub struct InitialState {
    /// Term, vote and commit index as last persisted.
    pub hard_state: HardState,
    /// The latest snapshot. Its data is a handle ([`crate::SnapshotData`]): the core reads from
    /// it only to send chunks to followers that need it; a driver passes its file.
    pub snapshot: Option<Snapshot>,
    /// Durable entries after the snapshot, contiguous.
    pub entries: Vec<Entry>,
    /// Highest index already reflected in the driver's state machine (at least the snapshot's).
    pub applied_index: Index,
    /// The configuration to use when neither the snapshot nor the log records one: the initial
    /// cluster.
    pub membership: Membership,
}

/// A read-only view of a server's state, for tests, metrics and the simulator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// This server.
    pub id: NodeId,
    /// Current role.
    pub role: Role,
    /// Current term.
    pub current_term: Term,
    /// Vote in the current term.
    pub voted_for: Option<NodeId>,
    /// Known leader.
    pub leader_id: Option<NodeId>,
    /// Commit index.
    pub commit_index: Index,
    /// Last index handed out to apply.
    pub last_applied: Index,
    /// Last log index.
    pub last_index: Index,
    /// Durable prefix of the log.
    pub persisted_index: Index,
    /// Index of the last compacted entry.
    pub snapshot_index: Index,
}

/// Kinds of campaign (thesis 9.6 and 3.10).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Campaign {
    PreVote,
    Election,
    Transfer,
}

/// One Raft server as a deterministic state machine. Feed it ticks, messages and requests; take
/// its [`Ready`]; carry that out; call [`Raft::advance`]. It never does I/O and never reads a
/// clock, so the same inputs always give the same outputs.
pub struct Raft {
    /// Settings, fixed at start.
    pub(crate) config: Config,
    /// Election-timeout randomness, from `config.seed`.
    pub(crate) rng: SplitMix64,
    /// Latest term seen (persistent).
    pub(crate) current_term: Term,
    /// Vote in `current_term` (persistent).
    pub(crate) voted_for: Option<NodeId>,
    /// The log and its commit/apply/durability positions.
    pub(crate) log: RaftLog,
    /// The configuration in effect: the latest one in the log (a copy of `config_log.current()`).
    pub(crate) membership: Membership,
    /// The configurations the log holds, so truncation and compaction move the one in effect.
    pub(crate) config_log: ConfigLog,
    /// Payload bytes applied since the last snapshot, for the compaction policy.
    pub(crate) applied_bytes_since_snapshot: u64,
    /// The latest snapshot, kept to send to followers that need compacted entries.
    pub(crate) snapshot: Option<Snapshot>,
    /// A snapshot received from the leader that the driver has not been handed yet.
    pub(crate) snapshot_to_install: Option<Snapshot>,
    /// A snapshot being received chunk by chunk.
    pub(crate) incoming_snapshot: Option<crate::snapshot::IncomingSnapshot>,
    /// Snapshots this follower streams to catching-up servers on the leader's behalf.
    pub(crate) helper_streams: crate::snapshot::HelperStreams,
    /// Reads of the snapshot's data that failed while building chunks (each retried later).
    pub(crate) snapshot_read_errors: u64,
    /// Current role.
    pub(crate) role: Role,
    /// The leader this server follows.
    pub(crate) leader_id: Option<NodeId>,
    /// Ticks since the last reset of the election timer (leaders: since the last CheckQuorum).
    pub(crate) election_elapsed_ticks: u64,
    /// Ticks since the last heartbeat broadcast (leaders only).
    pub(crate) heartbeat_elapsed_ticks: u64,
    /// This term's election timeout, drawn from `[T, 2T)` (section 5.2).
    pub(crate) randomized_election_timeout_ticks: u64,
    /// Ticks since a leader last showed it was alive. Starts at 0 at boot, so a freshly restarted
    /// server also waits a full election timeout before helping to depose a leader (lazy voter).
    pub(crate) leader_contact_elapsed_ticks: u64,
    /// Ticks since start; the lease clock.
    pub(crate) now_ticks: u64,
    /// Votes (or pre-votes) received in the current campaign.
    pub(crate) votes: BTreeMap<NodeId, bool>,
    /// Leaders only: replication state of every other member.
    pub(crate) progress: BTreeMap<NodeId, Progress>,
    /// Leaders only: the successor a transfer is under way to, and ticks since it started.
    pub(crate) lead_transferee: Option<(NodeId, u64)>,
    /// Leaders only: a TimeoutNow went out this term, so voters may ignore our lease.
    pub(crate) lease_revoked: bool,
    /// Leaders only: new entries wait to be sent.
    pub(crate) broadcast_pending: bool,
    /// Leaders only: the commit index last announced to followers.
    pub(crate) commit_broadcast: Index,
    /// ReadIndex bookkeeping.
    pub(crate) reads: ReadIndexState,
    /// Followers only: the term, highest read round and highest match this server answered an
    /// AppendEntries with. An empty one that would answer nothing newer (a leader's notice of a
    /// new commit index) goes unanswered: the answer would tell the leader nothing.
    pub(crate) answered_append: (Term, u64, Index),
    /// Outgoing messages collected since the last Ready.
    pub(crate) outbox: Vec<Message>,
    /// Read outcomes collected since the last Ready.
    pub(crate) read_states: Vec<ReadState>,
    /// The soft state last reported.
    pub(crate) reported_soft: SoftState,
    /// The hard state last handed out for persisting.
    pub(crate) reported_hard: HardState,
    /// Id of the Ready handed out and not yet advanced.
    pub(crate) outstanding_ready: Option<u64>,
    /// Id for the next Ready.
    pub(crate) next_ready_id: u64,
}

impl Raft {
    /// Starts a server from what it recovered from disk.
    pub fn new(config: Config, initial: InitialState) -> Result<Self, ConfigError> {
        config.validate()?;
        let (snapshot_index, snapshot_term, membership) = match &initial.snapshot {
            Some(s) => (s.meta.last_included_index, s.meta.last_included_term, s.meta.membership.clone()),
            None => (0, 0, initial.membership.clone()),
        };
        let hs = initial.hard_state;
        let applied = initial.applied_index.max(snapshot_index);
        let log =
            RaftLog::recovered(snapshot_index, snapshot_term, initial.entries, hs.commit_index, applied);
        let soft = SoftState { role: Role::Follower, leader_id: None, term: hs.current_term };
        let mut raft = Self {
            rng: SplitMix64::new(config.seed ^ config.id.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
            config,
            current_term: hs.current_term,
            voted_for: hs.voted_for,
            log,
            config_log: ConfigLog::new(membership.clone()),
            membership,
            applied_bytes_since_snapshot: 0,
            snapshot: initial.snapshot,
            snapshot_to_install: None,
            snapshot_read_errors: 0,
            incoming_snapshot: None,
            helper_streams: Default::default(),
            role: Role::Follower,
            leader_id: None,
            election_elapsed_ticks: 0,
            heartbeat_elapsed_ticks: 0,
            randomized_election_timeout_ticks: 0,
            leader_contact_elapsed_ticks: 0,
            now_ticks: 0,
            votes: BTreeMap::new(),
            progress: BTreeMap::new(),
            lead_transferee: None,
            lease_revoked: false,
            broadcast_pending: false,
            commit_broadcast: 0,
            answered_append: (0, 0, 0),
            reads: ReadIndexState::default(),
            outbox: Vec::new(),
            read_states: Vec::new(),
            reported_soft: soft,
            reported_hard: hs,
            outstanding_ready: None,
            next_ready_id: 1,
        };
        raft.reset_timers();
        raft.observe_config_entries(0);
        raft.check_invariants();
        Ok(raft)
    }

    // ----- inputs -------------------------------------------------------------------------

    /// Advances logical time by one tick.
    pub fn tick(&mut self) {
        self.now_ticks += 1;
        self.leader_contact_elapsed_ticks = self.leader_contact_elapsed_ticks.saturating_add(1);
        if self.role == Role::Leader {
            self.tick_leader();
        } else {
            self.tick_election();
        }
        self.check_invariants();
    }

    /// Delivers a message from a peer.
    pub fn step(&mut self, m: Message) -> Result<(), StepError> {
        if m.to != self.config.id {
            return Err(StepError::WrongRecipient { to: m.to, me: self.config.id });
        }
        if m.from == 0 || m.from == self.config.id {
            return Err(StepError::InvalidSender { from: m.from });
        }
        if self.step_term(&m) {
            self.dispatch(m);
        }
        self.check_invariants();
        Ok(())
    }

    /// Appends a client command, if this server is the leader. Returns its log index; the
    /// command is committed once that index is applied with this term.
    pub fn propose(&mut self, data: Bytes) -> Result<Index, ProposeError> {
        self.check_can_propose()?;
        let index = self.append_own(EntryKind::Normal, data);
        self.check_invariants();
        Ok(index)
    }

    /// Appends several commands at once; returns the index the first one got (for an empty
    /// batch, the index the next command will get: nothing is appended).
    pub fn propose_batch(&mut self, batch: impl IntoIterator<Item = Bytes>) -> Result<Index, ProposeError> {
        self.check_can_propose()?;
        let first = self.log.last_index() + 1;
        for data in batch {
            self.append_own(EntryKind::Normal, data);
        }
        self.check_invariants();
        Ok(first)
    }

    /// Proposes a command from any server (etcd's behaviour): the leader appends it, a follower
    /// forwards it to the leader it knows. Nothing reports the index: the caller recognises its
    /// command when it is applied (by an id it put in the command). Fails only when no leader is
    /// known, or leadership is being transferred.
    pub fn propose_anywhere(&mut self, data: Bytes) -> Result<(), ProposeError> {
        match self.role {
            Role::Leader => self.propose(data).map(|_| ()),
            _ => match self.leader_id {
                Some(leader) => {
                    self.forward(leader, data);
                    Ok(())
                }
                None => Err(ProposeError::NotLeader { leader_hint: None }),
            },
        }
    }

    /// Sends a command on to the leader. Commands forwarded before the next Ready travel in one
    /// Propose (up to `max_msg_bytes`), in the order they were proposed, so the leader steps one
    /// message for them, not one each, as it appends its own clients' commands together.
    fn forward(&mut self, leader: NodeId, data: Bytes) {
        let term = self.current_term;
        let limit = self.config.max_msg_bytes;
        let last_propose = self.outbox.iter_mut().rev().find(|m| matches!(m.body, MessageBody::Propose(_)));
        let joinable =
            last_propose.filter(|m| m.to == leader && m.term == term && m.size_bytes() + data.len() <= limit);
        match joinable.map(|m| &mut m.body) {
            Some(MessageBody::Propose(p)) => p.commands.push(data),
            _ => self.send(leader, MessageBody::Propose(crate::message::Propose { commands: vec![data] })),
        }
    }

    /// Asks for a linearizable read point (thesis 6.4). The outcome arrives as a [`ReadState`]
    /// carrying `context`. A follower forwards the request to its leader.
    pub fn read_index(&mut self, context: Bytes) -> Result<(), ReadIndexError> {
        match self.role {
            Role::Leader => self.leader_read(context, None),
            _ => match self.leader_id {
                Some(leader) => {
                    self.send(leader, MessageBody::ReadIndex(crate::message::ReadIndexRequest { context }))
                }
                None => return Err(ReadIndexError::NotLeader { leader_hint: None }),
            },
        }
        self.check_invariants();
        Ok(())
    }

    /// Starts handing leadership to `to` (thesis 3.10): proposals stop, `to` is brought up to
    /// date and told to campaign at once. Abandoned after an election timeout.
    pub fn transfer_leader(&mut self, to: NodeId) -> Result<(), TransferError> {
        if self.role != Role::Leader {
            return Err(TransferError::NotLeader { leader_hint: self.leader_id });
        }
        if to == self.config.id {
            return Ok(());
        }
        if !self.membership.is_voter(to) {
            return Err(TransferError::NotVoter { id: to });
        }
        if self.lead_transferee.map(|(id, _)| id) != Some(to) {
            self.lead_transferee = Some((to, 0));
            self.continue_transfer(to);
        }
        self.check_invariants();
        Ok(())
    }

    /// The transport could not reach `peer`: stop streaming optimistically to it.
    pub fn report_unreachable(&mut self, peer: NodeId) {
        if let Some(pr) = self.progress.get_mut(&peer) {
            if pr.state == crate::progress::ProgressState::Replicate {
                pr.become_probe();
            }
        }
    }

    /// The transport finished (or failed) sending a snapshot to `peer`.
    pub fn report_snapshot(&mut self, peer: NodeId, delivered: bool) {
        if let Some(pr) = self.progress.get_mut(&peer) {
            if let crate::progress::ProgressState::Snapshot { .. } = pr.state {
                pr.become_probe();
                // After a failure, wait for the next heartbeat answer before trying again.
                pr.probe_sent = !delivered;
            }
        }
    }

    /// The driver folded the state machine up to `snapshot.meta.last_included_index` into a
    /// snapshot: drop the log prefix it covers (section 7) and keep the snapshot to send.
    pub fn snapshot_taken(&mut self, snapshot: Snapshot) -> Result<(), SnapshotError> {
        let index = snapshot.meta.last_included_index;
        if index > self.log.last_applied {
            return Err(SnapshotError::NotApplied { index, applied: self.log.last_applied });
        }
        if index <= self.last_snapshot_index() {
            return Err(SnapshotError::Stale { index, current: self.last_snapshot_index() });
        }
        if snapshot.meta.membership != *self.config_log.at(index) {
            return Err(SnapshotError::MembershipMismatch { index });
        }
        if self.log.term(index) != Some(snapshot.meta.last_included_term) {
            return Err(SnapshotError::TermMismatch { index, term: snapshot.meta.last_included_term });
        }
        // Keep a tail of entries before the snapshot point (etcd's "snapshot catch-up entries"):
        // a server restored from a slightly older snapshot, e.g. one a follower served, then
        // continues from the log instead of needing the leader's whole snapshot.
        let point =
            index.saturating_sub(self.config.snapshot_catch_up_entries).max(self.log.snapshot_index());
        if point > self.log.snapshot_index() {
            self.log.compact(point);
            self.config_log.compact(point);
        }
        self.applied_bytes_since_snapshot = (index + 1..=self.log.last_applied)
            .filter_map(|i| self.log.entry(i))
            .map(|e| e.data.len() as u64)
            .sum();
        self.snapshot = Some(snapshot);
        self.check_invariants();
        Ok(())
    }

    /// The driver stored the current snapshot (the one `meta` describes) and offers `data`, a
    /// handle on the stored copy — typically its file — to read chunks from instead of the one
    /// the core holds now (a snapshot received from the leader is assembled in memory). Returns
    /// whether it was taken: `false` if the core's snapshot is another one or the lengths differ.
    pub fn replace_snapshot_data(&mut self, meta: &SnapshotMeta, data: SnapshotData) -> bool {
        let Some(s) = self.snapshot.as_mut().filter(|s| s.meta == *meta && s.data.len() == data.len()) else {
            return false;
        };
        s.data = data.clone();
        for stream in self.helper_streams.values_mut() {
            stream.replace_data(meta, &data);
        }
        true
    }

    /// Reads of the snapshot's data that failed while building InstallSnapshot chunks. Each
    /// failure skips that round of the transfer, which is retried by its resend timeout.
    pub fn snapshot_read_errors(&self) -> u64 {
        self.snapshot_read_errors
    }

    /// Index of the latest snapshot (the log may keep entries before it).
    pub(crate) fn last_snapshot_index(&self) -> Index {
        self.snapshot.as_ref().map_or(self.log.snapshot_index(), |s| s.meta.last_included_index)
    }

    // ----- outputs ------------------------------------------------------------------------

    /// Whether [`Raft::ready`] has anything to hand out.
    pub fn has_ready(&self) -> bool {
        if self.outstanding_ready.is_some() {
            return false;
        }
        !self.outbox.is_empty()
            || !self.read_states.is_empty()
            || self.broadcast_pending
            || self.reads.broadcast_pending
            || self.snapshot_to_install.is_some()
            || self.soft_state() != self.reported_soft
            || self.hard_state() != self.reported_hard
            || self.log.unstable_from <= self.log.last_index()
            || self.log.commit_index.min(self.log.persisted_index) > self.log.last_applied
    }

    /// Collects everything the driver must do now. Call [`Raft::advance`] before the next Ready.
    pub fn ready(&mut self) -> Ready {
        assert!(self.outstanding_ready.is_none(), "ready() called before advance()");
        self.advance_configuration();
        if self.role == Role::Leader {
            self.flush_broadcasts();
        }
        let ready_id = self.next_ready_id;
        self.next_ready_id += 1;
        self.outstanding_ready = Some(ready_id);

        let soft = self.soft_state();
        let soft_state = (soft != self.reported_soft).then(|| {
            self.reported_soft = soft;
            soft
        });
        let hard = self.hard_state();
        let before = self.reported_hard;
        let promise_changed = hard.current_term != before.current_term || hard.voted_for != before.voted_for;
        let hard_state = (hard != before).then(|| {
            self.reported_hard = hard;
            hard
        });
        let snapshot = self.snapshot_to_install.take();
        let entries = self.log.unstable_entries();
        let must_sync = promise_changed || snapshot.is_some() || !entries.is_empty();
        self.log.unstable_from = self.log.last_index() + 1;
        let committed_entries = if snapshot.is_some() { Vec::new() } else { self.log.entries_to_apply() };
        if let Some(last) = committed_entries.last() {
            self.log.last_applied = last.index;
        }
        self.note_applied_bytes(&committed_entries);
        let (gated, messages): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.outbox).into_iter().partition(Message::requires_durability);
        let ready = Ready {
            soft_state,
            messages,
            persist: PersistBatch {
                ready_id,
                last_entry: entries.last().map(|e| (e.index, e.term)),
                hard_state,
                snapshot,
                entries,
                must_sync,
            },
            gated_messages: GatedMessages { ready_id, messages: gated },
            committed_entries,
            read_states: std::mem::take(&mut self.read_states),
        };
        self.check_invariants();
        ready
    }

    /// The driver carried out the Ready whose batch `receipt` vouches for.
    pub fn advance(&mut self, receipt: Durable) {
        assert_eq!(
            self.outstanding_ready,
            Some(receipt.ready_id),
            "advance with a receipt from another Ready"
        );
        self.outstanding_ready = None;
        if let Some((index, term)) = receipt.last_entry {
            self.log.mark_persisted(index, term);
        }
        if self.role == Role::Leader && self.maybe_commit() {
            self.broadcast_pending = true;
        }
        self.check_invariants();
    }

    // ----- read-only accessors -------------------------------------------------------------

    /// A summary of this server's state.
    pub fn status(&self) -> Status {
        Status {
            id: self.config.id,
            role: self.role,
            current_term: self.current_term,
            voted_for: self.voted_for,
            leader_id: self.leader_id,
            commit_index: self.log.commit_index,
            last_applied: self.log.last_applied,
            last_index: self.log.last_index(),
            persisted_index: self.log.persisted_index,
            snapshot_index: self.log.snapshot_index(),
        }
    }

    /// This server's id.
    pub fn id(&self) -> NodeId {
        self.config.id
    }

    /// Current role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Current term.
    pub fn current_term(&self) -> Term {
        self.current_term
    }

    /// The leader this server follows, if known.
    pub fn leader_id(&self) -> Option<NodeId> {
        self.leader_id
    }

    /// The configuration in effect.
    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    /// The entry at `index`, if still in the log (not compacted).
    pub fn entry(&self, index: Index) -> Option<&Entry> {
        self.log.entry(index)
    }

    /// The term at `index`, if known.
    pub fn term_at(&self, index: Index) -> Option<Term> {
        self.log.term(index)
    }

    /// The replication progress of `peer`, on a leader.
    pub fn progress(&self, peer: NodeId) -> Option<&Progress> {
        self.progress.get(&peer)
    }

    // ----- role transitions -----------------------------------------------------------------

    pub(crate) fn soft_state(&self) -> SoftState {
        SoftState { role: self.role, leader_id: self.leader_id, term: self.current_term }
    }

    pub(crate) fn hard_state(&self) -> HardState {
        HardState {
            current_term: self.current_term,
            voted_for: self.voted_for,
            commit_index: self.log.commit_index,
        }
    }

    pub(crate) fn reset_timers(&mut self) {
        self.election_elapsed_ticks = 0;
        self.heartbeat_elapsed_ticks = 0;
        let t = self.config.election_timeout_ticks;
        self.randomized_election_timeout_ticks = self.rng.range(t, 2 * t);
    }

    /// Becomes a follower in `term` (higher or equal to the current one), following `leader`.
    pub(crate) fn become_follower(&mut self, term: Term, leader: Option<NodeId>) {
        assert!(term >= self.current_term, "terms never go backwards");
        if self.role == Role::Leader {
            self.fail_pending_reads();
        }
        if term > self.current_term {
            self.current_term = term;
            self.voted_for = None;
        }
        self.role = Role::Follower;
        self.leader_id = leader;
        self.leave_leadership();
        self.reset_timers();
    }

    pub(crate) fn leave_leadership(&mut self) {
        self.progress.clear();
        self.helper_streams.clear();
        self.votes.clear();
        self.lead_transferee = None;
        self.lease_revoked = false;
        self.broadcast_pending = false;
        self.reads.reset();
    }

    /// Section 5.2: the winner of an election becomes leader; section 5.4.2 / thesis 3.6.2: it
    /// appends a no-op so that entries of earlier terms get committed by the Figure 8 rule.
    pub(crate) fn become_leader(&mut self) {
        assert_eq!(self.role, Role::Candidate);
        assert_eq!(self.voted_for, Some(self.config.id), "a leader voted for itself");
        self.role = Role::Leader;
        self.leader_id = Some(self.config.id);
        self.leave_leadership();
        self.reset_timers();
        let next = self.log.last_index() + 1;
        for id in self.membership.members() {
            if id != self.config.id {
                self.progress.insert(id, Progress::new(next));
            }
        }
        self.append_own(EntryKind::Noop, Bytes::new());
    }

    fn check_can_propose(&self) -> Result<(), ProposeError> {
        if self.role != Role::Leader {
            return Err(ProposeError::NotLeader { leader_hint: self.leader_id });
        }
        if let Some((to, _)) = self.lead_transferee {
            return Err(ProposeError::TransferInProgress { to });
        }
        Ok(())
    }

    pub(crate) fn append_own(&mut self, kind: EntryKind, data: Bytes) -> Index {
        let index = self.log.last_index() + 1;
        let entry = Entry { term: self.current_term, index, kind, data };
        let is_config = kind == EntryKind::ConfChange;
        if is_config {
            // Paper section 6: a configuration takes effect as soon as it is appended.
            self.config_log.observe(&entry);
        }
        self.log.append(entry);
        if is_config {
            self.sync_membership();
        }
        self.broadcast_pending = true;
        index
    }

    // ----- timers ---------------------------------------------------------------------------

    fn tick_election(&mut self) {
        if !self.helper_streams.is_empty() {
            self.tick_helper_streams();
        }
        self.election_elapsed_ticks += 1;
        if self.election_elapsed_ticks >= self.randomized_election_timeout_ticks {
            self.election_elapsed_ticks = 0;
            if self.membership.is_voter(self.config.id) {
                let kind = if self.config.pre_vote { Campaign::PreVote } else { Campaign::Election };
                self.campaign(kind);
            }
        }
    }

    fn tick_leader(&mut self) {
        self.heartbeat_elapsed_ticks += 1;
        self.election_elapsed_ticks += 1;
        for pr in self.progress.values_mut() {
            pr.snapshot_elapsed_ticks += 1;
            pr.stalled_ticks += 1;
        }
        if let Some((to, elapsed)) = self.lead_transferee {
            if elapsed + 1 >= self.config.election_timeout_ticks {
                self.lead_transferee = None;
            } else {
                self.lead_transferee = Some((to, elapsed + 1));
            }
        }
        if self.election_elapsed_ticks >= self.config.election_timeout_ticks {
            self.election_elapsed_ticks = 0;
            if self.config.check_quorum && !self.quorum_recently_active() {
                // Thesis 6.2: a leader that cannot reach a quorum steps down, so clients find
                // the real leader instead of waiting on one that can never commit.
                let term = self.current_term;
                self.become_follower(term, None);
                return;
            }
            for pr in self.progress.values_mut() {
                pr.recent_active = false;
            }
        }
        if self.heartbeat_elapsed_ticks >= self.config.heartbeat_interval_ticks {
            self.heartbeat_elapsed_ticks = 0;
            self.broadcast_heartbeat();
        }
        if !self.membership.promote.is_empty() {
            self.promote_caught_up_learners();
        }
    }

    fn quorum_recently_active(&self) -> bool {
        let me = self.config.id;
        self.membership.has_quorum(|id| id == me || self.progress.get(&id).is_some_and(|p| p.recent_active))
    }

    /// Whether this server believes a leader is alive, and so ignores vote requests (thesis
    /// 4.2.3: "if a server receives a RequestVote within the minimum election timeout of hearing
    /// from a current leader, it does not update its term or grant its vote").
    pub(crate) fn in_lease(&self) -> bool {
        self.role == Role::Leader || self.leader_contact_elapsed_ticks < self.config.election_timeout_ticks
    }

    // ----- message dispatch ---------------------------------------------------------------

    /// Applies the term rules of Figure 2 and thesis 9.6 / 4.2.3. Returns whether the message
    /// should be handled further.
    fn step_term(&mut self, m: &Message) -> bool {
        if m.term > self.current_term {
            match &m.body {
                MessageBody::RequestVote(rv) => {
                    if self.config.check_quorum && !rv.leadership_transfer && self.in_lease() {
                        return false;
                    }
                    if !rv.pre_vote {
                        self.become_follower(m.term, None);
                    }
                }
                MessageBody::RequestVoteResponse(r) if r.pre_vote && r.vote_granted => {}
                MessageBody::AppendEntries(_) | MessageBody::TimeoutNow => {
                    self.become_follower(m.term, Some(m.from))
                }
                MessageBody::InstallSnapshot(s) => self.become_follower(m.term, Some(s.leader)),
                _ => self.become_follower(m.term, None),
            }
            return true;
        }
        if m.term < self.current_term {
            self.answer_stale(m);
            return false;
        }
        true
    }

    /// A message from an older term. A stale leader is told the newer term so it steps down; a
    /// stale pre-candidate is refused so it stops waiting. Everything else is dropped.
    fn answer_stale(&mut self, m: &Message) {
        match &m.body {
            MessageBody::AppendEntries(_) | MessageBody::InstallSnapshot(_) => {
                let hint = ConflictHint::default();
                let body = AppendEntriesResponse {
                    success: false,
                    match_index: 0,
                    rejected_index: 0,
                    hint,
                    read_round: 0,
                };
                self.send(m.from, MessageBody::AppendEntriesResponse(body));
            }
            MessageBody::RequestVote(rv) if rv.pre_vote => {
                let body = RequestVoteResponse { pre_vote: true, vote_granted: false };
                self.send(m.from, MessageBody::RequestVoteResponse(body));
            }
            MessageBody::ReadIndex(req) => {
                // Refuse rather than drop, so the follower's client retries at once instead of
                // waiting for a timeout; our newer term tells it its leader is gone.
                let body =
                    crate::message::ReadIndexResponse { context: req.context.clone(), read_index: None };
                self.send(m.from, MessageBody::ReadIndexResponse(body));
            }
            _ => {}
        }
    }

    fn dispatch(&mut self, m: Message) {
        let (from, term) = (m.from, m.term);
        match m.body {
            MessageBody::RequestVote(rv) => self.handle_request_vote(from, term, rv),
            MessageBody::RequestVoteResponse(r) => self.handle_vote_response(from, term, r),
            MessageBody::AppendEntries(ae) => {
                self.accept_leader(from);
                self.handle_append_entries(from, ae);
            }
            MessageBody::AppendEntriesResponse(r) => {
                if self.role == Role::Leader {
                    self.handle_append_response(from, r);
                }
            }
            MessageBody::InstallSnapshot(s) => {
                self.accept_leader(s.leader);
                self.handle_snapshot_chunk(from, s);
            }
            MessageBody::InstallSnapshotResponse(r) => self.handle_snapshot_response(from, r),
            MessageBody::CatchUp(req) => self.handle_catch_up(from, req),
            MessageBody::Propose(p) => {
                // Forwarded commands: appended only by a leader that accepts proposals.
                if self.check_can_propose().is_ok() && !p.commands.is_empty() {
                    let _ = self.propose_batch(p.commands);
                }
            }
            MessageBody::TimeoutNow => {
                if self.role != Role::Leader && self.membership.is_voter(self.config.id) {
                    self.campaign(Campaign::Transfer);
                }
            }
            MessageBody::ReadIndex(req) => self.handle_forwarded_read(from, req.context),
            MessageBody::ReadIndexResponse(r) => {
                let result = r.read_index.ok_or(ReadIndexError::NotLeader { leader_hint: self.leader_id });
                self.read_states.push(ReadState { context: r.context, result });
            }
        }
    }

    /// A message only the leader of the current term sends arrived: follow that leader.
    fn accept_leader(&mut self, from: NodeId) {
        assert!(
            self.role != Role::Leader,
            "Election Safety violated: {} and {from} both lead term {}",
            self.config.id,
            self.current_term
        );
        if self.role != Role::Follower || self.leader_id != Some(from) {
            self.become_follower(self.current_term, Some(from));
        }
        self.election_elapsed_ticks = 0;
        self.leader_contact_elapsed_ticks = 0;
    }

    /// Queues a message in the current term.
    pub(crate) fn send(&mut self, to: NodeId, body: MessageBody) {
        self.send_with_term(to, self.current_term, body);
    }

    pub(crate) fn send_with_term(&mut self, to: NodeId, term: Term, body: MessageBody) {
        self.outbox.push(Message { from: self.config.id, to, term, body });
    }

    // ----- invariants -----------------------------------------------------------------------

    /// Checked after every input; a failure is a bug in the core, never bad input.
    pub(crate) fn check_invariants(&self) {
        self.log.check_invariants();
        assert!(self.log.last_term() <= self.current_term, "log holds a term from the future");
        match self.role {
            Role::Leader => {
                assert_eq!(self.leader_id, Some(self.config.id));
                assert_eq!(self.voted_for, Some(self.config.id));
                for (id, pr) in &self.progress {
                    assert!(pr.match_index < pr.next_index, "progress of {id}: match >= next");
                    assert!(pr.match_index <= self.log.last_index(), "progress of {id}: match beyond log");
                }
            }
            Role::Candidate => {
                assert_eq!(self.voted_for, Some(self.config.id));
                assert!(self.progress.is_empty());
            }
            Role::Follower | Role::PreCandidate => {
                assert!(self.progress.is_empty(), "only leaders track progress");
                assert!(self.lead_transferee.is_none());
            }
        }
    }
}
