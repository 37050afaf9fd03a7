//! The Deployment controller, as upstream's `pkg/controller/deployment`: a Deployment owns
//! ReplicaSets, one per pod template (named `<deployment>-<pod-template-hash>`); the one whose
//! template equals the Deployment's is "new", the others "old".
//!
//! - **RollingUpdate** scales the new ReplicaSet up while the total stays within
//!   `replicas + maxSurge`, and old ones down while at least `replicas - maxUnavailable` pods are
//!   available (unhealthy old pods go first).
//! - **Recreate** scales old ReplicaSets to zero, waits until their pods are gone, then scales
//!   the new one up.
//! - A scale of the Deployment mid-rollout (or while paused) is spread proportionally over the
//!   active ReplicaSets; a paused Deployment is scaled but not rolled out.
//! - Revisions: the new ReplicaSet carries `deployment.kubernetes.io/revision` = highest old
//!   revision + 1 (re-used templates get a new revision and a `revision-history`), so
//!   `kubectl rollout history/undo` work; at most `revisionHistoryLimit` old, empty ReplicaSets
//!   are kept.
//! - Status and the Available / Progressing conditions (with `progressDeadlineSeconds`) as
//!   upstream, which is what `kubectl rollout status` reads.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet, ReplicaSetSpec,
};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use keelson_client::events::{EventType, Recorder};
use keelson_client::informer::{Change, Index};
use keelson_client::queue::WorkQueue;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::Informers;
use crate::util::{
    SyncResult, claim_indexed, controller_of, controller_ref, deleting, is_conflict, is_not_found,
    key_of, matches, object_ref, parse_selector, pod_terminal, reconciler, replace_status,
    split_key,
};

const REVISION: &str = "deployment.kubernetes.io/revision";
const REVISION_HISTORY: &str = "deployment.kubernetes.io/revision-history";
const DESIRED_REPLICAS: &str = "deployment.kubernetes.io/desired-replicas";
const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";
const HASH_LABEL: &str = "pod-template-hash";

/// Annotations a Deployment does not pass on to its ReplicaSets.
const SKIP_ANNOTATIONS: &[&str] = &[
    "kubectl.kubernetes.io/last-applied-configuration",
    REVISION,
    REVISION_HISTORY,
    DESIRED_REPLICAS,
    MAX_REPLICAS,
    "deprecated.deployment.rollback.to",
];

/// The Deployment controller.
pub struct DeploymentController {
    client: Client,
    deployments: Store<Deployment>,
    sets_by_controller: Index<ReplicaSet>,
    pods_by_controller: Index<Pod>,
    queue: WorkQueue<String>,
    recorder: Recorder,
}

/// The key of the Deployment that is `rs`'s controller, if it is in the cache with that UID.
fn owner_key(deployments: &Store<Deployment>, meta: &ObjectMeta) -> Option<String> {
    let r = controller_of(meta)?;
    if r.kind != "Deployment" || !r.api_version.starts_with("apps/") {
        return None;
    }
    let ns = meta.namespace.clone().unwrap_or_default();
    let d = deployments.get(&ObjectRef::new(&r.name).within(&ns))?;
    (d.uid().as_deref() == Some(r.uid.as_str())).then(|| format!("{ns}/{}", r.name))
}

impl DeploymentController {
    /// Registers the controller's handlers on the shared informers.
    pub fn new(informers: &mut Informers, recorder: Recorder) -> Arc<Self> {
        let queue = WorkQueue::new();
        let deployments = informers.deployments().store();
        let sets = informers.replicasets().store();
        let sets_by_controller = informers.replicasets_by_controller();
        let pods_by_controller = informers.pods_by_controller();
        {
            let q = queue.clone();
            informers.deployments().on_change(move |c| {
                q.add(key_of(&c.object().metadata));
            });
        }
        {
            let q = queue.clone();
            let ds = deployments.clone();
            informers.replicasets().on_change(move |c| {
                let rs = c.object();
                if let Change::Updated { old, .. } = &c
                    && let Some(k) = owner_key(&ds, &old.metadata)
                {
                    q.add(k);
                }
                match owner_key(&ds, &rs.metadata) {
                    Some(k) => q.add(k),
                    None if controller_of(&rs.metadata).is_none()
                        && !matches!(c, Change::Deleted(_)) =>
                    {
                        let ns = rs.namespace();
                        for d in ds.state() {
                            if d.namespace() == ns
                                && parse_selector(d.spec.as_ref().map(|s| &s.selector))
                                    .is_ok_and(|s| matches(&s, rs.labels()))
                            {
                                q.add(key_of(&d.metadata));
                            }
                        }
                    }
                    None => {}
                }
            });
        }
        {
            // A Recreate rollout waits for the old pods to be gone.
            let q = queue.clone();
            let ds = deployments.clone();
            let rss = sets.clone();
            informers.pods().on_change(move |c| {
                if let Change::Deleted(pod) = c
                    && let Some(r) = controller_of(&pod.metadata)
                    && r.kind == "ReplicaSet"
                {
                    let ns = pod.namespace().unwrap_or_default();
                    if let Some(rs) = rss.get(&ObjectRef::new(&r.name).within(&ns))
                        && let Some(k) = owner_key(&ds, &rs.metadata)
                    {
                        q.add(k);
                    }
                }
            });
        }
        Arc::new(Self {
            client: informers.client(),
            deployments,
            sets_by_controller,
            pods_by_controller,
            queue,
            recorder,
        })
    }

