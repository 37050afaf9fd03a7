//! The scheduler cache: nodes and the pods on them, including pods assumed on a node before
//! their binding is confirmed by the watch. Snapshots are cheap (shared node entries, copied on
//! write).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node;

use crate::framework::{Nominations, Snapshot};
use crate::types::{FastMap, NodeInfo, PodInfo};

struct PodState {
    node: String,
    assumed: bool,
    /// When the binding of an assumed pod finished (it expires if no watch event confirms it).
    bound_at: Option<Instant>,
}

/// Nodes and their pods. The node list is shared with snapshots and copied only when a
/// snapshot still holds it while the cache changes, so taking a snapshot is O(1).
#[derive(Default)]
pub struct Cache {
    nodes: Arc<Vec<Arc<NodeInfo>>>,
    /// Each node's generation, by position (what per-node memos compare).
    generations: Arc<Vec<u64>>,
    index: FastMap<String, usize>,
    index_arc: Arc<FastMap<String, usize>>,
    /// Nodes whose object is not (or no longer) there but which pods still name.
    pending: FastMap<String, NodeInfo>,
    pods: HashMap<String, PodState>,
    with_affinity: usize,
    with_required_anti_affinity: usize,
}

/// How long an assumed pod whose binding finished waits for the watch to confirm it.
pub const ASSUMED_TTL: Duration = Duration::from_secs(30);

