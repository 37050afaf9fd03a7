//! The resource quota controller, as upstream's `pkg/controller/resourcequota`: keeps each
//! ResourceQuota's `status.hard` (a copy of `spec.hard`) and `status.used`, charging exactly
//! what the apiserver's ResourceQuota admission charges (both use `keelson-quota`): pods
//! (`pods`, `count/pods`, compute requests and limits, hugepages and extended resources, within
//! the quota's scopes), services (`services`, `services.nodeports`, `services.loadbalancers`),
//! claims (`persistentvolumeclaims`, `requests.storage`, also per storage class) and the object
//! count of any namespaced resource (`count/<resource>[.<group>]`, and `configmaps`, `secrets`,
//! `replicationcontrollers`, `resourcequotas` by name). Recomputed when a quota's limits
//! change, when a pod or service in its namespace frees what it used, when an object of a
//! kind it counts is deleted (watched once a quota names the kind), and every
//! `--resource-quota-sync-period`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, Pod, ResourceQuota, ResourceQuotaStatus, Service,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use keelson_client::informer::{Change, Index};
use keelson_client::queue::WorkQueue;
use keelson_quota::quantity::{self, UNIT};
use keelson_quota::scope;
use keelson_quota::usage::{self, Usage};
use kube::api::{Api, DynamicObject, ListParams};
use kube::core::PartialObjectMeta;
use kube::discovery::Scope;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};
use tokio_util::sync::CancellationToken;

use crate::Informers;
use crate::discovery::Resources;
use crate::util::{SyncResult, key_of, replace_status, run_workers, split_key};

/// Requeues the quotas of namespace `ns`.
fn requeue_namespace(quotas: &Store<ResourceQuota>, queue: &WorkQueue<String>, ns: Option<&str>) {
    for rq in quotas.state() {
        if rq.namespace().as_deref() == ns {
            queue.add(key_of(&rq.metadata));
        }
    }
}

/// Whether a change frees quota: a delete, or an update `updated` says frees some (a create
/// was charged by admission already).
fn frees<K>(c: &Change<'_, K>, updated: impl Fn(&K, &K) -> bool) -> bool {
    match c {
        Change::Added(_) => false,
        Change::Deleted(_) => true,
        Change::Updated { old, new } => updated(old, new),
    }
}

/// The resource quota controller.
pub struct ResourceQuotaController {
    client: Client,
    resources: Arc<Resources>,
    quotas: Store<ResourceQuota>,
    pods: Index<Pod>,
    services: Store<Service>,
    queue: WorkQueue<String>,
    resync: Duration,
    /// Resources whose deletes requeue the quotas of their namespace: the ones quotas count
    /// beyond pods and services (claims, ConfigMaps, `count/...`), watched once a quota
    /// names them.
    monitored: parking_lot::Mutex<std::collections::HashSet<(String, String)>>,
    /// Stops the delete monitors.
    stop: CancellationToken,
}

