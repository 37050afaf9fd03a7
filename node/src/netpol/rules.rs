//! NetworkPolicy (networking.k8s.io/v1) as nftables rules for the pods of one node.
//!
//! A pod selected by a policy with an Ingress (Egress) type is isolated in that direction: only
//! traffic some rule of some such policy allows gets through (rules add up across policies).
//! The table's `forward` chain (traffic routed through the host, which with `br_netfilter`
//! includes traffic between pods of one bridge) and its `input` chain (pods talking to the host,
//! e.g. the cluster DNS) accept packets of established connections first, then send each packet
//! from an egress-isolated local pod to that pod's egress chain and each packet to an
//! ingress-isolated local pod to its ingress chain; those chains return on an allowed
//! (peer, port) and drop otherwise. Traffic from the host itself to pods (probes) is not
//! filtered, as with most network plugins.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use keelson_scheduler::types::Selector;

/// One rule's peers and ports.
type Rule<'a> = (
    Option<&'a Vec<NetworkPolicyPeer>>,
    Option<&'a Vec<NetworkPolicyPort>>,
);

/// What the rules are computed from.
pub struct Inputs<'a> {
    /// Every NetworkPolicy.
    pub policies: &'a [&'a NetworkPolicy],
    /// Every pod (peers may be anywhere).
    pub pods: &'a [&'a Pod],
    /// Namespace labels by name.
    pub namespaces: &'a BTreeMap<String, BTreeMap<String, String>>,
    /// This node's name (its pods get chains).
    pub node: &'a str,
}

fn pod_ip(p: &Pod) -> Option<&str> {
    p.status
        .as_ref()?
        .pod_ip
        .as_deref()
        .filter(|ip| !ip.is_empty() && !ip.contains(':'))
}

fn host_network(p: &Pod) -> bool {
    p.spec
        .as_ref()
        .and_then(|s| s.host_network)
        .unwrap_or(false)
}

fn labels(p: &Pod) -> BTreeMap<String, String> {
    p.metadata.labels.clone().unwrap_or_default()
}

fn ns_of(p: &Pod) -> &str {
    p.metadata.namespace.as_deref().unwrap_or("default")
}

fn selector(s: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector) -> Selector {
    // A malformed selector (unknown operator; the apiserver refuses them) selects nothing.
    Selector::from_label_selector(Some(s)).unwrap_or_else(Selector::nothing)
}

/// The policy types in force: `policyTypes`, or as upstream defaults them (Ingress always,
/// Egress when there are egress rules).
fn types(p: &NetworkPolicy) -> (bool, bool) {
    let spec = p.spec.as_ref();
    match spec.and_then(|s| s.policy_types.as_ref()) {
        Some(t) if !t.is_empty() => (
            t.iter().any(|x| x == "Ingress"),
            t.iter().any(|x| x == "Egress"),
        ),
        _ => (
            true,
            spec.and_then(|s| s.egress.as_ref())
                .is_some_and(|e| !e.is_empty()),
        ),
    }
}

fn selects(p: &NetworkPolicy, pod: &Pod) -> bool {
    p.metadata.namespace.as_deref().unwrap_or("default") == ns_of(pod)
        && p.spec.as_ref().is_some_and(|s| {
            s.pod_selector
                .as_ref()
                .map_or_else(Selector::everything, selector)
                .matches(&labels(pod))
        })
}

/// The peers a rule names.
enum Peer<'a> {
    /// No `from`/`to`: anyone.
    Any,
    /// An ipBlock, as its match.
    Block(String),
    /// The pods selected (none: the peer selects no address; the rule allows nothing through
    /// it).
    Pods(Vec<&'a Pod>),
}

