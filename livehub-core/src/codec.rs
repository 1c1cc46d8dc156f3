//! Encodings (JSON and MessagePack) and the [`Payload`] that carries application data: the wire
//! types of `livehub-protocol`, which the server and the Rust client share.

pub use livehub_protocol::{Codec, Payload};
