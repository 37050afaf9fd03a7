//! The DaemonSet controller, as upstream's `pkg/controller/daemon`: one pod on every node the
//! template may run on — node selector, required node affinity, and taints (NoSchedule,
//! NoExecute) against the template's tolerations plus the ones every daemon pod gets
//! (not-ready, unreachable, disk/memory/pid pressure, unschedulable; network-unavailable for
//! host-network pods).
//!
//! - Pods are pinned to their node with required node affinity on `metadata.name` (the
//!   scheduler binds them), carry `controller-revision-hash` and `pod-template-generation`.
//! - Extra pods on a node, pods on nodes that no longer qualify and failed pods are deleted.
//! - `RollingUpdate` replaces old-revision pods while at most `maxUnavailable` (default 1) of the
//!   desired nodes lack an available pod (unavailable old pods first). With `maxSurge` above 0
//!   the new pod starts beside the old one instead, on at most `maxSurge` nodes at a time (at
//!   once where the old pod is unavailable), and the old pod goes when the new one is available
//!   or the old one is not ready. `OnDelete` waits for the user to delete them.
//! - Status: desired/current/updated NumberScheduled, numberMisscheduled, numberReady,
//!   numberAvailable, numberUnavailable, observedGeneration.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet, DaemonSetStatus};
use k8s_openapi::api::core::v1::{
    Affinity, Node, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Pod,
    PodTemplateSpec, Toleration,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use keelson_client::events::{EventType, Recorder};
use keelson_client::informer::Index;
use keelson_client::queue::WorkQueue;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};

use crate::Informers;
use crate::history::{self, REVISION_LABEL};
use crate::nodelifecycle::tolerates;
use crate::util::{
    Expectations, SyncResult, claim_indexed, controller_ref, deleting, enqueue_controller,
    is_not_found, key_of, namespace_terminating, object_ref, owner_key, pod_available, pod_ready,
    reconciler, replace_status, selector_or_event, split_key,
};

/// The DaemonSet controller.
pub struct DaemonSetController {
    client: Client,
    sets: Store<DaemonSet>,
    nodes: Store<Node>,
    pods: Index<Pod>,
    revisions: Index<ControllerRevision>,
    queue: WorkQueue<String>,
    /// The creations and deletions asked for and not yet seen: until they are, a sync would
    /// read a cache without them and create a node's pod twice (or delete one twice).
    expectations: Arc<Expectations>,
    recorder: Recorder,
}

/// `maxSurge` or `maxUnavailable` for `total` nodes: a count, or a percentage rounded up, as
/// upstream's; `default` when unset.
fn scaled(v: Option<&IntOrString>, total: i32, default: i32) -> i32 {
    match v {
        Some(IntOrString::Int(n)) => (*n).max(0),
        Some(IntOrString::String(p)) => {
            let pct: f64 = p.trim_end_matches('%').parse().unwrap_or(0.0);
            (pct * f64::from(total) / 100.0).ceil().max(0.0) as i32
        }
        None => default,
    }
}

/// The tolerations every daemon pod gets, as upstream.
fn daemon_tolerations(template: &PodTemplateSpec) -> Vec<Toleration> {
    let t = |key: &str, effect: &str| Toleration {
        key: Some(key.into()),
        operator: Some("Exists".into()),
        effect: Some(effect.into()),
        ..Default::default()
    };
    let mut v = vec![
        t("node.kubernetes.io/not-ready", "NoExecute"),
        t("node.kubernetes.io/unreachable", "NoExecute"),
        t("node.kubernetes.io/disk-pressure", "NoSchedule"),
        t("node.kubernetes.io/memory-pressure", "NoSchedule"),
        t("node.kubernetes.io/pid-pressure", "NoSchedule"),
        t("node.kubernetes.io/unschedulable", "NoSchedule"),
    ];
    if template.spec.as_ref().and_then(|s| s.host_network) == Some(true) {
        v.push(t("node.kubernetes.io/network-unavailable", "NoSchedule"));
    }
    v
}

fn requirement_matches(r: &NodeSelectorRequirement, value: Option<&String>) -> bool {
    let values = r.values.clone().unwrap_or_default();
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| values.contains(v)),
        "NotIn" => value.is_none_or(|v| !values.contains(v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => {
            let (Some(v), Some(bound)) = (
                value.and_then(|v| v.parse::<i64>().ok()),
                values.first().and_then(|b| b.parse::<i64>().ok()),
            ) else {
                return false;
            };
            if r.operator == "Gt" {
                v > bound
            } else {
                v < bound
            }
        }
        _ => false,
    }
}

