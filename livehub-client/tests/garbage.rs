//! livehub-client against a fake server that misbehaves: frames that are not frames, unknown
//! types, answers to nothing, duplicates and holes, oversize frames, floods, silence, a bad
//! `welcome`, refusals that are not the hub's. Every one becomes a typed error or an event;
//! the client never panics, never grows without bound, and keeps serving.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{next, next_message, wait_event, within, Fake};
use livehub_client::{
    Client, Code, Codec, ConnectionEvent, DisconnectCause, Error, Gap, Position, ResumeCause,
    SubEvent,
};
use livehub_protocol::ClientOp;
use serde_json::json;

fn expect_subscribe(
    frame: Option<livehub_protocol::ClientFrame>,
) -> (Option<u64>, Option<Position>) {
    match frame {
        Some(livehub_protocol::ClientFrame {
            id,
            op: ClientOp::Subscribe { topic, since, .. },
        }) if topic == "t" => (id, since),
        other => panic!("expected a subscribe of t, got {other:?}"),
    }
}

#[tokio::test]
async fn garbage_is_reported_and_skipped_and_an_oversize_frame_ends_the_connection() {
    let mut fake = Fake::start().await;
    let codec = Codec::Json;
    let addr = fake.addr;
    let connecting = tokio::spawn(async move {
        common::client(addr, "")
            .max_frame_size(4096)
            .connect()
            .await
    });
    let mut conn = fake.accept().await;
    conn.welcome(codec, 1, 60_000).await;
    let client = connecting.await.unwrap().unwrap();
    let mut events = client.connection_events();

    let subscribing = tokio::spawn({
        let client = client.clone();
        async move { client.subscribe("t").await }
    });
    let (id, since) = expect_subscribe(conn.recv().await);
    assert_eq!(since, None);
    conn.reply(codec, id, json!({"topic": "t", "epoch": "e", "offset": 0}))
        .await;
    let mut sub = subscribing.await.unwrap().unwrap();

    conn.text("not json").await;
    conn.text("[1,2]").await;
    conn.text(r#"{"type":"message"}"#).await;
    conn.binary(vec![0xc1, 0xff]).await;
    conn.text(r#"{"type":"hologram","depth":[1]}"#).await; // unknown: ignored
    conn.text(r#"{"type":"reply","id":999999,"data":1}"#).await; // answers nothing: ignored
    conn.text(r#"{"type":"message","topic":"other","epoch":"e","offset":1,"data":1}"#)
        .await;
    conn.text(r#"{"type":"error","code":"quota_exceeded","message":"slow down"}"#)
        .await;
    conn.text(r#"{"type":"welcome","session":"0000000000000009","protocol":1,"encoding":"json","heartbeat_ms":1,"timeout_ms":1}"#).await;
    let deep = format!(
        r#"{{"type":"event","event":"e","data":{}{}}}"#,
        "[".repeat(1500),
        "]".repeat(1500)
    );
    conn.text(deep).await; // raw data is not parsed: taken as it is
    for offset in [1, 2, 2, 1, 3, 5] {
        conn.message(codec, offset).await;
    }
    conn.text(format!(
        r#"{{"type":"event","event":"e","data":"{}"}}"#,
        "x".repeat(10_000)
    ))
    .await;
    let second = tokio::spawn(async move {
        let old = conn;
        let mut conn = fake.accept().await;
        conn.welcome(codec, 2, 60_000).await;
        let (id, since) = expect_subscribe(conn.recv().await);
        assert_eq!(
            since,
            Some(Position::new("e", 5)),
            "resumed from the last delivered"
        );
        conn.reply(codec, id, json!({"topic": "t", "epoch": "e", "offset": 6}))
            .await;
        conn.message(codec, 6).await;
        drop(old);
        conn.until_closed().await;
    });

    for offset in [1, 2, 3] {
        assert_eq!(next_message(&mut sub).await, (offset, json!(offset)));
    }
    let hole = Gap {
        epoch: "e".into(),
        from: 4,
        to: 4,
        reason: None,
    };
    assert_eq!(next(&mut sub).await, SubEvent::Gap(hole));
    assert_eq!(next_message(&mut sub).await, (5, json!(5)));
    let SubEvent::Resumed(r) = next(&mut sub).await else {
        panic!("resumed")
    };
    assert_eq!((r.cause, r.recovered), (ResumeCause::Reconnect, true));
    assert_eq!(next_message(&mut sub).await, (6, json!(6)));

    // What the application was told, in order.
    let mut protocol_errors = 0;
    let mut server_errors = Vec::new();
    let cause = wait_event(&mut events, |e| match e {
        ConnectionEvent::ProtocolError { .. } => {
            protocol_errors += 1;
            None
        }
        ConnectionEvent::ServerError { code, message } => {
            server_errors.push((code.clone(), message.clone()));
            None
        }
        ConnectionEvent::Disconnected { cause } => Some(cause.clone()),
        _ => None,
    })
    .await;
    assert_eq!(
        protocol_errors, 5,
        "not JSON, not a map, missing fields, bad binary, a second welcome"
    );
    assert_eq!(
        server_errors,
        [(
            Code::Unknown("quota_exceeded".into()),
            "slow down".to_owned()
        )]
    );
    assert!(
        matches!(cause, DisconnectCause::Network(ref why) if why.contains("too long") || why.contains("size")),
        "{cause:?}"
    );
    wait_event(&mut events, |e| {
        matches!(
            e,
            ConnectionEvent::Connected {
                reconnect: true,
                ..
            }
        )
        .then_some(())
    })
    .await;
    client.close().await;
    within("the fake's second connection", second)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_flood_the_application_does_not_read_stays_bounded_and_resumes() {
    let mut fake = Fake::start().await;
    let codec = Codec::MsgPack;
    let addr = fake.addr;
    let script = tokio::spawn(async move {
        let mut conn = fake.accept().await;
        conn.welcome(codec, 1, 60_000).await;
        let (id, _) = expect_subscribe(conn.recv().await);
        conn.reply(codec, id, json!({"topic": "t", "epoch": "e", "offset": 0}))
            .await;
        for offset in 1..=2000 {
            conn.message(codec, offset).await;
        }
        let mut since_asked = Vec::new();
        while let Some(frame) = conn.recv().await {
            match frame.op {
                ClientOp::Ping => {
                    let pong = livehub_protocol::ServerFrame::Pong { id: frame.id };
                    conn.frame(codec, pong).await;
                }
                ClientOp::Unsubscribe { .. } => conn.reply(codec, frame.id, json!(null)).await,
                ClientOp::Subscribe { since, .. } => {
                    // What the "history" holds: 17..=40 (the rest is not asked for).
                    since_asked.push(since);
                    conn.reply(
                        codec,
                        frame.id,
                        json!({"topic": "t", "epoch": "e", "offset": 2000}),
                    )
                    .await;
                    for offset in 17..=40 {
                        conn.message(codec, offset).await;
                    }
                }
                other => panic!("{other:?}"),
            }
        }
        since_asked
    });
    let client = common::client(addr, "")
        .codec(codec)
        .subscription_buffer(16)
        .connect()
        .await
        .unwrap();
    let mut sub = client.subscribe("t").await.unwrap();
    // After the pong, the client has seen the 2000 messages; the subscription holds 16.
    client.ping().await.unwrap();
    for offset in 1..=16 {
        assert_eq!(next_message(&mut sub).await, (offset, json!(offset)));
    }
    // Then the rest, resumed from 16 (and again, should reading lag behind once more).
    let (offsets, resumes) = common::messages_through_lag(&mut sub, 24).await;
    assert_eq!(offsets, (17..=40).collect::<Vec<u64>>());
    assert!(resumes >= 1);
    client.close().await;
    let since = within("the fake's end", script).await.unwrap();
    assert_eq!(since.len(), resumes);
    assert_eq!(
        since[0],
        Some(Position::new("e", 16)),
        "resumed from the last handed over"
    );
}

#[tokio::test]
async fn a_silent_server_is_taken_for_dead_and_replaced() {
    let mut fake = Fake::start().await;
    let addr = fake.addr;
    let connecting = tokio::spawn(async move { common::client(addr, "").connect().await });
    let mut first = fake.accept().await;
    // A server whose heartbeat timeout is 200 ms, and that never says anything again.
    first.welcome(Codec::Json, 1, 200).await;
    let client = connecting.await.unwrap().unwrap();
    let mut events = client.connection_events();
    let mut second = fake.accept().await;
    second.welcome(Codec::Json, 2, 60_000).await;
    let cause = wait_event(&mut events, |e| match e {
        ConnectionEvent::Disconnected { cause } => Some(cause.clone()),
        _ => None,
    })
    .await;
    assert_eq!(cause, DisconnectCause::Silent);
    let session = within("the reconnect", client.connected()).await.unwrap();
    assert_eq!(session, livehub_protocol::SessionId::from_u64(2));
    drop(first);
    client.close().await;
}

#[tokio::test]
async fn a_bad_start_is_a_typed_error() {
    // The first frame is not a welcome.
    let mut fake = Fake::start().await;
    let addr = fake.addr;
    let connecting = tokio::spawn(async move { common::client(addr, "").connect().await });
    let mut conn = fake.accept().await;
    conn.message(Codec::Json, 1).await;
    assert!(matches!(connecting.await.unwrap(), Err(Error::Protocol(_))));

    // A welcome of the other encoding.
    let connecting = tokio::spawn(async move { common::client(addr, "").connect().await });
    let mut conn = fake.accept().await;
    conn.welcome(Codec::MsgPack, 1, 1000).await;
    assert!(matches!(connecting.await.unwrap(), Err(Error::Protocol(_))));

    // A welcome that never comes.
    let client = common::client(addr, "").connect_timeout(Duration::from_millis(200));
    let connecting = tokio::spawn(client.connect());
    let _conn = fake.accept().await;
    assert!(matches!(connecting.await.unwrap(), Err(Error::Connect(_))));

    // A refusal whose body is not the hub's.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut tcp, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 4096];
        let _ = tcp.read(&mut buf).await;
        let _ = tcp
            .write_all(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 5\r\n\r\nnope!")
            .await;
    });
    match Client::connect(format!("ws://{addr}/")).await {
        Err(Error::Refused { status, code, .. }) => {
            assert_eq!((status, code), (403, Code::Unknown("".into())));
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_request_lost_with_its_connection_fails_and_one_given_up_offline_is_never_sent() {
    let mut fake = Fake::start().await;
    let codec = Codec::Json;
    let addr = fake.addr;
    let connecting = tokio::spawn(async move {
        common::client(addr, "")
            .ack_timeout(Duration::from_millis(300))
            .connect()
            .await
    });
    let mut conn = fake.accept().await;
    conn.welcome(codec, 1, 60_000).await;
    let client = connecting.await.unwrap().unwrap();

    // In flight when the connection goes: it may or may not have run, and the caller is told.
    let publishing = tokio::spawn({
        let client = client.clone();
        async move { client.publish("t", &1).await }
    });
    let frame = conn.recv().await.unwrap();
    assert!(matches!(frame.op, ClientOp::Publish { .. }), "{frame:?}");
    drop(conn);
    assert_eq!(publishing.await.unwrap(), Err(Error::ConnectionLost));

    // Offline (the next connection has no welcome yet): queued, then given up by its caller.
    let mut conn = fake.accept().await;
    assert_eq!(client.publish("t", &2).await, Err(Error::Timeout));
    conn.welcome(codec, 2, 60_000).await;
    let pinging = tokio::spawn({
        let client = client.clone();
        async move { client.ping().await }
    });
    // The first frame of the new connection is the ping: the abandoned publish was dropped.
    let frame = conn.recv().await.unwrap();
    assert_eq!(frame.op, ClientOp::Ping, "{frame:?}");
    conn.frame(codec, livehub_protocol::ServerFrame::Pong { id: frame.id })
        .await;
    assert!(pinging.await.unwrap().is_ok());
    client.close().await;
}
