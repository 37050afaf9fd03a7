//! The kubelet API (HTTPS, `--port`): `/healthz`, `/pods`, `/metrics`, and
//! `/containerLogs/{namespace}/{pod}/{container}` with upstream's query parameters (follow,
//! tailLines, sinceSeconds, sinceTime, previous, timestamps, limitBytes), which the apiserver's
//! `pods/log` proxies so `kubectl logs` works; `/exec`, `/attach` and `/portForward`, which
//! `pods/exec`, `pods/attach` and `pods/portforward` proxy.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use bytes::Bytes;
use k8s_openapi::api::core::v1::Pod;
use keelson_client::health::{ServingArgs, serve_router};
use tokio_util::sync::CancellationToken;

use crate::agent::Agent;
use crate::config::Config;
use crate::logs_query::LogQuery;
use crate::runtime::Runtime;

type Agents<R> = Arc<HashMap<String, Arc<Agent<R>>>>;

/// Starts the kubelet API; returns its port.
pub async fn serve<R: Runtime>(
    config: &Config,
    agents: Agents<R>,
    shutdown: CancellationToken,
) -> Result<u16, String> {
    let args = ServingArgs {
        bind_address: config.address,
        secure_port: Some(config.port),
        tls_cert_file: config.tls_cert_file.clone(),
        tls_private_key_file: config.tls_private_key_file.clone(),
    };
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/pods", get(pods::<R>))
        .route("/metrics", get(metrics::<R>))
        .route(
            "/containerLogs/{namespace}/{pod}/{container}",
            get(container_logs::<R>),
        )
        .route("/exec/{namespace}/{pod}/{container}", get(exec::<R>))
        .route("/attach/{namespace}/{pod}/{container}", get(attach::<R>))
        .route("/portForward/{namespace}/{pod}", any(port_forward::<R>))
        .with_state(agents);
    let addr = SocketAddr::new(config.address, config.port);
    serve_router(&args, addr, config.client_ca_file.as_deref(), app, shutdown)
        .await
        .map(|a| a.port())
        .map_err(|e| e.to_string())
}

