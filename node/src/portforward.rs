//! `/portForward/{namespace}/{pod}` on the kubelet API: TCP connections to ports inside a pod's
//! network namespace, in the three forms clients speak.
//!
//! - **SPDY/3.1 after an HTTP upgrade** (`Upgrade: SPDY/3.1`, `X-Stream-Protocol-Version:
//!   portforward.k8s.io`): kubectl up to 1.30, and later ones as their fallback. Each
//!   forwarded connection is a pair of client streams sharing a `requestID` header and naming
//!   the `port`: `streamType: error`, where a failure is written as text, and `streamType:
//!   data`, which carries the bytes both ways.
//! - **The same SPDY tunnelled through a WebSocket** (subprotocol
//!   `SPDY/3.1+portforward.k8s.io`), kubectl 1.31 and later: the binary messages carry the
//!   SPDY byte stream.
//! - **Kubernetes' WebSocket channel protocol** (`v4.channel.k8s.io`, or no subprotocol), as
//!   the Python client speaks it: the `port` query parameter lists the ports; channel `2i`
//!   carries port i's data and `2i+1` its errors, and each channel's first message is its
//!   port number (two bytes, little endian). One connection per port.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderValue, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::spdy::{self, Frame, FrameReader, FrameWriter};

/// Connects to a port inside the pod's network namespace.
pub type Dialer = Arc<dyn Fn(u16) -> BoxFuture<'static, Result<TcpStream, String>> + Send + Sync>;

/// The stream protocol of port forwarding (the `X-Stream-Protocol-Version` value).
pub const PROTOCOL: &str = "portforward.k8s.io";
/// The WebSocket subprotocol that tunnels SPDY.
pub const TUNNEL_PROTOCOL: &str = "SPDY/3.1+portforward.k8s.io";
/// The WebSocket channel protocol.
pub const CHANNEL_PROTOCOL: &str = "v4.channel.k8s.io";

/// What a forwarded connection says in errors: the pod's name and uid.
#[derive(Debug, Clone)]
pub struct Target {
    /// `namespace/name`.
    pub pod: String,
    /// The pod's uid.
    pub uid: String,
}

/// Serves a port-forward request: a WebSocket (tunnelled SPDY or the channel protocol) or an
/// SPDY upgrade.
pub async fn serve(req: Request<axum::body::Body>, dial: Dialer, target: Target) -> Response {
    let upgrade = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    if upgrade.eq_ignore_ascii_case("websocket") {
        let query = req.uri().query().unwrap_or("").to_string();
        let offered = req.headers().contains_key(header::SEC_WEBSOCKET_PROTOCOL);
        let (mut parts, _) = req.into_parts();
        let ws = match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
            Ok(ws) => ws,
            Err(e) => return e.into_response(),
        };
        return websocket(ws, offered, &query, dial, target);
    }
    if upgrade.eq_ignore_ascii_case("SPDY/3.1") {
        return spdy_upgrade(req, dial, target);
    }
    (
        StatusCode::BAD_REQUEST,
        "port forwarding needs an upgrade to SPDY/3.1 or a WebSocket",
    )
        .into_response()
}

fn websocket(
    ws: WebSocketUpgrade,
    offered: bool,
    query: &str,
    dial: Dialer,
    target: Target,
) -> Response {
    let ws = ws.protocols([TUNNEL_PROTOCOL, CHANNEL_PROTOCOL]);
    match ws.selected_protocol().and_then(|p| p.to_str().ok()) {
        Some(TUNNEL_PROTOCOL) => ws.on_upgrade(move |socket| tunnel(socket, dial, target)),
        None if offered => (
            StatusCode::BAD_REQUEST,
            format!(
                "requested protocol(s) are not supported; supports [{TUNNEL_PROTOCOL} {CHANNEL_PROTOCOL}]"
            ),
        )
            .into_response(),
        // The channel protocol, also when the client names no subprotocol (as upstream).
        _ => match ports(query) {
            Ok(ports) => ws.on_upgrade(move |socket| channels(socket, ports, dial, target)),
            Err(e) => (StatusCode::BAD_REQUEST, e).into_response(),
        },
    }
}

