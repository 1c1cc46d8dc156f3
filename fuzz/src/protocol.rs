//! The harnesses of livehub-protocol's decoders: `client_frame_{json,msgpack}` (the server's
//! strict decoder, [`ClientFrame::decode`]) and `server_frame_{json,msgpack}` (the client's
//! lenient one, [`ServerFrame::decode`]). One frame per input; no hub, no runtime.

use bytes::Bytes;
use livehub_protocol::{ClientFrame, ClientOp, Codec, ErrorCode, ServerFrame};

/// Every `type` of a server frame this version decodes (an `Unknown` must be none of them).
const KNOWN_SERVER_TYPES: &[&str] = &[
    "welcome", "message", "event", "reply", "error", "gap", "dropped", "join", "leave", "pong",
    "close", "session",
];

/// The `client_frame_*` targets. Must not panic. A frame it accepts encodes again in its
/// codec, and what the encoder writes decodes to the same frame, whose encoding is the same
/// bytes (a fixpoint after one round); JSON `data` is a slice of the input. A frame it refuses
/// has a decoding code (`bad_frame`, `bad_field`, `unknown_type`), and a frame that is not a
/// map has no id.
pub fn client_frame(codec: Codec, input: &[u8]) {
    let bytes = Bytes::copy_from_slice(input);
    match ClientFrame::decode(codec, &bytes) {
        Ok(frame) => {
            if codec == Codec::Json {
                if let ClientOp::Publish { data, .. } | ClientOp::Event { data, .. } = &frame.op {
                    let inside = bytes.as_ptr_range();
                    let null = data.as_bytes().as_ref() == b"null";
                    assert!(
                        null || inside.contains(&data.as_bytes().as_ptr()),
                        "JSON data copied, not shared"
                    );
                }
            }
            fixpoint(
                &frame,
                |f| f.encode(codec),
                |b| ClientFrame::decode(codec, b),
            );
        }
        Err(e) => {
            assert!(
                matches!(
                    e.code(),
                    ErrorCode::BadFrame | ErrorCode::BadField | ErrorCode::UnknownType
                ),
                "refused with {}",
                e.code()
            );
            if !starts_like_a_map(codec, input) {
                assert_eq!(e.id(), None, "an id read from a frame that is not a map");
            }
        }
    }
}

/// The `server_frame_*` targets. Must not panic. A frame of a known type encodes again in its
/// codec and decodes back to itself (a fixpoint, as for client frames); an unknown one names a
/// type this version does not know; a refused one is `bad_frame` or `bad_field`.
pub fn server_frame(codec: Codec, input: &[u8]) {
    let bytes = Bytes::copy_from_slice(input);
    match ServerFrame::decode(codec, &bytes) {
        Ok(ServerFrame::Unknown { kind }) => {
            assert!(
                !KNOWN_SERVER_TYPES.contains(&kind.as_str()),
                "known type {kind:?} decoded as unknown"
            );
        }
        Ok(frame) => {
            assert!(KNOWN_SERVER_TYPES.contains(&frame.kind()));
            fixpoint(
                &frame,
                |f| f.encode(codec),
                |b| ServerFrame::decode(codec, b),
            );
        }
        Err(e) => assert!(
            matches!(e.code(), ErrorCode::BadFrame | ErrorCode::BadField),
            "refused with {}",
            e.code()
        ),
    }
}

/// `frame` encodes, what it encodes to decodes back to `frame`, and encodes to the same bytes.
fn fixpoint<F, D>(
    frame: &F,
    encode: impl Fn(&F) -> Result<Bytes, livehub_protocol::EncodeError>,
    decode: impl Fn(&Bytes) -> Result<F, D>,
) where
    F: PartialEq + std::fmt::Debug,
    D: std::fmt::Display,
{
    let again =
        encode(frame).unwrap_or_else(|e| panic!("{frame:?} decoded but does not encode: {e}"));
    let back =
        decode(&again).unwrap_or_else(|e| panic!("the encoding of {frame:?} does not decode: {e}"));
    assert_eq!(&back, frame, "a round trip changed the frame");
    assert_eq!(
        encode(&back).ok().as_ref(),
        Some(&again),
        "the encoding is not stable"
    );
}

fn starts_like_a_map(codec: Codec, input: &[u8]) -> bool {
    match codec {
        Codec::Json => input.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{'),
        Codec::MsgPack => matches!(input.first(), Some(0x80..=0x8f | 0xde | 0xdf)),
    }
}
