//! Lease expiry and keep-alives, decided by the leader alone.
//!
//! Only the leader tracks deadlines (in its own monotonic clock). When it takes office it gives
//! every lease a full TTL, as etcd's lessor `Promote` does, so a leader change never expires a
//! lease early. An expired lease is revoked *through Raft*, so every member deletes the same keys
//! at the same revision. Followers forward keep-alives and TTL queries to the leader.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use keelson_etcdpb::etcdserverpb::{
    LeaseKeepAliveRequest, LeaseRevokeRequest, LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};
use parking_lot::Mutex;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::node::{Node, REQUEST_TIMEOUT};
use crate::error::{Result, StoreError};
use crate::raft::pb::{InternalRequest, internal_request};

/// Deadlines of the leases, valid only while this member leads.
#[derive(Clone, Default)]
pub struct Lessor {
    deadlines: Arc<Mutex<Deadlines>>,
    ids: Arc<AtomicU64>,
}

#[derive(Default)]
struct Deadlines {
    /// The term in which these deadlines were set; another term means start over.
    term: u64,
    at: HashMap<i64, Instant>,
}

impl std::fmt::Debug for Lessor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lessor").finish_non_exhaustive()
    }
}

impl Lessor {
    /// A lessor whose generated IDs carry the low 16 bits of `member_id`, as etcd's do.
    pub fn new(member_id: u64) -> Lessor {
        let millis = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let seed = ((member_id & 0xffff) << 48) | ((millis << 8) & 0xffff_ffff_ffff);
        Lessor {
            deadlines: Arc::default(),
            ids: Arc::new(AtomicU64::new(seed)),
        }
    }

    /// A fresh lease ID (positive, never 0).
    pub fn next_id(&self) -> i64 {
        loop {
            let id = (self.ids.fetch_add(1, Ordering::Relaxed).wrapping_add(1) & (i64::MAX as u64))
                as i64;
            if id != 0 {
                return id;
            }
        }
    }

    fn with_deadlines<T>(&self, node: &Node, f: impl FnOnce(&mut HashMap<i64, Instant>) -> T) -> T {
        let term = node.raft().metrics().borrow().current_term;
        let mut d = self.deadlines.lock();
        if d.term != term {
            d.term = term;
            d.at.clear();
        }
        f(&mut d.at)
    }

    /// Renews a lease; returns its TTL, or 0 if it does not exist (etcd's keep-alive reply).
    pub async fn keep_alive(&self, node: &Node, id: i64) -> Result<i64> {
        if !node.is_leader() {
            let mut client = node.leader_client()?;
            let mut req = tonic::Request::new(LeaseKeepAliveRequest { id });
            req.set_timeout(REQUEST_TIMEOUT);
            let resp = client
                .lease_keep_alive(req)
                .await
                .map_err(|s| StoreError::Internal(s.message().to_string()))?;
            return Ok(resp.into_inner().ttl);
        }
        // Leadership confirmed and everything committed before this keep-alive applied here
        // first (a grant, or a revocation an earlier leader committed), as etcd's leader does for
        // lease operations; never forwarded, so a member that has just lost office cannot renew.
        let term = node.raft().metrics().borrow().current_term;
        node.leader_barrier().await?;
        let ttl = node.shared().mvcc.read().leases().get(&id).map(|l| l.ttl);
        let Some(ttl) = ttl else { return Ok(0) };
        let now = Instant::now();
        // Checked and renewed under one lock, so the expiry loop cannot propose the revocation
        // in between, and only in the term whose leadership was confirmed.
        let renewed = {
            let mut d = self.deadlines.lock();
            if !node.is_leader() || node.raft().metrics().borrow().current_term != term {
                return Err(StoreError::NotLeader);
            }
            if d.term != term {
                d.term = term;
                d.at.clear();
            }
            match d.at.get(&id) {
                Some(at) if *at <= now => false,
                _ => {
                    d.at.insert(id, now + Duration::from_secs(ttl as u64));
                    true
                }
            }
        };
        if !renewed {
            return self.await_revocation(node, id).await;
        }
        Ok(ttl)
    }

