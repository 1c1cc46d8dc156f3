//! livehub-poll over real loopback sockets, with a real HTTP client (hyper's http1 client).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use livehub_core::{
    async_trait, Action, Codec, ConnectRequest, Connection, Hooks, Hub, Identity, Outgoing,
    Payload, Rejection, TransportInfo,
};
use livehub_poll::PollService;
use livehub_sse::SseService;
use livehub_ws::WsService;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{timeout, Instant};
use tokio_tungstenite::tungstenite::Message;

/// Safety net for anything awaited in these tests.
const LIMIT: Duration = Duration::from_secs(20);

/// Serves `/poll` (livehub-poll) and `/ws` (livehub-ws) on a fresh loopback port.
async fn serve(hub: &Hub, poll: &PollService) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (hub, poll) = (hub.clone(), poll.clone());
    tokio::spawn(async move {
        loop {
            let Ok((tcp, peer)) = listener.accept().await else {
                return;
            };
            let poll = poll.clone().with_peer(peer);
            let ws = WsService::new(hub.clone()).with_peer(peer);
            let sse = SseService::new(hub.clone()).with_peer(peer);
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                use hyper::service::Service;
                match req.uri().path() {
                    "/ws" => boxed(ws.call(req)),
                    "/sse" => boxed(sse.call(req)),
                    _ => boxed(poll.call(req)),
                }
            });
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    addr
}

type AnyBody = http_body_util::combinators::UnsyncBoxBody<Bytes, std::convert::Infallible>;
type AnyFuture = std::pin::Pin<
    Box<
        dyn std::future::Future<Output = Result<http::Response<AnyBody>, std::convert::Infallible>>
            + Send,
    >,
>;

/// One response type for the three services.
fn boxed<F, B>(f: F) -> AnyFuture
where
    F: std::future::Future<Output = Result<http::Response<B>, std::convert::Infallible>>
        + Send
        + 'static,
    B: hyper::body::Body<Data = Bytes, Error = std::convert::Infallible> + Send + 'static,
{
    Box::pin(async move { f.await.map(|r| r.map(BodyExt::boxed_unsync)) })
}

struct Resp {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    /// The error code of a refusal.
    fn code(&self) -> String {
        self.json()["code"].as_str().unwrap_or_default().to_owned()
    }
}

