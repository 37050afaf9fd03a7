//! The request filter chain, one layer per concern as in kube-apiserver's
//! `DefaultBuildHandlerChain` (outermost first): panic recovery, request info, metrics, timeout,
//! authentication, max-in-flight, authorization. The security issue fills the authorization slot
//! (RBAC), and adds audit, priority and fairness and admission in theirs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::FutureExt;
use http::Request;
use tokio::sync::Semaphore;

use crate::metrics::{KindOfRequest, Metrics, RequestLabels};
use crate::request_info::{self, RequestInfo};
use crate::status::ApiError;

/// The identity a TLS client certificate carries, set per connection by the server.
#[derive(Debug, Clone, Default)]
pub struct PeerIdentity {
    /// Subject CommonName.
    pub common_name: Option<String>,
    /// Subject Organizations.
    pub organizations: Vec<String>,
    /// The certificate is an authenticating proxy's (`--requestheader-client-ca-file` and
    /// `--requestheader-allowed-names`).
    pub front_proxy: bool,
    /// A certificate was presented that names no user (a proxy's, or one of the proxy CA with
    /// a name not allowed): without other credentials the request is refused, never anonymous.
    pub unusable_certificate: bool,
    /// A client certificate was presented (and passed the handshake).
    pub certificate: bool,
}

/// An authenticated user, as `user.Info`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserInfo {
    /// User name.
    pub name: String,
    /// Groups.
    pub groups: Vec<String>,
    /// UID (empty when the authenticator has none).
    pub uid: String,
    /// Extra attributes.
    pub extra: std::collections::BTreeMap<String, Vec<String>>,
}

/// Settings of the chain.
pub struct ChainConfig {
    /// Timeout of non-long-running requests.
    pub request_timeout: Duration,
    /// The authenticators.
    pub authn: Arc<crate::authn::Authenticator>,
    /// Read-only in-flight limit (None = unlimited).
    pub readonly: Option<Arc<Semaphore>>,
    /// Mutating in-flight limit (None = unlimited).
    pub mutating: Option<Arc<Semaphore>>,
    /// Metrics.
    pub metrics: Metrics,
    /// The authorizers.
    pub authz: Arc<crate::authz::Authorizer>,
    /// Auditing, when a policy and a log are configured.
    pub audit: Option<crate::audit::Auditor>,
    /// API Priority and Fairness, which replaces the in-flight limits when on.
    pub apf: Option<Arc<crate::flowcontrol::Apf>>,
}

/// The request info the request-info layer attached (empty if it did not run).
fn request_info_of(req: &Request<Body>) -> RequestInfo {
    req.extensions()
        .get::<RequestInfo>()
        .cloned()
        .unwrap_or_default()
}

/// Panic recovery: a panic in any inner layer becomes a 500 `Status`, never a dropped connection.
pub async fn recover_panics(req: Request<Body>, next: Next) -> Response {
    let path = req.uri().path().to_string();
    match std::panic::AssertUnwindSafe(next.run(req))
        .catch_unwind()
        .await
    {
        Ok(r) => r,
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panic".into());
            tracing::error!(path = %path, panic = %msg, "handler panicked");
            ApiError::internal("an internal error occurred while serving this request")
                .into_response()
        }
    }
}

/// Request info: parses the path once into a [`RequestInfo`] extension.
pub async fn with_request_info(mut req: Request<Body>, next: Next) -> Response {
    let info = request_info::parse(req.method(), req.uri().path(), req.uri().query());
    req.extensions_mut().insert(info);
    next.run(req).await
}

/// The `scope` label as kube-apiserver reports it: a create is about one object, like a request
/// that names one.
fn scope(info: &RequestInfo) -> &'static str {
    if !info.is_resource_request {
        ""
    } else if !info.name.is_empty() || info.verb == "create" {
        "resource"
    } else if !info.namespace.is_empty() {
        "namespace"
    } else {
        "cluster"
    }
}

