//! The ResourceQuota admission plugin, as upstream's: a write that would take a namespace past
//! one of its quotas is refused, and one that fits is charged to the quotas' `status.used`
//! before it is stored, so concurrent writes cannot together overrun a quota. The quota
//! controller later recomputes `used` from what exists (and so gives back what deletes free).
//!
//! What counts is `keelson-quota`'s, shared with the controller. As upstream: creates of any
//! namespaced object are charged, updates of services and claims are charged for what they
//! grow; subresources, events and reviews are not; a quota is enforced once the controller has
//! written its `status.hard`, and refuses writes while its `status.used` lacks a resource it
//! limits. Charges are made per namespace by one worker on this server, which takes the
//! writes waiting in a batch, checks them one after another and writes each quota once for
//! all of them; other servers' charges are detected by the status write's resourceVersion
//! precondition (then re-read and re-checked).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Pod, ResourceQuota};
use k8s_openapi::jiff::Timestamp;
use keelson_quota::quantity;
use keelson_quota::scope;
use keelson_quota::usage::{self, Usage};
use serde_json::{Value, json};

use crate::admission::refusal;
use crate::cache::{Cache, Cacher};
use crate::registry::{ListOptions, Registry};
use crate::resources::Resource;
use crate::status::{ApiError, ApiResult, Cause};

/// Resources quota never charges: events and the review resources that are never stored.
const IGNORED: &[(&str, &str)] = &[
    ("", "events"),
    ("events.k8s.io", "events"),
    ("", "bindings"),
    ("", "componentstatuses"),
    ("authentication.k8s.io", "tokenreviews"),
    ("authentication.k8s.io", "selfsubjectreviews"),
    ("authorization.k8s.io", "subjectaccessreviews"),
    ("authorization.k8s.io", "selfsubjectaccessreviews"),
    ("authorization.k8s.io", "localsubjectaccessreviews"),
    ("authorization.k8s.io", "selfsubjectrulesreviews"),
];

/// How often a charge is re-read and re-tried when another writer changed a quota first.
const ATTEMPTS: usize = 4;

/// The plugin.
pub struct QuotaAdmission {
    registry: Registry,
    quotas: &'static Resource,
    cache: Option<Arc<Cacher>>,
    /// The writes waiting in each namespace; a namespace is here while its worker runs.
    queues: parking_lot::Mutex<HashMap<String, Vec<Pending>>>,
}

/// A write waiting to be checked and charged.
struct Pending {
    res: &'static Resource,
    obj: Value,
    old: Option<Value>,
    pod: Option<Pod>,
    usage: Usage,
    dry_run: bool,
    /// Quotas an earlier attempt charged it to already.
    charged: BTreeSet<String>,
    reply: tokio::sync::oneshot::Sender<ApiResult<()>>,
}

impl std::fmt::Debug for QuotaAdmission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("QuotaAdmission")
    }
}

/// One quota that applies to a write, and what the write would make of its `used`.
struct Charge {
    quota: Value,
    used: BTreeMap<String, String>,
}

impl QuotaAdmission {
    /// The plugin, knowing where quotas are from `cache` (the store is read when the cache is
    /// not ready).
    pub fn new(registry: Registry, cache: &Cache) -> Arc<Self> {
        let quotas =
            crate::resources::find("", "v1", "resourcequotas").expect("resourcequotas are served");
        Arc::new(QuotaAdmission {
            registry,
            quotas,
            cache: cache.get(quotas).cloned(),
            queues: parking_lot::Mutex::new(HashMap::new()),
        })
    }

    /// Whether a write of `res` is charged at all: creates of namespaced objects, updates of
    /// services and claims; not subresources, not the ignored resources.
    pub fn charges(res: &Resource, update: bool) -> bool {
        res.namespaced
            && !IGNORED.contains(&(res.group, res.resource))
            && (!update
                || (res.group.is_empty()
                    && matches!(res.resource, "services" | "persistentvolumeclaims")))
    }

