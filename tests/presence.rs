//! Presence at scale over real sockets: `presence_count` and paged `presence` on every
//! transport (in-process engine), and users that join with their first session and leave
//! with their last across nodes of one hub over Redis, also when a node dies.
//!
//! Without a Redis, the cluster tests say they skipped and pass, unless `HUB_REQUIRE_REDIS=1`.
//!
//! Absence ("no second join") is shown without sleeping: a marker message published after
//! the event that would have caused it must be the watcher's next frame.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/cluster.rs"]
mod cluster;
mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use cluster::{node, Options, SharedRedis, UserHooks};
use common::{serve_router, Client, Kind, KINDS};
use livehub::poll::PollService;
use livehub::sse::SseService;
use livehub::ws::WsService;
use livehub::{Hub, PresenceCount};
use serde_json::{json, Value};

/// The safety net for every wait.
const WAIT: Duration = Duration::from_secs(15);

/// The next frame that is a `join` or `leave` (messages, the markers, are skipped):
/// `(type, user, session)`.
async fn presence_event(c: &mut Client) -> (String, String, String) {
    loop {
        let f = c.recv().await;
        match f["type"].as_str() {
            Some("message") => continue,
            Some("join" | "leave") => {
                return (
                    f["type"].as_str().unwrap().to_owned(),
                    f["member"]["user"].as_str().unwrap().to_owned(),
                    f["member"]["session"].as_str().unwrap().to_owned(),
                )
            }
            _ => panic!("{:?} {}: not presence: {f}", c.kind, c.user),
        }
    }
}

fn ev(kind: &str, user: &str, session: livehub::SessionId) -> (String, String, String) {
    (kind.to_owned(), user.to_owned(), session.to_string())
}

/// Publishes marker `n` and checks that it is `c`'s next frame: no `join`/`leave` before it.
async fn marker_next(hub: &Hub, c: &mut Client, topic: &str, n: u64) {
    hub.publish(topic, &json!({"marker": n})).await.unwrap();
    let f = c.recv().await;
    assert_eq!(
        f["type"], "message",
        "{:?} {}: before marker {n}: {f}",
        c.kind, c.user
    );
    assert_eq!(f["data"]["marker"], n, "{f}");
}

async fn subscribe(c: &mut Client, topic: &str, presence: Value) {
    let r = c
        .ask(
            json!({"type": "subscribe", "topic": topic, "presence": presence}),
            1,
        )
        .await;
    assert_eq!(r["type"], "reply", "{r}");
}

