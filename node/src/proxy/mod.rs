//! The service proxy (kube-proxy's nftables mode as the model): watches Services and
//! EndpointSlices and keeps an nftables table of its own in step — ClusterIPs and external IPs
//! DNAT to ready endpoints chosen at random, NodePorts on every local address, ClientIP session
//! affinity, `internalTrafficPolicy`/`externalTrafficPolicy: Local`, terminating endpoints used
//! only when nothing else is left, and new connections to a port with no endpoints rejected.
//!
//! The first sync, and any after a failed transaction, replaces the table in one transaction;
//! after that only the Services that changed are rewritten, and syncs are at least
//! `--min-sync-period` apart (the first change after a quiet spell is synced at once). The
//! table is removed on exit. Runs inside `keelson node --proxy` or as `keelson proxy`, with the
//! node's NetworkPolicy enforcement ([`crate::netpol`]) alongside.

pub mod model;
pub mod nft;

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use keelson_client::health::{Health, ServingArgs};
use keelson_client::informer::Index;
use keelson_client::services::{service_key, slice_service};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};
use parking_lot::Mutex;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use self::nft::{Rendered, Settings};

/// The proxy's flags (kube-proxy's names).
#[derive(clap::Args, Debug, Clone)]
pub struct ProxyArgs {
    /// The range of pod addresses; traffic to a ClusterIP from outside it is masqueraded.
    #[arg(long = "cluster-cidr")]
    pub cluster_cidr: Option<String>,
    /// Masquerade all Service traffic.
    #[arg(long = "masquerade-all")]
    pub masquerade_all: bool,
    /// The least time between two syncs of the rules (a Go duration). kube-proxy's default is
    /// 1s; syncs here rewrite only the Services that changed, and 250ms keeps the p99 network
    /// programming latency under 1 s at 10,000 Services (bench/RESULTS.md).
    #[arg(long = "min-sync-period", default_value = "250ms", value_parser = keelson_client::duration::parse_go_duration)]
    pub min_sync_period: Duration,
    /// Prefix length of one node's pod range (clients in the endpoint's range are
    /// masqueraded, so replies cross the host).
    #[arg(long = "node-cidr-mask-size", default_value_t = 24)]
    pub node_cidr_mask_size: u8,
    /// The port of the proxy's /metrics and /healthz (HTTPS on 127.0.0.1; 0 disables).
    #[arg(long = "proxy-metrics-port", default_value_t = 10249)]
    pub metrics_port: u16,
}

/// `keelson proxy` flags.
#[derive(clap::Args, Debug, Clone)]
pub struct ProxyConfig {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub client: keelson_client::connect::ClientArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub proxy: ProxyArgs,
    /// This node's name (endpoints on it are local); the host name when empty.
    #[arg(long = "hostname-override", default_value = "")]
    pub hostname_override: String,
}

/// The proxy's metrics (kube-proxy's names).
#[derive(Clone)]
pub struct Metrics {
    /// `kubeproxy_sync_proxy_rules_duration_seconds`.
    pub sync: Histogram,
    /// `kubeproxy_network_programming_duration_seconds`: from the change that moved an
    /// endpoint (the slice's `endpoints.kubernetes.io/last-change-trigger-time`) to rules.
    pub programming: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            sync: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            // Fine steps up to the 1 s target, then coarse ones.
            programming: Histogram::new([
                0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9,
                1.0, 1.25, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0,
            ]),
        }
    }
}

/// The annotation with the time of the change an EndpointSlice reflects.
pub const TRIGGER_TIME: &str = "endpoints.kubernetes.io/last-change-trigger-time";

/// The table name for a node (tables are per proxy; nodes may share a host).
pub fn table_name(node: &str) -> String {
    format!("keelson-proxy-{}", crate::process::net::tag(node))
}

struct State {
    services: Store<Service>,
    slices: Index<EndpointSlice>,
    dirty: Mutex<HashSet<String>>,
    wake: Notify,
}

