//! The scheduling framework: the extension points of kube-scheduler's framework, one trait every
//! plugin implements the points of it has, per-cycle state, and the snapshot a cycle works on.

use std::any::Any;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use k8s_openapi::api::apps::v1::{ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{Namespace, PersistentVolume, PersistentVolumeClaim, Service};
use k8s_openapi::api::core::v1::{Pod, ReplicationController};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::storage::v1::StorageClass;
use kube::runtime::reflector::{self, Store};

use crate::types::{FastMap, Labels, NodeInfo, PodInfo};

/// The outcome class of a plugin call (upstream `framework.Code`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// Fine.
    Success,
    /// Not here, but preemption might help.
    Unschedulable,
    /// Not here, and preemption cannot help.
    UnschedulableAndUnresolvable,
    /// Something went wrong (not the pod's fault).
    Error,
    /// The plugin has nothing to do for this pod (PreFilter/PreScore): skip its later points.
    Skip,
    /// Permit: wait.
    Wait,
}

/// A plugin's verdict with reasons, as upstream's `framework.Status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// The class.
    pub code: Code,
    /// Reasons shown to users (`node(s) didn't match Pod's node affinity/selector`).
    pub reasons: Vec<String>,
    /// The plugin that gave it.
    pub plugin: &'static str,
}

impl Status {
    /// Success.
    pub fn ok() -> Self {
        Status {
            code: Code::Success,
            reasons: Vec::new(),
            plugin: "",
        }
    }

    /// A status with one reason.
    pub fn new(code: Code, reason: impl Into<String>) -> Self {
        Status {
            code,
            reasons: vec![reason.into()],
            plugin: "",
        }
    }

    /// `Unschedulable` with one reason.
    pub fn unschedulable(reason: impl Into<String>) -> Self {
        Self::new(Code::Unschedulable, reason)
    }

    /// `UnschedulableAndUnresolvable` with one reason.
    pub fn unresolvable(reason: impl Into<String>) -> Self {
        Self::new(Code::UnschedulableAndUnresolvable, reason)
    }

    /// `Error`.
    pub fn error(reason: impl Into<String>) -> Self {
        Self::new(Code::Error, reason)
    }

    /// `Skip`.
    pub fn skip() -> Self {
        Status {
            code: Code::Skip,
            reasons: Vec::new(),
            plugin: "",
        }
    }

    /// Whether it is a success.
    pub fn is_ok(&self) -> bool {
        self.code == Code::Success
    }

    /// Whether it rejects the pod (either unschedulable code).
    pub fn is_rejection(&self) -> bool {
        matches!(
            self.code,
            Code::Unschedulable | Code::UnschedulableAndUnresolvable
        )
    }

    /// Names the plugin.
    pub fn by(mut self, plugin: &'static str) -> Self {
        self.plugin = plugin;
        self
    }

    /// The reasons joined (for errors and logs).
    pub fn message(&self) -> String {
        self.reasons.join(", ")
    }
}

