//! Server-sent events transport for the hub (hyper).
//!
//! [`SseService`] is one service for one path: mount it in a bare hyper server (HTTP/1.1 and
//! HTTP/2, e.g. hyper-util's auto builder) or in an axum `Router` with `route_service`.
//!
//! | request | does |
//! | --- | --- |
//! | `GET <path>?topic=a&topic=b` | opens a `text/event-stream` following topics `a` and `b` |
//! | `POST <path>?session=<id>` + header `Hub-Session-Token: <token>` (+ `Hub-Command-Seq: <n>`) | sends one client frame (JSON, as in PROTOCOL.md) to that stream's session; `202 Accepted`, the answer arrives on the stream |
//! | `OPTIONS <path>` | CORS preflight for the POST |
//!
//! - **Events**: every hub frame is one SSE event, `event: <frame type>` (`message`, `reply`,
//!   `error`, `gap`, `join`, `leave`, `event`, `close`, ...) and `data: <the JSON frame>`.
//!   The stream starts with `retry:`, then `welcome`, then an SSE-only `session` event with the
//!   session id, the secret command token and the command URL.
//! - **Event ids and resume**: each `message` event has `id:` made of the stream's last
//!   position in every topic it has seen (`topic=epoch:offset&...`, percent-encoded); so do
//!   `gap` events of reason `history` and the `reply` to a `subscribe` command with an `id`
//!   (its `since`, or else the topic's position when the subscription began). A browser that
//!   reconnects sends the last one back as `Last-Event-ID` (or, from polyfills, the query
//!   parameter `lastEventId`); the new stream follows the URL's topics plus the id's,
//!   each resumed from its position: exactly the missed messages in order, or a `gap` event
//!   saying what is lost. A `resume` event says what happened (or that the id was malformed and
//!   the stream starts fresh).
//! - **Keep-alive**: a comment line (`: ping`) at the hub's heartbeat interval. A gone client is
//!   noticed when its connection closes or a write fails: hyper drops the body, which owns the
//!   session, so the session ends and its presence leaves exactly once. A peer that stops
//!   reading while the stream has more to say fills its bounded queue and is ended by the hub's
//!   slow-consumer policy; when the hub aborts a session (slow consumer, or the shutdown's
//!   deadline) the transport lets go of it at once, even though hyper, stuck on the stalled
//!   socket, still holds the body: that client gets what was already written, then its `close`
//!   event if it ever reads again. (Closing such a connection is the host server's business:
//!   TCP keepalive, or its timeouts.)
//! - **Shutdown** ([`Hub::shutdown`]): each stream gets the events already queued for it, then a
//!   last `close` event (`{"type":"close","code":1001,"reason":"shutdown"}`), then its body
//!   ends and the session is let go, so the shutdown completes as soon as every client has
//!   read its stream; new streams are refused with 503 `shutting_down`.
//! - **Session binding**: a command needs the stream's session id, its 256-bit token (which
//!   only the stream's reader has) *and* the stream's user's credentials: every command is
//!   authenticated with the hub's hooks ([`Hub::authenticate`]: origin allow-list, then the
//!   authenticate hook, on the `POST`'s headers, cookies, query and peer) and must come from
//!   the user the stream belongs to. Unknown ids get 404; a wrong token 403; credentials the
//!   hook refuses get its 401/403; another user's credentials 403. The token travels in a
//!   custom header, so a cross-site form cannot send it (CSRF). A replayed command (same
//!   token, same credentials) is refused if the stream numbers its commands (below); an
//!   unnumbered one is the owner's as far as the server can tell.
//! - **Command numbers**: a command may carry `Hub-Command-Seq: <n>` ([`COMMAND_SEQ_HEADER`];
//!   or the query parameter `seq=<n>`), 1, 2, 3, ... per stream, one more for each new
//!   command. The stream keeps one entry: the last number that ran, a keyed hash of its body
//!   and its answer. `last + 1` runs (to the end, even if the client drops the request) and
//!   answers 202 with `Hub-Command-Seq: <n>`; `last` again with the same body does not run
//!   again and gets the same answer plus `Hub-Command-Duplicate: 1` (a safe retry after a lost
//!   answer; a retry that arrives while the first try runs waits for it); any other number,
//!   or a malformed one, is refused with 409 `bad_seq` and a JSON body
//!   `{"code", "message", "expected"}`, and nothing runs. Numbered commands of one stream run
//!   one at a time. Without a number, a command runs as before on a stream that has never
//!   numbered one, and is refused with 409 `bad_seq` on a stream that has (stripping the
//!   header does not make a command replayable); [`SseService::require_command_seq`] refuses
//!   unnumbered commands on every stream. Requests refused for other reasons consume no
//!   number. Each stream (each reconnection) starts again at 1.
//! - **Encoding**: SSE is text, so JSON only; `?encoding=msgpack` is refused with 406
//!   `bad_encoding`.
//! - **CORS**: [`SseService::allow_origins`] lets pages of other origins open streams and send
//!   commands (with credentials); the hub's own origin allow-list still applies to connecting.
//!   The same policy as livehub-poll's.
//! - **Refusals** (every error answer) are counted in the hub's stats by code and logged at
//!   debug.
//!
//! Headers: `Content-Type: text/event-stream`, `Cache-Control: no-cache, no-transform` and
//! `X-Accel-Buffering: no`, so that proxies neither cache nor buffer; each batch of frames is one
//! body chunk, written as soon as it is queued. An event's `data:` line is the hub's encoded
//! frame itself (a frame whose JSON holds raw line breaks is split into `data:` lines once, for
//! every stream); per stream only the `id:` line is rendered. Frames under 4 KiB are copied
//! into the stream's chunk; longer ones go out in chunks of their own, shared by every stream.
//! The full contract is in PROTOCOL.md, "Server-sent events (livehub-sse)".
//!
//! **Memory per stream.** An idle stream holds about 15 KB of server memory when the host
//! serves HTTP/1 with hyper's smallest buffer limit (`http1().max_buf_size(8192)`, as in the
//! example below), 22 KB with hyper's defaults. Most of it is the HTTP/1 connection, not this
//! crate: hyper allocates an 8 KiB read buffer and an 8 KiB write buffer per connection for the
//! connection's life, and the host's connection task is ~2 KB; this crate's stream state is
//! ~1.2 KB and the hub's session ~1 KB (heap profile in BENCHMARKS.md). The same limit also
//! bounds what hyper pulls from a stream's body ahead of a slow reader (16 chunks or the
//! limit), so backpressure reaches the hub's bounded queue sooner. Over HTTP/2 (what browsers
//! use with an HTTPS origin that offers it: every `EventSource` of a page shares one
//! connection) a stream holds ~3.8 KB, the connection's buffers being shared by its streams;
//! a WebSocket connection (livehub-ws owns the socket after the upgrade) holds ~3.3 KB.
//!
//! # Example
//!
//! A host mounts the service on a port; a client opens a stream and reads what the server
//! publishes.
//!
//! ```
//! use livehub_core::Hub;
//! use livehub_sse::SseService;
//! use hyper_util::rt::{TokioExecutor, TokioIo};
//! use hyper_util::server::conn::auto;
//! use serde_json::json;
//! use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
//!
//! # use serde_json::Value;
//! # use tokio::io::Lines;
//! # use tokio::net::TcpStream;
//! # type Error = Box<dyn std::error::Error>;
//! #
//! # /// Reads the stream up to the event `name`; returns its `data:` line, parsed.
//! # async fn next_event(
//! #     lines: &mut Lines<BufReader<TcpStream>>,
//! #     name: &str,
//! # ) -> Result<Value, Error> {
//! #     while let Some(line) = lines.next_line().await? {
//! #         if line.strip_prefix("event: ") == Some(name) {
//! #             let data = lines.next_line().await?.unwrap_or_default();
//! #             return Ok(serde_json::from_str(data.strip_prefix("data: ").ok_or("no data")?)?);
//! #         }
//! #     }
//! #     Err("the stream ended".into())
//! # }
//! #
//! # #[tokio::main]
//! # async fn main() -> Result<(), Error> {
//! # // A safety net: should anything go wrong, the example fails instead of hanging.
//! # tokio::time::timeout(std::time::Duration::from_secs(10), async {
//! let hub = Hub::builder().build();
//! let sse = SseService::new(hub.clone()).allow_origins(["https://dashboard.example"]);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let addr = listener.local_addr()?;
//! tokio::spawn(async move {
//!     while let Ok((tcp, peer)) = listener.accept().await {
//!         let service = sse.clone().with_peer(peer);
//!         tokio::spawn(async move {
//!             let mut http = auto::Builder::new(TokioExecutor::new());
//!             // hyper's smallest buffer limit: less memory per stream (see above).
//!             http.http1().max_buf_size(8192);
//!             let _ = http.serve_connection(TokioIo::new(tcp), service).await;
//!         });
//!     }
//! });
//!
//! // A client opens a stream, as `new EventSource("/?topic=scores")` would, and reads its
//! // lines (`next_event` skips to the named event and parses its `data:`).
//! let mut tcp = tokio::net::TcpStream::connect(addr).await?;
//! tcp.write_all(b"GET /?topic=scores HTTP/1.1\r\nHost: localhost\r\n\r\n").await?;
//! let mut lines = BufReader::new(tcp).lines();
//! assert_eq!(lines.next_line().await?.as_deref(), Some("HTTP/1.1 200 OK"));
//! // The topics of the URL are followed before the stream starts.
//! assert_eq!(next_event(&mut lines, "welcome").await?["type"], "welcome");
//!
//! // The server publishes; the stream gets an `event: message`.
//! hub.publish("scores", &json!({"home": 2, "away": 1})).await?;
//! let message = next_event(&mut lines, "message").await?;
//! assert_eq!(message["topic"], "scores");
//! assert_eq!(message["data"], json!({"home": 2, "away": 1}));
//! # Ok::<(), Error>(())
//! # })
//! # .await?
//! # }
//! ```
//!
//! In axum: `Router::new().route_service("/events", SseService::new(hub))`. In the browser:
//!
//! ```js
//! const es = new EventSource("/events?topic=metrics/api");
//! let cmd;
//! es.addEventListener("session", (e) => { cmd = JSON.parse(e.data); });
//! es.onmessage = (e) => { const m = JSON.parse(e.data); console.log(m.topic, m.data); };
//! // later: subscribe to one more topic on the same stream (the page's cookies go along: the
//! // command must come from the stream's user)
//! // (numbered: a retry after a lost answer does not run it twice; start at 1 per stream)
//! fetch(cmd.commands, { method: "POST",
//!   headers: { "Hub-Session-Token": cmd.token, "Hub-Command-Seq": "1" },
//!   body: JSON.stringify({ type: "subscribe", topic: "metrics/db", id: 1 }) });
//! ```

