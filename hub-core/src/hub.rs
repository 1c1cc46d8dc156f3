//! The hub: sessions, topics, rooms, presence, and the operations on them.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use dashmap::DashMap;
use serde::Serialize;
use serde_json::json;

use crate::broker::Position;
use crate::codec::Payload;
use crate::presence::Member;
use crate::config::{Config, RateLimit, SlowConsumerPolicy};
use crate::error::{DisconnectReason, ErrorCode, Rejection, RoomError, SendError};
use crate::frame::{decode_client, ClientFrame, Frame, Scope, Shared, Since};
use crate::hooks::{Action, ConnectRequest, EventContext, EventHandler, Hooks, Identity};
use crate::session::{lock, Connection, Outbox, Pushed, Rate, Session, SessionId, SessionState};
use crate::stats::{Stats, StatsSnapshot};

/// A handle on the hub. Cheap to clone; every clone is the same hub.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use hub_core::Hub;
/// let hub = Hub::builder().history_len(50).build();
/// let pos = hub.publish("scores/all", &serde_json::json!({"home": 1, "away": 0})).unwrap();
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

/// Builds a [`Hub`]. Every setting has a default suited to a public-facing service.
#[derive(Default)]
#[must_use]
pub struct HubBuilder {
    config: Config,
    handlers: HashMap<String, Arc<dyn EventHandler>>,
}

impl HubBuilder {
    /// Heartbeat interval (pings sent) and timeout (a silent session is closed). Defaults 25 s
    /// and 60 s. A silent session is closed between `timeout` and `timeout + interval` after it
    /// was last heard from.
    pub fn heartbeat(mut self, interval: Duration, timeout: Duration) -> Self {
        self.config.heartbeat_interval = interval.max(Duration::from_millis(1));
        self.config.heartbeat_timeout = timeout;
        self
    }

    /// Frames a session may have queued before the slow-consumer policy applies. Default 1024.
    pub fn queue_capacity(mut self, frames: usize) -> Self {
        self.config.queue_capacity = frames.max(1);
        self
    }

    /// Largest frame (and message) a client may send, in bytes. Default 64 KiB.
    pub fn max_frame_size(mut self, bytes: usize) -> Self {
        self.config.max_frame_size = bytes;
        self
    }

    /// Messages kept per topic for resuming clients. Default 100; 0 keeps none.
    pub fn history_len(mut self, messages: usize) -> Self {
        self.config.history_len = messages;
        self
    }

    /// Payload bytes kept per topic for resuming clients (the oldest messages go first when
    /// either this or [`HubBuilder::history_len`] is exceeded). Default 1 MiB.
    pub fn history_bytes(mut self, bytes: usize) -> Self {
        self.config.history_bytes = bytes;
        self
    }

    /// What to do with a session whose queue is full. Default [`SlowConsumerPolicy::Disconnect`].
    pub fn slow_consumer(mut self, policy: SlowConsumerPolicy) -> Self {
        self.config.slow_consumer = policy;
        self
    }

    /// Longest topic, room or event name in bytes. Default 128.
    pub fn max_name_len(mut self, bytes: usize) -> Self {
        self.config.max_name_len = bytes;
        self
    }

    /// Topics one session may follow at once. Default 256.
    pub fn max_subscriptions(mut self, n: usize) -> Self {
        self.config.max_subscriptions = n;
        self
    }

    /// Rooms one session may be in at once. Default 256.
    pub fn max_rooms_per_session(mut self, n: usize) -> Self {
        self.config.max_rooms_per_session = n;
        self
    }

    /// Topics the hub holds at once (a publish or subscribe that would create one more is
    /// refused with `too_many_topics`). A topic lives while it has subscribers, and for
    /// [`HubBuilder::topic_ttl`] after its last message once it has none. Default 100,000.
    pub fn max_topics(mut self, n: usize) -> Self {
        self.config.max_topics = n;
        self
    }

    /// How long a topic that has no subscribers is kept, with its position and history, after
    /// its last message (or after its last subscriber left, whichever is later). Default 5
    /// minutes; `Duration::MAX` keeps every topic for the hub's life.
    ///
    /// A forgotten topic frees its history. If it is used again, its stream starts over in a
    /// new epoch (offsets from 1 again), so a client that resumes from a position of the old
    /// stream gets a `gap` with reason `epoch` (nothing recovered), never another stream's
    /// messages. Within the TTL a returning client recovers exactly what it missed (as far as
    /// the history holds). Checked at every heartbeat interval, so a topic may outlive its TTL
    /// by up to one interval.
    pub fn topic_ttl(mut self, ttl: Duration) -> Self {
        self.config.topic_ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        self
    }

    /// Send `join`/`leave` events to a room's members when members come and go. Default off.
    pub fn room_presence_events(mut self, on: bool) -> Self {
        self.config.room_presence_events = on;
        self
    }

    /// Browser origins allowed to connect (e.g. `https://example.com`). A request with an
    /// `Origin` header outside the list is refused with 403 `origin_not_allowed`; requests
    /// without `Origin` (non-browser clients) are not affected. Default: any origin.
    pub fn allowed_origins<I, S>(mut self, origins: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.config.allowed_origins = Some(origins.into_iter().map(Into::into).collect());
        self
    }

    /// Sessions the hub holds at once; more are refused with 503 `too_many_connections`.
    /// Default 100,000.
    pub fn max_connections(mut self, n: usize) -> Self {
        self.config.max_connections = n;
        self
    }

