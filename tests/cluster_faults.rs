//! Faults under a hub of several nodes, with real clients: Redis killed and restarted empty,
//! hung (SIGSTOP) and resumed, one node's link cut while the others publish, errors that
//! Redis answers (OOM, READONLY, scripts flushed). Each test runs a `redis-server` of its own
//! on a free port (killed by pid); node A reaches it through a TCP proxy where a test cuts one
//! node's link only.
//!
//! What must hold: local sessions stay open; publishing fails fast with a stable code (to the
//! host and to a publishing client) instead of hanging; room and direct sends are refused,
//! not buffered; the node reconnects and every subscriber gets what it missed from the
//! stream, or a `gap`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/cluster.rs"]
mod cluster;
mod common;

use std::time::{Duration, Instant};

use cluster::{fast_engine, node, offsets, Node, Options, Proxy, RedisServer};
use common::{Client, Kind};
use serde_json::{json, Value};

/// The safety net for every wait.
const WAIT: Duration = Duration::from_secs(20);

/// How long a failing publish may take: three times the command timeout (1 s) of
/// [`fast_engine`]. A generous bound, but a bound: a publish must never hang.
const BOUND: Duration = Duration::from_secs(3);

fn fast() -> Options {
    Options {
        engine: fast_engine,
        ..Options::default()
    }
}

async fn subscribe(c: &mut Client, topic: &str) {
    let r = c.ask(json!({"type": "subscribe", "topic": topic}), 1).await;
    assert_eq!(r["type"], "reply", "{r}");
}

/// The next `n` frames (messages and gaps; anything else fails the test).
async fn frames(c: &mut Client, n: usize) -> Vec<Value> {
    let mut got = Vec::with_capacity(n);
    while got.len() < n {
        let f = c.recv().await;
        assert!(
            matches!(f["type"].as_str(), Some("message" | "gap")),
            "{:?} {}: {f}",
            c.kind,
            c.user
        );
        got.push(f);
    }
    got
}

/// The session still answers: a `ping` gets its `pong` (over the connection it had).
async fn still_served(c: &mut Client, id: u64) {
    c.send(json!({"type": "ping", "id": id})).await;
    loop {
        let f = c.recv().await;
        if f["type"] == "pong" && f["id"] == id {
            return;
        }
        assert!(f["type"] != "close", "{:?}: {f}", c.kind);
    }
}

/// A host publish that must fail with `code`, fast.
async fn host_publish_fails(n: &Node, topic: &str, code: &str) -> String {
    let t0 = Instant::now();
    let err = n.hub.publish(topic, &json!("nope")).await.unwrap_err();
    assert!(
        t0.elapsed() < BOUND,
        "a failing publish took {:?}",
        t0.elapsed()
    );
    assert_eq!(err.code().as_str(), code, "{err}");
    err.to_string()
}

