//! Shared by the server's API tests: a temporary data directory, a one-member cluster serving
//! the etcd API, and the real etcdctl.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use balsa_raft::Role;
use balsa_server::kv_service::{self, KvService};
use balsa_server::{NodeConfig, NodeHandle};
use tokio::net::TcpListener;

pub mod ports;
#[allow(unused_imports)] // each test file uses a different subset
pub use ports::free_port;

/// A data directory removed when the test ends.
pub struct Dir(pub std::path::PathBuf);

impl Dir {
    /// A fresh directory named after the test and this process.
    pub fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!("balsa-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        Self(path)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A one-member cluster (10 ms ticks) serving the etcd API; returns the client address once the
/// member leads.
pub async fn single_node(dir: &Dir) -> (Arc<NodeHandle>, SocketAddr) {
    let peer = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let peers = BTreeMap::from([(1, peer.local_addr().unwrap())]);
    let config = NodeConfig {
        id: 1,
        cluster_id: 99,
        data_dir: dir.0.clone(),
        peers,
        tick: Duration::from_millis(10),
        snapshot_entries: 1000,
        join: false,
        name: String::new(),
        client_urls: Vec::new(),
    };
    let node = Arc::new(NodeHandle::start(config, peer).await.unwrap());
    let deadline = Instant::now() + Duration::from_secs(10);
    while node.status().await.unwrap().role != Role::Leader {
        assert!(Instant::now() < deadline, "a single node elects itself");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let client = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = client.local_addr().unwrap();
    tokio::spawn(kv_service::serve(KvService::new(node.clone(), 99, 1), client));
    (node, addr)
}

/// Debian's etcdctl, if installed (CI installs it).
pub fn etcdctl_path() -> Option<String> {
    ["/usr/bin/etcdctl", "/usr/local/bin/etcdctl"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .map(str::to_string)
}

/// Runs etcdctl against `endpoint` with a 20 s limit; returns (success, stdout, stderr).
pub async fn etcdctl(path: &str, endpoint: SocketAddr, args: &[&str]) -> (bool, String, String) {
    let run = tokio::process::Command::new(path)
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .args(args)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(20), run)
        .await
        .unwrap_or_else(|_| panic!("etcdctl {args:?} did not finish in 20 s"))
        .unwrap();
    (out.status.success(), String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
}

/// Runs etcdctl and insists it succeeds; returns its stdout.
pub async fn etcdctl_ok(path: &str, endpoint: SocketAddr, args: &[&str]) -> String {
    let (ok, out, err) = etcdctl(path, endpoint, args).await;
    assert!(ok, "etcdctl {args:?} failed: {err}");
    out
}

/// The index of the member that leads, among those present (`None`: a member that was stopped);
/// waits up to 10 s for one.
pub async fn leader_index(nodes: &[Option<&NodeHandle>]) -> usize {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        for (i, n) in nodes.iter().enumerate() {
            if let Some(n) = n {
                if n.status().await.is_ok_and(|s| s.role == Role::Leader) {
                    return i;
                }
            }
        }
        assert!(Instant::now() < deadline, "no leader elected");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