    /// Sessions one client address may hold at once; more are refused with 503
    /// `too_many_connections`. Default: no per-address limit (clients behind one NAT share an
    /// address).
    pub fn max_connections_per_ip(mut self, n: usize) -> Self {
        self.config.max_connections_per_ip = Some(n);
        self
    }

    /// A token bucket on the frames each session sends: `per_second` refill, `burst` capacity.
    /// A frame over the limit is answered with `rate_limited` and not run; a client that sends
    /// another whole burst while limited is disconnected (reason `rate_limited`, close 1008).
    /// Default: no limit.
    pub fn rate_limit(mut self, per_second: f64, burst: u32) -> Self {
        self.config.rate_limit = Some(RateLimit {
            per_second: per_second.max(0.0),
            burst: f64::from(burst.max(1)),
        });
        self
    }

    /// The host's hooks (authentication, authorization, connect/disconnect).
    pub fn hooks(mut self, hooks: impl Hooks) -> Self {
        self.config.hooks = Arc::new(hooks);
        self
    }

    /// Routes the custom client event `name` to `handler`; what it returns is the `reply`.
    ///
    /// ```
    /// use hub_core::{Hub, Payload};
    /// let hub = Hub::builder()
    ///     .on_event("chat-message", |ctx: hub_core::EventContext, data: Payload| async move {
    ///         let msg: serde_json::Value = data.decode()?;
    ///         let room = msg["room"].as_str().unwrap_or("lobby").to_owned();
    ///         ctx.hub().to(room).except(ctx.session_id()).emit("new-message", &msg)?;
    ///         Ok(Some(Payload::from_value(&"delivered")?))
    ///     })
    ///     .build();
    /// # drop(hub);
    /// ```
    pub fn on_event(mut self, name: impl Into<String>, handler: impl EventHandler) -> Self {
        self.handlers.insert(name.into(), Arc::new(handler));
        self
    }

    /// Builds the hub. Needs no runtime; background work (heartbeats, topic TTLs) starts with
    /// the first session, or the first publish made inside a tokio runtime.
    pub fn build(mut self) -> Hub {
        self.config.handlers = Arc::new(self.handlers);
        Hub {
            inner: Arc::new(Inner {
                config: self.config,
                sessions: DashMap::new(),
                topics: DashMap::new(),
                rooms: DashMap::new(),
                stats: Stats::default(),
                epoch: Arc::from(random_hex().as_str()),
                forgotten: AtomicU64::new(0),
                start: tokio::time::Instant::now(),
                sweeper: AtomicBool::new(false),
                shutting_down: AtomicBool::new(false),
                open: AtomicUsize::new(0),
                per_ip: DashMap::new(),
                attached: DashMap::new(),
                detached: tokio::sync::Notify::new(),
            }),
        }
    }
}

/// One topic: its stream position, bounded history and subscribers.
pub(crate) struct Topic {
    name: Arc<str>,
    epoch: Arc<str>,
    state: Mutex<TopicState>,
}

struct TopicState {
    last_offset: u64,
    history: VecDeque<Arc<Shared>>,
    /// Payload bytes held in `history`.
    history_bytes: usize,
    subs: HashMap<SessionId, Sub>,
    /// Removed from the hub's table: whoever finds it dead looks the topic up again.
    dead: bool,
    /// When the topic last had a message or lost its last subscriber ([`Inner::now_ms`]): with
    /// no subscribers, it is forgotten [`Config::topic_ttl_ms`] after this.
    idle_since: u64,
}

struct Sub {
    session: Arc<SessionState>,
    presence: bool,
}

/// One room: its members. A room exists while it has members.
pub(crate) struct Room {
    state: Mutex<RoomState>,
}

struct RoomState {
    members: HashMap<SessionId, Arc<SessionState>>,
    dead: bool,
}

pub(crate) struct Inner {
    pub(crate) config: Config,
    pub(crate) sessions: DashMap<SessionId, Arc<SessionState>>,
    topics: DashMap<Arc<str>, Arc<Topic>>,
    rooms: DashMap<Arc<str>, Arc<Room>>,
    pub(crate) stats: Stats,
    /// The epoch of this hub's topic streams: random per hub, so positions from another run
    /// of the service are recognised as foreign and answered with a `gap`. A topic created
    /// after `forgotten` topics (ones that had messages) were dropped for their TTL gets
    /// `<epoch>.<forgotten>`: a topic name used again never restarts its offsets in an epoch
    /// a client may have seen.
    epoch: Arc<str>,
    /// Topics with messages forgotten so far (see `epoch`). Incremented under the table's
    /// shard lock before the topic leaves the table, so a topic created afterwards sees it.
    forgotten: AtomicU64,
    start: tokio::time::Instant,
    sweeper: AtomicBool,
    shutting_down: AtomicBool,
    /// Sessions open now (counted for `max_connections`).
    open: AtomicUsize,
    /// Sessions open now per client address (for `max_connections_per_ip`).
    per_ip: DashMap<IpAddr, usize>,
    /// Sessions whose transport handle (`Session`) is alive, open or already closed: shutdown
    /// waits for them to finish and aborts those left at the deadline.
    attached: DashMap<SessionId, Arc<SessionState>>,
    detached: tokio::sync::Notify,
}

/// A failed client operation: the code and message of its `error` frame.
type OpError = (ErrorCode, String);

fn missing(field: &str) -> OpError {
    (ErrorCode::BadField, format!("missing field `{field}`"))
}

fn need<'a>(v: &'a Option<String>, field: &str) -> Result<&'a str, OpError> {
    v.as_deref().ok_or_else(|| missing(field))
}

