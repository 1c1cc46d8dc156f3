//! Client-to-server frames: encoded by clients, decoded strictly by the server.

use std::fmt;

use bytes::Bytes;
use serde::Deserialize;

use crate::codec::{Codec, Payload};
use crate::error::{DecodeError, EncodeError, ErrorCode};
use crate::types::{Position, PresenceEvents, Scope};
use crate::wire::{self, Capture, MsgPackData, Val};

/// A frame a client sends (PROTOCOL.md, "Client to server"): an operation and an optional `id`.
///
/// A frame with an `id` gets exactly one answer carrying it (a `reply` or an `error`).
///
/// ## Decoding (the server's side)
///
/// [`ClientFrame::decode`] is strict, and each failure has a stable code:
///
/// - `bad_frame`: not valid JSON / MessagePack, not a map, trailing bytes, nesting over 128;
/// - `bad_field`: a field of the wrong type (whatever the `type`), no `type`, or a field the
///   operation needs missing (`topic`, `room`, `event`; `presence` and `presence_count` need
///   `topic` or `room`); `presence` other than a boolean, `"sessions"` or `"users"`;
/// - `unknown_type`: `type` names no operation.
///
/// The error keeps the frame's `id` when it can be read, so that the answer carries it. Fields
/// an operation does not use are ignored. JSON `data` is a slice of the input bytes, never a
/// copy; MessagePack `data` is converted value by value, without a tree.
///
/// ```
/// use bytes::Bytes;
/// use livehub_protocol::{ClientFrame, ClientOp, Codec, ErrorCode, PresenceEvents};
///
/// let frame = ClientFrame::new(ClientOp::Subscribe {
///     topic: "scores/all".into(),
///     since: None,
///     last: None,
///     presence: PresenceEvents::None,
///     conflate: None,
/// })
/// .with_id(1);
/// let bytes = frame.encode(Codec::MsgPack).unwrap();
/// // PROTOCOL.md's example, byte for byte.
/// assert_eq!(bytes.as_ref(), &[
///     0x83, 0xa4, b't', b'y', b'p', b'e', 0xa9, b's', b'u', b'b', b's', b'c', b'r', b'i', b'b',
///     b'e', 0xa5, b't', b'o', b'p', b'i', b'c', 0xaa, b's', b'c', b'o', b'r', b'e', b's', b'/',
///     b'a', b'l', b'l', 0xa2, b'i', b'd', 0x01,
/// ]);
/// assert_eq!(ClientFrame::decode(Codec::MsgPack, &bytes).unwrap(), frame);
///
/// let bad = ClientFrame::decode(Codec::Json, &Bytes::from_static(br#"{"type":"jump","id":4}"#));
/// let err = bad.unwrap_err();
/// assert_eq!((err.code(), err.id()), (ErrorCode::UnknownType, Some(4)));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct ClientFrame {
    /// The client's request id.
    pub id: Option<u64>,
    /// What the frame asks for.
    pub op: ClientOp,
}

