//! What the client tells the application besides subscriptions: its connection's life, and
//! the server's events sent to this session or its rooms.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use livehub_protocol::{Code, Codec, Member, Payload, SessionId};
use serde::Serialize;
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::driver::Command;
use crate::error::Error;

/// Where the client's connection is.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectionState {
    /// Opening a connection (attempt `attempt` since the last one was lost, from 1).
    Connecting {
        /// The attempt.
        attempt: u32,
    },
    /// Connected: the server's `welcome` named this session.
    Connected {
        /// The session's public id.
        session: SessionId,
    },
    /// Waiting `delay` before attempt `attempt`.
    Reconnecting {
        /// The next attempt.
        attempt: u32,
        /// How long the client waits first.
        delay: Duration,
    },
    /// Closed for good: by the application (`error: None`), by the server ([`Error::Kicked`]),
    /// or because connecting is pointless ([`Error::Refused`] 401/403, or the attempts ran out).
    Closed {
        /// Why, unless the application closed it.
        error: Option<Error>,
    },
}

/// Why a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DisconnectCause {
    /// The server closed it (a WebSocket close frame, or a `close` frame).
    Server {
        /// The close code (PROTOCOL.md, "Closing").
        code: u16,
        /// The close reason: the reason text before its first `;` (`shutdown` of
        /// `shutdown;retry_ms=2350`).
        reason: String,
        /// The server's reconnect hint (`retry_ms=<n>` after the reason): the client waits
        /// that long (at most the backoff's ceiling) before reconnecting, instead of its own
        /// jitter.
        retry_after: Option<Duration>,
    },
    /// Nothing arrived from the server within the liveness timeout (the `welcome`'s
    /// `timeout_ms` unless set otherwise): the connection is taken for dead.
    Silent,
    /// The connection failed: reset, closed without a close frame, an I/O error, or a frame
    /// over [`crate::ClientBuilder::max_frame_size`].
    Network(String),
}

/// Something that happened to the connection. See [`crate::Client::connection_events`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectionEvent {
    /// Connected (`reconnect`: not the first connection; every subscription is being resumed).
    Connected {
        /// The new session's id.
        session: SessionId,
        /// Whether this follows a lost connection.
        reconnect: bool,
    },
    /// The connection ended; unless a [`ConnectionEvent::Closed`] follows, the client
    /// reconnects.
    Disconnected {
        /// Why.
        cause: DisconnectCause,
    },
    /// Waiting `delay` before attempt `attempt`.
    Reconnecting {
        /// The attempt, from 1.
        attempt: u32,
        /// The delay (full jitter, see [`crate::ClientBuilder::reconnect`]).
        delay: Duration,
    },
    /// An attempt failed.
    ConnectFailed {
        /// The attempt, from 1.
        attempt: u32,
        /// Why.
        error: Error,
    },
    /// An `error` frame that answers no request (e.g. `undeliverable`, `rate_limited`).
    ServerError {
        /// The code.
        code: Code,
        /// For humans.
        message: String,
    },
    /// The server sent a frame the client could not read; the connection goes on.
    ProtocolError {
        /// What was wrong.
        message: String,
    },
    /// The client is closed for good (see [`ConnectionState::Closed`]).
    Closed {
        /// Why, unless the application closed it.
        error: Option<Error>,
    },
    /// This receiver read too slowly and missed `missed` events.
    Lagged {
        /// How many.
        missed: u64,
    },
}

/// An event the server sent to this session: directly, or to a room it is in.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ServerEvent {
    /// An `event` frame.
    Event {
        /// The event's name.
        event: String,
        /// Its data.
        data: Payload,
    },
    /// Someone joined a room this session is in (when the server sends room presence).
    Join {
        /// The room.
        room: String,
        /// Who.
        member: Member,
    },
    /// Someone left a room this session is in.
    Leave {
        /// The room.
        room: String,
        /// Who.
        member: Member,
    },
    /// `count` events were dropped: by the server because the session read too slowly (a
    /// `dropped` frame), or by this receiver.
    Dropped {
        /// How many.
        count: u64,
    },
    /// An event that asks for an answer (the server's `emit_with_ack`): answer it with
    /// [`Ack::reply`]. The server waits a bounded time; unanswered, its wait times out.
    Ask {
        /// The event's name.
        event: String,
        /// Its data.
        data: Payload,
        /// How to answer.
        ack: Ack,
    },
}

