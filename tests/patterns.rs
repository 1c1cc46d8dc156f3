//! Wildcard subscriptions (`psubscribe`), on the in-process engine and over Redis: real
//! clients over WebSocket, as PROTOCOL.md describes them. A pattern delivers each matching
//! topic's messages once, with the topic's own positions; a topic resumes per topic; the
//! authorize hook sees the pattern; bad patterns get stable codes.
//!
//! Without a Redis, the Redis tests say they skipped and pass, unless `HUB_REQUIRE_REDIS=1`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/cluster.rs"]
mod cluster;
mod common;

use std::net::SocketAddr;
use std::time::Duration;

use cluster::{node, Options, SharedRedis};
use common::{serve_router, Client, Kind};
use livehub::ws::WsService;
use livehub::{async_trait, Action, ConnectRequest, Hooks, Hub, HubBuilder, Identity, Rejection};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(15);

/// `?user=` names the user; subscribing and publishing anywhere; patterns that start with a
/// wildcard are too broad.
struct PatternHooks;

#[async_trait]
impl Hooks for PatternHooks {
    async fn authenticate(&self, req: &ConnectRequest) -> Result<Identity, Rejection> {
        common::user_identity(req)
    }

    async fn authorize(&self, _who: &Identity, action: Action<'_>) -> bool {
        match action {
            Action::SubscribePattern(p) => !p.starts_with('*'),
            Action::Subscribe(_) | Action::Publish(_) => true,
            _ => false,
        }
    }
}

fn settings(b: HubBuilder) -> HubBuilder {
    b.hooks(PatternHooks).max_patterns(3)
}

async fn memory_hub() -> (Hub, SocketAddr) {
    let hub = settings(Hub::builder()).build();
    let app = axum::Router::new().route_service("/ws", WsService::new(hub.clone()));
    let addr = serve_router(app).await;
    (hub, addr)
}

async fn ws(addr: SocketAddr, user: &str) -> Client {
    Client::open(addr, Kind::Ws, user, &[], WAIT).await
}

/// The next frame that is not a `message`, or the next message; returns (topic, offset, n).
async fn message(c: &mut Client) -> (String, u64, Value) {
    let f = c.recv().await;
    assert_eq!(f["type"], "message", "{f}");
    (
        f["topic"].as_str().unwrap().to_owned(),
        f["offset"].as_u64().unwrap(),
        f["data"]["n"].clone(),
    )
}

/// A marker through a topic the client follows directly: once it arrives, everything
/// published before it has arrived too (one node delivers in publish order per session).
async fn publish_all(hub: &Hub, items: &[(&str, i64)]) {
    for (topic, n) in items {
        hub.publish(topic, &json!({"n": n})).await.unwrap();
    }
}

async fn psubscribe(c: &mut Client, pattern: &str, id: u64) -> Value {
    c.ask(json!({"type": "psubscribe", "pattern": pattern}), id)
        .await
}

