//! `etcdserverpb.KV`: Range, Put, DeleteRange, Txn, Compact.

use keelson_etcdpb::etcdserverpb::kv_server::Kv;
use keelson_etcdpb::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, RequestOp, TxnRequest, TxnResponse, request_op,
};
use prost::Message;
use tonic::{Request, Response, Status};

use crate::auth::{Need, delete_needs, put_needs, txn_needs};
use crate::error::StoreError;
use crate::etcd::auth::authorize;
use crate::mvcc::{check_key, check_put, check_txn};
use crate::raft::pb::InternalRequest;
use crate::raft::pb::internal_request::Request as Rq;
use crate::raft::pb::internal_response::Response as Rs;
use crate::server::node::Node;
use crate::server::quota::Quota;

/// The KV service.
#[derive(Debug, Clone)]
pub struct KvService {
    node: Node,
    quota: Quota,
    /// `--max-request-bytes`: larger writes are refused before they reach the log.
    max_request_bytes: usize,
}

impl KvService {
    /// The service for `node`.
    pub fn new(node: Node, quota: Quota, max_request_bytes: usize) -> KvService {
        KvService {
            node,
            quota,
            max_request_bytes,
        }
    }

    /// etcd's `request is too large` for a write bigger than `--max-request-bytes` (the gRPC
    /// limit is 512 KiB above it, so such a request arrives and is refused here).
    fn check_size(&self, len: usize) -> Result<(), StoreError> {
        if len > self.max_request_bytes {
            return Err(StoreError::RequestTooLarge);
        }
        Ok(())
    }

    /// What `physical` asks of a compaction: return once this member has applied it and
    /// deleted its records (bounded: a long snapshot dump holds the deletes back).
    async fn wait_compacted(&self, revision: i64) {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            {
                let shared = self.node.shared();
                let m = shared.mvcc.read();
                // Keys taken by the deleting task leave the state before their write is done.
                if m.compact_revision() >= revision
                    && !m.has_compacted()
                    && !shared.deleting_compacted()
                {
                    return;
                }
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(
                    revision,
                    "physical compaction: records not yet deleted after 60s"
                );
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    fn fill_header(&self, h: &mut Option<keelson_etcdpb::etcdserverpb::ResponseHeader>) {
        let rev = h.as_ref().map(|h| h.revision).unwrap_or(0);
        *h = self.node.header(rev);
    }
}

fn is_read_only(ops: &[RequestOp]) -> bool {
    ops.iter().all(|op| match &op.request {
        Some(request_op::Request::RequestRange(_)) | None => true,
        Some(request_op::Request::RequestTxn(t)) => {
            is_read_only(&t.success) && is_read_only(&t.failure)
        }
        _ => false,
    })
}

fn has_put(ops: &[RequestOp]) -> bool {
    ops.iter().any(|op| match &op.request {
        Some(request_op::Request::RequestPut(_)) => true,
        Some(request_op::Request::RequestTxn(t)) => has_put(&t.success) || has_put(&t.failure),
        _ => false,
    })
}

fn all_serializable(ops: &[RequestOp]) -> bool {
    ops.iter().all(|op| match &op.request {
        Some(request_op::Request::RequestRange(r)) => r.serializable,
        Some(request_op::Request::RequestTxn(t)) => {
            all_serializable(&t.success) && all_serializable(&t.failure)
        }
        _ => true,
    })
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(&self, req: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        check_key(&req.get_ref().key)?;
        if !req.get_ref().serializable {
            self.node.read_barrier().await?;
        }
        // After the barrier: the permissions read are those of the state read.
        authorize(
            &self.node,
            &req,
            &[Need::Read(&req.get_ref().key, &req.get_ref().range_end)],
        )?;
        let r = req.into_inner();
        let mut resp = self.node.shared().mvcc.read().range(&r)?;
        self.fill_header(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn put(&self, req: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let mut needs = Vec::new();
        put_needs(req.get_ref(), &mut needs);
        let checked = authorize(&self.node, &req, &needs)?;
        let p = req.into_inner();
        check_put(&p)?;
        self.check_size(p.encoded_len())?;
        self.quota.check(&self.node, p.encoded_len()).await?;
        match self.node.propose(checked.entry(Rq::Put(p))).await? {
            Rs::Put(mut r) => {
                self.fill_header(&mut r.header);
                Ok(Response::new(r))
            }
            _ => Err(StoreError::Internal("unexpected response to put".into()).into()),
        }
    }

    async fn delete_range(
        &self,
        req: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        let mut needs = Vec::new();
        delete_needs(req.get_ref(), &mut needs);
        let checked = authorize(&self.node, &req, &needs)?;
        let d = req.into_inner();
        check_key(&d.key)?;
        match self.node.propose(checked.entry(Rq::DeleteRange(d))).await? {
            Rs::DeleteRange(mut r) => {
                self.fill_header(&mut r.header);
                Ok(Response::new(r))
            }
            _ => Err(StoreError::Internal("unexpected response to delete".into()).into()),
        }
    }

    async fn txn(&self, req: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let mut needs = Vec::new();
        txn_needs(req.get_ref(), &mut needs);
        let checked = authorize(&self.node, &req, &needs)?;
        let t = req.into_inner();
        check_txn(&t)?;
        self.check_size(t.encoded_len())?;
        if is_read_only(&t.success) && is_read_only(&t.failure) {
            // etcd serves read-only txns locally, after the read barrier unless all serializable.
            if !(all_serializable(&t.success) && all_serializable(&t.failure)) {
                self.node.read_barrier().await?;
            }
            // Under the read lock: reads and applies go on meanwhile.
            let mut r = self.node.shared().mvcc.read().read_txn(&t)?;
            self.fill_header(&mut r.header);
            return Ok(Response::new(r));
        }
        if has_put(&t.success) || has_put(&t.failure) {
            self.quota.check(&self.node, t.encoded_len()).await?;
        }
        match self.node.propose(checked.entry(Rq::Txn(t))).await? {
            Rs::Txn(mut r) => {
                self.fill_header(&mut r.header);
                Ok(Response::new(r))
            }
            _ => Err(StoreError::Internal("unexpected response to txn".into()).into()),
        }
    }

    async fn compact(
        &self,
        req: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        authorize(&self.node, &req, &[])?;
        let c = req.into_inner();
        let (physical, revision) = (c.physical, c.revision);
        match self
            .node
            .propose(InternalRequest {
                request: Some(Rq::Compaction(c)),
                ..Default::default()
            })
            .await?
        {
            Rs::Compaction(mut r) => {
                if physical {
                    self.wait_compacted(revision).await;
                }
                self.fill_header(&mut r.header);
                Ok(Response::new(r))
            }
            _ => Err(StoreError::Internal("unexpected response to compact".into()).into()),
        }
    }
}
