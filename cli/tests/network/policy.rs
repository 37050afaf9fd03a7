//! NetworkPolicy on the nodes: default deny, a podSelector allow on a named port, a
//! namespaceSelector allow, egress isolation, removal; pods of one node and of another; bad
//! policies refused by the apiserver.

use std::time::Duration;

use crate::harness::{ApiCluster, Backend, eventually};
use crate::support::{Node, READY, apply};

/// Whether `pod` (in `ns`) gets a 200 from `ip`:8080 within 2 s.
fn reaches(c: &ApiCluster, ns: &str, pod: &str, ip: &str) -> bool {
    let out = c.kubectl(&[
        "exec",
        "-n",
        ns,
        pod,
        "--",
        "curl",
        "-s",
        "-m",
        "2",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("http://{ip}:8080/"),
    ]);
    String::from_utf8_lossy(&out.stdout).trim() == "200"
}

fn client(name: &str, ns: &str, node: &str, role: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {ns}, labels: {{role: {role}}}}}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 1
  containers:
  - {{name: c, image: curl, command: ["sleep", "3600"]}}
---
"#
    )
}

#[test]
fn network_policies_isolate_and_allow() {
    let c = ApiCluster::start(Backend::Keelson, 1);
    let proxy = [
        "--proxy",
        "--cluster-cidr=10.203.0.0/16",
        "--min-sync-period=200ms",
        "--proxy-metrics-port=0",
    ];
    let _a = Node::start(&c, "pol-a", "10.203.1.0/24", &proxy);
    let _b = Node::start(&c, "pol-b", "10.203.2.0/24", &proxy);
    c.ok(&["create", "namespace", "np"]);
    c.ok(&["create", "namespace", "other"]);
    c.ok(&["label", "namespace", "other", "team=x"]);
    let pods = format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: db, namespace: np, labels: {{app: db}}}}
spec:
  nodeName: pol-a
  terminationGracePeriodSeconds: 1
  containers:
  - name: db
    image: python
    command: ["python3", "-m", "http.server", "8080"]
    ports: [{{name: http, containerPort: 8080}}]
    readinessProbe: {{tcpSocket: {{port: 8080}}, periodSeconds: 1}}
  - name: echo
    image: python
    command: ["python3", "-c", "import socket\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\ns.bind(('0.0.0.0', 9000))\ns.listen()\nc, _ = s.accept()\nfor d in iter(lambda: c.recv(100), b''):\n    c.sendall(d)\n"]
---
{}{}{}"#,
        client("front", "np", "pol-b", "frontend"),
        client("back", "np", "pol-a", "backend"),
        client("ext", "other", "pol-b", "frontend"),
    );
    apply(&c, &pods);
    eventually(Duration::from_secs(90), "pods ready", || {
        let out = c.kubectl(&[
            "get",
            "pods",
            "-A",
            "-o",
            &format!("jsonpath={{range .items[*]}}{} {{end}}", READY),
        ]);
        let s = String::from_utf8_lossy(&out.stdout).to_string();
        s.split_whitespace().filter(|r| *r == "True").count() == 4
    });
    let ip = c.ok(&[
        "get",
        "pod",
        "-n",
        "np",
        "db",
        "-o",
        "jsonpath={.status.podIP}",
    ]);
    let all = |want: [bool; 3]| {
        [("np", "front"), ("np", "back"), ("other", "ext")]
            .iter()
            .zip(want)
            .all(|((ns, p), w)| reaches(&c, ns, p, &ip) == w)
    };
    eventually(
        Duration::from_secs(30),
        "everyone reaches db without policies",
        || all([true, true, true]),
    );

    // A connection open before the policies (front to db's echo port, one exchange a second)
    // stays up through them, as upstream's semantics keep established connections.
    let echo_log = c.dir.path().join("echo.log");
    let script = format!(
        "import socket, time\nc = socket.create_connection(('{ip}', 9000))\nfor i in range(60):\n    c.sendall(b'x')\n    print(c.recv(10).decode(), flush=True)\n    time.sleep(1)\n"
    );
    let mut echo = c.kubectl_spawn(
        &["exec", "-n", "np", "front", "--", "python3", "-c", &script],
        &echo_log,
    );
    let echoes = || {
        std::fs::read_to_string(&echo_log)
            .unwrap_or_default()
            .lines()
            .filter(|l| *l == "x")
            .count()
    };
    eventually(Duration::from_secs(30), "the echo connection is up", || {
        echoes() >= 1
    });

    // Default deny for db: nobody, not even a pod of its own node.
    apply(
        &c,
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: np}\nspec:\n  podSelector: {matchLabels: {app: db}}\n",
    );
    eventually(Duration::from_secs(30), "default deny", || {
        all([false, false, false])
    });
    let before = echoes();
    eventually(
        Duration::from_secs(10),
        "the established connection still echoing",
        || echoes() >= before + 2,
    );
    let _ = echo.kill();
    let _ = echo.wait();
    // Frontends of the namespace on the named port; the team's namespace on any port.
    apply(
        &c,
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow, namespace: np}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from: [{podSelector: {matchLabels: {role: frontend}}}]
    ports: [{port: http}]
"#,
    );
    eventually(Duration::from_secs(30), "frontend allowed", || {
        all([true, false, false])
    });
    apply(
        &c,
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: team, namespace: np}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {team: x}}}]
"#,
    );
    eventually(
        Duration::from_secs(30),
        "the team's namespace allowed",
        || all([true, false, true]),
    );
    // Egress isolation of the frontend (no egress rules: nothing out).
    apply(
        &c,
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: no-egress, namespace: np}\nspec:\n  podSelector: {matchLabels: {role: frontend}}\n  policyTypes: [Egress]\n",
    );
    eventually(Duration::from_secs(30), "frontend egress denied", || {
        all([false, false, true])
    });

    // Bad policies are refused and change nothing.
    let bad = c.kubectl_stdin(
        &["apply", "-f", "-"],
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: bad, namespace: np}
spec:
  podSelector: {}
  ingress:
  - from: [{ipBlock: {cidr: 10.0.0.0/8, except: [11.0.0.0/16]}}]
"#,
    );
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("must be a strict subset of `cidr`"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    assert!(all([false, false, true]));

    // Policies gone: everyone again.
    c.ok(&["delete", "networkpolicy", "-n", "np", "--all"]);
    eventually(Duration::from_secs(30), "no policies, no isolation", || {
        all([true, true, true])
    });
}
