//! Churn: hundreds of clients on all three transports come, subscribe, publish and vanish
//! (half with a clean close, half abruptly: their task is aborted mid-way, which drops their
//! sockets, and a dropped poll client simply stops polling), while stable clients on each
//! transport stay subscribed to a topic the server publishes to the whole time.
//!
//! Afterwards the hub must hold exactly the stable clients: its session count and sessions by
//! transport, subscriptions, rooms, the topic's and the room's presence members, and the
//! long-polling transport's own session table; every churned session must have ended exactly
//! once (the disconnect hook and the hub's counters agree). Every stable client must have
//! received every message of its topic, in order, exactly once.
//!
//! Everything is bounded: 300 churned clients at most 30 at a time, at most
//! [`MAX_PUBLISHED`] messages, a timeout on every wait. Short hub heartbeats (100 ms interval,
//! 2 s timeout) make abruptly dropped poll and SSE clients go within a couple of seconds.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{send_json, serve_router, Client, Conn, Kind, KINDS};
use livehub::poll::PollService;
use livehub::sse::SseService;
use livehub::ws::WsService;
use livehub::{
    async_trait, Action, ConnectRequest, DisconnectReason, Hooks, Hub, Identity, Rejection,
    SessionInfo,
};
use serde_json::{json, Value};
use tokio::sync::{oneshot, watch, Semaphore};

/// Safety net for every single wait (the machine may be busy: never a timing assertion).
const WAIT: Duration = Duration::from_secs(20);

/// Safety net for the hub's counts to settle after the churn (abrupt poll clients are noticed
/// only after the heartbeat timeout).
const SETTLE: Duration = Duration::from_secs(30);

/// Churned clients, in all (a third per transport, half of each closing cleanly).
const CHURNED: usize = 300;

/// Churned clients alive at once.
const CONCURRENCY: usize = 30;

/// Stable clients per transport.
const STABLE_PER_KIND: usize = 4;

/// The server stops publishing after this many messages even if the churn is not over.
const MAX_PUBLISHED: u64 = 3000;

/// The topic the server publishes to and every stable client follows.
const FEED: &str = "feed/stable";

/// A topic churned clients subscribe and publish to.
const CHAT: &str = "churn/chat";

/// The room the server puts every client in.
const LOBBY: &str = "lobby";

// ---------------------------------------------------------------------------------------------
// The server.

/// `?user=<name>` names the user; clients may subscribe and publish anywhere (never join a
/// room by request); every disconnect is recorded.
struct ChurnHooks {
    disconnects: Arc<Mutex<Vec<(String, DisconnectReason)>>>,
}

#[async_trait]
impl Hooks for ChurnHooks {
    async fn authenticate(&self, req: &ConnectRequest) -> Result<Identity, Rejection> {
        common::user_identity(req)
    }

    async fn authorize(&self, _who: &Identity, action: Action<'_>) -> bool {
        matches!(action, Action::Subscribe(_) | Action::Publish(_))
    }

    fn on_disconnect(&self, session: &SessionInfo, reason: DisconnectReason) {
        let mut d = self.disconnects.lock().unwrap_or_else(|e| e.into_inner());
        d.push((session.identity.user_id().to_owned(), reason));
    }
}

struct Server {
    addr: SocketAddr,
    hub: Hub,
    poll: PollService,
    disconnects: Arc<Mutex<Vec<(String, DisconnectReason)>>>,
}

async fn serve() -> Server {
    let disconnects = Arc::new(Mutex::new(Vec::new()));
    let hub = Hub::builder()
        .hooks(ChurnHooks {
            disconnects: disconnects.clone(),
        })
        .heartbeat(Duration::from_millis(100), Duration::from_secs(2))
        .build();
    let poll = PollService::new(hub.clone());
    let app = axum::Router::new()
        .route_service("/ws", WsService::new(hub.clone()))
        .route_service("/sse", SseService::new(hub.clone()))
        .route_service("/poll", poll.clone());
    let addr = serve_router(app).await;
    Server {
        addr,
        hub,
        poll,
        disconnects,
    }
}

