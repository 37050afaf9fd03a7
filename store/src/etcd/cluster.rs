//! `etcdserverpb.Cluster`: MemberList, MemberAdd (incl. learners), MemberRemove,
//! MemberPromote, MemberUpdate. Membership changes run on the leader (forwarded from
//! followers) as openraft joint-consensus changes.

use std::collections::{BTreeMap, BTreeSet};

use keelson_etcdpb::etcdserverpb::cluster_server::Cluster;
use keelson_etcdpb::etcdserverpb::{
    Member as PbMember, MemberAddRequest, MemberAddResponse, MemberListRequest, MemberListResponse,
    MemberPromoteRequest, MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse,
    MemberUpdateRequest, MemberUpdateResponse,
};
use openraft::ChangeMembers;
use openraft::error::{ClientWriteError, RaftError};
use prost::Message;
use tonic::{Request, Response, Status};

use crate::auth::Need;
use crate::error::{Result, StoreError};
use crate::etcd::auth::authorize;
use crate::raft::pb::{ChangeMembersRequest, change_members_request::Change};
use crate::raft::{Member, NodeId};
use crate::server::node::{Node, REQUEST_TIMEOUT};
use crate::server::peer::member_list;

/// The Cluster service.
#[derive(Debug, Clone)]
pub struct ClusterService {
    node: Node,
}

impl ClusterService {
    /// The service for `node`.
    pub fn new(node: Node) -> ClusterService {
        ClusterService { node }
    }

    async fn change(&self, change: Change) -> Result<Vec<u8>> {
        let req = ChangeMembersRequest {
            change: Some(change),
        };
        if self.node.is_leader() {
            return change_on_leader(&self.node, req).await;
        }
        let mut client = self.node.leader_client()?;
        let mut r = tonic::Request::new(req);
        r.set_timeout(REQUEST_TIMEOUT);
        match client.change_members(r).await {
            Ok(resp) => Ok(resp.into_inner().response),
            Err(s) => Err(status_to_error(&s)),
        }
    }
}

fn status_to_error(s: &Status) -> StoreError {
    let all = [
        StoreError::MemberExist,
        StoreError::PeerUrlExist,
        StoreError::MemberBadUrls,
        StoreError::MemberNotFound,
        StoreError::MemberNotLearner,
        StoreError::LearnerNotReady,
        StoreError::TooManyLearners,
        StoreError::NoLeader,
        StoreError::NotLeader,
        StoreError::Timeout,
        StoreError::DeadlineExceeded,
        StoreError::MemberNotEnoughStarted,
        StoreError::Unhealthy,
    ];
    all.into_iter()
        .find(|e| e.to_string() == s.message())
        .unwrap_or_else(|| StoreError::Internal(s.message().to_string()))
}

/// A 64-bit FNV-1a hash: stable across builds and platforms, used for member and cluster IDs.
pub fn fnv64(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in *p {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Checks that every URL is an absolute http(s) URL with a host and port, as etcd requires.
pub fn validate_urls(urls: &[String]) -> Result<()> {
    if urls.is_empty() {
        return Err(StoreError::MemberBadUrls);
    }
    for u in urls {
        let parsed = url::Url::parse(u).map_err(|_| StoreError::MemberBadUrls)?;
        if !matches!(parsed.scheme(), "http" | "https")
            || parsed.host().is_none()
            || parsed.port().is_none()
        {
            return Err(StoreError::MemberBadUrls);
        }
    }
    Ok(())
}

fn raft_err(e: RaftError<NodeId, ClientWriteError<NodeId, Member>>) -> StoreError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => StoreError::NotLeader,
        RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => {
            StoreError::Internal(c.to_string())
        }
        RaftError::Fatal(_) => StoreError::Stopped,
    }
}

/// How long every voter must have been reachable before a change that leans on it (etcd's
/// `HealthInterval`).
const HEALTH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

fn quorum(voters: usize) -> usize {
    voters / 2 + 1
}

