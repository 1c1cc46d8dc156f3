//! WebSocket transport for the hub, over a hyper upgrade (RFC 6455 frames read and written by
//! livehub-ws itself; tungstenite only derives the handshake's accept key).
//!
//! [`WsService`] is a service that answers WebSocket upgrade requests; mount it at any path of a
//! bare hyper server or an axum `Router` (`route_service`). For each accepted connection it
//! runs one task that moves frames between the socket and the hub's session:
//!
//! - **Encoding** per connection: subprotocol `hub.v1.json` / `hub.v1.msgpack`, else the query
//!   parameter `encoding=json|msgpack`, else JSON. JSON travels in text frames, MessagePack in
//!   binary frames.
//! - **Refusals before the upgrade**: not a WebSocket upgrade, or a `Sec-WebSocket-Key` that is
//!   not 16 bytes in base64 (400 `bad_request`), unknown encoding (400 `bad_encoding`),
//!   authentication (401/403 from the hub's hook), origin (403 `origin_not_allowed`), limits
//!   (503), each with a JSON body `{"code", "message"}`, counted in the hub's stats by code and
//!   logged at debug.
//! - **The client's address** (for the hooks and the per-address limit): see
//!   [`WsService::with_peer`].
//! - **Heartbeats**: a ping frame at the hub's interval; pongs and any frame count as life.
//! - **Close codes**: 1009 for a frame over the hub's size limit, 1007 for a text frame that
//!   is not UTF-8, 1002 for a protocol violation, 1008 for policy (kicked, slow consumer, rate
//!   limited), 4000 for heartbeat timeout, 1001 on shutdown (PROTOCOL.md, "Closing").
//! - **Slow consumers**: when the hub cuts off a session whose queue overflowed, no new frame
//!   is written; what is already being written gets a bounded time to drain, then the close
//!   frame 1008 `slow_consumer` follows ([`WsService::slow_consumer_drain`]). Only a client
//!   that reads nothing in that time is disconnected without one.
//! - **Reading** with no buffer while idle: frames are read into a buffer on the stack, and
//!   bytes are kept on the heap only while a frame is incomplete. Unmasked frames, reserved
//!   bits or opcodes, bad fragments or control frames close with 1002.
//! - **Batched, vectored writes**: everything queued for the session goes out in one `writev`
//!   of `[header, payload]` pairs (up to 512 frames per call); the payload is the hub's encoding
//!   of the frame, shared by every subscriber and never copied into a per-connection buffer.
//! - **`TCP_NODELAY`** on the connection's socket, by default ([`WsService::tcp_nodelay`]):
//!   livehub-ws takes the TCP socket out of hyper's upgraded connection when the host serves plain
//!   TCP through hyper or hyper-util (axum's `serve` does), so that small frames are not held
//!   back by Nagle's algorithm even where the host did not set the option.
//!
//! # Example: bare hyper
//!
//! A host mounts the service on a port; a client connects, subscribes and gets what the server
//! publishes, frames as in PROTOCOL.md.
//!
//! ```
//! use futures_util::SinkExt;
//! use livehub_core::Hub;
//! use livehub_ws::WsService;
//! use hyper_util::rt::{TokioExecutor, TokioIo};
//! use hyper_util::server::conn::auto;
//! use serde_json::json;
//! use tokio_tungstenite::tungstenite::Message;
//!
//! # use futures_util::StreamExt;
//! # use serde_json::Value;
//! # use tokio::io::{AsyncRead, AsyncWrite};
//! # use tokio_tungstenite::WebSocketStream;
//! # type Error = Box<dyn std::error::Error>;
//! #
//! # /// The next JSON frame from the server (pings, which tungstenite answers, are skipped).
//! # async fn recv<S>(ws: &mut WebSocketStream<S>) -> Result<Value, Error>
//! # where
//! #     S: AsyncRead + AsyncWrite + Unpin,
//! # {
//! #     loop {
//! #         if let Message::Text(text) = ws.next().await.ok_or("connection closed")?? {
//! #             return Ok(serde_json::from_str(&text)?);
//! #         }
//! #     }
//! # }
//! #
//! # #[tokio::main]
//! # async fn main() -> Result<(), Error> {
//! # // A safety net: should anything go wrong, the example fails instead of hanging.
//! # tokio::time::timeout(std::time::Duration::from_secs(10), async {
//! let hub = Hub::builder().build();
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let addr = listener.local_addr()?;
//! tokio::spawn({
//!     let hub = hub.clone();
//!     async move {
//!         while let Ok((tcp, peer)) = listener.accept().await {
//!             let service = WsService::new(hub.clone()).with_peer(peer);
//!             tokio::spawn(async move {
//!                 let _ = auto::Builder::new(TokioExecutor::new())
//!                     .serve_connection_with_upgrades(TokioIo::new(tcp), service)
//!                     .await;
//!             });
//!         }
//!     }
//! });
//!
//! // A client: JSON frames in text messages (`recv` parses the next one).
//! let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/")).await?;
//! assert_eq!(recv(&mut ws).await?["type"], "welcome");
//! ws.send(Message::text(r#"{"type":"subscribe","topic":"scores","id":1}"#)).await?;
//! let reply = recv(&mut ws).await?;
//! assert_eq!(reply["type"], "reply");
//! assert_eq!(reply["id"], 1);
//!
//! // The server publishes; the subscriber gets a `message` frame.
//! hub.publish("scores", &json!({"home": 2, "away": 1})).await?;
//! let message = recv(&mut ws).await?;
//! assert_eq!(message["type"], "message");
//! assert_eq!(message["topic"], "scores");
//! assert_eq!(message["data"], json!({"home": 2, "away": 1}));
//! # Ok::<(), Error>(())
//! # })
//! # .await?
//! # }
//! ```
//!
//! In axum: `Router::new().route_service("/ws", WsService::new(hub))`.

#![warn(missing_docs)]

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use livehub_core::{Codec, Connection, DisconnectReason, Hub, Outgoing, Rejection, TransportInfo};
use std::io::{self, IoSlice};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tracing::Instrument;

mod read;
use read::{Event, FrameReader};

