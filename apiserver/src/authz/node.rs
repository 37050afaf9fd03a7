//! The Node authorizer (`--authorization-mode=Node`), as upstream's: a kubelet, known by its
//! credentials as user `system:node:<name>` in group `system:nodes`, may read a Secret,
//! ConfigMap, PersistentVolumeClaim or PersistentVolume only when a pod bound to its node uses
//! it, may only touch its own node Lease and CSINode, and may do the rest of what the
//! `system:node` ClusterRole of the bootstrap policy says. Anyone else gets no opinion.
//!
//! The pod → object graph is kept from the pod and PVC watch caches, event by event.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use serde_json::Value;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use super::rbac::Rule;
use super::{Attributes, Decision, UserInfo};
use crate::cache::{Cacher, Kind};

/// An object a pod uses: (resource, namespace, name).
type Ref = (&'static str, String, String);

#[derive(Debug, Default)]
struct Graph {
    /// Pod store key → (node, the objects it uses).
    pods: HashMap<Vec<u8>, (String, Vec<Ref>)>,
    /// Node → object → number of its pods that use it.
    by_node: HashMap<String, HashMap<Ref, usize>>,
    /// PVC `namespace/name` → the PV it is bound to.
    pvc_volume: HashMap<String, String>,
}

/// What a pod uses that its node may read.
pub fn pod_refs(pod: &Value) -> Vec<Ref> {
    let ns = pod
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let pod_name = pod
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    let mut out: Vec<Ref> = Vec::new();
    let mut add = |kind: &'static str, name: Option<&Value>| {
        if let Some(n) = name.and_then(Value::as_str).filter(|n| !n.is_empty()) {
            let r = (kind, ns.clone(), n.to_string());
            if !out.contains(&r) {
                out.push(r);
            }
        }
    };
    let spec = pod.get("spec").unwrap_or(&Value::Null);
    // The account the pod names (the ServiceAccount plugin fills it in).
    add("serviceaccounts", spec.get("serviceAccountName"));
    for s in spec
        .get("imagePullSecrets")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        add("secrets", s.get("name"));
    }
    for group in ["initContainers", "containers", "ephemeralContainers"] {
        for c in spec
            .get(group)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            for e in c.get("env").and_then(Value::as_array).into_iter().flatten() {
                add("secrets", e.pointer("/valueFrom/secretKeyRef/name"));
                add("configmaps", e.pointer("/valueFrom/configMapKeyRef/name"));
            }
            for e in c
                .get("envFrom")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                add("secrets", e.pointer("/secretRef/name"));
                add("configmaps", e.pointer("/configMapRef/name"));
            }
        }
    }
    for v in spec
        .get("volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        add("secrets", v.pointer("/secret/secretName"));
        add("configmaps", v.pointer("/configMap/name"));
        add(
            "persistentvolumeclaims",
            v.pointer("/persistentVolumeClaim/claimName"),
        );
        for s in v
            .pointer("/projected/sources")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            add("secrets", s.pointer("/secret/name"));
            add("configmaps", s.pointer("/configMap/name"));
        }
        // Volume plugins that carry credentials in a Secret.
        add("secrets", v.pointer("/azureFile/secretName"));
        add("secrets", v.pointer("/csi/nodePublishSecretRef/name"));
        for plugin in [
            "cephfs",
            "rbd",
            "iscsi",
            "flexVolume",
            "scaleIO",
            "storageos",
        ] {
            add("secrets", v.pointer(&format!("/{plugin}/secretRef/name")));
        }
        // A generic ephemeral volume's claim is named after the pod and the volume.
        if v.get("ephemeral").is_some()
            && let Some(vn) = v.get("name").and_then(Value::as_str)
        {
            add(
                "persistentvolumeclaims",
                Some(&Value::String(format!("{pod_name}-{vn}"))),
            );
        }
    }
    out
}

impl Graph {
    fn remove_pod(&mut self, key: &[u8]) {
        let Some((node, refs)) = self.pods.remove(key) else {
            return;
        };
        if let Some(m) = self.by_node.get_mut(&node) {
            for r in refs {
                if let Some(n) = m.get_mut(&r) {
                    *n -= 1;
                    if *n == 0 {
                        m.remove(&r);
                    }
                }
            }
            if m.is_empty() {
                self.by_node.remove(&node);
            }
        }
    }

    fn set_pod(&mut self, key: &[u8], pod: &Value) {
        self.remove_pod(key);
        let node = pod
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .unwrap_or("");
        if node.is_empty() {
            return;
        }
        let refs = pod_refs(pod);
        let m = self.by_node.entry(node.to_string()).or_default();
        for r in &refs {
            *m.entry(r.clone()).or_default() += 1;
        }
        self.pods.insert(key.to_vec(), (node.to_string(), refs));
    }

