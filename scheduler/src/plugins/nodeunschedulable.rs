//! NodeUnschedulable: cordoned nodes (`spec.unschedulable`) take only pods that tolerate the
//! `node.kubernetes.io/unschedulable:NoSchedule` taint.

use k8s_openapi::api::core::v1::Taint;

use crate::framework::{CycleState, Event, Plugin, Point, Status};
use crate::types::{NodeInfo, PodInfo, tolerates};

/// The plugin.
pub struct NodeUnschedulable;

/// The reason it gives.
pub const ERR_REASON: &str = "node(s) were unschedulable";

impl Plugin for NodeUnschedulable {
    fn name(&self) -> &'static str {
        "NodeUnschedulable"
    }
    fn points(&self) -> &'static [Point] {
        &[Point::Filter]
    }
    fn events(&self) -> &'static [Event] {
        &[Event::NodeAdd, Event::NodeSchedulable, Event::NodeTaint]
    }
    fn filter(&self, _: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Status {
        if !node.unschedulable {
            return Status::ok();
        }
        let taint = Taint {
            key: "node.kubernetes.io/unschedulable".into(),
            effect: "NoSchedule".into(),
            value: None,
            time_added: None,
        };
        if pod.tolerations.iter().any(|t| tolerates(t, &taint)) {
            Status::ok()
        } else {
            Status::unresolvable(ERR_REASON)
        }
    }
}
