//! The host's API: the [`Hub`] handle and what a server does with it.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::broker::{
    BrokerError, EngineStats, HistoryFrom, Message, NodeId, Position, Publication,
};
use crate::builder::HubBuilder;
use crate::codec::Payload;
use crate::config::SlowConsumerPolicy;
use crate::error::{AckError, DisconnectReason, ErrorCode, Rejection, RoomError, SendError};
use crate::frame::{Frame, Shared};
use crate::hooks::{ConnectRequest, Identity};
use crate::names::{valid_event, valid_key, valid_name};
use crate::node::{Control, Inner};
use crate::presence::{Member, MemberPage, PresenceCount, PresenceError, Scope};
use crate::session::{lock, SessionId, SessionState};
use crate::stats::{Stats, StatsSnapshot};
use crate::transport::{Connection, Outbox, Session};

/// A handle on the hub. Cheap to clone; every clone is the same hub.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use livehub_core::Hub;
/// let hub = Hub::builder().history_len(50).build();
/// let pos = hub.publish("scores/all", &serde_json::json!({"home": 1, "away": 0})).await.unwrap();
/// assert_eq!(pos.offset, 1);
/// # }
/// ```
#[derive(Clone)]
pub struct Hub {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("node", &self.inner.node)
            .field("engine", &self.inner.broker_info.name)
            .field("sessions", &self.inner.sessions.len())
            .field("topics", &self.inner.topics.len())
            .finish()
    }
}

/// What [`Hub::shutdown`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// Sessions that were open and were told to close.
    pub sessions: usize,
    /// Transports that had not finished by the deadline and were aborted (this can include
    /// sessions that had ended before the shutdown but were still writing their last frames).
    pub forced: usize,
}

impl Hub {
    /// Starts building a hub.
    pub fn builder() -> HubBuilder {
        HubBuilder::default()
    }

    /// This node's id (the high bits of its session ids).
    pub fn node_id(&self) -> NodeId {
        self.inner.node
    }

    /// Checks a request's origin and credentials the way [`Hub::connect`] does, without
    /// opening a session: for transports whose later requests (SSE commands, polls) must come
    /// from the identity that opened the session.
    pub async fn authenticate(&self, req: &ConnectRequest) -> Result<Identity, Rejection> {
        self.check_origin(req)?;
        self.inner.config.hooks.authenticate(req).await
    }

    fn check_origin(&self, req: &ConnectRequest) -> Result<(), Rejection> {
        if let (Some(allowed), Some(origin)) =
            (&self.inner.config.allowed_origins, req.header("origin"))
        {
            if !allowed.iter().any(|a| a == origin) {
                return Err(Rejection::origin_not_allowed(origin));
            }
        }
        Ok(())
    }

    /// Attaches a client: checks the origin, asks [`crate::Hooks::authenticate`], then opens a
    /// session and queues its `welcome`. This is what every transport calls; see
    /// [`crate::transport`].
    pub async fn connect(&self, req: ConnectRequest) -> Result<Connection, Rejection> {
        let inner = &self.inner;
        if inner.shutting_down.load(Ordering::Acquire) {
            return Err(Rejection::shutting_down());
        }
        self.check_origin(&req)?;
        inner.admit(req.peer)?;
        let identity = match inner.config.hooks.authenticate(&req).await {
            Ok(identity) => identity,
            Err(rejection) => {
                inner.release(req.peer);
                return Err(rejection);
            }
        };
        inner.ensure_sweeper();
        let id = inner.new_session_id();
        let state = Arc::new(SessionState::new(
            id,
            identity,
            &req,
            &inner.config,
            &inner.congestion,
            inner.now_ms(),
        ));
        inner.sessions.insert(id, state.clone());
        Stats::add(&inner.stats.sessions_opened, 1);
        inner.push_one(
            &state,
            Frame::Welcome {
                session: state.id,
                encoding: state.codec,
                heartbeat_ms: u64::try_from(inner.config.heartbeat_interval.as_millis())
                    .unwrap_or(u64::MAX),
                timeout_ms: u64::try_from(inner.config.heartbeat_timeout.as_millis())
                    .unwrap_or(u64::MAX),
            },
        );
        tracing::debug!(session = %state.id, transport = state.transport.name, "session opened");
        inner.attached.insert(state.id, state.clone());
        let session = Session {
            hub: self.clone(),
            state: state.clone(),
        };
        inner.config.hooks.on_connect(self, &state.info()).await;
        Ok(Connection {
            outbox: Outbox::new(inner.clone(), state),
            session,
        })
    }
    /// Publishes a value to a topic (encoded once as JSON; converted once for MessagePack
    /// sessions if any). Waits for the engine, which gives the message its position; every
    /// subscriber on every node gets it.
    ///
    /// Fails fast, never hangs, when the engine cannot be reached
    /// ([`SendError::Engine`] with code `engine_unavailable`).
    pub async fn publish<T: Serialize + ?Sized>(
        &self,
        topic: &str,
        data: &T,
    ) -> Result<Position, SendError> {
        self.publish_payload(topic, Payload::from_value(data)?)
            .await
    }

