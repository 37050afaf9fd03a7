use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};

use super::*;
use crate::resources::find;

fn rule(ops: &[&str], res: &[&str], scope: &str) -> Rule {
    Rule {
        operations: ops.iter().map(|s| s.to_string()).collect(),
        groups: vec!["*".into()],
        versions: vec!["*".into()],
        resources: res.iter().map(|s| s.to_string()).collect(),
        scope: scope.into(),
    }
}

#[test]
fn rules_match_resources_subresources_operations_and_scope() {
    let pods = find("", "v1", "pods").unwrap();
    let nodes = find("", "v1", "nodes").unwrap();
    let deps = find("apps", "v1", "deployments").unwrap();
    let c = Operation::Create;
    assert!(rule_matches(
        &rule(&["CREATE"], &["pods"], "*"),
        c,
        pods,
        ""
    ));
    assert!(!rule_matches(
        &rule(&["CREATE"], &["pods"], "*"),
        c,
        pods,
        "status"
    ));
    assert!(!rule_matches(
        &rule(&["UPDATE"], &["pods"], "*"),
        c,
        pods,
        ""
    ));
    assert!(rule_matches(
        &rule(&["*"], &["pods/status"], "*"),
        c,
        pods,
        "status"
    ));
    assert!(rule_matches(
        &rule(&["*"], &["pods/*"], "*"),
        c,
        pods,
        "binding"
    ));
    // As upstream, `pods/*` also covers the pods themselves.
    assert!(rule_matches(&rule(&["*"], &["pods/*"], "*"), c, pods, ""));
    assert!(rule_matches(&rule(&["*"], &["*"], "*"), c, deps, ""));
    assert!(!rule_matches(&rule(&["*"], &["*"], "*"), c, deps, "scale"));
    assert!(rule_matches(
        &rule(&["*"], &["*/scale"], "*"),
        c,
        deps,
        "scale"
    ));
    assert!(rule_matches(
        &rule(&["*"], &["*/*"], "*"),
        c,
        pods,
        "eviction"
    ));
    assert!(rule_matches(&rule(&["*"], &["*"], "Cluster"), c, nodes, ""));
    assert!(!rule_matches(&rule(&["*"], &["*"], "Cluster"), c, pods, ""));
    assert!(rule_matches(
        &rule(&["*"], &["*"], "Namespaced"),
        c,
        pods,
        ""
    ));
    let mut apps_only = rule(&["*"], &["*"], "*");
    apps_only.groups = vec!["apps".into()];
    assert!(rule_matches(&apps_only, c, deps, ""));
    assert!(!rule_matches(&apps_only, c, pods, ""));
}

fn causes_of(cfg: &Value, mutating: bool) -> Vec<String> {
    let mut v = cfg.clone();
    config::default(&mut v, mutating);
    let mut causes = Vec::new();
    config::validate(&v, mutating, &mut causes);
    causes
        .into_iter()
        .map(|c| format!("{}: {}", c.field, c.message))
        .collect()
}

