//! The five safety properties of Raft (paper Figure 3), checked after every simulated event.
//!
//! Each check is incremental so it can run on every step: the checker keeps what the cluster as
//! a whole has revealed (who led which term, which entry has which identity, which entries are
//! committed) and compares each server's new state against it.

use std::collections::BTreeMap;

use balsa_raft::{Entry, EntryKind, Index, NodeId, Raft, Role, Term};

/// A broken safety property.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SafetyViolation {
    /// Which property, in the paper's words.
    pub property: &'static str,
    /// What was seen.
    pub detail: String,
}

fn violation(property: &'static str, detail: String) -> Result<(), SafetyViolation> {
    Err(SafetyViolation { property, detail })
}

/// A fingerprint of an entry's content (FNV-1a), enough to tell two commands apart.
pub fn entry_hash(e: &Entry) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let kind = match e.kind {
        EntryKind::Normal => 1u8,
        EntryKind::Noop => 2u8,
        EntryKind::ConfChange => 3u8,
    };
    for &b in std::iter::once(&kind).chain(e.data.iter()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01B3);
    }
    h
}

/// The leader's log tail as last seen, for Leader Append-Only.
#[derive(Clone, Copy, Debug)]
struct LeaderTail {
    term: Term,
    last_index: Index,
    last_term: Term,
}

/// What the cluster has revealed so far.
#[derive(Debug, Default)]
pub struct SafetyChecker {
    /// Election Safety: the one leader of each term.
    leader_of_term: BTreeMap<Term, NodeId>,
    /// Log Matching: the content and predecessor term of every (index, term) ever written.
    identity: BTreeMap<(Index, Term), (u64, Option<Term>)>,
    /// Entries known committed: index -> (entry term, lowest current term of a server that
    /// revealed the commit). The entry was committed in a term no later than the second, so
    /// every leader of a later term must hold it.
    committed: BTreeMap<Index, (Term, Term)>,
    /// State Machine Safety: the content applied at each index.
    applied: BTreeMap<Index, u64>,
    /// Leader Append-Only: each current leader's tail.
    leader_tail: BTreeMap<NodeId, LeaderTail>,
    /// The commit rule: each current leader's (term, commit index) as last seen.
    leader_commit: BTreeMap<NodeId, (Term, Index)>,
}

