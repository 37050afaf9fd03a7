//! Where pods go: affinity and anti-affinity, taints, topology spread, scheduling gates, and
//! the reasons pods that fit nowhere are given.

use std::time::Duration;

use serde_json::json;

use crate::harness::{ApiCluster, Backend, eventually};
use crate::support::{
    Component, add_node, apply, node_of, nodes_of, pod, scheduled_condition, wait_bound,
};

const SEED_DEPLOYMENT: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: example
spec:
  replicas: 2
  selector:
    matchLabels: {app: example}
  template:
    metadata:
      labels: {app: example}
    spec:
      affinity:
        podAntiAffinity:
          preferredDuringSchedulingIgnoredDuringExecution:
          - weight: 100
            podAffinityTerm:
              labelSelector:
                matchLabels: {app: example}
              topologyKey: kubernetes.io/hostname
      containers:
      - name: web
        image: nginx
        resources:
          requests: {cpu: 100m}
"#;

#[test]
fn affinity_anti_affinity_taints_and_reasons() {
    let c = ApiCluster::start(Backend::Keelson, 1);
    add_node(
        &c,
        "n1",
        "4",
        json!({"topology.kubernetes.io/zone": "z1"}),
        json!([]),
    );
    add_node(
        &c,
        "n2",
        "4",
        json!({"topology.kubernetes.io/zone": "z2"}),
        json!([]),
    );
    let _cm = Component::start(
        &c,
        "controller-manager",
        "cm",
        &[
            "--leader-elect=false",
            "--controllers=deployment,replicaset",
        ],
    );
    let sched = Component::scheduler(&c, "sched");

    // seed-000: preferred anti-affinity spreads two replicas over two nodes.
    apply(&c, SEED_DEPLOYMENT);
    eventually(Duration::from_secs(60), "both replicas bound", || {
        nodes_of(&c, "app=example") == ["n1", "n2"]
    });

    // Required anti-affinity: a third replica has nowhere to go and says why.
    let anti = json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": {"matchLabels": {"app": "solo"}}, "topologyKey": "kubernetes.io/hostname"}]}});
    for i in 0..3 {
        apply(
            &c,
            &pod(
                &format!("solo-{i}"),
                json!({"app": "solo"}),
                "100m",
                json!({"affinity": anti}),
            ),
        );
    }
    eventually(Duration::from_secs(60), "two solo pods bound", || {
        nodes_of(&c, "app=solo")
            .iter()
            .filter(|n| !n.is_empty())
            .count()
            == 2
    });
    let pending = (0..3)
        .map(|i| format!("solo-{i}"))
        .find(|p| node_of(&c, p).is_empty())
        .expect("one pending");
    let want = "False/Unschedulable/0/2 nodes are available: 2 node(s) didn't match pod anti-affinity rules. preemption: 0/2 nodes are available: 2 No preemption victims found for incoming pod.";
    eventually(
        Duration::from_secs(30),
        "the Unschedulable condition",
        || scheduled_condition(&c, &pending) == want,
    );
    let events = c.ok(&[
        "get",
        "events",
        "--field-selector",
        &format!("involvedObject.name={pending},reason=FailedScheduling"),
        "-o",
        "jsonpath={.items[*].message}",
    ]);
    assert!(
        events.contains("didn't match pod anti-affinity rules"),
        "{events}"
    );
    assert!(
        sched
            .log_text()
            .matches(&format!("default/{pending}"))
            .count()
            < 20,
        "an unschedulable pod must not be retried in a loop"
    );
    // Deleting a bound replica frees a node: the pending one follows at once.
    let bound = (0..3)
        .map(|i| format!("solo-{i}"))
        .find(|p| !node_of(&c, p).is_empty())
        .unwrap();
    // (No kubelet: delete at once, as one would after the containers stopped.)
    c.ok(&["delete", "pod", &bound, "--grace-period=0", "--force"]);
    wait_bound(&c, &pending);

    // Taints: NoSchedule keeps out pods that do not tolerate it.
    c.ok(&["taint", "node", "n2", "dedicated=gpu:NoSchedule"]);
    for i in 0..4 {
        apply(
            &c,
            &pod(
                &format!("plain-{i}"),
                json!({"app": "plain"}),
                "10m",
                json!({}),
            ),
        );
    }
    eventually(Duration::from_secs(60), "plain pods bound", || {
        nodes_of(&c, "app=plain") == ["n1", "n1", "n1", "n1"]
    });
    apply(
        &c,
        &pod(
            "gpu",
            json!({"app": "gpu"}),
            "10m",
            json!({"nodeSelector": {"topology.kubernetes.io/zone": "z2"},
                   "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}]}),
        ),
    );
    assert_eq!(wait_bound(&c, "gpu"), "n2");
    apply(
        &c,
        &pod(
            "nogpu",
            json!({"app": "x"}),
            "10m",
            json!({"nodeSelector": {"topology.kubernetes.io/zone": "z2"}}),
        ),
    );
    eventually(Duration::from_secs(30), "nogpu reported", || {
        scheduled_condition(&c, "nogpu").contains("1 node(s) didn't match Pod's node affinity/selector, 1 node(s) had untolerated taint {dedicated: gpu}.")
    });
    // Too big for any node.
    apply(&c, &pod("huge", json!({"app": "x"}), "64", json!({})));
    eventually(Duration::from_secs(30), "huge reported", || {
        scheduled_condition(&c, "huge").contains("Insufficient cpu")
    });
    // Removing the taint lets nogpu in (the node update re-queues it).
    c.ok(&["taint", "node", "n2", "dedicated=gpu:NoSchedule-"]);
    assert_eq!(wait_bound(&c, "nogpu"), "n2");
}

#[test]
fn topology_spread_and_scheduling_gates() {
    let c = ApiCluster::start(Backend::Keelson, 1);
    for (n, z) in [("a1", "z1"), ("a2", "z1"), ("a3", "z1"), ("b1", "z2")] {
        add_node(
            &c,
            n,
            "4",
            json!({"topology.kubernetes.io/zone": z}),
            json!([]),
        );
    }
    let _sched = Component::scheduler(&c, "sched");
    let spread = json!({"topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
        "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": "spread"}}}]});
    for i in 0..4 {
        apply(
            &c,
            &pod(
                &format!("s-{i}"),
                json!({"app": "spread"}),
                "10m",
                spread.clone(),
            ),
        );
        wait_bound(&c, &format!("s-{i}"));
    }
    let zones: Vec<String> = nodes_of(&c, "app=spread")
        .iter()
        .map(|n| if n.starts_with('a') { "z1" } else { "z2" }.to_string())
        .collect();
    assert_eq!(zones.iter().filter(|z| *z == "z1").count(), 2, "{zones:?}");
    assert_eq!(zones.iter().filter(|z| *z == "z2").count(), 2, "{zones:?}");

    // A gated pod waits, and says so, until its gates are gone.
    apply(
        &c,
        &pod(
            "gated",
            json!({"app": "g"}),
            "10m",
            json!({"schedulingGates": [{"name": "example.com/quota"}]}),
        ),
    );
    let status = c.ok(&["get", "pod", "gated", "--no-headers"]);
    assert!(status.contains("SchedulingGated"), "{status}");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(node_of(&c, "gated"), "");
    c.ok(&[
        "patch",
        "pod",
        "gated",
        "--type=json",
        "-p",
        r#"[{"op": "remove", "path": "/spec/schedulingGates"}]"#,
    ]);
    wait_bound(&c, "gated");

    // Pods for another scheduler are left alone.
    apply(
        &c,
        &pod(
            "other",
            json!({"app": "o"}),
            "10m",
            json!({"schedulerName": "someone-else"}),
        ),
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(node_of(&c, "other"), "");
}

#[test]
fn a_bad_config_file_fails_start_up_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("sched.yaml");
    std::fs::write(
        &cfg,
        "apiVersion: kubescheduler.config.k8s.io/v1\nkind: KubeSchedulerConfiguration\nprofiles:\n- schedulerName: x\n  plugins:\n    score:\n      enabled:\n      - name: NodeResourcesFitt\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keelson"))
        .args(["scheduler", "--kubeconfig=/nonexistent", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("profiles[0].plugins.score.enabled[0]") && err.contains("NodeResourcesFitt"),
        "{err}"
    );
    std::fs::write(&cfg, "apiVersion: kubescheduler.config.k8s.io/v1\nkind: KubeSchedulerConfiguration\nprofiles:\n- schedulerNam: x\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keelson"))
        .args(["scheduler", "--kubeconfig=/nonexistent", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown field `schedulerNam`"), "{err}");
}