    async fn sync(self: Arc<Self>, key: String) -> SyncResult {
        let (ns, name) = split_key(&key);
        let Some(d) = self.deployments.get(&ObjectRef::new(name).within(ns)) else {
            return Ok(None);
        };
        let mut d = (*d).clone();
        let selector = match parse_selector(d.spec.as_ref().map(|s| &s.selector)) {
            Ok(s) => s,
            Err(msg) => {
                self.recorder.record(
                    object_ref(&d),
                    EventType::Warning,
                    "SelectingAll",
                    format!("This deployment is selecting all pods or has a bad selector: {msg}"),
                );
                let mut status = d.status.clone().unwrap_or_default();
                status.observed_generation = d.metadata.generation;
                self.write_status(&d, status).await?;
                return Ok(None);
            }
        };
        let claimed = claim_indexed(
            &self.client,
            &self.sets_by_controller,
            &d,
            &selector,
            |_| true,
        )
        .await?;
        let mut sets: Vec<ReplicaSet> = claimed.iter().map(|r| (**r).clone()).collect();
        sets.sort_by(|a, b| {
            let t = |r: &ReplicaSet| r.metadata.creation_timestamp.as_ref().map(|t| t.0);
            t(a).cmp(&t(b))
                .then_with(|| a.name_any().cmp(&b.name_any()))
        });
        if deleting(&d.metadata) {
            let new = sets.iter().find(|rs| same_template(&d, rs)).cloned();
            self.sync_status(&d, &sets, new.as_ref()).await?;
            return Ok(None);
        }
        let paused = d.spec.as_ref().and_then(|s| s.paused).unwrap_or(false);
        if paused || self.is_scaling_event(&d, &sets) {
            return self.scale_only(&mut d, sets, paused).await;
        }
        let recreate = d
            .spec
            .as_ref()
            .and_then(|s| s.strategy.as_ref())
            .and_then(|s| s.type_.as_deref())
            == Some("Recreate");
        if recreate {
            self.rollout_recreate(&mut d, sets).await
        } else {
            self.rollout_rolling(&mut d, sets).await
        }
    }

    /// A scale of the Deployment that the active ReplicaSets have not caught up with.
    fn is_scaling_event(&self, d: &Deployment, sets: &[ReplicaSet]) -> bool {
        let want = replicas_of(d);
        sets.iter()
            .filter(|rs| rs_replicas(rs) > 0)
            .any(|rs| annotation_i32(rs, DESIRED_REPLICAS).is_some_and(|v| v != want))
    }

    async fn rollout_rolling(&self, d: &mut Deployment, sets: Vec<ReplicaSet>) -> SyncResult {
        let (mut new, mut old) = self.new_and_old(d, sets, true).await?;
        let Some(new_rs) = new.as_mut() else {
            return Ok(None);
        };
        // Scale up the new ReplicaSet within the surge.
        let want = replicas_of(d);
        let (surge, unavailable) = fenceposts(d);
        let current = rs_replicas(new_rs);
        let target = if current > want {
            want
        } else {
            let total: i32 = old.iter().map(rs_replicas).sum::<i32>() + current;
            let max_total = want + surge;
            if total >= max_total {
                current
            } else {
                current + (max_total - total).min(want - current)
            }
        };
        if target != current {
            *new_rs = self.scale(d, new_rs, target).await?;
            return self
                .sync_rollout_status(d, &all(&old, new.as_ref()), new.as_ref())
                .await;
        }
        // Scale old ReplicaSets down as far as availability allows.
        let old_count: i32 = old.iter().map(rs_replicas).sum();
        if old_count > 0 {
            let all_count = old_count + rs_replicas(new_rs);
            let min_available = want - unavailable;
            let new_unavailable = rs_replicas(new_rs)
                - new_rs
                    .status
                    .as_ref()
                    .and_then(|s| s.available_replicas)
                    .unwrap_or(0);
            let max_scale_down = all_count - min_available - new_unavailable;
            let mut scaled = false;
            if max_scale_down > 0 {
                // First the old ReplicaSets' unhealthy pods, oldest first.
                let mut budget = max_scale_down;
                for rs in old.iter_mut() {
                    if budget <= 0 {
                        break;
                    }
                    let healthy = rs
                        .status
                        .as_ref()
                        .and_then(|s| s.available_replicas)
                        .unwrap_or(0);
                    let unhealthy = rs_replicas(rs) - healthy;
                    if unhealthy <= 0 {
                        continue;
                    }
                    let down = unhealthy.min(budget);
                    *rs = self.scale(d, rs, rs_replicas(rs) - down).await?;
                    budget -= down;
                    scaled = true;
                }
                // Then healthy ones while at least minAvailable stay available.
                let available: i32 = all(&old, new.as_ref())
                    .iter()
                    .map(|r| {
                        r.status
                            .as_ref()
                            .and_then(|s| s.available_replicas)
                            .unwrap_or(0)
                    })
                    .sum();
                let mut budget = (available - min_available).min(budget);
                for rs in old.iter_mut() {
                    if budget <= 0 {
                        break;
                    }
                    let n = rs_replicas(rs);
                    if n == 0 {
                        continue;
                    }
                    let down = n.min(budget);
                    *rs = self.scale(d, rs, n - down).await?;
                    budget -= down;
                    scaled = true;
                }
            }
            if scaled {
                return self
                    .sync_rollout_status(d, &all(&old, new.as_ref()), new.as_ref())
                    .await;
            }
        }
        let sets = all(&old, new.as_ref());
        if complete(d, &calculate_status(d, &sets, new.as_ref())) {
            self.cleanup(d, &old).await?;
        }
        self.sync_rollout_status(d, &sets, new.as_ref()).await
    }

    async fn rollout_recreate(&self, d: &mut Deployment, sets: Vec<ReplicaSet>) -> SyncResult {
        let (new, mut old) = self.new_and_old(d, sets, false).await?;
        let mut scaled = false;
        for rs in old.iter_mut() {
            if rs_replicas(rs) != 0 {
                *rs = self.scale(d, rs, 0).await?;
                scaled = true;
            }
        }
        if scaled {
            return self
                .sync_rollout_status(d, &all(&old, new.as_ref()), new.as_ref())
                .await;
        }
        // Wait until no pod of an old ReplicaSet is running.
        let running = old.iter().filter_map(|r| r.uid()).any(|uid| {
            self.pods_by_controller
                .get(&uid)
                .iter()
                .any(|p| !pod_terminal(p))
        });
        if running {
            return self
                .sync_rollout_status(d, &all(&old, new.as_ref()), new.as_ref())
                .await;
        }
        let (mut new, old) = match new {
            Some(n) => (Some(n), old),
            None => self.new_and_old(d, all(&old, None), true).await?,
        };
        if let Some(rs) = new.as_mut()
            && rs_replicas(rs) != replicas_of(d)
        {
            *rs = self.scale(d, rs, replicas_of(d)).await?;
        }
        let sets = all(&old, new.as_ref());
        if complete(d, &calculate_status(d, &sets, new.as_ref())) {
            self.cleanup(d, &old).await?;
        }
        self.sync_rollout_status(d, &sets, new.as_ref()).await
    }