/// Per-plugin data kept through one scheduling cycle. Cloned for preemption's what-if runs.
pub trait StateData: Any + Send + Sync {
    /// A copy.
    fn clone_box(&self) -> Box<dyn StateData>;
    /// Downcast support.
    fn as_any(&self) -> &dyn Any;
    /// Downcast support.
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

impl<T: Any + Clone + Send + Sync> StateData for T {
    fn clone_box(&self) -> Box<dyn StateData> {
        Box::new(self.clone())
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

/// State of one scheduling cycle (upstream `CycleState`).
#[derive(Default)]
pub struct CycleState {
    data: HashMap<&'static str, Box<dyn StateData>>,
    /// Per Filter plugin (in the framework's order): whether it runs this cycle. Empty: all.
    filter_mask: Vec<bool>,
    /// Plugins whose Score is skipped (their PreScore returned Skip).
    pub skip_score: HashSet<&'static str>,
}

impl Clone for CycleState {
    fn clone(&self) -> Self {
        CycleState {
            data: self
                .data
                .iter()
                .map(|(k, v)| (*k, (**v).clone_box()))
                .collect(),
            filter_mask: self.filter_mask.clone(),
            skip_score: self.skip_score.clone(),
        }
    }
}

impl CycleState {
    /// Stores a plugin's data.
    pub fn write<T: StateData>(&mut self, key: &'static str, v: T) {
        self.data.insert(key, Box::new(v));
    }

    /// Reads a plugin's data.
    pub fn read<T: 'static>(&self, key: &'static str) -> Option<&T> {
        self.data
            .get(key)
            .and_then(|v| (**v).as_any().downcast_ref())
    }

    /// Reads a plugin's data for change.
    pub fn read_mut<T: 'static>(&mut self, key: &'static str) -> Option<&mut T> {
        self.data
            .get_mut(key)
            .and_then(|v| (**v).as_any_mut().downcast_mut())
    }
}

/// The nodes (with their pods) one scheduling cycle sees.
#[derive(Clone, Default)]
pub struct Snapshot {
    /// All nodes, in a stable order.
    pub nodes: Arc<Vec<Arc<NodeInfo>>>,
    /// Each node's generation, by position: per-node memos compare these without touching
    /// the nodes.
    pub generations: Arc<Vec<u64>>,
    /// Node name -> position in `nodes`.
    pub index: Arc<FastMap<String, usize>>,
    /// Pending pods nominated to each node (by preemption), which filtering must make room for.
    pub nominated: Arc<Nominations>,
    /// Pods with any pod (anti-)affinity term, over all nodes.
    pub pods_with_affinity: usize,
    /// Pods with required anti-affinity, over all nodes.
    pub pods_with_required_anti_affinity: usize,
}

impl Snapshot {
    /// A snapshot of the given nodes (tests, benchmarks).
    pub fn from_nodes(nodes: Vec<NodeInfo>) -> Self {
        let index = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.name.clone(), i))
            .collect();
        Snapshot {
            generations: Arc::new(nodes.iter().map(|n| n.generation).collect()),
            pods_with_affinity: nodes.iter().map(|n| n.pods_with_affinity).sum(),
            pods_with_required_anti_affinity: nodes
                .iter()
                .map(|n| n.pods_with_required_anti_affinity)
                .sum(),
            nodes: Arc::new(nodes.into_iter().map(Arc::new).collect()),
            index: Arc::new(index),
            nominated: Arc::default(),
        }
    }

    /// The pods nominated to a node.
    pub fn nominated_to(&self, node: &str) -> &[Arc<PodInfo>] {
        if self.nominated.is_empty() {
            return &[];
        }
        self.nominated.get(node).map(Vec::as_slice).unwrap_or(&[])
    }

    /// A node by name.
    pub fn get(&self, name: &str) -> Option<&Arc<NodeInfo>> {
        self.index.get(name).map(|i| &self.nodes[*i])
    }
}

/// Read access to the objects some plugins need besides pods and nodes.
#[derive(Clone)]
pub struct Listers {
    /// Namespaces (for namespace selectors).
    pub namespaces: Store<Namespace>,
    /// PersistentVolumeClaims.
    pub pvcs: Store<PersistentVolumeClaim>,
    /// PersistentVolumes.
    pub pvs: Store<PersistentVolume>,
    /// StorageClasses.
    pub storage_classes: Store<StorageClass>,
    /// Services (default spreading).
    pub services: Store<Service>,
    /// ReplicaSets (default spreading).
    pub replicasets: Store<ReplicaSet>,
    /// StatefulSets (default spreading).
    pub statefulsets: Store<StatefulSet>,
    /// ReplicationControllers (default spreading).
    pub replication_controllers: Store<ReplicationController>,
    /// PodDisruptionBudgets (preemption).
    pub pdbs: Store<PodDisruptionBudget>,
}

impl Listers {
    /// Empty stores (tests and benchmarks without an API server).
    pub fn empty() -> Self {
        Listers {
            namespaces: reflector::store().0,
            pvcs: reflector::store().0,
            pvs: reflector::store().0,
            storage_classes: reflector::store().0,
            services: reflector::store().0,
            replicasets: reflector::store().0,
            statefulsets: reflector::store().0,
            replication_controllers: reflector::store().0,
            pdbs: reflector::store().0,
        }
    }