#![warn(missing_docs)]

mod body;
mod id;
mod registry;

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use livehub_core::{
    Codec, CommandError, Connection, ErrorCode, HistoryFrom, Hub, Position, Rejection,
    TransportInfo,
};
use livehub_http::seq::{self, answered, bad_seq, run_numbered, Verdict};
use livehub_http::BodyError;
use tracing::Instrument;

pub use body::Body;

use body::{lock, write_event, Held, TailCache, Writer};
use id::Cursor;
use livehub_http::cors::{Cors, CorsRoutes};
use livehub_http::secret;
use registry::{new_token, Entry, Registry};

/// The transport's description for the hub: one-way, with comment-line pings; a gone client is
/// noticed when its connection closes, not by the heartbeat timeout.
pub const TRANSPORT: TransportInfo = TransportInfo {
    name: "sse",
    pings: true,
    client_liveness: false,
};

/// The request header that carries a stream's command token on `POST`.
pub const TOKEN_HEADER: &str = "hub-session-token";

/// The request header that numbers a command (`1`, `2`, ... per stream): see "Command
/// numbers" in the crate docs. The query parameter `seq` may carry it instead.
pub const COMMAND_SEQ_HEADER: &str = seq::SEQ_HEADER;

/// The answer header (`1`) of a retried command that was not run again: its first answer,
/// repeated.
pub const COMMAND_DUPLICATE_HEADER: &str = seq::DUPLICATE_HEADER;

