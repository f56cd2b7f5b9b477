//! Log streams (balsa's `balsapb.Log` service): named, append-only sequences of records with
//! dense offsets. Appends go in a session like every write (exactly-once); a [`Subscription`]
//! keeps its next offset and resumes there on another member when its stream breaks.

use std::collections::VecDeque;

use tokio::time::Instant;

use crate::balsapb;
use crate::balsapb::log_client::LogClient;
use crate::client::{Client, Route};
use crate::error::{Error, Result};

/// One record of a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Its offset: dense from 0, the same on every member.
    pub offset: u64,
    /// The payload.
    pub data: Vec<u8>,
    /// The stream's clock when it was applied (ms since the Unix epoch).
    pub timestamp_ms: u64,
}

impl From<balsapb::Record> for Record {
    fn from(r: balsapb::Record) -> Self {
        Self { offset: r.offset, data: r.data, timestamp_ms: r.timestamp_ms }
    }
}

/// A stream's state (`GetStreamInfo`).
pub type StreamInfo = balsapb::StreamInfo;

/// Retention of a new stream; `None` fields take the server's default, `Some(0)` means no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    /// Keep at most this many payload bytes (the newest record is always kept).
    pub bytes: Option<u64>,
    /// Remove records older than this many milliseconds.
    pub ms: Option<u64>,
}

/// The offsets an append got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// The first record's offset.
    pub first_offset: u64,
    /// The last record's offset.
    pub last_offset: u64,
}

/// Records read with [`Client::log_read`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadRecords {
    /// Consecutive records from the offset asked for.
    pub records: Vec<Record>,
    /// Where to read next.
    pub next_offset: u64,
    /// The oldest offset the stream holds.
    pub first_retained_offset: u64,
    /// The offset the next append will get.
    pub end_offset: u64,
}

impl Client {
    /// Creates a stream (again with the same retention: succeeds, changes nothing).
    pub async fn log_create(&self, stream: &str, retention: Retention) -> Result<StreamInfo> {
        let request = balsapb::CreateStreamRequest {
            stream: stream.to_string(),
            retention_bytes: retention.bytes,
            retention_ms: retention.ms,
        };
        let r = self
            .run(Route::Leader, |svc| {
                let request = request.clone();
                async move { LogClient::new(svc).create_stream(request).await }
            })
            .await?;
        Ok(r.into_inner())
    }

    /// Appends records (in order, consecutive offsets). In a session (the default) a retried
    /// append is applied once.
    pub async fn log_append<R: Into<Vec<u8>>>(
        &self,
        stream: &str,
        records: impl IntoIterator<Item = R>,
    ) -> Result<Appended> {
        let request = balsapb::AppendRequest {
            stream: stream.to_string(),
            records: records.into_iter().map(Into::into).collect(),
        };
        let r = self
            .write(request, |svc, request| async move { LogClient::new(svc).append(request).await })
            .await?
            .into_inner();
        Ok(Appended { first_offset: r.first_offset, last_offset: r.last_offset })
    }

    /// Reads up to `max_records` (0: the server's 1000) from `from_offset`, linearizably.
    pub async fn log_read(&self, stream: &str, from_offset: u64, max_records: u32) -> Result<ReadRecords> {
        let request = balsapb::ReadRequest {
            stream: stream.to_string(),
            from_offset,
            max_records,
            max_bytes: 0,
            serializable: false,
        };
        let r = self
            .run(Route::Leader, |svc| {
                let request = request.clone();
                async move { LogClient::new(svc).read(request).await }
            })
            .await?
            .into_inner();
        Ok(ReadRecords {
            records: r.records.into_iter().map(Record::from).collect(),
            next_offset: r.next_offset,
            first_retained_offset: r.first_retained_offset,
            end_offset: r.end_offset,
        })
    }

    /// Every stream.
    pub async fn log_list(&self) -> Result<Vec<StreamInfo>> {
        let r = self
            .run(Route::Leader, |svc| async move {
                LogClient::new(svc).list_streams(balsapb::ListStreamsRequest {}).await
            })
            .await?;
        Ok(r.into_inner().streams)
    }

    /// One stream's state.
    pub async fn log_info(&self, stream: &str) -> Result<StreamInfo> {
        let request = balsapb::StreamInfoRequest { stream: stream.to_string(), serializable: false };
        let r = self
            .run(Route::Leader, |svc| {
                let request = request.clone();
                async move { LogClient::new(svc).get_stream_info(request).await }
            })
            .await?;
        Ok(r.into_inner())
    }