/// The ports of a channel-protocol request: `port` repeats, each may list several.
pub fn ports(query: &str) -> Result<Vec<u16>, String> {
    let mut out = Vec::new();
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        if k != "port" {
            continue;
        }
        if v.is_empty() {
            return Err("query parameter \"port\" cannot be empty".into());
        }
        for p in v.split(',') {
            match p.parse::<u16>() {
                Ok(0) => return Err(format!("port {v:?} must be > 0")),
                Ok(n) => out.push(n),
                Err(e) => return Err(format!("unable to parse {v:?} as a port: {e}")),
            }
        }
    }
    if out.is_empty() {
        return Err("query parameter \"port\" is required".into());
    }
    // Two channels per port, numbered by one byte.
    if out.len() > 128 {
        return Err(format!("{} ports asked for; at most 128", out.len()));
    }
    Ok(out)
}

fn spdy_upgrade(mut req: Request<axum::body::Body>, dial: Dialer, target: Target) -> Response {
    let offered: Vec<String> = req
        .headers()
        .get_all("x-stream-protocol-version")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect();
    // No offer at all is an old client: it speaks the only protocol there is.
    if !offered.is_empty() && !offered.iter().any(|p| p == PROTOCOL) {
        let mut r = (
            StatusCode::FORBIDDEN,
            format!(
                "unable to upgrade: unable to negotiate protocol: client supports [{}], server accepts [{PROTOCOL}]",
                offered.join(" ")
            ),
        )
            .into_response();
        r.headers_mut().insert(
            "x-accepted-stream-protocol-versions",
            HeaderValue::from_static(PROTOCOL),
        );
        return r;
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(up) => {
                let io = hyper_util::rt::TokioIo::new(up);
                session(io, dial, target, STREAM_TIMEOUT).await
            }
            Err(e) => tracing::debug!(error = %e, "port-forward upgrade failed"),
        }
    });
    let mut r = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let h = r.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("SPDY/3.1"));
    if !offered.is_empty() {
        h.insert(
            "x-stream-protocol-version",
            HeaderValue::from_static(PROTOCOL),
        );
    }
    r
}

/// How long the other direction of a forwarded connection may go on once one has ended.
const GRACE: Duration = Duration::from_secs(1);
/// How long a pair of streams may stay incomplete, and how long the client's bytes may wait for
/// a connection that does not take them, before the stream is given up (upstream's stream
/// creation timeout).
const STREAM_TIMEOUT: Duration = Duration::from_secs(30);
/// A session with no frame for this long ends (upstream's streaming connection idle timeout).
const IDLE_TIMEOUT: Duration = Duration::from_secs(4 * 3600);

/// What the session's writer sends: SPDY frames, or channel messages (`stream` is the channel,
/// `fin` unused) in the channel protocol.
#[derive(Debug)]
enum Out {
    Reply(u32),
    Reset(u32),
    Ping(u32),
    Data {
        stream: u32,
        bytes: Bytes,
        fin: bool,
    },
}

/// Where one forwarded connection writes: its data and error streams.
struct Sink {
    out: mpsc::Sender<Out>,
    data: u32,
    error: u32,
}

