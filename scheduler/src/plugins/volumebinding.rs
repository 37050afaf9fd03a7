//! VolumeBinding: a pod's PersistentVolumeClaims must exist; bound ones must be reachable from
//! the node (the PV's node affinity); unbound `WaitForFirstConsumer` ones need an available PV
//! that fits and is reachable, or a provisioner. The chosen PVs are bound to the claims before the
//! pod is (PreBind). Unbound `Immediate` claims are left to the PV controller.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::ObjectRef;

use crate::framework::{CycleState, Event, Listers, Plugin, Point, Snapshot, Status};
use crate::types::{NodeInfo, NodeTerm, PodInfo, parse_quantity, pvc_names};

/// Reason: a bound PV cannot be reached from the node.
pub const ERR_NODE_CONFLICT: &str = "node(s) had volume node affinity conflict";
/// Reason: no PV fits an unbound claim on the node.
pub const ERR_BIND_CONFLICT: &str = "node(s) didn't find available persistent volumes to bind";
/// Reason: an Immediate claim is not bound yet.
pub const ERR_UNBOUND_IMMEDIATE: &str = "pod has unbound immediate PersistentVolumeClaims";

const NAME: &str = "VolumeBinding";

/// The plugin.
pub struct VolumeBinding {
    listers: Listers,
    client: Option<kube::Client>,
    /// PVs chosen at Reserve, by name, with the claim (`ns/name`) they were chosen for
    /// (upstream's assume cache): until the PV cache shows their claimRef, a pod scheduled in
    /// the meantime would see them free and give them to a second claim.
    assumed: Arc<parking_lot::Mutex<HashMap<String, String>>>,
}

impl VolumeBinding {
    /// A new plugin.
    pub fn new(listers: Listers, client: Option<kube::Client>) -> Self {
        VolumeBinding {
            listers,
            client,
            assumed: Arc::default(),
        }
    }
}

/// The pod's claim `name` from the cache, or the reason the pod cannot run without it.
pub fn find_claim(
    listers: &Listers,
    pod: &PodInfo,
    name: &str,
) -> Result<Arc<PersistentVolumeClaim>, Status> {
    listers
        .pvcs
        .get(&ObjectRef::new(name).within(&pod.namespace))
        .ok_or_else(|| Status::unresolvable(format!("persistentvolumeclaim \"{name}\" not found")))
}

fn claim_key(pvc: &PersistentVolumeClaim) -> String {
    format!(
        "{}/{}",
        pvc.metadata.namespace.as_deref().unwrap_or(""),
        pvc.metadata.name.as_deref().unwrap_or("")
    )
}

#[derive(Clone, Default)]
struct State {
    /// Node affinity of the PVs of bound claims.
    bound: Vec<Vec<NodeTerm>>,
    /// Unbound delayed-binding claims.
    unbound: Vec<Arc<PersistentVolumeClaim>>,
    /// Claim (`ns/name`) -> PV chosen at Reserve.
    chosen: Vec<(Arc<PersistentVolumeClaim>, Option<String>)>,
}

fn pv_terms(pv: &PersistentVolume) -> Vec<NodeTerm> {
    pv.spec
        .as_ref()
        .and_then(|s| s.node_affinity.as_ref())
        .and_then(|a| a.required.as_ref())
        .map(|r| {
            r.node_selector_terms
                .iter()
                .filter_map(NodeTerm::new)
                .collect()
        })
        .unwrap_or_default()
}

fn reachable(terms: &[NodeTerm], node: &NodeInfo) -> bool {
    terms.is_empty() || terms.iter().any(|t| t.matches(&node.labels, &node.name))
}

impl VolumeBinding {
    fn class_of(pvc: &PersistentVolumeClaim) -> String {
        pvc.spec
            .as_ref()
            .and_then(|s| s.storage_class_name.clone())
            .unwrap_or_default()
    }

