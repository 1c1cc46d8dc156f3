//! The server the browser tests drive (`tests/browser/`): not a demo, a test fixture.
//!
//! It serves one of the examples (`sports`, `chat` or `dashboard`: its pages, hub.js and the
//! three transports, with the example's own code), or `protocol` (a bare hub whose clients may
//! publish, with an empty page that loads hub.js: the tests of hub.js's protocol features),
//! or `cluster` (the cluster example: two sports nodes over the Redis at `--redis`, under
//! `--prefix`; the proxy forwards to node 2 until `POST /move?node=1`), behind a TCP proxy that
//! the tests control:
//!
//! ```text
//! cargo run --example e2e_server -- sports|chat|dashboard|protocol|cluster [--addr 127.0.0.1:0] [--refuse-ws] [--refuse-sse]
//!                                          [--tick-ms 1000] [--heartbeat-ms 25000] [--seed N]
//!                                          [--engine memory|redis] [--redis URL] [--prefix P]
//! cargo run --example e2e_server -- redis-clean [--redis URL] --prefix P
//! ```
//!
//! It prints one line of JSON, `{"url": "http://127.0.0.1:<port>/", "admin":
//! "http://127.0.0.1:<port>/", "pid": <pid>}`, then serves. The page URL is the proxy; the
//! admin URL is a separate listener (so that dropping connections never drops the test's own
//! requests):
//!
//! | admin route | does |
//! | --- | --- |
//! | `POST /drop[?down_ms=N]` | closes every connection through the proxy at once (the server's side sees them end too), and for `N` ms closes new ones as soon as they are accepted (a network outage): `{"dropped": n}` |
//! | `POST /stall` | stops forwarding on every open connection, keeping them open: a peer that died without a word, found only by missed heartbeats. New connections work. `{"stalled": n}` |
//! | `POST /pause`, `POST /resume` | stop / start the example's feed (sports); `/pause` answers once no tick runs, with the position of `scores/all` then: `{"epoch", "offset"}` |
//! | `POST /kick` | disconnects every subscriber of `scores/all` (reason `kicked`): `{"kicked": n}` |
//! | `GET /stats` | `{"ws_refused", "sse_refused", "connections", "sessions"}` (`cluster`: also `"node_sessions"`, per node) |
//! | `POST /move?node=N` | `cluster`: from now on the proxy forwards to node `N` (1 or 2), and it drops every open connection (the page reconnects through it, to that node): `{"node", "dropped"}` |
//! | `POST /publish?topic=T&n=N[&key=K][&delete=1]` | publishes `{"n": N}` to `T` (with key `K`; `delete=1`: the deletion of `K`): `{"epoch", "offset"}` |
//! | `POST /ask?session=S&event=E&timeout_ms=N` | the host's `emit_with_ack` to session `S` (`{"n": 1}` as data); answers once the page did: `{"answer": ..}`, or `{"error": "timeout"}` (`AckError`'s name) |
//!
//! `--refuse-ws` answers every WebSocket upgrade with `503` (as a proxy that does not pass
//! upgrades would), `--refuse-sse` every `Accept: text/event-stream` request. `SIGTERM` shuts
//! the hub down gracefully (sessions end with reason `shutdown`), then the process exits: the
//! tests restart it on the same port with `--addr`.
//!
//! # Engines
//!
//! `--engine memory` (the default) keeps the hub's streams in the process: a restarted server
//! starts new epochs. `--engine redis` keeps them in the Redis at `--redis` (default
//! `redis://127.0.0.1:6379`) under the key prefix `--prefix` (required: a prefix of the test
//! run's own, ASCII letters, digits, `-`, `_` and `.`, so that it never meets another's keys):
//! a server restarted with the same prefix continues the same streams, same epochs, and the
//! sports feed goes on with the board the streams hold ([`sports::Feed::resume`]).
//!
//! `redis-clean` deletes every key under `--prefix` (`{P:...` and `{P}...`, the hub's key
//! layout, nothing else), prints `{"deleted": n}` and exits: the tests call it once their
//! servers are gone. It fails (exit 1) when Redis cannot be reached, which is also how the
//! tests learn whether Redis is there.

