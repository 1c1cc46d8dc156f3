//! The transport-independent core of the hub: topics, rooms, presence, heartbeats, codecs and
//! hooks. No HTTP in here: transports (`hub-ws`, `hub-sse`, `hub-poll`) attach sessions through
//! the seam in [`session`], and the host talks to the [`Hub`].
//!
//! # Layout
//!
//! - [`Hub`] / [`HubBuilder`]: the handle the host keeps, and its settings. Server-side publish
//!   ([`Hub::publish`]), rooms ([`Hub::join`], [`Hub::to`]), direct sends ([`Hub::emit_to`]),
//!   presence ([`Hub::topic_members`]) and counters ([`Hub::stats`]).
//! - [`session`]: the transport seam: [`Hub::connect`] gives a [`Session`] (frames in) and an
//!   [`Outbox`] (frames out, already encoded, in batches).
//! - [`Hooks`]: authentication, authorization, connect/disconnect; [`HubBuilder::on_event`] for
//!   custom client events with replies.
//! - [`Codec`] / [`Payload`]: JSON and MessagePack. Each frame is encoded at most once per codec,
//!   whatever the number of receivers, and the bytes are shared.
//!
//! The wire protocol every transport speaks is in `PROTOCOL.md` at the repository root.
//!
//! # Example
//!
//! A transport in a dozen lines: attach a session, feed it a frame, write what comes out.
//!
//! ```
//! use hub_core::{Codec, ConnectRequest, Hub, Outgoing, TransportInfo};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let hub = Hub::builder().build();
//! let req = ConnectRequest::new(TransportInfo::duplex("memory"), Codec::Json);
//! let mut conn = hub.connect(req).await.unwrap();
//!
//! conn.session.handle(r#"{"type":"subscribe","topic":"scores/all","id":1}"#.into()).await;
//! hub.publish("scores/all", &serde_json::json!({"home": 1, "away": 0})).unwrap();
//!
//! let mut out = Vec::new();
//! conn.outbox.next_batch(&mut out).await;
//! let texts: Vec<String> = out
//!     .iter()
//!     .filter_map(|o| match o {
//!         Outgoing::Frame(b) => Some(String::from_utf8_lossy(b).into_owned()),
//!         _ => None,
//!     })
//!     .collect();
//! assert!(texts[0].starts_with(r#"{"type":"welcome""#));
//! assert!(texts[1].starts_with(r#"{"type":"reply","id":1"#));
//! assert!(texts[2].contains(r#""offset":1,"data":{"away":0,"home":1}"#));
//! # }
//! ```
//!
//! # Promises
//!
//! - **Encode once**: a message reaches N sessions for at most one encoding per codec.
//! - **Bounded**: every session queue has a capacity; a full one meets the
//!   [`SlowConsumerPolicy`], and other sessions never wait.
//! - **Never silent loss**: resuming subscribers get exactly what they missed, or a `gap`.
//! - **Bad input gets a stable error code** ([`ErrorCode`]), never a panic.

#![warn(missing_docs)]

pub mod broker;
mod codec;
mod config;
mod error;
mod frame;
mod hooks;
mod hub;
pub mod presence;
pub mod session;
mod stats;

pub use async_trait::async_trait;
pub use codec::{Codec, Payload};
pub use config::SlowConsumerPolicy;
pub use error::{
    DecodeError, DisconnectReason, EncodeError, ErrorCode, HandlerError, Rejection, RoomError,
    SendError,
};
pub use hooks::{
    Action, AllowSubscribe, ConnectRequest, EventContext, EventHandler, HandlerResult, Hooks,
    Identity, SessionInfo,
};
pub use broker::{Broker, BrokerError, Position, Publication};
pub use hub::{Broadcast, Hub, HubBuilder, ShutdownReport};
pub use presence::{Member, PresenceStore, Scope};
pub use session::{
    CommandError, Connection, Outbox, Outgoing, Session, SessionId, StreamPosition, TransportInfo,
};
pub use stats::StatsSnapshot;