    /// Scaling without rolling out (paused, or a scale in the middle of a rollout).
    async fn scale_only(
        &self,
        d: &mut Deployment,
        sets: Vec<ReplicaSet>,
        paused: bool,
    ) -> SyncResult {
        let (mut new, mut old) = self.new_and_old(d, sets, false).await?;
        let want = replicas_of(d);
        let active: Vec<usize> = {
            let all_sets = all(&old, new.as_ref());
            all_sets
                .iter()
                .enumerate()
                .filter(|(_, r)| rs_replicas(r) > 0)
                .map(|(i, _)| i)
                .collect()
        };
        let mut all_sets = all(&old, new.as_ref());
        let new_idx = new.as_ref().map(|_| all_sets.len() - 1);
        let single = match active.len() {
            0 => new_idx.or(all_sets.len().checked_sub(1)),
            1 => Some(active[0]),
            _ => None,
        };
        if let Some(i) = single {
            if rs_replicas(&all_sets[i]) != want
                || annotation_i32(&all_sets[i], DESIRED_REPLICAS) != Some(want)
            {
                all_sets[i] = self.scale(d, &all_sets[i], want).await?;
            }
        } else if let Some(ni) = new_idx
            && rs_replicas(&all_sets[ni]) == want
            && annotation_i32(&all_sets[ni], DESIRED_REPLICAS) == Some(want)
            && all_sets[ni]
                .status
                .as_ref()
                .and_then(|s| s.available_replicas)
                == Some(want)
        {
            // Saturated new ReplicaSet: the old ones go.
            for (i, rs) in all_sets.iter_mut().enumerate() {
                if i != ni && rs_replicas(rs) != 0 {
                    *rs = self.scale(d, rs, 0).await?;
                }
            }
        } else if is_rolling(d) {
            // Proportional scaling, for rolling Deployments only (as upstream's).
            let (surge, _) = fenceposts(d);
            // The max annotation scale() writes; nothing is allowed for 0 replicas.
            let max = want + surge;
            let allowed = if want > 0 { max } else { 0 };
            let current: i32 = all_sets.iter().map(rs_replicas).sum();
            let to_add = allowed - current;
            let mut sizes: Vec<i32> = all_sets.iter().map(rs_replicas).collect();
            if to_add != 0 {
                let mut order: Vec<usize> = active.clone();
                // Adding: largest (then newest) first; removing: smallest (then oldest) first.
                order.sort_by(|&a, &b| {
                    let (ra, rb) = (rs_replicas(&all_sets[a]), rs_replicas(&all_sets[b]));
                    if to_add > 0 {
                        rb.cmp(&ra).then(b.cmp(&a))
                    } else {
                        ra.cmp(&rb).then(a.cmp(&b))
                    }
                });
                let mut added = 0;
                for &i in &order {
                    if added == to_add {
                        break;
                    }
                    let annotated = annotation_i32(&all_sets[i], MAX_REPLICAS)
                        .filter(|v| *v > 0)
                        .unwrap_or(current.max(1));
                    let fraction = ((sizes[i] as f64 * allowed as f64 / annotated as f64).round()
                        as i32)
                        - sizes[i];
                    let step = if to_add > 0 {
                        fraction.max(0).min(to_add - added)
                    } else {
                        fraction.min(0).max(to_add - added)
                    };
                    sizes[i] += step;
                    added += step;
                }
                if let Some(&first) = order.first() {
                    sizes[first] = (sizes[first] + to_add - added).max(0);
                }
            }
            // Every active set gets the new desired and max annotations, even when nothing is
            // left to add or remove (the sets already add up to what is allowed, as when a
            // scale and a new template come together): with its old annotation it would make
            // every later sync a scaling event, and the rollout would never start.
            for (rs, size) in all_sets.iter_mut().zip(sizes) {
                let stale = annotation_i32(rs, DESIRED_REPLICAS) != Some(want)
                    || annotation_i32(rs, MAX_REPLICAS) != Some(max);
                if size != rs_replicas(rs) || (rs_replicas(rs) > 0 && stale) {
                    *rs = self.scale(d, rs, size).await?;
                }
            }
        }
        if let Some(ni) = new_idx {
            new = Some(all_sets[ni].clone());
            all_sets.truncate(ni);
        }
        old = all_sets;
        if paused {
            self.cleanup(d, &old).await?;
        }
        let sets = all(&old, new.as_ref());
        self.sync_status(d, &sets, new.as_ref()).await?;
        Ok(None)
    }

