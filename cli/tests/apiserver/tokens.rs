//! Service-account tokens through kubectl: `kubectl create token` (TokenRequest) issues them,
//! the apiserver accepts them as `system:serviceaccount:<ns>:<name>` with RBAC deciding the
//! rest, and refuses them once tampered with, or once the account or the pod they are bound to
//! is gone; static tokens from `--token-auth-file`.

use std::path::PathBuf;
use std::time::Duration;

use crate::harness::{ApiCluster, Backend, eventually, ok};

pub(crate) fn token_kubeconfig(c: &ApiCluster, name: &str, token: &str) -> PathBuf {
    let path = c.dir.path().join(format!("{name}.kubeconfig"));
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: k\n  cluster:\n    server: https://127.0.0.1:{}\n    certificate-authority: {}\ncontexts:\n- name: k\n  context: {{cluster: k, user: t, namespace: default}}\ncurrent-context: k\nusers:\n- name: t\n  user:\n    token: {token}\n",
            c.api_ports[0],
            c.pki.ca.display()
        ),
    )
    .unwrap();
    path
}

pub(crate) fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn service_account_tokens_authenticate_until_what_they_name_is_gone() {
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("sa.key");
    std::fs::write(&key, rcgen::KeyPair::generate().unwrap().serialize_pem()).unwrap();
    let tokens = keys.path().join("tokens.csv");
    std::fs::write(&tokens, "static-secret,tess,42,\"testers\"\n").unwrap();
    let c = ApiCluster::start_with(
        Backend::Keelson,
        1,
        &[
            "--authorization-mode=RBAC",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            &format!("--service-account-signing-key-file={}", key.display()),
            &format!("--token-auth-file={}", tokens.display()),
        ],
    );
    let admin = |args: &[&str]| ok(c.kubectl(args), args);
    admin(&["create", "serviceaccount", "robot"]);
    let token = admin(&["create", "token", "robot"]).trim().to_string();
    let robot = token_kubeconfig(&c, "robot", &token);
    let who = c.kubectl_with(
        &robot,
        &[
            "auth",
            "whoami",
            "-o",
            "jsonpath={.status.userInfo.username} {.status.userInfo.groups}",
        ],
    );
    assert_eq!(
        String::from_utf8_lossy(&who.stdout).trim(),
        r#"system:serviceaccount:default:robot ["system:serviceaccounts","system:serviceaccounts:default","system:authenticated"]"#,
        "{}",
        stderr(&who)
    );
    // RBAC decides what the account may do.
    let o = c.kubectl_with(&robot, &["get", "pods"]);
    assert!(
        stderr(&o)
            .contains(r#"User "system:serviceaccount:default:robot" cannot list resource "pods""#),
        "{}",
        stderr(&o)
    );
    // (No controller-manager here to fill the aggregated `view`: a Role of its own.)
    admin(&[
        "create",
        "role",
        "pod-reader",
        "--verb=get,list",
        "--resource=pods",
    ]);
    admin(&[
        "create",
        "rolebinding",
        "robot-reads",
        "--role=pod-reader",
        "--serviceaccount=default:robot",
    ]);
    eventually(Duration::from_secs(10), "robot may list pods", || {
        c.kubectl_with(&robot, &["get", "pods"]).status.success()
    });
    // A tampered token, or one for another audience, is a 401.
    // A claim changed (the middle part), the signature kept.
    let mut parts: Vec<String> = token.split('.').map(str::to_string).collect();
    let claims = &mut parts[1];
    let i = claims.len() / 2;
    let swapped = if &claims[i..i + 1] == "A" { "B" } else { "A" };
    claims.replace_range(i..i + 1, swapped);
    let forged = parts.join(".");
    let o = c.kubectl_with(&token_kubeconfig(&c, "forged", &forged), &["get", "pods"]);
    assert!(stderr(&o).contains("Unauthorized"), "{}", stderr(&o));
    let vault = admin(&["create", "token", "robot", "--audience=vault"]);
    let o = c.kubectl_with(
        &token_kubeconfig(&c, "vault", vault.trim()),
        &["get", "pods"],
    );
    assert!(stderr(&o).contains("Unauthorized"), "{}", stderr(&o));
    // TokenRequest refuses what upstream refuses.
    let o = c.kubectl(&["create", "token", "robot", "--duration=5m"]);
    assert!(
        stderr(&o).contains("may not specify a duration less than 10 minutes"),
        "{}",
        stderr(&o)
    );
    assert!(!c.kubectl(&["create", "token", "nobody"]).status.success());

    // A token bound to a pod lasts as long as the pod.
    crate::harness::apply(
        &c,
        r#"{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "worker", "namespace": "default"},
            "spec": {"serviceAccountName": "robot", "containers": [{"name": "c", "image": "pause"}]}}"#,
    );
    let bound = admin(&[
        "create",
        "token",
        "robot",
        "--bound-object-kind=Pod",
        "--bound-object-name=worker",
    ]);
    let worker = token_kubeconfig(&c, "worker", bound.trim());
    let who = c.kubectl_with(&worker, &["auth", "whoami", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&who.stdout).unwrap();
    assert_eq!(
        v["status"]["userInfo"]["extra"]["authentication.kubernetes.io/pod-name"],
        serde_json::json!(["worker"])
    );
    admin(&["create", "serviceaccount", "other"]);
    let o = c.kubectl(&[
        "create",
        "token",
        "other",
        "--bound-object-kind=Pod",
        "--bound-object-name=worker",
    ]);
    assert!(
        stderr(&o).contains("to pod running with different serviceaccount name"),
        "{}",
        stderr(&o)
    );
    admin(&["delete", "pod", "worker", "--grace-period=0", "--force"]);
    eventually(
        Duration::from_secs(10),
        "the bound token is refused",
        || stderr(&c.kubectl_with(&worker, &["get", "pods"])).contains("Unauthorized"),
    );
    // The account goes: so do its tokens.
    assert!(c.kubectl_with(&robot, &["get", "pods"]).status.success());
    admin(&["delete", "serviceaccount", "robot"]);
    eventually(Duration::from_secs(10), "the token is refused", || {
        stderr(&c.kubectl_with(&robot, &["get", "pods"])).contains("Unauthorized")
    });

    // Static tokens.
    let tess = token_kubeconfig(&c, "tess", "static-secret");
    let who = c.kubectl_with(
        &tess,
        &[
            "auth",
            "whoami",
            "-o",
            "jsonpath={.status.userInfo.username} {.status.userInfo.groups}",
        ],
    );
    assert_eq!(
        String::from_utf8_lossy(&who.stdout).trim(),
        r#"tess ["testers","system:authenticated"]"#
    );
}
