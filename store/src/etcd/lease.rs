//! `etcdserverpb.Lease`: Grant, Revoke, KeepAlive (stream), TimeToLive, Leases.

use keelson_etcdpb::etcdserverpb::lease_server::Lease;
use keelson_etcdpb::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse,
    LeaseLeasesRequest, LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse, LeaseStatus,
    LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::auth::Need;
use crate::error::StoreError;
use crate::etcd::auth::authorize;
use crate::etcd::require_leader;
use crate::mvcc::MAX_LEASE_TTL;
use crate::raft::pb::InternalRequest;
use crate::raft::pb::internal_request::Request as Rq;
use crate::raft::pb::internal_response::Response as Rs;
use crate::server::lessor::Lessor;
use crate::server::node::Node;

/// The Lease service.
#[derive(Debug, Clone)]
pub struct LeaseService {
    node: Node,
    lessor: Lessor,
}

impl LeaseService {
    /// The service for `node`.
    pub fn new(node: Node, lessor: Lessor) -> LeaseService {
        LeaseService { node, lessor }
    }
}

type KeepAliveStream = require_leader::BoxStream<LeaseKeepAliveResponse>;

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn lease_grant(
        &self,
        req: Request<LeaseGrantRequest>,
    ) -> Result<Response<LeaseGrantResponse>, Status> {
        let mut g = req.into_inner();
        if g.ttl > MAX_LEASE_TTL {
            return Err(StoreError::LeaseTtlTooLarge.into());
        }
        if g.id == 0 {
            g.id = self.lessor.next_id();
        }
        match self
            .node
            .propose(InternalRequest {
                request: Some(Rq::LeaseGrant(g)),
                ..Default::default()
            })
            .await?
        {
            Rs::LeaseGrant(mut r) => {
                let rev = r.header.as_ref().map(|h| h.revision).unwrap_or(0);
                r.header = self.node.header(rev);
                // A fresh lease starts its full TTL now, on the leader.
                let _ = self.lessor.keep_alive(&self.node, r.id).await;
                Ok(Response::new(r))
            }
            _ => Err(StoreError::Internal("unexpected response to lease grant".into()).into()),
        }
    }

    async fn lease_revoke(
        &self,
        req: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        // Revoking deletes the lease's keys: write on each of them (auth on).
        let keys: Vec<Vec<u8>> = self
            .node
            .shared()
            .mvcc
            .read()
            .leases()
            .get(&req.get_ref().id)
            .map(|l| l.keys.iter().cloned().collect())
            .unwrap_or_default();
        let needs: Vec<Need<'_>> = keys.iter().map(|k| Need::Write(k, &[])).collect();
        let checked = authorize(&self.node, &req, &needs)?;
        match self
            .node
            .propose(checked.entry(Rq::LeaseRevoke(req.into_inner())))
            .await?
        {
            Rs::LeaseRevoke(mut r) => {
                let rev = r.header.as_ref().map(|h| h.revision).unwrap_or(0);
                r.header = self.node.header(rev);
                Ok(Response::new(r))
            }
            _ => Err(StoreError::Internal("unexpected response to lease revoke".into()).into()),
        }
    }

    type LeaseKeepAliveStream = KeepAliveStream;

    async fn lease_keep_alive(
        &self,
        req: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<KeepAliveStream>, Status> {
        let metadata = req.metadata().clone();
        let mut input = req.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let node = self.node.clone();
        let lessor = self.lessor.clone();
        tokio::spawn(async move {
            while let Some(Ok(r)) = input.next().await {
                let reply = match lessor.keep_alive(&node, r.id).await {
                    Ok(ttl) => Ok(LeaseKeepAliveResponse {
                        header: node.current_header(),
                        id: r.id,
                        ttl,
                    }),
                    Err(e) => Err(Status::from(e)),
                };
                let failed = reply.is_err();
                if tx.send(reply).await.is_err() || failed {
                    return;
                }
            }
        });
        let out = Box::pin(ReceiverStream::new(rx));
        Ok(Response::new(require_leader::guard(
            &self.node, &metadata, out,
        )))
    }

    async fn lease_time_to_live(
        &self,
        req: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        let mut resp = self
            .lessor
            .time_to_live(&self.node, req.into_inner())
            .await?;
        let rev = resp.header.as_ref().map(|h| h.revision).unwrap_or(0);
        resp.header = self.node.header(rev);
        Ok(Response::new(resp))
    }

    async fn lease_leases(
        &self,
        _req: Request<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseLeasesResponse>, Status> {
        self.node.read_barrier().await?;
        let leases = self
            .node
            .shared()
            .mvcc
            .read()
            .leases()
            .keys()
            .map(|id| LeaseStatus { id: *id })
            .collect();
        Ok(Response::new(LeaseLeasesResponse {
            header: self.node.current_header(),
            leases,
        }))
    }
}
