//! Latest-value conflation: a subscription that falls behind keeps only the newest message per
//! key (in offset order, after a `gap` with reason `conflated`), a subscription that keeps up
//! sees every message, and messages without a key, or deletions, are never conflated away.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use livehub_core::{
    async_trait, Action, Codec, ConnectRequest, Connection, Hooks, Hub, Identity, Outgoing,
    TransportInfo,
};
use serde_json::{json, Value};

struct Open;

#[async_trait]
impl Hooks for Open {
    async fn authorize(&self, _who: &Identity, _action: Action<'_>) -> bool {
        true
    }
}

struct Client {
    conn: Connection,
    ready: VecDeque<Value>,
}

impl Client {
    async fn connect(hub: &Hub) -> Client {
        let conn = hub
            .connect(ConnectRequest::new(
                TransportInfo::duplex("mem"),
                Codec::Json,
            ))
            .await
            .unwrap();
        let mut c = Client {
            conn,
            ready: VecDeque::new(),
        };
        assert_eq!(c.recv().await["type"], "welcome");
        c
    }

    async fn send(&self, frame: Value) {
        self.conn
            .session
            .handle(Bytes::from(serde_json::to_vec(&frame).unwrap()))
            .await;
    }

    /// Everything queued now, without waiting (what a writer takes at once).
    async fn take(&mut self) -> Vec<Value> {
        let mut batch = Vec::new();
        let mut out = Vec::new();
        if tokio::time::timeout(
            Duration::from_millis(50),
            self.conn.outbox.next_batch(&mut batch),
        )
        .await
        .is_ok()
        {
            for o in batch {
                if let Outgoing::Frame(f) = o {
                    out.push(serde_json::from_slice(f.bytes()).unwrap());
                }
            }
        }
        out
    }

    async fn recv(&mut self) -> Value {
        loop {
            if let Some(v) = self.ready.pop_front() {
                return v;
            }
            let got = self.take().await;
            assert!(!got.is_empty(), "a frame in time");
            self.ready.extend(got);
        }
    }
}

fn hub() -> Hub {
    Hub::builder()
        .hooks(Open)
        .history_len(1000)
        .queue_capacity(64)
        .conflate_topics(|t| t.starts_with("scores/"))
        .build()
}

