//! Nodes of one hub over Redis, for the cluster tests: each node is its own [`Hub`] with its
//! own [`RedisEngine`], serving the three transports on a free port (`/ws`, `/sse`,
//! `/poll`); clients authenticate with `?user=`. Also a TCP proxy to cut one node's link to
//! Redis while the others keep theirs.
//!
//! The Redis helpers (the shared Redis with a prefix of the test's own, a `redis-server` of
//! the test's own, skipping without Redis) are livehub-redis's, included from its tests.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use livehub::poll::PollService;
use livehub::sse::SseService;
use livehub::ws::WsService;
use livehub::{async_trait, Action, ConnectRequest, Hooks, Hub, HubBuilder, Identity, Rejection};
use livehub_redis::{RedisEngine, RedisEngineBuilder};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::common::{serve_router, Client, Kind};

#[path = "../../livehub-redis/tests/common/servers.rs"]
mod servers;
pub(crate) use servers::*;

/// `?user=<name>` names the user; clients may subscribe and publish anywhere.
pub(crate) struct UserHooks;

#[async_trait]
impl Hooks for UserHooks {
    async fn authenticate(&self, req: &ConnectRequest) -> Result<Identity, Rejection> {
        crate::common::user_identity(req)
    }

    async fn authorize(&self, _who: &Identity, action: Action<'_>) -> bool {
        matches!(action, Action::Subscribe(_) | Action::Publish(_))
    }
}

/// One node: its hub, its engine, and where it serves.
pub(crate) struct Node {
    pub(crate) hub: Hub,
    pub(crate) engine: RedisEngine,
    pub(crate) addr: SocketAddr,
}

/// Settings for a node beyond the defaults.
#[derive(Clone, Copy)]
pub(crate) struct Options {
    pub(crate) engine: fn(RedisEngineBuilder) -> RedisEngineBuilder,
    pub(crate) hub: fn(HubBuilder) -> HubBuilder,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            engine: |e| e,
            hub: |h| h,
        }
    }
}

/// Short timeouts and backoff, for the tests where Redis goes away.
pub(crate) fn fast_engine(e: RedisEngineBuilder) -> RedisEngineBuilder {
    e.command_timeout(Duration::from_secs(1))
        .connect_timeout(Duration::from_secs(1))
        .ping_interval(Duration::from_millis(200))
        .reconnect_backoff(Duration::from_millis(50), Duration::from_millis(500))
}

/// A node of the hub whose keys start with `prefix` on the Redis at `url`; returns once its
/// own routes are subscribed.
pub(crate) async fn node(url: &str, prefix: &str, options: Options) -> Node {
    let engine = (options.engine)(RedisEngine::builder(url).prefix(prefix))
        .build()
        .await
        .expect("the redis engine connects");
    let hub = (options.hub)(Hub::builder().hooks(UserHooks))
        .broker(Arc::new(engine.clone()))
        .presence_store(Arc::new(engine.clone()))
        .build();
    tokio::time::timeout(Duration::from_secs(15), engine.ready())
        .await
        .expect("the node's own channels are subscribed");
    let app = axum::Router::new()
        .route_service("/ws", WsService::new(hub.clone()))
        .route_service("/sse", SseService::new(hub.clone()))
        .route_service("/poll", PollService::new(hub.clone()));
    let addr = serve_router(app).await;
    Node { hub, engine, addr }
}

/// `n` nodes of one hub with default settings.
pub(crate) async fn nodes(url: &str, prefix: &str, n: usize) -> Vec<Node> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(node(url, prefix, Options::default()).await);
    }
    out
}

impl Node {
    /// A client of this node (an SSE stream follows `sse_topics` from its URL).
    pub(crate) async fn client(
        &self,
        kind: Kind,
        user: &str,
        sse_topics: &[&str],
        wait: Duration,
    ) -> Client {
        Client::open(self.addr, kind, user, sse_topics, wait).await
    }

    /// Waits until this node's engine is connected (`true`) or not (`false`).
    pub(crate) async fn engine_connected(&self, connected: bool, wait: Duration) {
        until(wait, "the engine's connection to change", || {
            self.hub.engine_stats().connected == connected
        })
        .await;
    }
}

/// Waits for `done` to hold, checking every 10 ms; fails the test after `wait`. For state
/// that announces no event (an engine's connection seen from its stats, a room membership
/// made by another node).
pub(crate) async fn until(wait: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + wait;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A TCP proxy on a free loopback port in front of `target`: [`Proxy::cut`] closes every
/// connection through it and refuses new ones (a node's link to Redis lost, Redis itself
/// fine); [`Proxy::restore`] lets connections through again.
pub(crate) struct Proxy {
    pub(crate) addr: SocketAddr,
    up: watch::Sender<bool>,
    task: tokio::task::AbortHandle,
}

impl Proxy {
    pub(crate) async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = watch::Sender::new(true);
        let rx = up.subscribe();
        let task = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !*rx.borrow() {
                    // Cut: the connection is closed at once.
                    continue;
                }
                let mut down = rx.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = down.wait_for(|up| !*up) => {}
                    }
                });
            }
        })
        .abort_handle();
        Proxy { addr, up, task }
    }

    /// The URL of the Redis behind it, through it.
    pub(crate) fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    pub(crate) fn cut(&self) {
        self.up.send_replace(false);
    }

    pub(crate) fn restore(&self) {
        self.up.send_replace(true);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.up.send_replace(false);
    }
}

/// The `offset`s of message frames, in order.
pub(crate) fn offsets(frames: &[serde_json::Value]) -> Vec<u64> {
    frames.iter().filter_map(|f| f["offset"].as_u64()).collect()
}
