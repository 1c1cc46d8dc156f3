//! The hand-written frame writers and the pieces shared by the decoders.
//!
//! A frame is a flat list of `(key, value)` fields, `type` first. The writers put a payload's
//! bytes in as they are (converted only when it is in the other encoding), so a frame costs one
//! allocation and no tree, whatever its data.

use bytes::{BufMut, Bytes};
use serde::de::Error as _;
use serde::{Deserialize, Deserializer};

use crate::codec::{Codec, Payload, MAX_DEPTH};
use crate::error::{DecodeError, EncodeError};
use crate::types::SessionId;

/// One field value, as the per-codec writers understand it.
pub(crate) enum Val<'a> {
    Str(&'a str),
    U64(u64),
    Bool(bool),
    Session(SessionId),
    Raw(&'a Payload),
    Json(&'a serde_json::Value),
    Map(Vec<(&'static str, Val<'a>)>),
    /// A map whose keys are data (topic names): escaped as any string.
    Entries(Vec<(&'a str, Val<'a>)>),
}

/// Encodes a frame's fields as one map in `codec`.
pub(crate) fn encode(
    codec: Codec,
    fields: &[(&'static str, Val<'_>)],
) -> Result<Bytes, EncodeError> {
    match codec {
        Codec::Json => {
            let mut out = Vec::with_capacity(96 + raw_len(fields));
            json_map(&mut out, fields)?;
            Ok(Bytes::from(out))
        }
        Codec::MsgPack => {
            let mut out = Vec::with_capacity(64 + raw_len(fields)).writer();
            msgpack_map(&mut out, fields)?;
            Ok(Bytes::from(out.into_inner()))
        }
    }
}

fn json_map(out: &mut Vec<u8>, fields: &[(&'static str, Val<'_>)]) -> Result<(), EncodeError> {
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
            Val::Str(s) => serde_json::to_writer(&mut *out, s).map_err(EncodeError::new)?,
            Val::U64(n) => out.extend_from_slice(n.to_string().as_bytes()),
            Val::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
            // Hex digits: nothing to escape.
            Val::Session(id) => out.extend_from_slice(format!("\"{id}\"").as_bytes()),
            Val::Raw(p) => out.extend_from_slice(&p.bytes_in(Codec::Json)?),
            Val::Json(v) => serde_json::to_writer(&mut *out, v).map_err(EncodeError::new)?,
            Val::Map(inner) => json_map(out, inner)?,
            Val::Entries(entries) => {
                out.push(b'{');
                for (i, (k, v)) in entries.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    serde_json::to_writer(&mut *out, k).map_err(EncodeError::new)?;
                    out.push(b':');
                    match v {
                        Val::Map(inner) => json_map(out, inner)?,
                        _ => return Err(EncodeError::new("entries hold maps")),
                    }
                }
                out.push(b'}');
            }
        }
    }
    out.push(b'}');
    Ok(())
}

