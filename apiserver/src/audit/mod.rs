//! Auditing, as kube-apiserver's: the policy gives each request a level, and the audit filter
//! (after authentication, before impersonation and authorization) records `audit.k8s.io/v1`
//! `Event`s at its stages: RequestReceived, ResponseStarted (long-running requests),
//! ResponseComplete. Metadata events carry who did what to which object and the outcome;
//! Request adds the request body, RequestResponse the response body too. Authorization adds its
//! decision as annotations; impersonation its user.

pub mod log;
pub mod policy;
pub mod webhook;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use http::Request;
use http_body_util::BodyExt;
use parking_lot::Mutex;
use serde_json::{Value, json};

use crate::filters::{ChainConfig, UserInfo};
use crate::request_info::RequestInfo;
use crate::status::ApiError;
use policy::{Level, Policy, Stage};

/// The policy and where events go.
pub struct Auditor {
    /// The policy.
    pub policy: Policy,
    /// The log (`--audit-log-path`).
    pub log: Option<log::LogBackend>,
    /// The webhook (`--audit-webhook-config-file`).
    pub webhook: Option<webhook::WebhookBackend>,
}

impl Auditor {
    /// Hands an event to every backend; an error when a `blocking-strict` webhook failed.
    pub async fn write(&self, event: &Value) -> Result<(), String> {
        if let Some(l) = &self.log {
            l.write(event);
        }
        match &self.webhook {
            Some(w) => w.write(event).await,
            None => Ok(()),
        }
    }
}

/// The client's address, set per connection by the server.
#[derive(Debug, Clone, Copy)]
pub struct RemoteAddr(pub std::net::SocketAddr);

/// What later filters add to a request's event.
#[derive(Debug, Default)]
pub struct AuditContext {
    annotations: Mutex<Vec<(String, String)>>,
    impersonated: Mutex<Option<UserInfo>>,
}

impl AuditContext {
    /// Adds an annotation (`authorization.k8s.io/decision`, ...); a key set already keeps its
    /// first value, as upstream's audit context keeps it.
    pub fn annotate(&self, key: &str, value: &str) {
        let mut annotations = self.annotations.lock();
        if !annotations.iter().any(|(k, _)| k == key) {
            annotations.push((key.into(), value.into()));
        }
    }

    /// Records the user the request acts as.
    pub fn impersonating(&self, user: &UserInfo) {
        *self.impersonated.lock() = Some(user.clone());
    }
}

fn user_json(u: &UserInfo) -> Value {
    let mut v = json!({"username": u.name, "groups": u.groups});
    if !u.uid.is_empty() {
        v["uid"] = json!(u.uid);
    }
    if !u.extra.is_empty() {
        v["extra"] = json!(u.extra);
    }
    v
}

fn micro_now() -> String {
    format!("{:.6}", jiff::Timestamp::now())
}

fn without_managed_fields(mut v: Value, omit: bool) -> Value {
    if omit && let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("managedFields");
    }
    v
}

/// A request or response body as an event carries it: JSON as is, protobuf decoded, anything
/// else left out.
fn body_object(content_type: &str, bytes: &[u8]) -> Option<Value> {
    if bytes.is_empty() {
        return None;
    }
    if content_type.starts_with("application/vnd.kubernetes.protobuf") {
        return crate::protobuf::decode(bytes).ok();
    }
    if content_type.contains("yaml") {
        return serde_yaml::from_slice(bytes).ok();
    }
    serde_json::from_slice(bytes).ok()
}

