//! What a host embedding the hub needs beyond publish/subscribe: the current state on a first
//! subscribe (`last`), a topic's position and recent history, events that wait for the
//! client's answer (`emit_with_ack`), and the conformance of values between encodings. Over
//! livehub-core's transport seam, as a transport drives it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use bytes::Bytes;
use livehub_core::{
    async_trait, AckError, Action, Codec, ConnectRequest, Connection, Hooks, Hub, Identity,
    Outgoing, TransportInfo,
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
    batch: Vec<Outgoing>,
    ready: std::collections::VecDeque<Value>,
    raw: std::collections::VecDeque<Bytes>,
}

impl Client {
    async fn connect(hub: &Hub, codec: Codec) -> Client {
        let conn = hub
            .connect(ConnectRequest::new(TransportInfo::duplex("mem"), codec))
            .await
            .unwrap();
        let mut c = Client {
            conn,
            batch: Vec::new(),
            ready: Default::default(),
            raw: Default::default(),
        };
        assert_eq!(c.recv().await["type"], "welcome");
        c
    }

    async fn send(&self, frame: Value) {
        let bytes = match self.conn.session.codec() {
            Codec::Json => serde_json::to_vec(&frame).unwrap(),
            _ => rmp_serde::to_vec_named(&frame).unwrap(),
        };
        self.conn.session.handle(Bytes::from(bytes)).await;
    }

    /// The next frame as bytes (for values serde_json cannot hold).
    async fn recv_raw(&mut self) -> Bytes {
        loop {
            if let Some(b) = self.raw.pop_front() {
                return b;
            }
            self.batch.clear();
            tokio::time::timeout(
                Duration::from_secs(5),
                self.conn.outbox.next_batch(&mut self.batch),
            )
            .await
            .expect("a frame in time");
            for o in self.batch.drain(..) {
                if let Outgoing::Frame(f) = o {
                    self.raw.push_back(f.into_bytes());
                }
            }
        }
    }

    async fn recv(&mut self) -> Value {
        loop {
            if let Some(v) = self.ready.pop_front() {
                return v;
            }
            self.batch.clear();
            tokio::time::timeout(
                Duration::from_secs(5),
                self.conn.outbox.next_batch(&mut self.batch),
            )
            .await
            .expect("a frame in time");
            let codec = self.conn.session.codec();
            for o in self.batch.drain(..) {
                if let Outgoing::Frame(f) = o {
                    let v: Value = match codec {
                        Codec::Json => serde_json::from_slice(f.bytes()).unwrap(),
                        _ => rmp_serde::from_slice(f.bytes()).unwrap(),
                    };
                    self.ready.push_back(v);
                }
            }
        }
    }
}

fn hub() -> Hub {
    Hub::builder().hooks(Open).history_len(10).build()
}

#[tokio::test(start_paused = true)]
async fn a_first_subscribe_can_ask_for_the_last_messages_then_live_ones() {
    let hub = hub();
    for i in 1..=5 {
        hub.publish("scores", &json!({"n": i})).await.unwrap();
    }
    let mut c = Client::connect(&hub, Codec::Json).await;
    c.send(json!({"type": "subscribe", "topic": "scores", "last": 2, "id": 1}))
        .await;
    let reply = c.recv().await;
    assert_eq!(reply["type"], "reply");
    assert_eq!(
        reply["data"]["offset"], 5,
        "the topic's position when it began"
    );
    assert_eq!(c.recv().await["offset"], 4);
    assert_eq!(c.recv().await["offset"], 5);
    hub.publish("scores", &json!({"n": 6})).await.unwrap();
    assert_eq!(c.recv().await["offset"], 6);

    // More than the history holds: what it holds, no gap.
    let mut d = Client::connect(&hub, Codec::Json).await;
    d.send(json!({"type": "subscribe", "topic": "scores", "last": 1000}))
        .await;
    for want in 1..=6 {
        let m = d.recv().await;
        assert_eq!(
            (m["type"].as_str(), m["offset"].as_u64()),
            (Some("message"), Some(want))
        );
    }

    // A topic with no messages yet: nothing before live ones.
    let mut e = Client::connect(&hub, Codec::Json).await;
    e.send(json!({"type": "subscribe", "topic": "fresh", "last": 3, "id": 2}))
        .await;
    assert_eq!(e.recv().await["data"]["offset"], 0);
    hub.publish("fresh", &1).await.unwrap();
    assert_eq!(e.recv().await["offset"], 1);

    // `last` with `since` is a client's mistake.
    e.send(json!({"type": "subscribe", "topic": "x", "last": 1, "since": {"epoch": "e", "offset": 1}, "id": 3}))
        .await;
    let err = e.recv().await;
    assert_eq!(
        (err["code"].as_str(), err["id"].as_u64()),
        (Some("bad_field"), Some(3))
    );
}

