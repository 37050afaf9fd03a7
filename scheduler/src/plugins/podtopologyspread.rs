//! PodTopologySpread: hard constraints (`DoNotSchedule`) filter nodes so the pod count per
//! topology domain stays within `maxSkew` (with `minDomains`); soft ones (`ScheduleAnyway`), or
//! the default constraints for pods that declare none, score nodes with fewer matching pods
//! higher.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use kube::runtime::reflector::ObjectRef;
use parking_lot::Mutex;

use crate::framework::{CycleState, Event, Listers, Plugin, Point, Snapshot, Status};
use crate::types::{
    FastMap, LABEL_HOSTNAME, MAX_NODE_SCORE, NodeInfo, PodInfo, Selector, SpreadConstraint,
    untolerated,
};

/// Reason: the skew would exceed maxSkew.
pub const ERR_SKEW: &str = "node(s) didn't match pod topology spread constraints";
/// Reason: the node lacks a topology label.
pub const ERR_MISSING_LABEL: &str =
    "node(s) didn't match pod topology spread constraints (missing required label)";

const NAME: &str = "PodTopologySpread";
const SCORE_KEY: &str = "PodTopologySpread/score";
/// Score of a node that is left out of spreading (lacks a topology label).
const IGNORED: i64 = i64::MIN;

/// The plugin.
pub struct PodTopologySpread {
    listers: Listers,
    /// (maxSkew, topologyKey) of the default soft constraints.
    defaults: Vec<(i64, String)>,
    memo: Mutex<Vec<Memo>>,
}

/// What one constraint needs from every node — its domain (topology value) and how many
/// matching pods it has — kept across cycles per (namespace, selector, topology key). A node is
/// looked at again only when its generation changed, so a cycle reads the dense generation
/// array of the snapshot instead of every node's labels and pods.
struct Memo {
    namespace: String,
    selector: Selector,
    topology_key: String,
    /// Per snapshot position: (node generation, matching pods, domain id).
    slots: Vec<(u64, i64, Option<u32>)>,
    /// Domain names by id.
    domains: Vec<String>,
    domain_ids: FastMap<String, u32>,
}

impl Memo {
    fn refresh(&mut self, snap: &Snapshot) {
        self.slots.resize(snap.nodes.len(), (0, 0, None));
        for (i, g) in snap.generations.iter().enumerate() {
            if self.slots[i].0 == *g {
                continue;
            }
            let n = &snap.nodes[i];
            let domain = n.labels.get(&self.topology_key).map(|v| {
                if let Some(id) = self.domain_ids.get(v) {
                    return *id;
                }
                let id = self.domains.len() as u32;
                self.domains.push(v.clone());
                self.domain_ids.insert(v.clone(), id);
                id
            });
            self.slots[i] = (
                *g,
                count_matching(n, &self.selector, &self.namespace),
                domain,
            );
        }
    }
}

/// How many memos the plugin keeps (least recently used dropped).
const MEMO_SLOTS: usize = 8;

impl PodTopologySpread {
    /// Brings the memos of `constraints` up to date and hands them (in order) to `f`.
    fn with_memos<R>(
        &self,
        snap: &Snapshot,
        constraints: &[SpreadConstraint],
        ns: &str,
        f: impl FnOnce(&[&Memo]) -> R,
    ) -> R {
        let mut memos = self.memo.lock();
        let mut positions = Vec::with_capacity(constraints.len());
        for c in constraints {
            let found = memos.iter().position(|m| {
                m.namespace == ns && m.topology_key == c.topology_key && m.selector == c.selector
            });
            let i = match found {
                Some(i) => i,
                None => {
                    if memos.len() >= MEMO_SLOTS {
                        // Drop the least recently used one not needed now.
                        if let Some(victim) =
                            (0..memos.len()).rev().find(|i| !positions.contains(i))
                        {
                            memos.remove(victim);
                            for p in positions.iter_mut() {
                                if *p > victim {
                                    *p -= 1;
                                }
                            }
                        }
                    }
                    memos.push(Memo {
                        namespace: ns.to_string(),
                        selector: c.selector.clone(),
                        topology_key: c.topology_key.clone(),
                        slots: Vec::new(),
                        domains: Vec::new(),
                        domain_ids: FastMap::default(),
                    });
                    memos.len() - 1
                }
            };
            memos[i].refresh(snap);
            positions.push(i);
        }
        let refs: Vec<&Memo> = positions.iter().map(|i| &memos[*i]).collect();
        f(&refs)
    }
}