/// Checks that the proxy can run here (root, the `nft` tool, nf_tables).
pub async fn check() -> Result<(), String> {
    let out = tokio::process::Command::new("nft")
        .args(["list", "tables"])
        .output()
        .await
        .map_err(|e| format!("the service proxy needs the nft tool: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "the service proxy cannot use nftables: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// `keelson proxy`: runs until `shutdown`.
pub async fn run_standalone(
    config: ProxyConfig,
    shutdown: CancellationToken,
) -> Result<(), String> {
    let node = if config.hostname_override.is_empty() {
        nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .map_err(|e| format!("hostname: {e}"))?
    } else {
        config.hostname_override.clone()
    };
    check().await?;
    let client = keelson_client::connect::connect(&config.client)
        .await
        .map_err(|e| e.to_string())?;
    run(client, config.proxy, node, shutdown).await
}

/// Runs the proxy for node `node` until `shutdown`, then removes its table. Callers run
/// [`check`] first.
pub async fn run(
    client: Client,
    args: ProxyArgs,
    node: String,
    shutdown: CancellationToken,
) -> Result<(), String> {
    let settings = Settings {
        table: table_name(&node),
        cluster_cidr: args
            .cluster_cidr
            .as_deref()
            .map(|c| {
                crate::process::net::Cidr::parse(c)
                    .map(|c| (c.base, c.prefix))
                    .map_err(|e| format!("--cluster-cidr: {e}"))
            })
            .transpose()?,
        node_mask: args.node_cidr_mask_size.min(32),
        masquerade_all: args.masquerade_all,
    };
    // Forwarding between pod bridges, and NodePorts on 127.0.0.1 (the DNAT'd packet keeps a
    // loopback source until it is masqueraded), as kube-proxy sets them.
    for (path, v) in [
        ("/proc/sys/net/ipv4/ip_forward", "1"),
        ("/proc/sys/net/ipv4/conf/all/route_localnet", "1"),
    ] {
        if let Err(e) = std::fs::write(path, v) {
            tracing::warn!(path, error = %e, "could not set");
        }
    }
    let metrics = Metrics::default();
    let health = Arc::new(Health::new());
    health.register(
        "kubeproxy_sync_proxy_rules_duration_seconds",
        "SyncProxyRules latency in seconds",
        metrics.sync.clone(),
    );
    health.register(
        "kubeproxy_network_programming_duration_seconds",
        "In Cluster Network Programming Latency in seconds",
        metrics.programming.clone(),
    );
    if args.metrics_port != 0 {
        let serving = ServingArgs {
            bind_address: IpAddr::V4(Ipv4Addr::LOCALHOST),
            secure_port: Some(args.metrics_port),
            tls_cert_file: None,
            tls_private_key_file: None,
        };
        keelson_client::health::serve(&serving, args.metrics_port, health, shutdown.clone())
            .await
            .map_err(|e| format!("proxy metrics: {e}"))?;
    }
    let client_for_netpol = client.clone();
    let (mut services, mut slices, index) = keelson_client::services::informers(client);
    let state = Arc::new(State {
        services: services.store(),
        slices: index,
        dirty: Mutex::new(HashSet::new()),
        wake: Notify::new(),
    });
    {
        let st = state.clone();
        services.on_change(move |c| {
            if let Some(k) = service_key(c.object()) {
                st.dirty.lock().insert(k);
                st.wake.notify_one();
            }
        });
    }
    {
        let st = state.clone();
        slices.on_change(move |c| {
            if let Some(k) = slice_service(c.object()) {
                st.dirty.lock().insert(k);
                st.wake.notify_one();
            }
        });
    }
    // NetworkPolicy for this node's pods rides along.
    let netpol = {
        let (client, node, stop) = (client_for_netpol.clone(), node.clone(), shutdown.clone());
        let period = args.min_sync_period;
        tokio::spawn(async move {
            if let Err(e) = crate::netpol::run(client, node, period, stop).await {
                tracing::error!(error = %e, "NetworkPolicy enforcement stopped");
            }
        })
    };
    let (svcs_synced, slices_synced) = (services.synced(), slices.synced());
    tokio::spawn(services.run(shutdown.clone()));
    tokio::spawn(slices.run(shutdown.clone()));
    tokio::select! {
        // Listed into the caches, the index and the handlers: the first sync sees every slice.
        _ = async { tokio::join!(svcs_synced.wait(), slices_synced.wait()) } => {}
        _ = shutdown.cancelled() => {
            let _ = netpol.await;
            return Ok(());
        }
    }
    let mut syncer = Syncer {
        settings,
        node,
        state,
        metrics,
        programmed: HashMap::new(),
        triggers: HashMap::new(),
        subnets: Default::default(),
    };
    let result = syncer.sync_loop(args.min_sync_period, &shutdown).await;
    let table = syncer.settings.table.clone();
    if let Err(e) = nft::apply(&format!("delete table ip {table}\n")).await {
        tracing::warn!(table, error = %e, "could not remove the proxy's table");
    }
    let _ = netpol.await;
    result
}

struct Syncer {
    settings: Settings,
    node: String,
    state: Arc<State>,
    metrics: Metrics,
    /// What the table holds, per Service.
    programmed: HashMap<String, Rendered>,
    /// The newest trigger time seen per Service (each change is measured once).
    triggers: HashMap<String, jiff::Timestamp>,
    /// The endpoint ranges the `same-range` set holds.
    subnets: std::collections::BTreeSet<String>,
}

impl Syncer {
    fn render(&self, key: &str) -> Rendered {
        let (ns, name) = key.split_once('/').unwrap_or(("", key));
        let Some(svc) = self.state.services.get(&ObjectRef::new(name).within(ns)) else {
            return Rendered::default();
        };
        let slices = self.state.slices.get(key);
        let refs: Vec<&EndpointSlice> = slices.iter().map(|s| s.as_ref()).collect();
        let mut out = Rendered::default();
        for sp in model::service_ports(&svc, &refs, &self.node) {
            out.merge(nft::render(&self.settings, &sp));
        }
        out
    }

    /// Trigger times of the slices of `key` that are newer than the last one measured.
    fn new_triggers(&mut self, key: &str) -> Option<jiff::Timestamp> {
        let newest = self
            .state
            .slices
            .get(key)
            .iter()
            .filter_map(|s| {
                s.annotations()
                    .get(TRIGGER_TIME)?
                    .parse::<jiff::Timestamp>()
                    .ok()
            })
            .max()?;
        let seen = self.triggers.get(key);
        if seen.is_some_and(|s| *s >= newest) {
            return None;
        }
        self.triggers.insert(key.to_string(), newest);
        Some(newest)
    }

    async fn sync_loop(
        &mut self,
        min_period: Duration,
        shutdown: &CancellationToken,
    ) -> Result<(), String> {
        let mut full = true;
        let mut last: Option<Instant> = None;
        loop {
            if !full {
                tokio::select! {
                    _ = self.state.wake.notified() => {}
                    _ = shutdown.cancelled() => return Ok(()),
                }
            }
            if let Some(l) = last {
                let wait = min_period.saturating_sub(l.elapsed());
                if !wait.is_zero() {
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = shutdown.cancelled() => return Ok(()),
                    }
                }
            }
            let started = Instant::now();
            last = Some(started);
            let keys: Vec<String> = if full {
                self.state.dirty.lock().clear();
                self.state
                    .services
                    .state()
                    .iter()
                    .filter_map(|s| Some(format!("{}/{}", s.namespace()?, s.name_any())))
                    .collect()
            } else {
                self.state.dirty.lock().drain().collect()
            };
            // The changes this sync carries, read before the rules are rendered (a slice that
            // changes later is measured by the next sync).
            let triggers: Vec<Option<jiff::Timestamp>> =
                keys.iter().map(|k| self.new_triggers(k)).collect();
            let rendered: Vec<(String, Rendered)> =
                keys.iter().map(|k| (k.clone(), self.render(k))).collect();
            let table = self.settings.table.clone();
            // The ranges of all endpoints, with this sync's Services as they will be.
            let subnets = {
                let changed: HashSet<&String> = rendered.iter().map(|(k, _)| k).collect();
                let kept = self
                    .programmed
                    .iter()
                    .filter(|(k, _)| !full && !changed.contains(k))
                    .map(|(_, r)| r);
                nft::subnets(kept.chain(rendered.iter().map(|(_, r)| r)))
            };
            let script = if full {
                let all: Vec<&Rendered> = rendered.iter().map(|(_, r)| r).collect();
                nft::full(&table, &all, &subnets)
            } else {
                let empty = Rendered::default();
                let mut script: String = rendered
                    .iter()
                    .map(|(k, r)| nft::update(&table, self.programmed.get(k).unwrap_or(&empty), r))
                    .collect();
                script.push_str(&nft::subnet_rules(&table, &self.subnets, &subnets));
                script
            };
            let applied = if script.is_empty() {
                // Nothing to write: the rules already say what the changes ask.
                Ok(())
            } else {
                nft::apply(&script).await
            };
            match applied {
                Ok(()) => {
                    if full {
                        self.programmed.clear();
                    }
                    self.subnets = subnets;
                    let now = jiff::Timestamp::now();
                    for ((k, r), t) in rendered.into_iter().zip(triggers) {
                        if let Some(t) = t {
                            let secs = now.duration_since(t).as_secs_f64().max(0.0);
                            self.metrics.programming.observe(secs);
                        }
                        if r == Rendered::default() {
                            self.programmed.remove(&k);
                        } else {
                            self.programmed.insert(k, r);
                        }
                    }
                    self.metrics.sync.observe(started.elapsed().as_secs_f64());
                    if full {
                        tracing::info!(table, services = self.programmed.len(), took = ?started.elapsed(), "proxy rules written");
                    }
                    full = false;
                }
                Err(e) => {
                    tracing::error!(table, error = %e, "syncing proxy rules failed; rewriting the table");
                    if full {
                        // Nothing changed; try again after a pause rather than spin.
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                            _ = shutdown.cancelled() => return Ok(()),
                        }
                    }
                    full = true;
                }
            }
        }
    }
}
