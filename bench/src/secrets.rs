//! `keelson-bench secrets`: what encryption at rest costs a client. The same Secret creates run
//! against a cluster without encryption (`keelson up --encryption none`) and one with KMS v2
//! through the bundled plugin (`--encryption kms`): latency one client at a time (the p50 the
//! issue budgets) and throughput with many clients. The apiserver's own counters confirm the
//! KMS path: every Secret went through the KMS v2 transformer, and the plugin was called per
//! seed, not per object.

use std::path::PathBuf;

use anyhow::Context;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

use crate::{row, run_ops, start_cluster_with};

/// Flags of `keelson-bench secrets`.
#[derive(clap::Args, Debug)]
pub struct SecretsArgs {
    /// The keelson binary used to start the clusters (default: next to this one).
    #[arg(long)]
    keelson: Option<PathBuf>,
    /// Store members of each cluster.
    #[arg(long, default_value_t = 1)]
    stores: usize,
    /// Secrets created one at a time (latency).
    #[arg(long, default_value_t = 1000)]
    sequential: usize,
    /// Secrets created by --clients concurrent clients (throughput).
    #[arg(long, default_value_t = 4000)]
    concurrent: usize,
    /// Concurrent clients.
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// Bytes of data per Secret.
    #[arg(long, default_value_t = 1024)]
    size: usize,
}

fn secret(name: &str, size: usize) -> Secret {
    let value: String = (0..size)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "type": "Opaque",
        "stringData": {"password": value}
    }))
    .expect("a valid secret")
}

/// Sums the samples of `metric` whose labels contain every one of `labels`.
fn sum_metric(text: &str, metric: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(metric) && labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .fold(0.0, |a, b| a + b)
}

async fn one(
    args: &SecretsArgs,
    keelson: &std::path::Path,
    mode: &str,
) -> anyhow::Result<Vec<String>> {
    let cluster = start_cluster_with(keelson, args.stores, &["--encryption", mode])?;
    let kc = Kubeconfig::read_from(&cluster.kubeconfig)?;
    let client =
        Client::try_from(Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?)?;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({"metadata": {"name": "bench"}}))?,
        )
        .await
        .context("creating namespace bench")?;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "bench");
    let size = args.size;
    // Warm-up: connections, the watch cache, the KMS seed.
    for i in 0..50 {
        secrets
            .create(&PostParams::default(), &secret(&format!("warm-{i}"), size))
            .await
            .context("warm-up create")?;
    }
    let mut rows = Vec::new();
    for (phase, clients, n) in [
        ("sequential", 1, args.sequential),
        ("concurrent", args.clients, args.concurrent),
    ] {
        let s = secrets.clone();
        let (el, h, err) = run_ops(clients, n, move |i| {
            let s = s.clone();
            async move {
                s.create(
                    &PostParams::default(),
                    &secret(&format!("{phase}-{i}"), size),
                )
                .await
                .is_ok()
            }
        })
        .await;
        rows.push(row(
            &format!("{mode}: secret create, {clients} client(s)"),
            n,
            el,
            &h,
            err,
        ));
    }
    let metrics = client
        .request_text(http::Request::get("/metrics").body(Vec::new())?)
        .await
        .context("reading the apiserver's /metrics")?;
    if mode == "kms" {
        let written = sum_metric(
            &metrics,
            "apiserver_storage_transformation_operations_total",
            &["to_storage", "k8s:enc:kms:v2:", "status=\"OK\""],
        );
        let encrypts = sum_metric(
            &metrics,
            "apiserver_envelope_encryption_kms_operations_latency_seconds_count",
            &["/Encrypt"],
        );
        let decrypts = sum_metric(
            &metrics,
            "apiserver_envelope_encryption_kms_operations_latency_seconds_count",
            &["/Decrypt"],
        );
        let expected = (50 + args.sequential + args.concurrent) as f64;
        anyhow::ensure!(
            written >= expected,
            "only {written} of {expected} secrets went through the KMS v2 transformer"
        );
        rows.push(format!(
            "| kms: objects encrypted through KMS v2 | {written:.0} | plugin Encrypt calls: {encrypts:.0} | Decrypt calls: {decrypts:.0} | | | | |"
        ));
    }
    Ok(rows)
}

/// Runs the comparison and prints a markdown table.
pub async fn run(args: SecretsArgs) -> anyhow::Result<()> {
    let keelson = match &args.keelson {
        Some(k) => k.clone(),
        None => std::env::current_exe()?.with_file_name("keelson"),
    };
    let mut report = vec![
        "| phase | ops | throughput | p50 ms | p90 ms | p99 ms | max ms | errors |".to_string(),
        "|---|---|---|---|---|---|---|---|".to_string(),
    ];
    for mode in ["none", "kms"] {
        report.extend(one(&args, &keelson, mode).await?);
    }
    println!("{}", report.join("\n"));
    Ok(())
}
