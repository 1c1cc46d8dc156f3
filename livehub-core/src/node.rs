//! The node: this process's sessions, its local subscriber index and rooms, its counters, and
//! its side of the Broker seam ([`crate::broker::Node`]).
//!
//! Lock order (see also `session.rs`): a session's `membership`, then a topic's or room's
//! state, then any session's queue. An engine's own locks (the in-process engine's stream
//! lock) come before all of them: it delivers while holding it, so that a topic's messages
//! reach every local subscriber in offset order. Nothing here takes a lock across an `.await`.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use dashmap::DashMap;
use serde::{Deserialize, Serialize};

use crate::acks::Acks;
use crate::broker::{Broker, BrokerInfo, EngineEvent, Node, NodeId, Publication, Route};
use crate::codec::{Codec, Payload};
use crate::config::Config;
use crate::error::{AckError, DisconnectReason, ErrorCode, Rejection};
use crate::frame::{Frame, Shared};
use crate::presence::{Member, PresenceStore, PresenceWorker};
use crate::queue::{Congestion, Pushed};
use crate::rooms::Room;
use crate::session::{lock, SessionId, SessionState};
use crate::stats::Stats;
use crate::streams::{Channels, LocalTopic};

pub(crate) struct Inner {
    pub(crate) config: Config,
    /// This node's id: the high bits of its session ids.
    pub(crate) node: NodeId,
    pub(crate) broker: Arc<dyn Broker>,
    pub(crate) broker_info: BrokerInfo,
    /// Presence shared with other nodes; `None` on a single node, where the local tables are
    /// the truth.
    pub(crate) presence_store: Option<Arc<dyn PresenceStore>>,
    /// The task that keeps the presence store in step (started with the first session).
    pub(crate) presence_worker: PresenceWorker,
    pub(crate) sessions: DashMap<SessionId, Arc<SessionState>>,
    /// The local subscriber index: the topics local sessions follow.
    pub(crate) topics: DashMap<Arc<str>, Arc<LocalTopic>>,
    pub(crate) rooms: DashMap<Arc<str>, Arc<Room>>,
    /// This node's subscriptions to the engine's channels.
    pub(crate) channels: Channels,
    /// The patterns local sessions hold.
    pub(crate) patterns: crate::patterns::PatternIndex,
    pub(crate) stats: Stats,
    /// Session queues past their high-water mark: publishers pace themselves by it.
    pub(crate) congestion: Arc<Congestion>,
    pub(crate) start: tokio::time::Instant,
    pub(crate) sweeper: AtomicBool,
    pub(crate) shutting_down: AtomicBool,
    /// Sessions open now (counted for `max_connections`).
    open: AtomicUsize,
    /// Sessions open now per client address (for `max_connections_per_ip`).
    per_ip: DashMap<IpAddr, usize>,
    /// Sessions whose transport handle (`Session`) is alive, open or already closed: shutdown
    /// waits for them to finish and aborts those left at the deadline.
    pub(crate) attached: DashMap<SessionId, Arc<SessionState>>,
    pub(crate) detached: tokio::sync::Notify,
    /// Events waiting for their client's answer.
    pub(crate) acks: Acks,
    /// This node, as the engine sees it.
    pub(crate) me: Weak<Inner>,
}

impl Inner {
    pub(crate) fn new(
        config: Config,
        broker: Arc<dyn Broker>,
        presence_store: Option<Arc<dyn PresenceStore>>,
        me: Weak<Inner>,
    ) -> Inner {
        let broker_info = broker.info();
        Inner {
            node: NodeId(random_u32()),
            broker_info,
            presence_worker: PresenceWorker::new(presence_store.is_some()),
            presence_store,
            broker,
            config,
            sessions: DashMap::new(),
            topics: DashMap::new(),
            rooms: DashMap::new(),
            channels: Channels::default(),
            patterns: Default::default(),
            stats: Stats::default(),
            congestion: Arc::default(),
            start: tokio::time::Instant::now(),
            sweeper: AtomicBool::new(false),
            shutting_down: AtomicBool::new(false),
            open: AtomicUsize::new(0),
            per_ip: DashMap::new(),
            attached: DashMap::new(),
            detached: tokio::sync::Notify::new(),
            acks: Acks::default(),
            me,
        }
    }

