//! Encodings (JSON and MessagePack) and the [`Payload`] that carries application data.
//!
//! A [`Payload`] is an application value kept as raw bytes in the encoding it arrived in. It is
//! converted to another encoding only when a reader of that encoding needs it, and a frame that
//! carries it splices its bytes in as they are.

use bytes::Bytes;
use serde::de::{DeserializeOwned, IgnoredAny};
use serde::{Deserialize, Serialize};

use crate::error::{DecodeError, EncodeError};

/// Nesting depth accepted in a decoded value (serde_json uses the same limit internally).
pub(crate) const MAX_DEPTH: usize = 128;

/// A wire encoding. Every session uses exactly one, chosen when it connects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    /// UTF-8 JSON, carried in WebSocket text frames.
    Json,
    /// MessagePack, carried in WebSocket binary frames.
    MsgPack,
}

impl Codec {
    /// Both encodings, in [`Codec::index`] order.
    pub const ALL: [Codec; 2] = [Codec::Json, Codec::MsgPack];

    /// The name used on the wire (`json`, `msgpack`).
    pub fn name(self) -> &'static str {
        match self {
            Codec::Json => "json",
            Codec::MsgPack => "msgpack",
        }
    }

    /// Parses a wire name (`json`, `msgpack`); `None` for anything else.
    pub fn from_name(name: &str) -> Option<Codec> {
        match name {
            "json" => Some(Codec::Json),
            "msgpack" => Some(Codec::MsgPack),
            _ => None,
        }
    }

    /// The WebSocket subprotocol that selects this encoding (`hub.v1.json`, `hub.v1.msgpack`).
    pub fn subprotocol(self) -> &'static str {
        match self {
            Codec::Json => "hub.v1.json",
            Codec::MsgPack => "hub.v1.msgpack",
        }
    }

    /// Whether frames of this encoding are binary (and not UTF-8 text).
    pub fn is_binary(self) -> bool {
        matches!(self, Codec::MsgPack)
    }

    /// A dense index (JSON 0, MessagePack 1), for arrays indexed by encoding (caches, counters).
    pub fn index(self) -> usize {
        match self {
            Codec::Json => 0,
            Codec::MsgPack => 1,
        }
    }
}

/// An application value (the `data` of a message, event or reply), held as bytes in one encoding.
///
/// Cloning is cheap (the bytes are shared).
///
/// ```
/// use livehub_protocol::{Codec, Payload};
/// let p = Payload::from_value(&serde_json::json!({"home": 2, "away": 1})).unwrap();
/// assert_eq!(p.codec(), Codec::Json);
/// let back: serde_json::Value = p.decode().unwrap();
/// assert_eq!(back["home"], 2);
/// // The same value for a MessagePack reader: converted without building a tree.
/// let mp = p.bytes_in(Codec::MsgPack).unwrap();
/// assert_eq!(mp[0], 0x82); // a map of two entries
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Payload {
    codec: Codec,
    bytes: Bytes,
}

impl Payload {
    /// The JSON `null` value.
    pub fn null() -> Payload {
        Payload {
            codec: Codec::Json,
            bytes: Bytes::from_static(b"null"),
        }
    }

    /// Encodes a value as JSON.
    pub fn from_value<T: Serialize + ?Sized>(value: &T) -> Result<Payload, EncodeError> {
        Payload::encode(Codec::Json, value)
    }

    /// Encodes a value in the given encoding.
    pub fn encode<T: Serialize + ?Sized>(codec: Codec, value: &T) -> Result<Payload, EncodeError> {
        let bytes = match codec {
            Codec::Json => serde_json::to_vec(value).map_err(EncodeError::new)?,
            Codec::MsgPack => rmp_serde::to_vec_named(value).map_err(EncodeError::new)?,
        };
        Ok(Payload {
            codec,
            bytes: Bytes::from(bytes),
        })
    }

    /// Wraps bytes that are already one complete value in `codec`, checking that they are.
    pub fn from_encoded(codec: Codec, bytes: Bytes) -> Result<Payload, DecodeError> {
        validate(codec, &bytes)?;
        Ok(Payload { codec, bytes })
    }

    /// Wraps bytes the caller has already validated (decoded from a frame of that codec).
    pub(crate) fn trusted(codec: Codec, bytes: Bytes) -> Payload {
        Payload { codec, bytes }
    }

    /// Decodes the value into `T`.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, DecodeError> {
        match self.codec {
            Codec::Json => serde_json::from_slice(&self.bytes).map_err(DecodeError::from_json),
            Codec::MsgPack => {
                let mut de = rmp_serde::Deserializer::from_read_ref(&self.bytes[..]);
                de.set_max_depth(MAX_DEPTH);
                T::deserialize(&mut de).map_err(DecodeError::from_msgpack)
            }
        }
    }

    /// The encoding the bytes are in.
    pub fn codec(&self) -> Codec {
        self.codec
    }

    /// The encoded bytes.
    pub fn as_bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// The bytes of this value in `codec`: shared when it already is in `codec`, converted
    /// otherwise (without building a tree). Fails for a value that has no form in `codec`
    /// (a MessagePack map with non-string keys shown to JSON).
    pub fn bytes_in(&self, codec: Codec) -> Result<Bytes, EncodeError> {
        if codec == self.codec {
            return Ok(self.bytes.clone());
        }
        if self.codec == Codec::MsgPack && codec == Codec::Json {
            // serde_json would write an integer key as a string and NaN as `null`: a JSON
            // reader must not get a value other than the one published.
            let shape = crate::shape::scan(&self.bytes)
                .map_err(|()| EncodeError::new("not a MessagePack value"))?;
            if let Some(problem) = shape.json_problem() {
                return Err(EncodeError::new(problem));
            }
        }
        transcode(self.codec, &self.bytes, codec).map(Bytes::from)
    }
}

