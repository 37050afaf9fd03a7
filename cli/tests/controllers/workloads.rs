//! Deployments and ReplicaSets through kubectl: rollout, history, undo, scaling, self-healing.

use std::time::Duration;

use crate::harness::{ApiCluster, Backend, eventually};
use crate::support::{ControllerManager, client, fake_kubelet};

fn lines(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_string).collect()
}

/// Pod names in `default` with label `app=<app>`, not being deleted.
fn pods(c: &ApiCluster, app: &str) -> Vec<String> {
    lines(&c.ok(&[
        "get",
        "pods",
        "-l",
        &format!("app={app}"),
        "-o",
        "jsonpath={range .items[*]}{.metadata.name}={.metadata.deletionTimestamp} {end}",
    ]))
    .into_iter()
    .filter_map(|p| p.strip_suffix('=').map(str::to_string))
    .collect()
}

fn images(c: &ApiCluster, app: &str) -> Vec<String> {
    let mut v = lines(&c.ok(&[
        "get",
        "pods",
        "-l",
        &format!("app={app}"),
        "-o",
        "jsonpath={range .items[*]}{.spec.containers[0].image} {end}",
    ]));
    v.sort();
    v.dedup();
    v
}

fn rollout_ok(c: &ApiCluster, what: &str) {
    let out = c.ok(&["rollout", "status", what, "--timeout=90s"]);
    assert!(
        // A StatefulSet's partition (0 by default, as upstream's) makes kubectl say
        // "partitioned roll out complete".
        out.contains("successfully rolled out")
            || out.contains("rolling update complete")
            || out.contains("partitioned roll out complete"),
        "{out}\n{}",
        c.logs()
    );
}

