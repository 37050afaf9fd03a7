//! OpenAPI v3: an index at `/openapi/v3` and one document per group-version, generated from the
//! k8s-openapi schemas (schemars) and the resource table. Every operation carries
//! `x-kubernetes-group-version-kind` and every PATCH operation lists `fieldValidation`, which is how
//! kubectl decides that the server validates fields itself.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use schemars::generate::SchemaSettings;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha512};

use crate::resources::{self, Resource, Sub};

/// One generated document with its hash.
pub struct Doc {
    /// Serialized JSON.
    pub body: Vec<u8>,
    /// Upper-case hex of SHA-512, as upstream puts in `?hash=`.
    pub hash: String,
}

fn gv_key(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

fn param(name: &str, location: &str, description: &str, ty: &str) -> Value {
    json!({"name": name, "in": location, "description": description, "schema": {"type": ty, "uniqueItems": true}})
}

fn common_write_params(patch: bool) -> Vec<Value> {
    let mut p = vec![
        param(
            "dryRun",
            "query",
            "When present, indicates that modifications should not be persisted. Valid value: All",
            "string",
        ),
        param(
            "fieldManager",
            "query",
            "fieldManager is a name associated with the actor or entity that is making these changes.",
            "string",
        ),
        param(
            "fieldValidation",
            "query",
            "fieldValidation instructs the server on how to handle objects in the request containing unknown or duplicate fields. Valid values: Ignore, Warn, Strict.",
            "string",
        ),
    ];
    if patch {
        p.push(param("force", "query", "Force is going to \"force\" Apply requests. It means user will re-acquire conflicting fields owned by other people.", "boolean"));
    }
    p
}

fn list_params() -> Vec<Value> {
    vec![
        param(
            "allowWatchBookmarks",
            "query",
            "allowWatchBookmarks requests watch events with type \"BOOKMARK\".",
            "boolean",
        ),
        param(
            "continue",
            "query",
            "The continue option should be set when retrieving more results from the server.",
            "string",
        ),
        param(
            "fieldSelector",
            "query",
            "A selector to restrict the list of returned objects by their fields.",
            "string",
        ),
        param(
            "labelSelector",
            "query",
            "A selector to restrict the list of returned objects by their labels.",
            "string",
        ),
        param(
            "limit",
            "query",
            "limit is a maximum number of responses to return for a list call.",
            "integer",
        ),
        param(
            "resourceVersion",
            "query",
            "resourceVersion sets a constraint on what resource versions a request may be served from.",
            "string",
        ),
        param(
            "resourceVersionMatch",
            "query",
            "resourceVersionMatch determines how resourceVersion is applied to list calls.",
            "string",
        ),
        param(
            "sendInitialEvents",
            "query",
            "`sendInitialEvents=true` may be set together with `watch=true`.",
            "boolean",
        ),
        param(
            "timeoutSeconds",
            "query",
            "Timeout for the list/watch call.",
            "integer",
        ),
        param(
            "watch",
            "query",
            "Watch for changes to the described resources and return them as a stream of add, update, and remove notifications.",
            "boolean",
        ),
    ]
}

fn reference(def: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{def}")})
}

fn content(schema: Value, types: &[&str]) -> Value {
    let mut m = Map::new();
    for t in types {
        m.insert((*t).to_string(), json!({"schema": schema.clone()}));
    }
    Value::Object(m)
}

const RESPONSE_TYPES: &[&str] = &[
    "application/json",
    "application/yaml",
    "application/vnd.kubernetes.protobuf",
];
const PATCH_TYPES: &[&str] = &[
    "application/json-patch+json",
    "application/merge-patch+json",
    "application/strategic-merge-patch+json",
    "application/apply-patch+yaml",
];

fn op(
    id: &str,
    action: &str,
    gvk: (&str, &str, &str),
    params: Vec<Value>,
    body: Option<Value>,
    response: Value,
) -> Value {
    let mut o = json!({
        "description": format!("{action} {}", gvk.2),
        "operationId": id,
        "tags": [],
        "parameters": params,
        "responses": {"200": {"description": "OK", "content": content(response, RESPONSE_TYPES)}, "401": {"description": "Unauthorized"}},
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": {"group": gvk.0, "version": gvk.1, "kind": gvk.2},
    });
    if let Some(b) = body {
        o["requestBody"] = b;
    }
    o
}

fn def_for(kind_def: &str, sub: Sub) -> String {
    match sub {
        Sub::Status
        | Sub::Approval
        | Sub::Finalize
        | Sub::Log
        | Sub::Exec
        | Sub::Attach
        | Sub::PortForward => kind_def.to_string(),
        Sub::Scale => "io.k8s.api.autoscaling.v1.Scale".into(),
        Sub::Binding => "io.k8s.api.core.v1.Binding".into(),
        Sub::Eviction => "io.k8s.api.policy.v1.Eviction".into(),
        Sub::Token => "io.k8s.api.authentication.v1.TokenRequest".into(),
    }
}

fn op_id(verb: &str, r: &Resource, suffix: &str) -> String {
    let g: String = r
        .group
        .split('.')
        .next()
        .unwrap_or("core")
        .chars()
        .enumerate()
        .map(|(i, c)| if i == 0 { c.to_ascii_uppercase() } else { c })
        .collect();
    let g = if g.is_empty() { "Core".into() } else { g };
    let scope = if r.namespaced { "Namespaced" } else { "" };
    format!(
        "{verb}{g}{}{scope}{}{suffix}",
        r.version.to_ascii_uppercase(),
        r.kind
    )
}

fn paths_for(r: &Resource, paths: &mut Map<String, Value>) {
    let base = if r.namespaced {
        format!("{}/namespaces/{{namespace}}/{}", r.gv_path(), r.resource)
    } else {
        format!("{}/{}", r.gv_path(), r.resource)
    };
    let gvk = (r.group, r.version, r.kind);
    let obj = reference(r.definition);
    let list_def =
        json!({"type": "object", "properties": {"items": {"type": "array", "items": obj.clone()}}});
    let body = json!({"content": content(obj.clone(), &["*/*"]), "required": true});
    let patch_body = json!({"content": content(reference("io.k8s.apimachinery.pkg.apis.meta.v1.Patch"), PATCH_TYPES), "required": true});
    let mut ns_param = Vec::new();
    if r.namespaced {
        ns_param.push(json!({"name": "namespace", "in": "path", "required": true, "description": "object name and auth scope, such as for teams and projects", "schema": {"type": "string", "uniqueItems": true}}));
    }
    let name_param = json!({"name": "name", "in": "path", "required": true, "description": format!("name of the {}", r.kind), "schema": {"type": "string", "uniqueItems": true}});
    if r.create_only() {
        paths.insert(base, json!({"parameters": ns_param, "post": op(&op_id("create", r, ""), "post", gvk, common_write_params(false), Some(body), obj)}));
        return;
    }
    let mut coll = json!({
        "parameters": ns_param,
        "get": op(&op_id("list", r, ""), "list", gvk, list_params(), None, list_def),
        "post": op(&op_id("create", r, ""), "post", gvk, common_write_params(false), Some(body.clone()), obj.clone()),
        "delete": op(&op_id("deletecollection", r, ""), "deletecollection", gvk, list_params(), None, reference("io.k8s.apimachinery.pkg.apis.meta.v1.Status")),
    });
    if let Some(p) = coll.get_mut("parameters").and_then(Value::as_array_mut) {
        p.push(param(
            "pretty",
            "query",
            "If 'true', then the output is pretty printed.",
            "string",
        ));
    }
    paths.insert(base.clone(), coll);
    let mut item_params = vec![name_param.clone()];
    item_params.extend(ns_param.iter().cloned());
    paths.insert(
        format!("{base}/{{name}}"),
        json!({
            "parameters": item_params,
            "get": op(&op_id("read", r, ""), "get", gvk, vec![], None, obj.clone()),
            "put": op(&op_id("replace", r, ""), "put", gvk, common_write_params(false), Some(body.clone()), obj.clone()),
            "patch": op(&op_id("patch", r, ""), "patch", gvk, common_write_params(true), Some(patch_body.clone()), obj.clone()),
            "delete": op(&op_id("delete", r, ""), "delete", gvk, vec![param("gracePeriodSeconds", "query", "The duration in seconds before the object should be deleted.", "integer"), param("propagationPolicy", "query", "Whether and how garbage collection will be performed.", "string")], None, obj.clone()),
        }),
    );
    for sub in r.subresources {
        let def = def_for(r.definition, *sub);
        let (g, v, k) = sub.response_kind(r);
        let sgvk = (g, v, k);
        let sobj = reference(&def);
        let suffix: String = sub
            .name()
            .chars()
            .enumerate()
            .map(|(i, c)| if i == 0 { c.to_ascii_uppercase() } else { c })
            .collect();
        let entry = match sub {
            Sub::Binding | Sub::Eviction | Sub::Token => json!({
                "parameters": item_params,
                "post": op(&op_id("create", r, &suffix), "post", sgvk, common_write_params(false), Some(json!({"content": content(sobj.clone(), &["*/*"]), "required": true})), sobj.clone()),
            }),
            Sub::Log => json!({
                "parameters": item_params,
                "get": op(&op_id("read", r, &suffix), "get", sgvk, ["container", "follow", "previous", "timestamps", "tailLines", "sinceSeconds", "limitBytes"].iter().map(|p| param(p, "query", "Log option as upstream's PodLogOptions.", if matches!(*p, "tailLines" | "sinceSeconds" | "limitBytes") { "integer" } else if *p == "container" { "string" } else { "boolean" })).collect(), None, json!({"type": "string"})),
            }),
            Sub::Exec | Sub::Attach => json!({
                "parameters": item_params,
                "get": op(&op_id("connectGet", r, &suffix), "get", sgvk, ["command", "container", "stdin", "stdout", "stderr", "tty"].iter().map(|p| param(p, "query", "Exec option as upstream's PodExecOptions.", if matches!(*p, "command" | "container") { "string" } else { "boolean" })).collect(), None, json!({"type": "string"})),
                "post": op(&op_id("connectPost", r, &suffix), "post", sgvk, vec![], None, json!({"type": "string"})),
            }),
            Sub::PortForward => json!({
                "parameters": item_params,
                "get": op(&op_id("connectGet", r, &suffix), "get", sgvk, vec![param("ports", "query", "List of ports to forward (the WebSocket channel protocol).", "integer")], None, json!({"type": "string"})),
                "post": op(&op_id("connectPost", r, &suffix), "post", sgvk, vec![], None, json!({"type": "string"})),
            }),
            Sub::Finalize => json!({
                "parameters": item_params,
                "put": op(&op_id("replace", r, &suffix), "put", sgvk, common_write_params(false), Some(json!({"content": content(sobj.clone(), &["*/*"]), "required": true})), sobj.clone()),
            }),
            _ => json!({
                "parameters": item_params,
                "get": op(&op_id("read", r, &suffix), "get", sgvk, vec![], None, sobj.clone()),
                "put": op(&op_id("replace", r, &suffix), "put", sgvk, common_write_params(false), Some(json!({"content": content(sobj.clone(), &["*/*"]), "required": true})), sobj.clone()),
                "patch": op(&op_id("patch", r, &suffix), "patch", sgvk, common_write_params(true), Some(patch_body.clone()), sobj.clone()),
            }),
        };
        paths.insert(format!("{base}/{{name}}/{}", sub.name()), entry);
    }
}

/// Adds the `x-kubernetes-group-version-kind` list extension to top-level kinds, and drops
/// `required: [metadata]` that k8s-openapi adds (upstream's schemas do not require it).
fn annotate(defs: &mut Map<String, Value>) {
    let mut gvks: BTreeMap<&str, Vec<Value>> = BTreeMap::new();
    for r in resources::all() {
        gvks.entry(r.definition)
            .or_default()
            .push(json!({"group": r.group, "version": r.version, "kind": r.kind}));
    }
    gvks.entry("io.k8s.api.autoscaling.v1.Scale")
        .or_default()
        .push(json!({"group": "autoscaling", "version": "v1", "kind": "Scale"}));
    gvks.entry("io.k8s.api.policy.v1.Eviction")
        .or_default()
        .push(json!({"group": "policy", "version": "v1", "kind": "Eviction"}));
    gvks.entry("io.k8s.apimachinery.pkg.apis.meta.v1.Status")
        .or_default()
        .push(json!({"group": "", "version": "v1", "kind": "Status"}));
    gvks.entry("io.k8s.apimachinery.pkg.apis.meta.v1.DeleteOptions")
        .or_default()
        .push(json!({"group": "", "version": "v1", "kind": "DeleteOptions"}));
    for (def, list) in gvks {
        if let Some(d) = defs.get_mut(def).and_then(Value::as_object_mut) {
            d.insert("x-kubernetes-group-version-kind".into(), Value::Array(list));
            if let Some(req) = d.get_mut("required").and_then(Value::as_array_mut) {
                req.retain(|f| f != "metadata");
                if req.is_empty() {
                    d.remove("required");
                }
            }
        }
    }
}

fn build_doc(group: &str, version: &str) -> Value {
    let mut generator = SchemaSettings::openapi3().into_generator();
    let mut paths = Map::new();
    for r in resources::in_group_version(group, version) {
        (r.schema)(&mut generator);
        for sub in r.subresources {
            match sub {
                Sub::Scale => {
                    generator.subschema_for::<k8s_openapi::api::autoscaling::v1::Scale>();
                }
                Sub::Eviction => {
                    generator.subschema_for::<k8s_openapi::api::policy::v1::Eviction>();
                }
                Sub::Binding => {
                    generator.subschema_for::<k8s_openapi::api::core::v1::Binding>();
                }
                Sub::Token => {
                    generator.subschema_for::<k8s_openapi::api::authentication::v1::TokenRequest>();
                }
                Sub::Status
                | Sub::Approval
                | Sub::Finalize
                | Sub::Log
                | Sub::Exec
                | Sub::Attach
                | Sub::PortForward => {}
            }
        }
        paths_for(r, &mut paths);
    }
    generator.subschema_for::<k8s_openapi::apimachinery::pkg::apis::meta::v1::Status>();
    generator.subschema_for::<k8s_openapi::apimachinery::pkg::apis::meta::v1::DeleteOptions>();
    generator.subschema_for::<k8s_openapi::apimachinery::pkg::apis::meta::v1::Patch>();
    let mut defs = generator.take_definitions(true);
    annotate(&mut defs);
    crate::patch::annotate_schemas(&mut defs);
    json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": crate::config::git_version()},
        "paths": paths,
        "components": {"schemas": defs},
    })
}

