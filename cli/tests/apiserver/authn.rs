//! The other authenticators and the webhook authorizer, end to end: bootstrap tokens from
//! `kube-system` secrets, an authenticating proxy's headers behind its own CA (with curl), and
//! token and authorization webhooks served by the test over HTTPS (with kubectl).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use keelson_bench::webhook_server::{self, WebhookServer};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use serde_json::{Value, json};

use crate::harness::{ApiCluster, Backend, apply, eventually, ok};
use crate::tokens::{stderr, token_kubeconfig};

fn out(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn b64(s: &str) -> String {
    base64::Engine::encode(&base64::engine::general_purpose::STANDARD, s)
}

/// A bootstrap token secret for `abcdef.0123456789abcdef`, expiring at `expiration`.
fn bootstrap_secret(expiration: &str) -> String {
    json!({"apiVersion": "v1", "kind": "Secret",
    "metadata": {"name": "bootstrap-token-abcdef", "namespace": "kube-system"},
    "type": "bootstrap.kubernetes.io/token",
    "data": {
        "token-id": b64("abcdef"),
        "token-secret": b64("0123456789abcdef"),
        "usage-bootstrap-authentication": b64("true"),
        "auth-extra-groups": b64("system:bootstrappers:worker"),
        "expiration": b64(expiration),
    }})
    .to_string()
}

/// A front-proxy CA in `dir` and client certificates of it for each CommonName:
/// `(ca, [(cert, key)])`.
fn proxy_pki(dir: &Path, names: &[&str]) -> (PathBuf, Vec<(PathBuf, PathBuf)>) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "front-proxy-ca");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let ca_path = dir.join("front-proxy-ca.crt");
    std::fs::write(&ca_path, ca.pem()).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let certs = names
        .iter()
        .map(|n| {
            let key = KeyPair::generate().unwrap();
            let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
            p.distinguished_name.push(DnType::CommonName, *n);
            p.distinguished_name
                .push(DnType::OrganizationName, "system:masters");
            let cert = p.signed_by(&key, &issuer).unwrap();
            let (c, k) = (dir.join(format!("{n}.crt")), dir.join(format!("{n}.key")));
            std::fs::write(&c, cert.pem()).unwrap();
            std::fs::write(&k, key.serialize_pem()).unwrap();
            (c, k)
        })
        .collect();
    (ca_path, certs)
}

