//! PATCH bodies: JSON patch (RFC 6902), JSON merge patch (RFC 7386) and strategic merge patch
//! (lists merged by the built-in types' merge keys; `$patch`, `$retainKeys`,
//! `$deleteFromPrimitiveList/`, `$setElementOrder/` directives).

use serde_json::{Map, Value};

use crate::status::{ApiError, ApiResult};

/// The patch type, from the Content-Type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchKind {
    /// `application/json-patch+json`.
    Json,
    /// `application/merge-patch+json`.
    Merge,
    /// `application/strategic-merge-patch+json`.
    Strategic,
}

impl PatchKind {
    /// Maps a Content-Type to a patch kind; anything else is 415.
    pub fn from_content_type(ct: &str) -> ApiResult<Self> {
        match ct {
            "application/json-patch+json" => Ok(PatchKind::Json),
            "application/merge-patch+json" => Ok(PatchKind::Merge),
            "application/strategic-merge-patch+json" => Ok(PatchKind::Strategic),
            other => Err(ApiError::new(
                415,
                "UnsupportedMediaType",
                format!(
                    "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json; got {other:?}"
                ),
            )),
        }
    }
}

/// Parses a patch body.
pub fn parse(kind: PatchKind, body: &[u8]) -> ApiResult<Value> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
    match kind {
        PatchKind::Json => {
            if !v.is_array() {
                return Err(ApiError::bad_request(
                    "json: cannot unmarshal object into Go value of type []handlers.jsonPatchOp",
                ));
            }
            serde_json::from_value::<json_patch::Patch>(v.clone()).map_err(|e| {
                ApiError::bad_request(format!(
                    "the server rejected our request due to an error in our request: {e}"
                ))
            })?;
        }
        PatchKind::Merge | PatchKind::Strategic => {
            if !v.is_object() {
                return Err(ApiError::bad_request(
                    "the body of the patch is not a JSON object",
                ));
            }
        }
    }
    Ok(v)
}

/// Applies a parsed patch to `base`, an object of the OpenAPI definition `definition` in
/// `group/version` (the schema gives the strategic merge its list merge keys).
pub fn apply(
    kind: PatchKind,
    group: &str,
    version: &str,
    definition: &str,
    base: &Value,
    patch: &Value,
) -> ApiResult<Value> {
    match kind {
        PatchKind::Json => {
            let p: json_patch::Patch = serde_json::from_value(patch.clone())
                .map_err(|e| ApiError::bad_request(e.to_string()))?;
            let mut out = base.clone();
            json_patch::patch(&mut out, &p).map_err(|e| {
                ApiError::new(
                    422,
                    "Invalid",
                    format!("the server rejected our request due to an error in our request: {e}"),
                )
            })?;
            Ok(out)
        }
        PatchKind::Merge => {
            let mut out = base.clone();
            json_patch::merge(&mut out, patch);
            Ok(out)
        }
        PatchKind::Strategic => {
            let defs = crate::openapi::definitions(group, version);
            let ctx = Ctx { defs };
            let schema = defs.and_then(|d| d.get(definition));
            Ok(strategic_merge(&ctx, schema, base, patch).unwrap_or(Value::Null))
        }
    }
}

