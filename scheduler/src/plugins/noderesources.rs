//! NodeResourcesFit (does the pod's request fit what is left of the node's allocatable, and how
//! full would the node be: LeastAllocated, MostAllocated or RequestedToCapacityRatio) and
//! NodeResourcesBalancedAllocation (prefer nodes whose resources stay evenly used).

use std::collections::HashSet;
use std::sync::Arc;

use crate::framework::{CycleState, Event, Plugin, Point, Snapshot, Status};
use crate::types::{MAX_NODE_SCORE, NodeInfo, PodInfo, Resources, is_scalar};

/// A resource and its weight in a score.
#[derive(Debug, Clone)]
pub struct Weighted {
    /// Resource name.
    pub name: String,
    /// Weight.
    pub weight: i64,
}

fn default_resources() -> Vec<Weighted> {
    vec![
        Weighted {
            name: "cpu".into(),
            weight: 1,
        },
        Weighted {
            name: "memory".into(),
            weight: 1,
        },
    ]
}

fn parse_resources(v: Option<&serde_json::Value>, field: &str) -> Result<Vec<Weighted>, String> {
    let Some(list) = v else {
        return Ok(default_resources());
    };
    let arr = list
        .as_array()
        .ok_or_else(|| format!("{field}: must be a list"))?;
    let mut out = Vec::new();
    for (i, r) in arr.iter().enumerate() {
        let name = r
            .get("name")
            .and_then(|n| n.as_str())
            .filter(|n| !n.is_empty())
            .ok_or_else(|| format!("{field}[{i}].name: Required value"))?;
        let weight = r.get("weight").and_then(|w| w.as_i64()).unwrap_or(1);
        if !(1..=100).contains(&weight) {
            return Err(format!(
                "{field}[{i}].weight: Invalid value: {weight}: resource weight of {name} should be in range [1, 100]"
            ));
        }
        out.push(Weighted {
            name: name.to_string(),
            weight,
        });
    }
    Ok(out)
}

/// How NodeResourcesFit scores.
#[derive(Debug, Clone)]
pub enum Strategy {
    /// Prefer the emptiest nodes.
    LeastAllocated,
    /// Prefer the fullest nodes (bin packing).
    MostAllocated,
    /// A piecewise-linear function of utilization (points: utilization 0..=100, score 0..=10).
    RequestedToCapacityRatio(Vec<(i64, i64)>),
}

/// NodeResourcesFit.
pub struct Fit {
    strategy: Strategy,
    resources: Vec<Weighted>,
    ignored: HashSet<String>,
    ignored_groups: Vec<String>,
}

/// State from PreFilter: the pod's requests.
#[derive(Clone)]
struct FitState(Resources);

const FIT: &str = "NodeResourcesFit";

