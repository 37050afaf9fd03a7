//! The `default/kubernetes` Endpoints and EndpointSlice, kept by every apiserver the way
//! kube-apiserver's `lease` endpoint reconciler keeps them: each apiserver holds a store key
//! under `<prefix>/masterleases/` on a 15 s lease and renews it every 10 s; on each round it
//! lists the live keys and writes the Endpoints (labelled so that no mirroring controller copies
//! them) and the EndpointSlice only when they differ from what the live apiservers make. An
//! apiserver that stops cleanly removes its key and itself (unless it is the last: then, as
//! upstream, its address stays); one that dies drops out when its lease expires.
//!
//! Upstream keys a lease by the apiserver's IP and assumes every apiserver serves on the same
//! port. Apiservers of one host (as in `keelson up`) share an IP, so a key here is `<ip>:<port>`,
//! and apiservers on different ports get one Endpoints subset and one EndpointSlice per port
//! (the first, by port, named `kubernetes` as upstream's; the others `kubernetes-<port>`).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::etcd::prefix_end;
use crate::registry::{DeleteOptions, ListOptions, Registry, WriteOpts};
use crate::resources::{self, Resource};
use crate::selectors::LabelSelector;
use crate::status::ApiResult;

/// How long a lease lives without renewal (upstream's default reconciler TTL).
pub const LEASE_TTL: Duration = Duration::from_secs(15);
/// How often each apiserver renews its lease and reconciles.
pub const INTERVAL: Duration = Duration::from_secs(10);

const NAME: &str = "kubernetes";
const NAMESPACE: &str = "default";
const SKIP_MIRROR: &str = "endpointslice.kubernetes.io/skip-mirror";
const SERVICE_NAME: &str = "kubernetes.io/service-name";

fn leases_prefix(registry: &Registry) -> Vec<u8> {
    format!("{}/masterleases/", registry.prefix()).into_bytes()
}

fn lease_key(registry: &Registry, ip: &str, port: u16) -> Vec<u8> {
    let mut k = leases_prefix(registry);
    k.extend_from_slice(format!("{ip}:{port}").as_bytes());
    k
}

