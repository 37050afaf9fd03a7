//! Loopback ports for components that are started later.
//!
//! A port the kernel hands out for `bind(:0)` comes from the ephemeral range, the same range
//! outgoing connections take their local ports from. A port chosen that way and bound seconds
//! later (after the stores and apiservers have opened dozens of connections) can be taken by
//! then, and a long-lived connection (a watch) keeps it taken. So ports are drawn at random from
//! below the ephemeral range, where no outgoing connection lands, and checked free by binding.
//! `keelson up`, the chaos runs and the integration tests start components the same way.

use std::hash::{BuildHasher, Hasher};
use std::net::TcpListener;

/// Lowest port handed out: clear of the well-known and commonly configured service ports.
const LOWEST: u16 = 20000;

/// A TCP port on 127.0.0.1 that nothing listens on now and no outgoing connection will take.
pub fn free_port() -> std::io::Result<u16> {
    let Some((low, high)) = below_ephemeral() else {
        return Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port());
    };
    let span = u64::from(high - low) + 1;
    for _ in 0..200 {
        let random = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        let port = low + (random % span) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    // Crowded below the ephemeral range: the kernel's choice is still better than failing.
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// `[LOWEST, first ephemeral port)`, when the system's range leaves room below it.
fn below_ephemeral() -> Option<(u16, u16)> {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let first: u16 = range.split_whitespace().next()?.parse().ok()?;
    (first > LOWEST + 1000).then(|| (LOWEST, first - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_bindable_and_below_the_ephemeral_range() {
        let range = below_ephemeral();
        for _ in 0..20 {
            let p = free_port().unwrap();
            if let Some((low, high)) = range {
                assert!((low..=high).contains(&p), "{p} outside {low}..={high}");
            }
            TcpListener::bind(("127.0.0.1", p)).unwrap();
        }
    }
}
