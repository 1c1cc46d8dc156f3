//! Long-polling transport for the hub (hyper), with cursors that lose nothing.
//!
//! [`PollService`] is a service that speaks the hub's wire protocol (PROTOCOL.md) over plain HTTP
//! requests, for clients that have nothing but `XMLHttpRequest` (or any HTTP client). Mount it
//! at one path of a bare hyper server or an axum `Router` (`route_service`): every operation is
//! a request to that same path, told apart by method and query, as Engine.IO does.
//!
//! | request | does | answer |
//! | --- | --- | --- |
//! | `POST <path>` (no `session`) | opens a session | `200` `{"session", "cursor", "encoding", "wait_ms", "timeout_ms"}` |
//! | `GET <path>?session=S&cursor=C[&wait=ms]` | long-poll | `200` `{"cursor", "frames": [..]}` |
//! | `POST <path>?session=S` (+ `Hub-Command-Seq: <n>`), body = one client frame | a command | `202`, empty body |
//! | `DELETE <path>?session=S` | closes the session | `204` |
//! | `OPTIONS <path>` | CORS preflight ([`PollService::allow_origins`]) | `204` |
//!
//! (`S` may come in a `Hub-Session` header instead; unknown query parameters are ignored.)
//!
//! - **Encoding**, chosen at open and fixed for the session: the query parameter
//!   `encoding=json|msgpack`, else the first of `application/json` / `application/msgpack`
//!   (also `application/x-msgpack`, `application/vnd.msgpack`) in `Accept`, else the open
//!   request's `Content-Type`, else JSON. Responses and command bodies use it; error answers
//!   are always JSON `{"code", "message"}`.
//! - **Cursors**: each frame the hub queues for the session gets the next sequence number
//!   (1, 2, 3, ...) as it enters the session's pending buffer. A poll with cursor `C`
//!   acknowledges (drops) the frames up to `C` and returns the frames after `C` with the new
//!   cursor (the sequence number of the last frame returned, or `C` if none). Repeating a poll
//!   with the same cursor returns the same frames (possibly followed by newer ones): a response
//!   lost on the way costs nothing. A cursor that was never handed out (from the future), one
//!   before what was already acknowledged, or garbage is refused with 400 `bad_cursor`, and
//!   nothing is acknowledged. Cursors are decimal strings; clients should treat them as opaque.
//! - **Batching**: one response carries every pending frame, up to a count and a byte cap
//!   ([`PollService::batch_limit`]); the frames are the hub's encoded bytes, spliced into the
//!   response without re-encoding.
//! - **Bounds**: the pending buffer holds at most [`PollService::max_pending`] frames (plus one
//!   batch of the hub's queue). When it is full the transport stops taking frames from the hub,
//!   whose bounded queue then applies its slow-consumer policy.
//! - **Liveness**: polls and commands touch the session (at the start and end of a poll, and
//!   every heartbeat interval while it waits); a session not polled within the hub's heartbeat
//!   timeout is closed by the hub (`heartbeat_timeout`) and its presence leaves once. The
//!   longest wait is clamped below half the hub's timeout. A session the hub ended for another
//!   reason keeps its last frames and its `close` frame until the client acknowledges them or
//!   the timeout passes (once the hub is shutting down, the short bound below).
//! - **Two polls at once** on one session: the older one is answered at once, with no frames
//!   and its own cursor; the newer one waits. A retry after a response was lost is therefore
//!   never blocked by the dead request.
//! - **Binding**: the `session` token is `<public id>.<128-bit secret>` (from the OS's random
//!   source) and must come with every request, and so must the credentials of the session's
//!   user: every poll, command and close is authenticated with the hub's hooks
//!   ([`Hub::authenticate`]: origin allow-list, then the authenticate hook, on that request's
//!   headers, cookies, query and peer) and must come from the user who opened the session.
//!   Whatever the hook reads is bound: a bearer token, a cookie, a query parameter (a renewed
//!   token of the same user is fine). Unknown or expired session: 404 `unknown_session`; a
//!   known id with the wrong secret, or another user's credentials: 403 `forbidden`;
//!   credentials the hook refuses: its 401/403. A replayed command (same secret, same
//!   credentials) is refused if the session numbers its commands (below). Polls need no
//!   number: a repeated poll acknowledges nothing its original did not (cursors); a repeated
//!   close finds the session gone. Keeping requests from being captured at all is TLS's job.
//! - **Shutdown** ([`Hub::shutdown`]): a session's last frames and its `close` frame
//!   (`{"type":"close","code":1001,"reason":"shutdown"}`) answer its waiting poll (or the next
//!   one); the session is let go once the client acknowledges the `close` (its next poll) or
//!   after a short bound (at most 5 s, and at most the poll wait) if it never does, so a
//!   shutdown completes without forcing anyone when clients poll as they should. New sessions
//!   are refused with 503 `shutting_down`.
//! - **CORS**: [`PollService::allow_origins`] lets pages of other origins use the service with
//!   credentials (the same policy as livehub-sse's); by default no CORS headers are sent.
//! - **Refusals** (every error answer) are counted in the hub's stats by code and logged at
//!   debug.
//! - **Commands** are answered in the poll stream (`reply` / `error` frames), in order with
//!   everything else; the `POST` itself says only whether the frame was accepted: 413
//!   `frame_too_large` over the hub's frame size limit, 400 `bad_frame` if it is not one
//!   well-formed map in the session's encoding.
//! - **Command numbers**: a command may carry `Hub-Command-Seq: <n>` ([`COMMAND_SEQ_HEADER`];
//!   or the query parameter `seq=<n>`), 1, 2, 3, ... per session, one more for each new
//!   command. The session keeps one entry: the last number that ran, a keyed hash of its body
//!   and its answer. `last + 1` runs (to the end, even if the client drops the request) and
//!   answers 202 with `Hub-Command-Seq: <n>`; `last` again with the same body does not run
//!   again and gets the same answer plus `Hub-Command-Duplicate: 1` (a safe retry after a lost
//!   answer; a retry that arrives while the first try runs waits for it); any other number,
//!   or a malformed one, is refused with 409 `bad_seq` and a JSON body
//!   `{"code", "message", "expected"}`, and nothing runs. Numbered commands of one session run
//!   one at a time. Without a number, a command runs as before on a session that has never
//!   numbered one, and is refused with 409 `bad_seq` on a session that has (stripping the
//!   header does not make a command replayable); [`PollService::require_command_seq`]
//!   refuses unnumbered commands on every session. Requests refused for other reasons consume
//!   no number. Polls (idempotent by cursor) and closes (the first closes, a repeat gets 404)
//!   take no number.
//!
//! # Example: bare hyper
//!
//! A host mounts the service on a port; a client opens a session, subscribes by command and
//! long-polls for what the server publishes.
//!
//! ```
//! use livehub_core::Hub;
//! use livehub_poll::PollService;
//! use hyper_util::rt::{TokioExecutor, TokioIo};
//! use hyper_util::server::conn::auto;
//! use serde_json::{json, Value};
//!
//! # use std::net::SocketAddr;
//! # use tokio::io::{AsyncReadExt, AsyncWriteExt};
//! # type Error = Box<dyn std::error::Error>;
//! #
//! # /// One HTTP/1.1 request on a connection of its own: the status and the JSON body (`null`
//! # /// if empty).
//! # async fn http(
//! #     addr: SocketAddr,
//! #     method: &str,
//! #     uri: &str,
//! #     body: &str,
//! # ) -> Result<(u16, Value), Error> {
//! #     let mut tcp = tokio::net::TcpStream::connect(addr).await?;
//! #     let head = format!("{method} {uri} HTTP/1.1\r\nHost: localhost\r\nConnection: close");
//! #     let len = body.len();
//! #     tcp.write_all(format!("{head}\r\nContent-Length: {len}\r\n\r\n{body}").as_bytes()).await?;
//! #     let mut resp = String::new();
//! #     tcp.read_to_string(&mut resp).await?;
//! #     let (head, body) = resp.split_once("\r\n\r\n").ok_or("no answer")?;
//! #     let status = head.get(9..12).ok_or("no status")?.parse()?;
//! #     Ok((status, if body.is_empty() { Value::Null } else { serde_json::from_str(body)? }))
//! # }
//! #
//! # #[tokio::main]
//! # async fn main() -> Result<(), Error> {
//! # // A safety net: should anything go wrong, the example fails instead of hanging.
//! # tokio::time::timeout(std::time::Duration::from_secs(10), async {
//! let hub = Hub::builder().build();
//! let poll = PollService::new(hub.clone());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let addr = listener.local_addr()?;
//! tokio::spawn(async move {
//!     while let Ok((tcp, peer)) = listener.accept().await {
//!         // Every clone shares the same session table.
//!         let service = poll.clone().with_peer(peer);
//!         tokio::spawn(async move {
//!             let _ = auto::Builder::new(TokioExecutor::new())
//!                 .serve_connection(TokioIo::new(tcp), service)
//!                 .await;
//!         });
//!     }
//! });
//!
//! // A client: any HTTP client will do (`http` sends one request, returns its status and JSON).
//! let (status, open) = http(addr, "POST", "/poll", "").await?;
//! assert_eq!(status, 200);
//! let url = format!("/poll?session={}", open["session"].as_str().ok_or("no session")?);
//! // Each poll starts from the cursor of the last answer (the open answer's is "0") and
//! // returns as soon as there are frames.
//! let poll_url = |last: &Value| {
//!     format!("{url}&cursor={}", last["cursor"].as_str().unwrap_or("0"))
//! };
//! let (_, batch) = http(addr, "GET", &poll_url(&open), "").await?;
//! assert_eq!(batch["frames"][0]["type"], "welcome");
//!
//! // A command (number 1 of the session): `202`, and its answer comes in the next poll.
//! let subscribe = r#"{"type":"subscribe","topic":"scores","id":1}"#;
//! let (status, _) = http(addr, "POST", &format!("{url}&seq=1"), subscribe).await?;
//! assert_eq!(status, 202);
//! let (_, batch) = http(addr, "GET", &poll_url(&batch), "").await?;
//! assert_eq!(batch["frames"][0]["type"], "reply");
//!
//! // The server publishes; the next poll brings the `message` frame.
//! hub.publish("scores", &json!({"home": 2, "away": 1})).await?;
//! let (_, batch) = http(addr, "GET", &poll_url(&batch), "").await?;
//! let message = &batch["frames"][0];
//! assert_eq!(message["type"], "message");
//! assert_eq!(message["topic"], "scores");
//! assert_eq!(message["data"], json!({"home": 2, "away": 1}));
//!
//! // Done: close the session.
//! let (status, _) = http(addr, "DELETE", &url, "").await?;
//! assert_eq!(status, 204);
//! # Ok::<(), Error>(())
//! # })
//! # .await?
//! # }
//! ```
//!
//! In axum: `Router::new().route_service("/poll", PollService::new(hub))`.
//!
//! # Internals
//!
//! Each session has one small task that moves frames from the hub's [`livehub_core::Outbox`] into
//! the pending buffer (stopping while it is full), appends the `close` frame when the hub ends
//! the session, and removes the session from the table once it is over and either acknowledged
//! or abandoned. Polls never hold a lock across an `.await`: they take what they need under a
//! short `std` mutex and wait on a `Notify`.

