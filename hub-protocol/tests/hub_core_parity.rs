//! hub-protocol against the code hub-core runs today, through hub-core's public seam (an
//! in-memory transport on `Hub::connect`): every server frame hub-core writes decodes and
//! encodes back to the same bytes, and the client-frame decoder refuses exactly what hub-core
//! refuses, with the same code, id and message. Once hub-core uses hub-protocol these checks
//! become trivially true; until then they are what makes the switch safe.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeSet, VecDeque};
use std::path::Path;

use bytes::Bytes;
use futures_util::FutureExt;
use hub_core::{
    async_trait, Action, ConnectRequest, Connection, EventContext, HandlerError, Hooks, Hub,
    Identity, Outgoing, Payload as CorePayload, SlowConsumerPolicy, TransportInfo,
};
use hub_protocol::{ClientFrame, Codec, ErrorCode, ServerFrame};
use serde_json::{json, Value};

/// Every call on the hub's host API, in one place: the API is about to change (publish becomes
/// async and returns a `Result`), and only this module will need to follow it.
mod host {
    use hub_core::{Hub, RoomError, SessionId};
    use serde_json::Value;

    pub(crate) async fn publish(hub: &Hub, topic: &str, data: &Value) {
        hub.publish(topic, data).await.expect("publish");
    }

    pub(crate) async fn join(hub: &Hub, session: SessionId, room: &str) {
        hub.join(session, room).await.expect("join");
    }

    pub(crate) fn emit_to_room(hub: &Hub, room: &str, event: &str, data: &Value) {
        hub.to(room).emit(event, data).expect("emit to a room");
    }

    pub(crate) fn emit_to(hub: &Hub, session: SessionId, event: &str, data: &Value) -> bool {
        hub.emit_to(session, event, data)
            .expect("emit to a session")
    }

    pub(crate) fn leave(hub: &Hub, session: SessionId, room: &str) -> Result<(), RoomError> {
        hub.leave(session, room)
    }
}

/// Lets everyone in with presence metadata, and allows everything.
struct AllowAll;

#[async_trait]
impl Hooks for AllowAll {
    async fn authenticate(&self, _req: &ConnectRequest) -> Result<Identity, hub_core::Rejection> {
        Ok(Identity::user("ana").with_meta(json!({"name": "Ana", "z": [1, {"b": 2, "a": 1}]})))
    }

    async fn authorize(&self, _who: &Identity, _action: Action<'_>) -> bool {
        true
    }
}

fn hub(policy: SlowConsumerPolicy, queue: usize) -> Hub {
    Hub::builder()
        .hooks(AllowAll)
        .history_len(2)
        .room_presence_events(true)
        .slow_consumer(policy)
        .queue_capacity(queue)
        .on_event("echo", |_ctx: EventContext, data: CorePayload| async move {
            Ok(Some(data))
        })
        .on_event(
            "fail",
            |_ctx: EventContext, _data: CorePayload| async move {
                Err(HandlerError::new("it failed \"on purpose\""))
            },
        )
        .build()
}

/// An in-memory transport: frames in, encoded frames out, read without waiting (the hub
/// queues its answers before `handle` returns).
struct Mem {
    conn: Connection,
    codec: Codec,
    ready: VecDeque<Bytes>,
}

impl Mem {
    async fn connect(hub: &Hub, codec: Codec) -> Mem {
        let core_codec = match codec {
            Codec::Json => hub_core::Codec::Json,
            Codec::MsgPack => hub_core::Codec::MsgPack,
        };
        let req = ConnectRequest::new(TransportInfo::duplex("memory"), core_codec);
        let conn = hub.connect(req).await.expect("connect");
        Mem {
            conn,
            codec,
            ready: VecDeque::new(),
        }
    }

    async fn send(&self, frame: Value) {
        let bytes = match self.codec {
            Codec::Json => serde_json::to_vec(&frame).unwrap(),
            Codec::MsgPack => rmp_serde::to_vec_named(&frame).unwrap(),
        };
        self.conn.session.handle(Bytes::from(bytes)).await;
    }

    /// Everything queued now, as frames.
    fn take(&mut self) -> Vec<Bytes> {
        let mut out = Vec::new();
        while let Some(true) = self.conn.outbox.next_batch(&mut out).now_or_never() {}
        for o in out {
            if let Outgoing::Frame(b) = o {
                self.ready.push_back(b.into_bytes());
            }
        }
        self.ready.drain(..).collect()
    }

    fn id(&self) -> hub_core::SessionId {
        self.conn.session.id()
    }
}