    /// The labels of a namespace, if it is known.
    pub fn namespace_labels(&self, ns: &str) -> Option<Arc<Labels>> {
        let n = self
            .namespaces
            .get(&kube::runtime::reflector::ObjectRef::new(ns))?;
        Some(Arc::new(n.metadata.labels.clone().unwrap_or_default()))
    }
}

/// The extension points.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Point {
    /// Before a pod enters the active queue.
    PreEnqueue,
    /// Orders the active queue.
    QueueSort,
    /// Once per cycle before filtering.
    PreFilter,
    /// Per node: can the pod go here?
    Filter,
    /// When no node fits (preemption).
    PostFilter,
    /// Once per cycle before scoring.
    PreScore,
    /// Per feasible node: how good is it?
    Score,
    /// The chosen node is set aside for the pod.
    Reserve,
    /// Approve, deny or delay binding.
    Permit,
    /// Before binding (volumes).
    PreBind,
    /// Binding.
    Bind,
    /// After a successful binding.
    PostBind,
}

impl Point {
    /// All points, in the order of a scheduling and binding cycle.
    pub const ALL: [Point; 12] = [
        Point::PreEnqueue,
        Point::QueueSort,
        Point::PreFilter,
        Point::Filter,
        Point::PostFilter,
        Point::PreScore,
        Point::Score,
        Point::Reserve,
        Point::Permit,
        Point::PreBind,
        Point::Bind,
        Point::PostBind,
    ];

    /// The field name in KubeSchedulerConfiguration's `plugins`.
    pub fn config_name(self) -> &'static str {
        match self {
            Point::PreEnqueue => "preEnqueue",
            Point::QueueSort => "queueSort",
            Point::PreFilter => "preFilter",
            Point::Filter => "filter",
            Point::PostFilter => "postFilter",
            Point::PreScore => "preScore",
            Point::Score => "score",
            Point::Reserve => "reserve",
            Point::Permit => "permit",
            Point::PreBind => "preBind",
            Point::Bind => "bind",
            Point::PostBind => "postBind",
        }
    }
}

/// Cluster events that can make a rejected pod schedulable (upstream `ClusterEvent`s).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Event {
    /// A node appeared.
    NodeAdd,
    /// A node's labels changed.
    NodeLabel,
    /// A node's taints changed.
    NodeTaint,
    /// A node's allocatable changed.
    NodeAllocatable,
    /// A node became schedulable.
    NodeSchedulable,
    /// A pod was bound (or appeared bound).
    AssignedPodAdd,
    /// A bound pod's labels changed.
    AssignedPodUpdate,
    /// A bound pod went away (or finished).
    AssignedPodDelete,
    /// A namespace's labels changed.
    NamespaceUpdate,
    /// A PVC or PV appeared or changed.
    Volume,
    /// A StorageClass appeared.
    StorageClassAdd,
    /// A PodDisruptionBudget changed.
    Pdb,
}

/// What preemption (PostFilter) decided.
#[derive(Debug, Default)]
pub struct PostFilterResult {
    /// The node the pod is nominated to run on once the victims are gone.
    pub nominated_node: Option<String>,
    /// Pods to delete.
    pub victims: Vec<Arc<PodInfo>>,
    /// Lower-priority pods nominated to that node that lose their nomination.
    pub denominated: Vec<Arc<PodInfo>>,
    /// The message for the FailedScheduling event (`preemption: ...`).
    pub message: String,
}

/// Per-node outcome of filtering, for diagnostics and preemption.
pub type NodeStatuses = FastMap<String, Status>;

/// Node name -> pods nominated to it.
pub type Nominations = FastMap<String, Vec<Arc<PodInfo>>>;

/// The services a plugin's constructor gets.
#[derive(Clone)]
pub struct Handle {
    /// API access (None in tests and in-process benchmarks).
    pub client: Option<kube::Client>,
    /// Listers.
    pub listers: Listers,
}

