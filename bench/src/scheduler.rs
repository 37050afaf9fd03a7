//! `keelson-bench scheduler`: scheduler_perf's workloads against keelson's scheduler.
//!
//! Workloads (named and sized as upstream's `performance-config.yaml`): SchedulingBasic,
//! SchedulingPodAntiAffinity (required, per hostname), SchedulingPodAffinity (required, per
//! zone), TopologySpreading (hard, maxSkew 5 over 3 zones), Preemption (high-priority pods that
//! must evict low-priority ones). Nodes as upstream's `node-default.yaml` (4 CPU, 32 GiB, 110
//! pods); pods request 100m / 500Mi unless the workload says otherwise.
//!
//! Two modes:
//! - **in-process**: the framework, queue and cache of `keelson-scheduler` with a binder that
//!   confirms bindings in the cache at once (no API; preemption victims vanish when chosen);
//! - **api**: a `keelson up` cluster (one apiserver), N Node objects, and a `keelson scheduler`
//!   process; pods are created through the API and observed bound through a watch (the bench
//!   also force-deletes preemption victims, the kubelet's part).
//!
//! In both, init pods are scheduled first (not measured), then the measured pods are created at
//! once; throughput is measured pods / (last bound - first created), latency is per pod from
//! creation to bound.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::StreamExt;
use futures::future::BoxFuture;
use hdrhistogram::Histogram;
use k8s_openapi::api::core::v1::{Node, Pod};
use keelson_scheduler::framework::{Listers, Plugin, Point, Status};
use keelson_scheduler::scheduler::Scheduler;
use keelson_scheduler::types::PodInfo;
use kube::api::{Api, DeleteParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Config, ResourceExt};
use parking_lot::Mutex;
use serde_json::{Value, json};

use crate::{new_hist, start_cluster};

#[derive(clap::Args, Debug)]
pub struct SchedulerArgs {
    /// Workloads to run (comma separated; default all).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "SchedulingBasic,SchedulingPodAntiAffinity,SchedulingPodAffinity,TopologySpreading,Preemption"
    )]
    workloads: Vec<String>,
    /// Cluster sizes (nodes), comma separated.
    #[arg(long, value_delimiter = ',', default_value = "500,5000")]
    nodes: Vec<usize>,
    /// `in-process`, `api`, or `both`.
    #[arg(long, default_value = "in-process")]
    mode: String,
    /// Override the measured pods of every workload.
    #[arg(long)]
    measure_pods: Option<usize>,
    /// Override the init pods of every workload.
    #[arg(long)]
    init_pods: Option<usize>,
    /// The keelson binary for api mode (default: next to this one).
    #[arg(long)]
    keelson: Option<PathBuf>,
    /// Store members of the api-mode cluster.
    #[arg(long, default_value_t = 1)]
    stores: usize,
    /// Concurrent clients creating objects in api mode.
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// Seconds a phase may take.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Workload {
    Basic,
    AntiAffinity,
    Affinity,
    Spreading,
    Preemption,
}

impl Workload {
    fn parse(s: &str) -> anyhow::Result<Self> {
        Ok(match s {
            "SchedulingBasic" => Workload::Basic,
            "SchedulingPodAntiAffinity" => Workload::AntiAffinity,
            "SchedulingPodAffinity" => Workload::Affinity,
            "TopologySpreading" => Workload::Spreading,
            "Preemption" => Workload::Preemption,
            o => bail!("unknown workload {o:?}"),
        })
    }

