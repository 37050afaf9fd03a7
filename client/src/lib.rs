//! What every API client component shares, on top of kube-rs:
//!
//! - [`connect`]: kubeconfig / `--kubeconfig` / in-cluster configuration, several apiserver
//!   endpoints with failover, and client-side QPS limiting as client-go's.
//! - [`leader`]: client-go-compatible leader election through a `coordination.k8s.io/v1` Lease.
//! - [`informer`]: a list-watch cache that tells handlers what changed (old and new object).
//! - [`queue`]: a de-duplicating, rate-limited work queue with client-go's semantics.
//! - [`events`]: an event recorder writing core/v1 Events, with repeats aggregated into counts.
//! - [`health`]: the `/healthz` and `/metrics` endpoint every component serves.

pub mod connect;
pub mod duration;
pub mod events;
pub mod health;
pub mod informer;
pub mod leader;
pub mod net;
pub mod ports;
pub mod program;
pub mod queue;
pub mod services;
pub mod trim;

pub use connect::{ClientArgs, connect};
