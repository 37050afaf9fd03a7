//! The pod network's bridge and the host's other links: a bridge left holding the node's pod
//! CIDR by a keelson node that is gone (killed before it could remove it) is removed, so the
//! host routes pod traffic to the new bridge; a link that is not such a bridge is left alone and
//! the node's pods fail to start naming it, until it goes.

use std::process::Command;
use std::time::Duration;

use crate::harness::{ApiCluster, Backend, apply, eventually};
use crate::proxy::{get, server};
use crate::support::{Node, READY, events, wait_field};

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn link_exists(name: &str) -> bool {
    std::path::Path::new("/sys/class/net").join(name).exists()
}

/// A link this test made, removed when the test ends however it ends.
struct Link(String);

impl Link {
    fn new(name: String, kind: &str, addr: &str, alias: Option<&str>) -> Link {
        let _ = Command::new("ip").args(["link", "del", &name]).output();
        ip(&["link", "add", &name, "type", kind]);
        let link = Link(name);
        ip(&["addr", "add", addr, "dev", &link.0]);
        ip(&["link", "set", &link.0, "up"]);
        if let Some(a) = alias {
            ip(&["link", "set", "dev", &link.0, "alias", a]);
        }
        link
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.0]).output();
    }
}

/// The pod's name as its server at `ip:8080` tells it.
fn who(ip: &str) -> String {
    get(ip, 8080, "/who").unwrap_or_else(|e| panic!("{ip}:8080: {e}"))
}

/// An owner for the alias of a bridge: a process that ran here and has exited.
fn dead_owner() -> String {
    let mut child = Command::new("sleep").arg("30").spawn().unwrap();
    let pid = child.id();
    let start = keelson_node::process::stat_fields(pid).unwrap()[19].clone();
    child.kill().unwrap();
    child.wait().unwrap();
    let ns = std::fs::read_link("/proc/self/ns/pid").unwrap();
    let ns = ns.to_str().unwrap();
    let ns = &ns["pid:[".len()..ns.len() - 1];
    format!("keelson node pid={pid} start={start} pidns={ns}")
}

/// The link holding `addr`.
fn holder(addr: &str) -> String {
    let out = Command::new("ip")
        .args(["-o", "addr", "show", "to", addr])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&out.stdout);
    out.split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_string()
}

#[test]
fn a_dead_nodes_bridge_gives_way_and_a_foreign_link_is_named() {
    let tag = std::process::id() % 100_000;
    // As a keelson node leaves its bridge when it is killed: the gateway of its CIDR, and its
    // owner, a process that has exited.
    let stale = Link::new(
        format!("kbstale{tag}"),
        "bridge",
        "10.204.1.1/24",
        Some(&dead_owner()),
    );
    let foreign = Link::new(format!("ktforeign{tag}"), "bridge", "10.204.2.1/24", None);

    let c = ApiCluster::start(Backend::Keelson, 1);
    let mut a = Node::start(&c, "br-a", "10.204.1.0/24", &[]);
    let _b = Node::start(&c, "br-b", "10.204.2.0/24", &[]);
    apply(
        &c,
        &(server("web-a", "br-a", 1) + &server("web-b", "br-b", 1)),
    );

    // The dead node's bridge is gone, and the pod answers on its address from the host.
    wait_field(&c, "web-a", READY, |s| s == "True");
    assert!(!link_exists(&stale.0), "{} is still there", stale.0);
    let ip_a = c.ok(&["get", "pod", "web-a", "-o", "jsonpath={.status.podIP}"]);
    assert!(ip_a.starts_with("10.204.1."), "{ip_a}");
    assert_eq!(who(&ip_a), "web-a");
    // br-a's bridge names its owner.
    let bridge_a = holder("10.204.1.1");
    let alias = std::fs::read_to_string(format!("/sys/class/net/{bridge_a}/ifalias")).unwrap();
    let pid_a = a.comp.child.as_ref().unwrap().id();
    assert!(
        alias.starts_with(&format!("keelson node pid={pid_a} start=")),
        "{bridge_a}: {alias}"
    );

    // The foreign link stays, and the pod's events name it.
    let wanted = format!(
        "pod CIDR 10.204.2.0/24 overlaps 10.204.2.1/24 on link {}",
        foreign.0
    );
    eventually(Duration::from_secs(60), "web-b's sandbox refused", || {
        events(&c, "web-b").contains(&wanted)
    });
    assert!(link_exists(&foreign.0));
    let phase = c.ok(&["get", "pod", "web-b", "-o", "jsonpath={.status.phase}"]);
    assert_eq!(phase, "Pending");
    // Once it is gone, the pod starts (its sandbox is retried).
    drop(foreign);
    wait_field(&c, "web-b", READY, |s| s == "True");
    let ip_b = c.ok(&["get", "pod", "web-b", "-o", "jsonpath={.status.podIP}"]);
    assert!(ip_b.starts_with("10.204.2."), "{ip_b}");
    assert_eq!(who(&ip_b), "web-b");

    // A second node given br-a's CIDR while br-a runs leaves br-a's bridge alone and says
    // whose it is; once br-a has stopped (and removed its bridge), its pod starts.
    let _c = Node::start(&c, "br-c", "10.204.1.0/24", &[]);
    apply(&c, &server("web-c", "br-c", 1));
    let wanted = format!(
        "pod CIDR 10.204.1.0/24 overlaps 10.204.1.1/24 on the bridge of another keelson node (keelson node pid={pid_a} start="
    );
    eventually(Duration::from_secs(60), "web-c's sandbox refused", || {
        events(&c, "web-c").contains(&wanted)
    });
    assert!(link_exists(&bridge_a));
    assert!(a.comp.stop().success());
    assert!(!link_exists(&bridge_a), "br-a left its bridge");
    wait_field(&c, "web-c", READY, |s| s == "True");
    let ip_c = c.ok(&["get", "pod", "web-c", "-o", "jsonpath={.status.podIP}"]);
    assert!(ip_c.starts_with("10.204.1."), "{ip_c}");
    assert_eq!(who(&ip_c), "web-c");
}
