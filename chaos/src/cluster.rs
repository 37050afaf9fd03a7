//! A store cluster on loopback whose members the run can kill, pause and restart: keelson-store
//! (`keelson store`) or, as the control, a real etcd started with the same flags.

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use keelson_etcdpb::etcdserverpb::{
    MemberAddRequest, MemberListRequest, MemberPromoteRequest, MemberRemoveRequest, PutRequest,
    RangeRequest, StatusRequest, cluster_client::ClusterClient, kv_client::KvClient,
    maintenance_client::MaintenanceClient,
};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tonic::transport::{Channel, Endpoint};

use crate::lazyfs::Lazy;
use crate::netns::Network;
use crate::proxy::Proxy;

/// What runs the members.
#[derive(Clone, Debug)]
pub enum Target {
    /// `keelson store` from this binary.
    Keelson(PathBuf),
    /// A real etcd (Debian's etcd-server is 3.4).
    Etcd(PathBuf),
}

impl Target {
    /// `keelson` or `etcd`.
    pub fn name(&self) -> &'static str {
        match self {
            Target::Keelson(_) => "keelson",
            Target::Etcd(_) => "etcd",
        }
    }
}

/// One member.
pub struct Member {
    /// `m0`, `m1`, ...
    pub name: String,
    /// Client URL.
    pub client: String,
    /// Peer URL (advertised: a [`Proxy`] in front of it when the run delays links).
    pub peer: String,
    /// Where it listens for peers (its peer URL unless a proxy is in front).
    listen_peer: String,
    /// Where its failpoints are armed (`GOFAIL_HTTP`, host:port), if the run uses them.
    failpoints: Option<String>,
    /// `GOFAIL_FAILPOINTS` for its next start only.
    arm_at_start: Option<String>,
    dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    paused: bool,
    /// Added to a running cluster (MemberAdd): starts with `--initial-cluster-state existing`.
    existing: bool,
    /// Taken out of the cluster (MemberRemove) and not added back yet.
    pub removed: bool,
    /// Its `--initial-cluster` when not the cluster's first one (a member that grew it).
    initial: Option<String>,
    /// libfaketime's offset file for its wall clock (`+0`, `+2h`, ...).
    clock: PathBuf,
}

/// The members, started in `dir`.
pub struct Cluster {
    target: Target,
    initial: String,
    /// Members in start order.
    pub members: Vec<Member>,
    /// The members' namespaces, when their links can be cut (dropped after the members).
    pub network: Option<Network>,
    /// The lazy filesystems under the members' data directories, when their unsynced writes
    /// can be lost (unmounted after the members are killed), or why there are none.
    lazy: Result<Vec<Lazy>, String>,
    /// `setpriv` is there to tie the members' lives to this process.
    pdeathsig: bool,
    /// libfaketime, preloaded into the members so their wall clocks can be moved, or why
    /// their clocks cannot be.
    faketime: Result<PathBuf, String>,
    /// Clock jumps so far (they go forward and back in turn).
    pub clock_jumps: usize,
    /// The delaying proxies in front of the first members' peer ports, when the run delays
    /// links (empty otherwise).
    proxies: Vec<Proxy>,
    /// The failpoints the `failpoint` fault takes in turn (see [`crate::faults::FAILPOINTS`]).
    pub failpoints: Vec<String>,
    /// How many times the `failpoint` fault has taken one.
    pub failpoints_taken: usize,
    /// Flags added to every member's command line.
    flags: Vec<String>,
}

/// How a cluster is set up for the faults of a run.
#[derive(Clone, Copy, Debug, Default)]
pub struct Setup {
    /// Each member in a network namespace of its own (link faults).
    pub network: bool,
    /// Each member serving its failpoints.
    pub failpoints: bool,
    /// Each member's data directory on a lazy filesystem (lost unsynced writes).
    pub lazy_disks: bool,
    /// Each member under libfaketime (clock jumps).
    pub clocks: bool,
    /// A delaying proxy in front of each member's peer port (link delay; not with
    /// `network`).
    pub delays: bool,
}

/// Where Debian's `faketime` package puts the library.
const FAKETIME: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/faketime/libfaketime.so.1",
];

/// `--snapshot-count` of every member: small, so a member that was down catches up by snapshot.
const SNAPSHOT_COUNT: u64 = 300;

/// Sends one HTTP/1.0 request to `addr` (host:port) and returns the status code and the body.
/// HTTP/1.0: the answer's body comes as it is (never chunked), then the connection ends.
async fn http_request(
    addr: &str,
    method: &str,
    path: &str,
    body: &str,
) -> anyhow::Result<(u16, String)> {
    let answer = http_exchange(addr, method, path, body).await?;
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("{method} http://{addr}{path}: no HTTP status in the answer"))?;
    Ok((status, body.to_string()))
}

