//! The core's view of the replicated log: a compacted prefix (described by the last snapshot), the
//! entries after it, and how far they have been committed, made durable and handed out to apply.

use balsa_chunked::ChunkedDeque;

use crate::types::{Entry, Index, Term};

/// The log as the core sees it. The driver keeps the durable copy; this copy tells the driver,
/// through `Ready`, which suffix to write and which prefix to apply.
#[derive(Debug)]
pub(crate) struct RaftLog {
    /// Index of the last entry folded into the latest snapshot (0 if none).
    snapshot_index: Index,
    /// Term of that entry, for the consistency check at the snapshot boundary.
    snapshot_term: Term,
    /// Entries after the snapshot: `entries[i].index == snapshot_index + 1 + i`. In chunks, so
    /// that a log of millions of entries grows without copying itself (`balsa-chunked`).
    entries: ChunkedDeque<Entry>,
    /// Highest index known committed (paper Figure 2, commitIndex).
    pub(crate) commit_index: Index,
    /// Highest index handed to the driver to apply (paper Figure 2, lastApplied).
    pub(crate) last_applied: Index,
    /// Every entry up to here is durable on this server's disk.
    pub(crate) persisted_index: Index,
    /// First index not yet handed to the driver for writing.
    pub(crate) unstable_from: Index,
}

impl RaftLog {
    /// A log recovered from durable state: nothing in it is unstable.
    pub(crate) fn recovered(
        snapshot_index: Index,
        snapshot_term: Term,
        entries: Vec<Entry>,
        commit_index: Index,
        last_applied: Index,
    ) -> Self {
        for (offset, e) in entries.iter().enumerate() {
            assert_eq!(e.index, snapshot_index + 1 + offset as u64, "recovered log has a gap");
        }
        let last = snapshot_index + entries.len() as u64;
        assert!(commit_index <= last, "commit index {commit_index} beyond last index {last}");
        assert!(snapshot_index <= last_applied && last_applied <= commit_index.max(snapshot_index));
        Self {
            snapshot_index,
            snapshot_term,
            entries: entries.into(),
            commit_index: commit_index.max(snapshot_index),
            last_applied,
            persisted_index: last,
            unstable_from: last + 1,
        }
    }

    pub(crate) fn snapshot_index(&self) -> Index {
        self.snapshot_index
    }

    pub(crate) fn snapshot_term(&self) -> Term {
        self.snapshot_term
    }

    pub(crate) fn first_index(&self) -> Index {
        self.snapshot_index + 1
    }

    pub(crate) fn last_index(&self) -> Index {
        self.snapshot_index + self.entries.len() as u64
    }

    pub(crate) fn last_term(&self) -> Term {
        self.entries.back().map_or(self.snapshot_term, |e| e.term)
    }

    /// The term of the entry at `index`, if this log still knows it (the snapshot boundary
    /// counts; compacted entries before it do not).
    pub(crate) fn term(&self, index: Index) -> Option<Term> {
        if index == self.snapshot_index {
            return Some(self.snapshot_term);
        }
        self.entry(index).map(|e| e.term)
    }

    pub(crate) fn entry(&self, index: Index) -> Option<&Entry> {
        if index <= self.snapshot_index {
            return None;
        }
        self.entries.get((index - self.snapshot_index - 1) as usize)
    }

    /// Section 5.4.1: a candidate's log is at least as up-to-date as ours if its last term is
    /// higher, or equal with an index at least as high.
    pub(crate) fn is_up_to_date(&self, last_index: Index, last_term: Term) -> bool {
        last_term > self.last_term() || (last_term == self.last_term() && last_index >= self.last_index())
    }

    /// Entries from `from` on, at most `max_bytes` of them but always at least one if any exist.
    pub(crate) fn entries_from(&self, from: Index, max_bytes: usize) -> Vec<Entry> {
        assert!(from > self.snapshot_index, "entry {from} is compacted");
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let start = (from - self.snapshot_index - 1) as usize;
        for e in self.entries.iter_from(start) {
            bytes += e.size_bytes();
            if !out.is_empty() && bytes > max_bytes {
                break;
            }
            out.push(e.clone());
        }
        out
    }

    /// The last index holding `term` at or below `at_most`, for the leader's side of fast repair.
    /// Terms never decrease along a log (each leader appends in its own, newer term after a
    /// prefix it shares), so this is a binary search: a follower rejecting a burst of pipelined
    /// appends costs the leader O(log n) per rejection, not a walk over a whole term's entries
    /// (a chaos run showed leaders stalled for seconds on thousands of such walks).
    pub(crate) fn last_index_of_term(&self, term: Term, at_most: Index) -> Option<Index> {
        let hi = at_most.min(self.last_index());
        let considered = hi.saturating_sub(self.snapshot_index) as usize;
        // Entries at positions below `upto` are in range and hold a term <= `term`.
        let upto = self.entries.partition_point(|e| e.term <= term).min(considered);
        match upto.checked_sub(1).map(|p| &self.entries[p]) {
            Some(e) if e.term == term => Some(e.index),
            Some(_) => None,
            None => (self.snapshot_term == term && self.snapshot_index > 0).then_some(self.snapshot_index),
        }
    }

