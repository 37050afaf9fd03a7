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

#[test]
fn kube_rs_crud_watch_relist_and_apply() {
    let c = ApiCluster::start_with(Backend::Keelson, 1, &["--default-watch-cache-size=8"]);
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
    });
}
