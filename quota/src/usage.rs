//! What an object uses in quota terms, as upstream's evaluators charge it: pods (object count,
//! compute requests and limits), services (count, node ports, load balancers), persistent
//! volume claims (count and storage, also per storage class) and the object count of any
//! other namespaced resource.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, PersistentVolumeClaim, Pod, PodSpec, Service};
use k8s_openapi::jiff::Timestamp;
use serde_json::Value;

use crate::quantity::{self, UNIT};

/// Quota resource name → amount in nano-units (see [`quantity`]).
pub type Usage = BTreeMap<String, i128>;

/// Compute resources tracked by their own name (the request) and with `requests.`/`limits.`.
const STANDARD: [&str; 3] = ["cpu", "memory", "ephemeral-storage"];

/// The quota names that charge for storage of claims in class `class`.
pub fn storage_class_names(class: &str) -> [String; 2] {
    [
        format!("{class}.storageclass.storage.k8s.io/requests.storage"),
        format!("{class}.storageclass.storage.k8s.io/persistentvolumeclaims"),
    ]
}

/// The object-count quota name of a resource: `count/<resource>` for the core group,
/// `count/<resource>.<group>` otherwise.
pub fn count_name(group: &str, resource: &str) -> String {
    if group.is_empty() {
        format!("count/{resource}")
    } else {
        format!("count/{resource}.{group}")
    }
}

/// Core resources whose object count quota also tracks under their plain name.
const LEGACY_COUNTS: [&str; 6] = [
    "pods",
    "services",
    "replicationcontrollers",
    "resourcequotas",
    "secrets",
    "configmaps",
];

/// Whether a pod is still charged for its compute resources: not once it has reached a terminal
/// phase, nor once its deletion is overdue (a pod stuck terminating on a lost node must not keep
/// its namespace from scaling up replacements).
pub fn pod_charged(pod: &Pod, now: Timestamp) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if matches!(phase, Some("Succeeded" | "Failed")) {
        return false;
    }
    match (
        &pod.metadata.deletion_timestamp,
        pod.metadata.deletion_grace_period_seconds,
    ) {
        (Some(at), Some(grace)) => {
            let due = at.0.as_second().saturating_add(grace);
            now.as_second() <= due
        }
        _ => true,
    }
}

/// A container's requests (requests default to limits, as the API defaults them) or limits.
fn container_amounts(c: &Container, limits: bool) -> BTreeMap<&str, i128> {
    let Some(r) = c.resources.as_ref() else {
        return BTreeMap::new();
    };
    let mut out = BTreeMap::new();
    let lim = r.limits.as_ref();
    if limits {
        for (k, v) in lim.into_iter().flatten() {
            out.insert(k.as_str(), quantity::parse(&v.0).unwrap_or(0));
        }
    } else {
        for (k, v) in lim.into_iter().flatten() {
            out.insert(k.as_str(), quantity::parse(&v.0).unwrap_or(0));
        }
        for (k, v) in r.requests.iter().flatten() {
            out.insert(k.as_str(), quantity::parse(&v.0).unwrap_or(0));
        }
    }
    out
}

fn add_into<'a>(to: &mut BTreeMap<&'a str, i128>, from: &BTreeMap<&'a str, i128>) {
    for (k, v) in from {
        *to.entry(k).or_default() += v;
    }
}

fn max_into<'a>(to: &mut BTreeMap<&'a str, i128>, from: &BTreeMap<&'a str, i128>) {
    for (k, v) in from {
        let e = to.entry(k).or_default();
        *e = (*e).max(*v);
    }
}

