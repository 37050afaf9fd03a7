//! One node: registration, the node Lease and status heartbeats, admission, and the pod workers
//! it runs. [`Shared`] is what every node of a process shares (client, runtime, status writer).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{
    DaemonEndpoint, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeSpec, NodeStatus,
    NodeSystemInfo, ObjectReference, Pod, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference, Time};
use keelson_client::events::{EventType, Recorder};
use keelson_client::informer::Change;
use keelson_client::queue::WorkQueue;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use parking_lot::Mutex;
use serde_json::json;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, NodeSettings};
use crate::runtime::Runtime;
use crate::status::PodState;
use crate::worker::{self, Worker};

/// The kubelet version the node reports.
pub const KUBELET_VERSION: &str = "v1.33.0";

/// What every node in the process shares.
pub struct Shared<R> {
    /// The API client.
    pub client: Client,
    /// The container runtime.
    pub runtime: Arc<R>,
    /// Events about pods.
    pub recorder: Recorder,
    /// The process is stopping.
    pub shutdown: CancellationToken,
    status: StatusWriter,
    /// What the node reports about the host (read once per process).
    system_info: NodeSystemInfo,
    update_every: Duration,
    report_every: Duration,
    /// The longest grace period pods get when the node stops.
    pub shutdown_grace: Duration,
    lease_seconds: i32,
    /// What pods' `/etc/resolv.conf` is made from.
    pub dns: crate::dns::DnsSettings,
    /// Each node acts as its own kubelet identity (`--impersonate-nodes`).
    impersonate_nodes: bool,
}

impl<R: Runtime> Shared<R> {
    /// Shared state for the nodes of this process; starts the status writers.
    pub fn new(
        client: Client,
        runtime: Arc<R>,
        config: &Config,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        let recorder = Recorder::new(
            client.clone(),
            "kubelet",
            (!config.hollow).then(|| config.node_name.clone()),
        );
        let read = |p: &str| {
            std::fs::read_to_string(p)
                .map(|s| s.trim().to_string())
                .unwrap_or_default()
        };
        let machine_id = read("/etc/machine-id");
        let system_info = NodeSystemInfo {
            architecture: "amd64".into(),
            boot_id: read("/proc/sys/kernel/random/boot_id"),
            container_runtime_version: format!(
                "{}://{}",
                runtime.name(),
                env!("CARGO_PKG_VERSION")
            ),
            kernel_version: nix::sys::utsname::uname()
                .ok()
                .map(|u| u.release().to_string_lossy().into_owned())
                .unwrap_or_default(),
            kube_proxy_version: String::new(),
            kubelet_version: KUBELET_VERSION.into(),
            machine_id: machine_id.clone(),
            operating_system: "linux".into(),
            os_image: "Keelson".into(),
            system_uuid: machine_id,
            ..Default::default()
        };
        Arc::new(Self {
            status: StatusWriter::start(config.status_writers.max(1)),
            system_info,
            client,
            runtime,
            recorder,
            shutdown,
            update_every: config.node_status_update_frequency,
            shutdown_grace: config.shutdown_grace_period,
            report_every: config.node_status_report_frequency,
            lease_seconds: config.node_lease_duration_seconds,
            impersonate_nodes: config.hollow && config.impersonate_nodes,
            dns: crate::dns::DnsSettings {
                cluster_dns: config.cluster_dns.clone(),
                cluster_domain: config.cluster_domain.clone(),
                host: if config.hollow {
                    String::new()
                } else {
                    std::fs::read_to_string(&config.resolv_conf).unwrap_or_else(|e| {
                        tracing::warn!(path = %config.resolv_conf.display(), error = %e,
                            "no host resolver configuration for pods");
                        String::new()
                    })
                },
            },
        })
    }
}

