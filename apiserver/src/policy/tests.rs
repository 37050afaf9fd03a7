//! Policies parsed, matched and evaluated, and their objects validated.

use super::*;
use crate::webhook::Operation;
use serde_json::json;

fn policy(spec: Value) -> Value {
    json!({"metadata": {"name": "p", "generation": 1}, "spec": spec})
}

fn binding(spec: Value) -> Value {
    json!({"metadata": {"name": "b"}, "spec": spec})
}

fn act(obj: Value) -> Activation {
    Activation::new(vec![
        ("object", expr::to_cel(&obj)),
        ("oldObject", ::cel::Value::Null),
        ("request", expr::to_cel(&json!({"operation": "CREATE"}))),
        ("namespaceObject", ::cel::Value::Null),
    ])
}

fn deployments() -> Value {
    json!({"resourceRules": [{"apiGroups": ["apps"], "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE"], "resources": ["deployments"]}]})
}

#[test]
fn validations_decide_with_messages_and_actions() {
    let mut p = policy(json!({
        "matchConstraints": deployments(),
        "variables": [{"name": "replicas", "expression": "object.spec.replicas"}],
        "validations": [
            {"expression": "variables.replicas <= 5"},
            {"expression": "object.metadata.name.startsWith('web')", "message": "names start with web", "reason": "Forbidden"},
            {"expression": "object.spec.replicas % 2 == 1", "messageExpression": "'odd replicas only, got ' + string(object.spec.replicas)"}
        ]
    }));
    default_policy(&mut p);
    let bound = bind(
        &[p],
        &[binding(
            json!({"policyName": "p", "validationActions": ["Deny"]}),
        )],
    );
    assert_eq!(bound.len(), 1);
    let b = &bound[0];
    let d = b.evaluate(
        &mut act(json!({"metadata": {"name": "api"}, "spec": {"replicas": 6}})),
        None,
    );
    assert_eq!(
        d,
        vec![
            Decision::Deny("ValidatingAdmissionPolicy 'p' with binding 'b' denied request: failed expression: variables.replicas <= 5".into(), "Invalid".into()),
            Decision::Deny("ValidatingAdmissionPolicy 'p' with binding 'b' denied request: names start with web".into(), "Forbidden".into()),
            Decision::Deny("ValidatingAdmissionPolicy 'p' with binding 'b' denied request: odd replicas only, got 6".into(), "Invalid".into()),
        ]
    );
    assert!(
        b.evaluate(
            &mut act(json!({"metadata": {"name": "web"}, "spec": {"replicas": 3}})),
            None
        )
        .is_empty()
    );
    // An expression that fails to evaluate denies under Fail; a Warn binding only warns, an
    // Audit one records the failure.
    let warn = bind(
        &[policy(
            json!({"failurePolicy": "Fail", "matchConstraints": deployments(),
            "validations": [{"expression": "object.spec.missing > 1"}]}),
        )],
        &[binding(
            json!({"policyName": "p", "validationActions": ["Warn", "Audit"]}),
        )],
    );
    assert_eq!(
        warn[0].evaluate(&mut act(json!({"spec": {}})), None),
        vec![
            Decision::Warn("Validation failed for ValidatingAdmissionPolicy 'p' with binding 'b': expression 'object.spec.missing > 1' resulted in error: no such key: missing".into()),
            Decision::Audit(ValidationFailure {
                message: "expression 'object.spec.missing > 1' resulted in error: no such key: missing".into(),
                policy: "p".into(),
                binding: "b".into(),
                expression_index: 0,
                validation_actions: vec!["Warn".into(), "Audit".into()],
            }),
        ]
    );
    let ignore = bind(
        &[policy(
            json!({"failurePolicy": "Ignore", "matchConstraints": deployments(),
            "validations": [{"expression": "object.spec.missing > 1"}]}),
        )],
        &[binding(
            json!({"policyName": "p", "validationActions": ["Deny"]}),
        )],
    );
    assert!(
        ignore[0]
            .evaluate(&mut act(json!({"spec": {}})), None)
            .is_empty()
    );
}