/// The transport's description for the hub: two-way, with WebSocket pings.
pub const TRANSPORT: TransportInfo = TransportInfo::duplex("ws");

/// Subprotocol for JSON.
pub const SUBPROTOCOL_JSON: &str = "hub.v1.json";
/// Subprotocol for MessagePack.
pub const SUBPROTOCOL_MSGPACK: &str = "hub.v1.msgpack";

/// How long a closing connection waits for the client's close frame before dropping the socket.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// The default of [`WsService::slow_consumer_drain`].
pub const DEFAULT_SLOW_CONSUMER_DRAIN: Duration = Duration::from_secs(3);

/// The response body of [`WsService`]: empty for the upgrade, a JSON error for refusals.
pub type Body = Full<Bytes>;

#[derive(Debug, Clone)]
struct WsSettings {
    slow_consumer_drain: Duration,
    tcp_nodelay: bool,
}

/// A service that accepts WebSocket connections into a [`Hub`].
///
/// It implements both `hyper::service::Service` and `tower::Service` (for axum). Cheap to clone.
#[derive(Debug, Clone)]
pub struct WsService {
    hub: Hub,
    peer: Option<SocketAddr>,
    settings: Arc<WsSettings>,
}

impl WsService {
    /// A service for `hub`.
    pub fn new(hub: Hub) -> WsService {
        WsService {
            hub,
            peer: None,
            settings: Arc::new(WsSettings {
                slow_consumer_drain: DEFAULT_SLOW_CONSUMER_DRAIN,
                tcp_nodelay: true,
            }),
        }
    }

    /// The client's address, passed to the authenticate hook and counted by the per-address
    /// limit (a bare hyper server knows it per connection). Otherwise it is found in the
    /// request's extensions: a `SocketAddr`, or axum's `ConnectInfo<SocketAddr>` (feature
    /// `axum`). Behind a trusted proxy ([`livehub_core::HubBuilder::trusted_proxies`]) the client
    /// is the one its forwarding headers name.
    #[must_use]
    pub fn with_peer(mut self, peer: SocketAddr) -> WsService {
        self.peer = Some(peer);
        self
    }

    /// No effect: livehub-ws no longer allocates a read buffer per connection. It reads into a
    /// buffer on the stack and keeps bytes only while a frame is incomplete (so an idle
    /// connection holds none); this setting sized tungstenite's buffer, kept for the
    /// connection's life.
    #[deprecated(note = "livehub-ws keeps no read buffer per connection; this has no effect")]
    #[must_use]
    pub fn read_buffer_size(self, bytes: usize) -> WsService {
        let _ = bytes;
        self
    }

    /// How long a slow consumer's connection is given, once the hub has cut it off, to take
    /// what is already being written to it, and then the close frame 1008 `slow_consumer`
    /// (after which the client's close reply is awaited as usual, at most 2 s). No new frame is
    /// written once it is cut off. A client that reads too little in that time is
    /// disconnected without a close frame (the frame it is in the middle of cannot be ended).
    /// Default 3 s ([`DEFAULT_SLOW_CONSUMER_DRAIN`]).
    #[must_use]
    pub fn slow_consumer_drain(mut self, bound: Duration) -> WsService {
        Arc::make_mut(&mut self.settings).slow_consumer_drain = bound;
        self
    }

    /// Whether an upgraded connection's TCP socket gets `TCP_NODELAY` (default: yes).
    ///
    /// A hub writes small frames as they come; with Nagle's algorithm the kernel holds a small
    /// write while an earlier one is unacknowledged, which with delayed ACKs (40 ms on Linux,
    /// up to 200 ms elsewhere) adds tens of milliseconds to a feed of small messages. livehub-ws
    /// finds the socket under hyper's upgraded connection when the host serves plain TCP
    /// through hyper-util (`TokioIo<TcpStream>`: axum's `serve`, hyper-util's auto builder,
    /// hyper's HTTP/1 builder) and then also writes to it directly; under any other I/O (TLS,
    /// Unix sockets) it cannot, and the host sets the option itself after `accept`.
    #[must_use]
    pub fn tcp_nodelay(mut self, on: bool) -> WsService {
        Arc::make_mut(&mut self.settings).tcp_nodelay = on;
        self
    }

    /// Answers one request (refusals counted and logged), or upgrades it.
    async fn serve<B>(self, req: Request<B>) -> Response<Body> {
        let line = livehub_http::RequestLine::of(&req, self.peer);
        let resp = self.upgrade(req).await;
        livehub_http::note_refusal(&self.hub, TRANSPORT.name, &line, &resp);
        resp
    }

    /// A refusal, or 101 Switching Protocols with the session task spawned.
    async fn upgrade<B>(&self, mut req: Request<B>) -> Response<Body> {
        let Some(key) = upgrade_key(&req) else {
            return refusal(&Rejection::bad_request(
                "bad_request",
                "not a WebSocket upgrade request (GET, Upgrade: websocket, version 13, \
                 Sec-WebSocket-Key: 16 bytes in base64)",
            ));
        };
        let (codec, subprotocol) = match negotiate(&req) {
            Ok(n) => n,
            Err(rej) => return refusal(&rej),
        };
        let connect = livehub_http::connect_request(&self.hub, &req, TRANSPORT, codec, self.peer);
        let peer = connect.peer;
        // Authenticate before upgrading: a refused client gets a plain HTTP answer.
        let conn = match self.hub.connect(connect).await {
            Ok(conn) => conn,
            Err(rej) => return refusal(&rej),
        };
        let on_upgrade = hyper::upgrade::on(&mut req);
        let drain = self.settings.slow_consumer_drain;
        let nodelay = self.settings.tcp_nodelay;
        let max_size = self.hub.max_frame_size();
        let span = tracing::debug_span!(
            "session",
            id = %conn.session.id(),
            transport = "ws",
            peer = ?peer,
        );
        tokio::spawn(
            async move {
                match on_upgrade.await {
                    Ok(upgraded) => {
                        let io = SessionIo::new(upgraded, nodelay);
                        let reader = FrameReader::new(max_size);
                        // A task of its own, sized for the connection's life (the upgrade's
                        // state is not carried along): ~200 bytes less per connection.
                        tokio::spawn(
                            run(io, reader, conn, drain).instrument(tracing::Span::current()),
                        );
                    }
                    // Dropping `conn` ends the session: its presence leaves once.
                    Err(e) => tracing::debug!(error = %e, "upgrade failed"),
                }
            }
            .instrument(span),
        );
        let mut resp = Response::new(Full::new(Bytes::new()));
        *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let h = resp.headers_mut();
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        if let Ok(accept) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
            h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
        }
        if let Some(p) = subprotocol {
            h.insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(p));
        }
        resp
    }
}

