//! The node driver: one thread runs the Raft core, the write-ahead log and the state machine,
//! carrying out each Ready in the order the core documents (send, write, sync, release gated
//! messages, apply, advance). Clients talk to it through a [`NodeHandle`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use balsa_kv::{Command, KvError, RangeRequest, RangeResponse, Response, StateMachine};
use balsa_raft::{
    Config, EntryKind, Index, Membership, NodeId, ProposeError, Raft, ReadIndexError, Snapshot, Status,
};
use balsa_storage::{DiskStore, LogStore, StoreOptions};
use bytes::Bytes;
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

use crate::metrics::Metrics;
use crate::transport::{Transport, TransportConfig};

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
}

/// How long a proposal may take before its client is told the outcome is unknown.
const PROPOSAL_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the answer to a read goes.
type ReadReply = oneshot::Sender<Result<RangeResponse, NodeError>>;
/// Where the answer to a proposal goes.
type ProposeReply = oneshot::Sender<Result<Response, NodeError>>;

enum Input {
    Peer(balsa_raft::Message),
    Propose(Command, ProposeReply),
    Read(RangeRequest, ReadReply),
    ReadLocal(RangeRequest, ReadReply),
    Status(oneshot::Sender<Status>),
    StateSize(oneshot::Sender<(usize, i64)>),
    Stop,
}

/// A running node. Dropping it stops the node.
pub struct NodeHandle {
    input: std_mpsc::Sender<Input>,
    thread: Option<std::thread::JoinHandle<()>>,
    _transport: Transport,
    metrics: Arc<Metrics>,
}

