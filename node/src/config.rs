//! `keelson node` flags (kubelet's names where kubelet has one) and what they resolve to.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::Taint;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use keelson_client::ClientArgs;
use keelson_scheduler::types::parse_quantity;

/// `keelson node` flags.
#[derive(clap::Args, Debug, Clone)]
pub struct Config {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub client: ClientArgs,
    /// The node's name (the host name when empty). With --hollow, the prefix of the nodes'
    /// names: `<name>-0`, `<name>-1`, ...
    #[arg(long, default_value = "")]
    pub node_name: String,
    /// Labels to add when registering the node (key=value,...).
    #[arg(long, value_delimiter = ',')]
    pub node_labels: Vec<String>,
    /// Taints to register the node with (key=value:Effect,...).
    #[arg(long, value_delimiter = ',')]
    pub register_with_taints: Vec<String>,
    /// The most pods this node runs.
    #[arg(long, default_value_t = 110)]
    pub max_pods: i64,
    /// Resources reserved for Kubernetes components (cpu=100m,memory=100Mi,...).
    #[arg(long, value_delimiter = ',')]
    pub kube_reserved: Vec<String>,
    /// Resources reserved for the system (cpu=100m,memory=100Mi,...).
    #[arg(long, value_delimiter = ',')]
    pub system_reserved: Vec<String>,
    /// The node's capacity instead of the host's (cpu=4,memory=8Gi,...); hollow nodes default
    /// to cpu=4,memory=16Gi.
    #[arg(long, value_delimiter = ',')]
    pub capacity: Vec<String>,
    /// The node's IP address (InternalIP), also the pods' host IP.
    #[arg(long, default_value = "127.0.0.1")]
    pub node_ip: IpAddr,
    /// The port of the kubelet API (HTTPS; 0 picks a free port).
    #[arg(long, default_value_t = 10250)]
    pub port: u16,
    /// The address the kubelet API listens on.
    #[arg(long, default_value = "127.0.0.1")]
    pub address: IpAddr,
    /// The kubelet API's serving certificate (self-signed when not given).
    #[arg(long)]
    pub tls_cert_file: Option<PathBuf>,
    /// The serving certificate's key.
    #[arg(long)]
    pub tls_private_key_file: Option<PathBuf>,
    /// When set, the kubelet API requires client certificates signed by this CA.
    #[arg(long)]
    pub client_ca_file: Option<PathBuf>,
    /// How often the node's status is computed and, when changed, posted.
    #[arg(long, default_value = "10s", value_parser = go_duration)]
    pub node_status_update_frequency: Duration,
    /// How often the node's status is posted even when unchanged.
    #[arg(long, default_value = "5m", value_parser = go_duration)]
    pub node_status_report_frequency: Duration,
    /// The node Lease's duration (it is renewed every quarter of it).
    #[arg(long, default_value_t = 40)]
    pub node_lease_duration_seconds: i32,
    /// Where the node keeps pods' directories and logs (one subdirectory per node).
    #[arg(long, default_value = "/var/lib/keelson-node")]
    pub root_dir: PathBuf,
    /// The pods' address range on this node (else the Node's spec.podCIDR); without either,
    /// pods share the host's network.
    #[arg(long)]
    pub pod_cidr: Option<String>,
    /// The cgroup under which pods' cgroups are made (in every hierarchy).
    #[arg(long, default_value = "keelson")]
    pub cgroup_root: String,
    /// A container's log file is rotated at this size.
    #[arg(long, default_value = "10Mi")]
    pub container_log_max_size: String,
    /// How many log files of a container are kept.
    #[arg(long, default_value_t = 5)]
    pub container_log_max_files: usize,
    /// Simulate containers instead of running them (kubemark's hollow kubelet).
    #[arg(long)]
    pub hollow: bool,
    /// With --hollow: how many nodes this process runs.
    #[arg(long, default_value_t = 1)]
    pub count: usize,
    /// With --hollow: each node acts as its own kubelet identity (user `system:node:<name>` in
    /// group `system:nodes`) by impersonation, so that the Node authorizer, NodeRestriction and
    /// API Priority and Fairness see one kubelet per node, as they do real ones. The process's
    /// user needs the `impersonate` verb on those users and on the group. The node's writes
    /// (registration, Lease, node and pod status, a pod's final delete) carry the node's
    /// identity; the pod watch and Events stay the process's.
    #[arg(long)]
    pub impersonate_nodes: bool,
    /// With --hollow: `shared` (one pod watch for all nodes) or `per-node` (one watch each,
    /// as real kubelets load the apiserver).
    #[arg(long, default_value = "shared")]
    pub hollow_watch: String,
    /// When the node stops, pods get at most this long to terminate (kubelet's
    /// shutdownGracePeriod).
    #[arg(long, default_value = "30s", value_parser = go_duration)]
    pub shutdown_grace_period: Duration,
    /// How many pod status writes run at once.
    #[arg(long, default_value_t = 16)]
    pub status_writers: usize,
    /// IP addresses of the cluster DNS, written as the nameservers of pods with dnsPolicy
    /// ClusterFirst (comma separated).
    #[arg(long, value_delimiter = ',')]
    pub cluster_dns: Vec<IpAddr>,
    /// The cluster's DNS domain, for the pods' search paths.
    #[arg(long, default_value = "cluster.local")]
    pub cluster_domain: String,
    /// The resolver configuration pods with dnsPolicy Default get (and ClusterFirst ones when
    /// no --cluster-dns is set).
    #[arg(long, default_value = "/etc/resolv.conf")]
    pub resolv_conf: PathBuf,
    /// Run the service proxy (nftables) for this node (not with --hollow).
    #[arg(long)]
    pub proxy: bool,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub proxy_args: crate::proxy::ProxyArgs,
}

