//! A small deterministic harness that drives several [`Raft`] servers through their public API.
//!
//! Every server has an in-memory "disk" (hard state, snapshot, entries) that is written exactly
//! as `Ready::persist` says, a volatile state machine (the applied commands), and a place in one
//! message queue that the test controls by hand: deliver everything, deliver only some messages,
//! drop, reorder, block links, partition, lose messages at random from a seed. A disk can be
//! stalled, leaving a write in flight. A crash throws away the `Raft` object, all volatile state
//! and any write not yet completed; a restart builds a new one from the disk alone.
//!
//! Each `Ready` is carried out in the documented order: send `messages`, write `persist`, turn it
//! into a receipt, send the gated messages, apply `committed_entries`, `advance`. Along the way the
//! harness checks properties that must hold in every test (paper Figure 3 and section 5.2):
//!
//! * Election Safety: at most one leader per term, ever;
//! * Leader Completeness: a newly observed leader holds every entry any server applied;
//! * State Machine Safety: no two servers apply different entries at the same index;
//! * persistence: a granted vote and a successful append acknowledgement leave only once the
//!   vote / the acknowledged entries are on that server's disk; a persisted term never decreases;
//!   only durable entries are applied;
//! * linearizable reads: a served read index is no smaller than any index known committed when
//!   the read was asked (thesis 6.4).

#![allow(dead_code)] // each test binary uses a different part of the harness

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use balsa_raft::rng::SplitMix64;
use balsa_raft::{
    Config, Entry, EntryKind, HardState, Index, InitialState, Membership, Message, MessageBody, NodeId,
    PersistBatch, ProposeError, Raft, ReadIndexError, ReadState, Ready, Role, Snapshot, SnapshotError,
    SnapshotMeta, SoftState, Term,
};
use bytes::Bytes;

/// The election timeout all tests use, in ticks (heartbeats go out every tick).
pub const ELECTION_TICKS: u64 = 10;

/// `Config::new(id)` with the small timers the tests rely on.
pub fn test_config(id: NodeId) -> Config {
    let mut c = Config::new(id);
    c.election_timeout_ticks = ELECTION_TICKS;
    c.heartbeat_interval_ticks = 1;
    c
}

