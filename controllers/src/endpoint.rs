//! The endpoints controller, as upstream's `pkg/controller/endpoint`: for every Service with a
//! selector, an Endpoints object of the same name listing the selected pods that have an IP —
//! ready ones under `addresses`, the others under `notReadyAddresses` — grouped into subsets by
//! the ports they resolve (named target ports are looked up in each pod's containers).
//! Services without a selector are left alone (their Endpoints are the user's).

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, ObjectReference, Pod, Service,
    ServicePort,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use keelson_client::informer::{Change, Index};
use keelson_client::queue::WorkQueue;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};

use crate::Informers;
use crate::util::{
    SyncResult, is_conflict, is_not_found, key_of, pod_ready, pod_terminal, reconciler, split_key,
};

/// The Services in the pod's namespace whose selector matches the pod's labels.
fn services_selecting(services: &Store<Service>, pod: &Pod) -> Vec<String> {
    let ns = pod.namespace();
    services
        .state()
        .iter()
        .filter(|s| s.namespace() == ns)
        .filter(|s| {
            selector_of(s)
                .is_some_and(|sel| sel.iter().all(|(k, v)| pod.labels().get(k) == Some(v)))
        })
        .map(|s| key_of(&s.metadata))
        .collect()
}

/// A Service's selector, if it has a non-empty one.
pub(crate) fn selector_of(svc: &Service) -> Option<&BTreeMap<String, String>> {
    svc.spec
        .as_ref()?
        .selector
        .as_ref()
        .filter(|s| !s.is_empty())
}

/// The pods a Service selects (that have an IP and are not finished).
pub(crate) fn selected_pods(pods: &Index<Pod>, svc: &Service) -> Vec<Arc<Pod>> {
    let Some(sel) = selector_of(svc) else {
        return Vec::new();
    };
    let mut out: Vec<Arc<Pod>> = pods
        .get(&svc.namespace().unwrap_or_default())
        .into_iter()
        .filter(|p| sel.iter().all(|(k, v)| p.labels().get(k) == Some(v)))
        .filter(|p| !pod_terminal(p) && !pod_ip(p).is_empty())
        .collect();
    out.sort_by_key(|p| p.name_any());
    out
}

/// The pod's primary IP, or "".
pub(crate) fn pod_ip(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.pod_ip.as_deref())
        .unwrap_or("")
}

/// The container port a Service port targets on this pod, if it resolves.
pub(crate) fn target_port(pod: &Pod, port: &ServicePort) -> Option<i32> {
    match &port.target_port {
        None => Some(port.port),
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(name)) => {
            let protocol = port.protocol.as_deref().unwrap_or("TCP");
            pod.spec.as_ref()?.containers.iter().find_map(|c| {
                c.ports.as_ref()?.iter().find_map(|cp| {
                    (cp.name.as_deref() == Some(name.as_str())
                        && cp.protocol.as_deref().unwrap_or("TCP") == protocol)
                        .then_some(cp.container_port)
                })
            })
        }
    }
}

/// A reference to the pod for `targetRef`.
pub(crate) fn pod_ref(pod: &Pod) -> ObjectReference {
    ObjectReference {
        kind: Some("Pod".into()),
        namespace: pod.namespace(),
        name: Some(pod.name_any()),
        uid: pod.uid(),
        ..Default::default()
    }
}

/// Ready and not-ready addresses of one subset.
type Addresses = (Vec<EndpointAddress>, Vec<EndpointAddress>);

/// Queues a Service when it changes and when a pod it selects (before or after the change)
/// changes: what both endpoint controllers react to. `queued` is told each key queued.
pub(crate) fn queue_services_on_changes(
    informers: &mut Informers,
    queue: &WorkQueue<String>,
    services: &Store<Service>,
    queued: impl Fn(&str) + Clone + Send + Sync + 'static,
) {
    let q = queue.clone();
    let told = queued.clone();
    informers.services().on_change(move |c| {
        let k = key_of(&c.object().metadata);
        told(&k);
        q.add(k);
    });
    let q = queue.clone();
    let svcs = services.clone();
    informers.pods().on_change(move |c| {
        let mut keys = services_selecting(&svcs, c.object());
        if let Change::Updated { old, .. } = &c {
            keys.extend(services_selecting(&svcs, old));
        }
        for k in keys {
            queued(&k);
            q.add(k);
        }
    });
}

