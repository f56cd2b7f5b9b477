//! etcd's Cluster API on an in-process cluster of real nodes over loopback TCP: the member list
//! with published names and URLs, a learner that joins a running cluster and catches up, its
//! promotion, a voter added the safe way (learner first, promoted by the leader once caught up),
//! removals, forwarding from followers to the leader, and etcd's errors.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use balsa_server::config::member_id;
use balsa_server::kv_service::{self, KvService};
use balsa_server::pb::etcdserverpb as pb;
use balsa_server::pb::etcdserverpb::cluster_client::ClusterClient;
use balsa_server::pb::etcdserverpb::kv_client::KvClient;
use balsa_server::{NodeConfig, NodeHandle};
use common::Dir;
use tokio::net::TcpListener;
use tonic::transport::Channel;
use tonic::Code;

/// One member: its node, id and client address.
struct Member {
    id: u64,
    node: Arc<NodeHandle>,
    client: SocketAddr,
}

/// Binds a peer listener, and a client listener whose address the member publishes.
async fn listeners() -> (TcpListener, TcpListener) {
    (TcpListener::bind("127.0.0.1:0").await.unwrap(), TcpListener::bind("127.0.0.1:0").await.unwrap())
}

async fn start(
    dir: &Dir,
    name: &str,
    peer: TcpListener,
    client: TcpListener,
    peers: &BTreeMap<u64, SocketAddr>,
    join: bool,
) -> Member {
    let id = member_id(peer.local_addr().unwrap());
    let client_addr = client.local_addr().unwrap();
    let config = NodeConfig {
        id,
        cluster_id: 5,
        data_dir: dir.0.join(name),
        peers: peers.clone(),
        tick: Duration::from_millis(10),
        snapshot_entries: 1000,
        join,
        name: name.to_string(),
        client_urls: vec![format!("http://{client_addr}")],
    };
    let node = Arc::new(NodeHandle::start(config, peer).await.unwrap());
    tokio::spawn(kv_service::serve(KvService::new(node.clone(), 5, id), client));
    Member { id, node, client: client_addr }
}

async fn cluster_client(m: &Member) -> ClusterClient<Channel> {
    ClusterClient::connect(format!("http://{}", m.client)).await.unwrap()
}

async fn list(m: &Member) -> Vec<pb::Member> {
    cluster_client(m).await.member_list(pb::MemberListRequest {}).await.unwrap().into_inner().members
}