/// Connects to `port` and copies both ways until the pod's side ends (the client closing its
/// side only closes the connection's write half). A failure is written on the error stream;
/// both streams are then closed.
async fn forward(
    port: u16,
    mut from_client: mpsc::Receiver<Bytes>,
    sink: Sink,
    dial: Dialer,
    target: Target,
) {
    let failure = match dial(port).await {
        Err(e) => Some(e),
        Ok(conn) => {
            let (mut r, mut w) = conn.into_split();
            let up = async {
                while let Some(b) = from_client.recv().await {
                    if w.write_all(&b).await.is_err() {
                        break;
                    }
                }
                // Nothing more is taken from the client (its sender sees the close).
                from_client.close();
                let _ = w.shutdown().await;
            };
            let down = async {
                let mut buf = vec![0u8; 32 * 1024];
                loop {
                    match r.read(&mut buf).await {
                        Ok(0) => return None,
                        Ok(n) => {
                            let out = Out::Data {
                                stream: sink.data,
                                bytes: Bytes::copy_from_slice(&buf[..n]),
                                fin: false,
                            };
                            if sink.out.send(out).await.is_err() {
                                return None;
                            }
                        }
                        Err(e) => return Some(e.to_string()),
                    }
                }
            };
            tokio::pin!(up, down);
            // When one direction ends the other gets a second to finish (as containerd does):
            // a pod that keeps writing after the client closed its side must not hold the
            // connection, and the client, forever.
            tokio::select! {
                e = &mut down => e,
                _ = &mut up => tokio::time::timeout(GRACE, &mut down).await.unwrap_or(None),
            }
        }
    };
    if let Some(e) = failure {
        let msg = format!(
            "error forwarding port {port} to pod {}, uid {}: {e}",
            target.pod, target.uid
        );
        tracing::debug!("{msg}");
        let _ = sink
            .out
            .send(Out::Data {
                stream: sink.error,
                bytes: msg.into(),
                fin: false,
            })
            .await;
    }
    for stream in [sink.data, sink.error] {
        let _ = sink
            .out
            .send(Out::Data {
                stream,
                bytes: Bytes::new(),
                fin: true,
            })
            .await;
    }
}

