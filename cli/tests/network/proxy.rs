//! The service proxy: ClusterIP and NodePort traffic reaches ready endpoints on both nodes (a
//! pod reaching its own Service included), session affinity sticks, traffic policies Local keep
//! to local endpoints, clashing ports are refused, a port without endpoints refuses, a
//! terminating pod leaves the rules while it still serves, and a proxy killed and restarted
//! keeps traffic flowing.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::component::Component;
use crate::harness::{ApiCluster, Backend, eventually, free_port};
use crate::support::{Node, READY, apply, wait_field};

/// GET `path` from `host:port`; the body, or None when the connection failed.
pub(crate) fn get(host: &str, port: u16, path: &str) -> Result<String, std::io::Error> {
    let addr = format!("{host}:{port}").parse().unwrap();
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes())?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    Ok(buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.trim().to_string())
        .unwrap_or_default())
}

/// A pod on `node` that serves its name at /who on port 8080, ready once it does.
pub(crate) fn server(name: &str, node: &str, grace: u32) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: default, labels: {{app: web}}}}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: {grace}
  containers:
  - name: web
    image: python
    command: ["sh", "-c", "hostname > /tmp/who && cd /tmp && exec python3 -m http.server 8080"]
    ports: [{{name: http, containerPort: 8080}}]
    readinessProbe:
      httpGet: {{path: /who, port: 8080}}
      periodSeconds: 1
    lifecycle:
      preStop:
        exec: {{command: ["sleep", "{grace}"]}}
---
"#
    )
}

fn table_exists(table: &str) -> bool {
    std::process::Command::new("nft")
        .args(["list", "table", "ip", table])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Which servers answered `n` requests to `ip:port`.
fn hits(ip: &str, port: u16, n: usize) -> std::collections::BTreeMap<String, usize> {
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..n {
        if let Ok(who) = get(ip, port, "/who") {
            *seen.entry(who).or_insert(0) += 1;
        }
    }
    seen
}

#[test]
fn cluster_ips_and_node_ports_reach_ready_endpoints() {
    let c = ApiCluster::start(Backend::Keelson, 1);
    let _cm = Component::start(&c, "controller-manager", "cm", &["--leader-elect=false"]);
    let _n1 = Node::start(&c, "net-a", "10.202.1.0/24", &[]);
    let _n2 = Node::start(&c, "net-b", "10.202.2.0/24", &[]);
    let metrics_port = free_port();
    let proxy_args = [
        format!("--kubeconfig={}", c.kubeconfig().display()),
        "--hostname-override=net-a".to_string(),
        "--cluster-cidr=10.202.0.0/16".to_string(),
        "--min-sync-period=200ms".to_string(),
        format!("--proxy-metrics-port={metrics_port}"),
    ];
    let mut proxy = Component::spawn(&c, "proxy", "proxy", &proxy_args, metrics_port);
    let table = keelson_node::proxy::table_name("net-a");

    let manifest = server("web-a", "net-a", 10)
        + &server("web-b", "net-b", 10)
        + r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  clusterIP: 10.96.0.80
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: v1
kind: Service
metadata: {name: sticky, namespace: default}
spec:
  clusterIP: 10.96.0.81
  selector: {app: web}
  sessionAffinity: ClientIP
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: web-np, namespace: default}
spec:
  type: NodePort
  clusterIP: 10.96.0.82
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080, nodePort: 30880}]
---
apiVersion: v1
kind: Service
metadata: {name: web-local, namespace: default}
spec:
  type: NodePort
  clusterIP: 10.96.0.84
  selector: {app: web}
  internalTrafficPolicy: Local
  externalTrafficPolicy: Local
  ports: [{port: 80, targetPort: 8080, nodePort: 30881}]
---
apiVersion: v1
kind: Service
metadata: {name: nobody, namespace: default}
spec:
  clusterIP: 10.96.0.83
  selector: {app: nobody}
  ports: [{port: 80}]
