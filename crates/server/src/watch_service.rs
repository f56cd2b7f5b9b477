//! etcd's v3 `Watch` service: one bidirectional stream per client carries any number of watches.
//!
//! Each stream is one task that owns a [`WatchFeed`] of the node's watch hub and multiplexes
//! three sources: the client's requests (create, cancel, progress), the feed's updates, and the
//! progress-notify ticker. Because one task does everything for a stream, a watch's `created`
//! response always precedes its events, and nothing follows its `canceled` response. A client
//! that reads slowly makes this task wait on its send, so the feed fills and the hub lets the
//! stream's watchers lag (and catches them up later) — the node never waits for a client.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use balsa_kv as kv;
use bytes::Bytes;
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::kv_service::{status_of, MAX_REQUEST_BYTES};
use crate::node::NodeHandle;
use crate::pb::etcdserverpb as pb;
use crate::pb::etcdserverpb::watch_server::Watch;
use crate::pb::mvccpb;
use crate::watch_hub::{WatchFeed, WatchSpec, WatchUpdate};

/// etcd's id for "no watch" (a refused create, a stream-wide progress response).
pub const INVALID_WATCH_ID: i64 = -1;

/// etcd's message for a create whose key range is empty.
pub const EMPTY_RANGE: &str = "mvcc: watcher range is empty";

/// etcd's message for a client-chosen watch id already in use on the stream.
pub const DUPLICATE_ID: &str = "mvcc: duplicate watch ID provided on the WatchStream";

/// Settings of the Watch service.
#[derive(Clone, Copy, Debug)]
pub struct WatchOptions {
    /// How often watches created with `progress_notify` hear the current revision when they had
    /// no events (etcd: 10 minutes).
    pub progress_interval: Duration,
}

impl Default for WatchOptions {
    fn default() -> Self {
        Self { progress_interval: Duration::from_secs(600) }
    }
}

/// The Watch service of one member.
pub struct WatchService {
    node: Arc<NodeHandle>,
    cluster_id: u64,
    member_id: u64,
    options: WatchOptions,
}

impl WatchService {
    /// Serves `node` as member `member_id` of cluster `cluster_id`.
    pub fn new(node: Arc<NodeHandle>, cluster_id: u64, member_id: u64, options: WatchOptions) -> Self {
        Self { node, cluster_id, member_id, options }
    }
}

#[tonic::async_trait]
impl Watch for WatchService {
    type WatchStream = ReceiverStream<Result<pb::WatchResponse, Status>>;