/// A pod's effective requests (or limits), as upstream computes them: the app containers
/// summed, plus restartable init containers (sidecars), which run alongside; at least what the
/// largest regular init container needs together with the sidecars started before it; plus the
/// pod overhead (for limits, only on resources that have a limit).
pub fn pod_amounts(spec: &PodSpec, limits: bool) -> BTreeMap<&str, i128> {
    let mut total = BTreeMap::new();
    for c in &spec.containers {
        add_into(&mut total, &container_amounts(c, limits));
    }
    let mut sidecars = BTreeMap::new();
    let mut init_peak = BTreeMap::new();
    for c in spec.init_containers.iter().flatten() {
        let own = container_amounts(c, limits);
        if c.restart_policy.as_deref() == Some("Always") {
            add_into(&mut total, &own);
            add_into(&mut sidecars, &own);
            // A sidecar starting also needs what the sidecars before it hold.
            max_into(&mut init_peak, &sidecars);
        } else {
            let mut with = sidecars.clone();
            add_into(&mut with, &own);
            max_into(&mut init_peak, &with);
        }
    }
    max_into(&mut total, &init_peak);
    for (k, v) in spec.overhead.iter().flatten() {
        if limits && !total.contains_key(k.as_str()) {
            continue;
        }
        *total.entry(k.as_str()).or_default() += quantity::parse(&v.0).unwrap_or(0);
    }
    total
}

/// Whether a resource name is a hugepages resource (`hugepages-2Mi`).
fn is_hugepages(name: &str) -> bool {
    name.starts_with("hugepages-")
}

/// Whether a resource name is an extended resource (`example.com/gpu`): qualified by a domain
/// outside `kubernetes.io`, and not itself a quota name.
pub fn is_extended(name: &str) -> bool {
    match name.split_once('/') {
        Some((domain, _)) => {
            !(domain == "kubernetes.io"
                || domain.ends_with(".kubernetes.io")
                || name.starts_with("requests."))
        }
        None => false,
    }
}

/// What a pod uses: `count/pods` always (object counts track every stored pod), and while the
/// pod is [charged](pod_charged) also `pods`, the standard compute resources by name, with
/// `requests.` and with `limits.`, hugepages and extended resources with `requests.`.
pub fn pod_usage(pod: &Pod, now: Timestamp) -> Usage {
    let mut u = Usage::new();
    u.insert("count/pods".into(), UNIT);
    if !pod_charged(pod, now) {
        return u;
    }
    u.insert("pods".into(), UNIT);
    let Some(spec) = pod.spec.as_ref() else {
        return u;
    };
    for (k, v) in pod_amounts(spec, false) {
        // Standard resources and hugepages by name and as requests, extended ones as requests.
        if STANDARD.contains(&k) || is_hugepages(k) {
            u.insert(k.to_string(), v);
            u.insert(format!("requests.{k}"), v);
        } else if is_extended(k) {
            u.insert(format!("requests.{k}"), v);
        }
    }
    for (k, v) in pod_amounts(spec, true) {
        if STANDARD.contains(&k) {
            u.insert(format!("limits.{k}"), v);
        }
    }
    u
}

/// What a service uses: its count, load balancers, and node ports (every port of a NodePort or
/// LoadBalancer service, except a load balancer that allocates none).
pub fn service_usage(svc: &Service) -> Usage {
    let mut u = Usage::new();
    u.insert("services".into(), UNIT);
    u.insert("count/services".into(), UNIT);
    let spec = svc.spec.as_ref();
    let ports = spec.and_then(|s| s.ports.as_ref());
    let n_ports = ports.map_or(0, Vec::len) as i128;
    match spec.and_then(|s| s.type_.as_deref()) {
        Some("NodePort") => {
            u.insert("services.nodeports".into(), n_ports * UNIT);
        }
        Some("LoadBalancer") => {
            u.insert("services.loadbalancers".into(), UNIT);
            let allocates = spec
                .and_then(|s| s.allocate_load_balancer_node_ports)
                .unwrap_or(true);
            let n = if allocates {
                n_ports
            } else {
                ports
                    .into_iter()
                    .flatten()
                    .filter(|p| p.node_port.is_some_and(|n| n != 0))
                    .count() as i128
            };
            u.insert("services.nodeports".into(), n * UNIT);
        }
        _ => {}
    }
    u
}

/// The storage class a claim asks for: the beta annotation, else the field (upstream's
/// precedence).
pub fn claim_class(pvc: &PersistentVolumeClaim) -> Option<&str> {
    pvc.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get("volume.beta.kubernetes.io/storage-class"))
        .map(String::as_str)
        .or_else(|| {
            pvc.spec
                .as_ref()
                .and_then(|s| s.storage_class_name.as_deref())
        })
        .filter(|c| !c.is_empty())
}

