//! Helpers shared by the root integration tests: servers on free loopback ports, a small
//! HTTP/1.1 client written by hand over `TcpStream` (the facade's dev-dependencies have
//! hyper's server side only), chunked bodies and server-sent events included, and JSON frames
//! over tokio-tungstenite WebSockets.
//!
//! No helper has a timeout of its own: every wait takes the calling test's safety net as
//! `wait`. Each test binary compiles this module whole and uses only part of it, hence
//! `dead_code` is allowed once here rather than at every `mod common;`.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::StatusCode;
use hyper_util::rt::{TokioExecutor, TokioIo};
use livehub::ws::WsService;
use livehub::Hub;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

// ---------------------------------------------------------------------------------------------
// Servers.

/// Serves `app` with axum on a free loopback port; returns its address.
pub(crate) async fn serve_router(app: axum::Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

/// Serves `hub` over WebSocket with a bare hyper server (auto HTTP/1 + HTTP/2 builder,
/// upgrades on) on a free loopback port: each connection gets `service(hub, peer)`. Returns
/// the address.
pub(crate) async fn serve_ws_hyper(
    hub: Hub,
    service: fn(Hub, SocketAddr) -> WsService,
) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, peer)) = listener.accept().await {
            let service = service(hub.clone(), peer);
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    addr
}

// ---------------------------------------------------------------------------------------------
// The three transports.

/// The three transports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Kind {
    Ws,
    Sse,
    Poll,
}

pub(crate) const KINDS: [Kind; 3] = [Kind::Ws, Kind::Sse, Kind::Poll];

impl Kind {
    /// The transport's name in the hub's counters.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Ws => "ws",
            Kind::Sse => "sse",
            Kind::Poll => "poll",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP/1.1: one request per connection, written and parsed by hand, chunked bodies included.

/// A response whose body has been read.
pub(crate) struct Resp {
    pub(crate) status: StatusCode,
    pub(crate) body: Bytes,
}

impl Resp {
    /// The body as JSON; it must be JSON.
    pub(crate) fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
}

/// How a response body is delimited.
enum Framing {
    Chunked,
    Length(usize),
    Eof,
}

/// A response body, read as it arrives (an event stream never ends by itself).
pub(crate) struct HttpBody {
    tcp: TcpStream,
    raw: Vec<u8>,
    framing: Framing,
    /// The safety net for each read.
    wait: Duration,
}

impl HttpBody {
    /// Reads more bytes; `false` at the end of the connection.
    async fn fill(&mut self) -> bool {
        let mut buf = [0u8; 8192];
        let n = tokio::time::timeout(self.wait, self.tcp.read(&mut buf))
            .await
            .expect("timed out reading a response")
            .unwrap_or(0);
        self.raw.extend_from_slice(&buf[..n]);
        n > 0
    }

