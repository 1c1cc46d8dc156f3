//! `livehub-bench server`: the hub in a process of its own, so that its memory and CPU are its
//! alone. Two ways to serve it:
//!
//! - **tuned** (the default): server-sent events (livehub-sse) at `/sse`, long-polling (livehub-poll) at
//!   `/poll`, WebSocket (livehub-ws) at every other path, all on one hub (a WebSocket publisher
//!   reaches SSE and long-polling subscribers), through hyper-util's auto builder with
//!   `http1().max_buf_size(8192)` and `TCP_NODELAY` on accepted sockets; the runtime chosen by
//!   `--runtime current|multi` and `--threads N`, pacing by `--pacing-ms` (0: off); the
//!   engine in process, or Redis with
//!   `--redis URL --prefix P` (each such process is one node of the hub);
//! - **axum** (`--http axum`): exactly what README shows a user: `#[tokio::main]` (the
//!   multi-thread runtime, default workers), `axum::serve(listener, Router::new()
//!   .route_service("/ws", WsService::new(hub)))`, `Hub::builder()` with its defaults and hooks
//!   that allow publishing; no `TCP_NODELAY`, no hyper settings.
//!
//! It prints `{"port": P}` once listening and answers commands on stdin, one JSON line each:
//! `stats` (the hub's counters) and `publish {"tasks":T,"n":N,"secs":S,"topics":K,"bytes":B}`
//! (T tasks publish from the host, `hub.publish`, until N publishes or S seconds; answered
//! with `{"published": {...}}`). It exits when its stdin closes (so it never outlives the
//! driver).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::Either;
use hyper::body::Incoming;
use hyper::service::Service as _;
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use livehub::poll::PollService;
use livehub::sse::SseService;
use livehub::ws::WsService;
use livehub::{async_trait, Action, Hub, Identity};
use serde_json::{json, Value};
use tokio::io::AsyncBufReadExt;

use crate::util::{err, Opts, Res};

/// Hooks for the bench: anyone may subscribe and publish.
struct BenchHooks;

#[async_trait]
impl livehub::Hooks for BenchHooks {
    async fn authorize(&self, _identity: &Identity, _action: Action<'_>) -> bool {
        true
    }
}

/// Runs the server until stdin closes.
pub(crate) fn main(opts: &Opts) -> Res<()> {
    if opts.str("http") == Some("axum") {
        // What `#[tokio::main]` expands to: the multi-thread runtime with tokio's default
        // number of workers (the CPUs this process may use).
        return tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(serve_axum(opts));
    }
    let threads = opts.get(
        "threads",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
    )?;
    let rt = match opts.str("runtime").unwrap_or("multi") {
        "current" => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
        "multi" => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .enable_all()
            .build()?,
        other => return Err(err(format!("--runtime {other:?}: current or multi"))),
    };
    rt.block_on(serve(opts))
}

/// The server as README shows it (see the module docs).
async fn serve_axum(opts: &Opts) -> Res<()> {
    let addr: SocketAddr = opts.get("addr", "127.0.0.1:0".parse()?)?;
    let hub = Hub::builder().hooks(BenchHooks).build();
    let app = axum::Router::new().route_service("/ws", WsService::new(hub.clone()));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let port = listener.local_addr()?.port();
    println!("{}", json!({"port": port, "http": "axum"}));
    tokio::spawn(commands(hub));
    axum::serve(listener, app).await?;
    Ok(())
}

/// The tuned server (see the module docs).
async fn serve(opts: &Opts) -> Res<()> {
    let addr: SocketAddr = opts.get("addr", "127.0.0.1:0".parse()?)?;
    let queue: usize = opts.get("queue", 1024)?;
    let transport = opts.str("transport").unwrap_or("ws").to_owned();
    if transport != "ws" && transport != "sse" {
        return Err(err(format!(
            "transport {transport:?} is not supported (ws, sse)"
        )));
    }
    let mut builder = Hub::builder().queue_capacity(queue).hooks(BenchHooks);
    // The longest a publish waits for congested queues (ms; 0: no pacing), to measure what
    // pacing does (default: the hub's own).
    if let Some(ms) = opts.str("pacing-ms").and_then(|v| v.parse().ok()) {
        builder = builder.pacing(Duration::from_millis(ms));
    }
    // `--conflate 1`: every topic conflates (latest value per key for subscribers that lag),
    // to measure what conflation costs on the hot path.
    if opts.str("conflate") == Some("1") {
        builder = builder.conflate_topics(|_| true);
    }
    let mut engine = None;
    if let Some(url) = opts.str("redis") {
        let prefix = opts.str("prefix").unwrap_or("livehub-bench");
        let e = livehub_redis::RedisEngine::builder(url)
            .prefix(prefix)
            .build()
            .await
            .map_err(|e| err(format!("redis engine at {url}: {e}")))?;
        builder = builder
            .broker(Arc::new(e.clone()))
            .presence_store(Arc::new(e.clone()));
        engine = Some(e);
    }
    let hub = builder.build();
    if let Some(e) = &engine {
        e.ready().await;
    }
    // One SSE service for all connections: its clones share the stream registry.
    let sse = SseService::new(hub.clone());
    let poll = PollService::new(hub.clone());
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let port = listener.local_addr()?.port();
    println!(
        "{}",
        json!({"port": port, "transport": transport, "queue": queue,
               "engine": if engine.is_some() { "redis" } else { "memory" }})
    );
    tokio::spawn(commands(hub.clone()));

    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors, most likely: report, back off, keep serving.
                eprintln!("livehub-bench server: accept: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let service = WsService::new(hub.clone()).with_peer(peer);
        let sse = sse.clone().with_peer(peer);
        let poll = poll.clone().with_peer(peer);
        let route = hyper::service::service_fn(move |req: Request<Incoming>| {
            let (ws, sse, poll) = (service.clone(), sse.clone(), poll.clone());
            async move {
                if req.uri().path().starts_with("/sse") {
                    let resp = sse.call(req).await?;
                    Ok::<_, Infallible>(resp.map(Either::Right))
                } else if req.uri().path().starts_with("/poll") {
                    let resp = poll.call(req).await?;
                    Ok(resp.map(Either::Left))
                } else {
                    let resp = ws.call(req).await?;
                    Ok(resp.map(Either::Left))
                }
            }
        });
        tokio::spawn(async move {
            let mut builder = auto::Builder::new(TokioExecutor::new());
            // hyper's smallest buffer limit (its default is ~400 KB). Measured: an idle SSE
            // stream 22 KB -> 15 KB of server RSS; WebSocket unchanged (see livehub-sse's docs).
            builder.http1().max_buf_size(8192);
            let _ = builder
                .serve_connection_with_upgrades(TokioIo::new(tcp), route)
                .await;
        });
    }
}

