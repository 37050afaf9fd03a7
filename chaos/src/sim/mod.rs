//! `keelson chaos sim`: deterministic simulation of keelson-store's Raft and MVCC layer.
//!
//! The members of a cluster run in one process, on one thread, on a runtime whose clock is
//! simulated (tokio's paused time: when every task waits, the clock jumps to the next timer).
//! Each member is the store's own code: openraft with keelson's sled log store and MVCC state
//! machine, and keelson's [`Node`] (the proposer that batches writes, the read barrier, the
//! restored-leader rule, the leader monitor that makes a leader without a quorum step down).
//! Only the transport is replaced: [`net`] carries Raft's RPCs between members with seeded
//! delays, losses, partitions and pauses (and records the answers in the sender's peer
//! table, as the store's transport does), and clients call the members directly (a
//! follower's linearizable read asks the leader's read index over that network); watchers
//! open the store's own watch service on a member, in process, and its answers reach them
//! with the network's delays. A compactor compacts to 50 revisions behind the head
//! through the leader, as `keelson chaos run`'s does (the store deletes the compacted records
//! inline here). A nemesis crashes and restarts members (one, or all
//! at once), partitions them, pauses them and slows or drops their messages, and removes a
//! member (the leader too) from the cluster, deletes its data and adds it back empty, as a
//! learner that catches up (from a snapshot when the log is purged past it) and is then
//! promoted; all drawn from the seed.
//!
//! Every random choice comes from the seed and the thread decides every ordering, so a seed
//! replays exactly: the same operations, the same faults at the same simulated instants, the
//! same messages (the run's digest hashes all of them). The log store syncs, deletes purged
//! entries and writes deferred purges inline ([`LogStore::open_inline`]), and the state
//! machine deletes compacted records and builds, sends and installs snapshots on the thread
//! too ([`Shared::run_inline`]), so no work happens off it. Members snapshot every 300
//! entries and keep 300 behind, as `keelson chaos run`'s do, so a member that lags further,
//! or one added back empty, is sent a snapshot. Simulated seconds cost little real time, so
//! many seeds can be searched.
//!
//! The history goes through the same checkers as `keelson chaos run`
//! ([`crate::check_all`]): linearizability, revisions, txns, watch, replicas.
//!
//! A lease client grants leases with a key on each through the leader, keeps every other one
//! alive through the leader's lessor (the store's own, whose expiry loop revokes them
//! through Raft), and lets them all expire; the run then waits until no member holds a
//! lease's key.
//!
//! What is not simulated: forwarded writes (clients write to the member they take for the
//! leader), SIGSTOP (a stall holds a member's messages but its timers run), and the loss of
//! writes not yet synced (a crash here is a kill -9: what the store wrote stays).
//!
//! One ordering is not the seed's: tokio picks the branch of an unbiased `select!` at random
//! (seeding it needs `tokio_unstable`). openraft has two: its replication back-off, where
//! either branch leads to the same next step, and its metrics `wait`, whose timeout can race
//! the change it waits for on the same tick; the store's restored-leader read floor waits
//! through it. The simulation's own waits poll instead.

mod leases;
mod net;
mod watchers;

use std::collections::BTreeMap;
use std::hash::Hasher;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use keelson_etcdpb::etcdserverpb::CompactionRequest;
use keelson_store::StoreError;
use keelson_store::backend::{SledBackend, SledDb};
use keelson_store::raft::log_store::LogStore;
use keelson_store::raft::network::Peers;
use keelson_store::raft::pb::internal_request::Request as Rq;
use keelson_store::raft::pb::internal_response::Response as Rs;
use keelson_store::raft::pb::{Batch, InternalRequest};
use keelson_store::raft::snapshot::SnapshotDir;
use keelson_store::raft::state_machine::{Shared, StateMachine};
use keelson_store::raft::{Member, NodeId, Raft};
use keelson_store::server::lessor::Lessor;
use keelson_store::server::metrics::Metrics;
use keelson_store::server::node::Node;
use keelson_store::server::{ready_log, restored_leader, rpc_deadline};
use tokio::time::{Instant, sleep};

pub use self::net::NetStats;
use self::net::{Network, World};
use crate::history::{Compaction, FaultStep, History, Input, Operation, Output};
use crate::replicas::{self, ReplicaRead};
use crate::traffic::{self, Answer, Chooser, PREFIX, Request, Step};
use crate::{Check, Verdict};

/// A client call without an answer within this is an unknown outcome.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

/// Log entries between snapshots, and kept behind one.
const SNAPSHOT_COUNT: u64 = 300;