    /// A keep-alive for a lease that has expired: its revocation may already be in the log, so
    /// renewing it would promise a TTL the revocation breaks (found by `keelson chaos`: a key
    /// deleted a moment after its lease was renewed). As etcd's lessor does, wait for the
    /// revocation and answer "not found"; if this member stops leading meanwhile, say so (the
    /// client retries elsewhere).
    async fn await_revocation(&self, node: &Node, id: i64) -> Result<i64> {
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        loop {
            if !node.shared().mvcc.read().leases().contains_key(&id) {
                return Ok(0);
            }
            if !node.is_leader() {
                return Err(StoreError::NotLeader);
            }
            if Instant::now() > deadline {
                return Err(StoreError::Timeout);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Remaining and granted TTL (and keys if asked); TTL -1 when the lease does not exist.
    pub async fn time_to_live(
        &self,
        node: &Node,
        req: LeaseTimeToLiveRequest,
    ) -> Result<LeaseTimeToLiveResponse> {
        if !node.is_leader() {
            let mut client = node.leader_client()?;
            let mut r = tonic::Request::new(req);
            r.set_timeout(REQUEST_TIMEOUT);
            let resp = client
                .lease_time_to_live(r)
                .await
                .map_err(|s| StoreError::Internal(s.message().to_string()))?;
            return Ok(resp.into_inner());
        }
        let lease = node.shared().mvcc.read().leases().get(&req.id).cloned();
        let Some(lease) = lease else {
            return Ok(LeaseTimeToLiveResponse {
                header: node.current_header(),
                id: req.id,
                ttl: -1,
                ..Default::default()
            });
        };
        let now = Instant::now();
        let deadline = self.with_deadlines(node, |d| {
            *d.entry(req.id)
                .or_insert(now + Duration::from_secs(lease.ttl as u64))
        });
        let remaining = deadline.saturating_duration_since(now);
        // etcd rounds the remaining time up to whole seconds.
        let ttl = remaining.as_millis().div_ceil(1000) as i64;
        Ok(LeaseTimeToLiveResponse {
            header: node.current_header(),
            id: req.id,
            ttl,
            granted_ttl: lease.ttl,
            keys: if req.keys {
                lease.keys.into_iter().collect()
            } else {
                Vec::new()
            },
        })
    }

    /// The leader's expiry loop: revokes leases whose deadline passed.
    pub async fn run(self, node: Node, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        let mut revoking: HashMap<i64, Instant> = HashMap::new();
        loop {
            // Biased: a stopped member's loop ends rather than act once more (and a simulation
            // replays the same way).
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            if !node.is_leader() {
                revoking.clear();
                continue;
            }
            let leases: Vec<(i64, i64)> = node
                .shared()
                .mvcc
                .read()
                .leases()
                .iter()
                .map(|(id, l)| (*id, l.ttl))
                .collect();
            let now = Instant::now();
            let mut expired: Vec<i64> = self.with_deadlines(&node, |d| {
                let live: std::collections::HashSet<i64> =
                    leases.iter().map(|(id, _)| *id).collect();
                d.retain(|id, _| live.contains(id));
                for (id, ttl) in &leases {
                    d.entry(*id)
                        .or_insert(now + Duration::from_secs(*ttl as u64));
                }
                d.iter()
                    .filter(|(_, at)| **at <= now)
                    .map(|(id, _)| *id)
                    .collect()
            });
            // In ID order, not the map's (a simulation replays the same revocations).
            expired.sort_unstable();
            revoking.retain(|id, until| *until > now && leases.iter().any(|(l, _)| l == id));
            for id in expired {
                if revoking.contains_key(&id) {
                    continue;
                }
                revoking.insert(id, now + Duration::from_secs(3));
                let node = node.clone();
                tokio::spawn(async move {
                    let req = InternalRequest {
                        request: Some(internal_request::Request::LeaseRevoke(LeaseRevokeRequest {
                            id,
                        })),
                        ..Default::default()
                    };
                    let revoked = match node.leader_barrier().await {
                        Ok(()) => node.propose_as_leader(req).await,
                        Err(e) => Err(e),
                    };
                    match revoked {
                        Ok(_) | Err(StoreError::LeaseNotFound) => {
                            tracing::debug!(lease = id, "lease expired and revoked")
                        }
                        Err(StoreError::NotLeader) => {
                            tracing::debug!(
                                lease = id,
                                "not leading any more: expiry left to the leader"
                            )
                        }
                        Err(e) => {
                            tracing::warn!(lease = id, error = %e, "revoking expired lease failed; will retry")
                        }
                    }
                });
            }
        }
    }
}
