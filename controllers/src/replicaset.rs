//! The ReplicaSet controller: keeps `spec.replicas` active pods matching the selector, as
//! upstream's `pkg/controller/replicaset`. The same controller runs ReplicationControllers
//! (upstream's `replicationcontroller`, a thin adapter over the ReplicaSet logic too): they are
//! seen through a ReplicaSet view (their map selector as `matchLabels`).
//!
//! - Pods are claimed through controller references: orphans that match the selector are
//!   adopted, owned pods that no longer match are released.
//! - Missing pods are created in slow-start batches (1, 2, 4, ...; a failure stops the rest),
//!   at most 500 per sync; surplus pods are deleted in upstream's preference order (unscheduled,
//!   pending, not ready, crowded nodes, recently ready, restarted, newest first).
//! - Expectations keep the controller from acting again before the watch has shown it its own
//!   creations and deletions.
//! - Status: replicas, fullyLabeledReplicas, readyReplicas, availableReplicas (minReadySeconds),
//!   observedGeneration, and a ReplicaFailure condition while creating or deleting fails.

use std::cmp::Reverse;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetCondition, ReplicaSetStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::core::v1::ReplicationController;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use keelson_client::events::{EventType, Recorder};
use keelson_client::informer::{Change, Index};
use keelson_client::queue::WorkQueue;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};

use crate::Informers;
use crate::util::{
    Expectations, Reconciler, SyncResult, claim_indexed, controller_of, controller_ref, deleting,
    is_not_found, key_of, matches, namespace_terminating, object_ref, owner_key, parse_selector,
    pod_active, pod_available, pod_ready, pod_ready_since, replace_status, split_key,
};

/// Most pods created or deleted in one sync, as upstream's `BurstReplicas`.
const BURST_REPLICAS: usize = 500;

/// What the controller manages: ReplicaSets, or ReplicationControllers seen as ReplicaSets.
pub trait Replicated:
    kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
    + Clone
    + serde::de::DeserializeOwned
    + serde::Serialize
    + std::fmt::Debug
    + Send
    + Sync
    + 'static
{
    /// The controller's name (logs, `--controllers`).
    const NAME: &'static str;
    /// The shared informer of this kind.
    fn informer(informers: &mut Informers) -> &mut keelson_client::informer::Informer<Self>;
    /// The object as a ReplicaSet (spec, status, metadata).
    fn view(&self) -> ReplicaSet;
    /// The object with a new status.
    fn with_status(&self, status: &ReplicaSetStatus) -> Self;
}

impl Replicated for ReplicaSet {
    const NAME: &'static str = "replicaset";
    fn informer(informers: &mut Informers) -> &mut keelson_client::informer::Informer<Self> {
        informers.replicasets()
    }
    fn view(&self) -> ReplicaSet {
        self.clone()
    }
    fn with_status(&self, status: &ReplicaSetStatus) -> Self {
        let mut s = self.clone();
        s.status = Some(status.clone());
        s
    }
}

impl Replicated for ReplicationController {
    const NAME: &'static str = "replicationcontroller";
    fn informer(informers: &mut Informers) -> &mut keelson_client::informer::Informer<Self> {
        informers.replicationcontrollers()
    }
    fn view(&self) -> ReplicaSet {
        // Same fields but the selector, a plain map here.
        let mut v = serde_json::to_value(self).unwrap_or_default();
        v["apiVersion"] = serde_json::json!("apps/v1");
        v["kind"] = serde_json::json!("ReplicaSet");
        if let Some(sel) = v.pointer_mut("/spec/selector") {
            *sel = serde_json::json!({ "matchLabels": sel.take() });
        }
        serde_json::from_value(v).unwrap_or_default()
    }
    fn with_status(&self, status: &ReplicaSetStatus) -> Self {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        v["status"] = serde_json::to_value(status).unwrap_or_default();
        if let Some(o) = v.pointer_mut("/status").and_then(|s| s.as_object_mut()) {
            o.remove("terminatingReplicas");
        }
        serde_json::from_value(v).unwrap_or_else(|_| self.clone())
    }
}