/// A client publish that must be answered with an `error` of `code`, fast.
async fn client_publish_fails(c: &mut Client, topic: &str, id: u64, code: &str) -> String {
    let t0 = Instant::now();
    let frame = json!({"type": "publish", "topic": topic, "data": "nope"});
    let r = c.ask(frame, id).await;
    assert!(
        t0.elapsed() < BOUND,
        "a failing publish took {:?}",
        t0.elapsed()
    );
    assert_eq!(
        (r["type"].as_str(), r["code"].as_str()),
        (Some("error"), Some(code)),
        "{r}"
    );
    r["message"].as_str().unwrap_or("").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_then_restarted_empty_keeps_sessions_and_tells_the_new_epoch() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let a = node(&server.url(), "faults", fast()).await;
    let b = node(&server.url(), "faults", fast()).await;
    let topic = "live";
    let mut ws = b.client(Kind::Ws, "ws", &[], WAIT).await;
    subscribe(&mut ws, topic).await;
    let mut sse = b.client(Kind::Sse, "sse", &[topic], WAIT).await;
    let mut publisher = a.client(Kind::Ws, "pub", &[], WAIT).await;
    b.hub.join(ws.session, "room").await.unwrap();
    let before = a.hub.publish(topic, &json!("before")).await.unwrap();
    for s in [&mut ws, &mut sse] {
        assert_eq!(offsets(&frames(s, 1).await), [1]);
    }

    server.kill();
    a.engine_connected(false, WAIT).await;
    b.engine_connected(false, WAIT).await;
    // Publishing fails fast with `engine_unavailable`, from the host and from a client.
    host_publish_fails(&a, topic, "engine_unavailable").await;
    client_publish_fails(&mut publisher, topic, 2, "engine_unavailable").await;
    // A subscribe needs the stream: refused too, and the session stays.
    let mut late = b.client(Kind::Ws, "late", &[], WAIT).await;
    let r = late
        .ask(json!({"type": "subscribe", "topic": topic}), 7)
        .await;
    assert_eq!(
        (r["type"].as_str(), r["code"].as_str()),
        (Some("error"), Some("engine_unavailable")),
        "{r}"
    );
    // Sends to rooms, sessions of other nodes and every node are refused, not kept.
    let refused = a.hub.to("room").emit("e", &json!(1)).unwrap_err();
    assert_eq!(refused.code().as_str(), "engine_unavailable");
    let refused = a.hub.emit_to(ws.session, "e", &json!(1)).unwrap_err();
    assert_eq!(refused.code().as_str(), "engine_unavailable");
    assert!(a.hub.emit_all("e", &json!(1)).is_err());
    // Every local session is still open and served.
    still_served(&mut ws, 3).await;
    still_served(&mut sse, 4).await;
    still_served(&mut publisher, 5).await;
    assert_eq!((a.hub.session_count(), b.hub.session_count()), (1, 3));

    // Redis is back, empty: the nodes reconnect (and resubscribe) by themselves.
    server.restart();
    a.engine_connected(true, WAIT).await;
    b.engine_connected(true, WAIT).await;
    assert_eq!(a.hub.engine_stats().reconnects, 1);
    assert_eq!(b.hub.stats().node.engine_disconnects, 1);
    // The stream is new (another epoch): subscribers are told, then get it from its start.
    let after = a.hub.publish(topic, &json!("after")).await.unwrap();
    assert_ne!(after.epoch, before.epoch);
    assert_eq!(after.offset, 1);
    for s in [&mut ws, &mut sse] {
        let got = frames(s, 2).await;
        assert_eq!(got[0]["type"], "gap", "{:?}: {}", s.kind, got[0]);
        assert_eq!(got[0]["reason"], "epoch");
        assert_eq!(got[0]["epoch"], &*after.epoch);
        assert_eq!(
            (got[1]["offset"].as_u64(), &got[1]["data"]),
            (Some(1), &json!("after"))
        );
    }
    // Client publishes and room sends work again.
    let r = publisher
        .ask(
            json!({"type": "publish", "topic": topic, "data": "again"}),
            6,
        )
        .await;
    assert_eq!(r["data"]["offset"], 2, "{r}");
    for s in [&mut ws, &mut sse] {
        assert_eq!(offsets(&frames(s, 1).await), [2]);
    }
    a.hub.to("room").emit("back", &json!(null)).unwrap();
    let f = ws.recv().await;
    assert_eq!(f["event"], "back", "{f}");
    // Presence that Redis lost comes back: the nodes put their members in again.
    let mut users = Vec::new();
    for _ in 0..200 {
        let members = a.hub.topic_members(topic).await.unwrap();
        users = members.into_iter().map(|m| m.user).collect::<Vec<_>>();
        users.sort();
        if users == ["sse", "ws"] {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(users, ["sse", "ws"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_redis_fails_publishes_fast_and_nothing_is_lost_after_it_resumes() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let a = node(&server.url(), "faults", fast()).await;
    let b = node(&server.url(), "faults", fast()).await;
    let topic = "hung";
    let mut sub = b.client(Kind::Poll, "poll", &[], WAIT).await;
    subscribe(&mut sub, topic).await;
    let mut publisher = a.client(Kind::Ws, "pub", &[], WAIT).await;
    let first = a.hub.publish(topic, &json!(1)).await.unwrap();
    assert_eq!(offsets(&frames(&mut sub, 1).await), [1]);

    // Redis stops answering (the connections stay open): no publish hangs.
    server.signal("-STOP");
    host_publish_fails(&a, topic, "engine_unavailable").await;
    client_publish_fails(&mut publisher, topic, 2, "engine_unavailable").await;
    a.engine_connected(false, WAIT).await;
    b.engine_connected(false, WAIT).await;
    host_publish_fails(&a, topic, "engine_unavailable").await;
    still_served(&mut sub, 3).await;

    // Redis resumes with its data. Whatever it had taken in before it stopped (a publish
    // whose answer timed out may have been run) reaches the subscriber, in order, and no gap.
    server.signal("-CONT");
    a.engine_connected(true, WAIT).await;
    b.engine_connected(true, WAIT).await;
    let last = a.hub.publish(topic, &json!("last")).await.unwrap();
    assert_eq!(last.epoch, first.epoch, "the data was kept");
    let got = frames(&mut sub, (last.offset - 1) as usize).await;
    assert_eq!(offsets(&got), (2..=last.offset).collect::<Vec<_>>());
    assert_eq!(got.last().unwrap()["data"], "last");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_redis_recovers_what_others_published_meanwhile() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let redis_addr = format!("127.0.0.1:{}", server.port).parse().unwrap();
    let proxy = Proxy::start(redis_addr).await;
    // A reaches Redis through the proxy, B directly. No periodic check: only the reconnect
    // makes A look at the streams.
    let options = Options {
        engine: fast_engine,
        hub: |h| h.engine_check_interval(Duration::from_secs(3600)),
    };
    let a = node(&proxy.url(), "faults", options).await;
    let b = node(&server.url(), "faults", options).await;
    let topic = "cut";
    let mut ws = a.client(Kind::Ws, "ws", &[], WAIT).await;
    subscribe(&mut ws, topic).await;
    let mut sse = a.client(Kind::Sse, "sse", &[topic], WAIT).await;
    for i in 1..=2 {
        b.hub.publish(topic, &json!(i)).await.unwrap();
    }
    for s in [&mut ws, &mut sse] {
        assert_eq!(offsets(&frames(s, 2).await), [1, 2]);
    }

    // A's link goes; B publishes 3..=7 meanwhile (Redis is fine).
    proxy.cut();
    a.engine_connected(false, WAIT).await;
    for i in 3..=7 {
        b.hub.publish(topic, &json!(i)).await.unwrap();
    }
    host_publish_fails(&a, topic, "engine_unavailable").await;
    still_served(&mut ws, 2).await;

    // A's link is back: A reconnects, checks the stream's top, and its subscribers get
    // exactly what they missed, from history, then live messages; no gap, nothing twice.
    proxy.restore();
    a.engine_connected(true, WAIT).await;
    for s in [&mut ws, &mut sse] {
        let got = frames(s, 5).await;
        assert_eq!(offsets(&got), [3, 4, 5, 6, 7], "{:?}", s.kind);
        assert_eq!(got[0]["data"], 3);
    }
    b.hub.publish(topic, &json!(8)).await.unwrap();
    for s in [&mut ws, &mut sse] {
        assert_eq!(offsets(&frames(s, 1).await), [8]);
    }
    let stats = a.hub.stats();
    assert_eq!(stats.node.engine_disconnects, 1);
    assert_eq!(stats.engine.reconnects, 1);
    assert!(stats.node.repairs >= 1, "{:?}", stats.node);

    // Once more, with more missed than the history holds (100 by default): a `gap` says
    // what is lost, then the rest follows.
    proxy.cut();
    a.engine_connected(false, WAIT).await;
    for i in 9..=130 {
        b.hub.publish(topic, &json!(i)).await.unwrap();
    }
    proxy.restore();
    a.engine_connected(true, WAIT).await;
    for s in [&mut ws, &mut sse] {
        let got = frames(s, 1 + 100).await;
        let gap = &got[0];
        assert_eq!(gap["type"], "gap", "{:?}: {gap}", s.kind);
        assert_eq!(
            (gap["from"].as_u64(), gap["to"].as_u64()),
            (Some(9), Some(30)),
            "{gap}"
        );
        assert_eq!(gap["reason"], "history");
        assert_eq!(offsets(&got[1..]), (31..=130).collect::<Vec<_>>());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_redis_answers_reach_the_host_and_clients_with_their_code() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let a = node(&server.url(), "faults", fast()).await;
    let topic = "errors";
    // One client publishes, another follows (a publisher's own reply and the message can
    // come in either order).
    let mut c = a.client(Kind::Ws, "pub", &[], WAIT).await;
    let mut sub = a.client(Kind::Ws, "sub", &[], WAIT).await;
    subscribe(&mut sub, topic).await;

    // Out of memory: `engine_error`, in Redis's words.
    server.run(&["CONFIG", "SET", "maxmemory", "1"]);
    let message = host_publish_fails(&a, topic, "engine_error").await;
    assert!(message.contains("OOM"), "{message}");
    let message = client_publish_fails(&mut c, topic, 2, "engine_error").await;
    assert!(message.contains("OOM"), "{message}");
    server.run(&["CONFIG", "SET", "maxmemory", "0"]);
    let ok = a.hub.publish(topic, &json!("room again")).await.unwrap();
    assert_eq!(ok.offset, 1);
    assert_eq!(offsets(&frames(&mut sub, 1).await), [1]);

    // The scripts lost (as after a restart that kept the data): loaded again, unnoticed.
    server.run(&["SCRIPT", "FLUSH"]);
    let r = c
        .ask(
            json!({"type": "publish", "topic": topic, "data": "reloaded"}),
            3,
        )
        .await;
    assert_eq!(r["data"]["offset"], 2, "{r}");
    assert_eq!(offsets(&frames(&mut sub, 1).await), [2]);

    // A read-only replica (as after a failover): `engine_error` READONLY, and a reconnect.
    let nowhere = RedisServer::free_port().to_string();
    server.run(&["REPLICAOF", "127.0.0.1", &nowhere]);
    let message = host_publish_fails(&a, topic, "engine_error").await;
    assert!(message.contains("READONLY"), "{message}");
    server.run(&["REPLICAOF", "NO", "ONE"]);
    cluster::until(WAIT, "the reconnect after READONLY", || {
        a.hub.engine_stats().reconnects == 1 && a.hub.engine_stats().connected
    })
    .await;
    let p = a.hub.publish(topic, &json!("primary")).await.unwrap();
    assert_eq!(p.offset, 3);
    assert_eq!(offsets(&frames(&mut sub, 1).await), [3]);
    still_served(&mut c, 4).await;
    still_served(&mut sub, 5).await;
}
