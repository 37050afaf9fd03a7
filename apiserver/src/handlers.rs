//! The request handler behind the filter chain: dispatches on the parsed request info to
//! discovery, OpenAPI, health, version and the registry, and does content negotiation (JSON,
//! YAML, Table, PartialObjectMetadata) and body decoding with field validation.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::{Value, json};

use crate::discovery;
use crate::object;
use crate::openapi;
use crate::patch;
use crate::registry::{DeleteOptions, FieldManager, ListOptions, Registry, WriteOpts};
use crate::request_info::{RequestInfo, parse_bool};
use crate::resources::{self, Resource, Sub};
use crate::selectors::{FieldSelector, LabelSelector};
use crate::status::{ApiError, ApiResult, success};
use crate::strategy;
use crate::table::{self, IncludeObject};
use crate::validation::{self, FieldValidation};
use crate::watch;

/// Largest request body accepted (upstream: 3 MiB).
pub const MAX_BODY: usize = 3 * 1024 * 1024;

/// Shared state of the handler.
pub struct ApiState {
    /// The registry.
    pub registry: Registry,
    /// `--min-request-timeout` in seconds (watch timeouts).
    pub min_request_timeout: u64,
    /// Address advertised in `/api`.
    pub advertise: String,
    /// Metrics registry and families.
    pub metrics: crate::metrics::Metrics,
    /// The watch cache.
    pub cache: Arc<crate::cache::Cache>,
    /// The client for kubelets (pods/log).
    pub kubelet: Arc<crate::kubelet::KubeletClient>,
    /// The admission plugins in force.
    pub admission: crate::admission::Plugins,
    /// Signs service-account tokens (TokenRequest), when configured.
    pub token_issuer: Option<Arc<crate::authn::serviceaccount::TokenIssuer>>,
    /// The authorizers (reviews, RBAC's escalation check).
    pub authz: Arc<crate::authz::Authorizer>,
    /// Encryption at rest, when configured (its health checks).
    pub encryption: Option<Arc<crate::encryption::Encryption>>,
    /// The admission webhook plugins, unless both are disabled.
    pub webhooks: Option<Arc<crate::webhook::Webhooks>>,
    /// API Priority and Fairness, when enabled.
    pub apf: Option<Arc<crate::flowcontrol::Apf>>,
    /// The built-in admission plugins that read other objects.
    pub builtin: Arc<crate::admission::Builtin>,
}

/// How a response body is rendered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Output {
    Json,
    Yaml,
    Table(IncludeObject),
    Metadata,
    /// `application/vnd.kubernetes.protobuf` (objects, lists and watches).
    Protobuf,
}

fn query_map(q: Option<&str>) -> HashMap<String, String> {
    q.map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default()
}

fn negotiate(
    headers: &HeaderMap,
    query: &HashMap<String, String>,
    allow_table: bool,
) -> ApiResult<Output> {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if accept.trim().is_empty() {
        return Ok(Output::Json);
    }
    for part in accept.split(',') {
        let p = part.replace(' ', "");
        let mut fields = p.split(';');
        let mt = fields.next().unwrap_or("");
        let params: HashMap<&str, &str> = fields.filter_map(|f| f.split_once('=')).collect();
        match (mt, params.get("as").copied()) {
            ("application/json", Some("Table"))
                if allow_table
                    && params.get("g") == Some(&"meta.k8s.io")
                    && matches!(params.get("v"), Some(&"v1") | Some(&"v1beta1")) =>
            {
                let include = IncludeObject::parse(query.get("includeObject").map(String::as_str))?;
                return Ok(Output::Table(include));
            }
            ("application/json", Some("PartialObjectMetadata" | "PartialObjectMetadataList"))
                if params.get("g") == Some(&"meta.k8s.io") =>
            {
                return Ok(Output::Metadata);
            }
            ("application/vnd.kubernetes.protobuf", None) => return Ok(Output::Protobuf),
            ("application/json" | "application/*" | "*/*", None) => {
                return Ok(Output::Json);
            }
            ("application/yaml", None) => return Ok(Output::Yaml),
            _ => {}
        }
    }
    Err(ApiError::not_acceptable(format!(
        "only the following media types are accepted: application/json, application/yaml, application/json;as=Table;g=meta.k8s.io;v=v1; got {accept:?}"
    )))
}

fn render(v: &Value, out: Output, code: StatusCode) -> Response {
    if out == Output::Protobuf {
        // Kinds without a protobuf schema are answered in JSON, as upstream does for CRDs.
        if let Some(body) = crate::protobuf::encode(v) {
            let mut r = (code, body).into_response();
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/vnd.kubernetes.protobuf"),
            );
            return r;
        }
    }
    let (ct, body) = match out {
        Output::Yaml => (
            "application/yaml",
            serde_yaml::to_string(v).unwrap_or_default().into_bytes(),
        ),
        _ => (
            "application/json",
            serde_json::to_vec(v).unwrap_or_default(),
        ),
    };
    let mut r = (code, body).into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
    r
}

fn json_response(v: &Value) -> Response {
    render(v, Output::Json, StatusCode::OK)
}

fn add_warnings(mut r: Response, warnings: &[String]) -> Response {
    for w in warnings {
        let text = format!("299 - {}", serde_json::to_string(w).unwrap_or_default());
        if let Ok(v) = HeaderValue::from_str(&text) {
            r.headers_mut().append(header::WARNING, v);
        }
    }
    r
}

/// Renders a single object for the chosen output.
fn render_object(res: &Resource, obj: &Value, out: Output, code: StatusCode) -> Response {
    match out {
        Output::Table(include) => {
            let rv = object::meta_str(obj, "resourceVersion").to_string();
            render(
                &table::table(res, std::slice::from_ref(obj), &rv, None, include, true),
                out,
                code,
            )
        }
        Output::Metadata => render(&table::partial_metadata(obj), out, code),
        _ => render(obj, out, code),
    }
}

/// Adds `kind` and `apiVersion` to an object read from storage (stored objects carry them, but
/// objects written by other servers may not).
fn with_type(res: &Resource, mut obj: Value) -> Value {
    if let Some(m) = obj.as_object_mut() {
        m.insert("kind".into(), json!(res.kind));
        m.insert("apiVersion".into(), json!(res.api_version()));
    }
    obj
}

async fn read_body(body: Body) -> ApiResult<Bytes> {
    let limited = http_body_util::Limited::new(body, MAX_BODY);
    match limited.collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(ApiError::too_large(MAX_BODY))
        }
        Err(e) => Err(ApiError::bad_request(format!(
            "error reading request body: {e}"
        ))),
    }
}

fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|s| {
            s.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default()
}

/// Decodes a request body as JSON or YAML into an object (protobuf is handled by the caller).
fn decode_document(ct: &str, body: &[u8]) -> ApiResult<Value> {
    let v: Value = match ct {
        "" | "application/json" | "*/*" => serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding request body: {e}")))?,
        "application/yaml" | "application/apply-patch+yaml" => serde_yaml::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("error converting YAML to JSON: {e}")))?,
        "application/vnd.kubernetes.protobuf" => crate::protobuf::decode(body)?,
        other => return Err(ApiError::unsupported_media_type(other)),
    };
    if !v.is_object() {
        return Err(ApiError::bad_request(
            "Object 'Kind' is missing in the request body: not a JSON object",
        ));
    }
    Ok(v)
}

/// Checks the body's `apiVersion`/`kind` against the expected type and fills them when absent.
fn check_type(obj: &mut Value, group: &str, version: &str, kind: &str) -> ApiResult<()> {
    let expected_av = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    let av = obj
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let k = obj
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if !av.is_empty() && av != expected_av {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({av}) does not match the expected API version ({expected_av})"
        )));
    }
    if !k.is_empty() && k != kind {
        return Err(ApiError::bad_request(format!(
            "the kind in the data ({k}) does not match the expected kind ({kind})"
        )));
    }
    obj["apiVersion"] = json!(expected_av);
    obj["kind"] = json!(kind);
    Ok(())
}

