//! keelson-store: a replicated MVCC key-value store that speaks the etcd v3 API.
//!
//! # Layout
//! - [`backend`]: ordered byte storage (sled, or memory) under everything else.
//! - [`mvcc`]: etcd's data model: revisions, versions, tombstones, compaction, txns, leases.
//!   Pure and deterministic; start here to learn what a request does.
//! - [`raft`]: openraft types, the sled log store (group-committed fsync), the state machine
//!   wrapper and the gRPC peer transport.
//! - [`server`]: one member: flags ([`server::Config`]), bootstrap, the write proposer (batching),
//!   linearizable reads, the lessor, and the etcd gRPC services in [`etcd`].
//! - [`error`]: [`StoreError`] and its single mapping to etcd's gRPC codes and messages.
//! - [`failpoint`]: named points where tests make a member crash (the `failpoints` feature).

pub mod auth;
pub mod backend;
pub mod error;
pub mod etcd;
pub mod failpoint;
pub mod mvcc;
pub mod raft;
pub mod server;

pub use error::StoreError;
