//! Graceful shutdown of a host's axum server with the hub inside it: `hub.shutdown(grace)` tells
//! every client why over its own transport (WebSocket close 1001, a final SSE `close` event, a
//! poll answered with its queued frames and `close`), then axum's graceful shutdown completes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{raw_request, Ws};
use futures_util::{SinkExt, StreamExt};
use livehub::poll::PollService;
use livehub::sse::SseService;
use livehub::ws::WsService;
use livehub::Hub;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(10);

/// One HTTP/1.1 request on a fresh connection; returns status and body (whole, de-chunked
/// loosely: the tests only look for substrings and JSON objects in it).
async fn request(addr: SocketAddr, method: &str, target: &str) -> (u16, String) {
    send(addr, method, target, "").await
}

/// [`request`] with a body.
async fn send(addr: SocketAddr, method: &str, target: &str, body: &str) -> (u16, String) {
    let req = format!(
        "{method} {target} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let text = String::from_utf8_lossy(&raw_request(addr, &req, WAIT).await).into_owned();
    let status = text
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or_default();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// The first JSON object in a (possibly chunked) body.
fn json_in(body: &str) -> Value {
    let start = body.find('{').unwrap();
    let end = body.rfind('}').unwrap();
    serde_json::from_str(&body[start..=end]).unwrap()
}

/// The three transports and a route of the host's own.
fn app(hub: &Hub) -> axum::Router {
    axum::Router::new()
        .route("/health", axum::routing::get(|| async { "ok" }))
        .route_service("/ws", WsService::new(hub.clone()))
        .route_service("/events", SseService::new(hub.clone()))
        .route_service("/poll", PollService::new(hub.clone()))
}

/// A WebSocket client subscribed to `news` (its reply read).
async fn subscribed_ws(addr: SocketAddr) -> Ws {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
        .await
        .unwrap();
    ws.send(Message::Text(
        r#"{"type":"subscribe","topic":"news","id":1}"#.into(),
    ))
    .await
    .unwrap();
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next()).await.unwrap();
        if let Some(Ok(Message::Text(t))) = msg {
            if t.contains(r#""type":"reply""#) {
                return ws;
            }
        }
    }
}

