//! The pod network, as a bridge CNI plugin would build it: a bridge per node holding the
//! gateway address of the node's pod CIDR, and per pod a network namespace joined to the bridge
//! by a veth pair, with an address from the CIDR. Pods of different nodes on one machine reach
//! each other through the host's routing between the bridges.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use tokio::process::Command;

/// An IPv4 CIDR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// Network address.
    pub base: Ipv4Addr,
    /// Prefix length.
    pub prefix: u8,
}

impl Cidr {
    /// Parses `a.b.c.d/n` (IPv4, prefix 8..=30).
    pub fn parse(s: &str) -> Result<Self, String> {
        let (ip, p) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not a CIDR"))?;
        let ip: Ipv4Addr = ip
            .parse()
            .map_err(|_| format!("{s:?}: invalid IPv4 address"))?;
        let prefix: u8 = p.parse().map_err(|_| format!("{s:?}: invalid prefix"))?;
        if !(8..=30).contains(&prefix) {
            return Err(format!("{s:?}: prefix must be between 8 and 30"));
        }
        let mask = u32::MAX << (32 - prefix);
        Ok(Self {
            base: Ipv4Addr::from(u32::from(ip) & mask),
            prefix,
        })
    }

    /// The n-th address of the range.
    pub fn nth(&self, n: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.base) + n)
    }

    /// Number of addresses.
    pub fn size(&self) -> u32 {
        1 << (32 - self.prefix)
    }

    /// Whether the range holds `addr`.
    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        let mask = u32::MAX << (32 - self.prefix);
        u32::from(addr) & mask == u32::from(self.base)
    }
}

async fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .await
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The alias a node writes on its bridge: who owns it (pid, start time, PID namespace), so
/// that a later node can tell a bridge left by a dead node from one in use.
fn owner_alias() -> String {
    // The PID as `/proc` names it, which the check reads (it may be another namespace's).
    let pid: Option<u32> = std::fs::read_link("/proc/self")
        .ok()
        .and_then(|p| p.to_str()?.parse().ok());
    match (pid, pid.and_then(start_time), pid_namespace()) {
        (Some(pid), Some((start, _)), Some(ns)) => {
            format!("keelson node pid={pid} start={start} pidns={ns}")
        }
        // Without them the bridge is never taken for a dead node's.
        _ => "keelson node".to_string(),
    }
}

/// A process's start time (in clock ticks since boot: with the PID, it names one process) and
/// whether it is a zombie (exited, not yet reaped).
fn start_time(pid: u32) -> Option<(u64, bool)> {
    let fields = super::stat_fields(pid)?;
    // The state is field 3, the start time field 22.
    Some((fields.get(19)?.parse().ok()?, fields.first()? == "Z"))
}

/// This process's PID namespace (its inode number): PIDs read in another mean nothing here.
fn pid_namespace() -> Option<u64> {
    let link = std::fs::read_link("/proc/self/ns/pid").ok()?;
    let link = link.to_str()?;
    link.strip_prefix("pid:[")?.strip_suffix(']')?.parse().ok()
}

/// Whether a bridge's alias names a keelson node process, of this PID namespace, that no
/// longer runs. Anything that cannot be told for sure is taken as running.
fn owner_gone(alias: &str) -> bool {
    let Some(rest) = alias.strip_prefix("keelson node ") else {
        return false;
    };
    let field = |k: &str| {
        rest.split_whitespace()
            .find_map(|f| f.strip_prefix(k)?.strip_prefix('=')?.parse::<u64>().ok())
    };
    let (Some(pid), Some(start), Some(ns)) = (field("pid"), field("start"), field("pidns")) else {
        return false;
    };
    if pid_namespace() != Some(ns) {
        return false;
    }
    match u32::try_from(pid).ok().and_then(start_time) {
        None => true,
        Some((now, zombie)) => now != start || zombie,
    }
}

