//! Peer transport over TCP (issue 5): one connection per peer and lane, reconnecting with
//! back-off; messages queued while a write is in progress go out together in one write; snapshot
//! chunks travel on their own connection so heartbeats never wait behind megabytes of snapshot.
//!
//! A connection starts with a handshake — magic, cluster id, sender id, lane — and then carries
//! frames: `[u32 length][encoded message]`. A bad handshake, an oversized frame, a frame that does
//! not decode, or a message whose sender or recipient does not match the connection closes the
//! connection with a log line. Nothing a peer sends can panic this server.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use balsa_raft::{Message, MessageBody, NodeId};
use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

const MAGIC: &[u8; 8] = b"BALSAPR1";

/// Settings of the transport.
#[derive(Clone, Debug)]
pub struct TransportConfig {
    /// This server.
    pub id: NodeId,
    /// Connections from servers of another cluster are refused.
    pub cluster_id: u64,
    /// Largest frame accepted or sent.
    pub max_frame_bytes: usize,
    /// Messages queued per peer and lane before new ones are dropped (Raft resends); also the
    /// received messages the inbox may hold before readers stop reading (TCP pushes back).
    pub queue_messages: usize,
    /// Longest wait between reconnection attempts. Short, because it adds to the time a
    /// healed link takes to carry traffic again, and an attempt costs next to nothing.
    pub max_backoff: Duration,
    /// A connection whose sent data has gone unacknowledged this long is dead (TCP_USER_TIMEOUT
    /// on outbound connections; keep-alive probing on inbound ones) and a connect attempt that
    /// takes longer is abandoned. Without it a link cut silently (a partition that drops
    /// packets) stays "connected" after it heals until TCP's exponential retransmission timer
    /// fires again: the chaos tests measured up to 9.75 s from heal to the first write.
    pub peer_timeout: Duration,
}

impl TransportConfig {
    /// Defaults: 64 MiB frames, 4096 queued messages, back-off up to 500 ms, peers dead after
    /// 2 s without acknowledgement (the server sets five election timeouts, at least 2 s).
    pub fn new(id: NodeId, cluster_id: u64) -> Self {
        Self {
            id,
            cluster_id,
            max_frame_bytes: 64 << 20,
            queue_messages: 4096,
            max_backoff: Duration::from_millis(500),
            peer_timeout: Duration::from_secs(2),
        }
    }
}

/// Which connection a message travels on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Lane {
    Raft = 0,
    Snapshot = 1,
}

fn lane_of(m: &Message) -> Lane {
    if matches!(m.body, MessageBody::InstallSnapshot(_)) {
        Lane::Snapshot
    } else {
        Lane::Raft
    }
}

/// A received message, holding one of the inbox's slots until it is dropped: readers stop
/// reading once every slot is taken, so a slow receiver pushes back on its peers through TCP
/// instead of queueing without bound.
pub struct Delivery {
    /// The message, from the peer the connection was opened by.
    pub message: Message,
    _slot: OwnedSemaphorePermit,
}

/// Where received messages go. Called on a runtime thread for each message, so it must not
/// block; it returns false once the receiver is gone. Handing messages straight to the
/// receiver (the node's driver thread) rather than through a channel and a forwarding task
/// saves a task wake-up per message on both ends of every round trip.
pub type Inbox = Arc<dyn Fn(Delivery) -> bool + Send + Sync>;

/// Sends messages to peers; received messages go to the [`Inbox`] given to [`Transport::start`].
pub struct Transport {
    shared: Arc<Shared>,
    /// The accept loop; stopped when the transport is dropped (writers stop with their queues).
    acceptor: tokio::task::JoinHandle<()>,
}

/// What the transport's tasks and senders share: the peers can change while it runs (members
/// join and leave).
struct Shared {
    config: Arc<TransportConfig>,
    /// Where writers for new peers are spawned (senders may live on a thread of their own).
    runtime: tokio::runtime::Handle,
    peers: RwLock<Peers>,
    /// The inbox's slots ([`Delivery`]).
    slots: Arc<Semaphore>,
}

#[derive(Default)]
struct Peers {
    /// Every peer and where it listens; connections from others are refused.
    addrs: BTreeMap<NodeId, SocketAddr>,
    /// The queue of each peer's writer, per lane. Dropping one stops its writer.
    outbound: BTreeMap<(NodeId, Lane), mpsc::Sender<Message>>,
}

