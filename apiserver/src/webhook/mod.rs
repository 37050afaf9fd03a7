//! The MutatingAdmissionWebhook and ValidatingAdmissionWebhook admission plugins: webhooks from
//! `admissionregistration.k8s.io/v1` configurations, matched by rules, namespace and object
//! selectors, called with an `admission.k8s.io/v1` AdmissionReview over HTTPS.
//!
//! As upstream:
//! - Configurations apply in the order of their names, webhooks in their order within one.
//! - Mutating webhooks run one after another, after the built-in mutating plugins; each JSON
//!   patch is applied before the next is called. When a later webhook changes the object, the
//!   earlier ones with `reinvocationPolicy: IfNeeded` are called once more.
//! - Validating webhooks run in parallel after validation and the built-in validating plugins;
//!   one denial refuses the request.
//! - A denial answers with the webhook's status (at least 400), its message prefixed with
//!   `admission webhook "name" denied the request`. A webhook that cannot be called, times
//!   out or answers nonsense refuses the request with a 500 under `failurePolicy: Fail` and is
//!   skipped under `Ignore`.
//! - Writes of webhook configurations are never sent to webhooks, so a broken webhook can
//!   always be removed.
//! - Service references are resolved to the Service's endpoints (as upstream's
//!   `--enable-aggregator-routing`), and to its ClusterIP when it has none; the certificate
//!   must name `<service>.<namespace>.svc`.
//!
//! - `matchConditions` (CEL, see [`crate::policy::expr`]) are evaluated after the rules and
//!   selectors: any false skips the webhook; otherwise an error refuses the request (403)
//!   under `Fail` and skips the webhook under `Ignore`.
//! - The ValidatingAdmissionPolicy plugin ([`crate::policy`]) runs here too, before the
//!   validating webhooks, on the same matching and namespace lookups.
//!
//! Not here yet: the CONNECT operation (exec, attach, port-forward), webhook client
//! credentials (`--admission-control-config-file`), and the audit annotations of mutations.

pub mod client;
pub mod config;
pub mod remote;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::RwLock;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

pub use config::{Hook, Kind, Rule, Target};

use crate::authz::UserInfo;
use crate::resources::Resource;
use crate::status::{ApiError, ApiResult, Cause};

/// The API group of the configurations.
pub const GROUP: &str = "admissionregistration.k8s.io";

/// An admission operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// CREATE.
    Create,
    /// UPDATE.
    Update,
    /// DELETE.
    Delete,
}

impl Operation {
    /// Upstream's name of the operation.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Create => "CREATE",
            Operation::Update => "UPDATE",
            Operation::Delete => "DELETE",
        }
    }

    fn options_kind(self) -> &'static str {
        match self {
            Operation::Create => "CreateOptions",
            Operation::Update => "UpdateOptions",
            Operation::Delete => "DeleteOptions",
        }
    }
}

#[derive(Default)]
struct Hooks {
    mutating: Vec<Arc<Hook>>,
    validating: Vec<Arc<Hook>>,
    /// ValidatingAdmissionPolicies with their bindings.
    policies: Vec<Arc<crate::policy::Bound>>,
}

/// The webhooks in force, rebuilt from the watch caches of the configurations on every change.
pub struct Source {
    hooks: RwLock<Arc<Hooks>>,
    synced: AtomicBool,
}

impl Source {
    /// Follows the configuration caches of `cache` until `shutdown`; with `registry`, also
    /// keeps each policy's status (`observedGeneration`, `typeChecking`) current.
    pub fn start(
        cache: &Arc<crate::cache::Cache>,
        client: Arc<client::Client>,
        registry: Option<crate::registry::Registry>,
        shutdown: &CancellationToken,
    ) -> Arc<Self> {
        let src = Arc::new(Source {
            hooks: RwLock::new(Arc::new(Hooks::default())),
            synced: AtomicBool::new(false),
        });
        let find = |r: &str| {
            let res =
                crate::resources::find(GROUP, "v1", r).expect("webhook configurations are served");
            cache
                .get(res)
                .expect("webhook configurations are always cached")
                .clone()
        };
        let cachers = [
            find("mutatingwebhookconfigurations"),
            find("validatingwebhookconfigurations"),
            find("validatingadmissionpolicies"),
            find("validatingadmissionpolicybindings"),
        ];
        let me = src.clone();
        let status_writes = Arc::new(parking_lot::Mutex::new(std::collections::HashSet::new()));
        // What the last rebuild was made from: webhooks are rebuilt (and their connections
        // dropped) only when their configurations change, and policies recompiled only when a
        // policy (by uid and generation) or a binding changes, not when the server writes a status.
        let mut last_hooks: Option<(Vec<Value>, Vec<Value>)> = None;
        // (Each policy by name, uid and generation; the bindings as they are.)
        type PolicyKey = (Vec<(String, String, i64)>, Vec<Value>);
        let mut last_policies: Option<PolicyKey> = None;
        tokio::spawn(crate::cache::follow(
            cachers.to_vec(),
            shutdown.clone(),
            move |v| {
                // Cache entries are ordered by key, which ends in the name.
                let build = |objs: &[Value], kind| {
                    objs.iter()
                        .flat_map(|o| config::hooks_of(o, kind))
                        .map(Arc::new)
                        .collect()
                };
                let current = me.current();
                let hooks_key = (v[0].clone(), v[1].clone());
                let (mutating, validating) = if last_hooks.as_ref() == Some(&hooks_key) {
                    (current.mutating.clone(), current.validating.clone())
                } else {
                    client.clear();
                    (build(&v[0], Kind::Mutating), build(&v[1], Kind::Validating))
                };
                last_hooks = Some(hooks_key);
                let policies_key = (
                    v[2].iter()
                        .map(|p| {
                            let g = p.pointer("/metadata/generation").and_then(Value::as_i64);
                            (
                                crate::object::name(p).to_string(),
                                crate::object::meta_str(p, "uid").to_string(),
                                g.unwrap_or(0),
                            )
                        })
                        .collect(),
                    v[3].clone(),
                );
                let policies = if last_policies.as_ref() == Some(&policies_key) {
                    current.policies.clone()
                } else {
                    crate::policy::bind(&v[2], &v[3])
                };
                last_policies = Some(policies_key);
                *me.hooks.write() = Arc::new(Hooks {
                    mutating,
                    validating,
                    policies,
                });
                me.synced.store(true, Ordering::Release);
                if let Some(r) = &registry {
                    for p in &v[2] {
                        crate::policy::keep_status(r, p, &status_writes);
                    }
                }
            },
        ));
        src
    }

