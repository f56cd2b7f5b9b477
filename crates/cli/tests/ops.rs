//! Operations endpoints and logs of a real `balsa server`: /metrics moves with writes, /health
//! reflects whether a leader is known, JSON logs carry the key events as fields.

mod common;

use std::process::Stdio;
use std::time::Duration;

use balsa_server::pb::etcdserverpb::kv_client::KvClient;
use balsa_server::pb::etcdserverpb::PutRequest;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_health_on_both_listeners_and_json_logs() {
    let dir = TempDir::new("ops");
    let (client, peer, metrics) = (free_port(), free_port(), free_port());
    let log = dir.join("log.json");
    let child = balsa()
        .args(["server", "--name", "solo", "--tick-ms", "20", "--log-format", "json"])
        .args(["--data-dir", dir.join("data").to_str().unwrap()])
        .args(["--listen-client-urls", &format!("http://127.0.0.1:{client}")])
        .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
        .args(["--listen-metrics-urls", &format!("http://127.0.0.1:{metrics}")])
        .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
        .spawn()
        .unwrap();
    let mut proc = Proc(child);
    let health = eventually(Duration::from_secs(15), "healthy", || {
        http_get(metrics, "/health").filter(|(code, _)| *code == 200)
    });
    assert_eq!(health.1, r#"{"health":"true"}"#);
    // Healthy means the client listener is bound too.
    let mut kv = KvClient::connect(format!("http://127.0.0.1:{client}")).await.unwrap();
    for i in 0..20 {
        let put = PutRequest { key: format!("k{i}").into(), value: b"v".to_vec(), ..Default::default() };
        kv.put(put).await.unwrap();
    }
    // Both listeners serve the same page; the client port speaks HTTP/1.1 beside gRPC.
    for port in [metrics, client] {
        let (code, page) = http_get(port, "/metrics").unwrap();
        assert_eq!(code, 200);
        let m = |name: &str| metric(&page, name).unwrap_or_else(|| panic!("{name} missing from {page}"));
        assert!(m("balsa_server_proposals_committed_total") >= 20.0);
        assert!(m("balsa_server_commit_index") >= 20.0);
        assert!(m("balsa_server_applied_index") >= 20.0);
        assert_eq!(m("balsa_server_is_leader"), 1.0);
        assert_eq!(m("balsa_server_has_leader"), 1.0);
        assert!(m("balsa_server_term") >= 1.0);
        assert_eq!(m("balsa_server_leader_changes_seen_total"), 1.0);
        assert!(m("balsa_disk_wal_fsync_duration_seconds_count") >= 20.0);
        assert!(m("balsa_server_commit_duration_seconds_count") >= 20.0);
        assert_eq!(m("balsa_server_proposals_failed_total"), 0.0);
        assert_eq!(http_get(port, "/health").unwrap(), (200, r#"{"health":"true"}"#.to_string()));
    }
    assert!(proc.terminate());
    // One JSON object per line; the key events carry their fields.
    let text = std::fs::read_to_string(&log).unwrap();
    let events: Vec<serde_json::Value> =
        text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect();
    let find = |msg: &str| {
        events.iter().find(|e| e["message"] == msg).unwrap_or_else(|| panic!("no {msg:?} in {text}"))
    };
    assert_eq!(find("member started")["name"], "solo");
    assert!(find("became leader")["term"].as_u64().unwrap() >= 1);
    assert_eq!(find("became leader")["level"], "INFO");
    find("shutting down on a signal");
}

#[test]
fn health_is_false_without_a_leader() {
    // One member of three, alone: it can never elect a leader.
    let dir = TempDir::new("noleader");
    let (client, metrics) = (free_port(), free_port());
    let peers: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let cluster =
        peers.iter().enumerate().map(|(i, p)| format!("m{i}=http://127.0.0.1:{p}")).collect::<Vec<_>>();
    let child = balsa()
        .args(["server", "--name", "m0", "--tick-ms", "20", "--initial-cluster", &cluster.join(",")])
        .args(["--data-dir", dir.join("data").to_str().unwrap()])
        .args(["--listen-client-urls", &format!("http://127.0.0.1:{client}")])
        .args(["--listen-peer-urls", &format!("http://127.0.0.1:{}", peers[0])])
        .args(["--listen-metrics-urls", &format!("http://127.0.0.1:{metrics}")])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _p = Proc(child);
    let (code, body) = eventually(Duration::from_secs(10), "an answer", || http_get(metrics, "/health"));
    assert_eq!((code, body.as_str()), (503, r#"{"health":"false"}"#));
    // Still false after several election timeouts.
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(http_get(client, "/health").unwrap(), (503, r#"{"health":"false"}"#.to_string()));
    let (_, page) = http_get(metrics, "/metrics").unwrap();
    assert_eq!(metric(&page, "balsa_server_has_leader"), Some(0.0));
    assert!(
        metric(&page, "balsa_server_elections_started_total").unwrap_or(0.0) == 0.0,
        "PreVote keeps it from campaigning"
    );
}
