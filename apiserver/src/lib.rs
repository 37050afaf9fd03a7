//! The Kubernetes REST API server: request filter chain, registry (one strategy per resource),
//! watch cache, admission and encryption at rest. It reaches the store only through the etcd v3 API,
//! so it runs unchanged on keelson-store or on a real etcd.
//!
//! Nothing is implemented here yet: this crate is built by the apiserver issue.
