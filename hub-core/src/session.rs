//! Sessions and the transport seam.
//!
//! A transport attaches a client with [`crate::Hub::connect`] and gets a [`Connection`]: a
//! [`Session`] to hand the client's frames to, and an [`Outbox`] to take the frames to write
//! from. That is the whole seam: a transport knows nothing of topics, rooms or presence, and a
//! new transport needs no change here. hub-core's own tests drive the hub through an in-memory
//! transport built on exactly these types.
//!
//! ## The outgoing queue
//!
//! Each session has one bounded queue of shared frames (`Arc`, never copied). Fan-out pushes
//! into it without waiting; the transport's writer drains everything queued at once
//! ([`Outbox::next_batch`]) so that it can write many frames per system call. When the queue is
//! full the hub's [`crate::SlowConsumerPolicy`] applies to that session alone.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::future::poll_fn;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Poll, Waker};

use bytes::Bytes;
use tokio::sync::Notify;

use crate::codec::Codec;
use crate::config::{Config, RateLimit, SlowConsumerPolicy};
use crate::error::{DisconnectReason, ErrorCode};
use crate::frame::{Frame, Shared};
use crate::hooks::{ConnectRequest, Identity, SessionInfo};
use crate::hub::{Hub, Inner};

/// Locks a mutex, ignoring poisoning: every critical section in this crate leaves its data
/// consistent before anything can panic, so a poisoned lock holds valid data.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A session's public id: what other clients see in presence and what the server uses to send
/// to one session. Random, but not a credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub(crate) u64);

impl SessionId {
    /// Parses the id's text form (16 hex digits), as clients see it.
    pub fn parse(s: &str) -> Option<SessionId> {
        // Exactly 16 hex digits: from_str_radix alone would accept a sign (`+123...`).
        if s.len() != 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        u64::from_str_radix(s, 16).ok().map(SessionId)
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// What a transport tells the hub about itself when it attaches a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransportInfo {
    /// A short name (`ws`, `sse`, `poll`), used in counters, traces and [`SessionInfo`].
    pub name: &'static str,
    /// The transport wants [`Outgoing::Ping`] at the heartbeat interval (WebSocket sends a ping
    /// frame, SSE a comment line). A transport with its own rhythm (long-polling) says `false`.
    pub pings: bool,
    /// Traffic from the client proves it is alive, so a session silent past the heartbeat
    /// timeout is closed. A one-way transport (SSE) says `false`: it learns of a gone client
    /// when a write fails.
    pub client_liveness: bool,
}

impl TransportInfo {
    /// A two-way transport with its own pings, like WebSocket.
    pub const fn duplex(name: &'static str) -> TransportInfo {
        TransportInfo {
            name,
            pings: true,
            client_liveness: true,
        }
    }
}

/// One item for the transport to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outgoing {
    /// An encoded frame in the session's encoding (text for JSON, binary for MessagePack).
    Frame(Bytes),
    /// Time to send the transport's keep-alive (WebSocket ping, SSE comment).
    Ping,
    /// The session is over: write the close (WebSocket close frame with
    /// [`DisconnectReason::close_code`], SSE/poll `close` frame) and end. Nothing follows it.
    Close(DisconnectReason),
}

/// What happened to a push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pushed {
    Queued,
    /// Dropped under the `Drop` policy, or because the session is closing.
    Dropped,
    /// The queue overflowed under the `Disconnect` policy: the caller must close the session.
    Overflow,
}

/// Frames lost to a lagging session under the `Drop` policy, reported once it catches up.
#[derive(Debug, Default)]
struct Lag {
    /// Per topic: epoch and the first and last dropped offsets (contiguous: once lagging, every
    /// frame is dropped until the writer drains the queue).
    topics: HashMap<std::sync::Arc<str>, (Arc<str>, u64, u64)>,
    others: u64,
}

#[derive(Debug, Default)]
struct QueueState {
    items: VecDeque<Arc<Shared>>,
    waker: Option<Waker>,
    ping: bool,
    closing: Option<DisconnectReason>,
    close_sent: bool,
    lag: Option<Box<Lag>>,
}

#[derive(Debug)]
pub(crate) struct Queue {
    state: Mutex<QueueState>,
    capacity: usize,
    policy: SlowConsumerPolicy,
}

impl Queue {
    fn new(capacity: usize, policy: SlowConsumerPolicy) -> Queue {
        Queue {
            state: Mutex::new(QueueState::default()),
            capacity: capacity.max(1),
            policy,
        }
    }