#[tokio::test(start_paused = true)]
async fn the_host_reads_a_topics_position_and_recent_history() {
    let hub = hub();
    let p0 = hub.position("t").await.unwrap();
    assert_eq!(p0.offset, 0);
    for i in 1..=3 {
        hub.publish("t", &i).await.unwrap();
    }
    let p = hub.position("t").await.unwrap();
    assert_eq!((p.epoch.clone(), p.offset), (p0.epoch, 3));
    let recent = hub.recent("t", 2).await.unwrap();
    let got: Vec<(u64, i64)> = recent
        .iter()
        .map(|p| (p.offset(), p.data().decode::<i64>().unwrap()))
        .collect();
    assert_eq!(got, [(2, 2), (3, 3)]);
    assert!(hub.position("bad topic!").await.is_err());
}

#[tokio::test(start_paused = true)]
async fn a_since_ahead_of_the_stream_gets_a_gap_that_says_so() {
    let hub = hub();
    let p = hub.publish("t", &1).await.unwrap();
    let mut c = Client::connect(&hub, Codec::Json).await;
    c.send(json!({"type": "subscribe", "topic": "t", "since": {"epoch": &*p.epoch, "offset": 9}}))
        .await;
    let gap = c.recv().await;
    assert_eq!(gap["type"], "gap");
    assert_eq!(gap["reason"], "ahead", "{gap}");
    assert_eq!(
        (gap["from"].as_u64(), gap["to"].as_u64()),
        (Some(2), Some(9))
    );
    assert_eq!(gap["epoch"], json!(&*p.epoch));
    hub.publish("t", &2).await.unwrap();
    assert_eq!(c.recv().await["offset"], 2);
}

#[tokio::test(start_paused = true)]
async fn an_event_can_wait_for_the_clients_answer() {
    let hub = hub();
    let mut c = Client::connect(&hub, Codec::Json).await;
    let id = c.conn.session.id();
    let asking = {
        let hub = hub.clone();
        tokio::spawn(async move {
            hub.emit_with_ack(id, "confirm", &json!({"order": 7}), Duration::from_secs(5))
                .await
        })
    };
    let ev = c.recv().await;
    assert_eq!(ev["type"], "event");
    assert_eq!(ev["event"], "confirm");
    let n = ev["ack"].as_u64().expect("an ack number");
    c.send(json!({"type": "ack", "ack": n, "data": {"ok": true}, "id": 1}))
        .await;
    let answer = asking.await.unwrap().unwrap();
    assert_eq!(answer.decode::<Value>().unwrap(), json!({"ok": true}));
    assert_eq!(c.recv().await["type"], "reply");

    // Answered twice, or a number never given: `unknown_ack`, the session goes on.
    c.send(json!({"type": "ack", "ack": n, "id": 2})).await;
    let err = c.recv().await;
    assert_eq!(
        (err["code"].as_str(), err["id"].as_u64()),
        (Some("unknown_ack"), Some(2))
    );
}

#[tokio::test(start_paused = true)]
async fn an_unanswered_event_times_out_and_a_session_that_ends_says_so() {
    let hub = hub();
    let mut c = Client::connect(&hub, Codec::Json).await;
    let id = c.conn.session.id();
    let r = hub
        .emit_with_ack(id, "confirm", &1, Duration::from_millis(200))
        .await;
    assert_eq!(r.unwrap_err(), AckError::Timeout);
    // The late answer finds nothing waiting.
    let n = c.recv().await["ack"].as_u64().unwrap();
    c.send(json!({"type": "ack", "ack": n, "id": 1})).await;
    assert_eq!(c.recv().await["code"], "unknown_ack");

    // Another session cannot answer for this one.
    let mut other = Client::connect(&hub, Codec::Json).await;
    let asking = {
        let hub = hub.clone();
        tokio::spawn(async move {
            hub.emit_with_ack(id, "confirm", &2, Duration::from_secs(30))
                .await
        })
    };
    let n = c.recv().await["ack"].as_u64().unwrap();
    other.send(json!({"type": "ack", "ack": n, "id": 9})).await;
    assert_eq!(other.recv().await["code"], "unknown_ack");
    // The session ends before it answers: the host hears it at once, not at the timeout.
    drop(c);
    assert_eq!(asking.await.unwrap().unwrap_err(), AckError::Disconnected);
    let gone = hub
        .emit_with_ack(id, "confirm", &3, Duration::from_secs(1))
        .await;
    assert_eq!(gone.unwrap_err(), AckError::NoSession);
}