#[test]
fn conditions_params_and_matching() {
    let p = policy(json!({
        "paramKind": {"apiVersion": "v1", "kind": "ConfigMap"},
        "matchConstraints": deployments(),
        "matchConditions": [{"name": "not-system", "expression": "!object.metadata.name.startsWith('system-')"}],
        "validations": [{"expression": "object.spec.replicas <= int(params.data.max)"}]
    }));
    let b = binding(json!({"policyName": "p", "validationActions": ["Deny"],
        "paramRef": {"name": "limits", "parameterNotFoundAction": "Deny"},
        "matchResources": {"namespaceSelector": {"matchLabels": {"env": "prod"}}}}));
    let bound = bind(&[p], &[b]);
    let b = &bound[0];
    let params = json!({"data": {"max": "3"}});
    let obj = json!({"metadata": {"name": "api"}, "spec": {"replicas": 4}});
    assert_eq!(b.evaluate(&mut act(obj.clone()), Some(&params)).len(), 1);
    let sys = json!({"metadata": {"name": "system-x"}, "spec": {"replicas": 4}});
    assert!(
        b.evaluate(&mut act(sys), Some(&params)).is_empty(),
        "matchConditions false: no decision"
    );
    let res = crate::resources::find("apps", "v1", "deployments").unwrap();
    let prod = json!({"metadata": {"name": "ns", "labels": {"env": "prod"}}});
    let dev = json!({"metadata": {"name": "ns", "labels": {"env": "dev"}}});
    let target = |ns: &'static Value, op| Target {
        op,
        res,
        sub: "",
        name: "api",
        obj: Some(&obj),
        old: None,
        namespace: Some(ns),
    };
    let prod: &'static Value = Box::leak(Box::new(prod));
    let dev: &'static Value = Box::leak(Box::new(dev));
    let pm = b.policy.matcher.as_ref().unwrap();
    let bm = b.binding.matcher.as_ref().unwrap();
    assert!(
        pm.matches(&target(prod, Operation::Create), false)
            && bm.matches(&target(prod, Operation::Create), true)
    );
    assert!(!bm.matches(&target(dev, Operation::Create), true));
    assert!(!pm.matches(&target(prod, Operation::Delete), false));
    let pods = crate::resources::find("", "v1", "pods").unwrap();
    assert!(!pm.matches(
        &Target {
            res: pods,
            ..target(prod, Operation::Create)
        },
        false
    ));
}

#[test]
fn objects_are_validated() {
    let msgs = |obj: Value, f: fn(&Value, &mut Vec<Cause>)| {
        let mut c = Vec::new();
        f(&obj, &mut c);
        c.into_iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect::<Vec<_>>()
    };
    let mut ok = policy(
        json!({"matchConstraints": deployments(), "validations": [{"expression": "object.spec.replicas < 5"}]}),
    );
    default_policy(&mut ok);
    assert_eq!(msgs(ok.clone(), validate_policy), Vec::<String>::new());
    assert_eq!(ok["spec"]["failurePolicy"], "Fail");
    assert_eq!(ok["spec"]["matchConstraints"]["matchPolicy"], "Equivalent");
    let bad = policy(
        json!({"failurePolicy": "Fail", "matchConstraints": deployments(),
        "validations": [{"expression": "params.x == 1"}, {"expression": "object."}, {"expression": "true", "reason": "Teapot"}]}),
    );
    let m = msgs(bad, validate_policy);
    assert_eq!(m.len(), 3, "{m:?}");
    assert!(m[0].starts_with("spec.validations[0].expression: Invalid value: \"params.x == 1\": compilation failed: ERROR: <input>:1:1: undeclared reference to 'params' (in container '')"), "{m:?}");
    assert!(m[1].starts_with("spec.validations[1].expression: Invalid value: \"object.\": compilation failed: ERROR: <input>:1:"), "{m:?}");
    assert!(
        m[2].starts_with("spec.validations[2].reason: Unsupported value: \"Teapot\""),
        "{m:?}"
    );
    assert_eq!(
        msgs(
            binding(
                json!({"policyName": "p", "validationActions": ["Deny", "Warn"],
            "paramRef": {"name": "a", "selector": {}}})
            ),
            validate_binding
        ),
        vec![
            "spec.paramRef.name: Forbidden: name and selector are mutually exclusive",
            "spec.paramRef.selector: Forbidden: name and selector are mutually exclusive",
            "spec.paramRef.parameterNotFoundAction: Required value",
            "spec.validationActions: Invalid value: [\"Deny\", \"Warn\"]: must not contain both Deny and Warn (repeating the same validation failure information in the API response and headers serves no purpose)",
        ]
    );
    // matchConditions run before variables: they may not use them.
    let conds = policy(
        json!({"failurePolicy": "Fail", "matchConstraints": deployments(),
        "variables": [{"name": "x", "expression": "1"}],
        "matchConditions": [{"name": "c", "expression": "variables.x == 1"}],
        "validations": [{"expression": "variables.x == 1"}]}),
    );
    let m = msgs(conds, validate_policy);
    assert_eq!(m.len(), 1, "{m:?}");
    assert!(
        m[0].contains("spec.matchConditions[0].expression")
            && m[0].contains("undeclared reference to 'variables'"),
        "{m:?}"
    );
    assert_eq!(
        msgs(binding(json!({"policyName": "p"})), validate_binding),
        vec!["spec.validationActions: Required value: at least one validation action is required"]
    );
}

