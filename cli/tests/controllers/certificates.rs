//! The certificate controllers with real tooling: requests made by `openssl req`, approved
//! with `kubectl certificate approve` or automatically for kubelets, issued by the cluster CA,
//! and the certificates used with kubectl; refused and stale requests.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::json;

use crate::harness::{ApiCluster, Backend, eventually, ok};
use crate::support::ControllerManager;

/// A new key and a PEM request for `subject` (openssl's `/O=../CN=..` form), with an
/// optional subjectAltName; returns (key path, request PEM).
fn openssl_request(dir: &Path, file: &str, subject: &str, san: Option<&str>) -> (PathBuf, String) {
    let key = dir.join(format!("{file}.key"));
    let mut cmd = Command::new("openssl");
    cmd.args([
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-subj",
        subject,
        "-keyout",
    ])
    .arg(&key);
    if let Some(s) = san {
        cmd.args(["-addext", &format!("subjectAltName={s}")]);
    }
    let out = cmd
        .output()
        .expect("openssl must be installed (.ci/run installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (key, String::from_utf8(out.stdout).unwrap())
}

fn csr_object(name: &str, pem: &str, signer: &str, usages: &[&str], seconds: u32) -> String {
    let request = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, pem);
    json!({"apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
        "metadata": {"name": name},
        "spec": {"request": request, "signerName": signer, "usages": usages,
                 "expirationSeconds": seconds}})
    .to_string()
}

/// The issued certificate of `name`, written to a file, once there is one.
fn issued(c: &ApiCluster, name: &str) -> PathBuf {
    let mut b64 = String::new();
    eventually(Duration::from_secs(30), &format!("{name} issued"), || {
        b64 = c.ok(&["get", "csr", name, "-o", "jsonpath={.status.certificate}"]);
        !b64.is_empty()
    });
    let pem = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, b64).unwrap();
    let path = c.dir.path().join(format!("{name}.crt"));
    std::fs::write(&path, pem).unwrap();
    path
}

