//! Node lifecycle: a node that stops posting status becomes Unknown, is tainted, and its pods
//! are evicted by their tolerations; node IPAM; pod GC; TTL after finished.

use std::time::Duration;

use crate::harness::{ApiCluster, Backend, eventually};
use crate::support::ControllerManager;

fn now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn pod_on(name: &str, node: &str, tolerations: &str) -> String {
    format!(
        r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"{name}"}},
        "spec":{{"nodeName":"{node}","tolerations":{tolerations},
        "containers":[{{"name":"c","image":"nginx"}}]}}}}"#
    )
}

#[test]
fn unreachable_node_is_tainted_and_its_pods_evicted_by_toleration() {
    let c = ApiCluster::start(Backend::Keelson, 1);
    let _cm = ControllerManager::start(
        &c,
        "controller-manager",
        "cm0",
        &[
            "--leader-elect=false",
            "--node-monitor-period=500ms",
            "--node-monitor-grace-period=3s",
            "--node-startup-grace-period=3s",
            "--allocate-node-cidrs",
            "--cluster-cidr=10.244.0.0/16",
            "--terminated-pod-gc-threshold=1",
        ],
    );
    let node = format!(
        r#"{{"apiVersion":"v1","kind":"Node","metadata":{{"name":"n1"}},
        "status":{{"conditions":[{{"type":"Ready","status":"True","reason":"KubeletReady",
        "lastHeartbeatTime":"{t}","lastTransitionTime":"{t}"}}]}}}}"#,
        t = now()
    );
    c.kubectl_stdin(&["apply", "-f", "-"], &node);
    eventually(Duration::from_secs(60), "a pod CIDR", || {
        c.ok(&["get", "node", "n1", "-o", "jsonpath={.spec.podCIDR}"]) == "10.244.0.0/24"
    });
    c.kubectl_stdin(
        &["apply", "-f", "-"],
        &pod_on("default-tolerations", "n1", "[]"),
    );
    c.kubectl_stdin(
        &["apply", "-f", "-"],
        &pod_on(
            "short",
            "n1",
            r#"[{"key":"node.kubernetes.io/unreachable","operator":"Exists","effect":"NoExecute","tolerationSeconds":2}]"#,
        ),
    );
    c.kubectl_stdin(
        &["apply", "-f", "-"],
        &pod_on("forever", "n1", r#"[{"operator":"Exists"}]"#),
    );
    // The apiserver gave the first pod the 300 s default tolerations.
    let t = c.ok(&[
        "get",
        "pod",
        "default-tolerations",
        "-o",
        "jsonpath={.spec.tolerations[*].tolerationSeconds}",
    ]);
    assert_eq!(t, "300 300");

    // No heartbeat: Unknown, tainted.
    eventually(Duration::from_secs(60), "node Unknown and tainted", || {
        let ready = c.ok(&[
            "get",
            "node",
            "n1",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
        ]);
        let taints = c.ok(&[
            "get",
            "node",
            "n1",
            "-o",
            "jsonpath={range .spec.taints[*]}{.key}:{.effect} {end}",
        ]);
        ready == "Unknown"
            && taints.contains("node.kubernetes.io/unreachable:NoExecute")
            && taints.contains("node.kubernetes.io/unreachable:NoSchedule")
    });
    let deleting = |pod: &str| {
        let out = c.kubectl(&[
            "get",
            "pod",
            pod,
            "-o",
            "jsonpath={.metadata.deletionTimestamp}",
        ]);
        !out.status.success() || !String::from_utf8_lossy(&out.stdout).is_empty()
    };
    eventually(
        Duration::from_secs(30),
        "short-toleration pod evicted",
        || deleting("short"),
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        !deleting("default-tolerations"),
        "300 s toleration not honoured"
    );
    assert!(!deleting("forever"));

    // The kubelet comes back: Ready again, taints removed.
    let status = format!(
        r#"{{"status":{{"conditions":[{{"type":"Ready","status":"True","reason":"KubeletReady",
        "lastHeartbeatTime":"{t}","lastTransitionTime":"{t}"}}]}}}}"#,
        t = now()
    );
    c.ok(&[
        "patch",
        "node",
        "n1",
        "--subresource=status",
        "--type=merge",
        "-p",
        &status,
    ]);
    eventually(Duration::from_secs(60), "taints removed", || {
        c.ok(&["get", "node", "n1", "-o", "jsonpath={.spec.taints}"])
            .is_empty()
    });

    // Pod GC with a threshold of 1 terminated pod.
    for name in ["done-a", "done-b", "done-c"] {
        c.kubectl_stdin(&["apply", "-f", "-"], &pod_on(name, "n1", "[]"));
        c.ok(&[
            "patch",
            "pod",
            name,
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status":{"phase":"Succeeded"}}"#,
        ]);
    }
    eventually(
        Duration::from_secs(60),
        "terminated pods collected down to 1",
        || {
            ["done-a", "done-b", "done-c"]
                .iter()
                .filter(|p| !deleting(p))
                .count()
                == 1
        },
    );

    // TTL after finished.
    let job = r#"{"apiVersion":"batch/v1","kind":"Job","metadata":{"name":"short-lived"},
        "spec":{"ttlSecondsAfterFinished":1,"template":{"spec":{"restartPolicy":"Never",
        "containers":[{"name":"c","image":"busybox"}]}}}}"#;
    c.kubectl_stdin(&["apply", "-f", "-"], job);
    eventually(Duration::from_secs(60), "job finished and deleted", || {
        let pods = c.ok(&[
            "get",
            "pods",
            "-l",
            "batch.kubernetes.io/job-name=short-lived",
            "-o",
            "name",
        ]);
        for p in pods.lines() {
            let _ = c.kubectl(&[
                "patch",
                p,
                "--subresource=status",
                "--type=merge",
                "-p",
                r#"{"status":{"phase":"Succeeded"}}"#,
            ]);
        }
        !c.kubectl(&["get", "job", "short-lived"]).status.success()
    });
}

