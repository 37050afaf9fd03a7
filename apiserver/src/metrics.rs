//! Prometheus metrics under kube-apiserver's names, served at `/metrics`.

use std::cell::Cell;
use std::sync::Arc;
use std::time::Duration;

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, header};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::resources::Resource;

/// Labels of request metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Kubernetes verb (upper-case for non-resource requests, as upstream).
    pub verb: String,
    /// API group.
    pub group: String,
    /// API version.
    pub version: String,
    /// Resource.
    pub resource: String,
    /// Subresource.
    pub subresource: String,
    /// `resource`, `namespace`, `cluster` or empty.
    pub scope: String,
    /// Always `apiserver`.
    pub component: String,
    /// HTTP code (only on the counter).
    pub code: String,
}

/// Labels of the request latency histogram (the request labels without the code).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DurationLabels {
    /// Kubernetes verb.
    pub verb: String,
    /// API group.
    pub group: String,
    /// API version.
    pub version: String,
    /// Resource.
    pub resource: String,
    /// Subresource.
    pub subresource: String,
    /// Scope.
    pub scope: String,
    /// Always `apiserver`.
    pub component: String,
}

impl From<&RequestLabels> for DurationLabels {
    fn from(l: &RequestLabels) -> Self {
        DurationLabels {
            verb: l.verb.clone(),
            group: l.group.clone(),
            version: l.version.clone(),
            resource: l.resource.clone(),
            subresource: l.subresource.clone(),
            scope: l.scope.clone(),
            component: l.component.clone(),
        }
    }
}

/// Labels of per-kind watch metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// API group.
    pub group: String,
    /// Version.
    pub version: String,
    /// Kind.
    pub kind: String,
}

/// Labels of in-flight gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindOfRequest {
    /// `readOnly` or `mutating`.
    pub request_kind: String,
}

/// What a request's latency metrics need to know from the layers inside.
#[derive(Default)]
struct Tracked {
    excluded: Cell<Duration>,
    dropped: Cell<bool>,
}

tokio::task_local! {
    /// The current request's [`Tracked`].
    static TRACKED: Tracked;
}

/// What [`tracking`] learnt of a request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tracking {
    /// Time spent where the latency SLI does not count it: waiting in an API Priority and
    /// Fairness queue, calling admission webhooks.
    pub excluded: Duration,
    /// Refused by flow control (429): upstream counts such requests, it does not time them.
    pub dropped: bool,
}

/// Runs a request, returning with its outcome what [`exclude_from_sli`] and [`mark_dropped`]
/// recorded while it ran.
pub async fn tracking<F: std::future::Future>(request: F) -> (F::Output, Tracking) {
    TRACKED
        .scope(Tracked::default(), async move {
            let out = request.await;
            let t = TRACKED.with(|t| Tracking {
                excluded: t.excluded.get(),
                dropped: t.dropped.get(),
            });
            (out, t)
        })
        .await
}

/// Records that the current request spent `d` where the latency SLI does not count it
/// (kube-apiserver's latency trackers); outside a request, does nothing.
pub fn exclude_from_sli(d: Duration) {
    let _ = TRACKED.try_with(|t| t.excluded.set(t.excluded.get() + d));
}

/// Records that flow control refused the current request.
pub fn mark_dropped() {
    let _ = TRACKED.try_with(|t| t.dropped.set(true));
}

fn new_histogram() -> Histogram {
    Histogram::new([
        0.005, 0.025, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0,
        10.0, 15.0, 20.0, 30.0, 45.0, 60.0,
    ])
}

/// The server's metrics; clones share values.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<parking_lot::Mutex<Registry>>,
    /// `apiserver_request_total`.
    pub requests: Family<RequestLabels, Counter>,
    /// `apiserver_request_duration_seconds`.
    pub durations: Family<DurationLabels, Histogram, fn() -> Histogram>,
    /// `apiserver_request_sli_duration_seconds`: the latency without APF queueing and webhooks.
    pub sli_durations: Family<DurationLabels, Histogram, fn() -> Histogram>,
    /// `apiserver_current_inflight_requests`.
    pub inflight: Family<KindOfRequest, Gauge>,
    /// `apiserver_registered_watchers`.
    pub watchers: Family<KindLabels, Gauge>,
    /// `apiserver_dropped_requests_total` (rejected by max-in-flight).
    pub dropped: Family<KindOfRequest, Counter>,
    /// `apiserver_storage_objects`.
    pub objects: Family<ResourceLabel, Gauge>,
    /// `apiserver_watch_events_total`.
    pub watch_events: Family<KindLabels, Counter>,
    /// `apiserver_admission_webhook_admission_duration_seconds`.
    pub webhook_durations: Family<WebhookLabels, Histogram, fn() -> Histogram>,
}

/// Labels of the admission webhook latency histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookLabels {
    /// The webhook's name.
    pub name: String,
    /// `CREATE`, `UPDATE`, `DELETE`.
    pub operation: String,
    /// Whether the request was refused (denied or failed).
    pub rejected: String,
    /// `admit` (mutating) or `validating`.
    pub r#type: String,
}

fn new_webhook_histogram() -> Histogram {
    Histogram::new([0.005, 0.025, 0.1, 0.5, 1.0, 2.5, 10.0, 25.0])
}