impl<R> Shared<R> {
    /// Waits (up to 5 s) until queued pod status writes are done.
    pub async fn flush_status(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self.status.idle() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

type PodKey = (String, String);

/// Statuses waiting to be written, and the pods whose write is in flight.
#[derive(Default)]
struct Writes {
    /// The status to write, and the client of the pod's node.
    pending: HashMap<PodKey, (Client, serde_json::Value)>,
    in_flight: std::collections::HashSet<PodKey>,
}

/// Writes pod statuses through a work queue (client-go's semantics): the latest status per pod
/// wins, a few pods at a time, never two writes of one pod at once (so an older status cannot
/// land after a newer one). A write that fails for a reason that may pass (no answer, 429, 5xx)
/// is retried with the queue's back-off unless a newer status replaced it.
struct StatusWriter {
    writes: Arc<Mutex<Writes>>,
    queue: WorkQueue<PodKey>,
}

impl StatusWriter {
    fn start(writers: usize) -> Self {
        let writes: Arc<Mutex<Writes>> = Arc::default();
        let queue = WorkQueue::with_backoff(Duration::from_millis(500), Duration::from_secs(30));
        for _ in 0..writers {
            let (writes, queue) = (writes.clone(), queue.clone());
            tokio::spawn(async move {
                while let Some(key) = queue.get().await {
                    let body = {
                        let mut w = writes.lock();
                        let body = w.pending.remove(&key);
                        if body.is_some() {
                            w.in_flight.insert(key.clone());
                        }
                        body
                    };
                    if let Some((client, body)) = body {
                        let api: Api<Pod> = Api::namespaced(client.clone(), &key.0);
                        let retry = match api
                            .patch_status(&key.1, &PatchParams::default(), &Patch::Strategic(&body))
                            .await
                        {
                            Ok(_) => false,
                            Err(kube::Error::Api(s)) if s.code == 404 => false,
                            Err(e) => {
                                tracing::warn!(pod = %format!("{}/{}", key.0, key.1), error = %e, "pod status update failed");
                                keelson_client::connect::transient(&e)
                            }
                        };
                        let mut w = writes.lock();
                        w.in_flight.remove(&key);
                        if retry && !w.pending.contains_key(&key) {
                            w.pending.insert(key.clone(), (client, body));
                            drop(w);
                            queue.add_rate_limited(key.clone());
                        } else {
                            drop(w);
                            queue.forget(&key);
                        }
                    }
                    queue.done(&key);
                }
            });
        }
        Self { writes, queue }
    }

    /// Queues `body` for the pod; with `unless_busy`, only when no write of it is queued,
    /// waiting for a retry, or in flight.
    fn write(
        &self,
        client: &Client,
        ns: &str,
        name: &str,
        body: serde_json::Value,
        unless_busy: bool,
    ) {
        let key = (ns.to_string(), name.to_string());
        {
            let mut w = self.writes.lock();
            if unless_busy && (w.pending.contains_key(&key) || w.in_flight.contains(&key)) {
                return;
            }
            w.pending.insert(key.clone(), (client.clone(), body));
        }
        self.queue.add(key);
    }

    fn idle(&self) -> bool {
        let w = self.writes.lock();
        w.pending.is_empty() && w.in_flight.is_empty()
    }
}

struct WorkerEntry {
    /// Tells this entry from a later worker of the same pod (after a node failure).
    id: u64,
    tx: watch::Sender<Arc<Pod>>,
    gone: CancellationToken,
    state: Arc<Mutex<PodState>>,
}

/// One node.
pub struct Agent<R> {
    /// Shared state.
    pub shared: Arc<Shared<R>>,
    /// The node's API client: the process's, or one acting as this node's kubelet identity.
    pub client: Client,
    /// The node's settings.
    pub settings: NodeSettings,
    port: AtomicU16,
    workers: Mutex<HashMap<String, WorkerEntry>>,
    next_worker: AtomicU64,
    node_uid: Mutex<Option<String>>,
    stopping: CancellationToken,
    /// The kubelet's current life, a child of `stopping`: cancelled when the node fails
    /// ([`Self::fail`]), replaced when it comes back ([`Self::recover`]).
    life: Mutex<CancellationToken>,
}

impl<R: Runtime> Agent<R> {
    /// A node that is not registered yet.
    pub fn new(shared: Arc<Shared<R>>, mut settings: NodeSettings) -> Arc<Self> {
        settings
            .labels
            .insert("kubernetes.io/hostname".into(), settings.name.clone());
        let stopping = shared.shutdown.child_token();
        let life = Mutex::new(stopping.child_token());
        let client = if shared.impersonate_nodes {
            let user = format!("system:node:{}", settings.name);
            // (Node names are RFC 1123 subdomains, checked with the flags: valid header values.)
            keelson_client::connect::impersonating(&shared.client, &user, &["system:nodes"])
                .expect("a node name is a valid header value")
        } else {
            shared.client.clone()
        };
        Arc::new(Self {
            shared,
            client,
            settings,
            port: AtomicU16::new(0),
            workers: Mutex::new(HashMap::new()),
            next_worker: AtomicU64::new(0),
            node_uid: Mutex::new(None),
            stopping,
            life,
        })
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        &self.settings.name
    }

    /// The kubelet API port the node advertises.
    pub fn set_port(&self, port: u16) {
        self.port.store(port, Ordering::Relaxed);
    }

    /// The node is shutting down: workers stop their pods.
    pub fn stopping(&self) -> &CancellationToken {
        &self.stopping
    }

    /// The kubelet's current life: cancelled when the node fails (or shuts down). Workers
    /// started in this life end with it.
    pub fn life(&self) -> CancellationToken {
        self.life.lock().clone()
    }

    /// Whether the node has failed and not come back ([`Self::fail`]).
    pub fn is_down(&self) -> bool {
        self.life.lock().is_cancelled() && !self.stopping.is_cancelled()
    }

    /// The node fails, as a killed kubelet does (chaos on hollow nodes): from now on it sends
    /// nothing (no Lease renewals, node or pod status, Events or final deletes), its pod workers
    /// end where they stand without terminating anything (a hollow node's containers are gone
    /// with it), and pod changes are ignored until [`Self::recover`]. False when it is already
    /// down or stopping.
    pub fn fail(&self) -> bool {
        {
            let life = self.life.lock();
            if life.is_cancelled() {
                return false;
            }
            life.cancel();
        }
        // Later pod changes find no worker, and see the node down under this same lock.
        self.workers.lock().clear();
        tracing::warn!(node = %self.name(), "node failed (chaos): its kubelet is down");
        true
    }

    /// A failed node comes back, as a restarted kubelet: it registers again (the Node exists),
    /// renews its Lease, posts its status, and starts workers for the pods bound to it now
    /// (`pods()`: deleted ones are gone; terminating ones are terminated), oldest first, as
    /// the kubelet admits them. False unless it was down.
    pub fn recover(self: &Arc<Self>, pods: impl Fn() -> Vec<Arc<Pod>>) -> bool {
        let life = {
            let mut life = self.life.lock();
            if !life.is_cancelled() || self.stopping.is_cancelled() {
                return false;
            }
            *life = self.stopping.child_token();
            life.clone()
        };
        tracing::info!(node = %self.name(), "node recovered: its kubelet is back");
        tokio::spawn(self.clone().heartbeat(life));
        // Pod changes reach the workers from now on; the pods are read after that, so none is
        // missed in between.
        let mut bound = pods();
        bound.sort_by(|a, b| {
            a.metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0)
                .cmp(&b.metadata.creation_timestamp.as_ref().map(|t| t.0))
        });
        for pod in &bound {
            self.pod_changed(Change::Added(pod), Some(pod.clone()));
        }
        // A pod deleted after the read may have had its deletion seen before its worker
        // existed: its worker ends now.
        let now: std::collections::HashSet<String> =
            pods().iter().filter_map(|p| p.uid()).collect();
        for (uid, w) in self.workers.lock().iter() {
            if !now.contains(uid) {
                w.gone.cancel();
            }
        }
        true
    }

    /// The pods this node runs, as last seen.
    pub fn pods(&self) -> Vec<Arc<Pod>> {
        self.pod_states()
            .iter()
            .map(|st| st.lock().pod.clone())
            .collect()
    }

    /// The state of every pod's worker.
    pub fn pod_states(&self) -> Vec<Arc<Mutex<PodState>>> {
        self.workers
            .lock()
            .values()
            .map(|w| w.state.clone())
            .collect()
    }

    /// The state of one pod's worker.
    pub fn pod_state(&self, ns: &str, name: &str) -> Option<Arc<Mutex<PodState>>> {
        self.workers
            .lock()
            .values()
            .find(|w| {
                let st = w.state.lock();
                st.pod.metadata.name.as_deref() == Some(name)
                    && st.pod.metadata.namespace.as_deref() == Some(ns)
            })
            .map(|w| w.state.clone())
    }

    /// Records an event about a pod (or one of its containers).
    pub fn event(&self, pod: &Pod, container: Option<&str>, warn: bool, reason: &str, msg: String) {
        if self.is_down() {
            return;
        }
        let r = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: pod.metadata.name.clone(),
            namespace: pod.metadata.namespace.clone(),
            uid: pod.metadata.uid.clone(),
            field_path: container.map(|c| format!("spec.containers{{{c}}}")),
            ..Default::default()
        };
        let kind = if warn {
            EventType::Warning
        } else {
            EventType::Normal
        };
        self.shared.recorder.record(r, kind, reason, msg);
    }