/// One test body for both engines: `publisher` publishes, `addr` serves the client.
async fn delivers_each_matching_topic_once(publisher: &Hub, addr: SocketAddr) {
    let mut c = ws(addr, "ana").await;
    // Two patterns that overlap on `scores/a`, and the marker topic.
    let r = psubscribe(&mut c, "scores/*", 1).await;
    assert_eq!(r["type"], "reply", "{r}");
    assert_eq!(r["data"]["pattern"], "scores/*");
    assert_eq!(psubscribe(&mut c, "scores/a/**", 2).await["type"], "reply");
    assert_eq!(psubscribe(&mut c, "scores/**", 3).await["type"], "reply");
    let r = c
        .ask(json!({"type": "subscribe", "topic": "marker"}), 4)
        .await;
    assert_eq!(r["type"], "reply", "{r}");
    publish_all(
        publisher,
        &[
            ("scores/a", 1),
            ("news/a", 2),
            ("scores/b", 3),
            ("scores/a/x", 4),
            ("scores/a", 5),
            ("scores", 6),
            ("marker", 7),
        ],
    )
    .await;
    let mut got = Vec::new();
    loop {
        let (topic, offset, n) = message(&mut c).await;
        if topic == "marker" {
            break;
        }
        got.push((topic, offset, n));
    }
    // Each topic once per message, with its own offsets; nothing that does not match.
    assert_eq!(
        got,
        vec![
            ("scores/a".to_owned(), 1, json!(1)),
            ("scores/b".to_owned(), 1, json!(3)),
            ("scores/a/x".to_owned(), 1, json!(4)),
            ("scores/a".to_owned(), 2, json!(5)),
        ]
    );

    // A topic a pattern brought is not a subscription of its own.
    let r = c
        .ask(json!({"type": "unsubscribe", "topic": "scores/a"}), 5)
        .await;
    assert_eq!(r["code"], "not_subscribed", "{r}");
    // Dropping `scores/*` keeps what `scores/**` still matches (over Redis both patterns
    // share one glob: it stays while one of them does).
    let r = c
        .ask(json!({"type": "punsubscribe", "pattern": "scores/*"}), 6)
        .await;
    assert_eq!(r["type"], "reply", "{r}");
    publish_all(publisher, &[("scores/b", 20), ("marker", 21)]).await;
    assert_eq!(message(&mut c).await, ("scores/b".to_owned(), 2, json!(20)));
    assert_eq!(message(&mut c).await.0, "marker");
    let r = c
        .ask(json!({"type": "punsubscribe", "pattern": "scores/**"}), 7)
        .await;
    assert_eq!(r["type"], "reply", "{r}");
    // Now only `scores/a/**`: scores/a/x yes, scores/a and scores/b no.
    publish_all(
        publisher,
        &[
            ("scores/a", 8),
            ("scores/b", 9),
            ("scores/a/x", 10),
            ("marker", 11),
        ],
    )
    .await;
    assert_eq!(
        message(&mut c).await,
        ("scores/a/x".to_owned(), 2, json!(10))
    );
    assert_eq!(message(&mut c).await.0, "marker");
}

/// Resume per topic: a client that read some messages of a pattern's topics comes back with
/// their positions and gets exactly what it missed, topic by topic.
async fn resumes_per_topic(publisher: &Hub, addr: SocketAddr) {
    let mut c = ws(addr, "bo").await;
    assert_eq!(psubscribe(&mut c, "live/*", 1).await["type"], "reply");
    publish_all(publisher, &[("live/a", 1), ("live/b", 2)]).await;
    let a = c.recv().await;
    let b = c.recv().await;
    assert_eq!(
        (a["topic"].clone(), b["topic"].clone()),
        (json!("live/a"), json!("live/b"))
    );
    c.close().await;
    publish_all(publisher, &[("live/a", 3), ("live/b", 4), ("live/a", 5)]).await;

    let mut c = ws(addr, "bo").await;
    let positions = json!({
        "live/a": {"epoch": a["epoch"], "offset": a["offset"]},
        "live/b": {"epoch": b["epoch"], "offset": b["offset"]},
    });
    c.send(json!({"type": "psubscribe", "pattern": "live/*", "positions": positions, "id": 2}))
        .await;
    // The recovered messages come before the reply; each topic in its own order.
    let mut got = Vec::new();
    let mut f = c.recv().await;
    while f["type"] == "message" {
        got.push((
            f["topic"].as_str().unwrap().to_owned(),
            f["offset"].as_u64().unwrap(),
        ));
        f = c.recv().await;
    }
    assert_eq!(f["type"], "reply", "{f}");
    got.sort();
    assert_eq!(
        got,
        vec![
            ("live/a".to_owned(), 2),
            ("live/a".to_owned(), 3),
            ("live/b".to_owned(), 2)
        ]
    );
    // And live from there, no duplicate.
    publish_all(publisher, &[("live/b", 6)]).await;
    assert_eq!(message(&mut c).await, ("live/b".to_owned(), 3, json!(6)));
}

#[tokio::test]
async fn in_process_a_pattern_delivers_each_matching_topic_once_with_its_positions() {
    let (hub, addr) = memory_hub().await;
    delivers_each_matching_topic_once(&hub, addr).await;
}

#[tokio::test]
async fn in_process_a_pattern_resumes_topic_by_topic() {
    let (hub, addr) = memory_hub().await;
    resumes_per_topic(&hub, addr).await;
}

