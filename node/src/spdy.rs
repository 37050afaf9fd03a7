//! SPDY/3.1 framing, as much of it as a server of Kubernetes' stream protocols needs. kubectl's
//! `port-forward` speaks it, after a plain HTTP upgrade (`Upgrade: SPDY/3.1`) or tunnelled
//! through a WebSocket (subprotocol `SPDY/3.1+portforward.k8s.io`, kubectl 1.31 and later).
//!
//! A frame starts with eight bytes. A control frame: the control bit, a 15-bit version (3), a
//! 16-bit type, 8 bits of flags and a 24-bit length. A data frame: a clear bit, a 31-bit stream
//! id, the flags (FIN) and the length. Header blocks (SYN_STREAM, SYN_REPLY, HEADERS) are
//! zlib-compressed with one stream per direction for the whole connection, primed with the
//! protocol's fixed dictionary, so every block must be inflated in order even when ignored.
//!
//! No flow control is done: Kubernetes' SPDY clients (moby/spdystream) neither wait for nor
//! send WINDOW_UPDATE frames.

use std::io;

use bytes::Bytes;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use tokio::io::{AsyncRead, AsyncReadExt};

/// The header-compression dictionary of SPDY/3 (a wire constant: both ends prime zlib with it).
const DICTIONARY: &[u8] = include_bytes!("spdy_dictionary.bin");

/// The FIN flag: the sender's last frame on the stream.
pub const FLAG_FIN: u8 = 0x01;

const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const HEADERS: u16 = 8;

/// RST_STREAM status: the stream is not wanted (spdystream's `Reset`).
pub const CANCEL: u32 = 5;

const STREAM_ID: u32 = 0x7fff_ffff;

/// The largest control frame read (header blocks of port forwarding are a few dozen bytes).
const MAX_CONTROL: usize = 1 << 20;
/// The largest header block once inflated (a bound against compression bombs).
const MAX_HEADERS: usize = 256 << 10;

/// A header block: names (lower case on the wire) and values.
pub type Headers = Vec<(String, String)>;

/// The value of a header (names compare case-insensitively).
pub fn header<'a>(h: &'a Headers, name: &str) -> Option<&'a str> {
    h.iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// One frame as read.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// A new stream from the peer.
    SynStream {
        /// Stream id.
        id: u32,
        /// The peer will send nothing more on it.
        fin: bool,
        /// Its headers.
        headers: Headers,
    },
    /// The answer to a stream we opened.
    SynReply {
        /// Stream id.
        id: u32,
        /// The peer will send nothing more on it.
        fin: bool,
        /// Its headers.
        headers: Headers,
    },
    /// More headers on a stream.
    Headers {
        /// Stream id.
        id: u32,
        /// The headers.
        headers: Headers,
    },
    /// The stream ends abnormally.
    RstStream {
        /// Stream id.
        id: u32,
        /// Status code.
        status: u32,
    },
    /// A ping (answered with the same id).
    Ping(u32),
    /// The peer opens no more streams.
    GoAway {
        /// The last stream the peer accepted.
        last: u32,
    },
    /// Data on a stream.
    Data {
        /// Stream id.
        id: u32,
        /// The sender's last frame on the stream.
        fin: bool,
        /// The bytes.
        data: Bytes,
    },
    /// SETTINGS, WINDOW_UPDATE and the control frames nothing here acts on (by type).
    Other(u16),
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Reads the frames of one direction of a connection.
pub struct FrameReader<R> {
    io: R,
    inflate: Decompress,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Reads from `io`.
    pub fn new(io: R) -> Self {
        FrameReader {
            io,
            inflate: Decompress::new(true),
        }
    }

