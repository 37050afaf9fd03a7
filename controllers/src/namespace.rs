//! The namespace controller, as upstream's `pkg/controller/namespace`: a namespace being
//! deleted that still has the `kubernetes` finalizer is emptied (every namespaced resource
//! discovery offers is deleted), its status conditions say what remains, and once nothing
//! remains the finalizer is removed through `namespaces/{name}/finalize`, after which the
//! apiserver removes the namespace.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, NamespaceCondition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use keelson_client::queue::WorkQueue;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, PostParams, PropagationPolicy};
use kube::discovery::verbs;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};

use crate::Informers;
use crate::discovery::Resources;
use crate::util::{SyncResult, deleting, is_not_found, reconciler};

const FINALIZER: &str = "kubernetes";

/// The namespace controller.
pub struct NamespaceController {
    client: Client,
    resources: Arc<Resources>,
    namespaces: Store<Namespace>,
    queue: WorkQueue<String>,
}

impl NamespaceController {
    /// Registers the controller's handlers on the shared informers.
    pub fn new(informers: &mut Informers, resources: Arc<Resources>) -> Arc<Self> {
        let queue = WorkQueue::new();
        let namespaces = informers.namespaces().store();
        {
            let q = queue.clone();
            informers.namespaces().on_change(move |c| {
                if deleting(&c.object().metadata) {
                    q.add(c.object().name_any());
                }
            });
        }
        Arc::new(Self {
            client: informers.client(),
            resources,
            namespaces,
            queue,
        })
    }

