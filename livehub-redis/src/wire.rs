//! The layout of channel messages (format 1).
//!
//! ```text
//! publication: 0x01 0x01 codec:u8 epoch_len:u8 epoch offset:u64be data...
//! keyed:       0x01 0x03 codec:u8 epoch_len:u8 epoch offset:u64be key_len:u16be key delete:u8 data...
//! control:     0x01 0x02 origin:u32be message...
//! batch:       0x01 0x04 epoch_len:u8 epoch first:u64be count:u16be
//!              (codec:u8 flags:u8 [key_len:u16be key] data_len:u32be data) x count
//! ```
//!
//! A batch carries `count` publications of one topic at offsets `first`, `first + 1`, ...
//! (the publish script sends the publishes of one call so); `flags` bit 0: keyed, bit 1: the
//! message deletes its key.
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
const BATCH: u8 = 4;

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
    /// Publications of one topic at consecutive offsets from `first` (kind 4).
    Batch {
        epoch: Arc<str>,
        first: u64,
        items: Vec<Item>,
    },
}

/// One publication of a [`Message::Batch`].
#[derive(Debug, PartialEq)]
pub(crate) struct Item {
    pub(crate) codec: Codec,
    /// The message's key and whether it deletes it.
    pub(crate) key: Option<(Arc<str>, bool)>,
    /// The encoded payload (not yet validated).
    pub(crate) data: Bytes,
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
        [VERSION, BATCH, ..] => decode_batch(&body),
        [VERSION, CONTROL, a, b, c, d, ..] => Ok(Message::Control {
            origin: NodeId(u32::from_be_bytes([*a, *b, *c, *d])),
            message: body.slice(6..),
        }),
        [VERSION, _, ..] => Err(WireError("unknown message kind or short header")),
        _ => Err(WireError("unknown message format version")),
    }
}

/// The part of a batch after its count, as the publish script sends it: written by the node
/// (it knows each message's codec, key and length), completed by the script with the epoch
/// and the first offset. Keys longer than a u16 and data longer than a u32 cannot be written:
/// the caller sends such a message alone.
pub(crate) fn batch_items(items: &[Item]) -> Vec<u8> {
    let size = items
        .iter()
        .map(|i| 8 + i.key.as_ref().map_or(0, |(k, _)| k.len()) + i.data.len())
        .sum();
    let mut out = Vec::with_capacity(size);
    for item in items {
        out.push(codec_tag(item.codec));
        match &item.key {
            None => out.push(0),
            Some((key, delete)) => {
                out.push(if *delete { 3 } else { 1 });
                out.extend_from_slice(&(key.len() as u16).to_be_bytes());
                out.extend_from_slice(key.as_bytes());
            }
        }
        out.extend_from_slice(&(item.data.len() as u32).to_be_bytes());
        out.extend_from_slice(&item.data);
    }
    out
}

/// Reads `n` bytes at `*at` of `body`, or fails with `what`.
fn take<'a>(
    body: &'a [u8],
    at: &mut usize,
    n: usize,
    what: &'static str,
) -> Result<&'a [u8], WireError> {
    let end = at
        .checked_add(n)
        .filter(|&e| e <= body.len())
        .ok_or(WireError(what))?;
    let bytes = &body[*at..end];
    *at = end;
    Ok(bytes)
}

