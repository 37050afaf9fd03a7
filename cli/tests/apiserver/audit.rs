//! `--audit-policy-file` and `--audit-log-path`: the events kubectl's requests leave, per
//! level, with authorization's decision, the impersonated user, watch stages, a failed
//! authentication's event, a ValidatingAdmissionPolicy's Audit failures, and never a Secret's
//! data below RequestResponse.

use std::time::Duration;

use serde_json::Value;

use crate::harness::{ApiCluster, Backend, eventually, ok};

const POLICY: &str = r#"
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: None
  nonResourceURLs: ["/healthz*", "/readyz*", "/livez*", "/version", "/api*", "/openapi*"]
- level: Metadata
  resources: [{group: "", resources: ["secrets"]}]
- level: RequestResponse
  resources: [{group: "", resources: ["configmaps"]}]
- level: Metadata
"#;

fn events(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is one JSON event"))
        .collect()
}

/// Applies a ValidatingAdmissionPolicy `name` on configmap creates (`rest`: its spec's other
/// members, as JSON) and its binding `binding` with `actions` (a JSON list).
fn configmap_policy(c: &ApiCluster, name: &str, rest: &str, binding: &str, actions: &str) {
    crate::harness::apply(
        c,
        &format!(
            r#"{{"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
              "metadata": {{"name": "{name}"}},
              "spec": {{"matchConstraints": {{"resourceRules": [{{"apiGroups": [""], "apiVersions": ["v1"],
                  "operations": ["CREATE"], "resources": ["configmaps"]}}]}}, {rest}}}}}"#
        ),
    );
    crate::harness::apply(
        c,
        &format!(
            r#"{{"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
              "metadata": {{"name": "{binding}"}},
              "spec": {{"policyName": "{name}", "validationActions": {actions}}}}}"#
        ),
    );
}