impl PodTopologySpread {
    /// From `PodTopologySpreadArgs` (`defaultingType` System or List, `defaultConstraints`).
    pub fn new(args: Option<&serde_json::Value>, listers: Listers) -> Result<Self, String> {
        let kind = args
            .and_then(|a| a.get("defaultingType"))
            .and_then(|v| v.as_str())
            .unwrap_or("System");
        let given = args
            .and_then(|a| a.get("defaultConstraints"))
            .and_then(|v| v.as_array());
        let defaults = match kind {
            "System" => {
                if given.is_some_and(|g| !g.is_empty()) {
                    return Err("defaultConstraints: Invalid value: when using defaultingType System, defaultConstraints must be empty".into());
                }
                vec![
                    (3, LABEL_HOSTNAME.to_string()),
                    (5, "topology.kubernetes.io/zone".to_string()),
                ]
            }
            "List" => {
                let mut out = Vec::new();
                for (i, c) in given.into_iter().flatten().enumerate() {
                    let skew = c.get("maxSkew").and_then(|v| v.as_i64()).unwrap_or(0);
                    if skew <= 0 {
                        return Err(format!(
                            "defaultConstraints[{i}].maxSkew: Invalid value: {skew}: must be greater than zero"
                        ));
                    }
                    let key = c
                        .get("topologyKey")
                        .and_then(|v| v.as_str())
                        .filter(|k| !k.is_empty())
                        .ok_or_else(|| format!("defaultConstraints[{i}].topologyKey: Required value: can not be empty"))?;
                    match c.get("whenUnsatisfiable").and_then(|v| v.as_str()) {
                        Some("ScheduleAnyway") => {}
                        other => {
                            return Err(format!(
                                "defaultConstraints[{i}].whenUnsatisfiable: Unsupported value: {other:?}: supported values: \"ScheduleAnyway\""
                            ));
                        }
                    }
                    if c.get("labelSelector").is_some() {
                        return Err(format!(
                            "defaultConstraints[{i}].labelSelector: Forbidden: constraint must not define a selector, as they deduced for each pod"
                        ));
                    }
                    out.push((skew, key.to_string()));
                }
                out
            }
            other => {
                return Err(format!(
                    "defaultingType: Unsupported value: {other:?}: supported values: \"System\", \"List\""
                ));
            }
        };
        Ok(PodTopologySpread {
            listers,
            defaults,
            memo: Mutex::new(Vec::new()),
        })
    }

    /// The default constraints for a pod without its own, selecting the pods of the same
    /// Services and controller (upstream `DefaultSelector`); none when nothing selects it.
    fn default_constraints(&self, pod: &PodInfo) -> Vec<SpreadConstraint> {
        if self.defaults.is_empty() {
            return Vec::new();
        }
        let mut sels = Vec::new();
        for svc in self.listers.services.state() {
            if svc.metadata.namespace.as_deref() != Some(pod.namespace.as_str()) {
                continue;
            }
            let s = Selector::from_map(svc.spec.as_ref().and_then(|s| s.selector.as_ref()));
            if s.matches(&pod.labels) {
                sels.push(s);
            }
        }
        let owner = pod
            .pod
            .metadata
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.controller == Some(true));
        if let Some(o) = owner {
            let s = match o.kind.as_str() {
                "ReplicaSet" => self
                    .listers
                    .replicasets
                    .get(&ObjectRef::new(&o.name).within(&pod.namespace))
                    .and_then(|r| {
                        Selector::from_label_selector(r.spec.as_ref().map(|s| &s.selector))
                    }),
                "StatefulSet" => self
                    .listers
                    .statefulsets
                    .get(&ObjectRef::new(&o.name).within(&pod.namespace))
                    .and_then(|r| {
                        Selector::from_label_selector(r.spec.as_ref().map(|s| &s.selector))
                    }),
                "ReplicationController" => self
                    .listers
                    .replication_controllers
                    .get(&ObjectRef::new(&o.name).within(&pod.namespace))
                    .map(|r| Selector::from_map(r.spec.as_ref().and_then(|s| s.selector.as_ref()))),
                _ => None,
            };
            if let Some(s) = s.filter(|s| !s.is_nothing()) {
                sels.push(s);
            }
        }
        let sel = Selector::all_of(sels);
        if sel.is_nothing() {
            return Vec::new();
        }
        self.defaults
            .iter()
            .map(|(skew, key)| SpreadConstraint::with_selector(*skew, key, sel.clone()))
            .collect()
    }
}