impl<B: Send + 'static> tower_service::Service<Request<B>> for WsService {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.serve(req).await) })
    }
}

impl<B: Send + 'static> hyper::service::Service<Request<B>> for WsService {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn call(&self, req: Request<B>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.serve(req).await) })
    }
}

/// Moves frames between one socket and its session until either side ends.
///
/// Reading is [`FrameReader`]'s (no buffer kept while the client is idle); the answers the
/// protocol requires (pongs, the close handshake) are written here, between batches. The
/// session's frames are already encoded and shared by every subscriber, so they go to the
/// socket as `[header, shared payload]` pairs in vectored writes, never copied into a
/// per-connection buffer (see [`FrameWriter`]).
///
/// Not an `async fn`: an async fn keeps its arguments and the locals moved out of them in
/// separate slots of its state, which made every connection's task about 500 bytes larger. The
/// `async move` block below uses what it captures in place.
fn run<S>(
    mut io: S,
    mut reader: FrameReader,
    conn: Connection,
    drain: Duration,
) -> impl Future<Output = ()> + Send
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let Connection {
        session,
        mut outbox,
    } = conn;
    let opcode = if outbox.codec().is_binary() {
        OPCODE_BINARY
    } else {
        OPCODE_TEXT
    };
    async move {
        let mut batch: Vec<Outgoing> = Vec::new();
        // Armed once for the session's life, not once per loop.
        let aborted = session.aborted();
        tokio::pin!(aborted);
        // The client frame being handled. Writing goes on meanwhile (a handler that waits, or a
        // publish paced by congested fan-out, must not stop this session's own frames), while
        // the next frame is read only once this one is done: frames run one at a time, in
        // order, and a client that sends faster than the hub runs its frames is read more
        // slowly (TCP then pushes back on it).
        let mut handling: Option<Pin<Box<dyn Future<Output = ()> + Send + '_>>> = None;
        loop {
            tokio::select! {
                biased;
                _ = &mut aborted => {
                    let reason = session.close_reason().unwrap_or(DisconnectReason::Normal);
                    if reason == DisconnectReason::SlowConsumer {
                        // Cut off between two writes: the close frame may take the drain time.
                        if Box::pin(send_close(&mut io, reason, hint(&session), drain)).await {
                            Box::pin(await_close_reply(&mut io, &mut reader)).await;
                        }
                        return;
                    }
                    // Stalled or gone: try to say why, briefly, then drop the socket.
                    Box::pin(send_close(&mut io, reason, hint(&session), Duration::from_millis(100))).await;
                    return;
                }
                more = outbox.next_batch(&mut batch) => {
                    if !more {
                        return;
                    }
                    let closing = match batch.last() {
                        Some(Outgoing::Close(reason)) => Some(*reason),
                        _ => None,
                    };
                    let writer = FrameWriter::new(opcode);
                    let write = writer.write(&mut io, &batch);
                    // Boxed for the same reason as the command handling below.
                    let mut write = Box::pin(write);
                    let written = tokio::select! {
                        biased;
                        _ = &mut aborted => {
                            // The write may have stopped halfway through a frame. A slow
                            // consumer is given a bounded time to take the rest of it, then
                            // its close frame; in every other case (or if that time runs out)
                            // nothing more can be said on this socket, not even a close frame.
                            if session.close_reason() == Some(DisconnectReason::SlowConsumer) {
                                let deadline = tokio::time::Instant::now() + drain;
                                // Boxed, as every closing path: its timer is not part of every
                                // connection's task for its whole life.
                                let finished =
                                    Box::pin(tokio::time::timeout_at(deadline, &mut write)).await;
                                drop(write);
                                if matches!(finished, Ok(Ok(()))) {
                                    let left =
                                        deadline.saturating_duration_since(tokio::time::Instant::now());
                                    let reason = DisconnectReason::SlowConsumer;
                                    if Box::pin(send_close(&mut io, reason, hint(&session), left)).await {
                                        Box::pin(await_close_reply(&mut io, &mut reader)).await;
                                    }
                                } else {
                                    tracing::debug!(?drain, "a slow consumer took nothing in time: cut without a close frame");
                                }
                            }
                            return;
                        }
                        r = &mut write => r,
                    };
                    drop(write);
                    let frames = batch.len();
                    batch.clear();
                    if batch.capacity() > MAX_IDLE_BATCH || frames <= FEW_FRAMES {
                        // A burst is over, or traffic is light (most likely the session goes
                        // idle now: its welcome and replies): give the memory back rather than
                        // keep it per session. Busy sessions keep theirs between batches.
                        batch = Vec::new();
                    }
                    if written.is_err() {
                        session.close(DisconnectReason::Normal);
                        return;
                    }
                    if let Some(reason) = closing {
                        Box::pin(close_handshake(&mut io, &mut reader, reason, hint(&session))).await;
                        return;
                    }
                }
                () = async {
                    match handling.as_mut() {
                        Some(h) => h.await,
                        None => std::future::pending().await,
                    }
                }, if handling.is_some() => {
                    handling = None;
                }
                event = std::future::poll_fn(|cx| reader.poll_next(&mut io, cx)),
                    if handling.is_none() => match Read::from(event) {
                    // Boxed: the hub's command handling is a large future, and kept inline it
                    // would make every connection's task that much larger for its whole life
                    // (measured: 624 bytes of each idle connection). Clients send rarely.
                    Read::Frame(bytes) => {
                        let mut h = Box::pin(session.handle(bytes));
                        // Most frames are done at once: no need to come round the loop.
                        let done = std::future::poll_fn(|cx| {
                            Poll::Ready(h.as_mut().poll(cx).is_ready())
                        })
                        .await;
                        if !done {
                            handling = Some(h);
                        }
                    }
                    Read::Ping(payload) => {
                        session.touch();
                        // Answered at once, between batches (never inside one). A client that
                        // takes nothing for that long is not there to be answered.
                        let pong = control_frame(OPCODE_PONG, &payload);
                        let sent = Box::pin(tokio::time::timeout(CLOSE_GRACE, async {
                            io.write_all(&pong).await?;
                            io.flush().await
                        }))
                        .await;
                        if !matches!(sent, Ok(Ok(()))) {
                            session.close(DisconnectReason::Normal);
                            return;
                        }
                    }
                    Read::Alive => session.touch(),
                    Read::Closed(close) => {
                        session.close(DisconnectReason::Normal);
                        // The client closed: its close frame is answered with its own code
                        // (RFC 6455, 5.5.1), a bare one with a bare one; an ended stream, not.
                        if let Some(close) = close {
                            let reply = match close {
                                Some((code, reason)) => {
                                    let mut p = code.to_be_bytes().to_vec();
                                    p.extend_from_slice(&reason);
                                    control_frame(OPCODE_CLOSE, &p)
                                }
                                None => control_frame(OPCODE_CLOSE, &[]),
                            };
                            Box::pin(tokio::time::timeout(CLOSE_GRACE, async {
                                io.write_all(&reply).await?;
                                io.flush().await
                            }))
                            .await
                            .ok();
                        }
                        return;
                    }
                    Read::Bad(reason) => {
                        Box::pin(send_close(&mut io, reason, hint(&session), CLOSE_GRACE)).await;
                        session.close(reason);
                        return;
                    }
                }
            }
        }
    }
}

