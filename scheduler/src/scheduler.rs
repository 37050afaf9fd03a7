//! The scheduling cycle (filter a sample of nodes, score the feasible ones, pick one, assume,
//! reserve, permit) run one pod at a time, and the binding cycle (pre-bind, bind, post-bind)
//! run concurrently per pod; failures go to preemption and back to the queue with a reason.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use keelson_client::events::{EventType, Recorder};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use parking_lot::Mutex;

use crate::cache::Cache;
use crate::framework::{Code, CycleState, Framework, NodeStatuses, Nominations, Snapshot, Status};
use crate::metrics::Metrics;
use crate::queue::{QueuedPod, SchedulingQueue};
use crate::types::{NodeInfo, PodInfo};

/// Why a pod could not be placed (upstream `FitError`).
#[derive(Debug, Default)]
pub struct FitError {
    /// Nodes in the snapshot.
    pub num_all_nodes: usize,
    /// Per-node rejections.
    pub statuses: NodeStatuses,
    /// A PreFilter rejection, which applies to every node.
    pub pre_filter: Option<Status>,
    /// The preemption message.
    pub post_filter_msg: String,
    /// Plugins that rejected the pod.
    pub rejected_by: HashSet<&'static str>,
}

impl FitError {
    /// The message of the FailedScheduling event and PodScheduled condition:
    /// `0/3 nodes are available: 1 node(s) had untolerated taint {..}, 2 Insufficient cpu. preemption: ...`
    pub fn message(&self) -> String {
        let mut msg = format!("0/{} nodes are available:", self.num_all_nodes);
        if let Some(s) = &self.pre_filter {
            msg.push_str(&format!(" {}.", s.message()));
        } else {
            let mut hist: BTreeMap<&str, usize> = BTreeMap::new();
            for s in self.statuses.values() {
                for r in &s.reasons {
                    *hist.entry(r.as_str()).or_default() += 1;
                }
            }
            let mut parts: Vec<String> = hist.iter().map(|(r, n)| format!("{n} {r}")).collect();
            parts.sort();
            if !parts.is_empty() {
                msg.push_str(&format!(" {}.", parts.join(", ")));
            }
        }
        if !self.post_filter_msg.is_empty() {
            msg.push(' ');
            msg.push_str(&self.post_filter_msg);
        }
        msg
    }
}

/// The outcome of scheduling one pod.
#[derive(Debug)]
pub enum Decision {
    /// Place it here.
    Node {
        /// The node.
        name: String,
        /// Nodes filtered.
        evaluated: usize,
        /// Of which feasible.
        feasible: usize,
    },
    /// No node fits.
    Unfit(FitError),
    /// Something failed.
    Error(String),
}

/// How many feasible nodes to look for before scoring (upstream `numFeasibleNodesToFind`).
pub fn num_feasible_nodes_to_find(percentage: Option<u32>, all: usize) -> usize {
    const MIN_FEASIBLE: usize = 100;
    if all < MIN_FEASIBLE || percentage.is_some_and(|p| p >= 100) {
        return all;
    }
    let pct = match percentage {
        Some(p) if p > 0 => p as usize,
        _ => (50usize.saturating_sub(all / 125)).max(5),
    };
    (all * pct / 100).max(MIN_FEASIBLE)
}

/// The synchronous part of a scheduling cycle: filter, score, select (`schedulePod`).
pub struct Algorithm {
    next_start: AtomicUsize,
}

impl Default for Algorithm {
    fn default() -> Self {
        Self::new()
    }
}

impl Algorithm {
    /// A new instance (it remembers where the last search stopped, to spread the search).
    pub fn new() -> Self {
        Algorithm {
            next_start: AtomicUsize::new(0),
        }
    }

