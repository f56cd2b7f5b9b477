//! etcd's Maintenance service, as far as implemented: `Status` (what `etcdctl endpoint status`
//! shows: leader, term, indexes, size, version).

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::kv_service::status_of;
use crate::node::NodeHandle;
use crate::pb::etcdserverpb as pb;
use crate::pb::etcdserverpb::maintenance_server::Maintenance;

/// The Maintenance service of one member.
pub struct MaintenanceService {
    node: Arc<NodeHandle>,
    cluster_id: u64,
    member_id: u64,
}

impl MaintenanceService {
    /// Serves `node` as member `member_id` of cluster `cluster_id`.
    pub fn new(node: Arc<NodeHandle>, cluster_id: u64, member_id: u64) -> Self {
        Self { node, cluster_id, member_id }
    }
}

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn status(&self, _: Request<pb::StatusRequest>) -> Result<Response<pb::StatusResponse>, Status> {
        let s = self.node.status().await.map_err(status_of)?;
        let (size, revision) = self.node.state_size().await.map_err(status_of)?;
        let header = pb::ResponseHeader {
            cluster_id: self.cluster_id,
            member_id: self.member_id,
            revision,
            raft_term: s.current_term,
        };
        Ok(Response::new(pb::StatusResponse {
            header: Some(header),
            version: format!("balsa-{}", env!("CARGO_PKG_VERSION")),
            db_size: size as i64,
            leader: s.leader_id.unwrap_or(0),
            raft_index: s.commit_index,
            raft_term: s.current_term,
            raft_applied_index: s.last_applied,
            errors: Vec::new(),
            db_size_in_use: size as i64,
            is_learner: false,
        }))
    }
}
