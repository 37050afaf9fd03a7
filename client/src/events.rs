//! An event recorder as client-go's: core/v1 Events written in the background (recording never
//! blocks a controller), and an event identical to one already written (same object, type,
//! reason, message and source) increments that Event's `count` and `lastTimestamp` instead of
//! creating another.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use tokio::sync::mpsc;

/// `Normal` or `Warning`, as upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    /// Something expected happened.
    Normal,
    /// Something may need attention.
    Warning,
}

impl EventType {
    fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

struct Record {
    object: ObjectReference,
    kind: EventType,
    reason: String,
    message: String,
}

/// Records Events for one component; cheap to clone.
#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::Sender<Record>,
}

/// The identity of an event for aggregation.
type Key = (String, String, String, String, &'static str, String, String);

impl Recorder {
    /// A recorder whose Events name `component` (and `host`, if any) as their source.
    pub fn new(client: Client, component: &str, host: Option<String>) -> Self {
        let (tx, rx) = mpsc::channel(1000);
        let source = EventSource {
            component: Some(component.to_string()),
            host,
        };
        tokio::spawn(write_events(client, source, rx));
        Self { tx }
    }

    /// Records an event about `object`; dropped (with a log line) when the writer is far behind.
    pub fn record(&self, object: ObjectReference, kind: EventType, reason: &str, message: String) {
        let rec = Record {
            object,
            kind,
            reason: reason.to_string(),
            message,
        };
        if self.tx.try_send(rec).is_err() {
            tracing::warn!(reason, "event dropped: recorder queue full");
        }
    }
}

async fn write_events(client: Client, source: EventSource, mut rx: mpsc::Receiver<Record>) {
    // Aggregation state: event key -> (namespace, Event name, count so far).
    let mut seen: HashMap<Key, (String, String, i32)> = HashMap::new();
    while let Some(rec) = rx.recv().await {
        let ns = rec
            .object
            .namespace
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "default".into());
        let key: Key = (
            ns.clone(),
            rec.object.kind.clone().unwrap_or_default(),
            rec.object.name.clone().unwrap_or_default(),
            rec.object.uid.clone().unwrap_or_default(),
            rec.kind.as_str(),
            rec.reason.clone(),
            rec.message.clone(),
        );
        let api: Api<Event> = Api::namespaced(client.clone(), &ns);
        let now = jiff::Timestamp::now();
        if let Some((ev_ns, name, count)) = seen.get_mut(&key) {
            let patch = serde_json::json!({
                "count": *count + 1,
                "lastTimestamp": Time(now),
            });
            let api: Api<Event> = Api::namespaced(client.clone(), ev_ns);
            match api
                .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    *count += 1;
                    continue;
                }
                Err(e) => {
                    // Gone (expired by its TTL) or unreachable: write a new one.
                    tracing::debug!(error = %e, "event aggregation patch failed");
                    seen.remove(&key);
                }
            }
        }
        let name = format!(
            "{}.{:x}",
            rec.object.name.clone().unwrap_or_default(),
            now.as_nanosecond()
        );
        let event = Event {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(ns.clone()),
                ..Default::default()
            },
            involved_object: rec.object,
            reason: Some(rec.reason),
            message: Some(rec.message),
            type_: Some(rec.kind.as_str().to_string()),
            source: Some(source.clone()),
            reporting_component: source.component.clone(),
            reporting_instance: source.host.clone(),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            count: Some(1),
            ..Default::default()
        };
        match api.create(&PostParams::default(), &event).await {
            Ok(_) => {
                if seen.len() > 4096 {
                    seen.clear();
                }
                seen.insert(key, (ns, name, 1));
            }
            Err(e) => tracing::warn!(error = %e, "writing event failed"),
        }
    }
}
