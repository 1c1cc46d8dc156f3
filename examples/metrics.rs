//! The hub's run-time view as Prometheus metrics: the three transports plus `GET /metrics`.
//!
//! `/metrics` renders [`hub::Hub::stats`] in the Prometheus text exposition format (version
//! 0.0.4), each series with `# HELP` and `# TYPE`:
//!
//! | series | type | what |
//! | --- | --- | --- |
//! | `hub_sessions{transport}` | gauge | sessions open now, per transport (`ws`, `sse`, `poll` always present) |
//! | `hub_sessions_opened_total` | counter | sessions opened since start |
//! | `hub_subscriptions` | gauge | topic subscriptions open now |
//! | `hub_topics` | gauge | topics that exist now |
//! | `hub_rooms` | gauge | rooms that exist now |
//! | `hub_frames_in_total` | counter | frames received from clients |
//! | `hub_messages_published_total` | counter | messages published to topics (clients and server) |
//! | `hub_deliveries_total` | counter | frames queued for sessions, one per receiving session (welcome, replies, errors and messages alike) |
//! | `hub_dropped_total` | counter | frames dropped: slow sessions under the `drop` policy, or queued frames of sessions that ended |
//! | `hub_errors_sent_total` | counter | `error` frames sent to clients |
//! | `hub_encodes_total{encoding}` | counter | frames encoded, per encoding: at most once per frame, however many sessions get it |
//! | `hub_disconnects_total{reason}` | counter | sessions ended, per reason (every reason always present, 0 until seen) |
//!
//! Scrape it with Prometheus (`scrape_configs: - targets: ["127.0.0.1:3000"]`) or look:
//!
//! ```text
//! cargo run --example metrics                         # http://127.0.0.1:3000/metrics
//! cargo run --example metrics -- --addr 127.0.0.1:0   # any free port
//! curl http://127.0.0.1:3000/metrics
//! websocat ws://127.0.0.1:3000/ws                     # then {"type":"subscribe","topic":"demo/ticks"}
//! ```
//!
//! The hub also mounts `/sse` and `/poll`; a feed publishes to `demo/ticks` every second. This
//! is a demo: clients may subscribe and publish anywhere (see `examples/auth.rs` for rules).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use hub::poll::PollService;
use hub::sse::SseService;
use hub::ws::WsService;
use hub::{async_trait, Action, DisconnectReason, Hooks, Hub, Identity, StatsSnapshot};

/// The address served when `--addr` is not given.
const DEFAULT_ADDR: &str = "127.0.0.1:3000";

/// The `Content-Type` of the text exposition format.
pub(crate) const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The transports this example mounts: their gauge is always present, 0 when idle, so that
/// dashboards and alerts see a series rather than nothing.
const TRANSPORTS: [&str; 3] = ["ws", "sse", "poll"];

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
        .route("/metrics", get(metrics))
        .route_service("/ws", WsService::new(hub.clone()))
        .route_service("/sse", SseService::new(hub.clone()))
        .route_service("/poll", PollService::new(hub.clone()))
        .with_state(hub.clone())
}

/// `GET /metrics`.
async fn metrics(State(hub): State<Hub>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE))],
        render(&hub.stats()),
    )
}

/// Writes one metric family: `# HELP`, `# TYPE`, then its samples (`labels` is the text
/// inside `{}`, empty for none).
fn family(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(String, u64)]) {
    // Writing to a String cannot fail.
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, value) in samples {
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {value}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
    }
}

/// A sample without labels.
fn one(value: u64) -> [(String, u64); 1] {
    [(String::new(), value)]
}

/// `stats` in the Prometheus text exposition format.
pub(crate) fn render(stats: &StatsSnapshot) -> String {
    let mut out = String::with_capacity(4096);

    let mut transports: Vec<&str> = TRANSPORTS.to_vec();
    transports.extend(stats.sessions.keys().filter(|t| !TRANSPORTS.contains(t)));
    let sessions: Vec<(String, u64)> = transports
        .iter()
        .map(|t| {
            let n = stats.sessions.get(t).copied().unwrap_or(0);
            (format!("transport=\"{}\"", escape(t)), n)
        })
        .collect();
    family(
        &mut out,
        "hub_sessions",
        "gauge",
        "Sessions open now, by transport.",
        &sessions,
    );
    family(
        &mut out,
        "hub_sessions_opened_total",
        "counter",
        "Sessions opened since the hub started.",
        &one(stats.sessions_opened),
    );
    family(
        &mut out,
        "hub_subscriptions",
        "gauge",
        "Topic subscriptions open now.",
        &one(stats.subscriptions),
    );
    family(
        &mut out,
        "hub_topics",
        "gauge",
        "Topics that exist now.",
        &one(stats.topics),
    );
    family(
        &mut out,
        "hub_rooms",
        "gauge",
        "Rooms that exist now (a room exists while it has members).",
        &one(stats.rooms),
    );
    family(
        &mut out,
        "hub_frames_in_total",
        "counter",
        "Frames received from clients.",
        &one(stats.frames_in),
    );
    family(
        &mut out,
        "hub_messages_published_total",
        "counter",
        "Messages published to topics, by clients and by the server.",
        &one(stats.published),
    );
    family(
        &mut out,
        "hub_deliveries_total",
        "counter",
        "Frames queued for sessions, one per receiving session.",
        &one(stats.deliveries),
    );
    family(
        &mut out,
        "hub_dropped_total",
        "counter",
        "Frames dropped for slow sessions (drop policy) or for sessions that ended.",
        &one(stats.dropped),
    );
    family(
        &mut out,
        "hub_errors_sent_total",
        "counter",
        "Error frames sent to clients.",
        &one(stats.errors_sent),
    );
    family(
        &mut out,
        "hub_encodes_total",
        "counter",
        "Frames encoded, by encoding (each frame at most once per encoding).",
        &[
            ("encoding=\"json\"".to_owned(), stats.encodes_json),
            ("encoding=\"msgpack\"".to_owned(), stats.encodes_msgpack),
        ],
    );
    // Every reason, so that each counter exists from the start (a counter that appears only at
    // its first increment hides that first increment from `rate()`).
    let known: Vec<&str> = DisconnectReason::all().iter().map(|r| r.as_str()).collect();
    let mut reasons = known.clone();
    reasons.extend(stats.disconnects.keys().filter(|r| !known.contains(r)));
    let disconnects: Vec<(String, u64)> = reasons
        .iter()
        .map(|r| {
            let n = stats.disconnects.get(r).copied().unwrap_or(0);
            (format!("reason=\"{}\"", escape(r)), n)
        })
        .collect();
    family(
        &mut out,
        "hub_disconnects_total",
        "counter",
        "Sessions ended, by reason.",
        &disconnects,
    );
    out
}

/// A label value escaped for the exposition format (`\`, `"` and line feeds).
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
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
    if let Err(e) = axum::serve(listener, router(&hub)).await {
        eprintln!("metrics: server error: {e}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
