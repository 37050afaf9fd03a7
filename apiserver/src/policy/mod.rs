//! ValidatingAdmissionPolicy (`admissionregistration.k8s.io/v1` ValidatingAdmissionPolicy and
//! ValidatingAdmissionPolicyBinding): CEL validations run in the apiserver, between the
//! mutating and the validating webhooks, as upstream's plugin runs them.
//!
//! A policy says what it matches (`matchConstraints`: resource rules with exclusions and
//! resource names, namespace and object selectors), when it applies (`matchConditions`), what
//! it computes (`variables`) and what must hold (`validations`, with `message`,
//! `messageExpression` and `reason`); a binding puts it in force for what it matches itself,
//! with parameters (`paramRef` to objects of the policy's `paramKind`) and actions (`Deny`,
//! `Warn`, `Audit`). Expressions are compiled when the objects are written, so a syntax error
//! or a reference to a variable the expression may not use is refused then; they see
//! `object`, `oldObject`, `request`, `namespaceObject`, `params` (with a paramKind) and
//! `variables`. The `authorizer` variable is not provided (expressions using it are refused).
//! `Audit` records the request's first failure in its audit event, as upstream's
//! `validation.policy.admission.k8s.io/validation_failure` annotation; `auditAnnotations` add
//! `<policy>/<key>` annotations of their own there.

pub mod expr;

use std::sync::Arc;

use serde_json::{Value, json};

use crate::authz::rbac::string_list;
use crate::selectors::LabelSelector;
use crate::status::{ApiError, Cause};
use crate::strategy::set_default;
use crate::webhook::config::Rule;
use expr::{Activation, Expression};

/// The variables every policy expression may use; `params` and `variables` are added when
/// the policy has a paramKind and variables.
const BASE_VARIABLES: &[&str] = &["object", "oldObject", "request", "namespaceObject"];

/// Longest message a messageExpression may produce.
const MAX_MESSAGE: usize = 5120;

/// Most `auditAnnotations` a policy may have.
const MAX_AUDIT_ANNOTATIONS: usize = 20;

/// Longest `valueExpression` of an audit annotation.
const MAX_AUDIT_EXPRESSION: usize = 5 * 1024;

/// Longest audit annotation value published (longer ones are cut).
const MAX_AUDIT_VALUE: usize = 10 * 1024;

/// A rule with the names it is limited to.
#[derive(Debug, Clone)]
pub struct NamedRule {
    /// The rule.
    pub rule: Rule,
    /// `resourceNames` (empty: any).
    pub names: Vec<String>,
}

/// What a policy or binding matches.
#[derive(Debug, Clone, Default)]
pub struct Matcher {
    /// `resourceRules` (for a binding, empty matches what the policy matches).
    pub rules: Vec<NamedRule>,
    /// `excludeResourceRules`.
    pub exclude: Vec<NamedRule>,
    /// `namespaceSelector`; None selects everything.
    pub namespace_selector: Option<LabelSelector>,
    /// `objectSelector`; None selects everything.
    pub object_selector: Option<LabelSelector>,
}

/// One request, as matching sees it.
pub struct Target<'a> {
    /// The operation.
    pub op: crate::webhook::Operation,
    /// The resource.
    pub res: &'a crate::resources::Resource,
    /// The subresource, or empty.
    pub sub: &'a str,
    /// The object's name.
    pub name: &'a str,
    /// The object (None for DELETE).
    pub obj: Option<&'a Value>,
    /// The object before (updates and deletes).
    pub old: Option<&'a Value>,
    /// The namespace object (for a Namespace, itself), when there is one.
    pub namespace: Option<&'a Value>,
}

impl Matcher {
    fn named(r: &NamedRule, t: &Target<'_>) -> bool {
        crate::webhook::rule_matches(&r.rule, t.op, t.res, t.sub)
            && (r.names.is_empty() || r.names.iter().any(|n| n == t.name))
    }

    /// Whether the request is matched; `all_if_no_rules` for a binding, whose empty rules
    /// defer to the policy.
    pub fn matches(&self, t: &Target<'_>, all_if_no_rules: bool) -> bool {
        if let Some(sel) = &self.namespace_selector
            && t.res.namespaced | (t.res.group.is_empty() && t.res.resource == "namespaces")
            && !t.namespace.is_some_and(|n| sel.matches_object(n))
        {
            return false;
        }
        if let Some(sel) = &self.object_selector
            && !t
                .obj
                .into_iter()
                .chain(t.old)
                .any(|o| sel.matches_object(o))
        {
            return false;
        }
        if self.exclude.iter().any(|r| Self::named(r, t)) {
            return false;
        }
        (all_if_no_rules && self.rules.is_empty()) || self.rules.iter().any(|r| Self::named(r, t))
    }
}

