//! Validation of the kinds beyond the workloads, with upstream's field paths and messages:
//! storage (PersistentVolumes, claims, StorageClasses), networking (Ingresses, IngressClasses,
//! Endpoints, EndpointSlices), policy (PodDisruptionBudgets), RBAC rules, and the data of
//! ConfigMaps and Secrets (key syntax, size, and the keys each Secret type needs). Updates:
//! the fields these kinds keep for life.

use serde_json::{Map, Value};

use crate::status::Cause;

fn required(field: &str) -> Cause {
    Cause::new("FieldValueRequired", field, "Required value")
}

fn not_supported(field: &str, got: &str, supported: &[&str]) -> Cause {
    let list: Vec<String> = supported.iter().map(|s| format!("{s:?}")).collect();
    Cause::new(
        "FieldValueNotSupported",
        field,
        format!(
            "Unsupported value: {got:?}: supported values: {}",
            list.join(", ")
        ),
    )
}

fn str_at<'a>(obj: &'a Value, pointer: &str) -> Option<&'a str> {
    obj.pointer(pointer).and_then(Value::as_str)
}

fn non_empty_array<'a>(obj: &'a Value, pointer: &str) -> Option<&'a Vec<Value>> {
    obj.pointer(pointer)
        .and_then(Value::as_array)
        .filter(|a| !a.is_empty())
}

fn check_enum(obj: &Value, pointer: &str, field: &str, allowed: &[&str], causes: &mut Vec<Cause>) {
    if let Some(v) = str_at(obj, pointer)
        && !allowed.contains(&v)
    {
        causes.push(not_supported(field, v, allowed));
    }
}

const ACCESS_MODES: &[&str] = &[
    "ReadOnlyMany",
    "ReadWriteMany",
    "ReadWriteOnce",
    "ReadWriteOncePod",
];

fn check_access_modes(obj: &Value, causes: &mut Vec<Cause>) {
    match non_empty_array(obj, "/spec/accessModes") {
        None => causes.push(required("spec.accessModes")),
        Some(modes) => {
            for m in modes {
                let m = m.as_str().unwrap_or("");
                if !ACCESS_MODES.contains(&m) {
                    causes.push(not_supported("spec.accessModes", m, ACCESS_MODES));
                }
            }
            if modes.len() > 1 && modes.iter().any(|m| m == "ReadWriteOncePod") {
                causes.push(Cause::new(
                    "FieldValueForbidden",
                    "spec.accessModes",
                    "Forbidden: may not use ReadWriteOncePod with other access modes",
                ));
            }
        }
    }
}

/// The volume sources a PersistentVolume may name (exactly one of them).
const PV_SOURCES: &[&str] = &[
    "gcePersistentDisk",
    "awsElasticBlockStore",
    "hostPath",
    "glusterfs",
    "nfs",
    "rbd",
    "iscsi",
    "cinder",
    "cephfs",
    "fc",
    "flocker",
    "flexVolume",
    "azureFile",
    "vsphereVolume",
    "quobyte",
    "azureDisk",
    "photonPersistentDisk",
    "portworxVolume",
    "scaleIO",
    "local",
    "storageos",
    "csi",
];

/// Checks a PersistentVolume.
pub fn persistent_volume(obj: &Value, causes: &mut Vec<Cause>) {
    check_access_modes(obj, causes);
    if obj.pointer("/spec/capacity/storage").is_none() {
        causes.push(required("spec.capacity"));
    }
    let sources = PV_SOURCES
        .iter()
        .filter(|s| {
            obj.pointer(&format!("/spec/{s}"))
                .is_some_and(Value::is_object)
        })
        .count();
    match sources {
        0 => causes.push(Cause::new(
            "FieldValueRequired",
            "spec",
            "Required value: must specify a volume type",
        )),
        1 => {}
        _ => causes.push(Cause::new(
            "FieldValueForbidden",
            "spec",
            "Forbidden: may not specify more than 1 volume type",
        )),
    }
    check_enum(
        obj,
        "/spec/persistentVolumeReclaimPolicy",
        "spec.persistentVolumeReclaimPolicy",
        &["Delete", "Recycle", "Retain"],
        causes,
    );
    check_enum(
        obj,
        "/spec/volumeMode",
        "spec.volumeMode",
        &["Block", "Filesystem"],
        causes,
    );
    if obj.pointer("/spec/local").is_some_and(Value::is_object)
        && obj.pointer("/spec/nodeAffinity").is_none()
    {
        causes.push(Cause::new(
            "FieldValueRequired",
            "spec.nodeAffinity",
            "Required value: Local volume requires node affinity",
        ));
    }
}

/// Checks a PersistentVolumeClaim.
pub fn persistent_volume_claim(obj: &Value, causes: &mut Vec<Cause>) {
    check_access_modes(obj, causes);
    let has_source = obj
        .pointer("/spec/dataSource")
        .is_some_and(Value::is_object)
        || obj
            .pointer("/spec/dataSourceRef")
            .is_some_and(Value::is_object);
    if obj.pointer("/spec/resources/requests/storage").is_none() && !has_source {
        causes.push(required("spec.resources[storage]"));
    }
    check_enum(
        obj,
        "/spec/volumeMode",
        "spec.volumeMode",
        &["Block", "Filesystem"],
        causes,
    );
}

/// Checks a StorageClass.
pub fn storage_class(obj: &Value, causes: &mut Vec<Cause>) {
    match str_at(obj, "/provisioner") {
        None | Some("") => causes.push(required("provisioner")),
        Some(p) if !crate::strategy::valid_qualified_key(&p.to_ascii_lowercase()) => {
            causes.push(Cause::new(
                "FieldValueInvalid",
                "provisioner",
                format!("Invalid value: {p:?}: name part must consist of alphanumeric characters, '-', '_' or '.'"),
            ));
        }
        Some(_) => {}
    }
    check_enum(
        obj,
        "/reclaimPolicy",
        "reclaimPolicy",
        &["Delete", "Retain"],
        causes,
    );
    check_enum(
        obj,
        "/volumeBindingMode",
        "volumeBindingMode",
        &["Immediate", "WaitForFirstConsumer"],
        causes,
    );
}

