//! Helpers of livehub-client's tests: a real hub served over WebSocket on a loopback port, a TCP
//! proxy to cut and restore connections, a fake server for scripted (and bad) frames, and
//! waits with a safety net.
//!
//! Every call on the hub's host API is in [`host`], so that a change of that API is followed
//! in one place. Each test binary uses part of this module, hence `dead_code` is allowed here.

#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use livehub_client::{
    Client, ClientBuilder, ConnectionEvent, ConnectionEvents, SubEvent, Subscription,
};
use livehub_core::{
    async_trait, Action, ConnectRequest, EventContext, Hooks, Hub, Identity, Payload,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

/// The safety net of every wait: a test that needs longer is broken.
pub(crate) const WAIT: Duration = Duration::from_secs(10);

/// `fut`, or a panic naming `what` after [`WAIT`].
pub(crate) async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    tokio::time::timeout(WAIT, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// The hub's host API, in one place.
pub(crate) mod host {
    use livehub_client::Position;
    use livehub_core::{Hub, SessionId};
    use serde_json::Value;
    use std::time::Duration;

    /// Publishes from the server; the message's position (as the client spells it).
    pub(crate) async fn publish(hub: &Hub, topic: &str, data: &Value) -> Position {
        let p = hub.publish(topic, data).await.expect("publish");
        Position::new(&*p.epoch, p.offset)
    }

    /// Kicks a session (close 1008 `kicked`); whether it existed.
    pub(crate) fn disconnect(hub: &Hub, session: SessionId) -> bool {
        hub.disconnect(session)
    }

    /// Sends an event to one session; whether it was queued.
    pub(crate) fn emit_to(hub: &Hub, session: SessionId, event: &str, data: &Value) -> bool {
        hub.emit_to(session, event, data).expect("emit_to")
    }

    /// Adds a session to a room.
    pub(crate) async fn join(hub: &Hub, session: SessionId, room: &str) {
        hub.join(session, room).await.expect("join");
    }

    /// Sends an event to a room.
    pub(crate) fn emit_to_room(hub: &Hub, room: &str, event: &str, data: &Value) -> usize {
        hub.to(room).emit(event, data).expect("emit to a room")
    }

    /// Shuts the hub down (close 1001 for every session).
    pub(crate) async fn shutdown(hub: &Hub) {
        hub.shutdown(Duration::from_secs(2)).await;
    }

    /// The number of open sessions.
    pub(crate) fn sessions(hub: &Hub) -> usize {
        hub.session_count()
    }

    /// Publishes a keyed value (`match:7`); its position.
    pub(crate) async fn publish_keyed(hub: &Hub, topic: &str, key: &str, data: &Value) -> Position {
        let p = hub
            .publish_keyed(topic, key, data)
            .await
            .expect("publish_keyed");
        Position::new(&*p.epoch, p.offset)
    }

    /// Publishes the deletion of a key; its position.
    pub(crate) async fn publish_delete(hub: &Hub, topic: &str, key: &str) -> Position {
        let p = hub
            .publish_delete(topic, key)
            .await
            .expect("publish_delete");
        Position::new(&*p.epoch, p.offset)
    }

    /// Sends an event that asks for an answer, and waits for it (JSON).
    pub(crate) async fn emit_with_ack(
        hub: &Hub,
        session: SessionId,
        event: &str,
        data: &Value,
        timeout: Duration,
    ) -> Result<Value, livehub_core::AckError> {
        let answer = hub.emit_with_ack(session, event, data, timeout).await?;
        Ok(answer.decode().expect("a JSON answer"))
    }

    /// A session id as livehub-core spells it, from the client's.
    pub(crate) fn session(id: livehub_client::SessionId) -> SessionId {
        SessionId::parse(&id.to_string()).expect("a session id")
    }
}

/// Test hooks: the user is `?user=` (anonymous without), `?token=deny` is refused with 401,
/// every action is allowed except publishing to topics under `ro/`; sessions opened are
/// counted.
#[derive(Default)]
pub(crate) struct TestHooks {
    pub(crate) connects: Arc<AtomicUsize>,
}

#[async_trait]
impl Hooks for TestHooks {
    async fn authenticate(
        &self,
        req: &ConnectRequest,
    ) -> Result<Identity, livehub_core::Rejection> {
        if req.query("token").as_deref() == Some("deny") {
            return Err(livehub_core::Rejection::unauthorized("token refused"));
        }
        let user = req
            .query("user")
            .map(|u| u.into_owned())
            .unwrap_or_default();
        let meta = serde_json::json!({ "name": user.to_uppercase() });
        Ok(Identity::user(user).with_meta(meta))
    }

    async fn authorize(&self, _who: &Identity, action: Action<'_>) -> bool {
        !matches!(action, Action::Publish(t) if t.starts_with("ro/"))
    }

    async fn on_connect(&self, _hub: &Hub, _session: &livehub_core::SessionInfo) {
        self.connects.fetch_add(1, Ordering::SeqCst);
    }
}

/// A hub with the test hooks and handlers: `echo` answers its data, `fail` fails, `hang`
/// never answers, `room` joins the caller to the room named by its data.
pub(crate) fn hub(history: usize) -> (Hub, Arc<AtomicUsize>) {
    let hooks = TestHooks::default();
    let connects = hooks.connects.clone();
    let hub = Hub::builder()
        .hooks(hooks)
        .history_len(history)
        .room_presence_events(true)
        .on_event("echo", |_ctx: EventContext, data: Payload| async move {
            Ok(Some(data))
        })
        .on_event("fail", |_ctx: EventContext, _data: Payload| async move {
            Err(livehub_core::HandlerError::new("it failed on purpose"))
        })
        .on_event("hang", |_ctx: EventContext, _data: Payload| async move {
            std::future::pending::<()>().await;
            Ok(None)
        })
        .on_event("room", |ctx: EventContext, data: Payload| async move {
            let room: String = data.decode()?;
            ctx.join(&room)
                .await
                .map_err(|e| livehub_core::HandlerError::new(e.to_string()))?;
            Ok(None)
        })
        .build();
    (hub, connects)
}

/// Serves `hub` over WebSocket (livehub-ws behind hyper-util, upgrades on) on a free loopback
/// port; its address.
pub(crate) async fn serve(hub: Hub) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("an address");
    tokio::spawn(async move {
        while let Ok((tcp, peer)) = listener.accept().await {
            let service = livehub_ws::WsService::new(hub.clone()).with_peer(peer);
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    addr
}

/// A client builder for `addr` with fast reconnects (20 ms .. 200 ms), as tests want them.
pub(crate) fn client(addr: SocketAddr, query: &str) -> ClientBuilder {
    Client::builder(format!("ws://{addr}/{query}"))
        .reconnect(Duration::from_millis(20), Duration::from_millis(200))
}

/// A TCP proxy in front of a server: it can cut every connection, refuse new ones for a
/// while, and send new ones elsewhere.
pub(crate) struct Proxy {
    pub(crate) addr: SocketAddr,
    state: Arc<ProxyState>,
}

struct ProxyState {
    upstream: Mutex<SocketAddr>,
    down: AtomicBool,
    conns: Mutex<Vec<AbortHandle>>,
    accepted: AtomicUsize,
}

impl Proxy {
    pub(crate) async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("an address");
        let state = Arc::new(ProxyState {
            upstream: Mutex::new(upstream),
            down: AtomicBool::new(false),
            conns: Mutex::new(Vec::new()),
            accepted: AtomicUsize::new(0),
        });
        let s = state.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if s.down.load(Ordering::SeqCst) {
                    drop(inbound); // refused: the client's handshake fails
                    continue;
                }
                s.accepted.fetch_add(1, Ordering::SeqCst);
                let upstream = *s.upstream.lock().unwrap();
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                s.conns.lock().unwrap().push(task.abort_handle());
            }
        });
        Proxy { addr, state }
    }

    /// Cuts every open connection (both sides see the TCP connection end).
    pub(crate) fn cut(&self) {
        for c in self.state.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    /// Cuts every connection and refuses new ones until [`Proxy::up`].
    pub(crate) fn down(&self) {
        self.state.down.store(true, Ordering::SeqCst);
        self.cut();
    }

    /// Accepts connections again.
    pub(crate) fn up(&self) {
        self.state.down.store(false, Ordering::SeqCst);
    }

    /// Sends new connections to another server.
    pub(crate) fn retarget(&self, upstream: SocketAddr) {
        *self.state.upstream.lock().unwrap() = upstream;
    }

    /// Connections passed through so far.
    pub(crate) fn accepted(&self) -> usize {
        self.state.accepted.load(Ordering::SeqCst)
    }
}

/// The next event of a subscription, within the safety net.
pub(crate) async fn next(sub: &mut Subscription) -> SubEvent {
    within("a subscription event", sub.next())
        .await
        .expect("the subscription ended")
}

/// The next event, which must be a message; its offset and data.
pub(crate) async fn next_message(sub: &mut Subscription) -> (u64, serde_json::Value) {
    match next(sub).await {
        SubEvent::Message(m) => (m.position.offset, m.decode().expect("JSON data")),
        other => panic!("expected a message, got {other:?}"),
    }
}

/// Reads `n` messages from a subscription that may lag: every lag must resume with nothing
/// lost. The offsets read, and how many resumes there were.
pub(crate) async fn messages_through_lag(sub: &mut Subscription, n: usize) -> (Vec<u64>, usize) {
    let mut offsets = Vec::new();
    let mut resumes = 0;
    while offsets.len() < n {
        match next(sub).await {
            SubEvent::Message(m) => offsets.push(m.position.offset),
            SubEvent::Resumed(r) => {
                assert_eq!(
                    (r.cause, r.recovered),
                    (livehub_client::ResumeCause::Lagged, true),
                    "{r:?}"
                );
                resumes += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    (offsets, resumes)
}

/// Waits until the hub has no session left.
pub(crate) async fn no_sessions_left(hub: &Hub) {
    within("no session left", async {
        while host::sessions(hub) > 0 {
            tokio::task::yield_now().await;
        }
    })
    .await;
}

/// Waits for the first connection event that `pick` maps to `Some`.
pub(crate) async fn wait_event<T>(
    events: &mut ConnectionEvents,
    mut pick: impl FnMut(&ConnectionEvent) -> Option<T>,
) -> T {
    within("a connection event", async {
        loop {
            let ev = events.recv().await.expect("the client is gone");
            if let Some(t) = pick(&ev) {
                return t;
            }
        }
    })
    .await
}

/// A fake hub: a bare WebSocket server (tokio-tungstenite, the subprotocol echoed) whose
/// connections the test scripts frame by frame.
pub(crate) struct Fake {
    pub(crate) addr: SocketAddr,
    conns: tokio::sync::mpsc::Receiver<FakeConn>,
}

impl Fake {
    pub(crate) async fn start() -> Fake {
        use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
        use tokio_tungstenite::tungstenite::http::header::SEC_WEBSOCKET_PROTOCOL;
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("an address");
        let (tx, conns) = tokio::sync::mpsc::channel(8);
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                // The callback's error type is tungstenite's, not ours to shrink.
                #[allow(clippy::result_large_err)]
                let echo = |req: &Request, mut resp: Response| {
                    if let Some(p) = req.headers().get(SEC_WEBSOCKET_PROTOCOL) {
                        resp.headers_mut().insert(SEC_WEBSOCKET_PROTOCOL, p.clone());
                    }
                    Ok(resp)
                };
                if let Ok(ws) = tokio_tungstenite::accept_hdr_async(tcp, echo).await {
                    if tx.send(FakeConn { ws }).await.is_err() {
                        return;
                    }
                }
            }
        });
        Fake { addr, conns }
    }

    /// The next connection a client opened.
    pub(crate) async fn accept(&mut self) -> FakeConn {
        within("a connection to the fake", self.conns.recv())
            .await
            .expect("the fake's listener ended")
    }
}

/// One connection to the fake.
pub(crate) struct FakeConn {
    ws: tokio_tungstenite::WebSocketStream<TcpStream>,
}

impl FakeConn {
    pub(crate) async fn send(&mut self, msg: tokio_tungstenite::tungstenite::Message) {
        use futures_util::SinkExt;
        self.ws.send(msg).await.expect("the fake's send");
    }

    /// A text frame.
    pub(crate) async fn text(&mut self, text: impl Into<String>) {
        self.send(tokio_tungstenite::tungstenite::Message::text(text.into()))
            .await;
    }

    /// A binary frame.
    pub(crate) async fn binary(&mut self, bytes: impl Into<bytes::Bytes>) {
        self.send(tokio_tungstenite::tungstenite::Message::binary(
            bytes.into(),
        ))
        .await;
    }

    /// A server frame, in `codec`.
    pub(crate) async fn frame(
        &mut self,
        codec: livehub_protocol::Codec,
        frame: livehub_protocol::ServerFrame,
    ) {
        let bytes = frame.encode(codec).expect("the fake's frame encodes");
        match codec {
            livehub_protocol::Codec::Json => {
                self.text(String::from_utf8(bytes.to_vec()).expect("UTF-8"))
                    .await
            }
            livehub_protocol::Codec::MsgPack => self.binary(bytes).await,
        }
    }

    /// The `welcome` of session `n`, with the liveness timeout `timeout_ms`.
    pub(crate) async fn welcome(
        &mut self,
        codec: livehub_protocol::Codec,
        n: u64,
        timeout_ms: u64,
    ) {
        let frame = livehub_protocol::ServerFrame::Welcome {
            session: livehub_protocol::SessionId::from_u64(n),
            encoding: codec,
            heartbeat_ms: 25_000,
            timeout_ms,
        };
        self.frame(codec, frame).await;
    }

    /// The next client frame, decoded as the hub would; `None` once the client is gone.
    pub(crate) async fn recv(&mut self) -> Option<livehub_protocol::ClientFrame> {
        use futures_util::StreamExt;
        use tokio_tungstenite::tungstenite::Message;
        loop {
            let msg = within("a frame from the client", self.ws.next())
                .await?
                .ok()?;
            let (codec, bytes) = match msg {
                Message::Text(t) => (livehub_protocol::Codec::Json, bytes::Bytes::from(t)),
                Message::Binary(b) => (livehub_protocol::Codec::MsgPack, b),
                Message::Close(_) => return None,
                _ => continue,
            };
            return Some(
                livehub_protocol::ClientFrame::decode(codec, &bytes).expect("a good client frame"),
            );
        }
    }

    /// Answers request `id` with `data`.
    pub(crate) async fn reply(
        &mut self,
        codec: livehub_protocol::Codec,
        id: Option<u64>,
        data: serde_json::Value,
    ) {
        let frame = livehub_protocol::ServerFrame::Reply {
            id: id.expect("a request with an id"),
            data: livehub_protocol::Payload::encode(codec, &data).expect("encodes"),
        };
        self.frame(codec, frame).await;
    }

    /// A `message` of topic `t`, epoch `e`.
    pub(crate) async fn message(&mut self, codec: livehub_protocol::Codec, offset: u64) {
        let frame = livehub_protocol::ServerFrame::Message {
            topic: "t".into(),
            epoch: "e".into(),
            offset,
            data: livehub_protocol::Payload::encode(codec, &offset).expect("encodes"),
            key: None,
            delete: false,
        };
        self.frame(codec, frame).await;
    }

    /// Reads until the client closes the connection.
    pub(crate) async fn until_closed(mut self) {
        while self.recv().await.is_some() {}
    }
}