    /// Queues a frame without waiting. O(1); wakes the writer only if it sleeps.
    pub(crate) fn push(&self, frame: &Arc<Shared>) -> Pushed {
        let waker = {
            let mut st = lock(&self.state);
            if st.closing.is_some() {
                return Pushed::Dropped;
            }
            if st.lag.is_some() || st.items.len() >= self.capacity {
                match self.policy {
                    SlowConsumerPolicy::Disconnect => return Pushed::Overflow,
                    SlowConsumerPolicy::Drop => {
                        let lag = st.lag.get_or_insert_with(Box::default);
                        match &frame.frame {
                            Frame::Message {
                                topic,
                                epoch,
                                offset,
                                ..
                            } => {
                                lag.topics
                                    .entry(topic.clone())
                                    .and_modify(|e| e.2 = *offset)
                                    .or_insert((epoch.clone(), *offset, *offset));
                            }
                            _ => lag.others += 1,
                        }
                        return Pushed::Dropped;
                    }
                }
            }
            st.items.push_back(frame.clone());
            st.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
        Pushed::Queued
    }

    fn request_ping(&self) {
        let waker = {
            let mut st = lock(&self.state);
            if st.closing.is_some() {
                return;
            }
            st.ping = true;
            st.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Ends the queue: queued frames are kept (and written before the close) when the reason
    /// flushes, dropped otherwise. Returns how many frames were dropped.
    fn close(&self, reason: DisconnectReason) -> usize {
        let (waker, dropped) = {
            let mut st = lock(&self.state);
            if st.closing.is_some() {
                return 0;
            }
            st.closing = Some(reason);
            let dropped = if reason.flushes() {
                0
            } else {
                let n = st.items.len();
                st.items = VecDeque::new();
                n
            };
            (st.waker.take(), dropped)
        };
        if let Some(w) = waker {
            w.wake();
        }
        dropped
    }
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last_ms: u64,
    /// Frames refused in a row.
    strikes: u32,
}

/// The rate limiter's verdict on one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rate {
    Ok,
    /// Refused with `rate_limited`; the session goes on.
    Limited,
    /// Refused again and again: close the session.
    Flood,
}

/// Membership of one session, under one lock so that subscribe/join and close never race.
///
/// Lock order: a session's `membership` before any topic's or room's lock, and those before any
/// session's queue. Nothing takes `membership` while holding a topic or room lock.
#[derive(Debug, Default)]
pub(crate) struct Membership {
    pub(crate) closed: bool,
    pub(crate) topics: HashSet<Arc<str>>,
    pub(crate) rooms: HashSet<Arc<str>>,
}

/// A session as the hub keeps it (in its tables, topics and rooms).
pub(crate) struct SessionState {
    pub(crate) id: SessionId,
    pub(crate) identity: Identity,
    pub(crate) codec: Codec,
    pub(crate) transport: TransportInfo,
    pub(crate) peer: Option<SocketAddr>,
    pub(crate) queue: Queue,
    pub(crate) membership: Mutex<Membership>,
    /// Milliseconds since the hub's start when the client was last heard from.
    last_seen: AtomicU64,
    /// Token bucket for the rate limit: only the session's own transport task takes from it,
    /// so the lock is never contended.
    bucket: Mutex<Bucket>,
    aborted: AtomicBool,
    abort_notify: Notify,
}

impl SessionState {
    pub(crate) fn new(
        id: SessionId,
        identity: Identity,
        req: &ConnectRequest,
        config: &Config,
        now_ms: u64,
    ) -> SessionState {
        SessionState {
            id,
            identity,
            codec: req.codec,
            transport: req.transport,
            peer: req.peer,
            queue: Queue::new(config.queue_capacity, config.slow_consumer),
            membership: Mutex::new(Membership::default()),
            last_seen: AtomicU64::new(now_ms),
            bucket: Mutex::new(Bucket {
                tokens: config.rate_limit.map(|r| r.burst).unwrap_or(0.0),
                last_ms: now_ms,
                strikes: 0,
            }),
            aborted: AtomicBool::new(false),
            abort_notify: Notify::new(),
        }
    }

    pub(crate) fn info(&self) -> SessionInfo {
        SessionInfo {
            id: self.id,
            identity: self.identity.clone(),
            transport: self.transport.name,
            codec: self.codec,
            peer: self.peer,
        }
    }

    /// The presence member value: `{"session", "user", "meta"}`.
    pub(crate) fn member(&self) -> serde_json::Value {
        serde_json::json!({
            "session": self.id.to_string(),
            "user": self.identity.user_id(),
            "meta": self.identity.meta(),
        })
    }

    pub(crate) fn touch(&self, now_ms: u64) {
        self.last_seen.store(now_ms, Ordering::Relaxed);
    }

    pub(crate) fn last_seen(&self) -> u64 {
        self.last_seen.load(Ordering::Relaxed)
    }

    pub(crate) fn request_ping(&self) {
        self.queue.request_ping();
    }

    /// Takes a token for one client frame.
    pub(crate) fn take_token(&self, limit: &RateLimit, now_ms: u64) -> Rate {
        let mut b = lock(&self.bucket);
        let elapsed = now_ms.saturating_sub(b.last_ms) as f64 / 1000.0;
        b.last_ms = now_ms;
        b.tokens = (b.tokens + elapsed * limit.per_second).min(limit.burst);
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            b.strikes = 0;
            Rate::Ok
        } else {
            b.strikes += 1;
            // A client that sends another whole burst while limited is flooding.
            if f64::from(b.strikes) > limit.burst {
                Rate::Flood
            } else {
                Rate::Limited
            }
        }
    }

    /// Closes the queue; returns the number of frames dropped.
    pub(crate) fn close_queue(&self, reason: DisconnectReason) -> usize {
        let dropped = self.queue.close(reason);
        if !reason.flushes() {
            self.abort();
        }
        dropped
    }

    /// Tells the transport to stop now, even in the middle of a write.
    pub(crate) fn abort(&self) {
        self.aborted.store(true, Ordering::SeqCst);
        self.abort_notify.notify_waiters();
    }

    pub(crate) fn is_closed(&self) -> bool {
        lock(&self.membership).closed
    }
}

/// A position in a topic's stream (what a resuming client last saw).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub struct StreamPosition {
    /// The stream's epoch.
    pub epoch: String,
    /// The last offset seen.
    pub offset: u64,
}

