//! Stable error codes, close reasons, and the errors of encoding and decoding.
//!
//! Every code here is part of the wire protocol (PROTOCOL.md): its string never changes.
//!
//! ## Known and unknown codes
//!
//! [`ErrorCode`] is the closed list this version knows, `Copy`, for the server to send and for
//! everyone to match on. A peer may be newer ("new error codes" are an additive change of
//! protocol v1), so what a client *receives* is a [`Code`]: a known [`ErrorCode`], or the string
//! of one it does not know, kept as it came. Treat an unknown code as a generic failure.

use std::borrow::Cow;
use std::fmt;

/// A stable error code: in `error` frames (the first group) and in the JSON bodies of HTTP
/// refusals (the second group, never in an `error` frame).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// The frame is not valid JSON / MessagePack, or not a map.
    BadFrame,
    /// A field is missing or has the wrong type.
    BadField,
    /// `type` names no operation.
    UnknownType,
    /// The topic name is empty, too long, or has characters outside the allowed set.
    BadTopic,
    /// The room name is empty, too long, or has characters outside the allowed set.
    BadRoom,
    /// The event name is empty or too long.
    BadEvent,
    /// The authorize hook refused the action (or, in a refusal, the credentials).
    Forbidden,
    /// `subscribe` to a topic the session already follows.
    AlreadySubscribed,
    /// `unsubscribe` or `presence` on a topic the session does not follow.
    NotSubscribed,
    /// `leave` or `presence` on a room the session is not in.
    NotMember,
    /// No handler is registered for the custom event.
    UnknownEvent,
    /// The custom event's handler failed.
    HandlerError,
    /// The session's subscription limit is reached.
    TooManySubscriptions,
    /// The session's room limit is reached.
    TooManyRooms,
    /// The hub's topic table is full.
    TooManyTopics,
    /// A message could not be encoded for the session's encoding.
    Undeliverable,
    /// Too many frames per second.
    RateLimited,
    /// A frame over the size limit.
    FrameTooLarge,
    /// The engine that carries messages between nodes cannot be reached now (publishing,
    /// subscribing and presence reads fail fast until it is back).
    EngineUnavailable,
    /// The engine answered with an error (out of memory, read-only, ...).
    EngineError,
    /// A message key that is empty, too long (the name limit, 128 bytes by default) or holds
    /// control characters; or `delete` without a key.
    BadKey,
    /// An `ack` answers no event waiting for one (already answered, timed out, or never asked).
    UnknownAck,
    /// A pattern that is malformed: empty segments, `**` anywhere but at the end, a segment
    /// mixing `*` with other characters, over the name limit or over 8 segments.
    BadPattern,
    /// A `psubscribe` over the session's limit of patterns (16 by default).
    TooManyPatterns,
    /// A `presence` page size (`limit`) of 0 or over the server's largest page.
    BadLimit,
    /// A server fault.
    Internal,

    // HTTP refusals (PROTOCOL.md: "Connecting", and the SSE and poll tables).
    /// Refusal: not a valid request (e.g. not a WebSocket upgrade).
    BadRequest,
    /// Refusal: an unknown or unsupported encoding.
    BadEncoding,
    /// Refusal: the authenticate hook found no valid credentials.
    Unauthorized,
    /// Refusal: the `Origin` header is not in the hub's allow-list.
    OriginNotAllowed,
    /// Refusal: a session limit is reached.
    TooManyConnections,
    /// Refusal: the server is shutting down.
    ShuttingDown,
    /// Refusal (SSE commands, poll): no such session.
    UnknownSession,
    /// Refusal (poll): a method other than `GET`, `POST`, `DELETE`.
    MethodNotAllowed,
    /// Refusal (SSE commands, poll): a command number that is not the one expected.
    BadSeq,
    /// A cursor that was never handed out: refusal (poll), or a `presence` `cursor` that is
    /// not one of a `presence` reply (an `error` frame).
    BadCursor,
    /// SSE `resume` event: a `Last-Event-ID` that is not an id of this stream.
    BadLastEventId,
}

