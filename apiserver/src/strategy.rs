//! Per-resource strategies, the way Kubernetes' registry is organised: defaulting, validation,
//! the spec/status split and generation bumps. Each function dispatches on the resource; resources
//! without special rules get the common metadata checks only.

use serde_json::{Value, json};

use crate::object::{meta, meta_str};
use crate::resources::Resource;
use crate::selectors::{valid_dns_label, valid_qualified_name_part};
use crate::status::{ApiError, Cause};

/// Whether the resource keeps `.status` apart from the main endpoint (a `/status` subresource).
pub fn has_status_split(res: &Resource) -> bool {
    res.has_sub(crate::resources::Sub::Status)
}

/// Whether `metadata.generation` is maintained (resources with a spec).
fn tracks_generation(res: &Resource) -> bool {
    matches!(
        res.kind,
        "Deployment"
            | "ReplicaSet"
            | "StatefulSet"
            | "DaemonSet"
            | "Job"
            | "CronJob"
            | "ReplicationController"
            | "Pod"
            | "Service"
            | "PersistentVolumeClaim"
            | "Ingress"
            | "NetworkPolicy"
            | "PodDisruptionBudget"
            | "PriorityClass"
            | "ResourceQuota"
            | "EndpointSlice"
            | "ValidatingAdmissionPolicy"
            | "ValidatingAdmissionPolicyBinding"
    )
}

/// A DNS-1123 subdomain: lower-case labels joined by dots, at most 253 characters.
pub fn valid_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            let b = l.as_bytes();
            !b.is_empty()
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        })
}

fn name_rule(res: &Resource) -> (fn(&str) -> bool, &'static str) {
    match res.kind {
        "Namespace" => (
            valid_dns_label,
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')",
        ),
        "Service" => (
            |s: &str| valid_dns_label(s) && s.starts_with(|c: char| c.is_ascii_lowercase()),
            "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')",
        ),
        // RBAC names are path segments only.
        "Role" | "ClusterRole" | "RoleBinding" | "ClusterRoleBinding" => (
            |s: &str| {
                !s.is_empty() && s != "." && s != ".." && !s.contains('/') && !s.contains('%')
            },
            "may not contain '/' or '%' and may not be '.' or '..'",
        ),
        _ => (
            valid_dns_subdomain,
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')",
        ),
    }
}

/// A qualified name (`[prefix/]name`), as label and annotation keys must be.
pub(crate) fn valid_qualified_key(k: &str) -> bool {
    match k.rsplit_once('/') {
        Some((p, n)) => valid_dns_subdomain(p) && valid_qualified_name_part(n),
        None => valid_qualified_name_part(k),
    }
}

/// Checks that `metadata.<field>` is a map with qualified keys; returns the map.
fn checked_map<'a>(
    obj: &'a Value,
    field: &str,
    causes: &mut Vec<Cause>,
) -> Option<&'a serde_json::Map<String, Value>> {
    let m = meta(obj).get(field)?;
    let Some(m) = m.as_object() else {
        causes.push(Cause::new(
            "FieldValueInvalid",
            &format!("metadata.{field}"),
            "must be a map of strings",
        ));
        return None;
    };
    for k in m.keys().filter(|k| !valid_qualified_key(k)) {
        causes.push(Cause::new("FieldValueInvalid", &format!("metadata.{field}"), format!("Invalid value: {k:?}: name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character")));
    }
    Some(m)
}

fn validate_labels(obj: &Value, causes: &mut Vec<Cause>) {
    if let Some(labels) = checked_map(obj, "labels", causes) {
        for (k, v) in labels {
            match v.as_str() {
                Some(s) if s.is_empty() || valid_qualified_name_part(s) => {}
                _ => causes.push(Cause::new("FieldValueInvalid", &format!("metadata.labels.{k}"), format!("Invalid value: {v}: a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"))),
            }
        }
    }
    if let Some(ann) = checked_map(obj, "annotations", causes) {
        let total: usize = ann
            .iter()
            .map(|(k, v)| k.len() + v.as_str().map(str::len).unwrap_or(0))
            .sum();
        if total > 256 * 1024 {
            causes.push(Cause::new(
                "FieldValueTooLong",
                "metadata.annotations",
                "Too long: must have at most 262144 bytes",
            ));
        }
    }
}

/// Sets `path` in `obj` to `v` when it is absent or null, making the objects on the way.
/// A Job spec's pod failure policy: a pod condition pattern's status defaults to True.
fn default_failure_policy(spec: &mut Value) {
    let rules = spec
        .pointer_mut("/podFailurePolicy/rules")
        .and_then(Value::as_array_mut);
    for rule in rules.into_iter().flatten() {
        let patterns = rule
            .get_mut("onPodConditions")
            .and_then(Value::as_array_mut);
        for p in patterns.into_iter().flatten() {
            set_default(p, &["status"], json!("True"));
        }
    }
}

pub(crate) fn set_default(obj: &mut Value, path: &[&str], v: Value) {
    let mut cur = obj;
    for (i, seg) in path.iter().enumerate() {
        if !cur.is_object() {
            return;
        }
        if i == path.len() - 1 {
            if cur.get(*seg).is_none_or(Value::is_null) {
                cur[*seg] = v;
            }
            return;
        }
        if cur.get(*seg).is_none_or(Value::is_null) {
            cur[*seg] = json!({});
        }
        cur = &mut cur[*seg];
    }
}

fn default_container(c: &mut Value) {
    if c.get("imagePullPolicy").is_none_or(Value::is_null) {
        let image = c.get("image").and_then(Value::as_str).unwrap_or("");
        let last = image.rsplit('/').next().unwrap_or("");
        let tag = if image.contains('@') {
            None
        } else {
            last.split_once(':').map(|(_, t)| t)
        };
        let policy = match tag {
            None | Some("latest") if !image.contains('@') => "Always",
            _ => "IfNotPresent",
        };
        c["imagePullPolicy"] = json!(policy);
    }
    set_default(
        c,
        &["terminationMessagePath"],
        json!("/dev/termination-log"),
    );
    set_default(c, &["terminationMessagePolicy"], json!("File"));
    set_default(c, &["resources"], json!({}));
    if let Some(ports) = c.get_mut("ports").and_then(Value::as_array_mut) {
        for p in ports {
            set_default(p, &["protocol"], json!("TCP"));
        }
    }
}

/// Defaults of a pod spec, as upstream's `SetDefaults_PodSpec` and friends.
pub fn default_pod_spec(spec: &mut Value) {
    if !spec.is_object() {
        return;
    }
    set_default(spec, &["restartPolicy"], json!("Always"));
    set_default(spec, &["dnsPolicy"], json!("ClusterFirst"));
    set_default(spec, &["terminationGracePeriodSeconds"], json!(30));
    set_default(spec, &["schedulerName"], json!("default-scheduler"));
    set_default(spec, &["securityContext"], json!({}));
    set_default(spec, &["enableServiceLinks"], json!(true));
    for list in ["containers", "initContainers"] {
        if let Some(cs) = spec.get_mut(list).and_then(Value::as_array_mut) {
            for c in cs {
                default_container(c);
            }
        }
    }
}

fn default_template(obj: &mut Value) {
    if let Some(spec) = obj.pointer_mut("/spec/template/spec") {
        default_pod_spec(spec);
    }
}