    /// Checks and charges the write of `obj` (`old` is the object before an update) in
    /// namespace `ns`. A dry run is checked and not charged.
    pub async fn admit(
        self: &Arc<Self>,
        res: &Resource,
        ns: &str,
        old: Option<&Value>,
        obj: &Value,
        dry_run: bool,
    ) -> ApiResult<()> {
        if ns.is_empty() || !Self::charges(res, old.is_some()) {
            return Ok(());
        }
        if self.cache.as_ref().and_then(|c| c.any_in(ns)) == Some(false) {
            return Ok(());
        }
        let res = crate::resources::find(res.group, res.version, res.resource)
            .ok_or_else(|| ApiError::internal("resource quota: unknown resource"))?;
        let now = Timestamp::now();
        let (reply, answer) = tokio::sync::oneshot::channel();
        // A pod is read once: for its usage, its scopes and the "must specify" check.
        let pod: Option<Pod> = (res.group.is_empty() && res.resource == "pods")
            .then(|| serde_json::from_value(obj.clone()).ok())
            .flatten();
        let pending = Pending {
            res,
            usage: match &pod {
                Some(p) => usage::pod_usage(p, now),
                None => usage::usage_of(res.group, res.resource, obj, now),
            },
            pod,
            obj: obj.clone(),
            old: old.cloned(),
            dry_run,
            charged: BTreeSet::new(),
            reply,
        };
        // Joins the namespace's queue; the first write starts its worker.
        let start = {
            let mut queues = self.queues.lock();
            match queues.get_mut(ns) {
                Some(q) => {
                    q.push(pending);
                    false
                }
                None => {
                    queues.insert(ns.to_string(), vec![pending]);
                    true
                }
            }
        };
        if start {
            let me = self.clone();
            let ns = ns.to_string();
            tokio::spawn(async move { me.work(ns).await });
        }
        answer
            .await
            .unwrap_or_else(|_| Err(ApiError::internal("resource quota evaluation failed")))
    }

