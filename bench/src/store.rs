//! `keelson-bench store`: etcd v3 load against keelson-store, and with `--compare-etcd` the same
//! load against a real etcd cluster of the same size on the same machine.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use keelson_etcdpb::etcdserverpb::{
    Compare, PutRequest, RangeRequest, RequestOp, TxnRequest, WatchCreateRequest, WatchRequest,
    compare, kv_client::KvClient, request_op, watch_client::WatchClient, watch_request,
};
use tokio_stream::StreamExt;
use tonic::transport::{Channel, Endpoint};

use crate::{new_hist, run_ops, run_ops_until};

/// Flags of `keelson-bench store`.
#[derive(clap::Args, Debug)]
pub struct StoreArgs {
    /// Use running endpoints (comma separated) instead of starting a cluster.
    #[arg(long, value_delimiter = ',')]
    endpoints: Vec<String>,
    /// The keelson binary used to start a cluster (default: next to this one).
    #[arg(long)]
    keelson: Option<PathBuf>,
    /// Also run the same load against `etcd` (Debian's etcd-server) on the same machine.
    #[arg(long)]
    compare_etcd: bool,
    /// Members of each started cluster.
    #[arg(long, default_value_t = 3)]
    members: usize,
    /// Concurrent clients (each with its own connection).
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Puts in the put phase.
    #[arg(long, default_value_t = 20000)]
    puts: usize,
    /// Linearizable single-key ranges in the range phase.
    #[arg(long, default_value_t = 20000)]
    ranges: usize,
    /// Value size in bytes.
    #[arg(long, default_value_t = 256)]
    value_size: usize,
    /// Watchers in the watch phase.
    #[arg(long, default_value_t = 1000)]
    watchers: usize,
    /// Puts made while the watchers listen.
    #[arg(long, default_value_t = 200)]
    watch_puts: usize,
    /// Compare-and-put transactions in the txn phase (compare on the key's version, put in
    /// one branch, range in the other, as the apiserver's optimistic writes).
    #[arg(long, default_value_t = 20000)]
    txns: usize,
    /// Operations in the mixed phase: one put for every four linearizable ranges.
    #[arg(long, default_value_t = 20000)]
    mixed: usize,
    /// Key size in bytes (0: the natural `bench/key-NNNNNNNN`, 18 bytes); longer keys are
    /// padded.
    #[arg(long, default_value_t = 0)]
    key_size: usize,
    /// Distinct keys written and read (0: one per put).
    #[arg(long, default_value_t = 0)]
    keyspace: usize,
    /// Stops each phase after this many seconds even if its count is not reached (0: none).
    #[arg(long, default_value_t = 0)]
    duration: u64,
}

/// How keys are named: key number `i` of the keyspace, padded to the key size.
#[derive(Debug, Clone, Copy)]
struct Keys {
    space: usize,
    size: usize,
}

impl Keys {
    fn of(args: &StoreArgs) -> Keys {
        let space = if args.keyspace > 0 {
            args.keyspace
        } else {
            args.puts.max(1)
        };
        Keys {
            space,
            size: args.key_size,
        }
    }

    fn key(&self, i: usize) -> Vec<u8> {
        let mut k = format!("bench/key-{:08}", i % self.space).into_bytes();
        if k.len() < self.size {
            k.resize(self.size, b'k');
        }
        k
    }
}

/// A table row with p99.9 besides the usual columns, and the members' CPU time per operation
/// when the bench started them.
fn store_row(
    name: &str,
    n: usize,
    elapsed: Duration,
    h: &hdrhistogram::Histogram<u64>,
    errors: usize,
    cpu: &Cpu,
) -> String {
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let cpu = match cpu.per_op(n) {
        Some(us) => format!("{us:.0}"),
        None => "-".into(),
    };
    format!(
        "| {name} | {n} | {:.0}/s | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {errors} | {cpu} |",
        n as f64 / elapsed.as_secs_f64().max(1e-9),
        ms(0.5),
        ms(0.9),
        ms(0.99),
        ms(0.999),
        h.max() as f64 / 1000.0
    )
}

/// CPU time (user and system) the members used from [`Cpu::start`] on.
struct Cpu {
    pids: Vec<u32>,
    at_start: Option<u64>,
}

