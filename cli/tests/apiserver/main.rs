//! End-to-end tests of `keelson apiserver`: real store and apiserver processes on loopback, with
//! TLS and client certificates, driven by the real kubectl. The same scenarios run on
//! keelson-store and on a real etcd 3.4.

mod admission;
mod audit;
mod authn;
mod behaviour;
mod certificates;
#[allow(dead_code)]
#[path = "../store/cluster.rs"]
mod cluster;
mod encryption;
mod etcd_tls;
mod flowcontrol;
mod harness;
mod kube_rs;
mod kubectl;
mod multi;
mod policies;
mod python;
mod rbac;
mod subresources;
mod tokens;
mod webhooks;
