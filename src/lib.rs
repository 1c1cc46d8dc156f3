//! An embeddable real-time pub/sub hub for Rust services: topics with positions and history,
//! server-managed rooms, presence, heartbeats, JSON and MessagePack, over WebSocket, server-sent
//! events and long-polling at once.
//!
//! # Layout
//!
//! This crate is the facade. It re-exports [`hub_core`] (the hub itself: no HTTP inside) and,
//! behind features, the transports, each a service you mount in your own axum or hyper server:
//!
//! | feature | module | transport |
//! | --- | --- | --- |
//! | `ws` (default) | [`ws`] | WebSocket (tokio-tungstenite over a hyper upgrade) |
//! | `sse` (default) | [`sse`] | server-sent events, with commands by POST |
//! | `poll` (default) | [`poll`] | long-polling with cursors |
//!
//! The wire protocol is in `PROTOCOL.md`; a browser needs nothing but its native `WebSocket`,
//! `EventSource` or `XMLHttpRequest`.
//!
//! # Example
//!
//! A hub behind an axum router; the server publishes, browsers subscribe.
//!
//! ```no_run
//! # #[cfg(feature = "ws")]
//! # async fn run() -> std::io::Result<()> {
//! use hub::{ws::WsService, Hub};
//!
//! let hub = Hub::builder().history_len(100).build();
//! let app = axum::Router::new().route_service("/ws", WsService::new(hub.clone()));
//!
//! tokio::spawn({
//!     let hub = hub.clone();
//!     async move {
//!         for minute in 0.. {
//!             let _ = hub.publish("scores/all", &serde_json::json!({"minute": minute}));
//!             tokio::time::sleep(std::time::Duration::from_secs(1)).await;
//!         }
//!     }
//! });
//!
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! axum::serve(listener, app).await
//! # }
//! ```

#![warn(missing_docs)]

pub use hub_core::*;

/// The WebSocket transport.
#[cfg(feature = "ws")]
pub use hub_ws as ws;

/// The server-sent events transport.
#[cfg(feature = "sse")]
pub use hub_sse as sse;

/// The long-polling transport.
#[cfg(feature = "poll")]
pub use hub_poll as poll;
