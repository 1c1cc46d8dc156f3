//! Sessions as the hub keeps them: identity, queue, memberships, liveness and rate limit.
//!
//! Lock order: a session's `membership` before any topic's or room's lock, and those before any
//! session's queue. Nothing takes `membership` while holding a topic or room lock.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use crate::codec::Codec;
use crate::config::{Config, RateLimit};
use crate::error::DisconnectReason;
use crate::hooks::{ConnectRequest, Identity, SessionInfo};
use crate::presence::Member;
use crate::queue::{Congestion, Queue};
use crate::transport::TransportInfo;

/// Locks a mutex, ignoring poisoning: every critical section in this crate leaves its data
/// consistent before anything can panic, so a poisoned lock holds valid data.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub use livehub_protocol::SessionId;

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
#[derive(Debug, Default)]
pub(crate) struct Membership {
    pub(crate) closed: bool,
    pub(crate) topics: HashSet<Arc<str>>,
    pub(crate) rooms: HashSet<Arc<str>>,
    /// The session's patterns (`psubscribe`).
    pub(crate) patterns: Vec<crate::patterns::Pattern>,
    /// The topics in `topics` that a pattern brought (not subscribed on their own).
    pub(crate) via_pattern: HashSet<Arc<str>>,
    /// The session was told that a pattern's topic was over its subscription limit (once,
    /// until a subscription ends).
    pub(crate) pattern_full_told: bool,
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
    pub(crate) aborted: AtomicBool,
    pub(crate) abort_notify: Notify,
    /// Answers this session owes (events sent with `emit_with_ack`), bounded.
    pub(crate) acks_owed: AtomicUsize,
    /// The client's publishes waiting for the engine's answer (bounded).
    pub(crate) publishes_waiting: AtomicUsize,
    /// The reconnection delay (ms) the session's end hints at; 0: none.
    pub(crate) retry_hint_ms: AtomicU64,
}

impl SessionState {
    /// The hinted reconnection delay in ms, if any.
    pub(crate) fn retry_hint_ms(&self) -> Option<u64> {
        match self.retry_hint_ms.load(Ordering::Acquire) {
            0 => None,
            ms => Some(ms),
        }
    }

    /// The hinted reconnection delay, if any.
    pub(crate) fn retry_hint(&self) -> Option<std::time::Duration> {
        self.retry_hint_ms().map(std::time::Duration::from_millis)
    }

    pub(crate) fn new(
        id: SessionId,
        identity: Identity,
        req: &ConnectRequest,
        config: &Config,
        congestion: &Arc<Congestion>,
        now_ms: u64,
    ) -> SessionState {
        SessionState {
            id,
            identity,
            codec: req.codec,
            transport: req.transport,
            peer: req.peer,
            queue: Queue::new(
                config.queue_capacity,
                config.queue_bytes,
                config.slow_consumer,
                congestion.clone(),
            ),
            membership: Mutex::new(Membership::default()),
            last_seen: AtomicU64::new(now_ms),
            bucket: Mutex::new(Bucket {
                tokens: config.rate_limit.map(|r| r.burst).unwrap_or(0.0),
                last_ms: now_ms,
                strikes: 0,
            }),
            aborted: AtomicBool::new(false),
            abort_notify: Notify::new(),
            acks_owed: AtomicUsize::new(0),
            publishes_waiting: AtomicUsize::new(0),
            retry_hint_ms: AtomicU64::new(0),
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

    /// The session as presence shows it.
    pub(crate) fn member(&self) -> Member {
        Member {
            session: self.id,
            user: self.identity.user_id().to_owned(),
            meta: self.identity.meta().clone(),
        }
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
        if !crate::error::flushes(reason) {
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