"#;
    apply(&c, &manifest);
    for p in ["web-a", "web-b"] {
        wait_field(&c, p, READY, |s| s == "True");
    }
    // ClusterIP from the host: both endpoints answer.
    eventually(
        Duration::from_secs(30),
        "both endpoints behind the ClusterIP",
        || hits("10.96.0.80", 80, 20).len() == 2,
    );
    // From a pod on each node, by ClusterIP (the pod's own endpoint included: hairpin).
    for node in ["net-a", "net-b"] {
        let name = format!("client-{node}");
        apply(
            &c,
            &format!(
                r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: default}}
spec:
  nodeName: {node}
  restartPolicy: Never
  containers:
  - name: c
    image: curl
    command: ["sh", "-c", "for i in $(seq 30); do curl -s -m 3 http://10.96.0.80/who; echo; done"]
"#
            ),
        );
        wait_field(&c, &name, "{.status.phase}", |s| s == "Succeeded");
        let log = c.ok(&["logs", &name]);
        assert!(
            log.contains("web-a") && log.contains("web-b"),
            "{name} reached both endpoints: {log}"
        );
    }
    // Hairpin: an endpoint reaching its own Service gets itself too.
    eventually(Duration::from_secs(20), "hairpin", || {
        let out = c.kubectl(&[
            "exec",
            "web-a",
            "--",
            "sh",
            "-c",
            "for i in $(seq 20); do curl -s -m 2 http://10.96.0.80/who; echo; done",
        ]);
        let log = String::from_utf8_lossy(&out.stdout).to_string();
        log.contains("web-a") && log.contains("web-b")
    });
    // A Service whose ports clash is refused by the apiserver (and so never programmed).
    let clash = c.kubectl_stdin(
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: Service\nmetadata: {name: clash, namespace: default}\nspec:\n  selector: {app: web}\n  ports: [{name: a, port: 80}, {name: b, port: 80}]\n",
    );
    assert!(!clash.status.success());
    assert!(
        String::from_utf8_lossy(&clash.stderr).contains("Duplicate value: \"80/TCP\""),
        "{}",
        String::from_utf8_lossy(&clash.stderr)
    );
    // Session affinity: one client, one endpoint.
    eventually(Duration::from_secs(20), "sticky Service answering", || {
        get("10.96.0.81", 80, "/who").is_ok()
    });
    assert_eq!(hits("10.96.0.81", 80, 15).len(), 1, "ClientIP affinity");
    // NodePort on the node's address (127.0.0.1) from the host.
    eventually(Duration::from_secs(20), "NodePort answering", || {
        hits("127.0.0.1", 30880, 20).len() == 2
    });
    // Traffic policies Local: the proxy runs for net-a, so from a pod on net-b both the
    // ClusterIP and the NodePort (on net-b's gateway, a node address) reach only web-a.
    let from_b = |url: &str| {
        let out = c.kubectl(&[
            "exec",
            "web-b",
            "--",
            "sh",
            "-c",
            &format!("for i in $(seq 12); do curl -s -m 2 {url}; echo; done"),
        ]);
        let mut seen: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect();
        seen.sort();
        seen.dedup();
        seen
    };
    eventually(
        Duration::from_secs(20),
        "internalTrafficPolicy Local",
        || from_b("http://10.96.0.84/who") == ["web-a"],
    );
    assert_eq!(
        from_b("http://10.202.2.1:30881/who"),
        ["web-a"],
        "externalTrafficPolicy Local"
    );
    // No endpoints: refused at once, not a timeout.
    let err = get("10.96.0.83", 80, "/").unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");

    // A terminating pod leaves the rules while it still serves (its preStop sleeps 10 s).
    c.ok(&["delete", "pod", "web-a", "--wait=false"]);
    eventually(
        Duration::from_secs(8),
        "only web-b behind the ClusterIP",
        || hits("10.96.0.80", 80, 10).keys().eq(["web-b"]),
    );
    let a_ip = wait_field(&c, "web-a", "{.status.podIP}", |_| true);
    if !a_ip.is_empty() {
        assert_eq!(
            get(&a_ip, 8080, "/who").unwrap(),
            "web-a",
            "web-a still serves"
        );
    }

    // Killed, the proxy's rules stay and traffic flows; restarted, it rewrites them.
    proxy.kill();
    assert!(table_exists(&table));
    assert_eq!(get("10.96.0.80", 80, "/who").unwrap(), "web-b");
    apply(&c, &server("web-c", "net-a", 1));
    wait_field(&c, "web-c", READY, |s| s == "True");
    let mut proxy = Component::spawn(&c, "proxy", "proxy-restarted", &proxy_args, metrics_port);
    eventually(
        Duration::from_secs(30),
        "the restarted proxy adds web-c",
        || hits("10.96.0.80", 80, 20).contains_key("web-c"),
    );
    let metrics = proxy.get("/metrics");
    assert!(metrics.contains("kubeproxy_sync_proxy_rules_duration_seconds_count"));
    // Stopped cleanly, it removes its table.
    assert!(proxy.stop().success());
    assert!(!table_exists(&table), "table removed on exit");
}