/// Applies the defaults of `res` to a new or updated object.
pub fn default(res: &Resource, obj: &mut Value) {
    match res.kind {
        "Pod" => {
            if let Some(spec) = obj.get_mut("spec") {
                default_pod_spec(spec);
            }
        }
        "Namespace" => {
            set_default(obj, &["spec", "finalizers"], json!(["kubernetes"]));
            // As upstream (since 1.21): every namespace carries its name as a label, so
            // selectors can pick namespaces by name.
            let name = meta_str(obj, "name").to_string();
            if !name.is_empty() {
                let m = crate::object::meta_mut(obj);
                if !m.get("labels").is_some_and(Value::is_object) {
                    m.insert("labels".into(), json!({}));
                }
                m["labels"]["kubernetes.io/metadata.name"] = json!(name);
            }
        }
        "Service" => {
            set_default(obj, &["spec", "type"], json!("ClusterIP"));
            set_default(obj, &["spec", "sessionAffinity"], json!("None"));
            set_default(obj, &["spec", "internalTrafficPolicy"], json!("Cluster"));
            if matches!(
                obj.pointer("/spec/type").and_then(Value::as_str),
                Some("NodePort" | "LoadBalancer")
            ) {
                set_default(obj, &["spec", "externalTrafficPolicy"], json!("Cluster"));
            }
            if obj.pointer("/spec/type").and_then(Value::as_str) == Some("LoadBalancer") {
                set_default(obj, &["spec", "allocateLoadBalancerNodePorts"], json!(true));
            }
            if let Some(ports) = obj.pointer_mut("/spec/ports").and_then(Value::as_array_mut) {
                for p in ports {
                    set_default(p, &["protocol"], json!("TCP"));
                    if p.get("targetPort").is_none()
                        && let Some(port) = p.get("port").cloned()
                    {
                        p["targetPort"] = port;
                    }
                }
            }
        }
        "Deployment" => {
            set_default(obj, &["spec", "replicas"], json!(1));
            set_default(obj, &["spec", "revisionHistoryLimit"], json!(10));
            set_default(obj, &["spec", "progressDeadlineSeconds"], json!(600));
            set_default(obj, &["spec", "strategy", "type"], json!("RollingUpdate"));
            if obj.pointer("/spec/strategy/type").and_then(Value::as_str) == Some("RollingUpdate") {
                set_default(
                    obj,
                    &["spec", "strategy", "rollingUpdate", "maxUnavailable"],
                    json!("25%"),
                );
                set_default(
                    obj,
                    &["spec", "strategy", "rollingUpdate", "maxSurge"],
                    json!("25%"),
                );
            }
            default_template(obj);
        }
        "ReplicaSet" => {
            set_default(obj, &["spec", "replicas"], json!(1));
            default_template(obj);
        }
        "ReplicationController" => {
            set_default(obj, &["spec", "replicas"], json!(1));
            // As upstream's v1 defaults: the selector and the controller's own labels come
            // from the template's labels when left out.
            let labels = obj.pointer("/spec/template/metadata/labels").cloned();
            if let Some(labels) = labels.filter(|l| l.as_object().is_some_and(|m| !m.is_empty())) {
                if obj
                    .pointer("/spec/selector")
                    .and_then(Value::as_object)
                    .is_none_or(|m| m.is_empty())
                {
                    obj["spec"]["selector"] = labels.clone();
                }
                let m = crate::object::meta_mut(obj);
                if m.get("labels")
                    .and_then(Value::as_object)
                    .is_none_or(|l| l.is_empty())
                {
                    m.insert("labels".into(), labels);
                }
            }
            default_template(obj);
        }
        "StatefulSet" => {
            set_default(obj, &["spec", "replicas"], json!(1));
            set_default(obj, &["spec", "podManagementPolicy"], json!("OrderedReady"));
            set_default(obj, &["spec", "revisionHistoryLimit"], json!(10));
            // As upstream's: a strategy left out becomes RollingUpdate with a rollingUpdate of
            // its own; a rollingUpdate given or made gets partition 0.
            if obj
                .pointer("/spec/updateStrategy/type")
                .is_none_or(Value::is_null)
            {
                set_default(
                    obj,
                    &["spec", "updateStrategy", "type"],
                    json!("RollingUpdate"),
                );
                set_default(obj, &["spec", "updateStrategy", "rollingUpdate"], json!({}));
            }
            if obj
                .pointer("/spec/updateStrategy/type")
                .and_then(Value::as_str)
                == Some("RollingUpdate")
                && obj
                    .pointer("/spec/updateStrategy/rollingUpdate")
                    .is_some_and(Value::is_object)
            {
                set_default(
                    obj,
                    &["spec", "updateStrategy", "rollingUpdate", "partition"],
                    json!(0),
                );
            }
            for f in ["whenDeleted", "whenScaled"] {
                set_default(
                    obj,
                    &["spec", "persistentVolumeClaimRetentionPolicy", f],
                    json!("Retain"),
                );
            }
            if let Some(ts) = obj
                .pointer_mut("/spec/volumeClaimTemplates")
                .and_then(Value::as_array_mut)
            {
                for t in ts {
                    set_default(t, &["spec", "volumeMode"], json!("Filesystem"));
                }
            }
            default_template(obj);
        }
        "DaemonSet" => {
            set_default(obj, &["spec", "revisionHistoryLimit"], json!(10));
            set_default(
                obj,
                &["spec", "updateStrategy", "type"],
                json!("RollingUpdate"),
            );
            if obj
                .pointer("/spec/updateStrategy/type")
                .and_then(Value::as_str)
                == Some("RollingUpdate")
            {
                let ru = ["spec", "updateStrategy", "rollingUpdate"];
                set_default(obj, &[ru[0], ru[1], ru[2], "maxUnavailable"], json!(1));
                set_default(obj, &[ru[0], ru[1], ru[2], "maxSurge"], json!(0));
            }
            default_template(obj);
        }
        "PersistentVolume" => {
            set_default(
                obj,
                &["spec", "persistentVolumeReclaimPolicy"],
                json!("Retain"),
            );
            set_default(obj, &["spec", "volumeMode"], json!("Filesystem"));
        }
        "PersistentVolumeClaim" => {
            set_default(obj, &["spec", "volumeMode"], json!("Filesystem"));
        }
        "StorageClass" => {
            set_default(obj, &["reclaimPolicy"], json!("Delete"));
            set_default(obj, &["volumeBindingMode"], json!("Immediate"));
        }
        "PriorityClass" => {
            set_default(obj, &["preemptionPolicy"], json!("PreemptLowerPriority"));
        }
        "NetworkPolicy" => {
            let unset = obj
                .pointer("/spec/policyTypes")
                .is_none_or(|t| t.is_null() || t.as_array().is_some_and(Vec::is_empty));
            if unset && obj.get("spec").is_some_and(Value::is_object) {
                let mut types = vec![json!("Ingress")];
                if obj
                    .pointer("/spec/egress")
                    .and_then(Value::as_array)
                    .is_some_and(|e| !e.is_empty())
                {
                    types.push(json!("Egress"));
                }
                obj["spec"]["policyTypes"] = json!(types);
            }
            for dir in ["ingress", "egress"] {
                if let Some(rules) = obj
                    .pointer_mut(&format!("/spec/{dir}"))
                    .and_then(Value::as_array_mut)
                {
                    for r in rules {
                        if let Some(ports) = r.get_mut("ports").and_then(Value::as_array_mut) {
                            for p in ports {
                                set_default(p, &["protocol"], json!("TCP"));
                            }
                        }
                    }
                }
            }
        }
        "Job" => {
            // With a limit per index the Job-wide limit is off unless set.
            let backoff_limit = if obj
                .pointer("/spec/backoffLimitPerIndex")
                .is_some_and(|v| !v.is_null())
            {
                i32::MAX
            } else {
                6
            };
            set_default(obj, &["spec", "backoffLimit"], json!(backoff_limit));
            set_default(obj, &["spec", "completionMode"], json!("NonIndexed"));
            set_default(obj, &["spec", "suspend"], json!(false));
            // Completions default to 1 only with parallelism unset too: a parallelism alone
            // makes a work queue, done when one pod succeeds.
            let unset = |obj: &Value, f: &str| {
                obj.pointer(&format!("/spec/{f}"))
                    .is_none_or(Value::is_null)
            };
            if unset(obj, "completions") && unset(obj, "parallelism") {
                set_default(obj, &["spec", "completions"], json!(1));
            }
            set_default(obj, &["spec", "parallelism"], json!(1));
            let replacement = if unset(obj, "podFailurePolicy") {
                "TerminatingOrFailed"
            } else {
                "Failed"
            };
            set_default(obj, &["spec", "podReplacementPolicy"], json!(replacement));
            if let Some(spec) = obj.get_mut("spec") {
                default_failure_policy(spec);
            }
            default_template(obj);
        }
        "CronJob" => {
            set_default(obj, &["spec", "concurrencyPolicy"], json!("Allow"));
            set_default(obj, &["spec", "suspend"], json!(false));
            set_default(obj, &["spec", "successfulJobsHistoryLimit"], json!(3));
            set_default(obj, &["spec", "failedJobsHistoryLimit"], json!(1));
            if let Some(spec) = obj.pointer_mut("/spec/jobTemplate/spec") {
                default_failure_policy(spec);
            }
            if let Some(spec) = obj.pointer_mut("/spec/jobTemplate/spec/template/spec") {
                default_pod_spec(spec);
            }
        }
        "Secret" => {
            set_default(obj, &["type"], json!("Opaque"));
        }
        "LimitRange" => crate::limitranger::default_limit_range(obj),
        "MutatingWebhookConfiguration" => crate::webhook::config::default(obj, true),
        "ValidatingAdmissionPolicy" => crate::policy::default_policy(obj),
        "ValidatingAdmissionPolicyBinding" => crate::policy::default_binding(obj),
        "FlowSchema" => crate::flowcontrol::config::default_schema(obj),
        "PriorityLevelConfiguration" => crate::flowcontrol::config::default_level(obj),
        "ValidatingWebhookConfiguration" => crate::webhook::config::default(obj, false),
        _ => {}
    }
}