/// Two nodes over the shared Redis, with the test's hooks; `None` without a Redis.
async fn two_nodes() -> Option<(cluster::Node, cluster::Node)> {
    let redis = SharedRedis::get()?;
    let options = Options {
        hub: settings,
        ..Options::default()
    };
    let a = node(&redis.url, &redis.prefix, options).await;
    let b = node(&redis.url, &redis.prefix, options).await;
    Some((a, b))
}

#[tokio::test]
async fn over_redis_a_pattern_on_one_node_hears_topics_published_on_another() {
    let Some((a, b)) = two_nodes().await else {
        return;
    };
    // The client is on B; A publishes (B follows none of these topics on its own).
    delivers_each_matching_topic_once(&a.hub, b.addr).await;
}

#[tokio::test]
async fn over_redis_a_pattern_resumes_topic_by_topic_on_another_node() {
    let Some((a, b)) = two_nodes().await else {
        return;
    };
    resumes_per_topic(&a.hub, b.addr).await;
}

#[tokio::test]
async fn bad_patterns_get_stable_codes_and_the_session_goes_on() {
    let (hub, addr) = memory_hub().await;
    let mut c = ws(addr, "cy").await;
    let cases = [
        ("scores//*", "bad_pattern"),
        ("**/x", "bad_pattern"),
        ("scores/a*", "bad_pattern"),
        ("scores", "bad_pattern"),
        ("a/b/c/d/e/f/g/*/h", "bad_pattern"),
        // The hook finds patterns that start with a wildcard too broad.
        ("*/live", "forbidden"),
        ("**", "forbidden"),
    ];
    for (i, (pattern, code)) in cases.iter().enumerate() {
        let r = psubscribe(&mut c, pattern, i as u64 + 1).await;
        assert_eq!(r["type"], "error", "{pattern}: {r}");
        assert_eq!(r["code"], *code, "{pattern}: {r}");
    }
    let long = format!("{}/*", "a".repeat(200));
    assert_eq!(psubscribe(&mut c, &long, 20).await["code"], "bad_pattern");
    // A missing field.
    let r = c.ask(json!({"type": "psubscribe"}), 21).await;
    assert_eq!(r["code"], "bad_field", "{r}");
    // Positions must be topics of the pattern.
    let r = c
        .ask(
            json!({"type": "psubscribe", "pattern": "x/*",
                   "positions": {"y/a": {"epoch": "e", "offset": 1}}}),
            22,
        )
        .await;
    assert_eq!(r["code"], "bad_field", "{r}");
    // The limit (3 here), a duplicate, and an unknown pattern.
    for (i, p) in ["a/*", "b/*", "c/*"].iter().enumerate() {
        assert_eq!(psubscribe(&mut c, p, 30 + i as u64).await["type"], "reply");
    }
    assert_eq!(
        psubscribe(&mut c, "a/*", 33).await["code"],
        "already_subscribed"
    );
    assert_eq!(
        psubscribe(&mut c, "d/*", 34).await["code"],
        "too_many_patterns"
    );
    let r = c
        .ask(json!({"type": "punsubscribe", "pattern": "z/*"}), 35)
        .await;
    assert_eq!(r["code"], "not_subscribed", "{r}");
    // Still working: a pattern delivers.
    hub.publish("a/1", &json!({"n": 1})).await.unwrap();
    assert_eq!(message(&mut c).await, ("a/1".to_owned(), 1, json!(1)));
}

#[tokio::test]
async fn a_pattern_is_dropped_with_its_session_and_the_topics_are_let_go() {
    let (hub, addr) = memory_hub().await;
    let mut c = ws(addr, "dee").await;
    assert_eq!(psubscribe(&mut c, "room/*", 1).await["type"], "reply");
    hub.publish("room/1", &json!({"n": 1})).await.unwrap();
    assert_eq!(message(&mut c).await.0, "room/1");
    assert_eq!(hub.stats().subscriptions, 1);
    c.close().await;
    // Once the session is gone nothing follows room/1 any more, and a new session's pattern
    // starts from scratch (the old one's index entry is gone).
    let mut d = ws(addr, "eve").await;
    assert_eq!(psubscribe(&mut d, "room/*", 1).await["type"], "reply");
    hub.publish("room/2", &json!({"n": 2})).await.unwrap();
    assert_eq!(message(&mut d).await, ("room/2".to_owned(), 1, json!(2)));
    assert_eq!(hub.stats().subscriptions, 1, "only eve's room/2");
}
