//! Peer transport over TCP (issue 5): one connection per peer and lane, reconnecting with
//! back-off; snapshot chunks travel on their own connection so heartbeats never wait behind
//! megabytes of snapshot.
//!
//! A sender writes a message to the peer's socket itself, without blocking, when nothing is
//! waiting before it; only what the socket does not take at once is left to the lane's writer
//! task, which waits until the socket can take more (everything queued meanwhile then goes out in
//! one write). On the path of a replicated write that saves a wake-up of the writer task on the
//! leader and on each follower: a round trip on this machine's loopback with thread hand-offs
//! costs tens of microseconds each.
//!
//! A connection starts with a handshake — magic, cluster id, sender id, lane — and then carries
//! frames: `[u32 length][encoded message]`. A bad handshake, an oversized frame, a frame that does
//! not decode, or a message whose sender or recipient does not match the connection closes the
//! connection with a log line. Nothing a peer sends can panic this server.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use balsa_raft::{Message, MessageBody, NodeId};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

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
    /// Frames and writes of every lane.
    stats: Arc<SendStats>,
}

#[derive(Default)]
struct Peers {
    /// Every peer and where it listens; connections from others are refused.
    addrs: BTreeMap<NodeId, SocketAddr>,
    /// Each peer's lanes. Removing one closes it, which stops its writer.
    outbound: BTreeMap<(NodeId, Lane), Arc<Outbound>>,
}

impl Drop for Peers {
    fn drop(&mut self) {
        for out in self.outbound.values() {
            out.close();
        }
    }
}

/// A pending buffer left this large by a burst (snapshot chunks, a slow peer) is given back once
/// it has drained, rather than kept for good.
const KEEP_PENDING_BYTES: usize = 1 << 20;

/// Frames sent to peers and the socket writes that carried them, since the transport started:
/// frames per write is how well the messages of a round are batched.
#[derive(Debug, Default)]
struct SendStats {
    frames: AtomicU64,
    writes: AtomicU64,
}

/// What [`Transport::sent`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Sent {
    /// Messages queued for peers (each one frame).
    pub frames: u64,
    /// System calls that wrote to peers' sockets.
    pub writes: u64,
}

/// One lane to one peer: the frames not yet written, and the connection they go out on.
struct Outbound {
    state: Mutex<OutState>,
    /// The transport's counters, shared by its lanes.
    stats: Arc<SendStats>,
    /// Wakes the lane's writer: frames are left that the socket did not take, the connection
    /// broke, or the lane was closed.
    wake: Notify,
}

#[derive(Default)]
struct OutState {
    /// The connection, once connected and past the handshake; `None` while (re)connecting.
    stream: Option<Arc<TcpStream>>,
    /// Encoded frames not yet wholly written, oldest first (the first may be partly written).
    pending: BytesMut,
    /// Frames added to `pending` since it was last empty: at most `queue_messages`, past which
    /// new messages are dropped (Raft treats them as lost and resends).
    frames: usize,
    /// The most `pending` held since it was last empty: its allocation is at least this large
    /// (`BytesMut` does not say how large once written parts are consumed).
    high_water: usize,
    /// The peer was removed or the transport dropped: the writer stops.
    closed: bool,
}

