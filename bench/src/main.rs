//! `keelson-bench`: load generators.
//!
//! `keelson-bench store` drives the etcd v3 API of keelson-store (and, with `--compare-etcd`, of
//! a real etcd) with puts, ranges and watches.
//!
//! `keelson-bench api` measures the apiserver through a real Kubernetes client (kube-rs): pod
//! create throughput and latency with N concurrent clients, gets, watch fan-out latency to W
//! watchers, and full LISTs of large namespaces served from the watch cache, with the
//! apiserver's RSS. It starts its own cluster (`keelson up` with one apiserver on a temporary
//! data directory) unless `--kubeconfig` points at one. Every phase is bounded by counts.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

mod authz;
mod controllers;
mod dns;
mod hollow;
mod proxy;
mod quota;
mod scheduler;
mod secrets;
mod store;
mod up;
mod webhook;

use keelson_bench::cluster::Cluster;
use keelson_bench::procs::{child_pids, rss_mib};

use anyhow::Context;
use clap::{Parser, Subcommand};
use futures::{StreamExt, TryStreamExt};
use hdrhistogram::Histogram;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, ListParams, PostParams, WatchEvent, WatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

#[derive(Parser)]
#[command(name = "keelson-bench", about = "Keelson load generators")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Apiserver throughput and latency: pod create/get/list/watch.
    Api(ApiArgs),
    /// Store throughput and latency over the etcd v3 API, optionally against etcd too.
    Store(store::StoreArgs),
    /// Controller-manager throughput: Deployments to running pods, then a rolling update.
    Controllers(controllers::ControllersArgs),
    /// Scheduler throughput (scheduler_perf's workloads), in-process and through the API.
    Scheduler(scheduler::SchedulerArgs),
    /// Hollow nodes: registration time, RSS and CPU per node, heartbeat lateness.
    Hollow(hollow::HollowArgs),
    /// Cluster DNS: queries per second on one server thread.
    Dns(dns::DnsArgs),
    /// Service proxy: network programming latency and nft sync time.
    Proxy(proxy::ProxyArgs),
    /// Secret create latency with encryption at rest off and with KMS v2 (`keelson up
    /// --encryption none|kms`).
    Secrets(secrets::SecretsArgs),
    /// Pod get/create latency of a non-admin user with `--authorization-mode` AlwaysAllow and
    /// Node,RBAC (1,000 Roles and RoleBindings of other users around).
    Authz(authz::AuthzArgs),
    /// Pod create latency with no admission webhook, a validating one, and a mutating plus
    /// a validating one, beside the webhook round trip alone.
    Webhook(webhook::WebhookArgs),
    /// (For `webhook`: POSTs a review to its webhook server for each line on stdin, from a
    /// process of its own, and prints each round trip in µs.)
    #[command(hide = true)]
    WebhookProbe(webhook::ProbeArgs),
    /// Pod create latency with no quota, a ResourceQuota, and a ResourceQuota plus LimitRange
    /// defaults; parallel creates with and without a quota; the charges checked.
    Quota(quota::QuotaArgs),
    /// `keelson up`: time to ready (cold and warm) and the RSS of every component.
    Up(up::UpArgs),
    /// Scale runs (as `keelson bench density|load`): hollow nodes, ClusterLoader2's workloads,
    /// the Kubernetes SLIs and SLOs, a run directory with samples, summary and plots.
    #[command(flatten)]
    Scale(keelson_bench::scale::Plan),
}