/// True when a pod from `template` may run on `node`.
pub fn should_run(template: &PodTemplateSpec, node: &Node) -> bool {
    let spec = template.spec.clone().unwrap_or_default();
    let labels = node.labels();
    if let Some(sel) = &spec.node_selector
        && !sel.iter().all(|(k, v)| labels.get(k) == Some(v))
    {
        return false;
    }
    let required = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|n| {
            n.required_during_scheduling_ignored_during_execution
                .as_ref()
        });
    if let Some(req) = required {
        let name = node.name_any();
        let any = req.node_selector_terms.iter().any(|term| {
            term.match_expressions
                .iter()
                .flatten()
                .all(|r| requirement_matches(r, labels.get(&r.key)))
                && term.match_fields.iter().flatten().all(|r| {
                    let v = (r.key == "metadata.name").then(|| name.clone());
                    requirement_matches(r, v.as_ref())
                })
        });
        if !any {
            return false;
        }
    }
    let mut tolerations = spec.tolerations.clone().unwrap_or_default();
    tolerations.extend(daemon_tolerations(template));
    node.spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .into_iter()
        .flatten()
        .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
        .all(|taint| tolerations.iter().any(|t| tolerates(t, taint)))
}

/// The node a daemon pod is for: its nodeName, or the name its affinity pins it to.
fn target_node(pod: &Pod) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    if let Some(n) = &spec.node_name {
        return Some(n.clone());
    }
    spec.affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?
        .node_selector_terms
        .iter()
        .flat_map(|t| t.match_fields.iter().flatten())
        .find(|r| r.key == "metadata.name" && r.operator == "In")
        .and_then(|r| r.values.as_ref()?.first().cloned())
}

fn failed(p: &Pod) -> bool {
    p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Failed")
}

impl DaemonSetController {
    /// Registers the controller's handlers on the shared informers.
    pub fn new(informers: &mut Informers, recorder: Recorder) -> Arc<Self> {
        let queue = WorkQueue::new();
        let sets = informers.daemonsets().store();
        let nodes = informers.nodes().store();
        let pods = informers.pods_by_controller();
        let revisions = informers.revisions_by_controller();
        {
            let q = queue.clone();
            informers
                .daemonsets()
                .on_change(move |c| q.add(key_of(&c.object().metadata)));
        }
        {
            // Any node change may change where daemons run.
            let q = queue.clone();
            let sets = sets.clone();
            informers.nodes().on_change(move |_| {
                for s in sets.state() {
                    q.add(key_of(&s.metadata));
                }
            });
        }
        let expectations = Arc::new(Expectations::default());
        {
            let q = queue.clone();
            let (exp, sets) = (expectations.clone(), sets.clone());
            informers.pods().on_change(move |c| {
                if let Some(k) = owner_key(&sets, c.object()) {
                    exp.observe(&k, &c);
                }
                enqueue_controller(&q, "DaemonSet", &c)
            });
        }
        Arc::new(Self {
            client: informers.client(),
            sets,
            nodes,
            pods,
            revisions,
            queue,
            expectations,
            recorder,
        })
    }

