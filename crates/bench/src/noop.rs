//! The no-op server: etcd's KV service answering at once, with no storage and no consensus. It
//! measures what the client, gRPC and the loopback cost on this machine — the ceiling of any
//! server driven by the same client here.

use std::sync::atomic::{AtomicI64, Ordering};

use balsa_server::pb::etcdserverpb::{
    kv_server::Kv, CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse,
    PutRequest, PutResponse, RangeRequest, RangeResponse, ResponseHeader, TxnRequest, TxnResponse,
};
use tonic::{Request, Response, Status};

/// The service: a revision counter, nothing else.
#[derive(Default)]
pub struct NoopKv {
    /// Bumped by each put, so answers look like etcd's (each write a new revision).
    revision: AtomicI64,
}

impl NoopKv {
    fn header(&self, revision: i64) -> Option<ResponseHeader> {
        Some(ResponseHeader { cluster_id: 1, member_id: 1, revision, raft_term: 1 })
    }

    fn current(&self) -> Option<ResponseHeader> {
        self.header(self.revision.load(Ordering::Relaxed))
    }
}

#[tonic::async_trait]
impl Kv for NoopKv {
    async fn range(&self, _request: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        Ok(Response::new(RangeResponse { header: self.current(), ..Default::default() }))
    }

    async fn put(&self, _request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let revision = self.revision.fetch_add(1, Ordering::Relaxed) + 1;
        Ok(Response::new(PutResponse { header: self.header(revision), prev_kv: None }))
    }

    async fn delete_range(
        &self,
        _request: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        Ok(Response::new(DeleteRangeResponse { header: self.current(), ..Default::default() }))
    }

    async fn txn(&self, _request: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let revision = self.revision.fetch_add(1, Ordering::Relaxed) + 1;
        Ok(Response::new(TxnResponse {
            header: self.header(revision),
            succeeded: true,
            responses: Vec::new(),
        }))
    }

    async fn compact(
        &self,
        _request: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        Ok(Response::new(CompactionResponse { header: self.current() }))
    }
}

/// Serves the no-op KV service on `listener` until the task is dropped, with the HTTP/2 server
/// balsa serves its clients with (`balsa_server::client_server`), so the ceiling and balsa pay
/// the same for gRPC.
pub async fn serve(listener: tokio::net::TcpListener) {
    let max = balsa_server::kv_service::MAX_DECODING_BYTES;
    let service = balsa_server::unary::KvCalls::new(NoopKv::default(), max);
    balsa_server::client_server::serve(listener, service).await;
}
