//! A burst from a publishing WebSocket client, as users run the hub: an axum service on the
//! multi-thread runtime (`#[tokio::main]`), the README's defaults. Fan-out is congested for a
//! while; the hub pushes back on the publisher (its socket is read more slowly) instead of
//! cutting subscribers that keep up.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use livehub::ws::WsService;
use livehub::{async_trait, Action, Hooks, Hub, Identity};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

const SUBS: usize = 300;
const BURST: u64 = 2_000;
const WAIT: Duration = Duration::from_secs(60);

struct Open;

#[async_trait]
impl Hooks for Open {
    async fn authorize(&self, _who: &Identity, _action: Action<'_>) -> bool {
        true
    }
}

/// Subscribers on one topic, a client that publishes a burst (every frame sent before any
/// answer is read); returns how many messages each subscriber got, in order, and the hub.
///
/// The clients run on a thread of their own (one current-thread runtime, as a load generator
/// in another process would), so that the server's runtime is the host's alone.
async fn run(hub: Hub) -> (Vec<Result<u64, String>>, Hub) {
    let app = axum::Router::new().route_service("/ws", WsService::new(hub.clone()));
    let addr = serve_router(app).await;
    let clients = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(clients(addr))
    });
    let got = tokio::task::spawn_blocking(move || clients.join().unwrap())
        .await
        .unwrap();
    (got, hub)
}

async fn clients(addr: std::net::SocketAddr) -> Vec<Result<u64, String>> {
    let mut readers = Vec::new();
    for _ in 0..SUBS {
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
            .await
            .unwrap();
        assert_eq!(recv_json(&mut ws, WAIT).await["type"], "welcome");
        send_json(
            &mut ws,
            json!({"type": "subscribe", "topic": "feed", "id": 1}),
        )
        .await;
        assert_eq!(recv_json(&mut ws, WAIT).await["type"], "reply");
        readers.push(tokio::spawn(async move {
            let mut next = 1u64;
            while next <= BURST {
                let Some(Ok(msg)) = ws.next().await else {
                    return Err(format!("ended after {}", next - 1));
                };
                match msg {
                    Message::Text(t) => {
                        let f: Value = serde_json::from_str(&t).unwrap();
                        if f["type"] == "message" {
                            assert_eq!(f["offset"], next, "in order, no hole");
                            next += 1;
                        }
                    }
                    Message::Close(c) => return Err(format!("closed after {}: {c:?}", next - 1)),
                    _ => {}
                }
            }
            Ok(next - 1)
        }));
    }
    let (mut publisher, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
        .await
        .unwrap();
    assert_eq!(recv_json(&mut publisher, WAIT).await["type"], "welcome");
    for i in 0..BURST {
        let frame = json!({"type": "publish", "topic": "feed", "data": format!("{i:0>90}")});
        publisher
            .feed(Message::text(frame.to_string()))
            .await
            .unwrap();
    }
    publisher.flush().await.unwrap();
    let mut got = Vec::new();
    for r in readers {
        got.push(tokio::time::timeout(WAIT, r).await.unwrap().unwrap());
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_reaches_every_subscriber_under_the_multi_thread_runtime() {
    // The default queue (1,024 frames) scaled to this test's size: 300 subscribers and a
    // 2,000-message burst on a shared two-core machine. With pacing off
    // (`.pacing(Duration::ZERO)`), this very run cuts subscribers as slow consumers.
    let (got, hub) = run(Hub::builder().hooks(Open).queue_capacity(256).build()).await;
    for r in &got {
        assert_eq!(r, &Ok(BURST));
    }
    let stats = hub.stats();
    assert_eq!(stats.disconnects.get("slow_consumer"), None, "{stats:?}");
    assert_eq!(stats.dropped, 0);
}
