//! The hub's services nested in an axum router (`Router::nest`, which strips the prefix before
//! the service sees the request): the URLs the hub hands back to the client keep the prefix.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use livehub::sse::SseService;
use livehub::Hub;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn sse_commands_url_keeps_the_prefix_of_a_nested_router() {
    let hub = Hub::builder().build();
    let api = axum::Router::new().route_service("/events", SseService::new(hub.clone()));
    let app = axum::Router::new().nest("/hub", api);
    let addr = serve_router(app).await;
    let (status, _, body) = send_request(
        addr,
        "GET",
        "/hub/events",
        &[("accept", "text/event-stream".to_owned())],
        b"",
        WAIT,
    )
    .await;
    assert_eq!(status, 200);
    let mut stream = EventStream::new(body);
    assert_eq!(stream.next_frame().await["type"], "welcome");
    let (url, token) = stream.session().await;
    assert!(url.starts_with("/hub/events?session="), "{url}");
    // And the URL works: a command posted there runs.
    let resp = http(
        addr,
        "POST",
        &url,
        &[("hub-session-token", token)],
        json!({"type": "ping", "id": 1}).to_string(),
        WAIT,
    )
    .await;
    assert_eq!(resp.status, 202, "{:?}", resp.body);
    let pong = tokio::time::timeout(WAIT, stream.next_frame())
        .await
        .unwrap();
    assert_eq!(
        (pong["type"].as_str(), pong["id"].as_u64()),
        (Some("pong"), Some(1))
    );
}