fn content_type(h: &http::HeaderMap) -> String {
    h.get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

/// The fields every event of `req` has, before its stage and response.
fn new_event(level: Level, req: &Request<Body>, info: &RequestInfo, user: Value) -> Value {
    let id = req
        .headers()
        .get("audit-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let uri = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let mut event = json!({
        "kind": "Event",
        "apiVersion": "audit.k8s.io/v1",
        "level": level.as_str(),
        "auditID": id,
        "requestURI": uri,
        "verb": info.verb,
        "user": user,
        "sourceIPs": req.extensions().get::<RemoteAddr>().map(|a| vec![a.0.ip().to_string()]).unwrap_or_default(),
        "requestReceivedTimestamp": micro_now(),
    });
    if let Some(ua) = req
        .headers()
        .get(http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
    {
        event["userAgent"] = json!(ua);
    }
    if info.is_resource_request {
        let mut o = serde_json::Map::new();
        for (k, v) in [
            ("resource", &info.resource),
            ("namespace", &info.namespace),
            ("name", &info.name),
            ("apiGroup", &info.api_group),
            ("apiVersion", &info.api_version),
            ("subresource", &info.subresource),
        ] {
            if !v.is_empty() {
                o.insert(k.into(), json!(v));
            }
        }
        event["objectRef"] = Value::Object(o);
    }
    event
}

/// Audits a request that no authenticator accepted, as kube-apiserver's failed-authentication
/// audit does: one ResponseStarted event at the level the policy gives the request without a
/// user, naming no user, with the 401 and what the request tried (`tried`: upstream's message,
/// "Authentication failed, attempted: bearer" or "... no credentials provided").
pub async fn failed_authentication(auditor: &Auditor, req: Request<Body>, tried: &str) {
    let Some(info) = req.extensions().get::<RequestInfo>() else {
        return;
    };
    let decision = auditor.policy.decide(&UserInfo::default(), info);
    if decision.level == Level::None || decision.omit_stages.contains(&Stage::ResponseStarted) {
        return;
    }
    let mut event = new_event(decision.level, &req, info, json!({}));
    event["responseStatus"] = json!({"metadata": {}, "message": tried, "code": 401});
    event["stage"] = json!(Stage::ResponseStarted.as_str());
    event["stageTimestamp"] = json!(micro_now());
    let _ = auditor.write(&event).await;
}

/// The audit filter.
pub async fn audit(
    State(cfg): State<Arc<ChainConfig>>,
    req: Request<Body>,
    next: Next,
) -> Response {
    let Some(auditor) = cfg.audit.as_ref() else {
        return next.run(req).await;
    };
    let (Some(user), Some(info)) = (
        req.extensions().get::<UserInfo>().cloned(),
        req.extensions().get::<RequestInfo>().cloned(),
    ) else {
        return next.run(req).await;
    };
    let decision = auditor.policy.decide(&user, &info);
    if decision.level == Level::None {
        return next.run(req).await;
    }
    // Stamps the event with its stage and writes it (the event is reused for later stages).
    let emit = async |stage: Stage, event: &mut Value| -> Result<(), String> {
        if decision.omit_stages.contains(&stage) {
            return Ok(());
        }
        event["stage"] = json!(stage.as_str());
        event["stageTimestamp"] = json!(micro_now());
        auditor.write(event).await
    };
    let mut event = new_event(decision.level, &req, &info, user_json(&user));
    // The request body, for Request and above (upstream records it for writes).
    let (parts, body) = req.into_parts();
    let req = if decision.level >= Level::Request && info.is_mutating() {
        let bytes = match http_body_util::Limited::new(body, crate::handlers::MAX_BODY)
            .collect()
            .await
        {
            Ok(c) => c.to_bytes(),
            Err(_) => {
                return ApiError::new(413, "RequestEntityTooLarge", "the request is too large")
                    .into_response();
            }
        };
        if let Some(o) = body_object(&content_type(&parts.headers), &bytes) {
            event["requestObject"] = without_managed_fields(o, decision.omit_managed_fields);
        }
        Request::from_parts(parts, Body::from(bytes))
    } else {
        Request::from_parts(parts, body)
    };
    // As upstream, a request whose first event cannot be stored (`blocking-strict`) fails.
    if emit(Stage::RequestReceived, &mut event).await.is_err() {
        return ApiError::internal("failed to store audit event").into_response();
    }
    let ctx = Arc::new(AuditContext::default());
    let mut req = req;
    req.extensions_mut().insert(ctx.clone());
    let resp = next.run(req).await;
    let finish = {
        let ctx = ctx.clone();
        move |event: &mut Value, code: u16, status: Option<Value>| {
            let mut rs = json!({"metadata": {}, "code": code});
            if let Some(s) = status.filter(|s| s.get("kind") == Some(&json!("Status"))) {
                for k in ["status", "message", "reason", "details"] {
                    if let Some(v) = s.get(k) {
                        rs[k] = v.clone();
                    }
                }
            }
            event["responseStatus"] = rs;
            let ann: serde_json::Map<String, Value> = ctx
                .annotations
                .lock()
                .iter()
                .map(|(k, v)| (k.clone(), json!(v)))
                .collect();
            if !ann.is_empty() {
                event["annotations"] = Value::Object(ann);
            }
            if let Some(u) = ctx.impersonated.lock().as_ref() {
                event["impersonatedUser"] = user_json(u);
            }
        }
    };
    let code = resp.status().as_u16();
    if info.is_long_running() && resp.status().is_success() {
        // Streams: ResponseStarted now, ResponseComplete when the stream ends.
        let mut started = event;
        finish(&mut started, code, None);
        let _ = emit(Stage::ResponseStarted, &mut started).await;
        let done = OnDrop(Some(Box::new({
            let cfg = cfg.clone();
            let omit = decision.omit_stages.contains(&Stage::ResponseComplete);
            move || {
                let mut e = started;
                e["stage"] = json!(Stage::ResponseComplete.as_str());
                e["stageTimestamp"] = json!(micro_now());
                // The stream has ended: nothing waits for the event any more.
                if let (false, Ok(rt)) = (omit, tokio::runtime::Handle::try_current()) {
                    rt.spawn(async move {
                        if let Some(a) = cfg.audit.as_ref() {
                            let _ = a.write(&e).await;
                        }
                    });
                }
            }
        })));
        let (parts, body) = resp.into_parts();
        let stream = body.into_data_stream().map(move |chunk| {
            let _keep = &done;
            chunk
        });
        return Response::from_parts(parts, Body::from_stream(stream));
    }
    // Other responses: small enough to read whole, for their Status or (RequestResponse)
    // their object.
    // A create names its object only in the body: the event's objectRef gets the name from
    // the created object, as upstream's does.
    let unnamed = info.is_resource_request && info.name.is_empty() && info.verb == "create";
    let wants_body = code >= 400 || decision.level == Level::RequestResponse || unnamed;
    if !wants_body || info.is_long_running() {
        finish(&mut event, code, None);
        let _ = emit(Stage::ResponseComplete, &mut event).await;
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let bytes = match body.collect().await {
        Ok(c) => c.to_bytes(),
        Err(_) => bytes::Bytes::new(),
    };
    let obj = body_object(&content_type(&parts.headers), &bytes);
    if unnamed
        && code < 400
        && let Some(name) = obj
            .as_ref()
            .and_then(|o| o.pointer("/metadata/name"))
            .and_then(Value::as_str)
    {
        event["objectRef"]["name"] = json!(name);
    }
    if decision.level == Level::RequestResponse
        && let Some(o) = obj.clone()
    {
        event["responseObject"] = without_managed_fields(o, decision.omit_managed_fields);
    }
    finish(&mut event, code, obj);
    let _ = emit(Stage::ResponseComplete, &mut event).await;
    Response::from_parts(parts, Body::from(bytes))
}

struct OnDrop(Option<Box<dyn FnOnce() + Send + Sync>>);

impl Drop for OnDrop {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f();
        }
    }
}

/// The audit context of a request, when it is audited.
pub fn context(req: &Request<Body>) -> Option<Arc<AuditContext>> {
    req.extensions().get::<Arc<AuditContext>>().cloned()
}
