//! The pod worker: one task per pod, running it through upstream's lifecycle — sandbox, volumes,
//! init containers one by one, app containers with postStart hooks, startup/liveness/readiness
//! probes and restarts with CrashLoopBackOff back-off — and, when the pod is deleted or the node
//! stops, graceful termination: preStop, SIGTERM, the grace period, SIGKILL, then the final
//! delete of the pod object.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, Pod, PodStatus, Probe};
use kube::api::{Api, DeleteParams, Preconditions};
use parking_lot::Mutex;
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::agent::Agent;
use crate::runtime::{ContainerHandle, Exit, Mount, ProbeKind, Runtime, StartSpec};
use crate::status::{PodState, Verdict, node_condition, running, terminated, waiting};

/// The first restart delay after the first restart, and the cap (upstream: 10 s, 5 min).
const BACKOFF_BASE: Duration = Duration::from_secs(10);
const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// A container that ran this long has its back-off reset.
const BACKOFF_RESET: Duration = Duration::from_secs(600);
/// The shortest grace period the kubelet gives (upstream's minimumGracePeriodInSeconds).
const MIN_GRACE: Duration = Duration::from_secs(2);

/// One pod's worker.
pub struct Worker<R> {
    agent: Arc<Agent<R>>,
    state: Arc<Mutex<PodState>>,
    rx: Mutex<Option<watch::Receiver<Arc<Pod>>>>,
    gone: CancellationToken,
    /// The kubelet's life this worker belongs to ([`Agent::life`]).
    life: CancellationToken,
    last: Mutex<Option<PodStatus>>,
    backoff: Mutex<HashMap<String, Duration>>,
    /// When the node's shutdown grace period ends, once this worker has seen the node stop.
    shutdown_by: std::sync::OnceLock<Instant>,
}

/// Why a container did not start.
enum Failure {
    /// Its configuration cannot be resolved yet (CreateContainerConfigError) or the runtime
    /// cannot create it (CreateContainerError): retried without counting a restart.
    Config,
    /// The runtime could not start it: counts as an exit.
    Exit(Exit),
}

enum Stop {
    /// The pod has a deletionTimestamp: terminate with this grace period, then delete it.
    Deleted(Duration),
    /// The pod object is gone (force-deleted).
    Gone,
    /// The node is stopping.
    Shutdown,
    /// The node failed ([`Agent::fail`]): the worker ends where it stands.
    Killed,
}

impl<R: Runtime> Worker<R> {
    /// A worker for a pod (not started).
    pub fn new(
        agent: Arc<Agent<R>>,
        state: Arc<Mutex<PodState>>,
        rx: watch::Receiver<Arc<Pod>>,
        gone: CancellationToken,
        life: CancellationToken,
    ) -> Arc<Self> {
        Arc::new(Self {
            agent,
            state,
            rx: Mutex::new(Some(rx)),
            gone,
            life,
            last: Mutex::new(None),
            backoff: Mutex::new(HashMap::new()),
            shutdown_by: std::sync::OnceLock::new(),
        })
    }

    fn pod(&self) -> Arc<Pod> {
        self.state.lock().pod.clone()
    }

    fn rt(&self) -> &R {
        &self.agent.shared.runtime
    }

    /// Builds the status and queues a write when it changed. The node's own conditions come
    /// from what it last wrote, other writers' as the API has them.
    fn publish(&self) {
        if self.killed() {
            return;
        }
        let st = self.state.lock();
        let mut last = self.last.lock();
        let old = match last.clone() {
            Some(mut mine) => {
                let theirs = st
                    .pod
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .into_iter()
                    .flatten()
                    .filter(|c| !node_condition(&c.type_));
                let own = mine.conditions.take().into_iter().flatten();
                mine.conditions = Some(
                    own.filter(|c| node_condition(&c.type_))
                        .chain(theirs.cloned())
                        .collect(),
                );
                Some(mine)
            }
            None => st.pod.status.clone(),
        };
        let new = st.build(old.as_ref());
        if last.as_ref() != Some(&new) {
            self.agent.write_status(&st.pod, &new);
            *last = Some(new);
        }
    }

    /// A new version of the pod arrived. Once this worker has written a status: other writers'
    /// conditions (readiness gates) may change its own, and when the API shows another phase
    /// or other node conditions than it last wrote, with no write of its own on the way,
    /// someone else wrote them (the node lifecycle controller marks a silent node's pods not
    /// ready) or a write was lost, so its own are written again, as upstream's status manager
    /// reconciles.
    fn reconcile(&self, pod: &Pod) {
        if self.last.lock().is_none() {
            return;
        }
        self.publish();
        fn summary(s: Option<&PodStatus>) -> (Option<&str>, Vec<(&str, &str)>) {
            let mut conds: Vec<(&str, &str)> = s
                .and_then(|s| s.conditions.as_ref())
                .into_iter()
                .flatten()
                .filter(|c| node_condition(&c.type_))
                .map(|c| (c.type_.as_str(), c.status.as_str()))
                .collect();
            conds.sort_unstable();
            (s.and_then(|s| s.phase.as_deref()), conds)
        }
        let last = self.last.lock();
        let Some(mine) = last.as_ref() else {
            return;
        };
        if summary(pod.status.as_ref()) != summary(Some(mine)) {
            self.agent.write_status_unless_busy(pod, mine);
        }
    }

