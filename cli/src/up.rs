//! `keelson up`: a local cluster of separate processes on loopback.
//!
//! Today it starts the store tier (N `keelson store` members, default 3, forming one Raft
//! cluster), the API tier (M `keelson apiserver` replicas, default 2, behind a TCP balancer on
//! 127.0.0.1:6443), and HA pairs of controller-managers and schedulers (each pair electing a
//! leader through a Lease), with a generated CA and TLS, and writes `admin.kubeconfig`. Nodes
//! join as their issue lands.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use keelson_client::ports::free_port;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

/// Flags of `keelson up`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Number of store members.
    #[arg(long, default_value_t = 3)]
    pub stores: usize,
    /// One of each component (a single store member).
    #[arg(long)]
    pub single: bool,
    /// Number of apiservers.
    #[arg(long, default_value_t = 2)]
    pub apiservers: usize,
    /// Number of controller-managers (one leads at a time, through a Lease).
    #[arg(long, default_value_t = 2)]
    pub controller_managers: usize,
    /// Number of schedulers (one leads at a time, through a Lease).
    #[arg(long, default_value_t = 2)]
    pub schedulers: usize,
    /// Number of nodes running pods as real processes (needs root: namespaces, cgroups,
    /// a bridge per node).
    #[arg(long, default_value_t = 2)]
    pub nodes: usize,
    /// Number of cluster DNS servers (with process-runtime nodes; at most 1 with --single; 0
    /// turns the cluster DNS off).
    #[arg(long, default_value_t = 2)]
    pub dns_replicas: usize,
    /// Number of hollow nodes (simulated containers), all in one process.
    #[arg(long, default_value_t = 0)]
    pub hollow_nodes: usize,
    /// How often hollow nodes post their status even when it has not changed (the kubelet's
    /// `--node-status-report-frequency`, 5m; kubelets before 1.17 posted every 10s): node
    /// status churn for scale runs.
    #[arg(long, default_value = "5m", value_parser = keelson_client::duration::parse_go_duration)]
    pub hollow_node_status_report_frequency: std::time::Duration,
    /// Port of the balancer in front of the apiservers (the kubeconfig's server).
    #[arg(long, default_value_t = 6443)]
    pub port: u16,
    /// Where members keep their data (one subdirectory each).
    #[arg(long, default_value = "keelson-data")]
    pub data_dir: PathBuf,
    /// Encryption at rest of Secrets: `kms` (KMS v2 through the bundled `keelson kms-plugin`,
    /// keys in `<data>/kms/keys.json`) or `none`. Secrets written under kms stay unreadable
    /// with `none`.
    #[arg(long, default_value = "kms", value_parser = ["kms", "none"])]
    pub encryption: String,
    /// The apiservers' `--authorization-mode`. With RBAC, the components get their roles (see
    /// the README); `AlwaysAllow` is for comparisons (`keelson-bench authz`).
    #[arg(long, default_value = "Node,RBAC")]
    pub authorization_mode: String,
    /// Auditing by the apiservers: `metadata` (every request but health checks and node
    /// heartbeats, at the Metadata level, to `<data>/logs/audit-<i>.log`, rotated at 100 MB,
    /// 5 kept)
    /// or `none`.
    #[arg(long, default_value = "metadata", value_parser = ["metadata", "none"])]
    pub audit: String,
    /// Client QPS (and burst) of the controller-managers and schedulers, as the Kubernetes
    /// scalability jobs raise them (100); unset, their upstream defaults (20/30 and 50/100).
    #[arg(long)]
    pub control_plane_qps: Option<u32>,
    /// An etcd-compatible binary to run as the store members in place of `keelson store`, with
    /// the same (etcd's) flags: e.g. `/usr/bin/etcd`, to compare the control plane on both.
    #[arg(long)]
    pub store_binary: Option<PathBuf>,
    /// Run in the background: return once the cluster is ready (output in `<data>/up.log`);
    /// `keelson status` shows it, `keelson down` stops it.
    #[arg(long)]
    pub detach: bool,
    /// Stop (as on SIGTERM) when the process that started this one exits, even by kill -9:
    /// for tools that run a cluster for their own lifetime (`keelson chaos control-plane`).
    /// With `=PID`, the parent must be that process from the start: one that died before
    /// this one looked is noticed too.
    #[arg(long, hide = true, num_args = 0..=1, require_equals = true, default_missing_value = "0")]
    pub stop_with_parent: Option<u32>,
}

/// Set by `keelson up` on the keelson processes it starts: its pid. Such a process stops (as
/// on SIGTERM) once that parent has gone, however it went.
pub(crate) const STOP_WITH_PARENT_ENV: &str = "KEELSON_STOP_WITH_PARENT";

/// Arms [`stop_with_parent`] when [`STOP_WITH_PARENT_ENV`] names this process's parent, or a
/// process that has gone already (its `up` died before this one looked); a value inherited
/// from further up (a process started by one that `up` started) is ignored.
pub(crate) fn stop_with_parent_from_env(shutdown: &CancellationToken) {
    let Some(pid) = std::env::var(STOP_WITH_PARENT_ENV)
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
    else {
        return;
    };
    if std::os::unix::process::parent_id() == pid
        || !std::path::Path::new(&format!("/proc/{pid}")).exists()
    {
        stop_with_parent(pid, shutdown.clone());
    }
}

/// Cancels `shutdown` once this process's parent has gone (it is adopted by another): the
/// parent `expected` names, or (0) the one it has now.
fn stop_with_parent(expected: u32, shutdown: CancellationToken) {
    let parent = match expected {
        0 => std::os::unix::process::parent_id(),
        pid => pid,
    };
    tokio::spawn(async move {
        // The first tick is at once: a parent gone already is noticed now.
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            if std::os::unix::process::parent_id() != parent {
                eprintln!(
                    "keelson: the process that started it (pid {parent}) has exited; stopping"
                );
                shutdown.cancel();
                return;
            }
        }
    });
}

/// Refuses store members' data the chosen store binary cannot read: keelson-store's
/// (`member.json`) under `--store-binary`, or another store's (etcd's `member/`) without it.
fn check_store_data(
    data: &std::path::Path,
    store_binary: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    for member in std::fs::read_dir(data).into_iter().flatten().flatten() {
        let dir = member.path();
        if !member.file_name().to_string_lossy().starts_with("store-") {
            continue;
        }
        match store_binary {
            Some(bin) if dir.join("member.json").exists() => bail!(
                "{} holds keelson-store data, which {} cannot read; use a new --data-dir",
                dir.display(),
                bin.display()
            ),
            None if dir.join("member").exists() => bail!(
                "{} holds another store's data (etcd's member/): start it with the same --store-binary, or use a new --data-dir",
                dir.display()
            ),
            _ => {}
        }
    }
    Ok(())
}

/// `--kube-api-qps` and `--kube-api-burst` of a control-plane component: `qps` for both when
/// given, else the component's own defaults (none: the flags' defaults).
fn qps_flags(qps: Option<u32>, defaults: Option<(u32, u32)>) -> Vec<String> {
    match qps.map(|q| (q, q)).or(defaults) {
        Some((qps, burst)) => vec![
            format!("--kube-api-qps={qps}"),
            format!("--kube-api-burst={burst}"),
        ],
        None => Vec::new(),
    }
}

