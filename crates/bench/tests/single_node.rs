//! The load generator against an in-process single balsa member: every workload makes progress
//! without errors, and the JSON result it writes parses back.

#[path = "../../server/tests/common/mod.rs"]
mod common;

use std::time::Duration;

use balsa_bench::args::{BenchCommand, Cli};
use balsa_bench::report::RunResult;
use clap::Parser;

/// Parses a `balsa-bench` command line, as the binary would.
fn command(args: &[&str]) -> BenchCommand {
    Cli::try_parse_from(std::iter::once("balsa-bench").chain(args.iter().copied())).unwrap().args.command
}

/// Runs a command line through the library's entry point and reads back its `--json`.
async fn run(args: &[&str], json: &std::path::Path) -> RunResult {
    let mut all: Vec<&str> = args.to_vec();
    let json_arg = json.to_str().unwrap();
    all.extend(["--json", json_arg]);
    let args = balsa_bench::args::BenchArgs { command: command(&all) };
    tokio::time::timeout(Duration::from_secs(60), balsa_bench::execute(args))
        .await
        .expect("a bounded run finishes")
        .unwrap();
    RunResult::load(json).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_get_txn_watch_against_one_member() {
    let dir = common::Dir::new("bench-single");
    let (_node, addr) = common::single_node(&dir).await;
    std::fs::create_dir_all(&dir.0).unwrap();
    let endpoint = addr.to_string();
    let pid = std::process::id().to_string();
    let common_flags =
        ["--endpoints", &endpoint, "--clients", "8", "--connections", "2", "--key-space", "100"];
    let with = |extra: &[&'static str]| -> Vec<String> {
        extra.iter().map(|s| s.to_string()).chain(common_flags.iter().map(|s| s.to_string())).collect()
    };

    let put_json = dir.0.join("put.json");
    let args = with(&["put", "--duration", "2s", "--warmup", "200ms", "--label", "balsa", "--pids"]);
    let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
    args.insert(args.iter().position(|a| *a == "--pids").unwrap() + 1, &pid);
    let put = run(&args, &put_json).await;
    assert_eq!(put.workload, "put");
    assert_eq!(put.label, "balsa");
    assert!(put.ops > 0, "puts were made: {put:?}");
    assert_eq!(put.errors, 0, "{:?}", put.first_error);
    assert!(put.throughput > 0.0 && put.latency.p50_us > 0.0 && put.latency.max_us >= put.latency.p99_us);
    assert!(put.server_cpu_us_per_op.is_some(), "this process is the server here");
    let text = std::fs::read_to_string(&put_json).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(json["workload"], "put");
    assert!(json["latency"]["p99_us"].as_f64().unwrap() > 0.0);

    let args = with(&["get", "--duration", "2s", "--warmup", "200ms"]);
    let get = run(&args.iter().map(String::as_str).collect::<Vec<_>>(), &dir.0.join("get.json")).await;
    assert!(get.ops > 0 && get.errors == 0, "{get:?}");
    assert_eq!(get.workload, "get");

    let args = with(&["get", "--serializable", "--no-preload", "--total", "200", "--warmup", "0s"]);
    let sget = run(&args.iter().map(String::as_str).collect::<Vec<_>>(), &dir.0.join("sget.json")).await;
    assert_eq!(
        (sget.workload.as_str(), sget.ops, sget.errors),
        ("get-serializable", 200, 0),
        "--total is exact"
    );

    let args = with(&["txn", "--duration", "1s", "--warmup", "0s"]);
    let txn = run(&args.iter().map(String::as_str).collect::<Vec<_>>(), &dir.0.join("txn.json")).await;
    assert!(txn.ops > 0 && txn.errors == 0, "{txn:?}");
    assert!(txn.extra["txn_succeeded"].as_u64().unwrap() > 0, "some compare-and-swaps held");

    let args = with(&["watch", "--watchers", "3", "--duration", "1s", "--warmup", "100ms", "--rate", "200"]);
    let watch = run(&args.iter().map(String::as_str).collect::<Vec<_>>(), &dir.0.join("watch.json")).await;
    assert!(watch.ops > 0 && watch.errors == 0, "{watch:?}");
    assert_eq!(
        watch.extra["events_delivered"], watch.extra["events_expected"],
        "every put reached every watcher"
    );
    assert_eq!(watch.latency.count, watch.ops * 3);

    let svg = dir.0.join("chart.svg");
    let chart = balsa_bench::args::BenchArgs {
        command: command(&["chart", "--chart", svg.to_str().unwrap(), put_json.to_str().unwrap()]),
    };
    balsa_bench::execute(chart).await.unwrap();
    assert!(std::fs::read_to_string(&svg).unwrap().starts_with("<svg"));
}

#[tokio::test]
async fn log_append_says_it_is_not_available_yet() {
    let args =
        balsa_bench::args::BenchArgs { command: command(&["log-append", "--endpoints", "127.0.0.1:9"]) };
    let error = balsa_bench::execute(args).await.unwrap_err().to_string();
    assert!(error.contains("log-stream service is not in this build"), "{error}");
}
