//! Init containers, env and volumes, logs, probes and restarts on the process runtime.

use std::time::Duration;

use crate::component::Component;
use crate::harness::{ApiCluster, Backend, eventually};
use crate::support::{Node, READY, apply, events, field, wait_field};

const CONFIG: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: cfg}
data: {greeting: hello}
---
apiVersion: v1
kind: Secret
metadata: {name: creds}
stringData: {password: s3cr3t}
"#;

const WEB: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: web, labels: {app: web}}
spec:
  nodeName: n-life
  initContainers:
  - name: first
    image: busybox
    command: ["sh", "-c", "echo one >> /work/order"]
    volumeMounts: [{name: work, mountPath: /work}]
  - name: second
    image: busybox
    command: ["sh", "-c", "echo two >> /work/order"]
    volumeMounts: [{name: work, mountPath: /work}]
  containers:
  - name: main
    image: busybox
    command: ["sh", "-c"]
    args:
    - |
      cat /work/order
      echo "$GREETING $PASSWORD $ME"
      echo "$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT $KUBERNETES_PORT_443_TCP_PROTO $SELF"
      cat /cfg/greeting; echo
      hostname
      i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.5; done
    env:
    - {name: GREETING, valueFrom: {configMapKeyRef: {name: cfg, key: greeting}}}
    - {name: PASSWORD, valueFrom: {secretKeyRef: {name: creds, key: password}}}
    - {name: ME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
    - {name: SELF, value: "https://$(KUBERNETES_SERVICE_HOST):$(KUBERNETES_SERVICE_PORT_HTTPS)"}
    volumeMounts:
    - {name: work, mountPath: /work}
    - {name: cfg, mountPath: /cfg, readOnly: true}
  volumes:
  - {name: work, emptyDir: {}}
  - {name: cfg, configMap: {name: cfg}}
"#;

const TALKER: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: talker}
spec:
  nodeName: n-life
  restartPolicy: Never
  containers:
  - name: c
    image: busybox
    stdin: true
    command: ["sh", "-c", "read line; echo got $line"]
"#;

