//! InterPodAffinity: required pod affinity and anti-affinity (the pod's own terms, and existing
//! pods' anti-affinity against it) filter nodes by topology domain; preferred terms (both ways)
//! and existing pods' required affinity score them.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::framework::{CycleState, Event, Listers, Plugin, Point, Snapshot, Status};
use crate::types::{AffinityTerm, FastMap, Labels, MAX_NODE_SCORE, NodeInfo, PodInfo, Selector};

/// Reason: the pod's required affinity is not met.
pub const ERR_AFFINITY: &str = "node(s) didn't match pod affinity rules";
/// Reason: the pod's required anti-affinity is not met.
pub const ERR_ANTI_AFFINITY: &str = "node(s) didn't match pod anti-affinity rules";
/// Reason: an existing pod's required anti-affinity rules out the pod.
pub const ERR_EXISTING_ANTI_AFFINITY: &str =
    "node(s) didn't satisfy existing pods anti-affinity rules";

const NAME: &str = "InterPodAffinity";
const SCORE_KEY: &str = "InterPodAffinity/score";

/// The plugin.
pub struct InterPodAffinity {
    listers: Listers,
    hard_pod_affinity_weight: i64,
    ignore_preferred_terms_of_existing_pods: bool,
    memo: Mutex<Vec<Memo>>,
}

/// Per-node counts for one set of required terms, kept across cycles (pods of one workload
/// share their terms): a node is recounted only when its generation changed, so a cycle reads
/// the snapshot's dense generations instead of every pod in the cluster.
struct Memo {
    affinity_terms: Vec<Resolved>,
    anti_terms: Vec<Resolved>,
    /// The distinct topology keys of the terms.
    keys: Vec<String>,
    /// Per key: domain names by id, and ids by name.
    domains: Vec<(Vec<String>, FastMap<String, u32>)>,
    slots: Vec<Slot>,
}

#[derive(Clone, Default)]
struct Slot {
    generation: u64,
    /// Pods matching every affinity term.
    affinity: i64,
    /// Pods matching each anti-affinity term.
    anti: Vec<i64>,
    /// The node's domain per key.
    domains: Vec<Option<u32>>,
    /// Whether some pod on the node has required anti-affinity (checked against each
    /// incoming pod, so not memoized).
    has_required_anti: bool,
}

/// How many term sets the memo keeps.
const MEMO_SLOTS: usize = 8;

impl Memo {
    fn key_index(&self, key: &str) -> usize {
        self.keys.iter().position(|k| k == key).unwrap_or(0)
    }

    fn refresh(&mut self, snap: &Snapshot) {
        self.slots.resize(snap.nodes.len(), Slot::default());
        for (i, g) in snap.generations.iter().enumerate() {
            if self.slots[i].generation == *g {
                continue;
            }
            let n = &snap.nodes[i];
            let affinity = if self.affinity_terms.is_empty() {
                0
            } else {
                n.pods
                    .iter()
                    .filter(|p| self.affinity_terms.iter().all(|t| t.matches(p)))
                    .count() as i64
            };
            let anti = self
                .anti_terms
                .iter()
                .map(|t| n.pods.iter().filter(|p| t.matches(p)).count() as i64)
                .collect();
            let mut domains = Vec::with_capacity(self.keys.len());
            for (k, key) in self.keys.iter().enumerate() {
                domains.push(n.labels.get(key).map(|v| {
                    let (names, ids) = &mut self.domains[k];
                    if let Some(id) = ids.get(v) {
                        return *id;
                    }
                    names.push(v.clone());
                    ids.insert(v.clone(), names.len() as u32 - 1);
                    names.len() as u32 - 1
                }));
            }
            self.slots[i] = Slot {
                generation: *g,
                affinity,
                anti,
                domains,
                has_required_anti: n.pods_with_required_anti_affinity > 0,
            };
        }
    }
}

