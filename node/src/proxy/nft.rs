//! The proxy's nftables rules, in the shape of kube-proxy's nftables mode: one table of our own
//! (`ip` family) whose base chains hook NAT and filtering; verdict maps from (address,
//! protocol, port) to a chain per Service port; a chain per endpoint that DNATs; masquerading by
//! packet mark. A Service's rules are rendered as a [`Rendered`] set of chains, sets and map
//! elements; updates are the difference between what is programmed and what should be, applied
//! in one `nft -f` transaction.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::net::Ipv4Addr;

use super::model::{Endpoint, ServicePort};
use crate::process::net::tag;

/// The mark that asks for masquerading (kube-proxy's).
pub const MASQ_MARK: u32 = 0x4000;

/// Choices that shape every Service's rules.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The table's name (one per proxy: several nodes may share a host).
    pub table: String,
    /// Traffic to a ClusterIP from outside this range is masqueraded.
    pub cluster_cidr: Option<(Ipv4Addr, u8)>,
    /// Prefix of one node's pod range: a client in the same range as the endpoint (same node
    /// bridge, the hairpin case included) is masqueraded so the reply comes back through the
    /// host and its connection tracking, with or without `br_netfilter`.
    pub node_mask: u8,
    /// Masquerade all Service traffic.
    pub masquerade_all: bool,
}

/// The objects one Service's rules consist of.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rendered {
    /// Chain name → its rules.
    pub chains: BTreeMap<String, Vec<String>>,
    /// Set name → declaration (the part in braces).
    pub sets: BTreeMap<String, String>,
    /// (map, key) → verdict.
    pub elements: BTreeMap<(String, String), String>,
    /// Endpoint address ranges (one node's pods each): a client in the range of the endpoint
    /// it reached is masqueraded (see [`Settings::node_mask`]).
    pub subnets: std::collections::BTreeSet<String>,
}

impl Rendered {
    /// Adds another port's objects.
    pub fn merge(&mut self, other: Rendered) {
        self.chains.extend(other.chains);
        self.sets.extend(other.sets);
        self.elements.extend(other.elements);
        self.subnets.extend(other.subnets);
    }
}

fn masked(ip: Ipv4Addr, prefix: u8) -> Ipv4Addr {
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix.min(32))
    };
    Ipv4Addr::from(u32::from(ip) & mask)
}

fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('"', ""))
}

