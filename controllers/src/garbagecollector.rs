//! The garbage collector, as upstream's `pkg/controller/garbagecollector`: a graph of every
//! object's owner references, built from a metadata-only watch of each deletable resource.
//!
//! - An object whose owners are all gone is deleted (background propagation, unless it carries
//!   the `orphan` or `foregroundDeletion` finalizer). Owners that are gone are confirmed with a
//!   live read (by UID) before anything is deleted; if some owners remain, only the references
//!   to the missing ones are removed.
//! - **Foreground**: an owner being deleted with the `foregroundDeletion` finalizer has its
//!   dependents deleted first (they are deleted in the foreground too when they have dependents
//!   of their own); once no dependent with `blockOwnerDeletion` remains, the finalizer is
//!   removed and the owner goes.
//! - **Orphan**: an owner being deleted with the `orphan` finalizer has its reference removed
//!   from each dependent, then the finalizer removed.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use keelson_client::queue::WorkQueue;
use kube::Client;
use kube::api::{
    Api, DeleteParams, DynamicObject, Patch, PatchParams, Preconditions, PropagationPolicy,
};
use kube::core::PartialObjectMeta;
use kube::discovery::{ApiResource, Scope};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event, watcher};
use parking_lot::Mutex;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::discovery::{GC_VERBS, Resources, ignored_by_gc};
use crate::util::{SyncResult, is_conflict, is_not_found, run_workers};

const FOREGROUND: &str = "foregroundDeletion";
const ORPHAN: &str = "orphan";

#[derive(Clone, Debug)]
struct Node {
    resource: usize,
    namespace: Option<String>,
    name: String,
    owners: Vec<OwnerReference>,
    deleting: bool,
    finalizers: Vec<String>,
}

impl Node {
    fn has(&self, finalizer: &str) -> bool {
        self.finalizers.iter().any(|f| f == finalizer)
    }
}

#[derive(Default)]
struct Graph {
    nodes: HashMap<String, Node>,
    /// owner UID -> dependent UIDs (owners may not be in `nodes`).
    dependents: HashMap<String, HashSet<String>>,
}

/// The garbage collector.
pub struct GarbageCollector {
    client: Client,
    resources: Arc<Resources>,
    watched: Vec<ApiResource>,
    graph: Mutex<Graph>,
    delete_queue: WorkQueue<String>,
    orphan_queue: WorkQueue<String>,
}

impl GarbageCollector {
    /// A collector over every resource discovery found that can be listed, watched, patched and
    /// deleted (events excepted).
    pub fn new(client: Client, resources: Arc<Resources>) -> Arc<Self> {
        let watched = resources
            .supporting(GC_VERBS, false)
            .filter(|(ar, _)| !ignored_by_gc(ar))
            .map(|(ar, _)| ar.clone())
            .collect();
        Arc::new(Self {
            client,
            resources,
            watched,
            graph: Mutex::new(Graph::default()),
            delete_queue: WorkQueue::new(),
            orphan_queue: WorkQueue::new(),
        })
    }

    /// Builds the graph, then runs `workers` workers per queue until `token` is cancelled.
    pub async fn run(self: Arc<Self>, workers: usize, token: CancellationToken) {
        let mut synced = Vec::new();
        for idx in 0..self.watched.len() {
            let (tx, rx) = tokio::sync::oneshot::channel();
            synced.push(rx);
            tokio::spawn(self.clone().watch(idx, tx, token.clone()));
        }
        for rx in synced {
            tokio::select! {
                _ = rx => {}
                _ = token.cancelled() => return,
            }
        }
        tracing::info!(
            resources = self.watched.len(),
            "garbage collector graph synced"
        );
        let me = self.clone();
        let deleter = run_workers(
            "garbagecollector",
            self.delete_queue.clone(),
            workers,
            token.clone(),
            move |uid| me.clone().attempt_to_delete(uid),
        );
        let me = self.clone();
        let orphaner = run_workers(
            "garbagecollector-orphan",
            self.orphan_queue.clone(),
            workers,
            token,
            move |uid| me.clone().attempt_to_orphan(uid),
        );
        futures::join!(deleter, orphaner);
    }

