//! Watches that survive the loss of the member serving them.
//!
//! A [`Watcher`] remembers the revision after the last one it has fully received. When its
//! stream breaks (the member stopped, the connection dropped), it opens a new stream on another
//! endpoint and creates the watch again from that revision: history fills what happened in
//! between, so the events seen are exactly those of the keys, in revision order, none twice and
//! none missing. If compaction removed that history meanwhile, [`Watcher::next`] says so with
//! [`Error::Compacted`] rather than skipping ahead.

use std::collections::VecDeque;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

use crate::client::Client;
use crate::error::{Error, Result};
use crate::kv::{prefix_end, KeyValue};
use crate::pb;
use crate::pb::watch_client::WatchClient;

/// Options of [`Client::watch`]; the default watches one key from the next revision.
#[derive(Debug, Clone, Default)]
pub struct WatchOptions {
    prefix: bool,
    range_end: Option<Vec<u8>>,
    start_revision: i64,
    prev_kv: bool,
    no_put: bool,
    no_delete: bool,
}

impl WatchOptions {
    /// One key, from the next revision.
    pub fn new() -> Self {
        Self::default()
    }
    /// Every key starting with the key.
    pub fn prefix(mut self) -> Self {
        self.prefix = true;
        self
    }
    /// Keys in `[key, end)`.
    pub fn range_end(mut self, end: impl Into<Vec<u8>>) -> Self {
        self.range_end = Some(end.into());
        self
    }
    /// Start at `revision` (replaying history from there); 0 means the next revision.
    pub fn start_revision(mut self, revision: i64) -> Self {
        self.start_revision = revision;
        self
    }
    /// Report each event's previous key-value.
    pub fn prev_kv(mut self) -> Self {
        self.prev_kv = true;
        self
    }
    /// Leave puts out.
    pub fn no_put(mut self) -> Self {
        self.no_put = true;
        self
    }
    /// Leave deletes out.
    pub fn no_delete(mut self) -> Self {
        self.no_delete = true;
        self
    }
}

/// What happened to a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// Created or changed.
    Put,
    /// Deleted (or its lease ended).
    Delete,
}

/// One change of one key.
#[derive(Debug, Clone, PartialEq)]
pub struct WatchEvent {
    /// Put or delete.
    pub kind: EventKind,
    /// The key after the change (for a delete: the key, with `mod_revision` the delete's).
    pub kv: KeyValue,
    /// The key before the change, if asked for and it existed.
    pub prev_kv: Option<KeyValue>,
}

impl WatchEvent {
    /// The revision of the change.
    pub fn revision(&self) -> i64 {
        self.kv.mod_revision
    }
}

/// A stream of events for some keys; see the module docs. Dropping it ends the watch.
#[derive(Debug)]
pub struct Watcher {
    client: Client,
    key: Vec<u8>,
    options: WatchOptions,
    /// The first revision not yet received in full; 0 until the server tells us where "now" is.
    next_revision: i64,
    /// Events received but not yet handed out (they survive a reconnect).
    buffer: VecDeque<WatchEvent>,
    /// The live stream: our end of the request stream (dropping it ends the call) and responses.
    stream: Option<(mpsc::Sender<pb::WatchRequest>, Streaming<pb::WatchResponse>)>,
    /// The endpoint the stream is on.
    endpoint: usize,
    /// How many times the watch was re-created after a broken stream.
    resumed: u64,
}

impl Client {
    /// Watches `key` (or a range: see [`WatchOptions`]). Returns once the server has created the
    /// watch, so a refused watch (an empty range) fails here. A start revision already
    /// compacted away is reported by the first [`Watcher::next`], as etcd creates the watch and
    /// then cancels it.
    pub async fn watch(&self, key: impl Into<Vec<u8>>, options: WatchOptions) -> Result<Watcher> {
        let endpoint = self.leader_endpoint().and_then(|l| self.endpoints().iter().position(|u| u == l));
        let mut w = Watcher {
            client: self.clone(),
            key: key.into(),
            next_revision: options.start_revision.max(0),
            options,
            buffer: VecDeque::new(),
            stream: None,
            endpoint: endpoint.unwrap_or(0),
            resumed: 0,
        };
        w.reopen(false).await?;
        Ok(w)
    }
}

impl Watcher {
    /// The next event. Waits for one; reconnects (within the client's retry budget per outage)
    /// if the stream breaks. An error is final: the watch is over.
    pub async fn next(&mut self) -> Result<WatchEvent> {
        loop {
            if let Some(event) = self.buffer.pop_front() {
                return Ok(event);
            }
            let Some((_, responses)) = self.stream.as_mut() else {
                self.reopen(true).await?;
                continue;
            };
            match responses.message().await {
                Ok(Some(response)) => self.take(response)?,
                // The stream ended or broke: the member is gone or going. Resume elsewhere.
                Ok(None) | Err(_) => {
                    self.stream = None;
                    self.endpoint = (self.endpoint + 1) % self.client.endpoints().len();
                }
            }
        }
    }

