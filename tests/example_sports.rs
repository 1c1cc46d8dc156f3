//! The sports-scores example against the contract its page relies on.
//!
//! The example's own code (feed, router, page) is compiled into this test, then served on a
//! free port and driven the way `examples/assets/sports_ws.html` (on hub.js) drives it over
//! WebSocket: `GET /matches` for the board and the position it reflects, a JSON session on `/ws`
//! that subscribes to `scores/all` with `id` and `since`, live `message` frames of the exact
//! match shape, a resume after a dropped connection that misses nothing, and a `gap` when the
//! position names another epoch. The feed is ticked by hand with a fixed seed: no sleeps, and
//! every wait is for a frame, with a timeout.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[allow(dead_code)] // `main`, `run_feed` and the like are for the example binary only.
#[path = "../examples/sports_scores.rs"]
mod sports;

mod common;

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use common::{raw_request, recv_json, send_json, serve_router, Ws};
use hub::{Codec, ConnectRequest, Hub, Outgoing, TransportInfo};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(5);

/// Serves the example's router (with a feed drawn from `seed`) on a free port.
async fn serve(seed: u64) -> (SocketAddr, Hub, sports::Feed) {
    let hub = Hub::builder().history_len(sports::HISTORY).build();
    let feed = sports::Feed::new(hub.clone(), seed).await;
    let addr = serve_router(sports::router(&hub, feed.clone())).await;
    (addr, hub, feed)
}

/// A plain HTTP/1.1 GET: status, headers (lowercase names), body.
async fn get(addr: SocketAddr, path: &str) -> (u16, HashMap<String, String>, String) {
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let text = String::from_utf8(raw_request(addr, &req, WAIT).await).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("a header block");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers, body.to_owned())
}

/// Opens the page's WebSocket and checks the `welcome`.
async fn connect(addr: SocketAddr) -> Ws {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
        .await
        .expect("WebSocket upgrade");
    let welcome = recv(&mut ws).await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    assert_eq!(welcome["protocol"], 1);
    assert_eq!(welcome["encoding"], "json");
    assert!(welcome["session"].as_str().is_some_and(|s| !s.is_empty()));
    ws
}

/// Opens the page's WebSocket and subscribes to `scores/all` from `(epoch, offset)`, as the
/// page does when it loads and when it reconnects; returns the socket and the answer.
async fn subscribe_since(addr: SocketAddr, epoch: &str, offset: u64) -> (Ws, Value) {
    let mut ws = connect(addr).await;
    send_json(
        &mut ws,
        json!({"type": "subscribe", "topic": "scores/all", "id": 1,
               "since": {"epoch": epoch, "offset": offset}}),
    )
    .await;
    let reply = recv(&mut ws).await;
    (ws, reply)
}

/// The next JSON frame (text, as the page reads them), each read within [`WAIT`].
async fn recv(ws: &mut Ws) -> Value {
    recv_json(ws, WAIT).await
}

/// Checks that `m` has exactly the shape pages depend on; returns its id.
fn check_match(m: &Value) -> String {
    let obj = m.as_object().expect("a match is an object");
    let keys: BTreeSet<&str> = obj.keys().map(String::as_str).collect();
    let want: BTreeSet<&str> = [
        "id",
        "home",
        "away",
        "home_score",
        "away_score",
        "minute",
        "status",
        "event",
    ]
    .into();
    assert_eq!(keys, want, "{m}");
    let id = m["id"].as_str().expect("id is a string");
    assert!(id.starts_with('m') && id[1..].parse::<u64>().is_ok(), "{m}");
    let (home, away) = (m["home"].as_str().unwrap(), m["away"].as_str().unwrap());
    assert!(!home.is_empty() && !away.is_empty() && home != away, "{m}");
    assert!(m["home_score"].is_u64() && m["away_score"].is_u64(), "{m}");
    let minute = m["minute"].as_u64().expect("minute is a number");
    assert!(minute <= 90, "{m}");
    match m["status"].as_str() {
        Some("live") => {}
        Some("ht") => assert_eq!(minute, 45, "{m}"),
        Some("ft") => assert_eq!(minute, 90, "{m}"),
        _ => panic!("bad status in {m}"),
    }
    match &m["event"] {
        Value::Null => {}
        Value::String(e) => assert!(
            e == &format!("GOAL {home}") || e == &format!("GOAL {away}"),
            "{m}"
        ),
        _ => panic!("bad event in {m}"),
    }
    id.to_owned()
}