/// How long the end of a run may take to bring every member back and agree.
const SETTLE: Duration = Duration::from_secs(60);

/// A bug planted on purpose, to show the checkers catch what it breaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Bug {
    /// Reads are served by whichever member the client asks, without the read barrier (a
    /// deposed leader or a lagging follower answers from its own state).
    StaleReads,
    /// A watch opened again after its stream broke starts one revision late (as a store that
    /// dropped the event at a reconnect would look).
    WatchGaps,
    /// Keep-alives are answered with the lease's TTL but renew nothing (as a lessor that lost
    /// its renewals would look).
    LostKeepAlives,
}

/// What to simulate.
#[derive(Clone, Debug)]
pub struct Options {
    /// Every random choice of the run derives from it.
    pub seed: u64,
    /// Simulated time the clients run for.
    pub duration: Duration,
    /// Members of the cluster (1 to 7).
    pub members: usize,
    /// Clients, each running one operation at a time.
    pub clients: usize,
    /// Keys the clients share.
    pub keys: usize,
    /// Watchers on the clients' keys, held across faults.
    pub watchers: usize,
    /// Compact this often (and up to half a second more); zero turns compaction off.
    pub compact_interval: Duration,
    /// Whether a lease client grants leases with keys attached, keeps some alive and lets
    /// them expire.
    pub leases: bool,
    /// Whether the nemesis injects faults.
    pub faults: bool,
    /// A bug to plant.
    pub bug: Option<Bug>,
    /// Time the checkers may spend.
    pub check_budget: Duration,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            seed: 1,
            duration: Duration::from_secs(20),
            members: 3,
            clients: 4,
            keys: 6,
            watchers: 2,
            compact_interval: Duration::from_secs(2),
            leases: true,
            faults: true,
            bug: None,
            check_budget: Duration::from_secs(30),
        }
    }
}

/// What a simulated run did and what the checkers said.
#[derive(Debug)]
pub struct Outcome {
    /// The seed.
    pub seed: u64,
    /// The recorded history (times in simulated nanoseconds).
    pub history: History,
    /// The checkers' verdicts.
    pub checks: Vec<Check>,
    /// A hash of everything that happened (every message's fate and time, every operation,
    /// every fault): equal for two runs of one seed.
    pub digest: u64,
    /// What happened to the messages.
    pub net: NetStats,
    /// The highest Raft term reached (how many elections there were, roughly).
    pub term: u64,
    /// Members crashed and restarted.
    pub crashes: usize,
    /// Snapshots the members installed (sent by a leader to a member that lagged behind its
    /// log, or one added back empty).
    pub installs: u64,
}

impl Outcome {
    /// The worst verdict.
    pub fn verdict(&self) -> Verdict {
        crate::run::worst(&self.checks)
    }

    /// One line: operations, faults, messages, digest and the verdicts.
    pub fn summary(&self) -> String {
        let ops = &self.history.operations;
        let unknown = ops
            .iter()
            .filter(|o| matches!(o.output, Output::Unknown { .. }))
            .count();
        format!(
            "seed {}: {} operations ({} unknown), {} compactions, {} fault steps, {} crashes, \
             {} snapshot installs, \
             term {}, {} messages ({} lost, {} refused), digest {:016x}: {}",
            self.seed,
            ops.len(),
            unknown,
            self.history.compactions.len(),
            self.history.faults.len(),
            self.crashes,
            self.installs,
            self.term,
            self.net.delivered + self.net.lost + self.net.refused,
            self.net.lost,
            self.net.refused,
            self.digest,
            crate::run::summary(&self.checks)
        )
    }
}

/// Runs one simulated cluster under `options`, its members' data in `dir` (best on a
/// memory filesystem: every append syncs). Blocks the calling thread, which must not be inside
/// a tokio runtime.
pub fn run(options: &Options, dir: &Path) -> anyhow::Result<Outcome> {
    anyhow::ensure!(
        (1..=7).contains(&options.members),
        "--members must be 1 to 7, not {}",
        options.members
    );
    anyhow::ensure!(options.clients >= 1, "--clients must be at least 1");
    anyhow::ensure!(options.keys >= 1, "--keys must be at least 1");
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()?;
    let outcome = rt.block_on(simulate(options.clone(), dir.to_path_buf()));
    // Tasks still waiting (a crashed member's) go with the runtime.
    drop(rt);
    outcome
}

/// Where a run's members keep their data: a memory filesystem when there is one (every
/// append syncs).
pub fn scratch_dir() -> PathBuf {
    if Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    }
}