/// One validation.
#[derive(Debug)]
pub struct Validation {
    /// The expression (or why it does not compile).
    pub expression: Result<Expression, String>,
    /// Its source.
    pub source: String,
    /// `message`.
    pub message: Option<String>,
    /// `messageExpression`.
    pub message_expression: Option<Result<Expression, String>>,
    /// `reason` (default Invalid).
    pub reason: Option<String>,
}

/// A policy ready to run.
#[derive(Debug)]
pub struct Policy {
    /// Its name.
    pub name: String,
    /// `failurePolicy: Fail` (else Ignore).
    pub fail_closed: bool,
    /// `matchConstraints` (None: the required field is missing).
    pub matcher: Option<Matcher>,
    /// `matchConditions`.
    pub conditions: Vec<(String, Result<Expression, String>)>,
    /// `variables`.
    pub variables: Vec<(String, Result<Expression, String>)>,
    /// `validations`.
    pub validations: Vec<Validation>,
    /// `auditAnnotations`: the annotation's key (`<policy>/<key>`) and its value's expression.
    pub audit_annotations: Vec<(String, Result<Expression, String>)>,
    /// `paramKind` as (apiVersion, kind).
    pub param_kind: Option<(String, String)>,
}

/// Where a binding's parameters are.
#[derive(Debug, Clone)]
pub struct ParamRef {
    /// `name`.
    pub name: Option<String>,
    /// `namespace` (empty: the request's, for a namespaced kind).
    pub namespace: Option<String>,
    /// `selector`.
    pub selector: Option<LabelSelector>,
    /// `parameterNotFoundAction: Deny` (else Allow).
    pub deny_if_missing: bool,
}

/// A binding ready to run.
#[derive(Debug, Clone)]
pub struct Binding {
    /// Its name.
    pub name: String,
    /// `policyName`.
    pub policy: String,
    /// `paramRef`.
    pub param_ref: Option<ParamRef>,
    /// `matchResources` (None: what the policy matches).
    pub matcher: Option<Matcher>,
    /// `validationActions`, as written (an Audit record names them).
    pub actions: Vec<String>,
}

impl Binding {
    /// Whether `validationActions` has `action` (`Deny`, `Warn`, `Audit`).
    pub fn acts(&self, action: &str) -> bool {
        self.actions.iter().any(|a| a == action)
    }
}

/// A policy with one of its bindings.
#[derive(Debug)]
pub struct Bound {
    /// The policy.
    pub policy: Arc<Policy>,
    /// The binding.
    pub binding: Binding,
}

/// The variables a policy's expressions may use.
fn declared(has_params: bool, has_variables: bool) -> Vec<&'static str> {
    let mut v = BASE_VARIABLES.to_vec();
    if has_params {
        v.push("params");
    }
    if has_variables {
        v.push("variables");
    }
    v
}

fn rules_of(v: Option<&Value>) -> Vec<NamedRule> {
    v.and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|r| NamedRule {
            rule: crate::webhook::config::rule_of(r),
            names: string_list(r.get("resourceNames")),
        })
        .collect()
}

fn matcher_of(m: &Value) -> Matcher {
    let selector = |k: &str| {
        crate::selectors::from_label_selector_object(m.get(k))
            .ok()
            .flatten()
            .filter(|s| !s.is_empty())
    };
    Matcher {
        rules: rules_of(m.get("resourceRules")),
        exclude: rules_of(m.get("excludeResourceRules")),
        namespace_selector: selector("namespaceSelector"),
        object_selector: selector("objectSelector"),
    }
}

fn str_of<'a>(v: &'a Value, k: &str) -> Option<&'a str> {
    v.get(k).and_then(Value::as_str)
}