    /// A source of fixed webhooks (tests).
    pub fn fixed(mutating: Vec<Hook>, validating: Vec<Hook>) -> Arc<Self> {
        Arc::new(Source {
            hooks: RwLock::new(Arc::new(Hooks {
                mutating: mutating.into_iter().map(Arc::new).collect(),
                validating: validating.into_iter().map(Arc::new).collect(),
                policies: Vec::new(),
            })),
            synced: AtomicBool::new(true),
        })
    }

    /// Whether the configurations have been read from complete caches.
    pub fn synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    fn current(&self) -> Arc<Hooks> {
        self.hooks.read().clone()
    }
}

/// The webhook admission plugins of a server.
pub struct Webhooks {
    source: Arc<Source>,
    client: Arc<client::Client>,
    cache: Option<Arc<crate::cache::Cache>>,
    registry: Option<crate::registry::Registry>,
    mutating: bool,
    validating: bool,
    /// The ValidatingAdmissionPolicy plugin is on.
    policies: bool,
    metrics: Option<crate::metrics::Metrics>,
}

impl Webhooks {
    /// The plugins (`mutating`, `validating`, `policies` say which are on), following
    /// `cache`.
    pub fn start(
        cache: &Arc<crate::cache::Cache>,
        registry: crate::registry::Registry,
        metrics: crate::metrics::Metrics,
        mutating: bool,
        validating: bool,
        policies: bool,
        shutdown: &CancellationToken,
    ) -> Arc<Self> {
        let client = Arc::new(client::Client::default());
        Arc::new(Webhooks {
            source: Source::start(
                cache,
                client.clone(),
                policies.then(|| registry.clone()),
                shutdown,
            ),
            client,
            cache: Some(cache.clone()),
            registry: Some(registry),
            mutating,
            validating,
            policies,
            metrics: Some(metrics),
        })
    }

    /// Plugins over fixed webhooks, without caches (tests): namespaces have no labels and
    /// Service references do not resolve.
    pub fn fixed(source: Arc<Source>) -> Arc<Self> {
        Arc::new(Webhooks {
            source,
            client: Arc::new(client::Client::default()),
            cache: None,
            registry: None,
            mutating: true,
            validating: true,
            policies: true,
            metrics: None,
        })
    }

    /// `/readyz/informer-sync` part: the configurations are loaded.
    pub fn ready(&self) -> Result<(), String> {
        if self.source.synced() {
            Ok(())
        } else {
            Err("the admission webhook configurations are not loaded yet".into())
        }
    }

    /// The admission webhooks of one request of `user` on `res` (and subresource `sub`), or
    /// `None` when none can apply.
    pub fn call(
        self: &Arc<Self>,
        res: &'static Resource,
        sub: &str,
        user: &UserInfo,
    ) -> Option<Arc<Call>> {
        if exempt(res) {
            return None;
        }
        if self.source.synced() {
            let hooks = self.source.current();
            if hooks.mutating.is_empty()
                && hooks.validating.is_empty()
                && (hooks.policies.is_empty() || !self.policies)
            {
                return None;
            }
        }
        Some(Arc::new(Call {
            webhooks: self.clone(),
            res,
            sub: sub.to_string(),
            user: user.clone(),
            warnings: parking_lot::Mutex::new(Vec::new()),
            audit_failure: parking_lot::Mutex::new(None),
            audit_annotations: parking_lot::Mutex::new(Default::default()),
        }))
    }
}

/// Whether webhooks never see writes of `res`: their own configurations.
fn exempt(res: &Resource) -> bool {
    res.group == GROUP
        && matches!(
            res.resource,
            "mutatingwebhookconfigurations"
                | "validatingwebhookconfigurations"
                | "validatingadmissionpolicies"
                | "validatingadmissionpolicybindings"
        )
}

