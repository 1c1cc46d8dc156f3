//! Wire frames, from `livehub-protocol`: what the server sends ([`Frame`], encoded at most once per
//! encoding and shared through [`Shared`]), and what a transport is told of each.

use std::sync::Arc;

pub(crate) use livehub_protocol::{GapReason, Scope, ServerFrame as Frame, Shared};

use crate::broker::Position;

/// What kind of frame a transport is handed ([`crate::OutFrame::kind`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FrameKind {
    /// `welcome`, the first frame of every session.
    Welcome,
    /// `message`: a topic's message.
    Message,
    /// `event`: a room or direct event.
    Event,
    /// `reply` to a request.
    Reply,
    /// `error`.
    Error,
    /// `gap`: messages that will not arrive.
    Gap,
    /// `dropped`: events dropped for a slow reader.
    Dropped,
    /// `join` (presence).
    Join,
    /// `leave` (presence).
    Leave,
    /// `pong`.
    Pong,
    /// `close` (for transports without close frames).
    Close,
    /// A frame of another kind (the SSE-only `session` frame, should a transport queue it).
    Other,
}

impl FrameKind {
    /// The kind of a frame.
    pub(crate) fn of(frame: &Frame) -> FrameKind {
        match frame {
            Frame::Welcome { .. } => FrameKind::Welcome,
            Frame::Message { .. } => FrameKind::Message,
            Frame::Event { .. } => FrameKind::Event,
            Frame::Reply { .. } => FrameKind::Reply,
            Frame::Error { .. } => FrameKind::Error,
            Frame::Gap { .. } => FrameKind::Gap,
            Frame::Dropped { .. } => FrameKind::Dropped,
            Frame::Presence { join: true, .. } => FrameKind::Join,
            Frame::Presence { join: false, .. } => FrameKind::Leave,
            Frame::Pong { .. } => FrameKind::Pong,
            Frame::Close { .. } => FrameKind::Close,
            _ => FrameKind::Other,
        }
    }

    /// The frame's `type` on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            FrameKind::Welcome => "welcome",
            FrameKind::Message => "message",
            FrameKind::Event => "event",
            FrameKind::Reply => "reply",
            FrameKind::Error => "error",
            FrameKind::Gap => "gap",
            FrameKind::Dropped => "dropped",
            FrameKind::Join => "join",
            FrameKind::Leave => "leave",
            FrameKind::Pong => "pong",
            FrameKind::Close => "close",
            FrameKind::Other => "other",
        }
    }
}

/// About what a frame weighs in a queue (its payload and names, plus a frame's fixed
/// overhead), known before it is encoded: what the queue's byte bound counts.
pub(crate) fn weight(frame: &Frame) -> usize {
    const FIXED: usize = 48;
    FIXED
        + match frame {
            Frame::Message {
                topic, epoch, data, ..
            } => topic.len() + epoch.len() + data.as_bytes().len(),
            Frame::Event { event, data, .. } => event.len() + data.as_bytes().len(),
            Frame::Reply { data, .. } => data.as_bytes().len(),
            Frame::Error { message, .. } => message.len(),
            Frame::Gap { topic, epoch, .. } => topic.len() + epoch.len(),
            Frame::Presence { scope, member, .. } => scope.name().len() + member.user.len() + 64,
            _ => 0,
        }
}

/// What a session's queue holds: frames to write, and markers for the transport.
#[derive(Debug, Clone)]
pub(crate) enum Item {
    Frame(Arc<Shared>),
    /// Not a wire frame: tells the transport where a new subscription starts (what a resume
    /// must name if nothing else of the topic arrives). Placed just before the `subscribe`
    /// reply and anything recovered. Writes nothing.
    Subscribed(Arc<(Arc<str>, Position)>),
    /// A message superseded by a newer one of the same key while its session fell behind (a
    /// conflated subscription): written as nothing; its place keeps the others' in order.
    Superseded,
}
