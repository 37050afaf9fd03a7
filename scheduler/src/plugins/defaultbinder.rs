//! DefaultBinder: binds through the `pods/binding` subresource.

use std::sync::Arc;

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};

use crate::framework::{Plugin, Point, Status};
use crate::types::PodInfo;

/// The plugin.
pub struct DefaultBinder {
    client: Option<kube::Client>,
}

impl DefaultBinder {
    /// A binder using `client` (None: every bind fails, for configurations without an API).
    pub fn new(client: Option<kube::Client>) -> Self {
        DefaultBinder { client }
    }
}

impl Plugin for DefaultBinder {
    fn name(&self) -> &'static str {
        "DefaultBinder"
    }
    fn points(&self) -> &'static [Point] {
        &[Point::Bind]
    }
    fn bind(&self, pod: Arc<PodInfo>, node: String) -> BoxFuture<'static, Status> {
        let client = self.client.clone();
        Box::pin(async move {
            let Some(client) = client else {
                return Status::error("no API client to bind with");
            };
            let api: Api<Pod> = Api::namespaced(client, &pod.namespace);
            let body = serde_json::json!({
                "apiVersion": "v1",
                "kind": "Binding",
                "metadata": {"name": pod.name, "namespace": pod.namespace, "uid": pod.uid},
                "target": {"apiVersion": "v1", "kind": "Node", "name": node},
            });
            match api
                .create_subresource::<_, serde_json::Value>(
                    "binding",
                    &pod.name,
                    &PostParams::default(),
                    &body,
                )
                .await
            {
                Ok(_) => Status::ok(),
                // The pod is gone or someone else bound it: the watch will say so; retrying
                // cannot help.
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {
                    Status::unresolvable(format!("binding rejected: {}", s.message))
                }
                Err(e) => Status::error(format!("binding rejected: {e}")),
            }
        })
    }
}