async fn unsubscribe(c: &mut Client, topic: &str) {
    let r = c
        .ask(json!({"type": "unsubscribe", "topic": topic}), 9)
        .await;
    assert_eq!(r["type"], "reply", "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_and_pages_over_every_transport() {
    let hub = Hub::builder().hooks(UserHooks).build();
    let app = axum::Router::new()
        .route_service("/ws", WsService::new(hub.clone()))
        .route_service("/sse", SseService::new(hub.clone()))
        .route_service("/poll", PollService::new(hub.clone()));
    let addr = serve_router(app).await;
    let topic = "arena";
    // Two users with two sessions each, and one with one: five members, three users.
    let mut clients = Vec::new();
    for (i, user) in ["ann", "ann", "bob", "bob", "cy"].iter().enumerate() {
        let kind = KINDS[i % 3];
        let mut c = Client::open(addr, kind, user, &[topic], WAIT).await;
        if kind != Kind::Sse {
            subscribe(&mut c, topic, json!(false)).await;
        }
        clients.push(c);
    }
    let all: HashSet<String> = clients.iter().map(|c| c.session.to_string()).collect();
    for c in &mut clients {
        let r = c
            .ask(json!({"type": "presence_count", "topic": topic}), 2)
            .await;
        assert_eq!(
            r["data"],
            json!({"count": 5, "users": 3}),
            "{:?}: {r}",
            c.kind
        );
        // Pages of two: three pages, each member once.
        let mut seen = Vec::new();
        let mut cursor = Value::Null;
        for id in 3.. {
            let frame = json!({"type": "presence", "topic": topic, "limit": 2, "cursor": cursor});
            let r = c.ask(frame, id).await;
            let members = r["data"]["members"].as_array().unwrap();
            assert!(members.len() <= 2, "{:?}: {r}", c.kind);
            seen.extend(
                members
                    .iter()
                    .map(|m| m["session"].as_str().unwrap().to_owned()),
            );
            cursor = r["data"]["cursor"].clone();
            if cursor.is_null() {
                assert_eq!(id, 5, "{:?}: three pages", c.kind);
                break;
            }
        }
        assert_eq!(seen.len(), 5, "{:?}", c.kind);
        assert_eq!(
            seen.into_iter().collect::<HashSet<_>>(),
            all,
            "{:?}",
            c.kind
        );
        // Bad page requests: their codes, and the session goes on.
        for (frame, code) in [
            (
                json!({"type": "presence", "topic": topic, "limit": 1001}),
                "bad_limit",
            ),
            (
                json!({"type": "presence", "topic": topic, "cursor": "x"}),
                "bad_cursor",
            ),
            (
                json!({"type": "presence_count", "topic": "elsewhere"}),
                "not_subscribed",
            ),
        ] {
            let r = c.ask(frame, 50).await;
            assert_eq!(
                (r["type"].as_str(), r["code"].as_str()),
                (Some("error"), Some(code))
            );
        }
    }
    assert_eq!(
        hub.topic_count(topic).await.unwrap(),
        PresenceCount { count: 5, users: 3 }
    );
}

/// The node counts, per topic, the subscriptions that watch its presence (a `join` nobody
/// watches then costs nothing rather than a pass over every subscriber): watchers of either
/// kind coming and going, and subscribers without presence coming and going, never make a
/// watcher miss an event or get one it did not ask for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_come_and_go_and_each_gets_exactly_the_events_it_asked_for() {
    let hub = Hub::builder().hooks(UserHooks).build();
    let app = axum::Router::new().route_service("/ws", WsService::new(hub.clone()));
    let addr = serve_router(app).await;
    let topic = "hall";
    let open = |user: &'static str| Client::open(addr, Kind::Ws, user, &[], WAIT);

    // Subscribers without presence come and go before any watcher.
    let mut quiet = open("quiet").await;
    subscribe(&mut quiet, topic, json!(false)).await;
    unsubscribe(&mut quiet, topic).await;
    let mut sessions = open("sam").await;
    subscribe(&mut sessions, topic, json!(true)).await;
    let mut a = open("ann").await;
    subscribe(&mut a, topic, json!(false)).await;
    assert_eq!(
        presence_event(&mut sessions).await,
        ev("join", "ann", a.session)
    );
    // A subscriber without presence leaving does not uncount the watcher.
    let mut q = open("quinn").await;
    subscribe(&mut q, topic, json!(false)).await;
    unsubscribe(&mut q, topic).await;
    assert_eq!(
        presence_event(&mut sessions).await,
        ev("join", "quinn", q.session)
    );
    assert_eq!(
        presence_event(&mut sessions).await,
        ev("leave", "quinn", q.session)
    );
    let mut q2 = open("quinn").await;
    subscribe(&mut q2, topic, json!(false)).await;
    assert_eq!(
        presence_event(&mut sessions).await,
        ev("join", "quinn", q2.session)
    );

    // A user watcher joins (the session watcher sees it); a quiet subscriber leaves.
    let mut users = open("uma").await;
    subscribe(&mut users, topic, json!("users")).await;
    assert_eq!(
        presence_event(&mut sessions).await,
        ev("join", "uma", users.session)
    );
    unsubscribe(&mut a, topic).await;
    assert_eq!(
        presence_event(&mut sessions).await,
        ev("leave", "ann", a.session)
    );
    assert_eq!(
        presence_event(&mut users).await,
        ev("leave", "ann", a.session)
    );

    // The session watcher goes: the user watcher still hears a new user, and its second
    // session is not an event for it.
    unsubscribe(&mut sessions, topic).await;
    assert_eq!(
        presence_event(&mut users).await,
        ev("leave", "sam", sessions.session)
    );
    let mut b1 = open("bo").await;
    subscribe(&mut b1, topic, json!(false)).await;
    assert_eq!(
        presence_event(&mut users).await,
        ev("join", "bo", b1.session)
    );
    let mut b2 = open("bo").await;
    subscribe(&mut b2, topic, json!(false)).await;
    marker_next(&hub, &mut users, topic, 1).await;

    // No watcher left: a join goes to nobody; then a new session watcher hears the next one.
    unsubscribe(&mut users, topic).await;
    let mut c = open("cy").await;
    subscribe(&mut c, topic, json!(false)).await;
    subscribe(&mut sessions, topic, json!(true)).await;
    let mut d = open("di").await;
    subscribe(&mut d, topic, json!(false)).await;
    marker_next(&hub, &mut c, topic, 2).await;
    assert_eq!(
        presence_event(&mut sessions).await,
        ev("join", "di", d.session)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_on_two_nodes_joins_once_and_leaves_with_the_last_session() {
    let Some(redis) = SharedRedis::get() else {
        return;
    };
    let a = node(&redis.url, &redis.prefix, Options::default()).await;
    let b = node(&redis.url, &redis.prefix, Options::default()).await;
    let topic = "lobby";
    // On A: a watcher of users and a watcher of sessions. On B: a watcher of sessions, to
    // know when A's news has gone out to the other nodes.
    let mut users = a.client(Kind::Ws, "watch-users", &[], WAIT).await;
    subscribe(&mut users, topic, json!("users")).await;
    let mut sessions = a.client(Kind::Ws, "watch-a", &[], WAIT).await;
    subscribe(&mut sessions, topic, json!(true)).await;
    assert_eq!(
        presence_event(&mut users).await,
        ev("join", "watch-a", sessions.session)
    );
    let mut far = b.client(Kind::Ws, "watch-b", &[], WAIT).await;
    subscribe(&mut far, topic, json!(true)).await;
    assert_eq!(
        presence_event(&mut users).await,
        ev("join", "watch-b", far.session)
    );
    assert_eq!(
        presence_event(&mut sessions).await,
        ev("join", "watch-b", far.session)
    );

    // Ana's first tab, on A (long-polling): she joins.
    let mut tab1 = a.client(Kind::Poll, "ana", &[], WAIT).await;
    subscribe(&mut tab1, topic, json!(false)).await;
    assert_eq!(
        presence_event(&mut users).await,
        ev("join", "ana", tab1.session)
    );
    assert_eq!(
        presence_event(&mut sessions).await,
        ev("join", "ana", tab1.session)
    );
    // Her second, on B (SSE): A's session watcher sees it; once it has, so would the user
    // watcher (the same control message): the marker comes first.
    let tab2 = b.client(Kind::Sse, "ana", &[topic], WAIT).await;
    assert_eq!(
        presence_event(&mut sessions).await,
        ev("join", "ana", tab2.session)
    );
    marker_next(&a.hub, &mut users, topic, 1).await;
    let r = users
        .ask(json!({"type": "presence_count", "topic": topic}), 2)
        .await;
    assert_eq!(r["data"], json!({"count": 5, "users": 4}), "{r}");
    for n in [&a, &b] {
        assert_eq!(
            n.hub.topic_count(topic).await.unwrap(),
            PresenceCount { count: 5, users: 4 }
        );
    }

    // The first tab goes (A): still in. B's watcher hearing of it means A's store removal is
    // done, and any user event of A's with it.
    let first = tab1.session;
    tab1.close().await;
    let want = ev("leave", "ana", first);
    while presence_event(&mut far).await != want {}
    marker_next(&a.hub, &mut users, topic, 2).await;

    // The last one goes (B): she leaves, once, named by that last session.
    let last = tab2.session;
    tab2.close().await;
    assert_eq!(presence_event(&mut users).await, ev("leave", "ana", last));
    marker_next(&a.hub, &mut users, topic, 3).await;
    assert_eq!(
        a.hub.topic_count(topic).await.unwrap(),
        PresenceCount { count: 3, users: 3 }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_nodes_users_leave_once_with_their_last_session() {
    let Some(redis) = SharedRedis::get() else {
        return;
    };
    let options = Options {
        engine: |e| {
            e.presence_ttl(Duration::from_millis(2000))
                .presence_refresh(Duration::from_millis(500))
        },
        ..Options::default()
    };
    let a = node(&redis.url, &redis.prefix, options).await;
    let d = node(&redis.url, &redis.prefix, options).await;
    let topic = "watch";
    let mut users = a.client(Kind::Ws, "watch-users", &[], WAIT).await;
    subscribe(&mut users, topic, json!("users")).await;
    let mut sessions = a.client(Kind::Ws, "watch-sessions", &[], WAIT).await;
    subscribe(&mut sessions, topic, json!(true)).await;
    assert_eq!(presence_event(&mut users).await.1, "watch-sessions");

    // Dora: two sessions on D. Ann: one on D, one on A.
    let mut on_d = Vec::new();
    for user in ["dora", "dora", "ann"] {
        let mut c = d.client(Kind::Ws, user, &[], WAIT).await;
        subscribe(&mut c, topic, json!(false)).await;
        assert_eq!(
            presence_event(&mut sessions).await,
            ev("join", user, c.session)
        );
        on_d.push(c);
    }
    let mut ann_a = a.client(Kind::Ws, "ann", &[], WAIT).await;
    subscribe(&mut ann_a, topic, json!(false)).await;
    assert_eq!(
        presence_event(&mut sessions).await,
        ev("join", "ann", ann_a.session)
    );
    // The user watcher: dora once, ann once (her first session was D's).
    assert_eq!(
        presence_event(&mut users).await,
        ev("join", "dora", on_d[0].session)
    );
    assert_eq!(
        presence_event(&mut users).await,
        ev("join", "ann", on_d[2].session)
    );
    marker_next(&a.hub, &mut users, topic, 1).await;

    // D dies without a goodbye; its clients stay connected and silent.
    let died = Instant::now();
    d.engine.close();
    // The session watcher sees its three sessions leave; by then the user watcher has had
    // every user event of those expiries.
    let mut gone = HashSet::new();
    while gone.len() < 3 {
        let (kind, _, session) = presence_event(&mut sessions).await;
        assert_eq!(kind, "leave");
        assert!(gone.insert(session), "a session left twice");
    }
    eprintln!("D's sessions left {:?} after it died", died.elapsed());
    let want: HashSet<String> = on_d.iter().map(|c| c.session.to_string()).collect();
    assert_eq!(gone, want);
    // Dora left, once, with whichever of her sessions expired last; ann stays.
    let (kind, user, session) = presence_event(&mut users).await;
    assert_eq!((kind.as_str(), user.as_str()), ("leave", "dora"));
    assert!(session == on_d[0].session.to_string() || session == on_d[1].session.to_string());
    marker_next(&a.hub, &mut users, topic, 2).await;
    assert_eq!(
        a.hub.topic_count(topic).await.unwrap(),
        PresenceCount { count: 3, users: 3 }
    );
    drop(on_d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_users_join_is_told_while_refreshes_run_through_a_burst() {
    let Some(redis) = SharedRedis::get() else {
        return;
    };
    // Refreshes every 5 ms: many run while the burst's adds wait for the presence worker.
    let options = Options {
        engine: |e| {
            e.presence_ttl(Duration::from_secs(5))
                .presence_refresh(Duration::from_millis(5))
        },
        ..Options::default()
    };
    let a = node(&redis.url, &redis.prefix, options).await;
    let b = node(&redis.url, &redis.prefix, options).await;
    let topic = "burst";
    let mut local = a.client(Kind::Ws, "watch-a", &[], WAIT).await;
    subscribe(&mut local, topic, json!("users")).await;
    let mut far = b.client(Kind::Ws, "watch-b", &[], WAIT).await;
    subscribe(&mut far, topic, json!("users")).await;
    assert_eq!(presence_event(&mut local).await.1, "watch-b");

    // 300 users come to A at once (in-process sessions, through the transport seam).
    const N: usize = 300;
    let frame = bytes::Bytes::from(format!(r#"{{"type":"subscribe","topic":"{topic}"}}"#));
    let mut conns = Vec::new();
    let mut want = HashSet::new();
    for i in 0..N {
        let user = format!("u{i}");
        let req = livehub::ConnectRequest {
            uri: format!("/?user={user}").parse().unwrap(),
            ..livehub::ConnectRequest::new(
                livehub::TransportInfo::duplex("memory"),
                livehub::Codec::Json,
            )
        };
        let conn = a.hub.connect(req).await.unwrap();
        conn.session.handle(frame.clone()).await;
        conns.push(conn);
        want.insert(user);
    }
    // Each watcher, on either node, is told of each user once.
    for w in [&mut local, &mut far] {
        let mut got = HashSet::new();
        while got.len() < N {
            let (kind, user, _) = presence_event(w).await;
            assert_eq!(kind, "join");
            if user == "watch-a" {
                // In flight from A when B's watcher came: it may be told, or not.
                continue;
            }
            assert!(got.insert(user.clone()), "{user} joined twice");
        }
        assert_eq!(got, want);
    }
    marker_next(&a.hub, &mut local, topic, 1).await;
    marker_next(&a.hub, &mut far, topic, 1).await;
    assert_eq!(
        b.hub.topic_count(topic).await.unwrap(),
        PresenceCount {
            count: N as u64 + 2,
            users: N as u64 + 2
        }
    );
    drop(conns);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_across_nodes_count_page_and_tell_users_once() {
    let Some(redis) = SharedRedis::get() else {
        return;
    };
    let options = Options {
        hub: |h| h.room_presence(livehub::PresenceEvents::Users),
        ..Options::default()
    };
    let a = node(&redis.url, &redis.prefix, options).await;
    let b = node(&redis.url, &redis.prefix, options).await;
    let room = "chat:7";
    let mut bob = a.client(Kind::Ws, "bob", &[], WAIT).await;
    a.hub.join(bob.session, room).await.unwrap();
    // Ana: a tab on each node. One join, from her first.
    let ana_a = a.client(Kind::Ws, "ana", &[], WAIT).await;
    let ana_b = b.client(Kind::Poll, "ana", &[], WAIT).await;
    a.hub.join(ana_a.session, room).await.unwrap();
    assert_eq!(
        presence_event(&mut bob).await,
        ev("join", "ana", ana_a.session)
    );
    b.hub.join(ana_b.session, room).await.unwrap();
    // Counted from either node once B's store write is in (no event announces it).
    let deadline = Instant::now() + WAIT;
    while b.hub.room_count(room).await.unwrap().count < 3 {
        assert!(Instant::now() < deadline, "B's member never counted");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for n in [&a, &b] {
        assert_eq!(
            n.hub.room_count(room).await.unwrap(),
            PresenceCount { count: 3, users: 2 }
        );
    }
    let first = b.hub.room_members_page(room, None, 2).await.unwrap();
    let rest = a
        .hub
        .room_members_page(room, first.cursor.as_deref(), 2)
        .await
        .unwrap();
    assert_eq!((first.members.len(), rest.members.len()), (2, 1));
    assert_eq!(rest.cursor, None);
    let listed: HashSet<String> = first
        .members
        .iter()
        .chain(&rest.members)
        .map(|m| m.session.to_string())
        .collect();
    let want: HashSet<String> = [bob.session, ana_a.session, ana_b.session]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(listed, want);

    // Her tab on A leaves: nothing; her tab on B: she leaves, named by it.
    a.hub.leave(ana_a.session, room).unwrap();
    let deadline = Instant::now() + WAIT;
    while a.hub.room_count(room).await.unwrap().count > 2 {
        assert!(
            Instant::now() < deadline,
            "A's removal never reached the store"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    b.hub.leave(ana_b.session, room).unwrap();
    assert_eq!(
        presence_event(&mut bob).await,
        ev("leave", "ana", ana_b.session)
    );
    a.hub.to(room).emit("marker", &1).unwrap();
    let f = bob.recv().await;
    assert_eq!(
        (f["type"].as_str(), f["event"].as_str()),
        (Some("event"), Some("marker")),
        "{f}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_and_pages_fail_fast_while_redis_is_away() {
    let Some(mut server) = cluster::RedisServer::start() else {
        return;
    };
    let options = Options {
        engine: cluster::fast_engine,
        ..Options::default()
    };
    let a = node(&server.url(), "presence", options).await;
    let topic = "away";
    let mut c = a.client(Kind::Ws, "ana", &[], WAIT).await;
    subscribe(&mut c, topic, json!("users")).await;
    // The node writes its member to Redis just after the reply (no event announces it).
    let deadline = Instant::now() + WAIT;
    while a.hub.topic_count(topic).await.unwrap().count < 1 {
        assert!(Instant::now() < deadline, "the member never counted");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let r = c
        .ask(json!({"type": "presence_count", "topic": topic}), 2)
        .await;
    assert_eq!(r["data"], json!({"count": 1, "users": 1}), "{r}");

    server.kill();
    a.engine_connected(false, WAIT).await;
    for (i, frame) in [
        json!({"type": "presence_count", "topic": topic}),
        json!({"type": "presence", "topic": topic, "limit": 10}),
    ]
    .into_iter()
    .enumerate()
    {
        let r = c.ask(frame, 10 + i as u64).await;
        assert_eq!(
            (r["type"].as_str(), r["code"].as_str()),
            (Some("error"), Some("engine_unavailable")),
            "{r}"
        );
    }
    let refused = a.hub.topic_count(topic).await.unwrap_err();
    assert_eq!(refused.code().as_str(), "engine_unavailable");
    let refused = a.hub.topic_members_page(topic, None, 10).await.unwrap_err();
    assert_eq!(refused.code().as_str(), "engine_unavailable");
    // Bad input is still told as such, before the engine is asked.
    let r = c
        .ask(json!({"type": "presence", "topic": topic, "limit": 0}), 20)
        .await;
    assert_eq!(r["code"], "bad_limit", "{r}");
    // The session is still served.
    c.send(json!({"type": "ping", "id": 21})).await;
    let r = c.recv().await;
    assert_eq!(
        (r["type"].as_str(), r["id"].as_u64()),
        (Some("pong"), Some(21)),
        "{r}"
    );
}
