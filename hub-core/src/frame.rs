//! Wire frames: what the server sends (encoded once per encoding and shared), and what clients
//! send (decoded strictly, each failure with a stable code). See PROTOCOL.md.

use std::sync::{Arc, OnceLock};

use bytes::{BufMut, Bytes};
use serde::de::Error as _;
use serde::{Deserialize, Deserializer};

use crate::broker::Position;
use crate::codec::{Codec, Payload, MAX_DEPTH};
use crate::error::{DecodeError, EncodeError, ErrorCode};
use crate::presence::Member;
use crate::stats::Stats;

/// Where a presence event happened.
#[derive(Debug, Clone)]
pub(crate) enum Scope {
    Topic(Arc<str>),
    Room(Arc<str>),
}

/// A frame the server sends. Built once, encoded at most once per codec (see [`Shared`]).
#[derive(Debug)]
pub(crate) enum Frame {
    Welcome {
        session: String,
        encoding: Codec,
        heartbeat_ms: u64,
        timeout_ms: u64,
    },
    Message {
        topic: Arc<str>,
        epoch: Arc<str>,
        offset: u64,
        data: Payload,
    },
    Event {
        event: Arc<str>,
        data: Payload,
    },
    Reply {
        id: u64,
        data: Payload,
    },
    Error {
        id: Option<u64>,
        code: ErrorCode,
        message: String,
    },
    Gap {
        topic: Arc<str>,
        epoch: Arc<str>,
        from: u64,
        to: u64,
        reason: &'static str,
    },
    Dropped {
        count: u64,
    },
    Presence {
        join: bool,
        scope: Scope,
        member: Member,
    },
    Pong {
        id: Option<u64>,
    },
    Close {
        code: u16,
        reason: &'static str,
    },
    /// Not a wire frame: tells the transport where a new subscription starts (what a resume
    /// must name if nothing else of the topic arrives). Placed just before the `subscribe`
    /// reply and anything recovered.
    Subscribed {
        topic: Arc<str>,
        position: Position,
    },
}

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
}

impl FrameKind {
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
        }
    }
}

