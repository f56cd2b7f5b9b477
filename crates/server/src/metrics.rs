//! The metrics of one member, in Prometheus' text format at `/metrics`.
//!
//! Each node owns its own registry (not the process-global one) because `balsa dev` and the
//! tests run several members in one process. The driver thread reports through a few one-line
//! calls; role and leader transitions are noticed here, from the core's status, which keeps the
//! instrumentation of `node.rs` small. Names follow etcd's where the meaning is the same, with
//! `balsa_` in place of `etcd_`.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use balsa_raft::{NodeId, Role, Status, Term};
use prometheus::{Encoder, Histogram, HistogramOpts, IntCounter, IntGauge, Registry, TextEncoder};

/// What the last status looked like, to notice transitions.
#[derive(Clone, Copy)]
struct Seen {
    role: Role,
    leader: Option<NodeId>,
    term: Term,
}

/// The metrics of one member.
pub struct Metrics {
    registry: Registry,
    leader_changes: IntCounter,
    elections: IntCounter,
    is_leader: IntGauge,
    has_leader: IntGauge,
    term: IntGauge,
    commit_index: IntGauge,
    applied_index: IntGauge,
    apply_lag: IntGauge,
    proposals_committed: IntCounter,
    proposals_failed: IntCounter,
    proposals_pending: IntGauge,
    commit_latency: Histogram,
    fsync_latency: Histogram,
    snapshots: IntCounter,
    /// Reads of the snapshot file that failed while the core built InstallSnapshot chunks.
    snapshot_read_errors: IntCounter,
    /// Driver-thread time per snapshot: everything the driver did for it (its encoding steps,
    /// with requests served between them, then handing the file to its writer and installing it).
    snapshot_driver: Histogram,
    /// The encoding alone: its steps on the driver thread, summed.
    snapshot_encode: Histogram,
    /// Writing and syncing the snapshot file (wherever that runs).
    snapshot_save: Histogram,
    /// Driver-thread time of a WAL write that rolled to a new segment.
    wal_roll: Histogram,
    /// Messages sent to peers, and the socket writes that carried them: a round's messages to
    /// one peer leave in one write, so their ratio shows how well rounds batch.
    peer_frames: IntCounter,
    peer_writes: IntCounter,
    /// The driver thread stopped (storage failure or shutdown): the member is unhealthy.
    stopped: IntGauge,
    seen: Mutex<Option<Seen>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("a valid metric name");
    registry.register(Box::new(c.clone())).expect("registered once");
    c
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("a valid metric name");
    registry.register(Box::new(g.clone())).expect("registered once");
    g
}

fn histogram(registry: &Registry, name: &str, help: &str) -> Histogram {
    // 0.5 ms to ~8 s, doubling: etcd's WAL fsync buckets, which suit commit latency too.
    let buckets = prometheus::exponential_buckets(0.0005, 2.0, 15).expect("valid buckets");
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets)).expect("a valid metric");
    registry.register(Box::new(h.clone())).expect("registered once");
    h
}