#[allow(dead_code, unreachable_pub)]
#[path = "chat.rs"]
mod chat;

#[allow(dead_code, unreachable_pub)]
#[path = "dashboard.rs"]
mod dashboard;

// The examples' `main`s and the like are not used here. The sports example comes with the
// cluster example (which is made of it), loaded once.
#[allow(dead_code, unreachable_pub)]
#[path = "cluster.rs"]
mod cluster;
use cluster::sports;

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use livehub::{Hub, SessionId};
use livehub_redis::RedisEngine;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::AbortHandle;

const USAGE: &str =
    "usage: e2e_server <sports|chat|dashboard|protocol|cluster> [--addr ip:port] [--refuse-ws] \
[--refuse-sse] [--tick-ms N] [--heartbeat-ms N] [--seed N] [--engine memory|redis] [--redis URL] \
[--prefix P]
       e2e_server redis-clean [--redis URL] --prefix P";

/// The Redis of `--engine redis` and `redis-clean` unless `--redis` says otherwise.
const DEFAULT_REDIS: &str = "redis://127.0.0.1:6379";

/// Where the hub keeps its streams.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Engine {
    /// In the process (livehub-core's in-process broker).
    Memory,
    /// In Redis (livehub-redis), under `--prefix`.
    Redis,
}

