//! Node processes and pod helpers for the tests.

use std::path::PathBuf;
use std::time::Duration;

use crate::component::Component;
use crate::harness::{ApiCluster, eventually, free_port};

/// A `keelson node` process.
pub struct Node {
    pub comp: Component,
    pub root: PathBuf,
}

impl Node {
    /// Starts a process-runtime node with its own pod CIDR and waits until it is Ready.
    pub fn start(c: &ApiCluster, name: &str, cidr: &str, extra: &[&str]) -> Node {
        let root = c.dir.path().join(format!("root-{name}"));
        let port = free_port();
        let mut args = vec![
            format!("--kubeconfig={}", c.kubeconfig().display()),
            format!("--node-name={name}"),
            format!("--port={port}"),
            format!("--root-dir={}", root.display()),
            format!("--pod-cidr={cidr}"),
            "--kube-api-qps=500".to_string(),
            "--kube-api-burst=1000".to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let comp = Component::spawn(c, "node", name, &args, port);
        wait_node_ready(c, name);
        Node { comp, root }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // Stop the node gracefully so it removes its containers, namespaces and cgroups.
        if let Some(child) = &self.comp.child {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            for _ in 0..600 {
                if let Some(c) = self.comp.child.as_mut()
                    && c.try_wait().ok().flatten().is_some()
                {
                    self.comp.child = None;
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Waits until the Node's Ready condition is True.
pub fn wait_node_ready(c: &ApiCluster, name: &str) {
    eventually(
        Duration::from_secs(60),
        &format!("node {name} Ready"),
        || {
            let out = c.kubectl(&[
                "get",
                "node",
                name,
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
            ]);
            String::from_utf8_lossy(&out.stdout).trim() == "True"
        },
    );
}

pub use crate::harness::apply;

/// A jsonpath of a pod ("" when the pod is missing).
pub fn field(c: &ApiCluster, pod: &str, path: &str) -> String {
    let out = c.kubectl(&["get", "pod", pod, "-o", &format!("jsonpath={path}")]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Waits until a jsonpath of a pod satisfies `f`; returns its value.
pub fn wait_field(c: &ApiCluster, pod: &str, path: &str, f: impl Fn(&str) -> bool) -> String {
    let mut v = String::new();
    eventually(
        Duration::from_secs(90),
        &format!("pod {pod} {path}"),
        || {
            v = field(c, pod, path);
            f(&v)
        },
    );
    v
}

/// The pod's Ready condition status.
pub const READY: &str = "{.status.conditions[?(@.type==\"Ready\")].status}";

/// Messages of the events about a pod.
pub fn events(c: &ApiCluster, pod: &str) -> String {
    c.ok(&[
        "get",
        "events",
        "--field-selector",
        &format!("involvedObject.name={pod}"),
        "-o",
        "jsonpath={range .items[*]}{.reason}: {.message}{\"\\n\"}{end}",
    ])
}

/// GET / from `ip:port` over plain HTTP; the status line.
pub fn http_get(ip: &str, port: u16) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect((ip, port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(format!("GET / HTTP/1.0\r\nHost: {ip}\r\n\r\n").as_bytes())
        .unwrap();
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    buf.lines().next().unwrap_or("").to_string()
}