/// A command as the bytes a client would propose.
pub fn cmd(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

/// A log entry for building disks by hand.
pub fn entry(index: Index, term: Term) -> Entry {
    Entry { term, index, kind: EntryKind::Normal, data: cmd(&format!("e{index}t{term}")) }
}

/// One server's durable state.
#[derive(Clone, Debug, Default)]
pub struct Disk {
    /// Last persisted term, vote and commit index.
    pub hard_state: HardState,
    /// Last persisted snapshot.
    pub snapshot: Option<Snapshot>,
    /// Persisted entries after the snapshot, contiguous.
    pub entries: Vec<Entry>,
}

impl Disk {
    /// A disk holding entries `1..` with the given terms, in `current_term`.
    pub fn with_log(current_term: Term, terms: &[Term], commit_index: Index) -> Self {
        let entries = terms.iter().enumerate().map(|(i, &t)| entry(i as Index + 1, t)).collect();
        Self {
            hard_state: HardState { current_term, voted_for: None, commit_index },
            snapshot: None,
            entries,
        }
    }

    /// Index of the last entry the snapshot covers (0 without snapshot).
    pub fn snapshot_index(&self) -> Index {
        self.snapshot.as_ref().map_or(0, |s| s.meta.last_included_index)
    }

    /// Index of the last durable entry.
    pub fn last_index(&self) -> Index {
        self.entries.last().map_or(self.snapshot_index(), |e| e.index)
    }

    /// Term of the durable entry at `index`, including the snapshot boundary.
    pub fn term(&self, index: Index) -> Option<Term> {
        if let Some(s) = &self.snapshot {
            if s.meta.last_included_index == index {
                return Some(s.meta.last_included_term);
            }
        }
        self.entries.iter().find(|e| e.index == index).map(|e| e.term)
    }

    /// `(index, term)` of every durable entry after the snapshot.
    pub fn log_terms(&self) -> Vec<(Index, Term)> {
        self.entries.iter().map(|e| (e.index, e.term)).collect()
    }

    /// Writes a batch in the order `Ready` documents: snapshot (replacing the whole log), hard
    /// state, then entries (replacing every stored entry at or after the first one's index).
    /// The write is atomic here: a crash loses a whole batch or nothing.
    fn write(&mut self, batch: &PersistBatch) {
        if let Some(s) = &batch.snapshot {
            self.snapshot = Some(s.clone());
            self.entries.clear();
        }
        if let Some(hs) = batch.hard_state {
            assert!(hs.current_term >= self.hard_state.current_term, "persisted term went backwards");
            self.hard_state = hs;
        }
        if let Some(first) = batch.entries.first() {
            assert!(first.index > self.snapshot_index(), "entry {} is covered by the snapshot", first.index);
            assert!(first.index <= self.last_index() + 1, "write of entry {} leaves a gap", first.index);
            self.entries.retain(|e| e.index < first.index);
            self.entries.extend(batch.entries.iter().cloned());
            for w in self.entries.windows(2) {
                assert_eq!(w[0].index + 1, w[1].index, "written entries are not contiguous");
            }
        }
        assert!(
            self.hard_state.commit_index <= self.last_index(),
            "persisted commit index {} beyond the persisted log ({})",
            self.hard_state.commit_index,
            self.last_index()
        );
    }
}

/// Serializes a state machine (the applied commands with their indexes).
fn encode_state(state: &[(Index, Bytes)]) -> Bytes {
    let mut out = Vec::new();
    for (index, data) in state {
        out.extend_from_slice(&index.to_be_bytes());
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        out.extend_from_slice(data);
    }
    out.into()
}

fn decode_state(mut data: &[u8]) -> Vec<(Index, Bytes)> {
    let mut out = Vec::new();
    while !data.is_empty() {
        let index = u64::from_be_bytes(data[..8].try_into().expect("8 bytes"));
        let len = u32::from_be_bytes(data[8..12].try_into().expect("4 bytes")) as usize;
        out.push((index, Bytes::copy_from_slice(&data[12..12 + len])));
        data = &data[12 + len..];
    }
    out
}

/// One server: its configuration, the running core (if up), its disk and its state machine.
pub struct Node {
    /// Settings used at every (re)start.
    pub config: Config,
    raft: Option<Raft>,
    /// Durable state; survives crashes.
    pub disk: Disk,
    /// The state machine: applied commands with their indexes. Lost on a crash.
    pub state: Vec<(Index, Bytes)>,
    /// Highest applied index. Lost on a crash (restored from the snapshot).
    pub applied_index: Index,
    /// ReadIndex outcomes delivered to this server since it started.
    pub read_states: Vec<ReadState>,
    /// The configuration this server starts from when neither its snapshot nor its log records
    /// one (`InitialState::membership`): the initial cluster, or `Membership::default()` for a
    /// server added later, which knows no voters and so cannot campaign until it learns better.
    pub bootstrap: Membership,
    disk_stalled: bool,
    pending: Option<(Ready, Vec<Message>)>,
}

impl Node {
    /// The applied commands as strings, for easy comparisons.
    pub fn commands(&self) -> Vec<String> {
        self.state.iter().map(|(_, d)| String::from_utf8_lossy(d).into_owned()).collect()
    }
}

/// What one `Ready` asked for, kept for assertions about ordering and gating.
#[derive(Clone, Debug)]
pub struct ReadyRecord {
    /// The server.
    pub node: NodeId,
    /// The soft state it reported, if changed.
    pub soft_state: Option<SoftState>,
    /// Messages it allowed to leave at once.
    pub messages: Vec<Message>,
    /// Messages it held until the batch was durable.
    pub gated: Vec<Message>,
    /// Hard state in the batch.
    pub hard_state: Option<HardState>,
    /// Snapshot metadata in the batch.
    pub snapshot: Option<SnapshotMeta>,
    /// Entries in the batch.
    pub entries: Vec<Entry>,
    /// Entries handed out to apply.
    pub committed: Vec<Entry>,
    /// False if the server crashed before writing the batch.
    pub persisted: bool,
}

/// Decides, per message, whether the network lets it through.
pub type Filter = Box<dyn FnMut(&Message) -> bool>;

/// Several servers, one hand-driven network.
pub struct Cluster {
    /// The initial configuration of the servers the cluster was created with (servers added
    /// later start from their own [`Node::bootstrap`]).
    pub membership: Membership,
    /// The servers by id.
    pub nodes: BTreeMap<NodeId, Node>,
    /// Messages in flight, oldest first.
    pub queue: VecDeque<Message>,
    /// Every message ever handed to the network, in order.
    pub sent: Vec<Message>,
    /// Every message a server accepted through `step`, in order.
    pub delivered: Vec<Message>,
    /// Every Ready carried out (or abandoned by a crash), in order.
    pub records: Vec<ReadyRecord>,
    blocked: BTreeSet<(NodeId, NodeId)>,
    filter: Option<Filter>,
    loss: Option<(SplitMix64, u64)>,
    leaders: BTreeMap<Term, NodeId>,
    applied: BTreeMap<Index, (Term, EntryKind, Bytes)>,
    read_floors: BTreeMap<(NodeId, Bytes), Option<Index>>,
}

fn is_vote_traffic(m: &Message) -> bool {
    matches!(m.body, MessageBody::RequestVote(_) | MessageBody::RequestVoteResponse(_))
}

/// A filter for `Cluster::set_filter` that lets only election traffic through.
pub fn votes_only() -> Filter {
    Box::new(is_vote_traffic)
}

/// True if `m` travels between `a` and `b`, in either direction.
pub fn between(m: &Message, a: NodeId, b: NodeId) -> bool {
    (m.from == a && m.to == b) || (m.from == b && m.to == a)
}

impl Cluster {
    /// `n` voters `1..=n`, fresh disks, [`test_config`].
    pub fn new(n: u64) -> Self {
        Self::with_configs(Membership::new(1..=n), test_config)
    }

    /// Fresh disks, one server per member, configured by `config`.
    pub fn with_configs(membership: Membership, config: impl Fn(NodeId) -> Config) -> Self {
        let disks = membership.members().into_iter().map(|id| (id, Disk::default())).collect();
        Self::with_disks(membership, disks, config)
    }

    /// One server per member, each started from the given disk.
    pub fn with_disks(
        membership: Membership,
        mut disks: BTreeMap<NodeId, Disk>,
        config: impl Fn(NodeId) -> Config,
    ) -> Self {
        let mut cluster = Self {
            membership: membership.clone(),
            nodes: BTreeMap::new(),
            queue: VecDeque::new(),
            sent: Vec::new(),
            delivered: Vec::new(),
            records: Vec::new(),
            blocked: BTreeSet::new(),
            filter: None,
            loss: None,
            leaders: BTreeMap::new(),
            applied: BTreeMap::new(),
            read_floors: BTreeMap::new(),
        };
        for id in membership.members() {
            let node = Node {
                config: config(id),
                raft: None,
                disk: disks.remove(&id).unwrap_or_default(),
                state: Vec::new(),
                applied_index: 0,
                read_states: Vec::new(),
                bootstrap: membership.clone(),
                disk_stalled: false,
                pending: None,
            };
            cluster.nodes.insert(id, node);
            cluster.start(id);
        }
        cluster
    }

    /// Starts a brand-new server `id` ([`test_config`]) with an empty disk and `bootstrap` as the
    /// configuration it knows until its log or a snapshot says otherwise. A server joining an
    /// existing cluster uses `Membership::default()`. Links to and from it are open.
    pub fn add_node(&mut self, id: NodeId, bootstrap: Membership) {
        self.add_node_with(test_config(id), bootstrap);
    }

    /// [`Cluster::add_node`] with a given configuration.
    pub fn add_node_with(&mut self, config: Config, bootstrap: Membership) {
        let id = config.id;
        assert!(!self.nodes.contains_key(&id), "node {id} already exists");
        let node = Node {
            config,
            raft: None,
            disk: Disk::default(),
            state: Vec::new(),
            applied_index: 0,
            read_states: Vec::new(),
            bootstrap,
            disk_stalled: false,
            pending: None,
        };
        self.nodes.insert(id, node);
        self.start(id);
    }

    /// Takes server `id` away for good: it crashes and is forgotten together with its disk and
    /// its blocked links. Messages still queued for it are lost when their turn comes.
    pub fn remove_node(&mut self, id: NodeId) {
        self.crash(id);
        self.nodes.remove(&id);
        self.blocked.retain(|&(a, b)| a != id && b != id);
    }

    // ----- access --------------------------------------------------------------------------

    /// Every server id.
    pub fn ids(&self) -> Vec<NodeId> {
        self.nodes.keys().copied().collect()
    }

    /// Whether the server is running.
    pub fn is_up(&self, id: NodeId) -> bool {
        self.nodes[&id].raft.is_some()
    }

    /// The running core of `id`.
    pub fn raft(&self, id: NodeId) -> &Raft {
        self.nodes[&id].raft.as_ref().unwrap_or_else(|| panic!("node {id} is down"))
    }

    /// The running core of `id`, to feed it events by hand (call [`Cluster::process`] after).
    pub fn raft_mut(&mut self, id: NodeId) -> &mut Raft {
        self.nodes.get_mut(&id).and_then(|n| n.raft.as_mut()).unwrap_or_else(|| panic!("node {id} is down"))
    }

    /// The server `id`.
    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[&id]
    }

    /// The running server that leads the highest term, if any.
    pub fn leader(&self) -> Option<NodeId> {
        self.nodes
            .iter()
            .filter_map(|(&id, n)| n.raft.as_ref().map(|r| (id, r)))
            .filter(|(_, r)| r.role() == Role::Leader)
            .max_by_key(|(_, r)| r.current_term())
            .map(|(id, _)| id)
    }

    /// The leader of each term observed so far.
    pub fn leaders_by_term(&self) -> &BTreeMap<Term, NodeId> {
        &self.leaders
    }

    /// The entry applied at `index` by any server, if one was.
    pub fn applied_at(&self, index: Index) -> Option<(Term, EntryKind, Bytes)> {
        self.applied.get(&index).cloned()
    }

    /// `(index, term)` of every entry in the in-memory log of `id` after its snapshot.
    pub fn log_terms(&self, id: NodeId) -> Vec<(Index, Term)> {
        let st = self.raft(id).status();
        (st.snapshot_index + 1..=st.last_index)
            .map(|i| (i, self.raft(id).term_at(i).expect("entry in the log")))
            .collect()
    }

    /// The largest election timeout of any server.
    pub fn max_election_ticks(&self) -> u64 {
        self.nodes.values().map(|n| n.config.election_timeout_ticks).max().unwrap_or(ELECTION_TICKS)
    }

    // ----- lifecycle -----------------------------------------------------------------------

    fn start(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).expect("member");
        assert!(node.raft.is_none(), "node {id} is already up");
        let initial = InitialState {
            hard_state: node.disk.hard_state,
            snapshot: node.disk.snapshot.clone(),
            entries: node.disk.entries.clone(),
            applied_index: node.disk.snapshot_index(),
            membership: node.bootstrap.clone(),
        };
        node.state = node
            .disk
            .snapshot
            .as_ref()
            .map(|s| decode_state(&s.data.to_bytes().expect("in memory")))
            .unwrap_or_default();
        node.applied_index = node.disk.snapshot_index();
        node.read_states.clear();
        node.raft = Some(Raft::new(node.config.clone(), initial).expect("valid config"));
        self.process(id);
    }

    /// Crashes `id`: the core, the state machine and any write not yet completed are gone; the
    /// disk stays as it was.
    pub fn crash(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).expect("member");
        if let Some((ready, messages)) = node.pending.take() {
            self.records.push(ReadyRecord {
                node: id,
                soft_state: ready.soft_state,
                messages,
                gated: Vec::new(),
                hard_state: ready.persist.hard_state,
                snapshot: ready.persist.snapshot.as_ref().map(|s| s.meta.clone()),
                entries: ready.persist.entries.clone(),
                committed: Vec::new(),
                persisted: false,
            });
        }
        let node = self.nodes.get_mut(&id).expect("member");
        node.raft = None;
        node.disk_stalled = false;
        node.state.clear();
        node.applied_index = 0;
        node.read_states.clear();
    }

    /// Takes one Ready from `id`, lets its immediate `messages` leave (they may go before the
    /// write) and crashes before anything of it is written. Returns what was abandoned.
    pub fn crash_mid_ready(&mut self, id: NodeId) -> Option<ReadyRecord> {
        let before = self.records.len();
        self.stall_disk(id);
        if self.raft(id).has_ready() {
            self.handle_ready(id);
        }
        self.crash(id);
        self.records.get(before).cloned()
    }

    /// Restarts a crashed server from its disk.
    pub fn restart(&mut self, id: NodeId) {
        self.start(id);
    }

    // ----- the Ready cycle -------------------------------------------------------------------

    /// Carries out every Ready `id` has.
    pub fn process(&mut self, id: NodeId) {
        while self.nodes[&id].raft.as_ref().is_some_and(|r| r.has_ready()) {
            self.handle_ready(id);
        }
        self.observe(id);
    }

    fn handle_ready(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).expect("member");
        let raft = node.raft.as_mut().expect("up");
        let mut ready = raft.ready();

        // 1. Messages that need nothing durable leave at once.
        for m in &ready.messages {
            assert_eq!(m.from, id);
            assert!(!m.requires_durability(), "{} left {id} without waiting for the disk", m.kind_name());
        }
        let messages = std::mem::take(&mut ready.messages);
        self.enqueue(messages.clone());
        let node = self.nodes.get_mut(&id).expect("member");
        if node.disk_stalled {
            node.pending = Some((ready, messages));
            return;
        }
        self.finish_ready(id, ready, messages);
    }

    /// Steps 2–5 of a Ready whose immediate messages already left.
    fn finish_ready(&mut self, id: NodeId, mut ready: Ready, messages: Vec<Message>) {
        let node = self.nodes.get_mut(&id).expect("member");
        let raft = node.raft.as_mut().expect("up");

        // 2. Write the batch.
        let batch = std::mem::take(&mut ready.persist);
        node.disk.write(&batch);
        if let Some(s) = &batch.snapshot {
            node.state = decode_state(&s.data.to_bytes().expect("in memory"));
            node.applied_index = s.meta.last_included_index;
            for (index, data) in &node.state {
                if let Some((_, _, applied)) = self.applied.get(index) {
                    assert_eq!(applied, data, "snapshot disagrees with applied entry {index}");
                }
            }
        }
        let hard_state = batch.hard_state;
        let snapshot = batch.snapshot.as_ref().map(|s| s.meta.clone());
        let entries = batch.entries.clone();
        let receipt = batch.durable();

        // 3. Messages that promise durable state.
        let gated = ready.gated_messages.release(&receipt);
        let disk = &node.disk;
        for m in &gated {
            assert_eq!(m.from, id);
            let hs = disk.hard_state;
            match &m.body {
                MessageBody::RequestVoteResponse(r) if r.vote_granted && !r.pre_vote => assert!(
                    hs.current_term > m.term || (hs.current_term == m.term && hs.voted_for == Some(m.to)),
                    "{id} granted a vote to {} in term {} that is not on its disk ({hs:?})",
                    m.to,
                    m.term
                ),
                MessageBody::RequestVote(rv) if !rv.pre_vote => assert!(
                    hs.current_term > m.term || (hs.current_term == m.term && hs.voted_for == Some(id)),
                    "{id} asked for votes in term {} before its own vote was durable",
                    m.term
                ),
                MessageBody::AppendEntriesResponse(r) if r.success => {
                    assert!(hs.current_term >= m.term, "acknowledged in a term not on disk");
                    if hs.current_term == m.term {
                        assert!(
                            disk.last_index() >= r.match_index,
                            "{id} acknowledged index {} but its disk ends at {}",
                            r.match_index,
                            disk.last_index()
                        );
                    }
                }
                _ => {}
            }
        }

        // 4. Apply.
        let committed = std::mem::take(&mut ready.committed_entries);
        for e in &committed {
            assert_eq!(e.index, node.applied_index + 1, "{id} applies out of order");
            assert!(e.index <= node.disk.last_index(), "{id} applies entry {} that is not durable", e.index);
            node.applied_index = e.index;
            let value = (e.term, e.kind, e.data.clone());
            match self.applied.get(&e.index) {
                Some(other) => assert_eq!(
                    other, &value,
                    "State Machine Safety violated at index {}: {id} applies {value:?}, another server applied {other:?}",
                    e.index
                ),
                None => {
                    self.applied.insert(e.index, value);
                }
            }
            if e.kind == EntryKind::Normal {
                node.state.push((e.index, e.data.clone()));
            }
        }
        for rs in &ready.read_states {
            if let (Ok(index), Some(Some(floor))) =
                (&rs.result, self.read_floors.get(&(id, rs.context.clone())))
            {
                assert!(
                    index >= floor,
                    "stale read at {id}: read index {index}, but index {floor} was committed before the read began"
                );
            }
        }
        node.read_states.extend(std::mem::take(&mut ready.read_states));

        // 5. Advance.
        raft.advance(receipt);

        self.records.push(ReadyRecord {
            node: id,
            soft_state: ready.soft_state,
            messages,
            gated: gated.clone(),
            hard_state,
            snapshot,
            entries,
            committed,
            persisted: true,
        });
        self.enqueue(gated);
        self.observe(id);
    }

    /// Makes the disk of `id` hang: the next Ready's immediate messages leave, but its batch is
    /// not written (and nothing after it happens) until [`Cluster::unstall_disk`].
    pub fn stall_disk(&mut self, id: NodeId) {
        self.nodes.get_mut(&id).expect("member").disk_stalled = true;
    }

    /// Lets a hung disk finish the pending write, then carries on.
    pub fn unstall_disk(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).expect("member");
        node.disk_stalled = false;
        if let Some((ready, messages)) = node.pending.take() {
            self.finish_ready(id, ready, messages);
        }
        self.process(id);
    }

    /// Whether `id` has a Ready whose write has not completed.
    pub fn write_pending(&self, id: NodeId) -> bool {
        self.nodes[&id].pending.is_some()
    }

    /// Election Safety and Leader Completeness, checked whenever a server changed.
    fn observe(&mut self, id: NodeId) {
        let Some(raft) = self.nodes[&id].raft.as_ref() else { return };
        if raft.role() != Role::Leader {
            return;
        }
        let term = raft.current_term();
        match self.leaders.get(&term) {
            Some(&other) => {
                assert_eq!(other, id, "Election Safety violated: {other} and {id} both lead term {term}")
            }
            None => {
                self.leaders.insert(term, id);
                let snapshot_index = raft.status().snapshot_index;
                for (&index, (applied_term, _, _)) in &self.applied {
                    if index < snapshot_index {
                        continue;
                    }
                    assert_eq!(
                        raft.term_at(index),
                        Some(*applied_term),
                        "Leader Completeness violated: leader {id} of term {term} lacks applied entry {index}"
                    );
                }
            }
        }
    }

    // ----- events ----------------------------------------------------------------------------

    /// One tick at `id` (if up).
    pub fn tick(&mut self, id: NodeId) {
        if let Some(r) = self.nodes.get_mut(&id).and_then(|n| n.raft.as_mut()) {
            r.tick();
            self.process(id);
        }
    }

    /// One tick at every running server, in id order.
    pub fn tick_all(&mut self) {
        for id in self.ids() {
            self.tick(id);
        }
    }

    /// `ticks` rounds of: tick everyone, deliver everything.
    pub fn run(&mut self, ticks: u64) {
        for _ in 0..ticks {
            self.tick_all();
            self.deliver_all();
        }
    }

    /// Runs until `done` holds (checked before each tick); returns the ticks it took.
    pub fn run_until(&mut self, max_ticks: u64, mut done: impl FnMut(&Cluster) -> bool) -> Option<u64> {
        for t in 0..=max_ticks {
            if done(self) {
                return Some(t);
            }
            if t < max_ticks {
                self.tick_all();
                self.deliver_all();
            }
        }
        None
    }

    /// Runs until some server leads; returns it.
    pub fn wait_for_leader(&mut self, max_ticks: u64) -> NodeId {
        self.run_until(max_ticks, |c| c.leader().is_some()).expect("no leader elected");
        self.leader().expect("leader")
    }

    /// Proposes a command at `id`.
    pub fn propose(&mut self, id: NodeId, data: &str) -> Result<Index, ProposeError> {
        let result = self.raft_mut(id).propose(cmd(data));
        self.process(id);
        result
    }

    /// The highest commit index any server knows (in memory or on disk): everything up to it is
    /// committed.
    pub fn known_committed(&self) -> Index {
        self.nodes
            .values()
            .map(|n| {
                let live = n.raft.as_ref().map_or(0, |r| r.status().commit_index);
                live.max(n.disk.hard_state.commit_index)
            })
            .max()
            .unwrap_or(0)
    }

    /// Asks `id` for a read index. When the answer comes, the harness checks it is linearizable:
    /// no smaller than any index known committed when the read began (thesis 6.4).
    pub fn read_index(&mut self, id: NodeId, context: &str) -> Result<(), ReadIndexError> {
        let key = (id, cmd(context));
        let floor = self.known_committed();
        // A context asked twice cannot be told apart: do not check it.
        let entry = self.read_floors.entry(key).or_insert(Some(floor));
        if *entry != Some(floor) {
            *entry = None;
        }
        let result = self.raft_mut(id).read_index(cmd(context));
        self.process(id);
        result
    }

    /// The driver of `id` folds its state machine up to `index` into a snapshot (with the
    /// configuration in effect at `index`), tells the core, and on success keeps the snapshot on
    /// disk and drops the entries it covers.
    pub fn compact(&mut self, id: NodeId, index: Index) -> Result<(), SnapshotError> {
        let node = self.nodes.get_mut(&id).expect("member");
        let raft = node.raft.as_mut().expect("up");
        let state: Vec<(Index, Bytes)> = node.state.iter().filter(|(i, _)| *i <= index).cloned().collect();
        let snapshot = Snapshot {
            meta: SnapshotMeta {
                last_included_index: index,
                last_included_term: raft.term_at(index).unwrap_or(0),
                membership: raft.membership_at(index),
            },
            data: encode_state(&state).into(),
        };
        raft.snapshot_taken(snapshot.clone())?;
        node.disk.entries.retain(|e| e.index > index);
        node.disk.snapshot = Some(snapshot);
        self.process(id);
        Ok(())
    }

    /// Lets time pass with every link cut (so no lease or leader contact survives), then ticks
    /// only `id` until it wins an election. Messages queued at the start are lost. Returns the
    /// term it leads, or `None` if it could not win.
    pub fn try_elect(&mut self, id: NodeId) -> Option<Term> {
        let t = self.max_election_ticks();
        let saved = std::mem::take(&mut self.blocked);
        let ids = self.ids();
        for &a in &ids {
            for &b in &ids {
                if a != b {
                    self.blocked.insert((a, b));
                }
            }
        }
        self.run(2 * t);
        self.blocked = saved;
        for _ in 0..6 * t {
            self.tick(id);
            self.deliver_all();
            if self.is_up(id) && self.raft(id).role() == Role::Leader {
                return Some(self.raft(id).current_term());
            }
        }
        None
    }

    /// [`Cluster::try_elect`], which must succeed.
    pub fn elect(&mut self, id: NodeId) -> Term {
        self.try_elect(id).unwrap_or_else(|| panic!("node {id} could not be elected"))
    }

    // ----- the network ---------------------------------------------------------------------

    fn enqueue(&mut self, messages: Vec<Message>) {
        for m in messages {
            self.sent.push(m.clone());
            self.queue.push_back(m);
        }
    }

    fn passes(&mut self, m: &Message) -> bool {
        if self.blocked.contains(&(m.from, m.to)) {
            return false;
        }
        if let Some(f) = self.filter.as_mut() {
            if !f(m) {
                return false;
            }
        }
        if let Some((rng, per_mille)) = self.loss.as_mut() {
            if rng.chance(*per_mille, 1000) {
                return false;
            }
        }
        true
    }

    /// Delivers one message by hand, ignoring blocked links, filter and loss. Dropped only if the
    /// receiver is down. Returns whether it was delivered.
    pub fn deliver(&mut self, m: Message) -> bool {
        let to = m.to;
        let Some(raft) = self.nodes.get_mut(&to).and_then(|n| n.raft.as_mut()) else { return false };
        raft.step(m.clone()).expect("the harness only delivers well-formed messages");
        self.delivered.push(m);
        self.process(to);
        true
    }

    /// Delivers queued messages, oldest first, through the network rules, until the queue is
    /// empty. Returns how many arrived.
    pub fn deliver_all(&mut self) -> usize {
        self.deliver_matching(|_| true)
    }

    /// Delivers, through the network rules, the queued messages matching `pred` (including ones
    /// sent meanwhile) until none is left; other messages stay queued in order.
    pub fn deliver_matching(&mut self, pred: impl Fn(&Message) -> bool) -> usize {
        let mut count = 0;
        for _ in 0..1_000_000 {
            let Some(m) = self.pop_next(&pred) else { return count };
            if self.passes(&m) && self.deliver(m) {
                count += 1;
            }
        }
        panic!("messages never stop flowing");
    }

    /// Delivers (or loses, by the network rules) the oldest queued message. Returns false if the
    /// queue was empty.
    pub fn deliver_one(&mut self) -> bool {
        let Some(m) = self.queue.pop_front() else { return false };
        if self.passes(&m) {
            self.deliver(m);
        }
        true
    }

    /// Removes and returns the oldest queued message matching `pred`.
    pub fn pop_next(&mut self, pred: impl Fn(&Message) -> bool) -> Option<Message> {
        let i = self.queue.iter().position(pred)?;
        self.queue.remove(i)
    }

    /// Removes and returns every queued message matching `pred`.
    pub fn take_matching(&mut self, pred: impl Fn(&Message) -> bool) -> Vec<Message> {
        let (taken, kept): (Vec<_>, Vec<_>) = self.queue.drain(..).partition(|m| pred(m));
        self.queue = kept.into();
        taken
    }

    /// Loses every queued message.
    pub fn clear_queue(&mut self) {
        self.queue.clear();
    }

    /// Cuts `a` and `b` off from each other, both directions.
    pub fn block(&mut self, a: NodeId, b: NodeId) {
        self.blocked.insert((a, b));
        self.blocked.insert((b, a));
    }

    /// Cuts `id` off from everyone.
    pub fn isolate(&mut self, id: NodeId) {
        for other in self.ids() {
            if other != id {
                self.block(id, other);
            }
        }
    }

    /// Only servers in the same group can talk; servers in no group are isolated.
    pub fn partition(&mut self, groups: &[&[NodeId]]) {
        let group_of = |id: NodeId| groups.iter().position(|g| g.contains(&id));
        for a in self.ids() {
            for b in self.ids() {
                if a != b && (group_of(a).is_none() || group_of(a) != group_of(b)) {
                    self.blocked.insert((a, b));
                }
            }
        }
    }

    /// Removes every blocked link and the filter (not the random loss).
    pub fn heal(&mut self) {
        self.blocked.clear();
        self.filter = None;
    }

    /// Only messages for which `f` is true get through (in addition to blocked links).
    pub fn set_filter(&mut self, f: impl FnMut(&Message) -> bool + 'static) {
        self.filter = Some(Box::new(f));
    }

    /// Removes the filter.
    pub fn clear_filter(&mut self) {
        self.filter = None;
    }

    /// Loses each message with probability `per_mille / 1000`, from a seeded generator.
    pub fn set_loss(&mut self, seed: u64, per_mille: u64) {
        self.loss = (per_mille > 0).then(|| (SplitMix64::new(seed), per_mille));
    }

    /// Messages sent so far that match `pred`.
    pub fn count_sent(&self, pred: impl Fn(&Message) -> bool) -> usize {
        self.sent.iter().filter(|m| pred(m)).count()
    }

    // ----- convergence ---------------------------------------------------------------------

    /// Asserts that the running servers in `ids` hold the same log as `reference` (on the range
    /// both still have in memory) and have committed the same index.
    pub fn assert_converged(&self, reference: NodeId, ids: &[NodeId]) {
        let expected = self.log_terms(reference);
        let ref_status = self.raft(reference).status();
        for &id in ids {
            let st = self.raft(id).status();
            assert_eq!(st.last_index, ref_status.last_index, "node {id} last index");
            assert_eq!(st.commit_index, ref_status.commit_index, "node {id} commit index");
            let from = st.snapshot_index.max(ref_status.snapshot_index);
            let mine: Vec<_> = self.log_terms(id).into_iter().filter(|&(i, _)| i > from).collect();
            let theirs: Vec<_> = expected.iter().copied().filter(|&(i, _)| i > from).collect();
            assert_eq!(mine, theirs, "node {id} log differs from node {reference}");
        }
    }
}
