//! Encodings (JSON and MessagePack) and the [`Payload`] that carries application data: the wire
//! types of `hub-protocol`, which the server and the Rust client share.

pub use hub_protocol::{Codec, Payload};
