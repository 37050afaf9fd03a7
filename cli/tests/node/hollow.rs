//! Hollow nodes: a thousand in one process register (each as its own kubelet identity), renew
//! their Leases and stay Ready, and run pods through the same lifecycle with simulated
//! containers.

use std::time::Duration;

use serde_json::json;

use crate::component::Component;
use crate::harness::{ApiCluster, Backend, eventually, free_port};
use crate::support::{READY, apply, field, wait_field};

fn hollow_pod(name: &str, node: &str, policy: &str, annotations: serde_json::Value) -> String {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "annotations": annotations},
        "spec": {"nodeName": node, "restartPolicy": policy,
            "initContainers": [{"name": "init", "image": "busybox"}],
            "containers": [{"name": "c", "image": "nginx",
                "readinessProbe": {"exec": {"command": ["true"]}, "periodSeconds": 1}}]}})
    .to_string()
}

#[test]
fn a_thousand_hollow_nodes_stay_ready_and_run_pods() {
    let c = ApiCluster::start(Backend::Keelson, 1);
    let port = free_port();
    let args: Vec<String> = vec![
        format!("--kubeconfig={}", c.kubeconfig().display()),
        "--hollow".into(),
        "--count=1000".into(),
        format!("--port={port}"),
        "--kube-api-qps=0".into(),
        "--impersonate-nodes".into(),
    ];
    let _fleet = Component::spawn(&c, "node", "hollow", &args, port);
    let ready_count = || {
        c.ok(&[
            "get",
            "nodes",
            "-o",
            "jsonpath={range .items[*]}{.status.conditions[?(@.type==\"Ready\")].status}{\"\\n\"}{end}",
        ])
        .lines()
        .filter(|l| *l == "True")
        .count()
    };
    eventually(Duration::from_secs(180), "1000 Ready nodes", || {
        ready_count() == 1000
    });
    // A node registers Ready and creates its Lease right after, so the last Leases may trail the
    // last Ready nodes by a request or, after a failed create, a renewal interval.
    eventually(Duration::from_secs(60), "one Lease per node", || {
        c.ok(&["get", "leases", "-n", "kube-node-lease", "--no-headers"])
            .lines()
            .count()
            == 1000
    });
    let renew = |n: &str| {
        c.ok(&[
            "get",
            "lease",
            "-n",
            "kube-node-lease",
            n,
            "-o",
            "jsonpath={.spec.renewTime}",
        ])
    };
    let before = renew("hollow-node-500");
    eventually(Duration::from_secs(60), "lease renewed", || {
        renew("hollow-node-500") != before
    });
    assert_eq!(ready_count(), 1000, "still Ready after a renewal round");
    // Each node wrote as its own kubelet (`--impersonate-nodes`): API Priority and Fairness put
    // the writes in the nodes' priority level, as it does real kubelets'.
    let metrics = c.ok(&["get", "--raw", "/metrics"]);
    let as_nodes: f64 = metrics
        .lines()
        .filter(|l| {
            l.starts_with("apiserver_flowcontrol_dispatched_requests_total{")
                && l.contains(r#"priority_level="node-high""#)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(as_nodes >= 2000.0, "{as_nodes} requests as nodes");
    // Pods run the same lifecycle with simulated containers.
    apply(
        &c,
        &hollow_pod("runs", "hollow-node-7", "Always", json!({})),
    );
    apply(
        &c,
        &hollow_pod(
            "fails",
            "hollow-node-8",
            "Never",
            json!({"hollow.keelson.dev/run-for": "1s", "hollow.keelson.dev/exit-code": "3"}),
        ),
    );
    apply(
        &c,
        &hollow_pod(
            "finishes",
            "hollow-node-9",
            "OnFailure",
            json!({"hollow.keelson.dev/run-for": "1s"}),
        ),
    );
    apply(
        &c,
        &hollow_pod(
            "unready",
            "hollow-node-10",
            "Always",
            json!({"hollow.keelson.dev/ready": "false"}),
        ),
    );
    wait_field(&c, "runs", READY, |v| v == "True");
    assert!(field(&c, "runs", "{.status.podIP}").starts_with("10."));
    wait_field(&c, "fails", "{.status.phase}", |v| v == "Failed");
    assert_eq!(
        field(
            &c,
            "fails",
            "{.status.containerStatuses[0].state.terminated.exitCode}"
        ),
        "3"
    );
    wait_field(&c, "finishes", "{.status.phase}", |v| v == "Succeeded");
    wait_field(&c, "unready", "{.status.phase}", |v| v == "Running");
    assert_eq!(field(&c, "unready", READY), "False");
    c.ok(&["delete", "pod", "runs", "--wait=true", "--timeout=60s"]);
}