/// The upgraded connection's I/O: the TCP socket itself when hyper's `Upgraded` holds one
/// (`TokioIo<TcpStream>`, directly or under hyper-util's auto builder), with whatever hyper had
/// read past the request head served first; else the `Upgraded` as it is.
///
/// Owning the socket lets livehub-ws set `TCP_NODELAY` ([`WsService::tcp_nodelay`]) and saves the
/// boxed I/O object and its indirection on every read and write.
enum SessionIo {
    /// A plain TCP socket and the bytes hyper read after the request head (usually none).
    Tcp {
        /// Read before the socket: the client's first frames, if it sent them early.
        pre: Bytes,
        /// The connection.
        tcp: TcpStream,
    },
    /// Any other I/O (TLS, Unix sockets, in-memory streams).
    Other(TokioIo<hyper::upgrade::Upgraded>),
}

impl SessionIo {
    /// Unwraps `upgraded` down to its TCP socket where there is one, setting `TCP_NODELAY` if
    /// asked (a failure to set it is logged and otherwise ignored: the connection still works).
    fn new(upgraded: hyper::upgrade::Upgraded, nodelay: bool) -> SessionIo {
        type Plain = TokioIo<TcpStream>;
        let (io, pre) = match hyper_util::server::conn::auto::upgrade::downcast::<Plain>(upgraded) {
            Ok(parts) => (parts.io, parts.read_buf),
            Err(upgraded) => match upgraded.downcast::<Plain>() {
                Ok(parts) => (parts.io, parts.read_buf),
                Err(upgraded) => return SessionIo::Other(TokioIo::new(upgraded)),
            },
        };
        let tcp = io.into_inner();
        // What hyper read past the request head is a slice of its read buffer (8 KiB to
        // ~400 KiB): copied out, so that the buffer goes now, not after the first read.
        let pre = if pre.is_empty() {
            Bytes::new()
        } else {
            Bytes::copy_from_slice(&pre)
        };
        if nodelay {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "could not set TCP_NODELAY");
            }
        }
        SessionIo::Tcp { pre, tcp }
    }
}

impl AsyncRead for SessionIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            SessionIo::Tcp { pre, tcp } => {
                if pre.is_empty() {
                    return Pin::new(tcp).poll_read(cx, buf);
                }
                let n = pre.len().min(buf.remaining());
                buf.put_slice(&pre.split_to(n));
                if pre.is_empty() {
                    // All served: nothing of it is kept.
                    *pre = Bytes::new();
                }
                Poll::Ready(Ok(()))
            }
            SessionIo::Other(io) => Pin::new(io).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for SessionIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            SessionIo::Tcp { tcp, .. } => Pin::new(tcp).poll_write(cx, buf),
            SessionIo::Other(io) => Pin::new(io).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            SessionIo::Tcp { tcp, .. } => Pin::new(tcp).poll_write_vectored(cx, bufs),
            SessionIo::Other(io) => Pin::new(io).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            SessionIo::Tcp { tcp, .. } => tcp.is_write_vectored(),
            SessionIo::Other(io) => io.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            SessionIo::Tcp { tcp, .. } => Pin::new(tcp).poll_flush(cx),
            SessionIo::Other(io) => Pin::new(io).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            SessionIo::Tcp { tcp, .. } => Pin::new(tcp).poll_shutdown(cx),
            SessionIo::Other(io) => Pin::new(io).poll_shutdown(cx),
        }
    }
}

/// What one read from the socket means for the session.
enum Read {
    /// A frame for the hub.
    Frame(Bytes),
    /// A ping: the client is alive, and gets its pong.
    Ping(Bytes),
    /// A pong: the client is alive.
    Alive,
    /// The client closed (`Some`: with a close frame, to be answered, with its code and
    /// reason if it gave them), or the stream ended (`None`).
    Closed(Option<Option<(u16, Bytes)>>),
    /// The client broke the protocol: close with this reason.
    Bad(DisconnectReason),
}

impl From<Result<Event, DisconnectReason>> for Read {
    fn from(event: Result<Event, DisconnectReason>) -> Read {
        match event {
            Ok(Event::Message(bytes)) => Read::Frame(bytes),
            Ok(Event::Ping(payload)) => Read::Ping(payload),
            Ok(Event::Pong) => Read::Alive,
            Ok(Event::Close(close)) => Read::Closed(Some(close)),
            Ok(Event::End) => Read::Closed(None),
            Err(reason) => {
                tracing::debug!(%reason, "closing on bad input");
                Read::Bad(reason)
            }
        }
    }
}

