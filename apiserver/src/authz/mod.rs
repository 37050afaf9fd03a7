//! Authorization, as kube-apiserver's `--authorization-mode`: an ordered list of authorizers
//! asked in turn until one allows or denies; members of `system:masters` are allowed before any
//! of them. Modes: `AlwaysAllow`, `AlwaysDeny`, `Node`, `RBAC`, `Webhook`.
//!
//! Also here: impersonation (`Impersonate-*` headers, each checked with the `impersonate` verb),
//! the access reviews (`kubectl auth can-i`, `kubectl auth whoami`), RBAC's escalation check on
//! writes of roles and bindings, and the bootstrap policy.

pub mod bootstrap;
pub mod node;
pub mod rbac;
pub mod review;
pub mod webhook;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::RwLock;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

pub use crate::filters::UserInfo;
use crate::request_info::RequestInfo;
use crate::status::{ApiError, ApiResult};
use rbac::{Policy, Rule};

/// The group whose members may do anything (`user.SystemPrivilegedGroup`).
pub const MASTERS: &str = "system:masters";

/// What is asked: a user, a verb, and a resource (or a non-resource path).
#[derive(Debug, Clone, Copy)]
pub struct Attributes<'a> {
    /// Who asks.
    pub user: &'a UserInfo,
    /// The Kubernetes verb (or the lower-cased HTTP method for paths).
    pub verb: &'a str,
    /// Namespace (empty: cluster scope).
    pub namespace: &'a str,
    /// API group.
    pub api_group: &'a str,
    /// API version.
    pub api_version: &'a str,
    /// Resource (plural).
    pub resource: &'a str,
    /// Subresource.
    pub subresource: &'a str,
    /// Object name.
    pub name: &'a str,
    /// The path, for non-resource requests.
    pub path: &'a str,
    /// Whether this is a resource request.
    pub resource_request: bool,
}

impl<'a> Attributes<'a> {
    /// The attributes of an API request.
    pub fn of(user: &'a UserInfo, info: &'a RequestInfo) -> Self {
        Attributes {
            user,
            verb: &info.verb,
            namespace: &info.namespace,
            api_group: &info.api_group,
            api_version: &info.api_version,
            resource: &info.resource,
            subresource: &info.subresource,
            name: &info.name,
            path: &info.path,
            resource_request: info.is_resource_request,
        }
    }

    /// A resource request of `user` other than the one being served.
    #[allow(clippy::too_many_arguments)]
    pub fn resource(
        user: &'a UserInfo,
        verb: &'a str,
        namespace: &'a str,
        api_group: &'a str,
        resource: &'a str,
        subresource: &'a str,
        name: &'a str,
    ) -> Self {
        Attributes {
            user,
            verb,
            namespace,
            api_group,
            api_version: "*",
            resource,
            subresource,
            name,
            path: "",
            resource_request: true,
        }
    }

    /// `User "x" cannot list resource "pods" in API group "" in the namespace "y"`, as
    /// upstream words a refusal.
    pub fn refusal(&self) -> String {
        let who = &self.user.name;
        if !self.resource_request {
            return format!("User {who:?} cannot {} path {:?}", self.verb, self.path);
        }
        let resource = if self.subresource.is_empty() {
            self.resource.to_string()
        } else {
            format!("{}/{}", self.resource, self.subresource)
        };
        if self.namespace.is_empty() {
            format!(
                "User {who:?} cannot {} resource {resource:?} in API group {:?} at the cluster scope",
                self.verb, self.api_group
            )
        } else {
            format!(
                "User {who:?} cannot {} resource {resource:?} in API group {:?} in the namespace {:?}",
                self.verb, self.api_group, self.namespace
            )
        }
    }

