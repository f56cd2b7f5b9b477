//! `balsa`: the command. `balsa server` runs a member (etcd's flag names; no flags: a single
//! member on 127.0.0.1:2379 with its data in ./default.balsa, as etcd does).

use std::process::ExitCode;
use std::sync::Arc;

use balsa_server::config::ServerFlags;
use balsa_server::kv_service::{self, KvService};
use balsa_server::NodeHandle;
use clap::{Parser, Subcommand};
use tokio::net::TcpListener;

#[derive(Parser)]
#[command(name = "balsa", version, about = "A Raft-replicated key-value store speaking etcd's v3 API")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a member.
    Server(ServerFlags),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_target(false)
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Server(flags) => runtime.block_on(server(flags)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn server(flags: ServerFlags) -> Result<(), String> {
    let config = flags.node_config().map_err(|e| e.to_string())?;
    let client_addr = balsa_server::config::parse_url("--listen-client-urls", &flags.listen_client_urls)
        .map_err(|e| e.to_string())?;
    let peer_addr = balsa_server::config::parse_url("--listen-peer-urls", &flags.listen_peer_urls)
        .map_err(|e| e.to_string())?;
    let peer_listener =
        TcpListener::bind(peer_addr).await.map_err(|e| format!("--listen-peer-urls {peer_addr}: {e}"))?;
    let client_listener = TcpListener::bind(client_addr)
        .await
        .map_err(|e| format!("--listen-client-urls {client_addr}: {e}"))?;
    let (id, cluster) = (config.id, config.cluster_id);
    let data_dir = config.data_dir.clone();
    let node = Arc::new(
        NodeHandle::start(config, peer_listener)
            .await
            .map_err(|e| format!("data dir {}: {e}", data_dir.display()))?,
    );
    eprintln!(
        "balsa member {} ({id}) serving clients on {client_addr}, peers on {peer_addr}, data in {}",
        flags.name,
        data_dir.display()
    );
    let serve = kv_service::serve(KvService::new(node.clone(), cluster, id), client_listener);
    tokio::select! {
        r = serve => r.map_err(|e| e.to_string())?,
        _ = shutdown_signal() => eprintln!("shutting down"),
    }
    Ok(())
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
