//! The newer protocol bits, against a real hub over loopback (and a fake one for frames a real
//! hub sends only in rare states): subscribe's `last`, conflation (`conflate`, keys, the
//! `conflated` notice), the gap reasons `ahead`, `epoch` while following and unknown ones,
//! events that ask for an answer, and the server's reconnect hint (`retry_ms` in a close
//! reason).

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{host, next, next_message, serve, within, Fake, Proxy};
use livehub_client::{
    ConnectionEvent, DisconnectCause, Error, ErrorCode, GapReason, Position, ServerEvent, SubEvent,
    SubscribeOptions,
};
use livehub_protocol::{ClientOp, Codec, ServerFrame};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message as WsMessage;

#[tokio::test]
async fn last_starts_with_the_newest_messages_then_live_and_resumes_from_what_was_delivered() {
    let (hub, _) = common::hub(100);
    let proxy = Proxy::start(serve(hub.clone()).await).await;
    for n in 1..=5 {
        host::publish(&hub, "t", &json!(n)).await;
    }
    let client = common::client(proxy.addr, "").connect().await.unwrap();
    let mut sub = client
        .subscribe_with("t", SubscribeOptions::new().last(3))
        .await
        .unwrap();
    for n in 3..=5 {
        assert_eq!(next_message(&mut sub).await, (n, json!(n)));
    }
    host::publish(&hub, "t", &json!(6)).await;
    assert_eq!(next_message(&mut sub).await, (6, json!(6)));

    // Cut: the reconnect resumes after 6 (not the newest three again).
    let mut events = client.connection_events();
    proxy.down();
    proxy.cut();
    host::publish(&hub, "t", &json!(7)).await;
    proxy.up();
    loop {
        if let Some(ConnectionEvent::Connected {
            reconnect: true, ..
        }) = within("the reconnect", events.recv()).await
        {
            break;
        }
    }
    let SubEvent::Resumed(r) = next(&mut sub).await else {
        panic!("resumed")
    };
    assert!(r.recovered, "{r:?}");
    assert_eq!(next_message(&mut sub).await, (7, json!(7)));

    // `last` on an empty topic: nothing, then live.
    let mut empty = client
        .subscribe_with("empty", SubscribeOptions::new().last(10))
        .await
        .unwrap();
    host::publish(&hub, "empty", &json!("first")).await;
    let SubEvent::Message(m) = next(&mut empty).await else {
        panic!("a message")
    };
    assert_eq!(m.position.offset, 1);
    client.close().await;
}

#[tokio::test]
async fn a_conflated_subscription_recovers_the_newest_value_per_key_with_keys_and_deletions() {
    let (hub, _) = common::hub(100);
    let addr = serve(hub.clone()).await;
    host::publish_keyed(&hub, "scores", "match:1", &json!({"home": 0})).await; // 1
    host::publish_keyed(&hub, "scores", "match:2", &json!({"home": 5})).await; // 2
    host::publish_keyed(&hub, "scores", "match:1", &json!({"home": 1})).await; // 3
    host::publish_delete(&hub, "scores", "match:3").await; // 4
    host::publish_keyed(&hub, "scores", "match:1", &json!({"home": 2})).await; // 5
    let client = common::client(addr, "").connect().await.unwrap();
    let mut sub = client
        .subscribe_with("scores", SubscribeOptions::new().conflate(true).last(100))
        .await
        .unwrap();
    let SubEvent::Conflated(c) = next(&mut sub).await else {
        panic!("the conflated notice first")
    };
    assert_eq!((c.from, c.to, c.reason), (1, 3, Some(GapReason::Conflated)));
    let mut got = Vec::new();
    for _ in 0..3 {
        let SubEvent::Message(m) = next(&mut sub).await else {
            panic!("a message, never a gap")
        };
        got.push((
            m.position.offset,
            m.key.as_deref().map(str::to_owned),
            m.delete,
            m.decode::<Value>().unwrap(),
        ));
    }
    assert_eq!(
        got,
        [
            (2, Some("match:2".into()), false, json!({"home": 5})),
            (4, Some("match:3".into()), true, Value::Null),
            (5, Some("match:1".into()), false, json!({"home": 2})),
        ]
    );
    // The client's own keyed publish and deletion reach it with their key.
    client
        .publish_keyed("scores", "match:9", &json!({"home": 9}))
        .await
        .unwrap();
    let SubEvent::Message(m) = next(&mut sub).await else {
        panic!("a message")
    };
    assert_eq!((m.position.offset, m.key.as_deref()), (6, Some("match:9")));
    client.publish_delete("scores", "match:9").await.unwrap();
    let SubEvent::Message(m) = next(&mut sub).await else {
        panic!("a message")
    };
    assert!(m.delete);
    // A bad key is the server's bad_key.
    let e = client.publish_keyed("scores", "", &1).await.unwrap_err();
    assert!(e.is(ErrorCode::BadKey), "{e:?}");
    // Without conflation, the whole history.
    let mut all = client
        .subscribe_with("scores", SubscribeOptions::new().conflate(false).last(100))
        .await;
    assert!(
        matches!(&all, Err(e) if e.is(ErrorCode::AlreadySubscribed)),
        "one subscription per topic and client"
    );
    drop(sub);
    all = client
        .subscribe_with("scores", SubscribeOptions::new().conflate(false).last(100))
        .await;
    let mut all = all.unwrap();
    for offset in 1..=7 {
        let SubEvent::Message(m) = next(&mut all).await else {
            panic!("a message")
        };
        assert_eq!(m.position.offset, offset);
    }
    client.close().await;
}

