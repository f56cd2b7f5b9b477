//! etcd's v3 `Cluster` service: list, add (as voter or learner), remove, update and promote
//! members. Changes of the voter set go through joint consensus in the Raft core; a member added
//! as a voter starts as a learner and the leader promotes it once it has caught up, so adding a
//! member never weakens the quorum while the new server is still empty (unlike etcd, where an
//! added voter counts towards the quorum before it has even started).
//!
//! Names and URLs live in the replicated member table (balsa-kv), so every member can reach the
//! new one. Only the leader changes membership: a member that is not the leader forwards the
//! call to the leader's client URL, so `etcdctl member add` works against any member.

use std::sync::Arc;

use balsa_kv::{Command, MemberAttrs};
use balsa_raft::MembershipChange;
use tonic::{Request, Response, Status};

use crate::config::{member_id, parse_url};
use crate::kv_service::status_of;
use crate::node::{MemberInfo, NodeError, NodeHandle};
use crate::pb::etcdserverpb as pb;
use crate::pb::etcdserverpb::cluster_client::ClusterClient;
use crate::pb::etcdserverpb::cluster_server::Cluster;

/// The Cluster service of one member.
pub struct ClusterService {
    node: Arc<NodeHandle>,
    cluster_id: u64,
    member_id: u64,
}

fn member_out(m: MemberInfo) -> pb::Member {
    pb::Member {
        id: m.attrs.id,
        name: m.attrs.name,
        peer_ur_ls: m.attrs.peer_urls,
        client_ur_ls: m.attrs.client_urls,
        is_learner: m.is_learner,
    }
}

/// Checks peer URLs (`http://ip:port`); returns them with the first one's address.
/// The error says what is wrong (for [`NodeError::InvalidMembership`]).
fn peer_urls_in(urls: &[String]) -> Result<std::net::SocketAddr, String> {
    let first = urls.first().ok_or_else(|| "no peer URLs given".to_string())?;
    for u in urls {
        parse_url("peerURLs", u).map_err(|e| e.to_string())?;
    }
    parse_url("peerURLs", first).map_err(|e| e.to_string())
}

/// etcd's ErrGRPCMemberBadURLs: what etcd answers for any peer URL list it cannot parse
/// (including an empty one). The reason is logged, since the client does not hear it.
fn bad_urls(why: String) -> Status {
    tracing::debug!(reason = %why, "member change with invalid peer URLs refused");
    Status::invalid_argument("etcdserver: given member URLs are invalid")
}

impl ClusterService {
    /// Serves `node` as member `member_id` of cluster `cluster_id`.
    pub fn new(node: Arc<NodeHandle>, cluster_id: u64, member_id: u64) -> Self {
        Self { node, cluster_id, member_id }
    }

    async fn header(&self) -> Option<pb::ResponseHeader> {
        let term = self.node.status().await.map_or(0, |s| s.current_term);
        Some(pb::ResponseHeader {
            cluster_id: self.cluster_id,
            member_id: self.member_id,
            revision: 0,
            raft_term: term,
        })
    }

    async fn members(&self) -> Result<Vec<pb::Member>, Status> {
        let (_, members) = self.node.members().await.map_err(status_of)?;
        Ok(members.into_iter().map(member_out).collect())
    }

    /// A client of the leader's Cluster service, when this member is not the leader and knows
    /// where the leader serves clients.
    async fn leader_client(&self) -> Result<Option<ClusterClient<tonic::transport::Channel>>, Status> {
        let status = self.node.status().await.map_err(status_of)?;
        let Some(leader) = status.leader_id.filter(|l| *l != status.id) else {
            return Ok(None);
        };
        let (_, members) = self.node.members().await.map_err(status_of)?;
        let url =
            members.iter().find(|m| m.attrs.id == leader).and_then(|m| m.attrs.client_urls.first().cloned());
        let Some(url) = url else {
            return Err(Status::unavailable(
                "etcdserver: not leader (the leader has not published its client URL yet)",
            ));
        };
        match ClusterClient::connect(url.clone()).await {
            Ok(c) => Ok(Some(c)),
            Err(e) => Err(Status::unavailable(format!("etcdserver: cannot reach the leader at {url}: {e}"))),
        }
    }

