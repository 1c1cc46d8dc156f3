//! Errors of the host's operations, and (from `livehub-protocol`) the stable error codes and
//! disconnect reasons of the wire protocol (PROTOCOL.md): their strings never change.

use crate::broker::BrokerError;

pub use livehub_protocol::{CloseText, DecodeError, DisconnectReason, EncodeError, ErrorCode};

/// Whether queued frames are still worth sending before a session ends for `reason`. A session
/// that is stalled or gone is aborted instead.
pub(crate) fn flushes(reason: DisconnectReason) -> bool {
    matches!(
        reason,
        DisconnectReason::Normal | DisconnectReason::Shutdown | DisconnectReason::Kicked
    )
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

    /// 503 `peer_unknown`: the hub limits sessions per client address
    /// ([`crate::HubBuilder::max_connections_per_ip`]) but the transport could not tell this
    /// client's address (a server misconfiguration, not the client's fault).
    pub fn peer_unknown() -> Rejection {
        Rejection {
            status: 503,
            code: "peer_unknown",
            message: "the server limits sessions per client address but cannot see this \
                      client's address"
                .into(),
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

/// An event sent with [`crate::Hub::emit_with_ack`] got no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AckError {
    /// No such session (it has closed, or never existed).
    #[error("no such session")]
    NoSession,
    /// No answer within the timeout.
    #[error("no answer in time")]
    Timeout,
    /// The session ended (or could not be sent the event) before it answered.
    #[error("the session ended before it answered")]
    Disconnected,
    /// The session owes too many answers already (64), or the node waits for too many.
    #[error("too many answers awaited")]
    TooMany,
    /// The event name is invalid.
    #[error("{0}")]
    BadName(ErrorCode),
    /// The value could not be encoded.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// The engine could not carry the event to the session's node.
    #[error(transparent)]
    Engine(BrokerError),
}

impl AckError {
    /// A short stable name of the failure (`no_session`, `timeout`, `disconnected`,
    /// `too_many`, ...), as nodes tell each other.
    pub fn code_str(&self) -> &'static str {
        match self {
            AckError::NoSession => "no_session",
            AckError::Timeout => "timeout",
            AckError::Disconnected => "disconnected",
            AckError::TooMany => "too_many",
            AckError::BadName(_) => "bad_event",
            AckError::Encode(_) => "undeliverable",
            AckError::Engine(_) => "engine_unavailable",
        }
    }

    pub(crate) fn from_code_str(s: &str) -> AckError {
        match s {
            "no_session" => AckError::NoSession,
            "timeout" => AckError::Timeout,
            "too_many" => AckError::TooMany,
            _ => AckError::Disconnected,
        }
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