fn ingress_backend(b: &Value, field: &str, causes: &mut Vec<Cause>) {
    let service = b.get("service").filter(|v| v.is_object());
    let resource = b.get("resource").filter(|v| v.is_object());
    match (service, resource) {
        (None, None) => causes.push(Cause::new(
            "FieldValueRequired",
            field,
            "Required value: one backend (`service` or `resource`) must be specified",
        )),
        (Some(_), Some(_)) => causes.push(Cause::new(
            "FieldValueInvalid",
            field,
            "Invalid value: cannot set both `service` and `resource` backends",
        )),
        (Some(s), None) => {
            if s.get("name")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
            {
                causes.push(required(&format!("{field}.service.name")));
            }
            let port = s.get("port");
            let number = port.and_then(|p| p.get("number")).and_then(Value::as_i64);
            let name = port
                .and_then(|p| p.get("name"))
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty());
            match (number, name) {
                (None, None) => causes.push(Cause::new(
                    "FieldValueRequired",
                    &format!("{field}.service.port"),
                    "Required value: port name or number is required",
                )),
                (Some(_), Some(_)) => causes.push(Cause::new(
                    "FieldValueInvalid",
                    &format!("{field}.service.port"),
                    "Invalid value: cannot set both port name & port number",
                )),
                (Some(n), None) if !(1..=65535).contains(&n) => causes.push(Cause::new(
                    "FieldValueInvalid",
                    &format!("{field}.service.port.number"),
                    format!("Invalid value: {n}: must be between 1 and 65535, inclusive"),
                )),
                _ => {}
            }
        }
        (None, Some(_)) => {}
    }
}

/// Checks an Ingress: every path has a type and a backend, and Exact and Prefix paths are
/// absolute; the default backend, when given, is a valid backend.
pub fn ingress(obj: &Value, causes: &mut Vec<Cause>) {
    let default = obj
        .pointer("/spec/defaultBackend")
        .filter(|v| v.is_object());
    let rules = obj.pointer("/spec/rules").and_then(Value::as_array);
    if default.is_none() && rules.is_none_or(|r| r.is_empty()) {
        causes.push(Cause::new(
            "FieldValueInvalid",
            "spec",
            "Invalid value: either `defaultBackend` or `rules` must be specified",
        ));
    }
    if let Some(b) = default {
        ingress_backend(b, "spec.defaultBackend", causes);
    }
    for (i, rule) in rules.into_iter().flatten().enumerate() {
        if let Some(host) = rule.get("host").and_then(Value::as_str)
            && !host.is_empty()
        {
            let plain = host.strip_prefix("*.").unwrap_or(host);
            if plain.parse::<std::net::IpAddr>().is_ok() {
                causes.push(Cause::new(
                    "FieldValueInvalid",
                    &format!("spec.rules[{i}].host"),
                    format!("Invalid value: {host:?}: must be a DNS name, not an IP address"),
                ));
            } else if !crate::strategy::valid_dns_subdomain(plain) {
                causes.push(Cause::new(
                    "FieldValueInvalid",
                    &format!("spec.rules[{i}].host"),
                    format!("Invalid value: {host:?}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"),
                ));
            }
        }
        let Some(http) = rule.get("http").filter(|v| v.is_object()) else {
            continue;
        };
        let base = format!("spec.rules[{i}].http.paths");
        let Some(paths) = http
            .get("paths")
            .and_then(Value::as_array)
            .filter(|p| !p.is_empty())
        else {
            causes.push(required(&base));
            continue;
        };
        for (j, p) in paths.iter().enumerate() {
            let field = format!("{base}[{j}]");
            let path = p.get("path").and_then(Value::as_str).unwrap_or("");
            match p.get("pathType").and_then(Value::as_str) {
                None | Some("") => causes.push(Cause::new(
                    "FieldValueRequired",
                    &format!("{field}.pathType"),
                    "Required value: pathType must be specified",
                )),
                Some("Exact" | "Prefix") => {
                    if !path.starts_with('/') {
                        causes.push(Cause::new(
                            "FieldValueInvalid",
                            &format!("{field}.path"),
                            format!("Invalid value: {path:?}: must be an absolute path"),
                        ));
                    }
                }
                Some("ImplementationSpecific") => {
                    if !path.is_empty() && !path.starts_with('/') {
                        causes.push(Cause::new(
                            "FieldValueInvalid",
                            &format!("{field}.path"),
                            format!("Invalid value: {path:?}: must be an absolute path"),
                        ));
                    }
                }
                Some(t) => causes.push(not_supported(
                    &format!("{field}.pathType"),
                    t,
                    &["Exact", "ImplementationSpecific", "Prefix"],
                )),
            }
            match p.get("backend").filter(|v| v.is_object()) {
                Some(b) => ingress_backend(b, &format!("{field}.backend"), causes),
                None => causes.push(required(&format!("{field}.backend"))),
            }
        }
    }
}

/// Checks an IngressClass.
pub fn ingress_class(obj: &Value, causes: &mut Vec<Cause>) {
    match str_at(obj, "/spec/controller") {
        None | Some("") => causes.push(required("spec.controller")),
        Some(c) if c.len() > 250 => causes.push(Cause::new(
            "FieldValueTooLong",
            "spec.controller",
            "Too long: may not be more than 250 bytes",
        )),
        Some(_) => {}
    }
}

fn check_port(p: &Value, field: &str, causes: &mut Vec<Cause>) {
    match p.get("port").and_then(Value::as_i64) {
        Some(n) if (1..=65535).contains(&n) => {}
        Some(n) => causes.push(Cause::new(
            "FieldValueInvalid",
            &format!("{field}.port"),
            format!("Invalid value: {n}: must be between 1 and 65535, inclusive"),
        )),
        None => causes.push(required(&format!("{field}.port"))),
    }
    check_enum(
        p,
        "/protocol",
        &format!("{field}.protocol"),
        &["SCTP", "TCP", "UDP"],
        causes,
    );
}

/// Checks Endpoints: each address is an IP, each port in range.
pub fn endpoints(obj: &Value, causes: &mut Vec<Cause>) {
    for (i, subset) in obj
        .get("subsets")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        for list in ["addresses", "notReadyAddresses"] {
            for (j, a) in subset
                .get(list)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
            {
                let field = format!("subsets[{i}].{list}[{j}].ip");
                match a.get("ip").and_then(Value::as_str) {
                    None | Some("") => causes.push(required(&field)),
                    Some(ip) if ip.parse::<std::net::IpAddr>().is_err() => causes.push(Cause::new(
                        "FieldValueInvalid",
                        &field,
                        format!("Invalid value: {ip:?}: must be a valid IP address"),
                    )),
                    Some(_) => {}
                }
            }
        }
        for (j, p) in subset
            .get("ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            check_port(p, &format!("subsets[{i}].ports[{j}]"), causes);
        }
    }
}

