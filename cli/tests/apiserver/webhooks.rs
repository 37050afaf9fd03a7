//! Admission webhooks through kubectl, against a real HTTPS webhook server run by the test:
//! mutation, denial with the webhook's status, namespace selectors, dry runs, updates and
//! deletes, failurePolicy on a timeout, Service references, and bad configurations refused.

use std::sync::Arc;
use std::time::Duration;

use keelson_bench::webhook_server::{self, WebhookServer, reply};
use serde_json::{Value, json};

use crate::harness::{ApiCluster, Backend, apply, eventually};

/// What the server answers on each path.
fn respond(path: &str, review: &Value) -> (Duration, Value) {
    let req = &review["request"];
    let obj = &req["object"];
    match path {
        "/mutate" => {
            let patch = if obj["metadata"]["labels"].is_object() {
                json!([{"op": "add", "path": "/metadata/labels/mutated", "value": "yes"}])
            } else {
                json!([{"op": "add", "path": "/metadata/labels", "value": {"mutated": "yes"}}])
            };
            (Duration::ZERO, reply(review, true, Some(patch), None))
        }
        "/validate" => {
            if obj["metadata"]["labels"]["deny"] == "true" {
                let status = json!({"code": 403, "reason": "Forbidden", "message": "pods labelled deny=true are refused"});
                let mut a = reply(review, false, None, Some(status));
                a["response"]["warnings"] = json!(["the deny label is for tests"]);
                return (Duration::ZERO, a);
            }
            let mut a = reply(review, true, None, None);
            a["response"]["warnings"] = json!(["checked by the test webhook"]);
            (Duration::ZERO, a)
        }
        "/keep" => {
            // Refuses deletes of the configmap named "keep" (the object is null on DELETE).
            let refused =
                req["operation"] == "DELETE" && req["oldObject"]["metadata"]["name"] == "keep";
            let status = json!({"message": "configmap keep stays"});
            (
                Duration::ZERO,
                reply(review, !refused, None, refused.then_some(status)),
            )
        }
        "/slow" => (Duration::from_secs(3), reply(review, true, None, None)),
        "/svc" => {
            let refused = obj["metadata"]["name"] == "forbidden";
            let status = json!({"code": 422, "reason": "Invalid", "message": "that name is taken by policy"});
            (
                Duration::ZERO,
                reply(review, !refused, None, refused.then_some(status)),
            )
        }
        _ => (Duration::ZERO, json!({})),
    }
}

/// The test's webhook server, on a runtime of its own (kubectl runs synchronously).
fn hook_server() -> (tokio::runtime::Runtime, WebhookServer) {
    webhook_server::start_on_own_runtime(Arc::new(respond), &["hook.hooks.svc"], true).unwrap()
}

fn webhook(name: &str, client: Value, ops: &[&str], resources: &[&str], extra: Value) -> Value {
    let mut h = json!({
        "name": name,
        "clientConfig": client,
        "sideEffects": "None",
        "admissionReviewVersions": ["v1"],
        "rules": [{"operations": ops, "apiGroups": [""], "apiVersions": ["v1"], "resources": resources}],
    });
    for (k, v) in extra.as_object().unwrap() {
        h[k] = v.clone();
    }
    h
}

fn config(kind: &str, name: &str, hooks: Vec<Value>) -> String {
    json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": kind, "metadata": {"name": name}, "webhooks": hooks}).to_string()
}