/// POSTs a SelfSubjectReview with curl as the client `(cert, key)` with extra `headers`;
/// returns the HTTP status and body.
fn whoami_curl(c: &ApiCluster, client: (&Path, &Path), headers: &[&str]) -> (u16, Value) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-o", "-", "-w", "\n%{http_code}", "-X", "POST"])
        .arg("--cacert")
        .arg(&c.pki.ca)
        .arg("--cert")
        .arg(client.0)
        .arg("--key")
        .arg(client.1)
        .args(["-H", "Content-Type: application/json"])
        .args([
            "-d",
            r#"{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}"#,
        ]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    cmd.arg(format!(
        "https://127.0.0.1:{}/apis/authentication.k8s.io/v1/selfsubjectreviews",
        c.api_ports[0]
    ));
    // A transport failure (no HTTP status at all, as seen once on a loaded CI machine) is
    // tried again; any answer the server gives is returned as it is.
    let mut errors = String::new();
    for _ in 0..3 {
        let o = cmd.output().expect("curl runs (.ci/run installs it)");
        let text = out(&o);
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        match code.trim().parse::<u16>() {
            Ok(code) if code != 0 => {
                return (code, serde_json::from_str(body).unwrap_or(Value::Null));
            }
            _ => errors.push_str(&stderr(&o)),
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    panic!("curl got no HTTP answer: {errors}");
}

#[test]
fn bootstrap_tokens_and_authenticating_proxies() {
    let certs = tempfile::tempdir().unwrap();
    let (proxy_ca, proxy_certs) = proxy_pki(certs.path(), &["front-proxy-client", "stranger"]);
    let c = ApiCluster::start_with(
        Backend::Keelson,
        1,
        &[
            "--authorization-mode=RBAC",
            "--enable-bootstrap-token-auth",
            &format!("--requestheader-client-ca-file={}", proxy_ca.display()),
            "--requestheader-allowed-names=front-proxy-client",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
        ],
    );

    // Bootstrap tokens: the secret names the user and its extra groups.
    let token = "abcdef.0123456789abcdef";
    let boot = token_kubeconfig(&c, "boot", token);
    let whoami = [
        "auth",
        "whoami",
        "-o",
        "jsonpath={.status.userInfo.username} {.status.userInfo.groups}",
    ];
    let o = c.kubectl_with(&boot, &whoami);
    assert!(!o.status.success(), "no secret yet: {}", out(&o));
    assert!(stderr(&o).contains("Unauthorized"), "{}", stderr(&o));
    apply(&c, &bootstrap_secret("2099-01-01T00:00:00Z"));
    eventually(Duration::from_secs(20), "the bootstrap RBAC policy", || {
        c.kubectl_with(&boot, &whoami).status.success()
    });
    let o = c.kubectl_with(&boot, &whoami);
    assert_eq!(
        out(&o),
        r#"system:bootstrap:abcdef ["system:bootstrappers","system:bootstrappers:worker","system:authenticated"]"#,
        "{}",
        stderr(&o)
    );
    // A wrong secret half, and an expired token, are refused.
    let wrong = token_kubeconfig(&c, "wrong", "abcdef.0123456789abcdee");
    assert!(
        stderr(&c.kubectl_with(&wrong, &whoami)).contains("Unauthorized"),
        "a wrong secret half"
    );
    apply(&c, &bootstrap_secret("2020-01-01T00:00:00Z"));
    eventually(Duration::from_secs(10), "the expired token refused", || {
        stderr(&c.kubectl_with(&boot, &whoami)).contains("Unauthorized")
    });

    // The proxy's certificate lets its headers name the user, groups and extras.
    let proxy = (proxy_certs[0].0.as_path(), proxy_certs[0].1.as_path());
    let (code, r) = whoami_curl(
        &c,
        proxy,
        &[
            "X-Remote-User: dave",
            "X-Remote-Group: devs",
            "X-Remote-Group: ops",
            "X-Remote-Extra-Acme.com%2Fproject: apollo",
        ],
    );
    assert_eq!(code, 201, "{r}");
    assert_eq!(
        r["status"]["userInfo"],
        json!({"username": "dave", "groups": ["devs", "ops", "system:authenticated"],
               "extra": {"acme.com/project": ["apollo"]}})
    );
    // Without a username header the proxy is nobody (its own certificate names no user: it is
    // not signed by the client CA, whatever its subject says).
    let (code, _) = whoami_curl(&c, proxy, &[]);
    assert_eq!(code, 401);
    // A certificate of the proxy CA whose name is not allowed cannot speak for users.
    let stranger = (proxy_certs[1].0.as_path(), proxy_certs[1].1.as_path());
    let (code, _) = whoami_curl(&c, stranger, &["X-Remote-User: dave"]);
    assert_eq!(code, 401);
    // A user's own client certificate is that user, whatever the headers say.
    let (code, r) = whoami_curl(
        &c,
        (&c.pki.admin_cert, &c.pki.admin_key),
        &["X-Remote-User: dave"],
    );
    assert_eq!(code, 201, "{r}");
    assert_eq!(r["status"]["userInfo"]["username"], "kubernetes-admin");
}

/// The token webhook accepts `hook-token` as `hooked` (in `hookers`); the authorization webhook
/// allows `hooked` to read configmaps, denies it secrets outright, and has no opinion on the
/// rest.
fn respond(path: &str, review: &Value) -> (Duration, Value) {
    let answer = match path {
        "/authn" => {
            let status = if review["spec"]["token"] == "hook-token" {
                json!({"authenticated": true,
                       "user": {"username": "hooked", "uid": "7", "groups": ["hookers"],
                                "extra": {"source": ["test"]}}})
            } else {
                json!({"authenticated": false, "error": "unknown token"})
            };
            json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "status": status})
        }
        "/authz" => {
            let spec = &review["spec"];
            let ra = &spec["resourceAttributes"];
            let status = if spec["user"] != "hooked" {
                json!({"allowed": false})
            } else if ra["resource"] == "configmaps"
                && matches!(ra["verb"].as_str(), Some("get" | "list"))
            {
                json!({"allowed": true, "reason": "the hook says yes"})
            } else if ra["resource"] == "secrets" {
                json!({"allowed": false, "denied": true, "reason": "the hook says never"})
            } else {
                json!({"allowed": false, "reason": "the hook does not know"})
            };
            json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "status": status})
        }
        _ => json!({}),
    };
    (Duration::ZERO, answer)
}

fn webhook_kubeconfig(dir: &Path, name: &str, server: &WebhookServer, path: &str) -> PathBuf {
    let p = dir.join(format!("{name}.yaml"));
    std::fs::write(&p, server.kubeconfig(path, "apiserver-secret")).unwrap();
    p
}