/// What the command line asks for.
struct Args {
    /// An example, or `redis-clean`.
    example: String,
    addr: SocketAddr,
    refuse_ws: bool,
    refuse_sse: bool,
    tick: Duration,
    heartbeat: Option<Duration>,
    seed: u64,
    engine: Engine,
    redis: String,
    prefix: Option<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = std::env::args().skip(1);
    let example = args.next().ok_or("which example?")?;
    if !matches!(
        example.as_str(),
        "sports" | "chat" | "dashboard" | "protocol" | "cluster" | "redis-clean"
    ) {
        return Err(format!("unknown example {example:?}"));
    }
    let mut out = Args {
        example,
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        refuse_ws: false,
        refuse_sse: false,
        tick: sports::TICK,
        heartbeat: None,
        seed: 1,
        engine: Engine::Memory,
        redis: DEFAULT_REDIS.to_owned(),
        prefix: None,
    };
    let number = |v: Option<String>, what: &str| -> Result<u64, String> {
        v.ok_or(format!("{what} needs a value"))?
            .parse()
            .map_err(|e| format!("bad {what}: {e}"))
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--addr" => {
                let v = args.next().ok_or("--addr needs a value")?;
                out.addr = v.parse().map_err(|e| format!("bad --addr {v:?}: {e}"))?;
            }
            "--refuse-ws" => out.refuse_ws = true,
            "--refuse-sse" => out.refuse_sse = true,
            "--tick-ms" => {
                out.tick = Duration::from_millis(number(args.next(), "--tick-ms")?.max(1))
            }
            "--heartbeat-ms" => {
                out.heartbeat = Some(Duration::from_millis(
                    number(args.next(), "--heartbeat-ms")?.max(100),
                ))
            }
            "--seed" => out.seed = number(args.next(), "--seed")?,
            "--engine" => {
                out.engine = match args.next().as_deref() {
                    Some("memory") => Engine::Memory,
                    Some("redis") => Engine::Redis,
                    other => return Err(format!("--engine is memory or redis, not {other:?}")),
                }
            }
            "--redis" => out.redis = args.next().ok_or("--redis needs a URL")?,
            "--prefix" => {
                let p = args.next().ok_or("--prefix needs a value")?;
                // No glob characters (`redis-clean` matches keys by pattern), no `:` (which
                // would make one prefix the start of another's keys), no braces (hash tags).
                let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
                if p.is_empty() || !p.chars().all(ok) {
                    return Err(format!(
                        "bad --prefix {p:?}: ASCII letters, digits, '-', '_' and '.' only"
                    ));
                }
                out.prefix = Some(p);
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let needs_prefix =
        out.engine == Engine::Redis || matches!(out.example.as_str(), "redis-clean" | "cluster");
    if needs_prefix && out.prefix.is_none() {
        return Err("Redis needs --prefix (a key prefix of the test run's own)".to_owned());
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Redis
// ---------------------------------------------------------------------------------------------

/// The engine for a hub whose streams and presence live in the Redis at `url`, under `prefix`.
async fn redis_engine(url: &str, prefix: &str) -> Result<RedisEngine, String> {
    RedisEngine::builder(url)
        .prefix(prefix)
        .build()
        .await
        .map_err(|e| e.to_string())
}

/// Deletes every key of the hub whose prefix is `prefix` (livehub-redis's layout: `{P:...}` and
/// `{P}:...`); returns how many there were.
async fn redis_clean(url: &str, prefix: &str) -> Result<usize, String> {
    let client = redis::Client::open(url).map_err(|e| e.to_string())?;
    let mut conn = tokio::time::timeout(
        Duration::from_secs(5),
        client.get_multiplexed_async_connection(),
    )
    .await
    .map_err(|_| format!("no answer from {url} in 5 s"))?
    .map_err(|e| e.to_string())?;
    // `{<prefix>:` or `{<prefix>}`, then anything: never the keys of a longer prefix. The
    // prefix has no glob characters (see `--prefix`).
    let pattern = format!("{{{prefix}[:}}]*");
    let mut cursor = 0u64;
    let mut deleted = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
        if !keys.is_empty() {
            let n: usize = redis::cmd("DEL")
                .arg(&keys)
                .query_async(&mut conn)
                .await
                .map_err(|e| e.to_string())?;
            deleted += n;
        }
        if next == 0 {
            return Ok(deleted);
        }
        cursor = next;
    }
}

// ---------------------------------------------------------------------------------------------
// The proxy
// ---------------------------------------------------------------------------------------------

/// One proxied connection: its task, and the switch that stalls it.
struct Link {
    task: AbortHandle,
    stall: watch::Sender<bool>,
}

/// Forwards every connection of the public port to the example's server, so that the tests
/// can cut or stall them at the TCP level, whatever the transport (an upgraded WebSocket is
/// no longer the HTTP server's to close).
#[derive(Default)]
struct Proxy {
    links: Mutex<HashMap<u64, Link>>,
    next: AtomicU64,
    /// Where new connections go (`cluster`: the node the tests chose).
    target: Mutex<Option<SocketAddr>>,
    /// New connections are closed at once until then (an outage).
    down_until: Mutex<Option<std::time::Instant>>,
}

impl Proxy {
    fn links(&self) -> MutexGuard<'_, HashMap<u64, Link>> {
        self.links.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Where new connections go from now on.
    fn retarget(&self, to: SocketAddr) {
        *self.target.lock().unwrap_or_else(PoisonError::into_inner) = Some(to);
    }

    /// Accepts forever, forwarding each connection to the target (`inner` until retargeted).
    async fn run(self: Arc<Self>, public: TcpListener, inner: SocketAddr) {
        self.retarget(inner);
        loop {
            let Ok((client, _)) = public.accept().await else {
                continue;
            };
            let down = *self
                .down_until
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if down.is_some_and(|until| std::time::Instant::now() < until) {
                drop(client);
                continue;
            }
            let id = self.next.fetch_add(1, Ordering::Relaxed);
            let inner = self
                .target
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .unwrap_or(inner);
            let (stall, stalled) = watch::channel(false);
            let me = self.clone();
            // Registered before it runs, so that it can always remove itself.
            let mut links = self.links();
            let task = tokio::spawn(async move {
                if let Ok(server) = TcpStream::connect(inner).await {
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    let _ = tokio::try_join!(pump(cr, sw, stalled.clone()), pump(sr, cw, stalled));
                }
                me.links().remove(&id);
            });
            links.insert(
                id,
                Link {
                    task: task.abort_handle(),
                    stall,
                },
            );
        }
    }

    /// Closes every open connection, and every new one for `down` (an outage); returns how
    /// many were open.
    fn drop_all(&self, down: Duration) -> usize {
        *self
            .down_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(std::time::Instant::now() + down);
        let links: Vec<Link> = self.links().drain().map(|(_, l)| l).collect();
        for l in &links {
            l.task.abort();
        }
        links.len()
    }

    /// Stops forwarding on every open connection (they stay open); returns how many.
    fn stall_all(&self) -> usize {
        let links = self.links();
        for l in links.values() {
            let _ = l.stall.send(true);
        }
        links.len()
    }

    fn count(&self) -> usize {
        self.links().len()
    }
}

/// Copies `from` to `to` until the end, or forever without a byte once stalled.
async fn pump(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    mut stalled: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if *stalled.borrow() {
            std::future::pending::<()>().await;
        }
        let n = tokio::select! {
            n = from.read(&mut buf) => n?,
            changed = stalled.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                continue;
            }
        };
        if n == 0 {
            let _ = to.shutdown().await;
            return Ok(());
        }
        if *stalled.borrow() {
            continue; // swallowed: a stalled link delivers nothing
        }
        to.write_all(&buf[..n]).await?;
    }
}