    /// A PV for the claim on the node, not in `taken`.
    fn find_pv(
        &self,
        pvc: &PersistentVolumeClaim,
        node: &NodeInfo,
        taken: &HashSet<String>,
    ) -> Option<String> {
        let spec = pvc.spec.as_ref()?;
        let want = spec
            .resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get("storage"))
            .and_then(|q| parse_quantity(&q.0, 1))
            .unwrap_or(0);
        let modes = spec.access_modes.clone().unwrap_or_default();
        let class = Self::class_of(pvc);
        let mut best: Option<(i64, String)> = None;
        let claim = claim_key(pvc);
        let mut assumed = self.assumed.lock();
        for pv in self.listers.pvs.state() {
            let name = pv.metadata.name.clone().unwrap_or_default();
            let Some(ps) = pv.spec.as_ref() else { continue };
            if taken.contains(&name) || pv.metadata.deletion_timestamp.is_some() {
                continue;
            }
            // Once the cache shows a claimRef, it decides, not the assumption.
            if ps.claim_ref.is_some() {
                assumed.remove(&name);
            }
            if assumed.get(&name).is_some_and(|c| *c != claim) {
                continue;
            }
            if let Some(c) = &ps.claim_ref
                && !(c.name.as_deref() == pvc.metadata.name.as_deref()
                    && c.namespace.as_deref() == pvc.metadata.namespace.as_deref())
            {
                continue;
            }
            if ps.storage_class_name.clone().unwrap_or_default() != class {
                continue;
            }
            let pv_modes = ps.access_modes.clone().unwrap_or_default();
            if !modes.iter().all(|m| pv_modes.contains(m)) {
                continue;
            }
            if ps.volume_mode.as_deref().unwrap_or("Filesystem")
                != spec.volume_mode.as_deref().unwrap_or("Filesystem")
            {
                continue;
            }
            let size = ps
                .capacity
                .as_ref()
                .and_then(|c| c.get("storage"))
                .and_then(|q| parse_quantity(&q.0, 1))
                .unwrap_or(0);
            if size < want || !reachable(&pv_terms(&pv), node) {
                continue;
            }
            if best.as_ref().is_none_or(|(s, _)| size < *s) {
                best = Some((size, name));
            }
        }
        best.map(|(_, n)| n)
    }

    /// Whether the claim's class can provision a volume for it instead.
    fn provisionable(&self, pvc: &PersistentVolumeClaim) -> bool {
        self.listers
            .storage_classes
            .get(&ObjectRef::new(&Self::class_of(pvc)))
            .is_some_and(|sc| sc.provisioner != "kubernetes.io/no-provisioner")
    }

    /// Chooses PVs for the unbound claims on a node; None if one has no PV and no provisioner.
    fn choose(
        &self,
        st: &State,
        node: &NodeInfo,
    ) -> Option<Vec<(Arc<PersistentVolumeClaim>, Option<String>)>> {
        let mut taken = HashSet::new();
        let mut out = Vec::new();
        for c in &st.unbound {
            match self.find_pv(c, node, &taken) {
                Some(pv) => {
                    taken.insert(pv.clone());
                    out.push((c.clone(), Some(pv)));
                }
                None if self.provisionable(c) => out.push((c.clone(), None)),
                None => return None,
            }
        }
        Some(out)
    }
}

