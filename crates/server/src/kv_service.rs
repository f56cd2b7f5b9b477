//! etcd's v3 `KV` gRPC service over a node: requests become balsa-kv commands (writes go through
//! Raft) or reads (linearizable by default, serializable on request); errors carry etcd's gRPC
//! codes and messages, so etcd clients react to them as they would with etcd.

use std::sync::Arc;

use balsa_kv as kv;
use bytes::Bytes;
use tonic::{Request, Response, Status};

use crate::node::{NodeError, NodeHandle};
use crate::pb::etcdserverpb as pb;
use crate::pb::etcdserverpb::kv_server::Kv;
use crate::pb::mvccpb;
use crate::session::{session_of, within};

/// etcd's default limit on a request's size.
pub const MAX_REQUEST_BYTES: usize = 1536 * 1024;

/// What gRPC itself accepts beyond [`MAX_REQUEST_BYTES`] (etcd's `grpcOverheadBytes`): larger
/// messages are refused by the transport before any service sees them; a write between the two
/// limits is refused with "etcdserver: request is too large", as etcd does.
pub const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

/// The largest gRPC message any service decodes.
pub const MAX_DECODING_BYTES: usize = MAX_REQUEST_BYTES + GRPC_OVERHEAD_BYTES;

/// etcd's default `--max-txn-ops`.
pub const MAX_TXN_OPS: usize = 128;

/// etcd's ErrGRPCRequestTooLarge.
const TOO_LARGE: &str = "etcdserver: request is too large";
/// etcd's ErrGRPCEmptyKey.
const EMPTY_KEY: &str = "etcdserver: key is not provided";
/// etcd's ErrGRPCDuplicateKey.
const DUPLICATE_KEY: &str = "etcdserver: duplicate key given in txn request";

/// A request refused before it is proposed: the message of an InvalidArgument status (every
/// check etcd makes there answers InvalidArgument).
type Check = Result<(), &'static str>;

/// etcd refuses a write whose encoded request exceeds the limit, before it reaches the log.
fn check_size(message: &impl prost::Message) -> Check {
    if message.encoded_len() > MAX_REQUEST_BYTES {
        return Err(TOO_LARGE);
    }
    Ok(())
}

/// etcd's checks of a Put before it is proposed.
fn check_put(p: &pb::PutRequest) -> Check {
    if p.key.is_empty() {
        return Err(EMPTY_KEY);
    }
    if p.ignore_value && !p.value.is_empty() {
        return Err("etcdserver: value is provided");
    }
    if p.ignore_lease && p.lease != 0 {
        return Err("etcdserver: lease is provided");
    }
    Ok(())
}

/// etcd's checks of a transaction before it is proposed: at most `max_ops` compares and
/// operations per branch (nested transactions share the budget), keys given, no empty
/// operation, and no key written twice by a branch (checked on both branches, whichever runs).
fn check_txn(t: &pb::TxnRequest, max_ops: usize) -> Check {
    let ops = t.compare.len().max(t.success.len()).max(t.failure.len());
    if ops > max_ops {
        return Err("etcdserver: too many operations in txn request");
    }
    if t.compare.iter().any(|c| c.key.is_empty()) {
        return Err(EMPTY_KEY);
    }
    for op in t.success.iter().chain(&t.failure) {
        match &op.request {
            Some(pb::request_op::Request::RequestRange(r)) if r.key.is_empty() => return Err(EMPTY_KEY),
            Some(pb::request_op::Request::RequestDeleteRange(d)) if d.key.is_empty() => {
                return Err(EMPTY_KEY)
            }
            Some(pb::request_op::Request::RequestPut(p)) => check_put(p)?,
            Some(pb::request_op::Request::RequestTxn(t)) => check_txn(t, max_ops - ops)?,
            Some(_) => {}
            // etcd's answer to an empty operation (ErrGRPCKeyNotFound).
            None => return Err("etcdserver: key not found"),
        }
    }
    writes(&t.success)?;
    writes(&t.failure)?;
    Ok(())
}