/// One HTTP/1.1 request on its own connection.
async fn http(
    addr: SocketAddr,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Resp {
    let body = body.into();
    let fut = async {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .unwrap();
        tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header("host", addr.to_string());
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = sender
            .send_request(req.body(Full::new(body)).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        Resp {
            status,
            headers,
            body,
        }
    };
    timeout(LIMIT, fut).await.expect("request timed out")
}

/// A long-polling client, as a browser's page would be.
struct Client {
    addr: SocketAddr,
    session: String,
    cursor: String,
    codec: Codec,
    /// The credentials it opened with (`Authorization`, `Cookie`), sent with every request.
    creds: Vec<(String, String)>,
}

/// A poll response, decoded.
struct Batch {
    status: StatusCode,
    cursor: String,
    frames: Vec<Value>,
    body_len: usize,
    raw: Bytes,
}

impl Client {
    async fn open(addr: SocketAddr, query: &str, headers: &[(&str, &str)]) -> Client {
        let resp = http(addr, "POST", &format!("/poll{query}"), headers, "").await;
        assert_eq!(resp.status, StatusCode::OK, "{:?}", resp.body);
        let msgpack = resp.headers["content-type"] == "application/msgpack";
        let v: Value = if msgpack {
            rmp_serde::from_slice(&resp.body).unwrap()
        } else {
            resp.json()
        };
        assert_eq!(v["cursor"], "0");
        let creds = headers
            .iter()
            .filter(|(k, _)| {
                k.eq_ignore_ascii_case("authorization") || k.eq_ignore_ascii_case("cookie")
            })
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Client {
            addr,
            session: v["session"].as_str().unwrap().to_owned(),
            cursor: "0".into(),
            codec: if msgpack { Codec::MsgPack } else { Codec::Json },
            creds,
        }
    }

    fn headers(&self) -> Vec<(&str, &str)> {
        self.creds
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }

    /// Sends one command frame; returns the status.
    async fn send(&self, frame: Value) -> Resp {
        let body = match self.codec {
            Codec::Json => Bytes::from(frame.to_string()),
            Codec::MsgPack => Bytes::from(rmp_serde::to_vec_named(&frame).unwrap()),
        };
        let uri = format!("/poll?session={}", self.session);
        http(self.addr, "POST", &uri, &self.headers(), body).await
    }

    /// Sends one command frame numbered `seq` (a `Hub-Command-Seq` header), or unnumbered.
    async fn send_numbered(&self, frame: &Value, seq: Option<&str>) -> Resp {
        let uri = format!("/poll?session={}", self.session);
        let mut headers = self.headers();
        if let Some(seq) = seq {
            headers.push(("hub-command-seq", seq));
        }
        http(self.addr, "POST", &uri, &headers, frame.to_string()).await
    }

    /// Polls with an explicit cursor, without moving this client's cursor.
    async fn poll_at(&self, cursor: &str, wait_ms: u64) -> Batch {
        let uri = format!(
            "/poll?session={}&cursor={cursor}&wait={wait_ms}",
            self.session
        );
        let resp = http(self.addr, "GET", &uri, &self.headers(), "").await;
        if resp.status != StatusCode::OK {
            return Batch {
                status: resp.status,
                cursor: String::new(),
                frames: vec![],
                body_len: resp.body.len(),
                raw: resp.body,
            };
        }
        let v: Value = match self.codec {
            Codec::Json => resp.json(),
            Codec::MsgPack => {
                assert_eq!(resp.headers["content-type"], "application/msgpack");
                rmp_serde::from_slice(&resp.body).unwrap()
            }
        };
        Batch {
            status: resp.status,
            cursor: v["cursor"].as_str().unwrap().to_owned(),
            frames: v["frames"].as_array().unwrap().clone(),
            body_len: resp.body.len(),
            raw: resp.body,
        }
    }

    /// Polls and moves on to the next cursor.
    async fn poll(&mut self, wait_ms: u64) -> Vec<Value> {
        let b = self.poll_at(&self.cursor.clone(), wait_ms).await;
        assert_eq!(b.status, StatusCode::OK, "{:?}", b.raw);
        self.cursor = b.cursor;
        b.frames
    }

    /// Polls until a frame matching `pred` arrives; returns every frame seen up to it.
    async fn poll_until(&mut self, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + LIMIT;
        let mut seen = Vec::new();
        while Instant::now() < deadline {
            let frames = self.poll(2000).await;
            let done = frames.iter().any(&pred);
            seen.extend(frames);
            if done {
                return seen;
            }
        }
        panic!("no matching frame within {LIMIT:?}; saw {seen:?}");
    }

    /// Sends a command with `id` and polls until its answer; returns the answer.
    async fn request(&mut self, mut frame: Value, id: u64) -> Value {
        frame["id"] = json!(id);
        let r = self.send(frame).await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);
        let frames = self.poll_until(|f| f["id"] == json!(id)).await;
        frames.into_iter().find(|f| f["id"] == json!(id)).unwrap()
    }

    /// The public session id (what presence shows).
    fn public_id(&self) -> String {
        self.session.split('.').next().unwrap().to_owned()
    }
}

fn messages(frames: &[Value], topic: &str) -> Vec<(u64, Value)> {
    frames
        .iter()
        .filter(|f| f["type"] == "message" && f["topic"] == topic)
        .map(|f| (f["offset"].as_u64().unwrap(), f["data"].clone()))
        .collect()
}

/// Waits (bounded) for a condition that the server makes true on its own schedule.
async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + LIMIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// An in-process observer that never times out (for presence events).
async fn observer(hub: &Hub) -> Connection {
    let t = TransportInfo {
        name: "observer",
        pings: false,
        client_liveness: false,
    };
    hub.connect(ConnectRequest::new(t, Codec::Json))
        .await
        .unwrap()
}

/// The observer's next frames (at least one), as JSON.
async fn observe(conn: &mut Connection) -> Vec<Value> {
    let mut out = Vec::new();
    timeout(LIMIT, conn.outbox.next_batch(&mut out))
        .await
        .expect("observer got nothing");
    out.into_iter()
        .filter_map(|o| match o {
            Outgoing::Frame(b) => Some(serde_json::from_slice(b.bytes()).unwrap()),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuous_stream_arrives_exactly_once_in_order_despite_lost_responses() {
    const N: u64 = 2000;
    let hub = Hub::builder().queue_capacity(4096).history_len(10).build();
    let poll = PollService::new(hub.clone()).batch_limit(64, 64 * 1024);
    let addr = serve(&hub, &poll).await;
    let mut c = Client::open(addr, "", &[]).await;
    let reply = c
        .request(json!({"type": "subscribe", "topic": "scores/all"}), 1)
        .await;
    assert_eq!(reply["type"], "reply");

    let publisher = tokio::spawn({
        let hub = hub.clone();
        async move {
            for n in 1..=N {
                hub.publish("scores/all", &json!({"n": n})).await.unwrap();
                if n % 8 == 0 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        }
    });

    let deadline = Instant::now() + LIMIT;
    let mut got: Vec<(u64, Value)> = Vec::new();
    let mut polls = 0u32;
    let mut lost = 0u32;
    let mut multi = 0u32;
    while (got.len() as u64) < N {
        assert!(
            Instant::now() < deadline,
            "only {} of {N} arrived",
            got.len()
        );
        polls += 1;
        let first = c.poll_at(&c.cursor.clone(), 2000).await;
        assert_eq!(first.status, StatusCode::OK);
        let batch = if polls % 3 == 0 && !first.frames.is_empty() {
            // This response "is lost": ask again with the same cursor. The same frames come
            // back, first and in the same order (newer ones may follow).
            lost += 1;
            let again = c.poll_at(&c.cursor.clone(), 2000).await;
            assert!(again.frames.len() >= first.frames.len());
            assert_eq!(&again.frames[..first.frames.len()], &first.frames[..]);
            again
        } else {
            first
        };
        if batch.frames.len() > 1 {
            multi += 1;
        }
        assert!(batch.frames.len() <= 64, "batch over the frame cap");
        c.cursor = batch.cursor;
        got.extend(messages(&batch.frames, "scores/all"));
    }
    timeout(LIMIT, publisher).await.unwrap().unwrap();
    // Nothing more is pending.
    let rest = c.poll(0).await;
    assert!(rest.is_empty(), "extra frames: {rest:?}");
    let offsets: Vec<u64> = got.iter().map(|(o, _)| *o).collect();
    assert_eq!(offsets, (1..=N).collect::<Vec<_>>());
    for (o, data) in &got {
        assert_eq!(data["n"], json!(o));
    }
    assert!(lost > 0, "no response was lost");
    assert!(multi > 0, "never more than one frame per response");
}

#[tokio::test]
async fn repeated_poll_after_a_dropped_response_returns_the_same_batch() {
    let hub = Hub::builder().build();
    let poll = PollService::new(hub.clone());
    let addr = serve(&hub, &poll).await;
    let mut c = Client::open(addr, "", &[]).await;
    c.request(json!({"type": "subscribe", "topic": "scores/m1"}), 1)
        .await;
    for n in 1..=5 {
        hub.publish("scores/m1", &json!({"n": n})).await.unwrap();
    }
    let cursor = c.cursor.clone();
    let first = c.poll_at(&cursor, 2000).await;
    assert_eq!(messages(&first.frames, "scores/m1").len(), 5);
    // Same cursor: byte-for-byte the same answer.
    let again = c.poll_at(&cursor, 2000).await;
    assert_eq!(again.raw, first.raw);

    // Really lost: the client sends the poll and hangs up without reading the answer.
    hub.publish("scores/m1", &json!({"n": 6})).await.unwrap();
    let uri = format!("/poll?session={}&cursor={}", c.session, first.cursor);
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {uri} HTTP/1.1\r\nhost: {addr}\r\n\r\n");
    tcp.write_all(req.as_bytes()).await.unwrap();
    drop(tcp);
    // The server answered (or not) into the void; the client asks again, same cursor.
    let retry = c.poll_at(&first.cursor, 2000).await;
    let got = messages(&retry.frames, "scores/m1");
    assert_eq!(got, vec![(6, json!({"n": 6}))]);
    c.cursor = retry.cursor;
    // Acknowledged: nothing comes twice.
    let empty = c.poll_at(&c.cursor.clone(), 0).await;
    assert!(empty.frames.is_empty());
    assert_eq!(empty.cursor, c.cursor);
}

#[tokio::test]
async fn a_long_poll_answers_on_publish_or_empty_after_the_wait() {
    let hub = Hub::builder().build();
    let poll = PollService::new(hub.clone());
    let addr = serve(&hub, &poll).await;
    let mut c = Client::open(addr, "", &[]).await;
    c.request(json!({"type": "subscribe", "topic": "scores/all"}), 1)
        .await;

    let t0 = Instant::now();
    let b = c.poll_at(&c.cursor.clone(), 300).await;
    assert!(b.frames.is_empty());
    assert_eq!(b.cursor, c.cursor, "an empty answer keeps the cursor");
    assert!(
        t0.elapsed() >= Duration::from_millis(250),
        "answered too early"
    );

    let waiting = tokio::spawn({
        let cursor = c.cursor.clone();
        let c = c_clone(&c);
        async move { (Instant::now(), c.poll_at(&cursor, 10_000).await) }
    });
    wait_until("the poll to wait", || poll.waiting_polls() == 1).await;
    hub.publish("scores/all", &json!({"goal": true}))
        .await
        .unwrap();
    let (started, b) = timeout(LIMIT, waiting).await.unwrap().unwrap();
    assert!(started.elapsed() < Duration::from_secs(5), "answered late");
    assert_eq!(
        messages(&b.frames, "scores/all"),
        vec![(1, json!({"goal": true}))]
    );
}

fn c_clone(c: &Client) -> Client {
    Client {
        addr: c.addr,
        session: c.session.clone(),
        cursor: c.cursor.clone(),
        codec: c.codec,
        creds: c.creds.clone(),
    }
}

#[tokio::test]
async fn two_polls_at_once_the_older_is_answered_empty_the_newer_waits() {
    let hub = Hub::builder().build();
    let poll = PollService::new(hub.clone());
    let addr = serve(&hub, &poll).await;
    let mut c = Client::open(addr, "", &[]).await;
    c.request(json!({"type": "subscribe", "topic": "scores/all"}), 1)
        .await;
    let cursor = c.cursor.clone();

    let older = tokio::spawn({
        let (c, cursor) = (c_clone(&c), cursor.clone());
        async move { c.poll_at(&cursor, 10_000).await }
    });
    wait_until("the older poll to wait", || poll.waiting_polls() == 1).await;
    let t0 = Instant::now();
    let newer = tokio::spawn({
        let (c, cursor) = (c_clone(&c), cursor.clone());
        async move { c.poll_at(&cursor, 10_000).await }
    });
    let old = timeout(LIMIT, older).await.unwrap().unwrap();
    assert_eq!(old.status, StatusCode::OK);
    assert!(old.frames.is_empty(), "the older poll got {:?}", old.frames);
    assert_eq!(old.cursor, cursor);
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "older poll not released"
    );
    // The newer one is the one waiting now.
    wait_until("the newer poll to wait", || poll.waiting_polls() == 1).await;
    assert!(!newer.is_finished());
    hub.publish("scores/all", &json!({"n": 1})).await.unwrap();
    let new = timeout(LIMIT, newer).await.unwrap().unwrap();
    assert_eq!(
        messages(&new.frames, "scores/all"),
        vec![(1, json!({"n": 1}))]
    );
}

#[tokio::test]
async fn an_expired_session_leaves_presence_exactly_once() {
    let hub = Hub::builder()
        .heartbeat(Duration::from_millis(50), Duration::from_millis(400))
        .build();
    let poll = PollService::new(hub.clone());
    let addr = serve(&hub, &poll).await;
    let mut obs = observer(&hub).await;
    obs.session
        .handle(r#"{"type":"subscribe","topic":"chat/lobby","presence":true,"id":1}"#.into())
        .await;
    let mut c = Client::open(addr, "", &[]).await;
    let welcome = c.poll(1000).await;
    assert_eq!(welcome[0]["type"], "welcome");
    assert_eq!(welcome[0]["session"], json!(c.public_id()));
    c.request(json!({"type": "subscribe", "topic": "chat/lobby"}), 1)
        .await;
    let id = c.public_id();

    // While it polls, it lives: several timeouts' worth of polling (each poll waits < timeout).
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_millis(1200) {
        let b = c.poll_at(&c.cursor.clone(), 100).await;
        assert_eq!(b.status, StatusCode::OK, "expired while polling");
        c.cursor = b.cursor;
    }

    // Then it goes silent: the leave comes, once.
    let mut seen = Vec::new();
    let deadline = Instant::now() + LIMIT;
    while !seen
        .iter()
        .any(|f: &Value| f["type"] == "leave" && f["member"]["session"] == json!(id))
    {
        assert!(Instant::now() < deadline, "no leave; saw {seen:?}");
        seen.extend(observe(&mut obs).await);
    }
    // The session is gone from the transport too.
    wait_until("the poll session to be dropped", || {
        poll.session_count() == 0
    })
    .await;
    let b = c.poll_at(&c.cursor.clone(), 0).await;
    assert_eq!(b.status, StatusCode::NOT_FOUND);
    let err: Value = serde_json::from_slice(&b.raw).unwrap();
    assert_eq!(err["code"], "unknown_session");
    // A marker after everything: no second leave before it.
    hub.publish("chat/lobby", &json!("marker")).await.unwrap();
    while !seen.iter().any(|f| f["data"] == json!("marker")) {
        seen.extend(observe(&mut obs).await);
    }
    let joins = seen
        .iter()
        .filter(|f| f["type"] == "join" && f["member"]["session"] == json!(id))
        .count();
    let leaves = seen
        .iter()
        .filter(|f| f["type"] == "leave" && f["member"]["session"] == json!(id))
        .count();
    assert_eq!((joins, leaves), (1, 1), "{seen:?}");
    let stats = hub.stats();
    assert_eq!(stats.sessions.get("poll").copied().unwrap_or(0), 0);
}

#[tokio::test]
async fn msgpack_sessions_get_batches_under_the_size_cap() {
    let hub = Hub::builder().build();
    let poll = PollService::new(hub.clone()).batch_limit(1000, 2048);
    let addr = serve(&hub, &poll).await;
    let mut c = Client::open(addr, "", &[("accept", "application/msgpack")]).await;
    assert_eq!(c.codec, Codec::MsgPack);
    let reply = c
        .request(json!({"type": "subscribe", "topic": "scores/all"}), 7)
        .await;
    assert_eq!(reply["type"], "reply");
    let text = "x".repeat(150);
    for n in 1..=60u64 {
        hub.publish("scores/all", &json!({"n": n, "text": text}))
            .await
            .unwrap();
    }
    let mut got = Vec::new();
    let mut responses = 0;
    let mut multi = 0;
    let deadline = Instant::now() + LIMIT;
    while got.len() < 60 {
        assert!(Instant::now() < deadline);
        let b = c.poll_at(&c.cursor.clone(), 1000).await;
        assert_eq!(b.status, StatusCode::OK);
        responses += 1;
        if b.frames.len() > 1 {
            multi += 1;
            // Frames of ~190 bytes each: the cap holds (plus the envelope).
            assert!(b.body_len <= 2048 + 32, "batch of {} bytes", b.body_len);
        }
        c.cursor = b.cursor;
        got.extend(messages(&b.frames, "scores/all"));
    }
    let ns: Vec<u64> = got.iter().map(|(_, d)| d["n"].as_u64().unwrap()).collect();
    assert_eq!(ns, (1..=60).collect::<Vec<_>>());
    assert!(multi > 0, "no response carried several frames");
    assert!(
        responses >= 6,
        "60 x ~190 bytes cannot fit in {responses} capped batches"
    );

    // `?encoding=msgpack` works too, and the open answer is MessagePack.
    let c2 = Client::open(addr, "?encoding=msgpack", &[]).await;
    assert_eq!(c2.codec, Codec::MsgPack);
}

#[tokio::test]
async fn ws_sse_and_poll_clients_on_one_topic_see_the_same_sequence() {
    const N: u64 = 300;
    let hub = Hub::builder().queue_capacity(2048).history_len(5).build();
    let poll = PollService::new(hub.clone());
    let addr = serve(&hub, &poll).await;

    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
        .await
        .unwrap();
    ws.send(Message::text(
        r#"{"type":"subscribe","topic":"scores/all","id":1}"#,
    ))
    .await
    .unwrap();
    let mut json_poll = Client::open(addr, "", &[]).await;
    json_poll
        .request(json!({"type": "subscribe", "topic": "scores/all"}), 1)
        .await;
    let mut mp_poll = Client::open(addr, "?encoding=msgpack", &[]).await;
    mp_poll
        .request(json!({"type": "subscribe", "topic": "scores/all"}), 1)
        .await;
    // The WebSocket client's reply first, so that it is subscribed before publishing.
    let mut ws_frames: Vec<Value> = Vec::new();
    while !ws_frames.iter().any(|f| f["type"] == "reply") {
        let msg = timeout(LIMIT, ws.next()).await.unwrap().unwrap().unwrap();
        if let Message::Text(t) = msg {
            ws_frames.push(serde_json::from_str(&t).unwrap());
        }
    }

    let mut sse = sse_stream(addr, "/sse?topic=scores/all").await;
    // The stream's first frame is `welcome`: by then it follows the topic.
    let first = timeout(LIMIT, sse.recv()).await.unwrap().unwrap();
    assert_eq!(first["type"], "welcome");

    for n in 1..=N {
        let home = n / 7;
        hub.publish(
            "scores/all",
            &json!({"id": format!("m{}", n % 4), "home_score": home, "minute": n % 90}),
        )
        .await
        .unwrap();
    }

    let mut ws_got = Vec::new();
    while (ws_got.len() as u64) < N {
        let msg = timeout(LIMIT, ws.next()).await.unwrap().unwrap().unwrap();
        if let Message::Text(t) = msg {
            let f: Value = serde_json::from_str(&t).unwrap();
            ws_got.extend(messages(&[f], "scores/all"));
        }
    }
    let mut poll_seqs = Vec::new();
    for c in [&mut json_poll, &mut mp_poll] {
        let mut got = Vec::new();
        let deadline = Instant::now() + LIMIT;
        while (got.len() as u64) < N {
            assert!(Instant::now() < deadline);
            let frames = c.poll(1000).await;
            got.extend(messages(&frames, "scores/all"));
        }
        poll_seqs.push(got);
    }
    assert_eq!(ws_got.len() as u64, N);
    assert_eq!(
        ws_got.iter().map(|(o, _)| *o).collect::<Vec<_>>(),
        (1..=N).collect::<Vec<_>>()
    );
    let mut sse_got = Vec::new();
    while (sse_got.len() as u64) < N {
        let f = timeout(LIMIT, sse.recv())
            .await
            .unwrap()
            .expect("SSE stream ended");
        sse_got.extend(messages(&[f], "scores/all"));
    }
    assert_eq!(sse_got, ws_got, "SSE differs from WebSocket");
    assert_eq!(poll_seqs[0], ws_got, "JSON poll differs from WebSocket");
    assert_eq!(
        poll_seqs[1], ws_got,
        "MessagePack poll differs from WebSocket"
    );
}

/// An SSE reader: the frames (`data:` of each event) of a `text/event-stream`, as they come.
async fn sse_stream(addr: SocketAddr, uri: &str) -> tokio::sync::mpsc::Receiver<Value> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get(uri)
        .header("host", addr.to_string())
        .header("accept", "text/event-stream")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = timeout(LIMIT, sender.send_request(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let (tx, rx) = tokio::sync::mpsc::channel(16 * 1024);
    let mut body = resp.into_body();
    tokio::spawn(async move {
        let mut buf = String::new();
        while let Some(Ok(frame)) = body.frame().await {
            let Ok(data) = frame.into_data() else {
                continue;
            };
            buf.push_str(&String::from_utf8_lossy(&data));
            while let Some(end) = buf.find("\n\n") {
                let event: String = buf.drain(..end + 2).collect();
                let data: Vec<&str> = event
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .map(|d| d.strip_prefix(' ').unwrap_or(d))
                    .collect();
                if data.is_empty() {
                    continue;
                }
                let Ok(v) = serde_json::from_str::<Value>(&data.join("\n")) else {
                    continue;
                };
                if tx.send(v).await.is_err() {
                    return;
                }
            }
        }
    });
    rx
}

struct TestHooks;

#[async_trait]
impl Hooks for TestHooks {
    async fn authenticate(&self, req: &ConnectRequest) -> Result<Identity, Rejection> {
        match req.bearer_token() {
            Some("ana-token") => Ok(Identity::user("ana")),
            Some("bob-token") => Ok(Identity::user("bob")),
            Some(_) => Err(Rejection::forbidden("bad token")),
            None => Err(Rejection::unauthorized("token required")),
        }
    }

    async fn authorize(&self, _who: &Identity, action: Action<'_>) -> bool {
        matches!(action, Action::Subscribe(_) | Action::Publish(_))
    }
}

#[tokio::test]
async fn commands_are_answered_in_order_in_the_poll_stream() {
    let hub = Hub::builder()
        .hooks(TestHooks)
        .on_event(
            "echo",
            |_ctx: livehub_core::EventContext, data: Payload| async move {
                let v: Value = data.decode()?;
                Ok(Some(Payload::from_value(&json!({"echo": v}))?))
            },
        )
        .build();
    let poll = PollService::new(hub.clone());
    let addr = serve(&hub, &poll).await;
    let auth = [("authorization", "Bearer ana-token")];
    let mut c = Client::open(addr, "", &auth).await;

    let r = c
        .request(json!({"type": "subscribe", "topic": "chat/lobby"}), 1)
        .await;
    assert_eq!(r["type"], "reply");
    assert_eq!(r["data"]["offset"], 0);
    let r = c
        .request(
            json!({"type": "publish", "topic": "chat/lobby", "data": {"text": "hi"}}),
            2,
        )
        .await;
    assert_eq!(r["data"]["offset"], 1);
    let r = c
        .request(json!({"type": "event", "event": "echo", "data": [1, 2]}), 3)
        .await;
    assert_eq!(
        r,
        json!({"type": "reply", "id": 3, "data": {"echo": [1, 2]}})
    );
    let r = c
        .request(json!({"type": "event", "event": "nope"}), 4)
        .await;
    assert_eq!(r["code"], "unknown_event");
    let r = c
        .request(json!({"type": "unsubscribe", "topic": "chat/lobby"}), 5)
        .await;
    assert_eq!(r, json!({"type": "reply", "id": 5, "data": null}));
    let r = c.request(json!({"type": "dance"}), 6).await;
    assert_eq!(r["code"], "unknown_type");

    // Everything in order: the published message came between its reply and the event's.
    let mut d = Client::open(addr, "", &auth).await;
    d.send(json!({"type": "subscribe", "topic": "t1", "id": 1}))
        .await;
    d.send(json!({"type": "publish", "topic": "t1", "data": 1, "id": 2}))
        .await;
    d.send(json!({"type": "ping", "id": 3})).await;
    let frames = d.poll_until(|f| f["type"] == "pong").await;
    let kinds: Vec<String> = frames
        .iter()
        .map(|f| f["type"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(kinds, ["welcome", "reply", "message", "reply", "pong"]);
}

#[tokio::test]
async fn sessions_are_bound_to_their_secret_and_credentials() {
    let hub = Hub::builder().hooks(TestHooks).build();
    let poll = PollService::new(hub.clone());
    let addr = serve(&hub, &poll).await;

    let r = http(addr, "POST", "/poll", &[], "").await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::UNAUTHORIZED, "unauthorized")
    );
    let r = http(addr, "POST", "/poll", &[("authorization", "Bearer x")], "").await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::FORBIDDEN, "forbidden")
    );

    let ana = [("authorization", "Bearer ana-token")];
    let mut c = Client::open(addr, "", &ana).await;
    let welcome = c.poll(1000).await;
    assert_eq!(welcome[0]["type"], "welcome");
    let cursor = c.cursor.clone();
    let id = c.public_id();
    let secret = c.session.split('.').nth(1).unwrap().to_owned();
    let get = |session: String, headers: Vec<(&'static str, &'static str)>| async move {
        let uri = format!("/poll?session={session}&cursor=0&wait=0");
        http(addr, "GET", &uri, &headers, "").await
    };

    // The right session with someone else's credentials, or none.
    let bob = vec![("authorization", "Bearer bob-token")];
    let r = get(c.session.clone(), bob).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::FORBIDDEN, "forbidden")
    );
    let r = get(c.session.clone(), vec![]).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::UNAUTHORIZED, "unauthorized")
    );
    // Credentials the hook refuses: its answer.
    let r = get(c.session.clone(), vec![("authorization", "Bearer x")]).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::FORBIDDEN, "forbidden")
    );
    // A known public id with a forged secret.
    let forged = format!("{id}.{}", "0".repeat(32));
    let r = get(forged, ana.to_vec()).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::FORBIDDEN, "forbidden")
    );
    let r = get(format!("{id}.zz"), ana.to_vec()).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    // Unknown sessions, and garbage.
    let r = get(format!("0123456789abcdef.{secret}"), ana.to_vec()).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::NOT_FOUND, "unknown_session")
    );
    let r = get("nonsense".into(), ana.to_vec()).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::NOT_FOUND, "unknown_session")
    );
    // None of that acknowledged anything or hurt the session.
    let b = c.poll_at("0", 0).await;
    assert_eq!(b.status, StatusCode::OK);
    assert_eq!(b.cursor, cursor);
    assert_eq!(b.frames[0]["type"], "welcome");

    // Closing: 204, then the session is unknown and its presence is gone.
    let uri = format!("/poll?session={}", c.session);
    let r = http(addr, "DELETE", &uri, &ana, "").await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = get(c.session.clone(), ana.to_vec()).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::NOT_FOUND, "unknown_session")
    );
    assert_eq!(poll.session_count(), 0);
    wait_until("the hub to drop the session", || hub.session_count() == 0).await;
}