fn require(obj: &Value, pointer: &str, field: &str, causes: &mut Vec<Cause>) {
    if obj.pointer(pointer).is_none_or(Value::is_null) {
        causes.push(Cause::new("FieldValueRequired", field, "Required value"));
    }
}

fn validate_containers(spec: &Value, base: &str, causes: &mut Vec<Cause>) {
    match spec.get("containers").and_then(Value::as_array) {
        Some(cs) if !cs.is_empty() => {
            let mut seen = std::collections::HashSet::new();
            for (i, c) in cs.iter().enumerate() {
                let n = c.get("name").and_then(Value::as_str).unwrap_or("");
                if n.is_empty() {
                    causes.push(Cause::new(
                        "FieldValueRequired",
                        &format!("{base}.containers[{i}].name"),
                        "Required value",
                    ));
                } else if !valid_dns_label(n) {
                    causes.push(Cause::new("FieldValueInvalid", &format!("{base}.containers[{i}].name"), format!("Invalid value: {n:?}: a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character")));
                } else if !seen.insert(n.to_string()) {
                    causes.push(Cause::new(
                        "FieldValueDuplicate",
                        &format!("{base}.containers[{i}].name"),
                        format!("Duplicate value: {n:?}"),
                    ));
                }
                if c.get("image")
                    .and_then(Value::as_str)
                    .is_none_or(str::is_empty)
                {
                    causes.push(Cause::new(
                        "FieldValueRequired",
                        &format!("{base}.containers[{i}].image"),
                        "Required value",
                    ));
                }
            }
        }
        _ => causes.push(Cause::new(
            "FieldValueRequired",
            &format!("{base}.containers"),
            "Required value",
        )),
    }
    if let Some(rp) = spec.get("restartPolicy").and_then(Value::as_str)
        && !matches!(rp, "Always" | "OnFailure" | "Never")
    {
        causes.push(Cause::new(
            "FieldValueNotSupported",
            &format!("{base}.restartPolicy"),
            format!(
                "Unsupported value: {rp:?}: supported values: \"Always\", \"OnFailure\", \"Never\""
            ),
        ));
    }
}

fn validate_selector_matches_template(obj: &Value, causes: &mut Vec<Cause>) {
    let Some(sel) = obj
        .pointer("/spec/selector/matchLabels")
        .and_then(Value::as_object)
    else {
        if obj.pointer("/spec/selector").is_none() {
            causes.push(Cause::new(
                "FieldValueRequired",
                "spec.selector",
                "Required value",
            ));
        }
        return;
    };
    template_labels_match(obj, sel, causes);
}

/// The template's labels must carry every `key: value` of the selector `sel`.
fn template_labels_match(
    obj: &Value,
    sel: &serde_json::Map<String, Value>,
    causes: &mut Vec<Cause>,
) {
    let labels = obj
        .pointer("/spec/template/metadata/labels")
        .and_then(Value::as_object);
    if !sel
        .iter()
        .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
    {
        causes.push(Cause::new(
            "FieldValueInvalid",
            "spec.template.metadata.labels",
            format!(
                "Invalid value: {}: `selector` does not match template `labels`",
                serde_json::to_string(&labels).unwrap_or_default()
            ),
        ));
    }
}

/// A ReplicationController: a template whose labels its (plain map) selector matches, and
/// a replica count that is not negative.
fn validate_replication_controller(obj: &Value, causes: &mut Vec<Cause>) {
    let selector = obj.pointer("/spec/selector").and_then(Value::as_object);
    match selector {
        Some(sel) if !sel.is_empty() => {
            if obj.pointer("/spec/template").is_some() {
                template_labels_match(obj, sel, causes);
            }
        }
        _ => causes.push(Cause::new(
            "FieldValueRequired",
            "spec.selector",
            "Required value",
        )),
    }
    match obj.pointer("/spec/template/spec") {
        Some(spec) => {
            validate_containers(spec, "spec.template.spec", causes);
            if let Some(rp) = spec.get("restartPolicy").and_then(Value::as_str)
                && rp != "Always"
            {
                causes.push(Cause::new(
                    "FieldValueNotSupported",
                    "spec.template.spec.restartPolicy",
                    format!("Unsupported value: {rp:?}: supported values: \"Always\""),
                ));
            }
        }
        None => causes.push(Cause::new(
            "FieldValueRequired",
            "spec.template",
            "Required value",
        )),
    }
    check_replicas(obj, causes);
}

/// `spec.replicas` may not be negative.
fn check_replicas(obj: &Value, causes: &mut Vec<Cause>) {
    if let Some(r) = obj.pointer("/spec/replicas").and_then(Value::as_i64)
        && r < 0
    {
        causes.push(Cause::new(
            "FieldValueInvalid",
            "spec.replicas",
            format!("Invalid value: {r}: must be greater than or equal to 0"),
        ));
    }
}