/// The operation of a [`ClientFrame`] (its `type` and the fields of that type).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ClientOp {
    /// `subscribe`: follow a topic.
    Subscribe {
        /// The topic.
        topic: String,
        /// Resume after this position (the messages after it from history, or a `gap`).
        since: Option<Position>,
        /// Start with (up to) the last `n` messages the history holds, then live ones: the
        /// current state for a first-time reader. Not with `since`.
        last: Option<u64>,
        /// Which of the topic's `join`/`leave` events to get: none, per session, per user.
        presence: PresenceEvents,
        /// Conflate: when this subscription falls behind, keep only the newest message per key
        /// (and recover only the newest per key with `since`/`last`). `None`: the topic's
        /// default.
        conflate: Option<bool>,
    },
    /// `unsubscribe`: stop following a topic.
    Unsubscribe {
        /// The topic.
        topic: String,
    },
    /// `psubscribe`: follow every topic that matches a pattern (`scores/*`: one segment;
    /// `scores/**`: one or more, at the end).
    PSubscribe {
        /// The pattern.
        pattern: String,
        /// Resume these topics (each must match the pattern) after their positions, as a
        /// `subscribe` with `since` would.
        positions: Vec<(String, Position)>,
    },
    /// `punsubscribe`: stop following a pattern (and the topics only it brought).
    PUnsubscribe {
        /// The pattern.
        pattern: String,
    },
    /// `publish`: publish `data` to a topic.
    Publish {
        /// The topic.
        topic: String,
        /// The message (`null` when the frame has none).
        data: Payload,
        /// The message's key, for conflation (`match:7`).
        key: Option<String>,
        /// The message deletes its key (never conflated away).
        delete: bool,
    },
    /// `event`: a custom event for the server's handler of that name.
    Event {
        /// The event's name.
        event: String,
        /// The event's data (`null` when the frame has none).
        data: Payload,
    },
    /// `join`: join a room.
    Join {
        /// The room.
        room: String,
    },
    /// `leave`: leave a room.
    Leave {
        /// The room.
        room: String,
    },
    /// `presence`: who is in a topic or room (a frame with both names the topic), a page at a
    /// time.
    Presence {
        /// The topic or room.
        scope: Scope,
        /// The most members to return (the server's page size when `None`; more than the
        /// server's largest page is refused with `bad_limit`).
        limit: Option<u64>,
        /// Where to go on: the `cursor` of the previous page's reply.
        cursor: Option<String>,
    },
    /// `presence_count`: how many sessions and distinct users are in a topic or room.
    PresenceCount(Scope),
    /// `ping`: answered by `pong`.
    Ping,
    /// `ack`: the answer to a server `event` that asked for one (its `ack` number).
    Ack {
        /// The event's `ack` number.
        ack: u64,
        /// The answer (`null` when the frame has none).
        data: Payload,
    },
}

impl ClientOp {
    /// The operation's `type`.
    pub fn kind(&self) -> &'static str {
        match self {
            ClientOp::Subscribe { .. } => "subscribe",
            ClientOp::Unsubscribe { .. } => "unsubscribe",
            ClientOp::PSubscribe { .. } => "psubscribe",
            ClientOp::PUnsubscribe { .. } => "punsubscribe",
            ClientOp::Publish { .. } => "publish",
            ClientOp::Event { .. } => "event",
            ClientOp::Join { .. } => "join",
            ClientOp::Leave { .. } => "leave",
            ClientOp::Presence { .. } => "presence",
            ClientOp::PresenceCount(_) => "presence_count",
            ClientOp::Ping => "ping",
            ClientOp::Ack { .. } => "ack",
        }
    }
}

/// A client frame the server could not take, with its stable code and the frame's `id` if it
/// could be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameError {
    error: DecodeError,
    id: Option<u64>,
}

impl FrameError {
    /// The stable code (`bad_frame`, `bad_field`, `unknown_type`).
    pub fn code(&self) -> ErrorCode {
        self.error.code()
    }

    /// A human-readable description (not stable).
    pub fn message(&self) -> &str {
        self.error.message()
    }

    /// The frame's `id`, when it could be read: the `error` answer carries it.
    pub fn id(&self) -> Option<u64> {
        self.id
    }

    /// The error and the id.
    pub fn into_parts(self) -> (DecodeError, Option<u64>) {
        (self.error, self.id)
    }
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.error.fmt(f)
    }
}

impl std::error::Error for FrameError {}

impl ClientFrame {
    /// A frame without an id.
    pub fn new(op: ClientOp) -> ClientFrame {
        ClientFrame { id: None, op }
    }

    /// The same frame with an id.
    #[must_use]
    pub fn with_id(mut self, id: u64) -> ClientFrame {
        self.id = Some(id);
        self
    }

