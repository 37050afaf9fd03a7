//! Watch: a chunked stream of `{"type":...,"object":...}` lines (one per event, `\n`-terminated),
//! fed by one store watch on the collection's key prefix. Selectors are applied with upstream's
//! transitions (an object that starts matching is ADDED, one that stops is DELETED), the initial
//! state is sent as synthetic ADDED events when no resourceVersion is given, and a revision older
//! than the store keeps ends the stream with an `Expired` (410) ERROR event.

use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::etcd::{EtcdError, WatchEvent, prefix_end};
use crate::object;
use crate::registry::{ListOptions, Registry, parse_rv};
use crate::resources::Resource;
use crate::selectors::{FieldSelector, LabelSelector};
use crate::status::{ApiError, ApiResult};
use crate::table::{self, IncludeObject};

/// Parameters of a watch request.
#[derive(Debug, Clone)]
pub struct WatchParams {
    /// `resourceVersion`.
    pub resource_version: Option<String>,
    /// `resourceVersionMatch`.
    pub resource_version_match: Option<String>,
    /// Label selector.
    pub labels: LabelSelector,
    /// Field selector.
    pub fields: FieldSelector,
    /// `allowWatchBookmarks`.
    pub bookmarks: bool,
    /// How long the watch lasts.
    pub timeout: Duration,
    /// `sendInitialEvents`.
    pub send_initial_events: Option<bool>,
    /// How events are written.
    pub render: Render,
}

/// How the events of a watch are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Render {
    /// `{"type":...,"object":...}` lines.
    Json,
    /// Length-prefixed `meta.v1.WatchEvent` messages with protobuf objects.
    Protobuf,
    /// JSON lines whose objects are one-row Tables (`as=Table`).
    Table(IncludeObject),
    /// JSON lines whose objects are `PartialObjectMetadata` (`as=PartialObjectMetadata`).
    Metadata,
}

impl Render {
    /// The response's content type (upstream adds `;stream=watch` to every type but JSON).
    pub fn content_type(self) -> &'static str {
        match self {
            Render::Protobuf => "application/vnd.kubernetes.protobuf;stream=watch",
            _ => "application/json",
        }
    }
}

pub(crate) fn matches(res: &Resource, p: &WatchParams, obj: &Value) -> bool {
    p.labels.matches_object(obj) && p.fields.matches_object(res, obj)
}

