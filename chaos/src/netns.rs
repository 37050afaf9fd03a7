//! Members in network namespaces of their own, joined by a bridge, so the links between them can
//! be cut: a partition (both directions), one-way loss (a member hears nobody but is heard) and
//! random packet loss, written as nftables rules inside the member's namespace. Clients stay in
//! the root namespace and reach every member over the bridge; only member-to-member traffic is
//! cut, as in etcd's robustness suite. Needs root, `ip` and `nft`.
//!
//! (Delay would need the kernel's netem queueing discipline; this kernel has none.)

use std::io::Write;
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

/// The bridge, its subnet and one namespace per member; all removed on drop.
pub struct Network {
    bridge: String,
    subnet: u8,
    namespaces: Vec<String>,
}

fn run(args: &[&str]) -> anyhow::Result<()> {
    let o = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", args[0]))?;
    if !o.status.success() {
        bail!(
            "{} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    Ok(())
}

/// The bridges of chaos runs on this host: (subnet, owner pid from the bridge's alias).
fn chaos_bridges() -> Vec<(u8, Option<u32>)> {
    let Ok(o) = Command::new("ip")
        .args(["-o", "link", "show", "type", "bridge"])
        .output()
    else {
        return Vec::new();
    };
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| {
            let name = l.split(':').nth(1)?.trim();
            let subnet = name.strip_prefix("kch")?.parse().ok()?;
            let owner = l
                .split("alias keelson-chaos:")
                .nth(1)
                .and_then(|p| p.split_whitespace().next()?.parse().ok());
            Some((subnet, owner))
        })
        .collect()
}

/// Removes what a run that died without cleaning up (kill -9, a test timeout) left on `subnet`:
/// its members (still running inside their namespaces), the namespaces, the veths and the
/// bridge.
fn remove_stale(subnet: u8) {
    let bridge = format!("kch{subnet}");
    if let Ok(o) = Command::new("ip").args(["netns", "list"]).output() {
        let prefix = format!("{bridge}-");
        for ns in String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|n| n.starts_with(&prefix))
        {
            if let Ok(p) = Command::new("ip").args(["netns", "pids", ns]).output() {
                for pid in String::from_utf8_lossy(&p.stdout).split_whitespace() {
                    if let Ok(pid) = pid.parse::<i32>() {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                    }
                }
            }
            let _ = run(&["ip", "netns", "delete", ns]);
            if let Some(i) = ns.strip_prefix(&prefix).and_then(|m| m.strip_prefix('m')) {
                let _ = run(&["ip", "link", "delete", &format!("{bridge}v{i}")]);
            }
        }
    }
    let _ = run(&["ip", "link", "delete", &bridge]);
}