/// Flags of `keelson status` and `keelson down`.
#[derive(Debug, clap::Args)]
pub struct DataDirArgs {
    /// The data directory of the cluster (`keelson up --data-dir`).
    #[arg(long, default_value = "keelson-data")]
    pub data_dir: PathBuf,
}

/// `keelson up --detach`: starts `keelson up` (the same flags) in its own process group with
/// its output in `<data>/up.log`, and returns once it is ready, printing what it printed.
pub async fn detach(args: &Args, shutdown: CancellationToken) -> anyhow::Result<()> {
    if args.stop_with_parent.is_some() {
        bail!(
            "--stop-with-parent cannot be used with --detach (the background cluster would stop as soon as it is ready)"
        );
    }
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    if let Some(pid) = running_up(&args.data_dir) {
        bail!(
            "{} is in use by keelson up (pid {pid}); stop it with `keelson down --data-dir {}`",
            args.data_dir.display(),
            args.data_dir.display()
        );
    }
    let log_path = args.data_dir.join("up.log");
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("creating {}", log_path.display()))?;
    let argv: Vec<std::ffi::OsString> = std::env::args_os()
        .skip(1)
        .filter(|a| a != "--detach")
        .collect();
    use std::os::unix::process::CommandExt as _;
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .args(argv)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("starting keelson up in the background")?;
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    loop {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        if text.contains("Press Ctrl-C") {
            for l in text.lines().filter(|l| !l.starts_with("Press Ctrl-C")) {
                println!("{l}");
            }
            println!(
                "keelson up runs in the background (pid {}, output in {}); `keelson status --data-dir {}` shows it, `keelson down --data-dir {}` stops it.",
                child.id(),
                log_path.display(),
                args.data_dir.display(),
                args.data_dir.display()
            );
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            eprint!("{text}");
            bail!("keelson up exited ({status}) before the cluster was ready");
        }
        let stop = |why: String| -> anyhow::Result<()> {
            // The background `up` stops what it started on SIGTERM.
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
            bail!("{why}; stopping it (see {})", log_path.display())
        };
        if shutdown.is_cancelled() {
            return stop("interrupted before the cluster was ready".into());
        }
        if std::time::Instant::now() > deadline {
            return stop(format!(
                "keelson up (pid {}) not ready within 300 s",
                child.id()
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `keelson status`: the status table of the `keelson up` running on the data directory.
pub fn status(args: &DataDirArgs) -> anyhow::Result<()> {
    let Some(pid) = running_up(&args.data_dir) else {
        bail!("no keelson up is running on {}", args.data_dir.display());
    };
    let path = args.data_dir.join(STATUS_FILE);
    let Ok(bytes) = std::fs::read(&path) else {
        println!(
            "keelson up (pid {pid}) on {} is starting",
            args.data_dir.display()
        );
        return Ok(());
    };
    let rows: Vec<Row> =
        serde_json::from_slice(&bytes).with_context(|| format!("reading {}", path.display()))?;
    println!("keelson up (pid {pid}) on {}:", args.data_dir.display());
    print_table(&rows);
    Ok(())
}

/// `keelson down`: stops the `keelson up` running on the data directory (SIGTERM to it, which
/// stops every component, nodes stopping their pods first) and waits until it has let go of the
/// data directory.
pub async fn down(args: &DataDirArgs) -> anyhow::Result<()> {
    let Some(pid) = running_up(&args.data_dir) else {
        bail!("no keelson up is running on {}", args.data_dir.display());
    };
    kill(Pid::from_raw(pid as i32), Signal::SIGTERM)
        .with_context(|| format!("signalling keelson up (pid {pid})"))?;
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while running_up(&args.data_dir).is_some() {
        if std::time::Instant::now() > deadline {
            bail!("keelson up (pid {pid}) still running 90 s after SIGTERM");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!("keelson up (pid {pid}) stopped");
    Ok(())
}

/// The KMS plugin `up` runs (not started yet: it starts with the store, and its socket is its
/// health) and the EncryptionConfiguration that points the apiservers at it.
fn kms_plugin(
    data_dir: &std::path::Path,
    logs: &std::path::Path,
) -> anyhow::Result<(Supervised, PathBuf)> {
    let dir = std::path::absolute(data_dir.join("kms")).context("locating the data directory")?;
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let sock = dir.join("kms.sock");
    if sock.as_os_str().len() > 100 {
        bail!(
            "the KMS plugin socket {} is longer than a unix socket path may be; use a shorter --data-dir or --encryption none",
            sock.display()
        );
    }
    let endpoint = format!("unix://{}", sock.display());
    let config = data_dir.join("encryption-config.yaml");
    std::fs::write(
        &config,
        format!(
            "# Written by keelson up: Secrets are encrypted through the KMS v2 plugin; identity reads\n# Secrets stored before encryption was on.\napiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers:\n  - kms: {{apiVersion: v2, name: keelson-kms, endpoint: \"{endpoint}\", timeout: 3s}}\n  - identity: {{}}\n"
        ),
    )
    .with_context(|| format!("writing {}", config.display()))?;
    let _ = std::fs::remove_file(&sock);
    let mut plugin = Supervised::new(
        "kms-plugin".into(),
        vec![
            "kms-plugin".into(),
            format!("--listen-addr={endpoint}"),
            format!("--keys-file={}", dir.join("keys.json").display()),
        ],
    )
    .serving(endpoint.clone(), Probe::Unix(sock.clone()));
    plugin.log_to(logs);
    Ok((plugin, config))
}

/// The ports a cluster was created with, kept in `<data>/topology.json` so a restart finds its
/// store members at the addresses the Raft membership remembers.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Topology {
    /// The layout of the data dir ([`DATA_FORMAT`] when written; absent in the first one).
    #[serde(default = "first_format")]
    format: u32,
    /// (client, peer) port per store member.
    stores: Vec<(u16, u16)>,
    /// Secure port per apiserver.
    apiservers: Vec<u16>,
    /// Health/metrics port per controller-manager.
    #[serde(default)]
    controller_managers: Vec<u16>,
    /// Health/metrics port per scheduler.
    #[serde(default)]
    schedulers: Vec<u16>,
    /// Kubelet API port per node.
    #[serde(default)]
    nodes: Vec<u16>,
    /// Whether the store members speak TLS (client and peer ports). Clusters created before
    /// store TLS keep plain http, since their Raft membership remembers http peer URLs.
    #[serde(default)]
    store_tls: bool,
}

/// The data dir layout this keelson writes and reads. A newer layout is refused rather than
/// half-understood; an older one is read (and upgraded in place, where that is ever needed).
const DATA_FORMAT: u32 = 1;

fn first_format() -> u32 {
    1
}

/// What `up` itself may have written into a data dir before its topology: the lock and the
/// background run's output.
const BEFORE_TOPOLOGY: [&str; 2] = [PID_FILE, "up.log"];

impl Topology {
    /// Refuses a data dir this keelson cannot run: one written by a newer keelson, one whose
    /// topology is unreadable, or a non-empty directory that is not a `keelson up` data dir
    /// (an etcd data dir, say). Reads only.
    fn check_data_dir(dir: &std::path::Path) -> anyhow::Result<()> {
        let path = dir.join("topology.json");
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let v: serde_json::Value = serde_json::from_str(&text).with_context(|| {
                    format!(
                        "{} is unreadable: not a keelson up data dir, or a damaged one; use another --data-dir",
                        path.display()
                    )
                })?;
                let format = match v.get("format") {
                    None => first_format(),
                    Some(f) => f
                        .as_u64()
                        .and_then(|f| u32::try_from(f).ok())
                        .with_context(|| {
                            format!("{}: format {f} is not a version number", path.display())
                        })?,
                };
                if format > DATA_FORMAT {
                    bail!(
                        "{} was written by a newer keelson (data format {format}; this keelson reads up to {DATA_FORMAT}); run that keelson, or use another --data-dir",
                        dir.display()
                    );
                }
                serde_json::from_value::<Topology>(v).with_context(|| {
                    format!(
                        "{} does not describe a cluster this keelson can run; use another --data-dir",
                        path.display()
                    )
                })?;
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let foreign: Vec<String> = std::fs::read_dir(dir)
                    .with_context(|| format!("reading {}", dir.display()))?
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| !BEFORE_TOPOLOGY.contains(&n.as_str()))
                    .collect();
                if !foreign.is_empty() {
                    bail!(
                        "{} is not empty ({}) and has no topology.json: it is not a keelson up data dir; use an empty or new --data-dir",
                        dir.display(),
                        foreign.join(", ")
                    );
                }
                Ok(())
            }
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Every port the components listen on, with the component it belongs to.
    fn ports(&self) -> Vec<(String, u16)> {
        let each = |what: &str, ports: &[u16]| -> Vec<(String, u16)> {
            ports
                .iter()
                .enumerate()
                .map(|(i, p)| (format!("{what} {i}"), *p))
                .collect()
        };
        let mut out: Vec<(String, u16)> = self
            .stores
            .iter()
            .enumerate()
            .flat_map(|(i, (c, p))| {
                [
                    (format!("store member s{i} (client)"), *c),
                    (format!("store member s{i} (peer)"), *p),
                ]
            })
            .collect();
        out.extend(each("apiserver", &self.apiservers));
        out.extend(each("controller-manager", &self.controller_managers));
        out.extend(each("scheduler", &self.schedulers));
        out.extend(each("node", &self.nodes));
        out
    }

    fn load_or_create(
        dir: &std::path::Path,
        stores: usize,
        apiservers: usize,
        controller_managers: usize,
        schedulers: usize,
        nodes: usize,
    ) -> anyhow::Result<Topology> {
        let path = dir.join("topology.json");
        if let Ok(text) = std::fs::read_to_string(&path) {
            let mut t: Topology = serde_json::from_str(&text)
                .with_context(|| format!("reading {}", path.display()))?;
            if t.stores.len() != stores {
                bail!(
                    "{} holds a cluster of {} store member(s); remove it or pass --stores {}",
                    dir.display(),
                    t.stores.len(),
                    t.stores.len()
                );
            }
            // Apiservers are stateless: their number may change between runs.
            t.apiservers.truncate(apiservers);
            while t.apiservers.len() < apiservers {
                t.apiservers.push(free_port()?);
            }
            t.controller_managers.truncate(controller_managers);
            while t.controller_managers.len() < controller_managers {
                t.controller_managers.push(free_port()?);
            }
            t.schedulers.truncate(schedulers);
            while t.schedulers.len() < schedulers {
                t.schedulers.push(free_port()?);
            }
            t.nodes.truncate(nodes);
            while t.nodes.len() < nodes {
                t.nodes.push(free_port()?);
            }
            std::fs::write(&path, serde_json::to_string_pretty(&t)?)?;
            return Ok(t);
        }
        let mut t = Topology {
            format: DATA_FORMAT,
            stores: Vec::new(),
            apiservers: Vec::new(),
            controller_managers: Vec::new(),
            schedulers: Vec::new(),
            nodes: Vec::new(),
            store_tls: true,
        };
        for _ in 0..stores {
            t.stores.push((free_port()?, free_port()?));
        }
        for _ in 0..apiservers {
            t.apiservers.push(free_port()?);
        }
        for _ in 0..controller_managers {
            t.controller_managers.push(free_port()?);
        }
        for _ in 0..schedulers {
            t.schedulers.push(free_port()?);
        }
        for _ in 0..nodes {
            t.nodes.push(free_port()?);
        }
        std::fs::write(&path, serde_json::to_string_pretty(&t)?)
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(t)
    }
}

/// The audit policy of `up --audit metadata`: health checks and the nodes' and leaders'
/// Lease renewals (several a second, all alike) are left out; everything else is recorded at
/// the Metadata level, without the RequestReceived stage.
const AUDIT_POLICY: &str = "# Written by keelson up (--audit metadata).
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: None
  nonResourceURLs: [\"/healthz*\", \"/livez*\", \"/readyz*\", \"/version\"]
- level: None
  verbs: [get, update]
  resources: [{group: coordination.k8s.io, resources: [leases]}]
- level: Metadata
";

/// The issuer of service-account tokens (kubeadm's default).
const SERVICE_ACCOUNT_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// The `kubernetes` Service address with the default `--service-cluster-ip-range`.
const KUBERNETES_SERVICE_IP: &str = "10.96.0.1";

/// Starts the cluster and waits for Ctrl-C, then stops every process it started.
pub async fn run(args: Args, shutdown: CancellationToken) -> anyhow::Result<()> {
    if let Some(parent) = args.stop_with_parent {
        stop_with_parent(parent, shutdown.clone());
    }
    let n = if args.single { 1 } else { args.stores };
    if n == 0 {
        bail!("--stores must be at least 1");
    }
    if let Some(bin) = &args.store_binary
        && keelson_client::program::find(bin).is_none()
    {
        bail!("--store-binary {}: no such program", bin.display());
    }
    let apis = if args.single { 1 } else { args.apiservers };
    if apis == 0 {
        bail!("--apiservers must be at least 1");
    }
    if args.hollow_node_status_report_frequency < std::time::Duration::from_secs(1) {
        bail!("--hollow-node-status-report-frequency must be at least 1s");
    }
    let cms = if args.single {
        1
    } else {
        args.controller_managers
    };
    let scheds = if args.single { 1 } else { args.schedulers };
    let nodes = if args.single {
        args.nodes.min(1)
    } else {
        args.nodes
    };
    // Everything that can refuse the start is checked before anything is written or started.
    let rbac = keelson_apiserver::authz::Authorizer::parse_modes(&args.authorization_mode)
        .map_err(anyhow::Error::msg)?
        .contains(&keelson_apiserver::authz::Mode::Rbac);
    if nodes > 0 && !nix::unistd::geteuid().is_root() {
        bail!(
            "process-runtime nodes need root (namespaces, cgroups, a bridge per node); run as root, or pass --nodes 0 (with --hollow-nodes N for simulated nodes)"
        );
    }
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    // Held until `up` ends, whichever way: the data dir is ours, and `status`/`down` find us.
    // Read-only, so before the lock writes anything into a directory that may not be ours.
    Topology::check_data_dir(&args.data_dir)?;
    check_store_data(&args.data_dir, args.store_binary.as_deref())?;
    let _lock = PidLock::take(&args.data_dir)?;
    let balancer = match tokio::net::TcpListener::bind(("127.0.0.1", args.port)).await {
        Ok(l) => l,
        Err(e) => bail!(
            "cannot listen on 127.0.0.1:{} for the apiserver balancer ({e}); choose another with --port",
            args.port
        ),
    };
    // `--port 0`: the one the system chose.
    let port = balancer
        .local_addr()
        .context("the apiserver balancer's address")?
        .port();
    let exe = std::env::current_exe().context("locating the keelson binary")?;
    let topo = Topology::load_or_create(&args.data_dir, n, apis, cms, scheds, nodes)?;
    // Every port the components will listen on must be free before anything starts.
    let named = topo.ports();
    for (what, port) in &named {
        if let Err(e) = TcpListener::bind(("127.0.0.1", *port)) {
            bail!(
                "port {port} for {what} is not free ({e}); stop what uses it (the ports of {} are fixed: the store's membership remembers them)",
                args.data_dir.join("topology.json").display()
            );
        }
    }
    // Ports for components the topology does not keep: never one it hands out (those are not
    // bound yet, so the system could offer them again).
    let mut taken: std::collections::HashSet<u16> =
        named.iter().map(|(_, p)| *p).chain([port]).collect();
    let mut spare_port = move || -> anyhow::Result<u16> {
        loop {
            let p = free_port()?;
            if taken.insert(p) {
                return Ok(p);
            }
        }
    };
    let logs = args.data_dir.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let pki = crate::pki::ensure(&args.data_dir.join("pki"), KUBERNETES_SERVICE_IP)?;
    let pki_dir = args.data_dir.join("pki");
    let (sa_key, sa_pub) = crate::pki::service_account_keys(&pki_dir)?;
    let kubelet_client = crate::pki::issue(
        &pki_dir,
        "apiserver-kubelet-client",
        "kube-apiserver-kubelet-client",
        Some("system:masters"),
        &[],
    )?;
    let ports = topo.stores.clone();
    let scheme = if topo.store_tls { "https" } else { "http" };
    let etcd_pki = pki_dir.join("etcd");
    let etcd_ca = crate::pki::ensure_ca(&etcd_pki, crate::pki::ETCD_CA)?;
    // For people with etcdctl.
    let etcdctl_client = crate::pki::issue_by(
        &etcd_pki,
        crate::pki::ETCD_CA,
        "etcdctl",
        "etcdctl",
        None,
        &[],
    )?;
    let initial: Vec<String> = ports
        .iter()
        .enumerate()
        .map(|(i, (_, p))| format!("s{i}={scheme}://127.0.0.1:{p}"))
        .collect();
    let initial = initial.join(",");
    let mut procs: Vec<Supervised> = Vec::new();
    for (i, (client, peer)) in ports.iter().enumerate() {
        let dir = args.data_dir.join(format!("store-{i}"));
        let mut store_args = vec![
            "store".into(),
            "--name".into(),
            format!("s{i}"),
            format!("--data-dir={}", dir.display()),
            format!("--listen-client-urls={scheme}://127.0.0.1:{client}"),
            format!("--advertise-client-urls={scheme}://127.0.0.1:{client}"),
            format!("--listen-peer-urls={scheme}://127.0.0.1:{peer}"),
            format!("--initial-advertise-peer-urls={scheme}://127.0.0.1:{peer}"),
            format!("--initial-cluster={initial}"),
        ];
        if topo.store_tls {
            // One certificate per member, for its client and peer ports and as its identity
            // towards the other members; clients and peers must present one of the etcd CA.
            let (cert, key) = crate::pki::issue_by(
                &etcd_pki,
                crate::pki::ETCD_CA,
                &format!("store-{i}"),
                &format!("s{i}"),
                None,
                &["127.0.0.1".into(), "localhost".into()],
            )?;
            for (flag, path) in [
                ("cert-file", &cert),
                ("key-file", &key),
                ("trusted-ca-file", &etcd_ca),
                ("peer-cert-file", &cert),
                ("peer-key-file", &key),
                ("peer-trusted-ca-file", &etcd_ca),
            ] {
                store_args.push(format!("--{flag}={}", path.display()));
            }
            store_args.push("--client-cert-auth".into());
            store_args.push("--peer-client-cert-auth".into());
        }
        let mut member = Supervised::new(format!("store member s{i}"), store_args).serving(
            format!("{scheme}://127.0.0.1:{client}"),
            Probe::Tcp(*client),
        );
        if let Some(bin) = &args.store_binary {
            // The same flags, without the `store` subcommand.
            member.args.remove(0);
            member.program = Some(bin.clone());
        }
        procs.push(member);
    }
    let endpoints: Vec<String> = ports
        .iter()
        .map(|(c, _)| format!("{scheme}://127.0.0.1:{c}"))
        .collect();
    let endpoints = endpoints.join(",");
    let mut etcd_client_args = Vec::new();
    if topo.store_tls {
        let (cert, key) = crate::pki::issue_by(
            &etcd_pki,
            crate::pki::ETCD_CA,
            "apiserver-etcd-client",
            "kube-apiserver-etcd-client",
            None,
            &[],
        )?;
        etcd_client_args = vec![
            format!("--etcd-cafile={}", etcd_ca.display()),
            format!("--etcd-certfile={}", cert.display()),
            format!("--etcd-keyfile={}", key.display()),
        ];
    }
    if args.encryption == "none" && args.data_dir.join("kms").join("keys.json").exists() {
        bail!(
            "{} holds KMS keys: Secrets stored encrypted would be unreadable with --encryption none; use --encryption kms (or a new --data-dir)",
            args.data_dir.display()
        );
    }
    let (kms_plugin, encryption_args) = if args.encryption == "kms" {
        let (plugin, config) = kms_plugin(&args.data_dir, &logs)?;
        (
            Some(plugin),
            vec![
                format!("--encryption-provider-config={}", config.display()),
                "--encryption-provider-config-automatic-reload".into(),
            ],
        )
    } else {
        (None, Vec::new())
    };
    let audit_args: Vec<String> = if args.audit == "metadata" {
        let policy = args.data_dir.join("audit-policy.yaml");
        std::fs::write(&policy, AUDIT_POLICY)
            .with_context(|| format!("writing {}", policy.display()))?;
        vec![
            format!("--audit-policy-file={}", policy.display()),
            "--audit-log-maxsize=100".into(),
            "--audit-log-maxbackup=5".into(),
            "--audit-log-maxage=7".into(),
        ]
    } else {
        Vec::new()
    };
    let mut api_addrs = Vec::new();
    for (i, port) in topo.apiservers.iter().copied().enumerate() {
        api_addrs.push(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
        procs.push(
            Supervised::new(
                format!("apiserver {i}"),
                vec![
                    "apiserver".into(),
                    format!("--etcd-servers={endpoints}"),
                    format!("--secure-port={port}"),
                    "--bind-address=127.0.0.1".into(),
                    format!("--tls-cert-file={}", pki.apiserver_cert.display()),
                    format!("--tls-private-key-file={}", pki.apiserver_key.display()),
                    format!("--client-ca-file={}", pki.ca.display()),
                    "--anonymous-auth=false".into(),
                    format!("--authorization-mode={}", args.authorization_mode),
                    "--enable-admission-plugins=NodeRestriction".into(),
                    format!("--service-account-issuer={SERVICE_ACCOUNT_ISSUER}"),
                    format!("--service-account-signing-key-file={}", sa_key.display()),
                    format!("--service-account-key-file={}", sa_pub.display()),
                    format!(
                        "--kubelet-client-certificate={}",
                        kubelet_client.0.display()
                    ),
                    format!("--kubelet-client-key={}", kubelet_client.1.display()),
                    format!("--kubelet-certificate-authority={}", pki.ca.display()),
                ]
                .into_iter()
                // Without a controller-manager nothing makes the `default` accounts pods run
                // as, and the ServiceAccount plugin (on by default) would refuse every pod;
                // nor does anything take the not-ready taint TaintNodesByCondition gives new
                // nodes off them, or the finalizers StorageObjectInUseProtection gives claims
                // and volumes.
                .chain((cms == 0).then(|| {
                    "--disable-admission-plugins=ServiceAccount,TaintNodesByCondition,StorageObjectInUseProtection"
                        .to_string()
                }))
                .chain(encryption_args.iter().cloned())
                .chain(audit_args.iter().cloned())
                // One audit file per apiserver: each rotates its own.
                .chain((!audit_args.is_empty()).then(|| {
                    format!(
                        "--audit-log-path={}",
                        logs.join(format!("audit-{i}.log")).display()
                    )
                }))
                .chain(etcd_client_args.iter().cloned())
                .collect(),
            )
            .serving(format!("https://127.0.0.1:{port}"), Probe::Tcp(port)),
        );
    }
    // Components reach the apiservers directly, failing over between them.
    let masters: Vec<String> = topo
        .apiservers
        .iter()
        .map(|p| format!("https://127.0.0.1:{p}"))
        .collect();
    let cm_kubeconfig = args.data_dir.join("controller-manager.kubeconfig");
    std::fs::write(
        &cm_kubeconfig,
        crate::pki::kubeconfig(
            &pki,
            &masters[0],
            crate::grants::CONTROLLER_MANAGER,
            (&pki.controller_manager.0, &pki.controller_manager.1),
        )?,
    )
    .with_context(|| format!("writing {}", cm_kubeconfig.display()))?;
    for (i, port) in topo.controller_managers.iter().copied().enumerate() {
        procs.push(
            Supervised::new(
                format!("controller-manager {i}"),
                vec![
                    "controller-manager".into(),
                    format!("--kubeconfig={}", cm_kubeconfig.display()),
                    format!("--master={}", masters.join(",")),
                    "--bind-address=127.0.0.1".into(),
                    format!("--secure-port={port}"),
                    format!("--root-ca-file={}", pki.ca.display()),
                    // CertificateSigningRequests are issued by the cluster CA.
                    format!("--cluster-signing-cert-file={}", pki.ca.display()),
                    format!(
                        "--cluster-signing-key-file={}",
                        pki.ca.with_file_name("ca.key").display()
                    ),
                    // Each controller as its own ServiceAccount, with its bootstrap role.
                    "--use-service-account-credentials=true".into(),
                ]
                .into_iter()
                .chain(qps_flags(args.control_plane_qps, None))
                .collect(),
            )
            .serving(
                format!("https://127.0.0.1:{port}/healthz"),
                Probe::Tcp(port),
            ),
        );
    }
    let sched_kubeconfig = args.data_dir.join("scheduler.kubeconfig");
    std::fs::write(
        &sched_kubeconfig,
        crate::pki::kubeconfig(
            &pki,
            &masters[0],
            "system:kube-scheduler",
            (&pki.scheduler.0, &pki.scheduler.1),
        )?,
    )
    .with_context(|| format!("writing {}", sched_kubeconfig.display()))?;
    for (i, port) in topo.schedulers.iter().copied().enumerate() {
        procs.push(
            Supervised::new(
                format!("scheduler {i}"),
                vec![
                    "scheduler".into(),
                    format!("--kubeconfig={}", sched_kubeconfig.display()),
                    format!("--master={}", masters.join(",")),
                    "--bind-address=127.0.0.1".into(),
                    format!("--secure-port={port}"),
                ]
                .into_iter()
                // kube-scheduler's clientConnection defaults.
                .chain(qps_flags(args.control_plane_qps, Some((50, 100))))
                .collect(),
            )
            .serving(
                format!("https://127.0.0.1:{port}/healthz"),
                Probe::Tcp(port),
            ),
        );
    }
    let nodes_dir = args.data_dir.join("nodes");
    // Pod networks need iproute2; without it pods share the host's network.
    let has_ip = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("ip").is_file()));
    if nodes > 0 && !has_ip {
        eprintln!(
            "keelson up: `ip` (iproute2) not found: pods will share the host's network instead of getting their own IPs"
        );
    }
    let has_nft = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("nft").is_file()));
    // Service networking (the proxy on every node, the cluster DNS) needs pod networks and
    // nftables.
    let networking = nodes > 0 && has_ip && has_nft;
    if nodes > 0 && has_ip && !has_nft {
        eprintln!(
            "keelson up: `nft` (nftables) not found: no service proxy and no cluster DNS; ClusterIPs will not answer"
        );
    }
    let dns_replicas = if !networking {
        0
    } else if args.single {
        args.dns_replicas.min(1)
    } else {
        // 0 turns the cluster DNS off; the addresses 169.254.20.10.. hold at most 10.
        args.dns_replicas.min(10)
    };
    if dns_replicas > 0 {
        crate::cluster_dns::setup(dns_replicas).await?;
        let client = crate::pki::issue(&pki_dir, "dns", crate::grants::DNS, None, &[])?;
        let kc = args.data_dir.join("dns.kubeconfig");
        std::fs::write(
            &kc,
            crate::pki::kubeconfig(
                &pki,
                &masters[0],
                crate::grants::DNS,
                (&client.0, &client.1),
            )?,
        )
        .with_context(|| format!("writing {}", kc.display()))?;
        for i in 0..dns_replicas {
            let health = spare_port()?;
            procs.push(
                Supervised::new(
                    format!("dns {i}"),
                    vec![
                        "dns".into(),
                        format!("--kubeconfig={}", kc.display()),
                        format!("--master={}", masters.join(",")),
                        format!(
                            "--dns-address={}:53",
                            crate::cluster_dns::replica_address(i)
                        ),
                        "--bind-address=127.0.0.1".into(),
                        format!("--secure-port={health}"),
                    ],
                )
                .serving(
                    format!("{}:53", crate::cluster_dns::replica_address(i)),
                    Probe::Tcp(health),
                ),
            );
        }
    }
    for (i, port) in topo.nodes.iter().copied().enumerate() {
        let name = format!("node-{i}");
        let client = crate::pki::issue(
            &pki_dir,
            &format!("node-{i}"),
            &format!("system:node:{name}"),
            Some("system:nodes"),
            &[],
        )?;
        let serving = crate::pki::issue(
            &pki_dir,
            &format!("node-{i}-serving"),
            &name,
            None,
            &["127.0.0.1".into(), "localhost".into(), name.clone()],
        )?;
        let kc = args.data_dir.join(format!("{name}.kubeconfig"));
        std::fs::write(
            &kc,
            crate::pki::kubeconfig(
                &pki,
                &masters[0],
                &format!("system:node:{name}"),
                (&client.0, &client.1),
            )?,
        )
        .with_context(|| format!("writing {}", kc.display()))?;
        let mut node_args: Vec<String> = Vec::new();
        if has_ip {
            node_args.push(format!("--pod-cidr=10.244.{}.0/24", i + 1));
        }
        if networking {
            node_args.extend([
                "--proxy".into(),
                "--cluster-cidr=10.244.0.0/16".into(),
                format!("--proxy-metrics-port={}", spare_port()?),
            ]);
            if dns_replicas > 0 {
                node_args.push(format!(
                    "--cluster-dns={}",
                    crate::cluster_dns::CLUSTER_DNS_IP
                ));
            }
        }
        procs.push(
            Supervised::new(
                format!("node {name}"),
                [
                    "node".into(),
                    format!("--kubeconfig={}", kc.display()),
                    format!("--master={}", masters.join(",")),
                    format!("--node-name={name}"),
                    format!("--port={port}"),
                    format!("--root-dir={}", nodes_dir.display()),
                    format!("--tls-cert-file={}", serving.0.display()),
                    format!("--tls-private-key-file={}", serving.1.display()),
                    format!("--client-ca-file={}", pki.ca.display()),
                    "--kube-api-qps=50".into(),
                    "--kube-api-burst=100".into(),
                    "--shutdown-grace-period=8s".into(),
                ]
                .into_iter()
                .chain(node_args)
                .collect(),
            )
            .serving(format!("https://127.0.0.1:{port}"), Probe::Tcp(port)),
        );
    }
    if args.hollow_nodes > 0 {
        // One identity for many nodes: not a node's (the Node authorizer admits one node per
        // identity), bound to the system:node role, and allowed to act as each of its nodes
        // (see grants.rs).
        let client = crate::pki::issue(
            &pki_dir,
            "hollow-nodes-client",
            crate::grants::HOLLOW_NODES,
            None,
            &[],
        )?;
        let kc = args.data_dir.join("hollow-nodes.kubeconfig");
        std::fs::write(
            &kc,
            crate::pki::kubeconfig(
                &pki,
                &masters[0],
                crate::grants::HOLLOW_NODES,
                (&client.0, &client.1),
            )?,
        )
        .with_context(|| format!("writing {}", kc.display()))?;
        procs.push(Supervised::new(
            format!("{} hollow nodes", args.hollow_nodes),
            vec![
                "node".into(),
                "--hollow".into(),
                format!("--count={}", args.hollow_nodes),
                format!("--kubeconfig={}", kc.display()),
                format!("--master={}", masters.join(",")),
                "--port=0".into(),
                format!("--client-ca-file={}", pki.ca.display()),
                "--kube-api-qps=0".into(),
                format!("--node-name={}", crate::grants::HOLLOW_NODE_PREFIX),
                "--impersonate-nodes".into(),
                format!(
                    "--node-status-report-frequency={}ms",
                    args.hollow_node_status_report_frequency.as_millis()
                ),
                // (The status is looked at this often: a report cannot come more often.)
                format!(
                    "--node-status-update-frequency={}ms",
                    args.hollow_node_status_report_frequency
                        .min(std::time::Duration::from_secs(10))
                        .as_millis()
                ),
            ],
        ));
    }
    tokio::spawn(crate::balancer::run(
        balancer,
        api_addrs.clone(),
        shutdown.clone(),
    ));
    let kubeconfig = args.data_dir.join("admin.kubeconfig");
    std::fs::write(
        &kubeconfig,
        crate::pki::admin_kubeconfig(&pki, &format!("https://127.0.0.1:{port}"))?,
    )
    .with_context(|| format!("writing {}", kubeconfig.display()))?;
    // Dependency order: the store, then the apiservers, then everything that talks to them,
    // each stage waiting (up to a minute) for the one before to serve.
    for p in &mut procs {
        p.log_to(&logs);
    }
    // The apiservers need it: it starts with the store.
    if let Some(k) = kms_plugin {
        procs.insert(0, k);
    }
    for st in 0..3 {
        let names: Vec<&str> = procs
            .iter()
            .filter(|p| stage(p) == st)
            .map(|p| p.name.as_str())
            .collect();
        if !names.is_empty() {
            eprintln!("keelson up: starting {}", names.join(", "));
        }
        for p in procs.iter_mut().filter(|p| stage(p) == st) {
            p.start(&exe)?;
        }
        // The store and the apiservers must serve within a minute (or `up` stops what it
        // started and says why); the rest get a few seconds, so that the table printed when
        // ready is mostly green without holding the user up.
        let limit = if st < 2 { 60 } else { 15 };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(limit);
        let mut failure = None;
        for p in procs.iter_mut().filter(|p| stage(p) == st) {
            loop {
                if shutdown.is_cancelled() {
                    stop_all(&mut procs).await;
                    return Ok(());
                }
                if st == 2 {
                    // What runs on the apiservers is restarted when it exits, as it is once
                    // the cluster is up: a scheduler or controller-manager exits when it loses
                    // its lease, which a slow start can cause.
                    p.check(&exe);
                } else if let Some(status) = p.exited() {
                    failure = Some(format!("{} exited ({status})", p.name));
                    break;
                }
                if p.healthy().await {
                    break;
                }
                if tokio::time::Instant::now() >= deadline {
                    if st < 2 {
                        failure = Some(format!(
                            "{} is not serving on {} after {limit} s",
                            p.name, p.endpoint
                        ));
                    }
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            if let Some(f) = &failure {
                let log = p
                    .log
                    .as_ref()
                    .map(|l| l.display().to_string())
                    .unwrap_or_default();
                failure = Some(format!("{f}; see {log}"));
                break;
            }
        }
        if failure.is_none() && st == 1 {
            tokio::select! {
                ok = api_ready(&kubeconfig, Duration::from_secs(60)) => if !ok {
                    failure = Some("the apiservers are not ready (/readyz) after 60 s; see their logs".into());
                } else if rbac
                    && let Err(e) = crate::grants::apply(&kubeconfig, args.hollow_nodes).await
                {
                    failure = Some(format!("granting the components their RBAC roles: {e:#}"));
                },
                _ = shutdown.cancelled() => {
                    stop_all(&mut procs).await;
                    return Ok(());
                }
            }
        }
        if let Some(f) = failure {
            stop_all(&mut procs).await;
            bail!("{f}; stopped everything that was started");
        }
    }
    // Pods run as a ServiceAccount (the admission plugin refuses them otherwise): ready means
    // the controller-manager has made `default/default`.
    if cms > 0 {
        let ready = supervising(&mut procs, &exe, async {
            tokio::select! {
                r = default_account_ready(&kubeconfig, Duration::from_secs(60)) => Some(r),
                _ = shutdown.cancelled() => None,
            }
        })
        .await;
        let Some(ready) = ready else {
            stop_all(&mut procs).await;
            return Ok(());
        };
        if !ready {
            stop_all(&mut procs).await;
            bail!(
                "the controller-manager made no ServiceAccount default/default in 60 s; see its logs; stopped everything that was started"
            );
        }
    }
    if dns_replicas > 0
        && let Err(e) = supervising(
            &mut procs,
            &exe,
            crate::cluster_dns::publish_when_ready(
                &kubeconfig,
                dns_replicas,
                Duration::from_secs(60),
            ),
        )
        .await
    {
        eprintln!("keelson up: could not publish the kube-dns Service: {e:#}");
    }
    println!(
        "keelson up: {n} store member(s), {apis} apiserver(s) behind https://127.0.0.1:{port}, {cms} controller-manager(s), {scheds} scheduler(s), {nodes} node(s), {} hollow node(s)",
        args.hollow_nodes
    );
    println!("  data:       {}", args.data_dir.display());
    println!("  store:      {endpoints}");
    if topo.store_tls {
        println!(
            "  etcdctl:    etcdctl --endpoints={endpoints} --cacert={} --cert={} --key={}",
            etcd_ca.display(),
            etcdctl_client.0.display(),
            etcdctl_client.1.display()
        );
    }
    println!("  kubeconfig: {}", kubeconfig.display());
    if args.encryption == "kms" {
        println!(
            "  secrets:    encrypted at rest with KMS v2 (keelson kms-plugin, keys in {})",
            args.data_dir.join("kms").join("keys.json").display()
        );
    }
    if dns_replicas > 0 {
        println!(
            "  dns:        kube-system/kube-dns {} ({dns_replicas} server(s) from {})",
            crate::cluster_dns::CLUSTER_DNS_IP,
            crate::cluster_dns::replica_address(0)
        );
    }
    println!("  logs:       {}", logs.display());
    let mut rows = Vec::new();
    for p in &procs {
        rows.push(p.row().await);
    }
    print_table(&rows);
    write_status(&args.data_dir, &rows);
    println!("export KUBECONFIG={}", kubeconfig.display());
    println!("Press Ctrl-C to stop.");
    // Supervision: a component that exits is restarted, with a growing delay if it keeps dying.
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut status_at = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        for p in &mut procs {
            p.check(&exe);
        }
        if status_at.elapsed() >= Duration::from_secs(2) {
            status_at = tokio::time::Instant::now();
            let mut rows = Vec::new();
            for p in &procs {
                rows.push(p.row().await);
            }
            write_status(&args.data_dir, &rows);
        }
    }
    stop_all(&mut procs).await;
    if dns_replicas > 0 {
        crate::cluster_dns::teardown(dns_replicas).await;
    }
    Ok(())
}

/// Awaits `fut` while restarting the components that exit.
async fn supervising<T>(
    procs: &mut [Supervised],
    exe: &std::path::Path,
    fut: impl std::future::Future<Output = T>,
) -> T {
    tokio::pin!(fut);
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            r = &mut fut => return r,
            _ = tick.tick() => {
                for p in procs.iter_mut() {
                    p.check(exe);
                }
            }
        }
    }
}

/// A component's start stage: the store (and the KMS plugin), the apiservers, then what runs
/// on them.
fn stage(p: &Supervised) -> u8 {
    match p.args[0].as_str() {
        _ if p.program.is_some() => 0,
        "store" | "kms-plugin" => 0,
        "apiserver" => 1,
        _ => 2,
    }
}

/// Stops the components in the reverse of their start order: the controller-managers and
/// schedulers (so nothing replaces or places the pods the nodes stop), the nodes (and DNS,
/// which their terminating pods may still ask) while the apiservers still answer them, the
/// apiservers, the store and the KMS plugin. SIGTERM to a
/// step's components, then up to 15 s each (nodes give their pods their 8 s shutdown grace
/// period) before SIGKILL.
async fn stop_all(procs: &mut [Supervised]) {
    let step = |p: &Supervised| match stage(p) {
        2 if matches!(p.args[0].as_str(), "controller-manager" | "scheduler") => 3,
        s => s,
    };
    for st in (0..4).rev() {
        for p in procs.iter().filter(|p| step(p) == st) {
            p.terminate();
        }
        for p in procs.iter_mut().filter(|p| step(p) == st) {
            p.wait_or_kill(Duration::from_secs(15)).await;
        }
    }
}

/// An exclusive lock on `<data>/up.pid`, which holds the pid of the `keelson up` owning the
/// data dir. The kernel drops the lock when the process ends, however it ends, so a leftover
/// file never blocks a new `up`; the files are removed on a clean exit.
struct PidLock {
    _file: std::fs::File,
    dir: PathBuf,
}

impl PidLock {
    fn take(dir: &std::path::Path) -> anyhow::Result<PidLock> {
        use std::io::Write as _;
        let path = dir.join(PID_FILE);
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let pid = std::fs::read_to_string(&path).unwrap_or_default();
                bail!(
                    "{} is in use by keelson up (pid {}); stop it with `keelson down --data-dir {}`",
                    dir.display(),
                    pid.trim(),
                    dir.display()
                );
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("locking {}", path.display()));
            }
        }
        file.set_len(0)?;
        file.write_all(std::process::id().to_string().as_bytes())?;
        let _ = std::fs::remove_file(dir.join(STATUS_FILE));
        Ok(PidLock {
            _file: file,
            dir: dir.to_path_buf(),
        })
    }
}

