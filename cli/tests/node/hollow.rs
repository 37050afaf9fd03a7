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

/// A hollow node fails while labelled `hollow.keelson.dev/down-for`: its kubelet does nothing
/// (a deleted pod stays terminating, a new pod does not start) while its neighbours carry on;
/// it comes back when the label is removed, or by itself after the duration (and removes the
/// label). A malformed label fails nothing.
#[test]
fn a_labelled_hollow_node_fails_and_comes_back() {
    let c = ApiCluster::start(Backend::Keelson, 1);
    let port = free_port();
    let args: Vec<String> = vec![
        format!("--kubeconfig={}", c.kubeconfig().display()),
        "--hollow".into(),
        "--count=3".into(),
        format!("--port={port}"),
    ];
    let _fleet = Component::spawn(&c, "node", "hollow", &args, port);
    let pod = |name: &str, node: &str| {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "nginx"}]}})
        .to_string()
    };
    crate::support::wait_node_ready(&c, "hollow-node-1");
    apply(&c, &pod("before", "hollow-node-1"));
    wait_field(&c, "before", "{.status.phase}", |v| v == "Running");
    let label = "hollow.keelson.dev/down-for";
    c.ok(&["label", "node", "hollow-node-1", &format!("{label}=10m")]);
    // (A watch event is processed in milliseconds.)
    std::thread::sleep(Duration::from_secs(2));
    c.ok(&["delete", "pod", "before", "--wait=false"]);
    apply(&c, &pod("during", "hollow-node-1"));
    apply(&c, &pod("neighbour", "hollow-node-2"));
    wait_field(&c, "neighbour", "{.status.phase}", |v| v == "Running");
    std::thread::sleep(Duration::from_secs(3));
    assert_ne!(
        field(&c, "before", "{.metadata.deletionTimestamp}"),
        "",
        "the deleted pod stays terminating on the failed node"
    );
    assert_eq!(
        field(&c, "during", "{.status.containerStatuses}"),
        "",
        "no container of the new pod started on the failed node"
    );

    // Removing the label brings the node back at once: it finishes what it missed.
    c.ok(&["label", "node", "hollow-node-1", &format!("{label}-")]);
    wait_field(&c, "during", "{.status.phase}", |v| v == "Running");
    eventually(
        Duration::from_secs(60),
        "the terminating pod deleted",
        || !c.kubectl(&["get", "pod", "before"]).status.success(),
    );

    // A failure for a duration ends by itself, and the node removes the label.
    c.ok(&["label", "node", "hollow-node-1", &format!("{label}=3s")]);
    let labelled = || {
        c.ok(&[
            "get",
            "node",
            "hollow-node-1",
            "-o",
            "jsonpath={.metadata.labels.hollow\\.keelson\\.dev/down-for}",
        ])
    };
    eventually(
        Duration::from_secs(60),
        "the node removed its label",
        || labelled().is_empty(),
    );
    apply(&c, &pod("after", "hollow-node-1"));
    wait_field(&c, "after", "{.status.phase}", |v| v == "Running");

    // A malformed duration fails nothing.
    c.ok(&["label", "node", "hollow-node-2", &format!("{label}=soon")]);
    std::thread::sleep(Duration::from_secs(2));
    apply(&c, &pod("still", "hollow-node-2"));
    wait_field(&c, "still", "{.status.phase}", |v| v == "Running");
}
