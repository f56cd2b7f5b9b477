//! The nemesis: one fault at a time, held for a while, then undone, with a quiet gap between
//! faults so the cluster can show it recovered. Every fault is recorded with its start and end.

use std::collections::BTreeSet;
use std::time::Duration;

use balsa_client::Client;
use balsa_raft::rng::SplitMix64;
use serde::Serialize;

use crate::cluster::Cluster;
use crate::history::Clock;
use crate::net::Link;

/// The kinds of fault; `--faults` picks among them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// kill -9 a member (the leader half the time), restart it after the hold.
    Kill,
    /// SIGSTOP a member (the leader half the time), SIGCONT after the hold.
    Pause,
    /// Split the members into a random minority and majority.
    Partition,
    /// Cut the leader off from every other member.
    IsolateLeader,
    /// Two halves that cannot talk, joined by one member that talks to both.
    Bridge,
    /// Deck 003: only one member (not the leader) stays connected to all; every other link is
    /// cut, so the leader loses its quorum and only that hub can reach one.
    QuorumLoss,
    /// Deck 003: quorum-loss whose hub is the member with the most outdated log (isolated
    /// first, while writes go on, so that it falls behind): it cannot win an election, and no
    /// one else can reach a quorum.
    Constrained,
    /// Deck 003: the leader and one follower cannot talk to each other; both talk to the rest.
    Chained,
    /// Membership changes under load: add a member, remove one, or replace the leader (add a
    /// new member, then remove the leader).
    Member,
}

impl FaultKind {
    /// Every kind.
    pub const ALL: [FaultKind; 9] = [
        FaultKind::Kill,
        FaultKind::Pause,
        FaultKind::Partition,
        FaultKind::IsolateLeader,
        FaultKind::Bridge,
        FaultKind::QuorumLoss,
        FaultKind::Constrained,
        FaultKind::Chained,
        FaultKind::Member,
    ];
}

/// One fault as it happened.
#[derive(Debug, Clone, Serialize)]
pub struct FaultRecord {
    /// What kind.
    pub kind: FaultKind,
    /// What exactly (which hosts, which links), for the reader of a failing run.
    pub detail: String,
    /// When it began, in the run's clock (ns).
    pub start_ns: u64,
    /// When it was undone.
    pub end_ns: u64,
    /// From undoing it to the first write the cluster took again (ms); `None` if none within
    /// [`RECOVERY_LIMIT`] (an anomaly: the cluster did not recover).
    pub recovered_ms: Option<u64>,
}

/// How long the cluster may take to take a write again once a fault is undone.
pub const RECOVERY_LIMIT: Duration = Duration::from_secs(30);

/// What the nemesis needs to know and touch.
pub struct Nemesis {
    /// The kinds, in the order they are used, round after round (the caller shuffles them with
    /// the seed), so that every kind appears in any run long enough for one round.
    pub kinds: Vec<FaultKind>,
    /// How many faults so far: the next kind is `kinds[faults % kinds.len()]`.
    pub faults: usize,
    /// Chooses kinds, victims, shapes and durations: the same seed gives the same schedule.
    pub rng: SplitMix64,
    /// How long a fault lasts, at least and at most.
    pub hold_ms: (u64, u64),
    /// The quiet time between faults, at least and at most.
    pub gap_ms: (u64, u64),
    /// A client for leader discovery and membership changes (one endpoint per host, in host
    /// order).
    pub control: Client,
    /// The faults so far.
    pub log: Vec<FaultRecord>,
    /// Problems seen along the way that are anomalies in themselves (a server that exited by
    /// itself, a cluster that did not recover).
    pub anomalies: Vec<String>,
    /// The run's clock.
    pub clock: Clock,
}

