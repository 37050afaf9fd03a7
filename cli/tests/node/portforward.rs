//! Port forwarding through the apiserver's `pods/portforward` to the kubelet: kubectl over
//! its WebSocket tunnel and over SPDY, and the Python client's channel protocol.

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{ApiCluster, Backend, eventually};
use crate::support::{Node, apply, wait_field};

/// A server on the pod's loopback only: nothing outside the pod's network namespace reaches
/// it, so a forwarded connection proves the kubelet dialled inside the namespace.
const SERVER: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: pf}
spec:
  nodeName: n-pf
  containers:
  - name: web
    image: python
    command: ["sh", "-c"]
    args:
    - |
      mkdir -p /tmp/www && cd /tmp/www
      echo keelson-pf > hello.txt
      head -c 1048576 /dev/zero | tr '\0' x > big
      exec python3 -m http.server 8080 --bind 127.0.0.1
"#;

/// `kubectl port-forward pod/pf :<remote>` with its output in files; the local port it chose.
struct Forward {
    child: Child,
    port: u16,
    stderr: std::path::PathBuf,
}

impl Forward {
    fn start(c: &ApiCluster, remote: u16, websockets: bool, tag: &str) -> Forward {
        let out = c.dir.path().join(format!("pf-{tag}.out"));
        let stderr = c.dir.path().join(format!("pf-{tag}.err"));
        let child = Command::new("kubectl")
            .env("KUBECONFIG", c.kubeconfig())
            .env("HOME", c.dir.path())
            .env(
                "KUBECTL_PORT_FORWARD_WEBSOCKETS",
                if websockets { "true" } else { "false" },
            )
            // -v=6 logs each request: which of the two upgrades was made.
            .args(["port-forward", "-v=6", "pod/pf", &format!(":{remote}")])
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .stdin(Stdio::null())
            .spawn()
            .expect("kubectl");
        let mut port = 0;
        eventually(
            Duration::from_secs(30),
            "kubectl port-forward listening",
            || {
                let text = std::fs::read_to_string(&out).unwrap_or_default();
                // "Forwarding from 127.0.0.1:43125 -> 8080"
                port = text
                    .lines()
                    .find_map(|l| l.strip_prefix("Forwarding from 127.0.0.1:"))
                    .and_then(|r| r.split_whitespace().next())
                    .and_then(|p| p.parse().ok())
                    .unwrap_or(0);
                port != 0
            },
        );
        Forward {
            child,
            port,
            stderr,
        }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Forward {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// GET `path` from 127.0.0.1:`port` over HTTP/1.0: the status line and the body.
fn get(port: u16, path: &str) -> (String, Vec<u8>) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
        .unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4)
        .unwrap_or(buf.len());
    let head = String::from_utf8_lossy(&buf[..split]).into_owned();
    let status = head.lines().next().unwrap_or("").to_string();
    (status, buf[split..].to_vec())
}

#[test]
fn port_forward_with_kubectl_and_the_python_client() {
    let c = ApiCluster::start(Backend::Keelson, 1);
    let _node = Node::start(&c, "n-pf", "10.200.6.0/24", &[]);
    apply(&c, SERVER);
    wait_field(&c, "pf", "{.status.phase}", |v| v == "Running");
    let ip = wait_field(&c, "pf", "{.status.podIP}", |v| !v.is_empty());
    // kubectl 1.31 and later tunnel SPDY through a WebSocket; with the tunnel off they upgrade
    // the connection to SPDY/3.1 directly (what kubectl 1.30 and older always do).
    for websockets in [true, false] {
        let tag = if websockets { "websocket" } else { "spdy" };
        let f = Forward::start(&c, 8080, websockets, tag);
        // The server may still be starting when the pod turns Running.
        let mut answer = (String::new(), Vec::new());
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            answer = get(f.port, "/hello.txt");
            if answer.0.contains("200") {
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        assert!(
            answer.0.contains("200"),
            "{tag}: {answer:?}; kubectl: {}\n{}",
            f.stderr(),
            c.logs()
        );
        assert_eq!(answer.1, b"keelson-pf\n", "{tag}");
        // A second connection on the same session, large enough to need many frames.
        let (status, body) = get(f.port, "/big");
        assert!(status.contains("200"), "{tag}: {status}; {}", f.stderr());
        assert_eq!(body.len(), 1 << 20, "{tag}");
        assert!(body.iter().all(|&b| b == b'x'), "{tag}");
        // The tunnel's upgrade is a GET, the SPDY upgrade a POST (so the tunnel did not fall
        // back to SPDY).
        let verb = if websockets { "GET" } else { "POST" };
        let upgraded = f.stderr().lines().any(|l| {
            l.contains(&format!("verb=\"{verb}\""))
                && l.contains("/pods/pf/portforward\" status=\"101")
        });
        assert!(upgraded, "{tag}: {}", f.stderr());
    }
    // The server listens on the pod's loopback only: not reachable from the host.
    assert!(
        std::net::TcpStream::connect_timeout(
            &format!("{ip}:8080").parse().unwrap(),
            Duration::from_secs(2)
        )
        .is_err(),
        "{ip}:8080 must not be reachable from outside the pod"
    );
    // Nothing listens on 8081: the kubelet's error reaches kubectl on the error stream.
    let f = Forward::start(&c, 8081, true, "refused");
    let (status, _) = get(f.port, "/");
    assert!(status.is_empty(), "no answer: {status:?}");
    eventually(Duration::from_secs(20), "the forwarding error", || {
        f.stderr()
            .contains("error forwarding port 8081 to pod default/pf")
    });
    // The Python client: the WebSocket channel protocol, ports in the query.
    let script = r#"
import sys
from kubernetes import client, config
from kubernetes.stream import portforward
config.load_kube_config(sys.argv[1])
api = client.CoreV1Api()
# Many ports (two channels each), all but the first refused.
ports = [8080] + list(range(9001, 9040))
pf = portforward(api.connect_get_namespaced_pod_portforward, 'pf', 'default',
                 ports=','.join(map(str, ports)))
s = pf.socket(8080)
s.setblocking(True)
s.sendall(b'GET /hello.txt HTTP/1.0\r\n\r\n')
data = b''
while True:
    chunk = s.recv(65536)
    if not chunk:
        break
    data += chunk
s.close()
print(data.split(b'\r\n')[0].decode())
print(data.split(b'\r\n\r\n', 1)[1].decode(), end='')
print('error:', pf.error(8080))
import time
for _ in range(100):
    if pf.error(9039) is not None:
        break
    time.sleep(0.1)
print('refused:', pf.error(9039))
"#;
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(c.kubeconfig())
        .output()
        .expect("python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success()
            && stdout.contains(" 200 ")
            && stdout.contains("keelson-pf\nerror: None")
            && stdout.contains("refused: error forwarding port 9039 to pod default/pf"),
        "python client (pip install kubernetes; .ci/run does this): {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