/// The endpoints controller.
pub struct EndpointsController {
    client: Client,
    services: Store<Service>,
    pods: Index<Pod>,
    endpoints: Store<Endpoints>,
    queue: WorkQueue<String>,
}

impl EndpointsController {
    /// Registers the controller's handlers on the shared informers.
    pub fn new(informers: &mut Informers) -> Arc<Self> {
        let queue = WorkQueue::new();
        let services = informers.services().store();
        let pods = informers.pods_by_namespace();
        let endpoints = informers.endpoints().store();
        queue_services_on_changes(informers, &queue, &services, |_| {});
        {
            // Every change to an Endpoints queues its Service, not only deletions: a sync
            // compares against the cache, which may be behind the controller's own last write
            // (a create that met AlreadyExists, or an update the watch has not delivered yet),
            // and the sync that follows the watch catching up repairs any such miss.
            let q = queue.clone();
            informers
                .endpoints()
                .on_change(move |c| q.add(key_of(&c.object().metadata)));
        }
        Arc::new(Self {
            client: informers.client(),
            services,
            pods,
            endpoints,
            queue,
        })
    }

    async fn sync(self: Arc<Self>, key: String) -> SyncResult {
        let (ns, name) = split_key(&key);
        let api: Api<Endpoints> = Api::namespaced(self.client.clone(), ns);
        let current = self.endpoints.get(&ObjectRef::new(name).within(ns));
        let Some(svc) = self.services.get(&ObjectRef::new(name).within(ns)) else {
            // The Service is gone: so are its Endpoints (if the controller made them).
            if current.is_some() {
                match api.delete(name, &DeleteParams::default()).await {
                    Ok(_) => {}
                    Err(e) if is_not_found(&e) => {}
                    Err(e) => return Err(e),
                }
            }
            return Ok(None);
        };
        if selector_of(&svc).is_none() {
            return Ok(None);
        }
        let subsets = self.subsets(&svc);
        let mut labels = svc.labels().clone();
        if svc.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) == Some("None") {
            labels.insert("service.kubernetes.io/headless".into(), String::new());
        }
        let subsets = (!subsets.is_empty()).then_some(subsets);
        match current {
            Some(cur) if cur.subsets == subsets && cur.labels() == &labels => Ok(None),
            Some(cur) => {
                let mut updated = (*cur).clone();
                updated.subsets = subsets;
                updated.metadata.labels = Some(labels);
                match api.replace(name, &PostParams::default(), &updated).await {
                    Ok(_) => Ok(None),
                    Err(e) if is_not_found(&e) => Ok(None),
                    Err(e) => Err(e),
                }
            }
            None => {
                let ep = Endpoints {
                    metadata: ObjectMeta {
                        name: Some(name.to_string()),
                        namespace: Some(ns.to_string()),
                        labels: Some(labels),
                        ..Default::default()
                    },
                    subsets,
                };
                match api.create(&PostParams::default(), &ep).await {
                    Ok(_) => Ok(None),
                    // Already there: the cache is behind; the watch will bring it, and queue
                    // the Service again.
                    Err(e) if is_conflict(&e) => Ok(None),
                    Err(e) => Err(e),
                }
            }
        }
    }

    fn subsets(&self, svc: &Service) -> Vec<EndpointSubset> {
        let publish_not_ready = svc
            .spec
            .as_ref()
            .and_then(|s| s.publish_not_ready_addresses)
            .unwrap_or(false);
        let ports = svc
            .spec
            .as_ref()
            .and_then(|s| s.ports.clone())
            .unwrap_or_default();
        // Pods grouped by the ports they resolve, as upstream's RepackSubsets.
        let mut groups: BTreeMap<Vec<(String, i32, String)>, Addresses> = BTreeMap::new();
        for pod in selected_pods(&self.pods, svc) {
            if pod.metadata.deletion_timestamp.is_some() && !publish_not_ready {
                continue;
            }
            let resolved: Vec<(String, i32, String)> = ports
                .iter()
                .filter_map(|p| {
                    target_port(&pod, p).map(|n| {
                        (
                            p.name.clone().unwrap_or_default(),
                            n,
                            p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                        )
                    })
                })
                .collect();
            if resolved.is_empty() && !ports.is_empty() {
                continue;
            }
            let addr = EndpointAddress {
                ip: pod_ip(&pod).to_string(),
                node_name: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
                target_ref: Some(pod_ref(&pod)),
                hostname: pod
                    .spec
                    .as_ref()
                    .filter(|s| s.subdomain.as_deref() == Some(svc.name_any().as_str()))
                    .and_then(|s| s.hostname.clone()),
            };
            let entry = groups.entry(resolved).or_default();
            if publish_not_ready || pod_ready(&pod) {
                entry.0.push(addr);
            } else {
                entry.1.push(addr);
            }
        }
        groups
            .into_iter()
            .map(|(ports, (mut ready, mut not_ready))| {
                ready.sort_by(|a, b| a.ip.cmp(&b.ip));
                not_ready.sort_by(|a, b| a.ip.cmp(&b.ip));
                let app = |name: &str| {
                    svc.spec
                        .as_ref()
                        .and_then(|s| s.ports.as_ref())
                        .and_then(|ps| ps.iter().find(|p| p.name.as_deref().unwrap_or("") == name))
                        .and_then(|p| p.app_protocol.clone())
                };
                EndpointSubset {
                    addresses: (!ready.is_empty()).then_some(ready),
                    not_ready_addresses: (!not_ready.is_empty()).then_some(not_ready),
                    ports: Some(
                        ports
                            .into_iter()
                            .map(|(name, port, protocol)| EndpointPort {
                                app_protocol: app(&name),
                                name: (!name.is_empty()).then_some(name),
                                port,
                                protocol: Some(protocol),
                            })
                            .collect(),
                    ),
                }
            })
            .collect()
    }
}

