//! RBAC (`rbac.authorization.k8s.io/v1`) as kube-apiserver evaluates it: a request is allowed
//! when a rule of a role bound to the user (by name, group or service account) matches it.
//! ClusterRoleBindings grant everywhere; RoleBindings grant in their own namespace.
//!
//! The objects come from the watch cache; every change rebuilds a [`Policy`] that indexes the
//! bindings by subject with their roles' rules already resolved, so a decision reads only the
//! grants of the user's name and groups.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;

use super::{Attributes, UserInfo};

/// One `PolicyRule`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rule {
    /// `verbs`.
    pub verbs: Vec<String>,
    /// `apiGroups`.
    pub api_groups: Vec<String>,
    /// `resources` (`pods`, `pods/log`, `*/scale`, `*`).
    pub resources: Vec<String>,
    /// `resourceNames` (empty: every name).
    pub resource_names: Vec<String>,
    /// `nonResourceURLs` (`/healthz`, `/api/*`, `*`).
    pub non_resource_urls: Vec<String>,
}

/// The strings of the array `field` of `v` (empty when absent).
pub(crate) fn strings(v: &Value, field: &str) -> Vec<String> {
    string_list(v.get(field))
}

/// The strings of an array value (empty when it is not one).
pub(crate) fn string_list(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

impl Rule {
    /// Reads a `PolicyRule` object.
    pub fn from_json(v: &Value) -> Rule {
        Rule {
            verbs: strings(v, "verbs"),
            api_groups: strings(v, "apiGroups"),
            resources: strings(v, "resources"),
            resource_names: strings(v, "resourceNames"),
            non_resource_urls: strings(v, "nonResourceURLs"),
        }
    }

    /// The `PolicyRule` object (empty lists left out, as the API does).
    pub fn to_json(&self) -> Value {
        let mut m = serde_json::Map::new();
        m.insert("verbs".into(), self.verbs.clone().into());
        for (k, v) in [
            ("apiGroups", &self.api_groups),
            ("resources", &self.resources),
            ("resourceNames", &self.resource_names),
            ("nonResourceURLs", &self.non_resource_urls),
        ] {
            if !v.is_empty() {
                m.insert(k.into(), v.clone().into());
            }
        }
        Value::Object(m)
    }

    /// Upstream's compact form: `{APIGroups:[""], Resources:["pods"], Verbs:["get"]}`.
    pub fn compact(&self) -> String {
        let parts: Vec<String> = [
            ("APIGroups", &self.api_groups),
            ("Resources", &self.resources),
            ("ResourceNames", &self.resource_names),
            ("NonResourceURLs", &self.non_resource_urls),
            ("Verbs", &self.verbs),
        ]
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| format!("{k}:{}", go_quoted(v)))
        .collect();
        format!("{{{}}}", parts.join(", "))
    }

    /// Whether the rule allows the request.
    pub fn allows(&self, a: &Attributes) -> bool {
        if !has_or_star(&self.verbs, a.verb) {
            return false;
        }
        if !a.resource_request {
            return self
                .non_resource_urls
                .iter()
                .any(|u| url_matches(u, a.path));
        }
        has_or_star(&self.api_groups, a.api_group)
            && self.resource_matches(a.resource, a.subresource)
            && (self.resource_names.is_empty() || self.resource_names.iter().any(|n| n == a.name))
    }

    fn resource_matches(&self, resource: &str, sub: &str) -> bool {
        self.resources.iter().any(|r| {
            r == "*"
                || (sub.is_empty() && r == resource)
                || (!sub.is_empty()
                    && (r.strip_prefix(resource).and_then(|x| x.strip_prefix('/')) == Some(sub)
                        || r.strip_prefix("*/") == Some(sub)))
        })
    }
}

/// A string list as Go's `%q` prints it: `["a" "b"]`.
pub fn go_quoted(v: &[String]) -> String {
    let items: Vec<String> = v.iter().map(|s| format!("{s:?}")).collect();
    format!("[{}]", items.join(" "))
}

fn has_or_star(set: &[String], v: &str) -> bool {
    set.iter().any(|s| s == "*" || s == v)
}

/// Whether a `nonResourceURLs` entry matches `path`: `*`, the path itself, or a prefix ending
/// in `*` (RBAC's and the audit policy's rule).
pub(crate) fn url_matches(rule: &str, path: &str) -> bool {
    rule == "*"
        || rule == path
        || rule
            .strip_suffix('*')
            .is_some_and(|prefix| path.starts_with(prefix))
}

