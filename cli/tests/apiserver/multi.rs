//! Two apiservers on one store: each sees the other's writes and watches, and losing one is
//! invisible to a client that uses the other.

use std::time::Duration;

use crate::harness::{ApiCluster, Backend, eventually};

#[test]
fn two_apiservers_share_writes_and_watches() {
    two_apiservers_on(Backend::Keelson);
}

#[test]
fn two_apiservers_share_writes_and_watches_on_etcd() {
    two_apiservers_on(Backend::Etcd);
}

fn two_apiservers_on(backend: Backend) {
    let mut c = ApiCluster::start(backend, 2);
    let second = c.write_kubeconfig("second.kubeconfig", c.api_ports[1]);
    // A watch through the second apiserver sees a write through the first.
    let out_path = c.dir.path().join("watch2.out");
    let mut w = std::process::Command::new("kubectl")
        .env("KUBECONFIG", &second)
        .env("HOME", c.dir.path())
        .args(["get", "cm", "-n", "default", "-w", "--output-watch-events"])
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Give the watch time to start so the create arrives as a live event.
    eventually(Duration::from_secs(20), "the watch to start", || {
        let ok = c
            .kubectl_with(&second, &["get", "cm", "-n", "default"])
            .status
            .success();
        ok && std::fs::metadata(&out_path).is_ok()
    });
    std::thread::sleep(Duration::from_millis(500));
    c.ok(&[
        "create",
        "configmap",
        "from-first",
        "-n",
        "default",
        "--from-literal=k=v",
    ]);
    eventually(
        Duration::from_secs(20),
        "the second apiserver's watch to see the write",
        || {
            std::fs::read_to_string(&out_path)
                .unwrap_or_default()
                .contains("from-first")
        },
    );
    let _ = w.kill();
    let _ = w.wait();
    // A read through the second sees the first's write at once (linearizable reads).
    let out = c.kubectl_with(
        &second,
        &[
            "get",
            "cm",
            "from-first",
            "-n",
            "default",
            "-o",
            "jsonpath={.data.k}",
        ],
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "v");
    // Both apiservers are in the `kubernetes` Endpoints and EndpointSlices (one subset and one
    // slice per port: they share 127.0.0.1), and one that stops cleanly takes itself out.
    let ports_of = |c: &ApiCluster, args: &[&str]| -> Vec<u16> {
        let out = c.kubectl_with(&second, args);
        let mut p: Vec<u16> = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        p.sort();
        p
    };
    let endpoints = [
        "get",
        "endpoints",
        "kubernetes",
        "-n",
        "default",
        "-o",
        "jsonpath={.subsets[*].ports[*].port}",
    ];
    let slices = [
        "get",
        "endpointslices",
        "-n",
        "default",
        "-l",
        "kubernetes.io/service-name=kubernetes",
        "-o",
        "jsonpath={.items[*].ports[*].port}",
    ];
    let mut both = c.api_ports.clone();
    both.sort();
    eventually(
        Duration::from_secs(20),
        "both apiservers in the kubernetes endpoints and slices",
        || ports_of(&c, &endpoints) == both && ports_of(&c, &slices) == both,
    );
    let label = c.ok(&[
        "get",
        "endpoints",
        "kubernetes",
        "-n",
        "default",
        "-o",
        "jsonpath={.metadata.labels}",
    ]);
    assert!(
        label.contains("\"endpointslice.kubernetes.io/skip-mirror\":\"true\""),
        "{label}"
    );
    c.stop_apiserver(0);
    let left = vec![c.api_ports[1]];
    eventually(
        Duration::from_secs(5),
        "the stopped apiserver out of the kubernetes endpoints and slices",
        || ports_of(&c, &endpoints) == left && ports_of(&c, &slices) == left,
    );
    // Losing the first apiserver does not affect clients of the second.
    c.kill_apiserver(0);
    let out = c.kubectl_with(
        &second,
        &["create", "configmap", "after-kill", "-n", "default"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Updates start from the apiserver's watch-cache copy of the object, which may lag a write
/// just made through another apiserver: no write is lost, none fails for the lag, a stale
/// resourceVersion is still refused, and a patch that changes nothing against the lagging copy
/// still changes the store's object. (How often the copy lags here is up to timing; the
/// registry's unit tests give it a stale copy on purpose.)
#[test]
fn updates_from_a_lagging_cache_lose_nothing() {
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::{Api, Patch, PatchParams, PostParams};
    use std::collections::BTreeMap;

    let c = ApiCluster::start(Backend::Keelson, 2);
    let second = c.write_kubeconfig("second.kubeconfig", c.api_ports[1]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let a: Api<ConfigMap> = Api::namespaced(
            crate::harness::kube_client(&c.kubeconfig()).await,
            "default",
        );
        let b: Api<ConfigMap> =
            Api::namespaced(crate::harness::kube_client(&second).await, "default");
        let data = |o: &ConfigMap, k: &str| {
            o.data
                .as_ref()
                .and_then(|d| d.get(k))
                .cloned()
                .unwrap_or_default()
        };
        let mut first = ConfigMap::default();
        first.metadata.name = Some("race".into());
        first.data = Some(BTreeMap::from([("x".to_string(), "0".to_string())]));
        a.create(&PostParams::default(), &first).await.unwrap();
        let pp = PostParams::default();
        for i in 1..=30 {
            // A write through the first apiserver...
            let before = a.get("race").await.unwrap();
            let mut next = before.clone();
            next.data
                .get_or_insert_with(Default::default)
                .insert("x".into(), i.to_string());
            let written = a.replace("race", &pp, &next).await.unwrap();
            // ...then at once through the second: a PUT at the new resourceVersion succeeds,
            let mut put = written.clone();
            put.data
                .get_or_insert_with(Default::default)
                .insert("y".into(), i.to_string());
            let put = b.replace("race", &pp, &put).await.unwrap();
            // one at the old resourceVersion is refused,
            let stale = b.replace("race", &pp, &next).await.unwrap_err();
            assert!(
                matches!(&stale, kube::Error::Api(e) if e.code == 409),
                "{stale:?}"
            );
            // and a merge patch keeps both writes.
            let p = Patch::Merge(serde_json::json!({"data": {"z": i.to_string()}}));
            let patched = b.patch("race", &PatchParams::default(), &p).await.unwrap();
            for k in ["x", "y", "z"] {
                assert_eq!(data(&patched, k), i.to_string(), "round {i}, key {k}");
            }
            assert_ne!(
                patched.metadata.resource_version,
                put.metadata.resource_version
            );
            // The first apiserver changes x; a patch through the second setting x back to the
            // value its cache may still hold is written, not taken for a no-op.
            let p = Patch::Merge(serde_json::json!({"data": {"x": "changed"}}));
            a.patch("race", &PatchParams::default(), &p).await.unwrap();
            let p = Patch::Merge(serde_json::json!({"data": {"x": i.to_string()}}));
            b.patch("race", &PatchParams::default(), &p).await.unwrap();
            let now = a.get("race").await.unwrap();
            assert_eq!(data(&now, "x"), i.to_string(), "round {i}");
        }
        // A patch that changes nothing leaves the resourceVersion as it is.
        let now = a.get("race").await.unwrap();
        let same = Patch::Merge(serde_json::json!({"data": {"x": data(&now, "x")}}));
        let unchanged = b
            .patch("race", &PatchParams::default(), &same)
            .await
            .unwrap();
        assert_eq!(
            unchanged.metadata.resource_version,
            now.metadata.resource_version
        );
    });
}
