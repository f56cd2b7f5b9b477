//! Watch fan-out: W watch streams on the key prefix, opened before the writers start; each event
//! is timed on arrival and matched, after the run, to the acknowledgement of the put that made
//! it (by revision). Delivery latency = event arrival − put acknowledgement, floored at zero (an
//! event may arrive before the writer has read its put's answer).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use balsa_server::pb::etcdserverpb::{
    watch_client::WatchClient, watch_request, WatchCreateRequest, WatchRequest,
};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use crate::report::RunResult;
use crate::stats::Latencies;
use crate::workload::Keys;
use crate::BenchError;

/// At most this many events are kept, over all watchers (16 bytes each: 640 MiB at most).
const MAX_EVENTS_KEPT: usize = 40_000_000;
/// After the writers stop, watchers get this long to deliver the last put's event.
const DRAIN_LIMIT: Duration = Duration::from_secs(10);
/// A watch stream is announced `created` within this long, or the run stops.
const CREATE_LIMIT: Duration = Duration::from_secs(10);

/// The running watchers.
pub struct Watchers {
    /// Per watcher: its events (revision, arrival).
    tasks: Vec<JoinHandle<Vec<(i64, Instant)>>>,
    /// The last revision to wait for, and until when; `None` while the writers run.
    target: watch::Sender<Option<(i64, Instant)>>,
}

impl Watchers {
    /// Opens `count` watch streams on the prefix of `keys`, spread over `channels`, and waits
    /// until each is created.
    pub async fn start(channels: &[Channel], keys: &Keys, count: usize) -> Result<Self, BenchError> {
        if count == 0 {
            return Err(BenchError::Usage("--watchers: at least one".into()));
        }
        let (target, _) = watch::channel(None);
        let mut tasks = Vec::new();
        let cap = MAX_EVENTS_KEPT / count;
        for w in 0..count {
            let (requests, rx) = mpsc::channel(4);
            let create = WatchCreateRequest {
                key: keys.prefix.clone(),
                range_end: keys.prefix_end(),
                ..Default::default()
            };
            let request =
                WatchRequest { request_union: Some(watch_request::RequestUnion::CreateRequest(create)) };
            requests
                .send(request)
                .await
                .map_err(|_| BenchError::Connect("watch request queue closed".into()))?;
            let mut client = WatchClient::new(channels[w % channels.len()].clone());
            let open = async {
                let mut stream = client.watch(ReceiverStream::new(rx)).await?.into_inner();
                loop {
                    match stream.message().await? {
                        Some(response) if response.created => return Ok(stream),
                        Some(_) => continue,
                        None => return Err(tonic::Status::unavailable("watch stream closed before created")),
                    }
                }
            };
            let stream = tokio::time::timeout(CREATE_LIMIT, open)
                .await
                .map_err(|_| {
                    BenchError::Connect(format!("watcher {w}: not created within {CREATE_LIMIT:?}"))
                })?
                .map_err(|s| BenchError::Connect(format!("watcher {w}: {}", s.message())))?;
            tasks.push(tokio::spawn(receive(stream, requests, target.subscribe(), cap)));
        }
        Ok(Self { tasks, target })
    }

    /// Waits (at most [`DRAIN_LIMIT`]) for the last acknowledged put's event, then replaces the
    /// result's latency with delivery latency; the put latency moves to `extra.put_latency`.
    pub async fn finish(self, acks: Vec<(i64, Instant)>, result: &mut RunResult) {
        let last = acks.iter().map(|&(revision, _)| revision).max().unwrap_or(0);
        let _ = self.target.send(Some((last, Instant::now() + DRAIN_LIMIT)));
        let watchers = self.tasks.len();
        let acked: HashMap<i64, Instant> = acks.into_iter().collect();
        let mut delivery = Latencies::new();
        for task in self.tasks {
            let events = task.await.unwrap_or_default();
            for (revision, arrived) in events {
                if let Some(&ack) = acked.get(&revision) {
                    delivery.record(arrived.saturating_duration_since(ack));
                }
            }
        }
        let expected = acked.len() as u64 * watchers as u64;
        result.set_watch(watchers, delivery.summary(), expected);
    }
}

/// One watcher: records every event until it has seen the target revision or the drain limit.
async fn receive(
    mut stream: tonic::Streaming<balsa_server::pb::etcdserverpb::WatchResponse>,
    _requests: mpsc::Sender<WatchRequest>,
    mut target: watch::Receiver<Option<(i64, Instant)>>,
    cap: usize,
) -> Vec<(i64, Instant)> {
    let mut events = Vec::new();
    let mut last_seen = 0i64;
    let idle_limit = Instant::now() + Duration::from_secs(24 * 3600);
    loop {
        let goal = *target.borrow();
        if let Some((revision, _)) = goal {
            if last_seen >= revision {
                break;
            }
        }
        let deadline = goal.map_or(idle_limit, |(_, until)| until);
        tokio::select! {
            message = stream.message() => match message {
                Ok(Some(response)) => {
                    let arrived = Instant::now();
                    for kv in response.events.into_iter().filter_map(|e| e.kv) {
                        last_seen = last_seen.max(kv.mod_revision);
                        if events.len() < cap {
                            events.push((kv.mod_revision, arrived));
                        }
                    }
                }
                _ => break,
            },
            changed = target.changed() => if changed.is_err() { break },
            _ = tokio::time::sleep_until(deadline.into()) => break,
        }
    }
    events
}