/// One plugin. Each implements the points it lists in [`Plugin::points`]; the defaults of the
/// others are never called.
pub trait Plugin: Send + Sync {
    /// Its upstream name.
    fn name(&self) -> &'static str;
    /// The extension points it implements.
    fn points(&self) -> &'static [Point];
    /// The cluster events that may make a pod it rejected schedulable.
    fn events(&self) -> &'static [Event] {
        &[]
    }
    /// PreEnqueue: may the pod enter the active queue?
    fn pre_enqueue(&self, _pod: &PodInfo) -> Status {
        Status::ok()
    }
    /// QueueSort: whether `a` goes before `b`.
    fn less(&self, _a: &QueuedPodRef<'_>, _b: &QueuedPodRef<'_>) -> bool {
        false
    }
    /// PreFilter: per-cycle precomputation; may narrow the nodes to consider.
    fn pre_filter(
        &self,
        _state: &mut CycleState,
        _pod: &PodInfo,
        _snap: &Snapshot,
    ) -> (Option<HashSet<String>>, Status) {
        (None, Status::ok())
    }
    /// PreFilter extension: keep the precomputed state right when preemption adds a pod.
    fn add_pod(&self, _state: &mut CycleState, _pod: &PodInfo, _added: &PodInfo, _node: &NodeInfo) {
    }
    /// PreFilter extension: keep the precomputed state right when preemption removes a pod.
    fn remove_pod(
        &self,
        _state: &mut CycleState,
        _pod: &PodInfo,
        _removed: &PodInfo,
        _node: &NodeInfo,
    ) {
    }
    /// Filter: can the pod run on this node?
    fn filter(&self, _state: &CycleState, _pod: &PodInfo, _node: &NodeInfo) -> Status {
        Status::ok()
    }
    /// PostFilter: no node fits; try to make room.
    fn post_filter(
        &self,
        _state: &CycleState,
        _pod: &PodInfo,
        _snap: &Snapshot,
        _statuses: &NodeStatuses,
        _fw: &Framework,
    ) -> (PostFilterResult, Status) {
        (PostFilterResult::default(), Status::unschedulable(""))
    }
    /// PreScore: per-cycle precomputation for scoring the feasible nodes.
    fn pre_score(
        &self,
        _state: &mut CycleState,
        _pod: &PodInfo,
        _nodes: &[Arc<NodeInfo>],
        _snap: &Snapshot,
    ) -> Status {
        Status::ok()
    }
    /// Score: 0..=100 (after normalizing) for one node.
    fn score(&self, _state: &CycleState, _pod: &PodInfo, _node: &NodeInfo) -> i64 {
        0
    }
    /// NormalizeScore: rescales the scores of all feasible nodes.
    fn normalize(&self, _state: &CycleState, _pod: &PodInfo, _scores: &mut [i64]) {}
    /// Reserve.
    fn reserve(&self, _state: &mut CycleState, _pod: &PodInfo, _node: &NodeInfo) -> Status {
        Status::ok()
    }
    /// Unreserve (undoes Reserve after a later failure).
    fn unreserve(&self, _state: &mut CycleState, _pod: &PodInfo, _node: &str) {}
    /// Permit: approve, deny, or wait (with a timeout).
    fn permit(&self, _state: &CycleState, _pod: &PodInfo, _node: &str) -> (Status, Duration) {
        (Status::ok(), Duration::ZERO)
    }
    /// PreBind.
    fn pre_bind(
        &self,
        _state: &CycleState,
        _pod: Arc<PodInfo>,
        _node: String,
    ) -> BoxFuture<'static, Status> {
        Box::pin(async { Status::ok() })
    }
    /// Bind; `Skip` passes to the next binder. `UnschedulableAndUnresolvable` means the pod
    /// cannot be bound at all (deleted, or bound by someone else): it is not retried.
    fn bind(&self, _pod: Arc<PodInfo>, _node: String) -> BoxFuture<'static, Status> {
        Box::pin(async { Status::skip() })
    }
    /// PostBind.
    fn post_bind(&self, _pod: &PodInfo, _node: &str) {}
}