#[test]
fn deployment_rollout_history_undo_scale_and_self_healing() {
    let c = ApiCluster::start(Backend::Keelson, 1);
    let _cm = ControllerManager::start(&c, "controller-manager", "cm0", &["--leader-elect=false"]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = rt.block_on(client(&c.kubeconfig()));
    let kubelet = {
        let _in_runtime = rt.enter();
        fake_kubelet(client, "default")
    };

    c.ok(&[
        "create",
        "deployment",
        "web",
        "--image=nginx:1.0",
        "--replicas=3",
    ]);
    rollout_ok(&c, "deployment/web");
    assert_eq!(pods(&c, "web").len(), 3);
    let rs = lines(&c.ok(&["get", "rs", "-l", "app=web", "-o", "name"]));
    assert_eq!(rs.len(), 1, "{rs:?}");
    let revision = c.ok(&[
        "get",
        &rs[0],
        "-o",
        "jsonpath={.metadata.annotations.deployment\\.kubernetes\\.io/revision}",
    ]);
    assert_eq!(revision, "1");
    let owner = c.ok(&[
        "get",
        &rs[0],
        "-o",
        "jsonpath={.metadata.ownerReferences[0].kind}",
    ]);
    assert_eq!(owner, "Deployment");

    // A new template rolls out as a second ReplicaSet; the old one ends at zero.
    c.ok(&["set", "image", "deployment/web", "nginx=nginx:2.0"]);
    rollout_ok(&c, "deployment/web");
    eventually(Duration::from_secs(60), "only new pods", || {
        images(&c, "web") == ["nginx:2.0"] && pods(&c, "web").len() == 3
    });
    let rs = lines(&c.ok(&[
        "get",
        "rs",
        "-l",
        "app=web",
        "-o",
        "jsonpath={range .items[*]}{.spec.replicas}/{.metadata.annotations.deployment\\.kubernetes\\.io/revision} {end}",
    ]));
    let mut rs_sorted = rs.clone();
    rs_sorted.sort();
    assert_eq!(rs_sorted, ["0/1", "3/2"], "{rs:?}");
    let history = c.ok(&["rollout", "history", "deployment/web"]);
    assert!(history.contains('1') && history.contains('2'), "{history}");
    let conditions = c.ok(&[
        "get",
        "deployment",
        "web",
        "-o",
        "jsonpath={range .status.conditions[*]}{.type}={.status}/{.reason} {end}",
    ]);
    assert!(
        conditions.contains("Available=True/MinimumReplicasAvailable"),
        "{conditions}"
    );
    assert!(
        conditions.contains("Progressing=True/NewReplicaSetAvailable"),
        "{conditions}"
    );

    // Undo goes back to the first template, which becomes revision 3.
    c.ok(&["rollout", "undo", "deployment/web"]);
    rollout_ok(&c, "deployment/web");
    eventually(
        Duration::from_secs(30),
        "pods back on the first image",
        || images(&c, "web") == ["nginx:1.0"] && pods(&c, "web").len() == 3,
    );
    let revs = c.ok(&[
        "get",
        "rs",
        "-l",
        "app=web",
        "-o",
        "jsonpath={range .items[*]}{.spec.template.spec.containers[0].image}={.metadata.annotations.deployment\\.kubernetes\\.io/revision} {end}",
    ]);
    assert!(revs.contains("nginx:1.0=3"), "{revs}");
    // The first ReplicaSet is reused, not a copy made (the template kubectl sent as protobuf
    // stored as the JSON one would be).
    assert_eq!(revs.split_whitespace().count(), 2, "{revs}");

    // Scaling, and a deleted pod is replaced.
    c.ok(&["scale", "deployment/web", "--replicas=5"]);
    rollout_ok(&c, "deployment/web");
    eventually(Duration::from_secs(60), "5 pods", || {
        pods(&c, "web").len() == 5
    });
    let before = pods(&c, "web");
    c.ok(&["delete", "pod", &before[0], "--wait=false"]);
    eventually(Duration::from_secs(60), "the deleted pod replaced", || {
        let now = pods(&c, "web");
        now.len() == 5 && !now.contains(&before[0])
    });
    c.ok(&["scale", "deployment/web", "--replicas=2"]);
    eventually(Duration::from_secs(60), "scaled down to 2", || {
        pods(&c, "web").len() == 2
    });
    let ready = c.ok(&[
        "get",
        "deployment",
        "web",
        "-o",
        "jsonpath={.status.readyReplicas}",
    ]);
    eventually(Duration::from_secs(60), "status shows 2 ready", || {
        c.ok(&[
            "get",
            "deployment",
            "web",
            "-o",
            "jsonpath={.status.readyReplicas}",
        ]) == "2"
    });
    let _ = ready;

    // Recreate: old pods go before new ones come.
    c.ok(&[
        "create",
        "deployment",
        "batch",
        "--image=busybox:1",
        "--replicas=2",
    ]);
    c.ok(&[
        "patch",
        "deployment",
        "batch",
        "--type=merge",
        "-p",
        r#"{"spec":{"strategy":{"type":"Recreate","rollingUpdate":null}}}"#,
    ]);
    rollout_ok(&c, "deployment/batch");
    c.ok(&["set", "image", "deployment/batch", "busybox=busybox:2"]);
    rollout_ok(&c, "deployment/batch");
    eventually(Duration::from_secs(60), "recreated pods", || {
        images(&c, "batch") == ["busybox:2"] && pods(&c, "batch").len() == 2
    });
    kubelet.abort();
}

#[test]
fn replicaset_adopts_orphans_and_releases_mismatches() {
    let c = ApiCluster::start(Backend::Keelson, 1);
    let _cm = ControllerManager::start(&c, "controller-manager", "cm0", &["--leader-elect=false"]);
    // An orphan pod matching the selector is adopted, so only two more are created.
    c.ok(&["run", "orphan", "--image=nginx", "--labels=app=frontend"]);
    let rs = r#"{"apiVersion":"apps/v1","kind":"ReplicaSet","metadata":{"name":"frontend"},
        "spec":{"replicas":3,"selector":{"matchLabels":{"app":"frontend"}},
        "template":{"metadata":{"labels":{"app":"frontend"}},"spec":{"containers":[{"name":"c","image":"nginx"}]}}}}"#;
    c.kubectl_stdin(&["apply", "-f", "-"], rs);
    eventually(Duration::from_secs(60), "3 pods", || {
        pods(&c, "frontend").len() == 3
    });
    let owner = c.ok(&[
        "get",
        "pod",
        "orphan",
        "-o",
        "jsonpath={.metadata.ownerReferences[0].name}",
    ]);
    assert_eq!(owner, "frontend");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(pods(&c, "frontend").len(), 3, "no extra pods");
    let status = c.ok(&["get", "rs", "frontend", "-o", "jsonpath={.status.replicas}"]);
    assert_eq!(status, "3");

    // A pod relabelled out of the selector is released and replaced.
    c.ok(&["label", "pod", "orphan", "app=elsewhere", "--overwrite"]);
    eventually(Duration::from_secs(60), "released and replaced", || {
        let owner = c.ok(&[
            "get",
            "pod",
            "orphan",
            "-o",
            "jsonpath={.metadata.ownerReferences}",
        ]);
        owner.is_empty() && pods(&c, "frontend").len() == 3
    });

    // A ReplicationController gets the same treatment.
    let rc = r#"{"apiVersion":"v1","kind":"ReplicationController","metadata":{"name":"legacy"},
        "spec":{"replicas":2,"selector":{"app":"legacy"},
        "template":{"metadata":{"labels":{"app":"legacy"}},"spec":{"containers":[{"name":"c","image":"nginx"}]}}}}"#;
    c.kubectl_stdin(&["apply", "-f", "-"], rc);
    eventually(Duration::from_secs(60), "2 rc pods", || {
        pods(&c, "legacy").len() == 2
    });
    let kind = c.ok(&[
        "get",
        "pods",
        "-l",
        "app=legacy",
        "-o",
        "jsonpath={.items[0].metadata.ownerReferences[0].kind}",
    ]);
    assert_eq!(kind, "ReplicationController");
    c.ok(&["scale", "rc", "legacy", "--replicas=3"]);
    eventually(Duration::from_secs(60), "3 rc pods and status", || {
        pods(&c, "legacy").len() == 3
            && c.ok(&["get", "rc", "legacy", "-o", "jsonpath={.status.replicas}"]) == "3"
    });

    // Scale to zero removes every owned pod.
    c.ok(&["scale", "rs", "frontend", "--replicas=0"]);
    eventually(Duration::from_secs(60), "no pods", || {
        pods(&c, "frontend").is_empty()
    });
    assert!(
        c.ok(&["get", "pod", "orphan", "-o", "name"])
            .contains("orphan")
    );
}

