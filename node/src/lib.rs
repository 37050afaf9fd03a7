//! `keelson node`: the kubelet. It registers a Node, keeps its Lease and status fresh, and runs
//! the pods bound to it through the whole pod lifecycle (init containers, hooks, probes,
//! restarts with back-off, graceful termination), with one of two runtimes behind one trait:
//! `process` (host binaries in their own namespaces and cgroups) and `hollow` (simulated
//! containers, thousands of nodes in one process, for scale tests).

pub mod agent;
pub mod config;
pub mod dns;
pub mod env;
pub mod exec;
pub mod failure;
pub mod hollow;
pub mod logs_query;
pub mod netpol;
pub mod portforward;
pub mod probe;
pub mod process;
pub mod proxy;
pub mod pty;
pub mod runtime;
pub mod server;
pub mod spdy;
pub mod status;
pub mod volumes;
pub mod worker;

pub use config::Config;

use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use keelson_client::connect;
use keelson_client::informer::{Change, Informer, cached};
use kube::api::Api;
use kube::runtime::watcher;
use tokio_util::sync::CancellationToken;

use crate::agent::{Agent, Shared};
use crate::runtime::Runtime;

/// Why the node stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad flags.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// No API connection.
    #[error(transparent)]
    Connect(#[from] keelson_client::connect::ConnectError),
    /// The kubelet API could not start.
    #[error("kubelet server: {0}")]
    Serve(String),
    /// The runtime could not start.
    #[error("runtime: {0}")]
    Runtime(String),
}

/// Runs the node (or, with `--hollow`, `--count` hollow nodes) until `shutdown`.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    let node = config.node_settings().map_err(Error::Config)?;
    let client = connect(&config.client).await?;
    if config.hollow {
        let rt = Arc::new(hollow::HollowRuntime::new());
        run_with(config, node, client, rt, shutdown).await
    } else {
        let rt = Arc::new(
            process::ProcessRuntime::new(&config, &node.name)
                .await
                .map_err(Error::Runtime)?,
        );
        run_with(config, node, client, rt, shutdown).await
    }
}

async fn run_with<R: Runtime>(
    config: Config,
    node: config::NodeSettings,
    client: kube::Client,
    rt: Arc<R>,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    rt.clean_stale().await;
    let count = if config.hollow {
        config.count.max(1)
    } else {
        1
    };
    let names: Vec<String> = if config.hollow {
        (0..count).map(|i| format!("{}-{i}", node.name)).collect()
    } else {
        vec![node.name.clone()]
    };
    let proxy = if config.proxy && !config.hollow {
        proxy::check().await.map_err(Error::Config)?;
        let (client, args, name, stop) = (
            client.clone(),
            config.proxy_args.clone(),
            node.name.clone(),
            shutdown.clone(),
        );
        Some(tokio::spawn(async move {
            if let Err(e) = proxy::run(client, args, name, stop).await {
                tracing::error!(error = %e, "service proxy stopped");
            }
        }))
    } else {
        None
    };
    let shared = Shared::new(client.clone(), rt, &config, shutdown.clone());
    let agents: Arc<HashMap<String, Arc<Agent<R>>>> = Arc::new(
        names
            .iter()
            .map(|n| {
                let mut s = node.clone();
                s.name = n.clone();
                (n.clone(), Agent::new(shared.clone(), s))
            })
            .collect(),
    );
    let port = server::serve(&config, agents.clone(), shutdown.clone())
        .await
        .map_err(Error::Serve)?;
    tracing::info!(
        nodes = agents.len(),
        runtime = shared.runtime.name(),
        port,
        "starting node agent"
    );
    for a in agents.values() {
        a.set_port(port);
        tokio::spawn(a.clone().heartbeat(a.life()));
    }
    // Pods bound to our nodes: one watch per node, or one shared watch for a hollow fleet.
    let per_node = !config.hollow || config.hollow_watch == "per-node";
    let mut tasks = Vec::new();
    let pods_of: failure::PodsOf = if per_node {
        let mut stores = HashMap::new();
        for a in agents.values() {
            let api: Api<Pod> = Api::all(client.clone());
            let cfg = watcher::Config::default().fields(&format!("spec.nodeName={}", a.name()));
            let mut inf = Informer::new(api, cfg);
            if config.hollow {
                inf.trim_with(hollow::trim_pod);
            }
            let a = a.clone();
            let store = inf.store();
            stores.insert(a.name().to_string(), store.clone());
            inf.on_change(move |c| {
                let pod = cached(&store, &c);
                a.pod_changed(c, pod);
            });
            tasks.push(tokio::spawn(inf.run(shutdown.clone())));
        }
        Arc::new(move |name: &str| stores.get(name).map(|s| s.state()).unwrap_or_default())
    } else {
        let api: Api<Pod> = Api::all(client.clone());
        let cfg = watcher::Config::default().fields("spec.nodeName!=");
        let mut inf = Informer::new(api, cfg);
        inf.trim_with(hollow::trim_pod);
        let agents = agents.clone();
        let store = inf.store();
        inf.on_change(move |c: Change<'_, Pod>| {
            let node = c
                .object()
                .spec
                .as_ref()
                .and_then(|s| s.node_name.as_deref());
            if let Some(a) = node.and_then(|n| agents.get(n)) {
                let pod = cached(&store, &c);
                a.pod_changed(c, pod);
            }
        });
        let all = inf.store();
        tasks.push(tokio::spawn(inf.run(shutdown.clone())));
        Arc::new(move |name: &str| {
            all.state()
                .into_iter()
                .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(name))
                .collect()
        })
    };
    if config.hollow {
        let inf = failure::informer(client.clone(), agents.clone(), pods_of, shutdown.clone());
        tasks.push(tokio::spawn(inf.run(shutdown.clone())));
    }
    shutdown.cancelled().await;
    // Stop every pod's containers (gracefully, within their grace periods) before exiting.
    let stops = agents.values().map(|a| a.clone().shutdown());
    futures::future::join_all(stops).await;
    for t in tasks {
        let _ = t.await;
    }
    if let Some(p) = proxy {
        let _ = p.await;
    }
    shared.flush_status().await;
    shared.runtime.clean_stale().await;
    shared.runtime.teardown().await;
    Ok(())
}
