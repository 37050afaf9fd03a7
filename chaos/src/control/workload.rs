//! The control plane's workload and its recorders: Deployments scaled and rolled out, ConfigMaps
//! created, patched and deleted (every write recorded with its outcome), a watch on the pods,
//! and the reads that judge convergence and what every object ended as.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{ConfigMap, Event, Namespace, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt as _, watcher};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::cluster::UpCluster;
use super::faults::leads;
use super::history::{Convergence, Outcome, PodSeen, Scheduled, Write};
use crate::traffic::{Clock, Rng};

/// The namespace everything of the workload lives in.
pub const NAMESPACE: &str = "chaos";
/// The pod template annotation a rollout changes.
const REVISION: &str = "chaos.keelson.dev/rollout";
/// The Deployment annotation a scale sets with the replicas, unique to the scale (replicas
/// alone take few values: a lost scale could end at a value another write set).
const SCALE: &str = "chaos.keelson.dev/scale";

/// What the workload does.
#[derive(Clone, Debug)]
pub struct Workload {
    /// Deployments, `web-<i>`.
    pub deployments: usize,
    /// Replicas a scale picks from (0 to this).
    pub max_replicas: u32,
    /// A Deployment is scaled or rolled out this often (one after another).
    pub scale_every: Duration,
    /// ConfigMap writers (each with objects of its own).
    pub writers: usize,
    /// ConfigMaps per writer.
    pub configmaps: usize,
    /// ConfigMap writes per second over all writers.
    pub qps: f64,
    /// A write without an answer within this has an unknown outcome.
    pub timeout: Duration,
}

/// Writes so far, answered and not, for the progress lines.
#[derive(Default)]
pub struct Counts {
    /// Writes made.
    pub writes: AtomicUsize,
    /// Of which had an unknown outcome.
    pub unknown: AtomicUsize,
}

/// Runs `call` as a write of `object` and records it.
#[allow(clippy::too_many_arguments)]
async fn write<T, F>(
    writer: usize,
    object: String,
    verb: &str,
    sets: Option<String>,
    timeout: Duration,
    clock: Clock,
    counts: &Counts,
    call: F,
) -> Write
where
    F: std::future::Future<Output = Result<T, kube::Error>>,
{
    let invoke = clock.now();
    let outcome = match tokio::time::timeout(timeout, call).await {
        Err(_) => Outcome::Unknown {
            error: format!("no answer within {timeout:?}"),
        },
        Ok(Ok(_)) => Outcome::Ok,
        // A 4xx (but a request timeout) is a refusal: nothing was written.
        Ok(Err(kube::Error::Api(s))) if (400..500).contains(&s.code) && s.code != 408 => {
            Outcome::Refused {
                code: s.code,
                reason: s.reason.clone(),
            }
        }
        Ok(Err(e)) if keelson_client::connect::not_sent(&e) => Outcome::NotSent {
            error: e.to_string(),
        },
        Ok(Err(e)) => Outcome::Unknown {
            error: e.to_string(),
        },
    };
    counts.writes.fetch_add(1, Relaxed);
    if matches!(outcome, Outcome::Unknown { .. }) {
        counts.unknown.fetch_add(1, Relaxed);
    }
    Write {
        writer,
        object,
        verb: verb.into(),
        sets,
        invoke,
        complete: clock.now(),
        outcome,
    }
}

fn deployment(
    name: &str,
    replicas: u32,
    scale: &str,
    revision: &str,
) -> anyhow::Result<Deployment> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": NAMESPACE, "annotations": {SCALE: scale}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}, "annotations": {REVISION: revision}},
                "spec": {
                    "terminationGracePeriodSeconds": 1,
                    "containers": [{
                        "name": "app",
                        "image": "registry.k8s.io/pause:3.10",
                        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}},
                    }],
                },
            },
        },
    }))?)
}

