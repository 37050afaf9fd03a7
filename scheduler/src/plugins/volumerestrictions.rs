//! VolumeRestrictions: volumes that only one pod (or one node) may use at a time: the same
//! GCE PD / AWS EBS / RBD / iSCSI disk mounted read-write, and ReadWriteOncePod claims.

use std::collections::HashSet;

use k8s_openapi::api::core::v1::Volume;
use kube::runtime::reflector::ObjectRef;

use crate::framework::{CycleState, Event, Listers, Plugin, Point, Snapshot, Status};
use crate::types::{NodeInfo, PodInfo, pvc_names};

/// Reason: a conflicting disk is in use on the node.
pub const ERR_DISK_CONFLICT: &str = "node(s) had no available disk";
/// Reason: a ReadWriteOncePod claim is in use.
pub const ERR_RWOP_CONFLICT: &str =
    "node has pod using PersistentVolumeClaim with the same name and ReadWriteOncePod access mode";

const NAME: &str = "VolumeRestrictions";

/// The plugin.
pub struct VolumeRestrictions {
    listers: Listers,
}

impl VolumeRestrictions {
    /// A new plugin.
    pub fn new(listers: Listers) -> Self {
        VolumeRestrictions { listers }
    }
}

#[derive(Clone)]
struct State {
    rwop: HashSet<String>,
    conflicts: i64,
}

/// Whether two volumes are the same exclusive disk (upstream `isVolumeConflict`).
fn conflict(a: &Volume, b: &Volume) -> bool {
    if let (Some(x), Some(y)) = (&a.gce_persistent_disk, &b.gce_persistent_disk) {
        return x.pd_name == y.pd_name && !(x.read_only == Some(true) && y.read_only == Some(true));
    }
    if let (Some(x), Some(y)) = (&a.aws_elastic_block_store, &b.aws_elastic_block_store) {
        return x.volume_id == y.volume_id;
    }
    if let (Some(x), Some(y)) = (&a.iscsi, &b.iscsi) {
        return x.iqn == y.iqn && !(x.read_only == Some(true) && y.read_only == Some(true));
    }
    if let (Some(x), Some(y)) = (&a.rbd, &b.rbd) {
        let shared = x.monitors.iter().any(|m| y.monitors.contains(m));
        return shared
            && x.pool == y.pool
            && x.image == y.image
            && !(x.read_only == Some(true) && y.read_only == Some(true));
    }
    false
}

fn exclusive(v: &Volume) -> bool {
    v.gce_persistent_disk.is_some()
        || v.aws_elastic_block_store.is_some()
        || v.iscsi.is_some()
        || v.rbd.is_some()
}

impl Plugin for VolumeRestrictions {
    fn name(&self) -> &'static str {
        NAME
    }
    fn points(&self) -> &'static [Point] {
        &[Point::PreFilter, Point::Filter]
    }
    fn events(&self) -> &'static [Event] {
        &[Event::AssignedPodDelete, Event::Volume, Event::NodeAdd]
    }
    fn pre_filter(
        &self,
        state: &mut CycleState,
        pod: &PodInfo,
        snap: &Snapshot,
    ) -> (Option<HashSet<String>>, Status) {
        let volumes = pod.pod.spec.as_ref().and_then(|s| s.volumes.as_ref());
        let has_disks = volumes.into_iter().flatten().any(exclusive);
        let mut rwop = HashSet::new();
        for c in pvc_names(&pod.pod) {
            let pvc = self
                .listers
                .pvcs
                .get(&ObjectRef::new(c).within(&pod.namespace));
            let modes = pvc
                .as_ref()
                .and_then(|p| p.spec.as_ref())
                .and_then(|s| s.access_modes.as_ref());
            if modes.is_some_and(|m| m.iter().any(|m| m == "ReadWriteOncePod")) {
                rwop.insert(format!("{}/{c}", pod.namespace));
            }
        }
        if !has_disks && rwop.is_empty() {
            return (None, Status::skip());
        }
        let conflicts = snap
            .nodes
            .iter()
            .map(|n| rwop.iter().filter_map(|k| n.pvc_refs.get(k)).sum::<usize>() as i64)
            .sum();
        state.write(NAME, State { rwop, conflicts });
        (None, Status::ok())
    }
    fn add_pod(&self, state: &mut CycleState, _: &PodInfo, added: &PodInfo, _: &NodeInfo) {
        if let Some(st) = state.read_mut::<State>(NAME) {
            for c in pvc_names(&added.pod) {
                if st.rwop.contains(&format!("{}/{c}", added.namespace)) {
                    st.conflicts += 1;
                }
            }
        }
    }
    fn remove_pod(&self, state: &mut CycleState, _: &PodInfo, removed: &PodInfo, _: &NodeInfo) {
        if let Some(st) = state.read_mut::<State>(NAME) {
            for c in pvc_names(&removed.pod) {
                if st.rwop.contains(&format!("{}/{c}", removed.namespace)) {
                    st.conflicts -= 1;
                }
            }
        }
    }
    fn filter(&self, state: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Status {
        if state.read::<State>(NAME).is_some_and(|s| s.conflicts > 0) {
            return Status::unschedulable(ERR_RWOP_CONFLICT);
        }
        let mine = pod.pod.spec.as_ref().and_then(|s| s.volumes.as_ref());
        for v in mine.into_iter().flatten().filter(|v| exclusive(v)) {
            for p in &node.pods {
                let theirs = p.pod.spec.as_ref().and_then(|s| s.volumes.as_ref());
                if theirs.into_iter().flatten().any(|o| conflict(v, o)) {
                    return Status::unschedulable(ERR_DISK_CONFLICT);
                }
            }
        }
        Status::ok()
    }
}
