//! The default FlowSchemas and PriorityLevelConfigurations of API Priority and Fairness (as of
//! Kubernetes 1.29, unchanged through 1.33), and the ensurer that keeps them in the store: the
//! mandatory ones (`exempt`, `catch-all`) always as defined, the suggested ones created when
//! missing and updated while their `apf.kubernetes.io/autoupdate-spec` annotation says true.
//! Not done yet: upstream also deletes objects with that annotation true whose names are no
//! longer among the defaults.

use std::time::Duration;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::registry::{Registry, WriteOpts};

/// The annotation that lets the ensurer update an object's spec.
pub const AUTOUPDATE: &str = "apf.kubernetes.io/autoupdate-spec";

fn queued(shares: i64, lendable: i64, queues: i64, hand: i64) -> Value {
    json!({"type": "Limited", "limited": {
        "nominalConcurrencyShares": shares,
        "lendablePercent": lendable,
        "limitResponse": {"type": "Queue", "queuing": {"queues": queues, "handSize": hand, "queueLengthLimit": 50}},
    }})
}

fn level(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "flowcontrol.apiserver.k8s.io/v1", "kind": "PriorityLevelConfiguration",
        "metadata": {"name": name, "annotations": {AUTOUPDATE: "true"}}, "spec": spec})
}

/// The mandatory priority levels.
pub fn mandatory_levels() -> Vec<Value> {
    vec![
        level(
            "catch-all",
            json!({"type": "Limited", "limited": {"nominalConcurrencyShares": 5, "lendablePercent": 0,
                "limitResponse": {"type": "Reject"}}}),
        ),
        level(
            "exempt",
            json!({"type": "Exempt", "exempt": {"nominalConcurrencyShares": 0, "lendablePercent": 0}}),
        ),
    ]
}

/// The suggested priority levels.
pub fn suggested_levels() -> Vec<Value> {
    vec![
        level("system", queued(30, 33, 64, 6)),
        level("node-high", queued(40, 25, 64, 6)),
        level("leader-election", queued(10, 0, 16, 4)),
        level("workload-high", queued(40, 50, 128, 6)),
        level("workload-low", queued(100, 90, 128, 6)),
        level("global-default", queued(20, 50, 128, 6)),
    ]
}