#![warn(missing_docs)]

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use livehub_core::{
    Codec, ConnectRequest, DisconnectReason, Hub, Outbox, Outgoing, Payload, Rejection, Session,
    SessionId, TransportInfo,
};
use livehub_http::cors::{Cors, CorsRoutes};
use livehub_http::seq::{self, answered, bad_seq, run_numbered, Sequencer, Verdict};
use livehub_http::{secret, BodyError};
use tokio::sync::Notify;
use tokio::time::Instant;

/// The request header that numbers a command (`1`, `2`, ... per session): see "Command
/// numbers" in the crate docs. The query parameter `seq` may carry it instead.
pub const COMMAND_SEQ_HEADER: &str = seq::SEQ_HEADER;

/// The answer header (`1`) of a retried command that was not run again: its first answer,
/// repeated.
pub const COMMAND_DUPLICATE_HEADER: &str = seq::DUPLICATE_HEADER;

/// The transport's description for the hub: no pings (polls have their own rhythm), and the
/// client's polls prove it alive.
pub const TRANSPORT: TransportInfo = TransportInfo {
    name: "poll",
    pings: false,
    client_liveness: true,
};

/// The response body of [`PollService`].
pub type Body = Full<Bytes>;

/// The longest a session ended by a shutdown waits for its client to acknowledge the `close`
/// (bounded by the poll wait too): a client that polls as it should does so at once.
const SHUTDOWN_LINGER: Duration = Duration::from_secs(5);

