//! Scale runs on hollow nodes, ClusterLoader2's method on one machine: a cluster with N hollow
//! nodes (started here with `keelson up`, or any cluster given by `--kubeconfig`), a workload,
//! and the Kubernetes scalability SLIs measured throughout. Two workloads:
//!
//! - [`density`]: saturation pods through Deployments at a fixed rate up to P per node, then
//!   latency pods one by one at a lower rate (pod startup is judged on those);
//! - [`load`]: Deployments of CL2's three sizes with Services, created at a pod rate, scaled to
//!   random sizes, then deleted (pod startup is judged on every pod).
//!
//! The SLIs:
//! - API call latency per (resource, subresource, verb, scope) from the apiservers' own
//!   `apiserver_request_sli_duration_seconds` (without API Priority and Fairness queueing and
//!   webhook calls, as Kubernetes defines the SLI since 1.27), with the whole latency's p99 from
//!   `apiserver_request_duration_seconds` beside it, differenced between scrapes (every
//!   client's calls: controllers, scheduler, nodes, the run's own);
//! - LIST latency per scope (the run LISTs a namespace and, in pages, the cluster's pods);
//! - pod startup per phase (created → bound → running, observed by watch);
//! - scheduling throughput; watch event lag (a probe object written twice a second and watched
//!   from another connection);
//! - CPU and RSS of every component and the store's size (when the run started the cluster).
//!
//! The run directory gets the raw samples (CSV), `summary.json`, `summary.md` and SVG plots.
//! Everything the run creates is deleted at the end, and a cluster it started is stopped.

pub mod chaos;
pub mod churn;
pub mod density;
pub mod histograms;
pub mod load;
mod observe;
mod report;
mod slo;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use k8s_openapi::api::core::v1::{Namespace, Node, ServiceAccount};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use parking_lot::Mutex;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::cluster::{Cluster, node_ready};
use observe::{ComponentSampler, GROUP_LABEL, Timelines};
pub use report::Report;
use report::{Samples, Workload};

/// Pods a hollow node takes (`keelson node --max-pods` default).
const MAX_PODS: usize = 110;

/// Flags every scale run has: the cluster, sampling, bounds and output.
#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// Run against this cluster instead of starting one; its Ready nodes are used as they are.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// The keelson binary that starts the cluster.
    #[arg(long)]
    pub keelson: Option<PathBuf>,
    /// Hollow nodes of the started cluster.
    #[arg(long, default_value_t = 50)]
    pub nodes: usize,
    /// Store members of the started cluster.
    #[arg(long, default_value_t = 3)]
    pub stores: usize,
    /// Apiservers of the started cluster.
    #[arg(long, default_value_t = 1)]
    pub apiservers: usize,
    /// Client QPS and burst of the started cluster's controller-manager and scheduler (the
    /// Kubernetes scalability jobs run them at 100).
    #[arg(long, default_value_t = 100)]
    pub control_plane_qps: u32,
    /// Seconds between samples of metrics, CPU and memory.
    #[arg(long, default_value_t = 5)]
    pub sample_every: u64,
    /// Seconds each phase (nodes Ready, pods running, pods gone, the run's namespaces deleted)
    /// may take.
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
    /// Where run directories are made (`<out>/<workload>-<time>`).
    #[arg(long, default_value = "scale-runs")]
    pub out: PathBuf,
    /// Exit with an error when an SLO is not met (the report is written either way).
    #[arg(long)]
    pub fail_on_slo: bool,
    /// An etcd-compatible binary run as the started cluster's store members in place of
    /// `keelson store` (`keelson up --store-binary`), e.g. `/usr/bin/etcd`.
    #[arg(long)]
    pub store_binary: Option<PathBuf>,
    /// Run the workload a second time, on a cluster that differs in one thing, and report both
    /// side by side (`<out>/<workload>-compare-<time>`): `etcd` (etcd from PATH as the store
    /// members, in place of keelson-store), `etcd=PATH`, or `keelson=PATH` (another keelson
    /// build starts the cluster). Only with a started cluster.
    #[arg(long, value_parser = Compare::parse)]
    pub compare: Option<Compare>,
    /// Faults injected while the workload runs.
    #[command(flatten)]
    pub chaos: chaos::ChaosArgs,
    /// Writes beside the workload's while it runs.
    #[command(flatten)]
    pub churn: churn::ChurnArgs,
}

