//! What `keelson up` grants its components beyond the bootstrap RBAC policy, applied once the
//! apiservers are ready and before anything else starts:
//!
//! - nothing for the controller-manager: it runs with `--use-service-account-credentials`, each
//!   controller as its own ServiceAccount bound to its bootstrap `system:controller:*` role, and
//!   its own identity (`system:kube-controller-manager`) has the bootstrap role of that name (the
//!   `cluster-admin` binding earlier versions made is removed);
//! - the nodes run the service proxy and the network policy agent in-process, under the node's
//!   identity: the `system:nodes` group is bound to `system:node-proxier` and to a role that reads
//!   NetworkPolicies, namespaces and pods;
//! - the cluster DNS (`system:keelson-dns`) gets CoreDNS's read access (Services, Endpoints,
//!   EndpointSlices, namespaces, pods; `system:kube-dns` lacks EndpointSlices);
//! - the hollow nodes (many nodes behind one identity, `system:keelson-hollow-nodes`) are bound to
//!   `system:node` for what they do as one (their shared pod watch, Events), and may impersonate
//!   each of their nodes' kubelet identities (`system:node:<name>`, group `system:nodes`), which
//!   they write as (`keelson node --impersonate-nodes`).
//!
//! Everything carries the label `app.kubernetes.io/managed-by=keelson-up` and is server-side
//! applied, so a restart re-applies it unchanged.

use std::path::Path;

use anyhow::Context;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::{Value, json};

/// The controller-manager's user (its client certificate's CN).
pub const CONTROLLER_MANAGER: &str = "system:kube-controller-manager";
/// The cluster DNS servers' user.
pub const DNS: &str = "system:keelson-dns";
/// The hollow nodes' user.
pub const HOLLOW_NODES: &str = "system:keelson-hollow-nodes";

fn binding(name: &str, role: &str, kind: &str, subject: &str) -> Value {
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/managed-by": "keelson-up"}},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": subject}],
    })
}

/// The name prefix of `up`'s hollow nodes (`keelson node --hollow` names them
/// `hollow-node-0`, `hollow-node-1`, ...).
pub const HOLLOW_NODE_PREFIX: &str = "hollow-node";

/// The ClusterRoles and ClusterRoleBindings `up` applies, for a cluster of `hollow_nodes`
/// hollow nodes.
pub fn objects(hollow_nodes: usize) -> (Vec<Value>, Vec<Value>) {
    let node_users: Vec<String> = (0..hollow_nodes)
        .map(|i| format!("system:node:{HOLLOW_NODE_PREFIX}-{i}"))
        .collect();
    let mut roles = vec![
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": "keelson:dns", "labels": {"app.kubernetes.io/managed-by": "keelson-up"}},
            "rules": [
                {"apiGroups": [""], "resources": ["endpoints", "services", "pods", "namespaces"], "verbs": ["list", "watch"]},
                {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]},
            ],
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": "keelson:network-policy-agent", "labels": {"app.kubernetes.io/managed-by": "keelson-up"}},
            "rules": [
                {"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies"], "verbs": ["get", "list", "watch"]},
                {"apiGroups": [""], "resources": ["namespaces", "pods"], "verbs": ["get", "list", "watch"]},
            ],
        }),
    ];
    let mut bindings = vec![
        binding(
            "keelson:node-proxier",
            "system:node-proxier",
            "Group",
            "system:nodes",
        ),
        binding(
            "keelson:network-policy-agent",
            "keelson:network-policy-agent",
            "Group",
            "system:nodes",
        ),
        binding("keelson:dns", "keelson:dns", "User", DNS),
        binding("keelson:hollow-nodes", "system:node", "User", HOLLOW_NODES),
    ];
    if hollow_nodes > 0 {
        roles.push(json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": HOLLOW_IMPERSONATION, "labels": {"app.kubernetes.io/managed-by": "keelson-up"}},
            "rules": [
                {"apiGroups": [""], "resources": ["users"], "verbs": ["impersonate"], "resourceNames": node_users},
                {"apiGroups": [""], "resources": ["groups"], "verbs": ["impersonate"], "resourceNames": ["system:nodes"]},
            ],
        }));
        bindings.push(binding(
            HOLLOW_IMPERSONATION,
            HOLLOW_IMPERSONATION,
            "User",
            HOLLOW_NODES,
        ));
    }
    (roles, bindings)
}

/// Applies [`objects`] with the admin's kubeconfig.
pub async fn apply(kubeconfig: &Path, hollow_nodes: usize) -> anyhow::Result<()> {
    let client = keelson_client::connect::connect(
        &keelson_client::connect::ClientArgs::from_kubeconfig(kubeconfig),
    )
    .await?;
    let (roles, bindings) = objects(hollow_nodes);
    apply_all(Api::<ClusterRole>::all(client.clone()), &roles).await?;
    let api = Api::<ClusterRoleBinding>::all(client.clone());
    apply_all(api.clone(), &bindings).await?;
    // The controller-manager's cluster-admin binding of earlier versions goes, and so does the
    // hollow nodes' impersonation when there are none now.
    remove(&api, OBSOLETE_BINDING).await?;
    if hollow_nodes == 0 {
        remove(&api, HOLLOW_IMPERSONATION).await?;
        remove(&Api::<ClusterRole>::all(client), HOLLOW_IMPERSONATION).await?;
    }
    Ok(())
}

/// Deletes `name` if it exists.
async fn remove<K>(api: &Api<K>, name: &str) -> anyhow::Result<()>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &kube::api::DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {name}")),
    }
}

/// The ClusterRole and ClusterRoleBinding that let the hollow nodes act as their nodes.
const HOLLOW_IMPERSONATION: &str = "keelson:hollow-nodes-impersonate";

/// The binding of the controller-manager to `cluster-admin` that earlier versions made.
const OBSOLETE_BINDING: &str = "keelson:controller-manager";

/// Server-side applies each object (by its name) through `api`.
async fn apply_all<K>(api: Api<K>, objects: &[Value]) -> anyhow::Result<()>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let pp = PatchParams::apply("keelson-up").force();
    for o in objects {
        let name = o["metadata"]["name"].as_str().unwrap_or_default();
        api.patch(name, &pp, &Patch::Apply(o))
            .await
            .with_context(|| format!("applying {} {name}", o["kind"].as_str().unwrap_or("")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hollow_nodes_may_impersonate_exactly_their_nodes() {
        let named = |v: &[Value], n: &str| v.iter().any(|o| o["metadata"]["name"] == n);
        let (roles, bindings) = objects(0);
        assert!(!named(&roles, HOLLOW_IMPERSONATION) && !named(&bindings, HOLLOW_IMPERSONATION));
        let (roles, bindings) = objects(3);
        assert!(named(&bindings, HOLLOW_IMPERSONATION));
        let role = roles
            .iter()
            .find(|o| o["metadata"]["name"] == HOLLOW_IMPERSONATION)
            .unwrap();
        assert_eq!(
            role["rules"][0]["resourceNames"],
            json!([
                "system:node:hollow-node-0",
                "system:node:hollow-node-1",
                "system:node:hollow-node-2"
            ])
        );
        assert_eq!(role["rules"][1]["resourceNames"], json!(["system:nodes"]));
    }
}