/// Checks an EndpointSlice: its address type, and each endpoint's 1 to 100 addresses of it.
pub fn endpoint_slice(obj: &Value, causes: &mut Vec<Cause>) {
    let ty = match str_at(obj, "/addressType") {
        None | Some("") => {
            causes.push(required("addressType"));
            return;
        }
        Some(t @ ("IPv4" | "IPv6" | "FQDN")) => t,
        Some(t) => {
            causes.push(not_supported("addressType", t, &["FQDN", "IPv4", "IPv6"]));
            return;
        }
    };
    for (i, e) in obj
        .get("endpoints")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let field = format!("endpoints[{i}].addresses");
        let addrs = e.get("addresses").and_then(Value::as_array);
        match addrs.map_or(0, Vec::len) {
            0 => causes.push(Cause::new(
                "FieldValueRequired",
                &field,
                "Required value: must contain at least 1 address",
            )),
            n if n > 100 => causes.push(Cause::new(
                "FieldValueTooMany",
                &field,
                format!("Too many: {n}: must have at most 100 items"),
            )),
            _ => {}
        }
        for (j, a) in addrs.into_iter().flatten().enumerate() {
            let a = a.as_str().unwrap_or("");
            let ok = match ty {
                "IPv4" => a.parse::<std::net::Ipv4Addr>().is_ok(),
                "IPv6" => a.parse::<std::net::Ipv6Addr>().is_ok(),
                _ => crate::strategy::valid_dns_subdomain(a),
            };
            if !ok {
                causes.push(Cause::new(
                    "FieldValueInvalid",
                    &format!("{field}[{j}]"),
                    format!("Invalid value: {a:?}: must be a valid {ty} address"),
                ));
            }
        }
    }
    for (i, p) in obj
        .get("ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        // A slice's port may be left out (every port of the Service) but not out of range.
        if let Some(n) = p.get("port").and_then(Value::as_i64)
            && !(1..=65535).contains(&n)
        {
            causes.push(Cause::new(
                "FieldValueInvalid",
                &format!("ports[{i}].port"),
                format!("Invalid value: {n}: must be between 1 and 65535, inclusive"),
            ));
        }
    }
}

/// Checks a PodDisruptionBudget: one of `minAvailable` and `maxUnavailable`, not both.
pub fn pod_disruption_budget(obj: &Value, causes: &mut Vec<Cause>) {
    let set = |k: &str| {
        obj.pointer(&format!("/spec/{k}"))
            .is_some_and(|v| !v.is_null())
    };
    if set("minAvailable") && set("maxUnavailable") {
        causes.push(Cause::new(
            "FieldValueInvalid",
            "spec",
            "Invalid value: minAvailable and maxUnavailable cannot be both set",
        ));
    }
    for k in ["minAvailable", "maxUnavailable"] {
        let field = format!("spec.{k}");
        match obj.pointer(&format!("/spec/{k}")) {
            Some(Value::Number(n)) if n.as_i64().is_none_or(|n| n < 0) => causes.push(Cause::new(
                "FieldValueInvalid",
                &field,
                format!("Invalid value: {n}: must be greater than or equal to 0"),
            )),
            Some(Value::String(p)) => {
                let pct = p.strip_suffix('%').and_then(|n| n.parse::<i64>().ok());
                match pct {
                    Some(n) if (0..=100).contains(&n) => {}
                    Some(_) => causes.push(Cause::new(
                        "FieldValueInvalid",
                        &field,
                        format!("Invalid value: {p:?}: must be no more than 100%"),
                    )),
                    None => causes.push(Cause::new(
                        "FieldValueInvalid",
                        &field,
                        format!("Invalid value: {p:?}: a valid percent string must be a numeric string followed by an ending '%' (e.g. '1%',  or '93%', regex used for validation is '[0-9]+%')"),
                    )),
                }
            }
            _ => {}
        }
    }
}

/// Checks a Job's counts, completion mode, per-index failure settings, success and failure
/// policies, with upstream's messages: `backoffLimitPerIndex` and `maxFailedIndexes` only for
/// Indexed Jobs (`maxFailedIndexes` beside a limit per index, at most `completions`), the
/// limits above 100000 completions, a `FailIndex` rule only with `backoffLimitPerIndex`.
pub fn job(obj: &Value, causes: &mut Vec<Cause>) {
    if let Some(spec) = obj.get("spec") {
        job_spec(spec, "spec", causes);
    }
}

