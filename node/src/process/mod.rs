//! The process runtime: each container is a host binary (its `command`/`args`; the `image` is
//! only recorded, except that `pause` images sleep) started by `keelson container-init` in its
//! own PID, mount, UTS and IPC namespaces, with a root made of the host's directories plus the
//! pod's volumes, the pod's network namespace, memory and CPU limits through cgroups, and its
//! output in rotated CRI-format log files.

pub mod cgroup;
pub mod logs;
pub mod net;
pub mod shim;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{Container, LifecycleHandler, Pod, Probe};
use keelson_scheduler::types::parse_quantity;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use parking_lot::Mutex;
use tokio::sync::watch;

use crate::config::Config;
use crate::runtime::{
    ContainerHandle, ExecOutput, Exit, ProbeKind, Runtime, Sandbox, StartError, StartSpec,
};
use cgroup::Cgroups;
use net::{Cidr, Network};

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The fields of `/proc/<pid>/stat` after the command (which is in parentheses and may hold
/// spaces): the first is the state (field 3 in proc(5)), so field N is at index N - 3.
pub fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// The process runtime of one node.
pub struct ProcessRuntime {
    root: PathBuf,
    /// A host-unique name for the node (its name and a tag of its data dir).
    node: String,
    exe: PathBuf,
    cgroups: Cgroups,
    log_max: u64,
    log_files: usize,
    cidr: Mutex<Option<Cidr>>,
    net: tokio::sync::Mutex<Option<Network>>,
    next_id: AtomicU64,
}

impl ProcessRuntime {
    /// The runtime for node `node`, keeping its files under `--root-dir/<node>`.
    pub async fn new(config: &Config, node: &str) -> Result<Self, String> {
        if !nix::unistd::geteuid().is_root() {
            return Err(
                "the process runtime needs root (namespaces, mounts, cgroups, the pod network); run as root or use --hollow".into(),
            );
        }
        let root = config.root_dir.join(node);
        std::fs::create_dir_all(root.join("pods"))
            .map_err(|e| format!("{}: {e}", root.display()))?;
        let exe = std::env::current_exe().map_err(|e| format!("own executable: {e}"))?;
        // Names shared across the host (cgroups, the bridge) carry a tag of the node's data
        // dir, so two clusters with the same node names on one machine stay apart.
        let tag = net::tag(&root.display().to_string());
        let cgroups = Cgroups::detect(&config.cgroup_root, &format!("{node}-{}", &tag[..6]));
        if matches!(cgroups, Cgroups::None) {
            tracing::warn!("no usable cgroup hierarchy: container limits are not enforced");
        }
        let cidr = match &config.pod_cidr {
            Some(c) => Some(Cidr::parse(c)?),
            None => None,
        };
        Ok(Self {
            node: format!("{node}-{tag}"),
            root,
            exe,
            cgroups,
            log_max: config.log_max_bytes(),
            log_files: config.container_log_max_files,
            cidr: Mutex::new(cidr),
            net: tokio::sync::Mutex::new(None),
            next_id: AtomicU64::new(rand::random::<u32>() as u64),
        })
    }

    fn log_path(&self, pod: &Pod, container: &str, restart: i32) -> PathBuf {
        let m = &pod.metadata;
        self.root
            .join("logs")
            .join(format!(
                "{}_{}_{}",
                m.namespace.as_deref().unwrap_or("default"),
                m.name.as_deref().unwrap_or(""),
                m.uid.as_deref().unwrap_or("")
            ))
            .join(container)
            .join(format!("{restart}.log"))
    }

    async fn network(&self) -> Result<Option<Network>, String> {
        let mut net = self.net.lock().await;
        if net.is_none() {
            let cidr = *self.cidr.lock();
            if let Some(c) = cidr {
                *net = Some(Network::setup(&self.node, c, &self.root).await?);
            }
        }
        Ok(net.clone())
    }

    /// Whether the pod has a network namespace of its own (not hostNetwork, and the node has a
    /// pod network); otherwise it shares the host's.
    async fn own_network(&self, pod: &Pod) -> bool {
        !host_network(pod) && self.net.lock().await.is_some()
    }
}

fn uid(pod: &Pod) -> &str {
    pod.metadata.uid.as_deref().unwrap_or("")
}

fn host_network(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.host_network)
        .unwrap_or(false)
}

