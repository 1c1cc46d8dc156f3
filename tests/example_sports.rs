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
use livehub::{Codec, ConnectRequest, Hub, Outgoing, TransportInfo};
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

/// Checks that the story told on `scores/all` is consistent, one update at a time: goals
/// raise the score by one and name the scorer, minutes only go forward, statuses go live ->
/// ht -> live -> ft, and new matches (new ids, never one seen before) kick off at 0-0.
#[derive(Default)]
struct Story {
    seen: HashMap<String, Value>,
    goals: usize,
    kickoffs: usize,
    finals: usize,
}

impl Story {
    /// A story that goes on from these matches.
    fn from(board: &[sports::MatchState]) -> Story {
        Story {
            seen: board
                .iter()
                .map(|m| (m.id.clone(), serde_json::to_value(m).unwrap()))
                .collect(),
            ..Story::default()
        }
    }

    fn check(&mut self, m: Value) {
        let id = check_match(&m);
        match self.seen.get(&id) {
            None => {
                self.kickoffs += 1;
                assert_eq!(m["minute"], 0);
                assert_eq!(m["status"], "live");
                assert_eq!(
                    (m["home_score"].as_u64(), m["away_score"].as_u64()),
                    (Some(0), Some(0))
                );
            }
            Some(prev) => {
                assert_ne!(
                    prev["status"], "ft",
                    "a match goes on after its end: {prev} -> {m}"
                );
                let dh = m["home_score"].as_u64().unwrap() - prev["home_score"].as_u64().unwrap();
                let da = m["away_score"].as_u64().unwrap() - prev["away_score"].as_u64().unwrap();
                match (&m["event"], dh, da) {
                    (Value::Null, 0, 0) => {}
                    (Value::String(e), 1, 0) => {
                        self.goals += 1;
                        assert_eq!(e, &format!("GOAL {}", m["home"].as_str().unwrap()));
                    }
                    (Value::String(e), 0, 1) => {
                        self.goals += 1;
                        assert_eq!(e, &format!("GOAL {}", m["away"].as_str().unwrap()));
                    }
                    _ => panic!("score and event disagree: {prev} -> {m}"),
                }
                assert_eq!((&prev["home"], &prev["away"]), (&m["home"], &m["away"]));
                // A minute at a time; half time after minute 45, the end after minute 90.
                let step = (
                    prev["status"].as_str().unwrap(),
                    prev["minute"].as_u64().unwrap(),
                    m["status"].as_str().unwrap(),
                    m["minute"].as_u64().unwrap(),
                );
                assert!(
                    match step {
                        ("live", 45, to, minute) => (to, minute) == ("ht", 45),
                        ("live", 90, to, minute) => (to, minute) == ("ft", 90),
                        ("live", from, to, minute) => to == "live" && minute == from + 1,
                        ("ht", _, to, minute) => (to, minute) == ("live", 46),
                        _ => false,
                    },
                    "{prev} -> {m}"
                );
                if step.2 == "ft" {
                    self.finals += 1;
                }
            }
        }
        self.seen.insert(id, m);
    }
}

/// Checks what must hold of the board after every tick: six matches, six ids, twelve teams.
async fn check_board(feed: &sports::Feed) {
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

/// Plays many simulated minutes through an in-process session and checks the story told on
/// `scores/all` is consistent ([`Story`]), and the board after every minute ([`check_board`]).
#[tokio::test]
async fn simulation_tells_a_consistent_story() {
    let hub = Hub::builder().build();
    let feed = sports::Feed::new(hub.clone(), 2024).await;
    let req = ConnectRequest::new(TransportInfo::duplex("memory"), Codec::Json);
    let mut conn = hub.connect(req).await.unwrap();
    conn.session
        .handle(r#"{"type":"subscribe","topic":"scores/all","id":1}"#.into())
        .await;

    let mut story = Story::from(&feed.snapshot().await.0);
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
            story.check(m);
        }
        check_board(&feed).await;
    }
    let Story {
        goals,
        kickoffs,
        finals,
        ..
    } = story;
    assert!(goals > 10, "goals happen ({goals})");
    assert!(finals >= sports::MATCHES, "matches end ({finals})");
    assert!(
        kickoffs >= sports::MATCHES,
        "new matches kick off ({kickoffs})"
    );
}

/// The board as the page keeps it (`examples/assets/sports_ws.html`): every update replaces
/// its match's state; a match it does not know is a kick-off, which takes the place of the
/// match that has been over the longest.
struct PageBoard {
    matches: HashMap<String, Value>,
    /// Ids at full time, in the order they ended.
    ft_order: Vec<String>,
}

impl PageBoard {
    fn from(board: &[sports::MatchState]) -> PageBoard {
        let mut page = PageBoard {
            matches: HashMap::new(),
            ft_order: Vec::new(),
        };
        for m in board {
            page.put(serde_json::to_value(m).unwrap());
        }
        page
    }

    fn put(&mut self, m: Value) {
        let id = m["id"].as_str().unwrap().to_owned();
        if m["status"] == "ft" && !self.ft_order.contains(&id) {
            self.ft_order.push(id.clone());
        }
        self.matches.insert(id, m);
    }

    fn apply(&mut self, m: Value) {
        if !self.matches.contains_key(m["id"].as_str().unwrap()) {
            assert!(
                !self.ft_order.is_empty(),
                "a kick-off with no finished match to replace: {m}"
            );
            let old = self.ft_order.remove(0);
            self.matches.remove(&old);
        }
        self.put(m);
    }