/// Polls `f` every 20 ms for at most `limit`.
async fn until<F: std::future::Future<Output = bool>>(limit: Duration, what: &str, mut f: impl FnMut() -> F) {
    let deadline = Instant::now() + limit;
    while !f().await {
        assert!(Instant::now() < deadline, "timed out after {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn leader(members: &[&Member]) -> usize {
    common::leader_index(&members.iter().map(|m| Some(&*m.node)).collect::<Vec<_>>()).await
}

async fn put(m: &Member, k: &str, v: &str) {
    let mut kv = KvClient::connect(format!("http://{}", m.client)).await.unwrap();
    kv.put(pb::PutRequest { key: k.into(), value: v.into(), ..Default::default() }).await.unwrap();
}

async fn serializable_get(m: &Member, k: &str) -> Option<Vec<u8>> {
    let mut kv = KvClient::connect(format!("http://{}", m.client)).await.ok()?;
    let req = pb::RangeRequest { key: k.into(), serializable: true, ..Default::default() };
    kv.range(req).await.ok()?.into_inner().kvs.first().map(|kv| kv.value.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_join_as_learners_get_promoted_and_leave() {
    let dir = Dir::new("members");
    let mut ls = Vec::new();
    for _ in 0..3 {
        ls.push(listeners().await);
    }
    let peers: BTreeMap<u64, SocketAddr> =
        ls.iter().map(|(p, _)| (member_id(p.local_addr().unwrap()), p.local_addr().unwrap())).collect();
    let mut founders = Vec::new();
    for (i, (p, c)) in ls.into_iter().enumerate() {
        founders.push(start(&dir, &format!("m{i}"), p, c, &peers, false).await);
    }
    let f: Vec<&Member> = founders.iter().collect();
    let l = leader(&f).await;
    let follower = f[(l + 1) % 3];

    // Every founder publishes its name and client URL; the list shows three voters.
    until(Duration::from_secs(10), "names published", || async {
        list(follower).await.iter().filter(|m| !m.name.is_empty() && !m.client_ur_ls.is_empty()).count() == 3
    })
    .await;
    let listed = list(follower).await;
    for m in &founders {
        let entry = listed.iter().find(|e| e.id == m.id).expect("every founder is listed");
        assert_eq!(entry.client_ur_ls, [format!("http://{}", m.client)]);
        assert!(!entry.is_learner);
        assert_eq!(entry.peer_ur_ls, [format!("http://{}", peers[&m.id])]);
    }
    put(follower, "before-join", "old").await;

    // A learner added through a follower (which forwards to the leader), then started empty with
    // `join`: it receives the log and serves what was written before it joined.
    let (p4, c4) = listeners().await;
    let url4 = format!("http://{}", p4.local_addr().unwrap());
    let added = cluster_client(follower)
        .await
        .member_add(pb::MemberAddRequest { peer_ur_ls: vec![url4.clone()], is_learner: true })
        .await
        .unwrap()
        .into_inner();
    let new = added.member.unwrap();
    assert_eq!(new.id, member_id(p4.local_addr().unwrap()), "the id follows from the peer URL");
    assert!(new.is_learner && new.name.is_empty(), "not started yet");
    assert_eq!(added.members.len(), 4);
    let mut all_peers = peers.clone();
    all_peers.insert(new.id, p4.local_addr().unwrap());
    let learner = start(&dir, "m3", p4, c4, &all_peers, true).await;
    until(Duration::from_secs(15), "the learner catches up", || async {
        serializable_get(&learner, "before-join").await.as_deref() == Some(&b"old"[..])
    })
    .await;
    until(Duration::from_secs(10), "the learner publishes its name", || async {
        list(follower).await.iter().any(|m| m.id == learner.id && m.name == "m3" && m.is_learner)
    })
    .await;

    // etcd's errors.
    let mut c = cluster_client(follower).await;
    let dup = c.member_add(pb::MemberAddRequest { peer_ur_ls: vec![url4.clone()], is_learner: false }).await;
    assert_eq!(dup.unwrap_err().code(), Code::FailedPrecondition, "the same member twice");
    let bad = c
        .member_add(pb::MemberAddRequest { peer_ur_ls: vec!["tcp://nowhere".into()], is_learner: false })
        .await;
    assert_eq!(bad.unwrap_err().code(), Code::InvalidArgument);
    let unknown = c.member_remove(pb::MemberRemoveRequest { id: 12345 }).await.unwrap_err();
    assert_eq!((unknown.code(), unknown.message()), (Code::NotFound, "etcdserver: member not found"));
    let voter = c.member_promote(pb::MemberPromoteRequest { id: founders[0].id }).await.unwrap_err();
    assert_eq!(voter.code(), Code::FailedPrecondition, "only learners are promoted");

    // Promotion: four voters; writes still commit (a majority of four is three).
    c.member_promote(pb::MemberPromoteRequest { id: learner.id }).await.unwrap();
    let listed = list(follower).await;
    assert!(listed.iter().all(|m| !m.is_learner), "{listed:?}");
    put(follower, "after-promote", "v").await;
    until(Duration::from_secs(10), "the promoted member learns it votes", || async {
        learner.node.members().await.unwrap().1.iter().any(|m| m.attrs.id == learner.id && !m.is_learner)
    })
    .await;

    // Removal, through a follower: the list shrinks and writes go on.
    c.member_remove(pb::MemberRemoveRequest { id: learner.id }).await.unwrap();
    let listed = list(follower).await;
    assert_eq!(listed.len(), 3);
    assert!(listed.iter().all(|m| m.id != learner.id));
    put(follower, "after-remove", "v").await;
    drop(learner);

    // A voter added by MemberAdd starts as a learner and the leader promotes it on its own once
    // it has caught up.
    let (p5, c5) = listeners().await;
    let url5 = format!("http://{}", p5.local_addr().unwrap());
    let added =
        c.member_add(pb::MemberAddRequest { peer_ur_ls: vec![url5], is_learner: false }).await.unwrap();
    let id5 = added.into_inner().member.unwrap().id;
    let listed = list(follower).await;
    assert!(listed.iter().any(|m| m.id == id5 && m.is_learner), "a learner until caught up: {listed:?}");
    let mut peers5 = peers.clone();
    peers5.insert(id5, p5.local_addr().unwrap());
    let fifth = start(&dir, "m4", p5, c5, &peers5, true).await;
    until(Duration::from_secs(15), "the leader promotes the caught-up member", || async {
        list(follower).await.iter().any(|m| m.id == id5 && !m.is_learner && m.name == "m4")
    })
    .await;
    put(follower, "with-five", "v").await;
    until(Duration::from_secs(10), "the new voter applies new writes", || async {
        serializable_get(&fifth, "with-five").await.is_some()
    })
    .await;
}
