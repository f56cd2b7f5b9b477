//! The client commands of `balsa` against `balsa server` processes: put/get/del with their
//! options, txn in both branches, leases, snapshot save, JSON output, clear errors with a
//! non-zero exit; on three members: `cluster status`, `member list/add/remove`, and `watch`.

mod common;

use std::io::Read;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Runs `balsa ARGS --endpoints E` (at most 30 s); returns (success, stdout, stderr).
fn run(endpoints: &str, args: &[&str]) -> (bool, String, String) {
    let child = balsa()
        .args(args)
        .args(["--endpoints", endpoints, "--timeout", "10"])
        .env_remove("BALSA_ENDPOINTS")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    finish(Proc(child), Duration::from_secs(30), args)
}

fn finish(mut p: Proc, limit: Duration, what: &[&str]) -> (bool, String, String) {
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = p.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "balsa {what:?} did not finish in {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    };
    let (mut out, mut err) = (String::new(), String::new());
    p.0.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    p.0.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    (status.success(), out, err)
}

fn ok(endpoints: &str, args: &[&str]) -> String {
    let (success, out, err) = run(endpoints, args);
    assert!(success, "balsa {args:?} failed: {err}");
    out
}

fn start_single(dir: &TempDir) -> (Proc, String) {
    let (client, peer) = (free_port(), free_port());
    let server = spawn_single(&dir.join("data"), client, peer);
    let endpoint = format!("127.0.0.1:{client}");
    wait_for_leader(&endpoint, 1);
    (server, endpoint)
}

