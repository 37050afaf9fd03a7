//! The cluster a control-plane run works on: `keelson up` (store members, apiservers, HA pairs
//! of controller-managers and schedulers, hollow nodes) on a data directory of the run, and its
//! components as `<data>/status.json` names them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// A running `keelson up`, stopped (SIGTERM, which stops its components) when dropped.
pub struct UpCluster {
    up: Child,
    /// Its data directory.
    pub data: PathBuf,
    /// The admin kubeconfig.
    pub kubeconfig: PathBuf,
    /// Components stopped with SIGSTOP and not resumed yet: resumed before `up` is stopped.
    pub paused: Vec<u32>,
    /// Clients of the components' metrics, by port.
    pub(crate) metrics_clients: std::sync::Mutex<Vec<(u16, kube::Client)>>,
}

/// One component process, as `status.json` shows it.
#[derive(Clone, Debug, serde::Deserialize)]
pub struct Component {
    /// `apiserver 0`, `store member s1`, `controller-manager 1`, `3 hollow nodes`, ...
    pub component: String,
    /// Its process, unless it is being restarted.
    pub pid: Option<u32>,
    /// Where it serves (`https://127.0.0.1:<port>/healthz` for the HA pairs).
    pub endpoint: String,
    /// `ok`, `not serving yet` or `down (restarting)`.
    pub health: String,
}

impl Component {
    /// The `keelson` subcommand the component runs, from its name.
    pub fn kind(&self) -> &str {
        let c = self.component.as_str();
        if c.starts_with("store member") {
            "store"
        } else if c.ends_with("hollow nodes") || c.starts_with("node ") {
            "node"
        } else {
            c.split(' ').next().unwrap_or(c)
        }
    }

    /// The port in its endpoint, if it has one.
    pub fn port(&self) -> Option<u16> {
        let rest = self.endpoint.rsplit_once(':')?.1;
        rest.split('/').next()?.parse().ok()
    }

    /// Whether `pid` still runs this component (`status.json` is rewritten every 2 s, so a
    /// process it names may have been restarted since): its command line runs the same
    /// subcommand (any program, for a store member) and names the same port.
    pub fn runs_as(&self, pid: u32) -> bool {
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            return false;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        // A store member may be another binary (`up --store-binary`, with etcd's flags).
        let sub = args.get(1).map(String::as_str) == Some(self.kind()) || self.kind() == "store";
        let names_port = |p: u16| {
            let p = p.to_string();
            args.iter()
                .any(|a| a.split(|c: char| !c.is_ascii_digit()).any(|n| n == p))
        };
        sub && self.port().is_none_or(names_port)
    }
}

impl UpCluster {
    /// Starts `keelson up` with `args` on `data` and a free balancer port, in a process group
    /// of its own (a Ctrl-C meant for the run leaves the cluster to the run to stop), and waits
    /// (up to `limit`) until it says it is ready. Its own output goes to `<data>/up.log`.
    pub fn start(
        keelson: &Path,
        data: &Path,
        args: &[String],
        limit: Duration,
    ) -> anyhow::Result<UpCluster> {
        use std::os::unix::process::CommandExt;
        std::fs::create_dir_all(data).with_context(|| format!("creating {}", data.display()))?;
        let port = keelson_client::ports::free_port()?;
        let log_path = data.join("up.log");
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let up = Command::new(keelson)
            .arg("up")
            .args(args)
            .args(["--port", &port.to_string(), "--data-dir"])
            .arg(data)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {} up", keelson.display()))?;
        let mut cluster = UpCluster {
            up,
            data: data.to_path_buf(),
            kubeconfig: data.join("admin.kubeconfig"),
            paused: Vec::new(),
            metrics_clients: Default::default(),
        };
        let deadline = Instant::now() + limit;
        loop {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            if text.contains("Press Ctrl-C") {
                return Ok(cluster);
            }
            let why = if let Some(status) = cluster.up.try_wait()? {
                format!("exited ({status})")
            } else if Instant::now() > deadline {
                format!("was not ready in {limit:?}")
            } else {
                std::thread::sleep(Duration::from_millis(200));
                continue;
            };
            let tail: Vec<&str> = text.lines().rev().take(20).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!("keelson up {why}:\n{}", tail.join("\n"));
        }
    }

    /// The components as `status.json` shows them now.
    pub fn components(&self) -> anyhow::Result<Vec<Component>> {
        let path = self.data.join("status.json");
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_slice(&bytes).with_context(|| format!("reading {}", path.display()))
    }

    /// Sends `signal` to `pid`, a component of this cluster (`ESRCH` if it has just exited).
    pub fn signal(&mut self, pid: u32, signal: Signal) -> nix::Result<()> {
        // Whatever comes of a SIGCONT, the pid is not to be resumed again (it may be another
        // process's by then).
        if signal == Signal::SIGCONT {
            self.paused.retain(|p| *p != pid);
        }
        kill(Pid::from_raw(pid as i32), signal)?;
        if signal == Signal::SIGSTOP {
            self.paused.push(pid);
        }
        Ok(())
    }

    /// Resumes every paused component.
    pub fn resume_all(&mut self) {
        for pid in std::mem::take(&mut self.paused) {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGCONT);
        }
    }
}

impl Drop for UpCluster {
    fn drop(&mut self) {
        self.resume_all();
        let _ = kill(Pid::from_raw(self.up.id() as i32), Signal::SIGTERM);
        // `up` stops its components (nodes first) within about a minute; then it is killed.
        let deadline = Instant::now() + Duration::from_secs(90);
        while Instant::now() < deadline {
            if matches!(self.up.try_wait(), Ok(Some(_)) | Err(_)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.up.kill();
        let _ = self.up.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn component(name: &str, endpoint: &str) -> Component {
        Component {
            component: name.into(),
            pid: Some(1),
            endpoint: endpoint.into(),
            health: "ok".into(),
        }
    }

    #[test]
    fn components_are_known_by_their_names_and_ports() {
        let s = component("store member s1", "https://127.0.0.1:2379");
        assert_eq!((s.kind(), s.port()), ("store", Some(2379)));
        let c = component("controller-manager 1", "https://127.0.0.1:10257/healthz");
        assert_eq!((c.kind(), c.port()), ("controller-manager", Some(10257)));
        let h = component("3 hollow nodes", "");
        assert_eq!((h.kind(), h.port()), ("node", None));
        let a = component("apiserver 0", "https://127.0.0.1:6444");
        assert_eq!((a.kind(), a.port()), ("apiserver", Some(6444)));
        // This test's own process runs no component.
        assert!(!a.runs_as(std::process::id()));
    }
}