    /// The next frame; `None` when the connection ends between frames.
    pub async fn next(&mut self) -> io::Result<Option<Frame>> {
        let mut head = [0u8; 8];
        if self.io.read(&mut head[..1]).await? == 0 {
            return Ok(None);
        }
        self.io.read_exact(&mut head[1..]).await?;
        let flags = head[4];
        let fin = flags & FLAG_FIN != 0;
        let len = u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;
        if head[0] & 0x80 != 0 && len > MAX_CONTROL {
            return Err(invalid(format!(
                "a control frame of {len} bytes is too large"
            )));
        }
        let mut body = vec![0u8; len];
        self.io.read_exact(&mut body).await?;
        let first = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        if head[0] & 0x80 == 0 {
            return Ok(Some(Frame::Data {
                id: first & STREAM_ID,
                fin,
                data: body.into(),
            }));
        }
        let version = (first >> 16) & 0x7fff;
        if version != 3 {
            return Err(invalid(format!("unsupported SPDY version {version}")));
        }
        let word = |at: usize| -> io::Result<u32> {
            body.get(at..at + 4)
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                .ok_or_else(|| invalid(format!("control frame of {len} bytes is too short")))
        };
        let kind = (first & 0xffff) as u16;
        Ok(Some(match kind {
            SYN_STREAM => {
                let id = word(0)? & STREAM_ID;
                if body.len() < 10 {
                    return Err(invalid("SYN_STREAM frame is too short"));
                }
                let headers = self.headers(&body[10..])?;
                Frame::SynStream { id, fin, headers }
            }
            SYN_REPLY | HEADERS => {
                let id = word(0)? & STREAM_ID;
                let headers = self.headers(&body[4..])?;
                if kind == SYN_REPLY {
                    Frame::SynReply { id, fin, headers }
                } else {
                    Frame::Headers { id, headers }
                }
            }
            RST_STREAM => Frame::RstStream {
                id: word(0)? & STREAM_ID,
                status: word(4)?,
            },
            PING => Frame::Ping(word(0)?),
            GOAWAY => Frame::GoAway {
                last: word(0)? & STREAM_ID,
            },
            other => Frame::Other(other),
        }))
    }

    fn headers(&mut self, block: &[u8]) -> io::Result<Headers> {
        let raw = inflate(&mut self.inflate, block)?;
        parse_block(&raw)
    }
}

/// Inflates one header block with the connection's decompressor.
fn inflate(d: &mut Decompress, mut input: &[u8]) -> io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(4 * input.len() + 256);
    loop {
        if out.len() == out.capacity() {
            out.reserve(out.capacity().min(MAX_HEADERS));
        }
        let (in0, out0) = (d.total_in(), d.total_out());
        let res = d.decompress_vec(input, &mut out, FlushDecompress::Sync);
        let used = (d.total_in() - in0) as usize;
        input = &input[used..];
        match res {
            Err(e) if e.needs_dictionary().is_some() => {
                d.set_dictionary(DICTIONARY)
                    .map_err(|e| invalid(format!("header block: {e}")))?;
                continue;
            }
            Err(e) => return Err(invalid(format!("header block: {e}"))),
            Ok(_) => {}
        }
        if out.len() > MAX_HEADERS {
            return Err(invalid(format!(
                "a header block inflates to more than {MAX_HEADERS} bytes"
            )));
        }
        let made = d.total_out() - out0;
        if input.is_empty() && out.len() < out.capacity() {
            return Ok(out);
        }
        if used == 0 && made == 0 {
            return Err(invalid("header block: truncated"));
        }
    }
}

/// Splits an inflated header block: a count, then length-prefixed names and values.
fn parse_block(raw: &[u8]) -> io::Result<Headers> {
    let mut at = 0usize;
    let mut take = |n: usize| -> io::Result<&[u8]> {
        let s = raw
            .get(at..at + n)
            .ok_or_else(|| invalid("header block is truncated"))?;
        at += n;
        Ok(s)
    };
    let word = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
    let count = word(take(4)?);
    let mut out = Vec::new();
    for _ in 0..count {
        let n = word(take(4)?);
        let name = String::from_utf8_lossy(take(n)?).into_owned();
        let n = word(take(4)?);
        let value = String::from_utf8_lossy(take(n)?).into_owned();
        out.push((name, value));
    }
    Ok(out)
}

/// Encodes the frames of one direction of a connection.
pub struct FrameWriter {
    deflate: Compress,
}

impl Default for FrameWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameWriter {
    /// A writer with a fresh header compressor.
    pub fn new() -> Self {
        let mut deflate = Compress::new(Compression::best(), true);
        deflate
            .set_dictionary(DICTIONARY)
            .expect("a fresh compressor takes a dictionary");
        FrameWriter { deflate }
    }

