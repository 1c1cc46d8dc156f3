//! livehub-client against a real hub over loopback: subscriptions, publish and positions, both
//! encodings, acks and their timeout, presence, rooms and server events, and the server's
//! error codes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{host, next, next_message, serve, within};
use livehub_client::{
    Client, Code, Codec, ConnectionState, Error, ErrorCode, ServerEvent, SubEvent, SubscribeOptions,
};
use serde_json::{json, Value};

#[tokio::test]
async fn subscribe_and_publish_with_positions_in_both_encodings() {
    let (hub, _) = common::hub(100);
    let addr = serve(hub.clone()).await;
    let json_client = common::client(addr, "?user=ana").connect().await.unwrap();
    let mp_client = common::client(addr, "?user=bob")
        .codec(Codec::MsgPack)
        .connect()
        .await
        .unwrap();
    assert_eq!(mp_client.codec(), Codec::MsgPack);
    let mut a = json_client.subscribe("scores").await.unwrap();
    let mut b = mp_client.subscribe("scores").await.unwrap();
    assert_eq!(a.position().offset, 0);
    assert_eq!(b.position(), a.position(), "one stream, one epoch");

    // Published by each client, and by the server.
    let p1 = json_client
        .publish("scores", &json!({"by": "json"}))
        .await
        .unwrap();
    let p2 = mp_client
        .publish("scores", &json!({"by": "msgpack", "n": [1, 2.5]}))
        .await
        .unwrap();
    let p3 = host::publish(&hub, "scores", &json!("server")).await;
    assert_eq!((p1.offset, p2.offset, p3.offset), (1, 2, 3));
    assert_eq!(p1.epoch, p2.epoch);
    assert_eq!(&*p1.epoch, &*p3.epoch);

    for sub in [&mut a, &mut b] {
        assert_eq!(next_message(sub).await, (1, json!({"by": "json"})));
        assert_eq!(
            next_message(sub).await,
            (2, json!({"by": "msgpack", "n": [1, 2.5]}))
        );
        assert_eq!(next_message(sub).await, (3, json!("server")));
    }
    assert_eq!(a.position(), &p2.clone().with_offset(3));
    host::publish(&hub, "scores", &json!(4)).await;
    let SubEvent::Message(m) = next(&mut b).await else {
        panic!("a message")
    };
    assert_eq!(
        m.data.codec(),
        Codec::MsgPack,
        "a MessagePack client gets MessagePack"
    );
    assert_eq!(&*m.topic, "scores");
    json_client.close().await;
    mp_client.close().await;
}

/// `Position` has no setter; a small helper for the assertion above.
trait WithOffset {
    fn with_offset(self, offset: u64) -> Self;
}

impl WithOffset for livehub_client::Position {
    fn with_offset(mut self, offset: u64) -> Self {
        self.offset = offset;
        self
    }
}

#[tokio::test]
async fn subscribe_since_a_position_resumes_from_it() {
    let (hub, _) = common::hub(100);
    let addr = serve(hub.clone()).await;
    let first = host::publish(&hub, "t", &json!(1)).await;
    for i in 2..=4 {
        host::publish(&hub, "t", &json!(i)).await;
    }
    let client = common::client(addr, "").connect().await.unwrap();
    let mut sub = client
        .subscribe_with("t", SubscribeOptions::new().since(first.clone()))
        .await
        .unwrap();
    assert_eq!(
        sub.position(),
        &first,
        "nothing read yet: resume from `since`"
    );
    let SubEvent::Resumed(r) = next(&mut sub).await else {
        panic!("resumed first")
    };
    assert!(r.recovered && r.gap.is_none());
    assert_eq!(r.cause, livehub_client::ResumeCause::Since);
    for i in 2..=4 {
        assert_eq!(next_message(&mut sub).await, (i, json!(i)));
    }
    // A position of another epoch: nothing recovered, and said so.
    let mut other = client
        .subscribe_with(
            "u",
            SubscribeOptions::new().since(livehub_client::Position::new("nope", 3)),
        )
        .await
        .unwrap();
    let SubEvent::Resumed(r) = next(&mut other).await else {
        panic!("resumed first")
    };
    assert!(!r.recovered);
    assert_eq!(
        r.gap.unwrap().reason,
        Some(livehub_client::GapReason::Epoch)
    );
    client.close().await;
}

#[tokio::test]
async fn events_are_acknowledged_and_an_unanswered_one_times_out() {
    let (hub, _) = common::hub(10);
    let addr = serve(hub).await;
    let client = common::client(addr, "")
        .ack_timeout(Duration::from_millis(300))
        .codec(Codec::MsgPack)
        .connect()
        .await
        .unwrap();
    let ack = client.emit("echo", &json!({"x": [1, "y"]})).await.unwrap();
    assert_eq!(ack.decode::<Value>().unwrap(), json!({"x": [1, "y"]}));

    let ack = client.emit("echo", &2).await.unwrap();
    assert_eq!(ack.decode::<u32>().unwrap(), 2);

    // Last on this connection: livehub-core runs a handler inside the session's frame loop, so
    // a handler that never answers also holds back the session's later frames.
    let started = std::time::Instant::now();
    assert_eq!(client.emit("hang", &json!(null)).await, Err(Error::Timeout));
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(matches!(client.state(), ConnectionState::Connected { .. }));
    client.close().await;
}

fn code<T: std::fmt::Debug>(r: Result<T, Error>) -> Code {
    match r {
        Err(Error::Server { code, .. }) => code,
        other => panic!("expected a server error, got {other:?}"),
    }
}