/// Whether `rule` covers `op` on `res`/`sub`.
pub fn rule_matches(rule: &Rule, op: Operation, res: &Resource, sub: &str) -> bool {
    let has = |list: &[String], v: &str| list.iter().any(|x| x == "*" || x == v);
    if !has(&rule.operations, op.as_str())
        || !has(&rule.groups, res.group)
        || !has(&rule.versions, res.version)
    {
        return false;
    }
    let scope_ok = match rule.scope.as_str() {
        "Cluster" => !res.namespaced,
        "Namespaced" => res.namespaced,
        _ => true,
    };
    if !scope_ok {
        return false;
    }
    rule.resources.iter().any(|r| {
        let (rr, rs) = match r.split_once('/') {
            Some((a, b)) => (a, Some(b)),
            None => (r.as_str(), None),
        };
        let res_ok = rr == "*" || rr == res.resource;
        let sub_ok = match rs {
            None => sub.is_empty(),
            Some("*") => true,
            Some(s) => s == sub,
        };
        res_ok && sub_ok
    })
}

/// What one call of a webhook said.
#[derive(Debug, Default)]
struct Answer {
    allowed: bool,
    status: Option<Value>,
    patch: Option<Vec<u8>>,
    warnings: Vec<String>,
}

/// The admission webhooks of one request, carried in the write options.
pub struct Call {
    webhooks: Arc<Webhooks>,
    res: &'static Resource,
    sub: String,
    user: UserInfo,
    warnings: parking_lot::Mutex<Vec<String>>,
    /// The first ValidatingAdmissionPolicy failure of an `Audit` binding.
    audit_failure: parking_lot::Mutex<Option<crate::policy::ValidationFailure>>,
    /// ValidatingAdmissionPolicy `auditAnnotations`: each key's distinct values, in the
    /// order they came.
    audit_annotations: parking_lot::Mutex<std::collections::BTreeMap<String, Vec<String>>>,
}

impl std::fmt::Debug for Call {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Call")
            .field("resource", &self.res.resource)
            .field("sub", &self.sub)
            .finish_non_exhaustive()
    }
}

/// One request as webhooks see it.
struct Attrs<'a> {
    op: Operation,
    ns: &'a str,
    name: &'a str,
    old: Option<&'a Value>,
    dry_run: bool,
}

impl Call {
    /// The warnings webhooks returned so far.
    pub fn warnings(&self) -> Vec<String> {
        self.warnings.lock().clone()
    }

    /// Puts what ValidatingAdmissionPolicies left for the request's audit event in it
    /// (`audit`: its context, when the request is audited), as upstream: the first `Audit`
    /// failure (in a list of one, as Go encodes it), and each `auditAnnotations` key with
    /// its value (distinct values of several bindings joined with ", ").
    pub fn publish_audit(&self, audit: Option<&crate::audit::AuditContext>) {
        let Some(ctx) = audit else {
            return;
        };
        if let Some(failure) = self.audit_failure.lock().as_ref() {
            ctx.annotate(
                crate::policy::VALIDATION_FAILURE,
                &crate::policy::go_json(&[failure]),
            );
        }
        for (key, values) in self.audit_annotations.lock().iter() {
            ctx.annotate(key, &values.join(", "));
        }
    }

    /// The kind of the object the request carries: the resource's, or the subresource's own.
    fn kind(&self) -> (&'static str, &'static str, &'static str) {
        match self.sub.as_str() {
            "scale" => ("autoscaling", "v1", "Scale"),
            "binding" => ("", "v1", "Binding"),
            "eviction" => ("policy", "v1", "Eviction"),
            "token" => ("authentication.k8s.io", "v1", "TokenRequest"),
            _ => (self.res.group, self.res.version, self.res.kind),
        }
    }

    /// The object as sent: typed, and as a Scale for the scale subresource.
    fn outgoing(&self, obj: &Value) -> Value {
        let (g, v, k) = self.kind();
        if self.sub == "scale" && obj.get("kind").and_then(Value::as_str) != Some("Scale") {
            return crate::object::scale_of(self.res, obj);
        }
        let mut o = obj.clone();
        if let Some(m) = o.as_object_mut() {
            m.insert("kind".into(), json!(k));
            m.insert(
                "apiVersion".into(),
                json!(if g.is_empty() {
                    v.to_string()
                } else {
                    format!("{g}/{v}")
                }),
            );
        }
        o
    }

    /// The webhooks of `hooks` whose rules, object selector (on the object or the old one)
    /// and namespace selector take this request.
    async fn matching(
        &self,
        hooks: &[Arc<Hook>],
        a: &Attrs<'_>,
        obj: Option<&Value>,
    ) -> ApiResult<Vec<Arc<Hook>>> {
        let hooks: Vec<Arc<Hook>> = hooks
            .iter()
            .filter(|h| {
                h.rules
                    .iter()
                    .any(|r| rule_matches(r, a.op, self.res, &self.sub))
            })
            .filter(|h| {
                h.object_selector
                    .as_ref()
                    .is_none_or(|sel| obj.into_iter().chain(a.old).any(|o| sel.matches_object(o)))
            })
            .cloned()
            .collect();
        let hooks = if hooks.iter().all(|h| h.namespace_selector.is_none()) {
            hooks
        } else {
            let namespace = self.namespace_object(a, obj).await?;
            match namespace {
                // Other cluster-scoped objects are not filtered by the namespace selector.
                None if !self.res.namespaced => hooks,
                namespace => {
                    let namespace = namespace.unwrap_or(Value::Null);
                    hooks
                        .into_iter()
                        .filter(|h| {
                            h.namespace_selector
                                .as_ref()
                                .is_none_or(|s| s.matches_object(&namespace))
                        })
                        .collect()
                }
            }
        };
        if hooks.iter().all(|h| h.conditions.is_empty()) {
            return Ok(hooks);
        }
        // matchConditions: any false skips the webhook; errors follow its failure policy.
        let act = self.activation(a, obj, None);
        let mut out = Vec::new();
        for h in hooks {
            let mut errors = Vec::new();
            let mut skip = false;
            for c in &h.conditions {
                match c.as_ref().map(|e| (e, e.eval_bool(&act))) {
                    Ok((_, Ok(true))) => {}
                    Ok((_, Ok(false))) => skip = true,
                    Ok((e, Err(why))) => errors.push(format!(
                        "expression '{}' resulted in error: {why}",
                        e.source
                    )),
                    Err(why) => errors.push(format!("compilation error: {why}")),
                }
            }
            if skip {
                continue;
            }
            if !errors.is_empty() {
                if h.fail_closed {
                    return Err(crate::admission::forbidden_named(
                        self.res,
                        a.name,
                        &crate::admission::aggregate(errors),
                    ));
                }
                continue;
            }
            out.push(h);
        }
        Ok(out)
    }