impl Peer<'_> {
    /// The match on the peer side (`ip saddr ...` / `ip daddr ...`); `None` for no address.
    fn matcher(&self, field: &str) -> Option<String> {
        match self {
            Peer::Any => Some(String::new()),
            Peer::Block(m) => Some(m.clone()),
            Peer::Pods(pods) => {
                let ips: BTreeSet<&str> = pods.iter().filter_map(|p| pod_ip(p)).collect();
                (!ips.is_empty()).then(|| {
                    format!(
                        "{field} {{ {} }}",
                        ips.into_iter().collect::<Vec<_>>().join(", ")
                    )
                })
            }
        }
    }
}

fn peer_of<'a>(
    peer: &NetworkPolicyPeer,
    policy_ns: &str,
    inp: &Inputs<'a>,
    field: &str,
) -> Peer<'a> {
    if let Some(b) = &peer.ip_block {
        let mut m = format!("{field} {}", b.cidr);
        let except: Vec<&String> = b.except.iter().flatten().collect();
        if !except.is_empty() {
            let list: Vec<&str> = except.iter().map(|s| s.as_str()).collect();
            let _ = write!(m, " {field} != {{ {} }}", list.join(", "));
        }
        return Peer::Block(m);
    }
    let ns_sel = peer.namespace_selector.as_ref().map(selector);
    let pod_sel = peer
        .pod_selector
        .as_ref()
        .map(selector)
        .unwrap_or_else(Selector::everything);
    let empty = BTreeMap::new();
    Peer::Pods(
        inp.pods
            .iter()
            .copied()
            .filter(|p| !host_network(p) && pod_ip(p).is_some())
            .filter(|p| match &ns_sel {
                Some(sel) => sel.matches(inp.namespaces.get(ns_of(p)).unwrap_or(&empty)),
                None => ns_of(p) == policy_ns,
            })
            .filter(|p| pod_sel.matches(&labels(p)))
            .collect(),
    )
}

fn named(p: &NetworkPolicyPort) -> bool {
    matches!(p.port, Some(IntOrString::String(_)))
}

/// The port matches of a rule (each alone is enough); `[""]` for any port. Named ports are
/// looked up in `named_in` (the destination pods' containers).
fn port_matches(ports: Option<&Vec<NetworkPolicyPort>>, named_in: &[&Pod]) -> Vec<String> {
    let Some(ports) = ports.filter(|p| !p.is_empty()) else {
        return vec![String::new()];
    };
    let mut out = BTreeSet::new();
    for p in ports {
        let proto = match p.protocol.as_deref().unwrap_or("TCP") {
            "UDP" => "udp",
            "SCTP" => "sctp",
            _ => "tcp",
        };
        match &p.port {
            None => {
                out.insert(format!("meta l4proto {proto}"));
            }
            Some(IntOrString::Int(n)) => match p.end_port {
                Some(end) if end > *n => {
                    out.insert(format!("{proto} dport {n}-{end}"));
                }
                _ => {
                    out.insert(format!("{proto} dport {n}"));
                }
            },
            Some(IntOrString::String(name)) => {
                for pod in named_in {
                    for c in pod.spec.iter().flat_map(|s| s.containers.iter()) {
                        for cp in c.ports.iter().flatten() {
                            let cp_proto = cp.protocol.as_deref().unwrap_or("TCP");
                            if cp.name.as_deref() == Some(name.as_str())
                                && cp_proto == p.protocol.as_deref().unwrap_or("TCP")
                            {
                                out.insert(format!("{proto} dport {}", cp.container_port));
                            }
                        }
                    }
                }
            }
        }
    }
    out.into_iter().collect()
}