/// How often an ended session that waits for its client looks whether the hub has begun
/// shutting down (livehub-core has no event for it; such sessions are few and short-lived).
const SHUTDOWN_CHECK: Duration = Duration::from_secs(1);

/// What the CORS policy allows on this transport's path.
const CORS_ROUTES: CorsRoutes = CorsRoutes {
    methods: "GET, POST, DELETE, OPTIONS",
    request_headers: "content-type, authorization, hub-session, hub-command-seq",
    expose_headers: "hub-command-seq, hub-command-duplicate",
};

/// Media type of MessagePack responses.
const MSGPACK_TYPE: &str = "application/msgpack";
const JSON_TYPE: &str = "application/json";

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Debug, Clone)]
struct Settings {
    poll_wait: Duration,
    max_pending: usize,
    batch_frames: usize,
    batch_bytes: usize,
    max_sessions: usize,
    require_seq: bool,
    cors: Cors,
}

/// The sessions of one service (shared by all its clones).
struct Table {
    sessions: Mutex<HashMap<SessionId, Arc<Entry>>>,
    waiting: AtomicUsize,
}

impl Table {
    fn get(&self, id: SessionId) -> Option<Arc<Entry>> {
        lock(&self.sessions).get(&id).cloned()
    }

    /// Removes `entry` if it is still the one in the table.
    fn remove(&self, entry: &Arc<Entry>) {
        let mut t = lock(&self.sessions);
        if t.get(&entry.id).is_some_and(|e| Arc::ptr_eq(e, entry)) {
            t.remove(&entry.id);
        }
    }
}

/// One poll session.
struct Entry {
    id: SessionId,
    secret: [u8; 16],
    codec: Codec,
    session: Session,
    state: Mutex<State>,
    /// New frames, the close, or a newer poll: waiting polls look again.
    frames: Notify,
    /// Frames acknowledged: the pump may take more.
    room: Notify,
    /// The session's command numbering (one entry: the last numbered command and its answer).
    commands: Arc<Sequencer>,
}

struct State {
    /// Frames not yet acknowledged, with their sequence numbers (increasing, no holes).
    pending: VecDeque<(u64, Bytes)>,
    /// The last sequence number given to a frame.
    last_seq: u64,
    /// Every frame up to here is acknowledged (and dropped).
    acked: u64,
    /// The highest sequence number handed out in a response.
    delivered: u64,
    /// The hub ended the session; its `close` frame is the last in `pending`.
    closed: Option<DisconnectReason>,
    /// Bumped by every poll: a poll whose generation is no longer current is superseded.
    generation: u64,
    /// When the client was last heard from (poll start or end, command).
    last_active: Instant,
}

/// A service that serves long-polling sessions of a [`Hub`].
///
/// It implements both `hyper::service::Service` and `tower::Service` (for axum). Cheap to
/// clone; all clones share one session table. Configure it before cloning.
#[derive(Clone)]
pub struct PollService {
    hub: Hub,
    peer: Option<SocketAddr>,
    settings: Arc<Settings>,
    table: Arc<Table>,
}

impl std::fmt::Debug for PollService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PollService")
            .field("sessions", &self.session_count())
            .field("settings", &self.settings)
            .finish()
    }
}

impl PollService {
    /// A service for `hub`. Defaults: polls wait up to 25 s (at most half the hub's heartbeat
    /// timeout), 1024 pending frames per session, batches of up to 1024 frames or 256 KiB,
    /// 100,000 sessions.
    pub fn new(hub: Hub) -> PollService {
        let mut svc = PollService {
            hub,
            peer: None,
            settings: Arc::new(Settings {
                poll_wait: Duration::from_secs(25),
                max_pending: 1024,
                batch_frames: 1024,
                batch_bytes: 256 * 1024,
                max_sessions: 100_000,
                require_seq: false,
                cors: Cors::same_origin(),
            }),
            table: Arc::new(Table {
                sessions: Mutex::new(HashMap::new()),
                waiting: AtomicUsize::new(0),
            }),
        };
        let wait = svc.settings.poll_wait;
        svc = svc.poll_wait(wait);
        svc
    }

