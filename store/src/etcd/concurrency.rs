//! `v3lockpb.Lock` and `v3electionpb.Election`: etcd's server-side concurrency recipes.
//!
//! etcd serves these by running its client library's `concurrency` recipes against itself;
//! keelson-store runs the same recipes on its own KV service, so the keys, revisions and waits
//! are the ones etcd's clients see:
//! - a lock `name` is held through the key `name/<lease in hex>`; the holder is the key under
//!   `name/` with the lowest create revision, and a waiter waits for every key created before
//!   its own to be deleted;
//! - an election is the same queue of keys, whose values are the candidates' proposals; the
//!   leader is the oldest key.
//!
//! A request without a lease gets a fresh 60-second lease that is never renewed (etcd's
//! session default). A waiter whose client goes away takes its key back, as etcd's does.
//!
//! With auth on, a request is checked up front for the queue it works on, and each call its
//! recipe makes of the KV service carries the client's token and is checked as the client's
//! own, as etcd's recipes run through its KV service with the caller's context: a write
//! checked before an auth change that applies after it is refused (`revision of auth store
//! is old`).

use std::pin::Pin;

use futures::Stream;
use keelson_etcdpb::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use keelson_etcdpb::etcdserverpb::kv_server::Kv;
use keelson_etcdpb::etcdserverpb::lease_server::Lease;
use keelson_etcdpb::etcdserverpb::range_request::{SortOrder, SortTarget};
use keelson_etcdpb::etcdserverpb::{
    Compare, DeleteRangeRequest, LeaseGrantRequest, PutRequest, RangeRequest, RangeResponse,
    RequestOp, ResponseHeader, TxnRequest, TxnResponse, request_op, response_op,
};
use keelson_etcdpb::mvccpb::event::EventType;
use keelson_etcdpb::mvccpb::{Event, KeyValue};
use keelson_etcdpb::v3electionpb::election_server::Election;
use keelson_etcdpb::v3electionpb::{
    CampaignRequest, CampaignResponse, LeaderKey, LeaderRequest, LeaderResponse, ProclaimRequest,
    ProclaimResponse, ResignRequest, ResignResponse,
};
use keelson_etcdpb::v3lockpb::lock_server::Lock;
use keelson_etcdpb::v3lockpb::{LockRequest, LockResponse, UnlockRequest, UnlockResponse};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::auth::Need;
use crate::error::StoreError;
use crate::etcd::auth::{Internal, authorize, token_of};
use crate::etcd::kv::KvService;
use crate::etcd::lease::LeaseService;
use crate::mvcc::EventBatch;
use crate::server::node::Node;

/// TTL of the lease a request without one gets (etcd's session default).
const SESSION_TTL: i64 = 60;

/// The Lock and Election services: both work through the member's own KV and Lease services.
#[derive(Debug, Clone)]
pub struct ConcurrencyService {
    node: Node,
    kv: KvService,
    lease: LeaseService,
    /// Whom the KV calls are made for.
    caller: Caller,
}

/// Whom the services' calls of the KV service are made for.
#[derive(Debug, Clone)]
enum Caller {
    /// The member itself (a waiter's key taken back): not checked.
    Member,
    /// A client, with the token it sent (if any): checked as its own calls.
    Client(Option<String>),
}

impl Caller {
    /// The client that sent `req`.
    fn of<T>(req: &Request<T>) -> Caller {
        Caller::Client(token_of(req).map(str::to_string))
    }
}

impl ConcurrencyService {
    /// The services for `node`.
    pub fn new(node: Node, kv: KvService, lease: LeaseService) -> ConcurrencyService {
        ConcurrencyService {
            node,
            kv,
            lease,
            caller: Caller::Member,
        }
    }

    /// The services making their KV calls for `caller`.
    fn on_behalf(&self, caller: Caller) -> ConcurrencyService {
        ConcurrencyService {
            caller,
            ..self.clone()
        }
    }

    /// `lease`, or a fresh unrenewed one when it is 0.
    async fn session(&self, lease: i64) -> Result<i64, Status> {
        if lease != 0 {
            return Ok(lease);
        }
        let granted = self
            .lease
            .lease_grant(Request::new(LeaseGrantRequest {
                ttl: SESSION_TTL,
                id: 0,
            }))
            .await?;
        Ok(granted.into_inner().id)
    }

    async fn range(&self, r: RangeRequest) -> Result<RangeResponse, Status> {
        Ok(self.kv.range(self.internal(r)).await?.into_inner())
    }

    async fn txn(&self, t: TxnRequest) -> Result<TxnResponse, Status> {
        Ok(self.kv.txn(self.internal(t)).await?.into_inner())
    }

