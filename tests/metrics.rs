//! The `metrics` feature's endpoint (`livehub::metrics::MetricsService`), as the metrics example
//! (`examples/metrics.rs`) mounts it: scraped over HTTP from a real server on a loopback port,
//! after real WebSocket clients (tokio-tungstenite) have connected, subscribed, published,
//! sent a bad frame, been disconnected for an oversize frame and closed cleanly, and after
//! refused requests on every transport. The values are exact: each is derived in a comment
//! from what the clients did.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[allow(dead_code)] // `main` and its helpers are for the example binary only.
#[path = "../examples/metrics.rs"]
mod metrics;

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use common::{close_frame, http, raw_request, send_json, serve_router, Ws};
use futures_util::{SinkExt, StreamExt};
use livehub::{Codec, ConnectRequest, Hub, StatsSnapshot, TransportInfo};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

/// Safety net for every wait (the machine may be busy: never a timing assertion).
const WAIT: Duration = Duration::from_secs(15);

/// Serves the example's router on a free port.
async fn serve() -> (SocketAddr, Hub) {
    let hub = metrics::build_hub();
    let addr = serve_router(metrics::router(&hub)).await;
    (addr, hub)
}

/// A scrape, parsed: samples by series (`name{labels}`), and the families' help and types.
#[derive(Debug)]
struct Scrape {
    samples: BTreeMap<String, f64>,
    help: BTreeSet<String>,
    types: BTreeMap<String, String>,
}

impl Scrape {
    /// One series' value, a whole number; it must be present.
    fn get(&self, series: &str) -> u64 {
        let v = *self
            .samples
            .get(series)
            .unwrap_or_else(|| panic!("no series {series} in {:#?}", self.samples));
        assert_eq!(v.fract(), 0.0, "{series} is not a whole number: {v}");
        v as u64
    }

    /// The sum of a family's series (every label value).
    fn total(&self, family: &str) -> u64 {
        let prefix = format!("{family}{{");
        self.samples
            .iter()
            .filter(|(k, _)| k.starts_with(&prefix))
            .map(|(_, v)| *v as u64)
            .sum()
    }
}

/// `GET /metrics` over a plain HTTP/1.1 connection; checks the status, the content type and
/// the format (every family has `# HELP` and `# TYPE`, counters end in `_total`, histograms
/// have their buckets, `_sum` and `_count`, no series twice).
async fn scrape(addr: SocketAddr) -> Scrape {
    let req = format!("GET /metrics HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n");
    let text = String::from_utf8(raw_request(addr, &req, WAIT).await).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("a header block");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let content_type = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        .map(|(_, v)| v.trim())
        .expect("a content type");
    assert_eq!(content_type, livehub::metrics::CONTENT_TYPE);

    let mut s = Scrape {
        samples: BTreeMap::new(),
        help: BTreeSet::new(),
        types: BTreeMap::new(),
    };
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').expect("HELP has a text");
            assert!(!help.is_empty());
            assert!(s.help.insert(name.to_owned()), "HELP twice for {name}");
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE has a type");
            assert!(s.help.contains(name), "HELP comes before TYPE for {name}");
            assert!(matches!(kind, "counter" | "gauge" | "histogram"), "{line}");
            assert_eq!(kind == "counter", name.ends_with("_total"), "{line}");
            assert!(s.types.insert(name.to_owned(), kind.to_owned()).is_none());
        } else {
            let (series, value) = line.rsplit_once(' ').expect("a sample line");
            let name = series.split('{').next().unwrap();
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| {
                    let base = name.strip_suffix(suffix)?;
                    (s.types.get(base).map(String::as_str) == Some("histogram")).then_some(base)
                })
                .unwrap_or(name);
            assert!(s.types.contains_key(family), "no TYPE before {series}");
            let value: f64 = value.parse().unwrap_or_else(|_| panic!("{line}"));
            assert!(
                s.samples.insert(series.to_owned(), value).is_none(),
                "{series} twice"
            );
        }
    }
    s
}

/// Opens a WebSocket client and reads its `welcome`.
async fn connect(addr: SocketAddr) -> Ws {
    let (mut ws, _) = tokio::time::timeout(
        WAIT,
        tokio_tungstenite::connect_async(format!("ws://{addr}/ws")),
    )
    .await
    .expect("connected in time")
    .expect("WebSocket upgrade");
    let welcome = recv(&mut ws).await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    ws
}