impl ErrorCode {
    /// Every code, in declaration order.
    pub const ALL: [ErrorCode; 37] = [
        ErrorCode::BadFrame,
        ErrorCode::BadField,
        ErrorCode::UnknownType,
        ErrorCode::BadTopic,
        ErrorCode::BadRoom,
        ErrorCode::BadEvent,
        ErrorCode::Forbidden,
        ErrorCode::AlreadySubscribed,
        ErrorCode::NotSubscribed,
        ErrorCode::NotMember,
        ErrorCode::UnknownEvent,
        ErrorCode::HandlerError,
        ErrorCode::TooManySubscriptions,
        ErrorCode::TooManyRooms,
        ErrorCode::TooManyTopics,
        ErrorCode::Undeliverable,
        ErrorCode::RateLimited,
        ErrorCode::FrameTooLarge,
        ErrorCode::EngineUnavailable,
        ErrorCode::EngineError,
        ErrorCode::BadKey,
        ErrorCode::UnknownAck,
        ErrorCode::BadPattern,
        ErrorCode::TooManyPatterns,
        ErrorCode::BadLimit,
        ErrorCode::Internal,
        ErrorCode::BadRequest,
        ErrorCode::BadEncoding,
        ErrorCode::Unauthorized,
        ErrorCode::OriginNotAllowed,
        ErrorCode::TooManyConnections,
        ErrorCode::ShuttingDown,
        ErrorCode::UnknownSession,
        ErrorCode::MethodNotAllowed,
        ErrorCode::BadSeq,
        ErrorCode::BadCursor,
        ErrorCode::BadLastEventId,
    ];

    /// The code's wire string, e.g. `bad_topic`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadFrame => "bad_frame",
            ErrorCode::BadField => "bad_field",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::BadTopic => "bad_topic",
            ErrorCode::BadRoom => "bad_room",
            ErrorCode::BadEvent => "bad_event",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::AlreadySubscribed => "already_subscribed",
            ErrorCode::NotSubscribed => "not_subscribed",
            ErrorCode::NotMember => "not_member",
            ErrorCode::UnknownEvent => "unknown_event",
            ErrorCode::HandlerError => "handler_error",
            ErrorCode::TooManySubscriptions => "too_many_subscriptions",
            ErrorCode::TooManyRooms => "too_many_rooms",
            ErrorCode::TooManyTopics => "too_many_topics",
            ErrorCode::Undeliverable => "undeliverable",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::FrameTooLarge => "frame_too_large",
            ErrorCode::EngineUnavailable => "engine_unavailable",
            ErrorCode::EngineError => "engine_error",
            ErrorCode::BadKey => "bad_key",
            ErrorCode::UnknownAck => "unknown_ack",
            ErrorCode::BadPattern => "bad_pattern",
            ErrorCode::TooManyPatterns => "too_many_patterns",
            ErrorCode::BadLimit => "bad_limit",
            ErrorCode::Internal => "internal",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::BadEncoding => "bad_encoding",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::OriginNotAllowed => "origin_not_allowed",
            ErrorCode::TooManyConnections => "too_many_connections",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::UnknownSession => "unknown_session",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::BadSeq => "bad_seq",
            ErrorCode::BadCursor => "bad_cursor",
            ErrorCode::BadLastEventId => "bad_last_event_id",
        }
    }

    /// The code with this wire string; `None` for a string this version does not know.
    ///
    /// ```
    /// use livehub_protocol::ErrorCode;
    /// assert_eq!(ErrorCode::parse("not_subscribed"), Some(ErrorCode::NotSubscribed));
    /// assert_eq!(ErrorCode::parse("from_the_future"), None);
    /// ```
    pub fn parse(s: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.iter().copied().find(|c| c.as_str() == s)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error code as received: one this version knows, or the string of one it does not.
///
/// ```
/// use livehub_protocol::{Code, ErrorCode};
/// let known = Code::parse("forbidden");
/// assert_eq!(known, ErrorCode::Forbidden);
/// let unknown = Code::parse("quota_exceeded");
/// assert_eq!(unknown.known(), None);
/// assert_eq!(unknown.as_str(), "quota_exceeded");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Code {
    /// A code of [`ErrorCode`].
    Known(ErrorCode),
    /// A code this version does not know, as it came.
    Unknown(Box<str>),
}