#[tokio::test]
async fn bad_input_gets_a_clear_error_and_loses_nothing() {
    let hub = Hub::builder().max_frame_size(1024).build();
    let poll = PollService::new(hub.clone());
    let addr = serve(&hub, &poll).await;
    let mut c = Client::open(addr, "", &[]).await;
    c.request(json!({"type": "subscribe", "topic": "scores/all"}), 1)
        .await;
    hub.publish("scores/all", &json!({"n": 1})).await.unwrap();
    let good = c.cursor.clone();
    let b = c.poll_at(&good, 1000).await;
    assert_eq!(messages(&b.frames, "scores/all").len(), 1);
    let handed_out: u64 = b.cursor.parse().unwrap();

    // Cursors from the future, from before the acknowledged point, and garbage: 400, and
    // nothing acknowledged (the same batch is still there).
    for bad in [
        (handed_out + 1).to_string(),
        "99999999999999999999".into(),
        "0".into(),
        "abc".into(),
        "-1".into(),
        "".into(),
        "1.5".into(),
    ] {
        let r = c.poll_at(&bad, 0).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "cursor {bad:?}");
        let err: Value = serde_json::from_slice(&r.raw).unwrap();
        assert_eq!(err["code"], "bad_cursor", "cursor {bad:?}");
    }
    let uri = format!("/poll?session={}", c.session);
    let r = http(addr, "GET", &uri, &[], "").await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::BAD_REQUEST, "bad_cursor")
    );
    let again = c.poll_at(&good, 0).await;
    assert_eq!(again.raw, b.raw, "a refused cursor acknowledged something");

    // Oversize command: 413, announced or not.
    let big = format!(
        r#"{{"type":"publish","topic":"scores/all","data":"{}"}}"#,
        "x".repeat(2000)
    );
    let r = http(addr, "POST", &uri, &[], big.clone()).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, "frame_too_large")
    );
    let chunked = http_chunked(addr, &uri, big.as_bytes()).await;
    assert!(chunked.starts_with("HTTP/1.1 413"), "{chunked}");
    // Undecodable or not a map: 400 bad_frame.
    for body in ["{\"type\":", "[1,2]", "", "\"subscribe\"", "{} {}"] {
        let r = http(addr, "POST", &uri, &[], body).await;
        assert_eq!(
            (r.status, r.code().as_str()),
            (StatusCode::BAD_REQUEST, "bad_frame"),
            "{body:?}"
        );
    }
    // A MessagePack session refuses JSON and garbage.
    let m = Client::open(addr, "?encoding=msgpack", &[]).await;
    let muri = format!("/poll?session={}", m.session);
    for body in [&b"{\"type\":\"ping\"}"[..], &[0xc1][..], &[0x81, 0xa1][..]] {
        let r = http(addr, "POST", &muri, &[], Bytes::copy_from_slice(body)).await;
        assert_eq!(
            (r.status, r.code().as_str()),
            (StatusCode::BAD_REQUEST, "bad_frame")
        );
    }
    // Bad encoding, bad methods, missing session.
    let r = http(addr, "POST", "/poll?encoding=xml", &[], "").await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::BAD_REQUEST, "bad_encoding")
    );
    let r = http(addr, "PUT", &uri, &[], "").await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    let r = http(addr, "GET", "/poll?cursor=0", &[], "").await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::BAD_REQUEST, "bad_request")
    );

    // After all that the session serves on, with nothing lost.
    hub.publish("scores/all", &json!({"n": 2})).await.unwrap();
    c.cursor = good;
    let frames = c.poll_until(|f| f["data"]["n"] == 2).await;
    let ns: Vec<u64> = messages(&frames, "scores/all")
        .iter()
        .map(|(o, _)| *o)
        .collect();
    assert_eq!(ns, [1, 2]);
}

