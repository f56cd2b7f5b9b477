//! Three real nodes on loopback: real TCP between them, real write-ahead logs on disk.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use balsa_kv::{Command, KeyRange, PutRequest, RangeRequest};
use balsa_server::{NodeConfig, NodeError, NodeHandle};
use bytes::Bytes;
use tokio::net::TcpListener;

struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn config(id: u64, dir: &Dir, peers: &BTreeMap<u64, SocketAddr>) -> NodeConfig {
    NodeConfig {
        id,
        cluster_id: 7,
        data_dir: dir.0.join(format!("n{id}")),
        peers: peers.clone(),
        tick: Duration::from_millis(20),
        snapshot_entries: 25,
        join: false,
        name: String::new(),
        client_urls: Vec::new(),
    }
}

async fn leader_of(nodes: &[Option<NodeHandle>]) -> usize {
    common::leader_index(&nodes.iter().map(Option::as_ref).collect::<Vec<_>>()).await
}

async fn put(node: &NodeHandle, k: &str, v: &str) -> Result<(), NodeError> {
    let req = PutRequest {
        key: Bytes::copy_from_slice(k.as_bytes()),
        value: Bytes::copy_from_slice(v.as_bytes()),
        ..Default::default()
    };
    node.propose(Command::Put(req)).await.map(|_| ())
}

/// Writes through whoever leads, retrying as a client would on a leader change (the writes are
/// idempotent: same key, same value).
async fn put_anywhere(nodes: &[Option<NodeHandle>], k: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let leader = leader_of(nodes).await;
        match put(nodes[leader].as_ref().unwrap(), k, "v").await {
            Ok(()) => return,
            Err(NodeError::NotLeader { .. } | NodeError::Dropped) => {}
            Err(e) => panic!("{k}: {e}"),
        }
        assert!(Instant::now() < deadline, "{k} never written");
    }
}

async fn count(node: &NodeHandle) -> Result<usize, NodeError> {
    Ok(node.read(RangeRequest::of(KeyRange::prefix("k/"))).await?.kvs.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicates_survives_losing_the_leader_and_recovers_a_restarted_node() {
    // Snapshots (every 25 entries) are encoded a key or two per driver round, so that writes,
    // elections and the restart below meet snapshots halfway through their encoding.
    balsa_server::node::set_snapshot_step_bytes(64);
    let dir = Dir(std::env::temp_dir().join(format!("balsa-cluster-{}", std::process::id())));
    let mut listeners = Vec::new();
    let mut peers = BTreeMap::new();
    for id in 1..=3u64 {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        peers.insert(id, l.local_addr().unwrap());
        listeners.push(Some(l));
    }
    let mut nodes: Vec<Option<NodeHandle>> = Vec::new();
    for id in 1..=3u64 {
        let l = listeners[id as usize - 1].take().unwrap();
        nodes.push(Some(NodeHandle::start(config(id, &dir, &peers), l).await.expect("starts")));
    }
    leader_of(&nodes).await;
    for i in 0..40 {
        put_anywhere(&nodes, &format!("k/{i:02}")).await;
    }
    // A follower forwards writes to the leader (as etcd does) and serves linearizable reads.
    let follower = (leader_of(&nodes).await + 1) % 3;
    put(nodes[follower].as_ref().unwrap(), "k/40", "v").await.expect("a follower forwards the write");
    assert_eq!(count(nodes[follower].as_ref().unwrap()).await.unwrap(), 41);

    // Lose the leader: the other two elect a new one and keep every acknowledged write.
    let first = leader_of(&nodes).await;
    nodes[first] = None;
    let second = leader_of(&nodes).await;
    assert_ne!(second, first);
    for i in 41..60 {
        put_anywhere(&nodes, &format!("k/{i:02}")).await;
    }
    let second = leader_of(&nodes).await;
    assert_eq!(count(nodes[second].as_ref().unwrap()).await.unwrap(), 60);

    // Restart the old leader from its disk (snapshots included): it catches up.
    let listener = TcpListener::bind(peers[&(first as u64 + 1)]).await.expect("port free");
    nodes[first] =
        Some(NodeHandle::start(config(first as u64 + 1, &dir, &peers), listener).await.expect("restarts"));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = nodes[first].as_ref().unwrap().status().await.unwrap();
        if status.last_applied >= nodes[second].as_ref().unwrap().status().await.unwrap().commit_index {
            break;
        }
        assert!(Instant::now() < deadline, "the restarted node never caught up: {status:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        count(nodes[first].as_ref().unwrap()).await.unwrap(),
        60,
        "linearizable read on the restarted node"
    );
}