/// The whole answer (status line, headers, body) to one HTTP/1.0 request.
async fn http_exchange(addr: &str, method: &str, path: &str, body: &str) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut conn = tokio::net::TcpStream::connect(addr).await?;
        let request = format!(
            "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        conn.write_all(request.as_bytes()).await?;
        let mut answer = String::new();
        conn.read_to_string(&mut answer).await?;
        anyhow::Ok(answer)
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .with_context(|| format!("{method} http://{addr}{path} timed out"))?
}

/// A channel to one endpoint that connects when first used and gives up on a call after
/// `timeout` (none for watch streams, which last).
pub fn channel(url: &str, timeout: Option<Duration>) -> anyhow::Result<Channel> {
    let mut e = Endpoint::from_shared(url.to_string())?.connect_timeout(Duration::from_millis(500));
    if let Some(t) = timeout {
        e = e.timeout(t);
    }
    Ok(e.connect_lazy())
}

impl Cluster {
    /// Starts `n` members with their data and logs under `dir`; with `setup.network`, each in
    /// a network namespace of its own (see [`Network`]), else all on 127.0.0.1; with
    /// `setup.failpoints`, each serving its failpoints (`GOFAIL_HTTP`); with
    /// `setup.lazy_disks`, each with its data directory on a [`Lazy`] filesystem (if one can
    /// be mounted: else [`Cluster::lose_unsynced`] says why not).
    pub fn start(target: Target, n: usize, dir: &Path, setup: Setup) -> anyhow::Result<Cluster> {
        Self::start_with(target, n, dir, setup, &[])
    }

