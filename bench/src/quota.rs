//! `keelson-bench quota`: what the ResourceQuota and LimitRanger admission plugins add to a pod
//! create. One cluster, three namespaces: `plain` (no quota), `quota` (a ResourceQuota on pods,
//! cpu requests, memory limits and ConfigMaps) and `limited` (the same quota and a LimitRange
//! that fills in the pods' resources). Creates go to the three in turn, one at a time; then
//! `--parallel` clients create at once in `plain` and in `quota`, where charges are made one
//! after another. No controller runs, so the quota's `used` is exactly what admission charged,
//! and the run checks it against the pods that exist.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use k8s_openapi::api::core::v1::{LimitRange, Namespace, Pod, ResourceQuota};
use kube::api::{Api, PostParams};
use serde_json::json;

use crate::{row, start_cluster};

/// Flags of `keelson-bench quota`.
#[derive(clap::Args, Debug)]
pub struct QuotaArgs {
    /// The keelson binary used to start the cluster (default: next to this one).
    #[arg(long)]
    keelson: Option<PathBuf>,
    /// Pod creates per namespace, one at a time (and in all, in each parallel phase).
    #[arg(long, default_value_t = 1000)]
    ops: usize,
    /// Concurrent clients in the parallel phases.
    #[arg(long, default_value_t = 8)]
    parallel: usize,
}

/// A pod that states what the quota limits (bare: for the LimitRange to fill in).
fn pod(name: String, bare: bool) -> Pod {
    let resources = if bare {
        json!({})
    } else {
        json!({"requests": {"cpu": "10m"}, "limits": {"memory": "64Mi"}})
    };
    serde_json::from_value(json!({"metadata": {"name": name},
        "spec": {"containers": [{"name": "c", "image": "pause", "resources": resources}]}}))
    .expect("a valid pod")
}

type Hist = hdrhistogram::Histogram<u64>;

fn hist() -> Hist {
    Hist::new_with_bounds(1, 120_000_000, 3).expect("bounds")
}

/// `clients` clients create `total` pods in `api` at once; their latencies and the wall time.
async fn parallel(
    api: &Api<Pod>,
    prefix: &str,
    total: usize,
    clients: usize,
) -> (Hist, Duration, usize) {
    let clients = clients.max(1);
    let start = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let api = api.clone();
            let prefix = prefix.to_string();
            tokio::spawn(async move {
                let (mut h, mut errors) = (hist(), 0);
                for i in (c..total).step_by(clients) {
                    let t = Instant::now();
                    let ok = api
                        .create(&PostParams::default(), &pod(format!("{prefix}-{i}"), false))
                        .await
                        .is_ok();
                    let _ = h.record(t.elapsed().as_micros().max(1) as u64);
                    errors += usize::from(!ok);
                }
                (h, errors)
            })
        })
        .collect();
    let (mut all, mut errors) = (hist(), 0);
    for t in tasks {
        if let Ok((h, e)) = t.await {
            let _ = all.add(&h);
            errors += e;
        }
    }
    (all, start.elapsed(), errors)
}

