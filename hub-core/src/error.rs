//! Errors, stable error codes and disconnect reasons.
//!
//! Every code here is part of the wire protocol (PROTOCOL.md): its string never changes.

use std::fmt;

use crate::broker::BrokerError;

/// A stable error code sent to clients in `error` frames (and in HTTP refusal bodies).
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
    /// The authorize hook refused the action.
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
    /// A server fault.
    Internal,
}

impl ErrorCode {
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
            ErrorCode::Internal => "internal",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a session ended. Each reason has a stable code and a WebSocket close code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DisconnectReason {
    /// The client (or the transport) ended the session.
    Normal,
    /// The hub is shutting down.
    Shutdown,
    /// The server disconnected the session ([`crate::Hub::disconnect`]).
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
    /// All reasons, in index order (used by counters).
    pub(crate) const ALL: [DisconnectReason; 10] = [
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

    /// Every reason, in a stable order: e.g. to create one metrics counter per reason up front
    /// (a counter that appears only at its first increment hides that increment from `rate()`).
    ///
    /// ```
    /// use hub_core::DisconnectReason;
    /// let names: Vec<&str> = DisconnectReason::all().iter().map(|r| r.as_str()).collect();
    /// assert!(names.contains(&"slow_consumer") && names.contains(&"heartbeat_timeout"));
    /// ```
    pub fn all() -> &'static [DisconnectReason] {
        &Self::ALL
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

    /// The WebSocket close code for this reason (PROTOCOL.md, "Closing").
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

    /// Whether queued frames are still worth sending before the session ends. A session that
    /// is stalled or gone is aborted instead.
    pub(crate) fn flushes(self) -> bool {
        matches!(
            self,
            DisconnectReason::Normal | DisconnectReason::Shutdown | DisconnectReason::Kicked
        )
    }

    pub(crate) fn index(self) -> usize {
        DisconnectReason::ALL
            .iter()
            .position(|r| *r == self)
            .unwrap_or(DisconnectReason::ALL.len() - 1)
    }
}

impl fmt::Display for DisconnectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A value could not be decoded.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code}: {message}")]
pub struct DecodeError {
    code: ErrorCode,
    message: String,
}

impl DecodeError {
    /// The stable code: `bad_frame` when the bytes are not the encoding at all, `bad_field`
    /// when they are but a field is missing or of the wrong type.
    pub fn code(&self) -> ErrorCode {
        self.code
    }

    /// A human-readable description (not stable).
    pub fn message(&self) -> &str {
        &self.message
    }

    pub(crate) fn frame(message: impl Into<String>) -> DecodeError {
        DecodeError {
            code: ErrorCode::BadFrame,
            message: message.into(),
        }
    }

    pub(crate) fn field(message: impl Into<String>) -> DecodeError {
        DecodeError {
            code: ErrorCode::BadField,
            message: message.into(),
        }
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

/// A value could not be encoded (for example a MessagePack map with non-string keys shown to a
/// JSON client).
#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot encode: {0}")]
pub struct EncodeError(String);

impl EncodeError {
    pub(crate) fn new(e: impl fmt::Display) -> EncodeError {
        EncodeError(e.to_string())
    }
}

/// A connection refused before a session exists. Transports turn it into an HTTP response with
/// [`Rejection::status`] and a JSON body `{"code": .., "message": ..}`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{status} {code}: {message}")]
pub struct Rejection {
    status: u16,
    code: &'static str,
    message: String,
}

impl Rejection {
    /// 400 with a transport's own code (e.g. `bad_request`, `bad_encoding`).
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Rejection {
        Rejection {
            status: 400,
            code,
            message: message.into(),
        }
    }

    /// 401 `unauthorized`: no valid credentials.
    pub fn unauthorized(message: impl Into<String>) -> Rejection {
        Rejection {
            status: 401,
            code: "unauthorized",
            message: message.into(),
        }
    }

    /// 403 `forbidden`: credentials refused.
    pub fn forbidden(message: impl Into<String>) -> Rejection {
        Rejection {
            status: 403,
            code: "forbidden",
            message: message.into(),
        }
    }

    /// 403 `origin_not_allowed`: the browser's `Origin` is not in the allow-list.
    pub fn origin_not_allowed(origin: &str) -> Rejection {
        Rejection {
            status: 403,
            code: "origin_not_allowed",
            message: format!("origin {origin:?} is not allowed"),
        }
    }

    /// 503 `too_many_connections`: a connection limit is reached.
    pub fn too_many_connections(message: impl Into<String>) -> Rejection {
        Rejection {
            status: 503,
            code: "too_many_connections",
            message: message.into(),
        }
    }

    /// 503 `shutting_down`: the hub no longer accepts sessions.
    pub fn shutting_down() -> Rejection {
        Rejection {
            status: 503,
            code: "shutting_down",
            message: "the hub is shutting down".into(),
        }
    }

    /// The HTTP status to answer with.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The stable code.
    pub fn code(&self) -> &'static str {
        self.code
    }

    /// A human-readable description.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The JSON body transports send with the status.
    pub fn body(&self) -> String {
        serde_json::json!({"code": self.code, "message": self.message}).to_string()
    }
}

/// A server-side publish or send failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The topic or room name is invalid.
    #[error("{0}")]
    BadName(ErrorCode),
    /// The value could not be encoded.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// The engine refused or could not be reached (`engine_unavailable`, `engine_error`,
    /// `too_many_topics`).
    #[error(transparent)]
    Engine(#[from] BrokerError),
}

impl SendError {
    /// The stable code for this failure.
    pub fn code(&self) -> ErrorCode {
        match self {
            SendError::BadName(code) => *code,
            SendError::Encode(_) => ErrorCode::Undeliverable,
            SendError::Engine(e) => e.code(),
        }
    }

    /// Whether the engine could not be reached: worth trying again later.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, SendError::Engine(BrokerError::Unavailable(_)))
    }
}

/// A server-side room operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RoomError {
    /// The room name is invalid.
    #[error("bad room name")]
    BadRoom,
    /// No such session (it has closed, or never existed).
    #[error("no such session")]
    NoSession,
    /// The session's room limit is reached.
    #[error("too many rooms")]
    TooManyRooms,
    /// The engine could not be reached (the node must hear the room's channel).
    #[error(transparent)]
    Engine(BrokerError),
}

/// A custom event handler failed. Its message reaches the client in a `handler_error` frame.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct HandlerError(String);

impl HandlerError {
    /// A failure with a message for the client.
    pub fn new(message: impl Into<String>) -> HandlerError {
        HandlerError(message.into())
    }
}

impl From<DecodeError> for HandlerError {
    fn from(e: DecodeError) -> Self {
        HandlerError(e.to_string())
    }
}

impl From<SendError> for HandlerError {
    fn from(e: SendError) -> Self {
        HandlerError(e.to_string())
    }
}

impl From<RoomError> for HandlerError {
    fn from(e: RoomError) -> Self {
        HandlerError(e.to_string())
    }
}

impl From<EncodeError> for HandlerError {
    fn from(e: EncodeError) -> Self {
        HandlerError(e.to_string())
    }
}
