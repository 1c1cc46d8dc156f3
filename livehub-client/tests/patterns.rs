//! livehub-client's wildcard subscriptions (`psubscribe`) against a real hub over loopback: two
//! topics under one pattern survive a cut connection with every message once per topic, in
//! order; a history too short is a gap of that topic; a pattern the application does not read
//! lags and resumes; refusals are the call's errors; dropping (or unsubscribing) sends
//! `punsubscribe` (and `unsubscribe` for a topic's subscription).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;

use common::{host, serve, wait_event, within, Fake, Proxy};
use livehub_client::{
    ConnectionEvent, ErrorCode, GapReason, PatternEvent, PatternOptions, PatternSubscription,
    ResumeCause, Subscription,
};
use livehub_core::{async_trait, Action, Hooks, Hub, Identity};
use livehub_protocol::{ClientOp, Codec};
use serde_json::json;

/// The next event of a pattern subscription, within the safety net.
async fn next(sub: &mut PatternSubscription) -> PatternEvent {
    within("a pattern event", sub.next())
        .await
        .expect("the pattern subscription ended")
}

/// The next event, which must be a message: (topic, offset, data).
async fn message(sub: &mut PatternSubscription) -> (String, u64, serde_json::Value) {
    match next(sub).await {
        PatternEvent::Message(m) => (
            m.topic.to_string(),
            m.position.offset,
            m.decode().expect("JSON data"),
        ),
        other => panic!("expected a message, got {other:?}"),
    }
}

/// Waits until the client has noticed that its connection is gone, then until it is back.
async fn disconnected(events: &mut livehub_client::ConnectionEvents) {
    wait_event(events, |e| {
        matches!(e, ConnectionEvent::Disconnected { .. }).then_some(())
    })
    .await;
}

/// Hooks that let everything through except patterns that start with a wildcard.
struct NoBroadPatterns;

#[async_trait]
impl Hooks for NoBroadPatterns {
    async fn authorize(&self, _who: &Identity, action: Action<'_>) -> bool {
        !matches!(action, Action::SubscribePattern(p) if p.starts_with('*'))
    }
}

