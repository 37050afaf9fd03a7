//! NodeAffinity: `nodeSelector` and required node affinity filter nodes; preferred node affinity
//! terms score them by the weights of the terms a node matches. `addedAffinity` from the
//! plugin's args applies to every pod of the profile.

use std::collections::HashSet;

use k8s_openapi::api::core::v1::{Affinity, NodeAffinity as ApiNodeAffinity, Pod, PodSpec};

use crate::framework::{CycleState, Event, Plugin, Point, Snapshot, Status};
use crate::plugins::tainttoleration::default_normalize;
use crate::types::{NodeInfo, NodeTerm, PodInfo, RequiredNodeAffinity};

/// The reason it gives.
pub const ERR_REASON: &str = "node(s) didn't match Pod's node affinity/selector";

/// The plugin.
pub struct NodeAffinity {
    added: Option<(RequiredNodeAffinity, Vec<(i64, NodeTerm)>)>,
}

impl NodeAffinity {
    /// From `NodeAffinityArgs` (`addedAffinity`).
    pub fn new(args: Option<&serde_json::Value>) -> Result<Self, String> {
        let added = match args.and_then(|a| a.get("addedAffinity")) {
            None => None,
            Some(v) => {
                let na: ApiNodeAffinity =
                    serde_json::from_value(v.clone()).map_err(|e| format!("addedAffinity: {e}"))?;
                let pod = Pod {
                    spec: Some(PodSpec {
                        affinity: Some(Affinity {
                            node_affinity: Some(na.clone()),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                };
                let preferred = na
                    .preferred_during_scheduling_ignored_during_execution
                    .iter()
                    .flatten()
                    .filter_map(|p| Some((p.weight as i64, NodeTerm::new(&p.preference)?)))
                    .collect();
                Some((RequiredNodeAffinity::of(&pod), preferred))
            }
        };
        Ok(NodeAffinity { added })
    }
}

impl Plugin for NodeAffinity {
    fn name(&self) -> &'static str {
        "NodeAffinity"
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
        &[Event::NodeAdd, Event::NodeLabel]
    }
    fn pre_filter(
        &self,
        _: &mut CycleState,
        pod: &PodInfo,
        snap: &Snapshot,
    ) -> (Option<HashSet<String>>, Status) {
        if pod.node_affinity.is_empty() && self.added.is_none() {
            return (None, Status::skip());
        }
        // A required term that pins `metadata.name In [..]` narrows the nodes at once.
        let names = pinned_names(&pod.pod);
        if let Some(names) = names {
            let present: HashSet<String> = names
                .into_iter()
                .filter(|n| snap.get(n).is_some())
                .collect();
            if present.is_empty() {
                return (None, Status::unresolvable(ERR_REASON));
            }
            return (Some(present), Status::ok());
        }
        (None, Status::ok())
    }
    fn filter(&self, _: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Status {
        if let Some((req, _)) = &self.added
            && !req.matches(&node.labels, &node.name)
        {
            return Status::unresolvable(ERR_REASON);
        }
        if pod.node_affinity.matches(&node.labels, &node.name) {
            Status::ok()
        } else {
            Status::unresolvable(ERR_REASON)
        }
    }
    fn pre_score(
        &self,
        _: &mut CycleState,
        pod: &PodInfo,
        _: &[std::sync::Arc<NodeInfo>],
        _: &Snapshot,
    ) -> Status {
        let added = self.added.as_ref().is_some_and(|(_, p)| !p.is_empty());
        if pod.preferred_node_terms.is_empty() && !added {
            Status::skip()
        } else {
            Status::ok()
        }
    }
    fn score(&self, _: &CycleState, pod: &PodInfo, node: &NodeInfo) -> i64 {
        let added = self.added.iter().flat_map(|(_, p)| p.iter());
        pod.preferred_node_terms
            .iter()
            .chain(added)
            .filter(|(_, t)| t.matches(&node.labels, &node.name))
            .map(|(w, _)| *w)
            .sum()
    }
    fn normalize(&self, _: &CycleState, _: &PodInfo, scores: &mut [i64]) {
        default_normalize(scores, false);
    }
}

/// Node names a pod's required node affinity pins it to through `matchFields` on
/// `metadata.name` (the DaemonSet controller's way), when every term does.
fn pinned_names(pod: &Pod) -> Option<Vec<String>> {
    let terms = &pod
        .spec
        .as_ref()?
        .affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?
        .node_selector_terms;
    let mut names = Vec::new();
    for t in terms {
        let f = t
            .match_fields
            .iter()
            .flatten()
            .find(|f| f.key == "metadata.name" && f.operator == "In")?;
        names.extend(f.values.iter().flatten().cloned());
    }
    Some(names)
}