impl ResourceQuotaController {
    /// Registers the controller's handlers on the shared informers.
    pub fn new(
        informers: &mut Informers,
        resources: Arc<Resources>,
        resync: Duration,
    ) -> Arc<Self> {
        let queue = WorkQueue::new();
        let quotas = informers.resourcequotas().store();
        let pods = informers.pods_by_namespace();
        let services = informers.services().store();
        // A quota is counted when it is new or its limits changed (its status changing is
        // admission charging it, which needs no recount).
        {
            let q = queue.clone();
            informers.resourcequotas().on_change(move |c| match c {
                Change::Added(rq) => q.add(key_of(&rq.metadata)),
                Change::Updated { old, new } => {
                    let hard = |rq: &ResourceQuota| rq.spec.as_ref().and_then(|s| s.hard.clone());
                    let status_hard = new.status.as_ref().and_then(|s| s.hard.clone());
                    if old.spec != new.spec || hard(new) != status_hard {
                        q.add(key_of(&new.metadata));
                    }
                }
                Change::Deleted(_) => {}
            });
        }
        // As upstream, what objects use is recounted when they free it (deletes, pods that
        // finish or change scope, services that change type), not when they are made:
        // admission charged those already, and a recount from a cache that has not seen them
        // yet would give their charge back.
        let requeue = |q: WorkQueue<String>, quotas: Store<ResourceQuota>| {
            move |ns: Option<String>| requeue_namespace(&quotas, &q, ns.as_deref())
        };
        {
            let f = requeue(queue.clone(), quotas.clone());
            informers.pods().on_change(move |c| {
                let frees = frees(&c, |old, new| {
                    let now = k8s_openapi::jiff::Timestamp::now();
                    let deadline =
                        |p: &Pod| p.spec.as_ref().and_then(|s| s.active_deadline_seconds);
                    (usage::pod_charged(old, now) && !usage::pod_charged(new, now))
                        || deadline(old) != deadline(new)
                });
                if frees {
                    f(c.object().namespace());
                }
            });
        }
        {
            let f = requeue(queue.clone(), quotas.clone());
            informers.services().on_change(move |c| {
                let ty = |s: &Service| s.spec.as_ref().and_then(|s| s.type_.clone());
                if frees(&c, |old, new| ty(old) != ty(new)) {
                    f(c.object().namespace());
                }
            });
        }
        Arc::new(Self {
            client: informers.client(),
            resources,
            quotas,
            pods,
            services,
            queue,
            resync,
            monitored: parking_lot::Mutex::new(std::collections::HashSet::new()),
            stop: CancellationToken::new(),
        })
    }

