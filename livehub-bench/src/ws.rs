//! A minimal WebSocket client on a raw [`TcpStream`]: the opening handshake, masked client
//! frames, and unmasked server frames parsed in place from one reused buffer, many per read.
//!
//! It is deliberately small and allocation-free in the steady state, so that the load generator
//! costs less per message than the server it measures (a general-purpose client such as
//! tungstenite allocates one `Message` per frame).

use std::io;
use std::net::SocketAddr;
use std::ops::Range;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

/// WebSocket opcode: text frame.
pub(crate) const OP_TEXT: u8 = 0x1;
/// WebSocket opcode: binary frame.
pub(crate) const OP_BINARY: u8 = 0x2;
/// WebSocket opcode: close.
pub(crate) const OP_CLOSE: u8 = 0x8;
/// WebSocket opcode: ping.
pub(crate) const OP_PING: u8 = 0x9;
/// WebSocket opcode: pong.
pub(crate) const OP_PONG: u8 = 0xA;

/// Largest frame accepted from a server (a bench never needs more).
const MAX_FRAME: usize = 1 << 20;

/// One client connection: the stream and its read buffer (`buf[start..end]` is unparsed).
pub(crate) struct WsConn<S = TcpStream> {
    /// The socket (or its read half).
    pub(crate) stream: S,
    /// The read buffer, reused for the connection's life.
    pub(crate) buf: Vec<u8>,
    /// First unparsed byte.
    start: usize,
    /// End of the bytes read.
    end: usize,
    /// State of the cheap generator for mask keys.
    mask_state: u32,
}

/// A frame parsed in place: its opcode, whether it is final, and where its payload is in
/// [`WsConn::buf`] (valid until the next read).
#[derive(Debug, Clone)]
pub(crate) struct FrameRef {
    /// The opcode.
    pub(crate) op: u8,
    /// The FIN bit.
    pub(crate) fin: bool,
    /// The payload's range in the buffer.
    pub(crate) payload: Range<usize>,
}

impl WsConn<TcpStream> {
    /// Connects to `addr`, sends the upgrade request for `path` (with `subprotocol` if given)
    /// and reads the `101` answer. Bytes past the answer stay in the buffer as frames.
    pub(crate) async fn connect(
        addr: SocketAddr,
        src: Option<std::net::IpAddr>,
        path: &str,
        subprotocol: Option<&str>,
        buf_size: usize,
    ) -> io::Result<WsConn> {
        let stream = tcp_connect(addr, src).await?;
        let mut conn = WsConn {
            stream,
            buf: vec![0; buf_size.max(4096)],
            start: 0,
            end: 0,
            mask_state: 0x9E37_79B9 ^ u32::from(addr.port()),
        };
        let proto = subprotocol
            .map(|p| format!("Sec-WebSocket-Protocol: {p}\r\n"))
            .unwrap_or_default();
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{proto}\r\n"
        );
        conn.stream.write_all(req.as_bytes()).await?;
        loop {
            if let Some(pos) = find(&conn.buf[..conn.end], b"\r\n\r\n") {
                let head = &conn.buf[..pos];
                if !head.starts_with(b"HTTP/1.1 101") {
                    let text = String::from_utf8_lossy(&conn.buf[..conn.end]).into_owned();
                    return Err(io::Error::other(format!(
                        "upgrade refused: {}",
                        text.chars().take(300).collect::<String>()
                    )));
                }
                conn.start = pos + 4;
                return Ok(conn);
            }
            if conn.end == conn.buf.len() {
                return Err(io::Error::other("upgrade answer too long"));
            }
            let n = conn.stream.read(&mut conn.buf[conn.end..]).await?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "closed during the upgrade",
                ));
            }
            conn.end += n;
        }
    }

    /// Splits into a reader (with the buffer) and the write half.
    pub(crate) fn split(self) -> (WsConn<OwnedReadHalf>, OwnedWriteHalf, u32) {
        let (rd, wr) = self.stream.into_split();
        let reader = WsConn {
            stream: rd,
            buf: self.buf,
            start: self.start,
            end: self.end,
            mask_state: self.mask_state,
        };
        (reader, wr, self.mask_state)
    }
}

