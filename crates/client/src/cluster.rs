//! Members and maintenance: the member list and its changes, every endpoint's status (and the
//! table `balsa cluster status` prints), and snapshots saved to a file.

use std::path::Path;

use tokio::io::AsyncWriteExt;

use crate::client::{Client, Route};
use crate::error::{Error, Result};
use crate::pb;
use crate::pb::cluster_client::ClusterClient;
use crate::pb::maintenance_client::MaintenanceClient;

/// A member as the cluster lists it (etcd's `Member`: id, name, peer and client URLs, learner).
pub type Member = pb::Member;

/// One endpoint's answer to Maintenance.Status (etcd's `StatusResponse`).
pub type StatusResponse = pb::StatusResponse;

/// A member's role as its own status reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Leads the cluster.
    Leader,
    /// A voting follower.
    Follower,
    /// A non-voting learner.
    Learner,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Leader => "leader",
            Role::Follower => "follower",
            Role::Learner => "learner",
        })
    }
}

/// One row of [`Client::cluster_status`]: what one endpoint says about its member.
#[derive(Debug, Clone, PartialEq)]
pub struct MemberStatus {
    /// The endpoint asked.
    pub endpoint: String,
    /// The member's id (0 if the endpoint did not answer).
    pub id: u64,
    /// The member's name from the member list ("" if unknown or not yet published).
    pub name: String,
    /// Leader, follower or learner (`None` if the endpoint did not answer).
    pub role: Option<Role>,
    /// The member's current term.
    pub term: u64,
    /// The member's commit index.
    pub commit: u64,
    /// The member's applied index.
    pub applied: u64,
    /// The leader's commit index minus this member's applied index: how far behind it is
    /// (`None` when the leader's status is not known).
    pub lag: Option<u64>,
    /// Why the endpoint did not answer.
    pub error: Option<String>,
}

/// What [`Client::snapshot_save`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotSaved {
    /// Bytes written.
    pub bytes: u64,
}

impl Client {
    /// The cluster's members.
    pub async fn member_list(&self) -> Result<Vec<Member>> {
        let r = self
            .run(Route::Leader, |svc| async move {
                ClusterClient::new(svc).member_list(pb::MemberListRequest {}).await
            })
            .await?;
        Ok(r.into_inner().members)
    }

    /// Adds a member at `peer_urls` (a learner if `learner`; balsa adds a voter as a learner
    /// first and promotes it once caught up). Returns the new member and the new list.
    pub async fn member_add(&self, peer_urls: &[String], learner: bool) -> Result<(Member, Vec<Member>)> {
        let request = pb::MemberAddRequest { peer_ur_ls: peer_urls.to_vec(), is_learner: learner };
        let r = self
            .run(Route::Leader, |svc| {
                let request = request.clone();
                async move { ClusterClient::new(svc).member_add(request).await }
            })
            .await?
            .into_inner();
        let member = r.member.ok_or_else(|| Error::Server {
            code: tonic::Code::Internal,
            message: "member add: the answer names no member".into(),
        })?;
        Ok((member, r.members))
    }

    /// Removes member `id`; returns the new list.
    pub async fn member_remove(&self, id: u64) -> Result<Vec<Member>> {
        let r = self
            .run(Route::Leader, |svc| async move {
                ClusterClient::new(svc).member_remove(pb::MemberRemoveRequest { id }).await
            })
            .await?;
        Ok(r.into_inner().members)
    }

    /// Promotes learner `id` to a voter (refused until it has caught up); returns the new list.
    pub async fn member_promote(&self, id: u64) -> Result<Vec<Member>> {
        let r = self
            .run(Route::Leader, |svc| async move {
                ClusterClient::new(svc).member_promote(pb::MemberPromoteRequest { id }).await
            })
            .await?;
        Ok(r.into_inner().members)
    }