    /// The 403 for a refused request: `pods "x" is forbidden: User ... [: reason]`.
    pub fn forbidden(&self, reason: &str) -> ApiError {
        let mut msg = self.refusal();
        if !reason.is_empty() {
            msg = format!("{msg}: {reason}");
        }
        if !self.resource_request {
            return ApiError::forbidden(format!("forbidden: {msg}"));
        }
        let qualified = if self.api_group.is_empty() {
            self.resource.to_string()
        } else {
            format!("{}.{}", self.resource, self.api_group)
        };
        let message = if self.name.is_empty() {
            format!("{qualified} is forbidden: {msg}")
        } else {
            format!("{qualified} {:?} is forbidden: {msg}", self.name)
        };
        ApiError::forbidden(message).with_details(self.api_group, self.resource, self.name)
    }
}

/// An authorizer's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Allowed, with the reason.
    Allow(String),
    /// Denied outright: later authorizers are not asked.
    Deny(String),
    /// Neither; the next authorizer is asked.
    NoOpinion(String),
    /// Nothing allowed or denied, and an authorizer (the webhook) could not be asked: a 500,
    /// not a 403, as upstream.
    Error(String),
}

/// One `--authorization-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Everything is allowed.
    AlwaysAllow,
    /// Nothing is allowed.
    AlwaysDeny,
    /// Role-based access control.
    Rbac,
    /// Kubelets: what their pods use, their own lease, the `system:node` rules.
    Node,
    /// A SubjectAccessReview webhook.
    Webhook,
}

/// The RBAC objects as the authorizer sees them, rebuilt from the watch caches on every change.
pub struct RbacSource {
    policy: RwLock<Arc<Policy>>,
    synced: AtomicBool,
    /// The bootstrap policy is in the store ([`bootstrap::ensure`]).
    pub(crate) bootstrapped: AtomicBool,
}

impl RbacSource {
    /// Follows the RBAC caches of `cache` until `shutdown`.
    pub fn start(cache: &Arc<crate::cache::Cache>, shutdown: &CancellationToken) -> Arc<Self> {
        let src = Arc::new(RbacSource {
            policy: RwLock::new(Arc::new(Policy::default())),
            synced: AtomicBool::new(false),
            bootstrapped: AtomicBool::new(false),
        });
        let find = |r: &str| {
            let res = crate::resources::find("rbac.authorization.k8s.io", "v1", r)
                .expect("RBAC resources are served");
            cache
                .get(res)
                .expect("RBAC resources are always cached")
                .clone()
        };
        let cachers = [
            find("clusterroles"),
            find("roles"),
            find("clusterrolebindings"),
            find("rolebindings"),
        ];
        let me = src.clone();
        tokio::spawn(crate::cache::follow(
            cachers.to_vec(),
            shutdown.clone(),
            move |v| {
                *me.policy.write() = Arc::new(Policy::build(&v[0], &v[1], &v[2], &v[3]));
                me.synced.store(true, Ordering::Release);
            },
        ));
        src
    }

    /// A policy from fixed objects (tests, tools).
    pub fn fixed(policy: Policy) -> Arc<Self> {
        Arc::new(RbacSource {
            policy: RwLock::new(Arc::new(policy)),
            synced: AtomicBool::new(true),
            bootstrapped: AtomicBool::new(true),
        })
    }

    /// The current policy.
    pub fn policy(&self) -> Arc<Policy> {
        self.policy.read().clone()
    }

    /// Whether the policy has been read from complete caches at least once.
    pub fn synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// `/readyz/poststarthook/rbac/bootstrap-roles`: the bootstrap policy is in the store and
    /// the authorizer has read the RBAC objects.
    pub fn ready(&self) -> Result<(), String> {
        if !self.bootstrapped.load(Ordering::Acquire) {
            return Err("the bootstrap RBAC policy is not in place yet".into());
        }
        if !self.synced() {
            return Err("the RBAC objects are not loaded yet".into());
        }
        Ok(())
    }
}

