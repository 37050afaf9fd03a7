//! The cluster zone: the records of the Kubernetes DNS specification (schema 1.1.0), built from
//! Services and their EndpointSlices, and the answer to one question.
//!
//! Every Service contributes a set of records (its A/AAAA, SRV, CNAME, the records of its
//! endpoints when headless, and the PTRs of all those addresses); a change to the Service or to
//! one of its slices replaces that set, so an update costs what the Service holds, and a query
//! is one hash lookup. Names are kept lower-case and fully qualified (trailing dot).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// One record's data (the owner name and TTL are the zone's business).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Rec {
    /// IPv4 address.
    A(Ipv4Addr),
    /// IPv6 address.
    Aaaa(Ipv6Addr),
    /// Alias (ExternalName Services).
    Cname(String),
    /// Service location.
    Srv {
        /// Priority.
        priority: u16,
        /// Weight.
        weight: u16,
        /// Port.
        port: u16,
        /// Target name.
        target: String,
    },
    /// Reverse pointer.
    Ptr(String),
    /// Text.
    Txt(String),
}

/// What the zone says about a question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Records for the name (answers, then additional records: (name, data)).
    Records {
        /// The answer section.
        answers: Vec<(String, Rec)>,
        /// The additional section (addresses of SRV targets).
        additionals: Vec<(String, Rec)>,
    },
    /// The name exists but has no records of the asked type (NOERROR, SOA in authority).
    NoData,
    /// The name does not exist in the zone (NXDOMAIN, SOA in authority).
    NxDomain,
    /// Not the cluster's to answer: forward upstream.
    Forward,
}

/// The question's type, as far as the zone cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QType {
    /// A.
    A,
    /// AAAA.
    Aaaa,
    /// CNAME.
    Cname,
    /// SRV.
    Srv,
    /// PTR.
    Ptr,
    /// TXT.
    Txt,
    /// SOA.
    Soa,
    /// NS.
    Ns,
    /// ANY.
    Any,
    /// Something else (answered with no data where the name exists).
    Other,
}

impl QType {
    fn matches(self, r: &Rec) -> bool {
        matches!(
            (self, r),
            (QType::Any, _)
                | (QType::A, Rec::A(_))
                | (QType::Aaaa, Rec::Aaaa(_))
                | (QType::Cname, Rec::Cname(_))
                | (QType::Srv, Rec::Srv { .. })
                | (QType::Ptr, Rec::Ptr(_))
                | (QType::Txt, Rec::Txt(_))
        )
    }
}

/// The schema version served at `dns-version.<domain>`.
pub const SCHEMA_VERSION: &str = "1.1.0";

/// The records of the cluster, by owner name.
#[derive(Debug)]
pub struct Zone {
    /// The cluster domain, lower-case with a trailing dot ("cluster.local.").
    domain: String,
    /// Records by owner name; each tagged with the Service ("ns/name") that made it.
    names: HashMap<String, Vec<(Arc<str>, Rec)>>,
    /// The names each Service made (to take its records out again).
    owned: HashMap<Arc<str>, Vec<String>>,
    /// Proper ancestors of record names, counted: they exist with no records (NODATA).
    parents: HashMap<String, usize>,
}

/// A name lower-cased and fully qualified.
pub fn normalize(name: &str) -> String {
    let mut n = name.to_ascii_lowercase();
    if !n.ends_with('.') {
        n.push('.');
    }
    n
}

/// The reverse-lookup name of an address (`4.3.2.1.in-addr.arpa.`, nibbles under `ip6.arpa.`).
pub fn reverse_name(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.{}.in-addr.arpa.", o[3], o[2], o[1], o[0])
        }
        IpAddr::V6(v6) => {
            let mut s = String::with_capacity(73);
            for b in v6.octets().iter().rev() {
                s.push_str(&format!("{:x}.{:x}.", b & 0xf, b >> 4));
            }
            s.push_str("ip6.arpa.");
            s
        }
    }
}

/// An address's record.
fn addr_rec(ip: IpAddr) -> Rec {
    match ip {
        IpAddr::V4(a) => Rec::A(a),
        IpAddr::V6(a) => Rec::Aaaa(a),
    }
}