    /// The client's address, passed to the authenticate hook and counted by the per-address
    /// limit (a bare hyper server knows it per connection). Otherwise it is found in the
    /// request's extensions: a `SocketAddr`, or axum's `ConnectInfo<SocketAddr>` (feature
    /// `axum`). Behind a trusted proxy ([`livehub_core::HubBuilder::trusted_proxies`]) the client
    /// is the one its forwarding headers name.
    #[must_use]
    pub fn with_peer(mut self, peer: SocketAddr) -> PollService {
        self.peer = Some(peer);
        self
    }

    /// The longest a poll waits for frames before it is answered with none. Clamped to at most
    /// half the hub's heartbeat timeout (and at least 1 ms), so that a client that polls again
    /// at once is never taken for dead. Clients may ask for less with `&wait=<ms>`.
    #[must_use]
    pub fn poll_wait(mut self, wait: Duration) -> PollService {
        let (_, timeout) = self.hub.heartbeat();
        let wait = wait.min(timeout / 2).max(Duration::from_millis(1));
        Arc::make_mut(&mut self.settings).poll_wait = wait;
        self
    }

    /// Frames a session may hold unacknowledged before the transport stops taking more from
    /// the hub (whose slow-consumer policy then applies). Default 1024.
    #[must_use]
    pub fn max_pending(mut self, frames: usize) -> PollService {
        Arc::make_mut(&mut self.settings).max_pending = frames.max(1);
        self
    }

    /// The most frames and bytes (of frames) one poll response carries. A response always
    /// carries at least one frame if there is one, however large. Default 1024 frames, 256 KiB.
    #[must_use]
    pub fn batch_limit(mut self, frames: usize, bytes: usize) -> PollService {
        let s = Arc::make_mut(&mut self.settings);
        s.batch_frames = frames.max(1);
        s.batch_bytes = bytes;
        self
    }

    /// The most sessions this service holds at once; past it, opens are refused with 503
    /// `too_many_connections`. Default 100,000.
    #[must_use]
    pub fn max_sessions(mut self, n: usize) -> PollService {
        Arc::make_mut(&mut self.settings).max_sessions = n;
        self
    }

    /// Whether every command must be numbered (`Hub-Command-Seq`). Off by default: an
    /// unnumbered command is run on a session that has never numbered one (clients written
    /// before numbers existed keep working), and refused with 409 `bad_seq` on a session that
    /// has. On, unnumbered commands are always refused, so that no command of any session can
    /// be replayed.
    #[must_use]
    pub fn require_command_seq(mut self, required: bool) -> PollService {
        Arc::make_mut(&mut self.settings).require_seq = required;
        self
    }

