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