impl Shared {
    fn send(&self, m: Message) -> bool {
        let peers = self.peers.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(tx) = peers.outbound.get(&(m.to, lane_of(&m))) else {
            tracing::debug!(to = m.to, "message for an unknown peer dropped");
            return false;
        };
        tx.try_send(m).is_ok()
    }

    fn knows(&self, id: NodeId) -> bool {
        self.peers.read().unwrap_or_else(std::sync::PoisonError::into_inner).addrs.contains_key(&id)
    }

    /// Makes `addrs` the peer set: writers start for new peers (or new addresses) and stop for
    /// peers no longer listed.
    fn set_peers(&self, addrs: &BTreeMap<NodeId, SocketAddr>) {
        let mut peers = self.peers.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        let stale: Vec<NodeId> =
            peers.addrs.iter().filter(|(id, a)| addrs.get(id) != Some(a)).map(|(id, _)| *id).collect();
        for id in stale {
            peers.addrs.remove(&id);
            peers.outbound.retain(|(peer, _), _| *peer != id);
        }
        for (&peer, &addr) in addrs {
            if peer == self.config.id || peers.addrs.contains_key(&peer) {
                continue;
            }
            for lane in [Lane::Raft, Lane::Snapshot] {
                let (tx, rx) = mpsc::channel(self.config.queue_messages);
                self.runtime.spawn(peer_writer(self.config.clone(), peer, addr, lane, rx));
                peers.outbound.insert((peer, lane), tx);
            }
            peers.addrs.insert(peer, addr);
        }
    }
}

impl Drop for Transport {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}

impl Transport {
    /// Starts accepting on `listener` and connecting to `peers`. Received messages go to `inbox`.
    pub fn start(
        config: TransportConfig,
        listener: TcpListener,
        peers: BTreeMap<NodeId, SocketAddr>,
        inbox: Inbox,
    ) -> Self {
        let shared = Arc::new(Shared {
            slots: Arc::new(Semaphore::new(config.queue_messages)),
            config: Arc::new(config),
            runtime: tokio::runtime::Handle::current(),
            peers: RwLock::new(Peers::default()),
        });
        shared.set_peers(&peers);
        let acceptor = tokio::spawn(accept_loop(listener, shared.clone(), inbox));
        Self { shared, acceptor }
    }

    /// Queues a message for its peer. Returns false if it was dropped (unknown peer, queue full):
    /// Raft treats that as a lost message.
    pub fn send(&self, m: Message) -> bool {
        self.shared.send(m)
    }

    /// This server's id.
    pub fn id(&self) -> NodeId {
        self.shared.config.id
    }

    /// A cheap handle that sends through this transport (for another task or thread).
    pub fn clone_sender(&self) -> TransportSender {
        TransportSender { shared: self.shared.clone() }
    }
}

/// Sends through a [`Transport`] from another task or thread, and changes its peers.
#[derive(Clone)]
pub struct TransportSender {
    shared: Arc<Shared>,
}

impl TransportSender {
    /// Like [`Transport::send`].
    pub fn send(&self, m: Message) -> bool {
        self.shared.send(m)
    }

    /// Replaces the peer set (members joined, left or moved): connections start to new peers,
    /// stop to peers no longer listed, and only listed peers may connect.
    pub fn set_peers(&self, peers: &BTreeMap<NodeId, SocketAddr>) {
        self.shared.set_peers(peers);
    }
}

fn handshake(config: &TransportConfig, lane: Lane) -> Bytes {
    let mut b = BytesMut::with_capacity(25);
    b.put_slice(MAGIC);
    b.put_u64_le(config.cluster_id);
    b.put_u64_le(config.id);
    b.put_u8(lane as u8);
    b.freeze()
}

