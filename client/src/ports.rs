//! Loopback ports for components that are started later.
//!
//! A port the kernel hands out for `bind(:0)` comes from the ephemeral range, the same range
//! outgoing connections take their local ports from. A port chosen that way and bound seconds
//! later (after the stores and apiservers have opened dozens of connections) can be taken by
//! then, and a long-lived connection (a watch) keeps it taken. So ports are drawn at random from
//! below the ephemeral range, where no outgoing connection lands, and checked free by binding.
//! `keelson up`, the chaos runs and the integration tests start components the same way.
//!
//! Processes that pick ports at the same time (tests side by side, each starting a cluster)
//! could pick the same free port before either binds it. Each port handed out is therefore
//! written, with the time, to a small book in the temporary directory, under a file lock, and
//! no process hands out a port booked in the last two minutes. Without the book (it cannot be
//! opened) ports are picked as before.

use std::collections::HashSet;
use std::hash::{BuildHasher, Hasher};
use std::io::{Read, Seek, Write};
use std::net::TcpListener;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long a handed-out port stays booked.
const BOOKED_FOR: Duration = Duration::from_secs(120);

/// Lowest port handed out: clear of the well-known and commonly configured service ports.
const LOWEST: u16 = 20000;

/// A TCP port on 127.0.0.1 that nothing listens on now and no outgoing connection will take.
pub fn free_port() -> std::io::Result<u16> {
    match Book::open() {
        Ok(mut book) => {
            let port = pick(&book.booked())?;
            book.add(port);
            Ok(port)
        }
        Err(_) => pick(&HashSet::new()),
    }
}

/// A free port not in `booked`.
fn pick(booked: &HashSet<u16>) -> std::io::Result<u16> {
    let free =
        |port: u16| !booked.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok();
    if let Some((low, high)) = below_ephemeral() {
        let span = u64::from(high - low) + 1;
        for _ in 0..200 {
            let random = std::collections::hash_map::RandomState::new()
                .build_hasher()
                .finish();
            let port = low + (random % span) as u16;
            if free(port) {
                return Ok(port);
            }
        }
    }
    // Crowded below the ephemeral range (or no room there): the kernel's choice is still
    // better than failing.
    for _ in 0..20 {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        if !booked.contains(&port) {
            return Ok(port);
        }
    }
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The book of ports handed out recently, held locked.
struct Book {
    file: std::fs::File,
    /// The entries still current: `(port, seconds since the epoch)`.
    entries: Vec<(u16, u64)>,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Book {
    fn open() -> std::io::Result<Book> {
        let path = std::env::temp_dir().join("keelson-ports");
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        file.lock()?;
        let mut text = String::new();
        file.read_to_string(&mut text)?;
        let now = now_secs();
        let entries: Vec<(u16, u64)> = text
            .lines()
            .filter_map(|l| {
                let (p, t) = l.split_once(' ')?;
                Some((p.parse().ok()?, t.parse().ok()?))
            })
            .filter(|&(_, t)| now.saturating_sub(t) < BOOKED_FOR.as_secs())
            .collect();
        Ok(Book { file, entries })
    }

    /// The ports booked now.
    fn booked(&self) -> HashSet<u16> {
        self.entries.iter().map(|&(p, _)| p).collect()
    }

    /// Books `port` and writes the book back (stale entries dropped); the lock goes with
    /// the file. A failed write only loses the booking.
    fn add(&mut self, port: u16) {
        self.entries.push((port, now_secs()));
        let text: String = self
            .entries
            .iter()
            .map(|(p, t)| format!("{p} {t}\n"))
            .collect();
        let _ = self
            .file
            .set_len(0)
            .and_then(|()| self.file.rewind())
            .and_then(|()| self.file.write_all(text.as_bytes()));
    }
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

    #[test]
    fn a_port_handed_out_is_booked_for_other_pickers() {
        let p = free_port().unwrap();
        let book = Book::open().unwrap();
        assert!(book.booked().contains(&p), "{p} not booked");
        drop(book);
        // Another picker (the book read afresh) never gets it while it is booked.
        for _ in 0..50 {
            assert_ne!(free_port().unwrap(), p);
        }
    }
}
