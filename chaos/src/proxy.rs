//! A TCP proxy in front of a member's peer port that can delay what passes through it: the
//! `delay` fault's link latency (this kernel has no netem). The member listens on its own port
//! and advertises the proxy's, so every connection another member opens to it goes through the
//! proxy, and both directions of it (requests to the member, its answers) wait the delay.
//!
//! Each direction reads what arrives, stamps it with the time it may leave (now plus the
//! delay at that moment) and writes it out no earlier, in order: a byte stream is never
//! reordered, so a shorter delay set later only shortens the wait of what arrives after. When
//! either side closes, the connection ends both ways (no half-close; what was still held is
//! dropped). While the member is down the proxy does not listen, so peers are refused as they
//! would be by the member's own port.
//!
//! The proxies run on a runtime of their own (one thread), so that a busy run (its clients,
//! its checkers) never holds the members' messages longer than the delay asked for.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// A delaying proxy; stops (with every connection through it) when dropped.
pub struct Proxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    /// The delay each way, in microseconds.
    delay: Arc<AtomicU64>,
    /// The listener's task while it listens (its connections go with it).
    task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

fn runtime() -> anyhow::Result<&'static tokio::runtime::Runtime> {
    static RUNTIME: std::sync::OnceLock<Result<tokio::runtime::Runtime, String>> =
        std::sync::OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("chaos-proxy")
                .enable_all()
                .build()
                .map_err(|e| format!("starting the proxies' runtime: {e}"))
        })
        .as_ref()
        .map_err(|e| anyhow::anyhow!("{e}"))
}

/// Listens on `addr` (port 0: a free one) and serves connections to `upstream` on the
/// proxies' runtime.
fn listen(
    addr: SocketAddr,
    upstream: SocketAddr,
    delay: Arc<AtomicU64>,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let rt = runtime()?;
    let _in = rt.enter();
    let listener =
        std::net::TcpListener::bind(addr).with_context(|| format!("binding a proxy on {addr}"))?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let listener = TcpListener::from_std(listener)?;
    Ok((addr, rt.spawn(accept(listener, upstream, delay))))
}

impl Proxy {
    /// A proxy on a free loopback port forwarding to `upstream`.
    pub fn start(upstream: SocketAddr) -> anyhow::Result<Proxy> {
        let delay = Arc::new(AtomicU64::new(0));
        let (addr, task) = listen("127.0.0.1:0".parse()?, upstream, delay.clone())?;
        Ok(Proxy {
            addr,
            upstream,
            delay,
            task: std::sync::Mutex::new(Some(task)),
        })
    }

    /// Stops listening and drops every connection through it, as the member behind it does
    /// when it dies: peers then find the port refusing, as they would the member's own.
    pub fn close(&self) {
        if let Some(t) = self.task.lock().unwrap_or_else(|e| e.into_inner()).take() {
            t.abort();
        }
    }

    /// Listens again on the same port (after [`Proxy::close`], for a restarted member).
    pub fn reopen(&self) -> anyhow::Result<()> {
        let mut task = self.task.lock().unwrap_or_else(|e| e.into_inner());
        if task.is_none() {
            // The closed listener is dropped on the proxies' runtime, shortly after `close`:
            // until then the port is still taken.
            let by = std::time::Instant::now() + Duration::from_secs(2);
            let t = loop {
                match listen(self.addr, self.upstream, self.delay.clone()) {
                    Ok((_, t)) => break t,
                    Err(e)
                        if std::time::Instant::now() < by
                            && e.root_cause()
                                .downcast_ref::<std::io::Error>()
                                .is_some_and(|e| e.kind() == std::io::ErrorKind::AddrInUse) =>
                    {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(e) => return Err(e),
                }
            };
            *task = Some(t);
        }
        Ok(())
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Delays what passes each way by `delay` from now on.
    pub fn set_delay(&self, delay: Duration) {
        self.delay
            .store(delay.as_micros() as u64, Ordering::Relaxed);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.close();
    }
}

async fn accept(listener: TcpListener, upstream: SocketAddr, delay: Arc<AtomicU64>) {
    // Dropped with this task (the proxy's), which aborts every connection's.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((down, _)) => {
                    connections.spawn(relay(down, upstream, delay.clone()));
                }
                // Out of descriptors, say: wait rather than spin.
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// One connection: the member's end is dialled when the other end arrives; either end closing
/// closes both.
async fn relay(down: TcpStream, upstream: SocketAddr, delay: Arc<AtomicU64>) {
    let Ok(up) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = down.set_nodelay(true);
    let _ = up.set_nodelay(true);
    let (down_r, down_w) = down.into_split();
    let (up_r, up_w) = up.into_split();
    tokio::select! {
        _ = pump(down_r, up_w, delay.clone()) => {}
        _ = pump(up_r, down_w, delay) => {}
    }
}

/// Copies `from` to `to`, each chunk no earlier than the delay after it arrived.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Arc<AtomicU64>,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let reader = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    let wait = Duration::from_micros(delay.load(Ordering::Relaxed));
                    if tx.send((Instant::now() + wait, buf[..n].to_vec())).is_err() {
                        return;
                    }
                }
            }
        }
    };
    let writer = async move {
        while let Some((at, chunk)) = rx.recv().await {
            // No timer when there is nothing to wait (it would wait for the next tick).
            if at > Instant::now() {
                tokio::time::sleep_until(at).await;
            }
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    // The writer drains what the reader queued before it ended (the reader's end drops the
    // sender), then shuts its side down.
    tokio::join!(reader, writer);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bytes_pass_in_order_and_wait_the_delay() {
        let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let echo_addr = echo.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = echo.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            loop {
                let n = s.read(&mut buf).await.unwrap();
                if n == 0 {
                    return;
                }
                s.write_all(&buf[..n]).await.unwrap();
            }
        });
        let proxy = Proxy::start(echo_addr).unwrap();
        let mut c = TcpStream::connect(proxy.addr()).await.unwrap();
        let mut round_trip = async |msg: &[u8]| {
            let started = std::time::Instant::now();
            c.write_all(msg).await.unwrap();
            let mut got = vec![0u8; msg.len()];
            c.read_exact(&mut got).await.unwrap();
            assert_eq!(got, msg);
            started.elapsed()
        };
        let fast = round_trip(b"hello").await;
        proxy.set_delay(Duration::from_millis(150));
        let slow = round_trip(b"world, later").await;
        // Through the proxy both ways: at least twice the delay (never less: it is a floor).
        assert!(
            slow >= Duration::from_millis(300),
            "{slow:?} (undelayed: {fast:?})"
        );
        proxy.set_delay(Duration::ZERO);
        round_trip(b"and back").await;
    }
}