/// etcd's `--strict-reconfig-check`, judged on the leader, which hears from every peer: a
/// change is refused when the cluster could lose its quorum through it.
/// - Adding a voter needs a quorum of the grown cluster among the started voters (those that
///   published their name), except a second member for a single one; any add needs every
///   voter reachable for [`HEALTH_INTERVAL`].
/// - Removing a voter needs a quorum of the rest among its started voters and, unless the
///   member is down already, a quorum of the rest among the voters reachable for that long.
/// - Promoting a learner needs a quorum of the grown cluster among the started voters and it.
fn check_reconfig(
    node: &Node,
    members: &BTreeMap<NodeId, (Member, bool)>,
    change: &Change,
) -> Result<()> {
    if !node.strict_reconfig() {
        return Ok(());
    }
    let started: BTreeSet<NodeId> = node
        .shared()
        .mvcc
        .read()
        .members()
        .iter()
        .filter(|(_, a)| !a.name.is_empty())
        .map(|(id, _)| *id)
        .collect();
    let voters: Vec<NodeId> = members
        .iter()
        .filter(|(_, (_, learner))| !learner)
        .map(|(id, _)| *id)
        .collect();
    let long_enough = tokio::time::Instant::now().checked_sub(HEALTH_INTERVAL);
    let connected = |id: NodeId| {
        id == node.id()
            || matches!((node.peers().active_since(id), long_enough), (Some(t), Some(s)) if t <= s)
    };
    let started_voters = |except: Option<NodeId>| {
        voters
            .iter()
            .filter(|v| Some(**v) != except && started.contains(v))
            .count()
    };
    match change {
        Change::Add(a) => {
            let grown = voters.len() + 1;
            let up = started_voters(None);
            // A learner does not count towards the quorum; a second member for a single one
            // is always allowed.
            let exempt = a.is_learner || (up == 1 && grown == 2);
            if !exempt && up < quorum(grown) {
                return Err(StoreError::MemberNotEnoughStarted);
            }
            if !voters.iter().all(|v| connected(*v)) {
                return Err(StoreError::Unhealthy);
            }
        }
        Change::Remove(r) => {
            let known = match members.get(&r.id) {
                Some((_, true)) => return Ok(()),
                Some((_, false)) => true,
                // As etcd: judged as if it were no voter, then not found.
                None => false,
            };
            let rest = if known {
                voters.len() - 1
            } else {
                voters.len()
            };
            if started_voters(Some(r.id)) < quorum(rest) {
                return Err(StoreError::MemberNotEnoughStarted);
            }
            if !known {
                return Ok(());
            }
            // A member that is down is no part of the active quorum.
            if r.id != node.id() && node.peers().active_since(r.id).is_none() {
                return Ok(());
            }
            let active = voters.iter().filter(|v| connected(**v)).count();
            if active.saturating_sub(1) < quorum(voters.len() - 1) {
                return Err(StoreError::Unhealthy);
            }
        }
        Change::Promote(_) => {
            if started_voters(None) + 1 < quorum(voters.len() + 1) {
                return Err(StoreError::MemberNotEnoughStarted);
            }
        }
        Change::Update(_) => {}
    }
    Ok(())
}

/// Runs a membership change on this member, which must lead; returns the encoded etcd response.
///
/// One change at a time: one waits for the one before for up to the request timeout, while
/// its client does. Once begun, it runs in a task of its own, to its end or until this member
/// stops leading: a voter added or removed is two configurations in openraft (the joint one,
/// then the new), proposed in turn by whoever asked, so a caller that went away between them
/// (a client that gave up) would leave the joint one. (A leader that stops leading between
/// them leaves it too: the next leader finishes it, [`Node::monitor_leader`]. openraft may
/// never answer a change whose leader was deposed, which is why the task does not wait on.)
/// A change answered before its end (a second voter, [`add_voter`]) goes on after the
/// answer, still holding its turn.
pub async fn change_on_leader(node: &Node, req: ChangeMembersRequest) -> Result<Vec<u8>> {
    let one = tokio::time::timeout(REQUEST_TIMEOUT, node.membership_changes().lock_owned())
        .await
        .map_err(|_| StoreError::Timeout)?;
    let node = node.clone();
    let (answer, answered) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let _one = one;
        let term = node.raft().metrics().borrow().current_term;
        // A change done as its member is deposed is answered as done.
        let rest = tokio::select! {
            biased;
            r = run_change(&node, req) => match r {
                Ok((response, rest)) => {
                    let _ = answer.send(Ok(response));
                    rest
                }
                Err(e) => {
                    let _ = answer.send(Err(e));
                    None
                }
            },
            _ = node.deposed(term) => {
                let _ = answer.send(Err(StoreError::NotLeader));
                None
            }
        };
        if let Some(rest) = rest {
            node.while_leading(term, rest).await;
        }
    });
    answered
        .await
        .map_err(|_| StoreError::Internal("the membership change failed".into()))?
}

