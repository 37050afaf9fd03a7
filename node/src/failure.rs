//! Node failures on demand, for chaos runs on hollow nodes (ClusterLoader2's "kill a share of
//! the nodes for a while"): a Node labelled `hollow.keelson.dev/down-for=<Go duration>` fails
//! ([`Agent::fail`]: its kubelet stops at once, as if killed) and comes back after that long,
//! or as soon as the label is removed ([`Agent::recover`]). Once back, the node removes the
//! label itself, so whoever failed it sees it return. The rest of the process carries on: one
//! hollow node's failure is not its neighbours'.
//!
//! The process watches only the labelled Nodes (a label selector), so a fleet without chaos
//! costs one idle watch.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use keelson_client::informer::{Change, Informer};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::watcher;
use parking_lot::Mutex;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::agent::Agent;
use crate::runtime::Runtime;

/// The label that fails a hollow node for the duration it gives (Go syntax: `600s`, `10m`).
pub const DOWN_FOR_LABEL: &str = "hollow.keelson.dev/down-for";

/// The pods bound to a node now, by node name (from the process's pod informers).
pub type PodsOf = Arc<dyn Fn(&str) -> Vec<Arc<Pod>> + Send + Sync>;

/// The process's nodes and their failures in progress.
struct Failures<R> {
    agents: Arc<HashMap<String, Arc<Agent<R>>>>,
    pods_of: PodsOf,
    client: kube::Client,
    /// Cancelled to bring a failed node back early (its label was removed).
    wakes: Mutex<HashMap<String, CancellationToken>>,
    /// Nodes back from a failure whose label this process is removing: updates that still
    /// carry it are that failure's, not a new one (until the label's removal is seen).
    back: Mutex<std::collections::HashSet<String>>,
    shutdown: CancellationToken,
}

/// The informer that fails and recovers the process's nodes as their label says.
pub fn informer<R: Runtime>(
    client: kube::Client,
    agents: Arc<HashMap<String, Arc<Agent<R>>>>,
    pods_of: PodsOf,
    shutdown: CancellationToken,
) -> Informer<Node> {
    let api: Api<Node> = Api::all(client.clone());
    let mut inf = Informer::new(api, watcher::Config::default().labels(DOWN_FOR_LABEL));
    let failures = Arc::new(Failures {
        agents,
        pods_of,
        client,
        wakes: Mutex::new(HashMap::new()),
        back: Mutex::new(std::collections::HashSet::new()),
        shutdown,
    });
    inf.on_change(move |c| failures.clone().changed(c));
    inf
}

impl<R: Runtime> Failures<R> {
    fn changed(self: Arc<Self>, c: Change<'_, Node>) {
        let node = c.object();
        let name = node.metadata.name.clone().unwrap_or_default();
        let Some(agent) = self.agents.get(&name).cloned() else {
            return;
        };
        let (Change::Added(node) | Change::Updated { new: node, .. }) = c else {
            // The label is gone (or the Node): back now.
            self.back.lock().remove(&name);
            if let Some(wake) = self.wakes.lock().get(&name) {
                wake.cancel();
            }
            return;
        };
        if self.back.lock().contains(&name) {
            return;
        }
        let value = node
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(DOWN_FOR_LABEL))
            .cloned()
            .unwrap_or_default();
        let down_for = match keelson_client::duration::parse_go_duration(&value) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(node = %name, label = DOWN_FOR_LABEL, value = %value, error = %e, "ignoring a malformed failure label");
                return;
            }
        };
        // Already down (this is the same failure seen again, e.g. after a relist), or stopping.
        if !agent.fail() {
            return;
        }
        let wake = CancellationToken::new();
        self.wakes.lock().insert(name.clone(), wake.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(down_for) => {}
                _ = wake.cancelled() => {}
                _ = self.shutdown.cancelled() => return,
            }
            self.wakes.lock().remove(&name);
            let unlabel = !wake.is_cancelled();
            if unlabel {
                self.back.lock().insert(name.clone());
            }
            agent.recover(|| (self.pods_of)(&name));
            if unlabel {
                self.unlabel(&name).await;
            }
        });
    }

    /// Removes the failure label of a node that is back, retried until it is gone (the
    /// apiserver may itself be restarting in a chaos run) or the process stops.
    async fn unlabel(&self, name: &str) {
        let api: Api<Node> = Api::all(self.client.clone());
        let patch = json!({"metadata": {"labels": {DOWN_FOR_LABEL: null}}});
        let mut wait = Duration::from_millis(500);
        loop {
            match api
                .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => return,
                Err(kube::Error::Api(s)) if s.code == 404 => return,
                Err(e) => {
                    tracing::warn!(node = %name, error = %e, "removing the failure label failed");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.shutdown.cancelled() => return,
            }
            wait = (wait * 2).min(Duration::from_secs(15));
        }
    }
}
