//! The transport seam.
//!
//! A transport attaches a client with [`crate::Hub::connect`] and gets a [`Connection`]: a
//! [`Session`] to hand the client's frames to, and an [`Outbox`] to take the frames to write
//! from. That is the whole seam: a transport knows nothing of topics, rooms or presence, and a
//! new transport needs no change in livehub-core. livehub-core's own tests drive the hub through an
//! in-memory transport built on exactly these types.
//!
//! ## The outgoing queue
//!
//! Each session has one bounded queue of shared frames (never copied). Fan-out pushes into it
//! without waiting; the transport's writer drains everything queued at once
//! ([`Outbox::next_batch`]) so that it can write many frames per system call. When the queue is
//! full the hub's [`crate::SlowConsumerPolicy`] applies to that session alone.
//!
//! ## What a transport learns without parsing
//!
//! Each [`OutFrame`] says what it is ([`OutFrame::kind`]) and, for a topic's message or a
//! `gap`, where it leaves the topic ([`OutFrame::stream`]); [`Outgoing::Subscribed`] says where
//! a new subscription starts. A transport that keeps positions itself (SSE's event ids) needs
//! nothing else.

use std::collections::VecDeque;
use std::fmt;
use std::future::poll_fn;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use livehub_protocol::CloseText;

use crate::broker::{HistoryFrom, Position};
use crate::codec::Codec;
use crate::error::{DisconnectReason, ErrorCode};
use crate::frame::{Frame, FrameKind, GapReason, Item, Shared};
use crate::hooks::Identity;
use crate::hub::Hub;
use crate::node::Inner;
use crate::queue::lag_frames;
use crate::session::{lock, SessionId, SessionState};
use crate::stats::Stats;

/// What a transport tells the hub about itself when it attaches a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransportInfo {
    /// A short name (`ws`, `sse`, `poll`), used in counters, traces and
    /// [`crate::SessionInfo`].
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
#[derive(Debug, Clone, PartialEq)]
pub enum Outgoing {
    /// An encoded frame in the session's encoding (text for JSON, binary for MessagePack).
    Frame(OutFrame),
    /// Time to send the transport's keep-alive (WebSocket ping, SSE comment).
    Ping,
    /// Nothing to write: a subscription starts (what a resume names if nothing else of the
    /// topic arrives). It comes just before the `subscribe` reply (if the subscribe had an
    /// `id`) and anything recovered. For transports that keep positions themselves (SSE);
    /// others skip it.
    Subscribed(SubscribedAt),
    /// The session is over: write the close (WebSocket close frame with
    /// [`DisconnectReason::close_code`], SSE/poll `close` frame) and end. Nothing follows it.
    Close(DisconnectReason),
}

/// Where a subscription starts ([`Outgoing::Subscribed`]).
#[derive(Debug, Clone, PartialEq)]
pub struct SubscribedAt(pub(crate) Arc<(Arc<str>, Position)>);

impl SubscribedAt {
    /// The topic.
    pub fn topic(&self) -> &Arc<str> {
        &self.0 .0
    }

    /// Where the subscription starts: the `since` it recovers from, or the topic's position
    /// when it began.
    pub fn position(&self) -> &Position {
        &self.0 .1
    }
}

/// An encoded frame, with what a transport may want to know of it without parsing it.
///
/// The bytes are the hub's encoding of the frame, shared by every session that gets it (an
/// `OutFrame` is the shared frame and the session's encoding: two words, no copy of the
/// bytes' handle per session).
#[derive(Clone)]
pub struct OutFrame {
    frame: Arc<Shared>,
    codec: Codec,
}

/// What [`OutFrame::bytes`] answers should a frame's bytes be missing (they never are: an
/// `OutFrame` is made only once its encoding is cached).
static NO_BYTES: Bytes = Bytes::new();

impl OutFrame {
    /// A frame of already encoded bytes that the hub did not make (for a transport's own tests
    /// of its writer): its kind is [`FrameKind::Event`] and it moves no stream.
    pub fn opaque(bytes: Bytes) -> OutFrame {
        let frame = Frame::Event {
            event: Arc::from(""),
            data: crate::codec::Payload::null(),
            ack: None,
        };
        OutFrame {
            frame: Shared::with_bytes(frame, Codec::Json, bytes),
            codec: Codec::Json,
        }
    }

    /// The encoded frame.
    pub fn bytes(&self) -> &Bytes {
        self.frame.cached(self.codec).unwrap_or(&NO_BYTES)
    }

    /// The encoded frame, taken.
    pub fn into_bytes(self) -> Bytes {
        self.bytes().clone()
    }

    /// What kind of frame it is (its `type`).
    pub fn kind(&self) -> FrameKind {
        FrameKind::of(self.frame.frame())
    }

    /// Where the frame leaves its topic, for a transport that keeps positions: a `message`'s
    /// topic, epoch and offset; a `gap` with reason `history`'s topic, epoch and last lost
    /// offset (the client was told of those, so a resume starts after them). `None` for every
    /// other frame, other gaps included (`epoch`, `lagged`: they move nothing).
    pub fn stream(&self) -> Option<(&str, &str, u64)> {
        match self.frame.frame() {
            Frame::Message {
                topic,
                epoch,
                offset,
                ..
            } => Some((topic, epoch, *offset)),
            Frame::Gap {
                topic,
                epoch,
                to,
                reason: GapReason::History,
                ..
            } => Some((topic, epoch, *to)),
            _ => None,
        }
    }
}