    fn control(kind: u16, flags: u8, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + body.len());
        out.extend_from_slice(&(0x8000u16 | 3).to_be_bytes());
        out.extend_from_slice(&kind.to_be_bytes());
        out.push(flags);
        out.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        out.extend_from_slice(body);
        out
    }

    fn block(&mut self, headers: &[(&str, &str)]) -> Vec<u8> {
        let mut raw = Vec::new();
        raw.extend_from_slice(&(headers.len() as u32).to_be_bytes());
        for (n, v) in headers {
            for s in [n.to_ascii_lowercase().as_bytes(), v.as_bytes()] {
                raw.extend_from_slice(&(s.len() as u32).to_be_bytes());
                raw.extend_from_slice(s);
            }
        }
        let mut input = raw.as_slice();
        let mut out = Vec::with_capacity(raw.len() + 64);
        loop {
            let in0 = self.deflate.total_in();
            self.deflate
                .compress_vec(input, &mut out, FlushCompress::Sync)
                .expect("deflate into memory");
            input = &input[(self.deflate.total_in() - in0) as usize..];
            if input.is_empty() && out.len() < out.capacity() {
                return out;
            }
            out.reserve(out.capacity().max(64));
        }
    }

    /// SYN_STREAM: opens stream `id` (a client's ids are odd).
    pub fn syn_stream(&mut self, id: u32, fin: bool, headers: &[(&str, &str)]) -> Vec<u8> {
        let mut body = (id & STREAM_ID).to_be_bytes().to_vec();
        body.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        body.extend(self.block(headers));
        Self::control(SYN_STREAM, if fin { FLAG_FIN } else { 0 }, &body)
    }

    /// SYN_REPLY: accepts the peer's stream `id`.
    pub fn syn_reply(&mut self, id: u32, fin: bool, headers: &[(&str, &str)]) -> Vec<u8> {
        let mut body = (id & STREAM_ID).to_be_bytes().to_vec();
        body.extend(self.block(headers));
        Self::control(SYN_REPLY, if fin { FLAG_FIN } else { 0 }, &body)
    }

    /// RST_STREAM.
    pub fn rst_stream(id: u32, status: u32) -> Vec<u8> {
        let mut body = (id & STREAM_ID).to_be_bytes().to_vec();
        body.extend_from_slice(&status.to_be_bytes());
        Self::control(RST_STREAM, 0, &body)
    }

    /// PING (a server answers the client's with the same id).
    pub fn ping(id: u32) -> Vec<u8> {
        Self::control(PING, 0, &id.to_be_bytes())
    }

    /// GOAWAY with status OK.
    pub fn goaway(last: u32) -> Vec<u8> {
        let mut body = (last & STREAM_ID).to_be_bytes().to_vec();
        body.extend_from_slice(&0u32.to_be_bytes());
        Self::control(GOAWAY, 0, &body)
    }

    /// A data frame (at most 16 MiB - 1 bytes).
    pub fn data(id: u32, fin: bool, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + data.len());
        out.extend_from_slice(&(id & STREAM_ID).to_be_bytes());
        out.push(if fin { FLAG_FIN } else { 0 });
        out.extend_from_slice(&(data.len() as u32).to_be_bytes()[1..]);
        out.extend_from_slice(data);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read_all(bytes: Vec<u8>) -> Vec<Frame> {
        let mut r = FrameReader::new(bytes.as_slice());
        let mut out = Vec::new();
        while let Some(f) = r.next().await.unwrap() {
            out.push(f);
        }
        out
    }

    #[test]
    fn the_dictionary_is_spdy3s() {
        // RFC draft-mbelshe-httpbis-spdy-00 §2.6.10.1: 1423 bytes; zlib names it by Adler-32.
        assert_eq!(DICTIONARY.len(), 1423);
        let (mut a, mut b) = (1u32, 0u32);
        for &x in DICTIONARY {
            a = (a + x as u32) % 65521;
            b = (b + a) % 65521;
        }
        assert_eq!((b << 16) | a, 0xe3c6_a7c2);
    }

    #[tokio::test]
    async fn frames_round_trip_with_one_compression_context_per_direction() {
        let mut w = FrameWriter::new();
        let mut wire = Vec::new();
        wire.extend(w.syn_stream(
            1,
            false,
            &[("streamType", "error"), ("port", "80"), ("requestID", "0")],
        ));
        wire.extend(w.syn_stream(
            3,
            false,
            &[("streamType", "data"), ("port", "80"), ("requestID", "0")],
        ));
        wire.extend(FrameWriter::data(3, false, b"GET / HTTP/1.0\r\n\r\n"));
        wire.extend(FrameWriter::data(1, true, b""));
        wire.extend(w.syn_reply(2, true, &[]));
        wire.extend(FrameWriter::rst_stream(3, CANCEL));
        wire.extend(FrameWriter::ping(7));
        wire.extend(FrameWriter::goaway(3));
        let frames = read_all(wire).await;
        let hs = |v: &[(&str, &str)]| -> Headers {
            v.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect()
        };
        assert_eq!(
            frames,
            vec![
                Frame::SynStream {
                    id: 1,
                    fin: false,
                    headers: hs(&[("streamtype", "error"), ("port", "80"), ("requestid", "0")])
                },
                Frame::SynStream {
                    id: 3,
                    fin: false,
                    headers: hs(&[("streamtype", "data"), ("port", "80"), ("requestid", "0")])
                },
                Frame::Data {
                    id: 3,
                    fin: false,
                    data: Bytes::from_static(b"GET / HTTP/1.0\r\n\r\n")
                },
                Frame::Data {
                    id: 1,
                    fin: true,
                    data: Bytes::new()
                },
                Frame::SynReply {
                    id: 2,
                    fin: true,
                    headers: vec![]
                },
                Frame::RstStream {
                    id: 3,
                    status: CANCEL
                },
                Frame::Ping(7),
                Frame::GoAway { last: 3 },
            ]
        );
        if let Frame::SynStream { headers, .. } = &frames[1] {
            assert_eq!(header(headers, "StreamType"), Some("data"));
        }
    }

    #[tokio::test]
    async fn a_header_block_uses_the_dictionary() {
        // The first block's zlib header names the dictionary (FDICT and its Adler-32), as Go's
        // spdystream writes it; the reader must prime its inflater to read it.
        let mut w = FrameWriter::new();
        let frame = w.syn_reply(1, false, &[("content-type", "text/plain")]);
        let zlib = &frame[12..];
        assert_eq!(zlib[1] & 0x20, 0x20, "FDICT is set");
        assert_eq!(&zlib[2..6], &0xe3c6_a7c2u32.to_be_bytes());
        let frames = read_all(frame).await;
        assert!(
            matches!(&frames[0], Frame::SynReply { headers, .. } if header(headers, "Content-Type") == Some("text/plain"))
        );
    }

    #[tokio::test]
    async fn bad_frames_are_errors() {
        // SPDY/2 is refused; a header block that is not zlib and a short control frame are
        // errors.
        let mut v2 = FrameWriter::ping(1);
        v2[1] = 2;
        assert!(FrameReader::new(v2.as_slice()).next().await.is_err());
        let mut w = FrameWriter::new();
        let mut syn = w.syn_stream(1, false, &[("a", "b")]);
        syn[18] = 0xff;
        assert!(FrameReader::new(syn.as_slice()).next().await.is_err());
        let short = FrameWriter::control(RST_STREAM, 0, &[0, 0, 0, 1]);
        assert!(FrameReader::new(short.as_slice()).next().await.is_err());
        // A header block that inflates past the bound (a compression bomb) is refused.
        let big = "x".repeat(MAX_HEADERS + 1);
        let bomb = FrameWriter::new().syn_reply(1, false, &[("a", big.as_str())]);
        assert!(bomb.len() < 4096, "compresses well: {}", bomb.len());
        assert!(FrameReader::new(bomb.as_slice()).next().await.is_err());
        // A frame cut off mid-body is an error, not a clean end.
        let data = FrameWriter::data(1, false, b"hello");
        assert!(FrameReader::new(&data[..10]).next().await.is_err());
    }
}