    /// Splits the claimed ReplicaSets into the new one (created when `create` and missing, its
    /// revision brought up to date) and the old ones (oldest first).
    async fn new_and_old(
        &self,
        d: &mut Deployment,
        mut sets: Vec<ReplicaSet>,
        create: bool,
    ) -> Result<(Option<ReplicaSet>, Vec<ReplicaSet>), kube::Error> {
        let new_pos = sets.iter().position(|rs| same_template(d, rs));
        let existing = new_pos.map(|i| sets.remove(i));
        let old = sets;
        let max_old = old
            .iter()
            .filter_map(|r| annotation_i64(r, REVISION))
            .max()
            .unwrap_or(0);
        let revision = max_old + 1;
        let ns = d.namespace().unwrap_or_default();
        let api: Api<ReplicaSet> = Api::namespaced(self.client.clone(), &ns);
        let current = existing
            .as_ref()
            .and_then(|rs| annotation_i64(rs, REVISION))
            .filter(|r| *r >= revision)
            .unwrap_or(revision);
        if existing.is_some() || create {
            self.set_deployment_revision(d, current).await?;
        }
        if let Some(rs) = existing {
            let mut annotations = rs.annotations().clone();
            let changed = copy_annotations(d, &mut annotations, revision);
            let min_ready = d.spec.as_ref().and_then(|s| s.min_ready_seconds);
            let min_ready_changed = rs
                .spec
                .as_ref()
                .and_then(|s| s.min_ready_seconds)
                .unwrap_or(0)
                != min_ready.unwrap_or(0);
            if !changed && !min_ready_changed {
                return Ok((Some(rs), old));
            }
            let patch = json!({
                "metadata": {"annotations": annotations, "resourceVersion": rs.resource_version()},
                "spec": {"minReadySeconds": min_ready.unwrap_or(0)},
            });
            let rs = api
                .patch(
                    &rs.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await?;
            return Ok((Some(rs), old));
        }
        if !create {
            return Ok((None, old));
        }
        let mut status = d.status.clone().unwrap_or_default();
        let collisions = status.collision_count.unwrap_or(0);
        let template = d
            .spec
            .as_ref()
            .map(|s| s.template.clone())
            .unwrap_or_default();
        let hash = template_hash(&template, collisions);
        let mut rs_template = template.clone();
        rs_template
            .metadata
            .get_or_insert_with(Default::default)
            .labels
            .get_or_insert_with(Default::default)
            .insert(HASH_LABEL.into(), hash.clone());
        let mut selector = d
            .spec
            .as_ref()
            .map(|s| s.selector.clone())
            .unwrap_or_default();
        selector
            .match_labels
            .get_or_insert_with(Default::default)
            .insert(HASH_LABEL.into(), hash.clone());
        let mut annotations = std::collections::BTreeMap::new();
        copy_annotations(d, &mut annotations, revision);
        let want = replicas_of(d);
        let (surge, _) = fenceposts(d);
        let initial = if is_rolling(d) {
            let total: i32 = old.iter().map(rs_replicas).sum();
            (want + surge - total).clamp(0, want)
        } else {
            want
        };
        annotations.insert(DESIRED_REPLICAS.into(), want.to_string());
        annotations.insert(
            MAX_REPLICAS.into(),
            (want + if is_rolling(d) { surge } else { 0 }).to_string(),
        );
        let name = format!("{}-{hash}", d.name_any());
        let rs = ReplicaSet {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(ns.clone()),
                labels: rs_template.metadata.as_ref().and_then(|m| m.labels.clone()),
                annotations: Some(annotations),
                owner_references: Some(vec![controller_ref(d)]),
                ..Default::default()
            },
            spec: Some(ReplicaSetSpec {
                replicas: Some(initial),
                min_ready_seconds: d.spec.as_ref().and_then(|s| s.min_ready_seconds),
                selector,
                template: Some(rs_template),
            }),
            status: None,
        };
        match api.create(&PostParams::default(), &rs).await {
            Ok(created) => {
                if initial > 0 {
                    self.recorder.record(
                        object_ref(d),
                        EventType::Normal,
                        "ScalingReplicaSet",
                        format!("Scaled up replica set {name} from 0 to {initial}"),
                    );
                }
                // Written with the rest of the status at the end of the sync.
                set_condition(
                    &mut status,
                    "Progressing",
                    "True",
                    "NewReplicaSetCreated",
                    &format!("Created new replica set \"{name}\""),
                );
                d.status = Some(status);
                Ok((Some(created), old))
            }
            Err(e) if is_conflict(&e) => {
                // The name is taken: ours (a stale cache) or a hash collision.
                let existing = api.get(&name).await?;
                let ours = controller_of(&existing.metadata).map(|r| r.uid.clone()) == d.uid();
                if ours && same_template(d, &existing) {
                    return Ok((Some(existing), old));
                }
                status.collision_count = Some(collisions + 1);
                self.write_status(d, status).await?;
                Err(e)
            }
            Err(e) => {
                self.recorder.record(
                    object_ref(d),
                    EventType::Warning,
                    "FailedCreate",
                    format!("Failed to create new replica set {name:?}: {e}"),
                );
                Err(e)
            }
        }
    }