/// Removes bridges of dead keelson nodes that hold addresses of `cidr`; refuses when another
/// link holds one. (A link holding an address of a wider network that contains `cidr` is left
/// alone: the host routes pod traffic by the longest prefix, the node's bridge.)
async fn clear_overlaps(bridge: &str, cidr: Cidr) -> Result<(), String> {
    let out = Command::new("ip")
        .args(["-j", "addr", "show"])
        .output()
        .await
        .map_err(|e| format!("ip -j addr show: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "ip -j addr show: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let links: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("ip -j addr show: unreadable answer: {e}"))?;
    for link in links.as_array().into_iter().flatten() {
        let Some(name) = link["ifname"].as_str() else {
            continue;
        };
        if name == bridge {
            continue;
        }
        let held = link["addr_info"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|a| a["family"] == "inet")
            .find_map(|a| {
                let addr: Ipv4Addr = a["local"].as_str()?.parse().ok()?;
                let prefix = a["prefixlen"].as_u64()?;
                cidr.contains(addr).then(|| format!("{addr}/{prefix}"))
            });
        let Some(held) = held else {
            continue;
        };
        let sys = Path::new("/sys/class/net").join(name);
        let alias = std::fs::read_to_string(sys.join("ifalias")).unwrap_or_default();
        let alias = alias.trim();
        if name.starts_with("kb") && sys.join("bridge").exists() && owner_gone(alias) {
            tracing::warn!(
                link = name,
                address = held,
                owner = alias,
                "removing the bridge of a keelson node that is gone: it holds addresses of this node's pod CIDR"
            );
            // (Another node may have removed it first.)
            if let Err(e) = ip(&["link", "del", "dev", name]).await
                && sys.exists()
            {
                return Err(e);
            }
            continue;
        }
        let whose = if alias.starts_with("keelson node ") {
            format!("the bridge of another keelson node ({alias}), which still runs")
        } else if alias.is_empty() {
            format!("link {name}")
        } else {
            format!("link {name} ({alias})")
        };
        return Err(format!(
            "pod CIDR {}/{} overlaps {held} on {whose}: give each node a pod CIDR of its own, \
             or remove {name} (ip link del {name}) if nothing uses it",
            cidr.base, cidr.prefix
        ));
    }
    Ok(())
}

/// A node's pod network.
#[derive(Debug, Clone)]
pub struct Network {
    /// The node's pod CIDR.
    pub cidr: Cidr,
    /// The bridge's name.
    pub bridge: String,
    ipam: PathBuf,
}

/// A short stable tag for names limited to 15 characters.
pub fn tag(s: &str) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in s.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x100000001b3);
    }
    format!("{:010x}", h & 0xff_ffff_ffff)
}

impl Network {
    /// Creates (or re-uses) the node's bridge with the gateway address.
    ///
    /// Another link holding an address of the CIDR would take the pod traffic (the host routes
    /// by its older route), so it is removed when it is the bridge of a keelson node that is
    /// gone (a node killed before it could remove it), and refused otherwise.
    pub async fn setup(node: &str, cidr: Cidr, state_dir: &Path) -> Result<Self, String> {
        let bridge = format!("kb{}", tag(node));
        let gw = format!("{}/{}", cidr.nth(1), cidr.prefix);
        clear_overlaps(&bridge, cidr).await?;
        if ip(&["link", "show", &bridge]).await.is_err() {
            ip(&["link", "add", &bridge, "type", "bridge"]).await?;
        }
        ip(&["link", "set", "dev", &bridge, "alias", &owner_alias()]).await?;
        let _ = ip(&["addr", "add", &gw, "dev", &bridge]).await;
        ip(&["link", "set", &bridge, "up"]).await?;
        let _ = std::fs::write("/proc/sys/net/ipv4/ip_forward", "1");
        let ipam = state_dir.join("ipam");
        std::fs::create_dir_all(&ipam).map_err(|e| format!("{}: {e}", ipam.display()))?;
        Ok(Self { cidr, bridge, ipam })
    }

