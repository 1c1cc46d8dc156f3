//! livehub-client when connections end: a connection cut mid-stream resumes with no duplicate and
//! no hole (`recovered: true`), history too short says what is lost (`recovered: false`), a
//! kicked client stays away, a shutdown sends clients to the next server, requests made
//! offline are queued up to a bound, and a subscription the application does not read lags
//! and resumes from its last position.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::Ordering;

use common::{host, next, next_message, serve, wait_event, within, Proxy};
use futures_util::FutureExt;
use livehub_client::{
    ConnectionEvent, DisconnectCause, Error, GapReason, ResumeCause, SubEvent, SubscribeOptions,
};
use serde_json::json;

/// Waits until the client has noticed that its connection is gone.
async fn disconnected(events: &mut livehub_client::ConnectionEvents) -> DisconnectCause {
    wait_event(events, |e| match e {
        ConnectionEvent::Disconnected { cause } => Some(cause.clone()),
        _ => None,
    })
    .await
}

#[tokio::test]
async fn a_cut_connection_resumes_without_duplicates_or_holes() {
    let (hub, connects) = common::hub(100);
    let proxy = Proxy::start(serve(hub.clone()).await).await;
    let client = common::client(proxy.addr, "?user=ana")
        .connect()
        .await
        .unwrap();
    let mut events = client.connection_events();
    let mut sub = client.subscribe("t").await.unwrap();
    let first_session = client.session().unwrap();
    for i in 1..=3 {
        host::publish(&hub, "t", &json!(i)).await;
    }
    for i in 1..=3 {
        assert_eq!(next_message(&mut sub).await, (i, json!(i)));
    }

    // Cut, and publish while the client is away.
    proxy.down();
    assert!(matches!(
        disconnected(&mut events).await,
        DisconnectCause::Network(_)
    ));
    for i in 4..=6 {
        host::publish(&hub, "t", &json!(i)).await;
    }
    proxy.up();
    let session = wait_event(&mut events, |e| match e {
        ConnectionEvent::Connected {
            session,
            reconnect: true,
        } => Some(*session),
        _ => None,
    })
    .await;
    assert_ne!(session, first_session, "a new session");

    let SubEvent::Resumed(r) = next(&mut sub).await else {
        panic!("resumed first")
    };
    assert_eq!(
        (r.cause, r.recovered, r.gap),
        (ResumeCause::Reconnect, true, None)
    );
    for i in 4..=6 {
        assert_eq!(next_message(&mut sub).await, (i, json!(i)));
    }
    host::publish(&hub, "t", &json!(7)).await;
    assert_eq!(next_message(&mut sub).await, (7, json!(7)));
    assert_eq!(sub.position().offset, 7);
    // Publishing works on the new connection.
    assert_eq!(client.publish("t", &8).await.unwrap().offset, 8);
    assert_eq!(next_message(&mut sub).await, (8, json!(8)));
    assert_eq!(connects.load(Ordering::SeqCst), 2);
    client.close().await;
}

#[tokio::test]
async fn a_history_too_short_says_what_is_lost() {
    let (hub, _) = common::hub(2);
    let proxy = Proxy::start(serve(hub.clone()).await).await;
    let client = common::client(proxy.addr, "").connect().await.unwrap();
    let mut events = client.connection_events();
    let mut sub = client.subscribe("t").await.unwrap();
    host::publish(&hub, "t", &json!(1)).await;
    assert_eq!(next_message(&mut sub).await, (1, json!(1)));

    proxy.down();
    disconnected(&mut events).await;
    for i in 2..=6 {
        host::publish(&hub, "t", &json!(i)).await;
    }
    proxy.up();
    let SubEvent::Resumed(r) = next(&mut sub).await else {
        panic!("resumed first")
    };
    assert!(!r.recovered);
    let gap = r.gap.unwrap();
    assert_eq!(
        (gap.from, gap.to, gap.reason),
        (2, 4, Some(GapReason::History))
    );
    // What the history still held, then live messages.
    assert_eq!(next_message(&mut sub).await, (5, json!(5)));
    assert_eq!(next_message(&mut sub).await, (6, json!(6)));
    host::publish(&hub, "t", &json!(7)).await;
    assert_eq!(next_message(&mut sub).await, (7, json!(7)));
    client.close().await;
}

#[tokio::test]
async fn a_kicked_client_does_not_come_back() {
    let (hub, connects) = common::hub(10);
    let addr = serve(hub.clone()).await;
    let client = common::client(addr, "").connect().await.unwrap();
    let mut sub = client.subscribe("t").await.unwrap();
    assert!(host::disconnect(
        &hub,
        host::session(client.session().unwrap())
    ));

    let kicked = Error::Kicked {
        code: 1008,
        reason: "kicked".into(),
    };
    assert_eq!(
        within("the close", client.closed()).await,
        Some(kicked.clone())
    );
    assert_eq!(next(&mut sub).await, SubEvent::Closed(kicked));
    assert!(within("the end", sub.next()).await.is_none());
    assert_eq!(client.publish("t", &1).await, Err(Error::Closed));
    // Closed for good: the client's task is over, and it opened one session only.
    assert_eq!(connects.load(Ordering::SeqCst), 1);
    common::no_sessions_left(&hub).await;
}

