//! The scheduler's view of pods and nodes: what the plugins read, parsed once per object change
//! (requests as integers, selectors compiled, ports and terms extracted) so that a scheduling
//! cycle over thousands of nodes touches no JSON and no quantity strings.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{
    Container, Node, NodeSelectorRequirement, NodeSelectorTerm, Pod, PodAffinityTerm, Taint,
    Toleration, TopologySpreadConstraint,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// The most a plugin scores a node (upstream `MaxNodeScore`).
pub const MAX_NODE_SCORE: i64 = 100;
/// Requests assumed for a container that sets none, for scoring only (upstream's non-zero
/// defaults: 100m CPU, 200 MiB memory).
pub const DEFAULT_MILLI_CPU: i64 = 100;
/// See [`DEFAULT_MILLI_CPU`].
pub const DEFAULT_MEMORY: i64 = 200 * 1024 * 1024;
/// The hostname label, the finest topology domain.
pub const LABEL_HOSTNAME: &str = "kubernetes.io/hostname";

/// Parses a Kubernetes quantity (`100m`, `1.5Gi`, `2e3`) to `value * scale`, rounded up; `None`
/// for a malformed one. `scale` is 1000 for milli-units (CPU), 1 otherwise.
pub fn parse_quantity(s: &str, scale: i128) -> Option<i64> {
    let s = s.trim();
    let num_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(num_end);
    let (neg, num) = match num.as_bytes().first() {
        Some(b'-') => (true, &num[1..]),
        Some(b'+') => (false, &num[1..]),
        _ => (false, num),
    };
    if num.is_empty() {
        return None;
    }
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    let digits = format!("{int}{frac}");
    if !digits.bytes().all(|b| b.is_ascii_digit()) || digits.len() > 30 {
        return None;
    }
    let mantissa: i128 = digits.parse().ok()?;
    // value = mantissa * 10^(exp10 - frac.len()) * 2^exp2
    let (mut exp10, exp2): (i32, u32) = match suffix {
        "" => (0, 0),
        "n" => (-9, 0),
        "u" => (-6, 0),
        "m" => (-3, 0),
        "k" => (3, 0),
        "M" => (6, 0),
        "G" => (9, 0),
        "T" => (12, 0),
        "P" => (15, 0),
        "E" => (18, 0),
        "Ki" => (0, 10),
        "Mi" => (0, 20),
        "Gi" => (0, 30),
        "Ti" => (0, 40),
        "Pi" => (0, 50),
        "Ei" => (0, 60),
        e if e.starts_with(['e', 'E']) => (e[1..].parse().ok()?, 0),
        _ => return None,
    };
    exp10 -= frac.len() as i32;
    let mut num = mantissa.checked_mul(scale)?.checked_mul(1i128 << exp2)?;
    let mut den: i128 = 1;
    if exp10 >= 0 {
        num = num.checked_mul(10i128.checked_pow(exp10 as u32)?)?;
    } else {
        den = 10i128.checked_pow((-exp10) as u32)?;
    }
    let v = (num + den - 1) / den;
    let v = i64::try_from(v).ok()?;
    Some(if neg { -v } else { v })
}

/// Amounts of resources: CPU in millicores, memory and ephemeral storage in bytes, the pod count,
/// and extended/scalar resources by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    /// CPU, millicores.
    pub milli_cpu: i64,
    /// Memory, bytes.
    pub memory: i64,
    /// Ephemeral storage, bytes.
    pub ephemeral_storage: i64,
    /// Pods (allocatable) or 1 per pod (requested).
    pub pods: i64,
    /// Extended resources (`example.com/gpu`, `hugepages-2Mi`).
    pub scalar: BTreeMap<String, i64>,
}

impl Resources {
    /// From a resource list (`requests`, `allocatable`); malformed quantities count as zero.
    pub fn from_list(
        list: Option<&BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>,
    ) -> Self {
        let mut r = Resources::default();
        for (name, q) in list.into_iter().flatten() {
            r.set(name, &q.0);
        }
        r
    }

    fn set(&mut self, name: &str, q: &str) {
        match name {
            "cpu" => self.milli_cpu = parse_quantity(q, 1000).unwrap_or(0),
            "memory" => self.memory = parse_quantity(q, 1).unwrap_or(0),
            "ephemeral-storage" => self.ephemeral_storage = parse_quantity(q, 1).unwrap_or(0),
            "pods" => self.pods = parse_quantity(q, 1).unwrap_or(0),
            n if is_scalar(n) => {
                self.scalar
                    .insert(n.to_string(), parse_quantity(q, 1).unwrap_or(0));
            }
            _ => {}
        }
    }

    /// The amount of one resource by its API name.
    pub fn get(&self, name: &str) -> i64 {
        match name {
            "cpu" => self.milli_cpu,
            "memory" => self.memory,
            "ephemeral-storage" => self.ephemeral_storage,
            "pods" => self.pods,
            n => self.scalar.get(n).copied().unwrap_or(0),
        }
    }

    /// Adds `o` to these amounts.
    pub fn add(&mut self, o: &Resources) {
        self.milli_cpu += o.milli_cpu;
        self.memory += o.memory;
        self.ephemeral_storage += o.ephemeral_storage;
        self.pods += o.pods;
        for (k, v) in &o.scalar {
            *self.scalar.entry(k.clone()).or_default() += v;
        }
    }

