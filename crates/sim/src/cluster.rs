//! The simulated cluster: servers running the real core over a simulated network and disk,
//! clients issuing reads and writes, and a nemesis injecting faults — all from one seed.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::path::PathBuf;

use balsa_raft::rng::SplitMix64;
use balsa_raft::{
    Config, EntryKind, GatedMessages, Membership, Message, NodeId, PersistBatch, ProposeError, Raft,
    ReadState, Role, Snapshot, SnapshotMeta,
};
use bytes::Bytes;

use crate::config::SimConfig;
use crate::durability::DurableShadow;
use crate::history::{check_history, Micros, Op, OpKind};
use crate::invariants::SafetyChecker;
use crate::kv::{Applied, ClientId, KvStore, Put};
use crate::network::Partition;
use crate::simfs::SimFs;

mod reconfig;
pub mod scenario;
use balsa_storage::{DiskStore, LogStore, MemStore, StoreOptions, WalOptions};

/// Why a run failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// When, in simulated microseconds.
    pub at_us: Micros,
    /// What broke.
    pub what: String,
}

/// Figures from a run that passed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Events processed.
    pub events: u64,
    /// Leaders elected.
    pub elections: usize,
    /// Highest committed index.
    pub committed_index: u64,
    /// Client operations completed.
    pub ops_completed: usize,
    /// Faults injected.
    pub faults: usize,
    /// Restarts whose recovery failed (a damaged read) and were retried.
    pub failed_recoveries: usize,
    /// Crashes that tore an unsynced write.
    pub torn_writes: u64,
    /// Disk reads that returned a flipped bit.
    pub read_flips: u64,
    /// Membership changes the nemesis got a leader to accept.
    pub reconfigurations: usize,
}

/// A client request as it travels to a server.
#[derive(Clone, Copy, Debug)]
struct Request {
    client: ClientId,
    seq: u32,
    key: u8,
    /// `Some(value)` for a write, `None` for a read.
    put: Option<u64>,
}

#[derive(Clone, Copy, Debug)]
enum Reply {
    Done { seq: u32, read: Option<u64> },
    Redirect { seq: u32, hint: Option<NodeId> },
}

#[derive(Debug)]
enum Event {
    Tick(NodeId),
    Deliver(Message),
    PersistDone { node: NodeId, incarnation: u64 },
    Request { node: NodeId, request: Request },
    Reply { client: ClientId, reply: Reply },
    ClientTimeout { client: ClientId, seq: u32, attempt: u32 },
    ClientNext(ClientId),
    Nemesis,
    Restart(NodeId),
    Heal,
}

/// A write of one Ready waiting for its simulated fsync.
struct InflightWrite {
    batch: PersistBatch,
    gated: GatedMessages,
}

/// One simulated server: the core, its disk, its state machine and the requests it serves.
pub(crate) struct SimNode {
    /// The configuration it boots with when its disk holds none: the initial cluster for
    /// founding members, empty for servers added later (so they cannot campaign until the log
    /// tells them what they are).
    founding: Membership,
    /// `None` while crashed.
    raft: Option<Raft>,
    /// The server's own simulated disk; survives crashes (minus what was not synced).
    fs: SimFs,
    /// The real storage engine over that disk (or, in memory-store scenarios, a `MemStore`);
    /// `None` while crashed.
    store: Option<NodeStore>,
    /// What this server has synced, to check messages that promise durability.
    durable: DurableShadow,
    kv: KvStore,
    /// Bumped at every crash, so completions of writes from before the crash are ignored.
    incarnation: u64,
    inflight: Option<InflightWrite>,
    /// Writes to answer once applied, by (client, seq).
    waiting_puts: BTreeMap<(ClientId, u32), ()>,
    /// Reads waiting for their ReadState, by context, with the highest index known committed
    /// anywhere when the read was issued: the read index must not be lower.
    reads_by_context: BTreeMap<u64, (Request, u64)>,
    /// Reads with a read index, waiting to be applied up to it.
    reads_ready: Vec<(u64, Request)>,
    next_context: u64,
    tick_us: Micros,
    /// Crash right after the next write reaches the disk and before it is synced (the window a
    /// torn write needs), then restart after this long.
    crash_after_next_write: Option<Micros>,
}

struct SimClient {
    id: ClientId,
    seq: u32,
    target: NodeId,
    attempt: u32,
    /// The operation in progress: its request and its place in the history.
    current: Option<(Request, usize)>,
}

/// A cluster under simulation.
pub struct Cluster {
    cfg: SimConfig,
    now_us: Micros,
    queue: BinaryHeap<Reverse<(Micros, u64)>>,
    events: BTreeMap<u64, Event>,
    next_event: u64,
    nodes: BTreeMap<NodeId, SimNode>,
    node_ids: Vec<NodeId>,
    clients: Vec<SimClient>,
    history: Vec<Op>,
    /// Write order per register, as the committed log applied it.
    effective: BTreeMap<u8, Vec<u64>>,
    applied_through: u64,
    partition: Partition,
    healed: bool,
    clients_stop_us: Micros,
    net_rng: SplitMix64,
    nemesis_rng: SplitMix64,
    client_rng: SplitMix64,
    checker: SafetyChecker,
    /// When each server's network interface is next free (egress queueing): the lane of Raft
    /// messages, and the bulk lane of snapshot chunks.
    egress_free_at: BTreeMap<NodeId, (Micros, Micros)>,
    /// Bytes each server has sent.
    bytes_sent: BTreeMap<NodeId, u64>,
    trace: Vec<String>,
    summary: Summary,
}

