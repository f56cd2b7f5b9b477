//! etcd's Maintenance service on balsa: Snapshot (streamed, checked, saved by etcdctl and
//! restored into a new member), MoveLeader, Hash and HashKV across a three-node cluster, Alarm
//! and Defragment, through a gRPC client and through etcdctl.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use balsa_kv::StateMachine;
use balsa_raft::Role;
use balsa_server::config::{FileConfig, ServerFlags};
use balsa_server::kv_service::{self, KvService};
use balsa_server::member::Member;
use balsa_server::pb::etcdserverpb as pb;
use balsa_server::pb::etcdserverpb::kv_client::KvClient;
use balsa_server::pb::etcdserverpb::maintenance_client::MaintenanceClient;
use balsa_server::{snapshot_file, NodeConfig, NodeHandle};
use common::{etcdctl, etcdctl_ok, etcdctl_path, free_port, single_node, Dir};
use tokio::net::TcpListener;
use tonic::transport::Channel;
use tonic::Code;

fn put(k: &str, v: &str) -> pb::PutRequest {
    pb::PutRequest { key: k.into(), value: v.into(), ..Default::default() }
}

async fn clients(addr: SocketAddr) -> (KvClient<Channel>, MaintenanceClient<Channel>) {
    let kv = KvClient::connect(format!("http://{addr}")).await.unwrap();
    let m = MaintenanceClient::connect(format!("http://{addr}")).await.unwrap();
    (kv, m)
}