/// The answer slot of a [`ServerEvent::Ask`]: one answer, on the connection that asked.
///
/// Every receiver of the event gets a clone; the first [`Ack::reply`] of any clone answers,
/// later ones fail with [`Error::AlreadyAnswered`] and send nothing.
#[derive(Debug, Clone)]
pub struct Ack {
    number: u64,
    session: SessionId,
    codec: Codec,
    answered: Arc<AtomicBool>,
    /// Weak: a pending answer does not keep the client alive.
    cmds: mpsc::WeakSender<Command>,
    timeout: Duration,
}

impl PartialEq for Ack {
    fn eq(&self, other: &Ack) -> bool {
        self.number == other.number && self.session == other.session
    }
}

impl Ack {
    pub(crate) fn new(
        number: u64,
        session: SessionId,
        codec: Codec,
        cmds: mpsc::WeakSender<Command>,
        timeout: Duration,
    ) -> Ack {
        Ack {
            number,
            session,
            codec,
            answered: Arc::default(),
            cmds,
            timeout,
        }
    }

    /// The event's `ack` number (unique per server and session).
    pub fn number(&self) -> u64 {
        self.number
    }

    /// Whether an answer was sent (or is being sent) through any clone.
    pub fn is_answered(&self) -> bool {
        self.answered.load(Ordering::Acquire)
    }

    /// Answers with `value` and waits for the server's receipt. Fails with the server's
    /// `unknown_ack` ([`Error::Server`]) when it no longer waits (too late, or answered
    /// already), [`Error::ConnectionLost`] when the connection that asked is gone (nothing is
    /// sent: the answer belongs to that session), [`Error::AlreadyAnswered`], [`Error::Timeout`]
    /// after the ack timeout, [`Error::Closed`].
    pub async fn reply<T: Serialize + ?Sized>(&self, value: &T) -> Result<(), Error> {
        let data = Payload::encode(self.codec, value)?;
        self.reply_payload(data).await
    }

    /// Answers with an already encoded value (see [`Ack::reply`]).
    pub async fn reply_payload(&self, data: Payload) -> Result<(), Error> {
        if self.answered.swap(true, Ordering::AcqRel) {
            return Err(Error::AlreadyAnswered);
        }
        let cmds = self.cmds.upgrade().ok_or(Error::Closed)?;
        let (reply, answer) = oneshot::channel();
        let cmd = Command::Ack {
            ack: self.number,
            session: self.session,
            data,
            reply,
        };
        let wait = async {
            cmds.send(cmd).await.map_err(|_| Error::Closed)?;
            drop(cmds);
            answer.await.unwrap_or(Err(Error::Closed))
        };
        tokio::time::timeout(self.timeout, wait)
            .await
            .unwrap_or(Err(Error::Timeout))
            .map(drop)
    }
}

/// A receiver of [`ConnectionEvent`]s. Each receiver gets every event sent after it was made,
/// and holds at most a bounded number unread: one that reads too slowly gets
/// [`ConnectionEvent::Lagged`] in place of the oldest ones.
#[derive(Debug)]
pub struct ConnectionEvents(pub(crate) broadcast::Receiver<ConnectionEvent>);

impl ConnectionEvents {
    /// The next event; `None` once the client is gone.
    pub async fn recv(&mut self) -> Option<ConnectionEvent> {
        match self.0.recv().await {
            Ok(e) => Some(e),
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                Some(ConnectionEvent::Lagged { missed })
            }
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }
}

/// A receiver of [`ServerEvent`]s, bounded like [`ConnectionEvents`]: one that reads too
/// slowly gets [`ServerEvent::Dropped`] in place of the oldest ones.
#[derive(Debug)]
pub struct ServerEvents(pub(crate) broadcast::Receiver<ServerEvent>);

impl ServerEvents {
    /// The next event; `None` once the client is gone.
    pub async fn recv(&mut self) -> Option<ServerEvent> {
        match self.0.recv().await {
            Ok(e) => Some(e),
            Err(broadcast::error::RecvError::Lagged(count)) => Some(ServerEvent::Dropped { count }),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }
}