/// What the second run of a comparison changes.
#[derive(Debug, Clone, PartialEq)]
pub enum Compare {
    /// The store members are this etcd-compatible binary.
    Etcd(PathBuf),
    /// This keelson binary starts the cluster.
    Keelson(PathBuf),
}

impl Compare {
    fn parse(s: &str) -> Result<Compare, String> {
        match s.split_once('=') {
            None if s == "etcd" => Ok(Compare::Etcd("etcd".into())),
            Some(("etcd", p)) if !p.is_empty() => Ok(Compare::Etcd(p.into())),
            Some(("keelson", p)) if !p.is_empty() => Ok(Compare::Keelson(p.into())),
            _ => Err(format!("{s:?}: expected etcd, etcd=PATH or keelson=PATH")),
        }
    }
}

impl RunArgs {
    fn validate(&self) -> anyhow::Result<()> {
        for (flag, v) in [
            ("--nodes", self.nodes),
            ("--stores", self.stores),
            ("--apiservers", self.apiservers),
            ("--sample-every", self.sample_every as usize),
            ("--timeout", self.timeout as usize),
        ] {
            if v == 0 {
                bail!("{flag} must be at least 1");
            }
        }
        // A program that is not there is found now, not after a first run of half an hour.
        let programs = [
            ("--store-binary", self.store_binary.as_deref()),
            (
                "--compare",
                match &self.compare {
                    Some(Compare::Etcd(p) | Compare::Keelson(p)) => Some(p.as_path()),
                    None => None,
                },
            ),
        ];
        for (flag, program) in programs {
            if let Some(p) = program
                && keelson_client::program::find(p).is_none()
            {
                bail!("{flag}: {}: no such program", p.display());
            }
        }
        self.chaos.validate(self.kubeconfig.is_some())?;
        self.churn.validate(self.kubeconfig.is_some())?;
        if self.kubeconfig.is_some() {
            if self.compare.is_some() {
                bail!("--compare starts the clusters it compares; it cannot attach (--kubeconfig)");
            }
            if self.store_binary.is_some() {
                bail!("--store-binary is for a started cluster, not with --kubeconfig");
            }
        }
        Ok(())
    }

    /// What the cluster a run starts is made of, for a comparison's columns.
    fn cluster_label(&self, keelson: &Path) -> String {
        let keelson = self.keelson.as_deref().unwrap_or(keelson);
        match &self.store_binary {
            Some(store) => format!("store {}, the rest {}", store.display(), keelson.display()),
            None => format!("keelson-store, {}", keelson.display()),
        }
    }
}

/// A positive rate flag.
fn positive_rate(flag: &str, v: f64) -> anyhow::Result<()> {
    if !(v.is_finite() && v > 0.0) {
        bail!("{flag} must be a positive number of pods per second, not {v}");
    }
    Ok(())
}

/// The workload of a run (the `keelson bench` subcommands).
#[derive(clap::Subcommand, Debug, Clone)]
pub enum Plan {
    /// Density: saturation pods through Deployments up to P per node, then latency pods; API
    /// call latency, pod startup, scheduling throughput, watch lag, component CPU and memory.
    Density(density::DensityArgs),
    /// Load: Deployments of three sizes with Services, created, scaled to random sizes and
    /// deleted at a pod rate; the same SLIs, pod startup judged on every pod.
    Load(load::LoadArgs),
}

impl Plan {
    fn common(&self) -> &RunArgs {
        match self {
            Plan::Density(a) => &a.run,
            Plan::Load(a) => &a.run,
        }
    }

    fn common_mut(&mut self) -> &mut RunArgs {
        match self {
            Plan::Density(a) => &mut a.run,
            Plan::Load(a) => &mut a.run,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Plan::Density(_) => "density",
            Plan::Load(_) => "load",
        }
    }

    fn validate(&self) -> anyhow::Result<()> {
        self.common().validate()?;
        match self {
            Plan::Density(a) => a.validate(),
            Plan::Load(a) => a.validate(),
        }
    }

    /// The namespaces the run creates and deletes (the first holds the probes).
    fn namespaces(&self, nodes: usize) -> Vec<String> {
        match self {
            Plan::Density(_) => density::namespaces(),
            Plan::Load(a) => a.namespaces(nodes),
        }
    }