/// Creates the namespace and the Deployments (`replicas` each), before any fault: returns the
/// Deployments' creations as writes.
pub async fn setup(
    client: &kube::Client,
    w: &Workload,
    replicas: u32,
    clock: Clock,
    counts: &Counts,
) -> anyhow::Result<Vec<Write>> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": NAMESPACE}}))?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        match namespaces.create(&PostParams::default(), &ns).await {
            Ok(_) => break,
            Err(kube::Error::Api(s)) if s.code == 409 => break,
            Err(e) if tokio::time::Instant::now() > deadline => {
                anyhow::bail!("creating namespace {NAMESPACE}: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
    let api: Api<Deployment> = Api::namespaced(client.clone(), NAMESPACE);
    let mut writes = Vec::new();
    for i in 0..w.deployments {
        let name = format!("web-{i}");
        let revision = format!("r0-{i}");
        let scale = format!("s0-{i}");
        let d = deployment(&name, replicas, &scale, &revision)?;
        let created = write(
            0,
            format!("deployment/{name}/replicas"),
            "create",
            Some(format!("{replicas} {scale}")),
            w.timeout,
            clock,
            counts,
            api.create(&PostParams::default(), &d),
        )
        .await;
        if created.outcome != Outcome::Ok {
            anyhow::bail!("creating deployment {name}: {:?}", created.outcome);
        }
        writes.push(Write {
            object: format!("deployment/{name}/template"),
            sets: Some(revision),
            ..created.clone()
        });
        writes.push(created);
    }
    Ok(writes)
}

/// Writer 0: every `scale_every` one Deployment in turn is scaled (to 0..=max_replicas) or,
/// one time in four, rolled out (a new pod template annotation), until `stop`.
pub async fn scaler(
    client: kube::Client,
    w: Workload,
    clock: Clock,
    counts: Arc<Counts>,
    stop: CancellationToken,
) -> Vec<Write> {
    let api: Api<Deployment> = Api::namespaced(client, NAMESPACE);
    let mut rng = Rng::new(0xC0FFEE);
    let mut writes = Vec::new();
    let mut tick = tokio::time::interval(w.scale_every);
    for round in 0usize.. {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let name = format!("web-{}", round % w.deployments.max(1));
        let pp = PatchParams::default();
        let done = if rng.below(4) == 0 {
            let value = format!("r{}", round + 1);
            let patch =
                json!({"spec": {"template": {"metadata": {"annotations": {REVISION: value}}}}});
            write(
                0,
                format!("deployment/{name}/template"),
                "patch",
                Some(value),
                w.timeout,
                clock,
                &counts,
                api.patch(&name, &pp, &Patch::Merge(&patch)),
            )
            .await
        } else {
            let n = rng.below(w.max_replicas as usize + 1);
            let tag = format!("s{}", round + 1);
            let patch = json!({"metadata": {"annotations": {SCALE: tag}}, "spec": {"replicas": n}});
            write(
                0,
                format!("deployment/{name}/replicas"),
                "patch",
                Some(format!("{n} {tag}")),
                w.timeout,
                clock,
                &counts,
                api.patch(&name, &pp, &Patch::Merge(&patch)),
            )
            .await
        };
        writes.push(done);
    }
    writes
}

/// ConfigMap writer `writer` (1..): creates, patches and deletes its own ConfigMaps
/// (`cm-<writer>-<k>`, the value in `data.v`) at its share of the rate, until `stop`.
pub async fn configmaps(
    client: kube::Client,
    writer: usize,
    w: Workload,
    clock: Clock,
    counts: Arc<Counts>,
    stop: CancellationToken,
) -> Vec<Write> {
    let api: Api<ConfigMap> = Api::namespaced(client, NAMESPACE);
    let mut rng = Rng::new(writer as u64 + 1);
    // Whether each object exists, as far as this writer knows.
    let mut exists: Vec<Option<bool>> = vec![Some(false); w.configmaps.max(1)];
    let mut writes = Vec::new();
    let period = Duration::from_secs_f64(w.writers.max(1) as f64 / w.qps.max(0.01));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for seq in 0usize.. {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let k = rng.below(exists.len());
        let name = format!("cm-{writer}-{k}");
        let object = format!("configmap/{name}");
        let value = format!("{writer}-{seq}");
        let verb = match exists[k] {
            Some(false) => "create",
            Some(true) if rng.below(3) == 0 => "delete",
            Some(true) => "patch",
            None => ["create", "patch", "delete"][rng.below(3)],
        };
        let done = match verb {
            "create" => {
                let cm: ConfigMap = match serde_json::from_value(json!({
                    "metadata": {"name": name},
                    "data": {"v": value},
                })) {
                    Ok(cm) => cm,
                    Err(_) => continue,
                };
                write(
                    writer,
                    object,
                    verb,
                    Some(value),
                    w.timeout,
                    clock,
                    &counts,
                    api.create(&PostParams::default(), &cm),
                )
                .await
            }
            "patch" => {
                let patch = json!({"data": {"v": value}});
                write(
                    writer,
                    object,
                    verb,
                    Some(value),
                    w.timeout,
                    clock,
                    &counts,
                    api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)),
                )
                .await
            }
            _ => {
                write(
                    writer,
                    object,
                    verb,
                    None,
                    w.timeout,
                    clock,
                    &counts,
                    api.delete(&name, &DeleteParams::default()),
                )
                .await
            }
        };
        exists[k] = match (&done.outcome, verb) {
            (Outcome::Ok, "delete") => Some(false),
            (Outcome::Ok, _) => Some(true),
            (Outcome::Refused { code: 409, .. }, "create") => Some(true),
            (Outcome::Refused { code: 404, .. }, _) => Some(false),
            (Outcome::Refused { .. } | Outcome::NotSent { .. }, _) => exists[k],
            (Outcome::Unknown { .. }, _) => None,
        };
        writes.push(done);
    }
    writes
}