fn docs() -> &'static BTreeMap<String, Doc> {
    static DOCS: OnceLock<BTreeMap<String, Doc>> = OnceLock::new();
    DOCS.get_or_init(|| {
        let mut out = BTreeMap::new();
        let mut gvs = vec![(String::new(), "v1".to_string())];
        for (g, vs) in resources::groups() {
            for v in vs {
                gvs.push((g.to_string(), v.to_string()));
            }
        }
        for (g, v) in gvs {
            let body = serde_json::to_vec(&build_doc(&g, &v)).unwrap_or_default();
            let hash = hex_upper(&Sha512::digest(&body));
            out.insert(gv_key(&g, &v), Doc { body, hash });
        }
        out
    })
}

fn hex_upper(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02X}")).collect()
}

/// `GET /openapi/v3`: the index of group-version documents.
pub fn index() -> Value {
    let mut paths = Map::new();
    for (k, d) in docs() {
        paths.insert(
            k.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{k}?hash={}", d.hash)}),
        );
    }
    json!({"paths": paths})
}

/// `GET /openapi/v3/<gv>`: one document (`gv` is `api/v1` or `apis/<g>/<v>`).
pub fn document(gv: &str) -> Option<&'static Doc> {
    docs().get(gv)
}

/// Every definition of one group-version document, for schema-driven decoding.
pub fn definitions(group: &str, version: &str) -> Option<&'static Map<String, Value>> {
    static DEFS: OnceLock<BTreeMap<String, Map<String, Value>>> = OnceLock::new();
    let all = DEFS.get_or_init(|| {
        let mut out = BTreeMap::new();
        for (k, d) in docs() {
            if let Ok(v) = serde_json::from_slice::<Value>(&d.body)
                && let Some(m) = v.pointer("/components/schemas").and_then(Value::as_object)
            {
                out.insert(k.clone(), m.clone());
            }
        }
        out
    });
    all.get(&gv_key(group, version))
}