    /// Puts `key` (with `value` and `lease`) unless it exists. Returns the transaction's
    /// response and the key's create revision: `(created, revision, existing value)`.
    async fn enqueue(
        &self,
        prefix: &[u8],
        key: &[u8],
        value: &[u8],
        lease: i64,
    ) -> Result<Queued, Status> {
        let resp = self
            .txn(TxnRequest {
                compare: vec![create_revision_is(key, 0)],
                success: vec![op_put(key, value, lease), op_range(oldest(prefix))],
                failure: vec![op_range(exact(key)), op_range(oldest(prefix))],
            })
            .await?;
        let header = resp.header.unwrap_or_default();
        // Both branches end with the oldest key's range; the failure branch starts with ours.
        let range_at = |i: usize| match resp.responses.get(i).and_then(|r| r.response.as_ref()) {
            Some(response_op::Response::ResponseRange(r)) => Some(r),
            _ => None,
        };
        let (rev, existing) = if resp.succeeded {
            (header.revision, None)
        } else {
            let mine = range_at(0)
                .and_then(|r| r.kvs.first())
                .ok_or_else(|| internal_error("the queued key vanished within its transaction"))?;
            (mine.create_revision, Some(mine.value.clone()))
        };
        let owner = range_at(1)
            .and_then(|r| r.kvs.first())
            .map(|kv| kv.create_revision);
        Ok(Queued {
            header,
            rev,
            existing,
            first: owner == Some(rev),
        })
    }

    /// Waits until no key under `prefix` created at or before `max_create` is left (etcd's
    /// `waitDeletes`); returns the header of the last look.
    async fn wait_deletes(&self, prefix: &[u8], max_create: i64) -> Result<ResponseHeader, Status> {
        loop {
            // Subscribed before the look, so no deletion after it is missed.
            let mut events = self.node.shared().events.subscribe();
            let mut newest = oldest(prefix);
            newest.sort_order = SortOrder::Descend as i32;
            newest.max_create_revision = max_create;
            let resp = self.range(newest).await?;
            let header = resp.header.unwrap_or_default();
            let Some(kv) = resp.kvs.into_iter().next() else {
                return Ok(header);
            };
            next_event(&mut events, |e| {
                e.r#type == EventType::Delete as i32
                    && e.kv
                        .as_ref()
                        .is_some_and(|k| k.key == kv.key && k.mod_revision > header.revision)
            })
            .await?;
        }
    }

    /// Deletes `key` if it is still the one created at `rev`; returns the response header.
    async fn delete_if_created_at(&self, key: &[u8], rev: i64) -> Result<ResponseHeader, Status> {
        let resp = self
            .txn(TxnRequest {
                compare: vec![create_revision_is(key, rev)],
                success: vec![RequestOp {
                    request: Some(request_op::Request::RequestDeleteRange(
                        DeleteRangeRequest {
                            key: key.to_vec(),
                            ..Default::default()
                        },
                    )),
                }],
                failure: vec![],
            })
            .await?;
        Ok(resp.header.unwrap_or_default())
    }

    /// Follows who leads election `name` and sends every change: the leader's key when it
    /// changes hands, and each new value it proclaims.
    async fn observe(&self, name: Vec<u8>, out: mpsc::Sender<Result<LeaderResponse, Status>>) {
        let prefix = queue_prefix(&name);
        let mut last: Option<(Vec<u8>, i64)> = None;
        let step = async {
            loop {
                let mut events = self.node.shared().events.subscribe();
                let resp = self.range(oldest(&prefix)).await?;
                let header = resp.header.unwrap_or_default();
                let leader = match resp.kvs.into_iter().next() {
                    Some(kv) => kv,
                    None => {
                        // No candidate yet: the first put under the prefix is the leader.
                        let ev = next_event(&mut events, |e| {
                            e.r#type == EventType::Put as i32
                                && e.kv.as_ref().is_some_and(|k| {
                                    k.key.starts_with(&prefix) && k.mod_revision > header.revision
                                })
                        })
                        .await?;
                        match ev.and_then(|e| e.kv) {
                            Some(kv) => kv,
                            None => continue,
                        }
                    }
                };
                let mut current = leader;
                loop {
                    let seen = (current.key.clone(), current.mod_revision);
                    if last.as_ref() != Some(&seen) {
                        let header = self.node.header(current.mod_revision.max(header.revision));
                        let sent = out
                            .send(Ok(LeaderResponse {
                                header,
                                kv: Some(current.clone()),
                            }))
                            .await;
                        if sent.is_err() {
                            return Ok::<(), Status>(());
                        }
                        last = Some(seen);
                    }
                    let key = current.key.clone();
                    let after = current.mod_revision;
                    let ev = next_event(&mut events, |e| {
                        e.kv.as_ref()
                            .is_some_and(|k| k.key == key && k.mod_revision > after)
                    })
                    .await?;
                    match ev {
                        Some(e) if e.r#type == EventType::Put as i32 => match e.kv {
                            Some(kv) => current = kv,
                            None => break,
                        },
                        // Deleted (the leader resigned or its lease ended), or events were
                        // missed: look again.
                        _ => break,
                    }
                }
            }
        };
        tokio::select! {
            r = step => if let Err(e) = r {
                let _ = out.send(Err(as_recipe_error(e))).await;
            },
            _ = out.closed() => {}
        }
    }
}