/// Writes SPDY frames until every sender is gone, then closes the write side.
async fn write_frames<W: AsyncWrite + Unpin>(mut w: W, mut rx: mpsc::Receiver<Out>) {
    let mut frames = FrameWriter::new();
    while let Some(o) = rx.recv().await {
        let bytes = match o {
            Out::Reply(id) => frames.syn_reply(id, false, &[]),
            Out::Reset(id) => FrameWriter::rst_stream(id, spdy::CANCEL),
            Out::Ping(id) => FrameWriter::ping(id),
            Out::Data { stream, bytes, fin } => FrameWriter::data(stream, fin, &bytes),
        };
        if w.write_all(&bytes).await.is_err() {
            return;
        }
        if rx.is_empty() && w.flush().await.is_err() {
            return;
        }
    }
    let _ = w.shutdown().await;
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Kind {
    Error,
    Data,
}

/// A new stream's kind and port, or why it is refused (the checks upstream's kubelet makes).
fn check_stream(headers: &spdy::Headers) -> Result<(Kind, u16), String> {
    let port = spdy::header(headers, "port").ok_or("\"port\" header is required")?;
    let port: u16 = port
        .parse()
        .map_err(|e| format!("unable to parse {port:?} as a port: {e}"))?;
    if port == 0 {
        return Err("port \"0\" must be > 0".into());
    }
    match spdy::header(headers, "streamtype") {
        Some("error") => Ok((Kind::Error, port)),
        Some("data") => Ok((Kind::Data, port)),
        t => Err(format!("invalid stream type {:?}", t.unwrap_or(""))),
    }
}

/// The streams of one forwarded connection while they arrive.
struct Pair {
    error: Option<u32>,
    data: Option<(u32, mpsc::Receiver<Bytes>)>,
    /// The data stream's port.
    port: u16,
    since: tokio::time::Instant,
}

/// One SPDY connection: streams come in pairs, each pair one forwarded TCP connection.
async fn session<IO: AsyncRead + AsyncWrite + Send + 'static>(
    io: IO,
    dial: Dialer,
    target: Target,
    stream_timeout: Duration,
) {
    let (r, w) = tokio::io::split(io);
    let (out, rx) = mpsc::channel::<Out>(64);
    let writer = tokio::spawn(write_frames(w, rx));
    let mut reader = FrameReader::new(r);
    let mut pairs: HashMap<String, Pair> = HashMap::new();
    // Data streams' inbound bytes, by stream id.
    let mut inbound: HashMap<u32, mpsc::Sender<Bytes>> = HashMap::new();
    // The forwarding task of each stream.
    let mut running: HashMap<u32, tokio::task::AbortHandle> = HashMap::new();
    let mut tasks = JoinSet::new();
    let mut sweep = tokio::time::interval(Duration::from_secs(1));
    loop {
        let next = tokio::select! {
            r = tokio::time::timeout(IDLE_TIMEOUT, reader.next()) => r,
            _ = sweep.tick() => {
                // Pairs whose other stream never came: the error stream says so, both go.
                let stale: Vec<String> = pairs
                    .iter()
                    .filter(|(_, p)| p.since.elapsed() >= stream_timeout)
                    .map(|(k, _)| k.clone())
                    .collect();
                for k in stale {
                    let p = pairs.remove(&k).expect("listed");
                    if let Some(e) = p.error {
                        let msg = format!("timed out waiting for streams of request {k}");
                        let _ = out.send(Out::Data { stream: e, bytes: msg.into(), fin: true }).await;
                    }
                    if let Some((d, _)) = p.data {
                        inbound.remove(&d);
                        let _ = out.send(Out::Reset(d)).await;
                    }
                }
                continue;
            }
        };
        let frame = match next {
            Ok(Ok(Some(f))) => f,
            Ok(Ok(None)) => break,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "port-forward connection");
                break;
            }
            Err(_) => {
                tracing::debug!("port-forward connection idle for {IDLE_TIMEOUT:?}");
                break;
            }
        };
        match frame {
            Frame::SynStream { id, fin, headers } => {
                let (kind, port) = match check_stream(&headers) {
                    Ok(k) => k,
                    Err(e) => {
                        tracing::debug!(stream = id, "refusing a port-forward stream: {e}");
                        let _ = out.send(Out::Reset(id)).await;
                        continue;
                    }
                };
                // Old clients send no request id: a pair is the error stream and the data
                // stream opened right after it.
                let request = spdy::header(&headers, "requestid")
                    .map(str::to_string)
                    .unwrap_or_else(|| match kind {
                        Kind::Error => id.to_string(),
                        Kind::Data => id.saturating_sub(2).to_string(),
                    });
                let pair = pairs.entry(request.clone()).or_insert_with(|| Pair {
                    error: None,
                    data: None,
                    port,
                    since: tokio::time::Instant::now(),
                });
                let taken = match kind {
                    Kind::Error => pair.error.is_some(),
                    Kind::Data => pair.data.is_some(),
                };
                if taken {
                    tracing::debug!(stream = id, request, "a second {kind:?} stream");
                    let _ = out.send(Out::Reset(id)).await;
                    continue;
                }
                let _ = out.send(Out::Reply(id)).await;
                match kind {
                    Kind::Error => pair.error = Some(id),
                    Kind::Data => {
                        pair.port = port;
                        let (tx, rx) = mpsc::channel(64);
                        if !fin {
                            inbound.insert(id, tx);
                        }
                        pair.data = Some((id, rx));
                    }
                }
                if pair.error.is_some() && pair.data.is_some() {
                    let pair = pairs.remove(&request).expect("just seen");
                    let (error, (data, rx)) = (pair.error.expect("set"), pair.data.expect("set"));
                    let sink = Sink {
                        out: out.clone(),
                        data,
                        error,
                    };
                    let h = tasks.spawn(forward(pair.port, rx, sink, dial.clone(), target.clone()));
                    running.insert(data, h.clone());
                    running.insert(error, h);
                }
            }
            Frame::Data { id, fin, data } => {
                if !data.is_empty()
                    && let Some(tx) = inbound.get(&id)
                {
                    // Waiting here holds up the whole connection (SPDY as Kubernetes speaks it
                    // has no flow control), so a stream that takes nothing for long is reset.
                    match tokio::time::timeout(stream_timeout, tx.send(data)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => {
                            inbound.remove(&id);
                        }
                        Err(_) => {
                            tracing::debug!(stream = id, "a port-forward stream takes no data");
                            inbound.remove(&id);
                            if let Some(h) = running.remove(&id) {
                                h.abort();
                            }
                            let _ = out.send(Out::Reset(id)).await;
                        }
                    }
                }
                if fin {
                    inbound.remove(&id);
                }
            }
            Frame::RstStream { id, .. } => {
                inbound.remove(&id);
                if let Some(h) = running.remove(&id) {
                    h.abort();
                }
            }
            Frame::Ping(n) => {
                let _ = out.send(Out::Ping(n)).await;
            }
            Frame::GoAway { .. } => break,
            Frame::SynReply { .. } | Frame::Headers { .. } | Frame::Other(_) => {}
        }
        // Finished forwards leave the table.
        while let Some(r) = tasks.try_join_next() {
            let _ = r;
        }
        running.retain(|_, h| !h.is_finished());
    }
    tasks.abort_all();
    drop(out);
    drop(tasks);
    let _ = writer.await;
}

