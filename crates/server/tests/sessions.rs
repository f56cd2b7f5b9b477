//! Exactly-once writes through client sessions (Raft thesis 6.3) on a real three-node cluster:
//! a write retried after its leader died, answer unheard, is applied once; sessions expire by
//! the leader's clock committed to the log; plain etcd requests are unaffected.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use balsa_server::kv_service::{self, KvService};
use balsa_server::pb::balsapb::session_client::SessionClient;
use balsa_server::pb::balsapb::RegisterSessionRequest;
use balsa_server::pb::etcdserverpb as pb;
use balsa_server::pb::etcdserverpb::kv_client::KvClient;
use balsa_server::{NodeConfig, NodeHandle};
use common::Dir;
use tokio::net::TcpListener;
use tonic::Code;

struct Member {
    node: Arc<NodeHandle>,
    client: SocketAddr,
    server: tokio::task::JoinHandle<()>,
}

async fn cluster(dir: &Dir) -> Vec<Member> {
    let mut peers = BTreeMap::new();
    let mut listeners = Vec::new();
    for id in 1..=3u64 {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        peers.insert(id, l.local_addr().unwrap());
        listeners.push(l);
    }
    let mut members = Vec::new();
    for (i, peer) in listeners.into_iter().enumerate() {
        let id = i as u64 + 1;
        let config = NodeConfig {
            id,
            cluster_id: 11,
            data_dir: dir.0.join(format!("n{id}")),
            peers: peers.clone(),
            tick: Duration::from_millis(10),
            snapshot_entries: 1000,
            join: false,
            name: format!("n{id}"),
            client_urls: Vec::new(),
        };
        let node = Arc::new(NodeHandle::start(config, peer).await.unwrap());
        let client = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = client.local_addr().unwrap();
        let server = tokio::spawn(kv_service::serve(KvService::new(node.clone(), 11, id), client));
        members.push(Member { node, client: addr, server });
    }
    members
}

async fn leader(members: &[Member]) -> usize {
    common::leader_index(&members.iter().map(|m| Some(&*m.node)).collect::<Vec<_>>()).await
}

/// A put in session `client` numbered `seq`.
fn put_in_session(client: u64, seq: u64, k: &str, v: &str) -> tonic::Request<pb::PutRequest> {
    let mut r = tonic::Request::new(pb::PutRequest { key: k.into(), value: v.into(), ..Default::default() });
    r.metadata_mut().insert("balsa-client-id", client.to_string().parse().unwrap());
    r.metadata_mut().insert("balsa-seq", seq.to_string().parse().unwrap());
    r
}

async fn kv(m: &Member) -> KvClient<tonic::transport::Channel> {
    KvClient::connect(format!("http://{}", m.client)).await.unwrap()
}

async fn version(m: &Member, k: &str) -> i64 {
    let r = kv(m).await.range(pb::RangeRequest { key: k.into(), ..Default::default() }).await.unwrap();
    r.into_inner().kvs.first().map_or(0, |kv| kv.version)
}

/// Runs `call` until it is not refused for want of a leader (a member that knows none refuses
/// what it cannot forward, "not leader", and proposes nothing): on a busy machine an election can
/// move the lead between finding the leader and the call. Other errors (an outcome unknown among
/// them), and 15 s of refusals, fail the test.
async fn until_a_leader_takes<T, F, Fut>(mut call: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match call().await {
            Ok(r) => return r.into_inner(),
            Err(s)
                if s.code() == Code::Unavailable
                    && s.message().contains("not leader")
                    && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(s) => panic!("refused: {s:?}"),
        }
    }
}

