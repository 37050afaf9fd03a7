//! The hollow runtime: containers that exist only as state, for scale tests (kubemark's hollow
//! kubelet). A container "runs" after a start delay and, if told to, exits after a while with a
//! given code; probes and hooks answer as annotations say. Annotations (on the pod):
//!
//! - `hollow.keelson.dev/start-delay`: how long a container takes to start (Go duration, `0s`);
//! - `hollow.keelson.dev/run-for`: an app container exits after this long (default: never;
//!   init containers complete at once);
//! - `hollow.keelson.dev/exit-code`: its exit code then (default 0);
//! - `hollow.keelson.dev/ready`: `false` makes readiness probes fail;
//! - `hollow.keelson.dev/live`: `false` makes liveness (and startup) probes fail;
//! - `hollow.keelson.dev/start-error`: the container fails to start with this message.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{LifecycleHandler, Pod, Probe};
use tokio::sync::watch;

use crate::runtime::{
    ContainerHandle, ExecOutput, Exit, ProbeKind, Runtime, Sandbox, StartError, StartSpec,
};

const PREFIX: &str = "hollow.keelson.dev/";

/// Simulated containers.
#[derive(Default)]
pub struct HollowRuntime {
    next_id: AtomicU64,
    next_ip: AtomicU64,
}

impl HollowRuntime {
    /// A hollow runtime.
    pub fn new() -> Self {
        Self::default()
    }
}

/// Trims from a pod what a hollow node's runtime never reads, before its pod cache keeps it: the
/// volumes (nothing is mounted) and the containers' mounts of them, about a third of a typical
/// pod's memory. The API's object is untouched (status writes are patches of the status alone);
/// the node's own `/pods` endpoint shows the trimmed pods.
pub fn trim_pod(pod: &mut Pod) {
    if let Some(spec) = pod.spec.as_mut() {
        spec.volumes = None;
        let init = spec.init_containers.iter_mut().flatten();
        for c in spec.containers.iter_mut().chain(init) {
            c.volume_mounts = None;
            c.volume_devices = None;
        }
    }
}

fn annotation<'a>(pod: &'a Pod, key: &str) -> Option<&'a str> {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(&format!("{PREFIX}{key}")))
        .map(String::as_str)
}

fn duration(pod: &Pod, key: &str) -> Option<Duration> {
    annotation(pod, key).and_then(|v| keelson_client::duration::parse_go_duration(v).ok())
}

struct Hollow {
    id: String,
    exit: watch::Sender<Option<Exit>>,
    ready: bool,
    live: bool,
}

impl ContainerHandle for Hollow {
    fn id(&self) -> &str {
        &self.id
    }

    fn exited(&self) -> watch::Receiver<Option<Exit>> {
        self.exit.subscribe()
    }

    fn signal(&self, kill: bool) {
        // A hollow container honours SIGTERM at once.
        let code = if kill { 137 } else { 143 };
        self.exit.send_if_modified(|e| {
            if e.is_some() {
                return false;
            }
            let mut x = Exit::with_code(code);
            x.signal = Some(if kill { 9 } else { 15 });
            *e = Some(x);
            true
        });
    }

    fn probe(
        &self,
        kind: ProbeKind,
        _p: &Probe,
        _ip: &str,
    ) -> BoxFuture<'static, Result<(), String>> {
        let ok = match kind {
            ProbeKind::Readiness => self.ready,
            ProbeKind::Liveness | ProbeKind::Startup => self.live,
        };
        Box::pin(async move {
            if ok {
                Ok(())
            } else {
                Err("hollow probe set to fail by annotation".into())
            }
        })
    }

    fn hook(&self, h: &LifecycleHandler, _ip: &str) -> BoxFuture<'static, Result<(), String>> {
        let sleep = h
            .sleep
            .as_ref()
            .map(|s| Duration::from_secs(s.seconds.max(0) as u64));
        Box::pin(async move {
            if let Some(d) = sleep {
                tokio::time::sleep(d).await;
            }
            Ok(())
        })
    }

    fn exec(
        &self,
        _cmd: Vec<String>,
        _t: Duration,
    ) -> BoxFuture<'static, Result<ExecOutput, String>> {
        Box::pin(async {
            Ok(ExecOutput {
                code: 0,
                output: String::new(),
            })
        })
    }
}