const CLIENT_TIMEOUT_US: Micros = 300_000;

/// The storage a simulated server runs on.
enum NodeStore {
    Disk(Box<DiskStore<SimFs>>),
    Memory(MemStore),
}

impl NodeStore {
    fn log_store(&mut self) -> &mut dyn LogStore {
        match self {
            Self::Disk(d) => d.as_mut(),
            Self::Memory(m) => m,
        }
    }
}

impl SimNode {
    fn new(cfg: &SimConfig, id: NodeId, founding: Membership) -> Self {
        let mut setup = SplitMix64::new(cfg.seed ^ 0x0123_4567_89AB_CDEF ^ id);
        let skew = cfg.tick_us * cfg.tick_skew_per_mille / 1000;
        let tick_us =
            if skew == 0 { cfg.tick_us } else { setup.range(cfg.tick_us - skew, cfg.tick_us + skew + 1) };
        Self {
            founding,
            raft: None,
            fs: SimFs::new(cfg.seed ^ (id << 40) ^ 0xD15C, cfg.read_flip_per_mille),
            store: None,
            durable: DurableShadow::default(),
            kv: KvStore::default(),
            incarnation: 0,
            inflight: None,
            waiting_puts: BTreeMap::new(),
            reads_by_context: BTreeMap::new(),
            reads_ready: Vec::new(),
            next_context: 0,
            tick_us,
            crash_after_next_write: None,
        }
    }
}

impl Cluster {
    /// Builds the cluster of a run; nothing happens until [`Cluster::run`].
    pub fn new(cfg: SimConfig) -> Self {
        let node_ids: Vec<NodeId> = (1..=cfg.nodes as NodeId).collect();
        let membership = Membership::new(node_ids.iter().copied());
        let mut nodes = BTreeMap::new();
        for &id in &node_ids {
            nodes.insert(id, SimNode::new(&cfg, id, membership.clone()));
        }
        let clients = (0..cfg.clients as ClientId)
            .map(|id| SimClient {
                id: id + 1,
                seq: 0,
                target: node_ids[id as usize % node_ids.len()],
                attempt: 0,
                current: None,
            })
            .collect();
        Self {
            clients_stop_us: cfg.fault_phase_us + cfg.heal_phase_us / 2,
            net_rng: SplitMix64::new(cfg.seed ^ 0x4E45_5400_0000_0001),
            nemesis_rng: SplitMix64::new(cfg.seed ^ 0x4E45_4D00_0000_0002),
            client_rng: SplitMix64::new(cfg.seed ^ 0x434C_4900_0000_0003),
            cfg,
            now_us: 0,
            queue: BinaryHeap::new(),
            events: BTreeMap::new(),
            next_event: 0,
            nodes,
            node_ids,
            clients,
            history: Vec::new(),
            effective: BTreeMap::new(),
            applied_through: 0,
            partition: Partition::healed(),
            healed: false,
            checker: SafetyChecker::default(),
            egress_free_at: BTreeMap::new(),
            bytes_sent: BTreeMap::new(),
            trace: Vec::new(),
            summary: Summary::default(),
        }
    }

    /// The trace recorded so far (empty unless `cfg.trace`).
    pub fn trace(&self) -> &[String] {
        &self.trace
    }

    fn log(&mut self, line: impl FnOnce() -> String) {
        if self.cfg.trace {
            let t = self.now_us;
            self.trace.push(format!("{:>6}.{:03}ms {}", t / 1000, t % 1000, line()));
        }
    }

    fn schedule(&mut self, delay_us: Micros, event: Event) {
        let id = self.next_event;
        self.next_event += 1;
        self.queue.push(Reverse((self.now_us + delay_us, id)));
        self.events.insert(id, event);
    }

    /// Runs the fault phase, then the heal phase, checking safety after every event and
    /// convergence at the end.
    pub fn run(&mut self) -> Result<Summary, Violation> {
        self.start();
        let end_us = self.cfg.fault_phase_us + self.cfg.heal_phase_us;
        while self.step_until(end_us)? {}
        self.now_us = end_us;
        self.final_checks().map_err(|what| Violation { at_us: end_us, what })?;
        Ok(self.summarize())
    }

    /// Boots the servers and schedules ticks, clients, the nemesis and the heal.
    fn start(&mut self) {
        let ids = self.node_ids.clone();
        for id in ids {
            self.start_node(id);
            let phase = self.net_rng.range(0, self.cfg.tick_us);
            self.schedule(phase, Event::Tick(id));
        }
        for c in 0..self.clients.len() {
            let id = self.clients[c].id;
            let start = self.client_rng.range(0, 50_000);
            self.schedule(start, Event::ClientNext(id));
        }
        self.schedule(self.cfg.nemesis_interval_us.0, Event::Nemesis);
        self.schedule(self.cfg.fault_phase_us, Event::Heal);
    }