/// Checks a Job spec found at `path` (a Job's `spec`, a CronJob's `spec.jobTemplate.spec`).
pub fn job_spec(spec: &Value, path: &str, causes: &mut Vec<Cause>) {
    let int = |k: &str| spec.get(k).and_then(Value::as_i64);
    let invalid = |field: &str, v: &dyn std::fmt::Display, msg: &str| {
        Cause::new(
            "FieldValueInvalid",
            field,
            format!("Invalid value: {v}: {msg}"),
        )
    };
    for k in [
        "parallelism",
        "completions",
        "backoffLimit",
        "backoffLimitPerIndex",
        "maxFailedIndexes",
    ] {
        if let Some(v) = int(k).filter(|v| *v < 0) {
            causes.push(invalid(
                &format!("{path}.{k}"),
                &v,
                "must be greater than or equal to 0",
            ));
        }
    }
    // Indexed Jobs' limits (upstream's).
    const MAX_INDEXED_PARALLELISM: i64 = 100_000;
    const MAX_FAILED_INDEXES: i64 = 100_000;
    const COMPLETIONS_SOFT_LIMIT: i64 = 100_000;
    const LIMIT_FOR_HIGH_COMPLETIONS: i64 = 10_000;
    let per_index = int("backoffLimitPerIndex");
    let max_failed = int("maxFailedIndexes");
    if max_failed.is_some() && per_index.is_none() {
        causes.push(Cause::new(
            "FieldValueRequired",
            &format!("{path}.backoffLimitPerIndex"),
            "Required value: when maxFailedIndexes is specified",
        ));
    }
    let mode = str_at(spec, "/completionMode");
    match mode {
        Some("Indexed") => {
            let completions = int("completions");
            if completions.is_none() {
                causes.push(Cause::new(
                    "FieldValueRequired",
                    &format!("{path}.completions"),
                    "Required value: when completion mode is Indexed",
                ));
            }
            if let Some(p) = int("parallelism").filter(|p| *p > MAX_INDEXED_PARALLELISM) {
                causes.push(invalid(
                    &format!("{path}.parallelism"),
                    &p,
                    "must be less than or equal to 100000 when completion mode is Indexed",
                ));
            }
            if let (Some(m), Some(c)) = (max_failed, completions)
                && m > c
            {
                causes.push(invalid(
                    &format!("{path}.maxFailedIndexes"),
                    &m,
                    "must be less than or equal to completions",
                ));
            }
            if let Some(m) = max_failed.filter(|m| *m > MAX_FAILED_INDEXES) {
                causes.push(invalid(
                    &format!("{path}.maxFailedIndexes"),
                    &m,
                    "must be less than or equal to 100000",
                ));
            }
            if completions.is_some_and(|c| c > COMPLETIONS_SOFT_LIMIT) && per_index.is_some() {
                let high =
                    "when completions are above 100000 and used with backoff limit per index";
                if max_failed.is_none() {
                    causes.push(Cause::new(
                        "FieldValueRequired",
                        &format!("{path}.maxFailedIndexes"),
                        "Required value: must be specified when completions is above 100000",
                    ));
                }
                if let Some(p) = int("parallelism").filter(|p| *p > LIMIT_FOR_HIGH_COMPLETIONS) {
                    causes.push(invalid(
                        &format!("{path}.parallelism"),
                        &p,
                        &format!("must be less than or equal to 10000 {high}"),
                    ));
                }
                if let Some(m) = max_failed.filter(|m| *m > LIMIT_FOR_HIGH_COMPLETIONS) {
                    causes.push(invalid(
                        &format!("{path}.maxFailedIndexes"),
                        &m,
                        &format!("must be less than or equal to 10000 {high}"),
                    ));
                }
            }
        }
        None | Some("NonIndexed") => {
            for (k, v) in [
                ("backoffLimitPerIndex", per_index),
                ("maxFailedIndexes", max_failed),
            ] {
                if let Some(v) = v {
                    causes.push(invalid(
                        &format!("{path}.{k}"),
                        &v,
                        "requires indexed completion mode",
                    ));
                }
            }
        }
        Some(other) => causes.push(not_supported(
            &format!("{path}.completionMode"),
            other,
            &["NonIndexed", "Indexed"],
        )),
    }
    if let Some(policy) = spec.get("successPolicy").filter(|v| !v.is_null()) {
        if mode == Some("Indexed") {
            // Without completions (refused above) its rules cannot be judged.
            if let Some(completions) = int("completions") {
                success_policy(
                    policy,
                    completions,
                    &format!("{path}.successPolicy"),
                    causes,
                );
            }
        } else {
            causes.push(Cause::new(
                "FieldValueInvalid",
                &format!("{path}.successPolicy"),
                format!("Invalid value: {policy}: requires indexed completion mode"),
            ));
        }
    }
    let failure_policy = spec.get("podFailurePolicy").filter(|v| !v.is_null());
    let rules = failure_policy
        .and_then(|p| p.get("rules"))
        .and_then(Value::as_array);
    const ACTIONS: &[&str] = &["Count", "FailIndex", "FailJob", "Ignore"];
    const MAX_RULES: usize = 20;
    if let Some(n) = rules.map(Vec::len).filter(|n| *n > MAX_RULES) {
        causes.push(Cause::new(
            "FieldValueTooMany",
            &format!("{path}.podFailurePolicy.rules"),
            format!("Too many: {n}: must have at most {MAX_RULES} items"),
        ));
    }
    let containers: Vec<&str> = ["containers", "initContainers"]
        .iter()
        .filter_map(|k| spec.pointer(&format!("/template/spec/{k}")))
        .filter_map(Value::as_array)
        .flatten()
        .filter_map(|c| c.get("name").and_then(Value::as_str))
        .collect();
    for (i, rule) in rules.into_iter().flatten().enumerate() {
        let path = format!("{path}.podFailurePolicy.rules[{i}]");
        let field = format!("{path}.action");
        match rule.get("action").and_then(Value::as_str).unwrap_or("") {
            "" => causes.push(Cause::new(
                "FieldValueRequired",
                &field,
                "Required value: valid values: [\"Count\" \"FailIndex\" \"FailJob\" \"Ignore\"]",
            )),
            "FailIndex" if per_index.is_none() => causes.push(invalid(
                &field,
                &"\"FailIndex\"",
                "requires the backoffLimitPerIndex to be set",
            )),
            a if ACTIONS.contains(&a) => {}
            other => causes.push(not_supported(&field, other, ACTIONS)),
        }
        if let Some(codes) = rule.get("onExitCodes").filter(|v| !v.is_null()) {
            exit_codes(codes, &format!("{path}.onExitCodes"), &containers, causes);
        }
        let on_codes = rule.get("onExitCodes").is_some_and(|v| !v.is_null());
        let on_conditions = rule
            .get("onPodConditions")
            .and_then(Value::as_array)
            .is_some_and(|c| !c.is_empty());
        let shape = match (on_codes, on_conditions) {
            (true, true) => {
                Some("specifying both OnExitCodes and OnPodConditions is not supported")
            }
            (false, false) => Some("specifying one of OnExitCodes and OnPodConditions is required"),
            _ => None,
        };
        if let Some(msg) = shape {
            causes.push(Cause::new(
                "FieldValueInvalid",
                &path,
                format!("Invalid value: {msg}"),
            ));
        }
    }
    // A failure policy judges pods that end: their containers are not restarted in place.
    let restart = str_at(spec, "/template/spec/restartPolicy");
    if failure_policy.is_some()
        && let Some(r) = restart.filter(|r| *r == "OnFailure")
    {
        causes.push(invalid(
            &format!("{path}.template.spec.restartPolicy"),
            &format!("{r:?}"),
            "only \"Never\" is supported when podFailurePolicy is specified",
        ));
    }
    if let Some(p) = str_at(spec, "/podReplacementPolicy") {
        let allowed: &[&str] = if failure_policy.is_some() {
            &["Failed"]
        } else {
            &["Failed", "TerminatingOrFailed"]
        };
        if !allowed.contains(&p) {
            causes.push(not_supported(
                &format!("{path}.podReplacementPolicy"),
                p,
                allowed,
            ));
        }
    }
}