/// Validates an object of `res` (after defaulting). `ns` is the request namespace.
pub fn validate(res: &Resource, obj: &Value) -> Result<(), ApiError> {
    let mut causes = Vec::new();
    let name = meta_str(obj, "name");
    let (ok, why) = name_rule(res);
    if name.is_empty() {
        if meta_str(obj, "generateName").is_empty() {
            causes.push(Cause::new(
                "FieldValueRequired",
                "metadata.name",
                "Required value: name or generateName is required",
            ));
        }
    } else if !ok(name) {
        causes.push(Cause::new(
            "FieldValueInvalid",
            "metadata.name",
            format!("Invalid value: {name:?}: {why}"),
        ));
    }
    validate_labels(obj, &mut causes);
    match res.kind {
        crate::certificates::KIND => crate::certificates::validate(obj, &mut causes),
        "RuntimeClass" => match obj.get("handler").and_then(Value::as_str) {
            None | Some("") => causes.push(Cause::new("FieldValueRequired", "handler", "Required value")),
            Some(h) if !valid_dns_label(h) => causes.push(Cause::new(
                "FieldValueInvalid",
                "handler",
                format!("Invalid value: {h:?}: a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character"),
            )),
            _ => {}
        },
        "Pod" => match obj.get("spec") {
            Some(spec) => validate_containers(spec, "spec", &mut causes),
            None => causes.push(Cause::new(
                "FieldValueRequired",
                "spec.containers",
                "Required value",
            )),
        },
        "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet" => {
            validate_selector_matches_template(obj, &mut causes);
            match obj.pointer("/spec/template/spec") {
                Some(spec) => validate_containers(spec, "spec.template.spec", &mut causes),
                None => causes.push(Cause::new(
                    "FieldValueRequired",
                    "spec.template.spec.containers",
                    "Required value",
                )),
            }
            check_replicas(obj, &mut causes);
        }
        "Job" => {
            crate::checks::job(obj, &mut causes);
            match obj.pointer("/spec/template/spec") {
                Some(spec) => {
                    validate_containers(spec, "spec.template.spec", &mut causes);
                    match spec.get("restartPolicy").and_then(Value::as_str) {
                    Some("OnFailure") | Some("Never") => {}
                    other => causes.push(Cause::new("FieldValueNotSupported", "spec.template.spec.restartPolicy", format!("Unsupported value: {:?}: supported values: \"OnFailure\", \"Never\"", other.unwrap_or("")))),
                }
                }
                None => causes.push(Cause::new(
                    "FieldValueRequired",
                    "spec.template.spec.containers",
                    "Required value",
                )),
            }
        }
        "CronJob" => {
            require(obj, "/spec/schedule", "spec.schedule", &mut causes);
            require(obj, "/spec/jobTemplate", "spec.jobTemplate", &mut causes);
            if let Some(spec) = obj.pointer("/spec/jobTemplate/spec") {
                crate::checks::job_spec(spec, "spec.jobTemplate.spec", &mut causes);
            }
        }
        "Service" => {
            let ty = obj
                .pointer("/spec/type")
                .and_then(Value::as_str)
                .unwrap_or("ClusterIP");
            if !matches!(
                ty,
                "ClusterIP" | "NodePort" | "LoadBalancer" | "ExternalName"
            ) {
                causes.push(Cause::new("FieldValueNotSupported", "spec.type", format!("Unsupported value: {ty:?}: supported values: \"ClusterIP\", \"ExternalName\", \"LoadBalancer\", \"NodePort\"")));
            }
            let headless = obj.pointer("/spec/clusterIP").and_then(Value::as_str) == Some("None");
            let ports = obj.pointer("/spec/ports").and_then(Value::as_array);
            if ty != "ExternalName" && !headless && ports.is_none_or(|p| p.is_empty()) {
                causes.push(Cause::new(
                    "FieldValueRequired",
                    "spec.ports",
                    "Required value",
                ));
            }
            for (i, p) in ports.into_iter().flatten().enumerate() {
                match p.get("port").and_then(Value::as_i64) {
                    Some(n) if (1..=65535).contains(&n) => {}
                    Some(n) => causes.push(Cause::new(
                        "FieldValueInvalid",
                        &format!("spec.ports[{i}].port"),
                        format!("Invalid value: {n}: must be between 1 and 65535, inclusive"),
                    )),
                    None => causes.push(Cause::new(
                        "FieldValueRequired",
                        &format!("spec.ports[{i}].port"),
                        "Required value",
                    )),
                }
                if ports.is_some_and(|ps| ps.len() > 1)
                    && p.get("name")
                        .and_then(Value::as_str)
                        .is_none_or(str::is_empty)
                {
                    causes.push(Cause::new(
                        "FieldValueRequired",
                        &format!("spec.ports[{i}].name"),
                        "Required value",
                    ));
                }
            }
            validate_service_port_clashes(ports.map_or(&[][..], Vec::as_slice), &mut causes);
        }
        "NetworkPolicy" => validate_network_policy(obj, &mut causes),
        "ReplicationController" => validate_replication_controller(obj, &mut causes),
        "PersistentVolume" => crate::checks::persistent_volume(obj, &mut causes),
        "PersistentVolumeClaim" => crate::checks::persistent_volume_claim(obj, &mut causes),
        "StorageClass" => crate::checks::storage_class(obj, &mut causes),
        "Ingress" => crate::checks::ingress(obj, &mut causes),
        "IngressClass" => crate::checks::ingress_class(obj, &mut causes),
        "Endpoints" => crate::checks::endpoints(obj, &mut causes),
        "EndpointSlice" => crate::checks::endpoint_slice(obj, &mut causes),
        "PodDisruptionBudget" => crate::checks::pod_disruption_budget(obj, &mut causes),
        "Role" => crate::checks::policy_rules(obj, false, &mut causes),
        "ClusterRole" => crate::checks::policy_rules(obj, true, &mut causes),
        "ConfigMap" => crate::checks::config_map(obj, &mut causes),
        "Secret" => crate::checks::secret(obj, &mut causes),
        "Lease" => {}
        "RoleBinding" | "ClusterRoleBinding" => require(obj, "/roleRef", "roleRef", &mut causes),
        "PriorityClass" => require(obj, "/value", "value", &mut causes),
        "LimitRange" => crate::limitranger::validate_limit_range(obj, &mut causes),
        "ResourceQuota" => crate::resourcequota::validate_quota(obj, &mut causes),
        "MutatingWebhookConfiguration" => crate::webhook::config::validate(obj, true, &mut causes),
        "ValidatingAdmissionPolicy" => crate::policy::validate_policy(obj, &mut causes),
        "ValidatingAdmissionPolicyBinding" => crate::policy::validate_binding(obj, &mut causes),
        "FlowSchema" => crate::flowcontrol::config::validate_schema(obj, &mut causes),
        "PriorityLevelConfiguration" => {
            crate::flowcontrol::config::validate_level(obj, &mut causes)
        }
        "ValidatingWebhookConfiguration" => {
            crate::webhook::config::validate(obj, false, &mut causes)
        }
        _ => {}
    }
    if causes.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(res.group, res.kind, name, causes))
    }
}

