//! Server configuration with etcd's flag names, so an etcd user's habits and scripts carry over.
//!
//! A setting comes from, in order of precedence: a flag, a `BALSA_*` environment variable, the
//! TOML file of `--config-file` (keys named like the flags, as etcd's YAML file names them), the
//! default. clap resolves the first two; every flag is therefore optional at the clap level, so
//! that "not given" stays distinguishable from "given with the default value" until the file
//! has had its say.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use serde::Deserialize;

use crate::node::NodeConfig;

/// More client threads than this is a typo, not a machine.
const MAX_CLIENT_THREADS: usize = 1024;

/// `balsa server` flags (each also read from a `BALSA_*` environment variable).
#[derive(Args, Clone, Debug, Default)]
pub struct ServerFlags {
    /// A TOML file of settings named like these flags (flags and BALSA_* variables win over it).
    #[arg(long, env = "BALSA_CONFIG_FILE", value_name = "PATH")]
    pub config_file: Option<PathBuf>,
    /// This member's name [default: default].
    #[arg(long, env = "BALSA_NAME")]
    pub name: Option<String>,
    /// Where this member keeps its data [default: NAME.balsa].
    #[arg(long, env = "BALSA_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Where clients connect: etcd v3 gRPC, and /metrics and /health over HTTP/1.1
    /// [default: http://127.0.0.1:2379].
    #[arg(long, env = "BALSA_LISTEN_CLIENT_URLS")]
    pub listen_client_urls: Option<String>,
    /// Where clients are told to connect [default: the listen URLs].
    #[arg(long, env = "BALSA_ADVERTISE_CLIENT_URLS")]
    pub advertise_client_urls: Option<String>,
    /// Where peers connect [default: http://127.0.0.1:2380].
    #[arg(long, env = "BALSA_LISTEN_PEER_URLS")]
    pub listen_peer_urls: Option<String>,
    /// Where peers are told to connect [default: the listen URL].
    #[arg(long, env = "BALSA_INITIAL_ADVERTISE_PEER_URLS")]
    pub initial_advertise_peer_urls: Option<String>,
    /// An extra HTTP listener for /metrics and /health only [default: none].
    #[arg(long, env = "BALSA_LISTEN_METRICS_URLS")]
    pub listen_metrics_urls: Option<String>,
    /// Every founding member: `name=peer-url,...` [default: this member alone].
    #[arg(long, env = "BALSA_INITIAL_CLUSTER")]
    pub initial_cluster: Option<String>,
    /// `new` to found a cluster, `existing` to join a running one (after `etcdctl member add`)
    /// [default: new].
    #[arg(long, env = "BALSA_INITIAL_CLUSTER_STATE")]
    pub initial_cluster_state: Option<String>,
    /// Distinguishes clusters; peers of another cluster are refused [default: balsa-cluster].
    #[arg(long, env = "BALSA_INITIAL_CLUSTER_TOKEN")]
    pub initial_cluster_token: Option<String>,
    /// One Raft tick in milliseconds; the election timeout is ten of them [default: 100].
    #[arg(long, env = "BALSA_TICK_MS")]
    pub tick_ms: Option<u64>,
    /// Take a snapshot (and compact the log behind it) after this many applied entries, as
    /// etcd's flag of the same name [default: 100000].
    #[arg(long, env = "BALSA_SNAPSHOT_COUNT")]
    pub snapshot_count: Option<u64>,
    /// Log streams created without a retention keep at most this many bytes [default: 0, no
    /// limit].
    #[arg(long, env = "BALSA_STREAM_RETENTION_BYTES")]
    pub stream_retention_bytes: Option<u64>,
    /// Log streams created without a retention keep records this many milliseconds [default: 0,
    /// no limit].
    #[arg(long, env = "BALSA_STREAM_RETENTION_MS")]
    pub stream_retention_ms: Option<u64>,
    /// Threads of the client (gRPC) server; 0 serves clients on the member's consensus thread,
    /// which saves a thread wake-up each way per request, but caps the member at one core
    /// [default: 0].
    #[arg(long, env = "BALSA_CLIENT_THREADS")]
    pub client_threads: Option<usize>,
    /// error, warn, info, debug or trace [default: info].
    #[arg(long, env = "BALSA_LOG_LEVEL")]
    pub log_level: Option<String>,
    /// text or json [default: text].
    #[arg(long, env = "BALSA_LOG_FORMAT")]
    pub log_format: Option<String>,
}

