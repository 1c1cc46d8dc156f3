//! A live operations dashboard over server-sent events.
//!
//! The server simulates a small fleet of services (`api`, `auth`, `search`, `payments`,
//! `billing`) and publishes each one's metrics four times a second to `metrics/<service>`:
//!
//! ```json
//! {"service": "api", "ts": 1732250000000, "rps": 1234.5, "p50_ms": 12.1, "p99_ms": 85.3,
//!  "error_rate": 0.004}
//! ```
//!
//! Now and then a service has an incident (latency and errors climb for a while), and the
//! server publishes to `alerts` when a service crosses its error budget, and when it recovers.
//!
//! The server (axum) serves:
//!
//! | route | what |
//! | --- | --- |
//! | `GET /` | the dashboard: plain HTML/CSS/JS with canvas sparklines, on hub.js over server-sent events |
//! | `GET /hub.js` | hub.js, the browser client |
//! | `GET /events` | the hub's SSE endpoint (PROTOCOL.md, "Server-sent events"); `POST /events?session=...` for commands |
//!
//! The page subscribes to every `metrics/*` topic on one stream, each with `last` (the newest
//! 120 points the history holds, 30 seconds: a page that just opened shows full charts at
//! once); the "alerts" switch subscribes and unsubscribes `alerts` (commands by `POST`, hub.js's
//! business). When the connection drops, hub.js reconnects with backoff and resumes every topic
//! from its last position: the charts continue without a hole (or say what was lost).
//!
//! ```text
//! cargo run --release --example dashboard               # http://127.0.0.1:3002/
//! cargo run --release --example dashboard -- --addr 0.0.0.0:8080
//! curl -N 'http://127.0.0.1:3002/events?topic=metrics/api&last=20'   # the same with curl
//! ```
//!
//! Ctrl-C shuts the hub down gracefully ([`livehub::shutdown_signal`]): every stream gets its last
//! events and a `close` (`shutdown`) before the server stops.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::response::Html;
use axum::routing::get;
use axum::Router;
use livehub::js::HubJs;
use livehub::sse::SseService;
use livehub::Hub;
use serde_json::json;

/// The dashboard page, served at `/`.
const PAGE: &str = include_str!("assets/dashboard.html");

/// The address served when `--addr` is not given.
const DEFAULT_ADDR: &str = "127.0.0.1:3002";

/// How long a shutdown waits for the streams to get their last events.
const GRACE: Duration = Duration::from_secs(5);

/// How often every service's metrics are published.
const TICK: Duration = Duration::from_millis(250);

/// The simulated services: name, base requests per second, base p50 latency (ms).
const SERVICES: [(&str, f64, f64); 5] = [
    ("api", 1200.0, 14.0),
    ("auth", 420.0, 6.0),
    ("search", 760.0, 38.0),
    ("payments", 95.0, 55.0),
    ("billing", 60.0, 24.0),
];

/// Error rate above which an alert fires.
const ERROR_BUDGET: f64 = 0.02;

/// A small xorshift generator: the example needs noise, not cryptography.
struct Rng(u64);

impl Rng {
    fn seeded() -> Rng {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9e37_79b9_7f4a_7c15);
        Rng(nanos | 1)
    }

    /// Uniform in [0, 1).
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Roughly normal, mean 0, deviation 1.
    fn gauss(&mut self) -> f64 {
        (0..6).map(|_| self.next()).sum::<f64>() - 3.0
    }
}

/// One simulated service's state.
struct Service {
    name: &'static str,
    base_rps: f64,
    base_p50: f64,
    /// Slow drift of the load, around 1.0.
    load: f64,
    /// Ticks left of the current incident (0: healthy).
    incident: u32,
    alerting: bool,
}