impl Cpu {
    fn start(pids: &[u32]) -> Cpu {
        Cpu {
            pids: pids.to_vec(),
            at_start: cpu_micros(pids),
        }
    }

    /// Microseconds of CPU per operation since the start, over `ops` operations; `None` for
    /// endpoints the bench did not start (or a member that went away).
    fn per_op(&self, ops: usize) -> Option<f64> {
        let used = cpu_micros(&self.pids)?.checked_sub(self.at_start?)?;
        (ops > 0).then(|| used as f64 / ops as f64)
    }
}

/// CPU time the processes `pids` have used, in microseconds, from `/proc/<pid>/stat` (user and
/// system time are fields 14 and 15, in USER_HZ ticks: 100 per second on Linux).
fn cpu_micros(pids: &[u32]) -> Option<u64> {
    if pids.is_empty() {
        return None;
    }
    let mut ticks = 0u64;
    for pid in pids {
        let fields = keelson_node::process::stat_fields(*pid)?;
        // utime and stime are fields 14 and 15.
        ticks += fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    }
    Some(ticks * 10_000)
}

struct Members {
    _dir: tempfile::TempDir,
    children: Vec<Child>,
    endpoints: Vec<String>,
}

impl Members {
    fn pids(&self) -> Vec<u32> {
        self.children.iter().map(Child::id).collect()
    }
}

impl Drop for Members {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(keelson_client::ports::free_port()?)
}

/// Starts `n` members of `program` (keelson's `store` subcommand or etcd) with the same flags.
fn start(program: &Path, subcommand: Option<&str>, n: usize) -> anyhow::Result<Members> {
    let dir = tempfile::tempdir()?;
    let mut ports = Vec::new();
    for _ in 0..n {
        ports.push((free_port()?, free_port()?));
    }
    let initial: Vec<String> = ports
        .iter()
        .enumerate()
        .map(|(i, (_, p))| format!("m{i}=http://127.0.0.1:{p}"))
        .collect();
    let mut children = Vec::new();
    for (i, (c, p)) in ports.iter().enumerate() {
        let mut cmd = Command::new(program);
        if let Some(s) = subcommand {
            cmd.arg(s);
        }
        let child = cmd
            .args(["--name", &format!("m{i}")])
            .arg(format!(
                "--data-dir={}",
                dir.path().join(format!("m{i}")).display()
            ))
            .arg(format!("--listen-client-urls=http://127.0.0.1:{c}"))
            .arg(format!("--advertise-client-urls=http://127.0.0.1:{c}"))
            .arg(format!("--listen-peer-urls=http://127.0.0.1:{p}"))
            .arg(format!(
                "--initial-advertise-peer-urls=http://127.0.0.1:{p}"
            ))
            .arg(format!("--initial-cluster={}", initial.join(",")))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        children.push(child);
    }
    Ok(Members {
        _dir: dir,
        children,
        endpoints: ports
            .iter()
            .map(|(c, _)| format!("http://127.0.0.1:{c}"))
            .collect(),
    })
}

async fn channel(url: &str) -> anyhow::Result<Channel> {
    Ok(Endpoint::from_shared(url.to_string())?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(3))
        .connect()
        .await?)
}