fn webhook(name: &str, url: &str) -> Value {
    json!({"name": name, "clientConfig": {"url": url}, "sideEffects": "None",
        "admissionReviewVersions": ["v1"],
        "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}]})
}

#[test]
fn configurations_are_defaulted_and_validated_as_upstream() {
    let ok = json!({"metadata": {"name": "c"}, "webhooks": [webhook("a.example.com", "https://127.0.0.1:8443/m")]});
    assert!(
        causes_of(&ok, true).is_empty(),
        "{:?}",
        causes_of(&ok, true)
    );
    let mut d = ok.clone();
    config::default(&mut d, true);
    let h = &d["webhooks"][0];
    assert_eq!(h["failurePolicy"], "Fail");
    assert_eq!(h["matchPolicy"], "Equivalent");
    assert_eq!(h["timeoutSeconds"], 10);
    assert_eq!(h["reinvocationPolicy"], "Never");
    assert_eq!(h["namespaceSelector"], json!({}));
    assert_eq!(h["rules"][0]["scope"], "*");
    let mut v = ok.clone();
    config::default(&mut v, false);
    assert!(v["webhooks"][0].get("reinvocationPolicy").is_none());

    let bad = |f: &dyn Fn(&mut Value)| {
        let mut c = ok.clone();
        f(&mut c["webhooks"][0]);
        causes_of(&c, true).join("\n")
    };
    assert!(bad(&|h| h["name"] = json!("short.name")).contains("at least three segments"));
    assert!(
        bad(&|h| h["clientConfig"]["url"] = json!("http://x.y/z"))
            .contains("'https' is the only allowed URL scheme")
    );
    assert!(
        bad(&|h| h["clientConfig"]["url"] = json!("https://u@x.y/z")).contains("user information")
    );
    assert!(bad(&|h| h["clientConfig"]["url"] = json!("https://x.y/z?a=b")).contains("query"));
    assert!(
        bad(&|h| h["clientConfig"]["service"] = json!({"name": "s", "namespace": "n"}))
            .contains("exactly one of url or service")
    );
    assert!(bad(&|h| h["timeoutSeconds"] = json!(31)).contains("between 1 and 30"));
    assert!(
        bad(&|h| {
            h.as_object_mut().unwrap().remove("sideEffects");
        })
        .contains("webhooks[0].sideEffects: Required value")
    );
    assert!(
        bad(&|h| h["sideEffects"] = json!("Unknown")).contains("Unsupported value: \"Unknown\"")
    );
    assert!(
        bad(&|h| h["admissionReviewVersions"] = json!(["v2"]))
            .contains("must include at least one of v1, v1beta1")
    );
    assert!(
        bad(&|h| h["rules"][0]["operations"] = json!(["*", "CREATE"]))
            .contains("if '*' is present")
    );
    assert!(
        bad(&|h| h["rules"][0]["operations"] = json!(["PATCH"]))
            .contains("Unsupported value: \"PATCH\"")
    );
    assert!(bad(&|h| h["rules"][0]["resources"] = json!(["*/*", "pods"])).contains("'*/*'"));
    assert!(bad(&|h| h["failurePolicy"] = json!("Sometimes")).contains("failurePolicy"));
    assert!(
        bad(&|h| h["objectSelector"] =
            json!({"matchExpressions": [{"key": "a", "operator": "Near"}]}))
        .contains("objectSelector")
    );
    assert_eq!(
        bad(&|h| h["matchConditions"] =
            json!([{"name": "x", "expression": "request.operation == 'CREATE'"}])),
        ""
    );
    let m = bad(&|h| {
        h["matchConditions"] = json!([
            {"name": "x", "expression": "params.a"},
            {"name": "x", "expression": "true"}
        ])
    });
    assert!(
        m.contains("webhooks[0].matchConditions[0].expression: Invalid value: \"params.a\": compilation failed: ERROR: <input>:1:1: undeclared reference to 'params'"),
        "{m}"
    );
    assert!(
        m.contains("webhooks[0].matchConditions[1].name: Duplicate value: \"x\""),
        "{m}"
    );
    let mut dup = ok.clone();
    dup["webhooks"] = json!([
        webhook("a.example.com", "https://h/"),
        webhook("a.example.com", "https://h/")
    ]);
    assert!(
        causes_of(&dup, false)
            .join("\n")
            .contains("Duplicate value")
    );

    assert_eq!(
        config::parse_url("https://[::1]:9443/a/b").unwrap(),
        ("::1".to_string(), 9443, "/a/b".to_string())
    );
    assert_eq!(
        config::parse_url("https://hooks.example.com").unwrap(),
        ("hooks.example.com".to_string(), 443, "/".to_string())
    );
}

#[test]
fn answers_are_checked_and_denials_carry_the_webhooks_status() {
    let review = |r: Value| {
        serde_json::to_vec(
            &json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": r}),
        )
        .unwrap()
    };
    let ok = parse_answer(
        200,
        &review(json!({"uid": "u1", "allowed": true, "warnings": ["careful"]})),
        "u1",
        Kind::Validating,
    )
    .unwrap();
    assert!(ok.allowed);
    assert_eq!(ok.warnings, vec!["careful".to_string()]);
    let e = parse_answer(
        200,
        &review(json!({"uid": "u2", "allowed": true})),
        "u1",
        Kind::Validating,
    )
    .unwrap_err();
    assert!(
        e.contains("expected response.uid=\"u1\", got \"u2\""),
        "{e}"
    );
    let patch = base64::engine::general_purpose::STANDARD.encode("[]");
    let e = parse_answer(
        200,
        &review(json!({"uid": "u1", "allowed": true, "patch": patch})),
        "u1",
        Kind::Mutating,
    )
    .unwrap_err();
    assert!(e.contains("but not response.patchType"), "{e}");
    let e = parse_answer(
        200,
        &review(json!({"uid": "u1", "allowed": true, "patch": patch, "patchType": "JSONPatch"})),
        "u1",
        Kind::Validating,
    )
    .unwrap_err();
    assert!(
        e.contains("validating webhook may not return response.patch"),
        "{e}"
    );
    let e = parse_answer(200, br#"{"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview", "response": {"uid": "u1"}}"#, "u1", Kind::Mutating).unwrap_err();
    assert!(
        e.contains("expected webhook response of admission.k8s.io/v1"),
        "{e}"
    );
    let e = parse_answer(500, b"boom", "u1", Kind::Mutating).unwrap_err();
    assert!(e.contains("status 500"), "{e}");

    let d = denied(
        "v.example.com",
        Some(&json!({"code": 403, "reason": "Forbidden", "message": "no latest tags"})),
    );
    assert_eq!((d.code, d.reason), (403, "Forbidden"));
    assert_eq!(
        d.message,
        "admission webhook \"v.example.com\" denied the request: no latest tags"
    );
    let d = denied("v.example.com", None);
    assert_eq!(d.code, 400);
    assert_eq!(
        d.message,
        "admission webhook \"v.example.com\" denied the request without explanation"
    );
    let d = denied(
        "v.example.com",
        Some(&json!({"code": 200, "reason": "NotAllowedHere"})),
    );
    assert_eq!((d.code, d.reason), (400, ""));
    assert!(d.message.ends_with("denied the request: NotAllowedHere"));
}

/// A webhook server on 127.0.0.1 over TLS, answering with `answer(request) -> (delay, response)`.
struct Server {
    port: u16,
    ca_b64: String,
    calls: Arc<parking_lot::Mutex<Vec<Value>>>,
}

type Answerer = Arc<dyn Fn(&Value) -> (Duration, Value) + Send + Sync>;

async fn server(answer: Answerer) -> Server {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".into()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let calls = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let seen = calls.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, answer, seen) = (acceptor.clone(), answer.clone(), seen.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let (answer, seen) = (answer.clone(), seen.clone());
                        async move {
                            use http_body_util::BodyExt as _;
                            let path = req.uri().to_string();
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let mut review: Value = serde_json::from_slice(&body).unwrap();
                            review["path"] = json!(path);
                            seen.lock().push(review.clone());
                            let (delay, resp) = answer(&review);
                            tokio::time::sleep(delay).await;
                            Ok::<_, std::convert::Infallible>(http::Response::new(
                                http_body_util::Full::new(bytes::Bytes::from(
                                    serde_json::to_vec(&resp).unwrap(),
                                )),
                            ))
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    Server {
        port,
        ca_b64: base64::engine::general_purpose::STANDARD.encode(ca.pem()),
        calls,
    }
}

fn reply(review: &Value, allowed: bool, patch: Option<Value>, status: Option<Value>) -> Value {
    let mut r = json!({"uid": review["request"]["uid"], "allowed": allowed});
    if let Some(p) = patch {
        r["patchType"] = json!("JSONPatch");
        r["patch"] = json!(base64::engine::general_purpose::STANDARD.encode(p.to_string()));
    }
    if let Some(s) = status {
        r["status"] = s;
    }
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": r})
}

fn hooks(cfg: Value, kind: Kind) -> Vec<Hook> {
    let mut cfg = cfg;
    config::default(&mut cfg, kind == Kind::Mutating);
    let mut causes = Vec::new();
    config::validate(&cfg, kind == Kind::Mutating, &mut causes);
    assert!(causes.is_empty(), "{causes:?}");
    config::hooks_of(&cfg, kind)
}

fn hook_json(name: &str, s: &Server, path: &str, extra: Value) -> Value {
    let mut h = webhook(name, &format!("https://127.0.0.1:{}{path}", s.port));
    h["clientConfig"]["caBundle"] = json!(s.ca_b64);
    h["rules"][0]["operations"] = json!(["CREATE", "UPDATE", "DELETE"]);
    for (k, v) in extra.as_object().unwrap() {
        h[k] = v.clone();
    }
    h
}

fn user() -> UserInfo {
    UserInfo {
        name: "alice".into(),
        groups: vec!["devs".into()],
        uid: String::new(),
        extra: Default::default(),
    }
}

fn pod() -> Value {
    json!({"metadata": {"name": "p", "namespace": "default", "labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "nginx"}]}})
}

#[tokio::test]
async fn mutating_webhooks_patch_in_order_and_are_reinvoked_if_needed() {
    // First webhook: adds label first=yes (IfNeeded) and records what it saw. Second: sets
    // an annotation, which changes the object after the first ran, so the first runs again.
    let s = server(Arc::new(|r: &Value| {
        let obj = &r["request"]["object"];
        let patch = match r["path"].as_str().unwrap() {
            p if p.starts_with("/first") => {
                if obj["metadata"]["labels"]["first"].is_null() {
                    Some(json!([{"op": "add", "path": "/metadata/labels/first", "value": "yes"}]))
                } else {
                    None
                }
            }
            _ => Some(json!([{"op": "add", "path": "/metadata/annotations", "value": {"second": "done"}}])),
        };
        (Duration::ZERO, reply(r, true, patch, None))
    }))
    .await;
    let m = hooks(
        json!({"metadata": {"name": "m"}, "webhooks": [
            hook_json("first.example.com", &s, "/first", json!({"reinvocationPolicy": "IfNeeded"})),
            hook_json("second.example.com", &s, "/second", json!({})),
        ]}),
        Kind::Mutating,
    );
    let w = Webhooks::fixed(Source::fixed(m, Vec::new()));
    let pods = find("", "v1", "pods").unwrap();
    let call = w.call(pods, "", &user()).unwrap();
    let mut obj = pod();
    let changed = call
        .mutate(Operation::Create, "default", "p", None, &mut obj, false)
        .await
        .unwrap();
    assert!(changed);
    assert_eq!(obj["metadata"]["labels"]["first"], "yes");
    assert_eq!(obj["metadata"]["annotations"]["second"], "done");
    assert!(
        obj.get("kind").is_none(),
        "the object keeps its untyped form"
    );
    let calls = s.calls.lock().clone();
    let paths: Vec<&str> = calls
        .iter()
        .map(|c| c["path"].as_str().unwrap().split('?').next().unwrap())
        .collect();
    assert_eq!(paths, vec!["/first", "/second", "/first"]);
    let req = &calls[0]["request"];
    assert_eq!(req["operation"], "CREATE");
    assert_eq!(
        req["kind"],
        json!({"group": "", "version": "v1", "kind": "Pod"})
    );
    assert_eq!(
        req["resource"],
        json!({"group": "", "version": "v1", "resource": "pods"})
    );
    assert_eq!(req["userInfo"]["username"], "alice");
    assert_eq!(req["userInfo"]["groups"], json!(["devs"]));
    assert_eq!(req["namespace"], "default");
    assert_eq!(req["object"]["kind"], "Pod");
    assert_eq!(req["options"]["kind"], "CreateOptions");
    assert!(calls[0]["path"].as_str().unwrap().ends_with("?timeout=10s"));
    // The reinvocation saw the second webhook's annotation.
    assert_eq!(
        calls[2]["request"]["object"]["metadata"]["annotations"]["second"],
        "done"
    );
    // Each call has its own uid.
    assert_ne!(calls[0]["request"]["uid"], calls[2]["request"]["uid"]);
}

#[tokio::test]
async fn validating_webhooks_deny_with_status_and_failure_policy_decides_on_errors() {
    let s = server(Arc::new(|r: &Value| {
        let path = r["path"].as_str().unwrap().to_string();
        if path.starts_with("/slow") {
            return (Duration::from_secs(3), reply(r, true, None, None));
        }
        if path.starts_with("/garbage") {
            return (Duration::ZERO, json!({"not": "a review"}));
        }
        let image = r["request"]["object"]["spec"]["containers"][0]["image"]
            .as_str()
            .unwrap_or("")
            .to_string();
        if image.ends_with(":latest") || !image.contains(':') {
            (
                Duration::ZERO,
                reply(r, false, None, Some(json!({"code": 403, "reason": "Forbidden", "message": "images need a pinned tag"}))),
            )
        } else {
            (Duration::ZERO, reply(r, true, None, None))
        }
    }))
    .await;
    let pods = find("", "v1", "pods").unwrap();
    let validating = |extra: Vec<Value>| {
        let mut list = vec![hook_json("tags.example.com", &s, "/tags", json!({}))];
        list.extend(extra);
        Webhooks::fixed(Source::fixed(
            Vec::new(),
            hooks(
                json!({"metadata": {"name": "v"}, "webhooks": list}),
                Kind::Validating,
            ),
        ))
    };
    let w = validating(Vec::new());
    let call = w.call(pods, "", &user()).unwrap();
    let e = call
        .validate(Operation::Create, "default", "p", None, Some(&pod()), false)
        .await
        .unwrap_err();
    assert_eq!((e.code, e.reason), (403, "Forbidden"));
    assert_eq!(
        e.message,
        "admission webhook \"tags.example.com\" denied the request: images need a pinned tag"
    );
    let mut pinned = pod();
    pinned["spec"]["containers"][0]["image"] = json!("nginx:1.27");
    call.validate(
        Operation::Create,
        "default",
        "p",
        None,
        Some(&pinned),
        false,
    )
    .await
    .unwrap();
    // objectSelector: a pod without app=web is not sent.
    let w = Webhooks::fixed(Source::fixed(
        Vec::new(),
        hooks(
            json!({"metadata": {"name": "v"}, "webhooks": [hook_json("tags.example.com", &s, "/tags", json!({"objectSelector": {"matchLabels": {"app": "db"}}}))]}),
            Kind::Validating,
        ),
    ));
    let before = s.calls.lock().len();
    w.call(pods, "", &user())
        .unwrap()
        .validate(Operation::Create, "default", "p", None, Some(&pod()), false)
        .await
        .unwrap();
    assert_eq!(
        s.calls.lock().len(),
        before,
        "an unselected object is not sent"
    );

    // A slow webhook past its timeout: Ignore lets the request pass, Fail refuses it.
    let slow = |policy: &str| {
        hook_json(
            "slow.example.com",
            &s,
            "/slow",
            json!({"timeoutSeconds": 1, "failurePolicy": policy}),
        )
    };
    let w = validating(vec![slow("Ignore")]);
    w.call(pods, "", &user())
        .unwrap()
        .validate(
            Operation::Create,
            "default",
            "p",
            None,
            Some(&pinned),
            false,
        )
        .await
        .unwrap();
    let w = validating(vec![slow("Fail")]);
    let e = w
        .call(pods, "", &user())
        .unwrap()
        .validate(
            Operation::Create,
            "default",
            "p",
            None,
            Some(&pinned),
            false,
        )
        .await
        .unwrap_err();
    assert_eq!(e.code, 500);
    assert!(
        e.message
            .contains("failed calling webhook \"slow.example.com\"")
            && e.message.contains("context deadline exceeded"),
        "{}",
        e.message
    );
    // An answer that is not an AdmissionReview is a failed call too.
    let w = validating(vec![hook_json(
        "garbage.example.com",
        &s,
        "/garbage",
        json!({}),
    )]);
    let e = w
        .call(pods, "", &user())
        .unwrap()
        .validate(
            Operation::Create,
            "default",
            "p",
            None,
            Some(&pinned),
            false,
        )
        .await
        .unwrap_err();
    assert!(
        e.message
            .contains("expected webhook response of admission.k8s.io/v1"),
        "{}",
        e.message
    );
    // A CA that did not sign the server's certificate: the call fails, nothing is sent.
    let mut wrong = hook_json("wrongca.example.com", &s, "/tags", json!({}));
    let other = server(Arc::new(|r: &Value| {
        (Duration::ZERO, reply(r, true, None, None))
    }))
    .await;
    wrong["clientConfig"]["caBundle"] = json!(other.ca_b64);
    let w = Webhooks::fixed(Source::fixed(
        Vec::new(),
        hooks(
            json!({"metadata": {"name": "v"}, "webhooks": [wrong]}),
            Kind::Validating,
        ),
    ));
    let e = w
        .call(pods, "", &user())
        .unwrap()
        .validate(
            Operation::Create,
            "default",
            "p",
            None,
            Some(&pinned),
            false,
        )
        .await
        .unwrap_err();
    assert!(e.message.contains("tls"), "{}", e.message);
}

#[test]
fn webhook_configurations_are_never_sent_to_webhooks() {
    let v = hooks(
        json!({"metadata": {"name": "v"}, "webhooks": [webhook("any.example.com", "https://127.0.0.1:1/")]}),
        Kind::Validating,
    );
    let w = Webhooks::fixed(Source::fixed(Vec::new(), v));
    for r in [
        "mutatingwebhookconfigurations",
        "validatingwebhookconfigurations",
    ] {
        let res = find(GROUP, "v1", r).unwrap();
        assert!(w.call(res, "", &user()).is_none());
    }
    assert!(
        w.call(find("", "v1", "pods").unwrap(), "", &user())
            .is_some()
    );
    // Without any webhook, writes skip the plugins altogether.
    let none = Webhooks::fixed(Source::fixed(Vec::new(), Vec::new()));
    assert!(
        none.call(find("", "v1", "pods").unwrap(), "", &user())
            .is_none()
    );
}
