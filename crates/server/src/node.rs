//! The node driver: one thread runs the Raft core, the write-ahead log and the state machine,
//! carrying out each Ready in the order the core documents (send, write, sync, release gated
//! messages, apply, advance). Clients talk to it through a [`NodeHandle`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use balsa_kv::{Command, KvError, MemberAttrs, RangeRequest, RangeResponse, Response, StateMachine};
use balsa_raft::{
    ConfChangeError, Config, EntryKind, Index, Membership, MembershipChange, MessageBody, NodeId,
    ProposeError, Raft, ReadIndexError, Role, Status, Term,
};
use balsa_storage::{DiskStore, LogStore, StoreOptions};
use bytes::{BufMut, Bytes};
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

use crate::lease_clock::LeaseClock;
use crate::log_writer::LogWriter;
use crate::metrics::Metrics;
use crate::payloads::Payloads;
use crate::round_timer::RoundTimer;
use crate::snapshot_stream::Streamer;
use crate::stream_hub::{StreamHub, StreamHubCommand};
use crate::transport::{Transport, TransportConfig};
use crate::watch_hub::{HubCommand, WatchHub};

/// Why a request failed.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum NodeError {
    /// This server is not the leader; try the hinted one.
    #[error("etcdserver: not leader (leader hint: {leader_hint:?})")]
    NotLeader {
        /// The leader this server believes in.
        leader_hint: Option<NodeId>,
    },
    /// The state machine refused the request.
    #[error("{0}")]
    Kv(#[from] KvError),
    /// No answer in time (lost to a change of leader, or still on its way): the outcome is
    /// unknown, as with etcd's time-out; the request may be retried.
    #[error("etcdserver: request timed out")]
    Dropped,
    /// The node stopped (or its storage failed and it is stopping).
    #[error("etcdserver: server stopped")]
    Stopped,
    /// No member has this id.
    #[error("etcdserver: member not found")]
    MemberNotFound,
    /// A member with this id exists already.
    #[error("etcdserver: member ID already exist")]
    MemberExists,
    /// A member listens at this peer URL already.
    #[error("etcdserver: Peer URLs already exists")]
    PeerUrlExists,
    /// Only learners are promoted.
    #[error("etcdserver: can only promote a learner member")]
    NotLearner,
    /// A learner is promoted only once it has caught up with the leader.
    #[error("etcdserver: can only promote a learner member which is in sync with leader")]
    LearnerNotReady,
    /// Another membership change has not finished; retry shortly.
    #[error("etcdserver: a membership change is in progress")]
    MembershipChangeInProgress,
    /// The membership change makes no sense (removing the last voter, say).
    #[error("etcdserver: {0}")]
    InvalidMembership(String),
    /// Leadership can only move to a voting member.
    #[error("etcdserver: bad leader transferee")]
    BadLeaderTransferee,
    /// The leadership transfer did not finish in time.
    #[error("etcdserver: request timed out, leader transfer took too long")]
    LeaderTransferTimeout,
}

/// Settings of one node.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// This server.
    pub id: NodeId,
    /// Peers refuse servers of another cluster.
    pub cluster_id: u64,
    /// Where the log and snapshots live.
    pub data_dir: PathBuf,
    /// Every founding member and its peer address (this server included).
    pub peers: BTreeMap<NodeId, SocketAddr>,
    /// One Raft tick (the election timeout is `raft.election_timeout_ticks` of these).
    pub tick: Duration,
    /// Snapshot once this many entries were applied since the last one.
    pub snapshot_entries: u64,
    /// This server joins a running cluster (etcd's `--initial-cluster-state existing`): it
    /// starts with no configuration and learns it from the leader. Otherwise it founds the
    /// cluster `peers` describes.
    pub join: bool,
    /// This member's name, published to the member table once it runs.
    pub name: String,
    /// Where clients reach this member, published to the member table.
    pub client_urls: Vec<String>,
}

/// A member as the Cluster API shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberInfo {
    /// Id, name and URLs.
    pub attrs: MemberAttrs,
    /// Receives the log without voting.
    pub is_learner: bool,
}

/// How long a membership change may take before its client is told the outcome is unknown
/// (a joint change commits two entries; a learner may be catching up).
const MEMBERSHIP_CHANGE_TIMEOUT: Duration = Duration::from_secs(10);

/// At most this many inputs are taken before the driver carries out a Ready, so a flood of
/// requests cannot starve ticks and storage.
const MAX_INPUTS_PER_READY: usize = 4096;

/// A snapshot is encoded this many bytes per driver round, between rounds of requests, rather
/// than in one go: encoding a state of a few hundred MB took the driver 160 ms and more, which
/// was every put's p99.9. The keyspace keeps its versions, so the state at the snapshot's index
/// can be read from a later one (`balsa_kv::SnapshotEncoder`); a compaction applied meanwhile
/// finishes the encoding first. 1 MiB by default; tests make it small
/// ([`set_snapshot_step_bytes`]) so that every snapshot spans many rounds.
static SNAPSHOT_STEP_BYTES: AtomicUsize = AtomicUsize::new(1 << 20);

/// Sets how many bytes of a snapshot the driver encodes per round, for every node in this
/// process (tests: a small step makes every snapshot span many rounds).
#[doc(hidden)]
pub fn set_snapshot_step_bytes(bytes: usize) {
    SNAPSHOT_STEP_BYTES.store(bytes.max(1), Ordering::Relaxed);
}

fn snapshot_step_bytes() -> usize {
    SNAPSHOT_STEP_BYTES.load(Ordering::Relaxed)
}

/// A state up to this size is snapshotted whenever `snapshot_due` says so (every
/// `--snapshot-count` entries): at 100,000 entries that is at most 168 bytes encoded per entry.
const SNAPSHOT_FREE_BYTES: u64 = 16 << 20;

/// Whether a snapshot is worth its cost once `snapshot_due` fires: the state is small, or the log
/// applied since the last snapshot holds at least as many bytes as that snapshot. Encoding a
/// snapshot costs its whole size (on the driver thread) and writing it as much again, while a
/// state that keeps its history (no compaction: etcd's default) grows with every write; with a
/// fixed count of entries a long run encoded ever larger snapshots (a 100 MiB state every five
/// seconds at 20,000 puts/s). This rule bounds the cost to about one byte encoded per byte
/// logged, as Redis's default rewrites its log once it has doubled, at the price of a log (and
/// a replay at start) of at most the state's size. It was half the state's size: the encoding
/// then took about 10% of the members' CPU at 256-client puts (its copy of values read in key
/// order, a cache miss each, was the largest single item of their profile), and halving it took
/// about 6% off the CPU per put. The longer log costs little memory, as the keyspace's values are
/// slices of the entries' own buffers (10 MiB more per member at 1M keys: docs/BENCHMARKS.md).
fn snapshot_pays_off(log_bytes: u64, last_snapshot_bytes: u64) -> bool {
    log_bytes >= last_snapshot_bytes.saturating_sub(SNAPSHOT_FREE_BYTES)
}

/// A snapshot is due once the log applied since the last one holds this many bytes, whatever its
/// count of entries.
const SNAPSHOT_LOG_BYTES: u64 = 64 << 20;

/// A snapshot threshold (entries or bytes) for the member at `place` among `voters`, until its
/// first snapshot: the member at place k of n waits k/n of a threshold more. Members apply the
/// same entries at about the same time, so with one threshold all of them encoded and wrote
/// every snapshot at once, and on a machine they share (this one: 2 cores, three members) that
/// took most of both cores for a while, the client's included (put p99 at 256 clients 36-38 ms,
/// 29-30 with snapshots off). Staggered once, they stay apart, as each member's next snapshot is
/// counted from its own last one under the same rules: p99 25-28 ms (docs/BENCHMARKS.md).
fn staggered_threshold(threshold: u64, place: usize, voters: usize) -> u64 {
    let share = threshold.saturating_mul(place as u64) / (voters.max(1) as u64);
    threshold.saturating_add(share)
}

/// How long a proposal may take before its client is told the outcome is unknown.
const PROPOSAL_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a member must have applied nothing before it repacks its key index
/// ([`balsa_kv::Mvcc::repack`]): the rebuild holds the driver for 60-300 ms at 1M
/// keys, which a busy member's clients would see. Members take turns, this long apart
/// ([`repack_turn`]).
const REPACK_AFTER_QUIET: Duration = Duration::from_secs(1);

/// Keys added since the last repack before the next pays off: at least this many, and at least
/// [`REPACK_GROWTH_DIVISOR`]th of those held then. A tree grown by keys in random order is about
/// 70% full and goes back there as it takes more; one grown by keys in order is 55% full.
const REPACK_MIN_NEW_KEYS: usize = 50_000;
const REPACK_GROWTH_DIVISOR: usize = 8;

/// Whether a member quiet for `quiet` (nothing applied), holding `keys` keys and `repacked_at`
/// at its last repack, repacks its key index now: once quiet for [`REPACK_AFTER_QUIET`], and once
/// enough keys came to have loosened the tree ([`REPACK_MIN_NEW_KEYS`], [`REPACK_GROWTH_DIVISOR`]).
/// `turn` is the member's place in the order of repacks ([`repack_turn`]): the member whose turn
/// is k waits k quiet periods more.
fn repack_due(keys: usize, repacked_at: usize, quiet: Duration, turn: u32) -> bool {
    let due = REPACK_MIN_NEW_KEYS.max(repacked_at / REPACK_GROWTH_DIVISOR);
    turn_has_come(quiet, turn) && keys >= repacked_at + due
}

