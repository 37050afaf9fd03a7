//! Server-side printing: `meta.k8s.io/v1` Table responses with upstream's columns per resource,
//! so `kubectl get` shows the same columns it shows against kube-apiserver.

use serde_json::{Value, json};

use crate::object::{human_age, meta, meta_str};
use crate::resources::Resource;

/// A column definition: name, type, format, priority (0 = default, 1 = `-o wide`).
type Col = (&'static str, &'static str, &'static str, u8);

const NAME: Col = ("Name", "string", "name", 0);
const AGE: Col = ("Age", "string", "", 0);

/// The columns of `res`.
pub fn columns(res: &Resource) -> Vec<Col> {
    match res.kind {
        "Pod" => vec![
            NAME,
            ("Ready", "string", "", 0),
            ("Status", "string", "", 0),
            ("Restarts", "string", "", 0),
            AGE,
            ("IP", "string", "", 1),
            ("Node", "string", "", 1),
            ("Nominated Node", "string", "", 1),
            ("Readiness Gates", "string", "", 1),
        ],
        "Namespace" => vec![NAME, ("Status", "string", "", 0), AGE],
        "Node" => vec![
            NAME,
            ("Status", "string", "", 0),
            ("Roles", "string", "", 0),
            AGE,
            ("Version", "string", "", 0),
            ("Internal-IP", "string", "", 1),
            ("External-IP", "string", "", 1),
            ("OS-Image", "string", "", 1),
            ("Kernel-Version", "string", "", 1),
            ("Container-Runtime", "string", "", 1),
        ],
        "Service" => vec![
            NAME,
            ("Type", "string", "", 0),
            ("Cluster-IP", "string", "", 0),
            ("External-IP", "string", "", 0),
            ("Port(s)", "string", "", 0),
            AGE,
            ("Selector", "string", "", 1),
        ],
        "Deployment" => vec![
            NAME,
            ("Ready", "string", "", 0),
            ("Up-to-date", "string", "", 0),
            ("Available", "string", "", 0),
            AGE,
            ("Containers", "string", "", 1),
            ("Images", "string", "", 1),
            ("Selector", "string", "", 1),
        ],
        "ReplicaSet" | "ReplicationController" => vec![
            NAME,
            ("Desired", "integer", "", 0),
            ("Current", "integer", "", 0),
            ("Ready", "integer", "", 0),
            AGE,
            ("Containers", "string", "", 1),
            ("Images", "string", "", 1),
            ("Selector", "string", "", 1),
        ],
        "StatefulSet" => vec![
            NAME,
            ("Ready", "string", "", 0),
            AGE,
            ("Containers", "string", "", 1),
            ("Images", "string", "", 1),
        ],
        "DaemonSet" => vec![
            NAME,
            ("Desired", "integer", "", 0),
            ("Current", "integer", "", 0),
            ("Ready", "integer", "", 0),
            ("Up-to-date", "integer", "", 0),
            ("Available", "integer", "", 0),
            ("Node Selector", "string", "", 0),
            AGE,
            ("Containers", "string", "", 1),
            ("Images", "string", "", 1),
            ("Selector", "string", "", 1),
        ],
        "Job" => vec![
            NAME,
            ("Status", "string", "", 0),
            ("Completions", "string", "", 0),
            ("Duration", "string", "", 0),
            AGE,
            ("Containers", "string", "", 1),
            ("Images", "string", "", 1),
            ("Selector", "string", "", 1),
        ],
        "CronJob" => vec![
            NAME,
            ("Schedule", "string", "", 0),
            ("Timezone", "string", "", 0),
            ("Suspend", "boolean", "", 0),
            ("Active", "integer", "", 0),
            ("Last Schedule", "string", "", 0),
            AGE,
            ("Containers", "string", "", 1),
            ("Images", "string", "", 1),
            ("Selector", "string", "", 1),
        ],
        "ConfigMap" => vec![NAME, ("Data", "string", "", 0), AGE],
        "Secret" => vec![
            NAME,
            ("Type", "string", "", 0),
            ("Data", "string", "", 0),
            AGE,
        ],
        "ServiceAccount" => vec![NAME, ("Secrets", "string", "", 0), AGE],
        "Endpoints" => vec![NAME, ("Endpoints", "string", "", 0), AGE],
        "EndpointSlice" => vec![
            NAME,
            ("AddressType", "string", "", 0),
            ("Ports", "string", "", 0),
            ("Endpoints", "string", "", 0),
            AGE,
        ],
        "Lease" => vec![NAME, ("Holder", "string", "", 0), AGE],
        "RuntimeClass" => vec![NAME, ("Handler", "string", "", 0), AGE],
        "CertificateSigningRequest" => vec![
            NAME,
            AGE,
            ("SignerName", "string", "", 0),
            ("Requestor", "string", "", 0),
            ("RequestedDuration", "string", "", 0),
            ("Condition", "string", "", 0),
        ],
        // Both APIs' Events print alike, as upstream's (one registry serves both).
        "Event" => vec![
            ("Last Seen", "string", "", 0),
            ("Type", "string", "", 0),
            ("Reason", "string", "", 0),
            ("Object", "string", "", 0),
            ("Subobject", "string", "", 1),
            ("Source", "string", "", 1),
            ("Message", "string", "", 0),
            ("First Seen", "string", "", 1),
            ("Count", "string", "", 1),
            ("Name", "string", "", 1),
        ],
        "PersistentVolume" => vec![
            NAME,
            ("Capacity", "string", "", 0),
            ("Access Modes", "string", "", 0),
            ("Reclaim Policy", "string", "", 0),
            ("Status", "string", "", 0),
            ("Claim", "string", "", 0),
            ("StorageClass", "string", "", 0),
            ("VolumeAttributesClass", "string", "", 0),
            ("Reason", "string", "", 0),
            AGE,
            ("VolumeMode", "string", "", 1),
        ],
        "ResourceQuota" => vec![
            NAME,
            AGE,
            ("Request", "string", "", 0),
            ("Limit", "string", "", 0),
        ],
        "LimitRange" => vec![NAME, ("Created At", "string", "date", 0)],
        "ControllerRevision" => vec![
            NAME,
            ("Controller", "string", "", 0),
            ("Revision", "integer", "", 0),
            AGE,
        ],
        "NetworkPolicy" => vec![NAME, ("Pod-Selector", "string", "", 0), AGE],
        "Ingress" => vec![
            NAME,
            ("Class", "string", "", 0),
            ("Hosts", "string", "", 0),
            ("Address", "string", "", 0),
            ("Ports", "string", "", 0),
            AGE,
        ],
        "IngressClass" => vec![
            NAME,
            ("Controller", "string", "", 0),
            ("Parameters", "string", "", 0),
            AGE,
        ],
        "StorageClass" => vec![
            NAME,
            ("Provisioner", "string", "", 0),
            ("ReclaimPolicy", "string", "", 0),
            ("VolumeBindingMode", "string", "", 0),
            ("AllowVolumeExpansion", "string", "", 0),
            AGE,
        ],
        "PriorityClass" => vec![
            NAME,
            ("Value", "integer", "", 0),
            ("Global-Default", "boolean", "", 0),
            AGE,
            ("PreemptionPolicy", "string", "", 0),
        ],
        "Role" | "ClusterRole" => vec![NAME, ("Created At", "string", "date", 0)],
        "RoleBinding" | "ClusterRoleBinding" => vec![
            NAME,
            ("Role", "string", "", 0),
            AGE,
            ("Users", "string", "", 1),
            ("Groups", "string", "", 1),
            ("ServiceAccounts", "string", "", 1),
        ],
        "PersistentVolumeClaim" => vec![
            NAME,
            ("Status", "string", "", 0),
            ("Volume", "string", "", 0),
            ("Capacity", "string", "", 0),
            ("Access Modes", "string", "", 0),
            ("StorageClass", "string", "", 0),
            ("VolumeAttributesClass", "string", "", 0),
            AGE,
            ("VolumeMode", "string", "", 1),
        ],
        "PodDisruptionBudget" => vec![
            NAME,
            ("Min Available", "string", "", 0),
            ("Max Unavailable", "string", "", 0),
            ("Allowed Disruptions", "integer", "", 0),
            AGE,
        ],
        "MutatingWebhookConfiguration" | "ValidatingWebhookConfiguration" => {
            vec![NAME, ("Webhooks", "integer", "", 0), AGE]
        }
        "ValidatingAdmissionPolicy" => vec![
            NAME,
            ("Validations", "integer", "", 0),
            ("ParamKind", "string", "", 0),
            AGE,
        ],
        "ValidatingAdmissionPolicyBinding" => vec![
            NAME,
            ("PolicyName", "string", "", 0),
            ("ParamRef", "string", "", 0),
            AGE,
        ],
        _ => vec![NAME, AGE],
    }
}

fn s(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::Bool(b)) => b.to_string(),
        _ => String::new(),
    }
}

