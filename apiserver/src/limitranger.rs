//! The LimitRanger admission plugin, as upstream's: the namespace's LimitRanges fill in the
//! requests and limits a new pod's containers leave out (`default`, `defaultRequest`, noted in
//! the `kubernetes.io/limit-ranger` annotation), and refuse pods and claims outside their
//! `min`, `max` and `maxLimitRequestRatio`, per Container, per Pod (the pod's totals) and per
//! PersistentVolumeClaim (its storage request). Pods are checked when created (their resources
//! do not change after), claims when created or updated.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{LimitRange, LimitRangeItem, PodSpec};
use keelson_quota::quantity;
use serde_json::{Value, json};

use crate::admission::refusal;
use crate::cache::{Cache, Cacher};
use crate::registry::{ListOptions, Registry};
use crate::resources::Resource;
use crate::status::{ApiResult, Cause};

/// The annotation that records what the plugin filled in.
pub const ANNOTATION: &str = "kubernetes.io/limit-ranger";

/// The plugin.
pub struct LimitRanger {
    registry: Registry,
    ranges: &'static Resource,
    cache: Option<Arc<Cacher>>,
}

impl std::fmt::Debug for LimitRanger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LimitRanger")
    }
}

/// A quantity map of a LimitRange item or a container, by resource name.
type Amounts = BTreeMap<String, String>;