    /// Queues a pod status write: a strategic merge patch, in which conditions merge by type,
    /// so only the node's own are sent and other writers' (readiness gates, DisruptionTarget)
    /// stay as they are.
    pub fn write_status(&self, pod: &Pod, status: &PodStatus) {
        self.queue_status(pod, status, false);
    }

    /// As [`Self::write_status`], unless a write of this pod's status is already queued,
    /// waiting for a retry, or in flight.
    pub fn write_status_unless_busy(&self, pod: &Pod, status: &PodStatus) {
        self.queue_status(pod, status, true);
    }

    fn queue_status(&self, pod: &Pod, status: &PodStatus, unless_busy: bool) {
        if self.is_down() {
            return;
        }
        self.shared.status.write(
            &self.client,
            pod.metadata.namespace.as_deref().unwrap_or("default"),
            pod.metadata.name.as_deref().unwrap_or(""),
            crate::status::status_patch(status),
            unless_busy,
        );
    }

    /// A pod bound to this node changed (informer callback). `cached` is the informer's copy
    /// of the pod, when the caller has it: the workers share it rather than copy the pod.
    pub fn pod_changed(self: &Arc<Self>, change: Change<'_, Pod>, cached: Option<Arc<Pod>>) {
        match change {
            Change::Added(p) | Change::Updated { new: p, .. } => {
                let uid = p.uid().unwrap_or_default();
                let pod = cached.unwrap_or_else(|| Arc::new(p.clone()));
                let mut workers = self.workers.lock();
                if let Some(w) = workers.get(&uid) {
                    w.tx.send_replace(pod);
                    return;
                }
                let life = self.life();
                if life.is_cancelled() {
                    // Stopping, or down.
                    return;
                }
                let admit = self.admit(&pod, workers.values());
                let (tx, rx) = watch::channel(pod.clone());
                let gone = CancellationToken::new();
                let state = Arc::new(Mutex::new(PodState::new(
                    pod.clone(),
                    self.settings.ip.to_string(),
                )));
                let id = self.next_worker.fetch_add(1, Ordering::Relaxed);
                workers.insert(
                    uid.clone(),
                    WorkerEntry {
                        id,
                        tx,
                        gone: gone.clone(),
                        state: state.clone(),
                    },
                );
                let w = Worker::new(self.clone(), state, rx, gone, life);
                let me = self.clone();
                tokio::spawn(async move {
                    worker::run(w, admit).await;
                    let mut workers = me.workers.lock();
                    if workers.get(&uid).is_some_and(|w| w.id == id) {
                        workers.remove(&uid);
                    }
                });
            }
            Change::Deleted(p) => {
                let uid = p.uid().unwrap_or_default();
                if let Some(w) = self.workers.lock().get(&uid) {
                    w.gone.cancel();
                }
            }
        }
    }