fn i(v: Option<&Value>) -> i64 {
    v.and_then(Value::as_i64).unwrap_or(0)
}

fn or_none(s: String) -> String {
    if s.is_empty() { "<none>".into() } else { s }
}

fn containers_and_images(obj: &Value, pointer: &str) -> (String, String) {
    let cs = obj
        .pointer(pointer)
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let names: Vec<String> = cs.iter().map(|c| s(c.get("name"))).collect();
    let images: Vec<String> = cs.iter().map(|c| s(c.get("image"))).collect();
    (names.join(","), images.join(","))
}

fn selector_string(sel: Option<&Value>) -> String {
    let Some(sel) = sel else {
        return "<none>".into();
    };
    let mut parts = Vec::new();
    if let Some(ml) = sel.get("matchLabels").and_then(Value::as_object) {
        for (k, v) in ml {
            parts.push(format!("{k}={}", s(Some(v))));
        }
    } else if let Some(m) = sel.as_object()
        && !m.contains_key("matchExpressions")
    {
        for (k, v) in m {
            parts.push(format!("{k}={}", s(Some(v))));
        }
    }
    if let Some(me) = sel.get("matchExpressions").and_then(Value::as_array) {
        for e in me {
            let vals: Vec<String> = e
                .get("values")
                .and_then(Value::as_array)
                .map(|a| a.iter().map(|v| s(Some(v))).collect())
                .unwrap_or_default();
            let op = s(e.get("operator"));
            let key = s(e.get("key"));
            parts.push(match op.as_str() {
                "In" => format!("{key} in ({})", vals.join(",")),
                "NotIn" => format!("{key} notin ({})", vals.join(",")),
                "Exists" => key,
                "DoesNotExist" => format!("!{key}"),
                _ => format!("{key} {op}"),
            });
        }
    }
    if parts.is_empty() {
        "<none>".into()
    } else {
        parts.join(",")
    }
}

fn unset(v: String) -> String {
    if v.is_empty() { "<unset>".into() } else { v }
}

/// Access modes as kubectl abbreviates them (`RWO,ROX`).
fn access_modes(modes: Option<&Value>) -> String {
    modes
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|m| match m.as_str().unwrap_or("") {
                    "ReadWriteOnce" => "RWO".to_string(),
                    "ReadOnlyMany" => "ROX".into(),
                    "ReadWriteMany" => "RWX".into(),
                    "ReadWriteOncePod" => "RWOP".into(),
                    x => x.into(),
                })
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

