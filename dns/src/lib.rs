//! Cluster DNS serving the Kubernetes DNS specification from Services and EndpointSlices.
//!
//! Nothing is implemented here yet: this crate is built by the service networking issue.