impl InterPodAffinity {
    /// From `InterPodAffinityArgs`.
    pub fn new(args: Option<&serde_json::Value>, listers: Listers) -> Result<Self, String> {
        let w = args
            .and_then(|a| a.get("hardPodAffinityWeight"))
            .map(|v| {
                v.as_i64()
                    .ok_or("hardPodAffinityWeight: must be an integer")
            })
            .transpose()?
            .unwrap_or(1);
        if !(0..=100).contains(&w) {
            return Err(format!(
                "hardPodAffinityWeight: Invalid value: {w}: not in valid range [0, 100]"
            ));
        }
        Ok(InterPodAffinity {
            listers,
            hard_pod_affinity_weight: w,
            ignore_preferred_terms_of_existing_pods: args
                .and_then(|a| a.get("ignorePreferredTermsOfExistingPods"))
                .and_then(|v| v.as_bool())
                .unwrap_or(false),
            memo: Mutex::new(Vec::new()),
        })
    }
}

/// A term with its namespace selector resolved to names.
#[derive(Clone, Debug, PartialEq)]
struct Resolved {
    selector: Selector,
    /// Sorted, for binary search (usually one or two names).
    namespaces: Vec<String>,
    all_namespaces: bool,
    topology_key: String,
    weight: i64,
}

impl Resolved {
    fn new(t: &AffinityTerm, listers: &Listers) -> Self {
        let mut namespaces = t.namespaces.clone();
        let mut all_namespaces = false;
        if let Some(sel) = &t.namespace_selector {
            if *sel == Selector::everything() {
                all_namespaces = true;
            } else {
                for ns in listers.namespaces.state() {
                    if sel.matches(ns.metadata.labels.as_ref().unwrap_or(&Labels::new())) {
                        namespaces.insert(ns.metadata.name.clone().unwrap_or_default());
                    }
                }
            }
        }
        let mut namespaces: Vec<String> = namespaces.into_iter().collect();
        namespaces.sort();
        Resolved {
            selector: t.selector.clone(),
            namespaces,
            all_namespaces,
            topology_key: t.topology_key.clone(),
            weight: t.weight,
        }
    }

    fn matches(&self, p: &PodInfo) -> bool {
        (self.all_namespaces || self.namespaces.binary_search(&p.namespace).is_ok())
            && self.selector.matches(&p.labels)
    }
}

/// topology key -> value -> count.
type Nested = FastMap<String, FastMap<String, i64>>;

#[derive(Clone, Default)]
struct FilterState {
    affinity_terms: Vec<Resolved>,
    anti_terms: Vec<Resolved>,
    /// Domains where an existing pod's required anti-affinity matches the incoming pod.
    existing_anti: Nested,
    /// Domains with pods matching all of the pod's required affinity terms.
    affinity: Nested,
    /// Domains with pods matching one of the pod's required anti-affinity terms.
    anti: Nested,
}

/// Whether an existing pod's term (resolved against the incoming pod's namespace labels)
/// matches the incoming pod.
fn term_matches_incoming(t: &AffinityTerm, incoming: &PodInfo, ns_labels: Option<&Labels>) -> bool {
    let ns_ok = t.namespaces.contains(&incoming.namespace)
        || t.namespace_selector
            .as_ref()
            .is_some_and(|s| ns_labels.is_some_and(|l| s.matches(l)));
    ns_ok && t.selector.matches(&incoming.labels)
}

#[derive(Clone, Copy)]
enum Which {
    ExistingAnti,
    Affinity,
    Anti,
}

/// Counts per topology pair, keyed by borrowed names while a PreFilter pass runs.
#[derive(Default)]
struct Tally<'a> {
    existing_anti: FastMap<(&'a str, &'a str), i64>,
    affinity: FastMap<(&'a str, &'a str), i64>,
    anti: FastMap<(&'a str, &'a str), i64>,
}

impl<'a> Tally<'a> {
    /// Counts what `existing` (on `node`) contributes, `delta` times.
    fn add(
        &mut self,
        st: &'a FilterState,
        pod: &PodInfo,
        ns_labels: Option<&Labels>,
        existing: &'a PodInfo,
        node: &'a NodeInfo,
        delta: i64,
    ) {
        self.add_existing_anti(pod, ns_labels, existing, node, delta);
        if !st.affinity_terms.is_empty() && st.affinity_terms.iter().all(|t| t.matches(existing)) {
            self.add_affinity(st, node, delta);
        }
        for t in &st.anti_terms {
            if t.matches(existing) {
                self.bump(Which::Anti, &t.topology_key, node, delta);
            }
        }
    }