/// A POST with a chunked body (no `Content-Length`); returns the raw answer's first line.
async fn http_chunked(addr: SocketAddr, uri: &str, body: &[u8]) -> String {
    use tokio::io::AsyncReadExt;
    let fut = async {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "POST {uri} HTTP/1.1\r\nhost: {addr}\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
        );
        tcp.write_all(head.as_bytes()).await.unwrap();
        for chunk in body.chunks(300) {
            let mut c = format!("{:x}\r\n", chunk.len()).into_bytes();
            c.extend_from_slice(chunk);
            c.extend_from_slice(b"\r\n");
            // The server may answer and close before reading it all.
            if tcp.write_all(&c).await.is_err() {
                break;
            }
        }
        let _ = tcp.write_all(b"0\r\n\r\n").await;
        let mut out = Vec::new();
        let _ = tcp.read_to_end(&mut out).await;
        String::from_utf8_lossy(&out)
            .lines()
            .next()
            .unwrap_or("")
            .to_owned()
    };
    timeout(LIMIT, fut).await.unwrap()
}

#[tokio::test]
async fn a_poller_too_slow_for_the_bounds_is_told_why_and_then_forgotten() {
    let hub = Hub::builder().queue_capacity(8).build();
    let poll = PollService::new(hub.clone()).max_pending(8);
    let addr = serve(&hub, &poll).await;
    let mut c = Client::open(addr, "", &[]).await;
    c.request(json!({"type": "subscribe", "topic": "scores/all"}), 1)
        .await;
    // Far more than both bounds, with nobody polling.
    // Acknowledge the welcome and the reply, so the pending buffer starts empty.
    assert!(c.poll(0).await.is_empty());
    // (Yielding after each lets the transport take what its bound allows.)
    for n in 1..=100u64 {
        hub.publish("scores/all", &json!({"n": n})).await.unwrap();
        tokio::task::yield_now().await;
    }
    wait_until("the slow consumer to be closed", || {
        hub.session_count() == 0
    })
    .await;
    // What was held is delivered, then the close, with its reason.
    let frames = c.poll_until(|f| f["type"] == "close").await;
    let close = frames.last().unwrap();
    assert_eq!(close["type"], "close");
    assert_eq!(close["reason"], "slow_consumer");
    let got = messages(&frames, "scores/all");
    // At least the pending bound was held, at most that plus the hub's queue.
    assert!((8..=16).contains(&got.len()), "held {} messages", got.len());
    let offsets: Vec<u64> = got.iter().map(|(o, _)| *o).collect();
    assert_eq!(offsets, (1..=got.len() as u64).collect::<Vec<_>>());
    // Acknowledging the close ends it.
    let b = c.poll_at(&c.cursor.clone(), 0).await;
    assert_eq!(b.status, StatusCode::NOT_FOUND);
    assert_eq!(poll.session_count(), 0);

    // A kicked session's poller learns it too.
    let mut k = Client::open(addr, "", &[]).await;
    let welcome = k.poll(1000).await;
    let id = livehub_core::SessionId::parse(welcome[0]["session"].as_str().unwrap()).unwrap();
    let waiting = tokio::spawn(async move {
        let frames = k.poll(10_000).await;
        (k, frames)
    });
    wait_until("the poll to wait", || poll.waiting_polls() == 1).await;
    assert!(hub.disconnect(id));
    let (_k, frames) = timeout(LIMIT, waiting).await.unwrap().unwrap();
    assert_eq!(frames.last().unwrap()["reason"], "kicked");
}