// ---------------------------------------------------------------------------------------------
// Clients: `common::Client`, on the three transports, following this test's topics.

/// Follows [`FEED`] (SSE streams already do, from their URL) and [`CHAT`].
async fn subscribe(c: &mut Client) {
    if c.kind != Kind::Sse {
        c.request(json!({"type": "subscribe", "topic": FEED}), 1)
            .await;
    }
    c.request(json!({"type": "subscribe", "topic": CHAT}), 2)
        .await;
}

// ---------------------------------------------------------------------------------------------
// The actors: stable clients, churned clients, the server's publisher.

/// A stable client: follows [`FEED`], is put in [`LOBBY`], says when it is ready and when it
/// has seen the last message, and keeps reading (answering pings, polling) until `stop`.
/// Returns every [`FEED`] message it got.
async fn stable_client(
    addr: SocketAddr,
    hub: Hub,
    kind: Kind,
    user: String,
    ready: oneshot::Sender<()>,
    last: oneshot::Sender<()>,
    mut stop: watch::Receiver<bool>,
) -> Vec<Value> {
    let mut c = Client::open(addr, kind, &user, &[FEED], WAIT).await;
    if kind != Kind::Sse {
        c.request(json!({"type": "subscribe", "topic": FEED}), 1)
            .await;
    }
    hub.join(c.session, LOBBY).await.unwrap();
    ready.send(()).unwrap();
    let mut last = Some(last);
    let mut got = Vec::new();
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return got,
            f = c.next_frame() => {
                assert!(
                    !matches!(f["type"].as_str(), Some("error" | "close" | "gap" | "dropped")),
                    "{kind:?} {user}: {f}"
                );
                if f["type"] == "message" && f["topic"] == FEED {
                    if f["data"]["last"] == true {
                        if let Some(tx) = last.take() {
                            let _ = tx.send(());
                        }
                    }
                    got.push(f);
                }
            }
        }
    }
}

/// Churned client `i`: a third per transport; of each, half close cleanly after subscribing
/// and publishing, the other half vanish at one of three stages (right after `welcome`,
/// after subscribing, or with its publish in flight): their task is aborted, which drops
/// their sockets (a poll client is left with a poll in flight, then never polls again).
async fn churned_client(addr: SocketAddr, hub: Hub, i: usize) {
    let (kind, clean) = churned_kind(i);
    let stage = (i / (2 * KINDS.len())) % 3;
    let user = churned_user(i);
    if clean {
        let mut c = Client::open(addr, kind, &user, &[FEED], WAIT).await;
        let _ = hub.join(c.session, LOBBY).await;
        subscribe(&mut c).await;
        c.request(
            json!({"type": "publish", "topic": CHAT, "data": {"from": user}}),
            3,
        )
        .await;
        c.close().await;
        return;
    }
    let (reached, at_stage) = oneshot::channel();
    let task = tokio::spawn(async move {
        let mut c = Client::open(addr, kind, &user, &[FEED], WAIT).await;
        let _ = hub.join(c.session, LOBBY).await;
        if stage >= 1 {
            subscribe(&mut c).await;
        }
        if stage >= 2 {
            let frame = json!({"type": "publish", "topic": CHAT, "data": {"from": user}, "id": 3});
            if let Conn::Ws(ws) = &mut c.conn {
                send_json(ws, frame).await;
            } else {
                c.send(frame).await;
            }
        }
        let _ = reached.send(());
        match kind {
            // A poll in flight when the task is aborted.
            Kind::Poll => loop {
                c.next_frame().await;
            },
            // A socket held open, unread, until the task is aborted.
            Kind::Ws | Kind::Sse => std::future::pending::<()>().await,
        }
    });
    let got_there = tokio::time::timeout(WAIT, at_stage).await;
    task.abort();
    let joined = task.await;
    if let Err(e) = &joined {
        assert!(e.is_cancelled(), "churned client {i} failed: {e}");
    }
    got_there
        .expect("a churned client reached its stage in time")
        .expect("a churned client reached its stage");
}