/// Patch metadata of the built-in types (upstream's `patchStrategy`/`patchMergeKey` struct tags):
/// `(definition, field, merge key, strategy)`. Published in OpenAPI as
/// `x-kubernetes-patch-merge-key`/`x-kubernetes-patch-strategy` (kubectl computes its patches from
/// them) and read back by the strategic merge below, so client and server agree.
pub const PATCH_META: &[(&str, &str, &str, &str)] = &[
    (
        "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
        "finalizers",
        "",
        "merge",
    ),
    (
        "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
        "ownerReferences",
        "uid",
        "merge",
    ),
    (
        "io.k8s.api.core.v1.PodSpec",
        "volumes",
        "name",
        "merge,retainKeys",
    ),
    (
        "io.k8s.api.core.v1.PodSpec",
        "initContainers",
        "name",
        "merge",
    ),
    ("io.k8s.api.core.v1.PodSpec", "containers", "name", "merge"),
    (
        "io.k8s.api.core.v1.PodSpec",
        "ephemeralContainers",
        "name",
        "merge",
    ),
    (
        "io.k8s.api.core.v1.PodSpec",
        "imagePullSecrets",
        "name",
        "merge",
    ),
    ("io.k8s.api.core.v1.PodSpec", "hostAliases", "ip", "merge"),
    (
        "io.k8s.api.core.v1.PodSpec",
        "topologySpreadConstraints",
        "topologyKey",
        "merge",
    ),
    (
        "io.k8s.api.core.v1.PodSpec",
        "resourceClaims",
        "name",
        "merge,retainKeys",
    ),
    (
        "io.k8s.api.core.v1.PodSpec",
        "schedulingGates",
        "name",
        "merge",
    ),
    (
        "io.k8s.api.core.v1.Container",
        "ports",
        "containerPort",
        "merge",
    ),
    ("io.k8s.api.core.v1.Container", "env", "name", "merge"),
    (
        "io.k8s.api.core.v1.Container",
        "volumeMounts",
        "mountPath",
        "merge",
    ),
    (
        "io.k8s.api.core.v1.Container",
        "volumeDevices",
        "devicePath",
        "merge",
    ),
    (
        "io.k8s.api.core.v1.EphemeralContainer",
        "env",
        "name",
        "merge",
    ),
    (
        "io.k8s.api.core.v1.EphemeralContainer",
        "volumeMounts",
        "mountPath",
        "merge",
    ),
    (
        "io.k8s.api.core.v1.EphemeralContainer",
        "volumeDevices",
        "devicePath",
        "merge",
    ),
    ("io.k8s.api.core.v1.ServiceSpec", "ports", "port", "merge"),
    (
        "io.k8s.api.core.v1.PodStatus",
        "conditions",
        "type",
        "merge",
    ),
    ("io.k8s.api.core.v1.PodStatus", "podIPs", "ip", "merge"),
    ("io.k8s.api.core.v1.PodStatus", "hostIPs", "ip", "merge"),
    (
        "io.k8s.api.core.v1.NodeStatus",
        "conditions",
        "type",
        "merge",
    ),
    (
        "io.k8s.api.core.v1.NodeStatus",
        "addresses",
        "type",
        "merge",
    ),
    ("io.k8s.api.core.v1.NodeSpec", "podCIDRs", "", "merge"),
    (
        "io.k8s.api.core.v1.NamespaceStatus",
        "conditions",
        "type",
        "merge",
    ),
    (
        "io.k8s.api.core.v1.ServiceStatus",
        "conditions",
        "type",
        "merge",
    ),
    (
        "io.k8s.api.core.v1.PersistentVolumeClaimStatus",
        "conditions",
        "type",
        "merge",
    ),
    (
        "io.k8s.api.core.v1.ReplicationControllerStatus",
        "conditions",
        "type",
        "merge",
    ),
    (
        "io.k8s.api.apps.v1.DeploymentSpec",
        "strategy",
        "",
        "retainKeys",
    ),
    (
        "io.k8s.api.apps.v1.DeploymentStatus",
        "conditions",
        "type",
        "merge",
    ),
    (
        "io.k8s.api.apps.v1.ReplicaSetStatus",
        "conditions",
        "type",
        "merge",
    ),
    (
        "io.k8s.api.apps.v1.StatefulSetStatus",
        "conditions",
        "type",
        "merge",
    ),
    (
        "io.k8s.api.apps.v1.DaemonSetStatus",
        "conditions",
        "type",
        "merge",
    ),
    (
        "io.k8s.api.batch.v1.JobStatus",
        "conditions",
        "type",
        "merge",
    ),
    (
        "io.k8s.api.policy.v1.PodDisruptionBudgetStatus",
        "conditions",
        "type",
        "merge",
    ),
];

