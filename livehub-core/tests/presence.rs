//! Presence at scale on the in-process engine, driven through the public seam
//! (`Hub::connect`, `Session`, `Outbox`): counts that do not walk the members, pages that
//! list every member exactly once, users that join with their first session and leave with
//! their last, and the codes of bad page requests.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::time::{Duration, Instant};

use bytes::Bytes;
use livehub_core::{
    async_trait, Action, Codec, ConnectRequest, Connection, Hooks, Hub, Identity, Outgoing,
    PresenceCount, PresenceEvents, Rejection, TransportInfo,
};
use serde_json::{json, Value};

/// The safety net of every wait.
const WAIT: Duration = Duration::from_secs(10);

/// Users from the query (`?user=ana`), anonymous without; everyone may do everything.
struct Open;

#[async_trait]
impl Hooks for Open {
    async fn authenticate(&self, req: &ConnectRequest) -> Result<Identity, Rejection> {
        Ok(match req.query("user") {
            Some(u) => Identity::user(u.as_ref()).with_meta(json!({"name": u.as_ref()})),
            None => Identity::anonymous(),
        })
    }

    async fn authorize(&self, _who: &Identity, _action: Action<'_>) -> bool {
        true
    }
}

/// A session over the in-memory seam: frames in as JSON, frames out decoded.
struct Mem {
    conn: Connection,
    ready: std::collections::VecDeque<Outgoing>,
    batch: Vec<Outgoing>,
}

impl Mem {
    async fn connect(hub: &Hub, user: Option<&str>) -> Mem {
        let mut req = ConnectRequest::new(TransportInfo::duplex("memory"), Codec::Json);
        if let Some(u) = user {
            req.uri = format!("/?user={u}").parse().unwrap();
        }
        let conn = hub.connect(req).await.expect("connect");
        let mut mem = Mem {
            conn,
            ready: Default::default(),
            batch: Vec::new(),
        };
        assert_eq!(mem.recv().await["type"], "welcome");
        mem
    }

    fn id(&self) -> String {
        self.conn.session.id().to_string()
    }

    async fn send(&self, frame: Value) {
        let bytes = serde_json::to_vec(&frame).unwrap();
        self.conn.session.handle(Bytes::from(bytes)).await;
    }

    /// The next frame (pings skipped), waiting at most [`WAIT`].
    async fn recv(&mut self) -> Value {
        loop {
            if let Some(item) = self.ready.pop_front() {
                match item {
                    Outgoing::Frame(f) => return serde_json::from_slice(f.bytes()).unwrap(),
                    Outgoing::Ping | Outgoing::Subscribed { .. } => continue,
                    other => panic!("unexpected {other:?}"),
                }
            }
            let more = tokio::time::timeout(WAIT, self.conn.outbox.next_batch(&mut self.batch))
                .await
                .expect("timed out waiting for a frame");
            assert!(more, "outbox finished");
            self.ready.extend(self.batch.drain(..));
        }
    }

    /// Sends a request with an id and returns its answer (`reply` or `error`).
    async fn ask(&mut self, mut frame: Value, id: u64) -> Value {
        frame["id"] = json!(id);
        self.send(frame).await;
        let f = self.recv().await;
        assert!(matches!(f["type"].as_str(), Some("reply" | "error")), "{f}");
        assert_eq!(f["id"], id, "{f}");
        f
    }

    /// The code of the `error` answering `frame`.
    async fn refused(&mut self, frame: Value) -> String {
        let f = self.ask(frame, 99).await;
        assert_eq!(f["type"], "error", "{f}");
        f["code"].as_str().unwrap().to_owned()
    }
}

fn hub() -> Hub {
    Hub::builder().hooks(Open).build()
}

