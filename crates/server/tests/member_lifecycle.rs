//! Starting and stopping members. Where a member serves its clients (`--client-threads`): on
//! the node's own thread (0, the default) or on a pool of threads of its own; either way every
//! service answers, and dropping the member frees its ports for a restart on the same data dir.
//! A data dir serves one node at a time.

mod common;

use std::time::{Duration, Instant};

use balsa_server::config::{FileConfig, ServerConfig, ServerFlags};
use balsa_server::member::{Member, StartError};
use balsa_server::pb::etcdserverpb as pb;
use balsa_server::pb::etcdserverpb::kv_client::KvClient;
use balsa_server::pb::etcdserverpb::watch_client::WatchClient;
use common::{free_port, Dir};
use tonic::transport::Channel;

/// Threads of this process with the given name.
fn threads_named(name: &str) -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.unwrap().path().join("comm")).ok())
        .filter(|comm| comm.trim_end() == name)
        .count()
}

/// A client of a member that has elected itself (writes fail with "no leader" until then).
async fn ready_client(member: &Member) -> KvClient<Channel> {
    let mut kv = KvClient::connect(format!("http://{}", member.client_addr)).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let probe = pb::RangeRequest { key: "probe".into(), ..Default::default() };
        match kv.range(probe).await {
            Ok(_) => return kv,
            Err(e) => assert!(Instant::now() < deadline, "the member never served: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A one-member cluster named `name` on `dir` and these ports, 10 ms ticks.
fn one_member(name: &str, dir: &Dir, client_port: u16, peer_port: u16, threads: usize) -> ServerConfig {
    let flags = ServerFlags {
        name: Some(name.into()),
        data_dir: Some(dir.0.clone()),
        listen_client_urls: Some(format!("http://127.0.0.1:{client_port}")),
        listen_peer_urls: Some(format!("http://127.0.0.1:{peer_port}")),
        initial_cluster: Some(format!("{name}=http://127.0.0.1:{peer_port}")),
        tick_ms: Some(10),
        client_threads: Some(threads),
        ..Default::default()
    };
    flags.resolve_with(FileConfig::default()).unwrap()
}

/// Starts a member on what a dropped one held (ports, data dir lock), retrying until it is
/// let go of; `what` names it in the failure.
async fn start_once_free(config: &ServerConfig, what: &str) -> Member {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match Member::start(config.clone()).await {
            Ok(m) => return m,
            Err(e) => assert!(Instant::now() < deadline, "{what}: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_are_served_on_the_nodes_thread_or_a_pool_and_a_restart_rebinds() {
    for threads in [0usize, 2] {
        let dir = Dir::new(&format!("client-threads-{threads}"));
        let config = one_member("c1", &dir, free_port(), free_port(), threads);
        assert_eq!(config.client_threads, threads);

        let member = Member::start(config.clone()).await.unwrap();
        let mut kv = ready_client(&member).await;
        // A pool's workers start with it (a thread names itself once it runs; the pool's
        // blocking threads start only when used).
        assert_eq!(threads_named("balsa-client"), threads, "a pool only when asked for one");
        // A watch (a stream held open) and a put (a proposal through the driver) both answer.
        let mut watch = WatchClient::connect(format!("http://{}", member.client_addr)).await.unwrap();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let create = pb::watch_request::RequestUnion::CreateRequest(pb::WatchCreateRequest {
            key: "k".into(),
            ..Default::default()
        });
        tx.send(pb::WatchRequest { request_union: Some(create) }).await.unwrap();
        let mut events =
            watch.watch(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap().into_inner();
        let created = events.message().await.unwrap().unwrap();
        assert!(created.created, "{created:?}");
        let put = kv
            .put(pb::PutRequest { key: "k".into(), value: "v".into(), ..Default::default() })
            .await
            .unwrap();
        let revision = put.into_inner().header.unwrap().revision;
        let event =
            tokio::time::timeout(Duration::from_secs(10), events.message()).await.unwrap().unwrap().unwrap();
        assert_eq!(event.events.len(), 1, "{event:?}");
        assert_eq!(event.events[0].kv.as_ref().unwrap().mod_revision, revision);
        drop((kv, watch, tx, events));

        // Dropped, the member lets go of its ports and data dir: a new one starts on them.
        drop(member);
        let member = start_once_free(&config, "the restart never bound").await;
        let mut kv = ready_client(&member).await;
        let got =
            kv.range(pb::RangeRequest { key: "k".into(), ..Default::default() }).await.unwrap().into_inner();
        assert_eq!(got.kvs.len(), 1, "the put survives the restart");
        assert_eq!(got.kvs[0].value, b"v");
        drop(member);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(threads_named("balsa-client"), 0, "a dropped member's pool is shut down");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_dir_serves_one_node_at_a_time() {
    let dir = Dir::new("data-dir-lock");
    let config = |client_port, peer_port| one_member("l1", &dir, client_port, peer_port, 0);
    let first = Member::start(config(free_port(), free_port())).await.unwrap();
    let mut kv = ready_client(&first).await;
    kv.put(pb::PutRequest { key: "k".into(), value: "first".into(), ..Default::default() }).await.unwrap();

    // Same name and cluster (so the data dir's cluster file agrees), other ports: still refused.
    let (client_port, peer_port) = (free_port(), free_port());
    match Member::start(config(client_port, peer_port)).await {
        Err(StartError::DataDir { message, .. }) => {
            assert!(message.contains("in use by another balsa node"), "{message}")
        }
        Err(e) => panic!("refused for another reason: {e}"),
        Ok(_) => panic!("a second node started on a data dir in use"),
    }
    // The refusal wrote nothing: the first member still serves what it had.
    let got =
        kv.range(pb::RangeRequest { key: "k".into(), ..Default::default() }).await.unwrap().into_inner();
    assert_eq!(got.kvs[0].value, b"first");
    drop(kv);

    drop(first);
    let second = start_once_free(&config(client_port, peer_port), "the lock was never released").await;
    let mut kv = ready_client(&second).await;
    let got =
        kv.range(pb::RangeRequest { key: "k".into(), ..Default::default() }).await.unwrap().into_inner();
    assert_eq!(got.kvs[0].value, b"first", "the next node finds the first one's data");
}