    /// The namespace a request is judged by: a Namespace's own object, the request's
    /// namespace for namespaced objects, none for other cluster-scoped objects.
    async fn namespace_object(
        &self,
        a: &Attrs<'_>,
        obj: Option<&Value>,
    ) -> ApiResult<Option<Value>> {
        if self.res.group.is_empty() && self.res.resource == "namespaces" {
            Ok(obj.or(a.old).cloned())
        } else if !self.res.namespaced {
            Ok(None)
        } else {
            self.namespace(a.ns).await
        }
    }

    /// The CEL variables of a request (`namespace` for policies, whose expressions may see
    /// it).
    fn activation(
        &self,
        a: &Attrs<'_>,
        obj: Option<&Value>,
        namespace: Option<&Value>,
    ) -> crate::policy::expr::Activation {
        use crate::policy::expr::to_cel;
        let object =
            |o: Option<&Value>| o.map_or(::cel::Value::Null, |o| to_cel(&self.outgoing(o)));
        // A Namespace's own request has no namespaceObject.
        let namespace = if self.res.group.is_empty() && self.res.resource == "namespaces" {
            None
        } else {
            namespace
        };
        crate::policy::expr::Activation::new(vec![
            ("object", object(obj)),
            ("oldObject", object(a.old)),
            (
                "request",
                crate::policy::request_value(
                    a.op.as_str(),
                    self.kind(),
                    self.res,
                    &self.sub,
                    a.ns,
                    a.name,
                    &self.user,
                    a.dry_run,
                ),
            ),
            ("namespaceObject", crate::policy::namespace_value(namespace)),
        ])
    }

    /// Runs the ValidatingAdmissionPolicies in force, every one of them as upstream does: the
    /// first denial refuses the request, warnings are kept for the response and what the
    /// audit event gets for [`Call::publish_audit`].
    async fn run_policies(
        &self,
        policies: &[Arc<crate::policy::Bound>],
        a: &Attrs<'_>,
        obj: Option<&Value>,
    ) -> ApiResult<()> {
        use crate::policy::Decision;
        let namespace = self.namespace_object(a, obj).await?;
        let target = crate::policy::Target {
            op: a.op,
            res: self.res,
            sub: &self.sub,
            name: a.name,
            obj,
            old: a.old,
            namespace: namespace.as_ref(),
        };
        let mut act: Option<crate::policy::expr::Activation> = None;
        let mut denied = None;
        for b in policies {
            let decisions = match &b.policy.matcher {
                None => b.config_error(
                    "failed to configure policy: policy contained no match constraints, a required field".into(),
                ),
                Some(m) if !m.matches(&target, false) => continue,
                Some(_) if b.binding.matcher.as_ref().is_some_and(|m| !m.matches(&target, true)) => {
                    continue;
                }
                Some(_) => {
                    let act = act.get_or_insert_with(|| self.activation(a, obj, namespace.as_ref()));
                    match self.params(b, a.ns).await {
                        Err(why) => b.config_error(format!("failed to configure binding: {why}")),
                        Ok(None) => b.evaluate(act, None),
                        Ok(Some(params)) => params
                            .iter()
                            .flat_map(|p| b.evaluate(act, Some(p)))
                            .collect(),
                    }
                }
            };
            for d in decisions {
                match d {
                    Decision::Warn(w) => self.warnings.lock().push(w),
                    Decision::Audit(failure) => {
                        // Upstream's annotation keeps the first failure (a retry's included).
                        self.audit_failure.lock().get_or_insert(failure);
                    }
                    Decision::Annotate(key, value) => {
                        let mut annotations = self.audit_annotations.lock();
                        let values = annotations.entry(key).or_default();
                        if !values.contains(&value) {
                            values.push(value);
                        }
                    }
                    Decision::Deny(msg, reason) if denied.is_none() => {
                        let name = if a.name.is_empty() {
                            obj.map(|o| crate::object::meta_str(o, "generateName"))
                                .unwrap_or("")
                        } else {
                            a.name
                        };
                        denied = Some(crate::policy::refusal(self.res, name, &msg, &reason));
                    }
                    Decision::Deny(..) => {}
                }
            }
        }
        denied.map_or(Ok(()), Err)
    }

