//! One member's core handle, shared by every service: Raft, the state, the proposer and the
//! read barrier.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use keelson_etcdpb::etcdserverpb::ResponseHeader;
use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::metrics::Metrics;
use crate::error::{Result, StoreError};
use crate::raft::network::Peers;
use crate::raft::pb::{
    Batch, BatchResponse, InternalRequest, InternalResponse, ProposeRequest, ReadIndexRequest,
    internal_response,
};
use crate::raft::state_machine::Shared;
use crate::raft::{Member, NodeId, Pb, Raft};

/// How long a request waits for a leader / for its write to commit before `request timed out`.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(7);
/// Most requests grouped into one log entry.
const MAX_BATCH: usize = 512;
/// Log entries the leader's proposer has in flight at once. One: requests (the leader's own
/// and those forwarded by followers) gather while an entry commits, and the next entry takes
/// them all. Every entry costs an append, an fsync on each member, a replication round and an
/// apply, so on a busy cluster fewer, larger entries carry more writes (`keelson-bench store`
/// puts: 8 entries in flight, one per forwarded batch, gave 2,900/s; one, with forwarded
/// batches merged, 6,200/s).
const LEADER_IN_FLIGHT: usize = 1;
/// Batches a follower's proposer forwards to the leader at once.
const FORWARD_IN_FLIGHT: usize = 8;

/// Requests waiting for the proposer, with where their responses go.
struct Pending {
    requests: Vec<InternalRequest>,
    reply: Reply,
    /// Sent here by another member: never forwarded again (two members that each take the
    /// other for the leader would pass it back and forth).
    forwarded: bool,
}

/// The member: what every service needs.
#[derive(Clone)]
pub struct Node {
    inner: Arc<Inner>,
}

struct Inner {
    id: NodeId,
    cluster_id: u64,
    raft: Raft,
    shared: Arc<Shared>,
    peers: Peers,
    proposals: mpsc::Sender<Pending>,
    reads: mpsc::UnboundedSender<oneshot::Sender<Result<()>>>,
    metrics: Metrics,
    /// Held for writing while leadership is handed over (MoveLeader): no entry is appended
    /// and no read confirmed meanwhile, since every append and every confirmation round
    /// renews the followers' leases on this leader.
    transfer: tokio::sync::RwLock<()>,
    /// Counts election holds, so a hold's end only resumes elections if no later one began.
    holds: std::sync::atomic::AtomicU64,
    /// Heartbeats are held while leadership is handed over ([`Node::send_heartbeats`]).
    heartbeats_held: std::sync::atomic::AtomicBool,
    /// When heartbeats last resumed after a hold: the peers were quiet because nothing was
    /// sent, not because they were gone, so this leader does not step down for it.
    heartbeats_resumed: parking_lot::Mutex<Option<Instant>>,
    /// When this member led before it restarted: that term and its last log index then (see
    /// [`RestoredLeader`]).
    restored: Option<RestoredLeader>,
    /// Refuse membership changes that could cost the cluster its quorum
    /// (`--strict-reconfig-check`).
    strict_reconfig: std::sync::atomic::AtomicBool,
    /// Held while a membership change runs on this member: one at a time, as etcd has at most
    /// one configuration change pending ([`Node::membership_changes`]).
    membership: Arc<tokio::sync::Mutex<()>>,
    /// Bumped each time this member has gone three election timeouts without a leader:
    /// require-leader streams end then ([`Node::monitor_leader`]).
    leader_lost: tokio::sync::watch::Sender<u64>,
}

/// A member that led before a restart leads again at once in the same term (openraft keeps
/// its leadership without an election), with no new entry of its own to commit. Its
/// committed index (not fsynced) and its state (applied after the log's fsync, synced by the
/// next one) may then be older than writes it acknowledged before: a read at its committed
/// index would go back in time (openraft issue 1511). Every write it acknowledged is in its
/// log, so in that term reads also wait until the log it had at the restart is applied.
#[derive(Clone, Copy, Debug)]
pub struct RestoredLeader {
    /// The term it led in.
    pub term: u64,
    /// Its last log index at the restart.
    pub last_index: u64,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.inner.id)
            .finish_non_exhaustive()
    }
}

impl Node {
    /// Wraps a started Raft and spawns the proposer and read-barrier tasks.
    pub fn new(
        id: NodeId,
        cluster_id: u64,
        raft: Raft,
        shared: Arc<Shared>,
        peers: Peers,
        metrics: Metrics,
        restored: Option<RestoredLeader>,
    ) -> Node {
        let (ptx, prx) = mpsc::channel(4096);
        let (rtx, rrx) = mpsc::unbounded_channel();
        let node = Node {
            inner: Arc::new(Inner {
                id,
                cluster_id,
                raft,
                shared,
                peers,
                proposals: ptx,
                reads: rtx,
                metrics,
                transfer: tokio::sync::RwLock::new(()),
                holds: std::sync::atomic::AtomicU64::new(0),
                heartbeats_held: std::sync::atomic::AtomicBool::new(false),
                heartbeats_resumed: parking_lot::Mutex::new(None),
                restored,
                strict_reconfig: std::sync::atomic::AtomicBool::new(true),
                membership: Arc::new(tokio::sync::Mutex::new(())),
                leader_lost: tokio::sync::watch::Sender::new(0),
            }),
        };
        tokio::spawn(node.clone().proposer(prx));
        tokio::spawn(node.clone().read_barrier_loop(rrx));
        if let Some(r) = restored {
            tokio::spawn(node.clone().commit_restored_log(r.term));
        }
        node
    }

