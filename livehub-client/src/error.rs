//! The client's errors: what the server answered, what the network did, what the client
//! refused to do.

use livehub_protocol::{Code, DecodeError, EncodeError, ErrorCode};

/// Why an operation of the client failed.
///
/// Cheap to clone (it holds strings), so that one cause can be handed to every waiter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The server answered the request with an `error` frame (`forbidden`, `not_subscribed`,
    /// ...). [`Code::Unknown`] keeps a code this version does not know.
    #[error("{code}: {message}")]
    Server {
        /// The stable code.
        code: Code,
        /// For humans; not stable.
        message: String,
    },
    /// The server refused the connection with an HTTP status before the upgrade (PROTOCOL.md,
    /// "Connecting"), with the code and message of its JSON body.
    #[error("refused with {status} {code}: {message}")]
    Refused {
        /// The HTTP status (401, 403, 503, ...).
        status: u16,
        /// The body's `code` (`unauthorized`, `shutting_down`, ...), or an empty unknown code
        /// when the body is not the hub's JSON.
        code: Code,
        /// The body's `message`.
        message: String,
    },
    /// The server ended the session for good (close 1008 `kicked`): the client does not come
    /// back.
    #[error("kicked by the server (close {code} {reason})")]
    Kicked {
        /// The WebSocket close code.
        code: u16,
        /// The close reason.
        reason: String,
    },
    /// No answer within the ack timeout. The request may still run on the server.
    #[error("no answer within the timeout")]
    Timeout,
    /// The connection was lost while the request was in flight: it may or may not have run.
    #[error("the connection was lost before the answer")]
    ConnectionLost,
    /// Nothing was sent: the client is offline and its queue of requests is full, or too many
    /// requests are in flight ([`crate::ClientBuilder::offline_queue`],
    /// [`crate::ClientBuilder::max_in_flight`]).
    #[error("too many requests waiting (offline queue or in flight)")]
    QueueFull,
    /// The client is closed: by [`crate::Client::close`], or for good by the server
    /// ([`crate::Client::closed`] says why).
    #[error("the client is closed")]
    Closed,
    /// The server could not be reached (address, TCP, WebSocket handshake, no `welcome` in
    /// time).
    #[error("cannot connect: {0}")]
    Connect(String),
    /// The server broke the protocol (an answer of the wrong shape, a bad `welcome`).
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The application's value could not be encoded.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// An answer could not be decoded into the type asked for.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The URL or a header given to the builder is not valid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// This event was already answered (by this or another clone of its [`crate::Ack`]):
    /// nothing was sent.
    #[error("this event is already answered")]
    AlreadyAnswered,
}

impl Error {
    /// The server's code, for [`Error::Server`] and [`Error::Refused`].
    pub fn code(&self) -> Option<&Code> {
        match self {
            Error::Server { code, .. } | Error::Refused { code, .. } => Some(code),
            _ => None,
        }
    }

    /// Whether this is the server's error with `code`.
    ///
    /// ```
    /// use livehub_client::{Error, ErrorCode};
    /// let e = Error::Server { code: ErrorCode::Forbidden.into(), message: "no".into() };
    /// assert!(e.is(ErrorCode::Forbidden));
    /// assert!(!Error::Timeout.is(ErrorCode::Forbidden));
    /// ```
    pub fn is(&self, code: ErrorCode) -> bool {
        self.code().is_some_and(|c| *c == code)
    }

    /// A refusal the client should not retry: the credentials, the origin, the URL or the
    /// encoding are wrong (4xx other than 408 and 429). Capacity refusals (503) are retried.
    pub(crate) fn is_permanent_refusal(&self) -> bool {
        matches!(self, Error::Refused { status, .. }
            if (400..500).contains(status) && *status != 408 && *status != 429)
    }
}