impl Metrics {
    /// A fresh set of metrics in its own registry.
    pub fn new() -> Self {
        let r = Registry::new();
        Self {
            leader_changes: counter(&r, "balsa_server_leader_changes_seen_total", "Leader changes seen."),
            elections: counter(&r, "balsa_server_elections_started_total", "Elections this member started."),
            is_leader: gauge(&r, "balsa_server_is_leader", "1 if this member is the leader."),
            has_leader: gauge(&r, "balsa_server_has_leader", "1 if this member knows a leader."),
            term: gauge(&r, "balsa_server_term", "The current Raft term."),
            commit_index: gauge(&r, "balsa_server_commit_index", "The highest log index known committed."),
            applied_index: gauge(&r, "balsa_server_applied_index", "The highest log index applied."),
            apply_lag: gauge(&r, "balsa_server_apply_lag", "Committed entries not yet applied."),
            proposals_committed: counter(
                &r,
                "balsa_server_proposals_committed_total",
                "Proposals made here and applied.",
            ),
            proposals_failed: counter(
                &r,
                "balsa_server_proposals_failed_total",
                "Proposals made here refused (no leader) or timed out.",
            ),
            proposals_pending: gauge(
                &r,
                "balsa_server_proposals_pending",
                "Proposals made here awaiting apply.",
            ),
            commit_latency: histogram(
                &r,
                "balsa_server_commit_duration_seconds",
                "From proposal to apply, at the proposing member.",
            ),
            fsync_latency: histogram(&r, "balsa_disk_wal_fsync_duration_seconds", "WAL syncs."),
            snapshots: counter(&r, "balsa_server_snapshots_saved_total", "Snapshots saved to disk."),
            snapshot_read_errors: counter(
                &r,
                "balsa_server_snapshot_read_errors_total",
                "Failed reads of the snapshot file while sending InstallSnapshot chunks (each retried).",
            ),
            snapshot_driver: histogram(
                &r,
                "balsa_server_snapshot_duration_seconds",
                "Driver-thread time spent on each snapshot, summed over its encoding steps.",
            ),
            snapshot_encode: histogram(
                &r,
                "balsa_server_snapshot_encode_duration_seconds",
                "Encoding the state machine for a snapshot (on the driver thread, in steps; summed).",
            ),
            snapshot_save: histogram(
                &r,
                "balsa_server_snapshot_save_duration_seconds",
                "Writing and syncing a snapshot file, temporary file to directory sync.",
            ),
            wal_roll: histogram(
                &r,
                "balsa_disk_wal_roll_duration_seconds",
                "Driver-thread time of a WAL write that started a new segment (the roll plus the batch's write).",
            ),
            peer_frames: counter(&r, "balsa_network_peer_sent_frames_total", "Messages sent to peers."),
            peer_writes: counter(
                &r,
                "balsa_network_peer_writes_total",
                "Socket writes to peers (each carries one or more messages).",
            ),
            stopped: gauge(&r, "balsa_server_stopped", "1 once the node stopped."),
            seen: Mutex::new(None),
            registry: r,
        }
    }

    /// The transport's totals (monotone), as counters.
    pub fn peer_sent(&self, sent: crate::transport::Sent) {
        self.peer_frames.inc_by(sent.frames.saturating_sub(self.peer_frames.get()));
        self.peer_writes.inc_by(sent.writes.saturating_sub(self.peer_writes.get()));
    }

    /// The core's count of failed snapshot reads (`Raft::snapshot_read_errors`, monotone for the
    /// node's life): counted, and logged when it grows.
    pub fn snapshot_read_errors(&self, total: u64) {
        let seen = self.snapshot_read_errors.get();
        if total > seen {
            self.snapshot_read_errors.inc_by(total - seen);
            tracing::warn!(failed_reads = total, "reading the snapshot file for a follower failed; retrying");
        }
    }

    /// Takes in the core's status after each round of the driver loop: gauges, and the
    /// transitions (leader changes, elections) with a log line for each.
    pub fn observe(&self, s: &Status, pending: usize) {
        self.term.set(s.current_term as i64);
        self.commit_index.set(s.commit_index as i64);
        self.applied_index.set(s.last_applied as i64);
        self.apply_lag.set(s.commit_index.saturating_sub(s.last_applied) as i64);
        self.is_leader.set(i64::from(s.role == Role::Leader));
        self.has_leader.set(i64::from(s.leader_id.is_some()));
        self.proposals_pending.set(pending as i64);
        let now = Seen { role: s.role, leader: s.leader_id, term: s.current_term };
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let before = seen.replace(now);
        if before.map(|b| (b.role, b.leader, b.term)) == Some((now.role, now.leader, now.term)) {
            return;
        }
        if now.leader.is_some() && before.and_then(|b| b.leader) != now.leader {
            self.leader_changes.inc();
            tracing::info!(member = s.id, leader = now.leader, term = now.term, "leader changed");
        }
        if before.map(|b| b.role) != Some(now.role) {
            match now.role {
                Role::Leader => tracing::info!(member = s.id, term = now.term, "became leader"),
                Role::Follower => {
                    tracing::info!(member = s.id, term = now.term, leader = now.leader, "became follower")
                }
                Role::Candidate => {
                    self.elections.inc();
                    tracing::info!(member = s.id, term = now.term, "started an election");
                }
                Role::PreCandidate => tracing::debug!(member = s.id, term = now.term, "asking for pre-votes"),
            }
        } else if now.role == Role::Candidate && before.map(|b| b.term) != Some(now.term) {
            // A candidate whose election timed out starts another in a new term.
            self.elections.inc();
        }
    }

