//! The DNS front end: UDP and TCP listeners, messages parsed and written by hickory-proto,
//! answers from the [`Zone`], other names forwarded to the upstream servers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, NS, PTR, SOA, SRV, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use parking_lot::RwLock;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio_util::sync::CancellationToken;

use crate::zone::{Answer, QType, Rec, Zone};

type Labels = Vec<(&'static str, String)>;

/// Request and response counters (CoreDNS's families, under `keelson_dns_`).
#[derive(Clone, Default)]
pub struct Metrics {
    /// `keelson_dns_requests_total{proto,type}`.
    pub requests: Family<Labels, Counter>,
    /// `keelson_dns_responses_total{rcode}`.
    pub responses: Family<Labels, Counter>,
    /// `keelson_dns_forward_requests_total{to}`.
    pub forwards: Family<Labels, Counter>,
}

/// What the zone made of a request.
enum Local {
    /// The answer (or nothing to send).
    Done(Option<Vec<u8>>),
    /// Forward it; the message is the SERVFAIL to send if that fails.
    Forward(Message),
}

/// Everything a listener needs to answer.
pub struct Resolver {
    /// The cluster's records.
    pub zone: Arc<RwLock<Zone>>,
    /// TTL of every answer (and the SOA minimum).
    pub ttl: u32,
    /// Where other names go.
    pub upstreams: Vec<SocketAddr>,
    /// False until the first list of Services and slices is in (answers are SERVFAIL).
    pub ready: Arc<AtomicBool>,
    /// Counters.
    pub metrics: Metrics,
}

/// How long one upstream gets to answer.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(2);

/// The largest answer over UDP when the client does not say (RFC 1035).
const UDP_DEFAULT: usize = 512;

/// The payload size this server advertises and honours over EDNS (the DNS flag day value).
const EDNS_PAYLOAD: u16 = 1232;

fn qtype(t: RecordType) -> QType {
    match t {
        RecordType::A => QType::A,
        RecordType::AAAA => QType::Aaaa,
        RecordType::CNAME => QType::Cname,
        RecordType::SRV => QType::Srv,
        RecordType::PTR => QType::Ptr,
        RecordType::TXT => QType::Txt,
        RecordType::SOA => QType::Soa,
        RecordType::NS => QType::Ns,
        RecordType::ANY => QType::Any,
        _ => QType::Other,
    }
}

fn name(s: &str) -> Option<Name> {
    Name::from_ascii(s).ok()
}

fn record(owner: &str, ttl: u32, rec: &Rec) -> Option<Record> {
    let data = match rec {
        Rec::A(a) => RData::A(A(*a)),
        Rec::Aaaa(a) => RData::AAAA(AAAA(*a)),
        Rec::Cname(t) => RData::CNAME(CNAME(name(t)?)),
        Rec::Ptr(t) => RData::PTR(PTR(name(t)?)),
        Rec::Txt(t) => RData::TXT(TXT::new(vec![t.clone()])),
        Rec::Srv {
            priority,
            weight,
            port,
            target,
        } => RData::SRV(SRV::new(*priority, *weight, *port, name(target)?)),
    };
    Some(Record::from_rdata(name(owner)?, ttl, data))
}

impl Resolver {
    fn soa(&self, domain: &str) -> Option<Record> {
        let soa = SOA::new(
            name(&format!("ns.dns.{domain}"))?,
            name(&format!("hostmaster.{domain}"))?,
            // The serial only has to change when the zone does; the clock is good enough.
            (std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs()
                & 0xffff_ffff) as u32,
            7200,
            1800,
            86400,
            self.ttl,
        );
        Some(Record::from_rdata(name(domain)?, self.ttl, RData::SOA(soa)))
    }

    /// Answers one request (the raw message). `None`: drop it (not even a header to answer).
    pub async fn handle(&self, raw: &[u8], proto: &'static str) -> Option<Vec<u8>> {
        match self.answer_local(raw, proto) {
            Local::Done(out) => out,
            Local::Forward(resp) => self.answer_forwarded(raw, proto, resp).await,
        }
    }

    /// Forwards a request the zone does not own; SERVFAIL (`resp`) when no upstream answers.
    async fn answer_forwarded(
        &self,
        raw: &[u8],
        proto: &'static str,
        mut resp: Message,
    ) -> Option<Vec<u8>> {
        match self.forward(raw, proto == "tcp").await {
            Some(bytes) => {
                self.count_rcode(&bytes);
                Some(bytes)
            }
            None => {
                resp.metadata.response_code = ResponseCode::ServFail;
                self.finish(resp)
            }
        }
    }

    /// Answers what the zone can without waiting on the network.
    fn answer_local(&self, raw: &[u8], proto: &'static str) -> Local {
        let req = match Message::from_vec(raw) {
            Ok(m) => m,
            Err(_) if raw.len() >= 12 => {
                let id = u16::from_be_bytes([raw[0], raw[1]]);
                return Local::Done(self.finish(Message::error_msg(
                    id,
                    OpCode::Query,
                    ResponseCode::FormErr,
                )));
            }
            Err(_) => return Local::Done(None),
        };
        if req.metadata.message_type != MessageType::Query {
            return Local::Done(None);
        }
        let mut resp = Message::response(req.metadata.id, req.metadata.op_code);
        resp.metadata.recursion_desired = req.metadata.recursion_desired;
        resp.metadata.recursion_available = true;
        resp.add_queries(req.queries.iter().cloned());
        if req.edns.is_some() {
            let mut e = Edns::new();
            e.set_max_payload(EDNS_PAYLOAD);
            resp.set_edns(e);
        }
        if req.metadata.op_code != OpCode::Query {
            resp.metadata.response_code = ResponseCode::NotImp;
            return Local::Done(self.finish(resp));
        }
        let [q] = req.queries.as_slice() else {
            resp.metadata.response_code = ResponseCode::FormErr;
            return Local::Done(self.finish(resp));
        };
        let t = q.query_type();
        self.metrics
            .requests
            .get_or_create(&vec![("proto", proto.to_string()), ("type", t.to_string())])
            .inc();
        if !self.ready.load(Ordering::Acquire) {
            resp.metadata.response_code = ResponseCode::ServFail;
            return Local::Done(self.finish(resp));
        }
        let qname = q.name().to_ascii();
        let (answer, domain) = {
            let zone = self.zone.read();
            (zone.answer(&qname, qtype(t)), zone.domain().to_string())
        };
        let apex = crate::zone::normalize(&qname) == domain;
        match answer {
            Answer::Forward => return Local::Forward(resp),
            Answer::Records {
                answers,
                additionals,
            } => {
                resp.metadata.authoritative = true;
                resp.add_answers(answers.iter().filter_map(|(n, r)| record(n, self.ttl, r)));
                resp.add_additionals(
                    additionals
                        .iter()
                        .filter_map(|(n, r)| record(n, self.ttl, r)),
                );
            }
            Answer::NoData if apex && matches!(t, RecordType::SOA | RecordType::NS) => {
                resp.metadata.authoritative = true;
                if t == RecordType::SOA {
                    resp.add_answers(self.soa(&domain));
                } else if let (Some(n), Some(ns)) =
                    (name(&domain), name(&format!("ns.dns.{domain}")))
                {
                    resp.add_answer(Record::from_rdata(n, self.ttl, RData::NS(NS(ns))));
                }
            }
            Answer::NoData => {
                resp.metadata.authoritative = true;
                resp.add_authorities(self.soa(&domain));
            }
            Answer::NxDomain => {
                resp.metadata.authoritative = true;
                resp.metadata.response_code = ResponseCode::NXDomain;
                resp.add_authorities(self.soa(&domain));
            }
        }
        let limit = if proto == "udp" {
            req.edns
                .as_ref()
                .map(|e| e.max_payload().clamp(UDP_DEFAULT as u16, EDNS_PAYLOAD) as usize)
                .unwrap_or(UDP_DEFAULT)
        } else {
            u16::MAX as usize
        };
        let Ok(bytes) = resp.to_vec() else {
            return Local::Done(None);
        };
        if bytes.len() > limit {
            return Local::Done(self.finish(resp.truncate()));
        }
        self.count(resp.metadata.response_code);
        Local::Done(Some(bytes))
    }

    fn count(&self, rcode: ResponseCode) {
        self.metrics
            .responses
            .get_or_create(&vec![("rcode", rcode.to_string())])
            .inc();
    }

    fn count_rcode(&self, bytes: &[u8]) {
        if bytes.len() >= 4 {
            self.count(ResponseCode::from_low(bytes[3] & 0x0f));
        }
    }

    fn finish(&self, msg: Message) -> Option<Vec<u8>> {
        self.count(msg.metadata.response_code);
        msg.to_vec().ok()
    }

    /// Sends the request to each upstream in turn until one answers (over UDP; over TCP again
    /// when the answer was truncated and the client asked over TCP).
    async fn forward(&self, raw: &[u8], tcp: bool) -> Option<Vec<u8>> {
        let id = raw.get(..2)?;
        for up in &self.upstreams {
            self.metrics
                .forwards
                .get_or_create(&vec![("to", up.to_string())])
                .inc();
            let got = tokio::time::timeout(FORWARD_TIMEOUT, forward_udp(*up, raw)).await;
            let Ok(Ok(bytes)) = got else { continue };
            if bytes.get(..2) != Some(id) {
                continue;
            }
            let truncated = bytes.get(2).is_some_and(|b| b & 0x02 != 0);
            if truncated && tcp {
                if let Ok(Ok(b)) =
                    tokio::time::timeout(FORWARD_TIMEOUT, forward_tcp(*up, raw)).await
                {
                    return Some(b);
                }
                continue;
            }
            return Some(bytes);
        }
        None
    }
}

async fn forward_udp(up: SocketAddr, raw: &[u8]) -> std::io::Result<Vec<u8>> {
    let bind: SocketAddr = if up.is_ipv4() {
        "0.0.0.0:0".parse().expect("address")
    } else {
        "[::]:0".parse().expect("address")
    };
    let sock = UdpSocket::bind(bind).await?;
    sock.connect(up).await?;
    sock.send(raw).await?;
    let mut buf = vec![0u8; 65535];
    let n = sock.recv(&mut buf).await?;
    buf.truncate(n);
    Ok(buf)
}

async fn forward_tcp(up: SocketAddr, raw: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect(up).await?;
    write_framed(&mut s, raw).await?;
    read_framed(&mut s)
        .await?
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "no answer"))
}