/// Whether a member quiet for `quiet` has reached its turn ([`repack_turn`]): the member whose
/// turn is k waits k quiet periods after the first. Repacks and quiet snapshots share it.
fn turn_has_come(quiet: Duration, turn: u32) -> bool {
    quiet >= REPACK_AFTER_QUIET * (1 + turn)
}

/// A member quiet on its turn (see `repack_turn`) with at least this many entries applied since
/// its last snapshot takes one then, rather than when `snapshot_due` next says so. Until a
/// snapshot covers them, the core keeps every entry in memory (about 56 bytes each beside the
/// payload the keyspace shares): after a 1M-key load the member whose last snapshot came
/// earliest held 25-45 MiB more than the others for as long as no write came. While quiet, the
/// snapshot's encoding holds up nobody's writes; a follower's leaves a quorum, as the repack's.
const QUIET_SNAPSHOT_MIN_ENTRIES: u64 = 100_000;

/// ...and at least a quarter of the last snapshot's bytes applied since it, so that a member
/// quiet after every burst of writes encodes at most about five bytes per byte logged (a state
/// that grew by less waits for `snapshot_due`).
const QUIET_SNAPSHOT_MIN_SHARE: u64 = 4;

/// Whether a quiet member takes a snapshot now: `log` is the entries and bytes applied since its
/// last snapshot, of `last_snapshot_bytes`; `quiet` how long nothing was applied; `turn` its
/// place in line (`repack_turn`).
fn quiet_snapshot_due(log: (u64, u64), last_snapshot_bytes: u64, quiet: Duration, turn: u32) -> bool {
    let (entries, bytes) = log;
    entries >= QUIET_SNAPSHOT_MIN_ENTRIES
        && bytes >= last_snapshot_bytes / QUIET_SNAPSHOT_MIN_SHARE
        && turn_has_come(quiet, turn)
}

/// When a member repacks, counted in quiet periods after the first: the followers one after
/// another, in their order among the voters (`rank`: the member's place among the voters who do
/// not lead, `None` for a learner, which holds up no quorum and goes first), the leader once every
/// follower has had its turn (`leading`, among `voters`). Members apply the same entries, so
/// they all go quiet at once, and with one wait all of them held their drivers together
/// (slow-round logs of 191, 212 and 264 ms within 80 ms of each other after a 1M-key load): no
/// commit, no linearizable read, no heartbeat answered for that long. One at a time, a
/// follower's repack leaves a quorum that answers, and the leader's comes last.
fn repack_turn(leading: bool, rank: Option<usize>, voters: usize) -> u32 {
    let turn = if leading { voters.saturating_sub(1) } else { rank.unwrap_or(0) };
    u32::try_from(turn).unwrap_or(u32::MAX)
}

/// Where the answer to a read goes.
type ReadReply = oneshot::Sender<Result<RangeResponse, NodeError>>;
/// Where the answer to a membership change goes.
type ConfReply = oneshot::Sender<Result<(), NodeError>>;
/// Where the answer to a proposal goes.
type ProposeReply = oneshot::Sender<Result<Response, NodeError>>;
/// A read of the state machine, run on the driver thread once it may be served (for a
/// linearizable read: once the read index is applied), or told why it cannot be.
pub(crate) type ReadJob = Box<dyn FnOnce(Result<&StateMachine, NodeError>) + Send>;

/// Where the driver's inputs are sent from (any thread).
pub(crate) type InputSender = mpsc::UnboundedSender<Input>;

pub(crate) enum Input {
    Peer(crate::transport::Delivery),
    Propose(Command, ProposeReply),
    Read(RangeRequest, ReadReply),
    ReadLocal(RangeRequest, ReadReply),
    Status(oneshot::Sender<Status>),
    Revision(oneshot::Sender<i64>),
    Stop,
    LeaseTimeToLive(i64, oneshot::Sender<Option<LeaseInfo>>),
    Leases(oneshot::Sender<Vec<i64>>),
    ChangeMembership(MembershipChange, oneshot::Sender<Result<(), NodeError>>),
    Members(oneshot::Sender<(Option<NodeId>, Vec<MemberInfo>)>),
    /// A request to the watch hub (`watch_hub.rs`).
    Watch(HubCommand),
    /// The state machine encoded now, for Maintenance.Snapshot and Hash.
    Snapshot(oneshot::Sender<SnapshotImage>),
    /// Maintenance.HashKV at a revision.
    HashKv(i64, oneshot::Sender<Result<(u32, i64, i64), NodeError>>),
    /// Start a leadership transfer (Maintenance.MoveLeader).
    TransferLeader(NodeId, oneshot::Sender<Result<(), NodeError>>),
    /// Snapshot now and compact the log (Maintenance.Defragment).
    SnapshotNow(oneshot::Sender<Result<Option<Index>, NodeError>>),
    /// Any read of the state machine (log streams use it): linearizable through ReadIndex, or
    /// of the state applied so far.
    ReadWith {
        linearizable: bool,
        job: ReadJob,
    },
    /// A request to the stream hub (`stream_hub.rs`).
    Streams(StreamHubCommand),
    /// The background snapshot save finished: only a wake-up, so the driver collects it now
    /// rather than at the next tick (the outcome travels in the thread's result).
    SnapshotWritten,
}

impl Input {
    /// The variant's name (and a peer message's kind), for the slow-round log.
    fn kind(&self) -> &'static str {
        match self {
            Input::Peer(d) => d.message.kind_name(),
            Input::Propose(..) => "propose",
            Input::Read(..) => "read",
            Input::ReadLocal(..) => "read-local",
            Input::Status(_) => "status",
            Input::Revision(_) => "revision",
            Input::Stop => "stop",
            Input::LeaseTimeToLive(..) => "lease-ttl",
            Input::Leases(_) => "leases",
            Input::ChangeMembership(..) => "change-membership",
            Input::Members(_) => "members",
            Input::Watch(_) => "watch",
            Input::Snapshot(_) => "snapshot-image",
            Input::HashKv(..) => "hash-kv",
            Input::TransferLeader(..) => "transfer-leader",
            Input::SnapshotNow(_) => "snapshot-now",
            Input::ReadWith { .. } => "read-with",
            Input::Streams(_) => "streams",
            Input::SnapshotWritten => "snapshot-written",
        }
    }
}

/// This member's state machine at one applied index (Maintenance.Snapshot).
#[derive(Clone, Debug)]
pub struct SnapshotImage {
    /// `StateMachine::encode()`.
    pub data: Bytes,
    /// The last applied log index the state includes.
    pub index: Index,
    /// Its term.
    pub term: Term,
    /// The keyspace revision.
    pub revision: i64,
}

/// What this server knows of a lease (etcd's `LeaseTimeToLive`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseInfo {
    /// Time left by this server's clock (the leader's clock decides expiry).
    pub remaining: Duration,
    /// TTL granted, seconds.
    pub granted_ttl_secs: i64,
    /// Keys attached.
    pub keys: Vec<Bytes>,
}

/// A running node. Dropping it stops the node.
pub struct NodeHandle {
    pub(crate) input: InputSender,
    /// The shortest lease TTL granted, seconds: a lease must outlive a change of leader, or it
    /// could expire while the cluster elects one (etcd's rule: 1.5 election timeouts).
    min_lease_ttl_secs: i64,
    /// Where the store's files are, for sizing them (etcd's `dbSize`) off the driver thread.
    data_dir: std::path::PathBuf,
    thread: Option<std::thread::JoinHandle<()>>,
    _transport: Transport,
    metrics: Arc<Metrics>,
    /// The driver thread's runtime: the client server runs on it.
    runtime: tokio::runtime::Handle,
}