// The closing paths run once per connection: they are called boxed, so that their futures
// (timers, the close frame's write) are not part of every connection's task for its whole life.

/// Sends a close frame, giving up after `wait`; returns whether it was written.
async fn send_close<S>(
    io: &mut S,
    reason: DisconnectReason,
    hint: Option<u64>,
    wait: Duration,
) -> bool
where
    S: AsyncWrite + Unpin,
{
    let frame = close_frame(reason, hint);
    let sent = tokio::time::timeout(wait, async {
        io.write_all(&frame).await?;
        io.flush().await
    })
    .await;
    matches!(sent, Ok(Ok(())))
}

/// Sends our close frame, then waits briefly for the client's before the socket is dropped.
async fn close_handshake<S>(
    io: &mut S,
    reader: &mut FrameReader,
    reason: DisconnectReason,
    hint: Option<u64>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    send_close(io, reason, hint, CLOSE_GRACE).await;
    await_close_reply(io, reader).await;
}

/// Reads (and drops) what the client still sends until its close reply, at most
/// [`CLOSE_GRACE`]: a socket closed with unread input is reset, and a reset can destroy what the
/// client had not read yet, our close frame included.
async fn await_close_reply<S>(io: &mut S, reader: &mut FrameReader)
where
    S: AsyncRead + Unpin,
{
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        loop {
            match std::future::poll_fn(|cx| reader.poll_next(io, cx)).await {
                Ok(Event::Close(_) | Event::End) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
}

/// A control frame (ping, pong, close) of at most 125 bytes of payload, unmasked.
fn control_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let payload = &payload[..payload.len().min(125)];
    let mut out = Vec::with_capacity(2 + payload.len());
    push_header(&mut out, opcode, payload.len());
    out.extend_from_slice(payload);
    out
}

/// The close frame for `reason`: its code and its name (PROTOCOL.md, "Closing").
/// The close frame: the reason's code, and its text with the hub's reconnection hint
/// (`shutdown;retry_ms=2350`, PROTOCOL.md "Closing").
fn close_frame(reason: DisconnectReason, hint: Option<u64>) -> Vec<u8> {
    let mut payload = reason.close_code().to_be_bytes().to_vec();
    match hint {
        None => payload.extend_from_slice(reason.as_str().as_bytes()),
        Some(ms) => payload.extend_from_slice(
            livehub_core::CloseText::new(reason, Some(ms))
                .to_string()
                .as_bytes(),
        ),
    }
    control_frame(OPCODE_CLOSE, &payload)
}

/// A batch's capacity kept between bursts; a larger one is given back after its write.
const MAX_IDLE_BATCH: usize = 64;

/// A batch of at most this many frames gives its memory back after its write (~200 bytes
/// that every idle connection kept: its last batch was its `welcome` and a reply or two).
const FEW_FRAMES: usize = 4;

const OPCODE_TEXT: u8 = 0x1;
const OPCODE_BINARY: u8 = 0x2;
const OPCODE_CLOSE: u8 = 0x8;
const OPCODE_PING: u8 = 0x9;
const OPCODE_PONG: u8 = 0xA;

/// Slices per `writev` call: Linux's `IOV_MAX`.
const MAX_SLICES: usize = 1024;

/// Payloads up to this size are copied next to their header rather than given their own slice:
/// for small frames the kernel's per-slice cost is larger than the copy.
const SMALL_FRAME: usize = 512;

/// Bytes of small frames gathered for one system call. The buffer lives only for the batch's
/// write, so an idle session holds none of it; a stalled one holds at most this much.
const GATHER_MAX: usize = 16 * 1024;

/// One slice of a write: a range of the gather buffer, or a shared payload.
enum Part<'a> {
    Gathered(usize, usize),
    Shared(&'a [u8]),
}

/// Writes a batch of encoded frames as WebSocket frames with vectored writes.
///
/// Small frames (most of a pub/sub hub's traffic) are gathered with their headers into one
/// buffer of at most [`GATHER_MAX`] bytes; a large frame's payload goes out as its own slice,
/// straight from the hub's shared encoding, never copied. Server frames are not masked
/// (RFC 6455, 5.1), so payloads go out as they are. One `writev` per [`GATHER_MAX`] bytes of
/// small frames or [`MAX_SLICES`] slices, whichever comes first.
struct FrameWriter {
    opcode: u8,
}

impl FrameWriter {
    fn new(opcode: u8) -> FrameWriter {
        FrameWriter { opcode }
    }

    /// Writes every `Frame` and `Ping` of `batch`, in order, completely. (`Close` is left to the
    /// caller: the close handshake follows the batch.)
    async fn write<W: AsyncWrite + Unpin>(&self, io: &mut W, batch: &[Outgoing]) -> io::Result<()> {
        let mut next = 0;
        let mut buf: Vec<u8> = Vec::new();
        let mut parts: Vec<Part<'_>> = Vec::new();
        while next < batch.len() {
            buf.clear();
            parts.clear();
            while next < batch.len() && buf.len() < GATHER_MAX && parts.len() + 2 <= MAX_SLICES {
                let (opcode, payload): (u8, &[u8]) = match &batch[next] {
                    Outgoing::Frame(f) => (self.opcode, f.bytes()),
                    Outgoing::Subscribed { .. } => {
                        next += 1;
                        continue;
                    }
                    Outgoing::Ping => (OPCODE_PING, &[]),
                    Outgoing::Close(_) => {
                        next += 1;
                        continue;
                    }
                };
                next += 1;
                let start = buf.len();
                push_header(&mut buf, opcode, payload.len());
                let large = payload.len() > SMALL_FRAME;
                if !large {
                    buf.extend_from_slice(payload);
                }
                match parts.last_mut() {
                    Some(Part::Gathered(_, end)) if *end == start => *end = buf.len(),
                    _ => parts.push(Part::Gathered(start, buf.len())),
                }
                if large {
                    parts.push(Part::Shared(payload));
                }
            }
            let mut slices: Vec<IoSlice<'_>> = parts
                .iter()
                .map(|p| match *p {
                    Part::Gathered(from, to) => IoSlice::new(&buf[from..to]),
                    Part::Shared(payload) => IoSlice::new(payload),
                })
                .collect();
            write_all_vectored(io, &mut slices).await?;
        }
        io.flush().await
    }
}

/// A server frame's header: FIN, the opcode, the payload length, no mask.
fn push_header(out: &mut Vec<u8>, opcode: u8, len: usize) {
    out.push(0x80 | opcode);
    if len < 126 {
        out.push(len as u8);
    } else if let Ok(len) = u16::try_from(len) {
        out.push(126);
        out.extend_from_slice(&len.to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
}

async fn write_all_vectored<W: AsyncWrite + Unpin>(
    io: &mut W,
    slices: &mut [IoSlice<'_>],
) -> io::Result<()> {
    let mut rest = slices;
    while !rest.is_empty() {
        let n = io.write_vectored(rest).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut rest, n);
    }
    Ok(())
}

/// The reconnection delay the hub hinted at for this session's end, in ms.
fn hint(session: &livehub_core::Session) -> Option<u64> {
    session.retry_hint().map(|d| d.as_millis() as u64)
}

fn refusal(rej: &Rejection) -> Response<Body> {
    livehub_http::refusal(rej).map(Full::new)
}

fn upgrade_key<B>(req: &Request<B>) -> Option<HeaderValue> {
    let h = req.headers();
    let has_token = |name: header::HeaderName, token: &str| {
        h.get_all(name).iter().any(|v| {
            v.to_str()
                .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
                .unwrap_or(false)
        })
    };
    let ok = req.method() == Method::GET
        && has_token(header::UPGRADE, "websocket")
        && has_token(header::CONNECTION, "upgrade")
        && h.get(header::SEC_WEBSOCKET_VERSION).map(|v| v.as_bytes()) == Some(b"13");
    if !ok {
        return None;
    }
    // RFC 6455, 4.2.1: "a base64-encoded value that, when decoded, is 16 bytes in length".
    let key = h.get(header::SEC_WEBSOCKET_KEY)?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(key.as_bytes())
        .ok()?;
    (decoded.len() == 16).then(|| key.clone())
}

/// Picks the encoding: subprotocol first, then `?encoding=`, then JSON.
fn negotiate<B>(req: &Request<B>) -> Result<(Codec, Option<&'static str>), Rejection> {
    let offered: Vec<String> = req
        .headers()
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_owned())
        .collect();
    for p in &offered {
        match p.as_str() {
            SUBPROTOCOL_JSON => return Ok((Codec::Json, Some(SUBPROTOCOL_JSON))),
            SUBPROTOCOL_MSGPACK => return Ok((Codec::MsgPack, Some(SUBPROTOCOL_MSGPACK))),
            _ => {}
        }
    }
    if offered.iter().any(|p| p.starts_with("hub.")) {
        return Err(bad_encoding(&offered.join(", ")));
    }
    let query = req.uri().query().unwrap_or("");
    let encoding = form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "encoding")
        .map(|(_, v)| v.into_owned());
    match encoding {
        None => Ok((Codec::Json, None)),
        Some(name) => Codec::from_name(&name)
            .map(|c| (c, None))
            .ok_or_else(|| bad_encoding(&name)),
    }
}

fn bad_encoding(what: &str) -> Rejection {
    Rejection::bad_request(
        "bad_encoding",
        format!("unknown encoding {what:?}: use json or msgpack"),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use livehub_core::OutFrame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::Frame as WsFrame;

    /// What tungstenite itself would write for the frame: header and payload.
    fn reference(opcode: OpCode, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        WsFrame::message(payload.to_vec(), opcode, true)
            .format(&mut out)
            .unwrap();
        out
    }

    #[test]
    fn headers_match_tungstenite_at_every_length_boundary() {
        for len in [0, 1, 125, 126, 127, 65_535, 65_536, 70_000] {
            let payload = vec![b'x'; len];
            for (ours, theirs) in [
                (OPCODE_TEXT, OpCode::Data(Data::Text)),
                (OPCODE_BINARY, OpCode::Data(Data::Binary)),
            ] {
                let mut head = Vec::new();
                push_header(&mut head, ours, len);
                head.extend_from_slice(&payload);
                assert_eq!(head, reference(theirs, &payload), "length {len}");
            }
        }
    }

    /// A writer that takes at most `step` bytes per call, so every write is partial.
    struct Trickle {
        out: Vec<u8>,
        step: usize,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let n = buf.len().min(self.step);
            self.out.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let mut left = self.step;
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(left);
                self.out.extend_from_slice(&b[..take]);
                n += take;
                left -= take;
                if left == 0 {
                    break;
                }
            }
            Poll::Ready(Ok(n))
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    use tokio::io::AsyncReadExt;

    /// Bounds every wait of the I/O tests below (a safety net: they fail instead of hanging).
    const WAIT: Duration = Duration::from_secs(10);

    /// Reads from `io` until `want` bytes have come.
    async fn read_exact_bytes<R: AsyncRead + Unpin>(io: &mut R, want: usize) -> Vec<u8> {
        let mut out = vec![0; want];
        tokio::time::timeout(WAIT, io.read_exact(&mut out))
            .await
            .unwrap()
            .unwrap();
        out
    }

    /// Reads an HTTP response head (up to the blank line) from `io`, byte by byte, so that
    /// nothing after it is consumed.
    async fn read_head<R: AsyncRead + Unpin>(io: &mut R) -> String {
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            head.push(read_exact_bytes(io, 1).await[0]);
        }
        String::from_utf8(head).unwrap()
    }

    /// An upgrade request followed at once, in the same write, by `early`.
    fn upgrade_request(early: &[u8]) -> Vec<u8> {
        let mut req =
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: test\r\n\r\n".to_vec();
        req.extend_from_slice(early);
        req
    }

    /// How the host serves the connection in [`upgraded`].
    #[derive(Clone, Copy, Debug)]
    enum Host {
        /// hyper-util's auto builder over `TokioIo<TcpStream>` (what axum's `serve` does).
        Auto,
        /// hyper's own HTTP/1 builder over `TokioIo<TcpStream>`.
        Http1,
    }

    /// Serves one upgrade over a real loopback connection as `host` does, and returns what
    /// [`SessionIo::new`] made of the upgraded connection, with the client's socket (its
    /// request sent with `early` right behind it, the 101 response head read).
    async fn upgraded(host: Host, nodelay: bool, early: &[u8]) -> (SessionIo, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let tx = std::sync::Mutex::new(Some(tx));
            let service = hyper::service::service_fn(move |mut req: Request<_>| {
                let on_upgrade = hyper::upgrade::on(&mut req);
                let tx = tx.lock().unwrap().take();
                tokio::spawn(async move {
                    let io = SessionIo::new(on_upgrade.await.unwrap(), nodelay);
                    if let Some(tx) = tx {
                        let _ = tx.send(io);
                    }
                });
                let mut resp = Response::new(Full::new(Bytes::new()));
                *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
                resp.headers_mut()
                    .insert(header::UPGRADE, HeaderValue::from_static("test"));
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
                async move { Ok::<_, Infallible>(resp) }
            });
            let io = TokioIo::new(tcp);
            let _ = match host {
                Host::Auto => {
                    hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection_with_upgrades(io, service)
                    .await
                }
                Host::Http1 => hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .with_upgrades()
                    .await
                    .map_err(Into::into),
            };
        });
        let mut client = TcpStream::connect(addr).await.unwrap();
        client.write_all(&upgrade_request(early)).await.unwrap();
        let head = read_head(&mut client).await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        let io = tokio::time::timeout(WAIT, rx).await.unwrap().unwrap();
        (io, client)
    }

    #[tokio::test]
    async fn the_upgraded_tcp_socket_is_found_and_gets_nodelay_under_both_hyper_hosts() {
        for host in [Host::Auto, Host::Http1] {
            for nodelay in [true, false] {
                let (io, _client) = upgraded(host, nodelay, b"").await;
                match &io {
                    SessionIo::Tcp { tcp, pre } => {
                        assert_eq!(tcp.nodelay().unwrap(), nodelay, "{host:?}");
                        assert!(pre.is_empty(), "{host:?}");
                    }
                    SessionIo::Other(_) => panic!("{host:?}: the TCP socket was not found"),
                }
            }
        }
    }

    #[tokio::test]
    async fn bytes_sent_right_behind_the_request_are_read_first_then_the_socket() {
        for host in [Host::Auto, Host::Http1] {
            let (mut io, mut client) = upgraded(host, true, b"early bytes").await;
            assert!(matches!(io, SessionIo::Tcp { .. }), "{host:?}");
            // Read in small pieces: the leftover is handed out across several reads.
            let mut got = Vec::new();
            while got.len() < 11 {
                let mut piece = [0u8; 4];
                let n = tokio::time::timeout(WAIT, io.read(&mut piece))
                    .await
                    .unwrap()
                    .unwrap();
                assert!(n > 0, "{host:?}: ended early");
                got.extend_from_slice(&piece[..n]);
            }
            assert_eq!(got, b"early bytes", "{host:?}");
            client.write_all(b"later").await.unwrap();
            assert_eq!(read_exact_bytes(&mut io, 5).await, b"later", "{host:?}");
            io.write_all(b"answer").await.unwrap();
            io.flush().await.unwrap();
            assert_eq!(
                read_exact_bytes(&mut client, 6).await,
                b"answer",
                "{host:?}"
            );
        }
    }

    #[tokio::test]
    async fn any_other_io_stays_behind_the_upgraded_connection_and_works() {
        // An in-memory stream: no TCP socket to find.
        let (server_end, mut client) = tokio::io::duplex(4096);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let tx = std::sync::Mutex::new(Some(tx));
        let service = hyper::service::service_fn(move |mut req: Request<_>| {
            let on_upgrade = hyper::upgrade::on(&mut req);
            let tx = tx.lock().unwrap().take();
            tokio::spawn(async move {
                let io = SessionIo::new(on_upgrade.await.unwrap(), true);
                if let Some(tx) = tx {
                    let _ = tx.send(io);
                }
            });
            let mut resp = Response::new(Full::new(Bytes::new()));
            *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            resp.headers_mut()
                .insert(header::UPGRADE, HeaderValue::from_static("test"));
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
            async move { Ok::<_, Infallible>(resp) }
        });
        tokio::spawn(
            hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(server_end), service)
                .into_owned(),
        );
        client.write_all(&upgrade_request(b"early")).await.unwrap();
        let head = read_head(&mut client).await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        let mut io = tokio::time::timeout(WAIT, rx).await.unwrap().unwrap();
        assert!(matches!(io, SessionIo::Other(_)));
        assert_eq!(read_exact_bytes(&mut io, 5).await, b"early");
        io.write_all(b"answer").await.unwrap();
        io.flush().await.unwrap();
        assert_eq!(read_exact_bytes(&mut client, 6).await, b"answer");
    }

    /// A client's masked text frame (RFC 6455, 5.3), payload under 126 bytes.
    fn masked_text(payload: &[u8]) -> Vec<u8> {
        masked(0x81, payload)
    }

    /// A client's masked frame with the first byte `b0` (FIN, opcode), payload under 126 bytes.
    fn masked(b0: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let mut out = vec![b0, 0x80 | u8::try_from(payload.len()).unwrap()];
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    /// The next server text frame (unmasked; lengths up to 65,535), as JSON; pings skipped.
    async fn next_json<R: AsyncRead + Unpin>(io: &mut R) -> serde_json::Value {
        loop {
            let head = read_exact_bytes(io, 2).await;
            let len = match head[1] & 0x7f {
                126 => {
                    let l = read_exact_bytes(io, 2).await;
                    usize::from(u16::from_be_bytes([l[0], l[1]]))
                }
                127 => panic!("a frame of 64 KiB or more"),
                n => usize::from(n),
            };
            let payload = read_exact_bytes(io, len).await;
            if head[0] == 0x81 {
                return serde_json::from_slice(&payload).unwrap();
            }
            assert_eq!(head[0], 0x89, "only text frames and pings are expected");
        }
    }

    #[tokio::test]
    async fn a_client_that_subscribes_in_the_same_write_as_its_upgrade_is_served() {
        let hub = Hub::builder().build();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let service = WsService::new(hub.clone());
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let _ =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(tcp), service)
                    .await;
        });
        let mut client = TcpStream::connect(addr).await.unwrap();
        let mut req = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
            Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
            .to_vec();
        req.extend(masked_text(
            br#"{"type":"subscribe","topic":"scores","id":1}"#,
        ));
        client.write_all(&req).await.unwrap();
        let head = read_head(&mut client).await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        assert_eq!(next_json(&mut client).await["type"], "welcome");
        let reply = next_json(&mut client).await;
        assert_eq!(reply["type"], "reply", "{reply}");
        assert_eq!(reply["id"], 1, "{reply}");
        hub.publish("scores", &serde_json::json!({"home": 1}))
            .await
            .unwrap();
        let msg = next_json(&mut client).await;
        assert_eq!(msg["type"], "message", "{msg}");
        assert_eq!(msg["data"]["home"], 1, "{msg}");
    }

    /// The next server frame, whatever it is: its first byte and payload (lengths < 126).
    async fn next_frame<R: AsyncRead + Unpin>(io: &mut R) -> (u8, Vec<u8>) {
        let head = read_exact_bytes(io, 2).await;
        assert!(head[1] < 126, "a short frame");
        (head[0], read_exact_bytes(io, usize::from(head[1])).await)
    }

    /// A raw client connected through [`WsService`] (hyper-util's auto builder), past its
    /// `welcome`.
    async fn raw_client() -> TcpStream {
        let hub = Hub::builder().build();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let service = WsService::new(hub);
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let _ =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(tcp), service)
                    .await;
        });
        let mut client = TcpStream::connect(addr).await.unwrap();
        client
            .write_all(
                b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
                  Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
            )
            .await
            .unwrap();
        let head = read_head(&mut client).await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        assert_eq!(next_json(&mut client).await["type"], "welcome");
        client
    }

    /// Reads until the server ends the connection; whether it did (rather than time out).
    async fn ends<R: AsyncRead + Unpin>(io: &mut R) -> bool {
        let mut sink = [0u8; 256];
        loop {
            match tokio::time::timeout(WAIT, io.read(&mut sink)).await {
                Ok(Ok(0) | Err(_)) => return true,
                Ok(Ok(_)) => {}
                Err(_) => return false,
            }
        }
    }

    #[tokio::test]
    async fn a_clients_ping_is_answered_with_its_payload_and_its_close_with_its_code() {
        let mut client = raw_client().await;
        client
            .write_all(&masked(0x89, b"are you there"))
            .await
            .unwrap();
        assert_eq!(
            next_frame(&mut client).await,
            (0x8A, b"are you there".to_vec())
        );
        // Fragments with a ping between them: the pong comes, then the message is handled.
        client
            .write_all(
                &[
                    masked(0x01, br#"{"type":"ping","#),
                    masked(0x89, b"mid"),
                    masked(0x80, br#""id":5}"#),
                ]
                .concat(),
            )
            .await
            .unwrap();
        assert_eq!(next_frame(&mut client).await, (0x8A, b"mid".to_vec()));
        let reply = next_json(&mut client).await;
        assert_eq!(
            (&reply["type"], &reply["id"]),
            (&"pong".into(), &5.into()),
            "{reply}"
        );
        let mut close = 4321u16.to_be_bytes().to_vec();
        close.extend_from_slice(b"done");
        client.write_all(&masked(0x88, &close)).await.unwrap();
        assert_eq!(next_frame(&mut client).await, (0x88, close));
        assert!(ends(&mut client).await);
    }

    #[tokio::test]
    async fn protocol_violations_close_with_1002_protocol_error() {
        let unmasked = {
            let mut f = masked_text(b"{}");
            f[1] &= 0x7F;
            f.truncate(2);
            f.extend_from_slice(b"{}");
            f
        };
        let cases = [
            ("unmasked", unmasked),
            ("reserved opcode", masked(0x83, b"")),
            ("continuation of nothing", masked(0x80, b"x")),
            ("ping of 126 bytes: not a short frame", {
                let mut f = vec![0x89, 0x80 | 126, 0, 126, 1, 2, 3, 4];
                f.extend_from_slice(&[0; 126]);
                f
            }),
        ];
        for (what, frame) in cases {
            let mut client = raw_client().await;
            client.write_all(&frame).await.unwrap();
            let (b0, payload) = next_frame(&mut client).await;
            assert_eq!(b0, 0x88, "{what}: a close frame");
            assert_eq!(&payload[..2], &1002u16.to_be_bytes(), "{what}");
            assert_eq!(&payload[2..], b"protocol_error", "{what}");
        }
    }

    #[tokio::test]
    async fn partial_writes_and_batches_over_iov_max_come_out_whole_and_in_order() {
        // 1,500 frames of varied sizes (about 450 KB: many gather buffers, some large payloads
        // in slices of their own), with pings among them and a close at the end (which the
        // writer leaves to the close handshake).
        let mut batch = Vec::new();
        let mut expected = Vec::new();
        for i in 0..1_500usize {
            // Mostly small frames (gathered), some large ones (their own slices).
            let pad = if i % 97 == 0 { 3_000 + i } else { i % 600 };
            let payload = Bytes::from(format!("{i}:{}", "y".repeat(pad)));
            expected.extend(reference(OpCode::Data(Data::Text), &payload));
            batch.push(Outgoing::Frame(OutFrame::opaque(payload)));
            if i % 100 == 0 {
                expected.extend([0x89, 0x00]);
                batch.push(Outgoing::Ping);
            }
        }
        batch.push(Outgoing::Close(DisconnectReason::Normal));
        for step in [7, 1000, usize::MAX] {
            let mut io = Trickle {
                out: Vec::new(),
                step,
            };
            FrameWriter::new(OPCODE_TEXT)
                .write(&mut io, &batch)
                .await
                .unwrap();
            assert!(io.out == expected, "step {step}: bytes differ");
        }
    }
}