    /// Encodes the frame: `type` first, then the operation's fields, then `id`.
    pub fn encode(&self, codec: Codec) -> Result<Bytes, EncodeError> {
        use Val::*;
        let mut f = Vec::with_capacity(5);
        f.push(("type", Str(self.op.kind())));
        match &self.op {
            ClientOp::Subscribe {
                topic,
                since,
                last,
                presence,
                conflate,
            } => {
                f.push(("topic", Str(topic)));
                if let Some(p) = since {
                    f.push((
                        "since",
                        Map(vec![("epoch", Str(&p.epoch)), ("offset", U64(p.offset))]),
                    ));
                }
                if let Some(n) = last {
                    f.push(("last", U64(*n)));
                }
                if let Some(c) = conflate {
                    f.push(("conflate", Bool(*c)));
                }
                match presence {
                    PresenceEvents::None => {}
                    PresenceEvents::Sessions => f.push(("presence", Bool(true))),
                    PresenceEvents::Users => f.push(("presence", Str("users"))),
                }
            }
            ClientOp::Unsubscribe { topic } => f.push(("topic", Str(topic))),
            ClientOp::PSubscribe { pattern, positions } => {
                f.push(("pattern", Str(pattern)));
                if !positions.is_empty() {
                    f.push((
                        "positions",
                        Entries(
                            positions
                                .iter()
                                .map(|(t, p)| {
                                    (
                                        t.as_str(),
                                        Map(vec![
                                            ("epoch", Str(&p.epoch)),
                                            ("offset", U64(p.offset)),
                                        ]),
                                    )
                                })
                                .collect(),
                        ),
                    ));
                }
            }
            ClientOp::PUnsubscribe { pattern } => f.push(("pattern", Str(pattern))),
            ClientOp::Publish {
                topic,
                data,
                key,
                delete,
            } => {
                f.push(("topic", Str(topic)));
                f.push(("data", Raw(data)));
                if let Some(key) = key {
                    f.push(("key", Str(key)));
                }
                if *delete {
                    f.push(("delete", Bool(true)));
                }
            }
            ClientOp::Event { event, data } => {
                f.push(("event", Str(event)));
                f.push(("data", Raw(data)));
            }
            ClientOp::Join { room } | ClientOp::Leave { room } => f.push(("room", Str(room))),
            ClientOp::Presence {
                scope,
                limit,
                cursor,
            } => {
                f.push((scope.field(), Str(scope.name())));
                if let Some(n) = limit {
                    f.push(("limit", U64(*n)));
                }
                if let Some(c) = cursor {
                    f.push(("cursor", Str(c)));
                }
            }
            ClientOp::PresenceCount(scope) => f.push((scope.field(), Str(scope.name()))),
            ClientOp::Ping => {}
            ClientOp::Ack { ack, data } => {
                f.push(("ack", U64(*ack)));
                f.push(("data", Raw(data)));
            }
        }
        if let Some(id) = self.id {
            f.push(("id", U64(id)));
        }
        wire::encode(codec, &f)
    }

    /// Decodes one frame from a client (see "Decoding" above).
    pub fn decode(codec: Codec, bytes: &Bytes) -> Result<ClientFrame, FrameError> {
        let fail = |error| FrameError { error, id: None };
        wire::looks_like_map(codec, bytes).map_err(fail)?;
        match codec {
            Codec::Json => {
                match serde_json::from_slice::<Incoming<&serde_json::value::RawValue>>(bytes) {
                    Ok(inc) => inc.into_frame(bytes),
                    Err(e) => {
                        let id = serde_json::from_slice::<IdOnly>(bytes)
                            .ok()
                            .and_then(|i| i.id);
                        Err(FrameError {
                            error: DecodeError::from_json(e),
                            id,
                        })
                    }
                }
            }
            Codec::MsgPack => match wire::parse::<Incoming<MsgPackData>>(codec, bytes) {
                Ok(inc) => {
                    // Ext values would not survive the hub's conversions unaltered, and have
                    // no JSON form: refused, whatever field holds them.
                    if crate::shape::scan(bytes).is_ok_and(|s| s.ext) {
                        return Err(FrameError {
                            error: DecodeError::field(
                                "MessagePack ext values are not accepted (they have no JSON form)",
                            ),
                            id: inc.id,
                        });
                    }
                    inc.into_frame(bytes)
                }
                Err(error) => {
                    // The id of the frame, when everything up to it was readable.
                    let mut de = rmp_serde::Deserializer::from_read_ref(&bytes[..]);
                    de.set_max_depth(crate::codec::MAX_DEPTH);
                    let id = IdOnly::deserialize(&mut de).ok().and_then(|i| i.id);
                    Err(FrameError { error, id })
                }
            },
        }
    }
}