/// Renders one Service port.
pub fn render(s: &Settings, sp: &ServicePort) -> Rendered {
    let mut r = Rendered::default();
    let h = tag(&sp.key);
    let svc = format!("svc-{h}");
    let ext = format!("ext-{h}");
    let svl = format!("svl-{h}");
    let proto = sp.proto.nft();
    let comment = format!("comment {}", quote(&sp.key));
    let external = sp.node_port.is_some() || !sp.external_ips.is_empty();
    if !sp.has_endpoints() {
        for ip in sp.cluster_ips.iter().chain(&sp.external_ips) {
            r.elements.insert(
                (
                    "no-endpoint-services".into(),
                    format!("{ip} . {proto} . {}", sp.port),
                ),
                "goto reject-chain".into(),
            );
        }
        if let Some(np) = sp.node_port {
            r.elements.insert(
                ("no-endpoint-nodeports".into(), format!("{proto} . {np}")),
                "goto reject-chain".into(),
            );
        }
        return r;
    }
    // Endpoints are chosen by a run of rules, the i-th taking its endpoint with probability
    // 1/(n-i) (uniform overall), as kube-proxy's iptables mode does: no per-rule anonymous map
    // and no chain per endpoint, which keeps a 10,000-Service table cheap for the kernel.
    let aff_set = |e: &Endpoint, t: u32| {
        format!(
            "aff-{}-{t}",
            tag(&format!("{}|{}:{}", sp.key, e.ip, e.port))
        )
    };
    let cluster = sp.cluster_endpoints();
    let local = if sp.external_local {
        sp.local_endpoints()
    } else {
        Vec::new()
    };
    for e in cluster.iter().chain(&local) {
        if !s.masquerade_all {
            r.subnets
                .insert(format!("{}/{}", masked(e.ip, s.node_mask), s.node_mask));
        }
        if let Some(t) = sp.affinity_timeout {
            r.sets.insert(
                aff_set(e, t),
                format!("type ipv4_addr; flags dynamic,timeout; timeout {t}s;"),
            );
        }
    }
    let dnat = |e: &Endpoint| {
        let remember = sp
            .affinity_timeout
            .map(|t| format!("update @{} {{ ip saddr }} ", aff_set(e, t)))
            .unwrap_or_default();
        format!(
            "{remember}meta l4proto {proto} dnat to {}:{} {comment}",
            e.ip, e.port
        )
    };
    let pick = |eps: &[&Endpoint], rules: &mut Vec<String>| {
        if eps.is_empty() {
            rules.push(format!("drop {comment}"));
            return;
        }
        if let Some(t) = sp.affinity_timeout {
            for e in eps {
                rules.push(format!("ip saddr @{} {}", aff_set(e, t), dnat(e)));
            }
        }
        let n = eps.len();
        for (i, e) in eps.iter().enumerate() {
            if i + 1 < n {
                rules.push(format!("numgen random mod {} == 0 {}", n - i, dnat(e)));
            } else {
                rules.push(dnat(e));
            }
        }
    };
    let mut svc_rules = Vec::new();
    if s.masquerade_all {
        svc_rules.push("jump mark-for-masquerade".to_string());
    } else if let Some((base, prefix)) = s.cluster_cidr {
        svc_rules.push(format!(
            "ip saddr != {}/{prefix} jump mark-for-masquerade",
            masked(base, prefix)
        ));
    }
    pick(&cluster, &mut svc_rules);
    r.chains.insert(svc.clone(), svc_rules);
    for ip in &sp.cluster_ips {
        r.elements.insert(
            (
                "service-ips".into(),
                format!("{ip} . {proto} . {}", sp.port),
            ),
            format!("goto {svc}"),
        );
    }
    if external {
        let mut ext_rules = Vec::new();
        if sp.external_local {
            // Traffic from this host keeps using every endpoint (as upstream); the rest only
            // local ones, with the client's address kept.
            ext_rules.push("fib saddr type local jump mark-for-masquerade".to_string());
            ext_rules.push(format!("fib saddr type local goto {svc}"));
            ext_rules.push(format!("goto {svl}"));
            let mut svl_rules = Vec::new();
            pick(&local, &mut svl_rules);
            r.chains.insert(svl, svl_rules);
        } else {
            ext_rules.push("jump mark-for-masquerade".to_string());
            ext_rules.push(format!("goto {svc}"));
        }
        r.chains.insert(ext.clone(), ext_rules);
        for ip in &sp.external_ips {
            r.elements.insert(
                (
                    "service-ips".into(),
                    format!("{ip} . {proto} . {}", sp.port),
                ),
                format!("goto {ext}"),
            );
        }
        if let Some(np) = sp.node_port {
            r.elements.insert(
                ("service-nodeports".into(), format!("{proto} . {np}")),
                format!("goto {ext}"),
            );
        }
    }
    r
}

