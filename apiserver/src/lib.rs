//! The Kubernetes REST API server.
//!
//! Requests pass through a filter chain built the way kube-apiserver's is (panic recovery, request
//! info, timeouts, max-in-flight, authentication, authorization), then reach one handler that
//! dispatches on the parsed [`request_info::RequestInfo`] to discovery, OpenAPI or the registry. The
//! registry stores every resource as JSON under `/registry/<resource>/<namespace>/<name>` through
//! the etcd v3 API only ([`etcd::Etcd`]), so the server runs unchanged on keelson-store or on a real
//! etcd.

pub mod admission;
pub mod alloc;
pub mod audit;
pub mod authn;
pub mod authz;
pub mod cache;
pub mod certificates;
pub mod checks;
pub mod classes;
pub mod config;
pub mod convert;
pub mod discovery;
pub mod encryption;
pub mod endpoint_reconciler;
pub mod etcd;
pub mod eventratelimit;
#[cfg(test)]
mod fake_kv;
pub mod filters;
pub mod flowcontrol;
pub mod handlers;
pub mod kubelet;
pub mod limitranger;
pub mod managed;
pub mod metrics;
pub mod object;
pub mod openapi;
pub mod openapi_pb;
pub mod patch;
pub mod podsecurity;
pub mod policy;
pub mod protobuf;
pub mod quantity;
pub mod registry;
pub mod request_info;
pub mod resourcequota;
pub mod resources;
pub mod selectors;
pub mod serve;
pub mod status;
pub mod strategy;
pub mod table;
pub mod validation;
pub mod watch;
pub mod webhook;

pub use config::Config;
pub use serve::run;
