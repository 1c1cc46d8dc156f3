//! Bursts: a publisher that sends faster than fan-out drains is paced, rather than the
//! subscribers that keep up being cut as slow consumers; a stalled one still is.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use livehub_core::{
    Codec, ConnectRequest, Connection, DisconnectReason, Hub, Outgoing, TransportInfo,
};

const SUBS: usize = 100;
const MSGS: u64 = 1_000;

async fn subscriber(hub: &Hub) -> Connection {
    let conn = hub
        .connect(ConnectRequest::new(
            TransportInfo::duplex("mem"),
            Codec::Json,
        ))
        .await
        .unwrap();
    conn.session
        .handle(r#"{"type":"subscribe","topic":"t"}"#.into())
        .await;
    conn
}

/// Drains a subscriber as a transport's writer does; returns the offsets it got and how it
/// ended (`None`: it got all `MSGS`).
async fn reader(mut conn: Connection) -> (Vec<u64>, Option<DisconnectReason>) {
    let mut got = Vec::new();
    let mut batch = Vec::new();
    while (got.len() as u64) < MSGS {
        batch.clear();
        if !conn.outbox.next_batch(&mut batch).await {
            return (got, conn.session.close_reason());
        }
        for o in batch.drain(..) {
            match o {
                Outgoing::Frame(f) => {
                    let v: serde_json::Value = serde_json::from_slice(f.bytes()).unwrap();
                    if v["type"] == "message" {
                        got.push(v["offset"].as_u64().unwrap());
                    }
                }
                Outgoing::Close(r) => return (got, Some(r)),
                _ => {}
            }
        }
        // A writer's system call: others run meanwhile.
        tokio::task::yield_now().await;
    }
    (got, None)
}

/// Publishes `MSGS` messages as fast as the hub takes them (no window), with `SUBS`
/// subscribers reading, and `stalled` more that never read. Returns what each reader got.
async fn burst(hub: &Hub, stalled: usize) -> Vec<(Vec<u64>, Option<DisconnectReason>)> {
    let mut readers = Vec::new();
    for _ in 0..SUBS {
        readers.push(tokio::spawn(reader(subscriber(hub).await)));
    }
    let mut idle = Vec::new();
    for _ in 0..stalled {
        idle.push(subscriber(hub).await);
    }
    for i in 1..=MSGS {
        hub.publish("t", &i).await.unwrap();
    }
    let mut out = Vec::new();
    for r in readers {
        out.push(
            tokio::time::timeout(Duration::from_secs(30), r)
                .await
                .unwrap()
                .unwrap(),
        );
    }
    if stalled > 0 {
        for s in &idle {
            assert_eq!(
                s.session.close_reason(),
                Some(DisconnectReason::SlowConsumer),
                "a subscriber that stalls while the others keep up is still cut"
            );
        }
    }
    out
}

fn hub(pacing: Duration) -> Hub {
    hub_with(pacing, 64)
}

fn hub_with(pacing: Duration, queue: usize) -> Hub {
    Hub::builder()
        .queue_capacity(queue)
        .history_len(0)
        .pacing(pacing)
        .build()
}

#[tokio::test]
async fn a_burst_paces_its_publisher_and_every_subscriber_gets_everything() {
    let hub = hub(Duration::from_secs(5));
    let results = burst(&hub, 0).await;
    let expected: Vec<u64> = (1..=MSGS).collect();
    for (got, end) in &results {
        assert_eq!(*end, None, "no subscriber is cut");
        assert_eq!(*got, expected, "every message, in order");
    }
    let stats = hub.stats();
    assert_eq!(stats.disconnects.get("slow_consumer"), None);
    assert!(stats.paced > 0, "the publisher was paced: {stats:?}");
    assert_eq!(stats.pace_timeouts, 0);
}

#[tokio::test]
async fn without_pacing_the_same_burst_cuts_subscribers() {
    // What the test above guards against: with pacing off, the publisher outruns the readers
    // and their queues overflow.
    let hub = hub(Duration::ZERO);
    let results = burst(&hub, 0).await;
    let cut = results
        .iter()
        .filter(|(_, end)| *end == Some(DisconnectReason::SlowConsumer))
        .count();
    assert!(
        cut > 0,
        "queues of 64 cannot take a 1,000-message burst unpaced"
    );
    assert_eq!(hub.stats().paced, 0);
}

#[tokio::test]
async fn a_stalled_subscriber_is_cut_while_the_others_keep_up_and_pacing_ignores_it() {
    let hub = hub(Duration::from_secs(5));
    let results = burst(&hub, 1).await;
    let expected: Vec<u64> = (1..=MSGS).collect();
    for (got, end) in &results {
        assert_eq!(*end, None);
        assert_eq!(*got, expected);
    }
    assert_eq!(hub.stats().disconnects.get("slow_consumer"), Some(&1));
    assert_eq!(
        hub.stats().pace_timeouts,
        0,
        "one stalled session never holds the publisher"
    );
}

#[tokio::test]
async fn the_queue_is_bounded_in_bytes_as_well_as_frames() {
    // 16 KiB per session: a stalled subscriber is cut once 1 KiB messages pass that, long
    // before its 1,024 frames; the one that reads gets everything.
    let hub = Hub::builder().queue_bytes(16 * 1024).history_len(0).build();
    let stalled = subscriber(&hub).await;
    let mut reading = subscriber(&hub).await;
    let big = "x".repeat(1024);
    let mut batch = Vec::new();
    let mut got = 0;
    for _ in 0..40 {
        hub.publish("t", &big).await.unwrap();
        batch.clear();
        reading.outbox.next_batch(&mut batch).await;
        got += batch
            .iter()
            .filter(
                |o| matches!(o, Outgoing::Frame(f) if f.kind() == livehub_core::FrameKind::Message),
            )
            .count();
    }
    assert_eq!(got, 40);
    assert_eq!(
        stalled.session.close_reason(),
        Some(DisconnectReason::SlowConsumer)
    );
    assert!(!reading.session.is_closed());
}

#[tokio::test]
async fn a_subscriber_that_falls_behind_for_a_moment_holds_the_publisher_instead_of_being_cut() {
    // One subscriber of a hundred stops reading for 100 ms (a pause, a busy thread) during a
    // burst: its queue of 64 fills while the others keep up. It is not stalled: the publisher
    // waits for it (at most a second per episode) rather than cutting it.
    let hub = hub(Duration::from_secs(5));
    let mut readers = Vec::new();
    for _ in 0..SUBS - 1 {
        readers.push(tokio::spawn(reader(subscriber(&hub).await)));
    }
    let late = subscriber(&hub).await;
    readers.push(tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        reader(late).await
    }));
    for i in 1..=MSGS {
        hub.publish("t", &i).await.unwrap();
    }
    let expected: Vec<u64> = (1..=MSGS).collect();
    for r in readers {
        let (got, end) = tokio::time::timeout(Duration::from_secs(30), r)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(end, None, "nobody is cut");
        assert_eq!(got, expected);
    }
    assert_eq!(hub.stats().disconnects.get("slow_consumer"), None);
}
