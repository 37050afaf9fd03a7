//! Starts a store (keelson-store or etcd) and apiservers with a test PKI, and runs kubectl.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

/// Which store the apiservers run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A one-member keelson-store.
    Keelson,
    /// Debian's etcd 3.4 (`/usr/bin/etcd`, installed by .ci/run).
    Etcd,
}

pub fn free_port() -> u16 {
    keelson_client::ports::free_port().unwrap()
}

/// A cluster CA, a serving certificate for 127.0.0.1 and an admin client certificate.
pub struct Pki {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub admin_cert: PathBuf,
    pub admin_key: PathBuf,
}

fn write(path: &Path, s: &str) -> PathBuf {
    std::fs::write(path, s).unwrap();
    path.to_path_buf()
}

fn ca_params() -> CertificateParams {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "keelson-test-ca");
    ca_params
}

pub fn pki(dir: &Path) -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let ca_params = ca_params();
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    write(&dir.join("ca.key"), &ca_key.serialize_pem());
    let issuer = Issuer::new(ca_params, ca_key);
    let server_key = KeyPair::generate().unwrap();
    let server_params =
        CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
    let server_cert = server_params.signed_by(&server_key, &issuer).unwrap();
    let admin_key = KeyPair::generate().unwrap();
    let mut admin_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    admin_params
        .distinguished_name
        .push(DnType::CommonName, "kubernetes-admin");
    admin_params
        .distinguished_name
        .push(DnType::OrganizationName, "system:masters");
    let admin_cert = admin_params.signed_by(&admin_key, &issuer).unwrap();
    Pki {
        ca: write(&dir.join("ca.crt"), &ca_cert.pem()),
        server_cert: write(&dir.join("apiserver.crt"), &server_cert.pem()),
        server_key: write(&dir.join("apiserver.key"), &server_key.serialize_pem()),
        admin_cert: write(&dir.join("admin.crt"), &admin_cert.pem()),
        admin_key: write(&dir.join("admin.key"), &admin_key.serialize_pem()),
    }
}

pub struct ApiCluster {
    pub dir: tempfile::TempDir,
    pub pki: Pki,
    pub etcd_url: String,
    pub api_ports: Vec<u16>,
    api_args: Vec<String>,
    store: Option<Child>,
    apis: Vec<Option<Child>>,
}

