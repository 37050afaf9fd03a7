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

/// DefaultStorageClass and DefaultIngressClass give new claims and Ingresses the newest
/// default class; PersistentVolumeClaimResize lets a claim grow only when it is bound and its
/// class allows expansion.
#[test]
fn default_classes_and_claim_resizing() {
    let c = ApiCluster::start_with(Backend::Keelson, 1, &[]);
    let class = |name: &str, default: bool, expand: bool| {
        format!(
            r#"{{"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {{"name": "{name}",
              "annotations": {{"storageclass.kubernetes.io/is-default-class": "{default}"}}}},
              "provisioner": "example.com/disk", "allowVolumeExpansion": {expand}}}"#
        )
    };
    apply(&c, &class("slow", true, false));
    // Timestamps have second resolution: the newer default is made a second later.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    apply(&c, &class("fast", true, true));
    apply(&c, &class("fixed", false, false));
    let claim = |name: &str, class: Option<&str>| {
        let class = class.map_or(String::new(), |c| format!(r#""storageClassName": "{c}","#));
        format!(
            r#"{{"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {{"name": "{name}", "namespace": "default"}},
              "spec": {{{class} "accessModes": ["ReadWriteOnce"], "resources": {{"requests": {{"storage": "1Gi"}}}}}}}}"#
        )
    };
    apply(&c, &claim("a", None));
    apply(&c, &claim("b", Some("")));
    apply(&c, &claim("c", Some("fixed")));
    let class_of = |n: &str| c.ok(&["get", "pvc", n, "-o", "jsonpath={.spec.storageClassName}"]);
    assert_eq!(class_of("a"), "fast");
    assert_eq!(class_of("b"), "");

    apply(
        &c,
        r#"{"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass", "metadata": {"name": "nginx",
          "annotations": {"ingressclass.kubernetes.io/is-default-class": "true"}}, "spec": {"controller": "example.com/ingress"}}"#,
    );
    c.ok(&["create", "ingress", "web", "--rule=example.com/=web:80"]);
    assert_eq!(
        c.ok(&[
            "get",
            "ingress",
            "web",
            "-o",
            "jsonpath={.spec.ingressClassName}"
        ]),
        "nginx"
    );

    let grow = |n: &str| {
        c.kubectl(&[
            "patch",
            "pvc",
            n,
            "-p",
            r#"{"spec":{"resources":{"requests":{"storage":"2Gi"}}}}"#,
        ])
    };
    let o = grow("a");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains(
            r#"persistentvolumeclaims "a" is forbidden: Only bound persistent volume claims can be expanded"#
        ),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    for n in ["a", "c"] {
        c.ok(&[
            "patch",
            "pvc",
            n,
            "--subresource=status",
            "-p",
            r#"{"status":{"phase":"Bound"}}"#,
        ]);
    }
    let o = grow("a");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = grow("c");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains(
            r#"persistentvolumeclaims "c" is forbidden: only dynamically provisioned pvc can be resized and the storageclass that provisions the pvc must support resize"#
        ),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn runtime_classes_give_pods_their_overhead_and_scheduling() {
    let c = ApiCluster::start_with(Backend::Keelson, 1, &[]);
    apply(
        &c,
        r#"{"apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass", "metadata": {"name": "kata"},
          "handler": "kata", "overhead": {"podFixed": {"cpu": "250m", "memory": "120Mi"}},
          "scheduling": {"nodeSelector": {"runtime": "kata"},
            "tolerations": [{"key": "kata", "operator": "Exists", "effect": "NoSchedule"}]}}"#,
    );
    let table = c.ok(&["get", "runtimeclass", "kata", "--no-headers"]);
    assert!(
        table.starts_with("kata") && table.contains(" kata "),
        "{table}"
    );
    let pod = |name: &str, class: &str, extra: &str| {
        format!(
            r#"{{"apiVersion": "v1", "kind": "Pod", "metadata": {{"name": "{name}"}},
              "spec": {{"runtimeClassName": "{class}", {extra} "containers": [{{"name": "c", "image": "nginx"}}]}}}}"#
        )
    };
    apply(&c, &pod("light", "kata", ""));
    assert_eq!(
        c.ok(&[
            "get",
            "pod",
            "light",
            "-o",
            "jsonpath={.spec.overhead.cpu} {.spec.overhead.memory} {.spec.nodeSelector.runtime} {.spec.tolerations[?(@.key==\"kata\")].effect}",
        ]),
        "250m 120Mi kata NoSchedule"
    );
    let refused = |manifest: &str| {
        let o = c.kubectl_stdin(&["apply", "-f", "-"], manifest);
        assert!(!o.status.success());
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    let e = refused(&pod("ghost", "gvisor", ""));
    assert!(
        e.contains(r#"pod rejected: RuntimeClass "gvisor" not found"#),
        "{e}"
    );
    let e = refused(&pod(
        "clash",
        "kata",
        r#""nodeSelector": {"runtime": "runc"},"#,
    ));
    assert!(
        e.contains("conflict: runtimeClass.scheduling.nodeSelector[runtime]"),
        "{e}"
    );
    // The handler is immutable.
    let o = c.kubectl(&[
        "patch",
        "runtimeclass",
        "kata",
        "--type=merge",
        "-p",
        r#"{"handler":"runc"}"#,
    ]);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("field is immutable"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn event_rate_limit_refuses_events_over_their_namespace_budget() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("admission.yaml");
    std::fs::write(
        &config,
        "apiVersion: apiserver.config.k8s.io/v1\nkind: AdmissionConfiguration\nplugins:\n- name: EventRateLimit\n  path: eventratelimit.yaml\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("eventratelimit.yaml"),
        "apiVersion: eventratelimit.admission.k8s.io/v1alpha1\nkind: Configuration\nlimits:\n- type: Namespace\n  qps: 0.001\n  burst: 3\n",
    )
    .unwrap();
    let c = ApiCluster::start_with(
        Backend::Keelson,
        1,
        &[
            "--enable-admission-plugins=EventRateLimit",
            &format!("--admission-control-config-file={}", config.display()),
        ],
    );
    let event = |ns: &str, name: &str| {
        format!(
            r#"{{"apiVersion": "v1", "kind": "Event", "metadata": {{"name": "{name}", "namespace": "{ns}"}},
              "involvedObject": {{"kind": "Pod", "name": "p", "namespace": "{ns}"}},
              "reason": "Test", "message": "m", "type": "Normal"}}"#
        )
    };
    for i in 0..3 {
        let o = c.kubectl_stdin(&["create", "-f", "-"], &event("default", &format!("e{i}")));
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    // A dry run takes no token.
    let o = c.kubectl_stdin(
        &["create", "--dry-run=server", "-f", "-"],
        &event("default", "dry"),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = c.kubectl_stdin(&["create", "-f", "-"], &event("default", "e3"));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("limit reached on type Namespace for key default"),
        "{err}"
    );
    // Another namespace has its own budget; other kinds are not limited.
    let o = c.kubectl_stdin(&["create", "-f", "-"], &event("kube-system", "e0"));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    c.ok(&["create", "configmap", "not-an-event"]);
}