/// The host label of an endpoint without a hostname: its address with dashes (CoreDNS's form).
fn dashed(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(a) => a.to_string().replace('.', "-"),
        IpAddr::V6(a) => a.to_string().replace(':', "-"),
    }
}

/// `a-b-c-d` back to an address (pod records).
fn undashed(label: &str) -> Option<IpAddr> {
    if label.contains(':') || label.contains('.') {
        return None;
    }
    let v4 = label.replace('-', ".");
    if let Ok(ip) = v4.parse::<Ipv4Addr>() {
        return Some(IpAddr::V4(ip));
    }
    label
        .replace('-', ":")
        .parse::<Ipv6Addr>()
        .ok()
        .map(IpAddr::V6)
}

impl Zone {
    /// An empty zone for `domain` (e.g. "cluster.local").
    pub fn new(domain: &str) -> Self {
        Self {
            domain: normalize(domain),
            names: HashMap::new(),
            owned: HashMap::new(),
            parents: HashMap::new(),
        }
    }

    /// The zone's domain, fully qualified.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// Number of owner names with records.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// True when the zone holds no records.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Replaces the records of Service `key` ("ns/name") with those of `svc` and its slices;
    /// `svc` None removes them.
    pub fn set_service(&mut self, key: &str, svc: Option<&Service>, slices: &[Arc<EndpointSlice>]) {
        self.remove(key);
        let Some(svc) = svc else { return };
        let records = self.records_of(svc, slices);
        if records.is_empty() {
            return;
        }
        let owner: Arc<str> = Arc::from(key);
        // The Service's old records are gone (above): only repeats within `records` remain
        // to drop.
        let mut seen = std::collections::HashSet::new();
        let mut owned = std::collections::HashSet::new();
        let mut names = Vec::new();
        for (name, rec) in records {
            if !seen.insert((name.clone(), rec.clone())) {
                continue;
            }
            if owned.insert(name.clone()) {
                names.push(name.clone());
            }
            self.names
                .entry(name)
                .or_default()
                .push((owner.clone(), rec));
        }
        for n in &names {
            for p in ancestors(n, &self.domain) {
                *self.parents.entry(p).or_default() += 1;
            }
        }
        self.owned.insert(owner, names);
    }

    fn remove(&mut self, key: &str) {
        let Some(names) = self.owned.remove(key) else {
            return;
        };
        for n in names {
            if let Some(entry) = self.names.get_mut(&n) {
                entry.retain(|(o, _)| &**o != key);
                if entry.is_empty() {
                    self.names.remove(&n);
                }
            }
            for p in ancestors(&n, &self.domain) {
                if let Some(c) = self.parents.get_mut(&p) {
                    *c -= 1;
                    if *c == 0 {
                        self.parents.remove(&p);
                    }
                }
            }
        }
    }

