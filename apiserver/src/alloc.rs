//! Service ClusterIP and NodePort allocation. Each allocated address or port is one key in the
//! store (`<prefix>/keelson/serviceips/<ip>`, `<prefix>/keelson/servicenodeports/<port>`),
//! created in the same transaction as the Service and deleted with it, so several apiservers
//! never hand out the same address.

use std::net::Ipv4Addr;

use serde_json::{Value, json};

use crate::status::{ApiError, ApiResult, Cause};

/// Keys to create with their values.
pub type NewKeys = Vec<(Vec<u8>, Vec<u8>)>;

/// The configured ranges.
#[derive(Debug, Clone)]
pub struct Ranges {
    base: u32,
    size: u32,
    ports: (u16, u16),
    prefix: String,
}

impl Ranges {
    /// Parses `--service-cluster-ip-range` (IPv4 CIDR) and `--service-node-port-range`.
    pub fn parse(cidr: &str, ports: &str, prefix: &str) -> Result<Self, String> {
        let (ip, bits) = cidr
            .split_once('/')
            .ok_or_else(|| format!("--service-cluster-ip-range {cidr:?}: not a CIDR"))?;
        let ip: Ipv4Addr = ip.parse().map_err(|_| {
            format!("--service-cluster-ip-range {cidr:?}: only IPv4 ranges are supported")
        })?;
        let bits: u32 = bits
            .parse()
            .map_err(|_| format!("--service-cluster-ip-range {cidr:?}: bad prefix length"))?;
        if !(8..=30).contains(&bits) {
            return Err(format!(
                "--service-cluster-ip-range {cidr:?}: prefix length must be between 8 and 30"
            ));
        }
        let size = 1u32 << (32 - bits);
        let base = u32::from(ip) & !(size - 1);
        let (lo, hi) = ports
            .split_once('-')
            .ok_or_else(|| format!("--service-node-port-range {ports:?}: expected LOW-HIGH"))?;
        let lo: u16 = lo
            .trim()
            .parse()
            .map_err(|_| format!("--service-node-port-range {ports:?}: bad port"))?;
        let hi: u16 = hi
            .trim()
            .parse()
            .map_err(|_| format!("--service-node-port-range {ports:?}: bad port"))?;
        if lo == 0 || hi < lo {
            return Err(format!("--service-node-port-range {ports:?}: empty range"));
        }
        Ok(Ranges {
            base,
            size,
            ports: (lo, hi),
            prefix: prefix.trim_end_matches('/').to_string(),
        })
    }