fn volume_mode(o: &Value) -> String {
    match s(o.pointer("/spec/volumeMode")) {
        m if m.is_empty() => "Filesystem".into(),
        m => m,
    }
}

/// A label selector as `metav1.FormatLabelSelector` writes it (`""` when it selects everything).
pub(crate) fn label_selector(sel: Option<&Value>) -> String {
    match selector_string(sel) {
        s if s == "<none>" => String::new(),
        s => s,
    }
}

/// A quota's `Request` and `Limit` cells: `name: used/hard` for each hard limit, by name.
fn quota_usage(o: &Value) -> (String, String) {
    let hard = o.pointer("/spec/hard").and_then(Value::as_object);
    let used = o.pointer("/status/used");
    let mut names: Vec<&String> = hard.map(|h| h.keys().collect()).unwrap_or_default();
    names.sort();
    let (mut requests, mut limits) = (Vec::new(), Vec::new());
    for n in names {
        let h = s(hard.and_then(|h| h.get(n)));
        let u = match used.and_then(|u| u.get(n)) {
            Some(v) => s(Some(v)),
            None => "0".into(),
        };
        let cell = format!("{n}: {u}/{h}");
        if n.starts_with("limits") {
            limits.push(cell);
        } else {
            requests.push(cell);
        }
    }
    (requests.join(", "), limits.join(", "))
}

/// An Event's row, from either API's form (events.k8s.io keeps the core fields under
/// `regarding`, `note` and `deprecated*` names).
fn event_cells(o: &Value) -> Vec<Value> {
    let get = |core: &str, new: &str| {
        let v = s(o.pointer(core));
        if v.is_empty() { s(o.pointer(new)) } else { v }
    };
    // An absent time reads "<unknown>" (human_age), as upstream's translateTimestampSince.
    let mut first = human_age(&get("/firstTimestamp", "/deprecatedFirstTimestamp"));
    if first == "<unknown>" {
        first = human_age(&s(o.get("eventTime")));
    }
    let last_ts = get("/lastTimestamp", "/deprecatedLastTimestamp");
    let mut last = if last_ts.is_empty() {
        first.clone()
    } else {
        human_age(&last_ts)
    };
    let mut count = o
        .get("count")
        .or_else(|| o.get("deprecatedCount"))
        .and_then(Value::as_i64)
        .unwrap_or(0);
    if let Some(series) = o.get("series").filter(|v| v.is_object()) {
        last = human_age(&s(series.get("lastObservedTime")));
        count = i(series.get("count"));
    } else if count == 0 {
        count = 1;
    }
    let kind = get("/involvedObject/kind", "/regarding/kind").to_lowercase();
    let target_name = get("/involvedObject/name", "/regarding/name");
    let target = if target_name.is_empty() {
        kind
    } else {
        format!("{kind}/{target_name}")
    };
    let component = match get("/source/component", "/deprecatedSource/component") {
        c if c.is_empty() => s(o.get("reportingController")),
        c => c,
    };
    let instance = match get("/source/host", "/deprecatedSource/host") {
        h if h.is_empty() => s(o.get("reportingInstance")),
        h => h,
    };
    let source = if instance.is_empty() {
        component
    } else {
        format!("{component}, {instance}")
    };
    vec![
        json!(last),
        json!(s(o.get("type"))),
        json!(s(o.get("reason"))),
        json!(target),
        json!(get("/involvedObject/fieldPath", "/regarding/fieldPath")),
        json!(source),
        json!(get("/message", "/note").trim()),
        json!(first),
        json!(count),
        json!(meta_str(o, "name")),
    ]
}

/// An Ingress's row: class, hosts (at most three named), load-balancer addresses, ports.
fn ingress_cells(o: &Value) -> Vec<Value> {
    let class = match s(o.pointer("/spec/ingressClassName")) {
        c if c.is_empty() => "<none>".to_string(),
        c => c,
    };
    let hosts: Vec<String> = o
        .pointer("/spec/rules")
        .and_then(Value::as_array)
        .map(|rules| {
            rules
                .iter()
                .map(|r| s(r.get("host")))
                .filter(|h| !h.is_empty())
                .collect()
        })
        .unwrap_or_default();
    let hosts = match hosts.len() {
        0 => "*".to_string(),
        n if n > 3 => format!("{} + {} more...", hosts[..3].join(","), n - 3),
        _ => hosts.join(","),
    };
    let addresses: Vec<String> = o
        .pointer("/status/loadBalancer/ingress")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|x| match s(x.get("ip")) {
                    ip if ip.is_empty() => s(x.get("hostname")),
                    ip => ip,
                })
                .filter(|x| !x.is_empty())
                .collect()
        })
        .unwrap_or_default();
    let tls = o
        .pointer("/spec/tls")
        .and_then(Value::as_array)
        .is_some_and(|t| !t.is_empty());
    vec![
        json!(meta_str(o, "name")),
        json!(class),
        json!(hosts),
        json!(addresses.join(",")),
        json!(if tls { "80, 443" } else { "80" }),
        json!(human_age(meta_str(o, "creationTimestamp"))),
    ]
}