/// The ReplicaSet (or ReplicationController) controller.
pub struct ReplicaSetController<K: Replicated = ReplicaSet> {
    client: Client,
    sets: Store<K>,
    pods: Index<Pod>,
    queue: WorkQueue<String>,
    expectations: Arc<Expectations>,
    recorder: Recorder,
}

/// Keys of the objects in the pod's namespace whose selector matches it.
fn matching_sets<K: Replicated>(sets: &Store<K>, pod: &Pod) -> Vec<String> {
    let ns = pod.namespace().unwrap_or_default();
    sets.state()
        .iter()
        .filter(|rs| rs.namespace().as_deref() == Some(ns.as_str()))
        .filter(|rs| {
            parse_selector(rs.view().spec.as_ref().map(|s| &s.selector))
                .is_ok_and(|sel| matches(&sel, pod.labels()))
        })
        .map(|rs| key_of(rs.meta()))
        .collect()
}

impl<K: Replicated> ReplicaSetController<K> {
    /// Registers the controller's handlers on the shared informers.
    pub fn new(informers: &mut Informers, recorder: Recorder) -> Arc<Self> {
        let queue = WorkQueue::new();
        let expectations = Arc::new(Expectations::default());
        let sets = K::informer(informers).store();
        let pods = informers.pods_by_controller();
        {
            let q = queue.clone();
            K::informer(informers).on_change(move |c| {
                q.add(key_of(c.object().meta()));
            });
        }
        {
            let q = queue.clone();
            let exp = expectations.clone();
            let sets = sets.clone();
            informers.pods().on_change(move |c| match c {
                Change::Added(pod) => {
                    if let Some(k) = owner_key(&sets, pod) {
                        exp.observe(&k, &c);
                        q.add(k);
                    } else if controller_of(&pod.metadata).is_none() {
                        matching_sets(&sets, pod).into_iter().for_each(|k| q.add(k));
                    }
                }
                Change::Updated { old, new } => {
                    if old.resource_version() == new.resource_version() {
                        return;
                    }
                    let new_owner = owner_key(&sets, new);
                    let old_owner = owner_key(&sets, old);
                    if let Some(k) = &new_owner {
                        exp.observe(k, &c);
                    }
                    if let Some(k) = old_owner
                        && Some(&k) != new_owner.as_ref()
                    {
                        q.add(k);
                    }
                    match new_owner {
                        Some(k) => q.add(k),
                        None if controller_of(&new.metadata).is_none() => {
                            matching_sets(&sets, new).into_iter().for_each(|k| q.add(k))
                        }
                        None => {}
                    }
                }
                Change::Deleted(pod) => {
                    if let Some(k) = owner_key(&sets, pod) {
                        exp.observe(&k, &c);
                        q.add(k);
                    }
                }
            });
        }
        Arc::new(Self {
            client: informers.client(),
            sets,
            pods,
            queue,
            expectations,
            recorder,
        })
    }