/// The `verb` label as kube-apiserver reports it: the REST action (`POST`, `PUT`, `PATCH`,
/// `DELETE` (of one object or a collection), `GET`, `LIST`, `WATCH`), `APPLY` for server-side
/// apply, `CONNECT` for exec, attach, port-forward and proxy, and the HTTP method outside
/// resources.
fn metric_verb(info: &RequestInfo, req: &Request<Body>) -> String {
    if !info.is_resource_request {
        return req.method().as_str().to_string();
    }
    if matches!(
        info.subresource.as_str(),
        "exec" | "attach" | "portforward" | "proxy"
    ) {
        return "CONNECT".into();
    }
    let apply = || {
        req.headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/apply-patch"))
    };
    match info.verb.as_str() {
        "create" => "POST".into(),
        "update" => "PUT".into(),
        "patch" if apply() => "APPLY".into(),
        "deletecollection" => "DELETE".into(),
        v => v.to_ascii_uppercase(),
    }
}

/// Metrics: `apiserver_request_total`, `apiserver_request_duration_seconds` and
/// `apiserver_request_sli_duration_seconds` per request.
pub async fn with_metrics(
    State(cfg): State<Arc<ChainConfig>>,
    req: Request<Body>,
    next: Next,
) -> Response {
    let info = request_info_of(&req);
    let verb = metric_verb(&info, &req);
    let start = Instant::now();
    let (resp, tracked) = crate::metrics::tracking(next.run(req)).await;
    let mut labels = RequestLabels {
        verb,
        group: info.api_group.clone(),
        version: info.api_version.clone(),
        resource: info.resource.clone(),
        subresource: info.subresource.clone(),
        scope: scope(&info).into(),
        component: "apiserver".into(),
        code: String::new(),
    };
    // Requests flow control refused are counted, not timed (as upstream).
    if !info.is_long_running() && !tracked.dropped {
        let d = crate::metrics::DurationLabels::from(&labels);
        let took = start.elapsed();
        cfg.metrics
            .durations
            .get_or_create(&d)
            .observe(took.as_secs_f64());
        cfg.metrics
            .sli_durations
            .get_or_create(&d)
            .observe(took.saturating_sub(tracked.excluded).as_secs_f64());
    }
    labels.code = resp.status().as_u16().to_string();
    cfg.metrics.requests.get_or_create(&labels).inc();
    resp
}

/// Timeout: non-long-running requests end with 504 after `--request-timeout`.
pub async fn with_timeout(
    State(cfg): State<Arc<ChainConfig>>,
    req: Request<Body>,
    next: Next,
) -> Response {
    let long = req
        .extensions()
        .get::<RequestInfo>()
        .is_some_and(RequestInfo::is_long_running);
    if long || cfg.request_timeout.is_zero() {
        return next.run(req).await;
    }
    match tokio::time::timeout(cfg.request_timeout, next.run(req)).await {
        Ok(r) => r,
        Err(_) => ApiError::timeout(
            "request did not complete within requested timeout - context deadline exceeded",
        )
        .into_response(),
    }
}

/// Authentication: the authenticators of [`crate::authn`]; 401 when none accepts the request.
pub async fn authenticate(
    State(cfg): State<Arc<ChainConfig>>,
    mut req: Request<Body>,
    next: Next,
) -> Response {
    let peer = req
        .extensions()
        .get::<PeerIdentity>()
        .cloned()
        .unwrap_or_default();
    match cfg.authn.authenticate(&peer, req.headers_mut()).await {
        Ok(user) => {
            req.extensions_mut().insert(user);
            next.run(req).await
        }
        Err(e) => {
            tracing::debug!(reason = %e.0, "unauthenticated request");
            // (The authenticators take credentials out of the headers only when they accept.)
            if let Some(auditor) = cfg.audit.as_ref() {
                let tried = attempted(&peer, &req);
                crate::audit::failed_authentication(auditor, req, &tried).await;
            }
            ApiError::unauthorized().into_response()
        }
    }
}

