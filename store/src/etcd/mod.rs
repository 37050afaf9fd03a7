//! The etcd v3 gRPC services, one file each. They validate requests as etcd's gRPC layer does,
//! propose writes through [`Node`](crate::server::node::Node), and serve reads from the shared
//! MVCC state after the read barrier.

pub mod auth;
pub mod cluster;
pub mod concurrency;
pub mod kv;
pub mod lease;
pub mod maintenance;
pub mod require_leader;
pub mod watch;