thread_local! {
    /// Bytes of the frames this test's clients received: what the hub handed the transports.
    /// (Each test runs on a thread of its own: its runtime is current-thread.)
    static RECEIVED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// The next JSON frame, each read within [`WAIT`]; its bytes are added to [`RECEIVED`].
async fn recv(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("timed out waiting for a frame")
            .expect("the connection ended")
            .expect("read error");
        if let Message::Text(t) = msg {
            RECEIVED.with(|r| r.set(r.get() + t.len() as u64));
            return serde_json::from_str(&t).unwrap();
        }
    }
}

/// Waits until `done` holds for the hub's stats. A session's end has no event the test could
/// wait on (the server has already answered the client when the hub counts it), so this
/// polls the hub's own counters with a short sleep between reads, under an overall timeout,
/// and asserts nothing about how long it took.
async fn settle(hub: &Hub, done: impl Fn(&StatsSnapshot) -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let stats = hub.stats();
        if done(&stats) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the hub did not settle: {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn an_idle_hub_exposes_every_series_at_zero() {
    let (addr, _hub) = serve().await;
    let s = scrape(addr).await;
    let families: Vec<&str> = s.types.keys().map(String::as_str).collect();
    assert_eq!(
        families,
        [
            "hub_bytes_in_total",
            "hub_bytes_out_total",
            "hub_deliveries_total",
            "hub_disconnects_total",
            "hub_dropped_total",
            "hub_encodes_total",
            "hub_engine_connected",
            "hub_engine_reconnects_total",
            "hub_errors_sent_total",
            "hub_frames_in_total",
            "hub_messages_published_total",
            "hub_publish_duration_seconds",
            "hub_queue_max_frames",
            "hub_queued_frames",
            "hub_refusals_total",
            "hub_rooms",
            "hub_sessions",
            "hub_sessions_opened_total",
            "hub_subscriptions",
            "hub_topics",
        ]
    );
    assert_eq!(s.types["hub_publish_duration_seconds"], "histogram");
    for t in ["ws", "sse", "poll"] {
        assert_eq!(s.get(&format!("hub_sessions{{transport=\"{t}\"}}")), 0);
    }
    for r in [
        "normal",
        "shutdown",
        "kicked",
        "slow_consumer",
        "heartbeat_timeout",
        "rate_limited",
        "frame_too_large",
        "bad_data",
        "protocol_error",
        "internal",
    ] {
        assert_eq!(
            s.get(&format!("hub_disconnects_total{{reason=\"{r}\"}}")),
            0
        );
    }
    for code in [
        "origin_not_allowed",
        "unauthorized",
        "too_many_connections",
        "bad_request",
    ] {
        assert_eq!(s.get(&format!("hub_refusals_total{{code=\"{code}\"}}")), 0);
    }
    // Every sample is 0, but the engine's (the in-process engine is always connected).
    assert_eq!(s.get("hub_engine_connected"), 1);
    let nonzero: Vec<_> = s.samples.iter().filter(|(_, v)| **v != 0.0).collect();
    assert_eq!(nonzero.len(), 1, "{nonzero:#?}");
    // 3 transports + 10 disconnect reasons + 2 encodings + 16 refusal codes + 14 latency
    // buckets and +Inf, _sum and _count + 15 single series.
    assert_eq!(s.samples.len(), 3 + 10 + 2 + 16 + 17 + 15);
}

#[tokio::test]
async fn metrics_count_exactly_what_websocket_clients_did() {
    let (addr, hub) = serve().await;

    // A and B subscribe to one topic; A publishes once.
    let mut a = connect(addr).await;
    let mut b = connect(addr).await;
    for ws in [&mut a, &mut b] {
        send_json(
            ws,
            json!({"type": "subscribe", "topic": "chat/room", "id": 1}),
        )
        .await;
        let reply = recv(ws).await;
        assert_eq!(reply["type"], "reply", "{reply}");
    }
    send_json(
        &mut a,
        json!({"type": "publish", "topic": "chat/room", "data": {"text": "hi"}, "id": 2}),
    )
    .await;
    let mut got = Vec::new();
    while got.len() < 2 {
        got.push(recv(&mut a).await);
    }
    let types: BTreeSet<&str> = got.iter().map(|f| f["type"].as_str().unwrap()).collect();
    assert_eq!(types, BTreeSet::from(["message", "reply"]), "{got:?}");
    let m = recv(&mut b).await;
    assert_eq!(m["type"], "message", "{m}");
    assert_eq!(m["data"], json!({"text": "hi"}));

    // C sends a frame that is not JSON (an error, the session stays), then one over the
    // frame size limit (64 KiB): it is disconnected with 1009 `frame_too_large`.
    let mut c = connect(addr).await;
    c.send(Message::text("this is not json")).await.unwrap();
    let e = recv(&mut c).await;
    assert_eq!(e["type"], "error", "{e}");
    assert_eq!(e["code"], "bad_frame", "{e}");
    let oversize = format!(
        r#"{{"type":"publish","topic":"chat/room","data":"{}"}}"#,
        "x".repeat(70 * 1024)
    );
    c.send(Message::text(oversize)).await.unwrap();
    assert_eq!(
        close_frame(&mut c, WAIT).await,
        (1009, "frame_too_large".to_owned())
    );

    // B leaves cleanly: close handshake.
    b.send(Message::Close(None)).await.unwrap();
    tokio::time::timeout(WAIT, async { while let Some(Ok(_)) = b.next().await {} })
        .await
        .expect("closed in time");

    settle(&hub, |s| {
        s.sessions_total() == 1 && s.disconnects.values().sum::<u64>() == 2
    })
    .await;
    let s = scrape(addr).await;

    // Only A is left.
    assert_eq!(s.get(r#"hub_sessions{transport="ws"}"#), 1);
    assert_eq!(s.get(r#"hub_sessions{transport="sse"}"#), 0);
    assert_eq!(s.get(r#"hub_sessions{transport="poll"}"#), 0);
    assert_eq!(s.get("hub_sessions_opened_total"), 3);
    assert_eq!(s.get("hub_subscriptions"), 1);
    assert_eq!(s.get("hub_topics"), 1);
    assert_eq!(s.get("hub_rooms"), 0);
    // A: subscribe, publish; B: subscribe; C: the bad frame (the oversize one never reached
    // the hub: the transport refused it).
    assert_eq!(s.get("hub_frames_in_total"), 4);
    assert_eq!(s.get("hub_messages_published_total"), 1);
    // 3 welcomes + 2 subscribe replies + the message to A and to B + A's publish reply
    // + C's error.
    assert_eq!(s.get("hub_deliveries_total"), 9);
    // The same frames, but the message encoded once for both subscribers.
    assert_eq!(s.get(r#"hub_encodes_total{encoding="json"}"#), 8);
    assert_eq!(s.get(r#"hub_encodes_total{encoding="msgpack"}"#), 0);
    assert_eq!(s.get("hub_errors_sent_total"), 1);
    assert_eq!(s.get("hub_dropped_total"), 0);
    assert_eq!(s.get(r#"hub_disconnects_total{reason="normal"}"#), 1);
    assert_eq!(
        s.get(r#"hub_disconnects_total{reason="frame_too_large"}"#),
        1
    );
    let others = s.total("hub_disconnects_total");
    assert_eq!(others, 2, "no other disconnect reason");

    // Bytes: the frames the hub was handed, and every frame the clients received.
    let sent: Vec<String> = [
        json!({"type": "subscribe", "topic": "chat/room", "id": 1}),
        json!({"type": "subscribe", "topic": "chat/room", "id": 1}),
        json!({"type": "publish", "topic": "chat/room", "data": {"text": "hi"}, "id": 2}),
    ]
    .iter()
    .map(Value::to_string)
    .chain(["this is not json".to_owned()])
    .collect();
    let bytes_in: usize = sent.iter().map(String::len).sum();
    assert_eq!(s.get("hub_bytes_in_total"), bytes_in as u64);
    assert_eq!(s.get("hub_bytes_out_total"), RECEIVED.with(|r| r.get()));
    // A's publish was timed once; nothing is queued now (every client read everything).
    assert_eq!(s.get("hub_publish_duration_seconds_count"), 1);
    assert_eq!(
        s.get(r#"hub_publish_duration_seconds_bucket{le="+Inf"}"#),
        1
    );
    assert!(s.samples["hub_publish_duration_seconds_sum"] > 0.0);
    assert_eq!(s.get("hub_queued_frames"), 0);
    assert_eq!(s.get("hub_queue_max_frames"), 0);
    let refused = s.total("hub_refusals_total");
    assert_eq!(refused, 0, "nothing was refused");

    // The scrape is the hub's own view.
    let stats = hub.stats();
    assert_eq!(stats.deliveries, s.get("hub_deliveries_total"));
    assert_eq!(stats.published, s.get("hub_messages_published_total"));
    drop(a);
}

// Regression: a client whose TCP connection ends without a close handshake (a dropped network,
// a killed tab) was counted as `protocol_error` (tungstenite reports that end as
// `Error::Protocol(ResetWithoutClosingHandshake)`), so the series counted network drops and hid
// real protocol violations. Over SSE and long-polling the same client ends as `normal`.
#[tokio::test]
async fn an_abruptly_dropped_websocket_counts_as_a_normal_disconnect() {
    let (addr, hub) = serve().await;
    let ws = connect(addr).await;
    drop(ws); // the TCP connection closes, with no close frame
    settle(&hub, |s| s.sessions_total() == 0).await;
    let s = scrape(addr).await;
    assert_eq!(s.get(r#"hub_disconnects_total{reason="normal"}"#), 1);
    assert_eq!(
        s.get(r#"hub_disconnects_total{reason="protocol_error"}"#),
        0
    );
}

#[tokio::test]
async fn refusals_on_every_transport_and_queue_depth_are_exposed() {
    let hub = Hub::builder()
        .hooks(metrics::OpenHooks)
        .allowed_origins(["http://app.example"])
        .build();
    let addr = serve_router(metrics::router(&hub)).await;

    // A page of another origin, on every transport: 403 origin_not_allowed each time.
    let evil = [("origin", "http://evil.example".to_owned())];
    let mut req = format!("ws://{addr}/ws").into_client_request().unwrap();
    req.headers_mut()
        .insert("origin", "http://evil.example".parse().unwrap());
    match tokio_tungstenite::connect_async(req).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status().as_u16(), 403)
        }
        other => panic!("the upgrade was not refused: {:?}", other.map(|_| ())),
    }
    let r = http(addr, "GET", "/sse?topic=t", &evil, "", WAIT).await;
    assert_eq!(
        (r.status.as_u16(), r.json()["code"].clone()),
        (403, json!("origin_not_allowed"))
    );
    let r = http(addr, "POST", "/poll", &evil, "", WAIT).await;
    assert_eq!(
        (r.status.as_u16(), r.json()["code"].clone()),
        (403, json!("origin_not_allowed"))
    );
    // Bad requests: a poll without a session, an SSE stream in MessagePack.
    let r = http(addr, "GET", "/poll?cursor=0", &[], "", WAIT).await;
    assert_eq!(r.json()["code"], "bad_request");
    let r = http(addr, "GET", "/sse?encoding=msgpack", &[], "", WAIT).await;
    assert_eq!(
        (r.status.as_u16(), r.json()["code"].clone()),
        (406, json!("bad_encoding"))
    );
    // The page's own origin gets in.
    let r = http(
        addr,
        "POST",
        "/poll",
        &[("origin", "http://app.example".to_owned())],
        "",
        WAIT,
    )
    .await;
    assert_eq!(r.status.as_u16(), 200);

    // Two sessions whose transport has not taken anything yet (in-process, never read): one
    // with its welcome and two events queued, one with its welcome.
    let memory = || ConnectRequest::new(TransportInfo::duplex("memory"), Codec::Json);
    let busy = hub.connect(memory()).await.unwrap();
    let _idle = hub.connect(memory()).await.unwrap();
    for n in 0..2 {
        assert!(hub.emit_to(busy.session.id(), "tick", &n).unwrap());
    }

    let s = scrape(addr).await;
    assert_eq!(s.get(r#"hub_refusals_total{code="origin_not_allowed"}"#), 3);
    assert_eq!(s.get(r#"hub_refusals_total{code="bad_request"}"#), 1);
    assert_eq!(s.get(r#"hub_refusals_total{code="bad_encoding"}"#), 1);
    let refused = s.total("hub_refusals_total");
    assert_eq!(refused, 5, "nothing else was refused");
    // The poll session's welcome was taken by its transport; the in-process ones wait.
    assert_eq!(s.get("hub_queued_frames"), 4);
    assert_eq!(s.get("hub_queue_max_frames"), 3);
    assert_eq!(s.get(r#"hub_sessions{transport="memory"}"#), 2);
    assert_eq!(s.get(r#"hub_sessions{transport="poll"}"#), 1);
    assert_eq!(s.get("hub_sessions_opened_total"), 3);
}
