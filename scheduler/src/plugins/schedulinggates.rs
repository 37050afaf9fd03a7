//! SchedulingGates: a pod with scheduling gates waits outside the active queue until they are
//! all removed.

use crate::framework::{Plugin, Point, Status};
use crate::types::PodInfo;

/// The plugin.
pub struct SchedulingGates;

impl Plugin for SchedulingGates {
    fn name(&self) -> &'static str {
        "SchedulingGates"
    }
    fn points(&self) -> &'static [Point] {
        &[Point::PreEnqueue]
    }
    fn pre_enqueue(&self, pod: &PodInfo) -> Status {
        let gates: Vec<&str> = pod
            .pod
            .spec
            .iter()
            .flat_map(|s| s.scheduling_gates.iter().flatten())
            .map(|g| g.name.as_str())
            .collect();
        if gates.is_empty() {
            Status::ok()
        } else {
            Status::unresolvable(format!("waiting for scheduling gates: {gates:?}"))
        }
    }
}