// ---------------------------------------------------------------------------------------------
// Binding every request to the session's user, shutdown, slow consumers.

/// Credentials from a cookie, as a browser sends them: `sid=ana-cookie` (or the renewed
/// `ana-cookie-2`) is ana, `sid=bob-cookie` is bob; an expired or missing cookie is refused
/// with 401, any other with 403. Everyone may subscribe and publish.
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

    async fn authorize(&self, _who: &Identity, action: Action<'_>) -> bool {
        matches!(action, Action::Subscribe(_) | Action::Publish(_))
    }
}

#[tokio::test]
async fn every_request_must_come_from_the_user_whose_cookie_opened_the_session() {
    let hub = Hub::builder()
        .hooks(CookieHooks)
        .allowed_origins(["http://app.example"])
        .build();
    let poll = PollService::new(hub.clone());
    let addr = serve(&hub, &poll).await;
    let mut c = Client::open(addr, "", &[("cookie", "theme=dark; sid=ana-cookie")]).await;
    let r = c
        .request(json!({"type": "subscribe", "topic": "a"}), 1)
        .await;
    assert_eq!(r["type"], "reply");
    let cursor = c.cursor.clone();
    hub.publish("a", &json!("one")).await.unwrap();

    // Ana's session token with Bob's cookie, with cookies the hook refuses, with none, or with
    // Ana's cookie from a page of an origin the hub does not allow: polls, commands and closes
    // are all refused.
    let session = c.session.clone();
    let forged = json!({"type": "publish", "topic": "a", "data": "forged", "id": 9}).to_string();
    for (creds, status, code) in [
        (vec![("cookie", "sid=bob-cookie")], 403, "forbidden"),
        (vec![("cookie", "sid=forged")], 403, "forbidden"),
        (vec![("cookie", "sid=expired")], 401, "unauthorized"),
        (vec![], 401, "unauthorized"),
        (
            vec![
                ("cookie", "sid=ana-cookie"),
                ("origin", "http://evil.example"),
            ],
            403,
            "origin_not_allowed",
        ),
    ] {
        for (method, uri, body) in [
            (
                "GET",
                format!("/poll?session={session}&cursor={cursor}&wait=0"),
                String::new(),
            ),
            ("POST", format!("/poll?session={session}"), forged.clone()),
            ("DELETE", format!("/poll?session={session}"), String::new()),
        ] {
            let r = http(addr, method, &uri, &creds, body).await;
            assert_eq!(
                (r.status.as_u16(), r.code()),
                (status, code.to_owned()),
                "{method} with {creds:?}"
            );
        }
    }

    // Nothing changed: the session is open, nothing was acknowledged or published, and the
    // owner's poll gets exactly what was waiting. The same poll again (a replay: same token,
    // same cookie) is the owner's too, and gets the same answer.
    let b = c.poll_at(&cursor, 0).await;
    assert_eq!(b.status, StatusCode::OK);
    assert_eq!(
        b.frames,
        vec![json!({"type": "message", "topic": "a",
        "epoch": b.frames[0]["epoch"], "offset": 1, "data": "one"})]
    );
    let again = c.poll_at(&cursor, 0).await;
    assert_eq!(again.raw, b.raw);
    c.cursor = b.cursor;
    assert_eq!(hub.stats().published, 1);
    assert_eq!(hub.session_count(), 1);
    // A renewed cookie of the same user is the same owner.
    let r = http(
        addr,
        "POST",
        &format!("/poll?session={session}"),
        &[("cookie", "sid=ana-cookie-2")],
        json!({"type": "ping", "id": 2}).to_string(),
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let frames = c.poll_until(|f| f["type"] == "pong").await;
    assert_eq!(frames, vec![json!({"type": "pong", "id": 2})]);
}

#[tokio::test]
async fn shutdown_answers_polls_with_the_queued_frames_then_close_and_lets_go() {
    let hub = Hub::builder().build();
    // A short poll wait: it also bounds how long a shutdown waits for a silent client.
    let poll = PollService::new(hub.clone()).poll_wait(Duration::from_millis(500));
    let addr = serve(&hub, &poll).await;
    let mut c = Client::open(addr, "", &[]).await;
    c.request(json!({"type": "subscribe", "topic": "scores/all"}), 1)
        .await;
    // Another client that will never poll again once the shutdown begins.
    let mut silent = Client::open(addr, "", &[]).await;
    assert_eq!(silent.poll(0).await[0]["type"], "welcome");
    // And one the server kicked before, which has not come back for its `close` yet.
    let mut kicked = Client::open(addr, "", &[]).await;
    let welcome = kicked.poll(0).await;
    assert!(hub.disconnect(
        livehub_core::SessionId::parse(welcome[0]["session"].as_str().unwrap()).unwrap()
    ));

    // A poll waits, as a client's always does; meanwhile messages are queued, and the shutdown
    // begins before the transport has taken them from the hub.
    let mut waiting = c_clone(&c);
    let waiter = tokio::spawn(async move {
        let frames = waiting.poll(10_000).await;
        (waiting, frames)
    });
    for n in 1..=3 {
        hub.publish("scores/all", &json!({"n": n})).await.unwrap();
    }
    let shutdown = hub.shutdown(Duration::from_secs(20));
    let client = async {
        let (mut c, mut frames) = timeout(LIMIT, waiter).await.unwrap().unwrap();
        if !frames.iter().any(|f| f["type"] == "close") {
            frames.extend(c.poll_until(|f| f["type"] == "close").await);
        }
        // The client acknowledges the close: the session is over for it.
        let b = c.poll_at(&c.cursor.clone(), 0).await;
        assert_eq!(b.status, StatusCode::NOT_FOUND);
        frames
    };
    let (report, frames) = timeout(Duration::from_secs(30), async {
        tokio::join!(shutdown, client)
    })
    .await
    .expect("shutdown never completed");
    assert_eq!(
        messages(&frames, "scores/all"),
        (1..=3).map(|n| (n, json!({"n": n}))).collect::<Vec<_>>()
    );
    assert_eq!(frames.len(), 4, "{frames:?}");
    // With the hub's reconnection hint (a random delay within the default 5 s spread).
    let hint = frames[3]["retry_ms"].as_u64().unwrap_or(0);
    assert!((1..=5000).contains(&hint), "{}", frames[3]);
    assert_eq!(
        frames[3],
        json!({"type": "close", "code": 1001, "reason": "shutdown", "retry_ms": hint})
    );
    // Every session was let go in time: the acknowledged one at once, the silent and the
    // kicked ones after a short bound. Nothing had to be forced.
    assert_eq!((report.sessions, report.forced), (2, 0));
    assert_eq!(hub.stats().disconnects.get("shutdown"), Some(&2));
    assert_eq!(hub.stats().disconnects.get("kicked"), Some(&1));
    assert_eq!(poll.session_count(), 0);
    for late in [&silent, &kicked] {
        let r = late.poll_at(&late.cursor.clone(), 0).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND);
    }
    // New sessions are refused.
    let r = http(addr, "POST", "/poll", &[], "").await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "shutting_down")
    );
}