/// One field value, as the per-codec writers understand it.
enum Val<'a> {
    Str(&'a str),
    U64(u64),
    Raw(&'a Payload),
    Member(&'a Member),
}

impl Frame {
    /// The frame's kind (`Subscribed`, never written, counts as a reply).
    pub(crate) fn kind(&self) -> FrameKind {
        match self {
            Frame::Welcome { .. } => FrameKind::Welcome,
            Frame::Message { .. } => FrameKind::Message,
            Frame::Event { .. } => FrameKind::Event,
            Frame::Reply { .. } | Frame::Subscribed { .. } => FrameKind::Reply,
            Frame::Error { .. } => FrameKind::Error,
            Frame::Gap { .. } => FrameKind::Gap,
            Frame::Dropped { .. } => FrameKind::Dropped,
            Frame::Presence { join: true, .. } => FrameKind::Join,
            Frame::Presence { join: false, .. } => FrameKind::Leave,
            Frame::Pong { .. } => FrameKind::Pong,
            Frame::Close { .. } => FrameKind::Close,
        }
    }

    /// The frame's fields in wire order (`type` first).
    fn fields(&self) -> Vec<(&'static str, Val<'_>)> {
        use Val::*;
        let mut f = Vec::with_capacity(6);
        match self {
            Frame::Welcome {
                session,
                encoding,
                heartbeat_ms,
                timeout_ms,
            } => {
                f.push(("type", Str("welcome")));
                f.push(("session", Str(session)));
                f.push(("protocol", U64(1)));
                f.push(("encoding", Str(encoding.name())));
                f.push(("heartbeat_ms", U64(*heartbeat_ms)));
                f.push(("timeout_ms", U64(*timeout_ms)));
            }
            Frame::Message {
                topic,
                epoch,
                offset,
                data,
            } => {
                f.push(("type", Str("message")));
                f.push(("topic", Str(topic)));
                f.push(("epoch", Str(epoch)));
                f.push(("offset", U64(*offset)));
                f.push(("data", Raw(data)));
            }
            Frame::Event { event, data } => {
                f.push(("type", Str("event")));
                f.push(("event", Str(event)));
                f.push(("data", Raw(data)));
            }
            Frame::Reply { id, data } => {
                f.push(("type", Str("reply")));
                f.push(("id", U64(*id)));
                f.push(("data", Raw(data)));
            }
            Frame::Error { id, code, message } => {
                f.push(("type", Str("error")));
                if let Some(id) = id {
                    f.push(("id", U64(*id)));
                }
                f.push(("code", Str(code.as_str())));
                f.push(("message", Str(message)));
            }
            Frame::Gap {
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
                f.push(("reason", Str(reason)));
            }
            Frame::Dropped { count } => {
                f.push(("type", Str("dropped")));
                f.push(("count", U64(*count)));
            }
            Frame::Presence {
                join,
                scope,
                member,
            } => {
                f.push(("type", Str(if *join { "join" } else { "leave" })));
                match scope {
                    Scope::Topic(t) => f.push(("topic", Str(t))),
                    Scope::Room(r) => f.push(("room", Str(r))),
                }
                f.push(("member", Member(member)));
            }
            Frame::Pong { id } => {
                f.push(("type", Str("pong")));
                if let Some(id) = id {
                    f.push(("id", U64(*id)));
                }
            }
            Frame::Close { code, reason } => {
                f.push(("type", Str("close")));
                f.push(("code", U64(u64::from(*code))));
                f.push(("reason", Str(reason)));
            }
            Frame::Subscribed { .. } => {}
        }
        f
    }

    /// Encodes the frame. A payload already in `codec` is copied in as it is, never re-encoded.
    pub(crate) fn encode(&self, codec: Codec) -> Result<Bytes, EncodeError> {
        let fields = self.fields();
        match codec {
            Codec::Json => encode_json(&fields),
            Codec::MsgPack => encode_msgpack(&fields),
        }
    }
}

fn encode_json(fields: &[(&'static str, Val<'_>)]) -> Result<Bytes, EncodeError> {
    let mut out = Vec::with_capacity(96 + raw_len(fields));
    out.push(b'{');
    for (i, (key, val)) in fields.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        // Keys are fixed ASCII identifiers: no escaping needed.
        out.push(b'"');
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(b"\":");
        match val {
            Val::Str(s) => serde_json::to_writer(&mut out, s).map_err(EncodeError::new)?,
            Val::U64(n) => out.extend_from_slice(n.to_string().as_bytes()),
            Val::Raw(p) => out.extend_from_slice(&p.bytes_in(Codec::Json)?),
            Val::Member(m) => serde_json::to_writer(&mut out, m).map_err(EncodeError::new)?,
        }
    }
    out.push(b'}');
    Ok(Bytes::from(out))
}

fn encode_msgpack(fields: &[(&'static str, Val<'_>)]) -> Result<Bytes, EncodeError> {
    let mut out = Vec::with_capacity(64 + raw_len(fields)).writer();
    let len = u32::try_from(fields.len()).map_err(EncodeError::new)?;
    rmp::encode::write_map_len(&mut out, len).map_err(EncodeError::new)?;
    for (key, val) in fields {
        rmp::encode::write_str(&mut out, key).map_err(EncodeError::new)?;
        match val {
            Val::Str(s) => rmp::encode::write_str(&mut out, s).map_err(EncodeError::new)?,
            Val::U64(n) => {
                rmp::encode::write_uint(&mut out, *n).map_err(EncodeError::new)?;
            }
            Val::Raw(p) => out
                .get_mut()
                .extend_from_slice(&p.bytes_in(Codec::MsgPack)?),
            Val::Member(m) => {
                rmp_serde::encode::write_named(&mut out, m).map_err(EncodeError::new)?
            }
        }
    }
    Ok(Bytes::from(out.into_inner()))
}

fn raw_len(fields: &[(&'static str, Val<'_>)]) -> usize {
    fields
        .iter()
        .map(|(_, v)| match v {
            Val::Raw(p) => p.as_bytes().len(),
            _ => 0,
        })
        .sum()
}

/// A frame shared by every session that receives it, with its encodings made on first use.
///
/// Fan-out pushes an `Arc<Shared>` into each session's queue; the first session writer that
/// needs an encoding makes it, the others share the bytes. This is the "encode once" promise.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) frame: Frame,
    encoded: [OnceLock<Result<Bytes, EncodeError>>; 2],
}

impl Shared {
    pub(crate) fn new(frame: Frame) -> Arc<Shared> {
        Arc::new(Shared {
            frame,
            encoded: [OnceLock::new(), OnceLock::new()],
        })
    }

