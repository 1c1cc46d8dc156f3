//! The bench's messages: how a publish frame is built, and how a received frame is recognized
//! and its sequence number and send time read back, in O(1) and without allocating.
//!
//! The `data` of every bench message is a string of exactly `bytes` bytes:
//! `SSSSSSSSSS:TTTTTTTTTTTTTTTTTTTT:xxxx...` (a 10-digit sequence number, a 20-digit send time
//! in nanoseconds on the sender's clock, padding). Both the hub's `message` frame and the
//! publish frame the Node peer echoes end with `data`, so the payload is found at a fixed
//! distance from the frame's end.

/// Smallest payload: the sequence number and send time with their separators.
pub(crate) const MIN_BYTES: usize = 32;

/// The wire encoding of the bench's frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Enc {
    /// JSON in text frames.
    Json,
    /// MessagePack in binary frames.
    MsgPack,
}

impl Enc {
    /// Parses `json` / `msgpack`.
    pub(crate) fn parse(s: &str) -> Option<Enc> {
        match s {
            "json" => Some(Enc::Json),
            "msgpack" => Some(Enc::MsgPack),
            _ => None,
        }
    }

    /// The name on the wire.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Enc::Json => "json",
            Enc::MsgPack => "msgpack",
        }
    }

    /// The WebSocket opcode of this encoding's frames.
    pub(crate) fn opcode(self) -> u8 {
        match self {
            Enc::Json => crate::ws::OP_TEXT,
            Enc::MsgPack => crate::ws::OP_BINARY,
        }
    }
}

/// Writes a MessagePack string header for a string of `len` bytes.
fn mp_str_header(out: &mut Vec<u8>, len: usize) {
    if len < 32 {
        out.push(0xa0 | len as u8);
    } else if let Ok(l) = u8::try_from(len) {
        out.extend_from_slice(&[0xd9, l]);
    } else if let Ok(l) = u16::try_from(len) {
        out.push(0xda);
        out.extend_from_slice(&l.to_be_bytes());
    } else {
        out.push(0xdb);
        out.extend_from_slice(&(len as u32).to_be_bytes());
    }
}

/// Writes a MessagePack string.
fn mp_str(out: &mut Vec<u8>, s: &str) {
    mp_str_header(out, s.len());
    out.extend_from_slice(s.as_bytes());
}

/// Writes the `data` string content: sequence, send time, padding up to `bytes`.
fn content(out: &mut Vec<u8>, seq: u64, ts_ns: u64, bytes: usize) {
    let start = out.len();
    push_digits(out, seq, 10);
    out.push(b':');
    push_digits(out, ts_ns, 20);
    out.push(b':');
    out.resize(start + bytes.max(MIN_BYTES), b'x');
}

/// Appends `v` as exactly `width` decimal digits (zero-padded, truncated to the low digits).
fn push_digits(out: &mut Vec<u8>, mut v: u64, width: usize) {
    let start = out.len();
    out.resize(start + width, b'0');
    for i in (0..width).rev() {
        out[start + i] = b'0' + (v % 10) as u8;
        v /= 10;
    }
}

/// Parses `width` ASCII digits.
fn parse_digits(b: &[u8]) -> Option<u64> {
    let mut v: u64 = 0;
    for &c in b {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v.wrapping_mul(10).wrapping_add(u64::from(c - b'0'));
    }
    Some(v)
}

/// Builds publish frames and recognizes received messages for one encoding and size.
#[derive(Debug, Clone)]
pub(crate) struct Codec {
    enc: Enc,
    bytes: usize,
    topic: String,
    /// What precedes the content in a received frame (`"data":"` or the MessagePack key and
    /// string header).
    marker: Vec<u8>,
    /// Bytes after the content (`"}` for JSON, none for MessagePack).
    trailer: usize,
    /// Publish frames carry a key, one of this many (`k<seq % keys>`); 0: none.
    keys: u64,
}

impl Codec {
    /// A codec for `enc`, payloads of `bytes` bytes, on `topic`.
    pub(crate) fn new(enc: Enc, bytes: usize, topic: &str) -> Codec {
        let bytes = bytes.max(MIN_BYTES);
        let (marker, trailer) = match enc {
            Enc::Json => (b"\"data\":\"".to_vec(), 2),
            Enc::MsgPack => {
                let mut m = Vec::new();
                mp_str(&mut m, "data");
                mp_str_header(&mut m, bytes);
                (m, 0)
            }
        };
        Codec {
            enc,
            bytes,
            topic: topic.to_owned(),
            marker,
            trailer,
            keys: 0,
        }
    }

    /// The same codec, publishing keyed messages over `keys` keys (`k<seq % keys>`: for
    /// latest-value conflation; received messages carry the key before their data).
    pub(crate) fn with_keys(mut self, keys: u64) -> Codec {
        self.keys = keys;
        self
    }

    /// The encoding.
    pub(crate) fn enc(&self) -> Enc {
        self.enc
    }

