//! Control messages between nodes: each route reaches exactly the right nodes, and the sender
//! never hears itself.
//!
//! Absence is shown without sleeping: Redis delivers to one subscriber in the order it ran
//! the PUBLISHes, so a marker published after a message arrives after it, had it arrived.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use bytes::Bytes;
use common::{node, NodeOptions, SharedRedis};
use livehub_core::broker::{Broker, Channel, Route};

fn b(s: &'static str) -> Bytes {
    Bytes::from_static(s.as_bytes())
}

fn texts(seen: Vec<Vec<u8>>) -> Vec<String> {
    seen.into_iter()
        .map(|m| String::from_utf8(m).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_route_reaches_exactly_its_nodes() {
    let Some(redis) = SharedRedis::get() else {
        return;
    };
    let mut a = node(&redis.url, &redis.prefix, NodeOptions::default()).await;
    let mut b_ = node(&redis.url, &redis.prefix, NodeOptions::default()).await;
    let mut c = node(&redis.url, &redis.prefix, NodeOptions::default()).await;
    // A follows topic t and room r; B is in room r only; C follows nothing.
    a.engine.subscribe(Channel::Topic("t")).await.unwrap();
    a.engine.subscribe(Channel::Room("r")).await.unwrap();
    b_.engine.subscribe(Channel::Room("r")).await.unwrap();

    c.engine.send(Route::Topic("t"), b("to-topic")).unwrap();
    c.engine.send(Route::Room("r"), b("to-room")).unwrap();
    c.engine.send(Route::Node(b_.id), b("to-b")).unwrap();
    c.engine.send(Route::Node(c.id), b("to-c-itself")).unwrap();
    c.engine
        .send(Route::Room("elsewhere"), b("to-nobody"))
        .unwrap();
    c.engine.send(Route::All, b("from-c-to-all")).unwrap();

    // B heard C's last message, so every one of C's ran before what follows.
    assert_eq!(
        texts(b_.heard.controls_until(b"from-c-to-all").await),
        ["to-room", "to-b", "from-c-to-all"]
    );
    b_.engine.send(Route::All, b("from-b-to-all")).unwrap();
    assert_eq!(
        texts(a.heard.controls_until(b"from-b-to-all").await),
        ["to-topic", "to-room", "from-c-to-all", "from-b-to-all"]
    );
    // C heard none of its own, not even the one to its own node.
    assert_eq!(
        texts(c.heard.controls_until(b"from-b-to-all").await),
        ["from-b-to-all"]
    );
    // And B did not hear its own.
    a.engine.send(Route::All, b("from-a-to-all")).unwrap();
    assert_eq!(
        texts(b_.heard.controls_until(b"from-a-to-all").await),
        ["from-a-to-all"]
    );

    // Leaving the room stops its messages.
    a.engine.unsubscribe(Channel::Room("r")).await.unwrap();
    c.engine.send(Route::Room("r"), b("room-again")).unwrap();
    c.engine.send(Route::Node(a.id), b("to-a")).unwrap();
    assert_eq!(texts(a.heard.controls_until(b"to-a").await), ["to-a"]);
    assert_eq!(
        texts(b_.heard.controls_until(b"room-again").await),
        ["room-again"]
    );

    // A control message on a topic channel is not a publication.
    assert!(a.heard.nothing_delivered_yet());
    for n in [&a, &b_, &c] {
        assert_eq!(n.engine.stats().undecodable, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_is_refused_before_attach_and_when_the_queue_is_full() {
    let Some(redis) = SharedRedis::get() else {
        return;
    };
    let bare = livehub_redis::RedisEngine::builder(&redis.url)
        .prefix(&redis.prefix)
        .build()
        .await
        .unwrap();
    let err = bare.send(Route::All, b("x")).unwrap_err();
    assert_eq!(err.code().as_str(), "engine_unavailable");

    let a = node(
        &redis.url,
        &redis.prefix,
        NodeOptions {
            builder: |b| b.outbound_queue(4),
            ..NodeOptions::default()
        },
    )
    .await;
    // Never waits: past what the queue holds (and what the writer took), refused at once.
    let mut refused = 0;
    for _ in 0..10_000 {
        if a.engine.send(Route::All, b("burst")).is_err() {
            refused += 1;
        }
    }
    assert!(refused > 0, "a bounded queue refuses a burst");
}
