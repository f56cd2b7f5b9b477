//! The simulated network: which directed links are cut, and the partition shapes the nemesis
//! chooses from, including the partial-connectivity scenarios of deck 003 (Omni-Paxos).

use std::collections::BTreeSet;
use std::fmt;

use balsa_raft::rng::SplitMix64;
use balsa_raft::NodeId;

/// A connectivity pattern: the set of directed links `(from, to)` that drop every message.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Partition {
    /// What the pattern is, for traces.
    pub name: String,
    /// Directed links that are cut.
    pub cut: BTreeSet<(NodeId, NodeId)>,
}

impl fmt::Display for Partition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} cut={:?}", self.name, self.cut)
    }
}

impl Partition {
    /// Everything connected.
    pub fn healed() -> Self {
        Self { name: "healed".into(), cut: BTreeSet::new() }
    }

    /// Whether a message from `from` to `to` is dropped.
    pub fn blocks(&self, from: NodeId, to: NodeId) -> bool {
        self.cut.contains(&(from, to))
    }

    fn cut_both(&mut self, a: NodeId, b: NodeId) {
        self.cut.insert((a, b));
        self.cut.insert((b, a));
    }

    /// Two groups that cannot talk: `side` against everyone else.
    pub fn split(nodes: &[NodeId], side: &BTreeSet<NodeId>, name: &str) -> Self {
        let mut p = Self { name: name.into(), cut: BTreeSet::new() };
        for &a in side {
            for &b in nodes.iter().filter(|b| !side.contains(b)) {
                p.cut_both(a, b);
            }
        }
        p
    }

    /// One node cut off from all others.
    pub fn isolate(nodes: &[NodeId], victim: NodeId) -> Self {
        Self::split(nodes, &BTreeSet::from([victim]), &format!("isolate n{victim}"))
    }

    /// Messages from `a` to `b` are lost, the other direction works.
    pub fn one_way(a: NodeId, b: NodeId) -> Self {
        Self { name: format!("one-way n{a}-/->n{b}"), cut: BTreeSet::from([(a, b)]) }
    }

    /// Deck 003, chained: `a` and `b` cannot talk to each other but both talk to everyone else.
    /// Raft without PreVote and CheckQuorum livelocks here, each deposing the other.
    pub fn chained(a: NodeId, b: NodeId) -> Self {
        let mut p = Self { name: format!("chained n{a}<-/->n{b}"), cut: BTreeSet::new() };
        p.cut_both(a, b);
        p
    }

    /// Deck 003, quorum-loss: only `hub` stays connected to everyone; every other link is cut,
    /// so the hub is the only server that can reach a quorum.
    pub fn quorum_loss(nodes: &[NodeId], hub: NodeId) -> Self {
        let mut p = Self { name: format!("quorum-loss hub n{hub}"), cut: BTreeSet::new() };
        for &a in nodes {
            for &b in nodes {
                if a < b && a != hub && b != hub {
                    p.cut_both(a, b);
                }
            }
        }
        p
    }

    /// Random directed links cut, each with the given chance.
    pub fn random_links(nodes: &[NodeId], rng: &mut SplitMix64, per_mille: u64) -> Self {
        let mut p = Self { name: "random links".into(), cut: BTreeSet::new() };
        for &a in nodes {
            for &b in nodes {
                if a != b && rng.chance(per_mille, 1000) {
                    p.cut.insert((a, b));
                }
            }
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quorum_loss_leaves_only_the_hub_connected() {
        let nodes = [1, 2, 3, 4, 5];
        let p = Partition::quorum_loss(&nodes, 3);
        for &a in &nodes {
            for &b in &nodes {
                if a == b {
                    continue;
                }
                let through_hub = a == 3 || b == 3;
                assert_eq!(p.blocks(a, b), !through_hub, "{a}->{b}");
            }
        }
    }

    #[test]
    fn split_and_one_way() {
        let nodes = [1, 2, 3];
        let p = Partition::split(&nodes, &BTreeSet::from([1]), "x");
        assert!(p.blocks(1, 2) && p.blocks(2, 1) && !p.blocks(2, 3));
        let p = Partition::one_way(1, 2);
        assert!(p.blocks(1, 2) && !p.blocks(2, 1));
    }
}
