//! Server configuration with etcd's flag names, so an etcd user's habits and scripts carry over.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::node::NodeConfig;

/// `balsa server` flags (each also read from a `BALSA_*` environment variable).
#[derive(Args, Clone, Debug)]
pub struct ServerFlags {
    /// This member's name.
    #[arg(long, env = "BALSA_NAME", default_value = "default")]
    pub name: String,
    /// Where this member keeps its data (default: NAME.balsa).
    #[arg(long, env = "BALSA_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Where clients connect (etcd v3 gRPC).
    #[arg(long, env = "BALSA_LISTEN_CLIENT_URLS", default_value = "http://127.0.0.1:2379")]
    pub listen_client_urls: String,
    /// Where clients are told to connect (default: the listen URLs).
    #[arg(long, env = "BALSA_ADVERTISE_CLIENT_URLS")]
    pub advertise_client_urls: Option<String>,
    /// Where peers connect.
    #[arg(long, env = "BALSA_LISTEN_PEER_URLS", default_value = "http://127.0.0.1:2380")]
    pub listen_peer_urls: String,
    /// Where peers are told to connect (default: the listen URL).
    #[arg(long, env = "BALSA_INITIAL_ADVERTISE_PEER_URLS")]
    pub initial_advertise_peer_urls: Option<String>,
    /// Every founding member: `name=peer-url,...` (default: this member alone).
    #[arg(long, env = "BALSA_INITIAL_CLUSTER")]
    pub initial_cluster: Option<String>,
    /// `new` to found a cluster, `existing` to join a running one (after `etcdctl member add`).
    #[arg(long, env = "BALSA_INITIAL_CLUSTER_STATE", default_value = "new")]
    pub initial_cluster_state: String,
    /// Distinguishes clusters; peers of another cluster are refused.
    #[arg(long, env = "BALSA_INITIAL_CLUSTER_TOKEN", default_value = "balsa-cluster")]
    pub initial_cluster_token: String,
    /// One Raft tick; the election timeout is ten of them.
    #[arg(long, env = "BALSA_TICK_MS", default_value_t = 100)]
    pub tick_ms: u64,
}

/// A configuration the server refuses to start with.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// A URL that is not `http://host:port`.
    #[error("{flag}: {url:?} is not an http://host:port URL")]
    BadUrl {
        /// The flag.
        flag: &'static str,
        /// The value.
        url: String,
    },
    /// `--initial-cluster` malformed.
    #[error("--initial-cluster: {0}")]
    BadCluster(String),
    /// This member's name is not in `--initial-cluster`.
    #[error("--name {0:?} is not in --initial-cluster")]
    UnknownMember(String),
    /// Neither `new` nor `existing`.
    #[error("--initial-cluster-state {0:?}: expected \"new\" or \"existing\"")]
    ClusterState(String),
    /// Two members at one peer address.
    #[error("--initial-cluster: {0} is listed twice")]
    DuplicatePeer(SocketAddr),
}

/// A member's id: a hash of its peer address. The member that adds a server (`etcdctl member
/// add URL`) and the server itself (finding its URL in `--initial-cluster`) thus agree on its id
/// without talking to each other. Never 0, which Raft reserves for "nobody".
pub fn member_id(peer: SocketAddr) -> u64 {
    let url = format!("http://{peer}");
    let h =
        url.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    // FNV alone leaves nearby addresses with nearby ids; finish with a mix.
    let h = (h ^ (h >> 33)).wrapping_mul(0xff51_afd7_ed55_8ccd);
    (h ^ (h >> 33)).max(1)
}

/// Parses one `http://host:port` URL (the first of a comma-separated list).
pub fn parse_url(flag: &'static str, urls: &str) -> Result<SocketAddr, ConfigError> {
    let bad = || ConfigError::BadUrl { flag, url: urls.to_string() };
    let first = urls.split(',').next().ok_or_else(bad)?;
    let hostport = first.strip_prefix("http://").ok_or_else(bad)?;
    let hostport = hostport.trim_end_matches('/');
    let hostport = hostport.replace("localhost", "127.0.0.1");
    hostport.parse().map_err(|_| bad())
}

impl ServerFlags {
    /// The cluster id: a hash of the token, so clusters founded separately refuse each other.
    pub fn cluster_id(&self) -> u64 {
        self.initial_cluster_token
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
    }

    /// Member ids (see [`member_id`]), peer addresses, and this member's id.
    pub fn members(&self) -> Result<(BTreeMap<u64, SocketAddr>, u64), ConfigError> {
        let own_peer_url = self.initial_advertise_peer_urls.as_deref().unwrap_or(&self.listen_peer_urls);
        let cluster =
            self.initial_cluster.clone().unwrap_or_else(|| format!("{}={}", self.name, own_peer_url));
        let mut peers = BTreeMap::new();
        let mut me = None;
        for part in cluster.split(',') {
            let (name, url) = part
                .split_once('=')
                .ok_or_else(|| ConfigError::BadCluster(format!("{part:?} is not name=url")))?;
            let addr = parse_url("--initial-cluster", url)?;
            let id = member_id(addr);
            if peers.insert(id, addr).is_some() {
                return Err(ConfigError::DuplicatePeer(addr));
            }
            if name == self.name {
                me = Some(id);
            }
        }
        let me = me.ok_or_else(|| ConfigError::UnknownMember(self.name.clone()))?;
        Ok((peers, me))
    }

    /// The node's configuration.
    pub fn node_config(&self) -> Result<NodeConfig, ConfigError> {
        let join = match self.initial_cluster_state.as_str() {
            "new" => false,
            "existing" => true,
            other => return Err(ConfigError::ClusterState(other.to_string())),
        };
        let (peers, id) = self.members()?;
        let client_urls = self.advertise_client_urls.as_deref().unwrap_or(&self.listen_client_urls);
        let client_urls = client_urls.split(',').map(|u| u.trim().to_string()).collect();
        Ok(NodeConfig {
            id,
            cluster_id: self.cluster_id(),
            data_dir: self.data_dir.clone().unwrap_or_else(|| PathBuf::from(format!("{}.balsa", self.name))),
            peers,
            tick: Duration::from_millis(self.tick_ms.max(1)),
            snapshot_entries: 10_000,
            join,
            name: self.name.clone(),
            client_urls,
        })
    }
}
