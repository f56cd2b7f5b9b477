//! # balsa-bench
//!
//! A load generator over etcd's v3 gRPC API, so that one client drives balsa and etcd alike
//! (`docs/BENCHMARKS.md`, "balsa vs etcd"). Workloads: put, linearizable and serializable get,
//! compare-and-swap transactions, watch fan-out, and appends to balsa's log streams (balsa only)
//! ([`workload`]). Closed loop (`--clients` requests in flight) or open loop (`--rate`, latency
//! from each operation's intended send time); HDR-histogram percentiles; JSON results; an SVG
//! chart of latency against throughput; server CPU per operation from `/proc`; servers' resident
//! memory ([`memory`]); and a no-op server ([`noop`]), the ceiling of any server under this client
//! on this machine.
//!
//! The library holds everything; the `balsa-bench` binary only parses [`args::Cli`] and calls
//! [`execute`], and `balsa bench` embeds [`args::BenchArgs`] and calls the same [`execute`].

#![warn(missing_docs)]

pub mod args;
pub mod chart;
pub mod cpu;
pub mod grpc;
pub mod memory;
pub mod noop;
pub mod report;
pub mod run;
pub mod stats;
pub mod targets;
pub mod watch;
pub mod workload;

use args::{BenchArgs, BenchCommand, LoadFlags};
use report::RunResult;
use workload::{LogStreams, Workload};

/// Why a run did not happen or did not finish.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// Bad arguments or files.
    #[error("{0}")]
    Usage(String),
    /// The server could not be reached or stopped answering in a way the run cannot go on from.
    #[error("cannot reach the server: {0}")]
    Connect(String),
    /// Reading /proc or binding a socket failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// The runtime a command runs on: a workload's [`LoadFlags::threads`] (one thread: a
/// single-threaded runtime), the no-op server's `--threads` likewise, tokio's multi-threaded
/// default for the rest (the no-op server among them when not told, as it may use every core a
/// server could).
pub fn runtime(args: &BenchArgs) -> std::io::Result<tokio::runtime::Runtime> {
    let threads = match &args.command {
        BenchCommand::Put(load)
        | BenchCommand::Txn(load)
        | BenchCommand::Get { load, .. }
        | BenchCommand::Watch { load, .. }
        | BenchCommand::LogAppend { load, .. } => Some(load.threads),
        BenchCommand::Noop { threads, .. } => *threads,
        _ => None,
    };
    match threads {
        Some(1) => tokio::runtime::Builder::new_current_thread().enable_all().build(),
        Some(n) => {
            tokio::runtime::Builder::new_multi_thread().worker_threads(n as usize).enable_all().build()
        }
        None => tokio::runtime::Runtime::new(),
    }
}

/// Runs one command of `balsa-bench` (printing its report to stdout).
pub async fn execute(args: BenchArgs) -> Result<(), BenchError> {
    match args.command {
        BenchCommand::Put(load) => workload(Workload::Put, &load, false).await,
        BenchCommand::Get { serializable, no_preload, load } => {
            workload(Workload::Get { serializable }, &load, !no_preload).await
        }
        BenchCommand::Txn(load) => workload(Workload::Txn, &load, false).await,
        BenchCommand::Watch { watchers, load } => workload(Workload::Watch { watchers }, &load, false).await,
        BenchCommand::LogAppend { stream, streams, retention_bytes, load } => {
            let streams = LogStreams::new(stream.as_deref(), &load.prefix, streams, retention_bytes)?;
            workload(Workload::LogAppend(streams), &load, false).await
        }
        BenchCommand::Memory { pids, keys, label, json } => {
            let members =
                pids.iter().map(|&pid| memory::process_memory(pid)).collect::<Result<Vec<_>, _>>()?;
            let result = memory::result(&label, keys, &members);
            print!("{}", memory::text(&result));
            if let Some(path) = &json {
                result.save(path)?;
            }
            Ok(())
        }
        BenchCommand::Noop { listen, .. } => {
            let listener = tokio::net::TcpListener::bind(listen).await?;
            println!("no-op KV server on {}", listener.local_addr()?);
            tokio::select! {
                () = noop::serve(listener) => Ok(()),
                _ = tokio::signal::ctrl_c() => Ok(()),
            }
        }
        BenchCommand::Chart { chart, results } => {
            let results = results.iter().map(|p| RunResult::load(p)).collect::<Result<Vec<_>, _>>()?;
            chart::draw(&results, &chart)?;
            println!("chart of {} results written to {}", results.len(), chart.display());
            Ok(())
        }
        BenchCommand::Table { baseline, candidate, results } => {
            let results = results.iter().map(|p| RunResult::load(p)).collect::<Result<Vec<_>, _>>()?;
            print!("{}", report::table(&results, &baseline, &candidate));
            Ok(())
        }
        BenchCommand::Targets { baseline, candidate, rounds } => {
            let rounds = rounds.iter().map(|d| targets::Round::load(d)).collect::<Result<Vec<_>, _>>()?;
            print!("{}", targets::report(&rounds, &baseline, &candidate));
            Ok(())
        }
    }
}

/// Runs a workload, prints its report, and writes `--json` and `--chart` if asked.
async fn workload(workload: Workload, load: &LoadFlags, preload: bool) -> Result<(), BenchError> {
    let result = run::run(workload, load, preload).await?;
    print!("{}", result.text());
    if let Some(path) = &load.json {
        result.save(path)?;
    }
    if let Some(path) = &load.chart {
        let mut all = load.compare.iter().map(|p| RunResult::load(p)).collect::<Result<Vec<_>, _>>()?;
        all.push(result);
        chart::draw(&all, path)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use tokio::runtime::RuntimeFlavor;

    fn flavor(args: &[&str]) -> RuntimeFlavor {
        let cli =
            args::Cli::try_parse_from(std::iter::once("balsa-bench").chain(args.iter().copied())).unwrap();
        runtime(&cli.args).unwrap().handle().runtime_flavor()
    }

    #[test]
    fn a_workload_runs_on_the_threads_its_flags_ask_for_and_the_noop_server_on_every_core() {
        assert_eq!(flavor(&["put"]), RuntimeFlavor::CurrentThread);
        assert_eq!(flavor(&["get", "--threads", "1"]), RuntimeFlavor::CurrentThread);
        assert_eq!(flavor(&["txn", "--threads", "2"]), RuntimeFlavor::MultiThread);
        assert_eq!(flavor(&["noop"]), RuntimeFlavor::MultiThread);
        assert_eq!(flavor(&["noop", "--threads", "1"]), RuntimeFlavor::CurrentThread);
        assert_eq!(flavor(&["noop", "--threads", "2"]), RuntimeFlavor::MultiThread);
    }
}
