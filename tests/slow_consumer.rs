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
use livehub::ws::WsService;
use livehub::{Hub, SlowConsumerPolicy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

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
    subscribe_raw(TcpStream::connect(addr).await.unwrap(), topic).await
}

/// Upgrades `tcp` by hand and subscribes to `topic` (no reading beyond the upgrade's answer).
async fn subscribe_raw(mut tcp: TcpStream, topic: &str) -> TcpStream {
    let handshake = "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    tcp.write_all(handshake.as_bytes()).await.unwrap();
    // Byte by byte, so that nothing after the upgrade's answer is taken from the socket.
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tcp.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"));
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

// ---------------------------------------------------------------------------------------------
// The close frame of a slow consumer.

/// How long the tests give a cut-off connection to drain (generous: the machine may be busy).
const DRAIN: Duration = Duration::from_secs(10);

/// Publishes 32 KiB messages to `topic` until the hub has ended a session as a slow consumer
/// (at most 2,000 of them, and 30 s); returns how many were published.
async fn publish_until_cut_off(hub: &Hub, topic: &str) -> u64 {
    let payload = serde_json::json!({"pad": "x".repeat(32 * 1024)});
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    for n in 1..=2_000u64 {
        hub.publish(topic, &payload).await.unwrap();
        if hub.stats().disconnects.get("slow_consumer") == Some(&1) {
            return n;
        }
        assert!(tokio::time::Instant::now() < deadline, "never cut off");
        // Let the writer run into the full socket.
        tokio::task::yield_now().await;
    }
    panic!(
        "2,000 messages and the reader was never cut off: {:?}",
        hub.stats()
    );
}

/// A hub whose sessions queue at most 8 frames, served by `service` on a free port.
async fn small_queue_hub(
    service: fn(Hub, std::net::SocketAddr) -> WsService,
) -> (Hub, std::net::SocketAddr) {
    let hub = Hub::builder().queue_capacity(8).history_len(0).build();
    let addr = serve_ws_hyper(hub.clone(), service).await;
    (hub, addr)
}

/// A TCP connection whose receive buffer is as small as the kernel allows, so that the
/// server's writes back up after a few kilobytes.
async fn small_window(addr: std::net::SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(addr).await.unwrap()
}

// Regression: a WebSocket whose socket was backed up when the hub cut it off as a slow consumer
// was dropped without the documented close frame (the browser saw 1006 and could not tell
// why), although SSE and long-polling clients get their `close`.
#[tokio::test]
async fn a_slow_reader_that_was_cut_off_still_gets_its_1008_slow_consumer_close() {
    let (hub, addr) = small_queue_hub(|hub, peer| {
        WsService::new(hub)
            .with_peer(peer)
            .slow_consumer_drain(DRAIN)
    })
    .await;
    let tcp = small_window(addr).await;
    let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://{addr}/"), tcp)
        .await
        .unwrap();
    use futures_util::SinkExt;
    ws.send(r#"{"type":"subscribe","topic":"feed","id":1}"#.into())
        .await
        .unwrap();
    // welcome, then the reply: subscribed.
    for expected in ["welcome", "reply"] {
        let msg = tokio::time::timeout(DRAIN, ws.next()).await.unwrap();
        let text = msg.unwrap().unwrap().into_text().unwrap();
        assert!(text.contains(&format!(r#""type":"{expected}""#)), "{text}");
    }

    // The client stops reading; the server publishes until the hub cuts it off.
    let published = publish_until_cut_off(&hub, "feed").await;

    // Now it reads again, slowly: what had been written comes in order, then the close frame.
    let mut offsets = Vec::new();
    let close = loop {
        tokio::time::sleep(Duration::from_millis(2)).await;
        let msg = tokio::time::timeout(DRAIN, ws.next())
            .await
            .expect("nothing more arrived")
            .expect("the connection ended without a close frame")
            .expect("the connection ended without a close frame");
        match msg {
            Message::Text(t) => {
                let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                assert_eq!(v["type"], "message", "{v}");
                offsets.push(v["offset"].as_u64().unwrap());
            }
            Message::Close(Some(frame)) => break (u16::from(frame.code), frame.reason.to_string()),
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(close, (1008, "slow_consumer".to_owned()));
    // What was written before the cut came whole and in order (the rest of the queue was
    // dropped: the client resumes from its last offset to recover it).
    let expected: Vec<u64> = (1..=offsets.len() as u64).collect();
    assert_eq!(offsets, expected);
    assert!(!offsets.is_empty() && (offsets.len() as u64) < published);
}

#[tokio::test]
async fn a_cut_off_reader_that_reads_nothing_is_disconnected_within_the_drain_bound() {
    const SHORT: Duration = Duration::from_millis(300);
    let (hub, addr) = small_queue_hub(|hub, peer| {
        WsService::new(hub)
            .with_peer(peer)
            .slow_consumer_drain(SHORT)
    })
    .await;
    // A client that subscribes, then never reads again.
    let mut tcp = subscribe_raw(small_window(addr).await, "feed").await;
    while hub.topic_members("feed").await.unwrap().is_empty() {
        tokio::task::yield_now().await;
    }

    publish_until_cut_off(&hub, "feed").await;
    // The session is over; its transport lets go of the connection once the drain bound has
    // passed without the client reading: nothing is left for a shutdown to force.
    let report = tokio::time::timeout(
        Duration::from_secs(30),
        hub.shutdown(SHORT + Duration::from_secs(10)),
    )
    .await
    .unwrap();
    assert_eq!((report.sessions, report.forced), (0, 0));

    // The client finds the connection closed after what had been written, with no close frame
    // (the frame it was cut in cannot be ended).
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), tcp.read_to_end(&mut raw))
        .await
        .unwrap()
        .ok();
    let mut i = 0;
    while i + 2 <= raw.len() {
        let opcode = raw[i] & 0x0f;
        assert_ne!(opcode, 0x8, "a close frame at byte {i}");
        let (len, head) = match raw[i + 1] & 0x7f {
            126 if i + 4 <= raw.len() => (u16::from_be_bytes([raw[i + 2], raw[i + 3]]) as usize, 4),
            127 if i + 10 <= raw.len() => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&raw[i + 2..i + 10]);
                (u64::from_be_bytes(b) as usize, 10)
            }
            126 | 127 => break,
            n => (n as usize, 2),
        };
        i += head + len;
    }
}
