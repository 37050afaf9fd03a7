//! Trims of cached pods shared by the control-plane components whose informers keep every pod
//! of the cluster (the scheduler, the controller-manager): what none of them reads goes before
//! the cache keeps it. Not for the kubelet, which runs the containers.

use k8s_openapi::api::core::v1::{Container, Pod};

/// Cuts a pod's containers down to what the control plane reads: name, ports (host ports,
/// named target ports), resources (fitting, quota) and restart policy (a sidecar's requests
/// count differently). Ephemeral containers go.
pub fn containers(pod: &mut Pod) {
    let Some(spec) = pod.spec.as_mut() else {
        return;
    };
    let keep = |c: &mut Container| {
        *c = Container {
            name: std::mem::take(&mut c.name),
            resources: c.resources.take(),
            ports: c.ports.take(),
            restart_policy: c.restart_policy.take(),
            ..Default::default()
        };
    };
    spec.containers.iter_mut().for_each(keep);
    spec.init_containers.iter_mut().flatten().for_each(keep);
    spec.ephemeral_containers = None;
}

/// Keeps only the volumes the control plane looks at: claims (and generic ephemeral volumes,
/// which become claims) and the network disks the scheduler's VolumeRestrictions compares.
/// ConfigMap, Secret, projected (the service-account token), emptyDir and the like go.
pub fn volumes(pod: &mut Pod) {
    if let Some(vs) = pod.spec.as_mut().and_then(|s| s.volumes.as_mut()) {
        vs.retain(|v| {
            v.persistent_volume_claim.is_some()
                || v.ephemeral.is_some()
                || v.gce_persistent_disk.is_some()
                || v.aws_elastic_block_store.is_some()
                || v.iscsi.is_some()
                || v.rbd.is_some()
        });
    }
}
