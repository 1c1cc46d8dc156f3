//! Hooks: how the host decides who connects, who may do what, and answers custom events.

use std::any::Any;
use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use http::{HeaderMap, Uri};

use crate::codec::{Codec, Payload};
use crate::error::{DisconnectReason, HandlerError, Rejection, RoomError};
use crate::hub::Hub;
use crate::session::SessionId;
use crate::transport::TransportInfo;

/// Who a session belongs to: set by [`Hooks::authenticate`], fixed for the session's life.
///
/// `user` and `meta` are what other clients see in presence; `data` is private to the server
/// (token claims, roles) and is what [`Hooks::authorize`] usually looks at.
#[derive(Clone)]
pub struct Identity {
    user: Arc<str>,
    meta: serde_json::Value,
    data: Option<Arc<dyn Any + Send + Sync>>,
}

impl Identity {
    /// An identity with no user (`""`), no metadata and no data.
    pub fn anonymous() -> Identity {
        Identity::user("")
    }

    /// An identity for a user id.
    pub fn user(user: impl Into<Arc<str>>) -> Identity {
        Identity {
            user: user.into(),
            meta: serde_json::Value::Null,
            data: None,
        }
    }

    /// Sets the presence metadata (keep it small: it is sent with every join and leave).
    #[must_use]
    pub fn with_meta(mut self, meta: serde_json::Value) -> Identity {
        self.meta = meta;
        self
    }

    /// Attaches private server data (claims, roles), read back with [`Identity::data`].
    #[must_use]
    pub fn with_data<T: Any + Send + Sync>(mut self, data: T) -> Identity {
        self.data = Some(Arc::new(data));
        self
    }

    /// The user id (`""` when anonymous).
    pub fn user_id(&self) -> &str {
        &self.user
    }

    /// The presence metadata.
    pub fn meta(&self) -> &serde_json::Value {
        &self.meta
    }

    /// The private data attached with [`Identity::with_data`], if it is a `T`.
    pub fn data<T: Any + Send + Sync>(&self) -> Option<&T> {
        self.data.as_deref().and_then(|d| d.downcast_ref())
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("user", &self.user)
            .field("meta", &self.meta)
            .field("data", &self.data.is_some())
            .finish()
    }
}

/// What a transport knows about a connection attempt, handed to [`Hooks::authenticate`].
#[derive(Debug, Clone)]
pub struct ConnectRequest {
    /// The transport the client came in by.
    pub transport: TransportInfo,
    /// The encoding the client chose.
    pub codec: Codec,
    /// The request's headers (`Authorization`, `Cookie`, `Origin`, ...).
    pub headers: HeaderMap,
    /// The request's URI (path and query).
    pub uri: Uri,
    /// The client's address, when the transport knows it.
    pub peer: Option<SocketAddr>,
}

impl ConnectRequest {
    /// A request with no headers, for transports that have none (tests, in-process clients).
    pub fn new(transport: TransportInfo, codec: Codec) -> ConnectRequest {
        ConnectRequest {
            transport,
            codec,
            headers: HeaderMap::new(),
            uri: Uri::from_static("/"),
            peer: None,
        }
    }

    /// A query parameter, percent-decoded (`?token=abc` -> `query("token") == Some("abc")`).
    pub fn query(&self, name: &str) -> Option<Cow<'_, str>> {
        let q = self.uri.query()?;
        form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }

    /// A header as text, if present and visible ASCII.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// A cookie's value from the `Cookie` header(s).
    pub fn cookie(&self, name: &str) -> Option<&str> {
        self.headers
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v)
    }

    /// The token of an `Authorization: Bearer <token>` header.
    pub fn bearer_token(&self) -> Option<&str> {
        let value = self.header("authorization")?;
        let (scheme, token) = value.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
    }
}