impl Runtime for HollowRuntime {
    fn name(&self) -> &'static str {
        "hollow"
    }

    fn materializes(&self) -> bool {
        false
    }

    fn pod_dir(&self, _uid: &str) -> PathBuf {
        PathBuf::new()
    }

    fn create_sandbox<'a>(&'a self, _pod: &'a Pod) -> BoxFuture<'a, Result<Sandbox, String>> {
        // Addresses from 10.64.0.0/10, one per sandbox, as a CNI plugin would hand out.
        let n = self.next_ip.fetch_add(1, Ordering::Relaxed) % (1 << 22);
        let ip = format!("10.{}.{}.{}", 64 + (n >> 16), (n >> 8) & 255, n & 255);
        Box::pin(async move { Ok(Sandbox { ips: vec![ip] }) })
    }

    fn remove_sandbox<'a>(&'a self, _pod: &'a Pod) -> BoxFuture<'a, ()> {
        Box::pin(async {})
    }

    fn start<'a>(
        &'a self,
        spec: StartSpec<'a>,
    ) -> BoxFuture<'a, Result<Arc<dyn ContainerHandle>, StartError>> {
        Box::pin(async move {
            let pod = spec.pod;
            if let Some(msg) = annotation(pod, "start-error") {
                return Err(StartError {
                    reason: "StartError",
                    message: msg.to_string(),
                });
            }
            if let Some(d) = duration(pod, "start-delay") {
                tokio::time::sleep(d).await;
            }
            let id = format!("{:016x}", self.next_id.fetch_add(1, Ordering::Relaxed));
            let (tx, _) = watch::channel(None);
            let h = Arc::new(Hollow {
                id,
                exit: tx,
                ready: annotation(pod, "ready") != Some("false"),
                live: annotation(pod, "live") != Some("false"),
            });
            // Init containers complete at once; app containers run until told otherwise.
            let run_for = if spec.init {
                Some(Duration::ZERO)
            } else {
                duration(pod, "run-for")
            };
            if let Some(run_for) = run_for {
                let code = if spec.init {
                    0
                } else {
                    annotation(pod, "exit-code")
                        .and_then(|c| c.parse().ok())
                        .unwrap_or(0)
                };
                let weak = Arc::downgrade(&h);
                tokio::spawn(async move {
                    tokio::time::sleep(run_for).await;
                    if let Some(h) = weak.upgrade() {
                        h.exit.send_if_modified(|e| {
                            if e.is_some() {
                                return false;
                            }
                            *e = Some(Exit::with_code(code));
                            true
                        });
                    }
                });
            }
            Ok(h as Arc<dyn ContainerHandle>)
        })
    }
}

#[cfg(test)]
mod trim_tests {
    use super::*;

    #[test]
    fn a_hollow_node_drops_volumes_and_mounts_and_keeps_what_it_reads() {
        let mut pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "annotations": {"hollow.keelson.dev/exit-after": "1s"}},
            "spec": {
                "volumes": [{"name": "v", "emptyDir": {}}],
                "initContainers": [{"name": "i", "image": "x",
                    "volumeMounts": [{"name": "v", "mountPath": "/v"}]}],
                "containers": [{"name": "c", "image": "y",
                    "resources": {"requests": {"cpu": "1m"}},
                    "volumeMounts": [{"name": "v", "mountPath": "/v"}]}]
            }
        }))
        .unwrap();
        trim_pod(&mut pod);
        let spec = pod.spec.as_ref().unwrap();
        assert!(spec.volumes.is_none());
        assert!(spec.containers[0].volume_mounts.is_none());
        assert!(
            spec.init_containers.as_ref().unwrap()[0]
                .volume_mounts
                .is_none()
        );
        assert_eq!(spec.containers[0].image.as_deref(), Some("y"));
        assert!(spec.containers[0].resources.is_some());
        assert_eq!(duration(&pod, "exit-after"), Some(Duration::from_secs(1)));
    }
}