    /// The first usable address (given to the `kubernetes` service).
    pub fn first_ip(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.base + 1)
    }

    fn contains(&self, ip: Ipv4Addr) -> bool {
        let v = u32::from(ip);
        v > self.base && v < self.base + self.size - 1
    }

    fn ip_key(&self, ip: &str) -> Vec<u8> {
        format!("{}/keelson/serviceips/{ip}", self.prefix).into_bytes()
    }

    fn port_key(&self, port: i64) -> Vec<u8> {
        format!("{}/keelson/servicenodeports/{port}", self.prefix).into_bytes()
    }

    fn random_ip(&self) -> Ipv4Addr {
        use rand::Rng;
        // .0 is the network, .1 the kubernetes service, the last address broadcast.
        Ipv4Addr::from(self.base + rand::rng().random_range(2..self.size - 1))
    }

    fn random_port(&self) -> i64 {
        use rand::Rng;
        i64::from(rand::rng().random_range(self.ports.0..=self.ports.1))
    }

    /// Keys that hold what `svc` has allocated.
    pub fn held_keys(&self, svc: &Value) -> Vec<Vec<u8>> {
        let mut keys = Vec::new();
        if let Some(ip) = svc.pointer("/spec/clusterIP").and_then(Value::as_str)
            && ip.parse::<Ipv4Addr>().is_ok_and(|a| self.contains(a))
        {
            keys.push(self.ip_key(ip));
        }
        for p in node_ports(svc) {
            keys.push(self.port_key(p));
        }
        keys
    }

    /// Fills unset addresses and node ports of a new Service and returns the keys to create with
    /// it. Requested values are checked against the ranges. `owner` is `namespace/name`.
    pub fn plan_create(
        &self,
        svc: &mut Value,
        owner: &str,
        requested: &Requested,
    ) -> ApiResult<NewKeys> {
        let name = crate::object::name(svc).to_string();
        let ty = svc
            .pointer("/spec/type")
            .and_then(Value::as_str)
            .unwrap_or("ClusterIP")
            .to_string();
        let mut keys = Vec::new();
        if ty != "ExternalName" {
            let ip = match &requested.cluster_ip {
                Some(ip) if ip == "None" => None,
                Some(ip) => {
                    let a: Ipv4Addr = ip.parse().map_err(|_| invalid(&name, "spec.clusterIPs", format!("Invalid value: [{ip:?}]: must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)")))?;
                    if !self.contains(a) {
                        return Err(invalid(
                            &name,
                            "spec.clusterIPs",
                            format!(
                                "Invalid value: [{ip:?}]: failed to allocate IP {ip}: the provided IP ({ip}) is not in the valid range"
                            ),
                        ));
                    }
                    Some(a)
                }
                None => Some(self.random_ip()),
            };
            match ip {
                Some(a) => {
                    let s = a.to_string();
                    keys.push((self.ip_key(&s), owner.as_bytes().to_vec()));
                    svc["spec"]["clusterIP"] = json!(s);
                    svc["spec"]["clusterIPs"] = json!([s]);
                }
                None => {
                    svc["spec"]["clusterIP"] = json!("None");
                    svc["spec"]["clusterIPs"] = json!(["None"]);
                }
            }
            svc["spec"]["ipFamilies"] = json!(["IPv4"]);
            svc["spec"]["ipFamilyPolicy"] = json!("SingleStack");
        }
        if ty == "NodePort" || ty == "LoadBalancer" {
            if let Some(ports) = svc.pointer_mut("/spec/ports").and_then(Value::as_array_mut) {
                for (i, p) in ports.iter_mut().enumerate() {
                    let np = match p
                        .get("nodePort")
                        .and_then(Value::as_i64)
                        .filter(|n| *n != 0)
                    {
                        Some(n) => {
                            if n < i64::from(self.ports.0) || n > i64::from(self.ports.1) {
                                return Err(invalid(
                                    &name,
                                    &format!("spec.ports[{i}].nodePort"),
                                    format!(
                                        "Invalid value: {n}: provided port is not in the valid range. The range of valid ports is {}-{}",
                                        self.ports.0, self.ports.1
                                    ),
                                ));
                            }
                            n
                        }
                        None => self.random_port(),
                    };
                    p["nodePort"] = json!(np);
                    keys.push((self.port_key(np), owner.as_bytes().to_vec()));
                }
            }
        } else if let Some(ports) = svc.pointer_mut("/spec/ports").and_then(Value::as_array_mut) {
            for p in ports {
                if let Some(m) = p.as_object_mut()
                    && m.get("nodePort").and_then(Value::as_i64) == Some(0)
                {
                    m.remove("nodePort");
                }
            }
        }
        keys.sort();
        keys.dedup_by(|a, b| a.0 == b.0);
        Ok(keys)
    }

    /// Keeps the allocations of `old` in an updated Service: the cluster IP is immutable, node
    /// ports of unchanged ports are kept. Returns node ports to allocate (new ones) and keys to
    /// release after the update.
    pub fn carry_over(&self, old: &Value, new: &mut Value) -> ApiResult<(NewKeys, Vec<Vec<u8>>)> {
        let name = crate::object::name(new).to_string();
        let old_ip = old.pointer("/spec/clusterIP").cloned();
        match (
            new.pointer("/spec/clusterIP").and_then(Value::as_str),
            old_ip.as_ref().and_then(Value::as_str),
        ) {
            (None | Some(""), Some(_)) => {
                new["spec"]["clusterIP"] = old_ip.clone().unwrap_or(Value::Null);
                if let Some(ips) = old.pointer("/spec/clusterIPs") {
                    new["spec"]["clusterIPs"] = ips.clone();
                }
            }
            (Some(n), Some(o)) if n != o => {
                return Err(invalid(
                    &name,
                    "spec.clusterIPs[0]",
                    "Invalid value: field is immutable".to_string(),
                ));
            }
            _ => {}
        }
        for f in ["ipFamilies", "ipFamilyPolicy", "clusterIPs"] {
            if new.pointer(&format!("/spec/{f}")).is_none()
                && let Some(v) = old.pointer(&format!("/spec/{f}"))
            {
                new["spec"][f] = v.clone();
            }
        }
        let ty = new
            .pointer("/spec/type")
            .and_then(Value::as_str)
            .unwrap_or("ClusterIP")
            .to_string();
        let old_ports: Vec<Value> = old
            .pointer("/spec/ports")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let mut allocate = Vec::new();
        let owner = format!("{}/{}", crate::object::namespace(new), name);
        if let Some(ports) = new.pointer_mut("/spec/ports").and_then(Value::as_array_mut) {
            for p in ports.iter_mut() {
                let set = p
                    .get("nodePort")
                    .and_then(Value::as_i64)
                    .filter(|n| *n != 0);
                if ty != "NodePort" && ty != "LoadBalancer" {
                    if let Some(m) = p.as_object_mut() {
                        m.remove("nodePort");
                    }
                    continue;
                }
                let kept = old_ports
                    .iter()
                    .find(|o| {
                        o.get("port") == p.get("port") && o.get("protocol") == p.get("protocol")
                    })
                    .and_then(|o| o.get("nodePort").and_then(Value::as_i64));
                let np = match (set, kept) {
                    (Some(n), _) => n,
                    (None, Some(k)) => k,
                    (None, None) => self.random_port(),
                };
                p["nodePort"] = json!(np);
            }
        }
        let before: Vec<i64> = node_ports(old);
        let after: Vec<i64> = node_ports(new);
        for n in &after {
            if !before.contains(n) {
                allocate.push((self.port_key(*n), owner.as_bytes().to_vec()));
            }
        }
        let release = before
            .iter()
            .filter(|n| !after.contains(n))
            .map(|n| self.port_key(*n))
            .collect();
        Ok((allocate, release))
    }
}

