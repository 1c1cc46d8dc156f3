//! Server-to-client frames: built and encoded by the server (once per encoding, shared by every
//! receiver), decoded leniently by clients.

use std::borrow::Cow;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use serde::Deserialize;

use crate::codec::{Codec, Payload};
use crate::error::{Code, DecodeError, DisconnectReason, EncodeError};
use crate::types::{GapReason, Member, Scope, SessionId};
use crate::wire::{self, Capture, MsgPackData, Val};

/// The protocol version this crate speaks (`welcome.protocol`, the `v1` of the subprotocols).
pub const PROTOCOL_VERSION: u64 = 1;

/// A frame the server sends (PROTOCOL.md, "Server to client").
///
/// ## Encoding
///
/// [`ServerFrame::encode`] writes the fields in a fixed order, `type` first, and splices a
/// [`Payload`] in as it is when it already is in the target encoding. [`Shared`] makes each
/// encoding at most once for a frame that many sessions receive.
///
/// ## Decoding
///
/// [`ServerFrame::decode`] is for clients, and lenient the way PROTOCOL.md asks: unknown fields
/// are ignored, and a `type` this version does not know decodes to [`ServerFrame::Unknown`],
/// never to an error. A known `type` whose fields are missing or ill-typed is an error
/// (`bad_field`); bytes that are not one map are `bad_frame`. A frame's `data` is kept as a
/// [`Payload`] without building a tree: a slice of the input for JSON, and converted
/// (MessagePack to MessagePack, value by value) for MessagePack.
///
/// ```
/// use bytes::Bytes;
/// use livehub_protocol::{Codec, ServerFrame};
///
/// let bytes = Bytes::from_static(
///     br#"{"type":"message","topic":"scores","epoch":"e1","offset":3,"data":{"home":1}}"#,
/// );
/// let frame = ServerFrame::decode(Codec::Json, &bytes).unwrap();
/// let ServerFrame::Message { topic, offset, data, .. } = &frame else { panic!() };
/// assert_eq!((&**topic, *offset), ("scores", 3));
/// assert_eq!(data.as_bytes().as_ref(), br#"{"home":1}"#);
/// assert_eq!(frame.encode(Codec::Json).unwrap(), bytes);
///
/// let future = Bytes::from_static(br#"{"type":"hologram","depth":3}"#);
/// assert!(matches!(
///     ServerFrame::decode(Codec::Json, &future),
///     Ok(ServerFrame::Unknown { kind }) if kind == "hologram"
/// ));
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ServerFrame {
    /// `welcome`: the first frame of every session (`protocol` is always [`PROTOCOL_VERSION`]).
    Welcome {
        /// This session's public id.
        session: SessionId,
        /// The session's encoding.
        encoding: Codec,
        /// How often the server pings.
        heartbeat_ms: u64,
        /// How long the server waits for life before closing the session.
        timeout_ms: u64,
    },
    /// `message`: a message published to a topic the session follows.
    Message {
        /// The topic.
        topic: Arc<str>,
        /// The stream's epoch.
        epoch: Arc<str>,
        /// The message's offset in the epoch.
        offset: u64,
        /// The application data.
        data: Payload,
        /// The key the publisher gave (`match:7`): on a conflated subscription that falls
        /// behind, only the newest message per key is kept.
        key: Option<Arc<str>>,
        /// The publisher marked it as the deletion of its key (never conflated away).
        delete: bool,
    },
    /// `event`: an event the server sent to the session, directly or to a room.
    Event {
        /// The event's name.
        event: Arc<str>,
        /// The application data.
        data: Payload,
        /// The server waits for an answer: the client sends an `ack` frame with this number.
        ack: Option<u64>,
    },
    /// `reply`: success of the request `id`.
    Reply {
        /// The request's id.
        id: u64,
        /// The answer.
        data: Payload,
    },
    /// `error`: a request failed, or a frame could not be understood.
    Error {
        /// The failed request's id, if it had a readable one.
        id: Option<u64>,
        /// The stable code.
        code: Code,
        /// For humans; not stable.
        message: String,
    },
    /// `gap`: offsets `from..=to` of `epoch` will not reach the session.
    Gap {
        /// The topic.
        topic: Arc<str>,
        /// The epoch the offsets belong to (the stream's current one).
        epoch: Arc<str>,
        /// First lost offset (0 with [`GapReason::Epoch`]).
        from: u64,
        /// Last lost offset (0 with [`GapReason::Epoch`]).
        to: u64,
        /// Why.
        reason: GapReason,
    },
    /// `dropped`: events without positions dropped because the session read too slowly.
    Dropped {
        /// How many.
        count: u64,
    },
    /// `join` (`join: true`) or `leave`: someone came to or left a topic or room.
    Presence {
        /// `join` or `leave`.
        join: bool,
        /// The topic or room.
        scope: Scope,
        /// Who.
        member: Member,
    },
    /// `pong`: the answer to a `ping`.
    Pong {
        /// The ping's id.
        id: Option<u64>,
    },
    /// `close`: the server is ending the session (transports without close frames).
    Close {
        /// The WebSocket close code of the reason.
        code: u16,
        /// The reason string.
        reason: Cow<'static, str>,
        /// How long the client should wait before reconnecting, in milliseconds (a server
        /// that is shutting down spreads its clients' returns with it); absent: the client's
        /// own backoff.
        retry_ms: Option<u64>,
    },
    /// `session` (SSE only): the stream's session, its command token and where to post
    /// commands.
    Session {
        /// The session's public id.
        session: SessionId,
        /// The secret command token.
        token: String,
        /// The URL to `POST` commands to.
        commands: String,
    },
    /// A frame of a `type` this version does not know (decoded only, never encoded).
    Unknown {
        /// Its `type`.
        kind: String,
    },
}