/// Topic and room names: 1..=max bytes of `A-Z a-z 0-9 - _ . : / @ =`.
fn valid_name(name: &str, max: usize) -> bool {
    !name.is_empty()
        && name.len() <= max
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:/@=".contains(&b))
}

fn check_name(name: &str, max: usize, code: ErrorCode) -> Result<(), OpError> {
    if valid_name(name, max) {
        Ok(())
    } else {
        let what = if code == ErrorCode::BadRoom {
            "room"
        } else {
            "topic"
        };
        Err((
            code,
            format!("{what} name must be 1 to {max} bytes of A-Z a-z 0-9 - _ . : / @ ="),
        ))
    }
}

fn valid_event(name: &str, max: usize) -> bool {
    !name.is_empty() && name.len() <= max && !name.chars().any(char::is_control)
}

fn internal(e: impl std::fmt::Display) -> OpError {
    (ErrorCode::Internal, e.to_string())
}

impl Inner {
    pub(crate) fn now_ms(&self) -> u64 {
        let elapsed = tokio::time::Instant::now().saturating_duration_since(self.start);
        u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
    }

    fn push_one(&self, s: &Arc<SessionState>, frame: Frame) {
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
        self.push_one(s, Frame::Error { id, code, message });
    }

    /// Pushes `frame` to every target without waiting; sessions that overflow under the
    /// `Disconnect` policy are collected for the caller to close once its locks are released.
    fn fan_out<'a>(
        &self,
        targets: impl Iterator<Item = &'a Arc<SessionState>>,
        frame: &Arc<Shared>,
        overflow: &mut Vec<Arc<SessionState>>,
    ) -> usize {
        let (mut queued, mut dropped) = (0u64, 0u64);
        for s in targets {
            match s.queue.push(frame) {
                Pushed::Queued => queued += 1,
                Pushed::Dropped => dropped += 1,
                Pushed::Overflow => overflow.push(s.clone()),
            }
        }
        Stats::add(&self.stats.deliveries, queued);
        if dropped > 0 {
            Stats::add(&self.stats.dropped, dropped);
        }
        usize::try_from(queued).unwrap_or(usize::MAX)
    }

    fn close_all(&self, sessions: Vec<Arc<SessionState>>, reason: DisconnectReason) {
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
    fn admit(&self, peer: Option<std::net::SocketAddr>) -> Result<(), Rejection> {
        let max = self.config.max_connections;
        if self.open.fetch_add(1, Ordering::AcqRel) >= max {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return Err(Rejection::too_many_connections(format!(
                "the hub holds at most {max} sessions"
            )));
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
    fn release(&self, peer: Option<std::net::SocketAddr>) {
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
    async fn all_detached(&self) {
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

    /// The topic named `name`, created if needed.
    fn topic(&self, name: &str) -> Result<Arc<Topic>, SendError> {
        if let Some(t) = self.topics.get(name) {
            return Ok(t.clone());
        }
        if self.topics.len() >= self.config.max_topics {
            return Err(SendError::TooManyTopics);
        }
        let t = self
            .topics
            .entry(Arc::from(name))
            .or_insert_with(|| {
                let epoch = match self.forgotten.load(Ordering::Acquire) {
                    0 => self.epoch.clone(),
                    n => Arc::from(format!("{}.{n}", self.epoch).as_str()),
                };
                Arc::new(Topic {
                    name: Arc::from(name),
                    epoch,
                    state: Mutex::new(TopicState {
                        last_offset: 0,
                        history: VecDeque::new(),
                        history_bytes: 0,
                        subs: HashMap::new(),
                        dead: false,
                        idle_since: self.now_ms(),
                    }),
                })
            })
            .clone();
        Ok(t)
    }

    /// Forgets the topics that have had no subscribers for the TTL since their last message
    /// (run by the sweeper).
    fn forget_idle_topics(&self) {
        let ttl = self.config.topic_ttl_ms;
        if ttl == u64::MAX {
            return;
        }
        let now = self.now_ms();
        let expired =
            |st: &TopicState| st.subs.is_empty() && now.saturating_sub(st.idle_since) > ttl;
        // Collect first: removing while iterating the table would deadlock on its shard.
        let idle: Vec<Arc<str>> = self
            .topics
            .iter()
            .filter(|e| expired(&lock(&e.value().state)))
            .map(|e| e.key().clone())
            .collect();
        for name in idle {
            self.topics.remove_if(&name, |_, t| {
                let mut st = lock(&t.state);
                // Checked again: a subscriber or a message may have come since.
                if !expired(&st) {
                    return false;
                }
                st.dead = true;
                if st.last_offset > 0 {
                    self.forgotten.fetch_add(1, Ordering::AcqRel);
                }
                true
            });
        }
    }

    /// Forgets a topic that never had a message and has no subscribers: it holds no position
    /// worth keeping (re-created, it starts again at offset 0 in the same epoch, which is
    /// exactly what its past subscribers saw). A topic that has had messages keeps its
    /// position for the hub's life, so offsets never restart within an epoch.
    fn maybe_remove_topic(&self, name: &str) {
        self.topics.remove_if(name, |_, t| {
            let mut st = lock(&t.state);
            let idle = st.subs.is_empty() && st.last_offset == 0;
            if idle {
                st.dead = true;
            }
            idle
        });
    }

    fn publish(&self, name: &str, data: Payload) -> Result<Position, SendError> {
        let mut data = Some(data);
        let mut overflow = Vec::new();
        let position = loop {
            let t = self.topic(name)?;
            let mut st = lock(&t.state);
            if st.dead {
                continue;
            }
            st.last_offset += 1;
            let offset = st.last_offset;
            if st.subs.is_empty() {
                // Only a topic without subscribers can be forgotten: its clock starts now.
                st.idle_since = self.now_ms();
            }
            let frame = Shared::new(Frame::Message {
                topic: t.name.clone(),
                epoch: t.epoch.clone(),
                offset,
                data: data.take().unwrap_or_default(),
            });
            if self.config.history_len > 0 {
                st.history_bytes += message_size(&frame);
                st.history.push_back(frame.clone());
                // Oldest first, until both bounds hold: the history stays a contiguous suffix
                // of the stream, which is what recovery relies on.
                while st.history.len() > self.config.history_len
                    || st.history_bytes > self.config.history_bytes
                {
                    match st.history.pop_front() {
                        Some(old) => st.history_bytes -= message_size(&old),
                        None => break,
                    }
                }
            }
            // Fan-out under the topic lock: every subscriber gets the topic's messages in
            // offset order, whoever publishes them. A push never waits.
            self.fan_out(st.subs.values().map(|s| &s.session), &frame, &mut overflow);
            break Position {
                epoch: t.epoch.clone(),
                offset,
            };
        };
        Stats::add(&self.stats.published, 1);
        self.close_all(overflow, DisconnectReason::SlowConsumer);
        Ok(position)
    }

    fn subscribe(
        &self,
        s: &Arc<SessionState>,
        name: &str,
        id: Option<u64>,
        since: Option<Since>,
        presence: bool,
    ) -> Result<(), OpError> {
        let mut overflow = Vec::new();
        {
            let mut m = lock(&s.membership);
            if m.closed {
                return Ok(());
            }
            if m.topics.contains(name) {
                return Err((
                    ErrorCode::AlreadySubscribed,
                    format!("already subscribed to {name}"),
                ));
            }
            if m.topics.len() >= self.config.max_subscriptions {
                return Err((
                    ErrorCode::TooManySubscriptions,
                    format!("at most {} subscriptions", self.config.max_subscriptions),
                ));
            }
            loop {
                let t = self.topic(name).map_err(|e| (e.code(), e.to_string()))?;
                let mut st = lock(&t.state);
                if st.dead {
                    continue;
                }
                if let Some(id) = id {
                    let data = Payload::from_value(&json!({
                        "topic": &*t.name, "epoch": &*t.epoch, "offset": st.last_offset,
                    }))
                    .map_err(internal)?;
                    let reply = Shared::new(Frame::Reply { id, data });
                    self.fan_out(std::iter::once(s), &reply, &mut overflow);
                }
                if let Some(since) = since {
                    self.recover(&t, &st, s, &since, &mut overflow);
                }
                let join = Shared::new(Frame::Presence {
                    join: true,
                    scope: Scope::Topic(t.name.clone()),
                    member: s.member(),
                });
                let watchers = st.subs.values().filter(|w| w.presence).map(|w| &w.session);
                self.fan_out(watchers, &join, &mut overflow);
                st.subs.insert(
                    s.id,
                    Sub {
                        session: s.clone(),
                        presence,
                    },
                );
                m.topics.insert(t.name.clone());
                break;
            }
        }
        self.close_all(overflow, DisconnectReason::SlowConsumer);
        Ok(())
    }

    /// Queues what a resuming subscriber missed since `since`, or a `gap` saying what is lost.
    /// Runs under the topic lock, so nothing live can slip in between.
    fn recover(
        &self,
        t: &Topic,
        st: &TopicState,
        s: &Arc<SessionState>,
        since: &Since,
        overflow: &mut Vec<Arc<SessionState>>,
    ) {
        let gap = |from, to, reason| {
            Shared::new(Frame::Gap {
                topic: t.name.clone(),
                epoch: t.epoch.clone(),
                from,
                to,
                reason,
            })
        };
        if since.epoch != *t.epoch || since.offset > st.last_offset {
            self.fan_out(std::iter::once(s), &gap(0, 0, "epoch"), overflow);
            return;
        }
        let held = st.history.len() as u64;
        let first_held = st.last_offset + 1 - held;
        if since.offset + 1 < first_held {
            let g = gap(since.offset + 1, first_held - 1, "history");
            self.fan_out(std::iter::once(s), &g, overflow);
        }
        let skip =
            usize::try_from((since.offset + 1).saturating_sub(first_held)).unwrap_or(usize::MAX);
        for frame in st.history.iter().skip(skip) {
            self.fan_out(std::iter::once(s), frame, overflow);
        }
    }

    fn unsubscribe(&self, s: &Arc<SessionState>, name: &str) -> Result<(), OpError> {
        let mut overflow = Vec::new();
        {
            let mut m = lock(&s.membership);
            if !m.topics.remove(name) {
                return Err((
                    ErrorCode::NotSubscribed,
                    format!("not subscribed to {name}"),
                ));
            }
            self.remove_from_topic(s, name, &mut overflow);
        }
        self.close_all(overflow, DisconnectReason::SlowConsumer);
        Ok(())
    }

    /// Removes `s` from a topic's subscribers; the watchers get its `leave` if it was there.
    fn remove_from_topic(
        &self,
        s: &Arc<SessionState>,
        name: &str,
        overflow: &mut Vec<Arc<SessionState>>,
    ) {
        let Some(t) = self.topics.get(name).map(|t| t.clone()) else {
            return;
        };
        {
            let mut st = lock(&t.state);
            if st.subs.remove(&s.id).is_some() {
                let leave = Shared::new(Frame::Presence {
                    join: false,
                    scope: Scope::Topic(t.name.clone()),
                    member: s.member(),
                });
                let watchers = st.subs.values().filter(|w| w.presence).map(|w| &w.session);
                self.fan_out(watchers, &leave, overflow);
                if st.subs.is_empty() {
                    st.idle_since = self.now_ms();
                }
            }
        }
        self.maybe_remove_topic(name);
    }

    fn join_room(&self, s: &Arc<SessionState>, name: &str) -> Result<(), RoomError> {
        if !valid_name(name, self.config.max_name_len) {
            return Err(RoomError::BadRoom);
        }
        let mut overflow = Vec::new();
        {
            let mut m = lock(&s.membership);
            if m.closed {
                return Err(RoomError::NoSession);
            }
            if m.rooms.contains(name) {
                return Ok(());
            }
            if m.rooms.len() >= self.config.max_rooms_per_session {
                return Err(RoomError::TooManyRooms);
            }
            let key: Arc<str> = Arc::from(name);
            loop {
                let room = self
                    .rooms
                    .entry(key.clone())
                    .or_insert_with(|| {
                        Arc::new(Room {
                            state: Mutex::new(RoomState {
                                members: HashMap::new(),
                                dead: false,
                            }),
                        })
                    })
                    .clone();
                let mut st = lock(&room.state);
                if st.dead {
                    continue;
                }
                if self.config.room_presence_events {
                    let join = Shared::new(Frame::Presence {
                        join: true,
                        scope: Scope::Room(key.clone()),
                        member: s.member(),
                    });
                    self.fan_out(st.members.values(), &join, &mut overflow);
                }
                st.members.insert(s.id, s.clone());
                break;
            }
            m.rooms.insert(key);
        }
        self.close_all(overflow, DisconnectReason::SlowConsumer);
        Ok(())
    }

    fn leave_room(&self, s: &Arc<SessionState>, name: &str) -> bool {
        let mut overflow = Vec::new();
        let was_member = {
            let mut m = lock(&s.membership);
            let was = m.rooms.remove(name);
            if was {
                self.remove_from_room(s, name, &mut overflow);
            }
            was
        };
        self.close_all(overflow, DisconnectReason::SlowConsumer);
        was_member
    }

    fn remove_from_room(
        &self,
        s: &Arc<SessionState>,
        name: &str,
        overflow: &mut Vec<Arc<SessionState>>,
    ) {
        let Some(room) = self.rooms.get(name).map(|r| r.clone()) else {
            return;
        };
        {
            let mut st = lock(&room.state);
            if st.members.remove(&s.id).is_some() && self.config.room_presence_events {
                let leave = Shared::new(Frame::Presence {
                    join: false,
                    scope: Scope::Room(Arc::from(name)),
                    member: s.member(),
                });
                self.fan_out(st.members.values(), &leave, overflow);
            }
        }
        self.rooms.remove_if(name, |_, r| {
            let mut st = lock(&r.state);
            let empty = st.members.is_empty();
            if empty {
                st.dead = true;
            }
            empty
        });
    }

    fn topic_members(&self, name: &str) -> Vec<Member> {
        let Some(t) = self.topics.get(name).map(|t| t.clone()) else {
            return Vec::new();
        };
        let st = lock(&t.state);
        st.subs.values().map(|s| member_of(&s.session)).collect()
    }

    fn room_members(&self, name: &str) -> Vec<Member> {
        let Some(r) = self.rooms.get(name).map(|r| r.clone()) else {
            return Vec::new();
        };
        let st = lock(&r.state);
        st.members.values().map(member_of).collect()
    }

    /// Delivers an event to the members of `rooms` (each session once), except `except`.
    fn emit_rooms(&self, rooms: &[String], except: &[SessionId], frame: &Arc<Shared>) -> usize {
        let mut overflow = Vec::new();
        let n = if let [room] = rooms {
            match self.rooms.get(room.as_str()).map(|r| r.clone()) {
                Some(r) => {
                    let st = lock(&r.state);
                    let targets = st.members.values().filter(|s| !except.contains(&s.id));
                    self.fan_out(targets, frame, &mut overflow)
                }
                None => 0,
            }
        } else {
            let mut targets: HashMap<SessionId, Arc<SessionState>> = HashMap::new();
            for room in rooms {
                if let Some(r) = self.rooms.get(room.as_str()).map(|r| r.clone()) {
                    let st = lock(&r.state);
                    for (id, s) in &st.members {
                        if !except.contains(id) {
                            targets.entry(*id).or_insert_with(|| s.clone());
                        }
                    }
                }
            }
            self.fan_out(targets.values(), frame, &mut overflow)
        };
        self.close_all(overflow, DisconnectReason::SlowConsumer);
        n
    }

    /// Starts the sweeper (heartbeats, topic TTLs) if it is not running and a runtime is
    /// there to run it.
    fn ensure_sweeper(self: &Arc<Self>) {
        if self.sweeper.load(Ordering::Acquire) {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            // Published to outside a runtime: the first session (or publish in one) starts it.
            return;
        };
        if self.sweeper.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak = Arc::downgrade(self);
        let interval = self.config.heartbeat_interval;
        rt.spawn(sweep(weak, interval));
    }
}

/// The payload size of a history entry (what the history byte bound counts).
fn message_size(frame: &Shared) -> usize {
    match &frame.frame {
        Frame::Message { data, .. } => data.as_bytes().len(),
        _ => 0,
    }
}

fn member_of(s: &Arc<SessionState>) -> Member {
    Member {
        session: s.id,
        user: s.identity.user_id().to_owned(),
        meta: s.identity.meta().clone(),
    }
}

/// The heartbeat policy, run by one task for all sessions: every interval, close the sessions
/// silent past the timeout and ask the others' transports for a ping.
async fn sweep(weak: Weak<Inner>, interval: Duration) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = weak.upgrade() else {
            return;
        };
        let now = inner.now_ms();
        let timeout = u64::try_from(inner.config.heartbeat_timeout.as_millis()).unwrap_or(u64::MAX);
        // Collect first: closing removes from `sessions`, which must not happen while iterating.
        let mut silent = Vec::new();
        for entry in inner.sessions.iter() {
            let s = entry.value();
            if s.transport.client_liveness && now.saturating_sub(s.last_seen()) > timeout {
                silent.push(s.clone());
            } else if s.transport.pings {
                s.request_ping();
            }
        }
        inner.close_all(silent, DisconnectReason::HeartbeatTimeout);
        inner.forget_idle_topics();
    }
}

fn random_hex() -> String {
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

fn random_id() -> u64 {
    let mut buf = [0u8; 8];
    if getrandom::fill(&mut buf).is_err() {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        return NEXT.fetch_add(1, Ordering::Relaxed);
    }
    u64::from_le_bytes(buf)
}

impl Hub {
    /// Starts building a hub.
    pub fn builder() -> HubBuilder {
        HubBuilder::default()
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

    /// Attaches a client: checks the origin, asks [`Hooks::authenticate`], then opens a session
    /// and queues its `welcome`. This is what every transport calls; see [`crate::session`].
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
        let state = loop {
            let id = SessionId(random_id());
            if inner.sessions.contains_key(&id) {
                continue;
            }
            let state = Arc::new(SessionState::new(
                id,
                identity.clone(),
                &req,
                &inner.config,
                inner.now_ms(),
            ));
            inner.sessions.insert(id, state.clone());
            break state;
        };
        Stats::add(&inner.stats.sessions_opened, 1);
        inner.push_one(
            &state,
            Frame::Welcome {
                session: state.id.to_string(),
                encoding: state.codec,
                heartbeat_ms: u64::try_from(inner.config.heartbeat_interval.as_millis())
                    .unwrap_or(u64::MAX),
                timeout_ms: u64::try_from(inner.config.heartbeat_timeout.as_millis())
                    .unwrap_or(u64::MAX),
            },
        );
        tracing::debug!(session = %state.id, transport = state.transport.name, "session opened");
        inner.config.hooks.on_connect(&state.info());
        inner.attached.insert(state.id, state.clone());
        Ok(Connection {
            outbox: Outbox::new(inner.clone(), state.clone()),
            session: Session {
                hub: self.clone(),
                state,
            },
        })
    }

    pub(crate) async fn handle_frame(&self, s: &Arc<SessionState>, bytes: Bytes) {
        let inner = &self.inner;
        let now = inner.now_ms();
        s.touch(now);
        Stats::add(&inner.stats.frames_in, 1);
        if let Some(limit) = &inner.config.rate_limit {
            match s.take_token(limit, now) {
                Rate::Ok => {}
                Rate::Limited => {
                    let msg = format!("at most {} frames per second", limit.per_second);
                    inner.send_error(s, None, ErrorCode::RateLimited, msg);
                    return;
                }
                Rate::Flood => {
                    inner.close_session(s, DisconnectReason::RateLimited);
                    return;
                }
            }
        }
        if bytes.len() > inner.config.max_frame_size {
            let msg = format!("frame over {} bytes", inner.config.max_frame_size);
            inner.send_error(s, None, ErrorCode::FrameTooLarge, msg);
            return;
        }
        let frame = match decode_client(s.codec, &bytes) {
            Ok(f) => f,
            Err((e, id)) => {
                inner.send_error(s, id, e.code(), e.message().to_owned());
                return;
            }
        };
        let id = frame.id;
        match self.run(s, frame).await {
            Ok(None) => {}
            Ok(Some(data)) => {
                if let Some(id) = id {
                    inner.push_one(s, Frame::Reply { id, data });
                }
            }
            Err((code, message)) => inner.send_error(s, id, code, message),
        }
    }

    pub(crate) async fn subscribe_session(
        &self,
        s: &Arc<SessionState>,
        topic: &str,
        since: Option<Since>,
    ) -> Result<(), crate::session::CommandError> {
        let to_err = |(code, message): OpError| crate::session::CommandError { code, message };
        check_name(topic, self.inner.config.max_name_len, ErrorCode::BadTopic).map_err(to_err)?;
        let hooks = &self.inner.config.hooks;
        if !hooks.authorize(&s.identity, Action::Subscribe(topic)).await {
            return Err(to_err((
                ErrorCode::Forbidden,
                format!("not allowed to subscribe to {topic}"),
            )));
        }
        self.inner
            .subscribe(s, topic, None, since, false)
            .map_err(to_err)
    }

    /// Runs one client operation. `Ok(None)`: nothing more to send (it answered itself).
    async fn run(&self, s: &Arc<SessionState>, f: ClientFrame) -> Result<Option<Payload>, OpError> {
        let inner = &self.inner;
        let hooks = &inner.config.hooks;
        let max = inner.config.max_name_len;
        match f.kind.as_str() {
            "subscribe" => {
                let topic = need(&f.topic, "topic")?;
                check_name(topic, max, ErrorCode::BadTopic)?;
                if !hooks.authorize(&s.identity, Action::Subscribe(topic)).await {
                    return Err((
                        ErrorCode::Forbidden,
                        format!("not allowed to subscribe to {topic}"),
                    ));
                }
                inner.subscribe(s, topic, f.id, f.since, f.presence)?;
                Ok(None)
            }
            "unsubscribe" => {
                let topic = need(&f.topic, "topic")?;
                check_name(topic, max, ErrorCode::BadTopic)?;
                inner.unsubscribe(s, topic)?;
                Ok(Some(Payload::null()))
            }
            "publish" => {
                let topic = need(&f.topic, "topic")?;
                check_name(topic, max, ErrorCode::BadTopic)?;
                if !hooks.authorize(&s.identity, Action::Publish(topic)).await {
                    return Err((
                        ErrorCode::Forbidden,
                        format!("not allowed to publish to {topic}"),
                    ));
                }
                let pos = inner
                    .publish(topic, f.data.unwrap_or_default())
                    .map_err(|e| (e.code(), e.to_string()))?;
                let reply = json!({"epoch": &*pos.epoch, "offset": pos.offset});
                Payload::from_value(&reply).map(Some).map_err(internal)
            }
            "event" => {
                let name = need(&f.event, "event")?;
                if !valid_event(name, max) {
                    return Err((
                        ErrorCode::BadEvent,
                        format!("event name must be 1 to {max} bytes"),
                    ));
                }
                let Some(handler) = inner.config.handlers.get(name).cloned() else {
                    return Err((
                        ErrorCode::UnknownEvent,
                        format!("no handler for event {name:?}"),
                    ));
                };
                let ctx = EventContext {
                    hub: self.clone(),
                    session: s.id,
                    identity: s.identity.clone(),
                    event: Arc::from(name),
                };
                match handler.call(ctx, f.data.unwrap_or_default()).await {
                    Ok(reply) => Ok(Some(reply.unwrap_or_default())),
                    Err(e) => Err((ErrorCode::HandlerError, e.to_string())),
                }
            }
            "join" => {
                let room = need(&f.room, "room")?;
                check_name(room, max, ErrorCode::BadRoom)?;
                if !hooks.authorize(&s.identity, Action::Join(room)).await {
                    return Err((ErrorCode::Forbidden, format!("not allowed to join {room}")));
                }
                match inner.join_room(s, room) {
                    Ok(()) => Ok(Some(Payload::null())),
                    Err(RoomError::TooManyRooms) => Err((
                        ErrorCode::TooManyRooms,
                        format!("at most {} rooms", inner.config.max_rooms_per_session),
                    )),
                    Err(RoomError::BadRoom) => Err((ErrorCode::BadRoom, "bad room name".into())),
                    Err(RoomError::NoSession) => Ok(None),
                }
            }
            "leave" => {
                let room = need(&f.room, "room")?;
                check_name(room, max, ErrorCode::BadRoom)?;
                if inner.leave_room(s, room) {
                    Ok(Some(Payload::null()))
                } else {
                    Err((ErrorCode::NotMember, format!("not in room {room}")))
                }
            }
            "presence" => {
                let members = match (&f.topic, &f.room) {
                    (Some(topic), _) => {
                        check_name(topic, max, ErrorCode::BadTopic)?;
                        if !lock(&s.membership).topics.contains(topic.as_str()) {
                            return Err((
                                ErrorCode::NotSubscribed,
                                format!("not subscribed to {topic}"),
                            ));
                        }
                        inner.topic_members(topic)
                    }
                    (None, Some(room)) => {
                        check_name(room, max, ErrorCode::BadRoom)?;
                        if !lock(&s.membership).rooms.contains(room.as_str()) {
                            return Err((ErrorCode::NotMember, format!("not in room {room}")));
                        }
                        inner.room_members(room)
                    }
                    (None, None) => return Err(missing("topic")),
                };
                Payload::from_value(&json!({ "members": members }))
                    .map(Some)
                    .map_err(internal)
            }
            "ping" => {
                inner.push_one(s, Frame::Pong { id: f.id });
                Ok(None)
            }
            other => Err((
                ErrorCode::UnknownType,
                format!("unknown frame type {:?}", truncate(other, 64)),
            )),
        }
    }

    /// Publishes a value to a topic (encoded once as JSON; converted once for MessagePack
    /// sessions if any). Returns the message's position.
    pub fn publish<T: Serialize + ?Sized>(
        &self,
        topic: &str,
        data: &T,
    ) -> Result<Position, SendError> {
        self.publish_payload(topic, Payload::from_value(data)?)
    }

    /// Publishes an already encoded payload to a topic.
    pub fn publish_payload(&self, topic: &str, data: Payload) -> Result<Position, SendError> {
        if !valid_name(topic, self.inner.config.max_name_len) {
            return Err(SendError::BadName(ErrorCode::BadTopic));
        }
        // Topics published to by the server alone expire too.
        self.inner.ensure_sweeper();
        self.inner.publish(topic, data)
    }

    /// Starts a send to the members of a room (add more rooms with [`Broadcast::to`]).
    pub fn to(&self, room: impl Into<String>) -> Broadcast<'_> {
        Broadcast {
            hub: self,
            rooms: vec![room.into()],
            except: Vec::new(),
        }
    }

    /// Sends an event to one session. Returns whether the session exists and the frame was
    /// queued.
    pub fn emit_to<T: Serialize + ?Sized>(
        &self,
        session: SessionId,
        event: &str,
        data: &T,
    ) -> Result<bool, SendError> {
        let frame = self.event_frame(event, Payload::from_value(data)?)?;
        let Some(s) = self.inner.sessions.get(&session).map(|s| s.clone()) else {
            return Ok(false);
        };
        let mut overflow = Vec::new();
        let n = self
            .inner
            .fan_out(std::iter::once(&s), &frame, &mut overflow);
        self.inner
            .close_all(overflow, DisconnectReason::SlowConsumer);
        Ok(n == 1)
    }

    /// Sends an event to every session of the hub. Returns how many got it.
    pub fn emit_all<T: Serialize + ?Sized>(
        &self,
        event: &str,
        data: &T,
    ) -> Result<usize, SendError> {
        let frame = self.event_frame(event, Payload::from_value(data)?)?;
        let targets: Vec<Arc<SessionState>> = self
            .inner
            .sessions
            .iter()
            .map(|e| e.value().clone())
            .collect();
        let mut overflow = Vec::new();
        let n = self.inner.fan_out(targets.iter(), &frame, &mut overflow);
        self.inner
            .close_all(overflow, DisconnectReason::SlowConsumer);
        Ok(n)
    }

    fn event_frame(&self, event: &str, data: Payload) -> Result<Arc<Shared>, SendError> {
        if !valid_event(event, self.inner.config.max_name_len) {
            return Err(SendError::BadName(ErrorCode::BadEvent));
        }
        Ok(Shared::new(Frame::Event {
            event: Arc::from(event),
            data,
        }))
    }

    /// Adds a session to a room (idempotent). Rooms are server-managed: no hook is asked.
    pub fn join(&self, session: SessionId, room: &str) -> Result<(), RoomError> {
        let s = self
            .inner
            .sessions
            .get(&session)
            .map(|s| s.clone())
            .ok_or(RoomError::NoSession)?;
        self.inner.join_room(&s, room)
    }

    /// Removes a session from a room. Returns whether it was in it.
    pub fn leave(&self, session: SessionId, room: &str) -> Result<(), RoomError> {
        let s = self
            .inner
            .sessions
            .get(&session)
            .map(|s| s.clone())
            .ok_or(RoomError::NoSession)?;
        self.inner.leave_room(&s, room);
        Ok(())
    }

    /// Disconnects a session (reason `kicked`; queued frames are still written). Returns
    /// whether it existed.
    pub fn disconnect(&self, session: SessionId) -> bool {
        let Some(s) = self.inner.sessions.get(&session).map(|s| s.clone()) else {
            return false;
        };
        self.inner.close_session(&s, DisconnectReason::Kicked);
        true
    }

    /// Who is subscribed to a topic now.
    pub fn topic_members(&self, topic: &str) -> Vec<Member> {
        self.inner.topic_members(topic)
    }

    /// Who is in a room now.
    pub fn room_members(&self, room: &str) -> Vec<Member> {
        self.inner.room_members(room)
    }

    /// The rooms a session is in.
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

    /// The number of open sessions.
    pub fn session_count(&self) -> usize {
        self.inner.sessions.len()
    }

    /// A snapshot of the hub's counters and sizes.
    pub fn stats(&self) -> StatsSnapshot {
        let inner = &self.inner;
        let mut snap = inner.stats.snapshot();
        for entry in inner.sessions.iter() {
            *snap
                .sessions
                .entry(entry.value().transport.name)
                .or_default() += 1;
        }
        snap.topics = inner.topics.len() as u64;
        snap.rooms = inner.rooms.len() as u64;
        snap.subscriptions = inner
            .topics
            .iter()
            .map(|t| lock(&t.value().state).subs.len() as u64)
            .sum();
        snap
    }

    /// Shuts the hub down gracefully: refuses new sessions (503 `shutting_down`), ends every
    /// session with reason `shutdown` (WebSocket close 1001; SSE and poll get a final `close`
    /// frame) after the frames already queued for it, and waits up to `grace` for the
    /// transports to write them. Sessions still writing at the deadline are aborted.
    ///
    /// Call it before stopping the host's server (e.g. before axum's graceful shutdown
    /// completes): upgraded and streaming connections are the hub's, not the server's.
    pub async fn shutdown(&self, grace: Duration) -> ShutdownReport {
        let inner = &self.inner;
        inner.shutting_down.store(true, Ordering::Release);
        let sessions: Vec<Arc<SessionState>> =
            inner.sessions.iter().map(|e| e.value().clone()).collect();
        for s in &sessions {
            inner.close_session(s, DisconnectReason::Shutdown);
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

    /// The largest frame a client may send, in bytes.
    pub fn max_frame_size(&self) -> usize {
        self.inner.config.max_frame_size
    }

    /// The slow-consumer policy in force.
    pub fn slow_consumer_policy(&self) -> SlowConsumerPolicy {
        self.inner.config.slow_consumer
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A send to the members of one or more rooms, built by [`Hub::to`].
///
/// A session in several of the rooms gets the event once.
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

    /// Sends the event; returns how many sessions it was queued for.
    pub fn emit<T: Serialize + ?Sized>(self, event: &str, data: &T) -> Result<usize, SendError> {
        self.emit_payload(event, Payload::from_value(data)?)
    }

    /// Sends an already encoded event payload.
    pub fn emit_payload(self, event: &str, data: Payload) -> Result<usize, SendError> {
        let frame = self.hub.event_frame(event, data)?;
        Ok(self.hub.inner.emit_rooms(&self.rooms, &self.except, &frame))
    }
}
