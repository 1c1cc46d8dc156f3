//! The WebSocket transport end to end: real tokio-tungstenite clients over loopback sockets
//! against a hub served by bare hyper and by axum.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{close_frame, raw_request, serve_router, serve_ws_hyper, Ws};
use futures_util::{SinkExt, StreamExt};
use livehub::ws::WsService;
use livehub::{
    async_trait, Action, ConnectRequest, EventContext, Hooks, Hub, Identity, Payload, Rejection,
};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};

const WAIT: Duration = Duration::from_secs(5);

/// Serves `hub` with a bare hyper server (auto HTTP/1 + HTTP/2 builder) on a free port.
async fn serve_hyper(hub: Hub) -> SocketAddr {
    serve_ws_hyper(hub, |hub, peer| WsService::new(hub).with_peer(peer)).await
}

/// Serves `hub` at `/live/ws` of an axum router, beside an ordinary route.
async fn serve_axum(hub: Hub) -> SocketAddr {
    let app = axum::Router::new()
        .route("/health", axum::routing::get(|| async { "ok" }))
        .route_service("/live/ws", WsService::new(hub));
    serve_router(app).await
}

struct Client {
    ws: Ws,
    binary: bool,
    welcome: Value,
}

impl Client {
    async fn connect(url: &str) -> Client {
        Client::connect_with(url, None).await
    }

    async fn connect_with(url: &str, subprotocol: Option<&str>) -> Client {
        let mut req = url.into_client_request().unwrap();
        if let Some(p) = subprotocol {
            req.headers_mut()
                .insert("sec-websocket-protocol", p.parse().unwrap());
        }
        let (ws, resp) = tokio_tungstenite::connect_async(req)
            .await
            .expect("connect");
        let binary = resp
            .headers()
            .get("sec-websocket-protocol")
            .map(|v| v == "hub.v1.msgpack")
            .unwrap_or(false)
            || url.contains("encoding=msgpack");
        let mut c = Client {
            ws,
            binary,
            welcome: Value::Null,
        };
        c.welcome = c.recv().await;
        assert_eq!(c.welcome["type"], "welcome");
        c
    }

    fn session(&self) -> livehub::SessionId {
        livehub::SessionId::parse(self.welcome["session"].as_str().unwrap()).unwrap()
    }

    async fn send(&mut self, v: Value) {
        let msg = if self.binary {
            Message::Binary(rmp_serde::to_vec_named(&v).unwrap().into())
        } else {
            Message::Text(v.to_string().into())
        };
        self.ws.send(msg).await.unwrap();
    }

    /// The next hub frame, decoded (control frames skipped).
    async fn recv(&mut self) -> Value {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("timed out waiting for a frame")
                .expect("stream ended")
                .expect("read error");
            match msg {
                Message::Text(t) => {
                    assert!(!self.binary, "text frame on a msgpack session");
                    return serde_json::from_str(&t).unwrap();
                }
                Message::Binary(b) => {
                    assert!(self.binary, "binary frame on a json session");
                    return rmp_serde::from_slice(&b).unwrap();
                }
                Message::Close(f) => panic!("closed: {f:?}"),
                _ => continue,
            }
        }
    }

    /// Reads until the server's close frame; returns its code and reason.
    async fn close_frame(&mut self) -> (u16, String) {
        close_frame(&mut self.ws, WAIT).await
    }

    /// Whether nothing arrives within a short while (used after the frames that should arrive
    /// have arrived, to catch extras).
    async fn quiet(&mut self) -> bool {
        // One deadline for the whole window: pings keep arriving and must not extend it.
        let deadline = tokio::time::Instant::now() + Duration::from_millis(150);
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return true,
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
                Ok(_) => return false,
            }
        }
    }

    async fn subscribe(&mut self, topic: &str) -> Value {
        self.send(json!({"type": "subscribe", "topic": topic, "id": 1}))
            .await;
        let reply = self.recv().await;
        assert_eq!(reply["type"], "reply", "{reply}");
        reply
    }
}

/// Hooks for tests: `?user=` names the user; `mallory` is refused, no user is 401; users may
/// publish and join except to `locked/...`; nobody may subscribe to `secret`.
struct TestHooks;

