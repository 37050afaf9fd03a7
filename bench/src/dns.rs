//! `keelson-bench dns`: queries per second of keelson's DNS server on one core.
//!
//! The server (`keelson_dns`'s resolver and UDP loop, as `keelson dns` runs them) gets a thread
//! of its own with a single-threaded runtime, over a zone of N ClusterIP Services (each with a
//! named port) built the way the informers build it. Load comes from the other threads: C
//! clients on loopback, each keeping W questions in flight, asking A records of random Services
//! (80 %), their SRV records (10 %) and names that do not exist (10 %). Every answer is checked
//! for its ID and response code. Reported: zone build time, queries/s, latency percentiles.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use k8s_openapi::api::core::v1::Service;
use keelson_dns::server::{Metrics, Resolver, serve_udp};
use keelson_dns::zone::Zone;
use parking_lot::{Mutex, RwLock};
use serde_json::json;
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

use crate::new_hist;

#[derive(clap::Args, Debug)]
pub struct DnsArgs {
    /// Services in the zone.
    #[arg(long, default_value_t = 10_000)]
    services: usize,
    /// Questions asked in all.
    #[arg(long, default_value_t = 200_000)]
    queries: usize,
    /// Client sockets.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Questions in flight per client.
    #[arg(long, default_value_t = 32)]
    window: usize,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 120)]
    timeout_secs: u64,
}

fn service(i: usize) -> Service {
    serde_json::from_value(json!({
        "metadata": {"name": format!("svc-{i}"), "namespace": format!("ns-{}", i % 100)},
        "spec": {"clusterIP": format!("10.96.{}.{}", (i / 250) % 256, i % 250 + 1),
            "ports": [{"name": "http", "port": 80}]},
    }))
    .expect("service")
}

/// The question for query number `n` (deterministic mix).
fn question(n: usize, services: usize) -> (String, RecordType, ResponseCode) {
    let i = n.wrapping_mul(2_654_435_761) % services;
    let (name, ns) = (format!("svc-{i}"), format!("ns-{}", i % 100));
    match n % 10 {
        0 => (
            format!("_http._tcp.{name}.{ns}.svc.cluster.local."),
            RecordType::SRV,
            ResponseCode::NoError,
        ),
        1 => (
            format!("missing-{i}.{ns}.svc.cluster.local."),
            RecordType::A,
            ResponseCode::NXDomain,
        ),
        _ => (
            format!("{name}.{ns}.svc.cluster.local."),
            RecordType::A,
            ResponseCode::NoError,
        ),
    }
}

pub async fn run(a: DnsArgs) -> anyhow::Result<()> {
    if a.services == 0 || a.clients == 0 || a.window == 0 {
        bail!("--services, --clients and --window must be positive");
    }
    let mut zone = Zone::new("cluster.local");
    let t0 = Instant::now();
    for i in 0..a.services {
        let s = service(i);
        zone.set_service(&format!("ns-{}/svc-{i}", i % 100), Some(&s), &[]);
    }
    let build = t0.elapsed();
    println!(
        "zone: {} Services, {} names, built in {:.1} ms ({:.1} µs per Service)",
        a.services,
        zone.len(),
        build.as_secs_f64() * 1e3,
        build.as_secs_f64() * 1e6 / a.services as f64
    );
    let resolver = Arc::new(Resolver {
        zone: Arc::new(RwLock::new(zone)),
        ttl: 5,
        upstreams: Vec::new(),
        ready: Arc::new(AtomicBool::new(true)),
        metrics: Metrics::default(),
    });
    // The server: one thread, one single-threaded runtime, one UDP worker.
    let stop = CancellationToken::new();
    let (tx, rx) = std::sync::mpsc::channel();
    let server = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let sock = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind"));
                tx.send(sock.local_addr().expect("address")).expect("send");
                serve_udp(resolver, sock, 1, stop.clone());
                stop.cancelled().await;
            });
        })
    };
    let addr: SocketAddr = rx.recv().context("server did not start")?;

    let next = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(AtomicUsize::new(0));
    let hist = Arc::new(Mutex::new(new_hist()));
    let deadline = Instant::now() + Duration::from_secs(a.timeout_secs);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..a.clients {
        let (next, errors, hist) = (next.clone(), errors.clone(), hist.clone());
        let (total, services, window) = (a.queries, a.services, a.window);
        tasks.push(tokio::spawn(async move {
            let sock = UdpSocket::bind("127.0.0.1:0").await?;
            sock.connect(addr).await?;
            // In flight: id -> (sent at, expected code).
            let mut inflight: std::collections::HashMap<u16, (Instant, ResponseCode)> =
                std::collections::HashMap::new();
            let mut id: u16 = 0;
            let mut buf = vec![0u8; 4096];
            let mut local = new_hist();
            loop {
                while inflight.len() < window {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= total {
                        break;
                    }
                    let (name, t, code) = question(n, services);
                    id = id.wrapping_add(1);
                    let mut q = Message::query();
                    q.metadata.id = id;
                    q.add_query(Query::query(Name::from_ascii(&name)?, t));
                    sock.send(&q.to_vec()?).await?;
                    inflight.insert(id, (Instant::now(), code));
                }
                if inflight.is_empty() || Instant::now() > deadline {
                    break;
                }
                match tokio::time::timeout(Duration::from_secs(2), sock.recv(&mut buf)).await {
                    Ok(Ok(n)) => {
                        let m = Message::from_vec(&buf[..n])?;
                        match inflight.remove(&m.metadata.id) {
                            Some((at, code)) => {
                                let _ = local.record(at.elapsed().as_micros().max(1) as u64);
                                if m.metadata.response_code != code {
                                    errors.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                            None => {
                                errors.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    // Lost on loopback (socket buffer full): counted, and the slots freed.
                    _ => {
                        errors.fetch_add(inflight.len(), Ordering::Relaxed);
                        inflight.clear();
                    }
                }
            }
            hist.lock().add(&local).ok();
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let elapsed = started.elapsed();
    stop.cancel();
    let _ = server.join();
    let h = hist.lock();
    let answered = h.len() as f64;
    println!(
        "{} questions, {} clients x {} in flight: {:.0} answers/s on one server thread; latency p50 {} µs, p99 {} µs, max {} µs; errors {}",
        a.queries,
        a.clients,
        a.window,
        answered / elapsed.as_secs_f64(),
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99),
        h.max(),
        errors.load(Ordering::Relaxed)
    );
    Ok(())
}
