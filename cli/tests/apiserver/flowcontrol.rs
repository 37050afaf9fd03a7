//! API Priority and Fairness end to end: the default FlowSchemas and priority levels are
//! created, responses carry the classification's UIDs, a schema of the user's own takes
//! effect, and a flood of LISTs from one user is refused with 429s while a node's heartbeats
//! (lease renewals and node status reads) all go through.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::harness::{ApiCluster, Backend, apply, eventually, kube_client, kube_config};

fn names(c: &ApiCluster, resource: &str) -> Vec<String> {
    let out = c.ok(&["get", resource, "-o", "jsonpath={.items[*].metadata.name}"]);
    let mut v: Vec<String> = out.split_whitespace().map(str::to_string).collect();
    v.sort();
    v
}

#[test]
fn priority_and_fairness_isolates_a_flood_from_node_heartbeats() {
    let c = ApiCluster::start_with(
        Backend::Keelson,
        1,
        &[
            "--max-requests-inflight=4",
            "--max-mutating-requests-inflight=2",
        ],
    );
    // The defaults, as upstream creates them.
    eventually(Duration::from_secs(30), "the default flow schemas", || {
        names(&c, "flowschemas").len() == 13 && names(&c, "prioritylevelconfigurations").len() == 8
    });
    assert_eq!(
        names(&c, "prioritylevelconfigurations"),
        [
            "catch-all",
            "exempt",
            "global-default",
            "leader-election",
            "node-high",
            "system",
            "workload-high",
            "workload-low"
        ]
    );
    assert_eq!(
        c.ok(&[
            "get",
            "flowschema",
            "probes",
            "-o",
            "jsonpath={.metadata.annotations.apf\\.kubernetes\\.io/autoupdate-spec}"
        ]),
        "true"
    );
    let uid = |kind: &str, name: &str| c.ok(&["get", kind, name, "-o", "jsonpath={.metadata.uid}"]);
    let exempt_fs = uid("flowschema", "exempt");
    let exempt_pl = uid("prioritylevelconfiguration", "exempt");

    // The flooder's requests go to a small level of their own that refuses what it cannot run.
    apply(
        &c,
        &json!({"apiVersion": "flowcontrol.apiserver.k8s.io/v1", "kind": "PriorityLevelConfiguration",
            "metadata": {"name": "flood"},
            "spec": {"type": "Limited", "limited": {"nominalConcurrencyShares": 1, "limitResponse": {"type": "Reject"}}}})
        .to_string(),
    );
    apply(
        &c,
        &json!({"apiVersion": "flowcontrol.apiserver.k8s.io/v1", "kind": "FlowSchema",
            "metadata": {"name": "flooder"},
            "spec": {"priorityLevelConfiguration": {"name": "flood"}, "matchingPrecedence": 50,
                "distinguisherMethod": {"type": "ByUser"},
                "rules": [{"subjects": [{"kind": "User", "user": {"name": "flooder"}}],
                    "resourceRules": [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"], "clusterScope": true, "namespaces": ["*"]}]}]}})
        .to_string(),
    );
    let flood_fs = uid("flowschema", "flooder");
    let flood_pl = uid("prioritylevelconfiguration", "flood");
    let flooder = c.user_kubeconfig("flooder", &[]);
    let node = c.user_kubeconfig("system:node:n1", &["system:nodes"]);

    let rt = tokio::runtime::Runtime::new().unwrap();
    let outcome = rt.block_on(async {
        let admin = kube_client(&c.kubeconfig()).await;
        // Objects for the flood to list (eight creates at a time: the admin is exempt from
        // the small limits), and the node's lease.
        let cms: Api<ConfigMap> = Api::namespaced(admin.clone(), "default");
        let creates = futures::stream::iter(0..1000).map(|i| {
            let cms = cms.clone();
            async move {
                let cm: ConfigMap = serde_json::from_value(
                    json!({"metadata": {"name": format!("cm-{i}")}, "data": {"k": "v".repeat(1000)}}),
                )
                .unwrap();
                cms.create(&PostParams::default(), &cm).await.unwrap();
            }
        });
        creates.buffer_unordered(8).collect::<Vec<()>>().await;
        let leases: Api<Lease> = Api::namespaced(admin.clone(), "default");
        leases
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": "n1"}, "spec": {"holderIdentity": "n1"}})).unwrap(),
            )
            .await
            .unwrap();

        // Responses carry the UIDs of the schema and level that served them.
        let req = http::Request::get("/api/v1/namespaces/default").body(Vec::new()).unwrap();
        let resp = admin.send(req.map(kube::client::Body::from)).await.unwrap();
        assert_eq!(resp.headers()["x-kubernetes-pf-flowschema-uid"], exempt_fs.as_str());
        assert_eq!(resp.headers()["x-kubernetes-pf-prioritylevel-uid"], exempt_pl.as_str());

        // Without kube-rs's retries of 429s (up to 15, backing off to minutes), so the
        // flood ends when it should and its refusals are seen.
        let mut flood_config = kube_config(&flooder).await;
        flood_config.default_retry = false;
        let flood_client = kube::Client::try_from(flood_config).unwrap();
        // The flooder's schema is in force once its requests carry its UIDs.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let req = http::Request::get("/api/v1/namespaces/default/configmaps?limit=1")
                .body(Vec::new())
                .unwrap();
            let resp = flood_client.send(req.map(kube::client::Body::from)).await.unwrap();
            if resp.headers().get("x-kubernetes-pf-flowschema-uid").is_some_and(|v| v == flood_fs.as_str()) {
                assert_eq!(resp.headers()["x-kubernetes-pf-prioritylevel-uid"], flood_pl.as_str());
                break;
            }
            assert!(Instant::now() < deadline, "the flooder's FlowSchema never took effect");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }

        // 24 clients list 1,000 configmaps back to back for a few seconds, while the node
        // renews its lease and reads the lease back every 50 ms.
        let (refused, served, other) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicUsize::new(0)),
        );
        let stop = Instant::now() + Duration::from_secs(4);
        let mut flood = Vec::new();
        for _ in 0..24 {
            let flood_client = flood_client.clone();
            let (refused, served, other) = (refused.clone(), served.clone(), other.clone());
            flood.push(tokio::spawn(async move {
                while Instant::now() < stop {
                    // Raw bytes: the client does not spend its time decoding.
                    let req = http::Request::get("/api/v1/namespaces/default/configmaps")
                        .body(Vec::new())
                        .unwrap();
                    let code = match flood_client.send(req.map(kube::client::Body::from)).await {
                        Ok(resp) => {
                            let code = resp.status().as_u16();
                            let _ = http_body_util::BodyExt::collect(resp.into_body()).await;
                            code
                        }
                        Err(_) => 0,
                    };
                    match code {
                        200 => served.fetch_add(1, Ordering::Relaxed),
                        429 => refused.fetch_add(1, Ordering::Relaxed),
                        _ => other.fetch_add(1, Ordering::Relaxed),
                    };
                }
            }));
        }
        let node_client = kube_client(&node).await;
        let node_leases: Api<Lease> = Api::namespaced(node_client, "default");
        let mut beats = 0;
        while Instant::now() < stop {
            node_leases
                .patch(
                    "n1",
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": {"leaseDurationSeconds": 40 + beats % 5}})),
                )
                .await
                .expect("the node's lease renewal goes through the flood");
            node_leases.get("n1").await.expect("the node's lease read goes through the flood");
            beats += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for f in flood {
            f.await.unwrap();
        }
        let (refused, served, other) = (
            refused.load(Ordering::Relaxed),
            served.load(Ordering::Relaxed),
            other.load(Ordering::Relaxed),
        );
        assert!(beats > 0, "{beats} heartbeats");
        assert_eq!(other, 0, "only 429s may fail the flood");
        (served, refused)
    });
    // The flood was served in part and refused in part. The node's client retries a 429
    // itself (so its `expect`s above would not see one): the server's counts tell that no
    // node request was refused.
    let (served, refused) = outcome;
    assert!(
        served > 0 && refused > 0,
        "{served} served, {refused} refused"
    );
    let metrics = c.ok(&["get", "--raw", "/metrics"]);

    // The metrics tell the same story.
    let has = |needle: &str| metrics.lines().any(|l| l.starts_with(needle));
    let count = |needle: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(needle))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    assert!(
        count(
            r#"apiserver_flowcontrol_rejected_requests_total{priority_level="flood",flow_schema="flooder",reason="concurrency-limit"}"#
        ) > 0.0,
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("flowcontrol"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(has(
        r#"apiserver_flowcontrol_dispatched_requests_total{priority_level="node-high",flow_schema="system-node-high"}"#
    ));
    assert!(!has(
        r#"apiserver_flowcontrol_rejected_requests_total{priority_level="node-high""#
    ));
    assert!(has(
        r#"apiserver_flowcontrol_nominal_limit_seats{priority_level="workload-low"}"#
    ));

    // Off: no flow-control metrics, and the flow-control objects are still served.
    drop(c);
    let off = ApiCluster::start_with(
        Backend::Keelson,
        1,
        &["--enable-priority-and-fairness=false"],
    );
    let out = off.ok(&["get", "--raw", "/metrics"]);
    assert!(
        !out.contains("apiserver_flowcontrol_dispatched_requests_total{"),
        "APF is off"
    );
    off.ok(&["get", "flowschemas"]);
}