impl ServerFrame {
    /// The `close` frame of a reason.
    pub fn close(reason: DisconnectReason) -> ServerFrame {
        ServerFrame::Close {
            code: reason.close_code(),
            reason: Cow::Borrowed(reason.as_str()),
            retry_ms: None,
        }
    }

    /// The `close` frame of a reason, with a reconnection delay hint (`retry_ms`).
    pub fn close_with_retry(reason: DisconnectReason, retry_ms: Option<u64>) -> ServerFrame {
        ServerFrame::Close {
            code: reason.close_code(),
            reason: Cow::Borrowed(reason.as_str()),
            retry_ms,
        }
    }

    /// The frame's `type`.
    pub fn kind(&self) -> &str {
        match self {
            ServerFrame::Welcome { .. } => "welcome",
            ServerFrame::Message { .. } => "message",
            ServerFrame::Event { .. } => "event",
            ServerFrame::Reply { .. } => "reply",
            ServerFrame::Error { .. } => "error",
            ServerFrame::Gap { .. } => "gap",
            ServerFrame::Dropped { .. } => "dropped",
            ServerFrame::Presence { join: true, .. } => "join",
            ServerFrame::Presence { join: false, .. } => "leave",
            ServerFrame::Pong { .. } => "pong",
            ServerFrame::Close { .. } => "close",
            ServerFrame::Session { .. } => "session",
            ServerFrame::Unknown { kind } => kind,
        }
    }