    /// Subtracts `o` from these amounts.
    pub fn sub(&mut self, o: &Resources) {
        self.milli_cpu -= o.milli_cpu;
        self.memory -= o.memory;
        self.ephemeral_storage -= o.ephemeral_storage;
        self.pods -= o.pods;
        for (k, v) in &o.scalar {
            *self.scalar.entry(k.clone()).or_default() -= v;
        }
    }

    /// Per-resource maximum.
    fn max(&mut self, o: &Resources) {
        self.milli_cpu = self.milli_cpu.max(o.milli_cpu);
        self.memory = self.memory.max(o.memory);
        self.ephemeral_storage = self.ephemeral_storage.max(o.ephemeral_storage);
        for (k, v) in &o.scalar {
            let e = self.scalar.entry(k.clone()).or_default();
            *e = (*e).max(*v);
        }
    }
}

/// Whether a resource name is an extended resource the scheduler accounts (hugepages,
/// attachable volumes and domain-prefixed names such as `example.com/gpu`).
pub fn is_scalar(name: &str) -> bool {
    name.starts_with("hugepages-")
        || name.starts_with("attachable-volumes-")
        || (name.contains('/') && !name.starts_with("kubernetes.io/"))
}

fn container_requests(c: &Container) -> Resources {
    Resources::from_list(c.resources.as_ref().and_then(|r| r.requests.as_ref()))
}

/// The resources a pod asks for, as upstream computes them: the sum of its app containers and
/// sidecars, or the largest init container plus the sidecars started before it if that is more,
/// plus the pod overhead. `non_zero` applies the scoring defaults to containers without CPU or
/// memory requests.
pub fn pod_requests(pod: &Pod, non_zero: bool) -> Resources {
    let Some(spec) = &pod.spec else {
        return Resources::default();
    };
    let req = |c: &Container| {
        let mut r = container_requests(c);
        if non_zero {
            let has = |n: &str| {
                c.resources
                    .as_ref()
                    .and_then(|r| r.requests.as_ref())
                    .is_some_and(|m| m.contains_key(n))
            };
            if !has("cpu") {
                r.milli_cpu = DEFAULT_MILLI_CPU;
            }
            if !has("memory") {
                r.memory = DEFAULT_MEMORY;
            }
        }
        r
    };
    let mut total = Resources::default();
    for c in &spec.containers {
        total.add(&req(c));
    }
    let mut sidecars = Resources::default();
    let mut init_max = Resources::default();
    for c in spec.init_containers.iter().flatten() {
        let r = req(c);
        if c.restart_policy.as_deref() == Some("Always") {
            sidecars.add(&r);
            total.add(&r);
            init_max.max(&sidecars);
        } else {
            let mut with = sidecars.clone();
            with.add(&r);
            init_max.max(&with);
        }
    }
    total.max(&init_max);
    if let Some(o) = &spec.overhead {
        total.add(&Resources::from_list(Some(o)));
    }
    total.pods = 1;
    total
}

/// One requirement of a label selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    /// The label has one of the values.
    In(String, Vec<String>),
    /// The label is missing or has none of the values.
    NotIn(String, Vec<String>),
    /// The label is present.
    Exists(String),
    /// The label is missing.
    DoesNotExist(String),
    /// The label is an integer greater than the value (node selectors only).
    Gt(String, i64),
    /// The label is an integer less than the value (node selectors only).
    Lt(String, i64),
}

impl Requirement {
    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        match self {
            Requirement::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::DoesNotExist(k) => !labels.contains_key(k),
            Requirement::Gt(k, n) => labels
                .get(k)
                .and_then(|v| v.parse::<i64>().ok())
                .is_some_and(|v| v > *n),
            Requirement::Lt(k, n) => labels
                .get(k)
                .and_then(|v| v.parse::<i64>().ok())
                .is_some_and(|v| v < *n),
        }
    }
}

/// A compiled label selector. `None` requirements is the nil selector, which matches nothing;
/// an empty list matches everything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector(Option<Vec<Requirement>>);

impl Selector {
    /// Matches every label set.
    pub fn everything() -> Self {
        Selector(Some(Vec::new()))
    }

    /// Matches nothing (a nil selector).
    pub fn nothing() -> Self {
        Selector(None)
    }

    /// Compiles a metav1 LabelSelector; `None` for a malformed one (an unknown operator).
    pub fn from_label_selector(s: Option<&LabelSelector>) -> Option<Self> {
        let Some(s) = s else {
            return Some(Self::nothing());
        };
        let mut reqs = Vec::new();
        for (k, v) in s.match_labels.iter().flatten() {
            reqs.push(Requirement::In(k.clone(), vec![v.clone()]));
        }
        for e in s.match_expressions.iter().flatten() {
            let vals = e.values.clone().unwrap_or_default();
            reqs.push(match e.operator.as_str() {
                "In" => Requirement::In(e.key.clone(), vals),
                "NotIn" => Requirement::NotIn(e.key.clone(), vals),
                "Exists" => Requirement::Exists(e.key.clone()),
                "DoesNotExist" => Requirement::DoesNotExist(e.key.clone()),
                _ => return None,
            });
        }
        Some(Selector(Some(reqs)))
    }

