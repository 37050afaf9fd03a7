//! DefaultPreemption: when no node fits, find the node where evicting the fewest and least
//! important lower-priority pods makes room (respecting PodDisruptionBudgets where possible),
//! and nominate the pod to it.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::framework::{
    Code, CycleState, Framework, Listers, NodeStatuses, Plugin, Point, PostFilterResult, Snapshot,
    Status,
};
use crate::types::{NodeInfo, PodInfo, Selector};

/// Reason for nodes where preemption cannot help.
pub const NOT_HELPFUL: &str = "Preemption is not helpful for scheduling";
/// Reason for nodes where evicting every lower-priority pod would still not be enough.
pub const NO_VICTIMS: &str = "No preemption victims found for incoming pod";

/// The plugin.
pub struct DefaultPreemption {
    listers: Listers,
    min_candidate_nodes_percentage: usize,
    min_candidate_nodes_absolute: usize,
}

impl DefaultPreemption {
    /// From `DefaultPreemptionArgs`.
    pub fn new(args: Option<&serde_json::Value>, listers: Listers) -> Result<Self, String> {
        let get = |k: &str, d: i64| -> i64 {
            args.and_then(|a| a.get(k))
                .and_then(|v| v.as_i64())
                .unwrap_or(d)
        };
        let pct = get("minCandidateNodesPercentage", 10);
        let abs = get("minCandidateNodesAbsolute", 100);
        if !(0..=100).contains(&pct) {
            return Err(format!(
                "minCandidateNodesPercentage: Invalid value: {pct}: not in valid range [0, 100]"
            ));
        }
        if abs < 0 {
            return Err(format!(
                "minCandidateNodesAbsolute: Invalid value: {abs}: not in valid range [0, inf)"
            ));
        }
        if pct == 0 && abs == 0 {
            return Err("minCandidateNodesPercentage: Invalid value: 0: cannot be zero at the same time as minCandidateNodesAbsolute".into());
        }
        Ok(DefaultPreemption {
            listers,
            min_candidate_nodes_percentage: pct as usize,
            min_candidate_nodes_absolute: abs as usize,
        })
    }

    /// PDBs as (namespace, selector, disruptions allowed, pods already disrupted).
    fn pdbs(&self) -> Vec<(String, Selector, i64, Vec<String>)> {
        self.listers
            .pdbs
            .state()
            .iter()
            .filter_map(|p| {
                let sel = Selector::from_label_selector(p.spec.as_ref()?.selector.as_ref())?;
                let status = p.status.as_ref();
                Some((
                    p.metadata.namespace.clone().unwrap_or_default(),
                    sel,
                    status.map(|s| s.disruptions_allowed as i64).unwrap_or(0),
                    status
                        .and_then(|s| s.disrupted_pods.as_ref())
                        .map(|d| d.keys().cloned().collect())
                        .unwrap_or_default(),
                ))
            })
            .collect()
    }
}

/// Victims on one node.
struct Candidate {
    node: String,
    victims: Vec<Arc<PodInfo>>,
    pdb_violations: usize,
}

fn start_time(p: &PodInfo) -> i64 {
    p.pod
        .status
        .as_ref()
        .and_then(|s| s.start_time.as_ref())
        .or(p.pod.metadata.creation_timestamp.as_ref())
        .map(|t| t.0.as_second())
        .unwrap_or(0)
}

/// Orders pods most important first: higher priority, then earlier start.
fn more_important(a: &PodInfo, b: &PodInfo) -> std::cmp::Ordering {
    b.priority
        .cmp(&a.priority)
        .then_with(|| start_time(a).cmp(&start_time(b)))
}

impl DefaultPreemption {
    #[allow(clippy::too_many_arguments)]
    fn select_victims(
        &self,
        fw: &Framework,
        state: &CycleState,
        pod: &PodInfo,
        node: &Arc<NodeInfo>,
        nominated: &[Arc<PodInfo>],
        pdbs: &[(String, Selector, i64, Vec<String>)],
    ) -> Option<(Vec<Arc<PodInfo>>, usize)> {
        let mut st = state.clone();
        let mut ni = NodeInfo::clone(node);
        let mut potential: Vec<Arc<PodInfo>> = node
            .pods
            .iter()
            .filter(|p| p.priority < pod.priority)
            .cloned()
            .collect();
        if potential.is_empty() {
            return None;
        }
        for p in &potential {
            ni.remove_pod(&p.key);
            for pl in &fw.pre_filter {
                pl.remove_pod(&mut st, pod, p, &ni);
            }
        }
        if !fw
            .run_filters_with_nominated(&st, pod, &ni, nominated)
            .is_ok()
        {
            return None;
        }
        potential.sort_by(|a, b| more_important(a, b));
        // Pods whose eviction would break a PDB are tried for a reprieve first.
        let mut allowed: Vec<i64> = pdbs.iter().map(|p| p.2).collect();
        let mut violating = Vec::new();
        let mut fine = Vec::new();
        for p in potential {
            let mut breaks = false;
            for (i, (ns, sel, _, disrupted)) in pdbs.iter().enumerate() {
                if *ns != p.namespace || !sel.matches(&p.labels) || disrupted.contains(&p.name) {
                    continue;
                }
                allowed[i] -= 1;
                if allowed[i] < 0 {
                    breaks = true;
                }
            }
            if breaks {
                violating.push(p);
            } else {
                fine.push(p);
            }
        }
        let mut victims = Vec::new();
        let mut violations = 0;
        for (list, is_violating) in [(violating, true), (fine, false)] {
            for p in list {
                ni.add_pod(p.clone());
                for pl in &fw.pre_filter {
                    pl.add_pod(&mut st, pod, &p, &ni);
                }
                let fits = fw
                    .run_filters_with_nominated(&st, pod, &ni, nominated)
                    .is_ok();
                if !fits {
                    ni.remove_pod(&p.key);
                    for pl in &fw.pre_filter {
                        pl.remove_pod(&mut st, pod, &p, &ni);
                    }
                    if is_violating {
                        violations += 1;
                    }
                    victims.push(p);
                }
            }
        }
        victims.sort_by(|a, b| more_important(a, b));
        Some((victims, violations))
    }
}