    /// Picks a node for `pod`.
    pub fn schedule(
        &self,
        fw: &Framework,
        state: &mut CycleState,
        pod: &PodInfo,
        snap: &Snapshot,
    ) -> Decision {
        let all = snap.nodes.len();
        if all == 0 {
            return Decision::Error("no nodes available to schedule pods".into());
        }
        if let Some(why) = &pod.invalid {
            return Decision::Unfit(FitError {
                num_all_nodes: all,
                pre_filter: Some(Status::unresolvable(why.clone())),
                ..Default::default()
            });
        }
        let (allowed, s) = fw.run_pre_filter(state, pod, snap);
        if !s.is_ok() {
            if s.code == Code::Error {
                return Decision::Error(format!(
                    "running PreFilter plugin {:?}: {}",
                    s.plugin,
                    s.message()
                ));
            }
            let mut statuses = NodeStatuses::default();
            for n in snap.nodes.iter() {
                statuses.insert(n.name.clone(), s.clone());
            }
            return Decision::Unfit(FitError {
                num_all_nodes: all,
                rejected_by: HashSet::from([s.plugin]),
                statuses,
                pre_filter: Some(s),
                ..Default::default()
            });
        }
        let mut statuses = NodeStatuses::default();
        let mut feasible: Vec<Arc<NodeInfo>> = Vec::new();
        let mut rejected_by = HashSet::new();
        // A pod nominated by an earlier preemption tries its node first.
        let nominated = pod
            .pod
            .status
            .as_ref()
            .and_then(|s| s.nominated_node_name.as_deref())
            .unwrap_or("");
        if let Some(n) = snap.get(nominated)
            && allowed.as_ref().is_none_or(|a| a.contains(nominated))
        {
            let s = fw.run_filters_with_nominated(state, pod, n, snap.nominated_to(nominated));
            if s.is_ok() {
                feasible.push(n.clone());
            }
        }
        let mut evaluated = 0;
        if feasible.is_empty() {
            let candidates: Vec<&Arc<NodeInfo>> = match &allowed {
                None => snap.nodes.iter().collect(),
                Some(a) => snap.nodes.iter().filter(|n| a.contains(&n.name)).collect(),
            };
            let len = candidates.len();
            let want = num_feasible_nodes_to_find(fw.percentage_of_nodes_to_score, len);
            let start = self.next_start.load(Ordering::Relaxed) % len.max(1);
            for i in 0..len {
                let n = candidates[(start + i) % len];
                evaluated += 1;
                let s = fw.run_filters_with_nominated(state, pod, n, snap.nominated_to(&n.name));
                if s.is_ok() {
                    feasible.push(n.clone());
                    if feasible.len() >= want {
                        break;
                    }
                } else if s.code == Code::Error {
                    return Decision::Error(format!(
                        "running Filter plugin {:?}: {}",
                        s.plugin,
                        s.message()
                    ));
                } else {
                    rejected_by.insert(s.plugin);
                    statuses.insert(n.name.clone(), s);
                }
            }
            self.next_start
                .store((start + evaluated) % len.max(1), Ordering::Relaxed);
            // Nodes the PreFilter result excluded count as rejected by it.
            if allowed.is_some() {
                for n in snap.nodes.iter() {
                    if !statuses.contains_key(&n.name)
                        && !feasible.iter().any(|f| f.name == n.name)
                        && !candidates.iter().any(|c| c.name == n.name)
                    {
                        statuses.insert(
                            n.name.clone(),
                            Status::unresolvable("node(s) didn't satisfy plugin(s) [NodeAffinity]"),
                        );
                    }
                }
            }
        } else {
            evaluated = 1;
        }
        if feasible.is_empty() {
            return Decision::Unfit(FitError {
                num_all_nodes: all,
                statuses,
                rejected_by,
                ..Default::default()
            });
        }
        let count = feasible.len();
        if count == 1 {
            return Decision::Node {
                name: feasible[0].name.clone(),
                evaluated,
                feasible: 1,
            };
        }
        let s = fw.run_pre_score(state, pod, &feasible, snap);
        if !s.is_ok() {
            return Decision::Error(format!(
                "running PreScore plugin {:?}: {}",
                s.plugin,
                s.message()
            ));
        }
        let scores = fw.run_score(state, pod, &feasible);
        // The best score; ties broken uniformly at random.
        let mut best = 0;
        let mut ties = 0u32;
        for (i, s) in scores.iter().enumerate() {
            if *s > scores[best] {
                best = i;
                ties = 1;
            } else if *s == scores[best] {
                ties += 1;
                if i != best && rand::random_range(0..ties) == 0 {
                    best = i;
                }
            }
        }
        Decision::Node {
            name: feasible[best].name.clone(),
            evaluated,
            feasible: count,
        }
    }
}