    async fn sync(self: Arc<Self>, key: String) -> SyncResult {
        let (ns, name) = split_key(&key);
        let Some(orig) = self.sets.get(&ObjectRef::new(name).within(ns)) else {
            self.expectations.forget(&key);
            return Ok(None);
        };
        let rs = Arc::new(orig.view());
        let selector = match parse_selector(rs.spec.as_ref().map(|s| &s.selector)) {
            Ok(s) => s,
            Err(msg) => {
                self.recorder.record(
                    object_ref(orig.as_ref()),
                    EventType::Warning,
                    "InvalidSelector",
                    msg,
                );
                return Ok(None);
            }
        };
        // Pods from a template the selector does not match would never count as ours: creating
        // them would never end. Refuse, say so, and wait for a fix (the apiserver normally
        // rejects such objects; this guards against stores written behind its back).
        let template_labels = rs
            .spec
            .as_ref()
            .and_then(|s| s.template.as_ref())
            .and_then(|t| t.metadata.as_ref())
            .and_then(|m| m.labels.clone())
            .unwrap_or_default();
        if !matches(&selector, &template_labels) {
            self.recorder.record(
                object_ref(orig.as_ref()),
                EventType::Warning,
                "SelectorMismatch",
                "selector does not match the pod template labels; not creating pods".into(),
            );
            return Ok(None);
        }
        let act = self.expectations.satisfied(&key);
        // Owned pods and the namespace's orphans: what this ReplicaSet may keep or adopt.
        let claimed = claim_indexed(&self.client, &self.pods, orig.as_ref(), &selector, |p| {
            pod_active(p)
        })
        .await?;
        let mut failure = None;
        if act && !deleting(&rs.metadata) {
            failure = self.manage(&orig, &rs, &key, &claimed).await;
        }
        let min_ready = rs
            .spec
            .as_ref()
            .and_then(|s| s.min_ready_seconds)
            .unwrap_or(0);
        let status = compute_status(
            &rs,
            &claimed,
            failure.as_ref().map(|(r, m, _)| (*r, m.as_str())),
        );
        if rs.status.as_ref() != Some(&status)
            && replace_status(&self.client, &orig.with_status(&status))
                .await?
                .is_none()
        {
            return Ok(None);
        }
        if let Some((_, _, e)) = failure {
            return Err(e);
        }
        // Pods that are ready but not yet available become available by the clock alone.
        let waiting = status.ready_replicas.unwrap_or(0) > status.available_replicas.unwrap_or(0);
        Ok((min_ready > 0 && waiting).then(|| Duration::from_secs(min_ready as u64)))
    }

    /// Creates or deletes pods towards `spec.replicas`; on failure returns the condition
    /// reason, message and error.
    async fn manage(
        &self,
        owner: &K,
        rs: &ReplicaSet,
        key: &str,
        pods: &[Arc<Pod>],
    ) -> Option<(&'static str, String, kube::Error)> {
        let want = rs
            .spec
            .as_ref()
            .and_then(|s| s.replicas)
            .unwrap_or(1)
            .max(0) as usize;
        let ns = rs.namespace().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        if pods.len() < want {
            let n = (want - pods.len()).min(BURST_REPLICAS);
            self.expectations.expect_creations(key, n);
            let template = rs
                .spec
                .as_ref()
                .and_then(|s| s.template.clone())
                .unwrap_or_default();
            let mut pod = Pod {
                metadata: template.metadata.unwrap_or_default(),
                spec: template.spec,
                status: None,
            };
            pod.metadata.name = None;
            pod.metadata.generate_name = Some(format!("{}-", rs.name_any()));
            pod.metadata.namespace = Some(ns.clone());
            pod.metadata.owner_references = Some(vec![controller_ref(owner)]);
            let (created, err) = slow_start(n, |_| {
                let api = api.clone();
                let pod = pod.clone();
                async move { api.create(&PostParams::default(), &pod).await }
            })
            .await;
            for p in &created {
                self.recorder.record(
                    object_ref(owner),
                    EventType::Normal,
                    "SuccessfulCreate",
                    format!("Created pod: {}", p.name_any()),
                );
            }
            if let Some(e) = err {
                self.expectations.creations_skipped(key, n - created.len());
                if namespace_terminating(&e) {
                    return None;
                }
                self.recorder.record(
                    object_ref(owner),
                    EventType::Warning,
                    "FailedCreate",
                    format!("Error creating: {e}"),
                );
                return Some(("FailedCreate", e.to_string(), e));
            }
        } else if pods.len() > want {
            let n = (pods.len() - want).min(BURST_REPLICAS);
            let victims = pods_to_delete(pods, n);
            self.expectations
                .expect_deletions(key, victims.iter().map(|p| key_of(&p.metadata)));
            let results = futures::future::join_all(victims.iter().map(|p| {
                let api = api.clone();
                async move { (p, api.delete(&p.name_any(), &DeleteParams::default()).await) }
            }))
            .await;
            let mut failed = None;
            for (p, r) in results {
                match r {
                    Ok(_) => self.recorder.record(
                        object_ref(owner),
                        EventType::Normal,
                        "SuccessfulDelete",
                        format!("Deleted pod: {}", p.name_any()),
                    ),
                    Err(e) => {
                        self.expectations
                            .deletion_observed(key, &key_of(&p.metadata));
                        if !is_not_found(&e) {
                            self.recorder.record(
                                object_ref(owner),
                                EventType::Warning,
                                "FailedDelete",
                                format!("Error deleting: {e}"),
                            );
                            failed = Some(e);
                        }
                    }
                }
            }
            if let Some(e) = failed {
                return Some(("FailedDelete", e.to_string(), e));
            }
        }
        None
    }
}

