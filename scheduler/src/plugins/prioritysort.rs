//! PrioritySort: the active queue in order of priority, then of arrival.

use crate::framework::{Plugin, Point, QueuedPodRef};

/// The plugin.
pub struct PrioritySort;

impl Plugin for PrioritySort {
    fn name(&self) -> &'static str {
        "PrioritySort"
    }
    fn points(&self) -> &'static [Point] {
        &[Point::QueueSort]
    }
    fn less(&self, a: &QueuedPodRef<'_>, b: &QueuedPodRef<'_>) -> bool {
        a.info.priority > b.info.priority
            || (a.info.priority == b.info.priority && a.timestamp < b.timestamp)
    }
}
