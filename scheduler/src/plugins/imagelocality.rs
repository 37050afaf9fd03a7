//! ImageLocality: favours nodes that already hold the pod's container images, by image size,
//! scaled by the share of nodes holding the same image (an image on one node only should not
//! draw every pod that uses it there).

use crate::framework::{CycleState, Plugin, Point, Snapshot, Status};
use crate::types::{MAX_NODE_SCORE, NodeInfo, PodInfo};

const NAME: &str = "ImageLocality";
const MIB: i64 = 1024 * 1024;
/// Below this many bytes (summed over the containers' images) a node scores 0.
const MIN_THRESHOLD: i64 = 23 * MIB;
/// Per container: from this many bytes on a node scores the maximum.
const MAX_CONTAINER_THRESHOLD: i64 = 1000 * MIB;

/// The plugin.
pub struct ImageLocality;

/// The name a runtime reports for an image given in a pod: `:latest` when it has no tag or
/// digest (upstream's `normalizedImageName`).
pub fn normalized(image: &str) -> String {
    if image.rfind(':') <= image.rfind('/') {
        format!("{image}:latest")
    } else {
        image.to_string()
    }
}

#[derive(Clone)]
struct State {
    /// The normalized image of each container (init containers first), with how many of the
    /// cluster's nodes hold it.
    images: Vec<(String, usize)>,
    /// All nodes of the cluster.
    total: usize,
}

impl Plugin for ImageLocality {
    fn name(&self) -> &'static str {
        NAME
    }
    fn points(&self) -> &'static [Point] {
        &[Point::PreScore, Point::Score]
    }
    fn pre_score(
        &self,
        state: &mut CycleState,
        pod: &PodInfo,
        _: &[std::sync::Arc<NodeInfo>],
        snap: &Snapshot,
    ) -> Status {
        let Some(spec) = pod.pod.spec.as_ref() else {
            return Status::skip();
        };
        let containers = spec
            .init_containers
            .iter()
            .flatten()
            .chain(&spec.containers);
        let mut images: Vec<(String, usize)> = Vec::new();
        for c in containers {
            let name = normalized(c.image.as_deref().unwrap_or(""));
            let held = match images.iter().find(|(n, _)| *n == name) {
                Some((_, held)) => *held,
                None => snap
                    .nodes
                    .iter()
                    // (Most nodes of a scale test report no images: skip hashing for them.)
                    .filter(|n| !n.images.is_empty() && n.images.contains_key(&name))
                    .count(),
            };
            images.push((name, held));
        }
        // No node holds any of them: every node would score 0.
        if images.iter().all(|(_, held)| *held == 0) {
            return Status::skip();
        }
        state.write(
            NAME,
            State {
                images,
                total: snap.nodes.len(),
            },
        );
        Status::ok()
    }
    fn score(&self, state: &CycleState, _: &PodInfo, node: &NodeInfo) -> i64 {
        let Some(st) = state.read::<State>(NAME) else {
            return 0;
        };
        if st.total == 0 || node.images.is_empty() {
            return 0;
        }
        // Saturating: a node may report any size.
        let sum: i64 = st
            .images
            .iter()
            .filter_map(|(name, held)| {
                let size = *node.images.get(name)?;
                Some((size as f64 * (*held as f64 / st.total as f64)) as i64)
            })
            .fold(0, i64::saturating_add);
        let max = MAX_CONTAINER_THRESHOLD * st.images.len() as i64;
        let clamped = if sum < MIN_THRESHOLD {
            MIN_THRESHOLD
        } else {
            sum.min(max)
        };
        if max <= MIN_THRESHOLD {
            return 0;
        }
        MAX_NODE_SCORE * (clamped - MIN_THRESHOLD) / (max - MIN_THRESHOLD)
    }
}