/// Churned client `i`'s transport, and whether it closes cleanly.
fn churned_kind(i: usize) -> (Kind, bool) {
    (KINDS[i % KINDS.len()], (i / KINDS.len()) % 2 == 0)
}

fn churned_user(i: usize) -> String {
    format!("churn-{}-{i}", KINDS[i % KINDS.len()].name())
}

fn stable_user(kind: Kind, i: usize) -> String {
    format!("stable-{}-{i}", kind.name())
}

/// The server's publisher: a numbered message to [`FEED`] every few milliseconds until `done`
/// (or [`MAX_PUBLISHED`]), then one marked `last`. Returns how many it published.
async fn publish_feed(hub: Hub, done: watch::Receiver<bool>) -> u64 {
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    let mut n = 0;
    while n + 1 < MAX_PUBLISHED && !*done.borrow() {
        tick.tick().await;
        n += 1;
        let pos = hub.publish(FEED, &json!({"n": n})).await.unwrap();
        assert_eq!(pos.offset, n);
    }
    n += 1;
    let pos = hub
        .publish(FEED, &json!({"n": n, "last": true}))
        .await
        .unwrap();
    assert_eq!(pos.offset, n);
    n
}

// ---------------------------------------------------------------------------------------------
// The test.

/// What the hub holds, in the terms the test checks.
#[derive(Debug, PartialEq, Eq)]
struct View {
    session_count: usize,
    sessions: BTreeMap<&'static str, u64>,
    subscriptions: u64,
    rooms: u64,
    feed_members: BTreeSet<String>,
    chat_members: BTreeSet<String>,
    lobby_members: BTreeSet<String>,
    poll_table: usize,
    disconnects: usize,
}