    /// The next piece of the body, or `None` at its end.
    pub(crate) async fn next_data(&mut self) -> Option<Vec<u8>> {
        loop {
            match &mut self.framing {
                Framing::Length(0) => return None,
                Framing::Length(left) if !self.raw.is_empty() => {
                    let n = (*left).min(self.raw.len());
                    *left -= n;
                    return Some(self.raw.drain(..n).collect());
                }
                Framing::Eof if !self.raw.is_empty() => return Some(std::mem::take(&mut self.raw)),
                Framing::Chunked => {
                    if let Some(pos) = self.raw.windows(2).position(|w| w == b"\r\n") {
                        let line = String::from_utf8_lossy(&self.raw[..pos]).into_owned();
                        let hex = line.split(';').next().unwrap_or("").trim();
                        let size = usize::from_str_radix(hex, 16).expect("a chunk size");
                        if size == 0 {
                            return None;
                        }
                        if self.raw.len() >= pos + 2 + size + 2 {
                            let data = self.raw[pos + 2..pos + 2 + size].to_vec();
                            self.raw.drain(..pos + 2 + size + 2);
                            return Some(data);
                        }
                    }
                }
                _ => {}
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    /// The rest of the body.
    pub(crate) async fn collect(mut self) -> Bytes {
        let mut out = Vec::new();
        while let Some(d) = self.next_data().await {
            out.extend_from_slice(&d);
        }
        Bytes::from(out)
    }
}

/// Sends one request on a fresh connection (`Connection: close`); returns the status, the
/// headers (lowercase names) and the body, unread. Connecting and each read are bounded by
/// `wait`.
pub(crate) async fn send_request(
    addr: SocketAddr,
    method: &str,
    uri: &str,
    headers: &[(&str, String)],
    body: &[u8],
    wait: Duration,
) -> (StatusCode, Vec<(String, String)>, HttpBody) {
    let mut tcp = tokio::time::timeout(wait, TcpStream::connect(addr))
        .await
        .expect("timed out connecting")
        .unwrap();
    let mut req = format!("{method} {uri} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    tcp.write_all(&bytes).await.unwrap();
    let mut b = HttpBody {
        tcp,
        raw: Vec::new(),
        framing: Framing::Eof,
        wait,
    };
    let end = loop {
        if let Some(pos) = b.raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos;
        }
        assert!(
            b.fill().await,
            "the connection ended before the response head"
        );
    };
    let head = String::from_utf8(b.raw.drain(..end + 4).collect()).unwrap();
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    b.framing = if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        Framing::Chunked
    } else if let Some(n) = header("content-length") {
        Framing::Length(n.parse().unwrap())
    } else {
        Framing::Eof
    };
    (StatusCode::from_u16(status).unwrap(), headers, b)
}

/// One whole request and response ([`send_request`], then the whole body).
pub(crate) async fn http(
    addr: SocketAddr,
    method: &str,
    uri: &str,
    headers: &[(&str, String)],
    body: impl AsRef<[u8]>,
    wait: Duration,
) -> Resp {
    let (status, _, body) = send_request(addr, method, uri, headers, body.as_ref(), wait).await;
    Resp {
        status,
        body: body.collect().await,
    }
}

/// Writes `request` (a whole HTTP/1.1 request, as the caller wrote it, with
/// `Connection: close`) on a fresh connection; returns everything the server sends until it
/// closes the connection, read within `wait`. Nothing is parsed.
pub(crate) async fn raw_request(addr: SocketAddr, request: &str, wait: Duration) -> Vec<u8> {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(wait, tcp.read_to_end(&mut raw))
        .await
        .expect("timed out reading the response")
        .unwrap();
    raw
}

// ---------------------------------------------------------------------------------------------
// Server-sent events.

/// An open SSE stream and its parser. Dropping it closes the connection.
pub(crate) struct EventStream {
    body: HttpBody,
    buf: Vec<u8>,
    /// The last event id received (what a browser would send as `Last-Event-ID`).
    pub(crate) last_id: Option<String>,
}

impl EventStream {
    /// The stream on the (unread) body of an accepted `GET`.
    pub(crate) fn new(body: HttpBody) -> EventStream {
        EventStream {
            body,
            buf: Vec::new(),
            last_id: None,
        }
    }

    /// The next event with data, as `(event name, data)`; comments and `retry:` skipped, an
    /// `id:` kept in [`EventStream::last_id`].
    pub(crate) async fn next(&mut self) -> (String, String) {
        loop {
            if let Some(pos) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buf.drain(..pos + 2).collect();
                let text = String::from_utf8(block).expect("SSE is UTF-8");
                let (mut event, mut data) = (String::new(), Vec::new());
                for line in text.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        event = v.trim_start().to_owned();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push(v.strip_prefix(' ').unwrap_or(v).to_owned());
                    } else if let Some(v) = line.strip_prefix("id:") {
                        self.last_id = Some(v.strip_prefix(' ').unwrap_or(v).to_owned());
                    }
                }
                if !data.is_empty() {
                    return (event, data.join("\n"));
                }
                continue;
            }
            let data = self.body.next_data().await.expect("the event stream ended");
            self.buf.extend_from_slice(&data);
        }
    }

    /// The next hub frame: an event's JSON data, whose event name must be the frame's type.
    pub(crate) async fn next_frame(&mut self) -> Value {
        let (event, data) = self.next().await;
        let v: Value = serde_json::from_str(&data).unwrap();
        assert_eq!(v["type"], event.as_str(), "event name is the frame's type");
        v
    }

