//! livehub-core's behaviour, driven through an in-memory transport built only on the public seam
//! (`Hub::connect`, `Session`, `Outbox`): the proof that a new transport needs no change in
//! livehub-core. Time is paused, so heartbeat timeouts run instantly and deterministically.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use livehub_core::{
    async_trait, Action, Codec, ConnectRequest, Connection, DisconnectReason, EventContext,
    HandlerError, Hooks, Hub, Identity, Outgoing, Payload, Rejection, SessionInfo,
    SlowConsumerPolicy, TransportInfo,
};
use serde_json::{json, Value};

/// The in-memory transport: frames in as bytes, frames out decoded to JSON values.
struct Mem {
    conn: Connection,
    ready: std::collections::VecDeque<Outgoing>,
    batch: Vec<Outgoing>,
}

impl Mem {
    async fn connect(hub: &Hub, codec: Codec) -> Mem {
        Mem::connect_as(hub, codec, TransportInfo::duplex("memory")).await
    }

    async fn connect_as(hub: &Hub, codec: Codec, transport: TransportInfo) -> Mem {
        let conn = hub
            .connect(ConnectRequest::new(transport, codec))
            .await
            .expect("connect");
        let mut mem = Mem {
            conn,
            ready: Default::default(),
            batch: Vec::new(),
        };
        let welcome = mem.recv().await;
        assert_eq!(welcome["type"], "welcome");
        mem
    }

    async fn send(&self, frame: Value) {
        let bytes = match self.conn.session.codec() {
            Codec::Json => serde_json::to_vec(&frame).unwrap(),
            _ => rmp_serde::to_vec_named(&frame).unwrap(),
        };
        self.conn.session.handle(Bytes::from(bytes)).await;
    }

    async fn send_raw(&self, bytes: &[u8]) {
        self.conn
            .session
            .handle(Bytes::copy_from_slice(bytes))
            .await;
    }

    /// The next item the transport would write (pings included), waiting at most 5 s.
    async fn next_item(&mut self) -> Outgoing {
        loop {
            if let Some(item) = self.ready.pop_front() {
                return item;
            }
            let more = tokio::time::timeout(
                Duration::from_secs(5),
                self.conn.outbox.next_batch(&mut self.batch),
            )
            .await
            .expect("timed out waiting for a frame");
            assert!(more, "outbox finished");
            // Markers for transports that keep positions: nothing to write.
            self.ready.extend(
                self.batch
                    .drain(..)
                    .filter(|o| !matches!(o, Outgoing::Subscribed { .. })),
            );
        }
    }