/// What a request offered to authenticate with, as kube-apiserver's audit of a failed
/// authentication words it.
fn attempted(peer: &PeerIdentity, req: &Request<Body>) -> String {
    let mut tried = Vec::new();
    let authorization = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .trim();
    let (scheme, rest) = authorization.split_once(' ').unwrap_or((authorization, ""));
    let basic = scheme.eq_ignore_ascii_case("basic")
        && base64::Engine::decode(&base64::engine::general_purpose::STANDARD, rest)
            .is_ok_and(|d| d.contains(&b':'));
    if basic {
        tried.push("basic");
    }
    if scheme.eq_ignore_ascii_case("bearer") && !rest.is_empty() {
        tried.push("bearer");
    }
    // The first value, as Go's `Query().Get`.
    let access_token = form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
        .find(|(k, _)| k == "access_token")
        .is_some_and(|(_, v)| !v.trim().is_empty());
    if access_token {
        tried.push("access_token");
    }
    if peer.certificate {
        tried.push("x509");
    }
    if tried.is_empty() {
        "Authentication failed, no credentials provided".into()
    } else {
        format!("Authentication failed, attempted: {}", tried.join(", "))
    }
}

/// Flow control: API Priority and Fairness when it is on ([`crate::flowcontrol`]), else the
/// max-in-flight limits.
pub async fn flow_control(
    State(cfg): State<Arc<ChainConfig>>,
    req: Request<Body>,
    next: Next,
) -> Response {
    let Some(apf) = cfg.apf.clone() else {
        return max_in_flight(State(cfg), req, next).await;
    };
    let info = request_info_of(&req);
    // Long-running requests other than watches are not flow-controlled, as upstream.
    if info.is_long_running() && info.verb != "watch" {
        return next.run(req).await;
    }
    let user = req
        .extensions()
        .get::<UserInfo>()
        .cloned()
        .unwrap_or_default();
    let method = req.method().as_str().to_ascii_lowercase();
    let query = req.uri().query().map(str::to_string);
    let r = crate::flowcontrol::Request {
        info: &info,
        user: &user,
        method: &method,
    };
    apf.handle(r, query.as_deref(), || next.run(req)).await
}

/// Max-in-flight: separate limits for read-only and mutating requests; long-running requests are
/// exempt; over the limit is 429 with Retry-After.
pub async fn max_in_flight(
    State(cfg): State<Arc<ChainConfig>>,
    req: Request<Body>,
    next: Next,
) -> Response {
    let info = request_info_of(&req);
    if info.is_long_running() {
        return next.run(req).await;
    }
    let (sem, kind) = if info.is_mutating() {
        (&cfg.mutating, "mutating")
    } else {
        (&cfg.readonly, "readOnly")
    };
    let Some(sem) = sem else {
        return next.run(req).await;
    };
    let labels = KindOfRequest {
        request_kind: kind.into(),
    };
    match sem.clone().try_acquire_owned() {
        Ok(permit) => {
            let g = cfg.metrics.inflight.get_or_create(&labels).clone();
            g.inc();
            let r = next.run(req).await;
            g.dec();
            drop(permit);
            r
        }
        Err(_) => {
            cfg.metrics.dropped.get_or_create(&labels).inc();
            crate::metrics::mark_dropped();
            ApiError::too_many_requests().into_response()
        }
    }
}

/// Impersonation: `Impersonate-User`, `Impersonate-Uid`, `Impersonate-Group` and
/// `Impersonate-Extra-<key>` make the request act as another user, when the requester may
/// `impersonate` each of them (users, uids, groups, service accounts, user extras).
pub async fn impersonate(
    State(cfg): State<Arc<ChainConfig>>,
    mut req: Request<Body>,
    next: Next,
) -> Response {
    match impersonated(
        &cfg.authz,
        req.headers(),
        req.extensions().get::<UserInfo>(),
    )
    .await
    {
        Ok(None) => {}
        Ok(Some(user)) => {
            if let Some(a) = crate::audit::context(&req) {
                a.impersonating(&user);
            }
            for h in IMPERSONATION_HEADERS {
                req.headers_mut().remove(*h);
            }
            let extras: Vec<http::HeaderName> = req
                .headers()
                .keys()
                .filter(|k| k.as_str().starts_with(EXTRA_PREFIX))
                .cloned()
                .collect();
            for k in extras {
                req.headers_mut().remove(k);
            }
            req.extensions_mut().insert(user);
        }
        Err(e) => return e.into_response(),
    }
    next.run(req).await
}

