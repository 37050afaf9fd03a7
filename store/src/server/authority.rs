//! Accepts the `:authority` etcdctl 3.4 sends from its per-endpoint commands.
//!
//! `etcdctl endpoint status` and `endpoint hashkv` (and `move-leader`, which starts with a
//! status) dial each endpoint on its own, and grpc-go then sends the whole endpoint URL as the
//! HTTP/2 `:authority` (`http://127.0.0.1:2379`). etcd's Go server takes it; hyper's HTTP/2
//! layer refuses such a request with `RST_STREAM(PROTOCOL_ERROR)` before any service sees it,
//! and offers no setting to relax that.
//!
//! [`FixAuthority`] sits between the connection and the HTTP/2 server and reads the client's
//! frames. It looks at the connection's first header block: when its `:authority` is a valid
//! one (every other client), everything after it passes through untouched. When it is not,
//! the connection is rewritten for good: every header block is decoded (HPACK keeps state per
//! connection, so all of them must be) and sent on re-encoded as literals with the authority
//! mended (`http://host:port/...` becomes `host:port`; what cannot be mended is left out, which
//! HTTP/2 allows). The server's side only ever sees literals, so its decoding table stays empty
//! and in step. Replies are never touched.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use axum::http::uri::Authority;
use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The client connection preface (RFC 9113 section 3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const PREFACE_LEN: usize = PREFACE.len();
const FRAME_HEADER: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The largest frame the server accepts unless it says otherwise (RFC 9113 section 4.2;
/// hyper's server keeps this default).
const MAX_FRAME: usize = 16_384;

/// The largest header block taken (HPACK-encoded): hyper's server accepts header lists of
/// 16 KiB decoded; an encoded block is smaller, so this leaves room.
const MAX_BLOCK: usize = 64 * 1024;

enum Mode {
    /// The connection preface, this many bytes of it still to come.
    Preface(usize),
    /// Frames before the first header block: the decision is pending.
    Undecided,
    /// Every header block is rewritten.
    Rewrite,
    /// Bytes pass as they are.
    Pass,
}

/// A header block being collected from a HEADERS frame and its CONTINUATIONs.
struct Block {
    stream: u32,
    end_stream: bool,
    fragment: Vec<u8>,
    /// The frames as received, for sending on unchanged.
    original: Vec<u8>,
}

/// An HTTP/2 server connection whose incoming header blocks get a valid `:authority`.
pub struct FixAuthority<S> {
    io: S,
    mode: Mode,
    /// Bytes read from `io`, not looked at yet.
    raw: BytesMut,
    /// Bytes ready for the server.
    out: BytesMut,
    /// Payload bytes of the current frame still to copy as they are.
    skip: usize,
    block: Option<Block>,
    decoder: loona_hpack::Decoder<'static>,
}

impl<S> FixAuthority<S> {
    /// Wraps a server-side connection.
    pub fn new(io: S) -> Self {
        FixAuthority {
            io,
            mode: Mode::Preface(PREFACE_LEN),
            raw: BytesMut::new(),
            out: BytesMut::new(),
            skip: 0,
            block: None,
            decoder: loona_hpack::Decoder::new(),
        }
    }

    /// Moves what can be decided from `raw` to `out`.
    fn process(&mut self) -> io::Result<()> {
        loop {
            match self.mode {
                Mode::Pass => {
                    let rest = self.raw.split();
                    self.out.unsplit(rest);
                    return Ok(());
                }
                Mode::Preface(left) => {
                    let n = left.min(self.raw.len());
                    // Not HTTP/2 (the port also serves `/health` and `/metrics` over HTTP/1):
                    // nothing to look at.
                    let at = PREFACE_LEN - left;
                    if self.raw[..n] != PREFACE[at..at + n] {
                        self.mode = Mode::Pass;
                        continue;
                    }
                    let part = self.raw.split_to(n);
                    self.out.unsplit(part);
                    if n < left {
                        self.mode = Mode::Preface(left - n);
                        return Ok(());
                    }
                    self.mode = Mode::Undecided;
                }
                Mode::Undecided | Mode::Rewrite => {
                    if self.skip > 0 {
                        let n = self.skip.min(self.raw.len());
                        let part = self.raw.split_to(n);
                        self.out.unsplit(part);
                        self.skip -= n;
                        if self.skip > 0 {
                            return Ok(());
                        }
                    }
                    if self.raw.len() < FRAME_HEADER {
                        return Ok(());
                    }
                    let len = u32::from_be_bytes([0, self.raw[0], self.raw[1], self.raw[2]]);
                    let len = len as usize;
                    let kind = self.raw[3];
                    if kind != HEADERS && kind != CONTINUATION {
                        let head = self.raw.split_to(FRAME_HEADER);
                        self.out.unsplit(head);
                        self.skip = len;
                        continue;
                    }
                    // h2 never sees these frames whole: enforce its limits here.
                    if len > MAX_FRAME {
                        return Err(malformed("header frame larger than the frame size"));
                    }
                    if self.raw.len() < FRAME_HEADER + len {
                        return Ok(());
                    }
                    let frame = self.raw.split_to(FRAME_HEADER + len);
                    self.header_frame(&frame)?;
                }
            }
        }
    }

    /// Takes one HEADERS or CONTINUATION frame (header and payload).
    fn header_frame(&mut self, frame: &[u8]) -> io::Result<()> {
        let (kind, flags) = (frame[3], frame[4]);
        let stream = u32::from_be_bytes([frame[5], frame[6], frame[7], frame[8]]) & 0x7fff_ffff;
        let mut payload = &frame[FRAME_HEADER..];
        let block = match (kind, self.block.take()) {
            (HEADERS, None) => {
                if flags & PADDED != 0 {
                    let pad = *payload.first().ok_or_else(|| malformed("padding"))? as usize;
                    payload = payload
                        .get(1..payload.len().saturating_sub(pad))
                        .filter(|_| pad < payload.len())
                        .ok_or_else(|| malformed("padding"))?;
                }
                if flags & PRIORITY != 0 {
                    payload = payload.get(5..).ok_or_else(|| malformed("priority"))?;
                }
                Block {
                    stream,
                    end_stream: flags & END_STREAM != 0,
                    fragment: payload.to_vec(),
                    original: frame.to_vec(),
                }
            }
            (CONTINUATION, Some(mut b)) if b.stream == stream => {
                if b.fragment.len() + payload.len() > MAX_BLOCK {
                    return Err(malformed("header block too large"));
                }
                b.fragment.extend_from_slice(payload);
                b.original.extend_from_slice(frame);
                b
            }
            _ => return Err(malformed("header block out of order")),
        };
        if flags & END_HEADERS == 0 {
            self.block = Some(block);
            return Ok(());
        }
        let headers = self
            .decoder
            .decode(&block.fragment)
            .map_err(|e| malformed(&format!("header block: {e:?}")))?;
        let authority = headers
            .iter()
            .find(|(n, _)| n == b":authority")
            .map(|(_, v)| v.as_slice());
        if matches!(self.mode, Mode::Undecided) {
            if authority.is_none_or(valid) {
                self.out.extend_from_slice(&block.original);
                self.mode = Mode::Pass;
                return Ok(());
            }
            tracing::debug!(
                authority = %String::from_utf8_lossy(authority.unwrap_or_default()),
                "mending the :authority of this connection's requests"
            );
            self.mode = Mode::Rewrite;
        }
        let mut encoded = Vec::with_capacity(block.fragment.len() + 64);
        for (name, value) in &headers {
            if name == b":authority" {
                if let Some(v) = mend(value) {
                    literal(&mut encoded, name, &v);
                }
            } else {
                literal(&mut encoded, name, value);
            }
        }
        let chunks: Vec<&[u8]> = if encoded.is_empty() {
            vec![&encoded[..]]
        } else {
            encoded.chunks(MAX_FRAME).collect()
        };
        let last = chunks.len() - 1;
        for (i, chunk) in chunks.into_iter().enumerate() {
            let (kind, mut flags) = if i == 0 {
                (HEADERS, 0)
            } else {
                (CONTINUATION, 0)
            };
            if i == 0 && block.end_stream {
                flags |= END_STREAM;
            }
            if i == last {
                flags |= END_HEADERS;
            }
            self.out.put_uint(chunk.len() as u64, 3);
            self.out.put_u8(kind);
            self.out.put_u8(flags);
            self.out.put_u32(block.stream);
            self.out.extend_from_slice(chunk);
        }
        Ok(())
    }
}

fn malformed(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("malformed HTTP/2 {what}"),
    )
}

fn valid(authority: &[u8]) -> bool {
    Authority::try_from(authority).is_ok()
}

/// The authority inside a URL-shaped value (`scheme://host:port/path`), if that is valid.
fn mend(value: &[u8]) -> Option<Vec<u8>> {
    if valid(value) {
        return Some(value.to_vec());
    }
    let s = std::str::from_utf8(value).ok()?;
    let rest = s.split_once("://").map_or(s, |(_, r)| r);
    let host = rest.split('/').next().unwrap_or_default();
    valid(host.as_bytes()).then(|| host.as_bytes().to_vec())
}

/// Appends a "literal header field without indexing, new name" (RFC 7541 section 6.2.2),
/// neither string Huffman-coded.
fn literal(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.push(0);
    for s in [name, value] {
        integer(out, s.len(), 7, 0);
        out.extend_from_slice(s);
    }
}

/// Appends `n` as an HPACK integer with an `prefix`-bit prefix (RFC 7541 section 5.1); `high`
/// holds the first byte's bits above the prefix.
fn integer(out: &mut Vec<u8>, mut n: usize, prefix: u8, high: u8) {
    let max = (1usize << prefix) - 1;
    if n < max {
        out.push(high | n as u8);
        return;
    }
    out.push(high | max as u8);
    n -= max;
    while n >= 128 {
        out.push((n % 128) as u8 | 0x80);
        n /= 128;
    }
    out.push(n as u8);
}

impl<S: AsyncRead + Unpin> AsyncRead for FixAuthority<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.out.is_empty() {
                let n = this.out.len().min(buf.remaining());
                buf.put_slice(&this.out[..n]);
                this.out.advance(n);
                return Poll::Ready(Ok(()));
            }
            if matches!(this.mode, Mode::Pass) && this.raw.is_empty() {
                return Pin::new(&mut this.io).poll_read(cx, buf);
            }
            this.raw.reserve(16 * 1024);
            let n = ready!(tokio_util::io::poll_read_buf(
                Pin::new(&mut this.io),
                cx,
                &mut this.raw
            ))?;
            if n == 0 {
                // The peer is done: whatever is left goes to the server as it is.
                let rest = this.raw.split();
                if rest.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                this.out.unsplit(rest);
                this.mode = Mode::Pass;
                continue;
            }
            this.process()?;
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FixAuthority<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// A listener whose connections are wrapped in [`FixAuthority`].
pub struct FixAuthorityListener<L>(pub L);

impl<L: axum::serve::Listener> axum::serve::Listener for FixAuthorityListener<L>
where
    L::Io: Unpin,
{
    type Io = FixAuthority<L::Io>;
    type Addr = L::Addr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (io, addr) = self.0.accept().await;
        (FixAuthority::new(io), addr)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
        f.push(kind);
        f.push(flags);
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// Reads everything the server side would get from `input`, fed in `step`-byte pieces.
    async fn through(input: &[u8], step: usize) -> Vec<u8> {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let mut fixed = FixAuthority::new(server);
        let data = input.to_vec();
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for piece in data.chunks(step) {
                client.write_all(piece).await.unwrap();
                client.flush().await.unwrap();
                tokio::task::yield_now().await;
            }
        });
        let mut got = Vec::new();
        fixed.read_to_end(&mut got).await.unwrap();
        writer.await.unwrap();
        got
    }

    /// Splits the frames after the preface into (kind, flags, stream, payload).
    fn frames(bytes: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
        assert_eq!(&bytes[..PREFACE_LEN], PREFACE.as_slice());
        let mut rest = &bytes[PREFACE_LEN..];
        let mut out = Vec::new();
        while !rest.is_empty() {
            let len = u32::from_be_bytes([0, rest[0], rest[1], rest[2]]) as usize;
            let stream = u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]);
            out.push((rest[3], rest[4], stream, rest[9..9 + len].to_vec()));
            rest = &rest[9 + len..];
        }
        out
    }

    fn request(authority: &str) -> Vec<(&'static [u8], Vec<u8>)> {
        vec![
            (b":method", b"POST".to_vec()),
            (b":scheme", b"http".to_vec()),
            (b":path", b"/etcdserverpb.Maintenance/Status".to_vec()),
            (b":authority", authority.as_bytes().to_vec()),
            (b"content-type", b"application/grpc".to_vec()),
            (b"te", b"trailers".to_vec()),
        ]
    }

    fn encode(enc: &mut loona_hpack::Encoder<'_>, headers: &[(&'static [u8], Vec<u8>)]) -> Vec<u8> {
        enc.encode(headers.iter().map(|(n, v)| (*n, v.as_slice())))
    }

    #[tokio::test]
    async fn a_valid_authority_passes_untouched() {
        let mut enc = loona_hpack::Encoder::new();
        let mut input = PREFACE.to_vec();
        input.extend(frame(0x4, 0, 0, b""));
        for stream in [1, 3] {
            let block = encode(&mut enc, &request("127.0.0.1:2379"));
            input.extend(frame(HEADERS, END_HEADERS, stream, &block));
            input.extend(frame(0x0, END_STREAM, stream, &[0, 0, 0, 0, 0]));
        }
        for step in [1, 7, 4096] {
            assert_eq!(through(&input, step).await, input);
        }
    }

    #[tokio::test]
    async fn a_url_authority_is_mended_on_every_request() {
        let mut enc = loona_hpack::Encoder::new();
        let mut input = PREFACE.to_vec();
        input.extend(frame(0x4, 0, 0, b""));
        // The first block split over a padded HEADERS with priority and a CONTINUATION.
        let first = encode(&mut enc, &request("http://127.0.0.1:2379"));
        let mut head = vec![3u8];
        head.extend_from_slice(&[0, 0, 0, 0, 16]);
        head.extend_from_slice(&first[..4]);
        head.extend_from_slice(&[0, 0, 0]);
        input.extend(frame(HEADERS, PADDED | PRIORITY, 1, &head));
        input.extend(frame(CONTINUATION, END_HEADERS, 1, &first[4..]));
        input.extend(frame(0x0, END_STREAM, 1, &[0, 0, 0, 0, 0]));
        // The second refers to the client's table entries from the first.
        let second = encode(&mut enc, &request("http://127.0.0.1:2379"));
        input.extend(frame(HEADERS, END_HEADERS | END_STREAM, 3, &second));
        let third = encode(&mut enc, &request("unix:///var/run/etcd.sock"));
        input.extend(frame(HEADERS, END_HEADERS | END_STREAM, 5, &third));
        for step in [1, 5, 4096] {
            let got = frames(&through(&input, step).await);
            let kinds: Vec<(u8, u8, u32)> = got.iter().map(|f| (f.0, f.1, f.2)).collect();
            assert_eq!(
                kinds,
                [
                    (0x4, 0, 0),
                    (HEADERS, END_HEADERS, 1),
                    (0x0, END_STREAM, 1),
                    (HEADERS, END_HEADERS | END_STREAM, 3),
                    (HEADERS, END_HEADERS | END_STREAM, 5),
                ]
            );
            let mut dec = loona_hpack::Decoder::new();
            for (i, want) in [
                (1, Some("127.0.0.1:2379")),
                (3, Some("127.0.0.1:2379")),
                (4, None),
            ] {
                let headers = dec.decode(&got[i].3).unwrap();
                let authority = headers
                    .iter()
                    .find(|(n, _)| n == b":authority")
                    .map(|(_, v)| String::from_utf8(v.clone()).unwrap());
                assert_eq!(authority.as_deref(), want, "frame {i}");
                assert_eq!(headers.len(), if want.is_some() { 6 } else { 5 });
                assert!(
                    headers
                        .iter()
                        .any(|(n, v)| n == b":path" && v == b"/etcdserverpb.Maintenance/Status")
                );
            }
        }
    }

    #[tokio::test]
    async fn a_long_block_is_split_into_continuations() {
        let mut enc = loona_hpack::Encoder::new();
        let mut headers = request("http://127.0.0.1:2379");
        headers.push((b"x-big", vec![b'a'; 40_000]));
        let mut input = PREFACE.to_vec();
        // Sent as a client must: frames no larger than the server's maximum.
        let block = encode(&mut enc, &headers);
        let pieces: Vec<&[u8]> = block.chunks(MAX_FRAME).collect();
        for (i, piece) in pieces.iter().enumerate() {
            let kind = if i == 0 { HEADERS } else { CONTINUATION };
            let mut flags = if i == 0 { END_STREAM } else { 0 };
            if i + 1 == pieces.len() {
                flags |= END_HEADERS;
            }
            input.extend(frame(kind, flags, 1, piece));
        }
        let got = frames(&through(&input, 4096).await);
        let kinds: Vec<(u8, u8)> = got.iter().map(|f| (f.0, f.1)).collect();
        assert_eq!(
            kinds,
            [
                (HEADERS, END_STREAM),
                (CONTINUATION, 0),
                (CONTINUATION, END_HEADERS)
            ]
        );
        assert!(got.iter().all(|f| f.3.len() <= MAX_FRAME));
        let block: Vec<u8> = got.iter().flat_map(|f| f.3.clone()).collect();
        let decoded = loona_hpack::Decoder::new().decode(&block).unwrap();
        assert_eq!(decoded.last().unwrap().1.len(), 40_000);
    }

    #[tokio::test]
    async fn http1_requests_pass_untouched() {
        // 25 bytes: one past the preface's length, which must not wait for a frame header.
        let get = b"GET /metrics HTTP/1.0\r\n\r\n";
        assert_eq!(get.len(), 25);
        for step in [1, 4096] {
            assert_eq!(through(get, step).await, get);
        }
    }

    #[tokio::test]
    async fn endless_continuations_are_refused() {
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, 0, 1, &[0x82]));
        for _ in 0..10 {
            input.extend(frame(CONTINUATION, 0, 1, &[0u8; MAX_FRAME]));
        }
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let mut fixed = FixAuthority::new(server);
        use tokio::io::AsyncWriteExt;
        client.write_all(&input).await.unwrap();
        drop(client);
        let mut got = Vec::new();
        let err = fixed.read_to_end(&mut got).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        // An oversized header frame is refused before it is buffered.
        let mut input = PREFACE.to_vec();
        input.extend_from_slice(&[0xff, 0xff, 0xff, HEADERS, 0, 0, 0, 0, 1]);
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let mut fixed = FixAuthority::new(server);
        client.write_all(&input).await.unwrap();
        let mut buf = vec![0u8; 64];
        let err = loop {
            match fixed.read(&mut buf).await {
                Ok(n) => assert!(n > 0, "the connection ended without an error"),
                Err(e) => break e,
            }
        };
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn integers_follow_rfc_7541() {
        // The RFC's examples (C.1.1, C.1.2): 10 and 1337 with a 5-bit prefix.
        let mut out = Vec::new();
        integer(&mut out, 10, 5, 0);
        assert_eq!(out, [0x0a]);
        out.clear();
        integer(&mut out, 1337, 5, 0);
        assert_eq!(out, [0x1f, 0x9a, 0x0a]);
        assert_eq!(
            mend(b"https://10.0.0.1:2379/x"),
            Some(b"10.0.0.1:2379".to_vec())
        );
        assert_eq!(mend(b"/var/run/sock"), None);
        assert_eq!(mend(b"localhost:1"), Some(b"localhost:1".to_vec()));
    }
}