/// The `--config-file` contents: the same settings, under the flags' names.
#[derive(Deserialize, Debug, Default, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileConfig {
    /// See [`ServerFlags::name`].
    pub name: Option<String>,
    /// See [`ServerFlags::data_dir`].
    pub data_dir: Option<PathBuf>,
    /// See [`ServerFlags::listen_client_urls`].
    pub listen_client_urls: Option<String>,
    /// See [`ServerFlags::advertise_client_urls`].
    pub advertise_client_urls: Option<String>,
    /// See [`ServerFlags::listen_peer_urls`].
    pub listen_peer_urls: Option<String>,
    /// See [`ServerFlags::initial_advertise_peer_urls`].
    pub initial_advertise_peer_urls: Option<String>,
    /// See [`ServerFlags::listen_metrics_urls`].
    pub listen_metrics_urls: Option<String>,
    /// See [`ServerFlags::initial_cluster`].
    pub initial_cluster: Option<String>,
    /// See [`ServerFlags::initial_cluster_state`].
    pub initial_cluster_state: Option<String>,
    /// See [`ServerFlags::initial_cluster_token`].
    pub initial_cluster_token: Option<String>,
    /// See [`ServerFlags::tick_ms`].
    pub tick_ms: Option<u64>,
    /// See [`ServerFlags::snapshot_count`].
    pub snapshot_count: Option<u64>,
    /// See [`ServerFlags::stream_retention_bytes`].
    pub stream_retention_bytes: Option<u64>,
    /// See [`ServerFlags::stream_retention_ms`].
    pub stream_retention_ms: Option<u64>,
    /// See [`ServerFlags::client_threads`].
    pub client_threads: Option<usize>,
    /// See [`ServerFlags::log_level`].
    pub log_level: Option<String>,
    /// See [`ServerFlags::log_format`].
    pub log_format: Option<String>,
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// One human-readable line per event.
    Text,
    /// One JSON object per event (for log shippers).
    Json,
}

/// Every setting of a member, resolved from flags, environment, file and defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct ServerConfig {
    /// This member's name; its position in `initial_cluster` gives its member id.
    pub name: String,
    /// Where the log, snapshots and the cluster file live.
    pub data_dir: PathBuf,
    /// The client listener (gRPC and the HTTP operations endpoints).
    pub listen_client_urls: String,
    /// Published to the member table for clients (and for forwarding to the leader).
    pub advertise_client_urls: Option<String>,
    /// The peer listener.
    pub listen_peer_urls: String,
    /// This member's peer URL as others dial it.
    pub initial_advertise_peer_urls: Option<String>,
    /// An optional HTTP listener serving only `/metrics` and `/health`.
    pub listen_metrics_urls: Option<String>,
    /// `name=url,...`; `None` means this member alone.
    pub initial_cluster: Option<String>,
    /// `new` or `existing`.
    pub initial_cluster_state: String,
    /// Hashed into the cluster id.
    pub initial_cluster_token: String,
    /// One Raft tick in milliseconds.
    pub tick_ms: u64,
    /// Applied entries between snapshots (etcd's `--snapshot-count`).
    pub snapshot_count: u64,
    /// Default retention of log streams (0: no limit).
    pub stream_retention: balsa_kv::Retention,
    /// Threads of the client server (0: the node's own thread).
    pub client_threads: usize,
    /// The tracing filter (a level, or any `EnvFilter` directive).
    pub log_level: String,
    /// How log lines are written.
    pub log_format: LogFormat,
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
    /// This member's peer URL in `--initial-cluster` is not where it listens: peers would dial
    /// a port nobody answers on.
    #[error(
        "--initial-cluster has {name}={cluster_url} but --listen-peer-urls is {listen_url}: the ports differ"
    )]
    PeerUrlMismatch {
        /// This member.
        name: String,
        /// Its URL in `--initial-cluster`.
        cluster_url: String,
        /// `--listen-peer-urls`.
        listen_url: String,
    },
    /// Neither `new` nor `existing`.
    #[error("--initial-cluster-state {0:?}: expected \"new\" or \"existing\"")]
    ClusterState(String),
    /// Two members at one peer address.
    #[error("--initial-cluster: {0} is listed twice")]
    DuplicatePeer(SocketAddr),
    /// A value outside its set.
    #[error("--{key} {value:?}: expected {expected}")]
    BadValue {
        /// The setting.
        key: &'static str,
        /// What was given.
        value: String,
        /// What is accepted.
        expected: &'static str,
    },
    /// The config file cannot be read or parsed (unknown keys and wrong types included; the
    /// message names the key).
    #[error("--config-file {path}: {message}")]
    File {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
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

impl FileConfig {
    /// Reads and parses a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let file_error = |message: String| ConfigError::File { path: path.display().to_string(), message };
        let text = std::fs::read_to_string(path).map_err(|e| file_error(e.to_string()))?;
        Self::parse(&text).map_err(file_error)
    }

    /// Parses a config file's text. toml's messages name the offending key (unknown keys are
    /// listed with the known ones; a wrong type quotes the line).
    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim_end().to_string())
    }
}