/// A Service's ports may not repeat a name, a port/protocol pair or a nodePort/protocol pair.
fn validate_service_port_clashes(ports: &[Value], causes: &mut Vec<Cause>) {
    let (mut names, mut pairs, mut node_ports) = (
        std::collections::HashSet::new(),
        std::collections::HashSet::new(),
        std::collections::HashSet::new(),
    );
    for (i, p) in ports.iter().enumerate() {
        let proto = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
        if let Some(n) = p
            .get("name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            && !names.insert(n.to_string())
        {
            causes.push(Cause::new(
                "FieldValueDuplicate",
                &format!("spec.ports[{i}].name"),
                format!("Duplicate value: {n:?}"),
            ));
        }
        if let Some(port) = p.get("port").and_then(Value::as_i64)
            && !pairs.insert((port, proto.to_string()))
        {
            causes.push(Cause::new(
                "FieldValueDuplicate",
                &format!("spec.ports[{i}]"),
                format!("Duplicate value: \"{port}/{proto}\""),
            ));
        }
        if let Some(np) = p
            .get("nodePort")
            .and_then(Value::as_i64)
            .filter(|n| *n != 0)
            && !node_ports.insert((np, proto.to_string()))
        {
            causes.push(Cause::new(
                "FieldValueDuplicate",
                &format!("spec.ports[{i}].nodePort"),
                format!("Duplicate value: \"{np}/{proto}\""),
            ));
        }
    }
}

/// An IPv4 or IPv6 CIDR: (address bits as u128, address length, prefix).
fn parse_cidr(s: &str) -> Option<(u128, u32, u32)> {
    let (ip, p) = s.split_once('/')?;
    let prefix: u32 = p.parse().ok()?;
    match ip.parse::<std::net::IpAddr>().ok()? {
        std::net::IpAddr::V4(a) if prefix <= 32 => Some((u32::from(a) as u128, 32, prefix)),
        std::net::IpAddr::V6(a) if prefix <= 128 => Some((u128::from(a), 128, prefix)),
        _ => None,
    }
}

fn cidr_contains(outer: (u128, u32, u32), inner: (u128, u32, u32)) -> bool {
    if outer.1 != inner.1 || inner.2 <= outer.2 {
        return false;
    }
    let shift = outer.1 - outer.2;
    let mask = if shift >= 128 { 0 } else { u128::MAX << shift };
    (outer.0 & mask) == (inner.0 & mask)
}

/// networking.k8s.io/v1 NetworkPolicy, as upstream validates it.
fn validate_network_policy(obj: &Value, causes: &mut Vec<Cause>) {
    require(obj, "/spec/podSelector", "spec.podSelector", causes);
    for (i, t) in obj
        .pointer("/spec/policyTypes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let t = t.as_str().unwrap_or("");
        if !matches!(t, "Ingress" | "Egress") {
            causes.push(Cause::new(
                "FieldValueNotSupported",
                &format!("spec.policyTypes[{i}]"),
                format!("Unsupported value: {t:?}: supported values: \"Ingress\", \"Egress\""),
            ));
        }
    }
    for (dir, peers_key) in [("ingress", "from"), ("egress", "to")] {
        let rules = obj
            .pointer(&format!("/spec/{dir}"))
            .and_then(Value::as_array);
        for (r, rule) in rules.into_iter().flatten().enumerate() {
            for (j, p) in rule
                .get("ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
            {
                let base = format!("spec.{dir}[{r}].ports[{j}]");
                let proto = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
                if !matches!(proto, "TCP" | "UDP" | "SCTP") {
                    causes.push(Cause::new("FieldValueNotSupported", &format!("{base}.protocol"), format!("Unsupported value: {proto:?}: supported values: \"SCTP\", \"TCP\", \"UDP\"")));
                }
                let port = p.get("port");
                if let Some(n) = port.and_then(Value::as_i64)
                    && !(1..=65535).contains(&n)
                {
                    causes.push(Cause::new(
                        "FieldValueInvalid",
                        &format!("{base}.port"),
                        format!("Invalid value: {n}: must be between 1 and 65535, inclusive"),
                    ));
                }
                if let Some(end) = p.get("endPort").and_then(Value::as_i64) {
                    match port.and_then(Value::as_i64) {
                        Some(start) if end < start => causes.push(Cause::new(
                            "FieldValueInvalid",
                            &format!("{base}.endPort"),
                            format!("Invalid value: {end}: must be greater than or equal to `port`"),
                        )),
                        Some(_) => {}
                        None => causes.push(Cause::new(
                            "FieldValueInvalid",
                            &format!("{base}.endPort"),
                            format!("Invalid value: {end}: may not be specified when `port` is non-numeric"),
                        )),
                    }
                }
            }
            for (j, peer) in rule
                .get(peers_key)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
            {
                let base = format!("spec.{dir}[{r}].{peers_key}[{j}]");
                let Some(block) = peer.get("ipBlock") else {
                    continue;
                };
                if peer.get("podSelector").is_some() || peer.get("namespaceSelector").is_some() {
                    causes.push(Cause::new(
                        "FieldValueForbidden",
                        &base,
                        "Forbidden: may not specify more than 1 peer type",
                    ));
                }
                let cidr = block.get("cidr").and_then(Value::as_str).unwrap_or("");
                let Some(outer) = parse_cidr(cidr) else {
                    causes.push(Cause::new("FieldValueInvalid", &format!("{base}.ipBlock.cidr"), format!("Invalid value: {cidr:?}: must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)")));
                    continue;
                };
                for (k, e) in block
                    .get("except")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .enumerate()
                {
                    let e = e.as_str().unwrap_or("");
                    match parse_cidr(e) {
                        None => causes.push(Cause::new("FieldValueInvalid", &format!("{base}.ipBlock.except[{k}]"), format!("Invalid value: {e:?}: must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)"))),
                        Some(inner) if !cidr_contains(outer, inner) => causes.push(Cause::new(
                            "FieldValueInvalid",
                            &format!("{base}.ipBlock.except[{k}]"),
                            format!("Invalid value: {e:?}: must be a strict subset of `cidr`"),
                        )),
                        Some(_) => {}
                    }
                }
            }
        }
    }
}

/// Validates the object an update writes, ratcheting as upstream does for rules that tighten:
/// what `old` already broke the same way does not refuse the update (a status update, or a
/// finalizer's removal, of an object stored before a check existed goes through).
pub fn validate_changed(res: &Resource, old: &Value, new: &Value) -> Result<(), ApiError> {
    let Err(mut e) = validate(res, new) else {
        return Ok(());
    };
    if let Err(before) = validate(res, old) {
        let known = |c: &Cause| {
            before
                .details
                .causes
                .iter()
                .any(|b| b.field == c.field && b.message == c.message)
        };
        e.details.causes.retain(|c| !known(c));
        if e.details.causes.is_empty() {
            return Ok(());
        }
        let name = meta_str(new, "name");
        return Err(ApiError::invalid(
            res.group,
            res.kind,
            name,
            std::mem::take(&mut e.details.causes),
        ));
    }
    Err(e)
}

/// Validates an update against the old object: immutable fields.
pub fn validate_update(res: &Resource, old: &Value, new: &Value) -> Result<(), ApiError> {
    let mut causes = Vec::new();
    // Kinds whose fields are compared whole: both sides get the defaults, so that neither an
    // object stored before a default existed nor a status update (whose object is not
    // defaulted) takes a default's arrival for a change.
    let (defaulted_old, defaulted_new);
    let (old, new) = if matches!(
        res.kind,
        "StatefulSet" | "PersistentVolume" | "PersistentVolumeClaim" | "StorageClass" | "Secret"
    ) {
        let (mut o, mut n) = (old.clone(), new.clone());
        default(res, &mut o);
        default(res, &mut n);
        (defaulted_old, defaulted_new) = (o, n);
        (&defaulted_old, &defaulted_new)
    } else {
        (old, new)
    };
    let name = meta_str(new, "name");
    let immutable: &[(&str, &str)] = match res.kind {
        "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet" => {
            &[("/spec/selector", "spec.selector")]
        }
        "Job" => &[
            ("/spec/selector", "spec.selector"),
            ("/spec/template", "spec.template"),
            ("/spec/completionMode", "spec.completionMode"),
            ("/spec/podFailurePolicy", "spec.podFailurePolicy"),
            ("/spec/backoffLimitPerIndex", "spec.backoffLimitPerIndex"),
            ("/spec/successPolicy", "spec.successPolicy"),
        ],
        "RoleBinding" | "ClusterRoleBinding" => &[("/roleRef", "roleRef")],
        "PriorityClass" => &[("/value", "value")],
        "RuntimeClass" => &[("/handler", "handler")],
        _ => &[],
    };
    for (ptr, field) in immutable {
        if old.pointer(ptr) != new.pointer(ptr) {
            causes.push(Cause::new(
                "FieldValueInvalid",
                field,
                "Invalid value: field is immutable",
            ));
        }
    }
    if res.kind == crate::certificates::KIND {
        crate::certificates::validate_update(old, new, &mut causes);
    }
    crate::checks::update(res.kind, old, new, &mut causes);
    if matches!(res.kind, "ConfigMap" | "Secret") && old.get("immutable") == Some(&json!(true)) {
        for f in ["data", "binaryData", "stringData"] {
            if old.get(f) != new.get(f) {
                causes.push(Cause::new(
                    "FieldValueForbidden",
                    f,
                    "Forbidden: field is immutable when `immutable` is set",
                ));
            }
        }
    }
    if res.kind == "Pod" {
        let strip = |v: &Value| {
            let mut s = v.get("spec").cloned().unwrap_or(Value::Null);
            if let Some(m) = s.as_object_mut() {
                m.remove("activeDeadlineSeconds");
                m.remove("tolerations");
                m.remove("schedulingGates");
            }
            for list in ["containers", "initContainers"] {
                if let Some(cs) = s.get_mut(list).and_then(Value::as_array_mut) {
                    for c in cs {
                        if let Some(m) = c.as_object_mut() {
                            m.remove("image");
                        }
                    }
                }
            }
            s
        };
        if strip(old) != strip(new) {
            causes.push(Cause::new("FieldValueForbidden", "spec", "Forbidden: pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)"));
        }
    }
    if causes.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(res.group, res.kind, name, causes))
    }
}