#[test]
fn audit_log_records_each_level_as_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, POLICY).unwrap();
    let log = dir.path().join("audit").join("audit.log");
    let c = ApiCluster::start_with(
        Backend::Keelson,
        1,
        &[
            "--authorization-mode=RBAC",
            &format!("--audit-policy-file={}", policy.display()),
            &format!("--audit-log-path={}", log.display()),
        ],
    );
    let admin = |args: &[&str]| ok(c.kubectl(args), args);
    admin(&[
        "create",
        "secret",
        "generic",
        "db",
        "--from-literal=password=topsecret",
    ]);
    admin(&[
        "create",
        "configmap",
        "settings",
        "--from-literal=color=teal",
    ]);
    let alice = c.user_kubeconfig("alice", &[]);
    assert!(!c.kubectl_with(&alice, &["get", "secrets"]).status.success());
    // A token no authenticator takes (`--raw`: discovery, at level None, would stop kubectl
    // first).
    let stranger = crate::tokens::token_kubeconfig(&c, "stranger", "not-a-token");
    let pods = "/api/v1/namespaces/default/pods";
    assert!(
        !c.kubectl_with(&stranger, &["get", "--raw", pods])
            .status
            .success()
    );
    admin(&[
        "get",
        "configmaps",
        "--as",
        "bob",
        "--as-group",
        "system:masters",
    ]);
    admin(&[
        "get",
        "--raw",
        "/api/v1/namespaces/default/secrets?watch=1&timeoutSeconds=1",
    ]);
    let find = |evs: &[Value], f: &dyn Fn(&Value) -> bool| evs.iter().find(|e| f(e)).cloned();
    eventually(
        Duration::from_secs(10),
        "the watch's ResponseComplete",
        || {
            find(&events(&log), &|e| {
                e["verb"] == "watch" && e["stage"] == "ResponseComplete"
            })
            .is_some()
        },
    );
    let evs = events(&log);
    let text = std::fs::read_to_string(&log).unwrap();
    // Nothing of the Secret's data, in plain or base64.
    assert!(!text.contains("topsecret") && !text.contains("dG9wc2VjcmV0"));
    assert!(evs.iter().all(|e| e["stage"] != "RequestReceived"));
    assert!(
        evs.iter()
            .all(|e| !e["requestURI"].as_str().unwrap().starts_with("/openapi")),
        "None-level requests are not recorded"
    );

    let created = find(&evs, &|e| {
        e["verb"] == "create" && e["objectRef"]["resource"] == "secrets"
    })
    .expect("the secret's create");
    assert_eq!(created["kind"], "Event");
    assert_eq!(created["apiVersion"], "audit.k8s.io/v1");
    assert_eq!(created["level"], "Metadata");
    assert_eq!(created["stage"], "ResponseComplete");
    assert_eq!(created["user"]["username"], "kubernetes-admin");
    assert_eq!(created["objectRef"]["namespace"], "default");
    assert_eq!(created["objectRef"]["apiVersion"], "v1");
    assert_eq!(created["responseStatus"]["code"], 201);
    assert_eq!(created["sourceIPs"][0], "127.0.0.1");
    assert!(
        created["userAgent"]
            .as_str()
            .unwrap()
            .starts_with("kubectl")
    );
    assert_eq!(
        created["annotations"]["authorization.k8s.io/decision"],
        "allow"
    );
    assert!(created.get("requestObject").is_none());
    assert!(!created["auditID"].as_str().unwrap().is_empty());
    // Microsecond RFC 3339 timestamps, as upstream's.
    for k in ["requestReceivedTimestamp", "stageTimestamp"] {
        let t = created[k].as_str().unwrap();
        assert!(
            t.len() == 27 && t.ends_with('Z') && t.as_bytes()[19] == b'.',
            "{k}: {t}"
        );
    }

    let cm = find(&evs, &|e| {
        e["verb"] == "create" && e["objectRef"]["resource"] == "configmaps"
    })
    .expect("the configmap's create");
    assert_eq!(cm["level"], "RequestResponse");
    assert_eq!(cm["requestObject"]["data"]["color"], "teal");
    assert_eq!(cm["responseObject"]["data"]["color"], "teal");
    assert!(cm["responseObject"]["metadata"]["uid"].is_string());

    let denied = find(&evs, &|e| e["user"]["username"] == "alice").expect("alice's list");
    assert_eq!(denied["responseStatus"]["code"], 403);
    assert_eq!(denied["responseStatus"]["reason"], "Forbidden");
    assert_eq!(
        denied["annotations"]["authorization.k8s.io/decision"],
        "forbid"
    );

    // As upstream's failed-authentication audit: one ResponseStarted event, no user.
    let failed: Vec<&Value> = evs
        .iter()
        .filter(|e| e["responseStatus"]["code"] == 401)
        .collect();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0]["stage"], "ResponseStarted");
    assert_eq!(failed[0]["user"], serde_json::json!({}));
    assert_eq!(
        failed[0]["responseStatus"]["message"],
        "Authentication failed, attempted: bearer"
    );
    assert_eq!(failed[0]["verb"], "list");
    assert_eq!(failed[0]["requestURI"], pods);
    assert_eq!(failed[0]["objectRef"]["resource"], "pods");

    let imp = find(&evs, &|e| e["impersonatedUser"]["username"] == "bob").expect("as bob");
    assert_eq!(imp["user"]["username"], "kubernetes-admin");

    let started = find(&evs, &|e| {
        e["verb"] == "watch" && e["stage"] == "ResponseStarted"
    });
    assert!(started.is_some(), "a watch has a ResponseStarted stage");

    // A ValidatingAdmissionPolicy bound with Audit: the write goes through, and its event
    // lists the failure in upstream's annotation, beside the policy's own audit annotation.
    configmap_policy(
        &c,
        "team-label",
        r#""validations": [{"expression": "true"},
              {"expression": "has(object.metadata.labels)", "message": "configmaps need labels"}],
            "auditAnnotations": [{"key": "unlabelled", "valueExpression": "has(object.metadata.labels) ? null : object.metadata.name"}]"#,
        "team-label-audit",
        r#"["Audit"]"#,
    );
    let key = "validation.policy.admission.k8s.io/validation_failure";
    let mut tries = 0;
    let mut audited = None;
    eventually(Duration::from_secs(20), "an audited policy failure", || {
        tries += 1;
        admin(&["create", "configmap", &format!("audited-{tries}")]);
        audited = find(&events(&log), &|e| {
            e["annotations"][key].is_string() && e["objectRef"]["resource"] == "configmaps"
        });
        audited.is_some()
    });
    let audited = audited.unwrap();
    assert_eq!(audited["responseStatus"]["code"], 201);
    assert_eq!(
        audited["annotations"]["team-label/unlabelled"],
        audited["objectRef"]["name"]
    );
    let failures: Value =
        serde_json::from_str(audited["annotations"][key].as_str().unwrap()).unwrap();
    assert_eq!(
        failures,
        serde_json::json!([{
            "message": "configmaps need labels",
            "policy": "team-label",
            "binding": "team-label-audit",
            "expressionIndex": 1,
            "validationActions": ["Audit"],
        }])
    );

    // A policy that denies, bound with Deny and Audit: the refusal's event records the
    // failure, and the policies after it still ran (team-label's annotation is there).
    configmap_policy(
        &c,
        "no-x",
        r#""validations": [{"expression": "!object.metadata.name.startsWith('x-')", "message": "no x"}]"#,
        "no-x-binding",
        r#"["Deny", "Audit"]"#,
    );
    let mut tries = 0;
    let mut refused = None;
    eventually(
        Duration::from_secs(20),
        "a refusal with its failure audited",
        || {
            tries += 1;
            let name = format!("x-{tries}");
            let out = c.kubectl(&["create", "configmap", &name]);
            if out.status.success() {
                return false;
            }
            // (A refused create's event names no object here: keelson takes a create's name
            // from the object created.)
            refused = find(&events(&log), &|e| {
                e["responseStatus"]["code"] == 422 && e["annotations"][key].is_string()
            });
            refused.is_some()
        },
    );
    let refused = refused.unwrap();
    assert_eq!(refused["responseStatus"]["code"], 422);
    let failures: Value =
        serde_json::from_str(refused["annotations"][key].as_str().unwrap()).unwrap();
    assert_eq!(failures[0]["policy"], "no-x");
    assert_eq!(
        failures[0]["validationActions"],
        serde_json::json!(["Deny", "Audit"])
    );
    assert!(
        refused["annotations"]["team-label/unlabelled"]
            .as_str()
            .is_some_and(|n| n.starts_with("x-")),
        "{refused}"
    );
}

