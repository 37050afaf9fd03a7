//! `keelson dns`: the cluster's DNS server, serving the Kubernetes DNS specification (schema
//! 1.1.0) from a list-watch of Services and EndpointSlices, as CoreDNS's `kubernetes` plugin
//! does, and forwarding every other name to the upstream servers of `/etc/resolv.conf`.
//!
//! Records: `<svc>.<ns>.svc.<domain>` A/AAAA (the ClusterIPs, or the ready endpoints of a
//! headless Service), `<host>.<svc>.<ns>.svc.<domain>` for headless endpoints (the pod's
//! hostname when it has one with a matching subdomain, else its address with dashes),
//! `_<port>._<proto>.<svc>.<ns>.svc.<domain>` SRV for named ports, CNAME for ExternalName
//! Services, `<a-b-c-d>.<ns>.pod.<domain>` (CoreDNS's `pods insecure`), PTR for every address
//! above, and `dns-version.<domain>` TXT. Answers carry a TTL of `--ttl` (5 s).

pub mod server;
pub mod zone;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use keelson_client::connect::{ClientArgs, connect};
use keelson_client::health::{Health, ServingArgs};
use keelson_client::informer::{Index, Informer};
use keelson_client::services::{service_key, slice_service};
use kube::Client;
use kube::runtime::reflector::{ObjectRef, Store};
use parking_lot::RwLock;
use tokio::net::{TcpListener, UdpSocket};
use tokio_util::sync::CancellationToken;

use crate::server::{Metrics, Resolver};
use crate::zone::Zone;

/// `keelson dns` flags.
#[derive(clap::Args, Debug, Clone)]
pub struct Config {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub client: ClientArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub serving: ServingArgs,
    /// Where to serve DNS (UDP and TCP), as address:port; may be repeated.
    #[arg(long = "dns-address", default_value = "0.0.0.0:53")]
    pub dns_addresses: Vec<SocketAddr>,
    /// The cluster's domain.
    #[arg(long = "cluster-domain", default_value = "cluster.local")]
    pub cluster_domain: String,
    /// TTL of the cluster's records, in seconds.
    #[arg(long, default_value_t = 5)]
    pub ttl: u32,
    /// Servers for names outside the cluster (address or address:port); may be repeated.
    /// Default: the nameservers of --resolv-conf.
    #[arg(long = "upstream")]
    pub upstreams: Vec<String>,
    /// The resolver configuration whose nameservers are the default upstreams.
    #[arg(long = "resolv-conf", default_value = "/etc/resolv.conf")]
    pub resolv_conf: PathBuf,
    /// UDP worker tasks per address (0: one per CPU).
    #[arg(long, default_value_t = 0)]
    pub workers: usize,
}

/// Why the server stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad flags.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// An address could not be bound.
    #[error("listen on {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    /// No API connection.
    #[error(transparent)]
    Connect(#[from] keelson_client::connect::ConnectError),
    /// The health server could not start.
    #[error(transparent)]
    Serve(#[from] keelson_client::health::ServeError),
}

/// Parses an upstream: an address, with `:port` (53 when absent).
pub fn parse_upstream(s: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    s.trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, 53))
        .map_err(|_| format!("upstream {s:?} is not an address or address:port"))
}

/// The nameservers of a resolv.conf text.
pub fn resolv_conf_nameservers(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some("nameserver"))
                .then(|| w.next())
                .flatten()
                .and_then(|a| parse_upstream(a).ok())
        })
        .collect()
}

/// The zone kept in step with the Services and slices of the cluster.
#[derive(Clone)]
struct Feed {
    zone: Arc<RwLock<Zone>>,
    services: Store<Service>,
    slices: Index<EndpointSlice>,
}

impl Feed {
    /// Rebuilds one Service's records from the caches. The zone's lock is taken first, so two
    /// rebuilds of one Service cannot interleave and leave the older result.
    fn refresh(&self, key: &str) {
        let mut zone = self.zone.write();
        let (ns, name) = key.split_once('/').unwrap_or(("", key));
        let svc = self.services.get(&ObjectRef::new(name).within(ns));
        let slices = self.slices.get(key);
        zone.set_service(key, svc.as_deref(), &slices);
    }

    /// Whether the Service `key` is cached and headless.
    fn headless(&self, key: &str) -> bool {
        let (ns, name) = key.split_once('/').unwrap_or(("", key));
        self.services
            .get(&ObjectRef::new(name).within(ns))
            .is_some_and(|s| s.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) == Some("None"))
    }
}

/// Binds every address (UDP and TCP).
async fn bind(addrs: &[SocketAddr]) -> Result<Vec<(Arc<UdpSocket>, TcpListener)>, Error> {
    let mut out = Vec::new();
    for a in addrs {
        let udp = UdpSocket::bind(a).await.map_err(|e| Error::Bind(*a, e))?;
        // Port 0 picks one: TCP takes the same.
        let at = udp.local_addr().map_err(|e| Error::Bind(*a, e))?;
        let tcp = TcpListener::bind(at)
            .await
            .map_err(|e| Error::Bind(at, e))?;
        out.push((Arc::new(udp), tcp));
    }
    Ok(out)
}

/// Runs the DNS server until `shutdown`. `on_bound` is told the UDP/TCP addresses once bound.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    run_with(config, shutdown, |_| {}).await
}