#[tokio::test]
async fn a_since_ahead_of_the_stream_goes_back_and_takes_the_new_messages_of_those_offsets() {
    let (hub, _) = common::hub(100);
    let addr = serve(hub.clone()).await;
    let top = host::publish(&hub, "t", &json!(1)).await;
    let client = common::client(addr, "").connect().await.unwrap();
    let ahead = Position::new(&*top.epoch, 10);
    let mut sub = client
        .subscribe_with("t", SubscribeOptions::new().since(ahead))
        .await
        .unwrap();
    let SubEvent::Resumed(r) = next(&mut sub).await else {
        panic!("resumed")
    };
    assert!(!r.recovered);
    let gap = r.gap.unwrap();
    assert_eq!(
        (gap.from, gap.to, gap.reason),
        (2, 10, Some(GapReason::Ahead))
    );
    // Offset 2 again: a new message, not a duplicate of what the client held.
    host::publish(&hub, "t", &json!(2)).await;
    assert_eq!(next_message(&mut sub).await, (2, json!(2)));
    client.close().await;
}

async fn gap(conn: &mut common::FakeConn, epoch: &str, from: u64, to: u64, reason: &str) {
    let frame = ServerFrame::Gap {
        topic: "t".into(),
        epoch: epoch.into(),
        from,
        to,
        reason: GapReason::parse(reason),
    };
    conn.frame(Codec::Json, frame).await;
}

async fn message(conn: &mut common::FakeConn, epoch: &str, offset: u64) {
    let frame = ServerFrame::Message {
        topic: "t".into(),
        epoch: epoch.into(),
        offset,
        data: livehub_protocol::Payload::encode(Codec::Json, &offset).unwrap(),
        key: None,
        delete: false,
    };
    conn.frame(Codec::Json, frame).await;
}

#[tokio::test]
async fn an_epoch_gap_while_following_takes_the_new_stream_and_a_reconnect_asks_for_all_of_it() {
    let mut fake = Fake::start().await;
    let url = format!("ws://{}/", fake.addr);
    let connecting = tokio::spawn(async move {
        livehub_client::Client::builder(url)
            .reconnect(Duration::from_millis(10), Duration::from_millis(50))
            .connect()
            .await
    });
    let mut conn = fake.accept().await;
    conn.welcome(Codec::Json, 1, 60_000).await;
    let client = connecting.await.unwrap().unwrap();
    let subscribing = {
        let client = client.clone();
        tokio::spawn(async move { client.subscribe("t").await })
    };
    let sub = conn.recv().await.unwrap();
    conn.reply(
        Codec::Json,
        sub.id,
        json!({"topic": "t", "epoch": "e", "offset": 2}),
    )
    .await;
    let mut sub = subscribing.await.unwrap().unwrap();
    message(&mut conn, "e", 3).await;
    gap(&mut conn, "f", 0, 0, "epoch").await;
    message(&mut conn, "f", 4).await; // its history starts there: no hole on top of the gap
    message(&mut conn, "f", 5).await;
    assert_eq!(next_message(&mut sub).await.0, 3);
    let SubEvent::Gap(g) = next(&mut sub).await else {
        panic!("the epoch gap")
    };
    assert_eq!((&*g.epoch, g.reason), ("f", Some(GapReason::Epoch)));
    let SubEvent::Message(m) = next(&mut sub).await else {
        panic!("the new stream's first message, no hole")
    };
    assert_eq!((&*m.position.epoch, m.position.offset), ("f", 4));
    assert_eq!(next_message(&mut sub).await.0, 5);
    // Recreated again, and the connection is lost before any message of the newest epoch:
    // the resume asks for all of it.
    gap(&mut conn, "g", 0, 0, "epoch").await;
    let SubEvent::Gap(_) = next(&mut sub).await else {
        panic!("the second epoch gap")
    };
    drop(conn);
    let mut again = fake.accept().await;
    again.welcome(Codec::Json, 2, 60_000).await;
    let f = again.recv().await.unwrap();
    let ClientOp::Subscribe { since, .. } = &f.op else {
        panic!("a subscribe")
    };
    assert_eq!(since.as_ref(), Some(&Position::new("g", 0)));
    client.close().await;
}

