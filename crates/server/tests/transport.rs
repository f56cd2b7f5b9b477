//! The peer transport on loopback: delivery, lanes, reconnection, and hostile input.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use balsa_raft::{
    AppendEntries, InstallSnapshot, Membership, Message, MessageBody, RequestVote, SnapshotMeta,
};
use balsa_server::transport::{Delivery, Inbox};
use balsa_server::{Transport, TransportConfig};
use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

const CLUSTER: u64 = 0xBA15A;

fn heartbeat(from: u64, to: u64, round: u64) -> Message {
    let body = AppendEntries {
        prev_log_index: 0,
        prev_log_term: 0,
        entries: vec![],
        leader_commit: 0,
        read_round: round,
    };
    Message { from, to, term: 1, body: MessageBody::AppendEntries(body) }
}

fn snapshot_chunk(from: u64, to: u64, size: usize) -> Message {
    let meta = SnapshotMeta {
        last_included_index: 5,
        last_included_term: 1,
        membership: Membership::new([1, 2, 3]),
    };
    let body =
        InstallSnapshot { leader: from, meta, offset: 0, data: Bytes::from(vec![7u8; size]), done: true };
    Message { from, to, term: 1, body: MessageBody::InstallSnapshot(body) }
}

/// An inbox that hands each message to a channel (and frees its slot at once).
fn inbox() -> (Inbox, mpsc::UnboundedReceiver<Message>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (Arc::new(move |d: Delivery| tx.send(d.message).is_ok()), rx)
}

async fn recv(rx: &mut mpsc::UnboundedReceiver<Message>) -> Message {
    tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.expect("delivered in time").expect("open")
}

async fn cluster(
    n: u64,
) -> (Vec<Transport>, Vec<mpsc::UnboundedReceiver<Message>>, BTreeMap<u64, SocketAddr>) {
    let mut listeners = Vec::new();
    let mut peers = BTreeMap::new();
    for id in 1..=n {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        peers.insert(id, l.local_addr().unwrap());
        listeners.push(l);
    }
    let mut transports = Vec::new();
    let mut inboxes = Vec::new();
    for (i, l) in listeners.into_iter().enumerate() {
        let (tx, rx) = inbox();
        transports.push(Transport::start(TransportConfig::new(i as u64 + 1, CLUSTER), l, peers.clone(), tx));
        inboxes.push(rx);
    }
    (transports, inboxes, peers)
}

