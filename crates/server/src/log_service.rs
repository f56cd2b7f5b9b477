//! balsa's Log service (`proto/log.proto`, package `balsapb`): log streams over gRPC.
//!
//! Writes (create, append, trim, delete) are balsa-kv [`StreamCommand`]s proposed through Raft,
//! so any member takes them and every replica assigns the same offsets. An append is stamped
//! with this member's clock before it is proposed; the stamp is part of the committed command,
//! which is what makes age retention deterministic. Reads and the start of a subscription are
//! linearizable (ReadIndex) unless the request asks for this member's state as applied.
//!
//! Errors: an unknown stream is NotFound; an offset removed by retention is OutOfRange, naming
//! the first available offset; bad input (empty name, no records, a request over
//! [`MAX_REQUEST_BYTES`]) is InvalidArgument before anything is proposed.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use balsa_kv::streams::{check_name, Record, StreamInfo, StreamRead};
use balsa_kv::{Command, KvError, Retention, StreamCommand, StreamError, StreamResponse};
use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::kv_service::{status_of, MAX_REQUEST_BYTES};
use crate::node::{NodeError, NodeHandle};
use crate::pb::balsapb as pb;
use crate::session::{session_of, within};

/// Records a read returns when it does not say (and at most).
pub const DEFAULT_READ_RECORDS: u32 = 1000;
/// Payload bytes a read returns when it does not say (and at most, beyond one record).
pub const DEFAULT_READ_BYTES: u32 = 1 << 20;

const TOO_LARGE: &str = "request is too large";

/// The Log service of one member.
pub struct LogService {
    node: Arc<NodeHandle>,
    defaults: Retention,
}

impl LogService {
    /// Serves `node`; streams created without a retention keep everything.
    pub fn new(node: Arc<NodeHandle>) -> Self {
        Self::with_defaults(node, Retention::default())
    }

    /// Serves `node`; streams created without a retention get `defaults`.
    pub fn with_defaults(node: Arc<NodeHandle>, defaults: Retention) -> Self {
        Self { node, defaults }
    }

    async fn propose(&self, command: StreamCommand) -> Result<StreamResponse, Status> {
        self.propose_within(None, command).await
    }

    async fn propose_within(
        &self,
        session: Option<(u64, u64)>,
        command: StreamCommand,
    ) -> Result<StreamResponse, Status> {
        match self.node.propose(within(session, Command::Stream(command))).await {
            Ok(balsa_kv::Response::Stream(r)) => Ok(r),
            Ok(other) => Err(Status::internal(format!("unexpected response {other:?}"))),
            Err(e) => Err(stream_status(e)),
        }
    }

    async fn propose_info(&self, command: StreamCommand) -> Result<Response<pb::StreamInfo>, Status> {
        match self.propose(command).await? {
            StreamResponse::Info(info) => Ok(Response::new(info_out(info))),
            other => Err(Status::internal(format!("unexpected response {other:?}"))),
        }
    }
}

/// The gRPC status of a failed stream request.
pub fn stream_status(e: NodeError) -> Status {
    match e {
        NodeError::Kv(KvError::Stream(e)) => {
            let message = e.to_string();
            match e {
                StreamError::NotFound { .. } => Status::not_found(message),
                StreamError::Exists { .. } => Status::already_exists(message),
                StreamError::Removed { .. } | StreamError::BeyondEnd { .. } => Status::out_of_range(message),
                StreamError::Invalid(_) => Status::invalid_argument(message),
            }
        }
        other => status_of(other),
    }
}

fn invalid(e: StreamError) -> Status {
    Status::invalid_argument(e.to_string())
}

fn info_out(i: StreamInfo) -> pb::StreamInfo {
    pb::StreamInfo {
        stream: i.name,
        first_retained_offset: i.first_offset,
        end_offset: i.end_offset,
        bytes: i.bytes,
        records: i.records,
        retention_bytes: i.retention.max_bytes,
        retention_ms: i.retention.max_age_ms,
    }
}