fn dry_run(q: &HashMap<String, String>) -> ApiResult<bool> {
    match q.get("dryRun").map(String::as_str) {
        None | Some("") => Ok(false),
        Some("All") => Ok(true),
        Some(v) => Err(ApiError::bad_request(format!(
            "dryRun: Unsupported value: {v:?}: supported values: \"All\""
        ))),
    }
}

/// The admission of one write: the built-in check, the webhooks, and the built-in plugins that
/// read other objects (for writes of the object itself, not of a subresource).
struct Admission {
    check: Option<crate::registry::Admit>,
    hooks: Option<Arc<crate::webhook::Call>>,
    builtin: Option<Arc<crate::admission::Builtin>>,
    user: Option<crate::authz::UserInfo>,
}

/// The admission webhooks of a create through a subresource (binding, eviction, token).
async fn admit_sub_create(
    admit: &Admission,
    ns: &str,
    name: &str,
    obj: &mut Value,
    dry_run: bool,
) -> ApiResult<()> {
    use crate::webhook::Operation;
    if let Some(h) = &admit.hooks {
        h.mutate(Operation::Create, ns, name, None, obj, dry_run)
            .await?;
        h.validate(Operation::Create, ns, name, None, Some(obj), dry_run)
            .await?;
    }
    Ok(())
}

/// The write options of a request: dry run and the field manager (`fieldManager`, else the
/// User-Agent's product name, as upstream).
fn write_opts(
    admit: &Admission,
    q: &HashMap<String, String>,
    headers: &HeaderMap,
    subresource: &'static str,
) -> ApiResult<WriteOpts> {
    let name = match q.get("fieldManager") {
        Some(m) if !m.is_empty() => {
            if m.len() > 128 || m.chars().any(char::is_control) {
                return Err(ApiError::invalid(
                    "",
                    "PatchOptions",
                    "",
                    vec![crate::status::Cause::new(
                        "FieldValueInvalid",
                        "fieldManager",
                        format!("Invalid value: {m:?}: must be at most 128 printable characters"),
                    )],
                ));
            }
            m.clone()
        }
        _ => crate::managed::manager_from_user_agent(
            headers
                .get(header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .unwrap_or(""),
        ),
    };
    Ok(WriteOpts {
        dry_run: dry_run(q)?,
        manager: Some(FieldManager {
            name,
            subresource: subresource.to_string(),
            applied: false,
        }),
        namespace_checked: false,
        admit: admit.check.clone(),
        hooks: admit.hooks.clone(),
        builtin: admit.builtin.clone(),
        subresource,
        requester: admit.user.clone(),
    })
}

/// Whether a subresource writes the status alone (`/status`, and `/approval` of a
/// CertificateSigningRequest, whose conditions live in the status).
fn status_like(sub: Option<Sub>) -> bool {
    matches!(sub, Some(Sub::Status | Sub::Approval))
}

fn field_validation(q: &HashMap<String, String>) -> ApiResult<FieldValidation> {
    FieldValidation::parse(q.get("fieldValidation").map(String::as_str))
}

/// Entry point: handles one request after the filter chain.
pub async fn handle(state: Arc<ApiState>, info: RequestInfo, req: Request<Body>) -> Response {
    match dispatch(&state, &info, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

/// The watch cache's copy of an object, for an update to start from instead of reading the
/// store (as kube-apiserver's cacher passes its object to `GuaranteedUpdate`).
fn cached_copy(state: &ApiState, res: &Resource, ns: &str, name: &str) -> Option<Value> {
    state.cache.get(res)?.peek(ns, name)
}

async fn dispatch(state: &ApiState, info: &RequestInfo, req: Request<Body>) -> ApiResult<Response> {
    let query = query_map(req.uri().query());
    if info.is_resource_request {
        return resource_request(state, info, query, req).await;
    }
    let path = req.uri().path().trim_end_matches('/').to_string();
    let headers = req.headers().clone();
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Err(ApiError::method_not_allowed(format!(
            "the server does not allow this method on the requested resource: {} {path}",
            req.method()
        )));
    }
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match segs.as_slice() {
        ["version"] => Ok(json_response(&version())),
        [probe @ ("healthz" | "livez" | "readyz"), rest @ ..] => {
            health(state, probe, rest, &query).await
        }
        ["metrics"] => Ok(state.metrics.render()),
        ["api"] => match discovery::wants_aggregated(accept) {
            Some(v) => Ok(aggregated_response(discovery::aggregated(true, v), v)),
            None => Ok(json_response(&discovery::api_versions(&state.advertise))),
        },
        ["apis"] => match discovery::wants_aggregated(accept) {
            Some(v) => Ok(aggregated_response(discovery::aggregated(false, v), v)),
            None => Ok(json_response(&discovery::api_group_list())),
        },
        ["api", v] => discovery::resource_list("", v)
            .map(|l| json_response(&l))
            .ok_or_else(ApiError::path_not_found),
        ["apis", g] => discovery::api_group(g)
            .map(|l| json_response(&l))
            .ok_or_else(ApiError::path_not_found),
        ["apis", g, v] => discovery::resource_list(g, v)
            .map(|l| json_response(&l))
            .ok_or_else(ApiError::path_not_found),
        ["openapi", "v2"] => {
            // kubectl asks for the protobuf form alone (the gnostic Document); other clients
            // for JSON.
            let wants_pb = accept.split(',').any(|a| {
                let mt = a.split(';').next().unwrap_or("").trim();
                matches!(
                    mt,
                    "application/com.github.proto-openapi.spec.v2@v1.0+protobuf"
                        | "application/com.github.proto-openapi.spec.v2.v1.0+protobuf"
                )
            });
            if wants_pb {
                let mut r = (StatusCode::OK, crate::openapi_pb::v2().to_vec()).into_response();
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static(
                        "application/com.github.proto-openapi.spec.v2.v1.0+protobuf",
                    ),
                );
                r.headers_mut()
                    .insert(header::VARY, HeaderValue::from_static("Accept"));
                return Ok(r);
            }
            let wants_json = accept.is_empty()
                || accept.split(',').any(|a| {
                    let mt = a.split(';').next().unwrap_or("").trim();
                    matches!(mt, "application/json" | "application/*" | "*/*")
                });
            if !wants_json {
                return Err(ApiError::not_acceptable(
                    "/openapi/v2 is served as application/json and application/com.github.proto-openapi.spec.v2.v1.0+protobuf",
                ));
            }
            let mut r = (StatusCode::OK, openapi::v2().to_vec()).into_response();
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            Ok(r)
        }
        ["openapi", "v3"] => Ok(json_response(&openapi::index())),
        ["openapi", "v3", rest @ ..] => {
            let key = rest.join("/");
            let doc = openapi::document(&key).ok_or_else(ApiError::path_not_found)?;
            let mut r = (StatusCode::OK, doc.body.clone()).into_response();
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            if query.get("hash").is_some_and(|h| *h == doc.hash) {
                r.headers_mut().insert(
                    header::CACHE_CONTROL,
                    HeaderValue::from_static("public, immutable"),
                );
            }
            r.headers_mut().insert(
                header::ETAG,
                HeaderValue::from_str(&format!("\"{}\"", doc.hash))
                    .unwrap_or(HeaderValue::from_static("\"\"")),
            );
            Ok(r)
        }
        _ => Err(ApiError::path_not_found()),
    }
}

fn aggregated_response(v: Value, version: &str) -> Response {
    let mut r = (StatusCode::OK, serde_json::to_vec(&v).unwrap_or_default()).into_response();
    let ct = format!("application/json;g=apidiscovery.k8s.io;v={version};as=APIGroupDiscoveryList");
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(&ct).unwrap_or(HeaderValue::from_static(discovery::AGGREGATED_CT)),
    );
    r.headers_mut()
        .insert(header::VARY, HeaderValue::from_static("Accept"));
    r
}