    /// Asks endpoint number `endpoint` (no retry elsewhere: the point is this member's view).
    pub async fn endpoint_status(&self, endpoint: usize) -> Result<StatusResponse> {
        let limit = self.options().request_timeout;
        let mut m = MaintenanceClient::new(self.svc(endpoint));
        match tokio::time::timeout(limit, m.status(pb::StatusRequest {})).await {
            Ok(r) => Ok(r?.into_inner()),
            Err(_) => Err(Error::Timeout(format!("status: no answer within {limit:?}"))),
        }
    }

    /// Every endpoint's status, with names from the member list and each member's lag behind
    /// the leader's commit index. Endpoints that do not answer are rows with `error` set.
    pub async fn cluster_status(&self) -> Result<Vec<MemberStatus>> {
        // All at once: a member that does not answer costs one timeout, not one each.
        let statuses =
            crate::client::futures_join_all((0..self.endpoints().len()).map(|i| self.endpoint_status(i)))
                .await;
        if statuses.iter().all(|s| s.is_err()) {
            let why = statuses.into_iter().find_map(|s| s.err()).expect("at least one endpoint");
            return Err(why);
        }
        let members = self.member_list().await.unwrap_or_default();
        let leader_commit = statuses.iter().flatten().find_map(|s| {
            let id = s.header.as_ref().map_or(0, |h| h.member_id);
            (id != 0 && id == s.leader).then_some(s.raft_index)
        });
        let rows = statuses
            .into_iter()
            .zip(self.endpoints())
            .map(|(s, endpoint)| row(endpoint, s, &members, leader_commit))
            .collect();
        Ok(rows)
    }

    /// Streams a snapshot of one member's state to `path` (written to `path.part`, synced, then
    /// renamed, so a failed save never leaves a partial file under the final name).
    pub async fn snapshot_save(&self, path: &Path) -> Result<SnapshotSaved> {
        let part = path.with_extension("part");
        let deadline = tokio::time::Instant::now() + self.options().retry_budget;
        let bytes = self
            .run_until(Route::Any, deadline, |svc| {
                let part = part.clone();
                async move {
                    let mut stream =
                        MaintenanceClient::new(svc).snapshot(pb::SnapshotRequest {}).await?.into_inner();
                    let mut file = tokio::fs::File::create(&part).await.map_err(io_status)?;
                    let mut bytes = 0u64;
                    while let Some(chunk) = stream.message().await? {
                        file.write_all(&chunk.blob).await.map_err(io_status)?;
                        bytes += chunk.blob.len() as u64;
                    }
                    file.sync_all().await.map_err(io_status)?;
                    Ok(bytes)
                }
            })
            .await?;
        tokio::fs::rename(&part, path).await?;
        Ok(SnapshotSaved { bytes })
    }
}

fn io_status(e: std::io::Error) -> tonic::Status {
    // Aborted is not retried, so a local disk problem ends the call at once.
    tonic::Status::aborted(format!("writing the snapshot: {e}"))
}

fn row(
    endpoint: &str,
    status: Result<StatusResponse>,
    members: &[Member],
    leader_commit: Option<u64>,
) -> MemberStatus {
    match status {
        Ok(s) => {
            let id = s.header.as_ref().map_or(0, |h| h.member_id);
            let role = if s.is_learner {
                Role::Learner
            } else if id == s.leader {
                Role::Leader
            } else {
                Role::Follower
            };
            let name = members.iter().find(|m| m.id == id).map(|m| m.name.clone()).unwrap_or_default();
            MemberStatus {
                endpoint: endpoint.to_string(),
                id,
                name,
                role: Some(role),
                term: s.raft_term,
                commit: s.raft_index,
                applied: s.raft_applied_index,
                lag: leader_commit.map(|c| c.saturating_sub(s.raft_applied_index)),
                error: None,
            }
        }
        Err(e) => MemberStatus {
            endpoint: endpoint.to_string(),
            id: 0,
            name: String::new(),
            role: None,
            term: 0,
            commit: 0,
            applied: 0,
            lag: None,
            error: Some(e.to_string()),
        },
    }
}