/// The table's fixed part: maps, hooks, masquerading, rejection.
fn base(table: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "table ip {table} {{");
    for (m, key) in [
        ("service-ips", "ipv4_addr . inet_proto . inet_service"),
        ("service-nodeports", "inet_proto . inet_service"),
        (
            "no-endpoint-services",
            "ipv4_addr . inet_proto . inet_service",
        ),
        ("no-endpoint-nodeports", "inet_proto . inet_service"),
    ] {
        let _ = writeln!(out, "  map {m} {{ type {key} : verdict; }}");
    }
    let _ = writeln!(
        out,
        "  set same-range {{ type ipv4_addr . ipv4_addr; flags interval; }}"
    );
    let lookups = "ip daddr . meta l4proto . th dport vmap @service-ips; \
                   fib daddr type local meta l4proto . th dport vmap @service-nodeports;";
    let rejects = "ct state new ip daddr . meta l4proto . th dport vmap @no-endpoint-services; \
                   ct state new fib daddr type local meta l4proto . th dport vmap @no-endpoint-nodeports;";
    let _ = writeln!(
        out,
        "  chain nat-prerouting {{ type nat hook prerouting priority dstnat; policy accept; jump services; }}\n\
         \x20 chain nat-output {{ type nat hook output priority -100; policy accept; jump services; }}\n\
         \x20 chain nat-postrouting {{ type nat hook postrouting priority srcnat; policy accept; ct status dnat ip saddr . ip daddr @same-range masquerade fully-random; jump masquerading; }}\n\
         \x20 chain filter-input {{ type filter hook input priority -110; policy accept; {rejects} }}\n\
         \x20 chain filter-forward {{ type filter hook forward priority -110; policy accept; ct state new ip daddr . meta l4proto . th dport vmap @no-endpoint-services; }}\n\
         \x20 chain filter-output {{ type filter hook output priority -110; policy accept; {rejects} }}\n\
         \x20 chain services {{ {lookups} }}\n\
         \x20 chain masquerading {{ meta mark & {MASQ_MARK:#x} == 0 return; meta mark set meta mark ^ {MASQ_MARK:#x}; masquerade fully-random; }}\n\
         \x20 chain mark-for-masquerade {{ meta mark set meta mark | {MASQ_MARK:#x}; }}\n\
         \x20 chain reject-chain {{ reject; }}"
    );
    out.push_str("}\n");
    out
}

fn add_objects(out: &mut String, table: &str, r: &Rendered, old: Option<&Rendered>) {
    for (name, decl) in &r.sets {
        if old.is_none_or(|o| !o.sets.contains_key(name)) {
            let _ = writeln!(out, "add set ip {table} {name} {{ {decl} }}");
        }
    }
    for name in r.chains.keys() {
        if old.is_none_or(|o| !o.chains.contains_key(name)) {
            let _ = writeln!(out, "add chain ip {table} {name}");
        }
    }
    for (name, rules) in &r.chains {
        let same = old.is_some_and(|o| o.chains.get(name) == Some(rules));
        if same {
            continue;
        }
        if old.is_some_and(|o| o.chains.contains_key(name)) {
            let _ = writeln!(out, "flush chain ip {table} {name}");
        }
        for rule in rules {
            let _ = writeln!(out, "add rule ip {table} {name} {rule}");
        }
    }
}

/// The union of the endpoint ranges of `all`.
pub fn subnets<'a>(all: impl Iterator<Item = &'a Rendered>) -> std::collections::BTreeSet<String> {
    all.flat_map(|r| r.subnets.iter().cloned()).collect()
}

/// Updates the set of ranges whose Service traffic between two of their own pods is
/// masqueraded (the reply would otherwise go straight back over the bridge, past the host's
/// connection tracking): elements `range . range`.
pub fn subnet_rules(
    table: &str,
    old: &std::collections::BTreeSet<String>,
    new: &std::collections::BTreeSet<String>,
) -> String {
    let mut out = String::new();
    let gone: Vec<String> = old.difference(new).map(|n| format!("{n} . {n}")).collect();
    let added: Vec<String> = new.difference(old).map(|n| format!("{n} . {n}")).collect();
    if !gone.is_empty() {
        let _ = writeln!(
            out,
            "delete element ip {table} same-range {{ {} }}",
            gone.join(", ")
        );
    }
    if !added.is_empty() {
        let _ = writeln!(
            out,
            "add element ip {table} same-range {{ {} }}",
            added.join(", ")
        );
    }
    out
}

/// The transaction that replaces the whole table with `all` (atomically: connections in flight
/// keep their translations, new ones see the new rules).
/// `subnets` is [`subnets`] of `all`.
pub fn full(
    table: &str,
    all: &[&Rendered],
    subnets: &std::collections::BTreeSet<String>,
) -> String {
    let mut out = format!("add table ip {table}\ndelete table ip {table}\n");
    out.push_str(&base(table));
    out.push_str(&subnet_rules(table, &Default::default(), subnets));
    for r in all {
        add_objects(&mut out, table, r, None);
    }
    for r in all {
        for ((map, key), verdict) in &r.elements {
            let _ = writeln!(out, "add element ip {table} {map} {{ {key} : {verdict} }}");
        }
    }
    out
}

