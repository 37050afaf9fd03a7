//! Scheduler processes and nodes for the tests.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::json;

use crate::harness::{ApiCluster, eventually, free_port};

/// One `keelson <component>` process, killed on drop.
pub struct Component {
    pub child: Option<Child>,
    pub log: PathBuf,
    /// The /healthz and /metrics port.
    pub port: u16,
}

impl Component {
    pub fn start(c: &ApiCluster, component: &str, name: &str, extra: &[&str]) -> Self {
        let log = c.dir.path().join(format!("{name}.log"));
        let port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_keelson"))
            .arg(component)
            .arg(format!("--kubeconfig={}", c.kubeconfig().display()))
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--secure-port={port}"))
            .args(["--kube-api-qps=500", "--kube-api-burst=1000"])
            .args(extra)
            .env("RUST_LOG", "info,keelson_scheduler=debug")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Self {
            child: Some(child),
            log,
            port,
        }
    }

    /// A scheduler without leader election.
    pub fn scheduler(c: &ApiCluster, name: &str) -> Self {
        Self::start(c, "scheduler", name, &["--leader-elect=false"])
    }

    /// GET a path of the component's HTTPS health/metrics server.
    pub fn get(&self, path: &str) -> String {
        let script = format!(
            "import ssl,urllib.request\nctx=ssl._create_unverified_context()\nprint(urllib.request.urlopen('https://127.0.0.1:{}{path}',context=ctx).read().decode())",
            self.port
        );
        let out = Command::new("python3")
            .args(["-c", &script])
            .output()
            .expect("python3");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// kill -9.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Component {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let log = self.log_text();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!("--- {} (last lines) ---", self.log.display());
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

/// Creates a Node object with the given CPU, labels and taints.
pub fn add_node(
    c: &ApiCluster,
    name: &str,
    cpu: &str,
    labels: serde_json::Value,
    taints: serde_json::Value,
) {
    let mut l = labels.as_object().cloned().unwrap_or_default();
    l.insert("kubernetes.io/hostname".into(), json!(name));
    let node = json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": l},
        "spec": {"taints": taints},
        "status": {
            "allocatable": {"cpu": cpu, "memory": "8Gi", "pods": "110"},
            "capacity": {"cpu": cpu, "memory": "8Gi", "pods": "110"},
            "conditions": [{"type": "Ready", "status": "True"}]
        }
    });
    let out = c.kubectl_stdin(&["create", "-f", "-"], &node.to_string());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Applies a manifest (YAML or JSON).
pub fn apply(c: &ApiCluster, manifest: &str) {
    let out = c.kubectl_stdin(&["apply", "-f", "-"], manifest);
    assert!(
        out.status.success(),
        "kubectl apply failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `spec.nodeName` of a pod ("" while pending).
pub fn node_of(c: &ApiCluster, pod: &str) -> String {
    c.ok(&["get", "pod", pod, "-o", "jsonpath={.spec.nodeName}"])
}

/// Waits until the pod is bound and returns its node.
pub fn wait_bound(c: &ApiCluster, pod: &str) -> String {
    let mut node = String::new();
    eventually(Duration::from_secs(60), &format!("pod {pod} bound"), || {
        node = node_of(c, pod);
        !node.is_empty()
    });
    node
}

/// Node names of the pods with a label, sorted ("" for pending ones).
pub fn nodes_of(c: &ApiCluster, selector: &str) -> Vec<String> {
    let out = c.ok(&[
        "get",
        "pods",
        "-l",
        selector,
        "-o",
        "jsonpath={range .items[*]}{.spec.nodeName}{\"\\n\"}{end}",
    ]);
    let mut v: Vec<String> = out.lines().map(|l| l.trim().to_string()).collect();
    v.sort();
    v
}

/// The PodScheduled condition of a pod as `status/reason/message`.
pub fn scheduled_condition(c: &ApiCluster, pod: &str) -> String {
    c.ok(&[
        "get",
        "pod",
        pod,
        "-o",
        "jsonpath={.status.conditions[?(@.type==\"PodScheduled\")].status}/{.status.conditions[?(@.type==\"PodScheduled\")].reason}/{.status.conditions[?(@.type==\"PodScheduled\")].message}",
    ])
}

/// A bare pod manifest requesting `cpu`, with `spec` merged in.
pub fn pod(name: &str, labels: serde_json::Value, cpu: &str, spec: serde_json::Value) -> String {
    let mut s = json!({
        "containers": [{"name": "c", "image": "pause", "resources": {"requests": {"cpu": cpu}}}]
    });
    if let (Some(base), Some(extra)) = (s.as_object_mut(), spec.as_object()) {
        for (k, v) in extra {
            base.insert(k.clone(), v.clone());
        }
    }
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels}, "spec": s})
        .to_string()
}