/// `/version`.
pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": crate::config::KUBE_MINOR.to_string(),
        "gitVersion": crate::config::git_version(),
        "gitCommit": "keelson",
        "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "rust",
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, if std::env::consts::ARCH == "x86_64" { "amd64" } else { std::env::consts::ARCH }),
    })
}

async fn health(
    state: &ApiState,
    probe: &str,
    rest: &[&str],
    query: &HashMap<String, String>,
) -> ApiResult<Response> {
    let mut checks: Vec<(String, Result<(), String>)> = vec![("ping".into(), Ok(()))];
    if probe != "livez" {
        let etcd = match tokio::time::timeout(
            std::time::Duration::from_secs(2),
            state.registry.etcd().current_revision(),
        )
        .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("etcd did not answer in 2s".into()),
        };
        checks.push(("etcd".into(), etcd));
        if let Some(enc) = &state.encryption {
            checks.extend(enc.health_checks().await);
        }
        if let Some(rbac) = state.authz.rbac() {
            checks.push(("poststarthook/rbac/bootstrap-roles".into(), rbac.ready()));
        }
        if probe == "readyz"
            && let Some(w) = &state.webhooks
        {
            checks.push(("informer-sync".into(), w.ready()));
        }
        if let Some(apf) = &state.apf {
            checks.push((
                "poststarthook/apiserver/bootstrap-system-flowcontrol-configuration".into(),
                apf.ready(),
            ));
        }
    }
    let excluded: Vec<&str> = query
        .get("exclude")
        .map(|e| e.split(',').collect())
        .unwrap_or_default();
    if !rest.is_empty() {
        let one = rest.join("/");
        return match checks.iter().find(|(n, _)| *n == one) {
            Some((_, Ok(()))) => Ok((StatusCode::OK, "ok").into_response()),
            Some((n, Err(e))) => Ok((
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("internal server error: {n} check failed: {e}"),
            )
                .into_response()),
            None => Err(ApiError::path_not_found()),
        };
    }
    // Per-KMS-provider checks are served on their own paths; `kms-providers` covers them.
    checks.retain(|(n, _)| !n.starts_with("kms-provider-"));
    let failed = checks
        .iter()
        .any(|(n, r)| r.is_err() && !excluded.contains(&n.as_str()));
    let verbose = query.get("verbose").is_some();
    if verbose || failed {
        let mut text = String::new();
        for (n, r) in &checks {
            match r {
                Ok(()) => text.push_str(&format!("[+]{n} ok\n")),
                Err(_) if excluded.contains(&n.as_str()) => {
                    text.push_str(&format!("[+]{n} excluded: ok\n"))
                }
                Err(_) => text.push_str(&format!("[-]{n} failed: reason withheld\n")),
            }
        }
        if failed {
            text.push_str(&format!("{probe} check failed\n"));
            return Ok((StatusCode::INTERNAL_SERVER_ERROR, text).into_response());
        }
        text.push_str(&format!("{probe} check passed\n"));
        return Ok((StatusCode::OK, text).into_response());
    }
    Ok((StatusCode::OK, "ok").into_response())
}

fn list_options(res: &Resource, q: &HashMap<String, String>) -> ApiResult<ListOptions> {
    Ok(ListOptions {
        labels: LabelSelector::parse(q.get("labelSelector").map(String::as_str).unwrap_or(""))?,
        fields: FieldSelector::parse(
            q.get("fieldSelector").map(String::as_str).unwrap_or(""),
            strategy::field_selector_fields(res),
        )?,
        limit: match q.get("limit") {
            Some(l) if !l.is_empty() => l
                .parse::<i64>()
                .map_err(|_| ApiError::bad_request(format!("invalid limit {l:?}")))?
                .max(0),
            _ => 0,
        },
        continue_token: q.get("continue").filter(|c| !c.is_empty()).cloned(),
        resource_version: q.get("resourceVersion").filter(|c| !c.is_empty()).cloned(),
        resource_version_match: q
            .get("resourceVersionMatch")
            .filter(|c| !c.is_empty())
            .cloned(),
    })
}

fn list_body(res: &Resource, page: crate::registry::ListPage) -> Value {
    let mut md = json!({"resourceVersion": page.revision.to_string()});
    if let Some(c) = &page.continue_token {
        md["continue"] = json!(c);
    }
    if let Some(r) = page.remaining
        && r > 0
    {
        md["remainingItemCount"] = json!(r);
    }
    let items: Vec<Value> = page.items.into_iter().map(|o| with_type(res, o)).collect();
    json!({"kind": res.list_kind(), "apiVersion": res.api_version(), "metadata": md, "items": items})
}

/// The object a create or update sends, of `res`, with the warnings `fv` asks for (duplicate
/// and unknown fields, the unknown ones dropped) or its refusal under Strict.
fn decoded_body(
    res: &Resource,
    ct: &str,
    body: &[u8],
    fv: FieldValidation,
) -> ApiResult<(Value, Vec<String>)> {
    let mut obj = decode_document(ct, body)?;
    check_type(&mut obj, res.group, res.version, res.kind)?;
    let mut warnings = validation::check_duplicates(ct, body, fv)?;
    warnings.extend(validation::check(
        res.group,
        res.version,
        res.definition,
        &mut obj,
        fv,
    )?);
    Ok((obj, warnings))
}

fn not_allowed(info: &RequestInfo) -> ApiError {
    ApiError::method_not_allowed(format!(
        "the server does not allow this method on the requested resource ({} {})",
        info.verb, info.path
    ))
}

