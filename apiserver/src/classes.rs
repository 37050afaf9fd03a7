//! The admission plugins about classes, as upstream's: DefaultStorageClass (a new claim that
//! names no class gets the default StorageClass), DefaultIngressClass (likewise for an Ingress
//! and the default IngressClass) and PersistentVolumeClaimResize (a claim may grow only when it
//! is bound and its StorageClass allows volume expansion). When several classes are marked
//! default, the newest is chosen (by name on a tie).
//!
//! RuntimeClass: a new pod naming a RuntimeClass must name one that exists; it gets the class's
//! `overhead.podFixed` as `spec.overhead` (a different overhead of its own is refused, as is an
//! overhead without a class that defines one), the class's `scheduling.nodeSelector` merged
//! into its node selector (a conflicting value is refused) and its tolerations added.

use std::sync::Arc;

use serde_json::{Value, json};

use crate::admission::refusal;
use crate::cache::{Cache, Cacher};
use crate::registry::{ListOptions, Registry};
use crate::resources::Resource;
use crate::status::ApiResult;

/// The annotations that mark a default StorageClass (GA and beta).
const DEFAULT_STORAGE: [&str; 2] = [
    "storageclass.kubernetes.io/is-default-class",
    "storageclass.beta.kubernetes.io/is-default-class",
];
/// The annotation that marks a default IngressClass.
const DEFAULT_INGRESS: &str = "ingressclass.kubernetes.io/is-default-class";

/// One kind of class: where it is served and cached.
struct Classes {
    res: &'static Resource,
    cache: Option<Arc<Cacher>>,
}

/// The plugins, each on or off.
pub struct ClassPlugins {
    registry: Registry,
    storage: Classes,
    ingress: Classes,
    runtime: Classes,
    /// DefaultStorageClass.
    pub default_storage: bool,
    /// DefaultIngressClass.
    pub default_ingress: bool,
    /// PersistentVolumeClaimResize.
    pub resize: bool,
    /// RuntimeClass.
    pub runtime_class: bool,
}

impl std::fmt::Debug for ClassPlugins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClassPlugins")
    }
}

fn annotation<'a>(obj: &'a Value, key: &str) -> Option<&'a str> {
    obj.pointer("/metadata/annotations")
        .and_then(|a| a.get(key))
        .and_then(Value::as_str)
}

/// The default among `classes` (marked by any of `marks`): the newest, by name on a tie.
fn newest_default<'a>(classes: &'a [Value], marks: &[&str]) -> Option<&'a str> {
    classes
        .iter()
        .filter(|c| marks.iter().any(|m| annotation(c, m) == Some("true")))
        .map(|c| {
            (
                crate::object::meta_str(c, "creationTimestamp"),
                crate::object::name(c),
            )
        })
        // RFC 3339 timestamps in UTC compare as strings.
        .max_by(|a, b| a.0.cmp(b.0).then_with(|| b.1.cmp(a.1)))
        .map(|(_, name)| name)
}

/// RuntimeClass's changes to a new pod given its class (None: it names none).
fn apply_runtime_class(class: Option<&Value>, pod: &mut Value) -> Result<(), String> {
    let fixed = class
        .and_then(|c| c.pointer("/overhead/podFixed"))
        .filter(|o| o.as_object().is_some_and(|m| !m.is_empty()));
    let own = pod.pointer("/spec/overhead").filter(|o| !o.is_null());
    match (fixed, own) {
        (Some(f), Some(o)) if !same_quantities(f, o) => {
            return Err(
                "pod rejected: Pod's Overhead doesn't match RuntimeClass's defined Overhead".into(),
            );
        }
        (Some(f), _) => pod["spec"]["overhead"] = f.clone(),
        (None, Some(_)) => {
            return Err(
                "pod rejected: Pod Overhead set without corresponding RuntimeClass defined Overhead"
                    .into(),
            );
        }
        (None, None) => {}
    }
    let Some(scheduling) = class.and_then(|c| c.get("scheduling")) else {
        return Ok(());
    };
    if let Some(selector) = scheduling.get("nodeSelector").and_then(Value::as_object) {
        let mut merged = pod
            .pointer("/spec/nodeSelector")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        for (k, v) in selector {
            match merged.get(k) {
                Some(p) if p != v => {
                    return Err(format!(
                        "conflict: runtimeClass.scheduling.nodeSelector[{k}] = {}; pod.spec.nodeSelector[{k}] = {}",
                        v.as_str().unwrap_or(""),
                        p.as_str().unwrap_or("")
                    ));
                }
                _ => {
                    merged.insert(k.clone(), v.clone());
                }
            }
        }
        if !merged.is_empty() {
            pod["spec"]["nodeSelector"] = Value::Object(merged);
        }
    }
    if let Some(tolerations) = scheduling.get("tolerations").and_then(Value::as_array) {
        let mut list = pod
            .pointer("/spec/tolerations")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for t in tolerations {
            if !list.contains(t) {
                list.push(t.clone());
            }
        }
        if !list.is_empty() {
            pod["spec"]["tolerations"] = Value::Array(list);
        }
    }
    Ok(())
}

