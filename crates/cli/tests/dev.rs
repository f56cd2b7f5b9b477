//! `balsa dev`: a local three-member cluster in one process serves etcdctl and stops on SIGTERM.

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use common::*;

/// A base port with the next five ports free too (a moment ago).
fn free_range(len: u16) -> u16 {
    for _ in 0..50 {
        let base = free_port();
        if base.checked_add(len).is_none() {
            continue;
        }
        let all: Vec<_> =
            (0..len).filter_map(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).ok()).collect();
        if all.len() == usize::from(len) {
            return base;
        }
    }
    panic!("no range of {len} free ports found");
}

#[test]
fn balsa_dev_serves_a_three_member_cluster_and_stops_on_sigterm() {
    if !has_etcdctl() {
        return;
    }
    // The ports were free a moment ago; another process may take one before `balsa dev` binds
    // it. Such a start fails with "Address already in use": try another range then.
    let (base, mut proc, mut lines, first) = (0..5)
        .find_map(|_| {
            let base = free_range(6);
            let errors =
                std::env::temp_dir().join(format!("balsa-dev-test-{}-{base}.err", std::process::id()));
            let child = balsa()
                .args(["dev", "--base-port", &base.to_string(), "--tick-ms", "20"])
                .stdout(Stdio::piped())
                .stderr(std::fs::File::create(&errors).unwrap())
                .spawn()
                .unwrap();
            let mut proc = Proc(child);
            // The banner names the endpoints and the temporary data folder; read it line by line
            // (the process keeps stdout open, so reading stops at the "endpoints:" line).
            let mut lines = BufReader::new(proc.0.stdout.take().unwrap()).lines();
            let first = lines.next().and_then(Result::ok);
            let stderr = std::fs::read_to_string(&errors).unwrap_or_default();
            let _ = std::fs::remove_file(&errors);
            match first {
                Some(first) => Some((base, proc, lines, first)),
                None if stderr.contains("Address already in use") => None,
                None => panic!("balsa dev did not start: {stderr}"),
            }
        })
        .expect("five port ranges taken under our feet");
    let data = first.split(" data in ").nth(1).unwrap().trim_end_matches(" (removed on exit)").to_string();
    let endpoints = loop {
        let line = lines.next().expect("the banner ends with endpoints").unwrap();
        if let Some(e) = line.strip_prefix("endpoints: ") {
            break e.to_string();
        }
    };
    assert_eq!(endpoints.split(',').count(), 3);
    assert!(endpoints.contains(&format!("127.0.0.1:{base}")));
    eventually(Duration::from_secs(15), "a write", || {
        etcdctl(&endpoints, &["put", "greeting", "hello"]).filter(|o| o.trim() == "OK")
    });
    // Every member reads it.
    for ep in endpoints.split(',') {
        assert_eq!(etcdctl(ep, &["get", "greeting", "--print-value-only"]).unwrap().trim(), "hello");
    }
    let status = etcdctl(&endpoints, &["endpoint", "status", "-w", "json"]).unwrap();
    assert_eq!(status.matches("\"leader\":").count(), 3, "{status}");
    assert!(proc.terminate(), "balsa dev exits 0 on SIGTERM");
    assert!(!std::path::Path::new(&data).exists(), "the temporary data folder {data} is removed");
}

#[test]
fn balsa_dev_refuses_impossible_layouts() {
    fails_with(balsa().args(["dev", "--nodes", "0"]), "--nodes 0: expected 1 to 99");
    fails_with(balsa().args(["dev", "--nodes", "7"]), "--nodes above 6 needs --base-port");
    fails_with(balsa().args(["dev", "--base-port", "65530"]), "--base-port 65530");
}