    /// From a `map[string]string` selector (Services, ReplicationControllers); empty or missing
    /// selects nothing, as upstream treats them for spreading.
    pub fn from_map(m: Option<&BTreeMap<String, String>>) -> Self {
        match m {
            Some(m) if !m.is_empty() => Selector(Some(
                m.iter()
                    .map(|(k, v)| Requirement::In(k.clone(), vec![v.clone()]))
                    .collect(),
            )),
            _ => Self::nothing(),
        }
    }

    /// Adds `key=value` requirements (matchLabelKeys).
    pub fn and(&mut self, r: Requirement) {
        if let Some(v) = &mut self.0 {
            v.push(r);
        }
    }

    /// Whether the selector is the nil one.
    pub fn is_nothing(&self) -> bool {
        self.0.is_none()
    }

    /// Whether `labels` match.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        match &self.0 {
            None => false,
            Some(reqs) => reqs.iter().all(|r| r.matches(labels)),
        }
    }

    /// Merges several selectors into one that requires all of them (upstream's default
    /// spreading selector); `nothing` when there are none.
    pub fn all_of(sels: Vec<Selector>) -> Self {
        if sels.is_empty() {
            return Self::nothing();
        }
        let mut reqs = Vec::new();
        for s in sels {
            match s.0 {
                Some(r) => reqs.extend(r),
                None => return Self::nothing(),
            }
        }
        Selector(Some(reqs))
    }
}

/// A node selector term: requirements on labels and on fields (`metadata.name`), all must hold.
#[derive(Debug, Clone)]
pub struct NodeTerm {
    labels: Vec<Requirement>,
    fields: Vec<Requirement>,
}

fn node_requirement(r: &NodeSelectorRequirement) -> Option<Requirement> {
    let vals = r.values.clone().unwrap_or_default();
    let int = || vals.first().and_then(|v| v.parse::<i64>().ok());
    Some(match r.operator.as_str() {
        "In" => Requirement::In(r.key.clone(), vals),
        "NotIn" => Requirement::NotIn(r.key.clone(), vals),
        "Exists" => Requirement::Exists(r.key.clone()),
        "DoesNotExist" => Requirement::DoesNotExist(r.key.clone()),
        "Gt" => Requirement::Gt(r.key.clone(), int()?),
        "Lt" => Requirement::Lt(r.key.clone(), int()?),
        _ => return None,
    })
}

impl NodeTerm {
    /// Compiles a term; a term with a malformed requirement matches no node (as upstream).
    pub fn new(t: &NodeSelectorTerm) -> Option<Self> {
        let labels = t
            .match_expressions
            .iter()
            .flatten()
            .map(node_requirement)
            .collect::<Option<Vec<_>>>()?;
        let fields = t
            .match_fields
            .iter()
            .flatten()
            .map(node_requirement)
            .collect::<Option<Vec<_>>>()?;
        if labels.is_empty() && fields.is_empty() {
            // An empty term matches no objects.
            return None;
        }
        Some(NodeTerm { labels, fields })
    }

    /// Whether the node's labels and name satisfy the term.
    pub fn matches(&self, labels: &BTreeMap<String, String>, name: &str) -> bool {
        if !self.labels.iter().all(|r| r.matches(labels)) {
            return false;
        }
        if self.fields.is_empty() {
            return true;
        }
        let fields = BTreeMap::from([("metadata.name".to_string(), name.to_string())]);
        self.fields.iter().all(|r| r.matches(&fields))
    }
}

/// The required node affinity of a pod: nodeSelector AND (any of the required terms).
#[derive(Debug, Clone, Default)]
pub struct RequiredNodeAffinity {
    selector: BTreeMap<String, String>,
    /// `None`: no required terms; `Some(vec![])`: terms none of which can match.
    terms: Option<Vec<NodeTerm>>,
}

impl RequiredNodeAffinity {
    /// From a pod spec.
    pub fn of(pod: &Pod) -> Self {
        let spec = pod.spec.as_ref();
        let selector = spec
            .and_then(|s| s.node_selector.clone())
            .unwrap_or_default();
        let terms = spec
            .and_then(|s| s.affinity.as_ref())
            .and_then(|a| a.node_affinity.as_ref())
            .and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .as_ref()
            })
            .map(|ns| {
                ns.node_selector_terms
                    .iter()
                    .filter_map(NodeTerm::new)
                    .collect()
            });
        RequiredNodeAffinity { selector, terms }
    }

    /// Whether the node satisfies it.
    pub fn matches(&self, labels: &BTreeMap<String, String>, name: &str) -> bool {
        if !self.selector.iter().all(|(k, v)| labels.get(k) == Some(v)) {
            return false;
        }
        match &self.terms {
            None => true,
            Some(t) => t.iter().any(|t| t.matches(labels, name)),
        }
    }

    /// Whether anything is required at all.
    pub fn is_empty(&self) -> bool {
        self.selector.is_empty() && self.terms.is_none()
    }
}

/// A pod (anti-)affinity term, compiled.
#[derive(Debug, Clone)]
pub struct AffinityTerm {
    /// Which pods the term is about.
    pub selector: Selector,
    /// The namespaces listed (or the pod's own when neither list nor selector is given).
    pub namespaces: HashSet<String>,
    /// A namespace label selector (`Some(everything)` for `{}`: all namespaces).
    pub namespace_selector: Option<Selector>,
    /// The topology key.
    pub topology_key: String,
    /// The term's weight (preferred terms; 1 for required ones).
    pub weight: i64,
}