impl<S: AsyncRead + Unpin> WsConn<S> {
    /// Reads once (at least one byte) into the buffer, making room first. Returns 0 at EOF.
    pub(crate) async fn fill(&mut self) -> io::Result<usize> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.buf.len() - self.end < self.buf.len() / 4 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() {
            // A frame larger than the buffer: grow (bounded by MAX_FRAME in `next_frame`).
            let len = self.buf.len() * 2;
            self.buf.resize(len, 0);
        }
        let n = self.stream.read(&mut self.buf[self.end..]).await?;
        self.end += n;
        Ok(n)
    }

    /// The next complete frame in the buffer, if there is one.
    pub(crate) fn next_frame(&mut self) -> io::Result<Option<FrameRef>> {
        let avail = &self.buf[self.start..self.end];
        if avail.len() < 2 {
            return Ok(None);
        }
        let (b0, b1) = (avail[0], avail[1]);
        let masked = b1 & 0x80 != 0;
        let mut hdr = 2;
        let len = match b1 & 0x7f {
            126 => {
                if avail.len() < 4 {
                    return Ok(None);
                }
                hdr = 4;
                usize::from(u16::from_be_bytes([avail[2], avail[3]]))
            }
            127 => {
                if avail.len() < 10 {
                    return Ok(None);
                }
                hdr = 10;
                let mut b = [0u8; 8];
                b.copy_from_slice(&avail[2..10]);
                usize::try_from(u64::from_be_bytes(b)).unwrap_or(usize::MAX)
            }
            n => usize::from(n),
        };
        if masked {
            return Err(io::Error::other("masked frame from the server"));
        }
        if len > MAX_FRAME {
            return Err(io::Error::other(format!("frame of {len} bytes")));
        }
        if avail.len() < hdr + len {
            return Ok(None);
        }
        let begin = self.start + hdr;
        self.start = begin + len;
        Ok(Some(FrameRef {
            op: b0 & 0x0f,
            fin: b0 & 0x80 != 0,
            payload: begin..begin + len,
        }))
    }
}

impl<S: AsyncWrite + Unpin> WsConn<S> {
    /// Appends a masked client frame to `out`.
    pub(crate) fn encode(&mut self, out: &mut Vec<u8>, op: u8, payload: &[u8]) {
        let key = mask_key(&mut self.mask_state);
        encode_frame(out, op, payload, key);
    }

    /// Sends one masked frame now.
    pub(crate) async fn send(&mut self, op: u8, payload: &[u8]) -> io::Result<()> {
        let mut out = Vec::with_capacity(payload.len() + 14);
        self.encode(&mut out, op, payload);
        self.stream.write_all(&out).await
    }
}

/// Connects a TCP stream (with `TCP_NODELAY`) to `addr`, from `src` if given.
pub(crate) async fn tcp_connect(
    addr: SocketAddr,
    src: Option<std::net::IpAddr>,
) -> io::Result<TcpStream> {
    let stream = match src {
        // A source address of its own per load process: the kernel's search for a free
        // ephemeral port slows down badly once one (source, destination) pair holds more
        // than ~14,000 connections.
        Some(ip) => {
            let sock = if ip.is_ipv4() {
                tokio::net::TcpSocket::new_v4()?
            } else {
                tokio::net::TcpSocket::new_v6()?
            };
            sock.bind(SocketAddr::new(ip, 0))?;
            sock.connect(addr).await?
        }
        None => TcpStream::connect(addr).await?,
    };
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// A fresh mask key from `state` (xorshift32; masking is required of clients, and the key
/// need not be secret in a benchmark).
pub(crate) fn mask_key(state: &mut u32) -> [u8; 4] {
    let mut x = *state;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    *state = x;
    x.to_ne_bytes()
}

/// Appends a client frame masked with `key` to `out`.
pub(crate) fn encode_frame(out: &mut Vec<u8>, op: u8, payload: &[u8], key: [u8; 4]) {
    out.push(0x80 | op);
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if let Ok(l16) = u16::try_from(len) {
        out.push(0x80 | 126);
        out.extend_from_slice(&l16.to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&key);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i & 3]));
}

/// The close code and reason of a close frame's payload.
pub(crate) fn close_info(payload: &[u8]) -> String {
    if payload.len() < 2 {
        return "close (no code)".to_owned();
    }
    let code = u16::from_be_bytes([payload[0], payload[1]]);
    format!(
        "close {code} {}",
        String::from_utf8_lossy(&payload[2..]).into_owned()
    )
}

/// The first position of `needle` in `hay`.
pub(crate) fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(hay, needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_lengths() {
        for len in [0usize, 5, 125, 126, 300, 70_000] {
            let payload = vec![7u8; len];
            let mut out = Vec::new();
            encode_frame(&mut out, OP_TEXT, &payload, [1, 2, 3, 4]);
            let hdr = if len < 126 {
                2
            } else if len < 65536 {
                4
            } else {
                10
            };
            assert_eq!(out.len(), hdr + 4 + len);
            assert_eq!(out[0], 0x81);
            assert!(out[1] & 0x80 != 0);
        }
    }
}