async fn write_framed(s: &mut TcpStream, msg: &[u8]) -> std::io::Result<()> {
    let len = u16::try_from(msg.len())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "message too long"))?;
    let mut out = Vec::with_capacity(msg.len() + 2);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(msg);
    s.write_all(&out).await
}

async fn read_framed(s: &mut TcpStream) -> std::io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 2];
    match s.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
    s.read_exact(&mut buf).await?;
    Ok(Some(buf))
}

/// Serves UDP on `sock` with `workers` tasks until `shutdown`.
pub fn serve_udp(
    resolver: Arc<Resolver>,
    sock: Arc<UdpSocket>,
    workers: usize,
    shutdown: CancellationToken,
) {
    for _ in 0..workers.max(1) {
        let (resolver, sock, shutdown) = (resolver.clone(), sock.clone(), shutdown.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65535];
            loop {
                let (n, from) = tokio::select! {
                    r = sock.recv_from(&mut buf) => match r {
                        Ok(x) => x,
                        Err(e) => {
                            tracing::debug!(error = %e, "udp receive failed");
                            continue;
                        }
                    },
                    _ = shutdown.cancelled() => return,
                };
                match resolver.answer_local(&buf[..n], "udp") {
                    Local::Done(Some(out)) => {
                        let _ = sock.send_to(&out, from).await;
                    }
                    Local::Done(None) => {}
                    // Forwarded questions wait on the network: answer them off the loop.
                    Local::Forward(resp) => {
                        let (resolver, sock) = (resolver.clone(), sock.clone());
                        let raw = buf[..n].to_vec();
                        tokio::spawn(async move {
                            if let Some(out) = resolver.answer_forwarded(&raw, "udp", resp).await {
                                let _ = sock.send_to(&out, from).await;
                            }
                        });
                    }
                }
            }
        });
    }
}

/// Serves TCP (length-prefixed messages, several per connection) until `shutdown`.
pub fn serve_tcp(resolver: Arc<Resolver>, listener: TcpListener, shutdown: CancellationToken) {
    tokio::spawn(async move {
        loop {
            let Some((mut conn, _)) =
                keelson_client::net::accept(&listener, &shutdown, "dns").await
            else {
                return;
            };
            let (resolver, shutdown) = (resolver.clone(), shutdown.clone());
            tokio::spawn(async move {
                loop {
                    let msg = tokio::select! {
                        // An idle connection is closed after 10 s, as CoreDNS does.
                        r = tokio::time::timeout(Duration::from_secs(10), read_framed(&mut conn)) => match r {
                            Ok(Ok(Some(m))) => m,
                            _ => return,
                        },
                        _ = shutdown.cancelled() => return,
                    };
                    let Some(out) = resolver.handle(&msg, "tcp").await else {
                        return;
                    };
                    if write_framed(&mut conn, &out).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
}