pub(crate) fn encode_event(res: &Resource, p: &WatchParams, ty: &str, obj: &Value) -> Bytes {
    let object = match (p.render, ty) {
        (Render::Protobuf, _) => {
            return protobuf_frame(ty, crate::protobuf::encode_lenient(obj).as_deref());
        }
        (Render::Table(include), "ADDED" | "MODIFIED" | "DELETED") => {
            let rv = object::meta_str(obj, "resourceVersion").to_string();
            table::table(res, std::slice::from_ref(obj), &rv, None, include, true)
        }
        // Bookmarks too: a metadata client decodes every object as PartialObjectMetadata.
        (Render::Metadata, "ADDED" | "MODIFIED" | "DELETED" | "BOOKMARK") => {
            table::partial_metadata(obj)
        }
        _ => obj.clone(),
    };
    let mut line = serde_json::to_vec(&json!({"type": ty, "object": object})).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

/// The protobuf frame of an event whose object encodes as `encoded` (leniently: a field that
/// does not fit is left out). An object with no protobuf form at all (the handler answers in
/// JSON for kinds that have none, so this is a fault) becomes an ERROR event, on which clients
/// end the watch and list again.
pub(crate) fn protobuf_frame(ty: &str, encoded: Option<&[u8]>) -> Bytes {
    match encoded {
        Some(b) => crate::protobuf::watch_frame(ty, b),
        None => {
            let status =
                ApiError::internal("an object of this watch has no protobuf form").to_status();
            let body = crate::protobuf::encode(&status).unwrap_or_default();
            crate::protobuf::watch_frame("ERROR", &body)
        }
    }
}

pub(crate) fn bookmark(res: &Resource, rv: i64, initial_end: bool) -> Value {
    let mut md = json!({"resourceVersion": rv.to_string()});
    if initial_end {
        md["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    json!({"kind": res.kind, "apiVersion": res.api_version(), "metadata": md})
}

pub(crate) fn expired(requested: i64, compacted: i64) -> Value {
    let msg = if compacted > 0 {
        format!("too old resource version: {requested} ({compacted})")
    } else {
        format!("too old resource version: {requested}")
    };
    ApiError::expired(msg).to_status()
}

/// Whether a watch starts with the current objects as synthetic ADDED events: asked for with
/// `sendInitialEvents=true` (which needs bookmarks and `resourceVersionMatch=NotOlderThan`), or
/// implied by an unset or "0" resourceVersion.
pub(crate) fn initial_events(p: &WatchParams, rv: Option<i64>) -> ApiResult<bool> {
    match p.send_initial_events {
        Some(true) => {
            if !p.bookmarks || p.resource_version_match.as_deref() != Some("NotOlderThan") {
                return Err(ApiError::invalid(
                    "",
                    "ListOptions",
                    "",
                    vec![crate::status::Cause::new(
                        "FieldValueForbidden",
                        "sendInitialEvents",
                        "Forbidden: sendInitialEvents is forbidden for watch unless resourceVersionMatch is set to NotOlderThan and allowWatchBookmarks is true",
                    )],
                ));
            }
            Ok(true)
        }
        Some(false) => Ok(false),
        None if p.resource_version_match.is_some() => Err(ApiError::invalid(
            "meta.k8s.io",
            "ListOptions",
            "",
            vec![crate::status::Cause::new(
                "FieldValueForbidden",
                "resourceVersionMatch",
                "Forbidden: resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided",
            )],
        )),
        None => Ok(rv.is_none() || rv == Some(0)),
    }
}

/// Starts a watch; returns the receiver of encoded lines. Errors before the stream starts (bad
/// parameters, store down) are returned as API errors.
pub async fn start(
    registry: &Registry,
    res: &'static Resource,
    ns: &str,
    p: WatchParams,
) -> ApiResult<mpsc::Receiver<Bytes>> {
    let rv = p
        .resource_version
        .as_deref()
        .filter(|s| !s.is_empty())
        .map(parse_rv)
        .transpose()?;
    let initial = initial_events(&p, rv)?;
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    let mut start_rev;
    let mut initial_items = Vec::new();
    let mut initial_rev = 0;
    if initial {
        let opts = ListOptions {
            labels: p.labels.clone(),
            fields: p.fields.clone(),
            resource_version: match rv {
                Some(0) => Some("0".into()),
                _ => None,
            },
            ..Default::default()
        };
        let page = registry.list(res, ns, &opts).await?;
        start_rev = page.revision + 1;
        initial_items = page.items;
        initial_rev = page.revision;
    } else {
        start_rev = rv.unwrap_or(0) + 1;
    }
    let prefix = object::collection_prefix(registry.prefix(), res, ns);
    let end = prefix_end(&prefix);
    let requested = start_rev - 1;
    let mut events = registry.etcd().watch(&prefix, &end, start_rev).await?;
    let send_end = p.send_initial_events == Some(true);
    tokio::spawn(async move {
        // Initial events go out first, ahead of live ones.
        for obj in initial_items {
            if tx.send(encode_event(res, &p, "ADDED", &obj)).await.is_err() {
                return;
            }
        }
        if send_end
            && tx
                .send(encode_event(
                    res,
                    &p,
                    "BOOKMARK",
                    &bookmark(res, initial_rev, true),
                ))
                .await
                .is_err()
        {
            return;
        }
        let deadline = tokio::time::sleep(p.timeout);
        tokio::pin!(deadline);
        loop {
            let ev = tokio::select! {
                e = events.recv() => e,
                _ = &mut deadline => return,
                _ = tx.closed() => return,
            };
            let line = match ev {
                None => return,
                Some(Err(EtcdError::Compacted { compact_revision })) => {
                    let _ = tx
                        .send(encode_event(
                            res,
                            &p,
                            "ERROR",
                            &expired(requested, compact_revision),
                        ))
                        .await;
                    return;
                }
                Some(Err(e)) => {
                    let status =
                        ApiError::internal(format!("watch of {} ended: {e}", res.resource))
                            .to_status();
                    let _ = tx.send(encode_event(res, &p, "ERROR", &status)).await;
                    return;
                }
                Some(Ok(WatchEvent::Progress { revision })) => {
                    start_rev = start_rev.max(revision + 1);
                    if p.bookmarks {
                        Some(encode_event(
                            res,
                            &p,
                            "BOOKMARK",
                            &bookmark(res, revision, false),
                        ))
                    } else {
                        None
                    }
                }
                Some(Ok(WatchEvent::Put { kv, prev })) => {
                    start_rev = kv.mod_revision + 1;
                    let Ok(new) = object::decode_stored(res, &kv.value, kv.mod_revision) else {
                        continue;
                    };
                    let old = prev
                        .and_then(|pk| object::decode_stored(res, &pk.value, pk.mod_revision).ok());
                    let now = matches(res, &p, &new);
                    let before = old.as_ref().is_some_and(|o| matches(res, &p, o));
                    match (old.is_some(), before, now) {
                        (false, _, true) => Some(encode_event(res, &p, "ADDED", &new)),
                        (true, true, true) => Some(encode_event(res, &p, "MODIFIED", &new)),
                        (true, false, true) => Some(encode_event(res, &p, "ADDED", &new)),
                        (true, true, false) => {
                            // Left the selection: DELETED with the new state, as upstream.
                            Some(encode_event(res, &p, "DELETED", &new))
                        }
                        _ => None,
                    }
                }
                Some(Ok(WatchEvent::Delete { revision, prev, .. })) => {
                    start_rev = revision + 1;
                    match prev.and_then(|pk| object::decode_stored(res, &pk.value, revision).ok()) {
                        Some(old) if matches(res, &p, &old) => {
                            Some(encode_event(res, &p, "DELETED", &old))
                        }
                        _ => None,
                    }
                }
            };
            if let Some(l) = line
                && tx.send(l).await.is_err()
            {
                return;
            }
        }
    });
    Ok(rx)
}

/// A watch timeout: `timeoutSeconds` if given, else random in `[min, 2*min)` as upstream.
pub fn timeout(timeout_seconds: Option<u64>, min_request_timeout: u64) -> Duration {
    match timeout_seconds {
        Some(t) => Duration::from_secs(t),
        None => {
            use rand::Rng;
            let min = min_request_timeout.max(1);
            Duration::from_secs(rand::rng().random_range(min..min * 2))
        }
    }
}