    /// Whether the node failed in this worker's life ([`Agent::fail`]): the worker and its
    /// supervisors end, and say nothing more (a later life has its own workers).
    fn killed(&self) -> bool {
        self.life.is_cancelled() && !self.agent.stopping().is_cancelled()
    }

    /// The container's exit; `None` if the node fails first.
    async fn exit_of(&self, h: &Arc<dyn ContainerHandle>) -> Option<Exit> {
        tokio::select! {
            e = wait_exit(h) => return Some(e),
            _ = self.life.cancelled() => {}
        }
        // (The life also ends when the node stops: then the container is being stopped.)
        if self.killed() {
            None
        } else {
            Some(wait_exit(h).await)
        }
    }

    fn event(&self, container: Option<&str>, warn: bool, reason: &str, msg: String) {
        if self.killed() {
            return;
        }
        let pod = self.pod();
        self.agent.event(&pod, container, warn, reason, msg);
    }

    fn spec_of(&self, init: bool, i: usize) -> Container {
        let pod = self.pod();
        let spec = pod.spec.as_ref().expect("pod with a spec");
        if init {
            spec.init_containers.as_ref().expect("init containers")[i].clone()
        } else {
            spec.containers[i].clone()
        }
    }

    fn restart_policy(&self) -> String {
        self.pod()
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.clone())
            .unwrap_or_else(|| "Always".into())
    }

    fn pod_ip(&self) -> String {
        let st = self.state.lock();
        st.ips
            .first()
            .cloned()
            .unwrap_or_else(|| st.host_ip.clone())
    }

    /// Waits until the pod is deleted, force-deleted, or the node stops.
    async fn wait_stop(&self, rx: &mut watch::Receiver<Arc<Pod>>) -> Stop {
        loop {
            let pod = rx.borrow_and_update().clone();
            self.state.lock().pod = pod.clone();
            self.reconcile(&pod);
            if pod.metadata.deletion_timestamp.is_some() {
                let grace = pod
                    .metadata
                    .deletion_grace_period_seconds
                    .or_else(|| {
                        pod.spec
                            .as_ref()
                            .and_then(|s| s.termination_grace_period_seconds)
                    })
                    .unwrap_or(30);
                return Stop::Deleted(Duration::from_secs(grace.max(0) as u64));
            }
            tokio::select! {
                biased;
                _ = self.agent.stopping().cancelled() => return Stop::Shutdown,
                // (The life ends with the node's stopping too: that is a shutdown, above.)
                _ = self.life.cancelled() => return Stop::Killed,
                r = rx.changed() => if r.is_err() { return Stop::Gone },
                _ = self.gone.cancelled() => return Stop::Gone,
            }
        }
    }

    fn grace_of_spec(&self) -> Duration {
        Duration::from_secs(
            self.pod()
                .spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds)
                .unwrap_or(30)
                .max(0) as u64,
        )
    }

    async fn final_delete(&self) {
        let pod = self.pod();
        let api: Api<Pod> = Api::namespaced(
            self.agent.client.clone(),
            pod.metadata.namespace.as_deref().unwrap_or("default"),
        );
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: pod.metadata.uid.clone(),
                resource_version: None,
            }),
            ..Default::default()
        };
        let name = pod.metadata.name.clone().unwrap_or_default();
        for attempt in 0..5 {
            // A node stopping waits a few seconds at most for an answer, one asked before too.
            let stopped = async {
                self.agent.stopping().cancelled().await;
                tokio::time::sleep(Duration::from_secs(5)).await;
            };
            let answer = tokio::select! {
                r = api.delete(&name, &dp) => r,
                _ = stopped => Err(kube::Error::Service("no answer within 5 s of the node stopping".into())),
            };
            match answer {
                Ok(_) => return,
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => return,
                Err(e) => {
                    tracing::warn!(pod = %name, error = %e, attempt, "final pod delete failed");
                    // A node stopping tries once: it must be done before it can be killed.
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1 << attempt)) => {}
                        _ = self.gone.cancelled() => return,
                        _ = self.agent.stopping().cancelled() => return,
                    }
                }
            }
        }
    }

    /// Returns at `deadline`, or earlier when the node stops and its shutdown grace period
    /// (counted from when this pod's worker first saw it stop) ends first, though not before
    /// `floor`: a node stopping cuts the terminations under way to its own grace period, as the
    /// kubelet's shutdown manager does, so it is done before it can be killed.
    async fn grace_ends(&self, deadline: Instant, floor: Instant) {
        let stopping = self.agent.stopping().clone();
        let cut = async {
            stopping.cancelled().await;
            let by = *self
                .shutdown_by
                .get_or_init(|| Instant::now() + self.agent.shared.shutdown_grace);
            tokio::time::sleep_until(by.max(floor).into()).await;
        };
        tokio::select! {
            _ = tokio::time::sleep_until(deadline.into()) => {}
            _ = cut => {}
        }
    }

    /// Stops every running container: preStop (app containers), SIGTERM, the rest of the grace
    /// period, SIGKILL.
    async fn terminate(self: &Arc<Self>, grace: Duration) {
        let grace = grace.max(MIN_GRACE);
        let running: Vec<(bool, usize, Arc<dyn ContainerHandle>)> = {
            let st = self.state.lock();
            st.init
                .iter()
                .enumerate()
                .map(|(i, s)| (true, i, s))
                .chain(st.app.iter().enumerate().map(|(i, s)| (false, i, s)))
                .filter(|(_, _, s)| s.running())
                .filter_map(|(init, i, s)| s.handle.clone().map(|h| (init, i, h)))
                .collect()
        };
        let stops = running
            .into_iter()
            .map(|(init, i, h)| self.stop_container(init, i, h, grace, !init));
        futures::future::join_all(stops).await;
    }

    async fn stop_container(
        self: &Arc<Self>,
        init: bool,
        i: usize,
        h: Arc<dyn ContainerHandle>,
        grace: Duration,
        pre_stop: bool,
    ) {
        let c = self.spec_of(init, i);
        let deadline = Instant::now() + grace;
        let mut exited = h.exited();
        if pre_stop
            && let Some(hook) = c.lifecycle.as_ref().and_then(|l| l.pre_stop.as_ref())
            && exited.borrow().is_none()
        {
            let ip = self.pod_ip();
            tokio::select! {
                r = h.hook(hook, &ip) => if let Err(e) = r {
                    self.event(
                        Some(&c.name),
                        true,
                        "FailedPreStopHook",
                        format!("PreStopHook failed: {e}"),
                    );
                },
                _ = self.grace_ends(deadline, Instant::now()) => {}
            }
        }
        self.event(
            Some(&c.name),
            false,
            "Killing",
            format!("Stopping container {}", c.name),
        );
        h.signal(false);
        // At least upstream's minimum grace period after SIGTERM, whatever a preStop hook or a
        // node shutdown left of the grace period.
        let floor = Instant::now() + MIN_GRACE;
        let done = tokio::select! {
            _ = exited.wait_for(Option::is_some) => true,
            _ = self.grace_ends(deadline.max(floor), floor) => false,
        };
        if !done {
            h.signal(true);
            let _ = tokio::time::timeout(Duration::from_secs(10), exited.wait_for(Option::is_some))
                .await;
        }
    }

    /// Starts one container (resolving env first); on failure records the waiting reason.
    async fn start(
        self: &Arc<Self>,
        init: bool,
        i: usize,
        mounts: &HashMap<String, PathBuf>,
    ) -> Result<Arc<dyn ContainerHandle>, Failure> {
        let c = self.spec_of(init, i);
        let pod = self.pod();
        // Records a container that did not start: its state, a `Failed` event, the status.
        let record = |state: k8s_openapi::api::core::v1::ContainerState, msg: &str| {
            let mut st = self.state.lock();
            let s = st.slot_mut(init, i);
            s.state = state;
            s.ready = false;
            drop(st);
            self.event(Some(&c.name), true, "Failed", format!("Error: {msg}"));
            self.publish();
        };
        let fail = |reason: &str, msg: String| record(waiting(reason, Some(msg.clone())), &msg);
        let env = if self.rt().materializes() {
            let ip = self.pod_ip();
            let host_ip = self.state.lock().host_ip.clone();
            let client = &self.agent.shared.client;
            let resolved = match crate::env::service_env(client, &pod).await {
                Ok(services) => {
                    crate::env::resolve(client, &pod, &c, &ip, &host_ip, &services).await
                }
                Err(e) => Err(e),
            };
            match resolved {
                Ok(e) => e,
                Err(msg) => {
                    fail("CreateContainerConfigError", msg);
                    return Err(Failure::Config);
                }
            }
        } else {
            Vec::new()
        };
        let mut ms = Vec::new();
        for vm in c.volume_mounts.iter().flatten() {
            let Some(base) = mounts.get(&vm.name) else {
                if self.rt().materializes() {
                    let msg = format!("volume {:?} is not defined in the pod spec", vm.name);
                    fail("CreateContainerConfigError", msg);
                    return Err(Failure::Config);
                }
                continue;
            };
            let mut host_path = base.clone();
            if let Some(sp) = vm.sub_path.as_deref().filter(|s| !s.is_empty()) {
                if sp.split('/').any(|p| p == "..") || sp.starts_with('/') {
                    let msg = format!("subPath {sp:?} must be a relative path without '..'");
                    fail("CreateContainerConfigError", msg);
                    return Err(Failure::Config);
                }
                host_path = host_path.join(sp);
                if !host_path.exists() {
                    let _ = std::fs::create_dir_all(&host_path);
                }
            }
            ms.push(Mount {
                host_path,
                container_path: vm.mount_path.clone(),
                read_only: vm.read_only.unwrap_or(false),
            });
        }
        if self.rt().materializes() {
            // The kubelet-managed files, unless the container mounts something there itself.
            let dir = self.rt().pod_dir(pod.metadata.uid.as_deref().unwrap_or(""));
            for (file, path) in [("resolv.conf", "/etc/resolv.conf"), ("hosts", "/etc/hosts")] {
                let host_path = dir.join(file);
                if host_path.exists() && !ms.iter().any(|m| m.container_path == path) {
                    ms.push(Mount {
                        host_path,
                        container_path: path.into(),
                        read_only: false,
                    });
                }
            }
        }
        let restart_count = self.state.lock().slot_mut(init, i).restart_count;
        let spec = StartSpec {
            pod: &pod,
            container: &c,
            env,
            mounts: ms,
            restart_count,
            init,
        };
        match self.rt().start(spec).await {
            Ok(h) => {
                {
                    let mut st = self.state.lock();
                    let has_startup = c.startup_probe.is_some();
                    let has_readiness = c.readiness_probe.is_some();
                    let s = st.slot_mut(init, i);
                    s.container_id = Some(format!("{}://{}", self.rt().name(), h.id()));
                    s.handle = Some(h.clone());
                    s.state = running();
                    s.started = !has_startup;
                    s.ready = !init && !has_startup && !has_readiness;
                }
                self.event(
                    Some(&c.name),
                    false,
                    "Created",
                    format!("Created container: {}", c.name),
                );
                self.event(
                    Some(&c.name),
                    false,
                    "Started",
                    format!("Started container {}", c.name),
                );
                self.publish();
                Ok(h)
            }
            Err(e) if e.reason == "CreateContainerError" => {
                fail("CreateContainerError", e.message);
                Err(Failure::Config)
            }
            Err(e) => {
                let exit = Exit {
                    code: 128,
                    signal: None,
                    reason: "StartError".into(),
                    message: Some(e.message.clone()),
                    finished_at: jiff::Timestamp::now(),
                };
                record(terminated(&exit, None, None), &e.message);
                Err(Failure::Exit(exit))
            }
        }
    }

    /// Starts a container, waiting out configuration failures (`on_config_failure` runs at
    /// each). `None` once the pod is terminating; a container that finishes starting after
    /// that is killed at once. `Some(Err)` is a start failure, which counts as an exit.
    async fn launch(
        self: &Arc<Self>,
        init: bool,
        i: usize,
        mounts: &HashMap<String, PathBuf>,
        cancel: &CancellationToken,
        config_delay: &mut Duration,
        mut on_config_failure: impl FnMut(),
    ) -> Option<Result<Arc<dyn ContainerHandle>, Exit>> {
        loop {
            if cancel.is_cancelled() {
                return None;
            }
            match self.start(init, i, mounts).await {
                Err(Failure::Config) => {
                    on_config_failure();
                    if !self.config_retry(config_delay, cancel).await {
                        return None;
                    }
                }
                Err(Failure::Exit(exit)) => return Some(Err(exit)),
                Ok(h) => {
                    if cancel.is_cancelled() {
                        // The pod began terminating while this container was starting.
                        h.signal(true);
                    }
                    return Some(Ok(h));
                }
            }
        }
    }

    /// Waits before retrying a container whose configuration could not be resolved. `false` if
    /// cancelled.
    async fn config_retry(&self, delay: &mut Duration, cancel: &CancellationToken) -> bool {
        let d = *delay;
        *delay = (*delay * 2).min(Duration::from_secs(10));
        tokio::select! {
            _ = tokio::time::sleep(d) => true,
            _ = cancel.cancelled() => false,
        }
    }

    /// Records a container's exit.
    fn exited(&self, init: bool, i: usize, exit: &Exit) {
        {
            let mut st = self.state.lock();
            let s = st.slot_mut(init, i);
            let started = s.state.running.as_ref().and_then(|r| r.started_at.clone());
            s.state = terminated(exit, started, s.container_id.clone());
            s.ready = false;
            s.started = false;
        }
        self.publish();
    }

    /// Waits out the restart back-off (CrashLoopBackOff while waiting). `false` if cancelled.
    async fn back_off(
        self: &Arc<Self>,
        init: bool,
        i: usize,
        ran_for: Duration,
        cancel: &CancellationToken,
    ) -> bool {
        let name = self.spec_of(init, i).name;
        let delay = {
            let mut b = self.backoff.lock();
            let e = b.entry(name.clone()).or_insert(Duration::ZERO);
            if ran_for >= BACKOFF_RESET {
                *e = Duration::ZERO;
            }
            let d = *e;
            *e = if d.is_zero() {
                BACKOFF_BASE
            } else {
                (d * 2).min(BACKOFF_MAX)
            };
            // The first restart is immediate; later ones wait.
            if d.is_zero() { Duration::ZERO } else { d }
        };
        {
            let pod = self.pod();
            let mut st = self.state.lock();
            let s = st.slot_mut(init, i);
            if s.state.terminated.is_some() {
                s.last_state = Some(s.state.clone());
            }
            if !delay.is_zero() {
                s.state = waiting(
                    "CrashLoopBackOff",
                    Some(format!(
                        "back-off {} restarting failed container={} pod={}_{}({})",
                        humantime(delay),
                        name,
                        pod.metadata.name.as_deref().unwrap_or(""),
                        pod.metadata.namespace.as_deref().unwrap_or(""),
                        pod.metadata.uid.as_deref().unwrap_or(""),
                    )),
                );
            }
        }
        if !delay.is_zero() {
            self.publish();
            self.event(
                Some(&name),
                true,
                "BackOff",
                format!(
                    "Back-off restarting failed container {name} in pod {}",
                    pod_ref(&self.pod())
                ),
            );
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = cancel.cancelled() => return false,
            }
        }
        if cancel.is_cancelled() {
            return false;
        }
        self.state.lock().slot_mut(init, i).restart_count += 1;
        true
    }

    /// Runs one container until the restart policy says it is done.
    async fn supervise(
        self: Arc<Self>,
        i: usize,
        mounts: Arc<HashMap<String, PathBuf>>,
        cancel: CancellationToken,
        first: oneshot::Sender<()>,
    ) {
        let mut first = Some(first);
        let policy = self.restart_policy();
        let mut config_delay = Duration::from_secs(1);
        // The steps that run once in a while (starting, the postStart hook, the back-off) are
        // boxed: the task keeps, for the container's whole life, only what waiting for its exit
        // needs. (Thousands of hollow pods live for a whole scale run.)
        loop {
            let launched =
                Box::pin(
                    self.launch(false, i, &mounts, &cancel, &mut config_delay, || {
                        if let Some(f) = first.take() {
                            let _ = f.send(());
                        }
                    }),
                )
                .await;
            let began = Instant::now();
            let exit = match launched {
                None => return,
                Some(Err(exit)) => exit,
                Some(Ok(h)) => {
                    let instance = cancel.child_token();
                    Box::pin(self.post_start(i, &h)).await;
                    if let Some(f) = first.take() {
                        let _ = f.send(());
                    }
                    // A task (and its memory) only for a container that has probes: most
                    // pods of a hollow fleet have none, and live for the whole run.
                    let has_probes = {
                        let pod = self.pod();
                        let c = &pod.spec.as_ref().expect("pod with a spec").containers[i];
                        c.startup_probe.is_some()
                            || c.liveness_probe.is_some()
                            || c.readiness_probe.is_some()
                    };
                    let probes = has_probes
                        .then(|| tokio::spawn(self.clone().probe(i, h.clone(), instance.clone())));
                    let exit = self.exit_of(&h).await;
                    instance.cancel();
                    if let Some(probes) = probes {
                        let _ = probes.await;
                    }
                    // The node failed: this supervisor ends with its worker.
                    let Some(exit) = exit else { return };
                    self.exited(false, i, &exit);
                    exit
                }
            };
            if let Some(f) = first.take() {
                let _ = f.send(());
            }
            let restart = match policy.as_str() {
                "Never" => false,
                "OnFailure" => exit.code != 0,
                _ => true,
            };
            if !restart || cancel.is_cancelled() {
                return;
            }
            if !Box::pin(self.back_off(false, i, began.elapsed(), &cancel)).await {
                return;
            }
        }
    }

    /// Runs app container `i`'s postStart hook, if it has one; a failed hook stops the container.
    async fn post_start(self: &Arc<Self>, i: usize, h: &Arc<dyn ContainerHandle>) {
        let c = self.spec_of(false, i);
        let Some(hook) = c.lifecycle.as_ref().and_then(|l| l.post_start.as_ref()) else {
            return;
        };
        let ip = self.pod_ip();
        if let Err(e) = h.hook(hook, &ip).await {
            self.event(
                Some(&c.name),
                true,
                "FailedPostStartHook",
                format!("PostStartHook failed: {e}"),
            );
            let grace = self.grace_of_spec();
            self.stop_container(false, i, h.clone(), grace, false).await;
        }
    }

    /// Runs the container's probes: startup first, then liveness and readiness together.
    async fn probe(
        self: Arc<Self>,
        i: usize,
        h: Arc<dyn ContainerHandle>,
        stop: CancellationToken,
    ) {
        let c = self.spec_of(false, i);
        if let Some(p) = &c.startup_probe {
            match self.probe_loop(i, &h, ProbeKind::Startup, p, &stop).await {
                Some(true) => {
                    let ready = c.readiness_probe.is_none();
                    {
                        let mut st = self.state.lock();
                        st.app[i].started = true;
                        st.app[i].ready = ready;
                    }
                    self.publish();
                }
                Some(false) => {
                    self.kill_unhealthy(i, &h, "startup").await;
                    return;
                }
                None => return,
            }
        }
        let live = async {
            if let Some(p) = &c.liveness_probe
                && self.probe_loop(i, &h, ProbeKind::Liveness, p, &stop).await == Some(false)
            {
                self.kill_unhealthy(i, &h, "liveness").await;
            }
        };
        let ready = async {
            if let Some(p) = &c.readiness_probe {
                self.probe_loop(i, &h, ProbeKind::Readiness, p, &stop).await;
            }
        };
        tokio::join!(live, ready);
    }

    async fn kill_unhealthy(self: &Arc<Self>, i: usize, h: &Arc<dyn ContainerHandle>, what: &str) {
        let name = self.spec_of(false, i).name;
        self.event(
            Some(&name),
            false,
            "Killing",
            format!("Container {name} failed {what} probe, will be restarted"),
        );
        let grace = self.grace_of_spec();
        self.stop_container(false, i, h.clone(), grace, true).await;
    }

    /// Runs one probe periodically. Startup: `Some(true)` once it succeeds, `Some(false)` when it
    /// fails for good. Liveness: `Some(false)` on failure. Readiness runs until `stop`, updating
    /// the container's readiness. `None` when stopped.
    async fn probe_loop(
        self: &Arc<Self>,
        i: usize,
        h: &Arc<dyn ContainerHandle>,
        kind: ProbeKind,
        p: &Probe,
        stop: &CancellationToken,
    ) -> Option<bool> {
        let name = self.spec_of(false, i).name;
        let secs = |v: Option<i32>, d: i32| Duration::from_secs(v.unwrap_or(d).max(0) as u64);
        let period = secs(p.period_seconds, 10).max(Duration::from_secs(1));
        let timeout = secs(p.timeout_seconds, 1).max(Duration::from_secs(1));
        let success_needed = p.success_threshold.unwrap_or(1).max(1);
        let failure_needed = p.failure_threshold.unwrap_or(3).max(1);
        tokio::select! {
            _ = tokio::time::sleep(secs(p.initial_delay_seconds, 0)) => {}
            _ = stop.cancelled() => return None,
        }
        let (mut ok_run, mut fail_run) = (0, 0);
        loop {
            let ip = self.pod_ip();
            let result = tokio::select! {
                r = tokio::time::timeout(timeout, h.probe(kind, p, &ip)) => match r {
                    Ok(r) => r,
                    Err(_) => Err(format!("command timed out after {}s", timeout.as_secs())),
                },
                _ = stop.cancelled() => return None,
            };
            match result {
                Ok(()) => {
                    ok_run += 1;
                    fail_run = 0;
                }
                Err(msg) => {
                    fail_run += 1;
                    ok_run = 0;
                    self.event(
                        Some(&name),
                        true,
                        "Unhealthy",
                        format!("{} probe failed: {msg}", kind.title()),
                    );
                }
            }
            match kind {
                ProbeKind::Startup | ProbeKind::Liveness => {
                    if fail_run >= failure_needed {
                        return Some(false);
                    }
                    if kind == ProbeKind::Startup && ok_run >= success_needed {
                        return Some(true);
                    }
                }
                ProbeKind::Readiness => {
                    let now_ready = if ok_run >= success_needed {
                        Some(true)
                    } else if fail_run >= failure_needed {
                        Some(false)
                    } else {
                        None
                    };
                    if let Some(r) = now_ready {
                        let changed = {
                            let mut st = self.state.lock();
                            let s = &mut st.app[i];
                            let changed = s.ready != r && s.running();
                            if changed {
                                s.ready = r;
                            }
                            changed
                        };
                        if changed {
                            self.publish();
                        }
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(period) => {}
                _ = stop.cancelled() => return None,
            }
        }
    }

    /// Writes the pod's `resolv.conf` (and, when it has its own network, `hosts`) into its
    /// directory; warnings become events, as the kubelet's.
    fn write_dns_files(self: &Arc<Self>, pod: &Pod) {
        let dir = self.rt().pod_dir(pod.metadata.uid.as_deref().unwrap_or(""));
        let dns = &self.agent.shared.dns;
        let (resolv, warnings) = crate::dns::resolv_conf(pod, dns);
        for w in warnings {
            let (reason, msg) = w.split_once(": ").unwrap_or(("DNSConfigForming", &w));
            self.event(None, true, reason, msg.to_string());
        }
        let host_network = pod
            .spec
            .as_ref()
            .and_then(|s| s.host_network)
            .unwrap_or(false);
        let mut files = vec![("resolv.conf", resolv)];
        if !host_network {
            let ip = self.pod_ip();
            files.push((
                "hosts",
                crate::dns::hosts_file(pod, &ip, &dns.cluster_domain),
            ));
        }
        for (name, text) in files {
            if let Err(e) = std::fs::write(dir.join(name), text) {
                self.event(None, true, "FailedMount", format!("{name}: {e}"));
            }
        }
    }

    /// Sandbox, volumes, init containers, app containers; returns when no container will run
    /// again.
    async fn lifecycle(self: &Arc<Self>, cancel: CancellationToken) {
        let pod = self.pod();
        let mut delay = Duration::from_secs(1);
        let sandbox = loop {
            match Box::pin(self.rt().create_sandbox(&pod)).await {
                Ok(s) => break s,
                Err(e) => {
                    self.event(
                        None,
                        true,
                        "FailedCreatePodSandBox",
                        format!("Failed to create pod sandbox: {e}"),
                    );
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(60));
                }
            }
        };
        {
            let mut st = self.state.lock();
            // No address of its own: the pod shares the host's network.
            st.ips = if sandbox.ips.is_empty() {
                vec![st.host_ip.clone()]
            } else {
                sandbox.ips
            };
            st.sandbox_ready = true;
        }
        self.publish();
        let mounts = if self.rt().materializes() {
            let mut delay = Duration::from_secs(1);
            loop {
                let dir = self.rt().pod_dir(pod.metadata.uid.as_deref().unwrap_or(""));
                match Box::pin(crate::volumes::prepare(
                    &self.agent.shared.client,
                    &pod,
                    &dir,
                ))
                .await
                {
                    Ok(m) => break m,
                    Err(e) => {
                        self.event(None, true, "FailedMount", e);
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(30));
                    }
                }
            }
        } else {
            HashMap::new()
        };
        if self.rt().materializes() {
            self.write_dns_files(&pod);
        }
        let mounts = Arc::new(mounts);
        let n_init = pod
            .spec
            .as_ref()
            .and_then(|s| s.init_containers.as_ref())
            .map_or(0, Vec::len);
        let policy = self.restart_policy();
        let mut config_delay = Duration::from_secs(1);
        for i in 0..n_init {
            loop {
                let launched =
                    Box::pin(self.launch(true, i, &mounts, &cancel, &mut config_delay, || {}))
                        .await;
                let began = Instant::now();
                let exit = match launched {
                    None => return,
                    Some(Err(exit)) => exit,
                    Some(Ok(h)) => {
                        let exit = wait_exit(&h).await;
                        self.exited(true, i, &exit);
                        exit
                    }
                };
                if exit.code == 0 {
                    break;
                }
                if policy == "Never" || cancel.is_cancelled() {
                    return;
                }
                if !Box::pin(self.back_off(true, i, began.elapsed(), &cancel)).await {
                    return;
                }
            }
        }
        let n_app = pod.spec.as_ref().map_or(0, |s| s.containers.len());
        let mut sups = Vec::new();
        for i in 0..n_app {
            let (tx, rx) = oneshot::channel();
            sups.push(tokio::spawn(self.clone().supervise(
                i,
                mounts.clone(),
                cancel.clone(),
                tx,
            )));
            let _ = rx.await;
        }
        futures::future::join_all(sups).await;
    }
}