impl ServerFlags {
    /// Resolves every setting: flags and environment (already merged by clap) over the file over
    /// the defaults.
    pub fn resolve(&self) -> Result<ServerConfig, ConfigError> {
        let file = match &self.config_file {
            Some(path) => FileConfig::load(path)?,
            None => FileConfig::default(),
        };
        self.resolve_with(file)
    }

    /// [`ServerFlags::resolve`] with the file already parsed.
    pub fn resolve_with(&self, file: FileConfig) -> Result<ServerConfig, ConfigError> {
        let f = self.clone();
        let name = f.name.or(file.name).unwrap_or_else(|| "default".to_string());
        let data_dir = f.data_dir.or(file.data_dir).unwrap_or_else(|| PathBuf::from(format!("{name}.balsa")));
        let log_format = match f.log_format.or(file.log_format).as_deref().unwrap_or("text") {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                return Err(ConfigError::BadValue {
                    key: "log-format",
                    value: other.into(),
                    expected: "text or json",
                })
            }
        };
        let log_level = f.log_level.or(file.log_level).unwrap_or_else(|| "info".to_string());
        if !["error", "warn", "info", "debug", "trace"].contains(&log_level.as_str()) {
            return Err(ConfigError::BadValue {
                key: "log-level",
                value: log_level,
                expected: "error, warn, info, debug or trace",
            });
        }
        let config = ServerConfig {
            name,
            data_dir,
            listen_client_urls: f
                .listen_client_urls
                .or(file.listen_client_urls)
                .unwrap_or_else(|| "http://127.0.0.1:2379".into()),
            advertise_client_urls: f.advertise_client_urls.or(file.advertise_client_urls),
            listen_peer_urls: f
                .listen_peer_urls
                .or(file.listen_peer_urls)
                .unwrap_or_else(|| "http://127.0.0.1:2380".into()),
            initial_advertise_peer_urls: f.initial_advertise_peer_urls.or(file.initial_advertise_peer_urls),
            listen_metrics_urls: f.listen_metrics_urls.or(file.listen_metrics_urls),
            initial_cluster: f.initial_cluster.or(file.initial_cluster),
            initial_cluster_state: f
                .initial_cluster_state
                .or(file.initial_cluster_state)
                .unwrap_or_else(|| "new".into()),
            initial_cluster_token: f
                .initial_cluster_token
                .or(file.initial_cluster_token)
                .unwrap_or_else(|| "balsa-cluster".into()),
            tick_ms: f.tick_ms.or(file.tick_ms).unwrap_or(100),
            // etcd's default. Snapshots are written off the driver thread, but the state is
            // still encoded on it; at 10,000 a busy member stalled for hundreds of ms a second.
            snapshot_count: f.snapshot_count.or(file.snapshot_count).unwrap_or(100_000),
            stream_retention: balsa_kv::Retention {
                max_bytes: f.stream_retention_bytes.or(file.stream_retention_bytes).unwrap_or(0),
                max_age_ms: f.stream_retention_ms.or(file.stream_retention_ms).unwrap_or(0),
            },
            client_threads: f.client_threads.or(file.client_threads).unwrap_or(0),
            log_level,
            log_format,
        };
        if config.client_threads > MAX_CLIENT_THREADS {
            return Err(ConfigError::BadValue {
                key: "client-threads",
                value: config.client_threads.to_string(),
                expected: "at most 1024 threads (0: the member's consensus thread)",
            });
        }
        if config.snapshot_count == 0 {
            return Err(ConfigError::BadValue {
                key: "snapshot-count",
                value: "0".into(),
                expected: "at least 1 applied entry between snapshots",
            });
        }
        // Everything the node needs is checked now, before anything binds or touches the disk.
        config.node_config()?;
        config.client_addr()?;
        config.metrics_addr()?;
        Ok(config)
    }
}

