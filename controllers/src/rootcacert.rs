//! The root CA publisher, as upstream's `root-ca-cert-publisher`: every active namespace has a
//! ConfigMap `kube-root-ca.crt` whose `ca.crt` is the cluster CA (`--root-ca-file`), so pods
//! can verify the apiserver; it is re-created or corrected if deleted or changed.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use keelson_client::informer::Change;
use keelson_client::queue::WorkQueue;
use kube::api::{Api, PostParams};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::reflector::Store;
use kube::{Client, ResourceExt};

use crate::Informers;
use crate::util::{SyncResult, deleting, is_conflict, is_not_found, reconciler};

/// The ConfigMap's name.
pub const NAME: &str = "kube-root-ca.crt";

/// The root CA publisher.
pub struct RootCaPublisher {
    client: Client,
    namespaces: Store<Namespace>,
    configmaps: Store<ConfigMap>,
    ca: String,
    queue: WorkQueue<String>,
}

impl RootCaPublisher {
    /// Registers the controller's handlers; `ca` is the PEM to publish.
    pub fn new(informers: &mut Informers, ca: String) -> Arc<Self> {
        let queue = WorkQueue::new();
        let namespaces = informers.namespaces().store();
        let configmaps = informers.root_ca_configmaps().store();
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
            informers
                .root_ca_configmaps()
                .on_change(move |c| q.add(c.object().namespace().unwrap_or_default()));
        }
        Arc::new(Self {
            client: informers.client(),
            namespaces,
            configmaps,
            ca,
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
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &ns);
        let data = Some([("ca.crt".to_string(), self.ca.clone())].into());
        match self.configmaps.get(&ObjectRef::new(NAME).within(&ns)) {
            Some(cm) if cm.data == data => Ok(None),
            Some(cm) => {
                let mut fixed = (*cm).clone();
                fixed.data = data;
                match api.replace(NAME, &PostParams::default(), &fixed).await {
                    Ok(_) => Ok(None),
                    Err(e) if is_not_found(&e) || is_conflict(&e) => Ok(None),
                    Err(e) => Err(e),
                }
            }
            None => {
                let cm = ConfigMap {
                    metadata: ObjectMeta {
                        name: Some(NAME.into()),
                        annotations: Some(
                            [(
                                "kubernetes.io/description".to_string(),
                                "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters.".to_string(),
                            )]
                            .into(),
                        ),
                        ..Default::default()
                    },
                    data,
                    ..Default::default()
                };
                match api.create(&PostParams::default(), &cm).await {
                    Ok(_) => Ok(None),
                    // Already there (cache behind) or the namespace is terminating.
                    Err(e) if is_conflict(&e) => Ok(None),
                    Err(kube::Error::Api(s)) if s.code == 403 => Ok(None),
                    Err(e) => Err(e),
                }
            }
        }
    }
}

reconciler!(RootCaPublisher, "root-ca-cert-publisher");