// ---------------------------------------------------------------------------------------------
// Refusing transports
// ---------------------------------------------------------------------------------------------

/// Which transports the server refuses, and how often it did.
#[derive(Default)]
struct Refuse {
    ws: bool,
    sse: bool,
    ws_refused: AtomicU64,
    sse_refused: AtomicU64,
}

/// Whether header `name` of `req` contains `needle` (ASCII case-insensitive).
fn has(req: &Request, name: header::HeaderName, needle: &str) -> bool {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().contains(needle))
}

async fn refuse(State(r): State<Arc<Refuse>>, req: Request, next: Next) -> Response {
    let which = if r.ws && has(&req, header::UPGRADE, "websocket") {
        r.ws_refused.fetch_add(1, Ordering::Relaxed);
        Some("WebSocket")
    } else if r.sse && has(&req, header::ACCEPT, "text/event-stream") {
        r.sse_refused.fetch_add(1, Ordering::Relaxed);
        Some("server-sent events")
    } else {
        None
    };
    match which {
        Some(what) => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            json!({"code": "refused", "message": format!("{what} refused by the test server")})
                .to_string(),
        )
            .into_response(),
        None => next.run(req).await,
    }
}

// ---------------------------------------------------------------------------------------------
// The feed, with a pause switch
// ---------------------------------------------------------------------------------------------

/// Ticks the sports feed every `every` unless paused. The switch is held while a tick runs,
/// so that once `pause` has it no tick is running or will run.
async fn run_feed(feed: sports::Feed, every: Duration, paused: Paused) {
    let mut clock = tokio::time::interval(every);
    clock.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    clock.tick().await;
    loop {
        clock.tick().await;
        // Held across the tick: once `/pause` has the lock, no tick is half done.
        let p = paused.lock().await;
        if !*p {
            feed.tick().await;
        }
    }
}

/// Whether the feed is paused (an async lock: a tick publishes while holding it).
type Paused = Arc<tokio::sync::Mutex<bool>>;

/// What the admin routes act on.
#[derive(Clone)]
struct Admin {
    hub: Hub,
    /// `cluster`: every node's hub and address, node 1 first.
    nodes: Vec<(Hub, SocketAddr)>,
    proxy: Arc<Proxy>,
    refuse: Arc<Refuse>,
    feed: Option<sports::Feed>,
    paused: Paused,
}

/// The query string of an admin request (axum's `query` feature is off in this workspace).
struct Query(String);

impl Query {
    /// The value of `name=<number>`, if there is one.
    fn number(&self, name: &str) -> Option<u64> {
        self.text(name).and_then(|v| v.parse().ok())
    }

    /// The value of `name=<text>` as it is (the tests send names that need no escaping).
    fn text(&self, name: &str) -> Option<&str> {
        self.0
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v)
    }
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Query {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Query(parts.uri.query().unwrap_or_default().to_owned()))
    }
}

/// A JSON answer (axum's `json` feature is off in this workspace).
struct Json(serde_json::Value);

impl IntoResponse for Json {
    fn into_response(self) -> Response {
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            self.0.to_string(),
        )
            .into_response()
    }
}