/// Adds the patch extensions of [`PATCH_META`] to OpenAPI definitions.
pub fn annotate_schemas(defs: &mut Map<String, Value>) {
    for (def, field, key, strategy) in PATCH_META {
        if let Some(prop) = defs
            .get_mut(*def)
            .and_then(|d| d.get_mut("properties"))
            .and_then(|p| p.get_mut(*field))
            .and_then(Value::as_object_mut)
        {
            if !key.is_empty() {
                prop.insert(
                    "x-kubernetes-patch-merge-key".into(),
                    Value::String((*key).into()),
                );
            }
            prop.insert(
                "x-kubernetes-patch-strategy".into(),
                Value::String((*strategy).into()),
            );
            // The server-side apply list types: merge-keyed lists are maps (ports are keyed by
            // port and protocol, as upstream), merged primitive lists are sets.
            if strategy.split(',').any(|s| s == "merge") {
                if key.is_empty() {
                    prop.insert("x-kubernetes-list-type".into(), Value::String("set".into()));
                } else {
                    let keys: Vec<Value> = match (*field, *key) {
                        ("ports", k) => {
                            vec![Value::String(k.into()), Value::String("protocol".into())]
                        }
                        (_, k) => vec![Value::String(k.into())],
                    };
                    prop.insert("x-kubernetes-list-type".into(), Value::String("map".into()));
                    prop.insert("x-kubernetes-list-map-keys".into(), Value::Array(keys));
                }
            }
        }
    }
}

/// Follows `$ref` and `allOf` wrappers to the schema they stand for.
pub fn resolve<'a>(defs: &'a Map<String, Value>, schema: &'a Value) -> &'a Value {
    let mut cur = schema;
    for _ in 0..8 {
        match cur
            .get("$ref")
            .and_then(Value::as_str)
            .and_then(|r| r.strip_prefix("#/components/schemas/"))
        {
            Some(name) => match defs.get(name) {
                Some(d) => cur = d,
                None => return cur,
            },
            None => match cur
                .get("allOf")
                .and_then(Value::as_array)
                .and_then(|a| a.first())
            {
                Some(first) => cur = first,
                None => return cur,
            },
        }
    }
    cur
}

/// Schema context of the strategic merge: the group-version's definitions.
struct Ctx<'a> {
    defs: Option<&'a Map<String, Value>>,
}

impl<'a> Ctx<'a> {
    fn resolve(&self, schema: Option<&'a Value>) -> Option<&'a Value> {
        let defs = self.defs?;
        let mut cur = schema?;
        for _ in 0..8 {
            match cur
                .get("$ref")
                .and_then(Value::as_str)
                .and_then(|r| r.strip_prefix("#/components/schemas/"))
            {
                Some(name) => cur = defs.get(name)?,
                None => match cur
                    .get("allOf")
                    .and_then(Value::as_array)
                    .and_then(|a| a.first())
                {
                    Some(first) => cur = first,
                    None => return Some(cur),
                },
            }
        }
        Some(cur)
    }

    fn property(&self, schema: Option<&'a Value>, field: &str) -> Option<&'a Value> {
        let s = self.resolve(schema)?;
        s.get("properties")
            .and_then(|p| p.get(field))
            .or_else(|| s.get("additionalProperties").filter(|a| a.is_object()))
    }
}

/// A strategic merge of `patch` into `orig` under `schema`. `None` means "delete this value".
fn strategic_merge(
    ctx: &Ctx<'_>,
    schema: Option<&Value>,
    orig: &Value,
    patch: &Value,
) -> Option<Value> {
    let Value::Object(p) = patch else {
        return Some(patch.clone());
    };
    match p.get("$patch").and_then(Value::as_str) {
        Some("delete") => return None,
        Some("replace") => {
            let mut m = p.clone();
            m.remove("$patch");
            return Some(Value::Object(m));
        }
        _ => {}
    }
    let mut out: Map<String, Value> = match orig {
        Value::Object(o) => o.clone(),
        _ => Map::new(),
    };
    if let Some(keep) = p.get("$retainKeys").and_then(Value::as_array) {
        let keep: Vec<&str> = keep.iter().filter_map(Value::as_str).collect();
        out.retain(|k, _| keep.contains(&k.as_str()));
    }
    for (k, v) in p {
        if k == "$patch" || k == "$retainKeys" || k.starts_with("$setElementOrder/") {
            continue;
        }
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(cur)), Value::Array(del)) = (out.get_mut(field), v) {
                cur.retain(|x| !del.contains(x));
            }
            continue;
        }
        if v.is_null() {
            out.remove(k);
            continue;
        }
        let prop = ctx.property(schema, k);
        let merged = match (out.get(k), v) {
            (Some(o @ Value::Object(_)), Value::Object(_)) => strategic_merge(ctx, prop, o, v),
            (cur, Value::Array(items)) => {
                let cur_items = cur.and_then(Value::as_array).cloned().unwrap_or_default();
                Some(Value::Array(merge_list(
                    ctx,
                    prop,
                    &cur_items,
                    items,
                    p.get(&format!("$setElementOrder/{k}")),
                )))
            }
            (_, Value::Object(_)) => strategic_merge(ctx, prop, &Value::Null, v),
            _ => Some(v.clone()),
        };
        match merged {
            Some(m) => {
                out.insert(k.clone(), m);
            }
            None => {
                out.remove(k);
            }
        }
    }
    // An order for a list the patch leaves alone reorders the list as it is.
    for (k, order) in p {
        let (Some(field), Value::Array(order)) = (k.strip_prefix("$setElementOrder/"), order)
        else {
            continue;
        };
        if p.contains_key(field) {
            continue;
        }
        let key = ctx
            .property(schema, field)
            .and_then(|p| p.get("x-kubernetes-patch-merge-key"))
            .and_then(Value::as_str);
        if let Some(Value::Array(list)) = out.get_mut(field) {
            reorder(list, order, key);
        }
    }
    Some(Value::Object(out))
}