/// The keys a branch puts and the ranges it deletes, nested transactions included; a key put
/// twice, or put and deleted, is etcd's duplicate-key error. The two branches of a nested
/// transaction may write the same key (only one of them runs).
fn writes(ops: &[pb::RequestOp]) -> Result<(Vec<Vec<u8>>, Vec<kv::KeyRange>), &'static str> {
    let mut puts: Vec<Vec<u8>> = Vec::new();
    let mut dels: Vec<kv::KeyRange> = Vec::new();
    for op in ops {
        if let Some(pb::request_op::Request::RequestDeleteRange(d)) = &op.request {
            dels.push(range_of(d.key.clone(), d.range_end.clone()));
        }
    }
    for op in ops {
        if let Some(pb::request_op::Request::RequestTxn(t)) = &op.request {
            let (then_puts, then_dels) = writes(&t.success)?;
            let (else_puts, else_dels) = writes(&t.failure)?;
            let mut nested: Vec<Vec<u8>> = then_puts.clone();
            nested.extend(else_puts.into_iter().filter(|k| !then_puts.contains(k)));
            for k in nested {
                if puts.contains(&k) || dels.iter().any(|d| d.contains(&k)) {
                    return Err(DUPLICATE_KEY);
                }
                puts.push(k);
            }
            dels.extend(then_dels);
            dels.extend(else_dels);
        }
    }
    for op in ops {
        if let Some(pb::request_op::Request::RequestPut(p)) = &op.request {
            if puts.contains(&p.key) || dels.iter().any(|d| d.contains(&p.key)) {
                return Err(DUPLICATE_KEY);
            }
            puts.push(p.key.clone());
        }
    }
    Ok((puts, dels))
}

/// The KV service of one member.
pub struct KvService {
    node: Arc<NodeHandle>,
    cluster_id: u64,
    member_id: u64,
}

impl KvService {
    /// Serves `node` as member `member_id` of cluster `cluster_id`.
    pub fn new(node: Arc<NodeHandle>, cluster_id: u64, member_id: u64) -> Self {
        Self { node, cluster_id, member_id }
    }

    fn header(&self, revision: i64) -> Option<pb::ResponseHeader> {
        crate::kv_service::header(self.cluster_id, self.member_id, revision)
    }
}

/// The header of every response: which cluster and member answered, at which revision.
pub(crate) fn header(cluster_id: u64, member_id: u64, revision: i64) -> Option<pb::ResponseHeader> {
    Some(pb::ResponseHeader { cluster_id, member_id, revision, raft_term: 0 })
}

/// etcd's status for each failure.
pub fn status_of(e: NodeError) -> Status {
    match e {
        NodeError::NotLeader { .. } => Status::unavailable("etcdserver: not leader"),
        NodeError::Dropped => {
            Status::unavailable("etcdserver: request timed out, possibly due to previous leader failure")
        }
        NodeError::Stopped => Status::unavailable("etcdserver: server stopped"),
        NodeError::MemberNotFound => Status::not_found(e.to_string()),
        NodeError::MemberExists
        | NodeError::PeerUrlExists
        | NodeError::NotLearner
        | NodeError::LearnerNotReady => Status::failed_precondition(e.to_string()),
        NodeError::MembershipChangeInProgress => Status::unavailable(e.to_string()),
        NodeError::InvalidMembership(_) => Status::invalid_argument(e.to_string()),
        NodeError::BadLeaderTransferee => Status::failed_precondition(e.to_string()),
        // etcd 3.4 has no gRPC code of its own for this one and answers Unknown.
        NodeError::LeaderTransferTimeout => Status::unknown(e.to_string()),
        NodeError::Kv(e) => match e {
            kv::KvError::Compacted { .. } | kv::KvError::FutureRevision => {
                Status::out_of_range(format!("etcdserver: {e}"))
            }
            kv::KvError::LeaseNotFound => Status::not_found(e.to_string()),
            kv::KvError::LeaseExists
            | kv::KvError::SessionExpired { .. }
            | kv::KvError::StaleSequence { .. } => Status::failed_precondition(e.to_string()),
            _ => Status::invalid_argument(e.to_string()),
        },
    }
}

fn range_of(key: Vec<u8>, range_end: Vec<u8>) -> kv::KeyRange {
    kv::KeyRange { key: Bytes::from(key), range_end: Bytes::from(range_end) }
}