/// A refused session command, with the stable code its `error` frame would carry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct CommandError {
    /// The stable code.
    pub code: ErrorCode,
    /// A human-readable description.
    pub message: String,
}

/// What a transport gets from [`crate::Hub::connect`].
#[derive(Debug)]
pub struct Connection {
    /// Where the client's frames go.
    pub session: Session,
    /// Where the frames to write come from.
    pub outbox: Outbox,
}

/// The transport's handle on a session: hand it the client's frames. Dropping it ends the
/// session (reason `normal` if nothing else ended it first), so a transport that fails in any
/// way still lets its presence leave exactly once.
pub struct Session {
    pub(crate) hub: Hub,
    pub(crate) state: Arc<SessionState>,
}

impl Session {
    /// The session's id.
    pub fn id(&self) -> SessionId {
        self.state.id
    }

    /// Who the session belongs to.
    pub fn identity(&self) -> &Identity {
        &self.state.identity
    }

    /// The session's encoding.
    pub fn codec(&self) -> Codec {
        self.state.codec
    }

    /// Handles one frame from the client: decodes it, runs it, queues the answer. Never fails:
    /// a bad frame is answered with an `error` frame and the session goes on.
    pub async fn handle(&self, frame: Bytes) {
        self.hub.handle_frame(&self.state, frame).await;
    }

    /// Subscribes the session to a topic, as a `subscribe` frame without `id` would, but
    /// answering here instead of with an `error` frame: for transports that take topics at
    /// connect time (SSE's query) and must refuse before streaming. With `since`, what was
    /// missed (or a `gap`) is queued before any live message.
    pub async fn subscribe(
        &self,
        topic: &str,
        since: Option<StreamPosition>,
    ) -> Result<(), CommandError> {
        self.hub.subscribe_session(&self.state, topic, since).await
    }

    /// Records that the client showed life (a pong, or any traffic the transport sees).
    pub fn touch(&self) {
        self.state.touch(self.hub.inner.now_ms());
    }

    /// Tells the client a transport-level error (e.g. a frame the transport refused) with a
    /// stable code; the session goes on.
    pub fn send_error(&self, code: ErrorCode, message: impl Into<String>) {
        self.hub
            .inner
            .send_error(&self.state, None, code, message.into());
    }

    /// Ends the session now. Presence leaves once; the first reason given wins.
    pub fn close(&self, reason: DisconnectReason) {
        self.hub.inner.close_session(&self.state, reason);
    }

    /// Whether the session has ended.
    pub fn is_closed(&self) -> bool {
        self.state.is_closed()
    }

    /// Why the session ended, once it has (the first reason given wins).
    pub fn close_reason(&self) -> Option<DisconnectReason> {
        lock(&self.state.queue.state).closing
    }