    /// Whether session queues are congested so that publishers should wait: more than one in
    /// sixteen open sessions past half their bound (and at least two), or any that fell behind
    /// just now and is nearly full (it holds publishers for a second at most: a session still
    /// behind after that is stalled, and the slow-consumer policy deals with it).
    fn congested(&self) -> bool {
        let n = self.congestion.queues.load(Ordering::Acquire);
        (n >= 2 && n * 16 > self.open.load(Ordering::Acquire))
            || self.congestion.critical.load(Ordering::Acquire) > 0
    }

    /// Pushes back on a publisher while fan-out is congested: waits until enough queues have
    /// drained, or [`Config::pace_max`] at most. A burst then slows its publisher (the host's
    /// publish waits; a publishing client's socket is read more slowly) instead of overflowing
    /// the queues of subscribers that keep up with the others.
    pub(crate) async fn pace(&self) {
        if self.config.pace_max.is_zero() {
            return;
        }
        if !self.congested() {
            if self.congestion.queues.load(Ordering::Acquire) > 0 {
                // A few queues are behind: let the tasks that share this worker (their writers
                // may be among them) run before the next publish, without waiting for them. A
                // publisher whose engine answers at once would otherwise never yield.
                tokio::task::yield_now().await;
            }
            return;
        }
        Stats::add(&self.stats.paced, 1);
        let deadline = tokio::time::Instant::now() + self.config.pace_max;
        loop {
            let drained = self.congestion.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            if !self.congested() {
                return;
            }
            if tokio::time::timeout_at(deadline, drained).await.is_err() {
                Stats::add(&self.stats.pace_timeouts, 1);
                return;
            }
        }
    }

    /// Whether subscriptions to `topic` conflate unless they say otherwise.
    pub(crate) fn conflates(&self, topic: &str) -> bool {
        self.config.conflate.as_ref().is_some_and(|f| f(topic))
    }

    /// Whether other nodes share this hub (control messages and a presence store are used).
    pub(crate) fn clustered(&self) -> bool {
        !self.broker_info.local
    }

    pub(crate) fn now_ms(&self) -> u64 {
        let elapsed = tokio::time::Instant::now().saturating_duration_since(self.start);
        u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
    }

    pub(crate) fn push_one(&self, s: &Arc<SessionState>, frame: Frame) {
        let shared = Shared::new(frame);
        let mut overflow = Vec::new();
        self.fan_out(std::iter::once(s), &shared, &mut overflow);
        self.close_all(overflow, DisconnectReason::SlowConsumer);
    }

    pub(crate) fn send_error(
        &self,
        s: &Arc<SessionState>,
        id: Option<u64>,
        code: ErrorCode,
        message: String,
    ) {
        Stats::add(&self.stats.errors_sent, 1);
        tracing::debug!(session = %s.id, code = code.as_str(), %message, "error sent");
        self.push_one(
            s,
            Frame::Error {
                id,
                code: code.into(),
                message,
            },
        );
    }