#[test]
fn webhooks_mutate_deny_and_follow_their_failure_policy() {
    let (_rt, s) = hook_server();
    let c = ApiCluster::start(Backend::Keelson, 1);
    let url = |p: &str| json!({"url": s.url(p), "caBundle": s.ca_bundle});
    let selected = json!({"namespaceSelector": {"matchLabels": {"webhooks": "on"}}});

    // A configuration kubectl cannot get wrong is refused with upstream's messages.
    let bad = config(
        "ValidatingWebhookConfiguration",
        "bad",
        vec![webhook(
            "bad",
            json!({"url": "http://127.0.0.1:1/x"}),
            &["CREATE"],
            &["pods"],
            json!({"timeoutSeconds": 60}),
        )],
    );
    let out = c.kubectl_stdin(&["apply", "-f", "-"], &bad);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("webhooks[0].name")
            && err.contains("at least three segments")
            && err.contains("'https' is the only allowed URL scheme")
            && err.contains("the timeout value must be between 1 and 30 seconds"),
        "{err}"
    );
    c.fails(&["get", "validatingwebhookconfigurations", "bad"]);

    apply(
        &c,
        &config(
            "MutatingWebhookConfiguration",
            "labels",
            vec![webhook(
                "label.hooks.keelson.dev",
                url("/mutate"),
                &["CREATE", "UPDATE"],
                &["pods"],
                selected.clone(),
            )],
        ),
    );
    apply(
        &c,
        &config(
            "ValidatingWebhookConfiguration",
            "deny",
            vec![
                webhook(
                    "deny.hooks.keelson.dev",
                    url("/validate"),
                    &["CREATE", "UPDATE"],
                    &["pods"],
                    selected.clone(),
                ),
                webhook(
                    "keep.hooks.keelson.dev",
                    url("/keep"),
                    &["DELETE"],
                    &["configmaps"],
                    json!({}),
                ),
            ],
        ),
    );
    // Defaults as upstream.
    let v: Value = serde_json::from_str(&c.ok(&[
        "get",
        "validatingwebhookconfiguration",
        "deny",
        "-o",
        "json",
    ]))
    .unwrap();
    let h = &v["webhooks"][0];
    assert_eq!(h["failurePolicy"], "Fail");
    assert_eq!(h["timeoutSeconds"], 10);
    assert_eq!(h["matchPolicy"], "Equivalent");
    assert_eq!(h["objectSelector"], json!({}));

    c.ok(&["create", "namespace", "hooked"]);
    c.ok(&["label", "namespace", "hooked", "webhooks=on"]);
    // The plugins follow the configurations through the watch cache.
    eventually(Duration::from_secs(20), "the mutating webhook", || {
        let out = c.kubectl(&["-n", "hooked", "run", "probe", "--image=pause"]);
        if !out.status.success() {
            return false;
        }
        let labels = c.ok(&[
            "-n",
            "hooked",
            "get",
            "pod",
            "probe",
            "-o",
            "jsonpath={.metadata.labels.mutated}",
        ]);
        c.ok(&["-n", "hooked", "delete", "pod", "probe", "--grace-period=0"]);
        labels == "yes"
    });

    // Mutated on create, with the validating webhook's warning shown by kubectl.
    let out = c.kubectl(&[
        "-n",
        "hooked",
        "run",
        "web",
        "--image=pause",
        "--labels=app=web",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Warning: checked by the test webhook"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let labels = c.ok(&[
        "-n",
        "hooked",
        "get",
        "pod",
        "web",
        "-o",
        "jsonpath={.metadata.labels}",
    ]);
    assert!(
        labels.contains("\"app\":\"web\"") && labels.contains("\"mutated\":\"yes\""),
        "{labels}"
    );
    let review = s.reviews("/validate").last().cloned().unwrap();
    let req = &review["request"];
    assert_eq!(req["operation"], "CREATE");
    assert_eq!(req["namespace"], "hooked");
    assert_eq!(req["userInfo"]["username"], "kubernetes-admin");
    assert_eq!(
        req["object"]["metadata"]["labels"]["mutated"], "yes",
        "validating webhooks see the mutated object"
    );

    // Denied: the webhook's status and message, and nothing is written.
    let err = c.fails(&[
        "-n",
        "hooked",
        "run",
        "bad",
        "--image=pause",
        "--labels=deny=true",
    ]);
    assert!(
        err.contains(r#"Error from server (Forbidden): admission webhook "deny.hooks.keelson.dev" denied the request: pods labelled deny=true are refused"#),
        "{err}"
    );
    assert!(
        err.contains("Warning: the deny label is for tests"),
        "{err}"
    );
    c.fails(&["-n", "hooked", "get", "pod", "bad"]);
    // An update is checked too.
    let err = c.fails(&["-n", "hooked", "label", "pod", "web", "deny=true"]);
    assert!(
        err.contains("denied the request: pods labelled deny=true are refused"),
        "{err}"
    );
    let labels = c.ok(&[
        "-n",
        "hooked",
        "get",
        "pod",
        "web",
        "-o",
        "jsonpath={.metadata.labels}",
    ]);
    assert!(!labels.contains("deny"), "{labels}");
    let update = s.reviews("/validate").last().cloned().unwrap();
    assert_eq!(update["request"]["operation"], "UPDATE");
    assert_eq!(update["request"]["oldObject"]["metadata"]["name"], "web");

    // A server-side dry run is mutated and checked, says so to the webhook, and stores nothing.
    let out = c.ok(&[
        "-n",
        "hooked",
        "run",
        "dry",
        "--image=pause",
        "--dry-run=server",
        "-o",
        "jsonpath={.metadata.labels.mutated}",
    ]);
    assert_eq!(out, "yes");
    assert_eq!(
        s.reviews("/mutate").last().unwrap()["request"]["dryRun"],
        true
    );
    c.fails(&["-n", "hooked", "get", "pod", "dry"]);

    // Namespaces outside the selector are left alone.
    let before = s.reviews("/mutate").len();
    c.ok(&["run", "plain", "--image=pause"]);
    let labels = c.ok(&["get", "pod", "plain", "-o", "jsonpath={.metadata.labels}"]);
    assert!(!labels.contains("mutated"), "{labels}");
    assert_eq!(s.reviews("/mutate").len(), before);

    // DELETE: the webhook sees the old object and may refuse.
    c.ok(&["create", "configmap", "keep"]);
    c.ok(&["create", "configmap", "drop"]);
    let err = c.fails(&["delete", "configmap", "keep"]);
    assert!(
        err.contains(
            r#"admission webhook "keep.hooks.keelson.dev" denied the request: configmap keep stays"#
        ),
        "{err}"
    );
    c.ok(&["get", "configmap", "keep"]);
    c.ok(&["delete", "configmap", "drop"]);

    // A webhook that does not answer in time: Fail refuses with a 500, Ignore lets it pass.
    let slow = |policy: &str| {
        config(
            "ValidatingWebhookConfiguration",
            "slow",
            vec![webhook(
                "slow.hooks.keelson.dev",
                url("/slow"),
                &["CREATE"],
                &["secrets"],
                json!({"timeoutSeconds": 1, "failurePolicy": policy}),
            )],
        )
    };
    apply(&c, &slow("Fail"));
    // A fresh name per probe: a name taken by an earlier probe must not pass for a refusal.
    let mut probe = 0;
    eventually(Duration::from_secs(20), "the slow webhook", || {
        probe += 1;
        let name = format!("probe-slow-{probe}");
        !c.kubectl(&["create", "secret", "generic", &name])
            .status
            .success()
    });
    let err = c.fails(&["create", "secret", "generic", "s1"]);
    assert!(
        err.contains(r#"Internal error occurred: failed calling webhook "slow.hooks.keelson.dev": failed to call webhook: Post "https://127.0.0.1:"#)
            && err.contains("/slow?timeout=1s\": context deadline exceeded"),
        "{err}"
    );
    c.fails(&["get", "secret", "s1"]);
    apply(&c, &slow("Ignore"));
    eventually(Duration::from_secs(20), "failurePolicy Ignore", || {
        c.kubectl(&["create", "secret", "generic", "s2"])
            .status
            .success()
    });
    c.ok(&["delete", "validatingwebhookconfiguration", "slow"]);

    // A Service reference: resolved through the Service's endpoints, the certificate checked
    // against <service>.<namespace>.svc.
    c.ok(&["create", "namespace", "hooks"]);
    apply(
        &c,
        &json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "hook", "namespace": "hooks"},
            "spec": {"ports": [{"name": "https", "port": 443, "targetPort": s.port}]}})
        .to_string(),
    );
    apply(
        &c,
        &json!({"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "hook", "namespace": "hooks"},
            "subsets": [{"addresses": [{"ip": "127.0.0.1"}], "ports": [{"name": "https", "port": s.port}]}]})
        .to_string(),
    );
    apply(
        &c,
        &config(
            "ValidatingWebhookConfiguration",
            "by-service",
            vec![webhook(
                "svc.hooks.keelson.dev",
                json!({"service": {"namespace": "hooks", "name": "hook", "path": "/svc"}, "caBundle": s.ca_bundle}),
                &["CREATE"],
                &["configmaps"],
                json!({}),
            )],
        ),
    );
    let mut probe = 0;
    eventually(
        Duration::from_secs(20),
        "the Service-referenced webhook",
        || {
            probe += 1;
            let name = format!("svc-probe-{probe}");
            c.kubectl(&["create", "configmap", &name]).status.success()
                && !s.reviews("/svc").is_empty()
        },
    );
    let err = c.fails(&["create", "configmap", "forbidden"]);
    assert!(
        err.contains(r#"admission webhook "svc.hooks.keelson.dev" denied the request: that name is taken by policy"#),
        "{err}"
    );
    c.ok(&["create", "configmap", "allowed"]);

    // The webhooks' latency is measured.
    let metrics = c.ok(&["get", "--raw", "/metrics"]);
    assert!(
        metrics.contains("apiserver_admission_webhook_admission_duration_seconds_count{name=\"deny.hooks.keelson.dev\",operation=\"CREATE\",rejected=\"true\",type=\"validating\"}"),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("admission_webhook"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // `kubectl get` lists the configurations.
    let list = c.ok(&["get", "validatingwebhookconfigurations"]);
    let rows: Vec<Vec<&str>> = list
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows[0], vec!["NAME", "WEBHOOKS", "AGE"], "{list}");
    assert!(rows.iter().any(|r| r[..2] == ["deny", "2"]), "{list}");
}
