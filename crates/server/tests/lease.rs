//! etcd's v3 Lease API on a balsa member: grants, keys that go with their lease, keep-alives,
//! expiry decided by the leader and committed through the log, and etcd's errors.

mod common;

use std::time::{Duration, Instant};

use balsa_server::pb::etcdserverpb as pb;
use balsa_server::pb::etcdserverpb::kv_client::KvClient;
use balsa_server::pb::etcdserverpb::lease_client::LeaseClient;
use common::{etcdctl, etcdctl_ok, etcdctl_path, single_node, Dir};
use tonic::Code;

fn put_leased(k: &str, lease: i64) -> pb::PutRequest {
    pb::PutRequest { key: k.into(), value: b"v".to_vec(), lease, ..Default::default() }
}

async fn exists(kv: &mut KvClient<tonic::transport::Channel>, k: &str) -> bool {
    let r = kv.range(pb::RangeRequest { key: k.into(), ..Default::default() }).await.unwrap().into_inner();
    r.count == 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_keys_keep_alives_revokes_and_etcds_errors() {
    let dir = Dir::new("lease-api");
    let (node, addr) = single_node(&dir).await;
    let mut leases = LeaseClient::connect(format!("http://{addr}")).await.unwrap();
    let mut kv = KvClient::connect(format!("http://{addr}")).await.unwrap();

    // A server-chosen id, and a TTL raised to the minimum (1.5 election timeouts, rounded up).
    let g = leases.lease_grant(pb::LeaseGrantRequest { ttl: 0, id: 0 }).await.unwrap().into_inner();
    assert!(g.id > 0);
    assert_eq!(g.ttl, node.min_lease_ttl_secs());
    let g2 = leases.lease_grant(pb::LeaseGrantRequest { ttl: 0, id: 0 }).await.unwrap().into_inner();
    assert_ne!(g.id, g2.id, "two grants never share an id");

    // A client-chosen id; the same id again is etcd's "lease already exists".
    leases.lease_grant(pb::LeaseGrantRequest { ttl: 600, id: 42 }).await.unwrap();
    let dup = leases.lease_grant(pb::LeaseGrantRequest { ttl: 600, id: 42 }).await.unwrap_err();
    assert_eq!((dup.code(), dup.message()), (Code::FailedPrecondition, "etcdserver: lease already exists"));
    let big = leases.lease_grant(pb::LeaseGrantRequest { ttl: 9_000_000_001, id: 0 }).await.unwrap_err();
    assert_eq!((big.code(), big.message()), (Code::OutOfRange, "etcdserver: too large lease TTL"));
    let neg = leases.lease_grant(pb::LeaseGrantRequest { ttl: 60, id: -5 }).await.unwrap_err();
    assert_eq!(neg.code(), Code::InvalidArgument);

    // Keys attach; time to live reports them; the list has every lease.
    kv.put(put_leased("lock/a", 42)).await.unwrap();
    kv.put(put_leased("lock/b", 42)).await.unwrap();
    let unknown = kv.put(put_leased("lock/c", 777)).await.unwrap_err();
    assert_eq!(
        (unknown.code(), unknown.message()),
        (Code::NotFound, "etcdserver: requested lease not found")
    );
    let ttl = leases.lease_time_to_live(pb::LeaseTimeToLiveRequest { id: 42, keys: true }).await.unwrap();
    let ttl = ttl.into_inner();
    assert_eq!((ttl.granted_ttl, ttl.keys.len()), (600, 2));
    assert!(ttl.ttl > 590 && ttl.ttl <= 600, "remaining {}", ttl.ttl);
    let mut ids: Vec<i64> = leases
        .lease_leases(pb::LeaseLeasesRequest {})
        .await
        .unwrap()
        .into_inner()
        .leases
        .iter()
        .map(|l| l.id)
        .collect();
    ids.sort_unstable();
    let mut want = vec![g.id, g2.id, 42];
    want.sort_unstable();
    assert_eq!(ids, want);

    // Keep-alives on one stream: each answered with the granted TTL, in order.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut answers =
        leases.lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap().into_inner();
    for _ in 0..3 {
        tx.send(pb::LeaseKeepAliveRequest { id: 42 }).await.unwrap();
        let a = answers.message().await.unwrap().unwrap();
        assert_eq!((a.id, a.ttl), (42, 600));
    }

    // Revoking takes the keys; afterwards the lease is gone to every call.
    leases.lease_revoke(pb::LeaseRevokeRequest { id: 42 }).await.unwrap();
    assert!(!exists(&mut kv, "lock/a").await && !exists(&mut kv, "lock/b").await);
    tx.send(pb::LeaseKeepAliveRequest { id: 42 }).await.unwrap();
    let a = answers.message().await.unwrap().unwrap();
    assert_eq!((a.id, a.ttl), (42, 0), "etcd answers a keep-alive of a gone lease with TTL 0");
    let gone = leases.lease_time_to_live(pb::LeaseTimeToLiveRequest { id: 42, keys: false }).await.unwrap();
    assert_eq!(gone.into_inner().ttl, -1);
    let again = leases.lease_revoke(pb::LeaseRevokeRequest { id: 42 }).await.unwrap_err();
    assert_eq!(again.code(), Code::NotFound);
}

/// The leader revokes a lease nobody renews, with its keys; a renewed lease outlives its TTL
/// several times over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_expires_leases_that_are_not_kept_alive() {
    let dir = Dir::new("lease-expiry");
    let (node, addr) = single_node(&dir).await;
    let min_ttl = node.min_lease_ttl_secs();
    let mut leases = LeaseClient::connect(format!("http://{addr}")).await.unwrap();
    let mut kv = KvClient::connect(format!("http://{addr}")).await.unwrap();
    let idle =
        leases.lease_grant(pb::LeaseGrantRequest { ttl: min_ttl, id: 0 }).await.unwrap().into_inner().id;
    let kept =
        leases.lease_grant(pb::LeaseGrantRequest { ttl: min_ttl, id: 0 }).await.unwrap().into_inner().id;
    kv.put(put_leased("idle", idle)).await.unwrap();
    kv.put(put_leased("kept", kept)).await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut answers =
        leases.lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap().into_inner();
    let start = Instant::now();
    let ttl = Duration::from_secs(min_ttl as u64);
    let mut idle_gone_after = None;
    // Renew `kept` every quarter TTL for three TTLs; watch `idle` disappear.
    while start.elapsed() < ttl * 3 {
        tx.send(pb::LeaseKeepAliveRequest { id: kept }).await.unwrap();
        assert!(answers.message().await.unwrap().unwrap().ttl > 0, "a renewed lease lives");
        if idle_gone_after.is_none() && !exists(&mut kv, "idle").await {
            idle_gone_after = Some(start.elapsed());
        }
        tokio::time::sleep(ttl / 4).await;
    }
    let gone = idle_gone_after.expect("an idle lease expires");
    assert!(gone >= ttl.mul_f64(0.9), "not before its TTL: {gone:?}");
    assert!(gone <= ttl * 2, "within a TTL after it ran out: {gone:?}");
    assert!(exists(&mut kv, "kept").await, "the renewed lease kept its key");
    let ttl_left =
        leases.lease_time_to_live(pb::LeaseTimeToLiveRequest { id: idle, keys: false }).await.unwrap();
    assert_eq!(ttl_left.into_inner().ttl, -1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_lease_commands() {
    let Some(path) = etcdctl_path() else {
        eprintln!("NOTE: etcdctl is not installed; apt-get install etcd-client to run this test");
        return;
    };
    let dir = Dir::new("lease-etcdctl");
    let (_node, addr) = single_node(&dir).await;
    let granted = etcdctl_ok(&path, addr, &["lease", "grant", "300"]).await;
    // "lease 694d77aa9e38260f granted with TTL(300s)"
    let id = granted.split_whitespace().nth(1).unwrap().to_string();
    assert_eq!(granted.trim(), format!("lease {id} granted with TTL(300s)"));
    assert_eq!(etcdctl_ok(&path, addr, &["put", "--lease", &id, "svc/a", "up"]).await.trim(), "OK");
    let once = etcdctl_ok(&path, addr, &["lease", "keep-alive", "--once", &id]).await;
    assert_eq!(once.trim(), format!("lease {id} keepalived with TTL(300)"));
    let ttl = etcdctl_ok(&path, addr, &["lease", "timetolive", "--keys", &id]).await;
    assert!(ttl.starts_with(&format!("lease {id} granted with TTL(300s), remaining(")), "{ttl}");
    assert!(ttl.trim().ends_with("attached keys([svc/a])"), "{ttl}");
    let list = etcdctl_ok(&path, addr, &["lease", "list"]).await;
    assert_eq!(list, format!("found 1 leases\n{id}\n"));
    assert_eq!(
        etcdctl_ok(&path, addr, &["lease", "revoke", &id]).await.trim(),
        format!("lease {id} revoked")
    );
    assert_eq!(etcdctl_ok(&path, addr, &["get", "svc/a"]).await, "", "the key went with its lease");
    let expired = etcdctl_ok(&path, addr, &["lease", "timetolive", &id]).await;
    assert_eq!(expired.trim(), format!("lease {id} already expired"));
    let (ok, _, err) = etcdctl(&path, addr, &["lease", "keep-alive", "--once", &id]).await;
    assert!(!ok && err.contains("requested lease not found"), "{err}");
}
