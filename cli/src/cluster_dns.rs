//! The cluster DNS of `keelson up`: `keelson dns` replicas on link-local addresses added to the
//! host's loopback interface (NodeLocal DNSCache's 169.254.20.0/24 range; a host address, so
//! every pod reaches it through its node's gateway; a dummy interface would do, but not every
//! kernel has the module), behind the `kube-system/kube-dns` Service at 10.96.0.10, whose endpoints
//! `up` publishes itself (the Service has no selector: the servers are not pods).

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::{Endpoints, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;

/// The `kube-dns` Service address (the tenth of the default service range, as kubeadm's).
pub const CLUSTER_DNS_IP: &str = "10.96.0.10";

/// The address of DNS replica `i`.
pub fn replica_address(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(169, 254, 20, 10 + i as u8)
}

async fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = tokio::process::Command::new("ip")
        .args(args)
        .output()
        .await
        .context("running ip")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Adds the replicas' addresses to `lo` (already there after a restart: fine).
pub async fn setup(replicas: usize) -> anyhow::Result<()> {
    for i in 0..replicas {
        let a = format!("{}/32", replica_address(i));
        if let Err(e) = ip(&["addr", "add", &a, "dev", "lo"]).await
            && !["File exists", "already assigned"]
                .iter()
                .any(|m| format!("{e:#}").contains(m))
        {
            return Err(e);
        }
    }
    Ok(())
}

/// Removes the addresses.
pub async fn teardown(replicas: usize) {
    for i in 0..replicas {
        let a = format!("{}/32", replica_address(i));
        let _ = ip(&["addr", "del", &a, "dev", "lo"]).await;
    }
}

/// Creates or updates the `kube-dns` Service, its EndpointSlice and Endpoints.
pub async fn publish(client: kube::Client, replicas: usize) -> anyhow::Result<()> {
    let ns = "kube-system";
    let ports = json!([
        {"name": "dns", "port": 53, "protocol": "UDP"},
        {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
    ]);
    let addrs: Vec<String> = (0..replicas)
        .map(|i| replica_address(i).to_string())
        .collect();
    let labels = json!({"k8s-app": "kube-dns", "kubernetes.io/name": "KeelsonDNS"});
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": "kube-dns", "namespace": ns, "labels": labels},
        "spec": {"clusterIP": CLUSTER_DNS_IP, "ports": [
            {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
            {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53},
        ]},
    }))?;
    let slice: EndpointSlice = serde_json::from_value(json!({
        "metadata": {"name": "kube-dns-keelson", "namespace": ns, "labels": {
            "kubernetes.io/service-name": "kube-dns",
            "endpointslice.kubernetes.io/managed-by": "keelson-up",
        }},
        "addressType": "IPv4",
        "ports": ports,
        "endpoints": addrs.iter().map(|a| json!({
            "addresses": [a], "conditions": {"ready": true, "serving": true, "terminating": false},
        })).collect::<Vec<_>>(),
    }))?;
    let eps: Endpoints = serde_json::from_value(json!({
        "metadata": {"name": "kube-dns", "namespace": ns, "labels": labels},
        "subsets": [{
            "addresses": addrs.iter().map(|a| json!({"ip": a})).collect::<Vec<_>>(),
            "ports": ports,
        }],
    }))?;
    create_or_patch(
        &Api::<Service>::namespaced(client.clone(), ns),
        "kube-dns",
        &svc,
    )
    .await?;
    create_or_patch(
        &Api::<EndpointSlice>::namespaced(client.clone(), ns),
        "kube-dns-keelson",
        &slice,
    )
    .await?;
    create_or_patch(&Api::<Endpoints>::namespaced(client, ns), "kube-dns", &eps).await
}

async fn create_or_patch<K>(api: &Api<K>, name: &str, obj: &K) -> anyhow::Result<()>
where
    K: kube::Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.create(&PostParams::default(), obj).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => {
            api.patch(name, &PatchParams::default(), &Patch::Merge(obj))
                .await
                .with_context(|| format!("updating {name}"))?;
            Ok(())
        }
        Err(e) => Err(e).with_context(|| format!("creating {name}")),
    }
}

/// [`publish`] with retries while the apiservers come up (at most `limit`).
pub async fn publish_when_ready(
    kubeconfig: &Path,
    replicas: usize,
    limit: Duration,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let attempt = async {
            let client = keelson_client::connect::connect(
                &keelson_client::connect::ClientArgs::from_kubeconfig(kubeconfig),
            )
            .await?;
            publish(client, replicas).await
        };
        match attempt.await {
            Ok(()) => return Ok(()),
            Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}
