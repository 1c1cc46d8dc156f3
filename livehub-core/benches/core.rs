//! Micro-benchmarks of livehub-core's hot paths, through the public transport seam.
//!
//! `cargo bench -p livehub-core` (add `-- fanout` to run one group).

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use futures_util::FutureExt;
use livehub_core::{Codec, ConnectRequest, Connection, Hub, Outgoing, Payload, TransportInfo};
use serde_json::json;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// `n` sessions subscribed to `topic`, their welcome and reply already drained.
fn sessions(
    rt: &tokio::runtime::Runtime,
    hub: &Hub,
    n: usize,
    codec: Codec,
    topic: &str,
) -> Vec<Connection> {
    rt.block_on(async {
        let mut out = Vec::with_capacity(n);
        let frame = Bytes::from(format!(r#"{{"type":"subscribe","topic":"{topic}"}}"#));
        for _ in 0..n {
            let mut c = hub
                .connect(ConnectRequest::new(TransportInfo::duplex("bench"), codec))
                .await
                .unwrap();
            let frame = match codec {
                Codec::Json => frame.clone(),
                _ => Bytes::from(
                    rmp_serde::to_vec_named(&json!({"type": "subscribe", "topic": topic})).unwrap(),
                ),
            };
            c.session.handle(frame).await;
            drain(&mut c);
            out.push(c);
        }
        out
    })
}

/// Takes everything queued for a session without waiting; returns the number of frames.
fn drain(c: &mut Connection) -> usize {
    let mut batch = Vec::new();
    c.outbox.next_batch(&mut batch).now_or_never();
    batch
        .iter()
        .filter(|o| matches!(o, Outgoing::Frame(_)))
        .count()
}

fn payload() -> Payload {
    Payload::from_value(
        &json!({"match": "m1", "home": 2, "away": 1, "minute": 67, "pad": "x".repeat(40)}),
    )
    .unwrap()
}

/// One publish to N subscribers, and every subscriber's writer taking its frame: the whole
/// fan-out cost (encode once, N queue pushes, N drains).
fn fanout(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("fanout");
    for n in [1usize, 100, 10_000] {
        let hub = Hub::builder().history_len(0).build();
        let mut subs = sessions(&rt, &hub, n, Codec::Json, "t");
        let data = payload();
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                // The in-process engine answers at once: no runtime needed to drive it.
                hub.publish_payload("t", data.clone())
                    .now_or_never()
                    .expect("the in-process engine does not wait")
                    .unwrap();
                let mut got = 0;
                for s in subs.iter_mut() {
                    got += drain(s);
                }
                assert_eq!(got, n);
            })
        });
    }
    group.finish();
}

/// The cost of latest-value conflation on the hot path when nobody lags: one keyed publish to
/// N subscribers, on a plain topic and on a conflated one (every subscriber's writer keeps up,
/// so nothing is ever conflated away).
fn fanout_conflated(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("fanout_keyed");
    for n in [100usize, 10_000] {
        for conflated in [false, true] {
            let hub = Hub::builder()
                .history_len(0)
                .conflate_topics(move |_| conflated)
                .build();
            let mut subs = sessions(&rt, &hub, n, Codec::Json, "t");
            let data = payload();
            group.throughput(Throughput::Elements(n as u64));
            let name = if conflated { "conflated" } else { "plain" };
            group.bench_with_input(BenchmarkId::new(name, n), &n, |b, _| {
                b.iter(|| {
                    hub.publish_message(
                        "t",
                        livehub_core::broker::Message::keyed(data.clone(), "match:7"),
                    )
                    .now_or_never()
                    .expect("the in-process engine does not wait")
                    .unwrap();
                    let mut got = 0;
                    for s in subs.iter_mut() {
                        got += drain(s);
                    }
                    assert_eq!(got, n);
                })
            });
        }
    }
    group.finish();
}