#[test]
fn statefulset_orders_pods_claims_volumes_and_rolls_back_to_front() {
    let c = ApiCluster::start(Backend::Keelson, 1);
    let _cm = ControllerManager::start(&c, "controller-manager", "cm0", &["--leader-elect=false"]);
    let sts = r#"{"apiVersion":"apps/v1","kind":"StatefulSet","metadata":{"name":"db"},
        "spec":{"replicas":3,"serviceName":"db","selector":{"matchLabels":{"app":"db"}},
        "persistentVolumeClaimRetentionPolicy":{"whenScaled":"Delete"},
        "template":{"metadata":{"labels":{"app":"db"}},"spec":{"containers":[{"name":"db","image":"postgres:16"}]}},
        "volumeClaimTemplates":[{"metadata":{"name":"data"},"spec":{"accessModes":["ReadWriteOnce"],
        "resources":{"requests":{"storage":"1Gi"}}}}]}}"#;
    c.kubectl_stdin(&["apply", "-f", "-"], sts);
    // No kubelet yet: db-0 never becomes ready, so db-1 is not created.
    eventually(Duration::from_secs(60), "db-0", || {
        pods(&c, "db") == ["db-0"]
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        pods(&c, "db"),
        ["db-0"],
        "OrderedReady created past an unready pod"
    );
    let claim = c.ok(&[
        "get",
        "pod",
        "db-0",
        "-o",
        "jsonpath={.spec.volumes[?(@.name==\"data\")].persistentVolumeClaim.claimName}",
    ]);
    assert_eq!(claim, "data-db-0");
    assert!(c.kubectl(&["get", "pvc", "data-db-0"]).status.success());
    let host = c.ok(&[
        "get",
        "pod",
        "db-0",
        "-o",
        "jsonpath={.spec.hostname}.{.spec.subdomain}",
    ]);
    assert_eq!(host, "db-0.db");

    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = rt.block_on(client(&c.kubeconfig()));
    let kubelet = {
        let _in_runtime = rt.enter();
        fake_kubelet(client, "default")
    };
    rollout_ok(&c, "statefulset/db");
    let mut all = pods(&c, "db");
    all.sort();
    assert_eq!(all, ["db-0", "db-1", "db-2"]);

    // A new template rolls from the highest ordinal down; status shows one revision at the end.
    c.ok(&["set", "image", "statefulset/db", "db=postgres:17"]);
    rollout_ok(&c, "statefulset/db");
    eventually(Duration::from_secs(60), "all pods on the new image", || {
        images(&c, "db") == ["postgres:17"] && pods(&c, "db").len() == 3
    });
    let revs = c.ok(&[
        "get",
        "statefulset",
        "db",
        "-o",
        "jsonpath={.status.currentRevision}={.status.updateRevision}",
    ]);
    let (cur, upd) = revs.split_once('=').unwrap();
    assert_eq!(cur, upd, "{revs}");
    let history = c.ok(&["rollout", "history", "statefulset/db"]);
    assert!(history.contains('2'), "{history}");

    // Scale down removes the highest ordinals, and (whenScaled: Delete) their claims, which
    // the pods being removed owned.
    c.ok(&["scale", "statefulset/db", "--replicas=1"]);
    eventually(Duration::from_secs(60), "only db-0 left", || {
        pods(&c, "db") == ["db-0"]
    });
    let claims = || {
        c.ok(&[
            "get",
            "pvc",
            "-o",
            "jsonpath={range .items[*]}{.metadata.name}:{.metadata.ownerReferences[*].kind} {end}",
        ])
    };
    eventually(
        Duration::from_secs(60),
        "the scaled-away claims gone",
        || claims().trim() == "data-db-0:",
    );
    // whenDeleted: Delete makes the set own the claims; deleting the set deletes them.
    c.ok(&[
        "patch",
        "statefulset/db",
        "--type=merge",
        "-p",
        r#"{"spec":{"persistentVolumeClaimRetentionPolicy":{"whenDeleted":"Delete"}}}"#,
    ]);
    eventually(Duration::from_secs(30), "the set owns data-db-0", || {
        claims().trim() == "data-db-0:StatefulSet"
    });
    c.ok(&["delete", "statefulset/db"]);
    eventually(
        Duration::from_secs(60),
        "data-db-0 deleted with the set",
        || claims().trim().is_empty(),
    );
    kubelet.abort();
}