impl SafetyChecker {
    /// A server wrote `entries` to its log (Ready.persist). Log Matching (section 5.3): two
    /// entries with the same index and term hold the same command and follow the same history;
    /// by induction the predecessor's term pins the whole prefix.
    pub fn observe_written(
        &mut self,
        node: NodeId,
        raft: &Raft,
        entries: &[Entry],
    ) -> Result<(), SafetyViolation> {
        for e in entries {
            let prev_term = if e.index == 1 { Some(0) } else { raft.term_at(e.index - 1) };
            let seen = (entry_hash(e), prev_term);
            match self.identity.get(&(e.index, e.term)) {
                None => {
                    self.identity.insert((e.index, e.term), seen);
                }
                Some(&(hash, prev)) => {
                    if hash != seen.0 {
                        return violation(
                            "Log Matching",
                            format!(
                                "n{node} wrote ({}, term {}) with different content than another server",
                                e.index, e.term
                            ),
                        );
                    }
                    if let (Some(a), Some(b)) = (prev, prev_term) {
                        if a != b {
                            return violation(
                                "Log Matching",
                                format!(
                                    "n{node}: entry ({}, term {}) follows term {b}, elsewhere term {a}",
                                    e.index, e.term
                                ),
                            );
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// A server applied `entry` to its state machine. State Machine Safety (section 5.4.3): no
    /// two servers apply different commands at the same index.
    pub fn observe_applied(
        &mut self,
        node: NodeId,
        current_term: Term,
        entry: &Entry,
    ) -> Result<(), SafetyViolation> {
        let hash = entry_hash(entry);
        if let Some(&h) = self.applied.get(&entry.index) {
            if h != hash {
                return violation(
                    "State Machine Safety",
                    format!(
                        "n{node} applied a different command at index {} than another server",
                        entry.index
                    ),
                );
            }
        }
        self.applied.insert(entry.index, hash);
        self.note_committed(node, entry.index, entry.term, current_term)
    }

    fn note_committed(
        &mut self,
        node: NodeId,
        index: Index,
        term: Term,
        seen_in: Term,
    ) -> Result<(), SafetyViolation> {
        let slot = self.committed.entry(index).or_insert((term, seen_in));
        if slot.0 != term {
            return violation(
                "State Machine Safety",
                format!(
                    "n{node} has index {index} committed with term {term}, another server with term {}",
                    slot.0
                ),
            );
        }
        slot.1 = slot.1.min(seen_in);
        Ok(())
    }

    /// Checks one server after an event.
    pub fn check_server(&mut self, raft: &Raft) -> Result<(), SafetyViolation> {
        let status = raft.status();
        let id = status.id;
        // Commit facts this server reveals, and agreement with earlier ones.
        let known = self.committed.keys().next_back().copied().unwrap_or(0);
        for index in (known + 1).max(status.snapshot_index + 1)..=status.commit_index {
            let term = raft.term_at(index).expect("committed entries are in the log or the snapshot");
            self.note_committed(id, index, term, status.current_term)?;
        }
        if status.role != Role::Leader {
            self.leader_tail.remove(&id);
            self.leader_commit.remove(&id);
            return Ok(());
        }
        self.check_commit_rule(raft)?;
        let term = status.current_term;
        match self.leader_of_term.get(&term) {
            Some(&other) if other != id => {
                return violation(
                    "Election Safety",
                    format!("n{id} and n{other} both leaders in term {term}"),
                );
            }
            Some(_) => {}
            None => {
                self.leader_of_term.insert(term, id);
                self.check_leader_completeness(raft)?;
            }
        }
        self.check_append_only(raft)
    }

    /// The commit rule (section 5.4.2, Figure 8): a leader moves its commit index only onto an
    /// entry of its own term, by counting replicas; earlier entries commit indirectly with it.
    fn check_commit_rule(&mut self, raft: &Raft) -> Result<(), SafetyViolation> {
        let status = raft.status();
        let (id, term, commit) = (status.id, status.current_term, status.commit_index);
        let previous = self.leader_commit.insert(id, (term, commit));
        let moved = match previous {
            Some((t, c)) if t == term => commit > c,
            _ => false,
        };
        if moved && raft.term_at(commit) != Some(term) {
            return violation(
                "Commit rule (Figure 8)",
                format!(
                    "leader n{id} of term {term} advanced its commit index to {commit}, an entry of term {:?}",
                    raft.term_at(commit)
                ),
            );
        }
        Ok(())
    }

    /// Leader Completeness (section 5.4): a leader's log holds every entry committed in an
    /// earlier term. Checked when the leader is first seen.
    fn check_leader_completeness(&self, raft: &Raft) -> Result<(), SafetyViolation> {
        let status = raft.status();
        for (&index, &(term, seen_in)) in self.committed.range(status.snapshot_index + 1..) {
            if seen_in < status.current_term && raft.term_at(index) != Some(term) {
                return violation(
                    "Leader Completeness",
                    format!(
                        "n{} leads term {} without committed entry {index} (term {term}); it has {:?}",
                        status.id,
                        status.current_term,
                        raft.term_at(index)
                    ),
                );
            }
        }
        Ok(())
    }

    /// Leader Append-Only (Figure 3): within its term a leader never overwrites or deletes.
    fn check_append_only(&mut self, raft: &Raft) -> Result<(), SafetyViolation> {
        let status = raft.status();
        let id = status.id;
        if let Some(tail) = self.leader_tail.get(&id).copied() {
            if tail.term == status.current_term {
                let still_there = tail.last_index <= status.snapshot_index
                    || raft.term_at(tail.last_index) == Some(tail.last_term);
                if status.last_index < tail.last_index || !still_there {
                    return violation(
                        "Leader Append-Only",
                        format!(
                            "leader n{id} of term {} lost its entry ({}, term {}); last index now {}",
                            tail.term, tail.last_index, tail.last_term, status.last_index
                        ),
                    );
                }
            }
        }
        let last_term = raft.term_at(status.last_index).expect("last entry known");
        self.leader_tail
            .insert(id, LeaderTail { term: status.current_term, last_index: status.last_index, last_term });
        Ok(())
    }

    /// Number of distinct leaders elected (for summaries).
    pub fn elections(&self) -> usize {
        self.leader_of_term.len()
    }

    /// Highest index known committed.
    pub fn committed_index(&self) -> Index {
        self.committed.keys().next_back().copied().unwrap_or(0)
    }
}