/// The `resource` label (`pods`, `deployments.apps`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResourceLabel {
    /// Resource, qualified by group.
    pub resource: String,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Decrements the registered-watchers gauge when the watch ends.
pub struct WatcherGuard(Gauge);

impl Drop for WatcherGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Metrics {
    /// Runs `f` with the registry, to register families kept elsewhere.
    pub fn with_registry<T>(&self, f: impl FnOnce(&mut Registry) -> T) -> T {
        f(&mut self.registry.lock())
    }

    /// Registers every metric.
    pub fn new() -> Self {
        let m = Metrics {
            registry: Arc::new(parking_lot::Mutex::new(Registry::default())),
            requests: Family::default(),
            durations: Family::new_with_constructor(new_histogram as fn() -> Histogram),
            // The buckets of the whole latency, finer under 50 ms than upstream's for this one.
            sli_durations: Family::new_with_constructor(new_histogram as fn() -> Histogram),
            inflight: Family::default(),
            watchers: Family::default(),
            dropped: Family::default(),
            objects: Family::default(),
            watch_events: Family::default(),
            webhook_durations: Family::new_with_constructor(
                new_webhook_histogram as fn() -> Histogram,
            ),
        };
        {
            let mut r = m.registry.lock();
            r.register("apiserver_request", "Counter of apiserver requests broken out for each verb, group, version, resource, scope, component, and HTTP response code", m.requests.clone());
            r.register("apiserver_request_duration_seconds", "Response latency distribution in seconds for each verb, group, version, resource, subresource, scope and component", m.durations.clone());
            r.register(
                "apiserver_request_sli_duration_seconds",
                "Response latency distribution (not counting webhook duration and priority & fairness queue wait times) in seconds for each verb, group, version, resource, subresource, scope and component",
                m.sli_durations.clone(),
            );
            r.register("apiserver_current_inflight_requests", "Maximal number of currently used inflight request limit of this apiserver per request kind in last second", m.inflight.clone());
            r.register(
                "apiserver_registered_watchers",
                "Number of currently registered watchers for a given resources",
                m.watchers.clone(),
            );
            r.register(
                "apiserver_dropped_requests",
                "Number of requests dropped with 'Try again later' response",
                m.dropped.clone(),
            );
            r.register(
                "apiserver_storage_objects",
                "Number of stored objects at the time of last check split by kind",
                m.objects.clone(),
            );
            r.register(
                "apiserver_watch_events",
                "Number of events sent in watch clients",
                m.watch_events.clone(),
            );
            r.register(
                "apiserver_admission_webhook_admission_duration_seconds",
                "Admission webhook latency histogram in seconds, identified by name and broken out for each operation and API resource and type (validate or admit)",
                m.webhook_durations.clone(),
            );
        }
        m
    }

    /// Records one call of an admission webhook.
    pub fn webhook_admission(
        &self,
        name: &str,
        kind: &str,
        operation: &str,
        rejected: bool,
        took: std::time::Duration,
    ) {
        self.webhook_durations
            .get_or_create(&WebhookLabels {
                name: name.into(),
                operation: operation.into(),
                rejected: rejected.to_string(),
                r#type: kind.into(),
            })
            .observe(took.as_secs_f64());
    }

    /// A guard that holds one registered-watcher count for `res`.
    pub fn watcher_guard(&self, res: &Resource) -> WatcherGuard {
        let g = self
            .watchers
            .get_or_create(&KindLabels {
                group: res.group.into(),
                version: res.version.into(),
                kind: res.kind.into(),
            })
            .clone();
        g.inc();
        WatcherGuard(g)
    }

    /// The stored-objects gauge of `res`.
    pub fn storage_objects(&self, res: &Resource) -> Gauge {
        let resource = if res.group.is_empty() {
            res.resource.to_string()
        } else {
            format!("{}.{}", res.resource, res.group)
        };
        self.objects
            .get_or_create(&ResourceLabel { resource })
            .clone()
    }

    /// The counter of watch events sent for `res` (look it up once, count often).
    pub fn watch_events_of(&self, res: &Resource) -> Counter {
        self.watch_events
            .get_or_create(&KindLabels {
                group: res.group.into(),
                version: res.version.into(),
                kind: res.kind.into(),
            })
            .clone()
    }

    /// The text exposition.
    pub fn render(&self) -> Response {
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry.lock());
        let mut r = out.into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_request_sums_what_its_sli_leaves_out() {
        let (out, t) = tracking(async {
            exclude_from_sli(Duration::from_millis(30));
            tokio::task::yield_now().await;
            exclude_from_sli(Duration::from_millis(12));
            7
        })
        .await;
        assert_eq!(out, 7);
        assert_eq!(
            t,
            Tracking {
                excluded: Duration::from_millis(42),
                dropped: false
            }
        );
        // Outside a request nothing is recorded, and nothing leaks into the next one.
        exclude_from_sli(Duration::from_secs(1));
        mark_dropped();
        let ((), t) = tracking(async {}).await;
        assert_eq!(t, Tracking::default());
        let ((), t) = tracking(async { mark_dropped() }).await;
        assert!(t.dropped);
    }
}
