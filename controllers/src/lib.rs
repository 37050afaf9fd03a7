//! The controller-manager: one module per controller, each a level-triggered reconciler fed by
//! shared list-watch informers (one watch per resource for all controllers) through
//! keelson-client, running only while this replica holds the `kube-controller-manager` Lease.

pub mod certificates;
pub mod clusterroleaggregation;
pub mod credentials;
pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod discovery;
pub mod endpoint;
pub mod endpointslice;
pub mod garbagecollector;
pub mod history;
pub mod job;
pub mod namespace;
pub mod nodeipam;
pub mod nodelifecycle;
pub mod podgc;
pub mod replicaset;
pub mod resourcequota;
pub mod rootcacert;
pub mod serviceaccount;
pub mod statefulset;
#[cfg(test)]
mod testing;
pub mod ttlafterfinished;
pub mod util;
pub mod volumeprotection;

use std::sync::Arc;

use k8s_openapi::api::apps::v1::{
    ControllerRevision, DaemonSet, Deployment, ReplicaSet, StatefulSet,
};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{
    ConfigMap, Endpoints, Namespace, Node, PersistentVolume, PersistentVolumeClaim, Pod,
    ReplicationController, ResourceQuota, Service, ServiceAccount,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::rbac::v1::ClusterRole;
use keelson_client::events::Recorder;
use keelson_client::health::{Health, ServingArgs};
use keelson_client::informer::{Index, Informer};
use keelson_client::leader::{LeaderElectionArgs, LeaderElector, default_identity};
use keelson_client::{ClientArgs, connect};
use kube::api::Api;
use kube::runtime::watcher;
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use crate::util::Reconciler;

/// The controllers this binary has, by their upstream names.
pub const KNOWN_CONTROLLERS: &[&str] = &[
    "clusterrole-aggregation",
    "cronjob",
    "csrapproving",
    "csrcleaner",
    "csrsigning",
    "daemonset",
    "deployment",
    "endpoint",
    "endpointslice",
    "garbagecollector",
    "job",
    "namespace",
    "nodeipam",
    "nodelifecycle",
    "podgc",
    "pv-protection",
    "pvc-protection",
    "replicaset",
    "replicationcontroller",
    "resourcequota",
    "root-ca-cert-publisher",
    "serviceaccount",
    "statefulset",
    "ttl-after-finished",
];

/// A controller's name as `--controllers` may spell it: the classic name, or the newer
/// `<name>-controller` form (`garbage-collector-controller`, ...).
fn canonical(name: &str) -> String {
    let n = name.strip_suffix("-controller").unwrap_or(name);
    match n {
        "garbage-collector" => "garbagecollector".into(),
        "node-lifecycle" => "nodelifecycle".into(),
        "node-ipam" => "nodeipam".into(),
        "pod-garbage-collector" => "podgc".into(),
        "endpoints" => "endpoint".into(),
        "persistentvolume-protection" => "pv-protection".into(),
        "persistentvolumeclaim-protection" => "pvc-protection".into(),
        "certificatesigningrequest-signing" => "csrsigning".into(),
        "certificatesigningrequest-approving" => "csrapproving".into(),
        "certificatesigningrequest-cleaner" => "csrcleaner".into(),
        n => n.into(),
    }
}

/// `keelson controller-manager` flags (names as kube-controller-manager's).
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
    /// A list of controllers to enable. '*' enables all on-by-default controllers, 'foo'
    /// enables the controller named 'foo', '-foo' disables the controller named 'foo'.
    #[arg(long, value_delimiter = ',', default_value = "*")]
    pub controllers: Vec<String>,
    /// If true, use individual service account credentials for each controller.
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub use_service_account_credentials: bool,
    /// The number of deployment objects that are allowed to sync concurrently.
    #[arg(long, default_value_t = 5)]
    pub concurrent_deployment_syncs: usize,
    /// The number of replication controllers that are allowed to sync concurrently.
    #[arg(long, default_value_t = 5)]
    pub concurrent_rc_syncs: usize,
    /// The number of replica sets that are allowed to sync concurrently.
    #[arg(long, default_value_t = 5)]
    pub concurrent_replicaset_syncs: usize,
    /// The number of namespace objects that are allowed to sync concurrently.
    #[arg(long, default_value_t = 10)]
    pub concurrent_namespace_syncs: usize,
    /// The number of endpoint syncing operations that will be done concurrently.
    #[arg(long, default_value_t = 5)]
    pub concurrent_endpoint_syncs: usize,
    /// The number of service endpoint (EndpointSlice) syncing operations that will be done
    /// concurrently.
    #[arg(long, default_value_t = 5)]
    pub concurrent_service_endpoint_syncs: usize,
    /// The maximum number of endpoints that will be added to an EndpointSlice.
    #[arg(long, default_value_t = 100)]
    pub max_endpoints_per_slice: usize,
    /// The number of statefulset objects that are allowed to sync concurrently.
    #[arg(long, default_value_t = 5)]
    pub concurrent_statefulset_syncs: usize,
    /// The number of daemonset objects that are allowed to sync concurrently.
    #[arg(long, default_value_t = 2)]
    pub concurrent_daemonset_syncs: usize,
    /// The number of resource quotas that are allowed to sync concurrently.
    #[arg(long, default_value_t = 5)]
    pub concurrent_resource_quota_syncs: usize,
    /// The period for syncing quota usage status in the system.
    #[arg(long, default_value = "5m", value_parser = keelson_client::duration::parse_go_duration)]
    pub resource_quota_sync_period: std::time::Duration,
    /// If set, this root certificate authority will be included in service account's token
    /// secret and published as the `kube-root-ca.crt` ConfigMap in every namespace.
    #[arg(long)]
    pub root_ca_file: Option<std::path::PathBuf>,
    /// The number of job objects that are allowed to sync concurrently.
    #[arg(long, default_value_t = 5)]
    pub concurrent_job_syncs: usize,
    /// The number of cron job objects that are allowed to sync concurrently.
    #[arg(long, default_value_t = 5)]
    pub concurrent_cron_job_syncs: usize,
    /// The number of TTL-after-finished controller workers that are allowed to sync concurrently.
    #[arg(long, default_value_t = 5)]
    pub concurrent_ttl_after_finished_syncs: usize,
    /// The period for syncing NodeStatus in the node lifecycle controller.
    #[arg(long, default_value = "5s", value_parser = keelson_client::duration::parse_go_duration)]
    pub node_monitor_period: std::time::Duration,
    /// Amount of time which we allow running Node to be unresponsive before marking it
    /// unhealthy.
    #[arg(long, default_value = "40s", value_parser = keelson_client::duration::parse_go_duration)]
    pub node_monitor_grace_period: std::time::Duration,
    /// Amount of time which we allow starting Node to be unresponsive before marking it
    /// unhealthy.
    #[arg(long, default_value = "1m", value_parser = keelson_client::duration::parse_go_duration)]
    pub node_startup_grace_period: std::time::Duration,
    /// Should CIDRs for Pods be allocated and set on the cloud provider.
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1,
          require_equals = true, default_missing_value = "true")]
    pub allocate_node_cidrs: bool,
    /// CIDR Range for Pods in cluster (with --allocate-node-cidrs).
    #[arg(long, default_value = "10.244.0.0/16")]
    pub cluster_cidr: String,
    /// Mask size for node cidr in cluster.
    #[arg(long, default_value_t = 24)]
    pub node_cidr_mask_size: u8,
    /// Number of terminated pods that can exist before the terminated pod garbage collector
    /// starts deleting terminated pods. If <= 0, the terminated pod garbage collector is
    /// disabled.
    #[arg(long, default_value_t = 12500)]
    pub terminated_pod_gc_threshold: i64,
    /// The number of garbage collector workers that are allowed to sync concurrently.
    #[arg(long, default_value_t = 20)]
    pub concurrent_gc_syncs: usize,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub signing: certificates::SigningArgs,
}