async fn wait_ready(endpoints: &[String]) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    for e in endpoints {
        loop {
            if let Ok(ch) = channel(e).await
                && KvClient::new(ch)
                    .range(RangeRequest {
                        key: b"ready".to_vec(),
                        ..Default::default()
                    })
                    .await
                    .is_ok()
            {
                break;
            }
            if Instant::now() > deadline {
                bail!("{e} not ready in 60 s");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(())
}

/// Runs every phase against `endpoints`; returns the table rows.
async fn load(
    args: &StoreArgs,
    endpoints: &[String],
    pids: &[u32],
    label: &str,
) -> anyhow::Result<Vec<String>> {
    wait_ready(endpoints).await?;
    // One connection per client, spread over the members.
    let mut clients = Vec::new();
    for i in 0..args.clients {
        clients.push(KvClient::new(
            channel(&endpoints[i % endpoints.len()]).await?,
        ));
    }
    let clients = Arc::new(clients);
    let value = Arc::new(vec![b'v'; args.value_size]);
    let mut rows = Vec::new();
    let n = args.clients;
    let keys = Keys::of(args);
    let deadline =
        || (args.duration > 0).then(|| Instant::now() + Duration::from_secs(args.duration));
    let put = move |kv: &mut KvClient<Channel>, k: Vec<u8>, v: Vec<u8>| {
        let mut kv = kv.clone();
        async move {
            kv.put(PutRequest {
                key: k,
                value: v,
                ..Default::default()
            })
            .await
            .is_ok()
        }
    };
    let get = move |kv: &mut KvClient<Channel>, k: Vec<u8>, serializable: bool| {
        let mut kv = kv.clone();
        async move {
            kv.range(RangeRequest {
                key: k,
                serializable,
                ..Default::default()
            })
            .await
            .is_ok()
        }
    };

    let (c, v) = (clients.clone(), value.clone());
    let cpu = Cpu::start(pids);
    let (el, h, err, done) = run_ops_until(args.clients, args.puts, deadline(), move |i| {
        put(&mut c[i % n].clone(), keys.key(i), v.to_vec())
    })
    .await;
    rows.push(store_row(
        &format!("{label}: put ({} B values)", args.value_size),
        done,
        el,
        &h,
        err,
        &cpu,
    ));
    for (serializable, what) in [(false, "linearizable"), (true, "serializable")] {
        let c = clients.clone();
        let cpu = Cpu::start(pids);
        let (el, h, err, done) = run_ops_until(args.clients, args.ranges, deadline(), move |i| {
            get(&mut c[i % n].clone(), keys.key(i * 7919), serializable)
        })
        .await;
        rows.push(store_row(
            &format!("{label}: {what} range (1 key)"),
            done,
            el,
            &h,
            err,
            &cpu,
        ));
    }

    // Compare-and-put: the key's version compared (as the apiserver's optimistic writes
    // compare its revision), a put in one branch and a range in the other.
    let (c, v) = (clients.clone(), value.clone());
    let cpu = Cpu::start(pids);
    let (el, h, err, done) = run_ops_until(args.clients, args.txns, deadline(), move |i| {
        let mut kv = c[i % n].clone();
        let k = keys.key(i);
        let v = v.to_vec();
        async move {
            let compare = Compare {
                key: k.clone(),
                target: compare::CompareTarget::Version as i32,
                result: compare::CompareResult::Greater as i32,
                target_union: Some(compare::TargetUnion::Version(-1)),
                ..Default::default()
            };
            let put = RequestOp {
                request: Some(request_op::Request::RequestPut(PutRequest {
                    key: k.clone(),
                    value: v,
                    ..Default::default()
                })),
            };
            let read = RequestOp {
                request: Some(request_op::Request::RequestRange(RangeRequest {
                    key: k,
                    ..Default::default()
                })),
            };
            kv.txn(TxnRequest {
                compare: vec![compare],
                success: vec![put],
                failure: vec![read],
            })
            .await
            .is_ok()
        }
    })
    .await;
    rows.push(store_row(
        &format!("{label}: txn (compare, put)"),
        done,
        el,
        &h,
        err,
        &cpu,
    ));

    // Mixed: one put for every four linearizable ranges.
    let (c, v) = (clients.clone(), value.clone());
    let cpu = Cpu::start(pids);
    let (el, h, err, done) = run_ops_until(args.clients, args.mixed, deadline(), move |i| {
        let mut kv = c[i % n].clone();
        let v = v.to_vec();
        async move {
            if i % 5 == 0 {
                put(&mut kv, keys.key(i), v).await
            } else {
                get(&mut kv, keys.key(i * 7919), false).await
            }
        }
    })
    .await;
    rows.push(store_row(
        &format!("{label}: mixed (1 put : 4 ranges)"),
        done,
        el,
        &h,
        err,
        &cpu,
    ));

    // Watch fan-out: W watchers on one prefix (spread over the members, 50 streams per
    // connection), then puts; latency from each put request to each watcher's event.
    let sent: Arc<std::sync::Mutex<std::collections::HashMap<Vec<u8>, Instant>>> = Arc::default();
    let mut tasks = Vec::new();
    // 50 streams per connection stays under HTTP/2 stream limits (etcd allows 250, h2 100).
    let mut chans = Vec::new();
    for i in 0..args.watchers.div_ceil(50).max(1) {
        chans.push(channel(&endpoints[i % endpoints.len()]).await?);
    }
    for w in 0..args.watchers {
        let ch = chans[w % chans.len()].clone();
        let sent = sent.clone();
        let want = args.watch_puts;
        tasks.push(tokio::spawn(async move {
            let mut h = new_hist();
            let (tx, rx) = tokio::sync::mpsc::channel(1);
            let create = WatchRequest {
                request_union: Some(watch_request::RequestUnion::CreateRequest(
                    WatchCreateRequest {
                        key: b"watched/".to_vec(),
                        range_end: b"watched0".to_vec(),
                        ..Default::default()
                    },
                )),
            };
            if tx.send(create).await.is_err() {
                return (h, 0);
            }
            let Ok(resp) = WatchClient::new(ch)
                .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
            else {
                return (h, 0);
            };
            let mut stream = resp.into_inner();
            let mut seen = 0;
            while seen < want {
                match tokio::time::timeout(Duration::from_secs(60), stream.next()).await {
                    Ok(Some(Ok(r))) => {
                        for ev in r.events {
                            let key = ev.kv.map(|kv| kv.key).unwrap_or_default();
                            if let Some(t) = sent.lock().ok().and_then(|m| m.get(&key).copied()) {
                                let _ = h.record(t.elapsed().as_micros().max(1) as u64);
                                seen += 1;
                            }
                        }
                    }
                    _ => break,
                }
            }
            drop(tx);
            (h, seen)
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let c = clients.clone();
    let s = sent.clone();
    let start = Instant::now();
    let cpu = Cpu::start(pids);
    let (_, _, perr) = run_ops(args.clients, args.watch_puts, move |i| {
        let mut kv = c[i % n].clone();
        let s = s.clone();
        async move {
            let key = format!("watched/{i:08}").into_bytes();
            if let Ok(mut m) = s.lock() {
                m.insert(key.clone(), Instant::now());
            }
            kv.put(PutRequest {
                key,
                value: b"x".to_vec(),
                ..Default::default()
            })
            .await
            .is_ok()
        }
    })
    .await;
    let mut wh = new_hist();
    let mut delivered = 0;
    for t in tasks {
        if let Ok((h, seen)) = t.await {
            let _ = wh.add(&h);
            delivered += seen;
        }
    }
    let missing = args.watchers * args.watch_puts - delivered + perr;
    rows.push(store_row(
        &format!(
            "{label}: watch delivery ({} watchers x {} puts)",
            args.watchers, args.watch_puts
        ),
        delivered,
        start.elapsed(),
        &wh,
        missing,
        &cpu,
    ));
    Ok(rows)
}

/// Runs `keelson-bench store`.
pub async fn run(args: StoreArgs) -> anyhow::Result<()> {
    let mut rows = vec![
        "| phase | ops | throughput | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | errors | members' CPU µs/op |"
            .to_string(),
        "|---|---|---|---|---|---|---|---|---|---|".to_string(),
    ];
    if !args.endpoints.is_empty() {
        rows.extend(load(&args, &args.endpoints, &[], "given endpoints").await?);
    } else {
        let keelson = match &args.keelson {
            Some(k) => k.clone(),
            None => std::env::current_exe()?.with_file_name("keelson"),
        };
        let members = start(&keelson, Some("store"), args.members)?;
        rows.extend(load(&args, &members.endpoints, &members.pids(), "keelson-store").await?);
        drop(members);
        if args.compare_etcd {
            let etcd = start(Path::new("etcd"), None, args.members)
                .context("--compare-etcd needs etcd (apt-get install etcd-server)")?;
            rows.extend(load(&args, &etcd.endpoints, &etcd.pids(), "etcd").await?);
        }
    }
    println!(
        "members={} clients={} (keelson-bench store)\n",
        args.members, args.clients
    );
    for r in rows {
        println!("{r}");
    }
    Ok(())
}