impl Code {
    /// Reads a wire string.
    pub fn parse(s: &str) -> Code {
        match ErrorCode::parse(s) {
            Some(c) => Code::Known(c),
            None => Code::Unknown(s.into()),
        }
    }

    /// The wire string.
    pub fn as_str(&self) -> &str {
        match self {
            Code::Known(c) => c.as_str(),
            Code::Unknown(s) => s,
        }
    }

    /// The known code, if it is one.
    pub fn known(&self) -> Option<ErrorCode> {
        match self {
            Code::Known(c) => Some(*c),
            Code::Unknown(_) => None,
        }
    }
}

impl From<ErrorCode> for Code {
    fn from(c: ErrorCode) -> Code {
        Code::Known(c)
    }
}

impl PartialEq<ErrorCode> for Code {
    fn eq(&self, other: &ErrorCode) -> bool {
        self.known() == Some(*other)
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a session ended. Each reason has a stable string and a WebSocket close code
/// (PROTOCOL.md, "Closing").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DisconnectReason {
    /// The client (or the transport) ended the session.
    Normal,
    /// The hub is shutting down.
    Shutdown,
    /// The server disconnected the session.
    Kicked,
    /// The session's outgoing queue overflowed under the `disconnect` slow-consumer policy.
    SlowConsumer,
    /// Nothing was heard from the client within the heartbeat timeout.
    HeartbeatTimeout,
    /// The client flooded the hub past its rate limit.
    RateLimited,
    /// A frame over the size limit.
    FrameTooLarge,
    /// A text frame that is not UTF-8.
    BadData,
    /// The client broke the transport's protocol.
    ProtocolError,
    /// A server fault.
    Internal,
}

impl DisconnectReason {
    /// Every reason, in [`DisconnectReason::index`] order (a constant, to size arrays).
    pub const ALL: [DisconnectReason; 10] = [
        DisconnectReason::Normal,
        DisconnectReason::Shutdown,
        DisconnectReason::Kicked,
        DisconnectReason::SlowConsumer,
        DisconnectReason::HeartbeatTimeout,
        DisconnectReason::RateLimited,
        DisconnectReason::FrameTooLarge,
        DisconnectReason::BadData,
        DisconnectReason::ProtocolError,
        DisconnectReason::Internal,
    ];

    /// Every reason, in a stable order ([`DisconnectReason::index`]): e.g. to create one
    /// metrics counter per reason up front (a counter that appears only at its first increment
    /// hides that increment from `rate()`).
    ///
    /// ```
    /// use livehub_protocol::DisconnectReason;
    /// let names: Vec<&str> = DisconnectReason::all().iter().map(|r| r.as_str()).collect();
    /// assert!(names.contains(&"slow_consumer") && names.contains(&"heartbeat_timeout"));
    /// ```
    pub fn all() -> &'static [DisconnectReason] {
        &Self::ALL
    }

    /// This reason's place in [`DisconnectReason::all`], for arrays of counters.
    pub fn index(self) -> usize {
        Self::ALL
            .iter()
            .position(|r| *r == self)
            .unwrap_or(Self::ALL.len() - 1)
    }

