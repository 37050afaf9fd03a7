//! `keelson-bench hollow`: what a fleet of hollow nodes costs. Starts a cluster (`keelson up`
//! with one apiserver, no nodes) and one `keelson node --hollow --count N` process, waits until
//! every node is registered and Ready, then for `--measure` seconds samples the fleet's RSS
//! and CPU and the age of every node Lease (how late heartbeats are).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ListParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

use keelson_bench::cluster::{Terminating, node_ready};
use keelson_bench::procs::{child_pids, cpu_seconds, rss_mib};

use crate::start_cluster;

#[derive(clap::Args, Debug)]
pub struct HollowArgs {
    /// The keelson binary (default: next to this one).
    #[arg(long)]
    keelson: Option<PathBuf>,
    /// Store members of the started cluster.
    #[arg(long, default_value_t = 3)]
    stores: usize,
    /// Hollow nodes in the one process.
    #[arg(long, default_value_t = 500)]
    count: usize,
    /// `shared` or `per-node` pod watches.
    #[arg(long, default_value = "shared")]
    watch: String,
    /// Seconds of steady state measured after every node is Ready.
    #[arg(long, default_value_t = 60)]
    measure: u64,
    /// Seconds registration may take.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
}

pub async fn run(args: HollowArgs) -> anyhow::Result<()> {
    let keelson = match &args.keelson {
        Some(k) => k.clone(),
        None => std::env::current_exe()?.with_file_name("keelson"),
    };
    let cluster = start_cluster(&keelson, args.stores)?;
    let log = tempfile::NamedTempFile::new()?;
    let t0 = Instant::now();
    let fleet = Terminating(
        Command::new(&keelson)
            .args(["node", "--hollow", "--port=0", "--kube-api-qps=0"])
            .arg(format!("--count={}", args.count))
            .arg(format!("--hollow-watch={}", args.watch))
            .arg(format!("--kubeconfig={}", cluster.kubeconfig.display()))
            .stdout(Stdio::null())
            .stderr(log.reopen()?)
            .spawn()
            .context("starting the hollow nodes")?,
    );
    let pid = fleet.0.id();
    let kc = Kubeconfig::read_from(&cluster.kubeconfig)?;
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    let client = Client::try_from(config)?;
    let nodes: Api<Node> = Api::all(client.clone());
    let leases: Api<Lease> = Api::namespaced(client, "kube-node-lease");
    loop {
        let list = nodes.list(&ListParams::default()).await?;
        if list.items.iter().filter(|n| node_ready(n)).count() >= args.count {
            break;
        }
        if t0.elapsed() > Duration::from_secs(args.timeout) {
            bail!("{} nodes not Ready after {} s", args.count, args.timeout);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let registered = t0.elapsed().as_secs_f64();
    println!(
        "hollow: {} nodes registered and Ready in {registered:.1} s",
        args.count
    );
    let up = cluster.up.id();
    let others = || -> f64 {
        child_pids(up, "apiserver")
            .into_iter()
            .chain(child_pids(up, "store"))
            .filter_map(cpu_seconds)
            .sum()
    };
    let cpu0 = cpu_seconds(pid).unwrap_or(0.0);
    let other0 = others();
    let w0 = Instant::now();
    let (mut peak, mut last) = (0f64, 0f64);
    let mut worst_age = 0f64;
    let mut not_ready_seen = 0usize;
    let mut renewals = 0usize;
    let mut prev: std::collections::HashMap<String, String> = Default::default();
    while w0.elapsed() < Duration::from_secs(args.measure) {
        if let Some(r) = rss_mib(pid) {
            peak = peak.max(r);
            last = r;
        }
        let now = jiff::Timestamp::now();
        for l in leases.list(&ListParams::default()).await?.items {
            let Some(t) = l.spec.as_ref().and_then(|s| s.renew_time.as_ref()) else {
                continue;
            };
            let age = (now - t.0).total(jiff::Unit::Second).unwrap_or(0.0);
            worst_age = worst_age.max(age);
            let name = l.metadata.name.clone().unwrap_or_default();
            let stamp = t.0.to_string();
            if prev.get(&name).is_some_and(|p| *p != stamp) {
                renewals += 1;
            }
            prev.insert(name, stamp);
        }
        let list = nodes.list(&ListParams::default()).await?;
        not_ready_seen = not_ready_seen.max(list.items.iter().filter(|n| !node_ready(n)).count());
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    let secs = w0.elapsed().as_secs_f64();
    let cores = (cpu_seconds(pid).unwrap_or(0.0) - cpu0) / secs;
    let other = (others() - other0) / secs;
    println!(
        "hollow: {} nodes ({} watch): RSS {last:.1} MiB (peak {peak:.1} MiB) = {:.0} KiB per node; CPU {cores:.2} cores; apiserver+store {other:.2} cores",
        args.count,
        args.watch,
        last * 1024.0 / args.count as f64
    );
    println!(
        "hollow: over {secs:.0} s: oldest node Lease {worst_age:.1} s old (renewed every 10 s, expires at 40 s); {renewals} renewals seen; most NotReady nodes at once: {not_ready_seen}"
    );
    drop(fleet);
    Ok(())
}