/// The test's audit webhook server (answers every list with `{}`), and a kubeconfig for it
/// in `dir`.
fn audit_hook(
    dir: &std::path::Path,
) -> (
    tokio::runtime::Runtime,
    keelson_bench::webhook_server::WebhookServer,
    std::path::PathBuf,
) {
    let (rt, server) = keelson_bench::webhook_server::start_on_own_runtime(
        std::sync::Arc::new(|_: &str, _: &Value| (Duration::ZERO, serde_json::json!({}))),
        &[],
        true,
    )
    .unwrap();
    let p = dir.join("audit-webhook.yaml");
    std::fs::write(&p, server.kubeconfig("/audit", "audit-secret")).unwrap();
    (rt, server, p)
}

/// Every event the webhook received, and the size of each list it came in.
fn hooked_events(
    server: &keelson_bench::webhook_server::WebhookServer,
) -> (Vec<Value>, Vec<usize>) {
    let lists = server.reviews("/audit");
    let sizes = lists
        .iter()
        .map(|l| l["items"].as_array().map_or(0, Vec::len))
        .collect();
    let events = lists
        .iter()
        .flat_map(|l| l["items"].as_array().cloned().unwrap_or_default())
        .collect();
    (events, sizes)
}

#[test]
fn audit_webhook_batches_events_and_blocking_strict_fails_requests_it_cannot_record() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, POLICY).unwrap();
    let (rt, server, hook) = audit_hook(dir.path());
    let c = ApiCluster::start_with(
        Backend::Keelson,
        1,
        &[
            &format!("--audit-policy-file={}", policy.display()),
            &format!("--audit-webhook-config-file={}", hook.display()),
            "--audit-webhook-batch-max-wait=500ms",
            "--audit-webhook-batch-max-size=3",
        ],
    );
    for i in 0..7 {
        let name = format!("cm{i}");
        ok(
            c.kubectl(&["create", "configmap", &name, "--from-literal=k=v"]),
            &["create configmap"],
        );
    }
    eventually(
        Duration::from_secs(10),
        "the creates at the webhook",
        || {
            let (events, _) = hooked_events(&server);
            (0..7).all(|i| {
                events.iter().any(|e| {
                    e["verb"] == "create" && e["objectRef"]["name"] == format!("cm{i}").as_str()
                })
            })
        },
    );
    let (events, sizes) = hooked_events(&server);
    assert!(sizes.iter().all(|n| (1..=3).contains(n)), "{sizes:?}");
    let lists = server.reviews("/audit");
    assert!(
        lists
            .iter()
            .all(|l| l["kind"] == "EventList" && l["apiVersion"] == "audit.k8s.io/v1")
    );
    let cm0 = events
        .iter()
        .find(|e| e["verb"] == "create" && e["objectRef"]["name"] == "cm0")
        .unwrap();
    assert_eq!(cm0["level"], "RequestResponse");
    assert_eq!(cm0["stage"], "ResponseComplete");
    assert_eq!(cm0["requestObject"]["data"]["k"], "v");
    assert!(events.iter().all(|e| e["stage"] != "RequestReceived"));
    let seen = server.seen.lock().unwrap();
    assert!(
        seen.iter()
            .all(|s| s["authorization"] == "Bearer audit-secret")
    );
    drop(seen);
    drop(c);
    drop(rt);

    // blocking-strict: the event is at the webhook when the request is answered; once the
    // webhook is gone, requests fail.
    let (rt, server, hook) = audit_hook(dir.path());
    std::fs::write(
        &policy,
        "apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n- level: Metadata\n",
    )
    .unwrap();
    let c = ApiCluster::start_with(
        Backend::Keelson,
        1,
        &[
            &format!("--audit-policy-file={}", policy.display()),
            &format!("--audit-webhook-config-file={}", hook.display()),
            "--audit-webhook-mode=blocking-strict",
        ],
    );
    ok(
        c.kubectl(&["create", "configmap", "strict", "--from-literal=k=v"]),
        &["create configmap"],
    );
    let (events, sizes) = hooked_events(&server);
    assert!(sizes.iter().all(|n| *n == 1), "one event per request");
    let stages: Vec<&Value> = events
        .iter()
        // (A create's name is known once the object is: not at RequestReceived.)
        .filter(|e| e["verb"] == "create" && e["objectRef"]["resource"] == "configmaps")
        .map(|e| &e["stage"])
        .collect();
    assert_eq!(stages, ["RequestReceived", "ResponseComplete"]);
    drop(rt);
    let o = c.kubectl(&["get", "configmap", "strict"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("failed to store audit event"), "{err}");
}
