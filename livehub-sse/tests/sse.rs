//! livehub-sse over real loopback sockets, with a real HTTP client (hyper's) parsing the event
//! stream, and a real WebSocket client where both transports meet.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use livehub_core::{
    async_trait, Action, ConnectRequest, DisconnectReason, Hooks, Hub, Identity, Payload,
    Rejection, SessionInfo,
};
use livehub_sse::SseService;
use livehub_ws::WsService;
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------------
// The host: hooks, hub, server.

/// Users come as `?user=<name>` or an `x-user` header; `secret/*` topics are off limits;
/// clients may publish to `chat/*`. Disconnects are counted.
struct TestHooks {
    disconnects: watch::Sender<Vec<(String, DisconnectReason)>>,
}

#[async_trait]
impl Hooks for TestHooks {
    async fn authenticate(&self, req: &ConnectRequest) -> Result<Identity, Rejection> {
        let user = req
            .query("user")
            .map(|u| u.into_owned())
            .or_else(|| req.header("x-user").map(str::to_owned));
        match user.as_deref() {
            Some("mallory") => Err(Rejection::forbidden("banned")),
            Some(u) => Ok(Identity::user(u).with_meta(json!({"name": u}))),
            None => Err(Rejection::unauthorized("user required")),
        }
    }

    async fn authorize(&self, _who: &Identity, action: Action<'_>) -> bool {
        match action {
            Action::Subscribe(t) => !t.starts_with("secret/"),
            Action::Publish(t) => t.starts_with("chat/"),
            _ => false,
        }
    }

    fn on_disconnect(&self, session: &SessionInfo, reason: DisconnectReason) {
        self.disconnects
            .send_modify(|v| v.push((session.id.to_string(), reason)));
    }
}

fn hooks() -> (TestHooks, watch::Receiver<Vec<(String, DisconnectReason)>>) {
    let (tx, rx) = watch::channel(Vec::new());
    (TestHooks { disconnects: tx }, rx)
}

struct Server {
    addr: SocketAddr,
    hub: Hub,
    disconnects: watch::Receiver<Vec<(String, DisconnectReason)>>,
}

fn hub_builder() -> livehub_core::HubBuilder {
    Hub::builder().on_event("echo", |_ctx, data: Payload| async move { Ok(Some(data)) })
}

/// Serves `/events` (SSE) and `/ws` (WebSocket) from one axum app.
async fn serve(builder: livehub_core::HubBuilder, sse: impl FnOnce(Hub) -> SseService) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    serve_on(listener, builder, sse).await
}

/// [`serve`] on a given listener.
async fn serve_on(
    listener: TcpListener,
    builder: livehub_core::HubBuilder,
    sse: impl FnOnce(Hub) -> SseService,
) -> Server {
    let (h, disconnects) = hooks();
    let hub = builder.hooks(h).build();
    let app = axum::Router::new()
        .route_service("/events", sse(hub.clone()))
        .route_service("/ws", WsService::new(hub.clone()));
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Server {
        addr,
        hub,
        disconnects,
    }
}

async fn default_server() -> Server {
    serve(hub_builder(), SseService::new).await
}

// ---------------------------------------------------------------------------------------------
// The client: hyper over one TCP connection per request, and an SSE parser.

#[derive(Debug, Clone, Default)]
struct Ev {
    id: Option<String>,
    event: String,
    data: String,
    comments: Vec<String>,
    retry: Option<u64>,
}

impl Ev {
    fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or_else(|e| panic!("{e}: {:?}", self.data))
    }
}

struct EventStream {
    status: StatusCode,
    headers: HeaderMap,
    body: Incoming,
    buf: Vec<u8>,
    /// The connection's task, when the stream owns its connection.
    conn: Option<JoinHandle<()>>,
}

impl Drop for EventStream {
    fn drop(&mut self) {
        // Closes the TCP connection, as a closed browser tab would.
        if let Some(conn) = &self.conn {
            conn.abort();
        }
    }
}

impl EventStream {
    /// The next block (comments and `retry:` included), or `None` when the body ends.
    async fn next_block(&mut self) -> Option<Ev> {
        loop {
            if let Some(pos) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buf.drain(..pos + 2).collect();
                let text = String::from_utf8(block).expect("SSE is UTF-8");
                let mut ev = Ev::default();
                let mut data: Vec<&str> = Vec::new();
                for line in text.lines().filter(|l| !l.is_empty()) {
                    if let Some(c) = line.strip_prefix(':') {
                        ev.comments.push(c.trim().to_owned());
                        continue;
                    }
                    let (field, value) = line.split_once(':').unwrap_or((line, ""));
                    let value = value.strip_prefix(' ').unwrap_or(value);
                    match field {
                        "id" => ev.id = Some(value.to_owned()),
                        "event" => ev.event = value.to_owned(),
                        "data" => data.push(value),
                        "retry" => ev.retry = Some(value.parse().unwrap()),
                        other => panic!("unknown field {other:?}"),
                    }
                }
                ev.data = data.join("\n");
                return Some(ev);
            }
            let frame = tokio::time::timeout(WAIT, self.body.frame())
                .await
                .expect("timed out waiting for the stream")?;
            if let Ok(data) = frame.expect("body error").into_data() {
                self.buf.extend_from_slice(&data);
            }
        }
    }

    /// The next event that has data (comments and bare `retry:` skipped).
    async fn next(&mut self) -> Ev {
        loop {
            let ev = self.next_block().await.expect("stream ended");
            if !ev.data.is_empty() {
                return ev;
            }
        }
    }

    /// Skips to the next event named `name` and returns it; fails on an `error` event.
    async fn expect(&mut self, name: &str) -> Ev {
        loop {
            let ev = self.next().await;
            if ev.event == name {
                return ev;
            }
            assert_ne!(
                ev.event, "error",
                "unexpected error while waiting for {name}: {ev:?}"
            );
        }
    }

    /// Reads `welcome` then `session`: the command URL and token.
    async fn handshake(&mut self) -> Cmd {
        let first = self.next_block().await.unwrap();
        // The default 3 s, jittered per stream by half of it either way.
        let retry = first.retry.expect("the stream starts with retry:");
        assert!((1500..4500).contains(&retry), "retry: {retry}");
        let welcome = self.next().await;
        assert_eq!(welcome.event, "welcome");
        let w = welcome.json();
        assert_eq!(w["encoding"], "json");
        let session = self.next().await;
        assert_eq!(session.event, "session");
        let s = session.json();
        assert_eq!(s["session"], w["session"]);
        Cmd {
            session: s["session"].as_str().unwrap().to_owned(),
            token: s["token"].as_str().unwrap().to_owned(),
            url: s["commands"].as_str().unwrap().to_owned(),
        }
    }
}

#[derive(Debug, Clone)]
struct Cmd {
    session: String,
    token: String,
    url: String,
}

async fn send(
    addr: SocketAddr,
    req: Request<Full<Bytes>>,
) -> (StatusCode, HeaderMap, Incoming, JoinHandle<()>) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    send_on(tcp, req).await
}

/// [`send`] on a given connection.
async fn send_on(
    tcp: TcpStream,
    req: Request<Full<Bytes>>,
) -> (StatusCode, HeaderMap, Incoming, JoinHandle<()>) {
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    let conn = tokio::spawn(async move {
        let _ = conn.await;
    });
    let resp = tokio::time::timeout(WAIT, sender.send_request(req))
        .await
        .expect("timed out waiting for response headers")
        .unwrap();
    let (parts, body) = resp.into_parts();
    (parts.status, parts.headers, body, conn)
}