fn admin_router(admin: Admin) -> Router {
    Router::new()
        .route(
            "/drop",
            post(|State(a): State<Admin>, q: Query| async move {
                let down = Duration::from_millis(q.number("down_ms").unwrap_or(0));
                Json(json!({"dropped": a.proxy.drop_all(down)}))
            }),
        )
        .route(
            "/stall",
            post(|State(a): State<Admin>| async move { Json(json!({"stalled": a.proxy.stall_all()})) }),
        )
        .route(
            "/pause",
            post(|State(a): State<Admin>| async move {
                *a.paused.lock().await = true;
                let last = match &a.feed {
                    Some(f) => f.snapshot().await.1,
                    None => None,
                };
                Json(match last {
                    Some(p) => json!({"epoch": p.epoch.to_string(), "offset": p.offset}),
                    None => json!({"epoch": null, "offset": 0}),
                })
            }),
        )
        .route(
            "/resume",
            post(|State(a): State<Admin>| async move {
                *a.paused.lock().await = false;
                Json(json!({"paused": false}))
            }),
        )
        .route(
            "/kick",
            post(|State(a): State<Admin>| async move {
                let ids: Vec<SessionId> = a
                    .hub
                    .topic_members(sports::ALL_TOPIC)
                    .await
                    .unwrap_or_default()
                    .into_iter()
                    .map(|m| m.session)
                    .collect();
                let kicked = ids.into_iter().filter(|id| a.hub.disconnect(*id)).count();
                Json(json!({"kicked": kicked}))
            }),
        )
        .route(
            "/move",
            post(|State(a): State<Admin>, q: Query| async move {
                let n = q.number("node").unwrap_or(0) as usize;
                let Some((_, addr)) = n.checked_sub(1).and_then(|i| a.nodes.get(i)) else {
                    return Json(json!({"error": "no such node"}));
                };
                a.proxy.retarget(*addr);
                Json(json!({"node": n, "dropped": a.proxy.drop_all(Duration::ZERO)}))
            }),
        )
        .route(
            "/publish",
            post(|State(a): State<Admin>, q: Query| async move {
                let (Some(topic), Some(n)) = (q.text("topic"), q.number("n")) else {
                    return Json(json!({"error": "topic and n are needed"}));
                };
                let data = json!({ "n": n });
                let done = match (q.text("key"), q.number("delete") == Some(1)) {
                    (Some(key), true) => a.hub.publish_delete(topic, key).await,
                    (Some(key), false) => a.hub.publish_keyed(topic, key, &data).await,
                    (None, _) => a.hub.publish(topic, &data).await,
                };
                Json(match done {
                    Ok(p) => json!({"epoch": p.epoch.to_string(), "offset": p.offset}),
                    Err(e) => json!({"error": e.to_string()}),
                })
            }),
        )
        .route(
            "/ask",
            post(|State(a): State<Admin>, q: Query| async move {
                let session = q.text("session").and_then(SessionId::parse);
                let (Some(session), Some(event)) = (session, q.text("event")) else {
                    return Json(json!({"error": "session and event are needed"}));
                };
                let timeout = Duration::from_millis(q.number("timeout_ms").unwrap_or(5000));
                Json(
                    match a.hub.emit_with_ack(session, event, &json!({"n": 1}), timeout).await {
                        Ok(answer) => match answer.decode::<serde_json::Value>() {
                            Ok(v) => json!({ "answer": v }),
                            Err(e) => json!({"error": e.to_string()}),
                        },
                        Err(e) => json!({"error": e.code_str()}),
                    },
                )
            }),
        )
        .route(
            "/stats",
            get(|State(a): State<Admin>| async move {
                Json(json!({
                    "ws_refused": a.refuse.ws_refused.load(Ordering::Relaxed),
                    "sse_refused": a.refuse.sse_refused.load(Ordering::Relaxed),
                    "connections": a.proxy.count(),
                    "sessions": a.hub.session_count(),
                    "node_sessions": a.nodes.iter().map(|(h, _)| h.session_count()).collect::<Vec<_>>(),
                }))
            }),
        )
        .with_state(admin)
}

// ---------------------------------------------------------------------------------------------
// The `protocol` fixture
// ---------------------------------------------------------------------------------------------