/// Finds `prog` as execve would through `PATH` (the container's, else the default).
fn resolve_program(prog: &str, env: &[(String, String)]) -> Result<PathBuf, String> {
    let executable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if prog.contains('/') {
        let p = PathBuf::from(prog);
        return if executable(&p) {
            Ok(p)
        } else {
            Err(format!(
                "exec: {prog:?}: stat {prog}: no such file or directory"
            ))
        };
    }
    let path = env
        .iter()
        .rev()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.as_str())
        .unwrap_or(DEFAULT_PATH);
    path.split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(prog))
        .find(|p| executable(p))
        .ok_or_else(|| format!("exec: {prog:?}: executable file not found in $PATH"))
}

/// `path` as the container sees it: symlinks in the directories it shares with the host are
/// followed (an absolute target is the same path in the container, since those directories are
/// the host's), so `/var/run/secrets` is `/run/secrets`, inside the container's own `/run`.
fn in_container(path: &str) -> String {
    let mut resolved = std::path::PathBuf::from("/");
    let mut parts: std::collections::VecDeque<String> = path
        .split('/')
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect();
    let mut hops = 0;
    while let Some(part) = parts.pop_front() {
        let next = resolved.join(&part);
        let top = next
            .components()
            .nth(1)
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .unwrap_or_default();
        let link = (shim::shared_from_host(&top) && hops < 40)
            .then(|| std::fs::read_link(&next).ok())
            .flatten();
        match link {
            Some(target) => {
                hops += 1;
                let rest: Vec<String> = target
                    .to_string_lossy()
                    .split('/')
                    .filter(|p| !p.is_empty())
                    .map(str::to_string)
                    .collect();
                if target.is_absolute() {
                    resolved = std::path::PathBuf::from("/");
                }
                for p in rest.into_iter().rev() {
                    parts.push_front(p);
                }
            }
            None if part == ".." => {
                resolved.pop();
            }
            None if part == "." => {}
            None => resolved = next,
        }
    }
    resolved.to_string_lossy().into_owned()
}

/// The command line of a container: command + args with `$(VAR)` expanded; `pause` images
/// sleep forever.
fn command_line(c: &Container, env: &[(String, String)]) -> Result<Vec<String>, String> {
    let mut argv: Vec<String> = c
        .command
        .iter()
        .flatten()
        .chain(c.args.iter().flatten())
        .map(|a| crate::env::expand(a, env))
        .collect();
    if c.command.as_ref().is_none_or(|v| v.is_empty()) {
        let image = c.image.as_deref().unwrap_or("");
        let base = image.rsplit('/').next().unwrap_or("");
        if base.split(':').next() == Some("pause") {
            argv = vec!["sleep".into(), "infinity".into()];
        } else {
            return Err(format!(
                "container {:?} has no command: the process runtime runs host binaries and \
                 cannot run image {image:?}'s entrypoint",
                c.name
            ));
        }
    }
    Ok(argv)
}

struct Proc {
    id: String,
    shim_pid: i32,
    live: logs::Live,
    stdin: Option<crate::runtime::Stdin>,
    tty: Option<PathBuf>,
    /// Hangs up a `tty: true` container's terminal (its output pump lets go of the master).
    hangup: Option<tokio_util::sync::CancellationToken>,
    exit: watch::Sender<Option<Exit>>,
    cgroups: Vec<PathBuf>,
    env: Vec<(String, String)>,
    container: Container,
}

impl Proc {
    /// The container's PID 1 (the shim's child), as the host sees it.
    fn init_pid(&self) -> Option<i32> {
        std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", self.shim_pid))
            .ok()?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    }
}