/// Checks a pod failure policy rule's `onExitCodes` at `at`, with upstream's messages.
fn exit_codes(codes: &Value, at: &str, containers: &[&str], causes: &mut Vec<Cause>) {
    const OPERATORS: &[&str] = &["In", "NotIn"];
    const MAX_VALUES: usize = 255;
    let op = codes.get("operator").and_then(Value::as_str).unwrap_or("");
    let op_field = format!("{at}.operator");
    match op {
        "" => causes.push(Cause::new(
            "FieldValueRequired",
            &op_field,
            "Required value: valid values: [\"In\" \"NotIn\"]",
        )),
        o if OPERATORS.contains(&o) => {}
        other => causes.push(not_supported(&op_field, other, OPERATORS)),
    }
    if let Some(name) = codes.get("containerName").and_then(Value::as_str)
        && !containers.contains(&name)
    {
        causes.push(Cause::new(
            "FieldValueInvalid",
            &format!("{at}.containerName"),
            format!(
                "Invalid value: {name:?}: must be one of the container or initContainer names in the pod template"
            ),
        ));
    }
    let values: Vec<i64> = codes
        .get("values")
        .and_then(Value::as_array)
        .map(|v| v.iter().filter_map(Value::as_i64).collect())
        .unwrap_or_default();
    let values_field = format!("{at}.values");
    if values.is_empty() {
        causes.push(Cause::new(
            "FieldValueInvalid",
            &values_field,
            "Invalid value: []: at least one value is required",
        ));
    } else if values.len() > MAX_VALUES {
        causes.push(Cause::new(
            "FieldValueTooMany",
            &values_field,
            format!(
                "Too many: {}: must have at most {MAX_VALUES} items",
                values.len()
            ),
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for (j, v) in values.iter().enumerate() {
        let field = format!("{values_field}[{j}]");
        if op == "In" && *v == 0 {
            causes.push(Cause::new(
                "FieldValueInvalid",
                &field,
                "Invalid value: 0: must not be 0 for the In operator",
            ));
        }
        if !seen.insert(*v) {
            causes.push(Cause::new(
                "FieldValueDuplicate",
                &field,
                format!("Duplicate value: {v}"),
            ));
        }
    }
    if values.windows(2).any(|w| w[0] > w[1]) {
        let list: Vec<String> = values.iter().map(i64::to_string).collect();
        causes.push(Cause::new(
            "FieldValueInvalid",
            &values_field,
            format!("Invalid value: [{}]: must be ordered", list.join(",")),
        ));
    }
}

/// Checks the rules of an Indexed Job's `successPolicy` against its `completions`.
fn success_policy(policy: &Value, completions: i64, at: &str, causes: &mut Vec<Cause>) {
    const MAX_RULES: usize = 20;
    const MAX_INDEXES_TEXT: usize = 64 * 1024;
    let rules = policy
        .get("rules")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    if rules.is_empty() {
        causes.push(Cause::new(
            "FieldValueRequired",
            &format!("{at}.rules"),
            "Required value: at least one rules must be specified when the successPolicy is specified",
        ));
    }
    if rules.len() > MAX_RULES {
        causes.push(Cause::new(
            "FieldValueTooMany",
            &format!("{at}.rules"),
            format!(
                "Too many: {}: must have at most {MAX_RULES} items",
                rules.len()
            ),
        ));
    }
    for (i, rule) in rules.iter().enumerate() {
        let path = format!("{at}.rules[{i}]");
        let listed = rule.get("succeededIndexes").and_then(Value::as_str);
        let count = rule.get("succeededCount").and_then(Value::as_i64);
        let mut total = 0;
        if let Some(text) = listed {
            let field = format!("{path}.succeededIndexes");
            if text.len() > MAX_INDEXES_TEXT {
                causes.push(Cause::new(
                    "FieldValueTooLong",
                    &field,
                    format!("Too long: may not be more than {MAX_INDEXES_TEXT} bytes"),
                ));
            }
            match count_indexes(text, completions) {
                Ok(n) => total = n,
                Err(e) => causes.push(Cause::new(
                    "FieldValueInvalid",
                    &field,
                    format!("Invalid value: {text:?}: error parsing succeededIndexes: {e}"),
                )),
            }
        }
        if let Some(n) = count {
            let field = format!("{path}.succeededCount");
            let invalid = |msg: String| {
                Cause::new(
                    "FieldValueInvalid",
                    &field,
                    format!("Invalid value: {n}: {msg}"),
                )
            };
            if n < 0 {
                causes.push(invalid("must be greater than or equal to 0".into()));
            }
            if n > completions {
                causes.push(invalid(format!(
                    "must be less than or equal to {completions} (the number of specified completions)"
                )));
            }
            if listed.is_some() && n > total {
                causes.push(invalid(format!(
                    "must be less than or equal to {total} (the number of indexes in the specified succeededIndexes field)"
                )));
            }
        }
        if listed.is_none() && count.is_none() {
            causes.push(Cause::new(
                "FieldValueRequired",
                &path,
                "Required value: at least one of succeededCount or succeededIndexes must be specified",
            ));
        }
    }
}

/// How many indexes an interval list (`0,2-4`) names: in increasing order, each below
/// `completions`.
fn count_indexes(text: &str, completions: i64) -> Result<i64, String> {
    if text.is_empty() {
        return Ok(0);
    }
    let (mut last, mut total): (Option<i64>, i64) = (None, 0);
    for part in text.split(',') {
        let ends: Vec<&str> = part.split('-').collect();
        if ends.len() > 2 {
            return Err(format!(
                "the fragment {part:?} violates the requirement that an index interval can have at most two parts separated by '-'"
            ));
        }
        let mut first = None;
        for end in &ends {
            let n: i64 = end
                .parse()
                .ok()
                .filter(|n| (0..=i64::from(i32::MAX)).contains(n))
                .ok_or_else(|| format!("cannot convert string to integer for index: {end:?}"))?;
            if n >= completions {
                return Err(format!("too large index: {end:?}"));
            }
            if let Some(prev) = last
                && prev >= n
            {
                return Err(format!(
                    "non-increasing order, previous: {prev}, current: {n}"
                ));
            }
            total += first.map_or(1, |f| n - f);
            first.get_or_insert(n);
            last = Some(n);
        }
    }
    Ok(total)
}

/// Checks the rules of a Role or ClusterRole: verbs always; resource rules need API groups
/// and resources; non-resource URLs only in cluster roles and not beside resources.
pub fn policy_rules(obj: &Value, cluster: bool, causes: &mut Vec<Cause>) {
    for (i, r) in obj
        .get("rules")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let field = format!("rules[{i}]");
        let len = |k: &str| r.get(k).and_then(Value::as_array).map_or(0, Vec::len);
        if len("verbs") == 0 {
            causes.push(Cause::new(
                "FieldValueRequired",
                &format!("{field}.verbs"),
                "Required value: verbs must contain at least one value",
            ));
        }
        if len("nonResourceURLs") > 0 {
            if !cluster {
                causes.push(Cause::new(
                    "FieldValueInvalid",
                    &format!("{field}.nonResourceURLs"),
                    "Invalid value: namespaced rules cannot apply to non-resource URLs",
                ));
            }
            if len("apiGroups") > 0 || len("resources") > 0 || len("resourceNames") > 0 {
                causes.push(Cause::new(
                    "FieldValueInvalid",
                    &format!("{field}.nonResourceURLs"),
                    "Invalid value: rules cannot apply to both regular resources and non-resource URLs",
                ));
            }
            continue;
        }
        if len("apiGroups") == 0 {
            causes.push(Cause::new(
                "FieldValueRequired",
                &format!("{field}.apiGroups"),
                "Required value: resource rules must supply at least one api group",
            ));
        }
        if len("resources") == 0 {
            causes.push(Cause::new(
                "FieldValueRequired",
                &format!("{field}.resources"),
                "Required value: resource rules must supply at least one resource",
            ));
        }
    }
}

/// The most a ConfigMap's or Secret's data may hold, as upstream (1 MiB).
const MAX_DATA: usize = 1024 * 1024;

/// A key of `data`: `[-._a-zA-Z0-9]+`, not `.` or `..`, at most 253 characters.
fn valid_data_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 253
        && k != "."
        && k != ".."
        && !k.starts_with("..")
        && k.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

fn check_keys(map: Option<&Map<String, Value>>, field: &str, causes: &mut Vec<Cause>) {
    for k in map.into_iter().flat_map(|m| m.keys()) {
        if !valid_data_key(k) {
            causes.push(Cause::new(
                "FieldValueInvalid",
                &format!("{field}[{k}]"),
                format!("Invalid value: {k:?}: a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')"),
            ));
        }
    }
}

/// Checks a ConfigMap: key syntax, no key in both `data` and `binaryData`, at most 1 MiB.
pub fn config_map(obj: &Value, causes: &mut Vec<Cause>) {
    let data = obj.get("data").and_then(Value::as_object);
    let binary = obj.get("binaryData").and_then(Value::as_object);
    check_keys(data, "data", causes);
    check_keys(binary, "binaryData", causes);
    let mut size = 0;
    for (k, v) in data.into_iter().flatten() {
        size += k.len() + v.as_str().map_or(0, str::len);
        if binary.is_some_and(|b| b.contains_key(k)) {
            causes.push(Cause::new(
                "FieldValueInvalid",
                &format!("data[{k}]"),
                format!("Invalid value: {k:?}: duplicate of key present in binaryData"),
            ));
        }
    }
    for (k, v) in binary.into_iter().flatten() {
        // Base64 in JSON: the bytes are three quarters of it.
        size += k.len() + v.as_str().map_or(0, |s| s.len() / 4 * 3);
    }
    if size > MAX_DATA {
        causes.push(Cause::new(
            "FieldValueTooLong",
            "",
            format!("Too long: may not be more than {MAX_DATA} bytes"),
        ));
    }
}

/// Checks a Secret: key syntax, at most 1 MiB, and the keys and annotations its type needs.
pub fn secret(obj: &Value, causes: &mut Vec<Cause>) {
    let data = obj.get("data").and_then(Value::as_object);
    check_keys(data, "data", causes);
    let size: usize = data
        .into_iter()
        .flatten()
        .map(|(k, v)| k.len() + v.as_str().map_or(0, |s| s.len() / 4 * 3))
        .sum();
    if size > MAX_DATA {
        causes.push(Cause::new(
            "FieldValueTooLong",
            "data",
            format!("Too long: may not be more than {MAX_DATA} bytes"),
        ));
    }
    let has = |k: &str| data.is_some_and(|d| d.contains_key(k));
    let need = |k: &str, causes: &mut Vec<Cause>| {
        if !has(k) {
            causes.push(required(&format!("data[{k}]")));
        }
    };
    match obj.get("type").and_then(Value::as_str).unwrap_or("Opaque") {
        "kubernetes.io/service-account-token" => {
            let named = obj
                .pointer("/metadata/annotations/kubernetes.io~1service-account.name")
                .and_then(Value::as_str)
                .is_some_and(|n| !n.is_empty());
            if !named {
                causes.push(required(
                    "metadata.annotations[kubernetes.io/service-account.name]",
                ));
            }
        }
        "kubernetes.io/dockercfg" => need(".dockercfg", causes),
        "kubernetes.io/dockerconfigjson" => need(".dockerconfigjson", causes),
        "kubernetes.io/basic-auth" if !has("username") && !has("password") => {
            causes.push(Cause::new(
                "FieldValueRequired",
                "data[username]",
                "Required value: either username or password is required",
            ));
        }
        "kubernetes.io/ssh-auth" => need("ssh-privatekey", causes),
        "kubernetes.io/tls" => {
            need("tls.crt", causes);
            need("tls.key", causes);
        }
        _ => {}
    }
}

/// `v` compared as upstream compares typed objects: a null, `""`, `0`, `false`, `{}` or `[]`
/// member is the same as a missing one.
fn semantic(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| (k.clone(), semantic(v)))
                .filter(|(_, v)| !is_zero(v))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(semantic).collect()),
        other => other.clone(),
    }
}