impl Plugin for VolumeBinding {
    fn name(&self) -> &'static str {
        NAME
    }
    fn points(&self) -> &'static [Point] {
        &[
            Point::PreFilter,
            Point::Filter,
            Point::Reserve,
            Point::PreBind,
        ]
    }
    fn events(&self) -> &'static [Event] {
        &[
            Event::Volume,
            Event::StorageClassAdd,
            Event::NodeAdd,
            Event::NodeLabel,
        ]
    }
    fn pre_filter(
        &self,
        state: &mut CycleState,
        pod: &PodInfo,
        _: &Snapshot,
    ) -> (Option<HashSet<String>>, Status) {
        let names: Vec<&str> = pvc_names(&pod.pod).collect();
        if names.is_empty() {
            return (None, Status::skip());
        }
        let mut st = State::default();
        for c in names {
            let pvc = match find_claim(&self.listers, pod, c) {
                Ok(pvc) => pvc,
                Err(status) => return (None, status),
            };
            if pvc.metadata.deletion_timestamp.is_some() {
                return (
                    None,
                    Status::unresolvable(format!("persistentvolumeclaim \"{c}\" is being deleted")),
                );
            }
            let volume = pvc
                .spec
                .as_ref()
                .and_then(|s| s.volume_name.clone())
                .unwrap_or_default();
            if !volume.is_empty() {
                match self.listers.pvs.get(&ObjectRef::new(&volume)) {
                    Some(pv) => st.bound.push(pv_terms(&pv)),
                    None => {
                        return (
                            None,
                            Status::unresolvable(format!(
                                "pvc {}/{c} is bound to a missing persistentvolume \"{volume}\"",
                                pod.namespace
                            )),
                        );
                    }
                }
                continue;
            }
            let delayed = self
                .listers
                .storage_classes
                .get(&ObjectRef::new(&Self::class_of(&pvc)))
                .is_some_and(|sc| {
                    sc.volume_binding_mode.as_deref() == Some("WaitForFirstConsumer")
                });
            if !delayed {
                return (None, Status::unresolvable(ERR_UNBOUND_IMMEDIATE));
            }
            st.unbound.push(pvc);
        }
        state.write(NAME, st);
        (None, Status::ok())
    }
    fn filter(&self, state: &CycleState, _: &PodInfo, node: &NodeInfo) -> Status {
        let Some(st) = state.read::<State>(NAME) else {
            return Status::ok();
        };
        if !st.bound.iter().all(|t| reachable(t, node)) {
            return Status::unresolvable(ERR_NODE_CONFLICT);
        }
        if !st.unbound.is_empty() && self.choose(st, node).is_none() {
            return Status::unresolvable(ERR_BIND_CONFLICT);
        }
        Status::ok()
    }
    fn reserve(&self, state: &mut CycleState, _: &PodInfo, node: &NodeInfo) -> Status {
        let Some(st) = state.read::<State>(NAME) else {
            return Status::ok();
        };
        if st.unbound.is_empty() {
            return Status::ok();
        }
        match self.choose(st, node) {
            Some(chosen) => {
                let mut assumed = self.assumed.lock();
                for (pvc, pv) in &chosen {
                    if let Some(pv) = pv {
                        assumed.insert(pv.clone(), claim_key(pvc));
                    }
                }
                drop(assumed);
                if let Some(st) = state.read_mut::<State>(NAME) {
                    st.chosen = chosen;
                }
                Status::ok()
            }
            None => Status::unresolvable(ERR_BIND_CONFLICT),
        }
    }
    fn unreserve(&self, state: &mut CycleState, _: &PodInfo, _: &str) {
        if let Some(st) = state.read_mut::<State>(NAME) {
            let mut assumed = self.assumed.lock();
            for (pvc, pv) in st.chosen.drain(..) {
                if let Some(pv) = pv
                    && assumed.get(&pv) == Some(&claim_key(&pvc))
                {
                    assumed.remove(&pv);
                }
            }
        }
    }
    fn pre_bind(
        &self,
        state: &CycleState,
        pod: Arc<PodInfo>,
        node: String,
    ) -> BoxFuture<'static, Status> {
        let st = state.read::<State>(NAME).cloned();
        let client = self.client.clone();
        let pvs = self.listers.pvs.clone();
        let chosen = st.as_ref().map(|s| s.chosen.clone()).unwrap_or_default();
        Box::pin(async move {
            if chosen.is_empty() {
                return Status::ok();
            }
            let Some(client) = client else {
                return Status::error("no API client to bind volumes with");
            };
            for (pvc, pv) in chosen {
                let ns = pvc.metadata.namespace.clone().unwrap_or_default();
                let name = pvc.metadata.name.clone().unwrap_or_default();
                let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
                let pp = PatchParams::default();
                let Some(pv) = pv else {
                    let patch = serde_json::json!({"metadata": {"annotations": {
                        "volume.kubernetes.io/selected-node": node}}});
                    if let Err(e) = claims.patch(&name, &pp, &Patch::Merge(&patch)).await {
                        return Status::error(format!("annotating claim {ns}/{name}: {e}"));
                    }
                    continue;
                };
                let vols: Api<PersistentVolume> = Api::all(client.clone());
                // The PV as this scheduler last saw it: its resourceVersion makes the patch a
                // compare-and-set, so a claimRef written meanwhile by anyone else (another
                // scheduler, the PV controller) fails this binding rather than being overwritten.
                let Some(seen) = pvs.get(&ObjectRef::new(&pv)) else {
                    return Status::error(format!("volume {pv} is gone"));
                };
                if let Some(c) = seen.spec.as_ref().and_then(|s| s.claim_ref.as_ref())
                    && (c.namespace.as_deref(), c.name.as_deref())
                        != (Some(ns.as_str()), Some(name.as_str()))
                {
                    return Status::error(format!(
                        "volume {pv} is bound to another claim ({}/{})",
                        c.namespace.as_deref().unwrap_or(""),
                        c.name.as_deref().unwrap_or("")
                    ));
                }
                let claim_ref = serde_json::json!({
                    "metadata": {"resourceVersion": seen.metadata.resource_version},
                    "spec": {"claimRef": {
                    "kind": "PersistentVolumeClaim", "apiVersion": "v1", "namespace": ns, "name": name,
                    "uid": pvc.metadata.uid, "resourceVersion": pvc.metadata.resource_version}}});
                if let Err(e) = vols.patch(&pv, &pp, &Patch::Merge(&claim_ref)).await {
                    return Status::error(format!("binding volume {pv}: {e}"));
                }
                let _ = vols
                    .patch_status(
                        &pv,
                        &pp,
                        &Patch::Merge(&serde_json::json!({"status": {"phase": "Bound"}})),
                    )
                    .await;
                let bind = serde_json::json!({
                    "metadata": {"annotations": {"pv.kubernetes.io/bind-completed": "yes", "pv.kubernetes.io/bound-by-controller": "yes"}},
                    "spec": {"volumeName": pv}});
                if let Err(e) = claims.patch(&name, &pp, &Patch::Merge(&bind)).await {
                    return Status::error(format!("binding claim {ns}/{name}: {e}"));
                }
                let pv_obj = vols.get(&pv).await.ok();
                let cap: BTreeMap<String, serde_json::Value> = pv_obj
                    .as_ref()
                    .and_then(|p| p.spec.as_ref()?.capacity.clone())
                    .map(|c| {
                        c.into_iter()
                            .map(|(k, v)| (k, serde_json::json!(v.0)))
                            .collect()
                    })
                    .unwrap_or_default();
                let modes = pv_obj
                    .as_ref()
                    .and_then(|p| p.spec.as_ref()?.access_modes.clone());
                let _ = claims
                    .patch_status(
                        &name,
                        &pp,
                        &Patch::Merge(&serde_json::json!({"status": {
                        "phase": "Bound", "capacity": cap, "accessModes": modes}})),
                    )
                    .await;
            }
            tracing::debug!(pod = %pod.key, "volumes bound");
            Status::ok()
        })
    }
}