/// A member's storage, kept across its restarts and replaced when the member is removed and
/// added back empty.
struct Store {
    id: NodeId,
    /// Where its data goes (a directory per generation of it: `<dir>.<n>` after `n` wipes).
    dir: PathBuf,
    /// The current data: its directory, the database, and how many times it was wiped.
    data: std::sync::Mutex<(PathBuf, SledDb, u32)>,
}

impl Store {
    fn open(id: NodeId, dir: PathBuf) -> anyhow::Result<Store> {
        let db =
            SledDb::open(&dir, 1 << 20).with_context(|| format!("opening {}", dir.display()))?;
        Ok(Store {
            id,
            data: std::sync::Mutex::new((dir.clone(), db, 0)),
            dir,
        })
    }

    /// The current data's directory and database.
    fn current(&self) -> (PathBuf, SledDb) {
        let data = self.data.lock().unwrap_or_else(|e| e.into_inner());
        (data.0.clone(), data.1.clone())
    }

    /// Deletes the member's data (it must not run) and starts it a new, empty database.
    fn wipe(&self) -> anyhow::Result<()> {
        let mut data = self.data.lock().unwrap_or_else(|e| e.into_inner());
        let n = data.2 + 1;
        let path = self.dir.with_extension(n.to_string());
        let db =
            SledDb::open(&path, 1 << 20).with_context(|| format!("opening {}", path.display()))?;
        let old = std::mem::replace(&mut *data, (path, db, n));
        drop(old.1);
        // The crashed member's tasks may still hold the old database: its files go once
        // they let go (unlinked files stay readable until then).
        std::fs::remove_dir_all(&old.0).with_context(|| format!("removing {}", old.0.display()))
    }
}

async fn simulate(o: Options, dir: PathBuf) -> anyhow::Result<Outcome> {
    let world = Arc::new(World::new(o.seed, o.members));
    let mut stores = Vec::new();
    for id in world.ids() {
        stores.push(Store::open(id, dir.join(format!("m{id}")))?);
    }
    let stores = Arc::new(stores);
    let initial: BTreeMap<NodeId, Member> = world.ids().map(|id| (id, member(id))).collect();
    for s in stores.iter() {
        start(&world, s, Some(&initial)).await?;
    }

    let end = Instant::now() + o.duration;
    // The last revision, and when to stop waiting for it, once the run knows it.
    let (last_tx, last_rx) = tokio::sync::watch::channel(None);
    let watchers: Vec<_> = (0..o.watchers)
        .map(|w| {
            let gaps = o.bug == Some(Bug::WatchGaps);
            tokio::spawn(watchers::watcher(world.clone(), w, gaps, last_rx.clone()))
        })
        .collect();
    let clients: Vec<_> = (0..o.clients)
        .map(|c| tokio::spawn(client(world.clone(), o.clone(), c, end)))
        .collect();
    let nemesis = tokio::spawn(nemesis(world.clone(), stores.clone(), o.faults, end));
    let compactor = (!o.compact_interval.is_zero())
        .then(|| tokio::spawn(compactor(world.clone(), o.compact_interval, end)));
    let lease_client = o.leases.then(|| {
        let lost = o.bug == Some(Bug::LostKeepAlives);
        tokio::spawn(leases::client(world.clone(), o.clients, lost, end))
    });
    let mut operations = Vec::new();
    for c in clients {
        operations.extend(c.await.context("a client failed")?);
    }
    let compactions = match compactor {
        Some(c) => c.await.context("the compactor failed")?,
        None => Vec::new(),
    };
    let lease_records = match lease_client {
        Some(l) => {
            let (records, puts) = l.await.context("the lease client failed")?;
            operations.extend(puts);
            records
        }
        None => Vec::new(),
    };
    let (mut faults, crashes) = nemesis.await.context("the nemesis failed")?;
    // Everything healed and every member up, then every member's copy of the keys.
    world.heal_all();
    for s in stores.iter() {
        if world.raft(s.id).is_none()
            && let Err(e) = start(&world, s, None).await
        {
            faults.push(step(
                &world,
                "restart",
                "error",
                format!("m{}: {e:#}", s.id),
            ));
        }
    }
    // Every member a voter again (a removed one whose rejoin failed during the run).
    for id in world.ids() {
        if let Err(e) = rejoin(&world, id, Instant::now() + SETTLE).await {
            faults.push(step(&world, "rejoin", "error", format!("m{id}: {e}")));
        }
    }
    // Every lease left to expire, then every member's copy of the keys.
    let lease_leftovers = if lease_records.is_empty() {
        Vec::new()
    } else {
        leases::wait_for_expiry(&world).await
    };
    let replicas = match settle(&world).await {
        Ok(r) => r,
        Err(e) => {
            faults.push(step(&world, "settle", "error", format!("{e:#}")));
            Vec::new()
        }
    };
    // The watchers go on until they have seen the last revision (the replicas' own, or the
    // last acknowledged write's when the members could not agree).
    let last = replicas
        .iter()
        .map(|r| r.revision)
        .chain(
            operations
                .iter()
                .filter_map(|op| op.output.mutated().then(|| op.output.revision()).flatten()),
        )
        .max()
        .unwrap_or(0);
    let _ = last_tx.send(Some((last, Instant::now() + SETTLE)));
    let mut watches = Vec::new();
    for w in watchers {
        watches.push(w.await.context("a watcher failed")?);
    }
    let term = world
        .ids()
        .filter_map(|id| world.raft(id))
        .map(|r| r.metrics().borrow().current_term)
        .max()
        .unwrap_or(0);
    for id in world.ids() {
        if let Some((raft, _)) = world.take_running(id) {
            let _ = raft.shutdown().await;
        }
    }

    operations.sort_by_key(|op: &Operation| (op.complete, op.client));
    let history = History {
        operations,
        watches,
        faults,
        replicas,
        compactions,
        leases: lease_records,
        lease_leftovers,
    };
    let mut digest = std::hash::DefaultHasher::new();
    digest.write_u64(world.digest());
    for op in &history.operations {
        digest.write(serde_json::to_string(op)?.as_bytes());
    }
    for f in &history.faults {
        digest.write(serde_json::to_string(f)?.as_bytes());
    }
    for w in &history.watches {
        digest.write(serde_json::to_string(w)?.as_bytes());
    }
    digest.write(serde_json::to_string(&history.compactions)?.as_bytes());
    digest.write(serde_json::to_string(&history.leases)?.as_bytes());
    digest.write(serde_json::to_string(&history.lease_leftovers)?.as_bytes());
    let checks = crate::check_all(&history, o.check_budget);
    Ok(Outcome {
        seed: o.seed,
        checks,
        digest: digest.finish(),
        net: world.stats(),
        term,
        crashes,
        installs: world.installs(),
        history,
    })
}