impl NodeHandle {
    /// Starts a node: recovers its disk, binds nothing itself (the peer listener is given), and
    /// begins ticking.
    pub async fn start(config: NodeConfig, peer_listener: TcpListener) -> Result<Self, String> {
        let store = DiskStore::open(&config.data_dir, StoreOptions::default()).map_err(|e| e.to_string())?;
        let members = Membership::new(config.peers.keys().copied());
        let initial = store.initial_state(&members).map_err(|e| e.to_string())?;
        let sm = match &initial.snapshot {
            Some(s) => StateMachine::decode(s.data.clone()).map_err(|e| e.to_string())?,
            None => StateMachine::default(),
        };
        let mut rc = Config::new(config.id);
        rc.seed = config.id ^ config.cluster_id.rotate_left(17);
        let raft = Raft::new(rc, initial).map_err(|e| e.to_string())?;
        let (input_tx, input_rx) = std_mpsc::channel();
        let (inbox_tx, mut inbox_rx) = mpsc::channel(4096);
        let transport_config = TransportConfig::new(config.id, config.cluster_id);
        let transport = Transport::start(transport_config, peer_listener, config.peers.clone(), inbox_tx);
        let (out_tx, mut out_rx) = mpsc::unbounded_channel::<balsa_raft::Message>();
        // Forward peers' messages into the driver, and the driver's messages to the transport.
        let forward = input_tx.clone();
        tokio::spawn(async move {
            while let Some(m) = inbox_rx.recv().await {
                if forward.send(Input::Peer(m)).is_err() {
                    return;
                }
            }
        });
        let sender = transport.clone_sender();
        tokio::spawn(async move {
            while let Some(m) = out_rx.recv().await {
                sender.send(m);
            }
        });
        let metrics = Arc::new(Metrics::new());
        let driver = Driver {
            metrics: metrics.clone(),
            raft,
            store,
            sm,
            out: out_tx,
            config,
            proposals: BTreeMap::new(),
            next_request: 0,
            reads: Vec::new(),
            next_read: 0,
            read_contexts: BTreeMap::new(),
        };
        let thread = std::thread::Builder::new()
            .name("balsa-node".into())
            .spawn(move || driver.run(input_rx))
            .map_err(|e| e.to_string())?;
        Ok(Self { input: input_tx, thread: Some(thread), _transport: transport, metrics })
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

    /// Size of the state machine's serialized state, and its revision (for etcd's Status).
    pub async fn state_size(&self) -> Result<(usize, i64), NodeError> {
        let (tx, rx) = oneshot::channel();
        self.input.send(Input::StateSize(tx)).map_err(|_| NodeError::Stopped)?;
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
}

impl Drop for NodeHandle {
    fn drop(&mut self) {
        let _ = self.input.send(Input::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// State of the driver thread.
struct Driver {
    metrics: Arc<Metrics>,
    raft: Raft,
    store: DiskStore,
    sm: StateMachine,
    out: mpsc::UnboundedSender<balsa_raft::Message>,
    config: NodeConfig,
    /// Proposals waiting to be applied, by request id: when they were made, and where to answer.
    proposals: BTreeMap<u64, (Instant, ProposeReply)>,
    /// The next request id's counter (ids are `node id << 40 | counter`).
    next_request: u64,
    /// Reads with a read index, waiting for the state machine to reach it.
    reads: Vec<(Index, RangeRequest, ReadReply)>,
    next_read: u64,
    /// Reads waiting for their read index, by context.
    read_contexts: BTreeMap<u64, (RangeRequest, ReadReply)>,
}

impl Driver {
    fn run(mut self, input: std_mpsc::Receiver<Input>) {
        let mut next_tick = Instant::now() + self.config.tick;
        loop {
            let wait = next_tick.saturating_duration_since(Instant::now());
            match input.recv_timeout(wait) {
                Ok(Input::Stop) | Err(std_mpsc::RecvTimeoutError::Disconnected) => {
                    return self.metrics.node_stopped()
                }
                Ok(i) => self.handle(i),
                Err(std_mpsc::RecvTimeoutError::Timeout) => {}
            }
            if Instant::now() >= next_tick {
                self.raft.tick();
                next_tick += self.config.tick;
            }
            if let Err(e) = self.carry_out_readies() {
                // A storage failure (a failed fsync above all) stops the node: its disk can no
                // longer be trusted, and continuing could acknowledge what is not durable.
                tracing::error!(error = %e, "storage failed; the node stops");
                return self.metrics.node_stopped();
            }
            self.metrics.observe(&self.raft.status(), self.proposals.len());
        }
    }

    fn handle(&mut self, input: Input) {
        match input {
            Input::Peer(m) => {
                if let Err(e) = self.raft.step(m) {
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
            Input::Read(request, reply) => {
                let context = self.next_read;
                self.next_read += 1;
                match self.raft.read_index(Bytes::copy_from_slice(&context.to_le_bytes())) {
                    Ok(()) => {
                        self.read_contexts.insert(context, (request, reply));
                    }
                    Err(ReadIndexError::NotLeader { leader_hint }) => {
                        let _ = reply.send(Err(NodeError::NotLeader { leader_hint }));
                    }
                }
            }
            Input::ReadLocal(request, reply) => {
                let _ = reply.send(self.sm.range(&request).map_err(NodeError::from));
            }
            Input::StateSize(reply) => {
                let _ = reply.send((self.sm.encode().len(), self.sm.mvcc.revision()));
            }
            Input::Status(reply) => {
                let _ = reply.send(self.raft.status());
            }
            Input::Stop => {}
        }
    }

    /// The entry payload of a command: its request id, then the command. Any member can propose
    /// (followers forward to the leader, as etcd does); the proposer recognises its own entry
    /// by the id when it is applied.
    fn tag(&mut self, command: &Command) -> (u64, Bytes) {
        self.next_request += 1;
        let id = (self.config.id << 40) | self.next_request;
        let mut data = id.to_le_bytes().to_vec();
        data.extend_from_slice(&command.encode());
        (id, Bytes::from(data))
    }

    fn carry_out_readies(&mut self) -> Result<(), balsa_storage::StorageError> {
        while self.raft.has_ready() {
            let mut ready = self.raft.ready();
            for m in std::mem::take(&mut ready.messages) {
                let _ = self.out.send(m);
            }
            let batch = std::mem::take(&mut ready.persist);
            self.store.write(&batch)?;
            self.metrics.time_fsync(|| self.store.sync())?;
            if let Some(s) = &batch.snapshot {
                self.sm = StateMachine::decode(s.data.clone())
                    .unwrap_or_else(|e| panic!("a snapshot from the leader does not decode: {e}"));
            }
            let receipt = batch.durable();
            for m in ready.gated_messages.release(&receipt) {
                let _ = self.out.send(m);
            }
            for entry in std::mem::take(&mut ready.committed_entries) {
                self.apply(&entry);
            }
            for rs in std::mem::take(&mut ready.read_states) {
                let context = u64::from_le_bytes(rs.context[..8].try_into().expect("our own 8-byte context"));
                let Some((request, reply)) = self.read_contexts.remove(&context) else { continue };
                match rs.result {
                    Ok(index) => self.reads.push((index, request, reply)),
                    Err(ReadIndexError::NotLeader { leader_hint }) => {
                        let _ = reply.send(Err(NodeError::NotLeader { leader_hint }));
                    }
                }
            }
            self.raft.advance(receipt);
            self.serve_reads();
            self.maybe_snapshot()?;
        }
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

    fn apply(&mut self, entry: &balsa_raft::Entry) {
        if entry.kind != EntryKind::Normal {
            return;
        }
        if entry.data.len() < 8 {
            tracing::error!(index = entry.index, "an entry without a request id; skipped on every member");
            return;
        }
        let id = u64::from_le_bytes(entry.data[..8].try_into().expect("8 bytes"));
        let result = Command::decode(entry.data.slice(8..))
            .map_err(NodeError::from)
            .and_then(|c| self.sm.apply(&c).map_err(NodeError::from));
        if let Some((proposed_at, reply)) = self.proposals.remove(&id) {
            self.metrics.proposal_applied(proposed_at);
            let _ = reply.send(result);
        }
    }

    fn serve_reads(&mut self) {
        let applied = self.raft.status().last_applied;
        let (ready, waiting): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.reads).into_iter().partition(|(i, _, _)| *i <= applied);
        self.reads = waiting;
        for (_, request, reply) in ready {
            let _ = reply.send(self.sm.range(&request).map_err(NodeError::from));
        }
    }

    fn maybe_snapshot(&mut self) -> Result<(), balsa_storage::StorageError> {
        let Some(index) = self.raft.snapshot_due(self.config.snapshot_entries, 64 << 20) else {
            return Ok(());
        };
        let term = self.raft.term_at(index).expect("applied entries are in the log");
        let meta = balsa_raft::SnapshotMeta {
            last_included_index: index,
            last_included_term: term,
            membership: self.raft.membership_at(index),
        };
        let snapshot = Snapshot { meta, data: self.sm.encode() };
        self.store.save_snapshot(&snapshot)?;
        self.metrics.snapshot_saved();
        self.raft.snapshot_taken(snapshot).expect("a snapshot of applied state");
        Ok(())
    }
}