/// What a Service creation asked for explicitly.
#[derive(Debug, Clone, Default)]
pub struct Requested {
    /// `spec.clusterIP` as sent (`None` for headless).
    pub cluster_ip: Option<String>,
}

impl Requested {
    /// Reads the request.
    pub fn of(svc: &Value) -> Self {
        Requested {
            cluster_ip: svc
                .pointer("/spec/clusterIP")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_string),
        }
    }
}

fn node_ports(svc: &Value) -> Vec<i64> {
    svc.pointer("/spec/ports")
        .and_then(Value::as_array)
        .map(|ps| {
            ps.iter()
                .filter_map(|p| p.get("nodePort").and_then(Value::as_i64))
                .filter(|n| *n != 0)
                .collect()
        })
        .unwrap_or_default()
}

fn invalid(name: &str, field: &str, msg: String) -> ApiError {
    ApiError::invalid(
        "",
        "Service",
        name,
        vec![Cause::new("FieldValueInvalid", field, msg)],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_addresses_inside_the_ranges() {
        let r = Ranges::parse("10.96.0.0/12", "30000-32767", "/registry").unwrap();
        assert_eq!(r.first_ip().to_string(), "10.96.0.1");
        let mut svc = json!({"metadata": {"name": "s", "namespace": "d"}, "spec": {"type": "NodePort", "ports": [{"port": 80}]}});
        let req = Requested::of(&svc);
        let keys = r.plan_create(&mut svc, "d/s", &req).unwrap();
        assert_eq!(keys.len(), 2);
        let ip: Ipv4Addr = svc["spec"]["clusterIP"].as_str().unwrap().parse().unwrap();
        assert!(r.contains(ip));
        let np = svc["spec"]["ports"][0]["nodePort"].as_i64().unwrap();
        assert!((30000..=32767).contains(&np));
        let mut bad = json!({"metadata": {"name": "s"}, "spec": {"clusterIP": "192.168.0.1", "ports": [{"port": 80}]}});
        let req = Requested::of(&bad);
        assert_eq!(r.plan_create(&mut bad, "d/s", &req).unwrap_err().code, 422);
        let mut headless = json!({"metadata": {"name": "h"}, "spec": {"clusterIP": "None"}});
        let req = Requested::of(&headless);
        assert!(
            r.plan_create(&mut headless, "d/h", &req)
                .unwrap()
                .is_empty()
        );
        assert!(Ranges::parse("fd00::/108", "30000-32767", "/registry").is_err());
    }

    #[test]
    fn updates_keep_allocations() {
        let r = Ranges::parse("10.0.0.0/24", "30000-30010", "/r").unwrap();
        let old = json!({"metadata": {"name": "s", "namespace": "d"}, "spec": {"type": "NodePort", "clusterIP": "10.0.0.5", "ports": [{"port": 80, "protocol": "TCP", "nodePort": 30001}]}});
        let mut new = json!({"metadata": {"name": "s", "namespace": "d"}, "spec": {"type": "NodePort", "ports": [{"port": 80, "protocol": "TCP"}]}});
        let (alloc, release) = r.carry_over(&old, &mut new).unwrap();
        assert!(alloc.is_empty() && release.is_empty());
        assert_eq!(new["spec"]["clusterIP"], "10.0.0.5");
        assert_eq!(new["spec"]["ports"][0]["nodePort"], 30001);
        let mut to_cluster_ip = json!({"metadata": {"name": "s", "namespace": "d"}, "spec": {"type": "ClusterIP", "ports": [{"port": 80, "protocol": "TCP"}]}});
        let (_, release) = r.carry_over(&old, &mut to_cluster_ip).unwrap();
        assert_eq!(release, vec![b"/r/keelson/servicenodeports/30001".to_vec()]);
        let mut moved = json!({"metadata": {"name": "s"}, "spec": {"clusterIP": "10.0.0.6"}});
        assert_eq!(r.carry_over(&old, &mut moved).unwrap_err().code, 422);
    }
}