/// Why the controller-manager stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad flags.
    #[error("{0}")]
    Config(String),
    /// No usable client configuration.
    #[error(transparent)]
    Connect(#[from] keelson_client::connect::ConnectError),
    /// The health endpoint could not start.
    #[error(transparent)]
    Serve(#[from] keelson_client::health::ServeError),
    /// Leadership was lost (the process must exit so nothing acts without the lease).
    #[error(transparent)]
    Leader(#[from] keelson_client::leader::LeaderError),
}

/// Which controllers `--controllers` enables.
pub fn enabled(flags: &[String]) -> Result<Vec<&'static str>, String> {
    let flags: Vec<String> = flags
        .iter()
        .map(|f| match f.strip_prefix('-') {
            Some(n) => format!("-{}", canonical(n)),
            None if f == "*" => f.clone(),
            None => canonical(f),
        })
        .collect();
    for f in &flags {
        let name = f.trim_start_matches('-');
        if name != "*" && !KNOWN_CONTROLLERS.contains(&name) {
            return Err(format!(
                "{f:?} is not in the list of known controllers ({})",
                KNOWN_CONTROLLERS.join(", ")
            ));
        }
    }
    let star = flags.iter().any(|f| f == "*");
    Ok(KNOWN_CONTROLLERS
        .iter()
        .copied()
        .filter(|c| {
            !flags.iter().any(|f| f.strip_prefix('-') == Some(c))
                && (star || flags.iter().any(|f| f == c))
        })
        .collect())
}

/// The shared informers, created on first use by the controllers that need them.
pub struct Informers {
    /// The controller-manager's own client: the informers list and watch with it.
    client: Client,
    /// The client of the controller being set up ([`Informers::act_as`]).
    acting: Client,
    pods: Option<Informer<Pod>>,
    replicasets: Option<Informer<ReplicaSet>>,
    deployments: Option<Informer<Deployment>>,
    namespaces: Option<Informer<Namespace>>,
    serviceaccounts: Option<Informer<ServiceAccount>>,
    clusterroles: Option<Informer<ClusterRole>>,
    services: Option<Informer<Service>>,
    endpoints: Option<Informer<Endpoints>>,
    endpointslices: Option<Informer<EndpointSlice>>,
    statefulsets: Option<Informer<StatefulSet>>,
    replicationcontrollers: Option<Informer<ReplicationController>>,
    resourcequotas: Option<Informer<ResourceQuota>>,
    root_ca_configmaps: Option<Informer<ConfigMap>>,
    daemonsets: Option<Informer<DaemonSet>>,
    revisions: Option<Informer<ControllerRevision>>,
    revisions_by_controller: Option<Index<ControllerRevision>>,
    nodes: Option<Informer<Node>>,
    node_leases: Option<Informer<Lease>>,
    pods_by_node: Option<Index<Pod>>,
    jobs: Option<Informer<Job>>,
    cronjobs: Option<Informer<CronJob>>,
    jobs_by_controller: Option<Index<Job>>,
    pods_by_controller: Option<Index<Pod>>,
    pods_by_namespace: Option<Index<Pod>>,
    replicasets_by_controller: Option<Index<ReplicaSet>>,
    claims: Option<Informer<PersistentVolumeClaim>>,
    volumes: Option<Informer<PersistentVolume>>,
    pods_by_claim: Option<Index<Pod>>,
    csrs: Option<Informer<CertificateSigningRequest>>,
    started: Vec<tokio::task::JoinHandle<()>>,
}

fn lazy<'a, K>(slot: &'a mut Option<Informer<K>>, client: &Client) -> &'a mut Informer<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync,
{
    slot.get_or_insert_with(|| {
        Informer::new(
            Api::all(client.clone()),
            watcher::Config::default().page_size(500),
        )
    })
}