#[tokio::test]
async fn an_unknown_gap_reason_is_loss_and_a_conflated_window_is_no_hole() {
    let mut fake = Fake::start().await;
    let url = format!("ws://{}/", fake.addr);
    let connecting = tokio::spawn(async move { livehub_client::Client::connect(url).await });
    let mut conn = fake.accept().await;
    conn.welcome(Codec::Json, 1, 60_000).await;
    let client = connecting.await.unwrap().unwrap();
    let subscribing = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .subscribe_with("t", SubscribeOptions::new().conflate(true))
                .await
        })
    };
    let f = conn.recv().await.unwrap();
    let ClientOp::Subscribe { conflate, last, .. } = &f.op else {
        panic!("a subscribe")
    };
    assert_eq!((*conflate, *last), (Some(true), None));
    conn.reply(
        Codec::Json,
        f.id,
        json!({"topic": "t", "epoch": "e", "offset": 0}),
    )
    .await;
    let mut sub = subscribing.await.unwrap().unwrap();
    gap(&mut conn, "e", 1, 4, "meteor").await;
    message(&mut conn, "e", 5).await;
    gap(&mut conn, "e", 6, 9, "conflated").await;
    message(&mut conn, "e", 8).await;
    message(&mut conn, "e", 10).await;
    message(&mut conn, "e", 12).await;
    let SubEvent::Gap(g) = next(&mut sub).await else {
        panic!("the unknown reason, as loss")
    };
    assert_eq!(
        (g.from, g.to, g.reason),
        (1, 4, Some(GapReason::Other("meteor".into())))
    );
    assert_eq!(next_message(&mut sub).await.0, 5);
    let SubEvent::Conflated(c) = next(&mut sub).await else {
        panic!("the conflated notice")
    };
    assert_eq!((c.from, c.to), (6, 9));
    assert_eq!(next_message(&mut sub).await.0, 8);
    assert_eq!(next_message(&mut sub).await.0, 10);
    let SubEvent::Gap(g) = next(&mut sub).await else {
        panic!("a real hole after the window")
    };
    assert_eq!((g.from, g.to, g.reason), (11, 11, None));
    assert_eq!(next_message(&mut sub).await.0, 12);
    client.close().await;
}

