//! The node lifecycle controller, as upstream's `pkg/controller/nodelifecycle`, with the taint
//! eviction controller (`pkg/controller/tainteviction`):
//!
//! - A node is healthy while its kubelet keeps posting: a change of the Ready condition's
//!   `lastHeartbeatTime` or of its Lease's `renewTime` in `kube-node-lease`, as observed on this
//!   controller's clock. After `--node-monitor-grace-period` (40 s) without one (or
//!   `--node-startup-grace-period` for a node that never posted), its Ready, MemoryPressure,
//!   DiskPressure and PIDPressure conditions become Unknown (`NodeStatusUnknown`, "Kubelet
//!   stopped posting node status.") and its pods are marked not ready.
//! - Taints follow the Ready condition: `node.kubernetes.io/not-ready` (False) and
//!   `node.kubernetes.io/unreachable` (Unknown), each as NoSchedule and NoExecute (with
//!   `timeAdded`); `node.kubernetes.io/unschedulable:NoSchedule` follows `spec.unschedulable`,
//!   and the memory-pressure, disk-pressure, pid-pressure and network-unavailable NoSchedule
//!   taints their conditions being True. The not-ready NoSchedule taint the
//!   TaintNodesByCondition admission plugin gives new nodes goes once they are Ready.
//! - Pods on a node with NoExecute taints they do not tolerate are deleted at once; pods that
//!   tolerate them for `tolerationSeconds` are deleted when that runs out (from the taint's
//!   `timeAdded`); pods that tolerate them forever stay.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, NodeCondition, Pod, Taint, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use keelson_client::events::{EventType, Recorder};
use keelson_client::informer::{Change, Index};
use keelson_client::queue::WorkQueue;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};
use parking_lot::Mutex;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::Informers;
use crate::util::{SyncResult, is_not_found, object_ref, pod_terminal, run_workers};

const NOT_READY: &str = "node.kubernetes.io/not-ready";
const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
const UNSCHEDULABLE: &str = "node.kubernetes.io/unschedulable";
/// Conditions that, when True, taint a node NoSchedule (upstream's TaintNodesByCondition).
const PRESSURE_TAINTS: [(&str, &str); 4] = [
    ("MemoryPressure", "node.kubernetes.io/memory-pressure"),
    ("DiskPressure", "node.kubernetes.io/disk-pressure"),
    ("PIDPressure", "node.kubernetes.io/pid-pressure"),
    (
        "NetworkUnavailable",
        "node.kubernetes.io/network-unavailable",
    ),
];

/// Health timing (flags as kube-controller-manager's).
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// `--node-monitor-period`.
    pub monitor_period: Duration,
    /// `--node-monitor-grace-period`.
    pub grace_period: Duration,
    /// `--node-startup-grace-period`.
    pub startup_grace_period: Duration,
}

/// What we last saw of a node's heartbeats, and when (our clock).
struct Health {
    heartbeat: Option<String>,
    lease: Option<String>,
    probed: Instant,
}

/// The node lifecycle and taint eviction controller.
pub struct NodeLifecycleController {
    client: Client,
    nodes: Store<Node>,
    leases: Store<Lease>,
    pods: Store<Pod>,
    pods_by_node: Index<Pod>,
    health: Mutex<HashMap<String, Health>>,
    timing: Timing,
    nodes_queue: WorkQueue<String>,
    pods_queue: WorkQueue<String>,
    recorder: Recorder,
}

fn ready_condition(node: &Node) -> Option<&NodeCondition> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
}

/// True when toleration `t` tolerates `taint` (key, value, effect, operator as upstream).
pub(crate) fn tolerates(t: &Toleration, taint: &Taint) -> bool {
    if let Some(effect) = t.effect.as_deref()
        && !effect.is_empty()
        && effect != taint.effect
    {
        return false;
    }
    match t.operator.as_deref().unwrap_or("Equal") {
        "Exists" => t
            .key
            .as_deref()
            .is_none_or(|k| k.is_empty() || k == taint.key),
        _ => {
            t.key.as_deref() == Some(taint.key.as_str())
                && t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or("")
        }
    }
}