#[async_trait]
impl Hooks for TestHooks {
    async fn authenticate(&self, req: &ConnectRequest) -> Result<Identity, Rejection> {
        match req.query("user").as_deref() {
            None => Err(Rejection::unauthorized("who are you?")),
            Some("mallory") => Err(Rejection::forbidden("not you")),
            Some(u) => Ok(Identity::user(u)),
        }
    }

    async fn authorize(&self, _who: &Identity, action: Action<'_>) -> bool {
        match action {
            Action::Subscribe(t) => t != "secret",
            Action::Publish(t) | Action::Join(t) => !t.starts_with("locked/"),
            _ => false,
        }
    }
}

fn test_hub() -> livehub::HubBuilder {
    Hub::builder().hooks(TestHooks)
}

#[tokio::test]
async fn server_publish_reaches_subscribers_in_order_over_hyper_and_axum() {
    let hub = test_hub().build();
    let a = serve_hyper(hub.clone()).await;
    let b = serve_axum(hub.clone()).await;
    let mut c1 = Client::connect(&format!("ws://{a}/?user=ana")).await;
    let mut c2 = Client::connect(&format!("ws://{b}/live/ws?user=bo")).await;
    assert_eq!(c1.welcome["protocol"], 1);
    assert_eq!(c1.welcome["encoding"], "json");
    c1.subscribe("scores/all").await;
    c2.subscribe("scores/all").await;
    for i in 1..=20 {
        hub.publish("scores/all", &json!({"goal": i}))
            .await
            .unwrap();
    }
    for c in [&mut c1, &mut c2] {
        for i in 1..=20 {
            let m = c.recv().await;
            assert_eq!(m["type"], "message");
            assert_eq!(m["offset"], i);
            assert_eq!(m["data"], json!({"goal": i}));
        }
    }
    // The axum router still serves its other routes.
    let body = http_get(b, "/health").await;
    assert!(body.ends_with("ok"), "{body}");
}

/// livehub-ws writes frames itself (vectored, never copied): every length class of the WebSocket
/// header (7-bit, 16-bit, 64-bit), batches larger than one `writev` can carry, and pings among
/// them must reach a strict client (tungstenite) whole and in order, in both encodings.
#[tokio::test]
async fn frames_of_every_length_class_and_huge_batches_arrive_whole_and_in_order() {
    let hub = test_hub()
        .queue_capacity(4096)
        .heartbeat(Duration::from_millis(20), Duration::from_secs(5))
        .build();
    let addr = serve_hyper(hub.clone()).await;
    for url in [
        format!("ws://{addr}/?user=ana"),
        format!("ws://{addr}/?user=bo&encoding=msgpack"),
    ] {
        let topic = format!("sizes/{}", url.len());
        let mut c = Client::connect(&url).await;
        c.subscribe(&topic).await;
        // The hub's ping frames (written by livehub-ws, not tungstenite) are valid to the client.
        loop {
            let msg = tokio::time::timeout(WAIT, c.ws.next()).await.unwrap();
            if let Some(Ok(Message::Ping(p))) = msg {
                assert!(p.is_empty());
                break;
            }
        }
        // Payload lengths that put the encoded frame on each side of the 125/126 and
        // 65,535/65,536 boundaries, then 1,500 small frames queued while the client does not
        // read (one batch of more than 512 frames), then more large ones.
        let mut sent: Vec<String> = Vec::new();
        for n in [
            0, 60, 61, 62, 63, 64, 65, 200, 65_400, 65_500, 65_600, 70_000, 300_000,
        ] {
            sent.push("z".repeat(n));
        }
        for i in 0..1_500 {
            sent.push(format!("small {i}"));
        }
        sent.push("w".repeat(200_000));
        for data in &sent {
            hub.publish(&topic, data).await.unwrap();
        }
        let mut got = 0;
        while got < sent.len() {
            let msg = tokio::time::timeout(WAIT, c.ws.next())
                .await
                .expect("timed out")
                .expect("ended")
                .expect("read error");
            let v: Value = match msg {
                Message::Text(t) if !c.binary => serde_json::from_str(&t).unwrap(),
                Message::Binary(b) if c.binary => rmp_serde::from_slice(&b).unwrap(),
                Message::Ping(_) => continue,
                other => panic!("unexpected {other:?}"),
            };
            assert_eq!(v["type"], "message");
            assert_eq!(v["offset"], got as u64 + 1, "order");
            assert_eq!(v["data"].as_str().unwrap(), sent[got], "frame {got} intact");
            got += 1;
        }
        assert!(c.quiet().await, "nothing after the last message");
        // The session is still alive and answering.
        c.send(json!({"type": "ping", "id": 9})).await;
        assert_eq!(c.recv().await["type"], "pong");
    }
    assert_eq!(hub.stats().disconnects.get("slow_consumer"), None);
}