/// Whether a node takes part in spreading for this pod and constraint (node inclusion policies).
fn node_counts(c: &SpreadConstraint, pod: &PodInfo, node: &NodeInfo) -> bool {
    if c.honor_node_affinity && !pod.node_affinity.matches(&node.labels, &node.name) {
        return false;
    }
    if c.honor_node_taints
        && untolerated(&node.taints, &pod.tolerations, |t| {
            t.effect == "NoSchedule" || t.effect == "NoExecute"
        })
        .is_some()
    {
        return false;
    }
    true
}

fn count_matching(node: &NodeInfo, sel: &Selector, ns: &str) -> i64 {
    node.pods
        .iter()
        .filter(|p| !p.terminating && p.namespace == ns && sel.matches(&p.labels))
        .count() as i64
}

#[derive(Clone)]
struct Domains {
    counts: FastMap<String, i64>,
    min: i64,
}

impl Domains {
    fn refresh_min(&mut self, min_domains: i64) {
        self.min = if (self.counts.len() as i64) < min_domains {
            0
        } else {
            self.counts.values().copied().min().unwrap_or(0)
        };
    }
}

#[derive(Clone)]
struct FilterState {
    constraints: Vec<SpreadConstraint>,
    domains: Vec<Domains>,
}

#[derive(Clone)]
struct ScoreState {
    constraints: Vec<SpreadConstraint>,
    /// Per constraint: domain -> matching pods (hostname constraints count at score time).
    counts: Vec<HashMap<String, i64>>,
    weights: Vec<f64>,
    ignored: HashSet<String>,
}