/// Whether two resource lists hold the same quantities (`1Gi` equals `1024Mi`).
fn same_quantities(a: &Value, b: &Value) -> bool {
    let parse = |v: &Value| -> Option<std::collections::BTreeMap<String, i128>> {
        v.as_object()?
            .iter()
            .map(|(k, q)| Some((k.clone(), keelson_quota::quantity::parse(q.as_str()?)?)))
            .collect()
    };
    parse(a).is_some() && parse(a) == parse(b)
}

/// A claim's storage request, in nano-units.
fn claim_storage(pvc: &Value) -> i128 {
    pvc.pointer("/spec/resources/requests/storage")
        .and_then(Value::as_str)
        .and_then(keelson_quota::quantity::parse)
        .unwrap_or(0)
}

/// A claim's class: the beta annotation, else the field.
fn claim_class(pvc: &Value) -> &str {
    annotation(pvc, "volume.beta.kubernetes.io/storage-class")
        .or_else(|| {
            pvc.pointer("/spec/storageClassName")
                .and_then(Value::as_str)
        })
        .unwrap_or("")
}

impl ClassPlugins {
    /// The plugins (each flag says whether it is on), reading classes from `cache` (from the
    /// store when the cache is not ready).
    pub fn new(
        registry: Registry,
        cache: &Cache,
        default_storage: bool,
        default_ingress: bool,
        resize: bool,
        runtime_class: bool,
    ) -> Arc<Self> {
        let classes = |group: &str, resource: &str| {
            let res = crate::resources::find(group, "v1", resource).expect("classes are served");
            Classes {
                res,
                cache: cache.get(res).cloned(),
            }
        };
        Arc::new(ClassPlugins {
            registry,
            storage: classes("storage.k8s.io", "storageclasses"),
            ingress: classes("networking.k8s.io", "ingressclasses"),
            runtime: classes("node.k8s.io", "runtimeclasses"),
            default_storage,
            default_ingress,
            resize,
            runtime_class,
        })
    }