/// The default reconnection delay sent in `retry:`.
pub const DEFAULT_RETRY: Duration = Duration::from_secs(3);

const LAST_EVENT_ID: &str = "last-event-id";

/// At most this many topics in a stream's URL (the hub's per-session limit applies too).
const MAX_QUERY_TOPICS: usize = id::MAX_ID_TOPICS;

/// What the CORS policy allows on this transport's path.
const CORS_ROUTES: CorsRoutes = CorsRoutes {
    methods: "GET, POST, OPTIONS",
    request_headers:
        "content-type, authorization, last-event-id, hub-session-token, hub-command-seq",
    expose_headers: "hub-command-seq, hub-command-duplicate",
};

#[derive(Clone)]
struct Settings {
    retry: Duration,
    cors: Cors,
    require_seq: bool,
}

/// A service that serves server-sent event streams of a [`Hub`] and their command endpoint.
///
/// It implements both `hyper::service::Service` and `tower::Service` (for axum). Cheap to clone;
/// clones share their streams, so mount clones of one service (not separate `new`s) wherever a
/// command must find a stream.
#[derive(Clone)]
pub struct SseService {
    hub: Hub,
    peer: Option<SocketAddr>,
    registry: Arc<Registry>,
    /// The `data:` parts of long frames and of frames with line breaks, worked out once for
    /// all the streams.
    tails: Arc<TailCache>,
    settings: Arc<Settings>,
}

