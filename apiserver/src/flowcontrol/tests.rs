use std::time::Duration;

use serde_json::{Value, json};

use super::queueset::{Mode, QueueSet, Rejection, Start, deal};
use super::*;

fn defaults() -> (Vec<Value>, Vec<Value>) {
    let with_uid = |mut v: Value| {
        let uid = format!("uid-{}", crate::object::name(&v));
        v["metadata"]["uid"] = json!(uid);
        v
    };
    let levels = bootstrap::mandatory_levels()
        .into_iter()
        .chain(bootstrap::suggested_levels())
        .map(with_uid)
        .collect();
    let schemas = bootstrap::mandatory_schemas()
        .into_iter()
        .chain(bootstrap::suggested_schemas())
        .map(with_uid)
        .collect();
    (levels, schemas)
}

fn user(name: &str, groups: &[&str]) -> UserInfo {
    UserInfo {
        name: name.into(),
        groups: groups.iter().map(|g| g.to_string()).collect(),
        uid: String::new(),
        extra: Default::default(),
    }
}

fn resource(verb: &str, group: &str, resource: &str, sub: &str, ns: &str) -> RequestInfo {
    RequestInfo {
        is_resource_request: true,
        verb: verb.into(),
        api_group: group.into(),
        api_version: "v1".into(),
        resource: resource.into(),
        subresource: sub.into(),
        namespace: ns.into(),
        ..Default::default()
    }
}

fn url(path: &str) -> RequestInfo {
    RequestInfo {
        is_resource_request: false,
        verb: "get".into(),
        path: path.into(),
        ..Default::default()
    }
}

#[test]
fn the_dealer_deals_distinct_cards_of_the_deck() {
    for hash in [0u64, 1, 7, 12345, u64::MAX, 0xdead_beef_cafe] {
        let hand = deal(hash, 64, 6);
        assert_eq!(hand.len(), 6);
        let mut sorted = hand.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 6, "{hand:?}");
        assert!(hand.iter().all(|c| *c < 64));
        assert_eq!(hand, deal(hash, 64, 6), "deterministic");
    }
    // Worked example: remainders 3, 0 of (5, 4) give cards 3 then 0.
    assert_eq!(deal(3, 5, 2), vec![3, 0]);
    // 8 = 3 + 5·1: remainders 3, 1 → cards 3, then 1 (below 3, unchanged).
    assert_eq!(deal(8, 5, 2), vec![3, 1]);
    // 18 = 3 + 5·3: remainders 3, 3 → the second skips past 3 to 4.
    assert_eq!(deal(18, 5, 2), vec![3, 4]);
}