    /// [`Cluster::start`], with `flags` added to every member's command line (etcd's flags:
    /// both stores take them).
    pub fn start_with(
        target: Target,
        n: usize,
        dir: &Path,
        setup: Setup,
        flags: &[&str],
    ) -> anyhow::Result<Cluster> {
        let Setup {
            network,
            failpoints,
            lazy_disks,
            clocks,
            delays,
        } = setup;
        if n == 0 {
            bail!("a cluster needs at least one member");
        }
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let network = if network {
            Some(Network::create(n)?)
        } else {
            None
        };
        let mut members = Vec::new();
        let mut proxies = Vec::new();
        for i in 0..n {
            let port = || keelson_client::ports::free_port().context("choosing a port");
            // In a namespace of its own a member has every port to itself: etcd's defaults.
            let (client, peer) = match &network {
                Some(net) => (format!("{}:2379", net.ip(i)), format!("{}:2380", net.ip(i))),
                None => (
                    format!("127.0.0.1:{}", port()?),
                    format!("127.0.0.1:{}", port()?),
                ),
            };
            let failpoints = match (&network, failpoints) {
                (_, false) => None,
                (Some(net), true) => Some(format!("{}:22381", net.ip(i))),
                (None, true) => Some(format!("127.0.0.1:{}", port()?)),
            };
            // Other members reach it through its proxy; it listens behind.
            let advertised = if delays && network.is_none() {
                let proxy = Proxy::start(peer.parse().context("a member's peer address")?)?;
                let addr = proxy.addr();
                proxies.push(proxy);
                addr.to_string()
            } else {
                peer.clone()
            };
            members.push(Member {
                name: format!("m{i}"),
                client: format!("http://{client}"),
                peer: format!("http://{advertised}"),
                listen_peer: format!("http://{peer}"),
                failpoints,
                arm_at_start: None,
                dir: dir.join(format!("m{i}")),
                log: dir.join(format!("m{i}.log")),
                child: None,
                paused: false,
                existing: false,
                removed: false,
                initial: None,
                clock: dir.join(format!("m{i}.clock")),
            });
        }
        let faketime = match (&target, clocks) {
            (_, false) => Err("the run was started without moving clocks".to_string()),
            (Target::Etcd(_), true) => Err(
                "etcd is Go, which reads the clock without libc: libfaketime cannot move it"
                    .to_string(),
            ),
            (Target::Keelson(_), true) => FAKETIME
                .iter()
                .map(PathBuf::from)
                .find(|p| p.exists())
                .ok_or_else(|| format!("no libfaketime (apt-get install faketime): {FAKETIME:?}")),
        };
        if faketime.is_ok() {
            for m in &members {
                std::fs::write(&m.clock, "+0")
                    .with_context(|| format!("writing {}", m.clock.display()))?;
            }
        }
        let initial = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer))
            .collect::<Vec<_>>()
            .join(",");
        let pdeathsig = Command::new("setpriv")
            .args(["--pdeathsig", "KILL", "--", "true"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        let lazy = if lazy_disks {
            members
                .iter()
                .map(|m| {
                    let backing = m.dir.with_extension("backing");
                    Lazy::mount(&backing, &m.dir).map_err(|e| format!("{e:#}"))
                })
                .collect()
        } else {
            Err("the run was started without lazy disks".into())
        };
        let mut c = Cluster {
            target,
            initial,
            members,
            network,
            lazy,
            pdeathsig,
            faketime,
            clock_jumps: 0,
            proxies,
            failpoints: Vec::new(),
            failpoints_taken: 0,
            flags: flags.iter().map(|f| f.to_string()).collect(),
        };
        for i in 0..n {
            c.start_member(i)?;
        }
        Ok(c)
    }

    /// The client URLs.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client.clone()).collect()
    }

    /// Starts (or restarts, on its old data) member `i`; one that is running is left as it is,
    /// and one that exited unnoticed is started again.
    pub fn start_member(&mut self, i: usize) -> anyhow::Result<()> {
        if let Some(status) = self.exited(i) {
            tracing::warn!(member = %self.members[i].name, %status, "had exited: started again");
        }
        let m = &mut self.members[i];
        if m.child.is_some() {
            return Ok(());
        }
        if m.removed {
            bail!("{} was removed from the cluster: add it back first", m.name);
        }
        let (bin, subcommand) = match &self.target {
            Target::Keelson(bin) => (bin, Some("store")),
            Target::Etcd(bin) => (bin, None),
        };
        // The program, run through `ip netns exec` (which enters the namespace and executes it:
        // same process) and through `setpriv --pdeathsig KILL` where it exists, so members die
        // with this process even when it is killed before it can stop them. (The signal comes
        // when the forking thread ends: drive a cluster from the runtime's threads, never from
        // a `spawn_blocking` one.)
        let mut argv: Vec<std::ffi::OsString> = Vec::new();
        if let Some(net) = &self.network {
            argv.extend(["ip", "netns", "exec", net.namespace(i)].map(Into::into));
        }
        if self.pdeathsig {
            argv.extend(["setpriv", "--pdeathsig", "KILL", "--"].map(Into::into));
        }
        argv.push(bin.into());
        argv.extend(subcommand.map(Into::into));
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..]);
        // Failpoints (in builds that have them: gofail's variables, which etcd reads too).
        match &m.failpoints {
            Some(addr) => cmd.env("GOFAIL_HTTP", addr),
            None => cmd.env_remove("GOFAIL_HTTP"),
        };
        match m.arm_at_start.take() {
            Some(spec) => cmd.env("GOFAIL_FAILPOINTS", spec),
            None => cmd.env_remove("GOFAIL_FAILPOINTS"),
        };
        // The wall clock only (the monotonic one never jumps); libfaketime reads the offset
        // file again once more than a second has passed since it last did.
        if let Ok(lib) = &self.faketime {
            // libfaketime's settings are ours alone: one inherited from this process (say
            // `FAKETIME`, which overrides the offset file) would move the clock on its own.
            for (k, _) in std::env::vars_os() {
                let name = k.to_string_lossy();
                if name.starts_with("FAKETIME")
                    || name.starts_with("DONT_FAKE")
                    || name.starts_with("NO_FAKE")
                {
                    cmd.env_remove(k);
                }
            }
            cmd.env("LD_PRELOAD", lib)
                .env("FAKETIME_TIMESTAMP_FILE", &m.clock)
                .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
                .env("FAKETIME_CACHE_DURATION", "1");
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&m.log)
            .with_context(|| format!("opening {}", m.log.display()))?;
        if let Some(p) = self.proxies.get(i) {
            p.reopen()?;
        }
        let child = cmd
            .args(["--name", &m.name])
            .arg(format!("--data-dir={}", m.dir.display()))
            .arg(format!("--listen-client-urls={}", m.client))
            .arg(format!("--advertise-client-urls={}", m.client))
            .arg(format!("--listen-peer-urls={}", m.listen_peer))
            .arg(format!("--initial-advertise-peer-urls={}", m.peer))
            .arg(format!(
                "--initial-cluster={}",
                m.initial.as_deref().unwrap_or(&self.initial)
            ))
            .arg(format!(
                "--initial-cluster-state={}",
                if m.existing { "existing" } else { "new" }
            ))
            .arg(format!("--snapshot-count={SNAPSHOT_COUNT}"))
            .args(&self.flags)
            // Members log warnings unless KEELSON_CHAOS_MEMBER_LOG asks for more.
            .env(
                "RUST_LOG",
                std::env::var("KEELSON_CHAOS_MEMBER_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // A process group of its own: a Ctrl-C in the terminal reaches the run alone,
            // which ends early, checks what it recorded and then stops its members
            // (members that had taken the SIGINT too were reported exited with no fault).
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {}", self.target.name()))?;
        m.child = Some(child);
        m.paused = false;
        Ok(())
    }

    /// Starts member `i` with failpoints armed from the start (`GOFAIL_FAILPOINTS`, `spec`
    /// as `name=term;...`); a later start has none.
    pub fn start_member_armed(&mut self, i: usize, spec: &str) -> anyhow::Result<()> {
        self.members[i].arm_at_start = Some(spec.to_string());
        let started = self.start_member(i);
        self.members[i].arm_at_start = None;
        started
    }

    /// How member `i`'s process ended, if it has (it then counts as down, to be restarted).
    pub fn exited(&mut self, i: usize) -> Option<std::process::ExitStatus> {
        let m = &mut self.members[i];
        let status = m.child.as_mut()?.try_wait().ok()??;
        let pid = m.child.take().map(|c| c.id());
        m.paused = false;
        // Reaped already: a PID reused since is not likely this soon, and libfaketime's files
        // of a process that panicked would stay otherwise.
        if let Some(pid) = pid {
            self.forget_process(i, pid);
        }
        Some(status)
    }

    /// Member `i`'s log (stdout and stderr of every start), as far as it can be read.
    pub fn member_log(&self, i: usize) -> String {
        std::fs::read(&self.members[i].log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Sends `method path` with `body` to member `i`'s failpoint server (`GOFAIL_HTTP`);
    /// returns the status code and the body.
    pub async fn failpoint_request(
        &self,
        i: usize,
        method: &str,
        path: &str,
        body: &str,
    ) -> anyhow::Result<(u16, String)> {
        let m = &self.members[i];
        let addr = m
            .failpoints
            .as_deref()
            .with_context(|| format!("{} serves no failpoints in this run", m.name))?;
        http_request(addr, method, path, body).await
    }

    /// Whether the links between members can be delayed, or why not.
    pub fn can_delay(&self) -> Result<(), String> {
        if self.proxies.is_empty() {
            Err(
                "the run was started without proxies between the members (they are not \
                 made with link faults, whose namespaces give each member its own address)"
                    .into(),
            )
        } else {
            Ok(())
        }
    }

    /// Delays everything sent to the first members (and their answers) by `delay` each way;
    /// zero: no delay.
    pub fn set_delay(&self, delay: Duration) {
        for p in &self.proxies {
            p.set_delay(delay);
        }
    }

    /// Whether the members' wall clocks can be moved, or why not.
    pub fn can_jump_clocks(&self) -> Result<(), String> {
        self.faketime.as_ref().map(|_| ()).map_err(|e| e.clone())
    }

    /// Sets member `i`'s wall clock `offset` from the real one (libfaketime's syntax: `+0`,
    /// `+2h`, `-2h`); the member sees it within a second.
    pub fn set_clock(&self, i: usize, offset: &str) -> anyhow::Result<()> {
        self.can_jump_clocks().map_err(anyhow::Error::msg)?;
        let m = &self.members[i];
        std::fs::write(&m.clock, offset).with_context(|| format!("writing {}", m.clock.display()))
    }

    /// Moves member `i`'s wall clock two hours, forward and back in turn; says which way.
    pub fn jump_clock(&mut self, i: usize) -> anyhow::Result<&'static str> {
        let offset = if self.clock_jumps.is_multiple_of(2) {
            "+2h"
        } else {
            "-2h"
        };
        self.set_clock(i, offset)?;
        self.clock_jumps += 1;
        Ok(offset)
    }

    /// How far member `i`'s wall clock is from this process's, in seconds, as the Date header
    /// of its `/health` answer shows it (once libfaketime has read the new offset).
    pub async fn clock_offset(&self, i: usize) -> anyhow::Result<i64> {
        let addr = self.members[i]
            .client
            .trim_start_matches("http://")
            .to_string();
        // libfaketime reads the offset file again only after more than a second (in whole
        // seconds) since it last did: up to about two seconds after the change.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let answer = http_exchange(&addr, "GET", "/health", "").await?;
            let date = answer
                .lines()
                .take_while(|l| !l.is_empty())
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("date")
                        .then(|| value.trim().to_string())
                })
                .context("no Date header in the answer")?;
            let theirs =
                httpdate::parse_http_date(&date).with_context(|| format!("Date: {date}"))?;
            let ours = std::time::SystemTime::now();
            let off = match theirs.duration_since(ours) {
                Ok(ahead) => ahead.as_secs() as i64,
                Err(behind) => -(behind.duration().as_secs() as i64),
            };
            if off.abs() >= 60 || Instant::now() >= deadline {
                return Ok(off);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Whether the members' unsynced writes can be lost, or why not.
    pub fn can_lose_unsynced(&self) -> Result<(), String> {
        self.lazy.as_ref().map(|_| ()).map_err(|e| e.clone())
    }

    /// Loses what the stopped members `which` had not fsynced (their data directories go back
    /// to their last syncs); returns the files changed (`member/path`) with the bytes each
    /// lost, or why it cannot.
    pub fn lose_unsynced(&mut self, which: &[usize]) -> Result<Vec<(String, u64)>, String> {
        let lazy = self.lazy.as_ref().map_err(|e| e.clone())?;
        let mut lost = Vec::new();
        for &i in which {
            let m = &self.members[i];
            if m.child.is_some() {
                return Err(format!("{} is running", m.name));
            }
            // A member that grew the cluster has no lazy disk.
            let Some(disk) = lazy.get(i) else {
                continue;
            };
            for (path, bytes) in disk.lose_unsynced().map_err(|e| format!("{e:#}"))? {
                lost.push((format!("{}/{}", m.name, path.display()), bytes));
            }
        }
        Ok(lost)
    }

    /// kill -9 of member `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            // Before the wait: until it is reaped, the PID is not another process's.
            self.forget_process(i, c.id());
            let _ = c.wait();
        }
        self.members[i].paused = false;
    }

    /// What member `i`'s process `pid` leaves behind when it dies without exiting cleanly:
    /// libfaketime's semaphore and shared memory segment (named by the PID; it removes them
    /// only at a clean exit), and its proxy's listener (peers must find the port refusing).
    fn forget_process(&self, i: usize, pid: u32) {
        if self.faketime.is_ok() {
            for f in [
                format!("/dev/shm/faketime_shm_{pid}"),
                format!("/dev/shm/sem.faketime_sem_{pid}"),
            ] {
                let _ = std::fs::remove_file(f);
            }
        }
        if let Some(p) = self.proxies.get(i) {
            p.close();
        }
    }

    /// SIGSTOP (`pause`) or SIGCONT of member `i`.
    pub fn pause(&mut self, i: usize, pause: bool) -> anyhow::Result<()> {
        let m = &mut self.members[i];
        let Some(c) = &m.child else {
            bail!("{} is not running", m.name);
        };
        let signal = if pause {
            Signal::SIGSTOP
        } else {
            Signal::SIGCONT
        };
        kill(Pid::from_raw(c.id() as i32), signal)?;
        m.paused = pause;
        Ok(())
    }

    /// Members whose process ended though no fault holds them down (between faults, or after
    /// the last): each is started again (not waited for), so that the next fault is not
    /// blamed for it. Says which, how each ended, and whether it started again.
    pub fn restart_exited(&mut self) -> Vec<String> {
        let mut found = Vec::new();
        for i in 0..self.members.len() {
            if self.members[i].removed {
                continue;
            }
            let Some(status) = self.exited(i) else {
                continue;
            };
            let name = self.members[i].name.clone();
            let log = self.members[i].log.display().to_string();
            found.push(match self.start_member(i) {
                Ok(()) => format!("{name} had exited ({status}) with no fault on it (log: {log}); started again"),
                Err(e) => format!(
                    "{name} had exited ({status}) with no fault on it (log: {log}); not started again: {e:#}"
                ),
            });
        }
        found
    }

    /// Best effort, after a fault could not be injected or healed: every member running and
    /// resumed, every link restored, no delay, every clock right. Says which members it found
    /// exited, and whether they started again.
    pub fn restore_all(&mut self) -> Vec<String> {
        self.set_delay(Duration::ZERO);
        let mut found = Vec::new();
        for i in 0..self.members.len() {
            let exited = self.exited(i);
            if self.faketime.is_ok() {
                let _ = self.set_clock(i, "+0");
            }
            if self.members[i].paused {
                let _ = self.pause(i, false);
            }
            // A removed member stays out: adding it back needs the cluster's API.
            if !self.members[i].removed {
                let started = self.start_member(i);
                if let Some(status) = exited {
                    let name = &self.members[i].name;
                    found.push(match started {
                        Ok(()) => format!("{name} had exited ({status}): restarted"),
                        Err(e) => format!("{name} had exited ({status}): not restarted: {e:#}"),
                    });
                }
            }
            if let Some(net) = &self.network {
                let _ = net.heal(i);
            }
        }
        found
    }

    /// Takes member `i` out of the cluster (MemberRemove through another live member), then
    /// kills it and deletes its data: it can only come back as a new member.
    pub async fn remove_member(&mut self, i: usize) -> anyhow::Result<()> {
        let (via, list) = self.cluster_client(i).await?;
        let peer = &self.members[i].peer;
        let id = list
            .iter()
            .find(|m| m.peer_ur_ls.contains(peer))
            .map(|m| m.id)
            .with_context(|| format!("{} is not in the member list", self.members[i].name))?;
        retry_cluster_call(|| {
            let mut c = via.clone();
            async move {
                match c.member_remove(MemberRemoveRequest { id }).await {
                    // An earlier try went through though its answer was lost.
                    Err(e) if e.code() == tonic::Code::NotFound => {
                        Ok(tonic::Response::new(Default::default()))
                    }
                    r => r,
                }
            }
        })
        .await
        .with_context(|| format!("removing {}", self.members[i].name))?;
        self.kill(i);
        let m = &mut self.members[i];
        m.removed = true;
        // What is in the directory: it may be a mount point.
        let entries =
            std::fs::read_dir(&m.dir).with_context(|| format!("reading {}", m.dir.display()))?;
        for e in entries {
            let path = e?.path();
            let removed = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            removed.with_context(|| format!("deleting {}", path.display()))?;
        }
        Ok(())
    }

    /// Adds member `i` (back) to the cluster (MemberAdd with its peer URL, through a live
    /// member) and starts it empty: it catches up from the others.
    pub async fn add_member(&mut self, i: usize) -> anyhow::Result<()> {
        let (via, _) = self.cluster_client(i).await?;
        let peer = self.members[i].peer.clone();
        retry_cluster_call(|| {
            let mut c = via.clone();
            let peer_ur_ls = vec![peer.clone()];
            async move {
                let r = c
                    .member_add(MemberAddRequest {
                        peer_ur_ls,
                        is_learner: false,
                    })
                    .await;
                match r {
                    // An earlier try went through though its answer was lost.
                    Err(e)
                        if e.code() == tonic::Code::FailedPrecondition
                            && e.message().contains("already exists") =>
                    {
                        Ok(tonic::Response::new(Default::default()))
                    }
                    r => r,
                }
            }
        })
        .await
        .with_context(|| format!("adding {} back", self.members[i].name))?;
        let m = &mut self.members[i];
        m.removed = false;
        m.existing = true;
        self.start_member(i)?;
        // A retried MemberAdd whose first try went half through (keelson adds a learner, then
        // makes it a voter) may leave a learner: promote it once it has caught up.
        if let Some(m) = self.listed(&via, i).await?
            && m.is_learner
        {
            let id = m.id;
            retry_cluster_call(|| {
                let mut c = via.clone();
                async move { c.member_promote(MemberPromoteRequest { id }).await }
            })
            .await
            .with_context(|| format!("promoting {}", self.members[i].name))?;
        }
        Ok(())
    }

    /// Grows the cluster by a new member (one not there before, with ports of its own): added
    /// with MemberAdd through a live member and started empty, with `--initial-cluster` the
    /// members now in the cluster and itself; it catches up from the others. Returns its index.
    /// Not with namespaces (one per member, made at the start).
    pub async fn grow(&mut self) -> anyhow::Result<usize> {
        if self.network.is_some() {
            bail!("the members run in namespaces made at the start: the cluster cannot grow");
        }
        let i = self.members.len();
        let port = || keelson_client::ports::free_port().context("choosing a port");
        let failpoints = match self.members[0].failpoints {
            Some(_) => Some(format!("127.0.0.1:{}", port()?)),
            None => None,
        };
        let dir = self.members[0].dir.with_file_name(format!("m{i}"));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let peer = format!("http://127.0.0.1:{}", port()?);
        let mut m = Member {
            name: format!("m{i}"),
            client: format!("http://127.0.0.1:{}", port()?),
            listen_peer: peer.clone(),
            peer,
            failpoints,
            arm_at_start: None,
            log: dir.with_extension("log"),
            clock: dir.with_extension("clock"),
            dir,
            child: None,
            paused: false,
            existing: true,
            // Until MemberAdd has taken it in.
            removed: true,
            initial: None,
        };
        if self.faketime.is_ok() {
            std::fs::write(&m.clock, "+0")
                .with_context(|| format!("writing {}", m.clock.display()))?;
        }
        let initial: Vec<String> = self
            .in_cluster()
            .into_iter()
            .map(|j| format!("{}={}", self.members[j].name, self.members[j].peer))
            .chain([format!("{}={}", m.name, m.peer)])
            .collect();
        m.initial = Some(initial.join(","));
        self.members.push(m);
        self.add_member(i).await?;
        Ok(i)
    }

    /// Members in the cluster (not removed), running or not.
    pub fn in_cluster(&self) -> Vec<usize> {
        (0..self.members.len())
            .filter(|&i| !self.members[i].removed)
            .collect()
    }

    /// Member `i`'s entry in the member list (found by its peer URL), asked through `via`.
    async fn listed(
        &self,
        via: &ClusterClient<Channel>,
        i: usize,
    ) -> anyhow::Result<Option<keelson_etcdpb::etcdserverpb::Member>> {
        let list = retry_cluster_call(|| {
            let mut c = via.clone();
            async move { c.member_list(MemberListRequest::default()).await }
        })
        .await?;
        Ok(list
            .members
            .into_iter()
            .find(|m| m.peer_ur_ls.contains(&self.members[i].peer)))
    }

    /// A Cluster API client on a live member other than `i` that answers, with the member list
    /// it answered: each is asked in turn, for up to 10 s. A member just added back may not
    /// serve yet (etcd's does not until it has joined), and asking only the first one timed
    /// out.
    async fn cluster_client(
        &self,
        i: usize,
    ) -> anyhow::Result<(
        ClusterClient<Channel>,
        Vec<keelson_etcdpb::etcdserverpb::Member>,
    )> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut last = None;
            for j in self.live().into_iter().filter(|&j| j != i) {
                let mut c = ClusterClient::new(channel(
                    &self.members[j].client,
                    Some(Duration::from_secs(5)),
                )?);
                let probe = Duration::from_secs(2);
                match tokio::time::timeout(probe, c.member_list(MemberListRequest::default())).await
                {
                    Ok(Ok(list)) => return Ok((c, list.into_inner().members)),
                    Ok(Err(e)) => last = Some(format!("{}: {}", self.members[j].name, e.message())),
                    Err(_) => {
                        last = Some(format!(
                            "{}: no answer within {probe:?}",
                            self.members[j].name
                        ))
                    }
                }
            }
            let Some(last) = last else {
                bail!("no other live member");
            };
            if Instant::now() >= deadline {
                bail!("no other live member answered a member list (last: {last})");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Members that run and are not paused.
    pub fn live(&self) -> Vec<usize> {
        (0..self.members.len())
            .filter(|&i| self.members[i].child.is_some() && !self.members[i].paused)
            .collect()
    }

    /// The member the live members agree leads, if any.
    pub async fn leader(&self) -> Option<usize> {
        let mut ids = Vec::new();
        let mut leader = None;
        for &i in &self.live() {
            let Ok(ch) = channel(&self.members[i].client, Some(Duration::from_millis(500))) else {
                continue;
            };
            let Ok(s) = MaintenanceClient::new(ch).status(StatusRequest {}).await else {
                continue;
            };
            let s = s.into_inner();
            let id = s.header.map(|h| h.member_id).unwrap_or(0);
            ids.push((id, i));
            if s.leader != 0 {
                leader = Some(s.leader);
            }
        }
        let leader = leader?;
        ids.into_iter()
            .find(|(id, _)| *id == leader)
            .map(|(_, i)| i)
    }

    /// Log entries the leader must move past a member that stopped, so that what the member
    /// misses is no longer in the leader's log and it has to install a snapshot. keelson-store
    /// snapshots every `--snapshot-count` entries and keeps as many behind the snapshot; etcd
    /// 3.4 keeps 5,000 (`SnapshotCatchUpEntries`).
    pub fn entries_past_the_log(&self) -> u64 {
        let kept = match self.target {
            Target::Keelson(_) => SNAPSHOT_COUNT,
            Target::Etcd(_) => 5000,
        };
        kept + 2 * SNAPSHOT_COUNT + 100
    }

    /// Member `i`'s last Raft log index (Status).
    pub async fn raft_index(&self, i: usize) -> anyhow::Result<u64> {
        let ch = channel(&self.members[i].client, Some(Duration::from_secs(2)))?;
        let s = MaintenanceClient::new(ch).status(StatusRequest {}).await?;
        Ok(s.into_inner().raft_index)
    }

    /// Writes filler keys (under `/chaos-filler/`, outside the traffic's prefix) through the
    /// live members, 8 at a time, until member `measured`'s log has grown by `entries`, or
    /// member `until_exit` (if given) has exited, or `limit` has passed, or 200,000 were
    /// written. Returns how many were written, how far the log grew and how `until_exit`
    /// ended (if it did).
    pub async fn fill(
        &mut self,
        measured: usize,
        entries: u64,
        limit: Duration,
        until_exit: Option<usize>,
    ) -> anyhow::Result<(usize, u64, Option<std::process::ExitStatus>)> {
        const MOST: usize = 200_000;
        let start = self.raft_index(measured).await?;
        let stop = tokio_util::sync::CancellationToken::new();
        let written = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let live = self.live();
        if live.is_empty() {
            bail!("no live member to write through");
        }
        let mut writers = Vec::new();
        for w in 0..8 {
            let ch = channel(
                &self.members[live[w % live.len()]].client,
                Some(Duration::from_secs(2)),
            )?;
            let (stop, written) = (stop.clone(), written.clone());
            writers.push(tokio::spawn(async move {
                let mut kv = KvClient::new(ch);
                let mut n = 0;
                while !stop.is_cancelled() {
                    let key = format!("/chaos-filler/{w}/{n}").into_bytes();
                    n += 1;
                    let put = kv.put(PutRequest {
                        key,
                        value: b"filler".to_vec(),
                        ..Default::default()
                    });
                    if put.await.is_err() {
                        // No member answers for now (an election): no busy loop.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    } else if written.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1 >= MOST
                    {
                        break;
                    }
                }
            }));
        }
        let deadline = Instant::now() + limit;
        let mut grown = 0;
        let mut exit = None;
        while Instant::now() < deadline && written.load(std::sync::atomic::Ordering::Relaxed) < MOST
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if let Some(v) = until_exit {
                exit = self.exited(v);
                if exit.is_some() {
                    break;
                }
            }
            if let Ok(now) = self.raft_index(measured).await {
                grown = now.saturating_sub(start);
                if grown >= entries {
                    break;
                }
            }
        }
        stop.cancel();
        for w in writers {
            let _ = w.await;
        }
        Ok((
            written.load(std::sync::atomic::Ordering::Relaxed),
            grown,
            exit,
        ))
    }

    /// Snapshots member `i` has received, from its `etcd_network_snapshot_receive_success`
    /// counter (summed over etcd's `From` label).
    pub async fn snapshots_received(&self, i: usize) -> anyhow::Result<u64> {
        let addr = self.members[i]
            .client
            .strip_prefix("http://")
            .context("a plain-HTTP client URL")?;
        let (_, body) = http_request(addr, "GET", "/metrics", "").await?;
        Ok(body
            .lines()
            .filter(|l| l.starts_with("etcd_network_snapshot_receive_success"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64)
    }

    /// How long one linearizable read on member `i` takes (its read index is confirmed with a
    /// quorum, so it crosses the links between members).
    pub async fn timed_read(&self, i: usize) -> anyhow::Result<Duration> {
        let ch = channel(&self.members[i].client, Some(Duration::from_secs(5)))?;
        let started = Instant::now();
        KvClient::new(ch)
            .range(RangeRequest {
                key: b"health".to_vec(),
                ..Default::default()
            })
            .await?;
        Ok(started.elapsed())
    }

    /// Waits until every live member serves a linearizable read (none live: an error).
    pub async fn wait_healthy(&self, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        if self.live().is_empty() {
            bail!("no member is running");
        }
        loop {
            let mut ok = true;
            for &i in &self.live() {
                let ch = channel(&self.members[i].client, Some(Duration::from_secs(1)))?;
                let read = KvClient::new(ch)
                    .range(RangeRequest {
                        key: b"health".to_vec(),
                        ..Default::default()
                    })
                    .await;
                ok &= read.is_ok();
            }
            if ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the {} cluster did not become healthy within {limit:?} (logs: {})",
                    self.target.name(),
                    self.members
                        .iter()
                        .map(|m| m.log.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A membership change, tried again for up to 20 s while the cluster refuses it for now
/// (a change still in progress, an election, a member not yet in sync; the strict
/// reconfiguration check refuses adds until every member has answered for 5 s, which on a
/// loaded machine took more than 10 s once).
async fn retry_cluster_call<T, F, Fut>(mut call: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match call().await {
            Ok(r) => return Ok(r.into_inner()),
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(error = %e.message(), "membership change refused; trying again");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => bail!("{}", e.message()),
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}