/// The queue's view of a pod for QueueSort.
pub struct QueuedPodRef<'a> {
    /// The pod.
    pub info: &'a PodInfo,
    /// When it entered the queue.
    pub timestamp: std::time::Instant,
}

/// A profile: the plugins enabled at each extension point, with score weights.
#[derive(Clone)]
pub struct Framework {
    /// The schedulerName pods choose this profile by.
    pub scheduler_name: String,
    /// PreEnqueue plugins.
    pub pre_enqueue: Vec<Arc<dyn Plugin>>,
    /// The QueueSort plugin.
    pub queue_sort: Arc<dyn Plugin>,
    /// PreFilter plugins.
    pub pre_filter: Vec<Arc<dyn Plugin>>,
    /// Filter plugins.
    pub filter: Vec<Arc<dyn Plugin>>,
    /// PostFilter plugins.
    pub post_filter: Vec<Arc<dyn Plugin>>,
    /// PreScore plugins.
    pub pre_score: Vec<Arc<dyn Plugin>>,
    /// Score plugins with weights.
    pub score: Vec<(Arc<dyn Plugin>, i64)>,
    /// Reserve plugins.
    pub reserve: Vec<Arc<dyn Plugin>>,
    /// Permit plugins.
    pub permit: Vec<Arc<dyn Plugin>>,
    /// PreBind plugins.
    pub pre_bind: Vec<Arc<dyn Plugin>>,
    /// Bind plugins.
    pub bind: Vec<Arc<dyn Plugin>>,
    /// PostBind plugins.
    pub post_bind: Vec<Arc<dyn Plugin>>,
    /// Percentage of nodes to score (None: the adaptive default).
    pub percentage_of_nodes_to_score: Option<u32>,
    /// Cluster events -> plugins interested, for re-queueing.
    pub interest: HashMap<Event, HashSet<&'static str>>,
}

/// The profile a pod asks for by `spec.schedulerName` (default `default-scheduler`).
pub fn profile_for<'a>(profiles: &'a [Framework], pod: &Pod) -> Option<&'a Framework> {
    let name = pod
        .spec
        .as_ref()
        .and_then(|s| s.scheduler_name.as_deref())
        .unwrap_or("default-scheduler");
    profiles.iter().find(|f| f.scheduler_name == name)
}

impl Framework {
    /// Runs PreFilter plugins: the nodes to consider (None: all) and the first rejection.
    pub fn run_pre_filter(
        &self,
        state: &mut CycleState,
        pod: &PodInfo,
        snap: &Snapshot,
    ) -> (Option<HashSet<String>>, Status) {
        state.filter_mask = vec![true; self.filter.len()];
        let mut nodes: Option<HashSet<String>> = None;
        for p in &self.pre_filter {
            let (r, s) = p.pre_filter(state, pod, snap);
            match s.code {
                Code::Success => {}
                Code::Skip => {
                    // Its Filter has nothing to check for this pod.
                    for (i, f) in self.filter.iter().enumerate() {
                        if f.name() == p.name() {
                            state.filter_mask[i] = false;
                        }
                    }
                    continue;
                }
                _ => return (None, s.by(p.name())),
            }
            if let Some(r) = r {
                nodes = Some(match nodes {
                    None => r,
                    Some(n) => n.intersection(&r).cloned().collect(),
                });
                if nodes.as_ref().is_some_and(|n| n.is_empty()) {
                    return (
                        None,
                        Status::unresolvable(format!(
                            "node(s) didn't satisfy plugin(s) [{}]",
                            p.name()
                        ))
                        .by(p.name()),
                    );
                }
            }
        }
        (nodes, Status::ok())
    }

