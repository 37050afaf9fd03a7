//! The StatefulSet controller, as upstream's `pkg/controller/statefulset`:
//!
//! - Pods have stable names `<set>-<ordinal>`, hostname = name and subdomain = `serviceName`,
//!   labels `statefulset.kubernetes.io/pod-name`, `apps.kubernetes.io/pod-index` and
//!   `controller-revision-hash`; each `volumeClaimTemplates` entry becomes a PVC
//!   `<template>-<set>-<ordinal>` created before the pod and mounted by it.
//! - `OrderedReady`: ordinal i is created only once 0..i-1 are Running and Ready, and scaling
//!   down removes the highest ordinal first, one at a time, only while the others are healthy.
//!   `Parallel` creates and deletes without waiting.
//! - Updates: a ControllerRevision per template; `RollingUpdate` replaces pods from the highest
//!   ordinal down to `partition`, one at a time, each once the rest are ready; `OnDelete` only
//!   uses the new revision for pods that are re-created. Failed pods are replaced.
//! - `persistentVolumeClaimRetentionPolicy`: with `whenDeleted: Delete` the claims are owned by
//!   the set, with `whenScaled: Delete` the claims of a pod being scaled away by that pod (set
//!   before the pod is deleted), so the garbage collector deletes them after their owner; a pod
//!   whose claim is still being deleted waits for it to go. `Retain` (the default) removes
//!   such references again.
//! - Status: replicas, readyReplicas, availableReplicas, currentReplicas, updatedReplicas,
//!   currentRevision, updateRevision, observedGeneration.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{ControllerRevision, StatefulSet, StatefulSetSpec};
use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimVolumeSource, Pod, Volume,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use keelson_client::events::{EventType, Recorder};
use keelson_client::informer::Index;
use keelson_client::queue::WorkQueue;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};

use crate::Informers;
use crate::history::{self, REVISION_LABEL};
use crate::util::{
    SyncResult, claim_indexed, controller_ref, deleting, enqueue_controller, is_conflict,
    is_not_found, key_of, namespace_terminating, object_ref, pod_available, pod_ready, reconciler,
    replace_status, selector_or_event, split_key,
};

/// The StatefulSet controller.
pub struct StatefulSetController {
    client: Client,
    sets: Store<StatefulSet>,
    pods: Index<Pod>,
    revisions: Index<ControllerRevision>,
    claims: Store<PersistentVolumeClaim>,
    queue: WorkQueue<String>,
    recorder: Recorder,
}

/// Which owners the retention policy wants a template claim to have: `(set, pod)`. A claim of
/// a pod being scaled away (`condemned`) is owned by the pod when `whenScaled` is Delete;
/// otherwise by the set when `whenDeleted` is Delete (upstream's StatefulSetAutoDeletePVC).
fn wanted_owners(spec: &StatefulSetSpec, condemned: bool) -> (bool, bool) {
    let policy = spec.persistent_volume_claim_retention_policy.as_ref();
    let delete = |v: Option<&String>| v.map(String::as_str) == Some("Delete");
    let pod = condemned && delete(policy.and_then(|p| p.when_scaled.as_ref()));
    let set = !pod && delete(policy.and_then(|p| p.when_deleted.as_ref()));
    (set, pod)
}

/// A plain (not controller) owner reference.
fn owner_ref(api_version: &str, kind: &str, name: String, uid: String) -> OwnerReference {
    OwnerReference {
        api_version: api_version.into(),
        kind: kind.into(),
        name,
        uid,
        controller: None,
        block_owner_deletion: None,
    }
}

/// The claim's owner references as `want` has them (see [`wanted_owners`]), or `None` when
/// they already are. References to earlier pods of the same name go too: the garbage collector
/// would delete the claim once such a pod is gone.
fn fixed_owners(
    claim: &PersistentVolumeClaim,
    set: &StatefulSet,
    pod: &Pod,
    (want_set, want_pod): (bool, bool),
) -> Option<Vec<OwnerReference>> {
    let before = claim.metadata.owner_references.clone().unwrap_or_default();
    let set_uid = set.uid().unwrap_or_default();
    let pod_uid = pod.uid().unwrap_or_default();
    let mut refs: Vec<OwnerReference> = before
        .iter()
        .filter(|r| {
            let keep_set = want_set || r.uid != set_uid;
            let keep_pod =
                (want_pod && r.uid == pod_uid) || r.kind != "Pod" || r.name != pod.name_any();
            keep_set && keep_pod
        })
        .cloned()
        .collect();
    if want_set && !refs.iter().any(|r| r.uid == set_uid) {
        refs.push(owner_ref("apps/v1", "StatefulSet", set.name_any(), set_uid));
    }
    if want_pod && !refs.iter().any(|r| r.uid == pod_uid) {
        refs.push(owner_ref("v1", "Pod", pod.name_any(), pod_uid));
    }
    (refs != before).then_some(refs)
}