#[tokio::test(start_paused = true)]
async fn a_session_owes_at_most_64_answers() {
    let hub = hub();
    let c = Client::connect(&hub, Codec::Json).await;
    let id = c.conn.session.id();
    let mut waiting = Vec::new();
    for _ in 0..64 {
        let hub = hub.clone();
        waiting.push(tokio::spawn(async move {
            hub.emit_with_ack(id, "e", &0, Duration::from_secs(60))
                .await
        }));
    }
    // Let every asker run up to its wait.
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    let too_many = hub
        .emit_with_ack(id, "e", &0, Duration::from_millis(1))
        .await
        .err()
        .filter(|e| *e == AckError::TooMany);
    assert!(too_many.is_some(), "the 65th is refused");
    drop(c);
    for w in waiting {
        assert_eq!(w.await.unwrap().unwrap_err(), AckError::Disconnected);
    }
}

#[tokio::test(start_paused = true)]
async fn conformance_values_without_a_json_form_are_undeliverable_to_json_clients() {
    let hub = hub();
    let mut json_reader = Client::connect(&hub, Codec::Json).await;
    let mut mp_reader = Client::connect(&hub, Codec::MsgPack).await;
    json_reader
        .send(json!({"type": "subscribe", "topic": "t"}))
        .await;
    mp_reader
        .send(json!({"type": "subscribe", "topic": "t"}))
        .await;
    // A MessagePack publisher: {1: "a"} (a key that is not a string), then NaN.
    let publisher = Client::connect(&hub, Codec::MsgPack).await;
    let frame = |data: &[u8]| {
        let mut out = Vec::new();
        rmp::encode::write_map_len(&mut out, 3).unwrap();
        rmp::encode::write_str(&mut out, "type").unwrap();
        rmp::encode::write_str(&mut out, "publish").unwrap();
        rmp::encode::write_str(&mut out, "topic").unwrap();
        rmp::encode::write_str(&mut out, "t").unwrap();
        rmp::encode::write_str(&mut out, "data").unwrap();
        out.extend_from_slice(data);
        Bytes::from(out)
    };
    publisher
        .conn
        .session
        .handle(frame(&[0x81, 0x01, 0xa1, b'a']))
        .await;
    let mut nan = vec![0xcb];
    nan.extend(f64::NAN.to_be_bytes());
    publisher.conn.session.handle(frame(&nan)).await;
    for (offset, why) in [(1, "not a string"), (2, "NaN")] {
        let e = json_reader.recv().await;
        assert_eq!(e["code"], "undeliverable", "{e}");
        let m = e["message"].as_str().unwrap();
        assert!(m.contains(&format!("t@{offset}")) && m.contains(why), "{m}");
        // The MessagePack reader gets the value as it was published.
        let got =
            livehub_protocol::ServerFrame::decode(Codec::MsgPack, &mp_reader.recv_raw().await)
                .unwrap();
        let livehub_protocol::ServerFrame::Message {
            offset: o, data, ..
        } = got
        else {
            panic!("a message")
        };
        assert_eq!(o, offset);
        let published: &[u8] = if offset == 1 {
            &[0x81, 0x01, 0xa1, b'a']
        } else {
            &nan
        };
        assert_eq!(data.as_bytes().as_ref(), published);
    }
    // A MessagePack ext value is refused at the door, not altered on the way.
    let mut ext_frame = frame(&[0xd4, 0x01, 0x2a]).to_vec();
    ext_frame[0] = 0x84;
    rmp::encode::write_str(&mut ext_frame, "id").unwrap();
    rmp::encode::write_uint(&mut ext_frame, 5).unwrap();
    let mut publisher = publisher;
    publisher.conn.session.handle(Bytes::from(ext_frame)).await;
    let e = publisher.recv().await;
    assert_eq!(
        (e["code"].as_str(), e["id"].as_u64()),
        (Some("bad_field"), Some(5))
    );
}