impl fmt::Debug for SseService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SseService")
            .field("streams", &self.registry.len())
            .field("peer", &self.peer)
            .field("retry", &self.settings.retry)
            .finish()
    }
}

impl SseService {
    /// A service for `hub`: same-origin only (no CORS headers), `retry:` 3 s.
    pub fn new(hub: Hub) -> SseService {
        SseService {
            hub,
            peer: None,
            registry: Arc::default(),
            tails: Arc::default(),
            settings: Arc::new(Settings {
                retry: DEFAULT_RETRY,
                cors: Cors::same_origin(),
                require_seq: false,
            }),
        }
    }

    /// The client's address, passed to the authenticate hook and counted by the per-address
    /// limit (a bare hyper server knows it per connection). Otherwise it is found in the
    /// request's extensions: a `SocketAddr`, or axum's `ConnectInfo<SocketAddr>` (feature
    /// `axum`). Behind a trusted proxy ([`livehub_core::HubBuilder::trusted_proxies`]) the client
    /// is the one its forwarding headers name.
    #[must_use]
    pub fn with_peer(mut self, peer: SocketAddr) -> SseService {
        self.peer = Some(peer);
        self
    }

    /// How long a browser waits before reconnecting a dropped stream (the `retry:` field).
    /// Each stream is sent a random delay between half and one and a half times this, so
    /// that the browsers of a node that goes away do not all come back in the same instant
    /// (a shutdown also sends each stream the hub's own hint: [`livehub_core::HubBuilder::reconnect_spread`]).
    #[must_use]
    pub fn retry(mut self, delay: Duration) -> SseService {
        Arc::make_mut(&mut self.settings).retry = delay;
        self
    }

    /// Whether every command must be numbered (`Hub-Command-Seq`). Off by default: an
    /// unnumbered command is run on a stream that has never numbered one (clients written
    /// before numbers existed keep working), and refused with 409 `bad_seq` on a stream that
    /// has. On, unnumbered commands are always refused, so that no command of any stream can
    /// be replayed.
    #[must_use]
    pub fn require_command_seq(mut self, required: bool) -> SseService {
        Arc::make_mut(&mut self.settings).require_seq = required;
        self
    }