impl Drop for PidLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.dir.join(STATUS_FILE));
        let _ = std::fs::remove_file(self.dir.join(PID_FILE));
    }
}

/// Asks `check` with a client of `kubeconfig` (at most 5 s a try) until it says yes, at most
/// `limit`.
async fn until_api<F, Fut>(kubeconfig: &std::path::Path, limit: Duration, check: F) -> bool
where
    F: Fn(kube::Client) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        let attempt = async {
            let client = keelson_client::connect::connect(
                &keelson_client::connect::ClientArgs::from_kubeconfig(kubeconfig),
            )
            .await?;
            check(client).await
        };
        if let Ok(Ok(true)) = tokio::time::timeout(Duration::from_secs(5), attempt).await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// Waits until `/readyz` answers ok through the balancer (the store has a leader and the
/// apiservers reach it), at most `limit`.
async fn api_ready(kubeconfig: &std::path::Path, limit: Duration) -> bool {
    until_api(kubeconfig, limit, |client| async move {
        let body = client
            .request_text(http::Request::get("/readyz").body(Vec::new())?)
            .await?;
        Ok(body.trim() == "ok")
    })
    .await
}

/// Waits until the ServiceAccount `default/default` exists, at most `limit`.
async fn default_account_ready(kubeconfig: &std::path::Path, limit: Duration) -> bool {
    until_api(kubeconfig, limit, |client| async move {
        let api: kube::Api<k8s_openapi::api::core::v1::ServiceAccount> =
            kube::Api::namespaced(client, "default");
        Ok(api.get_opt("default").await?.is_some())
    })
    .await
}