/// Decodes `bytes` as hub-protocol does, checks that the encoder gives the same bytes back,
/// and returns the frame's type.
fn same_bytes(codec: Codec, bytes: &Bytes) -> String {
    let frame = ServerFrame::decode(codec, bytes)
        .unwrap_or_else(|e| panic!("{codec:?}: {e} in {}", String::from_utf8_lossy(bytes)));
    assert!(!matches!(frame, ServerFrame::Unknown { .. }), "{frame:?}");
    let again = frame.encode(codec).unwrap();
    assert_eq!(
        again,
        bytes,
        "{codec:?}: re-encoded differently:\n  hub-core: {}\n  protocol: {}",
        String::from_utf8_lossy(bytes),
        String::from_utf8_lossy(&again)
    );
    frame.kind().to_owned()
}

#[tokio::test]
async fn every_server_frame_hub_core_writes_is_encoded_the_same() {
    for codec in Codec::ALL {
        let other = Codec::ALL[1 - codec.index()];
        let hub = hub(SlowConsumerPolicy::Disconnect, 1024);
        let mut a = Mem::connect(&hub, codec).await;
        let mut b = Mem::connect(&hub, other).await;
        let mut kinds = BTreeSet::new();
        let mut check = |m: &mut Mem| {
            for bytes in m.take() {
                kinds.insert(same_bytes(m.codec, &bytes));
            }
        };
        check(&mut a); // welcome
        check(&mut b);

        a.send(json!({"type": "subscribe", "topic": "t", "presence": true, "id": 1}))
            .await;
        b.send(json!({"type": "subscribe", "topic": "t", "id": 2}))
            .await; // a: join
        host::publish(
            &hub,
            "t",
            &json!({"text": "hé \"quoted\"\n", "n": [1, 2.5, null, true]}),
        )
        .await;
        // Published by the other codec's client: converted for `a`.
        b.send(json!({"type": "publish", "topic": "t", "data": {"from": "b", "big": u64::MAX}, "id": 3}))
            .await;
        b.send(json!({"type": "unsubscribe", "topic": "t", "id": 4}))
            .await; // a: leave
        check(&mut a);
        check(&mut b);

        a.send(json!({"type": "event", "event": "echo", "data": {"x": [1, {"y": "z"}]}, "id": 5}))
            .await;
        a.send(json!({"type": "event", "event": "fail", "id": 6}))
            .await;
        a.send(json!({"type": "event", "event": "nope", "id": 7}))
            .await;
        a.send(json!({"type": "presence", "topic": "t", "id": 8}))
            .await;
        a.send(json!({"type": "ping", "id": 9})).await;
        a.send(json!({"type": "ping"})).await;
        a.send(json!({"type": "jump", "id": 10})).await;
        a.send(json!({"type": "subscribe", "id": 11})).await;
        a.conn
            .session
            .handle(Bytes::from_static(b"\x93{nope"))
            .await;
        check(&mut a);

        // Recovery: a gap of epoch, then one of history (history holds 2 messages).
        a.send(json!({"type": "subscribe", "topic": "u", "since": {"epoch": "zz", "offset": 3}, "id": 12}))
            .await;
        for i in 0..4 {
            host::publish(&hub, "v", &json!(i)).await;
        }
        a.send(json!({"type": "presence", "topic": "v", "id": 13}))
            .await; // not subscribed
        check(&mut a);
        let epoch = {
            b.send(json!({"type": "subscribe", "topic": "v", "id": 14}))
                .await;
            let frames = b.take();
            let Ok(ServerFrame::Reply { data, .. }) = ServerFrame::decode(other, &frames[0]) else {
                panic!("a reply");
            };
            data.decode::<Value>().unwrap()["epoch"]
                .as_str()
                .unwrap()
                .to_owned()
        };
        a.send(json!({"type": "subscribe", "topic": "v", "since": {"epoch": epoch, "offset": 0}, "id": 15}))
            .await;
        check(&mut a);

        // Rooms: events, presence of rooms, direct events.
        host::join(&hub, a.id(), "r").await;
        host::join(&hub, b.id(), "r").await; // a: join of room r
        host::emit_to_room(&hub, "r", "news", &json!({"headline": "ok"}));
        assert!(host::emit_to(&hub, a.id(), "direct", &json!([1, 2, 3])));
        host::leave(&hub, b.id(), "r").unwrap(); // a: leave of room r
        a.send(json!({"type": "presence", "room": "r", "id": 16}))
            .await;
        check(&mut a);

        // Every close frame.
        for reason in hub_core::DisconnectReason::all() {
            let bytes = a.conn.outbox.close_frame(*reason);
            kinds.insert(same_bytes(codec, &bytes));
        }

        let expected: BTreeSet<String> = [
            "welcome", "message", "event", "reply", "error", "gap", "join", "leave", "pong",
            "close",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(kinds, expected, "{codec:?}");
    }
}

#[tokio::test]
async fn lag_reports_are_encoded_the_same() {
    for codec in Codec::ALL {
        // A queue of 2 under the drop policy: the third frame on is dropped and reported.
        let hub = hub(SlowConsumerPolicy::Drop, 2);
        let mut a = Mem::connect(&hub, codec).await;
        a.send(json!({"type": "subscribe", "topic": "t"})).await;
        for i in 0..5 {
            host::publish(&hub, "t", &json!(i)).await;
        }
        // Dropped too (the queue is full): `false`.
        assert!(!host::emit_to(&hub, a.id(), "e", &json!(null)));
        let kinds: Vec<String> = a.take().iter().map(|b| same_bytes(codec, b)).collect();
        assert!(kinds.contains(&"gap".to_owned()), "{kinds:?}");
        assert!(kinds.contains(&"dropped".to_owned()), "{kinds:?}");
    }
}

/// The frames of every seed of hub-core's frame fuzz targets (`fuzz/corpus/frame_*`), split as
/// the harness splits them.
fn corpus_frames(codec: Codec) -> Vec<Bytes> {
    let (dir, sep) = match codec {
        Codec::Json => ("frame_json", b'\n'),
        Codec::MsgPack => ("frame_msgpack", 0xc1),
    };
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(dir);
    let mut frames = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        frames.extend(
            bytes
                .split(|b| *b == sep)
                .filter(|f| !f.is_empty())
                .map(Bytes::copy_from_slice),
        );
    }
    assert!(
        frames.len() > 50,
        "{} frames in {}",
        frames.len(),
        dir.display()
    );
    frames
}

