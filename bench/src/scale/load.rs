//! The load workload, ClusterLoader2's load test: in one namespace per `--nodes-per-namespace`
//! nodes, Deployments of three sizes (CL2's 250/30/5: a quarter of the pods in big ones, half
//! the rest in medium ones, the remainder in small ones) and a Service for a share of them are
//! created at a pod rate; once every pod runs, each Deployment is scaled to a random size
//! between half and one and a half times its own; once that settles, everything is deleted at
//! the same rate and the run waits for the pods to be gone. Pod startup is judged on every pod.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use indicatif::ProgressBar;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::json;

use super::observe::{GROUP_LABEL, Timelines};
use super::report::Workload;
use super::{MAX_PODS, Pacer, RunArgs, bar, pod_template, positive_rate, retried, wait_running};

/// The pod group of every pod of a load run.
const GROUP: &str = "load";

/// Flags of a load run.
#[derive(clap::Args, Debug, Clone)]
pub struct LoadArgs {
    /// The cluster, sampling, bounds and output.
    #[command(flatten)]
    pub run: RunArgs,
    /// Pods per node once every Deployment is created (scaling moves it by up to half).
    #[arg(long, default_value_t = 10)]
    pub pods_per_node: usize,
    /// Pods created, scaled or deleted per second: Deployments are created, scaled and
    /// deleted at the pace that gives it (CL2's load throughput).
    #[arg(long, default_value_t = 10.0)]
    pub rate: f64,
    /// Nodes per namespace: the run makes one namespace (`load-<n>`) per this many nodes.
    #[arg(long, default_value_t = 100)]
    pub nodes_per_namespace: usize,
    /// Replicas of the big, medium and small Deployments.
    #[arg(long, value_delimiter = ',', default_values_t = [250, 30, 5])]
    pub deployment_sizes: Vec<usize>,
    /// The share of Deployments that get a ClusterIP Service selecting their pods.
    #[arg(long, default_value_t = 0.5)]
    pub service_fraction: f64,
    /// Seed of the random sizes Deployments are scaled to (the same seed, the same sizes).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// One Deployment of the run.
#[derive(Clone, Debug, PartialEq)]
struct Planned {
    namespace: String,
    name: String,
    replicas: usize,
    service: bool,
}

impl LoadArgs {
    pub(super) fn validate(&self) -> anyhow::Result<()> {
        for (flag, v) in [
            ("--pods-per-node", self.pods_per_node),
            ("--nodes-per-namespace", self.nodes_per_namespace),
        ] {
            if v == 0 {
                bail!("{flag} must be at least 1");
            }
        }
        positive_rate("--rate", self.rate)?;
        if self.deployment_sizes.len() != 3 || self.deployment_sizes.contains(&0) {
            bail!(
                "--deployment-sizes takes three positive sizes (big,medium,small), not {:?}",
                self.deployment_sizes
            );
        }
        if !(0.0..=1.0).contains(&self.service_fraction) {
            bail!(
                "--service-fraction must be between 0 and 1, not {}",
                self.service_fraction
            );
        }
        // Scaling may take every Deployment to one and a half times its size.
        if self.run.kubeconfig.is_none() && self.pods_per_node * 3 / 2 > MAX_PODS {
            bail!(
                "{} pods per node, scaled up by half, exceed the {MAX_PODS} pods a hollow node takes",
                self.pods_per_node
            );
        }
        Ok(())
    }

    /// `load-1` … one per `--nodes-per-namespace` nodes.
    pub(super) fn namespaces(&self, nodes: usize) -> Vec<String> {
        (1..=nodes.div_ceil(self.nodes_per_namespace).max(1))
            .map(|i| format!("load-{i}"))
            .collect()
    }

