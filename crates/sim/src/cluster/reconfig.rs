//! Membership changes by the nemesis (paper section 6, thesis chapter 4): servers added (as
//! learners, promoted once caught up), voters removed (the leader too), a majority or the leader
//! replaced at once. Removed servers keep running: they must not disrupt the cluster.

use std::collections::BTreeSet;

use balsa_raft::{Membership, MembershipChange, NodeId};

use super::{Cluster, Event, SimNode};

impl Cluster {
    /// Proposes one membership change through the current leader, if there is one. Returns the
    /// leader, whose Ready must be carried out.
    pub(super) fn reconfigure(&mut self) -> Option<NodeId> {
        let leader = self.leader()?;
        let membership = self.nodes[&leader].raft.as_ref().expect("leader runs").membership().clone();
        let voters: Vec<NodeId> = membership.voters.iter().copied().collect();
        let change = match self.nemesis_rng.range(0, 4) {
            0 => MembershipChange::AddVoter(self.add_server()?),
            1 if voters.len() > 3 => {
                let victim = voters[self.nemesis_rng.range(0, voters.len() as u64) as usize];
                MembershipChange::Remove(victim)
            }
            1 => MembershipChange::AddLearner(self.add_server()?),
            2 => {
                // Replace a majority at once: keep one voter, bring in fresh servers.
                let keep = voters[self.nemesis_rng.range(0, voters.len() as u64) as usize];
                let mut next = BTreeSet::from([keep]);
                for _ in 0..2 {
                    next.insert(self.add_server()?);
                }
                MembershipChange::SetVoters(next)
            }
            _ => {
                // Replace the leader itself: it manages the change without counting itself,
                // then hands over and steps down once C_new commits.
                let mut next: BTreeSet<NodeId> = membership.voters.clone();
                next.remove(&leader);
                next.insert(self.add_server()?);
                MembershipChange::SetVoters(next)
            }
        };
        let raft = self.nodes.get_mut(&leader).expect("leader").raft.as_mut().expect("leader runs");
        let outcome = raft.change_membership(change.clone());
        if outcome.is_ok() {
            self.summary.reconfigurations += 1;
        }
        self.log(|| format!("nemesis asks leader n{leader} for {change:?}: {outcome:?}"));
        Some(leader)
    }

    /// Starts a fresh server with an empty disk and no configuration. Returns its id, or `None`
    /// if the cluster already has as many servers as the run allows.
    pub(super) fn add_server(&mut self) -> Option<NodeId> {
        let id = self.node_ids.iter().max().copied().unwrap_or(0) + 1;
        if id as usize > self.cfg.max_nodes {
            return None;
        }
        self.nodes.insert(id, SimNode::new(&self.cfg, id, Membership::default()));
        self.node_ids.push(id);
        self.start_node(id);
        let phase = self.net_rng.range(0, self.cfg.tick_us);
        self.schedule(phase, Event::Tick(id));
        self.log(|| format!("n{id} added, empty"));
        Some(id)
    }
}