    /// The class called `name`, from the cache or the store.
    async fn one(&self, c: &Classes, name: &str) -> ApiResult<Option<Value>> {
        if let Some(v) = c.cache.as_ref().and_then(|c| c.peek("", name)) {
            return Ok(Some(v));
        }
        match self.registry.get(c.res, "", name).await {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.code == 404 => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// RuntimeClass, on a pod's create: the class's overhead and scheduling.
    pub async fn runtime_class(&self, res: &Resource, pod: &mut Value) -> ApiResult<()> {
        if !self.runtime_class || !res.group.is_empty() || res.resource != "pods" {
            return Ok(());
        }
        let name = pod
            .pointer("/spec/runtimeClassName")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .map(str::to_string);
        let class = match &name {
            Some(n) => match self.one(&self.runtime, n).await? {
                Some(c) => Some(c),
                None => {
                    return Err(refusal(
                        res,
                        pod,
                        &format!("pod rejected: RuntimeClass {n:?} not found"),
                    ));
                }
            },
            None => None,
        };
        apply_runtime_class(class.as_ref(), pod).map_err(|why| refusal(res, pod, &why))
    }

    async fn all(&self, c: &Classes) -> ApiResult<Vec<Value>> {
        match c.cache.as_ref().and_then(|c| c.entries()) {
            Some(e) => Ok(e.into_iter().map(|(_, v)| v).collect()),
            None => Ok(self
                .registry
                .list(c.res, "", &ListOptions::default())
                .await?
                .items),
        }
    }

    /// On create: a claim or Ingress that names no class gets the default one, if any.
    pub async fn default_class(&self, res: &Resource, obj: &mut Value) -> ApiResult<()> {
        match (res.group, res.resource) {
            ("", "persistentvolumeclaims") if self.default_storage => {
                // An explicit class (even "") or the beta annotation is left alone.
                if obj
                    .pointer("/spec/storageClassName")
                    .is_some_and(|v| !v.is_null())
                    || annotation(obj, "volume.beta.kubernetes.io/storage-class").is_some()
                {
                    return Ok(());
                }
                let classes = self.all(&self.storage).await?;
                if let Some(name) = newest_default(&classes, &DEFAULT_STORAGE)
                    && let Some(spec) = obj.get_mut("spec").filter(|s| s.is_object())
                {
                    spec["storageClassName"] = json!(name);
                }
            }
            ("networking.k8s.io", "ingresses") if self.default_ingress => {
                if obj
                    .pointer("/spec/ingressClassName")
                    .is_some_and(|v| !v.is_null())
                    || annotation(obj, "kubernetes.io/ingress.class").is_some()
                {
                    return Ok(());
                }
                let classes = self.all(&self.ingress).await?;
                if let Some(name) = newest_default(&classes, &[DEFAULT_INGRESS]) {
                    if !obj.get("spec").is_some_and(Value::is_object) {
                        obj["spec"] = json!({});
                    }
                    obj["spec"]["ingressClassName"] = json!(name);
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// On update: a claim that grows must be bound, and its class must allow expansion.
    pub async fn check_resize(&self, res: &Resource, old: &Value, obj: &Value) -> ApiResult<()> {
        if !self.resize
            || !res.group.is_empty()
            || res.resource != "persistentvolumeclaims"
            || claim_storage(obj) <= claim_storage(old)
        {
            return Ok(());
        }
        if old.pointer("/status/phase").and_then(Value::as_str) != Some("Bound") {
            return Err(refusal(
                res,
                obj,
                "Only bound persistent volume claims can be expanded",
            ));
        }
        let class = claim_class(obj);
        let allowed = !class.is_empty()
            && class == claim_class(old)
            && self
                .all(&self.storage)
                .await?
                .iter()
                .find(|c| crate::object::name(c) == class)
                .and_then(|c| c.get("allowVolumeExpansion"))
                .and_then(Value::as_bool)
                == Some(true);
        if allowed {
            Ok(())
        } else {
            Err(refusal(
                res,
                obj,
                "only dynamically provisioned pvc can be resized and the storageclass that provisions the pvc must support resize",
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_classes_bring_overhead_and_scheduling() {
        let class = json!({"handler": "kata", "overhead": {"podFixed": {"cpu": "250m", "memory": "120Mi"}},
            "scheduling": {"nodeSelector": {"runtime": "kata"},
                           "tolerations": [{"key": "kata", "operator": "Exists", "effect": "NoSchedule"}]}});
        let mut pod = json!({"spec": {"runtimeClassName": "kata", "nodeSelector": {"zone": "a"},
            "containers": [{"name": "c"}]}});
        apply_runtime_class(Some(&class), &mut pod).unwrap();
        assert_eq!(
            pod["spec"]["overhead"],
            json!({"cpu": "250m", "memory": "120Mi"})
        );
        assert_eq!(
            pod["spec"]["nodeSelector"],
            json!({"zone": "a", "runtime": "kata"})
        );
        assert_eq!(pod["spec"]["tolerations"][0]["key"], "kata");
        // The same overhead written differently is fine; another is not.
        let mut same = json!({"spec": {"overhead": {"cpu": "0.25", "memory": "120Mi"}}});
        assert!(apply_runtime_class(Some(&class), &mut same).is_ok());
        let mut other = json!({"spec": {"overhead": {"cpu": "1"}}});
        assert!(
            apply_runtime_class(Some(&class), &mut other)
                .unwrap_err()
                .contains("doesn't match")
        );
        let mut conflict = json!({"spec": {"nodeSelector": {"runtime": "runc"}}});
        assert!(
            apply_runtime_class(Some(&class), &mut conflict)
                .unwrap_err()
                .starts_with("conflict: runtimeClass.scheduling.nodeSelector[runtime] = kata")
        );
        let mut stray = json!({"spec": {"overhead": {"cpu": "1"}}});
        assert!(
            apply_runtime_class(None, &mut stray)
                .unwrap_err()
                .contains("without corresponding RuntimeClass")
        );
    }

    #[test]
    fn the_newest_default_wins() {
        let class = |name: &str, at: &str, default: Option<&str>| {
            let mut c = json!({"metadata": {"name": name, "creationTimestamp": at}});
            if let Some(d) = default {
                c["metadata"]["annotations"] = json!({DEFAULT_STORAGE[0]: d});
            }
            c
        };
        let classes = vec![
            class("old", "2025-01-01T00:00:00Z", Some("true")),
            class("plain", "2026-01-01T00:00:00Z", None),
            class("newer", "2025-06-01T00:00:00Z", Some("true")),
            class("also-newer", "2025-06-01T00:00:00Z", Some("true")),
            class("off", "2026-02-01T00:00:00Z", Some("false")),
        ];
        assert_eq!(
            newest_default(&classes, &DEFAULT_STORAGE),
            Some("also-newer")
        );
        assert_eq!(newest_default(&classes[1..2], &DEFAULT_STORAGE), None);
        let pvc = json!({"metadata": {"annotations": {"volume.beta.kubernetes.io/storage-class": "a"}},
            "spec": {"storageClassName": "b", "resources": {"requests": {"storage": "1Gi"}}}});
        assert_eq!(claim_class(&pvc), "a");
        assert_eq!(claim_storage(&pvc), (1i128 << 30) * 1_000_000_000);
    }
}
