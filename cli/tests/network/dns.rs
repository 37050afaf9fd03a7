//! `keelson dns`: the Kubernetes DNS specification over UDP and TCP, kept in step with the API,
//! forwarding names outside the cluster, and back within a second of a restart.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};

use crate::component::Component;
use crate::harness::{ApiCluster, Backend, apply, eventually, free_port};

/// Asks `server` one question; `tcp` picks the transport.
fn ask(server: SocketAddr, name: &str, t: RecordType, tcp: bool) -> Message {
    let mut q = Message::query();
    q.metadata.id = rand_id();
    q.metadata.recursion_desired = true;
    q.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
    let raw = q.to_vec().unwrap();
    let bytes = if tcp {
        let mut s = TcpStream::connect(server).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut framed = (raw.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&raw);
        s.write_all(&framed).unwrap();
        let mut len = [0u8; 2];
        s.read_exact(&mut len).unwrap();
        let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
        s.read_exact(&mut buf).unwrap();
        buf
    } else {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.send_to(&raw, server).unwrap();
        let mut buf = vec![0u8; 65535];
        let (n, _) = s.recv_from(&mut buf).unwrap();
        buf.truncate(n);
        buf
    };
    let m = Message::from_vec(&bytes).unwrap();
    assert_eq!(m.metadata.id, q.metadata.id, "answer to another question");
    m
}

fn rand_id() -> u16 {
    (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
        & 0xffff) as u16
}

/// The answer section as text: "A 10.96.0.20", "SRV 0 100 80 web.default.svc.cluster.local.".
fn answers(m: &Message) -> Vec<String> {
    let mut out: Vec<String> = m
        .answers
        .iter()
        .map(|r| match &r.data {
            RData::A(a) => format!("A {}", a.0),
            RData::AAAA(a) => format!("AAAA {}", a.0),
            RData::CNAME(c) => format!("CNAME {}", c.0),
            RData::PTR(p) => format!("PTR {}", p.0),
            RData::SRV(s) => format!("SRV {} {} {} {}", s.priority, s.weight, s.port, s.target),
            RData::TXT(t) => format!("TXT {t}"),
            other => format!("{other:?}"),
        })
        .collect();
    out.sort();
    out
}