/// Registers a session with `timeout_ms`, through whichever member `sessions` reaches.
async fn register(
    sessions: &SessionClient<tonic::transport::Channel>,
    timeout_ms: u64,
) -> balsa_server::pb::balsapb::RegisterSessionResponse {
    until_a_leader_takes(|| {
        let mut sessions = sessions.clone();
        async move { sessions.register(RegisterSessionRequest { timeout_ms }).await }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_retried_after_the_leader_died_is_applied_once() {
    let dir = Dir::new("sessions-once");
    let mut members = cluster(&dir).await;
    let follower = (leader(&members).await + 1) % 3;
    let sessions = SessionClient::connect(format!("http://{}", members[follower].client)).await.unwrap();
    let session = register(&sessions, 30_000).await;
    assert!(session.client_id > 0 && session.timeout_ms == 30_000);

    // The write commits at the leader; then the leader dies, so (as far as the client knows) the
    // answer may have been lost between commit and reply.
    // (An election may move the lead between finding the leader and writing, on a busy machine:
    // a write refused for that was not applied, so it is sent again, to the new leader.)
    let deadline = Instant::now() + Duration::from_secs(15);
    let first = loop {
        let l = leader(&members).await;
        match kv(&members[l]).await.put(put_in_session(session.client_id, 1, "balance", "100")).await {
            Ok(r) => break r.into_inner(),
            Err(s) if s.code() == Code::Unavailable => {
                assert!(Instant::now() < deadline, "no leader took the write: {s:?}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(s) => panic!("the first write was refused: {s:?}"),
        }
    };
    let first_revision = first.header.unwrap().revision;
    let l = leader(&members).await;
    let dead = members.remove(l);
    dead.server.abort();
    drop(dead);

    // The client retries the same numbered write through a survivor until a new leader answers.
    let survivor = &members[0];
    let deadline = Instant::now() + Duration::from_secs(15);
    let retried = loop {
        match kv(survivor).await.put(put_in_session(session.client_id, 1, "balance", "100")).await {
            Ok(r) => break r.into_inner(),
            Err(s) if s.code() == Code::Unavailable => {
                assert!(Instant::now() < deadline, "no new leader: {s:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(s) => panic!("retry refused: {s:?}"),
        }
    };
    assert_eq!(
        retried.header.unwrap().revision,
        first_revision,
        "the retry is answered with the first result"
    );
    assert_eq!(version(survivor, "balance").await, 1, "applied once, not twice");

    // The next number is a new write; an old number is refused.
    kv(survivor).await.put(put_in_session(session.client_id, 2, "balance", "150")).await.unwrap();
    assert_eq!(version(survivor, "balance").await, 2);
    let stale =
        kv(survivor).await.put(put_in_session(session.client_id, 1, "balance", "100")).await.unwrap_err();
    assert_eq!(stale.code(), Code::FailedPrecondition);
    assert!(stale.message().contains("stale"), "{}", stale.message());
    assert_eq!(version(survivor, "balance").await, 2, "nothing applied by a stale retry");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_expire_by_committed_leader_time_and_plain_requests_are_unaffected() {
    let dir = Dir::new("sessions-expiry");
    let members = cluster(&dir).await;
    let l = leader(&members).await;
    let mut sessions = SessionClient::connect(format!("http://{}", members[l].client)).await.unwrap();
    let short = register(&sessions, 1_000).await;
    let long = register(&sessions, 60_000).await;
    assert_ne!(short.client_id, long.client_id);
    kv(&members[l]).await.put(put_in_session(short.client_id, 1, "a", "1")).await.unwrap();
    // Idle for well over a second of leader time (the leader commits its clock every second).
    tokio::time::sleep(Duration::from_millis(3_000)).await;
    let expired = kv(&members[l]).await.put(put_in_session(short.client_id, 2, "a", "2")).await.unwrap_err();
    assert_eq!(expired.code(), Code::FailedPrecondition);
    assert!(expired.message().contains("expired"), "{}", expired.message());
    assert_eq!(version(&members[l], "a").await, 1, "nothing applied on an expired session");
    kv(&members[l])
        .await
        .put(put_in_session(long.client_id, 1, "b", "1"))
        .await
        .expect("the long session lives");

    // No session: etcd's behaviour, a retry is a second write.
    let mut c = kv(&members[l]).await;
    for _ in 0..2 {
        c.put(pb::PutRequest { key: "plain".into(), value: "v".into(), ..Default::default() }).await.unwrap();
    }
    assert_eq!(version(&members[l], "plain").await, 2);
    // Half a session is an error, as is a number that is not one.
    let mut half = tonic::Request::new(pb::PutRequest { key: "x".into(), ..Default::default() });
    half.metadata_mut().insert("balsa-client-id", "1".parse().unwrap());
    assert_eq!(c.put(half).await.unwrap_err().code(), Code::InvalidArgument);
    let mut junk = put_in_session(long.client_id, 2, "x", "y");
    junk.metadata_mut().insert("balsa-seq", "two".parse().unwrap());
    assert_eq!(c.put(junk).await.unwrap_err().code(), Code::InvalidArgument);
    let unknown = c.put(put_in_session(999, 1, "x", "y")).await.unwrap_err();
    assert_eq!(unknown.code(), Code::FailedPrecondition);
    let bad = sessions.register(RegisterSessionRequest { timeout_ms: 5 }).await.unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
}

/// Appends take sessions too: a retried append gets its first offsets back and adds no records,
/// so a consumer never reads the same record twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_append_in_a_session_adds_its_records_once() {
    use balsa_server::pb::balsapb::log_client::LogClient;
    use balsa_server::pb::balsapb::{AppendRequest, CreateStreamRequest, ReadRequest};
    let dir = Dir::new("sessions-append");
    let members = cluster(&dir).await;
    let l = leader(&members).await;
    let endpoint = format!("http://{}", members[(l + 1) % 3].client);
    let log = LogClient::connect(endpoint.clone()).await.unwrap();
    let sessions = SessionClient::connect(endpoint).await.unwrap();
    let client = register(&sessions, 30_000).await.client_id;
    until_a_leader_takes(|| {
        let mut log = log.clone();
        async move {
            log.create_stream(CreateStreamRequest { stream: "orders".into(), ..Default::default() }).await
        }
    })
    .await;
    let append = |seq: u64, payload: &str| {
        let mut r = tonic::Request::new(AppendRequest {
            stream: "orders".into(),
            records: vec![payload.as_bytes().to_vec()],
        });
        r.metadata_mut().insert("balsa-client-id", client.to_string().parse().unwrap());
        r.metadata_mut().insert("balsa-seq", seq.to_string().parse().unwrap());
        r
    };
    // A client retries a refused append, as it retries one whose answer was lost: the session
    // makes either safe.
    let send = |seq: u64, payload: &'static str| {
        let log = log.clone();
        until_a_leader_takes(move || {
            let mut log = log.clone();
            let request = append(seq, payload);
            async move { log.append(request).await }
        })
    };
    let first = send(1, "a").await;
    let again = send(1, "a").await;
    assert_eq!((again.first_offset, again.last_offset), (first.first_offset, first.last_offset));
    let next = send(2, "b").await;
    assert_eq!(next.first_offset, first.last_offset + 1);
    let read = log
        .clone()
        .read(ReadRequest { stream: "orders".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let data: Vec<&[u8]> = read.records.iter().map(|r| r.data.as_slice()).collect();
    assert_eq!(data, [&b"a"[..], &b"b"[..]], "each record once");
}