/// The claim of template `template` for ordinal `ord`: `<template>-<set>-<ordinal>`.
fn claim_name(template: &str, set: &StatefulSet, ord: i32) -> String {
    format!("{template}-{}-{ord}", set.name_any())
}

/// The names of an ordinal's claims, one per `volumeClaimTemplates` entry.
fn claim_names(set: &StatefulSet, spec: &StatefulSetSpec, ord: i32) -> Vec<String> {
    spec.volume_claim_templates
        .iter()
        .flatten()
        .map(|t| claim_name(&t.name_any(), set, ord))
        .collect()
}

fn ordinal_of(set: &str, pod: &Pod) -> Option<i32> {
    pod.name_any()
        .strip_prefix(set)?
        .strip_prefix('-')?
        .parse()
        .ok()
}

fn phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending")
}

fn healthy(p: &Pod) -> bool {
    phase(p) == "Running" && pod_ready(p) && !deleting(&p.metadata)
}

impl StatefulSetController {
    /// Registers the controller's handlers on the shared informers.
    pub fn new(informers: &mut Informers, recorder: Recorder) -> Arc<Self> {
        let queue = WorkQueue::new();
        let sets = informers.statefulsets().store();
        let pods = informers.pods_by_controller();
        let revisions = informers.revisions_by_controller();
        let claims = informers.claims().store();
        {
            let q = queue.clone();
            informers
                .statefulsets()
                .on_change(move |c| q.add(key_of(&c.object().metadata)));
        }
        {
            let q = queue.clone();
            informers
                .pods()
                .on_change(move |c| enqueue_controller(&q, "StatefulSet", &c));
        }
        Arc::new(Self {
            client: informers.client(),
            sets,
            pods,
            revisions,
            claims,
            queue,
            recorder,
        })
    }