    async fn watch(
        &self,
        request: Request<Streaming<pb::WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let feed = self.node.watch_feed().map_err(status_of)?;
        // A small buffer: backpressure should reach the hub's feed, which lets watchers lag
        // without holding their events.
        let (out, rx) = mpsc::channel(16);
        let stream = WatchStream {
            feed,
            out,
            cluster_id: self.cluster_id,
            member_id: self.member_id,
            watches: BTreeMap::new(),
            ids: BTreeMap::new(),
            next_name: 0,
            next_auto: 0,
        };
        tokio::spawn(stream.run(request.into_inner(), self.options.progress_interval));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// One watch of a stream.
struct ActiveWatch {
    /// Its etcd watch id.
    id: i64,
    progress_notify: bool,
    fragment: bool,
    /// No events since the last progress tick (etcd notifies only quiet watches).
    quiet: bool,
}

/// The state of one client stream.
struct WatchStream {
    feed: WatchFeed,
    out: mpsc::Sender<Result<pb::WatchResponse, Status>>,
    cluster_id: u64,
    member_id: u64,
    /// Active watches by their name in the hub. Names are never reused, so updates still queued
    /// for a canceled watch cannot be mistaken for a new watch that took the same etcd id.
    watches: BTreeMap<u64, ActiveWatch>,
    /// Hub names by etcd watch id.
    ids: BTreeMap<i64, u64>,
    next_name: u64,
    next_auto: i64,
}

enum Next {
    Request(Result<Option<pb::WatchRequest>, Status>),
    Update(Option<WatchUpdate>),
    Tick,
    ClientGone,
}

impl WatchStream {
    async fn run(mut self, mut inbound: Streaming<pb::WatchRequest>, interval: Duration) {
        let interval = interval.max(Duration::from_millis(1));
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let next = tokio::select! {
                r = inbound.message() => Next::Request(r),
                u = self.feed.recv() => Next::Update(u),
                _ = ticker.tick() => Next::Tick,
                _ = self.out.closed() => Next::ClientGone,
            };
            let keep_going = match next {
                Next::Request(Ok(Some(r))) => self.request(r).await,
                Next::Request(Ok(None)) | Next::ClientGone => false,
                Next::Request(Err(status)) => {
                    let _ = self.out.send(Err(status)).await;
                    false
                }
                Next::Update(Some(u)) => self.update(u).await,
                Next::Update(None) => {
                    let _ = self.out.send(Err(Status::unavailable("etcdserver: server stopped"))).await;
                    false
                }
                Next::Tick => self.progress_tick(),
            };
            if !keep_going {
                return; // dropping the feed removes this stream's watchers from the hub
            }
        }
    }

    fn header(&self, revision: i64) -> Option<pb::ResponseHeader> {
        crate::kv_service::header(self.cluster_id, self.member_id, revision)
    }

    async fn send(&self, response: pb::WatchResponse) -> bool {
        self.out.send(Ok(response)).await.is_ok()
    }

    /// Ends the stream with a node error.
    async fn fail(&self, e: crate::NodeError) -> bool {
        let _ = self.out.send(Err(status_of(e))).await;
        false
    }

    async fn request(&mut self, request: pb::WatchRequest) -> bool {
        use pb::watch_request::RequestUnion;
        match request.request_union {
            Some(RequestUnion::CreateRequest(c)) => self.create(c).await,
            Some(RequestUnion::CancelRequest(c)) => self.cancel(c.watch_id).await,
            Some(RequestUnion::ProgressRequest(_)) => match self.feed.request_progress(None) {
                Ok(()) => true,
                Err(e) => self.fail(e).await,
            },
            // etcd ignores a request it does not understand rather than end the stream.
            None => true,
        }
    }

    /// A create etcd refuses: `created` and `canceled` at once, with the reason and no id.
    async fn refuse(&self, reason: &str) -> bool {
        let revision = match self.feed.revision().await {
            Ok(r) => r,
            Err(e) => return self.fail(e).await,
        };
        self.send(pb::WatchResponse {
            header: self.header(revision),
            watch_id: INVALID_WATCH_ID,
            created: true,
            canceled: true,
            cancel_reason: reason.to_string(),
            ..Default::default()
        })
        .await
    }

    async fn create(&mut self, c: pb::WatchCreateRequest) -> bool {
        // etcd's conventions: an empty key is "\0" (the smallest key); an empty end is the key
        // alone; an end of "\0" is every key from `key` on; any other end must come after key.
        let key = if c.key.is_empty() { vec![0] } else { c.key };
        if !c.range_end.is_empty() && c.range_end != [0] && key >= c.range_end {
            return self.refuse(EMPTY_RANGE).await;
        }
        let id = if c.watch_id == 0 {
            while self.ids.contains_key(&self.next_auto) {
                self.next_auto += 1;
            }
            self.next_auto += 1;
            self.next_auto - 1
        } else if self.ids.contains_key(&c.watch_id) {
            return self.refuse(DUPLICATE_ID).await;
        } else {
            c.watch_id
        };
        let spec = WatchSpec {
            range: kv::KeyRange { key: Bytes::from(key), range_end: Bytes::from(c.range_end) },
            start_revision: c.start_revision,
            prev_kv: c.prev_kv,
            no_put: c.filters.contains(&(pb::watch_create_request::FilterType::Noput as i32)),
            no_delete: c.filters.contains(&(pb::watch_create_request::FilterType::Nodelete as i32)),
        };
        let name = self.next_name;
        self.next_name += 1;
        let revision = match self.feed.watch(name, spec).await {
            Ok(r) => r,
            Err(e) => return self.fail(e).await,
        };
        self.ids.insert(id, name);
        self.watches.insert(
            name,
            ActiveWatch { id, progress_notify: c.progress_notify, fragment: c.fragment, quiet: true },
        );
        self.send(pb::WatchResponse {
            header: self.header(revision),
            watch_id: id,
            created: true,
            ..Default::default()
        })
        .await
    }

    async fn cancel(&mut self, id: i64) -> bool {
        // etcd answers nothing for an id it does not know, and keeps the stream.
        let Some(name) = self.ids.remove(&id) else { return true };
        self.watches.remove(&name);
        let revision = match self.feed.cancel(name).await {
            Ok(r) => r,
            Err(e) => return self.fail(e).await,
        };
        self.send(pb::WatchResponse {
            header: self.header(revision),
            watch_id: id,
            canceled: true,
            ..Default::default()
        })
        .await
    }

    async fn update(&mut self, update: WatchUpdate) -> bool {
        match update {
            WatchUpdate::Events { watch, revision, events } => {
                let Some(w) = self.watches.get_mut(&watch) else { return true }; // canceled meanwhile
                w.quiet = false;
                let (id, fragment) = (w.id, w.fragment);
                let response = pb::WatchResponse {
                    header: self.header(revision),
                    watch_id: id,
                    events: events.into_iter().map(event_out).collect(),
                    ..Default::default()
                };
                if fragment {
                    for piece in fragments(response, MAX_REQUEST_BYTES) {
                        if !self.send(piece).await {
                            return false;
                        }
                    }
                    true
                } else {
                    self.send(response).await
                }
            }
            WatchUpdate::Progress { watch: Some(watch), revision } => {
                let Some(w) = self.watches.get(&watch) else { return true };
                let response =
                    pb::WatchResponse { header: self.header(revision), watch_id: w.id, ..Default::default() };
                self.send(response).await
            }
            WatchUpdate::Progress { watch: None, revision } => {
                let response = pb::WatchResponse {
                    header: self.header(revision),
                    watch_id: INVALID_WATCH_ID,
                    ..Default::default()
                };
                self.send(response).await
            }
            WatchUpdate::Canceled { watch, revision, compact_revision, reason } => {
                let Some(w) = self.watches.remove(&watch) else { return true };
                self.ids.remove(&w.id);
                self.send(pb::WatchResponse {
                    header: self.header(revision),
                    watch_id: w.id,
                    canceled: true,
                    compact_revision,
                    cancel_reason: reason,
                    ..Default::default()
                })
                .await
            }
        }
    }

    /// etcd's progress notify: each watch that asked for it and had no events since the last
    /// tick hears the current revision (through the hub, so it comes after any queued events).
    fn progress_tick(&mut self) -> bool {
        for (name, w) in &mut self.watches {
            if w.progress_notify && w.quiet && self.feed.request_progress(Some(*name)).is_err() {
                return false;
            }
            w.quiet = true;
        }
        true
    }
}

fn event_out(e: kv::Event) -> mvccpb::Event {
    let kv_out = |k: kv::KeyValue| mvccpb::KeyValue {
        key: k.key.to_vec(),
        create_revision: k.create_revision,
        mod_revision: k.mod_revision,
        version: k.version,
        value: k.value.to_vec(),
        lease: k.lease,
    };
    let kind = match e.kind {
        kv::EventKind::Put => mvccpb::event::EventType::Put,
        kv::EventKind::Delete => mvccpb::event::EventType::Delete,
    };
    mvccpb::Event { r#type: kind as i32, kv: Some(kv_out(e.kv)), prev_kv: e.prev_kv.map(kv_out) }
}

/// Splits a response whose encoding reaches `limit` into pieces under it (each with at least one
/// event); every piece but the last is marked `fragment`, so the client joins them again.
fn fragments(response: pb::WatchResponse, limit: usize) -> Vec<pb::WatchResponse> {
    if response.encoded_len() < limit || response.events.len() < 2 {
        return vec![response];
    }
    let mut pieces = Vec::new();
    let empty = pb::WatchResponse { events: Vec::new(), fragment: true, ..response.clone() };
    let mut current = empty.clone();
    for event in response.events {
        current.events.push(event);
        if current.events.len() > 1 && current.encoded_len() >= limit {
            let overflow = current.events.pop().expect("just pushed");
            pieces.push(std::mem::replace(&mut current, empty.clone()));
            current.events.push(overflow);
        }
    }
    current.fragment = false;
    pieces.push(current);
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_responses_split_into_fragments_under_the_limit() {
        let event = |i: u8| mvccpb::Event {
            r#type: 0,
            kv: Some(mvccpb::KeyValue { key: vec![i], value: vec![i; 100], ..Default::default() }),
            prev_kv: None,
        };
        let response =
            pb::WatchResponse { watch_id: 3, events: (0..10).map(event).collect(), ..Default::default() };
        assert_eq!(fragments(response.clone(), 1 << 20).len(), 1, "small responses are not split");
        let pieces = fragments(response, 350);
        assert!(pieces.len() >= 4, "{}", pieces.len());
        assert!(pieces.iter().all(|p| p.encoded_len() < 350 && p.watch_id == 3));
        let flags: Vec<bool> = pieces.iter().map(|p| p.fragment).collect();
        assert!(flags[..flags.len() - 1].iter().all(|f| *f) && !flags[flags.len() - 1]);
        let keys: Vec<u8> =
            pieces.iter().flat_map(|p| p.events.iter().map(|e| e.kv.as_ref().unwrap().key[0])).collect();
        assert_eq!(keys, (0..10).collect::<Vec<u8>>(), "every event once, in order");
    }
}
