//! Builders for plugin and framework tests (and the in-process benchmark): nodes and pods from
//! JSON fragments, a framework from the default configuration, a fake binder.

use std::collections::HashSet;
use std::sync::Arc;

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{Node, Pod};
use parking_lot::Mutex;
use serde_json::{Value, json};

use crate::framework::{CycleState, Framework, Handle, Listers, Plugin, Point, Snapshot, Status};
use crate::types::{NodeInfo, PodInfo};

/// A node with `cpu` cores, `mem_gi` GiB, 110 pods, and the given labels (hostname added).
pub fn node(name: &str, cpu: &str, mem: &str, labels: Value) -> Node {
    let mut l = labels.as_object().cloned().unwrap_or_default();
    l.entry("kubernetes.io/hostname")
        .or_insert_with(|| json!(name));
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": l},
        "status": {"allocatable": {"cpu": cpu, "memory": mem, "pods": "110"}}
    }))
    .expect("node")
}

/// Merges `extra` into a node (taints, unschedulable, ...).
pub fn with(mut base: Value, extra: Value) -> Value {
    merge(&mut base, extra);
    base
}

fn merge(a: &mut Value, b: Value) {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(Value::Null), v);
            }
        }
        (a, b) => *a = b,
    }
}

/// A node from a JSON patch over [`node`].
pub fn node_with(name: &str, cpu: &str, mem: &str, labels: Value, extra: Value) -> Node {
    let base = serde_json::to_value(node(name, cpu, mem, labels)).expect("json");
    serde_json::from_value(with(base, extra)).expect("node")
}

/// A pod in `default` with one container requesting `cpu`/`mem` (empty: none), plus `extra`
/// merged into the pod JSON.
pub fn pod(name: &str, cpu: &str, mem: &str, extra: Value) -> Pod {
    let mut req = serde_json::Map::new();
    if !cpu.is_empty() {
        req.insert("cpu".into(), json!(cpu));
    }
    if !mem.is_empty() {
        req.insert("memory".into(), json!(mem));
    }
    let base = json!({
        "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}")},
        "spec": {"containers": [{"name": "c", "image": "pause", "resources": {"requests": req}}]}
    });
    serde_json::from_value(with(base, extra)).expect("pod")
}

/// A compiled pod.
pub fn info(p: Pod) -> Arc<PodInfo> {
    Arc::new(PodInfo::new(Arc::new(p)))
}

/// A node with pods on it.
pub fn node_info(n: Node, pods: Vec<Pod>) -> NodeInfo {
    let mut ni = NodeInfo::new(Arc::new(n));
    for p in pods {
        ni.add_pod(info(p));
    }
    ni
}

/// The default profile (no API).
pub fn default_framework() -> Framework {
    framework_with(Listers::empty())
}

/// The default profile with the given listers, binding through a [`FakeBinder`].
pub fn framework_with(listers: Listers) -> Framework {
    let c = crate::config::parse(
        "apiVersion: kubescheduler.config.k8s.io/v1\nkind: KubeSchedulerConfiguration\n",
    )
    .expect("config");
    let handle = Handle {
        client: None,
        listers,
    };
    let mut fw = crate::config::frameworks(&c, &handle)
        .expect("framework")
        .remove(0);
    fw.bind = vec![Arc::new(FakeBinder::default())];
    fw
}

/// Runs PreFilter then Filter of one plugin on one node, as the framework would.
pub fn filter(pl: &dyn Plugin, pod: &PodInfo, snap: &Snapshot, node: &str) -> Status {
    let mut st = CycleState::default();
    let (allowed, s) = pl.pre_filter(&mut st, pod, snap);
    if s.code == crate::framework::Code::Skip {
        return Status::ok();
    }
    if !s.is_ok() {
        return s;
    }
    if allowed.is_some_and(|a| !a.contains(node)) {
        return Status::unresolvable("excluded by PreFilter");
    }
    pl.filter(&st, pod, snap.get(node).expect("node"))
}

/// Runs PreScore, Score and NormalizeScore of one plugin over all nodes of the snapshot.
pub fn scores(pl: &dyn Plugin, pod: &PodInfo, snap: &Snapshot) -> Vec<i64> {
    let mut st = CycleState::default();
    if pl.points().contains(&Point::PreScore)
        && pl.pre_score(&mut st, pod, &snap.nodes, snap).code == crate::framework::Code::Skip
    {
        return vec![0; snap.nodes.len()];
    }
    let mut s: Vec<i64> = snap.nodes.iter().map(|n| pl.score(&st, pod, n)).collect();
    pl.normalize(&st, pod, &mut s);
    s
}

/// A binder that records bindings instead of calling the API.
#[derive(Default, Clone)]
pub struct FakeBinder {
    /// (pod key, node) in bind order.
    pub bound: Arc<Mutex<Vec<(String, String)>>>,
    /// Pods whose binding fails.
    pub fail: Arc<Mutex<HashSet<String>>>,
    /// Pods the API says are gone (binding answers 404).
    pub gone: Arc<Mutex<HashSet<String>>>,
}

impl Plugin for FakeBinder {
    fn name(&self) -> &'static str {
        "FakeBinder"
    }
    fn points(&self) -> &'static [Point] {
        &[Point::Bind]
    }
    fn bind(&self, pod: Arc<PodInfo>, node: String) -> BoxFuture<'static, Status> {
        let bound = self.bound.clone();
        let fail = self.fail.lock().contains(&pod.key);
        let gone = self.gone.lock().contains(&pod.key);
        Box::pin(async move {
            if fail {
                return Status::error("fake binding failure");
            }
            if gone {
                return Status::unresolvable("binding rejected: pods \"x\" not found");
            }
            bound.lock().push((pod.key.clone(), node));
            Status::ok()
        })
    }
}
