//! Services with their EndpointSlices, as the DNS server and the service proxy both watch them:
//! an informer of each, and the slices indexed by their Service ("ns/name", from the
//! `kubernetes.io/service-name` label).

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};

use crate::informer::{Index, Informer};

/// The label naming a slice's Service.
pub const SERVICE_NAME: &str = "kubernetes.io/service-name";

/// The key ("ns/name") of the Service a slice belongs to.
pub fn slice_service(s: &EndpointSlice) -> Option<String> {
    Some(format!(
        "{}/{}",
        s.namespace()?,
        s.labels().get(SERVICE_NAME)?
    ))
}

/// The key ("ns/name") of a Service.
pub fn service_key(s: &Service) -> Option<String> {
    Some(format!(
        "{}/{}",
        s.metadata.namespace.as_deref()?,
        s.metadata.name.as_deref()?
    ))
}

/// Informers of every Service and of every slice that names a Service, and the slices by
/// Service key. Register handlers, then run both.
pub fn informers(
    client: Client,
) -> (
    Informer<Service>,
    Informer<EndpointSlice>,
    Index<EndpointSlice>,
) {
    let services = Informer::new(Api::all(client.clone()), watcher::Config::default());
    let mut slices: Informer<EndpointSlice> = Informer::new(
        Api::all(client),
        watcher::Config::default().labels(SERVICE_NAME),
    );
    let index = slices.add_index(|s| slice_service(s).into_iter().collect());
    (services, slices, index)
}