/// An action a session asks to take, for [`Hooks::authorize`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Action<'a> {
    /// Subscribe to a topic.
    Subscribe(&'a str),
    /// Subscribe to every topic that matches a pattern (`scores/*`, `scores/**`): the hook
    /// sees the pattern, not the topics (refuse what is too broad).
    SubscribePattern(&'a str),
    /// Publish to a topic.
    Publish(&'a str),
    /// Join a room by the client's own request (server-side joins are not asked).
    Join(&'a str),
}

/// What the hub knows about a session, given to [`Hooks::on_connect`] and
/// [`Hooks::on_disconnect`].
#[derive(Debug, Clone)]
pub struct SessionInfo {
    /// The session's id.
    pub id: SessionId,
    /// Who it belongs to.
    pub identity: Identity,
    /// Its transport's name (`ws`, `sse`, `poll`, ...).
    pub transport: &'static str,
    /// Its encoding.
    pub codec: Codec,
    /// The client's address, when known.
    pub peer: Option<SocketAddr>,
}

/// The host's hooks. Every method has a default, so an empty `impl Hooks for MyHooks {}` is a
/// hub anyone may connect to and subscribe on, where clients may not publish or join rooms.
///
/// ```
/// use livehub_core::{async_trait, Action, ConnectRequest, Hooks, Identity, Rejection};
///
/// struct TokenAuth;
///
/// #[async_trait]
/// impl Hooks for TokenAuth {
///     async fn authenticate(&self, req: &ConnectRequest) -> Result<Identity, Rejection> {
///         match req.query("token").as_deref() {
///             Some("s3cret") => Ok(Identity::user("ana")),
///             Some(_) => Err(Rejection::forbidden("bad token")),
///             None => Err(Rejection::unauthorized("token required")),
///         }
///     }
///
///     async fn authorize(&self, who: &Identity, action: Action<'_>) -> bool {
///         match action {
///             Action::Subscribe(topic) => topic.starts_with("scores/"),
///             Action::Publish(_) => who.user_id() == "ana",
///             _ => false,
///         }
///     }
/// }
/// ```
#[async_trait]
pub trait Hooks: Send + Sync + 'static {
    /// Decides who is connecting, before any session exists. The default lets everyone in as
    /// [`Identity::anonymous`].
    async fn authenticate(&self, req: &ConnectRequest) -> Result<Identity, Rejection> {
        let _ = req;
        Ok(Identity::anonymous())
    }

    /// Decides whether `identity` may take `action`. Called for every client subscribe, pattern
    /// subscribe, publish and join. The default allows subscribing to a topic and refuses the
    /// rest: clients read, the server writes, unless the host says otherwise; and a pattern
    /// (`**` follows every topic) is the host's to allow, with the breadth it finds right.
    async fn authorize(&self, identity: &Identity, action: Action<'_>) -> bool {
        let _ = identity;
        matches!(action, Action::Subscribe(_))
    }

    /// Called once when a session opens, before any of its frames is handled: the place to
    /// join it to its rooms (`hub.join(session.id, "user:...").await`). Its `welcome` is
    /// already queued.
    async fn on_connect(&self, hub: &Hub, session: &SessionInfo) {
        let _ = (hub, session);
    }

    /// Called exactly once when a session ends, with why.
    fn on_disconnect(&self, session: &SessionInfo, reason: DisconnectReason) {
        let _ = (session, reason);
    }
}

/// The default hooks: everyone connects anonymously and may subscribe; nobody may publish or
/// join rooms.
#[derive(Debug, Clone, Copy, Default)]
pub struct AllowSubscribe;

impl Hooks for AllowSubscribe {}

/// What a custom event handler gets besides the data: who sent it, and the hub to act on.
#[derive(Clone)]
pub struct EventContext {
    pub(crate) hub: Hub,
    pub(crate) session: SessionId,
    pub(crate) identity: Identity,
    pub(crate) event: Arc<str>,
}

impl EventContext {
    /// The hub, to publish, emit to rooms or look up presence.
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// The session that sent the event.
    pub fn session_id(&self) -> SessionId {
        self.session
    }

    /// Who sent it.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The event's name.
    pub fn event(&self) -> &str {
        &self.event
    }

    /// Joins the sending session to a room (the usual answer to a `join-room` event).
    pub async fn join(&self, room: &str) -> Result<(), RoomError> {
        self.hub.join(self.session, room).await
    }

    /// Removes the sending session from a room.
    pub fn leave(&self, room: &str) -> Result<(), RoomError> {
        self.hub.leave(self.session, room)
    }
}

impl fmt::Debug for EventContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventContext")
            .field("session", &self.session)
            .field("identity", &self.identity)
            .field("event", &self.event)
            .finish()
    }
}

/// What a handler returns: `Some(payload)` to answer with data, `None` for a bare ack.
pub type HandlerResult = Result<Option<Payload>, HandlerError>;

/// A handler for one custom client event. Any `async` closure
/// `Fn(EventContext, Payload) -> impl Future<Output = HandlerResult>` is one.
#[async_trait]
pub trait EventHandler: Send + Sync + 'static {
    /// Handles the event. The answer reaches the client as a `reply` when it sent an `id`.
    async fn call(&self, ctx: EventContext, data: Payload) -> HandlerResult;
}

#[async_trait]
impl<F, Fut> EventHandler for F
where
    F: Fn(EventContext, Payload) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = HandlerResult> + Send + 'static,
{
    async fn call(&self, ctx: EventContext, data: Payload) -> HandlerResult {
        (self)(ctx, data).await
    }
}
