//! The controller-manager: one module per controller (ReplicaSet, Deployment, ...), each a
//! level-triggered reconciler fed by list-watch through keelson-client.
//!
//! Nothing is implemented here yet: this crate is built by the controllers issue.
