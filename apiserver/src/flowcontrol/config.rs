//! Defaults and validation of FlowSchemas and PriorityLevelConfigurations (v1), as upstream's,
//! so that a configuration the classifier or the queues could not use is refused on write.

use serde_json::{Value, json};

use crate::authz::rbac::string_list;
use crate::status::Cause;
use crate::strategy::set_default;

/// Most queues one priority level may have. Upstream has no fixed cap (its dealer allows up to
/// 2^26); this server allocates every queue at once and refuses more than this.
pub const MAX_QUEUES: i64 = 1 << 16;

/// Applies the v1 defaults of a PriorityLevelConfiguration.
pub fn default_level(obj: &mut Value) {
    let Some(spec) = obj.get_mut("spec") else {
        return;
    };
    match spec.get("type").and_then(Value::as_str) {
        Some("Limited") => {
            set_default(spec, &["limited", "nominalConcurrencyShares"], json!(30));
            set_default(spec, &["limited", "lendablePercent"], json!(0));
            if spec
                .pointer("/limited/limitResponse/type")
                .and_then(Value::as_str)
                == Some("Queue")
            {
                for (k, v) in [("queues", 64), ("handSize", 8), ("queueLengthLimit", 50)] {
                    let slot = spec
                        .pointer("/limited/limitResponse/queuing")
                        .and_then(|q| q.get(k))
                        .and_then(Value::as_i64);
                    if slot.is_none_or(|n| n == 0) {
                        if let Some(q) = spec.pointer_mut("/limited/limitResponse/queuing") {
                            q[k] = json!(v);
                        } else {
                            spec["limited"]["limitResponse"]["queuing"] = json!({k: v});
                        }
                    }
                }
            }
        }
        Some("Exempt") => {
            set_default(spec, &["exempt", "nominalConcurrencyShares"], json!(0));
            set_default(spec, &["exempt", "lendablePercent"], json!(0));
        }
        _ => {}
    }
}

/// Applies the v1 defaults of a FlowSchema.
pub fn default_schema(obj: &mut Value) {
    if obj.get("spec").is_some() {
        let p = obj
            .pointer("/spec/matchingPrecedence")
            .and_then(Value::as_i64);
        if p.is_none_or(|p| p == 0) {
            obj["spec"]["matchingPrecedence"] = json!(1000);
        }
    }
}

fn required(causes: &mut Vec<Cause>, field: &str) {
    causes.push(Cause::new("FieldValueRequired", field, "Required value"));
}

fn invalid(causes: &mut Vec<Cause>, field: &str, v: impl std::fmt::Display, why: &str) {
    causes.push(Cause::new(
        "FieldValueInvalid",
        field,
        format!("Invalid value: {v}: {why}"),
    ));
}

fn percent(spec: &Value, pointer: &str, field: &str, max: Option<i64>, causes: &mut Vec<Cause>) {
    if let Some(v) = spec.pointer(pointer).filter(|v| !v.is_null()) {
        match v.as_i64() {
            Some(n) if n >= 0 && max.is_none_or(|m| n <= m) => {}
            _ => invalid(
                causes,
                field,
                v,
                match max {
                    Some(_) => "must be between 0 and 100, inclusive",
                    None => "must be a non-negative integer",
                },
            ),
        }
    }
}

