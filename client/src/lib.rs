//! What every API client component shares, on top of kube-rs: kubeconfig loading, endpoint
//! failover, Lease leader election, informer and work-queue helpers, events, and the
//! metrics/health endpoint.
//!
//! Nothing is implemented here yet: this crate is built by the client/controllers issue.
