//! `keelson up` end to end: the README's first command starts the whole cluster behind one
//! address; kubectl works with the written kubeconfig; the seed walkthrough runs (Deployments,
//! Services by DNS name, NodePorts, logs); Secrets are encrypted through KMS v2 on a TLS store;
//! kill -9 of an apiserver, the store leader, the leading controller-manager and the leading
//! scheduler, one at a time, leaves kubectl working, scale-ups completing and nothing lost;
//! Ctrl-C stops every process. `up --detach`, `keelson status` and `keelson down`.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn children_of(pid: u32) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let status = std::fs::read_to_string(format!("/proc/{p}/status")).unwrap_or_default();
        let ppid = status
            .lines()
            .find_map(|l| l.strip_prefix("PPid:"))
            .map(|v| v.trim().parse::<u32>().unwrap_or(0));
        if ppid == Some(pid) {
            let cmd = std::fs::read_to_string(format!("/proc/{p}/cmdline"))
                .unwrap_or_default()
                .replace('\0', " ");
            out.push((p, cmd));
        }
    }
    out
}

/// Whether process `pid` still runs `cmd` (as [`children_of`] gave it: a PID reused since
/// runs another command).
fn runs(pid: u32, cmd: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| c.replace('\0', " ") == cmd)
}

/// Stops the `keelson up --detach` cluster of a data directory when dropped.
struct Down(String);

impl Drop for Down {
    fn drop(&mut self) {
        let _ = Command::new(env!("CARGO_BIN_EXE_keelson"))
            .args(["down", "--data-dir", &self.0])
            .output();
    }
}

fn kubectl(
    kubeconfig: &std::path::Path,
    home: &std::path::Path,
    args: &[&str],
) -> std::process::Output {
    Command::new("kubectl")
        .env("KUBECONFIG", kubeconfig)
        .env("HOME", home)
        .args(args)
        .output()
        .expect("kubectl must be installed")
}