    /// Pages of these origins (e.g. `https://app.example`) may use the service from the
    /// browser (`fetch` or `XMLHttpRequest` with credentials): their `Origin` is echoed in
    /// `Access-Control-Allow-Origin` with `Access-Control-Allow-Credentials: true`, the command
    /// numbering's answer headers are exposed, and the `OPTIONS` preflight is answered. `"*"` in
    /// the list allows any origin, without credentials. The same policy as livehub-sse's
    /// (`SseService::allow_origins`). Default: same-origin pages only (no CORS headers).
    ///
    /// This only tells browsers what they may read; who may connect at all is the hub's business
    /// (`HubBuilder::allowed_origins`, the authenticate hook).
    #[must_use]
    pub fn allow_origins<I, S>(mut self, origins: I) -> PollService
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Arc::make_mut(&mut self.settings).cors = Cors::allow_origins(origins);
        self
    }

    /// Sessions this service holds (open, or closed with frames not yet acknowledged).
    pub fn session_count(&self) -> usize {
        lock(&self.table.sessions).len()
    }

    /// Polls waiting for frames right now.
    pub fn waiting_polls(&self) -> usize {
        self.table.waiting.load(Ordering::Relaxed)
    }

    /// Answers one request, with the CORS policy's headers; refusals are counted and logged.
    async fn serve<B>(self, req: Request<B>) -> Response<Body>
    where
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let origin = req.headers().get(header::ORIGIN).cloned();
        let line = livehub_http::RequestLine::of(&req, self.peer);
        let mut resp = if req.method() == Method::OPTIONS {
            with_no_store(self.settings.cors.preflight(origin.as_ref(), &CORS_ROUTES))
        } else {
            self.answer(req).await
        };
        self.settings
            .cors
            .apply(origin.as_ref(), &CORS_ROUTES, resp.headers_mut());
        livehub_http::note_refusal(&self.hub, TRANSPORT.name, &line, &resp);
        resp
    }

    /// Answers one request (other than a preflight).
    async fn answer<B>(&self, req: Request<B>) -> Response<Body>
    where
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let query = Query::parse(req.uri().query());
        let method = req.method().clone();
        let token = query.session.clone().or_else(|| {
            req.headers()
                .get("hub-session")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        });
        let Some(token) = token else {
            return match method {
                Method::POST => self.open(req, &query).await,
                Method::GET | Method::DELETE => error(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    "missing the `session` query parameter",
                ),
                _ => method_not_allowed(),
            };
        };
        if !matches!(method, Method::GET | Method::POST | Method::DELETE) {
            return method_not_allowed();
        }
        // What authenticates the request, taken before any `.await` (the body need not be Sync).
        let credentials =
            livehub_http::connect_request(&self.hub, &req, TRANSPORT, Codec::Json, self.peer);
        let entry = match self.find(&token, credentials).await {
            Ok(entry) => entry,
            Err(resp) => return resp,
        };
        match method {
            Method::GET => {
                let Some(cursor) = query.cursor.as_deref().and_then(parse_cursor) else {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "bad_cursor",
                        "`cursor` must be a cursor this session was given",
                    );
                };
                let wait = match query.wait.as_deref() {
                    None => self.settings.poll_wait,
                    Some(w) => match w.parse::<u64>() {
                        Ok(ms) => Duration::from_millis(ms).min(self.settings.poll_wait),
                        Err(_) => {
                            return error(
                                StatusCode::BAD_REQUEST,
                                "bad_request",
                                "`wait` must be a number of milliseconds",
                            )
                        }
                    },
                };
                self.poll(entry, cursor, wait).await
            }
            Method::POST => self.send(entry, req).await,
            _ => self.close(entry),
        }
    }

    /// Opens a session.
    async fn open<B>(&self, req: Request<B>, query: &Query) -> Response<Body> {
        let codec = match negotiate(&req, query) {
            Ok(codec) => codec,
            Err(rej) => return refusal(&rej),
        };
        let limit = self.settings.max_sessions;
        if self.session_count() >= limit {
            return refusal(&Rejection::too_many_connections(format!(
                "at most {limit} long-polling sessions"
            )));
        }
        let mut secret = [0u8; 16];
        if getrandom::fill(&mut secret).is_err() {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "internal",
                "no secure random source available",
            );
        }
        let connect = livehub_http::connect_request(&self.hub, &req, TRANSPORT, codec, self.peer);
        let peer = connect.peer;
        let conn = match self.hub.connect(connect).await {
            Ok(conn) => conn,
            Err(rej) => return refusal(&rej),
        };
        let id = conn.session.id();
        let entry = Arc::new(Entry {
            id,
            secret,
            codec,
            session: conn.session,
            state: Mutex::new(State {
                pending: VecDeque::new(),
                last_seq: 0,
                acked: 0,
                delivered: 0,
                closed: None,
                generation: 0,
                last_active: Instant::now(),
            }),
            frames: Notify::new(),
            room: Notify::new(),
            commands: Arc::default(),
        });
        {
            let mut t = lock(&self.table.sessions);
            if t.len() >= limit {
                drop(t);
                // Dropping the entry (and its session) ends the session.
                return refusal(&Rejection::too_many_connections(format!(
                    "at most {limit} long-polling sessions"
                )));
            }
            t.insert(id, entry.clone());
        }
        let (interval, timeout) = self.hub.heartbeat();
        let span = tracing::debug_span!("session", id = %id, transport = "poll", peer = ?peer);
        tokio::spawn(tracing::Instrument::instrument(
            pump(
                self.hub.clone(),
                entry,
                conn.outbox,
                Arc::downgrade(&self.table),
                Limits {
                    max_pending: self.settings.max_pending,
                    interval,
                    linger: timeout,
                    shutdown_linger: SHUTDOWN_LINGER.min(self.settings.poll_wait),
                },
            ),
            span,
        ));
        let token = format!("{id}.{}", secret::hex(&secret));
        let wait_ms = millis(self.settings.poll_wait);
        let timeout_ms = millis(timeout);
        let body = match codec {
            Codec::Json => Bytes::from(
                serde_json::json!({
                    "session": token,
                    "cursor": "0",
                    "encoding": "json",
                    "wait_ms": wait_ms,
                    "timeout_ms": timeout_ms,
                })
                .to_string(),
            ),
            Codec::MsgPack => {
                let mut buf = Vec::with_capacity(128);
                let _ = rmp::encode::write_map_len(&mut buf, 5);
                for (k, v) in [("session", token.as_str()), ("cursor", "0")] {
                    let _ = rmp::encode::write_str(&mut buf, k);
                    let _ = rmp::encode::write_str(&mut buf, v);
                }
                let _ = rmp::encode::write_str(&mut buf, "encoding");
                let _ = rmp::encode::write_str(&mut buf, "msgpack");
                for (k, v) in [("wait_ms", wait_ms), ("timeout_ms", timeout_ms)] {
                    let _ = rmp::encode::write_str(&mut buf, k);
                    let _ = rmp::encode::write_uint(&mut buf, v);
                }
                Bytes::from(buf)
            }
        };
        ok(codec, body)
    }

    /// Finds the session a token names, checking its secret, then that the request's
    /// credentials authenticate as the session's user.
    async fn find(
        &self,
        token: &str,
        mut credentials: ConnectRequest,
    ) -> Result<Arc<Entry>, Response<Body>> {
        let unknown = || {
            error(
                StatusCode::NOT_FOUND,
                "unknown_session",
                "no such session (unknown, expired or closed): open a new one",
            )
        };
        let Some((id, secret)) = token.split_once('.') else {
            return Err(unknown());
        };
        let Some(id) = SessionId::parse(id) else {
            return Err(unknown());
        };
        let Some(entry) = self.table.get(id) else {
            return Err(unknown());
        };
        let secret_ok = secret::matches(&entry.secret, secret.as_bytes());
        if !secret_ok {
            tracing::debug!(session = %id, "refused a request with a wrong secret");
            return Err(error(
                StatusCode::FORBIDDEN,
                "forbidden",
                "this session belongs to someone else",
            ));
        }
        credentials.codec = entry.codec;
        match self.hub.authenticate(&credentials).await {
            Ok(who) if who.user_id() == entry.session.identity().user_id() => Ok(entry),
            Ok(_) => {
                tracing::debug!(session = %id, "refused a request with another user's credentials");
                Err(error(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    "this session belongs to someone else",
                ))
            }
            Err(rej) => Err(refusal(&rej)),
        }
    }

    /// A long poll: acknowledge up to `cursor`, then answer with what follows it.
    async fn poll(&self, entry: Arc<Entry>, cursor: u64, wait: Duration) -> Response<Body> {
        entry.session.touch();
        let generation = {
            let mut st = lock(&entry.state);
            if cursor > st.delivered || cursor < st.acked {
                let message = if cursor > st.delivered {
                    format!(
                        "cursor {cursor} was never handed out (last is {})",
                        st.delivered
                    )
                } else {
                    format!("cursor {cursor} is before the acknowledged {}", st.acked)
                };
                return error(StatusCode::BAD_REQUEST, "bad_cursor", message);
            }
            while st.pending.front().is_some_and(|(seq, _)| *seq <= cursor) {
                st.pending.pop_front();
            }
            st.acked = cursor;
            st.last_active = Instant::now();
            st.generation += 1;
            if st.closed.is_some() && st.pending.is_empty() {
                // The client has the `close` frame: the session is over.
                drop(st);
                entry.room.notify_waiters();
                self.table.remove(&entry);
                return error(
                    StatusCode::NOT_FOUND,
                    "unknown_session",
                    "the session is closed",
                );
            }
            st.generation
        };
        // The pump may take more; an older poll stops waiting.
        entry.room.notify_waiters();
        entry.frames.notify_waiters();

        let (interval, _) = self.hub.heartbeat();
        let deadline = Instant::now() + wait;
        let _waiting = Waiting::new(&self.table.waiting);
        let mut touch = tokio::time::interval_at(Instant::now() + interval, interval);
        let body = loop {
            let notified = entry.frames.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut st = lock(&entry.state);
                if st.generation != generation {
                    tracing::trace!(session = %entry.id, "poll superseded by a newer one");
                    break batch_body(entry.codec, cursor, &[]);
                }
                if !st.pending.is_empty() {
                    let mut bytes = 0usize;
                    let mut frames: Vec<Bytes> = Vec::new();
                    let mut last = cursor;
                    for (seq, frame) in &st.pending {
                        if frames.len() >= self.settings.batch_frames
                            || (!frames.is_empty()
                                && bytes + frame.len() > self.settings.batch_bytes)
                        {
                            break;
                        }
                        bytes += frame.len();
                        frames.push(frame.clone());
                        last = *seq;
                    }
                    st.delivered = st.delivered.max(last);
                    st.last_active = Instant::now();
                    break batch_body(entry.codec, last, &frames);
                }
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(deadline) => {
                    lock(&entry.state).last_active = Instant::now();
                    break batch_body(entry.codec, cursor, &[]);
                }
                _ = touch.tick() => entry.session.touch(),
            }
        };
        entry.session.touch();
        ok(entry.codec, body)
    }

    /// A command: one client frame for the session.
    async fn send<B>(&self, entry: Arc<Entry>, req: Request<B>) -> Response<Body>
    where
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let presented = seq::presented(req.headers(), req.uri());
        let max = self.hub.max_frame_size();
        let too_large = || {
            error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "frame_too_large",
                format!("frames are limited to {max} bytes"),
            )
        };
        let bytes = match livehub_http::read_body(req, max).await {
            Ok(bytes) => bytes,
            Err(BodyError::TooLarge) => return too_large(),
            Err(e) => return error(StatusCode::BAD_REQUEST, "bad_request", e.to_string()),
        };
        if let Err(message) = check_frame(entry.codec, &bytes) {
            return error(StatusCode::BAD_REQUEST, "bad_frame", message);
        }
        if entry.session.is_closed() {
            return error(
                StatusCode::NOT_FOUND,
                "unknown_session",
                "the session is closed",
            );
        }
        // The command's number, if it has one: a replay or a retry stops here.
        let digest = entry.commands.digest(&bytes);
        let verdict = entry
            .commands
            .admit(presented, digest, self.settings.require_seq)
            .await;
        let ticket = match verdict {
            Verdict::Unsequenced => None,
            Verdict::Run(ticket) => Some(ticket),
            Verdict::Duplicate { seq, answer } => {
                tracing::debug!(session = %entry.id, seq, "a retried command, answered again");
                lock(&entry.state).last_active = Instant::now();
                return with_no_store(answered(seq, answer, true));
            }
            Verdict::Refuse { message, expected } => {
                tracing::debug!(session = %entry.id, expected, "refused a command's number");
                return with_no_store(bad_seq(&message, expected));
            }
        };
        lock(&entry.state).last_active = Instant::now();
        let Some(ticket) = ticket else {
            entry.session.handle(bytes).await;
            let mut resp = Response::new(Full::new(Bytes::new()));
            *resp.status_mut() = StatusCode::ACCEPTED;
            no_store(&mut resp);
            return resp;
        };
        // A numbered command runs to the end even if this request is dropped (the client gave
        // up on it): its retry then gets its answer, and it never runs half or twice.
        let id = entry.id;
        let run = async move { entry.session.handle(bytes).await };
        match run_numbered(ticket, run).await {
            Ok(resp) => with_no_store(resp),
            Err(failed) => {
                let seq = failed.seq;
                tracing::warn!(session = %id, seq, "a command failed: {}", failed.error);
                error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "the command failed on the server",
                )
            }
        }
    }

    /// Ends the session at the client's request.
    fn close(&self, entry: Arc<Entry>) -> Response<Body> {
        self.table.remove(&entry);
        entry.session.close(DisconnectReason::Normal);
        {
            let mut st = lock(&entry.state);
            st.pending.clear();
            st.generation += 1;
        }
        entry.room.notify_waiters();
        entry.frames.notify_waiters();
        let mut resp = Response::new(Full::new(Bytes::new()));
        *resp.status_mut() = StatusCode::NO_CONTENT;
        resp
    }
}

