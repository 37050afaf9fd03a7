//! The bootstrap policy: the ClusterRoles, ClusterRoleBindings, Roles and RoleBindings
//! kube-apiserver creates at start with RBAC on (`cluster-admin`, `admin`/`edit`/`view` by
//! aggregation, `system:*` roles for the components, nodes, controllers and discovery), written
//! in `policy.txt` in a compact form and reconciled as upstream does: missing objects are
//! created, and objects annotated `rbac.authorization.kubernetes.io/autoupdate: "true"` get the
//! rules and subjects they lack (nothing is removed).

use std::sync::atomic::Ordering;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::rbac::{self, Rule};
use crate::registry::{Registry, WriteOpts};

const POLICY: &str = include_str!("policy.txt");

/// One bootstrap object.
#[derive(Debug, Clone, PartialEq)]
pub struct Object {
    /// `clusterroles`, `clusterrolebindings`, `roles` or `rolebindings`.
    pub resource: &'static str,
    /// Namespace (Roles and RoleBindings).
    pub namespace: String,
    /// The object.
    pub value: Value,
}

fn list(v: &str) -> Vec<String> {
    if v.is_empty() {
        return vec![String::new()];
    }
    v.split(',').map(str::to_string).collect()
}

fn subject(s: &str) -> Result<Value, String> {
    let (kind, name) = s
        .split_once(':')
        .ok_or_else(|| format!("subject {s:?} has no kind"))?;
    Ok(match kind {
        "User" | "Group" => {
            json!({"kind": kind, "apiGroup": "rbac.authorization.k8s.io", "name": name})
        }
        "SA" => {
            let (ns, n) = name
                .split_once('/')
                .ok_or_else(|| format!("service account {name:?} needs <namespace>/<name>"))?;
            json!({"kind": "ServiceAccount", "namespace": ns, "name": n})
        }
        _ => return Err(format!("unknown subject kind {kind:?}")),
    })
}

fn metadata(name: &str, namespace: &str, labels: &[(String, String)]) -> Value {
    let mut l = serde_json::Map::new();
    l.insert("kubernetes.io/bootstrapping".into(), json!("rbac-defaults"));
    for (k, v) in labels {
        l.insert(k.clone(), json!(v));
    }
    let mut m = json!({
        "name": name,
        "labels": l,
        "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"},
    });
    if !namespace.is_empty() {
        m["namespace"] = json!(namespace);
    }
    m
}