/// A policy object, parsed and compiled.
pub fn policy_of(obj: &Value) -> Policy {
    let spec = obj.get("spec").cloned().unwrap_or(Value::Null);
    let param_kind = spec.get("paramKind").filter(|p| p.is_object()).map(|p| {
        (
            str_of(p, "apiVersion").unwrap_or("").to_string(),
            str_of(p, "kind").unwrap_or("").to_string(),
        )
    });
    let list = |k: &str| {
        spec.get(k)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let variables = list("variables");
    let names = declared(param_kind.is_some(), !variables.is_empty());
    // matchConditions run before variables are computed, so they may not use them.
    let condition_names = declared(param_kind.is_some(), false);
    let compile = |src: &str| expr::compile(src, &names);
    let named = |items: Vec<Value>, names: &[&str]| {
        items
            .iter()
            .map(|c| {
                (
                    str_of(c, "name").unwrap_or("").to_string(),
                    expr::compile(str_of(c, "expression").unwrap_or(""), names),
                )
            })
            .collect()
    };
    let audit_annotations = list("auditAnnotations")
        .iter()
        .map(|a| {
            let key = str_of(a, "key").unwrap_or("");
            let value = str_of(a, "valueExpression").unwrap_or("").trim();
            (
                format!("{}/{key}", crate::object::name(obj)),
                compile(value),
            )
        })
        .collect();
    Policy {
        name: crate::object::name(obj).to_string(),
        audit_annotations,
        fail_closed: str_of(&spec, "failurePolicy") != Some("Ignore"),
        matcher: spec
            .get("matchConstraints")
            .filter(|m| m.is_object())
            .map(matcher_of),
        conditions: named(list("matchConditions"), &condition_names),
        variables: named(variables, &names),
        validations: list("validations")
            .iter()
            .map(|v| {
                let source = str_of(v, "expression").unwrap_or("").to_string();
                Validation {
                    expression: compile(&source),
                    source,
                    message: str_of(v, "message")
                        .map(str::trim)
                        .filter(|m| !m.is_empty())
                        .map(str::to_string),
                    message_expression: str_of(v, "messageExpression")
                        .filter(|m| !m.trim().is_empty())
                        .map(compile),
                    reason: str_of(v, "reason").map(str::to_string),
                }
            })
            .collect(),
        param_kind,
    }
}

/// A binding object, parsed.
pub fn binding_of(obj: &Value) -> Binding {
    let spec = obj.get("spec").cloned().unwrap_or(Value::Null);
    let actions = string_list(spec.get("validationActions"));
    Binding {
        name: crate::object::name(obj).to_string(),
        policy: str_of(&spec, "policyName").unwrap_or("").to_string(),
        param_ref: spec
            .get("paramRef")
            .filter(|p| p.is_object())
            .map(|p| ParamRef {
                name: str_of(p, "name")
                    .filter(|s| !s.is_empty())
                    .map(str::to_string),
                namespace: str_of(p, "namespace")
                    .filter(|s| !s.is_empty())
                    .map(str::to_string),
                selector: p.get("selector").filter(|s| !s.is_null()).and_then(|_| {
                    crate::selectors::from_label_selector_object(p.get("selector"))
                        .ok()
                        .flatten()
                }),
                deny_if_missing: str_of(p, "parameterNotFoundAction") == Some("Deny"),
            }),
        matcher: spec
            .get("matchResources")
            .filter(|m| m.is_object())
            .map(matcher_of),
        actions,
    }
}

/// Pairs every binding with its policy, in policy then binding name order; a binding whose
/// policy does not exist does nothing.
pub fn bind(policies: &[Value], bindings: &[Value]) -> Vec<Arc<Bound>> {
    let policies: Vec<Arc<Policy>> = policies.iter().map(|p| Arc::new(policy_of(p))).collect();
    let bindings: Vec<Binding> = bindings.iter().map(binding_of).collect();
    let mut out = Vec::new();
    for p in &policies {
        for b in bindings.iter().filter(|b| b.policy == p.name) {
            out.push(Arc::new(Bound {
                policy: p.clone(),
                binding: b.clone(),
            }));
        }
    }
    out
}

/// What one policy and binding decided about a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Refused: the message and the reason.
    Deny(String, String),
    /// Allowed with a warning.
    Warn(String),
    /// A failure for the request's audit event (`Audit`).
    Audit(ValidationFailure),
    /// An audit annotation (`auditAnnotations`): its key and value.
    Annotate(String, String),
}

/// The audit annotation that holds a request's first `Audit` failure, in a JSON array.
pub const VALIDATION_FAILURE: &str = "validation.policy.admission.k8s.io/validation_failure";

/// A failure of an `Audit` binding, as upstream records it (its fields in upstream's order).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ValidationFailure {
    /// The failure's message.
    pub message: String,
    /// The policy's name.
    pub policy: String,
    /// The binding's name.
    pub binding: String,
    /// The index of the validation that failed (0 for a matchCondition's error).
    pub expression_index: usize,
    /// The binding's `validationActions`.
    pub validation_actions: Vec<String>,
}

