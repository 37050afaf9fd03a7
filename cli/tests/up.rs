//! `keelson up` end to end: the README's first command starts stores and apiservers behind one
//! address; kubectl works with the written kubeconfig; killing an apiserver is invisible to
//! kubectl and the apiserver comes back; Ctrl-C stops every process.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn children_of(pid: u32) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let status = std::fs::read_to_string(format!("/proc/{p}/status")).unwrap_or_default();
        let ppid = status
            .lines()
            .find_map(|l| l.strip_prefix("PPid:"))
            .map(|v| v.trim().parse::<u32>().unwrap_or(0));
        if ppid == Some(pid) {
            let cmd = std::fs::read_to_string(format!("/proc/{p}/cmdline"))
                .unwrap_or_default()
                .replace('\0', " ");
            out.push((p, cmd));
        }
    }
    out
}

fn kubectl(
    kubeconfig: &std::path::Path,
    home: &std::path::Path,
    args: &[&str],
) -> std::process::Output {
    Command::new("kubectl")
        .env("KUBECONFIG", kubeconfig)
        .env("HOME", home)
        .args(args)
        .output()
        .expect("kubectl must be installed")
}

#[test]
fn up_serves_kubectl_and_survives_an_apiserver_kill() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let data = dir.path().join("data");
    let mut up = Command::new(env!("CARGO_BIN_EXE_keelson"))
        .args(["up", "--port", &port.to_string(), "--data-dir"])
        .arg(&data)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(up.stdout.take().unwrap()).lines();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let l = lines.next().expect("keelson up ended early").unwrap();
        if l.starts_with("Press Ctrl-C") {
            break;
        }
        assert!(Instant::now() < deadline, "keelson up did not become ready");
    }
    let kc = data.join("admin.kubeconfig");
    let ready = Instant::now() + Duration::from_secs(30);
    while !kubectl(&kc, dir.path(), &["get", "ns", "default"])
        .status
        .success()
    {
        assert!(Instant::now() < ready, "kubectl cannot reach the cluster");
        std::thread::sleep(Duration::from_millis(200));
    }
    let procs = children_of(up.id());
    assert_eq!(
        procs.iter().filter(|(_, c)| c.contains(" store ")).count(),
        3,
        "{procs:?}"
    );
    let apis: Vec<u32> = procs
        .iter()
        .filter(|(_, c)| c.contains(" apiserver "))
        .map(|(p, _)| *p)
        .collect();
    assert_eq!(apis.len(), 2, "{procs:?}");
    assert_eq!(
        procs
            .iter()
            .filter(|(_, c)| c.contains(" controller-manager "))
            .count(),
        2,
        "{procs:?}"
    );

    assert_eq!(
        procs
            .iter()
            .filter(|(_, c)| c.contains(" scheduler "))
            .count(),
        2,
        "{procs:?}"
    );
    assert_eq!(
        procs.iter().filter(|(_, c)| c.contains(" node ")).count(),
        2,
        "{procs:?}"
    );
    let nodes_by = Instant::now() + Duration::from_secs(60);
    loop {
        let out = kubectl(
            &kc,
            dir.path(),
            &[
                "get",
                "nodes",
                "-o",
                "jsonpath={range .items[*]}{.metadata.name}={.status.conditions[?(@.type==\"Ready\")].status} {end}",
            ],
        );
        if String::from_utf8_lossy(&out.stdout).trim() == "node-0=True node-1=True" {
            break;
        }
        assert!(Instant::now() < nodes_by, "nodes never became Ready");
        std::thread::sleep(Duration::from_millis(300));
    }
    // The controllers, the scheduler and the nodes work: a Deployment gets its pods, they are
    // spread over the nodes and run, and one controller-manager and one scheduler lead.
    let out = kubectl(
        &kc,
        dir.path(),
        &[
            "create",
            "deployment",
            "web",
            "--image=registry.k8s.io/pause:3.9",
            "--replicas=2",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pods_by = Instant::now() + Duration::from_secs(60);
    loop {
        let out = kubectl(
            &kc,
            dir.path(),
            &["get", "pods", "-l", "app=web", "-o", "name"],
        );
        let bound = kubectl(
            &kc,
            dir.path(),
            &[
                "get",
                "pods",
                "-l",
                "app=web",
                "-o",
                "jsonpath={range .items[*]}{.spec.nodeName}/{.status.phase} {end}",
            ],
        );
        let mut placed: Vec<String> = String::from_utf8_lossy(&bound.stdout)
            .split_whitespace()
            .map(str::to_string)
            .collect();
        placed.sort();
        if String::from_utf8_lossy(&out.stdout).lines().count() == 2
            && placed == ["node-0/Running", "node-1/Running"]
        {
            break;
        }
        assert!(
            Instant::now() < pods_by,
            "deployment pods never ran, one per node"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let holder = kubectl(
        &kc,
        dir.path(),
        &[
            "get",
            "lease",
            "-n",
            "kube-system",
            "kube-controller-manager",
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ],
    );
    assert!(!String::from_utf8_lossy(&holder.stdout).is_empty());
    let holder = kubectl(
        &kc,
        dir.path(),
        &[
            "get",
            "lease",
            "-n",
            "kube-system",
            "kube-scheduler",
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ],
    );
    assert!(!String::from_utf8_lossy(&holder.stdout).is_empty());

    // kubectl logs goes apiserver -> kubelet over TLS (client certificate, verified serving
    // certificate).
    let out = kubectl(
        &kc,
        dir.path(),
        &[
            "run",
            "hello",
            "--image=busybox",
            "--restart=Never",
            "--command",
            "--",
            "sh",
            "-c",
            "echo hello from keelson",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let logs_by = Instant::now() + Duration::from_secs(60);
    loop {
        let phase = kubectl(
            &kc,
            dir.path(),
            &["get", "pod", "hello", "-o", "jsonpath={.status.phase}"],
        );
        if String::from_utf8_lossy(&phase.stdout) == "Succeeded" {
            break;
        }
        assert!(Instant::now() < logs_by, "pod hello never succeeded");
        std::thread::sleep(Duration::from_millis(300));
    }
    let out = kubectl(&kc, dir.path(), &["logs", "hello"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello from keelson\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Kill one apiserver: every request through the balancer still succeeds.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(apis[0] as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    for i in 0..10 {
        let out = kubectl(
            &kc,
            dir.path(),
            &["create", "configmap", &format!("after-kill-{i}")],
        );
        assert!(
            out.status.success(),
            "request {i} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The killed apiserver is restarted.
    let back = Instant::now() + Duration::from_secs(30);
    loop {
        let now: Vec<u32> = children_of(up.id())
            .iter()
            .filter(|(_, c)| c.contains(" apiserver "))
            .map(|(p, _)| *p)
            .collect();
        if now.len() == 2 && !now.contains(&apis[0]) {
            break;
        }
        assert!(Instant::now() < back, "apiserver not restarted: {now:?}");
        std::thread::sleep(Duration::from_millis(200));
    }

    // Ctrl-C stops everything.
    let all: Vec<u32> = children_of(up.id()).iter().map(|(p, _)| *p).collect();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(up.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let status = up.wait().unwrap();
    assert!(status.success(), "keelson up exited with {status}");
    for p in all {
        assert!(
            !std::path::Path::new(&format!("/proc/{p}")).exists()
                || std::fs::read_to_string(format!("/proc/{p}/status"))
                    .unwrap_or_default()
                    .contains("State:\tZ"),
            "process {p} still running"
        );
    }
}