    /// Appends the payload of a `publish` frame (not yet framed as WebSocket).
    pub(crate) fn publish(&self, out: &mut Vec<u8>, seq: u64, ts_ns: u64) {
        match self.enc {
            Enc::Json => {
                out.extend_from_slice(b"{\"type\":\"publish\",\"topic\":\"");
                out.extend_from_slice(self.topic.as_bytes());
                if self.keys > 0 {
                    out.extend_from_slice(format!("\",\"key\":\"k{}", seq % self.keys).as_bytes());
                }
                out.extend_from_slice(b"\",\"data\":\"");
                content(out, seq, ts_ns, self.bytes);
                out.extend_from_slice(b"\"}");
            }
            Enc::MsgPack => {
                out.push(if self.keys > 0 { 0x84 } else { 0x83 });
                mp_str(out, "type");
                mp_str(out, "publish");
                mp_str(out, "topic");
                mp_str(out, &self.topic);
                if self.keys > 0 {
                    mp_str(out, "key");
                    mp_str(out, &format!("k{}", seq % self.keys));
                }
                mp_str(out, "data");
                mp_str_header(out, self.bytes);
                content(out, seq, ts_ns, self.bytes);
            }
        }
    }

    /// The `subscribe` frame's payload (with `id: 1`).
    pub(crate) fn subscribe(&self) -> Vec<u8> {
        match self.enc {
            Enc::Json => format!(
                "{{\"type\":\"subscribe\",\"topic\":\"{}\",\"id\":1}}",
                self.topic
            )
            .into_bytes(),
            Enc::MsgPack => {
                let mut out = vec![0x83];
                mp_str(&mut out, "type");
                mp_str(&mut out, "subscribe");
                mp_str(&mut out, "topic");
                mp_str(&mut out, &self.topic);
                mp_str(&mut out, "id");
                out.push(1);
                out
            }
        }
    }

    /// If `frame` is a bench message, its sequence number and send time.
    #[inline]
    pub(crate) fn message(&self, frame: &[u8]) -> Option<(u64, u64)> {
        let len = frame.len();
        let end = len.checked_sub(self.trailer)?;
        let start = end.checked_sub(self.bytes)?;
        let m = start.checked_sub(self.marker.len())?;
        if frame[m..start] != self.marker[..] {
            return None;
        }
        if self.trailer == 2 && &frame[end..] != b"\"}" {
            return None;
        }
        let c = &frame[start..end];
        if c[10] != b':' || c[31] != b':' {
            return None;
        }
        Some((parse_digits(&c[..10])?, parse_digits(&c[11..31])?))
    }

    /// Calls `f(seq, send_time)` for every bench message inside `body` (JSON frames spliced
    /// into a long-poll response).
    pub(crate) fn messages_in(&self, body: &[u8], mut f: impl FnMut(u64, u64)) {
        let finder = memchr::memmem::Finder::new(&self.marker);
        let mut at = 0;
        while let Some(p) = finder.find(&body[at..]) {
            let end = at + p + self.marker.len() + self.bytes + self.trailer;
            if end <= body.len() {
                if let Some((seq, ts)) = self.message(&body[..end]) {
                    f(seq, ts);
                    at = end;
                    continue;
                }
            }
            at += p + 1;
        }
    }

    /// The `type` of a frame that is not a bench message (`welcome`, `reply`, `error`, ...).
    pub(crate) fn frame_type<'a>(&self, frame: &'a [u8]) -> Option<&'a [u8]> {
        match self.enc {
            Enc::Json => {
                let rest = frame.strip_prefix(b"{\"type\":\"")?;
                let end = rest.iter().position(|&b| b == b'"')?;
                Some(&rest[..end])
            }
            Enc::MsgPack => {
                if frame.len() < 7 || frame[0] & 0xf0 != 0x80 || &frame[1..6] != b"\xa4type" {
                    return None;
                }
                let n = usize::from(frame[6] & 0x1f);
                frame.get(7..7 + n)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_is_recognized_in_both_encodings() {
        for enc in [Enc::Json, Enc::MsgPack] {
            for bytes in [32, 100, 300] {
                let c = Codec::new(enc, bytes, "bench");
                let mut out = Vec::new();
                c.publish(&mut out, 42, 123_456_789);
                assert_eq!(c.message(&out), Some((42, 123_456_789)));
                assert_eq!(c.frame_type(&out), Some(&b"publish"[..]));
            }
        }
    }

    #[test]
    fn keyed_publishes_carry_their_key_and_the_hubs_keyed_messages_are_recognized() {
        use livehub_protocol::{ClientFrame, ClientOp, Codec as Wire, ServerFrame};
        for enc in [Enc::Json, Enc::MsgPack] {
            let c = Codec::new(enc, 100, "bench").with_keys(16);
            let mut out = Vec::new();
            c.publish(&mut out, 42, 123_456_789);
            let wire = if enc == Enc::Json {
                Wire::Json
            } else {
                Wire::MsgPack
            };
            let Ok(ClientOp::Publish { data, key, .. }) =
                ClientFrame::decode(wire, &bytes::Bytes::from(out)).map(|f| f.op)
            else {
                panic!("{enc:?}: not a publish");
            };
            assert_eq!(key.as_deref(), Some("k10"), "{enc:?}");
            // The hub's message of it: the key before the data, which the load generator
            // finds at the end.
            let message = ServerFrame::Message {
                topic: "bench".into(),
                epoch: "e".into(),
                offset: 1,
                data,
                key: key.map(Into::into),
                delete: false,
            };
            let encoded = message.encode(wire).unwrap_or_default();
            assert_eq!(c.message(&encoded), Some((42, 123_456_789)), "{enc:?}");
        }
    }

    #[test]
    fn json_publish_is_json() {
        let c = Codec::new(Enc::Json, 40, "bench");
        let mut out = Vec::new();
        c.publish(&mut out, 7, 9);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap_or_default();
        assert_eq!(v["type"], "publish");
        assert_eq!(v["data"].as_str().map(str::len), Some(40));
    }
}
