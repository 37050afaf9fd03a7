//! What the proxy programs, per Service port: its virtual addresses, its NodePort, its
//! policies, and the endpoints that take new connections — worked out from a Service and its
//! EndpointSlices as kube-proxy does.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// A transport protocol nftables knows by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

impl Proto {
    /// From a Kubernetes protocol name (TCP when absent).
    pub fn parse(s: Option<&str>) -> Option<Self> {
        match s.unwrap_or("TCP") {
            "TCP" => Some(Proto::Tcp),
            "UDP" => Some(Proto::Udp),
            "SCTP" => Some(Proto::Sctp),
            _ => None,
        }
    }

    /// The nftables name.
    pub fn nft(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Sctp => "sctp",
        }
    }
}

/// One endpoint of a Service port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Endpoint {
    /// Address.
    pub ip: Ipv4Addr,
    /// Port.
    pub port: u16,
    /// Ready (unset in the slice counts as ready).
    pub ready: bool,
    /// Serving (defaults to ready).
    pub serving: bool,
    /// Terminating.
    pub terminating: bool,
    /// On this node.
    pub local: bool,
}

/// One port of a Service, as the proxy sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    /// "ns/name:port-name/proto" — unique per port.
    pub key: String,
    /// The IPv4 ClusterIPs.
    pub cluster_ips: Vec<Ipv4Addr>,
    /// External IPs and load-balancer ingress addresses (treated as external traffic).
    pub external_ips: Vec<Ipv4Addr>,
    /// Service port.
    pub port: u16,
    /// Protocol.
    pub proto: Proto,
    /// NodePort, when the Service has one.
    pub node_port: Option<u16>,
    /// ClientIP session affinity timeout in seconds, when on.
    pub affinity_timeout: Option<u32>,
    /// `internalTrafficPolicy: Local`.
    pub internal_local: bool,
    /// `externalTrafficPolicy: Local` (NodePort / LoadBalancer only).
    pub external_local: bool,
    /// Every endpoint the slices list for this port, sorted.
    pub endpoints: Vec<Endpoint>,
}

impl ServicePort {
    /// Endpoints for new connections: the ready ones, or, when none is ready, the serving ones
    /// that are terminating (kube-proxy's ProxyTerminatingEndpoints).
    fn usable(&self) -> Vec<&Endpoint> {
        let ready: Vec<&Endpoint> = self.endpoints.iter().filter(|e| e.ready).collect();
        if !ready.is_empty() {
            return ready;
        }
        self.endpoints
            .iter()
            .filter(|e| e.serving && e.terminating)
            .collect()
    }

    /// Endpoints for traffic from inside the cluster (ClusterIP).
    pub fn cluster_endpoints(&self) -> Vec<&Endpoint> {
        let all = self.usable();
        if self.internal_local {
            all.into_iter().filter(|e| e.local).collect()
        } else {
            all
        }
    }

    /// Endpoints for external traffic (NodePort, external IPs) when the policy is Local.
    pub fn local_endpoints(&self) -> Vec<&Endpoint> {
        self.usable().into_iter().filter(|e| e.local).collect()
    }

    /// Whether the port has any endpoint at all for new connections (otherwise: reject).
    pub fn has_endpoints(&self) -> bool {
        !self.usable().is_empty()
    }
}

/// The ports of a Service that the proxy handles (none for ExternalName, headless or
/// address-less Services), with their endpoints from `slices`. `node` is this node's name.
pub fn service_ports(svc: &Service, slices: &[&EndpointSlice], node: &str) -> Vec<ServicePort> {
    let (Some(ns), Some(name), Some(spec)) = (
        svc.metadata.namespace.as_deref(),
        svc.metadata.name.as_deref(),
        svc.spec.as_ref(),
    ) else {
        return Vec::new();
    };
    if spec.type_.as_deref() == Some("ExternalName") {
        return Vec::new();
    }
    let cluster_ips: Vec<Ipv4Addr> = spec
        .cluster_ips
        .clone()
        .or_else(|| spec.cluster_ip.clone().map(|c| vec![c]))
        .unwrap_or_default()
        .iter()
        .filter_map(|ip| ip.parse().ok())
        .collect();
    if cluster_ips.is_empty() {
        return Vec::new();
    }
    let mut external_ips: Vec<Ipv4Addr> = spec
        .external_ips
        .iter()
        .flatten()
        .filter_map(|ip| ip.parse().ok())
        .collect();
    if let Some(lbs) = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|l| l.ingress.as_ref())
    {
        external_ips.extend(
            lbs.iter()
                .filter_map(|i| i.ip.as_deref())
                .filter_map(|ip| ip.parse::<Ipv4Addr>().ok()),
        );
    }
    let affinity_timeout = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
        spec.session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds)
            .map(|t| t.clamp(1, 86400) as u32)
            .unwrap_or(10800)
    });
    let external = matches!(spec.type_.as_deref(), Some("NodePort" | "LoadBalancer"))
        || !external_ips.is_empty();
    let mut out = Vec::new();
    for p in spec.ports.iter().flatten() {
        let Some(proto) = Proto::parse(p.protocol.as_deref()) else {
            continue;
        };
        let pname = p.name.clone().unwrap_or_default();
        // By address and port: one address may serve on several ports (apiservers of one
        // host in the `kubernetes` slices).
        let mut eps: BTreeMap<(Ipv4Addr, u16), Endpoint> = BTreeMap::new();
        for s in slices {
            if s.address_type != "IPv4" {
                continue;
            }
            let Some(sp) = s.ports.iter().flatten().find(|sp| {
                sp.name.clone().unwrap_or_default() == pname
                    && Proto::parse(sp.protocol.as_deref()) == Some(proto)
            }) else {
                continue;
            };
            let Some(port) = sp.port.and_then(|n| u16::try_from(n).ok()) else {
                continue;
            };
            for e in &s.endpoints {
                let c = e.conditions.as_ref();
                let ready = c.and_then(|c| c.ready).unwrap_or(true);
                let ep = |ip: Ipv4Addr| Endpoint {
                    ip,
                    port,
                    ready,
                    serving: c.and_then(|c| c.serving).unwrap_or(ready),
                    terminating: c.and_then(|c| c.terminating).unwrap_or(false),
                    local: e.node_name.as_deref() == Some(node),
                };
                for a in &e.addresses {
                    if let Ok(ip) = a.parse::<Ipv4Addr>() {
                        // Listed twice (slices mid-update): the ready entry wins.
                        let new = ep(ip);
                        match eps.get(&(ip, port)) {
                            Some(old) if old.ready || !new.ready => {}
                            _ => {
                                eps.insert((ip, port), new);
                            }
                        }
                    }
                }
            }
        }
        out.push(ServicePort {
            key: format!("{ns}/{name}:{pname}/{}", proto.nft()),
            cluster_ips: cluster_ips.clone(),
            external_ips: external_ips.clone(),
            port: p.port as u16,
            proto,
            node_port: p
                .node_port
                .filter(|_| matches!(spec.type_.as_deref(), Some("NodePort" | "LoadBalancer")))
                .and_then(|n| u16::try_from(n).ok()),
            affinity_timeout,
            internal_local: spec.internal_traffic_policy.as_deref() == Some("Local"),
            external_local: external && spec.external_traffic_policy.as_deref() == Some("Local"),
            endpoints: eps.into_values().collect(),
        });
    }
    out
}
