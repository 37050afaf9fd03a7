//! Graceful termination (preStop, SIGTERM, grace period, SIGKILL), OOM kills, pod networking,
//! and a node's cleanup when it stops.

use std::time::Duration;

use crate::harness::{ApiCluster, Backend, eventually};
use crate::support::{Node, READY, apply, events, field, http_get, wait_field};

fn pods(out: &std::path::Path) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: polite}}
spec:
  nodeName: n-term
  containers:
  - name: c
    image: busybox
    command: ["sh", "-c", "trap 'echo term >> /out/log; exit 0' TERM; echo started >> /out/log; while true; do sleep 0.1; done"]
    lifecycle:
      preStop:
        exec: {{command: ["sh", "-c", "echo prestop >> /out/log"]}}
    volumeMounts: [{{name: out, mountPath: /out}}]
  volumes:
  - {{name: out, hostPath: {{path: "{}", type: DirectoryOrCreate}}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: stubborn}}
spec:
  nodeName: n-term
  terminationGracePeriodSeconds: 3
  containers:
  - name: c
    image: busybox
    command: ["sh", "-c", "trap '' TERM; while true; do sleep 0.1; done; echo keelson-stubborn-marker"]
---
apiVersion: v1
kind: Pod
metadata: {{name: hog}}
spec:
  nodeName: n-term
  restartPolicy: Never
  containers:
  - name: c
    image: busybox
    command: ["python3", "-c", "x = bytearray(400 * 1024 * 1024); import time; time.sleep(60)"]
    resources: {{limits: {{memory: 64Mi}}}}
"#,
        out.display()
    )
}

const SERVERS: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: server-a}
spec:
  nodeName: n-term
  containers:
  - name: c
    image: busybox
    command: ["python3", "-m", "http.server", "80", "--bind", "0.0.0.0"]
    readinessProbe: {tcpSocket: {port: 80}, periodSeconds: 1}
---
apiVersion: v1
kind: Pod
metadata: {name: server-b}
spec:
  nodeName: n-term
  containers:
  - name: c
    image: busybox
    command: ["python3", "-m", "http.server", "80", "--bind", "0.0.0.0"]
    readinessProbe: {httpGet: {port: 80, path: /}, periodSeconds: 1}
---
apiVersion: v1
kind: Pod
metadata: {name: lingering}
spec:
  nodeName: n-term
  terminationGracePeriodSeconds: 600
  containers:
  - name: c
    image: busybox
    command: ["sh", "-c", "trap '' TERM; while true; do sleep 0.1; done; echo keelson-lingering-marker"]
"#;

/// Whether a process whose command line holds `marker` runs (`pgrep -f`).
fn running(marker: &str) -> bool {
    let found = std::process::Command::new("pgrep")
        .args(["-f", marker])
        .output()
        .unwrap();
    !found.stdout.is_empty()
}

#[test]
fn graceful_termination_oom_and_pod_network() {
    let c = ApiCluster::start(Backend::Keelson, 1);
    let mut node = Node::start(
        &c,
        "n-term",
        "10.200.3.0/24",
        &["--shutdown-grace-period=5s"],
    );
    let out = c.dir.path().join("out");
    apply(&c, &pods(&out));
    apply(&c, SERVERS);
    wait_field(&c, "polite", "{.status.phase}", |v| v == "Running");
    wait_field(&c, "stubborn", "{.status.phase}", |v| v == "Running");
    eventually(Duration::from_secs(10), "polite started", || {
        std::fs::read_to_string(out.join("log")).is_ok_and(|l| l.contains("started"))
    });
    // preStop runs, then SIGTERM; the pod object goes once the container has stopped.
    c.ok(&["delete", "pod", "polite", "--wait=true", "--timeout=60s"]);
    assert_eq!(
        std::fs::read_to_string(out.join("log")).unwrap(),
        "started\nprestop\nterm\n"
    );
    // A container that ignores SIGTERM is killed when the grace period ends.
    c.ok(&["delete", "pod", "stubborn", "--wait=true", "--timeout=60s"]);
    assert!(
        !running("keelson-stubborn-marker"),
        "no process left behind"
    );
    // The memory limit is enforced: the kernel kills the process and the reason says so.
    wait_field(&c, "hog", "{.status.phase}", |v| v == "Failed");
    assert_eq!(
        field(
            &c,
            "hog",
            "{.status.containerStatuses[0].state.terminated.reason}"
        ),
        "OOMKilled"
    );
    // Two pods serve port 80, each on its own address.
    wait_field(&c, "server-a", READY, |v| v == "True");
    wait_field(&c, "server-b", READY, |v| v == "True");
    let (a, b) = (
        field(&c, "server-a", "{.status.podIP}"),
        field(&c, "server-b", "{.status.podIP}"),
    );
    assert_ne!(a, b);
    for ip in [&a, &b] {
        assert!(ip.starts_with("10.200.3."), "{ip}");
        assert!(http_get(ip, 80).contains("200"), "GET http://{ip}:80/");
    }
    assert!(events(&c, "server-a").contains("Started: Started container c"));
    // A pod deleted with a long grace period is still terminating when the node stops.
    wait_field(&c, "lingering", "{.status.phase}", |v| v == "Running");
    c.ok(&["delete", "pod", "lingering", "--wait=false"]);
    eventually(Duration::from_secs(30), "lingering being stopped", || {
        events(&c, "lingering").contains("Killing: Stopping container c")
    });
    // Stopping the node stops its pods and removes what it made; the termination under way
    // is cut to the node's shutdown grace period (5 s here, not the pod's 600 s).
    let stopping = std::time::Instant::now();
    let status = node.comp.stop();
    assert!(status.success(), "node exits cleanly");
    assert!(
        stopping.elapsed() < Duration::from_secs(60),
        "the node took {:?} to stop",
        stopping.elapsed()
    );
    assert!(
        !running("keelson-lingering-marker"),
        "the lingering pod's process is left"
    );
    let pods_now = c.ok(&["get", "pods", "-o", "name"]);
    assert!(!pods_now.contains("pod/lingering"), "{pods_now}");
    // Its bridge is gone too (nothing holds the pod CIDR's gateway).
    let addrs = std::process::Command::new("ip")
        .args(["-o", "addr", "show", "to", "10.200.3.0/24"])
        .output()
        .unwrap();
    assert!(
        addrs.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&addrs.stdout)
    );
    assert_eq!(
        field(&c, "server-a", "{.status.reason}"),
        "Terminated",
        "pods are marked terminated by the node shutdown"
    );
    let pods_left = std::fs::read_dir(node.root.join("n-term").join("pods"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(pods_left, 0, "pod directories removed");
    for h in ["memory", "cpu"] {
        let base = std::path::Path::new("/sys/fs/cgroup")
            .join(h)
            .join("keelson");
        let left: Vec<String> = std::fs::read_dir(&base)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with("n-term-"))
                    .collect()
            })
            .unwrap_or_default();
        assert!(
            left.is_empty(),
            "cgroups of n-term removed from {}: {left:?}",
            base.display()
        );
    }
}