    /// The first index of the run of `term` that contains `index`, for the follower's hint (a
    /// binary search, as above).
    pub(crate) fn first_index_of_term_run(&self, index: Index) -> Index {
        let term = self.term(index).expect("index within the log");
        if index <= self.first_index() {
            return index;
        }
        let start = self.entries.partition_point(|e| e.term < term) as u64;
        self.snapshot_index + 1 + start
    }

    /// The leader appends its own new entry. Leader Append-Only (Figure 3): only ever at the end.
    pub(crate) fn append(&mut self, entry: Entry) {
        assert_eq!(entry.index, self.last_index() + 1, "append must extend the log");
        assert!(entry.term >= self.last_term(), "terms in the log never decrease");
        self.entries.push_back(entry);
    }

    /// Follower side of AppendEntries after the consistency check passed at `prev_index`:
    /// skip entries it already has, truncate at the first conflict (section 5.3, "if an existing
    /// entry conflicts with a new one, delete the existing entry and all that follow it") and
    /// append the rest. Returns the index of the last entry of the request, and the first index
    /// written (after any truncation), if anything was.
    pub(crate) fn merge(&mut self, prev_index: Index, entries: Vec<Entry>) -> (Index, Option<Index>) {
        let last_new = prev_index + entries.len() as u64;
        let mut iter = entries.into_iter().peekable();
        while let Some(e) = iter.peek() {
            match self.term(e.index) {
                Some(t) if t == e.term => {
                    iter.next();
                }
                Some(_) => {
                    self.truncate_from(e.index);
                    break;
                }
                None => break,
            }
        }
        let first_written = iter.peek().map(|e| e.index);
        for e in iter {
            self.append(e);
        }
        (last_new, first_written)
    }

    /// Removes `index` and everything after it. Committed entries are never removed: a request
    /// to do so means the leader's log disagrees with a committed entry, a broken invariant.
    fn truncate_from(&mut self, index: Index) {
        assert!(
            index > self.commit_index,
            "truncating committed entry {index} (commit index {})",
            self.commit_index
        );
        assert!(index > self.snapshot_index);
        self.entries.truncate((index - self.snapshot_index - 1) as usize);
        self.unstable_from = self.unstable_from.min(index);
        self.persisted_index = self.persisted_index.min(index - 1);
    }

    /// Entries the driver has not yet been asked to write.
    pub(crate) fn unstable_entries(&self) -> Vec<Entry> {
        if self.unstable_from > self.last_index() {
            return Vec::new();
        }
        self.entries_from(self.unstable_from, usize::MAX)
    }

    /// Committed, durable entries not yet handed out to apply. Entries are applied only once
    /// durable here too, so a restart never finds the state machine ahead of its own log.
    pub(crate) fn entries_to_apply(&self) -> Vec<Entry> {
        let hi = self.commit_index.min(self.persisted_index);
        if hi <= self.last_applied {
            return Vec::new();
        }
        let lo = self.last_applied + 1;
        let start = (lo - self.snapshot_index - 1) as usize;
        let end = (hi - self.snapshot_index) as usize;
        self.entries.iter_from(start).take(end - start).cloned().collect()
    }

    /// The driver wrote everything up to `index` (whose term was `term` when written). Ignored if
    /// the log has since been truncated below it: the newer write will report again.
    pub(crate) fn mark_persisted(&mut self, index: Index, term: Term) {
        if index > self.persisted_index && self.term(index) == Some(term) {
            self.persisted_index = index;
        }
    }

    /// Drops entries up to `index`, which the driver has folded into a snapshot.
    pub(crate) fn compact(&mut self, index: Index) {
        assert!(index <= self.last_applied, "compacting unapplied entry {index}");
        if index <= self.snapshot_index {
            return;
        }
        let term = self.term(index).expect("compaction point within the log");
        let drop = (index - self.snapshot_index) as usize;
        self.entries.drop_front(drop);
        self.snapshot_index = index;
        self.snapshot_term = term;
    }

    /// Replaces the whole log with a received snapshot (deck 000, the follower that is far
    /// behind: "discard the entire log").
    pub(crate) fn restore(&mut self, index: Index, term: Term) {
        assert!(index > self.commit_index, "restoring a snapshot behind the commit index");
        self.entries.clear();
        self.snapshot_index = index;
        self.snapshot_term = term;
        self.commit_index = index;
        self.last_applied = index;
        self.persisted_index = index;
        self.unstable_from = index + 1;
    }

    /// Commits up to `index` (never moves backwards).
    pub(crate) fn commit_to(&mut self, index: Index) -> bool {
        if index > self.commit_index {
            assert!(index <= self.last_index(), "committing beyond the log");
            self.commit_index = index;
            return true;
        }
        false
    }