/// Reads `n` messages of `scores/all` with consecutive offsets after `after`; returns them.
async fn messages(ws: &mut Ws, epoch: &str, after: u64, n: usize) -> Vec<Value> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let f = recv(ws).await;
        assert_eq!(f["type"], "message", "{f}");
        assert_eq!(f["topic"], sports::ALL_TOPIC);
        assert_eq!(f["epoch"], epoch);
        assert_eq!(
            f["offset"],
            after + 1 + i as u64,
            "offsets have no holes: {f}"
        );
        check_match(&f["data"]);
        out.push(f["data"].clone());
    }
    out
}

/// Ticks until a tick publishes something; returns how many updates it published.
async fn tick(feed: &sports::Feed) -> usize {
    for _ in 0..200 {
        let n = feed.tick().await;
        if n > 0 {
            return n;
        }
    }
    panic!("matches change within 200 minutes")
}

#[tokio::test]
async fn page_and_matches_are_served() {
    let (addr, _hub, _feed) = serve(7).await;

    let (status, headers, body) = get(addr, "/").await;
    assert_eq!(status, 200);
    assert!(headers["content-type"].starts_with("text/html"));
    assert_eq!(body, sports::PAGE);
    for needle in [
        "<script src=\"/hub.js\"></script>",
        "\"scores/all\"",
        "since",
        "recovered",
        "/matches",
    ] {
        assert!(body.contains(needle), "the page uses {needle}");
    }
    assert!(
        !body.contains("http://") && !body.contains("https://"),
        "no external resources"
    );

    let (status, headers, body) = get(addr, "/matches").await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "application/json");
    let list: Value = serde_json::from_str(&body).unwrap();
    let list = list.as_array().expect("a JSON array");
    assert_eq!(list.len(), sports::MATCHES);
    let ids: BTreeSet<String> = list.iter().map(check_match).collect();
    assert_eq!(ids.len(), sports::MATCHES, "ids are unique");
    // Every match was published once: the snapshot reflects offset 6 of scores/all.
    assert_eq!(headers["x-scores-offset"], sports::MATCHES.to_string());
    assert_eq!(headers["x-scores-epoch"].len(), 16);

    let (status, _, _) = get(addr, "/nope").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn websocket_session_as_the_page_runs_it() {
    let (addr, _hub, feed) = serve(11).await;

    // 1. The board and its position, as the page loads them first.
    let (_, headers, body) = get(addr, "/matches").await;
    let mut board: HashMap<String, Value> = serde_json::from_str::<Vec<Value>>(&body)
        .unwrap()
        .into_iter()
        .map(|m| (check_match(&m), m))
        .collect();
    let epoch = headers["x-scores-epoch"].clone();
    let mut last: u64 = headers["x-scores-offset"].parse().unwrap();

    // 2. Subscribe from that position: the reply, then nothing until the feed moves.
    let (mut ws, reply) = subscribe_since(addr, &epoch, last).await;
    assert_eq!(
        reply,
        json!({"type": "reply", "id": 1,
               "data": {"topic": "scores/all", "epoch": epoch, "offset": last}})
    );

    // 3. Live updates: one message per changed match, in offset order.
    for _ in 0..5 {
        let n = tick(&feed).await;
        for m in messages(&mut ws, &epoch, last, n).await {
            board.insert(m["id"].as_str().unwrap().to_owned(), m);
        }
        last += n as u64;
    }
    // The page's board now equals the server's.
    let (now, _) = feed.snapshot().await;
    for m in now {
        assert_eq!(board[&m.id], serde_json::to_value(&m).unwrap());
    }

    // 4. The connection drops; the feed moves on; the page reconnects with `since`.
    ws.close(None).await.unwrap();
    drop(ws);
    let missed = tick(&feed).await + tick(&feed).await + tick(&feed).await;
    let (mut ws, reply) = subscribe_since(addr, &epoch, last).await;
    assert_eq!(reply["type"], "reply", "{reply}");
    assert_eq!(reply["data"]["offset"], last + missed as u64);
    // Exactly what was missed, then live updates with no duplicate and no hole.
    messages(&mut ws, &epoch, last, missed).await;
    last += missed as u64;
    let n = tick(&feed).await;
    messages(&mut ws, &epoch, last, n).await;

    // 5. A position from another epoch (the server restarted): a gap, then live updates.
    let mut ws2 = connect(addr).await;
    send_json(
        &mut ws2,
        json!({"type": "subscribe", "topic": "scores/all", "id": 2,
               "since": {"epoch": "0000000000000000", "offset": 3}}),
    )
    .await;
    assert_eq!(recv(&mut ws2).await["type"], "reply");
    let gap = recv(&mut ws2).await;
    assert_eq!(gap["type"], "gap", "{gap}");
    assert_eq!(gap["topic"], "scores/all");
    assert_eq!(gap["reason"], "epoch");

    // 6. Errors the page handles: a second subscribe to the same topic.
    send_json(
        &mut ws2,
        json!({"type": "subscribe", "topic": "scores/all", "id": 3}),
    )
    .await;
    let err = recv(&mut ws2).await;
    assert_eq!(err["type"], "error");
    assert_eq!(err["id"], 3);
    assert_eq!(err["code"], "already_subscribed");
}