impl Informers {
    /// No informers yet.
    pub fn new(client: Client) -> Self {
        Self {
            acting: client.clone(),
            client,
            pods: None,
            replicasets: None,
            deployments: None,
            namespaces: None,
            serviceaccounts: None,
            clusterroles: None,
            services: None,
            endpoints: None,
            endpointslices: None,
            statefulsets: None,
            replicationcontrollers: None,
            resourcequotas: None,
            root_ca_configmaps: None,
            daemonsets: None,
            revisions: None,
            revisions_by_controller: None,
            nodes: None,
            node_leases: None,
            pods_by_node: None,
            jobs: None,
            cronjobs: None,
            jobs_by_controller: None,
            pods_by_controller: None,
            pods_by_namespace: None,
            replicasets_by_controller: None,
            claims: None,
            volumes: None,
            pods_by_claim: None,
            csrs: None,
            started: Vec::new(),
        }
    }

    /// The API client.
    pub fn client(&self) -> Client {
        self.acting.clone()
    }

    /// Makes [`Informers::client`] return `client` (the next controller's own) from now on.
    pub fn act_as(&mut self, client: Client) {
        self.acting = client;
    }

    /// Pods in all namespaces, trimmed of what no controller reads (containers cut to name,
    /// ports, resources and restart policy; only claim and disk volumes), as the scheduler's.
    pub fn pods(&mut self) -> &mut Informer<Pod> {
        let fresh = self.pods.is_none();
        let inf = lazy(&mut self.pods, &self.client);
        if fresh {
            inf.trim_with(|p| {
                keelson_client::trim::containers(p);
                keelson_client::trim::volumes(p);
            });
        }
        inf
    }