    /// The frame's fields in wire order (`type` first); `None` for [`ServerFrame::Unknown`].
    fn fields(&self) -> Option<Vec<(&'static str, Val<'_>)>> {
        use Val::*;
        let mut f = Vec::with_capacity(6);
        match self {
            ServerFrame::Welcome {
                session,
                encoding,
                heartbeat_ms,
                timeout_ms,
            } => {
                f.push(("type", Str("welcome")));
                f.push(("session", Session(*session)));
                f.push(("protocol", U64(PROTOCOL_VERSION)));
                f.push(("encoding", Str(encoding.name())));
                f.push(("heartbeat_ms", U64(*heartbeat_ms)));
                f.push(("timeout_ms", U64(*timeout_ms)));
            }
            ServerFrame::Message {
                topic,
                epoch,
                offset,
                data,
                key,
                delete,
            } => {
                f.push(("type", Str("message")));
                f.push(("topic", Str(topic)));
                f.push(("epoch", Str(epoch)));
                f.push(("offset", U64(*offset)));
                // `data` last: a reader can find the other fields without scanning the payload.
                if let Some(key) = key {
                    f.push(("key", Str(key)));
                }
                if *delete {
                    f.push(("delete", Bool(true)));
                }
                f.push(("data", Raw(data)));
            }
            ServerFrame::Event { event, data, ack } => {
                f.push(("type", Str("event")));
                f.push(("event", Str(event)));
                f.push(("data", Raw(data)));
                if let Some(ack) = ack {
                    f.push(("ack", U64(*ack)));
                }
            }
            ServerFrame::Reply { id, data } => {
                f.push(("type", Str("reply")));
                f.push(("id", U64(*id)));
                f.push(("data", Raw(data)));
            }
            ServerFrame::Error { id, code, message } => {
                f.push(("type", Str("error")));
                if let Some(id) = id {
                    f.push(("id", U64(*id)));
                }
                f.push(("code", Str(code.as_str())));
                f.push(("message", Str(message)));
            }
            ServerFrame::Gap {
                topic,
                epoch,
                from,
                to,
                reason,
            } => {
                f.push(("type", Str("gap")));
                f.push(("topic", Str(topic)));
                f.push(("epoch", Str(epoch)));
                f.push(("from", U64(*from)));
                f.push(("to", U64(*to)));
                f.push(("reason", Str(reason.as_str())));
            }
            ServerFrame::Dropped { count } => {
                f.push(("type", Str("dropped")));
                f.push(("count", U64(*count)));
            }
            ServerFrame::Presence {
                join,
                scope,
                member,
            } => {
                f.push(("type", Str(if *join { "join" } else { "leave" })));
                f.push((scope.field(), Str(scope.name())));
                // The order of `Member`'s fields (and of PROTOCOL.md's examples).
                f.push((
                    "member",
                    Map(vec![
                        ("session", Session(member.session)),
                        ("user", Str(&member.user)),
                        ("meta", Json(&member.meta)),
                    ]),
                ));
            }
            ServerFrame::Pong { id } => {
                f.push(("type", Str("pong")));
                if let Some(id) = id {
                    f.push(("id", U64(*id)));
                }
            }
            ServerFrame::Close {
                code,
                reason,
                retry_ms,
            } => {
                f.push(("type", Str("close")));
                f.push(("code", U64(u64::from(*code))));
                f.push(("reason", Str(reason)));
                if let Some(ms) = retry_ms {
                    f.push(("retry_ms", U64(*ms)));
                }
            }
            ServerFrame::Session {
                session,
                token,
                commands,
            } => {
                f.push(("type", Str("session")));
                f.push(("session", Session(*session)));
                f.push(("token", Str(token)));
                f.push(("commands", Str(commands)));
            }
            ServerFrame::Unknown { .. } => return None,
        }
        Some(f)
    }

    /// Encodes the frame. A payload already in `codec` is copied in as it is, never re-encoded;
    /// one in the other encoding is converted (which fails for a MessagePack map with
    /// non-string keys shown to JSON). [`ServerFrame::Unknown`] cannot be encoded.
    pub fn encode(&self, codec: Codec) -> Result<Bytes, EncodeError> {
        let fields = self
            .fields()
            .ok_or_else(|| EncodeError::new("a frame of unknown type cannot be encoded"))?;
        wire::encode(codec, &fields)
    }

    /// Decodes one frame from the server (see "Decoding" above).
    pub fn decode(codec: Codec, bytes: &Bytes) -> Result<ServerFrame, DecodeError> {
        wire::looks_like_map(codec, bytes)?;
        let head: Head<'_> = wire::parse(codec, bytes)?;
        match codec {
            Codec::Json => decode_as::<&serde_json::value::RawValue>(codec, bytes, &head.kind),
            Codec::MsgPack => decode_as::<MsgPackData>(codec, bytes, &head.kind),
        }
    }
}

/// A frame shared by every session that receives it, with its encodings made on first use.
///
/// Fan-out pushes an `Arc<Shared>` into each session's queue; the first writer that needs an
/// encoding makes it, the others share the bytes. This is the "encode once" promise.
///
/// ```
/// use livehub_protocol::{Codec, Payload, ServerFrame, Shared};
/// let shared =
///     Shared::new(ServerFrame::Event { event: "hi".into(), data: Payload::null(), ack: None });
/// let mut made = 0;
/// let a = shared.encoded_with(Codec::Json, || made += 1).unwrap();
/// let b = shared.encoded_with(Codec::Json, || made += 1).unwrap();
/// assert_eq!((&a, made), (&b, 1));
/// // Borrowed, no handle on the bytes taken: the same bytes, not encoded again.
/// assert_eq!(shared.encoded_ref(Codec::Json, || made += 1).ok(), Some(&a));
/// assert_eq!(made, 1);
/// ```
#[derive(Debug)]
pub struct Shared {
    frame: ServerFrame,
    encoded: [OnceLock<Result<Bytes, EncodeError>>; 2],
}