fn go_duration(s: &str) -> Result<Duration, String> {
    keelson_client::duration::parse_go_duration(s)
}

/// What the flags say about one node.
#[derive(Debug, Clone)]
pub struct NodeSettings {
    /// Node name.
    pub name: String,
    /// Labels to register with.
    pub labels: BTreeMap<String, String>,
    /// Taints to register with.
    pub taints: Vec<Taint>,
    /// Capacity.
    pub capacity: BTreeMap<String, Quantity>,
    /// Allocatable (capacity less reservations).
    pub allocatable: BTreeMap<String, Quantity>,
    /// InternalIP.
    pub ip: IpAddr,
    /// The pods' CIDR from the flag.
    pub pod_cidr: Option<String>,
}

fn pairs(list: &[String], what: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for item in list.iter().filter(|s| !s.is_empty()) {
        let (k, v) = item
            .split_once('=')
            .ok_or_else(|| format!("{what}: {item:?} is not key=value"))?;
        out.insert(k.trim().to_string(), v.trim().to_string());
    }
    Ok(out)
}

/// Parses `key=value:Effect` (or `key:Effect`).
pub fn parse_taint(s: &str) -> Result<Taint, String> {
    let (kv, effect) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("--register-with-taints: {s:?} is not key=value:Effect"))?;
    if !matches!(effect, "NoSchedule" | "PreferNoSchedule" | "NoExecute") {
        return Err(format!(
            "--register-with-taints: invalid taint effect {effect:?}, unsupported taint effect"
        ));
    }
    let (key, value) = match kv.split_once('=') {
        Some((k, v)) => (k, Some(v.to_string())),
        None => (kv, None),
    };
    if key.is_empty() {
        return Err(format!("--register-with-taints: {s:?} has no key"));
    }
    Ok(Taint {
        key: key.into(),
        value,
        effect: effect.into(),
        time_added: None,
    })
}

/// The unit quantities of a resource are parsed in (millicores for CPU).
fn scale(resource: &str) -> i128 {
    if resource == "cpu" { 1000 } else { 1 }
}

fn host_capacity() -> BTreeMap<String, String> {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mem_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_string))
        })
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(1 << 20);
    BTreeMap::from([
        ("cpu".into(), cpus.to_string()),
        ("memory".into(), format!("{mem_kib}Ki")),
        ("ephemeral-storage".into(), "100Gi".into()),
    ])
}