const IMPERSONATION_HEADERS: &[&str] =
    &["impersonate-user", "impersonate-uid", "impersonate-group"];
const EXTRA_PREFIX: &str = "impersonate-extra-";

/// The user the request impersonates, if it does, each part checked with the `impersonate` verb.
async fn impersonated(
    authz: &crate::authz::Authorizer,
    headers: &http::HeaderMap,
    requester: Option<&UserInfo>,
) -> Result<Option<UserInfo>, ApiError> {
    let values = |name: &str| -> Vec<String> {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_string))
            .collect()
    };
    let user = values("impersonate-user");
    let uid = values("impersonate-uid");
    let groups = values("impersonate-group");
    let mut extra: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for (k, v) in headers {
        if let Some(key) = k.as_str().strip_prefix(EXTRA_PREFIX) {
            let key = percent_encoding::percent_decode_str(key)
                .decode_utf8_lossy()
                .into_owned();
            if let Ok(v) = v.to_str() {
                extra.entry(key).or_default().push(v.to_string());
            }
        }
    }
    if user.is_empty() && uid.is_empty() && groups.is_empty() && extra.is_empty() {
        return Ok(None);
    }
    let Some(requester) = requester else {
        return Err(ApiError::unauthorized());
    };
    let [name] = user.as_slice() else {
        return Err(ApiError::bad_request(if user.is_empty() {
            "requested impersonation of groups, a uid or extras without impersonating a user"
                .to_string()
        } else {
            "only one Impersonate-User header is allowed".to_string()
        }));
    };
    if uid.len() > 1 {
        return Err(ApiError::bad_request(
            "only one Impersonate-Uid header is allowed",
        ));
    }
    use crate::authz::Attributes as A;
    match name
        .strip_prefix("system:serviceaccount:")
        .and_then(|r| r.split_once(':'))
    {
        Some((ns, sa)) => {
            authz
                .check(&A::resource(
                    requester,
                    "impersonate",
                    ns,
                    "",
                    "serviceaccounts",
                    "",
                    sa,
                ))
                .await?
        }
        None => {
            authz
                .check(&A::resource(
                    requester,
                    "impersonate",
                    "",
                    "",
                    "users",
                    "",
                    name,
                ))
                .await?
        }
    }
    for g in &groups {
        authz
            .check(&A::resource(
                requester,
                "impersonate",
                "",
                "",
                "groups",
                "",
                g,
            ))
            .await?;
    }
    for u in &uid {
        authz
            .check(&A::resource(
                requester,
                "impersonate",
                "",
                "authentication.k8s.io",
                "uids",
                "",
                u,
            ))
            .await?;
    }
    for (k, vs) in &extra {
        for v in vs {
            authz
                .check(&A::resource(
                    requester,
                    "impersonate",
                    "",
                    "authentication.k8s.io",
                    "userextras",
                    k,
                    v,
                ))
                .await?;
        }
    }
    // As upstream: a service account without groups given gets its account groups; anyone
    // but anonymous is authenticated unless `system:unauthenticated` was asked for; anonymous
    // is unauthenticated.
    let mut all_groups = groups;
    if all_groups.is_empty()
        && let Some((ns, _)) = name
            .strip_prefix("system:serviceaccount:")
            .and_then(|r| r.split_once(':'))
    {
        all_groups = vec![
            "system:serviceaccounts".to_string(),
            format!("system:serviceaccounts:{ns}"),
        ];
    }
    let has = |g: &str, gs: &[String]| gs.iter().any(|x| x == g);
    if name == "system:anonymous" {
        if !has("system:unauthenticated", &all_groups) {
            all_groups.push("system:unauthenticated".into());
        }
    } else if !has("system:authenticated", &all_groups)
        && !has("system:unauthenticated", &all_groups)
    {
        all_groups.push("system:authenticated".into());
    }
    Ok(Some(UserInfo {
        name: name.clone(),
        groups: all_groups,
        uid: uid.into_iter().next().unwrap_or_default(),
        extra,
    }))
}

