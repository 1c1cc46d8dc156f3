//! A stalled WebSocket subscriber beside an active one: memory stays bounded by the stalled
//! session's queue, the active one gets everything, and the policy is applied and counted.
//!
//! Everything runs on one thread (the default test runtime), so the process's resident memory
//! is a fair picture of what the hub keeps.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::serve_ws_hyper;
use futures_util::StreamExt;
use hub::ws::WsService;
use hub::{Hub, SlowConsumerPolicy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const MESSAGES: u64 = 100_000;
const QUEUE: usize = 256;

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// A client that subscribes and then never reads again.
async fn stalled_client(addr: std::net::SocketAddr, topic: &str) -> TcpStream {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let handshake = "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    tcp.write_all(handshake.as_bytes()).await.unwrap();
    let mut buf = [0u8; 1024];
    let mut got = Vec::new();
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tcp.read(&mut buf).await.unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    let frame = format!(r#"{{"type":"subscribe","topic":"{topic}"}}"#);
    let mut ws = vec![0x81, 0x80 | frame.len() as u8, 0, 0, 0, 0];
    ws.extend_from_slice(frame.as_bytes());
    tcp.write_all(&ws).await.unwrap();
    tcp
}

#[tokio::test]
async fn a_stalled_subscriber_costs_its_queue_bound_not_the_message_count() {
    let hub = Hub::builder()
        .queue_capacity(QUEUE)
        .slow_consumer(SlowConsumerPolicy::Drop)
        .history_len(100)
        .build();
    let addr = serve_ws_hyper(hub.clone(), |hub, _| WsService::new(hub)).await;

    // The active subscriber counts what it receives, in order.
    let (mut active, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/"))
        .await
        .unwrap();
    let received = Arc::new(AtomicU64::new(0));
    let progress = Arc::new(tokio::sync::Notify::new());
    use futures_util::SinkExt;
    active
        .send(r#"{"type":"subscribe","topic":"feed","id":1}"#.into())
        .await
        .unwrap();
    let reader = tokio::spawn({
        let received = received.clone();
        let progress = progress.clone();
        async move {
            while let Some(Ok(msg)) = active.next().await {
                let text = match msg {
                    tokio_tungstenite::tungstenite::Message::Text(t) => t,
                    _ => continue,
                };
                let v: serde_json::Value = serde_json::from_str(&text).unwrap();
                if v["type"] == "message" {
                    let n = received.fetch_add(1, Ordering::SeqCst) + 1;
                    assert_eq!(v["offset"], n, "out of order or lost");
                    progress.notify_one();
                    if n == MESSAGES {
                        return;
                    }
                } else {
                    assert!(v["type"] != "gap", "the active subscriber lagged: {v}");
                }
            }
        }
    });
    let _stalled = stalled_client(addr, "feed").await;
    // Wait until both are subscribed.
    while hub.topic_members("feed").await.unwrap().len() < 2 {
        tokio::task::yield_now().await;
    }

    let payload = serde_json::json!({"score": "2-1", "pad": "x".repeat(60)});
    let mut baseline = None;
    for i in 1..=MESSAGES {
        hub.publish("feed", &payload).await.unwrap();
        // Let the active reader keep up: at most 64 messages in flight.
        while i > received.load(Ordering::SeqCst) + 64 {
            tokio::time::timeout(Duration::from_secs(10), progress.notified())
                .await
                .expect("the active subscriber stopped receiving");
        }
        if i == 20_000 {
            // By now the stalled session's socket buffers and queue are full: measure from here.
            baseline = Some(rss_kib());
        }
    }
    tokio::time::timeout(Duration::from_secs(30), reader)
        .await
        .expect("the active subscriber did not get everything")
        .unwrap();
    let grown = rss_kib().saturating_sub(baseline.unwrap());

    // 80,000 more messages of ~150 bytes would be ~12 MB if anything kept them. The stalled
    // queue holds at most QUEUE frames (~60 KB); allow a small constant for the allocator.
    assert!(
        grown < 4 * 1024,
        "RSS grew by {grown} KiB while a subscriber was stalled"
    );
    let stats = hub.stats();
    // Every message was either queued or dropped for each of the two sessions (plus two
    // welcomes and one reply), and the stalled one lost most of them.
    assert_eq!(
        stats.deliveries + stats.dropped,
        2 * MESSAGES + 3,
        "{stats:?}"
    );
    assert!(
        stats.dropped > MESSAGES / 2,
        "policy not applied: {stats:?}"
    );
    assert_eq!(
        hub.topic_members("feed").await.unwrap().len(),
        2,
        "the drop policy keeps the session"
    );
}