    /// The Deployments of every namespace: CL2's mix of sizes over the namespace's share of
    /// the pods, plus one small Deployment of what is left, so the total is exact.
    fn plan(&self, nodes: usize) -> Vec<Planned> {
        let [big, medium, small] = [
            self.deployment_sizes[0],
            self.deployment_sizes[1],
            self.deployment_sizes[2],
        ];
        let mut out = Vec::new();
        let mut nodes_left = nodes;
        for ns in self.namespaces(nodes) {
            let ns_nodes = nodes_left.min(self.nodes_per_namespace);
            nodes_left -= ns_nodes;
            let pods = ns_nodes * self.pods_per_node;
            let n_big = pods / (4 * big);
            let n_medium = (pods - n_big * big) / (2 * medium);
            let rest = pods - n_big * big - n_medium * medium;
            let mut sizes: Vec<(&str, usize)> = Vec::new();
            sizes.extend(std::iter::repeat_n(("big", big), n_big));
            sizes.extend(std::iter::repeat_n(("medium", medium), n_medium));
            sizes.extend(std::iter::repeat_n(("small", small), rest / small));
            if !rest.is_multiple_of(small) {
                sizes.push(("small", rest % small));
            }
            let mut index: BTreeMap<&str, usize> = BTreeMap::new();
            for (i, (class, replicas)) in sizes.into_iter().enumerate() {
                let n = index.entry(class).or_default();
                // Services spread evenly: the i-th Deployment gets one when the running share
                // crosses a whole number.
                let f = self.service_fraction;
                let service = ((i + 1) as f64 * f).floor() > (i as f64 * f).floor();
                out.push(Planned {
                    namespace: ns.clone(),
                    name: format!("{class}-{n}"),
                    replicas,
                    service,
                });
                *n += 1;
            }
        }
        out
    }

    pub(super) fn workload(&self, nodes: usize, cluster: String) -> Workload {
        let plan = self.plan(nodes);
        let pods: usize = plan.iter().map(|d| d.replicas).sum();
        let services = plan.iter().filter(|d| d.service).count();
        Workload {
            kind: "load".into(),
            nodes,
            description: format!(
                "{nodes} nodes, {pods} pods in {} Deployments (sizes {:?}) with {services} Services in {}, created, scaled and deleted at {}/s",
                plan.len(),
                self.deployment_sizes,
                match self.namespaces(nodes).len() {
                    1 => "1 namespace".to_string(),
                    n => format!("{n} namespaces"),
                },
                self.rate
            ),
            params: json!({
                "pods_per_node": self.pods_per_node,
                "pods": pods,
                "deployments": plan.len(),
                "services": services,
                "deployment_sizes": self.deployment_sizes,
                "nodes_per_namespace": self.nodes_per_namespace,
                "rate": self.rate,
                "seed": self.seed,
            }),
            cluster,
            judged: GROUP.into(),
            judged_pods: pods,
            // The pods of the creation phase; scale-ups come after they all run.
            saturating: GROUP.into(),
            saturating_pods: pods,
            chaos: None,
            churn: None,
        }
    }