    /// Appends an empty entry in the restored leader's term, which commits the log it had at
    /// the restart (entries of an earlier term are only committed by one of the leader's own):
    /// reads wait for that log, and without a client write it would never commit.
    async fn commit_restored_log(self, term: u64) {
        let deadline = Instant::now() + 2 * REQUEST_TIMEOUT;
        while Instant::now() < deadline && self.restored_floor().is_some() {
            let m = self.inner.raft.metrics().borrow().clone();
            if m.current_term == term && m.current_leader == Some(self.inner.id) {
                match self.inner.raft.client_write(Pb(Batch::default())).await {
                    Ok(_) => return,
                    Err(RaftError::Fatal(_)) => return,
                    Err(e) => tracing::debug!(error = %e, "appending the restored leader's entry"),
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Sends heartbeats every `every` while this member leads (openraft's own are off: its
    /// interval is the RPCs' deadline, see [`super::rpc_deadline`]), except while a leader
    /// transfer holds them. Ends with `shutdown`, or when Raft stops.
    pub fn send_heartbeats(&self, every: Duration, shutdown: CancellationToken) {
        let node = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let held = node
                    .inner
                    .heartbeats_held
                    .load(std::sync::atomic::Ordering::SeqCst);
                // A follower ignores the trigger.
                if !held && node.inner.raft.trigger().heartbeat().await.is_err() {
                    return;
                }
            }
        });
    }

    /// This member's ID.
    pub fn id(&self) -> NodeId {
        self.inner.id
    }

    /// The cluster ID.
    pub fn cluster_id(&self) -> u64 {
        self.inner.cluster_id
    }

    /// The Raft handle.
    pub fn raft(&self) -> &Raft {
        &self.inner.raft
    }

    /// The replicated state.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.inner.shared
    }

    /// Peer channels.
    pub fn peers(&self) -> &Peers {
        &self.inner.peers
    }

    /// Whether membership changes that could cost the quorum are refused (on by default).
    pub fn strict_reconfig(&self) -> bool {
        self.inner
            .strict_reconfig
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Held while a membership change runs on this member (openraft refuses a change while
    /// another's configuration is uncommitted, and a change is two of them).
    pub fn membership_changes(&self) -> Arc<tokio::sync::Mutex<()>> {
        self.inner.membership.clone()
    }

    /// Sets [`Node::strict_reconfig`].
    pub fn set_strict_reconfig(&self, on: bool) {
        self.inner
            .strict_reconfig
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// The known leader.
    pub fn leader(&self) -> Option<NodeId> {
        self.inner.raft.metrics().borrow().current_leader
    }

    /// Whether this member leads.
    pub fn is_leader(&self) -> bool {
        self.leader() == Some(self.inner.id)
    }

    /// Whether this member has a leader it can reach through: a follower that knows one, or a
    /// leader that a majority of the voters answered within an election timeout (without them
    /// it counts as none, and [`Node::monitor_leader`] makes it step down).
    pub fn has_leader(&self) -> bool {
        // While this leader hands over (MoveLeader) it sends nothing and its peers fall quiet,
        // but it leads until the target takes over, as etcd's does.
        if self.inner.transfer.try_read().is_err() {
            return true;
        }
        match self.leader() {
            None => false,
            Some(l) if l != self.inner.id => true,
            Some(_) => self.quorum_answers(),
        }
    }

    /// Whether a majority of the voters, this member among them, answered its Raft calls
    /// within the answer gap (an election timeout; a failed call since does not count
    /// against a peer, as in etcd's CheckQuorum). During a change of voters, a majority of
    /// the old ones and of the new ones, as a commit needs.
    fn quorum_answers(&self) -> bool {
        let configs = self
            .inner
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .get_joint_config()
            .clone();
        configs.iter().all(|voters| {
            let answering = voters
                .iter()
                .filter(|v| **v == self.inner.id || self.inner.peers.answered_recently(**v))
                .count();
            answering * 2 > voters.len()
        })
    }

    /// Checks each election timeout, until `shutdown`, as etcd does: a leader that a majority
    /// of the voters has not answered within an election timeout steps down (etcd's
    /// CheckQuorum), and streams that require a leader end once this member has gone three
    /// election timeouts without one (etcd's leader monitor). Ends too when Raft stops.
    pub async fn monitor_leader(self, shutdown: CancellationToken) {
        let election = Duration::from_millis(self.inner.raft.config().election_timeout_min.max(1));
        let mut leaderless = 0;
        let mut checked = Instant::now();
        let mut joint = None;
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(election) => {}
            }
            if self.inner.raft.metrics().borrow().running_state.is_err() {
                return;
            }
            // After a stall (a SIGSTOP, a starved process) the peers' answers to what this
            // member sends now are yet to come: no step-down until the next check. Nor while
            // heartbeats are or were just held for a leader transfer, which quiets the peers.
            let on_time = checked.elapsed() <= election * 3 / 2;
            checked = Instant::now();
            if self.is_leader()
                && on_time
                && !self.heartbeats_quiet(election)
                && !self.quorum_answers()
            {
                self.step_down(election).await;
            }
            joint = self.finish_joint_config(joint);
            leaderless = if self.has_leader() { 0 } else { leaderless + 1 };
            // Each further timeout without one ends the streams begun since.
            if leaderless >= 3 {
                self.inner.leader_lost.send_modify(|n| *n += 1);
            }
        }
    }

    /// On a leader, finishes a joint configuration left behind: openraft changes the voters in
    /// two steps (the joint configuration, then the new one), both proposed by the caller of
    /// its `change_membership`, so a caller stopped between them, or a leader that went down
    /// between them, leaves the cluster in the joint one, needing a quorum of both the old and
    /// the new voters. etcd's changes are one step and leave nothing so. A joint configuration
    /// that is applied and still the latest at the next check (`seen` is the one found at the
    /// last) has no caller left: the new configuration it was heading for is proposed, in the
    /// background, unless another membership change runs. Returns the joint configuration
    /// found now, for the next check.
    fn finish_joint_config(&self, seen: Option<crate::raft::LogId>) -> Option<crate::raft::LogId> {
        if !self.is_leader() {
            return None;
        }
        let m = self.inner.raft.metrics().borrow().clone();
        let configs = m.membership_config.membership().get_joint_config();
        let (Some(id), [_, .., last]) = (m.membership_config.log_id(), configs.as_slice()) else {
            return None;
        };
        if m.last_applied.is_none_or(|a| a.index < id.index) {
            return None;
        }
        if seen != Some(*id) {
            return Some(*id);
        }
        let Ok(one) = self.inner.membership.clone().try_lock_owned() else {
            return Some(*id);
        };
        let node = self.clone();
        let voters = last.clone();
        let term = m.current_term;
        tokio::spawn(async move {
            let _one = one;
            tracing::warn!(
                ?voters,
                "finishing a joint configuration left by a membership change"
            );
            // Nodes that are voters of the old configuration only go (the change that left
            // it was made with `retain` false, as every change here is); learners stay.
            let change = openraft::ChangeMembers::ReplaceAllVoters(voters);
            let finish = async {
                if let Err(e) = node.inner.raft.change_membership(change, false).await {
                    tracing::warn!(error = %e, "finishing a joint configuration");
                }
            };
            node.while_leading(term, finish).await;
        });
        Some(*id)
    }

    /// Runs `work` while this member leads in `term`: dropped once it is deposed (openraft
    /// may never answer a change proposed by a deposed leader).
    pub async fn while_leading(&self, term: u64, work: impl std::future::Future<Output = ()>) {
        // Biased: the simulation's seed decides every ordering, not tokio's random pick.
        tokio::select! {
            biased;
            () = work => {}
            () = self.deposed(term) => {}
        }
    }

    /// Returns once this member no longer leads in `term` (or its Raft stopped).
    pub async fn deposed(&self, term: u64) {
        let me = self.inner.id;
        let mut metrics = self.inner.raft.metrics();
        let _ = metrics
            .wait_for(|m| m.current_term != term || m.current_leader != Some(me))
            .await;
    }

    /// Probes, every probe interval until `shutdown`, each peer this member has not heard
    /// from for half of one ([`Peers::needs_probe`]), so that it knows how long each has been reachable whether it leads or not
    /// (etcd's members learn it from their peer streams). A new leader's strict
    /// reconfiguration check then judges its peers from before its election, as etcd's does,
    /// instead of refusing changes for the first 5 s. Probes do not count towards CheckQuorum.
    pub async fn probe_peers(self, shutdown: CancellationToken) {
        use crate::raft::pb::ProbeRequest;
        let peers = self.inner.peers.clone();
        let interval = peers.probe_interval().max(Duration::from_millis(1));
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
            if self.inner.raft.metrics().borrow().running_state.is_err() {
                return;
            }
            let due: Vec<(NodeId, Member)> = self
                .members()
                .into_iter()
                .filter(|(id, _)| *id != self.inner.id && peers.needs_probe(*id))
                .map(|(id, (member, _))| (id, member))
                .collect();
            // Each on its own: a peer that does not answer delays no other's probe.
            for (id, member) in due {
                let Ok(mut client) = peers.client(&member) else {
                    continue;
                };
                let peers = peers.clone();
                tokio::spawn(async move {
                    let mut request = tonic::Request::new(ProbeRequest {});
                    request.set_timeout(interval);
                    match client.probe(request).await {
                        Ok(r) => peers.mark_probe(id, r.get_ref().id == id),
                        // As a Raft call's: a refused or broken connection is a break, a late
                        // answer only a silence.
                        Err(s) if s.code() == tonic::Code::Unavailable => {
                            peers.mark_probe(id, false)
                        }
                        Err(_) => {}
                    }
                });
            }
        }
    }

    /// Stops leading: openraft 0.9 has no CheckQuorum and no call to step down, so this member
    /// grants, on its own, a vote for no member (etcd's `None`, 0: no member ID is 0) in the
    /// next term, as if a candidate with a log no other can be ahead of had asked. It then
    /// follows, and campaigns after an election timeout like any follower without a leader.
    /// openraft refuses while its leader lease lasts (the longest election timeout since it
    /// was elected); the monitor asks again at its next check. Waits at most `wait` for Raft.
    async fn step_down(&self, wait: Duration) {
        let term = self.inner.raft.metrics().borrow().current_term;
        let vote = openraft::Vote::new(term + 1, 0);
        let any_log = openraft::LogId::new(openraft::CommittedLeaderId::new(u64::MAX, 0), u64::MAX);
        let request = openraft::raft::VoteRequest::new(vote, Some(any_log));
        // Bounded, so a stalled Raft core does not stop the monitor.
        match tokio::time::timeout(wait, self.inner.raft.vote(request)).await {
            Err(_) => tracing::debug!("stepping down: no answer from Raft"),
            Ok(Err(e)) => tracing::debug!(error = %e, "stepping down"),
            Ok(Ok(r)) if r.vote_granted => tracing::warn!(
                term,
                "stepped down: a majority of the voters has not answered for an election timeout"
            ),
            Ok(Ok(r)) => tracing::debug!(vote = %r.vote, "not stepping down yet (refused)"),
        }
    }

    /// Changes each time require-leader streams are to end ([`Node::monitor_leader`]).
    pub fn leader_lost(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.leader_lost.subscribe()
    }

    /// The leader's Raft record, if a leader is known.
    pub fn leader_member(&self) -> Option<(NodeId, Member)> {
        let m = self.inner.raft.metrics().borrow().clone();
        let id = m.current_leader?;
        let node = m.membership_config.membership().get_node(&id)?.clone();
        Some((id, node))
    }

    /// A peer client to the current leader, for requests only the leader can serve.
    pub fn leader_client(
        &self,
    ) -> Result<crate::raft::pb::raft_peer_client::RaftPeerClient<tonic::transport::Channel>> {
        let (_, leader) = self.leader_member().ok_or(StoreError::NoLeader)?;
        self.inner
            .peers
            .client(&leader)
            .map_err(|_| StoreError::NoLeader)
    }

    /// Every member Raft knows, with whether it is a learner.
    pub fn members(&self) -> BTreeMap<NodeId, (Member, bool)> {
        let m = self.inner.raft.metrics().borrow().membership_config.clone();
        let voters: std::collections::BTreeSet<NodeId> = m.membership().voter_ids().collect();
        m.membership()
            .nodes()
            .map(|(id, n)| (*id, (n.clone(), !voters.contains(id))))
            .collect()
    }

    /// A response header at `revision`.
    pub fn header(&self, revision: i64) -> Option<ResponseHeader> {
        Some(ResponseHeader {
            cluster_id: self.inner.cluster_id,
            member_id: self.inner.id,
            revision,
            raft_term: self.inner.raft.metrics().borrow().current_term,
        })
    }

    /// A header at the current revision.
    pub fn current_header(&self) -> Option<ResponseHeader> {
        let rev = self.inner.shared.mvcc.read().current_revision();
        self.header(rev)
    }

    /// Replicates `req` and returns what applying it produced.
    pub async fn propose(&self, req: InternalRequest) -> Result<internal_response::Response> {
        let resp = self.enqueue(vec![req], false).await?.pop();
        match resp.and_then(|r| r.response) {
            Some(internal_response::Response::Error(e)) => Err(StoreError::from_apply_code(e.code)),
            Some(r) => Ok(r),
            None => Err(StoreError::Internal("empty apply response".into())),
        }
    }

    /// Replicates a batch another member forwarded to this one (the leader), in the same log
    /// entries as this member's own requests: `NotLeader` if this member does not lead.
    pub async fn propose_forwarded(&self, batch: Batch) -> Result<BatchResponse> {
        let responses = self.enqueue(batch.requests, true).await?;
        Ok(BatchResponse { responses })
    }

    async fn enqueue(
        &self,
        requests: Vec<InternalRequest>,
        forwarded: bool,
    ) -> Result<Vec<InternalResponse>> {
        let (reply, rx) = oneshot::channel();
        self.inner
            .proposals
            .send(Pending {
                requests,
                reply,
                forwarded,
            })
            .await
            .map_err(|_| StoreError::Stopped)?;
        rx.await.map_err(|_| StoreError::Stopped)?
    }

    /// Returns once this member has applied everything committed before the call: the
    /// linearizable-read barrier (ReadIndex). Concurrent callers share one round.
    pub async fn read_barrier(&self) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.inner.reads.send(tx).map_err(|_| StoreError::Stopped)?;
        rx.await.map_err(|_| StoreError::Stopped)?
    }

