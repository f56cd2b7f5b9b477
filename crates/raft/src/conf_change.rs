//! Membership changes (paper section 6, thesis chapter 4): joint consensus, learners with
//! automatic promotion, and the configuration history that follows the log.
//!
//! Every change of the voter set goes C_old -> C_old,new -> C_new. The leader appends C_old,new;
//! it takes effect on each server when appended; once it commits, the leader appends C_new on its
//! own; once that commits, a leader that is not in C_new hands over and steps down. Changes that
//! leave the voter set alone (adding or removing a learner) take one step.

use std::collections::BTreeSet;

use crate::error::ConfChangeError;
use crate::membership::Membership;
use crate::progress::Progress;
use crate::raft::Raft;
use crate::types::{Entry, EntryKind, Index, NodeId, Role};

/// A requested change of membership.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MembershipChange {
    /// Add a server the safe way: as a learner, promoted to voter by the leader once it has
    /// caught up (thesis 4.2.1).
    AddVoter(NodeId),
    /// Add a server that only receives the log.
    AddLearner(NodeId),
    /// Make a learner a voter now.
    Promote(NodeId),
    /// Remove a voter or a learner.
    Remove(NodeId),
    /// Replace the voter set (several servers at once, or all of them); servers named here that
    /// are learners become voters.
    SetVoters(BTreeSet<NodeId>),
}

/// The configurations the log holds, so that truncating or compacting the log moves the
/// configuration in effect with it.
#[derive(Clone, Debug, Default)]
pub(crate) struct ConfigLog {
    /// The configuration as of the snapshot (or the initial one).
    base: Membership,
    /// Configuration entries after the snapshot: index and configuration, ascending.
    entries: Vec<(Index, Membership)>,
}

impl ConfigLog {
    pub(crate) fn new(base: Membership) -> Self {
        Self { base, entries: Vec::new() }
    }

    /// The configuration in effect: the latest one appended.
    pub(crate) fn current(&self) -> &Membership {
        self.entries.last().map_or(&self.base, |(_, m)| m)
    }

    /// Index of the latest configuration entry (0 if it comes from the snapshot or the start).
    pub(crate) fn latest_index(&self) -> Index {
        self.entries.last().map_or(0, |(i, _)| *i)
    }

    /// The configuration in effect at `index`.
    pub(crate) fn at(&self, index: Index) -> &Membership {
        self.entries.iter().rev().find(|(i, _)| *i <= index).map_or(&self.base, |(_, m)| m)
    }

    pub(crate) fn observe(&mut self, entry: &Entry) {
        if entry.kind == EntryKind::ConfChange {
            let m = Membership::decode(&entry.data)
                .unwrap_or_else(|| panic!("configuration entry {} is malformed", entry.index));
            debug_assert!(self.entries.last().is_none_or(|(i, _)| *i < entry.index));
            self.entries.push((entry.index, m));
        }
    }

    /// The log was cut from `index` on.
    pub(crate) fn truncate_from(&mut self, index: Index) {
        self.entries.retain(|(i, _)| *i < index);
    }

    /// The log prefix up to `index` went into a snapshot.
    pub(crate) fn compact(&mut self, index: Index) {
        self.base = self.at(index).clone();
        self.entries.retain(|(i, _)| *i > index);
    }

    /// The whole log was replaced by a snapshot whose configuration is `base`.
    pub(crate) fn reset(&mut self, base: Membership) {
        self.base = base;
        self.entries.clear();
    }
}

/// The configuration `change` leads to from `m` (learner sets included; the voter set may be
/// unchanged, in which case no joint step is needed).
fn target(m: &Membership, change: &MembershipChange) -> Result<Membership, ConfChangeError> {
    let invalid = |why: String| Err(ConfChangeError::Invalid(why));
    let mut t = Membership {
        voters: m.voters.clone(),
        voters_outgoing: BTreeSet::new(),
        learners: m.learners.clone(),
        promote: m.promote.clone(),
    };
    match change {
        MembershipChange::AddVoter(id) | MembershipChange::AddLearner(id) => {
            if *id == 0 {
                return invalid("node id 0 is reserved".into());
            }
            if m.contains(*id) {
                return invalid(format!("{id} is already a member"));
            }
            t.learners.insert(*id);
            if matches!(change, MembershipChange::AddVoter(_)) {
                t.promote.insert(*id);
            }
        }
        MembershipChange::Promote(id) => {
            if !m.learners.contains(id) {
                return invalid(format!("{id} is not a learner"));
            }
            t.learners.remove(id);
            t.promote.remove(id);
            t.voters.insert(*id);
        }
        MembershipChange::Remove(id) => {
            if !m.contains(*id) {
                return invalid(format!("{id} is not a member"));
            }
            t.voters.remove(id);
            t.learners.remove(id);
            t.promote.remove(id);
        }
        MembershipChange::SetVoters(voters) => {
            if voters.contains(&0) {
                return invalid("node id 0 is reserved".into());
            }
            t.voters = voters.clone();
            t.learners.retain(|id| !voters.contains(id));
            t.promote.retain(|id| !voters.contains(id));
        }
    }
    if t.voters.is_empty() {
        return invalid("a configuration needs at least one voter".into());
    }
    Ok(t)
}

