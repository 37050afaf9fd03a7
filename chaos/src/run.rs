//! `keelson chaos run`, `sweep` and `check`: start a cluster, run traffic while faults come and
//! go, heal, let every watcher catch up, read every key, then check the history and write the run
//! directory (history as JSON lines, the fault timeline, `report.md`).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio_util::sync::CancellationToken;

use crate::cluster::{Cluster, Setup, Target};
use crate::faults::{self, Fault, Heal};
use crate::history::{FaultStep, History, Input, LeaseLeftover, Operation};
use crate::traffic::{self, Clock, Kv, Load, WatchEnd};
use crate::{Check, Verdict, check_all};
use keelson_client::duration::parse_go_duration;
use keelson_etcdpb::etcdserverpb::{RangeRequest, kv_client::KvClient};

/// Flags shared by `run` and `sweep`.
#[derive(clap::Args, Debug, Clone)]
pub struct Options {
    /// What runs the store: keelson (`keelson store`) or etcd (the control).
    #[arg(long, value_enum, default_value = "keelson")]
    pub target: TargetKind,
    /// The keelson binary (default: this one).
    #[arg(long)]
    pub keelson: Option<PathBuf>,
    /// The etcd binary for `--target etcd`.
    #[arg(long, default_value = "etcd")]
    pub etcd: PathBuf,
    /// Members of the cluster.
    #[arg(long, default_value_t = 3)]
    pub members: usize,
    /// How long traffic runs (faults come and go meanwhile).
    #[arg(long, default_value = "10s", value_parser = parse_go_duration)]
    pub duration: Duration,
    /// Concurrent KV clients.
    #[arg(long, default_value_t = 6)]
    pub clients: usize,
    /// Keys the clients share.
    #[arg(long, default_value_t = 8)]
    pub keys: usize,
    /// Operations per second over all clients.
    #[arg(long, default_value_t = 150.0)]
    pub qps: f64,
    /// Watchers on the key prefix.
    #[arg(long, default_value_t = 3)]
    pub watchers: usize,
    /// Each watcher asks for a progress notification this often (etcd's `ProgressRequest`);
    /// 0 turns them off.
    #[arg(long, default_value = "500ms", value_parser = parse_go_duration)]
    pub progress_interval: Duration,
    /// A call without an answer within this is recorded as an unknown outcome.
    #[arg(long, default_value = "2s", value_parser = parse_go_duration)]
    pub op_timeout: Duration,
    /// Compact (to 50 revisions behind the head) this often; 0 turns compaction off.
    #[arg(long, default_value = "2s", value_parser = parse_go_duration)]
    pub compact_interval: Duration,
    /// Healthy time before each fault.
    #[arg(long, default_value = "1s", value_parser = parse_go_duration)]
    pub fault_interval: Duration,
    /// How long a fault lasts before it is healed.
    #[arg(long, default_value = "1500ms", value_parser = parse_go_duration)]
    pub fault_hold: Duration,
    /// Time the checkers may spend.
    #[arg(long, default_value = "60s", value_parser = parse_go_duration)]
    pub check_budget: Duration,
    /// How often a progress line goes to stderr (0: never).
    #[arg(long, default_value = "10s", value_parser = parse_go_duration)]
    pub progress_every: Duration,
    /// The failpoints the `failpoint` fault takes in turn, comma-separated (default: every
    /// one it knows).
    #[arg(long, value_delimiter = ',')]
    pub failpoints: Vec<String>,
}

/// `--target`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TargetKind {
    /// keelson-store.
    Keelson,
    /// A real etcd.
    Etcd,
}

/// How a run came out.
pub struct Outcome {
    /// Where its history and report are.
    pub dir: PathBuf,
    /// The checkers' results.
    pub checks: Vec<Check>,
    /// Operations recorded, and how many of them got no answer.
    pub operations: usize,
    /// Operations without an answer.
    pub unknown: usize,
    /// Watch events recorded.
    pub events: usize,
    /// Faults injected.
    pub faults: usize,
}

impl Outcome {
    /// The worst verdict.
    pub fn verdict(&self) -> Verdict {
        worst(&self.checks)
    }
}