/// Publishing while 10,000 patterns are held (625 sessions x 16 patterns `p<i>/*`): to a
/// topic a pattern brought (followed: the index is not consulted), and to topics nobody
/// follows (each is matched against the patterns), beside the same publishes without patterns.
fn publish_with_patterns(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("publish_10000_patterns");
    for patterns in [false, true] {
        let hub = Hub::builder()
            .history_len(0)
            .max_subscriptions(10_000)
            .build();
        let mut subs = Vec::new();
        if patterns {
            rt.block_on(async {
                for i in 0..625 {
                    let mut c = hub
                        .connect(ConnectRequest::new(
                            TransportInfo::duplex("bench"),
                            Codec::Json,
                        ))
                        .await
                        .unwrap();
                    for j in 0..16 {
                        let frame =
                            format!(r#"{{"type":"psubscribe","pattern":"p{}/*"}}"#, i * 16 + j);
                        c.session.handle(Bytes::from(frame)).await;
                    }
                    drain(&mut c);
                    subs.push(c);
                }
            });
        }
        let name = if patterns { "10000_patterns" } else { "none" };
        let data = payload();
        // p7/live is matched by one pattern (and so followed after its first message).
        group.bench_function(BenchmarkId::new("followed", name), |b| {
            b.iter(|| {
                hub.publish_payload("p7/live", data.clone())
                    .now_or_never()
                    .expect("the in-process engine does not wait")
                    .unwrap();
                for s in subs.iter_mut().take(1) {
                    black_box(drain(s));
                }
            })
        });
        group.bench_function(BenchmarkId::new("unfollowed", name), |b| {
            b.iter(|| {
                hub.publish_payload("q7/live", data.clone())
                    .now_or_never()
                    .expect("the in-process engine does not wait")
                    .unwrap();
            })
        });
    }
    group.finish();
}

/// Encoding once and sharing the bytes, against encoding per subscriber (what a naive hub
/// does), for 1,000 receivers.
fn encode_once(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode_1000_receivers");
    let value = json!({"match": "m1", "home": 2, "away": 1, "minute": 67, "pad": "x".repeat(40)});
    group.bench_function("once_shared", |b| {
        b.iter(|| {
            let bytes = Bytes::from(serde_json::to_vec(&value).unwrap());
            let copies: Vec<Bytes> = (0..1000).map(|_| bytes.clone()).collect();
            black_box(copies);
        })
    });
    group.bench_function("per_subscriber", |b| {
        b.iter(|| {
            let copies: Vec<Bytes> = (0..1000)
                .map(|_| Bytes::from(serde_json::to_vec(&value).unwrap()))
                .collect();
            black_box(copies);
        })
    });
    group.finish();
}

/// Subscribe then unsubscribe one session on a topic that has 1,000 other subscribers.
fn subscribe_unsubscribe(c: &mut Criterion) {
    let rt = runtime();
    let hub = Hub::builder().build();
    let _others = sessions(&rt, &hub, 1000, Codec::Json, "busy");
    let mut me = sessions(&rt, &hub, 1, Codec::Json, "elsewhere")
        .pop()
        .unwrap();
    let sub = Bytes::from_static(br#"{"type":"subscribe","topic":"busy","id":1}"#);
    let unsub = Bytes::from_static(br#"{"type":"unsubscribe","topic":"busy","id":2}"#);
    c.bench_function("subscribe_unsubscribe", |b| {
        b.iter(|| {
            rt.block_on(async {
                me.session.handle(sub.clone()).await;
                me.session.handle(unsub.clone()).await;
            });
            assert_eq!(drain(&mut me), 2);
        })
    });
}

/// A presence join and leave on a topic where 100 subscribers watch presence.
fn presence(c: &mut Criterion) {
    let rt = runtime();
    let hub = Hub::builder().build();
    let mut watchers = rt.block_on(async {
        let mut out = Vec::new();
        for _ in 0..100 {
            let c = hub
                .connect(ConnectRequest::new(
                    TransportInfo::duplex("bench"),
                    Codec::Json,
                ))
                .await
                .unwrap();
            c.session
                .handle(Bytes::from_static(
                    br#"{"type":"subscribe","topic":"lobby","presence":true}"#,
                ))
                .await;
            out.push(c);
        }
        out
    });
    for w in watchers.iter_mut() {
        drain(w);
    }
    let me = sessions(&rt, &hub, 1, Codec::Json, "elsewhere")
        .pop()
        .unwrap();
    let sub = Bytes::from_static(br#"{"type":"subscribe","topic":"lobby"}"#);
    let unsub = Bytes::from_static(br#"{"type":"unsubscribe","topic":"lobby"}"#);
    c.bench_function("presence_join_leave_100_watchers", |b| {
        b.iter(|| {
            rt.block_on(async {
                me.session.handle(sub.clone()).await;
                me.session.handle(unsub.clone()).await;
            });
            let mut got = 0;
            for w in watchers.iter_mut() {
                got += drain(w);
            }
            assert_eq!(got, 200);
        })
    });
}

/// A `presence_count` over the protocol and the host's count, on topics of 10 and 10,000
/// members: the same cost (the count is kept, never walked).
fn presence_count(c: &mut Criterion) {
    let rt = runtime();
    let hub = Hub::builder().build();
    let mut group = c.benchmark_group("presence_count");
    for n in [10usize, 10_000] {
        let topic = format!("t{n}");
        let mut members = sessions(&rt, &hub, n, Codec::Json, &topic);
        let me = &mut members[0];
        let ask = Bytes::from(format!(
            r#"{{"type":"presence_count","topic":"{topic}","id":1}}"#
        ));
        group.bench_with_input(BenchmarkId::new("frame", n), &n, |b, _| {
            b.iter(|| {
                rt.block_on(me.session.handle(ask.clone()));
                assert_eq!(drain(me), 1);
            })
        });
        group.bench_with_input(BenchmarkId::new("host", n), &n, |b, _| {
            b.iter(|| black_box(rt.block_on(hub.topic_count(&topic)).unwrap()))
        });
    }
    group.finish();
}

criterion_group!(
    benches,
    fanout,
    fanout_conflated,
    publish_with_patterns,
    encode_once,
    subscribe_unsubscribe,
    presence,
    presence_count
);
criterion_main!(benches);
