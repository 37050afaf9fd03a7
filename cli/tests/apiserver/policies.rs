//! ValidatingAdmissionPolicy and webhook matchConditions through kubectl: CEL validations with
//! parameters from a ConfigMap, messageExpression, Deny and Warn bindings, a binding whose
//! parameters are missing, compile errors refused when the policy is written, the status the
//! server keeps; webhooks skipped by a false condition and refused by a failing one.

use std::sync::Arc;
use std::time::Duration;

use keelson_bench::webhook_server::{self, reply};
use serde_json::{Value, json};

use crate::harness::{ApiCluster, Backend, apply, eventually};

const POLICY: &str = r#"{"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
  "metadata": {"name": "replicas"},
  "spec": {
    "paramKind": {"apiVersion": "v1", "kind": "ConfigMap"},
    "matchConstraints": {"resourceRules": [{"apiGroups": ["apps"], "apiVersions": ["v1"],
      "operations": ["CREATE", "UPDATE"], "resources": ["deployments"]}]},
    "matchConditions": [{"name": "not-exempt", "expression": "!has(object.metadata.labels) || !('exempt' in object.metadata.labels)"}],
    "variables": [{"name": "max", "expression": "int(params.data.maxReplicas)"}],
    "validations": [{"expression": "object.spec.replicas <= variables.max",
      "messageExpression": "'replicas must be at most ' + string(variables.max)", "reason": "Forbidden"}]
  }}"#;

const BINDING: &str = r#"{"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
  "metadata": {"name": "replicas-binding"},
  "spec": {"policyName": "replicas", "validationActions": ["Deny"],
    "paramRef": {"name": "limits", "parameterNotFoundAction": "Deny"}}}"#;

const LABELS: &str = r#"{"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
  "metadata": {"name": "team-label"},
  "spec": {
    "matchConstraints": {"resourceRules": [{"apiGroups": [""], "apiVersions": ["v1"],
      "operations": ["CREATE"], "resources": ["configmaps"]}]},
    "validations": [{"expression": "has(object.metadata.labels) && 'team' in object.metadata.labels",
      "message": "configmaps need a team label"}]
  }}"#;

#[test]
fn validating_admission_policies_deny_warn_and_take_parameters() {
    let c = ApiCluster::start(Backend::Keelson, 1);
    // A policy that does not compile is refused when written.
    let bad = POLICY.replace("<= variables.max", "<= variables.max +");
    let out = c.kubectl_stdin(&["apply", "-f", "-"], &bad);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("spec.validations[0].expression: Invalid value: \"object.spec.replicas <= variables.max +\": compilation failed: ERROR: <input>:1:"),
        "{err}"
    );

    apply(&c, POLICY);
    apply(&c, BINDING);
    c.ok(&[
        "create",
        "configmap",
        "limits",
        "--from-literal=maxReplicas=3",
    ]);
    // The server keeps the policy's status, as upstream's status controller does.
    eventually(Duration::from_secs(20), "the policy's status", || {
        c.ok(&[
            "get",
            "validatingadmissionpolicy",
            "replicas",
            "-o",
            "jsonpath={.status.observedGeneration}",
        ]) == "1"
    });
    let table = c.ok(&["get", "validatingadmissionpolicy"]);
    assert!(
        table.contains("VALIDATIONS") && table.contains("v1/ConfigMap"),
        "{table}"
    );

    let err = c.fails(&[
        "create",
        "deployment",
        "big",
        "--image=pause",
        "--replicas=5",
    ]);
    assert!(
        err.contains(r#"deployments.apps "big" is forbidden: ValidatingAdmissionPolicy 'replicas' with binding 'replicas-binding' denied request: replicas must be at most 3"#),
        "{err}"
    );
    c.ok(&[
        "create",
        "deployment",
        "small",
        "--image=pause",
        "--replicas=2",
    ]);
    // Updates are checked too; a matchCondition exempts labelled deployments.
    let err = c.fails(&[
        "patch",
        "deployment",
        "small",
        "-p",
        r#"{"spec":{"replicas":4}}"#,
    ]);
    assert!(err.contains("replicas must be at most 3"), "{err}");
    c.ok(&["label", "deployment", "small", "exempt=yes"]);
    c.ok(&[
        "patch",
        "deployment",
        "small",
        "-p",
        r#"{"spec":{"replicas":4}}"#,
    ]);
    // Where the parameters are missing, the binding's Deny action refuses.
    c.ok(&["create", "namespace", "other"]);
    let err = c.fails(&["-n", "other", "create", "deployment", "d", "--image=pause"]);
    assert!(
        err.contains("ValidatingAdmissionPolicy 'replicas' with binding 'replicas-binding' denied request: failed to configure binding: no params found for policy binding with `Deny` parameterNotFoundAction"),
        "{err}"
    );

    // A Warn binding lets the write through with kubectl's warning.
    apply(&c, LABELS);
    apply(
        &c,
        r#"{"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
          "metadata": {"name": "team-label-warn"}, "spec": {"policyName": "team-label", "validationActions": ["Warn"]}}"#,
    );
    eventually(Duration::from_secs(20), "the warning", || {
        let o = c.kubectl(&[
            "create",
            "configmap",
            &format!("cm-{}", rand_suffix()),
            "--from-literal=a=b",
        ]);
        o.status.success()
            && String::from_utf8_lossy(&o.stderr).contains(
                "Warning: Validation failed for ValidatingAdmissionPolicy 'team-label' with binding 'team-label-warn': configmaps need a team label",
            )
    });
}

fn rand_suffix() -> u32 {
    use std::time::SystemTime;
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
}

#[test]
fn webhook_match_conditions_skip_or_refuse() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    // The webhook refuses every configmap it is asked about.
    let s = rt
        .block_on(webhook_server::start(
            Arc::new(|_: &str, review: &Value| {
                let status = json!({"code": 403, "message": "no configmaps today"});
                (Duration::ZERO, reply(review, false, None, Some(status)))
            }),
            &[],
            false,
        ))
        .unwrap();
    let c = ApiCluster::start(Backend::Keelson, 1);
    let hook = |name: &str, conditions: Value, policy: &str| {
        json!({"name": name, "clientConfig": {"url": s.url("/"), "caBundle": s.ca_bundle},
            "sideEffects": "None", "admissionReviewVersions": ["v1"], "failurePolicy": policy,
            "matchConditions": conditions,
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["configmaps"]}]})
    };
    let cfg = json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
    "metadata": {"name": "conditions"}, "webhooks": [
        hook("guard.hooks.keelson.dev", json!([{"name": "guarded", "expression": "object.metadata.name.startsWith('guarded-')"}]), "Fail"),
        hook("data.hooks.keelson.dev", json!([{"name": "data", "expression": "object.data.kind == 'strict'"}]), "Fail"),
    ]});
    apply(&c, &cfg.to_string());
    // In force once a guarded configmap is refused (the data condition is true for it).
    eventually(Duration::from_secs(20), "the webhooks in force", || {
        let o = c.kubectl(&[
            "create",
            "configmap",
            "guarded-a",
            "--from-literal=kind=strict",
        ]);
        String::from_utf8_lossy(&o.stderr).contains("no configmaps today")
    });
    // Both conditions false: no webhook is called.
    c.ok(&["create", "configmap", "free", "--from-literal=kind=loose"]);
    // A condition that fails to evaluate (no data) refuses under Fail, with a 403.
    let err = c.fails(&["create", "configmap", "empty"]);
    assert!(
        err.contains(r#"configmaps "empty" is forbidden: expression 'object.data.kind == 'strict'' resulted in error: no such key: data"#),
        "{err}"
    );
}