    /// Invariants of the log itself, checked after every step.
    pub(crate) fn check_invariants(&self) {
        let last = self.last_index();
        assert!(self.last_applied <= self.commit_index, "applied beyond commit");
        assert!(self.commit_index <= last, "commit {} beyond last {}", self.commit_index, last);
        assert!(self.persisted_index <= last, "persisted beyond last");
        assert!(self.snapshot_index <= self.last_applied, "snapshot of unapplied entries");
        assert!(self.unstable_from <= last + 1);
        assert!(self.persisted_index < self.unstable_from, "durable entries must have been handed out");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::EntryKind;
    use bytes::Bytes;

    fn e(index: Index, term: Term) -> Entry {
        Entry { term, index, kind: EntryKind::Normal, data: Bytes::new() }
    }

    fn log_of(terms: &[Term]) -> RaftLog {
        let entries = terms.iter().enumerate().map(|(i, &t)| e(i as u64 + 1, t)).collect();
        RaftLog::recovered(0, 0, entries, 0, 0)
    }

    /// The binary searches of fast repair agree with walking the log, on logs of random
    /// non-decreasing terms, with and without a snapshot before them.
    #[test]
    fn term_searches_agree_with_a_walk() {
        let mut seed = 0x5eed_u64;
        let mut next = move |below: u64| {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 33) % below
        };
        for _ in 0..200 {
            let snapshot_index = next(3) * next(5);
            let snapshot_term = if snapshot_index > 0 { 1 + next(3) } else { 0 };
            let mut term = snapshot_term.max(1);
            let entries: Vec<Entry> = (0..next(40))
                .map(|i| {
                    term += u64::from(next(4) == 0) * (1 + next(2));
                    e(snapshot_index + 1 + i, term)
                })
                .collect();
            let last = snapshot_index + entries.len() as u64;
            let log =
                RaftLog::recovered(snapshot_index, snapshot_term, entries, snapshot_index, snapshot_index);
            let walk_last = |t: Term, at_most: Index| {
                let mut i = at_most.min(last);
                while i > snapshot_index {
                    match log.term(i).unwrap() {
                        x if x == t => return Some(i),
                        x if x < t => return None,
                        _ => i -= 1,
                    }
                }
                (snapshot_term == t && snapshot_index > 0).then_some(snapshot_index)
            };
            for t in 0..=term + 1 {
                for at_most in 0..=last + 2 {
                    assert_eq!(
                        log.last_index_of_term(t, at_most),
                        walk_last(t, at_most),
                        "term {t} at most {at_most}"
                    );
                }
            }
            for index in snapshot_index.max(1)..=last {
                let mut i = index;
                while i > log.first_index() && log.term(i - 1) == log.term(index) {
                    i -= 1;
                }
                assert_eq!(log.first_index_of_term_run(index), i, "run containing {index}");
            }
        }
    }

    /// Reference: section 5.3, conflicting suffix is deleted, matching entries kept.
    #[test]
    fn merge_truncates_only_at_first_conflict() {
        let mut log = log_of(&[1, 1, 2, 2]);
        let (last, first_written) = log.merge(1, vec![e(2, 1), e(3, 3)]);
        assert_eq!((last, first_written), (3, Some(3)));
        assert_eq!(log.last_index(), 3);
        assert_eq!(log.term(3), Some(3));
        assert_eq!(log.unstable_from, 3);
        assert_eq!(log.persisted_index, 2);
    }

    /// A stale, shorter AppendEntries must not truncate entries it does not contradict.
    #[test]
    fn merge_of_a_stale_prefix_keeps_the_suffix() {
        let mut log = log_of(&[1, 1, 2, 2]);
        assert_eq!(log.merge(0, vec![e(1, 1), e(2, 1)]), (2, None));
        assert_eq!(log.last_index(), 4);
    }

    #[test]
    #[should_panic(expected = "truncating committed entry")]
    fn truncating_committed_entries_is_a_broken_invariant() {
        let mut log = log_of(&[1, 1, 2]);
        log.commit_to(3);
        log.merge(2, vec![e(3, 3)]);
    }

    #[test]
    fn term_search_for_fast_repair() {
        let log = log_of(&[1, 1, 4, 4, 5, 5, 6]);
        assert_eq!(log.last_index_of_term(4, 7), Some(4));
        assert_eq!(log.last_index_of_term(2, 7), None);
        assert_eq!(log.first_index_of_term_run(6), 5);
        assert_eq!(log.first_index_of_term_run(4), 3);
    }

    #[test]
    fn compaction_keeps_boundary_term() {
        let mut log = log_of(&[1, 1, 2, 3]);
        log.commit_to(3);
        log.last_applied = 3;
        log.compact(2);
        assert_eq!(log.first_index(), 3);
        assert_eq!(log.term(2), Some(1));
        assert_eq!(log.term(1), None);
        assert_eq!(log.entries_from(3, 0).len(), 1);
        assert!(log.is_up_to_date(4, 3));
        assert!(!log.is_up_to_date(5, 2));
    }

    #[test]
    fn batches_respect_the_byte_limit_but_send_at_least_one() {
        let log = log_of(&[1, 1, 1, 1]);
        assert_eq!(log.entries_from(1, 0).len(), 1);
        assert_eq!(log.entries_from(1, 2 * crate::types::ENTRY_OVERHEAD_BYTES).len(), 2);
        assert_eq!(log.entries_from(1, usize::MAX).len(), 4);
    }
}