fn pod_state(p: &Pod) -> (Option<String>, String, bool, bool) {
    let spec = p.spec.as_ref();
    let status = p.status.as_ref();
    (
        spec.and_then(|s| s.node_name.clone()),
        status.and_then(|s| s.phase.clone()).unwrap_or_default(),
        pod_ready(p),
        p.metadata.deletion_timestamp.is_some(),
    )
}

fn pod_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Watches the workload's pods (relisting when the watch must) until `stop`, recording every
/// change of node, phase, readiness or deletion.
pub async fn pod_watch(
    client: kube::Client,
    clock: Clock,
    stop: CancellationToken,
) -> Vec<PodSeen> {
    let api: Api<Pod> = Api::namespaced(client, NAMESPACE);
    let mut stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut last: HashMap<String, (Option<String>, String, bool, bool)> = HashMap::new();
    let mut seen = Vec::new();
    loop {
        let event = tokio::select! {
            _ = stop.cancelled() => break,
            e = stream.next() => match e {
                Some(Ok(e)) => e,
                Some(Err(_)) => continue,
                None => break,
            },
        };
        let (pod, gone) = match event {
            watcher::Event::Apply(p) | watcher::Event::InitApply(p) => (p, false),
            watcher::Event::Delete(p) => (p, true),
            watcher::Event::Init | watcher::Event::InitDone => continue,
        };
        let Some(uid) = pod.metadata.uid.clone() else {
            continue;
        };
        let state = pod_state(&pod);
        if !gone && last.get(&uid) == Some(&state) {
            continue;
        }
        let (node, phase, ready, deleting) = state.clone();
        seen.push(PodSeen {
            at: clock.now(),
            uid: uid.clone(),
            name: pod.metadata.name.clone().unwrap_or_default(),
            node,
            phase,
            ready,
            deleting,
            gone,
        });
        if gone {
            last.remove(&uid);
        } else {
            last.insert(uid, state);
        }
    }
    seen
}

/// The `Scheduled` events of the workload's pods.
pub async fn scheduled(client: &kube::Client) -> anyhow::Result<Vec<Scheduled>> {
    let api: Api<Event> = Api::namespaced(client.clone(), NAMESPACE);
    let events = api.list(&ListParams::default()).await?;
    Ok(events
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("Scheduled"))
        .filter_map(|e| {
            let message = e.message.unwrap_or_default();
            let node = message.rsplit_once(" to ")?.1.to_string();
            Some(Scheduled {
                uid: e.involved_object.uid.unwrap_or_default(),
                pod: e.involved_object.name.unwrap_or_default(),
                node,
                count: e.count.unwrap_or(1),
            })
        })
        .collect())
}

/// What every written object holds now (a quorum read), with `written` (every object the run
/// wrote) absent unless found.
pub async fn finals(
    client: &kube::Client,
    written: impl Iterator<Item = String>,
) -> anyhow::Result<BTreeMap<String, Option<String>>> {
    let mut out: BTreeMap<String, Option<String>> = written.map(|o| (o, None)).collect();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), NAMESPACE);
    for cm in cms.list(&ListParams::default()).await? {
        let name = cm.metadata.name.clone().unwrap_or_default();
        if name.starts_with("cm-") {
            let v = cm.data.as_ref().and_then(|d| d.get("v")).cloned();
            out.insert(format!("configmap/{name}"), Some(v.unwrap_or_default()));
        }
    }
    let ds: Api<Deployment> = Api::namespaced(client.clone(), NAMESPACE);
    for d in ds.list(&ListParams::default()).await? {
        let name = d.metadata.name.clone().unwrap_or_default();
        let spec = d.spec.as_ref();
        let scale = d
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(SCALE))
            .cloned()
            .unwrap_or_default();
        out.insert(
            format!("deployment/{name}/replicas"),
            Some(format!(
                "{} {scale}",
                spec.and_then(|s| s.replicas).unwrap_or(1)
            )),
        );
        let revision = spec
            .and_then(|s| s.template.metadata.as_ref())
            .and_then(|m| m.annotations.as_ref())
            .and_then(|a| a.get(REVISION))
            .cloned();
        out.insert(format!("deployment/{name}/template"), revision);
    }
    Ok(out)
}

