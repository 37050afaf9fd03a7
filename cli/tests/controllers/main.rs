//! End-to-end tests of `keelson controller-manager` against a real store and apiserver,
//! driven by kubectl. There are no nodes: the tests play the kubelet where a controller
//! needs pods to become ready.

mod batch;
mod certificates;
mod cleanup;
#[allow(dead_code)]
#[path = "../common/component.rs"]
mod component;
mod election;
mod endpoints;
#[allow(dead_code)]
#[path = "../apiserver/harness.rs"]
mod harness;
mod nodes;
mod quota;
mod support;
mod workloads;