    fn set_pvc(&mut self, pvc: &Value, deleted: bool) {
        let ns = pvc
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or("");
        let name = pvc
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("");
        let key = format!("{ns}/{name}");
        match pvc.pointer("/spec/volumeName").and_then(Value::as_str) {
            Some(v) if !deleted && !v.is_empty() => {
                self.pvc_volume.insert(key, v.to_string());
            }
            _ => {
                self.pvc_volume.remove(&key);
            }
        }
    }

    fn uses(&self, node: &str, resource: &str, ns: &str, name: &str) -> bool {
        let Some(m) = self.by_node.get(node) else {
            return false;
        };
        if resource == "persistentvolumes" {
            return m.keys().any(|(kind, pns, claim)| {
                *kind == "persistentvolumeclaims"
                    && self
                        .pvc_volume
                        .get(&format!("{pns}/{claim}"))
                        .map(String::as_str)
                        == Some(name)
            });
        }
        m.keys()
            .any(|(kind, rns, rname)| *kind == resource && rns == ns && rname == name)
    }
}

/// The Node authorizer.
pub struct NodeAuthorizer {
    graph: RwLock<Graph>,
    /// The `system:node` rules, for everything the graph does not decide.
    rules: Vec<Rule>,
}

/// The node a user is, if the user is a node (`system:node:<name>` in `system:nodes`).
pub fn node_name(user: &UserInfo) -> Option<&str> {
    let name = user.name.strip_prefix("system:node:")?;
    (!name.is_empty() && user.groups.iter().any(|g| g == "system:nodes")).then_some(name)
}

impl NodeAuthorizer {
    /// Follows the pod and PVC caches of `cache` until `shutdown`; refused when they are off.
    pub fn start(
        cache: &Arc<crate::cache::Cache>,
        shutdown: &CancellationToken,
    ) -> Result<Arc<Self>, String> {
        let me = Arc::new(Self::with_rules(node_rules()));
        let find = |r: &str| {
            let res = crate::resources::find("", "v1", r).expect("served");
            cache.get(res).cloned()
        };
        let (Some(pods), Some(pvcs)) = (find("pods"), find("persistentvolumeclaims")) else {
            return Err(
                "--authorization-mode=Node needs the watch cache of pods and persistentvolumeclaims (--default-watch-cache-size > 0, not turned off by --watch-cache-sizes)"
                    .into(),
            );
        };
        tokio::spawn(me.clone().follow(pods, false, shutdown.clone()));
        tokio::spawn(me.clone().follow(pvcs, true, shutdown.clone()));
        Ok(me)
    }

    fn with_rules(rules: Vec<Rule>) -> Self {
        NodeAuthorizer {
            graph: RwLock::new(Graph::default()),
            rules,
        }
    }