impl Default for Payload {
    fn default() -> Self {
        Payload::null()
    }
}

/// Converts one encoded value to another encoding without building a tree in between.
fn transcode(from: Codec, bytes: &[u8], to: Codec) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::with_capacity(bytes.len() + bytes.len() / 4 + 8);
    match (from, to) {
        (Codec::Json, Codec::MsgPack) => {
            let mut de = serde_json::Deserializer::from_slice(bytes);
            let mut ser = rmp_serde::Serializer::new(&mut out).with_struct_map();
            serde_transcode::transcode(&mut de, &mut ser).map_err(EncodeError::new)?;
        }
        (Codec::MsgPack, Codec::Json) => {
            let mut de = rmp_serde::Deserializer::from_read_ref(bytes);
            de.set_max_depth(MAX_DEPTH);
            let mut ser = serde_json::Serializer::new(&mut out);
            serde_transcode::transcode(&mut de, &mut ser).map_err(EncodeError::new)?;
        }
        _ => out.extend_from_slice(bytes),
    }
    Ok(out)
}

/// Checks that `bytes` hold exactly one well-formed value.
fn validate(codec: Codec, bytes: &[u8]) -> Result<(), DecodeError> {
    match codec {
        Codec::Json => {
            let mut de = serde_json::Deserializer::from_slice(bytes);
            IgnoredAny::deserialize(&mut de).map_err(DecodeError::from_json)?;
            de.end().map_err(DecodeError::from_json)
        }
        Codec::MsgPack => {
            let mut de = rmp_serde::Deserializer::new(bytes);
            de.set_max_depth(MAX_DEPTH);
            IgnoredAny::deserialize(&mut de).map_err(DecodeError::from_msgpack)?;
            if !de.get_ref().is_empty() {
                return Err(DecodeError::frame("trailing bytes after the value"));
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_and_msgpack_round_trip_through_each_other() {
        let value = serde_json::json!({"a": [1, 2, {"b": "c"}], "n": null, "f": 1.5});
        let json = Payload::from_value(&value).unwrap();
        let mp =
            Payload::from_encoded(Codec::MsgPack, json.bytes_in(Codec::MsgPack).unwrap()).unwrap();
        let back: serde_json::Value = mp.decode().unwrap();
        assert_eq!(back, value);
        let json_again = mp.bytes_in(Codec::Json).unwrap();
        let again: serde_json::Value = serde_json::from_slice(&json_again).unwrap();
        assert_eq!(again, value);
    }

    #[test]
    fn validation_rejects_garbage_and_trailing_bytes() {
        assert!(Payload::from_encoded(Codec::Json, Bytes::from_static(b"{\"a\":")).is_err());
        assert!(Payload::from_encoded(Codec::Json, Bytes::from_static(b"1 2")).is_err());
        assert!(Payload::from_encoded(Codec::MsgPack, Bytes::from_static(&[0x01, 0x02])).is_err());
        assert!(Payload::from_encoded(Codec::MsgPack, Bytes::from_static(&[0xc1])).is_err());
        assert!(Payload::from_encoded(Codec::MsgPack, Bytes::from_static(&[0x01])).is_ok());
    }

    #[test]
    fn maps_with_keys_that_are_not_strings_have_no_json_form() {
        // {[]: 2} and {1: "a"} (serde_json alone would write the latter as `{"1":"a"}`).
        for bytes in [&[0x81, 0x90, 0x02][..], &[0x81, 0x01, 0xa1, b'a']] {
            let p = Payload::from_encoded(Codec::MsgPack, Bytes::copy_from_slice(bytes)).unwrap();
            let e = p.bytes_in(Codec::Json).unwrap_err();
            assert!(e.to_string().contains("not a string"), "{e}");
            // A MessagePack reader gets it as it is.
            assert_eq!(p.bytes_in(Codec::MsgPack).unwrap(), p.as_bytes());
        }
    }

    #[test]
    fn nan_and_infinities_have_no_json_form() {
        // serde_json alone would write NaN as `null`.
        for f in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let mut bytes = vec![0xcb];
            bytes.extend(f.to_be_bytes());
            let p = Payload::from_encoded(Codec::MsgPack, Bytes::from(bytes)).unwrap();
            let e = p.bytes_in(Codec::Json).unwrap_err();
            assert!(e.to_string().contains("NaN"), "{e}");
        }
        let p = Payload::encode(Codec::MsgPack, &1.5f64).unwrap();
        assert_eq!(p.bytes_in(Codec::Json).unwrap().as_ref(), b"1.5");
    }

    #[test]
    fn codec_names_and_subprotocols() {
        for c in Codec::ALL {
            assert_eq!(Codec::from_name(c.name()), Some(c));
            assert_eq!(Codec::ALL[c.index()], c);
            assert!(c.subprotocol().ends_with(c.name()));
        }
        assert_eq!(Codec::from_name("cbor"), None);
    }
}