#[test]
fn audit_annotations_are_published_refused_or_left_out_as_upstream() {
    let annotated = |failure: &str, expression: &str| {
        let p = policy(
            json!({"failurePolicy": failure, "matchConstraints": deployments(),
            "auditAnnotations": [
                {"key": "replicas", "valueExpression": "'replicas: ' + string(object.spec.replicas)"},
                {"key": "nothing", "valueExpression": "null"},
                {"key": "empty", "valueExpression": "''"},
                {"key": "other", "valueExpression": expression},
            ]}),
        );
        let bound = bind(
            &[p],
            &[binding(
                json!({"policyName": "p", "validationActions": ["Deny"]}),
            )],
        );
        bound[0].evaluate(&mut act(json!({"spec": {"replicas": 6}})), None)
    };
    let published = Decision::Annotate("p/replicas".into(), "replicas: 6".into());
    assert_eq!(annotated("Fail", "null"), vec![published.clone()]);
    // A value of another type, or an error, refuses under Fail, whatever the actions.
    assert_eq!(
        annotated("Fail", "object.spec.replicas"),
        vec![
            published.clone(),
            Decision::Deny("ValidatingAdmissionPolicy 'p' with binding 'b' denied request: valueExpression 'object.spec.replicas' resulted in unsupported return type: int. Return type must be either string or null.".into(), "Invalid".into()),
        ]
    );
    assert_eq!(
        annotated("Ignore", "object.spec.missing"),
        vec![published.clone()]
    );
    // Another type refuses under Ignore too; a blank string is left out, others trimmed.
    assert_eq!(
        annotated("Ignore", "1").last(),
        Some(&Decision::Deny("ValidatingAdmissionPolicy 'p' with binding 'b' denied request: valueExpression '1' resulted in unsupported return type: int. Return type must be either string or null.".into(), "Invalid".into()))
    );
    assert_eq!(annotated("Fail", "'  '"), vec![published.clone()]);
    assert_eq!(
        annotated("Fail", "' x '"),
        vec![published, Decision::Annotate("p/other".into(), "x".into())]
    );
    // Upstream's encoding of a failure: its fields in order, and HTML characters escaped.
    let failure = ValidationFailure {
        message: "failed expression: a < b && c > d".into(),
        policy: "p".into(),
        binding: "b".into(),
        expression_index: 1,
        validation_actions: vec!["Audit".into()],
    };
    assert_eq!(
        go_json(&[&failure]),
        r#"[{"message":"failed expression: a \u003c b \u0026\u0026 c \u003e d","policy":"p","binding":"b","expressionIndex":1,"validationActions":["Audit"]}]"#
    );

    let msgs = |obj: Value| {
        let mut c = Vec::new();
        validate_policy(&obj, &mut c);
        c.into_iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect::<Vec<_>>()
    };
    let ok = policy(
        json!({"failurePolicy": "Fail", "matchConstraints": deployments(),
        "auditAnnotations": [{"key": "a", "valueExpression": "'x'"}]}),
    );
    assert_eq!(msgs(ok), Vec::<String>::new());
    let bad = policy(
        json!({"failurePolicy": "Fail", "matchConstraints": deployments(),
        "auditAnnotations": [
            {"key": "-a", "valueExpression": "'x'"},
            {"key": "b", "valueExpression": "  "},
            {"key": "b", "valueExpression": "object."},
        ]}),
    );
    let m = msgs(bad);
    assert_eq!(m.len(), 4, "{m:?}");
    assert!(
        m[0].starts_with(
            "spec.auditAnnotations[0].key: Invalid value: \"p/-a\": name part must consist of"
        ),
        "{m:?}"
    );
    assert_eq!(
        m[1],
        "spec.auditAnnotations[1].valueExpression: Required value: valueExpression is not specified"
    );
    assert!(
        m[2].starts_with("spec.auditAnnotations[2].valueExpression: Invalid value: \"object.\": compilation failed: ERROR: <input>:1:"),
        "{m:?}"
    );
    assert_eq!(m[3], "spec.auditAnnotations[2].key: Duplicate value: \"b\"");
}