#[tokio::test]
async fn per_match_topics_carry_the_same_updates() {
    let (addr, _hub, feed) = serve(3).await;
    let (matches, _) = feed.snapshot().await;
    let id = matches[0].id.clone();
    let topic = format!("scores/{id}");

    let mut ws = connect(addr).await;
    send_json(
        &mut ws,
        json!({"type": "subscribe", "topic": topic, "id": 9}),
    )
    .await;
    let reply = recv(&mut ws).await;
    assert_eq!(reply["data"]["topic"], topic.as_str());
    assert_eq!(
        reply["data"]["offset"], 1,
        "the initial state was published"
    );

    // Within a first half, match 1 changes every minute.
    feed.tick().await;
    let f = recv(&mut ws).await;
    assert_eq!(f["type"], "message");
    assert_eq!(f["topic"], topic.as_str());
    assert_eq!(f["offset"], 2);
    assert_eq!(check_match(&f["data"]), id);
    let (now, _) = feed.snapshot().await;
    assert_eq!(f["data"], serde_json::to_value(&now[0]).unwrap());
}

/// Plays many simulated minutes through an in-process session and checks the story told on
/// `scores/all` is consistent: goals raise the score by one and name the scorer, minutes only
/// go forward, statuses go live -> ht -> live -> ft, and new matches replace finished ones.
#[tokio::test]
async fn simulation_tells_a_consistent_story() {
    let hub = Hub::builder().build();
    let feed = sports::Feed::new(hub.clone(), 2024).await;
    let req = ConnectRequest::new(TransportInfo::duplex("memory"), Codec::Json);
    let mut conn = hub.connect(req).await.unwrap();
    conn.session
        .handle(r#"{"type":"subscribe","topic":"scores/all","id":1}"#.into())
        .await;

    let mut seen: HashMap<String, Value> = feed
        .snapshot()
        .await
        .0
        .iter()
        .map(|m| (m.id.clone(), serde_json::to_value(m).unwrap()))
        .collect();
    let (mut goals, mut kickoffs, mut finals) = (0, 0, 0);
    let mut batch = Vec::new();
    for _ in 0..400 {
        let n = feed.tick().await;
        let mut got = Vec::new();
        while got.len() < n {
            batch.clear();
            tokio::time::timeout(WAIT, conn.outbox.next_batch(&mut batch))
                .await
                .expect("frames in time");
            for o in batch.drain(..) {
                if let Outgoing::Frame(frame) = o {
                    let f: Value = serde_json::from_slice(frame.bytes()).unwrap();
                    if f["type"] == "message" {
                        got.push(f["data"].clone());
                    }
                }
            }
        }
        assert_eq!(got.len(), n);
        for m in got {
            let id = check_match(&m);
            match seen.get(&id) {
                None => {
                    kickoffs += 1;
                    assert_eq!(m["minute"], 0);
                    assert_eq!(m["status"], "live");
                    assert_eq!(
                        (m["home_score"].as_u64(), m["away_score"].as_u64()),
                        (Some(0), Some(0))
                    );
                }
                Some(prev) if prev["status"] == "ft" => {
                    // An id of the cycle coming back: only after its match ended.
                    kickoffs += 1;
                    assert_eq!(m["minute"], 0, "{prev} -> {m}");
                }
                Some(prev) => {
                    let dh =
                        m["home_score"].as_u64().unwrap() - prev["home_score"].as_u64().unwrap();
                    let da =
                        m["away_score"].as_u64().unwrap() - prev["away_score"].as_u64().unwrap();
                    match (&m["event"], dh, da) {
                        (Value::Null, 0, 0) => {}
                        (Value::String(e), 1, 0) => {
                            goals += 1;
                            assert_eq!(e, &format!("GOAL {}", m["home"].as_str().unwrap()));
                        }
                        (Value::String(e), 0, 1) => {
                            goals += 1;
                            assert_eq!(e, &format!("GOAL {}", m["away"].as_str().unwrap()));
                        }
                        _ => panic!("score and event disagree: {prev} -> {m}"),
                    }
                    assert!(
                        m["minute"].as_u64() >= prev["minute"].as_u64(),
                        "{prev} -> {m}"
                    );
                    let step = (
                        prev["status"].as_str().unwrap(),
                        m["status"].as_str().unwrap(),
                    );
                    assert!(
                        matches!(step, ("live", "live" | "ht" | "ft") | ("ht", "live")),
                        "{prev} -> {m}"
                    );
                    if step.1 == "ft" && step.0 != "ft" {
                        finals += 1;
                    }
                }
            }
            seen.insert(id, m);
        }
        let (board, _) = feed.snapshot().await;
        assert_eq!(board.len(), sports::MATCHES);
        let ids: BTreeSet<&str> = board.iter().map(|m| m.id.as_str()).collect();
        assert_eq!(ids.len(), sports::MATCHES, "ids on the board are unique");
        let teams: BTreeSet<&str> = board
            .iter()
            .flat_map(|m| [m.home.as_str(), m.away.as_str()])
            .collect();
        assert_eq!(
            teams.len(),
            2 * sports::MATCHES,
            "a team plays one match at a time"
        );
    }
    assert!(goals > 10, "goals happen ({goals})");
    assert!(finals >= sports::MATCHES, "matches end ({finals})");
    assert!(
        kickoffs >= sports::MATCHES,
        "new matches kick off ({kickoffs})"
    );
}

#[test]
fn command_line() {
    use sports::{parse_args, Command};
    let args = |a: &[&str]| parse_args(a.iter().map(|s| s.to_string()));
    assert_eq!(
        args(&[]),
        Ok(Command::Serve("127.0.0.1:3000".parse().unwrap()))
    );
    assert_eq!(
        args(&["--addr", "127.0.0.1:0"]),
        Ok(Command::Serve("127.0.0.1:0".parse().unwrap()))
    );
    assert_eq!(
        args(&["--addr=0.0.0.0:8080"]),
        Ok(Command::Serve("0.0.0.0:8080".parse().unwrap()))
    );
    assert_eq!(args(&["--help"]), Ok(Command::Help));
    assert!(args(&["--addr"]).is_err());
    assert!(args(&["--addr", "localhost"]).is_err());
    assert!(args(&["--port", "1"]).is_err());
}