fn wait_port(port: u16, limit: Duration) {
    let deadline = Instant::now() + limit;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "port {port} not listening within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl ApiCluster {
    /// Starts the store and `apiservers` apiservers, and waits until `kubectl get ns default` works.
    pub fn start(backend: Backend, apiservers: usize) -> ApiCluster {
        Self::start_with(backend, apiservers, &[])
    }

    /// Like `start`, with extra apiserver flags.
    pub fn start_with(backend: Backend, apiservers: usize, api_args: &[&str]) -> ApiCluster {
        let dir = tempfile::tempdir().unwrap();
        let pki = pki(dir.path());
        let client = free_port();
        let peer = free_port();
        let etcd_url = format!("http://127.0.0.1:{client}");
        let log = |name: &str| std::fs::File::create(dir.path().join(name)).unwrap();
        let store = match backend {
            Backend::Keelson => Command::new(env!("CARGO_BIN_EXE_keelson"))
                .args(["store", "--name", "s0"])
                .arg(format!("--data-dir={}", dir.path().join("store").display()))
                .arg(format!("--listen-client-urls={etcd_url}"))
                .arg(format!("--advertise-client-urls={etcd_url}"))
                .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer}"))
                .arg(format!(
                    "--initial-advertise-peer-urls=http://127.0.0.1:{peer}"
                ))
                .arg(format!("--initial-cluster=s0=http://127.0.0.1:{peer}"))
                .stdout(Stdio::null())
                .stderr(log("store.log"))
                .spawn()
                .unwrap(),
            Backend::Etcd => Command::new("etcd")
                .args(["--name", "s0"])
                .arg(format!("--data-dir={}", dir.path().join("etcd").display()))
                .arg(format!("--listen-client-urls={etcd_url}"))
                .arg(format!("--advertise-client-urls={etcd_url}"))
                .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer}"))
                .arg(format!(
                    "--initial-advertise-peer-urls=http://127.0.0.1:{peer}"
                ))
                .arg(format!("--initial-cluster=s0=http://127.0.0.1:{peer}"))
                .stdout(Stdio::null())
                .stderr(log("etcd.log"))
                .spawn()
                .expect("etcd must be installed (apt-get install etcd-server; .ci/run does this)"),
        };
        wait_port(client, Duration::from_secs(30));
        Self::with_store(dir, pki, etcd_url, Some(store), apiservers, api_args)
    }

    /// Apiservers on an already running store at `etcd_urls` (comma separated).
    pub fn on_store(etcd_urls: &str, apiservers: usize, api_args: &[&str]) -> ApiCluster {
        let dir = tempfile::tempdir().unwrap();
        let pki = pki(dir.path());
        Self::with_store(dir, pki, etcd_urls.to_string(), None, apiservers, api_args)
    }

    fn with_store(
        dir: tempfile::TempDir,
        pki: Pki,
        etcd_url: String,
        store: Option<Child>,
        apiservers: usize,
        api_args: &[&str],
    ) -> ApiCluster {
        let mut c = ApiCluster {
            dir,
            pki,
            etcd_url,
            api_ports: Vec::new(),
            // No controller-manager makes ServiceAccounts, takes the not-ready taint off nodes
            // or the protection finalizers off claims here: those plugins are off unless a
            // test names them.
            api_args: api_args
                .iter()
                .map(|s| s.to_string())
                .chain(
                    (!api_args.iter().any(|a| a.contains("ServiceAccount")))
                        .then(|| "--disable-admission-plugins=ServiceAccount".to_string()),
                )
                .chain(
                    (!api_args.iter().any(|a| a.contains("TaintNodesByCondition")))
                        .then(|| "--disable-admission-plugins=TaintNodesByCondition".to_string()),
                )
                .chain(
                    (!api_args
                        .iter()
                        .any(|a| a.contains("StorageObjectInUseProtection")))
                    .then(|| {
                        "--disable-admission-plugins=StorageObjectInUseProtection".to_string()
                    }),
                )
                .collect(),
            store,
            apis: Vec::new(),
        };
        for i in 0..apiservers {
            let port = free_port();
            c.api_ports.push(port);
            c.apis.push(None);
            c.start_apiserver(i);
        }
        c.write_kubeconfig("admin.kubeconfig", c.api_ports[0]);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = c.kubectl(&["get", "ns", "default", "-o", "name"]);
            if out.status.success() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "apiserver not ready: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        c
    }

    pub fn start_apiserver(&mut self, i: usize) {
        let port = self.api_ports[i];
        let child = Command::new(env!("CARGO_BIN_EXE_keelson"))
            .arg("apiserver")
            .arg(format!("--etcd-servers={}", self.etcd_url))
            .arg(format!("--secure-port={port}"))
            .arg("--bind-address=127.0.0.1")
            .arg(format!(
                "--tls-cert-file={}",
                self.pki.server_cert.display()
            ))
            .arg(format!(
                "--tls-private-key-file={}",
                self.pki.server_key.display()
            ))
            .arg(format!("--client-ca-file={}", self.pki.ca.display()))
            .arg("--anonymous-auth=false")
            .args(&self.api_args)
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::create(self.dir.path().join(format!("apiserver{i}.log"))).unwrap(),
            )
            .spawn()
            .unwrap();
        self.apis[i] = Some(child);
        wait_port(port, Duration::from_secs(30));
    }

    /// Writes a kubeconfig for the admin user against apiserver `port`; returns its path.
    pub fn write_kubeconfig(&self, name: &str, port: u16) -> PathBuf {
        let kc = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: k\n  cluster:\n    server: https://127.0.0.1:{port}\n    certificate-authority: {}\ncontexts:\n- name: k\n  context: {{cluster: k, user: admin, namespace: default}}\ncurrent-context: k\nusers:\n- name: admin\n  user:\n    client-certificate: {}\n    client-key: {}\n",
            self.pki.ca.display(),
            self.pki.admin_cert.display(),
            self.pki.admin_key.display()
        );
        write(&self.dir.path().join(name), &kc)
    }

    /// A client certificate of the cluster CA for `user` in `groups` (CN and O), and a
    /// kubeconfig with it against the first apiserver; returns the kubeconfig's path.
    pub fn user_kubeconfig(&self, user: &str, groups: &[&str]) -> PathBuf {
        let dir = self.dir.path();
        let ca_key =
            KeyPair::from_pem(&std::fs::read_to_string(dir.join("ca.key")).unwrap()).unwrap();
        let issuer = Issuer::new(ca_params(), ca_key);
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, user);
        for g in groups {
            params.distinguished_name.push(DnType::OrganizationName, *g);
        }
        let cert = params.signed_by(&key, &issuer).unwrap();
        let file = user.replace(':', "_");
        let crt = write(&dir.join(format!("{file}.crt")), &cert.pem());
        let pem = write(&dir.join(format!("{file}.key")), &key.serialize_pem());
        let kc = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: k\n  cluster:\n    server: https://127.0.0.1:{}\n    certificate-authority: {}\ncontexts:\n- name: k\n  context: {{cluster: k, user: u, namespace: default}}\ncurrent-context: k\nusers:\n- name: u\n  user:\n    client-certificate: {}\n    client-key: {}\n",
            self.api_ports[0],
            self.pki.ca.display(),
            crt.display(),
            pem.display()
        );
        write(&dir.join(format!("{file}.kubeconfig")), &kc)
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("admin.kubeconfig")
    }

    fn kubectl_cmd(&self, kubeconfig: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new("kubectl");
        cmd.env("KUBECONFIG", kubeconfig)
            .env("HOME", self.dir.path())
            .arg(format!(
                "--cache-dir={}",
                self.dir.path().join("kube-cache").display()
            ))
            .args(args);
        cmd
    }

    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_cmd(&self.kubeconfig(), args)
            .output()
            .expect("kubectl must be installed")
    }

    pub fn kubectl_with(&self, kubeconfig: &Path, args: &[&str]) -> Output {
        self.kubectl_cmd(kubeconfig, args)
            .output()
            .expect("kubectl must be installed")
    }

    /// Runs kubectl with `input` on stdin.
    pub fn kubectl_stdin(&self, args: &[&str], input: &str) -> Output {
        self.kubectl_with_stdin(&self.kubeconfig(), args, input)
    }

    /// Runs kubectl with `kubeconfig` and `input` on stdin.
    pub fn kubectl_with_stdin(&self, kubeconfig: &Path, args: &[&str], input: &str) -> Output {
        let mut child = self
            .kubectl_cmd(kubeconfig, args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }

    /// Starts kubectl in the background (for `get -w`), stdout to a file.
    pub fn kubectl_spawn(&self, args: &[&str], out: &Path) -> Child {
        self.kubectl_cmd(&self.kubeconfig(), args)
            .stdout(std::fs::File::create(out).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }

    /// Runs kubectl and returns stdout, failing the test with stderr if it fails.
    pub fn ok(&self, args: &[&str]) -> String {
        ok(self.kubectl(args), args)
    }

    /// Runs kubectl expecting failure; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            !out.status.success(),
            "kubectl {args:?} should fail, printed {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// kill -9 of the store this cluster started.
    pub fn kill_store(&mut self) {
        if let Some(mut s) = self.store.take() {
            let _ = s.kill();
            let _ = s.wait();
        }
    }

    /// Stops apiserver `i` as an init system would: SIGTERM, then waits for it to exit.
    #[allow(dead_code)] // used by some of the test binaries that share this file
    pub fn stop_apiserver(&mut self, i: usize) {
        if let Some(mut c) = self.apis[i].take() {
            let pid = nix::unistd::Pid::from_raw(c.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = std::time::Instant::now() + Duration::from_secs(15);
            while c.try_wait().ok().flatten().is_none() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn kill_apiserver(&mut self, i: usize) {
        if let Some(mut c) = self.apis[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The logs, for failure messages.
    pub fn logs(&self) -> String {
        let mut s = String::new();
        for e in std::fs::read_dir(self.dir.path()).unwrap().flatten() {
            if e.path().extension().is_some_and(|x| x == "log") {
                let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(20).collect();
                s.push_str(&format!(
                    "--- {}\n{}\n",
                    e.path().display(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                ));
            }
        }
        s
    }
}

pub fn ok(out: Output, args: &[&str]) -> String {
    assert!(
        out.status.success(),
        "kubectl {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Drop for ApiCluster {
    fn drop(&mut self) {
        for i in 0..self.apis.len() {
            self.kill_apiserver(i);
        }
        if let Some(mut s) = self.store.take() {
            let _ = s.kill();
            let _ = s.wait();
        }
    }
}

/// `kubectl apply -f -` of a manifest (YAML or JSON); fails the test when kubectl does.
#[allow(dead_code)] // used by the node and scheduler test binaries
pub fn apply(c: &ApiCluster, manifest: &str) {
    let out = c.kubectl_stdin(&["apply", "-f", "-"], manifest);
    assert!(
        out.status.success(),
        "kubectl apply failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Waits until `f` returns true.
pub fn eventually(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A kube-rs client from a kubeconfig file.
#[allow(dead_code)] // used by some of the test binaries that share this file
pub async fn kube_client(kubeconfig: &Path) -> kube::Client {
    kube::Client::try_from(kube_config(kubeconfig).await).unwrap()
}

/// The client configuration a kubeconfig file gives.
pub async fn kube_config(kubeconfig: &Path) -> kube::Config {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let kc = kube::config::Kubeconfig::read_from(kubeconfig).unwrap();
    kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
        .await
        .unwrap()
}