impl NodeHandle {
    /// Starts a node: recovers its disk, binds nothing itself (the peer listener is given), and
    /// begins ticking.
    pub async fn start(config: NodeConfig, peer_listener: TcpListener) -> Result<Self, String> {
        let data_dir = config.data_dir.clone();
        let data_dir_lock = lock_data_dir(&data_dir)?;
        let store = DiskStore::open(&config.data_dir, StoreOptions::default()).map_err(|e| e.to_string())?;
        // A joining server knows no configuration until the leader's log or snapshot brings it.
        let members =
            if config.join { Membership::default() } else { Membership::new(config.peers.keys().copied()) };
        let initial = store.initial_state(&members).map_err(|e| e.to_string())?;
        // The snapshot's data is read into memory only to restore the state machine (which copies
        // what it keeps) and dropped after; the core and the store keep a handle on the file.
        let sm = match &initial.snapshot {
            Some(s) => {
                let data = s.data.to_bytes().map_err(|e| format!("reading the snapshot: {e}"))?;
                StateMachine::decode(data).map_err(|e| e.to_string())?
            }
            None => StateMachine::default(),
        };
        let mut rc = Config::new(config.id);
        let election_timeout = config.tick * rc.election_timeout_ticks as u32;
        let min_lease_ttl_secs = (election_timeout * 3 / 2).as_secs_f64().ceil().max(1.0) as i64;
        let learner_lag_entries = rc.learner_catch_up_lag_entries;
        rc.seed = config.id ^ config.cluster_id.rotate_left(17);
        let raft = Raft::new(rc, initial).map_err(|e| e.to_string())?;
        let (input_tx, input_rx) = mpsc::unbounded_channel();
        // The driver thread runs a runtime of its own, and the transport reads peers' messages
        // on it: a message read there reaches the driver without waking another thread. On this
        // machine a wake-up costs 35 µs on average before the woken thread runs (`perf sched
        // latency`); readers on the shared runtime put two more on every replicated write's path.
        let driver_runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("starting the driver's runtime: {e}"))?;
        let mut transport_config = TransportConfig::new(config.id, config.cluster_id);
        // Five election timeouts: long enough that a receiver merely slow to read (a busy
        // driver closes the TCP window, and zero-window probes count against TCP_USER_TIMEOUT)
        // keeps its connection; short enough that a link cut silently is redialled soon after
        // it heals. With one election timeout, connections to slow readers on a saturated
        // machine were reset every few seconds, losing the messages queued on them.
        transport_config.peer_timeout = (election_timeout * 5).max(Duration::from_secs(2));
        // Peers' messages go straight into the driver's input, and the driver writes its own
        // to the peers' sockets: no forwarding task in between (each cost a task wake-up per
        // message, four on the path of every replicated write).
        let inbox = input_tx.clone();
        let inbox: crate::transport::Inbox = Arc::new(move |d| inbox.send(Input::Peer(d)).is_ok());
        let transport = Transport::start_with_readers(
            transport_config,
            peer_listener,
            config.peers.clone(),
            inbox,
            driver_runtime.handle().clone(),
        );
        let runtime = driver_runtime.handle().clone();
        let peer_book = transport.clone_sender();
        let config_peers = config.peers.clone();
        let metrics = Arc::new(Metrics::new());
        let driver = Driver {
            _data_dir_lock: data_dir_lock,
            wake: input_tx.clone(),
            snapshot_in_flight: None,
            snapshot_encoding: None,
            snapshot_began: false,
            storage_failure: None,
            metrics: metrics.clone(),
            raft,
            log_writer: LogWriter::new(store, metrics.clone()),
            sm,
            config,
            proposals: BTreeMap::new(),
            next_request: 0,
            payloads: Payloads::default(),
            reads: Vec::new(),
            next_read: 0,
            unasked_reads: Vec::new(),
            read_contexts: BTreeMap::new(),
            lease_clock: LeaseClock::default(),
            was_leader: false,
            last_clock: None,
            peer_addrs: config_peers,
            peer_book,
            conf_waiters: Vec::new(),
            learner_lag_entries,
            last_publish: None,
            watch_hub: WatchHub::default(),
            stream_hub: StreamHub::default(),
            after_replies: Vec::new(),
            quiet_since: (0, Instant::now()),
            repacked_at_keys: 0,
        };
        let thread = std::thread::Builder::new()
            .name("balsa-node".into())
            // A task, not `block_on`'s own future: waking `block_on`'s future writes the
            // runtime's eventfd (a system call) even from a task on this thread, while waking a
            // task from this thread only queues it. The driver is woken by the client
            // connections' and peer readers' tasks on this thread, and yields to them.
            .spawn(move || {
                driver_runtime.block_on(async move {
                    if let Err(e) = tokio::spawn(driver.run(input_rx)).await {
                        if e.is_panic() {
                            // A broken invariant ends the thread, as it did run in place.
                            std::panic::resume_unwind(e.into_panic());
                        }
                    }
                })
            })
            .map_err(|e| e.to_string())?;
        Ok(Self {
            input: input_tx,
            min_lease_ttl_secs,
            data_dir,
            thread: Some(thread),
            _transport: transport,
            metrics,
            runtime,
        })
    }

    /// The driver thread's runtime.
    pub fn runtime(&self) -> tokio::runtime::Handle {
        self.runtime.clone()
    }

    /// Proposes a write and waits until it is applied (or fails).
    pub async fn propose(&self, command: Command) -> Result<Response, NodeError> {
        let (tx, rx) = oneshot::channel();
        self.input.send(Input::Propose(command, tx)).map_err(|_| NodeError::Stopped)?;
        rx.await.map_err(|_| NodeError::Stopped)?
    }

    /// A linearizable read (thesis 6.4), from any server: it waits for a confirmed read index and
    /// for this server to apply up to it.
    pub async fn read(&self, request: RangeRequest) -> Result<RangeResponse, NodeError> {
        let (tx, rx) = oneshot::channel();
        self.input.send(Input::Read(request, tx)).map_err(|_| NodeError::Stopped)?;
        rx.await.map_err(|_| NodeError::Stopped)?
    }

    /// A serializable read: this server's state as applied so far, possibly stale.
    pub async fn read_local(&self, request: RangeRequest) -> Result<RangeResponse, NodeError> {
        let (tx, rx) = oneshot::channel();
        self.input.send(Input::ReadLocal(request, tx)).map_err(|_| NodeError::Stopped)?;
        rx.await.map_err(|_| NodeError::Stopped)?
    }

    /// The keyspace's current revision on this member (for response headers).
    pub async fn revision(&self) -> Result<i64, NodeError> {
        let (tx, rx) = oneshot::channel();
        self.input.send(Input::Revision(tx)).map_err(|_| NodeError::Stopped)?;
        rx.await.map_err(|_| NodeError::Stopped)
    }

    /// What this member's files take on disk (etcd's `dbSize` and `dbSizeInUse`). Read from
    /// the directory on a blocking thread, never on the driver: `Status` is what clients ask
    /// every member when they look for a leader, so it must cost the driver nothing (it used to
    /// encode the whole state machine, which stalled every member during elections).
    pub async fn disk_usage(&self) -> std::io::Result<balsa_storage::DiskUsage> {
        let dir = self.data_dir.clone();
        tokio::task::spawn_blocking(move || balsa_storage::disk_usage(&dir))
            .await
            .map_err(std::io::Error::other)?
    }

    /// The shortest TTL a lease is granted, seconds.
    pub fn min_lease_ttl_secs(&self) -> i64 {
        self.min_lease_ttl_secs
    }

    /// A lease's time left and keys, as this server knows them (`None`: no such lease).
    pub async fn lease_time_to_live(&self, id: i64) -> Result<Option<LeaseInfo>, NodeError> {
        let (tx, rx) = oneshot::channel();
        self.input.send(Input::LeaseTimeToLive(id, tx)).map_err(|_| NodeError::Stopped)?;
        rx.await.map_err(|_| NodeError::Stopped)
    }

    /// The ids of every lease.
    pub async fn leases(&self) -> Result<Vec<i64>, NodeError> {
        let (tx, rx) = oneshot::channel();
        self.input.send(Input::Leases(tx)).map_err(|_| NodeError::Stopped)?;
        rx.await.map_err(|_| NodeError::Stopped)
    }

    /// Changes the membership and waits until the change is over (the configuration committed
    /// and the cluster out of joint consensus). Only the leader can.
    pub async fn change_membership(&self, change: MembershipChange) -> Result<(), NodeError> {
        let (tx, rx) = oneshot::channel();
        self.input.send(Input::ChangeMembership(change, tx)).map_err(|_| NodeError::Stopped)?;
        rx.await.map_err(|_| NodeError::Stopped)?
    }

    /// The leader this member believes in, and every member (voters and learners) with its
    /// attributes as far as the member table knows them.
    pub async fn members(&self) -> Result<(Option<NodeId>, Vec<MemberInfo>), NodeError> {
        let (tx, rx) = oneshot::channel();
        self.input.send(Input::Members(tx)).map_err(|_| NodeError::Stopped)?;
        rx.await.map_err(|_| NodeError::Stopped)
    }

    /// This node's metrics (for `/metrics`).
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// The core's status.
    pub async fn status(&self) -> Result<Status, NodeError> {
        let (tx, rx) = oneshot::channel();
        self.input.send(Input::Status(tx)).map_err(|_| NodeError::Stopped)?;
        rx.await.map_err(|_| NodeError::Stopped)
    }

    /// The state machine as applied so far, encoded at one consistent point.
    pub async fn snapshot_image(&self) -> Result<SnapshotImage, NodeError> {
        let (tx, rx) = oneshot::channel();
        self.input.send(Input::Snapshot(tx)).map_err(|_| NodeError::Stopped)?;
        rx.await.map_err(|_| NodeError::Stopped)
    }

    /// etcd's HashKV on this member's applied state: (hash, compaction point, current revision).
    pub async fn hash_kv(&self, revision: i64) -> Result<(u32, i64, i64), NodeError> {
        let (tx, rx) = oneshot::channel();
        self.input.send(Input::HashKv(revision, tx)).map_err(|_| NodeError::Stopped)?;
        rx.await.map_err(|_| NodeError::Stopped)?
    }

    /// Moves leadership to `target` (this member must lead; `target` must vote) and waits until
    /// this member sees `target` lead, or `timeout` passes.
    pub async fn move_leader(&self, target: NodeId, timeout: Duration) -> Result<(), NodeError> {
        let (tx, rx) = oneshot::channel();
        self.input.send(Input::TransferLeader(target, tx)).map_err(|_| NodeError::Stopped)?;
        rx.await.map_err(|_| NodeError::Stopped)??;
        let deadline = Instant::now() + timeout;
        loop {
            if self.status().await?.leader_id == Some(target) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(NodeError::LeaderTransferTimeout);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Takes a snapshot of the applied state now and compacts the log behind it; returns its
    /// index (`None`: the latest snapshot already covers everything applied).
    pub async fn snapshot_now(&self) -> Result<Option<Index>, NodeError> {
        let (tx, rx) = oneshot::channel();
        self.input.send(Input::SnapshotNow(tx)).map_err(|_| NodeError::Stopped)?;
        rx.await.map_err(|_| NodeError::Stopped)?
    }

    /// Runs `f` on the state machine on the driver thread: once a read index is confirmed and
    /// applied (`linearizable`, as [`read`](Self::read)), or at once on the state applied so far.
    /// `f` must be quick: the driver waits for it.
    pub async fn read_with<T: Send + 'static>(
        &self,
        linearizable: bool,
        f: impl FnOnce(&StateMachine) -> T + Send + 'static,
    ) -> Result<T, NodeError> {
        let (tx, rx) = oneshot::channel();
        let job: ReadJob = Box::new(move |sm| {
            let _ = tx.send(sm.map(f));
        });
        self.input.send(Input::ReadWith { linearizable, job }).map_err(|_| NodeError::Stopped)?;
        rx.await.map_err(|_| NodeError::Stopped)?
    }
}