/// `GET /openapi/v2` (JSON): one Swagger 2.0 document for every group-version, derived from the
/// v3 documents (the same schemas and operations).
pub fn v2() -> &'static [u8] {
    static V2: OnceLock<Vec<u8>> = OnceLock::new();
    V2.get_or_init(|| {
        let mut paths = Map::new();
        for d in docs().values() {
            let Ok(doc) = serde_json::from_slice::<Value>(&d.body) else {
                continue;
            };
            for (path, item) in doc["paths"].as_object().into_iter().flatten() {
                let mut out = Map::new();
                for (k, v) in item.as_object().into_iter().flatten() {
                    if k == "parameters" {
                        out.insert(
                            k.clone(),
                            Value::Array(
                                v.as_array().into_iter().flatten().map(v2_param).collect(),
                            ),
                        );
                    } else {
                        out.insert(k.clone(), v2_operation(v));
                    }
                }
                paths.insert(path.clone(), Value::Object(out));
            }
        }
        let doc = json!({
            "swagger": "2.0",
            "info": {"title": "Kubernetes", "version": crate::config::git_version()},
            "paths": paths,
            "definitions": all_definitions(),
        });
        serde_json::to_string(&doc)
            .unwrap_or_default()
            .replace("#/components/schemas/", "#/definitions/")
            .into_bytes()
    })
}