#[derive(clap::Args, Debug)]
struct ApiArgs {
    /// Use an existing cluster instead of starting one.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// The keelson binary used to start a cluster (default: next to this one).
    #[arg(long)]
    keelson: Option<PathBuf>,
    /// Store members of the started cluster.
    #[arg(long, default_value_t = 3)]
    stores: usize,
    /// More `keelson up` flags for the started cluster (repeatable), e.g.
    /// `--up-arg=--audit=none`.
    #[arg(long = "up-arg", allow_hyphen_values = true)]
    up_args: Vec<String>,
    /// Concurrent clients.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Pods created in the create phase.
    #[arg(long, default_value_t = 2000)]
    pods: usize,
    /// Gets in the get phase.
    #[arg(long, default_value_t = 5000)]
    gets: usize,
    /// Paged LISTs (`limit=500`, the first page) issued by the clients after the gets.
    #[arg(long, default_value_t = 500)]
    lists: usize,
    /// Watchers in the watch phase.
    #[arg(long, default_value_t = 100)]
    watchers: usize,
    /// Pods created while the watchers listen.
    #[arg(long, default_value_t = 500)]
    watch_pods: usize,
    /// Namespace sizes at which a full LIST is timed (pods are added up to each size).
    #[arg(long, value_delimiter = ',', default_value = "5000")]
    list_sizes: Vec<usize>,
    /// Namespace used for the run (created; must not exist).
    #[arg(long, default_value = "bench")]
    namespace: String,
}

fn pod(name: &str) -> Pod {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "bench", "tier": "load"}},
        "spec": {"containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10", "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]}
    }))
    .expect("a valid pod")
}

/// Starts `keelson up` with one apiserver and no controller-managers (benches that need one
/// start it themselves, to measure it alone).
pub(crate) fn start_cluster(keelson: &Path, stores: usize) -> anyhow::Result<Cluster> {
    start_cluster_with(keelson, stores, &[])
}

/// [`start_cluster`] with more `keelson up` flags.
pub(crate) fn start_cluster_with(
    keelson: &Path,
    stores: usize,
    extra: &[&str],
) -> anyhow::Result<Cluster> {
    let mut args: Vec<String> = [
        "--apiservers",
        "1",
        "--controller-managers",
        "0",
        "--schedulers",
        "0",
        "--nodes",
        "0",
        "--stores",
        &stores.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    Cluster::start(keelson, &args)
}

/// PIDs of the `keelson apiserver` children of `parent`.
fn apiserver_pids(parent: u32) -> Vec<u32> {
    child_pids(parent, "apiserver")
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("histogram bounds")
}

/// Runs `total` operations over `clients` tasks; returns (elapsed, latency histogram in µs, errors).
pub(crate) async fn run_ops<F, Fut>(
    clients: usize,
    total: usize,
    op: F,
) -> (Duration, Histogram<u64>, usize)
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let (elapsed, h, errors, _) = run_ops_until(clients, total, None, op).await;
    (elapsed, h, errors)
}

/// [`run_ops`] that also stops starting operations at `deadline`; returns (elapsed, latency
/// histogram in µs, errors, operations done).
pub(crate) async fn run_ops_until<F, Fut>(
    clients: usize,
    total: usize,
    deadline: Option<Instant>,
    op: F,
) -> (Duration, Histogram<u64>, usize, usize)
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let op = Arc::new(op);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let next = next.clone();
        let op = op.clone();
        tasks.push(tokio::spawn(async move {
            let mut h = new_hist();
            let mut errors = 0;
            loop {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let t = Instant::now();
                if !op(i).await {
                    errors += 1;
                }
                let _ = h.record(t.elapsed().as_micros().max(1) as u64);
            }
            (h, errors)
        }));
    }
    let mut all = new_hist();
    let mut errors = 0;
    for t in tasks {
        if let Ok((h, e)) = t.await {
            let _ = all.add(&h);
            errors += e;
        }
    }
    let done = all.len() as usize;
    (start.elapsed(), all, errors, done)
}

pub(crate) fn row(
    name: &str,
    n: usize,
    elapsed: Duration,
    h: &Histogram<u64>,
    errors: usize,
) -> String {
    format!(
        "| {name} | {n} | {:.0}/s | {:.1} | {:.1} | {:.1} | {:.1} | {errors} |",
        n as f64 / elapsed.as_secs_f64(),
        ms(h, 0.5),
        ms(h, 0.9),
        ms(h, 0.99),
        h.max() as f64 / 1000.0
    )
}