    /// About what the frame weighs in a queue (its payload and names, plus a frame's fixed
    /// overhead), known before it is encoded: what the queue's byte bound counts.
    pub(crate) fn weight(&self) -> usize {
        const FIXED: usize = 48;
        FIXED
            + match &self.frame {
                Frame::Message {
                    topic, epoch, data, ..
                } => topic.len() + epoch.len() + data.as_bytes().len(),
                Frame::Event { event, data } => event.len() + data.as_bytes().len(),
                Frame::Reply { data, .. } => data.as_bytes().len(),
                Frame::Error { message, .. } => message.len(),
                Frame::Welcome { session, .. } => session.len(),
                Frame::Gap { topic, epoch, .. } => topic.len() + epoch.len(),
                Frame::Presence { scope, member, .. } => {
                    let name = match scope {
                        Scope::Topic(n) | Scope::Room(n) => n.len(),
                    };
                    name + member.user.len() + 64
                }
                Frame::Subscribed { .. } => 0,
                Frame::Dropped { .. } | Frame::Pong { .. } | Frame::Close { .. } => 0,
            }
    }

    /// The frame's bytes in `codec`, encoded on first use.
    pub(crate) fn encoded(&self, codec: Codec, stats: &Stats) -> Result<Bytes, EncodeError> {
        self.encoded[codec.index()]
            .get_or_init(|| {
                stats.count_encode(codec);
                self.frame.encode(codec)
            })
            .clone()
    }
}

/// A decoded client frame, its `data` already captured as a [`Payload`] in the frame's codec.
#[derive(Debug)]
pub(crate) struct ClientFrame {
    pub(crate) kind: String,
    pub(crate) id: Option<u64>,
    pub(crate) topic: Option<String>,
    pub(crate) room: Option<String>,
    pub(crate) event: Option<String>,
    pub(crate) data: Option<Payload>,
    pub(crate) since: Option<Position>,
    pub(crate) presence: bool,
}

/// The frame as serde sees it; `D` captures `data` without decoding it into a tree.
#[derive(Deserialize)]
struct Incoming<D> {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    id: Option<u64>,
    #[serde(default)]
    topic: Option<String>,
    #[serde(default)]
    room: Option<String>,
    #[serde(default)]
    event: Option<String>,
    #[serde(default = "Option::default")]
    data: Option<D>,
    #[serde(default)]
    since: Option<Position>,
    #[serde(default)]
    presence: Option<bool>,
}

impl<D> Incoming<D> {
    fn into_frame(self, data: Option<Payload>) -> ClientFrame {
        ClientFrame {
            kind: self.kind,
            id: self.id,
            topic: self.topic,
            room: self.room,
            event: self.event,
            data,
            since: self.since,
            presence: self.presence.unwrap_or(false),
        }
    }
}

/// `data` of a MessagePack frame, re-serialized as MessagePack while it is read (no tree).
struct MsgPackData(Vec<u8>);

impl<'de> Deserialize<'de> for MsgPackData {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut out = Vec::new();
        let mut ser = rmp_serde::Serializer::new(&mut out).with_struct_map();
        serde_transcode::transcode(d, &mut ser).map_err(D::Error::custom)?;
        Ok(MsgPackData(out))
    }
}

/// Only the `id` of a frame, to answer a frame that failed to decode with its `id` when the
/// client sent one.
#[derive(Deserialize)]
struct IdOnly {
    #[serde(default)]
    id: Option<u64>,
}

/// `part` as a `Bytes`: a shared slice of `whole` when it lies inside it (a borrowed raw JSON
/// value does), a copy otherwise. Never panics.
fn share_or_copy(whole: &Bytes, part: &str) -> Bytes {
    let base = whole.as_ptr() as usize;
    let start = part.as_ptr() as usize;
    match start.checked_sub(base) {
        Some(offset) if offset + part.len() <= whole.len() => {
            whole.slice(offset..offset + part.len())
        }
        _ => Bytes::copy_from_slice(part.as_bytes()),
    }
}

