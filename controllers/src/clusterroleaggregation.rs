//! The ClusterRole aggregation controller, as upstream's `clusterrole-aggregation`: a ClusterRole
//! with an `aggregationRule` gets as its rules the rules of every other ClusterRole its label
//! selectors match (in name order, each rule once). This is how `admin`, `edit` and `view` pick
//! up `system:aggregate-to-*` and the rules CRD authors label in.

use std::sync::Arc;

use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule};
use keelson_client::queue::WorkQueue;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};

use crate::Informers;
use crate::util::{SyncResult, is_not_found, matches, parse_selector, reconciler};

/// The ClusterRole aggregation controller.
pub struct ClusterRoleAggregation {
    client: Client,
    roles: Store<ClusterRole>,
    queue: WorkQueue<String>,
}

impl ClusterRoleAggregation {
    /// Registers the controller's handlers on the shared informers.
    pub fn new(informers: &mut Informers) -> Arc<Self> {
        let queue = WorkQueue::new();
        let roles = informers.clusterroles().store();
        {
            // Any change may feed any aggregated role: look at all of them.
            let (q, store) = (queue.clone(), roles.clone());
            informers.clusterroles().on_change(move |_| {
                for r in store.state() {
                    if r.aggregation_rule.is_some() {
                        q.add(r.name_any());
                    }
                }
            });
        }
        Arc::new(Self {
            client: informers.client(),
            roles,
            queue,
        })
    }

    async fn sync(self: Arc<Self>, name: String) -> SyncResult {
        let Some(role) = self.roles.get(&ObjectRef::new(&name)) else {
            return Ok(None);
        };
        let Some(rule) = &role.aggregation_rule else {
            return Ok(None);
        };
        let rules = aggregate(&name, rule, &self.roles.state());
        if role.rules.as_deref().unwrap_or_default() == rules.as_slice() {
            return Ok(None);
        }
        let api: Api<ClusterRole> = Api::all(self.client.clone());
        let patch = serde_json::json!({ "rules": rules });
        match api
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                tracing::debug!(role = %name, rules = rules.len(), "aggregated cluster role");
                Ok(None)
            }
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// The rules of the roles `rule` selects (other than `name` itself), by role name, each once.
fn aggregate(
    name: &str,
    rule: &k8s_openapi::api::rbac::v1::AggregationRule,
    all: &[Arc<ClusterRole>],
) -> Vec<PolicyRule> {
    let selectors: Vec<_> = rule
        .cluster_role_selectors
        .iter()
        .flatten()
        .filter_map(|s| parse_selector(Some(s)).ok())
        .collect();
    let mut sources: Vec<&Arc<ClusterRole>> = all
        .iter()
        .filter(|r| r.name_any() != name)
        .filter(|r| selectors.iter().any(|s| matches(s, r.labels())))
        .collect();
    sources.sort_by_key(|r| r.name_any());
    let mut out: Vec<PolicyRule> = Vec::new();
    for r in sources {
        for p in r.rules.iter().flatten() {
            if !out.contains(p) {
                out.push(p.clone());
            }
        }
    }
    out
}

reconciler!(ClusterRoleAggregation, "clusterrole-aggregation");

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::rbac::v1::AggregationRule;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

    fn role(name: &str, label: Option<&str>, verbs: &[&str]) -> Arc<ClusterRole> {
        Arc::new(ClusterRole {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: label.map(|l| [(l.to_string(), "true".to_string())].into()),
                ..Default::default()
            },
            rules: Some(vec![PolicyRule {
                verbs: verbs.iter().map(|v| v.to_string()).collect(),
                api_groups: Some(vec![String::new()]),
                resources: Some(vec!["pods".into()]),
                ..Default::default()
            }]),
            aggregation_rule: None,
        })
    }

    #[test]
    fn selected_roles_rules_in_name_order_once_each() {
        let sel = |l: &str| LabelSelector {
            match_labels: Some([(l.to_string(), "true".to_string())].into()),
            ..Default::default()
        };
        let rule = AggregationRule {
            cluster_role_selectors: Some(vec![sel("to-view"), sel("to-edit")]),
        };
        let all = vec![
            role("b", Some("to-view"), &["get"]),
            role("a", Some("to-edit"), &["update"]),
            role("c", Some("to-view"), &["get"]),
            role("d", Some("other"), &["delete"]),
            role("view", Some("to-view"), &["list"]),
        ];
        let rules = aggregate("view", &rule, &all);
        let verbs: Vec<&str> = rules.iter().map(|r| r.verbs[0].as_str()).collect();
        assert_eq!(verbs, ["update", "get"]);
        assert!(aggregate("x", &AggregationRule::default(), &all).is_empty());
    }
}