/// SPDY tunnelled through a WebSocket: the binary messages are the byte stream.
async fn tunnel(socket: WebSocket, dial: Dialer, target: Target) {
    let (ours, theirs) = tokio::io::duplex(64 * 1024);
    let session = tokio::spawn(session(theirs, dial, target, STREAM_TIMEOUT));
    let (mut tx, mut rx) = socket.split();
    let (mut r, mut w) = tokio::io::split(ours);
    let inbound = async {
        while let Some(Ok(m)) = rx.next().await {
            match m {
                Message::Binary(b) if w.write_all(&b).await.is_err() => break,
                // The tunnel carries binary messages only.
                Message::Close(_) | Message::Text(_) => break,
                _ => {}
            }
        }
        let _ = w.shutdown().await;
    };
    let outbound = async {
        let mut buf = vec![0u8; 32 * 1024];
        while let Ok(n) = r.read(&mut buf).await {
            if n == 0 {
                break;
            }
            let m = Message::Binary(Bytes::copy_from_slice(&buf[..n]));
            if tx.send(m).await.is_err() {
                break;
            }
        }
        let _ = tx.send(Message::Close(None)).await;
    };
    tokio::join!(inbound, outbound);
    let _ = session.await;
}

/// The channel protocol: one connection per listed port, opened at once.
async fn channels(socket: WebSocket, ports: Vec<u16>, dial: Dialer, target: Target) {
    // Each channel's port first, before any connection can write.
    let (mut tx, mut rx) = socket.split();
    for (i, &port) in ports.iter().enumerate() {
        for ch in [2 * i, 2 * i + 1] {
            let [lo, hi] = port.to_le_bytes();
            if tx
                .send(Message::Binary(vec![ch as u8, lo, hi].into()))
                .await
                .is_err()
            {
                return;
            }
        }
    }
    let (out, mut out_rx) = mpsc::channel::<Out>(64);
    let writer = async move {
        while let Some(o) = out_rx.recv().await {
            let Out::Data { stream, bytes, fin } = o else {
                continue;
            };
            // The protocol has no per-channel close: the socket closes when all are done.
            if fin && bytes.is_empty() {
                continue;
            }
            let mut m = Vec::with_capacity(bytes.len() + 1);
            m.push(stream as u8);
            m.extend_from_slice(&bytes);
            if tx.send(Message::Binary(m.into())).await.is_err() {
                return;
            }
        }
        let _ = tx.send(Message::Close(None)).await;
    };
    let mut inbound = Vec::new();
    let mut tasks = JoinSet::new();
    for (i, &port) in ports.iter().enumerate() {
        let (data, error) = (2 * i as u32, 2 * i as u32 + 1);
        let (itx, irx) = mpsc::channel(64);
        inbound.push(Some(itx));
        let sink = Sink {
            out: out.clone(),
            data,
            error,
        };
        tasks.spawn(forward(port, irx, sink, dial.clone(), target.clone()));
    }
    drop(out);
    let reader = async {
        while let Some(Ok(m)) = rx.next().await {
            match m {
                Message::Binary(b) if !b.is_empty() => {
                    let ch = b[0] as usize;
                    if ch.is_multiple_of(2)
                        && let Some(Some(tx)) = inbound.get(ch / 2)
                        && b.len() > 1
                        && tx.send(b.slice(1..)).await.is_err()
                    {
                        inbound[ch / 2] = None;
                    }
                }
                Message::Close(_) => break,
                _ => {}
            }
        }
    };
    // The socket ends when every connection has ended (the writer then sends Close), or when
    // the client leaves.
    tokio::select! {
        _ = reader => tasks.abort_all(),
        _ = writer => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_ports_are_parsed_as_upstream() {
        assert_eq!(ports("port=80&port=8080,9090"), Ok(vec![80, 8080, 9090]));
        assert_eq!(
            ports("ports=80"),
            Err("query parameter \"port\" is required".into())
        );
        assert!(ports("port=").unwrap_err().contains("cannot be empty"));
        assert!(ports("port=0").unwrap_err().contains("must be > 0"));
        assert!(ports("port=70000").unwrap_err().contains("unable to parse"));
        let many: Vec<String> = (1..=129).map(|p| p.to_string()).collect();
        let q = format!("port={}", many.join(","));
        assert!(ports(&q).unwrap_err().contains("at most 128"));
        assert_eq!(
            ports(&format!("port={}", many[..128].join(",")))
                .unwrap()
                .len(),
            128
        );
    }

    #[test]
    fn streams_need_a_port_and_a_known_type() {
        let h = |v: &[(&str, &str)]| -> spdy::Headers {
            v.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect()
        };
        assert_eq!(
            check_stream(&h(&[("streamtype", "data"), ("port", "80")])),
            Ok((Kind::Data, 80))
        );
        assert!(check_stream(&h(&[("streamtype", "data")])).is_err());
        assert!(check_stream(&h(&[("streamtype", "data"), ("port", "0")])).is_err());
        assert!(check_stream(&h(&[("streamtype", "stdin"), ("port", "80")])).is_err());
    }

    /// A client's side of a session over an in-memory pipe: the frames it reads back.
    async fn exchange(
        dial: Dialer,
        script: impl FnOnce(&mut FrameWriter) -> Vec<Vec<u8>>,
    ) -> Vec<Frame> {
        let (client, server) = tokio::io::duplex(1 << 20);
        let target = Target {
            pod: "default/web".into(),
            uid: "u1".into(),
        };
        let s = tokio::spawn(session(server, dial, target, STREAM_TIMEOUT));
        let (r, mut w) = tokio::io::split(client);
        let mut frames = FrameWriter::new();
        for f in script(&mut frames) {
            w.write_all(&f).await.unwrap();
        }
        let mut reader = FrameReader::new(r);
        let mut seen = Vec::new();
        // Read until both streams of the pair ended (a FIN each), then hang up.
        let mut fins = 0;
        while fins < 2 {
            let f = tokio::time::timeout(std::time::Duration::from_secs(10), reader.next())
                .await
                .expect("a frame in time")
                .unwrap()
                .expect("the session answers");
            if let Frame::Data { fin: true, .. } = f {
                fins += 1;
            }
            seen.push(f);
        }
        w.shutdown().await.unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(10), s)
            .await
            .expect("the session ends when the client hangs up")
            .unwrap();
        seen
    }

    #[tokio::test]
    async fn a_pod_that_keeps_writing_after_the_client_closed_gets_a_second() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        // Writes forever and never closes.
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            while s.write_all(b"tick\n").await.is_ok() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        let dial = loopback();
        let p = port.to_string();
        // exchange() waits (10 s at most) for both streams to end.
        let seen = exchange(dial, |f| {
            vec![
                open(f, 1, "error", &p),
                open(f, 3, "data", &p),
                FrameWriter::data(3, true, b"bye"),
            ]
        })
        .await;
        assert!(
            seen.iter()
                .any(|f| matches!(f, Frame::Data { id: 3, data, .. } if data.starts_with(b"tick"))),
            "{seen:?}"
        );
    }

    #[tokio::test]
    async fn a_pair_left_incomplete_times_out_on_its_error_stream() {
        let (client, server) = tokio::io::duplex(1 << 20);
        let dial: Dialer = Arc::new(|_| Box::pin(async { Err("unused".to_string()) }));
        let target = Target {
            pod: "default/web".into(),
            uid: "u1".into(),
        };
        let timeout = Duration::from_millis(300);
        let s = tokio::spawn(session(server, dial, target, timeout));
        let (r, mut w) = tokio::io::split(client);
        let mut f = FrameWriter::new();
        w.write_all(&f.syn_stream(
            1,
            false,
            &[("streamType", "error"), ("port", "80"), ("requestID", "7")],
        ))
        .await
        .unwrap();
        let mut reader = FrameReader::new(r);
        let started = tokio::time::Instant::now();
        let mut error = Vec::new();
        loop {
            if let Frame::Data { id: 1, data, fin } = reader.next().await.unwrap().unwrap() {
                error.extend_from_slice(&data);
                if fin {
                    break;
                }
            }
        }
        assert!(started.elapsed() >= timeout);
        assert_eq!(
            String::from_utf8(error).unwrap(),
            "timed out waiting for streams of request 7"
        );
        w.shutdown().await.unwrap();
        s.await.unwrap();
    }

    /// Dials the host's loopback.
    fn loopback() -> Dialer {
        Arc::new(|p| {
            Box::pin(async move {
                TcpStream::connect(("127.0.0.1", p))
                    .await
                    .map_err(|e| e.to_string())
            })
        })
    }

    fn open(f: &mut FrameWriter, id: u32, kind: &str, port: &str) -> Vec<u8> {
        f.syn_stream(
            id,
            false,
            &[("streamType", kind), ("port", port), ("requestID", "0")],
        )
    }

    #[tokio::test]
    async fn a_stream_pair_forwards_both_ways() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        // An upper-casing echo server that answers once the client half-closes.
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).await.unwrap();
            s.write_all(&got.to_ascii_uppercase()).await.unwrap();
        });
        let dial = loopback();
        let p = port.to_string();
        let seen = exchange(dial, |f| {
            vec![
                open(f, 1, "error", &p),
                FrameWriter::data(1, true, b""),
                open(f, 3, "data", &p),
                FrameWriter::ping(1),
                FrameWriter::data(3, false, b"hello "),
                FrameWriter::data(3, true, b"world"),
            ]
        })
        .await;
        assert!(matches!(seen[0], Frame::SynReply { id: 1, .. }), "{seen:?}");
        assert!(matches!(seen[1], Frame::SynReply { id: 3, .. }), "{seen:?}");
        assert!(seen.contains(&Frame::Ping(1)), "{seen:?}");
        let data: Vec<u8> = seen
            .iter()
            .filter_map(|f| match f {
                Frame::Data { id: 3, data, .. } => Some(data.to_vec()),
                _ => None,
            })
            .flatten()
            .collect();
        assert_eq!(data, b"HELLO WORLD");
        assert!(
            !seen
                .iter()
                .any(|f| matches!(f, Frame::Data { id: 1, data, .. } if !data.is_empty())),
            "no error: {seen:?}"
        );
    }

    #[tokio::test]
    async fn a_failed_dial_is_reported_on_the_error_stream_and_bad_streams_are_reset() {
        let dial: Dialer =
            Arc::new(|p| Box::pin(async move { Err(format!("nothing listens on {p}")) }));
        let seen = exchange(dial, |f| {
            vec![
                f.syn_stream(5, false, &[("streamType", "stdin"), ("port", "81")]),
                open(f, 1, "error", "81"),
                open(f, 7, "error", "81"),
                open(f, 3, "data", "81"),
            ]
        })
        .await;
        assert_eq!(
            seen[0],
            Frame::RstStream {
                id: 5,
                status: spdy::CANCEL
            }
        );
        assert!(matches!(seen[1], Frame::SynReply { id: 1, .. }), "{seen:?}");
        assert_eq!(
            seen[2],
            Frame::RstStream {
                id: 7,
                status: spdy::CANCEL
            },
            "a second error stream for one request"
        );
        let error: Vec<u8> = seen
            .iter()
            .filter_map(|f| match f {
                Frame::Data { id: 1, data, .. } => Some(data.to_vec()),
                _ => None,
            })
            .flatten()
            .collect();
        assert_eq!(
            String::from_utf8(error).unwrap(),
            "error forwarding port 81 to pod default/web, uid u1: nothing listens on 81"
        );
    }
}