impl Shared {
    /// Shares a frame.
    pub fn new(frame: ServerFrame) -> Arc<Shared> {
        Arc::new(Shared {
            frame,
            encoded: [OnceLock::new(), OnceLock::new()],
        })
    }

    /// The frame.
    pub fn frame(&self) -> &ServerFrame {
        &self.frame
    }

    /// The frame's bytes in `codec`, encoded on first use.
    pub fn encoded(&self, codec: Codec) -> Result<Bytes, EncodeError> {
        self.encoded_with(codec, || {})
    }

    /// Shares a frame whose bytes in `codec` are `bytes` (made elsewhere: not checked against
    /// the frame).
    pub fn with_bytes(frame: ServerFrame, codec: Codec, bytes: Bytes) -> Arc<Shared> {
        let shared = Shared {
            frame,
            encoded: [OnceLock::new(), OnceLock::new()],
        };
        let _ = shared.encoded[codec.index()].set(Ok(bytes));
        Arc::new(shared)
    }

    /// The frame's bytes in `codec` if they were made already (and the encoding worked):
    /// borrowed, not counted as a use.
    pub fn cached(&self, codec: Codec) -> Option<&Bytes> {
        self.encoded[codec.index()].get()?.as_ref().ok()
    }

    /// The frame's bytes in `codec`, encoded on first use; `on_encode` runs when this call is
    /// the one that encodes (e.g. to count encodings).
    pub fn encoded_with(
        &self,
        codec: Codec,
        on_encode: impl FnOnce(),
    ) -> Result<Bytes, EncodeError> {
        self.encoded_ref(codec, on_encode)
            .cloned()
            .map_err(Clone::clone)
    }

    /// [`Shared::encoded_with`], borrowed: no handle on the bytes is taken (a fan-out asks
    /// this once per frame per subscriber, and a clone is an atomic increment and decrement
    /// on one counter shared by all of them).
    pub fn encoded_ref(
        &self,
        codec: Codec,
        on_encode: impl FnOnce(),
    ) -> Result<&Bytes, &EncodeError> {
        self.encoded[codec.index()]
            .get_or_init(|| {
                on_encode();
                self.frame.encode(codec)
            })
            .as_ref()
    }
}

/// The first pass of a decode: only the `type`.
#[derive(Deserialize)]
struct Head<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
}

// The second pass: one struct per known type. Unknown fields are ignored; `D` captures `data`.

#[derive(Deserialize)]
struct WelcomeW {
    session: SessionId,
    #[serde(default)]
    protocol: Option<u64>,
    encoding: String,
    heartbeat_ms: u64,
    timeout_ms: u64,
}

#[derive(Deserialize)]
#[serde(bound(deserialize = "D: Deserialize<'de>"))]
struct MessageW<D> {
    topic: String,
    epoch: String,
    offset: u64,
    #[serde(default = "Option::default", deserialize_with = "wire::present")]
    data: Option<D>,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    delete: bool,
}

#[derive(Deserialize)]
#[serde(bound(deserialize = "D: Deserialize<'de>"))]
struct EventW<D> {
    event: String,
    #[serde(default = "Option::default", deserialize_with = "wire::present")]
    data: Option<D>,
    #[serde(default)]
    ack: Option<u64>,
}

#[derive(Deserialize)]
#[serde(bound(deserialize = "D: Deserialize<'de>"))]
struct ReplyW<D> {
    id: u64,
    #[serde(default = "Option::default", deserialize_with = "wire::present")]
    data: Option<D>,
}

#[derive(Deserialize)]
struct ErrorW {
    #[serde(default)]
    id: Option<u64>,
    code: String,
    #[serde(default)]
    message: Option<String>,
}

#[derive(Deserialize)]
struct GapW {
    topic: String,
    epoch: String,
    from: u64,
    to: u64,
    reason: String,
}

#[derive(Deserialize)]
struct DroppedW {
    count: u64,
}

#[derive(Deserialize)]
struct PresenceW {
    #[serde(default)]
    topic: Option<String>,
    #[serde(default)]
    room: Option<String>,
    member: MemberW,
}