/// A key put in (or found in) a lock's or election's queue.
struct Queued {
    header: ResponseHeader,
    /// The key's create revision.
    rev: i64,
    /// The value it had when it existed already.
    existing: Option<Vec<u8>>,
    /// Whether it is the oldest key: the lock is held, the election won.
    first: bool,
}

/// Takes back a waiter's key when its request ends before the wait does (the client went
/// away), as etcd's recipes do on a cancelled context.
struct Withdraw {
    service: Option<ConcurrencyService>,
    key: Vec<u8>,
    rev: i64,
}

impl Withdraw {
    fn disarm(mut self) {
        self.service = None;
    }
}

impl Drop for Withdraw {
    fn drop(&mut self) {
        if let Some(s) = self.service.take() {
            let (key, rev) = (std::mem::take(&mut self.key), self.rev);
            tokio::spawn(async move {
                if let Err(e) = s.delete_if_created_at(&key, rev).await {
                    tracing::debug!(error = %e, "withdrawing an abandoned waiter's key failed");
                }
            });
        }
    }
}

/// Waits for the first event matching `pred`: `Some` with it, or `None` when events were
/// missed (the broadcast lagged, or a snapshot install skipped them) and the caller must look
/// again.
async fn next_event(
    events: &mut broadcast::Receiver<EventBatch>,
    pred: impl Fn(&Event) -> bool,
) -> Result<Option<Event>, Status> {
    loop {
        match events.recv().await {
            // An empty batch says events were skipped (a snapshot was installed): look again.
            Ok(batch) if batch.events.is_empty() => return Ok(None),
            Ok(batch) => {
                if let Some(e) = batch.events.iter().find(|e| pred(e)) {
                    return Ok(Some(e.clone()));
                }
            }
            Err(broadcast::error::RecvError::Lagged(_)) => return Ok(None),
            Err(broadcast::error::RecvError::Closed) => return Err(StoreError::Stopped.into()),
        }
    }
}

fn internal_error(msg: &str) -> Status {
    StoreError::Internal(msg.into()).into()
}

impl ConcurrencyService {
    /// A request to the member's own KV service for the caller.
    fn internal<T>(&self, message: T) -> Request<T> {
        let mut r = Request::new(message);
        match &self.caller {
            Caller::Member => {
                r.extensions_mut().insert(Internal);
            }
            Caller::Client(token) => {
                // It came as metadata, so it is one.
                if let Some(t) = token.as_deref().and_then(|t| t.parse().ok()) {
                    r.metadata_mut().insert("token", t);
                }
            }
        }
        r
    }
}

/// Checks that the caller may read (and with `write`, write) the queue of `name` (auth on).
fn check_queue<T>(node: &Node, req: &Request<T>, name: &[u8], write: bool) -> Result<(), Status> {
    let prefix = queue_prefix(name);
    let end = keelson_etcdpb::prefix_end(&prefix);
    let read = Need::Read(&prefix, &end);
    let needs: &[Need<'_>] = if write {
        &[read, Need::Write(&prefix, &end)]
    } else {
        &[read]
    };
    authorize(node, req, needs)
        .map(|_| ())
        .map_err(as_recipe_error)
}

/// Checks that the caller may read and write the leader key a request names (auth on): the
/// proclaim's and the resign's transactions compare its create revision, then put or delete
/// it.
fn check_leader_key<T>(node: &Node, req: &Request<T>, key: &[u8]) -> Result<(), Status> {
    authorize(node, req, &[Need::Read(key, &[]), Need::Write(key, &[])])
        .map(|_| ())
        .map_err(as_recipe_error)
}

/// The queue of lock or election `name`: `name/`.
fn queue_prefix(name: &[u8]) -> Vec<u8> {
    let mut p = name.to_vec();
    p.push(b'/');
    p
}

