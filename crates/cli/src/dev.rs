//! `balsa dev`: a local cluster in one process, for trying balsa out and for developing against
//! it. Ports follow etcd's Procfile (clients on 2379, 22379, 32379, ...; peers one above), or
//! are consecutive from `--base-port`.

use std::future::Future;
use std::io::Write;
use std::path::PathBuf;
use std::task::Poll;

use balsa_server::config::{FileConfig, ServerFlags};
use balsa_server::member::Member;
use clap::Args;

/// `balsa dev` flags.
#[derive(Args, Clone, Debug)]
pub struct DevFlags {
    /// How many members.
    #[arg(long, default_value_t = 3)]
    nodes: u16,
    /// Member i listens for clients on BASE+2i and for peers on BASE+2i+1
    /// [default: etcd's Procfile ports 2379, 22379, 32379, ... (up to 6 members)].
    #[arg(long)]
    base_port: Option<u16>,
    /// Keep the members' data here (one folder each) [default: a temporary folder, removed
    /// when the cluster stops].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// One Raft tick in milliseconds; the election timeout is ten of them.
    #[arg(long, default_value_t = 100)]
    tick_ms: u64,
    /// Snapshot after this many applied entries (etcd's `--snapshot-count`).
    #[arg(long, default_value_t = 100_000)]
    snapshot_count: u64,
    /// error, warn, info, debug or trace.
    #[arg(long, default_value = "info")]
    log_level: String,
    /// text or json.
    #[arg(long, default_value = "text")]
    log_format: String,
}

/// A temporary data folder, removed once the members (and the runtime holding them) are gone.
pub struct Cleanup(Option<PathBuf>);

impl Cleanup {
    /// Removes the temporary folder, if there is one.
    pub fn remove(self) {
        if let Some(dir) = self.0 {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Client and peer port of member `i` (0-based).
fn ports(base: Option<u16>, i: u16) -> (u16, u16) {
    match base {
        Some(b) => (b + 2 * i, b + 2 * i + 1),
        None if i == 0 => (2379, 2380),
        None => ((i + 1) * 10_000 + 2379, (i + 1) * 10_000 + 2380),
    }
}

fn check(flags: &DevFlags) -> Result<(), String> {
    if flags.nodes == 0 || flags.nodes > 99 {
        return Err(format!("--nodes {}: expected 1 to 99", flags.nodes));
    }
    match flags.base_port {
        None if flags.nodes > 6 => Err("--nodes above 6 needs --base-port".into()),
        Some(b) if u32::from(b) + 2 * u32::from(flags.nodes) > 65_535 => Err(format!(
            "--base-port {b}: {} members need ports up to {}",
            flags.nodes,
            u32::from(b) + 2 * u32::from(flags.nodes)
        )),
        Some(0) => Err("--base-port 0: expected a port".into()),
        _ => Ok(()),
    }
}

/// Runs the cluster until SIGTERM or Ctrl-C; the caller removes the temporary data afterwards.
pub async fn run(flags: DevFlags) -> Result<Cleanup, String> {
    check(&flags)?;
    let shutdown = crate::shutdown_signal();
    let (root, cleanup) = match &flags.data_dir {
        Some(d) => (d.clone(), Cleanup(None)),
        None => {
            let d = std::env::temp_dir().join(format!("balsa-dev-{}", std::process::id()));
            (d.clone(), Cleanup(Some(d)))
        }
    };
    let names: Vec<String> = (1..=flags.nodes).map(|i| format!("infra{i}")).collect();
    let cluster = names
        .iter()
        .enumerate()
        .map(|(i, n)| format!("{n}=http://127.0.0.1:{}", ports(flags.base_port, i as u16).1))
        .collect::<Vec<_>>()
        .join(",");
    let mut members = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let (client, peer) = ports(flags.base_port, i as u16);
        let member_flags = ServerFlags {
            name: Some(name.clone()),
            data_dir: Some(root.join(name)),
            listen_client_urls: Some(format!("http://127.0.0.1:{client}")),
            listen_peer_urls: Some(format!("http://127.0.0.1:{peer}")),
            initial_cluster: Some(cluster.clone()),
            initial_cluster_token: Some("balsa-dev".into()),
            tick_ms: Some(flags.tick_ms),
            snapshot_count: Some(flags.snapshot_count),
            log_level: Some(flags.log_level.clone()),
            log_format: Some(flags.log_format.clone()),
            ..Default::default()
        };
        let config = member_flags.resolve_with(FileConfig::default()).map_err(|e| e.to_string())?;
        if i == 0 {
            crate::init_logging(&config.log_level, config.log_format);
        }
        members.push(Member::start(config).await.map_err(|e| format!("{name}: {e}"))?);
    }
    print_endpoints(&members, &root, cleanup.0.is_some());
    let failed = first_failure(&mut members);
    tokio::select! {
        e = failed => return Err(e),
        _ = shutdown => tracing::info!("shutting down on a signal"),
    }
    drop(members);
    Ok(cleanup)
}

/// Resolves with the first member's failure.
async fn first_failure(members: &mut [Member]) -> String {
    let mut waits: Vec<_> = members.iter_mut().map(|m| Box::pin(m.failed())).collect();
    std::future::poll_fn(|cx| {
        for w in waits.iter_mut() {
            if let Poll::Ready(e) = w.as_mut().poll(cx) {
                return Poll::Ready(e);
            }
        }
        Poll::Pending
    })
    .await
}

fn print_endpoints(members: &[Member], root: &std::path::Path, temporary: bool) {
    let endpoints = members.iter().map(|m| m.client_addr.to_string()).collect::<Vec<_>>().join(",");
    let mut out = std::io::stdout().lock();
    let removed = if temporary { " (removed on exit)" } else { "" };
    let _ = writeln!(out, "balsa dev: {} members, data in {}{removed}", members.len(), root.display());
    for m in members {
        let _ = writeln!(
            out,
            "  {:8} client http://{}  peer http://{}",
            m.config.name, m.client_addr, m.peer_addr
        );
    }
    let _ = writeln!(out, "endpoints: {endpoints}");
    let _ = writeln!(out, "try:");
    let _ = writeln!(out, "  ETCDCTL_API=3 etcdctl --endpoints={endpoints} put greeting hello");
    let _ = writeln!(out, "  ETCDCTL_API=3 etcdctl --endpoints={endpoints} get greeting");
    let _ = writeln!(out, "  ETCDCTL_API=3 etcdctl --endpoints={endpoints} endpoint status -w table");
    let _ = writeln!(out, "  curl -s http://{}/metrics | grep ^balsa_", members[0].client_addr);
    let _ = writeln!(out, "Ctrl-C or SIGTERM stops the cluster.");
    let _ = out.flush();
}