impl Fit {
    /// From `NodeResourcesFitArgs`.
    pub fn new(args: Option<&serde_json::Value>) -> Result<Self, String> {
        let s = args.and_then(|a| a.get("scoringStrategy"));
        let kind = s
            .and_then(|s| s.get("type"))
            .and_then(|t| t.as_str())
            .unwrap_or("LeastAllocated");
        let resources = parse_resources(
            s.and_then(|s| s.get("resources")),
            "scoringStrategy.resources",
        )?;
        let strategy = match kind {
            "LeastAllocated" => Strategy::LeastAllocated,
            "MostAllocated" => Strategy::MostAllocated,
            "RequestedToCapacityRatio" => {
                let shape = s
                    .and_then(|s| s.pointer("/requestedToCapacityRatio/shape"))
                    .and_then(|v| v.as_array())
                    .ok_or_else(|| {
                        "scoringStrategy.requestedToCapacityRatio.shape: Required value".to_string()
                    })?;
                let mut pts = Vec::new();
                for (i, p) in shape.iter().enumerate() {
                    let u = p.get("utilization").and_then(|v| v.as_i64()).unwrap_or(0);
                    let sc = p.get("score").and_then(|v| v.as_i64()).unwrap_or(0);
                    if !(0..=100).contains(&u) {
                        return Err(format!(
                            "scoringStrategy.requestedToCapacityRatio.shape[{i}].utilization: Invalid value: {u}: not in valid range [0, 100]"
                        ));
                    }
                    if !(0..=10).contains(&sc) {
                        return Err(format!(
                            "scoringStrategy.requestedToCapacityRatio.shape[{i}].score: Invalid value: {sc}: not in valid range [0, 10]"
                        ));
                    }
                    if pts.last().is_some_and(|(lu, _)| *lu >= u) {
                        return Err(format!(
                            "scoringStrategy.requestedToCapacityRatio.shape[{i}].utilization: Invalid value: {u}: utilization values must be sorted in increasing order"
                        ));
                    }
                    pts.push((u, sc * MAX_NODE_SCORE / 10));
                }
                if pts.is_empty() {
                    return Err(
                        "scoringStrategy.requestedToCapacityRatio.shape: Required value".into(),
                    );
                }
                Strategy::RequestedToCapacityRatio(pts)
            }
            other => {
                return Err(format!(
                    "scoringStrategy.type: Unsupported value: {other:?}: supported values: \"LeastAllocated\", \"MostAllocated\", \"RequestedToCapacityRatio\""
                ));
            }
        };
        let strs = |k: &str| -> Vec<String> {
            args.and_then(|a| a.get(k))
                .and_then(|v| v.as_array())
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        };
        Ok(Fit {
            strategy,
            resources,
            ignored: strs("ignoredResources").into_iter().collect(),
            ignored_groups: strs("ignoredResourceGroups"),
        })
    }

    fn ignored(&self, name: &str) -> bool {
        self.ignored.contains(name)
            || name
                .split_once('/')
                .is_some_and(|(g, _)| self.ignored_groups.iter().any(|i| i == g))
    }

    /// The reasons the request does not fit what is left of the node (empty: it fits).
    pub fn insufficient(&self, req: &Resources, node: &NodeInfo) -> Vec<String> {
        let mut reasons = Vec::new();
        if node.pods.len() as i64 + 1 > node.allocatable.pods {
            reasons.push("Too many pods".to_string());
        }
        let free = |alloc: i64, used: i64| alloc - used;
        if req.milli_cpu > 0
            && req.milli_cpu > free(node.allocatable.milli_cpu, node.requested.milli_cpu)
        {
            reasons.push("Insufficient cpu".into());
        }
        if req.memory > 0 && req.memory > free(node.allocatable.memory, node.requested.memory) {
            reasons.push("Insufficient memory".into());
        }
        if req.ephemeral_storage > 0
            && req.ephemeral_storage
                > free(
                    node.allocatable.ephemeral_storage,
                    node.requested.ephemeral_storage,
                )
        {
            reasons.push("Insufficient ephemeral-storage".into());
        }
        for (name, v) in &req.scalar {
            if *v == 0 || (!name.starts_with("hugepages-") && self.ignored(name)) {
                continue;
            }
            if *v > free(node.allocatable.get(name), node.requested.get(name)) {
                reasons.push(format!("Insufficient {name}"));
            }
        }
        reasons
    }
}

fn least(requested: i64, capacity: i64) -> i64 {
    if capacity == 0 || requested > capacity {
        0
    } else {
        (capacity - requested) * MAX_NODE_SCORE / capacity
    }
}

fn most(requested: i64, capacity: i64) -> i64 {
    if capacity == 0 {
        0
    } else if requested > capacity {
        MAX_NODE_SCORE
    } else {
        requested * MAX_NODE_SCORE / capacity
    }
}

fn broken_linear(shape: &[(i64, i64)], x: i64) -> i64 {
    for (i, (u, s)) in shape.iter().enumerate() {
        if x <= *u {
            if i == 0 {
                return shape[0].1;
            }
            let (u0, s0) = shape[i - 1];
            return s0 + (s - s0) * (x - u0) / (u - u0);
        }
    }
    shape.last().map(|p| p.1).unwrap_or(0)
}