/// A queue member's key: the prefix and the lease ID in lower-case hex.
fn queue_key(name: &[u8], lease: i64) -> Vec<u8> {
    let mut k = queue_prefix(name);
    k.extend_from_slice(format!("{lease:x}").as_bytes());
    k
}

fn create_revision_is(key: &[u8], rev: i64) -> Compare {
    Compare {
        result: CompareResult::Equal as i32,
        target: CompareTarget::Create as i32,
        key: key.to_vec(),
        target_union: Some(TargetUnion::CreateRevision(rev)),
        ..Default::default()
    }
}

fn op_put(key: &[u8], value: &[u8], lease: i64) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: key.to_vec(),
            value: value.to_vec(),
            lease,
            ..Default::default()
        })),
    }
}

fn op_range(r: RangeRequest) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestRange(r)),
    }
}

fn exact(key: &[u8]) -> RangeRequest {
    RangeRequest {
        key: key.to_vec(),
        ..Default::default()
    }
}

/// The oldest key under `prefix` (clientv3's `WithFirstCreate`).
fn oldest(prefix: &[u8]) -> RangeRequest {
    RangeRequest {
        key: prefix.to_vec(),
        range_end: keelson_etcdpb::prefix_end(prefix),
        limit: 1,
        sort_order: SortOrder::Ascend as i32,
        sort_target: SortTarget::Create as i32,
        ..Default::default()
    }
}

/// The message a plain Go error gets through gRPC (code Unknown), as etcd's recipes return.
fn recipe_error(msg: &str) -> Status {
    Status::unknown(msg)
}

fn leader_key(req: Option<LeaderKey>) -> Result<LeaderKey, Status> {
    req.ok_or_else(|| recipe_error("\"leader\" field must be provided"))
}

impl ConcurrencyService {
    async fn acquire(&self, r: LockRequest) -> Result<LockResponse, Status> {
        let lease = self.session(r.lease).await?;
        let prefix = queue_prefix(&r.name);
        let key = queue_key(&r.name, lease);
        let queued = self.enqueue(&prefix, &key, b"", lease).await?;
        if queued.first {
            return Ok(LockResponse {
                header: Some(queued.header),
                key,
            });
        }
        let withdraw = Withdraw {
            service: Some(self.on_behalf(Caller::Member)),
            key: key.clone(),
            rev: queued.rev,
        };
        self.wait_deletes(&prefix, queued.rev - 1).await?;
        // The key may have gone with its lease while we waited.
        let mine = self.range(exact(&key)).await?;
        withdraw.disarm();
        if mine.kvs.is_empty() {
            return Err(recipe_error("mutex: session is expired"));
        }
        Ok(LockResponse {
            header: mine.header,
            key,
        })
    }

    async fn campaign_for(&self, r: CampaignRequest) -> Result<CampaignResponse, Status> {
        let lease = self.session(r.lease).await?;
        let prefix = queue_prefix(&r.name);
        let key = queue_key(&r.name, lease);
        let queued = self.enqueue(&prefix, &key, &r.value, lease).await?;
        let leader = LeaderKey {
            name: r.name.clone(),
            key: key.clone(),
            rev: queued.rev,
            lease,
        };
        let withdraw = Withdraw {
            service: Some(self.on_behalf(Caller::Member)),
            key: key.clone(),
            rev: queued.rev,
        };
        if queued.existing.as_ref().is_some_and(|v| *v != r.value) {
            // A candidate campaigning again with a new value proclaims it first.
            self.proclaim_value(&leader, &r.value).await?;
        }
        if !queued.first {
            self.wait_deletes(&prefix, queued.rev - 1).await?;
        }
        withdraw.disarm();
        Ok(CampaignResponse {
            header: Some(queued.header),
            leader: Some(leader),
        })
    }

    async fn current_leader(&self, name: &[u8]) -> Result<LeaderResponse, Status> {
        let resp = self.range(oldest(&queue_prefix(name))).await?;
        let kv: Option<KeyValue> = resp.kvs.into_iter().next();
        if kv.is_none() {
            return Err(recipe_error("election: no leader"));
        }
        Ok(LeaderResponse {
            header: resp.header,
            kv,
        })
    }
}

/// etcd serves these services through its own Go client, whose errors reach the caller as
/// plain errors: code Unknown, with the message (`etcdserver: requested lease not found`).
fn as_recipe_error(s: Status) -> Status {
    recipe_error(s.message())
}

