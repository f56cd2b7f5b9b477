//! `balsa bench`: the load generator of `balsa-bench` as a subcommand of `balsa`, against a
//! `balsa server` process — put and log-append report their operations; `--help` lists the
//! workloads; log-append against a server without log streams fails with a clear message.

mod common;

use std::process::{Output, Stdio};
use std::time::Duration;

use common::*;

/// `balsa bench ARGS`, bounded by the run's own `--total` (the server answers or refuses fast).
fn bench(args: &[&str]) -> Output {
    balsa().arg("bench").args(args).stdin(Stdio::null()).output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A single-member `balsa server` (20 ms ticks); its client endpoint once a put goes through.
fn start_single(dir: &TempDir) -> (Proc, String) {
    let (client, peer) = (free_port(), free_port());
    let server = spawn_single(&dir.join("data"), client, peer);
    let endpoint = format!("127.0.0.1:{client}");
    let ready = ["put", "--endpoints", &endpoint, "--total", "1", "--clients", "1", "--warmup", "0s"];
    eventually(Duration::from_secs(20), "the member takes a put", || {
        bench(&ready).status.success().then_some(())
    });
    (server, endpoint)
}

#[test]
fn help_lists_the_workloads() {
    let out = bench(&["--help"]);
    assert!(out.status.success());
    let help = text(&out.stdout);
    for workload in ["put", "get", "txn", "watch", "log-append", "memory", "noop", "chart", "table"] {
        assert!(help.lines().any(|l| l.trim_start().starts_with(workload)), "{workload} missing: {help}");
    }
    let put = text(&bench(&["put", "--help"]).stdout);
    assert!(put.contains("--sequential-keys") && put.contains("--endpoints"), "{put}");
}

#[test]
fn put_and_log_append_against_a_member() {
    let dir = TempDir::new("bench");
    let (_server, endpoint) = start_single(&dir);
    let flags = ["--endpoints", endpoint.as_str(), "--clients", "8", "--connections", "2", "--warmup", "0s"];

    let out = bench(&[&["put", "--total", "200", "--label", "balsa"][..], &flags].concat());
    let report = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(report.starts_with("put [balsa]: 8 clients, 2 connections"), "{report}");
    assert!(report.contains("ops         200 in") && report.contains(", 0 errors"), "{report}");
    assert!(report.contains("throughput") && report.contains("p99"), "{report}");

    let json = dir.join("log.json");
    let args = ["log-append", "--total", "100", "--streams", "2", "--json", json.to_str().unwrap()];
    let out = bench(&[&args[..], &flags].concat());
    let report = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        report.starts_with(
            "log-append: 8 clients, 2 connections, 1 client thread, 2 streams, records of 256 B"
        ),
        "{report}"
    );
    assert!(report.contains("ops         100 in") && report.contains(", 0 errors"), "{report}");
    let result: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!((result["workload"].as_str(), result["ops"].as_u64()), (Some("log-append"), Some(100)));
}

#[test]
fn log_append_against_a_plain_etcd_kv_server_fails_clearly() {
    // balsa bench noop serves etcd's KV and nothing else, as etcd serves no balsapb.Log.
    let port = free_port();
    let noop = balsa()
        .args(["bench", "noop", "--listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _noop = Proc(noop);
    let endpoint = format!("127.0.0.1:{port}");
    let put = ["put", "--endpoints", &endpoint, "--total", "1", "--warmup", "0s"];
    eventually(Duration::from_secs(10), "the no-op server answers", || {
        bench(&put).status.success().then_some(())
    });
    let out = bench(&["log-append", "--endpoints", &endpoint, "--total", "5"]);
    assert!(!out.status.success());
    let error = text(&out.stderr);
    assert!(error.contains("does not serve balsa's log streams (balsapb.Log)"), "{error}");
    assert!(!error.contains("panicked"), "{error}");
}
