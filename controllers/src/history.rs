//! ControllerRevisions for StatefulSets and DaemonSets, as upstream's `controller/history`: one
//! revision per distinct pod template, named `<owner>-<hash>`, holding the template as the
//! strategic-merge patch `kubectl rollout undo` applies, numbered in the order templates were
//! used (a template used again is renumbered as the newest), and trimmed to
//! `revisionHistoryLimit` once no pod uses them.

use std::sync::Arc;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;

use crate::util::{controller_ref, is_conflict, is_not_found};

/// The label on pods naming the revision they were made from.
pub const REVISION_LABEL: &str = "controller-revision-hash";

/// A template as a revision's data: `{"spec":{"template":{..., "$patch":"replace"}}}`.
pub fn data_of(template: &PodTemplateSpec) -> serde_json::Value {
    let mut t = serde_json::to_value(template).unwrap_or_default();
    if let Some(o) = t.as_object_mut() {
        o.insert("$patch".into(), json!("replace"));
    }
    json!({"spec": {"template": t}})
}

/// FNV-1a of the data and collision count, in the safe alphabet.
fn hash(data: &serde_json::Value, collisions: i32) -> String {
    let mut h: u32 = 0x811c9dc5;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            h ^= u32::from(*b);
            h = h.wrapping_mul(0x01000193);
        }
    };
    feed(data.to_string().as_bytes());
    if collisions > 0 {
        feed(collisions.to_string().as_bytes());
    }
    const SAFE: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    h.to_string()
        .bytes()
        .map(|b| SAFE[usize::from(b) % SAFE.len()] as char)
        .collect()
}

/// Finds or creates the revision for `template` among `existing` (the owner's revisions) and
/// makes it the newest; returns it with the list brought up to date.
pub async fn ensure<O>(
    client: &Client,
    owner: &O,
    template: &PodTemplateSpec,
    collisions: i32,
    mut existing: Vec<ControllerRevision>,
) -> Result<(ControllerRevision, Vec<ControllerRevision>), kube::Error>
where
    O: Resource<DynamicType = (), Scope = NamespaceResourceScope>,
{
    let ns = owner.namespace().unwrap_or_default();
    let api: Api<ControllerRevision> = Api::namespaced(client.clone(), &ns);
    let data = data_of(template);
    let max = existing.iter().map(|r| r.revision).max().unwrap_or(0);
    if let Some(pos) = existing
        .iter()
        .position(|r| r.data.as_ref().map(|d| &d.0) == Some(&data))
    {
        if existing[pos].revision < max {
            let patch = json!({"revision": max + 1});
            existing[pos] = api
                .patch(
                    &existing[pos].name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await?;
        }
        let rev = existing[pos].clone();
        return Ok((rev, existing));
    }
    let name = format!("{}-{}", owner.name_any(), hash(&data, collisions));
    let rev = ControllerRevision {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(ns.clone()),
            labels: template.metadata.as_ref().and_then(|m| m.labels.clone()),
            owner_references: Some(vec![controller_ref(owner)]),
            ..Default::default()
        },
        data: Some(RawExtension(data.clone())),
        revision: max + 1,
    };
    let created = match api.create(&PostParams::default(), &rev).await {
        Ok(r) => r,
        Err(e) if is_conflict(&e) => {
            // Ours from a stale cache (same data) is fine; anything else is a hash collision.
            let found = api.get(&name).await?;
            if found.data.as_ref().map(|d| &d.0) != Some(&data) {
                return Err(e);
            }
            found
        }
        Err(e) => return Err(e),
    };
    existing.push(created.clone());
    Ok((created, existing))
}

/// Deletes the oldest revisions beyond `limit`, except those named in `live`.
pub async fn trim(
    client: &Client,
    revisions: &[ControllerRevision],
    live: &[&str],
    limit: i32,
) -> Result<(), kube::Error> {
    let mut old: Vec<&ControllerRevision> = revisions
        .iter()
        .filter(|r| !live.contains(&r.name_any().as_str()))
        .collect();
    let excess = old.len().saturating_sub(limit.max(0) as usize);
    old.sort_by_key(|r| r.revision);
    for r in old.into_iter().take(excess) {
        let api: Api<ControllerRevision> =
            Api::namespaced(client.clone(), &r.namespace().unwrap_or_default());
        match api.delete(&r.name_any(), &DeleteParams::default()).await {
            Ok(_) => {}
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Owned revisions from the shared index.
pub fn owned(
    index: &keelson_client::informer::Index<ControllerRevision>,
    uid: &str,
) -> Vec<ControllerRevision> {
    let mut v: Vec<ControllerRevision> = index
        .get(uid)
        .iter()
        .map(|r: &Arc<ControllerRevision>| (**r).clone())
        .collect();
    v.sort_by_key(|r| r.revision);
    v
}
