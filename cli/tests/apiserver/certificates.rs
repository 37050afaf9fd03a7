//! CertificateSigningRequests through kubectl: the server records the requester, `kubectl
//! certificate approve` goes through `/approval`, the certificate through `/status`, and the
//! CertificateApproval, CertificateSigning and CertificateSubjectRestriction plugins refuse
//! what RBAC alone would let through.

use serde_json::json;

use crate::harness::{ApiCluster, Backend, ok};
use crate::tokens::stderr;

fn b64(s: &str) -> String {
    base64::Engine::encode(&base64::engine::general_purpose::STANDARD, s)
}

/// A CSR object for CN `cn` in `orgs`, to `signer`, claiming to be from `forged`.
fn csr(name: &str, cn: &str, orgs: &[&str], signer: &str) -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(rcgen::DnType::CommonName, cn);
    for o in orgs {
        p.distinguished_name
            .push(rcgen::DnType::OrganizationName, *o);
    }
    let pem = p.serialize_request(&key).unwrap().pem().unwrap();
    json!({"apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
        "metadata": {"name": name},
        "spec": {"request": b64(&pem), "signerName": signer, "usages": ["client auth"],
                 "expirationSeconds": 86400, "username": "forged"}})
    .to_string()
}

/// A certificate (any will do for the status), base64 PEM.
fn certificate() -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["x".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    b64(&cert.pem())
}

#[test]
fn signing_requests_are_approved_and_signed_only_by_who_may() {
    let c = ApiCluster::start_with(Backend::Keelson, 1, &["--authorization-mode=RBAC"]);
    let admin = |args: &[&str]| ok(c.kubectl(args), args);
    let get =
        |name: &str, path: &str| admin(&["get", "csr", name, "-o", &format!("jsonpath={path}")]);
    c.kubectl_stdin(
        &["apply", "-f", "-"],
        &csr("dev", "alice", &["devs"], "example.com/signer"),
    );
    assert_eq!(get("dev", "{.spec.username}"), "kubernetes-admin");
    let table = admin(&["get", "csr", "dev", "--no-headers"]);
    let cols: Vec<&str> = table.split_whitespace().collect();
    assert_eq!(
        (cols[0], cols[2], cols[3], cols[4], cols[5]),
        (
            "dev",
            "example.com/signer",
            "kubernetes-admin",
            "24h",
            "Pending"
        ),
        "{table}"
    );

    // A reviewer RBAC lets read and update approvals, but not approve for this signer.
    admin(&[
        "create",
        "clusterrole",
        "csr-reviewer",
        "--verb=get,list,update,patch",
        "--resource=certificatesigningrequests,certificatesigningrequests/approval,certificatesigningrequests/status",
    ]);
    admin(&[
        "create",
        "clusterrolebinding",
        "csr-reviewer",
        "--clusterrole=csr-reviewer",
        "--user=rita",
    ]);
    let rita = c.user_kubeconfig("rita", &[]);
    crate::harness::eventually(
        std::time::Duration::from_secs(10),
        "RBAC lets rita read CSRs",
        || {
            c.kubectl_with(&rita, &["get", "csr", "dev"])
                .status
                .success()
        },
    );
    let o = c.kubectl_with(&rita, &["certificate", "approve", "dev"]);
    assert!(
        stderr(&o).contains(
            r#"user not permitted to approve requests with signerName \"example.com/signer\""#
        ) || stderr(&o).contains(
            r#"user not permitted to approve requests with signerName "example.com/signer""#
        ),
        "{}",
        stderr(&o)
    );
    assert_eq!(get("dev", "{.status.conditions}"), "");
    // `approve` on the signer's domain lets her.
    // (`signers` is no served resource: kubectl create clusterrole would refuse it.)
    ok(
        c.kubectl_stdin(
            &["apply", "-f", "-"],
            &json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                "metadata": {"name": "example-approver"},
                "rules": [{"apiGroups": ["certificates.k8s.io"], "resources": ["signers"],
                           "resourceNames": ["example.com/*"], "verbs": ["approve"]}]})
            .to_string(),
        ),
        &["apply clusterrole"],
    );
    admin(&[
        "create",
        "clusterrolebinding",
        "example-approver",
        "--clusterrole=example-approver",
        "--user=rita",
    ]);
    crate::harness::eventually(std::time::Duration::from_secs(10), "rita approves", || {
        c.kubectl_with(&rita, &["certificate", "approve", "dev"])
            .status
            .success()
    });
    assert_eq!(
        get(
            "dev",
            "{.status.conditions[0].type}={.status.conditions[0].reason}"
        ),
        "Approved=KubectlApprove"
    );

    // The certificate: `sign` is needed, which rita lacks; an admin may.
    let cert = certificate();
    let status = json!({"status": {"certificate": cert}}).to_string();
    // `kubectl patch csr dev --subresource=status` with a merge patch, as `kubeconfig`'s user.
    let patch_status = |kubeconfig: &std::path::Path, body: &str| {
        c.kubectl_with(
            kubeconfig,
            &[
                "patch",
                "csr",
                "dev",
                "--subresource=status",
                "--type=merge",
                "-p",
                body,
            ],
        )
    };
    let admin_kc = c.kubeconfig();
    let o = patch_status(&rita, &status);
    assert!(
        stderr(&o).contains("user not permitted to sign requests"),
        "{}",
        stderr(&o)
    );
    ok(patch_status(&admin_kc, &status), &["patch status"]);
    let table = admin(&["get", "csr", "dev", "--no-headers"]);
    assert!(table.contains("Approved,Issued"), "{table}");
    // Once set, the certificate stays; the status cannot take the approval away; the spec
    // does not change.
    let o = patch_status(
        &admin_kc,
        &json!({"status": {"certificate": certificate()}}).to_string(),
    );
    assert!(
        stderr(&o).contains("may not modify existing certificate"),
        "{}",
        stderr(&o)
    );
    ok(
        patch_status(&admin_kc, r#"{"status":{"conditions":null}}"#),
        &["patch status"],
    );
    assert_eq!(get("dev", "{.status.conditions[0].type}"), "Approved");
    admin(&[
        "patch",
        "csr",
        "dev",
        "--type=merge",
        "-p",
        r#"{"spec":{"signerName":"example.com/other"}}"#,
    ]);
    assert_eq!(get("dev", "{.spec.signerName}"), "example.com/signer");

    // CertificateSubjectRestriction.
    let o = c.kubectl_stdin(
        &["apply", "-f", "-"],
        &csr(
            "masters",
            "mallory",
            &["system:masters"],
            "kubernetes.io/kube-apiserver-client",
        ),
    );
    assert!(
        stderr(&o).contains(
            "use of kubernetes.io/kube-apiserver-client signer with system:masters group is not allowed"
        ),
        "{}",
        stderr(&o)
    );
    // A request that is not PEM is invalid.
    let o = c.kubectl_stdin(
        &["apply", "-f", "-"],
        &json!({"apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
                "metadata": {"name": "junk"},
                "spec": {"request": b64("junk"), "signerName": "example.com/signer",
                         "usages": ["client auth"]}})
        .to_string(),
    );
    assert!(stderr(&o).contains("spec.request"), "{}", stderr(&o));
}