#[test]
fn requests_are_classified_as_upstreams_defaults_say() {
    let (levels, schemas) = defaults();
    let apf = Apf::fixed(600, Duration::from_secs(60), &levels, &schemas);
    let class = |info: &RequestInfo, u: &UserInfo, method: &str| {
        let (s, _) = apf
            .classify(&Request {
                info,
                user: u,
                method,
            })
            .unwrap();
        (s.name.clone(), s.level.name.clone())
    };
    let admin = user(
        "kubernetes-admin",
        &["system:masters", "system:authenticated"],
    );
    let node = user("system:node:n1", &["system:nodes", "system:authenticated"]);
    let kcm = user("system:kube-controller-manager", &["system:authenticated"]);
    let ks_sa = user(
        "system:serviceaccount:kube-system:replicaset-controller",
        &[
            "system:serviceaccounts",
            "system:serviceaccounts:kube-system",
            "system:authenticated",
        ],
    );
    let sa = user(
        "system:serviceaccount:apps:web",
        &["system:serviceaccounts", "system:authenticated"],
    );
    let dev = user("alice", &["devs", "system:authenticated"]);
    let anon = user("system:anonymous", &["system:unauthenticated"]);
    let pods = resource("list", "", "pods", "", "default");
    let cases = [
        (class(&pods, &admin, "get"), ("exempt", "exempt")),
        (
            class(
                &resource(
                    "update",
                    "coordination.k8s.io",
                    "leases",
                    "",
                    "kube-node-lease",
                ),
                &node,
                "put",
            ),
            ("system-node-high", "node-high"),
        ),
        (
            class(
                &resource("patch", "", "nodes", "status", ""),
                &node,
                "patch",
            ),
            ("system-node-high", "node-high"),
        ),
        (class(&pods, &node, "get"), ("system-nodes", "system")),
        (
            class(
                &resource("update", "coordination.k8s.io", "leases", "", "kube-system"),
                &kcm,
                "put",
            ),
            ("system-leader-election", "leader-election"),
        ),
        (
            class(&pods, &kcm, "get"),
            ("kube-controller-manager", "workload-high"),
        ),
        (
            class(
                &resource("update", "", "endpoints", "", "default"),
                &kcm,
                "put",
            ),
            ("endpoint-controller", "workload-high"),
        ),
        (
            class(&pods, &ks_sa, "get"),
            ("kube-system-service-accounts", "workload-high"),
        ),
        (
            class(&pods, &sa, "get"),
            ("service-accounts", "workload-low"),
        ),
        (
            class(&pods, &dev, "get"),
            ("global-default", "global-default"),
        ),
        (class(&url("/healthz"), &anon, "get"), ("probes", "exempt")),
        // A URL rule also covers its sub-paths.
        (
            class(&url("/readyz/etcd"), &dev, "get"),
            ("probes", "exempt"),
        ),
        (
            class(&url("/version"), &anon, "get"),
            ("global-default", "global-default"),
        ),
    ];
    for (got, want) in cases {
        assert_eq!((got.0.as_str(), got.1.as_str()), want);
    }
    // Cluster-scoped requests need clusterScope: a node's lease rule is namespaced only.
    let cluster_leases = resource("list", "coordination.k8s.io", "leases", "", "");
    assert_eq!(class(&cluster_leases, &node, "get").0, "system-nodes");
}

#[test]
fn nominal_limits_are_the_levels_shares_of_the_server() {
    let (levels, schemas) = defaults();
    let apf = Apf::fixed(600, Duration::from_secs(60), &levels, &schemas);
    let mut limits = apf.limits();
    limits.sort();
    assert_eq!(
        limits,
        vec![
            ("catch-all".to_string(), 13),
            ("exempt".to_string(), 0),
            ("global-default".to_string(), 49),
            ("leader-election".to_string(), 25),
            ("node-high".to_string(), 98),
            ("system".to_string(), 74),
            ("workload-high".to_string(), 98),
            ("workload-low".to_string(), 245),
        ]
    );
    // Without any stored object, the mandatory ones act as defined: catch-all takes it all.
    let bare = Apf::fixed(600, Duration::from_secs(60), &[], &[]);
    let dev = user("alice", &["system:authenticated"]);
    let info = resource("get", "", "pods", "", "default");
    let (s, _) = bare
        .classify(&Request {
            info: &info,
            user: &dev,
            method: "get",
        })
        .unwrap();
    assert_eq!(
        (s.name.as_str(), s.level.name.as_str()),
        ("catch-all", "catch-all")
    );
    assert!(bare.limits().contains(&("catch-all".to_string(), 600)));
}

/// A flow hash whose hand (8 queues, hands of 2) shares no queue with `other`'s.
fn disjoint_from(other: u64) -> u64 {
    let a = deal(other, 8, 2);
    (1..u64::MAX)
        .find(|h| deal(*h, 8, 2).iter().all(|c| !a.contains(c)))
        .expect("a disjoint hand")
}