fn member(id: NodeId) -> Member {
    // No peer URL: nothing may dial a real connection (a follower's forward or read index
    // fails at once; clients here ask the leader).
    Member {
        name: format!("m{id}"),
        peer_urls: Vec::new(),
    }
}

/// Starts (or restarts) the member whose storage is `s`, as `keelson store` does, with its
/// network in the world; a new cluster's members are initialized with `bootstrap`.
async fn start(
    world: &Arc<World>,
    s: &Store,
    bootstrap: Option<&BTreeMap<NodeId, Member>>,
) -> anyhow::Result<()> {
    let (dir, db) = s.current();
    let log = LogStore::open_inline(&db)?;
    let backend = SledBackend::open(&db, "mvcc")?;
    let snapshots = SnapshotDir::open(&dir.join("snap"))?;
    let shared = Shared::open(Arc::new(backend), snapshots, 1)?;
    shared.run_inline();
    let mut log = ready_log(&shared, log)?;
    let restored = restored_leader(s.id, &mut log).await?;
    // openraft draws each election timeout from its own (unseeded) generator: a range of one
    // value takes the draw out, and the seed picks each member's timeout at each start.
    let timeout = 1000 + world.below(1000) as u64;
    let config = openraft::Config {
        cluster_name: "sim".into(),
        // As `keelson store` runs it, with its default --heartbeat-interval (100 ms).
        heartbeat_interval: rpc_deadline(100, timeout),
        enable_heartbeat: false,
        election_timeout_min: timeout,
        election_timeout_max: timeout + 1,
        // As `keelson store` turns `--snapshot-count` into openraft's settings, with the 300
        // `keelson chaos run` gives its members: a member that lags further, or one added
        // back empty, is sent a snapshot.
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(SNAPSHOT_COUNT),
        max_in_snapshot_log_to_keep: SNAPSHOT_COUNT,
        snapshot_max_chunk_size: 1 << 20,
        install_snapshot_timeout: 5000,
        max_payload_entries: 64,
        ..Default::default()
    }
    .validate()?;
    let network = Network {
        world: world.clone(),
        from: s.id,
        epoch: world.node_epoch(s.id),
    };
    let raft = Raft::new(
        s.id,
        Arc::new(config),
        network,
        log,
        StateMachine::new(shared.clone()),
    )
    .await?;
    if let Some(members) = bootstrap {
        raft.initialize(members.clone()).await?;
    }
    let node = Node::new(
        s.id,
        1,
        raft.clone(),
        shared,
        Peers::new(None).with_answer_gap(Duration::from_millis(timeout)),
        Metrics::new(),
        restored,
    );
    // Both end when the member's Raft stops.
    let never = tokio_util::sync::CancellationToken::new();
    node.send_heartbeats(Duration::from_millis(100), never.clone());
    tokio::spawn(node.clone().monitor_leader(never));
    // The lease expiry loop, until the member crashes.
    let lessor = Lessor::new(s.id);
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(lessor.clone().run(node.clone(), stop.clone()));
    world.note(&[100, s.id]);
    world.set_running(s.id, raft, node, lessor, stop);
    Ok(())
}