#[test]
fn new_nodes_start_not_ready_and_condition_taints_follow_conditions() {
    let c = ApiCluster::start_with(
        Backend::Keelson,
        1,
        &["--enable-admission-plugins=TaintNodesByCondition"],
    );
    let taints = || {
        c.ok(&[
            "get",
            "node",
            "n2",
            "-o",
            "jsonpath={range .spec.taints[*]}{.key}:{.effect} {end}",
        ])
        .trim()
        .to_string()
    };
    c.kubectl_stdin(
        &["apply", "-f", "-"],
        r#"{"apiVersion":"v1","kind":"Node","metadata":{"name":"n2"}}"#,
    );
    assert_eq!(taints(), "node.kubernetes.io/not-ready:NoSchedule");
    let _cm = ControllerManager::start(
        &c,
        "controller-manager",
        "cm0",
        &["--leader-elect=false", "--controllers=nodelifecycle"],
    );
    let status = |memory: &str| {
        format!(
            r#"{{"status":{{"conditions":[
            {{"type":"Ready","status":"True","reason":"KubeletReady","lastHeartbeatTime":"{t}","lastTransitionTime":"{t}"}},
            {{"type":"MemoryPressure","status":"{memory}","reason":"KubeletHasInsufficientMemory","lastHeartbeatTime":"{t}","lastTransitionTime":"{t}"}}]}}}}"#,
            t = now()
        )
    };
    let patch = |body: &str| {
        c.ok(&[
            "patch",
            "node",
            "n2",
            "--subresource=status",
            "--type=strategic",
            "-p",
            body,
        ])
    };
    patch(&status("True"));
    eventually(
        Duration::from_secs(30),
        "the memory-pressure taint alone",
        || taints() == "node.kubernetes.io/memory-pressure:NoSchedule",
    );
    patch(&status("False"));
    eventually(Duration::from_secs(30), "no taints", || taints().is_empty());
}
