//! Per-plugin tests: filter verdicts with their exact upstream reasons, and scores, over small
//! node and pod sets.

use serde_json::json;

use super::*;
use crate::framework::{Code, Listers, Snapshot};
use crate::testing::{filter, info, node, node_info, node_with, pod, scores};

fn snap(nodes: Vec<crate::types::NodeInfo>) -> Snapshot {
    Snapshot::from_nodes(nodes)
}

#[test]
fn node_name() {
    let s = snap(vec![node_info(node("a", "1", "1Gi", json!({})), vec![])]);
    let p = info(pod("p", "", "", json!({"spec": {"nodeName": "b"}})));
    let st = filter(&nodename::NodeName, &p, &s, "a");
    assert_eq!(st.code, Code::UnschedulableAndUnresolvable);
    assert_eq!(st.reasons, [nodename::ERR_REASON]);
    assert_eq!(
        nodename::ERR_REASON,
        "node(s) didn't match the requested node name"
    );
    let p = info(pod("p", "", "", json!({"spec": {"nodeName": "a"}})));
    assert!(filter(&nodename::NodeName, &p, &s, "a").is_ok());
}

#[test]
fn node_unschedulable() {
    let n = node_with(
        "a",
        "1",
        "1Gi",
        json!({}),
        json!({"spec": {"unschedulable": true}}),
    );
    let s = snap(vec![node_info(n, vec![])]);
    let st = filter(
        &nodeunschedulable::NodeUnschedulable,
        &info(pod("p", "", "", json!({}))),
        &s,
        "a",
    );
    assert_eq!(st.reasons, ["node(s) were unschedulable"]);
    assert_eq!(st.code, Code::UnschedulableAndUnresolvable);
    let tolerant = pod(
        "p",
        "",
        "",
        json!({"spec": {"tolerations": [{"key": "node.kubernetes.io/unschedulable", "operator": "Exists", "effect": "NoSchedule"}]}}),
    );
    assert!(
        filter(
            &nodeunschedulable::NodeUnschedulable,
            &info(tolerant),
            &s,
            "a"
        )
        .is_ok()
    );
}

#[test]
fn node_ports() {
    let user = pod(
        "u",
        "",
        "",
        json!({"spec": {"containers": [{"name": "c", "ports": [{"containerPort": 80, "hostPort": 8080}]}]}}),
    );
    let s = snap(vec![
        node_info(node("a", "1", "1Gi", json!({})), vec![user]),
        node_info(node("b", "1", "1Gi", json!({})), vec![]),
    ]);
    let want = |ip: &str, proto: &str| {
        info(pod(
            "p",
            "",
            "",
            json!({"spec": {"containers": [{"name": "c", "ports": [{"containerPort": 1, "hostPort": 8080, "hostIP": ip, "protocol": proto}]}]}}),
        ))
    };
    let st = filter(&nodeports::NodePorts, &want("127.0.0.1", "TCP"), &s, "a");
    assert_eq!(
        st.reasons,
        ["node(s) didn't have free ports for the requested pod ports"]
    );
    assert_eq!(st.code, Code::Unschedulable);
    assert!(filter(&nodeports::NodePorts, &want("", "UDP"), &s, "a").is_ok());
    assert!(filter(&nodeports::NodePorts, &want("", "TCP"), &s, "b").is_ok());
}

#[test]
fn taint_toleration() {
    let tainted = node_with(
        "a",
        "1",
        "1Gi",
        json!({}),
        json!({"spec": {"taints": [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]}}),
    );
    let soft = node_with(
        "b",
        "1",
        "1Gi",
        json!({}),
        json!({"spec": {"taints": [{"key": "spot", "effect": "PreferNoSchedule"}]}}),
    );
    let s = snap(vec![
        node_info(tainted, vec![]),
        node_info(soft, vec![]),
        node_info(node("c", "1", "1Gi", json!({})), vec![]),
    ]);
    let plain = info(pod("p", "", "", json!({})));
    let st = filter(&tainttoleration::TaintToleration, &plain, &s, "a");
    assert_eq!(
        st.reasons,
        ["node(s) had untolerated taint {dedicated: gpu}"]
    );
    assert_eq!(st.code, Code::UnschedulableAndUnresolvable);
    assert!(filter(&tainttoleration::TaintToleration, &plain, &s, "b").is_ok());
    let tol = info(pod(
        "p",
        "",
        "",
        json!({"spec": {"tolerations": [{"key": "dedicated", "operator": "Equal", "value": "gpu"}]}}),
    ));
    assert!(filter(&tainttoleration::TaintToleration, &tol, &s, "a").is_ok());
    // PreferNoSchedule: the untainted nodes score best.
    assert_eq!(
        scores(&tainttoleration::TaintToleration, &plain, &s),
        [100, 0, 100]
    );
}