/// Requested (with this pod) and allocatable of one resource on a node; `non_zero` uses the
/// scoring defaults for CPU and memory.
fn usage(node: &NodeInfo, pod: &PodInfo, name: &str, non_zero: bool) -> (i64, i64) {
    let (node_req, pod_req) = if non_zero && (name == "cpu" || name == "memory") {
        (&node.non_zero_requested, &pod.non_zero)
    } else {
        (&node.requested, &pod.requests)
    };
    (
        node_req.get(name) + pod_req.get(name),
        node.allocatable.get(name),
    )
}

impl Plugin for Fit {
    fn name(&self) -> &'static str {
        FIT
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
            Event::NodeAdd,
            Event::NodeAllocatable,
            Event::AssignedPodDelete,
        ]
    }
    fn pre_filter(
        &self,
        state: &mut CycleState,
        pod: &PodInfo,
        _: &Snapshot,
    ) -> (Option<HashSet<String>>, Status) {
        state.write(FIT, FitState(pod.requests.clone()));
        (None, Status::ok())
    }
    fn filter(&self, state: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Status {
        let req = state
            .read::<FitState>(FIT)
            .map(|s| &s.0)
            .unwrap_or(&pod.requests);
        let reasons = self.insufficient(req, node);
        if reasons.is_empty() {
            Status::ok()
        } else {
            Status {
                code: crate::framework::Code::Unschedulable,
                reasons,
                plugin: FIT,
            }
        }
    }
    fn score(&self, _: &CycleState, pod: &PodInfo, node: &NodeInfo) -> i64 {
        let mut total = 0;
        let mut weights = 0;
        for r in &self.resources {
            let (req, alloc) = usage(node, pod, &r.name, true);
            if alloc == 0 {
                continue;
            }
            let s = match &self.strategy {
                Strategy::LeastAllocated => least(req, alloc),
                Strategy::MostAllocated => most(req, alloc),
                Strategy::RequestedToCapacityRatio(shape) => {
                    broken_linear(shape, (req * 100 / alloc).min(100))
                }
            };
            total += s * r.weight;
            weights += r.weight;
        }
        if weights == 0 { 0 } else { total / weights }
    }
}

/// NodeResourcesBalancedAllocation.
pub struct BalancedAllocation {
    resources: Vec<Weighted>,
}

const BALANCED: &str = "NodeResourcesBalancedAllocation";

impl BalancedAllocation {
    /// From `NodeResourcesBalancedAllocationArgs`.
    pub fn new(args: Option<&serde_json::Value>) -> Result<Self, String> {
        Ok(BalancedAllocation {
            resources: parse_resources(args.and_then(|a| a.get("resources")), "resources")?,
        })
    }
}

impl Plugin for BalancedAllocation {
    fn name(&self) -> &'static str {
        BALANCED
    }
    fn points(&self) -> &'static [Point] {
        &[Point::PreScore, Point::Score]
    }
    fn pre_score(
        &self,
        _: &mut CycleState,
        pod: &PodInfo,
        _: &[Arc<NodeInfo>],
        _: &Snapshot,
    ) -> Status {
        if self
            .resources
            .iter()
            .all(|r| pod.requests.get(&r.name) == 0)
        {
            Status::skip()
        } else {
            Status::ok()
        }
    }
    fn score(&self, _: &CycleState, pod: &PodInfo, node: &NodeInfo) -> i64 {
        let mut fractions = Vec::with_capacity(self.resources.len());
        for r in &self.resources {
            let (req, alloc) = usage(node, pod, &r.name, false);
            if alloc == 0 {
                continue;
            }
            fractions.push((req as f64 / alloc as f64).min(1.0));
        }
        let std = match fractions.len() {
            0 | 1 => 0.0,
            2 => (fractions[0] - fractions[1]).abs() / 2.0,
            n => {
                let mean = fractions.iter().sum::<f64>() / n as f64;
                (fractions.iter().map(|f| (f - mean).powi(2)).sum::<f64>() / n as f64).sqrt()
            }
        };
        ((1.0 - std) * MAX_NODE_SCORE as f64) as i64
    }
}

/// Whether a resource name is one NodeResourcesFit checks (for config validation).
pub fn known_resource(name: &str) -> bool {
    matches!(name, "cpu" | "memory" | "ephemeral-storage" | "pods") || is_scalar(name)
}
