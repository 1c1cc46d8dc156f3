//! The application's handle: [`Client`], and [`ClientBuilder`] to make one.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use livehub_protocol::{
    ClientOp, Codec, Member, Payload, Position, PresenceCount, Scope, SessionId,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::http::header::{HeaderName, HeaderValue};

use crate::connection::{self, Config};
use crate::driver::{Command, Driver};
use crate::error::Error;
use crate::events::{
    ConnectionEvent, ConnectionEvents, ConnectionState, ServerEvent, ServerEvents,
};
use crate::feed::{Feed, Kind, Shared};
use crate::pattern::{PatternOptions, PatternSubscription};
use crate::subscription::{SubscribeOptions, Subscription};

/// Builds a [`Client`]. Every setting has a default; only the URL is needed.
#[derive(Debug)]
#[must_use]
pub struct ClientBuilder {
    cfg: Config,
    error: Option<Error>,
}

impl ClientBuilder {
    /// The encoding (default JSON). Sent as the subprotocol `hub.v1.json` / `hub.v1.msgpack`.
    pub fn codec(mut self, codec: Codec) -> Self {
        self.cfg.codec = codec;
        self
    }

    /// A header for the upgrade request, e.g. `Authorization: Bearer ...` or a `Cookie`. Sent
    /// on every (re)connection.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        match (HeaderName::try_from(name), HeaderValue::try_from(value)) {
            (Ok(n), Ok(v)) => self.cfg.headers.push((n, v)),
            _ => {
                self.error
                    .get_or_insert(Error::Config(format!("invalid header {name:?}")));
            }
        }
        self
    }

    /// The reconnection delays: attempt `n` (from 0) waits a random time in
    /// `[floor, min(ceiling, floor * 2^(n+1))]` (full jitter). Default 0.5 s and 20 s. After a
    /// shutdown (close 1001) the first window is already 16 floors wide.
    pub fn reconnect(mut self, floor: Duration, ceiling: Duration) -> Self {
        self.cfg.floor = floor;
        self.cfg.ceiling = ceiling.max(floor);
        self
    }

    /// Gives up after `n` failed attempts in a row (the client closes with the last error).
    /// Default: never.
    pub fn max_reconnect_attempts(mut self, n: u32) -> Self {
        self.cfg.max_attempts = Some(n);
        self
    }

    /// How long a request waits for its answer (`publish`, `emit`, `subscribe`, ...),
    /// including time spent queued while offline. Default 10 s.
    pub fn ack_timeout(mut self, timeout: Duration) -> Self {
        self.cfg.ack_timeout = timeout;
        self
    }

    /// How long one connection attempt may take, handshake and `welcome` included. Default 10 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.cfg.connect_timeout = timeout;
        self
    }

    /// How long the connection may stay silent (the server pings at its heartbeat interval)
    /// before it is taken for dead and replaced. Default: the `timeout_ms` of the server's
    /// `welcome`.
    pub fn liveness_timeout(mut self, timeout: Duration) -> Self {
        self.cfg.liveness = Some(timeout);
        self
    }

    /// Requests kept while offline, sent once connected; one more fails at once with
    /// [`Error::QueueFull`]. Default 256.
    pub fn offline_queue(mut self, requests: usize) -> Self {
        self.cfg.offline_queue = requests;
        self
    }

    /// Requests in flight at once on a connection (unanswered); one more fails with
    /// [`Error::QueueFull`]. Default 1024.
    pub fn max_in_flight(mut self, requests: usize) -> Self {
        self.cfg.max_in_flight = requests.max(1);
        self
    }

    /// Events each subscription holds unread before it lags (see "Lagging" in
    /// [`Subscription`]). Default 1024.
    pub fn subscription_buffer(mut self, events: usize) -> Self {
        self.cfg.subscription_buffer = events.max(2);
        self
    }

    /// Events each [`ServerEvents`] and [`ConnectionEvents`] receiver holds unread. Default 256.
    pub fn event_buffer(mut self, events: usize) -> Self {
        self.cfg.server_events_buffer = events.max(1);
        self
    }

    /// The TLS settings for `wss://` URLs: which roots to trust (e.g. a private CA, or a
    /// server's self-signed certificate), client certificates, ALPN. Without this call a
    /// `wss://` URL trusts webpki's roots (Mozilla's). Needs the `tls` feature.
    #[cfg(feature = "tls")]
    pub fn tls_config(mut self, config: std::sync::Arc<rustls::ClientConfig>) -> Self {
        self.cfg.tls = Some(config);
        self
    }

    /// The largest frame the client accepts from the server; a larger one ends the
    /// connection (which is then replaced). Default 1 MiB.
    pub fn max_frame_size(mut self, bytes: usize) -> Self {
        self.cfg.max_frame_size = bytes;
        self
    }

    /// Connects, and waits for the server's `welcome`. The first connection is not retried:
    /// its failure is the error (a refusal carries the HTTP status and the server's code).
    /// Later losses are repaired in the background. Needs a tokio runtime.
    pub async fn connect(self) -> Result<Client, Error> {
        if let Some(e) = self.error {
            return Err(e);
        }
        let cfg = Arc::new(self.cfg);
        let (ws, welcome) = connection::open(&cfg).await?;
        // Room for every request the offline queue may hold, plus the control commands.
        let (tx, rx) = mpsc::channel(cfg.offline_queue.saturating_add(64));
        let (state_tx, state) = watch::channel(ConnectionState::Connected {
            session: welcome.session,
        });
        let (events, _) = broadcast::channel(cfg.server_events_buffer);
        let (server_events, _) = broadcast::channel(cfg.server_events_buffer);
        let driver = Driver::new(
            cfg.clone(),
            rx,
            tx.downgrade(),
            state_tx,
            events.clone(),
            server_events.clone(),
        );
        tokio::spawn(driver.run(ws, welcome));
        Ok(Client {
            inner: Arc::new(Inner {
                cfg,
                cmds: tx,
                state,
                events,
                server_events,
                next_sub: AtomicU64::new(1),
            }),
        })
    }
}