    /// Records the current revision on the Deployment too, as upstream (`kubectl rollout undo`
    /// and `rollout status --revision` read it there).
    async fn set_deployment_revision(
        &self,
        d: &mut Deployment,
        revision: i64,
    ) -> Result<(), kube::Error> {
        let value = revision.to_string();
        if d.annotations().get(REVISION) == Some(&value) {
            return Ok(());
        }
        let api: Api<Deployment> =
            Api::namespaced(self.client.clone(), &d.namespace().unwrap_or_default());
        // An update, as upstream's controller makes (its role may not patch Deployments); a
        // stale copy conflicts and the sync is retried.
        let mut annotated = d.clone();
        annotated
            .metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(REVISION.into(), value.clone());
        match api
            .replace(&d.name_any(), &PostParams::default(), &annotated)
            .await
        {
            // Carry on with the new resourceVersion, so the status write does not conflict.
            Ok(written) => {
                if written.metadata.resource_version.is_some() {
                    d.metadata.resource_version = written.metadata.resource_version;
                }
                d.metadata
                    .annotations
                    .get_or_insert_with(Default::default)
                    .insert(REVISION.into(), revision.to_string());
                Ok(())
            }
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Sets a ReplicaSet's replicas (and the desired/max annotations) and returns it updated.
    async fn scale(
        &self,
        d: &Deployment,
        rs: &ReplicaSet,
        to: i32,
    ) -> Result<ReplicaSet, kube::Error> {
        let from = rs_replicas(rs);
        let want = replicas_of(d);
        let (surge, _) = fenceposts(d);
        let patch = json!({
            "metadata": {
                "annotations": {
                    DESIRED_REPLICAS: want.to_string(),
                    MAX_REPLICAS: (want + if is_rolling(d) { surge } else { 0 }).to_string(),
                },
                "resourceVersion": rs.resource_version(),
            },
            "spec": {"replicas": to},
        });
        let api: Api<ReplicaSet> =
            Api::namespaced(self.client.clone(), &rs.namespace().unwrap_or_default());
        let updated = api
            .patch(
                &rs.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await?;
        if from != to {
            let dir = if to > from { "up" } else { "down" };
            self.recorder.record(
                object_ref(d),
                EventType::Normal,
                "ScalingReplicaSet",
                format!(
                    "Scaled {dir} replica set {} from {from} to {to}",
                    rs.name_any()
                ),
            );
        }
        Ok(updated)
    }

    /// Deletes the oldest empty old ReplicaSets beyond `revisionHistoryLimit`.
    async fn cleanup(&self, d: &Deployment, old: &[ReplicaSet]) -> Result<(), kube::Error> {
        let limit = d
            .spec
            .as_ref()
            .and_then(|s| s.revision_history_limit)
            .unwrap_or(10)
            .max(0) as usize;
        let mut cleanable: Vec<&ReplicaSet> =
            old.iter().filter(|r| !deleting(&r.metadata)).collect();
        if cleanable.len() <= limit {
            return Ok(());
        }
        cleanable.sort_by_key(|r| annotation_i64(r, REVISION).unwrap_or(0));
        let excess = cleanable.len() - limit;
        let api: Api<ReplicaSet> =
            Api::namespaced(self.client.clone(), &d.namespace().unwrap_or_default());
        for rs in cleanable.into_iter().take(excess) {
            let st = rs.status.clone().unwrap_or_default();
            if st.replicas != 0
                || rs_replicas(rs) != 0
                || rs.metadata.generation > st.observed_generation
            {
                continue;
            }
            match api.delete(&rs.name_any(), &DeleteParams::default()).await {
                Ok(_) => {}
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Status with the Progressing condition brought up to date; asks to be synced again when
    /// the progress deadline could pass before anything else changes.
    async fn sync_rollout_status(
        &self,
        d: &Deployment,
        sets: &[ReplicaSet],
        new: Option<&ReplicaSet>,
    ) -> SyncResult {
        let mut status = calculate_status(d, sets, new);
        let deadline = d.spec.as_ref().and_then(|s| s.progress_deadline_seconds);
        let mut requeue = None;
        match deadline {
            None | Some(i32::MAX) => remove_condition(&mut status, "Progressing"),
            Some(secs) => {
                let current = condition(&status, "Progressing").cloned();
                let timed_out = current
                    .as_ref()
                    .is_some_and(|c| c.reason.as_deref() == Some("ProgressDeadlineExceeded"));
                let rs_name = new.map(|r| r.name_any()).unwrap_or_default();
                if !timed_out {
                    if complete(d, &status) {
                        set_condition(
                            &mut status,
                            "Progressing",
                            "True",
                            "NewReplicaSetAvailable",
                            &format!("ReplicaSet \"{rs_name}\" has successfully progressed."),
                        );
                    } else if progressing(d, &status) {
                        set_condition(
                            &mut status,
                            "Progressing",
                            "True",
                            "ReplicaSetUpdated",
                            &format!("ReplicaSet \"{rs_name}\" is progressing."),
                        );
                        requeue = Some(Duration::from_secs(secs.max(1) as u64));
                    } else if let Some(c) = &current {
                        let since = c.last_update_time.as_ref().map(|t| t.0);
                        let now = jiff::Timestamp::now();
                        let due = since.and_then(|t| {
                            t.checked_add(jiff::SignedDuration::from_secs(i64::from(secs)))
                                .ok()
                        });
                        if c.reason.as_deref() != Some("NewReplicaSetAvailable") {
                            match due {
                                Some(due) if due <= now => set_condition(
                                    &mut status,
                                    "Progressing",
                                    "False",
                                    "ProgressDeadlineExceeded",
                                    &format!("ReplicaSet \"{rs_name}\" has timed out progressing."),
                                ),
                                Some(due) => {
                                    let left = due.duration_since(now).as_secs_f64().max(1.0);
                                    requeue = Some(Duration::from_secs_f64(left));
                                }
                                None => {}
                            }
                        }
                    }
                }
            }
        }
        self.write_status(d, status).await?;
        Ok(requeue)
    }

    /// Status without touching the Progressing condition (paused, scaling, deleting).
    async fn sync_status(
        &self,
        d: &Deployment,
        sets: &[ReplicaSet],
        new: Option<&ReplicaSet>,
    ) -> Result<(), kube::Error> {
        let status = calculate_status(d, sets, new);
        self.write_status(d, status).await
    }

    async fn write_status(
        &self,
        d: &Deployment,
        status: DeploymentStatus,
    ) -> Result<(), kube::Error> {
        // Compare with what the server has (the cache), not with `d`, whose status a sync may
        // already have advanced.
        let server = self
            .deployments
            .get(&ObjectRef::new(&d.name_any()).within(&d.namespace().unwrap_or_default()))
            .and_then(|c| c.status.clone());
        if server.as_ref() == Some(&status) {
            return Ok(());
        }
        let mut updated = d.clone();
        updated.status = Some(status);
        replace_status(&self.client, &updated).await.map(drop)
    }
}

reconciler!(DeploymentController, "deployment");

fn all(old: &[ReplicaSet], new: Option<&ReplicaSet>) -> Vec<ReplicaSet> {
    old.iter().cloned().chain(new.cloned()).collect()
}

fn replicas_of(d: &Deployment) -> i32 {
    d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

fn rs_replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

fn annotation_i64(rs: &ReplicaSet, key: &str) -> Option<i64> {
    rs.annotations().get(key)?.parse().ok()
}

fn annotation_i32(rs: &ReplicaSet, key: &str) -> Option<i32> {
    rs.annotations().get(key)?.parse().ok()
}

fn is_rolling(d: &Deployment) -> bool {
    d.spec
        .as_ref()
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.type_.as_deref())
        .is_none_or(|t| t == "RollingUpdate")
}

/// An int or a percentage of `total`, rounded up or down.
fn scaled_value(v: Option<&IntOrString>, default: &str, total: i32, round_up: bool) -> i32 {
    let parse_pct = |s: &str| -> i32 {
        let pct: f64 = s.trim_end_matches('%').parse().unwrap_or(0.0);
        let x = pct * f64::from(total) / 100.0;
        (if round_up { x.ceil() } else { x.floor() }) as i32
    };
    match v {
        Some(IntOrString::Int(i)) => *i,
        Some(IntOrString::String(s)) => parse_pct(s),
        None => parse_pct(default),
    }
}

/// maxSurge and maxUnavailable as absolute numbers, never both zero (upstream's
/// `ResolveFenceposts`); zero for Recreate.
fn fenceposts(d: &Deployment) -> (i32, i32) {
    if !is_rolling(d) {
        return (0, 0);
    }
    let want = replicas_of(d);
    let ru = d
        .spec
        .as_ref()
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.rolling_update.as_ref());
    let surge = scaled_value(ru.and_then(|r| r.max_surge.as_ref()), "25%", want, true).max(0);
    let mut unavailable = scaled_value(
        ru.and_then(|r| r.max_unavailable.as_ref()),
        "25%",
        want,
        false,
    )
    .max(0);
    if surge == 0 && unavailable == 0 {
        unavailable = 1;
    }
    (surge, unavailable.min(want.max(0)))
}

/// The Deployment's template equals the ReplicaSet's, ignoring the pod-template-hash label.
fn same_template(d: &Deployment, rs: &ReplicaSet) -> bool {
    let strip = |t: &PodTemplateSpec| {
        let mut t = t.clone();
        if let Some(labels) = t.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
            labels.remove(HASH_LABEL);
        }
        t
    };
    match (
        d.spec.as_ref(),
        rs.spec.as_ref().and_then(|s| s.template.as_ref()),
    ) {
        (Some(ds), Some(rt)) => strip(&ds.template) == strip(rt),
        _ => false,
    }
}

/// The pod-template-hash: FNV-1a (32 bit) of the template's canonical JSON and the collision
/// count, written in upstream's "safe" alphabet (no vowels, no look-alike characters).
fn template_hash(t: &PodTemplateSpec, collisions: i32) -> String {
    let mut h: u32 = 0x811c9dc5;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            h ^= u32::from(*b);
            h = h.wrapping_mul(0x01000193);
        }
    };
    feed(serde_json::to_string(t).unwrap_or_default().as_bytes());
    if collisions > 0 {
        feed(collisions.to_string().as_bytes());
    }
    const SAFE: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    h.to_string()
        .bytes()
        .map(|b| SAFE[usize::from(b) % SAFE.len()] as char)
        .collect()
}

/// Copies the Deployment's annotations onto a ReplicaSet's and sets its revision (recording a
/// replaced one in revision-history). True when something changed.
fn copy_annotations(
    d: &Deployment,
    into: &mut std::collections::BTreeMap<String, String>,
    revision: i64,
) -> bool {
    let mut changed = false;
    for (k, v) in d.annotations() {
        if SKIP_ANNOTATIONS.contains(&k.as_str()) || into.get(k) == Some(v) {
            continue;
        }
        into.insert(k.clone(), v.clone());
        changed = true;
    }
    let old: Option<i64> = into.get(REVISION).and_then(|v| v.parse().ok());
    if old.is_none_or(|o| o < revision) {
        if let Some(o) = old {
            let history = match into.get(REVISION_HISTORY) {
                Some(h) if !h.is_empty() => format!("{h},{o}"),
                _ => o.to_string(),
            };
            into.insert(REVISION_HISTORY.into(), history);
        }
        into.insert(REVISION.into(), revision.to_string());
        changed = true;
    }
    changed
}

fn calculate_status(
    d: &Deployment,
    sets: &[ReplicaSet],
    new: Option<&ReplicaSet>,
) -> DeploymentStatus {
    let st = |r: &ReplicaSet| r.status.clone().unwrap_or_default();
    let available: i32 = sets
        .iter()
        .map(|r| st(r).available_replicas.unwrap_or(0))
        .sum();
    let total: i32 = sets.iter().map(rs_replicas).sum();
    let mut status = d.status.clone().unwrap_or_default();
    status.observed_generation = d.metadata.generation;
    status.replicas = Some(sets.iter().map(|r| st(r).replicas).sum());
    status.updated_replicas = Some(new.map(|r| st(r).replicas).unwrap_or(0));
    status.ready_replicas = Some(sets.iter().map(|r| st(r).ready_replicas.unwrap_or(0)).sum());
    status.available_replicas = Some(available);
    status.unavailable_replicas = Some((total - available).max(0));
    let (_, unavailable) = fenceposts(d);
    if available >= replicas_of(d) - unavailable {
        set_condition(
            &mut status,
            "Available",
            "True",
            "MinimumReplicasAvailable",
            "Deployment has minimum availability.",
        );
    } else {
        set_condition(
            &mut status,
            "Available",
            "False",
            "MinimumReplicasUnavailable",
            "Deployment does not have minimum availability.",
        );
    }
    // A ReplicaSet that cannot create or delete pods shows on its Deployment, as upstream.
    let failure = sets.iter().find_map(|r| {
        r.status
            .as_ref()?
            .conditions
            .as_ref()?
            .iter()
            .find(|c| c.type_ == "ReplicaFailure" && c.status == "True")
            .cloned()
    });
    match failure {
        Some(c) => set_condition(
            &mut status,
            "ReplicaFailure",
            "True",
            c.reason.as_deref().unwrap_or("FailedCreate"),
            c.message.as_deref().unwrap_or(""),
        ),
        None => remove_condition(&mut status, "ReplicaFailure"),
    }
    let paused = d.spec.as_ref().and_then(|s| s.paused).unwrap_or(false);
    let reason = condition(&status, "Progressing").and_then(|c| c.reason.clone());
    if paused && reason.as_deref() != Some("DeploymentPaused") {
        set_condition(
            &mut status,
            "Progressing",
            "Unknown",
            "DeploymentPaused",
            "Deployment is paused",
        );
    } else if !paused && reason.as_deref() == Some("DeploymentPaused") {
        set_condition(
            &mut status,
            "Progressing",
            "Unknown",
            "DeploymentResumed",
            "Deployment is resumed",
        );
    }
    if status.replicas == Some(0) {
        status.replicas = None;
    }
    for f in [
        &mut status.updated_replicas,
        &mut status.ready_replicas,
        &mut status.available_replicas,
        &mut status.unavailable_replicas,
    ] {
        if *f == Some(0) {
            *f = None;
        }
    }
    status
}

/// Every replica updated and available, nothing old left, and this generation observed.
fn complete(d: &Deployment, s: &DeploymentStatus) -> bool {
    let want = replicas_of(d);
    s.updated_replicas.unwrap_or(0) == want
        && s.replicas.unwrap_or(0) == want
        && s.available_replicas.unwrap_or(0) == want
        && s.observed_generation >= d.metadata.generation
}

/// Something moved since the last status: more updated, ready or available pods, or fewer old.
fn progressing(d: &Deployment, s: &DeploymentStatus) -> bool {
    let old = d.status.clone().unwrap_or_default();
    let old_old = old.replicas.unwrap_or(0) - old.updated_replicas.unwrap_or(0);
    let new_old = s.replicas.unwrap_or(0) - s.updated_replicas.unwrap_or(0);
    s.updated_replicas.unwrap_or(0) > old.updated_replicas.unwrap_or(0)
        || new_old < old_old
        || s.ready_replicas.unwrap_or(0) > old.ready_replicas.unwrap_or(0)
        || s.available_replicas.unwrap_or(0) > old.available_replicas.unwrap_or(0)
}

fn condition<'a>(s: &'a DeploymentStatus, t: &str) -> Option<&'a DeploymentCondition> {
    s.conditions.as_ref()?.iter().find(|c| c.type_ == t)
}