#[tokio::test]
async fn two_topics_under_one_pattern_resume_after_a_cut_each_message_once_in_order() {
    let (hub, _) = common::hub(100);
    let proxy = Proxy::start(serve(hub.clone()).await).await;
    let client = common::client(proxy.addr, "").connect().await.unwrap();
    let mut events = client.connection_events();
    let mut sub = client.psubscribe("live/*").await.unwrap();
    assert_eq!(sub.pattern(), "live/*");

    // Before the cut: both topics, interleaved; topics the pattern does not match never come.
    host::publish(&hub, "live/a", &json!("a1")).await;
    host::publish(&hub, "live/b", &json!("b1")).await;
    host::publish(&hub, "other/a", &json!("no")).await;
    host::publish(&hub, "live/a/deep", &json!("no")).await;
    host::publish(&hub, "live/a", &json!("a2")).await;
    assert_eq!(message(&mut sub).await, ("live/a".into(), 1, json!("a1")));
    assert_eq!(message(&mut sub).await, ("live/b".into(), 1, json!("b1")));
    assert_eq!(message(&mut sub).await, ("live/a".into(), 2, json!("a2")));
    assert_eq!(sub.position("live/a").unwrap().offset, 2);
    assert_eq!(sub.position("live/b").unwrap().offset, 1);

    // Cut, and publish to both while the client is away.
    proxy.down();
    disconnected(&mut events).await;
    for i in 3..=5 {
        host::publish(&hub, "live/a", &json!(format!("a{i}"))).await;
    }
    for i in 2..=3 {
        host::publish(&hub, "live/b", &json!(format!("b{i}"))).await;
    }
    proxy.up();

    // What each topic missed, then the end of the resume, then live messages.
    let mut got: BTreeMap<String, Vec<(u64, serde_json::Value)>> = BTreeMap::new();
    let resumed = loop {
        match next(&mut sub).await {
            PatternEvent::Message(m) => got
                .entry(m.topic.to_string())
                .or_default()
                .push((m.position.offset, m.decode().unwrap())),
            PatternEvent::Resumed(r) => break r,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(
        (resumed.cause, resumed.recovered, resumed.topics),
        (ResumeCause::Reconnect, true, 2)
    );
    assert_eq!(
        got["live/a"],
        [(3, json!("a3")), (4, json!("a4")), (5, json!("a5"))]
    );
    assert_eq!(got["live/b"], [(2, json!("b2")), (3, json!("b3"))]);
    assert_eq!(got.len(), 2);
    host::publish(&hub, "live/b", &json!("b4")).await;
    host::publish(&hub, "live/a", &json!("a6")).await;
    assert_eq!(message(&mut sub).await, ("live/b".into(), 4, json!("b4")));
    assert_eq!(message(&mut sub).await, ("live/a".into(), 6, json!("a6")));
    // A new topic of the pattern after the reconnect is delivered too.
    host::publish(&hub, "live/c", &json!("c1")).await;
    assert_eq!(message(&mut sub).await, ("live/c".into(), 1, json!("c1")));
    let mut positions: Vec<(String, u64)> = sub
        .positions()
        .map(|(t, p)| (t.to_owned(), p.offset))
        .collect();
    positions.sort();
    assert_eq!(
        positions,
        [
            ("live/a".into(), 6),
            ("live/b".into(), 4),
            ("live/c".into(), 1)
        ]
    );
    client.close().await;
}

#[tokio::test]
async fn a_history_too_short_is_a_gap_of_that_topic_only() {
    let (hub, _) = common::hub(2);
    let proxy = Proxy::start(serve(hub.clone()).await).await;
    let client = common::client(proxy.addr, "").connect().await.unwrap();
    let mut events = client.connection_events();
    let mut sub = client.psubscribe("feed/**").await.unwrap();
    host::publish(&hub, "feed/x/1", &json!(1)).await;
    host::publish(&hub, "feed/y", &json!(1)).await;
    assert_eq!(message(&mut sub).await, ("feed/x/1".into(), 1, json!(1)));
    assert_eq!(message(&mut sub).await, ("feed/y".into(), 1, json!(1)));

    proxy.down();
    disconnected(&mut events).await;
    for i in 2..=6 {
        host::publish(&hub, "feed/x/1", &json!(i)).await;
    }
    host::publish(&hub, "feed/y", &json!(2)).await;
    proxy.up();

    let mut x = Vec::new();
    let mut y = Vec::new();
    let mut gaps = Vec::new();
    let resumed = loop {
        match next(&mut sub).await {
            PatternEvent::Message(m) if &*m.topic == "feed/x/1" => x.push(m.position.offset),
            PatternEvent::Message(m) if &*m.topic == "feed/y" => y.push(m.position.offset),
            PatternEvent::Gap { topic, gap } => {
                gaps.push((topic.to_string(), gap.from, gap.to, gap.reason))
            }
            PatternEvent::Resumed(r) => break r,
            other => panic!("{other:?}"),
        }
    };
    assert!(!resumed.recovered);
    assert_eq!(
        gaps,
        [("feed/x/1".to_owned(), 2, 4, Some(GapReason::History))]
    );
    assert_eq!(x, [5, 6], "what the history still held");
    assert_eq!(y, [2]);
    host::publish(&hub, "feed/x/1", &json!(7)).await;
    assert_eq!(message(&mut sub).await, ("feed/x/1".into(), 7, json!(7)));
    client.close().await;
}

#[tokio::test]
async fn a_pattern_that_is_not_read_lags_then_resumes_every_topic_from_its_position() {
    let (hub, _) = common::hub(1000);
    let addr = serve(hub.clone()).await;
    let client = common::client(addr, "")
        .subscription_buffer(8)
        .connect()
        .await
        .unwrap();
    let mut sub = client.psubscribe("lag/*").await.unwrap();
    // Far more than the buffer holds, on two topics, while nothing is read.
    for i in 1..=40 {
        host::publish(&hub, "lag/a", &json!(i)).await;
        host::publish(&hub, "lag/b", &json!(i)).await;
    }
    // The pong comes after the 80 messages: by then the client has seen them all, and the
    // pattern subscription, not read, holds 8.
    client.ping().await.unwrap();
    let mut seen: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut resumes = 0;
    while seen.values().map(Vec::len).sum::<usize>() < 80 {
        match next(&mut sub).await {
            PatternEvent::Message(m) => seen
                .entry(m.topic.to_string())
                .or_default()
                .push(m.position.offset),
            PatternEvent::Resumed(r) => {
                assert_eq!((r.cause, r.recovered), (ResumeCause::Lagged, true), "{r:?}");
                resumes += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    // The last messages came from a resume, which ends with its notice.
    let PatternEvent::Resumed(r) = next(&mut sub).await else {
        panic!("the end of the last resume")
    };
    assert_eq!((r.cause, r.recovered), (ResumeCause::Lagged, true), "{r:?}");
    resumes += 1;
    let all: Vec<u64> = (1..=40).collect();
    assert_eq!(seen["lag/a"], all);
    assert_eq!(seen["lag/b"], all);
    assert!(resumes >= 1, "it lagged at least once");
    // And live messages go on.
    host::publish(&hub, "lag/b", &json!(41)).await;
    assert_eq!(message(&mut sub).await, ("lag/b".into(), 41, json!(41)));
    client.close().await;
}

#[tokio::test]
async fn refusals_are_errors_of_the_call_and_the_client_goes_on() {
    let hub = Hub::builder()
        .hooks(NoBroadPatterns)
        .max_patterns(2)
        .history_len(10)
        .build();
    let addr = serve(hub.clone()).await;
    let client = common::client(addr, "").connect().await.unwrap();
    for (pattern, code) in [
        ("live//*", ErrorCode::BadPattern),
        ("live/a*", ErrorCode::BadPattern),
        ("live", ErrorCode::BadPattern),
        ("*/live", ErrorCode::Forbidden),
    ] {
        let err = client.psubscribe(pattern).await.unwrap_err();
        assert!(err.is(code), "{pattern}: {err:?}");
    }
    let mut a = client.psubscribe("a/*").await.unwrap();
    let _b = client.psubscribe("b/*").await.unwrap();
    let err = client.psubscribe("a/*").await.unwrap_err();
    assert!(err.is(ErrorCode::AlreadySubscribed), "{err:?}");
    let err = client.psubscribe("c/*").await.unwrap_err();
    assert!(err.is(ErrorCode::TooManyPatterns), "{err:?}");
    // Resuming a topic that is not the pattern's is the server's `bad_field`.
    let opts = PatternOptions::new().position("z/1", livehub_client::Position::new("e", 1));
    let err = client.psubscribe_with("d/*", opts).await.unwrap_err();
    assert!(err.is(ErrorCode::BadField), "{err:?}");
    // Still working.
    host::publish(&hub, "a/1", &json!(1)).await;
    assert_eq!(message(&mut a).await, ("a/1".into(), 1, json!(1)));
    // Unsubscribing frees a place on the server.
    a.unsubscribe().await.unwrap();
    let mut c = client.psubscribe("c/*").await.unwrap();
    host::publish(&hub, "c/1", &json!(1)).await;
    assert_eq!(message(&mut c).await, ("c/1".into(), 1, json!(1)));
    client.close().await;
}

#[tokio::test]
async fn psubscribe_with_positions_recovers_what_the_application_missed() {
    let (hub, _) = common::hub(100);
    let addr = serve(hub.clone()).await;
    let a2 = {
        host::publish(&hub, "saved/a", &json!(1)).await;
        host::publish(&hub, "saved/a", &json!(2)).await
    };
    host::publish(&hub, "saved/a", &json!(3)).await;
    host::publish(&hub, "saved/b", &json!(1)).await;
    let client = common::client(addr, "").connect().await.unwrap();
    let opts = PatternOptions::new().position("saved/a", a2);
    let mut sub = client.psubscribe_with("saved/*", opts).await.unwrap();
    // The recovered message came before the reply; saved/b (no position) is live only.
    assert_eq!(message(&mut sub).await, ("saved/a".into(), 3, json!(3)));
    let PatternEvent::Resumed(r) = next(&mut sub).await else {
        panic!("resumed")
    };
    assert_eq!(
        (r.cause, r.recovered, r.topics),
        (ResumeCause::Since, true, 1)
    );
    host::publish(&hub, "saved/b", &json!(2)).await;
    assert_eq!(message(&mut sub).await, ("saved/b".into(), 2, json!(2)));
    client.close().await;
}

/// A topic's subscription or a pattern's, for the test that ends both kinds.
enum Handle {
    Topic(Subscription),
    Pattern(PatternSubscription),
}

impl Handle {
    async fn unsubscribe(self) -> Result<(), livehub_client::Error> {
        match self {
            Handle::Topic(s) => s.unsubscribe().await,
            Handle::Pattern(s) => s.unsubscribe().await,
        }
    }
}

#[tokio::test]
async fn dropping_or_ending_a_subscription_of_either_kind_tells_the_server() {
    let mut fake = Fake::start().await;
    let codec = Codec::Json;
    let addr = fake.addr;
    let connecting = tokio::spawn(async move { common::client(addr, "").connect().await });
    let mut conn = fake.accept().await;
    conn.welcome(codec, 1, 60_000).await;
    let client = connecting.await.unwrap().unwrap();

    for (pattern, explicit) in [(true, false), (true, true), (false, false), (false, true)] {
        let subscribing = tokio::spawn({
            let client = client.clone();
            async move {
                if pattern {
                    client.psubscribe("x/*").await.map(Handle::Pattern)
                } else {
                    client.subscribe("x/a").await.map(Handle::Topic)
                }
            }
        });
        let frame = conn.recv().await.expect("a subscribe");
        let answer = match frame.op {
            ClientOp::PSubscribe { pattern, positions } => {
                assert_eq!((pattern.as_str(), positions.len()), ("x/*", 0));
                json!({"pattern": "x/*"})
            }
            ClientOp::Subscribe { topic, since, .. } => {
                assert_eq!((topic.as_str(), since), ("x/a", None));
                json!({"topic": "x/a", "epoch": "e1", "offset": 0})
            }
            op => panic!("{op:?}"),
        };
        conn.reply(codec, frame.id, answer).await;
        let sub = subscribing.await.unwrap().unwrap();
        let unsubscribing = if explicit {
            Some(tokio::spawn(sub.unsubscribe()))
        } else {
            drop(sub);
            None
        };
        let frame = conn.recv().await.expect("an unsubscribe");
        match frame.op {
            ClientOp::PUnsubscribe { pattern: p } if pattern => assert_eq!(p, "x/*"),
            ClientOp::Unsubscribe { topic } if !pattern => assert_eq!(topic, "x/a"),
            op => panic!("pattern {pattern}: {op:?}"),
        }
        conn.reply(codec, frame.id, json!(null)).await;
        if let Some(u) = unsubscribing {
            u.await.unwrap().unwrap();
        }
    }
    client.close().await;
}

#[tokio::test]
async fn a_topic_followed_by_a_subscription_and_a_pattern_reaches_both_once() {
    let (hub, _) = common::hub(100);
    let addr = serve(hub.clone()).await;
    let client = common::client(addr, "").connect().await.unwrap();
    let mut plain = client.subscribe("both/a").await.unwrap();
    let mut pattern = client.psubscribe("both/*").await.unwrap();
    host::publish(&hub, "both/a", &json!(1)).await;
    host::publish(&hub, "both/b", &json!(1)).await;
    host::publish(&hub, "both/a", &json!(2)).await;
    assert_eq!(common::next_message(&mut plain).await, (1, json!(1)));
    assert_eq!(common::next_message(&mut plain).await, (2, json!(2)));
    assert_eq!(message(&mut pattern).await, ("both/a".into(), 1, json!(1)));
    assert_eq!(message(&mut pattern).await, ("both/b".into(), 1, json!(1)));
    assert_eq!(message(&mut pattern).await, ("both/a".into(), 2, json!(2)));
    // Nothing more on either: the server sent each message once.
    client.ping().await.unwrap();
    assert!(futures_util::FutureExt::now_or_never(plain.next()).is_none());
    assert!(futures_util::FutureExt::now_or_never(pattern.next()).is_none());
    client.close().await;
}