/// A subject of a binding.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Subject {
    /// A user name (service accounts become `system:serviceaccount:<ns>:<name>`).
    User(String),
    /// A group.
    Group(String),
}

fn subjects(binding: &Value, binding_ns: &str) -> Vec<(Subject, String)> {
    let Some(list) = binding.get("subjects").and_then(Value::as_array) else {
        return Vec::new();
    };
    list.iter()
        .filter_map(|s| {
            let name = s.get("name").and_then(Value::as_str)?;
            let kind = s.get("kind").and_then(Value::as_str)?;
            match kind {
                "User" => Some((Subject::User(name.into()), format!("User {name:?}"))),
                "Group" => Some((Subject::Group(name.into()), format!("Group {name:?}"))),
                "ServiceAccount" => {
                    let ns = s
                        .get("namespace")
                        .and_then(Value::as_str)
                        .filter(|n| !n.is_empty())
                        .unwrap_or(binding_ns);
                    (!ns.is_empty()).then(|| {
                        (
                            Subject::User(format!("system:serviceaccount:{ns}:{name}")),
                            format!("ServiceAccount {:?}", format!("{name}/{ns}")),
                        )
                    })
                }
                _ => None,
            }
        })
        .collect()
}

/// Rules granted to a subject through one binding.
#[derive(Debug, Clone)]
pub struct Grant {
    /// The role's rules.
    pub rules: Arc<Vec<Rule>>,
    /// `RoleBinding "x" of ClusterRole "y" to User "z"`, as upstream's allow reasons.
    pub source: Arc<str>,
}

#[derive(Debug, Default)]
struct Scope {
    users: HashMap<String, Vec<Grant>>,
    groups: HashMap<String, Vec<Grant>>,
}

impl Scope {
    fn add(&mut self, s: Subject, g: Grant) {
        match s {
            Subject::User(u) => self.users.entry(u).or_default().push(g),
            Subject::Group(n) => self.groups.entry(n).or_default().push(g),
        }
    }

    /// The grants of the user's name and groups, in that order, until `f` says stop.
    fn visit<'a>(&'a self, user: &UserInfo, f: &mut dyn FnMut(&'a Grant) -> bool) -> bool {
        for g in self.users.get(&user.name).into_iter().flatten() {
            if !f(g) {
                return false;
            }
        }
        for group in &user.groups {
            for g in self.groups.get(group).into_iter().flatten() {
                if !f(g) {
                    return false;
                }
            }
        }
        true
    }
}

/// The RBAC objects, indexed for decisions.
#[derive(Debug, Default)]
pub struct Policy {
    cluster: Scope,
    namespaces: HashMap<String, Scope>,
    /// The ClusterRoles, by name (their rules).
    cluster_roles: HashMap<String, Arc<Vec<Rule>>>,
    /// The Roles, by namespace and name.
    roles: HashMap<(String, String), Arc<Vec<Rule>>>,
}

/// The `rules` of a Role or ClusterRole object.
pub(crate) fn rules_of(role: &Value) -> Vec<Rule> {
    role.get("rules")
        .and_then(Value::as_array)
        .map(|rs| rs.iter().map(Rule::from_json).collect())
        .unwrap_or_default()
}

fn meta<'a>(o: &'a Value, f: &str) -> &'a str {
    o.pointer(&format!("/metadata/{f}"))
        .and_then(Value::as_str)
        .unwrap_or("")
}