    fn workload(&self, nodes: usize, cluster: String) -> Workload {
        match self {
            Plan::Density(a) => a.workload(nodes, cluster),
            Plan::Load(a) => a.workload(nodes, cluster),
        }
    }

    async fn drive(
        &self,
        w: &Workload,
        client: &Client,
        timelines: &Arc<Timelines>,
    ) -> anyhow::Result<()> {
        match self {
            Plan::Density(a) => density::drive(a, w, client, timelines).await,
            Plan::Load(a) => a.drive(w, client, timelines).await,
        }
    }
}

/// Runs the workload and writes its run directory; returns the directory and report (with
/// `--compare`: runs it twice, writes the comparison's directory too, and returns that with
/// the first run's report). Fails when the workload does not complete, when an SLI has no
/// data, and with `--fail-on-slo` when an SLO is not met, after writing what was measured.
/// `keelson` starts the cluster unless `--keelson` names another binary; `shutdown` ends the
/// workload early (the run still cleans up).
pub async fn run(
    plan: Plan,
    keelson: &Path,
    shutdown: CancellationToken,
) -> anyhow::Result<(PathBuf, Report)> {
    plan.validate()?;
    let args = plan.common().clone();
    let Some(other) = args.compare.clone() else {
        return run_once(&plan, keelson, &shutdown)
            .await?
            .verdict(args.fail_on_slo);
    };
    let kind = plan.kind();
    let mut first = plan.clone();
    first.common_mut().compare = None;
    let mut second = first.clone();
    match other {
        Compare::Etcd(p) => second.common_mut().store_binary = Some(p),
        Compare::Keelson(p) => second.common_mut().keelson = Some(p),
    }
    let (a, b) = (
        first.common().cluster_label(keelson),
        second.common().cluster_label(keelson),
    );
    eprintln!("{kind}: run A of 2, on {a}");
    let ran_a = run_once(&first, keelson, &shutdown).await?;
    if shutdown.is_cancelled() {
        return ran_a.verdict(args.fail_on_slo);
    }
    eprintln!("{kind}: run B of 2, on {b}");
    let ran_b = run_once(&second, keelson, &shutdown)
        .await
        .with_context(|| format!("run B failed; run A is in {}", ran_a.dir.display()))?;
    let dir = run_dir(&args.out, &format!("{kind}-compare"))?;
    let md = report::comparison(&[
        report::Compared {
            label: a.clone(),
            dir: &ran_a.dir,
            report: &ran_a.report,
        },
        report::Compared {
            label: b.clone(),
            dir: &ran_b.dir,
            report: &ran_b.report,
        },
    ]);
    std::fs::write(dir.join("summary.md"), &md)
        .with_context(|| format!("writing {}", dir.join("summary.md").display()))?;
    let json = serde_json::to_vec_pretty(&json!({
        "runs": [
            {"cluster": a, "dir": ran_a.dir, "report": ran_a.report},
            {"cluster": b, "dir": ran_b.dir, "report": ran_b.report},
        ]
    }))?;
    std::fs::write(dir.join("summary.json"), json)
        .with_context(|| format!("writing {}", dir.join("summary.json").display()))?;
    println!("{md}");
    println!("Comparison directory: {}", dir.display());
    let report = ran_a.verdict(args.fail_on_slo).context("run A")?.1;
    ran_b.verdict(args.fail_on_slo).context("run B")?;
    Ok((dir, report))
}

/// A run whose report was written; `failure` is what went wrong after measuring (the workload
/// did not complete, writing or cleaning up failed).
struct Ran {
    dir: PathBuf,
    report: Report,
    failure: Option<anyhow::Error>,
}

impl Ran {
    /// The run's directory and report, or why it failed: a failure, an SLI without data, and
    /// (`fail_on_slo`) an SLO not met.
    fn verdict(self, fail_on_slo: bool) -> anyhow::Result<(PathBuf, Report)> {
        if let Some(e) = self.failure {
            return Err(e);
        }
        if !self.report.missing.is_empty() {
            bail!("incomplete report: {}", self.report.missing.join("; "));
        }
        let failed: Vec<String> = self
            .report
            .verdicts
            .iter()
            .filter(|v| !v.pass)
            .map(|v| format!("{} ({:.3} s > {} s)", v.subject, v.p99, v.threshold))
            .collect();
        if fail_on_slo && !failed.is_empty() {
            bail!("SLOs not met: {}", failed.join(", "));
        }
        Ok((self.dir, self.report))
    }
}