    /// Removes every record before `before_offset`.
    pub async fn log_trim(&self, stream: &str, before_offset: u64) -> Result<StreamInfo> {
        let request = balsapb::TrimRequest { stream: stream.to_string(), before_offset };
        let r = self
            .run(Route::Leader, |svc| {
                let request = request.clone();
                async move { LogClient::new(svc).trim(request).await }
            })
            .await?;
        Ok(r.into_inner())
    }

    /// Removes a stream and its records (its subscriptions end with [`Error::StreamNotFound`]).
    pub async fn log_delete(&self, stream: &str) -> Result<StreamInfo> {
        let request = balsapb::DeleteStreamRequest { stream: stream.to_string() };
        let r = self
            .run(Route::Leader, |svc| {
                let request = request.clone();
                async move { LogClient::new(svc).delete_stream(request).await }
            })
            .await?;
        Ok(r.into_inner())
    }

    /// Follows a stream from `from_offset`: history, then records as they are appended. See
    /// [`Subscription`].
    pub async fn log_subscribe(&self, stream: &str, from_offset: u64) -> Result<Subscription> {
        let endpoint = self.leader_index().unwrap_or(0);
        let mut s = Subscription {
            client: self.clone(),
            stream: stream.to_string(),
            next_offset: from_offset,
            buffer: VecDeque::new(),
            responses: None,
            endpoint,
            resumed: 0,
        };
        s.reopen(false).await?;
        Ok(s)
    }
}

/// A stream's records in order, from an offset. It keeps the offset of the next record it owes
/// you; when its gRPC stream breaks (the member died, a leader changed) it subscribes again from
/// that offset on the next member, so you see every record once: no gap, no duplicate. Records
/// the stream no longer holds end it with [`Error::Retention`] (naming the first available
/// offset), a deleted stream with [`Error::StreamNotFound`].
pub struct Subscription {
    client: Client,
    stream: String,
    next_offset: u64,
    buffer: VecDeque<Record>,
    responses: Option<tonic::Streaming<balsapb::SubscribeResponse>>,
    endpoint: usize,
    resumed: u64,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("stream", &self.stream)
            .field("next_offset", &self.next_offset)
            .finish()
    }
}

impl Subscription {
    /// The next record. Waits for one; resumes elsewhere (within the client's retry budget per
    /// outage) if the stream breaks. An error is final.
    pub async fn next(&mut self) -> Result<Record> {
        loop {
            if let Some(r) = self.buffer.pop_front() {
                return Ok(r);
            }
            let Some(responses) = self.responses.as_mut() else {
                self.reopen(true).await?;
                continue;
            };
            match responses.message().await {
                Ok(Some(batch)) => {
                    for r in batch.records {
                        // Skip anything before the resume point (never expected; cheap to guard).
                        if r.offset < self.next_offset {
                            continue;
                        }
                        self.next_offset = r.offset + 1;
                        self.buffer.push_back(r.into());
                    }
                }
                Ok(None) => self.broken(),
                Err(status) => {
                    let error = Error::from(status);
                    if !error.is_retryable() && !matches!(error, Error::Server { .. }) {
                        self.responses = None;
                        return Err(error);
                    }
                    self.broken();
                }
            }
        }
    }

    /// The offset of the next record this subscription will return (where it would resume).
    pub fn next_offset(&self) -> u64 {
        self.next_offset
    }

    /// How many times it subscribed again after its stream broke.
    pub fn resumed(&self) -> u64 {
        self.resumed
    }

    fn broken(&mut self) {
        self.responses = None;
        self.endpoint = (self.endpoint + 1) % self.client.endpoints().len();
    }

    async fn reopen(&mut self, resuming: bool) -> Result<()> {
        let deadline = Instant::now() + self.client.options().retry_budget;
        let mut backoff = self.client.backoff();
        let limit = self.client.options().request_timeout;
        loop {
            let request = balsapb::SubscribeRequest {
                stream: self.stream.clone(),
                from_offset: self.next_offset,
                serializable: false,
            };
            let mut log = LogClient::new(self.client.svc(self.endpoint));
            let error = match tokio::time::timeout(limit, log.subscribe(request)).await {
                Ok(Ok(r)) => {
                    self.responses = Some(r.into_inner());
                    self.resumed += u64::from(resuming);
                    return Ok(());
                }
                Ok(Err(status)) => Error::from(status),
                Err(_) => Error::Timeout(format!("subscribe: no answer within {limit:?}")),
            };
            if !error.is_retryable() {
                return Err(error);
            }
            self.endpoint = (self.endpoint + 1) % self.client.endpoints().len();
            let pause = backoff.next_pause();
            if Instant::now() + pause >= deadline {
                return Err(error);
            }
            tokio::time::sleep(pause).await;
        }
    }
}