#[test]
fn daemonset_runs_one_pod_per_eligible_node_and_rolls() {
    let c = ApiCluster::start(Backend::Keelson, 1);
    let _cm = ControllerManager::start(&c, "controller-manager", "cm0", &["--leader-elect=false"]);
    for (name, extra) in [
        ("n1", r#""labels":{"role":"web"}"#),
        ("n2", r#""labels":{}"#),
        ("n3", r#""labels":{}"#),
    ] {
        let taints = if name == "n3" {
            r#","spec":{"taints":[{"key":"dedicated","value":"db","effect":"NoSchedule"}]}"#
        } else {
            ""
        };
        let node = format!(
            r#"{{"apiVersion":"v1","kind":"Node","metadata":{{"name":"{name}",{extra}}}{taints}}}"#
        );
        c.kubectl_stdin(&["apply", "-f", "-"], &node);
    }
    let ds = r#"{"apiVersion":"apps/v1","kind":"DaemonSet","metadata":{"name":"agent"},
        "spec":{"selector":{"matchLabels":{"app":"agent"}},
        "template":{"metadata":{"labels":{"app":"agent"}},"spec":{"containers":[{"name":"agent","image":"agent:1"}]}}}}"#;
    c.kubectl_stdin(&["apply", "-f", "-"], ds);
    let targets = || {
        let mut v: Vec<String> = c
            .ok(&[
                "get",
                "pods",
                "-l",
                "app=agent",
                "-o",
                "jsonpath={range .items[*]}{.spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchFields[0].values[0]}={.metadata.deletionTimestamp} {end}",
            ])
            .split_whitespace()
            .filter_map(|s| s.strip_suffix('=').map(str::to_string))
            .collect();
        v.sort();
        v
    };
    // n3's taint is not tolerated.
    eventually(Duration::from_secs(60), "pods for n1 and n2", || {
        targets() == ["n1", "n2"]
    });
    let desired = c.ok(&[
        "get",
        "ds",
        "agent",
        "-o",
        "jsonpath={.status.desiredNumberScheduled}",
    ]);
    assert_eq!(desired, "2");

    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = rt.block_on(client(&c.kubeconfig()));
    let kubelet = {
        let _in_runtime = rt.enter();
        fake_kubelet(client, "default")
    };
    rollout_ok(&c, "daemonset/agent");
    c.ok(&["set", "image", "daemonset/agent", "agent=agent:2"]);
    rollout_ok(&c, "daemonset/agent");
    eventually(Duration::from_secs(60), "new image everywhere", || {
        images(&c, "agent") == ["agent:2"] && targets() == ["n1", "n2"]
    });
    // maxSurge: each node's new pod starts beside the old one.
    c.ok(&[
        "patch",
        "ds",
        "agent",
        "--type=merge",
        "-p",
        r#"{"spec":{"updateStrategy":{"rollingUpdate":{"maxSurge":1,"maxUnavailable":0}},"template":{"spec":{"containers":[{"name":"agent","image":"agent:3"}]}}}}"#,
    ]);
    rollout_ok(&c, "daemonset/agent");
    eventually(Duration::from_secs(60), "agent:3 everywhere", || {
        images(&c, "agent") == ["agent:3"] && targets() == ["n1", "n2"]
    });

    // A node selector narrows it to n1.
    c.ok(&[
        "patch",
        "ds",
        "agent",
        "--type=merge",
        "-p",
        r#"{"spec":{"template":{"spec":{"nodeSelector":{"role":"web"}}}}}"#,
    ]);
    eventually(Duration::from_secs(60), "only n1", || targets() == ["n1"]);
    kubelet.abort();
}

#[test]
fn controllers_act_as_their_own_service_accounts() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("sa.key");
    std::fs::write(&key, rcgen::KeyPair::generate().unwrap().serialize_pem()).unwrap();
    let policy = dir.path().join("audit.yaml");
    std::fs::write(
        &policy,
        "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n- level: Metadata\n  resources: [{group: apps, resources: [replicasets, deployments]}]\n- level: None\n",
    )
    .unwrap();
    let audit = dir.path().join("audit.log");
    let c = ApiCluster::start_with(
        Backend::Keelson,
        1,
        &[
            "--authorization-mode=Node,RBAC",
            "--service-account-issuer=https://kubernetes.default.svc",
            &format!("--service-account-signing-key-file={}", key.display()),
            &format!("--audit-policy-file={}", policy.display()),
            &format!("--audit-log-path={}", audit.display()),
        ],
    );
    // The bootstrap roles must be in force first (before that, RBAC refuses everyone).
    eventually(Duration::from_secs(30), "the bootstrap RBAC policy", || {
        let o = c.kubectl(&[
            "auth",
            "can-i",
            "update",
            "deployments",
            "--as=system:serviceaccount:kube-system:deployment-controller",
        ]);
        String::from_utf8_lossy(&o.stdout).trim() == "yes"
    });
    let _cm = ControllerManager::start(
        &c,
        "controller-manager",
        "cm0",
        &[
            "--leader-elect=false",
            "--controllers=deployment,replicaset",
            "--use-service-account-credentials",
        ],
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = rt.block_on(client(&c.kubeconfig()));
    let _kubelet = {
        let _in_runtime = rt.enter();
        fake_kubelet(client, "default")
    };
    eventually(Duration::from_secs(30), "the controllers' accounts", || {
        c.kubectl(&["get", "sa", "-n", "kube-system", "deployment-controller"])
            .status
            .success()
            && c.kubectl(&["get", "sa", "-n", "kube-system", "replicaset-controller"])
                .status
                .success()
    });
    c.ok(&[
        "create",
        "deployment",
        "web",
        "--image=nginx:1.0",
        "--replicas=2",
    ]);
    rollout_ok(&c, "deployment/web");
    assert_eq!(pods(&c, "web").len(), 2);
    // Under RBAC, each write came from the controller's own account: the ReplicaSet from the
    // deployment controller, the Deployment's revision from it too.
    let events: Vec<serde_json::Value> = std::fs::read_to_string(&audit)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let by = |verb: &str, resource: &str| -> Vec<String> {
        events
            .iter()
            .filter(|e| e["verb"] == verb && e["objectRef"]["resource"] == resource)
            .map(|e| e["user"]["username"].as_str().unwrap_or("").to_string())
            .collect()
    };
    assert_eq!(
        by("create", "replicasets"),
        ["system:serviceaccount:kube-system:deployment-controller"]
    );
    assert!(
        by("update", "deployments")
            .iter()
            .all(|u| u == "system:serviceaccount:kube-system:deployment-controller"),
        "{:?}",
        by("update", "deployments")
    );
    // Nothing was forbidden (a conflict, retried, may happen).
    let refused: Vec<String> = events
        .iter()
        .filter(|e| e["responseStatus"]["code"] == 403)
        .map(|e| {
            format!(
                "{} {} {}",
                e["user"]["username"], e["verb"], e["requestURI"]
            )
        })
        .collect();
    assert!(refused.is_empty(), "{refused:?}");
}