impl Network {
    /// A bridge on a free 10.213.X.0/24 and `n` namespaces attached to it. Creating the bridge
    /// `kchX` claims the subnet; its alias names this process, so a later run can tell a dead
    /// run's leftovers and remove them. (Liveness is judged in this PID namespace: runs in
    /// containers sharing the host's network but not its PIDs would not see each other.)
    pub fn create(n: usize) -> anyhow::Result<Network> {
        let pid = std::process::id();
        for (subnet, owner) in chaos_bridges() {
            if owner.is_some_and(|p| !std::path::Path::new(&format!("/proc/{p}")).exists()) {
                remove_stale(subnet);
            }
        }
        let mut last = None;
        for attempt in 0..250usize {
            let subnet = ((pid as usize + attempt * 37) % 250 + 1) as u8;
            let bridge = format!("kch{subnet}");
            match run(&["ip", "link", "add", &bridge, "type", "bridge"]) {
                Ok(()) => {
                    let mut net = Network {
                        bridge,
                        subnet,
                        namespaces: Vec::new(),
                    };
                    run(&[
                        "ip",
                        "link",
                        "set",
                        &net.bridge,
                        "alias",
                        &format!("keelson-chaos:{pid}"),
                    ])?;
                    net.attach(n)?;
                    return Ok(net);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("every 10.213.X.0/24 is in use")))
            .context("creating the bridge for the members' namespaces (needs root and iproute2)")
    }

    fn attach(&mut self, n: usize) -> anyhow::Result<()> {
        let gateway = format!("10.213.{}.1", self.subnet);
        run(&[
            "ip",
            "addr",
            "add",
            &format!("{gateway}/24"),
            "dev",
            &self.bridge,
        ])?;
        run(&["ip", "link", "set", &self.bridge, "up"])?;
        for i in 0..n {
            let ns = format!("{}-m{i}", self.bridge);
            run(&["ip", "netns", "add", &ns])?;
            self.namespaces.push(ns.clone());
            let host = format!("{}v{i}", self.bridge);
            // A veth of an earlier network on this subnet outlives it while a process still
            // holds its namespace; holding the bridge's name makes it ours to remove.
            let _ = run(&["ip", "link", "delete", &host]);
            run(&[
                "ip", "link", "add", &host, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ])?;
            run(&["ip", "link", "set", &host, "master", &self.bridge, "up"])?;
            run(&["ip", "-n", &ns, "link", "set", "lo", "up"])?;
            run(&[
                "ip",
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/24", self.ip(i)),
                "dev",
                "eth0",
            ])?;
            run(&["ip", "-n", &ns, "link", "set", "eth0", "up"])?;
            run(&["ip", "-n", &ns, "route", "add", "default", "via", &gateway])?;
        }
        Ok(())
    }

    /// Member `i`'s address.
    pub fn ip(&self, i: usize) -> String {
        format!("10.213.{}.{}", self.subnet, 10 + i)
    }

    /// Member `i`'s namespace.
    pub fn namespace(&self, i: usize) -> &str {
        &self.namespaces[i]
    }

    fn others(&self, i: usize) -> String {
        (0..self.namespaces.len())
            .filter(|&j| j != i)
            .map(|j| self.ip(j))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Replaces member `i`'s rules: drop traffic from the other members (`inbound`) and to them
    /// (`outbound`), every packet or, with `percent`, that share at random.
    pub fn cut(
        &self,
        i: usize,
        inbound: bool,
        outbound: bool,
        percent: Option<u8>,
    ) -> anyhow::Result<()> {
        let others = self.others(i);
        let chance = percent
            .map(|p| format!("numgen random mod 100 < {p} "))
            .unwrap_or_default();
        let mut table = String::from("table inet keelson-chaos {\n");
        if inbound && !others.is_empty() {
            table += &format!(
                "  chain input {{ type filter hook input priority 0; ip saddr {{ {others} }} {chance}drop; }}\n"
            );
        }
        if outbound && !others.is_empty() {
            table += &format!(
                "  chain output {{ type filter hook output priority 0; ip daddr {{ {others} }} {chance}drop; }}\n"
            );
        }
        table += "}\n";
        self.nft(i, &table)
    }

    /// Removes member `i`'s rules.
    pub fn heal(&self, i: usize) -> anyhow::Result<()> {
        self.nft(i, "")
    }

    /// Replaces the chaos table in member `i`'s namespace by `table` in one transaction (adding
    /// the table first makes the delete succeed when there was none).
    fn nft(&self, i: usize, table: &str) -> anyhow::Result<()> {
        let script =
            format!("add table inet keelson-chaos\ndelete table inet keelson-chaos\n{table}");
        let mut child = Command::new("ip")
            .args(["netns", "exec", self.namespace(i), "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("running nft")?;
        child
            .stdin
            .take()
            .context("nft stdin")?
            .write_all(script.as_bytes())?;
        let o = child.wait_with_output()?;
        if !o.status.success() {
            bail!(
                "nft refused {script}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        Ok(())
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for (i, ns) in self.namespaces.iter().enumerate() {
            // Deleting the host end removes the pair now, not when the namespace's last
            // process is gone.
            let _ = run(&["ip", "link", "delete", &format!("{}v{i}", self.bridge)]);
            let _ = run(&["ip", "netns", "delete", ns]);
        }
        let _ = run(&["ip", "link", "delete", &self.bridge]);
    }
}