    async fn sync(self: Arc<Self>, key: String) -> SyncResult {
        let (ns, name) = split_key(&key);
        let Some(ds) = self.sets.get(&ObjectRef::new(name).within(ns)) else {
            self.expectations.forget(&key);
            return Ok(None);
        };
        let ds = (*ds).clone();
        let spec = ds.spec.clone().unwrap_or_default();
        let Some(selector) =
            selector_or_event(&self.recorder, &ds, Some(&spec.selector), "SelectingAll")
        else {
            return Ok(None);
        };
        let uid = ds.uid().unwrap_or_default();
        // Taken before the cache is read, as the ReplicaSet controller does.
        let act = self.expectations.satisfied(&key);
        let pods = claim_indexed(&self.client, &self.pods, &ds, &selector, |_| true).await?;
        let mut status = ds.status.clone().unwrap_or_default();
        let (update, revisions) = history::ensure(
            &self.client,
            &ds,
            &spec.template,
            status.collision_count.unwrap_or(0),
            history::owned(&self.revisions, &uid),
        )
        .await?;
        let update_name = update.name_any();
        let nodes = self.nodes.state();
        let mut by_node: BTreeMap<String, Vec<Arc<Pod>>> = BTreeMap::new();
        let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let mut to_delete: Vec<Arc<Pod>> = Vec::new();
        for p in &pods {
            match target_node(p) {
                Some(n) => by_node.entry(n).or_default().push(p.clone()),
                None if !deleting(&p.metadata) => to_delete.push(p.clone()),
                None => {}
            }
        }
        let min_ready = spec.min_ready_seconds.unwrap_or(0);
        let now = jiff::Timestamp::now();
        let rolling = spec
            .update_strategy
            .as_ref()
            .and_then(|s| s.type_.as_deref())
            .is_none_or(|t| t == "RollingUpdate");
        let rolling_args = spec
            .update_strategy
            .as_ref()
            .and_then(|s| s.rolling_update.as_ref());
        let eligible = nodes
            .iter()
            .filter(|n| should_run(&spec.template, n))
            .count() as i32;
        let max_surge = if rolling {
            scaled(rolling_args.and_then(|r| r.max_surge.as_ref()), eligible, 0)
        } else {
            0
        };
        // Nodes with an old pod and no new one (whether the old one is available), and nodes
        // where a surged new pod is not available yet.
        let mut surge_candidates: Vec<(bool, String)> = Vec::new();
        let mut surging = 0;
        let mut to_create: Vec<String> = Vec::new();
        let (mut desired, mut current, mut misscheduled, mut ready, mut available, mut updated) =
            (0, 0, 0, 0, 0, 0);
        let mut old_pods: Vec<(bool, Arc<Pod>)> = Vec::new();
        let mut unavailable_nodes = 0;
        for node in &nodes {
            let node_name = node.name_any();
            let mut on: Vec<Arc<Pod>> = by_node.remove(&node_name).unwrap_or_default();
            on.sort_by_key(|p| p.metadata.creation_timestamp.as_ref().map(|t| t.0));
            if !should_run(&spec.template, node) {
                let live: Vec<_> = on.into_iter().filter(|p| !deleting(&p.metadata)).collect();
                if !live.is_empty() {
                    misscheduled += 1;
                }
                to_delete.extend(live);
                continue;
            }
            desired += 1;
            let (bad, mut live): (Vec<_>, Vec<_>) = on
                .into_iter()
                .filter(|p| !deleting(&p.metadata))
                .partition(|p| failed(p));
            to_delete.extend(bad);
            if live.is_empty() {
                to_create.push(node_name);
                unavailable_nodes += 1;
                continue;
            }
            current += 1;
            if max_surge > 0 {
                // The oldest pod of each revision stays; the old one goes once the new one is
                // available, or when it is not ready itself.
                let (mut old, mut new) = (None, None);
                for p in live.drain(..) {
                    let slot = if p.labels().get(REVISION_LABEL) == Some(&update_name) {
                        &mut new
                    } else {
                        &mut old
                    };
                    match slot {
                        None => *slot = Some(p),
                        Some(_) => to_delete.push(p),
                    }
                }
                match (&old, &new) {
                    (Some(o), Some(n)) => {
                        if !pod_ready(o) || pod_available(n, min_ready, now) {
                            to_delete.push(o.clone());
                        } else {
                            surging += 1;
                        }
                    }
                    (Some(o), None) => {
                        surge_candidates.push((pod_available(o, min_ready, now), node_name))
                    }
                    _ => {}
                }
                live.extend(old.into_iter().chain(new));
                live.sort_by_key(|p| p.metadata.creation_timestamp.as_ref().map(|t| t.0));
            } else {
                // Keep the oldest, as upstream.
                to_delete.extend(live.drain(1..));
            }
            let p = &live[0];
            let is_available = pod_available(p, min_ready, now);
            if pod_ready(p) {
                ready += 1;
            }
            if is_available {
                available += 1;
            } else {
                unavailable_nodes += 1;
            }
            if p.labels().get(REVISION_LABEL) == Some(&update_name) {
                updated += 1;
            } else if max_surge == 0 {
                old_pods.push((is_available, p.clone()));
            }
        }
        // Pods for nodes that no longer exist.
        for (_, ps) in by_node {
            to_delete.extend(ps.into_iter().filter(|p| !deleting(&p.metadata)));
        }
        if act && !deleting(&ds.metadata) {
            // Surge: new pods beside old ones, at most maxSurge nodes at a time (unavailable
            // old pods first, and those regardless of the budget; then by node name).
            surge_candidates.sort();
            let mut budget = max_surge - surging;
            for (avail, node) in surge_candidates {
                if !avail {
                    to_create.push(node);
                } else if budget > 0 {
                    budget -= 1;
                    to_create.push(node);
                }
            }
            // Rolling update within maxUnavailable.
            if rolling && !old_pods.is_empty() {
                let max_unavailable = scaled(
                    rolling_args.and_then(|r| r.max_unavailable.as_ref()),
                    desired,
                    1,
                )
                .max(1);
                old_pods.sort_by_key(|(avail, _)| *avail);
                let mut budget = max_unavailable - unavailable_nodes;
                for (avail, p) in old_pods {
                    if !avail {
                        to_delete.push(p);
                    } else if budget > 0 {
                        budget -= 1;
                        to_delete.push(p);
                    }
                }
            }
            self.expectations
                .expect_deletions(&key, to_delete.iter().map(|p| key_of(&p.metadata)));
            let mut failed = None;
            for p in &to_delete {
                match api.delete(&p.name_any(), &DeleteParams::default()).await {
                    Ok(_) => self.recorder.record(
                        object_ref(&ds),
                        EventType::Normal,
                        "SuccessfulDelete",
                        format!("Deleted pod: {}", p.name_any()),
                    ),
                    Err(e) => {
                        // Not deleted by this call: nothing to wait for.
                        self.expectations
                            .deletion_observed(&key, &key_of(&p.metadata));
                        if !is_not_found(&e) {
                            failed = Some(e);
                        }
                    }
                }
            }
            if let Some(e) = failed {
                return Err(e);
            }
            self.expectations.expect_creations(&key, to_create.len());
            for (i, node) in to_create.iter().enumerate() {
                let pod = self.pod_for(&ds, node, &update_name);
                match api.create(&PostParams::default(), &pod).await {
                    Ok(p) => self.recorder.record(
                        object_ref(&ds),
                        EventType::Normal,
                        "SuccessfulCreate",
                        format!("Created pod: {}", p.name_any()),
                    ),
                    Err(e) => {
                        self.expectations
                            .creations_skipped(&key, to_create.len() - i);
                        if namespace_terminating(&e) {
                            break;
                        }
                        self.recorder.record(
                            object_ref(&ds),
                            EventType::Warning,
                            "FailedCreate",
                            format!("Error creating: {e}"),
                        );
                        return Err(e);
                    }
                }
            }
        }
        let live_revisions: Vec<String> = pods
            .iter()
            .filter_map(|p| p.labels().get(REVISION_LABEL).cloned())
            .chain([update_name.clone()])
            .collect();
        let live_refs: Vec<&str> = live_revisions.iter().map(String::as_str).collect();
        history::trim(
            &self.client,
            &revisions,
            &live_refs,
            spec.revision_history_limit.unwrap_or(10),
        )
        .await?;
        status = DaemonSetStatus {
            collision_count: status.collision_count,
            conditions: status.conditions,
            current_number_scheduled: current,
            desired_number_scheduled: desired,
            number_available: Some(available),
            number_misscheduled: misscheduled,
            number_ready: ready,
            number_unavailable: Some(desired - available),
            observed_generation: ds.metadata.generation,
            updated_number_scheduled: Some(updated),
        };
        if ds.status.as_ref() != Some(&status) {
            let mut updated_ds = ds.clone();
            updated_ds.status = Some(status);
            if replace_status(&self.client, &updated_ds).await?.is_none() {
                return Ok(None);
            }
        }
        Ok((min_ready > 0 && ready > available).then(|| Duration::from_secs(min_ready as u64)))
    }