/// A member as decoded: `meta` may be absent.
#[derive(Deserialize)]
struct MemberW {
    session: SessionId,
    user: String,
    #[serde(default)]
    meta: serde_json::Value,
}

#[derive(Deserialize)]
struct PongW {
    #[serde(default)]
    id: Option<u64>,
}

#[derive(Deserialize)]
struct CloseW {
    code: u16,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    retry_ms: Option<u64>,
}

#[derive(Deserialize)]
struct SessionW {
    session: SessionId,
    token: String,
    commands: String,
}

fn decode_as<'a, D>(codec: Codec, bytes: &'a Bytes, kind: &str) -> Result<ServerFrame, DecodeError>
where
    D: Deserialize<'a> + Capture,
{
    let frame = match kind {
        "welcome" => {
            let w: WelcomeW = wire::parse(codec, bytes)?;
            if let Some(v) = w.protocol.filter(|v| *v != PROTOCOL_VERSION) {
                return Err(DecodeError::field(format!(
                    "protocol version {v}, this client speaks {PROTOCOL_VERSION}"
                )));
            }
            let encoding = Codec::from_name(&w.encoding).ok_or_else(|| {
                DecodeError::field(format!(
                    "unknown encoding {:?}",
                    wire::truncate(&w.encoding, 32)
                ))
            })?;
            ServerFrame::Welcome {
                session: w.session,
                encoding,
                heartbeat_ms: w.heartbeat_ms,
                timeout_ms: w.timeout_ms,
            }
        }
        "message" => {
            let w: MessageW<D> = wire::parse(codec, bytes)?;
            ServerFrame::Message {
                topic: w.topic.into(),
                epoch: w.epoch.into(),
                offset: w.offset,
                data: wire::payload_or_own_null(w.data, bytes),
                key: w.key.map(Into::into),
                delete: w.delete,
            }
        }
        "event" => {
            let w: EventW<D> = wire::parse(codec, bytes)?;
            ServerFrame::Event {
                event: w.event.into(),
                data: wire::payload_or_own_null(w.data, bytes),
                ack: w.ack,
            }
        }
        "reply" => {
            let w: ReplyW<D> = wire::parse(codec, bytes)?;
            ServerFrame::Reply {
                id: w.id,
                data: wire::payload_or_own_null(w.data, bytes),
            }
        }
        "error" => {
            let w: ErrorW = wire::parse(codec, bytes)?;
            ServerFrame::Error {
                id: w.id,
                code: Code::parse(&w.code),
                message: w.message.unwrap_or_default(),
            }
        }
        "gap" => {
            let w: GapW = wire::parse(codec, bytes)?;
            ServerFrame::Gap {
                topic: w.topic.into(),
                epoch: w.epoch.into(),
                from: w.from,
                to: w.to,
                reason: GapReason::parse(&w.reason),
            }
        }
        "dropped" => {
            let w: DroppedW = wire::parse(codec, bytes)?;
            ServerFrame::Dropped { count: w.count }
        }
        "join" | "leave" => {
            let w: PresenceW = wire::parse(codec, bytes)?;
            let scope = match (w.topic, w.room) {
                (Some(t), _) => Scope::Topic(t.into()),
                (None, Some(r)) => Scope::Room(r.into()),
                (None, None) => return Err(DecodeError::field("missing field `topic`")),
            };
            ServerFrame::Presence {
                join: kind == "join",
                scope,
                member: Member {
                    session: w.member.session,
                    user: w.member.user,
                    meta: w.member.meta,
                },
            }
        }
        "pong" => {
            let w: PongW = wire::parse(codec, bytes)?;
            ServerFrame::Pong { id: w.id }
        }
        "close" => {
            let w: CloseW = wire::parse(codec, bytes)?;
            ServerFrame::Close {
                code: w.code,
                reason: Cow::Owned(w.reason.unwrap_or_default()),
                retry_ms: w.retry_ms,
            }
        }
        "session" => {
            let w: SessionW = wire::parse(codec, bytes)?;
            ServerFrame::Session {
                session: w.session,
                token: w.token,
                commands: w.commands,
            }
        }
        other => ServerFrame::Unknown {
            kind: other.to_owned(),
        },
    };
    Ok(frame)
}
