//! Pod Security Admission through kubectl: a `restricted` namespace refuses a privileged pod
//! with upstream's message and takes a hardened one; `warn` turns into kubectl warnings (for
//! workloads too); unknown levels are refused on the namespace.

use crate::harness::{ApiCluster, Backend, apply, ok};

const HARDENED: &str = r#"{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "hardened", "namespace": "locked"},
  "spec": {"securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
    "containers": [{"name": "c", "image": "pause", "securityContext": {"allowPrivilegeEscalation": false,
      "capabilities": {"drop": ["ALL"]}}}]}}"#;

#[test]
fn pod_security_levels_per_namespace() {
    let c = ApiCluster::start_with(Backend::Keelson, 1, &[]);
    let admin = |args: &[&str]| ok(c.kubectl(args), args);
    admin(&["create", "namespace", "locked"]);
    admin(&[
        "label",
        "namespace",
        "locked",
        "pod-security.kubernetes.io/enforce=restricted",
    ]);
    let o = c.kubectl(&[
        "-n",
        "locked",
        "run",
        "root",
        "--image=pause",
        "--overrides={\"spec\":{\"containers\":[{\"name\":\"root\",\"image\":\"pause\",\"securityContext\":{\"privileged\":true}}]}}",
    ]);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(!o.status.success());
    assert!(
        err.contains(r#"pods "root" is forbidden: violates PodSecurity "restricted:latest": privileged (container "root" must not set securityContext.privileged=true), allowPrivilegeEscalation != false (container "root" must set securityContext.allowPrivilegeEscalation=false)"#),
        "{err}"
    );
    apply(&c, HARDENED);
    admin(&["-n", "locked", "get", "pod", "hardened"]);

    // warn: the pod is made, kubectl prints the warning; the same for a Deployment.
    admin(&["create", "namespace", "watched"]);
    admin(&[
        "label",
        "namespace",
        "watched",
        "pod-security.kubernetes.io/warn=baseline",
    ]);
    let o = c.kubectl(&[
        "-n",
        "watched",
        "run",
        "net",
        "--image=pause",
        "--overrides={\"spec\":{\"hostNetwork\":true,\"containers\":[{\"name\":\"net\",\"image\":\"pause\"}]}}",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains(
            r#"Warning: would violate PodSecurity "baseline:latest": host namespaces (hostNetwork=true)"#
        ),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = c.kubectl_stdin(
        &["apply", "-f", "-"],
        r#"{"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d", "namespace": "watched"},
          "spec": {"selector": {"matchLabels": {"a": "b"}}, "template": {"metadata": {"labels": {"a": "b"}},
            "spec": {"containers": [{"name": "c", "image": "pause", "securityContext": {"privileged": true}}]}}}}"#,
    );
    assert!(o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("would violate PodSecurity"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );

    // An unknown level is refused.
    let o = c.kubectl(&[
        "label",
        "namespace",
        "watched",
        "pod-security.kubernetes.io/enforce=strict",
    ]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("Unsupported value: \"strict\""),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}