    /// ReplicaSets in all namespaces.
    pub fn replicasets(&mut self) -> &mut Informer<ReplicaSet> {
        lazy(&mut self.replicasets, &self.client)
    }

    /// Deployments in all namespaces.
    pub fn deployments(&mut self) -> &mut Informer<Deployment> {
        lazy(&mut self.deployments, &self.client)
    }

    /// Namespaces.
    pub fn namespaces(&mut self) -> &mut Informer<Namespace> {
        lazy(&mut self.namespaces, &self.client)
    }

    /// ServiceAccounts in all namespaces.
    pub fn serviceaccounts(&mut self) -> &mut Informer<ServiceAccount> {
        lazy(&mut self.serviceaccounts, &self.client)
    }

    /// ClusterRoles.
    pub fn clusterroles(&mut self) -> &mut Informer<ClusterRole> {
        lazy(&mut self.clusterroles, &self.client)
    }

    /// Services in all namespaces.
    pub fn services(&mut self) -> &mut Informer<Service> {
        lazy(&mut self.services, &self.client)
    }

    /// Endpoints in all namespaces.
    pub fn endpoints(&mut self) -> &mut Informer<Endpoints> {
        lazy(&mut self.endpoints, &self.client)
    }

    /// EndpointSlices in all namespaces.
    pub fn endpointslices(&mut self) -> &mut Informer<EndpointSlice> {
        lazy(&mut self.endpointslices, &self.client)
    }

    /// StatefulSets in all namespaces.
    pub fn statefulsets(&mut self) -> &mut Informer<StatefulSet> {
        lazy(&mut self.statefulsets, &self.client)
    }

    /// The `kube-root-ca.crt` ConfigMaps of all namespaces.
    pub fn root_ca_configmaps(&mut self) -> &mut Informer<ConfigMap> {
        let client = &self.client;
        self.root_ca_configmaps.get_or_insert_with(|| {
            Informer::new(
                Api::all(client.clone()),
                watcher::Config::default().fields(&format!("metadata.name={}", rootcacert::NAME)),
            )
        })
    }

    /// ReplicationControllers in all namespaces.
    pub fn replicationcontrollers(&mut self) -> &mut Informer<ReplicationController> {
        lazy(&mut self.replicationcontrollers, &self.client)
    }

    /// ResourceQuotas in all namespaces.
    pub fn resourcequotas(&mut self) -> &mut Informer<ResourceQuota> {
        lazy(&mut self.resourcequotas, &self.client)
    }

    /// DaemonSets in all namespaces.
    pub fn daemonsets(&mut self) -> &mut Informer<DaemonSet> {
        lazy(&mut self.daemonsets, &self.client)
    }

    /// ControllerRevisions in all namespaces.
    pub fn revisions(&mut self) -> &mut Informer<ControllerRevision> {
        lazy(&mut self.revisions, &self.client)
    }

    /// ControllerRevisions by controller UID.
    pub fn revisions_by_controller(&mut self) -> Index<ControllerRevision> {
        if self.revisions_by_controller.is_none() {
            let index = self
                .revisions()
                .add_index(|r| util::controller_index_keys(&r.metadata));
            self.revisions_by_controller = Some(index);
        }
        self.revisions_by_controller.clone().expect("just set")
    }

