//! Garbage collection in all three propagation modes, namespace deletion, default service
//! accounts.

use std::time::Duration;

use crate::harness::{ApiCluster, Backend, eventually};
use crate::support::ControllerManager;

fn names(c: &ApiCluster, args: &[&str]) -> Vec<String> {
    c.ok(args).lines().map(str::to_string).collect()
}

fn deployment_with_pods(c: &ApiCluster, name: &str) {
    c.ok(&[
        "create",
        "deployment",
        name,
        "--image=nginx",
        "--replicas=2",
    ]);
    eventually(Duration::from_secs(60), "pods", || {
        names(
            c,
            &["get", "pods", "-l", &format!("app={name}"), "-o", "name"],
        )
        .len()
            == 2
    });
}

#[test]
fn cascading_deletion_background_foreground_and_orphan() {
    let c = ApiCluster::start(Backend::Keelson, 1);
    let _cm = ControllerManager::start(&c, "controller-manager", "cm0", &["--leader-elect=false"]);

    deployment_with_pods(&c, "bg");
    c.ok(&["delete", "deployment", "bg"]);
    eventually(
        Duration::from_secs(30),
        "background: dependents collected",
        || names(&c, &["get", "rs,pods", "-l", "app=bg", "-o", "name"]).is_empty(),
    );

    deployment_with_pods(&c, "fg");
    // kubectl waits for the object to go, which in the foreground is after its dependents.
    c.ok(&[
        "delete",
        "deployment",
        "fg",
        "--cascade=foreground",
        "--timeout=60s",
    ]);
    assert!(names(&c, &["get", "rs,pods", "-l", "app=fg", "-o", "name"]).is_empty());

    deployment_with_pods(&c, "orph");
    c.ok(&[
        "delete",
        "deployment",
        "orph",
        "--cascade=orphan",
        "--timeout=60s",
    ]);
    let rs = names(&c, &["get", "rs", "-l", "app=orph", "-o", "name"]);
    assert_eq!(rs.len(), 1, "the ReplicaSet is orphaned, not deleted");
    let owners = c.ok(&["get", &rs[0], "-o", "jsonpath={.metadata.ownerReferences}"]);
    assert!(owners.is_empty(), "{owners}");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        names(&c, &["get", "pods", "-l", "app=orph", "-o", "name"]).len(),
        2
    );

    // An object created with an owner that does not exist is collected.
    let cm = r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"dangling",
        "ownerReferences":[{"apiVersion":"v1","kind":"ConfigMap","name":"nobody","uid":"00000000-0000-0000-0000-000000000001"}]}}"#;
    c.kubectl_stdin(&["apply", "-f", "-"], cm);
    eventually(
        Duration::from_secs(30),
        "dangling dependent collected",
        || {
            !c.kubectl(&["get", "configmap", "dangling"])
                .status
                .success()
        },
    );
}

