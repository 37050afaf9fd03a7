//! Leases in the simulation, as `keelson chaos run`'s lease client makes them: one granted
//! every 400 ms with a key under the clients' prefix put on it; every other one kept alive
//! three times, 600 ms apart, then left to expire like the rest. Grants and keep-alives go to
//! the member taken for the leader, whose lessor (the store's own) keeps the deadlines and
//! revokes expired leases through Raft.

use std::sync::Arc;
use std::time::Duration;

use keelson_etcdpb::etcdserverpb::{LeaseGrantRequest, RangeRequest};
use keelson_store::StoreError;
use keelson_store::raft::NodeId;
use keelson_store::raft::pb::internal_request::Request as Rq;
use keelson_store::raft::pb::internal_response::Response as Rs;
use tokio::time::{Instant, sleep};

use super::net::World;
use super::{CLIENT_TIMEOUT, propose_one};
use crate::history::{Input, KeepAlive, LeaseLeftover, LeaseRecord, Operation};
use crate::traffic::{PREFIX, Step};

/// The leases' TTL, in seconds (as `keelson chaos run`'s).
const TTL: i64 = 2;

/// Where the leases' keys go, under the clients' prefix (so the watchers see them).
fn key_prefix() -> String {
    format!("{PREFIX}lease/")
}

/// The lease client, recording its puts as operations of client `client`, until `end`. With
/// `lost` (a planted bug) its keep-alives are answered without renewing anything.
pub(super) async fn client(
    world: Arc<World>,
    client: usize,
    lost: bool,
    end: Instant,
) -> (Vec<LeaseRecord>, Vec<Operation>) {
    let mut records: Vec<LeaseRecord> = Vec::new();
    let mut puts = Vec::new();
    // (record index, keep-alives left, next one due)
    let mut kept: Vec<(usize, u32, Instant)> = Vec::new();
    let mut next_grant = Instant::now();
    let (mut n, mut attempts) = (0, 0i64);
    let mut target = world.any();
    while Instant::now() < end {
        sleep(Duration::from_millis(100)).await;
        if Instant::now() >= next_grant {
            next_grant = Instant::now() + Duration::from_millis(400);
            // Chosen here, as a client may: unique (the client's number above the count of
            // attempts), so a grant that committed unanswered is not asked for again.
            attempts += 1;
            let id = ((client as i64 + 1) << 40) | attempts;
            let granted = world.now();
            if let Some(ttl) = grant(&world, &mut target, id).await {
                n += 1;
                let key = format!("{}l{n}", key_prefix());
                let input = Input::Put {
                    key: key.clone(),
                    value: format!("lease-{n}"),
                };
                let step = Step::One(input.clone());
                let invoke = world.now();
                let output = super::perform(&world, &mut target, &step, None, id).await;
                world.note(&[600, id as u64, invoke]);
                puts.push(Operation {
                    client,
                    txn: None,
                    invoke,
                    complete: world.now(),
                    input,
                    output,
                });
                records.push(LeaseRecord {
                    lease: id,
                    ttl,
                    granted,
                    key,
                    keepalives: Vec::new(),
                });
                if n % 2 == 0 {
                    kept.push((
                        records.len() - 1,
                        3,
                        Instant::now() + Duration::from_millis(600),
                    ));
                }
            }
        }
        for (record, left, due) in &mut kept {
            if *left == 0 || Instant::now() < *due {
                continue;
            }
            let lease = records[*record].lease;
            let invoke = world.now();
            if let Some(ttl) = keep_alive(&world, &mut target, lease, lost).await {
                records[*record].keepalives.push(KeepAlive { invoke, ttl });
            }
            *left -= 1;
            *due = Instant::now() + Duration::from_millis(600);
        }
        kept.retain(|k| k.1 > 0);
    }
    (records, puts)
}