impl Service {
    fn tick(&mut self, rng: &mut Rng, now_ms: u64) -> serde_json::Value {
        // Daily-ish wave plus drift.
        let wave = 1.0 + 0.25 * ((now_ms as f64 / 20_000.0) + self.base_p50).sin();
        self.load = (self.load + 0.02 * rng.gauss()).clamp(0.6, 1.5);
        if self.incident == 0 && rng.next() < 0.0008 {
            self.incident = 40 + (rng.next() * 80.0) as u32;
        }
        let trouble = if self.incident > 0 {
            self.incident -= 1;
            1.0
        } else {
            0.0
        };
        let rps = (self.base_rps * wave * self.load * (1.0 + 0.05 * rng.gauss())).max(0.0);
        let p50 = self.base_p50 * (1.0 + 0.08 * rng.gauss().abs() + 1.5 * trouble);
        let p99 = p50 * (3.0 + 0.6 * rng.gauss().abs() + 4.0 * trouble);
        let error_rate = (0.002 + 0.002 * rng.gauss().abs() + trouble * (0.03 + 0.04 * rng.next()))
            .clamp(0.0, 1.0);
        json!({
            "service": self.name,
            "ts": now_ms,
            "rps": round(rps, 1),
            "p50_ms": round(p50, 1),
            "p99_ms": round(p99, 1),
            "error_rate": round(error_rate, 4),
        })
    }
}

fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Publishes every service's metrics each tick, and alerts on changes of state.
pub(crate) async fn simulate(hub: Hub) {
    let mut rng = Rng::seeded();
    let mut services: Vec<Service> = SERVICES
        .iter()
        .map(|&(name, base_rps, base_p50)| Service {
            name,
            base_rps,
            base_p50,
            load: 1.0,
            incident: 0,
            alerting: false,
        })
        .collect();
    // One service starts in trouble, so that the first look shows what an incident is like.
    services[2].incident = 60;
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        ticker.tick().await;
        let now = now_ms();
        for s in &mut services {
            let m = s.tick(&mut rng, now);
            let error_rate = m["error_rate"].as_f64().unwrap_or(0.0);
            if let Err(e) = hub.publish(&format!("metrics/{}", s.name), &m).await {
                tracing::warn!(error = %e, "publish failed");
            }
            let alerting = error_rate > ERROR_BUDGET;
            if alerting != s.alerting {
                s.alerting = alerting;
                let alert = json!({
                    "service": s.name,
                    "ts": now,
                    "level": if alerting { "firing" } else { "resolved" },
                    "text": if alerting {
                        format!("{}: error rate {:.1}% over the {:.0}% budget", s.name, error_rate * 100.0, ERROR_BUDGET * 100.0)
                    } else {
                        format!("{}: error rate back to {:.2}%", s.name, error_rate * 100.0)
                    },
                });
                let _ = hub.publish("alerts", &alert).await;
            }
        }
    }
}

/// Messages kept per topic: two minutes, so a browser that reconnects within that gets every
/// point.
pub(crate) const HISTORY: usize = 480;

/// The HTTP routes: the page, hub.js and the SSE endpoint.
pub(crate) fn router(hub: &Hub) -> Router {
    Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route_service("/hub.js", HubJs::script())
        .route_service("/events", SseService::new(hub.clone()))
}

fn parse_addr() -> Result<SocketAddr, String> {
    let mut args = std::env::args().skip(1);
    let mut addr = DEFAULT_ADDR.to_owned();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--addr" => {
                addr = args
                    .next()
                    .ok_or("--addr needs a value, e.g. 127.0.0.1:3002")?
            }
            s if s.starts_with("--addr=") => addr = s["--addr=".len()..].to_owned(),
            "-h" | "--help" => {
                return Err(format!(
                    "usage: dashboard [--addr HOST:PORT]   (default {DEFAULT_ADDR})"
                ))
            }
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    addr.parse()
        .map_err(|e| format!("bad --addr {addr:?}: {e}"))
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let addr = match parse_addr() {
        Ok(a) => a,
        Err(msg) => {
            eprintln!("{msg}");
            return ExitCode::from(2);
        }
    };
    let hub = Hub::builder().history_len(HISTORY).build();
    tokio::spawn(simulate(hub.clone()));

    let app = router(&hub);
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("cannot listen on {addr}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let local = listener.local_addr().unwrap_or(addr);
    println!("dashboard: http://{local}/");
    let stop = livehub::shutdown_signal(&hub, tokio::signal::ctrl_c(), GRACE);
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await
    {
        eprintln!("server error: {e}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
