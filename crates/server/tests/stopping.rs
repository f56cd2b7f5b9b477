//! A node that stops answers everyone waiting on it at once, however long the rest of stopping
//! takes. Its own test binary: it slows every zero-fill of the process's file system.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use balsa_kv::{Command, PutRequest};
use balsa_raft::Role;
use balsa_server::{NodeConfig, NodeError, NodeHandle};
use bytes::Bytes;
use common::Dir;
use tokio::net::TcpListener;

/// How late the spare log segment's zero-fill begins: the store's drop, at the end of stopping,
/// waits for it. Long enough that a slow machine still stops well before the fill begins (the
/// test checks it did, or it would prove nothing), and the test takes that long.
const FILL_DELAY: Duration = Duration::from_secs(10);

/// How long a write may wait for its answer: well under what is left of [`FILL_DELAY`] when
/// the node stops.
const ANSWER_WITHIN: Duration = Duration::from_secs(2);

async fn put(node: &NodeHandle, i: u64) -> Result<(), NodeError> {
    let req = PutRequest {
        key: Bytes::from(format!("k/{i:04}")),
        value: Bytes::from_static(b"v"),
        ..Default::default()
    };
    node.propose(Command::Put(req)).await.map(|_| ())
}

/// The write proposed in the round that finds the snapshot's write failed is answered
/// `Stopped` at once, not once the driver's teardown (here: the zero-fill it waits for) is done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_pending_when_the_node_stops_is_answered_at_once() {
    balsa_storage::vfs::set_zero_fill_delay(FILL_DELAY);
    let dir = Dir::new("stopping-pending");
    let peer = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = NodeConfig {
        id: 1,
        cluster_id: 11,
        data_dir: dir.0.clone(),
        peers: BTreeMap::from([(1, peer.local_addr().unwrap())]),
        tick: Duration::from_millis(10),
        snapshot_entries: 20,
        join: false,
        name: String::new(),
        client_urls: Vec::new(),
    };
    let begun = Instant::now();
    let node = NodeHandle::start(config, peer).await.unwrap();
    while node.status().await.unwrap().role != Role::Leader {
        assert!(begun.elapsed() < Duration::from_secs(3), "a single node elects itself");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The snapshot the 20th entry starts cannot be written: its directory is a file.
    std::fs::remove_dir_all(dir.0.join("snap")).unwrap();
    std::fs::write(dir.0.join("snap"), b"not a directory").unwrap();
    let mut i = 0;
    loop {
        let answer = tokio::time::timeout(ANSWER_WITHIN, put(&node, i)).await;
        match answer.unwrap_or_else(|_| panic!("write {i} unanswered after {ANSWER_WITHIN:?}")) {
            Ok(()) => i += 1,
            Err(NodeError::Stopped) => break,
            Err(e) => panic!("unexpected {e}"),
        }
        assert!(i < 100, "the node kept going after {i} writes");
    }
    // It stopped well before the fill could have ended, so the teardown was still waiting on it.
    assert!(begun.elapsed() + ANSWER_WITHIN < FILL_DELAY, "stopped only after {:?}", begun.elapsed());
    assert!(i >= 15, "it stopped at the snapshot, after {i} writes");
    // Marked stopped before the answer went out.
    let stopped = node.metrics().encode().lines().any(|l| l == "balsa_server_stopped 1");
    assert!(stopped, "balsa_server_stopped is 1 once a caller is told Stopped");
    let status = tokio::time::timeout(ANSWER_WITHIN, node.status()).await;
    assert!(matches!(status, Ok(Err(NodeError::Stopped))), "{status:?}");
}