    fn pod_for(&self, ds: &DaemonSet, node: &str, revision: &str) -> Pod {
        let template = ds
            .spec
            .as_ref()
            .map(|s| s.template.clone())
            .unwrap_or_default();
        let mut meta = template.metadata.clone().unwrap_or_default();
        meta.name = None;
        meta.generate_name = Some(format!("{}-", ds.name_any()));
        meta.namespace = ds.namespace();
        meta.owner_references = Some(vec![controller_ref(ds)]);
        let labels = meta.labels.get_or_insert_with(Default::default);
        labels.insert(REVISION_LABEL.into(), revision.to_string());
        labels.insert(
            "pod-template-generation".into(),
            ds.metadata.generation.unwrap_or(1).to_string(),
        );
        let mut spec = template.spec.clone().unwrap_or_default();
        let mut tolerations = spec.tolerations.take().unwrap_or_default();
        for t in daemon_tolerations(&template) {
            if !tolerations
                .iter()
                .any(|x| x.key == t.key && x.effect == t.effect)
            {
                tolerations.push(t);
            }
        }
        spec.tolerations = Some(tolerations);
        let affinity = spec.affinity.get_or_insert_with(Affinity::default);
        let na = affinity
            .node_affinity
            .get_or_insert_with(NodeAffinity::default);
        na.required_during_scheduling_ignored_during_execution = Some(NodeSelector {
            node_selector_terms: vec![NodeSelectorTerm {
                match_expressions: None,
                match_fields: Some(vec![NodeSelectorRequirement {
                    key: "metadata.name".into(),
                    operator: "In".into(),
                    values: Some(vec![node.to_string()]),
                }]),
            }],
        });
        Pod {
            metadata: meta,
            spec: Some(spec),
            status: None,
        }
    }
}