/// The whole table: a transaction that replaces it.
pub fn render(table: &str, inp: &Inputs) -> String {
    let local: Vec<&Pod> = inp
        .pods
        .iter()
        .copied()
        .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(inp.node))
        .filter(|p| !host_network(p) && pod_ip(p).is_some())
        .collect();
    let mut chains: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut ingress_map = Vec::new();
    let mut egress_map = Vec::new();
    for pod in &local {
        let ip = pod_ip(pod).unwrap_or_default();
        let uid = pod.metadata.uid.as_deref().unwrap_or(ip);
        let tag = crate::process::net::tag(uid);
        let selecting: Vec<&&NetworkPolicy> =
            inp.policies.iter().filter(|p| selects(p, pod)).collect();
        for (ingress, chain) in [(true, format!("in-{tag}")), (false, format!("out-{tag}"))] {
            let isolating: Vec<&&&NetworkPolicy> = selecting
                .iter()
                .filter(|p| {
                    let (i, e) = types(p);
                    if ingress { i } else { e }
                })
                .collect();
            if isolating.is_empty() {
                continue;
            }
            let mut rules = Vec::new();
            for p in isolating {
                let policy_ns = p.metadata.namespace.as_deref().unwrap_or("default");
                let spec = p.spec.as_ref();
                let (field, rule_list): (&str, Vec<Rule>) = if ingress {
                    (
                        "ip saddr",
                        spec.and_then(|s| s.ingress.as_ref())
                            .into_iter()
                            .flatten()
                            .map(|r| (r.from.as_ref(), r.ports.as_ref()))
                            .collect(),
                    )
                } else {
                    (
                        "ip daddr",
                        spec.and_then(|s| s.egress.as_ref())
                            .into_iter()
                            .flatten()
                            .map(|r| (r.to.as_ref(), r.ports.as_ref()))
                            .collect(),
                    )
                };
                for (peers, ports) in rule_list {
                    let peers: Vec<Peer> = match peers.filter(|p| !p.is_empty()) {
                        None => vec![Peer::Any],
                        Some(ps) => ps
                            .iter()
                            .map(|peer| peer_of(peer, policy_ns, inp, field))
                            .collect(),
                    };
                    let mut allow = |peer_m: &str, port_m: &str| {
                        let m = [peer_m, port_m]
                            .iter()
                            .filter(|s| !s.is_empty())
                            .copied()
                            .collect::<Vec<_>>()
                            .join(" ");
                        rules.push(format!("{m} return").trim().to_string());
                    };
                    // A named port is the destination's: on ingress this pod's; on egress each
                    // peer pod's own, so it is allowed per peer (an ipBlock has none).
                    let egress_named = !ingress && ports.is_some_and(|ps| ps.iter().any(named));
                    if !egress_named {
                        let port_ms = port_matches(ports, std::slice::from_ref(pod));
                        for m in peers.iter().filter_map(|p| p.matcher(field)) {
                            for port in &port_ms {
                                allow(&m, port);
                            }
                        }
                        continue;
                    }
                    let (by_name, numeric): (Vec<NetworkPolicyPort>, Vec<NetworkPolicyPort>) =
                        ports.into_iter().flatten().cloned().partition(named);
                    if !numeric.is_empty() {
                        let port_ms = port_matches(Some(&numeric), &[]);
                        for m in peers.iter().filter_map(|p| p.matcher(field)) {
                            for port in &port_ms {
                                allow(&m, port);
                            }
                        }
                    }
                    for peer in &peers {
                        let pods: Vec<&Pod> = match peer {
                            Peer::Pods(v) => v.clone(),
                            Peer::Any => inp
                                .pods
                                .iter()
                                .copied()
                                .filter(|p| !host_network(p))
                                .collect(),
                            Peer::Block(_) => continue,
                        };
                        for p in pods {
                            let Some(ip) = pod_ip(p) else { continue };
                            for port in port_matches(Some(&by_name), &[p]) {
                                allow(&format!("{field} {ip}"), &port);
                            }
                        }
                    }
                }
            }
            rules.sort();
            rules.dedup();
            let name = format!(
                "{}/{} {}",
                ns_of(pod),
                pod.metadata.name.as_deref().unwrap_or_default(),
                if ingress { "ingress" } else { "egress" }
            );
            rules.push(format!("drop comment \"{name}\""));
            if ingress {
                ingress_map.push(format!("{ip} : jump {chain}"));
            } else {
                egress_map.push(format!("{ip} : jump {chain}"));
            }
            chains.insert(chain, rules);
        }
    }
    let mut out = format!("add table ip {table}\ndelete table ip {table}\ntable ip {table} {{\n");
    for (m, elems) in [("ingress-pods", &ingress_map), ("egress-pods", &egress_map)] {
        let _ = write!(out, "  map {m} {{ type ipv4_addr : verdict;");
        if !elems.is_empty() {
            let _ = write!(out, " elements = {{ {} }};", elems.join(", "));
        }
        out.push_str(" }\n");
    }
    for (name, rules) in &chains {
        let _ = writeln!(out, "  chain {name} {{ {}; }}", rules.join("; "));
    }
    out.push_str(
        "  chain forward { type filter hook forward priority 0; policy accept; \
         ct state established,related accept; ip saddr vmap @egress-pods; ip daddr vmap @ingress-pods; }\n\
         \x20 chain input { type filter hook input priority 0; policy accept; \
         ct state established,related accept; ip saddr vmap @egress-pods; }\n}\n",
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, ns: &str, node: &str, ip: &str, labels: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{name}"), "labels": labels},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "x",
                "ports": [{"name": "http", "containerPort": 8080}]}]},
            "status": {"podIP": ip},
        }))
        .unwrap()
    }

    fn policy(v: serde_json::Value) -> NetworkPolicy {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn isolation_peers_ports_and_namespaces() {
        let db = pod("db", "prod", "n1", "10.244.1.5", json!({"app": "db"}));
        let web = pod(
            "web",
            "prod",
            "n2",
            "10.244.2.6",
            json!({"role": "frontend"}),
        );
        let other = pod("x", "dev", "n2", "10.244.2.7", json!({"role": "frontend"}));
        let free = pod("free", "prod", "n1", "10.244.1.9", json!({"app": "free"}));
        let mut nss = BTreeMap::new();
        nss.insert("prod".to_string(), BTreeMap::new());
        nss.insert(
            "dev".to_string(),
            [("team".to_string(), "x".to_string())].into(),
        );
        let deny = policy(json!({"metadata": {"name": "deny", "namespace": "prod"},
            "spec": {"podSelector": {"matchLabels": {"app": "db"}}}}));
        let allow = policy(json!({"metadata": {"name": "allow", "namespace": "prod"},
        "spec": {"podSelector": {"matchLabels": {"app": "db"}}, "ingress": [
            {"from": [{"podSelector": {"matchLabels": {"role": "frontend"}}}],
             "ports": [{"port": "http"}]},
            {"from": [{"namespaceSelector": {"matchLabels": {"team": "x"}}},
                      {"ipBlock": {"cidr": "192.168.0.0/16", "except": ["192.168.1.0/24"]}}],
             "ports": [{"port": 9000, "endPort": 9010, "protocol": "UDP"}]},
        ]}}));
        let pods = [&db, &web, &other, &free];
        let policies = [&deny, &allow];
        let inp = Inputs {
            policies: &policies,
            pods: &pods,
            namespaces: &nss,
            node: "n1",
        };
        let t = render("np", &inp);
        // Only the selected local pod has a chain; isolation in ingress only.
        let db_chain = format!("in-{}", crate::process::net::tag("uid-db"));
        assert!(t.contains(&format!("10.244.1.5 : jump {db_chain}")), "{t}");
        assert!(
            !t.contains("10.244.1.9 :"),
            "unselected pods are not isolated"
        );
        assert!(!t.contains("out-"), "no egress isolation");
        let chain = t
            .lines()
            .find(|l| l.contains(&format!("chain {db_chain}")))
            .unwrap();
        assert!(
            chain.contains("ip saddr { 10.244.2.6 } tcp dport 8080 return"),
            "{chain}"
        );
        assert!(
            chain.contains("ip saddr { 10.244.2.7 } udp dport 9000-9010 return"),
            "{chain}"
        );
        assert!(chain.contains(
            "ip saddr 192.168.0.0/16 ip saddr != { 192.168.1.0/24 } udp dport 9000-9010 return"
        ));
        assert!(
            chain
                .trim_end()
                .ends_with("drop comment \"prod/db ingress\"; }")
        );
        // Default deny alone: nothing but the drop.
        let policies = [&deny];
        let inp = Inputs {
            policies: &policies,
            ..inp
        };
        let t = render("np", &inp);
        let chain = t
            .lines()
            .find(|l| l.contains(&format!("chain {db_chain}")))
            .unwrap();
        assert_eq!(
            chain.trim(),
            format!("chain {db_chain} {{ drop comment \"prod/db ingress\"; }}")
        );
    }

    #[test]
    fn egress_named_ports_are_each_peers_own() {
        let web = pod("web", "prod", "n1", "10.244.1.6", json!({"app": "web"}));
        // Both peers match; only `db` calls a port "http" (8080, from the helper).
        let db = pod("db", "prod", "n2", "10.244.2.5", json!({"tier": "back"}));
        let mut cache = pod("cache", "prod", "n2", "10.244.2.7", json!({"tier": "back"}));
        cache.spec.as_mut().unwrap().containers[0].ports = Some(vec![
            serde_json::from_value(json!({"name": "redis", "containerPort": 6379})).unwrap(),
        ]);
        let egress = policy(json!({"metadata": {"name": "e", "namespace": "prod"},
            "spec": {"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Egress"],
                "egress": [{"to": [{"podSelector": {"matchLabels": {"tier": "back"}}},
                                   {"ipBlock": {"cidr": "192.168.0.0/16"}}],
                            "ports": [{"port": "http"}, {"port": 53, "protocol": "UDP"}]}]}}));
        let pods = [&web, &db, &cache];
        let policies = [&egress];
        let nss = BTreeMap::new();
        let t = render(
            "np",
            &Inputs {
                policies: &policies,
                pods: &pods,
                namespaces: &nss,
                node: "n1",
            },
        );
        let out = t.lines().find(|l| l.contains("chain out-")).unwrap();
        assert!(
            out.contains("ip daddr 10.244.2.5 tcp dport 8080 return"),
            "{out}"
        );
        assert!(
            !out.contains("10.244.2.7 tcp dport 8080"),
            "cache has no port named http: {out}"
        );
        assert!(
            out.contains("ip daddr { 10.244.2.5, 10.244.2.7 } udp dport 53 return"),
            "{out}"
        );
        assert!(
            out.contains("ip daddr 192.168.0.0/16 udp dport 53 return"),
            "{out}"
        );
        assert!(
            !out.contains("192.168.0.0/16 tcp"),
            "an ipBlock has no named ports: {out}"
        );
    }

    #[test]
    fn egress_rules_and_allow_all() {
        let web = pod("web", "prod", "n1", "10.244.1.6", json!({"app": "web"}));
        let db = pod("db", "prod", "n2", "10.244.2.5", json!({"app": "db"}));
        let egress = policy(json!({"metadata": {"name": "e", "namespace": "prod"},
            "spec": {"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Egress"],
                "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "db"}}}]},
                           {"ports": [{"port": 53, "protocol": "UDP"}]}]}}));
        let all = policy(json!({"metadata": {"name": "all", "namespace": "prod"},
            "spec": {"podSelector": {}, "ingress": [{}]}}));
        let pods = [&web, &db];
        let policies = [&egress, &all];
        let nss = BTreeMap::new();
        let t = render(
            "np",
            &Inputs {
                policies: &policies,
                pods: &pods,
                namespaces: &nss,
                node: "n1",
            },
        );
        let out = t.lines().find(|l| l.contains("chain out-")).unwrap();
        assert!(out.contains("ip daddr { 10.244.2.5 } return"), "{out}");
        assert!(out.contains("udp dport 53 return"), "{out}");
        // `ingress: [{}]` allows everything (still an ingress chain, with a bare return).
        let inc = t.lines().find(|l| l.contains("chain in-")).unwrap();
        assert!(inc.contains("{ return; drop"), "{inc}");
    }
}
