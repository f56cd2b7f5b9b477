//! In-process balsa clusters for the client's tests: real nodes over loopback TCP (10 ms ticks),
//! each serving the etcd API behind a small TCP proxy, so that a test can kill a member for good:
//! the proxy and every connection through it are cut, its gRPC server stopped, and its node
//! dropped (checked: the test waits until the node is really gone).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use balsa_raft::Role;
use balsa_server::config::member_id;
use balsa_server::kv_service::{self, KvService};
use balsa_server::{NodeConfig, NodeHandle};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A data directory removed when the test ends.
pub struct Dir(pub std::path::PathBuf);

impl Dir {
    pub fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!("balsa-client-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        Self(path)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Forwards connections from its own port to a member's client port; `cut` closes the port
/// and every connection through it.
struct Proxy {
    addr: SocketAddr,
    accept: JoinHandle<()>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Proxy {
    async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(Mutex::new(Vec::new()));
        let conns = connections.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let pipe = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                conns.lock().unwrap().push(pipe);
            }
        });
        Proxy { addr, accept, connections }
    }

    fn cut(&self) {
        self.accept.abort();
        for c in self.connections.lock().unwrap().drain(..) {
            c.abort();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
    }
}

/// One member.
pub struct Member {
    pub id: u64,
    pub name: String,
    node: Option<Arc<NodeHandle>>,
    server: JoinHandle<()>,
    proxy: Proxy,
}

impl Member {
    /// Where clients reach this member (`host:port`).
    pub fn endpoint(&self) -> String {
        self.proxy.addr.to_string()
    }

    pub fn alive(&self) -> bool {
        self.node.is_some()
    }

    pub async fn role(&self) -> Option<Role> {
        Some(self.node.as_ref()?.status().await.ok()?.role)
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// A cluster of `n` founding members.
pub struct Cluster {
    pub members: Vec<Member>,
    _dir: Dir,
}

impl Cluster {
    pub async fn start(name: &str, n: usize) -> Cluster {
        let dir = Dir::new(name);
        let mut listeners = Vec::new();
        for _ in 0..n {
            let peer = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let client = TcpListener::bind("127.0.0.1:0").await.unwrap();
            listeners.push((peer, client));
        }
        let peers: BTreeMap<u64, SocketAddr> = listeners
            .iter()
            .map(|(p, _)| (member_id(p.local_addr().unwrap()), p.local_addr().unwrap()))
            .collect();
        let mut members = Vec::new();
        for (i, (peer, client)) in listeners.into_iter().enumerate() {
            let id = member_id(peer.local_addr().unwrap());
            let proxy = Proxy::start(client.local_addr().unwrap()).await;
            let name = format!("m{i}");
            let config = NodeConfig {
                id,
                cluster_id: 7,
                data_dir: dir.0.join(&name),
                peers: peers.clone(),
                tick: Duration::from_millis(10),
                snapshot_entries: 1000,
                join: false,
                name: name.clone(),
                client_urls: vec![format!("http://{}", proxy.addr)],
            };
            let node = Arc::new(NodeHandle::start(config, peer).await.unwrap());
            let server = tokio::spawn(kv_service::serve(KvService::new(node.clone(), 7, id), client));
            members.push(Member { id, name, node: Some(node), server, proxy });
        }
        let cluster = Cluster { members, _dir: dir };
        cluster.leader().await;
        cluster
    }

    /// Every member's endpoint, in order.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(Member::endpoint).collect()
    }

    /// The index of the leader among live members (waits up to 10 s for one).
    pub async fn leader(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            for (i, m) in self.members.iter().enumerate() {
                if m.role().await == Some(Role::Leader) {
                    return i;
                }
            }
            assert!(Instant::now() < deadline, "no leader within 10 s");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Kills member `i`: cuts its clients off, stops its gRPC server and waits (at most 10 s)
    /// until its node has stopped.
    pub async fn kill(&mut self, i: usize) {
        let m = &mut self.members[i];
        m.proxy.cut();
        m.server.abort();
        let node: Weak<NodeHandle> = Arc::downgrade(&m.node.take().expect("a live member"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while node.upgrade().is_some() {
            assert!(Instant::now() < deadline, "member {i}'s node still referenced 10 s after the kill");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Polls `f` every 20 ms for at most `limit`.
pub async fn until<F: std::future::Future<Output = bool>>(
    limit: Duration,
    what: &str,
    mut f: impl FnMut() -> F,
) {
    let deadline = Instant::now() + limit;
    while !f().await {
        assert!(Instant::now() < deadline, "timed out after {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The client options the tests use: short attempts, a budget that outlasts an election.
pub fn options() -> balsa_client::ClientOptions {
    balsa_client::ClientOptions {
        request_timeout: Duration::from_secs(2),
        retry_budget: Duration::from_secs(10),
        ..Default::default()
    }
}

/// A client of every member of `cluster`, with [`options`].
pub async fn connect(cluster: &Cluster) -> balsa_client::Client {
    connect_with(cluster, options()).await
}

/// A client of every member of `cluster`.
pub async fn connect_with(cluster: &Cluster, options: balsa_client::ClientOptions) -> balsa_client::Client {
    let endpoints = cluster.endpoints();
    let endpoints: Vec<&str> = endpoints.iter().map(String::as_str).collect();
    balsa_client::Client::connect(&endpoints, options).await.unwrap()
}