/// The last lines of each component's log (in `<data>/logs/`).
fn component_logs(data: &std::path::Path) -> String {
    let mut out = String::new();
    for e in std::fs::read_dir(data.join("logs"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
        // Backtrace frames (RUST_BACKTRACE is set in CI) would push the error itself out.
        let frame = |l: &str| {
            let t = l.trim_start();
            t.starts_with("at ")
                || t.split_once(": ")
                    .is_some_and(|(n, _)| n.parse::<u32>().is_ok())
        };
        let tail: Vec<&str> = text.lines().rev().filter(|l| !frame(l)).take(30).collect();
        out.push_str(&format!("--- {} (last lines) ---\n", e.path().display()));
        for l in tail.iter().rev() {
            out.push_str(l);
            out.push('\n');
        }
    }
    out
}

/// Stops `keelson up` (Ctrl-C, then kill -9 of it and its children) if the test fails, so a
/// failure leaves no cluster behind.
struct StopOnPanic(u32, std::path::PathBuf);

impl Drop for StopOnPanic {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let log = std::fs::read_to_string(&self.1).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(150).collect();
        eprintln!("--- keelson up (last lines) ---");
        for l in tail.iter().rev() {
            eprintln!("{l}");
        }
        eprint!("{}", component_logs(&self.1.with_file_name("data")));
        let children: Vec<u32> = children_of(self.0).iter().map(|(p, _)| *p).collect();
        let pid = nix::unistd::Pid::from_raw(self.0 as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
        for _ in 0..300 {
            if !std::path::Path::new(&format!("/proc/{}", self.0)).exists()
                || std::fs::read_to_string(format!("/proc/{}/status", self.0))
                    .unwrap_or_default()
                    .contains("State:\tZ")
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        for p in children.into_iter().chain([self.0]) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// `kubectl run` of a busybox pod running `script`; waits until it has succeeded and returns
/// its log.
fn run_to_completion(
    kc: &std::path::Path,
    home: &std::path::Path,
    name: &str,
    script: &str,
) -> String {
    let out = kubectl(
        kc,
        home,
        &[
            "run",
            name,
            "--image=busybox",
            "--restart=Never",
            "--command",
            "--",
            "sh",
            "-c",
            script,
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_succeeded(kc, home, name);
    let out = kubectl(kc, home, &["logs", name]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits (60 s at most) until pod `name` has succeeded.
fn wait_succeeded(kc: &std::path::Path, home: &std::path::Path, name: &str) {
    let by = Instant::now() + Duration::from_secs(60);
    loop {
        let phase = kubectl(
            kc,
            home,
            &["get", "pod", name, "-o", "jsonpath={.status.phase}"],
        );
        if String::from_utf8_lossy(&phase.stdout) == "Succeeded" {
            return;
        }
        assert!(Instant::now() < by, "pod {name} never succeeded");
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Writes a kubeconfig at `out` that authenticates with `token` (no client certificate) to
/// the server of the admin kubeconfig `kc`, trusting the cluster CA of `data`.
fn token_kubeconfig(
    kc: &std::path::Path,
    data: &std::path::Path,
    token: &str,
    out: &std::path::Path,
) -> std::path::PathBuf {
    let server = std::fs::read_to_string(kc)
        .unwrap()
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("server:")
                .map(|s| s.trim().to_string())
        })
        .unwrap();
    std::fs::write(
        out,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: k\n  cluster:\n    server: {server}\n    certificate-authority: {}\ncontexts:\n- name: k\n  context: {{cluster: k, user: t}}\ncurrent-context: k\nusers:\n- name: t\n  user:\n    token: {token}\n",
            data.join("pki").join("ca.crt").display()
        ),
    )
    .unwrap();
    out.to_path_buf()
}

#[test]
fn up_serves_kubectl_and_survives_component_kills() {
    let dir = tempfile::tempdir().unwrap();
    let port = keelson_client::ports::free_port().unwrap();
    let data = dir.path().join("data");
    // Kept in the test's temporary directory; its end is printed when the test fails.
    let up_log = dir.path().join("up.log");
    let mut up = Command::new(env!("CARGO_BIN_EXE_keelson"))
        .args(["up", "--port", &port.to_string(), "--data-dir"])
        .arg(&data)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&up_log).unwrap())
        .spawn()
        .unwrap();
    let _stop = StopOnPanic(up.id(), up_log.clone());
    let mut lines = BufReader::new(up.stdout.take().unwrap()).lines();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut store_endpoints = String::new();
    loop {
        let l = lines.next().expect("keelson up ended early").unwrap();
        if let Some(e) = l.trim().strip_prefix("store:") {
            store_endpoints = e.trim().to_string();
        }
        if l.starts_with("Press Ctrl-C") {
            break;
        }
        assert!(Instant::now() < deadline, "keelson up did not become ready");
    }
    let kc = data.join("admin.kubeconfig");
    let ready = Instant::now() + Duration::from_secs(30);
    while !kubectl(&kc, dir.path(), &["get", "ns", "default"])
        .status
        .success()
    {
        assert!(Instant::now() < ready, "kubectl cannot reach the cluster");
        std::thread::sleep(Duration::from_millis(200));
    }
    let procs = children_of(up.id());
    assert_eq!(
        procs.iter().filter(|(_, c)| c.contains(" store ")).count(),
        3,
        "{procs:?}"
    );
    let apis: Vec<u32> = procs
        .iter()
        .filter(|(_, c)| c.contains(" apiserver "))
        .map(|(p, _)| *p)
        .collect();
    assert_eq!(apis.len(), 2, "{procs:?}");
    assert_eq!(
        procs
            .iter()
            .filter(|(_, c)| c.contains(" controller-manager "))
            .count(),
        2,
        "{procs:?}"
    );

    assert_eq!(
        procs
            .iter()
            .filter(|(_, c)| c.contains(" scheduler "))
            .count(),
        2,
        "{procs:?}"
    );
    assert_eq!(
        procs.iter().filter(|(_, c)| c.contains(" node ")).count(),
        2,
        "{procs:?}"
    );
    assert_eq!(
        procs
            .iter()
            .filter(|(_, c)| c.contains(" kms-plugin "))
            .count(),
        1,
        "{procs:?}"
    );
    // Secrets are encrypted at rest by default, through the KMS v2 plugin.
    let out = kubectl(
        &kc,
        dir.path(),
        &[
            "create",
            "secret",
            "generic",
            "db",
            "--from-literal=password=swordfish",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A user's CertificateSigningRequest, approved by the admin, is issued by the cluster CA
    // (the controller-manager signs with it) and the certificate logs in as that user.
    {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "carol");
        p.distinguished_name
            .push(rcgen::DnType::OrganizationName, "testers");
        let request = p.serialize_request(&key).unwrap().pem().unwrap();
        let csr = serde_json::json!({"apiVersion": "certificates.k8s.io/v1",
            "kind": "CertificateSigningRequest", "metadata": {"name": "carol"},
            "spec": {"request": b64.encode(request), "usages": ["client auth"],
                     "signerName": "kubernetes.io/kube-apiserver-client"}});
        let csr_file = dir.path().join("carol-csr.json");
        std::fs::write(&csr_file, csr.to_string()).unwrap();
        for args in [
            &["create", "-f", csr_file.to_str().unwrap()][..],
            &["certificate", "approve", "carol"],
        ] {
            let out = kubectl(&kc, dir.path(), args);
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let issued = Instant::now() + Duration::from_secs(30);
        let cert = loop {
            let out = kubectl(
                &kc,
                dir.path(),
                &[
                    "get",
                    "csr",
                    "carol",
                    "-o",
                    "jsonpath={.status.certificate}",
                ],
            );
            let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if !text.is_empty() {
                break b64.decode(text).unwrap();
            }
            assert!(
                Instant::now() < issued,
                "the request was not issued\n{}",
                component_logs(&data)
            );
            std::thread::sleep(Duration::from_millis(200));
        };
        let (crt, pem) = (dir.path().join("carol.crt"), dir.path().join("carol.key"));
        std::fs::write(&crt, cert).unwrap();
        std::fs::write(&pem, key.serialize_pem()).unwrap();
        let out = kubectl(
            &kc,
            dir.path(),
            &[
                &format!("--client-certificate={}", crt.display()),
                &format!("--client-key={}", pem.display()),
                "auth",
                "whoami",
                "-o",
                "jsonpath={.status.userInfo.username} {.status.userInfo.groups}",
            ],
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            r#"carol ["testers","system:authenticated"]"#,
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The store speaks TLS and wants a client certificate of the cluster CA.
    assert!(store_endpoints.starts_with("https://"), "{store_endpoints}");
    let pki = data.join("pki").join("etcd");
    // etcdctl against the store with the etcd CA and, optionally, a client certificate.
    let etcdctl = |cert: Option<(std::path::PathBuf, std::path::PathBuf)>, args: &[&str]| {
        let mut cmd = Command::new("etcdctl");
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={store_endpoints}"))
            .arg(format!("--cacert={}", pki.join("ca.crt").display()))
            .arg("--command-timeout=5s");
        if let Some((c, k)) = cert {
            cmd.arg(format!("--cert={}", c.display()))
                .arg(format!("--key={}", k.display()));
        }
        cmd.args(args)
            .output()
            .expect("etcdctl must be installed (apt-get install etcd-client; .ci/run does this)")
    };
    let etcdctl_cert = || Some((pki.join("etcdctl.crt"), pki.join("etcdctl.key")));
    let get_db = ["get", "/registry/secrets/default/db"];
    assert!(
        !etcdctl(None, &get_db).status.success(),
        "the store served a client without a certificate"
    );
    // A certificate of the cluster CA (the admin's) is not one of the store's.
    let admin = Some((
        data.join("pki").join("admin.crt"),
        data.join("pki").join("admin.key"),
    ));
    assert!(
        !etcdctl(admin, &get_db).status.success(),
        "the store served a client with a cluster-CA certificate"
    );
    let out = etcdctl(
        etcdctl_cert(),
        &["get", "/registry/secrets/default/db", "-w", "json"],
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let stored = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        v["kvs"][0]["value"]
            .as_str()
            .expect("the secret is in the store"),
    )
    .unwrap();
    assert!(stored.starts_with(b"k8s:enc:kms:v2:keelson-kms:"));
    assert!(!stored.windows(9).any(|w| w == b"swordfish"));
    let out = kubectl(
        &kc,
        dir.path(),
        &["get", "secret", "db", "-o", "jsonpath={.data.password}"],
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "c3dvcmRmaXNo");
    let nodes_by = Instant::now() + Duration::from_secs(60);
    loop {
        let out = kubectl(
            &kc,
            dir.path(),
            &[
                "get",
                "nodes",
                "-o",
                "jsonpath={range .items[*]}{.metadata.name}={.status.conditions[?(@.type==\"Ready\")].status} {end}",
            ],
        );
        if String::from_utf8_lossy(&out.stdout).trim() == "node-0=True node-1=True" {
            break;
        }
        assert!(Instant::now() < nodes_by, "nodes never became Ready");
        std::thread::sleep(Duration::from_millis(300));
    }
    // The controllers, the scheduler and the nodes work: a Deployment whose pods prefer not to
    // share a node gets one pod on each, they run, and one controller-manager and one scheduler
    // lead.
    let web = dir.path().join("web.yaml");
    std::fs::write(
        &web,
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: default}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      affinity:
        podAntiAffinity:
          preferredDuringSchedulingIgnoredDuringExecution:
          - weight: 100
            podAffinityTerm:
              topologyKey: kubernetes.io/hostname
              labelSelector: {matchLabels: {app: web}}
      containers: [{name: pause, image: registry.k8s.io/pause:3.9}]
"#,
    )
    .unwrap();
    let out = kubectl(&kc, dir.path(), &["apply", "-f", &web.to_string_lossy()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pods_by = Instant::now() + Duration::from_secs(60);
    loop {
        let out = kubectl(
            &kc,
            dir.path(),
            &["get", "pods", "-l", "app=web", "-o", "name"],
        );
        let bound = kubectl(
            &kc,
            dir.path(),
            &[
                "get",
                "pods",
                "-l",
                "app=web",
                "-o",
                "jsonpath={range .items[*]}{.spec.nodeName}/{.status.phase} {end}",
            ],
        );
        let mut placed: Vec<String> = String::from_utf8_lossy(&bound.stdout)
            .split_whitespace()
            .map(str::to_string)
            .collect();
        placed.sort();
        if String::from_utf8_lossy(&out.stdout).lines().count() == 2
            && placed == ["node-0/Running", "node-1/Running"]
        {
            break;
        }
        assert!(
            Instant::now() < pods_by,
            "deployment pods never ran, one per node"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let holder = kubectl(
        &kc,
        dir.path(),
        &[
            "get",
            "lease",
            "-n",
            "kube-system",
            "kube-controller-manager",
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ],
    );
    assert!(!String::from_utf8_lossy(&holder.stdout).is_empty());
    let holder = kubectl(
        &kc,
        dir.path(),
        &[
            "get",
            "lease",
            "-n",
            "kube-system",
            "kube-scheduler",
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ],
    );
    assert!(!String::from_utf8_lossy(&holder.stdout).is_empty());

    // kubectl logs goes apiserver -> kubelet over TLS (client certificate, verified serving
    // certificate).
    let hello = run_to_completion(&kc, dir.path(), "hello", "echo hello from keelson");
    assert_eq!(hello, "hello from keelson\n");

    // A pod gets its account's API credentials (ServiceAccount admission, the kubelet's
    // TokenRequest through the Node authorizer): a token bound to the pod, the CA, the
    // namespace. The token authenticates as the account.
    let logs = run_to_completion(
        &kc,
        dir.path(),
        "creds",
        "cd /var/run/secrets/kubernetes.io/serviceaccount && cat namespace && echo && cat token && echo && grep -c CERTIFICATE ca.crt",
    );
    let lines: Vec<&str> = logs.lines().collect();
    assert_eq!(lines.first(), Some(&"default"), "{logs}");
    assert_eq!(lines.get(2), Some(&"2"), "the CA bundle: {logs}");
    let pod_token = token_kubeconfig(
        &kc,
        &data,
        lines.get(1).copied().unwrap_or_default(),
        &dir.path().join("pod-token.kubeconfig"),
    );
    let who = kubectl(&pod_token, dir.path(), &["auth", "whoami", "-o", "json"]);
    let who: serde_json::Value = serde_json::from_slice(&who.stdout)
        .unwrap_or_else(|_| panic!("whoami: {}", String::from_utf8_lossy(&who.stderr)));
    assert_eq!(
        who["status"]["userInfo"]["username"],
        "system:serviceaccount:default:default"
    );
    assert_eq!(
        who["status"]["userInfo"]["extra"]["authentication.kubernetes.io/pod-name"],
        serde_json::json!(["creds"])
    );

    // The seed walkthrough: a Service in front of a Deployment answers by its DNS name from
    // pods on both nodes (cluster DNS, the proxy on each node), reaching both endpoints, and
    // its NodePort answers on the host.
    assert_eq!(
        procs.iter().filter(|(_, c)| c.contains(" dns ")).count(),
        2,
        "{procs:?}"
    );
    let ok = |args: &[&str]| {
        let out = kubectl(&kc, dir.path(), args);
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    ok(&[
        "create",
        "deployment",
        "example",
        "--image=python",
        "--replicas=2",
        "--port=8080",
        "--",
        "sh",
        "-c",
        "hostname > /tmp/who && cd /tmp && exec python3 -m http.server 8080",
    ]);
    ok(&[
        "expose",
        "deployment",
        "example",
        "--port=80",
        "--target-port=8080",
    ]);
    ok(&[
        "expose",
        "deployment",
        "example",
        "--name=example-np",
        "--type=NodePort",
        "--port=80",
        "--target-port=8080",
    ]);
    let ready_by = Instant::now() + Duration::from_secs(90);
    loop {
        let eps = ok(&[
            "get",
            "endpoints",
            "example",
            "-o",
            "jsonpath={range .subsets[*].addresses[*]}{.ip} {end}",
        ]);
        if eps.split_whitespace().count() == 2 {
            break;
        }
        assert!(Instant::now() < ready_by, "example never had 2 endpoints");
        std::thread::sleep(Duration::from_millis(300));
    }
    let servers = ok(&[
        "get",
        "pods",
        "-l",
        "app=example",
        "-o",
        "jsonpath={range .items[*]}{.metadata.name} {end}",
    ]);
    let servers: Vec<&str> = servers.split_whitespace().collect();
    // Its EndpointSlice lists both pods, ready, by pod IP; each pod answers HTTP on its pod IP
    // (from the host, through the node's bridge) with its own name.
    let by_ip = ok(&[
        "get",
        "pods",
        "-l",
        "app=example",
        "-o",
        "jsonpath={range .items[*]}{.status.podIP}={.metadata.name} {end}",
    ]);
    let mut ips: Vec<&str> = by_ip
        .split_whitespace()
        .filter_map(|p| p.split_once('=').map(|(ip, _)| ip))
        .collect();
    ips.sort();
    let slice_by = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = ok(&[
            "get",
            "endpointslices",
            "-l",
            "kubernetes.io/service-name=example",
            "-o",
            "jsonpath={range .items[*].endpoints[?(@.conditions.ready==true)]}{.addresses[0]} {end}",
        ]);
        let mut ready: Vec<&str> = ready.split_whitespace().collect();
        ready.sort();
        if ready == ips {
            break;
        }
        assert!(
            Instant::now() < slice_by,
            "EndpointSlice of example has ready {ready:?}, pods are at {ips:?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    for pair in by_ip.split_whitespace() {
        let (ip, name) = pair.split_once('=').unwrap();
        use std::io::{Read as _, Write as _};
        let mut conn = std::net::TcpStream::connect_timeout(
            &format!("{ip}:8080").parse().unwrap(),
            Duration::from_secs(5),
        )
        .unwrap_or_else(|e| panic!("pod {name} at {ip}:8080: {e}"));
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        conn.write_all(b"GET /who HTTP/1.0\r\n\r\n").unwrap();
        let mut answer = String::new();
        conn.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.0 200"), "{name}: {answer}");
        assert_eq!(answer.split("\r\n\r\n").nth(1).map(str::trim), Some(name));
    }
    for node in ["node-0", "node-1"] {
        let name = format!("curl-{node}");
        let overrides = format!(r#"{{"spec":{{"nodeName":"{node}"}}}}"#);
        ok(&[
            "run",
            &name,
            "--image=curl",
            "--restart=Never",
            &format!("--overrides={overrides}"),
            "--command",
            "--",
            "sh",
            "-c",
            // Rules follow the endpoints within the proxy's sync period: wait for a first
            // answer, then count.
            "n=0; until curl -s -m 2 -o /dev/null http://example.default.svc.cluster.local/who; do \
               n=$((n+1)); [ $n -ge 30 ] && break; sleep 1; done; \
             for i in $(seq 20); do curl -sS -m 5 -w ' %{http_code}\\n' http://example.default.svc.cluster.local/who; done; \
             curl -sS -m 5 -w ' %{http_code}\\n' http://example/who; cat /etc/resolv.conf",
        ]);
        let by = Instant::now() + Duration::from_secs(120);
        loop {
            let phase = ok(&["get", "pod", &name, "-o", "jsonpath={.status.phase}"]);
            if phase == "Succeeded" || phase == "Failed" {
                break;
            }
            assert!(Instant::now() < by, "{name} never finished");
            std::thread::sleep(Duration::from_millis(300));
        }
        let log = ok(&["logs", &name]);
        // Each answer is the server's name (a line), then the status code.
        let codes: Vec<&str> = log.lines().filter(|l| l.starts_with(' ')).collect();
        assert_eq!(codes.len(), 21, "{name}: {log}");
        assert!(codes.iter().all(|l| *l == " 200"), "{name}: {log}");
        for s in &servers {
            assert!(log.contains(s), "{name} never reached {s}: {log}");
        }
    }
    // DNS from a pod: a headless Service's pods and SRV records, a PTR, an ExternalName.
    let manifest = dir.path().join("dns-check.yaml");
    std::fs::write(
        &manifest,
        r#"
apiVersion: v1
kind: Service
metadata: {name: example-headless, namespace: default}
spec:
  clusterIP: None
  selector: {app: example}
  ports: [{name: web, port: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: ext, namespace: default}
spec: {type: ExternalName, externalName: example.default.svc.cluster.local}
---
apiVersion: v1
kind: Service
metadata: {name: sub, namespace: default}
spec:
  clusterIP: None
  selector: {app: sub}
  ports: [{port: 80}]
---
apiVersion: v1
kind: Pod
metadata: {name: sub-pod, namespace: default, labels: {app: sub}}
spec:
  hostname: db-0
  subdomain: sub
  nodeName: node-0
  containers: [{name: c, image: pause, command: ["sleep", "3600"]}]
---
apiVersion: v1
kind: Pod
metadata: {name: dns-check, namespace: default}
spec:
  nodeName: node-1
  restartPolicy: Never
  containers:
  - name: c
    image: dnsutils
    command:
    - sh
    - -c
    - |
      sleep 2
      n=0; until getent hosts db-0.sub.default.svc.cluster.local >/dev/null || [ $n -ge 60 ]; do n=$((n+1)); sleep 1; done
      echo "hostname $(getent hosts db-0.sub.default.svc.cluster.local | awk '{print $1}')"
      echo "headless $(getent ahostsv4 example-headless | awk '{print $1}' | sort -u | tr '\n' ' ')"
      echo "srv $(dig +short SRV _web._tcp.example-headless.default.svc.cluster.local | wc -l)"
      echo "ptr $(getent hosts 10.96.0.10 | awk '{print $2}')"
      echo "ext $(getent ahostsv4 ext | awk '{print $1}' | sort -u)"
"#,
    )
    .unwrap();
    ok(&["apply", "-f", &manifest.to_string_lossy()]);
    let by = Instant::now() + Duration::from_secs(90);
    while ok(&["get", "pod", "dns-check", "-o", "jsonpath={.status.phase}"]) != "Succeeded" {
        assert!(Instant::now() < by, "dns-check never finished");
        std::thread::sleep(Duration::from_millis(300));
    }
    let log = ok(&["logs", "dns-check"]);
    let line = |k: &str| {
        log.lines()
            .find_map(|l| l.strip_prefix(&format!("{k} ")))
            .unwrap_or("")
            .trim()
            .to_string()
    };
    let mut pod_ips: Vec<String> = ok(&[
        "get",
        "pods",
        "-l",
        "app=example",
        "-o",
        "jsonpath={range .items[*]}{.status.podIP} {end}",
    ])
    .split_whitespace()
    .map(str::to_string)
    .collect();
    pod_ips.sort();
    let mut headless: Vec<String> = line("headless")
        .split_whitespace()
        .map(str::to_string)
        .collect();
    headless.sort();
    assert_eq!(headless, pod_ips, "{log}");
    assert_eq!(line("srv"), "2", "{log}");
    assert_eq!(
        line("ptr"),
        "kube-dns.kube-system.svc.cluster.local",
        "{log}"
    );
    // A pod's hostname under its subdomain's headless Service.
    let sub_ip = ok(&["get", "pod", "sub-pod", "-o", "jsonpath={.status.podIP}"]);
    assert_eq!(line("hostname"), sub_ip, "{log}");
    let cluster_ip = ok(&[
        "get",
        "service",
        "example",
        "-o",
        "jsonpath={.spec.clusterIP}",
    ]);
    assert_eq!(line("ext"), cluster_ip, "{log}");

    let node_port = ok(&[
        "get",
        "service",
        "example-np",
        "-o",
        "jsonpath={.spec.ports[0].nodePort}",
    ]);
    let out = Command::new("curl")
        .args([
            "-s",
            "-m",
            "5",
            &format!("http://127.0.0.1:{node_port}/who"),
        ])
        .output()
        .unwrap();
    let who = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(servers.contains(&who.as_str()), "NodePort answered {who:?}");

    // Kill one apiserver: every request through the balancer still succeeds.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(apis[0] as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    for i in 0..10 {
        let out = kubectl(
            &kc,
            dir.path(),
            &["create", "configmap", &format!("after-kill-{i}")],
        );
        assert!(
            out.status.success(),
            "request {i} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The killed apiserver is restarted.
    let back = Instant::now() + Duration::from_secs(30);
    loop {
        let now: Vec<u32> = children_of(up.id())
            .iter()
            .filter(|(_, c)| c.contains(" apiserver "))
            .map(|(p, _)| *p)
            .collect();
        if now.len() == 2 && !now.contains(&apis[0]) {
            break;
        }
        assert!(Instant::now() < back, "apiserver not restarted: {now:?}");
        std::thread::sleep(Duration::from_millis(200));
    }

    // Kill -9, one at a time, the store leader, the leading controller-manager and the leading
    // scheduler: after each, kubectl keeps working, the Deployment scales up and everything
    // created before is still there.
    let up_pid = up.id();
    let leader_store = || -> u32 {
        let out = etcdctl(etcdctl_cert(), &["endpoint", "status", "-w", "json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let ep = v
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["Status"]["leader"] == e["Status"]["header"]["member_id"])
            .and_then(|e| e["Endpoint"].as_str().map(str::to_string))
            .unwrap_or_else(|| panic!("no store leader in {v}"));
        children_of(up_pid)
            .into_iter()
            .find(|(_, c)| c.contains(&format!("--listen-client-urls={ep} ")))
            .map(|(p, _)| p)
            .unwrap_or_else(|| panic!("no store process serves {ep}"))
    };
    // The component (`controller-manager`/`scheduler`) whose metrics say it leads.
    let leading = |what: &str| -> Option<u32> {
        children_of(up_pid)
            .into_iter()
            .filter(|(_, c)| c.contains(&format!(" {what} ")))
            .find_map(|(p, c)| {
                let port = c
                    .split(' ')
                    .find_map(|a| a.strip_prefix("--secure-port="))?
                    .to_string();
                let out = Command::new("curl")
                    .args([
                        "-sk",
                        "-m",
                        "3",
                        &format!("https://127.0.0.1:{port}/metrics"),
                    ])
                    .output()
                    .ok()?;
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .any(|l| l.starts_with("leader_election_master_status") && l.ends_with(" 1"))
                    .then_some(p)
            })
    };
    let scale_and_wait = |replicas: u32, after: &str| {
        let by = Instant::now() + Duration::from_secs(90);
        loop {
            let out = kubectl(
                &kc,
                dir.path(),
                &[
                    "scale",
                    "deployment",
                    "web",
                    &format!("--replicas={replicas}"),
                ],
            );
            if out.status.success() {
                break;
            }
            assert!(
                Instant::now() < by,
                "scale after {after}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(500));
        }
        loop {
            let out = kubectl(
                &kc,
                dir.path(),
                &[
                    "get",
                    "deployment",
                    "web",
                    "-o",
                    "jsonpath={.status.readyReplicas}",
                ],
            );
            if String::from_utf8_lossy(&out.stdout).trim() == replicas.to_string() {
                break;
            }
            assert!(
                Instant::now() < by,
                "web never reached {replicas} ready replicas after {after}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    };
    type Finder<'a> = Box<dyn Fn() -> u32 + 'a>;
    let victims: [(&str, Finder); 3] = [
        ("the store leader", Box::new(leader_store)),
        (
            "the leading controller-manager",
            Box::new(|| leading("controller-manager").expect("a leading controller-manager")),
        ),
        (
            "the leading scheduler",
            Box::new(|| leading("scheduler").expect("a leading scheduler")),
        ),
    ];
    for (i, (what, find)) in victims.iter().enumerate() {
        let pid = find();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        let by = Instant::now() + Duration::from_secs(30);
        loop {
            let out = kubectl(
                &kc,
                dir.path(),
                &["create", "configmap", &format!("after-{i}")],
            );
            // A create whose answer was lost (the store member that had it killed) was made
            // all the same: trying again finds it.
            if out.status.success()
                || String::from_utf8_lossy(&out.stderr).contains("AlreadyExists")
            {
                break;
            }
            assert!(Instant::now() < by, "kubectl failing after killing {what}");
            std::thread::sleep(Duration::from_millis(300));
        }
        scale_and_wait(3 + i as u32, what);
    }
    drop(victims);
    // Nothing created before is lost.
    let mut names: Vec<String> = (0..10)
        .map(|i| format!("configmap/after-kill-{i}"))
        .collect();
    names.extend((0..3).map(|i| format!("configmap/after-{i}")));
    let mut args = vec!["get"];
    args.extend(names.iter().map(String::as_str));
    args.extend(["-o", "name"]);
    let out = kubectl(&kc, dir.path(), &args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().count(),
        names.len()
    );
    let out = kubectl(&kc, dir.path(), &["get", "secret", "db", "-o", "name"]);
    assert!(out.status.success());

    // The nodes' cgroups (one base per node and hierarchy, named by node and a tag of its data
    // dir), there while pods run.
    let cgroups: Vec<std::path::PathBuf> = ["node-0", "node-1"]
        .iter()
        .flat_map(|n| {
            let root = data.join("nodes").join(n);
            let tag = keelson_node::process::net::tag(&root.display().to_string());
            ["memory", "cpu", "unified", ""]
                .iter()
                .map(move |h| {
                    std::path::Path::new("/sys/fs/cgroup")
                        .join(h)
                        .join("keelson")
                        .join(format!("{n}-{}", &tag[..6]))
                })
                .collect::<Vec<_>>()
        })
        .filter(|d| d.is_dir())
        .collect();
    assert!(
        cgroups.len() >= 2,
        "no cgroup of the nodes found under /sys/fs/cgroup/*/keelson: {cgroups:?}"
    );
    // Ctrl-C stops everything.
    let all: Vec<u32> = children_of(up.id()).iter().map(|(p, _)| *p).collect();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(up.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let status = up.wait().unwrap();
    assert!(status.success(), "keelson up exited with {status}");
    // Nothing of the pods is left: no pod veth or network namespace, no mount under the data
    // directory.
    let links = Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .unwrap();
    let links = String::from_utf8_lossy(&links.stdout).to_string();
    assert!(
        !links
            .lines()
            .any(|l| l.split(": ").nth(1).is_some_and(|n| n.starts_with("kv"))),
        "pod veths left behind:\n{links}"
    );
    let netns = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let netns = String::from_utf8_lossy(&netns.stdout).to_string();
    assert!(
        !netns.lines().any(|l| l.starts_with("kp-")),
        "pod netns left behind:\n{netns}"
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let data_s = data.display().to_string();
    assert!(
        !mounts.lines().any(|l| l.contains(&data_s)),
        "mounts left under {data_s}"
    );
    let left: Vec<_> = cgroups.iter().filter(|d| d.exists()).collect();
    assert!(left.is_empty(), "cgroups left behind: {left:?}");
    for p in all {
        assert!(
            !std::path::Path::new(&format!("/proc/{p}")).exists()
                || std::fs::read_to_string(format!("/proc/{p}/status"))
                    .unwrap_or_default()
                    .contains("State:\tZ"),
            "process {p} still running"
        );
    }
}

/// `up --detach` returns once the cluster is ready; `keelson status` lists every component with
/// its pid and health; `keelson down` stops them all; a second `up` on a data dir in use is
/// refused.
#[test]
fn up_detach_status_down() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = keelson_client::ports::free_port().unwrap().to_string();
    let keelson = env!("CARGO_BIN_EXE_keelson");
    let data_arg = data.display().to_string();
    let up = Command::new(keelson)
        .args([
            "up", "--detach", "--single", "--nodes", "0", "--port", &port,
        ])
        .args(["--data-dir", &data_arg])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&up.stdout).to_string();
    let pid_file = data.join("up.pid");
    let up_pid: u32 = std::fs::read_to_string(&pid_file)
        .ok()
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or(0);
    // Whatever happens below, the background cluster goes.
    let _down = Down(data_arg.clone());
    assert!(
        up.status.success(),
        "{text}{}{}",
        String::from_utf8_lossy(&up.stderr),
        component_logs(&data)
    );
    assert!(text.contains("export KUBECONFIG="), "{text}");
    assert!(text.contains("COMPONENT"), "{text}");
    assert!(up_pid > 0);
    let kc = data.join("admin.kubeconfig");
    let out = kubectl(&kc, dir.path(), &["get", "ns", "default", "-o", "name"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Each component logs to its own file.
    assert!(data.join("logs").join("apiserver-0.log").exists());
    // Every component reports healthy (status.json is refreshed every 2 s).
    let components = [
        "store member s0",
        "apiserver 0",
        "controller-manager 0",
        "scheduler 0",
        "kms-plugin",
    ];
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = Command::new(keelson)
            .args(["status", "--data-dir", &data_arg])
            .output()
            .unwrap();
        let table = String::from_utf8_lossy(&status.stdout).to_string();
        assert!(status.status.success(), "{table}");
        let all_ok = components.iter().all(|c| {
            table
                .lines()
                .find(|l| l.trim_start().starts_with(c))
                .is_some_and(|l| l.trim_end().ends_with("ok"))
        });
        if all_ok {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not every component healthy:\n{table}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let pids = children_of(up_pid);
    assert!(pids.len() >= 5, "{pids:?}");
    // CIS-style checks of the apiserver's flags: no anonymous requests, no AlwaysAllow, Node and
    // RBAC, encryption at rest, audit on, TLS to the store, service-account keys.
    let (_, api) = pids
        .iter()
        .find(|(_, c)| c.contains(" apiserver "))
        .expect("an apiserver");
    let flag = |name: &str| {
        api.split(' ')
            .find_map(|a| a.strip_prefix(&format!("--{name}=")))
            .unwrap_or_else(|| panic!("no --{name} in {api}"))
            .to_string()
    };
    assert_eq!(flag("anonymous-auth"), "false");
    let modes = flag("authorization-mode");
    assert!(!modes.contains("AlwaysAllow"), "{modes}");
    assert!(modes.split(',').any(|m| m == "Node") && modes.split(',').any(|m| m == "RBAC"));
    for f in [
        "encryption-provider-config",
        "audit-policy-file",
        "audit-log-path",
        "audit-log-maxage",
        "audit-log-maxbackup",
        "audit-log-maxsize",
        "etcd-cafile",
        "etcd-certfile",
        "etcd-keyfile",
        "tls-cert-file",
        "client-ca-file",
        "kubelet-certificate-authority",
        "service-account-key-file",
        "service-account-signing-key-file",
        "service-account-issuer",
    ] {
        assert!(!flag(f).is_empty(), "--{f} empty");
    }
    assert!(
        flag("etcd-servers")
            .split(',')
            .all(|u| u.starts_with("https://"))
    );
    assert!(!api.contains("--profiling=true"));
    for args in [
        &["create", "configmap", "kept", "--from-literal=a=b"][..],
        &[
            "create",
            "secret",
            "generic",
            "kept",
            "--from-literal=p=s3cret",
        ][..],
    ] {
        let out = kubectl(&kc, dir.path(), args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // A user of the cluster's own: RBAC on, nothing granted but discovery and whoami.
    let out = Command::new(keelson)
        .args([
            "kubeconfig",
            "user",
            "--client-name",
            "jane",
            "--org",
            "devs",
        ])
        .args(["--data-dir", &data_arg])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let jane = dir.path().join("jane.kubeconfig");
    std::fs::write(&jane, &out.stdout).unwrap();
    let who = kubectl(
        &jane,
        dir.path(),
        &[
            "auth",
            "whoami",
            "-o",
            "jsonpath={.status.userInfo.username} {.status.userInfo.groups}",
        ],
    );
    assert_eq!(
        String::from_utf8_lossy(&who.stdout).trim(),
        r#"jane ["devs","system:authenticated"]"#,
        "{}",
        String::from_utf8_lossy(&who.stderr)
    );
    let denied = kubectl(&jane, dir.path(), &["get", "configmaps"]);
    assert!(
        String::from_utf8_lossy(&denied.stderr)
            .contains(r#"User "jane" cannot list resource "configmaps""#),
        "{}",
        String::from_utf8_lossy(&denied.stderr)
    );
    // Service-account tokens: issued by TokenRequest (once the controller has made the
    // `default` account), accepted as the account.
    let by = Instant::now() + Duration::from_secs(30);
    let out = loop {
        let out = kubectl(&kc, dir.path(), &["create", "token", "default"]);
        if out.status.success() || Instant::now() > by {
            break out;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let with_token = token_kubeconfig(&kc, &data, &token, &dir.path().join("token.kubeconfig"));
    let who = kubectl(
        &with_token,
        dir.path(),
        &[
            "auth",
            "whoami",
            "-o",
            "jsonpath={.status.userInfo.username}",
        ],
    );
    assert_eq!(
        String::from_utf8_lossy(&who.stdout).trim(),
        "system:serviceaccount:default:default",
        "{}",
        String::from_utf8_lossy(&who.stderr)
    );
    // The audit log has the admin's writes, at Metadata.
    let audit = std::fs::read_to_string(data.join("logs").join("audit-0.log")).unwrap_or_default();
    let kept = audit
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|e| {
            e["verb"] == "create"
                && e["objectRef"]["resource"] == "configmaps"
                && e["objectRef"]["name"] == "kept"
        });
    let kept = kept.unwrap_or_else(|| panic!("no audit event of the configmap's create:\n{audit}"));
    assert_eq!(kept["level"], "Metadata");
    assert_eq!(kept["user"]["username"], "kubernetes-admin");
    assert!(!audit.contains("s3cret") && !audit.contains("czNjcmV0"));
    // A second up on the same data dir is refused before anything starts.
    let again = Command::new(keelson)
        .args(["up", "--single", "--nodes", "0", "--port", "0"])
        .args(["--data-dir", &data_arg])
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("is in use by keelson up"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let down = Command::new(keelson)
        .args(["down", "--data-dir", &data_arg])
        .output()
        .unwrap();
    assert!(
        down.status.success(),
        "{}",
        String::from_utf8_lossy(&down.stderr)
    );
    for (p, cmd) in pids {
        assert!(!runs(p, &cmd), "{cmd} (pid {p}) still running after down");
    }
    let status = Command::new(keelson)
        .args(["status", "--data-dir", &data_arg])
        .output()
        .unwrap();
    assert!(!status.status.success());
    // A port of the cluster taken by someone else: refused before anything starts.
    let topo: serde_json::Value =
        serde_json::from_slice(&std::fs::read(data.join("topology.json")).unwrap()).unwrap();
    let api_port = topo["apiservers"][0].as_u64().unwrap() as u16;
    let _squatter = std::net::TcpListener::bind(("127.0.0.1", api_port)).unwrap();
    let again = Command::new(keelson)
        .args(["up", "--single", "--nodes", "0", "--port", &port])
        .args(["--data-dir", &data_arg])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(!again.status.success());
    assert!(
        err.contains(&format!("port {api_port} for apiserver 0 is not free")),
        "{err}"
    );
    drop(_squatter);
    // `up` again on the same data dir: the same cluster, with its objects and readable Secrets
    // (the store and the KMS keys persisted).
    let up = Command::new(keelson)
        .args([
            "up", "--detach", "--single", "--nodes", "0", "--port", &port,
        ])
        .args(["--data-dir", &data_arg])
        .output()
        .unwrap();
    assert!(
        up.status.success(),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );
    let out = kubectl(
        &kc,
        dir.path(),
        &["get", "secret", "kept", "-o", "jsonpath={.data.p}"],
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "czNjcmV0");
    let out = kubectl(&kc, dir.path(), &["get", "configmap", "kept", "-o", "name"]);
    assert!(out.status.success());
    // `up` killed with -9 cannot stop its components: they stop by themselves once it is gone.
    let up_pid: u32 = std::fs::read_to_string(data.join("up.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // (An exited child not yet reaped has no command line: it is not one to wait for.)
    let components: Vec<(u32, String)> = children_of(up_pid)
        .into_iter()
        .filter(|(_, cmd)| !cmd.is_empty())
        .collect();
    assert!(components.len() >= 4, "{components:?}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(up_pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let by = Instant::now() + Duration::from_secs(60);
    loop {
        let running: Vec<&(u32, String)> =
            components.iter().filter(|(p, cmd)| runs(*p, cmd)).collect();
        if running.is_empty() {
            break;
        }
        assert!(
            Instant::now() < by,
            "still running 60 s after kill -9 of up: {running:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `up` refuses, before writing or starting anything, a data dir written by a newer keelson, one
/// with an unreadable topology, a directory that is not a `keelson up` data dir, and (not root)
/// process-runtime nodes.
#[test]
fn up_refuses_what_it_cannot_run() {
    let keelson = env!("CARGO_BIN_EXE_keelson");
    let listing = |d: &std::path::Path| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    let refused = |data: &std::path::Path, extra: &[&str], wanted: &str| {
        let before = data.exists().then(|| listing(data));
        let out = Command::new(keelson)
            .args(["up", "--port", "0", "--data-dir"])
            .arg(data)
            .args(extra)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "up started on {}", data.display());
        assert!(err.contains(wanted), "wanted {wanted:?} in: {err}");
        assert_eq!(
            data.exists().then(|| listing(data)),
            before,
            "up changed {} before refusing",
            data.display()
        );
    };
    let dir = tempfile::tempdir().unwrap();

    let newer = dir.path().join("newer");
    std::fs::create_dir(&newer).unwrap();
    std::fs::write(
        newer.join("topology.json"),
        r#"{"format": 99, "stores": [], "layout": "from the future"}"#,
    )
    .unwrap();
    refused(
        &newer,
        &[],
        "was written by a newer keelson (data format 99; this keelson reads up to 1)",
    );

    let damaged = dir.path().join("damaged");
    std::fs::create_dir(&damaged).unwrap();
    std::fs::write(damaged.join("topology.json"), "{\"stores\": [[1, ").unwrap();
    refused(&damaged, &[], "topology.json is unreadable");

    // An etcd data dir (or anything else) is not taken over.
    let etcd = dir.path().join("etcd");
    std::fs::create_dir_all(etcd.join("member").join("wal")).unwrap();
    refused(
        &etcd,
        &[],
        "is not empty (member) and has no topology.json: it is not a keelson up data dir",
    );

    refused(
        &dir.path().join("churn"),
        &[
            "--hollow-nodes",
            "1",
            "--hollow-node-status-report-frequency",
            "0s",
        ],
        "--hollow-node-status-report-frequency must be at least 1s",
    );

    // A store binary that does not exist, and one that cannot read the members' data.
    const TOPOLOGY: &str = r#"{"format": 1, "stores": [[1, 2]], "apiservers": [3], "controller_managers": [], "schedulers": [], "nodes": [], "store_tls": true}"#;
    refused(
        &dir.path().join("nostore"),
        &["--store-binary", "/nonexistent/etcd"],
        "--store-binary /nonexistent/etcd: no such program",
    );
    let keelson_data = dir.path().join("keelson-store-data");
    std::fs::create_dir_all(keelson_data.join("store-0")).unwrap();
    std::fs::write(keelson_data.join("topology.json"), TOPOLOGY).unwrap();
    std::fs::write(keelson_data.join("store-0").join("member.json"), "{}").unwrap();
    refused(
        &keelson_data,
        &["--store-binary", "etcd"],
        "holds keelson-store data, which etcd cannot read",
    );
    let etcd_data = dir.path().join("etcd-data");
    std::fs::create_dir_all(etcd_data.join("store-0").join("member")).unwrap();
    std::fs::write(etcd_data.join("topology.json"), TOPOLOGY).unwrap();
    refused(
        &etcd_data,
        &[],
        "holds another store's data (etcd's member/)",
    );

    // Without root, process-runtime nodes are refused before the data dir is even made.
    let fresh = dir.path().join("fresh");
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", keelson])
        .args(["up", "--port", "0", "--data-dir"])
        .arg(&fresh)
        .output()
        .expect("setpriv (util-linux) must be installed; .ci/run installs it");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("process-runtime nodes need root"),
        "not-root refusal: {err}"
    );
    assert!(!fresh.exists());

    // `--stop-with-parent=PID` naming a process that is not its parent (one that died before
    // `up` could look, so that it was adopted): it stops at once, with what it had started.
    let orphan = dir.path().join("orphan");
    let out = Command::new(keelson)
        .args([
            "up",
            "--nodes",
            "0",
            "--dns-replicas",
            "0",
            "--stop-with-parent=1",
        ])
        .args(["--port", "0", "--data-dir"])
        .arg(&orphan)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("the process that started it (pid 1) has exited; stopping"),
        "{err}"
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("Press Ctrl-C"));
}

/// `--store-binary etcd`: the store members are etcd (Debian's 3.4, which .ci/run installs),
/// started with the same flags and certificates, and the cluster works on it.
#[test]
fn up_runs_etcd_as_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data_arg = data.display().to_string();
    let port = keelson_client::ports::free_port().unwrap().to_string();
    let keelson = env!("CARGO_BIN_EXE_keelson");
    let _down = Down(data_arg.clone());
    let up = Command::new(keelson)
        .args([
            "up", "--detach", "--single", "--nodes", "0", "--port", &port,
        ])
        .args(["--store-binary", "etcd", "--data-dir", &data_arg])
        .output()
        .unwrap();
    assert!(
        up.status.success(),
        "{}{}{}",
        String::from_utf8_lossy(&up.stdout),
        String::from_utf8_lossy(&up.stderr),
        component_logs(&data)
    );
    let up_pid: u32 = std::fs::read_to_string(data.join("up.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let stores: Vec<u32> = children_of(up_pid)
        .into_iter()
        .filter(|(_, cmd)| cmd.contains("--initial-cluster="))
        .map(|(pid, _)| pid)
        .collect();
    assert_eq!(stores.len(), 1, "{:?}", children_of(up_pid));
    let exe = std::fs::read_link(format!("/proc/{}/exe", stores[0])).unwrap();
    assert_eq!(exe.file_name().unwrap(), "etcd", "{}", exe.display());
    // etcd's own data layout, and a cluster that stores and lists objects on it.
    assert!(data.join("store-0").join("member").join("wal").is_dir());
    let kc = data.join("admin.kubeconfig");
    let out = kubectl(
        &kc,
        dir.path(),
        &["create", "configmap", "on-etcd", "--from-literal=k=v"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = kubectl(
        &kc,
        dir.path(),
        &["get", "configmap", "on-etcd", "-o", "jsonpath={.data.k}"],
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "v");
}