    /// Pushes `frame` to every target without waiting; sessions that overflow under the
    /// `Disconnect` policy are collected for the caller to close once its locks are released.
    pub(crate) fn fan_out<'a>(
        &self,
        targets: impl Iterator<Item = &'a Arc<SessionState>>,
        frame: &Arc<Shared>,
        overflow: &mut Vec<Arc<SessionState>>,
    ) -> usize {
        let mut tally = Tally::default();
        for s in targets {
            tally.push(s, frame, overflow);
        }
        tally.count(&self.stats)
    }

    pub(crate) fn close_all(&self, sessions: Vec<Arc<SessionState>>, reason: DisconnectReason) {
        for s in sessions {
            self.close_session(&s, reason);
        }
    }

    /// Ends a session: exactly once, whatever calls it first. Removes it from every topic and
    /// room (each membership emits its `leave` once), then tells the host.
    pub(crate) fn close_session(&self, s: &Arc<SessionState>, reason: DisconnectReason) {
        let mut work = vec![(s.clone(), reason)];
        while let Some((s, reason)) = work.pop() {
            let (topics, rooms) = {
                let mut m = lock(&s.membership);
                if m.closed {
                    continue;
                }
                m.closed = true;
                m.via_pattern.clear();
                for p in std::mem::take(&mut m.patterns) {
                    if self.patterns.remove(&p.text, s.id) {
                        self.engine_release(crate::streams::ChannelKey::Pattern(p.text.clone()));
                    }
                }
                (std::mem::take(&mut m.topics), std::mem::take(&mut m.rooms))
            };
            let dropped = s.close_queue(reason);
            if dropped > 0 {
                Stats::add(&self.stats.dropped, dropped as u64);
            }
            let mut overflow = Vec::new();
            for topic in topics {
                self.remove_from_topic(&s, &topic, &mut overflow);
            }
            for room in rooms {
                self.remove_from_room(&s, &room, &mut overflow);
            }
            self.sessions.remove(&s.id);
            self.session_ended_acks(s.id);
            self.release(s.peer);
            self.stats.count_disconnect(reason);
            tracing::debug!(session = %s.id, transport = s.transport.name, %reason, "session closed");
            self.config.hooks.on_disconnect(&s.info(), reason);
            work.extend(
                overflow
                    .into_iter()
                    .map(|o| (o, DisconnectReason::SlowConsumer)),
            );
        }
    }

    /// Counts a new session against the connection limits.
    pub(crate) fn admit(&self, peer: Option<std::net::SocketAddr>) -> Result<(), Rejection> {
        let max = self.config.max_connections;
        if self.open.fetch_add(1, Ordering::AcqRel) >= max {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return Err(Rejection::too_many_connections(format!(
                "the hub holds at most {max} sessions"
            )));
        }
        if let (Some(_), None) = (self.config.max_connections_per_ip, peer) {
            // A limit that cannot be enforced is not silently off: the connection is refused,
            // and the operator told once (every refusal is also logged at debug).
            self.open.fetch_sub(1, Ordering::AcqRel);
            static TOLD: AtomicBool = AtomicBool::new(false);
            if !TOLD.swap(true, Ordering::Relaxed) {
                tracing::error!(
                    "max_connections_per_ip is set but a transport could not tell a client's \
                     address: refusing such connections with 503 peer_unknown (serve axum with \
                     into_make_service_with_connect_info::<SocketAddr>(), give bare hyper \
                     services with_peer, or put a SocketAddr in the request's extensions)"
                );
            }
            return Err(Rejection::peer_unknown());
        }
        if let (Some(limit), Some(peer)) = (self.config.max_connections_per_ip, peer) {
            let mut count = self.per_ip.entry(peer.ip()).or_insert(0);
            if *count >= limit {
                drop(count);
                self.open.fetch_sub(1, Ordering::AcqRel);
                return Err(Rejection::too_many_connections(format!(
                    "at most {limit} sessions per client address"
                )));
            }
            *count += 1;
        }
        Ok(())
    }

    /// Gives back what [`Inner::admit`] counted.
    pub(crate) fn release(&self, peer: Option<std::net::SocketAddr>) {
        self.open.fetch_sub(1, Ordering::AcqRel);
        if let (Some(_), Some(peer)) = (self.config.max_connections_per_ip, peer) {
            if let Some(mut count) = self.per_ip.get_mut(&peer.ip()) {
                *count = count.saturating_sub(1);
            }
            self.per_ip.remove_if(&peer.ip(), |_, c| *c == 0);
        }
    }

    /// A transport handle ended.
    pub(crate) fn detach(&self, id: SessionId) {
        self.attached.remove(&id);
        if self.attached.is_empty() {
            self.detached.notify_waiters();
        }
    }

    /// Completes when no transport handle is alive.
    pub(crate) async fn all_detached(&self) {
        loop {
            let notified = self.detached.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.attached.is_empty() {
                return;
            }
            notified.await;
        }
    }

    /// A new session id of this node, not in use.
    pub(crate) fn new_session_id(&self) -> SessionId {
        loop {
            let id = SessionId::from_parts(self.node.0, random_u32());
            if !self.sessions.contains_key(&id) {
                return id;
            }
        }
    }

    /// The local session `id`, if it is open on this node.
    pub(crate) fn local_session(&self, id: SessionId) -> Option<Arc<SessionState>> {
        self.sessions.get(&id).map(|s| s.clone())
    }

    /// Sends a control message to other nodes (nothing on a single node).
    pub(crate) fn send_control(
        &self,
        route: Route<'_>,
        msg: Control,
    ) -> Result<(), crate::broker::BrokerError> {
        if !self.clustered() {
            return Ok(());
        }
        let bytes = Envelope {
            v: 1,
            origin: self.node.0,
            msg,
        }
        .encode();
        Stats::add(&self.stats.control_out, 1);
        self.broker.send(route, bytes)
    }

    /// A control message from another node.
    fn on_control(self: &Arc<Self>, bytes: &[u8]) {
        let env = match Envelope::decode(bytes) {
            Ok(env) => env,
            Err(e) => {
                Stats::add(&self.stats.engine_undecodable, 1);
                tracing::warn!(error = %e, "a control message from the engine could not be decoded");
                return;
            }
        };
        if env.origin == self.node.0 {
            return;
        }
        Stats::add(&self.stats.control_in, 1);
        match env.msg {
            Control::Rooms {
                rooms,
                except,
                event,
                codec,
                data,
            } => {
                let Some(data) = payload(codec, data) else {
                    Stats::add(&self.stats.engine_undecodable, 1);
                    return;
                };
                let except: Vec<SessionId> = except.into_iter().map(SessionId::from_u64).collect();
                let frame = Shared::new(Frame::Event {
                    event: Arc::from(event.as_str()),
                    data,
                    ack: None,
                });
                self.emit_rooms_local(&rooms, &except, &frame);
            }
            Control::Direct {
                session,
                event,
                codec,
                data,
            } => {
                let (Some(s), Some(data)) = (
                    self.local_session(SessionId::from_u64(session)),
                    payload(codec, data),
                ) else {
                    return;
                };
                self.push_one(
                    &s,
                    Frame::Event {
                        event: Arc::from(event.as_str()),
                        data,
                        ack: None,
                    },
                );
            }
            Control::All { event, codec, data } => {
                let Some(data) = payload(codec, data) else {
                    Stats::add(&self.stats.engine_undecodable, 1);
                    return;
                };
                let frame = Shared::new(Frame::Event {
                    event: Arc::from(event.as_str()),
                    data,
                    ack: None,
                });
                self.emit_all_local(&frame);
            }
            Control::Disconnect { session } => {
                if let Some(s) = self.local_session(SessionId::from_u64(session)) {
                    self.close_session(&s, DisconnectReason::Kicked);
                }
            }
            Control::Join { session, room } => {
                if let Some(s) = self.local_session(SessionId::from_u64(session)) {
                    let inner = self.clone();
                    tokio::spawn(async move {
                        if let Err(e) = inner.join_room(&s, &room).await {
                            tracing::debug!(session = %s.id, %room, error = %e, "a join from another node failed");
                        }
                    });
                }
            }
            Control::Leave { session, room } => {
                if let Some(s) = self.local_session(SessionId::from_u64(session)) {
                    self.leave_room(&s, &room);
                }
            }
            Control::Ask {
                session,
                ask,
                event,
                codec,
                data,
                timeout_ms,
            } => {
                self.on_ask(
                    NodeId(env.origin),
                    SessionId::from_u64(session),
                    ask,
                    event,
                    payload(codec, data),
                    std::time::Duration::from_millis(timeout_ms),
                );
            }
            Control::Answer {
                ask,
                codec,
                data,
                error,
            } => {
                let answer = match (data, error) {
                    (Some(d), None) => payload(codec, d.into_vec()).ok_or(AckError::Disconnected),
                    (_, Some(e)) => Err(AckError::from_code_str(&e)),
                    (None, None) => Err(AckError::Disconnected),
                };
                self.on_answer(ask, answer);
            }
            Control::Presence {
                join,
                room,
                scope,
                member,
                user,
            } => {
                // Each node tells its own watchers of its own sessions' comings and goings.
                if NodeId::of(member.session) != self.node {
                    let to = crate::presence::Watchers::sessions_and(user);
                    self.presence_event_local(join, room, &scope, member, to);
                }
            }
        }
    }
}