async fn pods<R: Runtime>(State(agents): State<Agents<R>>) -> Response {
    let items: Vec<Arc<Pod>> = agents.values().flat_map(|a| a.pods()).collect();
    let body =
        serde_json::json!({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items});
    (
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

async fn metrics<R: Runtime>(State(agents): State<Agents<R>>) -> Response {
    let (mut pods, mut running) = (0usize, 0usize);
    for st in agents.values().flat_map(|a| a.pod_states()) {
        pods += 1;
        running += st.lock().app.iter().filter(|s| s.running()).count();
    }
    let text = format!(
        "# HELP kubelet_running_pods Number of pods that have a running pod sandbox\n\
         # TYPE kubelet_running_pods gauge\nkubelet_running_pods {pods}\n\
         # HELP kubelet_running_containers Number of containers currently running\n\
         # TYPE kubelet_running_containers gauge\n\
         kubelet_running_containers{{container_state=\"running\"}} {running}\n\
         # HELP kubelet_node_name The node's name.\n# TYPE kubelet_node_name gauge\n{}",
        agents
            .keys()
            .map(|n| format!("kubelet_node_name{{node=\"{n}\"}} 1\n"))
            .collect::<String>()
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

async fn exec<R: Runtime>(
    State(agents): State<Agents<R>>,
    Path((ns, pod, container)): Path<(String, String, String)>,
    axum::extract::RawQuery(raw): axum::extract::RawQuery,
    ws: axum::extract::ws::WebSocketUpgrade,
) -> Response {
    match crate::exec::ExecQuery::parse(raw.as_deref().unwrap_or("")) {
        Ok(q) => stream(&agents, &ns, &pod, &container, ws, q, false),
        Err(e) => bad(StatusCode::BAD_REQUEST, e),
    }
}

async fn attach<R: Runtime>(
    State(agents): State<Agents<R>>,
    Path((ns, pod, container)): Path<(String, String, String)>,
    axum::extract::RawQuery(raw): axum::extract::RawQuery,
    ws: axum::extract::ws::WebSocketUpgrade,
) -> Response {
    match crate::exec::ExecQuery::parse_streams(raw.as_deref().unwrap_or("")) {
        Ok(q) => stream(&agents, &ns, &pod, &container, ws, q, true),
        Err(e) => bad(StatusCode::BAD_REQUEST, e),
    }
}

/// Port forwarding into a pod's network namespace (GET for a WebSocket, POST for SPDY).
async fn port_forward<R: Runtime>(
    State(agents): State<Agents<R>>,
    Path((ns, pod)): Path<(String, String)>,
    req: axum::extract::Request,
) -> Response {
    let Some((runtime, state)) = agents
        .values()
        .find_map(|a| Some((a.shared.runtime.clone(), a.pod_state(&ns, &pod)?)))
    else {
        return bad(
            StatusCode::NOT_FOUND,
            format!("pod {ns}/{pod} not found on this node"),
        );
    };
    let (obj, ready) = {
        let st = state.lock();
        (st.pod.clone(), st.sandbox_ready)
    };
    if !ready {
        return bad(
            StatusCode::BAD_REQUEST,
            format!("pod {ns}/{pod} has no sandbox yet"),
        );
    }
    let target = crate::portforward::Target {
        pod: format!("{ns}/{pod}"),
        uid: obj.metadata.uid.clone().unwrap_or_default(),
    };
    let dial: crate::portforward::Dialer = Arc::new(move |port| {
        let (runtime, obj) = (runtime.clone(), obj.clone());
        Box::pin(async move { runtime.dial(&obj, port).await })
    });
    crate::portforward::serve(req, dial, target).await
}

/// Exec or attach on a running container.
fn stream<R: Runtime>(
    agents: &Agents<R>,
    ns: &str,
    pod: &str,
    container: &str,
    ws: axum::extract::ws::WebSocketUpgrade,
    q: crate::exec::ExecQuery,
    attach: bool,
) -> Response {
    let Some(state) = agents.values().find_map(|a| a.pod_state(ns, pod)) else {
        return bad(
            StatusCode::NOT_FOUND,
            format!("pod {ns}/{pod} not found on this node"),
        );
    };
    let (handle, stdin_once) = {
        let st = state.lock();
        let handle = st
            .init
            .iter()
            .chain(&st.app)
            .find(|s| s.name == container && s.running())
            .and_then(|s| s.handle.clone());
        let spec = st.pod.spec.as_ref();
        let stdin_once = spec
            .into_iter()
            .flat_map(|s| s.init_containers.iter().flatten().chain(&s.containers))
            .find(|c| c.name == container)
            .and_then(|c| c.stdin_once)
            .unwrap_or(false);
        (handle, stdin_once)
    };
    match handle {
        Some(h) => crate::exec::serve(ws, h, q, attach, stdin_once),
        None => bad(
            StatusCode::BAD_REQUEST,
            format!("container {container} is not running in pod {pod}"),
        ),
    }
}

fn bad(code: StatusCode, msg: String) -> Response {
    (code, msg).into_response()
}

async fn container_logs<R: Runtime>(
    State(agents): State<Agents<R>>,
    Path((ns, pod, container)): Path<(String, String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let q = match LogQuery::parse(&q) {
        Ok(q) => q,
        Err(e) => return bad(StatusCode::BAD_REQUEST, e),
    };
    let Some((agent, state)) = agents
        .values()
        .find_map(|a| a.pod_state(&ns, &pod).map(|s| (a.clone(), s)))
    else {
        return bad(
            StatusCode::NOT_FOUND,
            format!("pod {ns}/{pod} not found on this node"),
        );
    };
    let (pod_obj, slot) = {
        let st = state.lock();
        let slot = st
            .init
            .iter()
            .chain(&st.app)
            .find(|s| s.name == container)
            .cloned();
        (st.pod.clone(), slot)
    };
    let Some(slot) = slot else {
        return bad(
            StatusCode::BAD_REQUEST,
            format!("container {container} is not valid for pod {pod}"),
        );
    };
    let restart = if q.previous {
        if slot.restart_count == 0
            && slot
                .last_state
                .as_ref()
                .is_none_or(|l| l.terminated.is_none())
        {
            return bad(
                StatusCode::BAD_REQUEST,
                format!("previous terminated container \"{container}\" in pod \"{pod}\" not found"),
            );
        }
        // The previous instance's file: one before the current, or the current one while the
        // container waits to restart (its count is bumped when it starts again).
        if slot.running() {
            slot.restart_count - 1
        } else {
            slot.restart_count.max(1) - 1
        }
    } else {
        slot.restart_count
    };
    let files = agent
        .shared
        .runtime
        .log_files(&pod_obj, &container, restart);
    let mut out = q.render(&files);
    let follow = q.follow && !q.previous && slot.running();
    if !follow {
        return ([(header::CONTENT_TYPE, "text/plain")], out.text).into_response();
    }
    // Follow: the collected text first, then new records of the current file until the
    // container exits.
    let current = files.last().cloned();
    let exited = slot.handle.as_ref().map(|h| h.exited());
    let first = std::mem::take(&mut out.text);
    let stream = futures::stream::unfold(
        (Some(first), current, out.offset, exited, q, out.budget),
        |(first, file, offset, exited, q, budget)| async move {
            if let Some(f) = first {
                return Some((
                    Ok::<Bytes, std::io::Error>(Bytes::from(f)),
                    (None, file, offset, exited, q, budget),
                ));
            }
            let path: PathBuf = file.clone()?;
            let mut exited = exited;
            loop {
                if budget == Some(0) {
                    return None;
                }
                let (chunk, new_offset) = q.read_from(&path, offset, budget);
                if !chunk.is_empty() {
                    let budget = budget.map(|b| b.saturating_sub(chunk.len()));
                    return Some((
                        Ok(Bytes::from(chunk)),
                        (None, file, new_offset, exited, q, budget),
                    ));
                }
                if exited.as_ref().is_some_and(|e| e.borrow().is_some()) {
                    // One last read after the exit, then stop.
                    let (chunk, _) = q.read_from(&path, new_offset, budget);
                    if chunk.is_empty() {
                        return None;
                    }
                    return Some((
                        Ok(Bytes::from(chunk)),
                        (None, None, new_offset, None, q, budget),
                    ));
                }
                let wait = async {
                    match exited.as_mut() {
                        Some(e) => {
                            let _ = e.changed().await;
                        }
                        None => std::future::pending().await,
                    }
                };
                let _ = tokio::time::timeout(Duration::from_millis(200), wait).await;
            }
        },
    );
    (
        [(header::CONTENT_TYPE, "text/plain")],
        Body::from_stream(stream),
    )
        .into_response()
}