    async fn add_locally(&self, r: &pb::MemberAddRequest) -> Result<pb::MemberAddResponse, NodeError> {
        let addr = peer_urls_in(&r.peer_ur_ls).map_err(NodeError::InvalidMembership)?;
        let id = member_id(addr);
        let (_, members) = self.node.members().await?;
        if members.iter().any(|m| m.attrs.id == id) {
            return Err(NodeError::MemberExists);
        }
        if members.iter().any(|m| m.attrs.peer_urls.iter().any(|u| r.peer_ur_ls.contains(u))) {
            return Err(NodeError::PeerUrlExists);
        }
        if self.node.status().await?.role != balsa_raft::Role::Leader {
            return Err(NodeError::NotLeader { leader_hint: None });
        }
        // The address first, so the leader can reach the new member as soon as it is one.
        let attrs = MemberAttrs { id, peer_urls: r.peer_ur_ls.clone(), ..MemberAttrs::default() };
        self.node.propose(Command::MemberPut(attrs.clone())).await?;
        let change =
            if r.is_learner { MembershipChange::AddLearner(id) } else { MembershipChange::AddVoter(id) };
        if let Err(e) = self.node.change_membership(change).await {
            // Not a member after all: forget the address again (best effort).
            let _ = self.node.propose(Command::MemberForget { id }).await;
            return Err(e);
        }
        let (_, members) = self.node.members().await?;
        Ok(pb::MemberAddResponse {
            header: self.header().await,
            member: Some(member_out(MemberInfo { attrs, is_learner: r.is_learner })),
            members: members.into_iter().map(member_out).collect(),
        })
    }
}

/// Runs `local`; if this member is not the leader, forwards the call to the leader instead.
macro_rules! on_leader {
    ($self:ident, $req:ident, $local:expr, $method:ident) => {{
        match $local {
            Err(NodeError::NotLeader { .. }) => match $self.leader_client().await? {
                Some(mut leader) => leader.$method($req).await,
                None => Err(status_of(NodeError::NotLeader { leader_hint: None })),
            },
            other => other.map(Response::new).map_err(status_of),
        }
    }};
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        request: Request<pb::MemberAddRequest>,
    ) -> Result<Response<pb::MemberAddResponse>, Status> {
        let r = request.into_inner();
        peer_urls_in(&r.peer_ur_ls).map_err(bad_urls)?;
        let local = self.add_locally(&r).await;
        on_leader!(self, r, local, member_add)
    }

    async fn member_remove(
        &self,
        request: Request<pb::MemberRemoveRequest>,
    ) -> Result<Response<pb::MemberRemoveResponse>, Status> {
        let r = request.into_inner();
        let local = async {
            self.node.change_membership(MembershipChange::Remove(r.id)).await?;
            // The configuration no longer has it; its address can go too (best effort: a
            // leftover entry is harmless and the next removal or update replaces it).
            let _ = self.node.propose(Command::MemberForget { id: r.id }).await;
            Ok(pb::MemberRemoveResponse {
                header: self.header().await,
                members: self.members().await.unwrap_or_default(),
            })
        }
        .await;
        on_leader!(self, r, local, member_remove)
    }

    async fn member_update(
        &self,
        request: Request<pb::MemberUpdateRequest>,
    ) -> Result<Response<pb::MemberUpdateResponse>, Status> {
        let r = request.into_inner();
        peer_urls_in(&r.peer_ur_ls).map_err(bad_urls)?;
        let (_, members) = self.node.members().await.map_err(status_of)?;
        let Some(current) = members.into_iter().find(|m| m.attrs.id == r.id) else {
            return Err(status_of(NodeError::MemberNotFound));
        };
        // Any member can propose this: it is an ordinary write to the member table.
        let attrs = MemberAttrs { peer_urls: r.peer_ur_ls.clone(), ..current.attrs };
        self.node.propose(Command::MemberPut(attrs)).await.map_err(status_of)?;
        Ok(Response::new(pb::MemberUpdateResponse {
            header: self.header().await,
            members: self.members().await?,
        }))
    }

    async fn member_list(
        &self,
        _: Request<pb::MemberListRequest>,
    ) -> Result<Response<pb::MemberListResponse>, Status> {
        Ok(Response::new(pb::MemberListResponse {
            header: self.header().await,
            members: self.members().await?,
        }))
    }

    async fn member_promote(
        &self,
        request: Request<pb::MemberPromoteRequest>,
    ) -> Result<Response<pb::MemberPromoteResponse>, Status> {
        let r = request.into_inner();
        let local = async {
            self.node.change_membership(MembershipChange::Promote(r.id)).await?;
            Ok(pb::MemberPromoteResponse {
                header: self.header().await,
                members: self.members().await.unwrap_or_default(),
            })
        }
        .await;
        on_leader!(self, r, local, member_promote)
    }
}
