//! The resource quota controller, as upstream's `pkg/controller/resourcequota`: keeps each
//! ResourceQuota's `status.hard` (a copy of `spec.hard`) and `status.used` — object counts
//! (`pods`, `services`, `services.nodeports`, `services.loadbalancers`, `configmaps`,
//! `secrets`, `persistentvolumeclaims`, `replicationcontrollers`, `resourcequotas`,
//! `count/<resource>[.<group>]`) and compute totals of the namespace's non-terminal pods
//! (`requests.cpu`/`cpu`, `requests.memory`/`memory`, `limits.cpu`, `limits.memory`,
//! `requests.ephemeral-storage`, `limits.ephemeral-storage`) and of PVCs (`requests.storage`).
//! Recomputed when a quota or a pod in its namespace changes, and every
//! `--resource-quota-sync-period`. Enforcement is the apiserver's admission (security issue).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, Pod, ResourceQuota, ResourceQuotaStatus, Service,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use keelson_client::informer::Index;
use keelson_client::queue::WorkQueue;
use kube::api::{Api, DynamicObject, ListParams};
use kube::core::PartialObjectMeta;
use kube::discovery::Scope;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};
use tokio_util::sync::CancellationToken;

use crate::Informers;
use crate::discovery::Resources;
use crate::util::{SyncResult, key_of, pod_terminal, replace_status, run_workers, split_key};

/// A quantity as an exact number of thousandths (milli-units).
fn parse_milli(q: &str) -> Option<i128> {
    let q = q.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == '+'))
        .unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    let neg = int.starts_with('-');
    let int: i128 = int.trim_start_matches(['-', '+']).parse().unwrap_or(0);
    let mut frac_milli: i128 = 0;
    let mut scale = 100;
    for c in frac.chars().take(3) {
        frac_milli += i128::from(c.to_digit(10)?) * scale;
        scale /= 10;
    }
    let base = int * 1000 + frac_milli;
    let mul: i128 = match suffix {
        "" => 1,
        "m" => return Some(if neg { -base / 1000 } else { base / 1000 }),
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "P" => 1_000_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "Pi" => 1 << 50,
        s if s.starts_with(['e', 'E']) => 10i128.checked_pow(s[1..].parse().ok()?)?,
        _ => return None,
    };
    let v = base.checked_mul(mul)?;
    Some(if neg { -v } else { v })
}

/// Milli-units back to a quantity: whole numbers plainly (binary suffixes for byte-like
/// resources when exact), otherwise in `m`.
fn format_milli(v: i128, bytes: bool) -> String {
    if v % 1000 != 0 {
        return format!("{v}m");
    }
    let n = v / 1000;
    if bytes && n != 0 {
        for (suffix, size) in [
            ("Ti", 1i128 << 40),
            ("Gi", 1 << 30),
            ("Mi", 1 << 20),
            ("Ki", 1 << 10),
        ] {
            if n % size == 0 {
                return format!("{}{suffix}", n / size);
            }
        }
    }
    n.to_string()
}

/// Sum of one resource over a pod's containers, as upstream: the larger of the app containers'
/// sum and the largest init container.
fn pod_amount(pod: &Pod, kind: &str, resource: &str) -> i128 {
    let Some(spec) = pod.spec.as_ref() else {
        return 0;
    };
    let get = |r: &Option<k8s_openapi::api::core::v1::ResourceRequirements>| -> i128 {
        let r = r.as_ref();
        let map = if kind == "requests" {
            // Requests default to limits when only limits are set.
            r.and_then(|r| {
                r.requests
                    .as_ref()
                    .and_then(|m| m.get(resource))
                    .or_else(|| r.limits.as_ref().and_then(|m| m.get(resource)))
            })
        } else {
            r.and_then(|r| r.limits.as_ref().and_then(|m| m.get(resource)))
        };
        map.and_then(|q| parse_milli(&q.0)).unwrap_or(0)
    };
    let apps: i128 = spec.containers.iter().map(|c| get(&c.resources)).sum();
    let init = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| get(&c.resources))
        .max()
        .unwrap_or(0);
    apps.max(init)
}