async fn resource_request(
    state: &ApiState,
    info: &RequestInfo,
    q: HashMap<String, String>,
    req: Request<Body>,
) -> ApiResult<Response> {
    let res = resources::find(&info.api_group, &info.api_version, &info.resource)
        .ok_or_else(ApiError::path_not_found)?;
    if !res.namespaced && !info.namespace.is_empty() && res.resource != "namespaces" {
        return Err(ApiError::path_not_found());
    }
    if res.namespaced
        && info.namespace.is_empty()
        && !matches!(info.verb.as_str(), "list" | "watch")
    {
        return Err(ApiError::path_not_found());
    }
    if info.parts.len() > 3 {
        return Err(ApiError::path_not_found());
    }
    let sub = match info.subresource.as_str() {
        "" => None,
        s => Some(
            res.subresources
                .iter()
                .copied()
                .find(|x| x.name() == s)
                .ok_or_else(ApiError::path_not_found)?,
        ),
    };
    let ns = info.namespace.as_str();
    let name = info.name.as_str();
    let headers = req.headers().clone();
    // Writes only: the admission checks of this user's write, with the namespace's enforced
    // Pod Security level for pods (checked on the object as stored, after mutation).
    let admit = match (
        info.is_mutating(),
        req.extensions().get::<crate::authz::UserInfo>(),
    ) {
        (true, Some(u)) => {
            let enforce = if state.admission.pod_security
                && res.group.is_empty()
                && res.resource == "pods"
                && sub.is_none()
            {
                namespace_of(state, ns)
                    .await
                    .and_then(|n| crate::podsecurity::modes(&n).enforce)
            } else {
                None
            };
            let check = crate::admission::write_check(
                &state.admission,
                &state.authz,
                res,
                sub.map(Sub::name).unwrap_or(""),
                u,
                enforce,
            );
            // EventRateLimit: creates and updates of core Events, dry runs aside.
            match &state.builtin.event_rate {
                Some(l)
                    if res.group.is_empty()
                        && res.resource == "events"
                        && matches!(info.verb.as_str(), "create" | "update" | "patch")
                        && !dry_run(&q)? =>
                {
                    Some(crate::admission::with_event_rate(check, l.clone(), u))
                }
                _ => check,
            }
        }
        _ => None,
    };
    let audit = crate::audit::context(&req);
    // Writes only: the admission webhooks that may apply.
    let hooks = match (
        info.is_mutating(),
        &state.webhooks,
        req.extensions().get::<crate::authz::UserInfo>(),
    ) {
        (true, Some(w), Some(u)) => w.call(res, sub.map(Sub::name).unwrap_or(""), u),
        _ => None,
    };
    let whole = info.is_mutating() && sub.is_none();
    let admit = Admission {
        check: admit,
        hooks: hooks.clone(),
        builtin: whole.then(|| state.builtin.clone()),
        user: req.extensions().get::<crate::authz::UserInfo>().cloned(),
    };
    let allow_table = sub.is_none() || status_like(sub);
    let result: ApiResult<Response> = async { match (info.verb.as_str(), sub) {
        // No route: POST to an object, PUT or PATCH to a collection.
        ("create", None) if !name.is_empty() => Err(not_allowed(info)),
        ("update" | "patch", _) if name.is_empty() => Err(not_allowed(info)),
        ("get", None | Some(Sub::Status | Sub::Approval)) => {
            let out = negotiate(&headers, &q, allow_table)?;
            let obj = with_type(res, state.registry.get(res, ns, name).await?);
            Ok(render_object(res, &obj, out, StatusCode::OK))
        }
        ("get" | "create", Some(sub @ (Sub::Exec | Sub::Attach))) => {
            let pod = state.registry.get(res, ns, name).await?;
            let container =
                crate::kubelet::log_container(&pod, q.get("container").map(String::as_str))?;
            let (host, port) = kubelet_of(state, &pod, name).await?;
            let raw = req.uri().query().unwrap_or("").to_string();
            let path = format!("/{}/{ns}/{name}/{container}?{raw}", sub.name());
            state.kubelet.upgrade(&host, port, &path, req, false).await
        }
        ("get" | "create", Some(Sub::PortForward)) => {
            let pod = state.registry.get(res, ns, name).await?;
            let (host, port) = kubelet_of(state, &pod, name).await?;
            let path = crate::kubelet::port_forward_path(ns, name, req.uri().query())?;
            state.kubelet.upgrade(&host, port, &path, req, true).await
        }
        ("get", Some(Sub::Log)) => {
            let pod = state.registry.get(res, ns, name).await?;
            let container =
                crate::kubelet::log_container(&pod, q.get("container").map(String::as_str))?;
            let (host, port) = kubelet_of(state, &pod, name).await?;
            let path = crate::kubelet::log_path(ns, name, &container, &q);
            state.kubelet.get(&host, port, &path).await
        }
        ("get", Some(Sub::Scale)) => {
            let obj = state.registry.get(res, ns, name).await?;
            Ok(json_response(&object::scale_of(res, &obj)))
        }
        ("list", None) => {
            let out = negotiate(&headers, &q, true)?;
            let opts = list_options(res, &q)?;
            let cached = match state.cache.get(res) {
                Some(c) => c.list(ns, &opts).await,
                None => None,
            };
            let page = match cached {
                // Plain JSON lists go out as the cached encodings, without copying objects.
                Some(Ok(cp)) if out == Output::Json => {
                    let mut r = (StatusCode::OK, cp.encode_json(res)).into_response();
                    r.headers_mut().insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    );
                    return Ok(r);
                }
                Some(p) => p?.into_page(),
                None => state.registry.list(res, ns, &opts).await?,
            };
            match out {
                Output::Table(include) => {
                    let rv = page.revision.to_string();
                    let items: Vec<Value> =
                        page.items.into_iter().map(|o| with_type(res, o)).collect();
                    Ok(render(
                        &table::table(
                            res,
                            &items,
                            &rv,
                            page.continue_token.as_deref(),
                            include,
                            true,
                        ),
                        out,
                        StatusCode::OK,
                    ))
                }
                Output::Metadata => {
                    let mut body = list_body(res, page);
                    body["kind"] = json!("PartialObjectMetadataList");
                    body["apiVersion"] = json!("meta.k8s.io/v1");
                    if let Some(items) = body.get_mut("items").and_then(Value::as_array_mut) {
                        for it in items.iter_mut() {
                            *it = table::partial_metadata(it);
                        }
                    }
                    Ok(render(&body, out, StatusCode::OK))
                }
                _ => Ok(render(&list_body(res, page), out, StatusCode::OK)),
            }
        }
        ("watch", None) => {
            let out = negotiate(&headers, &q, true)?;
            let opts = list_options(res, &q)?;
            let timeout_seconds =
                match q.get("timeoutSeconds") {
                    Some(t) if !t.is_empty() => Some(t.parse::<u64>().map_err(|_| {
                        ApiError::bad_request(format!("invalid timeoutSeconds {t:?}"))
                    })?),
                    _ => None,
                };
            let mut fields = opts.fields.clone();
            if !info.name.is_empty() && fields.is_empty() {
                fields = FieldSelector::parse(
                    &format!("metadata.name={}", info.name),
                    &["metadata.name"],
                )?;
            }
            let params = watch::WatchParams {
                resource_version: opts.resource_version.clone(),
                resource_version_match: opts.resource_version_match.clone(),
                labels: opts.labels.clone(),
                fields,
                bookmarks: q
                    .get("allowWatchBookmarks")
                    .and_then(|v| parse_bool(v))
                    .unwrap_or(false),
                timeout: watch::timeout(timeout_seconds, state.min_request_timeout),
                send_initial_events: q.get("sendInitialEvents").and_then(|v| parse_bool(v)),
                render: match out {
                    Output::Table(i) => watch::Render::Table(i),
                    Output::Metadata => watch::Render::Metadata,
                    // Kinds without a protobuf form are watched in JSON, as upstream does for
                    // custom resources.
                    Output::Protobuf if crate::protobuf::has_schema(&res.api_version(), res.kind) => {
                        watch::Render::Protobuf
                    }
                    _ => watch::Render::Json,
                },
            };
            let content_type = params.render.content_type();
            let cached = match state.cache.get(res) {
                Some(c) => c.watch(ns, params.clone()).await,
                None => None,
            };
            let (rx, guard) = match cached {
                // The cache holds its own watcher count.
                Some(r) => (r?, None),
                None => (
                    watch::start(&state.registry, res, ns, params).await?,
                    Some(state.metrics.watcher_guard(res)),
                ),
            };
            let stream = futures::stream::unfold((rx, guard), |(mut rx, g)| async move {
                rx.recv()
                    .await
                    .map(|b| (Ok::<_, std::convert::Infallible>(b), (rx, g)))
            });
            let mut r = Response::new(Body::from_stream(stream));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(content_type),
            );
            r.headers_mut().insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("no-cache, private"),
            );
            Ok(r)
        }
        ("create", None) if res.storage.is_empty() => {
            let out = negotiate(&headers, &q, false)?;
            let user = req
                .extensions()
                .get::<crate::authz::UserInfo>()
                .cloned()
                .unwrap_or_default();
            let ct = content_type(&headers);
            let body = read_body(req.into_body()).await?;
            let mut obj = decode_document(&ct, &body)?;
            check_type(&mut obj, res.group, res.version, res.kind)?;
            let warnings = validation::check(
                res.group,
                res.version,
                res.definition,
                &mut obj,
                field_validation(&q)?,
            )?;
            let answer = crate::authz::review::answer(&state.authz, res, ns, &user, obj).await?;
            Ok(add_warnings(
                render_object(res, &answer, out, StatusCode::CREATED),
                &warnings,
            ))
        }
        ("create", None) => {
            let out = negotiate(&headers, &q, false)?;
            let mut w = write_opts(&admit, &q, &headers, "")?;
            if res.namespaced {
                let nsres = resources::find("", "v1", "namespaces").expect("namespaces are served");
                if let Some(n) = state.cache.get(nsres).and_then(|c| c.peek("", ns)) {
                    crate::registry::admit_namespace(&n, ns)?;
                    w.namespace_checked = true;
                }
            }
            let fv = field_validation(&q)?;
            let ct = content_type(&headers);
            let audit = crate::audit::context(&req);
            let body = read_body(req.into_body()).await?;
            let (obj, mut warnings) = decoded_body(res, &ct, &body, fv)?;
            if state.admission.pod_security && res.namespaced {
                warnings.extend(pod_security(state, res, ns, &obj, audit.as_deref()).await?);
            }
            let created = state.registry.create(res, ns, obj, &w).await?;
            Ok(add_warnings(
                render_object(res, &with_type(res, created), out, StatusCode::CREATED),
                &warnings,
            ))
        }
        ("create", Some(Sub::Token)) => {
            let node = restricted_node(state, &req);
            let ct = content_type(&headers);
            let body = read_body(req.into_body()).await?;
            let mut tr = decode_document(&ct, &body)?;
            check_type(&mut tr, "authentication.k8s.io", "v1", "TokenRequest")?;
            admit_sub_create(&admit, ns, name, &mut tr, dry_run(&q)?).await?;
            token_request(state, ns, name, tr, dry_run(&q)?, node.as_deref()).await
        }
        ("create", Some(Sub::Binding)) => {
            let ct = content_type(&headers);
            let body = read_body(req.into_body()).await?;
            let mut b = decode_document(&ct, &body)?;
            check_type(&mut b, "", "v1", "Binding")?;
            admit_sub_create(&admit, ns, name, &mut b, dry_run(&q)?).await?;
            bind(state, res, ns, name, &b, dry_run(&q)?).await
        }
        ("create", Some(Sub::Eviction)) => {
            let ct = content_type(&headers);
            let body = read_body(req.into_body()).await?;
            let mut ev = decode_document(&ct, &body)?;
            let av = ev
                .get("apiVersion")
                .and_then(Value::as_str)
                .unwrap_or("policy/v1");
            if !matches!(av, "policy/v1" | "policy/v1beta1")
                || ev
                    .get("kind")
                    .and_then(Value::as_str)
                    .is_some_and(|k| k != "Eviction")
            {
                return Err(ApiError::bad_request(format!(
                    "the body must be a policy/v1 Eviction, got {av}"
                )));
            }
            let body_name = object::name(&ev);
            if !body_name.is_empty() && body_name != name {
                return Err(ApiError::bad_request(format!(
                    "name in URL does not match name in Eviction object ({body_name} != {name})"
                )));
            }
            admit_sub_create(&admit, ns, name, &mut ev, dry_run(&q)?).await?;
            evict(state, res, ns, name, &ev, dry_run(&q)?).await
        }
        ("update", Some(Sub::Finalize)) => {
            let ct = content_type(&headers);
            let body = read_body(req.into_body()).await?;
            let mut nsobj = decode_document(&ct, &body)?;
            check_type(&mut nsobj, "", "v1", "Namespace")?;
            let body_name = object::name(&nsobj);
            if body_name != name {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({body_name}) does not match the name on the URL ({name})"
                )));
            }
            let finalizers = nsobj
                .pointer("/spec/finalizers")
                .cloned()
                .unwrap_or(json!([]));
            let valid = finalizers.as_array().is_some_and(|a| {
                a.iter()
                    .all(|f| f.as_str().is_some_and(|s| !s.is_empty() && s.len() <= 316))
            });
            if !valid {
                return Err(ApiError::invalid(
                    "",
                    "Namespace",
                    name,
                    vec![crate::status::Cause::new(
                        "FieldValueInvalid",
                        "spec.finalizers",
                        "Invalid value: finalizers must be non-empty strings",
                    )],
                ));
            }
            let updated = state
                .registry
                .modify(res, "", name, dry_run(&q)?, |old| {
                    let mut o = object::without_rv(old);
                    o["spec"]["finalizers"] = finalizers.clone();
                    Ok(o)
                })
                .await?;
            Ok(json_response(&with_type(res, updated)))
        }
        ("update", None | Some(Sub::Status | Sub::Approval)) => {
            let out = negotiate(&headers, &q, false)?;
            let w = write_opts(&admit, &q, &headers, sub.map(Sub::name).unwrap_or(""))?;
            let fv = field_validation(&q)?;
            let ct = content_type(&headers);
            let body = read_body(req.into_body()).await?;
            let (obj, warnings) = decoded_body(res, &ct, &body, fv)?;
            let updated = state
                .registry
                .update(
                    res,
                    ns,
                    name,
                    obj,
                    status_like(sub),
                    &w,
                    cached_copy(state, res, ns, name),
                )
                .await?;
            Ok(add_warnings(
                render_object(res, &with_type(res, updated), out, StatusCode::OK),
                &warnings,
            ))
        }
        ("update", Some(Sub::Scale)) => {
            let w = write_opts(&admit, &q, &headers, "scale")?;
            let ct = content_type(&headers);
            let body = read_body(req.into_body()).await?;
            let mut scale = decode_document(&ct, &body)?;
            check_type(&mut scale, "autoscaling", "v1", "Scale")?;
            let replicas = scale
                .pointer("/spec/replicas")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            let want_rv = object::meta_str(&scale, "resourceVersion").to_string();
            let updated = state
                .registry
                .guaranteed_update(res, ns, name, false, &w, cached_copy(state, res, ns, name), |old| {
                    let mut o = old.clone();
                    if !want_rv.is_empty() {
                        object::set_meta(&mut o, "resourceVersion", json!(want_rv));
                    } else if let Some(m) = o.get_mut("metadata").and_then(Value::as_object_mut) {
                        m.remove("resourceVersion");
                    }
                    o["spec"]["replicas"] = json!(replicas);
                    Ok(o)
                })
                .await?;
            Ok(json_response(&object::scale_of(res, &updated)))
        }
        ("patch", None | Some(Sub::Status | Sub::Scale | Sub::Approval)) => {
            let out = negotiate(&headers, &q, false)?;
            let w = write_opts(&admit, &q, &headers, sub.map(Sub::name).unwrap_or(""))?;
            let fv = field_validation(&q)?;
            let ct = content_type(&headers);
            if ct == "application/apply-patch+yaml" {
                let body = read_body(req.into_body()).await?;
                return server_side_apply(state, res, ns, name, sub, &q, &w, &body, out).await;
            }
            let body = read_body(req.into_body()).await?;
            let kind = patch::PatchKind::from_content_type(&ct)?;
            let patch_doc = patch::parse(kind, &body)?;
            let warnings = std::sync::Mutex::new(Vec::new());
            let is_scale = sub == Some(Sub::Scale);
            let updated = state
                .registry
                .guaranteed_update(res, ns, name, status_like(sub), &w, cached_copy(state, res, ns, name), |old| {
                    let base = if is_scale {
                        object::scale_of(res, old)
                    } else {
                        with_type(res, old.clone())
                    };
                    let base_no_rv = object::without_rv(&base);
                    let (pg, pv, pd) = if is_scale {
                        ("autoscaling", "v1", "io.k8s.api.autoscaling.v1.Scale")
                    } else {
                        (res.group, res.version, res.definition)
                    };
                    let mut patched = patch::apply(kind, pg, pv, pd, &base_no_rv, &patch_doc)?;
                    if is_scale {
                        check_type(&mut patched, "autoscaling", "v1", "Scale")?;
                        let mut o = object::without_rv(old);
                        if let Some(r) = patched.pointer("/spec/replicas") {
                            o["spec"]["replicas"] = r.clone();
                        }
                        if let Some(rv) = patched.pointer("/metadata/resourceVersion") {
                            object::set_meta(&mut o, "resourceVersion", rv.clone());
                        }
                        return Ok(o);
                    }
                    check_type(&mut patched, res.group, res.version, res.kind)?;
                    let w = validation::check(
                        res.group,
                        res.version,
                        res.definition,
                        &mut patched,
                        fv,
                    )?;
                    *warnings.lock().unwrap_or_else(|e| e.into_inner()) = w;
                    Ok(patched)
                })
                .await?;
            let warnings = warnings.into_inner().unwrap_or_default();
            if is_scale {
                return Ok(json_response(&object::scale_of(res, &updated)));
            }
            Ok(add_warnings(
                render_object(res, &with_type(res, updated), out, StatusCode::OK),
                &warnings,
            ))
        }
        ("delete", None) => {
            if let Some(node) = restricted_node(state, &req) {
                let target = if res.group.is_empty() && res.resource == "pods" {
                    Some(state.registry.get(res, ns, name).await?)
                } else {
                    None
                };
                crate::admission::node_may_delete(&node, res, name, target.as_ref())?;
            }
            let ct = content_type(&headers);
            let body = read_body(req.into_body()).await?;
            let mut opts = delete_options(&q, &ct, &body)?;
            opts.hooks = admit.hooks.clone();
            let d = state.registry.delete(res, ns, name, &opts).await?;
            let obj = with_type(res, d.object);
            let code = if d.gone {
                StatusCode::OK
            } else {
                StatusCode::ACCEPTED
            };
            if d.gone && matches!(res.kind, "Namespace") {
                return Ok(json_response(&success(
                    res.group,
                    res.resource,
                    name,
                    Some(object::meta_str(&obj, "uid")),
                )));
            }
            Ok(render(&obj, Output::Json, code))
        }
        ("deletecollection", None) => {
            let ct = content_type(&headers);
            let body = read_body(req.into_body()).await?;
            let mut opts = delete_options(&q, &ct, &body)?;
            opts.hooks = admit.hooks.clone();
            let lo = list_options(res, &q)?;
            let page = state.registry.list(res, ns, &lo).await?;
            let mut deleted = Vec::new();
            for item in page.items {
                let n = object::name(&item).to_string();
                let ins = object::namespace(&item).to_string();
                match state.registry.delete(res, &ins, &n, &opts).await {
                    Ok(d) => deleted.push(with_type(res, d.object)),
                    Err(e) if e.code == 404 => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(json_response(
                &json!({"kind": res.list_kind(), "apiVersion": res.api_version(), "metadata": {}, "items": deleted}),
            ))
        }
        _ => Err(not_allowed(info)),
    } }.await;
    // Webhook warnings go out with the answer, a refusal included, as upstream; policies'
    // Audit failures go in the audit event.
    match (result, hooks) {
        (r, Some(h)) => {
            h.publish_audit(audit.as_deref());
            let warnings = h.warnings();
            match r {
                Ok(r) => Ok(add_warnings(r, &warnings)),
                Err(e) if !warnings.is_empty() => Ok(add_warnings(e.into_response(), &warnings)),
                Err(e) => Err(e),
            }
        }
        (r, None) => r,
    }
}