/// What a claim uses: its count and its storage (the larger of the request and what a resize
/// has already allocated), also under its storage class.
pub fn claim_usage(pvc: &PersistentVolumeClaim) -> Usage {
    let mut u = Usage::new();
    u.insert("persistentvolumeclaims".into(), UNIT);
    u.insert("count/persistentvolumeclaims".into(), UNIT);
    let request = pvc
        .spec
        .as_ref()
        .and_then(|s| s.resources.as_ref())
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
        .and_then(|q| quantity::parse(&q.0));
    let allocated = pvc
        .status
        .as_ref()
        .and_then(|s| s.allocated_resources.as_ref())
        .and_then(|r| r.get("storage"))
        .and_then(|q| quantity::parse(&q.0));
    let storage = match (request, allocated) {
        (Some(r), Some(a)) => Some(r.max(a)),
        (r, a) => r.or(a),
    };
    let class = claim_class(pvc).map(storage_class_names);
    if let Some([_, count]) = &class {
        u.insert(count.clone(), UNIT);
    }
    if let Some(s) = storage {
        u.insert("requests.storage".into(), s);
        if let Some([storage_name, _]) = &class {
            u.insert(storage_name.clone(), s);
        }
    }
    u
}

/// The usage of any other namespaced object: one of its kind.
pub fn object_usage(group: &str, resource: &str) -> Usage {
    let mut u = Usage::new();
    u.insert(count_name(group, resource), UNIT);
    if group.is_empty() && LEGACY_COUNTS.contains(&resource) {
        u.insert(resource.to_string(), UNIT);
    }
    u
}

/// The usage of `obj`, an object of `resource` in `group` (JSON as stored). An object that does
/// not decode as its type is charged as an object count only.
pub fn usage_of(group: &str, resource: &str, obj: &Value, now: Timestamp) -> Usage {
    fn typed<T: serde::de::DeserializeOwned>(v: &Value) -> Option<T> {
        T::deserialize(v).ok()
    }
    match (group, resource) {
        ("", "pods") => typed::<Pod>(obj).map(|p| pod_usage(&p, now)),
        ("", "services") => typed::<Service>(obj).map(|s| service_usage(&s)),
        ("", "persistentvolumeclaims") => {
            typed::<PersistentVolumeClaim>(obj).map(|c| claim_usage(&c))
        }
        _ => None,
    }
    .unwrap_or_else(|| object_usage(group, resource))
}

/// Whether quota resource `name` is charged by pods.
pub fn tracked_by_pods(name: &str) -> bool {
    matches!(name, "pods" | "count/pods")
        || STANDARD.contains(&name)
        || is_hugepages(name)
        || name
            .strip_prefix("limits.")
            .is_some_and(|r| STANDARD.contains(&r))
        || name
            .strip_prefix("requests.")
            .is_some_and(|r| STANDARD.contains(&r) || is_hugepages(r) || is_extended(r))
}

/// Whether quota resource `name` is charged by services.
pub fn tracked_by_services(name: &str) -> bool {
    matches!(
        name,
        "services" | "count/services" | "services.nodeports" | "services.loadbalancers"
    )
}

/// Whether quota resource `name` is charged by persistent volume claims.
pub fn tracked_by_claims(name: &str) -> bool {
    matches!(
        name,
        "persistentvolumeclaims" | "count/persistentvolumeclaims" | "requests.storage"
    ) || name.ends_with(".storageclass.storage.k8s.io/requests.storage")
        || name.ends_with(".storageclass.storage.k8s.io/persistentvolumeclaims")
}

/// The quota names of cpu and memory, by request and by limit: what pods must state where a
/// quota limits them, and what scoped quotas may limit besides `pods`.
pub const CPU_MEMORY: [&str; 6] = [
    "cpu",
    "memory",
    "requests.cpu",
    "requests.memory",
    "limits.cpu",
    "limits.memory",
];

/// Whether quota resource `name` is charged by objects of `resource` in `group`.
pub fn tracked_by(group: &str, resource: &str, name: &str) -> bool {
    match (group, resource) {
        ("", "pods") => tracked_by_pods(name),
        ("", "services") => tracked_by_services(name),
        ("", "persistentvolumeclaims") => tracked_by_claims(name),
        _ => {
            name == count_name(group, resource)
                || (group.is_empty() && LEGACY_COUNTS.contains(&resource) && name == resource)
        }
    }
}