/// Pending pods nominated to nodes.
#[derive(Default)]
pub struct Nominator {
    by_node: Nominations,
    by_pod: HashMap<String, String>,
    snapshot: Option<Arc<Nominations>>,
}

impl Nominator {
    /// Records (or clears, with "") a pod's nomination.
    pub fn set(&mut self, info: &Arc<PodInfo>, node: &str) {
        self.remove(&info.key);
        if node.is_empty() {
            return;
        }
        self.by_node
            .entry(node.to_string())
            .or_default()
            .push(info.clone());
        self.by_pod.insert(info.key.clone(), node.to_string());
        self.snapshot = None;
    }

    /// Forgets a pod's nomination.
    pub fn remove(&mut self, key: &str) {
        if let Some(node) = self.by_pod.remove(key) {
            if let Some(v) = self.by_node.get_mut(&node) {
                v.retain(|p| p.key != key);
                if v.is_empty() {
                    self.by_node.remove(&node);
                }
            }
            self.snapshot = None;
        }
    }

    /// Pods nominated to a node.
    pub fn on(&self, node: &str) -> Vec<Arc<PodInfo>> {
        self.by_node.get(node).cloned().unwrap_or_default()
    }

    /// All nominations (shared until the next change).
    pub fn snapshot(&mut self) -> Arc<Nominations> {
        self.snapshot
            .get_or_insert_with(|| Arc::new(self.by_node.clone()))
            .clone()
    }
}

/// Everything a running scheduler shares between its scheduling loop, binding tasks and
/// informer handlers.
pub struct Scheduler {
    /// The profiles.
    pub profiles: Arc<Vec<Framework>>,
    /// Nodes and pods.
    pub cache: Mutex<Cache>,
    /// Pending pods.
    pub queue: SchedulingQueue,
    /// Nominations.
    pub nominator: Mutex<Nominator>,
    /// The algorithm.
    pub algorithm: Algorithm,
    /// Metrics.
    pub metrics: Metrics,
    /// API access (None in in-process benchmarks).
    pub client: Option<kube::Client>,
    /// Events.
    pub recorder: Option<Recorder>,
}

fn pod_ref(p: &PodInfo) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        name: Some(p.name.clone()),
        namespace: Some(p.namespace.clone()),
        uid: Some(p.uid.clone()),
        resource_version: p.pod.metadata.resource_version.clone(),
        field_path: None,
    }
}

fn labels(result: &str, profile: &str) -> Vec<(&'static str, String)> {
    vec![
        ("result", result.to_string()),
        ("profile", profile.to_string()),
    ]
}

impl Scheduler {
    /// A scheduler for the given profiles.
    pub fn new(
        profiles: Vec<Framework>,
        client: Option<kube::Client>,
        recorder: Option<Recorder>,
        initial_backoff: Duration,
        max_backoff: Duration,
    ) -> Arc<Self> {
        let profiles = Arc::new(profiles);
        Arc::new(Scheduler {
            queue: SchedulingQueue::new(profiles.clone(), initial_backoff, max_backoff),
            profiles,
            cache: Mutex::new(Cache::new()),
            nominator: Mutex::new(Nominator::default()),
            algorithm: Algorithm::new(),
            metrics: Metrics::default(),
            client,
            recorder,
        })
    }

    /// The profile a pod asks for, if this scheduler has it.
    pub fn profile_for(&self, pod: &Pod) -> Option<&Framework> {
        crate::framework::profile_for(&self.profiles, pod)
    }

    /// Schedules pods until the queue closes.
    pub async fn run(self: Arc<Self>) {
        while let Some(qp) = self.queue.pop().await {
            self.clone().schedule_one(qp).await;
        }
    }

