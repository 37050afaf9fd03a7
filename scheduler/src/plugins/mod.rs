//! The in-tree plugins, one module each, and the registry that builds them by name.

pub mod defaultbinder;
pub mod defaultpreemption;
pub mod imagelocality;
pub mod interpodaffinity;
pub mod nodeaffinity;
pub mod nodename;
pub mod nodeports;
pub mod noderesources;
pub mod nodeunschedulable;
pub mod podtopologyspread;
pub mod prioritysort;
pub mod schedulinggates;
pub mod tainttoleration;
pub mod volumebinding;
pub mod volumerestrictions;
pub mod volumezone;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use crate::framework::{Handle, Plugin};

/// The default profile's plugins (upstream's `multiPoint` defaults) with their score weights.
pub const DEFAULTS: &[(&str, i64)] = &[
    ("SchedulingGates", 0),
    ("PrioritySort", 0),
    ("NodeUnschedulable", 0),
    ("NodeName", 0),
    ("TaintToleration", 3),
    ("NodeAffinity", 2),
    ("NodePorts", 0),
    ("NodeResourcesFit", 1),
    ("VolumeRestrictions", 0),
    ("VolumeBinding", 0),
    ("VolumeZone", 0),
    ("PodTopologySpread", 2),
    ("InterPodAffinity", 2),
    ("DefaultPreemption", 0),
    ("NodeResourcesBalancedAllocation", 1),
    ("ImageLocality", 1),
    ("DefaultBinder", 0),
];

/// Upstream plugins this scheduler does not implement; disabling them is accepted (configs
/// written for kube-scheduler often do), enabling them is an error that says so.
pub const NOT_IMPLEMENTED: &[&str] = &[
    "NodeVolumeLimits",
    "EBSLimits",
    "GCEPDLimits",
    "AzureDiskLimits",
    "CinderLimits",
    "DynamicResources",
];

/// Builds a plugin by name with its `pluginConfig` args; an unknown name is an error.
pub fn build(
    name: &str,
    args: Option<&serde_json::Value>,
    handle: &Handle,
) -> Result<Arc<dyn Plugin>, String> {
    let l = || handle.listers.clone();
    Ok(match name {
        "PrioritySort" => Arc::new(prioritysort::PrioritySort),
        "SchedulingGates" => Arc::new(schedulinggates::SchedulingGates),
        "NodeName" => Arc::new(nodename::NodeName),
        "NodeUnschedulable" => Arc::new(nodeunschedulable::NodeUnschedulable),
        "NodePorts" => Arc::new(nodeports::NodePorts),
        "TaintToleration" => Arc::new(tainttoleration::TaintToleration),
        "NodeAffinity" => Arc::new(nodeaffinity::NodeAffinity::new(args)?),
        "NodeResourcesFit" => Arc::new(noderesources::Fit::new(args)?),
        "NodeResourcesBalancedAllocation" => {
            Arc::new(noderesources::BalancedAllocation::new(args)?)
        }
        "InterPodAffinity" => Arc::new(interpodaffinity::InterPodAffinity::new(args, l())?),
        "PodTopologySpread" => Arc::new(podtopologyspread::PodTopologySpread::new(args, l())?),
        "VolumeRestrictions" => Arc::new(volumerestrictions::VolumeRestrictions::new(l())),
        "VolumeZone" => Arc::new(volumezone::VolumeZone::new(l())),
        "ImageLocality" => Arc::new(imagelocality::ImageLocality),
        "VolumeBinding" => Arc::new(volumebinding::VolumeBinding::new(
            l(),
            handle.client.clone(),
        )),
        "DefaultPreemption" => Arc::new(defaultpreemption::DefaultPreemption::new(args, l())?),
        "DefaultBinder" => Arc::new(defaultbinder::DefaultBinder::new(handle.client.clone())),
        n if NOT_IMPLEMENTED.contains(&n) => {
            return Err(format!(
                "plugin {n:?} is not implemented by keelson scheduler"
            ));
        }
        n => return Err(format!("plugin {n:?} does not exist")),
    })
}