    /// Publishes an already encoded payload to a topic.
    pub async fn publish_payload(&self, topic: &str, data: Payload) -> Result<Position, SendError> {
        self.publish_message(topic, Message::new(data)).await
    }

    /// Publishes a value with a key (`match:7`): on a conflated subscription that falls
    /// behind, only the newest message per key is kept ([`crate::HubBuilder::conflate_topics`]).
    pub async fn publish_keyed<T: Serialize + ?Sized>(
        &self,
        topic: &str,
        key: &str,
        data: &T,
    ) -> Result<Position, SendError> {
        self.publish_message(topic, Message::keyed(Payload::from_value(data)?, key))
            .await
    }

    /// Publishes the deletion of a key (data `null`; never conflated away).
    pub async fn publish_delete(&self, topic: &str, key: &str) -> Result<Position, SendError> {
        self.publish_message(topic, Message::keyed(Payload::null(), key).deleting())
            .await
    }

    /// Publishes a message (with its key, if any).
    pub async fn publish_message(
        &self,
        topic: &str,
        message: Message,
    ) -> Result<Position, SendError> {
        if !valid_name(topic, self.inner.config.max_name_len) {
            return Err(SendError::BadName(ErrorCode::BadTopic));
        }
        match &message.key {
            Some(key) if !valid_key(key, self.inner.config.max_name_len) => {
                return Err(SendError::BadName(ErrorCode::BadKey));
            }
            None if message.delete => return Err(SendError::BadName(ErrorCode::BadKey)),
            _ => {}
        }
        // Topics published to by the server alone expire too.
        self.inner.ensure_sweeper();
        let start = std::time::Instant::now();
        let pos = self.inner.broker.publish(topic, message).await?;
        self.inner.stats.publish_latency.since(start);
        Stats::add(&self.inner.stats.published, 1);
        self.inner.pace().await;
        Ok(pos)
    }

    /// A topic's position now: its epoch and the offset of its last message (0 if none).
    pub async fn position(&self, topic: &str) -> Result<Position, SendError> {
        if !valid_name(topic, self.inner.config.max_name_len) {
            return Err(SendError::BadName(ErrorCode::BadTopic));
        }
        Ok(self
            .inner
            .broker
            .history(topic, HistoryFrom::Top)
            .await?
            .top)
    }

    /// The last `n` messages of a topic that its history still holds, oldest first.
    pub async fn recent(&self, topic: &str, n: usize) -> Result<Vec<Publication>, SendError> {
        if !valid_name(topic, self.inner.config.max_name_len) {
            return Err(SendError::BadName(ErrorCode::BadTopic));
        }
        Ok(self
            .inner
            .broker
            .history(topic, HistoryFrom::Last(n))
            .await?
            .publications)
    }

