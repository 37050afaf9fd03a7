//! `keelson up`: a local cluster of separate processes on loopback.
//!
//! Today it starts the store tier only: N `keelson store` members (default 3) forming one Raft
//! cluster, and prints how to reach it with etcdctl. The apiservers, controllers, schedulers and
//! nodes join as their issues land.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
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
    /// Where members keep their data (one subdirectory each).
    #[arg(long, default_value = "keelson-data")]
    pub data_dir: PathBuf,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Starts the cluster and waits for Ctrl-C, then stops every process it started.
pub async fn run(args: Args, shutdown: CancellationToken) -> anyhow::Result<()> {
    let n = if args.single { 1 } else { args.stores };
    if n == 0 {
        bail!("--stores must be at least 1");
    }
    let exe = std::env::current_exe().context("locating the keelson binary")?;
    let mut ports = Vec::new();
    for _ in 0..n {
        ports.push((free_port()?, free_port()?));
    }
    let initial: Vec<String> = ports
        .iter()
        .enumerate()
        .map(|(i, (_, p))| format!("s{i}=http://127.0.0.1:{p}"))
        .collect();
    let initial = initial.join(",");
    let mut children: Vec<Child> = Vec::new();
    for (i, (client, peer)) in ports.iter().enumerate() {
        let dir = args.data_dir.join(format!("store-{i}"));
        let child = Command::new(&exe)
            .arg("store")
            .args(["--name", &format!("s{i}")])
            .arg(format!("--data-dir={}", dir.display()))
            .arg(format!("--listen-client-urls=http://127.0.0.1:{client}"))
            .arg(format!("--advertise-client-urls=http://127.0.0.1:{client}"))
            .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer}"))
            .arg(format!(
                "--initial-advertise-peer-urls=http://127.0.0.1:{peer}"
            ))
            .arg(format!("--initial-cluster={initial}"))
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting store member s{i}"))?;
        children.push(child);
    }
    let endpoints: Vec<String> = ports
        .iter()
        .map(|(c, _)| format!("http://127.0.0.1:{c}"))
        .collect();
    let endpoints = endpoints.join(",");
    println!(
        "keelson up: started {n} store member(s) (the store tier only; the rest of the control plane is not built yet)"
    );
    println!("  data:      {}", args.data_dir.display());
    println!("  endpoints: {endpoints}");
    println!("  try:       ETCDCTL_API=3 etcdctl --endpoints={endpoints} endpoint status -w table");
    println!("Press Ctrl-C to stop.");
    let mut exited = None;
    tokio::select! {
        _ = shutdown.cancelled() => {}
        r = wait_any(&mut children) => exited = Some(r),
    }
    for c in &children {
        if let Some(pid) = c.id() {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        }
    }
    for c in &mut children {
        if tokio::time::timeout(Duration::from_secs(10), c.wait())
            .await
            .is_err()
        {
            let _ = c.kill().await;
        }
    }
    if let Some((i, status)) = exited {
        bail!("store member s{i} exited ({status}); stopped the cluster");
    }
    Ok(())
}

async fn wait_any(children: &mut [Child]) -> (usize, String) {
    loop {
        for (i, c) in children.iter_mut().enumerate() {
            if let Ok(Some(status)) = c.try_wait() {
                return (i, status.to_string());
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
