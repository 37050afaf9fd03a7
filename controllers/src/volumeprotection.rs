//! The storage-object-in-use protection controllers, as upstream's
//! `pkg/controller/volume/pvcprotection` and `pvprotection`:
//!
//! - A PersistentVolumeClaim carries the `kubernetes.io/pvc-protection` finalizer (added here
//!   when the StorageObjectInUseProtection admission plugin did not). Once it is being deleted,
//!   the finalizer goes when no scheduled pod uses it: as a persistentVolumeClaim volume (while
//!   the pod object exists, whatever its phase), or as the claim of an ephemeral volume the pod
//!   owns (until the pod is shut down). The informer's answer is confirmed by a live list of
//!   the namespace's pods before the finalizer goes, as upstream.
//! - A PersistentVolume carries `kubernetes.io/pv-protection`; once it is being deleted, the
//!   finalizer goes when the volume is not Bound to a claim that still exists.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use keelson_client::informer::{Change, Index};
use keelson_client::queue::WorkQueue;
use kube::api::{Api, ListParams, ObjectMeta, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};

use crate::Informers;
use crate::util::{SyncResult, deleting, is_conflict, is_not_found, key_of, reconciler, split_key};

/// The finalizer on claims.
pub const PVC_FINALIZER: &str = "kubernetes.io/pvc-protection";
/// The finalizer on volumes.
pub const PV_FINALIZER: &str = "kubernetes.io/pv-protection";

/// The claims a pod uses, as `<namespace>/<claim>`: its persistentVolumeClaim volumes, and the
/// `<pod>-<volume>` claims of its ephemeral volumes.
pub fn claims_of(pod: &Pod) -> Vec<String> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("");
    let name = pod.metadata.name.as_deref().unwrap_or("");
    pod.spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .filter_map(|v| {
            if let Some(c) = &v.persistent_volume_claim {
                Some(format!("{ns}/{}", c.claim_name))
            } else {
                v.ephemeral
                    .as_ref()
                    .map(|_| format!("{ns}/{name}-{}", v.name))
            }
        })
        .collect()
}

/// A pod shut down for good: being deleted with no grace left.
fn shut_down(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
        && pod.metadata.deletion_grace_period_seconds == Some(0)
}

/// Whether `pod` uses `pvc`, as upstream's `podUsesPVC`: only scheduled pods count; a
/// persistentVolumeClaim volume holds the claim while the pod exists, an ephemeral volume's
/// claim while the pod (its owner) is not shut down.
fn uses_claim(pod: &Pod, pvc: &PersistentVolumeClaim) -> bool {
    let scheduled = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .is_some_and(|n| !n.is_empty());
    if !scheduled || pod.metadata.namespace != pvc.metadata.namespace {
        return false;
    }
    let name = pvc.metadata.name.as_deref().unwrap_or("");
    let pod_name = pod.metadata.name.as_deref().unwrap_or("");
    let owned = pvc
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.controller == Some(true) && Some(&o.uid) == pod.metadata.uid.as_ref());
    pod.spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .any(|v| {
            v.persistent_volume_claim
                .as_ref()
                .is_some_and(|c| c.claim_name == name)
                || (v.ephemeral.is_some()
                    && format!("{pod_name}-{}", v.name) == name
                    && owned
                    && !shut_down(pod))
        })
}

fn has(meta: &ObjectMeta, finalizer: &str) -> bool {
    meta.finalizers.iter().flatten().any(|f| f == finalizer)
}

/// `meta`'s finalizers with `finalizer` added (`add`) or removed.
fn with_finalizer(meta: &ObjectMeta, finalizer: &str, add: bool) -> Vec<String> {
    let mut list: Vec<String> = meta
        .finalizers
        .iter()
        .flatten()
        .filter(|f| *f != finalizer)
        .cloned()
        .collect();
    if add {
        list.push(finalizer.to_string());
    }
    list
}

/// The PVC protection controller.
pub struct PvcProtection {
    client: Client,
    claims: Store<PersistentVolumeClaim>,
    pods_by_claim: Index<Pod>,
    queue: WorkQueue<String>,
}