    async fn proposer(self, mut rx: mpsc::Receiver<Pending>) {
        let own = Arc::new(tokio::sync::Semaphore::new(LEADER_IN_FLIGHT));
        let forwarding = Arc::new(tokio::sync::Semaphore::new(FORWARD_IN_FLIGHT));
        while let Some(first) = rx.recv().await {
            let slots = if self.is_leader() { &own } else { &forwarding };
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return;
            };
            // Everything that queued while we waited for a slot shares this entry.
            let mut size = first.requests.len();
            let mut batch = vec![first];
            while size < MAX_BATCH {
                match rx.try_recv() {
                    Ok(p) => {
                        size += p.requests.len();
                        batch.push(p);
                    }
                    Err(_) => break,
                }
            }
            let node = self.clone();
            tokio::spawn(async move {
                node.write_pending(batch).await;
                drop(permit);
            });
        }
    }

    /// Appends the requests of `pending` as one entry and answers each when this member leads;
    /// otherwise its own requests go to the leader ([`Node::write`]) and forwarded ones back
    /// to their sender.
    async fn write_pending(&self, pending: Vec<Pending>) {
        let leads = self.leader() == Some(self.inner.id);
        let mut requests = Vec::new();
        let mut replies = Vec::with_capacity(pending.len());
        // Per reply: whether another member forwarded its requests.
        let mut forwarded = Vec::with_capacity(pending.len());
        for p in pending {
            if !leads && p.forwarded {
                // Never appended here: the sender may try the leader.
                let _ = p.reply.send(Err(StoreError::NotLeader));
                continue;
            }
            replies.push((p.reply, p.requests.len()));
            forwarded.push(p.forwarded);
            requests.extend(p.requests);
        }
        if replies.is_empty() {
            return;
        }
        let mut batch = Batch { requests };
        if leads {
            match self.try_append(batch).await {
                Ok(result) => return reply_all(replies, result),
                // Leadership moved before anything was appended: forwarded requests go back,
                // this member's own go to the new leader.
                Err(unsent) => {
                    let (own, own_replies) = split_unsent(unsent.requests, replies, forwarded);
                    if own_replies.is_empty() {
                        return;
                    }
                    batch = Batch { requests: own };
                    replies = own_replies;
                }
            }
        }
        let result = self.write(batch).await;
        reply_all(replies, result);
    }

    /// Appends `batch` on this member, once; hands it back (`Err`) if this member turns out
    /// not to lead before anything is appended (a leader transfer just ended). A write Raft
    /// refuses or drops after that is not tried again: openraft answers "forward to leader"
    /// both to a write it refused and to one it appended and then cut from this member's log
    /// for a new leader's entries, and a write cut here may still commit from another member's
    /// copy. Either way the outcome is `leader changed`, as etcd reports a proposal its leader
    /// lost. A write whose answer never comes (its entry dropped by a snapshot install) times
    /// out.
    async fn try_append(&self, batch: Batch) -> std::result::Result<Result<BatchResponse>, Batch> {
        let written = tokio::time::timeout(REQUEST_TIMEOUT, async {
            let _no_transfer = self.inner.transfer.read().await;
            if self.leader() != Some(self.inner.id) {
                return Err(batch);
            }
            Ok(self.inner.raft.client_write(Pb(batch)).await)
        });
        let result = match written.await {
            Err(_) => Err(StoreError::Timeout),
            Ok(Err(batch)) => return Err(batch),
            Ok(Ok(Ok(r))) => {
                self.inner.metrics.proposals_committed.inc();
                return Ok(Ok(r.data.0));
            }
            Ok(Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))))) => {
                Err(StoreError::LeaderChanged)
            }
            Ok(Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))))) => {
                Err(StoreError::Internal(e.to_string()))
            }
            Ok(Ok(Err(RaftError::Fatal(_)))) => Err(StoreError::Stopped),
        };
        self.inner.metrics.proposals_failed.inc();
        Ok(result)
    }

    /// Proposes `req` only if this member leads, never forwarding it: for what only a leader may
    /// decide (revoking an expired lease). A leader that was stalled (paused, a slow disk) may
    /// still believe it leads; forwarded, its stale decision would reach the new leader and
    /// commit (etcd issues 12528 and 15247; `keelson chaos` shows the latter on etcd 3.4.23).
    /// Callers confirm leadership first ([`Node::leader_barrier`]), as etcd's fix does.
    pub async fn propose_as_leader(
        &self,
        req: InternalRequest,
    ) -> Result<internal_response::Response> {
        let batch = Batch {
            requests: vec![req],
        };
        // Not leading, or the write lost with the leadership: a later leader decides again.
        let resp = match self.try_append(batch).await {
            Ok(Err(StoreError::LeaderChanged)) | Err(_) => return Err(StoreError::NotLeader),
            Ok(result) => result?,
        };
        match resp.responses.into_iter().next().and_then(|r| r.response) {
            Some(internal_response::Response::Error(e)) => Err(StoreError::from_apply_code(e.code)),
            Some(r) => Ok(r),
            None => Err(StoreError::Internal("empty apply response".into())),
        }
    }

    /// Confirms with a quorum that this member leads and applies everything committed so far,
    /// without forwarding: `NotLeader` when another member leads or no quorum answers in time.
    pub async fn leader_barrier(&self) -> Result<()> {
        let confirm = tokio::time::timeout(REQUEST_TIMEOUT, self.confirm());
        match confirm.await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(RaftError::Fatal(_))) => Err(StoreError::Stopped),
            Ok(Err(RaftError::APIError(_))) => Err(StoreError::NotLeader),
            Err(_) => Err(StoreError::Timeout),
        }
    }

    /// Appends a batch on the leader, forwarding to it from a follower; waits out elections.
    /// Sends it again only when it cannot have reached a log: the member it went to did not
    /// lead (and appended nothing), or refused the connection. Any other failure leaves the
    /// outcome unknown: a second try could apply the batch twice.
    pub async fn write(&self, mut batch: Batch) -> Result<BatchResponse> {
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        loop {
            match self.leader_member() {
                Some((id, _)) if id == self.inner.id => match self.try_append(batch).await {
                    Ok(result) => return result,
                    Err(unsent) => batch = unsent,
                },
                Some((_, member)) => match self.forward(&member, batch.clone()).await {
                    Ok(r) => return Ok(r),
                    Err(StoreError::NoLeader) | Err(StoreError::NotLeader) => {}
                    Err(e) => return Err(e),
                },
                None => {}
            }
            if Instant::now() >= deadline {
                self.inner.metrics.proposals_failed.inc();
                // As etcd's: a proposal that never found a leader ends with its context.
                return Err(if self.leader().is_none() {
                    StoreError::DeadlineExceeded
                } else {
                    StoreError::Timeout
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends `batch` to the leader. `NotLeader` and `NoLeader` (no connection could be made)
    /// mean it reached no log; any other failure after sending is an unknown outcome.
    async fn forward(&self, leader: &Member, batch: Batch) -> Result<BatchResponse> {
        let mut client = self
            .inner
            .peers
            .client(leader)
            .map_err(|_| StoreError::NoLeader)?;
        let mut req = tonic::Request::new(ProposeRequest { batch: Some(batch) });
        req.set_timeout(REQUEST_TIMEOUT);
        match client.propose(req).await {
            Ok(r) => r
                .into_inner()
                .responses
                .ok_or_else(|| StoreError::Internal("empty forward response".into())),
            Err(s) if s.code() == tonic::Code::FailedPrecondition => Err(StoreError::NotLeader),
            Err(s) if s.code() == tonic::Code::Unavailable && connection_refused(&s) => {
                Err(StoreError::NoLeader)
            }
            Err(s) if s.message() == StoreError::LeaderChanged.to_string() => {
                Err(StoreError::LeaderChanged)
            }
            Err(_) => Err(StoreError::Timeout),
        }
    }

    /// Confirms leadership with a quorum and applies what is committed (openraft's
    /// `ensure_linearizable`), waiting out a leader transfer.
    async fn confirm(
        &self,
    ) -> std::result::Result<
        Option<crate::raft::LogId>,
        RaftError<NodeId, CheckIsLeaderError<NodeId, Member>>,
    > {
        let _no_transfer = self.inner.transfer.read().await;
        let read = self.inner.raft.ensure_linearizable().await?;
        if let Some(floor) = self.restored_floor() {
            let applied = self
                .inner
                .raft
                .wait(Some(REQUEST_TIMEOUT))
                .applied_index_at_least(Some(floor), "the log at the restart")
                .await;
            if applied.is_err() {
                return Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(
                    openraft::error::QuorumNotEnough {
                        cluster: "the log this leader had when it restarted is not committed \
                                  yet"
                        .into(),
                        got: Default::default(),
                    },
                )));
            }
        }
        Ok(read)
    }

    /// The log index reads must reach while this member leads in the term it restarted in
    /// (see [`RestoredLeader`]).
    fn restored_floor(&self) -> Option<u64> {
        let r = self.inner.restored?;
        let m = self.inner.raft.metrics().borrow().clone();
        // Only a later term, whose leader's first entry covers the old log, lifts it early.
        (m.current_term <= r.term && m.last_applied.is_none_or(|a| a.index < r.last_index))
            .then_some(r.last_index)
    }

    /// The log index a follower must apply before a linearizable read (ReadIndex), confirmed
    /// with a quorum; waits while leadership is being handed over.
    pub async fn read_index(
        &self,
    ) -> std::result::Result<
        Option<crate::raft::LogId>,
        RaftError<NodeId, CheckIsLeaderError<NodeId, Member>>,
    > {
        let _no_transfer = self.inner.transfer.read().await;
        // The floor as it stood before the read index was taken: the round that confirms
        // leadership can apply the old log meanwhile, and the floor then lifts, while the index
        // it returns is still the committed one from before (stale for the member that asked,
        // which may not have applied the old log). A floor already lifted at this point is
        // covered by the index: the committed index is at least the applied one, and a later
        // term's first entry comes after the old log.
        let floor = self.restored_floor();
        let read = self.inner.raft.get_read_log_id().await?.0;
        Ok(match (read, floor) {
            (Some(r), Some(floor)) if floor > r.index => {
                Some(crate::raft::LogId::new(r.leader_id, floor))
            }
            (read, _) => read,
        })
    }

    /// Holds off this member's elections for `hold`, or resumes them now (`None`). A hold
    /// ends by itself, so a leader transfer that dies halfway leaves no member unable to
    /// campaign.
    pub fn hold_elections(&self, hold: Option<Duration>) {
        use std::sync::atomic::Ordering;
        let generation = self.inner.holds.fetch_add(1, Ordering::SeqCst) + 1;
        let config = self.inner.raft.runtime_config();
        let Some(hold) = hold else {
            config.elect(true);
            return;
        };
        config.elect(false);
        let node = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(hold).await;
            if node.inner.holds.load(Ordering::SeqCst) == generation {
                node.inner.raft.runtime_config().elect(true);
            }
        });
    }

    /// Hands leadership to the voter `target` (etcd's MoveLeader), from the leader.
    ///
    /// openraft 0.9 has no leader transfer, so this builds one from what it has: appends stop
    /// (client writes wait), `target` is brought level with the log, the leader stops its
    /// heartbeats and every voter but `target` holds off elections; once the followers' leader
    /// leases lapse (an election timeout or two) `target` campaigns and wins. Elections and
    /// heartbeats resume however it ends.
    ///
    /// The handover runs as a task of its own: a caller that goes away halfway (a client's
    /// deadline) does not leave heartbeats off or elections held.
    pub async fn move_leader(&self, target: NodeId) -> Result<()> {
        let node = self.clone();
        tokio::spawn(async move { node.hand_over(target).await })
            .await
            .map_err(|e| StoreError::Internal(format!("leader transfer: {e}")))?
    }

    async fn hand_over(&self, target: NodeId) -> Result<()> {
        if !self.is_leader() {
            return Err(StoreError::NotLeader);
        }
        let voter = self
            .members()
            .get(&target)
            .is_some_and(|(_, learner)| !learner);
        if !voter {
            return Err(StoreError::BadLeaderTransferee);
        }
        if target == self.inner.id {
            return Ok(());
        }
        let election_timeout = Duration::from_millis(self.inner.raft.config().election_timeout_max);
        let _no_appends = self.inner.transfer.write().await;
        let deadline = Instant::now() + REQUEST_TIMEOUT + 4 * election_timeout;
        // The transferee must have every entry, or the others would refuse it their votes.
        loop {
            let m = self.inner.raft.metrics().borrow().clone();
            if m.current_leader != Some(self.inner.id) {
                return Err(StoreError::NotLeader);
            }
            let matched = m
                .replication
                .as_ref()
                .and_then(|r| r.get(&target).cloned().flatten())
                .map(|l| l.index);
            if matched >= m.last_log_index {
                break;
            }
            if Instant::now() >= deadline {
                return Err(StoreError::LeaderTransferTimeout);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let hold = deadline.saturating_duration_since(Instant::now()) + election_timeout;
        let voters: Vec<(NodeId, Member)> = self
            .members()
            .into_iter()
            .filter(|(id, (_, learner))| !learner && *id != self.inner.id)
            .map(|(id, (m, _))| (id, m))
            .collect();
        self.hold_heartbeats(true);
        self.hold_elections(Some(hold));
        // The others hold first, then the transferee campaigns.
        let others: Vec<&Member> = voters
            .iter()
            .filter(|(id, _)| *id != target)
            .map(|(_, m)| m)
            .collect();
        self.tell(&others, hold.as_millis() as u64, false).await;
        if let Some((_, m)) = voters.iter().find(|(id, _)| *id == target) {
            self.tell(&[m], 0, true).await;
        }
        let moved = loop {
            let leader = self.leader();
            if leader == Some(target) {
                break Ok(());
            }
            if leader.is_some() && leader != Some(self.inner.id) {
                // Another member won after all (the transferee failed meanwhile).
                break Err(StoreError::LeaderTransferTimeout);
            }
            if Instant::now() >= deadline {
                break Err(StoreError::LeaderTransferTimeout);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        self.hold_heartbeats(false);
        self.hold_elections(None);
        self.tell(&others, 0, false).await;
        moved
    }

    /// Holds or resumes this leader's heartbeats ([`Node::send_heartbeats`]).
    fn hold_heartbeats(&self, hold: bool) {
        self.inner
            .heartbeats_held
            .store(hold, std::sync::atomic::Ordering::SeqCst);
        if !hold {
            *self.inner.heartbeats_resumed.lock() = Some(Instant::now());
        }
    }

    /// Whether heartbeats are held, or resumed less than `gap` ago.
    fn heartbeats_quiet(&self, gap: Duration) -> bool {
        self.inner
            .heartbeats_held
            .load(std::sync::atomic::Ordering::SeqCst)
            || self
                .inner
                .heartbeats_resumed
                .lock()
                .is_some_and(|at| at.elapsed() < gap)
    }

    /// Sends a transfer step to `members` at once (hold elections for `hold_ms`, or resume
    /// them with 0; `campaign`); a member that cannot be reached cannot campaign either, so
    /// failures are only logged.
    async fn tell(&self, members: &[&Member], hold_ms: u64, campaign: bool) {
        let sends = members.iter().map(|member| async move {
            let Ok(mut client) = self.inner.peers.client(member) else {
                return;
            };
            let mut req =
                tonic::Request::new(crate::raft::pb::TransferRequest { hold_ms, campaign });
            req.set_timeout(Duration::from_secs(2));
            if let Err(e) = client.transfer(req).await {
                tracing::warn!(member = %member, error = %e, "leader transfer step not delivered");
            }
        });
        futures::future::join_all(sends).await;
    }

    async fn read_barrier_loop(self, mut rx: mpsc::UnboundedReceiver<oneshot::Sender<Result<()>>>) {
        while let Some(first) = rx.recv().await {
            // Every waiter here arrived before this round started, so one round serves them all.
            let mut waiters = vec![first];
            while let Ok(w) = rx.try_recv() {
                waiters.push(w);
            }
            let result = self.read_index_round().await;
            for w in waiters {
                let _ = w.send(result.clone());
            }
        }
    }

    async fn read_index_round(&self) -> Result<()> {
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        loop {
            let leader = match self.confirm().await {
                Ok(_) => return Ok(()),
                Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => f.leader_node,
                Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_))) => None,
                Err(RaftError::Fatal(_)) => return Err(StoreError::Stopped),
            };
            if let Some(member) = leader
                && let Ok(mut client) = self.inner.peers.client(&member)
            {
                let mut req = tonic::Request::new(ReadIndexRequest {});
                req.set_timeout(REQUEST_TIMEOUT);
                if let Ok(resp) = client.read_index(req).await {
                    let index = resp.into_inner().index;
                    let wait = deadline.saturating_duration_since(Instant::now());
                    return match self
                        .inner
                        .raft
                        .wait(Some(wait))
                        .applied_index_at_least(Some(index), "read index")
                        .await
                    {
                        Ok(_) => Ok(()),
                        Err(_) => Err(StoreError::Timeout),
                    };
                }
            }
            if Instant::now() >= deadline {
                // etcd's read index waits out its timeout whether or not a leader is known.
                return Err(StoreError::Timeout);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The call failed because the peer refused the connection: nothing was sent.
fn connection_refused(status: &tonic::Status) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(e) = cause {
        if e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused)
        {
            return true;
        }
        cause = e.source();
    }
    false
}

type Reply = oneshot::Sender<Result<Vec<InternalResponse>>>;

/// Splits requests handed back unsent (`n` per reply, in the replies' order) into this
/// member's own, to send again, with their replies; the replies of forwarded requests are
/// answered `NotLeader` (the member that forwarded them tries the new leader).
fn split_unsent<R>(
    requests: Vec<R>,
    replies: Vec<(Reply, usize)>,
    forwarded: Vec<bool>,
) -> (Vec<R>, Vec<(Reply, usize)>) {
    let mut requests = requests.into_iter();
    let mut own = Vec::new();
    let mut own_replies = Vec::new();
    for ((reply, n), forwarded) in replies.into_iter().zip(forwarded) {
        // Taken whether kept or not: `take` is lazy, and requests left in the iterator would
        // go out as the next reply's (an acknowledged write lost, another written twice).
        let mine: Vec<R> = requests.by_ref().take(n).collect();
        if forwarded {
            let _ = reply.send(Err(StoreError::NotLeader));
        } else {
            own.extend(mine);
            own_replies.push((reply, n));
        }
    }
    (own, own_replies)
}

/// Hands each waiter its share of `result`: `n` responses each, in order.
fn reply_all(replies: Vec<(Reply, usize)>, result: Result<BatchResponse>) {
    let resp = match result {
        Ok(r) if r.responses.len() == replies.iter().map(|(_, n)| n).sum::<usize>() => r,
        Ok(_) => {
            for (reply, _) in replies {
                let _ = reply.send(Err(StoreError::Internal("response count mismatch".into())));
            }
            return;
        }
        Err(e) => {
            for (reply, _) in replies {
                let _ = reply.send(Err(e.clone()));
            }
            return;
        }
    };
    let mut responses = resp.responses.into_iter();
    for (reply, n) in replies {
        let mine = responses.by_ref().take(n).collect();
        let _ = reply.send(Ok(mine));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsent_requests_go_back_with_their_own_replies() {
        let mut receivers = Vec::new();
        let mut replies = Vec::new();
        for n in [2, 1, 2, 1] {
            let (tx, rx) = oneshot::channel();
            replies.push((tx, n));
            receivers.push(rx);
        }
        let forwarded = vec![true, false, true, false];
        let (own, own_replies) =
            split_unsent(vec!["a1", "a2", "b1", "c1", "c2", "d1"], replies, forwarded);
        // Only this member's own requests are sent again, each with its own reply.
        assert_eq!(own, vec!["b1", "d1"]);
        assert_eq!(
            own_replies.iter().map(|(_, n)| *n).collect::<Vec<_>>(),
            vec![1, 1]
        );
        // The forwarded ones are told to try the new leader.
        let mut rx = receivers.into_iter();
        for forwarded in [true, false, true, false] {
            let mut r = rx.next().unwrap();
            match r.try_recv() {
                Ok(Err(StoreError::NotLeader)) => assert!(forwarded),
                Err(_) => assert!(!forwarded),
                Ok(other) => panic!("unexpected answer {other:?}"),
            }
        }
    }
}
