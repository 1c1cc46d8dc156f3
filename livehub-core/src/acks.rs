//! Events that wait for the client's answer ([`crate::Hub::emit_with_ack`]), as socket.io's
//! `emitWithAck`: the event goes out with an `ack` number, the client answers with an `ack`
//! frame carrying it, and the host's call returns the answer, or fails on timeout or when the
//! session ends first.
//!
//! A session of another node is asked through its node: the asking node keeps the waiter,
//! the session's node numbers the event itself and forwards the answer (or the session's end)
//! back. Every table here is bounded.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use tokio::sync::oneshot;

use crate::broker::{NodeId, Route};
use crate::codec::Payload;
use crate::error::{AckError, DisconnectReason, ErrorCode};
use crate::frame::{Frame, Shared};
use crate::node::{Control, Inner};
use crate::session::{SessionId, SessionState};

/// Answers one session may owe at once.
pub(crate) const PER_SESSION: usize = 64;
/// Answers a node waits for at once.
const PER_NODE: usize = 100_000;

/// Who waits for an `ack`.
enum Waiter {
    /// The host, on this node.
    Local(oneshot::Sender<Result<Payload, AckError>>),
    /// The host of another node: forward the answer there.
    Forward { node: NodeId, ask: u64 },
}

struct Pending {
    session: SessionId,
    waiter: Waiter,
    /// After this the answer is no longer awaited (a forwarded question whose asker timed out
    /// is dropped by the sweeper).
    deadline: tokio::time::Instant,
}

/// The node's events waiting for an answer, by `ack` number.
#[derive(Default)]
pub(crate) struct Acks {
    next: AtomicU64,
    pending: DashMap<u64, Pending>,
}

impl Acks {
    fn number(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed) + 1
    }
}

/// An answer on its way back to the node that asked, or that the session could not answer.
pub(crate) type Answer = Result<Payload, AckError>;

impl Inner {
    /// Queues `event` for a local session with a new `ack` number kept for `waiter`. On
    /// failure the waiter has been told.
    fn ask_local(
        &self,
        s: &Arc<SessionState>,
        event: Arc<str>,
        data: Payload,
        waiter: Waiter,
        timeout: Duration,
    ) -> Result<u64, AckError> {
        if self.acks.pending.len() >= PER_NODE
            || s.acks_owed.fetch_add(1, Ordering::AcqRel) >= PER_SESSION
        {
            s.acks_owed.fetch_sub(1, Ordering::AcqRel);
            self.resolve(waiter, Err(AckError::TooMany));
            return Err(AckError::TooMany);
        }
        let n = self.acks.number();
        self.acks.pending.insert(
            n,
            Pending {
                session: s.id,
                waiter,
                deadline: tokio::time::Instant::now() + timeout,
            },
        );
        let frame = Shared::new(Frame::Event {
            event,
            data,
            ack: Some(n),
        });
        let mut overflow = Vec::new();
        let queued = self.fan_out(std::iter::once(s), &frame, &mut overflow);
        self.close_all(overflow, DisconnectReason::SlowConsumer);
        if queued == 0 {
            // Closing, or dropped for a slow reader: it will never be answered.
            if let Some(p) = self.take(n) {
                self.resolve(p.waiter, Err(AckError::Disconnected));
            }
            return Err(AckError::Disconnected);
        }
        Ok(n)
    }

    /// Takes a pending answer out, giving back its place in its session's count.
    fn take(&self, n: u64) -> Option<Pending> {
        let (_, p) = self.acks.pending.remove(&n)?;
        self.owed_less(p.session);
        Some(p)
    }

    fn owed_less(&self, session: SessionId) {
        if let Some(s) = self.local_session(session) {
            let _ = s
                .acks_owed
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        }
    }