/// Fields that are neither metadata nor status: what a generation bump watches.
fn spec_part(obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Some(m) = v.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
        m.remove("apiVersion");
        m.remove("kind");
    }
    v
}

/// A Secret's write-only `stringData` merged into `data` (base64), as upstream's conversion
/// does: its keys win over `data`'s, and it is never stored.
pub fn fold_string_data(obj: &mut Value) {
    use base64::Engine;
    let Some(sd) = obj.as_object_mut().and_then(|m| m.remove("stringData")) else {
        return;
    };
    let Some(sd) = sd.as_object() else {
        return;
    };
    if sd.is_empty() {
        return;
    }
    if !obj.get("data").is_some_and(Value::is_object) {
        obj["data"] = json!({});
    }
    for (k, v) in sd {
        let text = v.as_str().unwrap_or_default();
        obj["data"][k] = json!(base64::engine::general_purpose::STANDARD.encode(text));
    }
}

/// The defaults of a new object: [`default`], and a pod's requests from its limits.
pub fn default_for_create(res: &Resource, obj: &mut Value) {
    default(res, obj);
    if res.kind == "Pod" {
        default_requests_from_limits(obj);
    }
}

/// A new pod's container requests default to its limits, as upstream's `SetDefaults_Pod`
/// (on create only: pods stored before this rule keep their spec, which updates may not
/// change).
fn default_requests_from_limits(pod: &mut Value) {
    let Some(spec) = pod.get_mut("spec") else {
        return;
    };
    for list in ["containers", "initContainers"] {
        for c in spec
            .get_mut(list)
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            let Some(limits) = c
                .pointer("/resources/limits")
                .and_then(Value::as_object)
                .cloned()
            else {
                continue;
            };
            let r = &mut c["resources"];
            if !r.get("requests").is_some_and(Value::is_object) {
                r["requests"] = json!({});
            }
            for (k, v) in limits {
                if r["requests"].get(&k).is_none() {
                    r["requests"][k] = v;
                }
            }
        }
    }
}

/// Prepares a new object: clears status where the client may not set it, sets generation and
/// resource-specific initial status.
pub fn prepare_for_create(res: &Resource, obj: &mut Value) {
    if res.kind == "Secret" {
        fold_string_data(obj);
    }
    if has_status_split(res)
        && res.kind != "Node"
        && let Some(m) = obj.as_object_mut()
    {
        m.remove("status");
    }
    if tracks_generation(res) {
        crate::object::set_meta(obj, "generation", json!(1));
    }
    match res.kind {
        "Namespace" => obj["status"] = json!({"phase": "Active"}),
        // Their defaulted phase (upstream defaults it when the object is read).
        "PersistentVolume" | "PersistentVolumeClaim" => obj["status"] = json!({"phase": "Pending"}),
        "Pod" => {
            obj["status"] = json!({"phase": "Pending", "qosClass": qos_class(obj)});
            let gated = obj
                .pointer("/spec/schedulingGates")
                .and_then(Value::as_array)
                .is_some_and(|g| !g.is_empty());
            if gated {
                // As upstream's pod strategy: a gated pod says why it is not being scheduled.
                obj["status"]["conditions"] = json!([{
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "SchedulingGated",
                    "message": "Scheduling is blocked due to non-empty scheduling gates",
                    "lastProbeTime": null,
                    "lastTransitionTime": crate::object::now_rfc3339(),
                }]);
            }
            default_toleration_seconds(obj);
        }
        "Service" => obj["status"] = json!({"loadBalancer": {}}),
        "Deployment"
        | "ReplicaSet"
        | "StatefulSet"
        | "DaemonSet"
        | "Job"
        | "CronJob"
        | "ReplicationController" => {
            obj["status"] = json!({});
        }
        _ => {}
    }
    if res.kind == "Job" {
        generate_job_selector(obj);
    }
}