impl Policy {
    /// Indexes the four kinds of RBAC objects. A binding to a role that does not exist grants
    /// nothing (until the role appears, which rebuilds the policy).
    pub fn build(
        cluster_roles: &[Value],
        roles: &[Value],
        cluster_bindings: &[Value],
        bindings: &[Value],
    ) -> Policy {
        let cluster_roles: HashMap<String, Arc<Vec<Rule>>> = cluster_roles
            .iter()
            .map(|r| (meta(r, "name").to_string(), Arc::new(rules_of(r))))
            .collect();
        let roles: HashMap<(&str, &str), Arc<Vec<Rule>>> = roles
            .iter()
            .map(|r| {
                (
                    (meta(r, "namespace"), meta(r, "name")),
                    Arc::new(rules_of(r)),
                )
            })
            .collect();
        let mut p = Policy::default();
        for b in cluster_bindings {
            let role = b.pointer("/roleRef/name").and_then(Value::as_str);
            let kind = b.pointer("/roleRef/kind").and_then(Value::as_str);
            let (Some(role), Some("ClusterRole")) = (role, kind) else {
                continue;
            };
            let Some(rules) = cluster_roles.get(role) else {
                continue;
            };
            for (s, who) in subjects(b, "") {
                let source = format!(
                    "ClusterRoleBinding {:?} of ClusterRole {role:?} to {who}",
                    meta(b, "name")
                );
                p.cluster.add(
                    s,
                    Grant {
                        rules: rules.clone(),
                        source: source.into(),
                    },
                );
            }
        }
        for b in bindings {
            let ns = meta(b, "namespace");
            let role = b.pointer("/roleRef/name").and_then(Value::as_str);
            let kind = b.pointer("/roleRef/kind").and_then(Value::as_str);
            let rules = match (kind, role) {
                (Some("ClusterRole"), Some(r)) => cluster_roles.get(r),
                (Some("Role"), Some(r)) => roles.get(&(ns, r)),
                _ => None,
            };
            let Some(rules) = rules else {
                continue;
            };
            let scope = p.namespaces.entry(ns.to_string()).or_default();
            for (s, who) in subjects(b, ns) {
                let source = format!(
                    "RoleBinding {:?} of {} {:?} to {who}",
                    format!("{}/{ns}", meta(b, "name")),
                    kind.unwrap_or_default(),
                    role.unwrap_or_default()
                );
                scope.add(
                    s,
                    Grant {
                        rules: rules.clone(),
                        source: source.into(),
                    },
                );
            }
        }
        p.roles = roles
            .into_iter()
            .map(|((ns, n), r)| ((ns.to_string(), n.to_string()), r))
            .collect();
        p.cluster_roles = cluster_roles;
        p
    }

    /// Visits the grants that apply to `user` in `namespace` (cluster-wide ones first; `""` for
    /// cluster-scoped requests, where only ClusterRoleBindings count) until `f` says stop.
    fn visit<'a>(&'a self, user: &UserInfo, namespace: &str, f: &mut dyn FnMut(&'a Grant) -> bool) {
        if !self.cluster.visit(user, f) || namespace.is_empty() {
            return;
        }
        if let Some(scope) = self.namespaces.get(namespace) {
            scope.visit(user, f);
        }
    }

    /// The binding that allows the request, if one does.
    pub fn allowed_by(&self, a: &Attributes) -> Option<&Grant> {
        let mut found = None;
        self.visit(a.user, a.namespace, &mut |g| {
            if g.rules.iter().any(|r| r.allows(a)) {
                found = Some(g);
                return false;
            }
            true
        });
        found
    }

    /// Every rule that applies to `user` in `namespace`.
    pub fn rules_for(&self, user: &UserInfo, namespace: &str) -> Vec<Rule> {
        let mut out = Vec::new();
        self.visit(user, namespace, &mut |g| {
            out.extend(g.rules.iter().cloned());
            true
        });
        out
    }

    /// The rules of a Role.
    pub fn role(&self, namespace: &str, name: &str) -> Option<&Arc<Vec<Rule>>> {
        self.roles.get(&(namespace.to_string(), name.to_string()))
    }

    /// The rules of a ClusterRole.
    pub fn cluster_role(&self, name: &str) -> Option<&Arc<Vec<Rule>>> {
        self.cluster_roles.get(name)
    }
}

/// Whether the `owner` rules cover every permission of `rule` (upstream's `Covers`, used to
/// refuse privilege escalation): each verb, group, resource and name (or URL) of `rule` must be
/// granted by some owner rule.
pub fn covers(owner: &[Rule], rule: &Rule) -> bool {
    for verb in &rule.verbs {
        if !rule.non_resource_urls.is_empty() {
            for url in &rule.non_resource_urls {
                let ok = owner.iter().any(|o| {
                    has_or_star(&o.verbs, verb)
                        && o.non_resource_urls.iter().any(|u| url_matches(u, url))
                });
                if !ok {
                    return false;
                }
            }
        }
        for group in &rule.api_groups {
            for resource in &rule.resources {
                let names: Vec<Option<&String>> = if rule.resource_names.is_empty() {
                    vec![None]
                } else {
                    rule.resource_names.iter().map(Some).collect()
                };
                for name in names {
                    let ok = owner.iter().any(|o| {
                        has_or_star(&o.verbs, verb)
                            && has_or_star(&o.api_groups, group)
                            && resource_covered(&o.resources, resource)
                            && match name {
                                None => o.resource_names.is_empty(),
                                Some(n) => {
                                    o.resource_names.is_empty() || o.resource_names.contains(n)
                                }
                            }
                    });
                    if !ok {
                        return false;
                    }
                }
            }
        }
    }
    true
}