reconciler!(EndpointsController, "endpoint");

#[cfg(test)]
pub(crate) mod tests {
    use futures::FutureExt;
    use kube::runtime::watcher::Event;
    use serde_json::json;

    use super::*;
    use crate::testing::{fake_client, taken};

    pub(crate) fn service_and_pod() -> (Service, Pod) {
        let svc = serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "default", "uid": "svc-uid"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]},
        }))
        .unwrap();
        let pod = serde_json::from_value(json!({
            "metadata": {"name": "web-0", "namespace": "default", "uid": "pod-uid",
                "labels": {"app": "web"}},
            "spec": {"containers": [{"name": "c", "image": "nginx"}]},
            "status": {"phase": "Running", "podIP": "10.244.0.5",
                "conditions": [{"type": "Ready", "status": "True"}]},
        }))
        .unwrap();
        (svc, pod)
    }

    #[tokio::test]
    async fn a_create_the_cache_has_not_shown_is_synced_again_when_it_arrives() {
        let (client, calls) = fake_client();
        let mut informers = Informers::new(client);
        let ctl = EndpointsController::new(&mut informers);
        let (svc, pod) = service_and_pod();
        informers.services().apply_event(Event::Apply(svc));
        informers.pods().apply_event(Event::Apply(pod));
        while let Some(k) = ctl.queue.get().now_or_never().flatten() {
            ctl.queue.done(&k);
        }

        ctl.clone().sync("default/web".into()).await.unwrap();
        let created = taken(&calls, "POST", "/api/v1/namespaces/default/endpoints");
        assert_eq!(created.len(), 1);
        assert_eq!(
            created[0].1.pointer("/subsets/0/addresses/0/ip"),
            Some(&json!("10.244.0.5"))
        );
        // The watch brings an older state of the Endpoints (say, written before the pod had
        // an IP): the Service is queued again, and its sync brings the Endpoints up to date.
        let stale: Endpoints = serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "default", "resourceVersion": "7"},
        }))
        .unwrap();
        informers.endpoints().apply_event(Event::Apply(stale));
        assert_eq!(
            ctl.queue.get().now_or_never().flatten().as_deref(),
            Some("default/web")
        );
        ctl.clone().sync("default/web".into()).await.unwrap();
        let updated = taken(&calls, "PUT", "/api/v1/namespaces/default/endpoints/web");
        assert_eq!(updated.len(), 1);
        assert_eq!(
            updated[0].1.pointer("/subsets/0/addresses/0/ip"),
            Some(&json!("10.244.0.5"))
        );
    }
}