#[test]
fn node_affinity() {
    let s = snap(vec![
        node_info(
            node("a", "1", "1Gi", json!({"zone": "z1", "disk": "ssd"})),
            vec![],
        ),
        node_info(node("b", "1", "1Gi", json!({"zone": "z2"})), vec![]),
    ]);
    let pl = nodeaffinity::NodeAffinity::new(None).unwrap();
    let sel = info(pod(
        "p",
        "",
        "",
        json!({"spec": {"nodeSelector": {"disk": "ssd"}}}),
    ));
    assert!(filter(&pl, &sel, &s, "a").is_ok());
    let st = filter(&pl, &sel, &s, "b");
    assert_eq!(
        st.reasons,
        ["node(s) didn't match Pod's node affinity/selector"]
    );
    assert_eq!(st.code, Code::UnschedulableAndUnresolvable);
    let req = info(pod(
        "p",
        "",
        "",
        json!({"spec": {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["z2"]}]}
        ]}}}}}),
    ));
    assert!(!filter(&pl, &req, &s, "a").is_ok());
    assert!(filter(&pl, &req, &s, "b").is_ok());
    // matchFields on metadata.name narrows the nodes in PreFilter (DaemonSet pods).
    let pinned = info(pod(
        "p",
        "",
        "",
        json!({"spec": {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["b"]}]}
        ]}}}}}),
    ));
    assert!(!filter(&pl, &pinned, &s, "a").is_ok());
    assert!(filter(&pl, &pinned, &s, "b").is_ok());
    let pref = info(pod(
        "p",
        "",
        "",
        json!({"spec": {"affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 10, "preference": {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["z2"]}]}},
            {"weight": 5, "preference": {"matchExpressions": [{"key": "disk", "operator": "Exists"}]}}
        ]}}}}),
    ));
    assert_eq!(scores(&pl, &pref, &s), [50, 100]);
    // addedAffinity applies to every pod.
    let added = nodeaffinity::NodeAffinity::new(Some(&json!({"addedAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["z1"]}]}]}}})))
    .unwrap();
    let plain = info(pod("p", "", "", json!({})));
    assert!(filter(&added, &plain, &s, "a").is_ok());
    assert!(!filter(&added, &plain, &s, "b").is_ok());
}

#[test]
fn node_resources_fit() {
    let busy = pod("busy", "1500m", "1Gi", json!({}));
    let s = snap(vec![
        node_info(node("a", "2", "2Gi", json!({})), vec![busy]),
        node_info(node("b", "2", "4Gi", json!({})), vec![]),
    ]);
    let fit = noderesources::Fit::new(None).unwrap();
    let big = info(pod("p", "1", "1536Mi", json!({})));
    let st = filter(&fit, &big, &s, "a");
    assert_eq!(st.reasons, ["Insufficient cpu", "Insufficient memory"]);
    assert_eq!(st.code, Code::Unschedulable);
    assert!(filter(&fit, &big, &s, "b").is_ok());
    let gpu = info(pod(
        "p",
        "",
        "",
        json!({"spec": {"containers": [{"name": "c", "resources": {"requests": {"example.com/gpu": "1"}}}]}}),
    ));
    assert_eq!(
        filter(&fit, &gpu, &s, "b").reasons,
        ["Insufficient example.com/gpu"]
    );
    let ignoring =
        noderesources::Fit::new(Some(&json!({"ignoredResourceGroups": ["example.com"]}))).unwrap();
    assert!(filter(&ignoring, &gpu, &s, "b").is_ok());
    let tiny = node_with(
        "t",
        "1",
        "1Gi",
        json!({}),
        json!({"status": {"allocatable": {"pods": "1"}}}),
    );
    let ts = snap(vec![node_info(tiny, vec![pod("x", "", "", json!({}))])]);
    assert_eq!(
        filter(&fit, &info(pod("p", "", "", json!({}))), &ts, "t").reasons,
        ["Too many pods"]
    );

    // LeastAllocated prefers the emptier node, MostAllocated the fuller one.
    let small = info(pod("p", "100m", "128Mi", json!({})));
    let least = scores(&fit, &small, &s);
    assert!(least[1] > least[0], "{least:?}");
    let most =
        noderesources::Fit::new(Some(&json!({"scoringStrategy": {"type": "MostAllocated"}})))
            .unwrap();
    let m = scores(&most, &small, &s);
    assert!(m[0] > m[1], "{m:?}");
    // Upstream's arithmetic: node b, cpu (100m of 2000m) -> 95, memory (128Mi of 4Gi) -> 96.
    assert_eq!(least[1], (95 + 96) / 2);
    let rtcr = noderesources::Fit::new(Some(&json!({"scoringStrategy": {"type": "RequestedToCapacityRatio",
        "requestedToCapacityRatio": {"shape": [{"utilization": 0, "score": 0}, {"utilization": 100, "score": 10}]}}})))
    .unwrap();
    let r = scores(&rtcr, &small, &s);
    assert!(r[0] > r[1], "{r:?}");
    assert!(
        noderesources::Fit::new(Some(
            &json!({"scoringStrategy": {"type": "RequestedToCapacityRatio"}})
        ))
        .is_err()
    );
}

#[test]
fn balanced_allocation() {
    let s = snap(vec![
        node_info(
            node("a", "4", "4Gi", json!({})),
            vec![pod("x", "3", "", json!({}))],
        ),
        node_info(
            node("b", "4", "4Gi", json!({})),
            vec![pod("y", "1", "1Gi", json!({}))],
        ),
    ]);
    let pl = noderesources::BalancedAllocation::new(None).unwrap();
    let p = info(pod("p", "1", "1Gi", json!({})));
    let sc = scores(&pl, &p, &s);
    // a: cpu 4/4 = 1.0, mem 1/4 -> std 0.375 -> 62; b: 2/4 and 2/4 -> 100.
    assert_eq!(sc, [62, 100]);
    let none = info(pod("p", "", "", json!({})));
    assert_eq!(scores(&pl, &none, &s), [0, 0], "skipped without requests");
}

fn zone_nodes() -> Vec<crate::types::NodeInfo> {
    vec![
        node_info(
            node(
                "a",
                "4",
                "4Gi",
                json!({"topology.kubernetes.io/zone": "z1"}),
            ),
            vec![],
        ),
        node_info(
            node(
                "b",
                "4",
                "4Gi",
                json!({"topology.kubernetes.io/zone": "z2"}),
            ),
            vec![],
        ),
        node_info(
            node(
                "c",
                "4",
                "4Gi",
                json!({"topology.kubernetes.io/zone": "z2"}),
            ),
            vec![],
        ),
    ]
}

fn web(name: &str) -> k8s_openapi::api::core::v1::Pod {
    pod(
        name,
        "",
        "",
        json!({"metadata": {"labels": {"app": "web"}}}),
    )
}

#[test]
fn inter_pod_affinity() {
    let pl = interpodaffinity::InterPodAffinity::new(None, Listers::empty()).unwrap();
    let mut nodes = zone_nodes();
    nodes[0].add_pod(info(web("w1")));
    let s = snap(nodes);
    let term = json!({"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": "topology.kubernetes.io/zone"});
    let anti = info(pod(
        "p",
        "",
        "",
        json!({"spec": {"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term]}}}}),
    ));
    let st = filter(&pl, &anti, &s, "a");
    assert_eq!(st.reasons, ["node(s) didn't match pod anti-affinity rules"]);
    assert_eq!(st.code, Code::Unschedulable);
    assert!(filter(&pl, &anti, &s, "b").is_ok());
    let aff = info(pod(
        "p",
        "",
        "",
        json!({"spec": {"affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term]}}}}),
    ));
    assert!(filter(&pl, &aff, &s, "a").is_ok());
    let st = filter(&pl, &aff, &s, "b");
    assert_eq!(st.reasons, ["node(s) didn't match pod affinity rules"]);
    assert_eq!(st.code, Code::UnschedulableAndUnresolvable);
    // An existing pod's anti-affinity keeps matching pods out of its zone.
    let mut nodes = zone_nodes();
    nodes[1].add_pod(info(pod("guard", "", "", json!({"spec": {"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term]}}}}))));
    let s2 = snap(nodes);
    let w = info(web("w2"));
    let st = filter(&pl, &w, &s2, "c");
    assert_eq!(
        st.reasons,
        ["node(s) didn't satisfy existing pods anti-affinity rules"]
    );
    assert!(filter(&pl, &w, &s2, "a").is_ok());
    // The first pod of a self-affine group may go anywhere.
    let first = info(pod(
        "f",
        "",
        "",
        json!({"metadata": {"labels": {"app": "db"}}, "spec": {"affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": "topology.kubernetes.io/zone"}]}}}}),
    ));
    assert!(filter(&pl, &first, &s, "b").is_ok());
    // Preferred anti-affinity scores the occupied zone lowest.
    let pref = info(pod(
        "p",
        "",
        "",
        json!({"spec": {"affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": 100, "podAffinityTerm": term}]}}}}),
    ));
    assert_eq!(scores(&pl, &pref, &s), [0, 100, 100]);
}

#[test]
fn pod_topology_spread() {
    let pl = podtopologyspread::PodTopologySpread::new(None, Listers::empty()).unwrap();
    let mut nodes = zone_nodes();
    nodes[0].add_pod(info(web("w1")));
    nodes[0].add_pod(info(web("w2")));
    let s = snap(nodes);
    let spread = |when: &str| {
        info(pod(
            "p",
            "",
            "",
            json!({"metadata": {"labels": {"app": "web"}}, "spec": {"topologySpreadConstraints": [
                {"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": when,
                 "labelSelector": {"matchLabels": {"app": "web"}}}]}}),
        ))
    };
    let hard = spread("DoNotSchedule");
    let st = filter(&pl, &hard, &s, "a");
    assert_eq!(
        st.reasons,
        ["node(s) didn't match pod topology spread constraints"]
    );
    assert_eq!(st.code, Code::Unschedulable);
    assert!(filter(&pl, &hard, &s, "b").is_ok());
    let unlabeled = snap(vec![
        node_info(
            node(
                "a",
                "4",
                "4Gi",
                json!({"topology.kubernetes.io/zone": "z1"}),
            ),
            vec![],
        ),
        node_info(node("x", "4", "4Gi", json!({})), vec![]),
    ]);
    let st = filter(&pl, &hard, &unlabeled, "x");
    assert_eq!(
        st.reasons,
        ["node(s) didn't match pod topology spread constraints (missing required label)"]
    );
    assert_eq!(st.code, Code::UnschedulableAndUnresolvable);
    // minDomains: with fewer domains than asked, the global minimum counts as 0.
    let md = info(pod(
        "p",
        "",
        "",
        json!({"metadata": {"labels": {"app": "web"}}, "spec": {"topologySpreadConstraints": [
        {"maxSkew": 2, "minDomains": 3, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "DoNotSchedule",
         "labelSelector": {"matchLabels": {"app": "web"}}}]}}),
    ));
    assert!(!filter(&pl, &md, &s, "a").is_ok(), "2 + 1 - 0 > 2");
    // Soft: the empty zone scores best.
    let soft = spread("ScheduleAnyway");
    let sc = scores(&pl, &soft, &s);
    assert!(sc[1] > sc[0] && sc[2] > sc[0], "{sc:?}");
    assert!(podtopologyspread::PodTopologySpread::new(
        Some(&json!({"defaultingType": "List", "defaultConstraints": [{"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "DoNotSchedule"}]})),
        Listers::empty()
    )
    .is_err());
}

#[test]
fn scheduling_gates() {
    let gated = info(pod(
        "p",
        "",
        "",
        json!({"spec": {"schedulingGates": [{"name": "example.com/wait"}]}}),
    ));
    let pl = schedulinggates::SchedulingGates;
    use crate::framework::Plugin;
    assert!(!pl.pre_enqueue(&gated).is_ok());
    assert!(pl.pre_enqueue(&info(pod("p", "", "", json!({})))).is_ok());
}

#[test]
fn volume_restrictions_disk_conflict() {
    let disk =
        json!({"spec": {"volumes": [{"name": "d", "gcePersistentDisk": {"pdName": "data"}}]}});
    let s = snap(vec![
        node_info(
            node("a", "1", "1Gi", json!({})),
            vec![pod("u", "", "", disk.clone())],
        ),
        node_info(node("b", "1", "1Gi", json!({})), vec![]),
    ]);
    let pl = volumerestrictions::VolumeRestrictions::new(Listers::empty());
    let p = info(pod("p", "", "", disk));
    assert_eq!(
        filter(&pl, &p, &s, "a").reasons,
        ["node(s) had no available disk"]
    );
    assert!(filter(&pl, &p, &s, "b").is_ok());
}

#[test]
fn volume_binding_reasons() {
    let pl = volumebinding::VolumeBinding::new(Listers::empty(), None);
    let s = snap(vec![node_info(node("a", "1", "1Gi", json!({})), vec![])]);
    let p = info(pod(
        "p",
        "",
        "",
        json!({"spec": {"volumes": [{"name": "v", "persistentVolumeClaim": {"claimName": "data"}}]}}),
    ));
    let st = filter(&pl, &p, &s, "a");
    assert_eq!(st.reasons, ["persistentvolumeclaim \"data\" not found"]);
    assert_eq!(st.code, Code::UnschedulableAndUnresolvable);
    assert!(filter(&pl, &info(pod("p", "", "", json!({}))), &s, "a").is_ok());
}

#[test]
fn preemption_picks_the_cheapest_node() {
    use crate::framework::{CycleState, NodeStatuses, Plugin};
    let fw = crate::testing::default_framework();
    let low = |n: &str, prio: i32| pod(n, "1", "", json!({"spec": {"priority": prio}}));
    let s = snap(vec![
        node_info(
            node("a", "2", "4Gi", json!({})),
            vec![low("a1", 100), low("a2", 100)],
        ),
        node_info(
            node("b", "2", "4Gi", json!({})),
            vec![low("b1", 10), low("b2", 1000)],
        ),
        node_info(
            node("c", "2", "4Gi", json!({})),
            vec![low("c1", 5000), low("c2", 5000)],
        ),
    ]);
    let p = info(pod("p", "1", "", json!({"spec": {"priority": 2000}})));
    let mut st = CycleState::default();
    let (_, pre) = fw.run_pre_filter(&mut st, &p, &s);
    assert!(pre.is_ok());
    let mut statuses = NodeStatuses::default();
    for n in s.nodes.iter() {
        statuses.insert(n.name.clone(), fw.run_filters(&st, &p, n));
    }
    assert!(statuses.values().all(|s| s.reasons == ["Insufficient cpu"]));
    let pl = defaultpreemption::DefaultPreemption::new(None, Listers::empty()).unwrap();
    let (res, status) = pl.post_filter(&st, &p, &s, &statuses, &fw);
    assert!(status.is_ok(), "{status:?}");
    // Node b: one victim of priority 10 beats node a (highest victim priority 100).
    assert_eq!(res.nominated_node.as_deref(), Some("b"));
    assert_eq!(
        res.victims
            .iter()
            .map(|v| v.name.as_str())
            .collect::<Vec<_>>(),
        ["b1"]
    );
    // A pod that may not preempt says so.
    let never = info(pod(
        "n",
        "1",
        "",
        json!({"spec": {"priority": 2000, "preemptionPolicy": "Never"}}),
    ));
    let (res, status) = pl.post_filter(&st, &never, &s, &statuses, &fw);
    assert!(!status.is_ok());
    assert_eq!(
        res.message,
        "preemption: not eligible due to preemptionPolicy=Never."
    );
    // Only higher-priority pods everywhere: no victims.
    let weak = info(pod("w", "1", "", json!({"spec": {"priority": 1}})));
    let (res, _) = pl.post_filter(&st, &weak, &s, &statuses, &fw);
    assert_eq!(
        res.message,
        "preemption: 0/3 nodes are available: 3 No preemption victims found for incoming pod."
    );
}

#[test]
fn topology_spread_memo_sees_changes() {
    // One plugin instance across cycles: counts kept per node must follow node changes.
    let pl = podtopologyspread::PodTopologySpread::new(None, Listers::empty()).unwrap();
    let hard = info(pod(
        "p",
        "",
        "",
        json!({"metadata": {"labels": {"app": "web"}}, "spec": {"topologySpreadConstraints": [
            {"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "DoNotSchedule",
             "labelSelector": {"matchLabels": {"app": "web"}}}]}}),
    ));
    let nodes = zone_nodes();
    let s1 = snap(nodes.clone());
    assert!(filter(&pl, &hard, &s1, "a").is_ok());
    let mut more = nodes;
    more[0].add_pod(info(web("w1")));
    more[0].add_pod(info(web("w2")));
    let s2 = snap(more.clone());
    assert!(
        !filter(&pl, &hard, &s2, "a").is_ok(),
        "the new pods are counted"
    );
    more[0].remove_pod("default/w1");
    more[0].remove_pod("default/w2");
    let s3 = snap(more);
    assert!(
        filter(&pl, &hard, &s3, "a").is_ok(),
        "and their removal too"
    );
}

#[test]
fn preemption_prefers_nodes_without_pdb_violations() {
    use crate::framework::{CycleState, NodeStatuses, Plugin};
    use k8s_openapi::api::policy::v1::PodDisruptionBudget;
    use kube::runtime::reflector;
    use kube::runtime::watcher::Event;
    let (pdbs, mut writer) = reflector::store::<PodDisruptionBudget>();
    let pdb: PodDisruptionBudget = serde_json::from_value(json!({
        "metadata": {"name": "keep-db", "namespace": "default"},
        "spec": {"selector": {"matchLabels": {"app": "db"}}},
        "status": {"disruptionsAllowed": 0, "currentHealthy": 1, "desiredHealthy": 1, "expectedPods": 1}
    }))
    .unwrap();
    writer.apply_watcher_event(&Event::Apply(pdb));
    let listers = Listers {
        pdbs,
        ..Listers::empty()
    };
    let fw = crate::testing::framework_with(listers.clone());
    // Node a's victim is protected by a PDB; node b's victim has a higher priority but no PDB.
    let s = snap(vec![
        node_info(
            node("a", "1", "4Gi", json!({})),
            vec![pod(
                "db",
                "1",
                "",
                json!({"metadata": {"labels": {"app": "db"}}, "spec": {"priority": 10}}),
            )],
        ),
        node_info(
            node("b", "1", "4Gi", json!({})),
            vec![pod("batch", "1", "", json!({"spec": {"priority": 50}}))],
        ),
    ]);
    let p = info(pod("p", "1", "", json!({"spec": {"priority": 100}})));
    let mut st = CycleState::default();
    assert!(fw.run_pre_filter(&mut st, &p, &s).1.is_ok());
    let mut statuses = NodeStatuses::default();
    for n in s.nodes.iter() {
        statuses.insert(n.name.clone(), fw.run_filters(&st, &p, n));
    }
    let pl = defaultpreemption::DefaultPreemption::new(None, listers).unwrap();
    let (res, status) = pl.post_filter(&st, &p, &s, &statuses, &fw);
    assert!(status.is_ok());
    assert_eq!(
        res.nominated_node.as_deref(),
        Some("b"),
        "no PDB is broken on b"
    );
    assert_eq!(res.victims[0].name, "batch");
}

#[test]
fn inter_pod_affinity_memo_sees_changes() {
    // One plugin instance across cycles: per-node counts kept between them follow changes.
    let pl = interpodaffinity::InterPodAffinity::new(None, Listers::empty()).unwrap();
    let term = json!({"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": "topology.kubernetes.io/zone"});
    let anti = info(pod(
        "p",
        "",
        "",
        json!({"spec": {"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term]}}}}),
    ));
    let aff = info(pod(
        "q",
        "",
        "",
        json!({"spec": {"affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term]}}}}),
    ));
    let mut nodes = zone_nodes();
    nodes[2].add_pod(info(pod(
        "other",
        "",
        "",
        json!({"metadata": {"labels": {"app": "db"}}}),
    )));
    let s1 = snap(nodes.clone());
    assert!(filter(&pl, &anti, &s1, "b").is_ok());
    assert!(
        !filter(&pl, &aff, &s1, "b").is_ok(),
        "no web pod anywhere, and q is not one itself"
    );
    nodes[1].add_pod(info(web("w1")));
    let s2 = snap(nodes.clone());
    assert!(
        !filter(&pl, &anti, &s2, "c").is_ok(),
        "w1 in zone z2 is seen"
    );
    assert!(filter(&pl, &anti, &s2, "a").is_ok());
    assert!(filter(&pl, &aff, &s2, "c").is_ok());
    assert!(!filter(&pl, &aff, &s2, "a").is_ok());
    nodes[1].remove_pod("default/w1");
    let s3 = snap(nodes);
    assert!(filter(&pl, &anti, &s3, "c").is_ok(), "and its removal");
}

#[test]
fn a_volume_chosen_for_one_claim_is_not_offered_to_another_before_the_cache_shows_it() {
    use crate::framework::{CycleState, Plugin};
    use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
    use k8s_openapi::api::storage::v1::StorageClass;
    use kube::runtime::reflector;
    use kube::runtime::watcher::Event;
    let (storage_classes, mut w) = reflector::store::<StorageClass>();
    w.apply_watcher_event(&Event::Apply(
        serde_json::from_value(json!({"metadata": {"name": "local"},
            "provisioner": "kubernetes.io/no-provisioner", "volumeBindingMode": "WaitForFirstConsumer"}))
        .unwrap(),
    ));
    let (pvs, mut w) = reflector::store::<PersistentVolume>();
    w.apply_watcher_event(&Event::Apply(
        serde_json::from_value(json!({"metadata": {"name": "pv1", "resourceVersion": "7"},
            "spec": {"storageClassName": "local", "capacity": {"storage": "1Gi"},
                "accessModes": ["ReadWriteOnce"]}}))
        .unwrap(),
    ));
    let (pvcs, mut w) = reflector::store::<PersistentVolumeClaim>();
    for c in ["a", "b"] {
        w.apply_watcher_event(&Event::Apply(
            serde_json::from_value(json!({"metadata": {"name": c, "namespace": "default"},
                "spec": {"storageClassName": "local", "accessModes": ["ReadWriteOnce"],
                    "resources": {"requests": {"storage": "1Gi"}}}}))
            .unwrap(),
        ));
    }
    let pl = volumebinding::VolumeBinding::new(
        Listers {
            storage_classes,
            pvs,
            pvcs,
            ..Listers::empty()
        },
        None,
    );
    let s = snap(vec![node_info(node("n", "1", "1Gi", json!({})), vec![])]);
    let with_claim = |name: &str, claim: &str| {
        info(pod(
            name,
            "",
            "",
            json!({"spec": {"volumes": [{"name": "v", "persistentVolumeClaim": {"claimName": claim}}]}}),
        ))
    };
    let (pa, pb) = (with_claim("pa", "a"), with_claim("pb", "b"));
    assert!(filter(&pl, &pb, &s, "n").is_ok(), "pv1 is free");
    // pa takes pv1 at Reserve; its claimRef is not in the cache yet.
    let mut st = CycleState::default();
    assert!(pl.pre_filter(&mut st, &pa, &s).1.is_ok());
    assert!(pl.reserve(&mut st, &pa, s.get("n").unwrap()).is_ok());
    let st_b = filter(&pl, &pb, &s, "n");
    assert_eq!(st_b.reasons, [volumebinding::ERR_BIND_CONFLICT]);
    assert!(filter(&pl, &pa, &s, "n").is_ok(), "pa may still have it");
    // Its binding failed: pv1 is free again.
    pl.unreserve(&mut st, &pa, "n");
    assert!(filter(&pl, &pb, &s, "n").is_ok());
}

#[test]
fn image_locality_scores_by_size_and_spread() {
    use imagelocality::{ImageLocality, normalized};
    assert_eq!(normalized("nginx"), "nginx:latest");
    assert_eq!(
        normalized("registry:5000/team/app"),
        "registry:5000/team/app:latest"
    );
    assert_eq!(normalized("team/app:v1"), "team/app:v1");
    assert_eq!(normalized("app@sha256:0abc"), "app@sha256:0abc");
    const MIB: i64 = 1024 * 1024;
    let holding = |name: &str, images: serde_json::Value| {
        node_with(
            name,
            "1",
            "1Gi",
            json!({}),
            json!({"status": {"images": images}}),
        )
    };
    let nginx = json!([{"names": ["docker.io/library/nginx@sha256:0abc", "nginx:latest"], "sizeBytes": 500 * MIB},
                       {"names": ["huge:v1"], "sizeBytes": 3000 * MIB}]);
    let s = snap(vec![
        node_info(holding("a", nginx.clone()), vec![]),
        node_info(node("b", "1", "1Gi", json!({})), vec![]),
        node_info(holding("c", nginx), vec![]),
    ]);
    let with_image = |image: &str| {
        info(pod(
            "p",
            "",
            "",
            json!({"spec": {"containers": [{"name": "c", "image": image}]}}),
        ))
    };
    // 500 MiB held by 2 of 3 nodes: 333 MiB over the 23 MiB floor, out of 977 MiB.
    assert_eq!(
        scores(&ImageLocality, &with_image("nginx"), &s),
        [31, 0, 31]
    );
    // Another tag is another image.
    assert_eq!(
        scores(&ImageLocality, &with_image("nginx:1.25"), &s),
        [0, 0, 0]
    );
    // Past 1000 MiB per container the score is the maximum.
    assert_eq!(
        scores(&ImageLocality, &with_image("huge:v1"), &s),
        [100, 0, 100]
    );
    // Init containers count too, and raise the ceiling: two containers, one image held.
    let two = info(pod(
        "p",
        "",
        "",
        json!({"spec": {"initContainers": [{"name": "i", "image": "huge:v1"}],
                        "containers": [{"name": "c", "image": "busybox"}]}}),
    ));
    // 3000 MiB x 2/3 = 2000 MiB, over the floor by 1977 MiB out of 1977 MiB: the maximum.
    assert_eq!(scores(&ImageLocality, &two, &s), [100, 0, 100]);
}

#[test]
fn volume_zone_keeps_pods_in_their_volumes_zones() {
    use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
    use kube::runtime::reflector;
    use kube::runtime::watcher::Event;
    let (pvcs, mut claims) = reflector::store::<PersistentVolumeClaim>();
    let (pvs, mut volumes) = reflector::store::<PersistentVolume>();
    for (claim, volume, class) in [
        ("data", "pv-z12", ""),
        ("old", "pv-beta", ""),
        ("free", "", ""),
        ("later", "", "local"),
        ("now", "", "standard"),
        ("nowhere", "", "missing"),
    ] {
        let c: PersistentVolumeClaim = serde_json::from_value(json!({
            "metadata": {"name": claim, "namespace": "default"},
            "spec": {"volumeName": volume, "storageClassName": class}
        }))
        .unwrap();
        claims.apply_watcher_event(&Event::Apply(c));
    }
    let (storage_classes, mut classes) =
        reflector::store::<k8s_openapi::api::storage::v1::StorageClass>();
    for (name, mode) in [("local", "WaitForFirstConsumer"), ("standard", "Immediate")] {
        let sc = serde_json::from_value(json!({"metadata": {"name": name},
            "provisioner": "x", "volumeBindingMode": mode}))
        .unwrap();
        classes.apply_watcher_event(&Event::Apply(sc));
    }
    for (name, labels) in [
        (
            "pv-z12",
            json!({"topology.kubernetes.io/zone": "z1__z2", "topology.kubernetes.io/region": "r1"}),
        ),
        (
            "pv-beta",
            json!({"failure-domain.beta.kubernetes.io/zone": "z3"}),
        ),
    ] {
        let v: PersistentVolume =
            serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).unwrap();
        volumes.apply_watcher_event(&Event::Apply(v));
    }
    let pl = volumezone::VolumeZone::new(Listers {
        pvcs,
        pvs,
        storage_classes,
        ..Listers::empty()
    });
    let zone = |z: &str, r: &str| json!({"topology.kubernetes.io/zone": z, "topology.kubernetes.io/region": r});
    let s = snap(vec![
        node_info(node("z1", "1", "1Gi", zone("z1", "r1")), vec![]),
        node_info(node("z2-r2", "1", "1Gi", zone("z2", "r2")), vec![]),
        node_info(node("z3", "1", "1Gi", zone("z3", "r1")), vec![]),
        node_info(node("bare", "1", "1Gi", json!({})), vec![]),
    ]);
    let using = |claim: &str| {
        info(pod(
            "p",
            "",
            "",
            json!({"spec": {"volumes": [{"name": "v", "persistentVolumeClaim": {"claimName": claim}}]}}),
        ))
    };
    let verdicts = |p: &crate::types::PodInfo| -> Vec<String> {
        ["z1", "z2-r2", "z3", "bare"]
            .iter()
            .map(|n| filter(&pl, p, &s, n).reasons.join(","))
            .collect()
    };
    let no = volumezone::ERR_REASON;
    assert_eq!(no, "node(s) had no available volume zone");
    // Zone z1 or z2, and region r1: z2-r2 is in the wrong region; a node without topology
    // labels is not held to them.
    assert_eq!(verdicts(&using("data")), ["", no, no, ""]);
    let st = filter(&pl, &using("data"), &s, "z3");
    assert_eq!(st.code, Code::UnschedulableAndUnresolvable);
    // A PV's beta label matches the node's GA label.
    assert_eq!(verdicts(&using("old")), [no, no, "", ""]);
    // An unbound claim of a class bound at first use is VolumeBinding's; other unbound
    // claims, and a missing one, are reported.
    assert_eq!(verdicts(&using("later")), ["", "", "", ""]);
    for (claim, reason) in [
        (
            "free",
            "PersistentVolumeClaim had no pv name and storageClass name",
        ),
        ("now", "PersistentVolume had no name"),
        (
            "nowhere",
            "storageclass.storage.k8s.io \"missing\" not found",
        ),
    ] {
        assert_eq!(filter(&pl, &using(claim), &s, "z1").reasons, [reason]);
    }
    assert_eq!(
        filter(&pl, &using("gone"), &s, "z1").reasons,
        ["persistentvolumeclaim \"gone\" not found"]
    );
}