/// Stops member `id` at once (a kill -9: what it wrote stays, what it was doing stops).
async fn crash(world: &World, id: NodeId) {
    world.note(&[101, id]);
    if let Some((raft, _)) = world.take_running(id) {
        let _ = raft.shutdown().await;
    }
}

/// Removes member `victim` from the voters (and the cluster) through the leader, as
/// `etcdctl member remove` does: `Ok` once the change committed, else why not (the change
/// may still have committed when no answer came).
async fn remove_member(world: &World, victim: NodeId) -> Result<(), String> {
    let leader = world.leader().ok_or("no leader")?;
    sleep(world.latency(0, leader)).await;
    world.wait_resumed(leader, leader).await;
    let raft = world.raft(leader).ok_or("the leader went down")?;
    let change = openraft::ChangeMembers::RemoveVoters(std::collections::BTreeSet::from([victim]));
    match tokio::time::timeout(CLIENT_TIMEOUT, raft.change_membership(change, false)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no answer".into()),
    }
}

/// Makes member `id` a voter again through the leader, as `member add --learner` and
/// `member promote` do: added as a learner if it is no member, promoted once its log is
/// within 10 entries of the leader's. A joint configuration left by a change whose caller
/// gave up (openraft's caller proposes the second, uniform step) is finished the same way.
/// Tries again until `until`; `Ok` once it is a voter of a uniform configuration.
async fn rejoin(world: &World, id: NodeId, until: Instant) -> Result<(), String> {
    let mut last = String::from("no leader");
    while Instant::now() < until {
        sleep(Duration::from_millis(50)).await;
        let Some(raft) = world.leader().and_then(|l| world.raft(l)) else {
            continue;
        };
        let m = raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let configs = membership.get_joint_config();
        let joint = configs.len() > 1;
        if !joint && configs.iter().all(|c| c.contains(&id)) {
            return Ok(());
        }
        let change = if membership.get_node(&id).is_none() {
            let add = raft.add_learner(id, member(id), false);
            match tokio::time::timeout(CLIENT_TIMEOUT, add).await {
                Ok(r) => r.map(|_| ()),
                Err(_) => {
                    last = "no answer to the learner add".into();
                    continue;
                }
            }
        } else {
            let matched = m
                .replication
                .as_ref()
                .and_then(|r| r.get(&id).cloned().flatten())
                .map_or(0, |l| l.index);
            if !joint && matched + 10 < m.last_log_index.unwrap_or(0) {
                last = format!("m{id} has {matched} of {:?} entries", m.last_log_index);
                continue;
            }
            let voters = std::collections::BTreeSet::from([id]);
            let promote =
                raft.change_membership(openraft::ChangeMembers::AddVoterIds(voters), false);
            match tokio::time::timeout(CLIENT_TIMEOUT, promote).await {
                Ok(r) => r.map(|_| ()),
                Err(_) => {
                    last = "no answer to the promotion".into();
                    continue;
                }
            }
        };
        if let Err(e) = change {
            last = e.to_string();
        }
    }
    Err(last)
}

fn step(world: &World, fault: &str, action: &str, detail: String) -> FaultStep {
    FaultStep {
        fault: fault.into(),
        action: action.into(),
        detail,
        at: world.now(),
    }
}

/// One client: operations until `end`, each sent to the member it takes for the leader.
async fn client(world: Arc<World>, o: Options, id: usize, end: Instant) -> Vec<Operation> {
    let mut chooser = Chooser::new(
        id,
        PREFIX,
        o.keys,
        o.seed.wrapping_mul(1_000_003).wrapping_add(id as u64 + 1),
    );
    let mut target = world.any();
    let mut history = Vec::new();
    while Instant::now() < end {
        sleep(world.millis(0, 20)).await;
        let step = chooser.choose();
        let invoke = world.now();
        let output = perform(&world, &mut target, &step, o.bug, 0).await;
        let complete = world.now();
        world.note(&[200, id as u64, invoke, complete]);
        chooser.record(step, invoke, complete, output, &mut history);
    }
    history
}