/// `nsenter` into every namespace of the container's PID 1, with the container's environment.
fn nsenter(pid: i32, env: &[(String, String)], cmd: &[String]) -> tokio::process::Command {
    let mut c = tokio::process::Command::new("nsenter");
    c.arg(format!("--target={pid}"))
        .args([
            "--mount", "--uts", "--ipc", "--net", "--pid", "--root", "--wd", "--",
        ])
        .args(cmd)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .kill_on_drop(true);
    if !env.iter().any(|(k, _)| k == "PATH") {
        c.env("PATH", DEFAULT_PATH);
    }
    c
}

async fn run_exec(
    pid: Option<i32>,
    env: &[(String, String)],
    cmd: &[String],
    timeout: Duration,
) -> Result<ExecOutput, String> {
    let pid = pid.ok_or("container is not running")?;
    if cmd.is_empty() {
        return Err("no command".into());
    }
    let mut c = nsenter(pid, env, cmd);
    c.stdin(Stdio::null());
    let out = tokio::time::timeout(timeout, c.output())
        .await
        .map_err(|_| format!("command timed out after {}s", timeout.as_secs()))?
        .map_err(|e| format!("exec: {e}"))?;
    let mut output = String::from_utf8_lossy(&out.stdout).into_owned();
    output.push_str(&String::from_utf8_lossy(&out.stderr));
    output.truncate(10 * 1024);
    Ok(ExecOutput {
        code: out
            .status
            .code()
            .unwrap_or_else(|| 128 + out.status.signal().unwrap_or(9)),
        output,
    })
}

async fn run_handler(
    h: LifecycleHandler,
    c: Container,
    pid: Option<i32>,
    env: Vec<(String, String)>,
    ip: String,
) -> Result<(), String> {
    if let Some(e) = &h.exec {
        let cmd = e.command.clone().unwrap_or_default();
        let out = run_exec(pid, &env, &cmd, Duration::from_secs(300)).await?;
        if out.code != 0 {
            return Err(format!(
                "command '{}' exited with {}: {}",
                cmd.join(" "),
                out.code,
                out.output
            ));
        }
        Ok(())
    } else if let Some(g) = &h.http_get {
        crate::probe::http_get(g, &c, &ip).await
    } else if let Some(s) = &h.sleep {
        tokio::time::sleep(Duration::from_secs(s.seconds.max(0) as u64)).await;
        Ok(())
    } else if let Some(t) = &h.tcp_socket {
        crate::probe::tcp(t, &c, &ip).await
    } else {
        Err("handler has no action".into())
    }
}

impl ContainerHandle for Proc {
    fn id(&self) -> &str {
        &self.id
    }

    fn exited(&self) -> watch::Receiver<Option<Exit>> {
        self.exit.subscribe()
    }

    fn signal(&self, force: bool) {
        if self.exit.borrow().is_some() {
            return;
        }
        if force {
            for d in &self.cgroups {
                for p in cgroup::procs(d) {
                    let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
                }
            }
            if let Some(p) = self.init_pid() {
                let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
            }
            let _ = kill(Pid::from_raw(self.shim_pid), Signal::SIGKILL);
        } else {
            let _ = kill(Pid::from_raw(self.shim_pid), Signal::SIGTERM);
        }
    }

