//! The hub's run-time view as Prometheus metrics: the three transports plus `GET /metrics`.
//!
//! `/metrics` is the `metrics` feature's endpoint ([`livehub::metrics::MetricsService`]): the
//! hub's sessions by transport, messages and bytes in and out, publish latency, queue depth,
//! drops, disconnects by reason and refusals by code, in the Prometheus text format (or
//! OpenMetrics, if the scraper asks). The series are listed in the `livehub::metrics` docs. A host
//! with a `prometheus-client` registry of its own registers
//! `livehub::metrics::HubCollector::new(hub)` in it instead.
//!
//! Scrape it with Prometheus (`scrape_configs: - targets: ["127.0.0.1:3005"]`) or look:
//!
//! ```text
//! cargo run --example metrics                         # http://127.0.0.1:3005/metrics
//! cargo run --example metrics -- --addr 127.0.0.1:0   # any free port
//! curl http://127.0.0.1:3005/metrics
//! websocat ws://127.0.0.1:3005/ws                     # then {"type":"subscribe","topic":"demo/ticks"}
//! ```
//!
//! The hub also mounts `/sse` and `/poll`; a feed publishes to `demo/ticks` every second. This
//! is a demo: clients may subscribe and publish anywhere (see `examples/auth.rs` for rules).
//! Ctrl-C shuts it down gracefully ([`livehub::shutdown_signal`]): every client is told why.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use axum::Router;
use livehub::metrics::MetricsService;
use livehub::poll::PollService;
use livehub::sse::SseService;
use livehub::ws::WsService;
use livehub::{async_trait, Action, Hooks, Hub, Identity};

/// The address served when `--addr` is not given.
const DEFAULT_ADDR: &str = "127.0.0.1:3005";

/// How long a shutdown waits for clients to get their last frames.
const GRACE: Duration = Duration::from_secs(5);

/// Demo hooks: anyone connects, subscribes and publishes; nobody joins rooms by request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct OpenHooks;

#[async_trait]
impl Hooks for OpenHooks {
    async fn authorize(&self, _who: &Identity, action: Action<'_>) -> bool {
        matches!(action, Action::Subscribe(_) | Action::Publish(_))
    }
}

/// The demo's hub.
pub(crate) fn build_hub() -> Hub {
    Hub::builder().hooks(OpenHooks).history_len(100).build()
}

/// The routes: the three transports and `/metrics`.
pub(crate) fn router(hub: &Hub) -> Router {
    Router::new()
        .route_service("/metrics", MetricsService::new(hub.clone()))
        .route_service("/ws", WsService::new(hub.clone()))
        .route_service("/sse", SseService::new(hub.clone()))
        .route_service("/poll", PollService::new(hub.clone()))
}

/// Parses `--addr <ip:port>` / `--addr=<ip:port>`.
fn parse_addr(args: impl IntoIterator<Item = String>) -> Result<SocketAddr, String> {
    let mut addr = DEFAULT_ADDR.to_owned();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--addr" => addr = args.next().ok_or("--addr needs a value")?,
            other => match other.strip_prefix("--addr=") {
                Some(v) => addr = v.to_owned(),
                None => return Err(format!("unknown argument {other:?}")),
            },
        }
    }
    addr.parse()
        .map_err(|e| format!("bad --addr {addr:?}: {e}"))
}

/// Publishes a tick to `demo/ticks` every second.
async fn feed(hub: Hub) {
    let mut clock = tokio::time::interval(Duration::from_secs(1));
    for n in 1u64.. {
        clock.tick().await;
        let _ = hub
            .publish("demo/ticks", &serde_json::json!({ "tick": n }))
            .await;
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let addr = match parse_addr(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("metrics: {e}\nusage: metrics [--addr <ip:port>]");
            return ExitCode::from(2);
        }
    };
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("metrics: cannot listen on {addr}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let local = listener.local_addr().unwrap_or(addr);
    let hub = build_hub();
    tokio::spawn(feed(hub.clone()));
    println!(
        "metrics: http://{local}/metrics
hub: ws://{local}/ws  http://{local}/sse?topic=demo/ticks  http://{local}/poll
try: curl -N 'http://{local}/sse?topic=demo/ticks'   then   curl http://{local}/metrics"
    );
    let app = router(&hub).into_make_service_with_connect_info::<SocketAddr>();
    let stop = livehub::shutdown_signal(&hub, tokio::signal::ctrl_c(), GRACE);
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await
    {
        eprintln!("metrics: server error: {e}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