    /// Node-side admission, as upstream's kubelet: resources against allocatable, host ports,
    /// node name/selector/affinity, taints with NoExecute. `Err` is the rejection.
    fn admit<'a>(
        &self,
        pod: &Pod,
        others: impl Iterator<Item = &'a WorkerEntry>,
    ) -> Result<(), crate::status::Verdict> {
        use keelson_scheduler::types::{RequiredNodeAffinity, Resources, pod_requests};
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        if matches!(phase, Some("Succeeded" | "Failed")) {
            return Ok(());
        }
        let reject = |reason: &str, message: String| crate::status::Verdict {
            phase: "Failed",
            reason: reason.into(),
            message,
        };
        let spec = pod.spec.clone().unwrap_or_default();
        let affinity = RequiredNodeAffinity::of(pod);
        if !affinity.matches(&self.settings.labels, &self.settings.name) {
            return Err(reject(
                "NodeAffinity",
                "Pod was rejected: Predicate NodeAffinity failed: node(s) didn't match Pod's node affinity/selector".into(),
            ));
        }
        let mut used = Resources::default();
        let mut ports: Vec<(String, i32, String)> = Vec::new();
        for w in others {
            let st = w.state.lock();
            if st.verdict.is_some() || matches!(st.phase(), "Succeeded" | "Failed") {
                continue;
            }
            used.add(&pod_requests(&st.pod, false));
            ports.extend(host_ports(&st.pod));
        }
        for (proto, port, ip) in host_ports(pod) {
            if ports.iter().any(|(p, q, i)| {
                *p == proto && *q == port && (i == &ip || i == "0.0.0.0" || ip == "0.0.0.0")
            }) {
                return Err(reject(
                    "NodePorts",
                    "Pod was rejected: Predicate NodePorts failed: node(s) didn't have free ports for the requested pod ports".into(),
                ));
            }
        }
        let want = pod_requests(pod, false);
        let alloc = Resources::from_list(Some(&self.settings.allocatable));
        let check = |name: &str,
                     req: i64,
                     used: i64,
                     cap: i64|
         -> Result<(), crate::status::Verdict> {
            if req > 0 && req + used > cap {
                let reason = format!("OutOf{name}");
                return Err(reject(
                    &reason,
                    format!(
                        "Pod was rejected: Node didn't have enough resource: {name}, requested: {req}, used: {used}, capacity: {cap}"
                    ),
                ));
            }
            Ok(())
        };
        check("pods", 1, used.pods, alloc.pods)?;
        check("cpu", want.milli_cpu, used.milli_cpu, alloc.milli_cpu)?;
        check("memory", want.memory, used.memory, alloc.memory)?;
        check(
            "ephemeral-storage",
            want.ephemeral_storage,
            used.ephemeral_storage,
            alloc.ephemeral_storage,
        )?;
        for (k, v) in &want.scalar {
            check(
                k,
                *v,
                used.scalar.get(k).copied().unwrap_or(0),
                alloc.scalar.get(k).copied().unwrap_or(0),
            )?;
        }
        let tolerations = spec.tolerations.unwrap_or_default();
        for t in self
            .settings
            .taints
            .iter()
            .filter(|t| t.effect == "NoExecute")
        {
            if !tolerations
                .iter()
                .any(|tol| keelson_scheduler::types::tolerates(tol, t))
            {
                return Err(reject(
                    "Taint",
                    format!(
                        "Pod was rejected: Predicate TaintToleration failed: node(s) had untolerated taint {{{}: {}}}",
                        t.key,
                        t.value.as_deref().unwrap_or("")
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Registers the node, then renews its Lease and posts its status until `stop` (the
    /// kubelet's life: [`Self::life`]).
    pub async fn heartbeat(self: Arc<Self>, stop: CancellationToken) {
        // Spread a fleet's heartbeats over the first interval.
        let jitter = rand::random_range(0..=self.shared.update_every.as_millis() as u64 / 4);
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(jitter)) => {}
            _ = stop.cancelled() => return,
        }
        let mut backoff = Duration::from_millis(500);
        loop {
            if stop.is_cancelled() {
                return;
            }
            match self.register().await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(node = %self.name(), error = %e, "unable to register node");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.cancelled() => return,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(7));
                }
            }
        }
        let renew = Duration::from_secs((self.shared.lease_seconds as u64 / 4).max(1));
        let mut lease: Option<Lease> = None;
        let mut last_status: Option<(NodeStatus, Instant)> = None;
        let mut next_lease = Instant::now();
        let mut next_status = Instant::now();
        loop {
            let now = Instant::now();
            // (Each write first checks the node is still up: a failure ends the loop at the
            // next look, not after a last heartbeat.)
            if now >= next_lease && !stop.is_cancelled() {
                lease = match self.renew_lease(lease.take()).await {
                    Ok(l) => Some(l),
                    Err(e) => {
                        tracing::warn!(node = %self.name(), error = %e, "failed to update node lease");
                        None
                    }
                };
                next_lease = now + jittered(renew);
            }
            if now >= next_status && !stop.is_cancelled() {
                if let Err(e) = self.update_status(&mut last_status, now).await {
                    tracing::warn!(node = %self.name(), error = %e, "error updating node status");
                }
                next_status = now + jittered(self.shared.update_every);
            }
            let wake = next_lease.min(next_status);
            tokio::select! {
                _ = tokio::time::sleep_until(wake.into()) => {}
                _ = stop.cancelled() => return,
            }
        }
    }

    async fn register(&self) -> Result<(), kube::Error> {
        let api: Api<Node> = Api::all(self.client.clone());
        let node = Node {
            metadata: ObjectMeta {
                name: Some(self.settings.name.clone()),
                labels: Some(self.settings.labels.clone()),
                annotations: Some(BTreeMap::from([(
                    "volumes.kubernetes.io/controller-managed-attach-detach".to_string(),
                    "true".to_string(),
                )])),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                taints: (!self.settings.taints.is_empty()).then(|| self.settings.taints.clone()),
                pod_cidr: self.settings.pod_cidr.clone(),
                pod_cidrs: self.settings.pod_cidr.clone().map(|c| vec![c]),
                ..Default::default()
            }),
            status: Some(self.node_status(None)),
        };
        let created = match api.create(&PostParams::default(), &node).await {
            Ok(n) => n,
            Err(kube::Error::Api(s)) if s.code == 409 => api.get(&self.settings.name).await?,
            Err(e) => return Err(e),
        };
        tracing::info!(node = %self.settings.name, "successfully registered node");
        *self.node_uid.lock() = created.metadata.uid.clone();
        if let Some(cidr) = created.spec.as_ref().and_then(|s| s.pod_cidr.clone()) {
            self.shared.runtime.set_pod_cidr(&cidr);
        }
        Ok(())
    }

    async fn renew_lease(&self, cached: Option<Lease>) -> Result<Lease, kube::Error> {
        let api: Api<Lease> = Api::namespaced(self.client.clone(), "kube-node-lease");
        let now = MicroTime(Timestamp::now());
        let mut lease = match cached {
            Some(l) => l,
            None => match api.get_opt(&self.settings.name).await? {
                Some(l) => l,
                None => {
                    let owner = self.node_uid.lock().clone().map(|uid| {
                        vec![OwnerReference {
                            api_version: "v1".into(),
                            kind: "Node".into(),
                            name: self.settings.name.clone(),
                            uid,
                            ..Default::default()
                        }]
                    });
                    let l = Lease {
                        metadata: ObjectMeta {
                            name: Some(self.settings.name.clone()),
                            namespace: Some("kube-node-lease".into()),
                            owner_references: owner,
                            ..Default::default()
                        },
                        spec: Some(LeaseSpec {
                            holder_identity: Some(self.settings.name.clone()),
                            lease_duration_seconds: Some(self.shared.lease_seconds),
                            renew_time: Some(now),
                            ..Default::default()
                        }),
                    };
                    return api.create(&PostParams::default(), &l).await;
                }
            },
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        spec.holder_identity = Some(self.settings.name.clone());
        spec.lease_duration_seconds = Some(self.shared.lease_seconds);
        spec.renew_time = Some(now);
        api.replace(&self.settings.name, &PostParams::default(), &lease)
            .await
    }

    fn node_status(&self, old: Option<&NodeStatus>) -> NodeStatus {
        let now = Time(Timestamp::now());
        let cond = |t: &str, status: &str, reason: &str, msg: &str| {
            let since = old
                .and_then(|o| o.conditions.as_ref())
                .and_then(|cs| cs.iter().find(|c| c.type_ == t && c.status == status))
                .and_then(|c| c.last_transition_time.clone())
                .unwrap_or_else(|| now.clone());
            NodeCondition {
                type_: t.into(),
                status: status.into(),
                reason: Some(reason.into()),
                message: Some(msg.into()),
                last_heartbeat_time: Some(now.clone()),
                last_transition_time: Some(since),
            }
        };
        NodeStatus {
            capacity: Some(self.settings.capacity.clone()),
            allocatable: Some(self.settings.allocatable.clone()),
            conditions: Some(vec![
                cond(
                    "MemoryPressure",
                    "False",
                    "KubeletHasSufficientMemory",
                    "kubelet has sufficient memory available",
                ),
                cond(
                    "DiskPressure",
                    "False",
                    "KubeletHasNoDiskPressure",
                    "kubelet has no disk pressure",
                ),
                cond(
                    "PIDPressure",
                    "False",
                    "KubeletHasSufficientPID",
                    "kubelet has sufficient PID available",
                ),
                cond(
                    "Ready",
                    "True",
                    "KubeletReady",
                    "kubelet is posting ready status",
                ),
            ]),
            addresses: Some(vec![
                NodeAddress {
                    type_: "InternalIP".into(),
                    address: self.settings.ip.to_string(),
                },
                NodeAddress {
                    type_: "Hostname".into(),
                    address: self.settings.name.clone(),
                },
            ]),
            daemon_endpoints: Some(NodeDaemonEndpoints {
                kubelet_endpoint: Some(DaemonEndpoint {
                    port: self.port.load(Ordering::Relaxed) as i32,
                }),
            }),
            node_info: Some(self.shared.system_info.clone()),
            ..Default::default()
        }
    }

    /// Posts the node's status if it changed, or if the last post is `report_every` old at
    /// `looked` (when it was due: a report every `report_every` is not pushed to the next look
    /// by the requests' own latency).
    async fn update_status(
        &self,
        last: &mut Option<(NodeStatus, Instant)>,
        looked: Instant,
    ) -> Result<(), kube::Error> {
        let status = self.node_status(last.as_ref().map(|(s, _)| s));
        if let Some((prev, at)) = last.as_ref() {
            let strip = |s: &NodeStatus| {
                let mut s = s.clone();
                for c in s.conditions.iter_mut().flatten() {
                    c.last_heartbeat_time = None;
                }
                s
            };
            if strip(prev) == strip(&status)
                && looked.duration_since(*at) < self.shared.report_every
            {
                return Ok(());
            }
        }
        let api: Api<Node> = Api::all(self.client.clone());
        api.patch_status(
            &self.settings.name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": status })),
        )
        .await?;
        *last = Some((status, looked));
        Ok(())
    }

    /// Stops every pod of the node (the node is shutting down) and waits for the workers.
    pub async fn shutdown(self: Arc<Self>) {
        self.stopping.cancel();
        loop {
            if self.workers.lock().is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// `period` stretched by up to 4 %, as the kubelet's loops are (`wait.JitterUntil` with a
/// factor of 0.04), so a fleet's heartbeats started together drift apart.
fn jittered(period: Duration) -> Duration {
    period.mul_f64(1.0 + rand::random_range(0.0..0.04))
}

fn host_ports(pod: &Pod) -> Vec<(String, i32, String)> {
    let mut out = Vec::new();
    for c in pod.spec.iter().flat_map(|s| &s.containers) {
        for p in c.ports.iter().flatten() {
            if let Some(hp) = p.host_port.filter(|p| *p > 0) {
                out.push((
                    p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                    hp,
                    p.host_ip.clone().unwrap_or_else(|| "0.0.0.0".into()),
                ));
            }
        }
    }
    out
}