/// Counts pushes of one frame to many sessions, then adds the counts to the stats at once.
#[derive(Default)]
pub(crate) struct Tally {
    queued: u64,
    dropped: u64,
}

impl Tally {
    pub(crate) fn push(
        &mut self,
        s: &Arc<SessionState>,
        frame: &Arc<Shared>,
        overflow: &mut Vec<Arc<SessionState>>,
    ) {
        match s.queue.push(frame) {
            Pushed::Queued => self.queued += 1,
            Pushed::Dropped => self.dropped += 1,
            Pushed::Overflow => overflow.push(s.clone()),
        }
    }

    /// A message for a conflated subscription (see [`crate::queue::Queue::push_conflating`]).
    pub(crate) fn push_conflating(
        &mut self,
        s: &Arc<SessionState>,
        frame: &Arc<Shared>,
        overflow: &mut Vec<Arc<SessionState>>,
    ) {
        match s.queue.push_conflating(frame) {
            Pushed::Queued => self.queued += 1,
            Pushed::Dropped => self.dropped += 1,
            Pushed::Overflow => overflow.push(s.clone()),
        }
    }

    pub(crate) fn count(self, stats: &Stats) -> usize {
        Stats::add(&stats.deliveries, self.queued);
        if self.dropped > 0 {
            Stats::add(&stats.dropped, self.dropped);
        }
        usize::try_from(self.queued).unwrap_or(usize::MAX)
    }
}