    fn add_existing_anti(
        &mut self,
        pod: &PodInfo,
        ns_labels: Option<&Labels>,
        existing: &'a PodInfo,
        node: &'a NodeInfo,
        delta: i64,
    ) {
        for t in &existing.required_anti_affinity {
            if term_matches_incoming(t, pod, ns_labels) {
                self.bump(Which::ExistingAnti, &t.topology_key, node, delta);
            }
        }
    }

    fn add_affinity(&mut self, st: &'a FilterState, node: &'a NodeInfo, n: i64) {
        for t in &st.affinity_terms {
            self.bump(Which::Affinity, &t.topology_key, node, n);
        }
    }

    fn bump(&mut self, which: Which, key: &'a str, node: &'a NodeInfo, n: i64) {
        let Some(v) = node.labels.get(key) else {
            return;
        };
        let m = match which {
            Which::ExistingAnti => &mut self.existing_anti,
            Which::Affinity => &mut self.affinity,
            Which::Anti => &mut self.anti,
        };
        *m.entry((key, v.as_str())).or_default() += n;
    }

    /// The counts as owned maps.
    fn owned(self) -> [Nested; 3] {
        let own = |m: FastMap<(&str, &str), i64>| {
            let mut out = Nested::default();
            for ((k, v), c) in m {
                *out.entry(k.to_string())
                    .or_default()
                    .entry(v.to_string())
                    .or_default() += c;
            }
            out
        };
        [own(self.existing_anti), own(self.affinity), own(self.anti)]
    }
}

impl FilterState {
    fn update(
        &mut self,
        pod: &PodInfo,
        ns_labels: Option<&Labels>,
        existing: &PodInfo,
        node: &NodeInfo,
        delta: i64,
    ) {
        let [e, a, n] = {
            let mut t = Tally::default();
            t.add(self, pod, ns_labels, existing, node, delta);
            t.owned()
        };
        for (m, add) in [
            (&mut self.existing_anti, e),
            (&mut self.affinity, a),
            (&mut self.anti, n),
        ] {
            for (k, vals) in add {
                let e = m.entry(k).or_default();
                for (v, c) in vals {
                    *e.entry(v).or_default() += c;
                }
            }
        }
    }
}

#[derive(Clone, Default)]
struct ScoreState {
    /// topology key -> value -> score.
    scores: HashMap<String, HashMap<String, i64>>,
}

impl InterPodAffinity {
    /// PreFilter's counts through the memo (a pod without required terms of its own shares
    /// the memo of the empty term set, which still says where pods with anti-affinity are).
    fn tally_with_memo(
        &self,
        st: &FilterState,
        pod: &PodInfo,
        ns_labels: Option<&Labels>,
        snap: &Snapshot,
    ) -> [Nested; 3] {
        let mut memos = self.memo.lock();
        let pos = memos
            .iter()
            .position(|m| m.affinity_terms == st.affinity_terms && m.anti_terms == st.anti_terms);
        let mut m = match pos {
            Some(i) => memos.remove(i),
            None => {
                let mut keys: Vec<String> = Vec::new();
                for t in st.affinity_terms.iter().chain(&st.anti_terms) {
                    if !keys.contains(&t.topology_key) {
                        keys.push(t.topology_key.clone());
                    }
                }
                Memo {
                    affinity_terms: st.affinity_terms.clone(),
                    anti_terms: st.anti_terms.clone(),
                    domains: vec![(Vec::new(), FastMap::default()); keys.len()],
                    keys,
                    slots: Vec::new(),
                }
            }
        };
        m.refresh(snap);
        let out = {
            let mut tally = Tally::default();
            for (i, slot) in m.slots.iter().enumerate() {
                if slot.has_required_anti {
                    let node = &snap.nodes[i];
                    for p in &node.pods {
                        if !p.required_anti_affinity.is_empty() {
                            tally.add_existing_anti(pod, ns_labels, p, node, 1);
                        }
                    }
                }
                let at = |key: &str| {
                    let k = m.key_index(key);
                    slot.domains[k]
                        .map(|d| (m.keys[k].as_str(), m.domains[k].0[d as usize].as_str()))
                };
                if slot.affinity > 0 {
                    for t in &st.affinity_terms {
                        if let Some(pair) = at(&t.topology_key) {
                            *tally.affinity.entry(pair).or_default() += slot.affinity;
                        }
                    }
                }
                for (t, n) in st.anti_terms.iter().zip(&slot.anti) {
                    if *n > 0
                        && let Some(pair) = at(&t.topology_key)
                    {
                        *tally.anti.entry(pair).or_default() += n;
                    }
                }
            }
            tally.owned()
        };
        memos.insert(0, m);
        memos.truncate(MEMO_SLOTS);
        out
    }
}