/// `v` as Go's `encoding/json` writes it: struct fields in order, and `<`, `>`, `&`, U+2028
/// and U+2029 escaped (they can only occur inside strings).
pub fn go_json<T: serde::Serialize>(v: &T) -> String {
    let plain = serde_json::to_string(v).unwrap_or_default();
    let mut out = String::with_capacity(plain.len());
    for c in plain.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out
}

impl Bound {
    /// A refusal whatever the binding's actions (a configuration error), under the failure
    /// policy.
    pub fn config_error(&self, msg: String) -> Vec<Decision> {
        if self.policy.fail_closed {
            vec![self.denial(&msg, "Invalid")]
        } else {
            Vec::new()
        }
    }

    /// This policy and binding's refusal of a request.
    fn denial(&self, msg: &str, reason: &str) -> Decision {
        Decision::Deny(
            format!(
                "ValidatingAdmissionPolicy '{}' with binding '{}' denied request: {msg}",
                self.policy.name, self.binding.name
            ),
            reason.to_string(),
        )
    }

    /// A failed validation (the `index`th, or an expression error), as the binding's actions
    /// say.
    fn failed(&self, msg: &str, reason: &str, index: usize) -> Vec<Decision> {
        let (p, b) = (&self.policy.name, &self.binding.name);
        let mut out = Vec::new();
        if self.binding.acts("Deny") {
            out.push(self.denial(msg, reason));
        }
        if self.binding.acts("Warn") {
            out.push(Decision::Warn(format!(
                "Validation failed for ValidatingAdmissionPolicy '{p}' with binding '{b}': {msg}"
            )));
        }
        if self.binding.acts("Audit") {
            out.push(Decision::Audit(ValidationFailure {
                message: msg.to_string(),
                policy: p.clone(),
                binding: b.clone(),
                expression_index: index,
                validation_actions: self.binding.actions.clone(),
            }));
        }
        out
    }

    /// Runs the policy with one set of parameters (`params`: None when the binding has none)
    /// over `act` (object, oldObject, request, namespaceObject).
    pub fn evaluate(&self, act: &mut Activation, params: Option<&Value>) -> Vec<Decision> {
        let p = &self.policy;
        // (The activation is shared between policies: no variables of another one.)
        act.set("variables", ::cel::Value::Null);
        if p.param_kind.is_some() {
            act.set("params", params.map_or(::cel::Value::Null, expr::to_cel));
        }
        // matchConditions: any false, no match; else errors follow the failure policy.
        let mut errors = Vec::new();
        for (_, c) in &p.conditions {
            match c.as_ref().map(|e| (e, e.eval_bool(act))) {
                Ok((_, Ok(true))) => {}
                Ok((_, Ok(false))) => return Vec::new(),
                Ok((e, Err(why))) => errors.push(format!(
                    "expression '{}' resulted in error: {why}",
                    e.source
                )),
                Err(why) => errors.push(format!("compilation error: {why}")),
            }
        }
        if !errors.is_empty() {
            return if p.fail_closed {
                self.failed(&crate::admission::aggregate(errors), "Invalid", 0)
            } else {
                Vec::new()
            };
        }
        if !p.variables.is_empty() {
            let mut vars = std::collections::HashMap::new();
            for (name, e) in &p.variables {
                if let Ok(e) = e {
                    act.set("variables", ::cel::Value::from(vars.clone()));
                    if let Ok(v) = e.eval(act) {
                        vars.insert(name.clone(), v);
                    }
                }
            }
            act.set("variables", ::cel::Value::from(vars));
        }
        let mut out = Vec::new();
        for (i, v) in p.validations.iter().enumerate() {
            let reason = v.reason.as_deref().unwrap_or("Invalid");
            match v.expression.as_ref().map(|e| e.eval_bool(act)) {
                Ok(Ok(true)) => {}
                Ok(Ok(false)) => {
                    let from_expression = match &v.message_expression {
                        Some(Ok(m)) => match m.eval(act) {
                            Ok(::cel::Value::String(s)) => {
                                let s = s.trim();
                                (!s.is_empty() && !s.contains('\n') && s.len() <= MAX_MESSAGE)
                                    .then(|| s.to_string())
                            }
                            _ => None,
                        },
                        _ => None,
                    };
                    let msg = from_expression
                        .or_else(|| v.message.clone())
                        .unwrap_or_else(|| format!("failed expression: {}", v.source.trim()));
                    out.extend(self.failed(&msg, reason, i));
                }
                Ok(Err(why)) if p.fail_closed => out.extend(self.failed(
                    &format!("expression '{}' resulted in error: {why}", v.source),
                    "Invalid",
                    i,
                )),
                Err(why) if p.fail_closed => {
                    out.extend(self.failed(&format!("compilation error: {why}"), "Invalid", i))
                }
                _ => {}
            }
        }
        // Audit annotations: a string is published, trimmed (an empty one, or null, is not);
        // a value of another type refuses the request, and an error does under Fail,
        // whatever the binding's actions, as upstream.
        for (key, e) in &p.audit_annotations {
            let (error, always) = match e.as_ref().map(|e| (e, e.eval(act))) {
                Ok((_, Ok(::cel::Value::Null))) => continue,
                Ok((_, Ok(::cel::Value::String(v)))) => {
                    let v = v.trim();
                    if !v.is_empty() {
                        let mut cut = v.len().min(MAX_AUDIT_VALUE);
                        while !v.is_char_boundary(cut) {
                            cut -= 1;
                        }
                        out.push(Decision::Annotate(key.clone(), v[..cut].to_string()));
                    }
                    continue;
                }
                Ok((e, Ok(other))) => (
                    format!(
                        "valueExpression '{}' resulted in unsupported return type: {}. Return type must be either string or null.",
                        e.source,
                        expr::type_name(&other)
                    ),
                    true,
                ),
                Ok((e, Err(why))) => (
                    format!("expression '{}' resulted in error: {why}", e.source),
                    false,
                ),
                Err(why) => (format!("compilation error: {why}"), false),
            };
            if always || p.fail_closed {
                out.push(self.denial(&error, "Invalid"));
            }
        }
        out
    }
}

