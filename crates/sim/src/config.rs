//! Everything a simulated run depends on, derived from one seed.

use balsa_raft::rng::SplitMix64;
use balsa_raft::ReadMode;

use crate::history::Micros;

/// The parameters of one run. [`SimConfig::from_seed`] draws them, so a seed alone replays a run.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// The seed everything else derives from.
    pub seed: u64,
    /// Cluster size.
    pub nodes: usize,
    /// Concurrent clients.
    pub clients: usize,
    /// Registers the clients share (few, so operations contend).
    pub keys: u8,
    /// Length of the phase with faults.
    pub fault_phase_us: Micros,
    /// Length of the phase without faults, within which the cluster must converge.
    pub heal_phase_us: Micros,
    /// Nominal tick length of every server.
    pub tick_us: Micros,
    /// Per-server tick skew, in per mille of `tick_us` (0 when lease reads need equal clocks).
    pub tick_skew_per_mille: u64,
    /// Raft election timeout T.
    pub election_timeout_ticks: u64,
    /// Raft heartbeat interval.
    pub heartbeat_interval_ticks: u64,
    /// Whether servers run PreVote.
    pub pre_vote: bool,
    /// Whether servers run CheckQuorum (and lazy voters). Off in some seeds: safety must not
    /// depend on it, and without it deposed leaders linger, which is what stale reads need.
    pub check_quorum: bool,
    /// ReadIndex confirmation mode.
    pub read_mode: ReadMode,
    /// Raft flow control: in-flight window.
    pub max_inflight_msgs: usize,
    /// Raft flow control: bytes per AppendEntries.
    pub max_msg_bytes: usize,
    /// Snapshot after this many applied entries (`None`: never compact)...
    pub snapshot_every_entries: Option<u64>,
    /// ...or this many applied payload bytes.
    pub snapshot_every_bytes: u64,
    /// Chance a message is lost during the fault phase, per mille.
    pub loss_per_mille: u64,
    /// Chance a message is delivered twice, per mille.
    pub duplicate_per_mille: u64,
    /// Chance a message is delayed by up to `long_delay_us` (reordering), per mille.
    pub long_delay_per_mille: u64,
    /// Upper bound of a long delay.
    pub long_delay_us: Micros,
    /// Time between nemesis actions.
    pub nemesis_interval_us: (Micros, Micros),
    /// Log segment size of the simulated disks (small, so segments roll and get removed).
    pub segment_bytes: u64,
    /// Chance a disk read returns a flipped bit, per mille.
    pub read_flip_per_mille: u64,
    /// Whether the nemesis changes the membership (adds, removes, replaces servers). Only with
    /// PreVote or CheckQuorum on (see [`SimConfig::from_seed`]).
    pub reconfigure: bool,
    /// Highest node id the nemesis may add.
    pub max_nodes: usize,
    /// Bytes per InstallSnapshot chunk (small, so transfers span many lossy messages).
    pub snapshot_chunk_bytes: usize,
    /// Snapshot chunks in flight to one receiver.
    pub snapshot_inflight_chunks: usize,
    /// Whether leaders delegate snapshot transfers to up-to-date followers.
    pub delegate_snapshots: bool,
    /// Entries the log keeps before a snapshot's point.
    pub snapshot_catch_up_entries: u64,
    /// Egress bandwidth of each server: a message waits for those queued before it on the
    /// sender, then takes its size divided by this, then the latency.
    pub link_bytes_per_us: u64,
    /// Keep each server's log in memory (`MemStore`) instead of the real engine on a simulated
    /// disk: for scenarios with very large state and no crashes.
    pub memory_store: bool,
    /// Record a readable trace.
    pub trace: bool,
}

impl SimConfig {
    /// Draws a run's parameters from `seed`. `nodes` overrides the cluster size (else 3, 5 or 7).
    pub fn from_seed(seed: u64, nodes: Option<usize>) -> Self {
        let mut rng = SplitMix64::new(seed ^ 0x5EED_C0F1_6000_0001);
        let nodes = nodes.unwrap_or([3, 5, 5, 7][rng.range(0, 4) as usize]);
        let read_mode = if rng.chance(1, 4) { ReadMode::Lease } else { ReadMode::Safe };
        let mut cfg = Self {
            seed,
            nodes,
            clients: rng.range(2, 7) as usize,
            keys: rng.range(1, 5) as u8,
            fault_phase_us: 4_000_000,
            heal_phase_us: 4_000_000,
            tick_us: 10_000,
            tick_skew_per_mille: if read_mode == ReadMode::Lease { 0 } else { rng.range(0, 100) },
            election_timeout_ticks: 10,
            heartbeat_interval_ticks: 2,
            pre_vote: rng.chance(7, 8),
            read_mode,
            max_inflight_msgs: [1, 4, 64][rng.range(0, 3) as usize],
            max_msg_bytes: [60, 300, 64 << 10][rng.range(0, 3) as usize],
            snapshot_every_entries: [None, Some(20), Some(100)][rng.range(0, 3) as usize],
            loss_per_mille: [0, 10, 50, 150][rng.range(0, 4) as usize],
            duplicate_per_mille: [0, 20][rng.range(0, 2) as usize],
            long_delay_per_mille: [0, 50, 200][rng.range(0, 3) as usize],
            long_delay_us: 150_000,
            nemesis_interval_us: (50_000, 600_000),
            segment_bytes: [1_024, 8_192, 1 << 20][rng.range(0, 3) as usize],
            read_flip_per_mille: [0, 10, 50][rng.range(0, 3) as usize],
            check_quorum: read_mode == ReadMode::Lease || rng.chance(3, 4),
            snapshot_every_bytes: [1_000, 1 << 30][rng.range(0, 2) as usize],
            reconfigure: rng.chance(1, 2),
            max_nodes: 9,
            snapshot_chunk_bytes: [16, 256, 1 << 20][rng.range(0, 3) as usize],
            // Set below from max_inflight_msgs: no draw of its own, so every seed keeps the
            // configuration it had before this field existed.
            snapshot_inflight_chunks: 0,
            delegate_snapshots: rng.chance(1, 2),
            snapshot_catch_up_entries: [0, 10, 1024][rng.range(0, 3) as usize],
            link_bytes_per_us: 125,
            memory_store: false,
            trace: false,
        };
        // A removed server that missed its removal keeps timing out. Without PreVote and without
        // lazy voters (CheckQuorum) it deposes every leader, forever: the disruption thesis 4.2.3
        // describes, which those two exist to prevent. Membership changes run only with one on.
        cfg.reconfigure &= cfg.pre_vote || cfg.check_quorum;
        cfg.snapshot_inflight_chunks = cfg.max_inflight_msgs.min(8);
        cfg
    }
}