    /// Runs `workers` sync workers (and the periodic resync) until `token` is cancelled.
    pub async fn run(self: Arc<Self>, workers: usize, token: CancellationToken) {
        {
            let (stop, token) = (self.stop.clone(), token.clone());
            tokio::spawn(async move {
                token.cancelled().await;
                stop.cancel();
            });
        }
        let resync = {
            let me = self.clone();
            let token = token.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(me.resync) => {}
                        _ = token.cancelled() => return,
                    }
                    for rq in me.quotas.state() {
                        me.queue.add(key_of(&rq.metadata));
                    }
                }
            })
        };
        let me = self.clone();
        run_workers(
            "resourcequota",
            self.queue.clone(),
            workers,
            token,
            move |key| me.clone().sync(key),
        )
        .await;
        let _ = resync.await;
    }

    /// Watches the deletes of `plural` in `group` (once), as upstream's quota monitor does,
    /// so that what they free is given back without waiting for the resync.
    fn monitor(self: &Arc<Self>, plural: &str, group: &str) {
        if !self
            .monitored
            .lock()
            .insert((group.to_string(), plural.to_string()))
        {
            return;
        }
        let Some((ar, caps)) = self
            .resources
            .preferred
            .iter()
            .find(|(ar, _)| ar.plural == plural && ar.group == group)
        else {
            return;
        };
        if caps.scope != Scope::Namespaced {
            return;
        }
        let api: Api<PartialObjectMeta<DynamicObject>> = Api::all_with(self.client.clone(), ar);
        let me = self.clone();
        tokio::spawn(async move {
            use futures::StreamExt;
            use kube::runtime::WatchStreamExt;
            use kube::runtime::watcher::{self, Event};
            let stream = watcher::watcher(api, watcher::Config::default()).default_backoff();
            futures::pin_mut!(stream);
            loop {
                let ev = tokio::select! {
                    ev = stream.next() => match ev {
                        Some(ev) => ev,
                        None => return,
                    },
                    _ = me.stop.cancelled() => return,
                };
                if let Ok(Event::Delete(obj)) = ev {
                    requeue_namespace(&me.quotas, &me.queue, obj.metadata.namespace.as_deref());
                }
            }
        });
    }

    async fn count(
        &self,
        ns: &str,
        plural: &str,
        group: &str,
    ) -> Result<Option<i128>, kube::Error> {
        let Some((ar, caps)) = self
            .resources
            .preferred
            .iter()
            .find(|(ar, _)| ar.plural == plural && ar.group == group)
        else {
            return Ok(None);
        };
        if caps.scope != Scope::Namespaced {
            return Ok(None);
        }
        let api: Api<PartialObjectMeta<DynamicObject>> =
            Api::namespaced_with(self.client.clone(), ns, ar);
        Ok(Some(
            api.list(&ListParams::default()).await?.items.len() as i128 * UNIT,
        ))
    }

    async fn sync(self: Arc<Self>, key: String) -> SyncResult {
        let (ns, name) = split_key(&key);
        let Some(rq) = self.quotas.get(&ObjectRef::new(name).within(ns)) else {
            return Ok(None);
        };
        let spec = rq.spec.clone().unwrap_or_default();
        let hard = spec.hard.clone().unwrap_or_default();
        let scoped = scope::is_scoped(&spec);
        // What the quota counts beyond pods and services is given back on delete.
        for k in hard.keys() {
            if usage::tracked_by_claims(k) {
                self.monitor("persistentvolumeclaims", "");
            } else if let Some(what) = k.strip_prefix("count/") {
                let (plural, group) = what.split_once('.').unwrap_or((what, ""));
                if !(group.is_empty() && matches!(plural, "pods" | "services")) {
                    self.monitor(plural, group);
                }
            } else if matches!(
                k.as_str(),
                "configmaps" | "secrets" | "replicationcontrollers" | "resourcequotas"
            ) {
                self.monitor(k, "");
            }
        }
        let now = k8s_openapi::jiff::Timestamp::now();
        let wants = |f: fn(&str) -> bool| hard.keys().any(|k| f(k));
        // What the objects of each kind in the namespace use, for the kinds the quota limits.
        let mut total = Usage::new();
        if wants(usage::tracked_by_pods) {
            for p in self.pods.get(ns) {
                if scope::applies(&spec, Some(&p)) {
                    total = usage::add(&total, &usage::pod_usage(&p, now));
                }
            }
        }
        if !scoped && wants(usage::tracked_by_services) {
            for s in self.services.state() {
                if s.namespace().as_deref() == Some(ns) {
                    total = usage::add(&total, &usage::service_usage(&s));
                }
            }
        }
        if !scoped && wants(usage::tracked_by_claims) {
            for c in Api::<PersistentVolumeClaim>::namespaced(self.client.clone(), ns)
                .list(&ListParams::default())
                .await?
                .items
            {
                total = usage::add(&total, &usage::claim_usage(&c));
            }
        }
        let mut used: BTreeMap<String, Quantity> = BTreeMap::new();
        for (resource, limit) in &hard {
            let value = if usage::tracked_by_pods(resource)
                || (!scoped
                    && (usage::tracked_by_services(resource) || usage::tracked_by_claims(resource)))
            {
                Some(total.get(resource).copied().unwrap_or(0))
            } else if scoped {
                None
            } else if let Some(what) = resource.strip_prefix("count/") {
                let (plural, group) = what.split_once('.').unwrap_or((what, ""));
                self.count(ns, plural, group).await?
            } else if matches!(
                resource.as_str(),
                "configmaps" | "secrets" | "replicationcontrollers" | "resourcequotas"
            ) {
                self.count(ns, resource, "").await?
            } else {
                None
            };
            if let Some(v) = value {
                used.insert(
                    resource.clone(),
                    Quantity(quantity::format(v, quantity::is_binary(&limit.0))),
                );
            }
        }
        let status = ResourceQuotaStatus {
            hard: (!hard.is_empty()).then_some(hard),
            used: (!used.is_empty()).then_some(used),
        };
        if rq.status.as_ref() == Some(&status) {
            return Ok(None);
        }
        let mut updated = (*rq).clone();
        updated.status = Some(status);
        replace_status(&self.client, &updated).await.map(|_| None)
    }
}