    /// Starts a send to the members of a room (add more rooms with [`Broadcast::to`]).
    pub fn to(&self, room: impl Into<String>) -> Broadcast<'_> {
        Broadcast {
            hub: self,
            rooms: vec![room.into()],
            except: Vec::new(),
        }
    }

    /// Sends an event to one session, on whichever node holds it. Returns whether it was
    /// queued for the session (a local one) or handed to the engine for its node (a session of
    /// another node: whether it still exists is not known here).
    pub fn emit_to<T: Serialize + ?Sized>(
        &self,
        session: SessionId,
        event: &str,
        data: &T,
    ) -> Result<bool, SendError> {
        let (event, data) = self.event_parts(event, Payload::from_value(data)?)?;
        let inner = &self.inner;
        if NodeId::of(session) != inner.node {
            inner.send_control(
                crate::broker::Route::Node(NodeId::of(session)),
                Control::Direct {
                    session: session.as_u64(),
                    event: event.to_string(),
                    codec: Control::codec_tag(&data),
                    data: data.as_bytes().to_vec(),
                },
            )?;
            return Ok(inner.clustered());
        }
        let Some(s) = inner.local_session(session) else {
            return Ok(false);
        };
        let frame = Shared::new(Frame::Event {
            event,
            data,
            ack: None,
        });
        let mut overflow = Vec::new();
        let n = inner.fan_out(std::iter::once(&s), &frame, &mut overflow);
        inner.close_all(overflow, DisconnectReason::SlowConsumer);
        Ok(n == 1)
    }

    /// Sends an event to one session (on any node) and waits for its answer, as socket.io's
    /// `emitWithAck`: the event goes out with an `ack` number, and the client answers with an
    /// `ack` frame carrying it (PROTOCOL.md, "Events that ask for an answer"). Fails with
    /// [`AckError::Timeout`] when no answer comes in `timeout`, [`AckError::Disconnected`] when
    /// the session ends first, [`AckError::NoSession`] when there is no such session.
    ///
    /// A session owes at most 64 answers at once ([`AckError::TooMany`] beyond).
    pub async fn emit_with_ack<T: Serialize + ?Sized>(
        &self,
        session: SessionId,
        event: &str,
        data: &T,
        timeout: Duration,
    ) -> Result<Payload, AckError> {
        if !valid_event(event, self.inner.config.max_name_len) {
            return Err(AckError::BadName(ErrorCode::BadEvent));
        }
        let data = Payload::from_value(data)?;
        self.inner
            .emit_with_ack(session, Arc::from(event), data, timeout)
            .await
    }

    /// Sends an event to every session of the hub, on every node. Returns how many local
    /// sessions got it.
    pub fn emit_all<T: Serialize + ?Sized>(
        &self,
        event: &str,
        data: &T,
    ) -> Result<usize, SendError> {
        let (event, data) = self.event_parts(event, Payload::from_value(data)?)?;
        let inner = &self.inner;
        let frame = Shared::new(Frame::Event {
            event: event.clone(),
            data: data.clone(),
            ack: None,
        });
        let n = inner.emit_all_local(&frame);
        inner.send_control(
            crate::broker::Route::All,
            Control::All {
                event: event.to_string(),
                codec: Control::codec_tag(&data),
                data: data.as_bytes().to_vec(),
            },
        )?;
        Ok(n)
    }

    fn event_parts(&self, event: &str, data: Payload) -> Result<(Arc<str>, Payload), SendError> {
        if !valid_event(event, self.inner.config.max_name_len) {
            return Err(SendError::BadName(ErrorCode::BadEvent));
        }
        Ok((Arc::from(event), data))
    }

    /// Adds a session to a room (idempotent), on whichever node holds it. Rooms are
    /// server-managed: no hook is asked. Waits until this node hears the room on the engine,
    /// so a send to the room right after reaches the session. A session of another node is
    /// joined by its node (the request is handed to the engine).
    pub async fn join(&self, session: SessionId, room: &str) -> Result<(), RoomError> {
        if !valid_name(room, self.inner.config.max_name_len) {
            return Err(RoomError::BadRoom);
        }
        let inner = &self.inner;
        if NodeId::of(session) != inner.node && inner.clustered() {
            return inner
                .send_control(
                    crate::broker::Route::Node(NodeId::of(session)),
                    Control::Join {
                        session: session.as_u64(),
                        room: room.to_owned(),
                    },
                )
                .map_err(RoomError::Engine);
        }
        let s = inner.local_session(session).ok_or(RoomError::NoSession)?;
        inner.join_room(&s, room).await
    }

    /// Removes a session from a room, on whichever node holds it.
    pub fn leave(&self, session: SessionId, room: &str) -> Result<(), RoomError> {
        let inner = &self.inner;
        if NodeId::of(session) != inner.node && inner.clustered() {
            return inner
                .send_control(
                    crate::broker::Route::Node(NodeId::of(session)),
                    Control::Leave {
                        session: session.as_u64(),
                        room: room.to_owned(),
                    },
                )
                .map_err(RoomError::Engine);
        }
        let s = inner.local_session(session).ok_or(RoomError::NoSession)?;
        inner.leave_room(&s, room);
        Ok(())
    }

    /// Disconnects a session (reason `kicked`; queued frames are still written), on whichever
    /// node holds it. Returns whether it was found here, or handed to the engine for its node.
    pub fn disconnect(&self, session: SessionId) -> bool {
        let inner = &self.inner;
        if NodeId::of(session) != inner.node {
            return inner.clustered()
                && inner
                    .send_control(
                        crate::broker::Route::Node(NodeId::of(session)),
                        Control::Disconnect {
                            session: session.as_u64(),
                        },
                    )
                    .is_ok();
        }
        let Some(s) = inner.local_session(session) else {
            return false;
        };
        inner.close_session(&s, DisconnectReason::Kicked);
        true
    }

    /// Who is subscribed to a topic now, on every node.
    pub async fn topic_members(&self, topic: &str) -> Result<Vec<Member>, BrokerError> {
        self.inner.members(Scope::Topic(topic)).await
    }

    /// Who is in a room now, on every node.
    pub async fn room_members(&self, room: &str) -> Result<Vec<Member>, BrokerError> {
        self.inner.members(Scope::Room(room)).await
    }

    /// How many sessions and distinct users follow a topic now, on every node. O(1): the
    /// count is kept as members come and go (by the store, with several nodes), never
    /// counted by walking the members.
    pub async fn topic_count(&self, topic: &str) -> Result<PresenceCount, BrokerError> {
        self.inner.presence_count(Scope::Topic(topic)).await
    }

    /// How many sessions and distinct users are in a room now, on every node. O(1).
    pub async fn room_count(&self, room: &str) -> Result<PresenceCount, BrokerError> {
        self.inner.presence_count(Scope::Room(room)).await
    }

    /// A page of a topic's subscribers, on every node: up to `limit` (1 to the hub's
    /// [`presence_page_max`](crate::HubBuilder::presence_page_max)) in session id order,
    /// after `cursor` (the previous page's [`MemberPage::cursor`]; `None` for the first).
    /// Following cursors to the end lists every member present throughout exactly once.
    ///
    /// ```
    /// # async fn run(hub: livehub_core::Hub) -> Result<(), livehub_core::presence::PresenceError> {
    /// let mut cursor = None;
    /// loop {
    ///     let page = hub.topic_members_page("stadium", cursor.as_deref(), 500).await?;
    ///     for m in &page.members { /* ... */ }
    ///     match page.cursor {
    ///         Some(next) => cursor = Some(next),
    ///         None => break,
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn topic_members_page(
        &self,
        topic: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<MemberPage, PresenceError> {
        self.inner
            .members_page(Scope::Topic(topic), cursor, Some(limit))
            .await
    }

    /// A page of a room's members, on every node (as [`Hub::topic_members_page`]).
    pub async fn room_members_page(
        &self,
        room: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<MemberPage, PresenceError> {
        self.inner
            .members_page(Scope::Room(room), cursor, Some(limit))
            .await
    }

    /// The rooms a local session is in.
    pub fn rooms_of(&self, session: SessionId) -> Vec<String> {
        self.inner
            .sessions
            .get(&session)
            .map(|s| {
                lock(&s.membership)
                    .rooms
                    .iter()
                    .map(|r| r.to_string())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The number of open sessions on this node.
    pub fn session_count(&self) -> usize {
        self.inner.sessions.len()
    }

    /// A snapshot of this node's counters and sizes.
    pub fn stats(&self) -> StatsSnapshot {
        let inner = &self.inner;
        let mut snap = inner.stats.snapshot();
        for entry in inner.sessions.iter() {
            *snap
                .sessions
                .entry(entry.value().transport.name)
                .or_default() += 1;
            let queued = entry.value().queue.len() as u64;
            snap.queued_frames += queued;
            snap.max_queue = snap.max_queue.max(queued);
        }
        let engine = inner.broker.stats();
        snap.topics = if inner.clustered() {
            inner.topics.len() as u64
        } else {
            engine.topics
        };
        snap.rooms = inner.rooms.len() as u64;
        snap.subscriptions = inner
            .topics
            .iter()
            .map(|t| lock(&t.value().state).subs.len() as u64)
            .sum();
        snap.engine = engine;
        snap
    }

    /// Counts a request that a transport refused with an HTTP error answer, under its stable
    /// code ([`StatsSnapshot::refusals`]). The hub's transports call it for every refusal they
    /// answer (authentication, origin, limits, bad requests); a host that refuses requests on
    /// the hub's behalf may too. `code` is one of the program's fixed strings (a
    /// [`Rejection::code`], an [`ErrorCode::as_str`]), so the table stays small.
    pub fn record_refusal(&self, code: &'static str) {
        self.inner.stats.count_refusal(code);
    }

    /// The engine's own counters (connected, reconnects, messages in and out).
    pub fn engine_stats(&self) -> EngineStats {
        self.inner.broker.stats()
    }

    /// Shuts the hub down gracefully: refuses new sessions (503 `shutting_down`), ends every
    /// session with reason `shutdown` (WebSocket close 1001; SSE and poll get a final `close`
    /// frame) after the frames already queued for it, and waits up to `grace` for the
    /// transports to write them. Sessions still writing at the deadline are aborted.
    ///
    /// So that the clients do not all come back in the same instant, the sessions end in
    /// batches over [`HubBuilder::shutdown_drain`] (default: all at once), and each is told a
    /// random reconnection delay within [`HubBuilder::reconnect_spread`] (default 5 s), which
    /// hub.js and livehub-client obey. `grace` starts after the last batch.
    ///
    /// Call it before stopping the host's server (e.g. before axum's graceful shutdown
    /// completes): upgraded and streaming connections are the hub's, not the server's.
    pub async fn shutdown(&self, grace: Duration) -> ShutdownReport {
        let inner = &self.inner;
        inner.shutting_down.store(true, Ordering::Release);
        let mut sessions: Vec<Arc<SessionState>> =
            inner.sessions.iter().map(|e| e.value().clone()).collect();
        let mut rng = Spread::new();
        // Random order: no group of clients (the oldest, one shard of the map) always goes
        // first.
        for i in (1..sessions.len()).rev() {
            sessions.swap(i, rng.below(i as u64 + 1) as usize);
        }
        let spread_ms = inner.config.reconnect_spread.as_millis() as u64;
        let drain = inner.config.shutdown_drain;
        // One batch every 50 ms at most, evenly over the window.
        let batches = ((drain.as_millis() / 50) as usize).clamp(1, sessions.len().max(1));
        let per_batch = sessions.len().div_ceil(batches).max(1);
        let start = tokio::time::Instant::now();
        for (i, batch) in sessions.chunks(per_batch).enumerate() {
            if i > 0 {
                tokio::time::sleep_until(start + drain.mul_f64(i as f64 / batches as f64)).await;
            }
            for s in batch {
                if s.is_closed() {
                    continue;
                }
                if spread_ms > 0 {
                    // 1..=spread: 0 means "no hint".
                    let hint = 1 + rng.below(spread_ms);
                    s.retry_hint_ms.store(hint, Ordering::Release);
                }
                inner.close_session(s, DisconnectReason::Shutdown);
            }
        }
        let flushed = tokio::time::timeout(grace, inner.all_detached())
            .await
            .is_ok();
        let mut forced = 0;
        if !flushed {
            // Every transport still holding a session, including sessions that had ended
            // before the shutdown and were still flushing.
            let left: Vec<Arc<SessionState>> =
                inner.attached.iter().map(|e| e.value().clone()).collect();
            forced = left.len();
            for s in &left {
                s.abort();
            }
            // Aborted transports stop at once; give them a moment to drop their handles.
            let _ = tokio::time::timeout(Duration::from_secs(1), inner.all_detached()).await;
        }
        tracing::info!(sessions = sessions.len(), forced, "hub shut down");
        ShutdownReport {
            sessions: sessions.len(),
            forced,
        }
    }

    /// Whether [`Hub::shutdown`] has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.inner.shutting_down.load(Ordering::Acquire)
    }

    /// The heartbeat interval and timeout in force.
    pub fn heartbeat(&self) -> (Duration, Duration) {
        (
            self.inner.config.heartbeat_interval,
            self.inner.config.heartbeat_timeout,
        )
    }

    /// The header the trusted proxies name the client in ([`HubBuilder::forwarded_header`]).
    pub fn forwarded_header(&self) -> crate::ForwardedHeader {
        self.inner.config.forwarded_header
    }

    /// Whether `ip` is one of the hub's trusted proxies
    /// ([`HubBuilder::trusted_proxies`]).
    pub fn is_trusted_proxy(&self, ip: std::net::IpAddr) -> bool {
        // An IPv4 peer on a dual-stack socket comes as `::ffff:a.b.c.d`.
        let ip = match ip {
            std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, std::net::IpAddr::V4),
            v4 => v4,
        };
        self.inner
            .config
            .trusted_proxies
            .iter()
            .any(|net| net.contains(&ip))
    }

    /// The largest frame a client may send, in bytes.
    pub fn max_frame_size(&self) -> usize {
        self.inner.config.max_frame_size
    }

    /// The slow-consumer policy in force.
    pub fn slow_consumer_policy(&self) -> SlowConsumerPolicy {
        self.inner.config.slow_consumer
    }
}

/// A send to the members of one or more rooms, built by [`Hub::to`].
///
/// A session in several of the rooms gets the event once, whichever nodes they are on.
#[derive(Debug)]
#[must_use = "a broadcast does nothing until `emit`"]
pub struct Broadcast<'a> {
    hub: &'a Hub,
    rooms: Vec<String>,
    except: Vec<SessionId>,
}

impl Broadcast<'_> {
    /// Adds a room.
    pub fn to(mut self, room: impl Into<String>) -> Self {
        self.rooms.push(room.into());
        self
    }

    /// Leaves one session out (typically the sender).
    pub fn except(mut self, session: SessionId) -> Self {
        self.except.push(session);
        self
    }

    /// Sends the event; returns how many local sessions it was queued for (other nodes
    /// deliver to theirs).
    pub fn emit<T: Serialize + ?Sized>(self, event: &str, data: &T) -> Result<usize, SendError> {
        self.emit_payload(event, Payload::from_value(data)?)
    }

    /// Sends an already encoded event payload.
    pub fn emit_payload(self, event: &str, data: Payload) -> Result<usize, SendError> {
        let (event, data) = self.hub.event_parts(event, data)?;
        Ok(self
            .hub
            .inner
            .emit_rooms(&self.rooms, &self.except, &event, &data)?)
    }
}

/// A small xorshift generator for spreading shutdown batches and hints (not for secrets).
struct Spread(u64);

impl Spread {
    fn new() -> Spread {
        let seed =
            (u64::from(crate::node::random_u32()) << 32) | u64::from(crate::node::random_u32());
        Spread(seed | 1)
    }

    /// A number in `0..n` (`n` > 0).
    fn below(&mut self, n: u64) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x % n.max(1)
    }
}