    /// Times one WAL sync.
    pub fn time_fsync<T>(&self, sync: impl FnOnce() -> T) -> T {
        let start = Instant::now();
        let result = sync();
        self.fsync_latency.observe(start.elapsed().as_secs_f64());
        result
    }

    /// A proposal made here at `proposed_at` was applied.
    pub fn proposal_applied(&self, proposed_at: Instant) {
        self.proposals_committed.inc();
        self.commit_latency.observe(proposed_at.elapsed().as_secs_f64());
    }

    /// A proposal made here was refused or timed out.
    pub fn proposal_failed(&self) {
        self.proposals_failed.inc();
    }

    /// A snapshot was saved.
    pub fn snapshot_saved(&self) {
        self.snapshots.inc();
    }

    /// The driver spent `driver` on a snapshot, `encode` of it encoding the state machine.
    pub fn snapshot_driver_time(&self, driver: Duration, encode: Duration) {
        self.snapshot_driver.observe(driver.as_secs_f64());
        self.snapshot_encode.observe(encode.as_secs_f64());
    }

    /// A snapshot file took `took` to write and sync.
    pub fn snapshot_save_time(&self, took: Duration) {
        self.snapshot_save.observe(took.as_secs_f64());
    }

    /// A WAL write that rolled to a new segment took `took` on the driver thread.
    pub fn wal_roll_time(&self, took: Duration) {
        self.wal_roll.observe(took.as_secs_f64());
    }

    /// The node's driver stopped.
    pub fn node_stopped(&self) {
        self.stopped.set(1);
        self.is_leader.set(0);
        self.has_leader.set(0);
    }

    /// Everything, in Prometheus' text exposition format.
    pub fn encode(&self) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metrics; an error would leave a
        // partial page, which a scraper reports, rather than a panic in the server.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(role: Role, leader: Option<NodeId>, term: Term) -> Status {
        Status {
            id: 1,
            role,
            current_term: term,
            voted_for: None,
            leader_id: leader,
            commit_index: 7,
            last_applied: 5,
            last_index: 7,
            persisted_index: 7,
            snapshot_index: 0,
        }
    }

    #[test]
    fn transitions_are_counted_once() {
        let m = Metrics::new();
        m.observe(&status(Role::Follower, None, 1), 0);
        m.observe(&status(Role::Candidate, None, 2), 0);
        m.observe(&status(Role::Candidate, None, 3), 0);
        m.observe(&status(Role::Leader, Some(1), 3), 2);
        m.observe(&status(Role::Leader, Some(1), 3), 2);
        m.observe(&status(Role::Follower, Some(2), 4), 0);
        let text = m.encode();
        assert!(text.contains("balsa_server_elections_started_total 2"), "{text}");
        assert!(text.contains("balsa_server_leader_changes_seen_total 2"), "{text}");
        assert!(text.contains("balsa_server_apply_lag 2"), "{text}");
        assert!(text.contains("balsa_server_term 4"), "{text}");
        assert!(text.contains("balsa_server_is_leader 0"), "{text}");
    }
}
