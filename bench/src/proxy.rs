//! `keelson-bench proxy`: network programming latency of the service proxy.
//!
//! A `keelson up` cluster (one apiserver, no nodes) gets N selector-less Services with one
//! EndpointSlice of E endpoints each, then a `keelson proxy` process on this host (its own
//! nftables table, removed when it stops). Measured: the first full sync (the whole table in
//! one transaction), then C endpoint changes at R per second — each rewrites one slice with a
//! new address and stamps `endpoints.kubernetes.io/last-change-trigger-time`, as the
//! EndpointSlice controller does — and the proxy's own SLI histogram
//! `kubeproxy_network_programming_duration_seconds` (change → rules in place) and
//! `kubeproxy_sync_proxy_rules_duration_seconds` (one nft transaction), read from its /metrics.
//! Quantiles are interpolated within buckets, as Prometheus' `histogram_quantile` does.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde_json::json;

use keelson_bench::cluster::Terminating;
use keelson_bench::scale::histograms::{self, Histogram};

use crate::start_cluster;

#[derive(clap::Args, Debug)]
pub struct ProxyArgs {
    /// The keelson binary (default: next to this one).
    #[arg(long)]
    keelson: Option<PathBuf>,
    /// Service counts to measure, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    services: Vec<usize>,
    /// Endpoints per Service (at most 60).
    #[arg(long, default_value_t = 10)]
    endpoints: usize,
    /// Endpoint changes measured.
    #[arg(long, default_value_t = 300)]
    changes: usize,
    /// Changes per second.
    #[arg(long, default_value_t = 10.0)]
    rate: f64,
    /// The proxy's --min-sync-period.
    #[arg(long, default_value = "250ms")]
    min_sync_period: String,
    /// Give up on one size after this many seconds.
    #[arg(long, default_value_t = 900)]
    timeout_secs: u64,
}

fn endpoint_ip(svc: usize, ep: usize, moved: bool) -> String {
    // Endpoints spread over 1,000 node ranges (10.128.0.0/24 ...), as pods over nodes; a moved
    // endpoint takes the next address in its node's range.
    let idx = svc * 64 + ep;
    let node = idx % 1000;
    let slot = (idx / 1000) % 127;
    format!(
        "10.{}.{}.{}",
        128 + node / 256,
        node % 256,
        slot * 2 + 1 + usize::from(moved)
    )
}