/// One run of the workload: starts (or attaches to) the cluster, measures, writes the run
/// directory, cleans up. `Err` when it failed before there was anything to report.
async fn run_once(
    plan: &Plan,
    keelson: &Path,
    shutdown: &CancellationToken,
) -> anyhow::Result<Ran> {
    let kind = plan.kind();
    let args = plan.common();
    let keelson = args.keelson.as_deref().unwrap_or(keelson);
    let cluster = match &args.kubeconfig {
        Some(_) => None,
        None => {
            eprintln!(
                "{kind}: starting keelson up with {} hollow nodes",
                args.nodes
            );
            let mut up_args = vec![
                format!("--stores={}", args.stores),
                format!("--apiservers={}", args.apiservers),
                "--controller-managers=1".into(),
                "--schedulers=1".into(),
                "--nodes=0".into(),
                "--dns-replicas=0".into(),
                format!("--hollow-nodes={}", args.nodes),
                format!("--control-plane-qps={}", args.control_plane_qps),
            ];
            if let Some(store) = &args.store_binary {
                up_args.push(format!("--store-binary={}", store.display()));
            }
            up_args.extend(args.churn.up_args());
            let keelson = keelson.to_path_buf();
            let c =
                tokio::task::spawn_blocking(move || Cluster::start(&keelson, &up_args)).await??;
            eprintln!("{kind}: cluster data in {}", c.data.display());
            Some(c)
        }
    };
    let kubeconfig = args
        .kubeconfig
        .clone()
        .or_else(|| cluster.as_ref().map(|c| c.kubeconfig.clone()))
        .context("no kubeconfig")?;
    let kc = Kubeconfig::read_from(&kubeconfig)
        .with_context(|| format!("reading {}", kubeconfig.display()))?;
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    let client = Client::try_from(config.clone())?;
    let apiservers = match &cluster {
        Some(c) => c
            .apiservers()?
            .iter()
            .map(|url| {
                let mut cfg = config.clone();
                cfg.cluster_url = url.parse()?;
                Ok(Client::try_from(cfg)?)
            })
            .collect::<anyhow::Result<Vec<_>>>()?,
        // Another connection than the run's own, for the watch-lag probe's watcher.
        None => vec![Client::try_from(config.clone())?],
    };
    let nodes = wait_for_nodes(&client, args, cluster.is_some()).await?;
    let mut workload = plan.workload(
        nodes,
        match &args.kubeconfig {
            Some(k) => k.display().to_string(),
            None => "started".into(),
        },
    );
    workload.chaos = args.chaos.describe();
    workload.churn = args.churn.describe();
    let wanted = plan.namespaces(nodes);
    let namespaces: Api<Namespace> = Api::all(client.clone());
    for ns in &wanted {
        if namespaces.get_opt(ns).await?.is_some() {
            bail!("namespace {ns} exists: a {kind} run uses and deletes it; delete it first");
        }
    }
    let timeout = Duration::from_secs(args.timeout);
    let mut created: Vec<String> = Vec::new();
    for ns in &wanted {
        if let Err(e) = create_namespace(&client, ns, kind).await {
            let _ = cleanup(&client, &created, timeout).await;
            return Err(e);
        }
        created.push(ns.clone());
    }
    let dir = match run_dir(&args.out, kind) {
        Ok(d) => d,
        Err(e) => {
            let _ = cleanup(&client, &created, timeout).await;
            return Err(e);
        }
    };
    let t0 = Instant::now();
    let (samples, result) = measure(
        plan,
        &workload,
        &wanted,
        &client,
        &apiservers,
        cluster.as_ref(),
        t0,
        shutdown,
    )
    .await;
    // What was measured is written first, and even when the workload failed: where it broke
    // is a result.
    let report = report::summarise(workload, t0.elapsed().as_secs_f64(), &samples);
    let written = report::write(&dir, &report, &samples);
    println!("{}", report::markdown(&report));
    println!("Run directory: {}", dir.display());
    let cleaned = match cluster {
        // Stopping the cluster removes it with everything the run made.
        Some(c) => {
            drop(c);
            Ok(())
        }
        None => {
            eprintln!("{kind}: deleting the run's namespaces");
            cleanup(&client, &created, timeout).await
        }
    };
    Ok(Ran {
        dir,
        report,
        failure: written.and(result).and(cleaned).err(),
    })
}