impl Raft {
    /// Proposes a membership change (paper section 6). Returns the index of the configuration
    /// entry appended. One change at a time: the previous one must have committed, the cluster
    /// must have left its joint configuration, and this leader must have committed an entry of
    /// its own term (which rules out the known hazard of changes racing a leader change).
    pub fn change_membership(&mut self, change: MembershipChange) -> Result<Index, ConfChangeError> {
        if self.role != Role::Leader {
            return Err(ConfChangeError::NotLeader { leader_hint: self.leader_id });
        }
        if let Some((to, _)) = self.lead_transferee {
            return Err(ConfChangeError::TransferInProgress { to });
        }
        let settled = self.config_log.latest_index() <= self.log.commit_index
            && !self.membership.is_joint()
            && self.log.term(self.log.commit_index) == Some(self.current_term);
        if !settled {
            return Err(ConfChangeError::InProgress);
        }
        let mut next = target(&self.membership, &change)?;
        if next.voters != self.membership.voters {
            // Joint consensus: C_old,new first.
            next.voters_outgoing = self.membership.voters.clone();
        }
        let index = self.append_config(next);
        self.check_invariants();
        Ok(index)
    }

    /// Whether the last membership change is over: its configuration entry committed and the
    /// cluster out of the joint configuration. Until then a new change is refused.
    pub fn membership_settled(&self) -> bool {
        self.config_log.latest_index() <= self.log.commit_index && !self.membership.is_joint()
    }

    /// The configuration in effect at `index`, for building snapshot metadata.
    pub fn membership_at(&self, index: Index) -> Membership {
        self.config_log.at(index).clone()
    }

    /// Appends a configuration entry at the leader; it takes effect at once.
    pub(crate) fn append_config(&mut self, m: Membership) -> Index {
        self.append_own(EntryKind::ConfChange, m.encode())
    }

    /// Makes the configuration in effect follow the configuration log; on a leader, starts or
    /// stops tracking members accordingly.
    pub(crate) fn sync_membership(&mut self) {
        let current = self.config_log.current();
        if *current == self.membership {
            return;
        }
        self.membership = current.clone();
        if self.role != Role::Leader {
            return;
        }
        let members = self.membership.members();
        let me = self.config.id;
        let next = self.log.last_index() + 1;
        self.progress.retain(|id, _| members.contains(id));
        for id in members {
            if id != me {
                self.progress.entry(id).or_insert_with(|| Progress::new(next));
            }
        }
    }

    /// Leader, after its commit index moved: leave the joint configuration once C_old,new
    /// committed, and step down once a C_new without this leader committed (paper section 6).
    pub(crate) fn advance_configuration(&mut self) {
        if self.role != Role::Leader || self.config_log.latest_index() > self.log.commit_index {
            return;
        }
        if self.membership.is_joint() {
            let mut next = self.membership.clone();
            next.voters_outgoing.clear();
            self.append_config(next);
        } else if !self.membership.is_voter(self.config.id) {
            self.hand_over_and_step_down();
        }
    }

    /// A leader removed from the configuration hands leadership to the most caught-up voter
    /// (so the cluster need not wait an election timeout) and steps down.
    fn hand_over_and_step_down(&mut self) {
        let last = self.log.last_index();
        let successor = self
            .progress
            .iter()
            .filter(|(id, p)| self.membership.is_voter(**id) && p.match_index == last)
            .map(|(id, _)| *id)
            .next();
        if let Some(to) = successor {
            self.lease_revoked = true;
            self.send(to, crate::message::MessageBody::TimeoutNow);
        }
        let term = self.current_term;
        self.become_follower(term, None);
    }

    /// Leader, every tick: promote learners marked for promotion once they have stayed within
    /// `learner_catch_up_lag_entries` of the log for `learner_catch_up_ticks` (thesis 4.2.1).
    pub(crate) fn promote_caught_up_learners(&mut self) {
        let last = self.log.last_index();
        let lag = self.config.learner_catch_up_lag_entries;
        let (now, window) = (self.now_ticks, self.config.election_timeout_ticks);
        let mut ready = None;
        for id in self.membership.promote.clone() {
            let Some(pr) = self.progress.get_mut(&id) else { continue };
            // Caught up means: acknowledged entries, within the lag, and heard from in the
            // current election-timeout window. A learner that never answered (match 0 looks
            // "close" while the log is short) or went silent is not promoted: as a voter it could
            // only cost availability (thesis 4.2.1).
            let heard_lately = pr.last_response_tick > 0 && now - pr.last_response_tick <= window;
            if heard_lately && pr.match_index > 0 && pr.match_index + lag >= last {
                pr.caught_up_ticks += 1;
            } else {
                pr.caught_up_ticks = 0;
            }
            if pr.caught_up_ticks >= self.config.learner_catch_up_ticks && ready.is_none() {
                ready = Some(id);
            }
        }
        if let Some(id) = ready {
            // Refused while another change is in flight; it is retried on a later tick.
            let _ = self.change_membership(MembershipChange::Promote(id));
        }
    }

