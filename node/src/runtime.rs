//! The container runtime interface the pod workers drive: one trait, two implementations
//! (`process` runs host binaries in namespaces and cgroups, `hollow` simulates containers).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Container, LifecycleHandler, Pod, Probe};
use tokio::sync::watch;

/// What a pod's sandbox gave it: its IPs (the first is `status.podIP`).
#[derive(Debug, Clone)]
pub struct Sandbox {
    /// Pod IPs.
    pub ips: Vec<String>,
}

/// A volume as a container sees it.
#[derive(Debug, Clone)]
pub struct Mount {
    /// Where the data is on the host.
    pub host_path: PathBuf,
    /// `volumeMounts[].mountPath`.
    pub container_path: String,
    /// `volumeMounts[].readOnly`.
    pub read_only: bool,
}

/// Everything a runtime needs to start one container.
pub struct StartSpec<'a> {
    /// The pod.
    pub pod: &'a Pod,
    /// The container's spec.
    pub container: &'a Container,
    /// The resolved environment (`env`, `envFrom`, expansions done).
    pub env: Vec<(String, String)>,
    /// The resolved volume mounts.
    pub mounts: Vec<Mount>,
    /// How many times this container has been restarted (its log file's number).
    pub restart_count: i32,
    /// An init container (runs to completion before the app containers).
    pub init: bool,
}

/// Why a container could not be started (the waiting/terminated reason upstream shows).
#[derive(Debug, Clone)]
pub struct StartError {
    /// `StartError`, `RunContainerError`, `CreateContainerError`, ...
    pub reason: &'static str,
    /// What went wrong.
    pub message: String,
}

/// How a container ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Exit {
    /// Exit code (128 + signal when killed by one).
    pub code: i32,
    /// The signal that killed it, if any.
    pub signal: Option<i32>,
    /// `Completed`, `Error`, `OOMKilled`, ...
    pub reason: String,
    /// A message for the terminated state.
    pub message: Option<String>,
    /// When it ended.
    pub finished_at: Timestamp,
}

impl Exit {
    /// An exit with the upstream reason for its code.
    pub fn with_code(code: i32) -> Self {
        Self {
            code,
            signal: None,
            reason: if code == 0 { "Completed" } else { "Error" }.into(),
            message: None,
            finished_at: Timestamp::now(),
        }
    }
}

/// The outcome of running a command in a container.
#[derive(Debug, Clone)]
pub struct ExecOutput {
    /// Exit code.
    pub code: i32,
    /// stdout and stderr, interleaved, truncated.
    pub output: String,
}

/// Which probe is running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeKind {
    /// startupProbe.
    Startup,
    /// livenessProbe.
    Liveness,
    /// readinessProbe.
    Readiness,
}

impl ProbeKind {
    /// The name upstream uses in events ("Liveness probe failed: ...").
    pub fn title(self) -> &'static str {
        match self {
            ProbeKind::Startup => "Startup",
            ProbeKind::Liveness => "Liveness",
            ProbeKind::Readiness => "Readiness",
        }
    }
}

/// What `attach` connects to.
pub struct AttachIo {
    /// Output chunks as they are written: (1 stdout or 2 stderr, bytes).
    pub output: tokio::sync::broadcast::Receiver<(u8, Vec<u8>)>,
    /// The container's stdin, when its spec has `stdin: true`.
    pub stdin: Option<Stdin>,
    /// The container's terminal, when its spec has `tty: true`.
    pub tty: Option<PathBuf>,
    /// Hangs the terminal up (with `tty: true`), once its stdin is closed for good.
    pub hangup: Option<tokio_util::sync::CancellationToken>,
}

/// Where a container's stdin goes (a pipe, or its terminal); `None` once closed.
pub type Stdin = Arc<tokio::sync::Mutex<Option<Box<dyn tokio::io::AsyncWrite + Send + Unpin>>>>;