/// What keeps the cluster from having converged now (empty once it has): a component down or
/// not serving, an HA pair without exactly one leader, a Deployment whose status or pods do not
/// match its spec.
pub async fn pending(cluster: &UpCluster, client: &kube::Client) -> Vec<String> {
    let mut out = Vec::new();
    let components = match cluster.components() {
        Ok(c) => c,
        Err(e) => return vec![format!("{e:#}")],
    };
    for c in &components {
        if c.pid.is_none() || c.health != "ok" {
            out.push(format!("{}: {}", c.component, c.health));
        }
    }
    for kind in ["controller-manager", "scheduler"] {
        let mut leaders = 0;
        for c in components.iter().filter(|c| c.kind() == kind) {
            if leads(cluster, c).await == Some(true) {
                leaders += 1;
            }
        }
        if leaders != 1 {
            out.push(format!("{leaders} {kind}s lead"));
        }
    }
    let lp = ListParams::default();
    let (ds, rss, pods) = (
        Api::<Deployment>::namespaced(client.clone(), NAMESPACE),
        Api::<ReplicaSet>::namespaced(client.clone(), NAMESPACE),
        Api::<Pod>::namespaced(client.clone(), NAMESPACE),
    );
    let lists = tokio::try_join!(ds.list(&lp), rss.list(&lp), pods.list(&lp));
    let (ds, rss, pods) = match lists {
        Ok(l) => l,
        Err(e) => {
            out.push(format!("listing the workload: {e}"));
            return out;
        }
    };
    for d in &ds {
        out.extend(deployment_pending(d, &rss.items, &pods.items));
    }
    out
}

fn owned_by(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta, uid: &str) -> bool {
    meta.owner_references
        .iter()
        .flatten()
        .any(|o| o.uid == uid && o.controller == Some(true))
}

/// Why `d` has not converged: its status behind its spec, pods of an old ReplicaSet, too few or
/// too many pods, pods not bound, running and ready.
pub fn deployment_pending(d: &Deployment, rss: &[ReplicaSet], pods: &[Pod]) -> Vec<String> {
    let name = d.metadata.name.as_deref().unwrap_or_default();
    let uid = d.metadata.uid.as_deref().unwrap_or_default();
    let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let mut out = Vec::new();
    let status = d.status.clone().unwrap_or_default();
    let generation = d.metadata.generation.unwrap_or(0);
    if status.observed_generation.unwrap_or(0) < generation {
        out.push(format!(
            "deployment {name}: generation {generation} observed {}",
            status.observed_generation.unwrap_or(0)
        ));
    }
    let counts = [
        status.replicas.unwrap_or(0),
        status.updated_replicas.unwrap_or(0),
        status.ready_replicas.unwrap_or(0),
        status.available_replicas.unwrap_or(0),
    ];
    if counts.iter().any(|c| *c != want) {
        out.push(format!(
            "deployment {name}: status replicas/updated/ready/available {}/{}/{}/{} for {want}",
            counts[0], counts[1], counts[2], counts[3]
        ));
    }
    let mine: Vec<&ReplicaSet> = rss.iter().filter(|r| owned_by(&r.metadata, uid)).collect();
    let revision = |r: &ReplicaSet| -> i64 {
        r.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("deployment.kubernetes.io/revision"))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let Some(newest) = mine.iter().max_by_key(|r| revision(r)) else {
        out.push(format!("deployment {name}: no ReplicaSet"));
        return out;
    };
    let newest_uid = newest.metadata.uid.as_deref().unwrap_or_default();
    let mut current = 0;
    for p in pods {
        let Some(rs) = mine
            .iter()
            .find(|r| owned_by(&p.metadata, r.metadata.uid.as_deref().unwrap_or_default()))
        else {
            continue;
        };
        let pod = p.metadata.name.as_deref().unwrap_or_default();
        let (_, phase, _, _) = pod_state(p);
        // Finished pods are not the ReplicaSet's any more (upstream's controllers leave them to
        // the pod garbage collector).
        if phase == "Succeeded" || phase == "Failed" {
            continue;
        }
        if p.metadata.deletion_timestamp.is_some() {
            out.push(format!("deployment {name}: pod {pod} still terminating"));
            continue;
        }
        if rs.metadata.uid.as_deref() != Some(newest_uid) {
            out.push(format!("deployment {name}: pod {pod} of an old ReplicaSet"));
            continue;
        }
        current += 1;
        let (node, phase, ready, _) = pod_state(p);
        if node.is_none() || phase != "Running" || !ready {
            out.push(format!(
                "deployment {name}: pod {pod} {phase} on {}, ready {ready}",
                node.as_deref().unwrap_or("no node")
            ));
        }
    }
    if current != want {
        out.push(format!(
            "deployment {name}: {current} pods for {want} replicas"
        ));
    }
    out
}