fn amounts(v: Option<&Value>) -> Amounts {
    v.and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, q)| Some((k.clone(), q.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

fn item_map(
    m: &Option<BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>,
) -> Amounts {
    m.iter()
        .flatten()
        .map(|(k, q)| (k.clone(), q.0.clone()))
        .collect()
}

/// A quantity as shown in a message: canonical, as upstream prints it.
fn show(q: &str) -> String {
    crate::quantity::canonical(q).unwrap_or_else(|| q.to_string())
}

fn nanos(q: &str) -> Option<i128> {
    quantity::parse(q)
}

/// The `min`, `max` and `maxLimitRequestRatio` checks of one item against one set of requests
/// and limits (of a container, of a pod's totals), in upstream's order and words.
fn check_item(
    kind: &str,
    item: &LimitRangeItem,
    requests: &Amounts,
    limits: &Amounts,
    errors: &mut Vec<String>,
) {
    for (k, min) in item_map(&item.min) {
        let e = nanos(&min).unwrap_or(0);
        let min = show(&min);
        match requests.get(&k) {
            None => errors.push(format!(
                "minimum {k} usage per {kind} is {min}.  No request is specified"
            )),
            Some(r) if nanos(r).unwrap_or(0) < e => errors.push(format!(
                "minimum {k} usage per {kind} is {min}, but request is {}",
                show(r)
            )),
            _ => {
                if let Some(l) = limits.get(&k).filter(|l| nanos(l).unwrap_or(0) < e) {
                    errors.push(format!(
                        "minimum {k} usage per {kind} is {min}, but limit is {}",
                        show(l)
                    ));
                }
            }
        }
    }
    for (k, max) in item_map(&item.max) {
        let e = nanos(&max).unwrap_or(0);
        let max = show(&max);
        match limits.get(&k) {
            None => errors.push(format!(
                "maximum {k} usage per {kind} is {max}.  No limit is specified"
            )),
            Some(l) if nanos(l).unwrap_or(0) > e => errors.push(format!(
                "maximum {k} usage per {kind} is {max}, but limit is {}",
                show(l)
            )),
            _ => {
                if let Some(r) = requests.get(&k).filter(|r| nanos(r).unwrap_or(0) > e) {
                    errors.push(format!(
                        "maximum {k} usage per {kind} is {max}, but request is {}",
                        show(r)
                    ));
                }
            }
        }
    }
    for (k, ratio) in item_map(&item.max_limit_request_ratio) {
        let e = nanos(&ratio).unwrap_or(0);
        let ratio = show(&ratio);
        let r = requests.get(&k).and_then(|r| nanos(r)).unwrap_or(0);
        let l = limits.get(&k).and_then(|l| nanos(l)).unwrap_or(0);
        if r == 0 {
            errors.push(format!(
                "{k} max limit to request ratio per {kind} is {ratio}, but no request is specified or request is 0"
            ));
        } else if l == 0 {
            errors.push(format!(
                "{k} max limit to request ratio per {kind} is {ratio}, but no limit is specified or limit is 0"
            ));
        } else if match (l.checked_mul(quantity::UNIT), e.checked_mul(r)) {
            (Some(a), Some(b)) => a > b,
            _ => l as f64 / r as f64 > e as f64 / quantity::UNIT as f64,
        } {
            errors.push(format!(
                "{k} max limit to request ratio per {kind} is {ratio}, but provided ratio is {:.6}",
                l as f64 / r as f64
            ));
        }
    }
}

/// A pod's totals for a Pod item, as `keelson-quota` computes them (without the overhead,
/// which upstream's limit check leaves out).
fn pod_totals(pod: &Value) -> (Amounts, Amounts) {
    let Some(mut spec) = pod
        .get("spec")
        .and_then(|s| serde_json::from_value::<PodSpec>(s.clone()).ok())
    else {
        return Default::default();
    };
    spec.overhead = None;
    let totals = |limits: bool| -> Amounts {
        keelson_quota::usage::pod_amounts(&spec, limits)
            .into_iter()
            .map(|(k, v)| (k.to_string(), quantity::format(v, k != "cpu")))
            .collect()
    };
    (totals(false), totals(true))
}

impl LimitRanger {
    /// The plugin, reading LimitRanges from `cache` (from the store when the cache is not
    /// ready).
    pub fn new(registry: Registry, cache: &Cache) -> Arc<Self> {
        let ranges =
            crate::resources::find("", "v1", "limitranges").expect("limitranges are served");
        Arc::new(LimitRanger {
            registry,
            ranges,
            cache: cache.get(ranges).cloned(),
        })
    }

    async fn ranges(&self, ns: &str) -> ApiResult<Vec<LimitRange>> {
        let objs = match self.cache.as_ref().and_then(|c| c.in_namespace(ns)) {
            Some(v) => v,
            None => {
                self.registry
                    .list(self.ranges, ns, &ListOptions::default())
                    .await?
                    .items
            }
        };
        Ok(objs
            .into_iter()
            .filter_map(|v| serde_json::from_value(v).ok())
            .collect())
    }

    /// Fills in a new pod's missing container requests and limits from the namespace's
    /// LimitRanges, and records what it set in the annotation.
    pub async fn default_pod(&self, ns: &str, pod: &mut Value) -> ApiResult<()> {
        for lr in self.ranges(ns).await? {
            let (mut requests, mut limits) = (Amounts::new(), Amounts::new());
            for item in lr.spec.iter().flat_map(|s| &s.limits) {
                if item.type_ == "Container" {
                    requests.extend(item_map(&item.default_request));
                    limits.extend(item_map(&item.default));
                }
            }
            if requests.is_empty() && limits.is_empty() {
                continue;
            }
            let mut notes = Vec::new();
            for (list, what) in [
                ("containers", "container"),
                ("initContainers", "init container"),
            ] {
                let Some(cs) = pod
                    .pointer_mut(&format!("/spec/{list}"))
                    .and_then(Value::as_array_mut)
                else {
                    continue;
                };
                for c in cs {
                    let name = c
                        .get("name")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string();
                    for (field, defaults, word) in [
                        ("requests", &requests, "request"),
                        ("limits", &limits, "limit"),
                    ] {
                        let mut set = Vec::new();
                        for (k, v) in defaults {
                            if c.pointer(&format!("/resources/{field}/{k}")).is_none() {
                                if !c.get("resources").is_some_and(Value::is_object) {
                                    c["resources"] = json!({});
                                }
                                if !c["resources"].get(field).is_some_and(Value::is_object) {
                                    c["resources"][field] = json!({});
                                }
                                c["resources"][field][k] = json!(v);
                                set.push(k.as_str());
                            }
                        }
                        if !set.is_empty() {
                            notes.push(format!("{} {word} for {what} {name}", set.join(", ")));
                        }
                    }
                }
            }
            if !notes.is_empty() {
                let m = crate::object::meta_mut(pod);
                if !m.get("annotations").is_some_and(Value::is_object) {
                    m.insert("annotations".into(), json!({}));
                }
                m["annotations"][ANNOTATION] =
                    json!(format!("LimitRanger plugin set: {}", notes.join("; ")));
            }
        }
        Ok(())
    }

    /// Refuses a pod (on create) or claim (on create and update) outside the namespace's
    /// LimitRanges; `update` says whether this is an update.
    pub async fn validate(
        &self,
        res: &Resource,
        ns: &str,
        update: bool,
        obj: &Value,
    ) -> ApiResult<()> {
        let pods = res.resource == "pods";
        if !res.group.is_empty()
            || !(pods && !update || res.resource == "persistentvolumeclaims")
            || ns.is_empty()
        {
            return Ok(());
        }
        for lr in self.ranges(ns).await? {
            let mut errors = Vec::new();
            for item in lr.spec.iter().flat_map(|s| &s.limits) {
                match (item.type_.as_str(), pods) {
                    ("Container", true) => {
                        for list in ["containers", "initContainers"] {
                            for c in obj
                                .pointer(&format!("/spec/{list}"))
                                .and_then(Value::as_array)
                                .into_iter()
                                .flatten()
                            {
                                check_item(
                                    "Container",
                                    item,
                                    &amounts(c.pointer("/resources/requests")),
                                    &amounts(c.pointer("/resources/limits")),
                                    &mut errors,
                                );
                            }
                        }
                    }
                    ("Pod", true) => {
                        let (requests, limits) = pod_totals(obj);
                        check_item("Pod", item, &requests, &limits, &mut errors);
                    }
                    ("PersistentVolumeClaim", false) => {
                        // Claims state requests only: both bounds apply to the request.
                        let requests = amounts(obj.pointer("/spec/resources/requests"));
                        let bounds = LimitRangeItem {
                            min: item.min.clone(),
                            max: None,
                            ..Default::default()
                        };
                        check_item(
                            "PersistentVolumeClaim",
                            &bounds,
                            &requests,
                            &Amounts::new(),
                            &mut errors,
                        );
                        for (k, max) in item_map(&item.max) {
                            match requests.get(&k) {
                                None => errors.push(format!(
                                    "maximum {k} usage per PersistentVolumeClaim is {}.  No request is specified",
                                    show(&max)
                                )),
                                Some(r) if nanos(r).unwrap_or(0) > nanos(&max).unwrap_or(0) => {
                                    errors.push(format!(
                                        "maximum {k} usage per PersistentVolumeClaim is {}, but request is {}",
                                        show(&max),
                                        show(r)
                                    ))
                                }
                                _ => {}
                            }
                        }
                    }
                    _ => {}
                }
            }
            if !errors.is_empty() {
                return Err(refusal(res, obj, &crate::admission::aggregate(errors)));
            }
        }
        Ok(())
    }
}

/// Defaults of a LimitRange's Container items, as upstream: the default limit is the max, the
/// default request the default limit, else the min.
pub fn default_limit_range(obj: &mut Value) {
    for item in obj
        .pointer_mut("/spec/limits")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
    {
        if item.get("type").and_then(Value::as_str) != Some("Container") {
            continue;
        }
        let get = |item: &Value, f: &str| {
            item.get(f)
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default()
        };
        let mut default = get(item, "default");
        let mut request = get(item, "defaultRequest");
        for (k, v) in get(item, "max") {
            default.entry(k).or_insert(v);
        }
        for (k, v) in default.clone().into_iter().chain(get(item, "min")) {
            request.entry(k).or_insert(v);
        }
        if !default.is_empty() {
            item["default"] = Value::Object(default);
        }
        if !request.is_empty() {
            item["defaultRequest"] = Value::Object(request);
        }
    }
}

/// Validation of a LimitRange, as upstream's: known types, each once; no defaults on Pod items;
/// claims bounded by a min or max storage; and per resource min ≤ defaultRequest ≤ default ≤
/// max, a ratio of at least 1 and at most max/min.
pub fn validate_limit_range(obj: &Value, causes: &mut Vec<Cause>) {
    let mut seen = Vec::new();
    let items = obj
        .pointer("/spec/limits")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for (i, item) in items.iter().enumerate() {
        let at = format!("spec.limits[{i}]");
        let ty = item.get("type").and_then(Value::as_str).unwrap_or("");
        if !matches!(ty, "Pod" | "Container" | "PersistentVolumeClaim") && !ty.contains('/') {
            causes.push(Cause::new(
                "FieldValueInvalid",
                &format!("{at}.type"),
                format!("Invalid value: {ty:?}: must be a standard limit type or fully qualified"),
            ));
        }
        if seen.contains(&ty) {
            causes.push(Cause::new(
                "FieldValueDuplicate",
                &format!("{at}.type"),
                format!("Duplicate value: {ty:?}"),
            ));
        }
        seen.push(ty);
        let map = |f: &str| amounts(item.get(f));
        let (min, max, default, request, ratio) = (
            map("min"),
            map("max"),
            map("default"),
            map("defaultRequest"),
            map("maxLimitRequestRatio"),
        );
        if ty == "Pod" {
            for (f, m) in [("default", &default), ("defaultRequest", &request)] {
                if !m.is_empty() {
                    causes.push(Cause::new(
                        "FieldValueForbidden",
                        &format!("{at}.{f}"),
                        "Forbidden: may not be specified when `type` is 'Pod'",
                    ));
                }
            }
        }
        if ty == "PersistentVolumeClaim"
            && !min.contains_key("storage")
            && !max.contains_key("storage")
        {
            causes.push(Cause::new(
                "FieldValueRequired",
                &format!("{at}.limits"),
                "Required value: either minimum or maximum storage value is required, but neither was provided",
            ));
        }
        let n = |m: &Amounts, k: &str| m.get(k).and_then(|q| nanos(q));
        let mut keys: Vec<&String> = min
            .keys()
            .chain(max.keys())
            .chain(default.keys())
            .chain(request.keys())
            .collect();
        keys.sort_unstable();
        keys.dedup();
        let mut bad = |field: &str, k: &str, value: &str, msg: String| {
            causes.push(Cause::new(
                "FieldValueInvalid",
                &format!("{at}.{field}[{k}]"),
                format!("Invalid value: {}: {msg}", show(value)),
            ));
        };
        for k in keys {
            let (mn, mx, df, rq) = (n(&min, k), n(&max, k), n(&default, k), n(&request, k));
            let s = |m: &Amounts| show(m.get(k).map(String::as_str).unwrap_or(""));
            if let (Some(a), Some(b)) = (mn, mx)
                && a > b
            {
                bad(
                    "min",
                    k,
                    &min[k],
                    format!(
                        "min value {} is greater than max value {}",
                        s(&min),
                        s(&max)
                    ),
                );
            }
            if let (Some(a), Some(b)) = (mn, rq)
                && a > b
            {
                bad(
                    "defaultRequest",
                    k,
                    &request[k],
                    format!(
                        "min value {} is greater than default request value {}",
                        s(&min),
                        s(&request)
                    ),
                );
            }
            if let (Some(a), Some(b)) = (rq, mx)
                && a > b
            {
                bad(
                    "defaultRequest",
                    k,
                    &request[k],
                    format!(
                        "default request value {} is greater than max value {}",
                        s(&request),
                        s(&max)
                    ),
                );
            }
            if let (Some(a), Some(b)) = (rq, df)
                && a > b
            {
                bad(
                    "defaultRequest",
                    k,
                    &request[k],
                    format!(
                        "default request value {} is greater than default limit value {}",
                        s(&request),
                        s(&default)
                    ),
                );
            }
            if let (Some(a), Some(b)) = (mn, df)
                && a > b
            {
                bad(
                    "default",
                    k,
                    &min[k],
                    format!(
                        "min value {} is greater than default value {}",
                        s(&min),
                        s(&default)
                    ),
                );
            }
            if let (Some(a), Some(b)) = (df, mx)
                && a > b
            {
                bad(
                    "default",
                    k,
                    &max[k],
                    format!(
                        "default value {} is greater than max value {}",
                        s(&default),
                        s(&max)
                    ),
                );
            }
        }
        for (k, r) in &ratio {
            let v = nanos(r).unwrap_or(0);
            if v < quantity::UNIT {
                bad(
                    "maxLimitRequestRatio",
                    k,
                    r,
                    format!("ratio {} is less than 1", show(r)),
                );
            } else if let (Some(a), Some(b)) = (n(&min, k), n(&max, k))
                && a > 0
                && v as f64 / quantity::UNIT as f64 > b as f64 / a as f64
            {
                bad(
                    "maxLimitRequestRatio",
                    k,
                    r,
                    format!(
                        "ratio {} is greater than max/min = {:.6}",
                        show(r),
                        b as f64 / a as f64
                    ),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission::aggregate;

    fn item(v: Value) -> LimitRangeItem {
        serde_json::from_value(v).unwrap()
    }

    fn am(v: Value) -> Amounts {
        amounts(Some(&v))
    }

    #[test]
    fn bounds_are_checked_in_upstream_words() {
        let it = item(
            json!({"type": "Container", "min": {"cpu": "100m"}, "max": {"cpu": "1", "memory": "1Gi"},
                             "maxLimitRequestRatio": {"cpu": "2"}}),
        );
        let mut e = Vec::new();
        check_item(
            "Container",
            &it,
            &am(json!({"cpu": "50m"})),
            &am(json!({"cpu": "2"})),
            &mut e,
        );
        assert_eq!(
            e,
            vec![
                "minimum cpu usage per Container is 100m, but request is 50m",
                "maximum cpu usage per Container is 1, but limit is 2",
                "maximum memory usage per Container is 1Gi.  No limit is specified",
                "cpu max limit to request ratio per Container is 2, but provided ratio is 40.000000",
            ]
        );
        let mut e = Vec::new();
        check_item(
            "Container",
            &it,
            &am(json!({"cpu": "500m"})),
            &am(json!({"cpu": "1", "memory": "512Mi"})),
            &mut e,
        );
        assert!(e.is_empty(), "{e:?}");
        let mut e = Vec::new();
        check_item(
            "Container",
            &it,
            &Amounts::new(),
            &am(json!({"cpu": "1", "memory": "1Gi"})),
            &mut e,
        );
        assert_eq!(
            e[0],
            "minimum cpu usage per Container is 100m.  No request is specified"
        );
        assert_eq!(aggregate(vec!["a".into()]), "a");
        assert_eq!(
            aggregate(vec!["a".into(), "b".into(), "a".into()]),
            "[a, b]"
        );
    }

    #[test]
    fn limit_ranges_are_defaulted_and_validated() {
        let mut lr = json!({"spec": {"limits": [
            {"type": "Container", "max": {"cpu": "2"}, "min": {"memory": "64Mi"}},
            {"type": "Pod", "max": {"cpu": "4"}}
        ]}});
        default_limit_range(&mut lr);
        assert_eq!(lr["spec"]["limits"][0]["default"], json!({"cpu": "2"}));
        assert_eq!(
            lr["spec"]["limits"][0]["defaultRequest"],
            json!({"cpu": "2", "memory": "64Mi"})
        );
        assert!(lr["spec"]["limits"][1].get("default").is_none());
        let mut c = Vec::new();
        validate_limit_range(&lr, &mut c);
        assert!(c.is_empty(), "{c:?}");
        let bad = json!({"spec": {"limits": [
            {"type": "Container", "min": {"cpu": "2"}, "max": {"cpu": "1"}, "maxLimitRequestRatio": {"memory": "500m"}},
            {"type": "Container"},
            {"type": "Pod", "default": {"cpu": "1"}},
            {"type": "PersistentVolumeClaim"},
            {"type": "Node"}
        ]}});
        let mut c = Vec::new();
        validate_limit_range(&bad, &mut c);
        let msgs: Vec<String> = c
            .iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect();
        assert_eq!(
            msgs,
            vec![
                "spec.limits[0].min[cpu]: Invalid value: 2: min value 2 is greater than max value 1",
                "spec.limits[0].maxLimitRequestRatio[memory]: Invalid value: 500m: ratio 500m is less than 1",
                "spec.limits[1].type: Duplicate value: \"Container\"",
                "spec.limits[2].default: Forbidden: may not be specified when `type` is 'Pod'",
                "spec.limits[3].limits: Required value: either minimum or maximum storage value is required, but neither was provided",
                "spec.limits[4].type: Invalid value: \"Node\": must be a standard limit type or fully qualified",
            ]
        );
    }

    #[test]
    fn pod_totals_add_containers() {
        let pod = json!({"spec": {"containers": [
            {"name": "a", "resources": {"requests": {"cpu": "250m", "memory": "64Mi"}}},
            {"name": "b", "resources": {"requests": {"cpu": "250m", "memory": "64Mi"}, "limits": {"memory": "1Gi"}}}
        ], "overhead": {"cpu": "1"}}});
        let (r, l) = pod_totals(&pod);
        assert_eq!((r["cpu"].as_str(), r["memory"].as_str()), ("500m", "128Mi"));
        assert_eq!(l["memory"], "1Gi");
    }
}