async fn api(args: ApiArgs) -> anyhow::Result<()> {
    let cluster = match &args.kubeconfig {
        Some(_) => None,
        None => {
            let keelson = match &args.keelson {
                Some(k) => k.clone(),
                None => std::env::current_exe()?.with_file_name("keelson"),
            };
            let extra: Vec<&str> = args.up_args.iter().map(String::as_str).collect();
            Some(start_cluster_with(&keelson, args.stores, &extra)?)
        }
    };
    let kc_path = args
        .kubeconfig
        .clone()
        .or_else(|| cluster.as_ref().map(|c| c.kubeconfig.clone()))
        .context("no kubeconfig")?;
    let apiserver = cluster
        .as_ref()
        .and_then(|c| apiserver_pids(c.up.id()).first().copied());
    let kc = Kubeconfig::read_from(&kc_path)
        .with_context(|| format!("reading {}", kc_path.display()))?;
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    let client = Client::try_from(config)?;
    let ns = args.namespace.clone();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({"metadata": {"name": ns}}))?,
        )
        .await
        .with_context(|| format!("creating namespace {ns} (it must not exist)"))?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let mut report = Vec::new();
    report.push(
        "| phase | ops | throughput | p50 ms | p90 ms | p99 ms | max ms | errors |".to_string(),
    );
    report.push("|---|---|---|---|---|---|---|---|".to_string());

    // Create.
    let p = pods.clone();
    let (el, h, err) = run_ops(args.clients, args.pods, move |i| {
        let p = p.clone();
        async move {
            p.create(&PostParams::default(), &pod(&format!("p-{i}")))
                .await
                .is_ok()
        }
    })
    .await;
    report.push(row("pod create", args.pods, el, &h, err));
    let mut created = args.pods;

    // Get.
    let p = pods.clone();
    let n = created;
    let (el, h, err) = run_ops(args.clients, args.gets, move |i| {
        let p = p.clone();
        async move { p.get(&format!("p-{}", (i * 7919) % n)).await.is_ok() }
    })
    .await;
    report.push(row("pod get", args.gets, el, &h, err));

    // List: the first page of 500, as informers and paging clients ask for it.
    let p = pods.clone();
    let (el, h, err) = run_ops(args.clients, args.lists, move |_| {
        let p = p.clone();
        async move { p.list(&ListParams::default().limit(500)).await.is_ok() }
    })
    .await;
    report.push(row("pod list (limit=500)", args.lists, el, &h, err));

    // Watch fan-out: W watchers, then create pods; latency from the create request to each
    // watcher's ADDED event.
    let list = pods.list_metadata(&ListParams::default().limit(1)).await?;
    let rv = list.metadata.resource_version.unwrap_or_default();
    let sent: Arc<std::sync::Mutex<HashMap<String, Instant>>> = Arc::default();
    let mut watchers = Vec::new();
    for _ in 0..args.watchers {
        let p = pods.clone();
        let rv = rv.clone();
        let sent = sent.clone();
        let want = args.watch_pods;
        watchers.push(tokio::spawn(async move {
            let mut h = new_hist();
            let mut seen = 0;
            let stream = match p.watch(&WatchParams::default().timeout(290), &rv).await {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("a watcher could not start: {e}");
                    return (h, seen);
                }
            };
            let mut stream = stream.boxed();
            while seen < want {
                match tokio::time::timeout(Duration::from_secs(120), stream.try_next()).await {
                    Ok(Ok(Some(WatchEvent::Added(o)))) => {
                        let name = o.metadata.name.unwrap_or_default();
                        if let Some(t) = sent.lock().map(|m| m.get(&name).copied()).ok().flatten() {
                            let _ = h.record(t.elapsed().as_micros().max(1) as u64);
                            seen += 1;
                        }
                    }
                    Ok(Ok(Some(_))) => {}
                    other => {
                        eprintln!("a watcher ended after {seen} events: {other:?}");
                        break;
                    }
                }
            }
            (h, seen)
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let p = pods.clone();
    let s = sent.clone();
    let base = created;
    let start = Instant::now();
    let (_, _, err) = run_ops(args.clients, args.watch_pods, move |i| {
        let p = p.clone();
        let s = s.clone();
        async move {
            let name = format!("p-{}", base + i);
            if let Ok(mut m) = s.lock() {
                m.insert(name.clone(), Instant::now());
            }
            p.create(&PostParams::default(), &pod(&name)).await.is_ok()
        }
    })
    .await;
    created += args.watch_pods;
    let mut wh = new_hist();
    let mut delivered = 0;
    for w in watchers {
        if let Ok((h, seen)) = w.await {
            let _ = wh.add(&h);
            delivered += seen;
        }
    }
    let fan = start.elapsed();
    report.push(row(
        &format!(
            "watch delivery ({} watchers x {} pods)",
            args.watchers, args.watch_pods
        ),
        delivered,
        fan,
        &wh,
        args.watchers * args.watch_pods - delivered + err,
    ));

    // Full LISTs at growing sizes.
    let mut lists = vec!["| pods in namespace | create throughput to reach it | full LIST (min of 3) | LIST limit=500 pages | apiserver RSS |".to_string(), "|---|---|---|---|---|".to_string()];
    for size in &args.list_sizes {
        let mut fill = String::from("-");
        if *size > created {
            let p = pods.clone();
            let base = created;
            let add = size - created;
            let (el, _, _) = run_ops(args.clients, add, move |i| {
                let p = p.clone();
                async move {
                    p.create(&PostParams::default(), &pod(&format!("p-{}", base + i)))
                        .await
                        .is_ok()
                }
            })
            .await;
            fill = format!("{:.0}/s", add as f64 / el.as_secs_f64());
            created = *size;
        }
        let mut best = Duration::MAX;
        let mut count = 0;
        for _ in 0..3 {
            let t = Instant::now();
            let l = pods.list(&ListParams::default()).await?;
            best = best.min(t.elapsed());
            count = l.items.len();
        }
        let t = Instant::now();
        let mut token: Option<String> = None;
        let mut paged = 0;
        loop {
            let mut lp = ListParams::default().limit(500);
            if let Some(c) = &token {
                lp = lp.continue_token(c);
            }
            let l = pods.list(&lp).await?;
            paged += l.items.len();
            token = l.metadata.continue_.filter(|c| !c.is_empty());
            if token.is_none() {
                break;
            }
        }
        let paged_time = t.elapsed();
        let rss = apiserver
            .and_then(rss_mib)
            .map(|m| format!("{m:.0} MiB"))
            .unwrap_or_else(|| "n/a".into());
        lists.push(format!(
            "| {count} | {fill} | {:.2} s | {:.2} s ({paged} items) | {rss} |",
            best.as_secs_f64(),
            paged_time.as_secs_f64()
        ));
    }
    println!(
        "clients={} stores={} pods={} (keelson-bench api)\n",
        args.clients, args.stores, args.pods
    );
    for l in report {
        println!("{l}");
    }
    println!();
    for l in lists {
        println!("{l}");
    }
    drop(cluster);
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.cmd {
        Cmd::Api(a) => rt.block_on(api(a)),
        Cmd::Store(a) => rt.block_on(store::run(a)),
        Cmd::Controllers(a) => rt.block_on(controllers::run(a)),
        Cmd::Scheduler(a) => rt.block_on(scheduler::run(a)),
        Cmd::Hollow(a) => rt.block_on(hollow::run(a)),
        Cmd::Dns(a) => rt.block_on(dns::run(a)),
        Cmd::Proxy(a) => rt.block_on(proxy::run(a)),
        Cmd::Secrets(a) => rt.block_on(secrets::run(a)),
        Cmd::Authz(a) => rt.block_on(authz::run(a)),
        Cmd::Webhook(a) => rt.block_on(webhook::run(a)),
        Cmd::WebhookProbe(a) => rt.block_on(webhook::probe(a)),
        Cmd::Quota(a) => rt.block_on(quota::run(a)),
        Cmd::Up(a) => rt.block_on(up::run(a)),
        Cmd::Scale(plan) => rt.block_on(scale(plan)),
    }
}

/// A scale run with the `keelson` binary beside this one; Ctrl-C ends the workload early (the
/// run still reports and cleans up).
async fn scale(plan: keelson_bench::scale::Plan) -> anyhow::Result<()> {
    let keelson = std::env::current_exe()?.with_file_name("keelson");
    let shutdown = tokio_util::sync::CancellationToken::new();
    let token = shutdown.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        token.cancel();
    });
    keelson_bench::scale::run(plan, &keelson, shutdown).await?;
    Ok(())
}
