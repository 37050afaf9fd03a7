//! `/health` and `/metrics` on the client port, beside gRPC (as etcd serves them).

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use super::node::Node;

/// Adds the HTTP endpoints to the gRPC router.
pub fn routes(grpc: Router, node: Node) -> Router {
    let http = Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .with_state(node);
    grpc.merge(http)
}

async fn health(State(node): State<Node>) -> impl IntoResponse {
    let (ok, reason) = if node.leader().is_none() {
        (false, "RAFT NO LEADER")
    } else if !node.shared().mvcc.read().alarms().is_empty() {
        (false, "ALARM ACTIVE")
    } else {
        match node.read_barrier().await {
            Ok(()) => (true, ""),
            Err(_) => (false, "QGET ERROR"),
        }
    };
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::json!({ "health": ok.to_string(), "reason": reason }).to_string();
    (status, [(header::CONTENT_TYPE, "application/json")], body)
}

async fn metrics(State(node): State<Node>) -> impl IntoResponse {
    super::refresh_store_metrics(&node);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        node.metrics().render(),
    )
}