impl Config {
    /// Resolves the flags for the node (or the hollow nodes' template); errors name the flag.
    pub fn node_settings(&self) -> Result<NodeSettings, String> {
        if self.hollow_watch != "shared" && self.hollow_watch != "per-node" {
            return Err(format!(
                "--hollow-watch must be shared or per-node, not {:?}",
                self.hollow_watch
            ));
        }
        if self.count > 1 && !self.hollow {
            return Err("--count needs --hollow".into());
        }
        if self.node_status_update_frequency.is_zero() {
            return Err("--node-status-update-frequency must be positive".into());
        }
        if self.node_lease_duration_seconds <= 0 {
            return Err("--node-lease-duration-seconds must be positive".into());
        }
        if let Some(c) = &self.pod_cidr {
            crate::process::net::Cidr::parse(c).map_err(|e| format!("--pod-cidr: {e}"))?;
        }
        parse_quantity(&self.container_log_max_size, 1)
            .filter(|v| *v > 0)
            .ok_or_else(|| {
                format!(
                    "--container-log-max-size: invalid quantity {:?}",
                    self.container_log_max_size
                )
            })?;
        let name = if !self.node_name.is_empty() {
            self.node_name.clone()
        } else if self.hollow {
            "hollow-node".into()
        } else {
            nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_else(|| "localhost".into())
                .to_lowercase()
        };
        let valid = !name.is_empty()
            && name.len() <= 253
            && name
                .split('.')
                .all(|l| !l.is_empty() && !l.starts_with('-') && !l.ends_with('-'))
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        if !valid {
            return Err(format!(
                "--node-name {name:?}: a node name must be a lowercase RFC 1123 subdomain"
            ));
        }
        if self.impersonate_nodes && !self.hollow {
            return Err("--impersonate-nodes is for --hollow nodes".into());
        }
        let mut labels = pairs(&self.node_labels, "--node-labels")?;
        for (k, v) in [
            ("kubernetes.io/os", "linux"),
            ("kubernetes.io/arch", "amd64"),
            ("beta.kubernetes.io/os", "linux"),
            ("beta.kubernetes.io/arch", "amd64"),
        ] {
            labels.entry(k.into()).or_insert_with(|| v.into());
        }
        let taints = self
            .register_with_taints
            .iter()
            .filter(|s| !s.is_empty())
            .map(|s| parse_taint(s))
            .collect::<Result<Vec<_>, _>>()?;
        let mut cap = if self.hollow {
            BTreeMap::from([
                ("cpu".to_string(), "4".to_string()),
                ("memory".to_string(), "16Gi".to_string()),
                ("ephemeral-storage".to_string(), "100Gi".to_string()),
            ])
        } else {
            host_capacity()
        };
        cap.extend(pairs(&self.capacity, "--capacity")?);
        cap.insert("pods".into(), self.max_pods.to_string());
        let mut reserved: BTreeMap<String, i64> = BTreeMap::new();
        for (flag, list) in [
            ("--kube-reserved", &self.kube_reserved),
            ("--system-reserved", &self.system_reserved),
        ] {
            for (k, v) in pairs(list, flag)? {
                let q = parse_quantity(&v, scale(&k))
                    .ok_or_else(|| format!("{flag}: invalid quantity {v:?} for {k}"))?;
                *reserved.entry(k).or_default() += q;
            }
        }
        let mut alloc = BTreeMap::new();
        for (k, v) in &cap {
            let total = parse_quantity(v, scale(k))
                .ok_or_else(|| format!("capacity {k}: invalid quantity {v:?}"))?;
            let left = (total - reserved.get(k).copied().unwrap_or(0)).max(0);
            let q = if k == "cpu" {
                if left % 1000 == 0 {
                    (left / 1000).to_string()
                } else {
                    format!("{left}m")
                }
            } else if k == "memory" && left % 1024 == 0 {
                format!("{}Ki", left / 1024)
            } else {
                left.to_string()
            };
            alloc.insert(k.clone(), Quantity(q));
        }
        Ok(NodeSettings {
            name,
            labels,
            taints,
            capacity: cap.into_iter().map(|(k, v)| (k, Quantity(v))).collect(),
            allocatable: alloc,
            ip: self.node_ip,
            pod_cidr: self.pod_cidr.clone(),
        })
    }

    /// The log rotation size in bytes.
    pub fn log_max_bytes(&self) -> u64 {
        parse_quantity(&self.container_log_max_size, 1).unwrap_or(10 << 20) as u64
    }
}
