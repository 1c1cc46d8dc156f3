//! An embeddable real-time pub/sub hub for Rust services: topics with positions and history,
//! server-managed rooms, presence, heartbeats, JSON and MessagePack, over WebSocket, server-sent
//! events and long-polling at once.
//!
//! # Layout
//!
//! This crate is the facade. It re-exports [`livehub_core`] (the hub itself: no HTTP inside) and,
//! behind features, the transports, each a service you mount in your own axum or hyper server:
//!
//! | feature | module | transport |
//! | --- | --- | --- |
//! | `ws` (default) | [`ws`] | WebSocket over a hyper upgrade |
//! | `sse` (default) | [`sse`] | server-sent events, with commands by POST |
//! | `poll` (default) | [`poll`] | long-polling with cursors |
//!
//! and, behind the `js` feature (default), [`js`]: hub.js, the browser client (WebSocket,
//! falling back to SSE, then long-polling; reconnection and resume), and the service that
//! serves it at a path of your router (e.g. `/hub.js`).
//!
//! Two more features, on by default:
//!
//! | feature | what |
//! | --- | --- |
//! | `axum` | the transports find the client's address in axum's `ConnectInfo<SocketAddr>` (serve with `into_make_service_with_connect_info::<SocketAddr>()`) |
//! | `metrics` | [`metrics`]: the hub's Prometheus metrics, a scrape endpoint and a `prometheus-client` collector |
//!
//! # Graceful shutdown
//!
//! A server's graceful shutdown waits for its connections, and the hub's streams end only when
//! the hub ends them: hand [`shutdown_signal`] to axum's `with_graceful_shutdown`, so that the
//! hub tells every client why (WebSocket 1001, a last SSE or poll `close`) before the server
//! finishes.
//!
//! The wire protocol is in `PROTOCOL.md`; a browser needs nothing but its native `WebSocket`,
//! `EventSource` or `XMLHttpRequest`.
//!
//! # Example
//!
//! A hub behind an axum router; the server publishes, clients subscribe: here a WebSocket
//! client on the same machine, as a browser's `WebSocket` would.
//!
//! ```
//! # #[cfg(not(feature = "ws"))]
//! # fn main() {}
//! # #[cfg(feature = "ws")]
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # // A safety net: should anything go wrong, the example fails instead of hanging.
//! # tokio::time::timeout(std::time::Duration::from_secs(10), async {
//! use futures_util::{SinkExt, StreamExt};
//! use livehub::{ws::WsService, Hub};
//! use serde_json::{json, Value};
//! use tokio_tungstenite::tungstenite::Message;
//!
//! let hub = Hub::builder().history_len(100).build();
//! let app = axum::Router::new().route_service("/ws", WsService::new(hub.clone()));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let addr = listener.local_addr()?;
//! tokio::spawn(async move { axum::serve(listener, app).await });
//!
//! // The client subscribes; once the hub has replied, the server publishes.
//! let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws")).await?;
//! ws.send(Message::text(r#"{"type":"subscribe","topic":"scores/all","id":1}"#)).await?;
//! let message = loop {
//!     let Message::Text(text) = ws.next().await.ok_or("connection closed")?? else {
//!         continue; // pings, answered by tungstenite
//!     };
//!     let frame: Value = serde_json::from_str(&text)?;
//!     match frame["type"].as_str() {
//!         Some("reply") => {
//!             hub.publish("scores/all", &json!({"minute": 1})).await?;
//!         }
//!         Some("message") => break frame,
//!         _ => {} // `welcome`, the session's first frame
//!     }
//! };
//! assert_eq!(message["topic"], "scores/all");
//! assert_eq!(message["data"], json!({"minute": 1}));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # })
//! # .await?
//! # }
//! ```

#![warn(missing_docs)]

pub use livehub_core::*;

/// The WebSocket transport.
#[cfg(feature = "ws")]
#[doc(inline)]
pub use livehub_ws as ws;

/// The server-sent events transport.
#[cfg(feature = "sse")]
#[doc(inline)]
pub use livehub_sse as sse;

/// The long-polling transport.
#[cfg(feature = "poll")]
#[doc(inline)]
pub use livehub_poll as poll;

#[cfg(feature = "js")]
pub mod js;

/// Prometheus metrics of the hub.
#[cfg(feature = "metrics")]
#[doc(inline)]
pub use livehub_metrics as metrics;

mod shutdown;
pub use shutdown::shutdown_signal;

/// The README's Rust examples, compiled (and run, where they end) as doctests, so that they
/// stay true to the API.
#[cfg(all(
    doctest,
    feature = "ws",
    feature = "sse",
    feature = "poll",
    feature = "js"
))]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
