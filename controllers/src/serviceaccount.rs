//! The service account controller, as upstream's `pkg/controller/serviceaccount`: every active
//! namespace has a `default` ServiceAccount; it is created with the namespace and re-created if
//! deleted.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use keelson_client::informer::Change;
use keelson_client::queue::WorkQueue;
use kube::api::{Api, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};

use crate::Informers;
use crate::util::{SyncResult, deleting, is_conflict, reconciler};

/// The ServiceAccounts every namespace gets.
const DEFAULT_ACCOUNTS: &[&str] = &["default"];

/// The service account controller.
pub struct ServiceAccountController {
    client: Client,
    namespaces: Store<Namespace>,
    accounts: Store<ServiceAccount>,
    queue: WorkQueue<String>,
}

impl ServiceAccountController {
    /// Registers the controller's handlers on the shared informers.
    pub fn new(informers: &mut Informers) -> Arc<Self> {
        let queue = WorkQueue::new();
        let namespaces = informers.namespaces().store();
        let accounts = informers.serviceaccounts().store();
        {
            let q = queue.clone();
            informers.namespaces().on_change(move |c| {
                if !matches!(c, Change::Deleted(_)) {
                    q.add(c.object().name_any());
                }
            });
        }
        {
            let q = queue.clone();
            informers.serviceaccounts().on_change(move |c| {
                if let Change::Deleted(sa) = c
                    && DEFAULT_ACCOUNTS.contains(&sa.name_any().as_str())
                {
                    q.add(sa.namespace().unwrap_or_default());
                }
            });
        }
        Arc::new(Self {
            client: informers.client(),
            namespaces,
            accounts,
            queue,
        })
    }

    async fn sync(self: Arc<Self>, ns: String) -> SyncResult {
        let Some(namespace) = self.namespaces.get(&ObjectRef::new(&ns)) else {
            return Ok(None);
        };
        if deleting(&namespace.metadata) {
            return Ok(None);
        }
        let api: Api<ServiceAccount> = Api::namespaced(self.client.clone(), &ns);
        for name in DEFAULT_ACCOUNTS {
            if self
                .accounts
                .get(&ObjectRef::new(name).within(&ns))
                .is_some()
            {
                continue;
            }
            let sa = ServiceAccount {
                metadata: ObjectMeta {
                    name: Some(name.to_string()),
                    ..Default::default()
                },
                ..Default::default()
            };
            match api.create(&PostParams::default(), &sa).await {
                Ok(_) => tracing::debug!(namespace = %ns, name, "created service account"),
                // Already there (the cache is behind), or the namespace is terminating.
                Err(e) if is_conflict(&e) => {}
                Err(kube::Error::Api(s)) if s.code == 403 => {}
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }
}

reconciler!(ServiceAccountController, "serviceaccount");
