//! Snapshots are written off the driver thread: the node goes on meanwhile, the log is
//! compacted only once a snapshot is durable, and a failed write stops the node as a failed
//! write on the driver does.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use balsa_kv::{Command, DeleteRangeRequest, KeyRange, PutRequest, RangeRequest};
use balsa_raft::Role;
use balsa_server::{NodeConfig, NodeError, NodeHandle};
use bytes::Bytes;
use common::Dir;
use tokio::net::TcpListener;

async fn start(dir: &Dir, snapshot_entries: u64) -> NodeHandle {
    let peer = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = NodeConfig {
        id: 1,
        cluster_id: 5,
        data_dir: dir.0.clone(),
        peers: BTreeMap::from([(1, peer.local_addr().unwrap())]),
        tick: Duration::from_millis(10),
        snapshot_entries,
        join: false,
        name: String::new(),
        client_urls: Vec::new(),
    };
    let node = NodeHandle::start(config, peer).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while node.status().await.unwrap().role != Role::Leader {
        assert!(Instant::now() < deadline, "a single node elects itself");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    node
}

async fn put(node: &NodeHandle, i: u64) -> Result<(), NodeError> {
    let req = PutRequest {
        key: Bytes::from(format!("k/{i:04}")),
        value: Bytes::from(vec![b'v'; 100]),
        ..Default::default()
    };
    node.propose(Command::Put(req)).await.map(|_| ())
}

fn metric(node: &NodeHandle, name: &str) -> f64 {
    let text = node.metrics().encode();
    let line = text.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap_or_else(|| panic!("{name}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

/// Puts keys 0..200, then overwrites them in turn, until `count` snapshots are saved, within 60 s.
async fn write_until_snapshots(node: &NodeHandle, count: u32) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut i = 0u64;
    while i < 200 || metric(node, "balsa_server_snapshots_saved_total") < f64::from(count) {
        assert!(Instant::now() < deadline, "{count} snapshots within 60 s ({i} writes)");
        put(node, i % 200).await.unwrap();
        i += 1;
    }
}

fn snapshot_files(dir: &Dir) -> usize {
    std::fs::read_dir(dir.0.join("snap"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".snap"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_are_written_off_the_driver_and_survive_a_restart() {
    let dir = Dir::new("snapshots-off-driver");
    let node = start(&dir, 20).await;
    // 200 keys, then overwrites of them until five snapshots are saved: a snapshot starts only
    // after the one before is installed, so how many a fixed number of writes sees depends on
    // how fast the machine encodes (another test here makes every encoding take many rounds).
    write_until_snapshots(&node, 5).await;
    assert!(metric(&node, "balsa_server_snapshot_duration_seconds_count") >= 5.0);
    assert!(metric(&node, "balsa_server_snapshot_save_duration_seconds_count") >= 5.0);
    drop(node);
    assert!((1..=2).contains(&snapshot_files(&dir)), "the newest two are kept");
    // Restarted with automatic snapshots off, so that none can race the one asked for below
    // (an automatic one landing on the last write would leave nothing new to snapshot).
    let node = start(&dir, u64::MAX).await;
    let kvs = node.read(RangeRequest::of(KeyRange::prefix("k/"))).await.unwrap().kvs;
    assert_eq!(kvs.len(), 200, "every write survives the restart, from the snapshot and the log");
    // Defragment's path: a snapshot now, answered once installed.
    put(&node, 200).await.unwrap();
    let index = node.snapshot_now().await.unwrap().expect("something applied since the last one");
    assert!(index >= 201, "{index}");
    assert_eq!(node.snapshot_now().await.unwrap(), None, "nothing new to snapshot");
    drop(node);
    let node = start(&dir, u64::MAX).await;
    let kvs = node.read(RangeRequest::of(KeyRange::prefix("k/"))).await.unwrap().kvs;
    assert_eq!(kvs.len(), 201, "the write before the asked-for snapshot survives a restart");
}

/// Snapshots encoded over many driver rounds, while puts, overwrites, deletes and a compaction
/// keep being applied between the steps, hold the state of their own index: the node restarted
/// from the last one (and the log after it) has the same keys, the same history hash and the
/// same compaction point. A snapshot holding a write made after its index would have it applied
/// twice on restart (another version, another hash); one missing a write before would lose it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_encoded_over_many_rounds_hold_the_state_of_their_index() {
    // Every test in this binary then encodes its snapshots a key or two per round.
    balsa_server::node::set_snapshot_step_bytes(64);
    let dir = Dir::new("snapshots-in-steps");
    let node = start(&dir, 20).await;
    // At least 300 rounds of writes, and more until five snapshots are saved (see
    // `write_until_snapshots`).
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut i = 0u64;
    while i < 300 || metric(&node, "balsa_server_snapshots_saved_total") < 5.0 {
        assert!(Instant::now() < deadline, "five snapshots within 60 s ({i} rounds of writes)");
        put(&node, i % 120).await.unwrap();
        if i.is_multiple_of(7) {
            let range = KeyRange::single(Bytes::from(format!("k/{:04}", (i * 13) % 120)));
            node.propose(Command::DeleteRange(DeleteRangeRequest { range, prev_kv: false })).await.unwrap();
        }
        if i == 150 {
            let revision = node.revision().await.unwrap() - 40;
            node.propose(Command::Compact { revision }).await.unwrap();
        }
        i += 1;
    }
    let before = node.hash_kv(0).await.unwrap();
    let keys = node.read(RangeRequest::of(KeyRange::prefix("k/"))).await.unwrap().kvs;
    assert!(before.1 > 0, "the compaction was applied");
    drop(node);
    let node = start(&dir, u64::MAX).await;
    assert_eq!(node.hash_kv(0).await.unwrap(), before, "history hash, compaction point, revision");
    assert_eq!(node.read(RangeRequest::of(KeyRange::prefix("k/"))).await.unwrap().kvs, keys);
}

/// A snapshot file that cannot be written (here: its directory replaced by a file) stops the
/// node, as a failed write on the driver thread did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_snapshot_write_stops_the_node() {
    let dir = Dir::new("snapshots-fail");
    let node = start(&dir, 20).await;
    for i in 0..5 {
        put(&node, i).await.unwrap();
    }
    std::fs::remove_dir_all(dir.0.join("snap")).unwrap();
    std::fs::write(dir.0.join("snap"), b"not a directory").unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut i = 5;
    loop {
        // Every write is answered, the one the node stopped under too (a write left unanswered
        // would hang the caller: bounded here so that it fails instead).
        let answer = tokio::time::timeout(Duration::from_secs(10), put(&node, i)).await;
        match answer.unwrap_or_else(|_| panic!("write {i} unanswered after 10 s")) {
            Ok(()) => i += 1,
            Err(NodeError::Stopped) => break,
            Err(e) => panic!("unexpected {e}"),
        }
        assert!(Instant::now() < deadline, "the node kept going after {i} writes");
    }
    assert!(i >= 10, "it stopped at the snapshot, after {i} writes");
    assert_eq!(metric(&node, "balsa_server_stopped"), 1.0);
    let status = tokio::time::timeout(Duration::from_secs(10), node.status()).await;
    assert!(matches!(status, Ok(Err(NodeError::Stopped))), "{status:?}");
}

async fn start_member(
    dir: &Dir,
    id: u64,
    peer: TcpListener,
    peers: BTreeMap<u64, std::net::SocketAddr>,
    join: bool,
) -> NodeHandle {
    let config = NodeConfig {
        id,
        cluster_id: 5,
        data_dir: dir.0.clone(),
        peers,
        tick: Duration::from_millis(10),
        snapshot_entries: 50,
        join,
        name: String::new(),
        client_urls: Vec::new(),
    };
    NodeHandle::start(config, peer).await.unwrap()
}

/// The leader's snapshot data lives in its file, not in memory: after a restart (which recovers
/// the snapshot as a handle on the file) a learner that joins behind the compacted log is
/// brought up by InstallSnapshot chunks read from that file, and serves every key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learner_catches_up_from_the_snapshot_file_after_the_leader_restarts() {
    let (dir1, dir2) = (Dir::new("snapfile-leader"), Dir::new("snapfile-learner"));
    // The leader keeps its peer address across the restart: the member table records it, and a
    // member that changed it would need a MemberUpdate first.
    let (p1, p2) =
        (TcpListener::bind("127.0.0.1:0").await.unwrap(), TcpListener::bind("127.0.0.1:0").await.unwrap());
    let peers = BTreeMap::from([(1, p1.local_addr().unwrap()), (2, p2.local_addr().unwrap())]);
    let node = start_member(&dir1, 1, p1, BTreeMap::from([(1, peers[&1])]), false).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while node.status().await.unwrap().role != Role::Leader {
        assert!(Instant::now() < deadline, "a single node elects itself");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for i in 0..300 {
        put(&node, i).await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&node, "balsa_server_snapshots_saved_total") < 3.0 {
        assert!(Instant::now() < deadline, "snapshots were taken");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(node);
    // Restart: the core and the store now hold the recovered snapshot as a file handle.
    let deadline = Instant::now() + Duration::from_secs(10);
    let p1 = loop {
        match TcpListener::bind(peers[&1]).await {
            Ok(l) => break l,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("the leader's peer address stays busy: {e}"),
        }
    };
    // The learner is reachable through the flags (no member table entry for it).
    let leader = start_member(&dir1, 1, p1, peers.clone(), false).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while leader.status().await.unwrap().role != Role::Leader {
        assert!(Instant::now() < deadline, "the restarted node leads again");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let status = leader.status().await.unwrap();
    assert!(status.snapshot_index >= 150, "the log is compacted behind a snapshot: {status:?}");
    leader.change_membership(balsa_raft::MembershipChange::AddLearner(2)).await.unwrap();
    let learner = start_member(&dir2, 2, p2, peers, true).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let kvs = learner.read_local(RangeRequest::of(KeyRange::prefix("k/"))).await.map(|r| r.kvs.len());
        if kvs == Ok(300) {
            break;
        }
        if Instant::now() >= deadline {
            let (l, f) = (leader.status().await, learner.status().await);
            panic!("the learner did not catch up: {kvs:?}\nleader {l:?}\nlearner {f:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status = learner.status().await.unwrap();
    assert!(status.snapshot_index > 0, "it came up through a snapshot: {status:?}");
    assert!(snapshot_files(&dir2) >= 1, "which it keeps on disk");
}