#[tokio::test]
async fn the_servers_codes_come_back_typed() {
    let (hub, _) = common::hub(10);
    let addr = serve(hub).await;
    let client = common::client(addr, "").connect().await.unwrap();
    assert_eq!(code(client.subscribe("a b").await), ErrorCode::BadTopic);
    assert_eq!(code(client.publish("ro/x", &1).await), ErrorCode::Forbidden);
    assert_eq!(
        code(client.presence("never").await),
        ErrorCode::NotSubscribed
    );
    assert_eq!(code(client.room_presence("r").await), ErrorCode::NotMember);
    assert_eq!(code(client.leave("r").await), ErrorCode::NotMember);
    assert_eq!(code(client.emit("nope", &1).await), ErrorCode::UnknownEvent);
    assert_eq!(code(client.emit("", &1).await), ErrorCode::BadEvent);
    match client.emit("fail", &1).await {
        Err(e @ Error::Server { .. }) => {
            assert!(e.is(ErrorCode::HandlerError));
            assert!(e.to_string().contains("it failed on purpose"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    let _keep = client.subscribe("t").await.unwrap();
    assert_eq!(
        code(client.subscribe("t").await),
        ErrorCode::AlreadySubscribed
    );
    client.close().await;
}

#[tokio::test]
async fn a_refused_connection_carries_the_status_and_code() {
    let (hub, _) = common::hub(10);
    let addr = serve(hub).await;
    match common::client(addr, "?token=deny").connect().await {
        Err(Error::Refused {
            status,
            code,
            message,
        }) => {
            assert_eq!((status, code), (401, Code::Known(ErrorCode::Unauthorized)));
            assert_eq!(message, "token refused");
        }
        other => panic!("{other:?}"),
    }
    // Nothing listening.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead = listener.local_addr().unwrap();
    drop(listener);
    assert!(matches!(
        common::client(dead, "").connect().await,
        Err(Error::Connect(_))
    ));
    assert!(matches!(
        Client::builder("not a url").connect().await,
        Err(Error::Config(_))
    ));
    assert!(matches!(
        common::client(dead, "")
            .header("bad header", "x")
            .connect()
            .await,
        Err(Error::Config(_))
    ));
}

#[tokio::test]
async fn presence_of_topics_and_rooms() {
    let (hub, _) = common::hub(10);
    let addr = serve(hub.clone()).await;
    let ana = common::client(addr, "?user=ana").connect().await.unwrap();
    let bob = common::client(addr, "?user=bob")
        .codec(Codec::MsgPack)
        .connect()
        .await
        .unwrap();
    let mut watch = ana
        .subscribe_with("lobby", SubscribeOptions::new().presence(true))
        .await
        .unwrap();
    let bob_sub = bob.subscribe("lobby").await.unwrap();
    let SubEvent::Join(m) = next(&mut watch).await else {
        panic!("a join")
    };
    assert_eq!(
        (m.user.as_str(), m.session),
        ("bob", bob.session().unwrap())
    );
    assert_eq!(m.meta, json!({"name": "BOB"}));

    let mut users: Vec<String> = ana
        .presence("lobby")
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.user)
        .collect();
    users.sort();
    assert_eq!(users, ["ana", "bob"]);

    bob_sub.unsubscribe().await.unwrap();
    let SubEvent::Leave(m) = next(&mut watch).await else {
        panic!("a leave")
    };
    assert_eq!(m.user, "bob");

    // Rooms: server events, room presence, and the room's join events.
    let mut events = ana.server_events();
    ana.emit("room", &"r").await.unwrap();
    host::join(&hub, host::session(bob.session().unwrap()), "r").await;
    let ev = within("a room join", events.recv()).await.unwrap();
    let ServerEvent::Join { room, member } = ev else {
        panic!("{ev:?}")
    };
    assert_eq!((room.as_str(), member.user.as_str()), ("r", "bob"));
    assert_eq!(ana.room_presence("r").await.unwrap().len(), 2);
    assert_eq!(host::emit_to_room(&hub, "r", "news", &json!({"n": 1})), 2);
    let ev = within("a room event", events.recv()).await.unwrap();
    let ServerEvent::Event { event, data } = ev else {
        panic!("{ev:?}")
    };
    assert_eq!(
        (event.as_str(), data.decode::<Value>().unwrap()),
        ("news", json!({"n": 1}))
    );
    assert!(host::emit_to(
        &hub,
        host::session(ana.session().unwrap()),
        "direct",
        &json!([1])
    ));
    let ev = within("a direct event", events.recv()).await.unwrap();
    assert!(
        matches!(ev, ServerEvent::Event { ref event, .. } if event == "direct"),
        "{ev:?}"
    );
    ana.close().await;
    bob.close().await;
}

#[tokio::test]
async fn a_closed_client_refuses_everything_and_ends_its_subscriptions() {
    let (hub, _) = common::hub(10);
    let addr = serve(hub.clone()).await;
    let client = common::client(addr, "").connect().await.unwrap();
    let mut sub = client.subscribe("t").await.unwrap();
    client.close().await;
    assert_eq!(client.state(), ConnectionState::Closed { error: None });
    assert_eq!(client.closed().await, None);
    assert_eq!(next(&mut sub).await, SubEvent::Closed(Error::Closed));
    assert!(within("the end", sub.next()).await.is_none());
    assert_eq!(client.publish("t", &1).await, Err(Error::Closed));
    assert!(matches!(client.subscribe("u").await, Err(Error::Closed)));
    // The server saw the session end.
    common::no_sessions_left(&hub).await;
}