impl AffinityTerm {
    fn new(t: &PodAffinityTerm, pod: &Pod, weight: i64) -> Option<Self> {
        let mut selector = Selector::from_label_selector(t.label_selector.as_ref())?;
        let labels = pod.metadata.labels.as_ref();
        for k in t.match_label_keys.iter().flatten() {
            if let Some(v) = labels.and_then(|l| l.get(k)) {
                selector.and(Requirement::In(k.clone(), vec![v.clone()]));
            }
        }
        for k in t.mismatch_label_keys.iter().flatten() {
            if let Some(v) = labels.and_then(|l| l.get(k)) {
                selector.and(Requirement::NotIn(k.clone(), vec![v.clone()]));
            }
        }
        let mut namespaces: HashSet<String> = t.namespaces.iter().flatten().cloned().collect();
        let namespace_selector = match &t.namespace_selector {
            Some(s) => Some(Selector::from_label_selector(Some(s))?),
            None => None,
        };
        if namespaces.is_empty() && namespace_selector.is_none() {
            namespaces.insert(pod.metadata.namespace.clone().unwrap_or_default());
        }
        Some(AffinityTerm {
            selector,
            namespaces,
            namespace_selector,
            topology_key: t.topology_key.clone(),
            weight,
        })
    }

    /// Whether `pod` (with its namespace's labels) is a pod this term is about.
    pub fn matches(&self, pod: &PodInfo, ns_labels: &dyn Fn(&str) -> Option<Arc<Labels>>) -> bool {
        let ns_ok = self.namespaces.contains(&pod.namespace)
            || self
                .namespace_selector
                .as_ref()
                .is_some_and(|s| ns_labels(&pod.namespace).is_some_and(|l| s.matches(&l)));
        ns_ok && self.selector.matches(&pod.labels)
    }
}

/// A label map.
pub type Labels = BTreeMap<String, String>;

/// A fast, non-cryptographic hasher (the multiply-rotate scheme of FxHash) for the short-lived
/// per-cycle maps keyed by topology labels.
#[derive(Default, Clone, Copy)]
pub struct FxHasher(u64);

impl FxHasher {
    fn add(&mut self, w: u64) {
        self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

impl std::hash::Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut b = [0u8; 8];
            b.copy_from_slice(c);
            self.add(u64::from_le_bytes(b));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut b = [0u8; 8];
            b[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(b));
        }
    }
    fn write_u8(&mut self, i: u8) {
        self.add(i as u64);
    }
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

/// A HashMap with [`FxHasher`].
pub type FastMap<K, V> = HashMap<K, V, std::hash::BuildHasherDefault<FxHasher>>;

/// A topology spread constraint, compiled.
#[derive(Debug, Clone)]
pub struct SpreadConstraint {
    /// The most the pod count may differ between domains.
    pub max_skew: i64,
    /// The label whose values are the domains.
    pub topology_key: String,
    /// Which pods count.
    pub selector: Selector,
    /// Domains assumed to exist (hard constraints only).
    pub min_domains: i64,
    /// Whether only nodes matching the pod's node affinity count (`Honor`, the default).
    pub honor_node_affinity: bool,
    /// Whether tainted nodes the pod does not tolerate are left out (`Honor`; default `Ignore`).
    pub honor_node_taints: bool,
}

impl SpreadConstraint {
    fn new(c: &TopologySpreadConstraint, pod: &Pod) -> Option<Self> {
        let mut selector = Selector::from_label_selector(c.label_selector.as_ref())?;
        let labels = pod.metadata.labels.as_ref();
        for k in c.match_label_keys.iter().flatten() {
            if let Some(v) = labels.and_then(|l| l.get(k)) {
                selector.and(Requirement::In(k.clone(), vec![v.clone()]));
            }
        }
        Some(SpreadConstraint {
            max_skew: c.max_skew.max(1) as i64,
            topology_key: c.topology_key.clone(),
            selector,
            min_domains: c.min_domains.unwrap_or(1).max(1) as i64,
            honor_node_affinity: c.node_affinity_policy.as_deref() != Some("Ignore"),
            honor_node_taints: c.node_taints_policy.as_deref() == Some("Honor"),
        })
    }

    /// A constraint from defaults (system defaults or the plugin's configured ones).
    pub fn with_selector(max_skew: i64, topology_key: &str, selector: Selector) -> Self {
        SpreadConstraint {
            max_skew,
            topology_key: topology_key.into(),
            selector,
            min_domains: 1,
            honor_node_affinity: true,
            honor_node_taints: false,
        }
    }
}

/// A host port a container asks for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPort {
    /// TCP, UDP or SCTP.
    pub protocol: String,
    /// The host IP (`0.0.0.0` for all).
    pub ip: String,
    /// The port.
    pub port: i32,
}

impl HostPort {
    /// Whether two host ports cannot both be used on one node.
    pub fn conflicts(&self, o: &HostPort) -> bool {
        self.port == o.port
            && self.protocol == o.protocol
            && (self.ip == o.ip || self.ip == "0.0.0.0" || o.ip == "0.0.0.0")
    }
}

