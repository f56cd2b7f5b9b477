//! etcd's Maintenance service: `Status` (what `etcdctl endpoint status` shows), `Snapshot` (this
//! member's state machine as a stream, in balsa's format: see [`crate::snapshot_file`]),
//! `MoveLeader`, `Hash` and `HashKV` (CRC-32C digests replicas can compare), `Alarm` (a list
//! kept by each member, not replicated) and `Defragment` (a snapshot now and log compaction).

use std::collections::BTreeSet;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::kv_service::status_of;
use crate::node::{NodeError, NodeHandle};
use crate::pb::etcdserverpb as pb;
use crate::pb::etcdserverpb::maintenance_server::Maintenance;

/// Bytes of snapshot per streamed message (etcd sends 32 KiB).
pub const SNAPSHOT_CHUNK_BYTES: usize = 64 * 1024;

/// How long MoveLeader waits for the transferee to take over (several election timeouts at
/// the default 100 ms tick) before answering etcd's transfer time-out.
pub const MOVE_LEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// The Maintenance service of one member.
pub struct MaintenanceService {
    node: Arc<NodeHandle>,
    cluster_id: u64,
    member_id: u64,
    /// Active alarms (member id, alarm type), held by this member only: balsa has no space
    /// quota and no corruption check that would raise one, and nothing refuses writes on them.
    alarms: Mutex<BTreeSet<(u64, i32)>>,
}

impl MaintenanceService {
    /// Serves `node` as member `member_id` of cluster `cluster_id`.
    pub fn new(node: Arc<NodeHandle>, cluster_id: u64, member_id: u64) -> Self {
        Self { node, cluster_id, member_id, alarms: Mutex::new(BTreeSet::new()) }
    }

    fn header(&self, revision: i64, raft_term: u64) -> Option<pb::ResponseHeader> {
        Some(pb::ResponseHeader {
            cluster_id: self.cluster_id,
            member_id: self.member_id,
            revision,
            raft_term,
        })
    }

    /// A header with the current revision and term.
    async fn current_header(&self) -> Result<Option<pb::ResponseHeader>, Status> {
        let s = self.node.status().await.map_err(status_of)?;
        let revision = self.node.revision().await.map_err(status_of)?;
        Ok(self.header(revision, s.current_term))
    }
}