    async fn follow(self: Arc<Self>, cacher: Arc<Cacher>, pvcs: bool, stop: CancellationToken) {
        let mut sub = cacher.subscribe();
        'relist: loop {
            let values = loop {
                if let Some(v) = cacher.entries() {
                    break v;
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                    _ = stop.cancelled() => return,
                }
            };
            {
                let mut g = self.graph.write();
                if pvcs {
                    g.pvc_volume.clear();
                    for (_, v) in &values {
                        g.set_pvc(v, false);
                    }
                } else {
                    g.pods.clear();
                    g.by_node.clear();
                    for (key, v) in &values {
                        g.set_pod(key, v);
                    }
                }
            }
            loop {
                let ev = tokio::select! {
                    e = sub.recv() => e,
                    _ = stop.cancelled() => return,
                };
                let ev = match ev {
                    Ok(ev) => ev,
                    Err(RecvError::Lagged(_)) => continue 'relist,
                    Err(RecvError::Closed) => return,
                };
                if ev.kind == Kind::Reset {
                    continue 'relist;
                }
                // Decoded before the graph is locked: authorizations wait for the lock. (A
                // deleted pod is removed by its key.)
                let obj = match ev.kind {
                    Kind::Deleted if !pvcs => None,
                    _ => ev.obj.as_ref().map(|o| o.value()),
                };
                let mut g = self.graph.write();
                match (ev.kind, &obj) {
                    (Kind::Deleted, Some(o)) if pvcs => g.set_pvc(o, true),
                    (Kind::Deleted, _) => g.remove_pod(&ev.key),
                    (Kind::Added | Kind::Modified, Some(o)) if pvcs => g.set_pvc(o, false),
                    (Kind::Added | Kind::Modified, Some(o)) => g.set_pod(&ev.key, o),
                    _ => {}
                }
            }
        }
    }

    /// The decision for `a`.
    pub fn authorize(&self, a: &Attributes) -> Decision {
        let Some(node) = node_name(a.user) else {
            return Decision::NoOpinion(String::new());
        };
        if a.resource_request && a.api_group.is_empty() {
            match a.resource {
                "secrets" | "configmaps" | "persistentvolumeclaims" | "persistentvolumes" => {
                    // Reading one object its pods use; nothing else of these (PVs: get only).
                    let reads: &[&str] = if a.resource == "persistentvolumes" {
                        &["get"]
                    } else {
                        &["get", "list", "watch"]
                    };
                    if !reads.contains(&a.verb) || a.name.is_empty() {
                        return Decision::NoOpinion(format!(
                            "can only read individual {} objects",
                            a.resource
                        ));
                    }
                    if !a.subresource.is_empty() {
                        return Decision::NoOpinion(format!(
                            "cannot access {} subresource",
                            a.subresource
                        ));
                    }
                    if self
                        .graph
                        .read()
                        .uses(node, a.resource, a.namespace, a.name)
                    {
                        return Decision::Allow(String::new());
                    }
                    return Decision::NoOpinion(format!(
                        "no relationship found between node '{node}' and this object"
                    ));
                }
                "serviceaccounts" => {
                    // Tokens (TokenRequest) for the accounts its pods run as; nothing else.
                    if a.verb != "create" || a.subresource != "token" || a.name.is_empty() {
                        return Decision::NoOpinion(
                            "can only create tokens for individual service accounts".into(),
                        );
                    }
                    if self
                        .graph
                        .read()
                        .uses(node, a.resource, a.namespace, a.name)
                    {
                        return Decision::Allow(String::new());
                    }
                    return Decision::NoOpinion(format!(
                        "no relationship found between node '{node}' and this object"
                    ));
                }
                _ => {}
            }
        }
        if a.resource_request
            && ((a.api_group == "coordination.k8s.io" && a.resource == "leases")
                || (a.api_group == "storage.k8s.io" && a.resource == "csinodes"))
        {
            if !matches!(a.verb, "get" | "create" | "update" | "patch" | "delete") {
                return Decision::NoOpinion(format!(
                    "can only get, create, update, patch, or delete a node {}",
                    if a.resource == "leases" {
                        "lease"
                    } else {
                        "csinode"
                    }
                ));
            }
            if a.resource == "leases" && a.namespace != "kube-node-lease" {
                return Decision::NoOpinion(
                    "can only access leases in the kube-node-lease namespace".into(),
                );
            }
            if a.verb != "create" && a.name != node {
                return Decision::NoOpinion(format!(
                    "can only access node {} with the same name as the requesting node",
                    a.resource.trim_end_matches('s')
                ));
            }
            return Decision::Allow(String::new());
        }
        if self.rules.iter().any(|r| r.allows(a)) {
            return Decision::Allow(String::new());
        }
        Decision::NoOpinion(String::new())
    }
}

