//! The pod garbage collector, as upstream's `pkg/controller/podgc`, every 20 s:
//!
//! - terminated pods (Succeeded/Failed) beyond `--terminated-pod-gc-threshold` (12500; 0 turns
//!   this off) are deleted, oldest first, with a grace period of 0;
//! - pods bound to a node that no longer exists are deleted (after the node has been missing
//!   for a 40 s quarantine, as upstream), first marked Failed with a `DisruptionTarget`
//!   condition (reason `DeletionByPodGC`): no kubelet will report their end, and a Job's
//!   `podFailurePolicy` can match the condition;
//! - unscheduled pods that are being deleted are marked Failed and deleted at once (grace
//!   period 0).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
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

    /// Deletes `pod` with a grace period of 0, as upstream's PodGC deletes every pod.
    async fn delete(&self, pod: &Pod) -> Result<(), kube::Error> {
        let api: Api<Pod> =
            Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            ..Default::default()
        };
        tracing::info!(pod = %crate::util::key_of(&pod.metadata), "garbage collecting pod");
        match api.delete(&pod.name_any(), &dp).await {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Marks a pod that has not finished Failed (with a `DisruptionTarget` condition of this
    /// reason and message, if given), then force-deletes it, as upstream's PodGC.
    async fn fail_and_delete(
        &self,
        pod: &Pod,
        condition: Option<(&str, &str)>,
    ) -> Result<(), kube::Error> {
        if !pod_terminal(pod) {
            let mut status = serde_json::json!({"phase": "Failed"});
            if let Some((reason, message)) = condition {
                status["conditions"] = serde_json::json!([{
                    "type": "DisruptionTarget",
                    "status": "True",
                    "reason": reason,
                    "message": message,
                    "lastTransitionTime": jiff::Timestamp::now().to_string(),
                }]);
            }
            let api: Api<Pod> =
                Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
            let patch = Patch::Strategic(serde_json::json!({"status": status}));
            match api
                .patch_status(&pod.name_any(), &PatchParams::default(), &patch)
                .await
            {
                Ok(_) => {}
                Err(e) if is_not_found(&e) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        self.delete(pod).await
    }

    /// One pass; a pod that cannot be collected is logged and the others still are (the last
    /// such error is returned).
    async fn pass(&self, missing_since: &mut HashMap<String, Instant>) -> Result<(), kube::Error> {
        let mut last_error = None;
        let mut keep = |r: Result<(), kube::Error>| {
            if let Err(e) = r {
                tracing::warn!(error = %e, "pod gc could not collect a pod");
                last_error = Some(e);
            }
        };
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
                // Force-deleted, as upstream's (they are terminal: nothing is marked).
                for p in done.into_iter().take(excess) {
                    keep(self.fail_and_delete(p, None).await);
                }
            }
        }
        // Pods on nodes that are gone.
        let mut seen_missing = Vec::new();
        for p in &pods {
            let Some(node) = p.spec.as_ref().and_then(|s| s.node_name.clone()) else {
                if p.metadata.deletion_timestamp.is_some() {
                    keep(self.fail_and_delete(p, None).await);
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
                let gone = match Api::<Node>::all(self.client.clone()).get_opt(&node).await {
                    Ok(n) => n.is_none(),
                    Err(e) => {
                        keep(Err(e));
                        false
                    }
                };
                if gone {
                    let why = ("DeletionByPodGC", "PodGC: node no longer exists");
                    keep(self.fail_and_delete(p, Some(why)).await);
                }
            }
        }
        missing_since.retain(|n, _| seen_missing.contains(n));
        match last_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{fake_client_without, taken};
    use kube::runtime::watcher::Event;

    fn pod(name: &str, node: Option<&str>, phase: &str, deleting: bool) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "default", "uid": format!("{name}-uid"),
                "deletionTimestamp": deleting.then_some("2026-01-01T00:00:00Z")},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "x"}]},
            "status": {"phase": phase},
        }))
        .unwrap()
    }

    /// The names of the pods deleted, sorted; each deletion had a grace period of 0.
    fn force_deleted(calls: &crate::testing::Calls) -> Vec<String> {
        let mut deleted: Vec<String> = taken(calls, "DELETE", "/api/v1/namespaces/default/pods/")
            .into_iter()
            .map(|(p, b)| {
                assert_eq!(b["gracePeriodSeconds"], 0, "{p}");
                p.rsplit('/').next().unwrap().to_string()
            })
            .collect();
        deleted.sort();
        deleted
    }

    #[tokio::test]
    async fn pods_of_a_vanished_node_are_marked_failed_then_deleted() {
        let (client, calls) = fake_client_without(vec!["/api/v1/nodes/gone".into()]);
        let mut informers = crate::Informers::new(client);
        let gc = PodGc::new(&mut informers, 0);
        for p in [
            pod("orphan", Some("gone"), "Running", false),
            pod("finished", Some("gone"), "Succeeded", false),
            pod("unscheduled", None, "Pending", true),
            pod("waiting", None, "Pending", false),
        ] {
            informers.pods().apply_event(Event::Apply(p));
        }
        // The node has been missing past the quarantine.
        let since = Instant::now()
            .checked_sub(QUARANTINE + Duration::from_secs(1))
            .unwrap();
        let mut missing = HashMap::from([("gone".to_string(), since)]);
        gc.pass(&mut missing).await.unwrap();
        let patches = taken(&calls, "PATCH", "/api/v1/namespaces/default/pods/");
        let patched = |name: &str| {
            patches
                .iter()
                .find(|(p, _)| p == &format!("/api/v1/namespaces/default/pods/{name}/status"))
                .map(|(_, b)| b.clone())
        };
        let orphan = patched("orphan").expect("the orphan marked Failed");
        assert_eq!(orphan["status"]["phase"], "Failed");
        let cond = &orphan["status"]["conditions"][0];
        assert_eq!(cond["type"], "DisruptionTarget");
        assert_eq!(cond["status"], "True");
        assert_eq!(cond["reason"], "DeletionByPodGC");
        assert_eq!(cond["message"], "PodGC: node no longer exists");
        let unscheduled = patched("unscheduled").expect("marked Failed");
        assert_eq!(
            unscheduled,
            serde_json::json!({"status": {"phase": "Failed"}})
        );
        assert!(
            patched("finished").is_none(),
            "a finished pod keeps its phase"
        );
        assert_eq!(patches.len(), 2, "{patches:?}");
        let deleted = force_deleted(&calls);
        assert_eq!(deleted, ["finished", "orphan", "unscheduled"]);
    }

    #[tokio::test]
    async fn terminated_pods_past_the_threshold_are_force_deleted_oldest_first() {
        let (client, calls) = fake_client_without(vec![]);
        let mut informers = crate::Informers::new(client);
        let gc = PodGc::new(&mut informers, 2);
        for (name, phase, created) in [
            ("new-done", "Succeeded", "2026-01-04T00:00:00Z"),
            ("old-done", "Succeeded", "2026-01-01T00:00:00Z"),
            ("old-failed", "Failed", "2026-01-02T00:00:00Z"),
            ("mid-done", "Succeeded", "2026-01-03T00:00:00Z"),
            ("oldest-running", "Running", "2025-12-01T00:00:00Z"),
        ] {
            let mut p = pod(name, Some("n1"), phase, false);
            p.metadata.creation_timestamp = serde_json::from_value(serde_json::json!(created)).ok();
            informers.pods().apply_event(Event::Apply(p));
        }
        informers.nodes().apply_event(Event::Apply(
            serde_json::from_value(serde_json::json!({"metadata": {"name": "n1"}})).unwrap(),
        ));
        gc.pass(&mut HashMap::new()).await.unwrap();
        assert!(taken(&calls, "PATCH", "/api/v1/namespaces/default/pods/").is_empty());
        let deleted = force_deleted(&calls);
        assert_eq!(deleted, ["old-done", "old-failed"]);
    }
}
