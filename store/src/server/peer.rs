//! The server side of the peer protocol.

use keelson_etcdpb::etcdserverpb::{
    LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
    Member as PbMember,
};
use openraft::error::{CheckIsLeaderError, RaftError};
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use tonic::{Request, Response, Status};

use super::lessor::Lessor;
use super::node::Node;
use crate::error::StoreError;
use crate::raft::network::{decode, encode};
use crate::raft::pb::raft_peer_server::RaftPeer;
use crate::raft::pb::{
    ChangeMembersRequest, ChangeMembersResponse, MembersRequest, MembersResponse, ProbeRequest,
    ProbeResponse, ProposeRequest, ProposeResponse, RaftMessage, ReadIndexRequest,
    ReadIndexResponse, TransferRequest, TransferResponse,
};
use crate::raft::{NodeId, TypeConfig};

/// Serves peers.
#[derive(Debug, Clone)]
pub struct PeerService {
    node: Node,
    lessor: Lessor,
}

impl PeerService {
    /// The service for `node`.
    pub fn new(node: Node, lessor: Lessor) -> PeerService {
        PeerService { node, lessor }
    }
}

/// The cluster's members as etcd lists them.
pub fn member_list(node: &Node) -> Vec<PbMember> {
    let attrs = node.shared().mvcc.read().members().clone();
    node.members()
        .into_iter()
        .map(|(id, (m, learner))| {
            let a = attrs.get(&id);
            PbMember {
                id,
                name: a.map(|a| a.name.clone()).unwrap_or_default(),
                peer_ur_ls: m.peer_urls.clone(),
                client_ur_ls: a.map(|a| a.client_urls.clone()).unwrap_or_default(),
                is_learner: learner,
            }
        })
        .collect()
}

#[tonic::async_trait]
impl RaftPeer for PeerService {
    async fn append_entries(
        &self,
        req: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let rpc: AppendEntriesRequest<TypeConfig> = decode(req.get_ref())?;
        let res = self.node.raft().append_entries(rpc).await;
        Ok(Response::new(encode(&res)?))
    }

    async fn vote(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let rpc: VoteRequest<NodeId> = decode(req.get_ref())?;
        let res = self.node.raft().vote(rpc).await;
        Ok(Response::new(encode(&res)?))
    }

    async fn install_snapshot(
        &self,
        req: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let rpc: InstallSnapshotRequest<TypeConfig> = decode(req.get_ref())?;
        let res = self.node.raft().install_snapshot(rpc).await;
        Ok(Response::new(encode(&res)?))
    }

    async fn propose(
        &self,
        req: Request<ProposeRequest>,
    ) -> Result<Response<ProposeResponse>, Status> {
        let batch = req.into_inner().batch.unwrap_or_default();
        match self.node.propose_forwarded(batch).await {
            Ok(responses) => Ok(Response::new(ProposeResponse {
                responses: Some(responses),
            })),
            // Not appended: the sender may try the leader.
            Err(StoreError::NotLeader) => Err(Status::failed_precondition("not leader")),
            // Perhaps appended: the sender must not try again.
            Err(e) => Err(Status::unknown(e.to_string())),
        }
    }

    async fn probe(&self, _: Request<ProbeRequest>) -> Result<Response<ProbeResponse>, Status> {
        Ok(Response::new(ProbeResponse { id: self.node.id() }))
    }

    async fn transfer(
        &self,
        req: Request<TransferRequest>,
    ) -> Result<Response<TransferResponse>, Status> {
        let r = req.into_inner();
        if r.hold_ms > 0 {
            self.node
                .hold_elections(Some(std::time::Duration::from_millis(r.hold_ms)));
        } else {
            self.node.hold_elections(None);
        }
        if r.campaign {
            self.node
                .raft()
                .trigger()
                .elect()
                .await
                .map_err(|e| Status::unavailable(e.to_string()))?;
        }
        Ok(Response::new(TransferResponse {}))
    }

    async fn read_index(
        &self,
        _req: Request<ReadIndexRequest>,
    ) -> Result<Response<ReadIndexResponse>, Status> {
        match self.node.read_index().await {
            Ok(read) => Ok(Response::new(ReadIndexResponse {
                index: read.map(|l| l.index).unwrap_or(0),
            })),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(_))) => {
                Err(Status::failed_precondition("not leader"))
            }
            Err(e) => Err(Status::unavailable(e.to_string())),
        }
    }

    async fn lease_keep_alive(
        &self,
        req: Request<LeaseKeepAliveRequest>,
    ) -> Result<Response<LeaseKeepAliveResponse>, Status> {
        let id = req.into_inner().id;
        if !self.node.is_leader() {
            return Err(Status::failed_precondition("not leader"));
        }
        let ttl = self.lessor.keep_alive(&self.node, id).await?;
        Ok(Response::new(LeaseKeepAliveResponse {
            header: self.node.current_header(),
            id,
            ttl,
        }))
    }

    async fn lease_time_to_live(
        &self,
        req: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        if !self.node.is_leader() {
            return Err(Status::failed_precondition("not leader"));
        }
        Ok(Response::new(
            self.lessor
                .time_to_live(&self.node, req.into_inner())
                .await?,
        ))
    }

    async fn members(
        &self,
        _req: Request<MembersRequest>,
    ) -> Result<Response<MembersResponse>, Status> {
        Ok(Response::new(MembersResponse {
            members: member_list(&self.node),
            cluster_id: self.node.cluster_id(),
        }))
    }

    async fn change_members(
        &self,
        req: Request<ChangeMembersRequest>,
    ) -> Result<Response<ChangeMembersResponse>, Status> {
        let response = crate::etcd::cluster::change_on_leader(&self.node, req.into_inner()).await?;
        Ok(Response::new(ChangeMembersResponse { response }))
    }
}