/// When a pod must go because of the node's NoExecute taints: `Some(ZERO)` now, `Some(d)` in
/// `d`, `None` never.
pub fn eviction_delay(pod: &Pod, taints: &[Taint], now: jiff::Timestamp) -> Option<Duration> {
    let tolerations = pod
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.clone())
        .unwrap_or_default();
    let mut soonest: Option<Duration> = None;
    for taint in taints.iter().filter(|t| t.effect == "NoExecute") {
        let matching: Vec<&Toleration> =
            tolerations.iter().filter(|t| tolerates(t, taint)).collect();
        if matching.is_empty() {
            return Some(Duration::ZERO);
        }
        // Tolerated forever if any matching toleration has no limit.
        if matching.iter().any(|t| t.toleration_seconds.is_none()) {
            continue;
        }
        let secs = matching
            .iter()
            .filter_map(|t| t.toleration_seconds)
            .min()
            .unwrap_or(0)
            .max(0);
        let added = taint.time_added.as_ref().map(|t| t.0).unwrap_or(now);
        let due = added
            .checked_add(jiff::SignedDuration::from_secs(secs))
            .unwrap_or(now);
        let left = Duration::try_from(due.duration_since(now)).unwrap_or(Duration::ZERO);
        soonest = Some(soonest.map_or(left, |s| s.min(left)));
    }
    soonest
}

impl NodeLifecycleController {
    /// Registers the controller's handlers on the shared informers.
    pub fn new(informers: &mut Informers, recorder: Recorder, timing: Timing) -> Arc<Self> {
        let nodes_queue = WorkQueue::new();
        let pods_queue = WorkQueue::new();
        let nodes = informers.nodes().store();
        let leases = informers.node_leases().store();
        let pods_by_node = informers.pods_by_node();
        let pods = informers.pods().store();
        {
            let q = nodes_queue.clone();
            informers
                .nodes()
                .on_change(move |c| q.add(c.object().name_any()));
        }
        {
            let q = nodes_queue.clone();
            informers
                .node_leases()
                .on_change(move |c| q.add(c.object().name_any()));
        }
        {
            let q = pods_queue.clone();
            informers.pods().on_change(move |c| {
                if let Change::Deleted(_) = c {
                    return;
                }
                let p = c.object();
                if p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some() {
                    q.add(crate::util::key_of(&p.metadata));
                }
            });
        }
        Arc::new(Self {
            client: informers.client(),
            nodes,
            leases,
            pods,
            pods_by_node,
            health: Mutex::new(HashMap::new()),
            timing,
            nodes_queue,
            pods_queue,
            recorder,
        })
    }

    /// Runs the monitor loop and the workers until `token` is cancelled.
    pub async fn run(self: Arc<Self>, workers: usize, token: CancellationToken) {
        let monitor = {
            let me = self.clone();
            let token = token.clone();
            tokio::spawn(async move {
                loop {
                    for n in me.nodes.state() {
                        me.nodes_queue.add(n.name_any());
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(me.timing.monitor_period) => {}
                        _ = token.cancelled() => return,
                    }
                }
            })
        };
        let me = self.clone();
        let nodes = run_workers(
            "nodelifecycle",
            self.nodes_queue.clone(),
            workers,
            token.clone(),
            move |n| me.clone().sync_node(n),
        );
        let me = self.clone();
        let pods = run_workers(
            "taint-eviction",
            self.pods_queue.clone(),
            workers,
            token,
            move |p| me.clone().sync_pod(p),
        );
        futures::join!(nodes, pods);
        let _ = monitor.await;
    }