/// As upstream's DefaultTolerationSeconds admission plugin: a pod that does not tolerate the
/// `not-ready` / `unreachable` NoExecute taints gets tolerations for them of 300 s, so it is
/// evicted five minutes after its node fails rather than at once.
fn default_toleration_seconds(pod: &mut Value) {
    let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    let tolerations = spec.entry("tolerations").or_insert_with(|| json!([]));
    let Some(list) = tolerations.as_array_mut() else {
        return;
    };
    for key in [
        "node.kubernetes.io/not-ready",
        "node.kubernetes.io/unreachable",
    ] {
        let covered = list.iter().any(|t| {
            let effect = t.get("effect").and_then(Value::as_str).unwrap_or("");
            let tkey = t.get("key").and_then(Value::as_str).unwrap_or("");
            let exists = t.get("operator").and_then(Value::as_str) == Some("Exists");
            (effect.is_empty() || effect == "NoExecute")
                && (tkey == key || (tkey.is_empty() && exists))
        });
        if !covered {
            list.push(json!({"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}));
        }
    }
}

/// As upstream's Job strategy: unless `spec.manualSelector` is true, the pod template is labelled
/// with the Job's UID and name and the selector is generated to match the UID.
fn generate_job_selector(obj: &mut Value) {
    if obj.pointer("/spec/manualSelector").and_then(Value::as_bool) == Some(true) {
        return;
    }
    let uid = crate::object::meta_str(obj, "uid").to_string();
    let name = crate::object::meta_str(obj, "name").to_string();
    if uid.is_empty() {
        return;
    }
    let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    if spec.get("selector").is_some_and(|s| !s.is_null()) {
        return;
    }
    let mut labels = serde_json::Map::new();
    labels.insert("batch.kubernetes.io/controller-uid".into(), json!(uid));
    labels.insert("controller-uid".into(), json!(uid));
    if !name.is_empty() {
        labels.insert("batch.kubernetes.io/job-name".into(), json!(name));
        labels.insert("job-name".into(), json!(name));
    }
    spec.insert(
        "selector".into(),
        json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}),
    );
    let template = spec
        .entry("template")
        .or_insert_with(|| json!({}))
        .as_object_mut();
    if let Some(t) = template {
        let meta = t.entry("metadata").or_insert_with(|| json!({}));
        if let Some(m) = meta.as_object_mut() {
            let l = m.entry("labels").or_insert_with(|| json!({}));
            if let Some(l) = l.as_object_mut() {
                for (k, v) in labels {
                    l.insert(k, v);
                }
            }
        }
    }
}

/// Prepares an update of the main resource: keeps the old status where status is split off,
/// bumps generation on spec changes.
pub fn prepare_for_update(res: &Resource, old: &Value, new: &mut Value) {
    if res.kind == "Secret" {
        fold_string_data(new);
    }
    if has_status_split(res) {
        match old.get("status") {
            Some(s) => new["status"] = s.clone(),
            None => {
                if let Some(m) = new.as_object_mut() {
                    m.remove("status");
                }
            }
        }
    }
    if tracks_generation(res) {
        let g = meta(old)
            .get("generation")
            .and_then(Value::as_i64)
            .unwrap_or(1);
        // An EndpointSlice's labels count as content too (its Service and address family
        // live there), as upstream's strategy has it.
        let labels_changed =
            res.kind == "EndpointSlice" && meta(old).get("labels") != meta(new).get("labels");
        let g = if spec_part(old) != spec_part(new) || labels_changed {
            g + 1
        } else {
            g
        };
        crate::object::set_meta(new, "generation", json!(g));
    }
}

/// Prepares an update through `/status`: only `.status` (and, as upstream, nothing of the spec or
/// metadata other than what the old object had) changes.
pub fn prepare_for_status_update(old: &Value, new: &mut Value) {
    let status = new.get("status").cloned();
    let mut merged = old.clone();
    match status {
        Some(s) => merged["status"] = s,
        None => {
            if let Some(m) = merged.as_object_mut() {
                m.remove("status");
            }
        }
    }
    *new = merged;
}

/// The pod QoS class from its containers' requests and limits.
pub fn qos_class(pod: &Value) -> &'static str {
    let cs: Vec<&Value> = ["containers", "initContainers"]
        .iter()
        .filter_map(|l| pod.pointer(&format!("/spec/{l}")).and_then(Value::as_array))
        .flatten()
        .collect();
    let mut any = false;
    let mut guaranteed = true;
    for c in &cs {
        let req = c.pointer("/resources/requests").and_then(Value::as_object);
        let lim = c.pointer("/resources/limits").and_then(Value::as_object);
        if req.is_some_and(|r| !r.is_empty()) || lim.is_some_and(|l| !l.is_empty()) {
            any = true;
        }
        for r in ["cpu", "memory"] {
            let l = lim.and_then(|l| l.get(r));
            let q = req.and_then(|q| q.get(r)).or(l);
            if l.is_none() || q != l {
                guaranteed = false;
            }
        }
    }
    if !any {
        "BestEffort"
    } else if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

/// The field selector fields a resource supports (beyond metadata.name/namespace).
pub fn field_selector_fields(res: &Resource) -> &'static [&'static str] {
    match res.kind {
        "Pod" => &[
            "metadata.name",
            "metadata.namespace",
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ],
        "Event" => &[
            "metadata.name",
            "metadata.namespace",
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
            "regarding.kind",
            "regarding.namespace",
            "regarding.name",
            "regarding.uid",
            "reportingController",
        ],
        "Node" => &["metadata.name", "spec.unschedulable"],
        "Service" => &[
            "metadata.name",
            "metadata.namespace",
            "spec.clusterIP",
            "spec.type",
        ],
        "CertificateSigningRequest" => &["metadata.name", "spec.signerName"],
        "Namespace" => &["metadata.name", "status.phase"],
        "Secret" => &["metadata.name", "metadata.namespace", "type"],
        "ReplicaSet" | "ReplicationController" => {
            &["metadata.name", "metadata.namespace", "status.replicas"]
        }
        "Job" => &["metadata.name", "metadata.namespace", "status.successful"],
        // `name` is a leftover upstream keeps for compatibility.
        "PersistentVolumeClaim" => &["metadata.name", "metadata.namespace", "name"],
        "PersistentVolume" => &["metadata.name", "name"],
        _ => &["metadata.name", "metadata.namespace"],
    }
}