impl Drop for NodeHandle {
    fn drop(&mut self) {
        let _ = self.input.send(Input::Stop);
        if let Some(t) = self.thread.take() {
            // The last handle can go with a client connection's task on the driver's own thread
            // (the client server runs there): the driver stops after that task, unjoined.
            if t.thread().id() != std::thread::current().id() {
                let _ = t.join();
            }
        }
    }
}

/// Takes the data dir's lock file, which only one node at a time may hold: two nodes writing one
/// log would break every promise it records. The lock goes when its holder's process ends, or
/// when the driver holding it stops.
fn lock_data_dir(dir: &std::path::Path) -> Result<std::fs::File, String> {
    let path = dir.join(LOCK_FILE);
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| format!("opening {}: {e}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => {
            Err(format!("in use by another balsa node ({} is locked); stop it first", path.display()))
        }
        Err(std::fs::TryLockError::Error(e)) => Err(format!("locking {}: {e}", path.display())),
    }
}

/// The data dir's lock file (see [`lock_data_dir`]).
const LOCK_FILE: &str = "lock";

/// State of the driver thread.
struct Driver {
    /// Held for as long as this driver may write the data dir.
    _data_dir_lock: std::fs::File,
    metrics: Arc<Metrics>,
    raft: Raft,
    /// The store, and the log's writes of busy rounds on a thread of their own.
    log_writer: LogWriter,
    sm: StateMachine,
    config: NodeConfig,
    /// Proposals waiting to be applied, by request id: when they were made, and where to answer.
    proposals: BTreeMap<u64, (Instant, ProposeReply)>,
    /// The next request id's counter (ids are `node id << 40 | counter`).
    next_request: u64,
    /// Where the payloads of this member's proposals, and of commands forwarded to it, are
    /// written.
    payloads: Payloads,
    /// Reads with a read index, waiting for the state machine to reach it.
    reads: Vec<(Index, ReadJob)>,
    next_read: u64,
    /// Reads taken in this driver round, asking for one read index together (see
    /// `ask_read_index`).
    unasked_reads: Vec<ReadJob>,
    /// Reads waiting for their read index, by context: one context per driver round's batch.
    read_contexts: BTreeMap<u64, Vec<ReadJob>>,
    /// When each lease runs out by this server's clock.
    lease_clock: LeaseClock,
    /// Whether this server led at the last look, to notice taking over.
    was_leader: bool,
    /// When this leader last proposed its clock (sessions expire by committed leader time).
    last_clock: Option<Instant>,
    /// The peers the transport connects to and accepts, as last set.
    peer_addrs: BTreeMap<NodeId, SocketAddr>,
    /// Sends the core's messages to their peers' writers, and changes the transport's peers when
    /// members come and go.
    peer_book: crate::transport::TransportSender,
    /// Membership changes waiting to finish: their entry's index and term, when asked, and
    /// where to answer.
    conf_waiters: Vec<(Index, Term, Instant, ConfReply)>,
    /// How far behind the leader a learner may be and still be promoted.
    learner_lag_entries: u64,
    /// When this member last proposed its own attributes, so it does not flood the log.
    last_publish: Option<Instant>,
    /// Watchers, fed from the events each applied command wrote.
    watch_hub: WatchHub,
    /// Log stream subscribers, caught up from the streams' records.
    stream_hub: StreamHub,
    /// The driver's own input, for the snapshot writer to wake it when done.
    wake: InputSender,
    /// The snapshot being written on another thread; at most one at a time.
    snapshot_in_flight: Option<SnapshotInFlight>,
    /// A snapshot still being encoded, a step per round; written once everything is in.
    snapshot_encoding: Option<SnapshotEncoding>,
    /// Whether this member began a snapshot since it started: until then its thresholds are
    /// staggered by its place among the voters ([`staggered_threshold`]).
    snapshot_began: bool,
    /// A storage failure met outside `carry_out_readies`, which returns it (stopping the node).
    storage_failure: Option<balsa_storage::StorageError>,
    /// Messages of Readies that persisted nothing (commit notices, heartbeat answers), held until
    /// the round's answers to clients are written: nothing waits on them as it waits on
    /// an append, and sent first they put two peers' wake-ups ahead of the client's.
    after_replies: Vec<balsa_raft::Message>,
    /// The applied index last seen and since when it has not moved: a member quiet for
    /// [`REPACK_AFTER_QUIET`] may repack its key index.
    quiet_since: (Index, Instant),
    /// Keys the keyspace held at its last repack; 0 before the first, since a state restored at
    /// start, or installed from the leader, was decoded key by key, as loose as a bulk load.
    repacked_at_keys: usize,
}

/// A snapshot whose encoding is complete and whose file the writer is finishing, while the
/// driver goes on. The core hears of it (and may compact its log) only once the file is durable.
struct SnapshotInFlight {
    /// Its index (an install checks it is still the newest).
    index: Index,
    /// The writer, with any of the encoding's last pieces it had no room for yet.
    streamer: Streamer,
    /// The writer said it is done (so collecting it waits for nothing).
    written: bool,
    /// Driver time spent on it so far, and the encode part of it (for the metrics).
    driver_time: Duration,
    encode_time: Duration,
    /// Maintenance.Defragment's caller, answered once the snapshot is installed.
    reply: Option<SnapshotNowReply>,
}

/// A snapshot being encoded a step per round (see [`SNAPSHOT_STEP_BYTES`]), each step's bytes
/// streamed to its file by the writer thread ([`Streamer`]).
struct SnapshotEncoding {
    /// The index it stands at (its term and configuration went to the writer, for the file).
    index: Index,
    /// The encoding's state; its output is taken after every step.
    encoder: balsa_kv::SnapshotEncoder,
    /// Writes the file as the steps go.
    streamer: Streamer,
    /// Driver time spent encoding it so far (for the metrics).
    encode_time: Duration,
    /// Maintenance.Defragment's caller, answered once the snapshot is installed.
    reply: Option<SnapshotNowReply>,
}

/// Where the answer to `snapshot_now` goes.
type SnapshotNowReply = oneshot::Sender<Result<Option<Index>, NodeError>>;