#[tokio::test]
async fn json_and_msgpack_clients_on_one_topic_see_the_same_messages() {
    let hub = test_hub().build();
    let addr = serve_hyper(hub.clone()).await;
    let mut json_c = Client::connect(&format!("ws://{addr}/?user=j")).await;
    let mut mp_sub =
        Client::connect_with(&format!("ws://{addr}/?user=m"), Some("hub.v1.msgpack")).await;
    let mut mp_query = Client::connect(&format!("ws://{addr}/?user=q&encoding=msgpack")).await;
    assert_eq!(mp_sub.welcome["encoding"], "msgpack");
    assert_eq!(mp_query.welcome["encoding"], "msgpack");
    for c in [&mut json_c, &mut mp_sub, &mut mp_query] {
        c.subscribe("mixed").await;
    }
    mp_sub
        .send(json!({"type": "publish", "topic": "mixed", "data": {"from": "msgpack", "n": [1, 2]}, "id": 7}))
        .await;
    json_c
        .send(json!({"type": "publish", "topic": "mixed", "data": {"from": "json"}, "id": 8}))
        .await;
    for c in [&mut json_c, &mut mp_sub, &mut mp_query] {
        let mut messages = Vec::new();
        while messages.len() < 2 {
            let f = c.recv().await;
            if f["type"] == "message" {
                messages.push(f);
            }
        }
        assert_eq!(messages[0]["data"], json!({"from": "msgpack", "n": [1, 2]}));
        assert_eq!(messages[1]["data"], json!({"from": "json"}));
        assert_eq!(
            (
                messages[0]["offset"].as_u64(),
                messages[1]["offset"].as_u64()
            ),
            (Some(1), Some(2))
        );
    }
}

#[tokio::test]
async fn rooms_except_sender_two_rooms_once_and_direct_send() {
    let hub = test_hub()
        .on_event("join-room", |ctx: EventContext, data: Payload| async move {
            let room: String = data.decode()?;
            ctx.join(&room)
                .await
                .map_err(|e| livehub::HandlerError::new(e.to_string()))?;
            Ok(None)
        })
        .on_event(
            "chat-message",
            |ctx: EventContext, data: Payload| async move {
                let msg: Value = data.decode()?;
                let room = msg["room"].as_str().unwrap_or_default().to_owned();
                let n = ctx.hub().to(room).except(ctx.session_id()).emit(
                    "new-message",
                    &json!({"from": ctx.identity().user_id(), "text": msg["text"]}),
                )?;
                Ok(Some(Payload::from_value(&json!({"delivered": n}))?))
            },
        )
        .build();
    let addr = serve_hyper(hub.clone()).await;
    let mut ana = Client::connect(&format!("ws://{addr}/?user=ana")).await;
    let mut bo = Client::connect(&format!("ws://{addr}/?user=bo")).await;
    let mut cy = Client::connect(&format!("ws://{addr}/?user=cy&encoding=msgpack")).await;
    for (c, rooms) in [
        (&mut ana, &["chat:1"][..]),
        (&mut bo, &["chat:1"]),
        (&mut cy, &["chat:1", "chat:2"]),
    ] {
        for room in rooms {
            c.send(json!({"type": "event", "event": "join-room", "data": room, "id": 1}))
                .await;
            assert_eq!(
                c.recv().await,
                json!({"type": "reply", "id": 1, "data": null})
            );
        }
    }

    // Except the sender, with an ack carrying the handler's answer.
    ana.send(json!({"type": "event", "event": "chat-message", "data": {"room": "chat:1", "text": "hi"}, "id": 2}))
        .await;
    assert_eq!(
        ana.recv().await,
        json!({"type": "reply", "id": 2, "data": {"delivered": 2}})
    );
    for c in [&mut bo, &mut cy] {
        assert_eq!(
            c.recv().await,
            json!({"type": "event", "event": "new-message", "data": {"from": "ana", "text": "hi"}})
        );
    }
    assert!(ana.quiet().await, "the sender got its own message");

    // Two rooms: cy is in both and gets it once.
    let n = hub
        .to("chat:1")
        .to("chat:2")
        .emit("notice", &"maintenance")
        .unwrap();
    assert_eq!(n, 3);
    for c in [&mut ana, &mut bo, &mut cy] {
        assert_eq!(c.recv().await["data"], "maintenance");
    }
    assert!(
        cy.quiet().await,
        "a member of two rooms got the message twice"
    );

    // Direct to one session, by the id from its welcome.
    assert!(hub
        .emit_to(bo.session(), "private", &json!({"for": "bo"}))
        .unwrap());
    assert_eq!(bo.recv().await["data"], json!({"for": "bo"}));
    assert!(ana.quiet().await && cy.quiet().await);
}