reconciler!(DaemonSetController, "daemonset");

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeSpec, PodSpec, Taint};

    fn node(name: &str, labels: &[(&str, &str)], taint: Option<&str>) -> Node {
        Node {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                taints: taint.map(|k| {
                    vec![Taint {
                        key: k.into(),
                        effect: "NoSchedule".into(),
                        ..Default::default()
                    }]
                }),
                ..Default::default()
            }),
            status: None,
        }
    }

    #[test]
    fn daemons_follow_selectors_affinity_and_taints() {
        let mut t = PodTemplateSpec {
            spec: Some(PodSpec::default()),
            ..Default::default()
        };
        assert!(should_run(&t, &node("a", &[], None)));
        assert!(!should_run(&t, &node("a", &[], Some("dedicated"))));
        // The automatic tolerations cover the node-condition taints.
        assert!(should_run(
            &t,
            &node("a", &[], Some("node.kubernetes.io/unschedulable"))
        ));
        t.spec.as_mut().unwrap().node_selector =
            Some([("role".to_string(), "web".to_string())].into());
        assert!(!should_run(&t, &node("a", &[], None)));
        assert!(should_run(&t, &node("a", &[("role", "web")], None)));
    }

    /// A DaemonSet controller on a fake API, its informers, and the API's record of calls.
    fn on_fake_api() -> (
        Arc<DaemonSetController>,
        crate::Informers,
        crate::testing::Calls,
    ) {
        let (client, calls) = crate::testing::fake_client();
        let mut informers = crate::Informers::new(client.clone());
        let ctl = DaemonSetController::new(
            &mut informers,
            Recorder::new(client, "daemon-set-controller", None),
        );
        (ctl, informers, calls)
    }

    #[tokio::test]
    async fn against_a_fake_api_a_node_gets_one_pod_however_often_it_syncs() {
        use crate::testing::taken;
        use kube::runtime::watcher::Event;
        let (ctl, mut informers, calls) = on_fake_api();
        let ds: DaemonSet = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "agent", "namespace": "default", "uid": "ds-uid", "generation": 1},
            "spec": {"selector": {"matchLabels": {"app": "agent"}},
                "template": {"metadata": {"labels": {"app": "agent"}},
                    "spec": {"containers": [{"name": "c", "image": "agent"}]}}},
        }))
        .unwrap();
        informers.daemonsets().apply_event(Event::Apply(ds));
        informers
            .nodes()
            .apply_event(Event::Apply(node("n1", &[], None)));
        let creates = || taken(&calls, "POST", "/api/v1/namespaces/default/pods");
        ctl.clone().sync("default/agent".into()).await.unwrap();
        assert_eq!(creates().len(), 1);
        // Synced again before the watch shows that pod: nothing more (expectations).
        ctl.clone().sync("default/agent".into()).await.unwrap();
        assert_eq!(creates().len(), 1, "a second pod for n1");
        // The pod arrives: still one.
        let mut pod: Pod = serde_json::from_value(creates()[0].1.clone()).unwrap();
        pod.metadata.name = Some("agent-0".into());
        pod.metadata.uid = Some("p-uid".into());
        informers.pods().apply_event(Event::Apply(pod.clone()));
        ctl.clone().sync("default/agent".into()).await.unwrap();
        assert_eq!(creates().len(), 1);
        // Its deletion is seen: n1 gets a new one.
        informers.pods().apply_event(Event::Delete(pod));
        ctl.clone().sync("default/agent".into()).await.unwrap();
        assert_eq!(creates().len(), 2, "n1 gets a new pod");
    }

    #[tokio::test]
    async fn with_max_surge_the_new_pod_starts_before_the_old_one_goes() {
        use crate::testing::taken;
        use kube::runtime::watcher::Event;
        let (ctl, mut informers, calls) = on_fake_api();
        let ds: DaemonSet = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "agent", "namespace": "default", "uid": "ds-uid", "generation": 2},
            "spec": {"selector": {"matchLabels": {"app": "agent"}},
                "updateStrategy": {"type": "RollingUpdate",
                    "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
                "template": {"metadata": {"labels": {"app": "agent"}},
                    "spec": {"containers": [{"name": "c", "image": "agent:2"}]}}},
        }))
        .unwrap();
        informers.daemonsets().apply_event(Event::Apply(ds));
        let pod = |name: &str, node: &str, rev: &str, ready: bool, age: i64| -> Pod {
            let created = jiff::Timestamp::now() - jiff::SignedDuration::from_secs(age);
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": name, "namespace": "default", "uid": format!("{name}-uid"),
                    "creationTimestamp": created.to_string(),
                    "labels": {"app": "agent", REVISION_LABEL: rev},
                    "ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet",
                        "name": "agent", "uid": "ds-uid", "controller": true}]},
                "spec": {"containers": [{"name": "c", "image": "x"}],
                    "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
                        {"nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name",
                            "operator": "In", "values": [node]}]}]}}}},
                "status": {"phase": "Running", "conditions": [{"type": "Ready",
                    "status": if ready { "True" } else { "False" },
                    "lastTransitionTime": created.to_string()}]},
            }))
            .unwrap()
        };
        for (i, n) in ["n1", "n2", "n3"].iter().enumerate() {
            informers
                .nodes()
                .apply_event(Event::Apply(node(n, &[], None)));
            // n3's old pod is not ready.
            let p = pod(&format!("old-{n}"), n, "old", i < 2, 100);
            informers.pods().apply_event(Event::Apply(p));
        }
        let creates = || {
            let mut v: Vec<String> = taken(&calls, "POST", "/api/v1/namespaces/default/pods")
                .iter()
                .map(|(_, b)| {
                    b.pointer("/spec/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution/nodeSelectorTerms/0/matchFields/0/values/0")
                        .and_then(|v| v.as_str())
                        .unwrap_or("")
                        .to_string()
                })
                .collect();
            v.sort();
            v
        };
        let deletes = || {
            let mut v: Vec<String> = taken(&calls, "DELETE", "/api/v1/namespaces/default/pods/")
                .into_iter()
                .map(|(p, _)| p.rsplit('/').next().unwrap_or("").to_string())
                .collect();
            v.sort();
            v
        };
        ctl.clone().sync("default/agent".into()).await.unwrap();
        // One surge (n1, the first available node) and n3, whose old pod is unavailable (beyond
        // the budget); nothing is deleted until a new pod is there.
        assert_eq!(creates(), ["n1", "n3"]);
        assert_eq!(deletes(), Vec::<String>::new());
        let rev =
            taken(&calls, "POST", "/api/v1/namespaces/default/pods")[0].1["metadata"]["labels"]
                [REVISION_LABEL]
                .as_str()
                .unwrap()
                .to_string();
        // The new pods arrive, not ready yet: nothing more happens (n1 is the surge in flight),
        // except that n3's unready old pod goes beside its new one.
        for n in ["n1", "n3"] {
            informers
                .pods()
                .apply_event(Event::Apply(pod(&format!("new-{n}"), n, &rev, false, 1)));
        }
        ctl.clone().sync("default/agent".into()).await.unwrap();
        assert_eq!(creates(), ["n1", "n3"]);
        assert_eq!(deletes(), ["old-n3"]);
        informers
            .pods()
            .apply_event(Event::Delete(pod("old-n3", "n3", "old", false, 100)));
        // n1's new pod is available: its old pod goes, and n2 gets its surge.
        informers
            .pods()
            .apply_event(Event::Apply(pod("new-n1", "n1", &rev, true, 1)));
        ctl.clone().sync("default/agent".into()).await.unwrap();
        assert_eq!(deletes(), ["old-n1", "old-n3"]);
        assert_eq!(creates(), ["n1", "n2", "n3"]);
    }
}