fn remove_condition(s: &mut DeploymentStatus, t: &str) {
    if let Some(cs) = s.conditions.as_mut() {
        cs.retain(|c| c.type_ != t);
    }
}

/// Sets a condition as upstream's `SetDeploymentCondition`: unchanged when status and reason
/// are; the transition time kept when only the reason changes.
fn set_condition(s: &mut DeploymentStatus, t: &str, status: &str, reason: &str, message: &str) {
    let now = Time(jiff::Timestamp::now());
    let current = condition(s, t).cloned();
    if let Some(c) = &current
        && c.status == status
        && c.reason.as_deref() == Some(reason)
        && c.message.as_deref() == Some(message)
    {
        return;
    }
    let transition = match &current {
        Some(c) if c.status == status => c.last_transition_time.clone(),
        _ => Some(now.clone()),
    };
    remove_condition(s, t);
    s.conditions
        .get_or_insert_with(Vec::new)
        .push(DeploymentCondition {
            type_: t.to_string(),
            status: status.to_string(),
            reason: Some(reason.to_string()),
            message: Some(message.to_string()),
            last_update_time: Some(now),
            last_transition_time: transition,
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::{DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment};

    fn deployment(
        replicas: i32,
        surge: Option<IntOrString>,
        unavailable: Option<IntOrString>,
    ) -> Deployment {
        Deployment {
            spec: Some(DeploymentSpec {
                replicas: Some(replicas),
                strategy: Some(DeploymentStrategy {
                    type_: Some("RollingUpdate".into()),
                    rolling_update: Some(RollingUpdateDeployment {
                        max_surge: surge,
                        max_unavailable: unavailable,
                    }),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn fenceposts_round_as_upstream() {
        // 25 % of 10: surge rounds up to 3, unavailable down to 2.
        assert_eq!(fenceposts(&deployment(10, None, None)), (3, 2));
        // Both zero: unavailable becomes 1.
        assert_eq!(
            fenceposts(&deployment(
                3,
                Some(IntOrString::Int(0)),
                Some(IntOrString::Int(0))
            )),
            (0, 1)
        );
        assert_eq!(
            fenceposts(&deployment(
                1,
                Some(IntOrString::String("50%".into())),
                Some(IntOrString::String("50%".into()))
            )),
            (1, 0)
        );
    }

    #[test]
    fn hash_is_stable_and_changes_with_template_and_collisions() {
        let mut t = PodTemplateSpec::default();
        let a = template_hash(&t, 0);
        assert_eq!(a, template_hash(&t, 0));
        assert!(
            a.bytes()
                .all(|b| b"bcdfghjklmnpqrstvwxz2456789".contains(&b))
        );
        assert_ne!(a, template_hash(&t, 1));
        t.metadata = Some(ObjectMeta {
            labels: Some([("app".to_string(), "x".to_string())].into()),
            ..Default::default()
        });
        assert_ne!(a, template_hash(&t, 0));
    }

    #[test]
    fn revisions_move_forward_with_history() {
        let mut d = Deployment::default();
        d.metadata.annotations = Some(
            [
                ("kubernetes.io/change-cause".to_string(), "v2".to_string()),
                (
                    "kubectl.kubernetes.io/last-applied-configuration".to_string(),
                    "{}".to_string(),
                ),
            ]
            .into(),
        );
        let mut ann = std::collections::BTreeMap::new();
        ann.insert(REVISION.to_string(), "1".to_string());
        assert!(copy_annotations(&d, &mut ann, 3));
        assert_eq!(ann[REVISION], "3");
        assert_eq!(ann[REVISION_HISTORY], "1");
        assert_eq!(ann["kubernetes.io/change-cause"], "v2");
        assert!(!ann.contains_key("kubectl.kubernetes.io/last-applied-configuration"));
        assert!(!copy_annotations(&d, &mut ann, 3));
    }

    /// A scale and a new template seen together, with the active sets already adding up to
    /// what is allowed: the sets' annotations still follow the scale (else every later sync
    /// would be a scaling event and the new template would never roll out; found by
    /// `keelson chaos control-plane`).
    #[tokio::test]
    async fn against_a_fake_api_a_scale_with_nothing_to_add_still_annotates_the_sets() {
        use crate::testing::{fake_client, taken};
        use kube::runtime::watcher::Event;
        let (client, calls) = fake_client();
        let mut informers = crate::Informers::new(client.clone());
        let ctl = DeploymentController::new(
            &mut informers,
            Recorder::new(client.clone(), "deployment-controller", None),
        );
        let template = |rev: &str| {
            serde_json::json!({"metadata": {"labels": {"app": "web"}, "annotations": {"rev": rev}},
                "spec": {"containers": [{"name": "c", "image": "nginx"}]}})
        };
        let d: Deployment = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "default", "uid": "d-uid", "generation": 9,
                "annotations": {REVISION: "2"}},
            "spec": {"replicas": 6, "selector": {"matchLabels": {"app": "web"}},
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}},
                "template": template("r3")},
        }))
        .unwrap();
        let rs =
            |name: &str, rev: &str, replicas: i32, desired: i32, created: &str| -> ReplicaSet {
                serde_json::from_value(serde_json::json!({
                    "metadata": {"name": name, "namespace": "default", "uid": name,
                        "resourceVersion": "5", "creationTimestamp": created,
                        "labels": {"app": "web"},
                        "annotations": {REVISION: rev, DESIRED_REPLICAS: desired.to_string(),
                            MAX_REPLICAS: (desired + 2).to_string()},
                        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment",
                            "name": "web", "uid": "d-uid", "controller": true}]},
                    "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                        "template": template(&format!("r{rev}"))},
                }))
                .unwrap()
            };
        informers.deployments().apply_event(Event::Apply(d));
        // 3 + 5 = 8 = 6 + a surge of 2: nothing to add or remove.
        for set in [
            rs("web-a", "1", 3, 8, "2026-12-06T00:00:00Z"),
            rs("web-b", "2", 5, 7, "2026-12-06T00:01:00Z"),
        ] {
            informers.replicasets().apply_event(Event::Apply(set));
        }
        // (The fake answers a patch with the patch itself, which is no whole ReplicaSet: the
        // sync stops after the first.)
        let _ = ctl.clone().sync("default/web".into()).await;
        let patched = taken(
            &calls,
            "PATCH",
            "/apis/apps/v1/namespaces/default/replicasets/",
        );
        let (path, patch) = patched.first().expect("no set was annotated");
        assert!(path.ends_with("/web-a"), "{path}");
        assert_eq!(patch.pointer("/spec/replicas"), Some(&serde_json::json!(3)));
        let ann = patch.pointer("/metadata/annotations").unwrap();
        assert_eq!(ann[DESIRED_REPLICAS], "6");
        assert_eq!(ann[MAX_REPLICAS], "8");
    }

    #[tokio::test]
    async fn against_a_fake_api_a_new_deployment_gets_a_hashed_replica_set_at_revision_1() {
        use crate::testing::{fake_client, taken};
        use kube::runtime::watcher::Event;
        let (client, calls) = fake_client();
        let mut informers = crate::Informers::new(client.clone());
        let ctl = DeploymentController::new(
            &mut informers,
            Recorder::new(client.clone(), "deployment-controller", None),
        );
        let d: Deployment = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "default", "uid": "d-uid", "generation": 1,
                "annotations": {"kubernetes.io/change-cause": "first"}},
            "spec": {"replicas": 4, "progressDeadlineSeconds": 600, "selector": {"matchLabels": {"app": "web"}},
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}},
                "template": {"metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "c", "image": "nginx"}]}}},
        }))
        .unwrap();
        informers.deployments().apply_event(Event::Apply(d.clone()));
        ctl.clone().sync("default/web".into()).await.unwrap();
        let created = taken(
            &calls,
            "POST",
            "/apis/apps/v1/namespaces/default/replicasets",
        );
        assert_eq!(created.len(), 1);
        let rs = &created[0].1;
        let hash = template_hash(&d.spec.as_ref().unwrap().template, 0);
        assert_eq!(
            rs.pointer("/metadata/name"),
            Some(&serde_json::json!(format!("web-{hash}")))
        );
        assert_eq!(rs.pointer("/spec/replicas"), Some(&serde_json::json!(4)));
        assert_eq!(
            rs.pointer("/spec/selector/matchLabels/pod-template-hash"),
            Some(&serde_json::json!(hash))
        );
        assert_eq!(
            rs.pointer("/spec/template/metadata/labels/pod-template-hash"),
            Some(&serde_json::json!(hash))
        );
        let ann = rs.pointer("/metadata/annotations").unwrap();
        assert_eq!(ann[REVISION], "1");
        assert_eq!(ann[DESIRED_REPLICAS], "4");
        assert_eq!(ann[MAX_REPLICAS], "5");
        assert_eq!(ann["kubernetes.io/change-cause"], "first");
        // The Deployment records the revision (with an update, as its role allows) and a
        // Progressing condition.
        let updates = taken(
            &calls,
            "PUT",
            "/apis/apps/v1/namespaces/default/deployments/web",
        );
        assert!(updates.iter().any(|(_, p)| {
            p.pointer("/metadata/annotations/deployment.kubernetes.io~1revision")
                == Some(&serde_json::json!("1"))
        }));
        let status = taken(
            &calls,
            "PUT",
            "/apis/apps/v1/namespaces/default/deployments/web/status",
        );
        let conds = status
            .last()
            .unwrap()
            .1
            .pointer("/status/conditions")
            .unwrap()
            .to_string();
        assert!(conds.contains("NewReplicaSetCreated"), "{conds}");
    }
}
