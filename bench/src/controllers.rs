//! `keelson-bench controllers`: how fast the controller-manager turns Deployments into pods.
//!
//! Starts a cluster (`keelson up` with one apiserver) and one `keelson controller-manager`
//! (all controllers, no leader election), plays the kubelet itself (every new pod is marked
//! Running and Ready with a status patch), then:
//!
//! 1. **create**: D Deployments of R replicas; timed until every pod exists and every Deployment
//!    reports R available replicas of its current generation;
//! 2. **rolling update**: a new image for every Deployment; timed until all are complete again
//!    and the old pods are gone.
//!
//! For each phase it reports pods/s and the controller-manager's CPU (cores, from
//! /proc/<pid>/stat) and peak RSS. Counts bound every phase; a phase that does not finish within
//! `--timeout` fails the run.

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Config, ResourceExt};
use serde_json::json;

use keelson_bench::procs::{child_pids, cpu_seconds, rss_mib};

use crate::start_cluster;

#[derive(clap::Args, Debug)]
pub struct ControllersArgs {
    /// The keelson binary (default: next to this one).
    #[arg(long)]
    keelson: Option<PathBuf>,
    /// Store members of the started cluster.
    #[arg(long, default_value_t = 3)]
    stores: usize,
    /// Deployments created.
    #[arg(long, default_value_t = 100)]
    deployments: usize,
    /// Replicas per Deployment.
    #[arg(long, default_value_t = 10)]
    replicas: i32,
    /// The controller-manager's --kube-api-qps (its burst is twice this).
    #[arg(long, default_value_t = 1000.0)]
    kube_api_qps: f64,
    /// The controller-manager's --concurrent-deployment-syncs and --concurrent-replicaset-syncs.
    #[arg(long, default_value_t = 5)]
    concurrent_syncs: usize,
    /// Concurrent clients creating Deployments and marking pods ready.
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// Seconds each phase may take.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
    /// Namespace used for the run.
    #[arg(long, default_value = "bench")]
    namespace: String,
}

struct ControllerManager(Child);

impl Drop for ControllerManager {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn deployment(name: &str, replicas: i32) -> Deployment {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10"}]}
            }
        }
    }))
    .expect("a valid deployment")
}

fn complete(d: &Deployment, replicas: i32) -> bool {
    let s = d.status.clone().unwrap_or_default();
    s.observed_generation >= d.metadata.generation
        && s.updated_replicas == Some(replicas)
        && s.available_replicas == Some(replicas)
        && s.replicas == Some(replicas)
}

