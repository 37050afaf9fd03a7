//! End-to-end tests of `keelson node` against a real store and apiserver, driven by kubectl:
//! the pod lifecycle on the process runtime (init containers, probes, restarts, hooks, graceful
//! termination, OOM kills, pod networking, logs, port forwarding) and hollow nodes by the thousand.

#[allow(dead_code)]
#[path = "../common/component.rs"]
mod component;
#[allow(dead_code)]
#[path = "../apiserver/harness.rs"]
mod harness;
mod hollow;
mod lifecycle;
mod portforward;
mod support;
mod termination;
