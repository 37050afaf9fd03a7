//! The density workload, ClusterLoader2's density test: saturation pods created through
//! Deployments at a fixed rate up to P per node, then latency pods created one by one at a lower
//! rate once every saturation pod runs. Pod startup is judged on the latency pods.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::{Api, PostParams};
use serde_json::json;

use super::observe::Timelines;
use super::report::Workload;
use super::{MAX_PODS, Pacer, RunArgs, bar, pod_template, positive_rate, retried, wait_running};

/// The namespace of the saturation Deployments and the probes.
const SATURATION_NS: &str = "density";
/// The namespace of the latency pods.
const LATENCY_NS: &str = "density-latency";

/// Flags of a density run.
#[derive(clap::Args, Debug, Clone)]
pub struct DensityArgs {
    /// The cluster, sampling, bounds and output.
    #[command(flatten)]
    pub run: RunArgs,
    /// Saturation pods per node.
    #[arg(long, default_value_t = 10)]
    pub pods_per_node: usize,
    /// Saturation pods created per second (Deployments are created at the pace that gives it).
    #[arg(long, default_value_t = 20.0)]
    pub rate: f64,
    /// Replicas of each saturation Deployment.
    #[arg(long, default_value_t = 50)]
    pub deployment_size: usize,
    /// Latency pods, created one by one after the saturation pods run; pod startup is judged
    /// on them.
    #[arg(long, default_value_t = 50)]
    pub latency_pods: usize,
    /// Latency pods created per second.
    #[arg(long, default_value_t = 5.0)]
    pub latency_rate: f64,
}

/// The namespaces of a density run.
pub(super) fn namespaces() -> Vec<String> {
    vec![SATURATION_NS.into(), LATENCY_NS.into()]
}

impl DensityArgs {
    pub(super) fn validate(&self) -> anyhow::Result<()> {
        for (flag, v) in [
            ("--pods-per-node", self.pods_per_node),
            ("--deployment-size", self.deployment_size),
            ("--latency-pods", self.latency_pods),
        ] {
            if v == 0 {
                bail!("{flag} must be at least 1");
            }
        }
        positive_rate("--rate", self.rate)?;
        positive_rate("--latency-rate", self.latency_rate)?;
        let latency_per_node = self.latency_pods.div_ceil(self.run.nodes);
        if self.run.kubeconfig.is_none() && self.pods_per_node + latency_per_node > MAX_PODS {
            bail!(
                "{} saturation and {latency_per_node} latency pods per node exceed the {MAX_PODS} pods a hollow node takes",
                self.pods_per_node,
            );
        }
        Ok(())
    }

    pub(super) fn workload(&self, nodes: usize, cluster: String) -> Workload {
        let saturation_pods = nodes * self.pods_per_node;
        Workload {
            kind: "density".into(),
            nodes,
            description: format!(
                "{nodes} nodes, {saturation_pods} saturation pods ({} per node, Deployments of {} at {}/s), {} latency pods at {}/s",
                self.pods_per_node,
                self.deployment_size,
                self.rate,
                self.latency_pods,
                self.latency_rate
            ),
            params: json!({
                "pods_per_node": self.pods_per_node,
                "saturation_pods": saturation_pods,
                "deployment_size": self.deployment_size,
                "rate": self.rate,
                "latency_pods": self.latency_pods,
                "latency_rate": self.latency_rate,
            }),
            cluster,
            judged: "latency".into(),
            judged_pods: self.latency_pods,
            saturating: "saturation".into(),
            saturating_pods: saturation_pods,
            chaos: None,
            churn: None,
        }
    }
}

/// Saturation Deployments at the configured pod rate until every pod runs, then latency pods.
pub(super) async fn drive(
    args: &DensityArgs,
    w: &Workload,
    client: &Client,
    timelines: &Arc<Timelines>,
) -> anyhow::Result<()> {
    let saturation_pods = w.nodes * args.pods_per_node;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), SATURATION_NS);
    let bar_ = bar(saturation_pods as u64, "saturation pods");
    let mut pacer = Pacer::new(args.rate);
    let (mut created, mut i) = (0usize, 0usize);
    while created < saturation_pods {
        let size = args.deployment_size.min(saturation_pods - created);
        let name = format!("saturation-{i}");
        let mut template = pod_template("saturation");
        template["metadata"]["labels"]["app"] = json!(name);
        let body: Deployment = serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"replicas": size, "selector": {"matchLabels": {"app": name}},
                "template": template}
        }))?;
        let post = PostParams::default();
        retried(409, || deployments.create(&post, &body))
            .await
            .with_context(|| format!("creating Deployment {name}"))?;
        created += size;
        i += 1;
        bar_.set_message(format!("{i} Deployments"));
        pacer
            .done(size, || {
                bar_.set_position(timelines.counts("saturation").2 as u64)
            })
            .await;
    }
    wait_running(
        timelines,
        "saturation",
        saturation_pods,
        &bar_,
        args.run.timeout,
    )
    .await?;

    let pods: Api<Pod> = Api::namespaced(client.clone(), LATENCY_NS);
    let bar_ = bar(args.latency_pods as u64, "latency pods");
    let start = Instant::now();
    let mut creates = tokio::task::JoinSet::new();
    for i in 0..args.latency_pods {
        let due = start + Duration::from_secs_f64(i as f64 / args.latency_rate);
        tokio::time::sleep_until(due.into()).await;
        bar_.set_position(timelines.counts("latency").2 as u64);
        let name = format!("latency-{i}");
        let mut body = pod_template("latency");
        body["metadata"]["name"] = json!(name);
        let body: Pod = serde_json::from_value(body)?;
        let (pods, timelines) = (pods.clone(), timelines.clone());
        creates.spawn(async move {
            timelines.created(LATENCY_NS, &name, "latency", timelines.now());
            let post = PostParams::default();
            retried(409, || pods.create(&post, &body))
                .await
                .with_context(|| format!("creating pod {name}"))
                .map(|_| ())
        });
    }
    while let Some(r) = creates.join_next().await {
        r??;
    }
    wait_running(
        timelines,
        "latency",
        args.latency_pods,
        &bar_,
        args.run.timeout,
    )
    .await
}
