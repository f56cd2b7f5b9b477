//! `balsa`: the command, a thin layer over the `balsa-server` library.
//!
//! - `balsa server` runs a member (etcd's flag names; no flags: a single member on
//!   127.0.0.1:2379 with its data in ./default.balsa, as etcd does).
//! - `balsa dev` runs a local cluster of several members in this one process.
//! - `balsa snapshot status|restore FILE` checks a snapshot file saved through Maintenance.Snapshot
//!   (`etcdctl snapshot save`, `balsa snapshot save`), or founds a data dir from it.
//! - `balsa bench WORKLOAD` is the load generator of `balsa-bench` (crates/bench), the same code
//!   and flags: put, get, txn, watch, log-append against any etcd v3 endpoint (log-append: balsa).
//! - The client commands (`put`, `get`, `del`, `txn`, `watch`, `lease`, `member`, `cluster status`,
//!   `snapshot save`) talk to a cluster through balsa-client; see `client_cmd.rs`.

mod client_cmd;
mod dev;
mod txn_syntax;

/// jemalloc instead of glibc's malloc. A member allocates and frees small blocks on every request
/// (gRPC's frames, headers and futures, the log's entries); glibc's bins and consolidation were
/// about a seventh of the members' CPU at 256-client puts, and jemalloc took 4% off the CPU per
/// put at a fixed rate (docs/BENCHMARKS.md, "sixth pass"). Its tuning, which keeps the resident
/// size at 1M keys where glibc's was, is in `.cargo/config.toml`.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::io::IsTerminal;
use std::process::ExitCode;

use balsa_server::config::{LogFormat, ServerFlags};
use balsa_server::member::Member;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "balsa", version, about = "A Raft-replicated key-value store speaking etcd's v3 API")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a member.
    Server(Box<ServerFlags>),
    /// Run a local cluster for development (all members in this process, on 127.0.0.1).
    Dev(dev::DevFlags),
    /// Save, check or restore a snapshot file.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Load generator over etcd's v3 API (balsa and etcd alike): the workloads and tools of
    /// `balsa-bench`, with the same flags (docs/BENCHMARKS.md).
    Bench(balsa_bench::args::BenchArgs),
    #[command(flatten)]
    Client(client_cmd::ClientCommand),
}

#[derive(Subcommand)]
enum SnapshotCommand {
    /// Stream a snapshot of a member's state to FILE (balsa's format; see `status`/`restore`).
    Save {
        /// The file to write.
        file: std::path::PathBuf,
        #[command(flatten)]
        client: client_cmd::ClientFlags,
    },
    /// Verify a snapshot file's sha256 and print what it holds.
    Status {
        /// The file.
        file: std::path::PathBuf,
    },
    /// Write a new data dir holding the snapshot, for the member the flags describe (the same
    /// flags `balsa server` then starts it with). Every member of the new cluster is restored
    /// from the same file with the same --initial-cluster and --initial-cluster-token.
    Restore {
        /// The file.
        file: std::path::PathBuf,
        #[command(flatten)]
        flags: Box<ServerFlags>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Server(flags) => runtime.block_on(server(*flags)),
        Command::Snapshot(command) => snapshot(command, &runtime),
        Command::Client(command) => runtime.block_on(client_cmd::run(command)),
        Command::Bench(args) => {
            // A workload runs on the runtime its flags ask for (one thread by default).
            drop(runtime);
            match balsa_bench::runtime(&args) {
                Ok(runtime) => runtime.block_on(balsa_bench::execute(args)).map_err(|e| e.to_string()),
                Err(e) => Err(format!("cannot start the runtime: {e}")),
            }
        }
        Command::Dev(flags) => {
            let result = runtime.block_on(dev::run(flags));
            // The members' nodes stop when the runtime drops the tasks holding them; only then
            // may their temporary data go.
            drop(runtime);
            result.map(dev::Cleanup::remove)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // A JSON log must stay one object per line, so there the error is an event;
            // otherwise (text logs, or none yet) a plain line reads best.
            if JSON_LOGS.get() == Some(&true) {
                tracing::error!(error = %e, "balsa stopped");
            } else {
                eprintln!("error: {e}");
            }
            ExitCode::FAILURE
        }
    }
}

/// Set once logging is set up: whether it writes JSON.
static JSON_LOGS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

/// Logs go to stderr (etcd's default), as text or JSON, filtered by `--log-level`.
pub(crate) fn init_logging(level: &str, format: LogFormat) {
    let _ = JSON_LOGS.set(format == LogFormat::Json);
    let filter = tracing_subscriber::EnvFilter::new(level);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    // A second initialisation (cannot happen in the binary) is ignored rather than fatal.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

fn snapshot(command: SnapshotCommand, runtime: &tokio::runtime::Runtime) -> Result<(), String> {
    use balsa_server::snapshot_file;
    match command {
        SnapshotCommand::Save { file, client } => runtime.block_on(client_cmd::snapshot_save(&file, client)),
        SnapshotCommand::Status { file } => {
            let image = snapshot_file::read(&file)?;
            let sm = balsa_kv_summary(&image.data)?;
            println!(
                "{}: sha256 ok; balsa snapshot at log index {}, term {}, revision {}; {} bytes of state, {sm}",
                file.display(),
                image.index,
                image.term,
                image.revision,
                image.data.len()
            );
            Ok(())
        }
        SnapshotCommand::Restore { file, flags } => {
            let config = flags.resolve().map_err(|e| e.to_string())?;
            let r = snapshot_file::restore(&file, &config)?;
            println!(
                "restored {} into {} (member {:x} of cluster {:x}, revision {}, log index {}); start it with \
                 `balsa server` and the same flags",
                file.display(),
                r.data_dir.display(),
                r.member_id,
                r.cluster_id,
                r.revision,
                r.index
            );
            Ok(())
        }
    }
}

/// Keys and leases in an encoded state machine.
fn balsa_kv_summary(data: &[u8]) -> Result<String, String> {
    let sm = balsa_server::snapshot_file::decode_state(data)?;
    Ok(format!("{} keys, {} leases", sm.0, sm.1))
}

async fn server(flags: ServerFlags) -> Result<(), String> {
    let config = flags.resolve().map_err(|e| e.to_string())?;
    init_logging(&config.log_level, config.log_format);
    let shutdown = shutdown_signal();
    let mut member = Member::start(config).await.map_err(|e| e.to_string())?;
    tokio::select! {
        e = member.failed() => return Err(e),
        _ = shutdown => tracing::info!("shutting down on a signal"),
    }
    Ok(())
}

/// SIGTERM or Ctrl-C. The SIGTERM handler is installed at the call, not at the first poll, so a
/// signal that arrives while the member is still starting is not fatal. Stopping needs no flush:
/// nothing acknowledged was ever waiting for one.
pub(crate) fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    async move {
        match term {
            Some(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            None => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
}