/// The whole Snapshot stream, checking that `remaining_bytes` counts down to zero.
async fn snapshot(m: &mut MaintenanceClient<Channel>) -> Vec<u8> {
    let mut stream = m.snapshot(pb::SnapshotRequest {}).await.unwrap().into_inner();
    let mut bytes = Vec::new();
    let mut last_remaining = u64::MAX;
    let mut messages = 0;
    while let Some(r) = stream.message().await.unwrap() {
        bytes.extend_from_slice(&r.blob);
        assert!(r.remaining_bytes < last_remaining, "remaining_bytes counts down");
        last_remaining = r.remaining_bytes;
        messages += 1;
    }
    assert_eq!(last_remaining, 0);
    assert!(messages >= 1);
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_hash_alarm_and_defragment_on_one_member() {
    let dir = Dir::new("maint-one");
    let (node, addr) = single_node(&dir).await;
    let (mut kv, mut m) = clients(addr).await;
    // Enough data for several chunks.
    let big = "x".repeat(10_000);
    for i in 0..30 {
        kv.put(put(&format!("k/{i:02}"), &big)).await.unwrap();
    }
    kv.put(put("k/small", "v")).await.unwrap();

    let bytes = snapshot(&mut m).await;
    assert_eq!(bytes.len() % 512, 32, "etcd's client insists on 512-byte blocks plus the digest");
    assert!(bytes.len() > 3 * balsa_server::maintenance::SNAPSHOT_CHUNK_BYTES);
    let image = snapshot_file::decode(&bytes).unwrap();
    assert_eq!(image.revision, 32);
    let sm = StateMachine::decode(image.data).unwrap();
    assert_eq!(&sm.mvcc.get(b"k/small").unwrap().value[..], b"v");
    let mut damaged = bytes.clone();
    damaged[1000] ^= 4;
    assert!(snapshot_file::decode(&damaged).unwrap_err().to_string().contains("sha256 mismatch"));

    // Hash: stable while nothing is written, changed by a write.
    let h1 = m.hash(pb::HashRequest {}).await.unwrap().into_inner().hash;
    assert_eq!(h1, m.hash(pb::HashRequest {}).await.unwrap().into_inner().hash);
    let kv_now = m.hash_kv(pb::HashKvRequest { revision: 0 }).await.unwrap().into_inner();
    assert_eq!(kv_now.header.as_ref().unwrap().revision, 32);
    let kv_32 = m.hash_kv(pb::HashKvRequest { revision: 32 }).await.unwrap().into_inner();
    assert_eq!(kv_now.hash, kv_32.hash, "revision 0 is the current revision");
    kv.put(put("k/small", "w")).await.unwrap();
    assert_ne!(h1, m.hash(pb::HashRequest {}).await.unwrap().into_inner().hash);
    assert_eq!(m.hash_kv(pb::HashKvRequest { revision: 32 }).await.unwrap().into_inner().hash, kv_32.hash);
    assert_ne!(m.hash_kv(pb::HashKvRequest { revision: 33 }).await.unwrap().into_inner().hash, kv_32.hash);
    let future = m.hash_kv(pb::HashKvRequest { revision: 99 }).await.unwrap_err();
    assert_eq!(
        (future.code(), future.message()),
        (Code::OutOfRange, "etcdserver: mvcc: required revision is a future revision")
    );
    kv.compact(pb::CompactionRequest { revision: 20, physical: false }).await.unwrap();
    let old = m.hash_kv(pb::HashKvRequest { revision: 10 }).await.unwrap_err();
    assert_eq!(
        (old.code(), old.message()),
        (Code::OutOfRange, "etcdserver: mvcc: required revision has been compacted")
    );
    assert_eq!(m.hash_kv(pb::HashKvRequest { revision: 0 }).await.unwrap().into_inner().compact_revision, 20);

    // Alarms: none, one activated, then deactivated.
    use pb::alarm_request::AlarmAction;
    let get = pb::AlarmRequest { action: AlarmAction::Get as i32, member_id: 0, alarm: 0 };
    assert!(m.alarm(get).await.unwrap().into_inner().alarms.is_empty());
    let on = pb::AlarmRequest {
        action: AlarmAction::Activate as i32,
        member_id: 1,
        alarm: pb::AlarmType::Nospace as i32,
    };
    m.alarm(on).await.unwrap();
    let listed = m.alarm(get).await.unwrap().into_inner().alarms;
    assert_eq!(listed, vec![pb::AlarmMember { member_id: 1, alarm: pb::AlarmType::Nospace as i32 }]);
    let off = pb::AlarmRequest { action: AlarmAction::Deactivate as i32, ..on };
    assert_eq!(m.alarm(off).await.unwrap().into_inner().alarms.len(), 1);
    assert!(m.alarm(get).await.unwrap().into_inner().alarms.is_empty());

    // Defragment takes a snapshot at the applied index, compacting the log behind it.
    let before = node.status().await.unwrap();
    m.defragment(pb::DefragmentRequest {}).await.unwrap();
    let after = node.status().await.unwrap();
    assert!(after.snapshot_index > before.snapshot_index);
    assert_eq!(after.snapshot_index, after.last_applied);
    m.defragment(pb::DefragmentRequest {}).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_snapshot_save_alarm_defrag_and_hashkv() {
    let Some(etcdctl_bin) = etcdctl_path() else {
        eprintln!("etcdctl not installed (Debian: apt-get install etcd-client); skipped");
        return;
    };
    let dir = Dir::new("maint-etcdctl");
    let (_node, addr) = single_node(&dir).await;
    let (mut kv, _) = clients(addr).await;
    kv.put(put("greeting", "hello")).await.unwrap();
    std::fs::create_dir_all(&dir.0).unwrap();
    let file = dir.0.join("backup.db");
    let file_s = file.to_str().unwrap();
    let out = etcdctl_ok(&etcdctl_bin, addr, &["snapshot", "save", file_s]).await;
    assert!(out.contains(&format!("Snapshot saved at {file_s}")), "{out}");
    let image = snapshot_file::read(&file).unwrap();
    let sm = StateMachine::decode(image.data).unwrap();
    assert_eq!(&sm.mvcc.get(b"greeting").unwrap().value[..], b"hello");

    assert_eq!(etcdctl_ok(&etcdctl_bin, addr, &["alarm", "list"]).await, "");
    etcdctl_ok(&etcdctl_bin, addr, &["alarm", "disarm"]).await;
    let out = etcdctl_ok(&etcdctl_bin, addr, &["defrag"]).await;
    assert!(out.contains(&format!("Finished defragmenting etcd member[{addr}]")), "{out}");
    let out = etcdctl_ok(&etcdctl_bin, addr, &["endpoint", "hashkv", "-w", "json"]).await;
    assert!(out.contains("\"hash_revision\"") || out.contains("\"hash\""), "{out}");
    let (ok, _, err) = etcdctl(&etcdctl_bin, addr, &["endpoint", "hashkv"]).await;
    assert!(ok, "{err}");
}

fn node_config(id: u64, dir: &Dir, peers: &BTreeMap<u64, SocketAddr>) -> NodeConfig {
    NodeConfig {
        id,
        cluster_id: 99,
        data_dir: dir.0.join(format!("n{id}")),
        peers: peers.clone(),
        tick: Duration::from_millis(20),
        snapshot_entries: 1000,
        join: false,
        name: String::new(),
        client_urls: Vec::new(),
    }
}

async fn leader_of(nodes: &[Arc<NodeHandle>]) -> usize {
    common::leader_index(&nodes.iter().map(|n| Some(&**n)).collect::<Vec<_>>()).await
}

/// HashKV at `revision` on a member, waiting (bounded) until it has applied that far.
async fn hash_at(m: &mut MaintenanceClient<Channel>, revision: i64) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match m.hash_kv(pb::HashKvRequest { revision }).await {
            Ok(r) => return r.into_inner().hash,
            Err(e) if e.message().contains("future revision") && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("hash_kv({revision}): {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_agree_on_hashes_and_move_the_leader() {
    let dir = Dir::new("maint-cluster");
    let mut listeners = Vec::new();
    let mut peers = BTreeMap::new();
    for id in 1..=3u64 {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        peers.insert(id, l.local_addr().unwrap());
        listeners.push(l);
    }
    let mut nodes = Vec::new();
    let mut addrs = Vec::new();
    for (i, l) in listeners.into_iter().enumerate() {
        let id = i as u64 + 1;
        let node = Arc::new(NodeHandle::start(node_config(id, &dir, &peers), l).await.unwrap());
        let client = TcpListener::bind("127.0.0.1:0").await.unwrap();
        addrs.push(client.local_addr().unwrap());
        tokio::spawn(kv_service::serve(KvService::new(node.clone(), 99, id), client));
        nodes.push(node);
    }
    let leader = leader_of(&nodes).await;
    let (mut kv, _) = clients(addrs[leader]).await;
    let mut ms = Vec::new();
    for a in &addrs {
        ms.push(clients(*a).await.1);
    }
    let mut revision = 0;
    for i in 0..10 {
        revision = kv.put(put(&format!("k{i}"), "v")).await.unwrap().into_inner().header.unwrap().revision;
    }
    let mut hashes = Vec::new();
    for m in &mut ms {
        hashes.push(hash_at(m, revision).await);
    }
    assert!(hashes.iter().all(|h| *h == hashes[0]), "members disagree at {revision}: {hashes:?}");
    let next = kv.put(put("k0", "changed")).await.unwrap().into_inner().header.unwrap().revision;
    for m in &mut ms {
        let h = hash_at(m, next).await;
        assert_ne!(h, hashes[0], "another write, another hash");
        assert_eq!(hash_at(m, revision).await, hashes[0], "the older revision keeps its hash");
    }

    // MoveLeader: refused on a follower, refused to a non-member, then done.
    let follower = (leader + 1) % 3;
    let target = follower as u64 + 1;
    let e = ms[follower].move_leader(pb::MoveLeaderRequest { target_id: target }).await.unwrap_err();
    assert_eq!((e.code(), e.message()), (Code::FailedPrecondition, "etcdserver: not leader"));
    let e = ms[leader].move_leader(pb::MoveLeaderRequest { target_id: 77 }).await.unwrap_err();
    assert_eq!((e.code(), e.message()), (Code::FailedPrecondition, "etcdserver: bad leader transferee"));
    ms[leader].move_leader(pb::MoveLeaderRequest { target_id: target }).await.unwrap();
    assert_eq!(nodes[leader].status().await.unwrap().leader_id, Some(target));
    let deadline = Instant::now() + Duration::from_secs(5);
    while nodes[follower].status().await.unwrap().role != Role::Leader {
        assert!(Instant::now() < deadline, "the transferee never took over");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // etcdctl finds the leader among the endpoints and moves leadership on (ids in hex).
    if let Some(bin) = etcdctl_path() {
        let endpoints = addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(",");
        let third = (0..3).find(|i| *i != follower).unwrap();
        let run = tokio::process::Command::new(&bin)
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={endpoints}"))
            .args(["move-leader", &format!("{:x}", third as u64 + 1)])
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(Duration::from_secs(20), run).await.unwrap().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{stdout} {}", String::from_utf8_lossy(&out.stderr));
        assert!(stdout.contains("Leadership transferred"), "{stdout}");
        assert_eq!(nodes[third].status().await.unwrap().role, Role::Leader);
    } else {
        eprintln!("etcdctl not installed; move-leader through etcdctl skipped");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_restored_from_a_snapshot_serves_its_keys() {
    let dir = Dir::new("maint-restore");
    let (_node, addr) = single_node(&dir).await;
    let (mut kv, mut m) = clients(addr).await;
    for i in 0..5 {
        kv.put(put(&format!("r/{i}"), &format!("v{i}"))).await.unwrap();
    }
    let bytes = snapshot(&mut m).await;
    let backup = dir.0.join("backup.snap");
    std::fs::write(&backup, &bytes).unwrap();

    let (client_port, peer_port) = (free_port(), free_port());
    let flags = ServerFlags {
        name: Some("r1".into()),
        data_dir: Some(dir.0.join("restored")),
        listen_client_urls: Some(format!("http://127.0.0.1:{client_port}")),
        listen_peer_urls: Some(format!("http://127.0.0.1:{peer_port}")),
        initial_cluster: Some(format!("r1=http://127.0.0.1:{peer_port}")),
        initial_cluster_token: Some("restored".into()),
        tick_ms: Some(10),
        ..Default::default()
    };
    let config = flags.resolve_with(FileConfig::default()).unwrap();

    // A damaged file is refused, and writes nothing.
    let mut damaged = bytes.clone();
    damaged[60] ^= 1;
    let bad = dir.0.join("damaged.snap");
    std::fs::write(&bad, &damaged).unwrap();
    let e = snapshot_file::restore(&bad, &config).unwrap_err();
    assert!(e.contains("sha256 mismatch"), "{e}");
    assert!(!dir.0.join("restored").exists());

    let restored = snapshot_file::restore(&backup, &config).unwrap();
    assert_eq!(restored.revision, 6);
    let e = snapshot_file::restore(&backup, &config).unwrap_err();
    assert!(e.contains("not empty"), "{e}");

    let member = Member::start(config).await.unwrap();
    let (mut kv2, _) = clients(member.client_addr).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let r = loop {
        match kv2
            .range(pb::RangeRequest { key: "r/".into(), range_end: "r0".into(), ..Default::default() })
            .await
        {
            Ok(r) => break r.into_inner(),
            Err(e) => {
                assert!(Instant::now() < deadline, "the restored member never served: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    assert_eq!(r.count, 5);
    assert_eq!(r.header.unwrap().revision, 6);
    // And it takes writes after the restored revision.
    let w = kv2.put(put("r/new", "x")).await.unwrap().into_inner();
    assert_eq!(w.header.unwrap().revision, 7);
}