/// Reads a `DeleteOptions` body into `opts` (a dry run in the body adds to one in the query).
fn read_delete_options(v: &Value, opts: &mut DeleteOptions) {
    let text = |p: &str| v.pointer(p).and_then(Value::as_str).map(str::to_string);
    opts.grace_period = v.get("gracePeriodSeconds").and_then(Value::as_i64);
    opts.propagation = text("/propagationPolicy");
    if v.get("orphanDependents") == Some(&json!(true)) && opts.propagation.is_none() {
        opts.propagation = Some("Orphan".into());
    }
    opts.uid = text("/preconditions/uid");
    opts.resource_version = text("/preconditions/resourceVersion");
    opts.dry_run |= v
        .get("dryRun")
        .and_then(Value::as_array)
        .is_some_and(|a| a.iter().any(|x| x == "All"));
}

fn delete_options(q: &HashMap<String, String>, ct: &str, body: &[u8]) -> ApiResult<DeleteOptions> {
    let mut opts = DeleteOptions::default();
    if !body.iter().all(u8::is_ascii_whitespace) {
        let v = decode_document(ct, body)?;
        if let Some(k) = v.get("kind").and_then(Value::as_str)
            && k != "DeleteOptions"
        {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({k}) does not match the expected kind (DeleteOptions)"
            )));
        }
        read_delete_options(&v, &mut opts);
    }
    if let Some(g) = q.get("gracePeriodSeconds") {
        opts.grace_period = Some(
            g.parse()
                .map_err(|_| ApiError::bad_request(format!("invalid gracePeriodSeconds {g:?}")))?,
        );
    }
    if let Some(p) = q.get("propagationPolicy") {
        opts.propagation = Some(p.clone());
    }
    if let Some(p) = &opts.propagation
        && !matches!(p.as_str(), "Orphan" | "Background" | "Foreground")
    {
        return Err(ApiError::invalid(
            "",
            "DeleteOptions",
            "",
            vec![crate::status::Cause::new(
                "FieldValueNotSupported",
                "propagationPolicy",
                format!(
                    "Unsupported value: {p:?}: supported values: \"Foreground\", \"Background\", \"Orphan\", \"nil\""
                ),
            )],
        ));
    }
    if dry_run(q)? {
        opts.dry_run = true;
    }
    Ok(opts)
}

