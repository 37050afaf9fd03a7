//! NetworkPolicy enforcement for the pods of one node (runs with the service proxy:
//! `keelson node --proxy`, `keelson proxy`). Watches NetworkPolicies, pods and namespaces and
//! keeps a table of its own (`keelson-netpol-<tag>`) in step, replacing it in one transaction
//! when the rules change (connections already established stay up), at most once per
//! `--min-sync-period`; the table is removed on exit. See [`rules`] for the rules' shape.

pub mod rules;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use keelson_client::informer::Informer;
use kube::api::Api;
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::proxy::nft;

/// The table name for a node.
pub fn table_name(node: &str) -> String {
    format!("keelson-netpol-{}", crate::process::net::tag(node))
}

/// Runs until `shutdown`, then removes the table.
pub async fn run(
    client: Client,
    node: String,
    min_period: Duration,
    shutdown: CancellationToken,
) -> Result<(), String> {
    // Pods of one bridge talk at layer 2; the bridge hands their packets to the IP hooks only
    // with br_netfilter on.
    if std::fs::write("/proc/sys/net/bridge/bridge-nf-call-iptables", "1").is_err() {
        tracing::warn!(
            "br_netfilter is not available: NetworkPolicy does not see traffic between pods of one node"
        );
    }
    let wake = Arc::new(Notify::new());
    let mut policies: Informer<NetworkPolicy> =
        Informer::new(Api::all(client.clone()), watcher::Config::default());
    let mut pods: Informer<Pod> =
        Informer::new(Api::all(client.clone()), watcher::Config::default());
    let mut namespaces: Informer<Namespace> =
        Informer::new(Api::all(client), watcher::Config::default());
    {
        let w = wake.clone();
        policies.on_change(move |_| w.notify_one());
        let w = wake.clone();
        // Only what the rules read: addresses, labels, placement, ports.
        pods.on_change(move |c| {
            if let keelson_client::informer::Change::Updated { old, new } = &c {
                let ip = |p: &Pod| p.status.as_ref().and_then(|s| s.pod_ip.clone());
                let same = ip(old) == ip(new)
                    && old.labels() == new.labels()
                    && old.spec.as_ref().map(|s| (&s.node_name, &s.containers))
                        == new.spec.as_ref().map(|s| (&s.node_name, &s.containers));
                if same {
                    return;
                }
            }
            w.notify_one()
        });
        let w = wake.clone();
        namespaces.on_change(move |_| w.notify_one());
    }
    let stores = (policies.store(), pods.store(), namespaces.store());
    let synced = (policies.synced(), pods.synced(), namespaces.synced());
    tokio::spawn(policies.run(shutdown.clone()));
    tokio::spawn(pods.run(shutdown.clone()));
    tokio::spawn(namespaces.run(shutdown.clone()));
    tokio::select! {
        _ = async { tokio::join!(synced.0.wait(), synced.1.wait(), synced.2.wait()) } => {}
        _ = shutdown.cancelled() => return Ok(()),
    }
    let table = table_name(&node);
    let mut applied = String::new();
    let mut last: Option<Instant> = None;
    loop {
        if let Some(l) = last {
            let wait = min_period.saturating_sub(l.elapsed());
            if !wait.is_zero() {
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.cancelled() => break,
                }
            }
        }
        last = Some(Instant::now());
        let script = render(&table, &node, &stores);
        if script != applied {
            match nft::apply(&script).await {
                Ok(()) => applied = script,
                Err(e) => {
                    tracing::error!(table, error = %e, "writing NetworkPolicy rules failed");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                        _ = shutdown.cancelled() => break,
                    }
                    continue;
                }
            }
        }
        tokio::select! {
            _ = wake.notified() => {}
            _ = shutdown.cancelled() => break,
        }
    }
    if let Err(e) = nft::apply(&format!("delete table ip {table}\n")).await {
        tracing::warn!(table, error = %e, "could not remove the NetworkPolicy table");
    }
    Ok(())
}

fn render(
    table: &str,
    node: &str,
    (policies, pods, namespaces): &(Store<NetworkPolicy>, Store<Pod>, Store<Namespace>),
) -> String {
    let policies = policies.state();
    let pods = pods.state();
    let namespaces: BTreeMap<String, BTreeMap<String, String>> = namespaces
        .state()
        .iter()
        .map(|n| (n.name_any(), n.labels().clone()))
        .collect();
    let ps: Vec<&NetworkPolicy> = policies.iter().map(|p| p.as_ref()).collect();
    let pods: Vec<&Pod> = pods.iter().map(|p| p.as_ref()).collect();
    rules::render(
        table,
        &rules::Inputs {
            policies: &ps,
            pods: &pods,
            namespaces: &namespaces,
            node,
        },
    )
}
