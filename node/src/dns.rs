//! The files the kubelet manages inside every container: `/etc/resolv.conf` from the pod's
//! `dnsPolicy` and `dnsConfig`, and `/etc/hosts` (pods with their own network) with the pod's
//! address, hostname and `hostAliases`.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::Pod;

/// What the node knows about DNS.
#[derive(Debug, Clone, Default)]
pub struct DnsSettings {
    /// The cluster DNS servers (`--cluster-dns`).
    pub cluster_dns: Vec<IpAddr>,
    /// The cluster domain (`--cluster-domain`).
    pub cluster_domain: String,
    /// The host's resolver configuration (`--resolv-conf`'s text).
    pub host: String,
}

/// Upstream's limits (glibc's, as the kubelet applies them).
const MAX_NAMESERVERS: usize = 3;
const MAX_SEARCHES: usize = 32;

#[derive(Default)]
struct Resolv {
    nameservers: Vec<String>,
    searches: Vec<String>,
    options: Vec<(String, Option<String>)>,
}

fn parse_host(text: &str) -> Resolv {
    let mut r = Resolv::default();
    for line in text.lines() {
        let mut w = line.split_whitespace();
        match w.next() {
            Some("nameserver") => r.nameservers.extend(w.next().map(str::to_string)),
            Some("search") | Some("domain") => r.searches = w.map(str::to_string).collect(),
            Some("options") => {
                for o in w {
                    set_option(&mut r.options, o);
                }
            }
            _ => {}
        }
    }
    r
}

fn set_option(options: &mut Vec<(String, Option<String>)>, o: &str) {
    let (name, value) = match o.split_once(':') {
        Some((n, v)) => (n.to_string(), Some(v.to_string())),
        None => (o.to_string(), None),
    };
    match options.iter_mut().find(|(n, _)| *n == name) {
        Some(slot) => slot.1 = value,
        None => options.push((name, value)),
    }
}

/// The pod's `/etc/resolv.conf`; warnings (limits exceeded, no cluster DNS) come back too.
pub fn resolv_conf(pod: &Pod, dns: &DnsSettings) -> (String, Vec<String>) {
    let spec = pod.spec.as_ref();
    let host_network = spec.and_then(|s| s.host_network).unwrap_or(false);
    let policy = spec
        .and_then(|s| s.dns_policy.as_deref())
        .unwrap_or("ClusterFirst");
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let domain = dns.cluster_domain.trim_end_matches('.');
    let mut warnings = Vec::new();
    let cluster = match policy {
        "ClusterFirstWithHostNet" => true,
        // A host-network pod asking for ClusterFirst gets the host's resolver, as upstream.
        "ClusterFirst" => !host_network,
        _ => false,
    };
    let mut r = match policy {
        "None" => Resolv::default(),
        _ if cluster && dns.cluster_dns.is_empty() => {
            warnings.push(
                "MissingClusterDNS: kubelet does not have ClusterDNS IP configured and cannot \
                 create Pod using \"ClusterFirst\" policy. Falling back to \"Default\" policy."
                    .to_string(),
            );
            parse_host(&dns.host)
        }
        _ if cluster => {
            let host = parse_host(&dns.host);
            let mut searches = vec![
                format!("{ns}.svc.{domain}"),
                format!("svc.{domain}"),
                domain.to_string(),
            ];
            searches.extend(host.searches);
            Resolv {
                nameservers: dns.cluster_dns.iter().map(ToString::to_string).collect(),
                searches,
                options: vec![("ndots".into(), Some("5".into()))],
            }
        }
        _ => parse_host(&dns.host),
    };
    if let Some(cfg) = spec.and_then(|s| s.dns_config.as_ref()) {
        r.nameservers
            .extend(cfg.nameservers.iter().flatten().cloned());
        r.searches.extend(cfg.searches.iter().flatten().cloned());
        for o in cfg.options.iter().flatten() {
            let Some(name) = o.name.as_deref() else {
                continue;
            };
            match &o.value {
                Some(v) => set_option(&mut r.options, &format!("{name}:{v}")),
                None => set_option(&mut r.options, name),
            }
        }
    }
    let mut seen = std::collections::HashSet::new();
    r.nameservers.retain(|n| seen.insert(n.clone()));
    let mut seen = std::collections::HashSet::new();
    r.searches
        .retain(|s| seen.insert(s.trim_end_matches('.').to_string()));
    if r.nameservers.len() > MAX_NAMESERVERS {
        warnings.push(format!(
            "DNSConfigForming: Nameserver limits were exceeded, some nameservers have been \
             omitted, the applied nameserver line is: {}",
            r.nameservers[..MAX_NAMESERVERS].join(" ")
        ));
        r.nameservers.truncate(MAX_NAMESERVERS);
    }
    if r.searches.len() > MAX_SEARCHES {
        warnings.push(format!(
            "DNSConfigForming: Search Line limits were exceeded, some search paths have been \
             omitted, the applied search line is: {}",
            r.searches[..MAX_SEARCHES].join(" ")
        ));
        r.searches.truncate(MAX_SEARCHES);
    }
    let mut out = String::new();
    if !r.searches.is_empty() {
        out.push_str(&format!("search {}\n", r.searches.join(" ")));
    }
    for n in &r.nameservers {
        out.push_str(&format!("nameserver {n}\n"));
    }
    if !r.options.is_empty() {
        let opts: Vec<String> = r
            .options
            .iter()
            .map(|(n, v)| match v {
                Some(v) => format!("{n}:{v}"),
                None => n.clone(),
            })
            .collect();
        out.push_str(&format!("options {}\n", opts.join(" ")));
    }
    (out, warnings)
}