/// Runs a membership call until it succeeds, is refused for good, or 20 s pass. Right after a
/// fault is undone the cluster may still be electing or finishing a change (a learner's
/// promotion): those refusals are worth waiting out. A call whose answer was lost may have taken
/// effect: the retry is then refused (the peer URL exists, the member is gone) and the caller's
/// resync finds out what happened.
async fn persist<T, F, Fut>(mut call: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = balsa_client::Result<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match call().await {
            Ok(v) => return Ok(v),
            Err(e) => {
                let transient = e.is_retryable() || matches!(e, balsa_client::Error::FailedPrecondition(_));
                if !transient || tokio::time::Instant::now() > deadline {
                    return Err(e.to_string());
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
}

/// Cuts both directions of every pair `(a, b)` with `a` in `left` and `b` in `right`.
fn cut_between(cut: &mut BTreeSet<Link>, left: &[usize], right: &[usize]) {
    for &a in left {
        for &b in right {
            if a != b {
                cut.insert((a, b));
                cut.insert((b, a));
            }
        }
    }
}

/// Every link among `hosts` except those touching `hub`.
fn all_but_hub(hosts: &[usize], hub: usize) -> BTreeSet<Link> {
    let mut cut = BTreeSet::new();
    for &a in hosts {
        for &b in hosts {
            if a != b && a != hub && b != hub {
                cut.insert((a, b));
            }
        }
    }
    cut
}

impl Nemesis {
    fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        from[self.rng.range(0, from.len() as u64) as usize]
    }

    fn between(&mut self, (low, high): (u64, u64)) -> Duration {
        Duration::from_millis(self.rng.range(low, high.max(low + 1)))
    }

    /// The host the members agree leads (the highest term's claim), if any answers.
    pub async fn leader(&self, cluster: &Cluster) -> Option<usize> {
        let members = cluster.members();
        let asks = members.iter().map(|&h| {
            let c = self.control.clone();
            tokio::spawn(async move { (h, c.endpoint_status(h).await) })
        });
        let mut best: Option<(u64, usize)> = None;
        for ask in asks.collect::<Vec<_>>() {
            let Ok((h, Ok(s))) = ask.await else { continue };
            let me = s.header.as_ref().map_or(0, |hd| hd.member_id);
            if me != 0 && s.leader == me && best.is_none_or(|(t, _)| s.raft_term > t) {
                best = Some((s.raft_term, h));
            }
        }
        best.map(|(_, h)| h)
    }

    /// The member with the lowest applied index (not `except`), by each member's own status.
    async fn laggard(&self, cluster: &Cluster, except: Option<usize>) -> Option<usize> {
        let mut lowest: Option<(u64, usize)> = None;
        for h in cluster.members() {
            if Some(h) == except {
                continue;
            }
            let applied = self.control.endpoint_status(h).await.map_or(0, |s| s.raft_applied_index);
            if lowest.is_none_or(|(a, _)| applied < a) {
                lowest = Some((applied, h));
            }
        }
        lowest.map(|(_, h)| h)
    }

    /// A member: the leader with `leader_odds` in 2, else a random one.
    async fn victim(&mut self, cluster: &Cluster) -> usize {
        let members = cluster.members();
        if self.rng.chance(1, 2) {
            if let Some(l) = self.leader(cluster).await {
                return l;
            }
        }
        self.pick(&members)
    }

    /// Injects one fault, holds it, undoes it; returns when the cluster has been left alone
    /// again (the quiet gap is the caller's).
    pub async fn one_fault(&mut self, cluster: &mut Cluster) {
        let kind = self.kinds[self.faults % self.kinds.len()];
        self.faults += 1;
        let start_ns = self.clock.now_ns();
        let hold = self.between(self.hold_ms);
        let detail = match kind {
            FaultKind::Kill => {
                let h = self.victim(cluster).await;
                cluster.kill(h);
                tokio::time::sleep(hold).await;
                if let Err(e) = cluster.restart(h) {
                    self.anomalies.push(format!("restarting n{h} failed: {e}"));
                }
                format!("kill -9 n{h}, restarted after {hold:?}")
            }
            FaultKind::Pause => {
                let h = self.victim(cluster).await;
                cluster.pause(h);
                tokio::time::sleep(hold).await;
                cluster.resume(h);
                format!("SIGSTOP n{h}, SIGCONT after {hold:?}")
            }
            FaultKind::Member => self.membership(cluster).await,
            _ => {
                let (cut, detail) = self.shape(kind, cluster, hold).await;
                if let Err(e) = cluster.net.set_cut(&cut) {
                    self.anomalies.push(format!("the nemesis could not partition: {e}"));
                }
                tokio::time::sleep(hold).await;
                if let Err(e) = cluster.net.set_cut(&BTreeSet::new()) {
                    self.anomalies.push(format!("the nemesis could not heal: {e}"));
                }
                format!("{detail}, healed after {hold:?}")
            }
        };
        let end_ns = self.clock.now_ns();
        let recovered_ms = self.until_writable().await;
        if recovered_ms.is_none() {
            self.anomalies
                .push(format!("no write succeeded within {RECOVERY_LIMIT:?} after undoing: {detail}"));
        }
        self.log.push(FaultRecord { kind, detail, start_ns, end_ns, recovered_ms });
    }

    /// Milliseconds until a write succeeds, probing every 50 ms; `None` past [`RECOVERY_LIMIT`].
    async fn until_writable(&self) -> Option<u64> {
        let started = tokio::time::Instant::now();
        while started.elapsed() < RECOVERY_LIMIT {
            let put = self.control.put("chaos/probe", "x", balsa_client::PutOptions::new());
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(1), put).await {
                return Some(started.elapsed().as_millis() as u64);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    /// The links to cut for a partition kind.
    async fn shape(
        &mut self,
        kind: FaultKind,
        cluster: &mut Cluster,
        hold: Duration,
    ) -> (BTreeSet<Link>, String) {
        let mut members = cluster.members();
        let leader = self.leader(cluster).await;
        let mut cut = BTreeSet::new();
        let names = |hs: &[usize]| hs.iter().map(|h| format!("n{h}")).collect::<Vec<_>>().join(",");
        match kind {
            FaultKind::Partition => {
                self.shuffle(&mut members);
                let minority = self.rng.range(1, members.len() as u64 / 2 + 1) as usize;
                let (small, big) = members.split_at(minority);
                cut_between(&mut cut, small, big);
                (cut, format!("partition {{{}}} | {{{}}}", names(small), names(big)))
            }
            FaultKind::IsolateLeader => {
                let l = leader.unwrap_or_else(|| members[0]);
                let rest: Vec<usize> = members.iter().copied().filter(|&h| h != l).collect();
                cut_between(&mut cut, &[l], &rest);
                (cut, format!("isolate leader n{l}"))
            }
            FaultKind::Bridge => {
                self.shuffle(&mut members);
                let bridge = members.remove(0);
                let (a, b) = members.split_at(members.len() / 2);
                cut_between(&mut cut, a, b);
                (cut, format!("bridge n{bridge} between {{{}}} and {{{}}}", names(a), names(b)))
            }
            FaultKind::QuorumLoss => {
                let others: Vec<usize> = members.iter().copied().filter(|&h| Some(h) != leader).collect();
                let hub = self.pick(&others);
                (all_but_hub(&members, hub), format!("quorum-loss, hub n{hub} (leader was {leader:?})"))
            }
            FaultKind::Constrained => {
                // First let one follower fall behind: isolated for half the hold while the
                // clients write. Then make it the only server that can reach a quorum.
                let others: Vec<usize> = members.iter().copied().filter(|&h| Some(h) != leader).collect();
                let hub = self.pick(&others);
                let rest: Vec<usize> = members.iter().copied().filter(|&h| h != hub).collect();
                let mut first = BTreeSet::new();
                cut_between(&mut first, &[hub], &rest);
                if let Err(e) = cluster.net.set_cut(&first) {
                    self.anomalies.push(format!("the nemesis could not partition: {e}"));
                }
                tokio::time::sleep(hold / 2).await;
                let laggard = self.laggard(cluster, leader).await.unwrap_or(hub);
                (
                    all_but_hub(&members, laggard),
                    format!(
                        "constrained election: n{hub} isolated for {:?}, then hub n{laggard} (the laggard)",
                        hold / 2
                    ),
                )
            }
            FaultKind::Chained => {
                let l = leader.unwrap_or_else(|| members[0]);
                let others: Vec<usize> = members.iter().copied().filter(|&h| h != l).collect();
                let other = self.pick(&others);
                cut_between(&mut cut, &[l], &[other]);
                (cut, format!("chained: leader n{l} and n{other} cut from each other"))
            }
            FaultKind::Kill | FaultKind::Pause | FaultKind::Member => unreachable!("not a partition"),
        }
    }

    fn shuffle(&mut self, v: &mut [usize]) {
        for i in (1..v.len()).rev() {
            let j = self.rng.range(0, i as u64 + 1) as usize;
            v.swap(i, j);
        }
    }

    /// Add, remove, or replace the leader, as the cluster's size allows.
    async fn membership(&mut self, cluster: &mut Cluster) -> String {
        let members = cluster.members().len();
        let spares = cluster.spares().len();
        let choice = match (members > 3, spares > 0) {
            (true, true) => self.rng.range(0, 3),
            (true, false) => 1,
            (false, true) => self.pick(&[0, 2]),
            (false, false) => return "no membership change possible".into(),
        };
        let outcome = match choice {
            0 => self.add(cluster).await.map(|h| format!("added n{h}")),
            1 => {
                let h = self.victim(cluster).await;
                self.remove(cluster, h).await.map(|()| format!("removed n{h}"))
            }
            _ => self.replace_leader(cluster).await,
        };
        let detail = outcome.unwrap_or_else(|e| format!("membership change failed: {e}"));
        self.resync(cluster).await;
        detail
    }

    /// Adds a spare host as a voter (it joins as a learner and is promoted once caught up).
    async fn add(&mut self, cluster: &mut Cluster) -> Result<usize, String> {
        let h = self.pick(&cluster.spares());
        cluster.kill(h);
        cluster.nodes[h].generation += 1;
        let url = cluster.peer_url(h);
        let control = self.control.clone();
        let (_, list) = persist(|| control.member_add(std::slice::from_ref(&url), false)).await?;
        let mut hosts: Vec<usize> = list
            .iter()
            .filter_map(|m| m.peer_ur_ls.first().and_then(|u| cluster.host_of_peer_url(u)))
            .collect();
        hosts.sort_unstable();
        let initial = cluster.initial_cluster(&hosts);
        cluster.start(h, &initial, "existing").map_err(|e| e.to_string())?;
        cluster.nodes[h].member = true;
        Ok(h)
    }

    /// Removes host `h` from the cluster and stops it (a removed balsa member keeps running).
    async fn remove(&mut self, cluster: &mut Cluster, h: usize) -> Result<(), String> {
        let url = cluster.peer_url(h);
        let list = self.control.member_list().await.map_err(|e| e.to_string())?;
        let id = list
            .iter()
            .find(|m| m.peer_ur_ls.iter().any(|u| u.trim_end_matches('/') == url))
            .map(|m| m.id)
            .ok_or_else(|| format!("n{h} is not in the member list"))?;
        let control = self.control.clone();
        persist(|| control.member_remove(id)).await?;
        cluster.kill(h);
        cluster.nodes[h].member = false;
        Ok(())
    }

    /// Adds a member, waits (bounded) until it votes, then removes the leader.
    async fn replace_leader(&mut self, cluster: &mut Cluster) -> Result<String, String> {
        let new = self.add(cluster).await?;
        let url = cluster.peer_url(new);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let list = self.control.member_list().await.unwrap_or_default();
            let voter = list
                .iter()
                .any(|m| !m.is_learner && m.peer_ur_ls.iter().any(|u| u.trim_end_matches('/') == url));
            if voter {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                return Ok(format!("added n{new}; not promoted within 20 s, leader kept"));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let leader = self.leader(cluster).await.ok_or("no leader to replace")?;
        self.remove(cluster, leader).await?;
        Ok(format!("replaced leader n{leader} by n{new}"))
    }

    /// Makes the harness's idea of who is a member the cluster's: after a change whose answer
    /// was lost, the change may or may not have happened.
    pub async fn resync(&mut self, cluster: &mut Cluster) {
        let Ok(list) = self.control.member_list().await else { return };
        let listed: Vec<usize> = list
            .iter()
            .filter_map(|m| m.peer_ur_ls.first().and_then(|u| cluster.host_of_peer_url(u)))
            .collect();
        for h in 0..cluster.nodes.len() {
            let member = listed.contains(&h);
            if cluster.nodes[h].member && !member {
                cluster.kill(h);
            }
            if member && !cluster.nodes[h].member && cluster.nodes[h].process.is_none() {
                // Added, though the answer was lost: start it.
                let mut hosts = listed.clone();
                hosts.sort_unstable();
                let initial = cluster.initial_cluster(&hosts);
                if let Err(e) = cluster.start(h, &initial, "existing") {
                    self.anomalies.push(format!("starting added n{h} failed: {e}"));
                }
            }
            cluster.nodes[h].member = member;
        }
    }

    /// Members whose process exited without the nemesis killing it: crashes.
    pub fn check_crashes(&mut self, cluster: &mut Cluster) {
        for h in cluster.members() {
            if let Some(status) = cluster.exited(h) {
                let log = cluster.log_path(h);
                self.anomalies.push(format!("n{h} exited by itself ({status}); see {}", log.display()));
                cluster.nodes[h].process = None;
            }
        }
    }

    /// Undoes everything: heals the network, resumes and restarts every member.
    pub fn heal_all(&mut self, cluster: &mut Cluster) {
        if let Err(e) = cluster.net.set_cut(&BTreeSet::new()) {
            self.anomalies.push(format!("the nemesis could not heal: {e}"));
        }
        for h in cluster.members() {
            cluster.resume(h);
            if cluster.nodes[h].process.is_none() {
                if let Err(e) = cluster.restart(h) {
                    self.anomalies.push(format!("restarting n{h} failed: {e}"));
                }
            }
        }
    }

    /// The pause between faults.
    pub fn gap(&mut self) -> Duration {
        self.between(self.gap_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The directed links among `hosts` that still work with `cut` blackholed.
    fn working(hosts: &[usize], cut: &BTreeSet<Link>) -> BTreeSet<Link> {
        let mut up = BTreeSet::new();
        for &a in hosts {
            for &b in hosts {
                if a != b && !cut.contains(&(a, b)) {
                    up.insert((a, b));
                }
            }
        }
        up
    }

    /// The peers `h` can talk to both ways (TCP needs both directions).
    fn peers(h: usize, hosts: &[usize], cut: &BTreeSet<Link>) -> BTreeSet<usize> {
        let up = working(hosts, cut);
        hosts.iter().copied().filter(|&p| up.contains(&(h, p)) && up.contains(&(p, h))).collect()
    }

    #[test]
    fn cut_between_cuts_every_pair_across_both_ways_and_nothing_else() {
        let mut cut = BTreeSet::new();
        cut_between(&mut cut, &[1, 4], &[0, 2, 3]);
        let expected: BTreeSet<Link> =
            [1, 4].iter().flat_map(|&a| [0, 2, 3].iter().flat_map(move |&b| [(a, b), (b, a)])).collect();
        assert_eq!(cut, expected);
        // Within each side everything still works.
        let hosts = [0, 1, 2, 3, 4];
        assert_eq!(peers(1, &hosts, &cut), BTreeSet::from([4]));
        assert_eq!(peers(0, &hosts, &cut), BTreeSet::from([2, 3]));
        // It adds to what is already cut, and never cuts a host from itself.
        let mut cut = BTreeSet::from([(7, 8)]);
        cut_between(&mut cut, &[1, 2], &[2]);
        assert_eq!(cut, BTreeSet::from([(1, 2), (2, 1), (7, 8)]));
    }

    #[test]
    fn all_but_hub_leaves_only_the_links_through_the_hub() {
        // Members need not be contiguous (spares joined, founders removed).
        let members = [0, 2, 3, 5, 6];
        for &hub in &members {
            let cut = all_but_hub(&members, hub);
            let others: Vec<usize> = members.iter().copied().filter(|&h| h != hub).collect();
            // Every link between two non-hub members is cut, both ways; none touching the hub.
            assert_eq!(cut.len(), others.len() * (others.len() - 1), "{cut:?}");
            assert!(cut.iter().all(|&(a, b)| a != hub && b != hub && a != b), "{cut:?}");
            assert_eq!(working(&members, &cut).len(), 2 * others.len());
            // The hub talks to everyone; everyone else only to the hub.
            assert_eq!(peers(hub, &members, &cut), others.iter().copied().collect());
            for &h in &others {
                assert_eq!(peers(h, &members, &cut), BTreeSet::from([hub]), "n{h}");
            }
            // So only the hub can gather a quorum (itself and two others of five).
            let quorum = members.len() / 2 + 1;
            for &h in &members {
                assert_eq!(peers(h, &members, &cut).len() + 1 >= quorum, h == hub, "n{h}");
            }
            // Hosts outside `hosts` (spares, the clients' bridge) are left alone.
            assert!(cut.iter().all(|&(a, b)| members.contains(&a) && members.contains(&b)));
        }
    }
}