fn merge_list(
    ctx: &Ctx<'_>,
    prop: Option<&Value>,
    cur: &[Value],
    patch: &[Value],
    order: Option<&Value>,
) -> Vec<Value> {
    // A list-level `$patch: replace` element replaces the whole list.
    if patch
        .iter()
        .any(|e| e.get("$patch").and_then(Value::as_str) == Some("replace"))
    {
        return patch
            .iter()
            .filter(|e| e.get("$patch").is_none())
            .cloned()
            .collect();
    }
    let strategy = prop
        .and_then(|p| p.get("x-kubernetes-patch-strategy"))
        .and_then(Value::as_str)
        .unwrap_or("");
    let key = prop
        .and_then(|p| p.get("x-kubernetes-patch-merge-key"))
        .and_then(Value::as_str);
    let items = prop.and_then(|p| p.get("items"));
    if !strategy.split(',').any(|s| s == "merge") {
        return patch.to_vec();
    }
    let Some(key) = key else {
        // A list of primitives merged as a set (`finalizers`).
        let mut out = cur.to_vec();
        for v in patch {
            if !out.contains(v) {
                out.push(v.clone());
            }
        }
        if let Some(Value::Array(order)) = order {
            reorder(&mut out, order, None);
        }
        return out;
    };
    let mut out = cur.to_vec();
    for pe in patch {
        let Some(kv) = pe.get(key) else {
            out.push(pe.clone());
            continue;
        };
        let pos = out.iter().position(|e| e.get(key) == Some(kv));
        let delete = pe.get("$patch").and_then(Value::as_str) == Some("delete");
        match (pos, delete) {
            (Some(i), true) => {
                out.remove(i);
            }
            (None, true) => {}
            (Some(i), false) => match strategic_merge(ctx, items, &out[i], pe) {
                Some(m) => out[i] = m,
                None => {
                    out.remove(i);
                }
            },
            (None, false) => {
                if let Some(m) = strategic_merge(ctx, items, &Value::Null, pe) {
                    out.push(m);
                }
            }
        }
    }
    if let Some(Value::Array(order)) = order {
        reorder(&mut out, order, Some(key));
    }
    out
}