#[test]
fn fair_queuing_serves_a_quiet_flow_before_a_flood() {
    let mode = Mode::Queue {
        queues: 8,
        hand: 2,
        length: 50,
    };
    let mut qs = QueueSet::new(mode, 1);
    let flood = 0;
    let quiet = disjoint_from(flood);
    // Six flood requests: one runs at once on the only seat, five wait (spread over the
    // flood's hand of two queues); then one request of a quiet flow.
    let mut waiting = Vec::new();
    let mut running = None;
    for i in 0..6 {
        let Start::Wait(mut rx, q, _) = qs.start(1, flood) else {
            panic!("queued levels queue");
        };
        if i == 0 {
            assert!(rx.try_recv().is_ok(), "a free seat dispatches at once");
            running = Some(q);
        } else {
            waiting.push(("flood", rx, q));
        }
    }
    assert_eq!((qs.seats_in_use(), qs.waiting()), (1, 5));
    let Start::Wait(rx, q, _) = qs.start(1, quiet) else {
        panic!("queued");
    };
    waiting.push(("quiet", rx, q));
    // Finish one request at a time and see who goes next.
    let mut order = Vec::new();
    while !waiting.is_empty() {
        qs.finish(1, running, Duration::from_millis(1));
        let next = waiting
            .iter_mut()
            .position(|(_, rx, _)| rx.try_recv().is_ok())
            .expect("a finish dispatches the next request");
        let (who, _, q) = waiting.remove(next);
        order.push(who);
        running = Some(q);
    }
    // The quiet flow is not served last behind the flood: it gets its fair share, one turn
    // in three (the flood holds two queues, it one).
    let at = order.iter().position(|w| *w == "quiet").unwrap();
    assert!(at <= 2, "dispatch order {order:?}");
}

#[test]
fn full_queues_and_levels_without_queues_refuse() {
    let mut qs = QueueSet::new(
        Mode::Queue {
            queues: 1,
            hand: 1,
            length: 2,
        },
        1,
    );
    let mut held = Vec::new();
    for _ in 0..3 {
        match qs.start(1, 5) {
            Start::Wait(rx, q, id) => held.push((rx, q, id)),
            _ => panic!("queued"),
        }
    }
    // One running, two waiting: the queue is full while no seat is free.
    assert!(matches!(
        qs.start(1, 5),
        Start::Reject(Rejection::QueueFull)
    ));
    // A withdrawn waiter leaves room.
    let (_, q, id) = &held[2];
    assert!(qs.withdraw(*q, *id));
    assert!(!qs.withdraw(*q, *id));
    assert!(matches!(qs.start(1, 5), Start::Wait(..)));

    let mut reject = QueueSet::new(Mode::Reject, 2);
    assert!(matches!(reject.start(1, 0), Start::Run(None)));
    assert!(matches!(reject.start(1, 0), Start::Run(None)));
    assert!(matches!(
        reject.start(1, 0),
        Start::Reject(Rejection::ConcurrencyLimit)
    ));
    reject.finish(1, None, Duration::ZERO);
    assert!(matches!(reject.start(1, 0), Start::Run(None)));
    // A request wider than the limit runs alone.
    let mut wide = QueueSet::new(Mode::Reject, 2);
    assert!(matches!(wide.start(5, 0), Start::Run(None)));
    assert!(matches!(wide.start(1, 0), Start::Reject(_)));
    let mut exempt = QueueSet::new(Mode::Exempt, 0);
    for _ in 0..100 {
        assert!(matches!(exempt.start(10, 0), Start::Run(None)));
    }
}

#[test]
fn retry_after_doubles_under_sustained_drops_and_falls_back() {
    let mut r = RetryAfter::default();
    assert_eq!(r.record(100), 1);
    for _ in 0..5 {
        r.record(100);
    }
    // Six drops in the last second (≥ 3 × 1): doubled.
    assert_eq!(r.record(101), 2);
    // A quiet spell brings it back down, one second at a time.
    assert_eq!(r.record(110), 1);
}

fn ok() -> axum::response::Response {
    axum::response::Response::new(axum::body::Body::from("ok"))
}

/// A gate the held requests wait at; once opened it stays open.
fn gate() -> (
    tokio::sync::watch::Sender<bool>,
    tokio::sync::watch::Receiver<bool>,
) {
    tokio::sync::watch::channel(false)
}