    /// One scheduling cycle for one pod; the binding cycle continues on its own task.
    pub async fn schedule_one(self: Arc<Self>, qp: QueuedPod) {
        let pod = qp.info.clone();
        let Some(fw) = self.profile_for(&pod.pod).cloned() else {
            self.queue.done(&pod.key);
            return;
        };
        let started = Instant::now();
        let snap = {
            let nominated = self.nominator.lock().snapshot();
            self.cache.lock().snapshot(nominated)
        };
        let mut state = CycleState::default();
        let decision = self.algorithm.schedule(&fw, &mut state, &pod, &snap);
        match decision {
            Decision::Node { name, .. } => {
                let node = snap.get(&name).cloned();
                // Let go of the snapshot first, so the cache changes its node list in place.
                drop(snap);
                let mut assumed = PodInfo::clone(&pod);
                assumed.node_name = name.clone();
                let assumed = Arc::new(assumed);
                self.cache.lock().assume(assumed.clone(), &name);
                let s = match &node {
                    Some(n) => fw.run_reserve(&mut state, &pod, n),
                    None => Status::error("node vanished"),
                };
                if !s.is_ok() {
                    self.cache.lock().forget(&pod.key);
                    self.failed(
                        &fw,
                        qp,
                        started,
                        s.message(),
                        s.is_rejection().then_some(s.plugin),
                    )
                    .await;
                    return;
                }
                let (permit, wait) = fw.run_permit(&state, &pod, &name);
                if !permit.is_ok() && permit.code != Code::Wait {
                    fw.run_unreserve(&mut state, &pod, &name);
                    self.cache.lock().forget(&pod.key);
                    self.failed(&fw, qp, started, permit.message(), Some(permit.plugin))
                        .await;
                    return;
                }
                self.queue.done(&pod.key);
                self.nominator.lock().remove(&pod.key);
                let this = self.clone();
                tokio::spawn(async move {
                    if permit.code == Code::Wait {
                        // Nothing in this scheduler allows a waiting pod early.
                        tokio::time::sleep(wait).await;
                        fw.run_unreserve(&mut state, &pod, &name);
                        this.cache.lock().forget(&pod.key);
                        this.queue.add(pod.clone());
                        return;
                    }
                    this.bind(fw, state, qp, name, started).await;
                });
            }
            Decision::Unfit(mut fit) => {
                let mut nominate = None;
                if fw.has_post_filter() && fit.pre_filter.is_none() {
                    for p in &fw.post_filter {
                        self.metrics.preemption_attempts.inc();
                        let (res, s) = p.post_filter(&state, &pod, &snap, &fit.statuses, &fw);
                        if !res.message.is_empty() {
                            fit.post_filter_msg = res.message.clone();
                        }
                        if s.is_ok() && res.nominated_node.is_some() {
                            self.metrics
                                .preemption_victims
                                .observe(res.victims.len() as f64);
                            nominate = Some(res);
                            break;
                        }
                    }
                } else if fw.has_post_filter() {
                    fit.post_filter_msg = format!(
                        "preemption: 0/{} nodes are available: {} {}.",
                        fit.num_all_nodes,
                        fit.num_all_nodes,
                        crate::plugins::defaultpreemption::NOT_HELPFUL
                    );
                }
                let rejected = fit.rejected_by.clone();
                let msg = fit.message();
                let node = nominate.as_ref().and_then(|r| r.nominated_node.clone());
                if let Some(res) = nominate {
                    // The victims' API calls run beside the scheduling loop, as upstream's
                    // asynchronous preemption; the pod waits, nominated, for them to go.
                    let this = self.clone();
                    let pod = pod.clone();
                    if this.client.is_some() {
                        tokio::spawn(async move { this.preempt(&pod, &res).await });
                    } else {
                        this.preempt(&pod, &res).await;
                    }
                }
                self.unfit(&fw, qp, started, msg, rejected, node).await;
            }
            Decision::Error(e) => {
                self.failed(&fw, qp, started, e, None).await;
            }
        }
    }

