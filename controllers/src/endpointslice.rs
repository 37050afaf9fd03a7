//! The EndpointSlice controller, as upstream's `pkg/controller/endpointslice`: for every
//! Service with a selector, EndpointSlices (owned by the Service, labelled
//! `kubernetes.io/service-name` and `endpointslice.kubernetes.io/managed-by`) holding the
//! selected pods that have an IP, with `ready` / `serving` / `terminating` conditions, grouped by
//! address type and resolved ports, at most `--max-endpoints-per-slice` (100) per slice.
//!
//! Reconciling keeps endpoints in the slice they are already in, fills slices that have room
//! before creating new ones, and deletes slices left empty, so a change to one pod rewrites one
//! slice. A Service that selects nothing keeps one empty placeholder slice, as upstream.
//!
//! The slice cache may lag behind the controller's own writes; a sync on such a cache would
//! create duplicate slices or undo its last write. Like upstream's endpoint-slice tracker, the
//! controller remembers the generation of every slice it wrote (or that it deleted one) until the
//! cache shows it, and skips a Service's sync while any of its slices is pending; the watch
//! event that brings the write queues the Service again.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use keelson_client::informer::{Change, Index};
use keelson_client::queue::WorkQueue;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};

use crate::Informers;
use crate::endpoint::{
    pod_ip, pod_ref, queue_services_on_changes, selected_pods, selector_of, target_port,
};
use crate::util::{SyncResult, controller_ref, is_not_found, pod_ready, reconciler, split_key};

const SERVICE_NAME: &str = "kubernetes.io/service-name";
const MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
const CONTROLLER: &str = "endpointslice-controller.k8s.io";

/// (address type, ports as JSON) — the slices an endpoint may go in.
type Group = (String, String);

fn group_of(address_type: &str, ports: &[EndpointPort]) -> Group {
    (
        address_type.to_string(),
        serde_json::to_string(ports).unwrap_or_default(),
    )
}

/// The EndpointSlice controller.
pub struct EndpointSliceController {
    client: Client,
    services: Store<Service>,
    pods: Index<Pod>,
    slices: Store<EndpointSlice>,
    queue: WorkQueue<String>,
    max_per_slice: usize,
    pending: Arc<Mutex<Pending>>,
    /// Per Service, when the oldest change not yet reflected in its slices was seen (the
    /// `endpoints.kubernetes.io/last-change-trigger-time` of the next slices written).
    triggers: Arc<Mutex<HashMap<String, jiff::Timestamp>>>,
}

/// The annotation kube-proxy measures network programming latency from.
const TRIGGER_TIME: &str = "endpoints.kubernetes.io/last-change-trigger-time";

/// Writes the cache has not shown yet: Service key → slice name → the generation written (`None`
/// for a deletion) and when.
type Pending = HashMap<String, HashMap<String, (Option<i64>, Instant)>>;

/// How long a write may stay unseen before it is forgotten (a slice created and at once deleted
/// by someone else would otherwise hold its Service back for good).
const PENDING_FOR: Duration = Duration::from_secs(30);

/// Records a write of `slice` (the object the API returned), or its deletion.
fn track(pending: &Mutex<Pending>, key: &str, slice: &EndpointSlice, deleted: bool) {
    let generation = if deleted {
        None
    } else {
        match slice.metadata.generation {
            Some(g) => Some(g),
            // A server that keeps no generation cannot be tracked.
            None => return,
        }
    };
    pending
        .lock()
        .entry(key.to_string())
        .or_default()
        .insert(slice.name_any(), (generation, Instant::now()));
}

/// Whether the cached slices of `key` are behind a write of ours; forgets writes they show.
fn behind(pending: &Mutex<Pending>, key: &str, cached: &[EndpointSlice]) -> bool {
    let mut p = pending.lock();
    let Some(writes) = p.get_mut(key) else {
        return false;
    };
    writes.retain(|name, (generation, at)| {
        if at.elapsed() > PENDING_FOR {
            return false;
        }
        let seen = cached
            .iter()
            .find(|s| s.metadata.name.as_deref() == Some(name));
        match (generation, seen) {
            (Some(g), Some(s)) => s.metadata.generation.unwrap_or(0) < *g,
            (Some(_), None) => true,
            (None, seen) => seen.is_some(),
        }
    });
    let behind = !writes.is_empty();
    if !behind {
        p.remove(key);
    }
    behind
}

fn slice_service_key(slice: &EndpointSlice) -> Option<String> {
    let labels = slice.labels();
    if labels.get(MANAGED_BY).map(String::as_str) != Some(CONTROLLER) {
        return None;
    }
    Some(format!(
        "{}/{}",
        slice.namespace()?,
        labels.get(SERVICE_NAME)?
    ))
}

