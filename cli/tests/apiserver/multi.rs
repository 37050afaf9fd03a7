//! Two apiservers on one store: each sees the other's writes and watches, and losing one is
//! invisible to a client that uses the other.

use std::time::Duration;

use crate::harness::{ApiCluster, Backend, eventually};

#[test]
fn two_apiservers_share_writes_and_watches() {
    let mut c = ApiCluster::start(Backend::Keelson, 2);
    let second = c.write_kubeconfig("second.kubeconfig", c.api_ports[1]);
    // A watch through the second apiserver sees a write through the first.
    let out_path = c.dir.path().join("watch2.out");
    let mut w = std::process::Command::new("kubectl")
        .env("KUBECONFIG", &second)
        .env("HOME", c.dir.path())
        .args(["get", "cm", "-n", "default", "-w", "--output-watch-events"])
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Give the watch time to start so the create arrives as a live event.
    eventually(Duration::from_secs(20), "the watch to start", || {
        let ok = c
            .kubectl_with(&second, &["get", "cm", "-n", "default"])
            .status
            .success();
        ok && std::fs::metadata(&out_path).is_ok()
    });
    std::thread::sleep(Duration::from_millis(500));
    c.ok(&[
        "create",
        "configmap",
        "from-first",
        "-n",
        "default",
        "--from-literal=k=v",
    ]);
    eventually(
        Duration::from_secs(20),
        "the second apiserver's watch to see the write",
        || {
            std::fs::read_to_string(&out_path)
                .unwrap_or_default()
                .contains("from-first")
        },
    );
    let _ = w.kill();
    let _ = w.wait();
    // A read through the second sees the first's write at once (linearizable reads).
    let out = c.kubectl_with(
        &second,
        &[
            "get",
            "cm",
            "from-first",
            "-n",
            "default",
            "-o",
            "jsonpath={.data.k}",
        ],
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "v");
    // Losing the first apiserver does not affect clients of the second.
    c.kill_apiserver(0);
    let out = c.kubectl_with(
        &second,
        &["create", "configmap", "after-kill", "-n", "default"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