/// The commands that turn `old` into `new` (one Service), or nothing when they are equal.
pub fn update(table: &str, old: &Rendered, new: &Rendered) -> String {
    if old == new {
        return String::new();
    }
    let mut out = String::new();
    add_objects(&mut out, table, new, Some(old));
    for ((map, key), verdict) in &old.elements {
        if new.elements.get(&(map.clone(), key.clone())) != Some(verdict) {
            let _ = writeln!(out, "delete element ip {table} {map} {{ {key} }}");
        }
    }
    for ((map, key), verdict) in &new.elements {
        if old.elements.get(&(map.clone(), key.clone())) != Some(verdict) {
            let _ = writeln!(out, "add element ip {table} {map} {{ {key} : {verdict} }}");
        }
    }
    let gone: Vec<&String> = old
        .chains
        .keys()
        .filter(|c| !new.chains.contains_key(*c))
        .collect();
    for c in &gone {
        let _ = writeln!(out, "flush chain ip {table} {c}");
    }
    for c in &gone {
        let _ = writeln!(out, "delete chain ip {table} {c}");
    }
    for s in old.sets.keys() {
        if !new.sets.contains_key(s) {
            let _ = writeln!(out, "delete set ip {table} {s}");
        }
    }
    out
}

/// Runs an `nft -f -` transaction.
pub async fn apply(script: &str) -> Result<(), String> {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("nft: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .await
            .map_err(|e| format!("nft: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| format!("nft: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "nft: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::super::model::Proto;
    use super::*;

    fn settings() -> Settings {
        Settings {
            table: "t".into(),
            cluster_cidr: Some(("10.244.0.0".parse().unwrap(), 16)),
            node_mask: 24,
            masquerade_all: false,
        }
    }

    fn ep(ip: &str, ready: bool, local: bool) -> Endpoint {
        Endpoint {
            ip: ip.parse().unwrap(),
            port: 8080,
            ready,
            serving: ready,
            terminating: false,
            local,
        }
    }

    fn port(eps: Vec<Endpoint>) -> ServicePort {
        ServicePort {
            key: "default/web:http/tcp".into(),
            cluster_ips: vec!["10.96.0.20".parse().unwrap()],
            external_ips: Vec::new(),
            port: 80,
            proto: Proto::Tcp,
            node_port: None,
            affinity_timeout: None,
            internal_local: false,
            external_local: false,
            endpoints: eps,
        }
    }

    #[test]
    fn cluster_ip_balances_over_ready_endpoints() {
        let r = render(
            &settings(),
            &port(vec![
                ep("10.244.1.5", true, true),
                ep("10.244.2.6", true, false),
                ep("10.244.3.7", true, false),
                ep("10.244.2.8", false, false),
            ]),
        );
        assert_eq!(r.elements.len(), 1);
        let (k, v) = r.elements.iter().next().unwrap();
        assert_eq!(k.0, "service-ips");
        assert_eq!(k.1, "10.96.0.20 . tcp . 80");
        let svc = v.trim_start_matches("goto ");
        let rules = &r.chains[svc];
        assert_eq!(r.chains.len(), 1, "one chain per Service port");
        assert_eq!(
            rules[0],
            "ip saddr != 10.244.0.0/16 jump mark-for-masquerade"
        );
        // 1/3, then 1/2 of the rest, then the last: uniform.
        assert!(
            rules[1]
                .starts_with("numgen random mod 3 == 0 meta l4proto tcp dnat to 10.244.1.5:8080")
        );
        assert!(
            rules[2]
                .starts_with("numgen random mod 2 == 0 meta l4proto tcp dnat to 10.244.2.6:8080")
        );
        assert!(rules[3].starts_with("meta l4proto tcp dnat to 10.244.3.7:8080"));
        assert_eq!(rules.len(), 4, "not ready: unused");
        let subnets: Vec<&str> = r.subnets.iter().map(String::as_str).collect();
        assert_eq!(subnets, ["10.244.1.0/24", "10.244.2.0/24", "10.244.3.0/24"]);
        let add = subnet_rules("t", &Default::default(), &r.subnets);
        assert!(add.contains("add element ip t same-range { 10.244.1.0/24 . 10.244.1.0/24, "));
        let mut fewer = r.subnets.clone();
        fewer.remove("10.244.3.0/24");
        assert_eq!(
            subnet_rules("t", &r.subnets, &fewer),
            "delete element ip t same-range { 10.244.3.0/24 . 10.244.3.0/24 }\n"
        );
    }

    #[test]
    fn no_endpoints_rejects_and_terminating_ones_are_a_fallback() {
        let r = render(&settings(), &port(vec![ep("10.244.1.5", false, true)]));
        assert!(r.chains.is_empty());
        assert_eq!(
            r.elements[&(
                "no-endpoint-services".to_string(),
                "10.96.0.20 . tcp . 80".to_string()
            )],
            "goto reject-chain"
        );
        let mut term = ep("10.244.1.5", false, true);
        term.serving = true;
        term.terminating = true;
        let r = render(&settings(), &port(vec![term]));
        assert!(r.elements.keys().all(|(m, _)| m == "service-ips"));
    }

    #[test]
    fn local_policies_affinity_and_node_ports() {
        let mut p = port(vec![
            ep("10.244.1.5", true, true),
            ep("10.244.2.6", true, false),
        ]);
        p.node_port = Some(30080);
        p.external_local = true;
        p.internal_local = true;
        p.affinity_timeout = Some(60);
        let r = render(&settings(), &p);
        let np = &r.elements[&("service-nodeports".to_string(), "tcp . 30080".to_string())];
        let ext = np.trim_start_matches("goto ");
        assert!(ext.starts_with("ext-"));
        assert_eq!(r.chains[ext][2], format!("goto svl-{}", &ext[4..]));
        // Internal Local: only the local endpoint, sticky for 60 s.
        let svc = r.chains.keys().find(|c| c.starts_with("svc-")).unwrap();
        let rules = &r.chains[svc];
        assert!(rules[1].starts_with("ip saddr @aff-"), "{rules:?}");
        assert!(rules[2].starts_with("update @aff-"), "{rules:?}");
        assert_eq!(rules.len(), 3);
        assert_eq!(r.sets.len(), 1);
        assert!(r.sets.values().all(|d| d.contains("timeout 60s")));
        // No local endpoint at all: the local chains drop.
        p.endpoints = vec![ep("10.244.2.6", true, false)];
        let r = render(&settings(), &p);
        let svc = r.chains.keys().find(|c| c.starts_with("svc-")).unwrap();
        assert!(r.chains[svc].last().unwrap().starts_with("drop"));
    }

    #[test]
    fn updates_touch_only_what_changed() {
        let s = settings();
        let a = render(&s, &port(vec![ep("10.244.1.5", true, true)]));
        let b = render(
            &s,
            &port(vec![
                ep("10.244.1.5", true, true),
                ep("10.244.1.6", true, true),
            ]),
        );
        assert_eq!(update("t", &a, &a), "");
        let up = update("t", &a, &b);
        // The service chain is rewritten, the map untouched.
        assert!(up.contains("flush chain ip t svc-"));
        assert!(!up.contains("add chain"));
        assert!(!up.contains("element"));
        assert!(!up.contains("delete"));
        // Back to none: elements move to the reject map, the chain goes.
        let none = render(&s, &port(Vec::new()));
        let down = update("t", &b, &none);
        assert!(down.contains("delete element ip t service-ips { 10.96.0.20 . tcp . 80 }"));
        assert!(down.contains(
            "add element ip t no-endpoint-services { 10.96.0.20 . tcp . 80 : goto reject-chain }"
        ));
        assert_eq!(down.matches("delete chain").count(), 1);
        let deleted = down.find("delete chain").unwrap();
        assert!(
            down.rfind("flush chain").unwrap() < deleted,
            "flushed before deleted"
        );
        let f = full("t", &[&b], &subnets([&b].into_iter()));
        assert!(f.starts_with("add table ip t\ndelete table ip t\ntable ip t {"));
        assert!(f.contains("add element ip t service-ips"));
        assert!(f.contains("add element ip t same-range { 10.244.1.0/24 . 10.244.1.0/24 }"));
    }
}