fn decode_batch(body: &Bytes) -> Result<Message, WireError> {
    const SHORT: &str = "batch shorter than its header";
    const ITEM: &str = "batch shorter than its messages";
    let mut at = 2;
    let len = usize::from(take(body, &mut at, 1, SHORT)?[0]);
    let epoch = std::str::from_utf8(take(body, &mut at, len, SHORT)?)
        .map_err(|_| WireError("batch epoch is not UTF-8"))?;
    let mut first = [0u8; 8];
    first.copy_from_slice(take(body, &mut at, 8, SHORT)?);
    let first = u64::from_be_bytes(first);
    let count = take(body, &mut at, 2, SHORT)?;
    let count = u16::from_be_bytes([count[0], count[1]]);
    if first == 0 || count == 0 || first.checked_add(u64::from(count)).is_none() {
        return Err(WireError(
            "batch at offset 0, empty, or past the last offset",
        ));
    }
    let mut items = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        let head = take(body, &mut at, 2, ITEM)?;
        let codec = codec_of(&head[..1]).ok_or(WireError("batch message with an unknown codec"))?;
        let key = match head[1] {
            0 => None,
            flags @ (1 | 3) => {
                let n = take(body, &mut at, 2, ITEM)?;
                let n = usize::from(u16::from_be_bytes([n[0], n[1]]));
                let key = std::str::from_utf8(take(body, &mut at, n, ITEM)?)
                    .map_err(|_| WireError("batch message key is not UTF-8"))?;
                Some((Arc::from(key), flags == 3))
            }
            _ => return Err(WireError("batch message with unknown flags")),
        };
        let n = take(body, &mut at, 4, ITEM)?;
        let n = u32::from_be_bytes([n[0], n[1], n[2], n[3]]);
        let n = usize::try_from(n).map_err(|_| WireError(ITEM))?;
        let start = at;
        take(body, &mut at, n, ITEM)?;
        items.push(Item {
            codec,
            key,
            data: body.slice(start..at),
        });
    }
    if at != body.len() {
        return Err(WireError("batch longer than its messages"));
    }
    Ok(Message::Batch {
        epoch: Arc::from(epoch),
        first,
        items,
    })
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

    /// A batch as the publish script writes it.
    fn batch(epoch: &str, first: u64, items: &[(u8, u8, &str, &[u8])]) -> Vec<u8> {
        let mut out = vec![VERSION, BATCH, epoch.len() as u8];
        out.extend_from_slice(epoch.as_bytes());
        out.extend_from_slice(&first.to_be_bytes());
        out.extend_from_slice(&(items.len() as u16).to_be_bytes());
        for (codec, flags, key, data) in items {
            out.extend_from_slice(&[*codec, *flags]);
            if *flags != 0 {
                out.extend_from_slice(&(key.len() as u16).to_be_bytes());
                out.extend_from_slice(key.as_bytes());
            }
            out.extend_from_slice(&(data.len() as u32).to_be_bytes());
            out.extend_from_slice(data);
        }
        out
    }

    #[test]
    fn batches_round_trip_and_refuse_every_cut() {
        let body = batch(
            "ep",
            41,
            &[
                (b'j', 0, "", b"1"),
                (b'm', 3, "k:1", b"\xc0"),
                (b'j', 1, "k:2", b""),
            ],
        );
        assert_eq!(
            decode(body.clone()),
            Ok(Message::Batch {
                epoch: Arc::from("ep"),
                first: 41,
                items: vec![
                    Item {
                        codec: Codec::Json,
                        key: None,
                        data: Bytes::from_static(b"1")
                    },
                    Item {
                        codec: Codec::MsgPack,
                        key: Some((Arc::from("k:1"), true)),
                        data: Bytes::from_static(b"\xc0"),
                    },
                    Item {
                        codec: Codec::Json,
                        key: Some((Arc::from("k:2"), false)),
                        data: Bytes::new(),
                    },
                ],
            })
        );
        // The node's half of it is the same bytes.
        let Ok(Message::Batch { items, .. }) = decode(body.clone()) else {
            unreachable!("decoded above");
        };
        assert_eq!(batch_items(&items), body[2 + 1 + 2 + 8 + 2..]);
        for cut in 0..body.len() {
            assert!(decode(body[..cut].to_vec()).is_err(), "cut at {cut}");
        }
        let mut long = body.clone();
        long.push(0);
        assert!(decode(long).is_err(), "a trailing byte");
        let mut flags = body.clone();
        flags[2 + 1 + 2 + 8 + 2 + 1] = 2;
        assert!(decode(flags).is_err(), "bad flags");
        assert!(
            decode(batch("e", 0, &[(b'j', 0, "", b"1")])).is_err(),
            "offset 0"
        );
        assert!(decode(batch("e", 1, &[])).is_err(), "empty");
        assert!(
            decode(batch("e", u64::MAX, &[(b'j', 0, "", b"1")])).is_err(),
            "past the end"
        );
        assert!(
            decode(batch("e", 1, &[(b'x', 0, "", b"1")])).is_err(),
            "unknown codec"
        );
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
