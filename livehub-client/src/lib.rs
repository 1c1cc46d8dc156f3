//! A Rust client of the hub over WebSocket (tokio-tungstenite), JSON or MessagePack.
//!
//! # Layout
//!
//! - [`Client`] / [`ClientBuilder`]: connect, then [`Client::subscribe`],
//!   [`Client::publish`] (answers the message's [`Position`]), [`Client::emit`] (a custom event
//!   and its ack), [`Client::presence`], rooms, [`Client::close`].
//! - [`Subscription`]: a [`Stream`](futures_util::Stream) of [`SubEvent`]s. It survives
//!   reconnects: no duplicate and no silent hole, and a [`Resumed`] says whether a resume
//!   recovered everything (`recovered: true`) or what was lost.
//! - [`Client::psubscribe`]: a [`PatternSubscription`] of every topic that matches a pattern
//!   (`scores/*`, `scores/**`), a stream of [`PatternEvent`]s; each topic keeps its own
//!   position, resumed after reconnects with the pattern's `positions` (no duplicate and no
//!   silent hole per topic), and its gaps are told per topic.
//! - [`SubscribeOptions`]: `since` (resume after a position), `last` (start with the newest
//!   messages held), `conflate` (latest value per key when behind: [`SubEvent::Conflated`]
//!   says what was superseded, [`Message::key`] and [`Message::delete`] what a message is),
//!   `presence`. [`Client::publish_keyed`] and [`Client::publish_delete`] publish keyed values.
//! - [`ConnectionEvents`], [`ServerEvents`]: the connection's life, and the server's events
//!   to this session or its rooms; an event that asks for an answer (the server's
//!   `emit_with_ack`) is a [`ServerEvent::Ask`], answered with [`Ack::reply`].
//! - [`Error`]: every failure, typed, with the server's codes.
//!
//! # Reconnecting
//!
//! A lost connection is replaced after a random delay between a floor and a ceiling that
//! doubles with each failure (full jitter; [`ClientBuilder::reconnect`]). The server's close
//! reasons are honoured: **kicked** (1008 `kicked`) and refused credentials (401/403) close
//! the client for good; after a **shutdown** (1001) clients come back spread over a wider
//! window; anything else (slow consumer, heartbeat, network) reconnects at once. When the
//! close reason carries the server's hint (`shutdown;retry_ms=2350`: the reason, then
//! parameters after a `;`), the client waits exactly that long (at most the ceiling) instead. A connection
//! silent past the server's heartbeat timeout is taken for dead. After a reconnect every
//! subscription resumes from its last position, and the rooms the client joined are joined
//! again.
//!
//! # Bounded
//!
//! Requests made while offline wait in a queue of [`ClientBuilder::offline_queue`] (then fail
//! at once with [`Error::QueueFull`]); each subscription buffers a bounded number of events
//! and lags (then resumes from its last position) when the application does not read; event
//! receivers drop their oldest events, and say so; frames over [`ClientBuilder::max_frame_size`]
//! end the connection. A frame the client cannot read is reported
//! ([`ConnectionEvent::ProtocolError`]) and skipped; one of an unknown type is ignored. Nothing
//! the server sends makes the client panic.
//!
//! # Features
//!
//! | feature | what |
//! | --- | --- |
//! | `tls` | `wss://` URLs over rustls (the ring provider), trusting webpki's roots unless `ClientBuilder::tls_config` (with this feature) says otherwise. Without it a `wss://` URL fails with [`Error::Config`] |
//! | `tls-test` | builds the TLS test (a `wss://` hub with a certificate made in the test) |
//!
//! # Example
//!
//! A hub on a loopback port (livehub-core behind livehub-ws), and a client that subscribes and
//! publishes:
//!
//! ```
//! use futures_util::StreamExt;
//! use livehub_client::{Client, SubEvent};
//! use serde_json::json;
//!
//! # type BoxError = Box<dyn std::error::Error + Send + Sync>;
//! # #[tokio::main]
//! # async fn main() -> Result<(), BoxError> {
//! # // A safety net: should anything go wrong, the example fails instead of hanging.
//! # tokio::time::timeout(std::time::Duration::from_secs(10), async {
//! // The server: a hub whose clients may publish, served over WebSocket.
//! struct Open;
//! #[livehub_core::async_trait]
//! impl livehub_core::Hooks for Open {
//!     async fn authorize(&self, _: &livehub_core::Identity, _: livehub_core::Action<'_>) -> bool {
//!         true
//!     }
//! }
//! let hub = livehub_core::Hub::builder().hooks(Open).build();
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let url = format!("ws://{}/", listener.local_addr()?);
//! tokio::spawn(async move {
//!     while let Ok((tcp, _)) = listener.accept().await {
//!         let service = livehub_ws::WsService::new(hub.clone());
//!         tokio::spawn(
//!             hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
//!                 .serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(tcp), service)
//!                 .into_owned(),
//!         );
//!     }
//! });
//!
//! // The client.
//! let client = Client::connect(url).await?;
//! let mut scores = client.subscribe("scores").await?;
//! let position = client.publish("scores", &json!({"home": 2, "away": 1})).await?;
//!
//! let Some(SubEvent::Message(message)) = scores.next().await else {
//!     panic!("a message")
//! };
//! assert_eq!(message.position, position);
//! assert_eq!(message.decode::<serde_json::Value>()?, json!({"home": 2, "away": 1}));
//! client.close().await;
//! # Ok::<(), BoxError>(())
//! # })
//! # .await?
//! # }
//! ```

#![warn(missing_docs)]

mod backoff;
mod client;
mod connection;
mod driver;
mod error;
mod events;
mod feed;
mod pattern;
mod subscription;

pub use client::{Client, ClientBuilder};
pub use error::Error;
pub use events::{
    Ack, ConnectionEvent, ConnectionEvents, ConnectionState, DisconnectCause, ServerEvent,
    ServerEvents,
};
pub use livehub_protocol::{
    Code, Codec, ErrorCode, GapReason, Member, Payload, Position, PresenceCount, SessionId,
};
pub use pattern::{PatternEvent, PatternOptions, PatternResumed, PatternSubscription};
pub use subscription::{
    Gap, Message, ResumeCause, Resumed, SubEvent, SubscribeOptions, Subscription,
};

/// Checks at compile time that the handles can cross tasks.
#[allow(dead_code)]
fn assert_send_sync() {
    fn is<T: Send + Sync>() {}
    fn send<T: Send>() {}
    is::<Client>();
    is::<Error>();
    is::<Ack>();
    send::<Subscription>();
    send::<PatternSubscription>();
}
