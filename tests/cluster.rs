//! Several nodes acting as one hub over Redis: real clients on different nodes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use hub::Hub;
use hub_redis::RedisEngine;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(10);

async fn node(url: &str, prefix: &str) -> (Hub, std::net::SocketAddr) {
    let engine = RedisEngine::builder(url)
        .prefix(prefix)
        .build()
        .await
        .expect("redis engine");
    let hub = Hub::builder()
        .broker(Arc::new(engine.clone()))
        .presence_store(Arc::new(engine.clone()))
        .build();
    engine.ready().await;
    let addr = serve_ws_hyper(hub.clone(), |hub, peer| {
        hub::ws::WsService::new(hub).with_peer(peer)
    })
    .await;
    (hub, addr)
}

#[tokio::test]
async fn publish_on_a_reaches_b() {
    let url = "redis://127.0.0.1:6379";
    let prefix = format!("hubclu-{}", std::process::id());
    let (a, _addr_a) = node(url, &prefix).await;
    let (_b, addr_b) = node(url, &prefix).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr_b}/"))
        .await
        .unwrap();
    assert_eq!(recv_json(&mut ws, WAIT).await["type"], "welcome");
    send_json(&mut ws, json!({"type":"subscribe","topic":"t","id":1})).await;
    let r = recv_json(&mut ws, WAIT).await;
    assert_eq!(r["type"], "reply", "{r}");
    for i in 1..=5 {
        let pos = a.publish("t", &json!({"n": i})).await.unwrap();
        assert_eq!(pos.offset, i);
    }
    for i in 1..=5u64 {
        let m = recv_json(&mut ws, WAIT).await;
        assert_eq!(m["offset"], i, "{m}");
    }
}