/// The resource quota controller.
pub struct ResourceQuotaController {
    client: Client,
    resources: Arc<Resources>,
    quotas: Store<ResourceQuota>,
    pods: Index<Pod>,
    queue: WorkQueue<String>,
    resync: Duration,
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
        {
            let q = queue.clone();
            informers
                .resourcequotas()
                .on_change(move |c| q.add(key_of(&c.object().metadata)));
        }
        {
            let q = queue.clone();
            let quotas = quotas.clone();
            informers.pods().on_change(move |c| {
                let ns = c.object().namespace();
                for rq in quotas.state() {
                    if rq.namespace() == ns {
                        q.add(key_of(&rq.metadata));
                    }
                }
            });
        }
        Arc::new(Self {
            client: informers.client(),
            resources,
            quotas,
            pods,
            queue,
            resync,
        })
    }

    /// Runs `workers` sync workers (and the periodic resync) until `token` is cancelled.
    pub async fn run(self: Arc<Self>, workers: usize, token: CancellationToken) {
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
            api.list(&ListParams::default()).await?.items.len() as i128 * 1000,
        ))
    }

    async fn sync(self: Arc<Self>, key: String) -> SyncResult {
        let (ns, name) = split_key(&key);
        let Some(rq) = self.quotas.get(&ObjectRef::new(name).within(ns)) else {
            return Ok(None);
        };
        let hard = rq
            .spec
            .as_ref()
            .and_then(|s| s.hard.clone())
            .unwrap_or_default();
        let pods: Vec<Arc<Pod>> = self
            .pods
            .get(ns)
            .into_iter()
            .filter(|p| !pod_terminal(p))
            .collect();
        let mut used: BTreeMap<String, Quantity> = BTreeMap::new();
        let mut services: Option<Vec<Service>> = None;
        let mut pvcs: Option<Vec<PersistentVolumeClaim>> = None;
        for resource in hard.keys() {
            let (value, bytes): (Option<i128>, bool) = match resource.as_str() {
                "pods" | "count/pods" => (Some(pods.len() as i128 * 1000), false),
                "cpu" | "requests.cpu" => (
                    Some(pods.iter().map(|p| pod_amount(p, "requests", "cpu")).sum()),
                    false,
                ),
                "memory" | "requests.memory" => (
                    Some(
                        pods.iter()
                            .map(|p| pod_amount(p, "requests", "memory"))
                            .sum(),
                    ),
                    true,
                ),
                "limits.cpu" => (
                    Some(pods.iter().map(|p| pod_amount(p, "limits", "cpu")).sum()),
                    false,
                ),
                "limits.memory" => (
                    Some(pods.iter().map(|p| pod_amount(p, "limits", "memory")).sum()),
                    true,
                ),
                "ephemeral-storage" | "requests.ephemeral-storage" => (
                    Some(
                        pods.iter()
                            .map(|p| pod_amount(p, "requests", "ephemeral-storage"))
                            .sum(),
                    ),
                    true,
                ),
                "limits.ephemeral-storage" => (
                    Some(
                        pods.iter()
                            .map(|p| pod_amount(p, "limits", "ephemeral-storage"))
                            .sum(),
                    ),
                    true,
                ),
                "services" | "services.nodeports" | "services.loadbalancers" => {
                    if services.is_none() {
                        services = Some(
                            Api::<Service>::namespaced(self.client.clone(), ns)
                                .list(&ListParams::default())
                                .await?
                                .items,
                        );
                    }
                    let svcs = services.as_deref().unwrap_or_default();
                    let n = match resource.as_str() {
                        "services" => svcs.len(),
                        "services.nodeports" => svcs
                            .iter()
                            .filter(|s| {
                                matches!(
                                    s.spec.as_ref().and_then(|s| s.type_.as_deref()),
                                    Some("NodePort" | "LoadBalancer")
                                )
                            })
                            .map(|s| {
                                s.spec
                                    .as_ref()
                                    .and_then(|s| s.ports.as_ref())
                                    .map_or(0, |p| p.len())
                            })
                            .sum(),
                        _ => svcs
                            .iter()
                            .filter(|s| {
                                s.spec.as_ref().and_then(|s| s.type_.as_deref())
                                    == Some("LoadBalancer")
                            })
                            .count(),
                    };
                    (Some(n as i128 * 1000), false)
                }
                "persistentvolumeclaims" | "requests.storage" => {
                    if pvcs.is_none() {
                        pvcs = Some(
                            Api::<PersistentVolumeClaim>::namespaced(self.client.clone(), ns)
                                .list(&ListParams::default())
                                .await?
                                .items,
                        );
                    }
                    let list = pvcs.as_deref().unwrap_or_default();
                    if resource == "persistentvolumeclaims" {
                        (Some(list.len() as i128 * 1000), false)
                    } else {
                        let total = list
                            .iter()
                            .filter_map(|p| {
                                p.spec
                                    .as_ref()?
                                    .resources
                                    .as_ref()?
                                    .requests
                                    .as_ref()?
                                    .get("storage")
                            })
                            .filter_map(|q| parse_milli(&q.0))
                            .sum();
                        (Some(total), true)
                    }
                }
                "configmaps" => (self.count(ns, "configmaps", "").await?, false),
                "secrets" => (self.count(ns, "secrets", "").await?, false),
                "replicationcontrollers" => {
                    (self.count(ns, "replicationcontrollers", "").await?, false)
                }
                "resourcequotas" => (self.count(ns, "resourcequotas", "").await?, false),
                r if r.starts_with("count/") => {
                    let what = &r["count/".len()..];
                    let (plural, group) = what.split_once('.').unwrap_or((what, ""));
                    (self.count(ns, plural, group).await?, false)
                }
                _ => (None, false),
            };
            if let Some(v) = value {
                used.insert(resource.clone(), Quantity(format_milli(v, bytes)));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_sum_exactly() {
        assert_eq!(parse_milli("100m"), Some(100));
        assert_eq!(parse_milli("1.5"), Some(1500));
        assert_eq!(parse_milli("2"), Some(2000));
        assert_eq!(parse_milli("1Ki"), Some(1024 * 1000));
        assert_eq!(parse_milli("1e3"), Some(1_000_000));
        assert_eq!(parse_milli("bogus"), None);
        assert_eq!(format_milli(1500, false), "1500m");
        assert_eq!(format_milli(2000, false), "2");
        assert_eq!(format_milli((256 << 20) * 1000, true), "256Mi");
        assert_eq!(format_milli(0, true), "0");
    }
}