/// The value of a selectable field of `obj` as upstream's field sets give it: a few fields are
/// not at their JSON path (a Job's `status.successful` is its `status.succeeded`, an Event's
/// `source` its `source.component`, a volume's or claim's `name` its `metadata.name`), and
/// booleans and counts left unset read as `false` and `0`.
pub fn field_value(res: &Resource, obj: &Value, field: &str) -> String {
    let path = match (res.kind, field) {
        ("Job", "status.successful") => "status.succeeded",
        ("Event", "source") => "source.component",
        ("PersistentVolume" | "PersistentVolumeClaim", "name") => "metadata.name",
        _ => field,
    };
    let v = crate::selectors::field_value(obj, path);
    if !v.is_empty() {
        return v;
    }
    match (res.kind, field) {
        ("Pod", "spec.hostNetwork") | ("Node", "spec.unschedulable") => "false".into(),
        ("Job", "status.successful")
        | ("ReplicaSet" | "ReplicationController", "status.replicas") => "0".into(),
        _ => v,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_of_workloads_storage_and_policies_are_upstreams() {
        let r = |g: &str, v: &str, n: &str| crate::resources::find(g, v, n).unwrap();
        let mut ds = json!({"spec": {"template": {"spec": {"containers": []}}}});
        default(r("apps", "v1", "daemonsets"), &mut ds);
        assert_eq!(
            ds["spec"]["updateStrategy"]["rollingUpdate"],
            json!({"maxUnavailable": 1, "maxSurge": 0})
        );
        let mut sts = json!({"spec": {"volumeClaimTemplates": [{"spec": {}}], "template": {"spec": {"containers": []}}}});
        default(r("apps", "v1", "statefulsets"), &mut sts);
        assert_eq!(
            sts["spec"]["updateStrategy"]["rollingUpdate"]["partition"],
            0
        );
        assert_eq!(
            sts["spec"]["persistentVolumeClaimRetentionPolicy"],
            json!({"whenDeleted": "Retain", "whenScaled": "Retain"})
        );
        assert_eq!(
            sts["spec"]["volumeClaimTemplates"][0]["spec"]["volumeMode"],
            "Filesystem"
        );
        let mut rc = json!({"metadata": {"name": "rc"}, "spec": {"template": {"metadata": {"labels": {"app": "a"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}});
        let rcs = r("", "v1", "replicationcontrollers");
        default(rcs, &mut rc);
        assert_eq!(rc["spec"]["selector"], json!({"app": "a"}));
        assert_eq!(rc["metadata"]["labels"], json!({"app": "a"}));
        assert!(validate(rcs, &rc).is_ok());
        rc["spec"]["selector"] = json!({"app": "b"});
        assert!(validate(rcs, &rc).is_err());
        let pvs = r("", "v1", "persistentvolumes");
        let mut pv = json!({"spec": {}, "status": {"phase": "Bound"}});
        default(pvs, &mut pv);
        assert_eq!(pv["spec"]["persistentVolumeReclaimPolicy"], "Retain");
        prepare_for_create(pvs, &mut pv);
        assert_eq!(pv["status"]["phase"], "Pending");
        let mut sc = json!({"provisioner": "p"});
        default(r("storage.k8s.io", "v1", "storageclasses"), &mut sc);
        assert_eq!(
            (
                sc["reclaimPolicy"].as_str(),
                sc["volumeBindingMode"].as_str()
            ),
            (Some("Delete"), Some("Immediate"))
        );
        let mut np = json!({"spec": {"podSelector": {}, "egress": [{"ports": [{"port": 53}]}]}});
        default(r("networking.k8s.io", "v1", "networkpolicies"), &mut np);
        assert_eq!(np["spec"]["policyTypes"], json!(["Ingress", "Egress"]));
        assert_eq!(np["spec"]["egress"][0]["ports"][0]["protocol"], "TCP");
        let mut svc = json!({"metadata": {"name": "1abc"}, "spec": {"type": "NodePort", "ports": [{"port": 80}]}});
        let svcs = r("", "v1", "services");
        default(svcs, &mut svc);
        assert_eq!(svc["spec"]["externalTrafficPolicy"], "Cluster");
        let e = validate(svcs, &svc).unwrap_err();
        assert!(e.message.contains("DNS-1035"), "{}", e.message);
    }

    #[test]
    fn selectable_fields_read_as_upstream_field_sets_give_them() {
        let r = |g: &str, v: &str, n: &str| crate::resources::find(g, v, n).unwrap();
        let node = r("", "v1", "nodes");
        assert_eq!(field_value(node, &json!({}), "spec.unschedulable"), "false");
        assert_eq!(
            field_value(
                node,
                &json!({"spec": {"unschedulable": true}}),
                "spec.unschedulable"
            ),
            "true"
        );
        let pods = r("", "v1", "pods");
        assert_eq!(
            field_value(pods, &json!({"spec": {}}), "spec.hostNetwork"),
            "false"
        );
        assert_eq!(field_value(pods, &json!({}), "spec.nodeName"), "");
        let jobs = r("batch", "v1", "jobs");
        assert_eq!(field_value(jobs, &json!({}), "status.successful"), "0");
        assert_eq!(
            field_value(
                jobs,
                &json!({"status": {"succeeded": 3}}),
                "status.successful"
            ),
            "3"
        );
        let rs = r("apps", "v1", "replicasets");
        assert_eq!(
            field_value(rs, &json!({"status": {}}), "status.replicas"),
            "0"
        );
        let events = r("", "v1", "events");
        let ev = json!({"source": {"component": "kubelet", "host": "n1"}});
        assert_eq!(field_value(events, &ev, "source"), "kubelet");
        let pvc = r("", "v1", "persistentvolumeclaims");
        assert_eq!(
            field_value(pvc, &json!({"metadata": {"name": "c"}}), "name"),
            "c"
        );
        let svc = r("", "v1", "services");
        assert!(field_selector_fields(svc).contains(&"spec.clusterIP"));
        let sel = crate::selectors::FieldSelector::parse(
            "spec.type=ClusterIP,spec.clusterIP!=None",
            field_selector_fields(svc),
        )
        .unwrap();
        assert!(sel.matches_object(
            svc,
            &json!({"spec": {"type": "ClusterIP", "clusterIP": "10.96.0.1"}})
        ));
        assert!(!sel.matches_object(
            svc,
            &json!({"spec": {"type": "ClusterIP", "clusterIP": "None"}})
        ));
    }

    #[test]
    fn secret_string_data_folds_into_data() {
        let mut s =
            json!({"data": {"a": "eA==", "b": "eQ=="}, "stringData": {"b": "new", "c": "s3cr3t"}});
        fold_string_data(&mut s);
        assert_eq!(
            s,
            json!({"data": {"a": "eA==", "b": "bmV3", "c": "czNjcjN0"}})
        );
        let mut only = json!({"stringData": {"k": "v"}});
        fold_string_data(&mut only);
        assert_eq!(only, json!({"data": {"k": "dg=="}}));
    }
    use crate::resources::find;

    #[test]
    fn pod_defaults_and_validation() {
        let pods = find("", "v1", "pods").unwrap();
        let mut p = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "nginx"}, {"name": "d", "image": "busybox:1.36"}]}});
        default(pods, &mut p);
        assert_eq!(p["spec"]["restartPolicy"], "Always");
        assert_eq!(p["spec"]["containers"][0]["imagePullPolicy"], "Always");
        assert_eq!(
            p["spec"]["containers"][1]["imagePullPolicy"],
            "IfNotPresent"
        );
        validate(pods, &p).unwrap();
        let bad = json!({"metadata": {"name": "Bad_Name"}, "spec": {"containers": []}});
        let e = validate(pods, &bad).unwrap_err();
        assert_eq!(e.code, 422);
        let fields: Vec<_> = e.details.causes.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(fields, ["metadata.name", "spec.containers"]);
    }

    #[test]
    fn service_port_clashes_and_network_policies_are_refused() {
        let svc = find("", "v1", "services").unwrap();
        let clash = json!({"metadata": {"name": "s"}, "spec": {"ports": [
            {"name": "a", "port": 80, "nodePort": 30080},
            {"name": "a", "port": 80, "nodePort": 30080},
            {"name": "b", "port": 80, "protocol": "UDP"},
        ]}});
        let msg = format!("{:?}", validate(svc, &clash).unwrap_err());
        assert!(msg.contains("spec.ports[1].name"), "{msg}");
        assert!(msg.contains("80/TCP"), "{msg}");
        assert!(msg.contains("spec.ports[1].nodePort"), "{msg}");
        assert!(
            !msg.contains("spec.ports[2]"),
            "UDP 80 is another port: {msg}"
        );

        let np = find("networking.k8s.io", "v1", "networkpolicies").unwrap();
        let ok = json!({"metadata": {"name": "p"}, "spec": {"podSelector": {},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}],
                "ports": [{"port": 80, "endPort": 90}, {"port": "http"}]}]}});
        assert!(validate(np, &ok).is_ok());
        let bad = json!({"metadata": {"name": "p"}, "spec": {"podSelector": {},
            "policyTypes": ["Sideways"],
            "ingress": [{"from": [
                {"ipBlock": {"cidr": "10.0.0.0/33"}},
                {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["11.0.0.0/16", "10.0.0.0/8"]},
                 "podSelector": {}},
            ], "ports": [{"port": 90, "endPort": 80}, {"port": "http", "endPort": 90},
                {"protocol": "ICMP"}]}]}});
        let msg = format!("{:?}", validate(np, &bad).unwrap_err());
        for field in [
            "spec.policyTypes[0]",
            "spec.ingress[0].from[0].ipBlock.cidr",
            "spec.ingress[0].from[1].ipBlock.except[0]",
            "spec.ingress[0].from[1].ipBlock.except[1]",
            "spec.ingress[0].ports[0].endPort",
            "spec.ingress[0].ports[1].endPort",
            "spec.ingress[0].ports[2].protocol",
        ] {
            assert!(msg.contains(field), "{field} in {msg}");
        }
        assert!(msg.contains("more than 1 peer type"), "{msg}");
        let no_selector = json!({"metadata": {"name": "p"}, "spec": {}});
        assert!(validate(np, &no_selector).is_err());
    }

    #[test]
    fn generation_bumps_only_on_spec_changes() {
        let d = find("apps", "v1", "deployments").unwrap();
        let old = json!({"metadata": {"name": "d", "generation": 3}, "spec": {"replicas": 1}, "status": {"replicas": 1}});
        let mut same =
            json!({"metadata": {"name": "d", "labels": {"a": "b"}}, "spec": {"replicas": 1}});
        prepare_for_update(d, &old, &mut same);
        assert_eq!(same["metadata"]["generation"], 3);
        assert_eq!(same["status"]["replicas"], 1);
        let mut changed = json!({"metadata": {"name": "d"}, "spec": {"replicas": 2}});
        prepare_for_update(d, &old, &mut changed);
        assert_eq!(changed["metadata"]["generation"], 4);

        // An EndpointSlice has no spec: its content and its labels bump generation.
        let s = find("discovery.k8s.io", "v1", "endpointslices").unwrap();
        let mut created =
            json!({"metadata": {"name": "s"}, "addressType": "IPv4", "endpoints": []});
        prepare_for_create(s, &mut created);
        assert_eq!(created["metadata"]["generation"], 1);
        let mut annotated = created.clone();
        annotated["metadata"]["annotations"] = json!({"a": "b"});
        prepare_for_update(s, &created, &mut annotated);
        assert_eq!(annotated["metadata"]["generation"], 1);
        let mut relabelled = created.clone();
        relabelled["metadata"]["labels"] = json!({"a": "b"});
        prepare_for_update(s, &created, &mut relabelled);
        assert_eq!(relabelled["metadata"]["generation"], 2);
        let mut filled = created.clone();
        filled["endpoints"] = json!([{"addresses": ["10.0.0.1"]}]);
        prepare_for_update(s, &created, &mut filled);
        assert_eq!(filled["metadata"]["generation"], 2);
    }
}