fn pod_cells(p: &Value) -> Vec<Value> {
    let specs = p
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .map(Vec::len)
        .unwrap_or(0);
    let statuses = p
        .pointer("/status/containerStatuses")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let ready = statuses
        .iter()
        .filter(|c| c.get("ready") == Some(&json!(true)))
        .count();
    let restarts: i64 = statuses.iter().map(|c| i(c.get("restartCount"))).sum();
    let mut reason = s(p.pointer("/status/reason"));
    if reason.is_empty() {
        reason = s(p.pointer("/status/phase"));
    }
    // As upstream's printer: a pod held by scheduling gates says so.
    let gated = p
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter().any(|c| {
                c.get("type") == Some(&json!("PodScheduled"))
                    && c.get("reason") == Some(&json!("SchedulingGated"))
            })
        });
    if gated {
        reason = "SchedulingGated".into();
    }
    for c in &statuses {
        if let Some(w) = c.pointer("/state/waiting/reason").and_then(Value::as_str) {
            reason = w.to_string();
        } else if let Some(t) = c
            .pointer("/state/terminated/reason")
            .and_then(Value::as_str)
        {
            reason = t.to_string();
        }
    }
    if !meta_str(p, "deletionTimestamp").is_empty() {
        reason = "Terminating".into();
    }
    let ip = or_none(s(p.pointer("/status/podIP")));
    let node = or_none(s(p.pointer("/spec/nodeName")));
    let nominated = or_none(s(p.pointer("/status/nominatedNodeName")));
    vec![
        json!(meta_str(p, "name")),
        json!(format!("{ready}/{specs}")),
        json!(reason),
        json!(restarts.to_string()),
        json!(human_age(meta_str(p, "creationTimestamp"))),
        json!(ip),
        json!(node),
        json!(nominated),
        json!("<none>"),
    ]
}

fn service_ports(svc: &Value) -> String {
    let ports = svc
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let out: Vec<String> = ports
        .iter()
        .map(|p| {
            let proto = s(p.get("protocol"));
            let proto = if proto.is_empty() {
                "TCP".into()
            } else {
                proto
            };
            match p.get("nodePort").and_then(Value::as_i64) {
                Some(np) => format!("{}:{np}/{proto}", i(p.get("port"))),
                None => format!("{}/{proto}", i(p.get("port"))),
            }
        })
        .collect();
    if out.is_empty() {
        "<none>".into()
    } else {
        out.join(",")
    }
}

fn node_cells(n: &Value) -> Vec<Value> {
    let conds = n
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let ready = conds
        .iter()
        .find(|c| c.get("type") == Some(&json!("Ready")));
    let mut status = match ready.and_then(|c| c.get("status")).and_then(Value::as_str) {
        Some("True") => "Ready".to_string(),
        _ => "NotReady".to_string(),
    };
    if n.pointer("/spec/unschedulable") == Some(&json!(true)) {
        status.push_str(",SchedulingDisabled");
    }
    let mut roles: Vec<String> = meta(n)
        .get("labels")
        .and_then(Value::as_object)
        .map(|l| {
            l.keys()
                .filter_map(|k| {
                    k.strip_prefix("node-role.kubernetes.io/")
                        .map(str::to_string)
                })
                .collect()
        })
        .unwrap_or_default();
    roles.sort();
    let addr = |t: &str| {
        n.pointer("/status/addresses")
            .and_then(Value::as_array)
            .and_then(|a| a.iter().find(|x| x.get("type") == Some(&json!(t))))
            .map(|x| s(x.get("address")))
            .unwrap_or_else(|| "<none>".into())
    };
    vec![
        json!(meta_str(n, "name")),
        json!(status),
        json!(if roles.is_empty() {
            "<none>".to_string()
        } else {
            roles.join(",")
        }),
        json!(human_age(meta_str(n, "creationTimestamp"))),
        json!(s(n.pointer("/status/nodeInfo/kubeletVersion"))),
        json!(addr("InternalIP")),
        json!(addr("ExternalIP")),
        json!(or_none(s(n.pointer("/status/nodeInfo/osImage")))),
        json!(or_none(s(n.pointer("/status/nodeInfo/kernelVersion")))),
        json!(or_none(s(
            n.pointer("/status/nodeInfo/containerRuntimeVersion")
        ))),
    ]
}

