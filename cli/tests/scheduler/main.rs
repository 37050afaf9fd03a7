//! End-to-end tests of `keelson scheduler` against a real store and apiserver, driven by
//! kubectl. Nodes are Node objects without kubelets: scheduling only needs their labels,
//! taints and allocatable.

#[allow(dead_code)]
#[path = "../common/component.rs"]
mod component;
#[allow(dead_code)]
#[path = "../apiserver/harness.rs"]
mod harness;
mod placement;
mod preemption;
mod support;
mod volumes;