/// A pod's `namespace/name`, the key the queue, cache and nominator use.
pub fn pod_key(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or(""),
        pod.metadata.name.as_deref().unwrap_or("")
    )
}

/// Everything the plugins read about a pod, computed once per pod change.
#[derive(Debug, Clone)]
pub struct PodInfo {
    /// The pod object.
    pub pod: Arc<Pod>,
    /// `namespace/name`.
    pub key: String,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// UID.
    pub uid: String,
    /// Labels.
    pub labels: Labels,
    /// Effective priority (`spec.priority`, 0 if unset).
    pub priority: i32,
    /// Requests for fitting.
    pub requests: Resources,
    /// Requests with the scoring defaults.
    pub non_zero: Resources,
    /// Host ports of all containers.
    pub ports: Vec<HostPort>,
    /// Tolerations.
    pub tolerations: Vec<Toleration>,
    /// nodeSelector + required node affinity.
    pub node_affinity: RequiredNodeAffinity,
    /// Preferred node affinity terms with weights.
    pub preferred_node_terms: Vec<(i64, NodeTerm)>,
    /// Required pod affinity terms.
    pub required_affinity: Vec<AffinityTerm>,
    /// Required pod anti-affinity terms.
    pub required_anti_affinity: Vec<AffinityTerm>,
    /// Preferred pod affinity terms.
    pub preferred_affinity: Vec<AffinityTerm>,
    /// Preferred pod anti-affinity terms.
    pub preferred_anti_affinity: Vec<AffinityTerm>,
    /// Hard topology spread constraints.
    pub hard_spread: Vec<SpreadConstraint>,
    /// Soft topology spread constraints.
    pub soft_spread: Vec<SpreadConstraint>,
    /// Whether the pod declares any spread constraints (else defaults apply).
    pub has_spread_constraints: bool,
    /// A spec part could not be compiled: the pod can go nowhere; the message says why.
    pub invalid: Option<String>,
    /// The node the pod is bound (or nominated) to.
    pub node_name: String,
    /// Whether the pod is being deleted.
    pub terminating: bool,
}

impl PodInfo {
    /// Compiles a pod.
    pub fn new(pod: Arc<Pod>) -> Self {
        let meta = &pod.metadata;
        let namespace = meta.namespace.clone().unwrap_or_default();
        let name = meta.name.clone().unwrap_or_default();
        let spec = pod.spec.as_ref();
        let mut invalid = None;
        let mut ports = Vec::new();
        for c in spec.iter().flat_map(|s| s.containers.iter()) {
            for p in c.ports.iter().flatten() {
                if let Some(hp) = p.host_port.filter(|p| *p > 0) {
                    ports.push(HostPort {
                        protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                        ip: p
                            .host_ip
                            .clone()
                            .filter(|s| !s.is_empty())
                            .unwrap_or_else(|| "0.0.0.0".into()),
                        port: hp,
                    });
                }
            }
        }
        let affinity = spec.and_then(|s| s.affinity.as_ref());
        let mut terms = |list: Option<&Vec<PodAffinityTerm>>| -> Vec<AffinityTerm> {
            let mut out = Vec::new();
            for t in list.into_iter().flatten() {
                match AffinityTerm::new(t, &pod, 1) {
                    Some(t) => out.push(t),
                    None => invalid = Some("invalid label selector in pod affinity term".into()),
                }
            }
            out
        };
        let pa = affinity.and_then(|a| a.pod_affinity.as_ref());
        let paa = affinity.and_then(|a| a.pod_anti_affinity.as_ref());
        let required_affinity = terms(pa.and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        }));
        let required_anti_affinity = terms(paa.and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        }));
        let weighted = |list: Option<&Vec<k8s_openapi::api::core::v1::WeightedPodAffinityTerm>>| {
            list.into_iter()
                .flatten()
                .filter_map(|w| AffinityTerm::new(&w.pod_affinity_term, &pod, w.weight as i64))
                .collect::<Vec<_>>()
        };
        let preferred_affinity = weighted(pa.and_then(|a| {
            a.preferred_during_scheduling_ignored_during_execution
                .as_ref()
        }));
        let preferred_anti_affinity = weighted(paa.and_then(|a| {
            a.preferred_during_scheduling_ignored_during_execution
                .as_ref()
        }));
        let preferred_node_terms = affinity
            .and_then(|a| a.node_affinity.as_ref())
            .and_then(|a| {
                a.preferred_during_scheduling_ignored_during_execution
                    .as_ref()
            })
            .into_iter()
            .flatten()
            .filter_map(|p| Some((p.weight as i64, NodeTerm::new(&p.preference)?)))
            .collect();
        let mut hard_spread = Vec::new();
        let mut soft_spread = Vec::new();
        let constraints = spec.and_then(|s| s.topology_spread_constraints.as_ref());
        for c in constraints.into_iter().flatten() {
            match SpreadConstraint::new(c, &pod) {
                Some(sc) if c.when_unsatisfiable == "DoNotSchedule" => hard_spread.push(sc),
                Some(sc) => soft_spread.push(sc),
                None => {
                    invalid = Some("invalid label selector in topology spread constraint".into())
                }
            }
        }
        let has_spread_constraints = constraints.is_some_and(|c| !c.is_empty());
        PodInfo {
            key: pod_key(&pod),
            uid: meta.uid.clone().unwrap_or_default(),
            labels: meta.labels.clone().unwrap_or_default(),
            priority: spec.and_then(|s| s.priority).unwrap_or(0),
            requests: pod_requests(&pod, false),
            non_zero: pod_requests(&pod, true),
            tolerations: spec.and_then(|s| s.tolerations.clone()).unwrap_or_default(),
            node_affinity: RequiredNodeAffinity::of(&pod),
            node_name: spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
            terminating: meta.deletion_timestamp.is_some(),
            namespace,
            name,
            ports,
            preferred_node_terms,
            required_affinity,
            required_anti_affinity,
            preferred_affinity,
            preferred_anti_affinity,
            hard_spread,
            soft_spread,
            has_spread_constraints,
            invalid,
            pod,
        }
    }

    /// Whether the pod has any pod affinity or anti-affinity term.
    pub fn has_affinity(&self) -> bool {
        !self.required_affinity.is_empty()
            || !self.required_anti_affinity.is_empty()
            || !self.preferred_affinity.is_empty()
            || !self.preferred_anti_affinity.is_empty()
    }
}