/// Puts `list` in the order `$setElementOrder` gives (elements matched by `key`, or whole for
/// primitives); elements it does not name keep their relative order, after those it does.
fn reorder(list: &mut [Value], order: &[Value], key: Option<&str>) {
    let rank = |e: &Value| {
        order
            .iter()
            .position(|o| match key {
                Some(k) => o.get(k).is_some() && o.get(k) == e.get(k),
                None => o == e,
            })
            .unwrap_or(usize::MAX)
    };
    list.sort_by_key(rank);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strategic_merge_merges_containers_by_name() {
        let base = json!({"metadata": {"labels": {"a": "1"}, "finalizers": ["x"]}, "spec": {"template": {"spec": {"containers": [{"name": "a", "image": "1"}, {"name": "b", "image": "2"}]}}}});
        let patch = json!({"metadata": {"labels": {"a": null, "b": "2"}, "finalizers": ["y"]}, "spec": {"template": {"spec": {"containers": [{"name": "b", "image": "3"}, {"name": "c", "image": "4"}, {"name": "a", "$patch": "delete"}]}}}});
        let out = apply(
            PatchKind::Strategic,
            "apps",
            "v1",
            "io.k8s.api.apps.v1.Deployment",
            &base,
            &patch,
        )
        .unwrap();
        assert_eq!(out["metadata"]["labels"], json!({"b": "2"}));
        assert_eq!(out["metadata"]["finalizers"], json!(["x", "y"]));
        assert_eq!(
            out["spec"]["template"]["spec"]["containers"],
            json!([{"name": "b", "image": "3"}, {"name": "c", "image": "4"}])
        );
    }

    #[test]
    fn strategic_merge_directives() {
        let base = json!({"spec": {"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}}, "args": ["a", "b"]}});
        let patch = json!({"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate"}, "$deleteFromPrimitiveList/args": ["a"]}});
        let out = apply(
            PatchKind::Strategic,
            "apps",
            "v1",
            "io.k8s.api.apps.v1.Deployment",
            &base,
            &patch,
        )
        .unwrap();
        assert_eq!(out["spec"]["strategy"], json!({"type": "Recreate"}));
        assert_eq!(out["spec"]["args"], json!(["b"]));
        let replaced = apply(
            PatchKind::Strategic,
            "",
            "v1",
            "io.k8s.api.core.v1.ConfigMap",
            &json!({"data": {"a": "1", "b": "2"}}),
            &json!({"data": {"$patch": "replace", "c": "3"}}),
        )
        .unwrap();
        assert_eq!(replaced["data"], json!({"c": "3"}));
    }

    #[test]
    fn set_element_order_orders_keyed_and_primitive_lists() {
        let base = json!({"metadata": {"finalizers": ["a", "b"]}, "spec": {"template": {"spec": {"containers": [{"name": "a", "image": "1"}, {"name": "b", "image": "2"}]}}}});
        let patch = json!({"metadata": {"$setElementOrder/finalizers": ["c", "b", "a"], "finalizers": ["c"]},
            "spec": {"template": {"spec": {"$setElementOrder/containers": [{"name": "b"}, {"name": "a"}]}}}});
        let out = apply(
            PatchKind::Strategic,
            "apps",
            "v1",
            "io.k8s.api.apps.v1.Deployment",
            &base,
            &patch,
        )
        .unwrap();
        assert_eq!(out["metadata"]["finalizers"], json!(["c", "b", "a"]));
        assert_eq!(
            out["spec"]["template"]["spec"]["containers"],
            json!([{"name": "b", "image": "2"}, {"name": "a", "image": "1"}])
        );
    }

    #[test]
    fn json_and_merge_patches() {
        let base = json!({"metadata": {"name": "x", "resourceVersion": "5"}, "data": {"a": "1"}});
        let jp = parse(PatchKind::Json, br#"[{"op":"test","path":"/data/a","value":"1"},{"op":"replace","path":"/data/a","value":"2"}]"#).unwrap();
        assert_eq!(
            apply(
                PatchKind::Json,
                "",
                "v1",
                "io.k8s.api.core.v1.ConfigMap",
                &base,
                &jp
            )
            .unwrap()["data"]["a"],
            "2"
        );
        let bad = parse(
            PatchKind::Json,
            br#"[{"op":"test","path":"/data/a","value":"9"}]"#,
        )
        .unwrap();
        assert_eq!(
            apply(
                PatchKind::Json,
                "",
                "v1",
                "io.k8s.api.core.v1.ConfigMap",
                &base,
                &bad
            )
            .unwrap_err()
            .code,
            422
        );
        let mp = parse(PatchKind::Merge, br#"{"data":{"a":null,"b":"3"}}"#).unwrap();
        assert_eq!(
            apply(
                PatchKind::Merge,
                "",
                "v1",
                "io.k8s.api.core.v1.ConfigMap",
                &base,
                &mp
            )
            .unwrap()["data"],
            json!({"b": "3"})
        );
        assert_eq!(parse(PatchKind::Merge, b"[1]").unwrap_err().code, 400);
        assert_eq!(
            PatchKind::from_content_type("text/plain").unwrap_err().code,
            415
        );
    }
}
