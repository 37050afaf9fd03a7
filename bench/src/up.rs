//! `keelson-bench up`: how long `keelson up` takes to be ready, from a new data directory
//! (cold: PKI, store bootstrap, KMS keys) and again on the same one (warm: existing state), and
//! the resident memory of every component once the cluster is up.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use keelson_bench::cluster::Terminating;
use keelson_bench::procs::{child_pids, rss_mib};

/// The `keelson` subcommands `up` runs, in table order.
const COMPONENTS: [&str; 7] = [
    "store",
    "apiserver",
    "controller-manager",
    "scheduler",
    "node",
    "dns",
    "kms-plugin",
];

/// Flags of `keelson-bench up`.
#[derive(clap::Args, Debug)]
pub struct UpArgs {
    /// The keelson binary (default: next to this one).
    #[arg(long)]
    keelson: Option<PathBuf>,
    /// Process-runtime nodes (need root).
    #[arg(long, default_value_t = 2)]
    nodes: usize,
    /// Warm starts measured after the cold one.
    #[arg(long, default_value_t = 2)]
    warm: usize,
    /// Seconds to let the cluster settle before RSS is read.
    #[arg(long, default_value_t = 10)]
    settle: u64,
}

/// Starts `keelson up` and returns it with the time to its "Press Ctrl-C" line.
fn start(
    keelson: &std::path::Path,
    data: &std::path::Path,
    args: &UpArgs,
    port: u16,
) -> anyhow::Result<(Terminating, Duration)> {
    let t = Instant::now();
    let mut child = Command::new(keelson)
        .args([
            "up",
            "--nodes",
            &args.nodes.to_string(),
            "--port",
            &port.to_string(),
            "--data-dir",
        ])
        .arg(data)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting keelson up")?;
    let out = child.stdout.take().context("stdout")?;
    let up = Terminating(child);
    for line in BufReader::new(out).lines() {
        let line = line?;
        if line.starts_with("Press Ctrl-C") {
            return Ok((up, t.elapsed()));
        }
        if t.elapsed() > Duration::from_secs(300) {
            break;
        }
    }
    bail!("keelson up did not become ready")
}

/// Runs the measurement and prints markdown tables.
pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    let keelson = match &args.keelson {
        Some(k) => k.clone(),
        None => std::env::current_exe()?.with_file_name("keelson"),
    };
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let port = keelson_client::ports::free_port()?;
    let mut times = Vec::new();
    let (up, cold) = start(&keelson, &data, &args, port)?;
    times.push(("cold (new data dir)".to_string(), cold));
    tokio::time::sleep(Duration::from_secs(args.settle)).await;
    let mut rss = Vec::new();
    for sub in COMPONENTS {
        for pid in child_pids(up.0.id(), sub) {
            if let Some(m) = rss_mib(pid) {
                rss.push((sub, m));
            }
        }
    }
    let up_rss = rss_mib(up.0.id()).unwrap_or(0.0);
    drop(up);
    for i in 0..args.warm {
        let (up, warm) = start(&keelson, &data, &args, port)?;
        times.push((format!("warm #{} (same data dir)", i + 1), warm));
        drop(up);
    }
    println!("| start | time to ready |\n|---|---|");
    for (what, t) in &times {
        println!("| {what} | {:.1} s |", t.as_secs_f64());
    }
    println!("\n| component | processes | RSS each (MiB) | total (MiB) |\n|---|---|---|---|");
    let mut total = up_rss;
    for sub in COMPONENTS {
        let each: Vec<f64> = rss
            .iter()
            .filter(|(s, _)| *s == sub)
            .map(|(_, m)| *m)
            .collect();
        if each.is_empty() {
            continue;
        }
        let sum: f64 = each.iter().sum();
        total += sum;
        let list: Vec<String> = each.iter().map(|m| format!("{m:.0}")).collect();
        println!(
            "| {sub} | {} | {} | {sum:.0} |",
            each.len(),
            list.join(", ")
        );
    }
    println!("| up (supervisor, balancer) | 1 | {up_rss:.0} | {up_rss:.0} |");
    println!("| **all** | | | **{total:.0}** |");
    Ok(())
}