/// The stream Maintenance.Snapshot answers with.
pub type SnapshotStream = Pin<Box<dyn Stream<Item = Result<pb::SnapshotResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn status(&self, _: Request<pb::StatusRequest>) -> Result<Response<pb::StatusResponse>, Status> {
        let s = self.node.status().await.map_err(status_of)?;
        let revision = self.node.revision().await.map_err(status_of)?;
        let disk = self
            .node
            .disk_usage()
            .await
            .map_err(|e| Status::internal(format!("etcdserver: sizing the data directory: {e}")))?;
        let (_, members) = self.node.members().await.map_err(status_of)?;
        let is_learner = members.iter().any(|m| m.attrs.id == self.member_id && m.is_learner);
        let header = pb::ResponseHeader {
            cluster_id: self.cluster_id,
            member_id: self.member_id,
            revision,
            raft_term: s.current_term,
        };
        Ok(Response::new(pb::StatusResponse {
            header: Some(header),
            version: format!("balsa-{}", env!("CARGO_PKG_VERSION")),
            db_size: disk.total_bytes as i64,
            leader: s.leader_id.unwrap_or(0),
            raft_index: s.commit_index,
            raft_term: s.current_term,
            raft_applied_index: s.last_applied,
            errors: Vec::new(),
            db_size_in_use: disk.in_use_bytes as i64,
            is_learner,
        }))
    }

    type SnapshotStream = SnapshotStream;

    async fn snapshot(&self, _: Request<pb::SnapshotRequest>) -> Result<Response<SnapshotStream>, Status> {
        let image = self.node.snapshot_image().await.map_err(status_of)?;
        let term = self.node.status().await.map_err(status_of)?.current_term;
        let header = self.header(image.revision, term);
        let (index, revision) = (image.index, image.revision);
        // Framing and copying a whole state is long work: not on the node's thread, where the
        // client server may run.
        let chunks = tokio::task::spawn_blocking(move || {
            let file = crate::snapshot_file::encode(&image);
            let total = file.len();
            let mut sent = 0;
            file.chunks(SNAPSHOT_CHUNK_BYTES)
                .map(|blob| {
                    sent += blob.len();
                    pb::SnapshotResponse {
                        header,
                        remaining_bytes: (total - sent) as u64,
                        blob: blob.to_vec(),
                    }
                })
                .collect::<Vec<_>>()
        })
        .await
        .map_err(|e| Status::internal(format!("encoding the snapshot: {e}")))?;
        let total: usize = chunks.iter().map(|c| c.blob.len()).sum();
        tracing::info!(bytes = total, index, revision, "sending a snapshot");
        Ok(Response::new(Box::pin(tokio_stream::iter(chunks.into_iter().map(Ok)))))
    }

    async fn move_leader(
        &self,
        request: Request<pb::MoveLeaderRequest>,
    ) -> Result<Response<pb::MoveLeaderResponse>, Status> {
        let target = request.into_inner().target_id;
        match self.node.move_leader(target, MOVE_LEADER_TIMEOUT).await {
            Ok(()) => {}
            // etcd answers MoveLeader on a follower with FailedPrecondition, not Unavailable.
            Err(NodeError::NotLeader { .. }) => {
                return Err(Status::failed_precondition("etcdserver: not leader"))
            }
            Err(e) => return Err(status_of(e)),
        }
        tracing::info!(to = format_args!("{target:x}"), "leadership moved");
        Ok(Response::new(pb::MoveLeaderResponse { header: self.current_header().await? }))
    }

    async fn hash(&self, _: Request<pb::HashRequest>) -> Result<Response<pb::HashResponse>, Status> {
        let image = self.node.snapshot_image().await.map_err(status_of)?;
        let term = self.node.status().await.map_err(status_of)?.current_term;
        let header = self.header(image.revision, term);
        let hash = tokio::task::spawn_blocking(move || crc32c::crc32c(&image.data))
            .await
            .map_err(|e| Status::internal(format!("hashing the state: {e}")))?;
        Ok(Response::new(pb::HashResponse { header, hash }))
    }

    async fn hash_kv(
        &self,
        request: Request<pb::HashKvRequest>,
    ) -> Result<Response<pb::HashKvResponse>, Status> {
        let revision = request.into_inner().revision;
        let (hash, compact_revision, current) = self.node.hash_kv(revision).await.map_err(status_of)?;
        let term = self.node.status().await.map_err(status_of)?.current_term;
        Ok(Response::new(pb::HashKvResponse { header: self.header(current, term), hash, compact_revision }))
    }

    async fn alarm(&self, request: Request<pb::AlarmRequest>) -> Result<Response<pb::AlarmResponse>, Status> {
        use pb::alarm_request::AlarmAction;
        let r = request.into_inner();
        let matches = |&(m, a): &(u64, i32)| {
            (r.member_id == 0 || m == r.member_id) && (r.alarm == pb::AlarmType::None as i32 || a == r.alarm)
        };
        let changed: Vec<(u64, i32)> = {
            let mut alarms = self.alarms.lock().expect("alarm list lock");
            match AlarmAction::try_from(r.action) {
                Ok(AlarmAction::Get) => alarms.iter().copied().filter(matches).collect(),
                Ok(AlarmAction::Activate) => {
                    if r.alarm == pb::AlarmType::None as i32 || pb::AlarmType::try_from(r.alarm).is_err() {
                        return Err(Status::invalid_argument("etcdserver: no alarm type to activate"));
                    }
                    let member = if r.member_id == 0 { self.member_id } else { r.member_id };
                    alarms.insert((member, r.alarm));
                    tracing::warn!(member = format_args!("{member:x}"), alarm = r.alarm, "alarm activated");
                    vec![(member, r.alarm)]
                }
                Ok(AlarmAction::Deactivate) => {
                    let gone: Vec<_> = alarms.iter().copied().filter(matches).collect();
                    for a in &gone {
                        alarms.remove(a);
                    }
                    gone
                }
                Err(_) => return Err(Status::invalid_argument("etcdserver: unknown alarm action")),
            }
        };
        let alarms =
            changed.into_iter().map(|(member_id, alarm)| pb::AlarmMember { member_id, alarm }).collect();
        Ok(Response::new(pb::AlarmResponse { header: self.current_header().await?, alarms }))
    }

    async fn defragment(
        &self,
        _: Request<pb::DefragmentRequest>,
    ) -> Result<Response<pb::DefragmentResponse>, Status> {
        let index = self.node.snapshot_now().await.map_err(status_of)?;
        tracing::info!(snapshot_index = ?index, "defragment: snapshot taken, log compacted behind it");
        Ok(Response::new(pb::DefragmentResponse { header: self.current_header().await? }))
    }
}