impl Driver {
    async fn run(mut self, mut input: mpsc::UnboundedReceiver<Input>) {
        let mut next_tick = Instant::now() + self.config.tick;
        let mut catching_up = false;
        // One timer for the whole loop, moved to each round's tick. A timer made afresh for every
        // wait registers with the runtime's time driver when first polled, and that wrote the
        // runtime's eventfd (a system call) in every round that waited: once per put at one
        // client. Moving a registered timer to the same or a later tick only stores it.
        let tick_timer = tokio::time::sleep_until(next_tick.into());
        tokio::pin!(tick_timer);
        loop {
            // Catch-up work left over (a budget ran out) is resumed at once, not after a tick.
            // Waiting yields to the peer readers on this thread's runtime; the rest of a round
            // runs without yielding. `None`: nothing came before the tick.
            let received = if catching_up || self.snapshot_has_work() {
                match input.try_recv() {
                    Ok(i) => Some(Some(i)),
                    Err(mpsc::error::TryRecvError::Empty) => None,
                    Err(mpsc::error::TryRecvError::Disconnected) => Some(None),
                }
            } else {
                tick_timer.as_mut().reset(next_tick.into());
                tokio::select! {
                    biased;
                    i = input.recv() => Some(i),
                    () = &mut tick_timer => None,
                }
            };
            let mut round = RoundTimer::start();
            match received {
                Some(Some(Input::Stop) | None) => return self.stop(&mut input),
                Some(Some(i)) => {
                    round.time(i.kind(), || self.handle(i));
                    // Take what else is waiting before carrying out the Ready: proposals (and
                    // peers' messages) that arrive together are appended, written and synced
                    // together, one fsync for many, instead of one round each.
                    for _ in 0..MAX_INPUTS_PER_READY {
                        match input.try_recv() {
                            Ok(Input::Stop) => return self.stop(&mut input),
                            Ok(i) => round.time(i.kind(), || self.handle(i)),
                            Err(_) => break,
                        }
                    }
                }
                None => {}
            }
            self.ask_read_index();
            let inputs = round.lap();
            if Instant::now() >= next_tick {
                self.raft.tick();
                next_tick += self.config.tick;
                // Once a tick, not per message: these look at every lease and member.
                self.expire_leases();
                self.commit_clock();
                self.refresh_peers();
                self.publish_attrs();
                self.settle_if_quiet();
            }
            if let Err(e) = self.carry_out_readies().await {
                // A storage failure (a failed fsync above all) stops the node: its disk can no
                // longer be trusted, and continuing could acknowledge what is not durable.
                tracing::error!(error = %e, "storage failed; the node stops");
                return self.stop(&mut input);
            }
            if !self.after_replies.is_empty() {
                // The answers' tasks run on this thread: let them write before the peers' turn.
                tokio::task::yield_now().await;
                self.send_held_messages();
            }
            self.continue_snapshot(snapshot_step_bytes());
            let ready = round.lap();
            catching_up = self.watch_hub.catch_up(&self.sm);
            let watches = round.lap();
            self.stream_hub.catch_up(&self.sm.streams);
            round.report_if_slow(inputs, ready, watches);
            self.metrics.observe(&self.raft.status(), self.proposals.len());
            self.metrics.snapshot_read_errors(self.raft.snapshot_read_errors());
            self.metrics.peer_sent(self.peer_book.sent());
            if catching_up || self.snapshot_has_work() || !input.is_empty() {
                // The wait above will not yield (work is left, or input is waiting): let the
                // peer readers on this runtime run first, or a steady stream of proposals, a
                // watcher's catch-up or a snapshot's encoding would keep peers' messages unread
                // for rounds on end.
                tokio::task::yield_now().await;
            }
        }
    }

    fn handle(&mut self, input: Input) {
        match input {
            Input::Peer(mut d) => {
                if let MessageBody::Propose(p) = &mut d.message.body {
                    // A command forwarded by a follower arrives in a frame of its own; kept as
                    // it came, each would hold its whole frame (and a shared header) for as long
                    // as the keyspace holds its key. Packed, it costs what the leader's own do.
                    for command in &mut p.commands {
                        *command = self.payloads.pack(|buf| buf.put_slice(command));
                    }
                }
                if let Err(e) = self.raft.step(d.message) {
                    tracing::warn!(error = %e, "message refused");
                }
            }
            Input::Propose(command, reply) => {
                let (id, data) = self.tag(&command);
                match self.raft.propose_anywhere(data) {
                    Ok(()) => {
                        self.proposals.insert(id, (Instant::now(), reply));
                    }
                    Err(ProposeError::NotLeader { leader_hint }) => {
                        self.metrics.proposal_failed();
                        let _ = reply.send(Err(NodeError::NotLeader { leader_hint }));
                    }
                    Err(ProposeError::TransferInProgress { .. }) => {
                        self.metrics.proposal_failed();
                        let _ = reply.send(Err(NodeError::NotLeader { leader_hint: None }));
                    }
                }
            }
            Input::Read(request, reply) => self.read_index(Box::new(move |sm| {
                let _ = reply.send(sm.and_then(|sm| sm.range(&request).map_err(NodeError::from)));
            })),
            Input::ReadLocal(request, reply) => {
                let _ = reply.send(self.sm.range(&request).map_err(NodeError::from));
            }
            Input::Revision(reply) => {
                let _ = reply.send(self.sm.mvcc.revision());
            }
            Input::Status(reply) => {
                let _ = reply.send(self.raft.status());
            }
            Input::LeaseTimeToLive(id, reply) => {
                let info = self.sm.leases.get(&id).map(|lease| LeaseInfo {
                    remaining: self
                        .lease_clock
                        .remaining(id, Instant::now())
                        .unwrap_or(Duration::from_secs(lease.ttl_secs.max(0) as u64)),
                    granted_ttl_secs: lease.ttl_secs,
                    keys: lease.keys.iter().cloned().collect(),
                });
                let _ = reply.send(info);
            }
            Input::Leases(reply) => {
                let _ = reply.send(self.sm.leases.keys().copied().collect());
            }
            Input::ChangeMembership(change, reply) => self.change_membership(change, reply),
            Input::Members(reply) => {
                let _ = reply.send((self.raft.leader_id(), self.member_view()));
            }
            Input::Stop => {}
            Input::Watch(command) => self.watch_hub.handle(command, &self.sm),
            Input::Snapshot(reply) => {
                let _ = reply.send(self.snapshot_image());
            }
            Input::HashKv(revision, reply) => {
                let hash = self.sm.mvcc.hash_kv(revision).map(|(h, c)| (h, c, self.sm.mvcc.revision()));
                let _ = reply.send(hash.map_err(NodeError::from));
            }
            Input::TransferLeader(target, reply) => {
                let _ = reply.send(self.transfer_leader(target));
            }
            Input::SnapshotNow(reply) => self.snapshot_now(reply),
            Input::SnapshotWritten => {
                if let Some(f) = &mut self.snapshot_in_flight {
                    f.written = true;
                }
            }
            Input::ReadWith { linearizable: true, job } => self.read_index(job),
            Input::ReadWith { linearizable: false, job } => job(Ok(&self.sm)),
            Input::Streams(command) => self.stream_hub.handle(command, &self.sm.streams),
        }
    }

    /// The entry payload of a command: its request id, then the command. Any member can propose
    /// (followers forward to the leader, as etcd does); the proposer recognises its own entry
    /// by the id when it is applied.
    fn tag(&mut self, command: &Command) -> (u64, Bytes) {
        self.next_request += 1;
        let id = (self.config.id << 40) | self.next_request;
        let data = self.payloads.pack(|buf| {
            buf.put_u64_le(id);
            command.encode_into(buf);
        });
        (id, data)
    }