fn resource_covered(owner: &[String], resource: &str) -> bool {
    owner.iter().any(|o| {
        o == "*"
            || o == resource
            || resource
                .split_once('/')
                .is_some_and(|(_, sub)| o.strip_prefix("*/") == Some(sub))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn user(name: &str, groups: &[&str]) -> UserInfo {
        UserInfo {
            name: name.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            ..Default::default()
        }
    }

    fn req<'a>(
        u: &'a UserInfo,
        verb: &'a str,
        ns: &'a str,
        group: &'a str,
        resource: &'a str,
        sub: &'a str,
        name: &'a str,
    ) -> Attributes<'a> {
        Attributes {
            user: u,
            verb,
            namespace: ns,
            api_group: group,
            api_version: "v1",
            resource,
            subresource: sub,
            name,
            path: "",
            resource_request: true,
        }
    }

    fn policy() -> Policy {
        Policy::build(
            &[
                json!({"metadata": {"name": "pod-reader"}, "rules": [
                    {"verbs": ["get", "list", "watch"], "apiGroups": [""], "resources": ["pods", "pods/log"]}]}),
                json!({"metadata": {"name": "scaler"}, "rules": [
                    {"verbs": ["update"], "apiGroups": ["*"], "resources": ["*/scale"]}]}),
                json!({"metadata": {"name": "health"}, "rules": [
                    {"verbs": ["get"], "nonResourceURLs": ["/healthz", "/healthz/*"]}]}),
            ],
            &[
                json!({"metadata": {"name": "one-cm", "namespace": "team"}, "rules": [
                {"verbs": ["get", "update"], "apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["settings"]}]}),
            ],
            &[
                json!({"metadata": {"name": "readers"}, "roleRef": {"kind": "ClusterRole", "name": "pod-reader"},
                    "subjects": [{"kind": "Group", "name": "readers"}]}),
                json!({"metadata": {"name": "health"}, "roleRef": {"kind": "ClusterRole", "name": "health"},
                    "subjects": [{"kind": "Group", "name": "system:authenticated"}]}),
                json!({"metadata": {"name": "dangling"}, "roleRef": {"kind": "ClusterRole", "name": "nope"},
                    "subjects": [{"kind": "User", "name": "eve"}]}),
            ],
            &[
                json!({"metadata": {"name": "cm", "namespace": "team"}, "roleRef": {"kind": "Role", "name": "one-cm"},
                    "subjects": [{"kind": "User", "name": "alice"}, {"kind": "ServiceAccount", "name": "bot"}]}),
                json!({"metadata": {"name": "scale", "namespace": "team"}, "roleRef": {"kind": "ClusterRole", "name": "scaler"},
                    "subjects": [{"kind": "ServiceAccount", "name": "ci", "namespace": "tools"}]}),
            ],
        )
    }

    #[test]
    fn cluster_bindings_grant_everywhere_role_bindings_in_their_namespace() {
        let p = policy();
        let reader = user("bob", &["readers", "system:authenticated"]);
        for ns in ["default", "team", ""] {
            let a = req(&reader, "list", ns, "", "pods", "", "");
            let g = p.allowed_by(&a).expect("pod-reader allows listing pods");
            assert_eq!(
                &*g.source,
                "ClusterRoleBinding \"readers\" of ClusterRole \"pod-reader\" to Group \"readers\""
            );
        }
        assert!(
            p.allowed_by(&req(&reader, "get", "x", "", "pods", "log", "p"))
                .is_some()
        );
        // Not another verb, group, resource or subresource.
        assert!(
            p.allowed_by(&req(&reader, "delete", "x", "", "pods", "", "p"))
                .is_none()
        );
        assert!(
            p.allowed_by(&req(&reader, "get", "x", "apps", "pods", "", "p"))
                .is_none()
        );
        assert!(
            p.allowed_by(&req(&reader, "get", "x", "", "pods", "exec", "p"))
                .is_none()
        );
        assert!(
            p.allowed_by(&req(&reader, "get", "x", "", "secrets", "", "p"))
                .is_none()
        );

        let alice = user("alice", &["system:authenticated"]);
        let cm = |verb, ns, name| req(&alice, verb, ns, "", "configmaps", "", name);
        assert!(p.allowed_by(&cm("get", "team", "settings")).is_some());
        // resourceNames: only that name, and never a list or an unnamed create.
        assert!(p.allowed_by(&cm("get", "team", "other")).is_none());
        assert!(p.allowed_by(&cm("list", "team", "")).is_none());
        assert!(p.allowed_by(&cm("get", "default", "settings")).is_none());
        assert!(p.allowed_by(&cm("get", "", "settings")).is_none());

        // Service accounts: the binding's namespace by default, or the subject's.
        let bot = user("system:serviceaccount:team:bot", &[]);
        let g = p
            .allowed_by(&req(
                &bot,
                "update",
                "team",
                "",
                "configmaps",
                "",
                "settings",
            ))
            .unwrap();
        assert_eq!(
            &*g.source,
            "RoleBinding \"cm/team\" of Role \"one-cm\" to ServiceAccount \"bot/team\""
        );
        let ci = user("system:serviceaccount:tools:ci", &[]);
        assert!(
            p.allowed_by(&req(
                &ci,
                "update",
                "team",
                "apps",
                "deployments",
                "scale",
                "d"
            ))
            .is_some()
        );
        assert!(
            p.allowed_by(&req(&ci, "update", "team", "apps", "deployments", "", "d"))
                .is_none()
        );
        // A binding to a missing role grants nothing.
        let eve = user("eve", &[]);
        assert!(
            p.allowed_by(&req(&eve, "get", "x", "", "pods", "", "p"))
                .is_none()
        );
    }

    #[test]
    fn non_resource_urls_match_exactly_or_by_prefix() {
        let p = policy();
        let u = user("u", &["system:authenticated"]);
        let path = |verb, path| Attributes {
            user: &u,
            verb,
            namespace: "",
            api_group: "",
            api_version: "",
            resource: "",
            subresource: "",
            name: "",
            path,
            resource_request: false,
        };
        assert!(p.allowed_by(&path("get", "/healthz")).is_some());
        assert!(p.allowed_by(&path("get", "/healthz/etcd")).is_some());
        assert!(p.allowed_by(&path("get", "/healthzz")).is_none());
        assert!(p.allowed_by(&path("post", "/healthz")).is_none());
        assert!(p.allowed_by(&path("get", "/metrics")).is_none());
    }

    #[test]
    fn covers_refuses_escalation() {
        let rule = |verbs: &[&str], groups: &[&str], res: &[&str], names: &[&str]| Rule {
            verbs: verbs.iter().map(|s| s.to_string()).collect(),
            api_groups: groups.iter().map(|s| s.to_string()).collect(),
            resources: res.iter().map(|s| s.to_string()).collect(),
            resource_names: names.iter().map(|s| s.to_string()).collect(),
            non_resource_urls: Vec::new(),
        };
        let owner = vec![
            rule(&["get", "list"], &[""], &["pods", "*/status"], &[]),
            rule(&["update"], &["apps"], &["deployments"], &["web"]),
        ];
        assert!(covers(&owner, &rule(&["get"], &[""], &["pods"], &[])));
        assert!(covers(
            &owner,
            &rule(&["get"], &[""], &["pods"], &["a", "b"])
        ));
        assert!(covers(
            &owner,
            &rule(&["list"], &[""], &["nodes/status"], &[])
        ));
        assert!(covers(
            &owner,
            &rule(&["update"], &["apps"], &["deployments"], &["web"])
        ));
        assert!(!covers(&owner, &rule(&["delete"], &[""], &["pods"], &[])));
        assert!(!covers(&owner, &rule(&["get"], &["*"], &["pods"], &[])));
        assert!(!covers(&owner, &rule(&["get"], &[""], &["*"], &[])));
        assert!(!covers(&owner, &rule(&["*"], &[""], &["pods"], &[])));
        assert!(!covers(
            &owner,
            &rule(&["update"], &["apps"], &["deployments"], &[])
        ));
        let admin = vec![rule(&["*"], &["*"], &["*"], &[])];
        assert!(covers(&admin, &rule(&["*"], &["*"], &["*"], &[])));
        let mut url = rule(&["get"], &[], &[], &[]);
        url.non_resource_urls = vec!["/healthz".into()];
        assert!(!covers(&admin, &url));
        let mut urls = rule(&["get"], &[], &[], &[]);
        urls.non_resource_urls = vec!["/health*".into()];
        assert!(covers(&[urls.clone()], &url));
        assert!(!covers(&[url], &urls));
    }
}