/// Validates a PriorityLevelConfiguration (after defaulting).
pub fn validate_level(obj: &Value, causes: &mut Vec<Cause>) {
    let name = crate::object::name(obj);
    let Some(spec) = obj.get("spec").filter(|s| s.is_object()) else {
        required(causes, "spec");
        return;
    };
    let ty = spec.get("type").and_then(Value::as_str).unwrap_or("");
    match ty {
        "Exempt" | "Limited" => {}
        "" => required(causes, "spec.type"),
        t => causes.push(Cause::new(
            "FieldValueNotSupported",
            "spec.type",
            format!("Unsupported value: {t:?}: supported values: \"Exempt\", \"Limited\""),
        )),
    }
    if (name == "exempt") != (ty == "Exempt") && !ty.is_empty() {
        invalid(
            causes,
            "spec.type",
            format!("{ty:?}"),
            "only the priority level named \"exempt\" is of type Exempt, and it must be",
        );
    }
    let has = |k: &str| spec.get(k).is_some_and(|v| !v.is_null());
    if ty == "Exempt" && has("limited") {
        causes.push(Cause::new(
            "FieldValueForbidden",
            "spec.limited",
            "Forbidden: must be nil if the type is not Limited",
        ));
    }
    if ty == "Limited" && has("exempt") {
        causes.push(Cause::new(
            "FieldValueForbidden",
            "spec.exempt",
            "Forbidden: must be nil if the type is not Exempt",
        ));
    }
    if ty == "Exempt" {
        percent(
            spec,
            "/exempt/nominalConcurrencyShares",
            "spec.exempt.nominalConcurrencyShares",
            None,
            causes,
        );
        percent(
            spec,
            "/exempt/lendablePercent",
            "spec.exempt.lendablePercent",
            Some(100),
            causes,
        );
        return;
    }
    if ty != "Limited" {
        return;
    }
    let Some(limited) = spec.get("limited").filter(|l| l.is_object()) else {
        required(causes, "spec.limited");
        return;
    };
    percent(
        spec,
        "/limited/nominalConcurrencyShares",
        "spec.limited.nominalConcurrencyShares",
        None,
        causes,
    );
    percent(
        spec,
        "/limited/lendablePercent",
        "spec.limited.lendablePercent",
        Some(100),
        causes,
    );
    percent(
        spec,
        "/limited/borrowingLimitPercent",
        "spec.limited.borrowingLimitPercent",
        None,
        causes,
    );
    let response = limited
        .pointer("/limitResponse/type")
        .and_then(Value::as_str);
    let queuing = limited
        .pointer("/limitResponse/queuing")
        .filter(|q| !q.is_null());
    match (response, queuing) {
        (Some("Reject"), None) => {}
        (Some("Reject"), Some(_)) => causes.push(Cause::new(
            "FieldValueForbidden",
            "spec.limited.limitResponse.queuing",
            "Forbidden: must be nil if limited.limitResponse.type is not Limited",
        )),
        (Some("Queue"), None) => required(causes, "spec.limited.limitResponse.queuing"),
        (Some("Queue"), Some(q)) => {
            let get = |k: &str| q.get(k).and_then(Value::as_i64).unwrap_or(0);
            let (queues, hand, length) = (get("queues"), get("handSize"), get("queueLengthLimit"));
            let f = |k: &str| format!("spec.limited.limitResponse.queuing.{k}");
            if queues <= 0 {
                invalid(causes, &f("queues"), queues, "must be positive");
            } else if queues > MAX_QUEUES {
                invalid(
                    causes,
                    &f("queues"),
                    queues,
                    &format!("must be at most {MAX_QUEUES} on this server"),
                );
            }
            if length <= 0 {
                invalid(causes, &f("queueLengthLimit"), length, "must be positive");
            }
            if hand <= 0 {
                invalid(causes, &f("handSize"), hand, "must be positive");
            } else if queues > 0 && hand > queues {
                invalid(
                    causes,
                    &f("handSize"),
                    hand,
                    &format!("should not be greater than queues ({queues})"),
                );
            } else if queues > 0 {
                let bits = ((queues as f64).log2() * hand as f64).ceil();
                if bits > 60.0 {
                    invalid(
                        causes,
                        &f("handSize"),
                        hand,
                        &format!(
                            "required entropy bits of deckSize {queues} and handSize {hand} should not be greater than 60"
                        ),
                    );
                }
            }
        }
        (None, _) => required(causes, "spec.limited.limitResponse.type"),
        (Some(t), _) => causes.push(Cause::new(
            "FieldValueNotSupported",
            "spec.limited.limitResponse.type",
            format!("Unsupported value: {t:?}: supported values: \"Queue\", \"Reject\""),
        )),
    }
}