    /// Brings the owner references of a pod's claims in line with the retention policy.
    async fn fix_claims(
        &self,
        set: &StatefulSet,
        spec: &StatefulSetSpec,
        pod: &Pod,
        ord: i32,
        condemned: bool,
    ) -> Result<(), kube::Error> {
        let ns = set.namespace().unwrap_or_default();
        let want = wanted_owners(spec, condemned);
        for name in claim_names(set, spec, ord) {
            let Some(claim) = self.claims.get(&ObjectRef::new(&name).within(&ns)) else {
                continue;
            };
            if deleting(&claim.metadata) {
                continue;
            }
            if let Some(refs) = fixed_owners(&claim, set, pod, want) {
                let mut c = (*claim).clone();
                c.metadata.owner_references = (!refs.is_empty()).then_some(refs);
                let api: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), &ns);
                api.replace(&name, &PostParams::default(), &c).await?;
            }
        }
        Ok(())
    }

    /// Whether one of the ordinal's claims is going: being deleted, or owned by an earlier
    /// pod of the ordinal (called before its pod is created, so such a pod is gone and the
    /// garbage collector will delete the claim; upstream's stale claim). The pod must wait
    /// for a fresh claim.
    fn claim_going(&self, set: &StatefulSet, spec: &StatefulSetSpec, ord: i32) -> bool {
        let ns = set.namespace().unwrap_or_default();
        let pod_name = format!("{}-{ord}", set.name_any());
        claim_names(set, spec, ord).iter().any(|n| {
            self.claims
                .get(&ObjectRef::new(n).within(&ns))
                .is_some_and(|c| {
                    deleting(&c.metadata)
                        || c.owner_references()
                            .iter()
                            .any(|r| r.kind == "Pod" && r.name == pod_name)
                })
        })
    }

    async fn sync(self: Arc<Self>, key: String) -> SyncResult {
        let (ns, name) = split_key(&key);
        let Some(set) = self.sets.get(&ObjectRef::new(name).within(ns)) else {
            return Ok(None);
        };
        let set = (*set).clone();
        let spec = set.spec.clone().unwrap_or_default();
        let Some(selector) = selector_or_event(
            &self.recorder,
            &set,
            Some(&spec.selector),
            "InvalidSelector",
        ) else {
            return Ok(None);
        };
        let uid = set.uid().unwrap_or_default();
        let pods = claim_indexed(&self.client, &self.pods, &set, &selector, |_| true).await?;
        let mut status = set.status.clone().unwrap_or_default();
        let (update, revisions) = history::ensure(
            &self.client,
            &set,
            &spec.template,
            status.collision_count.unwrap_or(0),
            history::owned(&self.revisions, &uid),
        )
        .await?;
        let update_name = update.name_any();
        let current_name = status
            .current_revision
            .clone()
            .filter(|c| revisions.iter().any(|r| r.name_any() == *c))
            .unwrap_or_else(|| update_name.clone());
        let current = revisions
            .iter()
            .find(|r| r.name_any() == current_name)
            .cloned()
            .unwrap_or_else(|| update.clone());
        let replicas = spec.replicas.unwrap_or(1).max(0);
        let parallel = spec.pod_management_policy.as_deref() == Some("Parallel");
        let strategy = spec.update_strategy.clone().unwrap_or_default();
        let rolling = strategy.type_.as_deref() != Some("OnDelete");
        let partition = strategy
            .rolling_update
            .as_ref()
            .and_then(|r| r.partition)
            .unwrap_or(0);
        let mut by_ordinal: BTreeMap<i32, Arc<Pod>> = BTreeMap::new();
        let mut condemned: Vec<Arc<Pod>> = Vec::new();
        for p in &pods {
            match ordinal_of(name, p) {
                Some(o) if (0..replicas).contains(&o) => {
                    by_ordinal.insert(o, p.clone());
                }
                _ => condemned.push(p.clone()),
            }
        }
        let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let deleting_set = deleting(&set.metadata);
        let mut requeue = None;
        'work: {
            if deleting_set {
                break 'work;
            }
            // Claims owned as the retention policy says, before any pod is deleted.
            if !spec
                .volume_claim_templates
                .as_deref()
                .unwrap_or_default()
                .is_empty()
            {
                for p in &pods {
                    if let Some(ord) = ordinal_of(name, p) {
                        let condemned = !(0..replicas).contains(&ord);
                        self.fix_claims(&set, &spec, p, ord, condemned).await?;
                    }
                }
            }
            // Create, replace failed pods, in ordinal order.
            for ord in 0..replicas {
                match by_ordinal.get(&ord) {
                    None if self.claim_going(&set, &spec, ord) => {
                        requeue = Some(Duration::from_secs(1));
                        if !parallel {
                            break 'work;
                        }
                    }
                    None => {
                        let rev = if rolling && ord < partition {
                            &current
                        } else {
                            &update
                        };
                        self.create_pod(&set, ord, rev).await?;
                        if !parallel {
                            break 'work;
                        }
                    }
                    Some(p) if phase(p) == "Failed" && !deleting(&p.metadata) => {
                        self.recorder.record(
                            object_ref(&set),
                            EventType::Warning,
                            "RecreatingFailedPod",
                            format!(
                                "StatefulSet {key} is recreating failed Pod {}",
                                p.name_any()
                            ),
                        );
                        delete_pod(&api, p).await?;
                        if !parallel {
                            break 'work;
                        }
                    }
                    Some(p) if !parallel && !healthy(p) => break 'work,
                    Some(_) => {}
                }
            }
            // Scale down: highest ordinal first.
            condemned.sort_by_key(|p| std::cmp::Reverse(ordinal_of(name, p).unwrap_or(i32::MAX)));
            let all_healthy = by_ordinal.values().all(|p| healthy(p));
            for p in &condemned {
                if deleting(&p.metadata) {
                    if !parallel {
                        break 'work;
                    }
                    continue;
                }
                if !parallel && !all_healthy {
                    break 'work;
                }
                self.recorder.record(
                    object_ref(&set),
                    EventType::Normal,
                    "SuccessfulDelete",
                    format!(
                        "delete Pod {} in StatefulSet {name} successful",
                        p.name_any()
                    ),
                );
                delete_pod(&api, p).await?;
                if !parallel {
                    break 'work;
                }
            }
            // Rolling update: highest ordinal down to the partition, one at a time.
            if rolling
                && by_ordinal.len() as i32 == replicas
                && by_ordinal.values().all(|p| healthy(p))
            {
                for ord in (partition.max(0)..replicas).rev() {
                    let p = &by_ordinal[&ord];
                    if p.labels().get(REVISION_LABEL) != Some(&update_name) {
                        self.recorder.record(
                            object_ref(&set),
                            EventType::Normal,
                            "SuccessfulDelete",
                            format!(
                                "delete Pod {} in StatefulSet {name} successful",
                                p.name_any()
                            ),
                        );
                        delete_pod(&api, p).await?;
                        break;
                    }
                }
            }
        }
        // Status.
        let min_ready = spec.min_ready_seconds.unwrap_or(0);
        let now = jiff::Timestamp::now();
        let live: Vec<&Arc<Pod>> = pods.iter().filter(|p| !deleting(&p.metadata)).collect();
        let count = |f: &dyn Fn(&Pod) -> bool| live.iter().filter(|p| f(p)).count() as i32;
        let ready = count(&|p| pod_ready(p));
        let available = count(&|p| pod_available(p, min_ready, now));
        let updated = count(&|p| p.labels().get(REVISION_LABEL) == Some(&update_name));
        let on_current = count(&|p| p.labels().get(REVISION_LABEL) == Some(&current_name));
        if min_ready > 0 && ready > available {
            let d = Duration::from_secs(min_ready as u64);
            requeue = Some(requeue.map_or(d, |r: Duration| r.min(d)));
        }
        status.observed_generation = set.metadata.generation;
        status.replicas = live.len() as i32;
        status.ready_replicas = Some(ready);
        status.available_replicas = Some(available);
        status.updated_replicas = Some(updated);
        status.update_revision = Some(update_name.clone());
        // Every pod on the new revision and ready: it becomes the current one.
        let rolled = updated == replicas && ready == replicas && live.len() as i32 == replicas;
        if rolled {
            status.current_revision = Some(update_name.clone());
            status.current_replicas = Some(updated);
        } else {
            status.current_revision = Some(current_name.clone());
            status.current_replicas = Some(on_current);
        }
        let live_revisions: Vec<String> = pods
            .iter()
            .filter_map(|p| p.labels().get(REVISION_LABEL).cloned())
            .chain([
                update_name.clone(),
                status.current_revision.clone().unwrap_or_default(),
            ])
            .collect();
        let live_refs: Vec<&str> = live_revisions.iter().map(String::as_str).collect();
        history::trim(
            &self.client,
            &revisions,
            &live_refs,
            spec.revision_history_limit.unwrap_or(10),
        )
        .await?;
        if set.status.as_ref() != Some(&status) {
            let mut updated_set = set.clone();
            updated_set.status = Some(status);
            if replace_status(&self.client, &updated_set).await?.is_none() {
                return Ok(None);
            }
        }
        Ok(requeue)
    }

    async fn create_pod(
        &self,
        set: &StatefulSet,
        ord: i32,
        rev: &ControllerRevision,
    ) -> Result<(), kube::Error> {
        let spec = set.spec.clone().unwrap_or_default();
        let ns = set.namespace().unwrap_or_default();
        let name = format!("{}-{ord}", set.name_any());
        let template: k8s_openapi::api::core::v1::PodTemplateSpec = rev
            .data
            .as_ref()
            .and_then(|d| d.0.pointer("/spec/template").cloned())
            .and_then(|mut t| {
                if let Some(o) = t.as_object_mut() {
                    o.remove("$patch");
                }
                serde_json::from_value(t).ok()
            })
            .unwrap_or_else(|| spec.template.clone());
        let mut meta = template.metadata.clone().unwrap_or_default();
        meta.name = Some(name.clone());
        meta.namespace = Some(ns.clone());
        meta.owner_references = Some(vec![controller_ref(set)]);
        let labels = meta.labels.get_or_insert_with(Default::default);
        labels.insert("statefulset.kubernetes.io/pod-name".into(), name.clone());
        labels.insert("apps.kubernetes.io/pod-index".into(), ord.to_string());
        labels.insert(REVISION_LABEL.into(), rev.name_any());
        let mut pod_spec = template.spec.clone().unwrap_or_default();
        pod_spec.hostname = Some(name.clone());
        if !spec.service_name.clone().unwrap_or_default().is_empty() {
            pod_spec.subdomain = spec.service_name.clone();
        }
        // Claims from the templates, created first.
        let pvc_api: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), &ns);
        for t in spec.volume_claim_templates.clone().unwrap_or_default() {
            let tname = t.metadata.name.clone().unwrap_or_default();
            let claim_name = claim_name(&tname, set, ord);
            let mut pvc = t.clone();
            pvc.metadata.name = Some(claim_name.clone());
            pvc.metadata.namespace = Some(ns.clone());
            pvc.metadata
                .labels
                .get_or_insert_with(Default::default)
                .extend(spec.selector.match_labels.clone().unwrap_or_default());
            if wanted_owners(&spec, false).0 {
                pvc.metadata.owner_references = Some(vec![owner_ref(
                    "apps/v1",
                    "StatefulSet",
                    set.name_any(),
                    set.uid().unwrap_or_default(),
                )]);
            }
            pvc.status = None;
            match pvc_api.create(&PostParams::default(), &pvc).await {
                Ok(_) => self.recorder.record(
                    object_ref(set),
                    EventType::Normal,
                    "SuccessfulCreate",
                    format!(
                        "create Claim {claim_name} Pod {name} in StatefulSet {} success",
                        set.name_any()
                    ),
                ),
                Err(e) if is_conflict(&e) => {}
                Err(e) => {
                    self.recorder.record(object_ref(set), EventType::Warning, "FailedCreate", format!("create Claim {claim_name} for Pod {name} in StatefulSet {} failed error: {e}", set.name_any()));
                    return Err(e);
                }
            }
            let volumes = pod_spec.volumes.get_or_insert_with(Vec::new);
            volumes.retain(|v| v.name != tname);
            volumes.push(Volume {
                name: tname,
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name,
                    read_only: None,
                }),
                ..Default::default()
            });
        }
        let pod = Pod {
            metadata: meta,
            spec: Some(pod_spec),
            status: None,
        };
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        match api.create(&PostParams::default(), &pod).await {
            Ok(_) => {
                self.recorder.record(
                    object_ref(set),
                    EventType::Normal,
                    "SuccessfulCreate",
                    format!(
                        "create Pod {name} in StatefulSet {} successful",
                        set.name_any()
                    ),
                );
                Ok(())
            }
            // The previous pod of this ordinal is still being deleted.
            Err(e) if is_conflict(&e) => Ok(()),
            Err(e) if namespace_terminating(&e) => Ok(()),
            Err(e) => {
                self.recorder.record(
                    object_ref(set),
                    EventType::Warning,
                    "FailedCreate",
                    format!(
                        "create Pod {name} in StatefulSet {} failed error: {e}",
                        set.name_any()
                    ),
                );
                Err(e)
            }
        }
    }
}

