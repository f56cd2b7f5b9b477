//! One running member: listeners bound, data dir claimed, node started, client and metrics
//! servers spawned. `balsa server` runs one; `balsa dev` runs several in one process.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::config::{ConfigError, ServerConfig};
use crate::kv_service::{self, KvService};
use crate::node::NodeHandle;
use crate::ops;

/// Why a member did not start. Each message names the flag or file to fix.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is inconsistent.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A listener could not bind (most often: the port is in use).
    #[error("{flag} {addr}: {source}")]
    Bind {
        /// The flag naming the address.
        flag: &'static str,
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The data dir is unusable (unreadable, damaged log, ...).
    #[error("--data-dir {dir}: {message}")]
    DataDir {
        /// The data dir.
        dir: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The data dir was founded by another cluster or another member: starting on it would mix
    /// two clusters' logs, or make this member vote with another member's promises.
    #[error(
        "--data-dir {dir} belongs to cluster {found_cluster:016x} as member {found_name:?}, but \
         this configuration is cluster {cluster:016x} (--initial-cluster-token {token:?}) as member \
         {name:?} (--name); use another --data-dir or the settings it was founded with"
    )]
    ForeignDataDir {
        /// The data dir.
        dir: PathBuf,
        /// The cluster recorded in it.
        found_cluster: u64,
        /// The member name recorded in it.
        found_name: String,
        /// The cluster this configuration names.
        cluster: u64,
        /// `--initial-cluster-token`.
        token: String,
        /// `--name`.
        name: String,
    },
}

/// A running member.
pub struct Member {
    /// Its settings.
    pub config: ServerConfig,
    /// Its member id.
    pub id: u64,
    /// The node.
    pub node: Arc<NodeHandle>,
    /// Where clients connect.
    pub client_addr: SocketAddr,
    /// Where peers connect.
    pub peer_addr: SocketAddr,
    /// Where `/metrics` is served alone, if asked.
    pub metrics_addr: Option<SocketAddr>,
    client: ClientServer,
    /// The client server's own threads with `--client-threads` above 0; `None` when it runs on
    /// the node's thread (it stops with the node then).
    client_pool: Option<tokio::runtime::Runtime>,
    metrics: Option<JoinHandle<std::io::Result<()>>>,
}

/// The client (gRPC) server's task; its error says what failed.
type ClientServer = JoinHandle<Result<(), String>>;

/// Starts the client server on the node's own thread (`threads` 0) or on a pool of `threads`
/// threads of its own.
///
/// On the node's thread a request reaches the driver, and its answer the connection, without
/// waking another thread: on this 2-core VM a wake-up costs 35 µs before the woken thread runs,
/// and a put took four. A pool lets a member on a large machine spend more than one core on
/// gRPC (docs/BENCHMARKS.md, "Clients on the node's thread").
fn serve_clients<F>(
    node: &NodeHandle,
    threads: usize,
    listener: TcpListener,
    serve: impl FnOnce(TcpListener) -> F + Send + 'static,
) -> Result<(ClientServer, Option<tokio::runtime::Runtime>), StartError>
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let addr = listener.local_addr().expect("a bound listener has an address");
    let bind_error = |source| StartError::Bind { flag: "--listen-client-urls", addr, source };
    // A tokio listener belongs to the runtime that made it: hand the socket over to the one that
    // will accept on it, so connections are read where their requests are served.
    let listener = listener.into_std().map_err(bind_error)?;
    let pool = match threads {
        0 => None,
        n => Some(
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(n)
                .thread_name("balsa-client")
                .enable_all()
                .build()
                .map_err(bind_error)?,
        ),
    };
    let runtime = pool.as_ref().map_or_else(|| node.runtime(), |p| p.handle().clone());
    let task = runtime.spawn(async move {
        let listener =
            TcpListener::from_std(listener).map_err(|e| format!("--listen-client-urls {addr}: {e}"))?;
        serve(listener).await;
        Ok(())
    });
    Ok((task, pool))
}

async fn bind(flag: &'static str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr).await.map_err(|source| StartError::Bind { flag, addr, source })
}

