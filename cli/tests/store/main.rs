//! End-to-end tests of `keelson store`: real processes on loopback, driven by the real etcdctl
//! and by a gRPC client generated from etcd's protos.

mod auth;
mod cluster;
mod concurrency;
mod datadir;
mod differential;
mod etcd_client;
mod etcdctl;
mod kill_leader;
mod membership;
mod snapshots;