/// The authorizers of `--authorization-mode`, in order.
pub struct Authorizer {
    modes: Vec<Mode>,
    rbac: Option<Arc<RbacSource>>,
    node: Option<Arc<node::NodeAuthorizer>>,
    webhook: Option<Arc<webhook::WebhookAuthorizer>>,
}

/// The rules a user has in a namespace (`SelfSubjectRulesReview`).
#[derive(Debug, Default)]
pub struct RulesReview {
    /// Rules on resources.
    pub resource_rules: Vec<Rule>,
    /// Rules on non-resource URLs.
    pub non_resource_rules: Vec<Rule>,
    /// Whether some authorizer cannot list its rules.
    pub incomplete: bool,
}

impl Authorizer {
    /// Parses `--authorization-mode` (comma-separated, as upstream: `AlwaysAllow`,
    /// `AlwaysDeny`, `Node`, `RBAC`).
    pub fn parse_modes(modes: &str) -> Result<Vec<Mode>, String> {
        let mut out = Vec::new();
        for m in modes.split(',').map(str::trim) {
            let mode = match m {
                "AlwaysAllow" => Mode::AlwaysAllow,
                "AlwaysDeny" => Mode::AlwaysDeny,
                "RBAC" => Mode::Rbac,
                "Node" => Mode::Node,
                "Webhook" => Mode::Webhook,
                "ABAC" => {
                    return Err(format!(
                        "--authorization-mode: {m} is not available in this build (AlwaysAllow, AlwaysDeny, Node, RBAC and Webhook are)"
                    ));
                }
                "" => return Err("--authorization-mode: an empty mode".into()),
                other => {
                    return Err(format!(
                        "--authorization-mode: unknown mode {other:?} (AlwaysAllow, AlwaysDeny, Node, RBAC, Webhook)"
                    ));
                }
            };
            if out.contains(&mode) {
                return Err(format!("--authorization-mode: {m} is given twice"));
            }
            out.push(mode);
        }
        Ok(out)
    }

    /// The authorizers of `modes`; `rbac` is the policy source when RBAC is among them, `node`
    /// the Node authorizer when Node is.
    pub fn new(
        modes: Vec<Mode>,
        rbac: Option<Arc<RbacSource>>,
        node: Option<Arc<node::NodeAuthorizer>>,
    ) -> Self {
        Authorizer {
            modes,
            rbac,
            node,
            webhook: None,
        }
    }

    /// Asks `w` where the modes say `Webhook`.
    pub fn with_webhook(mut self, w: webhook::WebhookAuthorizer) -> Self {
        self.webhook = Some(Arc::new(w));
        self
    }

    /// Whether RBAC is one of the modes.
    pub fn has_rbac(&self) -> bool {
        self.modes.contains(&Mode::Rbac)
    }

    /// The RBAC policy source, when RBAC is on.
    pub fn rbac(&self) -> Option<&Arc<RbacSource>> {
        self.rbac.as_ref().filter(|_| self.has_rbac())
    }

    /// Asks each authorizer in turn.
    pub async fn authorize(&self, a: &Attributes<'_>) -> Decision {
        if a.user.groups.iter().any(|g| g == MASTERS) {
            return Decision::Allow(String::new());
        }
        let mut reasons = Vec::new();
        let mut errors = Vec::new();
        for m in &self.modes {
            if *m == Mode::Webhook {
                if let Some(w) = &self.webhook {
                    match w.authorize(a).await {
                        Ok(d @ (Decision::Allow(_) | Decision::Deny(_))) => return d,
                        Ok(Decision::NoOpinion(r) | Decision::Error(r)) if !r.is_empty() => {
                            reasons.push(r)
                        }
                        Ok(_) => {}
                        Err(e) => errors.push(e),
                    }
                }
            } else if let Some(d) = self.ask_local(*m, a, &mut reasons) {
                return d;
            }
        }
        if !errors.is_empty() {
            return Decision::Error(errors.join("; "));
        }
        Decision::NoOpinion(reasons.join("\n"))
    }

