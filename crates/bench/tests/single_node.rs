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

    // The one member leads, so `--at-leader` keeps its endpoint (given twice here, kept twice).
    let args = with(&["put", "--total", "50", "--warmup", "0s", "--at-leader"]);
    let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
    let at = args.iter().position(|a| *a == "--endpoints").unwrap() + 1;
    let twice = format!("{endpoint},{endpoint}");
    args[at] = &twice;
    let at_leader = run(&args, &dir.0.join("at-leader.json")).await;
    assert_eq!((at_leader.ops, at_leader.errors), (50, 0));
    assert_eq!(at_leader.endpoints, [endpoint.clone(), endpoint.clone()]);

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_append_against_one_member() {
    let dir = common::Dir::new("bench-log-append");
    let (_node, addr) = common::single_node(&dir).await;
    std::fs::create_dir_all(&dir.0).unwrap();
    let endpoint = addr.to_string();
    let flags = ["--endpoints", &endpoint, "--clients", "6", "--connections", "2", "--warmup", "0s"];
    let mut args = vec!["log-append", "--stream", "events", "--streams", "3", "--value-size", "100"];
    args.extend(["--total", "300"]);
    args.extend(flags);
    let result = run(&args, &dir.0.join("log.json")).await;
    assert_eq!((result.workload.as_str(), result.ops, result.errors), ("log-append", 300, 0), "{result:?}");
    assert!(result.latency.p50_us > 0.0);
    assert_eq!(result.extra["streams"], 3);

    // What the streams hold: the run's 300 appends of 100 bytes, spread over the three streams by
    // client (6 clients over 3 streams). Read back through the same Log service.
    let mut log = balsa_server::pb::balsapb::log_client::LogClient::connect(format!("http://{endpoint}"))
        .await
        .unwrap();
    let mut records = 0;
    for name in ["events-0", "events-1", "events-2"] {
        let request =
            balsa_server::pb::balsapb::StreamInfoRequest { stream: name.into(), serializable: false };
        let info = log.get_stream_info(request).await.unwrap().into_inner();
        assert_eq!(info.bytes, info.records * 100, "{info:?}");
        assert_eq!(info.retention_bytes, balsa_bench::args::DEFAULT_RETENTION_BYTES);
        assert!(info.records > 0, "every stream got appends: {info:?}");
        records += info.records;
    }
    assert_eq!(records, 300);

    // A second run appends to the existing streams (their creation answers "exists" or succeeds).
    let args =
        ["log-append", "--stream", "events", "--streams", "3", "--total", "30", "--retention-bytes", "5"];
    let args: Vec<&str> = args.into_iter().chain(flags).collect();
    let again = run(&args, &dir.0.join("log2.json")).await;
    assert_eq!((again.ops, again.errors), (30, 0));
}

#[tokio::test]
async fn log_append_against_a_server_without_log_streams_says_so() {
    // The no-op server serves etcd's KV only, as etcd serves no balsapb.Log.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = listener.local_addr().unwrap().to_string();
    tokio::spawn(balsa_bench::noop::serve(listener));
    let args = balsa_bench::args::BenchArgs {
        command: command(&["log-append", "--endpoints", &endpoint, "--total", "10"]),
    };
    let error = balsa_bench::execute(args).await.unwrap_err().to_string();
    assert!(error.contains("does not serve balsa's log streams (balsapb.Log)"), "{error}");
    assert!(error.contains("against balsa only"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_keys_write_every_key_once() {
    let dir = common::Dir::new("bench-sequential");
    let (_node, addr) = common::single_node(&dir).await;
    std::fs::create_dir_all(&dir.0).unwrap();
    let endpoint = addr.to_string();
    let args = ["put", "--endpoints", &endpoint, "--clients", "8", "--warmup", "0s", "--sequential-keys"];
    let args: Vec<&str> = args.into_iter().chain(["--key-space", "500", "--total", "500"]).collect();
    let result = run(&args, &dir.0.join("put.json")).await;
    assert_eq!((result.ops, result.errors), (500, 0));
    // Every key exists once at version 1: none was written twice, none skipped.
    let mut kv = balsa_server::pb::etcdserverpb::kv_client::KvClient::connect(format!("http://{endpoint}"))
        .await
        .unwrap();
    let range = balsa_server::pb::etcdserverpb::RangeRequest {
        key: b"bench/".to_vec(),
        range_end: b"bench0".to_vec(),
        ..Default::default()
    };
    let kvs = kv.range(range).await.unwrap().into_inner().kvs;
    assert_eq!(kvs.len(), 500);
    assert!(kvs.iter().all(|kv| kv.version == 1), "each key written exactly once");
}

#[tokio::test]
async fn memory_reads_this_process() {
    let dir = common::Dir::new("bench-memory");
    std::fs::create_dir_all(&dir.0).unwrap();
    let json = dir.0.join("memory.json");
    let pid = std::process::id().to_string();
    let args = ["memory", "--pids", &pid, "--keys", "5", "--label", "me", "--json", json.to_str().unwrap()];
    balsa_bench::execute(balsa_bench::args::BenchArgs { command: command(&args) }).await.unwrap();
    let result = RunResult::load(&json).unwrap();
    let (max, mean) = balsa_bench::memory::rss_of(&result).unwrap();
    assert!(max > 1.0 && (max - mean).abs() < 1e-9, "one process: max = mean = {max} MiB");
    assert_eq!((result.label.as_str(), result.key_space), ("me", 5));
    let error = balsa_bench::execute(balsa_bench::args::BenchArgs {
        command: command(&["memory", "--pids", &u32::MAX.to_string()]),
    })
    .await
    .unwrap_err();
    assert!(error.to_string().contains("is process"), "{error}");
}

/// The load's calls against a real member: an answer decodes to what was written, an error comes
/// back as the member's status (a trailers-only answer), and a method the member does not serve
/// is Unimplemented.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_calls_carry_answers_and_errors() {
    use balsa_bench::grpc::UnaryChannel;
    use balsa_bench::workload::{KV_PUT, KV_RANGE};
    use balsa_server::pb::etcdserverpb::{PutRequest, PutResponse, RangeRequest, RangeResponse};

    let dir = common::Dir::new("bench-unary");
    let (_node, addr) = common::single_node(&dir).await;
    let mut channel = UnaryChannel::connect(&format!("http://{addr}")).await.unwrap();
    let put = PutRequest { key: b"k".to_vec(), value: b"v1".to_vec(), ..Default::default() };
    let written: PutResponse = channel.call(KV_PUT, &put).await.unwrap();
    let revision = written.header.unwrap().revision;
    assert!(revision > 1, "a put makes a revision");
    let read: RangeResponse =
        channel.call(KV_RANGE, &RangeRequest { key: b"k".to_vec(), ..Default::default() }).await.unwrap();
    assert_eq!(read.kvs.len(), 1);
    assert_eq!((read.kvs[0].value.as_slice(), read.kvs[0].mod_revision), (&b"v1"[..], revision));

    let leased = PutRequest { lease: 0x1234, ..put };
    let refused = channel.call::<_, PutResponse>(KV_PUT, &leased).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::NotFound, "{refused:?}");
    assert!(refused.message().contains("lease"), "{refused:?}");
    let unknown = channel.call::<_, PutResponse>("/etcdserverpb.KV/NoSuchCall", &leased).await.unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::Unimplemented, "{unknown:?}");
}