/// Counts a waiting poll for as long as it lives (even if the request is dropped).
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(n: &'a AtomicUsize) -> Waiting<'a> {
        n.fetch_add(1, Ordering::Relaxed);
        Waiting(n)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What a session's pump works with.
#[derive(Debug, Clone, Copy)]
struct Limits {
    /// Frames held unacknowledged before the pump stops taking from the hub.
    max_pending: usize,
    /// The hub's heartbeat interval.
    interval: Duration,
    /// How long an ended session waits for its client to come back (the hub's timeout).
    linger: Duration,
    /// The same, once the hub is shutting down.
    shutdown_linger: Duration,
}

/// Moves frames from the hub into the session's pending buffer, then, once the session is
/// over, keeps it until the client has everything or is gone, and removes it from the table.
async fn pump(hub: Hub, entry: Arc<Entry>, mut outbox: Outbox, table: Weak<Table>, limits: Limits) {
    let Limits {
        max_pending,
        interval,
        ..
    } = limits;
    let mut batch: Vec<Outgoing> = Vec::new();
    let mut tick = tokio::time::interval_at(Instant::now() + interval, interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let reason = loop {
        // Wait for room, unless the session is over: then the hub's queue is frozen (bounded)
        // and its last frames and the close are taken whatever the room.
        loop {
            let room = entry.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            if entry.session.is_closed() || lock(&entry.state).pending.len() < max_pending {
                break;
            }
            tokio::select! {
                _ = &mut room => {}
                _ = entry.session.aborted() => {}
                _ = tick.tick() => {}
            }
        }
        let more = outbox.next_batch(&mut batch).await;
        let closed = {
            let mut st = lock(&entry.state);
            for item in batch.drain(..) {
                match item {
                    Outgoing::Frame(f) => {
                        st.last_seq += 1;
                        let seq = st.last_seq;
                        st.pending.push_back((seq, f.into_bytes()));
                    }
                    Outgoing::Ping | Outgoing::Subscribed { .. } => {}
                    Outgoing::Close(reason) => {
                        st.last_seq += 1;
                        let seq = st.last_seq;
                        st.pending.push_back((seq, outbox.close_frame(reason)));
                        st.closed = Some(reason);
                    }
                }
            }
            match (st.closed, more) {
                (Some(reason), _) => Some(reason),
                (None, false) => Some(DisconnectReason::Normal),
                (None, true) => None,
            }
        };
        entry.frames.notify_waiters();
        if let Some(reason) = closed {
            break reason;
        }
    };
    tracing::debug!(session = %entry.id, %reason, "poll session ended");
    // A session that timed out has no client left. Otherwise keep the last frames and the
    // close until the client acknowledges them or stays away past the timeout. Once the hub is
    // shutting down (it waits for this session to be let go), for a short while only; and for
    // a session the shutdown ended, not past the hub's deadline either (its abort). (Other
    // reasons abort at once, so the abort says nothing about them.)
    if reason != DisconnectReason::HeartbeatTimeout {
        let abortable = reason == DisconnectReason::Shutdown;
        let period = limits.interval.min(SHUTDOWN_CHECK);
        let mut check = tokio::time::interval_at(Instant::now() + period, period);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut until: Option<Instant> = None;
        loop {
            let room = entry.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            if until.is_none() && hub.is_shutting_down() {
                until = Some(Instant::now() + limits.shutdown_linger);
            }
            {
                let st = lock(&entry.state);
                if st.pending.is_empty()
                    || st.last_active.elapsed() > limits.linger
                    || until.is_some_and(|at| Instant::now() >= at)
                {
                    break;
                }
            }
            let deadline = async {
                match until {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let aborted = async {
                if abortable {
                    entry.session.aborted().await;
                } else {
                    std::future::pending::<()>().await;
                }
            };
            tokio::select! {
                _ = &mut room => {}
                _ = check.tick() => {}
                () = deadline => {}
                () = aborted => break,
            }
        }
    }
    if let Some(table) = table.upgrade() {
        table.remove(&entry);
    }
}

/// The query parameters the service reads (others are ignored, e.g. cache busters).
#[derive(Debug, Default)]
struct Query {
    session: Option<String>,
    cursor: Option<String>,
    wait: Option<String>,
    encoding: Option<String>,
}

impl Query {
    fn parse(q: Option<&str>) -> Query {
        let mut out = Query::default();
        for (k, v) in form_urlencoded::parse(q.unwrap_or("").as_bytes()) {
            let slot = match &*k {
                "session" => &mut out.session,
                "cursor" => &mut out.cursor,
                "wait" => &mut out.wait,
                "encoding" => &mut out.encoding,
                _ => continue,
            };
            if slot.is_none() {
                *slot = Some(v.into_owned());
            }
        }
        out
    }
}

/// A cursor: a decimal `u64` (at most 20 digits, nothing else).
fn parse_cursor(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Picks the session's encoding: `?encoding=`, then `Accept`, then `Content-Type`, then JSON.
fn negotiate<B>(req: &Request<B>, query: &Query) -> Result<Codec, Rejection> {
    if let Some(name) = &query.encoding {
        return Codec::from_name(name).ok_or_else(|| {
            Rejection::bad_request(
                "bad_encoding",
                format!("unknown encoding {name:?}: use json or msgpack"),
            )
        });
    }
    for name in [header::ACCEPT, header::CONTENT_TYPE] {
        let found = req
            .headers()
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .find_map(|t| media_codec(t.split(';').next().unwrap_or("").trim()));
        if let Some(codec) = found {
            return Ok(codec);
        }
    }
    Ok(Codec::Json)
}

fn media_codec(media: &str) -> Option<Codec> {
    let media = media.to_ascii_lowercase();
    match media.as_str() {
        "application/json" => Some(Codec::Json),
        "application/msgpack" | "application/x-msgpack" | "application/vnd.msgpack" => {
            Some(Codec::MsgPack)
        }
        _ => None,
    }
}

/// Checks that a command body is one well-formed map in the session's encoding.
fn check_frame(codec: Codec, bytes: &Bytes) -> Result<(), String> {
    let first = match codec {
        Codec::Json => bytes.iter().copied().find(|b| !b.is_ascii_whitespace()),
        Codec::MsgPack => bytes.first().copied(),
    };
    let is_map = match (codec, first) {
        (Codec::Json, Some(b)) => b == b'{',
        (Codec::MsgPack, Some(b)) => (0x80..=0x8f).contains(&b) || b == 0xde || b == 0xdf,
        (_, None) => false,
    };
    if !is_map {
        return Err(format!(
            "the body must be one frame: a {} map",
            codec.name()
        ));
    }
    Payload::from_encoded(codec, bytes.clone())
        .map(|_| ())
        .map_err(|e| format!("not valid {}: {e}", codec.name()))
}

/// `{"cursor": "<cursor>", "frames": [<frame>, ...]}` with the frames' bytes spliced in.
fn batch_body(codec: Codec, cursor: u64, frames: &[Bytes]) -> Bytes {
    let cursor = cursor.to_string();
    let size: usize = frames.iter().map(|f| f.len() + 1).sum::<usize>() + 48;
    let mut buf = Vec::with_capacity(size);
    match codec {
        Codec::Json => {
            buf.extend_from_slice(b"{\"cursor\":\"");
            buf.extend_from_slice(cursor.as_bytes());
            buf.extend_from_slice(b"\",\"frames\":[");
            for (i, f) in frames.iter().enumerate() {
                if i > 0 {
                    buf.push(b',');
                }
                buf.extend_from_slice(f);
            }
            buf.extend_from_slice(b"]}");
        }
        Codec::MsgPack => {
            // Writing to a Vec cannot fail.
            let _ = rmp::encode::write_map_len(&mut buf, 2);
            let _ = rmp::encode::write_str(&mut buf, "cursor");
            let _ = rmp::encode::write_str(&mut buf, &cursor);
            let _ = rmp::encode::write_str(&mut buf, "frames");
            let _ = rmp::encode::write_array_len(&mut buf, frames.len() as u32);
            for f in frames {
                buf.extend_from_slice(f);
            }
        }
    }
    Bytes::from(buf)
}

fn ok(codec: Codec, body: Bytes) -> Response<Body> {
    let mut resp = Response::new(Full::new(body));
    let media = match codec {
        Codec::Json => JSON_TYPE,
        Codec::MsgPack => MSGPACK_TYPE,
    };
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(media));
    no_store(&mut resp);
    resp
}

fn no_store(resp: &mut Response<Body>) {
    let h = resp.headers_mut();
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-store, no-cache, must-revalidate"),
    );
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    h.insert(header::EXPIRES, HeaderValue::from_static("0"));
}

/// A shared answer (livehub-http) as this service sends it: in its body type, not to be cached.
fn with_no_store(resp: Response<Bytes>) -> Response<Body> {
    let mut resp = resp.map(Full::new);
    no_store(&mut resp);
    resp
}

fn error(status: StatusCode, code: &'static str, message: impl Into<String>) -> Response<Body> {
    with_no_store(livehub_http::json_error(status, code, &message.into()))
}

fn refusal(rej: &Rejection) -> Response<Body> {
    with_no_store(livehub_http::refusal(rej))
}

fn method_not_allowed() -> Response<Body> {
    let mut resp = error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "use POST (open, send), GET (poll), DELETE (close) or OPTIONS (CORS preflight)",
    );
    resp.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(CORS_ROUTES.methods));
    resp
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl<B> tower_service::Service<Request<B>> for PollService
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
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

impl<B> hyper::service::Service<Request<B>> for PollService
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn call(&self, req: Request<B>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.serve(req).await) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_are_plain_decimals() {
        assert_eq!(parse_cursor("0"), Some(0));
        assert_eq!(parse_cursor("42"), Some(42));
        assert_eq!(parse_cursor(""), None);
        assert_eq!(parse_cursor("-1"), None);
        assert_eq!(parse_cursor("+1"), None);
        assert_eq!(parse_cursor("1e3"), None);
        assert_eq!(parse_cursor("99999999999999999999999"), None);
    }

    #[test]
    fn json_batches_splice_frames() {
        let body = batch_body(
            Codec::Json,
            7,
            &[Bytes::from_static(b"{\"a\":1}"), Bytes::from_static(b"{}")],
        );
        assert_eq!(&body[..], br#"{"cursor":"7","frames":[{"a":1},{}]}"#);
    }
}

/// Entry points for the fuzz targets in `fuzz/` (not part of the public API).
#[doc(hidden)]
pub mod fuzzing {
    use bytes::Bytes;
    use livehub_core::Codec;

    /// Parses a poll cursor.
    pub fn cursor(s: &str) -> Option<u64> {
        super::parse_cursor(s)
    }

    /// Checks a command body as the send endpoint does (`Err` is its 400 message).
    pub fn command_body(msgpack: bool, body: &[u8]) -> Result<(), String> {
        let codec = if msgpack { Codec::MsgPack } else { Codec::Json };
        super::check_frame(codec, &Bytes::copy_from_slice(body))
    }
}