/// Service `svc`'s slice, with endpoint `moved` (if any) at its other address.
fn slice(svc: usize, endpoints: usize, moved: Option<usize>) -> EndpointSlice {
    let eps: Vec<_> = (0..endpoints)
        .map(|e| {
            json!({"addresses": [endpoint_ip(svc, e, moved == Some(e))], "conditions": {"ready": true}})
        })
        .collect();
    let stamp = jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S%.fZ")
        .to_string();
    serde_json::from_value(json!({
        "metadata": {"name": format!("svc-{svc}-x"), "namespace": "default",
            "labels": {"kubernetes.io/service-name": format!("svc-{svc}")},
            "annotations": {"endpoints.kubernetes.io/last-change-trigger-time": stamp}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": eps,
    }))
    .expect("slice")
}

/// The metrics text of the proxy (HTTPS, self-signed).
fn scrape(port: u16) -> anyhow::Result<String> {
    let out = Command::new("curl")
        .args(["-sk", &format!("https://127.0.0.1:{port}/metrics")])
        .output()
        .context("curl")?;
    if !out.status.success() {
        bail!("scraping the proxy's metrics failed");
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The unlabelled histogram `name` of a metrics page (empty when absent).
fn histogram(text: &str, name: &str) -> anyhow::Result<Histogram> {
    Ok(histograms::parse(text, name)?
        .remove(&histograms::Labels::new())
        .unwrap_or_default())
}

pub async fn run(a: ProxyArgs) -> anyhow::Result<()> {
    if a.endpoints == 0 || a.endpoints > 60 || a.rate <= 0.0 {
        bail!("--endpoints must be 1..=60 and --rate positive");
    }
    let keelson = match &a.keelson {
        Some(k) => k.clone(),
        None => std::env::current_exe()?.with_file_name("keelson"),
    };
    for &n in &a.services {
        let cluster = start_cluster(&keelson, 1)?;
        let kc = Kubeconfig::read_from(&cluster.kubeconfig)?;
        let client = Client::try_from(
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?,
        )?;
        let t0 = Instant::now();
        let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
        let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
        let made = futures::stream::iter(0..n)
            .map(|i| {
                let (svcs, slices) = (svcs.clone(), slices.clone());
                let eps = a.endpoints;
                async move {
                    let s: Service = serde_json::from_value(json!({
                        "metadata": {"name": format!("svc-{i}")},
                        "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
                    }))?;
                    svcs.create(&PostParams::default(), &s).await?;
                    slices
                        .create(&PostParams::default(), &slice(i, eps, None))
                        .await?;
                    anyhow::Ok(())
                }
            })
            .buffer_unordered(32)
            .collect::<Vec<_>>()
            .await;
        if let Some(e) = made.into_iter().find_map(Result::err) {
            return Err(e.context("creating Services"));
        }
        println!(
            "proxy: {n} Services with {} endpoints each created in {:.1} s",
            a.endpoints,
            t0.elapsed().as_secs_f64()
        );
        let port = keelson_client::ports::free_port()?;
        let log = tempfile::NamedTempFile::new()?;
        let started = Instant::now();
        let proxy = Terminating(
            Command::new(&keelson)
                .args(["proxy", "--hostname-override=bench-proxy"])
                .arg(format!("--kubeconfig={}", cluster.kubeconfig.display()))
                .arg(format!("--proxy-metrics-port={port}"))
                .arg(format!("--min-sync-period={}", a.min_sync_period))
                .stdout(Stdio::null())
                .stderr(log.reopen()?)
                .spawn()
                .context("starting keelson proxy")?,
        );
        let deadline = Instant::now() + Duration::from_secs(a.timeout_secs);
        let first = loop {
            if let Ok(t) = scrape(port) {
                let h = histogram(&t, "kubeproxy_sync_proxy_rules_duration_seconds")?;
                if h.count() >= 1.0 {
                    break h;
                }
            }
            if Instant::now() > deadline {
                bail!("the proxy never synced");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        println!(
            "proxy: first full sync {:.2} s (nft transaction), rules in place {:.1} s after start (list included)",
            first.sum,
            started.elapsed().as_secs_f64()
        );
        let before = scrape(port)?;
        let before_prog = histogram(&before, "kubeproxy_network_programming_duration_seconds")?;
        let before_sync = histogram(&before, "kubeproxy_sync_proxy_rules_duration_seconds")?;
        // Changes at a fixed rate: each moves one endpoint of a random Service.
        let period = Duration::from_secs_f64(1.0 / a.rate);
        let mut tick = tokio::time::interval(period);
        let mut r: usize = 0x9e37_79b9;
        let c0 = Instant::now();
        for k in 0..a.changes {
            tick.tick().await;
            r = r.wrapping_add(0x9e37_79b9);
            let svc = r.wrapping_mul(2_654_435_761) % n;
            let cur = slices.get(&format!("svc-{svc}-x")).await?;
            // Move an endpoint the slice has at its first address (every change is a change).
            let first = |e: usize| endpoint_ip(svc, e, false);
            let moved = (0..a.endpoints)
                .map(|i| (k + i) % a.endpoints)
                .find(|e| cur.endpoints.iter().any(|x| x.addresses == [first(*e)]));
            let mut s = slice(svc, a.endpoints, moved);
            s.metadata.resource_version = cur.metadata.resource_version;
            slices
                .replace(&format!("svc-{svc}-x"), &PostParams::default(), &s)
                .await?;
        }
        let spent = c0.elapsed().as_secs_f64();
        // Let the last changes land.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let text = scrape(port)?;
        let pd = histogram(&text, "kubeproxy_network_programming_duration_seconds")?
            .since(Some(&before_prog));
        let sd = histogram(&text, "kubeproxy_sync_proxy_rules_duration_seconds")?
            .since(Some(&before_sync));
        let syncs = sd.count();
        let q = |h: &Histogram, q: f64| h.quantile(q).unwrap_or(f64::NAN);
        println!(
            "proxy: {n} Services x {} endpoints, {} changes at {:.1}/s ({:.1} s): programming latency p50 {:.3} s, p90 {:.3} s, p99 {:.3} s ({} measured); {} syncs, mean {:.1} ms, p99 {:.1} ms",
            a.endpoints,
            a.changes,
            a.changes as f64 / spent,
            spent,
            q(&pd, 0.5),
            q(&pd, 0.9),
            q(&pd, 0.99),
            pd.count(),
            syncs,
            sd.sum / syncs.max(1.0) * 1000.0,
            q(&sd, 0.99) * 1000.0
        );
        drop(proxy);
        drop(cluster);
    }
    Ok(())
}