/// Runs `step` on the member it should go to, following redirects, within the client timeout;
/// a put is attached to `lease` (0: none).
async fn perform(
    world: &Arc<World>,
    target: &mut NodeId,
    step: &Step,
    bug: Option<Bug>,
    lease: i64,
) -> Output {
    let give_up = Instant::now() + CLIENT_TIMEOUT;
    let get = matches!(step, Step::One(Input::Get { .. }));
    loop {
        let stale_read = get && bug == Some(Bug::StaleReads);
        // Half the reads go to any member: a follower serves them through the leader's read
        // index, as `keelson store`'s followers do.
        if stale_read || (get && world.below(2) == 0) {
            *target = world.any();
        }
        match tokio::time::timeout_at(give_up, ask(world, *target, step, stale_read, lease)).await {
            Err(_) => {
                return Output::Unknown {
                    error: "client timeout".into(),
                };
            }
            Ok(Ok(output)) => return output,
            Ok(Err(hint)) => {
                *target = hint.unwrap_or_else(|| world.any());
                sleep(world.millis(10, 40)).await;
            }
        }
    }
}

/// Sends `step` to member `target` (a put attached to `lease`): its answer, or `Err` with the
/// leader it names when it did not take the step (it does not lead, or it is down).
async fn ask(
    world: &Arc<World>,
    target: NodeId,
    step: &Step,
    stale_read: bool,
    lease: i64,
) -> Result<Output, Option<NodeId>> {
    sleep(world.latency(0, target)).await;
    world.wait_resumed(target, target).await;
    let Some((node, epoch)) = world.node(target) else {
        return Err(None);
    };
    let answered = |answer| answered(world, target, epoch, step, answer);
    let unknown = |e: &dyn std::fmt::Display| {
        Ok(Output::Unknown {
            error: e.to_string(),
        })
    };
    let request = match step {
        Step::One(input) => traffic::request(input, lease),
        Step::Txn(puts) => Request::Txn(traffic::txn_puts(puts)),
    };
    let write = match request {
        Request::Range(r) => {
            if !stale_read {
                if node.is_leader() {
                    if let Err(e) = node.read_barrier().await {
                        return unknown(&e);
                    }
                } else {
                    follower_barrier(world, target, epoch, &node).await?;
                }
            }
            let read = node.shared().mvcc.read().range(&r);
            return match read {
                Ok(r) => answered(Answer::Range(r)).await,
                Err(e) => unknown(&e),
            };
        }
        Request::Put(p) => Rq::Put(p),
        Request::Delete(d) => Rq::DeleteRange(d),
        Request::Txn(t) => Rq::Txn(t),
    };
    let answer = match propose_one(&node, write).await {
        Err(StoreError::NotLeader) => return Err(node.leader()),
        Err(e) => return unknown(&e),
        Ok(Some(Rs::Put(r))) => Answer::Put(r),
        Ok(Some(Rs::DeleteRange(r))) => Answer::Delete(r),
        Ok(Some(Rs::Txn(r))) => Answer::Txn(r),
        Ok(other) => return unknown(&format!("unexpected answer: {other:?}")),
    };
    answered(answer).await
}

/// A follower's linearizable-read barrier, as `keelson store`'s: the read index from the
/// leader it knows (the leader's own [`Node::read_index`], over the simulated network), then
/// its own apply up to that index. `Err` (try elsewhere) without a leader or its answer.
async fn follower_barrier(
    world: &Arc<World>,
    id: NodeId,
    epoch: u64,
    node: &Node,
) -> Result<(), Option<NodeId>> {
    let Some(leader) = node.leader() else {
        return Err(None);
    };
    let index = net::Conn::new(world.clone(), id, leader)
        .read_index(CLIENT_TIMEOUT)
        .await
        .map_err(|_| None)?;
    // Polled, not awaited through openraft's `wait` (see the module's note on `select!`).
    while node.shared().applied.read().0.map(|l| l.index) < index {
        if !world.same_epoch(id, epoch) {
            // It crashed: its connection is gone, and it will not apply again.
            return Err(None);
        }
        sleep(Duration::from_millis(2)).await;
    }
    Ok(())
}

/// The answer on its way back to the client, as the history records it; lost if the member
/// crashed meanwhile (stopped since it had stopped `epoch` times: the connection is gone).
async fn answered(
    world: &World,
    target: NodeId,
    epoch: u64,
    step: &Step,
    answer: Answer,
) -> Result<Output, Option<NodeId>> {
    sleep(world.latency(target, 0)).await;
    world.wait_resumed(target, target).await;
    if !world.same_epoch(target, epoch) {
        return Ok(Output::Unknown {
            error: "connection reset: the member crashed".into(),
        });
    }
    Ok(match (step, traffic::output(answer)) {
        // A txn of puts is recorded as puts.
        (Step::Txn(_), Output::Cas { revision, .. }) => Output::Put { revision },
        (_, out) => out,
    })
}

