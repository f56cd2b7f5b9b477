//! The persistence contract, checked from outside: a shadow of what each server has *synced*, and
//! a check on every message that promises durable state.
//!
//! Paper Figure 2: servers update stable storage before responding to RPCs. So a granted vote
//! may leave only once the vote (or a later term) is synced; a RequestVote only once the
//! candidate's own vote is; an AppendEntries acknowledgement only once the acknowledged entry is
//! synced, with the same term.

use balsa_raft::{HardState, Index, InitialState, Message, MessageBody, PersistBatch, Raft, Term};

/// What one server has synced: hard state, snapshot boundary and the terms of its log entries.
#[derive(Clone, Debug, Default)]
pub struct DurableShadow {
    hard_state: HardState,
    snapshot_index: Index,
    /// `terms[k]` is the term of index `snapshot_index + 1 + k`.
    terms: Vec<Term>,
}

impl DurableShadow {
    /// What a restarted server has on disk.
    pub fn recovered(initial: &InitialState) -> Self {
        let snapshot_index = initial.snapshot.as_ref().map_or(0, |s| s.meta.last_included_index);
        Self {
            hard_state: initial.hard_state,
            snapshot_index,
            terms: initial.entries.iter().map(|e| e.term).collect(),
        }
    }

    /// A batch was synced.
    pub fn synced(&mut self, batch: &PersistBatch) {
        if let Some(s) = &batch.snapshot {
            self.snapshot_index = s.meta.last_included_index;
            self.terms.clear();
        }
        if let Some(hs) = batch.hard_state {
            self.hard_state = hs;
        }
        if let Some(first) = batch.entries.first() {
            let keep = first.index.saturating_sub(self.snapshot_index + 1) as usize;
            self.terms.truncate(keep);
            self.terms.extend(batch.entries.iter().map(|e| e.term));
        }
    }

    /// A snapshot taken locally was saved (the log prefix it covers may be dropped).
    pub fn compacted(&mut self, index: Index) {
        if index > self.snapshot_index {
            let drop = ((index - self.snapshot_index) as usize).min(self.terms.len());
            self.terms.drain(..drop);
            self.snapshot_index = index;
        }
    }

    fn term(&self, index: Index) -> Option<Term> {
        if index <= self.snapshot_index {
            return None;
        }
        self.terms.get((index - self.snapshot_index - 1) as usize).copied()
    }

    /// Whether a vote for `candidate` in `term` is not yet covered by synced state. A synced
    /// term beyond the vote's also keeps the server from voting twice in it: the vote may have
    /// been superseded before its own write was synced.
    fn vote_unsynced(&self, term: Term, candidate: u64) -> bool {
        let hs = self.hard_state;
        hs.current_term < term || (hs.current_term == term && hs.voted_for != Some(candidate))
    }

    /// Checks a message `raft`'s server is about to send. `Err` names the broken promise.
    pub fn check_send(&self, raft: &Raft, m: &Message) -> Result<(), String> {
        let hs = self.hard_state;
        let synced = format!("synced: term {} vote {:?}", hs.current_term, hs.voted_for);
        let broken = match &m.body {
            MessageBody::RequestVoteResponse(r) if r.vote_granted && !r.pre_vote => {
                self.vote_unsynced(m.term, m.to).then(|| {
                    format!(
                        "n{} granted its vote to n{} in term {} before syncing it ({synced})",
                        m.from, m.to, m.term
                    )
                })
            }
            MessageBody::RequestVote(rv) if !rv.pre_vote => self.vote_unsynced(m.term, m.from).then(|| {
                format!(
                    "n{} asked for votes in term {} before syncing its own vote ({synced})",
                    m.from, m.term
                )
            }),
            // Entries at or below a snapshot (even one received after the acknowledgement was
            // made, and not yet synced) are committed and covered by it. Only a leader of a later
            // term can replace acknowledged entries, so while the server is still in the
            // acknowledgement's term the entry it names is the one in its log, and that must be
            // synced with the same term.
            MessageBody::AppendEntriesResponse(r)
                if r.success
                    && r.match_index > self.snapshot_index.max(raft.status().snapshot_index)
                    && raft.current_term() == m.term =>
            {
                let (live, on_disk) = (raft.term_at(r.match_index), self.term(r.match_index));
                (on_disk != live).then(|| {
                    format!(
                        "n{} acknowledged entry {} (term {live:?}) before syncing it (synced term {on_disk:?})",
                        m.from, r.match_index
                    )
                })
            }
            _ => None,
        };
        broken.map_or(Ok(()), Err)
    }
}