/// What is left of a change answered before its end.
type Rest = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// Returns once this member's configuration has `id` among its voters (a joint one) and its
/// own log holds it on disk; never if its Raft stops first. openraft 0.9 publishes its metrics
/// only between rounds of its core, after the round's commands ran, and its core awaits each
/// append's flush among them: metrics that show the configuration come after its flush. (A
/// leader also counts itself matched up to an entry only once flushed, which is checked too;
/// a member deposed meanwhile has no such count.) To check again on an openraft upgrade: 0.10
/// takes log IO off the core.
async fn joint_on_disk(node: &Node, id: NodeId) {
    let me = node.id();
    let mut metrics = node.raft().metrics();
    let stopped = metrics
        .wait_for(|m| {
            let config = &m.membership_config;
            let flushed = if m.current_leader == Some(me) {
                let matched = m
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(&me).cloned().flatten());
                config
                    .log_id()
                    .is_some_and(|c| matched.is_some_and(|f| f.index >= c.index))
            } else {
                true
            };
            m.running_state.is_ok() && config.membership().voter_ids().any(|v| v == id) && flushed
        })
        .await
        .is_err();
    if stopped {
        // Stopped: the change's own answer says so.
        std::future::pending::<()>().await;
    }
}

/// Runs `change`, which makes `id` a voter (a new member, or a learner promoted), to its end;
/// or, beside a single voter, until its first half is in hand, then returns the rest.
///
/// Beside a single voter, the joint configuration needs the new voter, which may not run yet
/// (its operator starts a new member once told it was added) or may be down (a learner
/// promoted). etcd's one-step change commits without it: so the change is answered once the
/// joint configuration is in this member's log on disk (which none other can cut: no leader
/// can be elected without this member's vote), and the rest follows (or whichever member
/// leads next finishes it, [`Node::monitor_leader`]).
async fn add_voter(
    node: &Node,
    members: &BTreeMap<NodeId, (Member, bool)>,
    id: NodeId,
    change: ChangeMembers<NodeId, Member>,
) -> Result<Option<Rest>> {
    let raft = node.raft().clone();
    let mut change = Box::pin(async move { raft.change_membership(change, false).await });
    let alone = members.values().filter(|(_, learner)| !learner).count() == 1;
    if !alone {
        change.await.map_err(raft_err)?;
        return Ok(None);
    }
    tokio::select! {
        biased;
        () = joint_on_disk(node, id) => Ok(Some(Box::pin(async move {
            if let Err(e) = change.await {
                tracing::warn!(error = %e, voter = id, "making a second voter");
            }
        }) as Rest)),
        r = &mut change => {
            r.map_err(raft_err)?;
            Ok(None)
        }
    }
}