/// An endpoint's identity across syncs: the pod it points at.
fn endpoint_key(e: &Endpoint) -> String {
    e.target_ref
        .as_ref()
        .and_then(|r| r.uid.clone())
        .unwrap_or_else(|| e.addresses.join(","))
}

impl EndpointSliceController {
    /// Registers the controller's handlers on the shared informers.
    pub fn new(informers: &mut Informers, max_per_slice: usize) -> Arc<Self> {
        let queue = WorkQueue::new();
        let services = informers.services().store();
        let pods = informers.pods_by_namespace();
        let slices = informers.endpointslices().store();
        let triggers: Arc<Mutex<HashMap<String, jiff::Timestamp>>> = Arc::default();
        {
            let t = triggers.clone();
            // The first change not yet synced is the one the next slices reflect.
            queue_services_on_changes(informers, &queue, &services, move |k| {
                t.lock()
                    .entry(k.to_string())
                    .or_insert_with(jiff::Timestamp::now);
            });
        }
        let pending = Arc::new(Mutex::new(Pending::new()));
        {
            let q = queue.clone();
            let pending = pending.clone();
            informers.endpointslices().on_change(move |c| {
                if let Some(k) = slice_service_key(c.object()) {
                    if let Change::Deleted(s) = &c {
                        // A slice someone else deleted will never show our last write.
                        let mut p = pending.lock();
                        if let Some(writes) = p.get_mut(&k) {
                            writes.remove(&s.name_any());
                        }
                    }
                    q.add(k);
                }
            });
        }
        Arc::new(Self {
            client: informers.client(),
            services,
            pods,
            slices,
            queue,
            max_per_slice: max_per_slice.max(1),
            pending,
            triggers,
        })
    }

    async fn sync(self: Arc<Self>, key: String) -> SyncResult {
        let (ns, name) = split_key(&key);
        let api: Api<EndpointSlice> = Api::namespaced(self.client.clone(), ns);
        let existing: Vec<EndpointSlice> = self
            .slices
            .state()
            .iter()
            .filter(|s| slice_service_key(s).as_deref() == Some(key.as_str()))
            .map(|s| (**s).clone())
            .collect();
        if behind(&self.pending, &key, &existing) {
            // The watch event that shows the write queues the Service; the retry is a backstop.
            return Ok(Some(Duration::from_secs(1)));
        }
        let trigger = self.triggers.lock().remove(&key);
        let svc = self.services.get(&ObjectRef::new(name).within(ns));
        let Some(svc) = svc.filter(|s| selector_of(s).is_some()) else {
            // No Service, or no selector: the garbage collector (owner references) or we remove
            // the slices this controller made.
            for s in existing {
                delete(&api, &s).await?;
                track(&self.pending, &key, &s, true);
            }
            return Ok(None);
        };
        let desired = self.desired(&svc);
        let mut slices_by_group: HashMap<Group, Vec<EndpointSlice>> = HashMap::new();
        let mut stale = Vec::new();
        for s in existing {
            let group = group_of(&s.address_type, s.ports.as_deref().unwrap_or_default());
            if desired.contains_key(&group) || desired.is_empty() {
                slices_by_group.entry(group).or_default().push(s);
            } else {
                stale.push(s);
            }
        }
        let mut writes: Vec<(Option<EndpointSlice>, EndpointSlice)> = Vec::new();
        if desired.is_empty() {
            // Placeholder: one slice with no endpoints and no ports.
            let mut all: Vec<EndpointSlice> = std::mem::take(&mut slices_by_group)
                .into_values()
                .flatten()
                .collect();
            let keep = all.pop();
            stale.extend(all);
            let mut placeholder = keep
                .clone()
                .unwrap_or_else(|| self.new_slice(&svc, "IPv4", Vec::new()));
            placeholder.endpoints = Vec::new();
            placeholder.ports = None;
            writes.push((keep, placeholder));
        }
        for (group, (ports, mut wanted)) in desired {
            let mut slices = slices_by_group.remove(&group).unwrap_or_default();
            // Keep endpoints where they are.
            let mut updated: Vec<(EndpointSlice, Vec<Endpoint>)> = slices
                .drain(..)
                .map(|s| {
                    let kept: Vec<Endpoint> = s
                        .endpoints
                        .iter()
                        .filter_map(|e| wanted.remove(&endpoint_key(e)))
                        .collect();
                    (s, kept)
                })
                .collect();
            let mut rest: Vec<Endpoint> = wanted.into_values().collect();
            rest.sort_by(|a, b| a.addresses.cmp(&b.addresses));
            // Fill slices with room, then create new ones.
            for (_, eps) in updated.iter_mut() {
                while eps.len() < self.max_per_slice
                    && let Some(e) = rest.pop()
                {
                    eps.push(e);
                }
            }
            for (old, eps) in updated {
                if eps.is_empty() {
                    stale.push(old);
                    continue;
                }
                let mut new = old.clone();
                new.endpoints = eps;
                new.metadata.labels = Some(self.labels(&svc));
                writes.push((Some(old), new));
            }
            for chunk in rest.chunks(self.max_per_slice) {
                let mut s = self.new_slice(&svc, &group.0, chunk.to_vec());
                s.ports = Some(ports.clone());
                writes.push((None, s));
            }
        }
        // The change this sync reflects, on the slices it writes (none: no stale time left,
        // as upstream).
        let stamp = |s: &mut EndpointSlice| match trigger {
            Some(t) => {
                s.metadata
                    .annotations
                    .get_or_insert_with(Default::default)
                    .insert(
                        TRIGGER_TIME.into(),
                        t.strftime("%Y-%m-%dT%H:%M:%S%.fZ").to_string(),
                    );
            }
            None => {
                if let Some(a) = s.metadata.annotations.as_mut() {
                    a.remove(TRIGGER_TIME);
                }
            }
        };
        let written = async {
            for (old, mut new) in writes {
                new.endpoints.sort_by(|a, b| a.addresses.cmp(&b.addresses));
                match old {
                    // `new` started as a copy of `old`: equal means nothing to write.
                    Some(old) if old == new => {}
                    Some(old) => {
                        stamp(&mut new);
                        match api
                            .replace(&old.name_any(), &PostParams::default(), &new)
                            .await
                        {
                            Ok(written) => track(&self.pending, &key, &written, false),
                            Err(e) if is_not_found(&e) => {}
                            Err(e) => return Err(e),
                        }
                    }
                    None => {
                        stamp(&mut new);
                        let written = api.create(&PostParams::default(), &new).await?;
                        track(&self.pending, &key, &written, false);
                    }
                }
            }
            for s in stale {
                delete(&api, &s).await?;
                track(&self.pending, &key, &s, true);
            }
            Ok(())
        }
        .await;
        if let (Err(_), Some(t)) = (&written, trigger) {
            // The retry writes the same change: it keeps its time.
            self.triggers.lock().entry(key.clone()).or_insert(t);
        }
        written.map(|()| None)
    }