#[tokio::test]
async fn a_flood_of_lists_from_one_user_does_not_starve_node_heartbeats() {
    let (levels, schemas) = defaults();
    // 6 seats: global-default and node-high get one each; a queued request waits 0.5 s.
    let apf = Apf::fixed(6, Duration::from_secs(2), &levels, &schemas);
    let flooder = user("flooder", &["system:authenticated"]);
    let node = user("system:node:n1", &["system:nodes", "system:authenticated"]);
    let list = resource("list", "", "pods", "", "");
    let lease = resource(
        "update",
        "coordination.k8s.io",
        "leases",
        "",
        "kube-node-lease",
    );
    let (open, held) = gate();
    let mut flood = Vec::new();
    for _ in 0..20 {
        let (apf, flooder, list, mut held) =
            (apf.clone(), flooder.clone(), list.clone(), held.clone());
        flood.push(tokio::spawn(async move {
            let r = Request {
                info: &list,
                user: &flooder,
                method: "get",
            };
            apf.handle(r, None, || async move {
                let _ = held.wait_for(|o| *o).await;
                ok()
            })
            .await
            .status()
        }));
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    // The flood holds its level; a node's lease renewal runs at once on its own.
    for _ in 0..5 {
        let r = Request {
            info: &lease,
            user: &node,
            method: "put",
        };
        let resp = apf.handle(r, None, || async { ok() }).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(
            resp.headers()["x-kubernetes-pf-flowschema-uid"],
            "uid-system-node-high"
        );
        assert_eq!(
            resp.headers()["x-kubernetes-pf-prioritylevel-uid"],
            "uid-node-high"
        );
    }
    // The flood's excess waits half a second in its queues, then is refused; the gate opens
    // long after that.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _ = open.send(true);
    let mut codes = Vec::new();
    for f in flood {
        codes.push(f.await.unwrap().as_u16());
    }
    let served = codes.iter().filter(|c| **c == 200).count();
    let refused = codes.iter().filter(|c| **c == 429).count();
    assert_eq!(served + refused, 20, "{codes:?}");
    assert!(served >= 1 && refused >= 10, "{codes:?}");

    // A refusal is a plain-text 429 with Retry-After and the classification's headers.
    let (open, held) = gate();
    let blocker = {
        let (apf, flooder, list, mut held) =
            (apf.clone(), flooder.clone(), list.clone(), held.clone());
        tokio::spawn(async move {
            let r = Request {
                info: &list,
                user: &flooder,
                method: "get",
            };
            apf.handle(r, None, || async move {
                let _ = held.wait_for(|o| *o).await;
                ok()
            })
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let r = Request {
        info: &list,
        user: &flooder,
        method: "get",
    };
    let resp = apf.handle(r, None, || async { ok() }).await;
    assert_eq!(resp.status(), 429);
    assert!(resp.headers().contains_key("retry-after"));
    assert_eq!(resp.headers()["content-type"], "text/plain; charset=utf-8");
    assert_eq!(
        resp.headers()["x-kubernetes-pf-prioritylevel-uid"],
        "uid-global-default"
    );
    let _ = open.send(true);
    assert_eq!(blocker.await.unwrap().status(), 200);
}

#[tokio::test]
async fn a_queued_request_that_goes_away_gives_its_place_back() {
    let (levels, schemas) = defaults();
    // global-default has one seat; a queued request waits up to 2.5 s.
    let apf = Apf::fixed(6, Duration::from_secs(10), &levels, &schemas);
    let dev = user("dev", &["system:authenticated"]);
    let list = resource("list", "", "pods", "", "");
    let (open, held) = gate();
    let holder = {
        let (apf, dev, list, mut held) = (apf.clone(), dev.clone(), list.clone(), held.clone());
        tokio::spawn(async move {
            let r = Request {
                info: &list,
                user: &dev,
                method: "get",
            };
            apf.handle(r, None, || async move {
                let _ = held.wait_for(|o| *o).await;
                ok()
            })
            .await
            .status()
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let level = apf.levels.lock()["global-default"].clone();
    // A second request queues; its client goes away (the future is dropped).
    let queued = {
        let (apf, dev, list) = (apf.clone(), dev.clone(), list.clone());
        tokio::spawn(async move {
            let r = Request {
                info: &list,
                user: &dev,
                method: "get",
            };
            apf.handle(r, None, || async { ok() }).await.status()
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(level.qs.lock().waiting(), 1);
    queued.abort();
    let _ = queued.await;
    assert_eq!(level.qs.lock().waiting(), 0, "withdrawn from its queue");
    let _ = open.send(true);
    assert_eq!(holder.await.unwrap(), 200);
    assert_eq!(level.qs.lock().seats_in_use(), 0, "every seat given back");
    // The level still serves.
    let r = Request {
        info: &list,
        user: &dev,
        method: "get",
    };
    assert_eq!(apf.handle(r, None, || async { ok() }).await.status(), 200);
}

#[test]
fn flow_control_objects_are_validated_as_upstream() {
    let check = |kind: &str, mut obj: Value| {
        let mut causes = Vec::new();
        if kind == "level" {
            config::default_level(&mut obj);
            config::validate_level(&obj, &mut causes);
        } else {
            config::default_schema(&mut obj);
            config::validate_schema(&obj, &mut causes);
        }
        causes
            .into_iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect::<Vec<_>>()
            .join("\n")
    };
    for l in bootstrap::mandatory_levels()
        .into_iter()
        .chain(bootstrap::suggested_levels())
    {
        assert_eq!(check("level", l), "");
    }
    for s in bootstrap::mandatory_schemas()
        .into_iter()
        .chain(bootstrap::suggested_schemas())
    {
        assert_eq!(check("schema", s), "");
    }
    let queued = |q: Value| json!({"metadata": {"name": "x"}, "spec": {"type": "Limited", "limited": {"limitResponse": {"type": "Queue", "queuing": q}}}});
    // Defaults fill zeros as upstream.
    let mut d = queued(json!({}));
    config::default_level(&mut d);
    assert_eq!(d["spec"]["limited"]["nominalConcurrencyShares"], 30);
    assert_eq!(
        d["spec"]["limited"]["limitResponse"]["queuing"],
        json!({"queues": 64, "handSize": 8, "queueLengthLimit": 50})
    );
    assert!(
        check("level", queued(json!({"queues": 4, "handSize": 8})))
            .contains("should not be greater than queues (4)")
    );
    assert!(
        check("level", queued(json!({"queues": 1_000_000_000}))).contains("must be at most 65536")
    );
    assert!(
        check("level", queued(json!({"queues": 65536, "handSize": 8}))).contains("entropy bits")
    );
    assert!(
        check(
            "level",
            json!({"metadata": {"name": "x"}, "spec": {"type": "Exempt"}})
        )
        .contains("only the priority level named \"exempt\"")
    );
    assert!(check("level", json!({"metadata": {"name": "x"}, "spec": {"type": "Limited", "limited": {"lendablePercent": 101, "limitResponse": {"type": "Reject"}}}})).contains("between 0 and 100"));
    let schema = |spec: Value| json!({"metadata": {"name": "s"}, "spec": spec});
    assert!(
        check(
            "schema",
            schema(
                json!({"priorityLevelConfiguration": {"name": "p"}, "matchingPrecedence": 20000})
            )
        )
        .contains("between 1 and 10000")
    );
    assert!(
        check("schema", schema(json!({"matchingPrecedence": 5})))
            .contains("spec.priorityLevelConfiguration.name")
    );
    assert!(check("schema", schema(json!({"priorityLevelConfiguration": {"name": "p"}, "rules": [{"subjects": [{"kind": "Robot"}], "resourceRules": [{"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]}]}]}))).contains("Unsupported value: \"Robot\""));
    assert!(check("schema", schema(json!({"priorityLevelConfiguration": {"name": "p"}, "rules": [{"subjects": [{"kind": "User", "user": {"name": "u"}}], "resourceRules": [{"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]}]}]}))).contains("must supply at least one namespace"));
}