/// A v3 parameter (`schema: {type}`) as a v2 one (`type` inline).
fn v2_param(p: &Value) -> Value {
    let mut p = p.clone();
    if let Some(m) = p.as_object_mut()
        && let Some(schema) = m.remove("schema")
    {
        if let Some(t) = schema.get("type") {
            m.insert("type".into(), t.clone());
        }
        if let Some(u) = schema.get("uniqueItems") {
            m.insert("uniqueItems".into(), u.clone());
        }
    }
    p
}

/// A v3 operation as a v2 one: the request body becomes a `body` parameter, response content a
/// response schema, media types `consumes`/`produces`.
fn v2_operation(op: &Value) -> Value {
    let mut o = op.clone();
    let Some(m) = o.as_object_mut() else { return o };
    let mut params: Vec<Value> = m
        .remove("parameters")
        .and_then(|p| p.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .map(v2_param)
        .collect();
    if let Some(body) = m.remove("requestBody") {
        let content = body
            .get("content")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        let schema = content
            .values()
            .next()
            .and_then(|c| c.get("schema"))
            .cloned()
            .unwrap_or(json!({}));
        m.insert(
            "consumes".into(),
            Value::Array(content.keys().map(|k| json!(k)).collect()),
        );
        params.push(json!({"name": "body", "in": "body", "required": true, "schema": schema}));
    }
    m.insert("parameters".into(), Value::Array(params));
    if let Some(resps) = m.get_mut("responses").and_then(Value::as_object_mut) {
        let mut produces = Vec::new();
        for r in resps.values_mut() {
            if let Some(content) = r.as_object_mut().and_then(|r| r.remove("content")) {
                let content = content.as_object().cloned().unwrap_or_default();
                produces = content.keys().map(|k| json!(k)).collect();
                if let Some(schema) = content.values().next().and_then(|c| c.get("schema")) {
                    r["schema"] = schema.clone();
                }
            }
        }
        if !produces.is_empty() {
            m.insert("produces".into(), Value::Array(produces));
        }
    }
    m.insert("schemes".into(), json!(["https"]));
    o
}

/// Every definition of every served group-version, merged by name.
pub fn all_definitions() -> &'static Map<String, Value> {
    static ALL: OnceLock<Map<String, Value>> = OnceLock::new();
    ALL.get_or_init(|| {
        let mut out = Map::new();
        let mut gvs = vec![(String::new(), "v1".to_string())];
        for (g, vs) in resources::groups() {
            for v in vs {
                gvs.push((g.to_string(), v.to_string()));
            }
        }
        for (g, v) in gvs {
            if let Some(defs) = definitions(&g, &v) {
                for (k, d) in defs {
                    out.entry(k.clone()).or_insert_with(|| d.clone());
                }
            }
        }
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_patch_operation_offers_field_validation() {
        let idx = index();
        assert!(
            idx["paths"]["apis/apps/v1"]["serverRelativeURL"]
                .as_str()
                .unwrap()
                .starts_with("/openapi/v3/apis/apps/v1?hash=")
        );
        let doc: Value = serde_json::from_slice(&document("apis/apps/v1").unwrap().body).unwrap();
        let mut patches = 0;
        for (_, item) in doc["paths"].as_object().unwrap() {
            if let Some(p) = item.get("patch") {
                patches += 1;
                assert!(p["x-kubernetes-group-version-kind"].is_object());
                assert!(
                    p["parameters"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|x| x["name"] == "fieldValidation")
                );
            }
        }
        assert!(patches >= 5);
        let dep = &doc["components"]["schemas"]["io.k8s.api.apps.v1.Deployment"];
        assert_eq!(
            dep["x-kubernetes-group-version-kind"][0]["kind"],
            "Deployment"
        );
        assert!(dep["properties"]["spec"].is_object());
    }

    #[test]
    fn v2_is_swagger_with_definitions() {
        let doc: Value = serde_json::from_slice(v2()).unwrap();
        assert_eq!(doc["swagger"], "2.0");
        assert!(doc["definitions"]["io.k8s.api.core.v1.Pod"].is_object());
        let patch =
            &doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"];
        assert!(
            patch["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["in"] == "body")
        );
        assert!(
            patch["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["name"] == "fieldValidation" && p["type"] == "string")
        );
        assert!(!String::from_utf8_lossy(v2()).contains("#/components/schemas/"));
    }
}