/// The engine's handle on this node: forwards to the hub while it lives.
pub(crate) struct NodeLink {
    pub(crate) id: NodeId,
    pub(crate) inner: Weak<Inner>,
}

impl Node for NodeLink {
    fn id(&self) -> NodeId {
        self.id
    }

    fn deliver(&self, publication: Publication) {
        if let Some(inner) = self.inner.upgrade() {
            inner.deliver(publication);
        }
    }

    fn control(&self, message: &[u8]) {
        if let Some(inner) = self.inner.upgrade() {
            inner.on_control(message);
        }
    }

    fn engine_event(&self, event: EngineEvent) {
        if let Some(inner) = self.inner.upgrade() {
            inner.on_engine_event(event);
        }
    }

    fn undecodable(&self, topic: Option<&str>, error: &str) {
        if let Some(inner) = self.inner.upgrade() {
            Stats::add(&inner.stats.engine_undecodable, 1);
            tracing::warn!(topic = ?topic, %error, "a message from the engine could not be decoded");
            if let Some(topic) = topic {
                inner.check_topic(topic);
            }
        }
    }
}

/// A message between nodes, with the node that sent it.
#[derive(Serialize, Deserialize)]
struct Envelope {
    /// Layout version (1).
    v: u8,
    origin: u32,
    msg: Control,
}

impl Envelope {
    fn encode(&self) -> bytes::Bytes {
        // Only integers, strings and byte strings: encoding cannot fail.
        bytes::Bytes::from(rmp_serde::to_vec_named(self).unwrap_or_default())
    }

    fn decode(bytes: &[u8]) -> Result<Envelope, rmp_serde::decode::Error> {
        rmp_serde::from_slice(bytes)
    }
}

/// What nodes tell each other (see [`crate::broker::Route`] for where each goes).
#[derive(Serialize, Deserialize)]
pub(crate) enum Control {
    /// An event for the members of some rooms (each once), except some sessions.
    Rooms {
        rooms: Vec<String>,
        except: Vec<u64>,
        event: String,
        codec: u8,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// An event for one session.
    Direct {
        session: u64,
        event: String,
        codec: u8,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// An event for every session.
    All {
        event: String,
        codec: u8,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// Disconnect a session (reason `kicked`).
    Disconnect { session: u64 },
    /// Add a session to a room.
    Join { session: u64, room: String },
    /// Remove a session from a room.
    Leave { session: u64, room: String },
    /// Ask a session for an answer (`emit_with_ack`); its node answers with `Answer`.
    Ask {
        session: u64,
        ask: u64,
        event: String,
        codec: u8,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
        timeout_ms: u64,
    },
    /// The answer to an `Ask` (data), or why there is none (error).
    Answer {
        ask: u64,
        codec: u8,
        data: Option<serde_bytes::ByteBuf>,
        error: Option<String>,
    },
    /// A member joined or left a topic or room; `user`: it was its user's first or last
    /// session there (on every node), so the user came or went too.
    Presence {
        join: bool,
        room: bool,
        scope: String,
        member: Member,
        #[serde(default)]
        user: bool,
    },
}

impl Control {
    pub(crate) fn codec_tag(p: &Payload) -> u8 {
        match p.codec() {
            Codec::Json => 0,
            Codec::MsgPack => 1,
        }
    }
}

/// A payload carried in a control message, checked.
fn payload(codec: u8, data: Vec<u8>) -> Option<Payload> {
    let codec = match codec {
        0 => Codec::Json,
        1 => Codec::MsgPack,
        _ => return None,
    };
    Payload::from_encoded(codec, bytes::Bytes::from(data)).ok()
}

pub(crate) fn random_u32() -> u32 {
    let mut buf = [0u8; 4];
    if getrandom::fill(&mut buf).is_err() {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
        return NEXT.fetch_add(1, Ordering::Relaxed);
    }
    u32::from_le_bytes(buf)
}

pub(crate) fn random_hex() -> String {
    let mut buf = [0u8; 8];
    if getrandom::fill(&mut buf).is_err() {
        // No OS randomness: fall back to the clock (epochs need only differ, not be secret).
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        buf = (nanos as u64).to_le_bytes();
    }
    format!("{:016x}", u64::from_le_bytes(buf))
}
