//! Cluster configuration and the quorum arithmetic over it.
//!
//! A configuration is either simple (one voter set) or joint (C_old,new: two voter sets, paper
//! section 6). Every quorum decision — commit, election, CheckQuorum, ReadIndex — goes through
//! this module, so that joint consensus needs "a majority of both" in exactly one place.

use std::collections::BTreeSet;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::types::{Index, NodeId};

/// The members of a cluster and what they may do.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Membership {
    /// Voters of the current (or, while joint, the incoming) configuration.
    pub voters: BTreeSet<NodeId>,
    /// Voters of the outgoing configuration while joint; empty otherwise.
    pub voters_outgoing: BTreeSet<NodeId>,
    /// Members that receive the log but never vote or campaign.
    pub learners: BTreeSet<NodeId>,
    /// Learners the leader promotes to voters on its own once they have caught up (a subset of
    /// `learners`). Part of the replicated configuration, so a new leader carries on.
    pub promote: BTreeSet<NodeId>,
}

/// The outcome of counting votes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VoteResult {
    /// Enough votes were granted in every voter set.
    Won,
    /// Enough votes were refused in some voter set that winning is impossible.
    Lost,
    /// Neither yet.
    Pending,
}

impl Membership {
    /// A simple configuration of voters only.
    pub fn new(voters: impl IntoIterator<Item = NodeId>) -> Self {
        Self { voters: voters.into_iter().collect(), ..Self::default() }
    }

    /// True while in C_old,new.
    pub fn is_joint(&self) -> bool {
        !self.voters_outgoing.is_empty()
    }

    /// Whether `id` votes in either voter set.
    pub fn is_voter(&self, id: NodeId) -> bool {
        self.voters.contains(&id) || self.voters_outgoing.contains(&id)
    }

    /// Whether `id` is a member at all (voter or learner).
    pub fn contains(&self, id: NodeId) -> bool {
        self.is_voter(id) || self.learners.contains(&id)
    }

    /// Every member, each once, in ascending order.
    pub fn members(&self) -> BTreeSet<NodeId> {
        let mut all = self.voters.clone();
        all.extend(&self.voters_outgoing);
        all.extend(&self.learners);
        all
    }

    /// The highest index stored on a majority of every voter set, given each voter's match index.
    /// Paper section 5.3: "a log entry is committed once the leader that created the entry has
    /// replicated it on a majority of the servers"; section 6: in C_old,new, a majority of both.
    pub fn committed_index(&self, match_of: impl Fn(NodeId) -> Index) -> Index {
        let incoming = majority_index(&self.voters, &match_of);
        let outgoing = majority_index(&self.voters_outgoing, &match_of);
        incoming.min(outgoing)
    }

    /// Counts votes; `vote_of` answers `Some(granted)` for voters that replied.
    pub fn vote_result(&self, vote_of: impl Fn(NodeId) -> Option<bool>) -> VoteResult {
        let incoming = set_vote_result(&self.voters, &vote_of);
        let outgoing = set_vote_result(&self.voters_outgoing, &vote_of);
        match (incoming, outgoing) {
            (VoteResult::Won, VoteResult::Won) => VoteResult::Won,
            (VoteResult::Lost, _) | (_, VoteResult::Lost) => VoteResult::Lost,
            _ => VoteResult::Pending,
        }
    }

    /// Serializes the configuration (for configuration entries and snapshot metadata): four
    /// sets, each a u32 count and u64 ids, little-endian.
    pub fn encode(&self) -> Bytes {
        let mut b = BytesMut::new();
        for set in [&self.voters, &self.voters_outgoing, &self.learners, &self.promote] {
            b.put_u32_le(set.len() as u32);
            for &id in set {
                b.put_u64_le(id);
            }
        }
        b.freeze()
    }

    /// Parses [`Membership::encode`]'s output; `None` if malformed.
    pub fn decode(mut data: &[u8]) -> Option<Self> {
        let mut sets: [BTreeSet<NodeId>; 4] = Default::default();
        for set in &mut sets {
            if data.remaining() < 4 {
                return None;
            }
            let n = data.get_u32_le() as usize;
            if data.remaining() < n.checked_mul(8)? {
                return None;
            }
            set.extend((0..n).map(|_| data.get_u64_le()));
        }
        if data.has_remaining() {
            return None;
        }
        let [voters, voters_outgoing, learners, promote] = sets;
        Some(Self { voters, voters_outgoing, learners, promote })
    }