/// Grants lease `id` through `target` (following it to the leader it names): the TTL granted,
/// or `None` without a certain answer.
async fn grant(world: &Arc<World>, target: &mut NodeId, id: i64) -> Option<i64> {
    let give_up = Instant::now() + CLIENT_TIMEOUT;
    while Instant::now() < give_up {
        let to = *target;
        sleep(world.latency(0, to)).await;
        world.wait_resumed(to, to).await;
        let Some((node, epoch)) = world.node(to) else {
            *target = world.any();
            continue;
        };
        let grant = Rq::LeaseGrant(LeaseGrantRequest { ttl: TTL, id });
        let ttl = match tokio::time::timeout_at(give_up, propose_one(&node, grant)).await {
            Ok(Err(StoreError::NotLeader)) => {
                *target = node.leader().unwrap_or_else(|| world.any());
                sleep(world.millis(10, 40)).await;
                continue;
            }
            Ok(Ok(Some(Rs::LeaseGrant(r)))) => r.ttl,
            Ok(_) | Err(_) => return None,
        };
        // A fresh lease starts its full TTL now, on the leader (as the Lease service's grant
        // does).
        if let Some((node, lessor, now)) = world.lessor(to)
            && now == epoch
        {
            let _ = tokio::time::timeout(CLIENT_TIMEOUT, lessor.keep_alive(&node, id)).await;
        }
        sleep(world.latency(to, 0)).await;
        return world.same_epoch(to, epoch).then_some(ttl);
    }
    None
}

/// A keep-alive of `lease` through `target`'s lessor (leaders only: a follower would forward
/// it): the TTL answered (0: the lease is gone), or `None` without an answer. With `lost`, the
/// lease's TTL is answered and nothing renewed.
async fn keep_alive(
    world: &Arc<World>,
    target: &mut NodeId,
    lease: i64,
    lost: bool,
) -> Option<i64> {
    let to = *target;
    sleep(world.latency(0, to)).await;
    world.wait_resumed(to, to).await;
    let Some((node, lessor, epoch)) = world.lessor(to) else {
        *target = world.any();
        return None;
    };
    if !node.is_leader() {
        *target = node.leader().unwrap_or_else(|| world.any());
        return None;
    }
    let ttl = if lost {
        let held = node
            .shared()
            .mvcc
            .read()
            .leases()
            .get(&lease)
            .map(|l| l.ttl);
        held.unwrap_or(0)
    } else {
        let answer = tokio::time::timeout(CLIENT_TIMEOUT, lessor.keep_alive(&node, lease)).await;
        let Ok(Ok(ttl)) = answer else {
            return None;
        };
        ttl
    };
    sleep(world.latency(to, 0)).await;
    world.same_epoch(to, epoch).then_some(ttl)
}

/// Waits (up to the TTL three times over plus 10 s: a new leader gives every lease a full TTL
/// again) until no member holds a lease's key, and returns what each member still held then.
pub(super) async fn wait_for_expiry(world: &World) -> Vec<LeaseLeftover> {
    let deadline = Instant::now() + Duration::from_secs(3 * TTL as u64 + 10);
    let prefix = key_prefix();
    let read = RangeRequest {
        key: prefix.as_bytes().to_vec(),
        range_end: keelson_etcdpb::prefix_end(prefix.as_bytes()),
        keys_only: true,
        ..Default::default()
    };
    loop {
        let mut left = Vec::new();
        let mut unread = false;
        for id in world.ids() {
            let Some((node, _)) = world.node(id) else {
                unread = true;
                continue;
            };
            let kvs = match node.shared().mvcc.read().range(&read) {
                Ok(r) => r.kvs,
                Err(_) => {
                    unread = true;
                    continue;
                }
            };
            left.push(LeaseLeftover::new(format!("m{id}"), &kvs));
        }
        if (!unread && left.iter().all(|l| l.keys.is_empty())) || Instant::now() > deadline {
            return left.into_iter().filter(|l| !l.keys.is_empty()).collect();
        }
        sleep(Duration::from_millis(250)).await;
    }
}