    /// Reads the `session` event (it must come next); returns the command URL and the
    /// stream's secret command token.
    pub(crate) async fn session(&mut self) -> (String, String) {
        let (event, data) = self.next().await;
        assert_eq!(event, "session");
        let s: Value = serde_json::from_str(&data).unwrap();
        (
            s["commands"].as_str().unwrap().to_owned(),
            s["token"].as_str().unwrap().to_owned(),
        )
    }
}

// ---------------------------------------------------------------------------------------------
// A client's connection on any of the three transports.

/// A WebSocket client connection.
pub(crate) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What a client holds of its session, by transport.
pub(crate) enum Conn {
    Ws(Box<Ws>),
    Sse {
        stream: EventStream,
        /// The command URL (`/sse?session=<id>`).
        url: String,
        /// The stream's secret command token.
        token: String,
    },
    Poll(Polling),
}

impl Conn {
    /// An event stream on the body of an accepted `GET`, before its `session` event is read.
    pub(crate) fn sse(body: HttpBody) -> Conn {
        Conn::Sse {
            stream: EventStream::new(body),
            url: String::new(),
            token: String::new(),
        }
    }
}

/// A long-polling session as its client holds it: where to poll from next, and the frames
/// received but not read yet.
pub(crate) struct Polling {
    /// The session id.
    pub(crate) session: String,
    cursor: String,
    buffered: VecDeque<Value>,
}

impl Polling {
    /// The session from the answer to its opening `POST`, at cursor 0.
    pub(crate) fn new(open: &Value) -> Polling {
        Polling {
            session: open["session"].as_str().unwrap().to_owned(),
            cursor: "0".into(),
            buffered: VecDeque::new(),
        }
    }

    /// The next frame received and not read yet, if any.
    pub(crate) fn pop(&mut self) -> Option<Value> {
        self.buffered.pop_front()
    }

    /// The path of the next long-poll: from the cursor, waiting up to 5 s for frames.
    pub(crate) fn next_poll(&self) -> String {
        format!(
            "/poll?session={}&cursor={}&wait=5000",
            self.session, self.cursor
        )
    }

    /// Takes the answer to that poll, which must be `200`: moves the cursor on and keeps the
    /// frames.
    pub(crate) fn take(&mut self, resp: &Resp) {
        assert_eq!(resp.status, StatusCode::OK, "{:?}", resp.body);
        let batch = resp.json();
        self.cursor = batch["cursor"].as_str().unwrap().to_owned();
        self.buffered
            .extend(batch["frames"].as_array().unwrap().iter().cloned());
    }
}

// ---------------------------------------------------------------------------------------------
// JSON frames over a WebSocket.

/// Sends `frame` as a text frame.
pub(crate) async fn send_json(ws: &mut Ws, frame: Value) {
    ws.send(Message::text(frame.to_string())).await.unwrap();
}

/// The next JSON text frame, however long it takes. Pings and pongs are skipped; anything
/// else (a binary or close frame, a read error, the end of the connection) fails the test.
pub(crate) async fn next_json(ws: &mut Ws) -> Value {
    loop {
        let msg = ws
            .next()
            .await
            .expect("the connection ended")
            .expect("read error");
        if let Some(v) = text_json(msg) {
            return v;
        }
    }
}

/// [`next_json`], each read within `wait`.
pub(crate) async fn recv_json(ws: &mut Ws, wait: Duration) -> Value {
    loop {
        let msg = tokio::time::timeout(wait, ws.next())
            .await
            .expect("timed out waiting for a frame")
            .expect("the connection ended")
            .expect("read error");
        if let Some(v) = text_json(msg) {
            return v;
        }
    }
}

/// A text frame's JSON; `None` for a ping or a pong; any other frame fails the test.
fn text_json(msg: Message) -> Option<Value> {
    match msg {
        Message::Text(t) => {
            Some(serde_json::from_str(&t).unwrap_or_else(|e| panic!("not JSON ({e}): {t}")))
        }
        Message::Ping(_) | Message::Pong(_) => None,
        other => panic!("unexpected {other:?}"),
    }
}