impl OutState {
    /// Writes what is pending until the socket would block. An error drops the connection and
    /// everything pending with it (a frame may be half written; Raft resends what matters).
    fn flush(&mut self, stats: &SendStats) {
        let Some(stream) = &self.stream else { return };
        while !self.pending.is_empty() {
            match stream.try_write(&self.pending) {
                Ok(n) if n > 0 => {
                    stats.writes.fetch_add(1, Ordering::Relaxed);
                    self.pending.advance(n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                _ => {
                    self.stream = None;
                    break;
                }
            }
        }
        self.drop_pending();
    }

    /// Forgets what is pending (written, or lost with a connection), giving back a buffer a
    /// burst made large.
    fn drop_pending(&mut self) {
        self.pending.clear();
        self.frames = 0;
        if std::mem::take(&mut self.high_water) > KEEP_PENDING_BYTES {
            self.pending = BytesMut::new();
        }
    }
}

impl Outbound {
    /// Encodes `m` behind what is pending and writes as much as the socket takes now. False if
    /// the message was dropped (the queue is full, or it is larger than a frame may be).
    fn send(&self, m: &Message, config: &TransportConfig) -> bool {
        let queued = self.queue(m, config);
        self.write_pending();
        queued
    }

    /// Encodes `m` behind what is pending, without writing: [`Outbound::write_pending`] sends
    /// it, with whatever else was queued meanwhile, in one write.
    fn queue(&self, m: &Message, config: &TransportConfig) -> bool {
        let mut st = self.lock();
        if st.closed || st.frames >= config.queue_messages {
            return false;
        }
        // Encoded in place behind room for its length, filled in after.
        let start = st.pending.len();
        st.pending.put_u32_le(0);
        m.encode_into(&mut st.pending);
        let len = st.pending.len() - start - 4;
        if len > config.max_frame_bytes {
            tracing::error!(peer = m.to, bytes = len, "message larger than the frame limit dropped");
            st.pending.truncate(start);
            return false;
        }
        st.pending[start..start + 4].copy_from_slice(&(len as u32).to_le_bytes());
        st.frames += 1;
        st.high_water = st.high_water.max(st.pending.len());
        self.stats.frames.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Writes what is pending as far as the socket takes it now; the lane's writer is woken
    /// for the rest (or to reconnect).
    fn write_pending(&self) {
        let mut st = self.lock();
        if st.pending.is_empty() {
            return;
        }
        st.flush(&self.stats);
        let left = !st.pending.is_empty() || st.stream.is_none();
        drop(st);
        if left {
            self.wake.notify_one();
        }
    }

    /// The lane's state. A sender that panicked holding it left at worst a half-encoded frame,
    /// which the peer refuses by closing the connection (Raft resends), so poisoning is ignored.
    fn lock(&self) -> std::sync::MutexGuard<'_, OutState> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn close(&self) {
        self.lock().closed = true;
        self.wake.notify_one();
    }
}

impl Shared {
    fn send(&self, m: Message) -> bool {
        let Some(out) = self.lane(&m) else { return false };
        out.send(&m, &self.config)
    }

    /// Queues every message, then writes each lane they went to once: the messages of one
    /// Ready for one peer (entries, a commit, answers) leave in one system call, not one each.
    fn send_all(&self, messages: impl IntoIterator<Item = Message>) {
        let mut touched: Vec<Arc<Outbound>> = Vec::new();
        for m in messages {
            let Some(out) = self.lane(&m) else { continue };
            if out.queue(&m, &self.config) && !touched.iter().any(|t| Arc::ptr_eq(t, &out)) {
                touched.push(out);
            }
        }
        for out in touched {
            out.write_pending();
        }
    }

    fn sent(&self) -> Sent {
        Sent {
            frames: self.stats.frames.load(Ordering::Relaxed),
            writes: self.stats.writes.load(Ordering::Relaxed),
        }
    }

    /// The lane `m` goes out on, if its peer is known.
    fn lane(&self, m: &Message) -> Option<Arc<Outbound>> {
        let peers = self.peers.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let out = peers.outbound.get(&(m.to, lane_of(m))).cloned();
        if out.is_none() {
            tracing::debug!(to = m.to, "message for an unknown peer dropped");
        }
        out
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
            peers.outbound.retain(|(peer, _), out| {
                if *peer == id {
                    out.close();
                }
                *peer != id
            });
        }
        for (&peer, &addr) in addrs {
            if peer == self.config.id || peers.addrs.contains_key(&peer) {
                continue;
            }
            for lane in [Lane::Raft, Lane::Snapshot] {
                let out = Arc::new(Outbound {
                    state: Mutex::default(),
                    stats: self.stats.clone(),
                    wake: Notify::new(),
                });
                self.runtime.spawn(peer_writer(self.config.clone(), peer, addr, lane, out.clone()));
                peers.outbound.insert((peer, lane), out);
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
        Self::start_with_readers(config, listener, peers, inbox, tokio::runtime::Handle::current())
    }

    /// Like [`Transport::start`], with inbound connections read on `readers`: the runtime of
    /// the thread `inbox` hands messages to, so that a message read wakes no other thread.
    pub fn start_with_readers(
        config: TransportConfig,
        listener: TcpListener,
        peers: BTreeMap<NodeId, SocketAddr>,
        inbox: Inbox,
        readers: tokio::runtime::Handle,
    ) -> Self {
        let shared = Arc::new(Shared {
            slots: Arc::new(Semaphore::new(config.queue_messages)),
            stats: Arc::default(),
            config: Arc::new(config),
            runtime: tokio::runtime::Handle::current(),
            peers: RwLock::new(Peers::default()),
        });
        shared.set_peers(&peers);
        let acceptor = tokio::spawn(accept_loop(listener, shared.clone(), inbox, readers));
        Self { shared, acceptor }
    }

    /// Queues a message for its peer. Returns false if it was dropped (unknown peer, queue full):
    /// Raft treats that as a lost message.
    pub fn send(&self, m: Message) -> bool {
        self.shared.send(m)
    }

    /// Frames sent to peers so far, and the socket writes that carried them.
    pub fn sent(&self) -> Sent {
        self.shared.sent()
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

    /// Sends every message, each peer's together in one write where the socket takes them
    /// (a message dropped for a full queue or an unknown peer is lost, as with `send`).
    pub fn send_all(&self, messages: impl IntoIterator<Item = Message>) {
        self.shared.send_all(messages);
    }

    /// Like [`Transport::sent`].
    pub fn sent(&self) -> Sent {
        self.shared.sent()
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

/// Keeps one lane to one peer connected, and writes what senders left pending whenever the
/// socket can take more.
async fn peer_writer(
    config: Arc<TransportConfig>,
    peer: NodeId,
    addr: SocketAddr,
    lane: Lane,
    out: Arc<Outbound>,
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
                let mut st = out.lock();
                if st.closed {
                    return;
                }
                st.drop_pending();
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
        let stream = Arc::new(stream);
        {
            let mut st = out.lock();
            st.stream = Some(stream.clone());
            st.flush(&out.stats);
        }
        // Until the connection breaks: wait for a wake, and while frames are pending, for the
        // socket to take more.
        loop {
            let pending = {
                let st = out.lock();
                if st.closed {
                    return;
                }
                if st.stream.is_none() {
                    break;
                }
                !st.pending.is_empty()
            };
            if !pending {
                out.wake.notified().await;
                continue;
            }
            tokio::select! {
                ready = stream.writable() => {
                    let mut st = out.lock();
                    if ready.is_err() {
                        st.stream = None;
                        st.drop_pending();
                    }
                    st.flush(&out.stats);
                }
                () = out.wake.notified() => {}
            }
        }
        // The frames pending are lost with the connection; Raft resends what matters.
        if lane == Lane::Raft {
            tracing::info!(peer, "peer disconnected; reconnecting");
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    inbox: Inbox,
    readers: tokio::runtime::Handle,
) {
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
        // Moved to the readers' runtime: registered with its reactor there.
        let stream = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(%remote, error = %e, "peer connection dropped");
                continue;
            }
        };
        readers.spawn(async move {
            let read = match TcpStream::from_std(stream) {
                Ok(stream) => serve_connection(stream, &shared, &inbox).await,
                Err(_) => Err("the connection could not be registered"),
            };
            if let Err(why) = read {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A burst (snapshot chunks, a peer that stopped reading) leaves no large buffer behind once
    /// what was pending is gone; an ordinary one is kept for the next message.
    #[test]
    fn a_burst_leaves_no_large_buffer_behind() {
        let mut st = OutState::default();
        st.pending.extend_from_slice(&vec![1u8; 4 * KEEP_PENDING_BYTES]);
        st.high_water = st.pending.len();
        st.pending.advance(st.pending.len()); // all of it written
        st.drop_pending();
        st.pending.reserve(16);
        assert!(st.pending.capacity() < KEEP_PENDING_BYTES, "kept {} bytes", st.pending.capacity());

        st.pending.extend_from_slice(&[1u8; 1000]);
        st.high_water = st.pending.len();
        st.drop_pending();
        st.pending.reserve(16);
        assert!(st.pending.capacity() >= 1000, "an ordinary buffer is reused");
    }
}