    /// Handles the next event if it is due by `end_us`. Returns whether one was handled.
    fn step_until(&mut self, end_us: Micros) -> Result<bool, Violation> {
        let Some(&Reverse((at, id))) = self.queue.peek() else { return Ok(false) };
        if at > end_us {
            return Ok(false);
        }
        self.queue.pop();
        self.now_us = at;
        let event = self.events.remove(&id).expect("scheduled event");
        self.summary.events += 1;
        self.handle(event).map_err(|what| Violation { at_us: self.now_us, what })?;
        Ok(true)
    }

    fn summarize(&mut self) -> Summary {
        self.summary.elections = self.checker.elections();
        self.summary.committed_index = self.checker.committed_index();
        self.summary.ops_completed = self.history.iter().filter(|o| o.completed_us.is_some()).count();
        for node in self.nodes.values() {
            let (torn, flips) = node.fs.fault_counts();
            self.summary.torn_writes += torn;
            self.summary.read_flips += flips;
        }
        self.summary.clone()
    }

    fn handle(&mut self, event: Event) -> Result<(), String> {
        let touched = match event {
            Event::Tick(id) => {
                let tick_us = self.nodes[&id].tick_us;
                self.schedule(tick_us, Event::Tick(id));
                self.with_raft(id, Raft::tick);
                Some(id)
            }
            Event::Deliver(m) => {
                let to = m.to;
                self.log(|| match &m.body {
                    balsa_raft::MessageBody::InstallSnapshot(c) => format!(
                        "n{} -> n{} InstallSnapshot t{} (leader n{}, snapshot {}, bytes {}..{}{})",
                        m.from,
                        m.to,
                        m.term,
                        c.leader,
                        c.meta.last_included_index,
                        c.offset,
                        c.offset + c.data.len() as u64,
                        if c.done { ", last" } else { "" }
                    ),
                    balsa_raft::MessageBody::AppendEntries(a) if !a.entries.is_empty() => format!(
                        "n{} -> n{} AppendEntries t{} (prev {}/t{}, entries {}..={}, commit {})",
                        m.from,
                        m.to,
                        m.term,
                        a.prev_log_index,
                        a.prev_log_term,
                        a.entries[0].index,
                        a.entries[a.entries.len() - 1].index,
                        a.leader_commit
                    ),
                    balsa_raft::MessageBody::InstallSnapshotResponse(r) => format!(
                        "n{} -> n{} InstallSnapshotResp t{} (snapshot {}, received {}{})",
                        m.from,
                        m.to,
                        m.term,
                        r.index,
                        r.received,
                        if r.rewind { ", rewind" } else { "" }
                    ),
                    balsa_raft::MessageBody::AppendEntriesResponse(r) => format!(
                        "n{} -> n{} AppendEntriesResp t{} ({})",
                        m.from,
                        m.to,
                        m.term,
                        if r.success {
                            format!("match {}", r.match_index)
                        } else {
                            format!("reject prev {} hint {:?}", r.rejected_index, r.hint)
                        }
                    ),
                    _ => format!("n{} -> n{} {} t{}", m.from, m.to, m.kind_name(), m.term),
                });
                self.with_raft(to, |r| r.step(m).expect("simulator addresses messages correctly"));
                Some(to)
            }
            Event::PersistDone { node, incarnation } => {
                self.persist_done(node, incarnation)?;
                Some(node)
            }
            Event::Request { node, request } => {
                self.serve_request(node, request);
                Some(node)
            }
            Event::Reply { client, reply } => {
                self.client_reply(client, reply);
                None
            }
            Event::ClientTimeout { client, seq, attempt } => {
                self.client_timeout(client, seq, attempt);
                None
            }
            Event::ClientNext(client) => {
                self.client_next(client);
                None
            }
            Event::Nemesis => self.nemesis(),
            Event::Restart(id) => {
                self.start_node(id);
                Some(id)
            }
            Event::Heal => {
                self.heal()?;
                None
            }
        };
        if let Some(id) = touched {
            self.drive(id)?;
        }
        Ok(())
    }

    fn with_raft(&mut self, id: NodeId, f: impl FnOnce(&mut Raft)) {
        if let Some(raft) = self.nodes.get_mut(&id).and_then(|n| n.raft.as_mut()) {
            f(raft);
        }
    }

    // ----- servers --------------------------------------------------------------------------