    /// Nodes.
    pub fn nodes(&mut self) -> &mut Informer<Node> {
        lazy(&mut self.nodes, &self.client)
    }

    /// Node Leases (in `kube-node-lease`).
    pub fn node_leases(&mut self) -> &mut Informer<Lease> {
        let client = &self.client;
        self.node_leases.get_or_insert_with(|| {
            Informer::new(
                Api::namespaced(client.clone(), "kube-node-lease"),
                watcher::Config::default().page_size(500),
            )
        })
    }

    /// Pods by the node they are bound to.
    pub fn pods_by_node(&mut self) -> Index<Pod> {
        if self.pods_by_node.is_none() {
            let index = self.pods().add_index(|p| {
                p.spec
                    .as_ref()
                    .and_then(|s| s.node_name.clone())
                    .into_iter()
                    .collect()
            });
            self.pods_by_node = Some(index);
        }
        self.pods_by_node.clone().expect("just set")
    }

    /// PersistentVolumeClaims in all namespaces.
    pub fn claims(&mut self) -> &mut Informer<PersistentVolumeClaim> {
        lazy(&mut self.claims, &self.client)
    }

    /// PersistentVolumes.
    pub fn volumes(&mut self) -> &mut Informer<PersistentVolume> {
        lazy(&mut self.volumes, &self.client)
    }

    /// Pods by the claims they use, as `<namespace>/<claim>` (ephemeral volumes' claims
    /// included).
    pub fn pods_by_claim(&mut self) -> Index<Pod> {
        if self.pods_by_claim.is_none() {
            let index = self.pods().add_index(volumeprotection::claims_of);
            self.pods_by_claim = Some(index);
        }
        self.pods_by_claim.clone().expect("just set")
    }

    /// Jobs in all namespaces.
    pub fn jobs(&mut self) -> &mut Informer<Job> {
        lazy(&mut self.jobs, &self.client)
    }

    /// CronJobs in all namespaces.
    pub fn cronjobs(&mut self) -> &mut Informer<CronJob> {
        lazy(&mut self.cronjobs, &self.client)
    }

    /// Jobs by controller UID.
    pub fn jobs_by_controller(&mut self) -> Index<Job> {
        if self.jobs_by_controller.is_none() {
            let index = self
                .jobs()
                .add_index(|j| util::controller_index_keys(&j.metadata));
            self.jobs_by_controller = Some(index);
        }
        self.jobs_by_controller.clone().expect("just set")
    }

    /// Pods by controller UID (orphans under `orphan/<namespace>`).
    pub fn pods_by_controller(&mut self) -> Index<Pod> {
        if self.pods_by_controller.is_none() {
            let index = self
                .pods()
                .add_index(|p| util::controller_index_keys(&p.metadata));
            self.pods_by_controller = Some(index);
        }
        self.pods_by_controller.clone().expect("just set")
    }

    /// Pods by namespace.
    pub fn pods_by_namespace(&mut self) -> Index<Pod> {
        if self.pods_by_namespace.is_none() {
            let index = self
                .pods()
                .add_index(|p| vec![p.metadata.namespace.clone().unwrap_or_default()]);
            self.pods_by_namespace = Some(index);
        }
        self.pods_by_namespace.clone().expect("just set")
    }

    /// ReplicaSets by controller UID (orphans under `orphan/<namespace>`).
    pub fn replicasets_by_controller(&mut self) -> Index<ReplicaSet> {
        if self.replicasets_by_controller.is_none() {
            let index = self
                .replicasets()
                .add_index(|r| util::controller_index_keys(&r.metadata));
            self.replicasets_by_controller = Some(index);
        }
        self.replicasets_by_controller.clone().expect("just set")
    }

    /// CertificateSigningRequests.
    pub fn certificate_signing_requests(&mut self) -> &mut Informer<CertificateSigningRequest> {
        lazy(&mut self.csrs, &self.client)
    }

