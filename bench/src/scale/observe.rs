//! What a run observes while the workload runs: every pod's timeline by watch, the apiservers'
//! request latency histograms, watch event lag, and the CPU, memory and store size of the
//! components. Times are seconds since the run began.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use parking_lot::Mutex;
use serde::Serialize;

use super::histograms::{self, Family};
use super::slo::PodTimes;
use crate::procs::{cpu_seconds, rss_mib};

/// The label every pod of a run carries, with its group as value.
pub const GROUP_LABEL: &str = "bench.keelson.dev/group";

/// One pod seen by the run.
#[derive(Clone, Debug, Serialize)]
pub struct PodRecord {
    pub namespace: String,
    pub name: String,
    /// `saturation` or `latency` (density), `load`.
    pub group: String,
    pub node: Option<String>,
    #[serde(flatten)]
    pub times: PodTimes,
}

/// Pod timelines, filled by [`watch_pods`] and by the creators of latency pods.
pub struct Timelines {
    t0: Instant,
    pods: Mutex<HashMap<(String, String), PodRecord>>,
}

impl Timelines {
    pub fn new(t0: Instant) -> Self {
        Timelines {
            t0,
            pods: Mutex::default(),
        }
    }

    pub fn now(&self) -> f64 {
        self.t0.elapsed().as_secs_f64()
    }

    /// A create request for `namespace/name` was sent at `at`: its creation time, which the
    /// watch can only see later.
    pub fn created(&self, namespace: &str, name: &str, group: &str, at: f64) {
        let mut pods = self.pods.lock();
        let r = pods
            .entry((namespace.to_string(), name.to_string()))
            .or_insert_with(|| PodRecord {
                namespace: namespace.into(),
                name: name.into(),
                group: group.into(),
                node: None,
                times: PodTimes::default(),
            });
        r.times.created = Some(r.times.created.map_or(at, |c| c.min(at)));
    }

    /// A version of a pod arrived by watch: the first arrival is its creation (for pods the run
    /// did not create itself), the first with a node its binding, the first with every
    /// container running its start.
    pub fn observe(&self, pod: &Pod) {
        let now = self.now();
        let group = pod.labels().get(GROUP_LABEL).cloned().unwrap_or_default();
        let mut pods = self.pods.lock();
        let r = pods
            .entry((pod.namespace().unwrap_or_default(), pod.name_any()))
            .or_insert_with(|| PodRecord {
                namespace: pod.namespace().unwrap_or_default(),
                name: pod.name_any(),
                group,
                node: None,
                times: PodTimes::default(),
            });
        r.times.created.get_or_insert(now);
        if let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) {
            r.times.bound.get_or_insert(now);
            r.node.get_or_insert(node);
        }
        if running(pod) {
            r.times.running.get_or_insert(now);
        }
    }

    /// (created, bound, running) pods of `group`.
    pub fn counts(&self, group: &str) -> (usize, usize, usize) {
        let pods = self.pods.lock();
        let of = pods.values().filter(|p| p.group == group);
        let (mut c, mut b, mut r) = (0, 0, 0);
        for p in of {
            c += p.times.created.is_some() as usize;
            b += p.times.bound.is_some() as usize;
            r += p.times.running.is_some() as usize;
        }
        (c, b, r)
    }

    /// Every record, sorted by namespace and name.
    pub fn records(&self) -> Vec<PodRecord> {
        let mut v: Vec<PodRecord> = self.pods.lock().values().cloned().collect();
        v.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        v
    }
}

/// Running with every container started, as the pod startup SLI counts it.
fn running(pod: &Pod) -> bool {
    let Some(status) = &pod.status else {
        return false;
    };
    status.phase.as_deref() == Some("Running")
        && status.container_statuses.as_ref().is_some_and(|cs| {
            !cs.is_empty()
                && cs
                    .iter()
                    .all(|c| c.state.as_ref().is_some_and(|s| s.running.is_some()))
        })
}

/// Watches the run's pods in every namespace into `timelines`; `listed` is told once the
/// watch is open (its initial list done).
pub async fn watch_pods(
    client: Client,
    timelines: Arc<Timelines>,
    listed: tokio::sync::oneshot::Sender<()>,
) {
    let api: Api<Pod> = Api::all(client);
    let config = watcher::Config::default().labels(GROUP_LABEL);
    let mut events = watcher(api, config).default_backoff().boxed();
    let mut listed = Some(listed);
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => timelines.observe(&p),
            Ok(watcher::Event::InitDone) => {
                if let Some(tx) = listed.take() {
                    let _ = tx.send(());
                }
            }
            Ok(watcher::Event::Delete(_) | watcher::Event::Init) => {}
            Err(e) => tracing::debug!(error = %e, "pod watch failed; retrying"),
        }
    }
}

/// One scrape of every apiserver's request latencies.
#[derive(Clone)]
pub struct Scrape {
    pub at: f64,
    /// `apiserver_request_sli_duration_seconds`, per server: the latency the SLO judges, which
    /// leaves out time queued by API Priority and Fairness and spent in admission webhooks
    /// (kube-apiserver 1.27+). From a server without it, the whole latency.
    pub servers: Vec<Family>,
    /// `apiserver_request_duration_seconds`, per server: the whole latency.
    pub whole: Vec<Family>,
}