/// A new `<out>/<kind>-<time>` directory.
fn run_dir(out: &Path, kind: &str) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let stamp = jiff::Timestamp::now().strftime("%Y%m%d-%H%M%S").to_string();
    let dir = out.join(format!("{kind}-{stamp}"));
    std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// Waits for the started cluster's hollow nodes to be Ready, or counts an attached cluster's.
async fn wait_for_nodes(client: &Client, args: &RunArgs, started: bool) -> anyhow::Result<usize> {
    let api: Api<Node> = Api::all(client.clone());
    let want = if started { args.nodes } else { 1 };
    let bar = bar(want as u64, "nodes Ready");
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    loop {
        let n = api
            .list(&ListParams::default())
            .await?
            .items
            .iter()
            .filter(|n| node_ready(n))
            .count();
        bar.set_position(n.min(want) as u64);
        if n >= want {
            bar.finish();
            return Ok(n);
        }
        if Instant::now() > deadline {
            bail!("{n} of {want} nodes Ready after {} s", args.timeout);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Creates `ns` (it must not exist: the run deletes it at the end) and waits for its default
/// ServiceAccount, without which pods are refused.
async fn create_namespace(client: &Client, ns: &str, kind: &str) -> anyhow::Result<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    let body: Namespace = serde_json::from_value(json!({"metadata": {"name": ns}}))?;
    match api.create(&PostParams::default(), &body).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {
            bail!("namespace {ns} exists: a {kind} run uses and deletes it; delete it first")
        }
        Err(e) => return Err(e).with_context(|| format!("creating namespace {ns}")),
    }
    let sa: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let deadline = Instant::now() + Duration::from_secs(60);
    while sa.get_opt("default").await?.is_none() {
        if Instant::now() > deadline {
            bail!(
                "no default ServiceAccount in {ns} after 60 s (is a controller-manager running?)"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

pub(crate) fn bar(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{prefix:>18} [{elapsed_precise}] {bar:40} {pos}/{len} {msg}")
            .expect("a valid template"),
    );
    bar.set_prefix(what.to_string());
    bar
}

/// A pod template of the run's `group`: one container that requests little.
fn pod_template(group: &str) -> serde_json::Value {
    json!({
        "metadata": {"labels": {GROUP_LABEL: group}},
        "spec": {"containers": [{"name": "pause", "image": "registry.k8s.io/pause:3.10",
            "resources": {"requests": {"cpu": "1m", "memory": "10Mi"}}}]}
    })
}

/// Runs `f` until it ends or `stop` is cancelled.
async fn until(stop: CancellationToken, f: impl std::future::Future<Output = ()>) {
    tokio::select! {
        _ = stop.cancelled() => {}
        _ = f => {}
    }
}

/// What the sampler collects.
#[derive(Default)]
struct Sampled {
    scrapes: Vec<observe::Scrape>,
    components: Vec<observe::ComponentSample>,
    store: Vec<(f64, u64)>,
}

impl Sampled {
    /// Samples the components (first: their CPU is per interval, up to now) and the apiservers.
    async fn take(
        &mut self,
        sampler: Option<&mut ComponentSampler>,
        apiservers: &[Client],
        t0: Instant,
    ) -> anyhow::Result<()> {
        if let Some(s) = sampler {
            let (c, store) = s.sample(t0.elapsed().as_secs_f64());
            self.components.extend(c);
            self.store.push((t0.elapsed().as_secs_f64(), store));
        }
        let scrape = observe::scrape(apiservers, t0.elapsed().as_secs_f64()).await?;
        self.scrapes.push(scrape);
        Ok(())
    }
}

/// The workload with its observers: what they sampled, and how the workload ended.
#[allow(clippy::too_many_arguments)]
async fn measure(
    plan: &Plan,
    w: &Workload,
    namespaces: &[String],
    client: &Client,
    apiservers: &[Client],
    cluster: Option<&Cluster>,
    t0: Instant,
    shutdown: &CancellationToken,
) -> (Samples, anyhow::Result<()>) {
    let stop = CancellationToken::new();
    let timelines = Arc::new(Timelines::new(t0));
    let lag = Arc::new(Mutex::new(Vec::new()));
    let faults = chaos::Faults::default();
    let churned = Arc::new(churn::Counters::default());
    let mut sampler = cluster.map(|c| ComponentSampler::new(&c.data));
    let mut sampled = Sampled::default();
    let every = Duration::from_secs(plan.common().sample_every);
    let result = match sampled.take(sampler.as_mut(), apiservers, t0).await {
        Err(e) => Err(e.context("reading the apiservers' /metrics")),
        Ok(()) => {
            let (listed, listed_rx) = tokio::sync::oneshot::channel();
            let tasks = vec![
                tokio::spawn(until(
                    stop.clone(),
                    observe::watch_pods(client.clone(), timelines.clone(), listed),
                )),
                tokio::spawn(until(
                    stop.clone(),
                    observe::watch_lag(
                        client.clone(),
                        // Another connection, as another client would have.
                        apiservers[apiservers.len() - 1].clone(),
                        namespaces[0].clone(),
                        lag.clone(),
                        t0,
                    ),
                )),
                tokio::spawn(until(
                    stop.clone(),
                    observe::list_probe(client.clone(), namespaces[0].clone(), every),
                )),
                // (These two end by themselves at `stop`, the chaos once the failed nodes are
                // back.)
                tokio::spawn(churn::config(
                    plan.common().churn.churn_config_qps,
                    client.clone(),
                    namespaces[0].clone(),
                    churned.clone(),
                    stop.clone(),
                )),
                tokio::spawn(chaos::run(
                    plan.common().chaos.clone(),
                    client.clone(),
                    apiservers.to_vec(),
                    cluster.map(|c| c.data.clone()),
                    faults.clone(),
                    t0,
                    stop.clone(),
                )),
            ];
            let sampling = {
                let (servers, stop) = (apiservers.to_vec(), stop.clone());
                let mut sampled = std::mem::take(&mut sampled);
                let mut sampler = sampler.take();
                tokio::spawn(async move {
                    let mut tick = tokio::time::interval_at((Instant::now() + every).into(), every);
                    loop {
                        tokio::select! {
                            _ = stop.cancelled() => break,
                            _ = tick.tick() => {}
                        }
                        let taken = tokio::select! {
                            _ = stop.cancelled() => break,
                            r = sampled.take(sampler.as_mut(), &servers, t0) => r,
                        };
                        if let Err(e) = taken {
                            tracing::warn!(error = %e, "sampling failed");
                        }
                    }
                    (sampled, sampler)
                })
            };
            // Pods are timed from their first sight: the watch must be open before any exists.
            let result = match tokio::time::timeout(Duration::from_secs(60), listed_rx).await {
                Ok(Ok(())) => tokio::select! {
                    r = plan.drive(w, client, &timelines) => r,
                    _ = shutdown.cancelled() => Err(anyhow::anyhow!("interrupted")),
                },
                _ => Err(anyhow::anyhow!("the pod watch did not start within 60 s")),
            };
            stop.cancel();
            for t in tasks {
                let _ = t.await;
            }
            match sampling.await {
                Ok((s, back)) => {
                    sampled = s;
                    sampler = back;
                }
                Err(e) => tracing::warn!(error = %e, "the sampler failed"),
            }
            // The last interval ends now.
            if let Err(e) = sampled.take(sampler.as_mut(), apiservers, t0).await {
                tracing::warn!(error = %e, "sampling at the end failed");
            }
            result
        }
    };
    let samples = Samples {
        pods: timelines.records(),
        scrapes: sampled.scrapes,
        watch_lag: lag.lock().clone(),
        components: sampled.components,
        store: sampled.store,
        sampled_components: cluster.is_some(),
        faults: faults.lock().clone(),
        churned: (plan.common().churn.churn_config_qps > 0.0).then(|| churned.get()),
    };
    (samples, result)
}

/// Runs an API call (`f`), retrying for up to a minute what a restarting apiserver answers
/// (no connection, 429, 5xx): chaos runs kill apiservers under the workload. Once retried,
/// the code `landed` (409 for a create, 404 for a delete; 0 for none) means an earlier
/// attempt landed: `None`.
pub(crate) async fn retried<T, Fut>(
    landed: u16,
    mut f: impl FnMut() -> Fut,
) -> Result<Option<T>, kube::Error>
where
    Fut: std::future::Future<Output = Result<T, kube::Error>>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut wait = Duration::from_millis(200);
    let mut again = false;
    loop {
        match f().await {
            Ok(v) => return Ok(Some(v)),
            Err(kube::Error::Api(s)) if again && landed != 0 && s.code == landed => {
                return Ok(None);
            }
            Err(e) if keelson_client::connect::transient(&e) && Instant::now() < deadline => {
                tracing::debug!(error = %e, "write failed; retrying");
                again = true;
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Paces work at a number of pods per second from its start.
pub(crate) struct Pacer {
    start: Instant,
    rate: f64,
    pods: usize,
}

impl Pacer {
    pub(crate) fn new(rate: f64) -> Self {
        Pacer {
            start: Instant::now(),
            rate,
            pods: 0,
        }
    }

    /// `pods` more were asked for: sleeps until the rate allows the next, calling `tick`
    /// every half second meanwhile.
    pub(crate) async fn done(&mut self, pods: usize, tick: impl Fn()) {
        self.pods += pods;
        let due = self.start + Duration::from_secs_f64(self.pods as f64 / self.rate);
        while Instant::now() < due {
            tick();
            tokio::time::sleep_until(due.min(Instant::now() + Duration::from_millis(500)).into())
                .await;
        }
    }
}

/// Waits until `want` pods of `group` have run.
async fn wait_running(
    timelines: &Timelines,
    group: &str,
    want: usize,
    bar: &ProgressBar,
    timeout: u64,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(timeout);
    loop {
        let (_, bound, running) = timelines.counts(group);
        bar.set_position(running as u64);
        if running >= want {
            bar.finish();
            return Ok(());
        }
        if Instant::now() > deadline {
            bar.abandon();
            bail!("{running} of {want} {group} pods running ({bound} bound) after {timeout} s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Deletes the namespaces the run created and waits until they are gone (their pods end
/// gracefully, as the nodes confirm).
async fn cleanup(client: &Client, created: &[String], timeout: Duration) -> anyhow::Result<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    for ns in created {
        match api.delete(ns, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e).with_context(|| format!("deleting namespace {ns}")),
        }
    }
    let deadline = Instant::now() + timeout;
    for ns in created {
        while api.get_opt(ns).await?.is_some() {
            if Instant::now() > deadline {
                bail!(
                    "namespace {ns} still exists {} s after its deletion",
                    timeout.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    Ok(())
}

#[cfg(test)]
mod compare_tests {
    use super::*;

    #[test]
    fn compare_names_etcd_or_another_keelson() {
        assert_eq!(Compare::parse("etcd"), Ok(Compare::Etcd("etcd".into())));
        assert_eq!(
            Compare::parse("etcd=/usr/bin/etcd"),
            Ok(Compare::Etcd("/usr/bin/etcd".into()))
        );
        assert_eq!(
            Compare::parse("keelson=/tmp/old/keelson"),
            Ok(Compare::Keelson("/tmp/old/keelson".into()))
        );
        for bad in [
            "",
            "etcd=",
            "keelson",
            "keelson=",
            "/usr/bin/etcd",
            "zookeeper=/x",
        ] {
            assert!(Compare::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_missing_program_or_an_attached_cluster_is_refused_before_any_run() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(subcommand)]
            plan: Plan,
        }
        let refused = |args: &[&str]| {
            let argv = ["bench", "density"].iter().chain(args);
            let plan = <Cli as clap::Parser>::try_parse_from(argv).unwrap().plan;
            plan.validate().unwrap_err().to_string()
        };
        assert_eq!(
            refused(&["--compare", "keelson=/nonexistent/keelson"]),
            "--compare: /nonexistent/keelson: no such program"
        );
        assert_eq!(
            refused(&["--store-binary", "no-such-etcd-anywhere"]),
            "--store-binary: no-such-etcd-anywhere: no such program"
        );
        assert!(
            refused(&["--compare", "etcd=/bin/sh", "--kubeconfig", "/x"]).contains("--compare")
        );
    }
}