/// Inputs written here for the decoder's corners (each is sent alone to a fresh session).
fn corners(codec: Codec) -> Vec<Bytes> {
    let values = [
        json!({"type": "subscribe", "id": 1}),
        json!({"type": "unsubscribe", "id": 2}),
        json!({"type": "publish", "id": 3}),
        json!({"type": "event", "id": 4}),
        json!({"type": "join", "id": 5}),
        json!({"type": "leave", "id": 6}),
        json!({"type": "presence", "id": 7}),
        json!({"type": "presence", "room": 5, "id": 8}),
        json!({"type": "bogus", "topic": 5, "id": 9}),
        json!({"type": "x".repeat(300), "id": 10}),
        json!({"type": "é".repeat(40), "id": 11}),
        json!({"type": "subscribe", "topic": "t", "since": {"epoch": "e", "offset": -1}, "id": 12}),
        json!({"type": "subscribe", "topic": "t", "since": ["e", 1], "id": 13}),
        json!({"type": "ping", "id": null}),
        json!({"type": null}),
        json!({"id": 14}),
        json!({}),
    ];
    let mut out: Vec<Bytes> = values
        .iter()
        .map(|v| {
            Bytes::from(match codec {
                Codec::Json => serde_json::to_vec(v).unwrap(),
                Codec::MsgPack => rmp_serde::to_vec_named(v).unwrap(),
            })
        })
        .collect();
    if codec == Codec::Json {
        for raw in [
            &b"{\"type\":\"ping\",\"id\":1,\"id\":2}"[..],
            b"{\"type\":\"ping\",\"id\":3} trailing",
            b"  {\"type\":\"ping\",\"id\":4}  ",
            b"\xef\xbb\xbf{\"type\":\"ping\"}",
        ] {
            out.push(Bytes::from_static(raw));
        }
    }
    out
}

#[tokio::test]
async fn client_frames_are_refused_exactly_as_hub_core_refuses_them() {
    for codec in Codec::ALL {
        let hub = hub(SlowConsumerPolicy::Disconnect, 1024);
        let mut checked = 0;
        let mut refused = 0;
        for bytes in corpus_frames(codec).into_iter().chain(corners(codec)) {
            // A fresh session per frame: no frame depends on an earlier one.
            let mut m = Mem::connect(&hub, codec).await;
            m.take();
            m.conn.session.handle(bytes.clone()).await;
            let first = m.take().into_iter().next();
            let core = first.map(|b| ServerFrame::decode(codec, &b).unwrap());
            let shown = String::from_utf8_lossy(&bytes).into_owned();
            match ClientFrame::decode(codec, &bytes) {
                Err(e) => {
                    refused += 1;
                    let Some(ServerFrame::Error { id, code, message }) = core else {
                        panic!("{codec:?} {shown}: hub-core answered {core:?}, protocol {e}");
                    };
                    assert_eq!(
                        (code.as_str(), id, message.as_str()),
                        (e.code().as_str(), e.id(), e.message()),
                        "{codec:?} {shown}"
                    );
                }
                Ok(frame) => {
                    if let Some(ServerFrame::Error { code, message, .. }) = &core {
                        let decode_codes = [
                            ErrorCode::BadFrame,
                            ErrorCode::BadField,
                            ErrorCode::UnknownType,
                        ];
                        assert!(
                            !decode_codes.iter().any(|c| code == c),
                            "{codec:?} {shown}: protocol took {frame:?}, hub-core refused: {code} {message}"
                        );
                    }
                }
            }
            checked += 1;
        }
        assert!(
            refused > 20 && checked > refused,
            "{codec:?}: {refused} of {checked} refused"
        );
    }
}