/// `<data>/up.pid`: the process of a running `keelson up`.
pub(crate) const PID_FILE: &str = "up.pid";
/// `<data>/status.json`: the status table, rewritten every 2 s while `up` runs.
pub(crate) const STATUS_FILE: &str = "status.json";

/// The pid of a `keelson up` still running on `data_dir`.
pub(crate) fn running_up(data_dir: &std::path::Path) -> Option<u32> {
    let path = data_dir.join(PID_FILE);
    let file = std::fs::File::open(&path).ok()?;
    match file.try_lock_shared() {
        // Nobody holds it: no `up` runs here.
        Ok(()) => None,
        Err(std::fs::TryLockError::WouldBlock) => {
            std::fs::read_to_string(&path).ok()?.trim().parse().ok()
        }
        Err(std::fs::TryLockError::Error(_)) => None,
    }
}

fn write_status(data_dir: &std::path::Path, rows: &[Row]) {
    let tmp = data_dir.join("status.json.tmp");
    if let Ok(body) = serde_json::to_vec_pretty(rows)
        && std::fs::write(&tmp, body).is_ok()
    {
        let _ = std::fs::rename(&tmp, data_dir.join(STATUS_FILE));
    }
}

/// How `up` tells that a component serves.
#[derive(Debug, Clone)]
enum Probe {
    /// A TCP port on 127.0.0.1 accepts connections.
    Tcp(u16),
    /// A unix socket exists.
    Unix(PathBuf),
    /// Running is all there is to see.
    Running,
}