/// Authorization: the request's user, verb and resource go to the authorizers of
/// `--authorization-mode`; anything not allowed is 403 with upstream's message.
pub async fn authorize(
    State(cfg): State<Arc<ChainConfig>>,
    req: Request<Body>,
    next: Next,
) -> Response {
    let Some(user) = req.extensions().get::<UserInfo>() else {
        return ApiError::forbidden("no user on the request").into_response();
    };
    let info = request_info_of(&req);
    let attrs = crate::authz::Attributes::of(user, &info);
    let mut decision = cfg.authz.authorize(&attrs).await;
    // A WebSocket exec, attach or port-forward is a GET, and needs `create` as well, as its SPDY
    // form (a POST) does: upstream's AuthorizePodWebsocketUpgradeCreatePermission, on by default
    // since 1.30.
    let connect_get = info.verb == "get"
        && info.api_group.is_empty()
        && info.resource == "pods"
        && matches!(info.subresource.as_str(), "exec" | "attach" | "portforward");
    let create = crate::authz::Attributes {
        verb: "create",
        ..attrs
    };
    // A refusal names the verb refused.
    let ask_create = connect_get && matches!(decision, crate::authz::Decision::Allow(_));
    if ask_create {
        decision = cfg.authz.authorize(&create).await;
    }
    let attrs = if ask_create { create } else { attrs };
    if let Some(a) = crate::audit::context(&req) {
        let (d, reason) = match &decision {
            crate::authz::Decision::Allow(r) => ("allow", r),
            crate::authz::Decision::Deny(r)
            | crate::authz::Decision::NoOpinion(r)
            | crate::authz::Decision::Error(r) => ("forbid", r),
        };
        a.annotate("authorization.k8s.io/decision", d);
        a.annotate("authorization.k8s.io/reason", reason);
    }
    match decision {
        crate::authz::Decision::Allow(_) => next.run(req).await,
        crate::authz::Decision::Deny(r) | crate::authz::Decision::NoOpinion(r) => {
            attrs.forbidden(&r).into_response()
        }
        crate::authz::Decision::Error(e) => ApiError::internal(e).into_response(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn metric_labels_are_upstreams() {
        let cases = [
            ("POST", "/api/v1/namespaces/a/pods", "", "POST", "resource"),
            ("PUT", "/api/v1/namespaces/a/pods/p", "", "PUT", "resource"),
            ("PATCH", "/api/v1/nodes/n/status", "", "PATCH", "resource"),
            (
                "PATCH",
                "/api/v1/namespaces/a/configmaps/c",
                "application/apply-patch+yaml",
                "APPLY",
                "resource",
            ),
            (
                "DELETE",
                "/api/v1/namespaces/a/pods",
                "",
                "DELETE",
                "namespace",
            ),
            ("GET", "/api/v1/pods", "", "LIST", "cluster"),
            ("GET", "/api/v1/namespaces/a/pods", "", "LIST", "namespace"),
            ("GET", "/api/v1/namespaces/a/pods/p", "", "GET", "resource"),
            (
                "GET",
                "/api/v1/namespaces/a/pods/p/exec",
                "",
                "CONNECT",
                "resource",
            ),
            ("GET", "/healthz", "", "GET", ""),
        ];
        for (method, path, content_type, verb, scope) in cases {
            let mut req = http::Request::builder().method(method).uri(path);
            if !content_type.is_empty() {
                req = req.header(http::header::CONTENT_TYPE, content_type);
            }
            let req = req.body(axum::body::Body::empty()).unwrap();
            let info = crate::request_info::parse(req.method(), path, None);
            assert_eq!(super::metric_verb(&info, &req), verb, "{method} {path}");
            assert_eq!(super::scope(&info), scope, "{method} {path}");
        }
    }

    use super::*;
    use axum::Router;
    use axum::middleware::{from_fn, from_fn_with_state};
    use tower::ServiceExt;

    /// The chain around a handler that reports its entry on `entered`, then blocks until the gate
    /// opens; limits of one request of each kind.
    fn app(
        gate: Arc<tokio::sync::Notify>,
        entered: tokio::sync::mpsc::UnboundedSender<()>,
        timeout: Duration,
        anonymous: bool,
    ) -> Router {
        let cfg = Arc::new(ChainConfig {
            request_timeout: timeout,
            authn: Arc::new(crate::authn::Authenticator::certificates_only(anonymous)),
            readonly: Some(Arc::new(Semaphore::new(1))),
            mutating: Some(Arc::new(Semaphore::new(1))),
            metrics: Metrics::new(),
            authz: Arc::new(crate::authz::Authorizer::new(
                vec![crate::authz::Mode::AlwaysAllow],
                None,
                None,
            )),
            audit: None,
            apf: None,
        });
        let handler = move || {
            let gate = gate.clone();
            let entered = entered.clone();
            async move {
                let open = gate.notified();
                let _ = entered.send(());
                open.await;
                "done"
            }
        };
        Router::new()
            .fallback(handler)
            .layer(from_fn_with_state(cfg.clone(), authorize))
            .layer(from_fn_with_state(cfg.clone(), max_in_flight))
            .layer(from_fn_with_state(cfg.clone(), authenticate))
            .layer(from_fn_with_state(cfg.clone(), with_timeout))
            .layer(from_fn(with_request_info))
            .layer(from_fn(recover_panics))
    }

    fn get(path: &str) -> Request<Body> {
        Request::get(path).body(Body::empty()).unwrap()
    }

    #[test]
    fn a_failed_authentication_names_what_was_tried_as_upstream() {
        let with = |auth: &str, path: &str| {
            let mut r = get(path);
            if !auth.is_empty() {
                r.headers_mut()
                    .insert(http::header::AUTHORIZATION, auth.parse().unwrap());
            }
            r
        };
        let none = PeerIdentity::default();
        // (No CommonName: a certificate that names no user is tried all the same.)
        let cert = PeerIdentity {
            certificate: true,
            ..Default::default()
        };
        let cases = [
            (
                "",
                "/api",
                &none,
                "Authentication failed, no credentials provided",
            ),
            (
                "Bearer x",
                "/api",
                &none,
                "Authentication failed, attempted: bearer",
            ),
            (
                "bearer x",
                "/api",
                &cert,
                "Authentication failed, attempted: bearer, x509",
            ),
            // "alice:pw"
            (
                "Basic YWxpY2U6cHc=",
                "/api",
                &none,
                "Authentication failed, attempted: basic",
            ),
            (
                "Basic not-base64!",
                "/api",
                &none,
                "Authentication failed, no credentials provided",
            ),
            (
                "Bearer",
                "/api",
                &none,
                "Authentication failed, no credentials provided",
            ),
            (
                "",
                "/api?access_token=t",
                &none,
                "Authentication failed, attempted: access_token",
            ),
            (
                "",
                "/api?access_token=&access_token=t",
                &none,
                "Authentication failed, no credentials provided",
            ),
            ("", "/api", &cert, "Authentication failed, attempted: x509"),
        ];
        for (auth, path, peer, want) in cases {
            assert_eq!(attempted(peer, &with(auth, path)), want, "{auth:?} {path}");
        }
    }

    #[tokio::test]
    async fn a_panicking_handler_is_a_500_status_and_the_server_goes_on() {
        let app = Router::new()
            .route(
                "/boom",
                axum::routing::get(|| async {
                    if std::hint::black_box(true) {
                        panic!("handler bug");
                    }
                    "unreachable"
                }),
            )
            .route("/fine", axum::routing::get(|| async { "fine" }))
            .layer(from_fn(recover_panics));
        let r = app.clone().oneshot(get("/boom")).await.unwrap();
        assert_eq!(r.status(), 500);
        let body = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
        let status: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            (status["kind"].as_str(), status["reason"].as_str()),
            (Some("Status"), Some("InternalError"))
        );
        assert!(
            !status["message"].as_str().unwrap().contains("handler bug"),
            "{status}"
        );
        let r = app.oneshot(get("/fine")).await.unwrap();
        assert_eq!(r.status(), 200);
    }

    #[tokio::test]
    async fn over_the_in_flight_limit_is_429_and_watches_are_exempt() {
        let gate = Arc::new(tokio::sync::Notify::new());
        let (tx, mut entered) = tokio::sync::mpsc::unbounded_channel();
        let app = app(gate.clone(), tx, Duration::from_secs(30), true);
        let first = tokio::spawn(app.clone().oneshot(get("/api/v1/namespaces/d/pods")));
        entered.recv().await.unwrap();
        let second = app
            .clone()
            .oneshot(get("/api/v1/namespaces/d/pods"))
            .await
            .unwrap();
        assert_eq!(second.status(), 429);
        assert_eq!(second.headers()["retry-after"], "1");
        // Mutating requests have their own limit; watches are long-running and not limited.
        let post = tokio::spawn(
            app.clone().oneshot(
                Request::post("/api/v1/namespaces/d/pods")
                    .body(Body::empty())
                    .unwrap(),
            ),
        );
        let watch = tokio::spawn(
            app.clone()
                .oneshot(get("/api/v1/namespaces/d/pods?watch=true")),
        );
        // Both reach the handler although the read-only limit is taken.
        entered.recv().await.unwrap();
        entered.recv().await.unwrap();
        gate.notify_waiters();
        assert_eq!(first.await.unwrap().unwrap().status(), 200);
        assert_eq!(post.await.unwrap().unwrap().status(), 200);
        assert_eq!(watch.await.unwrap().unwrap().status(), 200);
    }

    #[tokio::test]
    async fn impersonated_groups_follow_upstream() {
        let authz =
            crate::authz::Authorizer::new(vec![crate::authz::Mode::AlwaysAllow], None, None);
        let admin = UserInfo {
            name: "admin".into(),
            ..Default::default()
        };
        let as_user = async |user: &str, groups: &[&str]| {
            let mut h = http::HeaderMap::new();
            h.insert("impersonate-user", user.parse().unwrap());
            for g in groups {
                h.append("impersonate-group", g.parse().unwrap());
            }
            impersonated(&authz, &h, Some(&admin))
                .await
                .unwrap()
                .unwrap()
                .groups
        };
        assert_eq!(
            as_user("system:serviceaccount:ns:sa", &[]).await,
            [
                "system:serviceaccounts",
                "system:serviceaccounts:ns",
                "system:authenticated"
            ]
        );
        assert_eq!(
            as_user("system:serviceaccount:ns:sa", &["g"]).await,
            ["g", "system:authenticated"]
        );
        assert_eq!(
            as_user("system:anonymous", &[]).await,
            ["system:unauthenticated"]
        );
        assert_eq!(
            as_user("bob", &["system:unauthenticated"]).await,
            ["system:unauthenticated"]
        );
        let mut h = http::HeaderMap::new();
        h.insert("impersonate-group", "g".parse().unwrap());
        assert_eq!(
            impersonated(&authz, &h, Some(&admin))
                .await
                .unwrap_err()
                .code,
            400
        );
    }

    #[tokio::test]
    async fn slow_requests_time_out_and_anonymous_can_be_refused() {
        let gate = Arc::new(tokio::sync::Notify::new());
        let (tx, _entered) = tokio::sync::mpsc::unbounded_channel();
        let slow = app(gate.clone(), tx.clone(), Duration::from_millis(100), true)
            .oneshot(get("/api/v1/pods"))
            .await
            .unwrap();
        assert_eq!(slow.status(), 504);
        let anon = app(gate, tx, Duration::from_secs(1), false)
            .oneshot(get("/api/v1/pods"))
            .await
            .unwrap();
        assert_eq!(anon.status(), 401);
    }
}