/// `request` as the leader's side of a forwarded proposal: a member that does not lead refuses
/// it (`NotLeader`), having appended nothing; else its answer.
async fn propose_one(node: &Node, request: Rq) -> Result<Option<Rs>, StoreError> {
    let batch = Batch {
        requests: vec![InternalRequest {
            request: Some(request),
            ..Default::default()
        }],
    };
    let answers = node.propose_forwarded(batch).await?;
    Ok(answers
        .responses
        .into_iter()
        .next()
        .and_then(|r| r.response))
}

/// Compacts to 50 revisions behind the head, every `every` and up to half a second more,
/// until `end`, through the member taken for the leader (a member that does not lead
/// refuses, having appended nothing, and nothing is recorded).
async fn compactor(world: Arc<World>, every: Duration, end: Instant) -> Vec<Compaction> {
    let mut done = Vec::new();
    let mut last = 0;
    loop {
        sleep(every + world.millis(0, 500)).await;
        if Instant::now() >= end {
            return done;
        }
        let Some(leader) = world.leader() else {
            continue;
        };
        sleep(world.latency(0, leader)).await;
        world.wait_resumed(leader, leader).await;
        let Some((node, epoch)) = world.node(leader) else {
            continue;
        };
        let revision = node.shared().mvcc.read().current_revision() - 50;
        if revision <= last {
            continue;
        }
        let at = world.now();
        world.note(&[500, leader, revision as u64]);
        let compact = Rq::Compaction(CompactionRequest {
            revision,
            physical: false,
        });
        let acknowledged =
            match tokio::time::timeout(CLIENT_TIMEOUT, propose_one(&node, compact)).await {
                Ok(Err(StoreError::NotLeader)) => continue,
                Ok(answer) => matches!(answer, Ok(Some(Rs::Compaction(_)))),
                Err(_) => false,
            };
        // The answer on its way back, lost if the member crashed meanwhile.
        sleep(world.latency(leader, 0)).await;
        last = revision;
        done.push(Compaction {
            revision,
            at,
            acknowledged: acknowledged && world.same_epoch(leader, epoch),
        });
    }
}

