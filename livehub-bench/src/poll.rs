//! A minimal long-polling client for the load generator: HTTP/1.1 keep-alive requests on one
//! connection per session (open, subscribe, then poll after poll), responses read into one
//! reused buffer and scanned in place.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::ws::{find, tcp_connect};

/// One keep-alive HTTP connection.
pub(crate) struct HttpConn {
    stream: TcpStream,
    addr: SocketAddr,
    /// The read buffer; after [`HttpConn::request`], the response body is in it.
    pub(crate) buf: Vec<u8>,
    start: usize,
    end: usize,
    req: Vec<u8>,
}

impl HttpConn {
    /// Connects (from `src` if given).
    pub(crate) async fn connect(
        addr: SocketAddr,
        src: Option<IpAddr>,
        buf_size: usize,
    ) -> io::Result<HttpConn> {
        Ok(HttpConn {
            stream: tcp_connect(addr, src).await?,
            addr,
            buf: vec![0; buf_size.max(4096)],
            start: 0,
            end: 0,
            req: Vec::with_capacity(512),
        })
    }

    /// Sends one request and reads its whole response: the status and where the body is in
    /// [`HttpConn::buf`] (valid until the next request).
    pub(crate) async fn request(
        &mut self,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> io::Result<(u16, Range<usize>)> {
        self.req.clear();
        self.req.extend_from_slice(
            format!(
                "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
                 Content-Length: {}\r\n\r\n",
                self.addr,
                body.len()
            )
            .as_bytes(),
        );
        self.req.extend_from_slice(body);
        self.stream.write_all(&self.req).await?;
        // Drop the previous response.
        self.buf.copy_within(self.start..self.end, 0);
        self.end -= self.start;
        self.start = 0;
        let head_end = loop {
            if let Some(pos) = find(&self.buf[..self.end], b"\r\n\r\n") {
                break pos + 4;
            }
            self.read_more().await?;
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).to_ascii_lowercase();
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| io::Error::other("bad status line"))?;
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| io::Error::other("response without content-length"))?;
        while self.end < head_end + len {
            self.read_more().await?;
        }
        self.start = head_end + len;
        Ok((status, head_end..head_end + len))
    }

    async fn read_more(&mut self) -> io::Result<()> {
        if self.end == self.buf.len() {
            let len = self.buf.len() * 2;
            self.buf.resize(len, 0);
        }
        let n = self.stream.read(&mut self.buf[self.end..]).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed",
            ));
        }
        self.end += n;
        Ok(())
    }
}

/// The value of a string field `"name":"value"` in a JSON body (no escapes expected).
pub(crate) fn str_field<'a>(body: &'a [u8], name: &str) -> Option<&'a str> {
    let key = format!("\"{name}\":\"");
    let start = find(body, key.as_bytes())? + key.len();
    let len = body[start..].iter().position(|&b| b == b'"')?;
    std::str::from_utf8(&body[start..start + len]).ok()
}

/// Calls `f(frame_type)` for every `{"type":"..."` in a poll response.
pub(crate) fn frame_types(body: &[u8], mut f: impl FnMut(&[u8])) {
    let key = b"{\"type\":\"";
    let finder = memchr::memmem::Finder::new(key);
    let mut at = 0;
    while let Some(p) = finder.find(&body[at..]) {
        let s = at + p + key.len();
        let Some(len) = body[s..].iter().position(|&b| b == b'"') else {
            return;
        };
        f(&body[s..s + len]);
        at = s + len;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_and_types() {
        let body =
            br#"{"cursor":"7","frames":[{"type":"reply","id":1},{"type":"message","data":"x"}]}"#;
        assert_eq!(str_field(body, "cursor"), Some("7"));
        let mut types = Vec::new();
        frame_types(body, |t| types.push(t.to_vec()));
        assert_eq!(types, vec![b"reply".to_vec(), b"message".to_vec()]);
    }
}