/// Lets every client do everything (publish, join): the protocol tests need it.
struct Open;

#[livehub::async_trait]
impl livehub::Hooks for Open {
    async fn authorize(&self, _who: &livehub::Identity, _action: livehub::Action<'_>) -> bool {
        true
    }
}

/// A bare hub for the protocol tests: open hooks, 100 messages of history, and the handlers
/// `echo` (answers its data) and `hang` (never answers).
fn protocol_hub(builder: livehub::HubBuilder) -> Hub {
    use livehub::{EventContext, Payload};
    builder
        .hooks(Open)
        .history_len(100)
        .on_event("echo", |_ctx: EventContext, data: Payload| async move {
            Ok(Some(data))
        })
        .on_event("hang", |_ctx: EventContext, _data: Payload| async move {
            std::future::pending::<()>().await;
            Ok(None)
        })
        .build()
}

/// An empty page that loads hub.js (the tests make their clients in it), hub.js, and the
/// three transports at their usual paths.
fn protocol_router(hub: &Hub) -> Router {
    const PAGE: &str = "<!doctype html><meta charset=utf-8><title>protocol</title>\
                        <script src=\"/hub.js\"></script><body>protocol fixture</body>";
    Router::new()
        .route("/", get(|| async { axum::response::Html(PAGE) }))
        .route_service("/hub.js", livehub::js::HubJs::script())
        .route_service("/ws", livehub::ws::WsService::new(hub.clone()))
        .route_service("/events", livehub::sse::SseService::new(hub.clone()))
        .route_service("/poll", livehub::poll::PollService::new(hub.clone()))
}

/// Waits for SIGTERM (or Ctrl-C).
async fn terminated() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("e2e_server: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };

    let prefix = args.prefix.clone().unwrap_or_default();
    if args.example == "redis-clean" {
        return match redis_clean(&args.redis, &prefix).await {
            Ok(n) => {
                println!("{}", json!({"deleted": n}));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("e2e_server: redis-clean: {e}");
                ExitCode::FAILURE
            }
        };
    }

    let mut builder = Hub::builder();
    if let Some(hb) = args.heartbeat {
        builder = builder.heartbeat(hb, hb * 3);
    }
    let engine = match args.engine {
        Engine::Memory => None,
        Engine::Redis => match redis_engine(&args.redis, &prefix).await {
            Ok(e) => Some(e),
            Err(e) => {
                eprintln!("e2e_server: redis at {}: {e}", args.redis);
                return ExitCode::FAILURE;
            }
        },
    };
    if let Some(e) = &engine {
        builder = builder
            .broker(Arc::new(e.clone()))
            .presence_store(Arc::new(e.clone()));
    }
    let paused: Paused = Arc::default();
    if args.example == "cluster" {
        return serve_cluster(&args, &prefix).await;
    }
    let (hub, app, feed) = match args.example.as_str() {
        "sports" => {
            let hub = builder.history_len(sports::HISTORY).build();
            // On Redis a restarted server goes on with the board the streams hold; on the
            // in-process engine the streams are new, and so is the board.
            let feed = match sports::Feed::resume(hub.clone(), args.seed).await {
                Ok(f) => f,
                Err(e) => {
                    eprintln!("e2e_server: cannot read the feed's stream: {e}");
                    return ExitCode::FAILURE;
                }
            };
            tokio::spawn(run_feed(feed.clone(), args.tick, paused.clone()));
            let app = sports::router(&hub, feed.clone());
            (hub, app, Some(feed))
        }
        "chat" => {
            let hub = chat::build_hub(builder);
            let app = chat::router(&hub);
            (hub, app, None)
        }
        "protocol" => {
            let hub = protocol_hub(builder);
            let app = protocol_router(&hub);
            (hub, app, None)
        }
        _ => {
            let hub = builder.history_len(dashboard::HISTORY).build();
            tokio::spawn(dashboard::simulate(hub.clone()));
            let app = dashboard::router(&hub);
            (hub, app, None)
        }
    };
    if let Some(e) = &engine {
        // Its own routes (direct sends, disconnects from other nodes) are heard from now on.
        e.ready().await;
    }
    let refusals = Arc::new(Refuse {
        ws: args.refuse_ws,
        sse: args.refuse_sse,
        ..Refuse::default()
    });
    let app = app.layer(middleware::from_fn_with_state(refusals.clone(), refuse));

    let bind = |addr: SocketAddr| async move { TcpListener::bind(addr).await };
    let (public, inner, admin_l) = match (
        bind(args.addr).await,
        bind(SocketAddr::from(([127, 0, 0, 1], 0))).await,
        bind(SocketAddr::from(([127, 0, 0, 1], 0))).await,
    ) {
        (Ok(p), Ok(i), Ok(a)) => (p, i, a),
        (p, i, a) => {
            let err = [p.err(), i.err(), a.err()].into_iter().flatten().next();
            eprintln!("e2e_server: cannot listen: {err:?}");
            return ExitCode::FAILURE;
        }
    };
    let (Ok(public_addr), Ok(inner_addr), Ok(admin_addr)) = (
        public.local_addr(),
        inner.local_addr(),
        admin_l.local_addr(),
    ) else {
        eprintln!("e2e_server: no local address");
        return ExitCode::FAILURE;
    };

    let proxy = Arc::new(Proxy::default());
    tokio::spawn(proxy.clone().run(public, inner_addr));
    let admin = Admin {
        hub: hub.clone(),
        nodes: Vec::new(),
        proxy,
        refuse: refusals,
        feed,
        paused,
    };
    tokio::spawn(async move {
        let _ = axum::serve(admin_l, admin_router(admin)).await;
    });
    announce(public_addr, admin_addr);

    // SIGTERM: the hub ends every session with reason `shutdown`, then the server stops.
    let stop = livehub::shutdown_signal(&hub, terminated(), Duration::from_secs(3));
    if let Err(e) = axum::serve(inner, app).with_graceful_shutdown(stop).await {
        eprintln!("e2e_server: server error: {e}");
        return ExitCode::FAILURE;
    }
    eprintln!("e2e_server: shut down");
    ExitCode::SUCCESS
}