    /// Drains a namespace's queue, batch by batch, until it is empty.
    async fn work(self: Arc<Self>, ns: String) {
        // Should a batch panic, the queue goes (its writes are answered with an error) so
        // that the next write starts afresh.
        struct Reset<'a>(&'a QuotaAdmission, &'a str, bool);
        impl Drop for Reset<'_> {
            fn drop(&mut self) {
                if self.2 {
                    self.0.queues.lock().remove(self.1);
                }
            }
        }
        let mut reset = Reset(&self, &ns, true);
        loop {
            let batch = {
                let mut queues = self.queues.lock();
                match queues.get_mut(&ns) {
                    Some(q) if !q.is_empty() => std::mem::take(q),
                    _ => {
                        queues.remove(&ns);
                        reset.2 = false;
                        return;
                    }
                }
            };
            self.charge_batch(&ns, batch).await;
        }
    }

    /// Checks the writes of a batch one after another against the quotas as they would be
    /// after the earlier ones, then writes each quota that changed once. Writes whose quotas
    /// another writer changed first are re-checked against fresh quotas (not against the ones
    /// they were charged to already).
    async fn charge_batch(&self, ns: &str, mut batch: Vec<Pending>) {
        let now = Timestamp::now();
        let mut last_conflict = None;
        for _ in 0..ATTEMPTS {
            let quotas = match self
                .registry
                .list(self.quotas, ns, &ListOptions::default())
                .await
            {
                Ok(page) => page.items,
                Err(e) => {
                    for p in batch {
                        let _ = p.reply.send(Err(e.clone()));
                    }
                    return;
                }
            };
            let name_of = |q: &Value| crate::object::name(q).to_string();
            let mut running = quotas.clone();
            let mut waiting: Vec<(Pending, Vec<usize>)> = Vec::new();
            for p in batch.drain(..) {
                let view: Vec<Value> = running
                    .iter()
                    .filter(|q| !p.charged.contains(crate::object::name(q)))
                    .cloned()
                    .collect();
                match Self::check(
                    p.res,
                    &p.obj,
                    p.old.as_ref(),
                    p.pod.as_ref(),
                    &p.usage,
                    &view,
                    now,
                ) {
                    Err(e) => {
                        let _ = p.reply.send(Err(e));
                    }
                    Ok(charges) if p.dry_run || charges.is_empty() => {
                        let _ = p.reply.send(Ok(()));
                    }
                    Ok(charges) => {
                        let mut at = Vec::new();
                        for c in charges {
                            let name = name_of(&c.quota);
                            if let Some(i) = running.iter().position(|q| name_of(q) == name) {
                                running[i]["status"]["used"] = json!(c.used);
                                at.push(i);
                            }
                        }
                        waiting.push((p, at));
                    }
                }
            }
            let changed: BTreeSet<usize> = waiting.iter().flat_map(|(_, at)| at.clone()).collect();
            let mut outcome: BTreeMap<usize, ApiResult<()>> = BTreeMap::new();
            for i in changed {
                let r = self
                    .registry
                    .write_status(
                        self.quotas,
                        ns,
                        &name_of(&quotas[i]),
                        &quotas[i],
                        running[i].clone(),
                    )
                    .await
                    .map(|_| ());
                if let Err(e) = &r
                    && e.code == 409
                {
                    last_conflict = Some(e.clone());
                }
                outcome.insert(i, r);
            }
            for (mut p, at) in waiting {
                let failed = at
                    .iter()
                    .filter_map(|i| outcome.get(i).and_then(|r| r.as_ref().err()))
                    .find(|e| e.code != 409)
                    .cloned();
                if let Some(e) = failed {
                    let _ = p.reply.send(Err(e));
                } else if at.iter().all(|i| matches!(outcome.get(i), Some(Ok(())))) {
                    let _ = p.reply.send(Ok(()));
                } else {
                    for i in &at {
                        if matches!(outcome.get(i), Some(Ok(()))) {
                            p.charged.insert(name_of(&quotas[*i]));
                        }
                    }
                    batch.push(p);
                }
            }
            if batch.is_empty() {
                return;
            }
        }
        let e = last_conflict.unwrap_or_else(|| ApiError::internal("resource quota charge failed"));
        for p in batch {
            let _ = p.reply.send(Err(e.clone()));
        }
    }

    /// The checks of one write against the namespace's `quotas` (as listed); what each quota
    /// that applies would then have used.
    #[allow(clippy::too_many_arguments)]
    fn check(
        res: &Resource,
        obj: &Value,
        old: Option<&Value>,
        pod: Option<&Pod>,
        new_usage: &Usage,
        quotas: &[Value],
        now: Timestamp,
    ) -> ApiResult<Vec<Charge>> {
        let refuse = |why: String| refusal(res, obj, &why);
        // The quotas that apply: they limit something this object uses, and it is in scope.
        let mut applying: Vec<(&Value, ResourceQuota)> = Vec::new();
        for v in quotas {
            let Ok(rq) = serde_json::from_value::<ResourceQuota>(v.clone()) else {
                continue;
            };
            let qname = rq.metadata.name.clone().unwrap_or_default();
            let status = rq.status.clone().unwrap_or_default();
            let hard = status.hard.unwrap_or_default();
            let restricted: Vec<&str> = hard
                .keys()
                .map(String::as_str)
                .filter(|k| usage::tracked_by(res.group, res.resource, k))
                .collect();
            if restricted.is_empty() || !scope::applies(&rq.spec.clone().unwrap_or_default(), pod) {
                continue;
            }
            if let Some(p) = pod {
                usage::pod_constraints(restricted.iter().copied(), p)
                    .map_err(|e| refuse(format!("failed quota: {qname}: {e}")))?;
            }
            let used = status.used.unwrap_or_default();
            if restricted.iter().any(|k| !used.contains_key(*k)) {
                let mut names = restricted.clone();
                names.sort_unstable();
                return Err(refuse(format!(
                    "status unknown for quota: {qname}, resources: {}",
                    names.join(",")
                )));
            }
            applying.push((v, rq));
        }
        if applying.is_empty() {
            return Ok(Vec::new());
        }
        let negative: Vec<&str> = new_usage
            .iter()
            .filter(|(_, v)| **v < 0)
            .map(|(k, _)| k.as_str())
            .collect();
        if !negative.is_empty() {
            return Err(refuse(format!(
                "quota usage is negative for resource(s): {}",
                negative.join(",")
            )));
        }
        // An update is charged for what it adds.
        let mut delta = match old {
            Some(o) => usage::subtract_non_negative(
                new_usage,
                &usage::usage_of(res.group, res.resource, o, now),
            ),
            None => new_usage.clone(),
        };
        delta.retain(|_, v| *v != 0);
        if delta.is_empty() {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for (v, rq) in applying {
            let qname = rq.metadata.name.clone().unwrap_or_default();
            let status = rq.status.unwrap_or_default();
            let hard = status.hard.unwrap_or_default();
            let used = status.used.unwrap_or_default();
            let amount =
                |m: &BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
                 k: &str| {
                    m.get(k).and_then(|q| quantity::parse(&q.0)).unwrap_or(0)
                };
            let requested: Vec<(&String, i128)> = delta
                .iter()
                .filter(|(k, _)| hard.contains_key(*k))
                .map(|(k, v)| (k, *v))
                .collect();
            if requested.is_empty() {
                continue;
            }
            let exceeded: Vec<(&String, i128)> = requested
                .iter()
                // A limit too large to hold is no limit.
                .filter(|(k, v)| {
                    let limit = hard
                        .get(*k)
                        .and_then(|q| quantity::parse(&q.0))
                        .unwrap_or(i128::MAX);
                    amount(&used, k).saturating_add(*v) > limit
                })
                .copied()
                .collect();
            if !exceeded.is_empty() {
                let show = |f: &dyn Fn(&str, i128) -> String| {
                    exceeded
                        .iter()
                        .map(|(k, v)| format!("{k}={}", f(k, *v)))
                        .collect::<Vec<_>>()
                        .join(",")
                };
                let binary = |k: &str| hard.get(k).is_some_and(|q| quantity::is_binary(&q.0));
                return Err(refuse(format!(
                    "exceeded quota: {qname}, requested: {}, used: {}, limited: {}",
                    show(&|k, v| quantity::format(v, binary(k))),
                    show(&|k, _| used.get(k).map(|q| q.0.clone()).unwrap_or_default()),
                    show(&|k, _| hard.get(k).map(|q| q.0.clone()).unwrap_or_default()),
                )));
            }
            let mut new_used: BTreeMap<String, String> =
                used.iter().map(|(k, q)| (k.clone(), q.0.clone())).collect();
            for (k, d) in requested {
                let binary = hard.get(k).is_some_and(|q| quantity::is_binary(&q.0));
                new_used.insert(k.clone(), quantity::format(amount(&used, k) + d, binary));
            }
            out.push(Charge {
                quota: v.clone(),
                used: new_used,
            });
        }
        Ok(out)
    }
}

