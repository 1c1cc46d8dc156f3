//! `hub-bench server`: the hub in a process of its own, so that its memory and CPU are its
//! alone. Server-sent events (hub-sse) at `/sse`, long-polling (hub-poll) at `/poll`, WebSocket
//! (hub-ws) at every other path: all on one hub, so a WebSocket publisher reaches SSE and
//! long-polling subscribers. It prints `{"port": P}` once listening, answers `stats` on stdin with the hub's
//! counters as one JSON line, and exits when its stdin closes (so it never outlives the
//! driver).

use std::convert::Infallible;
use std::net::SocketAddr;

use http_body_util::Either;
use hub::poll::PollService;
use hub::sse::SseService;
use hub::ws::WsService;
use hub::{async_trait, Action, Hub, Identity};
use hyper::body::Incoming;
use hyper::service::Service as _;
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::json;
use tokio::io::AsyncBufReadExt;

use crate::util::{Opts, Res};

/// Hooks for the bench: anyone may subscribe and publish.
struct BenchHooks;

#[async_trait]
impl hub::Hooks for BenchHooks {
    async fn authorize(&self, _identity: &Identity, _action: Action<'_>) -> bool {
        true
    }
}

/// Runs the server until stdin closes.
pub(crate) fn main(opts: &Opts) -> Res<()> {
    let threads = opts.get(
        "threads",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
    )?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()?;
    rt.block_on(serve(opts))
}

async fn serve(opts: &Opts) -> Res<()> {
    let addr: SocketAddr = opts.get("addr", "127.0.0.1:0".parse()?)?;
    let queue: usize = opts.get("queue", 1024)?;
    let transport = opts.str("transport").unwrap_or("ws").to_owned();
    if transport != "ws" && transport != "sse" {
        return Err(crate::util::err(format!(
            "transport {transport:?} is not supported (ws, sse)"
        )));
    }
    // hub-ws's read buffer, to measure its effect on memory (default: hub-ws's own).
    let read_buffer: Option<usize> = opts.str("ws-read-buffer").and_then(|v| v.parse().ok());
    let hub = Hub::builder()
        .queue_capacity(queue)
        .hooks(BenchHooks)
        .build();
    // One SSE service for all connections: its clones share the stream registry.
    let sse = SseService::new(hub.clone());
    let poll = PollService::new(hub.clone());
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let port = listener.local_addr()?.port();
    println!(
        "{}",
        json!({"port": port, "transport": transport, "queue": queue})
    );

    // Commands on stdin; EOF ends the process.
    let stats_hub = hub.clone();
    tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if line.trim() == "stats" {
                let s = stats_hub.stats();
                println!(
                    "{}",
                    json!({
                        "stats": {
                            "sessions": s.sessions_total(),
                            "sessions_opened": s.sessions_opened,
                            "frames_in": s.frames_in,
                            "published": s.published,
                            "deliveries": s.deliveries,
                            "dropped": s.dropped,
                            "errors_sent": s.errors_sent,
                            "encodes_json": s.encodes_json,
                            "encodes_msgpack": s.encodes_msgpack,
                            "disconnects": s.disconnects,
                        }
                    })
                );
            }
        }
        std::process::exit(0);
    });

    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors, most likely: report, back off, keep serving.
                eprintln!("hub-bench server: accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let mut service = WsService::new(hub.clone()).with_peer(peer);
        if let Some(n) = read_buffer {
            service = service.read_buffer_size(n);
        }
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
            // stream 22 KB -> 15 KB of server RSS; WebSocket unchanged (see hub-sse's docs).
            builder.http1().max_buf_size(8192);
            let _ = builder
                .serve_connection_with_upgrades(TokioIo::new(tcp), route)
                .await;
        });
    }
}
