//! Presence shared by nodes: add, remove, members across engines; expiry of a dead node's
//! members, each returned exactly once when engines race for it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{node, random_u64, NodeOptions, SharedRedis, WAIT};
use livehub_core::presence::{
    Expired, Member, PresenceCount, PresenceStore, Removal, Scope, ScopeName,
};
use livehub_core::SessionId;
use serde_json::json;

fn member(user: &str) -> Member {
    Member {
        session: SessionId::parse(&format!("{:016x}", random_u64())).unwrap(),
        user: user.to_owned(),
        meta: json!({"name": user}),
    }
}

fn users(mut members: Vec<Member>) -> Vec<String> {
    members.sort_by(|a, b| a.user.cmp(&b.user));
    members.into_iter().map(|m| m.user).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_are_shared_across_engines() {
    let Some(redis) = SharedRedis::get() else {
        return;
    };
    let a = node(&redis.url, &redis.prefix, NodeOptions::default()).await;
    let b = node(&redis.url, &redis.prefix, NodeOptions::default()).await;
    let (ann, bob, cy) = (member("ann"), member("bob"), member("cy"));
    let topic = Scope::Topic("scores");
    a.engine.add(topic, &ann).await.unwrap();
    b.engine.add(topic, &bob).await.unwrap();
    // Same name, other kind: another scope.
    b.engine.add(Scope::Room("scores"), &cy).await.unwrap();

    let seen = a.engine.members(topic).await.unwrap();
    assert_eq!(users(seen.clone()), ["ann", "bob"]);
    assert!(
        seen.contains(&ann),
        "session, user and meta come back whole"
    );
    assert_eq!(
        users(b.engine.members(Scope::Room("scores")).await.unwrap()),
        ["cy"]
    );

    // Adding again updates (one entry per session).
    let mut ann2 = ann.clone();
    ann2.meta = json!({"name": "ann", "away": true});
    b.engine.add(topic, &ann2).await.unwrap();
    let seen = b.engine.members(topic).await.unwrap();
    assert_eq!(seen.len(), 2);
    assert!(seen.contains(&ann2));

    // Removed once: the second removal (from either node) finds nothing.
    assert_eq!(
        b.engine.remove(topic, ann.session).await.unwrap(),
        Removal::User
    );
    assert_eq!(
        a.engine.remove(topic, ann.session).await.unwrap(),
        Removal::Absent
    );
    assert_eq!(users(a.engine.members(topic).await.unwrap()), ["bob"]);
    assert!(a
        .engine
        .members(Scope::Topic("nobody"))
        .await
        .unwrap()
        .is_empty());
    // Live members do not expire.
    assert!(a.engine.expire().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_nodes_members_expire_once_each_while_engines_race() {
    let Some(redis) = SharedRedis::get() else {
        return;
    };
    let short = || NodeOptions {
        builder: |b| {
            b.presence_ttl(Duration::from_millis(600))
                .presence_refresh(Duration::from_millis(200))
        },
        ..NodeOptions::default()
    };
    let a = node(&redis.url, &redis.prefix, short()).await;
    let b = node(&redis.url, &redis.prefix, short()).await;
    let dead = node(&redis.url, &redis.prefix, short()).await;
    assert_eq!(a.engine.presence_bound(), Duration::from_millis(800));

    // The dead node's members, in 20 scopes (topics and rooms).
    let mut expected = HashSet::new();
    for i in 0..60 {
        let scope = if i % 2 == 0 {
            ScopeName::Topic(format!("t{}", i % 10))
        } else {
            ScopeName::Room(format!("r{}", i % 10))
        };
        let m = member(&format!("gone-{i}"));
        dead.engine.add(scope.as_scope(), &m).await.unwrap();
        expected.insert((scope, m.session));
    }
    // A live member of A's in one of those scopes, refreshed as A goes.
    let live = member("live");
    let live_scope = ScopeName::Topic("t0".into());
    a.engine.add(live_scope.as_scope(), &live).await.unwrap();
    drop(dead);

    // Both collect until the two of them have all 60 (or the safety net).
    let collected = Arc::new(AtomicUsize::new(0));
    let race = |engine: livehub_redis::RedisEngine, keep: Option<(ScopeName, Member)>| {
        let collected = collected.clone();
        async move {
            let mut got = Vec::new();
            let deadline = tokio::time::Instant::now() + WAIT;
            while collected.load(Ordering::SeqCst) < 60 && tokio::time::Instant::now() < deadline {
                if let Some(keep) = &keep {
                    engine.refresh(std::slice::from_ref(keep)).await.unwrap();
                }
                let expired = engine.expire().await.unwrap();
                collected.fetch_add(expired.len(), Ordering::SeqCst);
                got.extend(expired);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            got
        }
    };
    let total = |got: &[Expired]| got.len();
    let (from_a, from_b) = tokio::join!(
        race(a.engine.clone(), Some((live_scope.clone(), live.clone()))),
        race(b.engine.clone(), None)
    );
    eprintln!("expired by A: {}, by B: {}", from_a.len(), from_b.len());
    let mut seen = HashSet::new();
    for Expired {
        scope, member: m, ..
    } in from_a.iter().chain(&from_b)
    {
        assert!(
            seen.insert((scope.clone(), m.session)),
            "{} returned twice",
            m.user
        );
        assert!(expected.contains(&(scope.clone(), m.session)), "{}", m.user);
    }
    assert_eq!(
        seen.len(),
        60,
        "A got {}, B got {}",
        total(&from_a),
        total(&from_b)
    );
    // The live member stayed.
    assert_eq!(
        b.engine.members(live_scope.as_scope()).await.unwrap(),
        std::slice::from_ref(&live)
    );
    // Nothing is left to expire, and scopes emptied are out of the index.
    assert!(a.engine.expire().await.unwrap().is_empty());
    let index: Vec<String> = redis::cmd("ZRANGE")
        .arg(format!("{{{}}}:presence", redis.prefix))
        .arg(0)
        .arg(-1)
        .query(&mut redis.cli())
        .unwrap();
    assert_eq!(index, ["t:t0"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_brings_back_what_the_store_lost() {
    let Some(redis) = SharedRedis::get() else {
        return;
    };
    let a = node(&redis.url, &redis.prefix, NodeOptions::default()).await;
    let mine: Vec<(ScopeName, Member)> = (0..300)
        .map(|i| {
            (
                ScopeName::Room(format!("room{}", i % 3)),
                member(&format!("m{i}")),
            )
        })
        .collect();
    a.engine.refresh(&mine).await.unwrap();
    assert_eq!(
        a.engine.members(Scope::Room("room1")).await.unwrap().len(),
        100
    );
    // The store loses everything (a Redis flushed or restarted empty).
    let keys = redis.keys();
    let _: () = redis::cmd("DEL")
        .arg(&keys)
        .query(&mut redis.cli())
        .unwrap();
    assert!(a
        .engine
        .members(Scope::Room("room1"))
        .await
        .unwrap()
        .is_empty());
    a.engine.refresh(&mine).await.unwrap();
    for r in ["room0", "room1", "room2"] {
        assert_eq!(a.engine.members(Scope::Room(r)).await.unwrap().len(), 100);
    }
    assert!(a.engine.expire().await.unwrap().is_empty());
    assert_eq!(a.engine.refresh_interval(), Duration::from_secs(10));
    assert_eq!(a.engine.presence_bound(), Duration::from_secs(40));
}

/// A member of `user` with a session id of node `node` (its high 32 bits).
fn member_on(node: u32, user: &str) -> Member {
    let local = (random_u64() & 0xffff_ffff) as u32;
    Member {
        session: SessionId::from_parts(node, local),
        user: user.to_owned(),
        meta: json!({"name": user}),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_members_counted_in_o1_and_paged_exactly_once() {
    let Some(redis) = SharedRedis::get() else {
        return;
    };
    let a = node(&redis.url, &redis.prefix, NodeOptions::default()).await;
    let b = node(&redis.url, &redis.prefix, NodeOptions::default()).await;
    let big = Scope::Topic("stadium");
    let small = Scope::Topic("small");
    // 5,000 users with a session on each node: 10,000 members.
    let mut on_a = Vec::new();
    let mut on_b = Vec::new();
    for i in 0..5_000 {
        let user = format!("u{i}");
        on_a.push((ScopeName::from(big), member_on(1, &user)));
        on_b.push((ScopeName::from(big), member_on(2, &user)));
    }
    let start = std::time::Instant::now();
    a.engine.refresh(&on_a).await.unwrap();
    b.engine.refresh(&on_b).await.unwrap();
    eprintln!("10,000 members written: {:?}", start.elapsed());
    assert!(a.engine.add(small, &member("solo")).await.unwrap());

    let want = PresenceCount {
        count: 10_000,
        users: 5_000,
    };
    assert_eq!(a.engine.count(big).await.unwrap(), want);
    assert_eq!(b.engine.count(big).await.unwrap(), want);
    assert_eq!(
        b.engine.count(small).await.unwrap(),
        PresenceCount { count: 1, users: 1 }
    );
    assert_eq!(
        b.engine.count(Scope::Room("stadium")).await.unwrap(),
        PresenceCount::default()
    );
    // A refresh adds nothing to the counts.
    a.engine.refresh(&on_a).await.unwrap();
    assert_eq!(a.engine.count(big).await.unwrap(), want);

    // O(1): a count of 10,000 costs what a count of one does (one round trip each).
    let time = |scope: Scope<'static>| {
        let engine = a.engine.clone();
        async move {
            let start = std::time::Instant::now();
            for _ in 0..500 {
                std::hint::black_box(engine.count(scope).await.unwrap());
            }
            start.elapsed()
        }
    };
    let one = time(small).await;
    let many = time(big).await;
    eprintln!("500 counts: 1 member {one:?}, 10,000 members {many:?}");
    assert!(
        many <= one * 3 + Duration::from_millis(100),
        "10,000: {many:?}, one: {one:?}"
    );

    // Pages: within their size, in session order, every member exactly once.
    let all: HashSet<SessionId> = on_a.iter().chain(&on_b).map(|(_, m)| m.session).collect();
    for limit in [1000, 333] {
        let mut seen = Vec::new();
        let mut after = None;
        let mut pages = 0;
        loop {
            let page = b.engine.page(big, after, limit).await.unwrap();
            pages += 1;
            assert!(page.members.len() <= limit);
            for m in &page.members {
                assert_eq!(m.meta["name"], m.user.as_str(), "whole members");
            }
            seen.extend(page.members.iter().map(|m| m.session));
            match page.cursor {
                Some(c) => after = Some(SessionId::parse(&c).unwrap()),
                None => break,
            }
            assert!(pages <= 10_000, "the cursors never end");
        }
        assert_eq!(pages, 10_000usize.div_ceil(limit), "{limit}");
        assert_eq!(seen.len(), 10_000, "{limit}");
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "in session order");
        assert_eq!(seen.into_iter().collect::<HashSet<_>>(), all);
    }
    let past = b
        .engine
        .page(big, Some(SessionId::from_u64(u64::MAX)), 10)
        .await
        .unwrap();
    assert_eq!((past.members.len(), past.cursor), (0, None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_is_in_from_its_first_session_to_its_last_on_any_node() {
    let Some(redis) = SharedRedis::get() else {
        return;
    };
    let a = node(&redis.url, &redis.prefix, NodeOptions::default()).await;
    let b = node(&redis.url, &redis.prefix, NodeOptions::default()).await;
    let room = Scope::Room("chat:1");
    let (ann1, ann2) = (member_on(1, "ann"), member_on(2, "ann"));
    // First session (A): the user joins; second (B): she was in already.
    assert!(a.engine.add(room, &ann1).await.unwrap());
    assert!(!b.engine.add(room, &ann2).await.unwrap());
    // Adding again (a meta update) is no new session.
    assert!(!a.engine.add(room, &ann1).await.unwrap());
    assert_eq!(
        a.engine.count(room).await.unwrap(),
        PresenceCount { count: 2, users: 1 }
    );
    // Anonymous sessions are users of their own.
    let (anon1, anon2) = (member_on(1, ""), member_on(2, ""));
    assert!(a.engine.add(room, &anon1).await.unwrap());
    assert!(b.engine.add(room, &anon2).await.unwrap());
    assert_eq!(
        b.engine.count(room).await.unwrap(),
        PresenceCount { count: 4, users: 3 }
    );
    // The first goes: she stays; the last goes: she leaves; once.
    assert_eq!(
        b.engine.remove(room, ann1.session).await.unwrap(),
        Removal::Session
    );
    assert_eq!(
        a.engine.remove(room, ann2.session).await.unwrap(),
        Removal::User
    );
    assert_eq!(
        a.engine.remove(room, ann2.session).await.unwrap(),
        Removal::Absent
    );
    assert_eq!(
        a.engine.remove(room, anon1.session).await.unwrap(),
        Removal::User
    );
    assert_eq!(
        a.engine.count(room).await.unwrap(),
        PresenceCount { count: 1, users: 1 }
    );
    // She comes back: a join again.
    assert!(b.engine.add(room, &ann2).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_nodes_sessions_expire_and_their_users_leave_with_the_last() {
    let Some(redis) = SharedRedis::get() else {
        return;
    };
    let short = || NodeOptions {
        builder: |b| {
            b.presence_ttl(Duration::from_millis(600))
                .presence_refresh(Duration::from_millis(200))
        },
        ..NodeOptions::default()
    };
    let a = node(&redis.url, &redis.prefix, short()).await;
    let dead = node(&redis.url, &redis.prefix, short()).await;
    let topic = ScopeName::Topic("t".into());
    // Ann has a session on A (alive) and one on the dead node; Bob only on the dead node,
    // with two sessions.
    let ann_live = member_on(1, "ann");
    let ann_dead = member_on(2, "ann");
    let (bob1, bob2) = (member_on(2, "bob"), member_on(2, "bob"));
    assert!(a.engine.add(topic.as_scope(), &ann_live).await.unwrap());
    for m in [&ann_dead, &bob1, &bob2] {
        dead.engine.add(topic.as_scope(), m).await.unwrap();
    }
    drop(dead);

    let mut expired = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while expired.len() < 3 && tokio::time::Instant::now() < deadline {
        a.engine
            .refresh(&[(topic.clone(), ann_live.clone())])
            .await
            .unwrap();
        expired.extend(a.engine.expire().await.unwrap());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut got: Vec<(String, bool)> = expired
        .iter()
        .map(|e| {
            assert_eq!(e.scope, topic);
            (e.member.user.clone(), e.user_left)
        })
        .collect();
    got.sort();
    // Ann stays (her session on A); Bob leaves once, with the last of his two.
    assert_eq!(
        got,
        [
            ("ann".to_owned(), false),
            ("bob".to_owned(), false),
            ("bob".to_owned(), true)
        ]
    );
    assert_eq!(
        a.engine.count(topic.as_scope()).await.unwrap(),
        PresenceCount { count: 1, users: 1 }
    );
    assert!(a.engine.expire().await.unwrap().is_empty());
}
