//! Shutting down a host server with the hub inside it.

use std::future::Future;
use std::time::Duration;

use livehub_core::Hub;

/// The future to hand to the host server's graceful shutdown (axum's
/// `with_graceful_shutdown`, or any server's "stop when this completes"): once `signal`
/// completes it shuts the hub down ([`Hub::shutdown`]) and only then completes itself.
///
/// Why: a server's graceful shutdown waits for every open connection to finish, and the hub's
/// connections (an SSE stream, a waiting long-poll) finish only when the hub ends them. Shut
/// down in this order, a host with open streams stops within about `grace`:
///
/// 1. on `signal`, the hub refuses new sessions (503 `shutting_down`), and ends every session
///    after the frames already queued for it: WebSocket close 1001 `shutdown`, a last SSE
///    `close` event, the `close` frame in a waiting (or the next) poll;
/// 2. it waits up to `grace` for the transports to write that, then aborts whatever is left;
/// 3. this future completes: the server stops accepting and finishes what is left (ordinary
///    requests in flight).
///
/// `signal` is any future: `tokio::signal::ctrl_c()`, a channel, a Unix signal stream.
///
/// ```no_run
/// use std::time::Duration;
/// use livehub::{ws::WsService, Hub};
///
/// # #[tokio::main] async fn main() -> std::io::Result<()> {
/// let hub = Hub::builder().build();
/// let app = axum::Router::new().route_service("/ws", WsService::new(hub.clone()));
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
/// axum::serve(listener, app)
///     .with_graceful_shutdown(livehub::shutdown_signal(
///         &hub,
///         tokio::signal::ctrl_c(),
///         Duration::from_secs(5),
///     ))
///     .await
/// # }
/// ```
pub fn shutdown_signal<F>(
    hub: &Hub,
    signal: F,
    grace: Duration,
) -> impl Future<Output = ()> + Send + 'static
where
    F: Future + Send + 'static,
{
    let hub = hub.clone();
    async move {
        // Whatever the signal says (ctrl_c's io::Error included), it is time to stop.
        let _ = signal.await;
        hub.shutdown(grace).await;
    }
}