/// The refusal of a request by a Deny decision: `reason` gives the status code.
pub fn refusal(res: &crate::resources::Resource, name: &str, msg: &str, reason: &str) -> ApiError {
    let (code, reason): (u16, &'static str) = match reason {
        "Forbidden" => (403, "Forbidden"),
        "Unauthorized" => (401, "Unauthorized"),
        "RequestEntityTooLarge" => (413, "RequestEntityTooLarge"),
        _ => (422, "Invalid"),
    };
    let mut e = crate::admission::forbidden_named(res, name, msg);
    (e.code, e.reason) = (code, reason);
    e.details.causes.push(Cause::new("", "", msg));
    e
}

/// The request as CEL's `request` variable.
#[allow(clippy::too_many_arguments)]
pub fn request_value(
    op: &str,
    kind: (&str, &str, &str),
    res: &crate::resources::Resource,
    sub: &str,
    ns: &str,
    name: &str,
    user: &crate::authz::UserInfo,
    dry_run: bool,
) -> ::cel::Value {
    let k = json!({"group": kind.0, "version": kind.1, "kind": kind.2});
    let r = json!({"group": res.group, "version": res.version, "resource": res.resource});
    expr::to_cel(&json!({
        "kind": k, "resource": r, "subResource": sub,
        "requestKind": k, "requestResource": r, "requestSubResource": sub,
        "name": name, "namespace": ns, "operation": op,
        "userInfo": {"username": user.name, "uid": user.uid, "groups": user.groups, "extra": user.extra},
        "dryRun": dry_run,
    }))
}

/// What `namespaceObject` shows of a namespace: its metadata (without managed fields and
/// owners), spec and status.
pub fn namespace_value(ns: Option<&Value>) -> ::cel::Value {
    let Some(ns) = ns else {
        return ::cel::Value::Null;
    };
    let mut n = ns.clone();
    if let Some(m) = n.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("managedFields");
        m.remove("ownerReferences");
    }
    expr::to_cel(&n)
}

/// Keeps a policy's status current, as upstream's status controller does:
/// `observedGeneration` is its generation and `typeChecking` is present (empty: expressions
/// are not checked against the schemas of what they match). `pending` holds the writes in
/// flight, so a change seen twice is written once.
pub fn keep_status(
    registry: &crate::registry::Registry,
    obj: &Value,
    pending: &Arc<parking_lot::Mutex<std::collections::HashSet<(String, i64)>>>,
) {
    let generation = obj
        .pointer("/metadata/generation")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    if obj
        .pointer("/status/observedGeneration")
        .and_then(Value::as_i64)
        == Some(generation)
        && obj.pointer("/status/typeChecking").is_some()
    {
        return;
    }
    let name = crate::object::name(obj).to_string();
    if !pending.lock().insert((name.clone(), generation)) {
        return;
    }
    let (registry, old, pending) = (registry.clone(), obj.clone(), pending.clone());
    tokio::spawn(async move {
        let res =
            crate::resources::find(crate::webhook::GROUP, "v1", "validatingadmissionpolicies")
                .expect("policies are served");
        let mut new = old.clone();
        new["status"] = json!({"observedGeneration": generation, "typeChecking": {}});
        if let Err(e) = registry.write_status(res, "", &name, &old, new).await
            && !matches!(e.code, 404 | 409)
        {
            tracing::warn!(policy = %name, error = %e.message, "could not write the policy's status");
        }
        pending.lock().remove(&(name, generation));
    });
}