/// The cells of one row.
pub fn cells(res: &Resource, o: &Value) -> Vec<Value> {
    let name = json!(meta_str(o, "name"));
    let age = json!(human_age(meta_str(o, "creationTimestamp")));
    let tmpl = "/spec/template/spec/containers";
    match res.kind {
        "Pod" => pod_cells(o),
        "Namespace" => vec![name, json!(s(o.pointer("/status/phase"))), age],
        "Node" => node_cells(o),
        "Service" => {
            let ty = s(o.pointer("/spec/type"));
            let ext = match ty.as_str() {
                "ExternalName" => s(o.pointer("/spec/externalName")),
                "LoadBalancer" => {
                    let ips: Vec<String> = o
                        .pointer("/status/loadBalancer/ingress")
                        .and_then(Value::as_array)
                        .map(|a| a.iter().map(|x| s(x.get("ip"))).collect())
                        .unwrap_or_default();
                    if ips.is_empty() {
                        "<pending>".into()
                    } else {
                        ips.join(",")
                    }
                }
                _ => "<none>".into(),
            };
            let sel = o
                .pointer("/spec/selector")
                .and_then(Value::as_object)
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| format!("{k}={}", s(Some(v))))
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default();
            vec![
                name,
                json!(ty),
                json!(or_none(s(o.pointer("/spec/clusterIP")))),
                json!(ext),
                json!(service_ports(o)),
                age,
                json!(or_none(sel)),
            ]
        }
        "Deployment" => {
            let (c, im) = containers_and_images(o, tmpl);
            vec![
                name,
                json!(format!(
                    "{}/{}",
                    i(o.pointer("/status/readyReplicas")),
                    i(o.pointer("/spec/replicas"))
                )),
                json!(i(o.pointer("/status/updatedReplicas"))),
                json!(i(o.pointer("/status/availableReplicas"))),
                age,
                json!(c),
                json!(im),
                json!(selector_string(o.pointer("/spec/selector"))),
            ]
        }
        "ReplicaSet" | "ReplicationController" => {
            let (c, im) = containers_and_images(o, tmpl);
            vec![
                name,
                json!(i(o.pointer("/spec/replicas"))),
                json!(i(o.pointer("/status/replicas"))),
                json!(i(o.pointer("/status/readyReplicas"))),
                age,
                json!(c),
                json!(im),
                json!(selector_string(o.pointer("/spec/selector"))),
            ]
        }
        "StatefulSet" => {
            let (c, im) = containers_and_images(o, tmpl);
            vec![
                name,
                json!(format!(
                    "{}/{}",
                    i(o.pointer("/status/readyReplicas")),
                    i(o.pointer("/spec/replicas"))
                )),
                age,
                json!(c),
                json!(im),
            ]
        }
        "DaemonSet" => {
            let (c, im) = containers_and_images(o, tmpl);
            let ns = o
                .pointer("/spec/template/spec/nodeSelector")
                .and_then(Value::as_object)
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| format!("{k}={}", s(Some(v))))
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default();
            vec![
                name,
                json!(i(o.pointer("/status/desiredNumberScheduled"))),
                json!(i(o.pointer("/status/currentNumberScheduled"))),
                json!(i(o.pointer("/status/numberReady"))),
                json!(i(o.pointer("/status/updatedNumberScheduled"))),
                json!(i(o.pointer("/status/numberAvailable"))),
                json!(or_none(ns)),
                age,
                json!(c),
                json!(im),
                json!(selector_string(o.pointer("/spec/selector"))),
            ]
        }
        "Job" => {
            let (c, im) = containers_and_images(o, tmpl);
            let conds = o
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let has = |t: &str| {
                conds.iter().any(|x| {
                    x.get("type") == Some(&json!(t)) && x.get("status") == Some(&json!("True"))
                })
            };
            let status = if has("Complete") {
                "Complete"
            } else if has("Failed") {
                "Failed"
            } else if has("Suspended") {
                "Suspended"
            } else {
                "Running"
            };
            let completions = match o.pointer("/spec/completions").and_then(Value::as_i64) {
                Some(c) => format!("{}/{c}", i(o.pointer("/status/succeeded"))),
                None => format!(
                    "{}/1 of {}",
                    i(o.pointer("/status/succeeded")),
                    i(o.pointer("/spec/parallelism"))
                ),
            };
            let dur = match (
                o.pointer("/status/startTime").and_then(Value::as_str),
                o.pointer("/status/completionTime").and_then(Value::as_str),
            ) {
                (Some(st), Some(ct)) => crate::object::human_duration(
                    crate::object::parse_time(ct).unwrap_or(0)
                        - crate::object::parse_time(st).unwrap_or(0),
                ),
                (Some(st), None) => human_age(st),
                _ => String::new(),
            };
            vec![
                name,
                json!(status),
                json!(completions),
                json!(dur),
                age,
                json!(c),
                json!(im),
                json!(selector_string(o.pointer("/spec/selector"))),
            ]
        }
        "CronJob" => {
            let (c, im) =
                containers_and_images(o, "/spec/jobTemplate/spec/template/spec/containers");
            let last = o
                .pointer("/status/lastScheduleTime")
                .and_then(Value::as_str)
                .map(human_age)
                .unwrap_or_else(|| "<none>".into());
            vec![
                name,
                json!(s(o.pointer("/spec/schedule"))),
                json!(or_none(s(o.pointer("/spec/timeZone")))),
                json!(
                    o.pointer("/spec/suspend")
                        .and_then(Value::as_bool)
                        .unwrap_or(false)
                ),
                json!(
                    o.pointer("/status/active")
                        .and_then(Value::as_array)
                        .map(Vec::len)
                        .unwrap_or(0)
                ),
                json!(last),
                age,
                json!(c),
                json!(im),
                json!("<none>"),
            ]
        }
        "ConfigMap" => {
            let n = ["data", "binaryData"]
                .iter()
                .map(|f| {
                    o.get(*f)
                        .and_then(Value::as_object)
                        .map(|m| m.len())
                        .unwrap_or(0)
                })
                .sum::<usize>();
            vec![name, json!(n.to_string()), age]
        }
        "Secret" => {
            let n = o
                .get("data")
                .and_then(Value::as_object)
                .map(|m| m.len())
                .unwrap_or(0);
            vec![name, json!(s(o.get("type"))), json!(n.to_string()), age]
        }
        "ServiceAccount" => vec![
            name,
            json!(
                o.get("secrets")
                    .and_then(Value::as_array)
                    .map(Vec::len)
                    .unwrap_or(0)
                    .to_string()
            ),
            age,
        ],
        "Endpoints" => {
            let mut eps = Vec::new();
            for sub in o
                .get("subsets")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let ports: Vec<i64> = sub
                    .get("ports")
                    .and_then(Value::as_array)
                    .map(|a| a.iter().map(|p| i(p.get("port"))).collect())
                    .unwrap_or_default();
                for a in sub
                    .get("addresses")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    if ports.is_empty() {
                        eps.push(s(a.get("ip")));
                    }
                    for p in &ports {
                        eps.push(format!("{}:{p}", s(a.get("ip"))));
                    }
                }
            }
            let shown = if eps.len() > 3 {
                format!("{} + {} more...", eps[..3].join(","), eps.len() - 3)
            } else {
                eps.join(",")
            };
            vec![name, json!(or_none(shown)), age]
        }
        "EndpointSlice" => {
            let ports: Vec<String> = o
                .get("ports")
                .and_then(Value::as_array)
                .map(|a| a.iter().map(|p| i(p.get("port")).to_string()).collect())
                .unwrap_or_default();
            let addrs: Vec<String> = o
                .get("endpoints")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .flat_map(|e| {
                            e.get("addresses")
                                .and_then(Value::as_array)
                                .cloned()
                                .unwrap_or_default()
                        })
                        .map(|x| s(Some(&x)))
                        .collect()
                })
                .unwrap_or_default();
            let shown = if addrs.len() > 3 {
                format!("{} + {} more...", addrs[..3].join(","), addrs.len() - 3)
            } else {
                addrs.join(",")
            };
            vec![
                name,
                json!(s(o.get("addressType"))),
                json!(if ports.is_empty() {
                    "<unset>".into()
                } else {
                    ports.join(",")
                }),
                json!(if shown.is_empty() {
                    "<unset>".into()
                } else {
                    shown
                }),
                age,
            ]
        }
        "Lease" => vec![name, json!(s(o.pointer("/spec/holderIdentity"))), age],
        "RuntimeClass" => vec![name, json!(s(o.get("handler"))), age],
        "CertificateSigningRequest" => vec![
            name,
            age,
            json!(s(o.pointer("/spec/signerName"))),
            json!(s(o.pointer("/spec/username"))),
            json!(
                o.pointer("/spec/expirationSeconds")
                    .and_then(Value::as_i64)
                    .map(crate::object::human_duration)
                    .unwrap_or_else(|| "<none>".into())
            ),
            json!(crate::certificates::condition_summary(o)),
        ],
        "Event" => event_cells(o),
        "PersistentVolume" => {
            let claim = match o.pointer("/spec/claimRef") {
                Some(c) if c.is_object() => {
                    format!("{}/{}", s(c.get("namespace")), s(c.get("name")))
                }
                _ => String::new(),
            };
            vec![
                name,
                json!(s(o.pointer("/spec/capacity/storage"))),
                json!(access_modes(o.pointer("/spec/accessModes"))),
                json!(s(o.pointer("/spec/persistentVolumeReclaimPolicy"))),
                json!(s(o.pointer("/status/phase"))),
                json!(claim),
                json!(s(o.pointer("/spec/storageClassName"))),
                json!(unset(s(o.pointer("/spec/volumeAttributesClassName")))),
                json!(s(o.pointer("/status/reason"))),
                age,
                json!(volume_mode(o)),
            ]
        }
        "ResourceQuota" => {
            let (requests, limits) = quota_usage(o);
            vec![name, age, json!(requests), json!(limits)]
        }
        "LimitRange" => vec![name, json!(meta_str(o, "creationTimestamp"))],
        "ControllerRevision" => {
            let controller = meta(o)
                .get("ownerReferences")
                .and_then(Value::as_array)
                .and_then(|refs| {
                    refs.iter()
                        .find(|r| r.get("controller") == Some(&json!(true)))
                })
                .map(|r| {
                    let group = s(r.get("apiVersion"))
                        .rsplit_once('/')
                        .map(|(g, _)| g.to_string())
                        .unwrap_or_default();
                    let kind = s(r.get("kind")).to_lowercase();
                    let name = s(r.get("name"));
                    if group.is_empty() {
                        format!("{kind}/{name}")
                    } else {
                        format!("{kind}.{group}/{name}")
                    }
                })
                .unwrap_or_else(|| "<none>".into());
            vec![name, json!(controller), json!(i(o.get("revision"))), age]
        }
        "NetworkPolicy" => vec![
            name,
            json!(or_none(label_selector(o.pointer("/spec/podSelector")))),
            age,
        ],
        "Ingress" => ingress_cells(o),
        "IngressClass" => {
            let params = match o.pointer("/spec/parameters") {
                Some(p) if p.is_object() => {
                    let mut k = s(p.get("kind"));
                    let group = s(p.get("apiGroup"));
                    if !group.is_empty() {
                        k = format!("{k}.{group}");
                    }
                    format!("{k}/{}", s(p.get("name")))
                }
                _ => "<none>".into(),
            };
            vec![
                name,
                json!(s(o.pointer("/spec/controller"))),
                json!(params),
                age,
            ]
        }
        "StorageClass" => {
            let mut n = meta_str(o, "name").to_string();
            let annotations = meta(o).get("annotations");
            if [
                "storageclass.kubernetes.io/is-default-class",
                "storageclass.beta.kubernetes.io/is-default-class",
            ]
            .iter()
            .any(|k| annotations.and_then(|a| a.get(*k)) == Some(&json!("true")))
            {
                n.push_str(" (default)");
            }
            let or = |v: String, d: &str| if v.is_empty() { d.to_string() } else { v };
            vec![
                json!(n),
                json!(s(o.get("provisioner"))),
                json!(or(s(o.get("reclaimPolicy")), "Delete")),
                json!(or(s(o.get("volumeBindingMode")), "Immediate")),
                json!(
                    o.get("allowVolumeExpansion")
                        .and_then(Value::as_bool)
                        .unwrap_or(false)
                        .to_string()
                ),
                age,
            ]
        }
        "PriorityClass" => vec![
            name,
            json!(i(o.get("value"))),
            json!(
                o.get("globalDefault")
                    .and_then(Value::as_bool)
                    .unwrap_or(false)
            ),
            age,
            json!(s(o.get("preemptionPolicy"))),
        ],
        "Role" | "ClusterRole" => vec![name, json!(meta_str(o, "creationTimestamp"))],
        "RoleBinding" | "ClusterRoleBinding" => {
            let subj = |k: &str| {
                o.get("subjects")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter(|x| x.get("kind") == Some(&json!(k)))
                            .map(|x| {
                                if k == "ServiceAccount" {
                                    format!("{}/{}", s(x.get("namespace")), s(x.get("name")))
                                } else {
                                    s(x.get("name"))
                                }
                            })
                            .collect::<Vec<_>>()
                            .join(", ")
                    })
                    .unwrap_or_default()
            };
            vec![
                name,
                json!(format!(
                    "{}/{}",
                    s(o.pointer("/roleRef/kind")),
                    s(o.pointer("/roleRef/name"))
                )),
                age,
                json!(subj("User")),
                json!(subj("Group")),
                json!(subj("ServiceAccount")),
            ]
        }
        "PersistentVolumeClaim" => {
            vec![
                name,
                json!(s(o.pointer("/status/phase"))),
                json!(s(o.pointer("/spec/volumeName"))),
                json!(s(o.pointer("/status/capacity/storage"))),
                json!(access_modes(o.pointer("/status/accessModes"))),
                json!(or_none(s(o.pointer("/spec/storageClassName")))),
                json!(unset(s(o.pointer("/spec/volumeAttributesClassName")))),
                age,
                json!(volume_mode(o)),
            ]
        }
        "PodDisruptionBudget" => vec![
            name,
            json!(if o.pointer("/spec/minAvailable").is_some() {
                s(o.pointer("/spec/minAvailable"))
            } else {
                "N/A".into()
            }),
            json!(if o.pointer("/spec/maxUnavailable").is_some() {
                s(o.pointer("/spec/maxUnavailable"))
            } else {
                "N/A".into()
            }),
            json!(i(o.pointer("/status/disruptionsAllowed"))),
            age,
        ],
        "ValidatingAdmissionPolicy" => vec![
            name,
            json!(
                o.pointer("/spec/validations")
                    .and_then(Value::as_array)
                    .map_or(0, Vec::len)
            ),
            json!(match o.pointer("/spec/paramKind") {
                Some(p) if p.is_object() => format!(
                    "{}/{}",
                    p.get("apiVersion").and_then(Value::as_str).unwrap_or(""),
                    p.get("kind").and_then(Value::as_str).unwrap_or("")
                ),
                _ => "<unset>".into(),
            }),
            age,
        ],
        "ValidatingAdmissionPolicyBinding" => vec![
            name,
            json!(s(o.pointer("/spec/policyName"))),
            json!(match o.pointer("/spec/paramRef") {
                Some(p) if p.is_object() => {
                    let n = p.get("name").and_then(Value::as_str).unwrap_or("*");
                    match p.get("namespace").and_then(Value::as_str) {
                        Some(ns) if !ns.is_empty() => format!("{ns}/{n}"),
                        _ => format!("*/{n}"),
                    }
                }
                _ => "<unset>".into(),
            }),
            age,
        ],
        "MutatingWebhookConfiguration" | "ValidatingWebhookConfiguration" => vec![
            name,
            json!(
                o.get("webhooks")
                    .and_then(Value::as_array)
                    .map_or(0, Vec::len)
            ),
            age,
        ],
        _ => vec![name, age],
    }
}