/// The requirement quota puts on pods: where a quota limits cpu or memory (by request or by
/// limit), every container and init container must state that request or limit. The error
/// lists what is missing, per resource, with the containers that miss it
/// (`must specify limits.cpu for: app,init; requests.memory for: app`).
pub fn pod_constraints<'a>(
    restricted: impl IntoIterator<Item = &'a str>,
    pod: &Pod,
) -> Result<(), String> {
    let required: Vec<&str> = restricted
        .into_iter()
        .filter(|r| CPU_MEMORY.contains(r))
        .collect();
    let Some(spec) = pod.spec.as_ref().filter(|_| !required.is_empty()) else {
        return Ok(());
    };
    let mut missing: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for c in spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
    {
        let r = c.resources.as_ref();
        let has = |kind: &str, res: &str| {
            let m = if kind == "limits" {
                r.and_then(|r| r.limits.as_ref())
            } else {
                r.and_then(|r| r.requests.as_ref())
            };
            m.is_some_and(|m| m.contains_key(res))
        };
        for req in &required {
            let ok = match req.split_once('.') {
                Some((kind, res)) => has(kind, res),
                None => has("requests", req),
            };
            if !ok {
                missing.entry(req).or_default().push(c.name.as_str());
            }
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    let parts: Vec<String> = missing
        .into_iter()
        .map(|(res, mut names)| {
            names.sort_unstable();
            format!("{res} for: {}", names.join(","))
        })
        .collect();
    Err(format!("must specify {}", parts.join("; ")))
}

/// `a + b` per resource.
pub fn add(a: &Usage, b: &Usage) -> Usage {
    let mut out = a.clone();
    for (k, v) in b {
        *out.entry(k.clone()).or_default() += v;
    }
    out
}

/// `a − b` per resource, never below zero.
pub fn subtract_non_negative(a: &Usage, b: &Usage) -> Usage {
    a.iter()
        .map(|(k, v)| (k.clone(), (v - b.get(k).copied().unwrap_or(0)).max(0)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(v: Value) -> Pod {
        serde_json::from_value(v).unwrap()
    }

    fn q(s: &str) -> i128 {
        quantity::parse(s).unwrap()
    }

    #[test]
    fn pods_charge_requests_limits_and_counts() {
        let p = pod(json!({
            "metadata": {"name": "p"},
            "spec": {
                "containers": [
                    {"name": "a", "resources": {"requests": {"cpu": "100m", "memory": "64Mi"},
                                                "limits": {"cpu": "200m", "example.com/gpu": "1"}}},
                    {"name": "b", "resources": {"limits": {"cpu": "1", "memory": "1Gi", "example.com/gpu": "2"}}}
                ],
                "initContainers": [
                    {"name": "big-init", "resources": {"requests": {"cpu": "3"}}}
                ],
                "overhead": {"cpu": "10m"}
            }
        }));
        let u = pod_usage(&p, Timestamp::now());
        assert_eq!(u["pods"], UNIT);
        assert_eq!(u["count/pods"], UNIT);
        // The init container's 3 CPUs exceed the app containers' 1.1; plus overhead.
        assert_eq!(u["requests.cpu"], q("3010m"));
        assert_eq!(u["cpu"], q("3010m"));
        // Requests default to limits: b asks for 1Gi.
        assert_eq!(u["requests.memory"], q("64Mi") + q("1Gi"));
        assert_eq!(u["limits.cpu"], q("1210m"));
        // a has no memory limit: the limit sum counts only b.
        assert_eq!(u["limits.memory"], q("1Gi"));
        assert_eq!(u["requests.example.com/gpu"], q("3"));
        assert!(!u.contains_key("limits.example.com/gpu"));
    }

    #[test]
    fn sidecars_add_to_the_pod_and_to_later_init_containers() {
        let p = pod(json!({
            "metadata": {"name": "p"},
            "spec": {
                "containers": [{"name": "app", "resources": {"requests": {"cpu": "1"}}}],
                "initContainers": [
                    {"name": "side", "restartPolicy": "Always", "resources": {"requests": {"cpu": "500m"}}},
                    {"name": "init", "resources": {"requests": {"cpu": "2"}}}
                ]
            }
        }));
        // max(app 1 + sidecar 0.5, init 2 + sidecar 0.5)
        assert_eq!(pod_usage(&p, Timestamp::now())["requests.cpu"], q("2500m"));
    }

    #[test]
    fn finished_and_overdue_pods_count_as_objects_only() {
        let done = pod(
            json!({"metadata": {"name": "p"}, "spec": {"containers": []},
                              "status": {"phase": "Succeeded"}}),
        );
        let u = pod_usage(&done, Timestamp::now());
        assert_eq!(u.keys().collect::<Vec<_>>(), vec!["count/pods"]);
        let overdue = pod(
            json!({"metadata": {"name": "p", "deletionTimestamp": "2020-01-01T00:00:00Z",
                                              "deletionGracePeriodSeconds": 30},
                                 "spec": {"containers": []}}),
        );
        assert!(!pod_charged(&overdue, Timestamp::now()));
        let leaving = pod(
            json!({"metadata": {"name": "p", "deletionTimestamp": "2020-01-01T00:00:00Z",
                                              "deletionGracePeriodSeconds": 30},
                                 "spec": {"containers": []}}),
        );
        let at: Timestamp = "2020-01-01T00:00:10Z".parse().unwrap();
        assert!(pod_charged(&leaving, at));
    }

    #[test]
    fn quota_on_cpu_or_memory_needs_every_container_to_state_it() {
        let p = pod(json!({"metadata": {"name": "p"}, "spec": {
            "containers": [
                {"name": "app", "resources": {"requests": {"cpu": "1"}}},
                {"name": "b", "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}
            ],
            "initContainers": [{"name": "init"}]
        }}));
        assert_eq!(
            pod_constraints(["requests.cpu", "limits.cpu", "requests.memory", "pods"], &p),
            Err("must specify limits.cpu for: app,init; requests.cpu for: b,init; requests.memory for: app,b,init".into())
        );
        assert_eq!(pod_constraints(["pods", "requests.storage"], &p), Ok(()));
        assert!(tracked_by("", "pods", "requests.example.com/gpu"));
        assert!(
            tracked_by("", "configmaps", "configmaps")
                && tracked_by("", "configmaps", "count/configmaps")
        );
        assert!(!tracked_by("apps", "deployments", "pods"));
        assert!(tracked_by("apps", "deployments", "count/deployments.apps"));
    }

    #[test]
    fn services_claims_and_other_objects() {
        let svc: Service = serde_json::from_value(json!({"metadata": {"name": "s"},
            "spec": {"type": "LoadBalancer", "ports": [{"port": 80}, {"port": 443}]}}))
        .unwrap();
        let u = service_usage(&svc);
        assert_eq!(
            (
                u["services"],
                u["services.loadbalancers"],
                u["services.nodeports"]
            ),
            (UNIT, UNIT, 2 * UNIT)
        );
        let svc: Service = serde_json::from_value(json!({"metadata": {"name": "s"},
            "spec": {"type": "LoadBalancer", "allocateLoadBalancerNodePorts": false,
                     "ports": [{"port": 80}, {"port": 443, "nodePort": 30001}]}}))
        .unwrap();
        assert_eq!(service_usage(&svc)["services.nodeports"], UNIT);
        let pvc = json!({"metadata": {"name": "c"}, "spec": {"storageClassName": "fast",
            "resources": {"requests": {"storage": "1Gi"}}},
            "status": {"allocatedResources": {"storage": "2Gi"}}});
        let u = usage_of("", "persistentvolumeclaims", &pvc, Timestamp::now());
        assert_eq!(u["requests.storage"], q("2Gi"));
        assert_eq!(
            u["fast.storageclass.storage.k8s.io/requests.storage"],
            q("2Gi")
        );
        assert_eq!(
            u["fast.storageclass.storage.k8s.io/persistentvolumeclaims"],
            UNIT
        );
        let u = usage_of("apps", "deployments", &json!({}), Timestamp::now());
        assert_eq!(u.keys().collect::<Vec<_>>(), vec!["count/deployments.apps"]);
        let u = usage_of("", "configmaps", &json!({}), Timestamp::now());
        assert_eq!(
            u.keys().collect::<Vec<_>>(),
            vec!["configmaps", "count/configmaps"]
        );
    }
}