    async fn watch(
        self: Arc<Self>,
        idx: usize,
        synced: tokio::sync::oneshot::Sender<()>,
        token: CancellationToken,
    ) {
        let ar = self.watched[idx].clone();
        let api: Api<PartialObjectMeta<DynamicObject>> = Api::all_with(self.client.clone(), &ar);
        let stream = watcher(api, watcher::Config::default().page_size(500)).default_backoff();
        futures::pin_mut!(stream);
        let mut synced = Some(synced);
        let mut relisted: HashSet<String> = HashSet::new();
        loop {
            let ev = tokio::select! {
                ev = stream.next() => match ev {
                    Some(ev) => ev,
                    None => return,
                },
                _ = token.cancelled() => return,
            };
            match ev {
                Ok(Event::Apply(obj)) => self.upsert(idx, &obj),
                Ok(Event::Delete(obj)) => {
                    if let Some(uid) = &obj.metadata.uid {
                        self.remove(uid);
                    }
                }
                Ok(Event::Init) => relisted.clear(),
                Ok(Event::InitApply(obj)) => {
                    if let Some(uid) = &obj.metadata.uid {
                        relisted.insert(uid.clone());
                    }
                    self.upsert(idx, &obj);
                }
                Ok(Event::InitDone) => {
                    // Objects of this resource the relist no longer returned are gone.
                    let gone: Vec<String> = self
                        .graph
                        .lock()
                        .nodes
                        .iter()
                        .filter(|(uid, n)| n.resource == idx && !relisted.contains(*uid))
                        .map(|(uid, _)| uid.clone())
                        .collect();
                    for uid in gone {
                        self.remove(&uid);
                    }
                    if let Some(tx) = synced.take() {
                        let _ = tx.send(());
                    }
                }
                Err(e) => {
                    tracing::warn!(resource = %ar.plural, error = %e, "garbage collector watch failed; retrying")
                }
            }
        }
    }

    fn upsert(&self, idx: usize, obj: &PartialObjectMeta<DynamicObject>) {
        let m = &obj.metadata;
        let Some(uid) = m.uid.clone() else { return };
        let node = Node {
            resource: idx,
            namespace: m.namespace.clone().filter(|n| !n.is_empty()),
            name: m.name.clone().unwrap_or_default(),
            owners: m.owner_references.clone().unwrap_or_default(),
            deleting: m.deletion_timestamp.is_some(),
            finalizers: m.finalizers.clone().unwrap_or_default(),
        };
        let mut g = self.graph.lock();
        let old = g.nodes.insert(uid.clone(), node.clone());
        let old_owners: Vec<String> = old
            .as_ref()
            .map(|o| o.owners.iter().map(|r| r.uid.clone()).collect())
            .unwrap_or_default();
        let new_owners: HashSet<String> = node.owners.iter().map(|r| r.uid.clone()).collect();
        for o in &old_owners {
            if !new_owners.contains(o) {
                if let Some(set) = g.dependents.get_mut(o) {
                    set.remove(&uid);
                }
                // An owner waiting for its dependents may be able to finish now.
                if g.nodes
                    .get(o)
                    .is_some_and(|n| n.deleting && n.has(FOREGROUND))
                {
                    self.delete_queue.add(o.clone());
                }
            }
        }
        for o in &new_owners {
            g.dependents
                .entry(o.clone())
                .or_default()
                .insert(uid.clone());
        }
        // Owners the graph has not seen may be gone: check.
        if node.owners.iter().any(|r| !g.nodes.contains_key(&r.uid))
            || node.owners.iter().any(|r| {
                g.nodes
                    .get(&r.uid)
                    .is_some_and(|n| n.deleting && n.has(FOREGROUND))
            })
        {
            self.delete_queue.add(uid.clone());
        }
        if node.deleting {
            if node.has(ORPHAN) {
                self.orphan_queue.add(uid.clone());
            }
            if node.has(FOREGROUND) {
                self.delete_queue.add(uid.clone());
            }
        }
        // A new object that owners were waiting for (an owner whose UID this is).
        if old.is_none()
            && let Some(deps) = g.dependents.get(&uid)
        {
            for d in deps {
                self.delete_queue.add(d.clone());
            }
        }
    }