/// What each row carries in `object` (`includeObject`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IncludeObject {
    /// No object.
    None,
    /// `PartialObjectMetadata` (default).
    Metadata,
    /// The whole object.
    Object,
}

impl IncludeObject {
    /// Parses the query parameter.
    pub fn parse(s: Option<&str>) -> Result<Self, crate::status::ApiError> {
        match s {
            None | Some("") | Some("Metadata") => Ok(IncludeObject::Metadata),
            Some("None") => Ok(IncludeObject::None),
            Some("Object") => Ok(IncludeObject::Object),
            Some(o) => Err(crate::status::ApiError::bad_request(format!(
                "includeObject: Unsupported value: {o:?}: supported values: \"Metadata\", \"None\", \"Object\""
            ))),
        }
    }
}

/// `PartialObjectMetadata` of an object.
pub fn partial_metadata(o: &Value) -> Value {
    json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o.get("metadata").cloned().unwrap_or(json!({}))})
}

/// One table row.
pub fn row(res: &Resource, o: &Value, include: IncludeObject) -> Value {
    let mut r = json!({"cells": cells(res, o)});
    match include {
        IncludeObject::None => {}
        IncludeObject::Metadata => r["object"] = partial_metadata(o),
        IncludeObject::Object => r["object"] = o.clone(),
    }
    r
}