/// `pods/binding`: sets `spec.nodeName` of an unbound pod.
/// The PodSecurity plugin's `warn` and `audit` modes on a create of a pod or a workload with a
/// pod template: warnings for the client (returned), an annotation for the audit event. (The
/// `enforce` mode is a write check: [`crate::admission::write_check`].)
async fn pod_security(
    state: &ApiState,
    res: &Resource,
    ns: &str,
    obj: &Value,
    audit: Option<&crate::audit::AuditContext>,
) -> ApiResult<Vec<String>> {
    use crate::podsecurity::{Level, check, describe, modes, pod_of};
    let Some((meta, spec)) = pod_of(res.kind, obj) else {
        return Ok(Vec::new());
    };
    // A missing namespace is NamespaceLifecycle's to refuse.
    let Some(namespace) = namespace_of(state, ns).await else {
        return Ok(Vec::new());
    };
    let m = modes(&namespace);
    let mut warnings = Vec::new();
    let mut judged: Vec<(Level, Vec<(String, String)>)> = Vec::new();
    let mut violations = |level: Level| -> Vec<(String, String)> {
        if let Some((_, v)) = judged.iter().find(|(l, _)| *l == level) {
            return v.clone();
        }
        let v = check(level, meta, spec);
        judged.push((level, v.clone()));
        v
    };
    // (A pod's `enforce` level is checked at the write, on the object as stored.)
    for p in m.warn.iter() {
        let v = violations(p.level);
        if !v.is_empty() {
            let w = format!("would violate {}", describe(p, &v));
            if !warnings.contains(&w) {
                warnings.push(w);
            }
        }
    }
    if let (Some(p), Some(a)) = (&m.audit, audit) {
        let v = violations(p.level);
        if !v.is_empty() {
            a.annotate(
                "pod-security.kubernetes.io/audit-violations",
                &format!("would violate {}", describe(p, &v)),
            );
        }
    }
    Ok(warnings)
}