    /// Sends an event to a session (on any node) and waits for its answer.
    pub(crate) async fn emit_with_ack(
        &self,
        session: SessionId,
        event: Arc<str>,
        data: Payload,
        timeout: Duration,
    ) -> Result<Payload, AckError> {
        let (tx, rx) = oneshot::channel();
        let n = if NodeId::of(session) == self.node || !self.clustered() {
            let s = self.local_session(session).ok_or(AckError::NoSession)?;
            self.ask_local(&s, event, data, Waiter::Local(tx), timeout)?
        } else {
            if self.acks.pending.len() >= PER_NODE {
                return Err(AckError::TooMany);
            }
            let n = self.acks.number();
            self.acks.pending.insert(
                n,
                Pending {
                    session,
                    waiter: Waiter::Local(tx),
                    deadline: tokio::time::Instant::now() + timeout,
                },
            );
            let sent = self.send_control(
                Route::Node(NodeId::of(session)),
                Control::Ask {
                    session: session.as_u64(),
                    ask: n,
                    event: event.to_string(),
                    codec: Control::codec_tag(&data),
                    data: data.as_bytes().to_vec(),
                    timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
                },
            );
            if let Err(e) = sent {
                self.acks.pending.remove(&n);
                return Err(AckError::Engine(e));
            }
            n
        };
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(AckError::Disconnected),
            Err(_) => {
                self.take(n);
                Err(AckError::Timeout)
            }
        }
    }

    /// A client's `ack` frame: the answer to event `n` it was sent.
    pub(crate) fn answer(
        &self,
        s: &Arc<SessionState>,
        n: u64,
        data: Payload,
    ) -> Result<(), ErrorCode> {
        let Some((_, p)) = self.acks.pending.remove_if(&n, |_, p| p.session == s.id) else {
            return Err(ErrorCode::UnknownAck);
        };
        self.owed_less(p.session);
        self.resolve(p.waiter, Ok(data));
        Ok(())
    }

    fn resolve(&self, waiter: Waiter, answer: Answer) {
        match waiter {
            Waiter::Local(tx) => {
                let _ = tx.send(answer);
            }
            Waiter::Forward { node, ask } => {
                let (codec, data, error) = match answer {
                    Ok(p) => (
                        Control::codec_tag(&p),
                        Some(serde_bytes::ByteBuf::from(p.as_bytes().to_vec())),
                        None,
                    ),
                    Err(e) => (0, None, Some(e.code_str().to_owned())),
                };
                let _ = self.send_control(
                    Route::Node(node),
                    Control::Answer {
                        ask,
                        codec,
                        data,
                        error,
                    },
                );
            }
        }
    }

    /// A session ended: whoever waits for its answers learns it now.
    pub(crate) fn session_ended_acks(&self, id: SessionId) {
        if self.acks.pending.is_empty() {
            return;
        }
        let owed: Vec<u64> = self
            .acks
            .pending
            .iter()
            .filter(|e| e.value().session == id && NodeId::of(id) == self.node)
            .map(|e| *e.key())
            .collect();
        for n in owed {
            if let Some((_, p)) = self.acks.pending.remove(&n) {
                self.resolve(p.waiter, Err(AckError::Disconnected));
            }
        }
    }

    /// Forgets the answers no one waits for any more (run by the sweeper).
    pub(crate) fn expire_acks(&self) {
        if self.acks.pending.is_empty() {
            return;
        }
        let now = tokio::time::Instant::now();
        let late: Vec<u64> = self
            .acks
            .pending
            .iter()
            .filter(|e| e.value().deadline <= now)
            .map(|e| *e.key())
            .collect();
        for n in late {
            if let Some(p) = self.take(n) {
                self.resolve(p.waiter, Err(AckError::Timeout));
            }
        }
    }

    /// Another node asks one of this node's sessions.
    pub(crate) fn on_ask(
        &self,
        origin: NodeId,
        session: SessionId,
        ask: u64,
        event: String,
        data: Option<Payload>,
        timeout: Duration,
    ) {
        let forward = Waiter::Forward { node: origin, ask };
        let (Some(s), Some(data)) = (self.local_session(session), data) else {
            self.resolve(forward, Err(AckError::NoSession));
            return;
        };
        // On failure the asking node has been told.
        let _ = self.ask_local(&s, Arc::from(event.as_str()), data, forward, timeout);
    }

    /// The answer to a question this node asked of another node's session.
    pub(crate) fn on_answer(&self, ask: u64, answer: Answer) {
        if let Some(p) = self.take(ask) {
            self.resolve(p.waiter, answer);
        }
    }
}