    /// Pages of these origins (e.g. `https://dashboard.example`) may open streams and send
    /// commands from the browser: their `Origin` is echoed in `Access-Control-Allow-Origin`
    /// with `Access-Control-Allow-Credentials: true`, and the `OPTIONS` preflight of the command
    /// endpoint is answered. `"*"` in the list allows any origin, without credentials.
    ///
    /// This only tells browsers what they may read; who may connect at all is the hub's business
    /// (`HubBuilder::allowed_origins`, the authenticate hook).
    #[must_use]
    pub fn allow_origins<I, S>(mut self, origins: I) -> SseService
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Arc::make_mut(&mut self.settings).cors = Cors::allow_origins(origins);
        self
    }

    async fn serve<B>(self, req: Request<B>) -> Response<Body>
    where
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let origin = req.headers().get(header::ORIGIN).cloned();
        let line = livehub_http::RequestLine::of(&req, self.peer);
        let mut resp = match *req.method() {
            Method::GET => self.open(req).await,
            Method::POST => self.command(req).await,
            Method::OPTIONS => self
                .settings
                .cors
                .preflight(origin.as_ref(), &CORS_ROUTES)
                .map(Body::full),
            _ => {
                let mut r = error_response(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "bad_request",
                    "use GET to open a stream, POST to send a command",
                );
                r.headers_mut().insert(
                    header::ALLOW,
                    HeaderValue::from_static("GET, POST, OPTIONS"),
                );
                r
            }
        };
        self.settings
            .cors
            .apply(origin.as_ref(), &CORS_ROUTES, resp.headers_mut());
        livehub_http::note_refusal(&self.hub, TRANSPORT.name, &line, &resp);
        resp
    }

    /// `GET`: authenticate, subscribe (or resume), then stream.
    async fn open<B>(&self, req: Request<B>) -> Response<Body> {
        if let Some(enc) = query_values(req.uri(), "encoding").next() {
            match Codec::from_name(&enc) {
                Some(Codec::Json) => {}
                Some(_) => {
                    return error_response(
                        StatusCode::NOT_ACCEPTABLE,
                        "bad_encoding",
                        "server-sent events are text: this transport speaks json only",
                    )
                }
                None => {
                    return error_response(
                        StatusCode::BAD_REQUEST,
                        "bad_encoding",
                        &format!("unknown encoding {enc:?}: use json"),
                    )
                }
            }
        }
        let mut topics: Vec<String> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for value in query_values(req.uri(), "topic").chain(query_values(req.uri(), "topics")) {
            for t in value.split(',').filter(|t| !t.is_empty()) {
                if seen.insert(t.to_owned()) {
                    topics.push(t.to_owned());
                }
            }
            if topics.len() > MAX_QUERY_TOPICS {
                return error_response(
                    StatusCode::BAD_REQUEST,
                    ErrorCode::TooManySubscriptions.as_str(),
                    &format!("at most {MAX_QUERY_TOPICS} topics in one URL"),
                );
            }
        }
        // `?last=n`: a topic of the URL that is not resumed starts with (up to) its last `n`
        // messages, then live ones (the current state for a first-time reader).
        let last = match query_values(req.uri(), "last").next() {
            None => None,
            Some(v) => match v.parse::<usize>() {
                Ok(n) => Some(n),
                Err(_) => {
                    return error_response(
                        StatusCode::BAD_REQUEST,
                        ErrorCode::BadField.as_str(),
                        "`last` must be a whole number",
                    )
                }
            },
        };
        // The header (what browsers send); else `?lastEventId=` (what EventSource polyfills send,
        // and a page can use to resume from an id it kept).
        let from_query = query_values(req.uri(), "lastEventId").find(|v| !v.is_empty());
        let resume = match req.headers().get(LAST_EVENT_ID).filter(|v| !v.is_empty()) {
            Some(v) => Some(
                v.to_str()
                    .map_err(|_| "not visible ASCII")
                    .and_then(Cursor::parse),
            ),
            None => from_query.as_deref().map(Cursor::parse),
        };
        let Some(token) = new_token() else {
            return error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "no random source for session tokens",
            );
        };
        let connect =
            livehub_http::connect_request(&self.hub, &req, TRANSPORT, Codec::Json, self.peer);
        let peer = connect.peer;
        let Connection { session, outbox } = match self.hub.connect(connect).await {
            Ok(conn) => conn,
            Err(rej) => return refusal(&rej),
        };
        let span =
            tracing::debug_span!("session", id = %session.id(), transport = "sse", peer = ?peer);

        // The URL's topics: a refusal here refuses the stream (dropping the session ends it).
        let resumed = resume.as_ref().and_then(|r| r.as_ref().ok());
        let mut cursor = Cursor::default();
        let mut resumed_topics: Vec<String> = Vec::new();
        for topic in &topics {
            let since = resumed
                .and_then(|c| c.get(topic))
                .map(|(epoch, offset)| Position::new(epoch, offset));
            let from = match (&since, last) {
                (Some(p), _) => HistoryFrom::After(p.clone()),
                (None, Some(n)) => HistoryFrom::Last(n),
                (None, None) => HistoryFrom::Top,
            };
            if let Err(e) = session.subscribe(topic, from).await {
                return command_refusal(topic, &e);
            }
            if let Some(pos) = since {
                cursor.set(topic, &pos.epoch, pos.offset);
                resumed_topics.push(topic.clone());
            }
        }
        // Topics known only from the event id (subscribed by command on the previous stream):
        // resumed too; one that cannot be is reported in the `resume` event.
        let mut failed = Vec::new();
        if let Some(c) = resumed {
            for topic in c.topics() {
                if seen.contains(topic) {
                    continue;
                }
                let Some((epoch, offset)) = c.get(topic) else {
                    continue;
                };
                let since = Position::new(epoch, offset);
                match session.subscribe(topic, HistoryFrom::After(since)).await {
                    Ok(()) => {
                        cursor.set(topic, epoch, offset);
                        resumed_topics.push(topic.to_owned());
                    }
                    Err(e) => failed.push(FailedTopic {
                        topic: topic.to_owned(),
                        code: e.code.as_str(),
                        message: e.message,
                    }),
                }
            }
        }

        let id = session.id();
        // The path the client used: under axum's `nest`, the service sees it with the prefix
        // stripped.
        let path = livehub_http::peer::public_path(req.extensions(), req.uri());
        let commands = format!("{path}?session={id}");
        let mut after_welcome = BytesMut::new();
        let session_event = SessionEvent {
            kind: "session",
            session: id.to_string(),
            token: secret::hex(&token),
            commands,
        };
        write_event(
            &mut after_welcome,
            None,
            "session",
            &serde_json::to_vec(&session_event).unwrap_or_default(),
        );
        if let Some(resume) = &resume {
            let event = match resume {
                Ok(_) => ResumeEvent {
                    kind: "resume",
                    resumed: true,
                    topics: Some(resumed_topics.clone()),
                    failed: Some(failed),
                    code: None,
                    message: None,
                },
                Err(why) => ResumeEvent {
                    kind: "resume",
                    resumed: false,
                    topics: None,
                    failed: None,
                    code: Some("bad_last_event_id"),
                    message: Some(format!(
                        "Last-Event-ID is not an event id of this stream ({why}): starting fresh"
                    )),
                },
            };
            write_event(
                &mut after_welcome,
                None,
                "resume",
                &serde_json::to_vec(&event).unwrap_or_default(),
            );
        }
        let retry = jittered(self.settings.retry);
        let cursor = Arc::new(Mutex::new(cursor));
        let session = Arc::new(session);
        let registered = self.registry.insert(
            id,
            Entry {
                token,
                user: Arc::from(session.identity().user_id()),
                session: Arc::downgrade(&session),
                cursor: cursor.clone(),
                commands: Arc::default(),
            },
        );
        tracing::debug!(parent: &span, topics = topics.len(), resumed = resumed_topics.len(), "stream opened");
        let writer = Writer {
            _held: Held::new(session),
            outbox,
            cursor,
            head: Some(Bytes::from(format!("retry: {retry}\n\n"))),
            after_welcome: Some(after_welcome.freeze()),
            batch: Vec::new(),
            ready: std::collections::VecDeque::new(),
            tails: self.tails.clone(),
            done: false,
            _registered: registered,
        };
        let stream = futures_util::stream::unfold(writer, move |mut w| {
            async move {
                let chunk = w.next_chunk().await?;
                Some((chunk, w))
            }
            .instrument(span.clone())
        });
        let mut resp = Response::new(Body::stream(stream));
        // Sized for these three: hyper keeps the response's map (emptied, for the next
        // response) as long as the connection lives, so its default 6 slots would be held by
        // every idle stream.
        *resp.headers_mut() = http::HeaderMap::with_capacity(3);
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream; charset=utf-8"),
        );
        h.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-cache, no-transform"),
        );
        h.insert(
            HeaderName::from_static("x-accel-buffering"),
            HeaderValue::from_static("no"),
        );
        resp
    }

    /// `POST ?session=<id>`: one client frame for that stream's session.
    async fn command<B>(&self, req: Request<B>) -> Response<Body>
    where
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let Some(id) = query_values(req.uri(), "session")
            .next()
            .and_then(|s| livehub_core::SessionId::parse(&s))
        else {
            return unknown_session();
        };
        let Some(entry) = self.registry.get(id) else {
            return unknown_session();
        };
        let presented = req
            .headers()
            .get(TOKEN_HEADER)
            .map(HeaderValue::as_bytes)
            .unwrap_or_default();
        if !secret::matches(&entry.token, presented) {
            return error_response(
                StatusCode::FORBIDDEN,
                "forbidden",
                "missing or wrong Hub-Session-Token for this session",
            );
        }
        // The token is not enough: the command must also come from the stream's user (checked
        // as a connect would be: origin, then the authenticate hook).
        let connect =
            livehub_http::connect_request(&self.hub, &req, TRANSPORT, Codec::Json, self.peer);
        match self.hub.authenticate(&connect).await {
            Ok(who) if who.user_id() == &*entry.user => {}
            Ok(_) => {
                tracing::debug!(session = %id, "refused a command with another user's credentials");
                return error_response(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    "this stream belongs to another user",
                );
            }
            Err(rej) => return refusal(&rej),
        }
        let Some(session) = entry.session.upgrade() else {
            return unknown_session();
        };
        let presented = seq::presented(req.headers(), req.uri());
        let content_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if content_type.to_ascii_lowercase().contains("msgpack") {
            return error_response(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "bad_encoding",
                "commands are JSON on this transport",
            );
        }
        let max = self.hub.max_frame_size();
        let too_large = || {
            error_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorCode::FrameTooLarge.as_str(),
                &format!("commands are limited to {max} bytes"),
            )
        };
        let bytes = match livehub_http::read_body(req, max).await {
            Ok(bytes) => bytes,
            Err(BodyError::TooLarge) => return too_large(),
            Err(e) => {
                return error_response(StatusCode::BAD_REQUEST, "bad_request", &e.to_string())
            }
        };
        // What can be judged without the session is answered here; the rest (unknown types,
        // bad fields, authorization) is answered on the stream, like any frame.
        let map = match serde_json::from_slice::<serde_json::Value>(&bytes) {
            Err(e) => {
                return error_response(
                    StatusCode::BAD_REQUEST,
                    ErrorCode::BadFrame.as_str(),
                    &format!("not JSON: {e}"),
                )
            }
            Ok(serde_json::Value::Object(map)) => map,
            Ok(_) => {
                return error_response(
                    StatusCode::BAD_REQUEST,
                    ErrorCode::BadFrame.as_str(),
                    "a frame is a JSON object",
                )
            }
        };
        let Some(kind) = map.get("type").and_then(|t| t.as_str()) else {
            return error_response(
                StatusCode::BAD_REQUEST,
                ErrorCode::BadField.as_str(),
                "missing field `type` (a string)",
            );
        };
        let topic = map.get("topic").and_then(|t| t.as_str());
        let unsubscribing = match (kind, topic) {
            ("unsubscribe", Some(topic)) => Some(topic.to_owned()),
            _ => None,
        };
        // The command's number, if it has one: a replay or a retry stops here.
        let digest = entry.commands.digest(&bytes);
        let ticket = match entry
            .commands
            .admit(presented, digest, self.settings.require_seq)
            .await
        {
            Verdict::Unsequenced => None,
            Verdict::Run(ticket) => Some(ticket),
            Verdict::Duplicate { seq, answer } => {
                tracing::debug!(session = %id, seq, "a retried command, answered again");
                return answered(seq, answer, true).map(Body::full);
            }
            Verdict::Refuse { message, expected } => {
                tracing::debug!(session = %id, expected, "refused a command's number");
                return bad_seq(&message, expected).map(Body::full);
            }
        };
        let cursor = entry.cursor.clone();
        let run = async move {
            // A subscribe tells the stream's writer where it starts (the hub's `Subscribed`).
            session.handle(bytes).await;
            if let Some(topic) = unsubscribing {
                lock(&cursor).remove(&topic);
            }
        };
        let Some(ticket) = ticket else {
            run.await;
            let mut resp = Response::new(Body::empty());
            *resp.status_mut() = StatusCode::ACCEPTED;
            return resp;
        };
        // A numbered command runs to the end even if this request is dropped (the client gave
        // up on it): its retry then gets its answer, and it never runs half or twice.
        match run_numbered(ticket, run).await {
            Ok(resp) => resp.map(Body::full),
            Err(failed) => {
                let seq = failed.seq;
                tracing::warn!(session = %id, seq, "a command failed: {}", failed.error);
                error_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "the command failed on the server",
                )
            }
        }
    }
}

