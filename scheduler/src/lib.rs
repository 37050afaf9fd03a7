//! `keelson scheduler`: kube-scheduler's scheduling framework — a priority queue with backoff
//! and event-driven re-queueing, a node/pod cache with assumed pods, the framework's extension
//! points, and the in-tree plugins with their upstream names, reasons and configuration — running
//! while this replica holds the `kube-scheduler` Lease.

pub mod cache;
pub mod config;
pub mod framework;
pub mod metrics;
pub mod plugins;
pub mod queue;
pub mod scheduler;
pub mod testing;
pub mod types;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{
    Namespace, Node, PersistentVolume, PersistentVolumeClaim, Pod, ReplicationController, Service,
};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::storage::v1::StorageClass;
use keelson_client::events::Recorder;
use keelson_client::health::{Health, ServingArgs};
use keelson_client::informer::{Change, Informer};
use keelson_client::leader::{LeaderElectionArgs, LeaderElector, default_identity};
use keelson_client::{ClientArgs, connect};
use kube::api::Api;
use kube::runtime::watcher;
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use crate::framework::{Event, Handle, Listers};
use crate::scheduler::Scheduler;
use crate::types::PodInfo;

/// `keelson scheduler` flags (names as kube-scheduler's).
#[derive(clap::Args, Debug, Clone)]
pub struct Config {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub client: ClientArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub leader: LeaderElectionArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub serving: ServingArgs,
    /// The path to the KubeSchedulerConfiguration file.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The initial backoff for unschedulable pods, in seconds (the config file's
    /// podInitialBackoffSeconds wins).
    #[arg(long, default_value_t = 1)]
    pub pod_initial_backoff_seconds: u64,
    /// The maximum backoff for unschedulable pods, in seconds (the config file's
    /// podMaxBackoffSeconds wins).
    #[arg(long, default_value_t = 10)]
    pub pod_max_backoff_seconds: u64,
}