#[derive(Debug)]
struct Inner {
    cfg: Arc<Config>,
    cmds: mpsc::Sender<Command>,
    state: watch::Receiver<ConnectionState>,
    events: broadcast::Sender<ConnectionEvent>,
    server_events: broadcast::Sender<ServerEvent>,
    next_sub: AtomicU64,
}

/// A connection to a hub that repairs itself. Cheap to clone: every clone is the same client.
///
/// Every request waits at most the ack timeout for its answer and fails with a typed
/// [`Error`]: the server's code, [`Error::Timeout`], [`Error::ConnectionLost`] (it may have
/// run), [`Error::QueueFull`], [`Error::Closed`].
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

/// The reply to a `presence` request: one page, and where the next one starts.
#[derive(Deserialize)]
struct Members {
    members: Vec<Member>,
    #[serde(default)]
    cursor: Option<String>,
}

/// The most members [`Client::presence`] gathers over all pages before it gives up (a server
/// that keeps answering with a cursor cannot make it loop for ever).
const MAX_MEMBERS: usize = 1_000_000;

impl Client {
    /// Starts building a client of the hub at `url` (`ws://host:port/path`).
    pub fn builder(url: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            cfg: Config::new(url.into()),
            error: None,
        }
    }

    /// Connects with the default settings.
    pub async fn connect(url: impl Into<String>) -> Result<Client, Error> {
        Client::builder(url).connect().await
    }

    /// The encoding in use.
    pub fn codec(&self) -> Codec {
        self.inner.cfg.codec
    }

    /// Subscribes to a topic: live messages, no presence events.
    pub async fn subscribe(&self, topic: &str) -> Result<Subscription, Error> {
        self.subscribe_with(topic, SubscribeOptions::new()).await
    }

    /// Subscribes to a topic with options (a position to start after, presence events).
    /// Returns once the server has answered.
    pub async fn subscribe_with(
        &self,
        topic: &str,
        opts: SubscribeOptions,
    ) -> Result<Subscription, Error> {
        let capacity = self.inner.cfg.subscription_buffer;
        let (tx, rx) = mpsc::channel(capacity);
        let shared = Arc::new(Shared::default());
        let (reply, answer) = oneshot::channel();
        let topic: Arc<str> = Arc::from(topic);
        let id = self.inner.next_sub.fetch_add(1, Ordering::Relaxed);
        let since = opts.since.clone();
        let cmd = Command::Subscribe {
            topic: topic.clone(),
            sub: id,
            opts,
            tx,
            shared: shared.clone(),
            reply,
        };
        let top = self.ask(cmd, answer).await?;
        // With `since`, what follows starts after it: that is where a later resume begins.
        let position = since.unwrap_or(top);
        let cmds = self.inner.cmds.clone();
        Ok(Subscription {
            feed: Feed::new(Kind::Topic, topic, id, rx, capacity, shared, cmds),
            position,
        })
    }

    /// Follows every topic that matches `pattern` (`scores/*`: one segment; `scores/**`: one
    /// or more, last only; PROTOCOL.md, "Wildcard subscriptions"): one stream of their
    /// messages, each naming its topic and position, resumed topic by topic after reconnects
    /// (see [`PatternSubscription`]). Returns once the server has answered; a refusal is the
    /// server's error: `bad_pattern`, `forbidden` (the authorize hook), `too_many_patterns`,
    /// `already_subscribed` (this pattern is already followed, here or on the server).
    ///
    /// ```
    /// use livehub_client::{Client, PatternEvent};
    /// use serde_json::json;
    ///
    /// # type BoxError = Box<dyn std::error::Error + Send + Sync>;
    /// # #[tokio::main]
    /// # async fn main() -> Result<(), BoxError> {
    /// # tokio::time::timeout(std::time::Duration::from_secs(10), async {
    /// // The server's default hooks refuse patterns (`forbidden`): this one allows them.
    /// struct Patterns;
    /// #[livehub_core::async_trait]
    /// impl livehub_core::Hooks for Patterns {
    ///     async fn authorize(&self, _: &livehub_core::Identity, a: livehub_core::Action<'_>) -> bool {
    ///         matches!(a, livehub_core::Action::Subscribe(_) | livehub_core::Action::SubscribePattern(_))
    ///     }
    /// }
    /// let hub = livehub_core::Hub::builder().hooks(Patterns).build();
    /// # let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    /// # let url = format!("ws://{}/", listener.local_addr()?);
    /// # let server = hub.clone();
    /// # tokio::spawn(async move {
    /// #     while let Ok((tcp, _)) = listener.accept().await {
    /// #         let service = livehub_ws::WsService::new(server.clone());
    /// #         tokio::spawn(
    /// #             hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
    /// #                 .serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(tcp), service)
    /// #                 .into_owned(),
    /// #         );
    /// #     }
    /// # });
    /// // A hub (`hub`) served at `url`; the host publishes to two topics of one pattern.
    /// let client = Client::connect(url).await?;
    /// let mut live = client.psubscribe("scores/*").await?;
    /// hub.publish("scores/match-1", &json!({"home": 1})).await?;
    /// hub.publish("scores/match-2", &json!({"home": 0})).await?;
    /// for topic in ["scores/match-1", "scores/match-2"] {
    ///     let Some(PatternEvent::Message(m)) = live.next().await else {
    ///         panic!("a message")
    ///     };
    ///     assert_eq!((&*m.topic, m.position.offset), (topic, 1));
    /// }
    /// assert_eq!(live.position("scores/match-2").map(|p| p.offset), Some(1));
    /// client.close().await;
    /// # Ok::<(), BoxError>(())
    /// # })
    /// # .await?
    /// # }
    /// ```
    pub async fn psubscribe(&self, pattern: &str) -> Result<PatternSubscription, Error> {
        self.psubscribe_with(pattern, PatternOptions::new()).await
    }

    /// [`Client::psubscribe`] with options: positions to resume topics of the pattern from
    /// ([`PatternOptions::position`]; their missed messages come first).
    pub async fn psubscribe_with(
        &self,
        pattern: &str,
        opts: PatternOptions,
    ) -> Result<PatternSubscription, Error> {
        let capacity = self.inner.cfg.subscription_buffer;
        let (tx, rx) = mpsc::channel(capacity);
        let shared = Arc::new(Shared::default());
        let (reply, answer) = oneshot::channel();
        let pattern: Arc<str> = Arc::from(pattern);
        let id = self.inner.next_sub.fetch_add(1, Ordering::Relaxed);
        let positions = opts.positions.iter().cloned().collect();
        let cmd = Command::PSubscribe {
            pattern: pattern.clone(),
            sub: id,
            opts,
            tx,
            shared: shared.clone(),
            reply,
        };
        self.ask(cmd, answer).await?;
        let cmds = self.inner.cmds.clone();
        Ok(PatternSubscription {
            feed: Feed::new(Kind::Pattern, pattern, id, rx, capacity, shared, cmds),
            positions,
        })
    }

    /// Publishes a value to a topic (if the server allows this client to); returns the
    /// position the server gave the message.
    pub async fn publish<T: Serialize + ?Sized>(
        &self,
        topic: &str,
        value: &T,
    ) -> Result<Position, Error> {
        let data = Payload::encode(self.codec(), value)?;
        self.publish_payload(topic, data).await
    }

    /// Publishes an already encoded value.
    pub async fn publish_payload(&self, topic: &str, data: Payload) -> Result<Position, Error> {
        self.publish_op(topic, data, None, false).await
    }

    /// Publishes a value with a key (`match:7`, 1 to 128 bytes, no control characters): what
    /// the message is the latest value of. A conflated subscription that falls behind keeps
    /// only the newest message per key (PROTOCOL.md, "Conflation"). A bad key is the server's
    /// `bad_key`.
    pub async fn publish_keyed<T: Serialize + ?Sized>(
        &self,
        topic: &str,
        key: &str,
        value: &T,
    ) -> Result<Position, Error> {
        let data = Payload::encode(self.codec(), value)?;
        self.publish_op(topic, data, Some(key), false).await
    }

    /// Publishes the deletion of a key (data `null`; never conflated away).
    pub async fn publish_delete(&self, topic: &str, key: &str) -> Result<Position, Error> {
        self.publish_op(topic, Payload::null(), Some(key), true)
            .await
    }

    async fn publish_op(
        &self,
        topic: &str,
        data: Payload,
        key: Option<&str>,
        delete: bool,
    ) -> Result<Position, Error> {
        let reply = self
            .request(ClientOp::Publish {
                topic: topic.to_owned(),
                data,
                key: key.map(str::to_owned),
                delete,
            })
            .await?;
        reply
            .decode::<Position>()
            .map_err(|e| Error::Protocol(format!("a publish reply without a position: {e}")))
    }

    /// Sends a custom event to the server's handler of that name and returns its answer (the
    /// ack; `null` if the handler returned nothing).
    pub async fn emit<T: Serialize + ?Sized>(
        &self,
        event: &str,
        value: &T,
    ) -> Result<Payload, Error> {
        let data = Payload::encode(self.codec(), value)?;
        self.request(ClientOp::Event {
            event: event.to_owned(),
            data,
        })
        .await
    }

    /// Who is subscribed to a topic this client follows.
    pub async fn presence(&self, topic: &str) -> Result<Vec<Member>, Error> {
        self.members(Scope::Topic(topic.into())).await
    }

    /// Who is in a room this session is in.
    pub async fn room_presence(&self, room: &str) -> Result<Vec<Member>, Error> {
        self.members(Scope::Room(room.into())).await
    }

    /// How many sessions and distinct users follow a topic this client follows, without
    /// the member list (the server counts in O(1)).
    pub async fn presence_count(&self, topic: &str) -> Result<PresenceCount, Error> {
        self.count(Scope::Topic(topic.into())).await
    }

    /// How many sessions and distinct users are in a room this session is in.
    pub async fn room_presence_count(&self, room: &str) -> Result<PresenceCount, Error> {
        self.count(Scope::Room(room.into())).await
    }

    async fn count(&self, scope: Scope) -> Result<PresenceCount, Error> {
        let reply = self.request(ClientOp::PresenceCount(scope)).await?;
        reply
            .decode::<PresenceCount>()
            .map_err(|e| Error::Protocol(format!("a presence_count reply without counts: {e}")))
    }

    /// Every member, page after page (the server answers at most its page size at a time
    /// and a cursor to go on).
    async fn members(&self, scope: Scope) -> Result<Vec<Member>, Error> {
        let mut all = Vec::new();
        let mut cursor = None;
        loop {
            let reply = self
                .request(ClientOp::Presence {
                    scope: scope.clone(),
                    limit: None,
                    cursor: cursor.take(),
                })
                .await?;
            let page = reply
                .decode::<Members>()
                .map_err(|e| Error::Protocol(format!("a presence reply without members: {e}")))?;
            let empty = page.members.is_empty();
            all.extend(page.members);
            if all.len() > MAX_MEMBERS {
                return Err(Error::Protocol(format!(
                    "a presence list over {MAX_MEMBERS} members"
                )));
            }
            match page.cursor {
                // An empty page with a cursor would not move: the list is complete.
                Some(next) if !empty => cursor = Some(next),
                _ => return Ok(all),
            }
        }
    }

    /// Joins a room (if the server lets clients join rooms). Joined again after a reconnect.
    pub async fn join(&self, room: &str) -> Result<(), Error> {
        self.request(ClientOp::Join {
            room: room.to_owned(),
        })
        .await
        .map(drop)
    }

    /// Leaves a room.
    pub async fn leave(&self, room: &str) -> Result<(), Error> {
        self.request(ClientOp::Leave {
            room: room.to_owned(),
        })
        .await
        .map(drop)
    }

    /// A `ping` answered by the server's `pong`: the round trip.
    pub async fn ping(&self) -> Result<Duration, Error> {
        let start = Instant::now();
        self.request(ClientOp::Ping).await?;
        Ok(start.elapsed())
    }

    /// Where the connection is now.
    pub fn state(&self) -> ConnectionState {
        self.inner.state.borrow().clone()
    }

    /// The current session's id, while connected.
    pub fn session(&self) -> Option<SessionId> {
        match &*self.inner.state.borrow() {
            ConnectionState::Connected { session } => Some(*session),
            _ => None,
        }
    }

    /// Waits until the client is connected (now or after a reconnect); `Err` with why once it
    /// is closed for good.
    pub async fn connected(&self) -> Result<SessionId, Error> {
        let mut state = self.inner.state.clone();
        loop {
            match &*state.borrow_and_update() {
                ConnectionState::Connected { session } => return Ok(*session),
                ConnectionState::Closed { error } => {
                    return Err(error.clone().unwrap_or(Error::Closed))
                }
                _ => {}
            }
            if state.changed().await.is_err() {
                return Err(Error::Closed);
            }
        }
    }

    /// Waits until the client is closed for good; why (`None`: the application closed it).
    pub async fn closed(&self) -> Option<Error> {
        let mut state = self.inner.state.clone();
        loop {
            if let ConnectionState::Closed { error } = &*state.borrow_and_update() {
                return error.clone();
            }
            if state.changed().await.is_err() {
                return Some(Error::Closed);
            }
        }
    }

    /// Connection events from now on (see [`ConnectionEvent`]).
    pub fn connection_events(&self) -> ConnectionEvents {
        ConnectionEvents(self.inner.events.subscribe())
    }

    /// The server's events to this session and its rooms, from now on.
    pub fn server_events(&self) -> ServerEvents {
        ServerEvents(self.inner.server_events.subscribe())
    }

    /// Closes the connection (close 1000) and ends every subscription; waits for the
    /// background task to finish. Later calls fail with [`Error::Closed`].
    pub async fn close(&self) {
        let (done, finished) = oneshot::channel();
        if self.inner.cmds.send(Command::Close { done }).await.is_ok() {
            let _ = finished.await;
        }
    }

    async fn request(&self, op: ClientOp) -> Result<Payload, Error> {
        let (reply, answer) = oneshot::channel();
        self.ask(Command::Request { op, reply }, answer).await
    }

    /// Sends a command and waits for its answer, all within the ack timeout.
    async fn ask<T>(
        &self,
        cmd: Command,
        answer: oneshot::Receiver<Result<T, Error>>,
    ) -> Result<T, Error> {
        let wait = async {
            self.inner.cmds.send(cmd).await.map_err(|_| Error::Closed)?;
            answer.await.unwrap_or(Err(Error::Closed))
        };
        tokio::time::timeout(self.inner.cfg.ack_timeout, wait)
            .await
            .unwrap_or(Err(Error::Timeout))
    }
}