/// A running (or finished) container.
pub trait ContainerHandle: Send + Sync {
    /// The runtime's id (`containerID` is `<runtime>://<id>`).
    fn id(&self) -> &str;
    /// Becomes `Some` when the container has exited.
    fn exited(&self) -> watch::Receiver<Option<Exit>>;
    /// Sends SIGTERM (`kill` false) or SIGKILL (`kill` true) to the container.
    fn signal(&self, kill: bool);
    /// Runs a probe; `Err` carries the failure message.
    fn probe(
        &self,
        kind: ProbeKind,
        probe: &Probe,
        pod_ip: &str,
    ) -> BoxFuture<'static, Result<(), String>>;
    /// Runs a postStart/preStop handler; `Err` carries the failure message.
    fn hook(
        &self,
        handler: &LifecycleHandler,
        pod_ip: &str,
    ) -> BoxFuture<'static, Result<(), String>>;
    /// Runs a command in the container (kubectl exec, exec probes).
    fn exec(
        &self,
        cmd: Vec<String>,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<ExecOutput, String>>;
    /// The host PID of the container's first process, for exec and attach.
    fn pid(&self) -> Option<u32> {
        None
    }
    /// The container's live output and, when its spec asks for stdin, its input (attach).
    fn attach(&self) -> Option<AttachIo> {
        None
    }
    /// A command that runs `cmd` inside the container (stdio not yet set), for streaming exec;
    /// `None` when the runtime has nothing to run (hollow) or the container is not running.
    fn exec_command(&self, _cmd: &[String]) -> Option<tokio::process::Command> {
        None
    }
}

/// A container runtime.
pub trait Runtime: Send + Sync + 'static {
    /// `process` or `hollow` (the `containerID` scheme and `containerRuntimeVersion`).
    fn name(&self) -> &'static str;
    /// Whether env and volumes are resolved from the API and written to disk before starting
    /// (the hollow runtime skips that, as kubemark's fake volume plugins do).
    fn materializes(&self) -> bool;
    /// The directory where a pod's volumes live.
    fn pod_dir(&self, uid: &str) -> PathBuf;
    /// Sets up the pod's sandbox (directories, network namespace, IP).
    fn create_sandbox<'a>(&'a self, pod: &'a Pod) -> BoxFuture<'a, Result<Sandbox, String>>;
    /// Stops what the sandbox holds (processes, cgroups, network); logs and volumes stay.
    fn remove_sandbox<'a>(&'a self, pod: &'a Pod) -> BoxFuture<'a, ()>;
    /// Removes the pod's directories and logs (the pod is gone from this node).
    fn remove_pod_data<'a>(&'a self, _pod: &'a Pod) -> BoxFuture<'a, ()> {
        Box::pin(async {})
    }
    /// Starts one container.
    fn start<'a>(
        &'a self,
        spec: StartSpec<'a>,
    ) -> BoxFuture<'a, Result<Arc<dyn ContainerHandle>, StartError>>;
    /// The log files of one container of one pod (oldest first), if the runtime keeps logs.
    fn log_files(&self, _pod: &Pod, _container: &str, _restart: i32) -> Vec<PathBuf> {
        Vec::new()
    }
    /// The node's pod CIDR became known (from the Node object).
    fn set_pod_cidr(&self, _cidr: &str) {}
    /// Connects to `port` on the pod's loopback, inside its network namespace (port forwarding).
    fn dial<'a>(
        &'a self,
        _pod: &'a Pod,
        port: u16,
    ) -> BoxFuture<'a, Result<tokio::net::TcpStream, String>> {
        let name = self.name();
        Box::pin(async move {
            Err(format!(
                "the {name} runtime runs no processes: nothing listens on port {port}"
            ))
        })
    }
    /// Removes node-wide resources (the node is stopping).
    fn teardown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
    /// Removes what the runtime left from an earlier run on the same data dir.
    fn clean_stale(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}