    /// Completes when the session must stop at once (slow consumer, heartbeat timeout, shutdown
    /// deadline): a transport races its writes against it so that a stalled socket cannot hold
    /// the session open.
    pub async fn aborted(&self) {
        loop {
            let notified = self.state.abort_notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.state.aborted.load(Ordering::SeqCst) {
                return;
            }
            notified.await;
        }
    }
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.state.id)
            .field("transport", &self.state.transport.name)
            .field("codec", &self.state.codec)
            .finish()
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let inner = &self.hub.inner;
        inner.close_session(&self.state, DisconnectReason::Normal);
        inner.detach(self.state.id);
    }
}

/// The transport's source of frames to write.
pub struct Outbox {
    pub(crate) inner: Arc<Inner>,
    pub(crate) state: Arc<SessionState>,
    /// Reused between batches so that draining allocates nothing in the steady state.
    spare: VecDeque<Arc<Shared>>,
    done: bool,
}

impl Outbox {
    pub(crate) fn new(inner: Arc<Inner>, state: Arc<SessionState>) -> Outbox {
        Outbox {
            inner,
            state,
            spare: VecDeque::new(),
            done: false,
        }
    }

    /// Waits until there is something to write, then appends everything there is to `out`,
    /// already encoded for this session. Returns `false` once the session is over and its
    /// [`Outgoing::Close`] has been handed out.
    ///
    /// Cancel-safe: if the future is dropped before it completes, nothing is lost.
    pub async fn next_batch(&mut self, out: &mut Vec<Outgoing>) -> bool {
        if self.done {
            return false;
        }
        let mut taken = std::mem::take(&mut self.spare);
        let mut extra: Vec<Arc<Shared>> = Vec::new();
        let (ping, close) = poll_fn(|cx| {
            let mut st = lock(&self.state.queue.state);
            if st.items.is_empty() && !st.ping && st.lag.is_none() && st.closing.is_none() {
                match &st.waker {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    _ => st.waker = Some(cx.waker().clone()),
                }
                return Poll::Pending;
            }
            std::mem::swap(&mut st.items, &mut taken);
            if let Some(lag) = st.lag.take() {
                extra = lag_frames(*lag);
            }
            let ping = std::mem::take(&mut st.ping);
            let close = match st.closing {
                Some(reason) if !st.close_sent => {
                    st.close_sent = true;
                    Some(reason)
                }
                _ => None,
            };
            Poll::Ready((ping, close))
        })
        .await;

        let codec = self.state.codec;
        for shared in taken.drain(..).chain(extra) {
            match shared.encoded(codec, &self.inner.stats) {
                Ok(bytes) => out.push(Outgoing::Frame(bytes)),
                Err(e) => {
                    let what = match &shared.frame {
                        Frame::Message { topic, offset, .. } => format!("{topic}@{offset}"),
                        _ => "a frame".to_owned(),
                    };
                    let err = Frame::Error {
                        id: None,
                        code: ErrorCode::Undeliverable,
                        message: format!("{what} cannot be sent as {}: {e}", codec.name()),
                    };
                    if let Ok(bytes) = err.encode(codec) {
                        out.push(Outgoing::Frame(bytes));
                    }
                }
            }
        }
        self.spare = taken;
        if ping {
            out.push(Outgoing::Ping);
        }
        if let Some(reason) = close {
            out.push(Outgoing::Close(reason));
            self.done = true;
        }
        true
    }

    /// The session's encoding (what the frames in [`Outgoing::Frame`] are in).
    pub fn codec(&self) -> Codec {
        self.state.codec
    }

    /// The `close` frame (`{"type":"close","code":..,"reason":..}`) in this session's encoding,
    /// for transports without a close frame of their own (SSE, long-polling).
    pub fn close_frame(&self, reason: DisconnectReason) -> Bytes {
        let frame = Frame::Close {
            code: reason.close_code(),
            reason: reason.as_str(),
        };
        // Only fixed strings and integers: encoding cannot fail.
        frame.encode(self.state.codec).unwrap_or_default()
    }
}

impl fmt::Debug for Outbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Outbox")
            .field("session", &self.state.id)
            .finish()
    }
}

/// The frames that tell a lagging session what it lost.
fn lag_frames(lag: Lag) -> Vec<Arc<Shared>> {
    let mut frames: Vec<Arc<Shared>> = lag
        .topics
        .into_iter()
        .map(|(topic, (epoch, from, to))| {
            Shared::new(Frame::Gap {
                topic,
                epoch,
                from,
                to,
                reason: "lagged",
            })
        })
        .collect();
    if lag.others > 0 {
        frames.push(Shared::new(Frame::Dropped { count: lag.others }));
    }
    frames
}
