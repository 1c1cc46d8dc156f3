//! The hub's wire protocol (PROTOCOL.md at the repository root) as types: the frames clients
//! and servers exchange, in both directions, with their encoders and decoders in JSON and
//! MessagePack; positions, session ids, presence members; the stable error codes and close
//! reasons. No runtime and no HTTP: the server (`livehub-core`) and the Rust client
//! (`livehub-client`) both build on it.
//!
//! # Layout
//!
//! - [`Codec`] and [`Payload`]: the two encodings, and application data kept as bytes in the
//!   encoding it came in (converted without a tree when a reader of the other one needs it).
//! - [`ServerFrame`]: what the server sends. Hand-written encoders (one allocation, the
//!   payload's bytes spliced in) and a lenient decoder for clients (unknown types and fields
//!   are not errors). [`Shared`] encodes a frame at most once per encoding for many receivers.
//! - [`ClientFrame`] / [`ClientOp`]: what clients send. An encoder for clients and a strict
//!   decoder for the server, each failure with a stable code ([`FrameError`]).
//! - [`ErrorCode`] (known codes) and [`Code`] (a received code, known or not);
//!   [`DisconnectReason`] (close codes and reason strings); [`DecodeError`], [`EncodeError`].
//! - [`Position`], [`SessionId`], [`Member`], [`Scope`], [`GapReason`], [`PresenceEvents`],
//!   [`MemberPage`], [`PresenceCount`]: the values frames carry.
//!
//! # Example
//!
//! A client's request, as the server decodes it, and the server's answer, as the client
//! decodes it, in MessagePack:
//!
//! ```
//! use livehub_protocol::{ClientFrame, ClientOp, Codec, Payload, Position, ServerFrame};
//!
//! // The client publishes.
//! let data = Payload::encode(Codec::MsgPack, &serde_json::json!({"text": "hi"})).unwrap();
//! let request = ClientFrame::new(ClientOp::Publish {
//!     topic: "chat/lobby".into(),
//!     data,
//!     key: None,
//!     delete: false,
//! })
//! .with_id(7);
//! let wire = request.encode(Codec::MsgPack).unwrap();
//!
//! // The server reads it...
//! let got = ClientFrame::decode(Codec::MsgPack, &wire).unwrap();
//! let ClientOp::Publish { topic, data, .. } = &got.op else { panic!("a publish") };
//! assert_eq!((topic.as_str(), got.id), ("chat/lobby", Some(7)));
//! let text: serde_json::Value = data.decode().unwrap();
//! assert_eq!(text["text"], "hi");
//!
//! // ...and answers with the message's position.
//! let position = Position::new("9f1c2a7d3b4e5f60", 1);
//! let reply = ServerFrame::Reply { id: 7, data: Payload::from_value(&position).unwrap() };
//! let wire = reply.encode(Codec::MsgPack).unwrap();
//!
//! // The client reads the answer.
//! let ServerFrame::Reply { id, data } = ServerFrame::decode(Codec::MsgPack, &wire).unwrap()
//! else {
//!     panic!("a reply")
//! };
//! assert_eq!(id, 7);
//! assert_eq!(data.decode::<Position>().unwrap(), position);
//! ```
//!
//! # Bad input
//!
//! No decoder panics or allocates without bound on any input: nesting is limited to 128
//! levels, lengths come from the input's own size, and every failure is a [`DecodeError`] with
//! a stable [`ErrorCode`]. The fuzz targets `client_frame_*` and `server_frame_*` (in `fuzz/`)
//! check it.

#![warn(missing_docs)]

mod client;
mod codec;
mod error;
mod server;
mod shape;
mod types;
mod wire;

pub use client::{ClientFrame, ClientOp, FrameError};
pub use codec::{Codec, Payload};
pub use error::{CloseText, Code, DecodeError, DisconnectReason, EncodeError, ErrorCode};
pub use server::{ServerFrame, Shared, PROTOCOL_VERSION};
pub use types::{
    BadSessionId, GapReason, Member, MemberPage, Position, PresenceCount, PresenceEvents, Scope,
    SessionId,
};

/// Checks at compile time that the frames can cross threads.
#[allow(dead_code)]
fn assert_send_sync() {
    fn is<T: Send + Sync>() {}
    is::<ServerFrame>();
    is::<ClientFrame>();
    is::<Shared>();
    is::<Payload>();
}