    fn labels(&self, svc: &Service) -> BTreeMap<String, String> {
        let mut labels = svc.labels().clone();
        labels.insert(SERVICE_NAME.into(), svc.name_any());
        labels.insert(MANAGED_BY.into(), CONTROLLER.into());
        if svc.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) == Some("None") {
            labels.insert("service.kubernetes.io/headless".into(), String::new());
        }
        labels
    }

    fn new_slice(
        &self,
        svc: &Service,
        address_type: &str,
        endpoints: Vec<Endpoint>,
    ) -> EndpointSlice {
        EndpointSlice {
            metadata: ObjectMeta {
                generate_name: Some(format!("{}-", svc.name_any())),
                namespace: svc.namespace(),
                labels: Some(self.labels(svc)),
                owner_references: Some(vec![controller_ref(svc)]),
                ..Default::default()
            },
            address_type: address_type.to_string(),
            endpoints,
            ports: None,
        }
    }

    /// The endpoints the Service should have, by group, keyed by `endpoint_key`.
    #[allow(clippy::type_complexity)]
    fn desired(
        &self,
        svc: &Service,
    ) -> HashMap<Group, (Vec<EndpointPort>, HashMap<String, Endpoint>)> {
        let publish_not_ready = svc
            .spec
            .as_ref()
            .and_then(|s| s.publish_not_ready_addresses)
            .unwrap_or(false);
        let svc_ports = svc
            .spec
            .as_ref()
            .and_then(|s| s.ports.clone())
            .unwrap_or_default();
        let mut out: HashMap<Group, (Vec<EndpointPort>, HashMap<String, Endpoint>)> =
            HashMap::new();
        for pod in selected_pods(&self.pods, svc) {
            let ip = pod_ip(&pod);
            let address_type = if ip.contains(':') { "IPv6" } else { "IPv4" };
            let ports: Vec<EndpointPort> = svc_ports
                .iter()
                .filter_map(|p| {
                    target_port(&pod, p).map(|n| EndpointPort {
                        name: Some(p.name.clone().unwrap_or_default()),
                        port: Some(n),
                        protocol: Some(p.protocol.clone().unwrap_or_else(|| "TCP".into())),
                        app_protocol: p.app_protocol.clone(),
                    })
                })
                .collect();
            let terminating = pod.metadata.deletion_timestamp.is_some();
            let ready = pod_ready(&pod);
            let ep = Endpoint {
                addresses: vec![ip.to_string()],
                conditions: Some(EndpointConditions {
                    ready: Some(publish_not_ready || (ready && !terminating)),
                    serving: Some(publish_not_ready || ready),
                    terminating: Some(terminating),
                }),
                hostname: pod
                    .spec
                    .as_ref()
                    .filter(|s| s.subdomain.as_deref() == Some(svc.name_any().as_str()))
                    .and_then(|s| s.hostname.clone()),
                node_name: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
                target_ref: Some(pod_ref(&pod)),
                ..Default::default()
            };
            out.entry(group_of(address_type, &ports))
                .or_insert_with(|| (ports, HashMap::new()))
                .1
                .insert(endpoint_key(&ep), ep);
        }
        out
    }
}

