//! Presence at scale from the client: counts without member lists, member lists gathered page
//! by page, and per-user join/leave (a user with two connections joins once and leaves with
//! the last), against a real hub over loopback.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;

use common::{next, serve};
use livehub_client::{PresenceCount, SubEvent, SubscribeOptions};
use livehub_core::Hub;

#[tokio::test]
async fn counts_pages_and_per_user_events() {
    // Pages of 4 members: a list of 9 takes three requests, which the client follows.
    let hub = Hub::builder()
        .hooks(common::TestHooks::default())
        .presence_page_max(4)
        .build();
    let addr = serve(hub.clone()).await;
    let watcher = common::client(addr, "?user=watch").connect().await.unwrap();
    let mut watch = watcher
        .subscribe_with("lobby", SubscribeOptions::new().presence_users())
        .await
        .unwrap();

    // Four users, one of them (ana) on three connections.
    let mut clients = Vec::new();
    let mut subs = Vec::new();
    for user in ["ana", "ana", "ana", "bo", "cy", "dee"] {
        let c = common::client(addr, &format!("?user={user}"))
            .connect()
            .await
            .unwrap();
        subs.push(c.subscribe("lobby").await.unwrap());
        clients.push(c);
    }
    // One join per user, not per session.
    let mut joined = Vec::new();
    for _ in 0..4 {
        let SubEvent::Join(m) = next(&mut watch).await else {
            panic!("a join")
        };
        joined.push(m.user);
    }
    joined.sort();
    assert_eq!(joined, ["ana", "bo", "cy", "dee"]);

    assert_eq!(
        watcher.presence_count("lobby").await.unwrap(),
        PresenceCount { count: 7, users: 5 }
    );
    // Seven sessions over pages of four: every member once.
    let members = watcher.presence("lobby").await.unwrap();
    let sessions: BTreeSet<_> = members.iter().map(|m| m.session).collect();
    assert_eq!((members.len(), sessions.len()), (7, 7));

    // Ana's first two connections go: no leave yet; the third: her leave.
    for c in clients.drain(..2) {
        c.close().await;
    }
    let bo = clients.remove(1);
    bo.close().await;
    let SubEvent::Leave(m) = next(&mut watch).await else {
        panic!("a leave")
    };
    assert_eq!(m.user, "bo", "ana is still here on her third connection");
    clients.remove(0).close().await;
    let SubEvent::Leave(m) = next(&mut watch).await else {
        panic!("a leave")
    };
    assert_eq!(m.user, "ana");
    assert_eq!(
        watcher.presence_count("lobby").await.unwrap(),
        PresenceCount { count: 3, users: 3 }
    );
    drop(subs);
}