    /// The first revision this watcher has not yet received (where it would resume).
    pub fn next_revision(&self) -> i64 {
        self.next_revision
    }

    /// How many times the watch was re-created after its stream broke.
    pub fn resumed(&self) -> u64 {
        self.resumed
    }

    /// Takes one response: events into the buffer, the resume point forward, cancels as errors.
    fn take(&mut self, r: pb::WatchResponse) -> Result<()> {
        if r.canceled {
            self.stream = None;
            if r.compact_revision > 0 {
                return Err(Error::Compacted { compact_revision: Some(r.compact_revision) });
            }
            return Err(Error::WatchCanceled(r.cancel_reason));
        }
        let header_revision = r.header.as_ref().map_or(0, |h| h.revision);
        if r.events.is_empty() {
            // A progress notice: every event up to the header's revision has been sent. (A
            // `created` answer means the same only for a watch from "now", which is when we
            // have no resume point yet.)
            if !r.created || self.next_revision == 0 {
                self.next_revision = self.next_revision.max(header_revision + 1);
            }
            return Ok(());
        }
        for e in r.events {
            let kind = if e.r#type == crate::mvccpb::event::EventType::Delete as i32 {
                EventKind::Delete
            } else {
                EventKind::Put
            };
            let Some(kv) = e.kv else { continue };
            // The server never splits a revision across responses (we do not ask for
            // fragments), so everything up to this event's revision is in hand.
            self.next_revision = self.next_revision.max(kv.mod_revision + 1);
            self.buffer.push_back(WatchEvent { kind, kv, prev_kv: e.prev_kv });
        }
        Ok(())
    }

    /// Opens a stream and creates the watch from `next_revision`, trying endpoints in turn with
    /// back-off until the retry budget runs out. `resuming` counts it as a resume.
    async fn reopen(&mut self, resuming: bool) -> Result<()> {
        let deadline = Instant::now() + self.client.options().retry_budget;
        let mut backoff = self.client.backoff();
        loop {
            let error = match self.open(self.endpoint).await {
                Ok(()) => {
                    self.resumed += u64::from(resuming);
                    return Ok(());
                }
                Err(e) if !e.is_retryable() => return Err(e),
                Err(e) => e,
            };
            self.endpoint = (self.endpoint + 1) % self.client.endpoints().len();
            let pause = backoff.next_pause();
            if Instant::now() + pause >= deadline {
                return Err(error);
            }
            tokio::time::sleep(pause).await;
        }
    }

    /// One attempt at `endpoint`: create, and wait for the `created` answer.
    async fn open(&mut self, endpoint: usize) -> Result<()> {
        let limit = self.client.options().request_timeout;
        let (tx, rx) = mpsc::channel(4);
        let mut filters = Vec::new();
        if self.options.no_put {
            filters.push(pb::watch_create_request::FilterType::Noput as i32);
        }
        if self.options.no_delete {
            filters.push(pb::watch_create_request::FilterType::Nodelete as i32);
        }
        let (key, range_end) = match (&self.options.range_end, self.options.prefix) {
            (Some(end), _) => (self.key.clone(), end.clone()),
            // Every key: etcd's "\0" to "\0".
            (None, true) if self.key.is_empty() => (vec![0], vec![0]),
            (None, true) => (self.key.clone(), prefix_end(&self.key)),
            (None, false) => (self.key.clone(), Vec::new()),
        };
        let create = pb::WatchCreateRequest {
            key,
            range_end,
            start_revision: self.next_revision,
            prev_kv: self.options.prev_kv,
            filters,
            ..Default::default()
        };
        let request =
            pb::WatchRequest { request_union: Some(pb::watch_request::RequestUnion::CreateRequest(create)) };
        tx.send(request).await.map_err(|_| Error::Unavailable("watch request stream closed".into()))?;
        let mut client = WatchClient::new(self.client.svc(endpoint));
        let opened = async {
            let mut responses = client.watch(ReceiverStream::new(rx)).await?.into_inner();
            loop {
                match responses.message().await? {
                    Some(r) if r.created && !r.canceled => break Ok::<_, tonic::Status>((r, responses)),
                    Some(r) if r.canceled => break Ok((r, responses)),
                    Some(_) => continue,
                    None => break Err(tonic::Status::unavailable("watch stream ended before created")),
                }
            }
        };
        let (created, responses) = match tokio::time::timeout(limit, opened).await {
            Ok(Ok(v)) => v,
            Ok(Err(status)) => return Err(Error::from(status)),
            Err(_) => return Err(Error::Timeout(format!("watch: no answer within {limit:?}"))),
        };
        self.endpoint = endpoint;
        self.stream = Some((tx, responses));
        self.take(created)
    }
}