/// One keep-alive HTTP/1.1 connection, for a client that polls in a loop.
struct KeepAlive {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    addr: SocketAddr,
}

impl KeepAlive {
    async fn new(addr: SocketAddr) -> KeepAlive {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .unwrap();
        tokio::spawn(conn);
        KeepAlive { sender, addr }
    }

    async fn get(&mut self, uri: &str) -> Value {
        let fut = async {
            self.sender.ready().await.unwrap();
            let req = Request::get(uri)
                .header("host", self.addr.to_string())
                .body(Full::default())
                .unwrap();
            let resp = self.sender.send_request(req).await.unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            serde_json::from_slice(&body).unwrap()
        };
        timeout(LIMIT, fut).await.expect("request timed out")
    }
}

#[tokio::test]
async fn a_stalled_poller_is_cut_off_while_an_active_one_gets_every_message_in_order() {
    const TOTAL: u64 = 20_000;
    const QUEUE: usize = 64;
    const MAX_PENDING: usize = 256;
    /// How far the publisher may run ahead of the active poller: less than the hub's queue
    /// holds, so that the active poller never overflows, whatever the scheduling.
    const WINDOW: u64 = 48;
    // A heartbeat timeout far away: only the slow-consumer policy may end anything here.
    let hub = Hub::builder()
        .queue_capacity(QUEUE)
        .heartbeat(Duration::from_secs(30), Duration::from_secs(600))
        .build();
    let poll = PollService::new(hub.clone()).max_pending(MAX_PENDING);
    let addr = serve(&hub, &poll).await;
    let mut active = Client::open(addr, "", &[]).await;
    active
        .request(json!({"type": "subscribe", "topic": "load"}), 1)
        .await;
    // The stalled client subscribes, then stops polling.
    let mut stalled = Client::open(addr, "", &[]).await;
    let r = stalled
        .send(json!({"type": "subscribe", "topic": "load", "id": 1}))
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);

    let (progress_tx, mut progress) = tokio::sync::watch::channel(0u64);
    let mut reader = tokio::spawn(async move {
        let mut conn = KeepAlive::new(addr).await;
        let mut next = 1u64;
        let mut cursor = active.cursor.clone();
        // Every poll brings at least one frame or ends the loop by its wait: bounded.
        for _ in 0..TOTAL {
            if next > TOTAL {
                break;
            }
            let uri = format!("/poll?session={}&cursor={cursor}&wait=5000", active.session);
            let batch = conn.get(&uri).await;
            cursor = batch["cursor"].as_str().unwrap().to_owned();
            let frames = batch["frames"].as_array().unwrap();
            assert!(!frames.is_empty(), "nothing for 5 s at message {next}");
            for f in frames {
                assert_eq!(
                    (&f["type"], &f["offset"], &f["data"]["n"]),
                    (&json!("message"), &json!(next), &json!(next)),
                    "in order, none missing"
                );
                next += 1;
            }
            progress_tx.send_replace(next - 1);
        }
        assert_eq!(next, TOTAL + 1);
    });
    let pad = "x".repeat(200);
    for n in 1..=TOTAL {
        while n > *progress.borrow() + WINDOW {
            let changed = timeout(LIMIT, progress.changed())
                .await
                .expect("the active poller made no progress");
            if changed.is_err() {
                panic!("the active poller failed: {:?}", (&mut reader).await.err());
            }
        }
        hub.publish("load", &json!({"n": n, "pad": pad}))
            .await
            .unwrap();
    }
    timeout(LIMIT, reader).await.unwrap().unwrap();

    // The stalled session was ended as a slow consumer, alone; the active one goes on.
    assert_eq!(hub.stats().disconnects.get("slow_consumer"), Some(&1));
    assert_eq!(hub.stats().disconnects.values().sum::<u64>(), 1);
    assert_eq!(hub.topic_members("load").await.unwrap().len(), 1);

    // What the transport held for it stayed bounded: when it polls again, it gets at least its
    // pending bound and at most that plus one batch of the hub's queue (what was still in the
    // hub's queue when it was cut off is dropped), then the `close` frame that says why.
    let frames = stalled.poll_until(|f| f["type"] == "close").await;
    let (close, held) = frames.split_last().unwrap();
    assert_eq!(
        close,
        &json!({"type": "close", "code": 1008, "reason": "slow_consumer"})
    );
    assert!(
        (MAX_PENDING..=MAX_PENDING + QUEUE).contains(&held.len()),
        "held {} frames",
        held.len()
    );
    assert_eq!(
        (&held[0]["type"], &held[1]["type"]),
        (&json!("welcome"), &json!("reply"))
    );
    let offsets: Vec<u64> = messages(held, "load").iter().map(|(o, _)| *o).collect();
    assert_eq!(offsets, (1..=held.len() as u64 - 2).collect::<Vec<_>>());
    // Acknowledging the close ends it.
    let b = stalled.poll_at(&stalled.cursor.clone(), 0).await;
    assert_eq!(b.status, StatusCode::NOT_FOUND);
    assert_eq!(poll.session_count(), 1);
}

