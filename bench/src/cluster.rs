//! Clusters the benchmarks start: `keelson up` on a temporary data directory, stopped (and the
//! directory removed) when dropped.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};

/// A running `keelson up`.
pub struct Cluster {
    _dir: tempfile::TempDir,
    /// The `keelson up` process.
    pub up: Child,
    /// Its data directory (`status.json`, `store-<i>/`, logs).
    pub data: PathBuf,
    /// The admin kubeconfig.
    pub kubeconfig: PathBuf,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-INT")
            .arg(self.up.id().to_string())
            .status();
        let _ = self.up.wait();
    }
}

impl Cluster {
    /// Starts `keelson up <args>` on a new temporary data directory and a free balancer port,
    /// in a process group of its own (a Ctrl-C meant for the caller leaves it to the caller to
    /// stop), and waits until it says it is ready.
    pub fn start(keelson: &Path, args: &[String]) -> anyhow::Result<Cluster> {
        use std::os::unix::process::CommandExt;
        let dir = tempfile::tempdir()?;
        let port = keelson_client::ports::free_port()?;
        let data = dir.path().join("data");
        let errors = dir.path().join("up.stderr");
        let mut up = Command::new(keelson)
            .arg("up")
            .args(args)
            .args(["--port", &port.to_string(), "--data-dir"])
            .arg(&data)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&errors)?)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {} up", keelson.display()))?;
        let stdout = up.stdout.take().context("stdout")?;
        let cluster = Cluster {
            _dir: dir,
            up,
            kubeconfig: data.join("admin.kubeconfig"),
            data,
        };
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let ready = BufReader::new(stdout)
                .lines()
                .any(|l| l.is_ok_and(|l| l.starts_with("Press Ctrl-C")));
            let _ = tx.send(ready);
        });
        let why = match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(true) => return Ok(cluster),
            Ok(false) | Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                "ended before it was ready"
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => "was not ready in 120 s",
        };
        let log = std::fs::read_to_string(&errors).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!("keelson up {why}:\n{}", tail.join("\n"))
    }

    /// The apiservers' own URLs (not the balancer's), from `<data>/status.json`.
    pub fn apiservers(&self) -> anyhow::Result<Vec<String>> {
        let path = self.data.join("status.json");
        let rows: Vec<serde_json::Value> = serde_json::from_slice(
            &std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?,
        )?;
        let urls: Vec<String> = rows
            .iter()
            .filter(|r| {
                r["component"]
                    .as_str()
                    .is_some_and(|c| c.starts_with("apiserver"))
            })
            .filter_map(|r| r["endpoint"].as_str().map(str::to_string))
            .collect();
        if urls.is_empty() {
            bail!("no apiserver in {}", path.display());
        }
        Ok(urls)
    }
}

/// Whether the node's Ready condition is True.
pub fn node_ready(n: &k8s_openapi::api::core::v1::Node) -> bool {
    n.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// A child process stopped with SIGTERM (and waited for) when dropped.
pub struct Terminating(pub Child);

impl Drop for Terminating {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.0.id().to_string())
            .status();
        let _ = self.0.wait();
    }
}