/// `serviceaccounts/<name>/token`: a signed token for the account, for the requested
/// audiences and lifetime, optionally bound to a pod, secret or node of the same namespace
/// (which must exist, with the given UID; a pod must run as this account).
/// A namespace from the watch cache, or from the store when the cache does not have it.
async fn namespace_of(state: &ApiState, ns: &str) -> Option<Value> {
    let nsres = resources::find("", "v1", "namespaces").expect("namespaces are served");
    match state.cache.get(nsres).and_then(|c| c.peek("", ns)) {
        Some(n) => Some(n),
        None => state.registry.get(nsres, "", ns).await.ok(),
    }
}

/// The node a request comes from, when NodeRestriction applies to it.
fn restricted_node(state: &ApiState, req: &Request<Body>) -> Option<String> {
    if !state.admission.node_restriction {
        return None;
    }
    req.extensions()
        .get::<crate::authz::UserInfo>()
        .and_then(|u| crate::authz::node::node_name(u).map(str::to_string))
}

async fn token_request(
    state: &ApiState,
    ns: &str,
    name: &str,
    mut tr: Value,
    dry_run: bool,
    node: Option<&str>,
) -> ApiResult<Response> {
    use crate::authn::serviceaccount::{Bound, now};
    let Some(issuer) = &state.token_issuer else {
        return Err(ApiError::path_not_found());
    };
    let sa_res = resources::find("", "v1", "serviceaccounts").expect("served");
    let sa = state.registry.get(sa_res, ns, name).await?;
    let invalid = |field: &str, value: &Value, msg: &str| {
        ApiError::invalid(
            "authentication.k8s.io",
            "TokenRequest",
            name,
            vec![crate::status::Cause::new(
                "FieldValueInvalid",
                field,
                format!("Invalid value: {value}: {msg}"),
            )],
        )
    };
    let mut seconds = tr
        .pointer("/spec/expirationSeconds")
        .and_then(Value::as_i64)
        .unwrap_or(3600);
    if seconds < 600 {
        return Err(invalid(
            "spec.expirationSeconds",
            &json!(seconds),
            "may not specify a duration less than 10 minutes",
        ));
    }
    if seconds > 1 << 32 {
        return Err(invalid(
            "spec.expirationSeconds",
            &json!(seconds),
            "may not specify a duration larger than 2^32 seconds",
        ));
    }
    if let Some(max) = issuer.max_expiration {
        seconds = seconds.min(max.as_secs() as i64);
    }
    let audiences: Vec<String> = tr
        .pointer("/spec/audiences")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let bound = match tr.pointer("/spec/boundObjectRef").filter(|b| !b.is_null()) {
        None => None,
        Some(b) => {
            let kind = b.get("kind").and_then(Value::as_str).unwrap_or("");
            let bname = b.get("name").and_then(Value::as_str).unwrap_or("");
            let (resource, bns) = match kind {
                "Pod" => ("pods", ns),
                "Secret" => ("secrets", ns),
                "Node" => ("nodes", ""),
                _ => {
                    return Err(invalid(
                        "spec.boundObjectRef.kind",
                        &json!(kind),
                        "supported values: \"Pod\", \"Secret\", \"Node\"",
                    ));
                }
            };
            let res = resources::find("", "v1", resource).expect("served");
            let obj = state.registry.get(res, bns, bname).await?;
            let uid = obj
                .pointer("/metadata/uid")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            if let Some(want) = b
                .get("uid")
                .and_then(Value::as_str)
                .filter(|u| !u.is_empty())
                && want != uid
            {
                return Err(ApiError::conflict(
                    "",
                    resource,
                    bname,
                    &format!(
                        "the UID in the bound object reference ({want}) does not match the UID in record. The object might have been deleted and then recreated"
                    ),
                ));
            }
            if kind == "Pod" {
                let pod_sa = obj
                    .pointer("/spec/serviceAccountName")
                    .and_then(Value::as_str)
                    .unwrap_or("default");
                if pod_sa != name {
                    return Err(ApiError::bad_request(format!(
                        "cannot bind token for serviceaccount {name:?} to pod running with different serviceaccount name."
                    )));
                }
            }
            // NodeRestriction: a node's tokens are bound to a pod (by UID) running on it.
            if let Some(node) = node {
                let on = obj
                    .pointer("/spec/nodeName")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                if kind != "Pod"
                    || b.get("uid")
                        .and_then(Value::as_str)
                        .is_none_or(str::is_empty)
                {
                    return Err(ApiError::forbidden(format!(
                        "serviceaccounts {name:?} is forbidden: node requested token not bound to a pod"
                    )));
                }
                if on != node {
                    return Err(ApiError::forbidden(format!(
                        "serviceaccounts {name:?} is forbidden: node requested token bound to a pod scheduled on a different node"
                    )));
                }
            }
            Some(Bound {
                kind: kind.into(),
                name: bname.into(),
                uid,
            })
        }
    };
    if node.is_some() && bound.is_none() {
        return Err(ApiError::forbidden(format!(
            "serviceaccounts {name:?} is forbidden: node requested token not bound to a pod"
        )));
    }
    let sa_uid = sa
        .pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap_or("");
    let (token, exp) = issuer
        .issue(ns, name, sa_uid, &audiences, seconds, bound.as_ref(), now())
        .map_err(ApiError::internal)?;
    let audiences = if audiences.is_empty() {
        issuer.default_audiences.clone()
    } else {
        audiences
    };
    tr["metadata"] =
        json!({"name": name, "namespace": ns, "creationTimestamp": object::now_rfc3339()});
    tr["spec"]["audiences"] = json!(audiences);
    tr["spec"]["expirationSeconds"] = json!(seconds);
    let expiry = jiff::Timestamp::from_second(exp)
        .map(|t| t.to_string())
        .unwrap_or_default();
    tr["status"] = json!({
        "token": if dry_run { String::new() } else { token },
        "expirationTimestamp": expiry,
    });
    let mut r = (
        StatusCode::CREATED,
        serde_json::to_vec(&tr).unwrap_or_default(),
    )
        .into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(r)
}

async fn bind(
    state: &ApiState,
    res: &'static Resource,
    ns: &str,
    name: &str,
    b: &Value,
    dry: bool,
) -> ApiResult<Response> {
    let target = b
        .pointer("/target/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if target.is_empty() {
        return Err(ApiError::invalid(
            "",
            "Binding",
            name,
            vec![crate::status::Cause::new(
                "FieldValueRequired",
                "target.name",
                "Required value",
            )],
        ));
    }
    let body_name = object::name(b);
    if !body_name.is_empty() && body_name != name {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({body_name}) does not match the name on the URL ({name})"
        )));
    }
    state
        .registry
        .modify(res, ns, name, dry, |old| {
            if old.pointer("/spec/nodeName").and_then(Value::as_str).is_some_and(|n| !n.is_empty()) {
                return Err(ApiError::conflict("", "pods", name, &format!("pod {name} is already assigned to node {:?}", old.pointer("/spec/nodeName").and_then(Value::as_str).unwrap_or(""))));
            }
            if !object::meta_str(old, "deletionTimestamp").is_empty() {
                return Err(ApiError::conflict("", "pods", name, "pod is being deleted, cannot be assigned to a host"));
            }
            let mut o = object::without_rv(old);
            o["spec"]["nodeName"] = json!(target);
            let mut conds: Vec<Value> = o.pointer("/status/conditions").and_then(Value::as_array).cloned().unwrap_or_default();
            conds.retain(|c| c.get("type") != Some(&json!("PodScheduled")));
            conds.push(json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": object::now_rfc3339()}));
            o["status"]["conditions"] = Value::Array(conds);
            Ok(o)
        })
        .await?;
    Ok(render(
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
        Output::Json,
        StatusCode::CREATED,
    ))
}