impl<K: Replicated> Reconciler for ReplicaSetController<K> {
    const NAME: &'static str = K::NAME;

    fn queue(&self) -> &WorkQueue<String> {
        &self.queue
    }

    fn reconcile(
        self: Arc<Self>,
        key: String,
    ) -> impl Future<Output = SyncResult> + Send + 'static {
        self.sync(key)
    }
}

/// Runs `n` calls in batches of 1, 2, 4, ... and stops after the first batch with a failure.
pub async fn slow_start<T, F, Fut>(n: usize, f: F) -> (Vec<T>, Option<kube::Error>)
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<T, kube::Error>>,
{
    let mut done = Vec::with_capacity(n);
    let mut batch = 1;
    let mut started = 0;
    while started < n {
        let size = batch.min(n - started);
        let results = futures::future::join_all((started..started + size).map(&f)).await;
        started += size;
        let mut err = None;
        for r in results {
            match r {
                Ok(v) => done.push(v),
                Err(e) => err = Some(e),
            }
        }
        if err.is_some() {
            return (done, err);
        }
        batch *= 2;
    }
    (done, None)
}

/// The `n` pods to delete first, in upstream's order of preference.
pub fn pods_to_delete(pods: &[Arc<Pod>], n: usize) -> Vec<Arc<Pod>> {
    let mut per_node: HashMap<&str, usize> = HashMap::new();
    for p in pods {
        if let Some(node) = p.spec.as_ref().and_then(|s| s.node_name.as_deref()) {
            *per_node.entry(node).or_default() += 1;
        }
    }
    let mut ranked: Vec<_> = pods
        .iter()
        .map(|p| {
            let node = p.spec.as_ref().and_then(|s| s.node_name.as_deref());
            let phase = match p.status.as_ref().and_then(|s| s.phase.as_deref()) {
                Some("Pending") | None => 0,
                Some("Running") => 2,
                _ => 1,
            };
            let ready = pod_ready(p);
            let colocated = node.map(|n| per_node[n]).unwrap_or(0);
            let ready_since = pod_ready_since(p).flatten();
            let restarts: i32 = p
                .status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref())
                .map(|cs| cs.iter().map(|c| c.restart_count).sum())
                .unwrap_or(0);
            let created = p.metadata.creation_timestamp.as_ref().map(|t| t.0);
            let rank = (
                node.is_some(),
                phase,
                ready,
                Reverse(colocated),
                Reverse(ready_since),
                Reverse(restarts),
                Reverse(created),
            );
            (rank, p.clone())
        })
        .collect();
    ranked.sort_by_key(|(rank, _)| *rank);
    ranked.into_iter().take(n).map(|(_, p)| p).collect()
}