/// Whether `t` tolerates `taint` (upstream `Toleration.ToleratesTaint`).
pub fn tolerates(t: &Toleration, taint: &Taint) -> bool {
    if let Some(e) = t.effect.as_deref().filter(|e| !e.is_empty())
        && e != taint.effect
    {
        return false;
    }
    let key = t.key.as_deref().unwrap_or("");
    if !key.is_empty() && key != taint.key {
        return false;
    }
    match t.operator.as_deref().unwrap_or("Equal") {
        "Exists" => true,
        "" | "Equal" => t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or(""),
        _ => false,
    }
}

/// The first taint (among those with an effect `filter` accepts) no toleration tolerates.
pub fn untolerated<'a>(
    taints: &'a [Taint],
    tolerations: &[Toleration],
    filter: impl Fn(&Taint) -> bool,
) -> Option<&'a Taint> {
    taints
        .iter()
        .filter(|t| filter(t))
        .find(|t| !tolerations.iter().any(|tol| tolerates(tol, t)))
}

/// A generation number no NodeInfo had before: per-node memos compare it to know whether a
/// node (or the pods on it) changed since they looked.
pub fn next_generation() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// A node and the pods on it (bound or assumed), with running totals.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    /// The node object.
    pub node: Arc<Node>,
    /// Name.
    pub name: String,
    /// Labels.
    pub labels: Labels,
    /// Taints.
    pub taints: Vec<Taint>,
    /// `spec.unschedulable`.
    pub unschedulable: bool,
    /// Allocatable resources.
    pub allocatable: Resources,
    /// Pods on the node.
    pub pods: Vec<Arc<PodInfo>>,
    /// How many of `pods` have any pod (anti-)affinity.
    pub pods_with_affinity: usize,
    /// How many of `pods` have required anti-affinity.
    pub pods_with_required_anti_affinity: usize,
    /// Sum of the pods' requests.
    pub requested: Resources,
    /// Sum of the pods' requests with scoring defaults.
    pub non_zero_requested: Resources,
    /// Host ports in use.
    pub used_ports: Vec<HostPort>,
    /// Names of the PVCs the pods use, with how many pods use each (`namespace/name`).
    pub pvc_refs: HashMap<String, usize>,
    /// The container images the node reports holding, each of their names with its size in
    /// bytes.
    pub images: HashMap<String, i64>,
    /// Changes on every change; unique across all nodes (see [`next_generation`]).
    pub generation: u64,
}

impl NodeInfo {
    /// A node with no pods.
    pub fn new(node: Arc<Node>) -> Self {
        let mut n = NodeInfo {
            node: node.clone(),
            name: String::new(),
            labels: Labels::new(),
            taints: Vec::new(),
            unschedulable: false,
            allocatable: Resources::default(),
            pods: Vec::new(),
            pods_with_affinity: 0,
            pods_with_required_anti_affinity: 0,
            requested: Resources::default(),
            non_zero_requested: Resources::default(),
            used_ports: Vec::new(),
            pvc_refs: HashMap::new(),
            images: HashMap::new(),
            generation: 0,
        };
        n.set_node(node);
        n
    }

    /// Replaces the node object (labels, taints, allocatable), keeping the pods.
    pub fn set_node(&mut self, node: Arc<Node>) {
        self.name = node.metadata.name.clone().unwrap_or_default();
        self.labels = node.metadata.labels.clone().unwrap_or_default();
        let spec = node.spec.as_ref();
        self.taints = spec.and_then(|s| s.taints.clone()).unwrap_or_default();
        self.unschedulable = spec.and_then(|s| s.unschedulable).unwrap_or(false);
        self.allocatable = Resources::from_list(
            node.status
                .as_ref()
                .and_then(|s| s.allocatable.as_ref().or(s.capacity.as_ref())),
        );
        self.images = node
            .status
            .as_ref()
            .and_then(|s| s.images.as_ref())
            .into_iter()
            .flatten()
            .flat_map(|i| {
                let size = i.size_bytes.unwrap_or(0);
                i.names.iter().flatten().map(move |n| (n.clone(), size))
            })
            .collect();
        self.node = node;
        self.generation = next_generation();
    }