    /// The parameters of a binding: None when the policy or binding takes none; an error
    /// when they cannot be looked up, or are missing and the binding says Deny.
    async fn params(
        &self,
        b: &crate::policy::Bound,
        ns: &str,
    ) -> Result<Option<Vec<Value>>, String> {
        let (Some((api_version, kind)), Some(pr)) = (&b.policy.param_kind, &b.binding.param_ref)
        else {
            return Ok(None);
        };
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        let Some(res) = crate::resources::all()
            .iter()
            .find(|r| r.group == group && r.version == version && r.kind == kind)
        else {
            return Err(format!("paramKind kind `{kind}` not known"));
        };
        let pns = if res.namespaced {
            match pr.namespace.as_deref() {
                Some(n) => n.to_string(),
                None if ns.is_empty() => {
                    return Err("cannot use namespaced paramRef in policy binding that matches cluster-scoped resources".into());
                }
                None => ns.to_string(),
            }
        } else {
            String::new()
        };
        let cacher = self.webhooks.cache.as_ref().and_then(|c| c.get(res));
        let found: Vec<Value> = match (&pr.name, &self.webhooks.registry) {
            (Some(name), reg) => {
                match cacher.and_then(|c| c.is_ready().then(|| c.peek(&pns, name))) {
                    Some(v) => v.into_iter().collect(),
                    None => match reg {
                        Some(r) => match r.get(res, &pns, name).await {
                            Ok(v) => vec![v],
                            Err(e) if e.code == 404 => Vec::new(),
                            Err(e) => return Err(e.message),
                        },
                        None => Vec::new(),
                    },
                }
            }
            (None, reg) => {
                let all = match cacher.and_then(|c| c.in_namespace(&pns)) {
                    Some(v) => v,
                    None => match reg {
                        Some(r) => {
                            r.list(res, &pns, &Default::default())
                                .await
                                .map_err(|e| e.message)?
                                .items
                        }
                        None => Vec::new(),
                    },
                };
                all.into_iter()
                    .filter(|o| pr.selector.as_ref().is_none_or(|s| s.matches_object(o)))
                    .collect()
            }
        };
        if found.is_empty() && pr.deny_if_missing {
            return Err(
                "no params found for policy binding with `Deny` parameterNotFoundAction".into(),
            );
        }
        Ok(Some(found))
    }

    /// The namespace `ns` (None when it does not exist), from the cache when it holds it.
    async fn namespace(&self, ns: &str) -> ApiResult<Option<Value>> {
        let nsres = crate::resources::find("", "v1", "namespaces").expect("namespaces are served");
        let w = &self.webhooks;
        if let Some(n) = w
            .cache
            .as_ref()
            .and_then(|c| c.get(nsres))
            .and_then(|c| c.peek("", ns))
        {
            return Ok(Some(n));
        }
        match &w.registry {
            Some(r) => match r.get(nsres, "", ns).await {
                Ok(n) => Ok(Some(n)),
                Err(e) if e.code == 404 => Ok(None),
                Err(e) => Err(e),
            },
            None => Ok(None),
        }
    }