/// Runs `req` on this leader: the encoded etcd response, and what is left to run after it.
async fn run_change(node: &Node, req: ChangeMembersRequest) -> Result<(Vec<u8>, Option<Rest>)> {
    if !node.is_leader() {
        return Err(StoreError::NotLeader);
    }
    let members = node.members();
    let raft = node.raft();
    match req.change {
        Some(Change::Add(a)) => {
            validate_urls(&a.peer_ur_ls)?;
            check_reconfig(node, &members, &Change::Add(a.clone()))?;
            let taken = members
                .values()
                .any(|(m, _)| m.peer_urls.iter().any(|u| a.peer_ur_ls.contains(u)));
            if taken {
                return Err(StoreError::PeerUrlExist);
            }
            if a.is_learner && members.values().filter(|(_, l)| *l).count() >= 1 {
                return Err(StoreError::TooManyLearners);
            }
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            let mut urls = a.peer_ur_ls.clone();
            urls.sort();
            let id = fnv64(&[
                urls.join(",").as_bytes(),
                &node.cluster_id().to_be_bytes(),
                &now.to_be_bytes(),
            ]);
            if members.contains_key(&id) {
                return Err(StoreError::MemberExist);
            }
            let member = Member {
                name: String::new(),
                peer_urls: a.peer_ur_ls.clone(),
            };
            let mut rest = None;
            if a.is_learner {
                raft.add_learner(id, member, false)
                    .await
                    .map_err(raft_err)?;
            } else {
                // Node and voter in one change (no learner step a deposed leader could leave
                // behind): the joint configuration, then the new one.
                let add = ChangeMembers::AddVoters(BTreeMap::from([(id, member)]));
                rest = add_voter(node, &members, id, add).await?;
            }
            let added = PbMember {
                id,
                peer_ur_ls: a.peer_ur_ls,
                is_learner: a.is_learner,
                ..Default::default()
            };
            let response = MemberAddResponse {
                header: node.current_header(),
                member: Some(added),
                members: member_list(node),
            };
            Ok((response.encode_to_vec(), rest))
        }
        Some(Change::Remove(r)) => {
            check_reconfig(node, &members, &Change::Remove(r))?;
            let Some((_, learner)) = members.get(&r.id) else {
                return Err(StoreError::MemberNotFound);
            };
            let change = if *learner {
                ChangeMembers::RemoveNodes(BTreeSet::from([r.id]))
            } else {
                ChangeMembers::RemoveVoters(BTreeSet::from([r.id]))
            };
            raft.change_membership(change, false)
                .await
                .map_err(raft_err)?;
            let response = MemberRemoveResponse {
                header: node.current_header(),
                members: member_list(node),
            };
            Ok((response.encode_to_vec(), None))
        }
        Some(Change::Promote(p)) => {
            let Some((_, learner)) = members.get(&p.id) else {
                return Err(StoreError::MemberNotFound);
            };
            if !*learner {
                return Err(StoreError::MemberNotLearner);
            }
            // etcd promotes only a learner whose log is within 90% of the leader's.
            let m = raft.metrics().borrow().clone();
            let last = m.last_log_index.unwrap_or(0);
            let matched = m
                .replication
                .as_ref()
                .and_then(|r| r.get(&p.id).cloned().flatten())
                .map(|l| l.index)
                .unwrap_or(0);
            if (matched as f64) < (last as f64) * 0.9 {
                return Err(StoreError::LearnerNotReady);
            }
            check_reconfig(node, &members, &Change::Promote(p))?;
            let promote = ChangeMembers::AddVoterIds(BTreeSet::from([p.id]));
            let rest = add_voter(node, &members, p.id, promote).await?;
            let response = MemberPromoteResponse {
                header: node.current_header(),
                members: member_list(node),
            };
            Ok((response.encode_to_vec(), rest))
        }
        Some(Change::Update(u)) => {
            validate_urls(&u.peer_ur_ls)?;
            let Some((m, _)) = members.get(&u.id) else {
                return Err(StoreError::MemberNotFound);
            };
            let taken = members.iter().any(|(id, (m, _))| {
                *id != u.id && m.peer_urls.iter().any(|x| u.peer_ur_ls.contains(x))
            });
            if taken {
                return Err(StoreError::PeerUrlExist);
            }
            let updated = Member {
                name: m.name.clone(),
                peer_urls: u.peer_ur_ls.clone(),
            };
            raft.change_membership(
                ChangeMembers::SetNodes(BTreeMap::from([(u.id, updated)])),
                false,
            )
            .await
            .map_err(raft_err)?;
            let response = MemberUpdateResponse {
                header: node.current_header(),
                members: member_list(node),
            };
            Ok((response.encode_to_vec(), None))
        }
        None => Err(StoreError::InvalidArgument(
            "empty membership change".into(),
        )),
    }
}

fn decode<T: Message + Default>(bytes: &[u8]) -> Result<T, Status> {
    T::decode(bytes).map_err(|e| Status::internal(format!("decode membership response: {e}")))
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        req: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        authorize(&self.node, &req, &[Need::Admin])?;
        let a = req.into_inner();
        validate_urls(&a.peer_ur_ls)?;
        Ok(Response::new(decode(&self.change(Change::Add(a)).await?)?))
    }

    async fn member_remove(
        &self,
        req: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        authorize(&self.node, &req, &[Need::Admin])?;
        Ok(Response::new(decode(
            &self.change(Change::Remove(req.into_inner())).await?,
        )?))
    }

    async fn member_update(
        &self,
        req: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        authorize(&self.node, &req, &[Need::Admin])?;
        Ok(Response::new(decode(
            &self.change(Change::Update(req.into_inner())).await?,
        )?))
    }

    async fn member_list(
        &self,
        req: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        if req.get_ref().linearizable {
            self.node.read_barrier().await?;
        }
        Ok(Response::new(MemberListResponse {
            header: self.node.current_header(),
            members: member_list(&self.node),
        }))
    }

    async fn member_promote(
        &self,
        req: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        authorize(&self.node, &req, &[Need::Admin])?;
        Ok(Response::new(decode(
            &self.change(Change::Promote(req.into_inner())).await?,
        )?))
    }
}
