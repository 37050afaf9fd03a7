//! etcd's require-leader requests (clientv3's `WithRequireLeader`: `hasleader: true` in the
//! request's metadata, which the Kubernetes apiserver sets on its watches). Such a request is
//! refused with `etcdserver: no leader` while this member has no leader it can reach, and such
//! a stream ends with that error once the member has gone three election timeouts without
//! one, so the client moves to another member instead of waiting on a cut-off one.

use std::pin::Pin;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use futures::{Stream, StreamExt};
use tonic::Status;

use crate::error::StoreError;
use crate::server::node::Node;

/// The metadata key, and the value asking for a leader.
const KEY: &str = "hasleader";
const HAS_LEADER: &str = "true";

/// A response stream of a streaming RPC.
pub type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

fn requested(headers: &axum::http::HeaderMap) -> bool {
    headers.get(KEY).is_some_and(|v| v == HAS_LEADER)
}

/// Middleware in front of every client RPC: the check etcd's unary and stream interceptors
/// make before the call runs.
pub async fn check(State(node): State<Node>, req: Request, next: Next) -> Response {
    if requested(req.headers()) && !node.has_leader() {
        return Status::from(StoreError::NoLeader).into_http();
    }
    next.run(req).await
}

/// `stream`, ended with `etcdserver: no leader` when the member has gone without a leader
/// ([`Node::leader_lost`]), if the request asked for a leader; else `stream` itself.
pub fn guard<T: Send + 'static>(
    node: &Node,
    metadata: &tonic::metadata::MetadataMap,
    stream: BoxStream<T>,
) -> BoxStream<T> {
    if metadata.get(KEY).is_none_or(|v| v != HAS_LEADER) {
        return stream;
    }
    // A new receiver has seen the current value: only a later loss ends the stream.
    let lost = node.leader_lost();
    Box::pin(futures::stream::unfold(
        Some((stream, lost)),
        |state| async move {
            let (mut stream, mut lost) = state?;
            tokio::select! {
                item = stream.next() => item.map(|i| (i, Some((stream, lost)))),
                Ok(()) = lost.changed() => Some((Err(Status::from(StoreError::NoLeader)), None)),
            }
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_hasleader_true_asks() {
        let mut h = axum::http::HeaderMap::new();
        assert!(!requested(&h));
        h.insert(KEY, "false".parse().unwrap());
        assert!(!requested(&h));
        h.insert(KEY, "true".parse().unwrap());
        assert!(requested(&h));
    }
}