impl Member {
    /// Starts a member. Every listener binds before the node starts, so a port in use is a
    /// clear error rather than a half-started member.
    pub async fn start(config: ServerConfig) -> Result<Self, StartError> {
        let node_config = config.node_config()?;
        let peer_listener = bind("--listen-peer-urls", config.peer_addr()?).await?;
        let client_listener = bind("--listen-client-urls", config.client_addr()?).await?;
        let metrics_listener = match config.metrics_addr()? {
            Some(addr) => Some(bind("--listen-metrics-urls", addr).await?),
            None => None,
        };
        let mut node_config = node_config;
        // A member keeps the id it was founded (or added) with, even if its peer URL changed
        // since (etcd too reads it from the data dir on restart; `member update` moves a member).
        let id = claim_data_dir(&config, node_config.id)?;
        if id != node_config.id {
            if let Some(addr) = node_config.peers.remove(&node_config.id) {
                node_config.peers.insert(id, addr);
            }
            node_config.id = id;
        }
        let (id, cluster) = (node_config.id, node_config.cluster_id);
        let dir = node_config.data_dir.clone();
        let peers = format!("{:?}", node_config.peers);
        let node = NodeHandle::start(node_config, peer_listener)
            .await
            .map_err(|message| StartError::DataDir { dir: dir.clone(), message })?;
        let node = Arc::new(node);
        let local = |l: &TcpListener| l.local_addr().expect("a bound listener has an address");
        let (client_addr, peer_addr) = (local(&client_listener), config.peer_addr()?);
        let metrics_addr = metrics_listener.as_ref().map(local);
        tracing::info!(
            name = %config.name, member = id, cluster = format_args!("{cluster:016x}"),
            client = %client_addr, peer = %peer_addr, metrics = ?metrics_addr,
            data_dir = %dir.display(), tick_ms = config.tick_ms, peers = %peers,
            "member started"
        );
        let service = KvService::new(node.clone(), cluster, id);
        let router_node = node.clone();
        let options = kv_service::ServeOptions {
            stream_retention: config.stream_retention,
            ..kv_service::ServeOptions::default()
        };
        let (client, client_pool) = serve_clients(&node, config.client_threads, client_listener, move |l| {
            kv_service::serve_all(service, l, options, ops::router(router_node))
        })?;
        let metrics = metrics_listener.map(|l| tokio::spawn(ops::serve(l, ops::router(node.clone()))));
        Ok(Self { config, id, node, client_addr, peer_addr, metrics_addr, client, client_pool, metrics })
    }

    /// Resolves only if the client server fails (it otherwise runs until the member is dropped).
    pub async fn failed(&mut self) -> String {
        match (&mut self.client).await {
            Ok(Ok(())) => "the client server stopped".into(),
            Ok(Err(e)) => format!("client server: {e}"),
            // On the node's thread, the client server ends with the node.
            Err(e) if e.is_cancelled() => {
                "the node stopped (the log says why), and its client server with it".into()
            }
            Err(e) => format!("client server: {e}"),
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.client.abort();
        if let Some(m) = &self.metrics {
            m.abort();
        }
        // Dropping a runtime waits for its threads, which an async caller may not do.
        if let Some(pool) = self.client_pool.take() {
            pool.shutdown_background();
        }
    }
}

/// The file in a data dir recording which cluster and member founded it.
const CLUSTER_FILE: &str = "cluster";

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct ClusterFile {
    /// Hexadecimal, as etcd prints ids (TOML integers stop at 2^63, ids do not).
    cluster_id: String,
    /// Hexadecimal, like the cluster id.
    member_id: String,
    /// The member's name (`--name`), so starting another member on this data dir is refused.
    name: String,
}

/// Records the cluster, member id and name in the data dir at first start; refuses a data dir
/// recorded for another cluster or member name, and returns the member id recorded. The cluster
/// id alone would not catch a member started on a fellow member's directory, which is as harmful
/// (it would break that member's vote and log promises).
pub(crate) fn claim_data_dir(config: &ServerConfig, member: u64) -> Result<u64, StartError> {
    let dir = &config.data_dir;
    let io = |e: std::io::Error| StartError::DataDir { dir: dir.clone(), message: e.to_string() };
    let path = dir.join(CLUSTER_FILE);
    let cluster = config.cluster_id();
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let bad = |m: String| StartError::DataDir {
                dir: dir.clone(),
                message: format!("{CLUSTER_FILE} file: {m}"),
            };
            let file: ClusterFile = toml::from_str(&text).map_err(|e| bad(e.to_string()))?;
            let found_cluster = u64::from_str_radix(&file.cluster_id, 16).map_err(|e| bad(e.to_string()))?;
            let found_member = u64::from_str_radix(&file.member_id, 16).map_err(|e| bad(e.to_string()))?;
            if found_cluster != cluster || file.name != config.name {
                return Err(StartError::ForeignDataDir {
                    dir: dir.clone(),
                    found_cluster,
                    found_name: file.name,
                    cluster,
                    token: config.initial_cluster_token.clone(),
                    name: config.name.clone(),
                });
            }
            Ok(found_member)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let name = toml::Value::String(config.name.clone());
            let text =
                format!("cluster-id = \"{cluster:016x}\"\nmember-id = \"{member:016x}\"\nname = {name}\n");
            write_atomically(dir, &path, text.as_bytes()).map_err(io)?;
            Ok(member)
        }
        Err(e) => Err(io(e)),
    }
}

/// Write, sync, rename, sync the directory: the file is either absent or whole after a crash.
fn write_atomically(dir: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}