    /// The network namespace of a pod.
    pub fn netns_name(uid: &str) -> String {
        format!("kp-{}", tag(uid))
    }

    /// The path of a pod's network namespace.
    pub fn netns_path(uid: &str) -> PathBuf {
        PathBuf::from("/var/run/netns").join(Self::netns_name(uid))
    }

    fn allocate(&self, uid: &str) -> Result<Ipv4Addr, String> {
        for n in 2..self.cidr.size() - 1 {
            let addr = self.cidr.nth(n);
            let f = self.ipam.join(addr.to_string());
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&f)
            {
                Ok(_) => {
                    std::fs::write(&f, uid).map_err(|e| e.to_string())?;
                    return Ok(addr);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    if std::fs::read_to_string(&f).is_ok_and(|o| o == uid) {
                        return Ok(addr);
                    }
                }
                Err(e) => return Err(format!("{}: {e}", f.display())),
            }
        }
        Err(format!(
            "no free address in {}/{}",
            self.cidr.base, self.cidr.prefix
        ))
    }

    fn release(&self, uid: &str) {
        if let Ok(rd) = std::fs::read_dir(&self.ipam) {
            for e in rd.flatten() {
                if std::fs::read_to_string(e.path()).is_ok_and(|o| o == uid) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }

    /// Creates the pod's namespace, veth pair and address; returns the address.
    pub async fn add_pod(&self, uid: &str) -> Result<Ipv4Addr, String> {
        let ns = Self::netns_name(uid);
        let addr = self.allocate(uid)?;
        let host_if = format!("kv{}", tag(uid));
        let r = async {
            if !Self::netns_path(uid).exists() {
                ip(&["netns", "add", &ns]).await?;
            }
            let _ = ip(&["link", "del", &host_if]).await;
            ip(&[
                "link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ])
            .await?;
            ip(&["link", "set", &host_if, "master", &self.bridge]).await?;
            // A pod reaching itself through a Service comes back out of its own port (the
            // kubelet's default hairpin-veth mode).
            ip(&[
                "link",
                "set",
                &host_if,
                "type",
                "bridge_slave",
                "hairpin",
                "on",
            ])
            .await?;
            ip(&["link", "set", &host_if, "up"]).await?;
            let a = format!("{addr}/{}", self.cidr.prefix);
            ip(&["-n", &ns, "addr", "add", &a, "dev", "eth0"]).await?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"]).await?;
            ip(&["-n", &ns, "link", "set", "lo", "up"]).await?;
            let gw = self.cidr.nth(1).to_string();
            ip(&["-n", &ns, "route", "add", "default", "via", &gw]).await
        }
        .await;
        match r {
            Ok(()) => Ok(addr),
            Err(e) => {
                self.remove_pod(uid).await;
                Err(e)
            }
        }
    }

    /// Removes the pod's namespace (and with it the veth pair) and frees its address.
    pub async fn remove_pod(&self, uid: &str) {
        let _ = ip(&["link", "del", &format!("kv{}", tag(uid))]).await;
        if Self::netns_path(uid).exists() {
            let _ = ip(&["netns", "del", &Self::netns_name(uid)]).await;
        }
        self.release(uid);
    }

    /// Removes the bridge.
    pub async fn teardown(&self) {
        let _ = ip(&["link", "del", &self.bridge]).await;
    }
}

/// Connects to `port` on loopback: `127.0.0.1`, then `[::1]`.
pub async fn dial_loopback(port: u16) -> Result<tokio::net::TcpStream, String> {
    match tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
        Ok(s) => Ok(s),
        Err(v4) => tokio::net::TcpStream::connect(("::1", port))
            .await
            .map_err(|v6| format!("connecting to localhost:{port}: IPv4: {v4}; IPv6: {v6}")),
    }
}

/// Connects to `port` on loopback inside the network namespace at `netns`. The socket is made
/// on a thread of its own that enters the namespace and then ends: a socket stays in the
/// namespace it was created in, and no pooled thread is moved.
pub async fn dial_in(netns: PathBuf, port: u16) -> Result<tokio::net::TcpStream, String> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("netns-dial".into())
        .spawn(move || {
            let r = (|| {
                let f =
                    std::fs::File::open(&netns).map_err(|e| format!("{}: {e}", netns.display()))?;
                nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(|e| format!("entering {}: {e}", netns.display()))?;
                let timeout = std::time::Duration::from_secs(10);
                let s =
                    std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), timeout)
                        .or_else(|v4| {
                        std::net::TcpStream::connect_timeout(
                            &(std::net::Ipv6Addr::LOCALHOST, port).into(),
                            timeout,
                        )
                        .map_err(|v6| {
                            format!("connecting to localhost:{port}: IPv4: {v4}; IPv6: {v6}")
                        })
                    })?;
                s.set_nonblocking(true).map_err(|e| e.to_string())?;
                Ok::<_, String>(s)
            })();
            let _ = tx.send(r);
        });
    spawned.map_err(|e| format!("starting a thread to dial port {port}: {e}"))?;
    let s = rx
        .await
        .map_err(|_| "the dialing thread died".to_string())??;
    tokio::net::TcpStream::from_std(s).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs() {
        let c = Cidr::parse("10.244.1.7/24").unwrap();
        assert_eq!(c.base, Ipv4Addr::new(10, 244, 1, 0));
        assert_eq!(c.nth(1), Ipv4Addr::new(10, 244, 1, 1));
        assert_eq!(c.size(), 256);
        assert!(Cidr::parse("10.0.0.0/31").is_err());
        assert!(Cidr::parse("nope").is_err());
        assert_eq!(tag("a").len(), 10);
    }

    #[test]
    fn cidr_holds_its_addresses() {
        let c = Cidr::parse("10.244.2.0/24").unwrap();
        let a = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        assert!(c.contains(a("10.244.2.1")));
        assert!(c.contains(a("10.244.2.255")));
        assert!(!c.contains(a("10.244.1.1")));
        assert!(!c.contains(a("10.244.3.0")));
        assert!(!c.contains(a("10.0.0.1")));
    }

    #[test]
    fn a_bridge_is_stale_only_when_its_owner_is_gone() {
        let me = std::process::id();
        let (start, zombie) = start_time(me).unwrap();
        assert!(!zombie);
        let ns = pid_namespace().unwrap();
        assert_eq!(
            owner_alias(),
            format!("keelson node pid={me} start={start} pidns={ns}")
        );
        assert!(!owner_gone(&owner_alias()));
        // The same PID started at another time is another process.
        assert!(owner_gone(&format!(
            "keelson node pid={me} start={} pidns={ns}",
            start + 1
        )));
        // A PID that cannot run (above the kernel's limit of 2^22).
        assert!(owner_gone(&format!(
            "keelson node pid=4194305 start=1 pidns={ns}"
        )));
        // A process that has exited but is not reaped yet.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        let exited = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let child_start = loop {
            let (s, z) = start_time(pid).unwrap();
            if z {
                break s;
            }
            assert!(std::time::Instant::now() < exited, "true never exited");
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        assert!(owner_gone(&format!(
            "keelson node pid={pid} start={child_start} pidns={ns}"
        )));
        child.wait().unwrap();
        // What cannot be told for sure is taken as running: another PID namespace, a field
        // missing, or not a keelson node's alias.
        assert!(!owner_gone(&format!(
            "keelson node pid=4194305 start=1 pidns={}",
            ns + 1
        )));
        assert!(!owner_gone("keelson node pid=4194305 start=1"));
        assert!(!owner_gone("keelson node pid=4194305"));
        assert!(!owner_gone(""));
        assert!(!owner_gone("uplink to the lab"));
    }
}
