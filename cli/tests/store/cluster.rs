//! Starts real `keelson store` processes on loopback for tests, and drives etcdctl.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub struct Member {
    pub name: String,
    pub client: String,
    pub peer: String,
    pub dir: PathBuf,
    pub child: Option<Child>,
    /// Environment variables set for this member alone.
    pub env: Vec<(String, String)>,
}

pub struct Cluster {
    pub members: Vec<Member>,
    pub initial: String,
    /// Flags given to every member besides the cluster's own.
    pub extra: Vec<String>,
    /// Environment variables set for every member.
    pub env: Vec<(String, String)>,
    _dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    keelson_client::ports::free_port().unwrap()
}

impl Cluster {
    /// Starts `n` members and waits until they serve a linearizable read.
    pub fn start(n: usize) -> Cluster {
        Cluster::start_with(n, &[])
    }

    /// Like [`Cluster::start`], with `extra` flags for every member.
    pub fn start_with(n: usize, extra: &[&str]) -> Cluster {
        Cluster::start_with_env(n, extra, &[])
    }

    /// Like [`Cluster::start_with`], with `env` set for every member.
    pub fn start_with_env(n: usize, extra: &[&str], env: &[(&str, &str)]) -> Cluster {
        Cluster::start_each(n, extra, env, |_| Vec::new())
    }

    /// Like [`Cluster::start_with_env`], with `member_env(i)` set for member `i` alone.
    pub fn start_each(
        n: usize,
        extra: &[&str],
        env: &[(&str, &str)],
        member_env: impl Fn(usize) -> Vec<(String, String)>,
    ) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let mut members = Vec::new();
        for i in 0..n {
            members.push(Member {
                name: format!("m{i}"),
                client: format!("http://127.0.0.1:{}", free_port()),
                peer: format!("http://127.0.0.1:{}", free_port()),
                dir: dir.path().join(format!("m{i}")),
                child: None,
                env: member_env(i),
            });
        }
        let initial = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer))
            .collect::<Vec<_>>()
            .join(",");
        let mut c = Cluster {
            members,
            initial,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            _dir: dir,
        };
        for i in 0..n {
            c.start_member(i);
        }
        c.wait_ready(Duration::from_secs(30));
        c
    }

    pub fn start_member(&mut self, i: usize) {
        let initial = self.initial.clone();
        self.start_member_in(i, &initial, "new");
    }

    /// A member not started yet, with its own ports: for MemberAdd.
    pub fn new_member(&mut self, name: &str) -> usize {
        let dir = self.members[0].dir.with_file_name(name);
        self.members.push(Member {
            name: name.to_string(),
            client: format!("http://127.0.0.1:{}", free_port()),
            peer: format!("http://127.0.0.1:{}", free_port()),
            dir,
            child: None,
            env: Vec::new(),
        });
        self.members.len() - 1
    }

    /// Starts member `i` with its stderr piped (for a start expected to fail).
    pub fn start_member_with_stderr(&mut self, i: usize) {
        let initial = self.initial.clone();
        self.spawn(i, &initial, "new", Stdio::piped());
    }

    /// Starts member `i` with `--initial-cluster=initial --initial-cluster-state=state`.
    pub fn start_member_in(&mut self, i: usize, initial: &str, state: &str) {
        self.spawn(i, initial, state, Stdio::inherit());
    }

    fn spawn(&mut self, i: usize, initial: &str, state: &str, stderr: Stdio) {
        let m = &mut self.members[i];
        let child = Command::new(env!("CARGO_BIN_EXE_keelson"))
            .arg("store")
            .args(["--name", &m.name])
            .arg(format!("--data-dir={}", m.dir.display()))
            .arg(format!("--listen-client-urls={}", m.client))
            .arg(format!("--advertise-client-urls={}", m.client))
            .arg(format!("--listen-peer-urls={}", m.peer))
            .arg(format!("--initial-advertise-peer-urls={}", m.peer))
            .arg(format!("--initial-cluster={initial}"))
            .arg(format!("--initial-cluster-state={state}"))
            .arg("--snapshot-count=200")
            .args(&self.extra)
            .env("RUST_LOG", "warn")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .envs(m.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start keelson store");
        m.child = Some(child);
    }

    /// kill -9.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The index of the member that leads now, as the members' Status says.
    pub async fn leader_index(&self) -> usize {
        use keelson_etcdpb::etcdserverpb::StatusRequest;
        use keelson_etcdpb::etcdserverpb::maintenance_client::MaintenanceClient;
        for (i, m) in self.members.iter().enumerate() {
            let mut status = MaintenanceClient::connect(m.client.clone()).await.unwrap();
            let s = status.status(StatusRequest {}).await.unwrap().into_inner();
            if s.leader == s.header.unwrap().member_id {
                return i;
            }
        }
        panic!("no member leads");
    }

    pub fn wait_ready(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let ok = self
                .members
                .iter()
                .filter(|m| m.child.is_some())
                .all(|m| etcdctl(&m.client, &["get", "ready-probe"]).status.success());
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "cluster not ready within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
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

/// Arms (`PUT` with `term`) or disarms (`DELETE`) a member's `raftBeforeApply` failpoint
/// over its `GOFAIL_HTTP` address.
pub fn before_apply(gofail: &str, method: &str, term: &str) {
    let out = Command::new("curl")
        .args(["-sS", "-f", "-X", method, "--data-binary", term])
        .arg(format!("http://{gofail}/raftBeforeApply"))
        .output()
        .expect("curl must be installed (.ci/run installs it)");
    assert!(
        out.status.success(),
        "{method} raftBeforeApply: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// How often a member's armed `raftBeforeApply` failpoint was hit (`None` if it cannot say).
pub fn before_apply_hits(gofail: &str) -> Option<u64> {
    let out = Command::new("curl")
        .args(["-sS", "-f"])
        .arg(format!("http://{gofail}/raftBeforeApply/count"))
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// Runs etcdctl (v3 API) against `endpoints`.
pub fn etcdctl(endpoints: &str, args: &[&str]) -> Output {
    etcdctl_stdin(endpoints, args, None)
}

pub fn etcdctl_stdin(endpoints: &str, args: &[&str], stdin: Option<&str>) -> Output {
    use std::io::Write;
    let mut cmd = Command::new("etcdctl");
    cmd.env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoints}"))
        .arg("--command-timeout=10s")
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .expect("etcdctl must be installed (apt-get install etcd-client; .ci/run does this)");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    child.wait_with_output().unwrap()
}

pub fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "etcdctl failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}