    fn name(self) -> &'static str {
        match self {
            Workload::Basic => "SchedulingBasic",
            Workload::AntiAffinity => "SchedulingPodAntiAffinity",
            Workload::Affinity => "SchedulingPodAffinity",
            Workload::Spreading => "TopologySpreading",
            Workload::Preemption => "Preemption",
        }
    }

    /// (init pods, measured pods) as upstream's 500Nodes / 5000Nodes test cases.
    fn sizes(self, nodes: usize) -> (usize, usize) {
        let big = nodes > 500;
        match (self, big) {
            (Workload::Basic, false) => (500, 1000),
            (Workload::Basic, true) => (1000, 1000),
            (Workload::AntiAffinity, false) => (100, 400),
            (Workload::AntiAffinity, true) => (1000, 1000),
            (Workload::Affinity, false) => (500, 1000),
            (Workload::Affinity, true) => (5000, 1000),
            (Workload::Spreading, false) => (1000, 1000),
            (Workload::Spreading, true) => (5000, 2000),
            (Workload::Preemption, false) => (2000, 500),
            (Workload::Preemption, true) => (20000, 5000),
        }
    }

    fn node(self, i: usize) -> Value {
        let name = format!("node-{i}");
        let zone = match self {
            Workload::Affinity => "zone1".to_string(),
            _ => format!("moon-{}", i % 3 + 1),
        };
        json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {
                "kubernetes.io/hostname": name,
                "topology.kubernetes.io/zone": zone,
            }},
            "status": {
                "allocatable": {"cpu": "4", "memory": "32Gi", "pods": "110"},
                "capacity": {"cpu": "4", "memory": "32Gi", "pods": "110"},
                "conditions": [{"type": "Ready", "status": "True"}],
            }
        })
    }

    /// (namespace, pod JSON) of init pod `i` or measured pod `i`.
    fn pod(self, measured: bool, i: usize) -> (String, Value) {
        let ns = if measured { "sched-1" } else { "sched-0" };
        let name = format!("{}-{i}", if measured { "m" } else { "init" });
        let mut labels = json!({"color": "blue"});
        let (cpu, mem) = match (self, measured) {
            (Workload::Preemption, false) => ("900m", "500Mi"),
            (Workload::Preemption, true) => ("3000m", "500Mi"),
            _ => ("100m", "500Mi"),
        };
        let mut spec = json!({
            "containers": [{"name": "pause", "image": "registry.k8s.io/pause:3.10",
                "resources": {"requests": {"cpu": cpu, "memory": mem}}}]
        });
        match (self, measured) {
            (Workload::AntiAffinity, _) => {
                labels = json!({"color": "green"});
                spec["affinity"] = json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                    {"labelSelector": {"matchLabels": {"color": "green"}}, "topologyKey": "kubernetes.io/hostname"}]}});
            }
            (Workload::Affinity, true) => {
                spec["affinity"] = json!({"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                    {"labelSelector": {"matchLabels": {"color": "blue"}}, "topologyKey": "topology.kubernetes.io/zone",
                     "namespaces": ["sched-0", "sched-1"]}]}});
            }
            (Workload::Spreading, true) => {
                spec["topologySpreadConstraints"] = json!([{"maxSkew": 5, "topologyKey": "topology.kubernetes.io/zone",
                    "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"color": "blue"}}}]);
            }
            (Workload::Preemption, false) => {
                spec["priority"] = json!(1);
            }
            (Workload::Preemption, true) => {
                spec["priority"] = json!(10);
            }
            _ => {}
        }
        (
            ns.to_string(),
            json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": ns, "uid": format!("{ns}-{name}"), "labels": labels,
                    "creationTimestamp": "2026-01-01T00:00:00Z"},
                "spec": spec}),
        )
    }
}

struct Outcome {
    pods: usize,
    elapsed: Duration,
    latency: Histogram<u64>,
    cpu_cores: Option<f64>,
}

fn report(mode: &str, w: Workload, nodes: usize, init: usize, o: &Outcome) {
    let ms = |q: f64| o.latency.value_at_quantile(q) as f64 / 1000.0;
    let cpu = o
        .cpu_cores
        .map(|c| format!(" | {c:.2}"))
        .unwrap_or_else(|| " | -".into());
    println!(
        "| {mode} | {} | {nodes} | {init} | {} | {:.0} | {:.1} | {:.1}{cpu} |",
        w.name(),
        o.pods,
        o.pods as f64 / o.elapsed.as_secs_f64(),
        ms(0.5),
        ms(0.99),
    );
}

pub async fn run(args: SchedulerArgs) -> anyhow::Result<()> {
    let workloads = args
        .workloads
        .iter()
        .map(|w| Workload::parse(w))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let modes: &[&str] = match args.mode.as_str() {
        "in-process" => &["in-process"],
        "api" => &["api"],
        "both" => &["in-process", "api"],
        o => bail!("--mode must be in-process, api or both, not {o:?}"),
    };
    println!(
        "| mode | workload | nodes | init pods | measured pods | pods/s | p50 ms | p99 ms | scheduler cores |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for mode in modes {
        for &nodes in &args.nodes {
            for &w in &workloads {
                let (init, measure) = w.sizes(nodes);
                let init = args.init_pods.unwrap_or(init);
                let measure = args.measure_pods.unwrap_or(measure);
                let o = if *mode == "in-process" {
                    in_process(w, nodes, init, measure, Duration::from_secs(args.timeout)).await?
                } else {
                    api(&args, w, nodes, init, measure).await?
                };
                report(mode, w, nodes, init, &o);
            }
        }
    }
    Ok(())
}