    /// The records a Service makes, as upstream's specification lists them.
    fn records_of(&self, svc: &Service, slices: &[Arc<EndpointSlice>]) -> Vec<(String, Rec)> {
        let (Some(ns), Some(name)) = (&svc.metadata.namespace, &svc.metadata.name) else {
            return Vec::new();
        };
        let Some(spec) = &svc.spec else {
            return Vec::new();
        };
        let base = format!("{}.{}.svc.{}", name, ns, self.domain).to_ascii_lowercase();
        let mut out = Vec::new();
        if spec.type_.as_deref() == Some("ExternalName") {
            if let Some(target) = spec.external_name.as_deref().filter(|t| !t.is_empty()) {
                out.push((base, Rec::Cname(normalize(target))));
            }
            return out;
        }
        let ips: Vec<IpAddr> = spec
            .cluster_ips
            .clone()
            .or_else(|| spec.cluster_ip.clone().map(|ip| vec![ip]))
            .unwrap_or_default()
            .iter()
            .filter_map(|ip| ip.parse().ok())
            .collect();
        let headless = spec.cluster_ip.as_deref() == Some("None");
        let ports = spec.ports.clone().unwrap_or_default();
        if !headless {
            if ips.is_empty() {
                return out;
            }
            for ip in &ips {
                out.push((base.clone(), addr_rec(*ip)));
                out.push((reverse_name(*ip), Rec::Ptr(base.clone())));
            }
            let named: Vec<_> = ports
                .iter()
                .filter(|p| p.name.as_deref().is_some_and(|n| !n.is_empty()))
                .collect();
            for p in &named {
                let srv = Rec::Srv {
                    priority: 0,
                    weight: 100,
                    port: p.port as u16,
                    target: base.clone(),
                };
                let proto = p.protocol.as_deref().unwrap_or("TCP").to_ascii_lowercase();
                let pname = p.name.as_deref().unwrap_or_default().to_ascii_lowercase();
                out.push((format!("_{pname}._{proto}.{base}"), srv.clone()));
                out.push((base.clone(), srv));
            }
            return out;
        }
        // Headless: the ready endpoints (a slice counts endpoints that are not ready when the
        // Service publishes them; `ready` unset means ready).
        let mut srvs: Vec<(String, Rec)> = Vec::new();
        for slice in slices {
            for ep in &slice.endpoints {
                if ep.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                    continue;
                }
                for addr in &ep.addresses {
                    let Ok(ip) = addr.parse::<IpAddr>() else {
                        continue;
                    };
                    let host = ep
                        .hostname
                        .as_deref()
                        .filter(|h| !h.is_empty())
                        .map(str::to_ascii_lowercase)
                        .unwrap_or_else(|| dashed(ip));
                    let fqdn = format!("{host}.{base}");
                    out.push((base.clone(), addr_rec(ip)));
                    out.push((fqdn.clone(), addr_rec(ip)));
                    out.push((reverse_name(ip), Rec::Ptr(fqdn.clone())));
                    for p in slice.ports.iter().flatten() {
                        let (Some(pname), Some(port)) = (p.name.as_deref(), p.port) else {
                            continue;
                        };
                        if pname.is_empty() {
                            continue;
                        }
                        let proto = p.protocol.as_deref().unwrap_or("TCP").to_ascii_lowercase();
                        let srv = Rec::Srv {
                            priority: 0,
                            weight: 0,
                            port: port as u16,
                            target: fqdn.clone(),
                        };
                        srvs.push((
                            format!("_{}._{proto}.{base}", pname.to_ascii_lowercase()),
                            srv.clone(),
                        ));
                        srvs.push((base.clone(), srv));
                    }
                }
            }
        }
        // SRV weights: an equal share of 100 among the records of one name.
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for (n, _) in &srvs {
            *counts.entry(n.as_str()).or_default() += 1;
        }
        let weights: HashMap<String, u16> = counts
            .into_iter()
            .map(|(n, c)| (n.to_string(), (100 / c.max(1)).max(1) as u16))
            .collect();
        for (n, mut r) in srvs {
            if let Rec::Srv { weight, .. } = &mut r {
                *weight = weights[&n];
            }
            out.push((n, r));
        }
        out
    }

    /// Answers `qname` (any case, with or without the final dot) of type `qtype`.
    pub fn answer(&self, qname: &str, qtype: QType) -> Answer {
        let name = normalize(qname);
        let in_zone = name == self.domain || name.ends_with(&format!(".{}", self.domain));
        if let Some(records) = self.names.get(&name) {
            let mut answers: Vec<(String, Rec)> = records
                .iter()
                .filter(|(_, r)| qtype.matches(r))
                .map(|(_, r)| (name.clone(), r.clone()))
                .collect();
            if answers.is_empty() {
                // A CNAME answers any type (the resolver follows it).
                answers = records
                    .iter()
                    .filter(|(_, r)| matches!(r, Rec::Cname(_)))
                    .map(|(_, r)| (name.clone(), r.clone()))
                    .collect();
                if let Some((_, Rec::Cname(target))) = answers.first() {
                    let target = target.clone();
                    if let Some(rs) = self.names.get(&target) {
                        answers.extend(
                            rs.iter()
                                .filter(|(_, r)| qtype.matches(r))
                                .map(|(_, r)| (target.clone(), r.clone())),
                        );
                    }
                }
            }
            answers.dedup();
            if answers.is_empty() {
                return Answer::NoData;
            }
            let mut additionals = Vec::new();
            for (_, r) in &answers {
                if let Rec::Srv { target, .. } = r
                    && let Some(rs) = self.names.get(target)
                {
                    for (_, a) in rs {
                        if matches!(a, Rec::A(_) | Rec::Aaaa(_)) {
                            let item = (target.clone(), a.clone());
                            if !additionals.contains(&item) {
                                additionals.push(item);
                            }
                        }
                    }
                }
            }
            return Answer::Records {
                answers,
                additionals,
            };
        }
        if !in_zone {
            // Reverse names of addresses the cluster does not own, and every other name.
            return Answer::Forward;
        }
        let rel = &name[..name.len() - self.domain.len()];
        let labels: Vec<&str> = rel.trim_end_matches('.').split('.').collect();
        // dns-version.<domain>: the schema version.
        if labels == ["dns-version"] {
            return if matches!(qtype, QType::Txt | QType::Any) {
                Answer::Records {
                    answers: vec![(name, Rec::Txt(SCHEMA_VERSION.into()))],
                    additionals: Vec::new(),
                }
            } else {
                Answer::NoData
            };
        }
        // <a-b-c-d>.<ns>.pod.<domain>: the address in the name (CoreDNS's "pods insecure").
        if let [host, _ns, "pod"] = labels.as_slice()
            && let Some(ip) = undashed(host)
        {
            let rec = addr_rec(ip);
            return if qtype.matches(&rec) {
                Answer::Records {
                    answers: vec![(name, rec)],
                    additionals: Vec::new(),
                }
            } else {
                Answer::NoData
            };
        }
        if rel.is_empty()
            || self.parents.contains_key(&name)
            || labels == ["svc"]
            || labels == ["pod"]
            || matches!(labels.as_slice(), [_, "pod"])
        {
            return Answer::NoData;
        }
        Answer::NxDomain
    }
}