fn pairs(s: &str, sep: char) -> Vec<(String, String)> {
    s.split(sep)
        .filter(|p| !p.is_empty())
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Parses the policy text. Lines: `CLUSTERROLE <name> [labels=k=v,...] [aggregate-from=k=v;...]`
/// and `ROLE <ns>/<name>`, each followed by `rule verbs=.. groups=.. resources=.. [names=..]`
/// or `rule verbs=.. urls=..` lines; `BINDING <name> role=<clusterrole> subjects=..` and
/// `ROLEBINDING <ns>/<name> role=Role:<name>|ClusterRole:<name> subjects=..`, subjects as
/// `User:x`, `Group:x` or `SA:<ns>/<name>`. `#` starts a comment.
pub fn parse(text: &str) -> Result<Vec<Object>, String> {
    let mut out: Vec<Object> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let err = |m: String| format!("policy line {}: {m}: {raw}", i + 1);
        let mut words = line.split_whitespace();
        let head = words.next().unwrap_or("");
        let target = words.next().unwrap_or("");
        let fields: Vec<(String, String)> = words
            .filter_map(|w| w.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let field = |k: &str| fields.iter().find(|(f, _)| f == k).map(|(_, v)| v.as_str());
        match head {
            "CLUSTERROLE" | "ROLE" => {
                let (ns, name) = if head == "ROLE" {
                    target
                        .split_once('/')
                        .ok_or_else(|| err("a Role needs <namespace>/<name>".into()))?
                } else {
                    ("", target)
                };
                let labels = field("labels").map(|l| pairs(l, ',')).unwrap_or_default();
                let mut value = json!({
                    "apiVersion": "rbac.authorization.k8s.io/v1",
                    "kind": if head == "ROLE" { "Role" } else { "ClusterRole" },
                    "metadata": metadata(name, ns, &labels),
                    "rules": [],
                });
                if let Some(agg) = field("aggregate-from") {
                    let selectors: Vec<Value> = agg
                        .split(';')
                        .map(|sel| {
                            let m: serde_json::Map<String, Value> = pairs(sel, ',')
                                .into_iter()
                                .map(|(k, v)| (k, json!(v)))
                                .collect();
                            json!({ "matchLabels": m })
                        })
                        .collect();
                    value["aggregationRule"] = json!({ "clusterRoleSelectors": selectors });
                }
                out.push(Object {
                    resource: if head == "ROLE" {
                        "roles"
                    } else {
                        "clusterroles"
                    },
                    namespace: ns.to_string(),
                    value,
                });
            }
            "rule" => {
                let role = out
                    .last_mut()
                    .filter(|o| matches!(o.resource, "roles" | "clusterroles"))
                    .ok_or_else(|| err("a rule outside a role".into()))?;
                let line_fields: Vec<(String, String)> = line
                    .split_whitespace()
                    .skip(1)
                    .filter_map(|w| w.split_once('='))
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect();
                let get = |k: &str| {
                    line_fields
                        .iter()
                        .find(|(f, _)| f == k)
                        .map(|(_, v)| v.as_str())
                };
                let verbs = get("verbs").ok_or_else(|| err("a rule without verbs".into()))?;
                let rule = Rule {
                    verbs: list(verbs),
                    api_groups: get("groups").map(list).unwrap_or_default(),
                    resources: get("resources").map(list).unwrap_or_default(),
                    resource_names: get("names").map(list).unwrap_or_default(),
                    non_resource_urls: get("urls").map(list).unwrap_or_default(),
                };
                if rule.resources.is_empty() == rule.non_resource_urls.is_empty() {
                    return Err(err("a rule needs resources or urls (not both)".into()));
                }
                role.value["rules"]
                    .as_array_mut()
                    .expect("roles are made with a rules list")
                    .push(rule.to_json());
            }
            "BINDING" | "ROLEBINDING" => {
                let (ns, name) = if head == "ROLEBINDING" {
                    target
                        .split_once('/')
                        .ok_or_else(|| err("a RoleBinding needs <namespace>/<name>".into()))?
                } else {
                    ("", target)
                };
                let role = field("role").ok_or_else(|| err("no role=".into()))?;
                // `Role:<name>` or `ClusterRole:<name>`; a bare name is a ClusterRole's.
                let (kind, role) = match role.split_once(':') {
                    Some((k @ ("Role" | "ClusterRole"), r)) => (k, r),
                    _ => ("ClusterRole", role),
                };
                let subjects: Vec<Value> = field("subjects")
                    .unwrap_or("")
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(subject)
                    .collect::<Result<_, _>>()
                    .map_err(err)?;
                out.push(Object {
                    resource: if head == "ROLEBINDING" {
                        "rolebindings"
                    } else {
                        "clusterrolebindings"
                    },
                    namespace: ns.to_string(),
                    value: json!({
                        "apiVersion": "rbac.authorization.k8s.io/v1",
                        "kind": if head == "ROLEBINDING" { "RoleBinding" } else { "ClusterRoleBinding" },
                        "metadata": metadata(name, ns, &[]),
                        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": role},
                        "subjects": subjects,
                    }),
                });
            }
            other => return Err(err(format!("unknown entry {other:?}"))),
        }
    }
    Ok(out)
}

/// The bootstrap objects.
pub fn policy() -> Vec<Object> {
    parse(POLICY).expect("BUG: the bundled RBAC policy parses (a unit test checks it)")
}

/// What an existing object lacks of its bootstrap form, as the reconciled object; `None` when
/// nothing is missing or the object opted out (annotated autoupdate "false"; no annotation counts
/// as "true").
pub fn reconcile(existing: &Value, wanted: &Object) -> Option<Value> {
    let auto = existing
        .pointer("/metadata/annotations/rbac.authorization.kubernetes.io~1autoupdate")
        .and_then(Value::as_str);
    if auto == Some("false") {
        return None;
    }
    let mut out = existing.clone();
    let mut changed = false;
    if matches!(wanted.resource, "roles" | "clusterroles") {
        let have = rbac::rules_of(existing);
        // An aggregated role's rules are the aggregation controller's to fill.
        if wanted.value.get("aggregationRule").is_none() {
            let rules = out["rules"].as_array_mut();
            let mut add: Vec<Value> = Vec::new();
            for r in wanted.value["rules"].as_array().into_iter().flatten() {
                if !rbac::covers(&have, &Rule::from_json(r)) {
                    add.push(r.clone());
                }
            }
            if !add.is_empty() {
                changed = true;
                match rules {
                    Some(rs) => rs.extend(add),
                    None => out["rules"] = json!(add),
                }
            }
        } else if existing.get("aggregationRule") != wanted.value.get("aggregationRule") {
            out["aggregationRule"] = wanted.value["aggregationRule"].clone();
            changed = true;
        }
    } else {
        let have = existing
            .get("subjects")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let mut subjects = have.clone();
        for s in wanted.value["subjects"].as_array().into_iter().flatten() {
            let same = |h: &Value| {
                h["kind"] == s["kind"]
                    && h["name"] == s["name"]
                    && h.get("namespace").unwrap_or(&Value::Null)
                        == s.get("namespace").unwrap_or(&Value::Null)
            };
            if !have.iter().any(same) {
                subjects.push(s.clone());
                changed = true;
            }
        }
        out["subjects"] = json!(subjects);
    }
    // Labels and annotations it lacks are added; where both have a key, the existing value stays.
    for field in ["labels", "annotations"] {
        for (k, v) in wanted.value["metadata"][field]
            .as_object()
            .into_iter()
            .flatten()
        {
            let have = out["metadata"][field]
                .as_object()
                .is_some_and(|m| m.contains_key(k));
            if !have {
                if !out["metadata"][field].is_object() {
                    out["metadata"][field] = json!({});
                }
                out["metadata"][field][k] = v.clone();
                changed = true;
            }
        }
    }
    changed.then_some(out)
}

/// How many bootstrap objects are created or reconciled at once.
const BOOTSTRAP_IN_FLIGHT: usize = 16;

/// Creates and reconciles the bootstrap policy until it is all in place (retrying while the
/// store is unavailable), then marks `src` bootstrapped. Several apiservers doing this at once is
/// fine: a create that loses gets 409 and reconciles, an update that loses retries.
pub async fn ensure(
    registry: Registry,
    src: std::sync::Arc<super::RbacSource>,
    stop: CancellationToken,
) {
    let objects = policy();
    let mut pending: Vec<&Object> = objects.iter().collect();
    while !pending.is_empty() && !stop.is_cancelled() {
        // Several at a time: one after the other, the ~100 objects took 13 s to reconcile
        // after a restart under load, and the apiserver is not ready until they are.
        let mut left = Vec::new();
        for chunk in pending.chunks(BOOTSTRAP_IN_FLIGHT) {
            let mut calls = Vec::with_capacity(chunk.len());
            for o in chunk {
                calls.push(ensure_one(&registry, o));
            }
            let outcomes = futures::future::join_all(calls).await;
            for (o, outcome) in chunk.iter().zip(outcomes) {
                if let Err(e) = outcome {
                    tracing::debug!(object = %o.value["metadata"]["name"], error = %e, "bootstrap RBAC object not in place yet");
                    left.push(*o);
                }
            }
        }
        pending = left;
        if !pending.is_empty() {
            tokio::select! {
                _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                _ = stop.cancelled() => return,
            }
        }
    }
    tracing::info!(objects = objects.len(), "RBAC bootstrap policy in place");
    src.bootstrapped.store(true, Ordering::Release);
}

async fn ensure_one(registry: &Registry, o: &Object) -> crate::status::ApiResult<()> {
    let res = crate::resources::find("rbac.authorization.k8s.io", "v1", o.resource)
        .expect("RBAC resources are served");
    let name = o.value["metadata"]["name"].as_str().unwrap_or_default();
    match registry
        .create(res, &o.namespace, o.value.clone(), &WriteOpts::internal())
        .await
    {
        Ok(_) => return Ok(()),
        Err(e) if e.code == 409 => {}
        Err(e) => return Err(e),
    }
    registry
        .guaranteed_update(
            res,
            &o.namespace,
            name,
            false,
            &WriteOpts::internal(),
            None,
            |existing| Ok(reconcile(existing, o).unwrap_or_else(|| existing.clone())),
        )
        .await
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bundled_policy_parses_and_its_bindings_point_at_its_roles() {
        let objs = policy();
        let names = |r: &str| -> Vec<String> {
            objs.iter()
                .filter(|o| o.resource == r)
                .map(|o| o.value["metadata"]["name"].as_str().unwrap().to_string())
                .collect()
        };
        let roles = names("clusterroles");
        for must in ["cluster-admin", "admin", "edit", "view", "system:discovery"] {
            assert!(roles.iter().any(|r| r == must), "{must} missing");
        }
        for b in objs.iter().filter(|o| o.resource == "clusterrolebindings") {
            let role = b.value["roleRef"]["name"].as_str().unwrap();
            assert!(
                roles.iter().any(|r| r == role),
                "{} binds missing {role}",
                b.value["metadata"]["name"]
            );
        }
        for b in objs.iter().filter(|o| o.resource == "rolebindings") {
            let role = b.value["roleRef"]["name"].as_str().unwrap();
            let found = match b.value["roleRef"]["kind"].as_str().unwrap() {
                "Role" => objs.iter().any(|o| {
                    o.resource == "roles"
                        && o.namespace == b.namespace
                        && o.value["metadata"]["name"] == role
                }),
                _ => roles.iter().any(|r| r == role),
            };
            assert!(
                found,
                "{} binds missing {role}",
                b.value["metadata"]["name"]
            );
        }
    }

    #[test]
    fn parse_reads_every_form_and_refuses_bad_lines() {
        let objs = parse(
            "CLUSTERROLE r labels=a=b aggregate-from=x=1;y=2\n  rule verbs=get groups=,apps resources=pods names=p\n  rule verbs=get urls=/healthz\nBINDING b role=r subjects=Group:g,SA:ns/sa\nROLE ns/r2\n  rule verbs=* groups=* resources=*\nROLEBINDING ns/b2 role=Role:r2 subjects=User:u # comment\n",
        )
        .unwrap();
        assert_eq!(objs.len(), 4);
        assert_eq!(
            objs[0].value["rules"],
            json!([{"verbs": ["get"], "apiGroups": ["", "apps"], "resources": ["pods"], "resourceNames": ["p"]},
                   {"verbs": ["get"], "nonResourceURLs": ["/healthz"]}])
        );
        assert_eq!(
            objs[0].value["aggregationRule"],
            json!({"clusterRoleSelectors": [{"matchLabels": {"x": "1"}}, {"matchLabels": {"y": "2"}}]})
        );
        assert_eq!(objs[0].value["metadata"]["labels"]["a"], "b");
        assert_eq!(
            objs[1].value["subjects"][1],
            json!({"kind": "ServiceAccount", "namespace": "ns", "name": "sa"})
        );
        assert_eq!(objs[3].value["roleRef"]["kind"], "Role");
        assert_eq!(objs[3].namespace, "ns");
        for bad in [
            "rule verbs=get resources=pods",
            "CLUSTERROLE r\n rule groups= resources=pods",
            "CLUSTERROLE r\n rule verbs=get",
            "BINDING b role=r subjects=Robot:x",
            "ROLE noslash",
            "WHAT x",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn reconcile_adds_what_is_missing_and_respects_opt_out() {
        let objs = parse(
            "CLUSTERROLE r\n rule verbs=get,list groups= resources=pods\n rule verbs=get urls=/x\nBINDING b role=r subjects=Group:g,User:u\n",
        )
        .unwrap();
        let mut role = objs[0].value.clone();
        role["rules"] = json!([{"verbs": ["*"], "apiGroups": [""], "resources": ["pods"]}, {"verbs": ["watch"], "apiGroups": ["apps"], "resources": ["x"]}]);
        let fixed = reconcile(&role, &objs[0]).expect("the URL rule is missing");
        assert_eq!(fixed["rules"].as_array().unwrap().len(), 3);
        assert_eq!(fixed["rules"][2]["nonResourceURLs"], json!(["/x"]));
        assert_eq!(reconcile(&fixed, &objs[0]), None);
        let mut binding = objs[1].value.clone();
        binding["subjects"] = json!([{"kind": "User", "name": "u", "apiGroup": "rbac.authorization.k8s.io"}, {"kind": "User", "name": "extra"}]);
        let fixed = reconcile(&binding, &objs[1]).unwrap();
        assert_eq!(fixed["subjects"].as_array().unwrap().len(), 3);
        role["metadata"]["annotations"]["rbac.authorization.kubernetes.io/autoupdate"] =
            json!("false");
        assert_eq!(reconcile(&role, &objs[0]), None);
        // No annotation counts as autoupdate; labels it lacks are added, its own values stay.
        let mut bare = objs[0].value.clone();
        bare["metadata"] = json!({"name": "r", "labels": {"kubernetes.io/bootstrapping": "mine"}});
        let fixed = reconcile(&bare, &objs[0]).unwrap();
        assert_eq!(
            fixed["metadata"]["labels"]["kubernetes.io/bootstrapping"],
            "mine"
        );
        assert_eq!(
            fixed["metadata"]["annotations"]["rbac.authorization.kubernetes.io/autoupdate"],
            "true"
        );
    }
}
