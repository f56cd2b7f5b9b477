//! etcd's Watch service served by balsa: through a generated gRPC client against one node and a
//! three-node cluster, through the node API across a snapshot install, and through the real
//! `etcdctl watch`.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use balsa_kv::{Command, KeyRange, PutRequest};
use balsa_raft::Role;
use balsa_server::kv_service::{self, KvService};
use balsa_server::pb::etcdserverpb as pb;
use balsa_server::pb::etcdserverpb::kv_client::KvClient;
use balsa_server::pb::etcdserverpb::watch_client::WatchClient;
use balsa_server::watch_service::{WatchOptions, DUPLICATE_ID, EMPTY_RANGE, INVALID_WATCH_ID};
use balsa_server::{NodeConfig, NodeError, NodeHandle, WatchSpec, WatchUpdate};
use bytes::Bytes;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

const WAIT: Duration = Duration::from_secs(10);

struct Dir(std::path::PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn dir(name: &str) -> Dir {
    Dir(std::env::temp_dir().join(format!("balsa-watch-{name}-{}", std::process::id())))
}

fn config(
    id: u64,
    data_dir: std::path::PathBuf,
    peers: &BTreeMap<u64, SocketAddr>,
    snapshot_entries: u64,
) -> NodeConfig {
    NodeConfig {
        id,
        cluster_id: 99,
        data_dir,
        peers: peers.clone(),
        tick: Duration::from_millis(10),
        snapshot_entries,
        join: false,
        name: String::new(),
        client_urls: Vec::new(),
    }
}

async fn serve(node: Arc<NodeHandle>, id: u64, progress_interval: Duration) -> SocketAddr {
    let client = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = client.local_addr().unwrap();
    let options = WatchOptions { progress_interval };
    tokio::spawn(kv_service::serve_with(KvService::new(node, 99, id), client, options));
    addr
}

/// A one-member cluster serving the etcd API (progress notifications every `progress`).
async fn single_node(dir: &Dir, progress: Duration) -> (Arc<NodeHandle>, SocketAddr) {
    let peer = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let peers = BTreeMap::from([(1, peer.local_addr().unwrap())]);
    let node = Arc::new(NodeHandle::start(config(1, dir.0.clone(), &peers, 1000), peer).await.unwrap());
    let deadline = Instant::now() + WAIT;
    while node.status().await.unwrap().role != Role::Leader {
        assert!(Instant::now() < deadline, "a single node elects itself");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let addr = serve(node.clone(), 1, progress).await;
    (node, addr)
}

/// A client's watch stream: requests in, responses out.
struct Stream {
    requests: mpsc::Sender<pb::WatchRequest>,
    responses: Streaming<pb::WatchResponse>,
}

impl Stream {
    async fn open(addr: SocketAddr) -> Self {
        Self::open_with(addr, None).await
    }

    /// With an HTTP/2 receive window of `window` bytes (hyper's default is megabytes).
    async fn open_with(addr: SocketAddr, window: Option<u32>) -> Self {
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap();
        let channel = endpoint
            .initial_stream_window_size(window)
            .initial_connection_window_size(window)
            .connect()
            .await
            .unwrap();
        let mut client = WatchClient::new(channel);
        let (requests, rx) = mpsc::channel(16);
        let responses = client.watch(ReceiverStream::new(rx)).await.unwrap().into_inner();
        Self { requests, responses }
    }

    async fn send(&self, r: pb::watch_request::RequestUnion) {
        self.requests.send(pb::WatchRequest { request_union: Some(r) }).await.unwrap();
    }

    async fn create(&self, c: pb::WatchCreateRequest) {
        self.send(pb::watch_request::RequestUnion::CreateRequest(c)).await;
    }

    async fn cancel(&self, watch_id: i64) {
        self.send(pb::watch_request::RequestUnion::CancelRequest(pb::WatchCancelRequest { watch_id })).await;
    }

    async fn next(&mut self) -> pb::WatchResponse {
        tokio::time::timeout(WAIT, self.responses.message())
            .await
            .expect("a watch response in time")
            .expect("the stream is healthy")
            .expect("the stream is open")
    }

    /// Nothing arrives for a while.
    async fn quiet(&mut self, wait: Duration) -> Option<pb::WatchResponse> {
        tokio::time::timeout(wait, self.responses.message()).await.ok().map(|r| r.unwrap().unwrap())
    }

    /// Responses until `n` events arrived for `watch_id` (failing on any other watch's).
    async fn events(&mut self, watch_id: i64, n: usize) -> Vec<balsa_server::pb::mvccpb::Event> {
        let mut out = Vec::new();
        while out.len() < n {
            let r = self.next().await;
            assert_eq!(r.watch_id, watch_id, "unexpected response {r:?}");
            assert!(!r.canceled && !r.created, "{r:?}");
            let last = r.events.last().map(|e| e.kv.as_ref().unwrap().mod_revision);
            assert_eq!(r.header.as_ref().unwrap().revision, last.unwrap(), "header revision = last event's");
            out.extend(r.events);
        }
        assert_eq!(out.len(), n, "no more events than expected");
        out
    }
}

fn watch(key: &str, range_end: &str) -> pb::WatchCreateRequest {
    pb::WatchCreateRequest { key: key.into(), range_end: range_end.into(), ..Default::default() }
}

fn put(k: &str, v: &str) -> pb::PutRequest {
    pb::PutRequest { key: k.into(), value: v.into(), ..Default::default() }
}

fn kv_of(e: &balsa_server::pb::mvccpb::Event) -> (i32, String, String, i64) {
    let kv = e.kv.as_ref().unwrap();
    let s = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (e.r#type, s(&kv.key), s(&kv.value), kv.mod_revision)
}

const PUT: i32 = 0;
const DELETE: i32 = 1;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_speaks_etcd() {
    let dir = dir("api");
    let (_node, addr) = single_node(&dir, Duration::from_secs(600)).await;
    let mut kv = KvClient::connect(format!("http://{addr}")).await.unwrap();
    let r1 = kv.put(put("a", "1")).await.unwrap().into_inner().header.unwrap().revision;
    let r2 = kv.put(put("a", "2")).await.unwrap().into_inner().header.unwrap().revision;
    let mut s = Stream::open(addr).await;

    // History from a past revision, with previous values; the first automatic id is 0, as etcd's.
    s.create(pb::WatchCreateRequest { start_revision: r1, prev_kv: true, ..watch("a", "") }).await;
    let created = s.next().await;
    assert!(created.created && !created.canceled, "{created:?}");
    assert_eq!((created.watch_id, created.header.as_ref().unwrap().revision), (0, r2));
    assert_eq!(created.header.as_ref().unwrap().cluster_id, 99);
    let history = s.events(0, 2).await;
    assert_eq!(kv_of(&history[0]), (PUT, "a".into(), "1".into(), r1));
    assert_eq!(kv_of(&history[1]), (PUT, "a".into(), "2".into(), r2));
    assert!(history[0].prev_kv.is_none());
    assert_eq!(history[1].prev_kv.as_ref().unwrap().value, b"1", "prev_kv asked for");

    // A prefix watch that drops puts, and one with a client-chosen id.
    let no_put = pb::WatchCreateRequest { filters: vec![0], ..watch("fruit/", "fruit0") };
    s.create(no_put).await;
    assert_eq!(s.next().await.watch_id, 1);
    s.create(pb::WatchCreateRequest { watch_id: 100, ..watch("fruit/", "fruit0") }).await;
    let r = s.next().await;
    assert!(r.created && r.watch_id == 100, "{r:?}");
    // Live: puts reach watch 100 only; the delete reaches both; nothing else is in range.
    let r3 = kv.put(put("fruit/apple", "red")).await.unwrap().into_inner().header.unwrap().revision;
    kv.put(put("vegetable", "x")).await.unwrap();
    let live = s.events(100, 1).await;
    assert_eq!(kv_of(&live[0]), (PUT, "fruit/apple".into(), "red".into(), r3));
    assert!(live[0].prev_kv.is_none(), "no prev_kv unless asked for");
    let del = pb::DeleteRangeRequest { key: "fruit/apple".into(), ..Default::default() };
    let r4 = kv.delete_range(del).await.unwrap().into_inner().header.unwrap().revision;
    let mut deletes = BTreeMap::new();
    for _ in 0..2 {
        let r = s.next().await;
        assert_eq!(r.events.len(), 1, "{r:?}");
        deletes.insert(r.watch_id, kv_of(&r.events[0]));
    }
    let gone = (DELETE, "fruit/apple".to_string(), String::new(), r4);
    assert_eq!(deletes, BTreeMap::from([(1, gone.clone()), (100, gone)]));

    // etcd's refusals: a duplicate id, an empty range (created and canceled, id -1).
    s.create(pb::WatchCreateRequest { watch_id: 100, ..watch("x", "") }).await;
    let r = s.next().await;
    assert_eq!(
        (r.created, r.canceled, r.watch_id, r.cancel_reason.as_str()),
        (true, true, INVALID_WATCH_ID, DUPLICATE_ID)
    );
    s.create(watch("b", "a")).await;
    let r = s.next().await;
    assert_eq!(
        (r.created, r.canceled, r.watch_id, r.cancel_reason.as_str()),
        (true, true, INVALID_WATCH_ID, EMPTY_RANGE)
    );

    // Cancel: answered, and no event for it afterwards; an unknown id is ignored, as etcd does.
    s.cancel(100).await;
    let r = s.next().await;
    assert_eq!((r.watch_id, r.canceled, r.created), (100, true, false));
    s.cancel(999).await;
    kv.put(put("fruit/pear", "green")).await.unwrap();
    let del = pb::DeleteRangeRequest { key: "fruit/pear".into(), ..Default::default() };
    let r6 = kv.delete_range(del).await.unwrap().into_inner().header.unwrap().revision;
    let after = s.events(1, 1).await;
    assert_eq!(kv_of(&after[0]).3, r6, "only the remaining watch hears the pear");

    // Progress request: answered with the current revision, for the whole stream.
    s.send(pb::watch_request::RequestUnion::ProgressRequest(pb::WatchProgressRequest {})).await;
    let r = s.next().await;
    assert_eq!((r.watch_id, r.header.unwrap().revision, r.events.len()), (INVALID_WATCH_ID, r6, 0));

    // A start revision compacted away: created, then canceled with the compaction point.
    kv.compact(pb::CompactionRequest { revision: r6, physical: false }).await.unwrap();
    s.create(pb::WatchCreateRequest { start_revision: r1, ..watch("a", "") }).await;
    let created = s.next().await;
    assert!(created.created && !created.canceled);
    let r = s.next().await;
    assert_eq!((r.watch_id, r.canceled, r.compact_revision), (created.watch_id, true, r6), "{r:?}");
    // From the compaction point itself history still works; "\0" as range end is "from key on".
    s.create(pb::WatchCreateRequest { start_revision: r6, ..watch("fruit/", "\0") }).await;
    let id = s.next().await.watch_id;
    assert_eq!(kv_of(&s.events(id, 1).await[0]), (DELETE, "fruit/pear".into(), String::new(), r6));
    // An empty create request, a request with nothing in it: the stream keeps serving.
    s.requests.send(pb::WatchRequest { request_union: None }).await.unwrap();
    let r7 = kv.put(put("zebra", "z")).await.unwrap().into_inner().header.unwrap().revision;
    assert_eq!(kv_of(&s.events(id, 1).await[0]).3, r7);
    assert!(s.quiet(Duration::from_millis(200)).await.is_none(), "nothing else arrives");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_notify_reports_the_revision_to_quiet_watches() {
    let dir = dir("progress");
    let (_node, addr) = single_node(&dir, Duration::from_millis(200)).await;
    let mut kv = KvClient::connect(format!("http://{addr}")).await.unwrap();
    let rev = kv.put(put("p", "1")).await.unwrap().into_inner().header.unwrap().revision;
    let mut s = Stream::open(addr).await;
    s.create(pb::WatchCreateRequest { progress_notify: true, ..watch("p", "") }).await;
    s.create(watch("q", "")).await; // no progress_notify: never notified
    assert_eq!(s.next().await.watch_id, 0);
    assert_eq!(s.next().await.watch_id, 1);
    for _ in 0..2 {
        let r = s.next().await;
        assert_eq!((r.watch_id, r.events.len(), r.created, r.canceled), (0, 0, false, false), "{r:?}");
        assert_eq!(r.header.unwrap().revision, rev);
    }
    let rev2 = kv.put(put("p", "2")).await.unwrap().into_inner().header.unwrap().revision;
    // The event arrives (possibly after a notification already on its way), then notifications
    // carry the new revision.
    let mut saw_event = false;
    let deadline = Instant::now() + WAIT;
    loop {
        let r = s.next().await;
        assert_eq!(r.watch_id, 0);
        if !r.events.is_empty() {
            saw_event = true;
        } else if saw_event {
            assert_eq!(r.header.unwrap().revision, rev2);
            break;
        }
        assert!(Instant::now() < deadline);
    }
}

async fn leader_of(nodes: &[Arc<NodeHandle>]) -> usize {
    common::leader_index(&nodes.iter().map(|n| Some(&**n)).collect::<Vec<_>>()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_streams_writes_made_through_the_leader() {
    let dir = dir("cluster");
    let mut listeners = Vec::new();
    let mut peers = BTreeMap::new();
    for id in 1..=3u64 {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        peers.insert(id, l.local_addr().unwrap());
        listeners.push(l);
    }
    let mut nodes = Vec::new();
    for (i, l) in listeners.into_iter().enumerate() {
        let id = i as u64 + 1;
        nodes.push(Arc::new(
            NodeHandle::start(config(id, dir.0.join(format!("n{id}")), &peers, 1000), l).await.unwrap(),
        ));
    }
    let mut addrs = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        addrs.push(serve(n.clone(), i as u64 + 1, Duration::from_secs(600)).await);
    }
    let leader = leader_of(&nodes).await;
    let follower = (leader + 1) % 3;
    let mut s = Stream::open(addrs[follower]).await;
    s.create(pb::WatchCreateRequest { prev_kv: true, ..watch("k/", "k0") }).await;
    let created = s.next().await;
    assert_eq!(created.header.unwrap().member_id, follower as u64 + 1, "answered by the follower");
    let mut kv = KvClient::connect(format!("http://{}", addrs[leader])).await.unwrap();
    let mut revisions = Vec::new();
    for i in 0..5 {
        let value = i.to_string();
        revisions.push(kv.put(put("k/x", &value)).await.unwrap().into_inner().header.unwrap().revision);
    }
    let events = s.events(0, 5).await;
    let seen: Vec<i64> = events.iter().map(|e| kv_of(e).3).collect();
    assert_eq!(seen, revisions, "every write, in order, once");
    assert_eq!(events[4].prev_kv.as_ref().unwrap().value, b"3");
}

/// A node that joins late gets the leader's snapshot (its log was compacted): a watch registered
/// on it before the snapshot arrived still sees every revision exactly once, then live writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_continues_exactly_across_a_snapshot_install() {
    let dir = dir("snapshot");
    let mut listeners = Vec::new();
    let mut peers = BTreeMap::new();
    for id in 1..=3u64 {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        peers.insert(id, l.local_addr().unwrap());
        listeners.push(Some(l));
    }
    let cfg = |id: u64| config(id, dir.0.join(format!("n{id}")), &peers, 10);
    let mut nodes = Vec::new();
    for id in 1..=2u64 {
        nodes.push(Arc::new(
            NodeHandle::start(cfg(id), listeners[id as usize - 1].take().unwrap()).await.unwrap(),
        ));
    }
    let put_via = |nodes: Vec<Arc<NodeHandle>>, k: String| async move {
        let deadline = Instant::now() + WAIT;
        loop {
            let leader = leader_of(&nodes).await;
            let req = PutRequest {
                key: Bytes::from(k.clone()),
                value: Bytes::from_static(b"v"),
                ..Default::default()
            };
            match nodes[leader].propose(Command::Put(req)).await {
                Ok(_) => return,
                Err(NodeError::NotLeader { .. } | NodeError::Dropped) => {}
                Err(e) => panic!("{e}"),
            }
            assert!(Instant::now() < deadline, "{k} never written");
        }
    };
    for i in 0..40 {
        put_via(nodes.clone(), format!("k/{i:02}")).await;
    }
    let leader = leader_of(&nodes).await;
    // Snapshots are written off the driver and installed once durable: wait for one to land.
    let deadline = Instant::now() + WAIT;
    while nodes[leader].status().await.unwrap().snapshot_index <= 1 {
        assert!(Instant::now() < deadline, "the leader compacted its log");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let late = Arc::new(NodeHandle::start(cfg(3), listeners[2].take().unwrap()).await.unwrap());
    let (registered_at, mut feed) = late.watch(WatchSpec::new(KeyRange::prefix("k/"))).await.unwrap();
    nodes.push(late.clone());
    for i in 40..45 {
        put_via(nodes.clone(), format!("k/{i:02}")).await;
    }
    let mut seen = Vec::new();
    while seen.len() < 45 - (registered_at as usize - 1) {
        match tokio::time::timeout(WAIT, feed.recv()).await.expect("updates in time").expect("node running") {
            WatchUpdate::Events { events, .. } => seen.extend(events.iter().map(|e| e.kv.mod_revision)),
            other => panic!("{other:?}"),
        }
    }
    let expected: Vec<i64> = (registered_at + 1..=46).collect();
    assert_eq!(seen, expected, "from registration on, every revision once, in order");
    assert!(late.status().await.unwrap().snapshot_index > 1, "the late node installed a snapshot");
}

/// The real `etcdctl watch` (Debian's etcd-client), when installed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_watch_prints_puts_and_deletes() {
    let etcdctl = "/usr/bin/etcdctl";
    if !std::path::Path::new(etcdctl).exists() {
        eprintln!("NOTE: etcdctl is not installed; apt-get install etcd-client to run this test");
        return;
    }
    let dir = dir("etcdctl");
    let (_node, addr) = single_node(&dir, Duration::from_secs(600)).await;
    let mut kv = KvClient::connect(format!("http://{addr}")).await.unwrap();
    let mut child = std::process::Command::new(etcdctl)
        .env("ETCDCTL_API", "3")
        .args([&format!("--endpoints={addr}"), "watch", "foo", "--prefix"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stdout = child.stdout.take().unwrap();
    let _child = Kill(child);
    let (lines_tx, mut lines) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines() {
            if lines_tx.send(line.unwrap_or_default()).is_err() {
                return;
            }
        }
    });
    // etcdctl says nothing when its watch is set up: write until it reports a write.
    let deadline = Instant::now() + WAIT;
    loop {
        kv.put(put("foo/ready", "1")).await.unwrap();
        if let Ok(Some(first)) = tokio::time::timeout(Duration::from_millis(300), lines.recv()).await {
            assert_eq!(first, "PUT");
            break;
        }
        assert!(Instant::now() < deadline, "etcdctl watch never printed anything");
    }
    kv.put(put("other", "x")).await.unwrap(); // not under the prefix
    kv.put(put("foo/a", "1")).await.unwrap();
    kv.delete_range(pb::DeleteRangeRequest { key: "foo/a".into(), ..Default::default() }).await.unwrap();
    kv.put(put("foobar", "2")).await.unwrap();
    // Without prev_kv every event is three lines: type, key, value (empty for a delete).
    async fn line(lines: &mut mpsc::UnboundedReceiver<String>) -> String {
        tokio::time::timeout(WAIT, lines.recv()).await.expect("etcdctl printed in time").expect("running")
    }
    let mut first = vec!["PUT".to_string(), line(&mut lines).await, line(&mut lines).await];
    assert_eq!(first[1], "foo/ready");
    let mut got = Vec::new();
    while got.len() < 3 {
        let event = [line(&mut lines).await, line(&mut lines).await, line(&mut lines).await];
        if event[1] != "foo/ready" {
            got.push(event.join("|"));
        } else {
            first = event.to_vec();
        }
    }
    assert_eq!(first[2], "1");
    assert_eq!(got, ["PUT|foo/a|1", "DELETE|foo/a|", "PUT|foobar|2"]);
}

/// A client that does not read: the node keeps applying (its writes are answered), the watch
/// falls behind and is later caught up from history — every revision once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_misses_nothing() {
    let dir = dir("slow");
    let (_node, addr) = single_node(&dir, Duration::from_secs(600)).await;
    let mut kv = KvClient::connect(format!("http://{addr}")).await.unwrap();
    let mut s = Stream::open_with(addr, Some(65_535)).await;
    s.create(watch("big/", "big0")).await;
    assert!(s.next().await.created);
    // Large values, so the stream's flow-control window and buffers fill well before the end.
    let value = "v".repeat(2048);
    let mut revisions = Vec::new();
    for i in 0..500 {
        let key = format!("big/{}", i % 7);
        let r = tokio::time::timeout(WAIT, kv.put(put(&key, &value)))
            .await
            .expect("writes never wait for watchers");
        revisions.push(r.unwrap().into_inner().header.unwrap().revision);
    }
    let mut seen = Vec::new();
    let mut batched = false;
    while seen.len() < revisions.len() {
        let r = s.next().await;
        assert_eq!(r.watch_id, 0);
        batched |= r.events.len() > 1;
        seen.extend(r.events.iter().map(|e| kv_of(e).3));
    }
    assert_eq!(seen, revisions);
    assert!(batched, "the watch lagged and was caught up from history (one response, many revisions)");
}