impl Cache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Changes a listed node in place, keeping generations and totals in step.
    fn mutate(&mut self, i: usize, f: impl FnOnce(&mut NodeInfo)) {
        let nodes = Arc::make_mut(&mut self.nodes);
        let n = Arc::make_mut(&mut nodes[i]);
        self.with_affinity -= n.pods_with_affinity;
        self.with_required_anti_affinity -= n.pods_with_required_anti_affinity;
        f(n);
        self.with_affinity += n.pods_with_affinity;
        self.with_required_anti_affinity += n.pods_with_required_anti_affinity;
        Arc::make_mut(&mut self.generations)[i] = n.generation;
    }

    /// Changes the node a pod names, listed or pending.
    fn with_node(&mut self, name: &str, f: impl FnOnce(&mut NodeInfo)) {
        if let Some(i) = self.index.get(name).copied() {
            self.mutate(i, f);
            return;
        }
        let n = self.pending.entry(name.to_string()).or_insert_with(|| {
            let mut placeholder = NodeInfo::new(Arc::new(Node::default()));
            placeholder.name = name.to_string();
            placeholder
        });
        f(n);
        if n.pods.is_empty() {
            self.pending.remove(name);
        }
    }

    fn reindex(&mut self) {
        self.index = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.name.clone(), i))
            .collect();
        self.index_arc = Arc::new(self.index.clone());
    }

    /// Adds or updates a node.
    pub fn set_node(&mut self, node: Arc<Node>) {
        let name = node.metadata.name.clone().unwrap_or_default();
        if let Some(i) = self.index.get(&name).copied() {
            self.mutate(i, |n| n.set_node(node));
            return;
        }
        let mut ni = self
            .pending
            .remove(&name)
            .unwrap_or_else(|| NodeInfo::new(node.clone()));
        ni.set_node(node);
        self.with_affinity += ni.pods_with_affinity;
        self.with_required_anti_affinity += ni.pods_with_required_anti_affinity;
        Arc::make_mut(&mut self.generations).push(ni.generation);
        Arc::make_mut(&mut self.nodes).push(Arc::new(ni));
        self.index.insert(name.clone(), self.nodes.len() - 1);
        self.index_arc = Arc::new(self.index.clone());
    }

    /// Removes a node (its pods stay accounted until they go, as upstream).
    pub fn remove_node(&mut self, name: &str) {
        let Some(i) = self.index.get(name).copied() else {
            return;
        };
        let ni = Arc::make_mut(&mut self.nodes).swap_remove(i);
        Arc::make_mut(&mut self.generations).swap_remove(i);
        self.with_affinity -= ni.pods_with_affinity;
        self.with_required_anti_affinity -= ni.pods_with_required_anti_affinity;
        if !ni.pods.is_empty() {
            self.pending.insert(name.to_string(), NodeInfo::clone(&ni));
        }
        self.reindex();
    }

    /// Number of nodes that exist.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// A bound pod appeared or changed (or an assumed one was confirmed).
    pub fn add_or_update_pod(&mut self, info: Arc<PodInfo>) {
        if let Some(old) = self.pods.remove(&info.key) {
            self.with_node(&old.node, |n| {
                n.remove_pod(&info.key);
            });
        }
        let node = info.node_name.clone();
        self.with_node(&node, |n| n.add_pod(info.clone()));
        self.pods.insert(
            info.key.clone(),
            PodState {
                node,
                assumed: false,
                bound_at: None,
            },
        );
    }

    /// A pod is gone (or finished).
    pub fn remove_pod(&mut self, key: &str) {
        if let Some(old) = self.pods.remove(key) {
            self.with_node(&old.node, |n| {
                n.remove_pod(key);
            });
        }
    }

    /// Puts a pod on a node before it is bound.
    pub fn assume(&mut self, info: Arc<PodInfo>, node: &str) {
        self.remove_pod(&info.key);
        self.with_node(node, |n| n.add_pod(info.clone()));
        self.pods.insert(
            info.key.clone(),
            PodState {
                node: node.to_string(),
                assumed: true,
                bound_at: None,
            },
        );
    }

    /// The binding of an assumed pod finished; it now waits for the watch.
    pub fn finish_binding(&mut self, key: &str) {
        if let Some(s) = self.pods.get_mut(key)
            && s.assumed
        {
            s.bound_at = Some(Instant::now());
        }
    }

    /// Undoes `assume` (binding failed).
    pub fn forget(&mut self, key: &str) {
        if self.pods.get(key).is_some_and(|s| s.assumed) {
            self.remove_pod(key);
        }
    }

    /// Whether the pod is assumed (not yet confirmed).
    pub fn is_assumed(&self, key: &str) -> bool {
        self.pods.get(key).is_some_and(|s| s.assumed)
    }

    /// Drops assumed pods whose binding finished more than `ttl` ago without confirmation;
    /// returns their keys.
    pub fn expire(&mut self, ttl: Duration) -> Vec<String> {
        let now = Instant::now();
        let old: Vec<String> = self
            .pods
            .iter()
            .filter(|(_, s)| s.assumed && s.bound_at.is_some_and(|t| now - t > ttl))
            .map(|(k, _)| k.clone())
            .collect();
        for k in &old {
            self.remove_pod(k);
        }
        old
    }

    /// The nodes as they are now, with the given nominations (O(1): shared until changed).
    pub fn snapshot(&self, nominated: Arc<Nominations>) -> Snapshot {
        Snapshot {
            nodes: self.nodes.clone(),
            generations: self.generations.clone(),
            index: self.index_arc.clone(),
            nominated,
            pods_with_affinity: self.with_affinity,
            pods_with_required_anti_affinity: self.with_required_anti_affinity,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;

    fn node(name: &str) -> Arc<Node> {
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": name},
                "status": {"allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"}}
            }))
            .unwrap(),
        )
    }

    fn pod(name: &str, node: &str) -> Arc<PodInfo> {
        let p: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"nodeName": node, "containers": [{"name": "c", "resources": {"requests": {"cpu": "1"}}}]}
        }))
        .unwrap();
        Arc::new(PodInfo::new(Arc::new(p)))
    }

    #[test]
    fn assume_confirm_forget_and_expire() {
        let mut c = Cache::new();
        c.set_node(node("n1"));
        let before = c.snapshot(Arc::default());
        c.assume(pod("a", ""), "n1");
        assert!(c.is_assumed("default/a"));
        let snap = c.snapshot(Arc::default());
        assert_eq!(snap.get("n1").unwrap().requested.milli_cpu, 1000);
        assert_eq!(
            before.get("n1").unwrap().requested.milli_cpu,
            0,
            "snapshots are unaffected"
        );
        // The watch confirms it.
        c.add_or_update_pod(pod("a", "n1"));
        assert!(!c.is_assumed("default/a"));
        assert_eq!(c.snapshot(Arc::default()).get("n1").unwrap().pods.len(), 1);
        // A failed binding is forgotten.
        c.assume(pod("b", ""), "n1");
        c.forget("default/b");
        assert_eq!(c.snapshot(Arc::default()).get("n1").unwrap().pods.len(), 1);
        // A finished but unconfirmed binding expires.
        c.assume(pod("d", ""), "n1");
        c.finish_binding("default/d");
        assert!(c.expire(Duration::from_secs(3600)).is_empty());
        assert_eq!(c.expire(Duration::ZERO), vec!["default/d".to_string()]);
        // A pod on an unknown node waits for it, invisible to snapshots.
        c.add_or_update_pod(pod("e", "n2"));
        assert!(c.snapshot(Arc::default()).get("n2").is_none());
        c.set_node(node("n2"));
        assert_eq!(c.snapshot(Arc::default()).get("n2").unwrap().pods.len(), 1);
        c.remove_pod("default/e");
        c.remove_node("n2");
        assert_eq!(c.node_count(), 1);
    }
}