    /// The whole chain for the checks made inside a write, which cannot wait: with a webhook
    /// among the modes it is asked on a blocking section of the runtime's worker (answers are
    /// cached); otherwise nothing waits.
    pub fn authorize_in_write(&self, a: &Attributes<'_>) -> Decision {
        if self.webhook.is_some()
            && self.modes.contains(&Mode::Webhook)
            && let Ok(h) = tokio::runtime::Handle::try_current()
            && h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread
        {
            return tokio::task::block_in_place(|| h.block_on(self.authorize(a)));
        }
        self.authorize_local(a)
    }

    /// Asks the authorizers that answer without a round trip (all but the webhook), for the
    /// checks made inside a write.
    pub fn authorize_local(&self, a: &Attributes<'_>) -> Decision {
        if a.user.groups.iter().any(|g| g == MASTERS) {
            return Decision::Allow(String::new());
        }
        let mut reasons = Vec::new();
        for m in &self.modes {
            if let Some(d) = self.ask_local(*m, a, &mut reasons) {
                return d;
            }
        }
        Decision::NoOpinion(reasons.join("\n"))
    }

    /// The answer of one in-process authorizer, when it has one that ends the search; its
    /// reason for having none is added to `reasons`.
    fn ask_local(&self, m: Mode, a: &Attributes, reasons: &mut Vec<String>) -> Option<Decision> {
        match m {
            Mode::AlwaysAllow => Some(Decision::Allow(String::new())),
            Mode::AlwaysDeny => Some(Decision::Deny("Everything is forbidden.".into())),
            Mode::Rbac => {
                let src = self.rbac.as_ref()?;
                if let Some(g) = src.policy().allowed_by(a) {
                    return Some(Decision::Allow(format!("RBAC: allowed by {}", g.source)));
                }
                if !src.synced() {
                    reasons.push("RBAC: the policy is not loaded yet".to_string());
                }
                None
            }
            Mode::Node => match self.node.as_ref().map(|n| n.authorize(a)) {
                Some(d @ (Decision::Allow(_) | Decision::Deny(_))) => Some(d),
                Some(Decision::NoOpinion(r)) if !r.is_empty() => {
                    reasons.push(r);
                    None
                }
                _ => None,
            },
            Mode::Webhook => None,
        }
    }

    /// Allowed, or the 403 for the request.
    pub async fn check(&self, a: &Attributes<'_>) -> ApiResult<()> {
        match self.authorize(a).await {
            Decision::Allow(_) => Ok(()),
            Decision::Deny(r) | Decision::NoOpinion(r) => Err(a.forbidden(&r)),
            Decision::Error(e) => Err(ApiError::internal(e)),
        }
    }

    /// The rules `user` has in `namespace`, from every authorizer that can list them.
    pub fn rules_for(&self, user: &UserInfo, namespace: &str) -> RulesReview {
        let mut out = RulesReview::default();
        let everything = |out: &mut RulesReview| {
            let star = vec!["*".to_string()];
            out.resource_rules.push(Rule {
                verbs: star.clone(),
                api_groups: star.clone(),
                resources: star.clone(),
                ..Default::default()
            });
            out.non_resource_rules.push(Rule {
                verbs: star.clone(),
                non_resource_urls: star,
                ..Default::default()
            });
        };
        if user.groups.iter().any(|g| g == MASTERS) {
            everything(&mut out);
        }
        for m in &self.modes {
            match m {
                Mode::AlwaysAllow => everything(&mut out),
                Mode::AlwaysDeny => {}
                Mode::Rbac => {
                    if let Some(src) = &self.rbac {
                        for r in src.policy().rules_for(user, namespace) {
                            if r.non_resource_urls.is_empty() {
                                out.resource_rules.push(r);
                            } else {
                                out.non_resource_rules.push(r);
                            }
                        }
                        out.incomplete |= !src.synced();
                    }
                }
                // The Node authorizer's answers depend on the object: it cannot list rules.
                Mode::Node => out.incomplete |= node::node_name(user).is_some(),
                // Nor can a webhook, as upstream's.
                Mode::Webhook => out.incomplete = true,
            }
        }
        out
    }