    /// The page shows what the server's `/matches` says.
    async fn assert_agrees(&self, feed: &sports::Feed) {
        let (board, _) = feed.snapshot().await;
        let server: HashMap<String, Value> = board
            .iter()
            .map(|m| (m.id.clone(), serde_json::to_value(m).unwrap()))
            .collect();
        assert_eq!(self.matches, server, "the page's board is the server's");
    }
}

/// The updates the last tick published to `scores/all` (`n` of them), oldest first.
async fn published(hub: &Hub, n: usize) -> Vec<Value> {
    let recent = hub.recent(sports::ALL_TOPIC, n).await.unwrap();
    assert_eq!(recent.len(), n);
    recent.iter().map(|p| p.data().decode().unwrap()).collect()
}

/// A feed process restarted over a shared engine: [`sports::Feed::resume`] goes on with the
/// board in `scores/all` without publishing anything again, and what it then publishes keeps
/// the page's board equal to the server's and tells a consistent story ([`Story`]), kick-offs
/// included. The feed is replaced every 37 minutes, and also as soon as the board first shows
/// each stage a resume must get right.
#[tokio::test]
async fn a_resumed_feed_goes_on_with_the_board_pages_have() {
    type Stage = (&'static str, fn(&sports::MatchState) -> bool);
    let stages: [Stage; 6] = [
        ("a kick-off", |m| m.minute == 0),
        ("minute 45 of the first half", |m| {
            m.status == sports::Status::Live && m.minute == 45
        }),
        ("half time", |m| m.status == sports::Status::Ht),
        ("minute 46", |m| m.minute == 46),
        ("minute 90", |m| {
            m.status == sports::Status::Live && m.minute == 90
        }),
        ("full time", |m| m.status == sports::Status::Ft),
    ];
    let mut resumed_at = [0usize; 6];
    let hub = Hub::builder().history_len(sports::HISTORY).build();
    let mut feed = sports::Feed::new(hub.clone(), 31).await;
    let (board, _) = feed.snapshot().await;
    let mut page = PageBoard::from(&board);
    let mut story = Story::from(&board);
    for minute in 1..=600u64 {
        let n = feed.tick().await;
        for m in published(&hub, n).await {
            page.apply(m.clone());
            story.check(m);
        }
        page.assert_agrees(&feed).await;
        check_board(&feed).await;

        let (before, last) = feed.snapshot().await;
        let new_stage: Vec<usize> = (0..stages.len())
            .filter(|&i| resumed_at[i] == 0 && before.iter().any(stages[i].1))
            .collect();
        if minute % 37 != 0 && new_stage.is_empty() {
            continue;
        }
        for (i, (_, at)) in stages.iter().enumerate() {
            resumed_at[i] += usize::from(before.iter().any(at));
        }
        // The feed process ends; a new one (other dice) starts over the same streams.
        let top = hub.position(sports::ALL_TOPIC).await.unwrap();
        assert_eq!(last.as_ref(), Some(&top));
        drop(feed);
        feed = sports::Feed::resume(hub.clone(), 100 + minute)
            .await
            .unwrap();
        assert_eq!(
            hub.position(sports::ALL_TOPIC).await.unwrap(),
            top,
            "resuming publishes nothing"
        );
        let (after, resumed_last) = feed.snapshot().await;
        assert_eq!(
            resumed_last,
            Some(top),
            "/matches reflects the same position"
        );
        let by_id = |b: &[sports::MatchState]| -> HashMap<String, sports::MatchState> {
            b.iter().map(|m| (m.id.clone(), m.clone())).collect()
        };
        assert_eq!(
            by_id(&after),
            by_id(&before),
            "the same matches, in the same state"
        );
    }
    for ((what, _), n) in stages.iter().zip(resumed_at) {
        assert!(n >= 1, "resumed at {what}");
    }
    assert!(
        story.kickoffs >= 2 * sports::MATCHES,
        "kick-offs ({})",
        story.kickoffs
    );
}

/// A feed resumed over a stream that starts from nothing tells the same story as a new one;
/// over a history too short to hold the whole board, new matches take the places it lacks.
#[tokio::test]
async fn a_resumed_feed_starts_or_fills_the_board() {
    let fresh = Hub::builder().build();
    let resumed = sports::Feed::resume(fresh.clone(), 5).await.unwrap();
    let new = sports::Feed::new(Hub::builder().build(), 5).await;
    assert_eq!(resumed.snapshot().await.0, new.snapshot().await.0);
    assert_eq!(fresh.position(sports::ALL_TOPIC).await.unwrap().offset, 6);

    // The history holds the last four of the six first updates.
    let hub = Hub::builder().history_len(4).build();
    let old = sports::Feed::new(hub.clone(), 8).await;
    let (board, _) = old.snapshot().await;
    drop(old);
    let feed = sports::Feed::resume(hub.clone(), 9).await.unwrap();
    let top = hub.position(sports::ALL_TOPIC).await.unwrap();
    assert_eq!(top.offset, 8, "two kick-offs published");
    let (now, last) = feed.snapshot().await;
    assert_eq!(last, Some(top));
    assert_eq!(&now[..4], &board[2..], "the four the history holds");
    let ids: Vec<&str> = now[4..].iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, ["m7", "m8"], "new ids, after every one seen");
    for m in published(&hub, 2).await {
        assert_eq!(
            (m["minute"].as_u64(), m["status"].as_str()),
            (Some(0), Some("live"))
        );
    }
    check_board(&feed).await;
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