    /// The next frame, decoded; pings are skipped.
    async fn recv(&mut self) -> Value {
        loop {
            match self.next_item().await {
                Outgoing::Frame(f) => return decode(self.conn.session.codec(), f.bytes()),
                Outgoing::Ping => continue,
                Outgoing::Close(r) => panic!("closed: {r}"),
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    /// Whether a frame is ready without waiting.
    async fn nothing_pending(&mut self) -> bool {
        self.ready.retain(|o| *o != Outgoing::Ping);
        if !self.ready.is_empty() {
            return false;
        }
        let r = tokio::time::timeout(
            Duration::from_millis(1),
            self.conn.outbox.next_batch(&mut self.batch),
        )
        .await;
        match r {
            Err(_) => true,
            Ok(_) => {
                self.ready.extend(
                    self.batch
                        .drain(..)
                        .filter(|o| !matches!(o, Outgoing::Subscribed { .. })),
                );
                self.ready.iter().all(|o| *o == Outgoing::Ping)
            }
        }
    }

    /// Reads until the session's close item and returns its reason.
    async fn closed(&mut self) -> DisconnectReason {
        loop {
            if let Outgoing::Close(r) = self.next_item().await {
                return r;
            }
        }
    }

    fn id(&self) -> livehub_core::SessionId {
        self.conn.session.id()
    }
}

fn decode(codec: Codec, bytes: &[u8]) -> Value {
    match codec {
        Codec::Json => serde_json::from_slice(bytes).unwrap(),
        _ => rmp_serde::from_slice(bytes).unwrap(),
    }
}

/// Hooks for tests: everyone may do everything except what `deny` names.
#[derive(Default)]
struct Open {
    deny: Vec<&'static str>,
    disconnects: Arc<AtomicUsize>,
}

#[async_trait]
impl Hooks for Open {
    async fn authenticate(&self, req: &ConnectRequest) -> Result<Identity, Rejection> {
        match req.query("user").as_deref() {
            Some("mallory") => Err(Rejection::forbidden("banned")),
            Some(u) => Ok(Identity::user(u).with_meta(json!({"name": u}))),
            None => Ok(Identity::anonymous()),
        }
    }

    async fn authorize(&self, _who: &Identity, action: Action<'_>) -> bool {
        let name = match action {
            Action::Subscribe(n) | Action::Publish(n) | Action::Join(n) => n,
            _ => return false,
        };
        !self.deny.contains(&name)
    }

    fn on_disconnect(&self, _s: &SessionInfo, _r: DisconnectReason) {
        self.disconnects.fetch_add(1, Ordering::SeqCst);
    }
}

fn open_hub() -> Hub {
    Hub::builder().hooks(Open::default()).build()
}

#[tokio::test(start_paused = true)]
async fn subscribe_reply_then_messages_in_order() {
    let hub = open_hub();
    let mut a = Mem::connect(&hub, Codec::Json).await;
    a.send(json!({"type": "subscribe", "topic": "scores/all", "id": 1}))
        .await;
    let reply = a.recv().await;
    assert_eq!(reply["type"], "reply");
    assert_eq!(reply["id"], 1);
    assert_eq!(reply["data"]["offset"], 0);
    let epoch = reply["data"]["epoch"].as_str().unwrap().to_owned();

    for i in 1..=5 {
        hub.publish("scores/all", &json!({"n": i})).await.unwrap();
    }
    for i in 1..=5 {
        let m = a.recv().await;
        assert_eq!(m["type"], "message");
        assert_eq!(m["topic"], "scores/all");
        assert_eq!(m["epoch"], epoch.as_str());
        assert_eq!(m["offset"], i);
        assert_eq!(m["data"]["n"], i);
    }
    assert!(a.nothing_pending().await);
}

#[tokio::test(start_paused = true)]
async fn client_publish_is_acked_with_its_position_and_reaches_subscribers() {
    let hub = open_hub();
    let mut a = Mem::connect(&hub, Codec::Json).await;
    let mut b = Mem::connect(&hub, Codec::Json).await;
    b.send(json!({"type": "subscribe", "topic": "chat", "id": 1}))
        .await;
    assert_eq!(b.recv().await["type"], "reply");
    a.send(json!({"type": "publish", "topic": "chat", "data": {"text": "hi"}, "id": 9}))
        .await;
    let ack = a.recv().await;
    assert_eq!(ack["type"], "reply");
    assert_eq!(ack["id"], 9);
    assert_eq!(ack["data"]["offset"], 1);
    let m = b.recv().await;
    assert_eq!(m["data"], json!({"text": "hi"}));
    assert!(a.nothing_pending().await, "the publisher is not subscribed");
}

#[tokio::test(start_paused = true)]
async fn a_publish_is_encoded_once_per_codec_whatever_the_subscriber_count() {
    let hub = open_hub();
    let mut subs = Vec::new();
    for i in 0..100 {
        let codec = if i % 2 == 0 {
            Codec::Json
        } else {
            Codec::MsgPack
        };
        let mut s = Mem::connect(&hub, codec).await;
        s.send(json!({"type": "subscribe", "topic": "t"})).await;
        assert!(s.nothing_pending().await);
        subs.push(s);
    }
    let before = hub.stats();
    hub.publish("t", &json!({"big": "x".repeat(1000)}))
        .await
        .unwrap();
    for s in &mut subs {
        let m = s.recv().await;
        assert_eq!(m["offset"], 1);
        assert_eq!(m["data"]["big"].as_str().unwrap().len(), 1000);
    }
    let after = hub.stats();
    assert_eq!(after.encodes_json - before.encodes_json, 1);
    assert_eq!(after.encodes_msgpack - before.encodes_msgpack, 1);
    assert_eq!(after.deliveries - before.deliveries, 100);
}

#[tokio::test(start_paused = true)]
async fn json_and_msgpack_clients_share_a_topic() {
    let hub = open_hub();
    let mut j = Mem::connect(&hub, Codec::Json).await;
    let mut m = Mem::connect(&hub, Codec::MsgPack).await;
    j.send(json!({"type": "subscribe", "topic": "t"})).await;
    m.send(json!({"type": "subscribe", "topic": "t"})).await;
    m.send(
        json!({"type": "publish", "topic": "t", "data": {"from": "msgpack", "v": [1, 2.5, null]}}),
    )
    .await;
    j.send(json!({"type": "publish", "topic": "t", "data": {"from": "json"}}))
        .await;
    for s in [&mut j, &mut m] {
        let first = s.recv().await;
        assert_eq!(
            first["data"],
            json!({"from": "msgpack", "v": [1, 2.5, null]})
        );
        let second = s.recv().await;
        assert_eq!(second["data"], json!({"from": "json"}));
        assert_eq!(second["offset"], 2);
    }
}

#[tokio::test(start_paused = true)]
async fn rooms_except_sender_multi_room_once_and_direct() {
    let hub = open_hub();
    let mut a = Mem::connect(&hub, Codec::Json).await;
    let mut b = Mem::connect(&hub, Codec::MsgPack).await;
    let mut c = Mem::connect(&hub, Codec::Json).await;
    hub.join(a.id(), "chat:1").await.unwrap();
    hub.join(b.id(), "chat:1").await.unwrap();
    hub.join(b.id(), "chat:2").await.unwrap();
    hub.join(c.id(), "chat:2").await.unwrap();

    // To a room except the sender.
    let n = hub
        .to("chat:1")
        .except(a.id())
        .emit("new-message", &json!("hello"))
        .unwrap();
    assert_eq!(n, 1);
    let got = b.recv().await;
    assert_eq!(
        got,
        json!({"type": "event", "event": "new-message", "data": "hello"})
    );
    assert!(a.nothing_pending().await);
    assert!(c.nothing_pending().await);

    // Two rooms: b is in both and gets it once.
    let n = hub.to("chat:1").to("chat:2").emit("all", &1).unwrap();
    assert_eq!(n, 3);
    for s in [&mut a, &mut b, &mut c] {
        assert_eq!(s.recv().await["event"], "all");
        assert!(s.nothing_pending().await);
    }

    // Direct to one session.
    assert!(hub.emit_to(c.id(), "private", &json!({"x": 1})).unwrap());
    assert_eq!(c.recv().await["data"], json!({"x": 1}));
    assert!(a.nothing_pending().await && b.nothing_pending().await);

    // Leaving a room stops delivery; an empty room disappears.
    hub.leave(c.id(), "chat:2").unwrap();
    assert_eq!(hub.to("chat:2").emit("x", &0).unwrap(), 1);
    assert_eq!(hub.rooms_of(c.id()), Vec::<String>::new());
}

#[tokio::test(start_paused = true)]
async fn presence_join_and_leave_exactly_once_on_close() {
    let disconnects = Arc::new(AtomicUsize::new(0));
    let hub = Hub::builder()
        .hooks(Open {
            deny: vec![],
            disconnects: disconnects.clone(),
        })
        .build();
    let mut watcher = Mem::connect(&hub, Codec::Json).await;
    watcher
        .send(json!({"type": "subscribe", "topic": "lobby", "presence": true, "id": 1}))
        .await;
    assert_eq!(watcher.recv().await["type"], "reply");

    let req = ConnectRequest {
        uri: "/?user=ana".parse().unwrap(),
        ..ConnectRequest::new(TransportInfo::duplex("memory"), Codec::Json)
    };
    let conn = hub.connect(req).await.unwrap();
    let ana_id = conn.session.id();
    conn.session
        .handle(Bytes::from_static(
            br#"{"type":"subscribe","topic":"lobby"}"#,
        ))
        .await;
    let join = watcher.recv().await;
    assert_eq!(join["type"], "join");
    assert_eq!(join["topic"], "lobby");
    assert_eq!(join["member"]["user"], "ana");
    assert_eq!(join["member"]["meta"], json!({"name": "ana"}));
    assert_eq!(join["member"]["session"], ana_id.to_string());
    assert_eq!(hub.topic_members("lobby").await.unwrap().len(), 2);

    // Presence query over the protocol.
    watcher
        .send(json!({"type": "presence", "topic": "lobby", "id": 2}))
        .await;
    let p = watcher.recv().await;
    assert_eq!(p["data"]["members"].as_array().unwrap().len(), 2);

    // Close explicitly, then drop: one leave, one disconnect.
    conn.session.close(DisconnectReason::Kicked);
    drop(conn);
    let leave = watcher.recv().await;
    assert_eq!(leave["type"], "leave");
    assert_eq!(leave["member"]["user"], "ana");
    assert!(watcher.nothing_pending().await, "a second leave was sent");
    assert_eq!(disconnects.load(Ordering::SeqCst), 1);
    assert_eq!(hub.topic_members("lobby").await.unwrap().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn heartbeat_timeout_pings_then_drops_a_silent_session_and_leaves_once() {
    let hub = Hub::builder()
        .hooks(Open::default())
        .heartbeat(Duration::from_secs(1), Duration::from_secs(3))
        .build();
    // The watcher's transport does not need client traffic (like SSE), so it stays.
    let one_way = TransportInfo {
        name: "oneway",
        pings: true,
        client_liveness: false,
    };
    let mut watcher = Mem::connect_as(&hub, Codec::Json, one_way).await;
    watcher
        .send(json!({"type": "subscribe", "topic": "room", "presence": true}))
        .await;
    let mut silent = Mem::connect(&hub, Codec::Json).await;
    silent
        .send(json!({"type": "subscribe", "topic": "room"}))
        .await;
    assert_eq!(watcher.recv().await["type"], "join");

    // The silent session is pinged at the interval...
    assert_eq!(silent.next_item().await, Outgoing::Ping);
    // ...and closed after the timeout, with the heartbeat reason.
    let start = tokio::time::Instant::now();
    assert_eq!(silent.closed().await, DisconnectReason::HeartbeatTimeout);
    let waited = start.elapsed();
    assert!(waited <= Duration::from_secs(4), "closed after {waited:?}");
    let leave = watcher.recv().await;
    assert_eq!(leave["type"], "leave");
    let pending = watcher.nothing_pending().await;
    assert!(pending, "more frames: {:?}", watcher.ready);
    assert_eq!(hub.session_count(), 1);
    assert_eq!(hub.stats().disconnects.get("heartbeat_timeout"), Some(&1));
}

#[tokio::test(start_paused = true)]
async fn a_session_that_answers_is_not_timed_out() {
    let hub = Hub::builder()
        .heartbeat(Duration::from_secs(1), Duration::from_secs(3))
        .build();
    let mut s = Mem::connect(&hub, Codec::Json).await;
    for _ in 0..10 {
        assert_eq!(s.next_item().await, Outgoing::Ping);
        s.conn.session.touch();
    }
    assert!(!s.conn.session.is_closed());
}

#[tokio::test(start_paused = true)]
async fn resume_with_since_gets_exactly_the_missed_messages() {
    let hub = Hub::builder()
        .hooks(Open::default())
        .history_len(10)
        .build();
    let mut a = Mem::connect(&hub, Codec::Json).await;
    a.send(json!({"type": "subscribe", "topic": "t", "id": 1}))
        .await;
    let epoch = a.recv().await["data"]["epoch"].as_str().unwrap().to_owned();
    for i in 1..=3 {
        hub.publish("t", &i).await.unwrap();
    }
    for _ in 1..=3 {
        a.recv().await;
    }
    drop(a);
    for i in 4..=6 {
        hub.publish("t", &i).await.unwrap();
    }
    let mut back = Mem::connect(&hub, Codec::Json).await;
    back.send(
        json!({"type": "subscribe", "topic": "t", "id": 1, "since": {"epoch": epoch, "offset": 3}}),
    )
    .await;
    assert_eq!(back.recv().await["type"], "reply");
    hub.publish("t", &7).await.unwrap();
    for i in 4..=7 {
        let m = back.recv().await;
        assert_eq!(m["type"], "message");
        assert_eq!(m["offset"], i);
        assert_eq!(m["data"], i);
    }
    assert!(back.nothing_pending().await);
}

#[tokio::test(start_paused = true)]
async fn resume_past_history_gets_a_gap_then_what_is_held() {
    let hub = Hub::builder().hooks(Open::default()).history_len(3).build();
    let mut a = Mem::connect(&hub, Codec::Json).await;
    a.send(json!({"type": "subscribe", "topic": "t", "id": 1}))
        .await;
    let epoch = a.recv().await["data"]["epoch"].as_str().unwrap().to_owned();
    drop(a);
    for i in 1..=10 {
        hub.publish("t", &i).await.unwrap();
    }
    let mut back = Mem::connect(&hub, Codec::Json).await;
    back.send(json!({"type": "subscribe", "topic": "t", "since": {"epoch": epoch, "offset": 2}}))
        .await;
    let gap = back.recv().await;
    assert_eq!(
        gap,
        json!({"type": "gap", "topic": "t", "epoch": epoch, "from": 3, "to": 7, "reason": "history"})
    );
    for i in 8..=10 {
        assert_eq!(back.recv().await["offset"], i);
    }

    // A position from another epoch recovers nothing and says so.
    let mut other = Mem::connect(&hub, Codec::Json).await;
    other
        .send(json!({"type": "subscribe", "topic": "t", "since": {"epoch": "0000", "offset": 2}}))
        .await;
    let gap = other.recv().await;
    assert_eq!(gap["type"], "gap");
    assert_eq!(gap["reason"], "epoch");
    assert!(other.nothing_pending().await);
}

#[tokio::test(start_paused = true)]
async fn slow_consumer_is_disconnected_and_others_get_everything() {
    let hub = Hub::builder()
        .hooks(Open::default())
        .queue_capacity(8)
        .build();
    let mut slow = Mem::connect(&hub, Codec::Json).await;
    let mut fast = Mem::connect(&hub, Codec::Json).await;
    slow.send(json!({"type": "subscribe", "topic": "t"})).await;
    fast.send(json!({"type": "subscribe", "topic": "t"})).await;
    for i in 1..=50u64 {
        hub.publish("t", &i).await.unwrap();
        if i % 4 == 0 {
            for j in i - 3..=i {
                assert_eq!(fast.recv().await["offset"], j);
            }
        }
    }
    assert_eq!(slow.closed().await, DisconnectReason::SlowConsumer);
    assert_eq!(hub.topic_members("t").await.unwrap().len(), 1);
    assert_eq!(hub.stats().disconnects.get("slow_consumer"), Some(&1));
}

#[tokio::test(start_paused = true)]
async fn drop_policy_tells_a_lagging_session_exactly_what_it_missed() {
    let hub = Hub::builder()
        .hooks(Open::default())
        .queue_capacity(4)
        .slow_consumer(SlowConsumerPolicy::Drop)
        .build();
    let mut s = Mem::connect(&hub, Codec::Json).await;
    s.send(json!({"type": "subscribe", "topic": "t"})).await;
    hub.join(s.id(), "r").await.unwrap();
    for i in 1..=10 {
        hub.publish("t", &i).await.unwrap();
    }
    hub.to("r").emit("e", &0).unwrap();
    // The first four fit; 5..=10 and the event were dropped.
    for i in 1..=4 {
        assert_eq!(s.recv().await["offset"], i);
    }
    let mut tail = [s.recv().await, s.recv().await];
    tail.sort_by_key(|v| v["type"].as_str().unwrap_or("").to_owned());
    assert_eq!(tail[0], json!({"type": "dropped", "count": 1}));
    assert_eq!(tail[1]["type"], "gap");
    assert_eq!(tail[1]["reason"], "lagged");
    assert_eq!(
        (tail[1]["from"].as_u64(), tail[1]["to"].as_u64()),
        (Some(5), Some(10))
    );
    // Caught up: delivery resumes.
    hub.publish("t", &11).await.unwrap();
    assert_eq!(s.recv().await["offset"], 11);
    assert!(!s.conn.session.is_closed());
}

#[tokio::test(start_paused = true)]
async fn custom_events_reply_and_fail_with_codes() {
    let hub = Hub::builder()
        .on_event("add", |_ctx: EventContext, data: Payload| async move {
            let [a, b]: [i64; 2] = data.decode()?;
            Ok(Some(Payload::from_value(&(a + b))?))
        })
        .on_event("join-room", |ctx: EventContext, data: Payload| async move {
            let room: String = data.decode()?;
            ctx.join(&room)
                .await
                .map_err(|e| HandlerError::new(e.to_string()))?;
            Ok(None)
        })
        .build();
    let mut a = Mem::connect(&hub, Codec::Json).await;
    a.send(json!({"type": "event", "event": "add", "data": [2, 3], "id": 5}))
        .await;
    assert_eq!(a.recv().await, json!({"type": "reply", "id": 5, "data": 5}));
    a.send(json!({"type": "event", "event": "add", "data": "nope", "id": 6}))
        .await;
    let e = a.recv().await;
    assert_eq!(
        (e["code"].as_str(), e["id"].as_u64()),
        (Some("handler_error"), Some(6))
    );
    a.send(json!({"type": "event", "event": "nope", "id": 7}))
        .await;
    assert_eq!(a.recv().await["code"], "unknown_event");
    a.send(json!({"type": "event", "event": "join-room", "data": "chat:9", "id": 8}))
        .await;
    assert_eq!(
        a.recv().await,
        json!({"type": "reply", "id": 8, "data": null})
    );
    assert_eq!(hub.rooms_of(a.id()), vec!["chat:9".to_owned()]);
}

#[tokio::test(start_paused = true)]
async fn authorization_is_checked_on_subscribe_publish_and_join() {
    // Default hooks: subscribe yes, publish and join no.
    let hub = Hub::builder().build();
    let mut a = Mem::connect(&hub, Codec::Json).await;
    a.send(json!({"type": "subscribe", "topic": "t", "id": 1}))
        .await;
    assert_eq!(a.recv().await["type"], "reply");
    a.send(json!({"type": "publish", "topic": "t", "data": 1, "id": 2}))
        .await;
    let e = a.recv().await;
    assert_eq!(
        (e["code"].as_str(), e["id"].as_u64()),
        (Some("forbidden"), Some(2))
    );
    a.send(json!({"type": "join", "room": "r", "id": 3})).await;
    assert_eq!(a.recv().await["code"], "forbidden");
    assert!(a.nothing_pending().await, "nothing was published");
    assert_eq!(hub.stats().published, 0);

    // A hook that refuses one topic.
    let hub = Hub::builder()
        .hooks(Open {
            deny: vec!["secret"],
            ..Open::default()
        })
        .build();
    let mut b = Mem::connect(&hub, Codec::Json).await;
    b.send(json!({"type": "subscribe", "topic": "secret", "id": 1}))
        .await;
    assert_eq!(b.recv().await["code"], "forbidden");
    hub.publish("secret", &1).await.unwrap();
    assert!(b.nothing_pending().await);

    // Authentication refusal happens before any session exists.
    let req = ConnectRequest {
        uri: "/?user=mallory".parse().unwrap(),
        ..ConnectRequest::new(TransportInfo::duplex("memory"), Codec::Json)
    };
    let rej = hub.connect(req).await.unwrap_err();
    assert_eq!((rej.status(), rej.code()), (403, "forbidden"));
    assert_eq!(hub.session_count(), 1);
}

#[tokio::test(start_paused = true)]
async fn origin_allow_list() {
    let hub = Hub::builder()
        .allowed_origins(["https://good.example"])
        .build();
    let mut req = ConnectRequest::new(TransportInfo::duplex("memory"), Codec::Json);
    req.headers
        .insert("origin", "https://evil.example".parse().unwrap());
    let rej = hub.connect(req.clone()).await.unwrap_err();
    assert_eq!((rej.status(), rej.code()), (403, "origin_not_allowed"));
    req.headers
        .insert("origin", "https://good.example".parse().unwrap());
    assert!(hub.connect(req).await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn bad_input_gets_stable_codes_and_the_session_goes_on() {
    let hub = open_hub();
    let mut a = Mem::connect(&hub, Codec::Json).await;
    let cases: Vec<(&[u8], &str)> = vec![
        (b"not json", "bad_frame"),
        (b"[1,2,3]", "bad_frame"),
        (b"\"str\"", "bad_frame"),
        (br#"{"topic":"t"}"#, "bad_field"),
        (br#"{"type":5}"#, "bad_field"),
        (br#"{"type":"subscribe","topic":["x"]}"#, "bad_field"),
        (br#"{"type":"subscribe"}"#, "bad_field"),
        (br#"{"type":"fly"}"#, "unknown_type"),
        (br#"{"type":"subscribe","topic":""}"#, "bad_topic"),
        (br#"{"type":"subscribe","topic":"a b"}"#, "bad_topic"),
        (
            br#"{"type":"unsubscribe","topic":"never"}"#,
            "not_subscribed",
        ),
        (br#"{"type":"leave","room":"never"}"#, "not_member"),
        (br#"{"type":"presence","topic":"never"}"#, "not_subscribed"),
        (br#"{"type":"event","event":""}"#, "bad_event"),
    ];
    for (input, code) in &cases {
        a.send_raw(input).await;
        let e = a.recv().await;
        assert_eq!(
            e["type"],
            "error",
            "input {}",
            String::from_utf8_lossy(input)
        );
        assert_eq!(e["code"], *code, "input {}", String::from_utf8_lossy(input));
    }
    let long = "x".repeat(129);
    a.send(json!({"type": "subscribe", "topic": long, "id": 4}))
        .await;
    let e = a.recv().await;
    assert_eq!(
        (e["code"].as_str(), e["id"].as_u64()),
        (Some("bad_topic"), Some(4))
    );
    // A wrongly typed field still gets its id back.
    a.send_raw(br#"{"type":"subscribe","topic":7,"id":11}"#)
        .await;
    assert_eq!(a.recv().await["id"], 11);
    // And the session still works.
    a.send(json!({"type": "subscribe", "topic": "ok", "id": 12}))
        .await;
    assert_eq!(a.recv().await["type"], "reply");
    a.send(json!({"type": "subscribe", "topic": "ok", "id": 13}))
        .await;
    assert_eq!(a.recv().await["code"], "already_subscribed");
    a.send(json!({"type": "ping", "id": 14})).await;
    assert_eq!(a.recv().await, json!({"type": "pong", "id": 14}));

    // MessagePack garbage.
    let mut m = Mem::connect(&hub, Codec::MsgPack).await;
    for input in [&[0xc1u8][..], &[0x93, 1, 2, 3], &[0x81, 0xa4, b't'], b"{}"] {
        m.send_raw(input).await;
        assert_eq!(m.recv().await["code"], "bad_frame");
    }
    m.send(json!({"type": "subscribe", "topic": 3})).await;
    assert_eq!(m.recv().await["code"], "bad_field");
}

#[tokio::test(start_paused = true)]
async fn limits_on_subscriptions_and_topics() {
    let hub = Hub::builder()
        .hooks(Open::default())
        .max_subscriptions(2)
        .max_topics(3)
        .build();
    let mut a = Mem::connect(&hub, Codec::Json).await;
    for t in ["a", "b"] {
        a.send(json!({"type": "subscribe", "topic": t, "id": 1}))
            .await;
        assert_eq!(a.recv().await["type"], "reply");
    }
    a.send(json!({"type": "subscribe", "topic": "c", "id": 2}))
        .await;
    assert_eq!(a.recv().await["code"], "too_many_subscriptions");
    hub.publish("c", &1).await.unwrap();
    a.send(json!({"type": "publish", "topic": "d", "data": 1, "id": 3}))
        .await;
    assert_eq!(a.recv().await["code"], "too_many_topics");
}

#[tokio::test(start_paused = true)]
async fn shutdown_flushes_queued_frames_then_closes_and_refuses_new_sessions() {
    let hub = open_hub();
    let mut a = Mem::connect(&hub, Codec::Json).await;
    a.send(json!({"type": "subscribe", "topic": "t"})).await;
    for i in 1..=3 {
        hub.publish("t", &i).await.unwrap();
    }
    let shutdown = tokio::spawn({
        let hub = hub.clone();
        async move { hub.shutdown(Duration::from_secs(10)).await }
    });
    // Everything queued before the shutdown still arrives, then the close.
    for i in 1..=3 {
        assert_eq!(a.recv().await["offset"], i);
    }
    assert_eq!(a.closed().await, DisconnectReason::Shutdown);
    let rej = hub
        .connect(ConnectRequest::new(
            TransportInfo::duplex("memory"),
            Codec::Json,
        ))
        .await
        .unwrap_err();
    assert_eq!((rej.status(), rej.code()), (503, "shutting_down"));
    // The transport finishes (drops its handle): the shutdown completes without forcing.
    drop(a);
    let report = shutdown.await.unwrap();
    assert_eq!((report.sessions, report.forced), (1, 0));
    assert_eq!(hub.stats().disconnects.get("shutdown"), Some(&1));
}

#[tokio::test(start_paused = true)]
async fn shutdown_aborts_transports_that_do_not_finish_in_time() {
    let hub = open_hub();
    let stuck = Mem::connect(&hub, Codec::Json).await;
    let report = {
        let waiter = hub.clone();
        let session_aborted = async { stuck.conn.session.aborted().await };
        let (report, ()) = tokio::join!(waiter.shutdown(Duration::from_secs(2)), async {
            session_aborted.await;
        });
        report
    };
    assert_eq!((report.sessions, report.forced), (1, 1));
}

#[tokio::test(start_paused = true)]
async fn rate_limit_refuses_then_disconnects_a_flood() {
    let hub = Hub::builder()
        .hooks(Open::default())
        .rate_limit(10.0, 5)
        .build();
    let mut a = Mem::connect(&hub, Codec::Json).await;
    // A burst of 5 passes, the 6th is refused.
    for id in 1..=5 {
        a.send(json!({"type": "ping", "id": id})).await;
        assert_eq!(a.recv().await, json!({"type": "pong", "id": id}));
    }
    a.send(json!({"type": "ping", "id": 6})).await;
    assert_eq!(a.recv().await["code"], "rate_limited");
    // Tokens come back with time.
    tokio::time::advance(Duration::from_millis(200)).await;
    a.send(json!({"type": "ping", "id": 7})).await;
    assert_eq!(a.recv().await, json!({"type": "pong", "id": 7}));
    // Keep flooding past another burst: disconnected.
    for _ in 0..10 {
        a.send(json!({"type": "ping"})).await;
    }
    assert_eq!(a.closed().await, DisconnectReason::RateLimited);
    // Other sessions are not affected.
    let mut b = Mem::connect(&hub, Codec::Json).await;
    b.send(json!({"type": "ping", "id": 1})).await;
    assert_eq!(b.recv().await["type"], "pong");
}

#[tokio::test(start_paused = true)]
async fn connection_limits_total_and_per_address() {
    let hub = Hub::builder()
        .max_connections(3)
        .max_connections_per_ip(2)
        .build();
    let from = |ip: &str| {
        let mut req = ConnectRequest::new(TransportInfo::duplex("memory"), Codec::Json);
        req.peer = Some(format!("{ip}:1000").parse().unwrap());
        req
    };
    let a1 = hub.connect(from("10.0.0.1")).await.unwrap();
    let _a2 = hub.connect(from("10.0.0.1")).await.unwrap();
    let rej = hub.connect(from("10.0.0.1")).await.unwrap_err();
    assert_eq!((rej.status(), rej.code()), (503, "too_many_connections"));
    let _b1 = hub.connect(from("10.0.0.2")).await.unwrap();
    let rej = hub.connect(from("10.0.0.3")).await.unwrap_err();
    assert_eq!(rej.code(), "too_many_connections");
    // A closed session gives its places back.
    drop(a1);
    assert!(hub.connect(from("10.0.0.1")).await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn shutdown_also_aborts_transports_of_sessions_that_ended_before_it() {
    let hub = open_hub();
    // A session kicked before the shutdown whose transport never finishes writing.
    let lingering = Mem::connect(&hub, Codec::Json).await;
    assert!(hub.disconnect(lingering.id()));
    assert_eq!(
        lingering.conn.session.close_reason(),
        Some(DisconnectReason::Kicked)
    );
    let (report, ()) = tokio::join!(hub.shutdown(Duration::from_secs(2)), async {
        lingering.conn.session.aborted().await;
    });
    assert_eq!((report.sessions, report.forced), (0, 1));
}

#[tokio::test(start_paused = true)]
async fn room_limit_per_session_and_bad_room_names() {
    let hub = Hub::builder()
        .hooks(Open::default())
        .max_rooms_per_session(2)
        .build();
    let mut a = Mem::connect(&hub, Codec::Json).await;
    hub.join(a.id(), "r1").await.unwrap();
    a.send(json!({"type": "join", "room": "r2", "id": 1})).await;
    assert_eq!(
        a.recv().await,
        json!({"type": "reply", "id": 1, "data": null})
    );
    a.send(json!({"type": "join", "room": "r3", "id": 2})).await;
    let e = a.recv().await;
    assert_eq!(
        (e["code"].as_str(), e["id"].as_u64()),
        (Some("too_many_rooms"), Some(2))
    );
    assert_eq!(
        hub.join(a.id(), "r3").await,
        Err(livehub_core::RoomError::TooManyRooms)
    );
    assert_eq!(
        hub.join(a.id(), "bad room").await,
        Err(livehub_core::RoomError::BadRoom)
    );
    a.send(json!({"type": "join", "room": "", "id": 3})).await;
    assert_eq!(a.recv().await["code"], "bad_room");
    // Joining again is idempotent, and leaving frees a place.
    hub.join(a.id(), "r1").await.unwrap();
    a.send(json!({"type": "leave", "room": "r1", "id": 4}))
        .await;
    assert_eq!(a.recv().await["type"], "reply");
    hub.join(a.id(), "r3").await.unwrap();
    let mut rooms = hub.rooms_of(a.id());
    rooms.sort();
    assert_eq!(rooms, vec!["r2".to_owned(), "r3".to_owned()]);
}

#[tokio::test(start_paused = true)]
async fn history_is_bounded_in_bytes_too() {
    let hub = Hub::builder()
        .hooks(Open::default())
        .history_len(100)
        .history_bytes(250)
        .build();
    let mut a = Mem::connect(&hub, Codec::Json).await;
    a.send(json!({"type": "subscribe", "topic": "t", "id": 1}))
        .await;
    let epoch = a.recv().await["data"]["epoch"].as_str().unwrap().to_owned();
    drop(a);
    // Payloads of 102 bytes (a 100-character JSON string): only the last two fit in 250.
    for _ in 1..=5 {
        hub.publish("t", &"x".repeat(100)).await.unwrap();
    }
    let mut back = Mem::connect(&hub, Codec::Json).await;
    back.send(json!({"type": "subscribe", "topic": "t", "since": {"epoch": epoch, "offset": 0}}))
        .await;
    let gap = back.recv().await;
    assert_eq!(
        (
            gap["reason"].as_str(),
            gap["from"].as_u64(),
            gap["to"].as_u64()
        ),
        (Some("history"), Some(1), Some(3))
    );
    assert_eq!(back.recv().await["offset"], 4);
    assert_eq!(back.recv().await["offset"], 5);
    assert!(back.nothing_pending().await);
}

#[test]
fn session_ids_parse_only_as_16_hex_digits() {
    assert!(livehub_core::SessionId::parse("0123456789abcdef").is_some());
    // Regression (found while fuzzing): from_str_radix alone accepted a sign.
    assert!(livehub_core::SessionId::parse("+123456789abcdef").is_none());
    assert!(livehub_core::SessionId::parse("0123456789abcdeg").is_none());
}

#[tokio::test(start_paused = true)]
async fn an_idle_topic_is_forgotten_after_its_ttl_and_comes_back_in_a_new_epoch() {
    let hub = Hub::builder()
        .hooks(Open::default())
        .history_len(10)
        .heartbeat(Duration::from_secs(10), Duration::from_secs(3600))
        .topic_ttl(Duration::from_secs(60))
        .build();
    // `kept` has a subscriber the whole time; `t` loses its only one.
    let mut keeper = Mem::connect(&hub, Codec::Json).await;
    keeper
        .send(json!({"type": "subscribe", "topic": "kept", "id": 1}))
        .await;
    let old_epoch = keeper.recv().await["data"]["epoch"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut a = Mem::connect(&hub, Codec::Json).await;
    a.send(json!({"type": "subscribe", "topic": "t", "id": 1}))
        .await;
    assert_eq!(a.recv().await["data"]["epoch"], old_epoch.as_str());
    for i in 1..=3 {
        hub.publish("t", &i).await.unwrap();
        hub.publish("kept", &i).await.unwrap();
    }
    for _ in 1..=3 {
        assert_eq!(a.recv().await["type"], "message");
        assert_eq!(keeper.recv().await["type"], "message");
    }
    a.send(json!({"type": "unsubscribe", "topic": "t", "id": 2}))
        .await;
    assert_eq!(a.recv().await["type"], "reply");
    // Within the TTL (sweeps at 10 s ... 50 s): `t` is held, and a client resuming from its
    // position recovers exactly what it missed.
    tokio::time::sleep(Duration::from_secs(55)).await;
    assert_eq!(hub.stats().topics, 2);
    hub.publish("t", &4).await.unwrap();
    let mut back = Mem::connect(&hub, Codec::Json).await;
    back.send(json!({"type": "subscribe", "topic": "t", "id": 1,
        "since": {"epoch": old_epoch, "offset": 3}}))
        .await;
    assert_eq!(back.recv().await["data"]["offset"], 4);
    let m = back.recv().await;
    assert_eq!(
        (m["offset"].clone(), m["data"].clone()),
        (json!(4), json!(4))
    );
    back.send(json!({"type": "unsubscribe", "topic": "t", "id": 2}))
        .await;
    assert_eq!(back.recv().await["type"], "reply");
    // The TTL runs from the later of the last message and the last subscriber leaving:
    // forgotten by the first sweep more than 60 s after that (at most one interval late).
    tokio::time::sleep(Duration::from_secs(59)).await;
    assert_eq!(hub.stats().topics, 2, "forgotten before its TTL");
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert_eq!(
        hub.stats().topics,
        1,
        "`t` should be forgotten, `kept` held"
    );
    // Used again: a new stream in a new epoch, offsets from 1; the old position gets a gap
    // with reason `epoch`, never the new stream's messages as if they followed offset 4.
    let mut c = Mem::connect(&hub, Codec::Json).await;
    c.send(json!({"type": "subscribe", "topic": "t", "id": 1,
        "since": {"epoch": old_epoch, "offset": 4}}))
        .await;
    let reply = c.recv().await;
    let new_epoch = reply["data"]["epoch"].as_str().unwrap().to_owned();
    assert_ne!(new_epoch, old_epoch);
    assert_eq!(reply["data"]["offset"], 0);
    let gap = c.recv().await;
    assert_eq!(
        (
            gap["type"].clone(),
            gap["reason"].clone(),
            gap["epoch"].clone()
        ),
        (json!("gap"), json!("epoch"), json!(new_epoch))
    );
    let p = hub.publish("t", &"again").await.unwrap();
    assert_eq!((&*p.epoch, p.offset), (new_epoch.as_str(), 1));
    let m = c.recv().await;
    assert_eq!(
        (m["epoch"].clone(), m["offset"].clone()),
        (json!(new_epoch), json!(1))
    );
    // The topic that kept its subscriber kept its stream.
    let p = hub.publish("kept", &4).await.unwrap();
    assert_eq!((&*p.epoch, p.offset), (old_epoch.as_str(), 4));
    assert_eq!(keeper.recv().await["offset"], 4);
}

#[tokio::test(start_paused = true)]
async fn topics_published_to_by_the_server_alone_expire_and_free_their_slots() {
    let hub = Hub::builder()
        .hooks(Open::default())
        .max_topics(2)
        .heartbeat(Duration::from_secs(10), Duration::from_secs(3600))
        .topic_ttl(Duration::from_secs(30))
        .build();
    // No session at all: the server's own publishes start the sweeper.
    let first = hub.publish("match-1", &1).await.unwrap();
    hub.publish("match-2", &1).await.unwrap();
    assert!(matches!(
        hub.publish("match-3", &1).await,
        Err(livehub_core::SendError::Engine(
            livehub_core::BrokerError::TooManyTopics
        ))
    ));
    tokio::time::sleep(Duration::from_secs(45)).await;
    assert_eq!(hub.stats().topics, 0);
    let p = hub.publish("match-3", &1).await.unwrap();
    assert_eq!(p.offset, 1);
    // A re-used name starts over in an epoch it never had.
    let again = hub.publish("match-1", &2).await.unwrap();
    assert_eq!(again.offset, 1);
    assert_ne!(again.epoch, first.epoch);
}

#[tokio::test(start_paused = true)]
async fn topic_ttl_max_keeps_topics_for_the_hubs_life() {
    let hub = Hub::builder()
        .hooks(Open::default())
        .heartbeat(Duration::from_secs(10), Duration::from_secs(3600))
        .topic_ttl(Duration::MAX)
        .build();
    hub.publish("t", &1).await.unwrap();
    tokio::time::sleep(Duration::from_secs(24 * 3600)).await;
    assert_eq!(hub.stats().topics, 1);
    assert_eq!(hub.publish("t", &2).await.unwrap().offset, 2);
}

#[tokio::test(start_paused = true)]
async fn a_silent_session_is_closed_at_the_documented_60_seconds_not_75() {
    // The defaults: pings every 25 s, closed when silent for 60 s. Checked once a heartbeat
    // interval, the session would live until the sweep after 60 s: 75 s.
    let hub = Hub::builder().build();
    let start = tokio::time::Instant::now();
    let mut silent = Mem::connect(&hub, Codec::Json).await;
    let mut batch = Vec::new();
    let reason = loop {
        batch.clear();
        // Pings every 25 s come first: wait past them (paused time moves on its own).
        let more = tokio::time::timeout(
            Duration::from_secs(120),
            silent.conn.outbox.next_batch(&mut batch),
        )
        .await
        .expect("closed within two minutes");
        assert!(more);
        if let Some(Outgoing::Close(r)) = batch.last() {
            break *r;
        }
    };
    assert_eq!(reason, DisconnectReason::HeartbeatTimeout);
    let lived = start.elapsed();
    assert!(
        lived > Duration::from_secs(60) && lived <= Duration::from_secs(61),
        "closed after {lived:?}"
    );
}