fn msgpack_map(
    out: &mut bytes::buf::Writer<Vec<u8>>,
    fields: &[(&'static str, Val<'_>)],
) -> Result<(), EncodeError> {
    let len = u32::try_from(fields.len()).map_err(EncodeError::new)?;
    rmp::encode::write_map_len(out, len).map_err(EncodeError::new)?;
    for (key, val) in fields {
        rmp::encode::write_str(out, key).map_err(EncodeError::new)?;
        match val {
            Val::Str(s) => rmp::encode::write_str(out, s).map_err(EncodeError::new)?,
            Val::U64(n) => {
                rmp::encode::write_uint(out, *n).map_err(EncodeError::new)?;
            }
            Val::Bool(b) => rmp::encode::write_bool(out, *b).map_err(EncodeError::new)?,
            Val::Session(id) => {
                rmp::encode::write_str(out, &id.to_string()).map_err(EncodeError::new)?
            }
            Val::Raw(p) => out
                .get_mut()
                .extend_from_slice(&p.bytes_in(Codec::MsgPack)?),
            Val::Json(v) => rmp_serde::encode::write_named(out, v).map_err(EncodeError::new)?,
            Val::Map(inner) => msgpack_map(out, inner)?,
            Val::Entries(entries) => {
                let len = u32::try_from(entries.len()).map_err(EncodeError::new)?;
                rmp::encode::write_map_len(out, len).map_err(EncodeError::new)?;
                for (k, v) in entries {
                    rmp::encode::write_str(out, k).map_err(EncodeError::new)?;
                    match v {
                        Val::Map(inner) => msgpack_map(out, inner)?,
                        _ => return Err(EncodeError::new("entries hold maps")),
                    }
                }
            }
        }
    }
    Ok(())
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

/// Decodes a whole frame's bytes as `T`: one value, nothing after it, nesting bounded. The
/// caller has checked that the frame is a map.
pub(crate) fn parse<'a, T: Deserialize<'a>>(
    codec: Codec,
    bytes: &'a [u8],
) -> Result<T, DecodeError> {
    match codec {
        Codec::Json => serde_json::from_slice(bytes).map_err(DecodeError::from_json),
        Codec::MsgPack => {
            let mut de = rmp_serde::Deserializer::new(bytes);
            de.set_max_depth(MAX_DEPTH);
            let value = T::deserialize(&mut de).map_err(DecodeError::from_msgpack)?;
            if !de.get_ref().is_empty() {
                return Err(DecodeError::frame("trailing bytes after the frame"));
            }
            Ok(value)
        }
    }
}

/// Whether `bytes` start like a map of `codec` (the decoders' first check).
pub(crate) fn looks_like_map(codec: Codec, bytes: &[u8]) -> Result<(), DecodeError> {
    match codec {
        Codec::Json => {
            let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
            if first != Some(&b'{') {
                return Err(DecodeError::frame("a frame must be a JSON object"));
            }
        }
        Codec::MsgPack => {
            // fixmap, map16 or map32.
            if !matches!(bytes.first(), Some(0x80..=0x8f | 0xde | 0xdf)) {
                return Err(DecodeError::frame("a frame must be a MessagePack map"));
            }
        }
    }
    Ok(())
}

/// `data` of a MessagePack frame, re-serialized as MessagePack while it is read (no tree).
pub(crate) struct MsgPackData(pub(crate) Vec<u8>);

impl<'de> Deserialize<'de> for MsgPackData {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut out = Vec::new();
        let mut ser = rmp_serde::Serializer::new(&mut out).with_struct_map();
        serde_transcode::transcode(d, &mut ser).map_err(D::Error::custom)?;
        Ok(MsgPackData(out))
    }
}

/// A field that is present, `null` included (serde's `Option` reads `null` as absent): so that
/// a MessagePack `nil` stays a MessagePack payload.
pub(crate) fn present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}

/// How a decoder captures a frame's `data` without building a tree.
pub(crate) trait Capture {
    /// The payload, sharing `whole`'s bytes where it can.
    fn payload(self, whole: &Bytes) -> Payload;

    /// `null` in this capture's encoding.
    fn null() -> Payload;
}

impl Capture for &serde_json::value::RawValue {
    fn payload(self, whole: &Bytes) -> Payload {
        Payload::trusted(Codec::Json, share_or_copy(whole, self.get()))
    }

    fn null() -> Payload {
        Payload::null()
    }
}

impl Capture for MsgPackData {
    fn payload(self, _whole: &Bytes) -> Payload {
        Payload::trusted(Codec::MsgPack, Bytes::from(self.0))
    }

    fn null() -> Payload {
        Payload::trusted(Codec::MsgPack, Bytes::from_static(&[0xc0]))
    }
}

/// A client frame's `data` as a payload; JSON `null` when absent or `null`, in either encoding
/// (as livehub-core has always handed it to handlers).
pub(crate) fn payload_or_null<D: Capture>(data: Option<D>, whole: &Bytes) -> Payload {
    data.map(|d| d.payload(whole)).unwrap_or_default()
}

/// A server frame's `data` as a payload; `null` in the frame's encoding when absent (a present
/// `null` is kept as it is, see [`present`]), so that a decoded frame encodes back to itself.
pub(crate) fn payload_or_own_null<D: Capture>(data: Option<D>, whole: &Bytes) -> Payload {
    data.map_or_else(D::null, |d| d.payload(whole))
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

/// `s` cut to at most `max` bytes, on a character boundary.
pub(crate) fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