/// The frame as serde sees it, every field optional; `D` captures `data` without a tree.
#[derive(Deserialize)]
struct Incoming<D> {
    #[serde(rename = "type")]
    kind: Text,
    #[serde(default)]
    id: Option<u64>,
    #[serde(default)]
    topic: Option<Text>,
    #[serde(default)]
    room: Option<Text>,
    #[serde(default)]
    event: Option<Text>,
    #[serde(default = "Option::default")]
    data: Option<D>,
    #[serde(default)]
    since: Option<Position>,
    #[serde(default)]
    last: Option<u64>,
    #[serde(default)]
    ack: Option<u64>,
    #[serde(default)]
    presence: Option<PresenceEvents>,
    #[serde(default)]
    limit: Option<u64>,
    #[serde(default)]
    cursor: Option<Text>,
    #[serde(default)]
    conflate: Option<bool>,
    #[serde(default)]
    key: Option<Text>,
    #[serde(default)]
    delete: Option<bool>,
    #[serde(default)]
    pattern: Option<Text>,
    #[serde(default)]
    positions: Option<std::collections::BTreeMap<String, Position>>,
}

/// A string field: a string and nothing else (MessagePack `bin` holding UTF-8 is refused,
/// where serde would take it).
struct Text(String);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Text, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Text;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Text, E> {
                Ok(Text(v.to_owned()))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Text, E> {
                Ok(Text(v))
            }
        }
        d.deserialize_str(V)
    }
}

impl<D: Capture> Incoming<D> {
    /// The typed frame, or the operation's missing field / unknown type.
    fn into_frame(self, whole: &Bytes) -> Result<ClientFrame, FrameError> {
        let id = self.id;
        let missing = |field: &str| FrameError {
            error: DecodeError::field(format!("missing field `{field}`")),
            id,
        };
        let text = |t: Option<Text>, field: &str| t.map(|t| t.0).ok_or_else(|| missing(field));
        let op = match self.kind.0.as_str() {
            "subscribe" => {
                if self.since.is_some() && self.last.is_some() {
                    return Err(FrameError {
                        error: DecodeError::field("`since` and `last` exclude each other"),
                        id,
                    });
                }
                ClientOp::Subscribe {
                    topic: text(self.topic, "topic")?,
                    since: self.since,
                    last: self.last,
                    presence: self.presence.unwrap_or_default(),
                    conflate: self.conflate,
                }
            }
            "unsubscribe" => ClientOp::Unsubscribe {
                topic: text(self.topic, "topic")?,
            },
            "psubscribe" => ClientOp::PSubscribe {
                pattern: text(self.pattern, "pattern")?,
                positions: self.positions.unwrap_or_default().into_iter().collect(),
            },
            "punsubscribe" => ClientOp::PUnsubscribe {
                pattern: text(self.pattern, "pattern")?,
            },
            "publish" => ClientOp::Publish {
                topic: text(self.topic, "topic")?,
                data: wire::payload_or_null(self.data, whole),
                key: self.key.map(|k| k.0),
                delete: self.delete.unwrap_or(false),
            },
            "event" => ClientOp::Event {
                event: text(self.event, "event")?,
                data: wire::payload_or_null(self.data, whole),
            },
            "join" => ClientOp::Join {
                room: text(self.room, "room")?,
            },
            "leave" => ClientOp::Leave {
                room: text(self.room, "room")?,
            },
            "presence" => ClientOp::Presence {
                scope: scope(self.topic, self.room).ok_or_else(|| missing("topic"))?,
                limit: self.limit,
                cursor: self.cursor.map(|c| c.0),
            },
            "presence_count" => ClientOp::PresenceCount(
                scope(self.topic, self.room).ok_or_else(|| missing("topic"))?,
            ),
            "ping" => ClientOp::Ping,
            "ack" => ClientOp::Ack {
                ack: self.ack.ok_or_else(|| missing("ack"))?,
                data: wire::payload_or_null(self.data, whole),
            },
            other => {
                return Err(FrameError {
                    error: DecodeError::new(
                        ErrorCode::UnknownType,
                        format!("unknown frame type {:?}", wire::truncate(other, 64)),
                    ),
                    id,
                })
            }
        };
        Ok(ClientFrame { id, op })
    }
}

/// The scope a frame names: its `topic`, else its `room`.
fn scope(topic: Option<Text>, room: Option<Text>) -> Option<Scope> {
    match (topic, room) {
        (Some(topic), _) => Some(Scope::Topic(topic.0.into())),
        (None, Some(room)) => Some(Scope::Room(room.0.into())),
        (None, None) => None,
    }
}

/// Only the `id` of a frame, to answer a frame that failed to decode with its `id` when the
/// client sent one.
#[derive(Deserialize)]
struct IdOnly {
    #[serde(default)]
    id: Option<u64>,
}