fn openssl(args: &[&str]) -> (bool, String) {
    let out = Command::new("openssl").args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Who the apiserver says the holder of `cert`/`key` is: (username, groups).
fn whoami(c: &ApiCluster, cert: &Path, key: &Path) -> (String, String) {
    let who = |path: &str| {
        c.ok(&[
            &format!("--client-certificate={}", cert.display()),
            &format!("--client-key={}", key.display()),
            "auth",
            "whoami",
            "-o",
            &format!("jsonpath={path}"),
        ])
    };
    (
        who("{.status.userInfo.username}"),
        who("{.status.userInfo.groups}"),
    )
}

#[test]
fn requests_are_approved_signed_refused_and_cleaned_as_upstream() {
    let c = ApiCluster::start_with(Backend::Keelson, 1, &["--authorization-mode=RBAC"]);
    let dir = c.dir.path().to_path_buf();
    let admin = |args: &[&str]| ok(c.kubectl(args), args);

    // A request done with long ago: its certificate has expired. The cleaner deletes it on
    // its first pass, when the controller-manager starts.
    let (_, pem) = openssl_request(&dir, "old", "/CN=old", None);
    c.kubectl_stdin(
        &["apply", "-f", "-"],
        &csr_object("old", &pem, "example.com/signer", &["client auth"], 3600),
    );
    admin(&["certificate", "approve", "old"]);
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(vec!["old".to_string()]).unwrap();
    p.not_before = rcgen::date_time_ymd(2020, 1, 1);
    p.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let expired = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        p.self_signed(&key).unwrap().pem(),
    );
    admin(&[
        "patch",
        "csr",
        "old",
        "--subresource=status",
        "--type=merge",
        "-p",
        &json!({"status": {"certificate": expired}}).to_string(),
    ]);

    let ca_key = dir.join("ca.key");
    let _cm = ControllerManager::start(
        &c,
        "controller-manager",
        "cm0",
        &[
            "--leader-elect=false",
            "--controllers=csrsigning,csrapproving,csrcleaner",
            &format!("--cluster-signing-cert-file={}", c.pki.ca.display()),
            &format!("--cluster-signing-key-file={}", ca_key.display()),
            "--cluster-signing-duration=2h",
        ],
    );
    eventually(
        Duration::from_secs(30),
        "the expired request deleted",
        || c.kubectl(&["get", "csr", "old"]).status.code() == Some(1),
    );

    // A user's client certificate with two groups, approved by the admin: kubectl works with
    // it, as that user in those groups; it lives as long as the signer allows (2 h, not the
    // day asked).
    let (jane_key, pem) = openssl_request(&dir, "jane", "/O=dev/O=ops/CN=jane", None);
    c.kubectl_stdin(
        &["apply", "-f", "-"],
        &csr_object(
            "jane",
            &pem,
            "kubernetes.io/kube-apiserver-client",
            &["digital signature", "client auth"],
            86400,
        ),
    );
    admin(&["certificate", "approve", "jane"]);
    let jane_crt = issued(&c, "jane");
    let (user, groups) = whoami(&c, &jane_crt, &jane_key);
    assert_eq!(user, "jane");
    assert_eq!(groups, r#"["dev","ops","system:authenticated"]"#);
    let crt = jane_crt.to_str().unwrap();
    assert!(openssl(&["x509", "-in", crt, "-noout", "-checkend", "3600"]).0);
    assert!(!openssl(&["x509", "-in", crt, "-noout", "-checkend", "7300"]).0);
    let (_, verified) = openssl(&["verify", "-CAfile", c.pki.ca.to_str().unwrap(), crt]);
    assert!(verified.contains(": OK"), "{verified}");
    let (_, text) = openssl(&[
        "x509",
        "-in",
        crt,
        "-noout",
        "-ext",
        "extendedKeyUsage,basicConstraints",
    ]);
    assert!(text.contains("TLS Web Client Authentication"), "{text}");
    assert!(text.contains("CA:FALSE"), "{text}");

    // The kubelet-serving signer refuses a request without names: Failed, no certificate.
    let (_, pem) = openssl_request(&dir, "serving", "/O=system:nodes/CN=system:node:n1", None);
    c.kubectl_stdin(
        &["apply", "-f", "-"],
        &csr_object(
            "serving",
            &pem,
            "kubernetes.io/kubelet-serving",
            &["digital signature", "server auth"],
            3600,
        ),
    );
    admin(&["certificate", "approve", "serving"]);
    eventually(Duration::from_secs(30), "serving refused", || {
        admin(&["get", "csr", "serving", "--no-headers"]).contains("Approved,Failed")
    });
    assert_eq!(
        admin(&[
            "get",
            "csr",
            "serving",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Failed\")].message}",
        ]),
        "DNS or IP subjectAltName is required"
    );
    assert!(
        admin(&[
            "get",
            "csr",
            "serving",
            "-o",
            "jsonpath={.status.certificate}"
        ])
        .is_empty()
    );

    // Kubelets' client certificates: a node may have its own renewed (selfnodeclient), a
    // bootstrapper may have any node's (nodeclient), a node may not have another node's.
    for (binding, role, group) in [
        ("renew", "selfnodeclient", "system:nodes"),
        ("bootstrap", "nodeclient", "system:bootstrappers"),
    ] {
        admin(&[
            "create",
            "clusterrolebinding",
            binding,
            &format!("--clusterrole=system:certificates.k8s.io:certificatesigningrequests:{role}"),
            &format!("--group={group}"),
        ]);
        admin(&[
            "create",
            "clusterrolebinding",
            &format!("{binding}-create"),
            "--clusterrole=system:node-bootstrapper",
            &format!("--group={group}"),
        ]);
    }
    let node = c.user_kubeconfig("system:node:n1", &["system:nodes"]);
    let bootstrapper = c.user_kubeconfig("system:bootstrap:abcdef", &["system:bootstrappers"]);
    let kubelet_request = |kc: &Path, name: &str, cn: &str| {
        let (key, pem) = openssl_request(&dir, name, &format!("/O=system:nodes/CN={cn}"), None);
        let o = c.kubectl_with_stdin(
            kc,
            &["apply", "-f", "-"],
            &csr_object(
                name,
                &pem,
                "kubernetes.io/kube-apiserver-client-kubelet",
                &["digital signature", "key encipherment", "client auth"],
                3600,
            ),
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        key
    };
    kubelet_request(&node, "n1-for-n2", "system:node:n2");
    let n1_key = kubelet_request(&node, "n1-renew", "system:node:n1");
    let n3_key = kubelet_request(&bootstrapper, "n3-bootstrap", "system:node:n3");
    let n1_crt = issued(&c, "n1-renew");
    let n3_crt = issued(&c, "n3-bootstrap");
    let message = |name: &str| {
        admin(&[
            "get",
            "csr",
            name,
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Approved\")].reason}: {.status.conditions[?(@.type==\"Approved\")].message}",
        ])
    };
    assert_eq!(
        message("n1-renew"),
        "AutoApproved: Auto approving self kubelet client certificate after SubjectAccessReview."
    );
    assert_eq!(
        message("n3-bootstrap"),
        "AutoApproved: Auto approving kubelet client certificate after SubjectAccessReview."
    );
    assert_eq!(whoami(&c, &n1_crt, &n1_key).0, "system:node:n1");
    assert_eq!(
        whoami(&c, &n3_crt, &n3_key),
        (
            "system:node:n3".to_string(),
            r#"["system:nodes","system:authenticated"]"#.to_string()
        )
    );
    // n1's request for n2 is not approved (nor refused: it stays pending, asked about again
    // later in case n1's permissions change).
    std::thread::sleep(Duration::from_secs(2));
    let row = admin(&["get", "csr", "n1-for-n2", "--no-headers"]);
    assert!(row.trim_end().ends_with("Pending"), "{row}");
}