/// Prints the line the tests read: where the page and the admin routes are.
fn announce(public: SocketAddr, admin: SocketAddr) {
    let line = json!({
        "url": format!("http://{public}/"),
        "admin": format!("http://{admin}/"),
        "pid": std::process::id(),
    });
    let mut out = std::io::stdout();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// The `cluster` fixture: the cluster example's two nodes over Redis, node 1 publishing the
/// feed, the proxy in front of node 2 until `/move`.
async fn serve_cluster(args: &Args, prefix: &str) -> ExitCode {
    let free = SocketAddr::from(([127, 0, 0, 1], 0));
    let c = match cluster::start(&args.redis, prefix, &[free, free], args.seed).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("e2e_server: cluster over {}: {e}", args.redis);
            return ExitCode::FAILURE;
        }
    };
    tokio::spawn(cluster::sports::run_feed(c.feed.clone(), args.tick));
    let bind = |addr: SocketAddr| async move { TcpListener::bind(addr).await };
    let (Ok(public), Ok(admin_l)) = (bind(args.addr).await, bind(free).await) else {
        eprintln!("e2e_server: cannot listen");
        return ExitCode::FAILURE;
    };
    let (Ok(public_addr), Ok(admin_addr)) = (public.local_addr(), admin_l.local_addr()) else {
        eprintln!("e2e_server: no local address");
        return ExitCode::FAILURE;
    };
    let nodes: Vec<(Hub, SocketAddr)> = c.nodes.iter().map(|n| (n.hub.clone(), n.addr)).collect();
    let proxy = Arc::new(Proxy::default());
    tokio::spawn(proxy.clone().run(public, nodes[1].1));
    let admin = Admin {
        hub: nodes[0].0.clone(),
        nodes,
        proxy,
        refuse: Arc::default(),
        feed: None,
        paused: Arc::default(),
    };
    tokio::spawn(async move {
        let _ = axum::serve(admin_l, admin_router(admin)).await;
    });
    announce(public_addr, admin_addr);
    terminated().await;
    c.shutdown().await;
    eprintln!("e2e_server: shut down");
    ExitCode::SUCCESS
}