/// Answers the driver's commands on stdin; EOF ends the process.
async fn commands(hub: Hub) {
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let line = line.trim();
        if line == "stats" {
            println!("{}", json!({ "stats": stats(&hub) }));
        } else if let Some(args) = line.strip_prefix("publish ") {
            let args: Value = serde_json::from_str(args).unwrap_or(Value::Null);
            let hub = hub.clone();
            // In a task of its own: `stats` stays answerable meanwhile.
            tokio::spawn(async move {
                println!(
                    "{}",
                    json!({ "published": host_publish(&hub, &args).await })
                );
            });
        }
    }
    std::process::exit(0);
}

/// The hub's counters, as the driver reports them.
fn stats(hub: &Hub) -> Value {
    let s = hub.stats();
    let e = hub.engine_stats();
    json!({
        "sessions": s.sessions_total(),
        "sessions_opened": s.sessions_opened,
        "frames_in": s.frames_in,
        "published": s.published,
        "deliveries": s.deliveries,
        "dropped": s.dropped,
        "errors_sent": s.errors_sent,
        "paced": s.paced,
        "pace_timeouts": s.pace_timeouts,
        "encodes_json": s.encodes_json,
        "encodes_msgpack": s.encodes_msgpack,
        "disconnects": s.disconnects,
        "node": {
            "published_in": s.node.published_in,
            "duplicates": s.node.duplicates,
            "repairs": s.node.repairs,
            "engine_disconnects": s.node.engine_disconnects,
            "undecodable": s.node.undecodable,
        },
        "engine": {
            "name": e.name,
            "connected": e.connected,
            "reconnects": e.reconnects,
            "messages_in": e.messages_in,
            "messages_out": e.messages_out,
            "dropped_in": e.dropped_in,
            "pending_in": e.pending_in,
        },
    })
}

/// `tasks` concurrent host publishers (`hub.publish`, a string of `bytes` bytes each), over
/// `topics` topics, until `n` publishes in all or `secs` seconds.
async fn host_publish(hub: &Hub, args: &Value) -> Value {
    let get = |k: &str, d: u64| args[k].as_u64().unwrap_or(d);
    let tasks = get("tasks", 1).clamp(1, 10_000);
    let n = get("n", 100_000);
    let topics = get("topics", 1).max(1);
    let bytes = usize::try_from(get("bytes", 100)).unwrap_or(100);
    let secs = args["secs"].as_f64().unwrap_or(5.0).clamp(0.001, 600.0);
    let data = Arc::new("x".repeat(bytes));
    let names: Arc<Vec<String>> = Arc::new((0..topics).map(|i| format!("pub-{i}")).collect());
    let claimed = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs_f64(secs);
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let (hub, data, names, claimed) =
            (hub.clone(), data.clone(), names.clone(), claimed.clone());
        handles.push(tokio::spawn(async move {
            let (mut ok, mut errors, mut sample) = (0u64, 0u64, None);
            loop {
                let i = claimed.fetch_add(1, Ordering::Relaxed);
                if i >= n || Instant::now() >= deadline {
                    break;
                }
                let topic = &names[usize::try_from(i % topics).unwrap_or(0)];
                match hub.publish(topic, data.as_str()).await {
                    Ok(_) => ok += 1,
                    Err(e) => {
                        errors += 1;
                        sample.get_or_insert_with(|| e.to_string());
                    }
                }
            }
            (ok, errors, sample)
        }));
    }
    let (mut ok, mut errors, mut samples) = (0u64, 0u64, Vec::new());
    for h in handles {
        match h.await {
            Ok((o, e, s)) => {
                ok += o;
                errors += e;
                samples.extend(s);
            }
            Err(e) => {
                errors += 1;
                samples.push(e.to_string());
            }
        }
    }
    let elapsed = t0.elapsed().as_secs_f64();
    samples.truncate(5);
    json!({
        "tasks": tasks, "topics": topics, "bytes": bytes, "ok": ok, "errors": errors,
        "error_samples": samples, "elapsed_s": elapsed, "per_s": ok as f64 / elapsed.max(1e-9),
    })
}