/// Waits (up to `limit`) until nothing is pending; what was pending at the last look otherwise.
pub async fn converge(cluster: &UpCluster, client: &kube::Client, limit: Duration) -> Convergence {
    let start = tokio::time::Instant::now();
    loop {
        let pending = pending(cluster, client).await;
        if pending.is_empty() {
            return Convergence {
                after: Some(start.elapsed().as_secs_f64()),
                allowed: limit.as_secs_f64(),
                pending,
            };
        }
        if start.elapsed() >= limit {
            return Convergence {
                after: None,
                allowed: limit.as_secs_f64(),
                pending,
            };
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(replicas: i32, generation: i64, observed: i64, ready: i32) -> Deployment {
        serde_json::from_value(json!({
            "metadata": {"name": "web-0", "uid": "d1", "generation": generation},
            "spec": {"replicas": replicas, "selector": {}, "template": {}},
            "status": {
                "observedGeneration": observed,
                "replicas": replicas,
                "updatedReplicas": replicas,
                "readyReplicas": ready,
                "availableReplicas": ready,
            },
        }))
        .unwrap()
    }

    fn rs(uid: &str, revision: &str) -> ReplicaSet {
        serde_json::from_value(json!({
            "metadata": {
                "name": format!("web-0-{uid}"), "uid": uid,
                "annotations": {"deployment.kubernetes.io/revision": revision},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web-0", "uid": "d1", "controller": true}],
            },
            "spec": {"selector": {}},
        }))
        .unwrap()
    }

    fn pod(name: &str, rs: &str, node: Option<&str>, ready: bool) -> Pod {
        serde_json::from_value(json!({
            "metadata": {
                "name": name, "uid": name,
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": rs, "uid": rs, "controller": true}],
            },
            "spec": {"nodeName": node, "containers": []},
            "status": {
                "phase": "Running",
                "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}],
            },
        }))
        .unwrap()
    }

    #[test]
    fn a_deployment_converges_with_its_replicas_up_to_date_running_and_ready() {
        let rss = [rs("old", "1"), rs("new", "2")];
        let pods = [
            pod("a", "new", Some("n1"), true),
            pod("b", "new", Some("n2"), true),
        ];
        assert!(deployment_pending(&d(2, 3, 3, 2), &rss, &pods).is_empty());
        // Its status behind.
        let p = deployment_pending(&d(2, 4, 3, 2), &rss, &pods);
        assert!(p[0].contains("generation 4 observed 3"), "{p:?}");
        // A pod of the old ReplicaSet left.
        let mut more = pods.to_vec();
        more.push(pod("c", "old", Some("n1"), true));
        let p = deployment_pending(&d(2, 3, 3, 2), &rss, &more);
        assert!(
            p.iter().any(|l| l.contains("pod c of an old ReplicaSet")),
            "{p:?}"
        );
        // One pod too many, one not ready, one unbound.
        let mut more = pods.to_vec();
        more.push(pod("c", "new", Some("n1"), false));
        let p = deployment_pending(&d(2, 3, 3, 2), &rss, &more);
        assert!(
            p.iter().any(|l| l.contains("3 pods for 2 replicas")),
            "{p:?}"
        );
        assert!(
            p.iter()
                .any(|l| l.contains("pod c Running on n1, ready false")),
            "{p:?}"
        );
        let unbound = [pod("a", "new", None, false), pods[1].clone()];
        let p = deployment_pending(&d(2, 3, 3, 1), &rss, &unbound);
        assert!(p.iter().any(|l| l.contains("on no node")), "{p:?}");
        assert!(
            p.iter().any(|l| l.contains("ready/available 2/2/1/1")),
            "{p:?}"
        );
        // Pods of another Deployment are not counted.
        let p = deployment_pending(&d(2, 3, 3, 2), &[rs("new", "1")], &[]);
        assert!(
            p.iter().any(|l| l.contains("0 pods for 2 replicas")),
            "{p:?}"
        );
    }
}
