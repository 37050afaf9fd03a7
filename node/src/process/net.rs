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
    pub async fn setup(node: &str, cidr: Cidr, state_dir: &Path) -> Result<Self, String> {
        let bridge = format!("kb{}", tag(node));
        let gw = format!("{}/{}", cidr.nth(1), cidr.prefix);
        if ip(&["link", "show", &bridge]).await.is_err() {
            ip(&["link", "add", &bridge, "type", "bridge"]).await?;
        }
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
}