// ---------------------------------------------------------------------------------------------
// Numbered commands: a replay is refused, a retry is answered again without running twice.

/// Asserts a 409 `bad_seq` that expects `expected` next.
#[track_caller]
fn assert_bad_seq(r: &Resp, expected: u64) {
    assert_eq!(r.status, StatusCode::CONFLICT, "{:?}", r.body);
    assert_eq!(r.headers["content-type"], "application/json");
    let v = r.json();
    assert_eq!(v["code"], "bad_seq", "{v}");
    assert_eq!(v["expected"], expected, "{v}");
    assert!(v["message"]
        .as_str()
        .unwrap()
        .contains(&expected.to_string()));
    assert!(r.headers.get("hub-command-duplicate").is_none());
}

#[tokio::test]
async fn a_numbered_publish_runs_once_however_often_it_is_replayed() {
    let hub = Hub::builder().hooks(TestHooks).build();
    let poll = PollService::new(hub.clone());
    let addr = serve(&hub, &poll).await;
    let mut ana = Client::open(addr, "", &[("authorization", "Bearer ana-token")]).await;
    let mut bob = Client::open(addr, "", &[("authorization", "Bearer bob-token")]).await;
    bob.request(json!({"type": "subscribe", "topic": "t"}), 1)
        .await;
    let publish = |n: u64| json!({"type": "publish", "topic": "t", "data": n, "id": n});

    // Command 1 runs: 202, numbered, not a duplicate.
    let r = ana.send_numbered(&publish(1), Some("1")).await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    assert!(r.body.is_empty());
    assert_eq!(r.headers["hub-command-seq"], "1");
    assert!(r.headers.get("hub-command-duplicate").is_none());
    // The same request again (a retry after a lost answer, or a replay): the same answer,
    // marked as a duplicate, and it does not run again.
    for _ in 0..2 {
        let r = ana.send_numbered(&publish(1), Some("1")).await;
        assert_eq!(r.status, StatusCode::ACCEPTED);
        assert!(r.body.is_empty());
        assert_eq!(r.headers["hub-command-seq"], "1");
        assert_eq!(r.headers["hub-command-duplicate"], "1");
    }
    let r = ana.send_numbered(&publish(2), Some("2")).await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    assert!(r.headers.get("hub-command-duplicate").is_none());
    // Replays of older commands, skips, malformed numbers, a number reused for another
    // command, and no number on a session that numbers its commands: 409, nothing runs.
    assert_bad_seq(&ana.send_numbered(&publish(1), Some("1")).await, 3);
    assert_bad_seq(&ana.send_numbered(&publish(4), Some("4")).await, 3);
    for bad in ["0", "-1", "abc", "3.0", "99999999999999999999", ""] {
        assert_bad_seq(&ana.send_numbered(&publish(3), Some(bad)).await, 3);
    }
    assert_bad_seq(&ana.send_numbered(&publish(9), Some("2")).await, 3);
    assert_bad_seq(&ana.send_numbered(&publish(9), None).await, 3);
    // The query parameter numbers a command too.
    let uri = format!("/poll?session={}&seq=3", ana.session);
    let r = http(addr, "POST", &uri, &ana.headers(), publish(3).to_string()).await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    assert_eq!(r.headers["hub-command-seq"], "3");

    // Exactly three publishes ran: Bob got each once, in order, then the marker.
    hub.publish("t", &json!("marker")).await.unwrap();
    let frames = bob.poll_until(|f| f["data"] == "marker").await;
    assert_eq!(
        messages(&frames, "t"),
        [
            (1, json!(1)),
            (2, json!(2)),
            (3, json!(3)),
            (4, json!("marker"))
        ]
    );
    assert_eq!(hub.stats().published, 4);
    // Ana got one reply per command that ran, and nothing for the refused or repeated
    // requests.
    let frames = ana.poll_until(|f| f["id"] == 3).await;
    let kinds: Vec<String> = frames
        .iter()
        .map(|f| format!("{} {}", f["type"].as_str().unwrap(), f["id"]))
        .collect();
    assert_eq!(kinds, ["welcome null", "reply 1", "reply 2", "reply 3"]);
    let more = ana.poll(0).await;
    assert!(more.is_empty(), "{more:?}");
}