/// GETs `/metrics` of every apiserver (one client each) and parses the request latencies.
pub async fn scrape(apiservers: &[Client], at: f64) -> anyhow::Result<Scrape> {
    let (mut servers, mut whole) = (Vec::new(), Vec::new());
    for c in apiservers {
        let req = http::Request::get("/metrics").body(Vec::new())?;
        let text = c.request_text(req).await?;
        let all = histograms::parse(&text, "apiserver_request_duration_seconds")?;
        let sli = histograms::parse(&text, "apiserver_request_sli_duration_seconds")?;
        servers.push(if sli.is_empty() { all.clone() } else { sli });
        whole.push(all);
    }
    Ok(Scrape { at, servers, whole })
}

/// Writes a probe ConfigMap's `sent` field every 500 ms and watches it from another
/// connection: each event's lag is its arrival minus the start of the write that caused it.
/// Writing and watching run side by side, so a slow write delays no event.
pub async fn watch_lag(
    writer: Client,
    watcher_client: Client,
    namespace: String,
    samples: Arc<Mutex<Vec<(f64, f64)>>>,
    t0: Instant,
) {
    const NAME: &str = "watch-lag-probe";
    let write: Api<ConfigMap> = Api::namespaced(writer, &namespace);
    let watch: Api<ConfigMap> = Api::namespaced(watcher_client, &namespace);
    let writes = async {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        let params = PatchParams::apply("keelson-bench").force();
        loop {
            tick.tick().await;
            let sent = format!("{:.6}", t0.elapsed().as_secs_f64());
            let cm = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": NAME}, "data": {"sent": sent}});
            if let Err(e) = write.patch(NAME, &params, &Patch::Apply(cm)).await {
                tracing::debug!(error = %e, "watch lag probe write failed");
            }
        }
    };
    let reads = async {
        let config = watcher::Config::default().fields(&format!("metadata.name={NAME}"));
        let mut events = watcher(watch, config).default_backoff().boxed();
        let mut seen: std::collections::HashSet<String> = Default::default();
        while let Some(e) = events.next().await {
            let now = t0.elapsed().as_secs_f64();
            if let Ok(watcher::Event::Apply(cm)) = e
                && let Some(sent) = cm.data.as_ref().and_then(|d| d.get("sent"))
                && seen.insert(sent.clone())
                && let Ok(at) = sent.parse::<f64>()
            {
                samples.lock().push((at, now - at));
            }
        }
    };
    tokio::join!(writes, reads);
}

/// LISTs pods in `namespace` and, page by page as informers do, across the cluster, so both
/// LIST scopes are measured under the load.
pub async fn list_probe(client: Client, namespace: String, every: Duration) {
    let ns_pods = format!("/api/v1/namespaces/{namespace}/pods");
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let _ = list_raw(&client, &ns_pods, &ListParams::default()).await;
        let mut params = ListParams::default().limit(500);
        while let Ok(Some(c)) = list_raw(&client, "/api/v1/pods", &params).await {
            params = params.continue_token(&c);
        }
    }
}

/// LISTs the collection at `path` without decoding its items (the SLI is the server's latency,
/// and 30,000 decoded pods take half a gigabyte of this process at each round); the page's
/// continue token, if there is more.
async fn list_raw(
    client: &Client,
    path: &str,
    params: &ListParams,
) -> anyhow::Result<Option<String>> {
    #[derive(serde::Deserialize)]
    struct Meta {
        #[serde(rename = "continue", default)]
        continue_: Option<String>,
    }
    #[derive(serde::Deserialize)]
    struct List {
        metadata: Meta,
    }
    let req = kube::core::Request::new(path).list(params)?;
    let text = client.request_text(req).await?;
    let list: List = serde_json::from_str(&text)?;
    Ok(list.metadata.continue_.filter(|c| !c.is_empty()))
}

/// One component's use over a sampling interval.
#[derive(Clone, Debug, Serialize)]
pub struct ComponentSample {
    pub at: f64,
    pub component: String,
    pub pid: u32,
    /// Cores used over the interval before `at`.
    pub cpu_cores: f64,
    pub rss_mib: f64,
}

/// Samples the processes of a `keelson up` (from `<data>/status.json`) and the size of its
/// store members' data directories.
pub struct ComponentSampler {
    data_dir: PathBuf,
    last: HashMap<u32, (f64, f64)>,
}

impl ComponentSampler {
    pub fn new(data_dir: &Path) -> Self {
        ComponentSampler {
            data_dir: data_dir.to_path_buf(),
            last: HashMap::new(),
        }
    }

    /// The components' use since the previous call (the first call only sets the baseline and
    /// returns RSS with CPU 0), and the largest store member's data directory in bytes.
    pub fn sample(&mut self, at: f64) -> (Vec<ComponentSample>, u64) {
        let mut out = Vec::new();
        let rows: Vec<serde_json::Value> = std::fs::read(self.data_dir.join("status.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let mut last = HashMap::new();
        for row in rows {
            let (Some(component), Some(pid)) = (row["component"].as_str(), row["pid"].as_u64())
            else {
                continue;
            };
            let pid = pid as u32;
            let (Some(cpu), Some(rss)) = (cpu_seconds(pid), rss_mib(pid)) else {
                continue;
            };
            let cores = match self.last.get(&pid) {
                Some((then, cpu0)) if at > *then => (cpu - cpu0) / (at - then),
                _ => 0.0,
            };
            last.insert(pid, (at, cpu));
            out.push(ComponentSample {
                at,
                component: component.to_string(),
                pid,
                cpu_cores: cores,
                rss_mib: rss,
            });
        }
        self.last = last;
        let store = std::fs::read_dir(&self.data_dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("store-"))
            .map(|e| dir_bytes(&e.path()))
            .max()
            .unwrap_or(0);
        (out, store)
    }
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}