/// A DNS server for the cluster on a free port of 127.0.0.1, with extra flags.
fn start_dns(c: &ApiCluster, name: &str, domain: &str, extra: &[&str]) -> (Component, SocketAddr) {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut args = vec![
        format!("--dns-address={addr}"),
        format!("--cluster-domain={domain}"),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let dns = Component::start(c, "dns", name, &refs);
    eventually(Duration::from_secs(30), "dns answering", || {
        answering(addr, domain)
    });
    (dns, addr)
}

/// Whether the server answers from a listed zone (not SERVFAIL, not silent).
fn answering(addr: SocketAddr, domain: &str) -> bool {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut q = Message::query();
    q.metadata.id = 7;
    q.add_query(Query::query(
        Name::from_ascii(format!("dns-version.{domain}.")).unwrap(),
        RecordType::TXT,
    ));
    let _ = s.send_to(&q.to_vec().unwrap(), addr);
    let mut buf = [0u8; 2048];
    match s.recv_from(&mut buf) {
        Ok((n, _)) => Message::from_vec(&buf[..n])
            .is_ok_and(|m| m.metadata.response_code == ResponseCode::NoError),
        Err(_) => false,
    }
}

#[test]
fn dns_serves_the_cluster_and_forwards_the_rest() {
    let c = ApiCluster::start(Backend::Keelson, 1);
    // The upstream for names outside the cluster: another server, for another domain.
    let (_up, up_addr) = start_dns(&c, "dns-upstream", "upstream.test", &[]);
    let upstream = format!("--upstream={up_addr}");
    let (mut dns, addr) = start_dns(&c, "dns", "cluster.local", &[&upstream]);

    apply(
        &c,
        r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  clusterIP: 10.96.0.20
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: default}
spec:
  clusterIP: None
  ports: [{name: pg, port: 5432}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: db-1
  namespace: default
  labels: {kubernetes.io/service-name: db}
addressType: IPv4
ports: [{name: pg, port: 5432, protocol: TCP}]
endpoints:
- addresses: [10.244.1.5]
  hostname: db-0
  conditions: {ready: true}
- addresses: [10.244.2.6]
  conditions: {ready: true}
- addresses: [10.244.2.7]
  conditions: {ready: false}
---
apiVersion: v1
kind: Service
metadata: {name: ext, namespace: default}
spec: {type: ExternalName, externalName: web.default.svc.upstream.test}
"#,
    );
    let web = "web.default.svc.cluster.local.";
    eventually(Duration::from_secs(20), "web's A record", || {
        answers(&ask(addr, web, RecordType::A, false)) == ["A 10.96.0.20"]
    });
    for tcp in [false, true] {
        let m = ask(addr, web, RecordType::A, tcp);
        assert!(m.metadata.authoritative);
        assert_eq!(m.answers[0].ttl, 5);
        assert_eq!(answers(&m), ["A 10.96.0.20"], "tcp={tcp}");
    }
    // SRV for the named port, with the target's address in the additional section.
    let srv = ask(
        addr,
        "_http._tcp.web.default.svc.cluster.local.",
        RecordType::SRV,
        false,
    );
    assert_eq!(answers(&srv), [format!("SRV 0 100 80 {web}")]);
    assert_eq!(srv.additionals.len(), 1);
    assert_eq!(
        answers(&ask(
            addr,
            "20.0.96.10.in-addr.arpa.",
            RecordType::PTR,
            false
        )),
        [format!("PTR {web}")]
    );
    // Headless: the ready endpoints, by name too.
    let db = "db.default.svc.cluster.local.";
    eventually(Duration::from_secs(20), "db's endpoints", || {
        answers(&ask(addr, db, RecordType::A, false)) == ["A 10.244.1.5", "A 10.244.2.6"]
    });
    assert_eq!(
        answers(&ask(
            addr,
            "db-0.db.default.svc.cluster.local.",
            RecordType::A,
            true
        )),
        ["A 10.244.1.5"]
    );
    assert_eq!(
        answers(&ask(
            addr,
            "_pg._tcp.db.default.svc.cluster.local.",
            RecordType::SRV,
            false
        )),
        [
            "SRV 0 50 5432 10-244-2-6.db.default.svc.cluster.local.",
            "SRV 0 50 5432 db-0.db.default.svc.cluster.local."
        ]
    );
    assert_eq!(
        answers(&ask(
            addr,
            "5.1.244.10.in-addr.arpa.",
            RecordType::PTR,
            false
        )),
        ["PTR db-0.db.default.svc.cluster.local."]
    );
    // Pods, the schema version, names that do not exist, names with other types.
    assert_eq!(
        answers(&ask(
            addr,
            "10-244-1-9.default.pod.cluster.local.",
            RecordType::A,
            false
        )),
        ["A 10.244.1.9"]
    );
    assert_eq!(
        answers(&ask(
            addr,
            "dns-version.cluster.local.",
            RecordType::TXT,
            false
        )),
        ["TXT 1.1.0"]
    );
    let missing = ask(
        addr,
        "nope.default.svc.cluster.local.",
        RecordType::A,
        false,
    );
    assert_eq!(missing.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(missing.authorities.len(), 1, "SOA in the authority section");
    let nodata = ask(addr, web, RecordType::AAAA, false);
    assert_eq!(nodata.metadata.response_code, ResponseCode::NoError);
    assert!(nodata.answers.is_empty());

    // Outside the cluster: forwarded (the upstream answers for its own domain). The
    // ExternalName's CNAME points there; the client follows it.
    assert_eq!(
        answers(&ask(
            addr,
            "web.default.svc.upstream.test.",
            RecordType::A,
            false
        )),
        ["A 10.96.0.20"]
    );
    assert_eq!(
        answers(&ask(
            addr,
            "ext.default.svc.cluster.local.",
            RecordType::A,
            false
        )),
        ["CNAME web.default.svc.upstream.test."]
    );

    // Changes follow: an endpoint leaves, a Service goes.
    c.ok(&[
        "patch",
        "endpointslice",
        "db-1",
        "--type=json",
        "-p",
        r#"[{"op":"remove","path":"/endpoints/1"}]"#,
    ]);
    eventually(Duration::from_secs(20), "db down to one endpoint", || {
        answers(&ask(addr, db, RecordType::A, false)) == ["A 10.244.1.5"]
    });
    c.ok(&["delete", "service", "web"]);
    eventually(Duration::from_secs(20), "web gone", || {
        ask(addr, web, RecordType::A, false).metadata.response_code == ResponseCode::NXDomain
    });

    // Restarted, it answers again once it has listed (well within a second here).
    dns.kill();
    let arg = format!("--dns-address={addr}");
    let dns2 = Component::start(&c, "dns", "dns-restarted", &[&arg, &upstream]);
    let t0 = Instant::now();
    eventually(
        Duration::from_secs(30),
        "dns answering after restart",
        || answering(addr, "cluster.local"),
    );
    eprintln!("answering {:?} after the restart", t0.elapsed());
    assert_eq!(
        answers(&ask(addr, db, RecordType::A, false)),
        ["A 10.244.1.5"]
    );
    assert!(dns2.get("/metrics").contains("keelson_dns_requests_total"));
}