impl<B> tower_service::Service<Request<B>> for SseService
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

impl<B> hyper::service::Service<Request<B>> for SseService
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

/// The SSE-only `session` event: what the command endpoint needs.
#[derive(serde::Serialize)]
struct SessionEvent {
    #[serde(rename = "type")]
    kind: &'static str,
    session: String,
    token: String,
    commands: String,
}

/// The SSE-only `resume` event: what a `Last-Event-ID` led to.
#[derive(serde::Serialize)]
struct ResumeEvent {
    #[serde(rename = "type")]
    kind: &'static str,
    resumed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    topics: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    failed: Option<Vec<FailedTopic>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
}

#[derive(serde::Serialize)]
struct FailedTopic {
    topic: String,
    code: &'static str,
    message: String,
}

fn query_values<'a>(uri: &'a http::Uri, name: &'a str) -> impl Iterator<Item = String> + 'a {
    form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
        .filter(move |(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

fn error_response(status: StatusCode, code: &'static str, message: &str) -> Response<Body> {
    livehub_http::json_error(status, code, message).map(Body::full)
}

fn refusal(rej: &Rejection) -> Response<Body> {
    livehub_http::refusal(rej).map(Body::full)
}

fn unknown_session() -> Response<Body> {
    error_response(
        StatusCode::NOT_FOUND,
        "unknown_session",
        "no open stream with this session id",
    )
}

/// A topic of the URL that cannot be followed refuses the whole stream, before it starts.
fn command_refusal(topic: &str, e: &CommandError) -> Response<Body> {
    let status = match e.code {
        ErrorCode::Forbidden => StatusCode::FORBIDDEN,
        ErrorCode::TooManyTopics | ErrorCode::EngineUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::Internal | ErrorCode::EngineError => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::BAD_REQUEST,
    };
    error_response(status, e.code.as_str(), &format!("{topic}: {}", e.message))
}

/// Entry points for the fuzz targets in `fuzz/` (not part of the public API).
#[doc(hidden)]
pub mod fuzzing {
    /// Parses a `Last-Event-ID`; on success, re-encodes it and checks the round trip.
    pub fn last_event_id(id: &str) -> bool {
        match crate::id::Cursor::parse(id) {
            Ok(cursor) => {
                let again = cursor.event_id();
                crate::id::Cursor::parse(&again).is_ok()
            }
            Err(_) => false,
        }
    }
}

/// `base` scaled by a random factor in `0.5..1.5`, in whole milliseconds, for `retry:`.
fn jittered(base: Duration) -> u64 {
    let ms = u64::try_from(base.as_millis()).unwrap_or(u64::MAX / 2);
    let mut buf = [0u8; 8];
    if getrandom::fill(&mut buf).is_err() {
        return ms;
    }
    let r = u64::from_le_bytes(buf);
    ms / 2 + r % ms.max(1)
}
