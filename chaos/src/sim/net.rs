//! The simulated world the members live in: which members run, the links between them (cut,
//! lossy, slow), which members are paused, and the one seeded generator every random choice of
//! a run draws from. Raft's RPCs go through [`Conn`], which delivers them by calling the target
//! member's Raft directly after a simulated delay.
//!
//! A message is lost the way a dropped TCP segment is: the call hangs until the deadline
//! openraft gives the RPC, then fails as unreachable (as the real transport's timeout does). A
//! member that is down refuses at once. A member that restarted while a message was on its way
//! never sees it (the connection it was sent on is gone), and no answer reaches a sender that
//! restarted; a request already sent still arrives after its sender died, as the kernel would
//! deliver it.
//!
//! A pause holds a member's messages (and its clients' answers) until it resumes; the
//! member's own timers go on, so it is a stalled network rather than a SIGSTOP.

// openraft fixes its RPC error type (`RPCError`, large); boxing it would fight the trait.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::hash::Hasher;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keelson_store::raft::{Member, NodeId, Raft, TypeConfig};
use keelson_store::server::lessor::Lessor;
use keelson_store::server::node::Node;
use openraft::error::{InstallSnapshotError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use tokio::time::{Instant, sleep};
use tokio_util::sync::CancellationToken;

use crate::traffic::Rng;

/// Message kinds and fates, as they enter the trace.
const APPEND: u64 = 1;
const VOTE: u64 = 2;
const SNAPSHOT: u64 = 3;
const READ_INDEX: u64 = 4;
const DELIVERED: u64 = 10;
const LOST: u64 = 11;
const ANSWER_LOST: u64 = 12;
const REFUSED: u64 = 13;

/// What happened to the messages of a run.
#[derive(Clone, Copy, Debug, Default)]
pub struct NetStats {
    /// Answered.
    pub delivered: u64,
    /// Lost on the way there or back (to a cut link, loss, or a restart in between).
    pub lost: u64,
    /// Refused: the target was down.
    pub refused: u64,
}

/// The shared state of a simulated run.
pub(crate) struct World {
    start: Instant,
    members: usize,
    state: Mutex<State>,
}

struct State {
    rng: Rng,
    /// Per member (index: id - 1): its Raft and node while it runs.
    running: Vec<Option<(Raft, Node)>>,
    /// Per member: its lessor (lease deadlines and keep-alives) while it runs, and what stops
    /// its expiry loop.
    lessors: Vec<Option<(Lessor, CancellationToken)>>,
    /// Per member: how many times it has stopped (a message sent before a stop is never
    /// delivered after it).
    epochs: Vec<u64>,
    /// Snapshots installed by the members' runs that have stopped.
    installs: u64,
    /// Directed links that lose every message.
    cut: BTreeSet<(NodeId, NodeId)>,
    /// Members whose messages wait (a stopped process: SIGSTOP).
    paused: BTreeSet<NodeId>,
    /// Extra one-way delay on every message to or from a member.
    slow: BTreeMap<NodeId, Duration>,
    /// Messages lost per thousand, on every link.
    loss: usize,
    trace: std::hash::DefaultHasher,
    stats: NetStats,
}

/// The errors a simulated link reports.
#[derive(Debug)]
struct LinkError(&'static str);

impl std::fmt::Display for LinkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for LinkError {}

/// How one message will travel, decided when it is sent.
struct Plan {
    there: Duration,
    back: Duration,
    lose_request: bool,
    lose_answer: bool,
    target_epoch: u64,
    sender_epoch: u64,
}

impl World {
    /// A world of `members` members (IDs 1..=members), none running yet.
    pub(crate) fn new(seed: u64, members: usize) -> World {
        World {
            start: Instant::now(),
            members,
            state: Mutex::new(State {
                rng: Rng::new(seed),
                running: vec![None; members],
                lessors: vec![None; members],
                epochs: vec![0; members],
                installs: 0,
                cut: BTreeSet::new(),
                paused: BTreeSet::new(),
                slow: BTreeMap::new(),
                loss: 0,
                trace: std::hash::DefaultHasher::new(),
                stats: NetStats::default(),
            }),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        f(&mut self.state.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The member IDs.
    pub(crate) fn ids(&self) -> impl Iterator<Item = NodeId> + use<> {
        1..=self.members as NodeId
    }

    /// Simulated nanoseconds since the run started.
    pub(crate) fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// A number below `n`, from the run's generator.
    pub(crate) fn below(&self, n: usize) -> usize {
        self.with(|s| s.rng.below(n))
    }

    /// `lo` plus up to `spread` milliseconds, drawn from the run's generator.
    pub(crate) fn millis(&self, lo: u64, spread: u64) -> Duration {
        Duration::from_millis(lo + self.below(spread as usize + 1) as u64)
    }

    /// A member drawn at random.
    pub(crate) fn any(&self) -> NodeId {
        1 + self.below(self.members) as NodeId
    }

    /// Adds `parts` to the trace whose digest shows that a seed replays exactly.
    pub(crate) fn note(&self, parts: &[u64]) {
        let at = self.now();
        self.with(|s| {
            s.trace.write_u64(at);
            for p in parts {
                s.trace.write_u64(*p);
            }
        });
    }

    /// The trace's digest so far.
    pub(crate) fn digest(&self) -> u64 {
        self.with(|s| s.trace.finish())
    }

    /// What happened to the messages so far.
    pub(crate) fn stats(&self) -> NetStats {
        self.with(|s| s.stats)
    }

    /// Member `id` runs `raft`, `node` and `lessor`, whose expiry loop ends with `stop`.
    pub(crate) fn set_running(
        &self,
        id: NodeId,
        raft: Raft,
        node: Node,
        lessor: Lessor,
        stop: CancellationToken,
    ) {
        self.with(|s| {
            s.running[id as usize - 1] = Some((raft, node));
            s.lessors[id as usize - 1] = Some((lessor, stop));
        });
    }

    /// Member `id` stops: what it ran, to be shut down.
    pub(crate) fn take_running(&self, id: NodeId) -> Option<(Raft, Node)> {
        self.with(|s| {
            s.epochs[id as usize - 1] += 1;
            if let Some((_, stop)) = s.lessors[id as usize - 1].take() {
                stop.cancel();
            }
            let running = s.running[id as usize - 1].take();
            if let Some((_, node)) = &running {
                s.installs += node.shared().installs();
            }
            running
        })
    }

    /// Snapshots installed so far by every member's runs that have stopped.
    pub(crate) fn installs(&self) -> u64 {
        self.with(|s| s.installs)
    }

    /// Member `id`'s node and lessor, while it runs, and how many times it had stopped by then.
    pub(crate) fn lessor(&self, id: NodeId) -> Option<(Node, Lessor, u64)> {
        self.with(|s| {
            let i = id as usize - 1;
            match (&s.running[i], &s.lessors[i]) {
                (Some((_, n)), Some((l, _))) => Some((n.clone(), l.clone(), s.epochs[i])),
                _ => None,
            }
        })
    }

    /// Member `id`'s node, while it runs, and how many times it had stopped by then.
    pub(crate) fn node(&self, id: NodeId) -> Option<(Node, u64)> {
        self.with(|s| {
            let i = id as usize - 1;
            s.running[i].as_ref().map(|(_, n)| (n.clone(), s.epochs[i]))
        })
    }

    /// How many times member `id` has stopped.
    pub(crate) fn node_epoch(&self, id: NodeId) -> u64 {
        self.with(|s| s.epochs[id as usize - 1])
    }

    /// Member `id`'s Raft and node, while it runs.
    pub(crate) fn running(&self, id: NodeId) -> Option<(Raft, Node)> {
        self.with(|s| s.running[id as usize - 1].clone())
    }

    /// Member `id`'s Raft, while it runs.
    pub(crate) fn raft(&self, id: NodeId) -> Option<Raft> {
        self.with(|s| s.running[id as usize - 1].as_ref().map(|(r, _)| r.clone()))
    }

    /// The running member that believes it leads in the highest term.
    pub(crate) fn leader(&self) -> Option<NodeId> {
        let mut best: Option<(u64, NodeId)> = None;
        for id in self.ids() {
            if let Some(raft) = self.raft(id) {
                let m = raft.metrics().borrow().clone();
                if m.current_leader == Some(id) && best.is_none_or(|(t, _)| m.current_term > t) {
                    best = Some((m.current_term, id));
                }
            }
        }
        best.map(|(_, id)| id)
    }

    /// Cuts (or heals) the link from `from` to `to`.
    pub(crate) fn set_cut(&self, from: NodeId, to: NodeId, cut: bool) {
        self.with(|s| {
            if cut {
                s.cut.insert((from, to));
            } else {
                s.cut.remove(&(from, to));
            }
        });
    }

    /// Pauses (or resumes) member `id`.
    pub(crate) fn set_paused(&self, id: NodeId, paused: bool) {
        self.with(|s| {
            if paused {
                s.paused.insert(id);
            } else {
                s.paused.remove(&id);
            }
        });
    }

    /// Adds `delay` to every message to or from member `id` (zero: none).
    pub(crate) fn set_slow(&self, id: NodeId, delay: Duration) {
        self.with(|s| {
            if delay.is_zero() {
                s.slow.remove(&id);
            } else {
                s.slow.insert(id, delay);
            }
        });
    }

    /// Loses `per_mille` of the messages on every link.
    pub(crate) fn set_loss(&self, per_mille: usize) {
        self.with(|s| s.loss = per_mille);
    }

    /// Heals every link fault and resumes every member.
    pub(crate) fn heal_all(&self) {
        self.with(|s| {
            s.cut.clear();
            s.paused.clear();
            s.slow.clear();
            s.loss = 0;
        });
    }

    /// One way's delay between `a` and `b`: 0.5 to 3 ms, one message in fifty 20 to 120 ms
    /// more, plus what a slow member adds.
    pub(crate) fn latency(&self, a: NodeId, b: NodeId) -> Duration {
        self.with(|s| {
            let mut d = Duration::from_micros(500 + s.rng.below(2500) as u64);
            if s.rng.below(50) == 0 {
                d += Duration::from_millis(20 + s.rng.below(100) as u64);
            }
            for id in [a, b] {
                d += s.slow.get(&id).copied().unwrap_or_default();
            }
            d
        })
    }

    fn plan(&self, from: NodeId, to: NodeId) -> Plan {
        let there = self.latency(from, to);
        let back = self.latency(to, from);
        self.with(|s| Plan {
            there,
            back,
            lose_request: s.rng.below(1000) < s.loss,
            lose_answer: s.rng.below(1000) < s.loss,
            target_epoch: s.epochs[to as usize - 1],
            sender_epoch: s.epochs[from as usize - 1],
        })
    }

    /// Waits while `a` or `b` is paused.
    pub(crate) async fn wait_resumed(&self, a: NodeId, b: NodeId) {
        while self.with(|s| s.paused.contains(&a) || s.paused.contains(&b)) {
            sleep(Duration::from_millis(5)).await;
        }
    }

    fn is_cut(&self, from: NodeId, to: NodeId) -> bool {
        self.with(|s| s.cut.contains(&(from, to)))
    }

    /// Whether member `id` has not stopped since it had stopped `epoch` times.
    pub(crate) fn same_epoch(&self, id: NodeId, epoch: u64) -> bool {
        self.with(|s| s.epochs[id as usize - 1] == epoch)
    }

    fn count(&self, kind: u64, from: NodeId, to: NodeId, fate: u64) {
        self.note(&[kind, from, to, fate]);
        self.with(|s| match fate {
            DELIVERED => s.stats.delivered += 1,
            REFUSED => s.stats.refused += 1,
            _ => s.stats.lost += 1,
        });
    }
}

/// openraft's network factory for member `from`.
#[derive(Clone)]
pub(crate) struct Network {
    pub(crate) world: Arc<World>,
    pub(crate) from: NodeId,
    /// How many times `from` had stopped when this run of it started.
    pub(crate) epoch: u64,
}

/// Member `from`'s connection to member `to`.
pub(crate) struct Conn {
    world: Arc<World>,
    from: NodeId,
    to: NodeId,
    /// For Raft's calls, the run of `from` that makes them: their answers are recorded in its
    /// peer table, as the store's transport records them.
    raft_of: Option<u64>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Conn;

    async fn new_client(&mut self, target: NodeId, _node: &Member) -> Conn {
        Conn {
            world: self.world.clone(),
            from: self.from,
            to: target,
            raft_of: Some(self.epoch),
        }
    }
}

impl Conn {
    /// Member `from`'s connection to member `to`, for calls of the store's own (not Raft's).
    pub(crate) fn new(world: Arc<World>, from: NodeId, to: NodeId) -> Conn {
        Conn {
            world,
            from,
            to,
            raft_of: None,
        }
    }

    /// The store's ReadIndex call (a follower's linearizable read asks the leader for the
    /// index to apply first), answered by the target's own [`Node::read_index`].
    pub(crate) async fn read_index(
        &self,
        ttl: Duration,
    ) -> Result<Option<u64>, RPCError<NodeId, Member, ReadIndexError>> {
        self.call(READ_INDEX, ttl, |_, node| async move {
            node.read_index()
                .await
                .map(|read| read.map(|l| l.index))
                .map_err(|e| ReadIndexError(e.to_string()))
        })
        .await
    }

    /// Carries one RPC to the target and its answer back, as the plan drawn for it says;
    /// `deliver` is the target Raft's handler.
    async fn call<Resp, E, F, Fut>(
        &self,
        kind: u64,
        ttl: Duration,
        deliver: F,
    ) -> Result<Resp, RPCError<NodeId, Member, E>>
    where
        E: std::error::Error,
        F: FnOnce(Raft, Node) -> Fut,
        Fut: Future<Output = Result<Resp, E>>,
    {
        let (world, from, to) = (&self.world, self.from, self.to);
        let plan = world.plan(from, to);
        let unreachable = |why| Err(RPCError::Unreachable(Unreachable::new(&LinkError(why))));
        let exchange = async {
            sleep(plan.there).await;
            world.wait_resumed(from, to).await;
            if plan.lose_request || world.is_cut(from, to) {
                world.count(kind, from, to, LOST);
                return std::future::pending().await;
            }
            let (raft, node) = match world.running(to) {
                Some(r) if world.same_epoch(to, plan.target_epoch) => r,
                _ => {
                    world.count(kind, from, to, REFUSED);
                    self.mark(false);
                    return unreachable("connection refused");
                }
            };
            let answer = deliver(raft, node).await;
            sleep(plan.back).await;
            world.wait_resumed(from, to).await;
            if plan.lose_answer
                || world.is_cut(to, from)
                || !world.same_epoch(to, plan.target_epoch)
                || !world.same_epoch(from, plan.sender_epoch)
            {
                world.count(kind, from, to, ANSWER_LOST);
                return std::future::pending().await;
            }
            world.count(kind, from, to, DELIVERED);
            self.mark(true);
            answer.map_err(|e| RPCError::RemoteError(RemoteError::new(to, e)))
        };
        match tokio::time::timeout(ttl, exchange).await {
            Ok(r) => r,
            Err(_) => unreachable("timed out"),
        }
    }
}

impl Conn {
    /// Records a Raft call's outcome in the sender's peer table, as the store's transport
    /// does (if the run that sent it still runs).
    fn mark(&self, reached: bool) {
        if let Some((node, epoch)) = self.world.node(self.from)
            && Some(epoch) == self.raft_of
        {
            node.peers().mark(self.to, reached);
        }
    }
}

impl RaftNetwork<TypeConfig> for Conn {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        self.call(APPEND, option.hard_ttl(), |raft, _| async move {
            raft.append_entries(rpc).await
        })
        .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, Member, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call(SNAPSHOT, option.hard_ttl(), |raft, _| async move {
            raft.install_snapshot(rpc).await
        })
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        self.call(VOTE, option.hard_ttl(), |raft, _| async move {
            raft.vote(rpc).await
        })
        .await
    }
}

/// A ReadIndex the leader refused (it does not lead, or could not confirm it does).
#[derive(Debug)]
pub(crate) struct ReadIndexError(pub(crate) String);

impl std::fmt::Display for ReadIndexError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ReadIndexError {}