fn all_resources() -> Value {
    json!([{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"], "clusterScope": true, "namespaces": ["*"]}])
}

fn all_urls() -> Value {
    json!([{"verbs": ["*"], "nonResourceURLs": ["*"]}])
}

fn group(name: &str) -> Value {
    json!({"kind": "Group", "group": {"name": name}})
}

fn user(name: &str) -> Value {
    json!({"kind": "User", "user": {"name": name}})
}

fn kube_system_sa(name: &str) -> Value {
    json!({"kind": "ServiceAccount", "serviceAccount": {"namespace": "kube-system", "name": name}})
}

fn schema(name: &str, precedence: i64, level: &str, by: Option<&str>, rule: Value) -> Value {
    let mut spec = json!({"priorityLevelConfiguration": {"name": level}, "matchingPrecedence": precedence,
        "rules": [rule]});
    if let Some(by) = by {
        spec["distinguisherMethod"] = json!({"type": by});
    }
    json!({"apiVersion": "flowcontrol.apiserver.k8s.io/v1", "kind": "FlowSchema",
        "metadata": {"name": name, "annotations": {AUTOUPDATE: "true"}}, "spec": spec})
}

fn everything(subjects: Value) -> Value {
    json!({"subjects": subjects, "resourceRules": all_resources(), "nonResourceRules": all_urls()})
}

/// The mandatory flow schemas.
pub fn mandatory_schemas() -> Vec<Value> {
    let everyone = json!([
        group("system:unauthenticated"),
        group("system:authenticated")
    ]);
    vec![
        schema(
            "exempt",
            1,
            "exempt",
            None,
            everything(json!([group("system:masters")])),
        ),
        schema(
            "catch-all",
            10000,
            "catch-all",
            Some("ByUser"),
            everything(everyone),
        ),
    ]
}

/// The suggested flow schemas.
pub fn suggested_schemas() -> Vec<Value> {
    let everyone = json!([
        group("system:unauthenticated"),
        group("system:authenticated")
    ]);
    let rw = json!(["get", "create", "update"]);
    vec![
        schema(
            "system-nodes",
            500,
            "system",
            Some("ByUser"),
            everything(json!([group("system:nodes")])),
        ),
        schema(
            "system-node-high",
            400,
            "node-high",
            Some("ByUser"),
            json!({"subjects": [group("system:nodes")], "resourceRules": [
                {"verbs": ["*"], "apiGroups": [""], "resources": ["nodes", "nodes/status"], "clusterScope": true, "namespaces": ["*"]},
                {"verbs": ["*"], "apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "clusterScope": false, "namespaces": ["*"]},
            ]}),
        ),
        schema(
            "probes",
            2,
            "exempt",
            None,
            json!({"subjects": everyone, "nonResourceRules": [{"verbs": ["get"], "nonResourceURLs": ["/healthz", "/readyz", "/livez"]}]}),
        ),
        schema(
            "system-leader-election",
            100,
            "leader-election",
            Some("ByUser"),
            json!({"subjects": [user("system:kube-controller-manager"), user("system:kube-scheduler"), kube_system_sa("*")],
                "resourceRules": [{"verbs": rw, "apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "clusterScope": false, "namespaces": ["*"]}]}),
        ),
        schema(
            "workload-leader-election",
            200,
            "leader-election",
            Some("ByUser"),
            json!({"subjects": [kube_system_sa("*")], "resourceRules": [
                {"verbs": rw, "apiGroups": [""], "resources": ["endpoints", "configmaps"], "clusterScope": false, "namespaces": ["*"]},
                {"verbs": rw, "apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "clusterScope": false, "namespaces": ["*"]},
            ]}),
        ),
        schema(
            "endpoint-controller",
            150,
            "workload-high",
            Some("ByUser"),
            json!({"subjects": [user("system:kube-controller-manager"), kube_system_sa("endpoint-controller"), kube_system_sa("endpointslicemirroring-controller")],
                "resourceRules": [{"verbs": rw, "apiGroups": [""], "resources": ["endpoints"], "clusterScope": false, "namespaces": ["*"]}]}),
        ),
        schema(
            "kube-controller-manager",
            800,
            "workload-high",
            Some("ByNamespace"),
            everything(json!([user("system:kube-controller-manager")])),
        ),
        schema(
            "kube-scheduler",
            800,
            "workload-high",
            Some("ByNamespace"),
            everything(json!([user("system:kube-scheduler")])),
        ),
        schema(
            "kube-system-service-accounts",
            900,
            "workload-high",
            Some("ByNamespace"),
            everything(json!([kube_system_sa("*")])),
        ),
        schema(
            "service-accounts",
            9000,
            "workload-low",
            Some("ByUser"),
            everything(json!([group("system:serviceaccounts")])),
        ),
        schema(
            "global-default",
            9900,
            "global-default",
            Some("ByUser"),
            everything(everyone),
        ),
    ]
}

/// The object's autoupdate annotation, when it reads as a boolean.
fn annotation(current: &Value) -> Option<bool> {
    current
        .pointer(&format!(
            "/metadata/annotations/{}",
            AUTOUPDATE.replace('/', "~1")
        ))
        .and_then(Value::as_str)
        .and_then(parse_bool)
}

/// Whether the ensurer may update `current`'s spec (`ann`: its annotation): always for
/// mandatory objects; for suggested ones as the annotation says, or, without a readable
/// annotation, only while the object was never changed (generation 1).
fn auto_update(current: &Value, ann: Option<bool>, mandatory: bool) -> bool {
    if mandatory {
        return true;
    }
    ann.unwrap_or_else(|| {
        current
            .pointer("/metadata/generation")
            .and_then(Value::as_i64)
            == Some(1)
    })
}

/// Go's `strconv.ParseBool`.
fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// One pass: creates what is missing, updates what may be updated. Errors stop the pass.
pub async fn ensure(registry: &Registry) -> Result<(), String> {
    let res = |r: &str| {
        crate::resources::find("flowcontrol.apiserver.k8s.io", "v1", r)
            .expect("flowcontrol resources are served")
    };
    let (levels, schemas) = (res("prioritylevelconfigurations"), res("flowschemas"));
    let passes = [
        (levels, suggested_levels(), false),
        (schemas, suggested_schemas(), false),
        (levels, mandatory_levels(), true),
        (schemas, mandatory_schemas(), true),
    ];
    for (res, objects, mandatory) in passes {
        for want in objects {
            let name = crate::object::name(&want).to_string();
            let current = match registry.get(res, "", &name).await {
                Ok(c) => c,
                Err(e) if e.code == 404 => {
                    match registry
                        .create(res, "", want.clone(), &WriteOpts::internal())
                        .await
                    {
                        Ok(_) => continue,
                        Err(e) if e.code == 409 => continue,
                        Err(e) => {
                            return Err(format!("creating {}/{name}: {}", res.resource, e.message));
                        }
                    }
                }
                Err(e) => return Err(format!("reading {}/{name}: {}", res.resource, e.message)),
            };
            let ann = annotation(&current);
            let update = auto_update(&current, ann, mandatory);
            let fix_annotation = ann != Some(update);
            let mut spec = want["spec"].clone();
            if name == "exempt" && res.resource == "prioritylevelconfigurations" {
                // Operators may tune the exempt level's shares and lendable percent.
                if let Some(ex) = current.pointer("/spec/exempt").filter(|e| e.is_object()) {
                    spec["exempt"] = ex.clone();
                }
            }
            let spec_differs = update && current.get("spec") != Some(&spec);
            if !fix_annotation && !spec_differs {
                continue;
            }
            // The read's resourceVersion is the precondition: a concurrent edit wins, and the
            // next pass looks again.
            let mut next = current.clone();
            if spec_differs {
                next["spec"] = spec;
            }
            next["metadata"]["annotations"][AUTOUPDATE] = json!(update.to_string());
            match registry
                .update(res, "", &name, next, false, &WriteOpts::internal(), None)
                .await
            {
                Ok(_) => {}
                Err(e) if e.code == 409 => {}
                Err(e) => return Err(format!("updating {}/{name}: {}", res.resource, e.message)),
            }
        }
    }
    Ok(())
}

/// Runs [`ensure`] every second until it succeeds, then every minute; `done` is set after the
/// first success (`/readyz/poststarthook/apiserver/bootstrap-system-flowcontrol-configuration`).
pub async fn run(
    registry: Registry,
    done: std::sync::Arc<std::sync::atomic::AtomicBool>,
    shutdown: CancellationToken,
) {
    loop {
        let pause = match ensure(&registry).await {
            Ok(()) => {
                done.store(true, std::sync::atomic::Ordering::Release);
                Duration::from_secs(60)
            }
            Err(e) => {
                tracing::warn!("API Priority and Fairness bootstrap: {e}");
                if done.load(std::sync::atomic::Ordering::Acquire) {
                    Duration::from_secs(60)
                } else {
                    Duration::from_secs(1)
                }
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}
