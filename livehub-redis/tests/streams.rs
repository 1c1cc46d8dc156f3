//! Topic streams over a real Redis: positions, order, history bounds, expiry, tops, channel
//! subscriptions, undecodable messages and inbound overflow.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{json, node, value, Gate, NodeOptions, SharedRedis, TestNode, WAIT};
use livehub_core::broker::{Broker, Channel, History, HistoryFrom, Message, Position, Retention};
use livehub_core::{Codec, Payload};
use serde_json::json;

/// Options with this retention.
fn keeping(max_messages: usize, max_bytes: usize, ttl: Option<Duration>) -> NodeOptions {
    let mut retention = Retention::default();
    retention.max_messages = max_messages;
    retention.max_bytes = max_bytes;
    retention.topic_ttl = ttl;
    NodeOptions {
        retention,
        ..NodeOptions::default()
    }
}

async fn history(n: &TestNode, topic: &str, from: HistoryFrom) -> History {
    n.engine.history(topic, from).await.unwrap()
}

fn offsets(h: &History) -> Vec<u64> {
    h.publications.iter().map(|p| p.offset()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishers_get_contiguous_offsets_delivered_in_order() {
    let Some(redis) = SharedRedis::get() else {
        return;
    };
    let opts = || keeping(5000, 64 << 20, Some(Duration::from_secs(60)));
    let mut a = node(&redis.url, &redis.prefix, opts()).await;
    let mut b = node(&redis.url, &redis.prefix, opts()).await;
    a.engine.subscribe(Channel::Topic("race")).await.unwrap();
    b.engine.subscribe(Channel::Topic("race")).await.unwrap();

    const TASKS: usize = 8;
    const EACH: usize = 500;
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        // Half the publishers on each node.
        let engine = if t % 2 == 0 {
            a.engine.clone()
        } else {
            b.engine.clone()
        };
        tasks.push(tokio::spawn(async move {
            let mut positions = Vec::with_capacity(EACH);
            for i in 0..EACH {
                let p = engine
                    .publish("race", json(json!({"t": t, "i": i})))
                    .await
                    .unwrap();
                positions.push(p);
            }
            positions
        }));
    }
    let mut positions: Vec<Position> = Vec::new();
    for t in tasks {
        positions.extend(t.await.unwrap());
    }
    let epoch = positions[0].epoch.clone();
    assert!(positions.iter().all(|p| p.epoch == epoch));
    let mut offs: Vec<u64> = positions.iter().map(|p| p.offset).collect();
    offs.sort_unstable();
    let total = (TASKS * EACH) as u64;
    assert_eq!(offs, (1..=total).collect::<Vec<_>>(), "unique, contiguous");

    for heard in [&mut a.heard, &mut b.heard] {
        for want in 1..=total {
            let p = heard.delivery().await;
            assert_eq!((p.topic().as_ref(), p.offset()), ("race", want));
            assert_eq!(p.epoch(), &epoch);
        }
    }
    for n in [&a, &b] {
        let s = n.engine.stats();
        assert_eq!((s.messages_in, s.dropped_in, s.undecodable), (total, 0, 0));
        assert!(s.connected);
    }
    assert_eq!(
        a.engine.stats().messages_out + b.engine.stats().messages_out,
        total
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_position_from_one_node_resumes_on_another() {
    let Some(redis) = SharedRedis::get() else {
        return;
    };
    let a = node(&redis.url, &redis.prefix, NodeOptions::default()).await;
    let b = node(&redis.url, &redis.prefix, NodeOptions::default()).await;
    let mut positions = Vec::new();
    for i in 1..=5 {
        positions.push(
            a.engine
                .publish("scores", json(json!({"n": i})))
                .await
                .unwrap(),
        );
    }
    let mp = Payload::encode(Codec::MsgPack, &json!({"n": 6})).unwrap();
    positions.push(
        a.engine
            .publish("scores", Message::new(mp.clone()))
            .await
            .unwrap(),
    );

    let h = history(&b, "scores", HistoryFrom::After(positions[1].clone())).await;
    assert_eq!(h.top, positions[5]);
    assert_eq!(offsets(&h), [3, 4, 5, 6]);
    assert_eq!(value(&h.publications[0]), json!({"n": 3}));
    // The codec travels with the bytes.
    assert_eq!(h.publications[3].data(), &mp);
    assert!(h
        .publications
        .iter()
        .all(|p| p.topic().as_ref() == "scores"));

    let last = history(&b, "scores", HistoryFrom::Last(2)).await;
    assert_eq!(offsets(&last), [5, 6]);
    let top = history(&b, "scores", HistoryFrom::Top).await;
    assert_eq!(
        (top.top.clone(), top.publications.len()),
        (positions[5].clone(), 0)
    );
    let at_top = history(&b, "scores", HistoryFrom::After(positions[5].clone())).await;
    assert!(at_top.publications.is_empty());
    // A position of another epoch names nothing in this stream.
    let other = Position::new("another-epoch", 1);
    let h = history(&b, "scores", HistoryFrom::After(other)).await;
    assert!(h.publications.is_empty());
    assert_eq!(h.top, positions[5]);
    // Offsets no stream reaches are not an error.
    let far = Position::new(positions[0].epoch.clone(), u64::MAX);
    assert!(history(&b, "scores", HistoryFrom::After(far))
        .await
        .publications
        .is_empty());
    let many = history(&b, "scores", HistoryFrom::Last(usize::MAX)).await;
    assert_eq!(offsets(&many), [1, 2, 3, 4, 5, 6]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_a_topic_without_stream_creates_an_epoch_to_resume_from() {
    let Some(redis) = SharedRedis::get() else {
        return;
    };
    let a = node(&redis.url, &redis.prefix, NodeOptions::default()).await;
    let h = history(&a, "fresh", HistoryFrom::Last(10)).await;
    assert_eq!(h.top.offset, 0);
    assert!(h.publications.is_empty());
    let p = a.engine.publish("fresh", json(json!(1))).await.unwrap();
    assert_eq!(
        p,
        Position::new(h.top.epoch.clone(), 1),
        "same epoch, offset 1"
    );
    let after = history(&a, "fresh", HistoryFrom::After(h.top)).await;
    assert_eq!(offsets(&after), [1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_is_bounded_by_count() {
    let Some(redis) = SharedRedis::get() else {
        return;
    };
    let opts = keeping(3, 1 << 20, None);
    let a = node(&redis.url, &redis.prefix, opts).await;
    let mut last = None;
    for i in 1..=5 {
        last = Some(a.engine.publish("count", json(json!(i))).await.unwrap());
    }
    let last = last.unwrap();
    let from_start = Position::new(last.epoch.clone(), 0);
    let h = history(&a, "count", HistoryFrom::After(from_start)).await;
    assert_eq!(offsets(&h), [3, 4, 5]);
    let values: Vec<_> = h.publications.iter().map(value).collect();
    assert_eq!(values, [json!(3), json!(4), json!(5)]);
    assert_eq!(h.top, last);
    let h = history(&a, "count", HistoryFrom::Last(10)).await;
    assert_eq!(offsets(&h), [3, 4, 5]);

    // No history at all: the top still moves.
    let none = keeping(0, 1 << 20, None);
    let z = node(&redis.url, &redis.prefix, none).await;
    z.engine.publish("none", json(json!(1))).await.unwrap();
    let p = z.engine.publish("none", json(json!(2))).await.unwrap();
    let h = history(&z, "none", HistoryFrom::Last(10)).await;
    assert_eq!((h.top, h.publications.len()), (p, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_is_bounded_by_payload_bytes() {
    let Some(redis) = SharedRedis::get() else {
        return;
    };
    let opts = keeping(100, 10, None);
    let a = node(&redis.url, &redis.prefix, opts).await;
    // Each `"abN"` is 5 bytes of JSON: two fit in 10 bytes, three do not.
    let mut last = None;
    for i in 1..=4 {
        last = Some(
            a.engine
                .publish("bytes", json(json!(format!("ab{i}"))))
                .await
                .unwrap(),
        );
    }
    let h = history(&a, "bytes", HistoryFrom::Last(100)).await;
    assert_eq!(offsets(&h), [3, 4]);
    let values: Vec<_> = h.publications.iter().map(value).collect();
    assert_eq!(values, [json!("ab3"), json!("ab4")]);
    assert_eq!(h.top, last.unwrap());

    // A 4-byte message pushes out one of 5: 5 + 4 = 9.
    a.engine.publish("bytes", json(json!("ab"))).await.unwrap();
    let h = history(&a, "bytes", HistoryFrom::Last(100)).await;
    assert_eq!(offsets(&h), [4, 5]);

    // A message larger than the bound is not kept at all; the top moves on.
    let big = a
        .engine
        .publish("bytes", json(json!("0123456789")))
        .await
        .unwrap();
    let h = history(&a, "bytes", HistoryFrom::Last(100)).await;
    assert!(h.publications.is_empty());
    assert_eq!(big.offset, 6);
    assert_eq!(h.top, big);
    // And what follows is kept again, the byte count right after the trim.
    a.engine.publish("bytes", json(json!("ab7"))).await.unwrap();
    a.engine.publish("bytes", json(json!("ab8"))).await.unwrap();
    let h = history(&a, "bytes", HistoryFrom::Last(100)).await;
    assert_eq!(offsets(&h), [7, 8]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_topic_comes_back_in_a_new_epoch() {
    let Some(redis) = SharedRedis::get() else {
        return;
    };
    let opts = keeping(100, 1 << 20, Some(Duration::from_millis(300)));
    let a = node(&redis.url, &redis.prefix, opts).await;
    a.engine.publish("brief", json(json!(1))).await.unwrap();
    let old = a.engine.publish("brief", json(json!(2))).await.unwrap();
    assert_eq!(old.offset, 2);
    let topics = [Arc::from("brief")];
    // Wait for Redis to expire both keys (bounded poll: the expiry is Redis's).
    let deadline = tokio::time::Instant::now() + WAIT;
    while a.engine.tops(&topics).await.unwrap()[0].is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the topic never expired"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let new = a.engine.publish("brief", json(json!(3))).await.unwrap();
    assert_ne!(new.epoch, old.epoch);
    assert_eq!(new.offset, 1, "offsets restart at 1");
    let h = history(&a, "brief", HistoryFrom::After(old)).await;
    assert!(h.publications.is_empty(), "the old epoch names nothing");
    assert_eq!(h.top, new);
    let h = history(&a, "brief", HistoryFrom::Last(10)).await;
    assert_eq!(offsets(&h), [1]);
    assert_eq!(value(&h.publications[0]), json!(3));
}

fn pttl(redis: &SharedRedis, key: &str) -> i64 {
    redis::cmd("PTTL").arg(key).query(&mut redis.cli()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tick_keeps_subscribed_topics_alive() {
    let Some(redis) = SharedRedis::get() else {
        return;
    };
    let opts = keeping(100, 1 << 20, Some(Duration::from_secs(600)));
    let a = node(&redis.url, &redis.prefix, opts).await;
    a.engine.subscribe(Channel::Topic("kept")).await.unwrap();
    a.engine.publish("kept", json(json!(1))).await.unwrap();
    a.engine.publish("idle", json(json!(1))).await.unwrap();
    let meta = |t: &str| format!("{{{}:t:{t}}}:meta", redis.prefix);
    let stream = |t: &str| format!("{{{}:t:{t}}}:stream", redis.prefix);
    // Shorten the ttls by hand, as if time had passed.
    for key in [meta("kept"), stream("kept"), meta("idle"), stream("idle")] {
        let _: () = redis::cmd("PEXPIRE")
            .arg(&key)
            .arg(5000)
            .query(&mut redis.cli())
            .unwrap();
    }
    a.engine.tick();
    let deadline = tokio::time::Instant::now() + WAIT;
    while pttl(&redis, &meta("kept")) <= 5000 || pttl(&redis, &stream("kept")) <= 5000 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "tick did not refresh the ttl"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(pttl(&redis, &meta("kept")) > 590_000);
    // A topic no one here subscribes to is left to expire.
    assert!(pttl(&redis, &meta("idle")) <= 5000);
    assert!(pttl(&redis, &stream("idle")) <= 5000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tops_report_each_stream_or_none() {
    let Some(redis) = SharedRedis::get() else {
        return;
    };
    let a = node(&redis.url, &redis.prefix, NodeOptions::default()).await;
    let b = node(&redis.url, &redis.prefix, NodeOptions::default()).await;
    a.engine.publish("one", json(json!(1))).await.unwrap();
    let one = a.engine.publish("one", json(json!(2))).await.unwrap();
    let two = b.engine.publish("two", json(json!(1))).await.unwrap();
    let topics: Vec<Arc<str>> = ["one", "never", "two"].into_iter().map(Arc::from).collect();
    assert_eq!(
        b.engine.tops(&topics).await.unwrap(),
        [Some(one), None, Some(two)]
    );
    assert!(a.engine.tops(&[]).await.unwrap().is_empty());
    // More than one pipeline's worth.
    let many: Vec<Arc<str>> = (0..2500).map(|i| Arc::from(format!("m{i}"))).collect();
    let tops = a.engine.tops(&many).await.unwrap();
    assert_eq!(tops.len(), 2500);
    assert!(tops.iter().all(Option::is_none));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribing_stops_delivery() {
    let Some(redis) = SharedRedis::get() else {
        return;
    };
    let mut a = node(&redis.url, &redis.prefix, NodeOptions::default()).await;
    let b = node(&redis.url, &redis.prefix, NodeOptions::default()).await;
    assert!(a.heard.nothing_delivered_yet());
    a.engine.subscribe(Channel::Topic("t")).await.unwrap();
    // Subscribing twice is harmless.
    a.engine.subscribe(Channel::Topic("t")).await.unwrap();
    a.engine.subscribe(Channel::Topic("marker")).await.unwrap();
    b.engine.publish("t", json(json!("first"))).await.unwrap();
    let p = a.heard.delivery().await;
    assert_eq!((p.topic().as_ref(), value(&p)), ("t", json!("first")));

    a.engine.unsubscribe(Channel::Topic("t")).await.unwrap();
    a.engine.unsubscribe(Channel::Topic("t")).await.unwrap();
    b.engine.publish("t", json(json!("second"))).await.unwrap();
    // Published after "second" by the same connection: had "second" been delivered, it
    // would come first.
    b.engine
        .publish("marker", json(json!("end")))
        .await
        .unwrap();
    let p = a.heard.delivery().await;
    assert_eq!((p.topic().as_ref(), value(&p)), ("marker", json!("end")));
    // A room channel carries no publications, only control messages.
    a.engine.subscribe(Channel::Room("r")).await.unwrap();
    a.engine.unsubscribe(Channel::Room("r")).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_message_is_counted_and_later_ones_still_arrive() {
    let Some(redis) = SharedRedis::get() else {
        return;
    };
    let mut a = node(&redis.url, &redis.prefix, NodeOptions::default()).await;
    a.engine.subscribe(Channel::Topic("t")).await.unwrap();
    let channel = format!("{{{}:t:t}}:ch", redis.prefix);
    let bad: [&[u8]; 5] = [
        b"",
        b"not a message",
        b"\x01\x01j\x02ep",
        // A well-formed header with data that is not JSON.
        b"\x01\x01j\x02ep\x00\x00\x00\x00\x00\x00\x00\x01{not json",
        b"\x07\x01",
    ];
    publish_raw(&redis, &channel, &bad);
    for _ in bad {
        let (topic, error) = a.heard.undecodable().await;
        assert_eq!(topic.as_deref(), Some("t"));
        assert!(!error.is_empty());
    }
    let p = a.engine.publish("t", json(json!("fine"))).await.unwrap();
    let got = a.heard.delivery().await;
    assert_eq!(got.position(), p);
    assert_eq!(value(&got), json!("fine"));
    let s = a.engine.stats();
    assert_eq!((s.undecodable, s.messages_in), (5, 6));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publication_on_a_room_channel_is_undecodable_and_delivered_nowhere() {
    let Some(redis) = SharedRedis::get() else {
        return;
    };
    let mut a = node(&redis.url, &redis.prefix, NodeOptions::default()).await;
    a.engine.subscribe(Channel::Room("r")).await.unwrap();
    let channel = format!("{{{}:r:r}}:ch", redis.prefix);
    // Both well-formed: one publication, and a batch of one, each at offset 1 of epoch "ep".
    let bodies: [&[u8]; 2] = [
        b"\x01\x01j\x02ep\x00\x00\x00\x00\x00\x00\x00\x01\"x\"",
        b"\x01\x04\x02ep\x00\x00\x00\x00\x00\x00\x00\x01\x00\x01j\x00\x00\x00\x00\x03\"x\"",
    ];
    publish_raw(&redis, &channel, &bodies);
    for _ in bodies {
        let (topic, error) = a.heard.undecodable().await;
        assert_eq!(topic, None);
        assert_eq!(error, "a publication on a non-topic channel");
    }
    assert!(a.heard.nothing_delivered_yet());
    assert_eq!(a.engine.stats().undecodable, 2);
}

/// Publishes each of `bodies` on `channel` as they are, behind the engine's back.
fn publish_raw(redis: &SharedRedis, channel: &str, bodies: &[&[u8]]) {
    let mut cli = redis.cli();
    for body in bodies {
        let _: i64 = redis::cmd("PUBLISH")
            .arg(channel)
            .arg(*body)
            .query(&mut cli)
            .unwrap();
    }
}

/// Opens a gate when dropped (also when a test fails).
struct OpenOnDrop(Arc<Gate>);

impl Drop for OpenOnDrop {
    fn drop(&mut self) {
        self.0.open();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_overflow_is_dropped_and_counted() {
    let Some(redis) = SharedRedis::get() else {
        return;
    };
    let gate = Arc::new(Gate::default());
    // If an assertion fails before the gate opens, open it anyway: the engine's dispatch task
    // would otherwise hold the runtime's shutdown for two minutes per queued message.
    let _open_on_failure = OpenOnDrop(gate.clone());
    let opts = NodeOptions {
        gate: Some(gate.clone()),
        builder: |b| b.inbound_queue(8),
        ..NodeOptions::default()
    };
    let mut a = node(&redis.url, &redis.prefix, opts).await;
    let b = node(&redis.url, &redis.prefix, NodeOptions::default()).await;
    a.engine.subscribe(Channel::Topic("flood")).await.unwrap();
    const N: u64 = 200;
    let arrived = |n: u64, pending: u64| {
        let s = a.engine.stats();
        s.messages_in == n && s.pending_in == pending
    };
    // The first one is taken off the queue and held by the node...
    b.engine.publish("flood", json(json!(0))).await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while !arrived(1, 0) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the first did not arrive: {:?}",
            a.engine.stats()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // ...so of the others, 8 wait in the queue and the rest is dropped.
    for i in 1..N {
        b.engine.publish("flood", json(json!(i))).await.unwrap();
    }
    while !arrived(N, 8) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not all arrived: {:?}",
            a.engine.stats()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let s = a.engine.stats();
    assert_eq!(s.pending_in, 8);
    assert_eq!(s.dropped_in, N - 1 - 8);
    gate.open();
    let mut got = Vec::new();
    for _ in 0..9 {
        got.push(a.heard.delivery().await.offset());
    }
    assert_eq!(got, (1..=9).collect::<Vec<_>>(), "what was kept, in order");
    // The holes are visible to the node: the next message skips ahead.
    b.engine
        .publish("flood", json(json!("after")))
        .await
        .unwrap();
    assert_eq!(a.heard.delivery().await.offset(), N + 1);
    assert_eq!(a.engine.stats().pending_in, 0);
}

#[tokio::test]
async fn keys_travel_with_messages_through_the_channel_and_the_history() {
    let Some(redis) = SharedRedis::get() else {
        return;
    };
    let mut a = node(&redis.url, &redis.prefix, NodeOptions::default()).await;
    let b = node(&redis.url, &redis.prefix, NodeOptions::default()).await;
    a.engine.subscribe(Channel::Topic("board")).await.unwrap();
    let data = Payload::from_value(&json!({"home": 1})).unwrap();
    b.engine
        .publish("board", Message::keyed(data.clone(), "match:7"))
        .await
        .unwrap();
    b.engine
        .publish(
            "board",
            Message::keyed(Payload::null(), "match:8").deleting(),
        )
        .await
        .unwrap();
    b.engine.publish("board", json(json!(3))).await.unwrap();
    // Live, on the other node.
    let got: Vec<(Option<String>, bool)> = [
        a.heard.delivery().await,
        a.heard.delivery().await,
        a.heard.delivery().await,
    ]
    .iter()
    .map(|p| (p.key().map(|k| k.to_string()), p.is_delete()))
    .collect();
    assert_eq!(
        got,
        [
            (Some("match:7".to_owned()), false),
            (Some("match:8".to_owned()), true),
            (None, false)
        ]
    );
    // And from the history.
    let h = history(&a, "board", HistoryFrom::Last(3)).await;
    let kept: Vec<(u64, Option<String>, bool)> = h
        .publications
        .iter()
        .map(|p| (p.offset(), p.key().map(|k| k.to_string()), p.is_delete()))
        .collect();
    assert_eq!(
        kept,
        [
            (1, Some("match:7".to_owned()), false),
            (2, Some("match:8".to_owned()), true),
            (3, None, false)
        ]
    );
    assert_eq!(h.publications[0].data(), &data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_queued_together_keep_positions_keys_and_both_history_bounds() {
    let Some(redis) = SharedRedis::get() else {
        return;
    };
    // Publishes of one topic queued next to each other go to Redis as one script call and one
    // channel message: each must still get its own position, key and delete flag, and the
    // history must be the same suffix that one publish at a time leaves.
    const N: usize = 200;
    const KEEP: usize = 50;
    const BYTES: usize = 300;
    let opts = || keeping(KEEP, BYTES, None);
    let mut a = node(&redis.url, &redis.prefix, opts()).await;
    let b = node(&redis.url, &redis.prefix, opts()).await;
    a.engine
        .subscribe(Channel::Topic("together"))
        .await
        .unwrap();
    let message = |i: usize| {
        // JSON strings of 3 to 9 bytes; every third keyed, every fifth of those deleting.
        let data = json(json!("x".repeat(1 + i % 7)));
        match i % 15 {
            0 => Message::keyed(data.data, format!("k:{i}")).deleting(),
            3 | 6 | 9 | 12 => Message::keyed(data.data, format!("k:{i}")),
            _ => data,
        }
    };
    let mut tasks = Vec::new();
    for i in 0..N {
        let engine = b.engine.clone();
        let m = message(i);
        tasks.push(tokio::spawn(async move {
            (i, engine.publish("together", m).await)
        }));
    }
    // Offset -> which message got it.
    let mut at = vec![usize::MAX; N + 1];
    let mut epoch = None;
    for t in tasks {
        let (i, p) = t.await.unwrap();
        let p = p.unwrap();
        assert_eq!(*epoch.get_or_insert_with(|| p.epoch.clone()), p.epoch);
        assert_eq!(
            at[p.offset as usize],
            usize::MAX,
            "offset {} twice",
            p.offset
        );
        at[p.offset as usize] = i;
    }
    assert!(at[1..].iter().all(|&i| i < N), "offsets 1..={N}, each once");

    let describe = |i: usize| {
        let m = message(i);
        (m.data, m.key.map(|k| k.to_string()), m.delete)
    };
    for offset in 1..=N as u64 {
        let p = a.heard.delivery().await;
        assert_eq!(p.offset(), offset, "in order");
        assert_eq!(p.epoch(), epoch.as_ref().unwrap());
        let (data, key, delete) = describe(at[offset as usize]);
        assert_eq!(p.data(), &data, "offset {offset}");
        assert_eq!(
            (p.key().map(|k| k.to_string()), p.is_delete()),
            (key, delete)
        );
    }
    assert_eq!(a.engine.stats().messages_in, N as u64);

    // The longest suffix within both bounds.
    let mut want = Vec::new();
    let mut bytes = 0;
    for offset in (1..=N).rev() {
        let size = message(at[offset]).data.as_bytes().len();
        if want.len() == KEEP || bytes + size > BYTES {
            break;
        }
        bytes += size;
        want.push(offset as u64);
    }
    want.reverse();
    let h = history(&a, "together", HistoryFrom::Last(1000)).await;
    assert_eq!(offsets(&h), want);
    for p in &h.publications {
        let (data, key, delete) = describe(at[p.offset() as usize]);
        assert_eq!(p.data(), &data);
        assert_eq!(
            (p.key().map(|k| k.to_string()), p.is_delete()),
            (key, delete)
        );
    }
}
