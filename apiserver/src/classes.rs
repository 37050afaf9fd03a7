//! The admission plugins about classes, as upstream's: DefaultStorageClass (a new claim that
//! names no class gets the default StorageClass), DefaultIngressClass (likewise for an Ingress
//! and the default IngressClass) and PersistentVolumeClaimResize (a claim may grow only when it
//! is bound and its StorageClass allows volume expansion). When several classes are marked
//! default, the newest is chosen (by name on a tie).

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
    /// DefaultStorageClass.
    pub default_storage: bool,
    /// DefaultIngressClass.
    pub default_ingress: bool,
    /// PersistentVolumeClaimResize.
    pub resize: bool,
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
            default_storage,
            default_ingress,
            resize,
        })
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