    /// Adds a pod's usage.
    pub fn add_pod(&mut self, p: Arc<PodInfo>) {
        self.requested.add(&p.requests);
        self.non_zero_requested.add(&p.non_zero);
        self.used_ports.extend(p.ports.iter().cloned());
        if p.has_affinity() {
            self.pods_with_affinity += 1;
        }
        if !p.required_anti_affinity.is_empty() {
            self.pods_with_required_anti_affinity += 1;
        }
        for c in pvc_names(&p.pod) {
            *self
                .pvc_refs
                .entry(format!("{}/{c}", p.namespace))
                .or_default() += 1;
        }
        self.pods.push(p);
        self.generation = next_generation();
    }

    /// Removes a pod by key; whether it was there.
    pub fn remove_pod(&mut self, key: &str) -> bool {
        let Some(i) = self.pods.iter().position(|p| p.key == key) else {
            return false;
        };
        let p = self.pods.swap_remove(i);
        self.requested.sub(&p.requests);
        self.non_zero_requested.sub(&p.non_zero);
        for hp in &p.ports {
            if let Some(j) = self.used_ports.iter().position(|u| u == hp) {
                self.used_ports.swap_remove(j);
            }
        }
        if p.has_affinity() {
            self.pods_with_affinity -= 1;
        }
        if !p.required_anti_affinity.is_empty() {
            self.pods_with_required_anti_affinity -= 1;
        }
        for c in pvc_names(&p.pod) {
            let k = format!("{}/{c}", p.namespace);
            if let Some(n) = self.pvc_refs.get_mut(&k) {
                *n -= 1;
                if *n == 0 {
                    self.pvc_refs.remove(&k);
                }
            }
        }
        self.generation = next_generation();
        true
    }
}

/// Trims from a pod what scheduling never reads, before the scheduler's informer keeps it
/// (about half of a running pod's memory): containers keep their name, requests and limits,
/// ports and restart policy (a sidecar's requests count differently); volumes only the kinds
/// plugins look at (claims, and the disks VolumeRestrictions compares); the status only its
/// phase, start time, nominated node and PodScheduled condition; the annotations go. The API's
/// object is untouched: the scheduler writes bindings, status patches and deletes, never the
/// pod it cached.
pub fn trim_pod(pod: &mut Pod) {
    pod.metadata.annotations = None;
    keelson_client::trim::containers(pod);
    keelson_client::trim::volumes(pod);
    if let Some(st) = pod.status.as_mut() {
        if let Some(cs) = st.conditions.as_mut() {
            cs.retain(|c| c.type_ == "PodScheduled");
        }
        st.container_statuses = None;
        st.init_container_statuses = None;
        st.ephemeral_container_statuses = None;
        st.pod_ips = None;
        st.host_ips = None;
        st.message = None;
        st.resize = None;
        st.resource_claim_statuses = None;
    }
}