    async fn bind(
        self: Arc<Self>,
        fw: Framework,
        mut state: CycleState,
        qp: QueuedPod,
        node: String,
        started: Instant,
    ) {
        let pod = qp.info.clone();
        let mut status = Status::ok();
        for p in &fw.pre_bind {
            let s = p.pre_bind(&state, pod.clone(), node.clone()).await;
            if !s.is_ok() {
                status = s.by(p.name());
                break;
            }
        }
        if status.is_ok() {
            status = Status::error("no bind plugin bound the pod");
            for p in &fw.bind {
                let s = p.bind(pod.clone(), node.clone()).await;
                if s.code != Code::Skip {
                    status = s.by(p.name());
                    break;
                }
            }
        }
        if !status.is_ok() {
            fw.run_unreserve(&mut state, &pod, &node);
            self.cache.lock().forget(&pod.key);
            if status.code == Code::UnschedulableAndUnresolvable {
                // Gone or bound elsewhere: the pod informer removes it; no retry.
                tracing::info!(pod = %pod.key, reason = %status.message(), "binding not possible");
                self.queue.delete(&pod.key);
                self.queue
                    .on_event(crate::framework::Event::AssignedPodDelete);
                self.record_attempt("error", &fw, started);
                return;
            }
            // Back into the queue, with backoff; the room it held may fit others.
            self.queue.add(pod.clone());
            self.queue
                .on_event(crate::framework::Event::AssignedPodDelete);
            self.failed(
                &fw,
                qp,
                started,
                format!("Binding rejected: {}", status.message()),
                None,
            )
            .await;
            return;
        }
        self.cache.lock().finish_binding(&pod.key);
        self.record_attempt("scheduled", &fw, started);
        self.metrics.pod_attempts.observe(qp.attempts as f64);
        if let Some(first) = qp.initial_attempt {
            self.metrics
                .sli_duration
                .get_or_create(&vec![("attempts", qp.attempts.to_string())])
                .observe(first.elapsed().as_secs_f64());
        }
        if let Some(r) = &self.recorder {
            r.record(
                pod_ref(&pod),
                EventType::Normal,
                "Scheduled",
                format!("Successfully assigned {} to {node}", pod.key),
            );
        }
        for p in &fw.post_bind {
            p.post_bind(&pod, &node);
        }
    }

    /// Counts an attempt and its duration under `result`.
    fn record_attempt(&self, result: &str, fw: &Framework, started: Instant) {
        let l = labels(result, &fw.scheduler_name);
        self.metrics.attempts.get_or_create(&l).inc();
        self.metrics
            .attempt_duration
            .get_or_create(&l)
            .observe(started.elapsed().as_secs_f64());
    }

    /// Tells the user: a `FailedScheduling` event and the `PodScheduled=False` condition.
    async fn report_failure(
        &self,
        info: &PodInfo,
        reason: &str,
        msg: String,
        nominated: Option<String>,
    ) {
        if let Some(r) = &self.recorder {
            r.record(
                pod_ref(info),
                EventType::Warning,
                "FailedScheduling",
                msg.clone(),
            );
        }
        self.set_condition(info, reason, &msg, nominated).await;
    }

    async fn failed(
        &self,
        fw: &Framework,
        qp: QueuedPod,
        started: Instant,
        msg: String,
        plugin: Option<&'static str>,
    ) {
        tracing::warn!(pod = %qp.info.key, error = %msg, "scheduling failed");
        self.record_attempt("error", fw, started);
        let info = qp.info.clone();
        self.queue
            .requeue(qp, plugin.into_iter().collect(), plugin.is_none());
        self.report_failure(&info, "SchedulerError", msg, None)
            .await;
    }

    async fn unfit(
        &self,
        fw: &Framework,
        qp: QueuedPod,
        started: Instant,
        msg: String,
        rejected: HashSet<&'static str>,
        nominated: Option<String>,
    ) {
        tracing::debug!(pod = %qp.info.key, reason = %msg, "unschedulable");
        self.record_attempt("unschedulable", fw, started);
        let info = qp.info.clone();
        if let Some(n) = &nominated {
            self.nominator.lock().set(&info, n);
        }
        self.queue.requeue(qp, rejected, false);
        self.report_failure(&info, "Unschedulable", msg, nominated)
            .await;
    }

