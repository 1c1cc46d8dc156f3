//! Presence shared by nodes: add, remove, members across engines; expiry of a dead node's
//! members, each returned exactly once when engines race for it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{node, random_u64, NodeOptions, SharedRedis, WAIT};
use hub_core::presence::{Expired, Member, PresenceStore, Removal, Scope, ScopeName};
use hub_core::SessionId;
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
    let race = |engine: hub_redis::RedisEngine, keep: Option<(ScopeName, Member)>| {
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