impl Plugin for PodTopologySpread {
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
            Event::NodeTaint,
        ]
    }
    fn pre_filter(
        &self,
        state: &mut CycleState,
        pod: &PodInfo,
        snap: &Snapshot,
    ) -> (Option<HashSet<String>>, Status) {
        if pod.hard_spread.is_empty() {
            return (None, Status::skip());
        }
        let constraints = pod.hard_spread.clone();
        // Node inclusion policies only need the node itself when the pod has node affinity or
        // a constraint honours taints.
        let check_nodes =
            !pod.node_affinity.is_empty() || constraints.iter().any(|c| c.honor_node_taints);
        let domains: Vec<Domains> = self.with_memos(snap, &constraints, &pod.namespace, |memos| {
            let mut per: Vec<Vec<Option<i64>>> =
                memos.iter().map(|m| vec![None; m.domains.len()]).collect();
            for i in 0..snap.nodes.len() {
                if memos.iter().any(|m| m.slots[i].2.is_none()) {
                    continue;
                }
                for ((c, m), counts) in constraints.iter().zip(memos).zip(per.iter_mut()) {
                    if check_nodes && !node_counts(c, pod, &snap.nodes[i]) {
                        continue;
                    }
                    let (_, n, d) = m.slots[i];
                    let slot = &mut counts[d.unwrap_or(0) as usize];
                    *slot = Some(slot.unwrap_or(0) + n);
                }
            }
            constraints
                .iter()
                .zip(memos)
                .zip(per)
                .map(|((c, m), counts)| {
                    let mut d = Domains {
                        counts: counts
                            .into_iter()
                            .enumerate()
                            .filter_map(|(id, n)| Some((m.domains[id].clone(), n?)))
                            .collect(),
                        min: 0,
                    };
                    d.refresh_min(c.min_domains);
                    d
                })
                .collect()
        });
        state.write(
            NAME,
            FilterState {
                constraints,
                domains,
            },
        );
        (None, Status::ok())
    }
    fn add_pod(&self, state: &mut CycleState, pod: &PodInfo, added: &PodInfo, node: &NodeInfo) {
        update(state, pod, added, node, 1);
    }
    fn remove_pod(
        &self,
        state: &mut CycleState,
        pod: &PodInfo,
        removed: &PodInfo,
        node: &NodeInfo,
    ) {
        update(state, pod, removed, node, -1);
    }
    fn filter(&self, state: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Status {
        let Some(st) = state.read::<FilterState>(NAME) else {
            return Status::ok();
        };
        for (c, d) in st.constraints.iter().zip(&st.domains) {
            let Some(v) = node.labels.get(&c.topology_key) else {
                return Status::unresolvable(ERR_MISSING_LABEL);
            };
            let self_match = i64::from(c.selector.matches(&pod.labels));
            let count = d.counts.get(v).copied().unwrap_or(0);
            if count + self_match - d.min > c.max_skew {
                return Status::unschedulable(ERR_SKEW);
            }
        }
        Status::ok()
    }
    fn pre_score(
        &self,
        state: &mut CycleState,
        pod: &PodInfo,
        nodes: &[Arc<NodeInfo>],
        snap: &Snapshot,
    ) -> Status {
        let constraints = if pod.has_spread_constraints {
            pod.soft_spread.clone()
        } else {
            self.default_constraints(pod)
        };
        if constraints.is_empty() {
            return Status::skip();
        }
        let has_all = |n: &NodeInfo| {
            constraints
                .iter()
                .all(|c| n.labels.contains_key(&c.topology_key))
        };
        let mut counts: Vec<HashMap<String, i64>> = vec![HashMap::new(); constraints.len()];
        let mut ignored = HashSet::new();
        for n in nodes {
            if !has_all(n) {
                ignored.insert(n.name.clone());
                continue;
            }
            for (c, m) in constraints.iter().zip(counts.iter_mut()) {
                m.entry(n.labels[&c.topology_key].clone()).or_insert(0);
            }
        }
        let scored = (nodes.len() - ignored.len()) as f64;
        let weights = constraints
            .iter()
            .zip(&counts)
            .map(|(c, m)| {
                let size = if c.topology_key == LABEL_HOSTNAME {
                    scored
                } else {
                    m.len() as f64
                };
                (size + 2.0).ln()
            })
            .collect();
        let any_zonal = constraints.iter().any(|c| c.topology_key != LABEL_HOSTNAME);
        if any_zonal {
            let check_nodes =
                !pod.node_affinity.is_empty() || constraints.iter().any(|c| c.honor_node_taints);
            self.with_memos(snap, &constraints, &pod.namespace, |memos| {
                for i in 0..snap.nodes.len() {
                    if memos.iter().any(|m| m.slots[i].2.is_none()) {
                        continue;
                    }
                    for ((c, m), counts) in constraints.iter().zip(memos).zip(counts.iter_mut()) {
                        if c.topology_key == LABEL_HOSTNAME
                            || (check_nodes && !node_counts(c, pod, &snap.nodes[i]))
                        {
                            continue;
                        }
                        let (_, n, d) = m.slots[i];
                        if let Some(slot) = d.and_then(|d| counts.get_mut(&m.domains[d as usize])) {
                            *slot += n;
                        }
                    }
                }
            });
        }
        state.write(
            SCORE_KEY,
            ScoreState {
                constraints,
                counts,
                weights,
                ignored,
            },
        );
        Status::ok()
    }
    fn score(&self, state: &CycleState, pod: &PodInfo, node: &NodeInfo) -> i64 {
        let Some(st) = state.read::<ScoreState>(SCORE_KEY) else {
            return 0;
        };
        if st.ignored.contains(&node.name) {
            return IGNORED;
        }
        let mut score = 0.0;
        for (i, c) in st.constraints.iter().enumerate() {
            let Some(v) = node.labels.get(&c.topology_key) else {
                continue;
            };
            let cnt = if c.topology_key == LABEL_HOSTNAME {
                count_matching(node, &c.selector, &pod.namespace)
            } else {
                st.counts[i].get(v).copied().unwrap_or(0)
            };
            score += cnt as f64 * st.weights[i] + (c.max_skew - 1) as f64;
        }
        score.round() as i64
    }
    fn normalize(&self, _: &CycleState, _: &PodInfo, scores: &mut [i64]) {
        let valid = || scores.iter().copied().filter(|s| *s != IGNORED);
        let min = valid().min().unwrap_or(0);
        let max = valid().max().unwrap_or(0);
        for s in scores.iter_mut() {
            *s = if *s == IGNORED {
                0
            } else if max == 0 {
                MAX_NODE_SCORE
            } else {
                MAX_NODE_SCORE * (max + min - *s) / max
            };
        }
    }
}

fn update(state: &mut CycleState, pod: &PodInfo, other: &PodInfo, node: &NodeInfo, delta: i64) {
    let Some(st) = state.read_mut::<FilterState>(NAME) else {
        return;
    };
    if other.namespace != pod.namespace
        || !st
            .constraints
            .iter()
            .all(|c| node.labels.contains_key(&c.topology_key))
    {
        return;
    }
    let FilterState {
        constraints,
        domains,
    } = st;
    for (c, d) in constraints.iter().zip(domains.iter_mut()) {
        if !node_counts(c, pod, node) || !c.selector.matches(&other.labels) {
            continue;
        }
        *d.counts
            .entry(node.labels[&c.topology_key].clone())
            .or_default() += delta;
        d.refresh_min(c.min_domains);
    }
}
