//! balsa-client against real in-process balsa nodes: CRUD and options, transactions,
//! compaction errors, leader discovery, a write retried across a leader kill, a watch resumed
//! across a killed member with no gap and no duplicate, lease keep-alive, members, status,
//! snapshots.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use balsa_client::*;
use common::{connect, options, until, Cluster};

fn s(kv: &KeyValue) -> (String, String) {
    (String::from_utf8_lossy(&kv.key).into_owned(), String::from_utf8_lossy(&kv.value).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crud_with_every_read_option() {
    let cluster = Cluster::start("crud", 1).await;
    let c = connect(&cluster).await;
    let first = c.put("a/1", "x", PutOptions::new()).await.unwrap();
    c.put("a/2", "yy", PutOptions::new()).await.unwrap();
    c.put("a/3", "z", PutOptions::new()).await.unwrap();
    c.put("b", "other", PutOptions::new()).await.unwrap();
    let again = c.put("a/1", "x2", PutOptions::new().prev_kv()).await.unwrap();
    assert_eq!(s(&again.prev_kv.unwrap()), ("a/1".into(), "x".into()));

    assert_eq!(c.get_value("a/1").await.unwrap().unwrap(), b"x2");
    assert_eq!(c.get_value("missing").await.unwrap(), None);
    let old = c.get("a/1", GetOptions::new().revision(first.revision)).await.unwrap();
    assert_eq!(s(&old.kvs[0]).1, "x");
    let prefix = c.get("a/", GetOptions::new().prefix()).await.unwrap();
    assert_eq!(prefix.kvs.iter().map(|kv| s(kv).0).collect::<Vec<_>>(), ["a/1", "a/2", "a/3"]);
    let range = c.get("a/2", GetOptions::new().range_end("b")).await.unwrap();
    assert_eq!(range.count, 2);
    let limited = c
        .get("a/", GetOptions::new().prefix().limit(2).sort(SortTarget::Key, SortOrder::Descend))
        .await
        .unwrap();
    assert_eq!((limited.kvs.len(), limited.more, limited.count), (2, true, 3));
    assert_eq!(s(&limited.kvs[0]).0, "a/3");
    let keys = c.get("a/", GetOptions::new().prefix().keys_only()).await.unwrap();
    assert!(keys.kvs.iter().all(|kv| kv.value.is_empty()));
    let count = c.get("", GetOptions::new().from_key().count_only()).await.unwrap();
    assert_eq!((count.count, count.kvs.len()), (4, 0));
    let stale_ok = c.get("b", GetOptions::new().serializable()).await.unwrap();
    assert_eq!(s(&stale_ok.kvs[0]).1, "other");

    let deleted = c.delete("a/", DeleteOptions::new().prefix().prev_kv()).await.unwrap();
    assert_eq!((deleted.deleted, deleted.prev_kvs.len()), (3, 3));
    assert_eq!(c.get("a/", GetOptions::new().prefix()).await.unwrap().count, 0);

    // Errors come back typed.
    assert!(matches!(c.put("", "v", PutOptions::new()).await, Err(Error::InvalidArgument(_))));
    let now = c.get("b", GetOptions::new()).await.unwrap().revision;
    assert_eq!(c.get("b", GetOptions::new().revision(now + 100)).await, Err(Error::FutureRevision));
    c.compact(now, false).await.unwrap();
    assert_eq!(
        c.get("b", GetOptions::new().revision(first.revision)).await,
        Err(Error::Compacted { compact_revision: None })
    );
    // A watch from compacted history says where compaction is.
    // (etcd answers `created`, then `canceled`: the error comes with the first `next`.)
    let mut w = c.watch("b", WatchOptions::new().start_revision(first.revision)).await.unwrap();
    let compacted = tokio::time::timeout(Duration::from_secs(5), w.next()).await.unwrap();
    assert_eq!(compacted, Err(Error::Compacted { compact_revision: Some(now) }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_take_one_branch_atomically() {
    let cluster = Cluster::start("txn", 1).await;
    let c = connect(&cluster).await;
    let put = c.put("lock", "alice", PutOptions::new()).await.unwrap();
    let cas = |from: &str, to: &str| {
        Txn::new()
            .when([Compare::value("lock", CompareOp::Equal, from)])
            .and_then([
                TxnOp::put("lock", to, PutOptions::new()),
                TxnOp::put("owner-changed", "yes", PutOptions::new()),
            ])
            .or_else([TxnOp::get("lock", GetOptions::new())])
    };
    let won = c.txn(cas("alice", "bob")).await.unwrap();
    assert!(won.succeeded);
    assert_eq!(won.responses.len(), 2);
    let lost = c.txn(cas("alice", "carol")).await.unwrap();
    assert!(!lost.succeeded);
    match &lost.responses[..] {
        [TxnOpResponse::Get(g)] => assert_eq!(s(&g.kvs[0]).1, "bob"),
        other => panic!("expected the else branch's get, got {other:?}"),
    }
    // Version, create/mod revision and lease compares.
    let txn = Txn::new()
        .when([
            Compare::version("lock", CompareOp::Equal, 2),
            Compare::create_revision("lock", CompareOp::Equal, put.revision),
            Compare::mod_revision("lock", CompareOp::Greater, put.revision),
            Compare::lease("lock", CompareOp::Equal, 0),
            Compare::version("absent", CompareOp::Equal, 0),
        ])
        .and_then([TxnOp::delete("owner-changed", DeleteOptions::new().prev_kv())]);
    let r = c.txn(txn).await.unwrap();
    assert!(r.succeeded);
    assert!(matches!(&r.responses[..], [TxnOpResponse::Delete(d)] if d.deleted == 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finds_the_leader_and_retries_a_write_across_its_death() {
    let mut cluster = Cluster::start("failover", 3).await;
    let l = cluster.leader().await;
    // List the leader last, so finding it is the discovery's doing.
    let mut endpoints = cluster.endpoints();
    let leader_url = endpoints.remove(l);
    endpoints.push(leader_url.clone());
    let refs: Vec<&str> = endpoints.iter().map(String::as_str).collect();
    let c = Client::connect(&refs, options()).await.unwrap();
    assert_eq!(c.leader_endpoint(), Some(format!("http://{leader_url}").as_str()));
    c.put("k", "before", PutOptions::new()).await.unwrap();

    cluster.kill(l).await;
    // The client still believes in the dead leader: the put fails there, and is retried until
    // a new leader is found.
    let r = c.put("k", "after", PutOptions::new()).await.unwrap();
    assert!(r.revision > 0);
    // The retried put may have gone through a follower (which forwards writes) while no
    // leader was known yet; the next call that wants the leader (a linearizable read) then
    // finds it.
    assert_eq!(c.get_value("k").await.unwrap().unwrap(), b"after");
    let new_leader = c.leader_endpoint().expect("a new leader was discovered").to_string();
    assert_ne!(new_leader, format!("http://{leader_url}"));
    let new_l = cluster.leader().await;
    assert_eq!(new_leader, format!("http://{}", cluster.members[new_l].endpoint()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_resumes_across_a_killed_leader_with_no_gap_and_no_duplicate() {
    let mut cluster = Cluster::start("watch-leader", 3).await;
    let c = connect(&cluster).await;
    assert!(c.sessions_active(), "sessions are on by default");
    assert_eq!(c.sessions_registered(), 1, "connect registered one session");
    // A client that knows the leader watches through it.
    let watched = c.leader_endpoint().unwrap().to_string();
    let watcher = c.watch("w/", WatchOptions::new().prefix()).await.unwrap();
    let victim = cluster.members.iter().position(|m| format!("http://{}", m.endpoint()) == watched).unwrap();
    // In a session, a put retried across the failover is applied once: exactly one revision
    // per put.
    let writes = watch_through_a_kill(&mut cluster, c.clone(), watcher, victim).await;
    assert_eq!(writes, 60, "each put appears exactly once");
    assert_eq!(c.sessions_registered(), 1, "one write at a time: one session");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_sessions_retries_are_at_least_once_as_in_etcd() {
    let mut cluster = Cluster::start("watch-leader-nosession", 3).await;
    let endpoints = cluster.endpoints();
    let endpoints: Vec<&str> = endpoints.iter().map(String::as_str).collect();
    let c = Client::connect(&endpoints, ClientOptions { sessions: false, ..options() }).await.unwrap();
    assert!(!c.sessions_active());
    let watched = c.leader_endpoint().unwrap().to_string();
    let watcher = c.watch("w/", WatchOptions::new().prefix()).await.unwrap();
    let victim = cluster.members.iter().position(|m| format!("http://{}", m.endpoint()) == watched).unwrap();
    // The old behaviour: a put whose answer was lost in the failover may be applied again by
    // its retry, so there are at least as many revisions as puts (every one seen once).
    let writes = watch_through_a_kill(&mut cluster, c.clone(), watcher, victim).await;
    assert!(writes >= 60, "{writes} revisions for 60 puts");
    assert_eq!(c.sessions_registered(), 0, "no session registered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_resumes_across_a_killed_follower_with_no_gap_and_no_duplicate() {
    let mut cluster = Cluster::start("watch-follower", 3).await;
    let victim = (cluster.leader().await + 1) % 3;
    // A client that has not looked for the leader watches through its first endpoint.
    let mut endpoints = cluster.endpoints();
    endpoints.rotate_left(victim);
    let refs: Vec<&str> = endpoints.iter().map(String::as_str).collect();
    let lazy = Client::connect_lazy(&refs, options()).unwrap();
    let watcher = lazy.watch("w/", WatchOptions::new().prefix()).await.unwrap();
    let writer = connect(&cluster).await;
    watch_through_a_kill(&mut cluster, writer, watcher, victim).await;
}

/// Writes w/000..w/059 through `c` while `watcher` reads them; kills member `victim` a third of
/// the way; checks the watcher saw every revision of the run exactly once. Returns how many
/// revisions the run made.
async fn watch_through_a_kill(
    cluster: &mut Cluster,
    c: Client,
    mut watcher: Watcher,
    victim: usize,
) -> usize {
    // A writer puts w/0..N one after another (each retried through the failover).
    const N: usize = 60;
    let writer = c.clone();
    let writes = tokio::spawn(async move {
        for i in 0..N {
            writer.put(format!("w/{i:03}"), "v", PutOptions::new()).await.unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    let start = watcher.next_revision();
    let mut seen = Vec::new();
    let mut keys = BTreeSet::new();
    let collect = async {
        while keys.len() < N {
            let e = watcher.next().await.unwrap();
            keys.insert(String::from_utf8(e.kv.key.clone()).unwrap());
            seen.push(e.revision());
            if seen.len() == N / 3 {
                cluster.kill(victim).await;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(40), collect)
        .await
        .expect("every key's event arrives within 40 s");
    tokio::time::timeout(Duration::from_secs(20), writes).await.unwrap().unwrap();
    // Without a session a put retried across the failover may have been applied twice
    // (at-least-once): read the final revision and take every event up to it.
    let last = c.get("w/", GetOptions::new().prefix().count_only()).await.unwrap().revision;
    while *seen.last().unwrap() < last {
        let e = tokio::time::timeout(Duration::from_secs(10), watcher.next()).await.unwrap().unwrap();
        seen.push(e.revision());
    }

    assert!(watcher.resumed() >= 1, "the watch was resumed on another member");
    // Every revision of the run, each once: nothing missing, nothing repeated.
    let expected: Vec<i64> = (start..=last).collect();
    assert_eq!(seen, expected, "the watch saw each revision exactly once");
    // And nothing more arrives (no duplicate replayed late).
    let extra = tokio::time::timeout(Duration::from_millis(500), watcher.next()).await;
    assert!(extra.is_err(), "no event after the last write: {extra:?}");
    seen.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_keeps_a_key_and_dropping_it_lets_the_key_expire() {
    let cluster = Cluster::start("lease", 1).await;
    let c = connect(&cluster).await;
    let lease = c.lease_grant(1, 0).await.unwrap();
    c.put("svc/me", "up", PutOptions::new().lease(lease.id)).await.unwrap();
    let alive = c.lease_keep_alive(lease.id).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(c.get_value("svc/me").await.unwrap().unwrap(), b"up", "kept alive past 3 TTLs");
    assert!(matches!(alive.state(), LeaseState::Alive { .. }));
    let ttl = c.lease_time_to_live(lease.id, true).await.unwrap().unwrap();
    assert_eq!(ttl.keys, [b"svc/me".to_vec()]);
    drop(alive);
    until(Duration::from_secs(6), "the key expires with its lease", || async {
        c.get_value("svc/me").await.unwrap().is_none()
    })
    .await;
    assert_eq!(c.lease_time_to_live(lease.id, false).await.unwrap(), None);
    assert_eq!(c.lease_keep_alive_once(lease.id).await, Err(Error::LeaseNotFound));
    assert_eq!(c.lease_revoke(lease.id).await, Err(Error::LeaseNotFound));

    // A kept-alive lease revoked by someone else is reported lost.
    let other = c.lease_grant(3, 0).await.unwrap();
    let mut alive = c.lease_keep_alive(other.id).await.unwrap();
    assert!(c.lease_list().await.unwrap().contains(&other.id));
    c.lease_revoke(other.id).await.unwrap();
    let why = tokio::time::timeout(Duration::from_secs(5), alive.lost()).await.expect("loss reported");
    assert_eq!(why, Error::LeaseLost(other.id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_status_and_snapshot() {
    let cluster = Cluster::start("members", 3).await;
    let c = connect(&cluster).await;
    c.put("k", "v", PutOptions::new()).await.unwrap();
    until(Duration::from_secs(10), "names published", || async {
        c.member_list().await.unwrap().iter().filter(|m| !m.name.is_empty()).count() == 3
    })
    .await;
    let rows = c.cluster_status().await.unwrap();
    assert_eq!(rows.len(), 3);
    assert_eq!(rows.iter().filter(|r| r.role == Some(Role::Leader)).count(), 1);
    for (row, m) in rows.iter().zip(&cluster.members) {
        assert_eq!((row.id, row.name.as_str()), (m.id, m.name.as_str()));
        assert!(row.term >= 1 && row.applied > 0 && row.lag.is_some() && row.error.is_none(), "{row:?}");
    }

    // A learner that never starts: added, listed, refused promotion, removed.
    let (added, list) = c.member_add(&["http://127.0.0.1:9".to_string()], true).await.unwrap();
    assert!(added.is_learner);
    assert_eq!(list.len(), 4);
    assert!(matches!(c.member_promote(added.id).await, Err(Error::FailedPrecondition(_))));
    assert_eq!(c.member_remove(added.id).await.unwrap().len(), 3);
    assert_eq!(c.member_remove(added.id).await, Err(Error::MemberNotFound));

    let dir = common::Dir::new("snapshot");
    std::fs::create_dir_all(&dir.0).unwrap();
    let path = dir.0.join("backup.db");
    let saved = c.snapshot_save(&path).await.unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().len(), saved.bytes);
    assert!(saved.bytes > 32, "a header, a body and the sha256 trailer");
}
