//! The Python `kubernetes` client (installed by .ci/run) against the apiserver.

use crate::harness::{ApiCluster, Backend};

#[test]
fn python_client_crud_and_watch() {
    python_client_on(Backend::Keelson);
}

#[test]
fn python_client_crud_and_watch_on_etcd() {
    python_client_on(Backend::Etcd);
}

fn python_client_on(backend: Backend) {
    let c = ApiCluster::start(backend, 1);
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/apiserver/python_client.py"
    );
    let out = std::process::Command::new("python3")
        .arg(script)
        .arg(c.kubeconfig())
        .output()
        .expect("python3 must be installed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() || !stdout.contains("OK") {
        panic!(
            "python client failed on {backend:?} (pip install kubernetes; .ci/run does this):\n{stdout}\n{stderr}\n{}",
            c.logs()
        );
    }
}