/// Runs the comparison and prints a markdown table.
pub async fn run(args: QuotaArgs) -> anyhow::Result<()> {
    let keelson = match &args.keelson {
        Some(k) => k.clone(),
        None => std::env::current_exe()?.with_file_name("keelson"),
    };
    let cluster = start_cluster(&keelson, 1)?;
    let client = crate::authz::client(&cluster.kubeconfig).await?;
    let spaces = ["plain", "quota", "limited"];
    let namespaces: Api<Namespace> = Api::all(client.clone());
    for ns in spaces {
        namespaces
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": ns}}))?,
            )
            .await
            .with_context(|| format!("creating namespace {ns}"))?;
    }
    let hard = json!({"pods": "1000000", "requests.cpu": "100k", "limits.memory": "100Ti",
                      "count/configmaps": "1000000"});
    for ns in &spaces[1..] {
        let quotas: Api<ResourceQuota> = Api::namespaced(client.clone(), ns);
        let mut q = quotas
            .create(
                &PostParams::default(),
                &serde_json::from_value(
                    json!({"metadata": {"name": "q"}, "spec": {"hard": hard}}),
                )?,
            )
            .await?;
        // What the quota controller would write first: nothing used yet.
        q.status = Some(serde_json::from_value(json!({"hard": hard,
            "used": {"pods": "0", "requests.cpu": "0", "limits.memory": "0", "count/configmaps": "0"}}))?);
        quotas
            .replace_status("q", &PostParams::default(), &q)
            .await
            .context("writing the quota's status")?;
    }
    let ranges: Api<LimitRange> = Api::namespaced(client.clone(), "limited");
    ranges
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "lr"}, "spec": {"limits": [
                {"type": "Container", "default": {"memory": "64Mi"}, "defaultRequest": {"cpu": "10m"},
                 "max": {"cpu": "2"}}]}}))?,
        )
        .await?;
    let apis: Vec<Api<Pod>> = spaces
        .iter()
        .map(|ns| Api::namespaced(client.clone(), ns))
        .collect();
    // Warm-up, and the plugins in force: until a bare pod in `limited` comes back with the
    // LimitRange's defaults.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut tries = 0;
    loop {
        tries += 1;
        let p = apis[2]
            .create(&PostParams::default(), &pod(format!("warm-{tries}"), true))
            .await?;
        let defaulted = p.spec.as_ref().is_some_and(|s| {
            s.containers[0]
                .resources
                .as_ref()
                .and_then(|r| r.requests.as_ref())
                .is_some_and(|r| r.contains_key("cpu"))
        });
        if defaulted && tries >= 50 {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the LimitRange never took effect"
        );
        for api in &apis[..2] {
            api.create(&PostParams::default(), &pod(format!("warm-{tries}"), false))
                .await?;
        }
    }
    let mut h = [hist(), hist(), hist()];
    let mut el = [Duration::ZERO; 3];
    let mut errors = [0usize; 3];
    for i in 0..args.ops {
        for (side, api) in apis.iter().enumerate() {
            let start = Instant::now();
            let ok = api
                .create(&PostParams::default(), &pod(format!("pod-{i}"), side == 2))
                .await
                .is_ok();
            let d = start.elapsed();
            el[side] += d;
            let _ = h[side].record(d.as_micros().max(1) as u64);
            errors[side] += usize::from(!ok);
        }
    }
    let (ph, pel, perr) = parallel(&apis[0], "par", args.ops, args.parallel).await;
    let (qh, qel, qerr) = parallel(&apis[1], "par", args.ops, args.parallel).await;
    let mut report = vec![
        "| phase | ops | throughput | p50 ms | p90 ms | p99 ms | max ms | errors |".to_string(),
        "|---|---|---|---|---|---|---|---|".to_string(),
    ];
    for (side, name) in [
        "pod create, no quota",
        "pod create, ResourceQuota",
        "pod create, ResourceQuota + LimitRange defaults",
    ]
    .into_iter()
    .enumerate()
    {
        report.push(row(name, args.ops, el[side], &h[side], errors[side]));
    }
    let p = args.parallel;
    report.push(row(
        &format!("pod create, no quota, {p} clients"),
        args.ops,
        pel,
        &ph,
        perr,
    ));
    report.push(row(
        &format!("pod create, ResourceQuota, {p} clients"),
        args.ops,
        qel,
        &qh,
        qerr,
    ));
    println!("{}", report.join("\n"));
    // Every admitted pod was charged once, and nothing else.
    for (i, ns) in spaces[1..].iter().enumerate() {
        let quotas: Api<ResourceQuota> = Api::namespaced(client.clone(), ns);
        let used = quotas
            .get("q")
            .await?
            .status
            .and_then(|s| s.used)
            .and_then(|u| u.get("pods").cloned())
            .map(|q| q.0)
            .unwrap_or_default();
        let pods = apis[i + 1].list(&Default::default()).await?.items.len();
        println!("{ns}: status.used.pods {used}, pods {pods}");
        anyhow::ensure!(
            used == pods.to_string(),
            "{ns}: the quota charged {used} pods but {pods} exist"
        );
    }
    let p50: Vec<u64> = h.iter().map(|h| h.value_at_quantile(0.5)).collect();
    println!(
        "\np50 µs: no quota {}, ResourceQuota {} ({:+}), with LimitRange {} ({:+})",
        p50[0],
        p50[1],
        p50[1] as i64 - p50[0] as i64,
        p50[2],
        p50[2] as i64 - p50[0] as i64,
    );
    Ok(())
}