/// Why the scheduler stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad configuration.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// No API connection.
    #[error(transparent)]
    Connect(#[from] keelson_client::connect::ConnectError),
    /// Leader election failed or was lost.
    #[error(transparent)]
    Leader(#[from] keelson_client::leader::LeaderError),
    /// The health server could not start.
    #[error(transparent)]
    Serve(#[from] keelson_client::health::ServeError),
}

/// Runs the scheduler until `shutdown` (or until it loses its lease: an error).
pub async fn run(mut config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    let file = match &config.config {
        Some(p) => config::load(p).map_err(Error::Config)?,
        None => config::parse(
            "apiVersion: kubescheduler.config.k8s.io/v1\nkind: KubeSchedulerConfiguration\n",
        )
        .map_err(Error::Config)?,
    };
    apply_file(&mut config, &file).map_err(Error::Config)?;
    // Check the profiles before connecting, so a bad file fails at once.
    config::frameworks(
        &file,
        &Handle {
            client: None,
            listers: Listers::empty(),
        },
    )
    .map_err(Error::Config)?;
    let client = connect(&config.client).await?;
    let listers_and_informers = Informers::new(client.clone());
    let handle = Handle {
        client: Some(client.clone()),
        listers: listers_and_informers.listers.clone(),
    };
    let profiles = config::frameworks(&file, &handle).map_err(Error::Config)?;
    let health = Arc::new(Health::new());
    let elector = if config.leader.leader_elect {
        // A client of its own, as upstream's leader-election client: renewals never queue
        // behind the scheduler's requests for the client's QPS.
        Some(LeaderElector::new(
            connect(&config.client).await?,
            &config.leader,
            "kube-scheduler",
            default_identity(),
            &health,
        )?)
    } else {
        None
    };
    keelson_client::health::serve(&config.serving, 10259, health.clone(), shutdown.clone()).await?;
    let backoff = (
        Duration::from_secs(
            file.pod_initial_backoff_seconds
                .map(|s| s as u64)
                .unwrap_or(config.pod_initial_backoff_seconds),
        ),
        Duration::from_secs(
            file.pod_max_backoff_seconds
                .map(|s| s as u64)
                .unwrap_or(config.pod_max_backoff_seconds),
        ),
    );
    tracing::info!(
        profiles = ?profiles.iter().map(|p| p.scheduler_name.clone()).collect::<Vec<_>>(),
        "starting scheduler"
    );
    let lead = move |token: CancellationToken| {
        let recorder = Recorder::new(client.clone(), "default-scheduler", None);
        let sched = Scheduler::new(profiles, Some(client), Some(recorder), backoff.0, backoff.1);
        sched.metrics.register(&health);
        listers_and_informers.run(sched, token)
    };
    match elector {
        Some(e) => e.run(shutdown, lead).await?,
        None => lead(shutdown).await,
    }
    Ok(())
}

/// The config file's clientConnection and leaderElection over the flags.
fn apply_file(c: &mut Config, f: &config::SchedulerConfiguration) -> Result<(), String> {
    if let Some(cc) = &f.client_connection {
        if let Some(k) = cc.kubeconfig.as_ref().filter(|k| !k.is_empty()) {
            c.client.kubeconfig = Some(k.into());
        }
        if let Some(q) = cc.qps {
            c.client.kube_api_qps = q;
        }
        if let Some(b) = cc.burst {
            c.client.kube_api_burst = b;
        }
    }
    if let Some(le) = &f.leader_election {
        let dur = |v: &Option<String>, field: &str, d: &mut Duration| -> Result<(), String> {
            if let Some(s) = v {
                *d = keelson_client::duration::parse_go_duration(s)
                    .map_err(|e| format!("leaderElection.{field}: {e}"))?;
            }
            Ok(())
        };
        if let Some(b) = le.leader_elect {
            c.leader.leader_elect = b;
        }
        dur(
            &le.lease_duration,
            "leaseDuration",
            &mut c.leader.lease_duration,
        )?;
        dur(
            &le.renew_deadline,
            "renewDeadline",
            &mut c.leader.renew_deadline,
        )?;
        dur(&le.retry_period, "retryPeriod", &mut c.leader.retry_period)?;
        if let Some(l) = &le.resource_lock {
            c.leader.resource_lock = l.clone();
        }
        if let Some(n) = &le.resource_name {
            c.leader.resource_name = Some(n.clone());
        }
        if let Some(n) = &le.resource_namespace {
            c.leader.resource_namespace = n.clone();
        }
    }
    Ok(())
}

/// The informers the scheduler runs, and the listers plugins read.
struct Informers {
    client: Client,
    listers: Listers,
    namespaces: Informer<Namespace>,
    pvcs: Informer<PersistentVolumeClaim>,
    pvs: Informer<PersistentVolume>,
    storage_classes: Informer<StorageClass>,
    services: Informer<Service>,
    replicasets: Informer<ReplicaSet>,
    statefulsets: Informer<StatefulSet>,
    rcs: Informer<ReplicationController>,
    pdbs: Informer<PodDisruptionBudget>,
}

fn informer<K>(client: &Client) -> Informer<K>
where
    K: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    Informer::new(Api::all(client.clone()), watcher::Config::default())
}

impl Informers {
    fn new(client: Client) -> Self {
        let namespaces = informer::<Namespace>(&client);
        let pvcs = informer::<PersistentVolumeClaim>(&client);
        let pvs = informer::<PersistentVolume>(&client);
        let storage_classes = informer::<StorageClass>(&client);
        let services = informer::<Service>(&client);
        let replicasets = informer::<ReplicaSet>(&client);
        let statefulsets = informer::<StatefulSet>(&client);
        let rcs = informer::<ReplicationController>(&client);
        let pdbs = informer::<PodDisruptionBudget>(&client);
        let listers = Listers {
            namespaces: namespaces.store(),
            pvcs: pvcs.store(),
            pvs: pvs.store(),
            storage_classes: storage_classes.store(),
            services: services.store(),
            replicasets: replicasets.store(),
            statefulsets: statefulsets.store(),
            replication_controllers: rcs.store(),
            pdbs: pdbs.store(),
        };
        Informers {
            client,
            listers,
            namespaces,
            pvcs,
            pvs,
            storage_classes,
            services,
            replicasets,
            statefulsets,
            rcs,
            pdbs,
        }
    }

    /// Runs the informers and the scheduling loop until `token`.
    async fn run(mut self, sched: Arc<Scheduler>, token: CancellationToken) {
        let mut pods: Informer<Pod> = Informer::new(
            Api::all(self.client.clone()),
            watcher::Config::default().fields("status.phase!=Succeeded,status.phase!=Failed"),
        );
        pods.trim_with(types::trim_pod);
        let s = sched.clone();
        let store = pods.store();
        pods.on_change(move |c| {
            // The informer's own copy, shared by the queue and cache rather than copied.
            let pod = keelson_client::informer::cached(&store, &c);
            handle_pod(&s, c, pod)
        });
        let mut nodes: Informer<Node> = informer(&self.client);
        let s = sched.clone();
        nodes.on_change(move |c| handle_node(&s, c));
        let s = sched.clone();
        self.namespaces.on_change(move |c| {
            if let Change::Updated { old, new } = c
                && old.metadata.labels != new.metadata.labels
            {
                s.queue.on_event(Event::NamespaceUpdate);
            }
        });
        let s = sched.clone();
        self.pvcs
            .on_change(move |_| s.queue.on_event(Event::Volume));
        let s = sched.clone();
        self.pvs.on_change(move |_| s.queue.on_event(Event::Volume));
        let s = sched.clone();
        self.storage_classes.on_change(move |c| {
            if matches!(c, Change::Added(_)) {
                s.queue.on_event(Event::StorageClassAdd);
            }
        });
        let s = sched.clone();
        self.pdbs.on_change(move |_| s.queue.on_event(Event::Pdb));
        let (nodes_synced, pods_synced) = (nodes.synced(), pods.synced());
        let mut tasks = vec![
            tokio::spawn(self.namespaces.run(token.clone())),
            tokio::spawn(self.pvcs.run(token.clone())),
            tokio::spawn(self.pvs.run(token.clone())),
            tokio::spawn(self.storage_classes.run(token.clone())),
            tokio::spawn(self.services.run(token.clone())),
            tokio::spawn(self.replicasets.run(token.clone())),
            tokio::spawn(self.statefulsets.run(token.clone())),
            tokio::spawn(self.rcs.run(token.clone())),
            tokio::spawn(self.pdbs.run(token.clone())),
            tokio::spawn(nodes.run(token.clone())),
            tokio::spawn(pods.run(token.clone())),
        ];
        // Periodic work: backoff flush, assumed-pod expiry, queue metrics.
        let s = sched.clone();
        let t = token.clone();
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = t.cancelled() => return,
                }
                s.queue.flush();
                for key in s.cache.lock().expire(cache::ASSUMED_TTL) {
                    tracing::warn!(pod = %key, "assumed pod expired without a confirming watch event");
                }
                s.update_pending_metric();
            }
        }));
        // As upstream's WaitForCacheSync: no decisions before the nodes and pods are listed.
        tokio::select! {
            _ = async {
                nodes_synced.wait().await;
                pods_synced.wait().await;
            } => {}
            _ = token.cancelled() => {}
        }
        let s = sched.clone();
        let runner = tokio::spawn(s.run());
        token.cancelled().await;
        sched.queue.close();
        let _ = runner.await;
        for t in tasks {
            let _ = t.await;
        }
    }
}