#[test]
fn init_containers_env_volumes_and_logs() {
    let c = ApiCluster::start(Backend::Keelson, 1);
    let _node = Node::start(&c, "n-life", "10.200.1.0/24", &[]);
    apply(&c, CONFIG);
    apply(&c, WEB);
    wait_field(&c, "web", READY, |v| v == "True");
    assert_eq!(field(&c, "web", "{.status.phase}"), "Running");
    let ip = field(&c, "web", "{.status.podIP}");
    assert!(
        ip.starts_with("10.200.1."),
        "pod IP from the node's CIDR: {ip}"
    );
    assert_eq!(
        field(
            &c,
            "web",
            "{.status.initContainerStatuses[*].state.terminated.reason}"
        ),
        "Completed Completed"
    );
    let mut logs = String::new();
    eventually(Duration::from_secs(30), "logs", || {
        logs = c.ok(&["logs", "web", "-c", "main"]);
        logs.contains("tick 2")
    });
    assert!(
        logs.starts_with("one\ntwo\nhello s3cr3t web\n10.96.0.1:443 tcp https://10.96.0.1:443\nhello\nweb\ntick 1\n"),
        "init order, env (Service variables too), configMap volume, hostname: {logs:?}"
    );
    let tail = c.ok(&["logs", "web", "-c", "main", "--tail=1"]);
    assert_eq!(tail.lines().count(), 1, "{tail:?}");
    assert!(tail.starts_with("tick "), "{tail:?}");
    let stamped = c.ok(&["logs", "web", "-c", "main", "--tail=1", "--timestamps"]);
    let (ts, rest) = stamped.split_once(' ').unwrap();
    assert!(ts.ends_with('Z') && ts.contains('T'), "{stamped:?}");
    assert!(rest.starts_with("tick "));
    // More than one container: kubectl defaults to the first app container.
    let err = c.fails(&["logs", "web", "-c", "nope"]);
    assert!(
        err.contains("container nope is not valid for pod web"),
        "{err}"
    );
    // kubectl exec (WebSocket through the apiserver to the kubelet): output, exit code, stdin.
    let out = c.kubectl(&[
        "exec",
        "web",
        "-c",
        "main",
        "--",
        "sh",
        "-c",
        "cat /cfg/greeting; echo; echo oops >&2; exit 3",
    ]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("oops"));
    let out = c.kubectl_stdin(
        &["exec", "-i", "web", "-c", "main", "--", "wc", "-l"],
        "a\nb\nc\n",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "3");
    let out = c.kubectl(&["exec", "web", "-c", "main", "--", "cat", "/proc/1/cmdline"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("/usr/bin/sh\0-c"),
        "exec joins the container's PID namespace: {:?}",
        String::from_utf8_lossy(&out.stdout)
    );
    // A terminal (`exec -it`, run under `script` so kubectl has one): the command sees a pty.
    let out = std::process::Command::new("script")
        .args([
            "-qec",
            "kubectl exec -it web -c main -- sh -c 'tty; exit 4'",
            "/dev/null",
        ])
        .env("SHELL", "/bin/sh")
        .env("KUBECONFIG", c.kubeconfig())
        .env("HOME", c.dir.path())
        .output()
        .expect("script (util-linux)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("/dev/pts/"), "{text:?}");
    assert_eq!(out.status.code(), Some(4), "{text:?}");
    // kubectl cp, both ways: tar through exec, stdin in and stdout out.
    let up = c.dir.path().join("upload.txt");
    std::fs::write(&up, "copied in\n").unwrap();
    c.ok(&[
        "cp",
        "-c",
        "main",
        up.to_str().unwrap(),
        "web:/work/upload.txt",
    ]);
    let out = c.ok(&["exec", "web", "-c", "main", "--", "cat", "/work/upload.txt"]);
    assert_eq!(out, "copied in\n");
    let down = c.dir.path().join("order.txt");
    c.ok(&[
        "cp",
        "-c",
        "main",
        "web:/work/order",
        down.to_str().unwrap(),
    ]);
    assert_eq!(std::fs::read_to_string(&down).unwrap(), "one\ntwo\n");
    // kubectl attach -i: the container's stdin and its live output.
    apply(&c, TALKER);
    wait_field(&c, "talker", "{.status.phase}", |v| v == "Running");
    let out = c.kubectl_stdin(&["attach", "-i", "talker"], "hello\n");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "got hello");
    wait_field(&c, "talker", "{.status.phase}", |v| v == "Succeeded");
    // kubectl run -i --rm: with stdinOnce the container's stdin closes when kubectl closes its
    // own, so `cat` ends and kubectl deletes the pod.
    let out = c.kubectl_stdin(
        &[
            "run",
            "once",
            "-i",
            "--rm",
            "--restart=Never",
            "--image=busybox",
            "--overrides",
            r#"{"apiVersion":"v1","spec":{"nodeName":"n-life"}}"#,
            "--command",
            "--",
            "cat",
        ],
        "hello once\n",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("hello once"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(r#"pod "once" deleted"#), "{stdout}");
    // kubectl run -it --rm (under `script`, so kubectl has a terminal): a `tty: true` container
    // runs on a terminal of its own, and attach reaches it.
    let text = run_on_terminal(&c);
    if !(text.contains("/dev/pts/") && text.contains("got hello")) {
        panic!("{text:?}\n{}", terminal_evidence(&c, "tt", "read x; tty"));
    }
    assert!(text.contains(r#"pod "tt" deleted"#), "{text:?}");
    // A client that leaves closes the terminal's stdin (stdinOnce), which hangs the terminal
    // up, as containerd does: the shell's read ends, and so does the container.
    leave_terminal(&c, "hup");
    let ended = (0..60).any(|_| {
        std::thread::sleep(Duration::from_secs(1));
        matches!(
            field(&c, "hup", "{.status.phase}").as_str(),
            "Succeeded" | "Failed"
        )
    });
    if !ended {
        panic!("{}", terminal_evidence(&c, "hup", "read x; echo"));
    }
    // Its last, unfinished line (the key echoed before the hang-up) is in its log.
    let log = c.ok(&["logs", "hup"]);
    assert!(log.contains('Z'), "{log:?}");
    c.ok(&["delete", "pod", "hup", "--wait=false"]);
    // Follow: lines written after the request arrive on the open stream.
    let seen: usize = logs.lines().filter(|l| l.starts_with("tick")).count();
    let out = c.dir.path().join("follow.txt");
    let mut follow = c.kubectl_spawn(&["logs", "-f", "web", "-c", "main"], &out);
    eventually(Duration::from_secs(30), "followed ticks", || {
        std::fs::read_to_string(&out)
            .unwrap_or_default()
            .contains(&format!("tick {}\n", seen + 6))
    });
    let _ = follow.kill();
    let _ = follow.wait();
}

/// Starts `cmd` on a terminal of its own (under `script`), its input and output piped.
fn on_terminal(c: &ApiCluster, cmd: &str) -> std::process::Child {
    std::process::Command::new("script")
        .args(["-qec", cmd, "/dev/null"])
        .env("SHELL", "/bin/sh")
        .env("KUBECONFIG", c.kubeconfig())
        .env("HOME", c.dir.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("script (util-linux)")
}

/// Runs `kubectl run -it --rm` on a terminal (under `script`) and types a line once kubectl
/// shows its prompt; returns everything the terminal showed.
///
/// `script` runs the command through `$SHELL -c`, set here to dash as on CI. dash keeps itself
/// as the terminal's foreground process, and a plain `timeout` would move itself and kubectl
/// into a process group of their own in the background, where kubectl's switch to raw mode
/// stops it (SIGTTOU) with the typed line left unread: `--foreground` keeps them in the
/// terminal's foreground group.
fn run_on_terminal(c: &ApiCluster) -> String {
    use std::io::{Read, Write};
    use std::sync::{Arc, Mutex};
    let mut child = on_terminal(
        c,
        r#"timeout --foreground 60 kubectl run tt -it --rm --restart=Never --image=busybox --overrides='{"apiVersion":"v1","spec":{"nodeName":"n-life"}}' --command -- sh -c 'read x; tty; echo "got $x"'"#,
    );
    let shown = Arc::new(Mutex::new(Vec::new()));
    let reader = {
        let (mut out, shown) = (child.stdout.take().unwrap(), shown.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = out.read(&mut buf) {
                shown.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        })
    };
    let text = || String::from_utf8_lossy(&shown.lock().unwrap()).into_owned();
    // Typed once kubectl is attached (its prompt shown), and the terminal kept open until
    // kubectl is done.
    let mut input = child.stdin.take().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while !text().contains("try pressing enter")
        && child.try_wait().unwrap().is_none()
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(1));
    // kubectl may have ended already (what it showed says why).
    let _ = input.write_all(b"hello\n");
    child.wait().unwrap();
    drop(input);
    reader.join().unwrap();
    text()
}

/// Starts `kubectl run -it` (no `--rm`) of pod `pod` on a terminal, and once kubectl is
/// attached (a typed key comes back, echoed by the container's terminal), closes the
/// terminal: kubectl is hung up and leaves.
fn leave_terminal(c: &ApiCluster, pod: &str) {
    use std::io::{Read, Write};
    let cmd = format!(
        r#"timeout --foreground 60 kubectl run {pod} -it --restart=Never --image=busybox --overrides='{{"apiVersion":"v1","spec":{{"nodeName":"n-life"}}}}' --command -- sh -c 'read x; echo "after $x"'"#
    );
    let mut child = on_terminal(c, &cmd);
    let mut out = child.stdout.take().unwrap();
    let mut input = child.stdin.take().unwrap();
    let mut shown = Vec::new();
    let mut buf = [0u8; 4096];
    let mut read_until = |what: &str, shown: &mut Vec<u8>| {
        while !String::from_utf8_lossy(shown).contains(what) {
            match out.read(&mut buf) {
                Ok(n @ 1..) => shown.extend_from_slice(&buf[..n]),
                _ => panic!("kubectl ended: {:?}", String::from_utf8_lossy(shown)),
            }
        }
    };
    read_until("try pressing enter", &mut shown);
    // kubectl's terminal is raw a moment after its prompt: what comes back then is the
    // container's echo.
    std::thread::sleep(Duration::from_secs(1));
    input.write_all(b"Z").unwrap();
    read_until("Z", &mut shown);
    let _ = child.kill();
    let _ = child.wait();
}

/// What a failed terminal run leaves to look at: the pod's status and log, and the state of
/// the container's processes (those whose command line holds `needle`).
fn terminal_evidence(c: &ApiCluster, pod: &str, needle: &str) -> String {
    let out = |args: &[&str]| {
        let o = c.kubectl(args);
        format!(
            "$ kubectl {}\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };
    let mut text = out(&["get", "pod", pod, "-o", "jsonpath={.status}"]);
    text += &out(&["logs", pod]);
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let dir = entry.path();
        let cmdline = std::fs::read(dir.join("cmdline")).unwrap_or_default();
        if !String::from_utf8_lossy(&cmdline).contains(needle) {
            continue;
        }
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
        let stdin = std::fs::read_link(dir.join("fd/0")).unwrap_or_default();
        text += &format!(
            "\nprocess {}: {:?}\nstat: {}wchan: {}\nstdin: {}\n",
            dir.display(),
            String::from_utf8_lossy(&cmdline),
            read("stat"),
            read("wchan"),
            stdin.display()
        );
    }
    text
}

const PROBES: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: slow-ready}
spec:
  nodeName: n-probe
  containers:
  - name: c
    image: busybox
    command: ["sh", "-c", ": keelson-probe-marker; sleep 8; touch /tmp/ready; while true; do sleep 1; done"]
    readinessProbe:
      exec: {command: ["test", "-f", "/tmp/ready"]}
      periodSeconds: 1
---
apiVersion: v1
kind: Pod
metadata: {name: unhealthy}
spec:
  nodeName: n-probe
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: busybox
    command: ["sleep", "1000"]
    livenessProbe:
      exec: {command: ["test", "-f", "/nonexistent"]}
      periodSeconds: 1
      failureThreshold: 1
---
apiVersion: v1
kind: Pod
metadata: {name: crasher}
spec:
  nodeName: n-probe
  containers:
  - name: c
    image: busybox
    command: ["sh", "-c", "echo crashing; exit 3"]
---
apiVersion: v1
kind: Pod
metadata: {name: no-binary}
spec:
  nodeName: n-probe
  restartPolicy: Never
  containers:
  - name: c
    image: busybox
    command: ["no-such-binary-here"]
---
apiVersion: v1
kind: Pod
metadata: {name: no-config}
spec:
  nodeName: n-probe
  containers:
  - name: c
    image: busybox
    command: ["sleep", "1000"]
    env:
    - {name: X, valueFrom: {configMapKeyRef: {name: missing, key: k}}}
---
apiVersion: v1
kind: Pod
metadata: {name: bad-mount}
spec:
  nodeName: n-probe
  containers:
  - name: c
    image: busybox
    command: ["sleep", "1000"]
    volumeMounts: [{name: v, mountPath: /etc/keelson-no-such-dir}]
  volumes: [{name: v, emptyDir: {}}]
---
apiVersion: v1
kind: Pod
metadata: {name: too-big}
spec:
  nodeName: n-probe
  containers:
  - name: c
    image: busybox
    command: ["sleep", "1000"]
    resources: {requests: {cpu: "1000"}}
"#;

#[test]
fn probes_restarts_and_bad_input() {
    let c = ApiCluster::start(Backend::Keelson, 1);
    let node = Node::start(&c, "n-probe", "10.200.2.0/24", &[]);
    apply(&c, PROBES);
    // Readiness gates Ready: False while the probe fails, True once it passes.
    wait_field(&c, "slow-ready", "{.status.phase}", |v| v == "Running");
    let first = field(&c, "slow-ready", READY);
    assert_eq!(first, "False", "not ready before the probe passes");
    wait_field(&c, "slow-ready", READY, |v| v == "True");
    // Turned True, the condition says no more why it was False.
    let ready: serde_json::Value = serde_json::from_str(&field(
        &c,
        "slow-ready",
        r#"{.status.conditions[?(@.type=="Ready")]}"#,
    ))
    .unwrap();
    assert_eq!(ready["status"], "True", "{ready}");
    assert!(
        ready.get("reason").is_none() && ready.get("message").is_none(),
        "{ready}"
    );
    // Liveness failure: killed and restarted.
    wait_field(
        &c,
        "unhealthy",
        "{.status.containerStatuses[0].restartCount}",
        |v| v.parse::<i32>().unwrap_or(0) >= 1,
    );
    let ev = events(&c, "unhealthy");
    assert!(ev.contains("Unhealthy: Liveness probe failed"), "{ev}");
    assert!(
        ev.contains("Killing: Container c failed liveness probe, will be restarted"),
        "{ev}"
    );
    // A crashing container: restarted, then held in CrashLoopBackOff with its last exit.
    wait_field(
        &c,
        "crasher",
        "{.status.containerStatuses[0].state.waiting.reason}",
        |v| v == "CrashLoopBackOff",
    );
    assert_eq!(
        field(
            &c,
            "crasher",
            "{.status.containerStatuses[0].lastState.terminated.exitCode}"
        ),
        "3"
    );
    assert_eq!(c.ok(&["logs", "crasher", "--previous"]).trim(), "crashing");
    // Bad input: the upstream reasons, and the node keeps running everything else.
    wait_field(&c, "no-binary", "{.status.phase}", |v| v == "Failed");
    let msg = field(
        &c,
        "no-binary",
        "{.status.containerStatuses[0].state.terminated.message}",
    );
    assert!(msg.contains("executable file not found in $PATH"), "{msg}");
    assert_eq!(
        field(
            &c,
            "no-binary",
            "{.status.containerStatuses[0].state.terminated.reason}"
        ),
        "StartError"
    );
    let waiting = wait_field(
        &c,
        "no-config",
        "{.status.containerStatuses[0].state.waiting.reason}",
        |v| v == "CreateContainerConfigError",
    );
    assert_eq!(waiting, "CreateContainerConfigError");
    assert_eq!(
        field(
            &c,
            "no-config",
            "{.status.containerStatuses[0].state.waiting.message}"
        ),
        "configmap \"missing\" not found"
    );
    let msg = wait_field(
        &c,
        "bad-mount",
        "{.status.containerStatuses[0].state.waiting.reason}",
        |v| v == "CreateContainerError",
    );
    assert_eq!(msg, "CreateContainerError");
    assert!(
        !std::path::Path::new("/etc/keelson-no-such-dir").exists(),
        "nothing is created on the host"
    );
    wait_field(&c, "too-big", "{.status.phase}", |v| v == "Failed");
    assert_eq!(field(&c, "too-big", "{.status.reason}"), "OutOfcpu");
    assert_eq!(field(&c, "slow-ready", READY), "True");
    // A node killed outright: the node lifecycle controller marks it not ready; restarted on
    // the same data dir, it removes what the dead one left and runs its pods again.
    let _cm = Component::start(
        &c,
        "controller-manager",
        "cm",
        &[
            "--leader-elect=false",
            "--controllers=nodelifecycle",
            "--node-monitor-grace-period=6s",
        ],
    );
    let marker = || {
        let out = std::process::Command::new("pgrep")
            .args(["-f", "keelson-probe-marker"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).lines().count()
    };
    // The container's processes (the shim outside and the command inside).
    let running = marker();
    assert!(running >= 1);
    let started = field(
        &c,
        "slow-ready",
        "{.status.containerStatuses[0].state.running.startedAt}",
    );
    let mut node = node;
    node.comp.kill();
    eventually(Duration::from_secs(60), "node n-probe not ready", || {
        let out = c.kubectl(&[
            "get",
            "node",
            "n-probe",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
        ]);
        String::from_utf8_lossy(&out.stdout).trim() == "Unknown"
    });
    assert!(
        c.ok(&["get", "node", "n-probe"]).contains("NotReady"),
        "kubectl shows NotReady"
    );
    assert_eq!(marker(), running, "the killed node's container outlives it");
    drop(node);
    let _node = Node::start(&c, "n-probe", "10.200.2.0/24", &[]);
    eventually(Duration::from_secs(30), "slow-ready restarted", || {
        let now = field(
            &c,
            "slow-ready",
            "{.status.containerStatuses[0].state.running.startedAt}",
        );
        !now.is_empty() && now != started && marker() == running
    });
    wait_field(&c, "slow-ready", READY, |v| v == "True");
    // Another writer marks the pod not ready (as the node lifecycle controller does for a
    // silent node): the node writes its own status again.
    c.ok(&[
        "patch",
        "pod",
        "slow-ready",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"conditions":[{"type":"Ready","status":"False"}]}}"#,
    ]);
    wait_field(&c, "slow-ready", READY, |v| v == "True");
}