#[tokio::test]
async fn after_a_shutdown_clients_move_to_the_next_server() {
    let (old, _) = common::hub(100);
    let (new, new_connects) = common::hub(100);
    let proxy = Proxy::start(serve(old.clone()).await).await;
    let client = common::client(proxy.addr, "").connect().await.unwrap();
    let mut events = client.connection_events();
    let mut sub = client.subscribe("t").await.unwrap();
    host::publish(&old, "t", &json!("old")).await;
    assert_eq!(next_message(&mut sub).await, (1, json!("old")));

    proxy.retarget(serve(new.clone()).await);
    host::shutdown(&old).await;
    // The server hints a random delay within its reconnect spread (5 s by default); the
    // client waits it out, at most its ceiling (200 ms here).
    let cause = disconnected(&mut events).await;
    // The server spreads its clients' returns: a random delay within its 5 s default, which
    // this client takes capped at its own ceiling.
    let DisconnectCause::Server {
        code: 1001,
        reason,
        retry_after: Some(after),
    } = &cause
    else {
        panic!("{cause:?}");
    };
    assert_eq!(reason, "shutdown");
    assert!(
        *after > std::time::Duration::ZERO && *after <= std::time::Duration::from_secs(5),
        "{cause:?}"
    );
    // The new server has another epoch: nothing could be recovered, and the client says so.
    let SubEvent::Resumed(r) = next(&mut sub).await else {
        panic!("resumed")
    };
    assert!(!r.recovered);
    assert_eq!(r.gap.unwrap().reason, Some(GapReason::Epoch));
    assert_eq!(new_connects.load(Ordering::SeqCst), 1);
    host::publish(&new, "t", &json!("new")).await;
    assert_eq!(next_message(&mut sub).await, (1, json!("new")));
    assert!(proxy.accepted() >= 2);
    client.close().await;
}

#[tokio::test]
async fn requests_made_offline_are_queued_up_to_a_bound() {
    let (hub, _) = common::hub(100);
    let proxy = Proxy::start(serve(hub.clone()).await).await;
    let client = common::client(proxy.addr, "")
        .offline_queue(2)
        .connect()
        .await
        .unwrap();
    let mut events = client.connection_events();
    let mut sub = client.subscribe("t").await.unwrap();
    proxy.down();
    disconnected(&mut events).await;

    let first = client.publish("t", "a");
    let second = client.publish("t", "b");
    tokio::pin!(first, second);
    // Polled once each: queued, in this order.
    assert!(first.as_mut().now_or_never().is_none());
    assert!(second.as_mut().now_or_never().is_none());
    assert_eq!(
        client.publish("t", &json!("c")).await,
        Err(Error::QueueFull)
    );

    proxy.up();
    let (a, b) = within("the queued publishes", async {
        (first.await, second.await)
    })
    .await;
    assert_eq!((a.unwrap().offset, b.unwrap().offset), (1, 2));
    let SubEvent::Resumed(r) = next(&mut sub).await else {
        panic!("resumed")
    };
    assert!(r.recovered);
    assert_eq!(next_message(&mut sub).await, (1, json!("a")));
    assert_eq!(next_message(&mut sub).await, (2, json!("b")));
    client.close().await;
}

#[tokio::test]
async fn a_subscription_that_is_not_read_lags_then_resumes_from_its_position() {
    let (hub, _) = common::hub(1000);
    let addr = serve(hub.clone()).await;
    let client = common::client(addr, "")
        .subscription_buffer(8)
        .connect()
        .await
        .unwrap();
    let mut watcher = client
        .subscribe_with("t", SubscribeOptions::new())
        .await
        .unwrap();
    for i in 1..=100 {
        host::publish(&hub, "t", &json!(i)).await;
    }
    // The pong comes after the 100 messages: by then the client has seen them all, and the
    // subscription, not read, holds 8.
    client.ping().await.unwrap();

    let (offsets, lags) = common::messages_through_lag(&mut watcher, 100).await;
    assert_eq!(
        offsets,
        (1..=100).collect::<Vec<u64>>(),
        "every message once, in order"
    );
    assert!(lags >= 1, "it lagged");
    client.close().await;
}

/// A hub that refuses every connection with 403.
struct DenyAll;

#[livehub_core::async_trait]
impl livehub_core::Hooks for DenyAll {
    async fn authenticate(
        &self,
        _req: &livehub_core::ConnectRequest,
    ) -> Result<livehub_core::Identity, livehub_core::Rejection> {
        Err(livehub_core::Rejection::forbidden("not you"))
    }
}

#[tokio::test]
async fn a_refusal_on_reconnect_closes_for_good_and_attempts_can_be_bounded() {
    // Credentials refused on reconnect: no point in knocking again.
    let (hub, _) = common::hub(10);
    let proxy = Proxy::start(serve(hub).await).await;
    let client = common::client(proxy.addr, "").connect().await.unwrap();
    let mut sub = client.subscribe("t").await.unwrap();
    proxy.retarget(serve(livehub_core::Hub::builder().hooks(DenyAll).build()).await);
    proxy.cut();
    let error = within("the close", client.closed()).await.unwrap();
    assert!(
        matches!(&error, Error::Refused { status: 403, code, .. } if code.as_str() == "forbidden"),
        "{error:?}"
    );
    assert_eq!(next(&mut sub).await, SubEvent::Closed(error));

    // A server that stays away: three attempts, then the last error.
    let (hub, _) = common::hub(10);
    let proxy = Proxy::start(serve(hub).await).await;
    let client = common::client(proxy.addr, "")
        .max_reconnect_attempts(3)
        .connect()
        .await
        .unwrap();
    let mut events = client.connection_events();
    proxy.down();
    let error = within("the close", client.closed()).await.unwrap();
    assert!(matches!(error, Error::Connect(_)), "{error:?}");
    let mut failed = Vec::new();
    while let Some(ev) = within("the events", events.recv()).await {
        match ev {
            ConnectionEvent::ConnectFailed { attempt, .. } => failed.push(attempt),
            ConnectionEvent::Closed { .. } => break,
            _ => {}
        }
    }
    assert_eq!(failed, [1, 2, 3]);
}