/// The pod's `/etc/hosts` (for pods with their own network namespace).
pub fn hosts_file(pod: &Pod, ip: &str, domain: &str) -> String {
    let spec = pod.spec.as_ref();
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let hostname = spec
        .and_then(|s| s.hostname.as_deref())
        .filter(|h| !h.is_empty())
        .unwrap_or(name);
    let mut out = String::from(
        "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost \
         ip6-loopback\nfe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\n\
         fe00::2\tip6-allrouters\n",
    );
    if !ip.is_empty() {
        match spec
            .and_then(|s| s.subdomain.as_deref())
            .filter(|s| !s.is_empty())
        {
            Some(sub) => {
                let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
                out.push_str(&format!(
                    "{ip}\t{hostname}.{sub}.{ns}.svc.{}\t{hostname}\n",
                    domain.trim_end_matches('.')
                ));
            }
            None => out.push_str(&format!("{ip}\t{hostname}\n")),
        }
    }
    let aliases = spec.and_then(|s| s.host_aliases.as_ref());
    if aliases.is_some_and(|a| !a.is_empty()) {
        out.push_str("\n# Entries added by HostAliases.\n");
        for a in aliases.into_iter().flatten() {
            let names = a.hostnames.clone().unwrap_or_default().join("\t");
            out.push_str(&format!("{}\t{names}\n", a.ip));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "web-0", "namespace": "prod"},
            "spec": spec,
        }))
        .unwrap()
    }

    fn settings() -> DnsSettings {
        DnsSettings {
            cluster_dns: vec!["10.96.0.10".parse().unwrap()],
            cluster_domain: "cluster.local".into(),
            host: "nameserver 192.168.1.1\nsearch corp.example\noptions edns0\n".into(),
        }
    }

    #[test]
    fn policies() {
        let c = json!([{"name": "c"}]);
        let (first, w) = resolv_conf(&pod(json!({"containers": c})), &settings());
        assert!(w.is_empty());
        assert_eq!(
            first,
            "search prod.svc.cluster.local svc.cluster.local cluster.local corp.example\n\
             nameserver 10.96.0.10\noptions ndots:5\n"
        );
        let (host_net, _) = resolv_conf(
            &pod(json!({"containers": c, "hostNetwork": true})),
            &settings(),
        );
        assert_eq!(
            host_net,
            "search corp.example\nnameserver 192.168.1.1\noptions edns0\n"
        );
        let (with_host_net, _) = resolv_conf(
            &pod(
                json!({"containers": c, "hostNetwork": true, "dnsPolicy": "ClusterFirstWithHostNet"}),
            ),
            &settings(),
        );
        assert!(with_host_net.contains("nameserver 10.96.0.10"));
        let (none, _) = resolv_conf(
            &pod(json!({"containers": c, "dnsPolicy": "None", "dnsConfig": {
                "nameservers": ["1.2.3.4"], "searches": ["a.example"],
                "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}]}})),
            &settings(),
        );
        assert_eq!(
            none,
            "search a.example\nnameserver 1.2.3.4\noptions ndots:2 edns0\n"
        );
        // dnsConfig merges into ClusterFirst; an option given twice takes the pod's value.
        let (merged, _) = resolv_conf(
            &pod(
                json!({"containers": c, "dnsConfig": {"nameservers": ["1.2.3.4"],
                "options": [{"name": "ndots", "value": "1"}]}}),
            ),
            &settings(),
        );
        assert!(merged.contains("nameserver 10.96.0.10\nnameserver 1.2.3.4\n"));
        assert!(merged.ends_with("options ndots:1\n"));
        // No cluster DNS: the host's, with a warning.
        let mut s = settings();
        s.cluster_dns.clear();
        let (fallback, w) = resolv_conf(&pod(json!({"containers": c})), &s);
        assert!(fallback.contains("nameserver 192.168.1.1"));
        assert!(w[0].starts_with("MissingClusterDNS"));
        // Limits.
        let (limited, w) = resolv_conf(
            &pod(
                json!({"containers": c, "dnsConfig": {"nameservers": ["1.1.1.1", "2.2.2.2", "3.3.3.3"]}}),
            ),
            &settings(),
        );
        assert_eq!(limited.matches("nameserver").count(), 3);
        assert!(w[0].starts_with("DNSConfigForming"));
    }

    #[test]
    fn hosts() {
        let p = pod(
            json!({"containers": [{"name": "c"}], "hostname": "db-0", "subdomain": "db",
            "hostAliases": [{"ip": "10.1.2.3", "hostnames": ["foo.local", "bar.local"]}]}),
        );
        let h = hosts_file(&p, "10.244.1.5", "cluster.local");
        assert!(h.contains("10.244.1.5\tdb-0.db.prod.svc.cluster.local\tdb-0\n"));
        assert!(h.ends_with("10.1.2.3\tfoo.local\tbar.local\n"));
        let plain = hosts_file(
            &pod(json!({"containers": [{"name": "c"}]})),
            "10.244.1.6",
            "cluster.local",
        );
        assert!(plain.contains("10.244.1.6\tweb-0\n"));
    }
}