/// Marks every new pod in the namespace Running and Ready (the kubelet's part).
fn fake_kubelet(client: Client, ns: &str, workers: usize, seen: Arc<AtomicUsize>) {
    let pods: Api<Pod> = Api::namespaced(client, ns);
    let (tx, rx) = async_channel(workers * 64);
    for _ in 0..workers {
        let rx = rx.clone();
        let pods = pods.clone();
        tokio::spawn(async move {
            while let Ok((name, ip)) = rx.recv().await {
                let now = k8s_openapi::jiff::Timestamp::now()
                    .strftime("%Y-%m-%dT%H:%M:%SZ")
                    .to_string();
                let patch = json!({"status": {
                    "phase": "Running",
                    "podIP": ip,
                    "startTime": now,
                    "conditions": [
                        {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
                        {"type": "Ready", "status": "True", "lastTransitionTime": now},
                    ],
                }});
                let _ = pods
                    .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await;
            }
        });
    }
    tokio::spawn(async move {
        let mut done: HashSet<String> = HashSet::new();
        let stream = watcher(pods, watcher::Config::default()).default_backoff();
        futures::pin_mut!(stream);
        let mut n = 0u32;
        while let Some(ev) = stream.next().await {
            let Ok(ev) = ev else { continue };
            let pod = match ev {
                watcher::Event::Apply(p) | watcher::Event::InitApply(p) => p,
                _ => continue,
            };
            let uid = pod.uid().unwrap_or_default();
            if pod.metadata.deletion_timestamp.is_some() || done.contains(&uid) {
                continue;
            }
            done.insert(uid);
            seen.fetch_add(1, Ordering::Relaxed);
            n += 1;
            let ip = format!("10.{}.{}.{}", (n >> 16) & 255, (n >> 8) & 255, n & 255);
            if tx.send((pod.name_any(), ip)).await.is_err() {
                return;
            }
        }
    });
}

/// A small multi-consumer channel over tokio's mpsc.
#[allow(clippy::type_complexity)]
fn async_channel(cap: usize) -> (tokio::sync::mpsc::Sender<(String, String)>, SharedRx) {
    let (tx, rx) = tokio::sync::mpsc::channel(cap);
    (tx, SharedRx(Arc::new(tokio::sync::Mutex::new(rx))))
}

#[derive(Clone)]
struct SharedRx(Arc<tokio::sync::Mutex<tokio::sync::mpsc::Receiver<(String, String)>>>);

impl SharedRx {
    async fn recv(&self) -> Result<(String, String), ()> {
        self.0.lock().await.recv().await.ok_or(())
    }
}

struct Phase {
    name: &'static str,
    pods: usize,
    elapsed: Duration,
    pods_done: Duration,
    cpu_cores: f64,
    peak_rss: f64,
    /// Cores used by the apiserver, the store members (together) and this process.
    others: [f64; 3],
}

/// CPU seconds of the apiserver, the store members and this process.
fn other_cpu(up: u32) -> [f64; 3] {
    let sum = |pids: Vec<u32>| pids.into_iter().filter_map(cpu_seconds).sum::<f64>();
    [
        sum(child_pids(up, "apiserver")),
        sum(child_pids(up, "store")),
        cpu_seconds(std::process::id()).unwrap_or(0.0),
    ]
}

fn cores(after: [f64; 3], before: [f64; 3], secs: f64) -> [f64; 3] {
    [0, 1, 2].map(|i| (after[i] - before[i]) / secs)
}

/// Samples the controller-manager's RSS until `stop` is set; returns the peak.
fn rss_sampler(pid: u32, stop: Arc<AtomicU64>) -> tokio::task::JoinHandle<f64> {
    tokio::spawn(async move {
        let mut peak: f64 = 0.0;
        while stop.load(Ordering::Relaxed) == 0 {
            if let Some(r) = rss_mib(pid) {
                peak = peak.max(r);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        peak
    })
}

/// Waits until `f` holds; returns when it first did.
async fn wait_until(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> bool,
) -> anyhow::Result<Instant> {
    let t0 = Instant::now();
    while !f() {
        if t0.elapsed() > timeout {
            bail!("{what}: not done after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(Instant::now())
}

pub async fn run(args: ControllersArgs) -> anyhow::Result<()> {
    let keelson = match &args.keelson {
        Some(k) => k.clone(),
        None => std::env::current_exe()?.with_file_name("keelson"),
    };
    let cluster = start_cluster(&keelson, args.stores)?;
    let log = tempfile::NamedTempFile::new()?;
    let cm = ControllerManager(
        Command::new(&keelson)
            .arg("controller-manager")
            .arg(format!("--kubeconfig={}", cluster.kubeconfig.display()))
            .args(["--leader-elect=false", "--secure-port=0"])
            .arg(format!("--kube-api-qps={}", args.kube_api_qps))
            .arg(format!(
                "--kube-api-burst={}",
                (args.kube_api_qps * 2.0) as u32
            ))
            .arg(format!(
                "--concurrent-deployment-syncs={}",
                args.concurrent_syncs
            ))
            .arg(format!(
                "--concurrent-replicaset-syncs={}",
                args.concurrent_syncs
            ))
            .stdout(Stdio::null())
            .stderr(log.reopen()?)
            .spawn()
            .context("starting the controller-manager")?,
    );
    let cm_pid = cm.0.id();
    let kc = Kubeconfig::read_from(&cluster.kubeconfig)?;
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    let client = Client::try_from(config)?;
    let ns = args.namespace.clone();
    let nss: Api<Namespace> = Api::all(client.clone());
    nss.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": ns}}))?,
    )
    .await
    .with_context(|| format!("creating namespace {ns}"))?;

    let seen = Arc::new(AtomicUsize::new(0));
    fake_kubelet(client.clone(), &ns, args.clients, seen.clone());
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let (store, writer): (Store<Deployment>, _) = reflector::store();
    let refl = reflector::reflector(
        writer,
        watcher(deployments.clone(), watcher::Config::default()),
    )
    .default_backoff()
    .for_each(|_| async {});
    tokio::spawn(refl);
    store.wait_until_ready().await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let total = args.deployments * args.replicas.max(0) as usize;
    let timeout = Duration::from_secs(args.timeout);
    let names: Vec<String> = (0..args.deployments).map(|i| format!("d-{i}")).collect();
    let mut phases = Vec::new();

    // Phase 1: create.
    let stop = Arc::new(AtomicU64::new(0));
    let rss = rss_sampler(cm_pid, stop.clone());
    let cpu0 = cpu_seconds(cm_pid).unwrap_or(0.0);
    let up_pid = cluster.up.id();
    let others0 = other_cpu(up_pid);
    let t0 = Instant::now();
    futures::stream::iter(names.iter().cloned())
        .for_each_concurrent(args.clients, |name| {
            let api = deployments.clone();
            let d = deployment(&name, args.replicas);
            async move {
                if let Err(e) = api.create(&PostParams::default(), &d).await {
                    eprintln!("create {name}: {e}");
                }
            }
        })
        .await;
    let pods_done = wait_until("all pods created", timeout, || {
        seen.load(Ordering::Relaxed) >= total
    })
    .await?
        - t0;
    let replicas = args.replicas;
    wait_until("all deployments available", timeout, || {
        let s = store.state();
        s.len() == args.deployments && s.iter().all(|d| complete(d, replicas))
    })
    .await?;
    let elapsed = t0.elapsed();
    let cpu = cpu_seconds(cm_pid).unwrap_or(0.0) - cpu0;
    stop.store(1, Ordering::Relaxed);
    phases.push(Phase {
        name: "create",
        pods: total,
        elapsed,
        pods_done,
        cpu_cores: cpu / elapsed.as_secs_f64(),
        peak_rss: rss.await.unwrap_or(0.0),
        others: cores(other_cpu(up_pid), others0, elapsed.as_secs_f64()),
    });

    // Phase 2: rolling update of every Deployment.
    let stop = Arc::new(AtomicU64::new(0));
    let rss = rss_sampler(cm_pid, stop.clone());
    let seen_before = seen.load(Ordering::Relaxed);
    let cpu0 = cpu_seconds(cm_pid).unwrap_or(0.0);
    let others0 = other_cpu(up_pid);
    let t0 = Instant::now();
    futures::stream::iter(names.iter().cloned())
        .for_each_concurrent(args.clients, |name| {
            let api = deployments.clone();
            let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10-v2"}]}}}});
            async move {
                if let Err(e) = api
                    .patch(&name, &PatchParams::default(), &Patch::Strategic(&patch))
                    .await
                {
                    eprintln!("update {name}: {e}");
                }
            }
        })
        .await;
    let pods_done = wait_until("all new pods created", timeout, || {
        seen.load(Ordering::Relaxed) >= seen_before + total
    })
    .await?
        - t0;
    wait_until("all deployments rolled out", timeout, || {
        let s = store.state();
        s.iter().all(|d| complete(d, replicas))
    })
    .await?;
    // Old pods gone.
    let deadline = Instant::now() + timeout;
    loop {
        let n = pods
            .list_metadata(&ListParams::default())
            .await?
            .items
            .len();
        if n == total {
            break;
        }
        if Instant::now() > deadline {
            bail!("old pods not gone: {n} pods, want {total}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let elapsed = t0.elapsed();
    let cpu = cpu_seconds(cm_pid).unwrap_or(0.0) - cpu0;
    stop.store(1, Ordering::Relaxed);
    phases.push(Phase {
        name: "rolling update",
        pods: total,
        elapsed,
        pods_done,
        cpu_cores: cpu / elapsed.as_secs_f64(),
        peak_rss: rss.await.unwrap_or(0.0),
        others: cores(other_cpu(up_pid), others0, elapsed.as_secs_f64()),
    });

    println!(
        "controller-manager: {} Deployments x {} replicas, --kube-api-qps {}, --concurrent-*-syncs {}",
        args.deployments, args.replicas, args.kube_api_qps, args.concurrent_syncs
    );
    println!(
        "| phase | pods | all pods created | pods/s | all available | controller-manager CPU (cores) | CM CPU per 500 pods/s | CM peak RSS (MiB) | apiserver / stores / bench-as-kubelet CPU (cores) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for p in &phases {
        let rate = p.pods as f64 / p.pods_done.as_secs_f64();
        println!(
            "| {} | {} | {:.1} s | {:.0} | {:.1} s | {:.2} | {:.2} | {:.0} | {:.2} / {:.2} / {:.2} |",
            p.name,
            p.pods,
            p.pods_done.as_secs_f64(),
            rate,
            p.elapsed.as_secs_f64(),
            p.cpu_cores,
            p.cpu_cores * 500.0 / rate,
            p.peak_rss,
            p.others[0],
            p.others[1],
            p.others[2]
        );
    }
    drop(cm);
    drop(cluster);
    Ok(())
}
