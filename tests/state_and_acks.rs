//! On every transport: a first-time subscriber asks for the current state (`last`), and the
//! server sends an event that waits for the client's answer (`emit_with_ack`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use livehub::poll::PollService;
use livehub::sse::SseService;
use livehub::ws::WsService;
use livehub::{async_trait, AckError, Action, ConnectRequest, Hooks, Hub, Identity, Rejection};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(10);

struct Users;

#[async_trait]
impl Hooks for Users {
    async fn authenticate(&self, req: &ConnectRequest) -> Result<Identity, Rejection> {
        user_identity(req)
    }

    async fn authorize(&self, _who: &Identity, _action: Action<'_>) -> bool {
        true
    }
}

async fn server() -> (Hub, std::net::SocketAddr) {
    let hub = Hub::builder().hooks(Users).history_len(50).build();
    let app = axum::Router::new()
        .route_service("/ws", WsService::new(hub.clone()))
        .route_service("/sse", SseService::new(hub.clone()))
        .route_service("/poll", PollService::new(hub.clone()));
    (hub.clone(), serve_router(app).await)
}

#[tokio::test]
async fn a_first_subscribe_gets_the_current_state_on_every_transport() {
    let (hub, addr) = server().await;
    for m in 1..=4 {
        hub.publish("score", &json!({"minute": m})).await.unwrap();
    }
    for kind in KINDS {
        let mut c = Client::open(addr, kind, "ana", &[], WAIT).await;
        let reply = c
            .ask(json!({"type": "subscribe", "topic": "score", "last": 1}), 1)
            .await;
        assert_eq!(reply["type"], "reply", "{kind:?}: {reply}");
        assert_eq!(reply["data"]["offset"], 4);
        let m = c.recv().await;
        assert_eq!(
            (m["type"].as_str(), m["offset"].as_u64(), &m["data"]),
            (Some("message"), Some(4), &json!({"minute": 4})),
            "{kind:?}: the latest state at once"
        );
        c.close().await;
    }
    // SSE also takes it in its URL: `?topic=score&last=2`.
    let path = with_user("/sse?topic=score&last=2", "bo");
    let (status, _, body) = send_request(
        addr,
        "GET",
        &path,
        &[("accept", "text/event-stream".to_owned())],
        b"",
        WAIT,
    )
    .await;
    assert_eq!(status, 200);
    let mut stream = EventStream::new(body);
    let mut offsets = Vec::new();
    while offsets.len() < 2 {
        let f = tokio::time::timeout(WAIT, stream.next_frame())
            .await
            .unwrap();
        if f["type"] == "message" {
            offsets.push(f["offset"].as_u64().unwrap());
        }
    }
    assert_eq!(offsets, [3, 4]);
    // A bad `last` in the URL is refused before streaming.
    let path = with_user("/sse?topic=score&last=x", "bo");
    let (status, _, body) = send_request(addr, "GET", &path, &[], b"", WAIT).await;
    assert_eq!(status, 400);
    let body: serde_json::Value = serde_json::from_slice(&body.collect().await).unwrap();
    assert_eq!(body["code"], "bad_field");
}

#[tokio::test]
async fn the_server_waits_for_a_clients_answer_on_every_transport() {
    let (hub, addr) = server().await;
    for kind in KINDS {
        let mut c = Client::open(addr, kind, "ana", &[], WAIT).await;
        let asking = {
            let (hub, id) = (hub.clone(), c.session);
            tokio::spawn(async move {
                hub.emit_with_ack(id, "confirm", &json!({"order": 7}), WAIT)
                    .await
            })
        };
        let ev = loop {
            let f = c.recv().await;
            if f["type"] == "event" {
                break f;
            }
        };
        assert_eq!(ev["event"], "confirm", "{kind:?}");
        assert_eq!(ev["data"], json!({"order": 7}));
        let n = ev["ack"].as_u64().expect("an ack number");
        let r = c
            .ask(
                json!({"type": "ack", "ack": n, "data": {"accepted": kind.name()}}),
                2,
            )
            .await;
        assert_eq!(r["type"], "reply", "{kind:?}: {r}");
        let answer = asking.await.unwrap().unwrap();
        assert_eq!(
            answer.decode::<serde_json::Value>().unwrap(),
            json!({"accepted": kind.name()})
        );
        // The same number again answers nothing.
        let r = c.ask(json!({"type": "ack", "ack": n}), 3).await;
        assert_eq!(r["code"], "unknown_ack", "{kind:?}");

        // A session that goes away before answering: the host hears it.
        let asking = {
            let (hub, id) = (hub.clone(), c.session);
            tokio::spawn(async move { hub.emit_with_ack(id, "confirm", &1, WAIT).await })
        };
        loop {
            if c.recv().await["type"] == "event" {
                break;
            }
        }
        hub.disconnect(c.session);
        assert_eq!(
            asking.await.unwrap().unwrap_err(),
            AckError::Disconnected,
            "{kind:?}"
        );
    }
}