/// Quota resource names that need no domain.
const STANDARD_NAMES: &[&str] = &[
    "cpu",
    "memory",
    "ephemeral-storage",
    "requests.cpu",
    "requests.memory",
    "requests.storage",
    "requests.ephemeral-storage",
    "limits.cpu",
    "limits.memory",
    "limits.ephemeral-storage",
    "pods",
    "resourcequotas",
    "services",
    "replicationcontrollers",
    "secrets",
    "persistentvolumeclaims",
    "configmaps",
    "services.nodeports",
    "services.loadbalancers",
];

/// Quota resources counted in whole objects.
const INTEGER_NAMES: &[&str] = &[
    "pods",
    "resourcequotas",
    "services",
    "replicationcontrollers",
    "secrets",
    "configmaps",
    "persistentvolumeclaims",
    "services.nodeports",
    "services.loadbalancers",
];

/// The scopes and the standard resources a quota with that scope may limit.
const SCOPES: &[(&str, &[&str])] = &[
    ("Terminating", COMPUTE),
    ("NotTerminating", COMPUTE),
    ("BestEffort", &["pods"]),
    ("NotBestEffort", COMPUTE),
    ("PriorityClass", COMPUTE),
    ("CrossNamespacePodAffinity", COMPUTE),
];

const COMPUTE: &[&str] = &[
    "pods",
    "cpu",
    "memory",
    "requests.cpu",
    "requests.memory",
    "limits.cpu",
    "limits.memory",
];

