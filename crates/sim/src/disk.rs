//! A simulated disk: what a server has made durable. Anything not yet written when the server
//! crashes is lost, which is exactly the window the persistence ordering must survive.

use balsa_raft::{Entry, HardState, InitialState, Membership, PersistBatch, Snapshot};

/// The durable state of one server.
#[derive(Clone, Debug, Default)]
pub struct Disk {
    /// Term, vote and commit index.
    pub hard_state: HardState,
    /// The latest snapshot.
    pub snapshot: Option<Snapshot>,
    /// Entries after the snapshot, contiguous.
    pub entries: Vec<Entry>,
}

impl Disk {
    /// Writes a Ready's batch, in the order the core documents: snapshot, entries (replacing
    /// every stored entry from the first new index on), hard state.
    pub fn write(&mut self, batch: &PersistBatch) {
        if let Some(snapshot) = &batch.snapshot {
            self.snapshot = Some(snapshot.clone());
            self.entries.clear();
        }
        if let Some(first) = batch.entries.first() {
            let keep = self.entries.iter().take_while(|e| e.index < first.index).count();
            self.entries.truncate(keep);
            if let Some(last) = self.entries.last() {
                assert_eq!(last.index + 1, first.index, "a write must not leave a gap");
            }
            self.entries.extend(batch.entries.iter().cloned());
        }
        if let Some(hs) = batch.hard_state {
            self.hard_state = hs;
        }
    }

    /// Replaces the log prefix up to the snapshot's last index (local compaction).
    pub fn install_local_snapshot(&mut self, snapshot: Snapshot) {
        let index = snapshot.meta.last_included_index;
        self.entries.retain(|e| e.index > index);
        self.snapshot = Some(snapshot);
    }

    /// What a restarting server recovers.
    pub fn recover(&self, membership: &Membership) -> InitialState {
        let snapshot_index = self.snapshot.as_ref().map_or(0, |s| s.meta.last_included_index);
        InitialState {
            hard_state: self.hard_state,
            snapshot: self.snapshot.clone(),
            entries: self.entries.iter().filter(|e| e.index > snapshot_index).cloned().collect(),
            applied_index: snapshot_index,
            membership: membership.clone(),
        }
    }
}