#[test]
fn namespace_deletion_empties_it_and_default_service_accounts_appear() {
    let c = ApiCluster::start(Backend::Keelson, 1);
    let ca = format!("--root-ca-file={}", c.pki.ca.display());
    let _cm = ControllerManager::start(
        &c,
        "controller-manager",
        "cm0",
        &["--leader-elect=false", &ca],
    );
    c.ok(&["create", "namespace", "scratch"]);
    eventually(
        Duration::from_secs(60),
        "kube-root-ca.crt published",
        || {
            let out = c.kubectl(&[
                "get",
                "configmap",
                "kube-root-ca.crt",
                "-n",
                "scratch",
                "-o",
                "jsonpath={.data.ca\\.crt}",
            ]);
            String::from_utf8_lossy(&out.stdout).contains("BEGIN CERTIFICATE")
        },
    );
    eventually(Duration::from_secs(60), "default service account", || {
        c.kubectl(&["get", "serviceaccount", "default", "-n", "scratch"])
            .status
            .success()
    });
    c.ok(&["delete", "serviceaccount", "default", "-n", "scratch"]);
    eventually(
        Duration::from_secs(30),
        "default service account re-created",
        || {
            c.kubectl(&["get", "serviceaccount", "default", "-n", "scratch"])
                .status
                .success()
        },
    );
    c.ok(&[
        "create",
        "configmap",
        "cfg",
        "-n",
        "scratch",
        "--from-literal=a=b",
    ]);
    c.ok(&[
        "create",
        "secret",
        "generic",
        "s",
        "-n",
        "scratch",
        "--from-literal=a=b",
    ]);
    c.ok(&[
        "create",
        "deployment",
        "web",
        "-n",
        "scratch",
        "--image=nginx",
        "--replicas=2",
    ]);
    eventually(Duration::from_secs(60), "pods", || {
        names(&c, &["get", "pods", "-n", "scratch", "-o", "name"]).len() == 2
    });
    // kubectl waits until the namespace is gone.
    c.ok(&["delete", "namespace", "scratch", "--timeout=60s"]);
    let out = c.kubectl(&["get", "namespace", "scratch"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("NotFound"));
    // Creating into it again starts from nothing.
    c.ok(&["create", "namespace", "scratch"]);
    assert!(
        names(
            &c,
            &[
                "get",
                "configmaps,secrets,deployments",
                "-n",
                "scratch",
                "-o",
                "name"
            ]
        )
        .iter()
        .all(|n| n.contains("kube-root-ca") || n.is_empty())
    );
}

#[test]
fn resource_quota_status_counts_usage() {
    let c = ApiCluster::start(Backend::Keelson, 1);
    let _cm = ControllerManager::start(&c, "controller-manager", "cm0", &["--leader-elect=false"]);
    c.ok(&["create", "namespace", "team"]);
    c.ok(&[
        "create",
        "quota",
        "q",
        "-n",
        "team",
        "--hard=pods=10,requests.cpu=4,requests.memory=8Gi,configmaps=5,count/deployments.apps=3",
    ]);
    let pod = |name: &str| {
        format!(
            r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"{name}","namespace":"team"}},
            "spec":{{"containers":[{{"name":"c","image":"nginx","resources":{{"requests":{{"cpu":"250m","memory":"256Mi"}}}}}}]}}}}"#
        )
    };
    c.kubectl_stdin(&["apply", "-f", "-"], &pod("a"));
    c.kubectl_stdin(&["apply", "-f", "-"], &pod("b"));
    c.ok(&[
        "create",
        "configmap",
        "cfg",
        "-n",
        "team",
        "--from-literal=a=b",
    ]);
    c.ok(&[
        "create",
        "deployment",
        "web",
        "-n",
        "team",
        "--image=nginx",
        "--replicas=0",
    ]);
    let used = |k: &str| {
        c.ok(&[
            "get",
            "quota",
            "q",
            "-n",
            "team",
            "-o",
            &format!("jsonpath={{.status.used.{}}}", k.replace('.', "\\.")),
        ])
    };
    eventually(Duration::from_secs(60), "pod usage", || {
        used("pods") == "2" && used("requests.cpu") == "500m" && used("requests.memory") == "512Mi"
    });
    // The periodic resync (5 m) is not waited for: a quota change triggers a recount.
    c.ok(&["patch", "quota", "q", "-n", "team", "--type=merge", "-p", r#"{"spec":{"hard":{"pods":"11","configmaps":"5","requests.cpu":"4","requests.memory":"8Gi","count/deployments.apps":"3"}}}"#]);
    eventually(Duration::from_secs(60), "object counts", || {
        // kube-root-ca.crt is not created by keelson yet, so one ConfigMap.
        used("configmaps") == "1" && used("count/deployments.apps") == "1"
    });
    let hard = c.ok(&[
        "get",
        "quota",
        "q",
        "-n",
        "team",
        "-o",
        "jsonpath={.status.hard.pods}",
    ]);
    assert_eq!(hard, "11");
}

#[test]
fn claims_and_volumes_in_use_are_protected_until_released() {
    let c = ApiCluster::start_with(
        Backend::Keelson,
        1,
        &["--enable-admission-plugins=StorageObjectInUseProtection"],
    );
    let _cm = ControllerManager::start(
        &c,
        "controller-manager",
        "cm0",
        &[
            "--leader-elect=false",
            "--controllers=pvc-protection,pv-protection",
        ],
    );
    let get = |args: &[&str]| {
        let o = c.kubectl(args);
        o.status
            .success()
            .then(|| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    c.kubectl_stdin(
        &["apply", "-f", "-"],
        r#"{"apiVersion":"v1","kind":"PersistentVolumeClaim","metadata":{"name":"db"},
        "spec":{"accessModes":["ReadWriteOnce"],"resources":{"requests":{"storage":"1Gi"}}}}"#,
    );
    assert_eq!(
        c.ok(&["get", "pvc", "db", "-o", "jsonpath={.metadata.finalizers}"]),
        r#"["kubernetes.io/pvc-protection"]"#
    );
    // A scheduled pod uses the claim (no kubelet here: it stays Pending on its node).
    c.kubectl_stdin(
        &["apply", "-f", "-"],
        r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"user"},
        "spec":{"nodeName":"n1","containers":[{"name":"c","image":"nginx"}],
        "volumes":[{"name":"data","persistentVolumeClaim":{"claimName":"db"}}]}}"#,
    );
    c.ok(&["delete", "pvc", "db", "--wait=false"]);
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        get(&[
            "get",
            "pvc",
            "db",
            "-o",
            "jsonpath={.metadata.deletionTimestamp}"
        ])
        .is_some_and(|t| !t.is_empty()),
        "the claim waits for its pod"
    );
    c.ok(&["delete", "pod", "user", "--grace-period=0", "--force"]);
    eventually(Duration::from_secs(30), "the claim gone", || {
        get(&["get", "pvc", "db", "-o", "name"]).is_none()
    });

    // A volume waits while it is Bound to a claim that exists; the claim's deletion frees it.
    c.kubectl_stdin(
        &["apply", "-f", "-"],
        r#"{"apiVersion":"v1","kind":"PersistentVolumeClaim","metadata":{"name":"held"},
        "spec":{"accessModes":["ReadWriteOnce"],"resources":{"requests":{"storage":"1Gi"}},
        "volumeName":"pv1"}}"#,
    );
    c.kubectl_stdin(
        &["apply", "-f", "-"],
        r#"{"apiVersion":"v1","kind":"PersistentVolume","metadata":{"name":"pv1"},
        "spec":{"capacity":{"storage":"1Gi"},"accessModes":["ReadWriteOnce"],
        "hostPath":{"path":"/tmp/pv1"},"claimRef":{"namespace":"default","name":"held"}}}"#,
    );
    assert_eq!(
        c.ok(&["get", "pv", "pv1", "-o", "jsonpath={.metadata.finalizers}"]),
        r#"["kubernetes.io/pv-protection"]"#
    );
    c.ok(&[
        "patch",
        "pv",
        "pv1",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"phase":"Bound"}}"#,
    ]);
    c.ok(&["delete", "pv", "pv1", "--wait=false"]);
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        get(&["get", "pv", "pv1", "-o", "name"]).is_some(),
        "a bound volume stays"
    );
    c.ok(&["delete", "pvc", "held", "--wait=false"]);
    eventually(Duration::from_secs(30), "the volume gone", || {
        get(&["get", "pv", "pv1", "-o", "name"]).is_none()
    });
}
