//! NodePorts: a pod's host ports must be free on the node.

use crate::framework::{CycleState, Event, Plugin, Point, Status};
use crate::types::{NodeInfo, PodInfo};

/// The plugin.
pub struct NodePorts;

/// The reason it gives.
pub const ERR_REASON: &str = "node(s) didn't have free ports for the requested pod ports";

impl Plugin for NodePorts {
    fn name(&self) -> &'static str {
        "NodePorts"
    }
    fn points(&self) -> &'static [Point] {
        &[Point::PreFilter, Point::Filter]
    }
    fn events(&self) -> &'static [Event] {
        &[Event::NodeAdd, Event::AssignedPodDelete]
    }
    fn pre_filter(
        &self,
        _: &mut CycleState,
        pod: &PodInfo,
        _: &crate::framework::Snapshot,
    ) -> (Option<std::collections::HashSet<String>>, Status) {
        if pod.ports.is_empty() {
            (None, Status::skip())
        } else {
            (None, Status::ok())
        }
    }
    fn filter(&self, _: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Status {
        let clash = pod
            .ports
            .iter()
            .any(|p| node.used_ports.iter().any(|u| u.conflicts(p)));
        if clash {
            Status::unschedulable(ERR_REASON)
        } else {
            Status::ok()
        }
    }
}
