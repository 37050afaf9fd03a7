//! NodeName: a pod that names a node fits only that node.

use crate::framework::{CycleState, Event, Plugin, Point, Status};
use crate::types::{NodeInfo, PodInfo};

/// The plugin.
pub struct NodeName;

/// The reason it gives.
pub const ERR_REASON: &str = "node(s) didn't match the requested node name";

impl Plugin for NodeName {
    fn name(&self) -> &'static str {
        "NodeName"
    }
    fn points(&self) -> &'static [Point] {
        &[Point::Filter]
    }
    fn events(&self) -> &'static [Event] {
        &[Event::NodeAdd]
    }
    fn filter(&self, _: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Status {
        let wanted = pod
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .unwrap_or("");
        if wanted.is_empty() || wanted == node.name {
            Status::ok()
        } else {
            Status::unresolvable(ERR_REASON)
        }
    }
}
