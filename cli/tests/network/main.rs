//! End-to-end tests of service networking against a real store and apiserver: `keelson dns`
//! answering for Services and EndpointSlices (and forwarding the rest).

mod bridges;
#[allow(dead_code)]
#[path = "../common/component.rs"]
mod component;
mod dns;
#[allow(dead_code)]
#[path = "../apiserver/harness.rs"]
mod harness;
mod policy;
mod proxy;
#[allow(dead_code)]
#[path = "../node/support.rs"]
mod support;