reconciler!(EndpointSliceController, "endpointslice");

async fn delete(api: &Api<EndpointSlice>, s: &EndpointSlice) -> Result<(), kube::Error> {
    match api.delete(&s.name_any(), &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(e) if is_not_found(&e) => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slice(name: &str, generation: i64) -> EndpointSlice {
        EndpointSlice {
            metadata: ObjectMeta {
                name: Some(name.into()),
                generation: Some(generation),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            endpoints: Vec::new(),
            ports: None,
        }
    }

    #[test]
    fn a_sync_waits_for_the_cache_to_show_its_writes() {
        let p = Mutex::new(Pending::new());
        assert!(!behind(&p, "ns/web", &[]));
        // Created web-a (generation 1), updated web-b to generation 3, deleted web-c.
        track(&p, "ns/web", &slice("web-a", 1), false);
        track(&p, "ns/web", &slice("web-b", 3), false);
        track(&p, "ns/web", &slice("web-c", 1), true);
        let old = [slice("web-b", 2), slice("web-c", 1)];
        assert!(behind(&p, "ns/web", &old));
        // Another Service is not held back.
        assert!(!behind(&p, "ns/other", &old));
        // Two of three writes seen: still behind.
        let partly = [slice("web-a", 1), slice("web-b", 3), slice("web-c", 1)];
        assert!(behind(&p, "ns/web", &partly));
        let seen = [slice("web-a", 1), slice("web-b", 4)];
        assert!(!behind(&p, "ns/web", &seen));
        assert!(p.lock().is_empty(), "seen writes are forgotten");
        // A server that keeps no generation is not tracked.
        let mut untracked = slice("web-d", 1);
        untracked.metadata.generation = None;
        track(&p, "ns/web", &untracked, false);
        assert!(!behind(&p, "ns/web", &[]));
    }
}

#[cfg(test)]
mod fake_api_tests {
    use kube::runtime::watcher::Event;

    use super::*;
    use crate::endpoint::tests::service_and_pod;
    use crate::testing::{fake_client, taken};

    #[tokio::test]
    async fn no_duplicate_slice_while_the_cache_is_behind_a_create() {
        let (client, calls) = fake_client();
        let mut informers = Informers::new(client);
        let ctl = EndpointSliceController::new(&mut informers, 100);
        let (svc, pod) = service_and_pod();
        informers.services().apply_event(Event::Apply(svc));
        informers.pods().apply_event(Event::Apply(pod));
        let path = "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices";

        ctl.clone().sync("default/web".into()).await.unwrap();
        let created = taken(&calls, "POST", path);
        assert_eq!(created.len(), 1);
        let stamp = created[0]
            .1
            .pointer("/metadata/annotations/endpoints.kubernetes.io~1last-change-trigger-time");
        assert!(
            stamp
                .and_then(|v| v.as_str())
                .is_some_and(|t| t.parse::<jiff::Timestamp>().is_ok()),
            "the slice carries the time of the change it reflects: {stamp:?}"
        );
        // Before the watch shows the slice, another sync writes nothing.
        ctl.clone().sync("default/web".into()).await.unwrap();
        assert_eq!(taken(&calls, "POST", path).len(), 1);
        // Once it does, the slice is up to date and nothing is written either.
        let mut slice: EndpointSlice = serde_json::from_value(created[0].1.clone()).unwrap();
        slice.metadata.name = Some("web-0".into());
        slice.metadata.generation = Some(1);
        informers.endpointslices().apply_event(Event::Apply(slice));
        calls.lock().unwrap().clear();
        ctl.clone().sync("default/web".into()).await.unwrap();
        assert!(calls.lock().unwrap().is_empty());
        assert!(ctl.pending.lock().is_empty());
    }
}