fn records_out(records: Vec<(u64, Record)>) -> Vec<pb::Record> {
    records
        .into_iter()
        .map(|(offset, r)| pb::Record { offset, data: r.data.to_vec(), timestamp_ms: r.timestamp_ms })
        .collect()
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// The answers of a subscription.
pub type SubscribeStream = Pin<Box<dyn Stream<Item = Result<pb::SubscribeResponse, Status>> + Send>>;

#[tonic::async_trait]
impl pb::log_server::Log for LogService {
    async fn create_stream(
        &self,
        request: Request<pb::CreateStreamRequest>,
    ) -> Result<Response<pb::StreamInfo>, Status> {
        let r = request.into_inner();
        check_name(&r.stream).map_err(invalid)?;
        let retention = Retention {
            max_bytes: r.retention_bytes.unwrap_or(self.defaults.max_bytes),
            max_age_ms: r.retention_ms.unwrap_or(self.defaults.max_age_ms),
        };
        self.propose_info(StreamCommand::Create { stream: r.stream, retention }).await
    }

    async fn append(
        &self,
        request: Request<pb::AppendRequest>,
    ) -> Result<Response<pb::AppendResponse>, Status> {
        // Appends take a session like etcd writes do (see `session.rs`): a retried append is
        // then applied once, so consumers never see the same records twice.
        let session = session_of(request.metadata()).map_err(Status::invalid_argument)?;
        let r = request.into_inner();
        if prost::Message::encoded_len(&r) > MAX_REQUEST_BYTES {
            return Err(Status::invalid_argument(TOO_LARGE));
        }
        check_name(&r.stream).map_err(invalid)?;
        if r.records.is_empty() {
            return Err(Status::invalid_argument("an append needs at least one record"));
        }
        let records = r.records.into_iter().map(Bytes::from).collect();
        let command = StreamCommand::Append { stream: r.stream, timestamp_ms: now_ms(), records };
        match self.propose_within(session, command).await? {
            StreamResponse::Appended { first_offset, last_offset, .. } => {
                Ok(Response::new(pb::AppendResponse { first_offset, last_offset }))
            }
            other => Err(Status::internal(format!("unexpected response {other:?}"))),
        }
    }

    async fn read(&self, request: Request<pb::ReadRequest>) -> Result<Response<pb::ReadResponse>, Status> {
        let r = request.into_inner();
        check_name(&r.stream).map_err(invalid)?;
        let max_records = match r.max_records {
            0 => DEFAULT_READ_RECORDS,
            n => n.min(DEFAULT_READ_RECORDS),
        } as usize;
        let max_bytes = match r.max_bytes {
            0 => DEFAULT_READ_BYTES,
            n => n.min(DEFAULT_READ_BYTES),
        } as usize;
        let (stream, from) = (r.stream, r.from_offset);
        let read: Result<StreamRead, StreamError> = self
            .node
            .read_with(!r.serializable, move |sm| sm.streams.read(&stream, from, max_records, max_bytes))
            .await
            .map_err(stream_status)?;
        let read = read.map_err(|e| stream_status(NodeError::Kv(e.into())))?;
        Ok(Response::new(pb::ReadResponse {
            records: records_out(read.records),
            next_offset: read.next_offset,
            first_retained_offset: read.first_offset,
            end_offset: read.end_offset,
        }))
    }

    type SubscribeStream = SubscribeStream;

    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let r = request.into_inner();
        check_name(&r.stream).map_err(invalid)?;
        if !r.serializable {
            // Start from a state at least as new as anything acknowledged before this call, so a
            // consumer resuming on another member finds every record it has already seen.
            let name = r.stream.clone();
            self.node
                .read_with(true, move |sm| sm.streams.get(&name).map(|_| ()))
                .await
                .map_err(stream_status)?
                .map_err(|e| stream_status(NodeError::Kv(e.into())))?;
        }
        let mut batches = self.node.subscribe_stream(r.stream, r.from_offset).await.map_err(stream_status)?;
        let (tx, rx) = mpsc::channel(2);
        tokio::spawn(async move {
            loop {
                let item = tokio::select! {
                    batch = batches.recv() => batch,
                    () = tx.closed() => return, // the client went away
                };
                let out = match item {
                    Some(Ok(records)) => Ok(pb::SubscribeResponse { records: records_out(records) }),
                    Some(Err(e)) => Err(stream_status(NodeError::Kv(e.into()))),
                    // The hub never ends a subscription silently: the member stopped.
                    None => Err(Status::unavailable("the member serving this subscription stopped")),
                };
                let last = out.is_err();
                if tx.send(out).await.is_err() || last {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn list_streams(
        &self,
        _request: Request<pb::ListStreamsRequest>,
    ) -> Result<Response<pb::ListStreamsResponse>, Status> {
        let list = self.node.read_with(true, |sm| sm.streams.list()).await.map_err(stream_status)?;
        Ok(Response::new(pb::ListStreamsResponse { streams: list.into_iter().map(info_out).collect() }))
    }

    async fn get_stream_info(
        &self,
        request: Request<pb::StreamInfoRequest>,
    ) -> Result<Response<pb::StreamInfo>, Status> {
        let r = request.into_inner();
        check_name(&r.stream).map_err(invalid)?;
        let stream = r.stream;
        let info = self
            .node
            .read_with(!r.serializable, move |sm| sm.streams.info(&stream))
            .await
            .map_err(stream_status)?
            .map_err(|e| stream_status(NodeError::Kv(e.into())))?;
        Ok(Response::new(info_out(info)))
    }

    async fn trim(&self, request: Request<pb::TrimRequest>) -> Result<Response<pb::StreamInfo>, Status> {
        let r = request.into_inner();
        check_name(&r.stream).map_err(invalid)?;
        self.propose_info(StreamCommand::Trim { stream: r.stream, before_offset: r.before_offset }).await
    }

    async fn delete_stream(
        &self,
        request: Request<pb::DeleteStreamRequest>,
    ) -> Result<Response<pb::StreamInfo>, Status> {
        let r = request.into_inner();
        check_name(&r.stream).map_err(invalid)?;
        self.propose_info(StreamCommand::Delete { stream: r.stream }).await
    }
}