/// Validates a FlowSchema (after defaulting).
pub fn validate_schema(obj: &Value, causes: &mut Vec<Cause>) {
    let Some(spec) = obj.get("spec").filter(|s| s.is_object()) else {
        required(causes, "spec");
        return;
    };
    let p = spec
        .get("matchingPrecedence")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    if !(1..=10000).contains(&p) {
        invalid(
            causes,
            "spec.matchingPrecedence",
            p,
            "must be between 1 and 10000, inclusive",
        );
    }
    if spec
        .pointer("/priorityLevelConfiguration/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .is_empty()
    {
        required(causes, "spec.priorityLevelConfiguration.name");
    }
    if let Some(d) = spec.get("distinguisherMethod").filter(|d| !d.is_null()) {
        match d.get("type").and_then(Value::as_str) {
            Some("ByUser" | "ByNamespace") => {}
            other => causes.push(Cause::new(
                "FieldValueNotSupported",
                "spec.distinguisherMethod.type",
                format!(
                    "Unsupported value: {:?}: supported values: \"ByNamespace\", \"ByUser\"",
                    other.unwrap_or("")
                ),
            )),
        }
    }
    for (i, rule) in spec
        .get("rules")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let path = format!("spec.rules[{i}]");
        let subjects = rule.get("subjects").and_then(Value::as_array);
        if subjects.is_none_or(|s| s.is_empty()) {
            required(causes, &format!("{path}.subjects"));
        }
        for (j, s) in subjects.into_iter().flatten().enumerate() {
            let sp = format!("{path}.subjects[{j}]");
            let name_at = |p: &str| s.pointer(p).and_then(Value::as_str).unwrap_or("");
            match s.get("kind").and_then(Value::as_str) {
                Some("User") if !name_at("/user/name").is_empty() => {}
                Some("Group") if !name_at("/group/name").is_empty() => {}
                Some("ServiceAccount")
                    if !name_at("/serviceAccount/name").is_empty()
                        && !name_at("/serviceAccount/namespace").is_empty() => {}
                Some(k @ ("User" | "Group" | "ServiceAccount")) => {
                    required(causes, &format!("{sp}.{}", lower_first(k)))
                }
                other => causes.push(Cause::new(
                    "FieldValueNotSupported",
                    &format!("{sp}.kind"),
                    format!(
                        "Unsupported value: {:?}: supported values: \"Group\", \"ServiceAccount\", \"User\"",
                        other.unwrap_or("")
                    ),
                )),
            }
        }
        let resources = rule.get("resourceRules").and_then(Value::as_array);
        let urls = rule.get("nonResourceRules").and_then(Value::as_array);
        if resources.is_none_or(|r| r.is_empty()) && urls.is_none_or(|u| u.is_empty()) {
            required(
                causes,
                &format!(
                    "{path}: at least one of resourceRules and nonResourceRules has to be non-empty"
                ),
            );
        }
        for (j, r) in resources.into_iter().flatten().enumerate() {
            let rp = format!("{path}.resourceRules[{j}]");
            for k in ["verbs", "apiGroups", "resources"] {
                if string_list(r.get(k)).is_empty() {
                    required(causes, &format!("{rp}.{k}"));
                }
            }
            let cluster = r
                .get("clusterScope")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            if !cluster && string_list(r.get("namespaces")).is_empty() {
                required(
                    causes,
                    &format!(
                        "{rp}.namespaces: resource rules that are not cluster scoped must supply at least one namespace"
                    ),
                );
            }
        }
        for (j, u) in urls.into_iter().flatten().enumerate() {
            let up = format!("{path}.nonResourceRules[{j}]");
            for k in ["verbs", "nonResourceURLs"] {
                if string_list(u.get(k)).is_empty() {
                    required(causes, &format!("{up}.{k}"));
                }
            }
        }
    }
}

fn lower_first(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_lowercase().chain(c).collect(),
        None => String::new(),
    }
}