fn is_assigned(p: &Pod) -> bool {
    p.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .is_some_and(|n| !n.is_empty())
}

fn is_terminal(p: &Pod) -> bool {
    matches!(
        p.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// Keeps the cache, queue and nominations in step with a pod change. `cached` is the
/// informer's copy of the pod, when the caller has it: kept rather than copied.
pub fn handle_pod(s: &Scheduler, c: Change<'_, Pod>, cached: Option<Arc<Pod>>) {
    let shared = |p: &Pod| cached.clone().unwrap_or_else(|| Arc::new(p.clone()));
    match c {
        Change::Added(p) | Change::Updated { new: p, .. } => {
            let old = match c {
                Change::Updated { old, .. } => Some(old),
                _ => None,
            };
            let key = types::pod_key(p);
            if is_assigned(p) {
                if is_terminal(p) {
                    s.cache.lock().remove_pod(&key);
                    s.queue.on_event(Event::AssignedPodDelete);
                    return;
                }
                let info = Arc::new(PodInfo::new(shared(p)));
                s.cache.lock().add_or_update_pod(info);
                s.queue.delete(&key);
                s.nominator.lock().remove(&key);
                let was_assigned = old.is_some_and(is_assigned);
                if !was_assigned {
                    s.queue.on_event(Event::AssignedPodAdd);
                } else if old.is_some_and(|o| o.metadata.labels != p.metadata.labels) {
                    s.queue.on_event(Event::AssignedPodUpdate);
                }
                return;
            }
            if s.profile_for(p).is_none() {
                return;
            }
            if p.metadata.deletion_timestamp.is_some() || is_terminal(p) {
                s.queue.delete(&key);
                s.nominator.lock().remove(&key);
                return;
            }
            let info = Arc::new(PodInfo::new(shared(p)));
            let nominated = p
                .status
                .as_ref()
                .and_then(|st| st.nominated_node_name.clone())
                .unwrap_or_default();
            // The cache stays locked until the pod is queued: the scheduling loop assumes a pod
            // (under this lock) and then lets the queue forget it, so a pod found not assumed
            // here is queued while still in flight (an update), never re-added after.
            let cache = s.cache.lock();
            if cache.is_assumed(&key) {
                // Our own binding is in flight; the watch has not caught up yet.
                return;
            }
            s.nominator.lock().set(&info, &nominated);
            if s.queue.contains(&key) {
                s.queue.update(info);
            } else {
                s.queue.add(info);
            }
            drop(cache);
        }
        Change::Deleted(p) => {
            let key = types::pod_key(p);
            s.queue.delete(&key);
            s.nominator.lock().remove(&key);
            if is_assigned(p) || s.cache.lock().is_assumed(&key) {
                s.cache.lock().remove_pod(&key);
                s.queue.on_event(Event::AssignedPodDelete);
            }
        }
    }
}

/// Keeps the cache in step with a node change and wakes pods it may help.
pub fn handle_node(s: &Scheduler, c: Change<'_, Node>) {
    match c {
        Change::Added(n) => {
            s.cache.lock().set_node(Arc::new(n.clone()));
            s.queue.on_event(Event::NodeAdd);
        }
        Change::Updated { old, new } => {
            s.cache.lock().set_node(Arc::new(new.clone()));
            let spec = |n: &Node| n.spec.clone().unwrap_or_default();
            let alloc = |n: &Node| n.status.as_ref().and_then(|s| s.allocatable.clone());
            if old.metadata.labels != new.metadata.labels {
                s.queue.on_event(Event::NodeLabel);
            }
            if spec(old).taints != spec(new).taints {
                s.queue.on_event(Event::NodeTaint);
            }
            if alloc(old) != alloc(new) {
                s.queue.on_event(Event::NodeAllocatable);
            }
            if spec(old).unschedulable.unwrap_or(false) && !spec(new).unschedulable.unwrap_or(false)
            {
                s.queue.on_event(Event::NodeSchedulable);
            }
        }
        Change::Deleted(n) => {
            s.cache
                .lock()
                .remove_node(n.metadata.name.as_deref().unwrap_or(""));
        }
    }
}
