//! Scheduler processes and nodes for the tests.

use std::time::Duration;

use serde_json::json;

use crate::harness::{ApiCluster, eventually};

pub use crate::component::Component;

impl Component {
    /// A scheduler without leader election.
    pub fn scheduler(c: &ApiCluster, name: &str) -> Self {
        Self::start(c, "scheduler", name, &["--leader-elect=false"])
    }
}

/// Creates a Node object with the given CPU, labels and taints.
pub fn add_node(
    c: &ApiCluster,
    name: &str,
    cpu: &str,
    labels: serde_json::Value,
    taints: serde_json::Value,
) {
    let mut l = labels.as_object().cloned().unwrap_or_default();
    l.insert("kubernetes.io/hostname".into(), json!(name));
    let node = json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": l},
        "spec": {"taints": taints},
        "status": {
            "allocatable": {"cpu": cpu, "memory": "8Gi", "pods": "110"},
            "capacity": {"cpu": cpu, "memory": "8Gi", "pods": "110"},
            "conditions": [{"type": "Ready", "status": "True"}]
        }
    });
    let out = c.kubectl_stdin(&["create", "-f", "-"], &node.to_string());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub use crate::harness::apply;

/// `spec.nodeName` of a pod ("" while pending).
pub fn node_of(c: &ApiCluster, pod: &str) -> String {
    c.ok(&["get", "pod", pod, "-o", "jsonpath={.spec.nodeName}"])
}

/// Waits until the pod is bound and returns its node.
pub fn wait_bound(c: &ApiCluster, pod: &str) -> String {
    let mut node = String::new();
    eventually(Duration::from_secs(60), &format!("pod {pod} bound"), || {
        node = node_of(c, pod);
        !node.is_empty()
    });
    node
}

/// Node names of the pods with a label, sorted ("" for pending ones).
pub fn nodes_of(c: &ApiCluster, selector: &str) -> Vec<String> {
    let out = c.ok(&[
        "get",
        "pods",
        "-l",
        selector,
        "-o",
        "jsonpath={range .items[*]}{.spec.nodeName}{\"\\n\"}{end}",
    ]);
    let mut v: Vec<String> = out.lines().map(|l| l.trim().to_string()).collect();
    v.sort();
    v
}

/// The PodScheduled condition of a pod as `status/reason/message`.
pub fn scheduled_condition(c: &ApiCluster, pod: &str) -> String {
    c.ok(&[
        "get",
        "pod",
        pod,
        "-o",
        "jsonpath={.status.conditions[?(@.type==\"PodScheduled\")].status}/{.status.conditions[?(@.type==\"PodScheduled\")].reason}/{.status.conditions[?(@.type==\"PodScheduled\")].message}",
    ])
}

/// A bare pod manifest requesting `cpu`, with `spec` merged in.
pub fn pod(name: &str, labels: serde_json::Value, cpu: &str, spec: serde_json::Value) -> String {
    let mut s = json!({
        "containers": [{"name": "c", "image": "pause", "resources": {"requests": {"cpu": cpu}}}]
    });
    if let (Some(base), Some(extra)) = (s.as_object_mut(), spec.as_object()) {
        for (k, v) in extra {
            base.insert(k.clone(), v.clone());
        }
    }
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels}, "spec": s})
        .to_string()
}
