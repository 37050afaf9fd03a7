//! Quota scopes: which objects a ResourceQuota with `scopes` or a `scopeSelector` applies to.
//! Scopes describe pods (Terminating, NotTerminating, BestEffort, NotBestEffort, PriorityClass,
//! CrossNamespacePodAffinity); a scoped quota therefore tracks pods only.

use k8s_openapi::api::core::v1::{Pod, PodSpec, ResourceQuotaSpec};

/// One scope requirement: the scope, the operator and its values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    /// The scope name.
    pub scope: String,
    /// `In`, `NotIn`, `Exists` or `DoesNotExist`.
    pub operator: String,
    /// Values for `In`/`NotIn`.
    pub values: Vec<String>,
}

/// The scope requirements of a quota: each of `scopes` as `Exists`, then the selector's.
pub fn requirements(spec: &ResourceQuotaSpec) -> Vec<Requirement> {
    let mut out: Vec<Requirement> = spec
        .scopes
        .iter()
        .flatten()
        .map(|s| Requirement {
            scope: s.clone(),
            operator: "Exists".into(),
            values: Vec::new(),
        })
        .collect();
    for r in spec
        .scope_selector
        .iter()
        .flat_map(|s| s.match_expressions.iter().flatten())
    {
        out.push(Requirement {
            scope: r.scope_name.clone(),
            operator: r.operator.clone(),
            values: r.values.clone().unwrap_or_default(),
        });
    }
    out
}

/// Whether a quota has scopes (and so tracks pods only).
pub fn is_scoped(spec: &ResourceQuotaSpec) -> bool {
    spec.scopes.as_ref().is_some_and(|s| !s.is_empty())
        || spec
            .scope_selector
            .as_ref()
            .and_then(|s| s.match_expressions.as_ref())
            .is_some_and(|e| !e.is_empty())
}

/// A pod with an active deadline is Terminating.
fn terminating(spec: &PodSpec) -> bool {
    spec.active_deadline_seconds.is_some_and(|s| s >= 0)
}

/// A pod is BestEffort when no container (app or init) requests or limits cpu or memory.
pub fn best_effort(spec: &PodSpec) -> bool {
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .all(|c| {
            let r = c.resources.as_ref();
            ["cpu", "memory"].iter().all(|k| {
                r.and_then(|r| r.requests.as_ref())
                    .is_none_or(|m| !m.contains_key(*k))
                    && r.and_then(|r| r.limits.as_ref())
                        .is_none_or(|m| !m.contains_key(*k))
            })
        })
}

/// Whether the pod's affinity names other namespaces (a namespace list or selector on any
/// pod (anti-)affinity term).
fn cross_namespace_affinity(spec: &PodSpec) -> bool {
    let Some(a) = spec.affinity.as_ref() else {
        return false;
    };
    let terms =
        |req: Option<&Vec<k8s_openapi::api::core::v1::PodAffinityTerm>>,
         pref: Option<&Vec<k8s_openapi::api::core::v1::WeightedPodAffinityTerm>>| {
            req.into_iter()
                .flatten()
                .chain(pref.into_iter().flatten().map(|w| &w.pod_affinity_term))
                .any(|t| {
                    t.namespaces.as_ref().is_some_and(|n| !n.is_empty())
                        || t.namespace_selector.is_some()
                })
        };
    a.pod_affinity.as_ref().is_some_and(|p| {
        terms(
            p.required_during_scheduling_ignored_during_execution
                .as_ref(),
            p.preferred_during_scheduling_ignored_during_execution
                .as_ref(),
        )
    }) || a.pod_anti_affinity.as_ref().is_some_and(|p| {
        terms(
            p.required_during_scheduling_ignored_during_execution
                .as_ref(),
            p.preferred_during_scheduling_ignored_during_execution
                .as_ref(),
        )
    })
}

