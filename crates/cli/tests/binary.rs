//! `balsa server` as a user runs it: clear errors for bad configuration, etcdctl against a real
//! process, a clean stop on SIGTERM, and data that survives a restart.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{balsa, free_port, Proc};

/// `balsa ARGS` fails with a message containing `expected`.
fn refused(args: &[&str], expected: &str) {
    common::fails_with(balsa().args(args), expected);
}

/// etcdctl against the member serving clients on `client`.
fn etcdctl(client: u16, args: &[&str]) -> Option<String> {
    common::etcdctl(&format!("127.0.0.1:{client}"), args)
}

#[test]
fn bad_configuration_gives_clear_errors() {
    refused(&["server", "--listen-client-urls", "localhost:2379"], "is not an http://host:port URL");
    refused(
        &["server", "--name", "a", "--initial-cluster", "b=http://127.0.0.1:1"],
        "--name \"a\" is not in --initial-cluster",
    );
    refused(&["server", "--initial-cluster", "nonsense"], "is not name=url");
    refused(&["server", "--initial-cluster-state", "sideways"], "expected \"new\" or \"existing\"");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = std::env::temp_dir().join(format!("balsa-bin-taken-{}", std::process::id()));
    refused(
        &[
            "server",
            "--data-dir",
            dir.to_str().unwrap(),
            "--listen-client-urls",
            &format!("http://127.0.0.1:{port}"),
            "--listen-peer-urls",
            &format!("http://127.0.0.1:{}", free_port()),
        ],
        &format!("--listen-client-urls 127.0.0.1:{port}"),
    );
    let _ = std::fs::remove_dir_all(dir);
}

fn start(dir: &std::path::Path, client: u16, peer: u16) -> Proc {
    common::spawn_single(dir, client, peer)
}

#[test]
fn a_server_process_serves_etcdctl_stops_on_sigterm_and_keeps_its_data() {
    if Command::new("etcdctl").arg("version").output().is_err() {
        eprintln!("NOTE: etcdctl is not installed; apt-get install etcd-client to run this test");
        return;
    }
    let dir = std::env::temp_dir().join(format!("balsa-bin-{}", std::process::id()));
    let (client, peer) = (free_port(), free_port());
    let mut server = start(&dir, client, peer);
    let deadline = Instant::now() + Duration::from_secs(15);
    while etcdctl(client, &["put", "city", "Lisbon"]).as_deref().map(str::trim) != Some("OK") {
        assert!(Instant::now() < deadline, "the server never accepted a write");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(etcdctl(client, &["get", "city", "--print-value-only"]).unwrap().trim(), "Lisbon");
    // SIGTERM: a clean, prompt exit.
    Command::new("kill").args(["-TERM", &server.0.id().to_string()]).status().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = server.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "no exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "graceful shutdown exits 0: {status:?}");
    drop(server);
    // Restart on the same data: the write is still there.
    let _server = start(&dir, client, peer);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(v) = etcdctl(client, &["get", "city", "--print-value-only"]) {
            if v.trim() == "Lisbon" {
                break;
            }
        }
        assert!(Instant::now() < deadline, "the write did not survive the restart");
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_three_member_cluster_of_processes_takes_writes_through_any_member() {
    if Command::new("etcdctl").arg("version").output().is_err() {
        eprintln!("NOTE: etcdctl is not installed; apt-get install etcd-client to run this test");
        return;
    }
    let base = std::env::temp_dir().join(format!("balsa-bin3-{}", std::process::id()));
    let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
    let cluster = ports
        .iter()
        .enumerate()
        .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
        .collect::<Vec<_>>()
        .join(",");
    let servers: Vec<Proc> = ports
        .iter()
        .enumerate()
        .map(|(i, (client, peer))| {
            let child = balsa()
                .args(["server", "--name", &format!("m{i}"), "--tick-ms", "20"])
                .args(["--data-dir", base.join(format!("m{i}")).to_str().unwrap()])
                .args(["--listen-client-urls", &format!("http://127.0.0.1:{client}")])
                .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
                .args(["--initial-cluster", &cluster])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            Proc(child)
        })
        .collect();
    // Every member takes a write (followers forward to the leader) ...
    for (i, (client, _)) in ports.iter().enumerate() {
        let key = format!("from-m{i}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while etcdctl(*client, &["put", &key, "ok"]).as_deref().map(str::trim) != Some("OK") {
            assert!(Instant::now() < deadline, "member m{i} never took a write");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    // ... and every member reads all of them, linearizably.
    for (client, _) in &ports {
        let keys = etcdctl(*client, &["get", "--prefix", "from-", "--keys-only"]).unwrap();
        let keys: Vec<&str> = keys.split_whitespace().collect();
        assert_eq!(keys, ["from-m0", "from-m1", "from-m2"]);
    }
    drop(servers);
    let _ = std::fs::remove_dir_all(base);
}