fn kv_out(k: kv::KeyValue) -> mvccpb::KeyValue {
    mvccpb::KeyValue {
        key: k.key.to_vec(),
        create_revision: k.create_revision,
        mod_revision: k.mod_revision,
        version: k.version,
        value: k.value.to_vec(),
        lease: k.lease,
    }
}

fn range_in(r: pb::RangeRequest) -> kv::RangeRequest {
    let mut q = kv::RangeRequest::of(range_of(r.key, r.range_end));
    q.limit = r.limit;
    q.revision = r.revision;
    q.sort_order = match r.sort_order {
        1 => kv::SortOrder::Ascend,
        2 => kv::SortOrder::Descend,
        _ => kv::SortOrder::None,
    };
    q.sort_target = match r.sort_target {
        1 => kv::SortTarget::Version,
        2 => kv::SortTarget::Create,
        3 => kv::SortTarget::Mod,
        4 => kv::SortTarget::Value,
        _ => kv::SortTarget::Key,
    };
    q.keys_only = r.keys_only;
    q.count_only = r.count_only;
    q.min_mod_revision = r.min_mod_revision;
    q.max_mod_revision = r.max_mod_revision;
    q.min_create_revision = r.min_create_revision;
    q.max_create_revision = r.max_create_revision;
    q
}

fn put_in(p: pb::PutRequest) -> kv::PutRequest {
    kv::PutRequest {
        key: Bytes::from(p.key),
        value: Bytes::from(p.value),
        lease: p.lease,
        prev_kv: p.prev_kv,
        ignore_value: p.ignore_value,
        ignore_lease: p.ignore_lease,
    }
}

fn delete_in(d: pb::DeleteRangeRequest) -> kv::DeleteRangeRequest {
    kv::DeleteRangeRequest { range: range_of(d.key, d.range_end), prev_kv: d.prev_kv }
}

fn compare_in(c: pb::Compare) -> Result<kv::Compare, &'static str> {
    use pb::compare::TargetUnion;
    let target = match (c.target, c.target_union) {
        (0, Some(TargetUnion::Version(v))) => kv::CompareTarget::Version(v),
        (0, None) => kv::CompareTarget::Version(0),
        (1, Some(TargetUnion::CreateRevision(v))) => kv::CompareTarget::Create(v),
        (1, None) => kv::CompareTarget::Create(0),
        (2, Some(TargetUnion::ModRevision(v))) => kv::CompareTarget::Mod(v),
        (2, None) => kv::CompareTarget::Mod(0),
        (3, Some(TargetUnion::Value(v))) => kv::CompareTarget::Value(Bytes::from(v)),
        (3, None) => kv::CompareTarget::Value(Bytes::new()),
        (4, Some(TargetUnion::Lease(v))) => kv::CompareTarget::Lease(v),
        (4, None) => kv::CompareTarget::Lease(0),
        _ => return Err("etcdserver: invalid compare target"),
    };
    let result = match c.result {
        0 => kv::CompareResult::Equal,
        1 => kv::CompareResult::Greater,
        2 => kv::CompareResult::Less,
        3 => kv::CompareResult::NotEqual,
        _ => return Err("etcdserver: invalid compare result"),
    };
    Ok(kv::Compare { range: range_of(c.key, c.range_end), target, result })
}

/// Converts an etcd transaction; the error is the message of an InvalidArgument status.
fn txn_in(t: pb::TxnRequest) -> Result<kv::TxnRequest, &'static str> {
    let ops = |ops: Vec<pb::RequestOp>| -> Result<Vec<kv::RequestOp>, &'static str> {
        ops.into_iter()
            .map(|op| match op.request {
                Some(pb::request_op::Request::RequestRange(r)) => Ok(kv::RequestOp::Range(range_in(r))),
                Some(pb::request_op::Request::RequestPut(p)) => Ok(kv::RequestOp::Put(put_in(p))),
                Some(pb::request_op::Request::RequestDeleteRange(d)) => {
                    Ok(kv::RequestOp::DeleteRange(delete_in(d)))
                }
                Some(pb::request_op::Request::RequestTxn(t)) => Ok(kv::RequestOp::Txn(txn_in(t)?)),
                None => Err("etcdserver: key not found"),
            })
            .collect()
    };
    Ok(kv::TxnRequest {
        compare: t.compare.into_iter().map(compare_in).collect::<Result<_, _>>()?,
        success: ops(t.success)?,
        failure: ops(t.failure)?,
    })
}

