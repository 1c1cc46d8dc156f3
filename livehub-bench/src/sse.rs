//! A minimal server-sent events client for the load generator: one `GET`, then the chunked
//! body decoded and split into events in reused buffers, many events per read.

use std::io;
use std::net::{IpAddr, SocketAddr};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::ws::{find, tcp_connect};

/// One event stream: the socket, the raw bytes read, and the decoded body.
pub(crate) struct SseConn {
    stream: TcpStream,
    raw: Vec<u8>,
    rs: usize,
    re: usize,
    /// Bytes left in the current chunk.
    chunk_left: usize,
    /// Bytes of the CRLF after a chunk still to skip.
    skip: usize,
    /// Decoded body bytes not yet split into events.
    pub(crate) body: Vec<u8>,
}

/// What a read brought.
pub(crate) enum Read {
    /// More body bytes (maybe none complete an event yet).
    Data,
    /// The stream ended (EOF or the last chunk).
    End,
}

impl SseConn {
    /// Opens `GET path` and reads the response head (which must be `200` and chunked).
    pub(crate) async fn connect(
        addr: SocketAddr,
        src: Option<IpAddr>,
        path: &str,
        buf_size: usize,
    ) -> io::Result<SseConn> {
        let stream = tcp_connect(addr, src).await?;
        let mut c = SseConn {
            stream,
            raw: vec![0; buf_size.max(4096)],
            rs: 0,
            re: 0,
            chunk_left: 0,
            skip: 0,
            body: Vec::with_capacity(buf_size.max(4096)),
        };
        let req =
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n");
        c.stream.write_all(req.as_bytes()).await?;
        loop {
            if let Some(pos) = find(&c.raw[..c.re], b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&c.raw[..pos]).to_ascii_lowercase();
                if !head.starts_with("http/1.1 200") {
                    return Err(io::Error::other(format!(
                        "stream refused: {}",
                        head.chars().take(300).collect::<String>()
                    )));
                }
                if !head.contains("transfer-encoding: chunked") {
                    return Err(io::Error::other("event stream is not chunked"));
                }
                c.rs = pos + 4;
                return Ok(c);
            }
            if c.re == c.raw.len() {
                return Err(io::Error::other("response head too long"));
            }
            let n = c.stream.read(&mut c.raw[c.re..]).await?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "closed before the response",
                ));
            }
            c.re += n;
        }
    }

    /// Decodes what is buffered, then (if nothing was decoded) reads once and decodes again.
    pub(crate) async fn fill(&mut self) -> io::Result<Read> {
        loop {
            match self.decode()? {
                Some(true) => return Ok(Read::End),
                Some(false) => return Ok(Read::Data),
                None => {}
            }
            if self.rs == self.re {
                self.rs = 0;
                self.re = 0;
            } else if self.rs > 0 {
                self.raw.copy_within(self.rs..self.re, 0);
                self.re -= self.rs;
                self.rs = 0;
            }
            if self.re == self.raw.len() {
                let len = self.raw.len() * 2;
                self.raw.resize(len, 0);
            }
            let n = self.stream.read(&mut self.raw[self.re..]).await?;
            if n == 0 {
                return Ok(Read::End);
            }
            self.re += n;
        }
    }

    /// Moves complete chunk data from `raw` to `body`. `Some(true)`: the last chunk came;
    /// `Some(false)`: some data was decoded; `None`: more bytes are needed.
    fn decode(&mut self) -> io::Result<Option<bool>> {
        let mut got = false;
        loop {
            let avail = self.re - self.rs;
            if self.skip > 0 {
                let n = self.skip.min(avail);
                self.rs += n;
                self.skip -= n;
                if self.skip > 0 {
                    return Ok(got.then_some(false));
                }
                continue;
            }
            if self.chunk_left == 0 {
                let Some(eol) = find(&self.raw[self.rs..self.re], b"\r\n") else {
                    return Ok(got.then_some(false));
                };
                let line = &self.raw[self.rs..self.rs + eol];
                let hex = line.split(|&b| b == b';').next().unwrap_or_default();
                let text = std::str::from_utf8(hex).unwrap_or("").trim();
                let n = usize::from_str_radix(text, 16)
                    .map_err(|_| io::Error::other(format!("bad chunk size {text:?}")))?;
                self.rs += eol + 2;
                if n == 0 {
                    return Ok(Some(true));
                }
                self.chunk_left = n;
                continue;
            }
            if avail == 0 {
                return Ok(got.then_some(false));
            }
            let n = self.chunk_left.min(avail);
            self.body.extend_from_slice(&self.raw[self.rs..self.rs + n]);
            self.rs += n;
            self.chunk_left -= n;
            got = true;
            if self.chunk_left == 0 {
                self.skip = 2;
            }
        }
    }
}

/// Calls `f(event_name, data)` for every complete event in `body`, then removes them.
pub(crate) fn events(body: &mut Vec<u8>, mut f: impl FnMut(&[u8], &[u8])) {
    // One pass over the line ends (memchr); an empty line ends an event.
    let mut consumed = 0;
    let mut line_start = 0;
    let mut name: Option<&[u8]> = None;
    let mut data: &[u8] = b"";
    for nl in memchr::memchr_iter(b'\n', body) {
        let line = &body[line_start..nl];
        line_start = nl + 1;
        if line.is_empty() {
            if !data.is_empty() {
                f(name.unwrap_or(b"message"), data);
            }
            name = None;
            data = b"";
            consumed = nl + 1;
        } else if let Some(v) = line.strip_prefix(b"event: ") {
            name = Some(v);
        } else if let Some(v) = line.strip_prefix(b"data: ") {
            data = v;
        }
    }
    body.drain(..consumed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_events() {
        let mut body = b"retry: 3000\n\nevent: welcome\ndata: {\"type\":\"welcome\"}\n\nevent: message\nid: x\ndata: {\"a\":1}\n\nevent: mes"
            .to_vec();
        let mut seen = Vec::new();
        events(&mut body, |n, d| seen.push((n.to_vec(), d.to_vec())));
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[1].0, b"message");
        assert_eq!(seen[1].1, b"{\"a\":1}");
        assert_eq!(body, b"event: mes");
    }
}