/// A component process that is restarted when it exits.
struct Supervised {
    name: String,
    /// What runs, when not this binary.
    program: Option<PathBuf>,
    args: Vec<String>,
    child: Option<Child>,
    started: std::time::Instant,
    delay: Duration,
    restart_at: Option<std::time::Instant>,
    /// Where its stdout and stderr go (appended); inherited when unset.
    log: Option<PathBuf>,
    /// What a user points a client at.
    endpoint: String,
    probe: Probe,
    restarts: u32,
}

/// One row of the status table (and of `<data>/status.json`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct Row {
    pub(crate) component: String,
    pub(crate) pid: Option<u32>,
    pub(crate) endpoint: String,
    pub(crate) health: String,
    pub(crate) restarts: u32,
    pub(crate) log: String,
}

/// Prints rows as an aligned table.
pub(crate) fn print_table(rows: &[Row]) {
    let w = |f: &dyn Fn(&Row) -> String, title: &str| {
        rows.iter()
            .map(|r| f(r).len())
            .max()
            .unwrap_or(0)
            .max(title.len())
    };
    let pid = |r: &Row| r.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into());
    let (wc, wp, we) = (
        w(&|r| r.component.clone(), "COMPONENT"),
        w(&pid, "PID"),
        w(&|r| r.endpoint.clone(), "ENDPOINT"),
    );
    println!(
        "  {:wc$}  {:>wp$}  {:we$}  HEALTH",
        "COMPONENT", "PID", "ENDPOINT"
    );
    for r in rows {
        let health = if r.restarts > 0 {
            format!("{} (restarted {}x)", r.health, r.restarts)
        } else {
            r.health.clone()
        };
        println!(
            "  {:wc$}  {:>wp$}  {:we$}  {health}",
            r.component,
            pid(r),
            r.endpoint
        );
    }
}

