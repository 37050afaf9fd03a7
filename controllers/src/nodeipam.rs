//! Node IPAM, as upstream's range allocator (`--allocate-node-cidrs --cluster-cidr
//! --node-cidr-mask-size`): every node without `spec.podCIDR` gets the next free subnet of the
//! cluster CIDR (IPv4); subnets in use are learnt from the nodes on start and freed when a node
//! goes.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Node;
use keelson_client::events::{EventType, Recorder};
use keelson_client::informer::Change;
use keelson_client::queue::WorkQueue;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};
use parking_lot::Mutex;
use serde_json::json;

use crate::Informers;
use crate::util::{SyncResult, is_not_found, object_ref, reconciler};

/// An IPv4 CIDR split into subnets of one size.
#[derive(Debug, Clone, Copy)]
pub struct Cidrs {
    base: u32,
    prefix: u8,
    mask: u8,
}

impl Cidrs {
    /// `cluster` (e.g. `10.244.0.0/16`) into `/mask` subnets.
    pub fn new(cluster: &str, mask: u8) -> Result<Self, String> {
        let (ip, prefix) = cluster
            .split_once('/')
            .ok_or_else(|| format!("invalid --cluster-cidr {cluster:?}"))?;
        let ip: Ipv4Addr = ip
            .parse()
            .map_err(|_| format!("invalid --cluster-cidr {cluster:?} (IPv4 only)"))?;
        let prefix: u8 = prefix
            .parse()
            .map_err(|_| format!("invalid --cluster-cidr {cluster:?}"))?;
        if prefix > 32 || mask > 32 || mask < prefix {
            return Err(format!(
                "--node-cidr-mask-size {mask} does not fit in {cluster}"
            ));
        }
        if mask - prefix > 24 {
            return Err(format!(
                "--node-cidr-mask-size {mask} makes too many subnets of {cluster}"
            ));
        }
        let base = u32::from(ip)
            & if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - prefix)
            };
        Ok(Self { base, prefix, mask })
    }

    fn count(&self) -> u32 {
        1u32 << (self.mask - self.prefix)
    }

    /// Subnet number `i` as text.
    pub fn subnet(&self, i: u32) -> String {
        let step = if self.mask == 32 {
            1
        } else {
            1u32 << (32 - self.mask)
        };
        format!("{}/{}", Ipv4Addr::from(self.base + i * step), self.mask)
    }

    /// The number of `cidr` if it is one of ours.
    pub fn index_of(&self, cidr: &str) -> Option<u32> {
        (0..self.count()).find(|i| self.subnet(*i) == cidr)
    }
}

/// The node IPAM controller.
pub struct NodeIpam {
    client: Client,
    nodes: Store<Node>,
    cidrs: Cidrs,
    used: Mutex<Option<BTreeSet<u32>>>,
    queue: WorkQueue<String>,
    recorder: Recorder,
}

impl NodeIpam {
    /// Registers the controller's handlers on the shared informers.
    pub fn new(informers: &mut Informers, recorder: Recorder, cidrs: Cidrs) -> Arc<Self> {
        let queue = WorkQueue::new();
        let nodes = informers.nodes().store();
        let me = Arc::new(Self {
            client: informers.client(),
            nodes,
            cidrs,
            used: Mutex::new(None),
            queue: queue.clone(),
            recorder,
        });
        let weak = Arc::downgrade(&me);
        informers.nodes().on_change(move |c| match c {
            Change::Deleted(n) => {
                if let Some(me) = weak.upgrade()
                    && let Some(i) = n
                        .spec
                        .as_ref()
                        .and_then(|s| s.pod_cidr.as_deref())
                        .and_then(|c| me.cidrs.index_of(c))
                    && let Some(used) = me.used.lock().as_mut()
                {
                    used.remove(&i);
                }
            }
            c => queue.add(c.object().name_any()),
        });
        me
    }

    async fn sync(self: Arc<Self>, name: String) -> SyncResult {
        let Some(node) = self.nodes.get(&ObjectRef::new(&name)) else {
            return Ok(None);
        };
        if node
            .spec
            .as_ref()
            .and_then(|s| s.pod_cidr.as_ref())
            .is_some()
        {
            return Ok(None);
        }
        let pick = {
            let mut guard = self.used.lock();
            let used = guard.get_or_insert_with(|| {
                self.nodes
                    .state()
                    .iter()
                    .filter_map(|n| {
                        n.spec
                            .as_ref()?
                            .pod_cidr
                            .as_deref()
                            .and_then(|c| self.cidrs.index_of(c))
                    })
                    .collect()
            });
            let free = (0..self.cidrs.count()).find(|i| !used.contains(i));
            if let Some(i) = free {
                used.insert(i);
            }
            free
        };
        let Some(i) = pick else {
            self.recorder.record(
                object_ref(&*node),
                EventType::Normal,
                "CIDRNotAvailable",
                format!("Node {name} status is now: CIDRNotAvailable"),
            );
            return Ok(None);
        };
        let cidr = self.cidrs.subnet(i);
        let api: Api<Node> = Api::all(self.client.clone());
        // Against the node as cached: had another sync given it a range meanwhile (the cache a
        // step behind), this one fails with a conflict rather than replacing that range.
        let patch = json!({
            "metadata": {"resourceVersion": node.metadata.resource_version},
            "spec": {"podCIDR": cidr, "podCIDRs": [cidr]}
        });
        match api
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                self.recorder.record(
                    object_ref(&*node),
                    EventType::Normal,
                    "CIDRAssignmentSucceeded",
                    format!("Node {name} got CIDR {cidr}"),
                );
                Ok(None)
            }
            Err(e) => {
                if let Some(used) = self.used.lock().as_mut() {
                    used.remove(&i);
                }
                if is_not_found(&e) { Ok(None) } else { Err(e) }
            }
        }
    }
}

reconciler!(NodeIpam, "nodeipam");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_of_the_cluster_cidr() {
        let c = Cidrs::new("10.244.0.0/16", 24).unwrap();
        assert_eq!(c.subnet(0), "10.244.0.0/24");
        assert_eq!(c.subnet(5), "10.244.5.0/24");
        assert_eq!(c.index_of("10.244.7.0/24"), Some(7));
        assert_eq!(c.index_of("10.245.0.0/24"), None);
        assert!(Cidrs::new("10.244.0.0/16", 8).is_err());
        assert!(Cidrs::new("fd00::/64", 80).is_err());
    }
}
