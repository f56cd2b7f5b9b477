//! `etcdctl snapshot save` against a `balsa server` process, then `balsa snapshot status` and
//! `balsa snapshot restore` into a new data dir that a new process serves.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{balsa, free_port, Proc};

fn member_flags(dir: &std::path::Path, client: u16, peer: u16) -> Vec<String> {
    [
        "--name",
        "solo",
        "--data-dir",
        dir.to_str().unwrap(),
        "--tick-ms",
        "20",
        "--listen-client-urls",
        &format!("http://127.0.0.1:{client}"),
        "--listen-peer-urls",
        &format!("http://127.0.0.1:{peer}"),
    ]
    .map(String::from)
    .to_vec()
}

fn start(dir: &std::path::Path, client: u16, peer: u16) -> Proc {
    let child = balsa()
        .arg("server")
        .args(member_flags(dir, client, peer))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Proc(child)
}

/// etcdctl against the member serving clients on `client`.
fn etcdctl(client: u16, args: &[&str]) -> Option<String> {
    common::etcdctl(&format!("127.0.0.1:{client}"), args)
}

#[test]
fn etcdctl_snapshot_save_then_balsa_snapshot_restore() {
    if Command::new("etcdctl").arg("version").output().is_err() {
        eprintln!("NOTE: etcdctl is not installed; apt-get install etcd-client to run this test");
        return;
    }
    let base = std::env::temp_dir().join(format!("balsa-bin-snap-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).unwrap();
    let (client, peer) = (free_port(), free_port());
    let server = start(&base.join("a"), client, peer);
    let deadline = Instant::now() + Duration::from_secs(15);
    while etcdctl(client, &["put", "city", "Lisbon"]).as_deref().map(str::trim) != Some("OK") {
        assert!(Instant::now() < deadline, "the server never accepted a write");
        std::thread::sleep(Duration::from_millis(100));
    }
    let file = base.join("backup.db");
    let out = etcdctl(client, &["snapshot", "save", file.to_str().unwrap()]).expect("snapshot save");
    assert!(out.contains("Snapshot saved at"), "{out}");
    drop(server);

    let out = balsa().args(["snapshot", "status", file.to_str().unwrap()]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("sha256 ok") && text.contains("1 keys"), "{text}");

    // A damaged copy is refused with a clear error.
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[70] ^= 0x10;
    let bad = base.join("bad.db");
    std::fs::write(&bad, bytes).unwrap();
    let (client2, peer2) = (free_port(), free_port());
    let target = base.join("b");
    let out = balsa()
        .args(["snapshot", "restore", bad.to_str().unwrap()])
        .args(member_flags(&target, client2, peer2))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("sha256 mismatch"));

    let out = balsa()
        .args(["snapshot", "restore", file.to_str().unwrap()])
        .args(member_flags(&target, client2, peer2))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let _restored = start(&target, client2, peer2);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if etcdctl(client2, &["get", "city", "--print-value-only"]).as_deref().map(str::trim)
            == Some("Lisbon")
        {
            break;
        }
        assert!(Instant::now() < deadline, "the restored member does not serve the key");
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = std::fs::remove_dir_all(&base);
}