impl KvService {
    fn range_out(&self, r: kv::RangeResponse) -> pb::RangeResponse {
        pb::RangeResponse {
            header: self.header(r.revision),
            kvs: r.kvs.into_iter().map(kv_out).collect(),
            more: r.more,
            count: r.count,
        }
    }

    fn put_out(&self, p: kv::PutResponse) -> pb::PutResponse {
        pb::PutResponse { header: self.header(p.revision), prev_kv: p.prev_kv.map(kv_out) }
    }

    fn delete_out(&self, d: kv::DeleteRangeResponse) -> pb::DeleteRangeResponse {
        pb::DeleteRangeResponse {
            header: self.header(d.revision),
            deleted: d.deleted,
            prev_kvs: d.prev_kvs.into_iter().map(kv_out).collect(),
        }
    }

    fn txn_out(&self, t: kv::TxnResponse) -> pb::TxnResponse {
        let responses = t
            .responses
            .into_iter()
            .map(|r| pb::ResponseOp {
                response: Some(match r {
                    kv::ResponseOp::Range(r) => pb::response_op::Response::ResponseRange(self.range_out(r)),
                    kv::ResponseOp::Put(p) => pb::response_op::Response::ResponsePut(self.put_out(p)),
                    kv::ResponseOp::DeleteRange(d) => {
                        pb::response_op::Response::ResponseDeleteRange(self.delete_out(d))
                    }
                    kv::ResponseOp::Txn(t) => pb::response_op::Response::ResponseTxn(self.txn_out(t)),
                }),
            })
            .collect();
        pb::TxnResponse { header: self.header(t.revision), succeeded: t.succeeded, responses }
    }

    async fn propose(&self, command: kv::Command) -> Result<kv::Response, Status> {
        self.node.propose(command).await.map_err(status_of)
    }
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(&self, request: Request<pb::RangeRequest>) -> Result<Response<pb::RangeResponse>, Status> {
        let r = request.into_inner();
        if r.key.is_empty() {
            return Err(Status::invalid_argument(EMPTY_KEY));
        }
        let serializable = r.serializable;
        let q = range_in(r);
        let result = if serializable { self.node.read_local(q).await } else { self.node.read(q).await };
        Ok(Response::new(self.range_out(result.map_err(status_of)?)))
    }

    async fn put(&self, request: Request<pb::PutRequest>) -> Result<Response<pb::PutResponse>, Status> {
        let session = session_of(request.metadata()).map_err(Status::invalid_argument)?;
        let p = request.into_inner();
        check_put(&p).and_then(|()| check_size(&p)).map_err(Status::invalid_argument)?;
        match self.propose(within(session, kv::Command::Put(put_in(p)))).await? {
            kv::Response::Put(p) => Ok(Response::new(self.put_out(p))),
            other => Err(Status::internal(format!("unexpected response {other:?}"))),
        }
    }

    async fn delete_range(
        &self,
        request: Request<pb::DeleteRangeRequest>,
    ) -> Result<Response<pb::DeleteRangeResponse>, Status> {
        let session = session_of(request.metadata()).map_err(Status::invalid_argument)?;
        let d = request.into_inner();
        if d.key.is_empty() {
            return Err(Status::invalid_argument(EMPTY_KEY));
        }
        check_size(&d).map_err(Status::invalid_argument)?;
        match self.propose(within(session, kv::Command::DeleteRange(delete_in(d)))).await? {
            kv::Response::DeleteRange(d) => Ok(Response::new(self.delete_out(d))),
            other => Err(Status::internal(format!("unexpected response {other:?}"))),
        }
    }

    async fn txn(&self, request: Request<pb::TxnRequest>) -> Result<Response<pb::TxnResponse>, Status> {
        let session = session_of(request.metadata()).map_err(Status::invalid_argument)?;
        let t = request.into_inner();
        check_txn(&t, MAX_TXN_OPS).and_then(|()| check_size(&t)).map_err(Status::invalid_argument)?;
        let txn = txn_in(t).map_err(Status::invalid_argument)?;
        match self.propose(within(session, kv::Command::Txn(txn))).await? {
            kv::Response::Txn(t) => Ok(Response::new(self.txn_out(t))),
            other => Err(Status::internal(format!("unexpected response {other:?}"))),
        }
    }