#[tokio::test]
async fn hub_shutdown_then_axum_graceful_shutdown_on_every_transport() {
    let hub = Hub::builder().build();
    let app = app(&hub);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stop_rx.await;
            })
            .await
    });

    // WebSocket client, subscribed.
    let mut ws = subscribed_ws(addr).await;

    // SSE stream on the same topic, read to its end in the background.
    let sse = tokio::spawn(request(addr, "GET", "/events?topic=news"));

    // Poll session: open, take the welcome, then leave a long-poll waiting.
    let (status, body) = request(addr, "POST", "/poll").await;
    assert_eq!(status, 200, "{body}");
    let opened = json_in(&body);
    let session = opened["session"].as_str().unwrap().to_owned();
    let (status, _) = send(
        addr,
        "POST",
        &format!("/poll?session={session}"),
        r#"{"type":"subscribe","topic":"news","id":1}"#,
    )
    .await;
    assert_eq!(status, 202);
    let (_, first) = request(addr, "GET", &format!("/poll?session={session}&cursor=0")).await;
    assert!(first.contains(r#""type":"reply""#), "{first}");
    let cursor = json_in(&first)["cursor"].as_str().unwrap().to_owned();
    let waiting = tokio::spawn({
        let target = format!("/poll?session={session}&cursor={cursor}");
        async move { request(addr, "GET", &target).await }
    });

    // Everyone is in: all three sessions exist.
    while hub.session_count() < 3 {
        tokio::task::yield_now().await;
    }
    hub.publish("news", &"last words").await.unwrap();

    let shutdown = tokio::spawn({
        let hub = hub.clone();
        async move { hub.shutdown(Duration::from_secs(30)).await }
    });

    // WebSocket: the queued message, then close 1001 "shutdown".
    let mut got_message = false;
    let close = loop {
        match tokio::time::timeout(WAIT, ws.next()).await.unwrap() {
            Some(Ok(Message::Text(t))) => got_message |= t.contains("last words"),
            Some(Ok(Message::Close(Some(f)))) => break (u16::from(f.code), f.reason.to_string()),
            Some(Ok(_)) => {}
            other => panic!("no close frame: {other:?}"),
        }
    };
    assert!(got_message);
    common::assert_shutdown_close(close.0, &close.1);
    // Reading on lets the client answer the close, as a browser does.
    let _ = tokio::time::timeout(WAIT, async { while ws.next().await.is_some() {} }).await;

    // SSE: the message, then a close event, then the end of the body.
    let (status, stream) = tokio::time::timeout(WAIT, sse).await.unwrap().unwrap();
    assert_eq!(status, 200);
    let msg_at = stream.find("last words").expect("SSE missed the message");
    let close_at = stream.find("event: close").expect("no SSE close event");
    assert!(msg_at < close_at);
    assert!(stream[close_at..].contains(r#""reason":"shutdown""#));

    // Poll: the waiting poll is answered with the message and the close frame.
    let (status, answer) = tokio::time::timeout(WAIT, waiting).await.unwrap().unwrap();
    assert_eq!(status, 200, "{answer}");
    let answer = json_in(&answer);
    let frames = answer["frames"].as_array().unwrap();
    assert_eq!(frames.last().unwrap()["type"], "close");
    assert_eq!(frames.last().unwrap()["reason"], "shutdown");
    assert!(frames.iter().any(|f| f["data"] == "last words"));
    // The client acknowledges the close: its session is gone.
    let next = answer["cursor"].as_str().unwrap();
    let (status, _) = request(
        addr,
        "GET",
        &format!("/poll?session={session}&cursor={next}"),
    )
    .await;
    assert_eq!(status, 404);

    // Every transport finished by itself: nothing had to be forced.
    let report = tokio::time::timeout(WAIT, shutdown).await.unwrap().unwrap();
    assert_eq!((report.sessions, report.forced), (3, 0));

    // New sessions are refused while the host finishes.
    let (status, _) = request(addr, "POST", "/poll").await;
    assert_eq!(status, 503);

    // The host's own graceful shutdown now completes: nothing of the hub holds it open.
    stop_tx.send(()).unwrap();
    tokio::time::timeout(WAIT, server)
        .await
        .expect("axum did not shut down")
        .unwrap()
        .unwrap();
    assert_eq!(hub.session_count(), 0);
}

// Regression: with one SSE stream open, axum's graceful shutdown went on for 7.5 s after the
// signal (until the host thought of calling `hub.shutdown` in its signal future); nothing said
// so. `livehub::shutdown_signal` ties the hub's shutdown to the server's.
#[tokio::test]
async fn shutdown_signal_ends_every_stream_then_axum_finishes_within_the_grace() {
    const GRACE: Duration = Duration::from_secs(3);
    let hub = Hub::builder().build();
    let app = app(&hub);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn({
        let stop = livehub::shutdown_signal(&hub, stop_rx, GRACE);
        async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(stop)
                .await
        }
    });

    // A WebSocket, subscribed; an SSE stream, read to its end in the background; a poll
    // session with a long-poll waiting, whose client acknowledges what it gets, as it should.
    let mut ws = subscribed_ws(addr).await;
    let sse = tokio::spawn(request(addr, "GET", "/events?topic=news"));
    let (status, body) = request(addr, "POST", "/poll").await;
    assert_eq!(status, 200, "{body}");
    let session = json_in(&body)["session"].as_str().unwrap().to_owned();
    let (_, first) = request(addr, "GET", &format!("/poll?session={session}&cursor=0")).await;
    let cursor = json_in(&first)["cursor"].as_str().unwrap().to_owned();
    let poller = tokio::spawn(async move {
        let (status, answer) = request(
            addr,
            "GET",
            &format!("/poll?session={session}&cursor={cursor}"),
        )
        .await;
        let answer = json_in(&answer);
        let next = answer["cursor"].as_str().unwrap().to_owned();
        let (ack, _) = request(
            addr,
            "GET",
            &format!("/poll?session={session}&cursor={next}"),
        )
        .await;
        (status, answer, ack)
    });
    while hub.session_count() < 3 || hub.stats().subscriptions < 2 {
        tokio::task::yield_now().await;
    }

    let signalled = tokio::time::Instant::now();
    stop_tx.send(()).unwrap();

    // Each client is told why, over its own transport.
    let close = loop {
        match tokio::time::timeout(WAIT, ws.next()).await.unwrap() {
            Some(Ok(Message::Close(Some(f)))) => break (u16::from(f.code), f.reason.to_string()),
            Some(Ok(_)) => {}
            other => panic!("no close frame: {other:?}"),
        }
    };
    common::assert_shutdown_close(close.0, &close.1);
    let _ = tokio::time::timeout(WAIT, async { while ws.next().await.is_some() {} }).await;
    let (status, stream) = tokio::time::timeout(WAIT, sse).await.unwrap().unwrap();
    assert_eq!(status, 200);
    let close_at = stream.find("event: close").expect("no SSE close event");
    assert!(stream[close_at..].contains(r#""code":1001,"reason":"shutdown""#));
    let (status, answer, ack) = tokio::time::timeout(WAIT, poller).await.unwrap().unwrap();
    assert_eq!(status, 200);
    let last = answer["frames"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (last["type"].clone(), last["code"].clone()),
        ("close".into(), 1001.into())
    );
    assert_eq!(ack, 404, "the acknowledged session is gone");

    // And the server is done, within the grace (plus a margin for a busy machine).
    tokio::time::timeout(GRACE + Duration::from_secs(5), server)
        .await
        .expect("axum did not finish")
        .unwrap()
        .unwrap();
    let took = signalled.elapsed();
    assert!(took < GRACE + Duration::from_secs(2), "took {took:?}");
    assert_eq!(hub.session_count(), 0);
    assert!(hub.is_shutting_down());
}