/// Server-side apply (`application/apply-patch+yaml`): creates the object if it does not exist,
/// else merges the applied configuration with field ownership and conflicts.
#[allow(clippy::too_many_arguments)]
async fn server_side_apply(
    state: &ApiState,
    res: &'static Resource,
    ns: &str,
    name: &str,
    sub: Option<Sub>,
    q: &HashMap<String, String>,
    w: &WriteOpts,
    body: &[u8],
    out: Output,
) -> ApiResult<Response> {
    if matches!(
        sub,
        Some(Sub::Scale) | Some(Sub::Binding) | Some(Sub::Eviction)
    ) {
        return Err(ApiError::unsupported_media_type(
            "application/apply-patch+yaml",
        ));
    }
    let manager = q
        .get("fieldManager")
        .filter(|m| !m.is_empty())
        .cloned()
        .ok_or_else(|| ApiError::bad_request("fieldManager is required for apply requests"))?;
    let force = match q.get("force") {
        Some(f) => {
            parse_bool(f).ok_or_else(|| ApiError::bad_request(format!("invalid force {f:?}")))?
        }
        None => false,
    };
    let fv = field_validation(q)?;
    let mut applied = decode_document("application/apply-patch+yaml", body)?;
    if applied
        .get("apiVersion")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
        || applied
            .get("kind")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
    {
        return Err(ApiError::bad_request(
            "apiVersion and kind must be set in an apply configuration",
        ));
    }
    check_type(&mut applied, res.group, res.version, res.kind)?;
    let body_name = object::name(&applied).to_string();
    if body_name != name {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({body_name}) does not match the name on the URL ({name})"
        )));
    }
    let warnings = validation::check(res.group, res.version, res.definition, &mut applied, fv)?;
    let subresource = if status_like(sub) {
        sub.map(Sub::name).unwrap_or("")
    } else {
        ""
    };
    let mut w = w.clone();
    w.manager = Some(FieldManager {
        name: manager.clone(),
        subresource: subresource.into(),
        applied: true,
    });
    let sch = crate::managed::Schemas::of(res.group, res.version);
    let av = res.api_version();
    // The store's object, read to know whether the apply creates: the update starts from it.
    let current = match state.registry.get(res, ns, name).await {
        Ok(o) => Some(o),
        Err(e) if e.code == 404 => None,
        Err(e) => return Err(e),
    };
    if current.is_none() && sub.is_none() {
        let obj = crate::managed::apply(
            &sch,
            res.definition,
            &av,
            subresource,
            None,
            &applied,
            &manager,
            force,
        )?;
        match state.registry.create(res, ns, obj, &w).await {
            Ok(created) => {
                return Ok(add_warnings(
                    render_object(res, &with_type(res, created), out, StatusCode::CREATED),
                    &warnings,
                ));
            }
            Err(e) if e.code == 409 && e.reason == "AlreadyExists" => {}
            Err(e) => return Err(e),
        }
    }
    let updated = state
        .registry
        .guaranteed_update(res, ns, name, status_like(sub), &w, current, |old| {
            let base = object::without_rv(&with_type(res, old.clone()));
            crate::managed::apply(
                &sch,
                res.definition,
                &av,
                subresource,
                Some(&base),
                &applied,
                &manager,
                force,
            )
        })
        .await?;
    Ok(add_warnings(
        render_object(res, &with_type(res, updated), out, StatusCode::OK),
        &warnings,
    ))
}

/// `pods/eviction`: deletes the pod unless a PodDisruptionBudget forbids it (429), counting the
/// disruption in the budget's status as upstream.
async fn evict(
    state: &ApiState,
    res: &'static Resource,
    ns: &str,
    name: &str,
    ev: &Value,
    dry: bool,
) -> ApiResult<Response> {
    let pod = state.registry.get(res, ns, name).await?;
    let mut opts = DeleteOptions {
        dry_run: dry,
        ..Default::default()
    };
    if let Some(d) = ev.get("deleteOptions") {
        read_delete_options(d, &mut opts);
    }
    let phase = pod
        .pointer("/status/phase")
        .and_then(Value::as_str)
        .unwrap_or("");
    // Finished or never-started pods are not disruptions.
    if !matches!(phase, "Succeeded" | "Failed" | "Pending") {
        let pdbres =
            resources::find("policy", "v1", "poddisruptionbudgets").expect("pdbs are served");
        let pdbs = state
            .registry
            .list(pdbres, ns, &ListOptions::default())
            .await?
            .items;
        let mut matching = Vec::new();
        for p in pdbs {
            if let Some(sel) =
                crate::selectors::from_label_selector_object(p.pointer("/spec/selector"))?
                && sel.matches_object(&pod)
            {
                matching.push(p);
            }
        }
        if matching.len() > 1 {
            return Err(ApiError::internal(
                "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.",
            ));
        }
        if let Some(pdb) = matching.first() {
            let pdb_name = object::name(pdb).to_string();
            let pod_name = name.to_string();
            state
                .registry
                .modify(pdbres, ns, &pdb_name, opts.dry_run, |old| {
                    let blocked = |why: String| {
                        let mut e = ApiError::new(429, "TooManyRequests", "Cannot evict pod as it would violate the pod's disruption budget.");
                        e.details.causes = vec![crate::status::Cause::new("DisruptionBudget", "", why)];
                        e.details.retry_after = Some(10);
                        e
                    };
                    let generation = old.pointer("/metadata/generation").and_then(Value::as_i64).unwrap_or(0);
                    let observed = old.pointer("/status/observedGeneration").and_then(Value::as_i64).unwrap_or(-1);
                    if observed < generation {
                        return Err(blocked(format!("The disruption budget {pdb_name} is still being processed by the server.")));
                    }
                    let allowed = old.pointer("/status/disruptionsAllowed").and_then(Value::as_i64).unwrap_or(0);
                    if allowed <= 0 {
                        let desired = old.pointer("/status/desiredHealthy").and_then(Value::as_i64).unwrap_or(0);
                        let current = old.pointer("/status/currentHealthy").and_then(Value::as_i64).unwrap_or(0);
                        return Err(blocked(format!("The disruption budget {pdb_name} needs {desired} healthy pods and has {current} currently")));
                    }
                    let mut o = object::without_rv(old);
                    o["status"]["disruptionsAllowed"] = json!(allowed - 1);
                    if !o["status"]["disruptedPods"].is_object() {
                        o["status"]["disruptedPods"] = json!({});
                    }
                    o["status"]["disruptedPods"][&pod_name] = json!(object::now_rfc3339());
                    Ok(o)
                })
                .await?;
        }
    }
    state.registry.delete(res, ns, name, &opts).await?;
    Ok(render(
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
        Output::Json,
        StatusCode::CREATED,
    ))
}

/// The kubelet API address of the node a pod runs on.
async fn kubelet_of(state: &ApiState, pod: &Value, name: &str) -> ApiResult<(String, u16)> {
    let node_name = pod["spec"]["nodeName"].as_str().unwrap_or("");
    if node_name.is_empty() {
        return Err(ApiError::bad_request(format!(
            "pod {name} does not have a host assigned"
        )));
    }
    let nodes = resources::find("", "v1", "nodes").expect("nodes resource");
    let node = state.registry.get(nodes, "", node_name).await?;
    crate::kubelet::node_endpoint(&node)
        .ok_or_else(|| ApiError::internal(format!("node {node_name} has no address")))
}