    /// Waits (up to 5 s) for the configurations to be loaded; as upstream, a request is
    /// refused rather than admitted without the webhooks that may apply to it.
    async fn synced(&self) -> ApiResult<()> {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.webhooks.source.synced() {
            if Instant::now() > deadline {
                return Err(ApiError::forbidden(format!(
                    "{} \"\" is forbidden: not yet ready to handle request",
                    self.res.resource
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// Runs the mutating webhooks on `obj` (`old` is the stored object of an update); true
    /// when they changed it. For DELETE (`obj` is the old object) patches are not applied.
    pub async fn mutate(
        &self,
        op: Operation,
        ns: &str,
        name: &str,
        old: Option<&Value>,
        obj: &mut Value,
        dry_run: bool,
    ) -> ApiResult<bool> {
        if !self.webhooks.mutating {
            return Ok(false);
        }
        self.synced().await?;
        let a = Attrs {
            op,
            ns,
            name,
            old,
            dry_run,
        };
        let all = self.webhooks.source.current();
        if all.mutating.is_empty() {
            return Ok(false);
        }
        let object = (op != Operation::Delete).then_some(&*obj);
        let hooks = self.matching(&all.mutating, &a, object).await?;
        if hooks.is_empty() {
            return Ok(false);
        }
        let mut current = self.outgoing(obj);
        let old_out = old.map(|o| self.outgoing(o));
        let mut any_change = false;
        // Webhooks with IfNeeded that ran before the last change, and those due again.
        let mut invoked: Vec<usize> = Vec::new();
        let mut again: Vec<usize> = Vec::new();
        for (i, h) in hooks.iter().enumerate() {
            let changed = self
                .mutate_one(h, &a, old_out.as_ref(), &mut current)
                .await?;
            if changed {
                any_change = true;
                again.append(&mut invoked);
            }
            if h.reinvoke {
                invoked.push(i);
            }
        }
        again.sort_unstable();
        again.dedup();
        for i in again {
            any_change |= self
                .mutate_one(&hooks[i], &a, old_out.as_ref(), &mut current)
                .await?;
        }
        if !any_change || op == Operation::Delete {
            return Ok(false);
        }
        if self.sub == "scale" {
            if let Some(r) = current.pointer("/spec/replicas") {
                obj["spec"]["replicas"] = r.clone();
            }
            return Ok(true);
        }
        let typed = obj.get("kind").is_some();
        if !typed && let Some(m) = current.as_object_mut() {
            m.remove("kind");
            m.remove("apiVersion");
        }
        *obj = current;
        Ok(true)
    }

    /// Calls one mutating webhook and applies its patch to `current`; true when it changed.
    async fn mutate_one(
        &self,
        h: &Hook,
        a: &Attrs<'_>,
        old: Option<&Value>,
        current: &mut Value,
    ) -> ApiResult<bool> {
        let object = (a.op != Operation::Delete).then_some(&*current);
        let answer = match self.invoke(h, a, object, old).await {
            Ok(ans) => ans,
            Err(e) => return self.failed(h, a, e),
        };
        if !answer.allowed {
            return Err(denied(&h.name, answer.status.as_ref()));
        }
        let Some(patch) = answer.patch else {
            return Ok(false);
        };
        if a.op == Operation::Delete {
            return Ok(false);
        }
        let applied = (|| -> Result<Value, String> {
            let p: json_patch::Patch = serde_json::from_slice(&patch)
                .map_err(|e| format!("the patch is not a JSON patch: {e}"))?;
            let mut patched = current.clone();
            json_patch::patch(&mut patched, &p).map_err(|e| e.to_string())?;
            for f in ["kind", "apiVersion"] {
                if patched.get(f) != current.get(f) {
                    return Err(format!("the patch may not change {f}"));
                }
            }
            for f in ["/metadata/name", "/metadata/namespace"] {
                let before = current.pointer(f).and_then(Value::as_str).unwrap_or("");
                let after = patched.pointer(f).and_then(Value::as_str).unwrap_or("");
                if !before.is_empty() && before != after {
                    return Err(format!("the patch may not change {}", &f[1..]));
                }
            }
            Ok(patched)
        })();
        match applied {
            Ok(p) => {
                let changed = p != *current;
                *current = p;
                Ok(changed)
            }
            // As upstream, a patch that cannot be applied fails the request whatever the
            // failure policy says.
            Err(e) => Err(ApiError::internal(format!(
                "failed calling webhook {:?}: failed to apply the patch: {e}",
                h.name
            ))),
        }
    }

    /// The webhooks of a DELETE of `old`: mutating webhooks may refuse it (their patches are
    /// not applied), then the validating ones.
    pub async fn delete(&self, ns: &str, name: &str, old: &Value, dry_run: bool) -> ApiResult<()> {
        let mut scratch = old.clone();
        self.mutate(
            Operation::Delete,
            ns,
            name,
            Some(old),
            &mut scratch,
            dry_run,
        )
        .await?;
        self.validate(Operation::Delete, ns, name, Some(old), None, dry_run)
            .await
    }

    /// Runs the validating webhooks, in parallel; `obj` is None for DELETE.
    pub async fn validate(
        &self,
        op: Operation,
        ns: &str,
        name: &str,
        old: Option<&Value>,
        obj: Option<&Value>,
        dry_run: bool,
    ) -> ApiResult<()> {
        if !self.webhooks.validating && !self.webhooks.policies {
            return Ok(());
        }
        self.synced().await?;
        let all = self.webhooks.source.current();
        let a = Attrs {
            op,
            ns,
            name,
            old,
            dry_run,
        };
        if self.webhooks.policies && !all.policies.is_empty() {
            self.run_policies(&all.policies, &a, obj).await?;
        }
        if !self.webhooks.validating || all.validating.is_empty() {
            return Ok(());
        }
        let hooks = self.matching(&all.validating, &a, obj).await?;
        if hooks.is_empty() {
            return Ok(());
        }
        let object = obj.map(|o| self.outgoing(o));
        let old_out = old.map(|o| self.outgoing(o));
        let started = Instant::now();
        let results = futures::future::join_all(hooks.iter().map(|h| {
            let (a, object, old_out) = (&a, object.as_ref(), old_out.as_ref());
            async move {
                // (`parse_answer` refuses a patch from a validating webhook.)
                match self.invoke(h, a, object, old_out).await {
                    Ok(ans) if !ans.allowed => Err(denied(&h.name, ans.status.as_ref())),
                    Ok(_) => Ok(()),
                    Err(e) => self.failed(h, a, e).map(|_| ()),
                }
            }
        }))
        .await;
        // Validating webhooks run together: their wall time is left out of the SLI once.
        crate::metrics::exclude_from_sli(started.elapsed());
        results.into_iter().collect::<ApiResult<Vec<()>>>()?;
        Ok(())
    }

    /// A webhook that could not be called: refuses under Fail, is skipped under Ignore.
    fn failed(&self, h: &Hook, a: &Attrs<'_>, why: String) -> ApiResult<bool> {
        let msg = format!("failed calling webhook {:?}: {why}", h.name);
        if h.fail_closed {
            tracing::warn!(webhook = %h.name, configuration = %h.config, operation = a.op.as_str(), "{msg}; failurePolicy Fail refuses the request");
            Err(ApiError::internal(msg))
        } else {
            tracing::warn!(webhook = %h.name, configuration = %h.config, operation = a.op.as_str(), "{msg}; failurePolicy Ignore lets the request pass");
            Ok(false)
        }
    }

    /// The AdmissionReview for one call.
    fn review(&self, uid: &str, a: &Attrs<'_>, obj: Option<&Value>, old: Option<&Value>) -> Value {
        let (g, v, k) = self.kind();
        let kind = json!({"group": g, "version": v, "kind": k});
        let resource = json!({"group": self.res.group, "version": self.res.version, "resource": self.res.resource});
        let mut user = json!({"username": self.user.name});
        if !self.user.uid.is_empty() {
            user["uid"] = json!(self.user.uid);
        }
        if !self.user.groups.is_empty() {
            user["groups"] = json!(self.user.groups);
        }
        if !self.user.extra.is_empty() {
            user["extra"] = json!(self.user.extra);
        }
        let mut options = json!({"apiVersion": "meta.k8s.io/v1", "kind": a.op.options_kind()});
        if a.dry_run {
            options["dryRun"] = json!(["All"]);
        }
        let mut req = json!({
            "uid": uid,
            "kind": kind,
            "resource": resource,
            "requestKind": kind,
            "requestResource": resource,
            "operation": a.op.as_str(),
            "userInfo": user,
            "object": obj.cloned().unwrap_or(Value::Null),
            "oldObject": old.cloned().unwrap_or(Value::Null),
            "dryRun": a.dry_run,
            "options": options,
        });
        let name = if a.name.is_empty() {
            obj.map(crate::object::name).unwrap_or("")
        } else {
            a.name
        };
        if !name.is_empty() {
            req["name"] = json!(name);
        }
        if !a.ns.is_empty() {
            req["namespace"] = json!(a.ns);
        }
        if !self.sub.is_empty() {
            req["subResource"] = json!(self.sub);
            req["requestSubResource"] = json!(self.sub);
        }
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": req})
    }

    /// Calls `h`; an `Err` is a failed call (subject to the failure policy).
    async fn invoke(
        &self,
        h: &Hook,
        a: &Attrs<'_>,
        obj: Option<&Value>,
        old: Option<&Value>,
    ) -> Result<Answer, String> {
        let started = Instant::now();
        let uid = crate::object::new_uid();
        let body =
            serde_json::to_vec(&self.review(&uid, a, obj, old)).map_err(|e| e.to_string())?;
        let url = h.target.display(h.timeout);
        let r = tokio::time::timeout(h.timeout, self.post(h, Bytes::from(body))).await;
        let outcome = match r {
            Err(_) => Err(format!(
                "failed to call webhook: Post {url:?}: context deadline exceeded"
            )),
            Ok(Err(e)) => Err(format!("failed to call webhook: Post {url:?}: {e}")),
            Ok(Ok((status, body))) => parse_answer(status, &body, &uid, h.kind),
        };
        let took = started.elapsed();
        // Mutating webhooks run one after another, so each call's time is left out of the
        // SLI; validating ones run together, and `validate` leaves out their batch once.
        if h.kind == Kind::Mutating {
            crate::metrics::exclude_from_sli(took);
        }
        if let Some(m) = &self.webhooks.metrics {
            let rejected = !matches!(&outcome, Ok(ans) if ans.allowed);
            m.webhook_admission(&h.name, h.kind.label(), a.op.as_str(), rejected, took);
        }
        if let Ok(ans) = &outcome
            && !ans.warnings.is_empty()
        {
            self.warnings.lock().extend(ans.warnings.iter().cloned());
        }
        outcome
    }

    /// Sends the review to where `h` points.
    async fn post(&self, h: &Hook, body: Bytes) -> Result<(u16, Bytes), String> {
        let tls = h.tls.as_ref().map_err(Clone::clone)?;
        let query = format!("timeout={}s", h.timeout.as_secs());
        let (host, port, path) = match &h.target {
            Target::Url { host, port, path } => (host.clone(), *port, path.clone()),
            Target::Service {
                namespace,
                name,
                path,
                port,
            } => {
                let (host, p) = self.resolve(namespace, name, *port).await?;
                (host, p, path.clone())
            }
        };
        let sep = if path.contains('?') { '&' } else { '?' };
        self.webhooks
            .client
            .post(
                &host,
                port,
                &h.target.server_name(),
                tls,
                &format!("{path}{sep}{query}"),
                None,
                body,
            )
            .await
    }

    /// A Service port to an address: a ready endpoint of the Service, else its ClusterIP.
    async fn resolve(&self, ns: &str, name: &str, port: u16) -> Result<(String, u16), String> {
        let cache = self
            .webhooks
            .cache
            .as_ref()
            .ok_or_else(|| "service references cannot be resolved here".to_string())?;
        let peek = |r: &str| {
            let res = crate::resources::find("", "v1", r).expect("core resources are served");
            cache.get(res).and_then(|c| c.peek(ns, name))
        };
        let svc = match peek("services") {
            Some(s) => s,
            None => {
                let res = crate::resources::find("", "v1", "services").expect("services");
                match &self.webhooks.registry {
                    Some(r) => r
                        .get(res, ns, name)
                        .await
                        .map_err(|_| format!("service \"{name}\" not found"))?,
                    None => return Err(format!("service \"{name}\" not found")),
                }
            }
        };
        let sp = svc
            .pointer("/spec/ports")
            .and_then(Value::as_array)
            .and_then(|ps| {
                ps.iter()
                    .find(|p| p.get("port").and_then(Value::as_u64) == Some(u64::from(port)))
            })
            .ok_or_else(|| format!("no service port {port} found for service \"{name}\""))?;
        let port_name = sp.get("name").and_then(Value::as_str).unwrap_or("");
        if let Some(ep) = peek("endpoints") {
            for subset in ep
                .get("subsets")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let ports = subset
                    .get("ports")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                let p = ports
                    .iter()
                    .find(|p| p.get("name").and_then(Value::as_str).unwrap_or("") == port_name)
                    .or_else(|| (ports.len() == 1).then(|| &ports[0]))
                    .and_then(|p| p.get("port").and_then(Value::as_u64))
                    .and_then(|p| u16::try_from(p).ok());
                let ip = subset
                    .get("addresses")
                    .and_then(Value::as_array)
                    .and_then(|a| a.first())
                    .and_then(|a| a.get("ip"))
                    .and_then(Value::as_str);
                if let (Some(ip), Some(p)) = (ip, p) {
                    return Ok((ip.to_string(), p));
                }
            }
        }
        match svc.pointer("/spec/clusterIP").and_then(Value::as_str) {
            Some(ip) if !ip.is_empty() && ip != "None" => Ok((ip.to_string(), port)),
            _ => Err(format!("service \"{name}\" has no ready endpoints")),
        }
    }
}

/// Reads a webhook's answer, checking it as upstream does.
fn parse_answer(status: u16, body: &[u8], uid: &str, kind: Kind) -> Result<Answer, String> {
    if !(200..300).contains(&status) {
        let text = String::from_utf8_lossy(&body[..body.len().min(512)]).to_string();
        return Err(format!(
            "failed to call webhook: the server responded with status {status}: {text}"
        ));
    }
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| format!("received invalid webhook response: {e}"))?;
    let av = v.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    let k = v.get("kind").and_then(Value::as_str).unwrap_or("");
    if av != "admission.k8s.io/v1" || k != "AdmissionReview" {
        return Err(format!(
            "received invalid webhook response: expected webhook response of admission.k8s.io/v1, Kind=AdmissionReview, got {av}, Kind={k}"
        ));
    }
    let r = v.get("response").filter(|r| r.is_object()).ok_or_else(|| {
        "received invalid webhook response: webhook response was absent".to_string()
    })?;
    let got = r.get("uid").and_then(Value::as_str).unwrap_or("");
    if got != uid {
        return Err(format!(
            "received invalid webhook response: expected response.uid={uid:?}, got {got:?}"
        ));
    }
    let patch = match r
        .get("patch")
        .and_then(Value::as_str)
        .filter(|p| !p.is_empty())
    {
        None => None,
        Some(p) => {
            if kind == Kind::Validating {
                return Err("received invalid webhook response: validating webhook may not return response.patch".into());
            }
            match r.get("patchType").and_then(Value::as_str) {
                Some("JSONPatch") => {}
                None | Some("") => {
                    return Err("received invalid webhook response: webhook returned response.patch but not response.patchType".into());
                }
                Some(t) => {
                    return Err(format!(
                        "received invalid webhook response: webhook returned invalid response.patchType of {t:?}"
                    ));
                }
            }
            Some(
                base64::Engine::decode(&base64::engine::general_purpose::STANDARD, p).map_err(
                    |e| format!("received invalid webhook response: the patch is not base64: {e}"),
                )?,
            )
        }
    };
    Ok(Answer {
        allowed: r.get("allowed").and_then(Value::as_bool).unwrap_or(false),
        status: r.get("status").cloned(),
        patch,
        warnings: r
            .get("warnings")
            .and_then(Value::as_array)
            .map(|w| {
                w.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default(),
    })
}

/// The status reasons a webhook may answer with, as the static strings errors carry.
fn known_reason(r: &str) -> &'static str {
    const REASONS: &[&str] = &[
        "Unauthorized",
        "Forbidden",
        "NotFound",
        "AlreadyExists",
        "Conflict",
        "Gone",
        "Invalid",
        "ServerTimeout",
        "Timeout",
        "TooManyRequests",
        "BadRequest",
        "MethodNotAllowed",
        "NotAcceptable",
        "RequestEntityTooLarge",
        "UnsupportedMediaType",
        "InternalError",
        "Expired",
        "ServiceUnavailable",
    ];
    REASONS.iter().copied().find(|x| *x == r).unwrap_or("")
}

/// The error of a denial: the webhook's status with at least code 400, the message prefixed.
fn denied(name: &str, status: Option<&Value>) -> ApiError {
    let empty = json!({});
    let s = status.unwrap_or(&empty);
    let code = s
        .get("code")
        .and_then(Value::as_u64)
        .and_then(|c| u16::try_from(c).ok())
        .filter(|c| (400..1000).contains(c))
        .unwrap_or(400);
    let reason = s.get("reason").and_then(Value::as_str).unwrap_or("");
    let message = s.get("message").and_then(Value::as_str).unwrap_or("");
    let by = format!("admission webhook {name:?} denied the request");
    let text = match (message.is_empty(), reason.is_empty()) {
        (false, _) => format!("{by}: {message}"),
        (true, false) => format!("{by}: {reason}"),
        (true, true) => format!("{by} without explanation"),
    };
    let mut e = ApiError::new(code, known_reason(reason), text);
    if let Some(d) = s.get("details") {
        e.details.name = d.get("name").and_then(Value::as_str).map(str::to_string);
        e.details.group = d.get("group").and_then(Value::as_str).map(str::to_string);
        e.details.kind = d.get("kind").and_then(Value::as_str).map(str::to_string);
        e.details.causes = d
            .get("causes")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|c| {
                let f = |k: &str| c.get(k).and_then(Value::as_str).unwrap_or("");
                Cause::new(f("reason"), f("field"), f("message"))
            })
            .collect();
    }
    e
}

#[cfg(test)]
mod tests;