#[tokio::test]
async fn unnumbered_commands_work_until_a_session_numbers_one_or_the_server_requires_it() {
    // By default: a session that never numbered a command runs unnumbered ones (older
    // clients), the same request twice included: it cannot tell a replay from a repeat.
    let hub = Hub::builder().build();
    let poll = PollService::new(hub.clone());
    let addr = serve(&hub, &poll).await;
    let mut c = Client::open(addr, "", &[]).await;
    let ping = |id: u64| json!({"type": "ping", "id": id});
    for _ in 0..2 {
        let r = c.send_numbered(&ping(1), None).await;
        assert_eq!(r.status, StatusCode::ACCEPTED);
        assert!(r.headers.get("hub-command-seq").is_none());
    }
    // Numbering starts at 1, whatever ran before; from then on a number is required.
    assert_bad_seq(&c.send_numbered(&ping(3), Some("3")).await, 1);
    let r = c.send_numbered(&ping(2), Some("1")).await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    assert_bad_seq(&c.send_numbered(&ping(9), None).await, 2);
    let r = c.send_numbered(&ping(3), Some("2")).await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let frames = c.poll_until(|f| f["id"] == 3).await;
    assert_eq!(frames[0]["type"], "welcome");
    assert_eq!(
        frames[1..],
        [
            ping_answer(1),
            ping_answer(1),
            ping_answer(2),
            ping_answer(3)
        ]
    );
    // Each session numbers on its own: another one may still go unnumbered.
    let d = Client::open(addr, "", &[]).await;
    let r = d.send_numbered(&ping(1), None).await;
    assert_eq!(r.status, StatusCode::ACCEPTED);

    // A server that requires numbers refuses unnumbered commands on every session.
    let poll = PollService::new(hub.clone()).require_command_seq(true);
    let addr = serve(&hub, &poll).await;
    let mut c = Client::open(addr, "", &[]).await;
    assert_bad_seq(&c.send_numbered(&ping(1), None).await, 1);
    let r = c.send_numbered(&ping(1), Some("1")).await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let frames = c.poll_until(|f| f["type"] == "pong").await;
    assert_eq!(frames.len(), 2, "{frames:?}");
    assert_eq!(frames[1], ping_answer(1));
}

fn ping_answer(id: u64) -> Value {
    json!({"type": "pong", "id": id})
}

#[tokio::test]
async fn a_command_whose_client_gave_up_runs_once_and_its_retry_gets_the_answer() {
    // `slow` events wait until the test lets them finish; runs are counted.
    let (entered_tx, mut entered) = tokio::sync::watch::channel(0u32);
    let release = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    let gate = release.clone();
    let hub = Hub::builder()
        .on_event(
            "slow",
            move |_ctx: livehub_core::EventContext, data: Payload| {
                let (entered, gate) = (entered_tx.clone(), gate.clone());
                async move {
                    entered.send_modify(|n| *n += 1);
                    let _permit = gate.acquire().await;
                    Ok(Some(data))
                }
            },
        )
        .build();
    let poll = PollService::new(hub.clone());
    let addr = serve(&hub, &poll).await;
    let mut c = Client::open(addr, "", &[]).await;
    let frame = json!({"type": "event", "event": "slow", "data": "once", "id": 1});

    // The first try starts running; then its client gives up (the connection closes).
    let (session, first_frame) = (c.session.clone(), frame.to_string());
    let first = tokio::spawn(async move {
        let uri = format!("/poll?session={session}");
        http(addr, "POST", &uri, &[("hub-command-seq", "1")], first_frame).await
    });
    timeout(LIMIT, entered.wait_for(|n| *n == 1))
        .await
        .expect("the command never ran")
        .unwrap();
    first.abort();
    let _ = first.await;
    // The retry waits for the run (or finds it done), and gets its answer, as a duplicate.
    let (session, retry_frame) = (c.session.clone(), frame.to_string());
    let retry = tokio::spawn(async move {
        let uri = format!("/poll?session={session}");
        http(addr, "POST", &uri, &[("hub-command-seq", "1")], retry_frame).await
    });
    release.add_permits(1);
    let r = timeout(LIMIT, retry).await.unwrap().unwrap();
    assert_eq!(r.status, StatusCode::ACCEPTED);
    assert_eq!(r.headers["hub-command-duplicate"], "1");
    // It ran once: one reply, then the next command's answer right after it.
    let r = c
        .send_numbered(&json!({"type": "ping", "id": 2}), Some("2"))
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let frames = c.poll_until(|f| f["type"] == "pong").await;
    assert_eq!(
        frames[1..],
        [
            json!({"type": "reply", "id": 1, "data": "once"}),
            ping_answer(2)
        ]
    );
    assert_eq!(*entered.borrow(), 1);
}

#[tokio::test]
async fn cors_lets_allowed_origins_open_poll_and_send_with_credentials() {
    let hub = Hub::builder().build();
    let poll = PollService::new(hub.clone()).allow_origins(["https://app.example"]);
    let addr = serve(&hub, &poll).await;
    let app = [("origin", "https://app.example")];

    // The preflight of a command from the allowed origin: what it may send.
    let pre = |origin: &'static str| async move {
        http(
            addr,
            "OPTIONS",
            "/poll?session=x",
            &[
                ("origin", origin),
                ("access-control-request-method", "POST"),
                (
                    "access-control-request-headers",
                    "content-type, hub-command-seq",
                ),
            ],
            "",
        )
        .await
    };
    let r = pre("https://app.example").await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{:?}", r.body);
    let h = &r.headers;
    assert_eq!(h["access-control-allow-origin"], "https://app.example");
    assert_eq!(h["access-control-allow-credentials"], "true");
    assert_eq!(
        h["access-control-allow-methods"],
        "GET, POST, DELETE, OPTIONS"
    );
    let allowed = h["access-control-allow-headers"].to_str().unwrap();
    for name in [
        "content-type",
        "authorization",
        "hub-session",
        "hub-command-seq",
    ] {
        assert!(allowed.contains(name), "{name} in {allowed}");
    }
    assert_eq!(h["vary"], "Origin");
    // From another origin: refused, and no grant.
    let r = pre("https://evil.example").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.code(), "origin_not_allowed");
    assert!(r.headers.get("access-control-allow-origin").is_none());

    // Open, command and poll from the allowed origin all carry the grant; the command
    // numbering's answer headers are readable by the page.
    let c = Client::open(addr, "", &app).await;
    let uri = format!("/poll?session={}", c.session);
    let mut headers = app.to_vec();
    headers.push(("hub-command-seq", "1"));
    let r = http(addr, "POST", &uri, &headers, r#"{"type":"ping","id":1}"#).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);
    assert_eq!(
        r.headers["access-control-allow-origin"],
        "https://app.example"
    );
    assert_eq!(r.headers["access-control-allow-credentials"], "true");
    let exposed = r.headers["access-control-expose-headers"].to_str().unwrap();
    assert!(
        exposed.contains("hub-command-seq") && exposed.contains("hub-command-duplicate"),
        "{exposed}"
    );
    let r = http(addr, "GET", &format!("{uri}&cursor=0&wait=0"), &app, "").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.headers["access-control-allow-origin"],
        "https://app.example"
    );
    let frames = r.json()["frames"].as_array().unwrap().clone();
    assert_eq!(frames[0]["type"], "welcome");
    // A refusal to the allowed origin carries the grant too, so that its page can read why.
    let r = http(addr, "GET", &format!("{uri}&cursor=99"), &app, "").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.code(), "bad_cursor");
    assert_eq!(
        r.headers["access-control-allow-origin"],
        "https://app.example"
    );

    // A page of another origin gets no grant (its browser will not let it read the answer).
    let r = http(
        addr,
        "POST",
        "/poll",
        &[("origin", "https://evil.example")],
        "",
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.headers.get("access-control-allow-origin").is_none());
    assert_eq!(r.headers["vary"], "Origin");
}

#[tokio::test]
async fn without_a_cors_policy_no_cors_headers_are_sent_and_preflights_are_refused() {
    let hub = Hub::builder().build();
    let poll = PollService::new(hub.clone());
    let addr = serve(&hub, &poll).await;
    let r = http(
        addr,
        "POST",
        "/poll",
        &[("origin", "https://app.example")],
        "",
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r
        .headers
        .keys()
        .all(|k| !k.as_str().starts_with("access-control-")));
    let r = http(
        addr,
        "OPTIONS",
        "/poll",
        &[("origin", "https://app.example")],
        "",
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.code(), "origin_not_allowed");
    // Other methods are still refused, and told what is allowed.
    let r = http(addr, "PUT", "/poll", &[], "").await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.headers["allow"], "GET, POST, DELETE, OPTIONS");
}