    /// Sets `PodScheduled=False` (and the nominated node) unless the pod already says so.
    async fn set_condition(
        &self,
        pod: &PodInfo,
        reason: &str,
        msg: &str,
        nominated: Option<String>,
    ) {
        let Some(client) = &self.client else {
            return;
        };
        let status = pod.pod.status.as_ref();
        let current = status
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "PodScheduled"));
        let same = current.is_some_and(|c| {
            c.status == "False"
                && c.reason.as_deref() == Some(reason)
                && c.message.as_deref() == Some(msg)
        });
        let current_nom = status.and_then(|s| s.nominated_node_name.clone());
        if same && (nominated.is_none() || nominated == current_nom) {
            return;
        }
        let mut patch = serde_json::json!({"status": {"conditions": [{
            "type": "PodScheduled", "status": "False", "reason": reason, "message": msg,
            "lastProbeTime": null,
            "lastTransitionTime": jiff::Timestamp::now().round(jiff::Unit::Second).map(|t| t.to_string()).unwrap_or_default(),
        }]}});
        if let Some(n) = nominated {
            patch["status"]["nominatedNodeName"] = serde_json::json!(n);
        }
        let api: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace);
        if let Err(e) = api
            .patch_status(
                &pod.name,
                &PatchParams::default(),
                &Patch::Strategic(&patch),
            )
            .await
            && !keelson_client_is_not_found(&e)
        {
            tracing::warn!(pod = %pod.key, error = %e, "updating pod condition failed");
        }
    }

    /// Evicts preemption victims and clears nominations that lost their room.
    async fn preempt(&self, pod: &PodInfo, res: &crate::framework::PostFilterResult) {
        let Some(node) = &res.nominated_node else {
            return;
        };
        let lower: Vec<Arc<PodInfo>> = self
            .nominator
            .lock()
            .on(node)
            .into_iter()
            .filter(|p| p.priority < pod.priority)
            .collect();
        let Some(client) = &self.client else {
            // In-process (no API): the victims are gone at once, as if deleted and confirmed.
            for v in &res.victims {
                self.cache.lock().remove_pod(&v.key);
            }
            for p in lower {
                self.nominator.lock().remove(&p.key);
            }
            self.queue
                .on_event(crate::framework::Event::AssignedPodDelete);
            return;
        };
        for v in &res.victims {
            let api: Api<Pod> = Api::namespaced(client.clone(), &v.namespace);
            let cond = serde_json::json!({"status": {"conditions": [{
                "type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler",
                "message": format!("{}: preempting to accommodate a higher priority pod", self.profiles[0].scheduler_name),
                "lastTransitionTime": jiff::Timestamp::now().round(jiff::Unit::Second).map(|t| t.to_string()).unwrap_or_default(),
            }]}});
            let _ = api
                .patch_status(&v.name, &PatchParams::default(), &Patch::Strategic(&cond))
                .await;
            match api.delete(&v.name, &DeleteParams::default()).await {
                Ok(_) => {
                    if let Some(r) = &self.recorder {
                        r.record(
                            pod_ref(v),
                            EventType::Normal,
                            "Preempted",
                            format!("Preempted by pod {} on node {node}", pod.uid),
                        );
                    }
                }
                Err(e) if keelson_client_is_not_found(&e) => {}
                Err(e) => {
                    tracing::warn!(victim = %v.key, error = %e, "deleting preemption victim failed")
                }
            }
        }
        for p in lower {
            self.nominator.lock().remove(&p.key);
            let api: Api<Pod> = Api::namespaced(client.clone(), &p.namespace);
            let patch = serde_json::json!({"status": {"nominatedNodeName": null}});
            let _ = api
                .patch_status(&p.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await;
        }
    }

    /// Updates `scheduler_pending_pods`.
    pub fn update_pending_metric(&self) {
        let (a, b, u, g) = self.queue.counts();
        for (q, n) in [
            ("active", a),
            ("backoff", b),
            ("unschedulable", u),
            ("gated", g),
        ] {
            self.metrics
                .pending
                .get_or_create(&vec![("queue", q.to_string())])
                .set(n as i64);
        }
    }
}

