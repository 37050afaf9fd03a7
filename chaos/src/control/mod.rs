//! `keelson chaos control-plane`: a `keelson up` cluster (store members, apiservers, HA pairs of
//! controller-managers and schedulers, hollow nodes) under a workload of Deployments scaled and
//! rolled out and ConfigMaps written, while its components are killed and paused; then the
//! checks that nothing acknowledged was lost, no pod was bound twice, and the cluster converged
//! (every component back, one leader per pair, every Deployment at its replicas with only
//! up-to-date pods, running and ready).

pub mod check;
pub mod cluster;
pub mod faults;
pub mod history;
pub mod workload;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio_util::sync::CancellationToken;

use crate::Check;
use crate::history::FaultStep;
use crate::traffic::Clock;
use cluster::UpCluster;
use faults::{ControlFault, Injected};
use history::{ControlHistory, Outcome};
use keelson_client::duration::parse_go_duration;
use workload::{Counts, Workload};

/// Flags of `keelson chaos control-plane`.
#[derive(clap::Args, Debug, Clone)]
pub struct ControlArgs {
    /// The keelson binary (default: this one).
    #[arg(long)]
    pub keelson: Option<PathBuf>,
    /// Run the store members with this etcd-compatible binary (`keelson up --store-binary`),
    /// e.g. `/usr/bin/etcd` as the control.
    #[arg(long)]
    pub store_binary: Option<PathBuf>,
    /// Hollow nodes the pods run on.
    #[arg(long, default_value_t = 3)]
    pub hollow_nodes: usize,
    /// Deployments of the workload.
    #[arg(long, default_value_t = 3)]
    pub deployments: usize,
    /// A scale picks the replicas from 0 to this.
    #[arg(long, default_value_t = 5)]
    pub max_replicas: u32,
    /// One Deployment after another is scaled (or, one time in four, rolled out) this often.
    #[arg(long, default_value = "2s", value_parser = parse_go_duration)]
    pub scale_every: Duration,
    /// ConfigMap writers.
    #[arg(long, default_value_t = 2)]
    pub writers: usize,
    /// ConfigMaps per writer.
    #[arg(long, default_value_t = 8)]
    pub configmaps: usize,
    /// ConfigMap writes per second over all writers.
    #[arg(long, default_value_t = 10.0)]
    pub qps: f64,
    /// A write without an answer within this has an unknown outcome.
    #[arg(long, default_value = "10s", value_parser = parse_go_duration)]
    pub op_timeout: Duration,
    /// How long the workload runs (faults come and go meanwhile).
    #[arg(long, default_value = "2m", value_parser = parse_go_duration)]
    pub duration: Duration,
    /// Fault classes, cycled through one at a time (default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub faults: Vec<ControlFault>,
    /// Time between faults (a killed component is restarted by `keelson up` meanwhile).
    #[arg(long, default_value = "5s", value_parser = parse_go_duration)]
    pub fault_interval: Duration,
    /// How long a pause lasts: longer than the 15 s leader Lease, so the other member of the
    /// pair takes over and the paused one, once resumed, has to stop acting.
    #[arg(long, default_value = "20s", value_parser = parse_go_duration)]
    pub pause_hold: Duration,
    /// Time allowed to converge, before the faults and after them.
    #[arg(long, default_value = "3m", value_parser = parse_go_duration)]
    pub converge_timeout: Duration,
    /// How often a progress line goes to stderr (0: never).
    #[arg(long, default_value = "10s", value_parser = parse_go_duration)]
    pub progress_every: Duration,
    /// The run directory (default: chaos-runs/control-plane-<time>); the cluster's data and
    /// logs are kept in its `cluster/`.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// How a control-plane run came out.
pub struct ControlOutcome {
    /// The checkers' results.
    pub checks: Vec<Check>,
    /// Writes made.
    pub writes: usize,
    /// Of which had an unknown outcome.
    pub unknown: usize,
    /// Faults injected.
    pub faults: usize,
    /// Pods the watch saw.
    pub pods: usize,
}

fn step(fault: &str, action: &str, detail: String, clock: Clock) -> FaultStep {
    FaultStep {
        fault: fault.into(),
        action: action.into(),
        detail,
        at: clock.now(),
    }
}

/// Runs the workload on a new cluster while `faults` come and go, then checks; `dir` is the
/// run directory.
pub async fn run(a: &ControlArgs, dir: &Path) -> anyhow::Result<ControlOutcome> {
    if a.deployments == 0
        || a.writers == 0
        || a.configmaps == 0
        || a.qps <= 0.0
        || !a.qps.is_finite()
    {
        bail!("--deployments, --writers, --configmaps and --qps must be positive (and finite)");
    }
    if a.hollow_nodes == 0 {
        bail!("--hollow-nodes must be at least 1: the pods need somewhere to run");
    }
    if a.scale_every.is_zero() || a.fault_interval.is_zero() {
        bail!("--scale-every and --fault-interval must be positive");
    }
    let faults = if a.faults.is_empty() {
        ControlFault::ALL.to_vec()
    } else {
        a.faults.clone()
    };
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let keelson = match &a.keelson {
        Some(p) => p.clone(),
        None => std::env::current_exe().context("finding the keelson binary")?,
    };
    let mut up_args: Vec<String> = vec![
        "--nodes=0".into(),
        format!("--hollow-nodes={}", a.hollow_nodes),
        "--dns-replicas=0".into(),
        // A run killed before it can stop the cluster takes the cluster with it (even one
        // killed before `up` looked at its parent).
        format!("--stop-with-parent={}", std::process::id()),
    ];
    if let Some(b) = &a.store_binary {
        up_args.push(format!("--store-binary={}", b.display()));
    }
    let data = dir.join("cluster");
    let cluster = tokio::task::spawn_blocking(move || {
        UpCluster::start(&keelson, &data, &up_args, Duration::from_secs(300))
    })
    .await??;
    if crate::interrupt::requested() {
        tokio::task::spawn_blocking(move || drop(cluster)).await?;
        bail!("interrupted before the run started");
    }
    drive(a, &faults, dir, cluster).await
}

/// The run on a started cluster; stops it (in the background of the runtime) before checking.
async fn drive(
    a: &ControlArgs,
    faults: &[ControlFault],
    dir: &Path,
    mut cluster: UpCluster,
) -> anyhow::Result<ControlOutcome> {
    let config = keelson_client::connect::load_config(
        &keelson_client::connect::ClientArgs::from_kubeconfig(&cluster.kubeconfig),
    )
    .await?;
    // A plain client: a write that may have been sent is never sent again (that would turn an
    // unknown outcome into a refusal).
    let client = kube::Client::try_from(config)?;
    let w = Workload {
        deployments: a.deployments,
        max_replicas: a.max_replicas,
        scale_every: a.scale_every,
        writers: a.writers,
        configmaps: a.configmaps,
        qps: a.qps,
        timeout: a.op_timeout,
    };
    let clock = Clock::start();
    let counts = Arc::new(Counts::default());
    let stop_watch = CancellationToken::new();
    let _stop_watch = stop_watch.clone().drop_guard();
    let pods = tokio::spawn(workload::pod_watch(
        client.clone(),
        clock,
        stop_watch.clone(),
    ));
    let mut history = ControlHistory::default();
    history
        .writes
        .extend(workload::setup(&client, &w, 2, clock, &counts).await?);
    let before = workload::converge(&cluster, &client, a.converge_timeout).await;
    if before.after.is_none() {
        bail!(
            "the cluster did not converge before any fault, within {:?}: {}",
            a.converge_timeout,
            before.pending.join("; ")
        );
    }
    history.faults.push(step(
        "start",
        "ready",
        format!(
            "workload converged {:.1} s after the Deployments were created",
            before.after.unwrap_or(0.0)
        ),
        clock,
    ));

    let stop = CancellationToken::new();
    let _stop = stop.clone().drop_guard();
    let mut writers = vec![tokio::spawn(workload::scaler(
        client.clone(),
        w.clone(),
        clock,
        counts.clone(),
        stop.clone(),
    ))];
    for i in 1..=w.writers {
        writers.push(tokio::spawn(workload::configmaps(
            client.clone(),
            i,
            w.clone(),
            clock,
            counts.clone(),
            stop.clone(),
        )));
    }
    let injected = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    if !a.progress_every.is_zero() {
        tokio::spawn(progress(
            a.duration,
            a.progress_every,
            counts.clone(),
            injected.clone(),
            clock,
            stop.clone(),
        ));
    }
    let end = tokio::time::Instant::now() + a.duration;
    let mut round = 0;
    while tokio::time::Instant::now() + a.fault_interval < end {
        if crate::interrupt::sleep(a.fault_interval).await {
            break;
        }
        let fault = faults[round % faults.len()];
        match faults::inject(fault, &mut cluster, round / faults.len()).await {
            Ok(Injected::Done(detail, paused)) => {
                injected.fetch_add(1, Relaxed);
                history
                    .faults
                    .push(step(fault.name(), "inject", detail, clock));
                if let Some(pid) = paused {
                    crate::interrupt::sleep(a.pause_hold).await;
                    let healed =
                        faults::heal(&mut cluster, pid).unwrap_or_else(|e| format!("{e:#}"));
                    history
                        .faults
                        .push(step(fault.name(), "heal", healed, clock));
                }
            }
            Ok(Injected::Skipped(why)) => {
                history.faults.push(step(fault.name(), "skip", why, clock));
            }
            Err(e) => {
                history
                    .faults
                    .push(step(fault.name(), "error", format!("{e:#}"), clock));
                break;
            }
        }
        round += 1;
    }
    if crate::interrupt::sleep_until(end).await {
        history.faults.push(step(
            "end",
            "interrupted",
            "Ctrl-C: the faults and the workload ended early".into(),
            clock,
        ));
    }
    stop.cancel();
    cluster.resume_all();
    // From here on, what goes wrong is recorded as an error in the timeline (a `recovery`
    // violation) and the history is kept.
    for t in writers {
        match t.await {
            Ok(w) => history.writes.extend(w),
            Err(e) => {
                history
                    .faults
                    .push(step("end", "error", format!("a writer failed: {e}"), clock))
            }
        }
    }
    history.faults.push(step(
        "end",
        "faults over",
        "the workload stopped; waiting for convergence".into(),
        clock,
    ));
    history.convergence = workload::converge(&cluster, &client, a.converge_timeout).await;
    // The last reads: retried while the cluster (converged or not) does not answer.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let written: Vec<String> = history.writes.iter().map(|w| w.object.clone()).collect();
    history.finals = loop {
        match workload::finals(&client, written.iter().cloned()).await {
            Ok(f) => break Some(f),
            Err(e) if tokio::time::Instant::now() > deadline => {
                history.faults.push(step(
                    "end",
                    "error",
                    format!("reading what the objects hold at the end: {e}"),
                    clock,
                ));
                break None;
            }
            Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    };
    match workload::scheduled(&client).await {
        Ok(s) => history.scheduled = s,
        Err(e) => history.faults.push(step(
            "end",
            "error",
            format!("listing the Scheduled events: {e}"),
            clock,
        )),
    }
    stop_watch.cancel();
    match pods.await {
        Ok(p) => history.pods = p,
        Err(e) => history.faults.push(step(
            "end",
            "error",
            format!("the pod watch failed: {e}"),
            clock,
        )),
    }
    tokio::task::spawn_blocking(move || drop(cluster)).await?;
    history.save(dir)?;
    let checks = check::check_all(&history);
    let outcome = ControlOutcome {
        writes: history.writes.len(),
        unknown: history
            .writes
            .iter()
            .filter(|w| matches!(w.outcome, Outcome::Unknown { .. }))
            .count(),
        faults: injected.load(Relaxed),
        pods: history
            .pods
            .iter()
            .map(|p| p.uid.as_str())
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        checks,
    };
    std::fs::write(dir.join("report.md"), report(a, faults, &history, &outcome))?;
    let points: Vec<crate::plot::Point> = history
        .writes
        .iter()
        .map(|w| crate::plot::Point {
            invoke: w.invoke,
            complete: w.complete,
            answered: !matches!(w.outcome, Outcome::Unknown { .. }),
        })
        .collect();
    std::fs::write(
        dir.join("history.svg"),
        crate::plot::svg_of(&points, &history.faults),
    )?;
    Ok(outcome)
}

/// Prints a progress line to stderr every `every` until `stop`.
async fn progress(
    duration: Duration,
    every: Duration,
    counts: Arc<Counts>,
    injected: Arc<std::sync::atomic::AtomicUsize>,
    clock: Clock,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    let start = clock.now();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        eprintln!(
            "chaos control-plane: {:.0} s of {:.0} s, {} writes ({} unknown), {} faults",
            (clock.now() - start) as f64 / 1e9,
            duration.as_secs_f64(),
            counts.writes.load(Relaxed),
            counts.unknown.load(Relaxed),
            injected.load(Relaxed)
        );
    }
}

/// `report.md` of a control-plane run.
fn report(
    a: &ControlArgs,
    faults: &[ControlFault],
    h: &ControlHistory,
    o: &ControlOutcome,
) -> String {
    let names: Vec<&str> = faults.iter().map(|f| f.name()).collect();
    let mut r = String::new();
    let _ = writeln!(r, "# chaos control-plane run: faults {}\n", names.join(","));
    let _ = writeln!(
        r,
        "keelson up with {} hollow nodes{}; {} Deployments scaled to 0-{} (one every {:?}), {} ConfigMap writers at {} writes/s for {:?}; a fault every {:?}, pauses held {:?}.\n",
        a.hollow_nodes,
        a.store_binary
            .as_ref()
            .map(|b| format!(" (store: {})", b.display()))
            .unwrap_or_default(),
        a.deployments,
        a.max_replicas,
        a.scale_every,
        a.writers,
        a.qps,
        a.duration,
        a.fault_interval,
        a.pause_hold
    );
    let refused = h
        .writes
        .iter()
        .filter(|w| matches!(w.outcome, Outcome::Refused { .. }))
        .count();
    let not_sent = h
        .writes
        .iter()
        .filter(|w| matches!(w.outcome, Outcome::NotSent { .. }))
        .count();
    let _ = writeln!(
        r,
        "{} writes ({} refused, {} never sent, {} without a known outcome), {} pods seen, {} Scheduled events, {} faults.\n",
        o.writes,
        refused,
        not_sent,
        o.unknown,
        o.pods,
        h.scheduled.len(),
        o.faults
    );
    let _ = writeln!(r, "![write latency, throughput and faults](history.svg)\n");
    crate::run::verdicts_and_timeline(&mut r, &o.checks, &h.faults);
    r
}

/// Checks a recorded control-plane run directory again.
pub fn check_dir(dir: &Path) -> anyhow::Result<Vec<Check>> {
    Ok(check::check_all(&ControlHistory::load(dir)?))
}