    fn raft_config(&self, id: NodeId, incarnation: u64) -> Config {
        let mut c = Config::new(id);
        c.election_timeout_ticks = self.cfg.election_timeout_ticks;
        c.heartbeat_interval_ticks = self.cfg.heartbeat_interval_ticks;
        c.pre_vote = self.cfg.pre_vote;
        c.check_quorum = self.cfg.check_quorum;
        c.read_mode = self.cfg.read_mode;
        c.max_inflight_msgs = self.cfg.max_inflight_msgs;
        c.max_msg_bytes = self.cfg.max_msg_bytes;
        c.snapshot_chunk_bytes = self.cfg.snapshot_chunk_bytes;
        c.snapshot_inflight_chunks = self.cfg.snapshot_inflight_chunks;
        c.delegate_snapshots = self.cfg.delegate_snapshots;
        c.snapshot_catch_up_entries = self.cfg.snapshot_catch_up_entries;
        c.seed = self.cfg.seed ^ (id << 32) ^ incarnation;
        c
    }

    fn store_options(&self) -> StoreOptions {
        StoreOptions { wal: WalOptions::with_segment_bytes(self.cfg.segment_bytes), keep_snapshots: 2 }
    }

    /// Boots (or reboots) a server from its disk. If recovery fails (a read came back damaged,
    /// which the checksums catch), the server stays down and tries again a little later.
    fn start_node(&mut self, id: NodeId) {
        let incarnation = self.nodes[&id].incarnation;
        let config = self.raft_config(id, incarnation);
        let options = self.store_options();
        let node = self.nodes.get_mut(&id).expect("node");
        if node.raft.is_some() {
            return;
        }
        let membership = node.founding.clone();
        let dir = PathBuf::from(format!("/n{id}"));
        let recovered = if self.cfg.memory_store {
            let store = MemStore::default();
            store.initial_state(&membership).map(|initial| (NodeStore::Memory(store), initial))
        } else {
            DiskStore::open_with(node.fs.clone(), &dir, options).and_then(|store| {
                store.initial_state(&membership).map(|initial| (NodeStore::Disk(Box::new(store)), initial))
            })
        };
        let (store, initial) = match recovered {
            Ok(pair) => pair,
            Err(e) => {
                assert!(
                    !matches!(e, balsa_storage::StorageError::MissingSegment { .. }),
                    "n{id}: recovery lost a segment: {e}"
                );
                self.summary.failed_recoveries += 1;
                self.log(|| format!("n{id} cannot recover yet: {e}"));
                let retry = self.nemesis_rng.range(10_000, 100_000);
                self.schedule(retry, Event::Restart(id));
                return;
            }
        };
        node.kv = match &initial.snapshot {
            Some(s) => KvStore::decode(&s.data.to_bytes().expect("the simulator keeps snapshots in memory")),
            None => KvStore::default(),
        };
        let torn = match &store {
            NodeStore::Disk(d) => d.torn_tail().map(|t| {
                format!(
                    ", cut a torn write at {}:{} ({} bytes)",
                    t.path.display(),
                    t.offset,
                    t.discarded_bytes
                )
            }),
            NodeStore::Memory(_) => None,
        };
        node.durable = DurableShadow::recovered(&initial);
        node.raft = Some(Raft::new(config, initial).expect("valid config"));
        node.store = Some(store);
        self.log(|| format!("n{id} starts (incarnation {incarnation}){}", torn.unwrap_or_default()));
    }