    async fn sync(self: Arc<Self>, name: String) -> SyncResult {
        let Some(cached) = self.namespaces.get(&ObjectRef::new(&name)) else {
            return Ok(None);
        };
        if !deleting(&cached.metadata) {
            return Ok(None);
        }
        // As upstream's deleter: the namespace as it is now, not as the cache last saw it. A
        // namespace deleted and created again under the same name must not be emptied by a
        // sync for the old one.
        let api: Api<Namespace> = Api::all(self.client.clone());
        let Some(ns) = api.get_opt(&name).await? else {
            return Ok(None);
        };
        if ns.metadata.uid != cached.metadata.uid {
            return Ok(None);
        }
        let finalizers = ns
            .spec
            .as_ref()
            .and_then(|s| s.finalizers.clone())
            .unwrap_or_default();
        if !deleting(&ns.metadata) || !finalizers.iter().any(|f| f == FINALIZER) {
            return Ok(None);
        }
        let mut remaining: Vec<(String, usize)> = Vec::new();
        let mut with_finalizers: Vec<String> = Vec::new();
        let mut failures: Vec<String> = Vec::new();
        let ops = [verbs::LIST, verbs::DELETE];
        for (ar, caps) in self.resources.supporting(&ops, true) {
            let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), &name, ar);
            let dp = DeleteParams {
                propagation_policy: Some(PropagationPolicy::Background),
                ..Default::default()
            };
            let deleted = if caps.supports_operation(verbs::DELETE_COLLECTION) {
                api.delete_collection(&dp, &ListParams::default())
                    .await
                    .map(|_| ())
            } else {
                match api.list_metadata(&ListParams::default()).await {
                    Ok(list) => {
                        let mut r = Ok(());
                        for o in list.items {
                            if let Err(e) = api.delete(&o.name_any(), &dp).await
                                && !is_not_found(&e)
                            {
                                r = Err(e);
                            }
                        }
                        r
                    }
                    Err(e) => Err(e),
                }
            };
            if let Err(e) = deleted {
                failures.push(format!("{}: {e}", ar.plural));
                continue;
            }
            match api.list_metadata(&ListParams::default()).await {
                Ok(list) if !list.items.is_empty() => {
                    let what = if ar.group.is_empty() {
                        ar.plural.clone()
                    } else {
                        format!("{}.{}", ar.plural, ar.group)
                    };
                    for o in &list.items {
                        for f in o.metadata.finalizers.iter().flatten() {
                            if !with_finalizers.contains(f) {
                                with_finalizers.push(f.clone());
                            }
                        }
                    }
                    remaining.push((what, list.items.len()));
                }
                Ok(_) => {}
                Err(e) => failures.push(format!("{}: {e}", ar.plural)),
            }
        }
        self.write_conditions(&ns, &remaining, &with_finalizers, &failures)
            .await?;
        if !failures.is_empty() || !remaining.is_empty() {
            tracing::info!(namespace = %name, ?remaining, ?failures, "namespace not empty yet");
            return Ok(Some(Duration::from_secs(2)));
        }
        // Empty: remove our finalizer.
        let mut done = ns.clone();
        if let Some(spec) = done.spec.as_mut() {
            spec.finalizers = Some(finalizers.into_iter().filter(|f| f != FINALIZER).collect());
        }
        match api
            .replace_subresource("finalize", &name, &PostParams::default(), &done)
            .await
        {
            Ok(_) => Ok(None),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn write_conditions(
        &self,
        ns: &Namespace,
        remaining: &[(String, usize)],
        finalizers: &[String],
        failures: &[String],
    ) -> Result<(), kube::Error> {
        let now = Time(jiff::Timestamp::now());
        let old = ns
            .status
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .unwrap_or_default();
        let cond = |t: &str, on: bool, reason_on: &str, reason_off: &str, message: String| {
            let status = if on { "True" } else { "False" };
            let prev = old.iter().find(|c| c.type_ == t);
            NamespaceCondition {
                type_: t.to_string(),
                status: status.to_string(),
                reason: Some(if on { reason_on } else { reason_off }.to_string()),
                message: (!message.is_empty()).then_some(message),
                last_transition_time: match prev {
                    Some(p) if p.status == status => p.last_transition_time.clone(),
                    _ => Some(now.clone()),
                },
            }
        };
        let remaining_msg = if remaining.is_empty() {
            "All content successfully removed".to_string()
        } else {
            format!(
                "Some resources are remaining: {}",
                remaining
                    .iter()
                    .map(|(r, n)| format!("{r} has {n} resource instances"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let conditions = vec![
            cond(
                "NamespaceDeletionDiscoveryFailure",
                false,
                "DiscoveryFailed",
                "ResourcesDiscovered",
                "All resources successfully discovered".into(),
            ),
            cond(
                "NamespaceDeletionGroupVersionParsingFailure",
                false,
                "GroupVersionParsingFailed",
                "ParsedGroupVersions",
                "All legacy kube types successfully parsed".into(),
            ),
            cond(
                "NamespaceDeletionContentFailure",
                !failures.is_empty(),
                "ContentDeletionFailed",
                "ContentDeleted",
                if failures.is_empty() {
                    "All content successfully deleted, may be waiting on finalization".into()
                } else {
                    format!(
                        "Failed to delete all resource types, {} remaining: {}",
                        failures.len(),
                        failures.join(", ")
                    )
                },
            ),
            cond(
                "NamespaceContentRemaining",
                !remaining.is_empty(),
                "SomeResourcesRemain",
                "ContentRemoved",
                remaining_msg,
            ),
            cond(
                "NamespaceFinalizersRemaining",
                !finalizers.is_empty(),
                "SomeFinalizersRemain",
                "ContentHasNoFinalizers",
                if finalizers.is_empty() {
                    "All content-preserving finalizers finished".into()
                } else {
                    format!(
                        "Some content in the namespace has finalizers remaining: {}",
                        finalizers.join(", ")
                    )
                },
            ),
        ];
        let same = conditions.iter().all(|c| {
            old.iter().any(|o| {
                o.type_ == c.type_
                    && o.status == c.status
                    && o.reason == c.reason
                    && o.message == c.message
            })
        });
        if same {
            return Ok(());
        }
        let mut updated = ns.clone();
        let status = updated.status.get_or_insert_with(Default::default);
        status.conditions = Some(conditions);
        let api: Api<Namespace> = Api::all(self.client.clone());
        match api
            .replace_status(&ns.name_any(), &PostParams::default(), &updated)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) || crate::util::is_conflict(&e) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

reconciler!(NamespaceController, "namespace");