/// The proper ancestors of `name` that lie inside `domain`, the domain itself excluded (the
/// empty non-terminals of the zone; reverse names need none: the zone only answers the
/// addresses it holds and forwards the rest).
fn ancestors(name: &str, domain: &str) -> Vec<String> {
    let stop = domain;
    let mut out = Vec::new();
    let mut rest = name;
    while let Some((_, tail)) = rest.split_once('.') {
        if tail.len() <= stop.len() || !tail.ends_with(stop) {
            break;
        }
        out.push(tail.to_string());
        rest = tail;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc(v: serde_json::Value) -> Service {
        serde_json::from_value(v).unwrap()
    }

    fn slice(v: serde_json::Value) -> Arc<EndpointSlice> {
        Arc::new(serde_json::from_value(v).unwrap())
    }

    fn records(a: Answer) -> Vec<(String, Rec)> {
        match a {
            Answer::Records { answers, .. } => answers,
            other => panic!("expected records, got {other:?}"),
        }
    }

    #[test]
    fn cluster_ip_service_a_srv_and_ptr() {
        let mut z = Zone::new("cluster.local");
        let s = svc(json!({
            "metadata": {"name": "Web", "namespace": "default"},
            "spec": {"clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20"],
                "ports": [{"name": "http", "port": 80, "protocol": "TCP"}, {"port": 81}]},
        }));
        z.set_service("default/Web", Some(&s), &[]);
        let a = records(z.answer("web.default.svc.cluster.local", QType::A));
        assert_eq!(
            a,
            vec![(
                "web.default.svc.cluster.local.".into(),
                Rec::A("10.96.0.20".parse().unwrap())
            )]
        );
        let Answer::Records {
            answers,
            additionals,
        } = z.answer("_http._tcp.web.default.svc.cluster.local.", QType::Srv)
        else {
            panic!("no SRV")
        };
        assert_eq!(
            answers[0].1,
            Rec::Srv {
                priority: 0,
                weight: 100,
                port: 80,
                target: "web.default.svc.cluster.local.".into()
            }
        );
        assert_eq!(additionals.len(), 1, "the target's address comes along");
        assert_eq!(
            records(z.answer("20.0.96.10.in-addr.arpa", QType::Ptr)),
            vec![(
                "20.0.96.10.in-addr.arpa.".into(),
                Rec::Ptr("web.default.svc.cluster.local.".into())
            )]
        );
        // Existing names without the type, empty non-terminals, missing names.
        assert_eq!(
            z.answer("web.default.svc.cluster.local", QType::Aaaa),
            Answer::NoData
        );
        assert_eq!(
            z.answer("default.svc.cluster.local", QType::A),
            Answer::NoData
        );
        assert_eq!(z.answer("cluster.local", QType::A), Answer::NoData);
        assert_eq!(
            z.answer("nope.default.svc.cluster.local", QType::A),
            Answer::NxDomain
        );
        assert_eq!(
            z.answer("_81._tcp.web.default.svc.cluster.local", QType::Srv),
            Answer::NxDomain,
            "unnamed ports have no SRV name"
        );
        assert_eq!(z.answer("example.com", QType::A), Answer::Forward);
        assert_eq!(
            z.answer("1.1.168.192.in-addr.arpa", QType::Ptr),
            Answer::Forward
        );
        // Removed: gone, ancestors too.
        z.set_service("default/Web", None, &[]);
        assert_eq!(
            z.answer("web.default.svc.cluster.local", QType::A),
            Answer::NxDomain
        );
        assert_eq!(
            z.answer("default.svc.cluster.local", QType::A),
            Answer::NxDomain
        );
        assert!(z.is_empty());
        assert!(z.parents.is_empty());
    }

    #[test]
    fn headless_service_lists_ready_endpoints_with_hostnames() {
        let mut z = Zone::new("cluster.local.");
        let s = svc(json!({
            "metadata": {"name": "db", "namespace": "prod"},
            "spec": {"clusterIP": "None", "ports": [{"name": "pg", "port": 5432}]},
        }));
        let sl = slice(json!({
            "metadata": {"name": "db-abc", "namespace": "prod"},
            "addressType": "IPv4",
            "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}],
            "endpoints": [
                {"addresses": ["10.244.1.5"], "hostname": "db-0", "conditions": {"ready": true}},
                {"addresses": ["10.244.2.6"], "conditions": {}},
                {"addresses": ["10.244.2.7"], "conditions": {"ready": false}},
            ],
        }));
        z.set_service("prod/db", Some(&s), &[sl]);
        let mut ips: Vec<_> = records(z.answer("db.prod.svc.cluster.local", QType::A))
            .into_iter()
            .map(|(_, r)| r)
            .collect();
        ips.sort_by_key(|r| format!("{r:?}"));
        assert_eq!(
            ips,
            vec![
                Rec::A("10.244.1.5".parse().unwrap()),
                Rec::A("10.244.2.6".parse().unwrap())
            ]
        );
        assert_eq!(
            records(z.answer("db-0.db.prod.svc.cluster.local", QType::A)),
            vec![(
                "db-0.db.prod.svc.cluster.local.".into(),
                Rec::A("10.244.1.5".parse().unwrap())
            )]
        );
        assert!(matches!(
            z.answer("10-244-2-6.db.prod.svc.cluster.local", QType::A),
            Answer::Records { .. }
        ));
        let srv = records(z.answer("_pg._tcp.db.prod.svc.cluster.local", QType::Srv));
        assert_eq!(srv.len(), 2);
        assert!(srv.iter().all(|(_, r)| matches!(
            r,
            Rec::Srv {
                weight: 50,
                port: 5432,
                ..
            }
        )));
        assert_eq!(
            records(z.answer("5.1.244.10.in-addr.arpa.", QType::Ptr))[0].1,
            Rec::Ptr("db-0.db.prod.svc.cluster.local.".into())
        );
        assert_eq!(
            z.answer("7.2.244.10.in-addr.arpa.", QType::Ptr),
            Answer::Forward,
            "not-ready endpoints are not published"
        );
    }

    #[test]
    fn external_name_pods_and_schema_version() {
        let mut z = Zone::new("cluster.local");
        let s = svc(json!({
            "metadata": {"name": "ext", "namespace": "default"},
            "spec": {"type": "ExternalName", "externalName": "Example.COM"},
        }));
        z.set_service("default/ext", Some(&s), &[]);
        assert_eq!(
            records(z.answer("ext.default.svc.cluster.local", QType::A)),
            vec![(
                "ext.default.svc.cluster.local.".into(),
                Rec::Cname("example.com.".into())
            )]
        );
        assert_eq!(
            records(z.answer("10-244-1-9.default.pod.cluster.local", QType::A)),
            vec![(
                "10-244-1-9.default.pod.cluster.local.".into(),
                Rec::A("10.244.1.9".parse().unwrap())
            )]
        );
        assert_eq!(
            z.answer("not-an-ip.default.pod.cluster.local", QType::A),
            Answer::NxDomain
        );
        assert_eq!(
            records(z.answer("dns-version.cluster.local", QType::Txt)),
            vec![(
                "dns-version.cluster.local.".into(),
                Rec::Txt("1.1.0".into())
            )]
        );
    }

    #[test]
    fn a_shared_address_keeps_both_pointers_until_each_service_goes() {
        let mut z = Zone::new("cluster.local");
        let mk = |name: &str| {
            (
                svc(json!({
                    "metadata": {"name": name, "namespace": "ns"},
                    "spec": {"clusterIP": "None"},
                })),
                slice(json!({
                    "metadata": {"name": format!("{name}-x"), "namespace": "ns"},
                    "addressType": "IPv4",
                    "endpoints": [{"addresses": ["10.244.1.5"]}],
                })),
            )
        };
        let (a, sa) = mk("a");
        let (b, sb) = mk("b");
        z.set_service("ns/a", Some(&a), &[sa]);
        z.set_service("ns/b", Some(&b), std::slice::from_ref(&sb));
        assert_eq!(
            records(z.answer("5.1.244.10.in-addr.arpa", QType::Ptr)).len(),
            2
        );
        z.set_service("ns/a", None, &[]);
        assert_eq!(
            records(z.answer("5.1.244.10.in-addr.arpa", QType::Ptr)),
            vec![(
                "5.1.244.10.in-addr.arpa.".into(),
                Rec::Ptr("10-244-1-5.b.ns.svc.cluster.local.".into())
            )]
        );
        // Re-setting the same Service replaces, never duplicates.
        z.set_service("ns/b", Some(&b), &[sb]);
        assert_eq!(
            records(z.answer("b.ns.svc.cluster.local", QType::A)).len(),
            1
        );
    }

    #[test]
    fn ipv6_cluster_ips_answer_aaaa() {
        let mut z = Zone::new("cluster.local");
        let s = svc(json!({
            "metadata": {"name": "dual", "namespace": "default"},
            "spec": {"clusterIP": "10.96.0.30", "clusterIPs": ["10.96.0.30", "fd00::30"],
                "ports": [{"port": 80}]},
        }));
        z.set_service("default/dual", Some(&s), &[]);
        assert_eq!(
            records(z.answer("dual.default.svc.cluster.local", QType::Aaaa)),
            vec![(
                "dual.default.svc.cluster.local.".into(),
                Rec::Aaaa("fd00::30".parse().unwrap())
            )]
        );
        assert_eq!(
            records(z.answer("dual.default.svc.cluster.local", QType::A)).len(),
            1
        );
        let ptr = reverse_name("fd00::30".parse().unwrap());
        assert_eq!(
            records(z.answer(&ptr, QType::Ptr))[0].1,
            Rec::Ptr("dual.default.svc.cluster.local.".into())
        );
    }

    #[test]
    fn reverse_names() {
        assert_eq!(
            reverse_name("10.96.0.1".parse().unwrap()),
            "1.0.96.10.in-addr.arpa."
        );
        let v6 = reverse_name("fd00::1".parse().unwrap());
        assert!(v6.starts_with("1.0.0.0.0.0.0.0."));
        assert!(v6.ends_with(".0.0.d.f.ip6.arpa."));
        assert_eq!(undashed("fd00--1"), Some("fd00::1".parse().unwrap()));
    }
}
