//! PodTopologySpread: hard constraints (`DoNotSchedule`) filter nodes so the pod count per
//! topology domain stays within `maxSkew` (with `minDomains`); soft ones (`ScheduleAnyway`), or
//! the default constraints for pods that declare none, score nodes with fewer matching pods
//! higher.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use kube::runtime::reflector::ObjectRef;

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
        Ok(PodTopologySpread { listers, defaults })
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
        // Counted with borrowed domain names; owned once per domain at the end.
        let mut counts: Vec<FastMap<&str, i64>> = vec![FastMap::default(); constraints.len()];
        for n in &snap.nodes {
            let values: Option<Vec<&str>> = constraints
                .iter()
                .map(|c| n.labels.get(&c.topology_key).map(String::as_str))
                .collect();
            let Some(values) = values else { continue };
            for ((c, m), v) in constraints.iter().zip(counts.iter_mut()).zip(values) {
                if !node_counts(c, pod, n) {
                    continue;
                }
                *m.entry(v).or_default() += count_matching(n, &c.selector, &pod.namespace);
            }
        }
        let domains: Vec<Domains> = constraints
            .iter()
            .zip(counts)
            .map(|(c, m)| {
                let mut d = Domains {
                    counts: m.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
                    min: 0,
                };
                d.refresh_min(c.min_domains);
                d
            })
            .collect();
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
            for n in &snap.nodes {
                if !has_all(n) {
                    continue;
                }
                for (c, m) in constraints.iter().zip(counts.iter_mut()) {
                    if c.topology_key == LABEL_HOSTNAME || !node_counts(c, pod, n) {
                        continue;
                    }
                    if let Some(slot) = m.get_mut(&n.labels[&c.topology_key]) {
                        *slot += count_matching(n, &c.selector, &pod.namespace);
                    }
                }
            }
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
