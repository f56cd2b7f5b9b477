//! `balsa server` as a user runs it: clear errors for bad configuration, etcdctl against a real
//! process, a clean stop on SIGTERM, and data that survives a restart.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn balsa() -> Command {
    Command::new(env!("CARGO_BIN_EXE_balsa"))
}

fn fails_with(args: &[&str], expected: &str) {
    let out = balsa().args(args).output().unwrap();
    assert!(!out.status.success(), "{args:?} should fail");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(expected), "{args:?}: expected {expected:?} in {err:?}");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn bad_configuration_gives_clear_errors() {
    fails_with(&["server", "--listen-client-urls", "localhost:2379"], "is not an http://host:port URL");
    fails_with(
        &["server", "--name", "a", "--initial-cluster", "b=http://127.0.0.1:1"],
        "--name \"a\" is not in --initial-cluster",
    );
    fails_with(&["server", "--initial-cluster", "nonsense"], "is not name=url");
    fails_with(&["server", "--initial-cluster-state", "sideways"], "expected \"new\" or \"existing\"");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = std::env::temp_dir().join(format!("balsa-bin-taken-{}", std::process::id()));
    fails_with(
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

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(dir: &std::path::Path, client: u16, peer: u16) -> Server {
    let child = balsa()
        .args(["server", "--name", "solo", "--data-dir", dir.to_str().unwrap(), "--tick-ms", "20"])
        .args(["--listen-client-urls", &format!("http://127.0.0.1:{client}")])
        .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Server(child)
}

fn etcdctl(client: u16, args: &[&str]) -> Option<String> {
    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints=127.0.0.1:{client}"))
        .arg("--command-timeout=2s")
        .args(args)
        .output()
        .ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
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
    let servers: Vec<Server> = ports
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
            Server(child)
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