/// Faults, one at a time, until `end`: what it did and how many crashes.
async fn nemesis(
    world: Arc<World>,
    stores: Arc<Vec<Store>>,
    enabled: bool,
    end: Instant,
) -> (Vec<FaultStep>, usize) {
    let mut steps = Vec::new();
    let mut crashes = 0;
    if !enabled {
        return (steps, crashes);
    }
    let ids: Vec<NodeId> = world.ids().collect();
    loop {
        sleep(world.millis(300, 1500)).await;
        if Instant::now() >= end {
            return (steps, crashes);
        }
        let hold = world.millis(200, 6000);
        let leader = world.leader();
        let victim = match (world.below(2), leader) {
            (0, Some(l)) => l,
            _ => world.any(),
        };
        let others = || ids.iter().copied().filter(move |&id| id != victim);
        let (fault, detail) = match world.below(9) {
            0 => {
                for o in others() {
                    world.set_cut(victim, o, true);
                    world.set_cut(o, victim, true);
                }
                ("partition", format!("m{victim} cut off from the others"))
            }
            1 => {
                // A minority (the victim and maybe one more) against the rest.
                let mut minority = vec![victim];
                if ids.len() >= 5 {
                    minority.extend(others().nth(world.below(ids.len() - 1)));
                }
                for &a in &minority {
                    for &b in ids.iter().filter(|b| !minority.contains(b)) {
                        world.set_cut(a, b, true);
                        world.set_cut(b, a, true);
                    }
                }
                ("split", format!("{minority:?} against the rest"))
            }
            2 => {
                let to = others()
                    .nth(world.below(ids.len().saturating_sub(1)))
                    .unwrap_or(victim);
                world.set_cut(victim, to, true);
                ("one-way", format!("m{victim} to m{to} loses every message"))
            }
            3 => {
                crash(&world, victim).await;
                crashes += 1;
                ("crash", format!("m{victim} killed"))
            }
            7 => {
                // The whole cluster at once (a power loss, but what was written stays).
                for &id in &ids {
                    crash(&world, id).await;
                }
                crashes += ids.len();
                ("crash-all", "every member killed".to_string())
            }
            8 if ids.len() >= 2 => {
                // Removed, its data deleted, started empty; added back when healed.
                match remove_member(&world, victim).await {
                    Ok(()) => {
                        crash(&world, victim).await;
                        crashes += 1;
                        let store = &stores[victim as usize - 1];
                        world.note(&[102, victim]);
                        if let Err(e) = store.wipe() {
                            steps.push(step(&world, "replace", "error", format!("{e:#}")));
                        }
                        if let Err(e) = start(&world, store, None).await {
                            steps.push(step(&world, "replace", "error", format!("{e:#}")));
                        }
                        ("replace", format!("m{victim} removed, started again empty"))
                    }
                    // It may still be removed (or left in a joint configuration): the heal
                    // makes it a voter again either way.
                    Err(e) => (
                        "replace",
                        format!("m{victim} not removed for certain ({e})"),
                    ),
                }
            }
            4 => {
                world.set_paused(victim, true);
                ("stall", format!("m{victim}'s messages held"))
            }
            5 => {
                let delay = world.millis(50, 250);
                world.set_slow(victim, delay);
                ("slow", format!("m{victim}'s messages {delay:?} slower"))
            }
            _ => {
                let loss = 50 + world.below(250);
                world.set_loss(loss);
                ("loss", format!("{loss}/1000 of all messages lost"))
            }
        };
        world.note(&[300, victim]);
        let leading = leader.map_or("no leader".to_string(), |l| format!("m{l} leading"));
        steps.push(step(
            &world,
            fault,
            "inject",
            format!("{detail} for {hold:?} ({leading})"),
        ));
        sleep(hold).await;
        world.heal_all();
        let mut healed = detail;
        let crashed: Vec<NodeId> = match fault {
            "crash" => vec![victim],
            "crash-all" => ids.clone(),
            _ => Vec::new(),
        };
        let mut failed = false;
        for &id in &crashed {
            if let Err(e) = start(&world, &stores[id as usize - 1], None).await {
                steps.push(step(&world, fault, "error", format!("m{id}: {e:#}")));
                failed = true;
            }
        }
        if failed {
            continue;
        }
        match fault {
            "crash" => healed = format!("m{victim} restarted"),
            "crash-all" => healed = "every member restarted".into(),
            "replace" => match rejoin(&world, victim, Instant::now() + SETTLE).await {
                Ok(()) => healed = format!("m{victim} a voter again"),
                Err(e) => {
                    steps.push(step(&world, fault, "error", format!("m{victim}: {e}")));
                    continue;
                }
            },
            _ => {}
        }
        steps.push(step(&world, fault, "heal", healed));
    }
}

/// Waits for a leader that can serve a linearizable read, then for every member to apply
/// what it has, and reads every member's copy of the keys at the leader's revision.
async fn settle(world: &World) -> anyhow::Result<Vec<ReplicaRead>> {
    let until = Instant::now() + SETTLE;
    let leader = loop {
        if let Some((node, _)) = world.leader().and_then(|id| world.node(id))
            && node.read_barrier().await.is_ok()
        {
            break node;
        }
        anyhow::ensure!(
            Instant::now() < until,
            "no leader could serve a read {SETTLE:?} after the faults ended"
        );
        sleep(Duration::from_millis(100)).await;
    };
    // Read together: the state machine applies an entry before openraft's metrics show it.
    let (applied, revision) = {
        let mvcc = leader.shared().mvcc.read();
        let applied = leader.shared().applied.read().0.map(|l| l.index);
        (applied, mvcc.current_revision())
    };
    let mut reads = Vec::new();
    for id in world.ids() {
        let name = format!("m{id}");
        // Polled, not awaited through openraft's `wait` (its timeout races the change in an
        // unseeded `select!`).
        let node = loop {
            let Some((node, _)) = world.node(id) else {
                anyhow::bail!("{name} is not running");
            };
            if node.shared().applied.read().0.map(|l| l.index) >= applied {
                break node;
            }
            anyhow::ensure!(
                Instant::now() < until,
                "{name} did not catch up with the leader's applied index {applied:?}"
            );
            sleep(Duration::from_millis(10)).await;
        };
        let read = node
            .shared()
            .mvcc
            .read()
            .range(&replicas::local_read(PREFIX, revision));
        reads.push(match read {
            Ok(r) => replicas::copy(&name, revision, r),
            Err(e) => ReplicaRead {
                member: name,
                revision,
                kvs: Vec::new(),
                error: Some(e.to_string()),
            },
        });
    }
    Ok(reads)
}

#[cfg(test)]
mod tests;