/// The PVC names a pod's volumes use.
pub fn pvc_names(pod: &Pod) -> impl Iterator<Item = &str> {
    pod.spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .filter_map(|v| {
            v.persistent_volume_claim
                .as_ref()
                .map(|c| c.claim_name.as_str())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        assert_eq!(parse_quantity("100m", 1000), Some(100));
        assert_eq!(parse_quantity("1", 1000), Some(1000));
        assert_eq!(parse_quantity("1.5", 1000), Some(1500));
        assert_eq!(parse_quantity("0.1", 1000), Some(100));
        assert_eq!(parse_quantity("1Gi", 1), Some(1 << 30));
        assert_eq!(parse_quantity("1.5Ki", 1), Some(1536));
        assert_eq!(parse_quantity("128M", 1), Some(128_000_000));
        assert_eq!(parse_quantity("2e3", 1), Some(2000));
        assert_eq!(parse_quantity("1n", 1000), Some(1), "rounded up");
        assert_eq!(parse_quantity("abc", 1), None);
        assert_eq!(parse_quantity("1Zi", 1), None);
        assert_eq!(parse_quantity("", 1), None);
    }

    #[test]
    fn a_trimmed_pod_schedules_as_the_whole_one() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u", "labels": {"app": "a"},
                "annotations": {"note": "x".repeat(1000)}},
            "spec": {
                "nodeName": "n1", "priority": 5, "schedulerName": "default-scheduler",
                "nodeSelector": {"disk": "ssd"},
                "tolerations": [{"key": "k", "operator": "Exists"}],
                "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "zone",
                    "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": "a"}}}],
                "initContainers": [{"name": "side", "image": "i", "restartPolicy": "Always",
                    "resources": {"requests": {"cpu": "100m"}}}],
                "containers": [{"name": "c", "image": "nginx", "command": ["run"],
                    "env": [{"name": "A", "value": "x".repeat(500)}],
                    "ports": [{"containerPort": 80, "hostPort": 8080}],
                    "resources": {"requests": {"cpu": "1", "memory": "1Gi"}},
                    "volumeMounts": [{"name": "token", "mountPath": "/t"}],
                    "readinessProbe": {"exec": {"command": ["true"]}}}],
                "volumes": [
                    {"name": "token", "projected": {"sources": [{"serviceAccountToken": {"path": "t"}}]}},
                    {"name": "data", "persistentVolumeClaim": {"claimName": "claim"}},
                    {"name": "disk", "gcePersistentDisk": {"pdName": "pd"}},
                ],
            },
            "status": {"phase": "Running", "nominatedNodeName": "n1",
                "startTime": "2026-01-01T00:00:00Z", "podIP": "10.0.0.1",
                "conditions": [
                    {"type": "PodScheduled", "status": "True"},
                    {"type": "Ready", "status": "True"},
                ],
                "containerStatuses": [{"name": "c", "image": "nginx", "imageID": "", "ready": true,
                    "restartCount": 0}]},
        }))
        .unwrap();
        let mut trimmed = pod.clone();
        trim_pod(&mut trimmed);
        let (whole, small) = (PodInfo::new(Arc::new(pod)), PodInfo::new(Arc::new(trimmed)));
        assert_eq!(small.requests, whole.requests);
        assert_eq!(small.non_zero, whole.non_zero);
        assert_eq!(small.ports, whole.ports);
        assert_eq!(small.labels, whole.labels);
        assert_eq!(small.priority, whole.priority);
        assert_eq!(small.tolerations, whole.tolerations);
        assert_eq!(small.hard_spread.len(), 1);
        assert_eq!(pvc_names(&small.pod).collect::<Vec<_>>(), ["claim"]);
        let spec = small.pod.spec.as_ref().unwrap();
        let volumes: Vec<&str> = spec
            .volumes
            .iter()
            .flatten()
            .map(|v| v.name.as_str())
            .collect();
        assert_eq!(volumes, ["data", "disk"]);
        let c = &spec.containers[0];
        assert!(c.env.is_none() && c.image.is_none() && c.readiness_probe.is_none());
        assert!(c.volume_mounts.is_none());
        assert_eq!(
            spec.node_selector,
            whole.pod.spec.as_ref().unwrap().node_selector
        );
        let st = small.pod.status.as_ref().unwrap();
        assert_eq!(st.phase.as_deref(), Some("Running"));
        assert_eq!(st.nominated_node_name.as_deref(), Some("n1"));
        assert!(st.start_time.is_some());
        let kept: Vec<&str> = st
            .conditions
            .iter()
            .flatten()
            .map(|c| c.type_.as_str())
            .collect();
        assert_eq!(kept, ["PodScheduled"]);
        assert!(st.container_statuses.is_none());
        assert!(small.pod.metadata.annotations.is_none());
    }

    #[test]
    fn pod_requests_with_init_and_sidecars() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p"},
            "spec": {
                "initContainers": [
                    {"name": "i1", "resources": {"requests": {"cpu": "2"}}},
                    {"name": "side", "restartPolicy": "Always", "resources": {"requests": {"cpu": "100m", "memory": "1Mi"}}},
                ],
                "containers": [
                    {"name": "a", "resources": {"requests": {"cpu": "500m"}}},
                    {"name": "b"},
                ],
                "overhead": {"cpu": "10m"}
            }
        }))
        .unwrap();
        let r = pod_requests(&pod, false);
        // max(app 500m + sidecar 100m, init 2000m) + 10m overhead
        assert_eq!(r.milli_cpu, 2010);
        assert_eq!(r.memory, 1 << 20);
        assert_eq!(r.pods, 1);
        let nz = pod_requests(&pod, true);
        // app: 500m + 100m default + sidecar 100m = 700m < init 2000m (+ sidecar? no: before it)
        assert_eq!(nz.milli_cpu, 2010);
        assert_eq!(nz.memory, DEFAULT_MEMORY * 2 + (1 << 20));
    }

    #[test]
    fn selectors_and_tolerations() {
        let s = Selector::from_label_selector(Some(&LabelSelector {
            match_labels: Some(BTreeMap::from([("app".into(), "web".into())])),
            match_expressions: Some(vec![
                k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement {
                    key: "tier".into(),
                    operator: "NotIn".into(),
                    values: Some(vec!["db".into()]),
                },
            ]),
        }))
        .unwrap();
        let l = |v: &[(&str, &str)]| -> Labels {
            v.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect()
        };
        assert!(s.matches(&l(&[("app", "web")])));
        assert!(!s.matches(&l(&[("app", "web"), ("tier", "db")])));
        assert!(!Selector::nothing().matches(&l(&[])));
        assert!(Selector::everything().matches(&l(&[])));
        let taint = Taint {
            key: "k".into(),
            value: Some("v".into()),
            effect: "NoSchedule".into(),
            time_added: None,
        };
        let tol =
            |op: &str, key: Option<&str>, value: Option<&str>, effect: Option<&str>| Toleration {
                key: key.map(Into::into),
                operator: Some(op.into()),
                value: value.map(Into::into),
                effect: effect.map(Into::into),
                toleration_seconds: None,
            };
        assert!(tolerates(&tol("Equal", Some("k"), Some("v"), None), &taint));
        assert!(!tolerates(
            &tol("Equal", Some("k"), Some("w"), None),
            &taint
        ));
        assert!(tolerates(&tol("Exists", None, None, None), &taint));
        assert!(!tolerates(
            &tol("Exists", Some("k"), None, Some("NoExecute")),
            &taint
        ));
    }
}
