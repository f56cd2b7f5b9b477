//! `balsa`: the command, a thin layer over the `balsa-server` library.
//!
//! - `balsa server` runs a member (etcd's flag names; no flags: a single member on
//!   127.0.0.1:2379 with its data in ./default.balsa, as etcd does).
//! - `balsa dev` runs a local cluster of several members in this one process.

mod dev;

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
