//! Faults, each on a `redis-server` of the test's own: killed, restarted, hung, unreachable;
//! errors Redis answers (OOM, READONLY); scripts lost.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{json, node, value, NodeOptions, RedisServer, TestNode, WAIT};
use livehub_core::broker::{Broker, BrokerError, Channel, EngineEvent, HistoryFrom, Route};
use livehub_core::presence::{Member, PresenceStore, Scope, ScopeName};
use livehub_core::SessionId;
use livehub_redis::{BuildError, RedisEngine};
use serde_json::json;

const TIMEOUT: Duration = Duration::from_millis(1000);

fn fast() -> NodeOptions {
    NodeOptions {
        builder: |b| {
            b.command_timeout(TIMEOUT)
                .connect_timeout(TIMEOUT)
                .ping_interval(Duration::from_millis(200))
                .reconnect_backoff(Duration::from_millis(50), Duration::from_millis(500))
        },
        ..NodeOptions::default()
    }
}

async fn fast_node(server: &RedisServer) -> TestNode {
    node(&server.url(), "faults", fast()).await
}

fn assert_unavailable<T: std::fmt::Debug>(r: Result<T, BrokerError>) {
    match r {
        Err(BrokerError::Unavailable(_)) => {}
        other => panic!("expected engine_unavailable, got {other:?}"),
    }
}