impl Supervised {
    fn new(name: String, args: Vec<String>) -> Self {
        Supervised {
            name,
            program: None,
            args,
            child: None,
            started: std::time::Instant::now(),
            delay: Duration::from_secs(1),
            restart_at: None,
            log: None,
            endpoint: String::new(),
            probe: Probe::Running,
            restarts: 0,
        }
    }

    /// Sets what the status table shows and how health is probed.
    fn serving(mut self, endpoint: String, probe: Probe) -> Self {
        self.endpoint = endpoint;
        self.probe = probe;
        self
    }

    /// `<logs>/<name with dashes>.log`.
    fn log_to(&mut self, logs: &std::path::Path) {
        let file: String = self
            .name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        self.log = Some(logs.join(format!("{file}.log")));
    }

    fn start(&mut self, exe: &std::path::Path) -> anyhow::Result<()> {
        let mut cmd = Command::new(self.program.as_deref().unwrap_or(exe));
        // A process group of its own: a Ctrl-C in the terminal reaches `up` alone, which stops
        // the components in order (nodes while the apiservers still answer them). Should `up`
        // die without stopping them (kill -9), each of ours stops by itself
        // ([`STOP_WITH_PARENT_ENV`]).
        cmd.args(&self.args)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .process_group(0);
        if self.program.is_none() {
            cmd.env(STOP_WITH_PARENT_ENV, std::process::id().to_string());
        }
        if let Some(log) = &self.log {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .with_context(|| format!("opening {}", log.display()))?;
            let f2 = f.try_clone()?;
            cmd.stdout(f).stderr(f2);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", self.name))?;
        self.child = Some(child);
        self.started = std::time::Instant::now();
        Ok(())
    }

    /// The exit status, if the process has ended (and not been restarted).
    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    async fn healthy(&self) -> bool {
        if self.child.is_none() {
            return false;
        }
        match &self.probe {
            Probe::Tcp(port) => tokio::time::timeout(
                Duration::from_secs(1),
                tokio::net::TcpStream::connect(("127.0.0.1", *port)),
            )
            .await
            .is_ok_and(|r| r.is_ok()),
            Probe::Unix(path) => path.exists(),
            Probe::Running => true,
        }
    }

    async fn row(&self) -> Row {
        let health = if self.child.is_none() {
            "down (restarting)".to_string()
        } else if self.healthy().await {
            "ok".to_string()
        } else {
            match self.probe {
                Probe::Tcp(_) | Probe::Unix(_) => "not serving yet".to_string(),
                Probe::Running => "ok".to_string(),
            }
        };
        Row {
            component: self.name.clone(),
            pid: self.child.as_ref().and_then(Child::id),
            endpoint: self.endpoint.clone(),
            health,
            restarts: self.restarts,
            log: self
                .log
                .as_ref()
                .map(|l| l.display().to_string())
                .unwrap_or_default(),
        }
    }

    /// Notices an exit and restarts after the current delay (doubling up to 30 s while the
    /// component keeps dying within a minute of starting).
    fn check(&mut self, exe: &std::path::Path) {
        if let Some(c) = self.child.as_mut()
            && let Ok(Some(status)) = c.try_wait()
        {
            self.child = None;
            if self.started.elapsed() > Duration::from_secs(60) {
                self.delay = Duration::from_secs(1);
            }
            eprintln!(
                "keelson up: {} exited ({status}); restarting in {:?}",
                self.name, self.delay
            );
            self.restart_at = Some(std::time::Instant::now() + self.delay);
            self.delay = (self.delay * 2).min(Duration::from_secs(30));
            self.restarts += 1;
        }
        if self.child.is_none()
            && self
                .restart_at
                .is_some_and(|t| std::time::Instant::now() >= t)
        {
            self.restart_at = None;
            if let Err(e) = self.start(exe) {
                eprintln!("keelson up: {e:#}");
                self.restart_at = Some(std::time::Instant::now() + self.delay);
            }
        }
    }

    fn terminate(&self) {
        if let Some(pid) = self.child.as_ref().and_then(Child::id) {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        }
    }

    async fn wait_or_kill(&mut self, limit: Duration) {
        if let Some(c) = self.child.as_mut()
            && tokio::time::timeout(limit, c.wait()).await.is_err()
        {
            let _ = c.kill().await;
        }
    }
}