fn is_zero(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(m) => m.is_empty(),
    }
}

/// The fields of `kind` an update may not change, beyond the workloads' (a few kinds allow
/// only some of their spec to change: those are compared without the fields that may).
pub fn update(kind: &str, old: &Value, new: &Value, causes: &mut Vec<Cause>) {
    let same = |ptr: &str| {
        semantic(old.pointer(ptr).unwrap_or(&Value::Null))
            == semantic(new.pointer(ptr).unwrap_or(&Value::Null))
    };
    let immutable = |field: &str, causes: &mut Vec<Cause>| {
        causes.push(Cause::new(
            "FieldValueInvalid",
            field,
            "Invalid value: field is immutable",
        ));
    };
    // Whether the spec changed in a field `mutable` does not name.
    let spec_changed_beyond = |mutable: &[&str]| {
        let rest = |v: &Value| {
            let mut v = v.pointer("/spec").cloned().unwrap_or(Value::Null);
            if let Some(m) = v.as_object_mut() {
                for k in mutable {
                    m.remove(*k);
                }
            }
            semantic(&v)
        };
        rest(old) != rest(new)
    };
    match kind {
        "Secret" if !same("/type") => immutable("type", causes),
        "StorageClass" => {
            for f in [
                "provisioner",
                "parameters",
                "reclaimPolicy",
                "volumeBindingMode",
            ] {
                if !same(&format!("/{f}")) {
                    causes.push(Cause::new(
                        "FieldValueForbidden",
                        f,
                        format!("Forbidden: updates to {f} are forbidden."),
                    ));
                }
            }
        }
        "EndpointSlice" if !same("/addressType") => immutable("addressType", causes),
        "StatefulSet" => {
            let mutable = [
                "replicas",
                "ordinals",
                "template",
                "updateStrategy",
                "revisionHistoryLimit",
                "persistentVolumeClaimRetentionPolicy",
                "minReadySeconds",
            ];
            if spec_changed_beyond(&mutable) {
                causes.push(Cause::new("FieldValueForbidden", "spec", "Forbidden: updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', 'revisionHistoryLimit', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden"));
            }
        }
        "PersistentVolumeClaim" => {
            let mutable = [
                "resources",
                "volumeAttributesClassName",
                "volumeName",
                "storageClassName",
            ];
            let unbound = str_at(old, "/spec/volumeName").is_none_or(str::is_empty);
            // An unbound claim without a class may get one (a default class made later).
            let class_given = unbound && str_at(old, "/spec/storageClassName").is_none();
            if spec_changed_beyond(&mutable)
                || (!unbound && !same("/spec/volumeName"))
                || (!class_given && !same("/spec/storageClassName"))
            {
                causes.push(Cause::new("FieldValueForbidden", "spec", "Forbidden: spec is immutable after creation except resources.requests and volumeAttributesClassName for bound claims"));
            }
        }
        "PersistentVolume" => {
            let mutable = [
                "capacity",
                "accessModes",
                "claimRef",
                "persistentVolumeReclaimPolicy",
                "storageClassName",
                "mountOptions",
                "nodeAffinity",
                "volumeMode",
                "volumeAttributesClassName",
            ];
            if spec_changed_beyond(&mutable) {
                causes.push(Cause::new(
                    "FieldValueForbidden",
                    "spec.persistentvolumesource",
                    "Forbidden: spec.persistentvolumesource is immutable after creation",
                ));
            }
            if !same("/spec/volumeMode") {
                immutable("spec.volumeMode", causes);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn causes(f: impl Fn(&Value, &mut Vec<Cause>), obj: Value) -> Vec<String> {
        let mut c = Vec::new();
        f(&obj, &mut c);
        c.into_iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect()
    }

    #[test]
    fn job_failure_limits_per_index_as_upstream() {
        let ok = json!({"spec": {"completionMode": "Indexed", "completions": 4, "backoffLimitPerIndex": 1, "maxFailedIndexes": 4,
            "podFailurePolicy": {"rules": [{"action": "FailIndex", "onExitCodes": {"operator": "In", "values": [3]}}]},
            "template": {"spec": {"restartPolicy": "Never"}}}});
        assert!(causes(job, ok).is_empty());
        let bad = json!({"spec": {"completionMode": "Indexed", "completions": 2, "maxFailedIndexes": 3, "parallelism": -1,
            "podReplacementPolicy": "TerminatingOrFailed", "template": {"spec": {"restartPolicy": "OnFailure"}},
            "podFailurePolicy": {"rules": [{"action": "FailIndex", "onExitCodes": {}}, {"action": "Retry"}]}}});
        assert_eq!(
            causes(job, bad),
            [
                "spec.parallelism: Invalid value: -1: must be greater than or equal to 0",
                "spec.backoffLimitPerIndex: Required value: when maxFailedIndexes is specified",
                "spec.maxFailedIndexes: Invalid value: 3: must be less than or equal to completions",
                "spec.podFailurePolicy.rules[0].action: Invalid value: \"FailIndex\": requires the backoffLimitPerIndex to be set",
                "spec.podFailurePolicy.rules[0].onExitCodes.operator: Required value: valid values: [\"In\" \"NotIn\"]",
                "spec.podFailurePolicy.rules[0].onExitCodes.values: Invalid value: []: at least one value is required",
                "spec.podFailurePolicy.rules[1].action: Unsupported value: \"Retry\": supported values: \"Count\", \"FailIndex\", \"FailJob\", \"Ignore\"",
                "spec.podFailurePolicy.rules[1]: Invalid value: specifying one of OnExitCodes and OnPodConditions is required",
                "spec.template.spec.restartPolicy: Invalid value: \"OnFailure\": only \"Never\" is supported when podFailurePolicy is specified",
                "spec.podReplacementPolicy: Unsupported value: \"TerminatingOrFailed\": supported values: \"Failed\"",
            ]
        );
        // Exit code rules, in a CronJob's Job template.
        let codes = json!({"podFailurePolicy": {"rules": [{"action": "Count",
            "onExitCodes": {"operator": "In", "containerName": "nope", "values": [0, 3, 3, 1]}}]},
            "template": {"spec": {"containers": [{"name": "main"}]}}});
        let mut got = Vec::new();
        job_spec(&codes, "spec.jobTemplate.spec", &mut got);
        let got: Vec<String> = got
            .into_iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect();
        let at = "spec.jobTemplate.spec.podFailurePolicy.rules[0].onExitCodes";
        assert_eq!(
            got,
            [
                format!(
                    "{at}.containerName: Invalid value: \"nope\": must be one of the container or initContainer names in the pod template"
                ),
                format!("{at}.values[0]: Invalid value: 0: must not be 0 for the In operator"),
                format!("{at}.values[2]: Duplicate value: 3"),
                format!("{at}.values: Invalid value: [0,3,3,1]: must be ordered"),
            ]
        );
        // Above 100000 completions a limit per index needs maxFailedIndexes, and lower limits.
        let high = json!({"spec": {"completionMode": "Indexed", "completions": 200000, "backoffLimitPerIndex": 1, "parallelism": 20000}});
        assert_eq!(
            causes(job, high),
            [
                "spec.maxFailedIndexes: Required value: must be specified when completions is above 100000",
                "spec.parallelism: Invalid value: 20000: must be less than or equal to 10000 when completions are above 100000 and used with backoff limit per index",
            ]
        );
        let policy = json!({"spec": {"completionMode": "Indexed", "completions": 5, "successPolicy": {"rules": [
            {"succeededIndexes": "0,2-4", "succeededCount": 4}, {"succeededCount": 6}, {},
            {"succeededIndexes": "3,1"}, {"succeededIndexes": "1-9"}, {"succeededIndexes": "0-2", "succeededCount": 4}]}}});
        assert_eq!(
            causes(job, policy),
            [
                "spec.successPolicy.rules[1].succeededCount: Invalid value: 6: must be less than or equal to 5 (the number of specified completions)",
                "spec.successPolicy.rules[2]: Required value: at least one of succeededCount or succeededIndexes must be specified",
                "spec.successPolicy.rules[3].succeededIndexes: Invalid value: \"3,1\": error parsing succeededIndexes: non-increasing order, previous: 3, current: 1",
                "spec.successPolicy.rules[4].succeededIndexes: Invalid value: \"1-9\": error parsing succeededIndexes: too large index: \"9\"",
                "spec.successPolicy.rules[5].succeededCount: Invalid value: 4: must be less than or equal to 3 (the number of indexes in the specified succeededIndexes field)",
            ]
        );
        let plain = json!({"spec": {"successPolicy": {"rules": [{"succeededCount": 1}]}}});
        assert!(causes(job, plain)[0].ends_with("requires indexed completion mode"));
        let not_indexed = json!({"spec": {"backoffLimitPerIndex": 2, "maxFailedIndexes": 1}});
        assert_eq!(
            causes(job, not_indexed),
            [
                "spec.backoffLimitPerIndex: Invalid value: 2: requires indexed completion mode",
                "spec.maxFailedIndexes: Invalid value: 1: requires indexed completion mode",
            ]
        );
    }

    #[test]
    fn storage_kinds_need_what_upstream_requires() {
        let pv = json!({"spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"], "hostPath": {"path": "/x"}}});
        assert!(causes(persistent_volume, pv).is_empty());
        let bad = json!({"spec": {"accessModes": ["ReadWriteOncePod", "ReadOnlyMany"], "hostPath": {"path": "/x"}, "nfs": {"server": "s", "path": "/"}}});
        let got = causes(persistent_volume, bad);
        assert!(
            got.iter().any(|c| c.starts_with("spec.capacity")),
            "{got:?}"
        );
        assert!(
            got.iter().any(|c| c.contains("more than 1 volume type")),
            "{got:?}"
        );
        assert!(
            got.iter()
                .any(|c| c.contains("ReadWriteOncePod with other")),
            "{got:?}"
        );
        let claim = json!({"spec": {"accessModes": ["ReadWriteOnce"]}});
        assert_eq!(
            causes(persistent_volume_claim, claim),
            ["spec.resources[storage]: Required value"]
        );
        let sc = json!({"provisioner": "example.com/x", "reclaimPolicy": "Recycle"});
        assert_eq!(causes(storage_class, sc).len(), 1);
    }

    #[test]
    fn ingresses_endpoints_and_budgets() {
        let ok = json!({"spec": {"rules": [{"host": "a.example", "http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "s", "port": {"number": 80}}}}]}}]}});
        assert!(causes(ingress, ok).is_empty());
        let bad = json!({"spec": {"rules": [{"host": "10.0.0.1", "http": {"paths": [{"path": "x", "pathType": "Exact", "backend": {"service": {"name": "s", "port": {}}}}, {"path": "/"}]}}]}});
        let got = causes(ingress, bad);
        assert_eq!(got.len(), 5, "{got:?}");
        let slice = json!({"addressType": "IPv4", "endpoints": [{"addresses": ["10.0.0.1"]}, {"addresses": ["fe80::1"]}, {"addresses": []}]});
        let got = causes(endpoint_slice, slice);
        assert_eq!(got.len(), 2, "{got:?}");
        let ep = json!({"subsets": [{"addresses": [{"ip": "nope"}], "ports": [{"port": 0, "protocol": "ICMP"}]}]});
        assert_eq!(causes(endpoints, ep).len(), 3);
        let pdb = json!({"spec": {"minAvailable": 1, "maxUnavailable": "150%"}});
        assert_eq!(causes(pod_disruption_budget, pdb).len(), 2);
    }

    #[test]
    fn rules_data_keys_and_secret_types() {
        let role = json!({"rules": [{"verbs": ["get"], "resources": ["pods"]}, {"verbs": ["get"], "nonResourceURLs": ["/healthz"]}]});
        let got = causes(|o, c| policy_rules(o, false, c), role.clone());
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(causes(|o, c| policy_rules(o, true, c), role).len(), 1);
        let cm = json!({"data": {"ok.key": "v", "bad/key": "v", "both": "x"}, "binaryData": {"both": "eA=="}});
        assert_eq!(causes(config_map, cm).len(), 2);
        let tls = json!({"type": "kubernetes.io/tls", "data": {"tls.crt": "eA=="}});
        assert_eq!(causes(secret, tls), ["data[tls.key]: Required value"]);
        let sa = json!({"type": "kubernetes.io/service-account-token", "metadata": {"annotations": {"kubernetes.io/service-account.name": "default"}}});
        assert!(causes(secret, sa).is_empty());
    }

    #[test]
    fn updates_keep_what_upstream_keeps() {
        let mut c = Vec::new();
        let old = json!({"spec": {"serviceName": "a", "replicas": 1}});
        update(
            "StatefulSet",
            &old,
            &json!({"spec": {"serviceName": "a", "replicas": 3}}),
            &mut c,
        );
        assert!(c.is_empty());
        update(
            "StatefulSet",
            &old,
            &json!({"spec": {"serviceName": "b", "replicas": 1}}),
            &mut c,
        );
        assert_eq!(c.len(), 1);
        let mut c = Vec::new();
        let claim = json!({"spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}});
        let mut bound = claim.clone();
        bound["spec"]["volumeName"] = json!("pv1");
        bound["spec"]["resources"]["requests"]["storage"] = json!("2Gi");
        update("PersistentVolumeClaim", &claim, &bound, &mut c);
        assert!(
            c.is_empty(),
            "{:?}",
            c.iter().map(|c| &c.message).collect::<Vec<_>>()
        );
        let mut rebound = bound.clone();
        rebound["spec"]["volumeName"] = json!("pv2");
        update("PersistentVolumeClaim", &bound, &rebound, &mut c);
        assert_eq!(c.len(), 1);
        // Zero values and missing members are the same, as for upstream's typed objects.
        let mut c = Vec::new();
        let kubectl = json!({"spec": {"serviceName": "", "volumeClaimTemplates": [{"metadata": {"name": "d"}}]}});
        let typed = json!({"spec": {"volumeClaimTemplates": [{"metadata": {"name": "d", "creationTimestamp": null}, "status": {}}]}});
        update("StatefulSet", &kubectl, &typed, &mut c);
        assert!(c.is_empty());
        let mut c = Vec::new();
        update(
            "Secret",
            &json!({"type": "Opaque"}),
            &json!({"type": "kubernetes.io/tls"}),
            &mut c,
        );
        update(
            "StorageClass",
            &json!({"provisioner": "a"}),
            &json!({"provisioner": "b"}),
            &mut c,
        );
        assert_eq!(c.len(), 2);
    }
}