reconciler!(StatefulSetController, "statefulset");

async fn delete_pod(api: &Api<Pod>, p: &Pod) -> Result<(), kube::Error> {
    match api.delete(&p.name_any(), &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(e) if is_not_found(&e) => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::StatefulSetPersistentVolumeClaimRetentionPolicy;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn spec(scaled: &str, deleted: &str) -> StatefulSetSpec {
        StatefulSetSpec {
            persistent_volume_claim_retention_policy: Some(
                StatefulSetPersistentVolumeClaimRetentionPolicy {
                    when_scaled: Some(scaled.into()),
                    when_deleted: Some(deleted.into()),
                },
            ),
            ..Default::default()
        }
    }

    #[test]
    fn the_retention_policy_picks_the_claims_owners() {
        assert_eq!(
            wanted_owners(&StatefulSetSpec::default(), true),
            (false, false)
        );
        assert_eq!(
            wanted_owners(&spec("Retain", "Retain"), true),
            (false, false)
        );
        assert_eq!(
            wanted_owners(&spec("Retain", "Delete"), true),
            (true, false)
        );
        assert_eq!(
            wanted_owners(&spec("Delete", "Retain"), true),
            (false, true)
        );
        assert_eq!(
            wanted_owners(&spec("Delete", "Retain"), false),
            (false, false)
        );
        assert_eq!(
            wanted_owners(&spec("Delete", "Delete"), true),
            (false, true)
        );
        assert_eq!(
            wanted_owners(&spec("Delete", "Delete"), false),
            (true, false)
        );
    }

    #[tokio::test]
    async fn a_claim_owned_by_an_earlier_pod_or_being_deleted_holds_the_new_pod() {
        use kube::runtime::watcher::Event;
        let (client, _) = crate::testing::fake_client();
        let mut informers = crate::Informers::new(client.clone());
        let ctl = StatefulSetController::new(
            &mut informers,
            Recorder::new(client, "statefulset-controller", None),
        );
        let set: StatefulSet = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "db", "namespace": "ns", "uid": "s1"},
            "spec": {"selector": {}, "template": {},
                "volumeClaimTemplates": [{"metadata": {"name": "data"}}]},
        }))
        .unwrap();
        let spec = set.spec.clone().unwrap();
        let claim = |name: &str, refs: serde_json::Value, deleting: bool| {
            let c: PersistentVolumeClaim = serde_json::from_value(serde_json::json!({
                "metadata": {"name": name, "namespace": "ns", "ownerReferences": refs,
                    "deletionTimestamp": deleting.then_some("2026-01-01T00:00:00Z")},
            }))
            .unwrap();
            c
        };
        let pod_ref = |name: &str| serde_json::json!([{"apiVersion": "v1", "kind": "Pod", "name": name, "uid": "old"}]);
        for c in [
            claim("data-db-0", serde_json::json!([]), false),
            claim("data-db-1", pod_ref("db-1"), false),
            claim("data-db-2", serde_json::json!([]), true),
            claim("data-db-3", pod_ref("db-9"), false),
        ] {
            informers.claims().apply_event(Event::Apply(c));
        }
        assert!(!ctl.claim_going(&set, &spec, 0));
        assert!(ctl.claim_going(&set, &spec, 1), "owned by an earlier db-1");
        assert!(ctl.claim_going(&set, &spec, 2), "being deleted");
        assert!(!ctl.claim_going(&set, &spec, 3), "another pod's reference");
        assert!(!ctl.claim_going(&set, &spec, 4), "no claim yet");
    }

    #[test]
    fn claim_owners_are_added_removed_and_stale_pod_references_dropped() {
        let meta = |name: &str, uid: &str| ObjectMeta {
            name: Some(name.into()),
            uid: Some(uid.into()),
            ..Default::default()
        };
        let set = StatefulSet {
            metadata: meta("db", "s1"),
            ..Default::default()
        };
        let pod = Pod {
            metadata: meta("db-1", "p2"),
            ..Default::default()
        };
        let other = owner_ref("v1", "ConfigMap", "keep".into(), "x".into());
        let claim = |refs: Vec<OwnerReference>| PersistentVolumeClaim {
            metadata: ObjectMeta {
                owner_references: Some(refs),
                ..meta("data-db-1", "c1")
            },
            ..Default::default()
        };
        let stale = owner_ref("v1", "Pod", "db-1".into(), "p1".into());
        let current = owner_ref("v1", "Pod", "db-1".into(), "p2".into());
        let set_ref = owner_ref("apps/v1", "StatefulSet", "db".into(), "s1".into());
        assert_eq!(
            fixed_owners(
                &claim(vec![other.clone(), stale.clone()]),
                &set,
                &pod,
                (false, true)
            ),
            Some(vec![other.clone(), current.clone()])
        );
        assert_eq!(
            fixed_owners(
                &claim(vec![other.clone(), current.clone()]),
                &set,
                &pod,
                (false, true)
            ),
            None
        );
        assert_eq!(
            fixed_owners(&claim(vec![current.clone()]), &set, &pod, (true, false)),
            Some(vec![set_ref.clone()])
        );
        assert_eq!(
            fixed_owners(
                &claim(vec![other.clone(), set_ref]),
                &set,
                &pod,
                (false, false)
            ),
            Some(vec![other])
        );
    }
}