#[tonic::async_trait]
impl Lock for ConcurrencyService {
    async fn lock(&self, req: Request<LockRequest>) -> Result<Response<LockResponse>, Status> {
        check_queue(&self.node, &req, &req.get_ref().name, true)?;
        let caller = Caller::of(&req);
        let resp = self.on_behalf(caller).acquire(req.into_inner()).await;
        resp.map(Response::new).map_err(as_recipe_error)
    }

    async fn unlock(
        &self,
        req: Request<UnlockRequest>,
    ) -> Result<Response<UnlockResponse>, Status> {
        authorize(&self.node, &req, &[Need::Write(&req.get_ref().key, &[])])
            .map_err(as_recipe_error)?;
        let caller = Caller::of(&req);
        let key = req.into_inner().key;
        let resp = self
            .kv
            .delete_range(self.on_behalf(caller).internal(DeleteRangeRequest {
                key,
                ..Default::default()
            }))
            .await
            .map_err(as_recipe_error)?
            .into_inner();
        Ok(Response::new(UnlockResponse {
            header: resp.header,
        }))
    }
}

type ObserveStream = Pin<Box<dyn Stream<Item = Result<LeaderResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Election for ConcurrencyService {
    async fn campaign(
        &self,
        req: Request<CampaignRequest>,
    ) -> Result<Response<CampaignResponse>, Status> {
        check_queue(&self.node, &req, &req.get_ref().name, true)?;
        let caller = Caller::of(&req);
        let resp = self.on_behalf(caller).campaign_for(req.into_inner()).await;
        resp.map(Response::new).map_err(as_recipe_error)
    }

    async fn proclaim(
        &self,
        req: Request<ProclaimRequest>,
    ) -> Result<Response<ProclaimResponse>, Status> {
        // A missing key is refused first, as etcd's server does before anything else.
        let leader = leader_key(req.get_ref().leader.clone())?;
        check_leader_key(&self.node, &req, &leader.key)?;
        let caller = Caller::of(&req);
        let r = req.into_inner();
        let header = self
            .on_behalf(caller)
            .proclaim_value(&leader, &r.value)
            .await
            .map_err(as_recipe_error)?;
        Ok(Response::new(ProclaimResponse {
            header: Some(header),
        }))
    }

    async fn leader(
        &self,
        req: Request<LeaderRequest>,
    ) -> Result<Response<LeaderResponse>, Status> {
        check_queue(&self.node, &req, &req.get_ref().name, false)?;
        let caller = Caller::of(&req);
        let resp = self
            .on_behalf(caller)
            .current_leader(&req.into_inner().name)
            .await;
        resp.map(Response::new).map_err(as_recipe_error)
    }

    type ObserveStream = ObserveStream;

    async fn observe(
        &self,
        req: Request<LeaderRequest>,
    ) -> Result<Response<ObserveStream>, Status> {
        check_queue(&self.node, &req, &req.get_ref().name, false)?;
        let caller = Caller::of(&req);
        let name = req.into_inner().name;
        let (tx, rx) = mpsc::channel(16);
        let s = self.on_behalf(caller);
        tokio::spawn(async move { s.observe(name, tx).await });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn resign(
        &self,
        req: Request<ResignRequest>,
    ) -> Result<Response<ResignResponse>, Status> {
        let leader = leader_key(req.get_ref().leader.clone())?;
        check_leader_key(&self.node, &req, &leader.key)?;
        let caller = Caller::of(&req);
        let header = self
            .on_behalf(caller)
            .delete_if_created_at(&leader.key, leader.rev)
            .await
            .map_err(as_recipe_error)?;
        Ok(Response::new(ResignResponse {
            header: Some(header),
        }))
    }
}

impl ConcurrencyService {
    /// Puts `value` on the leader's key if it is still the one created at `leader.rev`.
    async fn proclaim_value(
        &self,
        leader: &LeaderKey,
        value: &[u8],
    ) -> Result<ResponseHeader, Status> {
        let resp = self
            .txn(TxnRequest {
                compare: vec![create_revision_is(&leader.key, leader.rev)],
                success: vec![op_put(&leader.key, value, leader.lease)],
                failure: vec![],
            })
            .await?;
        if !resp.succeeded {
            return Err(recipe_error("election: not leader"));
        }
        Ok(resp.header.unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_keys_are_etcds() {
        assert_eq!(queue_key(b"mylock", 0x0069_4d7c_1a2b), b"mylock/694d7c1a2b");
        assert_eq!(queue_prefix(b"e"), b"e/");
        let r = oldest(b"e/");
        assert_eq!(r.range_end, b"e0");
        assert_eq!((r.limit, r.sort_target), (1, SortTarget::Create as i32));
    }
}