    fn remove(&self, uid: &str) {
        let mut g = self.graph.lock();
        let Some(node) = g.nodes.remove(uid) else {
            return;
        };
        for o in &node.owners {
            if let Some(set) = g.dependents.get_mut(&o.uid) {
                set.remove(uid);
                if set.is_empty() && !g.nodes.contains_key(&o.uid) {
                    g.dependents.remove(&o.uid);
                }
            }
            if g.nodes
                .get(&o.uid)
                .is_some_and(|n| n.deleting && n.has(FOREGROUND))
            {
                self.delete_queue.add(o.uid.clone());
            }
        }
        if let Some(deps) = g.dependents.get(uid) {
            for d in deps {
                self.delete_queue.add(d.clone());
            }
        }
    }

    fn api_for(&self, ar: &ApiResource, namespace: Option<&str>) -> Api<DynamicObject> {
        match namespace {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, ar),
            None => Api::all_with(self.client.clone(), ar),
        }
    }

    /// Where an owner stands: `None` when it is gone, else whether it waits for dependents.
    async fn owner_state(
        &self,
        owner: &OwnerReference,
        dependent_ns: Option<&str>,
    ) -> Result<Option<bool>, kube::Error> {
        if let Some(n) = self.graph.lock().nodes.get(&owner.uid) {
            return Ok(Some(n.deleting && n.has(FOREGROUND)));
        }
        let Some((ar, caps)) = self.resources.lookup(&owner.api_version, &owner.kind) else {
            // An unknown kind cannot be checked: keep the reference, as upstream does.
            return Ok(Some(false));
        };
        let ns = (caps.scope == Scope::Namespaced)
            .then_some(dependent_ns)
            .flatten();
        match self.api_for(ar, ns).get_metadata_opt(&owner.name).await? {
            Some(o) if o.metadata.uid.as_deref() == Some(owner.uid.as_str()) => {
                let waiting = o.metadata.deletion_timestamp.is_some()
                    && o.metadata
                        .finalizers
                        .unwrap_or_default()
                        .iter()
                        .any(|f| f == FOREGROUND);
                Ok(Some(waiting))
            }
            _ => Ok(None),
        }
    }

    async fn attempt_to_delete(self: Arc<Self>, uid: String) -> SyncResult {
        let Some(node) = self.graph.lock().nodes.get(&uid).cloned() else {
            return Ok(None);
        };
        let ar = self.watched[node.resource].clone();
        let api = self.api_for(&ar, node.namespace.as_deref());
        if node.deleting {
            if !node.has(FOREGROUND) {
                return Ok(None);
            }
            // Foreground: delete the dependents that block us; when none is left, finish.
            let blocking: Vec<String> = {
                let g = self.graph.lock();
                g.dependents
                    .get(&uid)
                    .into_iter()
                    .flatten()
                    .filter(|d| {
                        g.nodes.get(*d).is_some_and(|n| {
                            n.owners
                                .iter()
                                .any(|r| r.uid == uid && r.block_owner_deletion == Some(true))
                        })
                    })
                    .cloned()
                    .collect()
            };
            if blocking.is_empty() {
                return self.remove_finalizer(&api, &node, &uid, FOREGROUND).await;
            }
            for d in blocking {
                self.delete_queue.add(d);
            }
            return Ok(None);
        }
        let Some(live) = api.get_metadata_opt(&node.name).await? else {
            return Ok(None);
        };
        if live.metadata.uid.as_deref() != Some(uid.as_str())
            || live.metadata.deletion_timestamp.is_some()
        {
            return Ok(None);
        }
        let owners = live.metadata.owner_references.clone().unwrap_or_default();
        if owners.is_empty() {
            return Ok(None);
        }
        let (mut solid, mut dangling, mut waiting) = (Vec::new(), Vec::new(), Vec::new());
        for o in &owners {
            match self.owner_state(o, node.namespace.as_deref()).await? {
                None => dangling.push(o.uid.clone()),
                Some(true) => waiting.push(o.uid.clone()),
                Some(false) => solid.push(o.uid.clone()),
            }
        }
        if !solid.is_empty() {
            if dangling.is_empty() && waiting.is_empty() {
                return Ok(None);
            }
            let keep: Vec<&OwnerReference> =
                owners.iter().filter(|o| solid.contains(&o.uid)).collect();
            let patch = json!({"metadata": {
                "ownerReferences": keep,
                "resourceVersion": live.metadata.resource_version,
                "uid": uid,
            }});
            return match api
                .patch(&node.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => Ok(None),
                Err(e) if is_not_found(&e) => Ok(None),
                Err(e) => Err(e),
            };
        }
        let has_dependents = self
            .graph
            .lock()
            .dependents
            .get(&uid)
            .is_some_and(|d| !d.is_empty());
        let finalizers = live.metadata.finalizers.clone().unwrap_or_default();
        let policy = if !waiting.is_empty() && has_dependents {
            PropagationPolicy::Foreground
        } else if finalizers.iter().any(|f| f == ORPHAN) {
            PropagationPolicy::Orphan
        } else if finalizers.iter().any(|f| f == FOREGROUND) {
            PropagationPolicy::Foreground
        } else {
            PropagationPolicy::Background
        };
        tracing::info!(resource = %ar.plural, namespace = ?node.namespace, name = %node.name, ?policy, "deleting object whose owners are gone");
        let dp = DeleteParams {
            propagation_policy: Some(policy),
            preconditions: Some(Preconditions {
                uid: Some(uid.clone()),
                resource_version: None,
            }),
            ..Default::default()
        };
        match api.delete(&node.name, &dp).await {
            Ok(_) => Ok(None),
            Err(e) if is_not_found(&e) || is_conflict(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn attempt_to_orphan(self: Arc<Self>, uid: String) -> SyncResult {
        let Some(node) = self.graph.lock().nodes.get(&uid).cloned() else {
            return Ok(None);
        };
        if !node.deleting || !node.has(ORPHAN) {
            return Ok(None);
        }
        let dependents: Vec<Node> = {
            let g = self.graph.lock();
            g.dependents
                .get(&uid)
                .into_iter()
                .flatten()
                .filter_map(|d| g.nodes.get(d).cloned())
                .collect()
        };
        for dep in dependents {
            let api = self.api_for(&self.watched[dep.resource], dep.namespace.as_deref());
            let Some(live) = api.get_metadata_opt(&dep.name).await? else {
                continue;
            };
            let refs = live.metadata.owner_references.clone().unwrap_or_default();
            if !refs.iter().any(|r| r.uid == uid) {
                continue;
            }
            let keep: Vec<&OwnerReference> = refs.iter().filter(|r| r.uid != uid).collect();
            let keep = if keep.is_empty() {
                serde_json::Value::Null
            } else {
                json!(keep)
            };
            let patch = json!({"metadata": {
                "ownerReferences": keep,
                "resourceVersion": live.metadata.resource_version,
            }});
            match api
                .patch(&dep.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {}
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(e),
            }
        }
        let api = self.api_for(&self.watched[node.resource], node.namespace.as_deref());
        self.remove_finalizer(&api, &node, &uid, ORPHAN).await
    }

    async fn remove_finalizer(
        &self,
        api: &Api<DynamicObject>,
        node: &Node,
        uid: &str,
        finalizer: &str,
    ) -> SyncResult {
        let Some(live) = api.get_metadata_opt(&node.name).await? else {
            return Ok(None);
        };
        if live.metadata.uid.as_deref() != Some(uid) {
            return Ok(None);
        }
        let finalizers: Vec<String> = live
            .metadata
            .finalizers
            .clone()
            .unwrap_or_default()
            .into_iter()
            .filter(|f| f != finalizer)
            .collect();
        let patch = json!({"metadata": {
            "finalizers": if finalizers.is_empty() { serde_json::Value::Null } else { json!(finalizers) },
            "resourceVersion": live.metadata.resource_version,
        }});
        match api
            .patch(&node.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => Ok(None),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }
}