/// Binds by confirming in the scheduler's cache, as the pod informer would after a real bind.
struct CacheBinder {
    sched: Arc<OnceLock<Arc<Scheduler>>>,
    bound: Arc<Mutex<HashMap<String, Instant>>>,
    count: Arc<AtomicUsize>,
}

impl Plugin for CacheBinder {
    fn name(&self) -> &'static str {
        "CacheBinder"
    }
    fn points(&self) -> &'static [Point] {
        &[Point::Bind]
    }
    fn bind(&self, pod: Arc<PodInfo>, node: String) -> BoxFuture<'static, Status> {
        let sched = self.sched.get().cloned();
        let bound = self.bound.clone();
        let count = self.count.clone();
        Box::pin(async move {
            let Some(s) = sched else {
                return Status::error("not ready");
            };
            let mut info = PodInfo::clone(&pod);
            info.node_name = node;
            s.cache.lock().add_or_update_pod(Arc::new(info));
            s.queue
                .on_event(keelson_scheduler::framework::Event::AssignedPodAdd);
            bound.lock().insert(pod.key.clone(), Instant::now());
            count.fetch_add(1, Ordering::Relaxed);
            Status::ok()
        })
    }
}

async fn wait_count(
    count: &AtomicUsize,
    want: usize,
    timeout: Duration,
    what: &str,
) -> anyhow::Result<()> {
    let t0 = Instant::now();
    while count.load(Ordering::Relaxed) < want {
        if t0.elapsed() > timeout {
            bail!(
                "{what}: {} of {want} after {timeout:?}",
                count.load(Ordering::Relaxed)
            );
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(())
}

fn process_cpu() -> f64 {
    keelson_bench::procs::cpu_seconds(std::process::id()).unwrap_or(0.0)
}

async fn in_process(
    w: Workload,
    nodes: usize,
    init: usize,
    measure: usize,
    timeout: Duration,
) -> anyhow::Result<Outcome> {
    let mut fw = keelson_scheduler::testing::framework_with(Listers::empty());
    let cell = Arc::new(OnceLock::new());
    let bound = Arc::new(Mutex::new(HashMap::new()));
    let count = Arc::new(AtomicUsize::new(0));
    fw.bind = vec![Arc::new(CacheBinder {
        sched: cell.clone(),
        bound: bound.clone(),
        count: count.clone(),
    })];
    let sched = Scheduler::new(
        vec![fw],
        None,
        None,
        Duration::from_millis(100),
        Duration::from_secs(1),
    );
    let _ = cell.set(sched.clone());
    for i in 0..nodes {
        let n: Node = serde_json::from_value(w.node(i))?;
        sched.cache.lock().set_node(Arc::new(n));
    }
    let runner = tokio::spawn(sched.clone().run());
    let flusher = {
        let s = sched.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(50)).await;
                s.queue.flush();
            }
        })
    };
    for i in 0..init {
        let (_, p) = w.pod(false, i);
        let pod: Pod = serde_json::from_value(p)?;
        sched.queue.add(Arc::new(PodInfo::new(Arc::new(pod))));
    }
    wait_count(&count, init, timeout, "init pods").await?;
    // Build the measured pods first so that only scheduling is timed.
    let pods: Vec<Arc<PodInfo>> = (0..measure)
        .map(|i| {
            let (_, p) = w.pod(true, i);
            Ok(Arc::new(PodInfo::new(Arc::new(serde_json::from_value::<
                Pod,
            >(p)?))))
        })
        .collect::<anyhow::Result<_>>()?;
    let cpu0 = process_cpu();
    let t0 = Instant::now();
    let mut created = HashMap::new();
    for p in pods {
        created.insert(p.key.clone(), Instant::now());
        sched.queue.add(p);
    }
    wait_count(&count, init + measure, timeout, "measured pods").await?;
    let elapsed = t0.elapsed();
    let cpu = (process_cpu() - cpu0) / elapsed.as_secs_f64();
    let attempts = |result: &str| {
        sched
            .metrics
            .attempts
            .get_or_create(&vec![
                ("result", result.to_string()),
                ("profile", "default-scheduler".to_string()),
            ])
            .get()
    };
    eprintln!(
        "{} {nodes}: attempts scheduled={} unschedulable={} error={}",
        w.name(),
        attempts("scheduled"),
        attempts("unschedulable"),
        attempts("error")
    );
    runner.abort();
    flusher.abort();
    sched.queue.close();
    let mut latency = new_hist();
    let b = bound.lock();
    for (k, c) in &created {
        if let Some(t) = b.get(k) {
            latency.saturating_record(t.duration_since(*c).as_micros().max(1) as u64);
        }
    }
    Ok(Outcome {
        pods: measure,
        elapsed,
        latency,
        cpu_cores: Some(cpu),
    })
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Creates pods (namespace given) or nodes over `clients` tasks; returns the failures. With
/// `created`, records when each pod's create was sent.
async fn create_all(
    client: &Client,
    objs: Vec<(Option<String>, Value)>,
    clients: usize,
    created: Option<&Mutex<HashMap<String, Instant>>>,
) -> usize {
    let errors = Arc::new(AtomicUsize::new(0));
    futures::stream::iter(objs)
        .for_each_concurrent(clients, |(ns, obj)| {
            let client = client.clone();
            let errors = errors.clone();
            async move {
                if let (Some(c), Some(ns)) = (created, &ns) {
                    let name = obj["metadata"]["name"].as_str().unwrap_or("");
                    c.lock().insert(format!("{ns}/{name}"), Instant::now());
                }
                let r = match ns {
                    Some(ns) => {
                        let api: Api<Pod> = Api::namespaced(client, &ns);
                        match serde_json::from_value::<Pod>(obj) {
                            Ok(p) => api.create(&PostParams::default(), &p).await.map(|_| ()),
                            Err(e) => Err(kube::Error::SerdeError(e)),
                        }
                    }
                    None => {
                        let api: Api<Node> = Api::all(client);
                        match serde_json::from_value::<Node>(obj) {
                            Ok(n) => api.create(&PostParams::default(), &n).await.map(|_| ()),
                            Err(e) => Err(kube::Error::SerdeError(e)),
                        }
                    }
                };
                if let Err(e) = r
                    && errors.fetch_add(1, Ordering::Relaxed) < 5
                {
                    eprintln!("create failed: {e}");
                }
            }
        })
        .await;
    errors.load(Ordering::Relaxed)
}

