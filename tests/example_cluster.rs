//! The cluster example: the feed published on node 1 reaches a page's WebSocket on node 2,
//! through Redis, from the board's position on; and a page that moves to another node
//! resumes there without missing an update.
//!
//! The example's own code is compiled into this test and started on free ports against the
//! shared Redis under a prefix of the test's own (skipped without Redis, unless
//! `HUB_REQUIRE_REDIS=1`). The feed is ticked by hand: every wait is for a frame.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[allow(dead_code)] // `main` and the like are for the example binary only.
#[path = "../examples/cluster.rs"]
mod example;

mod common;
#[path = "../livehub-redis/tests/common/servers.rs"]
mod servers;

use std::net::SocketAddr;
use std::time::Duration;

use common::{raw_request, recv_json, send_json, Ws};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(10);

/// `GET /matches`: the board, and the position of `scores/all` it reflects.
async fn board(addr: SocketAddr) -> (Vec<Value>, String, u64) {
    let req = format!("GET /matches HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let text = String::from_utf8(raw_request(addr, &req, WAIT).await).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("a header block");
    let header = |name: &str| {
        head.lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_owned())
            .expect("the position headers")
    };
    let matches: Vec<Value> = serde_json::from_str(body).unwrap();
    (
        matches,
        header("x-scores-epoch"),
        header("x-scores-offset").parse().unwrap(),
    )
}

/// A page's WebSocket on `addr`, subscribed to the board from `(epoch, offset)`.
async fn page(addr: SocketAddr, epoch: &str, offset: u64) -> Ws {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
        .await
        .unwrap();
    assert_eq!(recv_json(&mut ws, WAIT).await["type"], "welcome");
    let since = json!({"epoch": epoch, "offset": offset});
    send_json(
        &mut ws,
        json!({"type": "subscribe", "topic": "scores/all", "id": 1, "since": since}),
    )
    .await;
    let reply = recv_json(&mut ws, WAIT).await;
    assert_eq!(reply["type"], "reply", "{reply}");
    ws
}

/// Ticks until the feed publishes; returns how many updates it published.
async fn tick(feed: &example::sports::Feed) -> usize {
    for _ in 0..1000 {
        let n = feed.tick().await;
        if n > 0 {
            return n;
        }
    }
    panic!("the feed published nothing in 1000 ticks");
}

/// The next `n` messages: their offsets and match ids.
async fn updates(ws: &mut Ws, n: usize) -> Vec<(u64, String)> {
    let mut got = Vec::new();
    while got.len() < n {
        let f = recv_json(ws, WAIT).await;
        assert_eq!(f["type"], "message", "{f}");
        got.push((
            f["offset"].as_u64().unwrap(),
            f["data"]["id"].as_str().unwrap().to_owned(),
        ));
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_on_node_1_is_live_on_node_2() {
    let Some(redis) = servers::SharedRedis::get() else {
        return;
    };
    let free: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let cluster = example::start(&redis.url, &redis.prefix, &[free, free], 7)
        .await
        .unwrap();
    let (one, two) = (&cluster.nodes[0], &cluster.nodes[1]);
    assert_ne!(one.hub.node_id(), two.hub.node_id());

    // The board as node 2 serves it: every match, at the position of its last update.
    let (matches, epoch, offset) = board(two.addr).await;
    assert_eq!(matches.len(), example::sports::MATCHES);
    assert_eq!(offset, example::sports::MATCHES as u64);

    // A page on node 2 gets every update node 1 publishes from then on, in order.
    let mut ws = page(two.addr, &epoch, offset).await;
    let n = tick(&cluster.feed).await;
    let got = updates(&mut ws, n).await;
    let expected: Vec<u64> = (offset + 1..=offset + n as u64).collect();
    assert_eq!(got.iter().map(|(o, _)| *o).collect::<Vec<_>>(), expected);
    let (now, last) = cluster.feed.snapshot().await;
    assert_eq!(last.unwrap().offset, offset + n as u64);
    let ids: Vec<&str> = now.iter().map(|m| m.id.as_str()).collect();
    assert!(got.iter().all(|(_, id)| ids.contains(&id.as_str())));
    // Node 2 got them from Redis: node 1 published them.
    assert_eq!(two.hub.stats().node.published_in, n as u64);
    assert_eq!(one.hub.stats().node.published_in, 0);

    // The page drops, updates go on, and it comes back on node 1: exactly what it missed.
    let seen = offset + n as u64;
    drop(ws);
    let missed = tick(&cluster.feed).await;
    let mut ws = page(one.addr, &epoch, seen).await;
    let got = updates(&mut ws, missed).await;
    let expected: Vec<u64> = (seen + 1..=seen + missed as u64).collect();
    assert_eq!(got.iter().map(|(o, _)| *o).collect::<Vec<_>>(), expected);
}

#[test]
fn arguments_are_parsed() {
    let args = |a: &[&str]| example::parse_args(a.iter().map(|s| s.to_string()));
    let d = args(&[]).unwrap().unwrap();
    assert_eq!(
        (d.redis.as_str(), d.prefix.as_str(), d.nodes, d.port),
        (example::DEFAULT_REDIS, example::DEFAULT_PREFIX, 3, 3010)
    );
    let a = args(&[
        "--redis",
        "redis://r:1",
        "--nodes=2",
        "--port",
        "0",
        "--prefix",
        "p",
    ])
    .unwrap()
    .unwrap();
    assert_eq!(
        (a.redis.as_str(), a.nodes, a.port, a.prefix.as_str()),
        ("redis://r:1", 2, 0, "p")
    );
    assert_eq!(args(&["--help"]).unwrap(), None);
    for bad in [
        &["--nodes", "0"][..],
        &["--nodes", "9"],
        &["--port", "x"],
        &["--port", "65533"],
        &["--bogus"],
        &["--redis"],
    ] {
        assert!(args(bad).is_err(), "{bad:?}");
    }
}