    /// Configuration entries among freshly appended (or recovered) entries.
    pub(crate) fn observe_config_entries(&mut self, from: Index) {
        let last = self.log.last_index();
        let mut index = from.max(self.log.first_index());
        while index <= last {
            if let Some(e) = self.log.entry(index) {
                if e.kind == EntryKind::ConfChange {
                    let e = e.clone();
                    self.config_log.observe(&e);
                }
            }
            index += 1;
        }
        self.sync_membership();
    }

    /// Bytes of payload applied since the last snapshot; see [`Raft::snapshot_due`].
    pub(crate) fn note_applied_bytes(&mut self, entries: &[Entry]) {
        self.applied_bytes_since_snapshot += entries.iter().map(|e| e.data.len() as u64).sum::<u64>();
    }

    /// Whether the applied log since the last snapshot exceeds either threshold (section 7:
    /// each server snapshots on its own). Returns the index to snapshot at: the last applied.
    pub fn snapshot_due(&self, max_entries: u64, max_bytes: u64) -> Option<Index> {
        let applied = self.log.last_applied;
        let entries = applied.saturating_sub(self.last_snapshot_index());
        let due = entries > 0 && (entries >= max_entries || self.applied_bytes_since_snapshot >= max_bytes);
        due.then_some(applied)
    }

    /// Bytes of payload applied since the last snapshot (what [`Raft::snapshot_due`]'s byte
    /// threshold counts), for drivers that weigh a snapshot's cost against the log it frees.
    pub fn applied_bytes_since_snapshot(&self) -> u64 {
        self.applied_bytes_since_snapshot
    }

    /// The latest snapshot's data, for drivers that stream it to a catching-up peer.
    pub fn latest_snapshot(&self) -> Option<(&crate::types::SnapshotMeta, &crate::types::SnapshotData)> {
        self.snapshot.as_ref().map(|s| (&s.meta, &s.data))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(voters: &[NodeId], learners: &[NodeId]) -> Membership {
        Membership {
            voters: voters.iter().copied().collect(),
            learners: learners.iter().copied().collect(),
            ..Membership::default()
        }
    }

    #[test]
    fn targets_of_each_change() {
        let base = m(&[1, 2, 3], &[4]);
        let t = target(&base, &MembershipChange::AddVoter(5)).unwrap();
        assert!(t.learners.contains(&5) && t.promote.contains(&5) && t.voters == base.voters);
        let t = target(&base, &MembershipChange::Promote(4)).unwrap();
        assert!(t.voters.contains(&4) && !t.learners.contains(&4));
        let t = target(&base, &MembershipChange::Remove(2)).unwrap();
        assert_eq!(t.voters, BTreeSet::from([1, 3]));
        let t = target(&base, &MembershipChange::SetVoters(BTreeSet::from([4, 5, 6]))).unwrap();
        assert_eq!(t.voters, BTreeSet::from([4, 5, 6]));
        assert!(t.learners.is_empty(), "a learner named as voter is promoted");
        assert!(target(&base, &MembershipChange::AddLearner(2)).is_err());
        assert!(target(&base, &MembershipChange::Promote(2)).is_err());
        assert!(target(&base, &MembershipChange::Remove(9)).is_err());
        assert!(target(&base, &MembershipChange::SetVoters(BTreeSet::new())).is_err());
        assert!(target(&m(&[1], &[]), &MembershipChange::Remove(1)).is_err());
    }

    #[test]
    fn the_config_log_follows_truncation_and_compaction() {
        let entry =
            |index, mm: &Membership| Entry { term: 1, index, kind: EntryKind::ConfChange, data: mm.encode() };
        let a = m(&[1, 2, 3], &[]);
        let b = m(&[1, 2, 3], &[4]);
        let c = m(&[1, 2, 3, 4], &[]);
        let mut log = ConfigLog::new(a.clone());
        log.observe(&entry(5, &b));
        log.observe(&entry(9, &c));
        assert_eq!(log.current(), &c);
        assert_eq!(log.at(7), &b);
        log.truncate_from(9);
        assert_eq!(log.current(), &b, "a truncated configuration entry no longer applies");
        log.compact(6);
        assert_eq!(log.current(), &b);
        assert_eq!(log.latest_index(), 0);
        log.reset(a.clone());
        assert_eq!(log.current(), &a);
    }
}