    /// Starts every informer that was asked for and waits until each has listed once.
    pub async fn start(&mut self, token: &CancellationToken) {
        let mut ready = Vec::new();
        macro_rules! start {
            ($($f:ident),*) => {$(
                if let Some(inf) = self.$f.take() {
                    let synced = inf.synced();
                    ready.push(tokio::spawn(async move { synced.wait().await }));
                    self.started.push(tokio::spawn(inf.run(token.clone())));
                }
            )*};
        }
        start!(
            pods,
            replicasets,
            deployments,
            namespaces,
            serviceaccounts,
            clusterroles,
            services,
            endpoints,
            endpointslices,
            jobs,
            cronjobs,
            nodes,
            node_leases,
            statefulsets,
            daemonsets,
            revisions,
            resourcequotas,
            root_ca_configmaps,
            replicationcontrollers,
            claims,
            volumes,
            csrs
        );
        for r in ready {
            tokio::select! {
                _ = r => {}
                _ = token.cancelled() => return,
            }
        }
    }
}

/// Runs the controller-manager until `shutdown`.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    let controllers = enabled(&config.controllers).map_err(Error::Config)?;
    if let Some(path) = &config.root_ca_file {
        std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("--root-ca-file {}: {e}", path.display())))?;
    }
    let authorities = if controllers.contains(&"csrsigning") {
        config.signing.authorities().map_err(Error::Config)?
    } else {
        Default::default()
    };
    if config.allocate_node_cidrs {
        nodeipam::Cidrs::new(&config.cluster_cidr, config.node_cidr_mask_size)
            .map_err(Error::Config)?;
    }
    let client = connect(&config.client).await?;
    let health = Arc::new(Health::new());
    let identity = default_identity();
    let elector = if config.leader.leader_elect {
        // A client of its own, as upstream's leader-election client: renewals never queue
        // behind the controllers' requests for the client's QPS.
        Some(LeaderElector::new(
            connect(&config.client).await?,
            &config.leader,
            "kube-controller-manager",
            identity.clone(),
            &health,
        )?)
    } else {
        None
    };
    keelson_client::health::serve(&config.serving, 10257, health.clone(), shutdown.clone()).await?;
    tracing::info!(?controllers, "starting controller-manager");
    let lead = move |token: CancellationToken| {
        run_controllers(client, controllers, config, authorities, token)
    };
    match elector {
        Some(e) => e.run(shutdown, lead).await?,
        None => lead(shutdown).await,
    }
    Ok(())
}