    fn crash(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).expect("node");
        if node.raft.take().is_none() {
            return;
        }
        assert!(!self.cfg.memory_store, "memory-store runs keep nothing across a crash");
        node.incarnation += 1;
        node.inflight = None;
        node.crash_after_next_write = None;
        node.store = None;
        node.fs.crash();
        node.kv = KvStore::default();
        node.waiting_puts.clear();
        node.reads_by_context.clear();
        node.reads_ready.clear();
        self.summary.faults += 1;
        self.log(|| format!("n{id} CRASHES, losing unsynced writes"));
    }

    /// Carries out Readies until the server has nothing to do or waits for its disk.
    fn drive(&mut self, id: NodeId) -> Result<(), String> {
        loop {
            let node = self.nodes.get_mut(&id).expect("node");
            let Some(raft) = node.raft.as_mut() else { return Ok(()) };
            if node.inflight.is_some() || !raft.has_ready() {
                break;
            }
            let mut ready = raft.ready();
            if let Some(ss) = ready.soft_state {
                self.log(|| {
                    format!("n{id} is {:?} in term {} (leader {:?})", ss.role, ss.term, ss.leader_id)
                });
            }
            let node = self.nodes.get_mut(&id).expect("node");
            let raft = node.raft.as_ref().expect("running");
            self.checker
                .observe_written(id, raft, &ready.persist.entries)
                .map_err(|v| format!("{}: {}", v.property, v.detail))?;
            for m in std::mem::take(&mut ready.messages) {
                let raft = self.nodes[&id].raft.as_ref().expect("running");
                self.nodes[&id]
                    .durable
                    .check_send(raft, &m)
                    .map_err(|e| format!("Persistence contract: {e}"))?;
                self.send(m);
            }
            self.apply(id, std::mem::take(&mut ready.committed_entries))?;
            self.take_read_states(id, std::mem::take(&mut ready.read_states))?;
            let inflight =
                InflightWrite { batch: std::mem::take(&mut ready.persist), gated: ready.gated_messages };
            let node = self.nodes.get_mut(&id).expect("node");
            let store = node.store.as_mut().expect("a running server has its store");
            store
                .log_store()
                .write(&inflight.batch)
                .map_err(|e| format!("n{id}: storage refused a Ready's batch: {e}"))?;
            if inflight.batch.is_empty() {
                // Nothing reached the disk; a crash here would tear nothing.
            } else if let Some(down_us) = node.crash_after_next_write.take() {
                self.log(|| format!("n{id} crashes between a write and its sync"));
                self.crash(id);
                self.schedule(down_us, Event::Restart(id));
                return Ok(());
            }
            let incarnation = node.incarnation;
            node.inflight = Some(inflight);
            let fsync_us = self.net_rng.range(50, 2_000);
            self.schedule(fsync_us, Event::PersistDone { node: id, incarnation });
        }
        self.serve_ready_reads(id);
        self.maybe_snapshot(id);
        let raft = self.nodes[&id].raft.as_ref().expect("running");
        self.checker.check_server(raft).map_err(|v| format!("{}: {}", v.property, v.detail))
    }

    /// The simulated fsync finished: the batch is on disk; release what waited for it.
    fn persist_done(&mut self, id: NodeId, incarnation: u64) -> Result<(), String> {
        let node = self.nodes.get_mut(&id).expect("node");
        if node.incarnation != incarnation || node.raft.is_none() {
            return Ok(());
        }
        let write = node.inflight.take().expect("a write was in flight");
        let store = node.store.as_mut().expect("a running server has its store");
        // As the server does: a batch that only moves the commit index is left unsynced (it
        // reaches the disk with the next synced batch, or is lost in a crash).
        if write.batch.must_sync() {
            store.log_store().sync().map_err(|e| format!("n{id}: sync failed: {e}"))?;
            node.durable.synced(&write.batch);
        }
        let installed = write.batch.snapshot.as_ref().map(|s| {
            let data = s.data.to_bytes().expect("the simulator keeps snapshots in memory");
            node.kv = KvStore::decode(&data);
            // As the server does, hand the core the stored copy in place of the one it
            // assembled (here: another buffer with the same bytes), mid-transfer or not.
            (s.meta.clone(), bytes::Bytes::copy_from_slice(&data))
        });
        let receipt = write.batch.durable();
        let gated = write.gated.release(&receipt);
        let raft = node.raft.as_mut().expect("running");
        let installed = installed.map(|(meta, stored)| {
            // (Refused if the core has moved on to a newer snapshot meanwhile.)
            raft.replace_snapshot_data(&meta, stored.into());
            meta.last_included_index
        });
        for m in &gated {
            node.durable.check_send(raft, m).map_err(|e| format!("Persistence contract: {e}"))?;
        }
        raft.advance(receipt);
        if let Some(index) = installed {
            self.log(|| format!("n{id} installed snapshot up to {index}"));
        }
        for m in gated {
            self.send(m);
        }
        Ok(())
    }

    fn apply(&mut self, id: NodeId, entries: Vec<balsa_raft::Entry>) -> Result<(), String> {
        for e in entries {
            let term = self.nodes[&id].raft.as_ref().map_or(0, Raft::current_term);
            self.checker
                .observe_applied(id, term, &e)
                .map_err(|v| format!("{}: {}", v.property, v.detail))?;
            let node = self.nodes.get_mut(&id).expect("node");
            let put = match e.kind {
                EntryKind::Noop | EntryKind::ConfChange => None,
                EntryKind::Normal => Some(Put::decode(&e.data).ok_or("undecodable command in the log")?),
            };
            let Some(put) = put else {
                node.kv.skip(e.index);
                continue;
            };
            let outcome = node.kv.apply(e.index, &put);
            if outcome == Applied::Written && e.index > self.applied_through {
                self.effective.entry(put.key).or_default().push(put.value);
            }
            self.applied_through = self.applied_through.max(e.index);
            let node = self.nodes.get_mut(&id).expect("node");
            if node.waiting_puts.remove(&(put.client, put.seq)).is_some() {
                let reply = Reply::Done { seq: put.seq, read: None };
                self.reply(put.client, reply);
            }
        }
        Ok(())
    }

    fn take_read_states(&mut self, id: NodeId, states: Vec<ReadState>) -> Result<(), String> {
        for rs in states {
            let context = u64::from_be_bytes(rs.context[..8].try_into().expect("8-byte context"));
            let node = self.nodes.get_mut(&id).expect("node");
            let Some((request, known_committed)) = node.reads_by_context.remove(&context) else { continue };
            match rs.result {
                // Thesis 6.4: the read index is at least every index committed before the read
                // began, or the read could miss a completed write.
                Ok(index) if index < known_committed => {
                    return Err(format!(
                        "ReadIndex: n{id} served a read at index {index}, but {known_committed} was committed before it was issued"
                    ));
                }
                Ok(index) => node.reads_ready.push((index, request)),
                Err(_) => {
                    let hint = node.raft.as_ref().and_then(Raft::leader_id);
                    self.reply(request.client, Reply::Redirect { seq: request.seq, hint });
                }
            }
        }
        Ok(())
    }

    /// Thesis 6.4 step 4: answer a read once the state machine has applied its read index.
    fn serve_ready_reads(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).expect("node");
        let applied = node.kv.applied_index;
        let (ready, waiting): (Vec<_>, Vec<_>) = node.reads_ready.drain(..).partition(|(i, _)| *i <= applied);
        node.reads_ready = waiting;
        let answers: Vec<_> =
            ready.into_iter().map(|(_, r)| (r, node.kv.values.get(&r.key).copied())).collect();
        for (r, value) in answers {
            self.reply(r.client, Reply::Done { seq: r.seq, read: value });
        }
    }

    /// Takes a snapshot at the server's applied index now, whatever the policy says. Returns
    /// whether it did (not while a Ready's entries are still being applied).
    fn snapshot_now(&mut self, id: NodeId) -> bool {
        let node = self.nodes.get_mut(&id).expect("node");
        let raft = node.raft.as_mut().expect("running");
        let applied = node.kv.applied_index;
        let last_snapshot = raft.latest_snapshot().map_or(0, |(meta, _)| meta.last_included_index);
        if applied <= last_snapshot || applied != raft.status().last_applied {
            return false;
        }
        let term = raft.term_at(applied).expect("applied entry in the log");
        let meta = SnapshotMeta {
            last_included_index: applied,
            last_included_term: term,
            membership: raft.membership_at(applied),
        };
        let snapshot = Snapshot { meta, data: node.kv.encode().into() };
        // The snapshot is durable before the core drops the log prefix it covers.
        let store = node.store.as_mut().expect("a running server has its store");
        if let Err(e) = store.log_store().save_snapshot(&snapshot) {
            panic!("n{id}: saving a snapshot failed: {e}");
        }
        raft.snapshot_taken(snapshot).expect("snapshot of applied state");
        node.durable.compacted(applied);
        true
    }

    /// Section 7: each server snapshots on its own once the applied log since its last snapshot
    /// exceeds a number of entries or of bytes.
    fn maybe_snapshot(&mut self, id: NodeId) {
        let Some(every) = self.cfg.snapshot_every_entries else { return };
        let raft = self.nodes[&id].raft.as_ref().expect("running");
        if raft.snapshot_due(every, self.cfg.snapshot_every_bytes).is_some() && self.snapshot_now(id) {
            self.log(|| format!("n{id} compacted its log"));
        }
    }

    // ----- network --------------------------------------------------------------------------

    fn send(&mut self, m: Message) {
        // Every message crosses the wire format, as between real servers.
        let m = match Message::decode(m.encode()) {
            Ok(decoded) if decoded == m => decoded,
            other => panic!("wire format does not round-trip {m:?}: {other:?}"),
        };
        if self.partition.blocks(m.from, m.to) {
            return;
        }
        if !self.healed && self.net_rng.chance(self.cfg.loss_per_mille, 1000) {
            return;
        }
        let copies =
            if !self.healed && self.net_rng.chance(self.cfg.duplicate_per_mille, 1000) { 2 } else { 1 };
        // The sender's network interface sends one message at a time: a message waits for the
        // ones queued before it, then takes its size over the bandwidth, then the latency.
        // Snapshot chunks travel in a bulk lane that Raft's own messages overtake (the transport
        // streams snapshots apart so heartbeats never wait behind them), sharing the bandwidth.
        let size = m.size_bytes() as u64;
        *self.bytes_sent.entry(m.from).or_default() += size;
        let transmit_us = size / self.cfg.link_bytes_per_us;
        let lanes = self.egress_free_at.entry(m.from).or_default();
        let now = self.now_us;
        let done_at = if matches!(m.body, balsa_raft::MessageBody::InstallSnapshot(_)) {
            let start = lanes.1.max(lanes.0).max(now);
            lanes.1 = start + transmit_us;
            lanes.1
        } else {
            let start = lanes.0.max(now);
            lanes.0 = start + transmit_us;
            // The bulk lane loses the time this message used.
            lanes.1 = lanes.1.max(now) + transmit_us;
            lanes.0
        };
        let queued_and_sent = done_at - now;
        for _ in 0..copies {
            let delay = queued_and_sent + self.message_delay();
            self.schedule(delay, Event::Deliver(m.clone()));
        }
    }

    fn message_delay(&mut self) -> Micros {
        if !self.healed && self.net_rng.chance(self.cfg.long_delay_per_mille, 1000) {
            self.net_rng.range(1_000, self.cfg.long_delay_us)
        } else {
            self.net_rng.range(100, 1_500)
        }
    }

    // ----- clients --------------------------------------------------------------------------

    fn client_next(&mut self, client: ClientId) {
        if self.now_us >= self.clients_stop_us {
            return;
        }
        let keys = self.cfg.keys;
        let is_put = self.client_rng.chance(3, 5);
        let key = self.client_rng.range(0, u64::from(keys)) as u8;
        let c = &mut self.clients[client as usize - 1];
        c.seq += 1;
        c.attempt = 0;
        let value = (u64::from(c.id) << 32) | u64::from(c.seq);
        let request = Request { client, seq: c.seq, key, put: is_put.then_some(value) };
        let kind = if is_put { OpKind::Put { value } } else { OpKind::Get { result: None } };
        self.history.push(Op { client, key, kind, invoked_us: self.now_us, completed_us: None });
        c.current = Some((request, self.history.len() - 1));
        self.log(|| format!("client {client} invokes {request:?}"));
        self.send_request(client);
    }

    fn send_request(&mut self, client: ClientId) {
        let c = &self.clients[client as usize - 1];
        let Some((request, _)) = c.current else { return };
        let (node, seq, attempt) = (c.target, c.seq, c.attempt);
        let delay = self.client_rng.range(100, 2_000);
        self.schedule(delay, Event::Request { node, request });
        self.schedule(CLIENT_TIMEOUT_US, Event::ClientTimeout { client, seq, attempt });
    }

    fn serve_request(&mut self, id: NodeId, request: Request) {
        let node = self.nodes.get_mut(&id).expect("node");
        let Some(raft) = node.raft.as_mut() else { return };
        let outcome = match request.put {
            Some(value) => {
                let put = Put { client: request.client, seq: request.seq, key: request.key, value };
                raft.propose(put.encode()).map(|_| {
                    node.waiting_puts.insert((request.client, request.seq), ());
                })
            }
            None => {
                let context = node.next_context;
                node.next_context += 1;
                let known_committed = self.checker.committed_index();
                match raft.read_index(Bytes::copy_from_slice(&context.to_be_bytes())) {
                    Ok(()) => {
                        node.reads_by_context.insert(context, (request, known_committed));
                        Ok(())
                    }
                    Err(e) => Err(ProposeError::NotLeader {
                        leader_hint: match e {
                            balsa_raft::ReadIndexError::NotLeader { leader_hint } => leader_hint,
                        },
                    }),
                }
            }
        };
        if let Err(e) = outcome {
            let hint = match e {
                ProposeError::NotLeader { leader_hint } => leader_hint,
                ProposeError::TransferInProgress { .. } => None,
            };
            self.reply(request.client, Reply::Redirect { seq: request.seq, hint });
        }
    }

    fn reply(&mut self, client: ClientId, reply: Reply) {
        let delay = self.client_rng.range(100, 2_000);
        self.schedule(delay, Event::Reply { client, reply });
    }

    fn client_reply(&mut self, client: ClientId, reply: Reply) {
        let c = &mut self.clients[client as usize - 1];
        let Some((request, op)) = c.current else { return };
        match reply {
            Reply::Done { seq, read } if seq == request.seq => {
                c.current = None;
                let entry = &mut self.history[op];
                entry.completed_us = Some(self.now_us);
                if let OpKind::Get { result } = &mut entry.kind {
                    *result = Some(read);
                }
                self.log(|| format!("client {client} completes seq {seq}: read {read:?}"));
                let think = self.client_rng.range(0, 20_000);
                self.schedule(think, Event::ClientNext(client));
            }
            Reply::Redirect { seq, hint } if seq == request.seq => {
                c.attempt += 1;
                c.target = match hint {
                    Some(h) => h,
                    None => self.node_ids[self.client_rng.range(0, self.node_ids.len() as u64) as usize],
                };
                let backoff = self.client_rng.range(1_000, 20_000);
                let attempt = c.attempt;
                self.schedule(backoff, Event::ClientTimeout { client, seq, attempt });
            }
            _ => {}
        }
    }

    /// No answer in time (or a redirect's back-off ended): retry the same request, same
    /// sequence number, so a write that did commit is not applied twice.
    fn client_timeout(&mut self, client: ClientId, seq: u32, attempt: u32) {
        let c = &mut self.clients[client as usize - 1];
        if c.seq != seq || c.attempt != attempt || c.current.is_none() {
            return;
        }
        c.attempt += 1;
        if self.client_rng.chance(1, 2) {
            c.target = self.node_ids[self.client_rng.range(0, self.node_ids.len() as u64) as usize];
        }
        self.send_request(client);
    }

    // ----- nemesis --------------------------------------------------------------------------

    fn leader(&self) -> Option<NodeId> {
        self.nodes
            .values()
            .filter_map(|n| n.raft.as_ref())
            .filter(|r| r.role() == Role::Leader)
            .max_by_key(|r| r.current_term())
            .map(Raft::id)
    }

    fn random_node(&mut self) -> NodeId {
        self.node_ids[self.nemesis_rng.range(0, self.node_ids.len() as u64) as usize]
    }

    /// One fault. Returns the server whose Ready must be carried out, if any.
    fn nemesis(&mut self) -> Option<NodeId> {
        if self.healed {
            return None;
        }
        let (lo, hi) = self.cfg.nemesis_interval_us;
        let next = self.nemesis_rng.range(lo, hi);
        self.schedule(next, Event::Nemesis);
        let victim = match self.leader() {
            Some(l) if self.nemesis_rng.chance(1, 2) => l,
            _ => self.random_node(),
        };
        if self.cfg.reconfigure && self.nemesis_rng.chance(1, 3) {
            return self.reconfigure();
        }
        match self.nemesis_rng.range(0, 10) {
            0 | 1 => {
                self.partition = Partition::healed();
                self.log(|| "nemesis heals the network".into());
                return None;
            }
            2 | 3 => {
                let down = self.nemesis_rng.range(0, 800_000);
                let running = self.nodes[&victim].raft.is_some();
                if running && self.nemesis_rng.chance(1, 2) {
                    self.nodes.get_mut(&victim).expect("node").crash_after_next_write = Some(down);
                    self.log(|| {
                        format!("nemesis will crash n{victim} after its next write, before the sync")
                    });
                } else {
                    self.crash(victim);
                    self.schedule(down, Event::Restart(victim));
                }
                return None;
            }
            4 => {
                let to = self.random_node();
                self.with_raft(victim, |r| {
                    let _ = r.transfer_leader(to);
                });
                self.log(|| format!("nemesis asks n{victim} to transfer leadership to n{to}"));
                return Some(victim);
            }
            _ => {}
        }
        self.partition = self.random_partition(victim);
        self.summary.faults += 1;
        let p = self.partition.to_string();
        self.log(|| format!("nemesis partitions: {p}"));
        None
    }

    fn random_partition(&mut self, victim: NodeId) -> Partition {
        let nodes = self.node_ids.clone();
        let other = loop {
            let n = self.random_node();
            if n != victim {
                break n;
            }
        };
        match self.nemesis_rng.range(0, 7) {
            0 => Partition::isolate(&nodes, victim),
            1 => {
                let mut side = std::collections::BTreeSet::new();
                let minority = self.nemesis_rng.range(1, nodes.len() as u64 / 2 + 1);
                while (side.len() as u64) < minority {
                    side.insert(self.random_node());
                }
                Partition::split(&nodes, &side, "split")
            }
            2 => Partition::one_way(victim, other),
            3 => Partition::chained(victim, other),
            4 => Partition::quorum_loss(&nodes, other),
            5 => {
                // Constrained election: the only server that can reach a quorum is the one with
                // the most outdated log, so no one can be elected until the network heals.
                let laggard = nodes
                    .iter()
                    .copied()
                    .min_by_key(|id| self.nodes[id].raft.as_ref().map_or(0, |r| r.status().last_index))
                    .expect("nodes");
                let mut p = Partition::quorum_loss(&nodes, laggard);
                p.name = format!("constrained election, hub n{laggard}");
                p
            }
            _ => Partition::random_links(&nodes, &mut self.nemesis_rng, 300),
        }
    }

    fn heal(&mut self) -> Result<(), String> {
        self.healed = true;
        self.partition = Partition::healed();
        self.log(|| "HEAL: network healed, every server restarted, no more faults".into());
        let ids = self.node_ids.clone();
        for id in ids {
            self.nodes.get_mut(&id).expect("node").crash_after_next_write = None;
            if self.nodes[&id].raft.is_none() {
                self.start_node(id);
                self.drive(id)?;
            }
        }
        Ok(())
    }

    // ----- final checks ---------------------------------------------------------------------

    /// After the heal phase: one leader, every server converged, every client answered, and the
    /// client history linearizable with no acknowledged write lost.
    fn final_checks(&mut self) -> Result<(), String> {
        let leader = self.leader().ok_or("no leader elected within the heal phase")?;
        let lraft = self.nodes[&leader].raft.as_ref().expect("leader runs");
        let (last, term) = (lraft.status().last_index, lraft.current_term());
        let membership = lraft.membership().clone();
        if membership.is_joint() {
            return Err(format!(
                "the cluster is still in a joint configuration after the heal phase: {membership:?}"
            ));
        }
        let expected_kv = self.nodes[&leader].kv.values.clone();
        // Every member of the final configuration, voter or learner, must have converged;
        // servers removed along the way are left alone (they only must not have disrupted).
        for id in membership.members() {
            let node = &self.nodes[&id];
            let raft = node.raft.as_ref().ok_or_else(|| format!("n{id} still down after heal"))?;
            let s = raft.status();
            if s.current_term != term || s.leader_id != Some(leader) {
                return Err(format!(
                    "n{} in term {} follows {:?}, not leader n{leader} of term {term}",
                    s.id, s.current_term, s.leader_id
                ));
            }
            if s.commit_index != last || node.kv.applied_index != last {
                return Err(format!(
                    "n{} has not converged: commit {} applied {} (leader last index {last})",
                    s.id, s.commit_index, node.kv.applied_index
                ));
            }
            if node.kv.values != expected_kv {
                return Err(format!("n{} state machine differs from the leader's", s.id));
            }
            if raft.membership() != &membership {
                return Err(format!(
                    "n{} has configuration {:?}, the leader {membership:?}",
                    s.id,
                    raft.membership()
                ));
            }
        }
        if let Some(c) = self.clients.iter().find(|c| c.current.is_some()) {
            return Err(format!("client {} still waiting for seq {} after the heal phase", c.id, c.seq));
        }
        check_history(&self.history, &self.effective).map_err(|v| format!("client oracle: {}", v.0))
    }
}