// ---- defaults and validation of the objects ----

fn default_matcher(m: &mut Value) {
    set_default(m, &["matchPolicy"], json!("Equivalent"));
    set_default(m, &["namespaceSelector"], json!({}));
    set_default(m, &["objectSelector"], json!({}));
    for list in ["resourceRules", "excludeResourceRules"] {
        for r in m
            .get_mut(list)
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            set_default(r, &["scope"], json!("*"));
        }
    }
}

/// Upstream's v1 defaults of a policy.
pub fn default_policy(obj: &mut Value) {
    set_default(obj, &["spec", "failurePolicy"], json!("Fail"));
    if let Some(m) = obj
        .pointer_mut("/spec/matchConstraints")
        .filter(|m| m.is_object())
    {
        default_matcher(m);
    }
}

/// Upstream's v1 defaults of a binding.
pub fn default_binding(obj: &mut Value) {
    if let Some(m) = obj
        .pointer_mut("/spec/matchResources")
        .filter(|m| m.is_object())
    {
        default_matcher(m);
    }
}

fn invalid(causes: &mut Vec<Cause>, field: &str, value: &str, msg: &str) {
    causes.push(Cause::new(
        "FieldValueInvalid",
        field,
        format!("Invalid value: {value:?}: {msg}"),
    ));
}

fn required(causes: &mut Vec<Cause>, field: &str, msg: &str) {
    let text = if msg.is_empty() {
        "Required value".to_string()
    } else {
        format!("Required value: {msg}")
    };
    causes.push(Cause::new("FieldValueRequired", field, text));
}

fn validate_matcher(m: &Value, path: &str, policy: bool, causes: &mut Vec<Cause>) {
    let rules = m.get("resourceRules").and_then(Value::as_array);
    if policy && rules.is_none_or(|r| r.is_empty()) {
        required(causes, &format!("{path}.resourceRules"), "");
    }
    match str_of(m, "matchPolicy") {
        Some("Equivalent" | "Exact") | None => {}
        Some(other) => causes.push(Cause::new(
            "FieldValueNotSupported",
            &format!("{path}.matchPolicy"),
            format!("Unsupported value: {other:?}: supported values: \"Equivalent\", \"Exact\""),
        )),
    }
    for k in ["namespaceSelector", "objectSelector"] {
        if let Err(e) = crate::selectors::from_label_selector_object(m.get(k)) {
            invalid(causes, &format!("{path}.{k}"), "", &e.message);
        }
    }
    for list in ["resourceRules", "excludeResourceRules"] {
        for (i, r) in m
            .get(list)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let at = format!("{path}.{list}[{i}]");
            crate::webhook::config::validate_rule(r, &at, causes);
        }
    }
}

fn check_expression(
    causes: &mut Vec<Cause>,
    field: &str,
    src: Option<&str>,
    names: &[&str],
    what: &str,
) {
    match src {
        None | Some("") => required(causes, field, what),
        Some(s) => {
            if let Err(e) = expr::compile(s, names) {
                invalid(causes, field, s, &format!("compilation failed: {e}"));
            }
        }
    }
}