    async fn carry_out_readies(&mut self) -> Result<(), balsa_storage::StorageError> {
        if let Some(e) = self.storage_failure.take() {
            return Err(e);
        }
        self.collect_snapshot(false)?;
        while self.raft.has_ready() {
            let mut ready = self.raft.ready();
            let batch = std::mem::take(&mut ready.persist);
            if !batch.must_sync() {
                self.after_replies.append(&mut ready.messages);
            } else {
                // Sent before the write and sync below (the leader replicates while it syncs);
                // held messages first, so each peer's messages leave in order.
                self.send_held_messages();
                self.peer_book.send_all(std::mem::take(&mut ready.messages));
            }
            // Once per Ready: only catch-up (outside this loop) makes a watcher synced.
            let record = self.watch_hub.wants_events();
            if batch.must_sync() && batch.snapshot.is_none() && !ready.committed_entries.is_empty() {
                // Committed entries are durable here already (the core hands out none past what
                // an earlier Ready made durable): apply them, and let their answers go out, before
                // this Ready's write and sync, which take a disk's round trip.
                let answered = self.proposals.len();
                for entry in std::mem::take(&mut ready.committed_entries) {
                    self.apply(&entry, record);
                }
                if self.proposals.len() != answered && !self.log_writer.offloads(&batch) {
                    // Written in place, the batch holds the thread: the answers' tasks go first.
                    tokio::task::yield_now().await;
                }
            }
            let batch = self.log_writer.persist(batch).await?;
            if let Some(s) = &batch.snapshot {
                let before = self.sm.mvcc.revision();
                let data = s.data.to_bytes().expect("a snapshot from the leader is assembled in memory");
                // A snapshot of our own still being encoded is of a state now replaced.
                self.snapshot_encoding = None;
                self.sm = StateMachine::decode(data)
                    .unwrap_or_else(|e| panic!("a snapshot from the leader does not decode: {e}"));
                // Decoded key by key, in order: as loose as a tree grown by keys in order.
                self.repacked_at_keys = 0;
                // The core assembled it in memory; from now on it reads chunks from the file, so
                // the bytes go with this batch.
                if let Some(stored) =
                    self.log_writer.store().snapshot().filter(|stored| stored.meta == s.meta)
                {
                    self.raft.replace_snapshot_data(&stored.meta, stored.data.clone());
                }
                self.lease_clock.restart_all(&self.sm.leases, Instant::now());
                self.watch_hub.state_replaced(before);
            }
            let receipt = batch.durable();
            self.peer_book.send_all(ready.gated_messages.release(&receipt));
            for entry in std::mem::take(&mut ready.committed_entries) {
                self.apply(&entry, record);
            }
            for rs in std::mem::take(&mut ready.read_states) {
                let context = u64::from_le_bytes(rs.context[..8].try_into().expect("our own 8-byte context"));
                let Some(jobs) = self.read_contexts.remove(&context) else { continue };
                for job in jobs {
                    match rs.result {
                        Ok(index) => self.reads.push((index, job)),
                        Err(ReadIndexError::NotLeader { leader_hint }) => {
                            job(Err(NodeError::NotLeader { leader_hint }))
                        }
                    }
                }
            }
            self.raft.advance(receipt);
            self.serve_reads();
            self.maybe_snapshot();
        }
        self.finish_membership_changes();
        // Forwarded proposals can be lost on the way (a change of leader); answer them in time.
        let now = Instant::now();
        let expired: Vec<u64> = self
            .proposals
            .iter()
            .filter(|(_, (at, _))| now - *at > PROPOSAL_TIMEOUT)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            if let Some((_, reply)) = self.proposals.remove(&id) {
                self.metrics.proposal_failed();
                let _ = reply.send(Err(NodeError::Dropped));
            }
        }
        Ok(())
    }

    /// Applies one committed entry and answers its proposer if that is this member; `record`:
    /// collect the change feed for synced watchers (a put's events cost clones otherwise spent
    /// for nobody).
    fn apply(&mut self, entry: &balsa_raft::Entry, record: bool) {
        if entry.kind != EntryKind::Normal {
            return;
        }
        if entry.data.len() < 8 {
            tracing::error!(index = entry.index, "an entry without a request id; skipped on every member");
            return;
        }
        let id = u64::from_le_bytes(entry.data[..8].try_into().expect("8 bytes"));
        let mut events = Vec::new();
        let result = match Command::decode(entry.data.slice(8..)) {
            Ok(command) => {
                if command.compacts() {
                    // A compaction removes versions the snapshot being encoded still needs.
                    self.continue_snapshot(usize::MAX);
                }
                if let Some(encoding) = &mut self.snapshot_encoding {
                    // A trim, a delete or a retention may remove a stream's records it still
                    // reads: those are encoded now.
                    encoding.encoder.before_apply(&self.sm, &command);
                }
                let result = if record {
                    self.sm.apply_recording(&command, &mut events)
                } else {
                    self.sm.apply(&command)
                };
                self.observe_applied(&command, &result);
                self.stream_hub.applied(&command, &result);
                result.map_err(NodeError::from)
            }
            Err(e) => Err(NodeError::from(e)),
        };
        self.watch_hub.publish(&events);
        if let Some((proposed_at, reply)) = self.proposals.remove(&id) {
            self.metrics.proposal_applied(proposed_at);
            let _ = reply.send(result);
        }
    }

    /// Keeps what lives beside the state machine in step with it.
    fn observe_applied(&mut self, command: &Command, result: &Result<Response, balsa_kv::KvError>) {
        let now = Instant::now();
        match result {
            Ok(Response::LeaseKeepAlive { ttl_secs, .. }) => {
                self.lease_clock.applied(command, Some(*ttl_secs), now)
            }
            Ok(_) => self.lease_clock.applied(command, None, now),
            Err(_) => {}
        }
    }

    /// The leader revokes expired leases through the log; a server that just took over first
    /// gives every lease a full TTL (see `lease_clock`).
    fn expire_leases(&mut self) {
        let leading = self.raft.role() == Role::Leader;
        let now = Instant::now();
        if leading && !self.was_leader {
            self.lease_clock.restart_all(&self.sm.leases, now);
        }
        self.was_leader = leading;
        if !leading {
            return;
        }
        for id in self.lease_clock.due(now) {
            let (_, data) = self.tag(&Command::LeaseRevoke { id });
            if let Err(e) = self.raft.propose(data) {
                tracing::debug!(lease = id, error = %e, "expired lease not revoked yet");
            }
        }
    }

    fn change_membership(&mut self, change: MembershipChange, reply: oneshot::Sender<Result<(), NodeError>>) {
        if let Err(e) = self.check_membership_change(&change) {
            let _ = reply.send(Err(e));
            return;
        }
        match self.raft.change_membership(change) {
            Ok(index) => {
                let term = self.raft.current_term();
                self.conf_waiters.push((index, term, Instant::now(), reply));
            }
            Err(e) => {
                let _ = reply.send(Err(match e {
                    ConfChangeError::NotLeader { leader_hint } => NodeError::NotLeader { leader_hint },
                    ConfChangeError::TransferInProgress { .. } => NodeError::NotLeader { leader_hint: None },
                    ConfChangeError::InProgress => NodeError::MembershipChangeInProgress,
                    ConfChangeError::Invalid(why) => NodeError::InvalidMembership(why),
                }));
            }
        }
    }

    /// etcd's checks, made here so the client hears etcd's errors.
    fn check_membership_change(&self, change: &MembershipChange) -> Result<(), NodeError> {
        if self.raft.role() != Role::Leader {
            return Err(NodeError::NotLeader { leader_hint: self.raft.leader_id() });
        }
        let m = self.raft.membership();
        match change {
            MembershipChange::AddVoter(id) | MembershipChange::AddLearner(id) if m.contains(*id) => {
                Err(NodeError::MemberExists)
            }
            MembershipChange::Remove(id) | MembershipChange::Promote(id) if !m.contains(*id) => {
                Err(NodeError::MemberNotFound)
            }
            MembershipChange::Promote(id) if !m.learners.contains(id) => Err(NodeError::NotLearner),
            MembershipChange::Promote(id) => {
                let last = self.raft.status().last_index;
                let caught_up = self
                    .raft
                    .progress(*id)
                    .is_some_and(|p| p.match_index > 0 && p.match_index + self.learner_lag_entries >= last);
                if caught_up {
                    Ok(())
                } else {
                    Err(NodeError::LearnerNotReady)
                }
            }
            _ => Ok(()),
        }
    }

    /// Answers membership changes that are over, or lost (their entry replaced by a new
    /// leader), or taking too long.
    fn finish_membership_changes(&mut self) {
        if self.conf_waiters.is_empty() {
            return;
        }
        let commit = self.raft.status().commit_index;
        let settled = self.raft.membership_settled();
        let now = Instant::now();
        let waiters = std::mem::take(&mut self.conf_waiters);
        for (index, term, at, reply) in waiters {
            let replaced = self.raft.term_at(index).is_some_and(|t| t != term);
            if replaced || now - at > MEMBERSHIP_CHANGE_TIMEOUT {
                let _ = reply.send(Err(NodeError::Dropped));
            } else if commit >= index && settled {
                let _ = reply.send(Ok(()));
            } else {
                self.conf_waiters.push((index, term, at, reply));
            }
        }
    }

    /// Every member of the configuration in effect, with what the member table knows of it
    /// (a founding member that has not published yet shows its peer URL from the flags).
    fn member_view(&self) -> Vec<MemberInfo> {
        let m = self.raft.membership();
        m.members()
            .into_iter()
            .map(|id| {
                let attrs = self.sm.members.get(&id).cloned().unwrap_or_else(|| MemberAttrs {
                    id,
                    peer_urls: self
                        .config
                        .peers
                        .get(&id)
                        .map(|a| vec![format!("http://{a}")])
                        .unwrap_or_default(),
                    ..MemberAttrs::default()
                });
                MemberInfo { attrs, is_learner: m.learners.contains(&id) }
            })
            .collect()
    }

    /// Points the transport at the current members: the member table's addresses, the flags'
    /// for members not in it yet, and nobody who has left. Until this server has joined, it
    /// keeps every address the flags gave, so the leader can reach it.
    fn refresh_peers(&mut self) {
        let m = self.raft.membership();
        let joined = m.contains(self.config.id);
        let mut peers: BTreeMap<NodeId, SocketAddr> = self
            .config
            .peers
            .iter()
            .filter(|(id, _)| !joined || m.contains(**id) || self.sm.members.contains_key(id))
            .map(|(id, a)| (*id, *a))
            .collect();
        for (id, attrs) in &self.sm.members {
            let addr = attrs.peer_urls.first().and_then(|u| crate::config::parse_url("peer URL", u).ok());
            if let Some(addr) = addr {
                peers.insert(*id, addr);
            }
        }
        if peers != self.peer_addrs {
            tracing::info!(peers = ?peers, "peer set changed");
            self.peer_book.set_peers(&peers);
            self.peer_addrs = peers;
        }
    }

    /// Publishes this member's name and client URLs to the member table once it is a member and
    /// a leader is known (etcd does the same at start), retrying until the table shows them.
    fn publish_attrs(&mut self) {
        let me = self.config.id;
        if !self.raft.membership().contains(me) || self.raft.leader_id().is_none() {
            return;
        }
        let current = self.sm.members.get(&me);
        let peer_urls = current.map(|a| a.peer_urls.clone()).filter(|u| !u.is_empty()).unwrap_or_else(|| {
            self.config.peers.get(&me).map(|a| vec![format!("http://{a}")]).unwrap_or_default()
        });
        let mine = MemberAttrs {
            id: me,
            name: self.config.name.clone(),
            peer_urls,
            client_urls: self.config.client_urls.clone(),
        };
        if current == Some(&mine) || self.last_publish.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
            return;
        }
        self.last_publish = Some(Instant::now());
        let (_, data) = self.tag(&Command::MemberPut(mine));
        if let Err(e) = self.raft.propose_anywhere(data) {
            tracing::debug!(error = %e, "member attributes not published yet");
        }
    }

    /// The leader commits its clock once a second while sessions exist, so every replica
    /// expires sessions at the same point of the log (see `balsa_kv::sessions`).
    fn commit_clock(&mut self) {
        if self.raft.role() != Role::Leader || self.sm.sessions.table.is_empty() {
            return;
        }
        if self.last_clock.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
            return;
        }
        self.last_clock = Some(Instant::now());
        let (_, data) = self.tag(&Command::Clock { now_ms: crate::session::now_ms() });
        if let Err(e) = self.raft.propose(data) {
            tracing::debug!(error = %e, "clock not committed yet");
        }
    }

    /// Sends the messages held for after the round's answers ([`Driver::after_replies`]).
    fn send_held_messages(&mut self) {
        self.peer_book.send_all(std::mem::take(&mut self.after_replies));
    }

    /// Once the member has been quiet for its turn: repacks the key index if enough keys came
    /// since the last repack (see [`REPACK_AFTER_QUIET`]; never while a snapshot is being encoded
    /// from it), then begins a snapshot if the log since the last one is long
    /// (`quiet_snapshot_due`).
    fn settle_if_quiet(&mut self) {
        let (applied, now) = (self.raft.status().last_applied, Instant::now());
        if applied != self.quiet_since.0 {
            self.quiet_since = (applied, now);
            return;
        }
        let keys = self.sm.mvcc.key_count();
        let (voters, leader) = (&self.raft.membership().voters, self.raft.leader_id());
        let rank = voters.iter().filter(|&&v| Some(v) != leader).position(|&v| v == self.raft.id());
        let turn = repack_turn(self.raft.role() == Role::Leader, rank, voters.len());
        let quiet = now - self.quiet_since.1;
        if repack_due(keys, self.repacked_at_keys, quiet, turn) && self.snapshot_encoding.is_none() {
            self.sm.mvcc.repack();
            self.repacked_at_keys = keys;
            tracing::info!(
                keys,
                turn,
                took_ms = now.elapsed().as_millis() as u64,
                "repacked the key index while quiet"
            );
        }
        let snapshotted = self.raft.latest_snapshot().map_or(0, |(meta, _)| meta.last_included_index);
        let busy = self.snapshot_encoding.is_some() || self.snapshot_in_flight.is_some();
        let log = (applied.saturating_sub(snapshotted), self.raft.applied_bytes_since_snapshot());
        if !busy && quiet_snapshot_due(log, self.last_snapshot_bytes(), quiet, turn) {
            tracing::info!(index = applied, entries = log.0, turn, "snapshot while quiet");
            self.start_snapshot(applied, None);
        }
    }

    fn serve_reads(&mut self) {
        let applied = self.raft.status().last_applied;
        let (ready, waiting): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.reads).into_iter().partition(|(i, _)| *i <= applied);
        self.reads = waiting;
        for (_, job) in ready {
            job(Ok(&self.sm));
        }
    }

    /// Size of the latest snapshot's data (0 before the first).
    fn last_snapshot_bytes(&self) -> u64 {
        self.raft.latest_snapshot().map_or(0, |(_, data)| data.len())
    }

    /// Starts a snapshot when the core says one is due and none is being written.
    fn maybe_snapshot(&mut self) {
        if self.snapshot_in_flight.is_some() || self.snapshot_encoding.is_some() {
            return;
        }
        let (mut max_entries, mut max_bytes) = (self.config.snapshot_entries, SNAPSHOT_LOG_BYTES);
        if !self.snapshot_began {
            let voters = &self.raft.membership().voters;
            let place = voters.iter().position(|&v| v == self.raft.id()).unwrap_or(0);
            max_entries = staggered_threshold(max_entries, place, voters.len());
            max_bytes = staggered_threshold(max_bytes, place, voters.len());
        }
        let Some(index) = self.raft.snapshot_due(max_entries, max_bytes) else { return };
        if snapshot_pays_off(self.raft.applied_bytes_since_snapshot(), self.last_snapshot_bytes()) {
            self.start_snapshot(index, None);
        }
    }

    /// Begins a snapshot of the state at `index` (the last applied entry): encoded here, a step
    /// per round ([`Driver::continue_snapshot`]; at once for Maintenance.Defragment's caller,
    /// `reply`), each step's bytes written to the file by a thread of its own as they are made.
    fn start_snapshot(&mut self, index: Index, reply: Option<SnapshotNowReply>) {
        assert!(self.snapshot_in_flight.is_none(), "one snapshot at a time");
        assert!(self.snapshot_encoding.is_none(), "one snapshot at a time");
        assert_eq!(index, self.raft.status().last_applied, "the state machine is at the snapshot's index");
        let start = Instant::now();
        self.snapshot_began = true;
        let term = self.raft.term_at(index).expect("applied entries are in the log");
        let meta = balsa_raft::SnapshotMeta {
            last_included_index: index,
            last_included_term: term,
            membership: self.raft.membership_at(index),
        };
        let wake = self.wake.clone();
        let wake = move || {
            let _ = wake.send(Input::SnapshotWritten);
        };
        let streamer = match Streamer::start(self.log_writer.store().snapshot_writer(), meta, wake) {
            Ok(streamer) => streamer,
            Err(e) => {
                // Tried again when the next one is due (the log keeps everything meanwhile).
                tracing::warn!(error = %e, index, "no thread to write a snapshot; not taken");
                if let Some(reply) = reply {
                    let _ = reply.send(Err(NodeError::Dropped));
                }
                return;
            }
        };
        // Room for two steps: a step's bytes are taken out after it, and reused once written.
        let encoder = self.sm.begin_snapshot(2 * snapshot_step_bytes().min(64 << 20));
        self.snapshot_encoding =
            Some(SnapshotEncoding { index, encoder, streamer, encode_time: start.elapsed(), reply: None });
        // The driver's loop takes the steps; Defragment's caller waits for the whole of it.
        if let Some(reply) = reply {
            self.continue_snapshot(usize::MAX);
            match (&mut self.snapshot_in_flight, &mut self.snapshot_encoding) {
                (Some(f), _) => f.reply = Some(reply),
                (None, Some(e)) => e.reply = Some(reply),
                (None, None) => unreachable!("the snapshot just started is encoding or written"),
            }
        }
    }

    /// Whether a snapshot's encoding has a step to take now (it has not, while its writer is
    /// behind: the driver then waits for input or the tick as usual instead of spinning).
    fn snapshot_has_work(&self) -> bool {
        self.snapshot_encoding.as_ref().is_some_and(|e| !e.streamer.is_backed_up())
    }

    /// Encodes up to `budget_bytes` more of the snapshot being encoded, if any, and hands the
    /// bytes to its writer; once everything is in, tells the writer to finish the file. No step is
    /// taken while the writer has no room for the last one's bytes.
    fn continue_snapshot(&mut self, budget_bytes: usize) {
        if let Some(f) = &mut self.snapshot_in_flight {
            f.streamer.flush();
        }
        let Some(encoding) = &mut self.snapshot_encoding else { return };
        if !encoding.streamer.flush() && budget_bytes != usize::MAX {
            return;
        }
        let start = Instant::now();
        let done = encoding.encoder.step(&self.sm, budget_bytes);
        let output = encoding.encoder.take_output();
        encoding.streamer.send(output);
        encoding.encode_time += start.elapsed();
        if !done {
            return;
        }
        let SnapshotEncoding { index, encoder, mut streamer, encode_time, reply } =
            self.snapshot_encoding.take().expect("checked above");
        let start = Instant::now();
        let (head, last) = encoder.finish_streamed();
        streamer.send(last);
        streamer.finish(head);
        let encode_time = encode_time + start.elapsed();
        self.snapshot_in_flight = Some(SnapshotInFlight {
            index,
            streamer,
            written: false,
            driver_time: encode_time,
            encode_time,
            reply,
        });
    }

    /// Once the snapshot file is durable (`wait`: waiting for it), installs it in the store,
    /// which compacts the log, and hands it to the core, which compacts its own. A failed write
    /// stops the node, as a failed write on the driver does. A snapshot overtaken meanwhile by
    /// one from the leader is dropped (its file goes with the store's retention).
    fn collect_snapshot(&mut self, wait: bool) -> Result<(), balsa_storage::StorageError> {
        match &self.snapshot_in_flight {
            Some(f) if wait || f.written || f.streamer.is_finished() => {}
            _ => return Ok(()),
        }
        let f = self.snapshot_in_flight.take().expect("checked above");
        let (snapshot, save_time) = match f.streamer.wait() {
            Ok(written) => written,
            Err(e) => {
                if let Some(reply) = f.reply {
                    let _ = reply.send(Err(NodeError::Stopped));
                }
                return Err(e);
            }
        };
        self.metrics.snapshot_save_time(save_time);
        let start = Instant::now();
        let index = f.index;
        let latest = self.raft.latest_snapshot().map_or(0, |(meta, _)| meta.last_included_index);
        if index > latest && self.log_writer.store_mut().install_snapshot(&snapshot)? {
            self.metrics.snapshot_saved();
            let stored = self.log_writer.store().snapshot().cloned().expect("just installed");
            self.raft.snapshot_taken(stored).expect("a snapshot of applied state");
        } else {
            tracing::info!(index, latest, "snapshot overtaken by a newer one while it was written");
        }
        self.metrics.snapshot_driver_time(f.driver_time + start.elapsed(), f.encode_time);
        if let Some(reply) = f.reply {
            let _ = reply.send(Ok(Some(index)));
        }
        Ok(())
    }

    /// Stops the driver: everyone waiting on it is answered `Stopped` first, then a snapshot
    /// still being written is waited for and installed (its file is then durable and older ones
    /// pruned, as in a running node), so nothing of this node outlives it and a stopped node's
    /// directory looks like a running one's.
    fn stop(&mut self, input: &mut mpsc::UnboundedReceiver<Input>) {
        // Marked stopped before anyone is told so: a caller answered `Stopped` reads it at once.
        self.metrics.node_stopped();
        self.hang_up(input);
        if let Err(e) = self.collect_snapshot(true) {
            tracing::error!(error = %e, "the snapshot being written when the node stopped failed");
        }
    }

    /// Answers every caller waiting on this driver with `Stopped` (their answer's sender
    /// dropped), and every later one (the input closed). The rest of stopping may wait long: a
    /// snapshot's write, and, as the store drops, a spare log segment's zero-fill on its thread
    /// (seconds on a loaded disk); callers left to the driver's drop waited for all of it, as
    /// the proposals are dropped after the store. CI saw a write unanswered 10 s that way.
    fn hang_up(&mut self, input: &mut mpsc::UnboundedReceiver<Input>) {
        input.close();
        while let Ok(queued) = input.try_recv() {
            drop(queued);
        }
        drop(std::mem::take(&mut self.proposals));
        drop(std::mem::take(&mut self.reads));
        drop(std::mem::take(&mut self.unasked_reads));
        drop(std::mem::take(&mut self.read_contexts));
        drop(std::mem::take(&mut self.conf_waiters));
    }

    /// The applied state, encoded, with the index and term it stands at.
    fn snapshot_image(&self) -> SnapshotImage {
        let index = self.raft.status().last_applied;
        let term = self
            .raft
            .term_at(index)
            .or_else(|| self.log_writer.store().snapshot().map(|s| s.meta.last_included_term));
        SnapshotImage {
            data: self.sm.encode(),
            index,
            term: term.unwrap_or(0),
            revision: self.sm.mvcc.revision(),
        }
    }

    /// etcd's checks for MoveLeader, then the core's transfer.
    fn transfer_leader(&mut self, target: NodeId) -> Result<(), NodeError> {
        if self.raft.role() != Role::Leader {
            return Err(NodeError::NotLeader { leader_hint: self.raft.leader_id() });
        }
        self.raft.transfer_leader(target).map_err(|e| match e {
            balsa_raft::TransferError::NotLeader { leader_hint } => NodeError::NotLeader { leader_hint },
            _ => NodeError::BadLeaderTransferee,
        })
    }

    /// A snapshot at the last applied index, saved and handed to the core (which compacts the
    /// log behind it, keeping its catch-up tail), whatever `snapshot_entries` says. `reply` gets
    /// its index once it is installed (`None`: the latest snapshot already covers everything
    /// applied). A snapshot being written is finished first.
    fn snapshot_now(&mut self, reply: SnapshotNowReply) {
        self.continue_snapshot(usize::MAX);
        if let Err(e) = self.collect_snapshot(true) {
            // The next round of carry_out_readies returns it, which stops the node.
            self.storage_failure = Some(e);
            let _ = reply.send(Err(NodeError::Stopped));
            return;
        }
        let status = self.raft.status();
        let index = status.last_applied;
        let latest = self.raft.latest_snapshot().map_or(0, |(meta, _)| meta.last_included_index);
        if index <= latest.max(status.snapshot_index) || self.raft.term_at(index).is_none() {
            let _ = reply.send(Ok(None));
            return;
        }
        self.start_snapshot(index, Some(reply));
    }

    /// Queues a linearizable read: `job` runs once the state machine has applied up to a read
    /// index asked for after it arrived (`ask_read_index`, at the end of this driver round).
    fn read_index(&mut self, job: ReadJob) {
        self.unasked_reads.push(job);
    }

    /// Asks the core for one read index for every read taken in this round (etcd batches its
    /// reads the same way). One index serves them all: it is asked for after each of them
    /// arrived, so it covers every write they may have seen acknowledged (thesis 6.4). A
    /// follower so sends the leader one ReadIndex message per round instead of one per read,
    /// and gets one answer back.
    fn ask_read_index(&mut self) {
        if self.unasked_reads.is_empty() {
            return;
        }
        let jobs = std::mem::take(&mut self.unasked_reads);
        let context = self.next_read;
        self.next_read += 1;
        match self.raft.read_index(Bytes::copy_from_slice(&context.to_le_bytes())) {
            Ok(()) => {
                self.read_contexts.insert(context, jobs);
            }
            Err(ReadIndexError::NotLeader { leader_hint }) => {
                for job in jobs {
                    job(Err(NodeError::NotLeader { leader_hint }));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_states_are_snapshotted_whenever_due() {
        assert!(snapshot_pays_off(0, 0), "the first snapshot");
        assert!(snapshot_pays_off(1, SNAPSHOT_FREE_BYTES), "a state up to the free size");
    }

    #[test]
    fn a_large_state_waits_for_its_size_of_log() {
        let state = SNAPSHOT_FREE_BYTES + (100 << 20);
        assert!(!snapshot_pays_off(0, state));
        assert!(!snapshot_pays_off(50 << 20, state), "half the size is not enough");
        assert!(!snapshot_pays_off((100 << 20) - 1, state), "one byte short");
        assert!(snapshot_pays_off(100 << 20, state));
        assert!(snapshot_pays_off(u64::MAX, u64::MAX), "no overflow");
    }

    /// A repack waits for a quiet second and for enough new keys, and then for an eighth more
    /// once the keyspace is large; a keyspace that only rewrites its keys is never repacked.
    #[test]
    fn repacks_wait_for_quiet_and_for_enough_new_keys() {
        let quiet = REPACK_AFTER_QUIET;
        assert!(repack_due(50_000, 0, quiet, 0), "a first bulk load of 50,000 keys");
        assert!(!repack_due(49_999, 0, quiet, 0), "fewer new keys than the minimum");
        assert!(!repack_due(1_000_000, 0, quiet - Duration::from_millis(1), 0), "not quiet long enough");
        // Past 400,000 keys the growth needed is an eighth of the keys at the last repack.
        assert!(!repack_due(1_124_999, 1_000_000, quiet, 0));
        assert!(repack_due(1_125_000, 1_000_000, quiet, 0));
        assert!(!repack_due(10_000, 10_000, 10 * quiet, 0), "a keyspace that does not grow is left alone");
    }

    /// Members repack one quiet period apart: followers in their order among the voters, the
    /// leader last.
    #[test]
    fn repacks_take_turns_followers_first_the_leader_last() {
        let quiet = REPACK_AFTER_QUIET;
        let turns: Vec<u32> = [(false, Some(0)), (true, None), (false, Some(1))]
            .into_iter()
            .map(|(leading, rank)| repack_turn(leading, rank, 3))
            .collect();
        assert_eq!(turns, [0, 2, 1], "the two followers first, the leader after both");
        assert_eq!(repack_turn(false, None, 3), 0, "a learner holds up no quorum: first");
        assert_eq!(repack_turn(true, None, 1), 0, "a lone member waits no longer");
        assert_eq!(repack_turn(true, None, 5), 4, "five voters: after four followers");
        for turn in 0..4 {
            let due = quiet * (1 + turn);
            assert!(repack_due(1_000_000, 0, due, turn), "turn {turn} is due after {due:?}");
            assert!(
                !repack_due(1_000_000, 0, due - Duration::from_millis(1), turn),
                "turn {turn} waits its whole share"
            );
        }
    }

    /// A quiet member snapshots on its turn when its log is long, in entries and against the
    /// last snapshot's size; not before its turn, not for a short log.
    #[test]
    fn a_quiet_member_with_a_long_log_snapshots_on_its_turn() {
        let (quiet, mib) = (REPACK_AFTER_QUIET, 1u64 << 20);
        // After a 1M-key load: 431,472 entries (130 MiB) since a snapshot of 270 MiB.
        let long = (431_472, 130 * mib);
        assert!(quiet_snapshot_due(long, 270 * mib, quiet * 2, 1), "due on its turn");
        assert!(!quiet_snapshot_due(long, 270 * mib, quiet * 2 - Duration::from_millis(1), 1), "not before");
        assert!(quiet_snapshot_due(long, 0, quiet, 0), "no snapshot yet: due");
        assert!(!quiet_snapshot_due((99_999, 130 * mib), 270 * mib, quiet, 0), "too few entries");
        // 134,464 entries (40 MiB) since a snapshot of 400 MiB: a tenth, left to `snapshot_due`.
        assert!(!quiet_snapshot_due((134_464, 40 * mib), 400 * mib, quiet * 5, 0), "a short log waits");
        assert!(quiet_snapshot_due((134_464, 100 * mib), 400 * mib, quiet, 0), "a quarter is enough");
    }

    #[test]
    fn first_snapshots_are_staggered_by_place_among_voters() {
        let thresholds: Vec<u64> = (0..3).map(|place| staggered_threshold(100_000, place, 3)).collect();
        assert_eq!(thresholds, [100_000, 133_333, 166_666], "a third of the threshold apart");
        assert_eq!(staggered_threshold(100_000, 0, 1), 100_000, "a single member waits no longer");
        assert_eq!(
            staggered_threshold(100_000, 0, 0),
            100_000,
            "no voters known yet (a member still joining): no stagger"
        );
        assert_eq!(staggered_threshold(u64::MAX, 4, 5), u64::MAX, "no overflow");
    }
}