#[tokio::test]
async fn events_that_ask_for_an_answer_are_answered_once_in_time_on_their_session() {
    let (hub, _) = common::hub(100);
    let proxy = Proxy::start(serve(hub.clone()).await).await;
    let client = common::client(proxy.addr, "").connect().await.unwrap();
    let session = host::session(client.session().unwrap());
    let mut events = client.server_events();

    let asking = {
        let hub = hub.clone();
        tokio::spawn(async move {
            host::emit_with_ack(
                &hub,
                session,
                "confirm",
                &json!({"order": 7}),
                Duration::from_secs(5),
            )
            .await
        })
    };
    let Some(ServerEvent::Ask { event, data, ack }) = within("the ask", events.recv()).await else {
        panic!("an event that asks")
    };
    assert_eq!(event, "confirm");
    assert_eq!(data.decode::<Value>().unwrap(), json!({"order": 7}));
    ack.reply(&json!({"accepted": true})).await.unwrap();
    assert_eq!(asking.await.unwrap().unwrap(), json!({"accepted": true}));
    // Once: a clone says so without sending.
    assert!(ack.clone().is_answered());
    assert_eq!(ack.clone().reply(&1).await, Err(Error::AlreadyAnswered));

    // Too late: the server no longer waits, and says unknown_ack.
    let waited = host::emit_with_ack(
        &hub,
        session,
        "late",
        &json!(null),
        Duration::from_millis(50),
    )
    .await;
    assert!(
        matches!(waited, Err(livehub_core::AckError::Timeout)),
        "{waited:?}"
    );
    let Some(ServerEvent::Ask { ack, .. }) = within("the late ask", events.recv()).await else {
        panic!("an event that asks")
    };
    let e = ack.reply(&"sorry").await.unwrap_err();
    assert!(e.is(ErrorCode::UnknownAck), "{e:?}");

    // The connection that asked is gone: nothing is sent, the answer fails.
    let asking = {
        let hub = hub.clone();
        tokio::spawn(async move {
            host::emit_with_ack(&hub, session, "q", &json!(null), Duration::from_secs(5)).await
        })
    };
    let Some(ServerEvent::Ask { ack, .. }) = within("the third ask", events.recv()).await else {
        panic!("an event that asks")
    };
    let mut conn_events = client.connection_events();
    proxy.cut();
    assert!(matches!(
        asking.await.unwrap(),
        Err(livehub_core::AckError::Disconnected)
    ));
    loop {
        if let Some(ConnectionEvent::Connected { .. }) =
            within("the reconnect", conn_events.recv()).await
        {
            break;
        }
    }
    assert_eq!(ack.reply(&1).await, Err(Error::ConnectionLost));

    // Events without an ack still come as plain events.
    let session = host::session(client.session().unwrap());
    host::emit_to(&hub, session, "plain", &json!(1));
    let Some(ServerEvent::Event { event, .. }) = within("the plain event", events.recv()).await
    else {
        panic!("a plain event")
    };
    assert_eq!(event, "plain");
    client.close().await;
}

#[tokio::test]
async fn a_close_reason_with_retry_ms_sets_the_reconnect_delay_capped_at_the_ceiling() {
    for (reason, ceiling_ms, want_ms) in [
        ("shutdown;retry_ms=300", 5_000, 300),
        ("shutdown;retry_ms=999999", 400, 400),
        ("slow_consumer;retry_ms=5", 5_000, 5),
    ] {
        let mut fake = Fake::start().await;
        let url = format!("ws://{}/", fake.addr);
        let connecting = tokio::spawn(async move {
            livehub_client::Client::builder(url)
                .reconnect(
                    Duration::from_millis(100),
                    Duration::from_millis(ceiling_ms),
                )
                .connect()
                .await
        });
        let mut conn = fake.accept().await;
        conn.welcome(Codec::Json, 1, 60_000).await;
        let client = connecting.await.unwrap().unwrap();
        let mut events = client.connection_events();
        let code = if reason.starts_with("shutdown") {
            CloseCode::Away
        } else {
            CloseCode::Policy
        };
        conn.send(WsMessage::Close(Some(CloseFrame {
            code,
            reason: reason.into(),
        })))
        .await;
        let cause = loop {
            if let Some(ConnectionEvent::Disconnected { cause }) =
                within("the disconnect", events.recv()).await
            {
                break cause;
            }
        };
        let DisconnectCause::Server {
            reason: got,
            retry_after,
            ..
        } = cause
        else {
            panic!("closed by the server: {cause:?}")
        };
        assert_eq!(got, reason.split(';').next().unwrap());
        assert!(retry_after.is_some());
        let delay = loop {
            if let Some(ConnectionEvent::Reconnecting { delay, .. }) =
                within("the reconnecting event", events.recv()).await
            {
                break delay;
            }
        };
        assert_eq!(delay, Duration::from_millis(want_ms), "{reason}");
        // And it does come back.
        let mut again = fake.accept().await;
        again.welcome(Codec::Json, 2, 60_000).await;
        within("connected again", client.connected()).await.unwrap();
        client.close().await;
    }
}

#[cfg(not(feature = "tls"))]
#[tokio::test]
async fn a_wss_url_without_the_tls_feature_is_a_configuration_error() {
    let e = livehub_client::Client::connect("wss://localhost:1/")
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Config(_)), "{e:?}");
}