impl ServerConfig {
    /// The cluster id: a hash of the token, so clusters founded separately refuse each other.
    pub fn cluster_id(&self) -> u64 {
        self.initial_cluster_token
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
    }

    /// The client listener's address.
    pub fn client_addr(&self) -> Result<SocketAddr, ConfigError> {
        parse_url("--listen-client-urls", &self.listen_client_urls)
    }

    /// The peer listener's address.
    pub fn peer_addr(&self) -> Result<SocketAddr, ConfigError> {
        parse_url("--listen-peer-urls", &self.listen_peer_urls)
    }

    /// The metrics listener's address, if any.
    pub fn metrics_addr(&self) -> Result<Option<SocketAddr>, ConfigError> {
        self.listen_metrics_urls.as_deref().map(|u| parse_url("--listen-metrics-urls", u)).transpose()
    }

    /// Member ids (see [`member_id`]), peer addresses, and this member's id.
    pub fn members(&self) -> Result<(BTreeMap<u64, SocketAddr>, u64), ConfigError> {
        let own_peer_url = self.initial_advertise_peer_urls.as_deref().unwrap_or(&self.listen_peer_urls);
        let cluster =
            self.initial_cluster.clone().unwrap_or_else(|| format!("{}={}", self.name, own_peer_url));
        let mut peers = BTreeMap::new();
        let mut names = Vec::new();
        let mut me = None;
        for part in cluster.split(',') {
            let (name, url) = part
                .split_once('=')
                .ok_or_else(|| ConfigError::BadCluster(format!("{part:?} is not name=url")))?;
            if names.contains(&name) {
                return Err(ConfigError::BadCluster(format!("member {name:?} is named twice")));
            }
            names.push(name);
            let addr = parse_url("--initial-cluster", url)?;
            let id = member_id(addr);
            if peers.insert(id, addr).is_some() {
                return Err(ConfigError::DuplicatePeer(addr));
            }
            if name == self.name {
                me = Some((id, url));
            }
        }
        let (me, my_url) = me.ok_or_else(|| ConfigError::UnknownMember(self.name.clone()))?;
        // Only the port can be compared: the listener may bind 0.0.0.0 while peers dial a
        // concrete address.
        if self.peer_addr()?.port() != peers[&me].port() {
            return Err(ConfigError::PeerUrlMismatch {
                name: self.name.clone(),
                cluster_url: my_url.to_string(),
                listen_url: self.listen_peer_urls.clone(),
            });
        }
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
            data_dir: self.data_dir.clone(),
            peers,
            tick: Duration::from_millis(self.tick_ms.max(1)),
            snapshot_entries: self.snapshot_count,
            join,
            name: self.name.clone(),
            client_urls,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> FileConfig {
        FileConfig::parse(text).unwrap()
    }

    #[test]
    fn defaults_apply_when_nothing_is_given() {
        let c = ServerFlags::default().resolve_with(FileConfig::default()).unwrap();
        assert_eq!(c.name, "default");
        assert_eq!(c.data_dir, PathBuf::from("default.balsa"));
        assert_eq!(c.listen_client_urls, "http://127.0.0.1:2379");
        assert_eq!(c.tick_ms, 100);
        assert_eq!(c.log_format, LogFormat::Text);
        assert_eq!(c.log_level, "info");
    }

    #[test]
    fn the_file_fills_what_flags_leave_open_and_flags_win() {
        let f = file("name = \"a\"\ntick-ms = 20\nlisten-client-urls = \"http://127.0.0.1:9\"\nlog-format = \"json\"\n");
        let flags = ServerFlags { tick_ms: Some(30), ..Default::default() };
        let c = flags.resolve_with(f).unwrap();
        assert_eq!(c.name, "a");
        assert_eq!(c.data_dir, PathBuf::from("a.balsa"), "the default data dir follows the file's name");
        assert_eq!(c.tick_ms, 30, "the flag wins over the file");
        assert_eq!(c.listen_client_urls, "http://127.0.0.1:9");
        assert_eq!(c.log_format, LogFormat::Json);
    }

    #[test]
    fn stream_retention_defaults_come_from_flags_or_file() {
        let c = ServerFlags::default().resolve_with(FileConfig::default()).unwrap();
        assert_eq!(c.stream_retention, balsa_kv::Retention::default(), "no limit unless asked");
        let f = file("stream-retention-bytes = 1000\nstream-retention-ms = 60000\n");
        let flags = ServerFlags { stream_retention_bytes: Some(5), ..Default::default() };
        let c = flags.resolve_with(f).unwrap();
        assert_eq!(c.stream_retention, balsa_kv::Retention { max_bytes: 5, max_age_ms: 60_000 });
    }

    #[test]
    fn snapshot_count_comes_from_flags_or_file_and_is_positive() {
        let c = ServerFlags::default().resolve_with(FileConfig::default()).unwrap();
        assert_eq!(c.snapshot_count, 100_000, "etcd's default");
        assert_eq!(c.node_config().unwrap().snapshot_entries, 100_000);
        let c = ServerFlags::default().resolve_with(file("snapshot-count = 5000\n")).unwrap();
        assert_eq!(c.snapshot_count, 5000);
        let flags = ServerFlags { snapshot_count: Some(7), ..Default::default() };
        assert_eq!(flags.resolve_with(file("snapshot-count = 5000\n")).unwrap().snapshot_count, 7);
        let zero = ServerFlags { snapshot_count: Some(0), ..Default::default() };
        assert!(matches!(
            zero.resolve_with(FileConfig::default()),
            Err(ConfigError::BadValue { key: "snapshot-count", .. })
        ));
    }

    #[test]
    fn client_threads_come_from_flags_or_file_and_are_bounded() {
        let c = ServerFlags::default().resolve_with(FileConfig::default()).unwrap();
        assert_eq!(c.client_threads, 0, "clients on the node's thread unless asked");
        assert_eq!(
            ServerFlags::default().resolve_with(file("client-threads = 4\n")).unwrap().client_threads,
            4
        );
        let flags = ServerFlags { client_threads: Some(2), ..Default::default() };
        assert_eq!(flags.resolve_with(file("client-threads = 4\n")).unwrap().client_threads, 2);
        let many = ServerFlags { client_threads: Some(MAX_CLIENT_THREADS + 1), ..Default::default() };
        let e = many.resolve_with(FileConfig::default()).unwrap_err();
        assert!(matches!(e, ConfigError::BadValue { key: "client-threads", .. }), "{e}");
        let e = FileConfig::parse("client-threads = -1\n").unwrap_err();
        assert!(e.contains("client-threads"), "{e}");
    }

    #[test]
    fn unknown_keys_and_wrong_types_name_the_key() {
        let e = FileConfig::parse("data-dri = \"x\"\n").unwrap_err();
        assert!(e.contains("unknown field `data-dri`"), "{e}");
        let e = FileConfig::parse("tick-ms = \"fast\"\n").unwrap_err();
        assert!(e.contains("tick-ms") && e.contains("invalid type"), "{e}");
        let e = FileConfig::parse("name = [1]\n").unwrap_err();
        assert!(e.contains("name") && e.contains("invalid type"), "{e}");
    }

    #[test]
    fn bad_values_are_refused() {
        let flags = ServerFlags { log_format: Some("xml".into()), ..Default::default() };
        assert!(matches!(
            flags.resolve_with(FileConfig::default()),
            Err(ConfigError::BadValue { key: "log-format", .. })
        ));
        let flags = ServerFlags {
            name: Some("a".into()),
            initial_cluster: Some("a=http://127.0.0.1:1,a=http://127.0.0.1:2".into()),
            ..Default::default()
        };
        let e = flags.resolve_with(FileConfig::default()).unwrap_err();
        assert_eq!(e.to_string(), "--initial-cluster: member \"a\" is named twice");
        let flags = ServerFlags {
            name: Some("a".into()),
            initial_cluster: Some("a=http://127.0.0.1:7000".into()),
            listen_peer_urls: Some("http://127.0.0.1:7001".into()),
            ..Default::default()
        };
        assert!(matches!(
            flags.resolve_with(FileConfig::default()),
            Err(ConfigError::PeerUrlMismatch { .. })
        ));
    }
}
