//! The node agent (kubelet): registration, heartbeats, pod workers, probes and hooks, with two
//! runtimes behind one trait (`process` and `hollow`), plus the service proxy.
//!
//! Nothing is implemented here yet: this crate is built by the node issue.
