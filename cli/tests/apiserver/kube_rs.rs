//! kube-rs against the apiserver: CRUD, watch from a resourceVersion, 410 and relist through the
//! runtime watcher, and server-side apply.

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Client;
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};

use crate::harness::{ApiCluster, Backend};

async fn client(c: &ApiCluster) -> Client {
    crate::harness::kube_client(&c.kubeconfig()).await
}

fn cm(name: &str, v: &str) -> ConfigMap {
    serde_json::from_value(serde_json::json!({"metadata": {"name": name, "labels": {"suite": "kube-rs"}}, "data": {"k": v}})).unwrap()
}

type Watch = futures::stream::BoxStream<
    'static,
    Result<kube::runtime::watcher::Event<ConfigMap>, kube::runtime::watcher::Error>,
>;

/// Waits (at most 20 s) for the watcher to finish a list; returns the status codes of the
/// errors it reported meanwhile (it goes on after each).
async fn next_init_done(w: &mut Watch) -> Vec<u16> {
    let done = async {
        let mut errors = Vec::new();
        loop {
            match w.next().await {
                Some(Ok(kube::runtime::watcher::Event::InitDone)) => return errors,
                Some(Ok(_)) => {}
                Some(Err(kube::runtime::watcher::Error::WatchError(s))) => errors.push(s.code),
                Some(Err(e)) => panic!("watcher error {e:?}"),
                None => panic!("the watcher ended"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), done)
        .await
        .expect("a list within 20 s")
}

#[test]
fn kube_rs_crud_watch_relist_and_apply() {
    kube_rs_on(Backend::Keelson);
}

#[test]
fn kube_rs_crud_watch_relist_and_apply_on_etcd() {
    kube_rs_on(Backend::Etcd);
}

fn kube_rs_on(backend: Backend) {
    let c = ApiCluster::start_with(backend, 1, &["--default-watch-cache-size=8"]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let client = client(&c).await;
        let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");

        // CRUD with optimistic concurrency.
        let created = cms.create(&PostParams::default(), &cm("a", "1")).await.unwrap();
        let rv = created.metadata.resource_version.clone().unwrap();
        let mut changed = created.clone();
        changed.data = Some([("k".to_string(), "2".to_string())].into_iter().collect());
        let replaced = cms.replace("a", &PostParams::default(), &changed).await.unwrap();
        assert_ne!(replaced.metadata.resource_version.as_deref(), Some(rv.as_str()));
        let stale = cms.replace("a", &PostParams::default(), &changed).await.unwrap_err();
        assert!(matches!(&stale, kube::Error::Api(e) if e.code == 409), "{stale:?}");
        let listed = cms.list(&ListParams::default().labels("suite=kube-rs")).await.unwrap();
        assert_eq!(listed.items.len(), 1);

        // Watch from a resourceVersion sees what follows it, in order.
        let from = listed.metadata.resource_version.clone().unwrap();
        let mut stream = cms.watch(&WatchParams::default().timeout(20), &from).await.unwrap().boxed();
        cms.create(&PostParams::default(), &cm("b", "1")).await.unwrap();
        cms.delete("b", &DeleteParams::default()).await.unwrap();
        let mut seen = Vec::new();
        while seen.len() < 2 {
            match tokio::time::timeout(Duration::from_secs(10), stream.try_next()).await.unwrap().unwrap() {
                Some(WatchEvent::Added(o)) => seen.push(format!("ADDED {}", o.metadata.name.unwrap())),
                Some(WatchEvent::Deleted(o)) => seen.push(format!("DELETED {}", o.metadata.name.unwrap())),
                Some(WatchEvent::Bookmark(_)) | Some(WatchEvent::Modified(_)) => {}
                Some(WatchEvent::Error(e)) => panic!("watch error {e:?}"),
                None => panic!("watch ended early"),
            }
        }
        assert_eq!(seen, ["ADDED b", "DELETED b"]);

        // More than the cache's 8 events later, the old resourceVersion is gone: 410.
        for i in 0..12 {
            cms.create(&PostParams::default(), &cm(&format!("n{i}"), "x")).await.unwrap();
        }
        let mut old = cms.watch(&WatchParams::default().timeout(5), &from).await.unwrap().boxed();
        match tokio::time::timeout(Duration::from_secs(10), old.try_next()).await.unwrap().unwrap() {
            Some(WatchEvent::Error(e)) => assert_eq!(e.code, 410, "{e:?}"),
            other => panic!("expected a 410 error event, got {other:?}"),
        }

        // The runtime watcher relists and converges.
        let w = kube::runtime::watcher(cms.clone(), kube::runtime::watcher::Config::default().labels("suite=kube-rs"));
        let store = kube::runtime::reflector::store::Writer::<ConfigMap>::default();
        let reader = store.as_reader();
        let handle = tokio::spawn(kube::runtime::reflector(store, w).for_each(|_| async {}));
        tokio::time::timeout(Duration::from_secs(15), reader.wait_until_ready()).await.unwrap().unwrap();
        assert_eq!(reader.state().len(), 13);
        cms.delete("n0", &DeleteParams::default()).await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while reader.state().len() != 12 {
            assert!(tokio::time::Instant::now() < deadline, "reflector did not see the delete");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        handle.abort();

        // A watcher whose resourceVersion falls out of the cache's window while it reconnects
        // gets 410 and lists again: its watches end every second (timeoutSeconds=1), and while
        // one is open, 12 writes the selector leaves out push the cache's 8 events past it.
        let cfg = kube::runtime::watcher::Config::default().labels("suite=kube-rs").timeout(1);
        let mut w = kube::runtime::watcher(cms.clone(), cfg).boxed();
        assert_eq!(next_init_done(&mut w).await, Vec::<u16>::new());
        let mut unlabelled = cm("x", "x");
        unlabelled.metadata.labels = None;
        for i in 0..12 {
            unlabelled.metadata.name = Some(format!("other{i}"));
            cms.create(&PostParams::default(), &unlabelled).await.unwrap();
        }
        cms.create(&PostParams::default(), &cm("during", "x")).await.unwrap();
        // The next list (InitDone comes only from one) follows the 410.
        assert_eq!(next_init_done(&mut w).await, [410]);

        // Protobuf answers for clients that ask for them first (client-go components do).
        let req = http::Request::get("/api/v1/namespaces/default/configmaps/a")
            .header("Accept", "application/vnd.kubernetes.protobuf, application/json")
            .body(Vec::new())
            .unwrap();
        let resp = client.send(req.map(kube::client::Body::from)).await.unwrap();
        assert_eq!(resp.headers()["content-type"], "application/vnd.kubernetes.protobuf");
        let body = http_body_util::BodyExt::collect(resp.into_body()).await.unwrap().to_bytes();
        assert_eq!(&body[..4], b"k8s\0");
        let unknown = <k8s_pb::apimachinery::pkg::runtime::Unknown as prost::Message>::decode(&body[4..]).unwrap();
        let got = <k8s_pb::api::core::v1::ConfigMap as prost::Message>::decode(unknown.raw.as_deref().unwrap()).unwrap();
        assert_eq!(got.data.get("k").map(String::as_str), Some("2"));

        // Server-side apply, with a conflict for a second manager and force.
        let applied = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ssa"}, "data": {"owner": "alice"}});
        cms.patch("ssa", &PatchParams::apply("alice"), &Patch::Apply(&applied)).await.unwrap();
        let bob = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ssa"}, "data": {"owner": "bob"}});
        let e = cms.patch("ssa", &PatchParams::apply("bob"), &Patch::Apply(&bob)).await.unwrap_err();
        assert!(matches!(&e, kube::Error::Api(s) if s.code == 409), "{e:?}");
        let forced = cms.patch("ssa", &PatchParams::apply("bob").force(), &Patch::Apply(&bob)).await.unwrap();
        assert_eq!(forced.data.unwrap()["owner"], "bob");
        let managers: Vec<String> = forced.metadata.managed_fields.unwrap_or_default().into_iter().filter_map(|m| m.manager).collect();
        assert!(managers.contains(&"bob".to_string()), "{managers:?}");
    });
}

const PROTOBUF: &str = "application/vnd.kubernetes.protobuf, application/json";

/// Opens a watch with `accept`; returns the response's content type and its body.
async fn open_watch(
    client: &Client,
    path: &str,
    accept: &str,
) -> (String, std::pin::Pin<Box<kube::client::Body>>) {
    let req = http::Request::get(path)
        .header("Accept", accept)
        .body(Vec::new())
        .unwrap();
    let resp = client
        .send(req.map(kube::client::Body::from))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let ct = resp.headers()["content-type"].to_str().unwrap().to_string();
    (ct, Box::pin(resp.into_body()))
}

/// Reads from `body` until `done` finds a whole item at the front of `buf`.
async fn read_until<T>(
    body: &mut std::pin::Pin<Box<kube::client::Body>>,
    buf: &mut Vec<u8>,
    mut done: impl FnMut(&mut Vec<u8>) -> Option<T>,
) -> T {
    loop {
        if let Some(t) = done(buf) {
            return t;
        }
        let frame = tokio::time::timeout(
            Duration::from_secs(10),
            http_body_util::BodyExt::frame(body),
        )
        .await
        .expect("a watch event within 10 s")
        .expect("the watch ended early")
        .unwrap();
        if let Ok(d) = frame.into_data() {
            buf.extend_from_slice(&d);
        }
    }
}

/// The next event of a protobuf watch stream: its type, and the kind and message of its object
/// (as client-go reads them: a 4-byte length, a bare WatchEvent, an enveloped object).
async fn next_pb(
    body: &mut std::pin::Pin<Box<kube::client::Body>>,
    buf: &mut Vec<u8>,
) -> (String, String, Vec<u8>) {
    use k8s_pb::apimachinery::pkg::{apis::meta::v1::WatchEvent as PbEvent, runtime::Unknown};
    use prost::Message;
    let (ty, raw) = read_until(body, buf, |b| {
        let n = u32::from_be_bytes(b.get(..4)?.try_into().unwrap()) as usize;
        let frame = b.get(4..4 + n)?;
        let ev = PbEvent::decode(frame).unwrap();
        let out = (ev.r#type.unwrap(), ev.object.unwrap().raw.unwrap());
        b.drain(..4 + n);
        Some(out)
    })
    .await;
    assert_eq!(&raw[..4], b"k8s\0");
    let unknown = Unknown::decode(&raw[4..]).unwrap();
    (
        ty,
        unknown.type_meta.unwrap().kind.unwrap(),
        unknown.raw.unwrap(),
    )
}

#[test]
fn protobuf_and_metadata_watches() {
    use k8s_pb::api::core::v1 as pb;
    use prost::Message;
    let c = ApiCluster::start_with(Backend::Keelson, 1, &["--default-watch-cache-size=8"]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let client = client(&c).await;
        let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
        let first = cms.create(&PostParams::default(), &cm("p1", "1")).await.unwrap();
        let from = first.metadata.resource_version.unwrap();

        // From the watch cache: the initial ADDED, then live events, each a protobuf frame.
        let (ct, mut body) = open_watch(&client, "/api/v1/namespaces/default/configmaps?watch=1&timeoutSeconds=30", PROTOBUF).await;
        assert_eq!(ct, "application/vnd.kubernetes.protobuf;stream=watch");
        let mut buf = Vec::new();
        let mut seen = Vec::new();
        let (ty, kind, raw) = next_pb(&mut body, &mut buf).await;
        let got = pb::ConfigMap::decode(&raw[..]).unwrap();
        assert_eq!((ty.as_str(), kind.as_str()), ("ADDED", "ConfigMap"));
        assert_eq!(got.metadata.unwrap().name.as_deref(), Some("p1"));
        assert_eq!(got.data.get("k").map(String::as_str), Some("1"));
        cms.create(&PostParams::default(), &cm("p2", "2")).await.unwrap();
        cms.delete("p1", &DeleteParams::default()).await.unwrap();
        while seen.len() < 2 {
            let (ty, _, raw) = next_pb(&mut body, &mut buf).await;
            let name = pb::ConfigMap::decode(&raw[..]).unwrap().metadata.unwrap().name.unwrap();
            seen.push(format!("{ty} {name}"));
        }
        assert_eq!(seen, ["ADDED p2", "DELETED p1"]);

        // A resourceVersion the cache no longer holds: a protobuf Status with 410.
        for i in 0..10 {
            cms.create(&PostParams::default(), &cm(&format!("q{i}"), "x")).await.unwrap();
        }
        let (_, mut old) = open_watch(&client, &format!("/api/v1/namespaces/default/configmaps?watch=1&resourceVersion={from}"), PROTOBUF).await;
        let mut buf = Vec::new();
        let (ty, kind, raw) = next_pb(&mut old, &mut buf).await;
        assert_eq!((ty.as_str(), kind.as_str()), ("ERROR", "Status"));
        let status = k8s_pb::apimachinery::pkg::apis::meta::v1::Status::decode(&raw[..]).unwrap();
        assert_eq!((status.code, status.reason.as_deref()), (Some(410), Some("Expired")));

        // Events are not cached by default: the store-fed watch writes protobuf too.
        let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), "default");
        let rv = events.list(&ListParams::default()).await.unwrap().metadata.resource_version.unwrap();
        let (ct, mut body) = open_watch(&client, &format!("/api/v1/namespaces/default/events?watch=1&resourceVersion={rv}&timeoutSeconds=30"), PROTOBUF).await;
        assert_eq!(ct, "application/vnd.kubernetes.protobuf;stream=watch");
        let ev: k8s_openapi::api::core::v1::Event = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "e1"}, "reason": "Tested", "message": "hello",
            "involvedObject": {"kind": "ConfigMap", "name": "p2", "namespace": "default"}})).unwrap();
        events.create(&PostParams::default(), &ev).await.unwrap();
        let mut buf = Vec::new();
        let (ty, kind, raw) = next_pb(&mut body, &mut buf).await;
        assert_eq!((ty.as_str(), kind.as_str()), ("ADDED", "Event"));
        let got = pb::Event::decode(&raw[..]).unwrap();
        assert_eq!((got.reason.as_deref(), got.message.as_deref()), (Some("Tested"), Some("hello")));

        // Metadata-only clients get PartialObjectMetadata objects, bookmarks included.
        let (ct, mut body) = open_watch(
            &client,
            "/api/v1/namespaces/default/configmaps?watch=1&timeoutSeconds=30&labelSelector=suite%3Dkube-rs&allowWatchBookmarks=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan",
            "application/vnd.kubernetes.protobuf;as=PartialObjectMetadata;g=meta.k8s.io;v=v1, application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1, application/json",
        )
        .await;
        assert_eq!(ct, "application/json");
        let mut buf = Vec::new();
        let mut names = Vec::new();
        loop {
            let line = read_until(&mut body, &mut buf, |b| {
                let end = b.iter().position(|c| *c == b'\n')?;
                let line: serde_json::Value = serde_json::from_slice(&b[..end]).unwrap();
                b.drain(..=end);
                Some(line)
            })
            .await;
            assert_eq!(line["object"]["kind"], "PartialObjectMetadata", "{line}");
            assert_eq!(line["object"]["apiVersion"], "meta.k8s.io/v1", "{line}");
            assert!(line["object"].get("data").is_none(), "{line}");
            if line["type"] == "BOOKMARK" {
                break;
            }
            names.push(line["object"]["metadata"]["name"].as_str().unwrap().to_string());
        }
        names.sort();
        assert_eq!(names.len(), 11, "{names:?}");
        assert_eq!(names[0], "p2");
        let metrics = c.ok(&["get", "--raw", "/metrics"]);
        assert!(metrics.contains("apiserver_watch_events_total{"), "no apiserver_watch_events_total");
    });
}