impl PvcProtection {
    /// Registers the controller's handlers on the shared informers.
    pub fn new(informers: &mut Informers) -> Arc<Self> {
        let queue = WorkQueue::new();
        let claims = informers.claims().store();
        let pods_by_claim = informers.pods_by_claim();
        {
            let q = queue.clone();
            informers.claims().on_change(move |c| {
                let pvc = c.object();
                let wanted = !deleting(&pvc.metadata) && !has(&pvc.metadata, PVC_FINALIZER);
                let releasable = deleting(&pvc.metadata) && has(&pvc.metadata, PVC_FINALIZER);
                if wanted || releasable {
                    q.add(key_of(&pvc.metadata));
                }
            });
        }
        {
            // A pod that goes, or is being deleted, may free the claims it used.
            let (q, claims) = (queue.clone(), claims.clone());
            informers.pods().on_change(move |c| {
                let pod = match c {
                    Change::Deleted(p) => p,
                    Change::Updated { new, .. } if new.metadata.deletion_timestamp.is_some() => new,
                    _ => return,
                };
                for key in claims_of(pod) {
                    let (ns, name) = split_key(&key);
                    if claims
                        .get(&ObjectRef::new(name).within(ns))
                        .is_some_and(|pvc| deleting(&pvc.metadata))
                    {
                        q.add(key);
                    }
                }
            });
        }
        Arc::new(Self {
            client: informers.client(),
            claims,
            pods_by_claim,
            queue,
        })
    }

    async fn sync(self: Arc<Self>, key: String) -> SyncResult {
        let (ns, name) = split_key(&key);
        let Some(pvc) = self.claims.get(&ObjectRef::new(name).within(ns)) else {
            return Ok(None);
        };
        let api: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), ns);
        let want = match (deleting(&pvc.metadata), has(&pvc.metadata, PVC_FINALIZER)) {
            (false, false) => with_finalizer(&pvc.metadata, PVC_FINALIZER, true),
            (true, true) => {
                if self
                    .pods_by_claim
                    .get(&key)
                    .iter()
                    .any(|p| uses_claim(p, &pvc))
                {
                    return Ok(None);
                }
                // The cache may lag: ask the apiserver before letting the claim go.
                let pods: Api<Pod> = Api::namespaced(self.client.clone(), ns);
                let live = pods.list(&ListParams::default()).await?;
                if live.items.iter().any(|p| uses_claim(p, &pvc)) {
                    return Ok(None);
                }
                tracing::info!(claim = %key, "removing the protection finalizer of an unused claim");
                with_finalizer(&pvc.metadata, PVC_FINALIZER, false)
            }
            _ => return Ok(None),
        };
        // An update of the cached copy, as upstream's (its role may not patch claims); a stale
        // copy conflicts.
        let mut updated = (*pvc).clone();
        updated.metadata.finalizers = Some(want);
        match api
            .replace(&pvc.name_any(), &PostParams::default(), &updated)
            .await
        {
            Ok(_) => Ok(None),
            // Deleted meanwhile, or changed: the next event brings it back.
            Err(e) if is_not_found(&e) || is_conflict(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

reconciler!(PvcProtection, "pvc-protection");

/// The PV protection controller.
pub struct PvProtection {
    client: Client,
    volumes: Store<PersistentVolume>,
    claims: Store<PersistentVolumeClaim>,
    queue: WorkQueue<String>,
}

/// Whether a volume is in use: Bound, to a claim that still exists (the same one, by uid).
/// (No binder marks a volume Released here, so a volume whose claim is gone is free.)
fn in_use(pv: &PersistentVolume, claims: &Store<PersistentVolumeClaim>) -> bool {
    if pv.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Bound") {
        return false;
    }
    let Some(r) = pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref()) else {
        return false;
    };
    let (Some(ns), Some(name)) = (r.namespace.as_deref(), r.name.as_deref()) else {
        return false;
    };
    claims
        .get(&ObjectRef::new(name).within(ns))
        .is_some_and(|c| r.uid.is_none() || c.metadata.uid == r.uid)
}