/// Keeps one lane to one peer connected and drains its queue into it.
async fn peer_writer(
    config: Arc<TransportConfig>,
    peer: NodeId,
    addr: SocketAddr,
    lane: Lane,
    mut rx: mpsc::Receiver<Message>,
) {
    let mut backoff = Duration::from_millis(50);
    loop {
        let connect = tokio::time::timeout(config.peer_timeout, TcpStream::connect(addr));
        let connected = connect.await.unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()));
        let mut stream = match connected {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(peer, %addr, error = %e, "connect failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(config.max_backoff);
                // While disconnected, keep the queue moving: old messages are useless to Raft.
                loop {
                    match rx.try_recv() {
                        Ok(_) => {}
                        Err(mpsc::error::TryRecvError::Empty) => break,
                        // The peer was removed (or the transport dropped): stop trying.
                        Err(mpsc::error::TryRecvError::Disconnected) => return,
                    }
                }
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let _ = socket2::SockRef::from(&stream).set_tcp_user_timeout(Some(config.peer_timeout));
        if stream.write_all(&handshake(&config, lane)).await.is_err() {
            continue;
        }
        backoff = Duration::from_millis(50);
        // Raft's lane stands for the peer in the log; the snapshot lane's comings and goings
        // are detail.
        if lane == Lane::Raft {
            tracing::info!(peer, %addr, "peer connected");
        }
        loop {
            let Some(first) = rx.recv().await else {
                return; // the transport was dropped
            };
            let mut batch = BytesMut::new();
            let mut next = Some(first);
            while let Some(m) = next {
                // Encoded in place behind room for its length, filled in after.
                let start = batch.len();
                batch.put_u32_le(0);
                m.encode_into(&mut batch);
                let len = batch.len() - start - 4;
                if len > config.max_frame_bytes {
                    tracing::error!(peer, bytes = len, "message larger than the frame limit dropped");
                    batch.truncate(start);
                } else {
                    batch[start..start + 4].copy_from_slice(&(len as u32).to_le_bytes());
                }
                next = if batch.len() < (1 << 20) { rx.try_recv().ok() } else { None };
            }
            if let Err(e) = stream.write_all(&batch).await {
                // The batch is lost with the connection; Raft resends what matters.
                if lane == Lane::Raft {
                    tracing::info!(peer, error = %e, "peer disconnected; reconnecting");
                }
                break;
            }
        }
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, inbox: Inbox) {
    loop {
        let (stream, remote) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // An inbound connection only reads, so it would never notice a peer that vanished
        // behind a partition: probe it, or every cut would leave a reader behind for good.
        let idle = shared.config.peer_timeout.max(Duration::from_secs(1));
        let probe = socket2::TcpKeepalive::new().with_time(idle).with_interval(idle).with_retries(3);
        let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&probe);
        let (shared, inbox) = (shared.clone(), inbox.clone());
        tokio::spawn(async move {
            if let Err(why) = serve_connection(stream, &shared, &inbox).await {
                tracing::warn!(%remote, reason = why, "peer connection closed");
            }
        });
    }
}

/// Reads one inbound connection until it ends or misbehaves.
async fn serve_connection(stream: TcpStream, shared: &Shared, inbox: &Inbox) -> Result<(), &'static str> {
    let config = &shared.config;
    let mut r = BufReader::new(stream);
    let mut hello = [0u8; 25];
    r.read_exact(&mut hello).await.map_err(|_| "no handshake")?;
    if &hello[..8] != MAGIC {
        return Err("not a balsa peer");
    }
    let cluster = u64::from_le_bytes(hello[8..16].try_into().expect("8 bytes"));
    let from = u64::from_le_bytes(hello[16..24].try_into().expect("8 bytes"));
    if cluster != config.cluster_id {
        return Err("peer belongs to another cluster");
    }
    if !shared.knows(from) {
        return Err("unknown peer");
    }
    loop {
        let len = match r.read_u32_le().await {
            Ok(n) => n as usize,
            Err(_) => return Ok(()), // closed
        };
        if len > config.max_frame_bytes {
            return Err("frame larger than the limit");
        }
        // Read into spare capacity: no zero-fill of a buffer about to be overwritten.
        let mut frame = Vec::with_capacity(len);
        (&mut r).take(len as u64).read_to_end(&mut frame).await.map_err(|_| "truncated frame")?;
        if frame.len() != len {
            return Err("truncated frame");
        }
        let m = Message::decode(Bytes::from(frame)).map_err(|_| "malformed frame")?;
        if m.from != from || m.to != config.id {
            return Err("message not from the connected peer or not for this server");
        }
        let slot = shared.slots.clone().acquire_owned().await.map_err(|_| "inbox closed")?;
        if !inbox(Delivery { message: m, _slot: slot }) {
            return Ok(()); // this server is shutting down
        }
    }
}