impl fmt::Debug for OutFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutFrame")
            .field("kind", &self.kind())
            .field("bytes", &self.bytes().len())
            .finish()
    }
}

impl PartialEq for OutFrame {
    fn eq(&self, other: &Self) -> bool {
        self.bytes() == other.bytes()
    }
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
    /// connect time (SSE's query) and must refuse before streaming. `from` says where to start:
    /// now ([`HistoryFrom::Top`]), after a position (what was missed, or a `gap`, is queued
    /// before any live message), or with the last messages held.
    pub async fn subscribe(&self, topic: &str, from: HistoryFrom) -> Result<(), CommandError> {
        self.hub.subscribe_session(&self.state, topic, from).await
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
        self.state.queue.closing()
    }

    /// How long the client should wait before reconnecting, when the hub said so at the
    /// session's end (a shutdown spreads its clients' returns: [`crate::HubBuilder::reconnect_spread`]).
    /// A transport puts it in what it writes last: the WebSocket close reason
    /// ([`Session::close_text`]), the `close` frame ([`Outbox::close_frame`] does).
    pub fn retry_hint(&self) -> Option<Duration> {
        self.state.retry_hint()
    }

    /// The WebSocket close reason text for `reason`: the reason, with `;retry_ms=N` when the
    /// hub hints at a reconnection delay ([`livehub_protocol::CloseText`]).
    pub fn close_text(&self, reason: DisconnectReason) -> String {
        CloseText::new(reason, self.state.retry_hint_ms()).to_string()
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
        // Whatever its writer did not take no longer holds publishers back.
        self.state.queue.settle();
        inner.detach(self.state.id);
    }
}

/// Queue entries whose buffer an [`Outbox`] keeps between batches (1 KiB); a larger one, left
/// by a burst, is freed.
const SPARE_KEPT: usize = 64;

/// The transport's source of frames to write.
pub struct Outbox {
    pub(crate) inner: Arc<Inner>,
    pub(crate) state: Arc<SessionState>,
    /// Reused between batches so that draining allocates nothing in the steady state.
    spare: VecDeque<Item>,
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
        let mut relief = None;
        let mut notices: Vec<Arc<Shared>> = Vec::new();
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
            if let Some(c) = st.conflation.take() {
                // What was superseded is told before what superseded it.
                notices = c.notices();
            }
            relief = Some(st.drained(taken.len()));
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
        if let Some(relief) = relief {
            // Publishers pacing themselves wait for this.
            self.state.queue.drained(relief);
        }

        let codec = self.state.codec;
        let stats = &self.inner.stats;
        let mut bytes = 0;
        let notices = notices.into_iter().map(Item::Frame);
        for item in notices
            .chain(taken.drain(..))
            .chain(extra.into_iter().map(Item::Frame))
        {
            let shared = match item {
                Item::Frame(shared) => shared,
                Item::Superseded => continue,
                Item::Subscribed(marker) => {
                    out.push(Outgoing::Subscribed(SubscribedAt(marker)));
                    continue;
                }
            };
            match shared.encoded_ref(codec, || stats.count_encode(codec)) {
                Ok(encoded) => {
                    bytes += encoded.len();
                    out.push(Outgoing::Frame(OutFrame {
                        frame: shared,
                        codec,
                    }));
                }
                Err(e) => {
                    let what = match shared.frame() {
                        Frame::Message { topic, offset, .. } => format!("{topic}@{offset}"),
                        _ => "a frame".to_owned(),
                    };
                    let err = Shared::new(Frame::Error {
                        id: None,
                        code: ErrorCode::Undeliverable.into(),
                        message: format!("{what} cannot be sent as {}: {e}", codec.name()),
                    });
                    if let Ok(encoded) = err.encoded_ref(codec, || {}) {
                        bytes += encoded.len();
                        out.push(Outgoing::Frame(OutFrame { frame: err, codec }));
                    }
                }
            }
        }
        // A small buffer is kept for the next batch (no allocation in the steady state); a
        // burst's is given back, so that a session holds one queue's worth at most, not two.
        if taken.capacity() <= SPARE_KEPT {
            self.spare = taken;
        }
        Stats::add(&self.inner.stats.bytes_out, bytes as u64);
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
        // Only fixed strings and integers: encoding cannot fail.
        Frame::close_with_retry(reason, self.state.retry_hint_ms())
            .encode(self.state.codec)
            .unwrap_or_default()
    }

    /// The reconnection delay the hub hinted at when the session ended ([`Session::retry_hint`]).
    pub fn retry_hint(&self) -> Option<Duration> {
        self.state.retry_hint()
    }
}

impl fmt::Debug for Outbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Outbox")
            .field("session", &self.state.id)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_transport_batches_stays_two_words_per_frame() {
        // Every session's writer holds a batch of these: a frame is the shared frame and the
        // session's encoding, not a copy of the bytes' handle (measured in fan-out peak RSS).
        assert!(std::mem::size_of::<Outgoing>() <= 16);
        assert!(std::mem::size_of::<OutFrame>() <= 16);
        let f = OutFrame::opaque(Bytes::from_static(b"{}"));
        assert_eq!(f.bytes().as_ref(), b"{}");
        assert_eq!(f.clone().into_bytes(), Bytes::from_static(b"{}"));
    }
}