/// Waits until the container has exited.
async fn wait_exit(h: &Arc<dyn ContainerHandle>) -> Exit {
    h.exited()
        .wait_for(Option::is_some)
        .await
        .map(|e| e.clone().expect("exit"))
        .unwrap_or_else(|_| Exit::with_code(137))
}

fn pod_ref(p: &Pod) -> String {
    format!(
        "{}_{}({})",
        p.metadata.name.as_deref().unwrap_or(""),
        p.metadata.namespace.as_deref().unwrap_or(""),
        p.metadata.uid.as_deref().unwrap_or("")
    )
}

fn humantime(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 60 && s.is_multiple_of(60) {
        format!("{}m0s", s / 60)
    } else if s >= 60 {
        format!("{}m{}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

/// Runs a pod's worker until the pod is gone (deleted and finally removed) or the node stops.
pub async fn run<R: Runtime>(w: Arc<Worker<R>>, admit: Result<(), Verdict>) {
    let mut rx = w.rx.lock().take().expect("worker runs once");
    let pod = w.pod();
    let terminal = matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    );
    let stop = if terminal {
        w.wait_stop(&mut rx).await
    } else if let Err(v) = admit {
        w.event(None, true, &v.reason, v.message.clone());
        w.state.lock().verdict = Some(v);
        w.publish();
        w.wait_stop(&mut rx).await
    } else {
        let cancel = CancellationToken::new();
        let life = w.lifecycle(cancel.clone());
        tokio::select! {
            _ = life => {
                w.publish();
                Box::pin(w.rt().remove_sandbox(&w.pod())).await;
                w.state.lock().sandbox_ready = false;
                w.publish();
                w.wait_stop(&mut rx).await
            }
            stop = w.wait_stop(&mut rx) => {
                cancel.cancel();
                let grace = match &stop {
                    Stop::Deleted(g) => *g,
                    Stop::Gone => MIN_GRACE,
                    Stop::Shutdown => w.grace_of_spec().min(w.agent.shared.shutdown_grace),
                    // Nothing is terminated: the containers' supervisors end with `cancel`.
                    Stop::Killed => return,
                };
                Box::pin(w.terminate(grace)).await;
                Box::pin(w.rt().remove_sandbox(&w.pod())).await;
                {
                    let mut st = w.state.lock();
                    st.sandbox_ready = false;
                    if matches!(stop, Stop::Shutdown) && st.verdict.is_none()
                        && !matches!(st.phase(), "Succeeded" | "Failed")
                    {
                        st.verdict = Some(Verdict {
                            phase: "Failed",
                            reason: "Terminated".into(),
                            message: "Pod was terminated in response to imminent node shutdown.".into(),
                        });
                    }
                    // A deleted pod ends in a terminal phase before it goes, as upstream's
                    // kubelet does (whatever its restart policy): Succeeded when every app
                    // container exited 0, else Failed. A Job counts it from that phase.
                    if matches!(stop, Stop::Deleted(_)) && st.verdict.is_none()
                        && !matches!(st.phase(), "Succeeded" | "Failed")
                    {
                        let ok = st.app.iter().all(|s| s.exit_code() == Some(0));
                        st.verdict = Some(Verdict {
                            phase: if ok { "Succeeded" } else { "Failed" },
                            reason: String::new(),
                            message: String::new(),
                        });
                    }
                }
                w.publish();
                stop
            }
        }
    };
    // (Also when the node failed during a termination.)
    if matches!(stop, Stop::Killed) || w.killed() {
        return;
    }
    Box::pin(w.rt().remove_pod_data(&w.pod())).await;
    if let Stop::Deleted(_) = stop {
        Box::pin(w.final_delete()).await;
    }
}

#[cfg(test)]
mod size_tests {
    use super::*;
    use crate::config::Config;
    use crate::hollow::HollowRuntime;
    use clap::Parser;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        config: Config,
    }

    /// A running pod keeps its worker task and one supervising task per container for its
    /// whole life: thousands per hollow-node process. Their futures stay small because the
    /// steps that run once in a while are boxed; unboxed they took 13.8 KiB per pod.
    #[tokio::test]
    async fn a_running_pod_keeps_small_futures() {
        let flags = Flags::parse_from(["node", "--hollow", "--node-name=n"]);
        // Never called: the futures are measured, not run.
        let client =
            kube::Client::try_from(kube::Config::new("http://127.0.0.1:1".parse().unwrap()))
                .unwrap();
        let shared = crate::agent::Shared::new(
            client,
            Arc::new(HollowRuntime::new()),
            &flags.config,
            CancellationToken::new(),
        );
        let agent = Agent::new(shared, flags.config.node_settings().unwrap());
        let pod = Arc::new(Pod::default());
        let (_tx, rx) = watch::channel(pod.clone());
        let state = Arc::new(Mutex::new(PodState::new(pod, "10.0.0.1".into())));
        let w = Worker::new(
            agent,
            state,
            rx,
            CancellationToken::new(),
            CancellationToken::new(),
        );
        let (first, _) = oneshot::channel();
        let run = std::mem::size_of_val(&run(w.clone(), Ok(())));
        let supervise = std::mem::size_of_val(&w.clone().supervise(
            0,
            Arc::new(HashMap::new()),
            CancellationToken::new(),
            first,
        ));
        assert!(
            run + supervise <= 4096,
            "worker {run} B + supervisor {supervise} B per pod"
        );
    }
}