/// `n` sessions following `topic`, users `u0`, `u1`, ... with `per_user` sessions each.
async fn crowd(hub: &Hub, topic: &str, n: usize, per_user: usize) -> Vec<Connection> {
    let mut out = Vec::with_capacity(n);
    let frame = Bytes::from(format!(r#"{{"type":"subscribe","topic":"{topic}"}}"#));
    for i in 0..n {
        let user = format!("u{}", i / per_user);
        let req = ConnectRequest {
            uri: format!("/?user={user}").parse().unwrap(),
            ..ConnectRequest::new(TransportInfo::duplex("memory"), Codec::Json)
        };
        let conn = hub.connect(req).await.unwrap();
        conn.session.handle(frame.clone()).await;
        out.push(conn);
    }
    out
}

/// Every page of a topic's members through the protocol, `limit` at a time (`None`: the
/// server's size): the session ids in order, and the size of each page.
async fn all_pages(c: &mut Mem, topic: &str, limit: Option<u64>) -> (Vec<String>, Vec<usize>) {
    let (mut ids, mut sizes) = (Vec::new(), Vec::new());
    let mut cursor: Option<String> = None;
    for id in 1.. {
        let mut f = json!({"type": "presence", "topic": topic});
        if let Some(n) = limit {
            f["limit"] = json!(n);
        }
        if let Some(c) = &cursor {
            f["cursor"] = json!(c);
        }
        let r = c.ask(f, id).await;
        assert_eq!(r["type"], "reply", "{r}");
        let members = r["data"]["members"].as_array().unwrap();
        sizes.push(members.len());
        ids.extend(
            members
                .iter()
                .map(|m| m["session"].as_str().unwrap().to_owned()),
        );
        match r["data"]["cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => {
                assert!(r["data"]["cursor"].is_null(), "{r}");
                break;
            }
        }
        assert!(id < 100_000, "the cursors never end");
    }
    (ids, sizes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_members_counted_without_a_walk_and_paged_exactly_once() {
    let hub = hub();
    // A topic of one member, for the cost of a count that has nothing to walk.
    let mut watcher = Mem::connect(&hub, None).await;
    let r = watcher
        .ask(json!({"type": "subscribe", "topic": "small"}), 1)
        .await;
    assert_eq!(r["type"], "reply");
    // 10,000 sessions of 5,000 users (two tabs each), plus the (anonymous) watcher.
    let start = Instant::now();
    let crowd = crowd(&hub, "stadium", 10_000, 2).await;
    eprintln!("10,000 subscribes: {:?}", start.elapsed());
    let r = watcher
        .ask(json!({"type": "subscribe", "topic": "stadium"}), 2)
        .await;
    assert_eq!(r["type"], "reply");

    // The count, over the protocol and from the host.
    let r = watcher
        .ask(json!({"type": "presence_count", "topic": "stadium"}), 3)
        .await;
    assert_eq!(r["data"], json!({"count": 10_001, "users": 5_001}), "{r}");
    let big = PresenceCount {
        count: 10_001,
        users: 5_001,
    };
    assert_eq!(hub.topic_count("stadium").await.unwrap(), big);
    assert_eq!(
        hub.topic_count("small").await.unwrap(),
        PresenceCount { count: 1, users: 1 }
    );
    assert_eq!(
        hub.topic_count("nobody").await.unwrap(),
        PresenceCount::default()
    );

    // O(1): counting 10,001 members costs what counting one does. A walk would cost 10,000
    // times as much per count; the bound allows ten times, plus a little for a busy machine.
    let time = |topic: &'static str| {
        let hub = hub.clone();
        async move {
            let start = Instant::now();
            for _ in 0..20_000 {
                std::hint::black_box(hub.topic_count(topic).await.unwrap());
            }
            start.elapsed()
        }
    };
    let small = time("small").await;
    let large = time("stadium").await;
    eprintln!("20,000 counts: 1 member {small:?}, 10,001 members {large:?}");
    assert!(
        large <= small * 10 + Duration::from_millis(50),
        "counting 10,001 members took {large:?}, one member {small:?}"
    );

    // Pages: each at most its size; the cursors list every member exactly once, in order.
    let expected: HashSet<String> = crowd
        .iter()
        .map(|c| c.session.id().to_string())
        .chain([watcher.id()])
        .collect();
    for limit in [Some(1000), Some(777), None] {
        let (ids, sizes) = all_pages(&mut watcher, "stadium", limit).await;
        let max = limit.unwrap_or(1000) as usize;
        assert!(sizes.iter().all(|&n| n <= max), "{limit:?}: {sizes:?}");
        assert_eq!(
            sizes.len(),
            10_001usize.div_ceil(max),
            "{limit:?}: {sizes:?}"
        );
        assert_eq!(ids.len(), 10_001, "{limit:?}");
        let seen: HashSet<String> = ids.iter().cloned().collect();
        assert_eq!(seen, expected, "{limit:?}: each member once");
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "in session id order");
    }
    // The host pages the same way.
    let mut cursor: Option<String> = None;
    let mut seen = HashSet::new();
    loop {
        let page = hub
            .topic_members_page("stadium", cursor.as_deref(), 4096)
            .await
            .unwrap_err();
        // 4,096 is over the largest page (1,000): refused, as for clients.
        assert_eq!(page.code().as_str(), "bad_limit");
        let page = hub
            .topic_members_page("stadium", cursor.as_deref(), 999)
            .await
            .unwrap();
        assert!(page.members.len() <= 999);
        for m in &page.members {
            assert!(seen.insert(m.session.to_string()), "twice: {}", m.session);
            if !m.user.is_empty() {
                assert_eq!(m.meta["name"], m.user.as_str());
            }
        }
        match page.cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(seen, expected);
    drop(crowd);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_present_throughout_a_paging_are_listed_once_whatever_comes_and_goes() {
    let hub = hub();
    let mut watcher = Mem::connect(&hub, Some("watcher")).await;
    watcher
        .ask(json!({"type": "subscribe", "topic": "t"}), 1)
        .await;
    let mut crowd = crowd(&hub, "t", 300, 1).await;
    let mut stable: HashSet<String> = crowd
        .iter()
        .map(|c| c.session.id().to_string())
        .chain([watcher.id()])
        .collect();

    let page = |cursor: Option<String>| json!({"type": "presence", "topic": "t", "limit": 50, "cursor": cursor});
    let r = watcher.ask(page(None), 2).await;
    let mut got: Vec<String> = r["data"]["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["session"].as_str().unwrap().to_owned())
        .collect();
    let mut cursor = r["data"]["cursor"].as_str().map(str::to_owned);
    // Between pages: a hundred leave (from anywhere in the order), fifty come.
    for c in crowd.drain(100..200) {
        stable.remove(&c.session.id().to_string());
        c.session.close(livehub_core::DisconnectReason::Normal);
    }
    let newcomers = self::crowd(&hub, "t", 50, 1).await;
    let mut id = 3;
    while let Some(c) = cursor {
        let r = watcher.ask(page(Some(c)), id).await;
        id += 1;
        let members = r["data"]["members"].as_array().unwrap();
        assert!(members.len() <= 50);
        got.extend(
            members
                .iter()
                .map(|m| m["session"].as_str().unwrap().to_owned()),
        );
        cursor = r["data"]["cursor"].as_str().map(str::to_owned);
    }
    let unique: HashSet<&String> = got.iter().collect();
    assert_eq!(unique.len(), got.len(), "a member listed twice");
    for s in &stable {
        assert!(
            unique.contains(s),
            "{s} was there throughout and was not listed"
        );
    }
    assert_eq!(
        hub.topic_count("t").await.unwrap().count,
        (stable.len() + newcomers.len()) as u64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_page_requests_have_stable_codes() {
    let hub = Hub::builder().hooks(Open).presence_page_max(50).build();
    let mut c = Mem::connect(&hub, Some("ana")).await;
    c.ask(json!({"type": "subscribe", "topic": "t"}), 1).await;
    c.send(json!({"type": "join", "room": "r"})).await;
    let p = |extra: Value| {
        let mut f = json!({"type": "presence", "topic": "t"});
        f.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        f
    };
    for (frame, code) in [
        (p(json!({"limit": 0})), "bad_limit"),
        (p(json!({"limit": 51})), "bad_limit"),
        (p(json!({"limit": u64::MAX})), "bad_limit"),
        (p(json!({"limit": -1})), "bad_field"),
        (p(json!({"limit": "10"})), "bad_field"),
        (p(json!({"cursor": "not-a-cursor"})), "bad_cursor"),
        (p(json!({"cursor": ""})), "bad_cursor"),
        (p(json!({"cursor": "5f0e8c1d2a3b4c6"})), "bad_cursor"),
        (p(json!({"cursor": "5f0e8c1d2a3b4c6d0"})), "bad_cursor"),
        (p(json!({"cursor": 12})), "bad_field"),
        (
            json!({"type": "presence", "topic": "other", "limit": 10}),
            "not_subscribed",
        ),
        (
            json!({"type": "presence_count", "topic": "other"}),
            "not_subscribed",
        ),
        (
            json!({"type": "presence_count", "room": "nope"}),
            "not_member",
        ),
        (json!({"type": "presence_count"}), "bad_field"),
        (
            json!({"type": "presence_count", "topic": "a b"}),
            "bad_topic",
        ),
        (
            json!({"type": "subscribe", "topic": "u", "presence": "everyone"}),
            "bad_field",
        ),
    ] {
        assert_eq!(c.refused(frame.clone()).await, code, "{frame}");
    }
    // The session goes on; the largest page and a cursor past every member are fine.
    let r = c.ask(p(json!({"limit": 50})), 2).await;
    assert_eq!(r["data"]["members"].as_array().unwrap().len(), 1);
    assert!(r["data"]["cursor"].is_null());
    let r = c.ask(p(json!({"cursor": "ffffffffffffffff"})), 3).await;
    assert_eq!(r["data"], json!({"members": [], "cursor": null}));
    let r = c
        .ask(json!({"type": "presence_count", "room": "r"}), 4)
        .await;
    assert_eq!(r["data"], json!({"count": 1, "users": 1}));
}

/// Publishes a marker and checks that it is the next frame `c` gets: nothing (no `join`,
/// no `leave`) came before it.
async fn nothing_before_marker(hub: &Hub, c: &mut Mem, topic: &str, n: u64) {
    hub.publish(topic, &json!({"marker": n})).await.unwrap();
    let f = c.recv().await;
    assert_eq!(f["type"], "message", "expected marker {n}, got {f}");
    assert_eq!(f["data"]["marker"], n);
}

/// The next frame that is not a message (the markers), which must be a `join` or `leave`:
/// `(type, user, session)`.
async fn presence_event(c: &mut Mem) -> (String, String, String) {
    let mut f = c.recv().await;
    while f["type"] == "message" {
        f = c.recv().await;
    }
    assert!(matches!(f["type"].as_str(), Some("join" | "leave")), "{f}");
    (
        f["type"].as_str().unwrap().to_owned(),
        f["member"]["user"].as_str().unwrap().to_owned(),
        f["member"]["session"].as_str().unwrap().to_owned(),
    )
}

fn ev(kind: &str, user: &str, session: &str) -> (String, String, String) {
    (kind.to_owned(), user.to_owned(), session.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_joins_with_the_first_session_and_leaves_with_the_last() {
    let hub = hub();
    let topic = "lobby";
    let mut users = Mem::connect(&hub, Some("watch-users")).await;
    let r = users
        .ask(
            json!({"type": "subscribe", "topic": topic, "presence": "users"}),
            1,
        )
        .await;
    assert_eq!(r["type"], "reply");
    let mut sessions = Mem::connect(&hub, Some("watch-sessions")).await;
    sessions
        .ask(
            json!({"type": "subscribe", "topic": topic, "presence": true}),
            1,
        )
        .await;
    // The session watcher came after the user watcher: the user watcher saw its user join.
    assert_eq!(
        presence_event(&mut users).await,
        ev("join", "watch-sessions", &sessions.id())
    );

    // Ana's first tab: a join for both watchers.
    let tab1 = Mem::connect(&hub, Some("ana")).await;
    tab1.send(json!({"type": "subscribe", "topic": topic}))
        .await;
    assert_eq!(
        presence_event(&mut users).await,
        ev("join", "ana", &tab1.id())
    );
    assert_eq!(
        presence_event(&mut sessions).await,
        ev("join", "ana", &tab1.id())
    );
    // Her second tab: the session watcher sees it, the user watcher does not.
    let tab2 = Mem::connect(&hub, Some("ana")).await;
    tab2.send(json!({"type": "subscribe", "topic": topic}))
        .await;
    assert_eq!(
        presence_event(&mut sessions).await,
        ev("join", "ana", &tab2.id())
    );
    nothing_before_marker(&hub, &mut users, topic, 1).await;
    assert_eq!(
        hub.topic_count(topic).await.unwrap(),
        PresenceCount { count: 4, users: 3 }
    );

    // The first tab goes: she is still in.
    tab1.send(json!({"type": "unsubscribe", "topic": topic}))
        .await;
    assert_eq!(
        presence_event(&mut sessions).await,
        ev("leave", "ana", &tab1.id())
    );
    nothing_before_marker(&hub, &mut users, topic, 2).await;
    // The last one closes: she leaves, once, named by that last session.
    let last = tab2.id();
    tab2.conn
        .session
        .close(livehub_core::DisconnectReason::Normal);
    drop(tab2.conn);
    assert_eq!(presence_event(&mut users).await, ev("leave", "ana", &last));
    assert_eq!(
        presence_event(&mut sessions).await,
        ev("leave", "ana", &last)
    );
    nothing_before_marker(&hub, &mut users, topic, 3).await;
    assert_eq!(
        hub.topic_count(topic).await.unwrap(),
        PresenceCount { count: 2, users: 2 }
    );

    // Anonymous sessions are users of their own: two of them, two joins.
    let anon1 = Mem::connect(&hub, None).await;
    anon1
        .send(json!({"type": "subscribe", "topic": topic}))
        .await;
    let anon2 = Mem::connect(&hub, None).await;
    anon2
        .send(json!({"type": "subscribe", "topic": topic}))
        .await;
    assert_eq!(
        presence_event(&mut users).await,
        ev("join", "", &anon1.id())
    );
    assert_eq!(
        presence_event(&mut users).await,
        ev("join", "", &anon2.id())
    );
    assert_eq!(
        hub.topic_count(topic).await.unwrap(),
        PresenceCount { count: 4, users: 4 }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_count_page_and_tell_users_once() {
    let hub = Hub::builder()
        .hooks(Open)
        .room_presence(PresenceEvents::Users)
        .build();
    let mut bob = Mem::connect(&hub, Some("bob")).await;
    hub.join(bob.conn.session.id(), "chat:1").await.unwrap();
    let ana1 = Mem::connect(&hub, Some("ana")).await;
    let ana2 = Mem::connect(&hub, Some("ana")).await;
    hub.join(ana1.conn.session.id(), "chat:1").await.unwrap();
    assert_eq!(
        presence_event(&mut bob).await,
        ev("join", "ana", &ana1.id())
    );
    hub.join(ana2.conn.session.id(), "chat:1").await.unwrap();
    assert_eq!(
        hub.room_count("chat:1").await.unwrap(),
        PresenceCount { count: 3, users: 2 }
    );
    let page = hub.room_members_page("chat:1", None, 2).await.unwrap();
    assert_eq!(page.members.len(), 2);
    let rest = hub
        .room_members_page("chat:1", page.cursor.as_deref(), 2)
        .await
        .unwrap();
    assert_eq!(rest.members.len(), 1);
    assert_eq!(rest.cursor, None);
    let mut all: Vec<String> = page
        .members
        .iter()
        .chain(&rest.members)
        .map(|m| m.session.to_string())
        .collect();
    all.sort();
    let mut want = vec![bob.id(), ana1.id(), ana2.id()];
    want.sort();
    assert_eq!(all, want);

    hub.leave(ana1.conn.session.id(), "chat:1").unwrap();
    hub.leave(ana2.conn.session.id(), "chat:1").unwrap();
    // One leave, with her last session; nothing for the first.
    assert_eq!(
        presence_event(&mut bob).await,
        ev("leave", "ana", &ana2.id())
    );
    hub.to("chat:1").emit("marker", &1).unwrap();
    let f = bob.recv().await;
    assert_eq!(
        (f["type"].as_str(), f["event"].as_str()),
        (Some("event"), Some("marker"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_a_pattern_brings_makes_a_member_like_a_subscribe() {
    let hub = hub();
    let mut watcher = Mem::connect(&hub, Some("watcher")).await;
    watcher
        .ask(
            json!({"type": "subscribe", "topic": "scores/a", "presence": true}),
            1,
        )
        .await;
    let mut fan = Mem::connect(&hub, Some("fan")).await;
    let r = fan
        .ask(json!({"type": "psubscribe", "pattern": "scores/*"}), 1)
        .await;
    assert_eq!(r["type"], "reply", "{r}");
    assert_eq!(
        presence_event(&mut watcher).await,
        ev("join", "fan", &fan.id())
    );
    assert_eq!(
        hub.topic_count("scores/a").await.unwrap(),
        PresenceCount { count: 2, users: 2 }
    );
    let page = hub.topic_members_page("scores/a", None, 10).await.unwrap();
    assert_eq!(page.members.len(), 2);
    fan.ask(json!({"type": "punsubscribe", "pattern": "scores/*"}), 2)
        .await;
    assert_eq!(
        presence_event(&mut watcher).await,
        ev("leave", "fan", &fan.id())
    );
    assert_eq!(
        hub.topic_count("scores/a").await.unwrap(),
        PresenceCount { count: 1, users: 1 }
    );
}