/// The worst verdict of `checks`: a violation, else an undecided check, else ok.
pub fn worst(checks: &[Check]) -> Verdict {
    if checks.iter().any(|c| c.verdict == Verdict::Violation) {
        Verdict::Violation
    } else if checks.iter().any(|c| c.verdict == Verdict::Unknown) {
        Verdict::Unknown
    } else {
        Verdict::Ok
    }
}

fn target(o: &Options) -> anyhow::Result<Target> {
    Ok(match o.target {
        TargetKind::Keelson => Target::Keelson(match &o.keelson {
            Some(p) => p.clone(),
            None => std::env::current_exe().context("finding the keelson binary")?,
        }),
        TargetKind::Etcd => Target::Etcd(o.etcd.clone()),
    })
}

/// Runs traffic with `faults` (cycled through, one at a time) and checks the history; the run
/// directory is `dir`.
pub async fn run(o: &Options, faults: &[Fault], dir: &Path) -> anyhow::Result<Outcome> {
    if o.members == 0 || o.clients == 0 || o.keys == 0 || o.qps <= 0.0 {
        bail!("--members, --clients, --keys and --qps must be positive");
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let target = target(o)?;
    let known: Vec<&str> = faults::FAILPOINTS.iter().map(|(n, _)| *n).collect();
    if let Some(bad) = o.failpoints.iter().find(|p| !known.contains(&p.as_str())) {
        bail!(
            "--failpoints: no failpoint {bad:?} (known: {})",
            known.join(", ")
        );
    }
    let data = dir.join("members");
    let network = faults.iter().any(|f| f.needs_network());
    let setup = Setup {
        network,
        failpoints: faults.contains(&Fault::Failpoint),
        lazy_disks: faults.contains(&Fault::LoseUnsynced),
        clocks: faults.contains(&Fault::ClockJump),
        delays: faults.contains(&Fault::Delay) && !network,
    };
    let mut cluster = Cluster::start(target.clone(), o.members, &data, setup)?;
    cluster.failpoints = if o.failpoints.is_empty() {
        known.iter().map(|n| n.to_string()).collect()
    } else {
        o.failpoints.clone()
    };
    cluster.wait_healthy(Duration::from_secs(30)).await?;
    let endpoints = Arc::new(cluster.endpoints());
    let load = Load {
        prefix: traffic::PREFIX.into(),
        keys: o.keys,
        qps: o.qps,
        timeout: o.op_timeout,
        done: Arc::default(),
    };
    let clock = Clock::start();
    let stop = CancellationToken::new();
    let (final_tx, final_rx) = tokio::sync::watch::channel(None);
    let abort = CancellationToken::new();

    let watchers: Vec<_> = (0..o.watchers)
        .map(|i| {
            tokio::spawn(traffic::watcher(
                i,
                endpoints.clone(),
                load.prefix.clone(),
                1,
                o.progress_interval,
                clock,
                WatchEnd {
                    revision: final_rx.clone(),
                    abort: abort.clone(),
                },
            ))
        })
        .collect();
    let clients: Vec<_> = (0..o.clients)
        .map(|i| {
            tokio::spawn(traffic::client(
                i,
                o.clients,
                endpoints.clone(),
                load.clone(),
                clock,
                stop.clone(),
            ))
        })
        .collect();
    let leases = tokio::spawn(traffic::leases(
        o.clients + 1,
        endpoints.clone(),
        format!("{}lease/", load.prefix),
        LEASE_TTL,
        Duration::from_millis(400),
        o.op_timeout,
        clock,
        stop.clone(),
    ));
    let compactor = (!o.compact_interval.is_zero()).then(|| {
        tokio::spawn(traffic::compactor(
            endpoints.clone(),
            o.compact_interval,
            50,
            clock,
            stop.clone(),
        ))
    });

    // Whatever happens from here on, the traffic and the watchers stop with this function.
    let _stop_traffic = stop.clone().drop_guard();
    let _stop_watchers = abort.clone().drop_guard();
    let injected = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    if !o.progress_every.is_zero() {
        tokio::spawn(progress(
            format!("{} {}", target.name(), fault_names(faults)),
            o.duration,
            o.progress_every,
            load.done.clone(),
            injected.clone(),
            clock,
            stop.clone(),
        ));
    }

    // Faults, one at a time, until the traffic's time is up. A fault that cannot be injected or
    // healed ends the schedule and is reported (the "recovery" check), never losing the history.
    let mut timeline = Vec::new();
    let end = tokio::time::Instant::now() + o.duration;
    let mut next = 0;
    while !faults.is_empty() && tokio::time::Instant::now() + o.fault_interval < end {
        if crate::interrupt::sleep(o.fault_interval).await {
            break;
        }
        unexpected_exits(&mut cluster, &mut timeline, clock);
        let fault = faults[next % faults.len()];
        next += 1;
        let heal = match faults::inject(fault, &mut cluster).await {
            Ok((detail, heal)) => {
                tracing::info!(fault = fault.name(), %detail, "injected");
                injected.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                timeline.push(step(fault.name(), "inject", detail, clock));
                heal
            }
            Err(e) => {
                timeline.push(step(fault.name(), "error", format!("{e:#}"), clock));
                restore_all(&mut cluster, &mut timeline, clock);
                break;
            }
        };
        crate::interrupt::sleep_until(end.min(tokio::time::Instant::now() + o.fault_hold)).await;
        match faults::heal(&heal, &mut cluster).await {
            Ok(_) if matches!(heal, Heal::Nothing) => {}
            Ok(detail) => timeline.push(step(fault.name(), "heal", detail, clock)),
            Err(e) => {
                timeline.push(step(fault.name(), "error", format!("{e:#}"), clock));
                restore_all(&mut cluster, &mut timeline, clock);
                break;
            }
        }
    }
    if crate::interrupt::sleep_until(end).await {
        timeline.push(step(
            "end",
            "interrupted",
            "Ctrl-C: the run ended early".into(),
            clock,
        ));
    }
    stop.cancel();

    let mut history = History {
        faults: timeline,
        ..History::default()
    };
    for c in clients {
        history.operations.extend(c.await??);
    }
    if let Some(c) = compactor {
        history.compactions = c.await?;
    }
    let (records, puts) = leases.await?;
    history.leases = records;
    history.operations.extend(puts);
    // Every member back; every lease left to expire; then one last write for the watchers to
    // reach (after the expiries) and a read of every key.
    unexpected_exits(&mut cluster, &mut history.faults, clock);
    match cluster.wait_healthy(Duration::from_secs(30)).await {
        Ok(()) => {
            history.lease_leftovers =
                wait_for_expiry(&cluster, &format!("{}lease/", load.prefix)).await?;
        }
        Err(e) => history.faults.push(step(
            "recovery",
            "error",
            format!("after the faults: {e:#}"),
            clock,
        )),
    }
    let mut kv = Kv::new(&endpoints, 0, Duration::from_secs(10))?;
    let last_client = o.clients;
    let record = |input: Input, output, invoke| Operation {
        client: last_client,
        txn: None,
        invoke,
        complete: clock.now(),
        input,
        output,
    };
    let input = Input::Put {
        key: format!("{}end", load.prefix),
        value: "end".into(),
    };
    let invoke = clock.now();
    let output = kv.run(&input).await;
    let end_revision = output.revision();
    history.operations.push(record(input, output, invoke));
    for k in 0..o.keys {
        let input = Input::Get {
            key: format!("{}k{k}", load.prefix),
        };
        let invoke = clock.now();
        let output = kv.run(&input).await;
        history.operations.push(record(input, output, invoke));
    }
    let _ = final_tx.send(Some(end_revision.unwrap_or(i64::MAX)));
    let catch_up = tokio::spawn({
        let abort = abort.clone();
        async move {
            tokio::time::sleep(Duration::from_secs(15)).await;
            abort.cancel();
        }
    });
    for w in watchers {
        history.watches.push(w.await?);
    }
    catch_up.abort();
    history.replicas = crate::replicas::read(
        &cluster,
        &load.prefix,
        end_revision,
        Duration::from_secs(15),
    )
    .await;
    drop(cluster);
    history.save(dir)?;

    let checks = check_all(&history, o.check_budget);
    let outcome = Outcome {
        dir: dir.to_path_buf(),
        operations: history.operations.len(),
        unknown: history
            .operations
            .iter()
            .filter(|op| op.output.revision().is_none())
            .count(),
        events: checks
            .iter()
            .find(|c| c.name == "watch")
            .map(|c| c.checked)
            .unwrap_or(0),
        faults: history
            .faults
            .iter()
            .filter(|f| f.action == "inject")
            .count(),
        checks,
    };
    std::fs::write(dir.join("report.md"), report(o, faults, &history, &outcome))?;
    std::fs::write(dir.join("history.svg"), crate::plot::svg(&history))?;
    Ok(outcome)
}

/// The faults' names, comma-separated.
fn fault_names(faults: &[Fault]) -> String {
    faults
        .iter()
        .map(|f| f.name())
        .collect::<Vec<_>>()
        .join(",")
}

/// Prints a progress line to stderr every `every` until `stop`: time, operations, faults.
async fn progress(
    what: String,
    duration: Duration,
    every: Duration,
    done: Arc<traffic::Done>,
    injected: Arc<std::sync::atomic::AtomicUsize>,
    clock: Clock,
    stop: CancellationToken,
) {
    use std::sync::atomic::Ordering::Relaxed;
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        eprintln!(
            "chaos {what}: {:.0} s of {:.0} s, {} operations answered, {} unanswered, {} faults",
            clock.now() as f64 / 1e9,
            duration.as_secs_f64(),
            done.answered.load(Relaxed),
            done.unanswered.load(Relaxed),
            injected.load(Relaxed)
        );
    }
}

