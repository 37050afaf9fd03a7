//! Clusters the benchmarks start: `keelson up` on a temporary data directory, stopped (and the
//! directory removed) when dropped.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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
    /// and waits until it says it is ready.
    pub fn start(keelson: &Path, args: &[String]) -> anyhow::Result<Cluster> {
        let dir = tempfile::tempdir()?;
        let port = keelson_client::ports::free_port()?;
        let data = dir.path().join("data");
        let mut up = Command::new(keelson)
            .arg("up")
            .args(args)
            .args(["--port", &port.to_string(), "--data-dir"])
            .arg(&data)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {} up", keelson.display()))?;
        let mut lines = BufReader::new(up.stdout.take().context("stdout")?).lines();
        let deadline = Instant::now() + Duration::from_secs(120);
        let cluster = Cluster {
            _dir: dir,
            up,
            kubeconfig: data.join("admin.kubeconfig"),
            data,
        };
        loop {
            match lines.next() {
                Some(Ok(l)) if l.starts_with("Press Ctrl-C") => break,
                Some(Ok(_)) => {}
                _ => bail!("keelson up ended before it was ready"),
            }
            if Instant::now() > deadline {
                bail!("keelson up not ready in 120 s");
            }
        }
        Ok(cluster)
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