impl PvProtection {
    /// Registers the controller's handlers on the shared informers.
    pub fn new(informers: &mut Informers) -> Arc<Self> {
        let queue = WorkQueue::new();
        let volumes = informers.volumes().store();
        let claims = informers.claims().store();
        {
            let q = queue.clone();
            informers.volumes().on_change(move |c| {
                let pv = c.object();
                let (d, f) = (deleting(&pv.metadata), has(&pv.metadata, PV_FINALIZER));
                if (!d && !f) || (d && f) {
                    q.add(key_of(&pv.metadata));
                }
            });
        }
        {
            // A claim that goes frees its volume.
            let (q, volumes) = (queue.clone(), volumes.clone());
            informers.claims().on_change(move |c| {
                if let Change::Deleted(pvc) = c
                    && let Some(v) = pvc.spec.as_ref().and_then(|s| s.volume_name.as_deref())
                    && volumes
                        .get(&ObjectRef::new(v))
                        .is_some_and(|pv| deleting(&pv.metadata))
                {
                    q.add(v.to_string());
                }
            });
        }
        Arc::new(Self {
            client: informers.client(),
            volumes,
            claims,
            queue,
        })
    }

    async fn sync(self: Arc<Self>, key: String) -> SyncResult {
        let Some(pv) = self.volumes.get(&ObjectRef::new(&key)) else {
            return Ok(None);
        };
        let want = match (deleting(&pv.metadata), has(&pv.metadata, PV_FINALIZER)) {
            (false, false) => with_finalizer(&pv.metadata, PV_FINALIZER, true),
            (true, true) if !in_use(&pv, &self.claims) => {
                tracing::info!(volume = %key, "removing the protection finalizer of an unbound volume");
                with_finalizer(&pv.metadata, PV_FINALIZER, false)
            }
            _ => return Ok(None),
        };
        let api: Api<PersistentVolume> = Api::all(self.client.clone());
        let mut updated = (*pv).clone();
        updated.metadata.finalizers = Some(want);
        match api.replace(&key, &PostParams::default(), &updated).await {
            Ok(_) => Ok(None),
            Err(e) if is_not_found(&e) || is_conflict(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

reconciler!(PvProtection, "pv-protection");

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        EphemeralVolumeSource, PersistentVolumeClaimVolumeSource, PodSpec, PodStatus, Volume,
    };

    fn pod(node: &str, phase: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("ns".into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: (!node.is_empty()).then(|| node.to_string()),
                volumes: Some(vec![
                    Volume {
                        name: "data".into(),
                        persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                            claim_name: "db".into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                    Volume {
                        name: "scratch".into(),
                        ephemeral: Some(EphemeralVolumeSource::default()),
                        ..Default::default()
                    },
                    Volume {
                        name: "tmp".into(),
                        ..Default::default()
                    },
                ]),
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some(phase.into()),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn claims_are_used_as_upstream_counts_them() {
        assert_eq!(
            claims_of(&pod("n1", "Running")),
            ["ns/db", "ns/web-scratch"]
        );
        let claim = |name: &str, owner: Option<&str>| PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                owner_references: owner.map(|uid| {
                    vec![
                        k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                            uid: uid.into(),
                            controller: Some(true),
                            ..Default::default()
                        },
                    ]
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let db = claim("db", None);
        assert!(uses_claim(&pod("n1", "Running"), &db));
        // A finished pod holds its claim until it is deleted, as upstream.
        assert!(uses_claim(&pod("n1", "Succeeded"), &db));
        assert!(!uses_claim(&pod("", "Pending"), &db), "not scheduled");
        // An ephemeral claim counts only when the pod owns it and is not shut down.
        let mut p = pod("n1", "Running");
        p.metadata.uid = Some("u1".into());
        assert!(uses_claim(&p, &claim("web-scratch", Some("u1"))));
        assert!(!uses_claim(&p, &claim("web-scratch", Some("other"))));
        p.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            jiff::Timestamp::now(),
        ));
        p.metadata.deletion_grace_period_seconds = Some(0);
        assert!(!uses_claim(&p, &claim("web-scratch", Some("u1"))));
    }

    #[test]
    fn finalizers_are_added_once_and_removed_alone() {
        let meta = ObjectMeta {
            finalizers: Some(vec!["other".into(), PVC_FINALIZER.into()]),
            resource_version: Some("7".into()),
            ..Default::default()
        };
        assert_eq!(with_finalizer(&meta, PVC_FINALIZER, false), ["other"]);
        assert_eq!(
            with_finalizer(&meta, PVC_FINALIZER, true),
            ["other", PVC_FINALIZER]
        );
    }
}