    async fn compact(
        &self,
        request: Request<pb::CompactionRequest>,
    ) -> Result<Response<pb::CompactionResponse>, Status> {
        let session = session_of(request.metadata()).map_err(Status::invalid_argument)?;
        let revision = request.into_inner().revision;
        match self.propose(within(session, kv::Command::Compact { revision })).await? {
            kv::Response::Compact { revision } => {
                Ok(Response::new(pb::CompactionResponse { header: self.header(revision) }))
            }
            other => Err(Status::internal(format!("unexpected response {other:?}"))),
        }
    }
}

/// Serves the etcd API (KV, Watch, Lease, Cluster, Maintenance) on `listener` until the task is
/// dropped.
pub async fn serve(service: KvService, listener: tokio::net::TcpListener) {
    serve_all(service, listener, ServeOptions::default(), axum::Router::new()).await
}

/// [`serve`] with Watch settings other than etcd's defaults.
pub async fn serve_with(
    service: KvService,
    listener: tokio::net::TcpListener,
    watch: crate::watch_service::WatchOptions,
) {
    let options = ServeOptions { watch, ..ServeOptions::default() };
    serve_all(service, listener, options, axum::Router::new()).await
}

/// Settings of the services beyond etcd's defaults.
#[derive(Clone, Debug, Default)]
pub struct ServeOptions {
    /// Watch progress notifications.
    pub watch: crate::watch_service::WatchOptions,
    /// What log streams created without a retention keep.
    pub stream_retention: balsa_kv::Retention,
}

/// [`serve`], plus plain HTTP routes (`/metrics`, `/health`) on the same port, as etcd does:
/// HTTP/1.1 is accepted beside gRPC's HTTP/2, and paths that are no gRPC method go to `extra`.
pub async fn serve_with_routes(service: KvService, listener: tokio::net::TcpListener, extra: axum::Router) {
    serve_all(service, listener, ServeOptions::default(), extra).await
}

/// Every service with `options`, plus the HTTP routes `extra`.
pub async fn serve_all(
    service: KvService,
    listener: tokio::net::TcpListener,
    options: ServeOptions,
    extra: axum::Router,
) {
    let watch = options.watch;
    let (node, cluster_id, member_id) = (service.node.clone(), service.cluster_id, service.member_id);
    let maintenance = crate::maintenance::MaintenanceService::new(node.clone(), cluster_id, member_id);
    let lease = Arc::new(crate::lease_service::LeaseService::new(node.clone(), cluster_id, member_id));
    let cluster = crate::cluster_service::ClusterService::new(node.clone(), cluster_id, member_id);
    let session = crate::session::SessionService::new(node.clone());
    let log = crate::log_service::LogService::with_defaults(node.clone(), options.stream_retention);
    let watch = crate::watch_service::WatchService::new(node, cluster_id, member_id, watch);
    // Every service decodes at most what etcd's gRPC server accepts. KV and Log are served
    // without the router (`client_server`).
    let grpc = tonic::service::Routes::new(
        pb::maintenance_server::MaintenanceServer::new(maintenance)
            .max_decoding_message_size(MAX_DECODING_BYTES),
    )
    .add_service(pb::lease_server::LeaseServer::new(lease).max_decoding_message_size(MAX_DECODING_BYTES))
    .add_service(
        pb::cluster_server::ClusterServer::new(cluster).max_decoding_message_size(MAX_DECODING_BYTES),
    )
    .add_service(pb::watch_server::WatchServer::new(watch).max_decoding_message_size(MAX_DECODING_BYTES))
    .add_service(
        crate::pb::balsapb::session_server::SessionServer::new(session)
            .max_decoding_message_size(MAX_DECODING_BYTES),
    )
    .into_axum_router();
    use crate::client_server::Only;
    let dispatch = crate::client_server::Dispatch {
        kv: crate::unary::KvCalls::new(service, MAX_DECODING_BYTES),
        log: Only(
            crate::pb::balsapb::log_server::LogServer::new(log).max_decoding_message_size(MAX_DECODING_BYTES),
        ),
        router: grpc.merge(extra),
    };
    crate::client_server::serve(listener, dispatch).await;
}
