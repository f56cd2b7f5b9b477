//! Client sessions on the wire: the `balsapb.Session` service (register, close) and the gRPC
//! metadata that puts an etcd write into a session. The state machine does the rest (see
//! `balsa_kv::sessions`): a retried write is answered from memory, never applied twice.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use balsa_kv::{Command, Response as KvResponse};
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

use crate::kv_service::status_of;
use crate::node::NodeHandle;
use crate::pb::balsapb as pb;
use crate::pb::balsapb::session_server::Session;

/// The metadata entry naming the session (the id `Register` returned).
pub const CLIENT_ID_KEY: &str = "balsa-client-id";
/// The metadata entry numbering the write within its session.
pub const SEQ_KEY: &str = "balsa-seq";
/// A session's timeout when the client asks for none.
pub const DEFAULT_TIMEOUT_MS: u64 = 60_000;

/// Milliseconds since the Unix epoch by this server's clock.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The session and sequence number a request carries, if any. Both entries or neither; the
/// error is the message of an InvalidArgument status.
pub fn session_of(metadata: &MetadataMap) -> Result<Option<(u64, u64)>, String> {
    let number = |key: &str| -> Result<Option<u64>, String> {
        let Some(v) = metadata.get(key) else { return Ok(None) };
        let text = v.to_str().map_err(|_| format!("balsa: {key} is not text"))?;
        text.parse().map(Some).map_err(|_| format!("balsa: {key} {text:?} is not a number"))
    };
    match (number(CLIENT_ID_KEY)?, number(SEQ_KEY)?) {
        (None, None) => Ok(None),
        (Some(client), Some(seq)) => Ok(Some((client, seq))),
        _ => Err(format!("balsa: {CLIENT_ID_KEY} and {SEQ_KEY} go together")),
    }
}

/// `command`, within the request's session if it names one.
pub fn within(session: Option<(u64, u64)>, command: Command) -> Command {
    match session {
        Some((client_id, seq)) => Command::Sessioned { client_id, seq, command: Box::new(command) },
        None => command,
    }
}

/// The Session service of one member.
pub struct SessionService {
    node: Arc<NodeHandle>,
}

impl SessionService {
    /// Serves sessions through `node`.
    pub fn new(node: Arc<NodeHandle>) -> Self {
        Self { node }
    }
}

#[tonic::async_trait]
impl Session for SessionService {
    async fn register(
        &self,
        request: Request<pb::RegisterSessionRequest>,
    ) -> Result<Response<pb::RegisterSessionResponse>, Status> {
        let timeout_ms = match request.into_inner().timeout_ms {
            0 => DEFAULT_TIMEOUT_MS,
            t => t,
        };
        let command = Command::SessionRegister { timeout_ms, now_ms: now_ms() };
        match self.node.propose(command).await.map_err(status_of)? {
            KvResponse::SessionRegistered { client_id } => {
                Ok(Response::new(pb::RegisterSessionResponse { client_id, timeout_ms }))
            }
            other => Err(Status::internal(format!("unexpected response {other:?}"))),
        }
    }

    async fn close(
        &self,
        request: Request<pb::CloseSessionRequest>,
    ) -> Result<Response<pb::CloseSessionResponse>, Status> {
        let client_id = request.into_inner().client_id;
        self.node.propose(Command::SessionClose { client_id }).await.map_err(status_of)?;
        Ok(Response::new(pb::CloseSessionResponse {}))
    }
}
