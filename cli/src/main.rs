//! The `keelson` binary: every component as a subcommand, plus `keelson up`.

mod balancer;
mod cluster_dns;
mod grants;
mod pki;
mod up;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

/// mimalloc rather than glibc's malloc, which took about 11 % of all CPU time in the store's
/// put benchmark (`bench/RESULTS.md`), and was the apiserver's largest single cost in profiles.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "keelson",
    version,
    about = "The Kubernetes control plane, rebuilt in Rust on its own Raft store"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one keelson-store member (etcd v3 API; flags as etcd's).
    Store(Box<keelson_store::server::Config>),
    /// Run one Kubernetes API server (flags as kube-apiserver's).
    Apiserver(Box<keelson_apiserver::Config>),
    /// Run the controller-manager (flags as kube-controller-manager's).
    ControllerManager(Box<keelson_controllers::Config>),
    /// Run the scheduler (flags and configuration file as kube-scheduler's).
    Scheduler(Box<keelson_scheduler::Config>),
    /// Run a node agent, the kubelet (flags as kubelet's); --hollow --count N runs N hollow
    /// nodes.
    Node(Box<keelson_node::Config>),
    /// Run the service proxy (nftables; flags as kube-proxy's).
    Proxy(Box<keelson_node::proxy::ProxyConfig>),
    /// Run the cluster DNS server (the Kubernetes DNS specification, as CoreDNS serves it).
    Dns(Box<keelson_dns::Config>),
    /// Run the KMS v2 plugin for encryption at rest (keys in a local file; --rotate adds a key).
    KmsPlugin(Box<keelson_kms::plugin::Config>),
    /// Start a local cluster on loopback.
    Up(up::Args),
    /// Show the components of a cluster started with `keelson up` (e.g. `--detach`).
    Status(up::DataDirArgs),
    /// Stop a cluster started with `keelson up --detach`.
    Down(up::DataDirArgs),
    /// Kubeconfig files for a `keelson up` cluster.
    #[command(subcommand)]
    Kubeconfig(KubeconfigCommand),
    /// Fault injection against a store cluster (keelson-store or etcd) with history checkers.
    #[command(subcommand)]
    Chaos(keelson_chaos::run::Command),
    /// Scale runs on hollow nodes with the Kubernetes SLIs measured (ClusterLoader2's method).
    #[command(subcommand)]
    Bench(keelson_bench::scale::Plan),
}

#[derive(Subcommand)]
enum KubeconfigCommand {
    /// Print a kubeconfig for a new user (a client certificate of the cluster CA), as
    /// `kubeadm kubeconfig user`.
    User(pki::UserArgs),
}

fn init_tracing() {
    // kube-client's tracing layer logs every 5xx answer as an error without saying which
    // request it was (`up`'s readiness probe meets 500s from /readyz while the apiserver
    // starts); callers report their failures themselves.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,openraft=warn,sled=warn,kube_client::client::builder=off".into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// Whether this process started with SIGHUP ignored (`nohup`): `SigIgn` in its status.
fn hangup_ignored() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let mask = s.lines().find_map(|l| l.strip_prefix("SigIgn:"))?;
            u64::from_str_radix(mask.trim(), 16).ok()
        })
        .is_some_and(|mask| mask & 1 != 0)
}

/// Cancels the token on SIGINT or SIGTERM, and on SIGHUP when `hangup` (a closing terminal
/// stops the command as Ctrl-C does) unless SIGHUP was ignored when it started (`nohup`).
fn cancel_on_signal(token: CancellationToken, hangup: bool) {
    let hangup = hangup && !hangup_ignored();
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot install SIGTERM handler");
                return;
            }
        };
        let mut hup = match hangup.then(|| signal(SignalKind::hangup())).transpose() {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot install SIGHUP handler");
                return;
            }
        };
        let hung_up = async {
            match hup.as_mut() {
                Some(h) => h.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
            _ = hung_up => {}
        }
        tracing::info!("shutting down");
        token.cancel();
    });
}

fn main() -> anyhow::Result<()> {
    // The container shim must start single-threaded (it makes namespaces), before any runtime.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).and_then(|a| a.to_str()) == Some("container-init") {
        keelson_node::process::shim::main(args[2..].to_vec());
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async_main())
}

async fn async_main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    init_tracing();
    let shutdown = CancellationToken::new();
    // The chaos commands take Ctrl-C themselves: they end their run early and clean up.
    if !matches!(cli.command, Command::Chaos(_)) {
        // Not `up --detach` waiting for its background cluster: a closing terminal must not
        // stop a cluster meant to outlive it.
        let detach = matches!(&cli.command, Command::Up(a) if a.detach);
        cancel_on_signal(shutdown.clone(), !detach);
        up::stop_with_parent_from_env(&shutdown);
    }
    match cli.command {
        Command::Store(config) => keelson_store::server::run(*config, shutdown).await?,
        Command::Apiserver(config) => keelson_apiserver::run(*config, shutdown).await?,
        Command::ControllerManager(config) => {
            if let Err(e) = keelson_controllers::run(*config, shutdown).await {
                // As upstream: a lost lease ends the process at once, so nothing acts without it.
                tracing::error!(error = %e, "controller-manager stopped");
                std::process::exit(1);
            }
        }
        Command::Scheduler(config) => {
            if let Err(e) = keelson_scheduler::run(*config, shutdown).await {
                tracing::error!(error = %e, "scheduler stopped");
                std::process::exit(1);
            }
        }
        Command::Node(config) => {
            if let Err(e) = keelson_node::run(*config, shutdown).await {
                tracing::error!(error = %e, "node stopped");
                std::process::exit(1);
            }
        }
        Command::Proxy(config) => {
            if let Err(e) = keelson_node::proxy::run_standalone(*config, shutdown).await {
                tracing::error!(error = %e, "proxy stopped");
                std::process::exit(1);
            }
        }
        Command::Dns(config) => {
            if let Err(e) = keelson_dns::run(*config, shutdown).await {
                tracing::error!(error = %e, "dns stopped");
                std::process::exit(1);
            }
        }
        Command::KmsPlugin(config) => keelson_kms::plugin::run(*config, shutdown)
            .await
            .map_err(anyhow::Error::msg)?,
        Command::Up(args) if args.detach => up::detach(&args, shutdown).await?,
        Command::Up(args) => up::run(args, shutdown).await?,
        Command::Status(args) => up::status(&args)?,
        Command::Down(args) => up::down(&args).await?,
        Command::Kubeconfig(KubeconfigCommand::User(args)) => pki::user_kubeconfig(&args)?,
        Command::Chaos(command) => keelson_chaos::run::main(command).await?,
        Command::Bench(plan) => {
            let keelson = std::env::current_exe()?;
            keelson_bench::scale::run(plan, &keelson, shutdown).await?;
        }
    }
    Ok(())
}