/// Strips what the API server sets itself; priorities become PriorityClass names (the
/// Priority admission plugin refuses bare priorities).
fn for_api(mut p: Value) -> Value {
    if let Some(m) = p["metadata"].as_object_mut() {
        m.remove("uid");
        m.remove("creationTimestamp");
    }
    if let Some(spec) = p["spec"].as_object_mut()
        && let Some(prio) = spec.remove("priority")
    {
        spec.insert("priorityClassName".into(), json!(format!("bench-{prio}")));
    }
    p
}

async fn api(
    args: &SchedulerArgs,
    w: Workload,
    nodes: usize,
    init: usize,
    measure: usize,
) -> anyhow::Result<Outcome> {
    let keelson = match &args.keelson {
        Some(k) => k.clone(),
        None => std::env::current_exe()?.with_file_name("keelson"),
    };
    let timeout = Duration::from_secs(args.timeout);
    let cluster = start_cluster(&keelson, args.stores)?;
    let kc = Kubeconfig::read_from(&cluster.kubeconfig)?;
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    let client = Client::try_from(config)?;
    for ns in ["sched-0", "sched-1"] {
        let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
        api.create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": ns}}))?,
        )
        .await
        .with_context(|| format!("creating namespace {ns}"))?;
    }
    for prio in [1, 10] {
        let api: Api<k8s_openapi::api::scheduling::v1::PriorityClass> = Api::all(client.clone());
        api.create(
            &PostParams::default(),
            &serde_json::from_value(
                json!({"metadata": {"name": format!("bench-{prio}")}, "value": prio}),
            )?,
        )
        .await
        .context("creating priority classes")?;
    }
    let errs = create_all(
        &client,
        (0..nodes).map(|i| (None, w.node(i))).collect(),
        args.clients,
        None,
    )
    .await;
    if errs > 0 {
        bail!("{errs} node creates failed");
    }
    let log = tempfile::NamedTempFile::new()?;
    let metrics_port = keelson_client::ports::free_port()?;
    let sched = Proc(
        Command::new(&keelson)
            .arg("scheduler")
            .arg(format!("--kubeconfig={}", cluster.kubeconfig.display()))
            .args([
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                "--kube-api-qps=5000",
                "--kube-api-burst=10000",
            ])
            .arg(format!("--secure-port={metrics_port}"))
            .stdout(Stdio::null())
            .stderr(log.reopen()?)
            .spawn()
            .context("starting the scheduler")?,
    );
    let sched_pid = sched.0.id();
    // Watch pods: when each got bound; force-delete preemption victims (the kubelet's part).
    let bound: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let count = Arc::new(AtomicUsize::new(0));
    {
        let bound = bound.clone();
        let count = count.clone();
        let pods: Api<Pod> = Api::all(client.clone());
        let client = client.clone();
        tokio::spawn(async move {
            let stream = watcher(pods, watcher::Config::default()).default_backoff();
            futures::pin_mut!(stream);
            while let Some(ev) = stream.next().await {
                let Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) = ev else {
                    continue;
                };
                let ns = p.namespace().unwrap_or_default();
                let key = format!("{ns}/{}", p.name_any());
                if p.metadata.deletion_timestamp.is_some() {
                    let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
                    let name = p.name_any();
                    tokio::spawn(async move {
                        let _ = api
                            .delete(&name, &DeleteParams::default().grace_period(0))
                            .await;
                    });
                    continue;
                }
                let on_node = p
                    .spec
                    .as_ref()
                    .and_then(|s| s.node_name.as_deref())
                    .is_some_and(|n| !n.is_empty());
                if on_node
                    && let std::collections::hash_map::Entry::Vacant(e) = bound.lock().entry(key)
                {
                    e.insert(Instant::now());
                    count.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    let init_pods: Vec<(Option<String>, Value)> = (0..init)
        .map(|i| {
            let (ns, p) = w.pod(false, i);
            (Some(ns), for_api(p))
        })
        .collect();
    let errs = create_all(&client, init_pods, args.clients, None).await;
    if errs > 0 {
        bail!("{errs} init pod creates failed");
    }
    wait_count(&count, init, timeout, "init pods bound").await?;
    let measured: Vec<(Option<String>, Value)> = (0..measure)
        .map(|i| {
            let (ns, p) = w.pod(true, i);
            (Some(ns), for_api(p))
        })
        .collect();
    let created: Mutex<HashMap<String, Instant>> = Mutex::default();
    let cpu0 = keelson_bench::procs::cpu_seconds(sched_pid).unwrap_or(0.0);
    let t0 = Instant::now();
    let e = create_all(&client, measured, args.clients, Some(&created)).await;
    if e > 0 {
        bail!("{e} measured pod creates failed");
    }
    // Preemption victims are gone from the count's point of view only when bound pods remain;
    // count measured pods bound instead.
    let t_wait = Instant::now();
    loop {
        let done = {
            let b = bound.lock();
            created.lock().keys().filter(|k| b.contains_key(*k)).count()
        };
        if done >= measure {
            break;
        }
        if t_wait.elapsed() > timeout {
            bail!("measured pods: {done} of {measure} bound after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let b = bound.lock().clone();
    let c = created.lock().clone();
    let last = c
        .keys()
        .filter_map(|k| b.get(k))
        .max()
        .copied()
        .unwrap_or(t0);
    let elapsed = last - t0;
    let cpu = (keelson_bench::procs::cpu_seconds(sched_pid).unwrap_or(0.0) - cpu0)
        / elapsed.as_secs_f64();
    let mut latency = new_hist();
    for (k, t) in &c {
        if let Some(bt) = b.get(k) {
            latency.saturating_record(bt.saturating_duration_since(*t).as_micros().max(1) as u64);
        }
    }
    // The scheduler's own count of attempts, from its /metrics.
    if let Ok(out) = Command::new("curl")
        .args(["-sk", &format!("https://127.0.0.1:{metrics_port}/metrics")])
        .output()
    {
        let text = String::from_utf8_lossy(&out.stdout);
        let attempts: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("scheduler_schedule_attempts_total"))
            .collect();
        eprintln!("{} {nodes}: {}", w.name(), attempts.join("; "));
    }
    drop(sched);
    drop(cluster);
    Ok(Outcome {
        pods: measure,
        elapsed,
        latency,
        cpu_cores: Some(cpu),
    })
}