impl Plugin for InterPodAffinity {
    fn name(&self) -> &'static str {
        NAME
    }
    fn points(&self) -> &'static [Point] {
        &[
            Point::PreFilter,
            Point::Filter,
            Point::PreScore,
            Point::Score,
        ]
    }
    fn events(&self) -> &'static [Event] {
        &[
            Event::AssignedPodAdd,
            Event::AssignedPodUpdate,
            Event::AssignedPodDelete,
            Event::NodeAdd,
            Event::NodeLabel,
            Event::NamespaceUpdate,
        ]
    }
    fn pre_filter(
        &self,
        state: &mut CycleState,
        pod: &PodInfo,
        snap: &Snapshot,
    ) -> (Option<HashSet<String>>, Status) {
        let any_existing_anti = snap.pods_with_required_anti_affinity > 0;
        if pod.required_affinity.is_empty()
            && pod.required_anti_affinity.is_empty()
            && !any_existing_anti
        {
            return (None, Status::skip());
        }
        let mut st = FilterState {
            affinity_terms: pod
                .required_affinity
                .iter()
                .map(|t| Resolved::new(t, &self.listers))
                .collect(),
            anti_terms: pod
                .required_anti_affinity
                .iter()
                .map(|t| Resolved::new(t, &self.listers))
                .collect(),
            ..Default::default()
        };
        let ns_labels = self.listers.namespace_labels(&pod.namespace);
        let [e, a, n] = self.tally_with_memo(&st, pod, ns_labels.as_deref(), snap);
        st.existing_anti = e;
        st.affinity = a;
        st.anti = n;
        state.write(NAME, st);
        (None, Status::ok())
    }
    fn add_pod(&self, state: &mut CycleState, pod: &PodInfo, added: &PodInfo, node: &NodeInfo) {
        let ns = self.listers.namespace_labels(&pod.namespace);
        if let Some(st) = state.read_mut::<FilterState>(NAME) {
            st.update(pod, ns.as_deref(), added, node, 1);
        }
    }
    fn remove_pod(
        &self,
        state: &mut CycleState,
        pod: &PodInfo,
        removed: &PodInfo,
        node: &NodeInfo,
    ) {
        let ns = self.listers.namespace_labels(&pod.namespace);
        if let Some(st) = state.read_mut::<FilterState>(NAME) {
            st.update(pod, ns.as_deref(), removed, node, -1);
        }
    }
    fn filter(&self, state: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Status {
        let Some(st) = state.read::<FilterState>(NAME) else {
            return Status::ok();
        };
        let at = |m: &Nested, k: &str| -> i64 {
            node.labels
                .get(k)
                .and_then(|v| m.get(k)?.get(v))
                .copied()
                .unwrap_or(0)
        };
        // The pod's own affinity.
        if !st.affinity_terms.is_empty() {
            let mut all_exist = true;
            for t in &st.affinity_terms {
                if !node.labels.contains_key(&t.topology_key) {
                    return Status::unresolvable(ERR_AFFINITY);
                }
                if at(&st.affinity, &t.topology_key) <= 0 {
                    all_exist = false;
                }
            }
            if !all_exist {
                // The first pod of a group that is affine to itself may go anywhere.
                let none_anywhere = st
                    .affinity
                    .values()
                    .flat_map(|m| m.values())
                    .all(|c| *c <= 0);
                if !(none_anywhere && st.affinity_terms.iter().all(|t| t.matches(pod))) {
                    return Status::unresolvable(ERR_AFFINITY);
                }
            }
        }
        // The pod's own anti-affinity.
        if st
            .anti_terms
            .iter()
            .any(|t| at(&st.anti, &t.topology_key) > 0)
        {
            return Status::unschedulable(ERR_ANTI_AFFINITY);
        }
        // Existing pods' anti-affinity.
        if st.existing_anti.iter().any(|(k, vals)| {
            node.labels
                .get(k)
                .and_then(|v| vals.get(v))
                .is_some_and(|c| *c > 0)
        }) {
            return Status::unschedulable(ERR_EXISTING_ANTI_AFFINITY);
        }
        Status::ok()
    }
    fn pre_score(
        &self,
        state: &mut CycleState,
        pod: &PodInfo,
        _nodes: &[Arc<NodeInfo>],
        snap: &Snapshot,
    ) -> Status {
        let has_preferred =
            !pod.preferred_affinity.is_empty() || !pod.preferred_anti_affinity.is_empty();
        let any_existing = snap.pods_with_affinity > 0;
        if !has_preferred && !any_existing {
            return Status::skip();
        }
        let aff: Vec<Resolved> = pod
            .preferred_affinity
            .iter()
            .map(|t| Resolved::new(t, &self.listers))
            .collect();
        let anti: Vec<Resolved> = pod
            .preferred_anti_affinity
            .iter()
            .map(|t| Resolved::new(t, &self.listers))
            .collect();
        let ns_labels = self.listers.namespace_labels(&pod.namespace);
        let mut st = ScoreState::default();
        let mut add = |k: &str, n: &NodeInfo, w: i64| {
            if w == 0 {
                return;
            }
            if let Some(v) = n.labels.get(k) {
                *st.scores
                    .entry(k.to_string())
                    .or_default()
                    .entry(v.clone())
                    .or_default() += w;
            }
        };
        for n in snap.nodes.iter() {
            if !has_preferred && n.pods_with_affinity == 0 {
                continue;
            }
            for p in &n.pods {
                for t in &aff {
                    if t.matches(p) {
                        add(&t.topology_key, n, t.weight);
                    }
                }
                for t in &anti {
                    if t.matches(p) {
                        add(&t.topology_key, n, -t.weight);
                    }
                }
                if !p.has_affinity() {
                    continue;
                }
                for t in &p.required_affinity {
                    if term_matches_incoming(t, pod, ns_labels.as_deref()) {
                        add(&t.topology_key, n, self.hard_pod_affinity_weight);
                    }
                }
                if self.ignore_preferred_terms_of_existing_pods {
                    continue;
                }
                for t in &p.preferred_affinity {
                    if term_matches_incoming(t, pod, ns_labels.as_deref()) {
                        add(&t.topology_key, n, t.weight);
                    }
                }
                for t in &p.preferred_anti_affinity {
                    if term_matches_incoming(t, pod, ns_labels.as_deref()) {
                        add(&t.topology_key, n, -t.weight);
                    }
                }
            }
        }
        if st.scores.is_empty() {
            return Status::skip();
        }
        state.write(SCORE_KEY, st);
        Status::ok()
    }
    fn score(&self, state: &CycleState, _pod: &PodInfo, node: &NodeInfo) -> i64 {
        let Some(st) = state.read::<ScoreState>(SCORE_KEY) else {
            return 0;
        };
        st.scores
            .iter()
            .filter_map(|(k, vals)| node.labels.get(k).and_then(|v| vals.get(v)))
            .sum()
    }
    fn normalize(&self, _: &CycleState, _: &PodInfo, scores: &mut [i64]) {
        let max = scores.iter().copied().fold(0, i64::max);
        let min = scores.iter().copied().fold(0, i64::min);
        let diff = max - min;
        for s in scores.iter_mut() {
            *s = if diff > 0 {
                (MAX_NODE_SCORE as f64 * ((*s - min) as f64 / diff as f64)) as i64
            } else {
                0
            };
        }
    }
}