    /// Runs Filter plugins on one node; the first rejection.
    pub fn run_filters(&self, state: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Status {
        for (i, p) in self.filter.iter().enumerate() {
            if !state.filter_mask.get(i).copied().unwrap_or(true) {
                continue;
            }
            let s = p.filter(state, pod, node);
            if !s.is_ok() {
                return s.by(p.name());
            }
        }
        Status::ok()
    }

    /// Runs Filter plugins as if the pods nominated to this node with at least the pod's
    /// priority were already there (upstream `RunFilterPluginsWithNominatedPods`): the node must
    /// fit both with and without them.
    pub fn run_filters_with_nominated(
        &self,
        state: &CycleState,
        pod: &PodInfo,
        node: &NodeInfo,
        nominated: &[Arc<PodInfo>],
    ) -> Status {
        let relevant: Vec<&Arc<PodInfo>> = nominated
            .iter()
            .filter(|p| p.priority >= pod.priority && p.uid != pod.uid)
            .collect();
        if relevant.is_empty() {
            return self.run_filters(state, pod, node);
        }
        let mut st = state.clone();
        let mut ni = NodeInfo::clone(node);
        for p in relevant {
            ni.add_pod(p.clone());
            for pl in &self.pre_filter {
                pl.add_pod(&mut st, pod, p, &ni);
            }
        }
        let s = self.run_filters(&st, pod, &ni);
        if !s.is_ok() {
            return s;
        }
        self.run_filters(state, pod, node)
    }

    /// Runs PreScore plugins.
    pub fn run_pre_score(
        &self,
        state: &mut CycleState,
        pod: &PodInfo,
        nodes: &[Arc<NodeInfo>],
        snap: &Snapshot,
    ) -> Status {
        for p in &self.pre_score {
            let s = p.pre_score(state, pod, nodes, snap);
            match s.code {
                Code::Success => {}
                Code::Skip => {
                    state.skip_score.insert(p.name());
                }
                _ => return s.by(p.name()),
            }
        }
        Status::ok()
    }

    /// Runs Score plugins (normalized and weighted): the total per node, in `nodes` order.
    pub fn run_score(
        &self,
        state: &CycleState,
        pod: &PodInfo,
        nodes: &[Arc<NodeInfo>],
    ) -> Vec<i64> {
        let mut total = vec![0i64; nodes.len()];
        let mut scores = vec![0i64; nodes.len()];
        for (p, weight) in &self.score {
            if state.skip_score.contains(p.name()) {
                continue;
            }
            for (i, n) in nodes.iter().enumerate() {
                scores[i] = p.score(state, pod, n);
            }
            p.normalize(state, pod, &mut scores);
            for (t, s) in total.iter_mut().zip(&scores) {
                *t += s * weight;
            }
        }
        total
    }

    /// Runs Reserve plugins; on a failure, unreserves all (in reverse) and says why.
    pub fn run_reserve(&self, state: &mut CycleState, pod: &PodInfo, node: &NodeInfo) -> Status {
        for p in &self.reserve {
            let s = p.reserve(state, pod, node);
            if !s.is_ok() {
                self.run_unreserve(state, pod, &node.name);
                return s.by(p.name());
            }
        }
        Status::ok()
    }

    /// Runs Unreserve plugins in reverse order.
    pub fn run_unreserve(&self, state: &mut CycleState, pod: &PodInfo, node: &str) {
        for p in self.reserve.iter().rev() {
            p.unreserve(state, pod, node);
        }
    }

    /// Runs Permit plugins: the verdict and, for `Wait`, the longest timeout asked for.
    pub fn run_permit(&self, state: &CycleState, pod: &PodInfo, node: &str) -> (Status, Duration) {
        let mut wait = Duration::ZERO;
        for p in &self.permit {
            let (s, d) = p.permit(state, pod, node);
            match s.code {
                Code::Success => {}
                Code::Wait => wait = wait.max(d.min(Duration::from_secs(15 * 60))),
                _ => return (s.by(p.name()), Duration::ZERO),
            }
        }
        if wait > Duration::ZERO {
            (Status::new(Code::Wait, "waiting"), wait)
        } else {
            (Status::ok(), wait)
        }
    }

    /// Whether some plugin enabled here implements PostFilter.
    pub fn has_post_filter(&self) -> bool {
        !self.post_filter.is_empty()
    }
}