async fn view(s: &Server) -> View {
    let stats = s.hub.stats();
    let users = |members: Vec<livehub::Member>| members.into_iter().map(|m| m.user).collect();
    View {
        session_count: s.hub.session_count(),
        sessions: stats.sessions,
        subscriptions: stats.subscriptions,
        rooms: stats.rooms,
        feed_members: users(s.hub.topic_members(FEED).await.unwrap()),
        chat_members: users(s.hub.topic_members(CHAT).await.unwrap()),
        lobby_members: users(s.hub.room_members(LOBBY).await.unwrap()),
        poll_table: s.poll.session_count(),
        disconnects: s.disconnects.lock().unwrap().len(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churned_clients_leave_nothing_behind_and_stable_clients_miss_nothing() {
    let s = serve().await;

    // Stable clients, all following the feed before the first message.
    let (stop, stop_rx) = watch::channel(false);
    let mut stable = Vec::new();
    let mut stable_users = BTreeSet::new();
    for kind in KINDS {
        for i in 0..STABLE_PER_KIND {
            let user = stable_user(kind, i);
            let (ready, is_ready) = oneshot::channel();
            let (last, saw_last) = oneshot::channel();
            let task = tokio::spawn(stable_client(
                s.addr,
                s.hub.clone(),
                kind,
                user.clone(),
                ready,
                last,
                stop_rx.clone(),
            ));
            tokio::time::timeout(WAIT, is_ready)
                .await
                .expect("a stable client ready in time")
                .expect("a stable client ready");
            stable_users.insert(user.clone());
            stable.push((user, task, saw_last));
        }
    }
    let stable_count = stable.len();
    let expected = View {
        session_count: stable_count,
        sessions: KINDS
            .iter()
            .map(|k| (k.name(), STABLE_PER_KIND as u64))
            .collect(),
        subscriptions: stable_count as u64,
        rooms: 1,
        feed_members: stable_users.clone(),
        chat_members: BTreeSet::new(),
        lobby_members: stable_users.clone(),
        poll_table: STABLE_PER_KIND,
        disconnects: 0,
    };
    assert_eq!(view(&s).await, expected);

    // The server publishes all along; the churn runs, at most CONCURRENCY clients at a time.
    let (done, done_rx) = watch::channel(false);
    let publisher = tokio::spawn(publish_feed(s.hub.clone(), done_rx));
    let permits = Arc::new(Semaphore::new(CONCURRENCY));
    let mut churn = tokio::task::JoinSet::new();
    for i in 0..CHURNED {
        let permit = permits.clone().acquire_owned().await.unwrap();
        let (addr, hub) = (s.addr, s.hub.clone());
        churn.spawn(async move {
            churned_client(addr, hub, i).await;
            drop(permit);
        });
    }
    while let Some(joined) = churn.join_next().await {
        joined.expect("a churned client failed");
    }
    done.send(true).unwrap();
    let published = tokio::time::timeout(WAIT, publisher)
        .await
        .expect("the publisher stops in time")
        .unwrap();

    // Every stable client gets to the last message.
    let mut tasks = Vec::new();
    for (user, task, saw_last) in stable {
        tokio::time::timeout(WAIT, saw_last)
            .await
            .unwrap_or_else(|_| panic!("{user} did not get the last message in time"))
            .unwrap_or_else(|_| panic!("{user} failed"));
        tasks.push((user, task));
    }

    // Wait for the hub to let go of every churned session. Nothing signals "the last abrupt
    // poll client has been reaped by the heartbeat sweeper" (nor "the poll transport has
    // dropped its table entry"), so this polls the hub's own state, with a short sleep between
    // reads and an overall timeout; it asserts nothing about how long it took.
    let mut churned_gone = expected;
    churned_gone.disconnects = CHURNED;
    let deadline = tokio::time::Instant::now() + SETTLE;
    let mut now = view(&s).await;
    while now != churned_gone && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        now = view(&s).await;
    }
    assert_eq!(
        now, churned_gone,
        "the hub holds exactly the stable clients"
    );

    // Every churned session was opened once and ended once; no stable one ended.
    let stats = s.hub.stats();
    assert_eq!(stats.sessions_opened, (stable_count + CHURNED) as u64);
    assert_eq!(stats.disconnects.values().sum::<u64>(), CHURNED as u64);
    let ended = s.disconnects.lock().unwrap().clone();
    let ended_users: BTreeSet<&str> = ended.iter().map(|(u, _)| u.as_str()).collect();
    let churned_users: Vec<String> = (0..CHURNED).map(churned_user).collect();
    assert_eq!(
        ended_users.len(),
        CHURNED,
        "each churned session ended once"
    );
    assert!(churned_users
        .iter()
        .all(|u| ended_users.contains(u.as_str())));
    // Clean closes end as `normal`; so do dropped event streams; long-polling clients that
    // vanish are reaped by the heartbeat. (Abruptly dropped WebSockets are not checked here:
    // see `tests/metrics.rs`, `an_abruptly_dropped_websocket_counts_as_a_normal_disconnect`.)
    for i in 0..CHURNED {
        let user = churned_user(i);
        let reason = ended.iter().find(|(u, _)| *u == user).map(|(_, r)| *r);
        let (kind, clean) = churned_kind(i);
        let want = match (kind, clean) {
            (_, true) | (Kind::Sse, false) => DisconnectReason::Normal,
            (Kind::Poll, false) => DisconnectReason::HeartbeatTimeout,
            (Kind::Ws, false) => continue,
        };
        assert_eq!(reason, Some(want), "{user} (clean: {clean})");
    }

    // Every stable client got every message, in order, exactly once.
    stop.send(true).unwrap();
    for (user, task) in tasks {
        let got = tokio::time::timeout(WAIT, task)
            .await
            .expect("a stable client stops in time")
            .unwrap();
        let offsets: Vec<u64> = got.iter().map(|m| m["offset"].as_u64().unwrap()).collect();
        let want: Vec<u64> = (1..=published).collect();
        assert_eq!(offsets, want, "{user}: offsets");
        for m in &got {
            assert_eq!(m["data"]["n"], m["offset"], "{user}: {m}");
        }
    }
}