fn standard_name(name: &str) -> bool {
    STANDARD_NAMES.contains(&name)
        || name.starts_with("hugepages-")
        || name.starts_with("requests.hugepages-")
}

/// Validation of a ResourceQuota, as upstream's: resource names standard or qualified,
/// quantities not negative (and whole for object counts), known and non-conflicting scopes
/// that fit the resources limited, and well-formed scope selectors.
pub fn validate_quota(obj: &Value, causes: &mut Vec<Cause>) {
    for (path, pointer) in [
        ("spec.hard", "/spec/hard"),
        ("status.hard", "/status/hard"),
        ("status.used", "/status/used"),
    ] {
        for (k, v) in obj
            .pointer(pointer)
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            let field = format!("{path}[{k}]");
            if !k.contains('/') && !standard_name(k) {
                if k != "storage" {
                    causes.push(Cause::new(
                        "FieldValueInvalid",
                        &field,
                        format!("Invalid value: {k:?}: must be a standard resource type or fully qualified"),
                    ));
                }
                causes.push(Cause::new(
                    "FieldValueInvalid",
                    &field,
                    format!("Invalid value: {k:?}: must be a standard resource for quota"),
                ));
            }
            let q = v.as_str().unwrap_or("");
            match quantity::parse(q) {
                Some(n) if n < 0 => causes.push(Cause::new(
                    "FieldValueInvalid",
                    &field,
                    format!("Invalid value: {q:?}: must be greater than or equal to 0"),
                )),
                Some(n)
                    if n % quantity::UNIT != 0
                        && (INTEGER_NAMES.contains(&k.as_str()) || k.starts_with("count/")) =>
                {
                    causes.push(Cause::new(
                        "FieldValueInvalid",
                        &field,
                        format!("Invalid value: {q}: must be an integer"),
                    ))
                }
                _ => {}
            }
        }
    }
    let hard: Vec<String> = obj
        .pointer("/spec/hard")
        .and_then(Value::as_object)
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    let fits = |scope: &str| {
        SCOPES
            .iter()
            .find(|(s, _)| *s == scope)
            .is_some_and(|(_, allowed)| {
                hard.iter()
                    .filter(|k| STANDARD_NAMES.contains(&k.as_str()))
                    .all(|k| allowed.contains(&k.as_str()))
            })
    };
    let conflicting = |names: &[&str]| {
        let has = |s: &str| names.contains(&s);
        (has("BestEffort") && has("NotBestEffort")) || (has("Terminating") && has("NotTerminating"))
    };
    let scopes: Vec<&str> = obj
        .pointer("/spec/scopes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let shown = format!(
        "[]core.ResourceQuotaScope{{{}}}",
        scopes
            .iter()
            .map(|s| format!("{s:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for s in &scopes {
        let msg = if !SCOPES.iter().any(|(n, _)| n == s) {
            "unsupported scope"
        } else if !fits(s) {
            "unsupported scope applied to resource"
        } else {
            continue;
        };
        causes.push(Cause::new(
            "FieldValueInvalid",
            "spec.scopes",
            format!("Invalid value: {shown}: {msg}"),
        ));
    }
    if conflicting(&scopes) {
        causes.push(Cause::new(
            "FieldValueInvalid",
            "spec.scopes",
            format!("Invalid value: {shown}: conflicting scopes"),
        ));
    }
    let exprs = obj
        .pointer("/spec/scopeSelector/matchExpressions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let base = "spec.scopeSelector.matchExpressions";
    let mut names = Vec::new();
    for (i, e) in exprs.iter().enumerate() {
        let at = format!("{base}[{i}]");
        let scope = e.get("scopeName").and_then(Value::as_str).unwrap_or("");
        let op = e.get("operator").and_then(Value::as_str).unwrap_or("");
        let values = e
            .get("values")
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        names.push(scope);
        if !SCOPES.iter().any(|(n, _)| *n == scope) {
            causes.push(Cause::new(
                "FieldValueInvalid",
                &format!("{at}.scopeName"),
                format!("Invalid value: {scope:?}: unsupported scope"),
            ));
            continue;
        }
        if !fits(scope) {
            causes.push(Cause::new(
                "FieldValueInvalid",
                "spec.scopeSelector",
                "Invalid value: unsupported scope applied to resource",
            ));
        }
        match op {
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            _ => {
                causes.push(Cause::new(
                    "FieldValueInvalid",
                    &format!("{at}.operator"),
                    format!("Invalid value: {op:?}: not a valid selector operator"),
                ));
                continue;
            }
        }
        if scope != "PriorityClass" && op != "Exists" {
            causes.push(Cause::new(
                "FieldValueInvalid",
                &format!("{at}.operator"),
                format!("Invalid value: {op:?}: must be 'Exists' when scope is any of ResourceQuotaScopeTerminating, ResourceQuotaScopeNotTerminating, ResourceQuotaScopeBestEffort, ResourceQuotaScopeNotBestEffort or ResourceQuotaScopeCrossNamespacePodAffinity"),
            ));
        } else if matches!(op, "In" | "NotIn") && values == 0 {
            causes.push(Cause::new(
                "FieldValueRequired",
                &format!("{at}.values"),
                "Required value: must be at least one value when `operator` is 'In' or 'NotIn' for scope selector",
            ));
        } else if matches!(op, "Exists" | "DoesNotExist") && values > 0 {
            causes.push(Cause::new(
                "FieldValueInvalid",
                &format!("{at}.values"),
                "Invalid value: must be no value when `operator` is 'Exist' or 'DoesNotExist' for scope selector",
            ));
        }
    }
    if conflicting(&names) {
        causes.push(Cause::new(
            "FieldValueInvalid",
            base,
            "Invalid value: conflicting scopes",
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quota(name: &str, spec: Value, hard: Value, used: Value) -> Value {
        json!({"metadata": {"name": name, "resourceVersion": "7"}, "spec": spec,
               "status": {"hard": hard, "used": used}})
    }

    fn check(
        res: &str,
        obj: &Value,
        old: Option<&Value>,
        quotas: &[Value],
    ) -> ApiResult<Vec<Charge>> {
        let res = crate::resources::find("", "v1", res).unwrap();
        let now = Timestamp::now();
        let pod: Option<Pod> = (res.resource == "pods")
            .then(|| serde_json::from_value(obj.clone()).ok())
            .flatten();
        let usage = usage::usage_of("", res.resource, obj, now);
        QuotaAdmission::check(res, obj, old, pod.as_ref(), &usage, quotas, now)
    }

    #[test]
    fn charges_and_refusals() {
        let pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c",
            "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "1Gi"}}}]}});
        let compute = quota(
            "compute",
            json!({}),
            json!({"requests.cpu": "1", "requests.memory": "2Gi", "pods": "5"}),
            json!({"requests.cpu": "700m", "requests.memory": "512Mi", "pods": "2"}),
        );
        let err = check("pods", &pod, None, std::slice::from_ref(&compute))
            .err()
            .unwrap();
        assert_eq!(err.code, 403);
        assert_eq!(
            err.message,
            r#"pods "p" is forbidden: exceeded quota: compute, requested: requests.cpu=500m, used: requests.cpu=700m, limited: requests.cpu=1"#
        );
        // Room enough: the charge adds to what is used, in the limit's notation.
        let roomy = quota(
            "compute",
            json!({}),
            json!({"requests.cpu": "2", "requests.memory": "2Gi", "pods": "5"}),
            json!({"requests.cpu": "700m", "requests.memory": "512Mi", "pods": "2"}),
        );
        let charges = check("pods", &pod, None, &[roomy]).unwrap();
        assert_eq!(charges.len(), 1);
        assert_eq!(
            json!(charges[0].used),
            json!({"requests.cpu": "1200m", "requests.memory": "1536Mi", "pods": "3"})
        );
        // A scoped quota applies to pods in its scope only; a quota not yet counted refuses.
        let best_effort = quota(
            "be",
            json!({"scopes": ["BestEffort"]}),
            json!({"pods": "0"}),
            json!({"pods": "0"}),
        );
        assert!(
            check("pods", &pod, None, &[best_effort])
                .unwrap()
                .is_empty()
        );
        let uncounted = quota(
            "new",
            json!({}),
            json!({"pods": "5", "count/configmaps": "1"}),
            json!({}),
        );
        assert_eq!(
            check("pods", &pod, None, &[uncounted])
                .err()
                .unwrap()
                .message,
            r#"pods "p" is forbidden: status unknown for quota: new, resources: pods"#
        );
        // A service update is charged for what it adds: becoming a NodePort.
        let svc_q = quota(
            "svc",
            json!({}),
            json!({"services": "1", "services.nodeports": "1"}),
            json!({"services": "1", "services.nodeports": "0"}),
        );
        let old = json!({"metadata": {"name": "s"}, "spec": {"type": "ClusterIP", "ports": [{"port": 80}]}});
        let new = json!({"metadata": {"name": "s"}, "spec": {"type": "NodePort", "ports": [{"port": 80}]}});
        let charges = check("services", &new, Some(&old), std::slice::from_ref(&svc_q)).unwrap();
        assert_eq!(
            json!(charges[0].used),
            json!({"services": "1", "services.nodeports": "1"})
        );
        let two = json!({"metadata": {"name": "s"}, "spec": {"type": "NodePort", "ports": [{"port": 80}, {"port": 81}]}});
        assert!(check("services", &two, Some(&old), &[svc_q]).err().unwrap().message.contains(
            "exceeded quota: svc, requested: services.nodeports=2, used: services.nodeports=0, limited: services.nodeports=1"
        ));
    }

    fn messages(obj: Value) -> Vec<String> {
        let mut c = Vec::new();
        validate_quota(&obj, &mut c);
        c.into_iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect()
    }

    #[test]
    fn quotas_are_validated_as_upstream() {
        assert!(
            messages(
                json!({"spec": {"hard": {"pods": "10", "requests.cpu": "1500m",
            "count/deployments.apps": "3", "requests.example.com/gpu": "2"}}})
            )
            .is_empty()
        );
        assert_eq!(
            messages(json!({"spec": {"hard": {"pods": "1500m", "memory": "-1", "foo": "1"}}})),
            vec![
                "spec.hard[foo]: Invalid value: \"foo\": must be a standard resource type or fully qualified",
                "spec.hard[foo]: Invalid value: \"foo\": must be a standard resource for quota",
                "spec.hard[memory]: Invalid value: \"-1\": must be greater than or equal to 0",
                "spec.hard[pods]: Invalid value: 1500m: must be an integer",
            ]
        );
        assert_eq!(
            messages(
                json!({"spec": {"hard": {"services": "1"}, "scopes": ["BestEffort", "NotBestEffort"]}})
            ),
            vec![
                "spec.scopes: Invalid value: []core.ResourceQuotaScope{\"BestEffort\", \"NotBestEffort\"}: unsupported scope applied to resource",
                "spec.scopes: Invalid value: []core.ResourceQuotaScope{\"BestEffort\", \"NotBestEffort\"}: unsupported scope applied to resource",
                "spec.scopes: Invalid value: []core.ResourceQuotaScope{\"BestEffort\", \"NotBestEffort\"}: conflicting scopes",
            ]
        );
        assert_eq!(
            messages(
                json!({"spec": {"hard": {"pods": "1"}, "scopeSelector": {"matchExpressions": [
                    {"scopeName": "PriorityClass", "operator": "In"},
                    {"scopeName": "Terminating", "operator": "In", "values": ["x"]},
                    {"scopeName": "Bogus", "operator": "Exists"}
                ]}}})
            ),
            vec![
                "spec.scopeSelector.matchExpressions[0].values: Required value: must be at least one value when `operator` is 'In' or 'NotIn' for scope selector",
                "spec.scopeSelector.matchExpressions[1].operator: Invalid value: \"In\": must be 'Exists' when scope is any of ResourceQuotaScopeTerminating, ResourceQuotaScopeNotTerminating, ResourceQuotaScopeBestEffort, ResourceQuotaScopeNotBestEffort or ResourceQuotaScopeCrossNamespacePodAffinity",
                "spec.scopeSelector.matchExpressions[2].scopeName: Invalid value: \"Bogus\": unsupported scope",
            ]
        );
    }
}