/// [`run`], reporting the bound addresses (tests bind port 0).
pub async fn run_with(
    config: Config,
    shutdown: CancellationToken,
    on_bound: impl FnOnce(Vec<SocketAddr>),
) -> Result<(), Error> {
    if config.cluster_domain.trim_matches('.').is_empty() {
        return Err(Error::Config("--cluster-domain must not be empty".into()));
    }
    let mut upstreams = config
        .upstreams
        .iter()
        .map(|u| parse_upstream(u))
        .collect::<Result<Vec<_>, _>>()
        .map_err(Error::Config)?;
    if upstreams.is_empty() {
        match std::fs::read_to_string(&config.resolv_conf) {
            Ok(text) => upstreams = resolv_conf_nameservers(&text),
            Err(e) => tracing::warn!(
                path = %config.resolv_conf.display(), error = %e,
                "no upstream servers: names outside the cluster get SERVFAIL"
            ),
        }
    }
    let sockets = bind(&config.dns_addresses).await?;
    let bound: Vec<SocketAddr> = sockets
        .iter()
        .filter_map(|(u, _)| u.local_addr().ok())
        .collect();
    // Never forward to ourselves (a wildcard bind also answers on loopback).
    upstreams.retain(|u| {
        !bound.iter().any(|b| {
            *b == *u || (b.ip().is_unspecified() && b.port() == u.port() && u.ip().is_loopback())
        })
    });
    let client = connect(&config.client).await?;
    let health = Arc::new(Health::new());
    let metrics = Metrics::default();
    health.register(
        "keelson_dns_requests",
        "DNS requests by transport and query type.",
        metrics.requests.clone(),
    );
    health.register(
        "keelson_dns_responses",
        "DNS responses by response code.",
        metrics.responses.clone(),
    );
    health.register(
        "keelson_dns_forward_requests",
        "Requests forwarded upstream, by upstream.",
        metrics.forwards.clone(),
    );
    let ready = Arc::new(AtomicBool::new(false));
    {
        let ready = ready.clone();
        health.add_check("informer-sync", move || {
            if ready.load(Ordering::Acquire) {
                Ok(())
            } else {
                Err("Services and EndpointSlices not listed yet".into())
            }
        });
    }
    keelson_client::health::serve(&config.serving, 9153, health.clone(), shutdown.clone()).await?;
    let zone = Arc::new(RwLock::new(Zone::new(&config.cluster_domain)));
    // The handlers fill the zone as the first lists arrive; `synced` means they have run.
    let (services, slices) = informers(client, zone.clone());
    let resolver = Arc::new(Resolver {
        zone,
        ttl: config.ttl,
        upstreams: upstreams.clone(),
        ready: ready.clone(),
        metrics,
    });
    let workers = if config.workers == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        config.workers
    };
    for (udp, tcp) in sockets {
        server::serve_udp(resolver.clone(), udp, workers, shutdown.clone());
        server::serve_tcp(resolver.clone(), tcp, shutdown.clone());
    }
    tracing::info!(addresses = ?bound, upstreams = ?upstreams, domain = %config.cluster_domain, "serving DNS");
    on_bound(bound);
    let (svcs_synced, slices_synced) = (services.synced(), slices.synced());
    tokio::spawn(services.run(shutdown.clone()));
    tokio::spawn(slices.run(shutdown.clone()));
    tokio::select! {
        _ = async { tokio::join!(svcs_synced.wait(), slices_synced.wait()) } => {
            ready.store(true, Ordering::Release);
            tracing::info!(records = resolver.zone.read().len(), "Services and EndpointSlices listed; answering");
        }
        _ = shutdown.cancelled() => return Ok(()),
    }
    shutdown.cancelled().await;
    Ok(())
}

/// The two informers, with handlers that refresh the zone.
fn informers(
    client: Client,
    zone: Arc<RwLock<Zone>>,
) -> (Informer<Service>, Informer<EndpointSlice>) {
    let (mut services, mut slices, index) = keelson_client::services::informers(client);
    let feed = Feed {
        zone,
        services: services.store(),
        slices: index,
    };
    {
        let feed = feed.clone();
        services.on_change(move |c| {
            if let Some(key) = service_key(c.object()) {
                feed.refresh(&key);
            }
        });
    }
    slices.on_change(move |c| {
        // Only a headless Service's records come from its slices.
        if let Some(key) = slice_service(c.object())
            && feed.headless(&key)
        {
            feed.refresh(&key);
        }
    });
    (services, slices)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstreams_from_flags_and_resolv_conf() {
        assert_eq!(
            parse_upstream("10.0.0.2").unwrap(),
            "10.0.0.2:53".parse().unwrap()
        );
        assert_eq!(
            parse_upstream("127.0.0.1:5353").unwrap(),
            "127.0.0.1:5353".parse().unwrap()
        );
        assert_eq!(
            parse_upstream("[fd00::1]").unwrap(),
            "[fd00::1]:53".parse().unwrap()
        );
        assert!(parse_upstream("dns.example").is_err());
        let conf =
            "# comment\nsearch example\nnameserver 10.0.0.2\nnameserver fd00::1\noptions ndots:2\n";
        assert_eq!(
            resolv_conf_nameservers(conf),
            vec![
                "10.0.0.2:53".parse().unwrap(),
                "[fd00::1]:53".parse().unwrap()
            ]
        );
    }
}
