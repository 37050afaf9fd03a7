//! Controller-manager processes and a stand-in kubelet for the tests.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config, ResourceExt};
use serde_json::json;

use crate::harness::{ApiCluster, free_port};

/// One `keelson controller-manager` process, killed on drop.
pub struct ControllerManager {
    pub child: Option<Child>,
    pub log: PathBuf,
    pub port: u16,
}

impl ControllerManager {
    pub fn start(c: &ApiCluster, name: &str, extra: &[&str]) -> Self {
        let log = c.dir.path().join(format!("{name}.log"));
        let port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_keelson"))
            .arg("controller-manager")
            .arg(format!("--kubeconfig={}", c.kubeconfig().display()))
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--secure-port={port}"))
            .args(["--kube-api-qps=500", "--kube-api-burst=1000"])
            .args(extra)
            .env("RUST_LOG", "info,keelson_client=debug")
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

    /// SIGTERM, then wait for the process to exit.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().unwrap();
        nix_term(c.id());
        c.wait().unwrap()
    }
}

fn nix_term(pid: u32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
}

impl Drop for ControllerManager {
    fn drop(&mut self) {
        self.kill();
    }
}

pub async fn client(kubeconfig: &Path) -> Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let kc = Kubeconfig::read_from(kubeconfig).unwrap();
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .unwrap();
    Client::try_from(config).unwrap()
}

/// Plays the kubelet for pods in `ns`: every pod without a Ready condition becomes Running and
/// Ready, with a pod IP. Runs until the returned task is aborted.
pub fn fake_kubelet(client: Client, ns: &str) -> tokio::task::JoinHandle<()> {
    let pods: Api<Pod> = Api::namespaced(client, ns);
    tokio::spawn(async move {
        let mut next_ip = 1u32;
        loop {
            if let Ok(list) = pods.list(&ListParams::default()).await {
                for p in list.items {
                    let ready = p
                        .status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready"));
                    if ready || p.metadata.deletion_timestamp.is_some() {
                        continue;
                    }
                    let now = k8s_openapi::jiff::Timestamp::now()
                        .strftime("%Y-%m-%dT%H:%M:%SZ")
                        .to_string();
                    let ip = format!("10.244.{}.{}", next_ip / 250, next_ip % 250 + 1);
                    next_ip += 1;
                    let patch = json!({"status": {
                        "phase": "Running",
                        "podIP": ip,
                        "podIPs": [{"ip": ip}],
                        "startTime": now,
                        "conditions": [
                            {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
                            {"type": "Initialized", "status": "True", "lastTransitionTime": now},
                            {"type": "ContainersReady", "status": "True", "lastTransitionTime": now},
                            {"type": "Ready", "status": "True", "lastTransitionTime": now},
                        ],
                    }});
                    let _ = pods
                        .patch_status(
                            &p.name_any(),
                            &PatchParams::default(),
                            &Patch::Merge(&patch),
                        )
                        .await;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
}