/// A bound on any single operation while Redis goes away: within 3x the command timeout.
const BOUND: Duration = Duration::from_millis(3 * 1000);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_redis_fails_fast_and_nothing_waits() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let mut a = fast_node(&server).await;
    a.engine.subscribe(Channel::Topic("t")).await.unwrap();
    a.engine.publish("t", json(json!(1))).await.unwrap();
    assert_eq!(a.heard.delivery().await.offset(), 1);

    // Traffic flows while Redis dies: every publish answers within the bound.
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let (engine, stop) = (a.engine.clone(), stop.clone());
        tokio::spawn(async move {
            let (mut ok, mut failed, mut slowest) = (0u32, 0u32, Duration::ZERO);
            let deadline = Instant::now() + WAIT;
            // Until told to stop and having met the outage (or the safety net).
            while !(stop.load(Ordering::SeqCst) && failed > 0) && Instant::now() < deadline {
                let t0 = Instant::now();
                match engine.publish("t", json(json!("flow"))).await {
                    Ok(_) => ok += 1,
                    Err(e) => {
                        assert_eq!(e.code().as_str(), "engine_unavailable", "{e}");
                        failed += 1;
                    }
                }
                slowest = slowest.max(t0.elapsed());
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            (ok, failed, slowest)
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    server.kill();
    assert_eq!(a.heard.event().await, EngineEvent::Disconnected);

    // Down: everything fails at once, nothing is queued.
    let t0 = Instant::now();
    assert_unavailable(a.engine.publish("t", json(json!(2))).await);
    assert_unavailable(a.engine.history("t", HistoryFrom::Last(5)).await);
    assert_unavailable(a.engine.tops(&[Arc::from("t")]).await);
    assert_unavailable(a.engine.subscribe(Channel::Topic("other")).await);
    assert_unavailable(a.engine.send(Route::All, Bytes::from_static(b"x")));
    let m = Member {
        session: SessionId::parse("00000001000000aa").unwrap(),
        user: "u".into(),
        meta: json!(null),
    };
    assert_unavailable(a.engine.add(Scope::Room("r"), &m).await);
    assert_unavailable(a.engine.expire().await);
    assert!(t0.elapsed() < BOUND, "{:?}", t0.elapsed());
    // Unsubscribing while down is fine: nothing to undo.
    a.engine.unsubscribe(Channel::Topic("t")).await.unwrap();
    let s = a.engine.stats();
    assert!(!s.connected);
    assert_eq!(s.reconnects, 0);

    stop.store(true, Ordering::SeqCst);
    let (ok, failed, slowest) = publisher.await.unwrap();
    assert!(ok > 0 && failed > 0, "ok {ok}, failed {failed}");
    assert!(slowest < BOUND, "a publish took {slowest:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_redis_is_reconnected_and_every_channel_resubscribed() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let mut a = fast_node(&server).await;
    let mut b = fast_node(&server).await;
    a.engine.subscribe(Channel::Topic("t")).await.unwrap();
    a.engine.subscribe(Channel::Room("r")).await.unwrap();
    let before = b.engine.publish("t", json(json!("before"))).await.unwrap();
    assert_eq!(a.heard.delivery().await.position(), before);

    server.restart();
    for n in [&mut a, &mut b] {
        assert_eq!(n.heard.event().await, EngineEvent::Disconnected);
        assert_eq!(n.heard.event().await, EngineEvent::Reconnected);
        let s = n.engine.stats();
        assert!(s.connected);
        assert_eq!(s.reconnects, 1);
    }
    tokio::time::timeout(WAIT, a.engine.ready()).await.unwrap();

    // The topic channel is heard again; Redis restarted empty, so a new epoch from 1 (the
    // publish script was loaded again on connect).
    let after = b.engine.publish("t", json(json!("after"))).await.unwrap();
    assert_ne!(after.epoch, before.epoch);
    assert_eq!(after.offset, 1);
    let got = a.heard.delivery().await;
    assert_eq!((got.position(), value(&got)), (after, json!("after")));
    // And so are the room's and the node's own channels.
    b.engine
        .send(Route::Room("r"), Bytes::from_static(b"room"))
        .unwrap();
    b.engine
        .send(Route::Node(a.id), Bytes::from_static(b"direct"))
        .unwrap();
    b.engine
        .send(Route::All, Bytes::from_static(b"all"))
        .unwrap();
    assert_eq!(
        a.heard.controls_until(b"all").await,
        [&b"room"[..], b"direct", b"all"]
    );
    // The old position names nothing now.
    let h = a
        .engine
        .history("t", HistoryFrom::After(before))
        .await
        .unwrap();
    assert!(h.publications.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_redis_times_out_then_comes_back() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let mut a = fast_node(&server).await;
    a.engine.subscribe(Channel::Topic("t")).await.unwrap();
    server.signal("-STOP");
    // No answer, no closed connection: the command times out...
    let t0 = Instant::now();
    assert_unavailable(a.engine.publish("t", json(json!(1))).await);
    assert!(t0.elapsed() < BOUND, "{:?}", t0.elapsed());
    // ...and the PING check declares the link lost.
    assert_eq!(a.heard.event().await, EngineEvent::Disconnected);
    let t0 = Instant::now();
    assert_unavailable(a.engine.publish("t", json(json!(2))).await);
    assert!(t0.elapsed() < BOUND);
    server.signal("-CONT");
    assert_eq!(a.heard.event().await, EngineEvent::Reconnected);
    let p = a.engine.publish("t", json(json!(3))).await.unwrap();
    // Whatever the stopped server had taken in is there; the delivery follows it.
    assert_eq!(a.heard.delivery().await.position(), p);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_scripts_are_loaded_again() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let mut a = fast_node(&server).await;
    a.engine.subscribe(Channel::Topic("t")).await.unwrap();
    let flush = || server.run(&["SCRIPT", "FLUSH"]);
    flush();
    let p = a.engine.publish("t", json(json!(1))).await.unwrap();
    assert_eq!(a.heard.delivery().await.position(), p);
    flush();
    assert_eq!(
        a.engine
            .history("t", HistoryFrom::Last(1))
            .await
            .unwrap()
            .publications
            .len(),
        1
    );
    // Pipelined calls (presence) too.
    let m = Member {
        session: SessionId::parse("00000001000000ab").unwrap(),
        user: "u".into(),
        meta: json!({}),
    };
    flush();
    a.engine.add(Scope::Topic("t"), &m).await.unwrap();
    flush();
    a.engine
        .refresh(&[(ScopeName::Topic("t".into()), m.clone())])
        .await
        .unwrap();
    flush();
    assert!(a.engine.expire().await.unwrap().is_empty());
    flush();
    assert_eq!(
        a.engine.remove(Scope::Topic("t"), m.session).await.unwrap(),
        livehub_core::presence::Removal::User
    );
    assert!(a.engine.stats().connected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_redis_answers_are_engine_errors() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let mut a = fast_node(&server).await;
    // Out of memory.
    server.run(&["CONFIG", "SET", "maxmemory", "1"]);
    let err = a.engine.publish("t", json(json!(1))).await.unwrap_err();
    assert_eq!(err.code().as_str(), "engine_error");
    assert!(err.to_string().contains("OOM"), "{err}");
    server.run(&["CONFIG", "SET", "maxmemory", "0"]);
    assert_eq!(
        a.engine.publish("t", json(json!(2))).await.unwrap().offset,
        1
    );

    // A read-only replica (as after a failover): an engine error, and a reconnect.
    let nowhere = RedisServer::free_port().to_string();
    server.run(&["REPLICAOF", "127.0.0.1", &nowhere]);
    let err = a.engine.publish("t", json(json!(3))).await.unwrap_err();
    assert_eq!(err.code().as_str(), "engine_error");
    assert!(err.to_string().contains("READONLY"), "{err}");
    assert_eq!(a.heard.event().await, EngineEvent::Disconnected);
    assert_eq!(a.heard.event().await, EngineEvent::Reconnected);
    server.run(&["REPLICAOF", "NO", "ONE"]);
    let p = a.engine.publish("t", json(json!(4))).await.unwrap();
    assert_eq!(p.offset, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_redis_fails_the_build_clearly() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    drop(server);
    // Nothing listens there now.
    let port = RedisServer::free_port();
    let t0 = Instant::now();
    let err = RedisEngine::builder(format!("redis://127.0.0.1:{port}"))
        .connect_timeout(TIMEOUT)
        .build()
        .await
        .unwrap_err();
    assert!(matches!(err, BuildError::Connect(_)), "{err}");
    assert!(t0.elapsed() < BOUND);
    // A listener that never answers: bounded by the timeouts.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let t0 = Instant::now();
    let err = RedisEngine::builder(format!("redis://{}", silent.local_addr().unwrap()))
        .connect_timeout(TIMEOUT)
        .command_timeout(TIMEOUT)
        .build()
        .await
        .unwrap_err();
    assert!(matches!(err, BuildError::Connect(_)), "{err}");
    assert!(t0.elapsed() < BOUND, "{:?}", t0.elapsed());
    let err = RedisEngine::builder("nonsense://")
        .build()
        .await
        .unwrap_err();
    assert!(matches!(err, BuildError::Url(_)), "{err}");
    let err = RedisEngine::builder("redis://127.0.0.1")
        .prefix("a{b}")
        .build()
        .await
        .unwrap_err();
    assert!(matches!(err, BuildError::Setting(_)), "{err}");
}

fn clients(server: &RedisServer) -> usize {
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query(&mut server.cli())
        .unwrap();
    // Less the connection asking.
    list.lines().count() - 1
}

async fn wait_clients(server: &RedisServer, n: usize) {
    let deadline = Instant::now() + WAIT;
    while clients(server) != n {
        assert!(
            Instant::now() < deadline,
            "{} clients, not {n}",
            clients(server)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_or_dropping_the_engine_releases_its_connections() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let a = fast_node(&server).await;
    let b = fast_node(&server).await;
    wait_clients(&server, 4).await;
    a.engine.close();
    wait_clients(&server, 2).await;
    assert_unavailable(a.engine.publish("t", json(json!(1))).await);
    assert_unavailable(a.engine.send(Route::All, Bytes::from_static(b"x")));
    assert!(!a.engine.stats().connected);
    // Dropping the last handle is the same.
    drop(b);
    wait_clients(&server, 0).await;
}