#[test]
fn token_and_authorization_webhooks() {
    let (rt, server) = webhook_server::start_on_own_runtime(Arc::new(respond), &[], true).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let authn = webhook_kubeconfig(dir.path(), "authn", &server, "/authn");
    let authz = webhook_kubeconfig(dir.path(), "authz", &server, "/authz");
    let c = ApiCluster::start_with(
        Backend::Keelson,
        1,
        &[
            "--authorization-mode=RBAC,Webhook",
            &format!(
                "--authentication-token-webhook-config-file={}",
                authn.display()
            ),
            &format!("--authorization-webhook-config-file={}", authz.display()),
        ],
    );
    let hooked = token_kubeconfig(&c, "hooked", "hook-token");
    // (RBAC lets every authenticated user ask who it is once the bootstrap policy is loaded.)
    eventually(Duration::from_secs(20), "the bootstrap RBAC policy", || {
        c.kubectl_with(&hooked, &["auth", "whoami"])
            .status
            .success()
    });
    let o = c.kubectl_with(
        &hooked,
        &[
            "auth",
            "whoami",
            "-o",
            "jsonpath={.status.userInfo.username} {.status.userInfo.uid} {.status.userInfo.groups} {.status.userInfo.extra}",
        ],
    );
    assert_eq!(
        out(&o),
        r#"hooked 7 ["hookers","system:authenticated"] {"source":["test"]}"#,
        "{}",
        stderr(&o)
    );
    let reviews = server.reviews("/authn");
    assert_eq!(reviews[0]["kind"], "TokenReview");
    assert_eq!(reviews[0]["spec"]["token"], "hook-token");
    let sent = server.seen.lock().unwrap()[0]["authorization"].clone();
    assert_eq!(sent, "Bearer apiserver-secret", "the kubeconfig's token");

    // The authorization webhook allows what RBAC does not.
    ok(
        c.kubectl(&["create", "configmap", "cm", "--from-literal=k=v"]),
        &["create configmap"],
    );
    let o = c.kubectl_with(&hooked, &["get", "configmap", "cm", "-o", "name"]);
    assert_eq!(out(&o), "configmap/cm", "{}", stderr(&o));
    let o = c.kubectl_with(&hooked, &["auth", "can-i", "list", "configmaps"]);
    assert_eq!(out(&o), "yes", "{}", stderr(&o));
    // An outright denial is final; no opinion falls through to a 403 with the reason.
    let o = c.kubectl_with(&hooked, &["get", "secrets"]);
    assert!(
        stderr(&o).contains(r#"User "hooked" cannot list resource "secrets""#)
            && stderr(&o).contains("the hook says never"),
        "{}",
        stderr(&o)
    );
    let o = c.kubectl_with(&hooked, &["get", "pods"]);
    assert!(
        stderr(&o).contains("the hook does not know"),
        "{}",
        stderr(&o)
    );
    // RBAC is asked first: what it allows never reaches the webhook.
    ok(
        c.kubectl(&[
            "create",
            "role",
            "svc-reader",
            "--verb=get,list",
            "--resource=services",
        ]),
        &["create role"],
    );
    ok(
        c.kubectl(&[
            "create",
            "rolebinding",
            "hooked-services",
            "--role=svc-reader",
            "--user=hooked",
        ]),
        &["create rolebinding"],
    );
    eventually(Duration::from_secs(10), "RBAC allows services", || {
        c.kubectl_with(&hooked, &["get", "services"])
            .status
            .success()
    });
    let asked = |s: &WebhookServer| {
        s.reviews("/authz")
            .iter()
            .filter(|r| r["spec"]["resourceAttributes"]["name"] == "kubernetes")
            .count()
    };
    let o = c.kubectl_with(&hooked, &["get", "service", "kubernetes", "-o", "name"]);
    assert_eq!(out(&o), "service/kubernetes", "{}", stderr(&o));
    assert_eq!(
        asked(&server),
        0,
        "RBAC answered; the webhook was not asked"
    );

    // Answers are cached: asking again does not call the webhooks again.
    let (tokens, configmaps) = (
        server.reviews("/authn").len(),
        server
            .reviews("/authz")
            .iter()
            .filter(|r| r["spec"]["resourceAttributes"]["resource"] == "configmaps")
            .count(),
    );
    for _ in 0..3 {
        let o = c.kubectl_with(&hooked, &["get", "configmap", "cm", "-o", "name"]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    assert_eq!(
        server.reviews("/authn").len(),
        tokens,
        "the token answer is kept"
    );
    assert_eq!(
        server
            .reviews("/authz")
            .iter()
            .filter(|r| r["spec"]["resourceAttributes"]["resource"] == "configmaps")
            .count(),
        configmaps,
        "the allowed answer is kept"
    );
    // A token the webhook refuses is a 401.
    let stranger = token_kubeconfig(&c, "stranger", "not-a-known-token");
    let o = c.kubectl_with(&stranger, &["get", "configmaps"]);
    assert!(stderr(&o).contains("Unauthorized"), "{}", stderr(&o));
    // With the webhook gone, a question nobody answers is a 500, not a 403 (the token's
    // answer is still cached).
    drop(rt);
    let o = c.kubectl_with(&hooked, &["get", "deployments"]);
    assert!(
        stderr(&o).contains("the authorization webhook failed"),
        "{}",
        stderr(&o)
    );
    assert!(!stderr(&o).contains("Forbidden"), "{}", stderr(&o));
}