    /// Create, wait, scale, wait, delete, wait.
    pub(super) async fn drive(
        &self,
        w: &Workload,
        client: &Client,
        timelines: &Arc<Timelines>,
    ) -> anyhow::Result<()> {
        let plan = self.plan(w.nodes);
        let timeout = Duration::from_secs(self.run.timeout);
        let pods: usize = plan.iter().map(|d| d.replicas).sum();

        // Create: Services first, then the Deployments at the pod rate.
        for d in plan.iter().filter(|d| d.service) {
            let api: Api<Service> = Api::namespaced(client.clone(), &d.namespace);
            let body: Service = serde_json::from_value(json!({
                "metadata": {"name": d.name},
                "spec": {"selector": {"app": d.name},
                    "ports": [{"port": 80, "targetPort": 8080, "protocol": "TCP"}]}
            }))?;
            let post = PostParams::default();
            retried(409, || api.create(&post, &body))
                .await
                .with_context(|| format!("creating Service {}/{}", d.namespace, d.name))?;
        }
        let b = bar(pods as u64, "pods created");
        let mut pacer = Pacer::new(self.rate);
        for d in &plan {
            let api: Api<Deployment> = Api::namespaced(client.clone(), &d.namespace);
            let mut template = pod_template(GROUP);
            template["metadata"]["labels"]["app"] = json!(d.name);
            let body: Deployment = serde_json::from_value(json!({
                "metadata": {"name": d.name},
                "spec": {"replicas": d.replicas, "selector": {"matchLabels": {"app": d.name}},
                    "template": template}
            }))?;
            let post = PostParams::default();
            retried(409, || api.create(&post, &body))
                .await
                .with_context(|| format!("creating Deployment {}/{}", d.namespace, d.name))?;
            pacer
                .done(d.replicas, || {
                    b.set_position(timelines.counts(GROUP).2 as u64)
                })
                .await;
        }
        wait_running(timelines, GROUP, pods, &b, self.run.timeout).await?;

        // Scale every Deployment to a random size between half and one and a half its own.
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        let scaled: Vec<usize> = plan
            .iter()
            .map(|d| {
                let f: f64 = rng.random_range(0.5..=1.5);
                ((d.replicas as f64 * f).round() as usize).max(1)
            })
            .collect();
        let b = bar(plan.len() as u64, "scaled");
        let mut pacer = Pacer::new(self.rate);
        for (d, &to) in plan.iter().zip(&scaled) {
            let api: Api<Deployment> = Api::namespaced(client.clone(), &d.namespace);
            let scale = Patch::Merge(json!({"spec": {"replicas": to}}));
            // (A scale lands the same however often it is sent.)
            let params = PatchParams::default();
            retried(0, || api.patch(&d.name, &params, &scale))
                .await
                .with_context(|| format!("scaling Deployment {}/{}", d.namespace, d.name))?;
            pacer.done(d.replicas.abs_diff(to), || b.inc(0)).await;
            b.inc(1);
        }
        b.finish();
        let want: BTreeMap<(&str, &str), usize> = plan
            .iter()
            .zip(&scaled)
            .map(|(d, &to)| ((d.namespace.as_str(), d.name.as_str()), to))
            .collect();
        wait_settled(client, &want, timeout).await?;

        // Delete at the same pace, then wait for every pod to be gone.
        let b = bar(plan.len() as u64, "deleted");
        let mut pacer = Pacer::new(self.rate);
        for (d, &size) in plan.iter().zip(&scaled) {
            let api: Api<Deployment> = Api::namespaced(client.clone(), &d.namespace);
            let background = DeleteParams::background();
            retried(404, || api.delete(&d.name, &background))
                .await
                .with_context(|| format!("deleting Deployment {}/{}", d.namespace, d.name))?;
            if d.service {
                let api: Api<Service> = Api::namespaced(client.clone(), &d.namespace);
                let params = DeleteParams::default();
                retried(404, || api.delete(&d.name, &params))
                    .await
                    .with_context(|| format!("deleting Service {}/{}", d.namespace, d.name))?;
            }
            b.inc(1);
            pacer.done(size, || {}).await;
        }
        b.finish();
        let namespaces = self.namespaces(w.nodes);
        wait_pods_gone(client, &namespaces, timeout).await
    }
}

/// A Deployment is settled at `want` replicas: its controller saw the change, and exactly
/// `want` pods exist, updated and available.
fn settled(d: &Deployment, want: usize) -> bool {
    let Some(s) = &d.status else {
        return false;
    };
    let want = want as i32;
    s.observed_generation >= d.metadata.generation
        && s.replicas.unwrap_or(0) == want
        && s.updated_replicas.unwrap_or(0) == want
        && s.available_replicas.unwrap_or(0) == want
}

/// Waits until every Deployment is settled at its size.
async fn wait_settled(
    client: &Client,
    want: &BTreeMap<(&str, &str), usize>,
    timeout: Duration,
) -> anyhow::Result<()> {
    let namespaces: std::collections::BTreeSet<&str> = want.keys().map(|k| k.0).collect();
    let b = bar(want.len() as u64, "settled");
    let deadline = Instant::now() + timeout;
    loop {
        let mut done = 0;
        let mut waiting = None;
        for ns in &namespaces {
            let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
            let all = ListParams::default();
            let list = retried(0, || api.list(&all)).await?;
            for d in list.into_iter().flat_map(|l| l.items) {
                let Some(&n) = want.get(&(*ns, d.name_any().as_str())) else {
                    continue;
                };
                if settled(&d, n) {
                    done += 1;
                } else {
                    waiting.get_or_insert_with(|| {
                        let s = d.status.clone().unwrap_or_default();
                        format!(
                            "{ns}/{}: {} of {n} replicas, {} available",
                            d.name_any(),
                            s.replicas.unwrap_or(0),
                            s.available_replicas.unwrap_or(0)
                        )
                    });
                }
            }
        }
        b.set_position(done as u64);
        if done == want.len() {
            b.finish();
            return Ok(());
        }
        if Instant::now() > deadline {
            b.abandon();
            bail!(
                "{done} of {} Deployments settled at their new size after {} s ({})",
                want.len(),
                timeout.as_secs(),
                waiting.unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Waits until no pod of the run is left in `namespaces`.
async fn wait_pods_gone(
    client: &Client,
    namespaces: &[String],
    timeout: Duration,
) -> anyhow::Result<()> {
    let b = ProgressBar::new_spinner().with_message("waiting for the pods to be gone");
    let deadline = Instant::now() + timeout;
    let params = ListParams::default().labels(GROUP_LABEL).limit(1);
    for ns in namespaces {
        let api: Api<Pod> = Api::namespaced(client.clone(), ns);
        loop {
            let Some(left) = retried(0, || api.list(&params)).await? else {
                continue;
            };
            if left.items.is_empty() {
                break;
            }
            let n = 1 + left.metadata.remaining_item_count.unwrap_or(0);
            b.set_message(format!("{n} pods left in {ns}"));
            b.tick();
            if Instant::now() > deadline {
                b.abandon();
                bail!(
                    "{n} pods left in {ns} {} s after their Deployments were deleted",
                    timeout.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    b.finish_and_clear();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(pods_per_node: usize, sizes: [usize; 3], fraction: f64) -> LoadArgs {
        LoadArgs {
            run: RunArgs {
                kubeconfig: None,
                keelson: None,
                nodes: 1,
                stores: 1,
                apiservers: 1,
                control_plane_qps: 100,
                sample_every: 1,
                timeout: 1,
                out: "x".into(),
                fail_on_slo: false,
                store_binary: None,
                compare: None,
                chaos: crate::scale::chaos::ChaosArgs {
                    chaos_node_failures: 0.0,
                    chaos_interval: 60,
                    chaos_node_downtime: 600,
                    chaos_kill_apiserver_every: 0,
                    chaos_seed: 1,
                },
                churn: crate::scale::churn::ChurnArgs {
                    churn_config_qps: 0.0,
                    churn_node_status_every: None,
                },
            },
            pods_per_node,
            rate: 10.0,
            nodes_per_namespace: 100,
            deployment_sizes: sizes.to_vec(),
            service_fraction: fraction,
            seed: 1,
        }
    }

    #[test]
    fn the_mix_is_cl2s_and_the_total_exact() {
        // 100 nodes × 30 pods: 3 big (750, about a quarter), 37 medium (1,110, about half
        // the rest), 228 small (the remaining 1,140).
        let a = args(30, [250, 30, 5], 0.5);
        let p = a.plan(100);
        let count = |class: &str| p.iter().filter(|d| d.name.starts_with(class)).count();
        assert_eq!(
            (count("big-"), count("medium-"), count("small-")),
            (3, 37, 228)
        );
        assert_eq!(p.iter().map(|d| d.replicas).sum::<usize>(), 3000);
        assert_eq!(p.iter().filter(|d| d.service).count(), 134);
        assert_eq!(
            p[0],
            Planned {
                namespace: "load-1".into(),
                name: "big-0".into(),
                replicas: 250,
                service: false
            }
        );
        // Rounding leftovers make a last, smaller Deployment.
        let p = args(3, [10, 5, 4], 0.0).plan(5);
        assert_eq!(
            p.iter().map(|d| d.replicas).collect::<Vec<_>>(),
            vec![5, 4, 4, 2]
        );
        assert!(p.iter().all(|d| !d.service));
    }

    #[test]
    fn namespaces_take_their_share_of_nodes() {
        let mut a = args(10, [250, 30, 5], 1.0);
        a.nodes_per_namespace = 40;
        assert_eq!(a.namespaces(100), vec!["load-1", "load-2", "load-3"]);
        let p = a.plan(100);
        let in_ns = |ns: &str| {
            p.iter()
                .filter(|d| d.namespace == ns)
                .map(|d| d.replicas)
                .sum::<usize>()
        };
        assert_eq!(
            (in_ns("load-1"), in_ns("load-2"), in_ns("load-3")),
            (400, 400, 200)
        );
        assert!(p.iter().all(|d| d.service));
    }

    #[test]
    fn bad_flags_are_refused() {
        assert!(args(10, [250, 30, 5], 0.5).validate().is_ok());
        let e = args(10, [250, 0, 5], 0.5).validate().unwrap_err();
        assert!(e.to_string().contains("--deployment-sizes"), "{e}");
        let e = args(10, [250, 30, 5], 1.5).validate().unwrap_err();
        assert!(e.to_string().contains("--service-fraction"), "{e}");
        let e = args(80, [250, 30, 5], 0.5).validate().unwrap_err();
        assert!(e.to_string().contains("110 pods"), "{e}");
        let mut a = args(10, [250, 30, 5], 0.5);
        a.rate = f64::NAN;
        assert!(a.validate().is_err());
    }
}
