//! The store over TLS, with etcd's flags: a 3-member keelson-store with https client and peer
//! URLs and client-certificate authentication on both, driven by etcdctl with `--cacert/--cert/
//! --key` and by an apiserver with `--etcd-cafile/--etcd-certfile/--etcd-keyfile`.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use crate::harness::{ApiCluster, Pki, eventually, free_port, pki};

struct Members(Vec<Child>);

impl Drop for Members {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn etcdctl_tls(endpoints: &str, pki: Option<&Pki>, args: &[&str]) -> Output {
    let mut cmd = Command::new("etcdctl");
    cmd.env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoints}"))
        .arg("--command-timeout=5s")
        .arg("--dial-timeout=3s");
    if let Some(p) = pki {
        cmd.arg(format!("--cacert={}", p.ca.display()))
            .arg(format!("--cert={}", p.admin_cert.display()))
            .arg(format!("--key={}", p.admin_key.display()));
    }
    cmd.args(args).output().expect("etcdctl must be installed")
}

/// Starts the members; returns them, their client endpoints (comma-separated) and their peer
/// URLs.
fn start_members(dir: &Path, pki: &Pki) -> (Members, String, Vec<String>) {
    let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
    let initial = ports
        .iter()
        .enumerate()
        .map(|(i, (_, p))| format!("t{i}=https://127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut children = Vec::new();
    for (i, (c, p)) in ports.iter().enumerate() {
        let tls = |flag: &str, path: &Path| format!("--{flag}={}", path.display());
        children.push(
            Command::new(env!("CARGO_BIN_EXE_keelson"))
                .arg("store")
                .args(["--name", &format!("t{i}")])
                .arg(format!(
                    "--data-dir={}",
                    dir.join(format!("t{i}")).display()
                ))
                .arg(format!("--listen-client-urls=https://127.0.0.1:{c}"))
                .arg(format!("--advertise-client-urls=https://127.0.0.1:{c}"))
                .arg(format!("--listen-peer-urls=https://127.0.0.1:{p}"))
                .arg(format!(
                    "--initial-advertise-peer-urls=https://127.0.0.1:{p}"
                ))
                .arg(format!("--initial-cluster={initial}"))
                .arg(tls("cert-file", &pki.server_cert))
                .arg(tls("key-file", &pki.server_key))
                .arg(tls("trusted-ca-file", &pki.ca))
                .arg("--client-cert-auth")
                .arg(tls("peer-cert-file", &pki.server_cert))
                .arg(tls("peer-key-file", &pki.server_key))
                .arg(tls("peer-trusted-ca-file", &pki.ca))
                .arg("--peer-client-cert-auth")
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(dir.join(format!("t{i}.log"))).unwrap())
                .spawn()
                .unwrap(),
        );
    }
    let endpoints = ports
        .iter()
        .map(|(c, _)| format!("https://127.0.0.1:{c}"))
        .collect::<Vec<_>>()
        .join(",");
    let peers = ports
        .iter()
        .map(|(_, p)| format!("https://127.0.0.1:{p}"))
        .collect();
    (Members(children), endpoints, peers)
}

/// The HTTP status curl got from `url` over TLS trusting `ca`, with the client certificate
/// `cert` if any: "000" when the TLS handshake failed.
fn curl_status(url: &str, ca: &Path, cert: Option<(&Path, &Path)>) -> String {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg("--cacert")
        .arg(ca);
    if let Some((c, k)) = cert {
        cmd.arg("--cert").arg(c).arg("--key").arg(k);
    }
    let out = cmd.arg(url).output().expect("curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn store_and_apiserver_over_mutual_tls() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let (_members, endpoints, peers) = start_members(dir.path(), &pki);
    eventually(Duration::from_secs(40), "the TLS store cluster", || {
        etcdctl_tls(&endpoints, Some(&pki), &["put", "tls-probe", "1"])
            .status
            .success()
    });
    let out = etcdctl_tls(
        &endpoints,
        Some(&pki),
        &["get", "tls-probe", "--print-value-only"],
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1");
    // The peers talk over TLS: the members list their https peer URLs, and every member
    // (each one answering alone) agrees on the value.
    // A member shows as `unstarted` (no client URL) until it has published itself, which can
    // come after the first write commits.
    let mut list = String::new();
    eventually(Duration::from_secs(20), "every member started", || {
        let out = etcdctl_tls(&endpoints, Some(&pki), &["member", "list"]);
        list = String::from_utf8_lossy(&out.stdout).into_owned();
        list.matches("https://127.0.0.1:").count() == 6
    });
    assert!(!list.contains("unstarted"), "{list}");
    for ep in endpoints.split(',') {
        let out = etcdctl_tls(ep, Some(&pki), &["get", "tls-probe", "--print-value-only"]);
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1", "{ep}");
    }
    // No client certificate: refused.
    let mut cmd = Command::new("etcdctl");
    let out = cmd
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoints}"))
        .arg(format!("--cacert={}", pki.ca.display()))
        .args([
            "--command-timeout=3s",
            "--dial-timeout=2s",
            "get",
            "tls-probe",
        ])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "a client without a certificate was served"
    );
    // Plain http to a TLS port: refused.
    let plain = endpoints.replace("https://", "http://");
    assert!(
        !etcdctl_tls(&plain, None, &["get", "tls-probe"])
            .status
            .success()
    );

    // The peer port (--peer-client-cert-auth) completes a TLS handshake only with a client
    // certificate from --peer-trusted-ca-file: none, or one from another authority, is refused.
    let other = dir.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    let stranger = crate::harness::pki(&other);
    let own = (pki.admin_cert.as_path(), pki.admin_key.as_path());
    let foreign = (stranger.admin_cert.as_path(), stranger.admin_key.as_path());
    for peer in &peers {
        assert_ne!(curl_status(peer, &pki.ca, Some(own)), "000", "{peer}");
        assert_eq!(curl_status(peer, &pki.ca, None), "000", "{peer}");
        assert_eq!(curl_status(peer, &pki.ca, Some(foreign)), "000", "{peer}");
    }
    // An apiserver on it, with the etcd client flags.
    let args = [
        format!("--etcd-cafile={}", pki.ca.display()),
        format!("--etcd-certfile={}", pki.admin_cert.display()),
        format!("--etcd-keyfile={}", pki.admin_key.display()),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let c = ApiCluster::on_store(&endpoints, 1, &args);
    c.ok(&["create", "configmap", "over-tls", "--from-literal=a=b"]);
    assert_eq!(
        c.ok(&["get", "configmap", "over-tls", "-o", "jsonpath={.data.a}"]),
        "b"
    );
    let out = etcdctl_tls(
        &endpoints,
        Some(&pki),
        &[
            "get",
            "/registry/configmaps/default/over-tls",
            "--keys-only",
        ],
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("over-tls"));
}
