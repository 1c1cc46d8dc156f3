//! WebSocket transport for the hub: tokio-tungstenite over a hyper upgrade.
//!
//! [`WsService`] is a service that answers WebSocket upgrade requests; mount it at any path of a
//! bare hyper server or an axum `Router` (`route_service`). For each accepted connection it
//! runs one task that moves frames between the socket and the hub's session:
//!
//! - **Encoding** per connection: subprotocol `hub.v1.json` / `hub.v1.msgpack`, else the query
//!   parameter `encoding=json|msgpack`, else JSON. JSON travels in text frames, MessagePack in
//!   binary frames.
//! - **Refusals before the upgrade**: not a WebSocket upgrade (400 `bad_request`), unknown
//!   encoding (400 `bad_encoding`), authentication (401/403 from the hub's hook), origin
//!   (403 `origin_not_allowed`), each with a JSON body `{"code", "message"}`.
//! - **Heartbeats**: a ping frame at the hub's interval; pongs and any frame count as life.
//! - **Close codes**: 1009 for a frame over the hub's size limit, 1007 for a text frame that
//!   is not UTF-8, 1008 for policy (kicked, slow consumer), 4000 for heartbeat timeout, 1001 on
//!   shutdown (PROTOCOL.md, "Closing").
//! - **Batched writes**: everything queued for the session is fed to the socket, then flushed
//!   once, so a busy session writes many frames per system call.
//!
//! # Example: bare hyper
//!
//! ```no_run
//! use hub_core::Hub;
//! use hub_ws::WsService;
//! use hyper_util::rt::{TokioExecutor, TokioIo};
//! use hyper_util::server::conn::auto;
//!
//! # async fn run() -> std::io::Result<()> {
//! let hub = Hub::builder().build();
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! loop {
//!     let (tcp, peer) = listener.accept().await?;
//!     let service = WsService::new(hub.clone()).with_peer(peer);
//!     tokio::spawn(async move {
//!         let _ = auto::Builder::new(TokioExecutor::new())
//!             .serve_connection_with_upgrades(TokioIo::new(tcp), service)
//!             .await;
//!     });
//! }
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

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hub_core::{
    Codec, ConnectRequest, Connection, DisconnectReason, Hub, Outgoing, Rejection, TransportInfo,
};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;
use tracing::Instrument;

/// The transport's description for the hub: two-way, with WebSocket pings.
pub const TRANSPORT: TransportInfo = TransportInfo::duplex("ws");

/// Subprotocol for JSON.
pub const SUBPROTOCOL_JSON: &str = "hub.v1.json";
/// Subprotocol for MessagePack.
pub const SUBPROTOCOL_MSGPACK: &str = "hub.v1.msgpack";

/// How long a closing connection waits for the client's close frame before dropping the socket.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// The response body of [`WsService`]: empty for the upgrade, a JSON error for refusals.
pub type Body = Full<Bytes>;

#[derive(Debug, Clone)]
struct WsSettings {
    read_buffer_size: usize,
    write_buffer_size: usize,
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
                read_buffer_size: 512,
                write_buffer_size: 64 * 1024,
            }),
        }
    }

    /// The client's address, passed to the authenticate hook (a bare hyper server knows it per
    /// connection). Otherwise a `SocketAddr` found in the request's extensions is used.
    #[must_use]
    pub fn with_peer(mut self, peer: SocketAddr) -> WsService {
        self.peer = Some(peer);
        self
    }

    /// Bytes allocated up front to read each connection's frames (grows for larger frames).
    /// Default 512 bytes: small, so that idle connections stay cheap (measured: 3.9 KB of
    /// server memory per idle connection, against 5.7 KB with 2 KiB).
    #[must_use]
    pub fn read_buffer_size(mut self, bytes: usize) -> WsService {
        Arc::make_mut(&mut self.settings).read_buffer_size = bytes.max(256);
        self
    }

    /// Bytes of encoded frames gathered before a write is issued mid-batch. Default 64 KiB.
    #[must_use]
    pub fn write_buffer_size(mut self, bytes: usize) -> WsService {
        Arc::make_mut(&mut self.settings).write_buffer_size = bytes;
        self
    }

    /// Answers one request: a refusal, or 101 Switching Protocols with the session task spawned.
    async fn serve<B>(self, mut req: Request<B>) -> Response<Body> {
        let Some(key) = upgrade_key(&req) else {
            return refusal(&Rejection::bad_request(
                "bad_request",
                "not a WebSocket upgrade request (GET, Upgrade: websocket, version 13)",
            ));
        };
        let (codec, subprotocol) = match negotiate(&req) {
            Ok(n) => n,
            Err(rej) => return refusal(&rej),
        };
        let peer = self
            .peer
            .or_else(|| req.extensions().get::<SocketAddr>().copied());
        let connect = ConnectRequest {
            transport: TRANSPORT,
            codec,
            headers: req.headers().clone(),
            uri: req.uri().clone(),
            peer,
        };
        // Authenticate before upgrading: a refused client gets a plain HTTP answer.
        let conn = match self.hub.connect(connect).await {
            Ok(conn) => conn,
            Err(rej) => return refusal(&rej),
        };
        let on_upgrade = hyper::upgrade::on(&mut req);
        let config = WebSocketConfig::default()
            .read_buffer_size(self.settings.read_buffer_size)
            .write_buffer_size(self.settings.write_buffer_size)
            .max_message_size(Some(self.hub.max_frame_size()))
            .max_frame_size(Some(self.hub.max_frame_size()));
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
                        let io = TokioIo::new(upgraded);
                        let ws =
                            WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
                        run(ws, conn).await;
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
async fn run<S>(mut ws: WebSocketStream<S>, conn: Connection)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Connection {
        session,
        mut outbox,
    } = conn;
    let binary = outbox.codec().is_binary();
    let mut batch: Vec<Outgoing> = Vec::new();
    loop {
        tokio::select! {
            biased;
            _ = session.aborted() => {
                // Stalled or gone: try to say why, briefly, then drop the socket.
                let reason = session.close_reason().unwrap_or(DisconnectReason::Normal);
                let _ = tokio::time::timeout(Duration::from_millis(100), ws.send(close_msg(reason))).await;
                return;
            }
            more = outbox.next_batch(&mut batch) => {
                if !more {
                    return;
                }
                let mut closing = None;
                let write = async {
                    for item in batch.drain(..) {
                        let msg = match item {
                            Outgoing::Frame(bytes) => frame_msg(bytes, binary),
                            Outgoing::Ping => Message::Ping(Bytes::new()),
                            Outgoing::Close(reason) => {
                                closing = Some(reason);
                                close_msg(reason)
                            }
                        };
                        ws.feed(msg).await?;
                    }
                    ws.flush().await
                };
                let written = tokio::select! {
                    biased;
                    _ = session.aborted() => continue,
                    r = write => r,
                };
                batch.clear();
                if written.is_err() {
                    session.close(DisconnectReason::Normal);
                    return;
                }
                if closing.is_some() {
                    // Wait briefly for the client's close frame, then drop the socket.
                    let _ = tokio::time::timeout(CLOSE_GRACE, async {
                        while let Some(Ok(_)) = ws.next().await {}
                    })
                    .await;
                    return;
                }
            }
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(text))) => session.handle(Bytes::from(text)).await,
                Some(Ok(Message::Binary(bytes))) => session.handle(bytes).await,
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => session.touch(),
                Some(Ok(Message::Frame(_))) => {}
                Some(Ok(Message::Close(_))) | None => {
                    session.close(DisconnectReason::Normal);
                    // tungstenite has queued its answer to the client's close: send it.
                    let _ = tokio::time::timeout(CLOSE_GRACE, ws.flush()).await;
                    return;
                }
                Some(Err(e)) => {
                    let reason = match e {
                        tungstenite::Error::Capacity(_) => DisconnectReason::FrameTooLarge,
                        tungstenite::Error::Utf8(_) => DisconnectReason::BadData,
                        // A peer that vanished (network gone, tab killed) is an ordinary end,
                        // not a protocol violation: there is no one to send a 1002 to.
                        tungstenite::Error::Protocol(
                            tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
                        ) => DisconnectReason::Normal,
                        tungstenite::Error::Protocol(_) => DisconnectReason::ProtocolError,
                        _ => DisconnectReason::Normal,
                    };
                    if reason != DisconnectReason::Normal {
                        tracing::debug!(error = %e, %reason, "closing on bad input");
                        let _ = tokio::time::timeout(CLOSE_GRACE, ws.send(close_msg(reason))).await;
                    }
                    session.close(reason);
                    return;
                }
            }
        }
    }
}

fn frame_msg(bytes: Bytes, binary: bool) -> Message {
    if binary {
        return Message::Binary(bytes);
    }
    match Utf8Bytes::try_from(bytes.clone()) {
        Ok(text) => Message::Text(text),
        // Never happens (the hub only emits UTF-8 JSON); keep the bytes rather than lose them.
        Err(_) => Message::Binary(bytes),
    }
}

fn close_msg(reason: DisconnectReason) -> Message {
    Message::Close(Some(CloseFrame {
        code: CloseCode::from(reason.close_code()),
        reason: Utf8Bytes::from_static(reason.as_str()),
    }))
}

fn refusal(rej: &Rejection) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(rej.body())));
    *resp.status_mut() = StatusCode::from_u16(rej.status()).unwrap_or(StatusCode::FORBIDDEN);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
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
    h.get(header::SEC_WEBSOCKET_KEY).cloned()
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