/// The TTL of the run's leases, in seconds (etcd's minimum with its default election timeout).
const LEASE_TTL: i64 = 2;

/// Waits until no member holds a key under `prefix` (every lease has expired), reading each
/// member on its own; gives up after the TTL three times over plus 10 s (a new leader extends the
/// leases it inherits) and returns what each member still held then.
async fn wait_for_expiry(cluster: &Cluster, prefix: &str) -> anyhow::Result<Vec<LeaseLeftover>> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3 * LEASE_TTL as u64 + 10);
    loop {
        let mut left = Vec::new();
        let mut unread = false;
        for i in cluster.live() {
            let m = &cluster.members[i];
            let ch = crate::cluster::channel(&m.client, Some(Duration::from_secs(2)))?;
            let kvs = match KvClient::new(ch)
                .range(RangeRequest {
                    key: prefix.as_bytes().to_vec(),
                    range_end: keelson_etcdpb::prefix_end(prefix.as_bytes()),
                    serializable: true,
                    keys_only: true,
                    ..Default::default()
                })
                .await
            {
                Ok(r) => r.into_inner().kvs,
                // A member that cannot be read now is read again on the next round.
                Err(_) => {
                    unread = true;
                    continue;
                }
            };
            left.push(LeaseLeftover::new(m.name.clone(), &kvs));
        }
        if (!unread && left.iter().all(|l| l.keys.is_empty()))
            || tokio::time::Instant::now() > deadline
        {
            return Ok(left.into_iter().filter(|l| !l.keys.is_empty()).collect());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A member that exited with no fault on it (a crash of the store, or of the harness) is an
/// error of the run ("recovery"): it is started again, and the schedule goes on.
fn unexpected_exits(cluster: &mut Cluster, timeline: &mut Vec<FaultStep>, clock: Clock) {
    let found = cluster.restart_exited();
    if !found.is_empty() {
        tracing::warn!(found = %found.join("; "), "members had exited with no fault on them");
        timeline.push(step("recovery", "error", found.join("; "), clock));
    }
}

/// [`Cluster::restore_all`], with the members it found exited in the timeline.
fn restore_all(cluster: &mut Cluster, timeline: &mut Vec<FaultStep>, clock: Clock) {
    let found = cluster.restore_all();
    if !found.is_empty() {
        timeline.push(step("recovery", "restore", found.join("; "), clock));
    }
}

fn step(fault: &str, action: &str, detail: String, clock: Clock) -> FaultStep {
    FaultStep {
        fault: fault.into(),
        action: action.into(),
        detail,
        at: clock.now(),
    }
}

/// `report.md` of a run.
fn report(o: &Options, faults: &[Fault], history: &History, outcome: &Outcome) -> String {
    let mut r = String::new();
    let _ = writeln!(
        r,
        "# chaos run: {:?}, faults {}\n",
        o.target,
        fault_names(faults)
    );
    let _ = writeln!(
        r,
        "{} members, {} clients on {} keys at {} ops/s for {:?}, {} watchers, compaction every {:?}.\n",
        o.members, o.clients, o.keys, o.qps, o.duration, o.watchers, o.compact_interval
    );
    let _ = writeln!(
        r,
        "{} operations ({} without an answer), {} watch events, {} compactions, {} leases, {} faults.\n",
        outcome.operations,
        outcome.unknown,
        outcome.events,
        history.compactions.len(),
        history.leases.len(),
        outcome.faults
    );
    let _ = writeln!(r, "![latency, throughput and faults](history.svg)\n");
    verdicts_and_timeline(&mut r, &outcome.checks, &history.faults);
    r
}

/// The verdicts and the fault timeline, the end of a run's `report.md`.
pub(crate) fn verdicts_and_timeline(r: &mut String, checks: &[Check], faults: &[FaultStep]) {
    let _ = writeln!(r, "## Verdicts\n");
    for c in checks {
        let _ = writeln!(
            r,
            "- **{}**: {:?} ({} checked)",
            c.name, c.verdict, c.checked
        );
        for d in &c.details {
            let _ = writeln!(r, "    {d}");
        }
    }
    let _ = writeln!(r, "\n## Fault timeline\n");
    for f in faults {
        let _ = writeln!(
            r,
            "- {:8.3} s {} {}: {}",
            f.at as f64 / 1e9,
            f.fault,
            f.action,
            f.detail
        );
    }
}

/// Checks a recorded run directory again.
pub fn check_dir(dir: &Path, budget: Duration) -> anyhow::Result<Vec<Check>> {
    let history = History::load(dir)?;
    Ok(check_all(&history, budget))
}

/// One line per checker.
pub fn summary(checks: &[Check]) -> String {
    checks
        .iter()
        .map(|c| format!("{} {:?} ({} checked)", c.name, c.verdict, c.checked))
        .collect::<Vec<_>>()
        .join("; ")
}

/// `keelson chaos ...`.
#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Traffic against a fresh cluster while faults come and go, then the checkers.
    Run(RunArgs),
    /// Every fault class alone, one run each (on each target), and a summary table.
    Sweep(SweepArgs),
    /// Check a recorded run directory again (a store run or a control-plane run).
    Check(CheckArgs),
    /// A `keelson up` cluster under a workload while its components are killed and paused;
    /// then nothing acknowledged lost, no pod bound twice, everything converged.
    ControlPlane(crate::control::ControlArgs),
    /// Deterministic simulation: keelson-store's Raft and MVCC code in one process on a
    /// simulated clock and network, with faults drawn from a seed (a seed replays exactly).
    Sim(SimArgs),
}

/// Flags of `keelson chaos sim`.
#[derive(clap::Args, Debug)]
pub struct SimArgs {
    /// The first seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// How many seeds to run, from `--seed` on.
    #[arg(long, default_value_t = 1)]
    seeds: u64,
    /// Simulated time the clients run for, per seed.
    #[arg(long, default_value = "20s", value_parser = parse_go_duration)]
    duration: Duration,
    /// Members of the simulated cluster (1 to 7).
    #[arg(long, default_value_t = 3)]
    members: usize,
    /// Concurrent clients.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Keys the clients share.
    #[arg(long, default_value_t = 6)]
    keys: usize,
    /// Watchers on the clients' keys (each held across faults, opened again elsewhere when
    /// its member goes).
    #[arg(long, default_value_t = 2)]
    watchers: usize,
    /// Compact (to 50 revisions behind the head, through the leader) this often, in simulated
    /// time; 0 turns compaction off.
    #[arg(long, default_value = "2s", value_parser = parse_go_duration)]
    compact_interval: Duration,
    /// Run without the lease client (leases granted with a key on each, some kept alive, all
    /// left to expire).
    #[arg(long)]
    no_leases: bool,
    /// Run without faults.
    #[arg(long)]
    no_faults: bool,
    /// Plant a known bug, to see the checkers catch it.
    #[arg(long, value_enum)]
    bug: Option<crate::sim::Bug>,
    /// Run every seed twice and fail if the two runs differ in anything.
    #[arg(long)]
    replay_check: bool,
    /// Time the checkers may spend per seed.
    #[arg(long, default_value = "30s", value_parser = parse_go_duration)]
    check_budget: Duration,
    /// Where the histories of seeds that fail go (default: chaos-runs/sim-<time>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Keep the members' logs (openraft's and the store's), which faults make plentiful.
    #[arg(long)]
    logs: bool,
}

/// Flags of `keelson chaos run`.
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    options: Options,
    /// Fault classes, cycled through one at a time (default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    faults: Vec<Fault>,
    /// The run directory (default: chaos-runs/<target>-<time>).
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Flags of `keelson chaos sweep`.
#[derive(clap::Args, Debug)]
pub struct SweepArgs {
    #[command(flatten)]
    options: Options,
    /// Targets to sweep (the etcd run is the control: it should pass too).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "keelson")]
    targets: Vec<TargetKind>,
    /// Fault classes (default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    faults: Vec<Fault>,
    /// Where the runs go (default: chaos-runs/sweep-<time>).
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Flags of `keelson chaos check`.
#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    /// A run directory.
    dir: PathBuf,
    /// Time the checkers may spend.
    #[arg(long, default_value = "60s", value_parser = parse_go_duration)]
    check_budget: Duration,
}

fn default_dir(what: &str) -> PathBuf {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    PathBuf::from("chaos-runs").join(format!("{what}-{secs}"))
}

fn faults_or_all(f: &[Fault]) -> Vec<Fault> {
    if f.is_empty() {
        Fault::ALL.to_vec()
    } else {
        f.to_vec()
    }
}

fn verdict_error(what: &str, v: Verdict) -> anyhow::Result<()> {
    match v {
        Verdict::Ok => Ok(()),
        Verdict::Violation => bail!("{what}: a checker found a violation"),
        Verdict::Unknown => bail!("{what}: a checker could not decide within its budget"),
    }
}

/// Runs a `keelson chaos` command.
pub async fn main(command: Command) -> anyhow::Result<()> {
    crate::interrupt::install();
    match command {
        Command::Run(a) => {
            let dir = a
                .out
                .unwrap_or_else(|| default_dir(&format!("{:?}", a.options.target).to_lowercase()));
            let faults = faults_or_all(&a.faults);
            let o = run(&a.options, &faults, &dir).await?;
            println!(
                "{} operations ({} unknown), {} watch events, {} faults: {}",
                o.operations,
                o.unknown,
                o.events,
                o.faults,
                summary(&o.checks)
            );
            println!("report: {}", dir.join("report.md").display());
            verdict_error("chaos run", o.verdict())
        }
        Command::Sweep(a) => {
            let dir = a.out.unwrap_or_else(|| default_dir("sweep"));
            let mut table = String::from(
                "| target | fault | operations | unknown | watch events | faults | verdict |\n|---|---|---|---|---|---|---|\n",
            );
            let mut worst = Verdict::Ok;
            for &t in &a.targets {
                for fault in faults_or_all(&a.faults) {
                    if crate::interrupt::requested() {
                        break;
                    }
                    let o = Options {
                        target: t,
                        ..a.options.clone()
                    };
                    let name = format!("{:?}-{}", t, fault.name()).to_lowercase();
                    let out = run(&o, &[fault], &dir.join(&name)).await?;
                    let v = out.verdict();
                    println!(
                        "{name}: {} operations ({} unknown), {} events, {} faults: {}",
                        out.operations,
                        out.unknown,
                        out.events,
                        out.faults,
                        summary(&out.checks)
                    );
                    let _ = writeln!(
                        table,
                        "| {:?} | {} | {} | {} | {} | {} | {:?} |",
                        t,
                        fault.name(),
                        out.operations,
                        out.unknown,
                        out.events,
                        out.faults,
                        v
                    );
                    if v != Verdict::Ok && worst != Verdict::Violation {
                        worst = v;
                    }
                }
            }
            std::fs::write(dir.join("summary.md"), &table)?;
            print!("{table}");
            verdict_error("chaos sweep", worst)
        }
        Command::Sim(a) => {
            // The simulation runs its own runtime on a thread of its own.
            std::thread::spawn(move || {
                if a.logs {
                    sim(a)
                } else {
                    let quiet = tracing::subscriber::NoSubscriber::default();
                    tracing::subscriber::with_default(quiet, || sim(a))
                }
            })
            .join()
            .map_err(|_| anyhow::anyhow!("the simulation panicked"))?
        }
        Command::Check(a) => {
            let checks = if crate::control::history::ControlHistory::is_in(&a.dir) {
                crate::control::check_dir(&a.dir)?
            } else {
                check_dir(&a.dir, a.check_budget)?
            };
            for c in &checks {
                println!("{}: {:?} ({} checked)", c.name, c.verdict, c.checked);
                for d in &c.details {
                    println!("    {d}");
                }
            }
            verdict_error("chaos check", worst(&checks))
        }
        Command::ControlPlane(a) => {
            let dir = a
                .out
                .clone()
                .unwrap_or_else(|| default_dir("control-plane"));
            let o = crate::control::run(&a, &dir).await?;
            println!(
                "{} writes ({} unknown), {} pods, {} faults: {}",
                o.writes,
                o.unknown,
                o.pods,
                o.faults,
                summary(&o.checks)
            );
            println!("report: {}", dir.join("report.md").display());
            verdict_error("chaos control-plane", worst(&o.checks))
        }
    }
}

/// `keelson chaos sim`: each seed in turn; a failing seed's history is saved (for `keelson
/// chaos check`) with the command that replays it.
fn sim(a: SimArgs) -> anyhow::Result<()> {
    let out = a.out.unwrap_or_else(|| default_dir("sim"));
    let scratch = crate::sim::scratch_dir();
    let mut worst_seen = Verdict::Ok;
    let mut failed = Vec::new();
    for seed in a.seed..a.seed.saturating_add(a.seeds) {
        if crate::interrupt::requested() {
            println!("interrupted before seed {seed}");
            break;
        }
        let options = crate::sim::Options {
            seed,
            duration: a.duration,
            members: a.members,
            clients: a.clients,
            keys: a.keys,
            watchers: a.watchers,
            compact_interval: a.compact_interval,
            leases: !a.no_leases,
            faults: !a.no_faults,
            bug: a.bug,
            check_budget: a.check_budget,
        };
        let once = || -> anyhow::Result<crate::sim::Outcome> {
            let dir = tempfile::Builder::new()
                .prefix("keelson-sim")
                .tempdir_in(&scratch)
                .with_context(|| format!("a scratch directory in {}", scratch.display()))?;
            crate::sim::run(&options, dir.path())
        };
        let outcome = once()?;
        println!("{}", outcome.summary());
        let mut verdict = outcome.verdict();
        if a.replay_check {
            let again = once()?;
            if again.digest != outcome.digest
                || again.history.operations != outcome.history.operations
                || again.history.watches != outcome.history.watches
            {
                println!(
                    "seed {seed}: the replay differs (digest {:016x} against {:016x})",
                    again.digest, outcome.digest
                );
                verdict = Verdict::Violation;
            }
        }
        if verdict != Verdict::Ok {
            let dir = out.join(format!("seed-{seed}"));
            outcome.history.save(&dir)?;
            for c in outcome.checks.iter().filter(|c| c.verdict != Verdict::Ok) {
                for d in c.details.iter().take(20) {
                    println!("    {}: {d}", c.name);
                }
            }
            let bug = a
                .bug
                .and_then(|b| clap::ValueEnum::to_possible_value(&b))
                .map(|v| format!(" --bug {}", v.get_name()))
                .unwrap_or_default();
            println!(
                "    history: {}; replay: keelson chaos sim --seed {seed} --duration {:?} \
                 --members {} --clients {} --keys {} --watchers {} --check-budget {:?}{}{bug}",
                dir.display(),
                a.duration,
                a.members,
                a.clients,
                a.keys,
                a.watchers,
                a.check_budget,
                if a.no_faults { " --no-faults" } else { "" },
            );
            failed.push(seed);
            if verdict == Verdict::Violation || worst_seen == Verdict::Ok {
                worst_seen = verdict;
            }
        }
    }
    if !failed.is_empty() {
        println!("failing seeds: {failed:?}");
    }
    verdict_error("chaos sim", worst_seen)
}