async fn run_controllers(
    client: Client,
    controllers: Vec<&'static str>,
    config: Config,
    authorities: std::collections::BTreeMap<&'static str, Arc<certificates::authority::Authority>>,
    token: CancellationToken,
) {
    let mut informers = Informers::new(client.clone());
    let credentials = if config.use_service_account_credentials {
        match credentials::Credentials::new(client.clone(), config.client.clone(), token.clone()) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::error!(error = %e, "cannot keep the controllers' tokens; stopping");
                return;
            }
        }
    } else {
        None
    };
    let mut tasks = Vec::new();
    let needs_discovery = controllers
        .iter()
        .any(|c| matches!(*c, "garbagecollector" | "namespace" | "resourcequota"));
    let resources = if needs_discovery {
        loop {
            match discovery::Resources::discover(client.clone()).await {
                Ok(r) => break Some(Arc::new(r)),
                Err(e) => {
                    tracing::warn!(error = %e, "discovery failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(std::time::Duration::from_secs(2)) => {}
                        _ = token.cancelled() => return,
                    }
                }
            }
        }
    } else {
        None
    };
    let mut pending: Vec<Box<dyn FnOnce(CancellationToken) -> tokio::task::JoinHandle<()> + Send>> =
        Vec::new();
    for c in &controllers {
        // Each controller writes as its own ServiceAccount with the flag on.
        if let Some(creds) = &credentials {
            let own = match credentials::account_of(c) {
                Some(account) => loop {
                    match creds.client_for(account).await {
                        Ok(cl) => break cl,
                        Err(e) => {
                            tracing::warn!(controller = %c, error = %e, "cannot act as the controller's service account yet; retrying");
                            tokio::select! {
                                _ = tokio::time::sleep(std::time::Duration::from_secs(2)) => {}
                                _ = token.cancelled() => return,
                            }
                        }
                    }
                },
                None => client.clone(),
            };
            informers.act_as(own);
        }
        // Events name the controller that made them, as upstream's (`kubectl describe` shows
        // it).
        let acting = informers.client();
        let recorder = |component: &str| Recorder::new(acting.clone(), component, None);
        match *c {
            "replicaset" => {
                let ctl = replicaset::ReplicaSetController::<ReplicaSet>::new(
                    &mut informers,
                    recorder("replicaset-controller"),
                );
                let n = config.concurrent_replicaset_syncs;
                pending.push(Box::new(move |t| tokio::spawn(ctl.run(n, t))));
            }
            "replicationcontroller" => {
                let ctl = replicaset::ReplicaSetController::<ReplicationController>::new(
                    &mut informers,
                    recorder("replication-controller"),
                );
                let n = config.concurrent_rc_syncs;
                pending.push(Box::new(move |t| tokio::spawn(ctl.run(n, t))));
            }
            "deployment" => {
                let ctl = deployment::DeploymentController::new(
                    &mut informers,
                    recorder("deployment-controller"),
                );
                let n = config.concurrent_deployment_syncs;
                pending.push(Box::new(move |t| tokio::spawn(ctl.run(n, t))));
            }
            "namespace" => {
                let Some(res) = resources.clone() else {
                    continue;
                };
                let ctl = namespace::NamespaceController::new(&mut informers, res);
                let n = config.concurrent_namespace_syncs;
                pending.push(Box::new(move |t| tokio::spawn(ctl.run(n, t))));
            }
            "endpoint" => {
                let ctl = endpoint::EndpointsController::new(&mut informers);
                let n = config.concurrent_endpoint_syncs;
                pending.push(Box::new(move |t| tokio::spawn(ctl.run(n, t))));
            }
            "endpointslice" => {
                let ctl = endpointslice::EndpointSliceController::new(
                    &mut informers,
                    config.max_endpoints_per_slice,
                );
                let n = config.concurrent_service_endpoint_syncs;
                pending.push(Box::new(move |t| tokio::spawn(ctl.run(n, t))));
            }
            "job" => {
                let ctl = job::JobController::new(&mut informers, recorder("job-controller"));
                let n = config.concurrent_job_syncs;
                pending.push(Box::new(move |t| tokio::spawn(ctl.run(n, t))));
            }
            "cronjob" => {
                let ctl =
                    cronjob::CronJobController::new(&mut informers, recorder("cronjob-controller"));
                let n = config.concurrent_cron_job_syncs;
                pending.push(Box::new(move |t| tokio::spawn(ctl.run(n, t))));
            }
            "nodelifecycle" => {
                let timing = nodelifecycle::Timing {
                    monitor_period: config.node_monitor_period,
                    grace_period: config.node_monitor_grace_period,
                    startup_grace_period: config.node_startup_grace_period,
                };
                let ctl = nodelifecycle::NodeLifecycleController::new(
                    &mut informers,
                    recorder("node-controller"),
                    timing,
                );
                pending.push(Box::new(move |t| tokio::spawn(ctl.run(2, t))));
            }
            "nodeipam" if config.allocate_node_cidrs => {
                let cidrs =
                    match nodeipam::Cidrs::new(&config.cluster_cidr, config.node_cidr_mask_size) {
                        Ok(c) => c,
                        Err(e) => {
                            tracing::error!(error = %e, "node IPAM disabled");
                            continue;
                        }
                    };
                let ctl = nodeipam::NodeIpam::new(&mut informers, recorder("cidrAllocator"), cidrs);
                pending.push(Box::new(move |t| tokio::spawn(ctl.run(1, t))));
            }
            "podgc" => {
                let threshold = config.terminated_pod_gc_threshold.max(0) as usize;
                let ctl = podgc::PodGc::new(&mut informers, threshold);
                pending.push(Box::new(move |t| tokio::spawn(ctl.run(t))));
            }
            "clusterrole-aggregation" => {
                let ctl = clusterroleaggregation::ClusterRoleAggregation::new(&mut informers);
                pending.push(Box::new(move |t| tokio::spawn(ctl.run(1, t))));
            }
            "pvc-protection" => {
                let ctl = volumeprotection::PvcProtection::new(&mut informers);
                pending.push(Box::new(move |t| tokio::spawn(ctl.run(1, t))));
            }
            "pv-protection" => {
                let ctl = volumeprotection::PvProtection::new(&mut informers);
                pending.push(Box::new(move |t| tokio::spawn(ctl.run(1, t))));
            }
            "ttl-after-finished" => {
                let ctl = ttlafterfinished::TtlAfterFinished::new(&mut informers);
                let n = config.concurrent_ttl_after_finished_syncs;
                pending.push(Box::new(move |t| tokio::spawn(ctl.run(n, t))));
            }
            "root-ca-cert-publisher" => {
                let Some(path) = &config.root_ca_file else {
                    tracing::info!("no --root-ca-file: not publishing kube-root-ca.crt");
                    continue;
                };
                let ca = match std::fs::read_to_string(path) {
                    Ok(ca) => ca,
                    Err(e) => {
                        tracing::error!(file = %path.display(), error = %e, "cannot read --root-ca-file");
                        continue;
                    }
                };
                let ctl = rootcacert::RootCaPublisher::new(&mut informers, ca);
                pending.push(Box::new(move |t| tokio::spawn(ctl.run(1, t))));
            }
            "resourcequota" => {
                let Some(res) = resources.clone() else {
                    continue;
                };
                let ctl = resourcequota::ResourceQuotaController::new(
                    &mut informers,
                    res,
                    config.resource_quota_sync_period,
                );
                let n = config.concurrent_resource_quota_syncs;
                pending.push(Box::new(move |t| tokio::spawn(ctl.run(n, t))));
            }
            "daemonset" => {
                let ctl = daemonset::DaemonSetController::new(
                    &mut informers,
                    recorder("daemonset-controller"),
                );
                let n = config.concurrent_daemonset_syncs;
                pending.push(Box::new(move |t| tokio::spawn(ctl.run(n, t))));
            }
            "statefulset" => {
                let ctl = statefulset::StatefulSetController::new(
                    &mut informers,
                    recorder("statefulset-controller"),
                );
                let n = config.concurrent_statefulset_syncs;
                pending.push(Box::new(move |t| tokio::spawn(ctl.run(n, t))));
            }
            "serviceaccount" => {
                let ctl = serviceaccount::ServiceAccountController::new(&mut informers);
                pending.push(Box::new(move |t| tokio::spawn(ctl.run(1, t))));
            }
            "garbagecollector" => {
                let Some(res) = resources.clone() else {
                    continue;
                };
                let ctl = garbagecollector::GarbageCollector::new(acting.clone(), res);
                let n = config.concurrent_gc_syncs;
                pending.push(Box::new(move |t| tokio::spawn(ctl.run(n, t))));
            }
            "csrsigning" => {
                if authorities.is_empty() {
                    tracing::info!("no --cluster-signing-* files: not signing certificates");
                    continue;
                }
                let ctl = certificates::CsrSigning::new(
                    &mut informers,
                    authorities.clone(),
                    config.signing.cluster_signing_duration,
                );
                pending.push(Box::new(move |t| tokio::spawn(ctl.run(5, t))));
            }
            "csrapproving" => {
                let ctl = certificates::CsrApproving::new(&mut informers);
                pending.push(Box::new(move |t| tokio::spawn(ctl.run(5, t))));
            }
            "csrcleaner" => {
                let ctl = certificates::CsrCleaner::new(&mut informers);
                pending.push(Box::new(move |t| tokio::spawn(ctl.run(t))));
            }
            _ => {}
        }
    }
    informers.start(&token).await;
    if token.is_cancelled() {
        return;
    }
    tracing::info!("caches synced; controllers running");
    for start in pending {
        tasks.push(start(token.clone()));
    }
    for t in tasks {
        let _ = t.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controllers_flag_as_upstream() {
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(enabled(&s(&["*"])).unwrap(), KNOWN_CONTROLLERS);
        assert!(
            !enabled(&s(&["*", "-deployment"]))
                .unwrap()
                .contains(&"deployment")
        );
        assert_eq!(enabled(&s(&["deployment"])).unwrap(), ["deployment"]);
        assert_eq!(
            enabled(&s(&["garbage-collector-controller", "namespace"])).unwrap(),
            ["garbagecollector", "namespace"]
        );
        assert!(enabled(&s(&["nosuch"])).is_err());
    }
}