    /// The stable reason string, e.g. `slow_consumer`.
    pub fn as_str(self) -> &'static str {
        match self {
            DisconnectReason::Normal => "normal",
            DisconnectReason::Shutdown => "shutdown",
            DisconnectReason::Kicked => "kicked",
            DisconnectReason::SlowConsumer => "slow_consumer",
            DisconnectReason::HeartbeatTimeout => "heartbeat_timeout",
            DisconnectReason::RateLimited => "rate_limited",
            DisconnectReason::FrameTooLarge => "frame_too_large",
            DisconnectReason::BadData => "bad_data",
            DisconnectReason::ProtocolError => "protocol_error",
            DisconnectReason::Internal => "internal",
        }
    }

    /// The WebSocket close code for this reason.
    pub fn close_code(self) -> u16 {
        match self {
            DisconnectReason::Normal => 1000,
            DisconnectReason::Shutdown => 1001,
            DisconnectReason::ProtocolError => 1002,
            DisconnectReason::BadData => 1007,
            DisconnectReason::Kicked
            | DisconnectReason::SlowConsumer
            | DisconnectReason::RateLimited => 1008,
            DisconnectReason::FrameTooLarge => 1009,
            DisconnectReason::Internal => 1011,
            DisconnectReason::HeartbeatTimeout => 4000,
        }
    }

    /// The reason with this string; `None` for anything else.
    pub fn parse(reason: &str) -> Option<DisconnectReason> {
        Self::ALL.iter().copied().find(|r| r.as_str() == reason)
    }

    /// The reason of a close (a WebSocket close frame, or a `close` frame): the reason string
    /// when it names a reason of that close code; else the one reason the code stands for, if
    /// it stands for only one (1008 stands for three: without a known reason string it is
    /// `None`). A close with an unknown code is `None`.
    ///
    /// ```
    /// use livehub_protocol::DisconnectReason;
    /// assert_eq!(DisconnectReason::from_close(1008, "kicked"), Some(DisconnectReason::Kicked));
    /// assert_eq!(DisconnectReason::from_close(1001, ""), Some(DisconnectReason::Shutdown));
    /// assert_eq!(DisconnectReason::from_close(1008, "bye"), None);
    /// assert_eq!(DisconnectReason::from_close(1000, "kicked"), Some(DisconnectReason::Normal));
    /// ```
    pub fn from_close(code: u16, reason: &str) -> Option<DisconnectReason> {
        let reason = CloseText::parse(reason).reason;
        if let Some(r) = Self::parse(reason) {
            if r.close_code() == code {
                return Some(r);
            }
        }
        let mut of_code = Self::ALL.iter().filter(|r| r.close_code() == code);
        match (of_code.next(), of_code.next()) {
            (Some(r), None) => Some(*r),
            _ => None,
        }
    }
}

/// A WebSocket close frame's reason text: the reason, then optional parameters after `;`
/// (`shutdown;retry_ms=2350`). The only parameter defined is `retry_ms`, how long the client
/// should wait before reconnecting; unknown parameters are ignored.
///
/// ```
/// use livehub_protocol::{CloseText, DisconnectReason};
/// let text = CloseText::new(DisconnectReason::Shutdown, Some(2350)).to_string();
/// assert_eq!(text, "shutdown;retry_ms=2350");
/// let parsed = CloseText::parse(&text);
/// assert_eq!((parsed.reason, parsed.retry_ms), ("shutdown", Some(2350)));
/// assert_eq!(CloseText::parse("kicked").retry_ms, None);
/// assert_eq!(CloseText::parse("shutdown;x=1;retry_ms=oops").retry_ms, None);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseText<'a> {
    /// The reason string (the part before the first `;`).
    pub reason: &'a str,
    /// The reconnection delay the server asks for, in milliseconds.
    pub retry_ms: Option<u64>,
}