/// The `system:node` ClusterRole's rules from the bundled bootstrap policy.
fn node_rules() -> Vec<Rule> {
    super::bootstrap::policy()
        .into_iter()
        .find(|o| o.resource == "clusterroles" && o.value["metadata"]["name"] == "system:node")
        .map(|o| super::rbac::rules_of(&o.value))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node_user(n: &str) -> UserInfo {
        UserInfo {
            name: format!("system:node:{n}"),
            groups: vec!["system:nodes".into(), "system:authenticated".into()],
            ..Default::default()
        }
    }

    fn get<'a>(u: &'a UserInfo, resource: &'a str, ns: &'a str, name: &'a str) -> Attributes<'a> {
        Attributes::resource(u, "get", ns, "", resource, "", name)
    }

    #[test]
    fn nodes_read_only_what_their_pods_use() {
        let rules = vec![Rule {
            verbs: vec!["get".into(), "list".into(), "watch".into()],
            api_groups: vec![String::new()],
            resources: vec!["pods".into(), "nodes".into()],
            ..Default::default()
        }];
        let a = NodeAuthorizer::with_rules(rules);
        let pod = json!({"metadata": {"namespace": "ns", "name": "p"}, "spec": {"nodeName": "n1", "serviceAccountName": "default",
            "imagePullSecrets": [{"name": "pull"}],
            "containers": [{"name": "c", "env": [{"name": "E", "valueFrom": {"secretKeyRef": {"name": "env-s", "key": "k"}}}],
                "envFrom": [{"configMapRef": {"name": "env-cm"}}]}],
            "volumes": [{"name": "v", "secret": {"secretName": "vol-s"}},
                {"name": "data", "persistentVolumeClaim": {"claimName": "claim"}},
                {"name": "proj", "projected": {"sources": [{"configMap": {"name": "proj-cm"}}]}},
                {"name": "scratch", "ephemeral": {"volumeClaimTemplate": {}}}]}});
        {
            let mut g = a.graph.write();
            g.set_pod(b"/registry/pods/ns/p", &pod);
            g.set_pvc(
                &json!({"metadata": {"namespace": "ns", "name": "claim"}, "spec": {"volumeName": "pv1"}}),
                false,
            );
        }
        let n1 = node_user("n1");
        let n2 = node_user("n2");
        for (res, name) in [
            ("secrets", "pull"),
            ("secrets", "env-s"),
            ("secrets", "vol-s"),
            ("configmaps", "env-cm"),
            ("configmaps", "proj-cm"),
            ("persistentvolumeclaims", "claim"),
            ("persistentvolumeclaims", "p-scratch"),
        ] {
            assert_eq!(
                a.authorize(&get(&n1, res, "ns", name)),
                Decision::Allow(String::new()),
                "{res}/{name}"
            );
            assert!(
                matches!(a.authorize(&get(&n2, res, "ns", name)), Decision::NoOpinion(r) if r.contains("no relationship found between node 'n2'")),
                "{res}/{name} for n2"
            );
        }
        assert_eq!(
            a.authorize(&get(&n1, "persistentvolumes", "", "pv1")),
            Decision::Allow(String::new())
        );
        // Tokens for the account its pod runs as (`default` here), and only tokens.
        let token =
            |u, name| Attributes::resource(u, "create", "ns", "", "serviceaccounts", "token", name);
        assert_eq!(
            a.authorize(&token(&n1, "default")),
            Decision::Allow(String::new())
        );
        assert!(matches!(
            a.authorize(&token(&n1, "admin")),
            Decision::NoOpinion(_)
        ));
        assert!(matches!(
            a.authorize(&token(&n2, "default")),
            Decision::NoOpinion(_)
        ));
        assert!(matches!(
            a.authorize(&get(&n1, "serviceaccounts", "ns", "default")),
            Decision::NoOpinion(_)
        ));
        assert!(matches!(
            a.authorize(&get(&n1, "persistentvolumes", "", "pv2")),
            Decision::NoOpinion(_)
        ));
        // Not another namespace's object of the same name, not a list of them all, no writes.
        assert!(matches!(
            a.authorize(&get(&n1, "secrets", "other", "pull")),
            Decision::NoOpinion(_)
        ));
        assert!(matches!(
            a.authorize(&Attributes::resource(
                &n1, "list", "ns", "", "secrets", "", ""
            )),
            Decision::NoOpinion(_)
        ));
        assert!(matches!(
            a.authorize(&Attributes::resource(
                &n1, "update", "ns", "", "secrets", "", "pull"
            )),
            Decision::NoOpinion(_)
        ));
        // The pod leaves the node: so does the access.
        a.graph.write().remove_pod(b"/registry/pods/ns/p");
        assert!(matches!(
            a.authorize(&get(&n1, "secrets", "ns", "pull")),
            Decision::NoOpinion(_)
        ));
        assert!(a.graph.read().by_node.is_empty());

        // Its own lease only; the static rules for the rest; nothing for non-nodes.
        let lease = |u, verb, name| {
            Attributes::resource(
                u,
                verb,
                "kube-node-lease",
                "coordination.k8s.io",
                "leases",
                "",
                name,
            )
        };
        assert_eq!(
            a.authorize(&lease(&n1, "update", "n1")),
            Decision::Allow(String::new())
        );
        assert!(matches!(
            a.authorize(&lease(&n1, "update", "n2")),
            Decision::NoOpinion(_)
        ));
        assert!(matches!(
            a.authorize(&lease(&n1, "list", "")),
            Decision::NoOpinion(_)
        ));
        assert_eq!(
            a.authorize(&get(&n1, "nodes", "", "n2")),
            Decision::Allow(String::new())
        );
        assert!(matches!(
            a.authorize(&Attributes::resource(
                &n1, "delete", "", "", "nodes", "", "n2"
            )),
            Decision::NoOpinion(_)
        ));
        let not_node = UserInfo {
            name: "system:node:n1".into(),
            groups: vec!["system:authenticated".into()],
            ..Default::default()
        };
        assert_eq!(
            a.authorize(&get(&not_node, "nodes", "", "n1")),
            Decision::NoOpinion(String::new())
        );
    }
}
