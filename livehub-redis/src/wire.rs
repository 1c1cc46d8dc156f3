//! The layout of channel messages (format 1).
//!
//! ```text
//! publication: 0x01 0x01 codec:u8 epoch_len:u8 epoch offset:u64be data...
//! keyed:       0x01 0x03 codec:u8 epoch_len:u8 epoch offset:u64be key_len:u16be key delete:u8 data...
//! control:     0x01 0x02 origin:u32be message...
//! ```
//!
//! The first byte is the format version, the second the kind. Publications are written by the
//! publish script (`lua/publish.lua`), control messages by [`control`]. `codec` is the same
//! one-byte tag the stream entries carry (`j` JSON, `m` MessagePack).

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use livehub_core::broker::NodeId;
use livehub_core::Codec;

const VERSION: u8 = 1;
const PUBLICATION: u8 = 1;
const CONTROL: u8 = 2;
const KEYED: u8 = 3;

/// The one-byte tag of a codec, in stream entries and channel messages.
pub(crate) fn codec_tag(codec: Codec) -> u8 {
    match codec {
        Codec::Json => b'j',
        Codec::MsgPack => b'm',
    }
}

pub(crate) fn codec_of(tag: &[u8]) -> Option<Codec> {
    match tag {
        b"j" => Some(Codec::Json),
        b"m" => Some(Codec::MsgPack),
        _ => None,
    }
}

/// A decoded channel message.
#[derive(Debug, PartialEq)]
pub(crate) enum Message {
    Publication {
        codec: Codec,
        epoch: Arc<str>,
        offset: u64,
        /// The message's key and whether it deletes it (kind 3).
        key: Option<(Arc<str>, bool)>,
        /// The encoded payload (not yet validated).
        data: Bytes,
    },
    Control {
        origin: NodeId,
        message: Bytes,
    },
}

/// Why a channel message does not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WireError(&'static str);

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// A control message from `origin`.
pub(crate) fn control(origin: NodeId, message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(6 + message.len());
    out.extend_from_slice(&[VERSION, CONTROL]);
    out.extend_from_slice(&origin.0.to_be_bytes());
    out.extend_from_slice(message);
    out
}

/// A publication, as the publish script writes it (for tests; the script is the writer).
#[cfg(test)]
pub(crate) fn publication(codec: Codec, epoch: &str, offset: u64, data: &[u8]) -> Vec<u8> {
    let mut out = vec![VERSION, PUBLICATION, codec_tag(codec), epoch.len() as u8];
    out.extend_from_slice(epoch.as_bytes());
    out.extend_from_slice(&offset.to_be_bytes());
    out.extend_from_slice(data);
    out
}

/// Decodes a channel message; the data is shared with `body`, not copied.
pub(crate) fn decode(body: Vec<u8>) -> Result<Message, WireError> {
    let body = Bytes::from(body);
    match body.as_ref() {
        [] => Err(WireError("empty message")),
        [VERSION, kind @ (PUBLICATION | KEYED), codec, len, rest @ ..] => {
            let codec = codec_of(std::slice::from_ref(codec))
                .ok_or(WireError("publication with an unknown codec"))?;
            let len = usize::from(*len);
            if rest.len() < len + 8 {
                return Err(WireError("publication shorter than its header"));
            }
            let epoch = std::str::from_utf8(&rest[..len])
                .map_err(|_| WireError("publication epoch is not UTF-8"))?;
            let mut offset = [0u8; 8];
            offset.copy_from_slice(&rest[len..len + 8]);
            let offset = u64::from_be_bytes(offset);
            if offset == 0 {
                return Err(WireError("publication at offset 0"));
            }
            let mut at = 4 + len + 8;
            let key = if *kind == KEYED {
                let rest = &body[at..];
                let [a, b, rest @ ..] = rest else {
                    return Err(WireError("keyed publication shorter than its key"));
                };
                let key_len = usize::from(u16::from_be_bytes([*a, *b]));
                if rest.len() < key_len + 1 {
                    return Err(WireError("keyed publication shorter than its key"));
                }
                let key = std::str::from_utf8(&rest[..key_len])
                    .map_err(|_| WireError("publication key is not UTF-8"))?;
                let delete = match rest[key_len] {
                    0 => false,
                    1 => true,
                    _ => return Err(WireError("publication delete flag is not 0 or 1")),
                };
                at += 2 + key_len + 1;
                Some((Arc::from(key), delete))
            } else {
                None
            };
            Ok(Message::Publication {
                codec,
                epoch: Arc::from(epoch),
                offset,
                key,
                data: body.slice(at..),
            })
        }
        [VERSION, CONTROL, a, b, c, d, ..] => Ok(Message::Control {
            origin: NodeId(u32::from_be_bytes([*a, *b, *c, *d])),
            message: body.slice(6..),
        }),
        [VERSION, _, ..] => Err(WireError("unknown message kind or short header")),
        _ => Err(WireError("unknown message format version")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publications_round_trip() {
        let body = publication(Codec::MsgPack, "0123abcd", 258, b"\x92\x01\x02");
        assert_eq!(
            decode(body),
            Ok(Message::Publication {
                codec: Codec::MsgPack,
                epoch: Arc::from("0123abcd"),
                offset: 258,
                key: None,
                data: Bytes::from_static(b"\x92\x01\x02"),
            })
        );
    }

    #[test]
    fn keyed_publications_round_trip_and_refuse_bad_keys() {
        // As the publish script writes them.
        let mut body = vec![VERSION, KEYED, b'j', 1, b'e'];
        body.extend_from_slice(&7u64.to_be_bytes());
        body.extend_from_slice(&3u16.to_be_bytes());
        body.extend_from_slice(b"m:7");
        body.push(1);
        body.extend_from_slice(b"null");
        assert_eq!(
            decode(body.clone()),
            Ok(Message::Publication {
                codec: Codec::Json,
                epoch: Arc::from("e"),
                offset: 7,
                key: Some((Arc::from("m:7"), true)),
                data: Bytes::from_static(b"null"),
            })
        );
        for cut in 13..19 {
            assert!(decode(body[..cut].to_vec()).is_err(), "cut at {cut}");
        }
        let mut bad_flag = body.clone();
        bad_flag[18] = 2;
        assert!(decode(bad_flag).is_err());
        let mut bad_utf8 = body;
        bad_utf8[15] = 0xff;
        assert!(decode(bad_utf8).is_err());
    }

    #[test]
    fn controls_round_trip() {
        let body = control(NodeId(0xdead_beef), b"hello");
        assert_eq!(
            decode(body),
            Ok(Message::Control {
                origin: NodeId(0xdead_beef),
                message: Bytes::from_static(b"hello"),
            })
        );
        assert!(matches!(
            decode(control(NodeId(1), b"")),
            Ok(Message::Control { .. })
        ));
    }

    #[test]
    fn bad_messages_are_errors_not_panics() {
        let good = publication(Codec::Json, "e", 1, b"1");
        for cut in 0..good.len() - 1 {
            assert!(decode(good[..cut].to_vec()).is_err(), "cut at {cut}");
        }
        for bad in [
            &b"\x02\x01"[..],
            b"\x01\x09abcdef",
            b"\x01\x01x\x00\x00\x00\x00\x00\x00\x00\x00\x01",
            b"\x01\x01j\x01\xff\x00\x00\x00\x00\x00\x00\x00\x01",
            b"\x01\x01j\x00\x00\x00\x00\x00\x00\x00\x00\x00",
            b"\x01\x02abc",
            b"not at all",
        ] {
            assert!(decode(bad.to_vec()).is_err(), "{bad:?}");
        }
    }
}
