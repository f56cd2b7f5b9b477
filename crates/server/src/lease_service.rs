//! etcd's v3 `Lease` service: grants, revokes and keep-alives go through the log (so any member
//! takes them and every replica agrees); time to live and the lease list are answered from this
//! member's state. Expiry is the leader's job (see [`crate::lease_clock`]).

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use balsa_kv as kv;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use crate::kv_service::status_of;
use crate::node::{NodeError, NodeHandle};
use crate::pb::etcdserverpb as pb;
use crate::pb::etcdserverpb::lease_server::Lease;
use crate::session::{session_of, within};

/// etcd's largest TTL, seconds.
pub const MAX_LEASE_TTL_SECS: i64 = 9_000_000_000;

/// The Lease service of one member.
pub struct LeaseService {
    node: Arc<NodeHandle>,
    cluster_id: u64,
    member_id: u64,
    /// Mixed into server-chosen lease ids so two grants never pick the same one.
    next_id: AtomicU64,
}

impl LeaseService {
    /// Serves `node` as member `member_id` of cluster `cluster_id`.
    pub fn new(node: Arc<NodeHandle>, cluster_id: u64, member_id: u64) -> Self {
        Self { node, cluster_id, member_id, next_id: AtomicU64::new(0) }
    }

    fn header(&self, revision: i64) -> Option<pb::ResponseHeader> {
        crate::kv_service::header(self.cluster_id, self.member_id, revision)
    }

    /// A fresh positive lease id: this member's id, the time and a counter, mixed (etcd picks
    /// ids the same way: unique per member, unpredictable across members). A collision with a
    /// live lease is refused by the state machine, never silently merged.
    fn fresh_id(&self) -> i64 {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut x = self.member_id.rotate_left(32) ^ nanos ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        // splitmix64's finaliser: spreads the bits so ids look unrelated.
        x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        x ^= x >> 31;
        ((x >> 1) as i64).max(1)
    }

    async fn keep_alive_once(&self, id: i64) -> Result<pb::LeaseKeepAliveResponse, Status> {
        let ttl = match self.node.propose(kv::Command::LeaseKeepAlive { id }).await {
            Ok(kv::Response::LeaseKeepAlive { ttl_secs, .. }) => ttl_secs,
            // etcd answers a keep-alive of a lease that is gone with TTL 0, not an error.
            Err(NodeError::Kv(kv::KvError::LeaseNotFound)) => 0,
            Ok(other) => return Err(Status::internal(format!("unexpected response {other:?}"))),
            Err(e) => return Err(status_of(e)),
        };
        Ok(pb::LeaseKeepAliveResponse { header: self.header(0), id, ttl })
    }
}

type KeepAliveStream = Pin<Box<dyn Stream<Item = Result<pb::LeaseKeepAliveResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Lease for Arc<LeaseService> {
    async fn lease_grant(
        &self,
        request: Request<pb::LeaseGrantRequest>,
    ) -> Result<Response<pb::LeaseGrantResponse>, Status> {
        let session = session_of(request.metadata()).map_err(Status::invalid_argument)?;
        let r = request.into_inner();
        if r.ttl > MAX_LEASE_TTL_SECS {
            return Err(Status::out_of_range("etcdserver: too large lease TTL"));
        }
        if r.id < 0 {
            return Err(Status::invalid_argument(kv::KvError::InvalidLeaseId.to_string()));
        }
        let id = if r.id == 0 { self.fresh_id() } else { r.id };
        let ttl_secs = r.ttl.max(self.node.min_lease_ttl_secs());
        let grant = within(session, kv::Command::LeaseGrant { id, ttl_secs });
        match self.node.propose(grant).await.map_err(status_of)? {
            kv::Response::LeaseGrant { id, ttl_secs } => Ok(Response::new(pb::LeaseGrantResponse {
                header: self.header(0),
                id,
                ttl: ttl_secs,
                error: String::new(),
            })),
            other => Err(Status::internal(format!("unexpected response {other:?}"))),
        }
    }

    async fn lease_revoke(
        &self,
        request: Request<pb::LeaseRevokeRequest>,
    ) -> Result<Response<pb::LeaseRevokeResponse>, Status> {
        let session = session_of(request.metadata()).map_err(Status::invalid_argument)?;
        let id = request.into_inner().id;
        match self.node.propose(within(session, kv::Command::LeaseRevoke { id })).await.map_err(status_of)? {
            kv::Response::LeaseRevoke { revision } => {
                Ok(Response::new(pb::LeaseRevokeResponse { header: self.header(revision) }))
            }
            other => Err(Status::internal(format!("unexpected response {other:?}"))),
        }
    }

    type LeaseKeepAliveStream = KeepAliveStream;

    /// Answers each keep-alive in order; the stream ends when the client closes it, or with the
    /// error that stopped it (the client reconnects, as with etcd).
    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<pb::LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let mut incoming = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let service = self.clone();
        tokio::spawn(async move {
            while let Some(next) = incoming.next().await {
                let answer = match next {
                    Ok(req) => service.keep_alive_once(req.id).await,
                    Err(status) => Err(status),
                };
                let failed = answer.is_err();
                if tx.send(answer).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<pb::LeaseTimeToLiveRequest>,
    ) -> Result<Response<pb::LeaseTimeToLiveResponse>, Status> {
        let r = request.into_inner();
        let info = self.node.lease_time_to_live(r.id).await.map_err(status_of)?;
        // etcd answers an unknown lease with TTL -1 (etcdctl prints "already expired").
        let resp = match info {
            None => pb::LeaseTimeToLiveResponse {
                header: self.header(0),
                id: r.id,
                ttl: -1,
                ..Default::default()
            },
            Some(info) => pb::LeaseTimeToLiveResponse {
                header: self.header(0),
                id: r.id,
                ttl: info.remaining.as_secs_f64().ceil() as i64,
                granted_ttl: info.granted_ttl_secs,
                keys: if r.keys { info.keys.into_iter().map(|k| k.to_vec()).collect() } else { Vec::new() },
            },
        };
        Ok(Response::new(resp))
    }

    async fn lease_leases(
        &self,
        _: Request<pb::LeaseLeasesRequest>,
    ) -> Result<Response<pb::LeaseLeasesResponse>, Status> {
        let ids = self.node.leases().await.map_err(status_of)?;
        Ok(Response::new(pb::LeaseLeasesResponse {
            header: self.header(0),
            leases: ids.into_iter().map(|id| pb::LeaseStatus { id }).collect(),
        }))
    }
}