/// Reads until the server's close frame, each read within `wait`; returns its code and
/// reason (1005 and no reason for a close without a code, or none at all).
pub(crate) async fn close_frame(ws: &mut Ws, wait: Duration) -> (u16, String) {
    loop {
        let msg = tokio::time::timeout(wait, ws.next())
            .await
            .expect("timed out waiting for the close");
        match msg {
            Some(Ok(Message::Close(Some(f)))) => return (f.code.into(), f.reason.to_string()),
            Some(Ok(Message::Close(None))) | None => return (1005, String::new()),
            Some(Ok(_)) => continue,
            Some(Err(e)) => panic!("error before the close: {e}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A client on any of the three transports, speaking JSON frames.

/// A client on any transport, as user `user` (sent as `?user=` with every request; the
/// servers of the tests that use it authenticate by that parameter).
pub(crate) struct Client {
    pub(crate) addr: SocketAddr,
    pub(crate) kind: Kind,
    pub(crate) user: String,
    pub(crate) conn: Conn,
    /// The session's public id, from `welcome`.
    pub(crate) session: livehub::SessionId,
    /// The safety net for each wait.
    pub(crate) wait: Duration,
}

/// The identity a [`Client`]'s requests name: user `?user=<name>`; none is refused.
pub(crate) fn user_identity(
    req: &livehub::ConnectRequest,
) -> Result<livehub::Identity, livehub::Rejection> {
    match req.query("user") {
        Some(u) if !u.is_empty() => Ok(livehub::Identity::user(u.into_owned())),
        _ => Err(livehub::Rejection::unauthorized("?user= required")),
    }
}

/// `path` with `user=<user>` added to its query.
pub(crate) fn with_user(path: &str, user: &str) -> String {
    let sep = if path.contains('?') { '&' } else { '?' };
    format!("{path}{sep}user={user}")
}

impl Client {
    /// Connects (WebSocket at `/ws`, SSE at `/sse`, long-polling at `/poll`) and reads
    /// `welcome` (and, over SSE, the `session` event). An SSE stream follows `sse_topics`
    /// from its URL.
    pub(crate) async fn open(
        addr: SocketAddr,
        kind: Kind,
        user: &str,
        sse_topics: &[&str],
        wait: Duration,
    ) -> Client {
        Client::open_with(addr, kind, user, sse_topics, &[], wait).await
    }

    /// [`Client::open`], with extra headers on the request that opens an SSE stream (e.g.
    /// `last-event-id`).
    pub(crate) async fn open_with(
        addr: SocketAddr,
        kind: Kind,
        user: &str,
        sse_topics: &[&str],
        sse_headers: &[(&str, String)],
        wait: Duration,
    ) -> Client {
        let conn = match kind {
            Kind::Ws => {
                let url = format!("ws://{addr}{}", with_user("/ws", user));
                let (ws, _) = tokio::time::timeout(wait, tokio_tungstenite::connect_async(url))
                    .await
                    .expect("timed out connecting")
                    .expect("WebSocket connect");
                Conn::Ws(Box::new(ws))
            }
            Kind::Sse => {
                let query: Vec<String> = sse_topics.iter().map(|t| format!("topic={t}")).collect();
                let path = with_user(&format!("/sse?{}", query.join("&")), user);
                let mut headers = vec![("accept", "text/event-stream".to_owned())];
                headers.extend(sse_headers.iter().cloned());
                let (status, _, body) = send_request(addr, "GET", &path, &headers, b"", wait).await;
                assert_eq!(status, StatusCode::OK, "SSE open for {user}");
                Conn::sse(body)
            }
            Kind::Poll => {
                let resp = http(addr, "POST", &with_user("/poll", user), &[], "", wait).await;
                assert_eq!(resp.status, StatusCode::OK, "{:?}", resp.body);
                Conn::Poll(Polling::new(&resp.json()))
            }
        };
        let mut c = Client {
            addr,
            kind,
            user: user.to_owned(),
            conn,
            session: livehub::SessionId::parse("0000000000000000").unwrap(),
            wait,
        };
        let welcome = c.recv().await;
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        c.session = livehub::SessionId::parse(welcome["session"].as_str().unwrap()).unwrap();
        if let Conn::Sse { stream, url, token } = &mut c.conn {
            (*url, *token) = tokio::time::timeout(wait, stream.session())
                .await
                .expect("timed out waiting for the session event");
        }
        c
    }

    /// Sends one client frame (SSE and poll: a `POST` that must be accepted with 202).
    pub(crate) async fn send(&mut self, frame: Value) {
        match &mut self.conn {
            Conn::Ws(ws) => send_json(ws, frame).await,
            Conn::Sse { url, token, .. } => {
                let headers = [
                    ("hub-session-token", token.clone()),
                    ("content-type", "application/json".to_owned()),
                ];
                let uri = with_user(url, &self.user);
                let body = frame.to_string();
                let resp = http(self.addr, "POST", &uri, &headers, body, self.wait).await;
                assert_eq!(resp.status, StatusCode::ACCEPTED, "{:?}", resp.body);
            }
            Conn::Poll(p) => {
                let uri = with_user(&format!("/poll?session={}", p.session), &self.user);
                let body = frame.to_string();
                let resp = http(self.addr, "POST", &uri, &[], body, self.wait).await;
                assert_eq!(resp.status, StatusCode::ACCEPTED, "{:?}", resp.body);
            }
        }
    }

    /// The next frame from the hub, however long it takes (each read is bounded on its own:
    /// SSE pings and long-poll answers keep coming).
    pub(crate) async fn next_frame(&mut self) -> Value {
        match &mut self.conn {
            Conn::Ws(ws) => next_json(ws).await,
            Conn::Sse { stream, .. } => stream.next_frame().await,
            Conn::Poll(p) => loop {
                if let Some(frame) = p.pop() {
                    return frame;
                }
                let uri = with_user(&p.next_poll(), &self.user);
                let resp = http(self.addr, "GET", &uri, &[], "", self.wait).await;
                p.take(&resp);
            },
        }
    }

    /// The next frame, within the client's safety net.
    pub(crate) async fn recv(&mut self) -> Value {
        tokio::time::timeout(self.wait, self.next_frame())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{:?} {}: timed out waiting for a frame",
                    self.kind, self.user
                )
            })
    }

    /// Sends `frame` with `id`; returns its answer (a `reply` or an `error` with that id;
    /// the frames that come before it are skipped).
    pub(crate) async fn ask(&mut self, mut frame: Value, id: u64) -> Value {
        frame["id"] = serde_json::json!(id);
        self.send(frame).await;
        loop {
            let f = self.recv().await;
            if f["id"] == id && matches!(f["type"].as_str(), Some("reply" | "error")) {
                return f;
            }
        }
    }

    /// Sends `frame` with `id`; returns once its `reply` arrives (other frames are skipped).
    pub(crate) async fn request(&mut self, frame: Value, id: u64) {
        let f = self.ask(frame, id).await;
        assert_eq!(f["type"], "reply", "{:?} {}: {f}", self.kind, self.user);
    }

    /// Ends the session the clean way: a WebSocket close handshake, closing the event stream
    /// (what `EventSource.close()` does), or `DELETE` for long-polling.
    pub(crate) async fn close(self) {
        match self.conn {
            Conn::Ws(mut ws) => {
                ws.send(Message::Close(None)).await.unwrap();
                // Read until the server's close answer and the end of the stream.
                tokio::time::timeout(self.wait, async {
                    while let Some(Ok(_)) = ws.next().await {}
                })
                .await
                .expect("timed out closing");
            }
            Conn::Sse { stream, .. } => drop(stream),
            Conn::Poll(p) => {
                let uri = with_user(&format!("/poll?session={}", p.session), &self.user);
                let resp = http(self.addr, "DELETE", &uri, &[], "", self.wait).await;
                assert_eq!(resp.status, StatusCode::NO_CONTENT, "{:?}", resp.body);
            }
        }
    }
}

/// A WebSocket close that a shutdown sent: 1001 `shutdown`, with the hub's reconnection hint
/// (`shutdown;retry_ms=N`, N within the default 5 s spread).
#[allow(dead_code)]
pub(crate) fn assert_shutdown_close(code: u16, text: &str) {
    assert_eq!(code, 1001, "{text}");
    let parsed = livehub::CloseText::parse(text);
    assert_eq!(parsed.reason, "shutdown", "{text}");
    assert!(
        parsed.retry_ms.is_some_and(|ms| (1..=5000).contains(&ms)),
        "{text}"
    );
}