impl<'a> CloseText<'a> {
    /// The text for a reason and an optional delay.
    pub fn new(reason: DisconnectReason, retry_ms: Option<u64>) -> CloseText<'static> {
        CloseText {
            reason: reason.as_str(),
            retry_ms,
        }
    }

    /// Reads a close reason text; never fails (a text without `;` is all reason). Parameters
    /// are `name=value`; a `retry_ms` whose value is not a whole number of milliseconds is
    /// ignored (the last valid one counts).
    pub fn parse(text: &'a str) -> CloseText<'a> {
        let mut parts = text.split(';');
        let reason = parts.next().unwrap_or_default().trim();
        let retry_ms = parts
            .filter_map(|p| p.split_once('='))
            .filter(|(k, _)| k.trim() == "retry_ms")
            .map(|(_, v)| v.trim())
            .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
            .filter_map(|v| v.parse().ok())
            .next_back();
        CloseText { reason, retry_ms }
    }
}

impl fmt::Display for CloseText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason)?;
        if let Some(ms) = self.retry_ms {
            write!(f, ";retry_ms={ms}")?;
        }
        Ok(())
    }
}

impl fmt::Display for DisconnectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A value or frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct DecodeError {
    code: ErrorCode,
    message: Cow<'static, str>,
}

impl DecodeError {
    /// The stable code: `bad_frame` when the bytes are not the encoding at all (or not a map),
    /// `bad_field` when they are but a field is missing or of the wrong type, `unknown_type`
    /// for a client frame whose `type` names no operation.
    pub fn code(&self) -> ErrorCode {
        self.code
    }

    /// A human-readable description (not stable).
    pub fn message(&self) -> &str {
        &self.message
    }

    pub(crate) fn new(code: ErrorCode, message: impl Into<Cow<'static, str>>) -> DecodeError {
        DecodeError {
            code,
            message: message.into(),
        }
    }

    pub(crate) fn frame(message: impl Into<Cow<'static, str>>) -> DecodeError {
        DecodeError::new(ErrorCode::BadFrame, message)
    }

    pub(crate) fn field(message: impl Into<Cow<'static, str>>) -> DecodeError {
        DecodeError::new(ErrorCode::BadField, message)
    }

    pub(crate) fn from_json(e: serde_json::Error) -> DecodeError {
        use serde_json::error::Category;
        match e.classify() {
            Category::Data => DecodeError::field(e.to_string()),
            Category::Io | Category::Syntax | Category::Eof => DecodeError::frame(e.to_string()),
        }
    }

    pub(crate) fn from_msgpack(e: rmp_serde::decode::Error) -> DecodeError {
        use rmp_serde::decode::Error as E;
        match e {
            E::InvalidMarkerRead(_) | E::InvalidDataRead(_) | E::DepthLimitExceeded => {
                DecodeError::frame(e.to_string())
            }
            _ => DecodeError::field(e.to_string()),
        }
    }
}

/// A value or frame could not be encoded (for example a MessagePack map with non-string keys
/// shown to a JSON reader).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot encode: {0}")]
pub struct EncodeError(String);

impl EncodeError {
    pub(crate) fn new(e: impl fmt::Display) -> EncodeError {
        EncodeError(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_parses_back() {
        for c in ErrorCode::ALL {
            assert_eq!(ErrorCode::parse(c.as_str()), Some(c));
            assert_eq!(Code::parse(c.as_str()), Code::Known(c));
        }
        let mut names: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(
            names.len(),
            ErrorCode::ALL.len(),
            "two codes share a string"
        );
    }

    #[test]
    fn every_reason_parses_back_from_its_close() {
        for (i, r) in DisconnectReason::all().iter().enumerate() {
            assert_eq!(r.index(), i);
            assert_eq!(DisconnectReason::parse(r.as_str()), Some(*r));
            assert_eq!(
                DisconnectReason::from_close(r.close_code(), r.as_str()),
                Some(*r)
            );
        }
        assert_eq!(
            DisconnectReason::from_close(4000, ""),
            Some(DisconnectReason::HeartbeatTimeout)
        );
        assert_eq!(DisconnectReason::from_close(1008, ""), None);
        assert_eq!(DisconnectReason::from_close(4999, "kicked"), None);
        assert_eq!(DisconnectReason::parse("Kicked"), None);
    }
}