/// Validation of a policy, as upstream's (its main rules).
pub fn validate_policy(obj: &Value, causes: &mut Vec<Cause>) {
    let spec = obj.get("spec").cloned().unwrap_or(Value::Null);
    match str_of(&spec, "failurePolicy") {
        Some("Fail" | "Ignore") => {}
        None => required(causes, "spec.failurePolicy", ""),
        Some(other) => causes.push(Cause::new(
            "FieldValueNotSupported",
            "spec.failurePolicy",
            format!("Unsupported value: {other:?}: supported values: \"Fail\", \"Ignore\""),
        )),
    }
    let param_kind = spec.get("paramKind").filter(|p| p.is_object());
    if let Some(p) = param_kind {
        if str_of(p, "apiVersion").is_none_or(str::is_empty) {
            required(causes, "spec.paramKind.apiVersion", "");
        }
        if str_of(p, "kind").is_none_or(str::is_empty) {
            required(causes, "spec.paramKind.kind", "");
        }
    }
    match spec.get("matchConstraints").filter(|m| m.is_object()) {
        Some(m) => validate_matcher(m, "spec.matchConstraints", true, causes),
        None => required(causes, "spec.matchConstraints", ""),
    }
    let list = |k: &str| {
        spec.get(k)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let (validations, variables, conditions) = (
        list("validations"),
        list("variables"),
        list("matchConditions"),
    );
    if validations.is_empty() && list("auditAnnotations").is_empty() {
        for f in ["spec.validations", "spec.auditAnnotations"] {
            required(
                causes,
                f,
                "validations or auditAnnotations must contain at least one item",
            );
        }
    }
    let names = declared(param_kind.is_some(), !variables.is_empty());
    let annotations = list("auditAnnotations");
    if annotations.len() > MAX_AUDIT_ANNOTATIONS {
        causes.push(Cause::new(
            "FieldValueInvalid",
            "spec.auditAnnotations",
            format!(
                "Invalid value: must not have more than {MAX_AUDIT_ANNOTATIONS} auditAnnotations"
            ),
        ));
    }
    let name = crate::object::name(obj);
    let mut keys = std::collections::BTreeSet::new();
    for (i, a) in annotations.iter().enumerate() {
        let at = format!("spec.auditAnnotations[{i}]");
        let key = str_of(a, "key").unwrap_or("");
        let full = format!("{name}/{key}");
        if name.is_empty() {
            invalid(
                causes,
                &format!("{at}.key"),
                key,
                "requires metadata.name be non-empty",
            );
        } else if !crate::strategy::valid_qualified_key(&full) {
            invalid(
                causes,
                &format!("{at}.key"),
                &full,
                "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')",
            );
        }
        let value = str_of(a, "valueExpression").unwrap_or("").trim();
        let field = format!("{at}.valueExpression");
        if value.is_empty() {
            required(causes, &field, "valueExpression is not specified");
        } else if value.len() > MAX_AUDIT_EXPRESSION {
            required(
                causes,
                &field,
                &format!("must not exceed {MAX_AUDIT_EXPRESSION} bytes in length"),
            );
        } else {
            check_expression(causes, &field, Some(value), &names, "");
        }
        if !keys.insert(key) {
            causes.push(Cause::new(
                "FieldValueDuplicate",
                &format!("{at}.key"),
                format!("Duplicate value: {key:?}"),
            ));
        }
    }
    for (i, v) in validations.iter().enumerate() {
        let at = format!("spec.validations[{i}]");
        check_expression(
            causes,
            &format!("{at}.expression"),
            str_of(v, "expression"),
            &names,
            "expression is not specified",
        );
        if let Some(m) = str_of(v, "messageExpression") {
            if m.trim().is_empty() {
                invalid(
                    causes,
                    &format!("{at}.messageExpression"),
                    m,
                    "must be non-empty if specified",
                );
            } else if let Err(e) = expr::compile(m, &names) {
                invalid(
                    causes,
                    &format!("{at}.messageExpression"),
                    m,
                    &format!("compilation failed: {e}"),
                );
            }
        }
        if let Some(m) = str_of(v, "message") {
            if m.trim().is_empty() {
                invalid(
                    causes,
                    &format!("{at}.message"),
                    m,
                    "message must be non-empty if specified",
                );
            } else if m.contains(['\n', '\r']) {
                invalid(
                    causes,
                    &format!("{at}.message"),
                    m,
                    "message must not contain line breaks",
                );
            }
        }
        if let Some(r) = str_of(v, "reason")
            && !matches!(
                r,
                "Forbidden" | "Invalid" | "RequestEntityTooLarge" | "Unauthorized"
            )
        {
            causes.push(Cause::new(
                "FieldValueNotSupported",
                &format!("{at}.reason"),
                format!("Unsupported value: {r:?}: supported values: \"Forbidden\", \"Invalid\", \"RequestEntityTooLarge\""),
            ));
        }
    }
    validate_conditions(
        &conditions,
        "spec.matchConditions",
        &declared(param_kind.is_some(), false),
        causes,
    );
    let mut seen = Vec::new();
    for (i, v) in variables.iter().enumerate() {
        let at = format!("spec.variables[{i}]");
        let name = str_of(v, "name").unwrap_or("");
        let ident = name
            .chars()
            .next()
            .is_some_and(|c| c == '_' || c.is_ascii_alphabetic())
            && name.chars().all(|c| c == '_' || c.is_ascii_alphanumeric());
        if name.is_empty() {
            required(causes, &format!("{at}.name"), "name is not specified");
        } else if !ident {
            invalid(
                causes,
                &format!("{at}.name"),
                name,
                "name is not a valid CEL identifier",
            );
        }
        check_expression(
            causes,
            &format!("{at}.expression"),
            str_of(v, "expression"),
            &names,
            "expression is not specified",
        );
        seen.push(name);
    }
}

/// matchConditions (of a policy or a webhook): at most 64, named uniquely with qualified
/// names, expressions that compile against `names`.
pub fn validate_conditions(conds: &[Value], path: &str, names: &[&str], causes: &mut Vec<Cause>) {
    if conds.len() > 64 {
        causes.push(Cause::new(
            "FieldValueTooMany",
            path,
            format!("Too many: {}: must have at most 64 items", conds.len()),
        ));
    }
    let mut seen = Vec::new();
    for (i, c) in conds.iter().enumerate() {
        let at = format!("{path}[{i}]");
        let name = str_of(c, "name").unwrap_or("");
        if name.is_empty() {
            required(causes, &format!("{at}.name"), "");
        } else if !crate::selectors::valid_label_key(name) {
            invalid(
                causes,
                &format!("{at}.name"),
                name,
                "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')",
            );
        } else if seen.contains(&name) {
            causes.push(Cause::new(
                "FieldValueDuplicate",
                &format!("{at}.name"),
                format!("Duplicate value: {name:?}"),
            ));
        }
        seen.push(name);
        check_expression(
            causes,
            &format!("{at}.expression"),
            str_of(c, "expression"),
            names,
            "",
        );
    }
}

/// Validation of a binding, as upstream's (its main rules).
pub fn validate_binding(obj: &Value, causes: &mut Vec<Cause>) {
    let spec = obj.get("spec").cloned().unwrap_or(Value::Null);
    match str_of(&spec, "policyName") {
        None | Some("") => required(causes, "spec.policyName", ""),
        Some(p) if !crate::strategy::valid_dns_subdomain(p) => invalid(
            causes,
            "spec.policyName",
            p,
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')",
        ),
        Some(_) => {}
    }
    if let Some(p) = spec.get("paramRef").filter(|p| p.is_object()) {
        let name = str_of(p, "name").filter(|s| !s.is_empty());
        let selector = p.get("selector").filter(|s| !s.is_null());
        match (name, selector) {
            (Some(_), Some(_)) => {
                for f in ["name", "selector"] {
                    causes.push(Cause::new(
                        "FieldValueForbidden",
                        &format!("spec.paramRef.{f}"),
                        "Forbidden: name and selector are mutually exclusive",
                    ));
                }
            }
            (None, None) => required(
                causes,
                "spec.paramRef",
                "one of name or selector must be specified",
            ),
            _ => {}
        }
        match str_of(p, "parameterNotFoundAction") {
            Some("Deny" | "Allow") => {}
            None => required(causes, "spec.paramRef.parameterNotFoundAction", ""),
            Some(other) => causes.push(Cause::new(
                "FieldValueNotSupported",
                "spec.paramRef.parameterNotFoundAction",
                format!("Unsupported value: {other:?}: supported values: \"Deny\", \"Allow\""),
            )),
        }
    }
    if let Some(m) = spec.get("matchResources").filter(|m| m.is_object()) {
        // (Upstream reports these under this misspelled path.)
        validate_matcher(m, "spec.matchResouces", false, causes);
    }
    let actions = string_list(spec.get("validationActions"));
    if actions.is_empty() {
        required(
            causes,
            "spec.validationActions",
            "at least one validation action is required",
        );
    }
    let mut seen = Vec::new();
    for (i, a) in actions.iter().enumerate() {
        let at = format!("spec.validationActions[{i}]");
        if !matches!(a.as_str(), "Audit" | "Deny" | "Warn") {
            causes.push(Cause::new(
                "FieldValueNotSupported",
                &at,
                format!(
                    "Unsupported value: {a:?}: supported values: \"Audit\", \"Deny\", \"Warn\""
                ),
            ));
        } else if seen.contains(&a) {
            causes.push(Cause::new(
                "FieldValueDuplicate",
                &at,
                format!("Duplicate value: {a:?}"),
            ));
        }
        seen.push(a);
    }
    if seen.iter().any(|a| *a == "Deny") && seen.iter().any(|a| *a == "Warn") {
        causes.push(Cause::new(
            "FieldValueInvalid",
            "spec.validationActions",
            format!("Invalid value: {actions:?}: must not contain both Deny and Warn (repeating the same validation failure information in the API response and headers serves no purpose)"),
        ));
    }
}

#[cfg(test)]
mod tests;