/// Polls `balsa cluster status -w json` until it shows a leader and `n` answering members.
fn wait_for_leader(endpoints: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (success, out, _) = run(endpoints, &["cluster", "status", "-w", "json"]);
        if success {
            let v: serde_json::Value = serde_json::from_str(&out).unwrap();
            let members = v["members"].as_array().unwrap();
            let answering = members.iter().filter(|m| m["error"].is_null()).count();
            if answering == n && members.iter().any(|m| m["role"] == "leader") {
                return;
            }
        }
        assert!(Instant::now() < deadline, "no leader among {endpoints} within 20 s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn key_value_txn_lease_and_snapshot_commands() {
    let dir = TempDir::new("client-cli");
    let (_server, e) = start_single(&dir);
    let e = e.as_str();

    assert_eq!(ok(e, &["put", "app/a", "1"]), "OK\n");
    assert_eq!(ok(e, &["put", "app/b", "two words"]), "OK\n");
    assert_eq!(ok(e, &["put", "app/a", "3", "--prev-kv"]), "OK\napp/a\n1\n");
    assert_eq!(ok(e, &["get", "app/a"]), "app/a\n3\n");
    assert_eq!(ok(e, &["get", "app/", "--prefix"]), "app/a\n3\napp/b\ntwo words\n");
    assert_eq!(
        ok(e, &["get", "app/", "--prefix", "--sort-by", "key", "--order", "descend", "--limit", "1"]),
        "app/b\ntwo words\n"
    );
    assert_eq!(ok(e, &["get", "app/", "--prefix", "--keys-only"]), "app/a\napp/b\n");
    assert_eq!(ok(e, &["get", "app/", "--prefix", "--count-only"]), "2\n");
    assert_eq!(ok(e, &["get", "app/a", "app/b"]), "app/a\n3\n", "a range [key, end)");
    assert_eq!(ok(e, &["get", "app/a", "--print-value-only", "--serializable"]), "3\n");
    let json: serde_json::Value = serde_json::from_str(&ok(e, &["get", "app/a", "-w", "json"])).unwrap();
    assert_eq!((json["count"].as_i64(), json["kvs"][0]["value"].as_str()), (Some(1), Some("3")));
    assert_eq!(json["kvs"][0]["version"], 2);
    let first = json["kvs"][0]["create_revision"].as_i64().unwrap().to_string();
    assert_eq!(ok(e, &["get", "app/a", "--rev", &first]), "app/a\n1\n");

    // txn: the then branch, then the else branch.
    let out = ok(
        e,
        &[
            "txn",
            "--if",
            "value(app/a) = 3",
            "--then",
            "put app/a 4",
            "--then",
            "get app/b",
            "--else",
            "get app/a",
        ],
    );
    assert_eq!(out, "SUCCESS\n\nOK\n\napp/b\ntwo words\n");
    let out = ok(
        e,
        &[
            "txn",
            "--if",
            "value(app/a) = 3",
            "--if",
            "version(app/b) > 0",
            "--then",
            "del app/a",
            "--else",
            "get app/a",
        ],
    );
    assert_eq!(out, "FAILURE\n\napp/a\n4\n");
    let (success, _, err) = run(e, &["txn", "--if", "size(app/a) = 3"]);
    assert!(!success && err.contains("the field is one of value, version, create, mod, lease"), "{err}");

    // Leases.
    let grant = ok(e, &["lease", "grant", "60"]);
    let id = grant.split_whitespace().nth(1).unwrap().to_string();
    assert_eq!(grant, format!("lease {id} granted with TTL(60s)\n"));
    ok(e, &["put", "svc/x", "up", "--lease", &id]);
    let ttl = ok(e, &["lease", "ttl", &id, "--keys"]);
    assert!(
        ttl.starts_with(&format!("lease {id} granted with TTL(60s), remaining("))
            && ttl.contains("attached keys([svc/x])"),
        "{ttl}"
    );
    assert_eq!(
        ok(e, &["lease", "keep-alive", &id, "--once"]),
        format!("lease {id} keepalived with TTL(60)\n")
    );
    assert!(ok(e, &["lease", "list"]).contains(&id));
    assert_eq!(ok(e, &["lease", "revoke", &id]), format!("lease {id} revoked\n"));
    assert_eq!(ok(e, &["get", "svc/x"]), "", "the key went with its lease");
    assert_eq!(ok(e, &["lease", "ttl", &id]), format!("lease {id} already expired\n"));

    // A keep-alive that runs until the lease is gone: revoked elsewhere, it says so and fails.
    let id = ok(e, &["lease", "grant", "3"]).split_whitespace().nth(1).unwrap().to_string();
    let keeper = balsa()
        .args(["lease", "keep-alive", &id, "--endpoints", e])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    ok(e, &["lease", "revoke", &id]);
    let (success, out, err) = finish(Proc(keeper), Duration::from_secs(15), &["lease", "keep-alive"]);
    assert!(out.starts_with(&format!("lease {id} keepalived with TTL(3)\n")), "{out}");
    assert!(!success && err.contains(&format!("error: lease {id} lost")), "{err}");

    // del, with prev-kv.
    assert_eq!(ok(e, &["del", "app/", "--prefix", "--prev-kv"]), "2\napp/a\n4\napp/b\ntwo words\n");
    assert_eq!(ok(e, &["get", "", "--from-key", "--count-only"]), "0\n");

    // Snapshot save, checked by `balsa snapshot status`.
    let file = dir.join("backup.db");
    let saved = ok(e, &["snapshot", "save", file.to_str().unwrap()]);
    assert!(saved.starts_with(&format!("Snapshot saved at {}", file.display())), "{saved}");
    let out = balsa().args(["snapshot", "status", file.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // Errors: a clear message, a non-zero exit.
    let (success, _, err) = run(e, &["get", "x", "--rev", "100000"]);
    assert!(!success && err.contains("error: required revision is a future revision"), "{err}");
    let (success, _, err) = run(e, &["lease", "revoke", "123abc"]);
    assert!(!success && err.contains("lease not found"), "{err}");
    let (success, _, err) = run(e, &["put", "", "v"]);
    assert!(!success && err.contains("key is not provided"), "{err}");
    let dead = format!("127.0.0.1:{}", free_port());
    let out = balsa().args(["get", "x", "--timeout", "1"]).env("BALSA_ENDPOINTS", &dead).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains(&format!("cannot reach {dead}")), "{err}");
}

#[test]
fn cluster_status_members_and_watch_on_three_members() {
    let dir = TempDir::new("client-cli-cluster");
    let mut cluster = Cluster::new(&dir.0, 3, 20);
    cluster.start_all();
    let endpoints: Vec<String> = (0..3).map(|i| format!("127.0.0.1:{}", cluster.ports[i].client)).collect();
    let all = endpoints.join(",");
    wait_for_leader(&all, 3);

    // Names are published shortly after start; wait for them in the member list.
    let deadline = Instant::now() + Duration::from_secs(20);
    while ok(&all, &["member", "list"]).matches(" started ").count() < 3 {
        assert!(Instant::now() < deadline, "members publish their names");
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = ok(&all, &["cluster", "status"]);
    let lines: Vec<&str> = status.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["NAME", "ID", "ENDPOINT", "ROLE", "TERM", "COMMIT", "APPLIED", "LAG"]
    );
    assert_eq!(lines.len(), 4, "{status}");
    assert_eq!(lines.iter().filter(|l| l.contains(" leader ")).count(), 1, "{status}");
    for (i, line) in lines[1..].iter().enumerate() {
        let cells: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(
            (cells[0], cells[2]),
            (format!("m{i}").as_str(), format!("http://{}", endpoints[i]).as_str())
        );
    }

    // A learner that never starts: added, listed, removed (ids in hex).
    let added = ok(&all, &["member", "add", "--peer-urls", "http://127.0.0.1:9", "--learner"]);
    let id = added.lines().next().unwrap().split_whitespace().nth(2).unwrap().to_string();
    assert!(added.contains("unstarted") && added.contains(&id), "{added}");
    let (success, _, err) = run(&all, &["member", "promote", &id]);
    assert!(!success && err.contains("failed precondition"), "{err}");
    let removed = ok(&all, &["member", "remove", &id]);
    assert!(
        removed.starts_with(&format!("removed member {id}")) && !removed.contains("unstarted"),
        "{removed}"
    );

    // watch through one member while another takes the writes.
    let watcher = balsa()
        .args(["watch", "w/", "--prefix", "--count", "3", "-w", "json", "--endpoints", &endpoints[2]])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let watcher: Child = watcher;
    std::thread::sleep(Duration::from_millis(500));
    for (k, v) in [("w/1", "a"), ("w/2", "b")] {
        ok(&endpoints[0], &["put", k, v]);
    }
    ok(&endpoints[1], &["del", "w/1"]);
    let (success, out, err) = finish(Proc(watcher), Duration::from_secs(20), &["watch"]);
    assert!(success, "{err}");
    let events: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let summary: Vec<(&str, &str)> =
        events.iter().map(|e| (e["type"].as_str().unwrap(), e["kv"]["key"].as_str().unwrap())).collect();
    assert_eq!(summary, [("PUT", "w/1"), ("PUT", "w/2"), ("DELETE", "w/1")]);
}

#[test]
fn log_stream_commands() {
    let dir = TempDir::new("client-cli-log");
    let (_server, e) = start_single(&dir);
    let e = e.as_str();

    assert_eq!(ok(e, &["log", "create", "orders"]), "stream orders created\n");
    assert_eq!(ok(e, &["log", "append", "orders", "o-1", "o-2"]), "appended offsets 0..=1\n");
    let json: serde_json::Value =
        serde_json::from_str(&ok(e, &["log", "append", "orders", "o-3", "-w", "json"])).unwrap();
    assert_eq!((json["first_offset"].as_u64(), json["last_offset"].as_u64()), (Some(2), Some(2)));
    assert_eq!(ok(e, &["log", "read", "orders"]), "0\to-1\n1\to-2\n2\to-3\n");
    assert_eq!(ok(e, &["log", "read", "orders", "--from", "1", "--max", "1"]), "1\to-2\n");
    let json: serde_json::Value =
        serde_json::from_str(&ok(e, &["log", "read", "orders", "-w", "json"])).unwrap();
    assert_eq!(json["records"][2]["data"], "o-3");
    assert_eq!(json["end_offset"], 3);
    // tail from the start, bounded by --count.
    assert_eq!(ok(e, &["log", "tail", "orders", "--from", "0", "--count", "2"]), "0\to-1\n1\to-2\n");
    let line = ok(e, &["log", "tail", "orders", "--from", "2", "--count", "1", "-w", "json"]);
    let json: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!((json["offset"].as_u64(), json["data"].as_str()), (Some(2), Some("o-3")));

    let list = ok(e, &["log", "list"]);
    assert!(list.starts_with("STREAM"), "{list}");
    assert!(list.lines().nth(1).unwrap().starts_with("orders"), "{list}");
    let info: serde_json::Value =
        serde_json::from_str(&ok(e, &["log", "info", "orders", "-w", "json"])).unwrap();
    assert_eq!((info["records"].as_u64(), info["end_offset"].as_u64()), (Some(3), Some(3)));
    assert!(ok(e, &["log", "info", "orders"]).contains("offsets: 0..3 (3 records"));

    assert_eq!(ok(e, &["log", "trim", "orders", "2"]), "stream orders now starts at offset 2\n");
    let (success, _, err) = run(e, &["log", "read", "orders", "--from", "0"]);
    assert!(!success);
    assert!(err.contains("first available offset is 2"), "{err}");
    assert_eq!(ok(e, &["log", "delete", "orders"]), "stream orders deleted\n");
    let (success, _, err) = run(e, &["log", "info", "orders"]);
    assert!(!success);
    assert!(err.contains("not found"), "{err}");
}