/// Decodes one client frame. On failure, returns the error and the frame's `id` if readable.
pub(crate) fn decode_client(
    codec: Codec,
    bytes: &Bytes,
) -> Result<ClientFrame, (DecodeError, Option<u64>)> {
    match codec {
        Codec::Json => {
            let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
            if first != Some(&b'{') {
                return Err((DecodeError::frame("a frame must be a JSON object"), None));
            }
            match serde_json::from_slice::<Incoming<&serde_json::value::RawValue>>(bytes) {
                Ok(inc) => {
                    let data = inc
                        .data
                        .map(|raw| Payload::trusted(Codec::Json, share_or_copy(bytes, raw.get())));
                    Ok(inc.into_frame(data))
                }
                Err(e) => {
                    let id = serde_json::from_slice::<IdOnly>(bytes)
                        .ok()
                        .and_then(|i| i.id);
                    Err((DecodeError::from_json(e), id))
                }
            }
        }
        Codec::MsgPack => {
            // fixmap, map16 or map32.
            let is_map = matches!(bytes.first(), Some(0x80..=0x8f | 0xde | 0xdf));
            if !is_map {
                return Err((
                    DecodeError::frame("a frame must be a MessagePack map"),
                    None,
                ));
            }
            let mut de = rmp_serde::Deserializer::new(&bytes[..]);
            de.set_max_depth(MAX_DEPTH);
            match Incoming::<MsgPackData>::deserialize(&mut de) {
                Ok(mut inc) => {
                    if !de.get_ref().is_empty() {
                        return Err((DecodeError::frame("trailing bytes after the frame"), inc.id));
                    }
                    let data = inc
                        .data
                        .take()
                        .map(|d| Payload::trusted(Codec::MsgPack, Bytes::from(d.0)));
                    Ok(inc.into_frame(data))
                }
                Err(e) => {
                    let mut de = rmp_serde::Deserializer::from_read_ref(&bytes[..]);
                    de.set_max_depth(MAX_DEPTH);
                    let id = IdOnly::deserialize(&mut de).ok().and_then(|i| i.id);
                    Err((DecodeError::from_msgpack(e), id))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(s: &str) -> Result<ClientFrame, (DecodeError, Option<u64>)> {
        decode_client(Codec::Json, &Bytes::copy_from_slice(s.as_bytes()))
    }

    #[test]
    fn json_frames_decode_and_share_data_bytes() {
        let input =
            Bytes::from_static(br#"{"type":"publish","topic":"a","data":{"x":[1,2]},"id":7}"#);
        let f = decode_client(Codec::Json, &input).unwrap();
        assert_eq!(f.kind, "publish");
        assert_eq!(f.id, Some(7));
        let data = f.data.unwrap();
        assert_eq!(data.as_bytes().as_ref(), br#"{"x":[1,2]}"#);
        // Shared, not copied: the payload points into the frame's bytes.
        let inside = input.as_ptr_range();
        assert!(inside.contains(&data.as_bytes().as_ptr()));
    }

    #[test]
    fn json_failures_have_codes_and_keep_ids() {
        assert_eq!(json("{nope").unwrap_err().0.code(), ErrorCode::BadFrame);
        assert_eq!(json("[1,2]").unwrap_err().0.code(), ErrorCode::BadFrame);
        let (e, id) = json(r#"{"type":"subscribe","topic":5,"id":3}"#).unwrap_err();
        assert_eq!(e.code(), ErrorCode::BadField);
        assert_eq!(id, Some(3));
        assert_eq!(
            json(r#"{"topic":"a"}"#).unwrap_err().0.code(),
            ErrorCode::BadField
        );
    }

    #[test]
    fn msgpack_frames_decode() {
        let v = serde_json::json!({"type":"publish","topic":"a","data":{"x":[1,2]},"id":7});
        let bytes = Bytes::from(rmp_serde::to_vec_named(&v).unwrap());
        let f = decode_client(Codec::MsgPack, &bytes).unwrap();
        assert_eq!(f.kind, "publish");
        let data: serde_json::Value = f.data.unwrap().decode().unwrap();
        assert_eq!(data, serde_json::json!({"x":[1,2]}));
        let bad = decode_client(Codec::MsgPack, &Bytes::from_static(&[0x93, 1, 2, 3]));
        assert_eq!(bad.unwrap_err().0.code(), ErrorCode::BadFrame);
    }

    #[test]
    fn server_frames_encode_the_same_in_both_codecs() {
        let frame = Frame::Message {
            topic: "t".into(),
            epoch: "e".into(),
            offset: 3,
            data: Payload::from_value(&serde_json::json!({"k": "v"})).unwrap(),
        };
        let j: serde_json::Value =
            serde_json::from_slice(&frame.encode(Codec::Json).unwrap()).unwrap();
        let m: serde_json::Value =
            rmp_serde::from_slice(&frame.encode(Codec::MsgPack).unwrap()).unwrap();
        assert_eq!(j, m);
        assert_eq!(
            j,
            serde_json::json!({"type":"message","topic":"t","epoch":"e","offset":3,"data":{"k":"v"}})
        );
    }
}
