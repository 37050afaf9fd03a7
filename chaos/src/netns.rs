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

impl Network {
    /// A bridge on a free 10.213.X.0/24 and `n` namespaces attached to it.
    pub fn create(n: usize) -> anyhow::Result<Network> {
        let seed = std::process::id() as usize;
        let mut last = None;
        for attempt in 0..50 {
            let subnet = ((seed + attempt * 37) % 250 + 1) as u8;
            let bridge = format!("kchaos{subnet}");
            match run(&["ip", "link", "add", &bridge, "type", "bridge"]) {
                Ok(()) => {
                    let mut net = Network {
                        bridge,
                        subnet,
                        namespaces: Vec::new(),
                    };
                    net.attach(n)?;
                    return Ok(net);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no free bridge")))
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
        self.heal(i)?;
        let others = self.others(i);
        if others.is_empty() {
            return Ok(());
        }
        let chance = percent
            .map(|p| format!("numgen random mod 100 < {p} "))
            .unwrap_or_default();
        let mut rules = String::from("table inet keelson-chaos {\n");
        if inbound {
            rules += &format!(
                "  chain input {{ type filter hook input priority 0; ip saddr {{ {others} }} {chance}drop; }}\n"
            );
        }
        if outbound {
            rules += &format!(
                "  chain output {{ type filter hook output priority 0; ip daddr {{ {others} }} {chance}drop; }}\n"
            );
        }
        rules += "}\n";
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
            .write_all(rules.as_bytes())?;
        let o = child.wait_with_output()?;
        if !o.status.success() {
            bail!(
                "nft refused {rules}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        Ok(())
    }

    /// Removes member `i`'s rules.
    pub fn heal(&self, i: usize) -> anyhow::Result<()> {
        // Deleting a table that is not there fails; flushing first makes both cases one.
        let ns = self.namespace(i);
        run(&[
            "ip",
            "netns",
            "exec",
            ns,
            "nft",
            "add",
            "table",
            "inet",
            "keelson-chaos",
        ])?;
        run(&[
            "ip",
            "netns",
            "exec",
            ns,
            "nft",
            "delete",
            "table",
            "inet",
            "keelson-chaos",
        ])
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for ns in &self.namespaces {
            let _ = run(&["ip", "netns", "delete", ns]);
        }
        let _ = run(&["ip", "link", "delete", &self.bridge]);
    }
}