    /// RBAC's escalation check on a write of a role or binding by `user`: a role may only
    /// carry permissions its writer has (or the writer may `escalate` roles); a binding may only
    /// bind a role whose permissions the writer has (or the writer may `bind` that role). No
    /// check without RBAC, as upstream. `escalate` and `bind` are asked of the whole chain
    /// ([`Authorizer::authorize_in_write`]).
    pub fn confirm_no_escalation(
        &self,
        user: &UserInfo,
        resource: &str,
        namespace: &str,
        obj: &Value,
    ) -> ApiResult<()> {
        let Some(src) = self.rbac() else {
            return Ok(());
        };
        if user.groups.iter().any(|g| g == MASTERS) {
            return Ok(());
        }
        let policy = src.policy();
        let name = obj
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("");
        let wanted: Vec<Rule> = match resource {
            "roles" | "clusterroles" => {
                let may = Attributes::resource(
                    user,
                    "escalate",
                    namespace,
                    "rbac.authorization.k8s.io",
                    resource,
                    "",
                    name,
                );
                if matches!(self.authorize_in_write(&may), Decision::Allow(_)) {
                    return Ok(());
                }
                let mut rules = rbac::rules_of(obj);
                // An aggregated role gathers whatever its selectors will match: only a writer
                // who holds every permission may make one, as upstream.
                if obj.get("aggregationRule").is_some_and(|a| !a.is_null()) {
                    let star = vec!["*".to_string()];
                    rules.push(Rule {
                        verbs: star.clone(),
                        api_groups: star.clone(),
                        resources: star.clone(),
                        ..Default::default()
                    });
                    rules.push(Rule {
                        verbs: star.clone(),
                        non_resource_urls: star,
                        ..Default::default()
                    });
                }
                rules
            }
            "rolebindings" | "clusterrolebindings" => {
                let role_kind = obj
                    .pointer("/roleRef/kind")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let role = obj
                    .pointer("/roleRef/name")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let role_resource = if role_kind == "Role" {
                    "roles"
                } else {
                    "clusterroles"
                };
                // `bind` is asked in the binding's namespace (so it can be delegated per
                // namespace, for ClusterRoles too), as upstream.
                let may = Attributes::resource(
                    user,
                    "bind",
                    namespace,
                    "rbac.authorization.k8s.io",
                    role_resource,
                    "",
                    role,
                );
                if matches!(self.authorize_in_write(&may), Decision::Allow(_)) {
                    return Ok(());
                }
                let rules = if role_kind == "Role" {
                    policy.role(namespace, role)
                } else {
                    policy.cluster_role(role)
                };
                // A binding to a role that does not exist (yet) would grant whatever it later
                // holds: refused, as upstream's lookup refuses it.
                let Some(rules) = rules else {
                    return Err(ApiError::not_found(
                        "rbac.authorization.k8s.io",
                        role_resource,
                        role,
                    ));
                };
                rules.to_vec()
            }
            _ => return Ok(()),
        };
        let owned = policy.rules_for(user, namespace);
        let missing: Vec<String> = wanted
            .iter()
            .filter(|r| !rbac::covers(&owned, r))
            .map(Rule::compact)
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        Err(ApiError::forbidden(format!(
            "{resource}.rbac.authorization.k8s.io {name:?} is forbidden: user {:?} (groups={}) is attempting to grant RBAC permissions not currently held:\n{}",
            user.name,
            rbac::go_quoted(&user.groups),
            missing.join("\n")
        ))
        .with_details("rbac.authorization.k8s.io", resource, name))
    }
}