/// A Table of `items`.
pub fn table(
    res: &Resource,
    items: &[Value],
    rv: &str,
    cont: Option<&str>,
    include: IncludeObject,
    with_columns: bool,
) -> Value {
    let mut md = json!({"resourceVersion": rv});
    if let Some(c) = cont {
        md["continue"] = json!(c);
    }
    let defs: Vec<Value> = if with_columns {
        columns(res)
            .iter()
            .map(|(n, t, f, p)| json!({"name": n, "type": t, "format": f, "description": "", "priority": p}))
            .collect()
    } else {
        Vec::new()
    };
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": md,
        "columnDefinitions": defs,
        "rows": items.iter().map(|o| row(res, o, include)).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::find;

    #[test]
    fn every_printer_fills_every_column() {
        for res in crate::resources::all() {
            let o = json!({"metadata": {"name": "x", "creationTimestamp": "2020-01-01T00:00:00Z"}, "spec": {}, "status": {}});
            assert_eq!(columns(res).len(), cells(res, &o).len(), "{}", res.resource);
        }
    }

    #[test]
    fn pod_row_has_upstream_cells() {
        let pods = find("", "v1", "pods").unwrap();
        let p = json!({"metadata": {"name": "p", "creationTimestamp": "2020-01-01T00:00:00Z"}, "spec": {"containers": [{"name": "c"}], "nodeName": "n1"}, "status": {"phase": "Running", "podIP": "10.0.0.5", "containerStatuses": [{"ready": true, "restartCount": 2}]}});
        let c = cells(pods, &p);
        assert_eq!(
            c[..4],
            [json!("p"), json!("1/1"), json!("Running"), json!("2")]
        );
        assert_eq!(c[5..7], [json!("10.0.0.5"), json!("n1")]);
    }

    #[test]
    fn storage_policy_and_event_rows_have_upstream_cells() {
        let at = "2020-01-01T00:00:00Z";
        let pv = json!({"metadata": {"name": "v", "creationTimestamp": at}, "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce", "ReadOnlyMany"], "persistentVolumeReclaimPolicy": "Retain", "claimRef": {"namespace": "d", "name": "c"}, "storageClassName": "fast"}, "status": {"phase": "Bound"}});
        let c = cells(find("", "v1", "persistentvolumes").unwrap(), &pv);
        assert_eq!(
            c[1..9],
            [
                json!("1Gi"),
                json!("RWO,ROX"),
                json!("Retain"),
                json!("Bound"),
                json!("d/c"),
                json!("fast"),
                json!("<unset>"),
                json!("")
            ]
        );
        assert_eq!(c[10], json!("Filesystem"));
        let quota = json!({"metadata": {"name": "q", "creationTimestamp": at}, "spec": {"hard": {"pods": "10", "limits.cpu": "2", "requests.cpu": "1"}}, "status": {"used": {"pods": "3"}}});
        let c = cells(find("", "v1", "resourcequotas").unwrap(), &quota);
        assert_eq!(
            c[2..],
            [
                json!("pods: 3/10, requests.cpu: 0/1"),
                json!("limits.cpu: 0/2")
            ]
        );
        let rev = json!({"metadata": {"name": "web-1", "creationTimestamp": at, "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "web", "controller": true}]}, "revision": 3});
        let c = cells(find("apps", "v1", "controllerrevisions").unwrap(), &rev);
        assert_eq!(c[1..3], [json!("statefulset.apps/web"), json!(3)]);
        let np = json!({"metadata": {"name": "n", "creationTimestamp": at}, "spec": {"podSelector": {}}});
        assert_eq!(
            cells(
                find("networking.k8s.io", "v1", "networkpolicies").unwrap(),
                &np
            )[1],
            json!("<none>")
        );
        let ing = json!({"metadata": {"name": "i", "creationTimestamp": at}, "spec": {"ingressClassName": "nginx", "rules": [{"host": "a.example"}, {"host": "b.example"}], "tls": [{"hosts": ["a.example"]}]}, "status": {"loadBalancer": {"ingress": [{"ip": "10.0.0.9"}]}}});
        let c = cells(find("networking.k8s.io", "v1", "ingresses").unwrap(), &ing);
        assert_eq!(
            c[1..5],
            [
                json!("nginx"),
                json!("a.example,b.example"),
                json!("10.0.0.9"),
                json!("80, 443")
            ]
        );
        let sc = json!({"metadata": {"name": "fast", "creationTimestamp": at, "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}}, "provisioner": "p.example"});
        let c = cells(find("storage.k8s.io", "v1", "storageclasses").unwrap(), &sc);
        assert_eq!(
            c[..5],
            [
                json!("fast (default)"),
                json!("p.example"),
                json!("Delete"),
                json!("Immediate"),
                json!("false")
            ]
        );
        // The same Event in both APIs prints the same row.
        let core = json!({"metadata": {"name": "e", "creationTimestamp": at}, "involvedObject": {"kind": "Pod", "name": "p", "fieldPath": "spec.containers{c}"}, "reason": "Pulled", "type": "Normal", "message": "done ", "source": {"component": "kubelet", "host": "n1"}, "count": 4, "firstTimestamp": at, "lastTimestamp": at});
        let new = json!({"metadata": {"name": "e", "creationTimestamp": at}, "regarding": {"kind": "Pod", "name": "p", "fieldPath": "spec.containers{c}"}, "reason": "Pulled", "type": "Normal", "note": "done ", "deprecatedSource": {"component": "kubelet", "host": "n1"}, "deprecatedCount": 4, "deprecatedFirstTimestamp": at, "deprecatedLastTimestamp": at});
        let c = cells(find("", "v1", "events").unwrap(), &core);
        assert_eq!(
            c,
            cells(find("events.k8s.io", "v1", "events").unwrap(), &new)
        );
        assert_eq!(
            c[1..],
            [
                json!("Normal"),
                json!("Pulled"),
                json!("pod/p"),
                json!("spec.containers{c}"),
                json!("kubelet, n1"),
                json!("done"),
                c[0].clone(),
                json!(4),
                json!("e")
            ]
        );
    }

    #[test]
    fn scale_selectors_keep_their_expressions() {
        let rs = json!({"metadata": {"name": "r"}, "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}, "matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]}, {"key": "canary", "operator": "DoesNotExist"}]}}});
        let scale = crate::object::scale_of(find("apps", "v1", "replicasets").unwrap(), &rs);
        assert_eq!(scale["status"]["selector"], "app=web,tier in (a,b),!canary");
        let rc = json!({"metadata": {"name": "r"}, "spec": {"selector": {"app": "web"}}});
        let scale = crate::object::scale_of(find("", "v1", "replicationcontrollers").unwrap(), &rc);
        assert_eq!(scale["status"]["selector"], "app=web");
    }
}