/// Upstream `pickOneNodeForPreemption`'s criteria, in order.
fn pick(mut cands: Vec<Candidate>) -> Option<Candidate> {
    cands.sort_by(|a, b| {
        let highest = |c: &Candidate| c.victims.first().map(|v| v.priority).unwrap_or(i32::MIN);
        let sum = |c: &Candidate| -> i64 {
            c.victims
                .iter()
                .map(|v| v.priority as i64 + i32::MAX as i64 + 1)
                .sum()
        };
        let earliest_of_highest = |c: &Candidate| {
            let h = highest(c);
            c.victims
                .iter()
                .filter(|v| v.priority == h)
                .map(|v| start_time(v))
                .min()
                .unwrap_or(0)
        };
        a.pdb_violations
            .cmp(&b.pdb_violations)
            .then_with(|| highest(a).cmp(&highest(b)))
            .then_with(|| sum(a).cmp(&sum(b)))
            .then_with(|| a.victims.len().cmp(&b.victims.len()))
            .then_with(|| earliest_of_highest(b).cmp(&earliest_of_highest(a)))
    });
    cands.into_iter().next()
}

fn histogram(total: usize, reasons: &BTreeMap<&str, usize>) -> String {
    let mut parts: Vec<String> = reasons.iter().map(|(r, n)| format!("{n} {r}")).collect();
    parts.sort();
    format!(
        "preemption: 0/{total} nodes are available: {}.",
        parts.join(", ")
    )
}

impl Plugin for DefaultPreemption {
    fn name(&self) -> &'static str {
        "DefaultPreemption"
    }
    fn points(&self) -> &'static [Point] {
        &[Point::PostFilter]
    }
    fn post_filter(
        &self,
        state: &CycleState,
        pod: &PodInfo,
        snap: &Snapshot,
        statuses: &NodeStatuses,
        fw: &Framework,
    ) -> (PostFilterResult, Status) {
        let spec = pod.pod.spec.as_ref();
        if spec.and_then(|s| s.preemption_policy.as_deref()) == Some("Never") {
            return (
                PostFilterResult {
                    message: "preemption: not eligible due to preemptionPolicy=Never.".into(),
                    ..Default::default()
                },
                Status::unschedulable("not eligible"),
            );
        }
        let nominated = pod
            .pod
            .status
            .as_ref()
            .and_then(|s| s.nominated_node_name.as_deref())
            .unwrap_or("");
        if let Some(n) = snap.get(nominated)
            && n.pods
                .iter()
                .any(|p| p.terminating && p.priority < pod.priority)
        {
            return (
                PostFilterResult {
                    message:
                        "preemption: not eligible due to a terminating pod on the nominated node."
                            .into(),
                    ..Default::default()
                },
                Status::unschedulable("waiting for victims to terminate"),
            );
        }
        let mut reasons: BTreeMap<&str, usize> = BTreeMap::new();
        let mut potential = Vec::new();
        for n in snap.nodes.iter() {
            match statuses.get(&n.name).map(|s| s.code) {
                Some(Code::Unschedulable) => potential.push(n.clone()),
                Some(Code::Success) | None => {}
                _ => *reasons.entry(NOT_HELPFUL).or_default() += 1,
            }
        }
        let total = snap.nodes.len();
        if potential.is_empty() {
            return (
                PostFilterResult {
                    message: histogram(total, &reasons),
                    ..Default::default()
                },
                Status::unschedulable("no candidates"),
            );
        }
        let want = (potential.len() * self.min_candidate_nodes_percentage / 100)
            .max(self.min_candidate_nodes_absolute)
            .min(potential.len());
        let offset = rand::random_range(0..potential.len());
        let pdbs = self.pdbs();
        let mut cands = Vec::new();
        for i in 0..potential.len() {
            let n = &potential[(offset + i) % potential.len()];
            match self.select_victims(fw, state, pod, n, snap.nominated_to(&n.name), &pdbs) {
                Some((victims, pdb_violations)) if !victims.is_empty() => {
                    cands.push(Candidate {
                        node: n.name.clone(),
                        victims,
                        pdb_violations,
                    });
                    if cands.len() >= want {
                        break;
                    }
                }
                _ => *reasons.entry(NO_VICTIMS).or_default() += 1,
            }
        }
        match pick(cands) {
            None => (
                PostFilterResult {
                    message: histogram(total, &reasons),
                    ..Default::default()
                },
                Status::unschedulable("no victims"),
            ),
            Some(c) => (
                PostFilterResult {
                    nominated_node: Some(c.node),
                    victims: c.victims,
                    denominated: Vec::new(),
                    message: String::new(),
                },
                Status::ok(),
            ),
        }
    }
}
