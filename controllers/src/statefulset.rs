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
//! - Status: replicas, readyReplicas, availableReplicas, currentReplicas, updatedReplicas,
//!   currentRevision, updateRevision, observedGeneration.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{ControllerRevision, StatefulSet};
use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimVolumeSource, Pod, Volume,
};
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
    queue: WorkQueue<String>,
    recorder: Recorder,
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
            queue,
            recorder,
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
            // Create, replace failed pods, in ordinal order.
            for ord in 0..replicas {
                match by_ordinal.get(&ord) {
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
            requeue = Some(Duration::from_secs(min_ready as u64));
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
            if !replace_status(&self.client, &updated_set).await? {
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
            let claim_name = format!("{tname}-{}-{ord}", set.name_any());
            let mut pvc = t.clone();
            pvc.metadata.name = Some(claim_name.clone());
            pvc.metadata.namespace = Some(ns.clone());
            pvc.metadata
                .labels
                .get_or_insert_with(Default::default)
                .extend(spec.selector.match_labels.clone().unwrap_or_default());
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
