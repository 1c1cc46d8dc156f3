//! The XMLHttpRequest-only scoreboard (`assets/sports_poll.html`) on the long-polling
//! transport, with a few fake matches: a small demo of mounting hub-poll.
//!
//! ```text
//! cargo run --example poll_demo                       # http://127.0.0.1:3001/
//! cargo run --example poll_demo -- --addr 127.0.0.1:0 # any free port
//! ```
//!
//! The full sports demo is `sports_scores`; this one only exercises the page and the transport.

use std::time::Duration;

use axum::response::Html;
use axum::routing::get;
use axum::Router;
use hub::poll::PollService;
use hub::Hub;

const PAGE: &str = include_str!("assets/sports_poll.html");

#[tokio::main]
async fn main() -> std::io::Result<()> {
    // `--addr <ip:port>` (or `--addr=<ip:port>`), as every example takes it; a bare address
    // is accepted too.
    let mut addr = "127.0.0.1:3001".to_owned();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        addr = match arg.strip_prefix("--addr") {
            Some("") => args.next().unwrap_or_default(),
            Some(v) => v.trim_start_matches('=').to_owned(),
            None => arg,
        };
    }
    let hub = Hub::builder().history_len(200).build();
    let app = Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route_service("/poll", PollService::new(hub.clone()));
    tokio::spawn(feed(hub));
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("poll demo on http://{}/", listener.local_addr()?);
    axum::serve(listener, app).await
}

/// Three fake matches, one simulated minute a second, a goal now and then.
async fn feed(hub: Hub) {
    let mut matches = [
        ("m1", "Lions", "Tigers", 0u32, 0u32),
        ("m2", "Eagles", "Wolves", 0, 0),
        ("m3", "Sharks", "Falcons", 0, 0),
    ];
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    for step in 0u32.. {
        tick.tick().await;
        let minute = 20 + step % 71;
        for (i, m) in matches.iter_mut().enumerate() {
            let i = u32::try_from(i).unwrap_or(0);
            if minute == 20 {
                (m.3, m.4) = (0, 0);
            }
            let mut event = None;
            if (step + 3 * i) % 7 == 0 {
                if (step / 7 + i) % 2 == 0 {
                    m.3 += 1;
                    event = Some(format!("GOAL {}", m.1));
                } else {
                    m.4 += 1;
                    event = Some(format!("GOAL {}", m.2));
                }
            }
            let status = match minute {
                45..=49 => "ht",
                90 => "ft",
                _ => "live",
            };
            let state = serde_json::json!({
                "id": m.0, "home": m.1, "away": m.2, "home_score": m.3, "away_score": m.4,
                "minute": minute, "status": status, "event": event,
            });
            let _ = hub.publish("scores/all", &state).await;
            let _ = hub.publish(&format!("scores/{}", m.0), &state).await;
        }
    }
}