    fn probe(
        &self,
        _kind: ProbeKind,
        p: &Probe,
        ip: &str,
    ) -> BoxFuture<'static, Result<(), String>> {
        let (p, c, ip, env, pid) = (
            p.clone(),
            self.container.clone(),
            ip.to_string(),
            self.env.clone(),
            self.init_pid(),
        );
        let timeout = Duration::from_secs(p.timeout_seconds.unwrap_or(1).max(1) as u64);
        Box::pin(async move {
            if let Some(e) = &p.exec {
                let cmd = e.command.clone().unwrap_or_default();
                let out = run_exec(pid, &env, &cmd, timeout).await?;
                if out.code == 0 {
                    Ok(())
                } else {
                    Err(out.output)
                }
            } else if let Some(g) = &p.http_get {
                crate::probe::http_get(g, &c, &ip).await
            } else if let Some(t) = &p.tcp_socket {
                crate::probe::tcp(t, &c, &ip).await
            } else if let Some(g) = &p.grpc {
                crate::probe::grpc(g, &ip).await
            } else {
                Err("probe has no action".into())
            }
        })
    }

    fn hook(&self, h: &LifecycleHandler, ip: &str) -> BoxFuture<'static, Result<(), String>> {
        Box::pin(run_handler(
            h.clone(),
            self.container.clone(),
            self.init_pid(),
            self.env.clone(),
            ip.to_string(),
        ))
    }

    fn exec(
        &self,
        cmd: Vec<String>,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<ExecOutput, String>> {
        let (pid, env) = (self.init_pid(), self.env.clone());
        Box::pin(async move { run_exec(pid, &env, &cmd, timeout).await })
    }

    fn pid(&self) -> Option<u32> {
        self.init_pid().map(|p| p as u32)
    }

    fn attach(&self) -> Option<crate::runtime::AttachIo> {
        if self.exit.borrow().is_some() {
            return None;
        }
        Some(crate::runtime::AttachIo {
            output: self.live.subscribe(),
            stdin: self.stdin.clone(),
            tty: self.tty.clone(),
            hangup: self.hangup.clone(),
        })
    }

    fn exec_command(&self, cmd: &[String]) -> Option<tokio::process::Command> {
        if self.exit.borrow().is_some() || cmd.is_empty() {
            return None;
        }
        Some(nsenter(self.init_pid()?, &self.env, cmd))
    }
}

/// A stop signal that never comes (pipes end when the container's processes are gone).
fn never() -> tokio_util::sync::CancellationToken {
    tokio_util::sync::CancellationToken::new()
}

fn limits(c: &Container) -> (Option<i64>, Option<i64>, Option<i64>) {
    let r = c.resources.as_ref();
    let get = |list: Option<
        &std::collections::BTreeMap<
            String,
            k8s_openapi::apimachinery::pkg::api::resource::Quantity,
        >,
    >,
               name: &str,
               scale| {
        list.and_then(|l| l.get(name))
            .and_then(|q| parse_quantity(&q.0, scale))
    };
    let lim = r.and_then(|r| r.limits.as_ref());
    let req = r.and_then(|r| r.requests.as_ref());
    (
        get(lim, "memory", 1),
        get(lim, "cpu", 1000),
        get(req, "cpu", 1000).or(get(lim, "cpu", 1000)),
    )
}

