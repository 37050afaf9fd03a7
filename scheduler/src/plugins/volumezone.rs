//! VolumeZone: a pod whose bound volumes are labelled with zones or regions runs only on nodes
//! in one of them. Unbound claims of a `WaitForFirstConsumer` class are skipped (VolumeBinding
//! picks their volume); other unbound claims make the pod unschedulable, with upstream's
//! reasons.

use std::collections::HashSet;

use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::runtime::reflector::ObjectRef;

use crate::framework::{CycleState, Event, Listers, Plugin, Point, Snapshot, Status};
use crate::plugins::volumebinding::find_claim;
use crate::types::{NodeInfo, PodInfo, pvc_names};

/// Reason: the node is outside every zone (or region) of a volume.
pub const ERR_REASON: &str = "node(s) had no available volume zone";

const NAME: &str = "VolumeZone";
const ZONE: &str = "topology.kubernetes.io/zone";
const REGION: &str = "topology.kubernetes.io/region";
const BETA_ZONE: &str = "failure-domain.beta.kubernetes.io/zone";
const BETA_REGION: &str = "failure-domain.beta.kubernetes.io/region";
const KEYS: [&str; 4] = [ZONE, REGION, BETA_ZONE, BETA_REGION];

/// The GA key of a topology key (a PV labelled with a beta key matches a node's GA label).
fn ga(key: &str) -> &str {
    match key {
        BETA_ZONE => ZONE,
        BETA_REGION => REGION,
        k => k,
    }
}

/// The plugin.
pub struct VolumeZone {
    listers: Listers,
}

impl VolumeZone {
    /// A new plugin.
    pub fn new(listers: Listers) -> Self {
        VolumeZone { listers }
    }

    /// An unbound claim: fine if its class binds at first use, else why the pod cannot run.
    fn unbound(&self, pvc: &PersistentVolumeClaim) -> Result<(), String> {
        let class = pvc
            .spec
            .as_ref()
            .and_then(|s| s.storage_class_name.as_deref())
            .unwrap_or("");
        if class.is_empty() {
            return Err("PersistentVolumeClaim had no pv name and storageClass name".into());
        }
        let Some(sc) = self.listers.storage_classes.get(&ObjectRef::new(class)) else {
            return Err(format!("storageclass.storage.k8s.io \"{class}\" not found"));
        };
        match sc.volume_binding_mode.as_deref() {
            None => Err(format!(
                "VolumeBindingMode not set for StorageClass \"{class}\""
            )),
            Some("WaitForFirstConsumer") => Ok(()),
            Some(_) => Err("PersistentVolume had no name".into()),
        }
    }
}

/// The topology labels of the pod's bound volumes: key, and the values allowed (a label value
/// may list several, joined by `__`).
#[derive(Clone)]
struct State(Vec<(String, HashSet<String>)>);

impl Plugin for VolumeZone {
    fn name(&self) -> &'static str {
        NAME
    }
    fn points(&self) -> &'static [Point] {
        &[Point::PreFilter, Point::Filter]
    }
    fn events(&self) -> &'static [Event] {
        &[
            Event::NodeAdd,
            Event::NodeLabel,
            Event::Volume,
            Event::StorageClassAdd,
        ]
    }
    fn pre_filter(
        &self,
        state: &mut CycleState,
        pod: &PodInfo,
        _: &Snapshot,
    ) -> (Option<HashSet<String>>, Status) {
        let mut topologies = Vec::new();
        for c in pvc_names(&pod.pod) {
            let pvc = match find_claim(&self.listers, pod, c) {
                Ok(pvc) => pvc,
                Err(status) => return (None, status),
            };
            let volume = pvc.spec.as_ref().and_then(|s| s.volume_name.as_deref());
            let Some(volume) = volume.filter(|v| !v.is_empty()) else {
                match self.unbound(&pvc) {
                    Ok(()) => continue,
                    Err(reason) => return (None, Status::unresolvable(reason)),
                }
            };
            let Some(pv) = self.listers.pvs.get(&ObjectRef::new(volume)) else {
                return (
                    None,
                    Status::unresolvable(format!("persistentvolume \"{volume}\" not found")),
                );
            };
            for (k, v) in pv.metadata.labels.iter().flatten() {
                let values: HashSet<String> = v.split("__").map(|s| s.trim().to_string()).collect();
                // A value with an empty zone in it is ignored, as upstream does.
                if KEYS.contains(&k.as_str()) && !values.contains("") {
                    topologies.push((k.clone(), values));
                }
            }
        }
        if topologies.is_empty() {
            return (None, Status::skip());
        }
        state.write(NAME, State(topologies));
        (None, Status::ok())
    }
    fn filter(&self, state: &CycleState, _: &PodInfo, node: &NodeInfo) -> Status {
        let Some(State(topologies)) = state.read::<State>(NAME) else {
            return Status::ok();
        };
        // A node without any topology label is not held to volume zones.
        if !KEYS.iter().any(|k| node.labels.contains_key(*k)) {
            return Status::ok();
        }
        for (key, values) in topologies {
            let at = node.labels.get(key).or_else(|| node.labels.get(ga(key)));
            if !at.is_some_and(|v| values.contains(v)) {
                return Status::unresolvable(ERR_REASON);
            }
        }
        Status::ok()
    }
}
