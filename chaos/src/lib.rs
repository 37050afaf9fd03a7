//! Fault injection (process kill, link cuts, delays) and history checkers (linearizability, watch
//! guarantees, convergence), runnable against keelson or a real etcd cluster.
//!
//! Nothing is implemented here yet: this crate is built by the chaos issue.