/// A lease's value: an Endpoints object naming the apiserver's address, as upstream stores.
fn lease_value(ip: &str, port: u16) -> Vec<u8> {
    serde_json::to_vec(&json!({"kind": "Endpoints", "apiVersion": "v1",
        "metadata": {"name": ip},
        "subsets": [{"addresses": [{"ip": ip}], "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}]}))
    .unwrap_or_default()
}

/// The (ip, port) a lease's value names.
fn lease_member(value: &[u8]) -> Option<(String, u16)> {
    let v: Value = serde_json::from_slice(value).ok()?;
    let subset = v.pointer("/subsets/0")?;
    let ip = subset.pointer("/addresses/0/ip")?.as_str()?.to_string();
    let port = subset.pointer("/ports/0/port")?.as_u64()?;
    Some((ip, u16::try_from(port).ok()?))
}

/// The live apiservers' addresses grouped by port, each group's addresses sorted.
fn by_port(members: &BTreeSet<(String, u16)>) -> BTreeMap<u16, Vec<String>> {
    let mut out: BTreeMap<u16, Vec<String>> = BTreeMap::new();
    for (ip, port) in members {
        out.entry(*port).or_default().push(ip.clone());
    }
    out
}

fn port_entry(port: u16) -> Value {
    json!({"name": "https", "port": port, "protocol": "TCP"})
}

/// The Endpoints' subsets for `groups`.
fn subsets(groups: &BTreeMap<u16, Vec<String>>) -> Value {
    Value::Array(
        groups
            .iter()
            .map(|(port, ips)| {
                let addrs: Vec<Value> = ips.iter().map(|ip| json!({"ip": ip})).collect();
                json!({"addresses": addrs, "ports": [port_entry(*port)]})
            })
            .collect(),
    )
}

/// The EndpointSlices for `groups`: name and body.
fn slices(groups: &BTreeMap<u16, Vec<String>>) -> Vec<(String, Value)> {
    groups
        .iter()
        .enumerate()
        .map(|(i, (port, ips))| {
            let name = if i == 0 {
                NAME.to_string()
            } else {
                format!("{NAME}-{port}")
            };
            let v6 = ips
                .iter()
                .all(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok());
            let endpoints: Vec<Value> = ips
                .iter()
                .map(|ip| json!({"addresses": [ip], "conditions": {"ready": true}}))
                .collect();
            let slice = json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": name, "namespace": NAMESPACE, "labels": {SERVICE_NAME: NAME}},
                "addressType": if v6 { "IPv6" } else { "IPv4" },
                "endpoints": endpoints, "ports": [port_entry(*port)]});
            (name, slice)
        })
        .collect()
}

/// One round: renews this apiserver's lease (or, with `present` false, removes it), then
/// brings the Endpoints and EndpointSlices to the live apiservers.
pub async fn reconcile(registry: &Registry, ip: &str, port: u16, present: bool) -> ApiResult<()> {
    let etcd = registry.etcd();
    let own = lease_key(registry, ip, port);
    if present {
        let lease = etcd.grant_lease(LEASE_TTL).await?;
        etcd.put(&own, lease_value(ip, port), lease).await?;
    } else {
        etcd.delete(&own).await?;
    }
    let prefix = leases_prefix(registry);
    let live = etcd
        .range(&prefix, &prefix_end(&prefix), 0, 0, false)
        .await?;
    let mut members: BTreeSet<(String, u16)> = live
        .kvs
        .iter()
        .filter_map(|kv| lease_member(&kv.value))
        .collect();
    if present {
        members.insert((ip.to_string(), port));
    } else {
        members.remove(&(ip.to_string(), port));
    }
    if members.is_empty() {
        // The last apiserver going: as upstream, the objects keep its address rather than
        // say no apiserver exists (clients reconnect when it is back).
        return Ok(());
    }
    let groups = by_port(&members);
    write_endpoints(registry, &groups).await?;
    write_slices(registry, &groups).await
}

/// Creates `obj` in `default`; one another apiserver made first is left for the next round to
/// compare.
async fn create(registry: &Registry, res: &Resource, obj: Value) -> ApiResult<()> {
    match registry
        .create(res, NAMESPACE, obj, &WriteOpts::internal())
        .await
    {
        Ok(_) | Err(crate::status::ApiError { code: 409, .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

async fn write_endpoints(
    registry: &Registry,
    groups: &BTreeMap<u16, Vec<String>>,
) -> ApiResult<()> {
    let res = resources::find("", "v1", "endpoints").expect("endpoints are served");
    let want = subsets(groups);
    let shaped = |old: &Value| {
        old.get("subsets").unwrap_or(&Value::Null) == &want
            && old.pointer(&format!(
                "/metadata/labels/{}",
                SKIP_MIRROR.replace('/', "~1")
            )) == Some(&json!("true"))
    };
    match registry.get(res, NAMESPACE, NAME).await {
        Ok(old) if shaped(&old) => Ok(()),
        Ok(_) => {
            registry
                .guaranteed_update(
                    res,
                    NAMESPACE,
                    NAME,
                    false,
                    &WriteOpts::internal(),
                    None,
                    |old| {
                        let mut o = crate::object::without_rv(old);
                        o["subsets"] = want.clone();
                        let m = crate::object::meta_mut(&mut o);
                        if !m.get("labels").is_some_and(Value::is_object) {
                            m.insert("labels".into(), json!({}));
                        }
                        m["labels"][SKIP_MIRROR] = json!("true");
                        Ok(o)
                    },
                )
                .await?;
            Ok(())
        }
        Err(e) if e.code == 404 => {
            let ep = json!({"apiVersion": "v1", "kind": "Endpoints",
                "metadata": {"name": NAME, "namespace": NAMESPACE, "labels": {SKIP_MIRROR: "true"}},
                "subsets": want});
            create(registry, res, ep).await
        }
        Err(e) => Err(e),
    }
}

async fn write_slices(registry: &Registry, groups: &BTreeMap<u16, Vec<String>>) -> ApiResult<()> {
    let res = resources::find("discovery.k8s.io", "v1", "endpointslices")
        .expect("endpointslices are served");
    let want = slices(groups);
    let opts = ListOptions {
        labels: LabelSelector::parse(&format!("{SERVICE_NAME}={NAME}"))?,
        ..Default::default()
    };
    let have = registry.list(res, NAMESPACE, &opts).await?.items;
    // Slices this reconciler made that no group needs any more.
    for old in &have {
        let name = crate::object::meta_str(old, "name");
        let ours = name == NAME
            || name
                .strip_prefix("kubernetes-")
                .is_some_and(|p| p.parse::<u16>().is_ok());
        if ours && !want.iter().any(|(n, _)| n == name) {
            match registry
                .delete(res, NAMESPACE, name, &DeleteOptions::default())
                .await
            {
                Ok(_) => {}
                Err(e) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
    }
    let same = |a: &Value, b: &Value| {
        ["addressType", "endpoints", "ports"]
            .iter()
            .all(|k| a.get(*k) == b.get(*k))
    };
    for (name, slice) in want {
        match have
            .iter()
            .find(|o| crate::object::meta_str(o, "name") == name)
        {
            Some(old) if same(old, &slice) => {}
            Some(_) => {
                registry
                    .guaranteed_update(
                        res,
                        NAMESPACE,
                        &name,
                        false,
                        &WriteOpts::internal(),
                        None,
                        |old| {
                            let mut o = crate::object::without_rv(old);
                            for k in ["addressType", "endpoints", "ports"] {
                                o[k] = slice[k].clone();
                            }
                            Ok(o)
                        },
                    )
                    .await?;
            }
            None => create(registry, res, slice).await?,
        }
    }
    Ok(())
}

/// Keeps this apiserver in the `kubernetes` Endpoints until `shutdown`, then takes it out.
pub async fn run(registry: Registry, ip: String, port: u16, shutdown: CancellationToken) {
    loop {
        if let Err(e) = reconcile(&registry, &ip, port, true).await {
            tracing::debug!(error = %e, "kubernetes endpoints not reconciled yet");
        }
        tokio::select! {
            _ = tokio::time::sleep(INTERVAL) => {}
            _ = shutdown.cancelled() => break,
        }
    }
    match reconcile(&registry, &ip, port, false).await {
        Ok(()) => tracing::info!(%ip, port, "removed this apiserver from the kubernetes endpoints"),
        Err(e) => {
            tracing::warn!(error = %e, "could not remove this apiserver from the kubernetes endpoints")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apiservers_on_one_port_make_upstreams_one_subset_and_slice() {
        let members: BTreeSet<(String, u16)> = [("10.0.0.2", 6443), ("10.0.0.1", 6443)]
            .into_iter()
            .map(|(i, p)| (i.to_string(), p))
            .collect();
        let groups = by_port(&members);
        assert_eq!(
            subsets(&groups),
            json!([{"addresses": [{"ip": "10.0.0.1"}, {"ip": "10.0.0.2"}], "ports": [{"name": "https", "port": 6443, "protocol": "TCP"}]}])
        );
        let s = slices(&groups);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].0, "kubernetes");
        assert_eq!(s[0].1["addressType"], "IPv4");
        assert_eq!(
            s[0].1["endpoints"][1],
            json!({"addresses": ["10.0.0.2"], "conditions": {"ready": true}})
        );
        assert_eq!(s[0].1["metadata"]["labels"][SERVICE_NAME], "kubernetes");
    }

    #[test]
    fn apiservers_of_one_host_get_a_subset_and_slice_per_port() {
        let members: BTreeSet<(String, u16)> = [("127.0.0.1", 40002), ("127.0.0.1", 40001)]
            .into_iter()
            .map(|(i, p)| (i.to_string(), p))
            .collect();
        let groups = by_port(&members);
        assert_eq!(subsets(&groups).as_array().unwrap().len(), 2);
        let names: Vec<String> = slices(&groups).into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["kubernetes", "kubernetes-40002"]);
        assert_eq!(
            lease_member(&lease_value("127.0.0.1", 40001)),
            Some(("127.0.0.1".into(), 40001))
        );
    }
}
