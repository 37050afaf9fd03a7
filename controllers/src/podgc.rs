//! The pod garbage collector, as upstream's `pkg/controller/podgc`, every 20 s:
//!
//! - terminated pods (Succeeded/Failed) beyond `--terminated-pod-gc-threshold` (12500; 0 turns
//!   this off) are deleted, oldest first;
//! - pods bound to a node that no longer exists are deleted (after the node has been missing
//!   for a 40 s quarantine, as upstream);
//! - unscheduled pods that are being deleted are deleted at once (grace period 0).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};
use tokio_util::sync::CancellationToken;

use crate::Informers;
use crate::util::{is_not_found, pod_terminal};

const PERIOD: Duration = Duration::from_secs(20);
const QUARANTINE: Duration = Duration::from_secs(40);

/// The pod garbage collector.
pub struct PodGc {
    client: Client,
    pods: Store<Pod>,
    nodes: Store<Node>,
    threshold: usize,
}

impl PodGc {
    /// Uses the shared pod and node caches.
    pub fn new(informers: &mut Informers, threshold: usize) -> Arc<Self> {
        Arc::new(Self {
            client: informers.client(),
            pods: informers.pods().store(),
            nodes: informers.nodes().store(),
            threshold,
        })
    }

    /// Runs a pass every 20 s until `token` is cancelled.
    pub async fn run(self: Arc<Self>, token: CancellationToken) {
        let mut missing_since: HashMap<String, Instant> = HashMap::new();
        loop {
            if let Err(e) = self.pass(&mut missing_since).await {
                tracing::warn!(error = %e, "pod gc pass failed");
            }
            tokio::select! {
                _ = tokio::time::sleep(PERIOD) => {}
                _ = token.cancelled() => return,
            }
        }
    }

    async fn delete(&self, pod: &Pod, force: bool) -> Result<(), kube::Error> {
        let api: Api<Pod> =
            Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
        let dp = DeleteParams {
            grace_period_seconds: force.then_some(0),
            ..Default::default()
        };
        tracing::info!(pod = %crate::util::key_of(&pod.metadata), "garbage collecting pod");
        match api.delete(&pod.name_any(), &dp).await {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn pass(&self, missing_since: &mut HashMap<String, Instant>) -> Result<(), kube::Error> {
        let pods = self.pods.state();
        // Terminated pods over the threshold, oldest first.
        if self.threshold > 0 {
            let mut done: Vec<&Arc<Pod>> = pods
                .iter()
                .filter(|p| pod_terminal(p) && p.metadata.deletion_timestamp.is_none())
                .collect();
            if done.len() > self.threshold {
                done.sort_by_key(|p| p.metadata.creation_timestamp.as_ref().map(|t| t.0));
                let excess = done.len() - self.threshold;
                for p in done.into_iter().take(excess) {
                    self.delete(p, false).await?;
                }
            }
        }
        // Pods on nodes that are gone.
        let mut seen_missing = Vec::new();
        for p in &pods {
            let Some(node) = p.spec.as_ref().and_then(|s| s.node_name.clone()) else {
                if p.metadata.deletion_timestamp.is_some() {
                    self.delete(p, true).await?;
                }
                continue;
            };
            if self.nodes.get(&ObjectRef::new(&node)).is_some() {
                continue;
            }
            let since = *missing_since
                .entry(node.clone())
                .or_insert_with(Instant::now);
            seen_missing.push(node.clone());
            if since.elapsed() >= QUARANTINE {
                // Confirm with the API before deleting on a cache's word.
                let gone = Api::<Node>::all(self.client.clone())
                    .get_opt(&node)
                    .await?
                    .is_none();
                if gone {
                    self.delete(p, true).await?;
                }
            }
        }
        missing_since.retain(|n, _| seen_missing.contains(n));
        Ok(())
    }
}