/// The messages of `frames`: (offset, key, data).
fn messages(frames: &[Value]) -> Vec<(u64, Option<String>, Value)> {
    frames
        .iter()
        .filter(|f| f["type"] == "message")
        .map(|f| {
            (
                f["offset"].as_u64().unwrap(),
                f["key"].as_str().map(str::to_owned),
                f["data"].clone(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_subscriber_that_falls_behind_gets_the_newest_value_per_key_and_is_told() {
    let hub = hub();
    let mut stalled = Client::connect(&hub).await;
    stalled
        .send(json!({"type": "subscribe", "topic": "scores/live", "id": 1}))
        .await;
    assert_eq!(stalled.recv().await["type"], "reply");
    // 100,000 updates of 10 matches; the subscriber reads nothing meanwhile. Its queue (64
    // frames) would have cut it long ago: it holds one message per key instead.
    for i in 0..100_000u64 {
        let key = format!("match:{}", i % 10);
        hub.publish_keyed("scores/live", &key, &json!({"n": i}))
            .await
            .unwrap();
        if i % 10_000 == 9_999 {
            let s = hub.stats();
            assert!(s.max_queue <= 64, "bounded while it flows: {}", s.max_queue);
        }
    }
    assert!(!stalled.conn.session.is_closed(), "not cut");
    let frames = stalled.take().await;
    let gap = &frames[0];
    assert_eq!(gap["type"], "gap", "{gap}");
    assert_eq!(gap["reason"], "conflated");
    let got = messages(&frames);
    // Exactly one per key, the newest, in ascending offset order.
    let keys: Vec<String> = got.iter().map(|m| m.1.clone().unwrap()).collect();
    let mut unique = keys.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 10, "{keys:?}");
    assert_eq!(keys.len(), 10);
    let offsets: Vec<u64> = got.iter().map(|m| m.0).collect();
    assert_eq!(offsets, (99_991..=100_000).collect::<Vec<_>>());
    for (offset, key, data) in &got {
        assert_eq!(data["n"], offset - 1);
        assert_eq!(
            key.as_deref(),
            Some(&*format!("match:{}", (offset - 1) % 10))
        );
    }
    assert!(gap["to"].as_u64().unwrap() < 99_991);
    // Live again: everything.
    hub.publish_keyed("scores/live", "match:0", &json!({"n": "live"}))
        .await
        .unwrap();
    let next = stalled.recv().await;
    assert_eq!(next["offset"], 100_001);
}

#[tokio::test]
async fn a_subscriber_that_keeps_up_sees_every_message_and_unkeyed_ones_are_never_dropped() {
    let hub = hub();
    let mut keeping_up = Client::connect(&hub).await;
    let mut behind = Client::connect(&hub).await;
    for c in [&keeping_up, &behind] {
        c.send(json!({"type": "subscribe", "topic": "scores/x"}))
            .await;
    }
    // 90 messages: 30 without a key and 30 deletions (which the queue of 64 holds whatever
    // happens), and 30 of key `k`.
    let mut seen = Vec::new();
    for i in 0..90u64 {
        match i % 3 {
            0 => hub.publish("scores/x", &json!({"n": i})).await.unwrap(),
            1 => hub
                .publish_keyed("scores/x", "k", &json!({"n": i}))
                .await
                .unwrap(),
            _ => hub.publish_delete("scores/x", "gone").await.unwrap(),
        };
        seen.extend(messages(&keeping_up.take().await));
    }
    assert_eq!(seen.len(), 90, "keeping up: every message");
    assert_eq!(seen.last().unwrap().0, 90);
    // Behind: every unkeyed message and every deletion stays; of key `k`, only the newest.
    let got = messages(&behind.take().await);
    let unkeyed = got.iter().filter(|m| m.1.is_none()).count();
    let deletes = got
        .iter()
        .filter(|m| m.1.as_deref() == Some("gone"))
        .count();
    let k: Vec<u64> = got
        .iter()
        .filter(|m| m.1.as_deref() == Some("k"))
        .map(|m| m.0)
        .collect();
    assert_eq!((unkeyed, deletes), (30, 30));
    assert_eq!(k.last(), Some(&89), "the newest of `k`");
    assert_eq!(k.len(), 1, "older ones of `k` went: {k:?}");
    let offsets: Vec<u64> = got.iter().map(|m| m.0).collect();
    assert!(offsets.windows(2).all(|w| w[0] < w[1]), "ascending order");
}

#[tokio::test]
async fn a_conflated_resume_recovers_the_newest_value_per_key() {
    let hub = hub();
    let p0 = hub.position("scores/board").await.unwrap();
    for i in 1..=30u64 {
        hub.publish_keyed("scores/board", &format!("m{}", i % 3), &i)
            .await
            .unwrap();
    }
    hub.publish("scores/board", &"no key").await.unwrap();
    // From the start: the board (one value per key, and the unkeyed message), told as such.
    let mut c = Client::connect(&hub).await;
    c.send(json!({"type": "subscribe", "topic": "scores/board", "since": {"epoch": &*p0.epoch, "offset": 0}}))
        .await;
    let mut frames = Vec::new();
    while messages(&frames).len() < 4 {
        frames.extend(c.take().await);
    }
    assert_eq!(frames[0]["reason"], "conflated", "{frames:?}");
    let got: Vec<u64> = messages(&frames).iter().map(|m| m.0).collect();
    assert_eq!(got, [28, 29, 30, 31]);
    // `last` on a conflated subscription: the same, within the last messages.
    let mut d = Client::connect(&hub).await;
    d.send(json!({"type": "subscribe", "topic": "scores/board", "last": 10}))
        .await;
    let mut frames = Vec::new();
    while messages(&frames).len() < 4 {
        frames.extend(d.take().await);
    }
    let got: Vec<u64> = messages(&frames).iter().map(|m| m.0).collect();
    assert_eq!(got, [28, 29, 30, 31]);
    // A subscription may say no: the whole history after its position.
    let mut e = Client::connect(&hub).await;
    e.send(json!({"type": "subscribe", "topic": "scores/board", "since": {"epoch": &*p0.epoch, "offset": 25}, "conflate": false}))
        .await;
    let mut frames = Vec::new();
    while messages(&frames).len() < 6 {
        frames.extend(e.take().await);
    }
    let got: Vec<u64> = messages(&frames).iter().map(|m| m.0).collect();
    assert_eq!(got, [26, 27, 28, 29, 30, 31]);
}

#[tokio::test]
async fn keys_are_checked_at_publish() {
    let hub = hub();
    let long = "k".repeat(129);
    let e = hub.publish_keyed("scores/x", &long, &1).await.unwrap_err();
    assert_eq!(e.code().as_str(), "bad_key");
    let c = Client::connect(&hub).await;
    let mut c = c;
    for frame in [
        json!({"type": "publish", "topic": "scores/x", "data": 1, "key": long, "id": 1}),
        json!({"type": "publish", "topic": "scores/x", "data": 1, "key": "", "id": 2}),
        json!({"type": "publish", "topic": "scores/x", "data": 1, "delete": true, "id": 3}),
        json!({"type": "publish", "topic": "scores/x", "data": 1, "key": 7, "id": 4}),
    ] {
        c.send(frame).await;
        let err = c.recv().await;
        assert_eq!(err["type"], "error", "{err}");
        let want = if err["id"] == 4 {
            "bad_field"
        } else {
            "bad_key"
        };
        assert_eq!(err["code"], want, "{err}");
    }
    c.send(json!({"type": "publish", "topic": "scores/x", "data": 1, "key": "ok", "id": 5}))
        .await;
    let r = c.recv().await;
    assert_eq!(
        (r["type"].as_str(), r["id"].as_u64()),
        (Some("reply"), Some(5))
    );
}