/// A raw request: the status, the Retry-After header, and the body as JSON (`Null` if it is not).
async fn raw(
    client: &Client,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, Option<String>, serde_json::Value) {
    let mut req = http::Request::builder().method(method).uri(path);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client
        .send(
            req.body(kube::client::Body::from(body.as_bytes().to_vec()))
                .unwrap(),
        )
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let retry = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    let bytes = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    (
        status,
        retry,
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    )
}

#[test]
fn list_options_field_selectors_and_bad_requests_answer_as_upstream() {
    list_options_on(Backend::Keelson);
}

#[test]
fn list_options_field_selectors_and_bad_requests_answer_as_upstream_on_etcd() {
    list_options_on(Backend::Etcd);
}

fn list_options_on(backend: Backend) {
    let c = ApiCluster::start(backend, 1);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // Without kube-rs's own retries of 429, 503 and 504, so that each answer is seen.
        let kc = kube::config::Kubeconfig::read_from(c.kubeconfig()).unwrap();
        let mut config = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await.unwrap();
        config.default_retry = false;
        let client = Client::try_from(config).unwrap();
        let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
        let made = cms.create(&PostParams::default(), &cm("o1", "1")).await.unwrap();
        let rv: i64 = made.metadata.resource_version.unwrap().parse().unwrap();
        let list = "/api/v1/namespaces/default/configmaps";

        // resourceVersionMatch: checked as upstream's ListOptions validation (422).
        let (code, _, body) = raw(&client, "GET", &format!("{list}?resourceVersionMatch=Exact"), &[], "").await;
        assert_eq!((code, body["reason"].as_str()), (422, Some("Invalid")), "{body}");
        assert!(body["message"].as_str().unwrap().contains("forbidden unless resourceVersion is provided"), "{body}");
        let (code, _, body) = raw(&client, "GET", &format!("{list}?resourceVersion={rv}&resourceVersionMatch=Newest"), &[], "").await;
        assert_eq!(code, 422, "{body}");
        assert!(body["message"].as_str().unwrap().contains("Unsupported value: \"Newest\""), "{body}");
        let (code, _, body) = raw(&client, "GET", &format!("{list}?watch=1&resourceVersion={rv}&resourceVersionMatch=NotOlderThan"), &[], "").await;
        assert_eq!(code, 422, "{body}");
        assert!(body["message"].as_str().unwrap().contains("unless sendInitialEvents is provided"), "{body}");

        // NotOlderThan a revision the store has reached: served; beyond it: 504 after the
        // cache's wait (configmaps) or at once (events are not cached), with the cause.
        let (code, _, body) = raw(&client, "GET", &format!("{list}?resourceVersion={rv}&resourceVersionMatch=NotOlderThan"), &[], "").await;
        assert_eq!(code, 200, "{body}");
        assert_eq!(body["items"].as_array().unwrap().len(), 1, "{body}");
        for path in [list, "/api/v1/namespaces/default/events"] {
            let (code, retry, body) = raw(&client, "GET", &format!("{path}?resourceVersion={}&resourceVersionMatch=NotOlderThan", rv + 1000), &[], "").await;
            assert_eq!((code, body["reason"].as_str(), retry.as_deref()), (504, Some("Timeout"), Some("1")), "{path}: {body}");
            assert_eq!(body["details"]["causes"][0]["reason"], "ResourceVersionTooLarge", "{body}");
            assert!(body["message"].as_str().unwrap().starts_with("Timeout: Too large resource version"), "{body}");
        }

        // Field selectors with upstream's values: unset booleans and counts are false and 0.
        for (name, spec) in [("n1", serde_json::json!({})), ("n2", serde_json::json!({"unschedulable": true}))] {
            let node = serde_json::json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}, "spec": spec});
            let (code, _, body) = raw(&client, "POST", "/api/v1/nodes", &[("Content-Type", "application/json")], &node.to_string()).await;
            assert_eq!(code, 201, "{body}");
        }
        let names = |body: &serde_json::Value| -> Vec<String> {
            body["items"].as_array().unwrap().iter().map(|i| i["metadata"]["name"].as_str().unwrap().to_string()).collect()
        };
        let (_, _, body) = raw(&client, "GET", "/api/v1/nodes?fieldSelector=spec.unschedulable%3Dfalse", &[], "").await;
        assert_eq!(names(&body), ["n1"], "{body}");
        let (_, _, body) = raw(&client, "GET", "/api/v1/nodes?fieldSelector=spec.unschedulable%21%3Dfalse", &[], "").await;
        assert_eq!(names(&body), ["n2"], "{body}");
        for (name, ip) in [("plain", None), ("headless", Some("None"))] {
            let mut svc = serde_json::json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": {"ports": [{"port": 80}], "selector": {"app": name}}});
            if let Some(ip) = ip {
                svc["spec"]["clusterIP"] = serde_json::json!(ip);
            }
            let (code, _, body) = raw(&client, "POST", "/api/v1/namespaces/kube-public/services", &[("Content-Type", "application/json")], &svc.to_string()).await;
            assert_eq!(code, 201, "{body}");
        }
        let (_, _, body) = raw(&client, "GET", "/api/v1/namespaces/kube-public/services?fieldSelector=spec.clusterIP%21%3DNone,spec.type%3DClusterIP", &[], "").await;
        assert_eq!(names(&body), ["plain"], "{body}");
        let (code, _, body) = raw(&client, "GET", "/api/v1/namespaces/kube-public/services?fieldSelector=spec.bogus%3D1", &[], "").await;
        assert_eq!(code, 400, "{body}");

        // Bad requests: method, media types, names and types that do not match the URL.
        let json = [("Content-Type", "application/json")];
        let (code, _, body) = raw(&client, "POST", &format!("{list}/o1"), &json, "{}").await;
        assert_eq!((code, body["reason"].as_str()), (405, Some("MethodNotAllowed")), "{body}");
        let (code, _, body) = raw(&client, "GET", &format!("{list}/o1"), &[("Accept", "text/csv")], "").await;
        assert_eq!((code, body["reason"].as_str()), (406, Some("NotAcceptable")), "{body}");
        let (code, _, body) = raw(&client, "POST", list, &[("Content-Type", "text/csv")], "a,b").await;
        assert_eq!((code, body["reason"].as_str()), (415, Some("UnsupportedMediaType")), "{body}");
        let other = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "other"}});
        let (code, _, body) = raw(&client, "PUT", &format!("{list}/o1"), &json, &other.to_string()).await;
        assert_eq!((code, body["reason"].as_str()), (400, Some("BadRequest")), "{body}");
        let apps = serde_json::json!({"apiVersion": "apps/v1", "kind": "ConfigMap", "metadata": {"name": "o2"}});
        let (code, _, body) = raw(&client, "POST", list, &json, &apps.to_string()).await;
        assert_eq!((code, body["reason"].as_str()), (400, Some("BadRequest")), "{body}");
        let (code, _, body) = raw(&client, "POST", list, &json, "{\"apiVersion\": ").await;
        assert_eq!((code, body["reason"].as_str()), (400, Some("BadRequest")), "{body}");
        let twice = r#"{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "o3"}, "data": {"k": "1", "k": "2"}}"#;
        let (code, _, body) = raw(&client, "POST", &format!("{list}?fieldValidation=Strict"), &json, twice).await;
        assert_eq!(code, 400, "{body}");
        assert!(body["message"].as_str().unwrap().contains("duplicate field \"data.k\""), "{body}");
        // Nothing was written by any of them.
        assert_eq!(cms.list(&ListParams::default()).await.unwrap().items.len(), 1);

        // kube-apiserver's metric names, with what was done above counted.
        let metrics = c.ok(&["get", "--raw", "/metrics"]);
        for name in [
            "apiserver_request_total{",
            "apiserver_request_duration_seconds_bucket{",
            "apiserver_storage_objects{resource=\"configmaps\"}",
        ] {
            assert!(metrics.contains(name), "{name} missing from /metrics");
        }
        assert!(metrics.lines().any(|l| l.starts_with("apiserver_request_total{") && l.contains("code=\"504\"")), "the 504s are not counted");
    });
}