/// Whether `pod` meets one requirement. The PriorityClass scope compares the pod's class name
/// (empty when it has none) with `In`/`NotIn`; `Exists` asks for a class and `DoesNotExist`
/// for none. The other scopes are properties of the pod.
fn pod_meets(r: &Requirement, pod: &Pod) -> bool {
    let default = PodSpec::default();
    let spec = pod.spec.as_ref().unwrap_or(&default);
    match r.scope.as_str() {
        "Terminating" => terminating(spec),
        "NotTerminating" => !terminating(spec),
        "BestEffort" => best_effort(spec),
        "NotBestEffort" => !best_effort(spec),
        "CrossNamespacePodAffinity" => cross_namespace_affinity(spec),
        "PriorityClass" => {
            let class = spec.priority_class_name.as_deref().unwrap_or("");
            match r.operator.as_str() {
                "Exists" => !class.is_empty(),
                "In" => r.values.iter().any(|v| v == class),
                "NotIn" => !r.values.iter().any(|v| v == class),
                "DoesNotExist" => class.is_empty(),
                _ => false,
            }
        }
        _ => false,
    }
}

/// Whether a quota applies to an object: an unscoped quota to every object, a scoped quota to
/// pods that meet all of its requirements.
pub fn applies(spec: &ResourceQuotaSpec, pod: Option<&Pod>) -> bool {
    if !is_scoped(spec) {
        return true;
    }
    match pod {
        Some(p) => requirements(spec).iter().all(|r| pod_meets(r, p)),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(v: serde_json::Value) -> ResourceQuotaSpec {
        serde_json::from_value(v).unwrap()
    }

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": v})).unwrap()
    }

    #[test]
    fn scopes_select_pods() {
        let plain = pod(json!({"containers": [{"name": "c"}]}));
        let sized = pod(
            json!({"containers": [{"name": "c", "resources": {"limits": {"memory": "1Gi"}}}],
                               "activeDeadlineSeconds": 60, "priorityClassName": "high"}),
        );
        let unscoped = spec(json!({"hard": {"pods": "1"}}));
        assert!(applies(&unscoped, Some(&plain)) && applies(&unscoped, None));
        let be = spec(json!({"scopes": ["BestEffort"]}));
        assert!(applies(&be, Some(&plain)) && !applies(&be, Some(&sized)));
        assert!(!applies(&be, None), "scoped quotas track pods only");
        let both = spec(json!({"scopes": ["NotBestEffort", "Terminating"]}));
        assert!(applies(&both, Some(&sized)) && !applies(&both, Some(&plain)));
        let high = spec(json!({"scopeSelector": {"matchExpressions": [
            {"scopeName": "PriorityClass", "operator": "In", "values": ["high", "mid"]}]}}));
        assert!(applies(&high, Some(&sized)) && !applies(&high, Some(&plain)));
        let not_high = spec(json!({"scopeSelector": {"matchExpressions": [
            {"scopeName": "PriorityClass", "operator": "NotIn", "values": ["high"]}]}}));
        assert!(!applies(&not_high, Some(&sized)) && applies(&not_high, Some(&plain)));
        let no_class = spec(json!({"scopeSelector": {"matchExpressions": [
            {"scopeName": "PriorityClass", "operator": "DoesNotExist"}]}}));
        assert!(!applies(&no_class, Some(&sized)) && applies(&no_class, Some(&plain)));
        let any_class = spec(json!({"scopes": ["PriorityClass"]}));
        assert!(applies(&any_class, Some(&sized)) && !applies(&any_class, Some(&plain)));
        let cross = spec(json!({"scopes": ["CrossNamespacePodAffinity"]}));
        let affine = pod(
            json!({"containers": [{"name": "c"}], "affinity": {"podAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": [
                {"topologyKey": "zone", "namespaceSelector": {}}]}}}),
        );
        assert!(applies(&cross, Some(&affine)) && !applies(&cross, Some(&plain)));
    }
}