    /// Whether the members for which `active` holds form a quorum of every voter set.
    pub fn has_quorum(&self, active: impl Fn(NodeId) -> bool) -> bool {
        let vote = |id| Some(active(id));
        self.vote_result(vote) == VoteResult::Won
    }
}

/// The largest index `i` such that a majority of `voters` has a match index of at least `i`.
/// An empty set places no constraint (returns `Index::MAX`), which is what a simple
/// configuration's empty outgoing half must do.
fn majority_index(voters: &BTreeSet<NodeId>, match_of: &impl Fn(NodeId) -> Index) -> Index {
    if voters.is_empty() {
        return Index::MAX;
    }
    let mut matched: Vec<Index> = voters.iter().map(|&id| match_of(id)).collect();
    matched.sort_unstable_by(|a, b| b.cmp(a));
    matched[voters.len() / 2]
}

fn set_vote_result(voters: &BTreeSet<NodeId>, vote_of: &impl Fn(NodeId) -> Option<bool>) -> VoteResult {
    if voters.is_empty() {
        return VoteResult::Won;
    }
    let majority = voters.len() / 2 + 1;
    let (mut granted, mut missing) = (0, 0);
    for &id in voters {
        match vote_of(id) {
            Some(true) => granted += 1,
            Some(false) => {}
            None => missing += 1,
        }
    }
    if granted >= majority {
        VoteResult::Won
    } else if granted + missing >= majority {
        VoteResult::Pending
    } else {
        VoteResult::Lost
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn joint(old: &[NodeId], new: &[NodeId]) -> Membership {
        Membership {
            voters: new.iter().copied().collect(),
            voters_outgoing: old.iter().copied().collect(),
            ..Membership::default()
        }
    }

    /// Reference: paper section 5.3, a majority stores the entry.
    #[test]
    fn committed_index_is_the_majority_match() {
        let m = Membership::new([1, 2, 3]);
        let matches = BTreeMap::from([(1, 10), (2, 7), (3, 3)]);
        assert_eq!(m.committed_index(|id| matches[&id]), 7);
        let m5 = Membership::new([1, 2, 3, 4, 5]);
        let matches = BTreeMap::from([(1, 9), (2, 9), (3, 4), (4, 2), (5, 1)]);
        assert_eq!(m5.committed_index(|id| matches[&id]), 4);
    }

    /// Reference: paper section 6, joint consensus needs separate majorities of both sets.
    #[test]
    fn joint_commit_needs_both_majorities() {
        let m = joint(&[1, 2, 3], &[3, 4, 5]);
        let matches = BTreeMap::from([(1, 10), (2, 10), (3, 10), (4, 1), (5, 1)]);
        assert_eq!(m.committed_index(|id| matches[&id]), 1);
        let matches = BTreeMap::from([(1, 10), (2, 1), (3, 10), (4, 10), (5, 1)]);
        assert_eq!(m.committed_index(|id| matches[&id]), 10);
    }

    #[test]
    fn votes_are_counted_per_set() {
        let m = Membership::new([1, 2, 3]);
        assert_eq!(m.vote_result(|id| (id == 1).then_some(true)), VoteResult::Pending);
        assert_eq!(m.vote_result(|id| (id <= 2).then_some(true)), VoteResult::Won);
        assert_eq!(m.vote_result(|id| Some(id == 1)), VoteResult::Lost);
        let j = joint(&[1, 2, 3], &[4, 5, 6]);
        assert_eq!(j.vote_result(|id| Some(id <= 3)), VoteResult::Lost);
        assert_eq!(j.vote_result(|id| Some(id != 3 && id != 6)), VoteResult::Won);
    }

    #[test]
    fn encoding_round_trips_and_rejects_garbage() {
        let mut m = joint(&[1, 2, 3], &[3, 4, 5]);
        m.learners.insert(9);
        m.promote.insert(9);
        let bytes = m.encode();
        assert_eq!(Membership::decode(&bytes), Some(m));
        for cut in 0..bytes.len() {
            assert_eq!(Membership::decode(&bytes[..cut]), None, "cut at {cut}");
        }
        assert_eq!(Membership::decode(&[255, 255, 255, 255]), None);
    }

    #[test]
    fn learners_are_members_but_not_voters() {
        let mut m = Membership::new([1, 2, 3]);
        m.learners.insert(4);
        assert!(m.contains(4));
        assert!(!m.is_voter(4));
        assert_eq!(m.members().len(), 4);
        assert!(m.has_quorum(|id| id == 1 || id == 2));
        assert!(!m.has_quorum(|id| id == 1 || id == 4));
    }
}