fn keelson_client_is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::testing::{FakeBinder, default_framework, info, node, node_info, node_with, pod};

    #[test]
    fn adaptive_percentage_of_nodes_to_score() {
        assert_eq!(num_feasible_nodes_to_find(None, 50), 50);
        assert_eq!(num_feasible_nodes_to_find(None, 500), 230); // 46%
        assert_eq!(num_feasible_nodes_to_find(None, 5000), 500); // 10%
        assert_eq!(num_feasible_nodes_to_find(None, 6000), 300); // 5% floor
        assert_eq!(num_feasible_nodes_to_find(Some(100), 5000), 5000);
        assert_eq!(num_feasible_nodes_to_find(Some(1), 5000), 100); // at least 100
    }

    #[test]
    fn fit_error_message_as_upstream() {
        let fw = default_framework();
        let tainted = node_with(
            "m",
            "4",
            "4Gi",
            json!({}),
            json!({"spec": {"taints": [{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}]}}),
        );
        let snap = Snapshot::from_nodes(vec![
            node_info(tainted, vec![]),
            node_info(node("a", "1", "4Gi", json!({})), vec![]),
            node_info(node("b", "1", "4Gi", json!({})), vec![]),
        ]);
        let p = info(pod("big", "2", "", json!({})));
        let alg = Algorithm::new();
        let Decision::Unfit(fit) = alg.schedule(&fw, &mut CycleState::default(), &p, &snap) else {
            panic!("should not fit");
        };
        assert_eq!(
            fit.message(),
            "0/3 nodes are available: 1 node(s) had untolerated taint {node-role.kubernetes.io/control-plane: }, 2 Insufficient cpu."
        );
        assert!(fit.rejected_by.contains("NodeResourcesFit"));
        assert!(fit.rejected_by.contains("TaintToleration"));
    }

    #[test]
    fn preferred_anti_affinity_spreads_replicas() {
        let fw = default_framework();
        let alg = Algorithm::new();
        let replica = |n: &str| {
            pod(
                n,
                "100m",
                "",
                json!({"metadata": {"labels": {"app": "seed"}}, "spec": {"affinity": {"podAntiAffinity": {
                    "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 100, "podAffinityTerm": {
                        "labelSelector": {"matchLabels": {"app": "seed"}}, "topologyKey": "kubernetes.io/hostname"}}]}}}}),
            )
        };
        let mut nodes = vec![
            node_info(node("a", "4", "4Gi", json!({})), vec![]),
            node_info(node("b", "4", "4Gi", json!({})), vec![]),
        ];
        let first = replica("r1");
        let snap = Snapshot::from_nodes(nodes.clone());
        let Decision::Node { name, .. } =
            alg.schedule(&fw, &mut CycleState::default(), &info(first.clone()), &snap)
        else {
            panic!()
        };
        let i = if name == "a" { 0 } else { 1 };
        nodes[i].add_pod(info(first));
        let snap = Snapshot::from_nodes(nodes);
        for _ in 0..10 {
            let Decision::Node { name: second, .. } =
                alg.schedule(&fw, &mut CycleState::default(), &info(replica("r2")), &snap)
            else {
                panic!()
            };
            assert_ne!(second, name, "the second replica goes to the other node");
        }
    }

    async fn wait_bound(binder: &FakeBinder, n: usize) -> Vec<(String, String)> {
        for _ in 0..200 {
            if binder.bound.lock().len() >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        binder.bound.lock().clone()
    }

    #[tokio::test]
    async fn scheduler_binds_requeues_and_never_double_books() {
        let mut fw = default_framework();
        let binder = FakeBinder::default();
        fw.bind = vec![Arc::new(binder.clone())];
        let s = Scheduler::new(
            vec![fw],
            None,
            None,
            Duration::from_millis(10),
            Duration::from_millis(50),
        );
        for n in ["a", "b"] {
            s.cache
                .lock()
                .set_node(Arc::new(node(n, "1", "4Gi", json!({}))));
        }
        // Four pods of 500m fit on two 1-CPU nodes; the fifth does not, at first.
        for i in 0..5 {
            s.queue
                .add(info(pod(&format!("p{i}"), "500m", "", json!({}))));
        }
        binder.fail.lock().insert("default/p0".into());
        // p1 was deleted meanwhile: its binding is refused and it is not retried.
        binder.gone.lock().insert("default/p1".into());
        for _ in 0..5 {
            let qp = s.queue.pop().await.unwrap();
            s.clone().schedule_one(qp).await;
        }
        let bound = wait_bound(&binder, 2).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        let names: Vec<&str> = bound.iter().map(|b| b.0.as_str()).collect();
        assert_eq!(names, ["default/p2", "default/p3"]);
        // Failed bindings are forgotten by the cache; p0 is queued again, p1 is not.
        assert!(!s.cache.lock().is_assumed("default/p0"));
        assert!(s.queue.contains("default/p0"));
        assert!(!s.queue.contains("default/p1"));
        let snap = s.cache.lock().snapshot(Arc::default());
        let used: i64 = snap.nodes.iter().map(|n| n.requested.milli_cpu).sum();
        assert_eq!(used, 1000, "only the bound pods hold resources");
        // The freed room re-queued p4 (rejected while p0 and p1 were assumed): after the
        // backoff both p0 and p4 fit.
        binder.fail.lock().clear();
        tokio::time::sleep(Duration::from_millis(60)).await;
        s.queue.flush();
        for _ in 0..2 {
            let qp = s.queue.pop().await.unwrap();
            s.clone().schedule_one(qp).await;
        }
        let bound = wait_bound(&binder, 4).await;
        assert_eq!(bound.len(), 4, "{bound:?}");
        let snap = s.cache.lock().snapshot(Arc::default());
        for n in snap.nodes.iter() {
            assert!(n.requested.milli_cpu <= 1000, "node {} overbooked", n.name);
        }
        // A fifth pod has no room and waits for an event, not in a loop.
        s.queue.add(info(pod("p5", "500m", "", json!({}))));
        let qp = s.queue.pop().await.unwrap();
        s.clone().schedule_one(qp).await;
        assert_eq!(s.queue.counts().2, 1, "p5 is unschedulable");
        // A node joining wakes it.
        s.cache
            .lock()
            .set_node(Arc::new(node("c", "1", "4Gi", json!({}))));
        s.queue.on_event(crate::framework::Event::NodeAdd);
        tokio::time::sleep(Duration::from_millis(60)).await;
        s.queue.flush();
        let qp = s.queue.pop().await.unwrap();
        s.clone().schedule_one(qp).await;
        let bound = wait_bound(&binder, 5).await;
        assert_eq!(
            bound.last().map(|b| (b.0.as_str(), b.1.as_str())),
            Some(("default/p5", "c"))
        );
    }

    #[test]
    fn queue_orders_by_priority_then_age() {
        let fw = default_framework();
        let q = crate::queue::SchedulingQueue::new(
            Arc::new(vec![fw]),
            Duration::from_secs(1),
            Duration::from_secs(10),
        );
        q.add(info(pod("low", "", "", json!({"spec": {"priority": 1}}))));
        q.add(info(pod(
            "high",
            "",
            "",
            json!({"spec": {"priority": 100}}),
        )));
        q.add(info(pod("low2", "", "", json!({"spec": {"priority": 1}}))));
        q.add(info(pod(
            "gated",
            "",
            "",
            json!({"spec": {"priority": 1000, "schedulingGates": [{"name": "g"}]}}),
        )));
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let order: Vec<String> = (0..3)
            .map(|_| rt.block_on(q.pop()).unwrap().info.name.clone())
            .collect();
        assert_eq!(order, ["high", "low", "low2"]);
        assert_eq!(q.counts().3, 1, "the gated pod waits");
        // Removing the gate admits it.
        q.update(info(pod(
            "gated",
            "",
            "",
            json!({"spec": {"priority": 1000}}),
        )));
        assert_eq!(rt.block_on(q.pop()).unwrap().info.name, "gated");
    }
}