fn compute_status(
    rs: &ReplicaSet,
    pods: &[Arc<Pod>],
    failure: Option<(&str, &str)>,
) -> ReplicaSetStatus {
    let now = jiff::Timestamp::now();
    let min_ready = rs
        .spec
        .as_ref()
        .and_then(|s| s.min_ready_seconds)
        .unwrap_or(0);
    let template_labels = rs
        .spec
        .as_ref()
        .and_then(|s| s.template.as_ref())
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let fully_labeled = pods
        .iter()
        .filter(|p| {
            template_labels
                .iter()
                .all(|(k, v)| p.labels().get(k) == Some(v))
        })
        .count();
    let ready = pods.iter().filter(|p| pod_ready(p)).count();
    let available = pods
        .iter()
        .filter(|p| pod_available(p, min_ready, now))
        .count();
    let old = rs.status.clone().unwrap_or_default();
    let mut conditions: Vec<ReplicaSetCondition> = old
        .conditions
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|c| c.type_ != "ReplicaFailure")
        .collect();
    if let Some((reason, message)) = failure {
        let prev = old
            .conditions
            .as_ref()
            .and_then(|cs| cs.iter().find(|c| c.type_ == "ReplicaFailure"));
        conditions.push(ReplicaSetCondition {
            type_: "ReplicaFailure".into(),
            status: "True".into(),
            reason: Some(reason.to_string()),
            message: Some(message.to_string()),
            last_transition_time: prev
                .and_then(|c| c.last_transition_time.clone())
                .or(Some(Time(now))),
        });
    }
    ReplicaSetStatus {
        replicas: pods.len() as i32,
        fully_labeled_replicas: Some(fully_labeled as i32),
        ready_replicas: Some(ready as i32),
        available_replicas: Some(available as i32),
        observed_generation: rs.metadata.generation,
        conditions: (!conditions.is_empty()).then_some(conditions),
        terminating_replicas: old.terminating_replicas,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replication_controllers_are_seen_as_replica_sets() {
        let rc: ReplicationController = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "legacy", "namespace": "default", "uid": "u1"},
            "spec": {"replicas": 2, "selector": {"app": "legacy"},
                "template": {"metadata": {"labels": {"app": "legacy"}}}},
        }))
        .unwrap();
        let v = rc.view();
        assert_eq!(v.metadata.uid.as_deref(), Some("u1"));
        let spec = v.spec.unwrap();
        assert_eq!(spec.replicas, Some(2));
        assert_eq!(spec.selector.match_labels.unwrap()["app"], "legacy");
        let st = ReplicaSetStatus {
            replicas: 2,
            ready_replicas: Some(1),
            ..Default::default()
        };
        let back = rc.with_status(&st);
        assert_eq!(back.status.unwrap().ready_replicas, Some(1));
    }
    use k8s_openapi::api::core::v1::{PodCondition, PodSpec, PodStatus};

    fn pod(name: &str, node: Option<&str>, phase: &str, ready: bool) -> Arc<Pod> {
        Arc::new(Pod {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: node.map(Into::into),
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some(phase.into()),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        })
    }

    #[test]
    fn deletion_prefers_unscheduled_then_pending_then_unready() {
        let pods = vec![
            pod("running-ready", Some("n1"), "Running", true),
            pod("running-unready", Some("n2"), "Running", false),
            pod("pending", Some("n3"), "Pending", false),
            pod("unscheduled", None, "Pending", false),
        ];
        let order: Vec<String> = pods_to_delete(&pods, 4)
            .iter()
            .map(|p| p.name_any())
            .collect();
        assert_eq!(
            order,
            ["unscheduled", "pending", "running-unready", "running-ready"]
        );
        // Crowded nodes go first among otherwise equal pods.
        let pods = vec![
            pod("alone", Some("n1"), "Running", true),
            pod("crowd-a", Some("n2"), "Running", true),
            pod("crowd-b", Some("n2"), "Running", true),
        ];
        let first = pods_to_delete(&pods, 1);
        assert!(first[0].name_any().starts_with("crowd"));
    }

    #[tokio::test]
    async fn slow_start_stops_after_a_failed_batch() {
        let calls = std::sync::atomic::AtomicUsize::new(0);
        let (ok, err) = slow_start(10, |i| {
            calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move {
                if i == 4 {
                    Err(kube::Error::LinesCodecMaxLineLengthExceeded)
                } else {
                    Ok(i)
                }
            }
        })
        .await;
        // Batches 1, 2, 4: the third batch (indices 3..7) contains the failure.
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 7);
        assert_eq!(ok.len(), 6);
        assert!(err.is_some());
    }

    use crate::testing::{fake_client, taken};

    #[tokio::test]
    async fn against_a_fake_api_creates_once_then_trims_unscheduled_pods_first() {
        use kube::runtime::watcher::Event;
        let (client, calls) = fake_client();
        let mut informers = Informers::new(client.clone());
        let ctl = ReplicaSetController::<ReplicaSet>::new(
            &mut informers,
            Recorder::new(client.clone(), "replicaset-controller", None),
        );
        let rs: ReplicaSet = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "default", "uid": "rs-uid", "generation": 1},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "c", "image": "nginx"}]}}},
        }))
        .unwrap();
        informers.replicasets().apply_event(Event::Apply(rs));

        ctl.clone().sync("default/web".into()).await.unwrap();
        let creates = taken(&calls, "POST", "/api/v1/namespaces/default/pods");
        assert_eq!(creates.len(), 3);
        for (_, pod) in &creates {
            assert_eq!(
                pod.pointer("/metadata/generateName"),
                Some(&serde_json::json!("web-"))
            );
            assert_eq!(
                pod.pointer("/metadata/ownerReferences/0/uid"),
                Some(&serde_json::json!("rs-uid"))
            );
            assert_eq!(
                pod.pointer("/metadata/ownerReferences/0/controller"),
                Some(&serde_json::json!(true))
            );
        }
        let status = taken(
            &calls,
            "PUT",
            "/apis/apps/v1/namespaces/default/replicasets/web/status",
        );
        assert_eq!(status.len(), 1);
        assert_eq!(
            status[0].1.pointer("/status/observedGeneration"),
            Some(&serde_json::json!(1))
        );

        // Until the watch shows the new pods, another sync creates nothing (expectations).
        calls.lock().unwrap().clear();
        ctl.clone().sync("default/web".into()).await.unwrap();
        assert!(taken(&calls, "POST", "/api/v1/namespaces/default/pods").is_empty());

        // Four pods appear (one adopted elsewhere, say): the surplus one goes, and it is an
        // unscheduled one, not the running pod.
        let pod = |name: &str, node: Option<&str>, created: &str| -> Pod {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"),
                    "labels": {"app": "web"}, "creationTimestamp": created,
                    "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web",
                        "uid": "rs-uid", "controller": true}]},
                "spec": {"nodeName": node, "containers": [{"name": "c", "image": "nginx"}]},
                "status": {"phase": if node.is_some() { "Running" } else { "Pending" }},
            }))
            .unwrap()
        };
        for p in [
            pod("web-0", Some("n1"), "2026-12-01T10:00:00Z"),
            pod("web-1", Some("n1"), "2026-12-01T10:00:01Z"),
            pod("web-2", Some("n2"), "2026-12-01T10:00:02Z"),
            pod("web-3", None, "2026-12-01T10:00:03Z"),
        ] {
            informers.pods().apply_event(Event::Apply(p));
        }
        calls.lock().unwrap().clear();
        ctl.clone().sync("default/web".into()).await.unwrap();
        let deletes = taken(&calls, "DELETE", "/api/v1/namespaces/default/pods/");
        assert_eq!(deletes.len(), 1);
        assert_eq!(deletes[0].0, "/api/v1/namespaces/default/pods/web-3");
        let status = taken(
            &calls,
            "PUT",
            "/apis/apps/v1/namespaces/default/replicasets/web/status",
        );
        assert_eq!(
            status[0].1.pointer("/status/replicas"),
            Some(&serde_json::json!(4))
        );
    }
}