/// A client, user `w`, that follows `lobby` with presence events; its `reply` has been read.
async fn presence_watcher(addr: SocketAddr) -> Client {
    let mut watcher = Client::connect(&format!("ws://{addr}/?user=w")).await;
    watcher
        .send(json!({"type": "subscribe", "topic": "lobby", "presence": true, "id": 1}))
        .await;
    assert_eq!(watcher.recv().await["type"], "reply");
    watcher
}

/// A presence frame's type and member: `(type, user)`.
fn presence(frame: &Value) -> (Option<&str>, Option<&str>) {
    (frame["type"].as_str(), frame["member"]["user"].as_str())
}

/// An error frame's code and the id of the request it answers: `(code, id)`.
fn error_of(frame: &Value) -> (Option<&str>, Option<u64>) {
    (frame["code"].as_str(), frame["id"].as_u64())
}

#[tokio::test]
async fn presence_leave_once_when_a_client_closes() {
    let hub = test_hub().build();
    let addr = serve_hyper(hub.clone()).await;
    let mut watcher = presence_watcher(addr).await;
    let mut ana = Client::connect(&format!("ws://{addr}/?user=ana")).await;
    ana.subscribe("lobby").await;
    let join = watcher.recv().await;
    assert_eq!(presence(&join), (Some("join"), Some("ana")));

    ana.ws.close(None).await.unwrap();
    let leave = watcher.recv().await;
    assert_eq!(presence(&leave), (Some("leave"), Some("ana")));
    assert!(watcher.quiet().await, "leave sent twice");
    assert_eq!(hub.topic_members("lobby").await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_client_that_stops_answering_pings_is_dropped_with_4000_and_leaves_once() {
    let hub = test_hub()
        .heartbeat(Duration::from_millis(50), Duration::from_millis(200))
        .build();
    let addr = serve_hyper(hub.clone()).await;
    let mut watcher = presence_watcher(addr).await;
    // A raw client that subscribes, then never reads nor writes again: no pongs.
    let mut silent = RawWs::connect(addr, "/?user=s").await;
    silent
        .send_text(r#"{"type":"subscribe","topic":"lobby"}"#.as_bytes())
        .await;
    assert_eq!(watcher.recv().await["type"], "join");

    let leave = watcher.recv().await;
    assert_eq!(presence(&leave), (Some("leave"), Some("s")));
    assert_eq!(silent.close_code().await, 4000);
    assert!(watcher.quiet().await);
    assert_eq!(hub.stats().disconnects.get("heartbeat_timeout"), Some(&1));
}

#[tokio::test]
async fn custom_event_with_ack_and_unknown_event() {
    let hub = test_hub()
        .on_event("echo", |_ctx: EventContext, data: Payload| async move {
            Ok(Some(data))
        })
        .build();
    let addr = serve_hyper(hub).await;
    for url in [
        format!("ws://{addr}/?user=a"),
        format!("ws://{addr}/?user=a&encoding=msgpack"),
    ] {
        let mut c = Client::connect(&url).await;
        c.send(
            json!({"type": "event", "event": "echo", "data": {"deep": [1, {"x": null}]}, "id": 42}),
        )
        .await;
        assert_eq!(
            c.recv().await,
            json!({"type": "reply", "id": 42, "data": {"deep": [1, {"x": null}]}})
        );
        c.send(json!({"type": "event", "event": "missing", "id": 43}))
            .await;
        let e = c.recv().await;
        assert_eq!(error_of(&e), (Some("unknown_event"), Some(43)));
    }
}

#[tokio::test]
async fn bad_frames_get_error_codes_and_the_connection_stays() {
    let hub = test_hub().build();
    let addr = serve_hyper(hub.clone()).await;
    let mut c = Client::connect(&format!("ws://{addr}/?user=a")).await;
    let long_topic = "t".repeat(200);
    let cases = [
        ("{not json".to_owned(), "bad_frame"),
        (
            r#"{"type":"subscribe","topic":12,"id":3}"#.to_owned(),
            "bad_field",
        ),
        (r#"{"type":"teleport"}"#.to_owned(), "unknown_type"),
        (r#"{"type":"subscribe","topic":""}"#.to_owned(), "bad_topic"),
        (
            format!(r#"{{"type":"subscribe","topic":"{long_topic}"}}"#),
            "bad_topic",
        ),
        (
            r#"{"type":"subscribe","topic":"has space"}"#.to_owned(),
            "bad_topic",
        ),
    ];
    for (text, code) in &cases {
        c.ws.send(Message::Text(text.clone().into())).await.unwrap();
        let e = c.recv().await;
        assert_eq!(e["type"], "error");
        assert_eq!(e["code"], *code, "for {text}");
    }
    // A binary frame of garbage to a JSON session is a bad frame too, not a crash.
    c.ws.send(Message::Binary(vec![0xff, 0x00, 0x13].into()))
        .await
        .unwrap();
    assert_eq!(c.recv().await["code"], "bad_frame");
    // Still connected and working.
    c.subscribe("fine").await;
    hub.publish("fine", &1).await.unwrap();
    assert_eq!(c.recv().await["data"], 1);
}

#[tokio::test]
async fn a_frame_over_the_limit_closes_with_1009_and_others_are_untouched() {
    let hub = test_hub().max_frame_size(1024).build();
    let addr = serve_hyper(hub.clone()).await;
    let mut other = Client::connect(&format!("ws://{addr}/?user=o")).await;
    other.subscribe("t").await;
    let mut big = Client::connect(&format!("ws://{addr}/?user=b")).await;
    let huge = json!({"type": "publish", "topic": "t", "data": "x".repeat(4000)}).to_string();
    big.ws.send(Message::Text(huge.into())).await.unwrap();
    assert_eq!(
        big.close_frame().await,
        (1009, "frame_too_large".to_owned())
    );
    hub.publish("t", &"after").await.unwrap();
    assert_eq!(other.recv().await["data"], "after");
    assert!(other.quiet().await, "the oversize publish leaked through");
}

#[tokio::test]
async fn invalid_utf8_text_closes_with_1007() {
    let hub = test_hub().build();
    let addr = serve_hyper(hub).await;
    // tungstenite will not send invalid UTF-8 as text, so speak raw WebSocket framing.
    let mut raw = RawWs::connect(addr, "/?user=raw").await;
    raw.send_text(&[0xff, 0xfe]).await;
    let code = raw.close_code().await;
    assert_eq!(code, 1007);
}

#[tokio::test]
async fn authentication_and_origin_are_refused_before_the_upgrade() {
    let hub = test_hub()
        .allowed_origins(["https://scores.example"])
        .build();
    let addr = serve_hyper(hub.clone()).await;
    let status_of = |url: String, origin: Option<&'static str>| async move {
        let mut req = url.into_client_request().unwrap();
        if let Some(o) = origin {
            req.headers_mut().insert("origin", o.parse().unwrap());
        }
        match tokio_tungstenite::connect_async(req).await {
            Ok(_) => 101,
            Err(tungstenite::Error::Http(resp)) => {
                let body: Value =
                    serde_json::from_slice(resp.body().as_deref().unwrap_or(b"{}")).unwrap();
                assert!(body["code"].is_string(), "refusal body {body}");
                resp.status().as_u16()
            }
            Err(e) => panic!("unexpected error {e}"),
        }
    };
    assert_eq!(status_of(format!("ws://{addr}/"), None).await, 401);
    assert_eq!(
        status_of(format!("ws://{addr}/?user=mallory"), None).await,
        403
    );
    assert_eq!(
        status_of(format!("ws://{addr}/?user=a"), Some("https://evil.example")).await,
        403
    );
    assert_eq!(
        status_of(format!("ws://{addr}/?user=a&encoding=xml"), None).await,
        400
    );
    assert_eq!(
        status_of(
            format!("ws://{addr}/?user=a"),
            Some("https://scores.example")
        )
        .await,
        101
    );
    assert_eq!(status_of(format!("ws://{addr}/?user=a"), None).await, 101);
    // A plain GET (no upgrade) gets 400 with a JSON body.
    let body = http_get(addr, "/").await;
    assert!(body.starts_with("HTTP/1.1 400"), "{body}");
    assert!(body.contains(r#""code":"bad_request""#), "{body}");
}

// Regression: a `Sec-WebSocket-Key` that is not 16 bytes in base64 was answered 101.
#[tokio::test]
async fn an_upgrade_with_a_malformed_key_is_refused_with_400_bad_request() {
    let hub = test_hub().build();
    let addr = serve_hyper(hub.clone()).await;
    let upgrade = |key: &str| {
        format!(
            "GET /?user=a HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\
             Connection: Upgrade, close\r\nSec-WebSocket-Version: 13\r\n{key}\r\n"
        )
    };
    for key in [
        "Sec-WebSocket-Key: not base64 at all!\r\n",
        // 15 and 17 bytes, and 16 bytes without padding.
        "Sec-WebSocket-Key: MDEyMzQ1Njc4OWFiY2Rl\r\n",
        "Sec-WebSocket-Key: MDEyMzQ1Njc4OWFiY2RlZmc=\r\n",
        "Sec-WebSocket-Key: MDEyMzQ1Njc4OWFiY2RlZg\r\n",
        "Sec-WebSocket-Key: \r\n",
        "",
    ] {
        let raw = raw_request(addr, &upgrade(key), WAIT).await;
        let text = String::from_utf8_lossy(&raw);
        assert!(text.starts_with("HTTP/1.1 400"), "{key:?}: {text}");
        assert!(text.contains(r#""code":"bad_request""#), "{key:?}: {text}");
    }
    assert_eq!(hub.stats().sessions_opened, 0);
    assert_eq!(hub.stats().refusals.get("bad_request"), Some(&6));
    // The same request with a well-formed key is upgraded.
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let good = upgrade("Sec-WebSocket-Key: MDEyMzQ1Njc4OWFiY2RlZg==\r\n")
        .replace("Upgrade, close", "Upgrade");
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tcp.write_all(good.as_bytes()).await.unwrap();
    let mut buf = [0u8; 12];
    tokio::time::timeout(WAIT, tcp.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"HTTP/1.1 101");
}

#[tokio::test]
async fn unauthorized_subscribe_and_publish_get_forbidden_and_deliver_nothing() {
    let hub = test_hub().build();
    let addr = serve_hyper(hub.clone()).await;
    let mut c = Client::connect(&format!("ws://{addr}/?user=a")).await;
    c.send(json!({"type": "subscribe", "topic": "secret", "id": 5}))
        .await;
    let e = c.recv().await;
    assert_eq!(error_of(&e), (Some("forbidden"), Some(5)));
    hub.publish("secret", &"classified").await.unwrap();

    let mut reader = Client::connect(&format!("ws://{addr}/?user=r")).await;
    reader.subscribe("locked/feed").await;
    c.send(json!({"type": "publish", "topic": "locked/feed", "data": "spoof", "id": 6}))
        .await;
    let e = c.recv().await;
    assert_eq!(error_of(&e), (Some("forbidden"), Some(6)));
    assert!(c.quiet().await, "the secret topic leaked");
    assert!(reader.quiet().await, "the forbidden publish was delivered");
}

/// A WebSocket client written by hand on a TCP socket: it does only what a test tells it to
/// (no automatic pongs, no UTF-8 checks), to play a misbehaving or silent client.
struct RawWs {
    tcp: TcpStream,
    data: Vec<u8>,
}

impl RawWs {
    async fn connect(addr: SocketAddr, path: &str) -> RawWs {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        let handshake = format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        tcp.write_all(handshake.as_bytes()).await.unwrap();
        let mut data = Vec::new();
        let mut buf = [0u8; 4096];
        let end = loop {
            if let Some(p) = data.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            let n = tcp.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed during the handshake");
            data.extend_from_slice(&buf[..n]);
        };
        assert!(
            data.starts_with(b"HTTP/1.1 101"),
            "{}",
            String::from_utf8_lossy(&data)
        );
        RawWs {
            tcp,
            data: data[end..].to_vec(),
        }
    }

    /// Sends one masked text frame (mask key zero, so the payload goes as it is).
    async fn send_text(&mut self, payload: &[u8]) {
        use tokio::io::AsyncWriteExt;
        assert!(payload.len() < 126);
        let mut frame = vec![0x81, 0x80 | payload.len() as u8, 0, 0, 0, 0];
        frame.extend_from_slice(payload);
        self.tcp.write_all(&frame).await.unwrap();
    }

    /// Reads server frames until a close frame; returns its code.
    async fn close_code(&mut self) -> u16 {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 4096];
        tokio::time::timeout(WAIT, async {
            loop {
                let data = &self.data;
                let mut i = 0;
                while i + 2 <= data.len() {
                    let opcode = data[i] & 0x0f;
                    let mut len = (data[i + 1] & 0x7f) as usize;
                    let mut head = 2;
                    if len == 126 {
                        if i + 4 > data.len() {
                            break;
                        }
                        len = u16::from_be_bytes([data[i + 2], data[i + 3]]) as usize;
                        head = 4;
                    }
                    if i + head + len > data.len() {
                        break;
                    }
                    if opcode == 8 {
                        let p = &data[i + head..i + head + len];
                        return u16::from_be_bytes([p[0], p[1]]);
                    }
                    i += head + len;
                }
                let n = self.tcp.read(&mut buf).await.unwrap();
                assert!(n > 0, "connection closed without a close frame");
                self.data.extend_from_slice(&buf[..n]);
            }
        })
        .await
        .expect("no close frame")
    }
}

/// A minimal HTTP/1.1 GET; returns the whole response as text.
async fn http_get(addr: SocketAddr, path: &str) -> String {
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    String::from_utf8_lossy(&raw_request(addr, &req, WAIT).await).into_owned()
}

#[tokio::test]
async fn shutdown_delivers_what_is_queued_then_closes_with_1001() {
    let hub = test_hub().build();
    let addr = serve_hyper(hub.clone()).await;
    let mut c = Client::connect(&format!("ws://{addr}/?user=a")).await;
    c.subscribe("t").await;
    for i in 1..=5 {
        hub.publish("t", &i).await.unwrap();
    }
    let shutdown = tokio::spawn({
        let hub = hub.clone();
        async move { hub.shutdown(Duration::from_secs(5)).await }
    });
    for i in 1..=5 {
        assert_eq!(c.recv().await["offset"], i);
    }
    let (code, text) = c.close_frame().await;
    common::assert_shutdown_close(code, &text);
    drop(c);
    let report = shutdown.await.unwrap();
    assert_eq!((report.sessions, report.forced), (1, 0));
    // New upgrades are refused.
    let req = format!("ws://{addr}/?user=b")
        .into_client_request()
        .unwrap();
    match tokio_tungstenite::connect_async(req).await {
        Err(tungstenite::Error::Http(resp)) => assert_eq!(resp.status().as_u16(), 503),
        other => panic!("expected 503, got {:?}", other.map(|_| ())),
    }
}
