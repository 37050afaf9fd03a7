//! The API resources the server offers, found through discovery: what the garbage collector
//! watches and the namespace controller empties, and how an owner reference's
//! apiVersion/kind maps to a resource.

use std::collections::HashMap;

use kube::Client;
use kube::discovery::{ApiCapabilities, ApiResource, Discovery, Scope, verbs};

/// Discovered resources.
pub struct Resources {
    /// The preferred version of every resource (no subresources).
    pub preferred: Vec<(ApiResource, ApiCapabilities)>,
    /// Every version, by (apiVersion, kind).
    by_kind: HashMap<(String, String), (ApiResource, ApiCapabilities)>,
}

impl Resources {
    /// Runs discovery against the server.
    pub async fn discover(client: Client) -> Result<Self, kube::Error> {
        let discovery = Discovery::new(client).run().await?;
        let mut preferred = Vec::new();
        let mut by_kind = HashMap::new();
        for group in discovery.groups() {
            for version in group.versions() {
                for (ar, caps) in group.versioned_resources(version) {
                    by_kind.insert((ar.api_version.clone(), ar.kind.clone()), (ar, caps));
                }
            }
            preferred.extend(group.recommended_resources());
        }
        Ok(Self { preferred, by_kind })
    }

    /// The resource for an owner reference's apiVersion and kind.
    pub fn lookup(&self, api_version: &str, kind: &str) -> Option<&(ApiResource, ApiCapabilities)> {
        self.by_kind
            .get(&(api_version.to_string(), kind.to_string()))
    }

    /// Preferred resources supporting all of `ops` (e.g. list, watch, delete); `namespaced`
    /// narrows to namespaced ones.
    pub fn supporting<'a>(
        &'a self,
        ops: &'a [&'a str],
        namespaced_only: bool,
    ) -> impl Iterator<Item = &'a (ApiResource, ApiCapabilities)> + 'a {
        self.preferred.iter().filter(move |(_, caps)| {
            ops.iter().all(|op| caps.supports_operation(op))
                && (!namespaced_only || caps.scope == Scope::Namespaced)
        })
    }
}

/// The verbs the garbage collector needs to track a resource.
pub const GC_VERBS: &[&str] = &[verbs::LIST, verbs::WATCH, verbs::DELETE, verbs::PATCH];

/// True for the resources upstream's garbage collector ignores (events).
pub fn ignored_by_gc(ar: &ApiResource) -> bool {
    ar.plural == "events"
}
