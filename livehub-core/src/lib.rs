//! The transport-independent core of the hub: topics, rooms, presence, heartbeats, codecs and
//! hooks. No HTTP in here: transports (`livehub-ws`, `livehub-sse`, `livehub-poll`) attach sessions through
//! the seam in [`transport`], the host talks to the [`Hub`], and topics' streams live in an
//! engine behind the seam in [`broker`].
//!
//! # Layout
//!
//! - [`Hub`] / [`HubBuilder`]: the handle the host keeps, and its settings. Server-side publish
//!   ([`Hub::publish`], which waits for the engine), rooms ([`Hub::join`], [`Hub::to`]), direct
//!   sends ([`Hub::emit_to`]), presence ([`Hub::topic_members`], and at scale
//!   [`Hub::topic_count`] and [`Hub::topic_members_page`]) and counters ([`Hub::stats`]).
//! - [`transport`]: the transport seam: [`Hub::connect`] gives a [`Session`] (frames in) and an
//!   [`Outbox`] (frames out, already encoded, in batches, each saying what it is).
//! - [`broker`]: the engine seam. The engine owns each topic's stream (positions, history); a
//!   node owns its sessions and delivers what the engine hands it. [`MemoryBroker`] is the
//!   in-process engine (the default, for one node); `livehub-redis` shares topics, rooms and
//!   presence between nodes. [`presence`] holds the presence store seam.
//! - [`Hooks`]: authentication, authorization, connect/disconnect; [`HubBuilder::on_event`] for
//!   custom client events with replies.
//! - [`Codec`] / [`Payload`]: JSON and MessagePack. Each frame is encoded at most once per codec,
//!   whatever the number of receivers, and the bytes are shared.
//!
//! Inside, one module per concern: the node's state and its side of the engine seam (`node`),
//! the local subscriber index with subscribe-with-recovery and the delivery checks
//! (`streams`), rooms (`rooms`), presence (`presence`), client commands (`dispatch`), the
//! background sweeper (`sweeper`), the session queue (`queue`) and the in-process engine
//! (`memory`).
//!
//! The wire protocol every transport speaks is in `PROTOCOL.md` at the repository root.
//!
//! # Example
//!
//! A transport in a dozen lines: attach a session, feed it a frame, write what comes out.
//!
//! ```
//! use livehub_core::{Codec, ConnectRequest, Hub, Outgoing, TransportInfo};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let hub = Hub::builder().build();
//! let req = ConnectRequest::new(TransportInfo::duplex("memory"), Codec::Json);
//! let mut conn = hub.connect(req).await.unwrap();
//!
//! conn.session.handle(r#"{"type":"subscribe","topic":"scores/all","id":1}"#.into()).await;
//! hub.publish("scores/all", &serde_json::json!({"home": 1, "away": 0})).await.unwrap();
//!
//! let mut out = Vec::new();
//! conn.outbox.next_batch(&mut out).await;
//! let texts: Vec<String> = out
//!     .iter()
//!     .filter_map(|o| match o {
//!         Outgoing::Frame(f) => Some(String::from_utf8_lossy(f.bytes()).into_owned()),
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

mod acks;
pub mod broker;
mod builder;
mod codec;
mod config;
mod dispatch;
mod error;
mod frame;
mod hooks;
mod hub;
mod memory;
mod names;
mod node;
mod patterns;
pub mod presence;
mod queue;
mod rooms;
mod session;
mod stats;
mod streams;
mod sweeper;
pub mod transport;

pub use async_trait::async_trait;
pub use broker::{Broker, BrokerError, EngineStats, HistoryFrom, NodeId, Position, Publication};
pub use builder::HubBuilder;
pub use codec::{Codec, Payload};
pub use config::{ForwardedHeader, SlowConsumerPolicy};
pub use error::{
    AckError, CloseText, DecodeError, DisconnectReason, EncodeError, ErrorCode, HandlerError,
    Rejection, RoomError, SendError,
};
pub use frame::FrameKind;
pub use hooks::{
    Action, AllowSubscribe, ConnectRequest, EventContext, EventHandler, HandlerResult, Hooks,
    Identity, SessionInfo,
};
pub use hub::{Broadcast, Hub, ShutdownReport};
/// An IP network (`10.0.0.0/8`) or address (`192.0.2.7/32`), for
/// [`HubBuilder::trusted_proxies`] (the `ipnet` crate's type).
pub use ipnet::IpNet;
pub use memory::MemoryBroker;
pub use presence::{
    Member, MemberPage, PresenceCount, PresenceError, PresenceEvents, PresenceStore, Scope,
};
pub use session::SessionId;
pub use stats::{LatencyHistogram, NodeStats, StatsSnapshot};
pub use transport::{
    CommandError, Connection, OutFrame, Outbox, Outgoing, Session, SubscribedAt, TransportInfo,
};