#[tokio::test]
async fn messages_arrive_in_order_per_lane_with_a_large_snapshot_in_flight() {
    let (t, mut rx, _) = cluster(3).await;
    // A 16 MiB snapshot chunk, then heartbeats: they travel on separate connections, so the
    // heartbeats need not wait for the snapshot (not asserted: that would be a timing test).
    assert!(t[0].send(snapshot_chunk(1, 2, 16 << 20)));
    for round in 0..100 {
        assert!(t[0].send(heartbeat(1, 2, round)));
    }
    let mut rounds = Vec::new();
    let mut got_snapshot = false;
    while rounds.len() < 100 || !got_snapshot {
        match recv(&mut rx[1]).await.body {
            MessageBody::AppendEntries(a) => rounds.push(a.read_round),
            MessageBody::InstallSnapshot(s) => {
                assert_eq!(s.data.len(), 16 << 20);
                got_snapshot = true;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(rounds, (0..100).collect::<Vec<_>>(), "one lane keeps its order");
    // Every pair talks.
    let vote = |from, to| Message {
        from,
        to,
        term: 2,
        body: MessageBody::RequestVote(RequestVote {
            pre_vote: true,
            last_log_index: 1,
            last_log_term: 1,
            leadership_transfer: false,
        }),
    };
    t[1].send(vote(2, 3));
    t[2].send(vote(3, 1));
    assert_eq!(recv(&mut rx[2]).await, vote(2, 3));
    assert_eq!(recv(&mut rx[0]).await, vote(3, 1));
    assert!(!t[0].send(heartbeat(1, 9, 0)), "unknown peers are refused");
}

#[tokio::test]
async fn a_restarted_peer_is_reconnected() {
    let (mut t, mut rx, peers) = cluster(2).await;
    t[0].send(heartbeat(1, 2, 1));
    assert_eq!(recv(&mut rx[1]).await, heartbeat(1, 2, 1));
    // Server 2 goes away and comes back on the same address.
    let old = t.pop().unwrap();
    drop(old);
    drop(rx.pop());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let listener = TcpListener::bind(peers[&2]).await.expect("the port is free again");
    let (tx, mut rx2) = inbox();
    let _t2 = Transport::start(TransportConfig::new(2, CLUSTER), listener, peers, tx);
    // Messages sent meanwhile may be lost (Raft resends); keep sending until one arrives.
    let mut round = 10;
    let arrived = loop {
        t[0].send(heartbeat(1, 2, round));
        if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(200), rx2.recv()).await {
            break m;
        }
        round += 1;
        assert!(round < 60, "never reconnected");
    };
    assert!(matches!(arrived.body, MessageBody::AppendEntries(_)));
}

/// The inbox holds at most `queue_messages` undropped deliveries: past that the reader stops
/// reading (the peer's TCP window closes) until the receiver drops one, so a slow driver cannot
/// be buried under a queue without bound.
#[tokio::test]
async fn held_deliveries_stop_the_reader_until_one_is_dropped() {
    let l1 = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let l2 = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let peers: BTreeMap<u64, SocketAddr> =
        [(1, l1.local_addr().unwrap()), (2, l2.local_addr().unwrap())].into_iter().collect();
    let held: Arc<Mutex<Vec<Delivery>>> = Arc::default();
    let keep = held.clone();
    let holding: Inbox = Arc::new(move |d| {
        keep.lock().unwrap().push(d);
        true
    });
    let (unused, _rx) = inbox();
    let t1 = Transport::start(TransportConfig::new(1, CLUSTER), l1, peers.clone(), unused);
    let mut config = TransportConfig::new(2, CLUSTER);
    config.queue_messages = 2;
    let _t2 = Transport::start(config, l2, peers, holding);
    for round in 0..5 {
        assert!(t1.send(heartbeat(1, 2, round)));
    }
    let count = || held.lock().unwrap().len();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while count() < 2 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(count(), 2, "no third delivery while two are held");
    // Dropping held deliveries frees their slots: the rest arrive, in order.
    let mut rounds = Vec::new();
    while rounds.len() < 5 && tokio::time::Instant::now() < deadline {
        let taken: Vec<Delivery> = held.lock().unwrap().drain(..).collect();
        rounds.extend(taken.into_iter().map(|d| match d.message.body {
            MessageBody::AppendEntries(a) => a.read_round,
            other => panic!("unexpected {other:?}"),
        }));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(rounds, vec![0, 1, 2, 3, 4]);
}

/// The messages of one Ready for one peer leave in one socket write (`send_all`), in order;
/// sent one by one, each takes a write of its own. A message for an unknown peer in the batch
/// is dropped without holding back the rest.
#[tokio::test]
async fn a_batch_leaves_in_one_write_per_peer() {
    let (t, mut rx, _) = cluster(3).await;
    // Both lanes connected: a message has gone each way.
    for to in [2, 3] {
        assert!(t[0].send(heartbeat(1, to, 0)));
        assert_eq!(recv(&mut rx[to as usize - 1]).await, heartbeat(1, to, 0));
    }
    let sender = t[0].clone_sender();
    let before = t[0].sent();
    let batch = (1..=20).map(|round| heartbeat(1, 2 + round % 2, round)).chain([heartbeat(1, 9, 99)]);
    sender.send_all(batch);
    let after = t[0].sent();
    assert_eq!(after.frames - before.frames, 20, "the unknown peer's message is not queued");
    assert_eq!(after.writes - before.writes, 2, "one write per peer");
    for (to, parity) in [(2usize, 0), (3, 1)] {
        let mut rounds = Vec::new();
        while rounds.len() < 10 {
            match recv(&mut rx[to - 1]).await.body {
                MessageBody::AppendEntries(a) => rounds.push(a.read_round),
                other => panic!("unexpected {other:?}"),
            }
        }
        let sent: Vec<u64> = (1..=20).filter(|r| r % 2 == parity).collect();
        assert_eq!(rounds, sent, "peer {to} got its messages in order");
    }
    let before = t[0].sent();
    for round in 21..=30 {
        assert!(sender.send(heartbeat(1, 2, round)));
    }
    assert_eq!(t[0].sent().writes - before.writes, 10, "one by one, a write each");
}

async fn raw(addr: SocketAddr, bytes: &[u8]) -> bool {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(bytes).await;
    // The server closes a misbehaving connection: reading ends (0 bytes or an error) in time.
    let mut buf = [0u8; 16];
    matches!(tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await, Ok(Ok(0)) | Ok(Err(_)))
}

fn hello(cluster: u64, from: u64) -> BytesMut {
    let mut b = BytesMut::new();
    b.put_slice(b"BALSAPR1");
    b.put_u64_le(cluster);
    b.put_u64_le(from);
    b.put_u8(0);
    b
}

#[tokio::test]
async fn hostile_connections_are_closed_and_the_server_keeps_serving() {
    let (t, mut rx, peers) = cluster(2).await;
    let addr = peers[&2];
    assert!(raw(addr, b"GET / HTTP/1.1\r\n\r\n-------").await, "not a peer");
    assert!(raw(addr, &hello(CLUSTER + 1, 1)).await, "another cluster");
    assert!(raw(addr, &hello(CLUSTER, 77)).await, "an unknown peer");
    let mut oversized = hello(CLUSTER, 1);
    oversized.put_u32_le(u32::MAX);
    assert!(raw(addr, &oversized).await, "a frame over the limit");
    let mut garbage = hello(CLUSTER, 1);
    garbage.put_u32_le(5);
    garbage.put_slice(b"\xff\xff\xff\xff\xff");
    assert!(raw(addr, &garbage).await, "a frame that does not decode");
    let mut spoofed = hello(CLUSTER, 1);
    let frame = heartbeat(3, 2, 0).encode();
    spoofed.put_u32_le(frame.len() as u32);
    spoofed.put_slice(&frame);
    assert!(raw(addr, &spoofed).await, "a message claiming another sender");
    // After all that, the real peer still gets through.
    t[0].send(heartbeat(1, 2, 42));
    assert_eq!(recv(&mut rx[1]).await, heartbeat(1, 2, 42));
}

/// Senders write to the socket themselves, from any thread (the node's driver is a plain
/// thread), and what the socket does not take waits in a bounded queue: with a peer that has
/// stopped reading, sends past `queue_messages` are refused (Raft treats them as lost), and
/// once the peer reads again everything accepted arrives, in order and whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_stops_reading_fills_a_bounded_queue_and_then_gets_it_all_in_order() {
    let l1 = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let peers: BTreeMap<u64, SocketAddr> =
        [(1, l1.local_addr().unwrap()), (2, silent.local_addr().unwrap())].into_iter().collect();
    let (unused, _rx) = inbox();
    let mut config = TransportConfig::new(1, CLUSTER);
    config.queue_messages = 4;
    let t1 = Transport::start(config, l1, peers, unused);
    // Both lanes (raft, snapshot) connect at once, in either order; each begins with a handshake
    // whose last byte names the lane. The peer keeps both open, and from the raft lane's
    // connection reads nothing past the handshake yet. (Taking the first connection for the
    // raft lane's made this test wait on the snapshot lane in about one run in fifteen.)
    let mut conns = Vec::new();
    for _ in 0..2 {
        let (mut c, _) =
            tokio::time::timeout(Duration::from_secs(5), silent.accept()).await.unwrap().unwrap();
        let mut hello = [0u8; 25];
        tokio::time::timeout(Duration::from_secs(5), c.read_exact(&mut hello)).await.unwrap().unwrap();
        conns.push((hello[24], c));
    }
    let raft_lane = conns.iter().position(|(lane, _)| *lane == 0).expect("a connection on the raft lane (0)");
    assert_eq!(conns.iter().filter(|(lane, _)| *lane == 0).count(), 1, "one connection per lane");
    let conn = &mut conns[raft_lane].1;
    let sender = t1.clone_sender();
    let accepted = std::thread::spawn(move || {
        // 256 KiB heartbeats would be odd; a large AppendEntries stands in for a burst.
        let big = |round: u64| {
            let mut m = heartbeat(1, 2, round);
            if let MessageBody::AppendEntries(a) = &mut m.body {
                a.entries = vec![balsa_raft::Entry {
                    term: 1,
                    index: round + 1,
                    kind: balsa_raft::EntryKind::Normal,
                    data: Bytes::from(vec![round as u8; 256 << 10]),
                }];
            }
            m
        };
        let mut accepted = Vec::new();
        for round in 0..400 {
            if sender.send(big(round)) {
                accepted.push(round);
            }
        }
        accepted
    })
    .join()
    .unwrap();
    assert!(accepted.len() < 400, "a peer that reads nothing took 100 MiB");
    assert!(accepted.len() >= 4, "the queue took fewer than queue_messages: {}", accepted.len());
    // Now the peer reads every accepted message, whole and in order.
    let mut got = Vec::new();
    while got.len() < accepted.len() {
        let len = tokio::time::timeout(Duration::from_secs(5), conn.read_u32_le()).await.unwrap().unwrap();
        let mut frame = vec![0u8; len as usize];
        conn.read_exact(&mut frame).await.unwrap();
        match Message::decode(Bytes::from(frame)).unwrap().body {
            MessageBody::AppendEntries(a) => {
                assert!(a.entries[0].data.iter().all(|&b| b == a.read_round as u8), "frame torn");
                got.push(a.read_round);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(got, accepted);
}