    async fn sync_node(self: Arc<Self>, name: String) -> SyncResult {
        let Some(node) = self.nodes.get(&ObjectRef::new(&name)) else {
            self.health.lock().remove(&name);
            return Ok(None);
        };
        let mut node = (*node).clone();
        let api: Api<Node> = Api::all(self.client.clone());
        let now = jiff::Timestamp::now();
        let ready = ready_condition(&node).cloned();
        let heartbeat = ready
            .as_ref()
            .and_then(|c| c.last_heartbeat_time.as_ref())
            .map(|t| t.0.to_string());
        let lease = self
            .leases
            .get(&ObjectRef::new(&name).within("kube-node-lease"))
            .and_then(|l| {
                l.spec
                    .as_ref()?
                    .renew_time
                    .as_ref()
                    .map(|t| t.0.to_string())
            });
        // Health as observed: a new heartbeat or lease renewal resets the clock.
        let silent_for = {
            let mut h = self.health.lock();
            let e = h.entry(name.clone()).or_insert(Health {
                heartbeat: heartbeat.clone(),
                lease: lease.clone(),
                probed: Instant::now(),
            });
            if e.heartbeat != heartbeat || e.lease != lease {
                e.heartbeat = heartbeat.clone();
                e.lease = lease.clone();
                e.probed = Instant::now();
            }
            e.probed.elapsed()
        };
        let grace = if ready.is_none() {
            self.timing.startup_grace_period
        } else {
            self.timing.grace_period
        };
        let mut status_changed = false;
        if silent_for > grace && ready.as_ref().is_none_or(|c| c.status != "Unknown") {
            let (reason, message) = if ready.is_none() {
                (
                    "NodeStatusNeverUpdated",
                    "Kubelet never posted node status.",
                )
            } else {
                ("NodeStatusUnknown", "Kubelet stopped posting node status.")
            };
            let status = node.status.get_or_insert_with(Default::default);
            let conds = status.conditions.get_or_insert_with(Vec::new);
            for t in ["Ready", "MemoryPressure", "DiskPressure", "PIDPressure"] {
                match conds.iter_mut().find(|c| c.type_ == t) {
                    Some(c) => {
                        c.status = "Unknown".into();
                        c.reason = Some(reason.into());
                        c.message = Some(message.into());
                        c.last_transition_time = Some(Time(now));
                    }
                    None => conds.push(NodeCondition {
                        type_: t.into(),
                        status: "Unknown".into(),
                        reason: Some(reason.into()),
                        message: Some(message.into()),
                        last_transition_time: Some(Time(now)),
                        last_heartbeat_time: None,
                    }),
                }
            }
            status_changed = true;
            self.recorder.record(
                object_ref(&node),
                EventType::Normal,
                "NodeNotReady",
                format!("Node {name} status is now: NodeNotReady"),
            );
        }
        if status_changed {
            node = match api
                .replace_status(&name, &PostParams::default(), &node)
                .await
            {
                Ok(n) => n,
                Err(e) if is_not_found(&e) => return Ok(None),
                Err(e) => return Err(e),
            };
            self.mark_pods_not_ready(&name).await?;
        }
        // Taints from the Ready condition and spec.unschedulable.
        let ready_status = ready_condition(&node).map(|c| c.status.clone());
        let mut want: Vec<(&str, &str)> = Vec::new();
        match ready_status.as_deref() {
            Some("False") => want.extend([(NOT_READY, "NoSchedule"), (NOT_READY, "NoExecute")]),
            Some("Unknown") => {
                want.extend([(UNREACHABLE, "NoSchedule"), (UNREACHABLE, "NoExecute")])
            }
            _ => {}
        }
        if node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true) {
            want.push((UNSCHEDULABLE, "NoSchedule"));
        }
        for (condition, key) in PRESSURE_TAINTS {
            let on = node
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c.type_ == *condition && c.status == "True")
                });
            if on {
                want.push((key, "NoSchedule"));
            }
        }
        let current = node
            .spec
            .as_ref()
            .and_then(|s| s.taints.clone())
            .unwrap_or_default();
        let ours: Vec<&str> = [NOT_READY, UNREACHABLE, UNSCHEDULABLE]
            .into_iter()
            .chain(PRESSURE_TAINTS.iter().map(|(_, k)| *k))
            .collect();
        let mut taints: Vec<Taint> = current
            .iter()
            .filter(|t| {
                !ours.contains(&t.key.as_str())
                    || want.contains(&(t.key.as_str(), t.effect.as_str()))
            })
            .cloned()
            .collect();
        for (key, effect) in &want {
            if !taints.iter().any(|t| t.key == *key && t.effect == *effect) {
                taints.push(Taint {
                    key: key.to_string(),
                    effect: effect.to_string(),
                    value: None,
                    time_added: (*effect == "NoExecute").then_some(Time(now)),
                });
            }
        }
        if taints != current {
            let taints = if taints.is_empty() {
                serde_json::Value::Null
            } else {
                json!(taints)
            };
            let patch = json!({"spec": {"taints": taints}, "metadata": {"resourceVersion": node.resource_version()}});
            match api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {}
                Err(e) if is_not_found(&e) => return Ok(None),
                Err(e) => return Err(e),
            }
        }
        // Re-check the node's pods against its NoExecute taints.
        if taints.iter().any(|t| t.effect == "NoExecute") {
            for p in self.pods_by_node.get(&name) {
                self.pods_queue.add(crate::util::key_of(&p.metadata));
            }
        }
        // The monitor loop brings every node back each --node-monitor-period.
        Ok(None)
    }

    async fn mark_pods_not_ready(&self, node: &str) -> Result<(), kube::Error> {
        for p in self.pods_by_node.get(node) {
            if pod_terminal(&p) {
                continue;
            }
            let ready_true = p
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            if !ready_true {
                continue;
            }
            let api: Api<Pod> =
                Api::namespaced(self.client.clone(), &p.namespace().unwrap_or_default());
            let patch = json!({"status": {"conditions": [{"type": "Ready", "status": "False", "lastTransitionTime": Time(jiff::Timestamp::now())}]}});
            match api
                .patch_status(
                    &p.name_any(),
                    &PatchParams::default(),
                    &Patch::Strategic(&patch),
                )
                .await
            {
                Ok(_) => {}
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    async fn sync_pod(self: Arc<Self>, key: String) -> SyncResult {
        let (ns, name) = crate::util::split_key(&key);
        let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let Some(pod) = self.pods.get(&ObjectRef::new(name).within(ns)) else {
            return Ok(None);
        };
        if pod.metadata.deletion_timestamp.is_some() || pod_terminal(&pod) {
            return Ok(None);
        }
        let Some(node_name) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else {
            return Ok(None);
        };
        let Some(node) = self.nodes.get(&ObjectRef::new(&node_name)) else {
            return Ok(None);
        };
        let taints = node
            .spec
            .as_ref()
            .and_then(|s| s.taints.clone())
            .unwrap_or_default();
        match eviction_delay(&pod, &taints, jiff::Timestamp::now()) {
            None => Ok(None),
            Some(d) if !d.is_zero() => Ok(Some(d)),
            Some(_) => {
                self.recorder.record(
                    object_ref(&*pod),
                    EventType::Normal,
                    "TaintManagerEviction",
                    format!("Marking for deletion Pod {key}"),
                );
                match api.delete(name, &DeleteParams::default()).await {
                    Ok(_) => Ok(None),
                    Err(e) if is_not_found(&e) => Ok(None),
                    Err(e) => Err(e),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::PodSpec;

    fn pod(tolerations: Vec<Toleration>) -> Pod {
        Pod {
            spec: Some(PodSpec {
                tolerations: Some(tolerations),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn taint(key: &str, added: jiff::Timestamp) -> Taint {
        Taint {
            key: key.into(),
            effect: "NoExecute".into(),
            value: None,
            time_added: Some(Time(added)),
        }
    }

    #[test]
    fn eviction_follows_tolerations() {
        let now: jiff::Timestamp = "2026-12-01T10:00:00Z".parse().unwrap();
        let t = [taint(UNREACHABLE, now)];
        assert_eq!(eviction_delay(&pod(vec![]), &t, now), Some(Duration::ZERO));
        let limited = Toleration {
            key: Some(UNREACHABLE.into()),
            operator: Some("Exists".into()),
            effect: Some("NoExecute".into()),
            toleration_seconds: Some(300),
            ..Default::default()
        };
        assert_eq!(
            eviction_delay(&pod(vec![limited.clone()]), &t, now),
            Some(Duration::from_secs(300))
        );
        let later = now
            .checked_add(jiff::SignedDuration::from_secs(400))
            .unwrap();
        assert_eq!(
            eviction_delay(&pod(vec![limited]), &t, later),
            Some(Duration::ZERO)
        );
        let forever = Toleration {
            operator: Some("Exists".into()),
            ..Default::default()
        };
        assert_eq!(eviction_delay(&pod(vec![forever]), &t, now), None);
        assert_eq!(eviction_delay(&pod(vec![]), &[], now), None);
    }
}