impl Runtime for ProcessRuntime {
    fn name(&self) -> &'static str {
        "process"
    }

    fn materializes(&self) -> bool {
        true
    }

    fn pod_dir(&self, uid: &str) -> PathBuf {
        self.root.join("pods").join(uid)
    }

    fn set_pod_cidr(&self, cidr: &str) {
        let mut c = self.cidr.lock();
        if c.is_none() {
            match Cidr::parse(cidr) {
                Ok(p) => *c = Some(p),
                Err(e) => tracing::warn!(error = %e, "ignoring the node's podCIDR"),
            }
        }
    }

    fn create_sandbox<'a>(&'a self, pod: &'a Pod) -> BoxFuture<'a, Result<Sandbox, String>> {
        Box::pin(async move {
            let dir = self.pod_dir(uid(pod));
            let tmp = dir.join("tmp");
            std::fs::create_dir_all(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
            let _ = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o1777));
            if host_network(pod) {
                return Ok(Sandbox { ips: Vec::new() });
            }
            match self.network().await? {
                Some(net) => {
                    let ip = net.add_pod(uid(pod)).await?;
                    Ok(Sandbox {
                        ips: vec![ip.to_string()],
                    })
                }
                None => Ok(Sandbox { ips: Vec::new() }),
            }
        })
    }

    fn dial<'a>(
        &'a self,
        pod: &'a Pod,
        port: u16,
    ) -> BoxFuture<'a, Result<tokio::net::TcpStream, String>> {
        let netns = Network::netns_path(uid(pod));
        Box::pin(async move {
            // The host's loopback only for pods that share the host's network; a pod whose
            // namespace is gone (its sandbox removed) is refused, never sent to the host.
            if !self.own_network(pod).await {
                return net::dial_loopback(port).await;
            }
            if !netns.exists() {
                return Err(format!(
                    "the pod's network namespace {} is gone",
                    netns.display()
                ));
            }
            net::dial_in(netns, port).await
        })
    }

    fn remove_sandbox<'a>(&'a self, pod: &'a Pod) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let u = uid(pod).to_string();
            for d in self.cgroups.dirs(&format!("pod{u}")) {
                let _ = tokio::task::spawn_blocking(move || cgroup::remove_tree(&d)).await;
            }
            let net = self.net.lock().await.clone();
            if let Some(net) = net {
                net.remove_pod(&u).await;
            }
        })
    }

    fn remove_pod_data<'a>(&'a self, pod: &'a Pod) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let dir = self.pod_dir(uid(pod));
            let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir)).await;
            if let Some(logs) = self.log_path(pod, "x", 0).parent().and_then(Path::parent) {
                let _ = std::fs::remove_dir_all(logs);
            }
        })
    }

    fn start<'a>(
        &'a self,
        spec: StartSpec<'a>,
    ) -> BoxFuture<'a, Result<Arc<dyn ContainerHandle>, StartError>> {
        Box::pin(async move {
            let err = |reason: &'static str, message: String| StartError { reason, message };
            let pod = spec.pod;
            let c = spec.container;
            let mut env = spec.env.clone();
            if !env.iter().any(|(k, _)| k == "PATH") {
                env.insert(0, ("PATH".into(), DEFAULT_PATH.into()));
            }
            if !env.iter().any(|(k, _)| k == "HOSTNAME") {
                env.insert(
                    1,
                    (
                        "HOSTNAME".into(),
                        pod.metadata.name.clone().unwrap_or_default(),
                    ),
                );
            }
            let mut argv = command_line(c, &env).map_err(|m| err("StartError", m))?;
            let tty = c.tty == Some(true);
            if tty {
                // The terminal becomes the controlling terminal of the command's new session.
                argv.splice(0..0, ["setsid".to_string(), "-c".to_string()]);
            }
            let prog = resolve_program(&argv[0], &env).map_err(|m| err("StartError", m))?;
            // Paths through the host's symlinks (`/var/run` → `/run`) are mounted where they
            // lead inside the container.
            let mounts: Vec<(String, &crate::runtime::Mount)> = spec
                .mounts
                .iter()
                .map(|m| (in_container(&m.container_path), m))
                .collect();
            for (path, m) in &mounts {
                if !path.starts_with('/') {
                    return Err(err(
                        "CreateContainerError",
                        format!("mountPath {:?} must be absolute", m.container_path),
                    ));
                }
                // The container's root is made of the host's top-level directories: a path
                // inside one of them must already exist (nothing is created on the host).
                let top = path.trim_start_matches('/').split('/').next().unwrap_or("");
                let shared = shim::shared_from_host(top) && Path::new("/").join(top).is_dir();
                if shared && !Path::new(path).exists() {
                    return Err(err(
                        "CreateContainerError",
                        format!(
                            "mountPath {:?} does not exist: the process runtime shares the host's /{top} and does not create paths inside it",
                            m.container_path
                        ),
                    ));
                }
            }
            let u = uid(pod);
            let cdir = self.pod_dir(u).join("containers").join(&c.name);
            let rootfs = cdir.join("rootfs");
            std::fs::create_dir_all(&rootfs)
                .map_err(|e| err("CreateContainerError", format!("{}: {e}", rootfs.display())))?;
            let (mem, cpu_lim, cpu_req) = limits(c);
            let cgroups = self
                .cgroups
                .create(&format!("pod{u}/{}", c.name), mem, cpu_lim, cpu_req)
                .map_err(|m| err("CreateContainerError", m))?;
            let log = logs::LogFile::open(
                self.log_path(pod, &c.name, spec.restart_count),
                self.log_max,
                self.log_files,
            )
            .map_err(|e| err("CreateContainerError", format!("log file: {e}")))?;
            let log = Arc::new(Mutex::new(log));
            let mut cmd = tokio::process::Command::new(&self.exe);
            cmd.arg("container-init")
                .arg("--hostname")
                .arg(pod.metadata.name.as_deref().unwrap_or(""))
                .arg("--rootfs")
                .arg(&rootfs)
                .arg("--cwd")
                .arg(c.working_dir.as_deref().unwrap_or("/"))
                .arg("--tmp")
                .arg(self.pod_dir(u).join("tmp"));
            if self.own_network(pod).await {
                cmd.arg("--netns").arg(Network::netns_path(u));
            }
            for d in &cgroups {
                cmd.arg("--cgroup").arg(d);
            }
            for (path, m) in &mounts {
                cmd.arg("--bind")
                    .arg(&m.host_path)
                    .arg(path)
                    .arg(if m.read_only { "ro" } else { "rw" });
            }
            cmd.arg("--").arg(&prog).args(&argv[1..]);
            cmd.env_clear()
                .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                // A process group of its own, as a container runtime's: a Ctrl-C meant for the
                // node (the terminal signals its whole foreground group) is not forwarded to
                // the container; the node stops it gracefully.
                .process_group(0);
            // `tty: true`: stdin, stdout and stderr are one terminal, read and written through
            // its master side (its output is the log's stdout, as upstream).
            let pty = if tty {
                let terminal =
                    |e: std::io::Error| err("CreateContainerError", format!("terminal: {e}"));
                let pty = crate::pty::open().map_err(terminal)?;
                let slave = |f: &std::fs::File| f.try_clone().map(Stdio::from).map_err(terminal);
                cmd.stdin(slave(&pty.slave)?)
                    .stdout(slave(&pty.slave)?)
                    .stderr(slave(&pty.slave)?);
                // Set up before the start, so nothing can fail once the container runs.
                let halves = crate::pty::master_halves(pty.master).map_err(terminal)?;
                Some((halves, pty.path))
            } else {
                cmd.stdin(if c.stdin == Some(true) {
                    Stdio::piped()
                } else {
                    Stdio::null()
                })
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
                None
            };
            let spawned = cmd.spawn();
            // Our copies of the terminal's slave side close here: the master reads its end
            // once the container's processes are gone.
            drop(cmd);
            let mut child = spawned
                .map_err(|e| err("StartError", format!("start {}: {e}", self.exe.display())))?;
            let shim_pid = child.id().unwrap_or(0) as i32;
            let id = format!(
                "{:016x}",
                self.next_id.fetch_add(1, Ordering::Relaxed) ^ ((shim_pid as u64) << 32)
            );
            let (live, _) = tokio::sync::broadcast::channel(256);
            let boxed =
                |w: Box<dyn tokio::io::AsyncWrite + Send + Unpin>| -> crate::runtime::Stdin {
                    Arc::new(tokio::sync::Mutex::new(Some(w)))
                };
            let (out, errp, stdin, tty, hangup) = match pty {
                Some(((reader, writer), path)) => {
                    // The pump holds the master until the terminal ends, or is told to hang up:
                    // the master closes with the last holder (the stdin writer's goes when
                    // stdin is closed).
                    let hangup = tokio_util::sync::CancellationToken::new();
                    let pump =
                        logs::pump(reader, "stdout", log.clone(), live.clone(), hangup.clone());
                    let out = tokio::spawn(pump);
                    let stdin = (c.stdin == Some(true)).then(|| boxed(Box::new(writer)));
                    (Some(out), None, stdin, Some(path), Some(hangup))
                }
                None => {
                    let out = child.stdout.take().map(|o| {
                        tokio::spawn(logs::pump(o, "stdout", log.clone(), live.clone(), never()))
                    });
                    let errp = child.stderr.take().map(|o| {
                        tokio::spawn(logs::pump(o, "stderr", log.clone(), live.clone(), never()))
                    });
                    let stdin = child.stdin.take().map(|i| boxed(Box::new(i)));
                    (out, errp, stdin, None, None)
                }
            };

            let (tx, _) = watch::channel(None);
            let h = Arc::new(Proc {
                id,
                shim_pid,
                live,
                stdin,
                tty,
                hangup,
                exit: tx,
                cgroups: cgroups.clone(),
                env,
                container: c.clone(),
            });
            let weak = Arc::downgrade(&h);
            let exit_tx = h.exit.clone();
            tokio::spawn(async move {
                let status = child.wait().await;
                for t in [out, errp].into_iter().flatten() {
                    let _ = tokio::time::timeout(Duration::from_secs(2), t).await;
                }
                let mut exit = match status {
                    Ok(s) => {
                        Exit::with_code(s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(9)))
                    }
                    Err(e) => Exit {
                        message: Some(e.to_string()),
                        ..Exit::with_code(128)
                    },
                };
                if exit.code > 128 && exit.code < 160 {
                    exit.signal = Some(exit.code - 128);
                }
                if cgroup::oom_killed(&cgroups) {
                    exit.reason = "OOMKilled".into();
                }
                let dirs = cgroups.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    for d in dirs {
                        cgroup::remove_tree(&d);
                    }
                })
                .await;
                drop(weak);
                exit_tx.send_replace(Some(exit));
            });
            Ok(h as Arc<dyn ContainerHandle>)
        })
    }

    fn log_files(&self, pod: &Pod, container: &str, restart: i32) -> Vec<PathBuf> {
        logs::files(&self.log_path(pod, container, restart))
    }

    fn teardown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Some(net) = self.net.lock().await.take() {
                net.teardown().await;
            }
            for b in self.cgroups.bases() {
                let _ = std::fs::remove_dir(&b);
            }
        })
    }

    fn clean_stale(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            // Containers of an earlier run: kill what is left in our cgroups, drop the pods'
            // directories and network namespaces. Their pods are started again from the API.
            for base in self.cgroups.bases() {
                if let Ok(rd) = std::fs::read_dir(&base) {
                    for e in rd.flatten() {
                        if e.file_type().is_ok_and(|t| t.is_dir()) {
                            let p = e.path();
                            let _ =
                                tokio::task::spawn_blocking(move || cgroup::remove_tree(&p)).await;
                        }
                    }
                }
            }
            if let Ok(rd) = std::fs::read_dir(self.root.join("pods")) {
                for e in rd.flatten() {
                    let u = e.file_name().to_string_lossy().into_owned();
                    if let Some(net) = self.net.lock().await.clone() {
                        net.remove_pod(&u).await;
                    } else if Network::netns_path(&u).exists() {
                        let _ = tokio::process::Command::new("ip")
                            .args(["netns", "del", &Network::netns_name(&u)])
                            .status()
                            .await;
                    }
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
            let _ = std::fs::remove_dir_all(self.root.join("logs"));
            let _ = std::fs::remove_dir_all(self.root.join("ipam"));
        })
    }
}

#[cfg(test)]
mod path_tests {
    #[test]
    fn container_paths_follow_the_hosts_symlinks() {
        use super::in_container;
        assert_eq!(in_container("/usr/share/../lib"), "/usr/lib");
        assert_eq!(in_container("/tmp/./a"), "/tmp/a");
        if std::fs::read_link("/var/run").is_ok() {
            let run = std::fs::canonicalize("/var/run").unwrap();
            assert_eq!(
                in_container("/var/run/secrets/kubernetes.io/serviceaccount"),
                format!("{}/secrets/kubernetes.io/serviceaccount", run.display())
            );
        }
    }
}