async fn open(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> EventStream {
    let tcp = TcpStream::connect(addr).await.unwrap();
    open_on(tcp, addr, path, headers).await
}

/// [`open`] on a given connection.
async fn open_on(
    tcp: TcpStream,
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> EventStream {
    let mut req = Request::get(format!("http://{addr}{path}"))
        .header("host", addr.to_string())
        .header("accept", "text/event-stream");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let (status, headers, body, conn) = send_on(tcp, req.body(Full::default()).unwrap()).await;
    EventStream {
        status,
        headers,
        body,
        buf: Vec::new(),
        conn: Some(conn),
    }
}

/// A refused GET: status and JSON body.
async fn refused(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> (StatusCode, Value) {
    let mut s = open(addr, path, headers).await;
    assert_ne!(s.status, StatusCode::OK, "expected a refusal");
    assert_eq!(s.headers["content-type"], "application/json");
    let mut body = Vec::new();
    while let Some(frame) = s.body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            body.extend_from_slice(&data);
        }
    }
    (s.status, serde_json::from_slice(&body).unwrap())
}

async fn post(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> (StatusCode, HeaderMap, String) {
    let mut req = Request::post(format!("http://{addr}{path}")).header("host", addr.to_string());
    if !headers.iter().any(|(k, _)| *k == "content-type") {
        req = req.header("content-type", "application/json");
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let (status, headers, body, _conn) =
        send(addr, req.body(Full::new(body.into())).unwrap()).await;
    let body = body.collect().await.unwrap().to_bytes();
    (status, headers, String::from_utf8(body.to_vec()).unwrap())
}

/// Sends one command as the stream's user; it must be accepted.
async fn command(addr: SocketAddr, cmd: &Cmd, user: &str, frame: Value) {
    let (status, _, body) = post(
        addr,
        &cmd.url,
        &[("hub-session-token", &cmd.token), ("x-user", user)],
        frame.to_string(),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
}

fn message(topic: &str, ev: &Ev) -> (u64, Value) {
    assert_eq!(ev.event, "message", "{ev:?}");
    let m = ev.json();
    assert_eq!(m["topic"], topic, "{ev:?}");
    assert!(ev.id.is_some(), "message events carry an id");
    (m["offset"].as_u64().unwrap(), m["data"].clone())
}

async fn wait_disconnects(rx: &mut watch::Receiver<Vec<(String, DisconnectReason)>>, n: usize) {
    tokio::time::timeout(WAIT, rx.wait_for(|v| v.len() >= n))
        .await
        .expect("timed out waiting for disconnects")
        .unwrap();
}

// ---------------------------------------------------------------------------------------------
// Tests.

#[tokio::test]
async fn streams_events_of_several_topics_with_ids_and_proxy_headers() {
    let srv = default_server().await;
    let mut s = open(srv.addr, "/events?user=ana&topic=a&topic=b", &[]).await;
    assert_eq!(s.status, StatusCode::OK);
    assert!(s.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    assert!(s.headers["cache-control"]
        .to_str()
        .unwrap()
        .contains("no-cache"));
    assert_eq!(s.headers["x-accel-buffering"], "no");
    let cmd = s.handshake().await;
    assert_eq!(cmd.url, format!("/events?session={}", cmd.session));
    assert_eq!(cmd.token.len(), 64);

    srv.hub.publish("c", &json!("not followed")).await.unwrap();
    srv.hub.publish("a", &json!({"n": 1})).await.unwrap();
    srv.hub.publish("b", &json!({"n": 2})).await.unwrap();
    srv.hub.publish("a", &json!({"n": 3})).await.unwrap();

    let e1 = s.next().await;
    assert_eq!(message("a", &e1), (1, json!({"n": 1})));
    let e2 = s.next().await;
    assert_eq!(message("b", &e2), (1, json!({"n": 2})));
    let e3 = s.next().await;
    assert_eq!(message("a", &e3), (2, json!({"n": 3})));
    // Ids name every topic's position: the last one resumes both.
    let epoch_a = e3.json()["epoch"].as_str().unwrap().to_owned();
    let epoch_b = e2.json()["epoch"].as_str().unwrap().to_owned();
    // Both topics of the URL from the first event on (`b` at 0 until its first message), so
    // that a reconnect before `b`'s first message still recovers it.
    assert_eq!(
        e1.id.as_deref(),
        Some(&*format!("a={epoch_a}:1&b={epoch_b}:0"))
    );
    assert_eq!(
        e3.id.as_deref(),
        Some(&*format!("a={epoch_a}:2&b={epoch_b}:1"))
    );
}

#[tokio::test]
async fn post_commands_change_the_stream() {
    let srv = default_server().await;
    let mut s = open(srv.addr, "/events?user=ana&topic=a", &[]).await;
    let cmd = s.handshake().await;

    command(
        srv.addr,
        &cmd,
        "ana",
        json!({"type":"subscribe","topic":"b","id":1}),
    )
    .await;
    let reply = s.expect("reply").await.json();
    assert_eq!(reply["id"], 1);
    assert_eq!(reply["data"]["topic"], "b");

    command(
        srv.addr,
        &cmd,
        "ana",
        json!({"type":"unsubscribe","topic":"a","id":2}),
    )
    .await;
    assert_eq!(
        s.expect("reply").await.json(),
        json!({"type":"reply","id":2,"data":null})
    );

    srv.hub.publish("a", &json!("gone")).await.unwrap();
    srv.hub.publish("b", &json!("here")).await.unwrap();
    assert_eq!(message("b", &s.next().await), (1, json!("here")));

    // Publish through the stream's session, custom events with replies, and errors on the
    // stream for what only the hub can judge.
    command(
        srv.addr,
        &cmd,
        "ana",
        json!({"type":"publish","topic":"chat/x","data":"hi","id":3}),
    )
    .await;
    let r = s.expect("reply").await.json();
    assert_eq!(
        (r["id"].as_u64(), r["data"]["offset"].as_u64()),
        (Some(3), Some(1))
    );
    command(
        srv.addr,
        &cmd,
        "ana",
        json!({"type":"subscribe","topic":"chat/x","id":4}),
    )
    .await;
    assert_eq!(s.expect("reply").await.json()["id"], 4);
    command(
        srv.addr,
        &cmd,
        "ana",
        json!({"type":"publish","topic":"chat/x","data":"again","id":5}),
    )
    .await;
    // The fan-out (under the topic's lock) reaches this session before the reply.
    assert_eq!(message("chat/x", &s.next().await), (2, json!("again")));
    assert_eq!(s.next().await.json()["id"], 5);

    command(
        srv.addr,
        &cmd,
        "ana",
        json!({"type":"event","event":"echo","data":{"k":[1,2]},"id":6}),
    )
    .await;
    assert_eq!(
        s.expect("reply").await.json(),
        json!({"type":"reply","id":6,"data":{"k":[1,2]}})
    );
    command(
        srv.addr,
        &cmd,
        "ana",
        json!({"type":"subscribe","topic":"secret/x","id":7}),
    )
    .await;
    let err = s.next().await;
    assert_eq!(err.event, "error");
    assert_eq!(
        (err.json()["id"].as_u64(), err.json()["code"].as_str()),
        (Some(7), Some("forbidden"))
    );
    command(srv.addr, &cmd, "ana", json!({"type":"frobnicate","id":8})).await;
    let err = s.next().await.json();
    assert_eq!(
        (err["id"].as_u64(), err["code"].as_str()),
        (Some(8), Some("unknown_type"))
    );
}

#[tokio::test]
async fn resume_with_last_event_id_yields_exactly_the_missed_events() {
    let srv = default_server().await;
    let mut s = open(srv.addr, "/events?user=ana&topic=a&topic=b", &[]).await;
    let cmd = s.handshake().await;
    // `c` is followed by command only: the id must carry it too.
    command(
        srv.addr,
        &cmd,
        "ana",
        json!({"type":"subscribe","topic":"c","id":1}),
    )
    .await;
    s.expect("reply").await;
    // `d` too, and it sees no message before the disconnect: the subscribe reply itself
    // carries an id with `d`'s position at subscription time.
    srv.hub
        .publish("d", &json!("d0 (before the subscription)"))
        .await
        .unwrap();
    command(
        srv.addr,
        &cmd,
        "ana",
        json!({"type":"subscribe","topic":"d","id":2}),
    )
    .await;
    let reply = s.expect("reply").await;
    let d_epoch = reply.json()["data"]["epoch"].as_str().unwrap().to_owned();
    assert!(
        reply
            .id
            .as_deref()
            .unwrap()
            .ends_with(&format!("&d={d_epoch}:1")),
        "{reply:?}"
    );
    srv.hub.publish("a", &json!("a1")).await.unwrap();
    srv.hub.publish("b", &json!("b1")).await.unwrap();
    srv.hub.publish("c", &json!("c1")).await.unwrap();
    for _ in 0..3 {
        s.next().await;
    }
    srv.hub.publish("a", &json!("a2")).await.unwrap();
    let last = s.next().await;
    assert_eq!(message("a", &last), (2, json!("a2")));
    let last_id = last.id.clone().unwrap();
    let mut disconnects = srv.disconnects.clone();
    drop(s);
    wait_disconnects(&mut disconnects, 1).await;

    // Missed while away.
    for (t, d) in [
        ("b", "b2"),
        ("a", "a3"),
        ("c", "c2"),
        ("d", "d1"),
        ("b", "b3"),
    ] {
        srv.hub.publish(t, &json!(d)).await.unwrap();
    }

    let mut s = open(
        srv.addr,
        "/events?user=ana&topic=a&topic=b",
        &[("last-event-id", &last_id)],
    )
    .await;
    assert_eq!(s.status, StatusCode::OK);
    let cmd2 = s.handshake().await;
    assert_ne!(cmd2.session, cmd.session);
    assert_ne!(cmd2.token, cmd.token);
    let resume = s.next().await;
    assert_eq!(resume.event, "resume");
    assert_eq!(
        resume.json(),
        json!({"type":"resume","resumed":true,"topics":["a","b","c","d"],"failed":[]})
    );
    srv.hub.publish("a", &json!("a4")).await.unwrap();
    let mut got: Vec<(String, u64, Value)> = Vec::new();
    while got.len() < 6 {
        let ev = s.next().await;
        assert_eq!(ev.event, "message", "{ev:?}");
        let m = ev.json();
        got.push((
            m["topic"].as_str().unwrap().to_owned(),
            m["offset"].as_u64().unwrap(),
            m["data"].clone(),
        ));
    }
    let of = |t: &str| -> Vec<(u64, Value)> {
        got.iter()
            .filter(|g| g.0 == t)
            .map(|g| (g.1, g.2.clone()))
            .collect()
    };
    assert_eq!(of("a"), vec![(3, json!("a3")), (4, json!("a4"))]);
    assert_eq!(of("b"), vec![(2, json!("b2")), (3, json!("b3"))]);
    assert_eq!(of("c"), vec![(2, json!("c2"))]);
    assert_eq!(of("d"), vec![(2, json!("d1"))]);
    // Recovered before live: a4 (live) is last.
    assert_eq!(got.last().unwrap().2, json!("a4"));
}

#[tokio::test]
async fn resume_past_history_gets_a_gap_event() {
    let srv = serve(hub_builder().history_len(2), SseService::new).await;
    let mut s = open(srv.addr, "/events?user=ana&topic=a", &[]).await;
    s.handshake().await;
    srv.hub.publish("a", &json!(1)).await.unwrap();
    let last = s.next().await;
    let last_id = last.id.clone().unwrap();
    drop(s);
    for n in 2..=6 {
        srv.hub.publish("a", &json!(n)).await.unwrap();
    }
    let mut s = open(
        srv.addr,
        "/events?user=ana&topic=a",
        &[("last-event-id", &last_id)],
    )
    .await;
    s.handshake().await;
    assert_eq!(s.next().await.event, "resume");
    let gap = s.next().await;
    assert_eq!(gap.event, "gap");
    let g = gap.json();
    assert_eq!(
        (&g["topic"], &g["from"], &g["to"], &g["reason"]),
        (&json!("a"), &json!(2), &json!(4), &json!("history"))
    );
    // The gap moves the id past what is lost: resuming from it would not repeat the gap.
    let epoch = g["epoch"].as_str().unwrap();
    assert_eq!(gap.id.as_deref(), Some(&*format!("a={epoch}:4")));
    assert_eq!(message("a", &s.next().await), (5, json!(5)));
    assert_eq!(message("a", &s.next().await), (6, json!(6)));

    // An id from another epoch (a restarted server) gets an `epoch` gap, never silence.
    drop(s);
    let mut s = open(
        srv.addr,
        "/events?user=ana&topic=a",
        &[("last-event-id", "a=0123456789abcdef:3")],
    )
    .await;
    s.handshake().await;
    assert_eq!(s.next().await.event, "resume");
    let g = s.next().await;
    assert_eq!(g.event, "gap");
    assert_eq!(g.json()["reason"], "epoch");
}

#[tokio::test]
async fn resume_after_the_topic_was_forgotten_gets_an_epoch_gap_then_the_new_stream() {
    // Topics without subscribers are forgotten 1 ms after their last message (swept every
    // 2 ms); a forgotten topic used again starts a new stream in a new epoch.
    let srv = serve(
        hub_builder()
            .heartbeat(Duration::from_millis(2), Duration::from_secs(3600))
            .topic_ttl(Duration::from_millis(1)),
        SseService::new,
    )
    .await;
    let mut s = open(srv.addr, "/events?user=ana&topic=t", &[]).await;
    s.handshake().await;
    srv.hub.publish("t", &json!(1)).await.unwrap();
    let first = s.expect("message").await;
    let old_epoch = first.json()["epoch"].as_str().unwrap().to_owned();
    let last_id = first.id.clone().unwrap();
    drop(s);
    wait_disconnects(&mut srv.disconnects.clone(), 1).await;
    tokio::time::timeout(WAIT, async {
        while srv.hub.stats().topics > 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .expect("the idle topic was not forgotten");
    // Back with the old position: told plainly that the stream it knew is gone...
    let mut s = open(
        srv.addr,
        "/events?user=ana&topic=t",
        &[("last-event-id", &last_id)],
    )
    .await;
    s.handshake().await;
    assert_eq!(s.expect("resume").await.json()["resumed"], true);
    let gap = s.expect("gap").await;
    let g = gap.json();
    let new_epoch = g["epoch"].as_str().unwrap().to_owned();
    assert_eq!((&g["topic"], &g["reason"]), (&json!("t"), &json!("epoch")));
    assert_ne!(new_epoch, old_epoch);
    // ... then the new stream from offset 1, its id naming the new epoch (which holds a `.`).
    srv.hub.publish("t", &json!(2)).await.unwrap();
    let m = s.expect("message").await;
    assert_eq!(message("t", &m), (1, json!(2)));
    assert_eq!(m.id.as_deref(), Some(&*format!("t={new_epoch}:1")));
    assert_eq!(new_epoch, format!("{old_epoch}.1"));
}

#[tokio::test]
async fn malformed_last_event_id_starts_fresh_and_says_so() {
    let srv = default_server().await;
    srv.hub.publish("a", &json!("old")).await.unwrap();
    for bad in ["nonsense", "a=e:notanumber", "a=e:1&a=e:2", "%%%"] {
        let mut s = open(
            srv.addr,
            "/events?user=ana&topic=a",
            &[("last-event-id", bad)],
        )
        .await;
        assert_eq!(s.status, StatusCode::OK, "{bad:?}");
        s.handshake().await;
        let r = s.next().await;
        assert_eq!(r.event, "resume");
        let r = r.json();
        assert_eq!(
            (&r["resumed"], &r["code"]),
            (&json!(false), &json!("bad_last_event_id"))
        );
        // Fresh: live messages only, nothing from history.
        srv.hub.publish("a", &json!(bad)).await.unwrap();
        let m = s.next().await;
        assert_eq!(m.json()["data"], json!(bad));
    }
}

#[tokio::test]
async fn a_dropped_client_leaves_presence_exactly_once() {
    let srv = default_server().await;
    let mut disconnects = srv.disconnects.clone();
    // A WebSocket watcher of the topic's presence.
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("ws://{}/ws?user=watcher", srv.addr))
            .await
            .unwrap();
    ws.send(Message::text(
        json!({"type":"subscribe","topic":"room","presence":true,"id":1}).to_string(),
    ))
    .await
    .unwrap();
    let mut ws_next = async || -> Value {
        loop {
            let msg = tokio::time::timeout(WAIT, ws.next())
                .await
                .expect("timed out waiting for ws")
                .unwrap()
                .unwrap();
            if let Message::Text(t) = msg {
                return serde_json::from_str(&t).unwrap();
            }
        }
    };
    assert_eq!(ws_next().await["type"], "welcome");
    assert_eq!(ws_next().await["type"], "reply");

    let mut s = open(srv.addr, "/events?user=ana&topic=room", &[]).await;
    let cmd = s.handshake().await;
    let join = ws_next().await;
    assert_eq!(join["type"], "join");
    assert_eq!(join["member"]["session"], cmd.session.as_str());
    assert_eq!(srv.hub.topic_members("room").await.unwrap().len(), 2);

    drop(s); // the TCP connection closes
    let leave = ws_next().await;
    assert_eq!(leave["type"], "leave");
    assert_eq!(leave["member"]["session"], cmd.session.as_str());
    assert_eq!(leave["member"]["user"], "ana");
    wait_disconnects(&mut disconnects, 1).await;
    assert_eq!(
        disconnects.borrow().clone(),
        vec![(cmd.session.clone(), DisconnectReason::Normal)]
    );
    // Exactly once: the next thing the watcher sees is a marker, not a second leave.
    srv.hub.publish("room", &json!("marker")).await.unwrap();
    let next = ws_next().await;
    assert_eq!(
        (&next["type"], &next["data"]),
        (&json!("message"), &json!("marker"))
    );
    assert_eq!(srv.hub.topic_members("room").await.unwrap().len(), 1);
    // The stream's command endpoint is gone with it.
    let (status, _, _) = post(
        srv.addr,
        &cmd.url,
        &[("hub-session-token", &cmd.token), ("x-user", "ana")],
        r#"{"type":"ping"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn ws_and_sse_clients_see_the_same_messages_in_the_same_order() {
    let srv = default_server().await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws?user=bob", srv.addr))
        .await
        .unwrap();
    ws.send(Message::text(
        json!({"type":"subscribe","topic":"chat/all","id":1}).to_string(),
    ))
    .await
    .unwrap();
    let mut s = open(srv.addr, "/events?user=ana&topic=chat/all", &[]).await;
    s.handshake().await;
    // Wait for the WS subscription's reply before publishing.
    let mut ws_msgs: Vec<Value> = Vec::new();
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let v: Value = serde_json::from_str(msg.to_text().unwrap()).unwrap();
        if v["type"] == "reply" {
            break;
        }
    }

    // Publishers racing: three server tasks and the WebSocket client itself.
    let mut tasks = Vec::new();
    for p in 0..3 {
        let hub = srv.hub.clone();
        tasks.push(tokio::spawn(async move {
            for n in 0..30 {
                hub.publish("chat/all", &json!({"p": p, "n": n}))
                    .await
                    .unwrap();
                tokio::task::yield_now().await;
            }
        }));
    }
    for n in 0..10 {
        ws.send(Message::text(
            json!({"type":"publish","topic":"chat/all","data":{"p":"ws","n":n}}).to_string(),
        ))
        .await
        .unwrap();
    }
    for t in tasks {
        t.await.unwrap();
    }
    const TOTAL: usize = 100;
    while ws_msgs.len() < TOTAL {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let v: Value = serde_json::from_str(msg.to_text().unwrap()).unwrap();
        assert_ne!(v["type"], "error", "{v}");
        if v["type"] == "message" {
            ws_msgs.push(json!([v["offset"], v["data"]]));
        }
    }
    let mut sse_msgs: Vec<Value> = Vec::new();
    while sse_msgs.len() < TOTAL {
        let ev = s.next().await;
        let (offset, data) = message("chat/all", &ev);
        sse_msgs.push(json!([offset, data]));
    }
    assert_eq!(sse_msgs, ws_msgs);
    let offsets: Vec<u64> = sse_msgs.iter().map(|m| m[0].as_u64().unwrap()).collect();
    assert_eq!(offsets, (1..=TOTAL as u64).collect::<Vec<_>>());
}

#[tokio::test]
async fn unknown_or_forged_sessions_change_nothing() {
    let srv = default_server().await;
    let mut s = open(srv.addr, "/events?user=ana&topic=a", &[]).await;
    let cmd = s.handshake().await;
    let sub = json!({"type":"subscribe","topic":"b","id":1}).to_string();
    let code = |body: &str| -> String {
        serde_json::from_str::<Value>(body).unwrap()["code"]
            .as_str()
            .unwrap()
            .to_owned()
    };

    // Unknown, malformed or missing session ids.
    for url in [
        "/events?session=0000000000000000".to_owned(),
        "/events?session=zz".to_owned(),
        "/events".to_owned(),
    ] {
        let (status, _, body) = post(
            srv.addr,
            &url,
            &[("hub-session-token", &cmd.token), ("x-user", "ana")],
            sub.clone(),
        )
        .await;
        assert_eq!(
            (status, code(&body)),
            (StatusCode::NOT_FOUND, "unknown_session".into())
        );
    }
    // The right id with a wrong or missing token.
    let wrong = "0".repeat(64);
    for headers in [
        vec![("hub-session-token", wrong.as_str()), ("x-user", "ana")],
        vec![("x-user", "ana")],
    ] {
        let (status, _, body) = post(srv.addr, &cmd.url, &headers, sub.clone()).await;
        assert_eq!(
            (status, code(&body)),
            (StatusCode::FORBIDDEN, "forbidden".into())
        );
    }
    // The right id and token, but another user's credentials, or none.
    let (status, _, body) = post(
        srv.addr,
        &cmd.url,
        &[("hub-session-token", &cmd.token), ("x-user", "eve")],
        sub.clone(),
    )
    .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::FORBIDDEN, "forbidden".into())
    );
    let (status, _, body) = post(
        srv.addr,
        &cmd.url,
        &[("hub-session-token", &cmd.token)],
        sub.clone(),
    )
    .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::UNAUTHORIZED, "unauthorized".into())
    );

    // Nothing changed: not subscribed to `b`, no reply or error on the stream.
    srv.hub.publish("b", &json!("not for ana")).await.unwrap();
    srv.hub.publish("a", &json!("marker")).await.unwrap();
    let ev = s.next().await;
    assert_eq!(message("a", &ev), (1, json!("marker")));
}

#[tokio::test]
async fn refused_topics_and_credentials_get_an_http_error_before_streaming() {
    let srv = default_server().await;
    let (status, body) = refused(srv.addr, "/events?user=ana&topic=a&topic=secret/x", &[]).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["code"], "forbidden");
    assert!(body["message"].as_str().unwrap().contains("secret/x"));
    let (status, body) = refused(srv.addr, "/events?user=ana&topic=bad%20topic", &[]).await;
    assert_eq!(
        (status, &body["code"]),
        (StatusCode::BAD_REQUEST, &json!("bad_topic"))
    );
    let (status, body) = refused(srv.addr, "/events?topic=a", &[]).await;
    assert_eq!(
        (status, &body["code"]),
        (StatusCode::UNAUTHORIZED, &json!("unauthorized"))
    );
    let (status, body) = refused(srv.addr, "/events?user=mallory", &[]).await;
    assert_eq!(
        (status, &body["code"]),
        (StatusCode::FORBIDDEN, &json!("forbidden"))
    );
    // No session was left behind, and `a` (subscribed before `secret/x` was refused) is empty.
    assert_eq!(srv.hub.session_count(), 0);
    assert!(srv.hub.topic_members("a").await.unwrap().is_empty());
}

#[tokio::test]
async fn bad_command_bodies_get_400_or_413_with_codes() {
    let srv = serve(hub_builder().max_frame_size(1024), |hub| {
        SseService::new(hub)
    })
    .await;
    let mut s = open(srv.addr, "/events?user=ana&topic=a", &[]).await;
    let cmd = s.handshake().await;
    let auth = [("hub-session-token", cmd.token.as_str()), ("x-user", "ana")];
    for (body, status, code) in [
        ("{not json".to_owned(), 400, "bad_frame"),
        ("[1,2]".to_owned(), 400, "bad_frame"),
        (r#"{"topic":"a"}"#.to_owned(), 400, "bad_field"),
        (r#"{"type":5}"#.to_owned(), 400, "bad_field"),
        (
            json!({"type":"publish","topic":"chat/x","data":"x".repeat(2000)}).to_string(),
            413,
            "frame_too_large",
        ),
    ] {
        let (st, headers, text) = post(srv.addr, &cmd.url, &auth, body.clone()).await;
        assert_eq!(st.as_u16(), status, "{body}: {text}");
        assert_eq!(headers["content-type"], "application/json");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["code"], code, "{body}");
    }
    // A MessagePack body is refused as such.
    let (st, _, _) = post(
        srv.addr,
        &cmd.url,
        &[auth[0], auth[1], ("content-type", "application/msgpack")],
        vec![0x81u8, 0xa4],
    )
    .await;
    assert_eq!(st, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    // None of it reached the session, which still works.
    command(srv.addr, &cmd, "ana", json!({"type":"ping","id":9})).await;
    let pong = s.next().await;
    assert_eq!(pong.event, "pong");
    assert_eq!(pong.json()["id"], 9);
}

#[tokio::test]
async fn msgpack_and_unknown_encodings_are_refused() {
    let srv = default_server().await;
    let (status, body) = refused(srv.addr, "/events?user=ana&encoding=msgpack", &[]).await;
    assert_eq!(
        (status, &body["code"]),
        (StatusCode::NOT_ACCEPTABLE, &json!("bad_encoding"))
    );
    let (status, body) = refused(srv.addr, "/events?user=ana&encoding=xml", &[]).await;
    assert_eq!(
        (status, &body["code"]),
        (StatusCode::BAD_REQUEST, &json!("bad_encoding"))
    );
    let s = open(srv.addr, "/events?user=ana&encoding=json", &[]).await;
    assert_eq!(s.status, StatusCode::OK);
    drop(s);
    let req = Request::delete(format!("http://{}/events", srv.addr))
        .header("host", srv.addr.to_string())
        .body(Full::default())
        .unwrap();
    let (status, headers, _, _conn) = send(srv.addr, req).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(headers["allow"], "GET, POST, OPTIONS");
}

#[tokio::test]
async fn cors_lets_allowed_origins_stream_and_post() {
    let srv = serve(hub_builder(), |hub| {
        SseService::new(hub).allow_origins(["http://dash.example"])
    })
    .await;
    let opts = |origin: &'static str| {
        Request::options(format!("http://{}/events", srv.addr))
            .header("host", srv.addr.to_string())
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "content-type, hub-session-token",
            )
            .body(Full::default())
            .unwrap()
    };
    let (status, h, _, _c) = send(srv.addr, opts("http://dash.example")).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(h["access-control-allow-origin"], "http://dash.example");
    assert_eq!(h["access-control-allow-credentials"], "true");
    assert!(h["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .contains("POST"));
    let allowed = h["access-control-allow-headers"].to_str().unwrap();
    assert!(allowed.contains("hub-session-token") && allowed.contains("content-type"));
    assert!(allowed.contains("hub-command-seq"), "{allowed}");
    let (status, h, _, _c) = send(srv.addr, opts("http://evil.example")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(h.get("access-control-allow-origin").is_none());

    let mut s = open(
        srv.addr,
        "/events?user=ana&topic=a",
        &[("origin", "http://dash.example")],
    )
    .await;
    assert_eq!(
        s.headers["access-control-allow-origin"],
        "http://dash.example"
    );
    let cmd = s.handshake().await;
    let (status, h, _) = post(
        srv.addr,
        &cmd.url,
        &[
            ("hub-session-token", &cmd.token),
            ("x-user", "ana"),
            ("origin", "http://dash.example"),
            ("hub-command-seq", "1"),
        ],
        r#"{"type":"ping","id":1}"#,
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(h["access-control-allow-origin"], "http://dash.example");
    // The page may read the numbering's answer headers.
    assert_eq!(h["hub-command-seq"], "1");
    let exposed = h["access-control-expose-headers"].to_str().unwrap();
    assert!(
        exposed.contains("hub-command-seq") && exposed.contains("hub-command-duplicate"),
        "{exposed}"
    );
    assert_eq!(s.next().await.event, "pong");
    // Another origin's page gets no CORS grant (its browser will not let it read).
    let other = open(
        srv.addr,
        "/events?user=ana",
        &[("origin", "http://evil.example")],
    )
    .await;
    assert!(other.headers.get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn heartbeats_are_comment_lines() {
    let srv = serve(
        hub_builder().heartbeat(Duration::from_millis(50), Duration::from_millis(100)),
        SseService::new,
    )
    .await;
    let mut s = open(srv.addr, "/events?user=ana&topic=a", &[]).await;
    s.handshake().await;
    let mut pings = 0;
    while pings < 3 {
        let block = s.next_block().await.unwrap();
        if block.data.is_empty() && block.comments == ["ping"] {
            pings += 1;
        }
    }
    // A one-way stream is not closed by the heartbeat timeout (100 ms, long past).
    srv.hub.publish("a", &json!("still here")).await.unwrap();
    assert_eq!(message("a", &s.next().await), (1, json!("still here")));
}

#[tokio::test]
async fn kicked_sessions_get_a_close_event_and_the_stream_ends() {
    let srv = default_server().await;
    let mut s = open(srv.addr, "/events?user=ana&topic=a", &[]).await;
    let cmd = s.handshake().await;
    srv.hub.publish("a", &json!("before")).await.unwrap();
    assert!(srv
        .hub
        .disconnect(livehub_core::SessionId::parse(&cmd.session).unwrap()));
    assert_eq!(message("a", &s.next().await), (1, json!("before")));
    let close = s.next().await;
    assert_eq!(close.event, "close");
    assert_eq!(
        close.json(),
        json!({"type":"close","code":1008,"reason":"kicked"})
    );
    assert!(s.next_block().await.is_none(), "the body ends after close");
}

/// Opens `path` as an event stream on an HTTP/2 connection (checked to be HTTP/2).
async fn open_h2(
    sender: &mut hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    addr: SocketAddr,
    path: &str,
) -> EventStream {
    let req = Request::get(format!("http://{addr}{path}"))
        .body(Full::<Bytes>::default())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    let (parts, body) = resp.into_parts();
    EventStream {
        status: parts.status,
        headers: parts.headers,
        body,
        buf: Vec::new(),
        conn: None,
    }
}

#[tokio::test]
async fn streams_over_http2_and_bare_hyper() {
    let (h, mut disconnects) = hooks();
    let hub = Hub::builder().hooks(h).build();
    let sse = SseService::new(hub.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = listener.accept().await.unwrap();
            let service = sse.clone().with_peer(peer);
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    let _conn = tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut s = open_h2(&mut sender, addr, "/events?topic=a&user=ana").await;
    assert_eq!(s.status, StatusCode::OK);
    let cmd = s.handshake().await;
    // A second stream on the same HTTP/2 connection sends a command to the first.
    let req = Request::post(format!("http://{addr}{}", cmd.url))
        .header("hub-session-token", &cmd.token)
        .header("x-user", "ana")
        .body(Full::new(Bytes::from(
            r#"{"type":"subscribe","topic":"b","id":1}"#,
        )))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    assert_eq!(s.expect("reply").await.json()["id"], 1);
    hub.publish("b", &json!("over h2")).await.unwrap();
    assert_eq!(message("b", &s.next().await), (1, json!("over h2")));
    // Resetting the stream (not the connection) ends the session.
    drop(s);
    wait_disconnects(&mut disconnects, 1).await;
    assert_eq!(hub.session_count(), 0);
    // The connection itself is still usable.
    let req = Request::get(format!("http://{addr}/events?topic=a&user=ana"))
        .body(Full::<Bytes>::default())
        .unwrap();
    assert_eq!(
        sender.send_request(req).await.unwrap().status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_command_subscribe_with_since_recovers_and_the_id_follows() {
    let srv = default_server().await;
    let pos = srv.hub.publish("e", &json!("e1")).await.unwrap();
    srv.hub.publish("e", &json!("e2")).await.unwrap();
    srv.hub.publish("e", &json!("e3")).await.unwrap();
    let mut s = open(srv.addr, "/events?user=ana", &[]).await;
    let cmd = s.handshake().await;
    let since = json!({"epoch": &*pos.epoch, "offset": 1});
    command(
        srv.addr,
        &cmd,
        "ana",
        json!({"type":"subscribe","topic":"e","since":since,"id":1}),
    )
    .await;
    // The reply's id resumes from `since` (not from the topic's end): had the connection
    // dropped right after it, e2 and e3 would still be recovered.
    let reply = s.next().await;
    assert_eq!(reply.event, "reply");
    assert_eq!(reply.id.as_deref(), Some(&*format!("e={}:1", pos.epoch)));
    let e2 = s.next().await;
    assert_eq!(message("e", &e2), (2, json!("e2")));
    assert_eq!(e2.id.as_deref(), Some(&*format!("e={}:2", pos.epoch)));
    assert_eq!(message("e", &s.next().await), (3, json!("e3")));
}

#[tokio::test]
async fn resume_reports_topics_it_cannot_follow_and_reads_the_query_fallback() {
    let srv = default_server().await;
    let pos = srv.hub.publish("a", &json!("a1")).await.unwrap();
    srv.hub.publish("a", &json!("a2")).await.unwrap();
    // An id naming a topic this user may not follow (say, permissions changed), passed the way
    // polyfills do, in the query.
    let id = format!("a={}:1&secret/x=0123456789abcdef:4", pos.epoch);
    let query: String = url_encode(&id);
    let mut s = open(
        srv.addr,
        &format!("/events?user=ana&lastEventId={query}"),
        &[],
    )
    .await;
    assert_eq!(s.status, StatusCode::OK);
    s.handshake().await;
    let r = s.next().await;
    assert_eq!(r.event, "resume");
    let r = r.json();
    assert_eq!(r["resumed"], true);
    assert_eq!(r["topics"], json!(["a"]));
    assert_eq!(r["failed"][0]["topic"], "secret/x");
    assert_eq!(r["failed"][0]["code"], "forbidden");
    assert_eq!(message("a", &s.next().await), (2, json!("a2")));
    // The header wins over the query.
    let header_id = format!("a={}:2", pos.epoch);
    let mut s = open(
        srv.addr,
        &format!("/events?user=ana&lastEventId={query}"),
        &[("last-event-id", &header_id)],
    )
    .await;
    s.handshake().await;
    assert_eq!(s.next().await.json()["failed"], json!([]));
    srv.hub.publish("a", &json!("a3")).await.unwrap();
    assert_eq!(message("a", &s.next().await), (3, json!("a3")));
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[tokio::test]
async fn a_stalled_reader_is_disconnected_as_a_slow_consumer() {
    let srv = serve(hub_builder().queue_capacity(8), SseService::new).await;
    let mut disconnects = srv.disconnects.clone();
    let mut s = open(srv.addr, "/events?user=ana&topic=big", &[]).await;
    let cmd = s.handshake().await;
    // The client stops reading; the server keeps publishing until the socket, hyper's buffer
    // and the session's bounded queue are full, and the hub lets go of the session.
    let blob = "x".repeat(16 * 1024);
    let mut published = 0;
    while disconnects.borrow().is_empty() {
        assert!(published < 20_000, "never disconnected");
        srv.hub.publish("big", &json!(blob)).await.unwrap();
        published += 1;
        // Let the server's writer drain the queue into the socket, as it would for a reader.
        tokio::task::yield_now().await;
    }
    // More than the queue holds went out before the stall: the socket's buffers filled first.
    assert!(published > 8 * 4, "disconnected after {published} messages");
    wait_disconnects(&mut disconnects, 1).await;
    assert_eq!(
        disconnects.borrow().clone(),
        vec![(cmd.session.clone(), DisconnectReason::SlowConsumer)]
    );
    assert!(srv.hub.topic_members("big").await.unwrap().is_empty());
    // Reading again, the client gets what was written, then a `close` saying why.
    loop {
        let ev = s.next().await;
        if ev.event == "close" {
            assert_eq!(ev.json()["reason"], "slow_consumer");
            break;
        }
        assert_eq!(ev.event, "message");
    }
    assert!(s.next_block().await.is_none());
}

#[tokio::test]
async fn a_stalled_http2_reader_is_disconnected_too_with_bounded_buffering() {
    let srv = serve(hub_builder().queue_capacity(8), SseService::new).await;
    let mut disconnects = srv.disconnects.clone();
    let tcp = TcpStream::connect(srv.addr).await.unwrap();
    // A 64 KiB stream window (browsers grant more: the bound below grows with it, no more).
    let (mut sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(64 * 1024)
        .adaptive_window(false)
        .handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    let _conn = tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut s = open_h2(&mut sender, srv.addr, "/events?user=ana&topic=big").await;
    let cmd = s.handshake().await;
    // The client stops reading this stream (its connection still runs): the stream's window
    // fills, then hyper's per-stream send buffer (400 KiB by default), then the session's
    // bounded queue, and the hub lets go of the session.
    let blob = "x".repeat(16 * 1024);
    let mut published = 0usize;
    while disconnects.borrow().is_empty() {
        assert!(published < 20_000, "never disconnected");
        srv.hub.publish("big", &json!(blob)).await.unwrap();
        published += 1;
        tokio::task::yield_now().await;
    }
    wait_disconnects(&mut disconnects, 1).await;
    assert_eq!(
        disconnects.borrow().clone(),
        vec![(cmd.session.clone(), DisconnectReason::SlowConsumer)]
    );
    // Bounded: what went out before the cut-off fits the window, hyper's buffer and the queue
    // (with room for one batch in flight), not the whole publish loop.
    let bound = 64 * 1024 + 400 * 1024 + 2 * 8 * (blob.len() + 128);
    assert!(
        published * blob.len() <= bound,
        "{published} messages of 16 KiB went out before the stall was noticed"
    );
    // And more than the queue holds: the stream took some before it stalled.
    assert!(published > 8, "disconnected after {published} messages");
    assert!(srv.hub.topic_members("big").await.unwrap().is_empty());
}

// ---------------------------------------------------------------------------------------------
// Binding commands to the stream's user, shutdown, slow consumers.

/// Credentials from a cookie, as a browser sends them: `sid=ana-cookie` (or the renewed
/// `ana-cookie-2`) is ana, `sid=bob-cookie` is bob; an expired or missing cookie is refused
/// with 401, any other with 403.
struct CookieHooks;

#[async_trait]
impl Hooks for CookieHooks {
    async fn authenticate(&self, req: &ConnectRequest) -> Result<Identity, Rejection> {
        match req.cookie("sid") {
            Some("ana-cookie" | "ana-cookie-2") => Ok(Identity::user("ana")),
            Some("bob-cookie") => Ok(Identity::user("bob")),
            Some("expired") => Err(Rejection::unauthorized("session cookie expired")),
            Some(_) => Err(Rejection::forbidden("unknown session cookie")),
            None => Err(Rejection::unauthorized("no session cookie")),
        }
    }
}

/// Serves `/events` for a hub built by the test.
async fn serve_hub(hub: &Hub) -> SocketAddr {
    let app = axum::Router::new().route_service("/events", SseService::new(hub.clone()));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

#[tokio::test]
async fn commands_must_come_from_the_user_whose_cookie_opened_the_stream() {
    let hub = Hub::builder()
        .hooks(CookieHooks)
        .allowed_origins(["http://app.example"])
        .build();
    let addr = serve_hub(&hub).await;
    let mut s = open(
        addr,
        "/events?topic=a",
        &[("cookie", "theme=dark; sid=ana-cookie")],
    )
    .await;
    assert_eq!(s.status, StatusCode::OK);
    let cmd = s.handshake().await;
    let token = ("hub-session-token", cmd.token.as_str());

    // Ana's token with Bob's cookie, with cookies the hook refuses, with none, or with Ana's
    // cookie from a page of an origin the hub does not allow: refused, whatever the command.
    let sub = json!({"type":"subscribe","topic":"b","id":1}).to_string();
    for (headers, status, code) in [
        (vec![token, ("cookie", "sid=bob-cookie")], 403, "forbidden"),
        (vec![token, ("cookie", "sid=forged")], 403, "forbidden"),
        (vec![token, ("cookie", "sid=expired")], 401, "unauthorized"),
        (vec![token], 401, "unauthorized"),
        (
            vec![
                token,
                ("cookie", "sid=ana-cookie"),
                ("origin", "http://evil.example"),
            ],
            403,
            "origin_not_allowed",
        ),
    ] {
        let (st, _, body) = post(addr, &cmd.url, &headers, sub.clone()).await;
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            (st.as_u16(), v["code"].as_str().unwrap()),
            (status, code),
            "{headers:?}"
        );
    }

    // The owner: the cookie that opened the stream, the same request again (a replay is the
    // owner's, as far as the server can tell), and a renewed cookie of the same user.
    let ping = json!({"type":"ping","id":2}).to_string();
    for cookie in ["sid=ana-cookie", "sid=ana-cookie", "sid=ana-cookie-2"] {
        let (st, _, body) = post(addr, &cmd.url, &[token, ("cookie", cookie)], ping.clone()).await;
        assert_eq!(st, StatusCode::ACCEPTED, "{cookie}: {body}");
    }
    // Nothing refused reached the session: three pongs and no answer to `subscribe b`, which
    // is not followed.
    for _ in 0..3 {
        let ev = s.next().await;
        assert_eq!(
            (ev.event.as_str(), ev.json()["id"].as_u64()),
            ("pong", Some(2))
        );
    }
    hub.publish("b", &json!("not followed")).await.unwrap();
    hub.publish("a", &json!("marker")).await.unwrap();
    assert_eq!(message("a", &s.next().await), (1, json!("marker")));
    assert!(hub.topic_members("b").await.unwrap().is_empty());
}

#[tokio::test]
async fn shutdown_ends_a_stream_after_its_queued_events_with_a_close_event() {
    let srv = default_server().await;
    let mut disconnects = srv.disconnects.clone();
    let mut s = open(srv.addr, "/events?user=ana&topic=a", &[]).await;
    let cmd = s.handshake().await;
    // Queued (or on their way) when the shutdown begins: they still arrive, before the close.
    for n in 1..=3 {
        srv.hub.publish("a", &json!(n)).await.unwrap();
    }
    let hub = srv.hub.clone();
    let shutdown = tokio::spawn(async move { hub.shutdown(Duration::from_secs(20)).await });
    for n in 1..=3u64 {
        assert_eq!(message("a", &s.next().await), (n, json!(n)));
    }
    let close = s.next().await;
    assert_eq!(close.event, "close");
    // With the hub's reconnection hint, also as the `retry:` that EventSource obeys.
    let hint = close.json()["retry_ms"].as_u64().unwrap_or(0);
    assert!((1..=5000).contains(&hint), "{:?}", close.json());
    assert_eq!(close.retry, Some(hint));
    assert_eq!(
        close.json(),
        json!({"type":"close","code":1001,"reason":"shutdown","retry_ms":hint})
    );
    assert!(s.next_block().await.is_none(), "the body ends after close");

    // The transport let go of the session when its stream ended: nothing had to be forced.
    let report = tokio::time::timeout(Duration::from_secs(30), shutdown)
        .await
        .expect("shutdown never completed")
        .unwrap();
    assert_eq!((report.sessions, report.forced), (1, 0));
    wait_disconnects(&mut disconnects, 1).await;
    assert_eq!(
        disconnects.borrow().clone(),
        vec![(cmd.session.clone(), DisconnectReason::Shutdown)]
    );
    // New streams are refused; the old stream's command URL leads nowhere.
    let (status, body) = refused(srv.addr, "/events?user=ana&topic=a", &[]).await;
    assert_eq!(
        (status, &body["code"]),
        (StatusCode::SERVICE_UNAVAILABLE, &json!("shutting_down"))
    );
    let (status, _, _) = post(
        srv.addr,
        &cmd.url,
        &[("hub-session-token", &cmd.token), ("x-user", "ana")],
        r#"{"type":"ping"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// A listener whose connections have small kernel send buffers (accepted sockets inherit it),
/// so that a client that stops reading stalls the server's writes after a few KiB.
fn small_buffer_listener() -> TcpListener {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_send_buffer_size(8 * 1024).unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    socket.listen(128).unwrap()
}

/// A client connection with a small kernel receive buffer.
async fn small_buffer_connection(addr: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(8 * 1024).unwrap();
    socket.connect(addr).await.unwrap()
}

#[tokio::test]
async fn a_stalled_reader_is_cut_off_while_an_active_one_gets_every_message_in_order() {
    const TOTAL: u64 = 20_000;
    /// How far the publisher may run ahead of the active reader: less than the queue holds,
    /// so that the active reader never overflows, whatever the scheduling.
    const WINDOW: u64 = 48;
    let srv = serve_on(
        small_buffer_listener(),
        hub_builder().queue_capacity(64),
        SseService::new,
    )
    .await;
    let mut disconnects = srv.disconnects.clone();
    let mut active = open(srv.addr, "/events?user=ana&topic=load", &[]).await;
    active.handshake().await;
    let tcp = small_buffer_connection(srv.addr).await;
    let mut stalled = open_on(tcp, srv.addr, "/events?user=bob&topic=load", &[]).await;
    // Bob reads his handshake, then stops reading (without closing).
    let bob = stalled.handshake().await;

    let (progress_tx, mut progress) = watch::channel(0u64);
    let mut reader = tokio::spawn(async move {
        for n in 1..=TOTAL {
            let (offset, data) = message("load", &active.next().await);
            assert_eq!(
                (offset, &data["n"]),
                (n, &json!(n)),
                "in order, none missing"
            );
            progress_tx.send_replace(n);
        }
        active
    });
    let pad = "x".repeat(200);
    for n in 1..=TOTAL {
        while n > *progress.borrow() + WINDOW {
            let changed = tokio::time::timeout(WAIT, progress.changed())
                .await
                .expect("the active reader made no progress");
            if changed.is_err() {
                panic!("the active reader failed: {:?}", (&mut reader).await.err());
            }
        }
        srv.hub
            .publish("load", &json!({"n": n, "pad": pad}))
            .await
            .unwrap();
    }
    let mut active = tokio::time::timeout(WAIT, reader).await.unwrap().unwrap();

    // Bob's session was ended as a slow consumer, alone; Ana's goes on.
    wait_disconnects(&mut disconnects, 1).await;
    assert_eq!(
        disconnects.borrow().clone(),
        vec![(bob.session.clone(), DisconnectReason::SlowConsumer)]
    );
    assert_eq!(srv.hub.stats().disconnects.get("slow_consumer"), Some(&1));
    assert_eq!(srv.hub.topic_members("load").await.unwrap().len(), 1);

    // The transport let go of Bob's session when the hub aborted it, although hyper, stuck on
    // his socket, still holds his stream: a shutdown now waits for Ana only, who reads on.
    let hub = srv.hub.clone();
    let shutdown = tokio::spawn(async move { hub.shutdown(Duration::from_secs(20)).await });
    assert_eq!(active.expect("close").await.json()["reason"], "shutdown");
    let report = tokio::time::timeout(Duration::from_secs(30), shutdown)
        .await
        .expect("shutdown never completed")
        .unwrap();
    assert_eq!((report.sessions, report.forced), (1, 0));

    // What the server still held for Bob is bounded by its buffers (the session's queue,
    // hyper's write buffer of at most 16 chunks / ~400 KiB, the sockets' few KiB), not by what
    // was published (20,000 events of ~330 bytes): reading again, Bob gets a prefix of the
    // stream, then `close` with the reason, then the end.
    let (mut got, mut bytes, mut closed) = (0u64, 0usize, false);
    for _ in 0..=TOTAL {
        let ev = stalled.next().await;
        if ev.event == "close" {
            assert_eq!(
                ev.json(),
                json!({"type":"close","code":1008,"reason":"slow_consumer"})
            );
            closed = true;
            break;
        }
        got += 1;
        bytes += ev.data.len();
        assert_eq!(message("load", &ev).0, got, "a prefix, in order");
    }
    assert!(closed, "no close event");
    assert!(
        stalled.next_block().await.is_none(),
        "the body ends after close"
    );
    assert!(
        bytes < 1024 * 1024 && got < TOTAL / 4,
        "held {got} events ({bytes} bytes) for a stalled reader"
    );
}

// ---------------------------------------------------------------------------------------------
// Numbered commands: a replay is refused, a retry is answered again without running twice.

/// POSTs `frame` as ana, with the stream's token, numbered by `seq` (a `Hub-Command-Seq`
/// header) unless it is `None`. Returns status, headers and the JSON body (`null` if empty).
async fn numbered(
    addr: SocketAddr,
    cmd: &Cmd,
    seq: Option<&str>,
    frame: &Value,
) -> (StatusCode, HeaderMap, Value) {
    let mut headers = vec![("hub-session-token", cmd.token.as_str()), ("x-user", "ana")];
    if let Some(seq) = seq {
        headers.push(("hub-command-seq", seq));
    }
    let (status, headers, body) = post(addr, &cmd.url, &headers, frame.to_string()).await;
    let body = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&body).unwrap()
    };
    (status, headers, body)
}

/// Asserts a 409 `bad_seq` that expects `expected` next.
#[track_caller]
fn assert_bad_seq(answer: &(StatusCode, HeaderMap, Value), expected: u64) {
    let (status, headers, body) = answer;
    assert_eq!(*status, StatusCode::CONFLICT, "{body}");
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(body["code"], "bad_seq", "{body}");
    assert_eq!(body["expected"], expected, "{body}");
    assert!(body["message"]
        .as_str()
        .unwrap()
        .contains(&expected.to_string()));
    assert!(headers.get("hub-command-duplicate").is_none());
}

#[tokio::test]
async fn a_numbered_publish_runs_once_however_often_it_is_replayed() {
    let srv = default_server().await;
    // Ana sends; Bob only listens.
    let mut ana = open(srv.addr, "/events?user=ana&topic=chat/x", &[]).await;
    let cmd = ana.handshake().await;
    let mut bob = open(srv.addr, "/events?user=bob&topic=chat/x", &[]).await;
    bob.handshake().await;
    let publish = |n: u64| json!({"type":"publish","topic":"chat/x","data":n,"id":n});

    // Command 1 runs: 202, numbered, not a duplicate.
    let (status, h, body) = numbered(srv.addr, &cmd, Some("1"), &publish(1)).await;
    assert_eq!((status, body), (StatusCode::ACCEPTED, Value::Null));
    assert_eq!(h["hub-command-seq"], "1");
    assert!(h.get("hub-command-duplicate").is_none());
    // The same request again (a retry after a lost answer, or a replay): the same answer,
    // marked as a duplicate, and it does not run again.
    for _ in 0..2 {
        let (status, h, body) = numbered(srv.addr, &cmd, Some("1"), &publish(1)).await;
        assert_eq!((status, body), (StatusCode::ACCEPTED, Value::Null));
        assert_eq!(h["hub-command-seq"], "1");
        assert_eq!(h["hub-command-duplicate"], "1");
    }
    // Command 2 runs.
    let (status, h, _) = numbered(srv.addr, &cmd, Some("2"), &publish(2)).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert!(h.get("hub-command-duplicate").is_none());
    // Replays of older commands, skips, malformed numbers, a number reused for another
    // command, and no number at all on a stream that numbers its commands: 409, nothing runs.
    assert_bad_seq(&numbered(srv.addr, &cmd, Some("1"), &publish(1)).await, 3);
    assert_bad_seq(&numbered(srv.addr, &cmd, Some("4"), &publish(4)).await, 3);
    for bad in ["0", "-1", "abc", "3.0", "99999999999999999999", ""] {
        assert_bad_seq(&numbered(srv.addr, &cmd, Some(bad), &publish(3)).await, 3);
    }
    assert_bad_seq(&numbered(srv.addr, &cmd, Some("2"), &publish(9)).await, 3);
    assert_bad_seq(&numbered(srv.addr, &cmd, None, &publish(9)).await, 3);
    // The query parameter numbers a command too (for clients that cannot set headers), and
    // must agree with the header when both are given.
    let url = format!("{}&seq=3", cmd.url);
    let auth = [("hub-session-token", cmd.token.as_str()), ("x-user", "ana")];
    let (status, _, body) = post(
        srv.addr,
        &url,
        &[auth[0], auth[1], ("hub-command-seq", "4")],
        publish(3).to_string(),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let (status, h, _) = post(srv.addr, &url, &auth, publish(3).to_string()).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(h["hub-command-seq"], "3");

    // Exactly three publishes ran: Bob got each once, in order, then the marker.
    srv.hub.publish("chat/x", &json!("marker")).await.unwrap();
    for (offset, data) in [
        (1, json!(1)),
        (2, json!(2)),
        (3, json!(3)),
        (4, json!("marker")),
    ] {
        assert_eq!(message("chat/x", &bob.next().await), (offset, data));
    }
    assert_eq!(srv.hub.stats().published, 4);
    // Ana, subscribed too, got each message and one reply per command that ran, and nothing
    // for the refused or repeated requests.
    let mut seen = Vec::new();
    loop {
        let ev = ana.next().await;
        let v = ev.json();
        match ev.event.as_str() {
            "message" => seen.push(format!("message {}", v["data"])),
            other => seen.push(format!("{other} {}", v["id"])),
        }
        if v["data"] == "marker" {
            break;
        }
    }
    assert_eq!(
        seen,
        [
            "message 1",
            "reply 1",
            "message 2",
            "reply 2",
            "message 3",
            "reply 3",
            "message \"marker\""
        ]
    );
}

#[tokio::test]
async fn unnumbered_commands_work_until_a_stream_numbers_one_or_the_server_requires_it() {
    // By default: a stream that never numbered a command runs unnumbered ones (older clients),
    // the same request twice included: it cannot tell a replay from a repeat.
    let srv = default_server().await;
    let mut s = open(srv.addr, "/events?user=ana", &[]).await;
    let cmd = s.handshake().await;
    let ping = json!({"type":"ping","id":1});
    for _ in 0..2 {
        let (status, h, _) = numbered(srv.addr, &cmd, None, &ping).await;
        assert_eq!(status, StatusCode::ACCEPTED);
        assert!(h.get("hub-command-seq").is_none());
    }
    for _ in 0..2 {
        assert_eq!(s.next().await.json(), json!({"type":"pong","id":1}));
    }
    // Numbering starts at 1, whatever ran before; from then on a number is required.
    assert_bad_seq(&numbered(srv.addr, &cmd, Some("3"), &ping).await, 1);
    let (status, _, _) = numbered(srv.addr, &cmd, Some("1"), &ping).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_bad_seq(&numbered(srv.addr, &cmd, None, &ping).await, 2);
    // Each stream numbers on its own: another stream of the same user starts at 1 and may
    // still go unnumbered.
    let mut t = open(srv.addr, "/events?user=ana", &[]).await;
    let other = t.handshake().await;
    let (status, _, _) = numbered(srv.addr, &other, None, &json!({"type":"ping","id":7})).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(t.next().await.json(), json!({"type":"pong","id":7}));
    // The first stream got exactly one more pong (command 1).
    let (status, _, _) = numbered(srv.addr, &cmd, Some("2"), &json!({"type":"ping","id":2})).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(s.next().await.json(), json!({"type":"pong","id":1}));
    assert_eq!(s.next().await.json(), json!({"type":"pong","id":2}));

    // A server that requires numbers refuses unnumbered commands on every stream.
    let strict = serve(hub_builder(), |hub| {
        SseService::new(hub).require_command_seq(true)
    })
    .await;
    let mut s = open(strict.addr, "/events?user=ana", &[]).await;
    let cmd = s.handshake().await;
    assert_bad_seq(&numbered(strict.addr, &cmd, None, &ping).await, 1);
    let (status, _, _) = numbered(strict.addr, &cmd, Some("1"), &ping).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(s.next().await.json(), json!({"type":"pong","id":1}));
}

#[tokio::test]
async fn a_command_whose_client_gave_up_runs_once_and_its_retry_gets_the_answer() {
    // `slow` events wait until the test lets them finish; runs are counted.
    let (entered_tx, mut entered) = watch::channel(0u32);
    let release = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    let gate = release.clone();
    let builder = hub_builder().on_event("slow", move |_ctx, data: Payload| {
        let (entered, gate) = (entered_tx.clone(), gate.clone());
        async move {
            entered.send_modify(|n| *n += 1);
            let _permit = gate.acquire().await;
            Ok(Some(data))
        }
    });
    let srv = serve(builder, SseService::new).await;
    let mut s = open(srv.addr, "/events?user=ana", &[]).await;
    let cmd = s.handshake().await;
    let frame = json!({"type":"event","event":"slow","data":"once","id":1});

    // The first try starts running; then its client gives up (the connection closes).
    let (addr, first_cmd, first_frame) = (srv.addr, cmd.clone(), frame.clone());
    let first =
        tokio::spawn(async move { numbered(addr, &first_cmd, Some("1"), &first_frame).await });
    tokio::time::timeout(WAIT, entered.wait_for(|n| *n == 1))
        .await
        .expect("the command never ran")
        .unwrap();
    first.abort();
    let _ = first.await;
    // The retry waits for the run (or finds it done), and gets its answer, as a duplicate.
    let (addr, retry_cmd, retry_frame) = (srv.addr, cmd.clone(), frame.clone());
    let retry =
        tokio::spawn(async move { numbered(addr, &retry_cmd, Some("1"), &retry_frame).await });
    release.add_permits(1);
    let (status, h, _) = tokio::time::timeout(WAIT, retry).await.unwrap().unwrap();
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(h["hub-command-duplicate"], "1");
    // It ran once: one reply, then the next command's answer right after it.
    let (status, _, _) = numbered(srv.addr, &cmd, Some("2"), &json!({"type":"ping","id":2})).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(
        s.next().await.json(),
        json!({"type":"reply","id":1,"data":"once"})
    );
    assert_eq!(s.next().await.json(), json!({"type":"pong","id":2}));
    assert_eq!(*entered.borrow(), 1);
}

/// The `data` part of the hub's frame as the stream shows it: the JSON text of a published
/// payload, its raw line breaks each ending a `data:` line (which the parser joins with `\n`).
fn shown(raw_data: &str) -> String {
    raw_data.replace("\r\n", "\n").replace('\r', "\n")
}

#[tokio::test]
async fn payloads_with_raw_line_breaks_and_long_ones_reach_every_stream_whole_with_ids() {
    let srv = default_server().await;
    let mut s1 = open(srv.addr, "/events?user=ana&topic=chat/a&topic=b", &[]).await;
    s1.handshake().await;
    let mut s2 = open(srv.addr, "/events?user=cy&topic=chat/a", &[]).await;
    s2.handshake().await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws?user=bob", srv.addr))
        .await
        .unwrap();

    // Published as text with JSON whitespace kept as it came: CRLF, CR and LF line breaks,
    // short and long (past the size from which a frame is sent without copying), and a long
    // one without line breaks; then a topic-`b` message and a short compact one.
    let long_text = "x".repeat(10_000);
    let datas = [
        "{\r\n  \"text\": \"hi\",\n  \"n\": [1,\r2]\n}".to_owned(),
        format!("{{\n\"long\": \"{long_text}\",\r\n\"n\": 2\r}}"),
        format!("{{\"long\":\"{long_text}\",\"n\":3}}"),
    ];
    for data in &datas {
        ws.send(Message::text(format!(
            "{{\"type\":\"publish\",\"topic\":\"chat/a\",\"data\":{data}}}"
        )))
        .await
        .unwrap();
    }
    // s1 follows `b` from the start (its id names it at offset 0 until a message comes).
    for (s, also) in [(&mut s1, Some("b")), (&mut s2, None)] {
        for (i, data) in datas.iter().enumerate() {
            let ev = s.next().await;
            let (offset, value) = message("chat/a", &ev);
            assert_eq!(offset, i as u64 + 1);
            assert_eq!(value, serde_json::from_str::<Value>(data).unwrap());
            assert!(
                ev.data.contains(&shown(data)),
                "the payload's text is kept: {:?}",
                ev.data
            );
            let epoch = ev.json()["epoch"].as_str().unwrap().to_owned();
            let b = also.map(|t| format!("{t}={epoch}:0&")).unwrap_or_default();
            assert_eq!(ev.id, Some(format!("{b}chat/a={epoch}:{offset}")));
        }
    }
    srv.hub.publish("b", &json!({"n": 4})).await.unwrap();
    srv.hub.publish("chat/a", &json!({"n": 5})).await.unwrap();
    let b = s1.next().await;
    let epoch_b = b.json()["epoch"].as_str().unwrap().to_owned();
    let a = s1.next().await;
    assert_eq!(message("chat/a", &a), (4, json!({"n": 5})));
    let epoch_a = a.json()["epoch"].as_str().unwrap().to_owned();
    // Sorted by topic, every topic's position.
    assert_eq!(b.id, Some(format!("b={epoch_b}:1&chat/a={epoch_a}:3")));
    assert_eq!(a.id, Some(format!("b={epoch_b}:1&chat/a={epoch_a}:4")));
    let a2 = s2.next().await;
    assert_eq!(a2.data, a.data);
    assert_eq!(a2.id, Some(format!("chat/a={epoch_a}:4")));
}

#[tokio::test]
async fn ids_escape_awkward_topic_names_and_resume_from_them() {
    let srv = default_server().await;
    // `:` and `=` are allowed in topic names and escaped in ids.
    let topics = ["x=y", "a:b", "k.v@h/1"];
    let query: String = topics
        .iter()
        .map(|t| format!("&topic={}", url_encode(t)))
        .collect();
    let mut s = open(srv.addr, &format!("/events?user=ana{query}"), &[]).await;
    s.handshake().await;
    for (i, t) in topics.iter().enumerate() {
        srv.hub.publish(t, &json!({ "i": i })).await.unwrap();
    }
    let mut epochs = Vec::new();
    let mut last = Ev::default();
    for t in topics {
        last = s.next().await;
        assert_eq!(message(t, &last).0, 1);
        epochs.push(last.json()["epoch"].as_str().unwrap().to_owned());
    }
    let id = last.id.clone().unwrap();
    assert_eq!(
        id,
        format!(
            "a%3Ab={}:1&k.v@h/1={}:1&x%3Dy={}:1",
            epochs[1], epochs[2], epochs[0]
        )
    );
    // The id resumes all three: one more message on each arrives, and nothing before.
    drop(s);
    for t in topics {
        srv.hub.publish(t, &json!("again")).await.unwrap();
    }
    let mut s = open(srv.addr, "/events?user=ana", &[("last-event-id", &id)]).await;
    s.handshake().await;
    let resume = s.expect("resume").await;
    assert_eq!(resume.json()["resumed"], true);
    let mut got: Vec<(String, u64)> = Vec::new();
    for _ in topics {
        let ev = s.next().await;
        let m = ev.json();
        got.push((
            m["topic"].as_str().unwrap().to_owned(),
            m["offset"].as_u64().unwrap(),
        ));
    }
    got.sort();
    let mut want: Vec<(String, u64)> = topics.iter().map(|t| ((*t).to_owned(), 2)).collect();
    want.sort();
    assert_eq!(got, want);
}
