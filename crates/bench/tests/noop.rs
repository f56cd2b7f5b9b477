//! The runner against the in-process no-op server: the open-loop schedule makes exactly the
//! operations due in the measured span, `--total` is exact, and an unreachable server is an error.

use std::time::Duration;

use balsa_bench::args::{BenchCommand, Cli};
use balsa_bench::workload::Workload;
use clap::Parser;

fn load(args: &[&str]) -> balsa_bench::args::LoadFlags {
    let cli = Cli::try_parse_from(["balsa-bench", "put"].into_iter().chain(args.iter().copied())).unwrap();
    let BenchCommand::Put(load) = cli.args.command else { unreachable!() };
    load
}

async fn noop() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(balsa_bench::noop::serve(listener));
    addr.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_makes_the_operations_due() {
    let endpoint = noop().await;
    let flags =
        ["--clients", "16", "--connections", "2", "--rate", "400", "--duration", "1s", "--warmup", "250ms"];
    let mut args = vec!["--endpoints", &endpoint];
    args.extend(flags);
    let flags = load(&args);
    let run = balsa_bench::run::run(Workload::Put, &flags, false);
    let result = tokio::time::timeout(Duration::from_secs(30), run).await.unwrap().unwrap();
    // Slots 100..500 are due within the measured second (the first 100 were the warmup's).
    assert_eq!(result.ops, 400, "{result:?}");
    assert_eq!(result.errors, 0);
    assert_eq!(result.rate, Some(400.0));
    assert!(result.elapsed_s >= 0.99 && result.elapsed_s < 5.0, "{}", result.elapsed_s);
    assert!((300.0..=410.0).contains(&result.throughput), "{}", result.throughput);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_loop_total_is_exact_and_cpu_is_reported() {
    let endpoint = noop().await;
    let pid = std::process::id().to_string();
    let args =
        ["--endpoints", &endpoint, "--clients", "7", "--total", "1001", "--warmup", "0s", "--pids", &pid];
    let result = balsa_bench::run::run(Workload::Txn, &load(&args), false).await.unwrap();
    assert_eq!((result.ops, result.errors), (1001, 0));
    assert_eq!(result.workload, "txn");
    assert!(result.server_cpu_s.is_some());
}

#[tokio::test]
async fn an_unreachable_server_is_an_error() {
    // Bind then drop: nothing listens on that port now.
    let addr = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap().to_string();
    let error = balsa_bench::run::run(Workload::Put, &load(&["--endpoints", &addr, "--total", "1"]), false)
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("cannot reach the server"), "{error}");
}

#[tokio::test]
async fn at_leader_needs_a_server_that_names_its_leader() {
    // The no-op server has no Maintenance service, so it cannot say who leads.
    let endpoint = noop().await;
    let args = ["--endpoints", &endpoint, "--total", "1", "--at-leader"];
    let error = balsa_bench::run::run(Workload::Put, &load(&args), false).await.unwrap_err().to_string();
    assert!(error.contains(&endpoint) && error.contains("status"), "{error}");
}

#[test]
fn at_leader_keeps_the_endpoints_of_members_that_name_themselves() {
    let s = |e: &str, member, leader| (e.to_string(), member, leader);
    let statuses = [s("a", 1, 2), s("b", 2, 2), s("c", 3, 2)];
    assert_eq!(balsa_bench::run::pick_leaders(&statuses).unwrap(), ["b"]);
    // No leader (an election under way), or members that report no id: refused, naming each.
    let error = balsa_bench::run::pick_leaders(&[s("a", 1, 0), s("b", 0, 0)]).unwrap_err().to_string();
    assert!(error.contains("no endpoint is the leader") && error.contains("a is 1, leader 0"), "{error}");
}
