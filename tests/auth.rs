//! The token-authentication example (`examples/auth.rs`) against its promises, on all three
//! transports, with real clients over loopback sockets: a tokio-tungstenite WebSocket client,
//! and a small HTTP/1.1 client over `TcpStream` for server-sent events and long-polling.
//!
//! - expired, forged, tampered and missing tokens are refused (401/403) before any session
//!   exists, whether the token comes as `?token=` or `Authorization: Bearer`;
//! - subscribing outside one's rights is answered `forbidden` and delivers nothing;
//! - a viewer's publish is `forbidden`, a publisher's reaches subscribers on every transport;
//! - an SSE command or a poll request that carries one user's session with another user's
//!   credentials is refused with 403;
//! - a WebSocket upgrade (and an SSE or poll open) from an Origin outside the allow-list is
//!   refused with 403 `origin_not_allowed`.
//!
//! Every wait is for a frame or a response, with a generous timeout as a safety net.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[allow(dead_code)] // `main` and its helpers are for the example binary only.
#[path = "../examples/auth.rs"]
mod auth;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use auth::{Keys, Role};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::StatusCode;
use hub::Hub;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Safety net for every wait (the machine may be busy: never a timing assertion).
const WAIT: Duration = Duration::from_secs(15);

/// The one browser origin the test hub admits.
const APP_ORIGIN: &str = "https://app.example";

// ---------------------------------------------------------------------------------------------
// The server: the example's hub and router on a free port.

struct Server {
    addr: SocketAddr,
    hub: Hub,
    keys: Keys,
}

impl Server {
    async fn start() -> Server {
        let keys = Keys::new(b"the test key: 32 bytes or more!!".to_vec());
        let hub = auth::build_hub(keys.clone(), &[APP_ORIGIN.to_owned()]);
        let app = auth::router(&hub);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Server { addr, hub, keys }
    }

    /// A token valid for an hour.
    fn token(&self, user: &str, role: Role) -> String {
        self.keys.mint(user, role, auth::unix_now() + 3600).unwrap()
    }
}

/// How a client presents its token.
#[derive(Debug, Clone)]
enum Cred {
    /// `?token=<token>` in the URL.
    Query(String),
    /// `Authorization: Bearer <token>`.
    Bearer(String),
    /// `?token=<first>` and `Authorization: Bearer <second>`.
    Both(String, String),
    /// No credentials.
    None,
}

impl Cred {
    /// `path` with the token appended to its query, if it goes there.
    fn uri(&self, path: &str) -> String {
        match self {
            Cred::Query(t) | Cred::Both(t, _) => {
                let sep = if path.contains('?') { '&' } else { '?' };
                format!("{path}{sep}token={t}")
            }
            Cred::Bearer(_) | Cred::None => path.to_owned(),
        }
    }

    /// The headers that carry the token, if it goes there.
    fn headers(&self) -> Vec<(&'static str, String)> {
        match self {
            Cred::Query(_) | Cred::None => vec![],
            Cred::Bearer(t) | Cred::Both(_, t) => vec![("authorization", format!("Bearer {t}"))],
        }
    }
}

/// The three transports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Ws,
    Sse,
    Poll,
}

const KINDS: [Kind; 3] = [Kind::Ws, Kind::Sse, Kind::Poll];

// ---------------------------------------------------------------------------------------------
// HTTP/1.1: one request per connection, written and parsed by hand (the facade's dev-dependencies
// have hyper's server side only), chunked bodies included.

/// A response whose body has been read.
struct Resp {
    status: StatusCode,
    body: Bytes,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
}

/// How a response body is delimited.
enum Framing {
    Chunked,
    Length(usize),
    Eof,
}

/// A response body, read as it arrives (an event stream never ends by itself).
struct HttpBody {
    tcp: TcpStream,
    raw: Vec<u8>,
    framing: Framing,
}

impl HttpBody {
    /// Reads more bytes; `false` at the end of the connection.
    async fn fill(&mut self) -> bool {
        let mut buf = [0u8; 8192];
        let n = tokio::time::timeout(WAIT, self.tcp.read(&mut buf))
            .await
            .expect("timed out reading a response")
            .unwrap_or(0);
        self.raw.extend_from_slice(&buf[..n]);
        n > 0
    }

    /// The next piece of the body, or `None` at its end.
    async fn next_data(&mut self) -> Option<Vec<u8>> {
        loop {
            match &mut self.framing {
                Framing::Length(0) => return None,
                Framing::Length(left) if !self.raw.is_empty() => {
                    let n = (*left).min(self.raw.len());
                    *left -= n;
                    return Some(self.raw.drain(..n).collect());
                }
                Framing::Eof if !self.raw.is_empty() => return Some(std::mem::take(&mut self.raw)),
                Framing::Chunked => {
                    if let Some(pos) = self.raw.windows(2).position(|w| w == b"\r\n") {
                        let line = String::from_utf8_lossy(&self.raw[..pos]).into_owned();
                        let hex = line.split(';').next().unwrap_or("").trim();
                        let size = usize::from_str_radix(hex, 16).expect("a chunk size");
                        if size == 0 {
                            return None;
                        }
                        if self.raw.len() >= pos + 2 + size + 2 {
                            let data = self.raw[pos + 2..pos + 2 + size].to_vec();
                            self.raw.drain(..pos + 2 + size + 2);
                            return Some(data);
                        }
                    }
                }
                _ => {}
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    /// The rest of the body.
    async fn collect(mut self) -> Bytes {
        let mut out = Vec::new();
        while let Some(d) = self.next_data().await {
            out.extend_from_slice(&d);
        }
        Bytes::from(out)
    }
}

/// Sends one request on a fresh connection (`Connection: close`); returns the status, the
/// headers (lowercase names) and the body, unread.
async fn send_request(
    addr: SocketAddr,
    method: &str,
    uri: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> (StatusCode, Vec<(String, String)>, HttpBody) {
    let mut tcp = tokio::time::timeout(WAIT, TcpStream::connect(addr))
        .await
        .expect("timed out connecting")
        .unwrap();
    let mut req = format!("{method} {uri} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    tcp.write_all(&bytes).await.unwrap();
    let mut b = HttpBody {
        tcp,
        raw: Vec::new(),
        framing: Framing::Eof,
    };
    let end = loop {
        if let Some(pos) = b.raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos;
        }
        assert!(
            b.fill().await,
            "the connection ended before the response head"
        );
    };
    let head = String::from_utf8(b.raw.drain(..end + 4).collect()).unwrap();
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    b.framing = if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        Framing::Chunked
    } else if let Some(n) = header("content-length") {
        Framing::Length(n.parse().unwrap())
    } else {
        Framing::Eof
    };
    (StatusCode::from_u16(status).unwrap(), headers, b)
}

/// One whole request and response.
async fn http(
    addr: SocketAddr,
    method: &str,
    uri: &str,
    headers: &[(&str, String)],
    body: impl AsRef<[u8]>,
) -> Resp {
    let (status, _, body) = send_request(addr, method, uri, headers, body.as_ref()).await;
    Resp {
        status,
        body: body.collect().await,
    }
}

// ---------------------------------------------------------------------------------------------
// Clients: one type over the three transports, speaking JSON frames.

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// An open SSE stream and its parser. Dropping it closes the connection.
struct EventStream {
    body: HttpBody,
    buf: Vec<u8>,
}

impl EventStream {
    /// The next event with data, as `(event name, data)`; comments and `retry:` skipped.
    async fn next(&mut self) -> (String, String) {
        loop {
            if let Some(pos) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buf.drain(..pos + 2).collect();
                let text = String::from_utf8(block).expect("SSE is UTF-8");
                let (mut event, mut data) = (String::new(), Vec::new());
                for line in text.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        event = v.trim_start().to_owned();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push(v.strip_prefix(' ').unwrap_or(v).to_owned());
                    }
                }
                if !data.is_empty() {
                    return (event, data.join("\n"));
                }
                continue;
            }
            let data = self.body.next_data().await.expect("the event stream ended");
            self.buf.extend_from_slice(&data);
        }
    }
}

enum Conn {
    Ws(Box<Ws>),
    Sse {
        stream: EventStream,
        /// The command URL (`/sse?session=<id>`).
        url: String,
        /// The stream's secret command token.
        token: String,
    },
    Poll {
        session: String,
        cursor: String,
        buffered: VecDeque<Value>,
    },
}

/// A client on any transport: connect, send frames, receive frames.
struct Client {
    addr: SocketAddr,
    kind: Kind,
    cred: Cred,
    conn: Conn,
    welcome: Value,
}

/// A refused connection: status and JSON body `{"code", "message"}`.
type Refusal = (StatusCode, Value);

impl Client {
    /// Connects with `cred` (and an `Origin` header, if given); reads `welcome`.
    async fn connect(
        addr: SocketAddr,
        kind: Kind,
        cred: &Cred,
        origin: Option<&str>,
    ) -> Result<Client, Refusal> {
        let mut headers = cred.headers();
        if let Some(o) = origin {
            headers.push(("origin", o.to_owned()));
        }
        let conn = match kind {
            Kind::Ws => {
                let mut req = format!("ws://{addr}{}", cred.uri("/ws"))
                    .into_client_request()
                    .unwrap();
                for (k, v) in &headers {
                    req.headers_mut().insert(*k, v.parse().unwrap());
                }
                match tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req))
                    .await
                    .expect("timed out connecting")
                {
                    Ok((ws, _)) => Conn::Ws(Box::new(ws)),
                    Err(tungstenite::Error::Http(resp)) => {
                        let status = StatusCode::from_u16(resp.status().as_u16()).unwrap();
                        let body = resp.body().clone().unwrap_or_default();
                        return Err((status, serde_json::from_slice(&body).unwrap()));
                    }
                    Err(e) => panic!("WebSocket connect failed: {e}"),
                }
            }
            Kind::Sse => {
                headers.push(("accept", "text/event-stream".into()));
                let (status, _, body) =
                    send_request(addr, "GET", &cred.uri("/sse"), &headers, b"").await;
                if status != StatusCode::OK {
                    let body = body.collect().await;
                    return Err((status, serde_json::from_slice(&body).unwrap()));
                }
                Conn::Sse {
                    stream: EventStream {
                        body,
                        buf: Vec::new(),
                    },
                    url: String::new(),
                    token: String::new(),
                }
            }
            Kind::Poll => {
                let resp = http(addr, "POST", &cred.uri("/poll"), &headers, "").await;
                if resp.status != StatusCode::OK {
                    return Err((resp.status, resp.json()));
                }
                let open = resp.json();
                assert_eq!(open["cursor"], "0", "{open}");
                Conn::Poll {
                    session: open["session"].as_str().unwrap().to_owned(),
                    cursor: "0".into(),
                    buffered: VecDeque::new(),
                }
            }
        };
        let mut c = Client {
            addr,
            kind,
            cred: cred.clone(),
            conn,
            welcome: Value::Null,
        };
        c.welcome = c.recv().await;
        assert_eq!(c.welcome["type"], "welcome", "{}", c.welcome);
        if let Conn::Sse { stream, url, token } = &mut c.conn {
            let (event, data) = stream.next().await;
            assert_eq!(event, "session");
            let s: Value = serde_json::from_str(&data).unwrap();
            *url = s["commands"].as_str().unwrap().to_owned();
            *token = s["token"].as_str().unwrap().to_owned();
        }
        Ok(c)
    }

    /// Connects; the connection must be accepted.
    async fn open(addr: SocketAddr, kind: Kind, cred: &Cred) -> Client {
        match Client::connect(addr, kind, cred, None).await {
            Ok(c) => c,
            Err((status, body)) => panic!("{kind:?} connect refused: {status} {body}"),
        }
    }

    /// Sends one client frame (SSE and poll: a `POST` that must be accepted with 202).
    async fn send(&mut self, frame: Value) {
        match &mut self.conn {
            Conn::Ws(ws) => ws.send(Message::text(frame.to_string())).await.unwrap(),
            Conn::Sse { url, token, .. } => {
                let mut headers = self.cred.headers();
                headers.push(("hub-session-token", token.clone()));
                headers.push(("content-type", "application/json".into()));
                let resp = http(
                    self.addr,
                    "POST",
                    &self.cred.uri(url),
                    &headers,
                    frame.to_string(),
                )
                .await;
                assert_eq!(resp.status, StatusCode::ACCEPTED, "{:?}", resp.body);
            }
            Conn::Poll { session, .. } => {
                let uri = self.cred.uri(&format!("/poll?session={session}"));
                let resp = http(
                    self.addr,
                    "POST",
                    &uri,
                    &self.cred.headers(),
                    frame.to_string(),
                )
                .await;
                assert_eq!(resp.status, StatusCode::ACCEPTED, "{:?}", resp.body);
            }
        }
    }

    /// The next frame from the hub.
    async fn recv(&mut self) -> Value {
        match &mut self.conn {
            Conn::Ws(ws) => loop {
                let msg = tokio::time::timeout(WAIT, ws.next())
                    .await
                    .expect("timed out waiting for a frame")
                    .expect("the connection ended")
                    .expect("read error");
                match msg {
                    Message::Text(t) => return serde_json::from_str(&t).unwrap(),
                    Message::Ping(_) | Message::Pong(_) => continue,
                    other => panic!("unexpected {other:?}"),
                }
            },
            Conn::Sse { stream, .. } => {
                let (event, data) = stream.next().await;
                let v: Value = serde_json::from_str(&data).unwrap();
                assert_eq!(v["type"], event.as_str(), "event name is the frame's type");
                v
            }
            Conn::Poll {
                session,
                cursor,
                buffered,
            } => {
                let deadline = tokio::time::Instant::now() + WAIT;
                while buffered.is_empty() {
                    assert!(tokio::time::Instant::now() < deadline, "timed out polling");
                    let uri = self.cred.uri(&format!(
                        "/poll?session={session}&cursor={cursor}&wait=5000"
                    ));
                    let resp = http(self.addr, "GET", &uri, &self.cred.headers(), "").await;
                    assert_eq!(resp.status, StatusCode::OK, "{:?}", resp.body);
                    let batch = resp.json();
                    *cursor = batch["cursor"].as_str().unwrap().to_owned();
                    buffered.extend(batch["frames"].as_array().unwrap().iter().cloned());
                }
                buffered.pop_front().unwrap()
            }
        }
    }

    /// Sends `frame` with `id` and returns the answer with that `id` (`reply` or `error`).
    async fn request(&mut self, mut frame: Value, id: u64) -> Value {
        frame["id"] = json!(id);
        self.send(frame).await;
        let answer = self.recv().await;
        assert_eq!(
            answer["id"], id,
            "the answer to request {id} comes next: {answer}"
        );
        answer
    }
}

/// Expects a refusal with `status` and `code`.
fn assert_refused(result: Result<Client, Refusal>, status: u16, code: &str, what: &str) {
    match result {
        Ok(c) => panic!("{what}: {:?} connection accepted: {}", c.kind, c.welcome),
        Err((s, body)) => {
            assert_eq!(s.as_u16(), status, "{what}: {body}");
            assert_eq!(body["code"], code, "{what}: {body}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Tokens themselves.

#[test]
fn tokens_round_trip_and_refuse_tampering() {
    let keys = Keys::new(b"k1: a key of thirty-two bytes!!!".to_vec());
    let other = Keys::new(b"k2: another key, not the server!".to_vec());
    let now = 1_700_000_000;
    let t = keys.mint("ana", Role::Viewer, now + 10).unwrap();
    let claims = keys.verify(&t, now).unwrap();
    assert_eq!(claims.user, "ana");
    assert_eq!(claims.role, Role::Viewer);
    assert_eq!(claims.expiry, now + 10);
    // Valid while now < expiry.
    assert!(keys.verify(&t, now + 9).is_ok());
    assert_eq!(keys.verify(&t, now + 10), Err(auth::TokenError::Expired));
    // Another key's token, a payload swapped under the same MAC, garbage.
    let forged = other.mint("ana", Role::Publisher, now + 10).unwrap();
    assert_eq!(
        keys.verify(&forged, now),
        Err(auth::TokenError::BadSignature)
    );
    assert_eq!(
        keys.verify(&tampered(&t, "ana|publisher"), now),
        Err(auth::TokenError::BadSignature)
    );
    assert_eq!(
        keys.verify("not-a-token", now),
        Err(auth::TokenError::Malformed)
    );
    assert_eq!(keys.verify("", now), Err(auth::TokenError::Malformed));
    // User ids are checked when minting.
    assert!(keys.mint("a|b", Role::Viewer, now).is_none());
    assert!(keys.mint("", Role::Viewer, now).is_none());
}

/// `token` with its payload replaced by `user|role` and the same expiry, keeping the MAC.
fn tampered(token: &str, user_role: &str) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let (payload, mac) = token.split_once('.').unwrap();
    let payload = String::from_utf8(b64.decode(payload).unwrap()).unwrap();
    let expiry = payload.rsplit('|').next().unwrap();
    format!("{}.{mac}", b64.encode(format!("{user_role}|{expiry}")))
}

// ---------------------------------------------------------------------------------------------
// Refusals before any session.

#[tokio::test]
async fn expired_tokens_are_refused_before_any_session_on_every_transport() {
    let s = Server::start().await;
    let expired = s
        .keys
        .mint("ana", Role::Publisher, auth::unix_now() - 1)
        .unwrap();
    for kind in KINDS {
        for cred in [Cred::Query(expired.clone()), Cred::Bearer(expired.clone())] {
            let what = format!("{kind:?} with expired {cred:?}");
            let r = Client::connect(s.addr, kind, &cred, None).await;
            assert_refused(r, 401, "unauthorized", &what);
        }
    }
    // The refusals came before any session: none was ever opened.
    assert_eq!(s.hub.session_count(), 0);
    assert_eq!(s.hub.stats().sessions_opened, 0);

    // The same user with a fresh token gets in on every transport.
    let fresh = Cred::Query(s.token("ana", Role::Publisher));
    for kind in KINDS {
        Client::open(s.addr, kind, &fresh).await;
    }
    assert_eq!(s.hub.stats().sessions_opened, 3);
}

#[tokio::test]
async fn forged_tampered_and_missing_tokens_are_refused_on_every_transport() {
    let s = Server::start().await;
    let other = Keys::new(b"an attacker's key, not the hub's".to_vec());
    let forged = other
        .mint("ana", Role::Publisher, auth::unix_now() + 3600)
        .unwrap();
    let escalated = tampered(&s.token("ana", Role::Viewer), "ana|publisher");
    let impersonated = tampered(&s.token("eve", Role::Viewer), "ana|viewer");
    for kind in KINDS {
        for token in [
            &forged,
            &escalated,
            &impersonated,
            &"garbage.token".to_owned(),
        ] {
            for cred in [Cred::Query(token.clone()), Cred::Bearer(token.clone())] {
                let what = format!("{kind:?} with forged {cred:?}");
                let r = Client::connect(s.addr, kind, &cred, None).await;
                assert_refused(r, 403, "forbidden", &what);
            }
        }
        // Two valid tokens that disagree (query and header) are refused, whoever they are.
        let (ana, bo) = (s.token("ana", Role::Viewer), s.token("bo", Role::Viewer));
        let both = Client::connect(s.addr, kind, &Cred::Both(ana, bo), None).await;
        assert_refused(both, 403, "forbidden", &format!("{kind:?} with two tokens"));
        // No token at all is 401: the client may come back with one.
        let r = Client::connect(s.addr, kind, &Cred::None, None).await;
        assert_refused(r, 401, "unauthorized", &format!("{kind:?} without a token"));
    }
    assert_eq!(s.hub.session_count(), 0);
    assert_eq!(s.hub.stats().sessions_opened, 0);
}

// ---------------------------------------------------------------------------------------------
// Authorization of subscribe and publish.

/// Reads frames until a `message`; returns it. Frames other than messages must not be errors.
async fn next_message(c: &mut Client) -> Value {
    loop {
        let f = c.recv().await;
        match f["type"].as_str() {
            Some("message") => return f,
            Some("error") => panic!("{:?}: unexpected error {f}", c.kind),
            _ => {}
        }
    }
}

#[tokio::test]
async fn subscribing_outside_ones_rights_is_forbidden_and_delivers_nothing_on_every_transport() {
    let s = Server::start().await;
    let mut clients = Vec::new();
    for (i, kind) in KINDS.into_iter().enumerate() {
        let user = format!("ana{i}");
        let mut c =
            Client::open(s.addr, kind, &Cred::Bearer(s.token(&user, Role::Publisher))).await;
        // Another user's private topic, a topic outside `scores/`, and `scores/` alone.
        for (n, topic) in ["user/bo", "secret/plans", "scores/", "scoresx/1"]
            .into_iter()
            .enumerate()
        {
            let answer = c
                .request(json!({"type": "subscribe", "topic": topic}), 10 + n as u64)
                .await;
            assert_eq!(answer["type"], "error", "{kind:?} {topic}: {answer}");
            assert_eq!(answer["code"], "forbidden", "{kind:?} {topic}: {answer}");
        }
        // Within one's rights: one's own user topic, and the scores.
        let own = format!("user/{user}");
        let answer = c
            .request(json!({"type": "subscribe", "topic": own}), 20)
            .await;
        assert_eq!(answer["type"], "reply", "{kind:?}: {answer}");
        let answer = c
            .request(json!({"type": "subscribe", "topic": "scores/match-1"}), 21)
            .await;
        assert_eq!(answer["type"], "reply", "{kind:?}: {answer}");
        clients.push((user, c));
    }
    // Nobody is a member of what they were refused.
    for topic in ["user/bo", "secret/plans", "scoresx/1"] {
        assert!(s.hub.topic_members(topic).is_empty(), "{topic}");
    }
    assert_eq!(s.hub.topic_members("scores/match-1").len(), 3);

    // The server publishes to the refused topics first, then to what each may see: the first
    // message each client gets is its own, so nothing of the refused topics was queued.
    for topic in ["user/bo", "secret/plans", "scoresx/1"] {
        s.hub.publish(topic, &json!({"leak": topic})).unwrap();
    }
    for (user, _) in &clients {
        s.hub
            .publish(&format!("user/{user}"), &json!({"for": user}))
            .unwrap();
    }
    s.hub
        .publish("scores/match-1", &json!({"home": 1}))
        .unwrap();
    for (user, c) in &mut clients {
        let m = next_message(c).await;
        assert_eq!(m["topic"], format!("user/{user}"), "{:?}: {m}", c.kind);
        assert_eq!(m["data"], json!({"for": user}));
        let m = next_message(c).await;
        assert_eq!(m["topic"], "scores/match-1", "{:?}: {m}", c.kind);
        assert_eq!(m["offset"], 1);
    }

    // An SSE stream whose URL names a refused topic is refused outright, with no session left.
    let before = s.hub.stats();
    let token = s.token("ana", Role::Viewer);
    for path in [
        "/sse?topic=user/bo",
        "/sse?topic=scores/a&topic=secret/plans",
    ] {
        let r = http(s.addr, "GET", &format!("{path}&token={token}"), &[], "").await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{path}");
        assert_eq!(r.json()["code"], "forbidden", "{path}");
    }
    assert_eq!(s.hub.session_count(), 3);
    assert!(s.hub.topic_members("secret/plans").is_empty());
    assert_eq!(s.hub.stats().sessions, before.sessions);
}

#[tokio::test]
async fn only_publishers_publish_and_their_messages_reach_every_transport() {
    let s = Server::start().await;
    let mut subscribers = Vec::new();
    let mut viewers_publish = Vec::new();
    let mut publishers = Vec::new();
    for (i, kind) in KINDS.into_iter().enumerate() {
        let viewer = Cred::Query(s.token(&format!("viewer{i}"), Role::Viewer));
        let mut c = Client::open(s.addr, kind, &viewer).await;
        let answer = c
            .request(json!({"type": "subscribe", "topic": "scores/final"}), 1)
            .await;
        assert_eq!(answer["type"], "reply", "{kind:?}: {answer}");
        subscribers.push(c);
        viewers_publish.push(Client::open(s.addr, kind, &viewer).await);
        let publisher = Cred::Bearer(s.token(&format!("publisher{i}"), Role::Publisher));
        publishers.push(Client::open(s.addr, kind, &publisher).await);
    }

    // A viewer may not publish, on any transport; nothing is published.
    for v in &mut viewers_publish {
        let answer = v
            .request(
                json!({"type": "publish", "topic": "scores/final", "data": {"fake": true}}),
                7,
            )
            .await;
        assert_eq!(answer["type"], "error", "{:?}: {answer}", v.kind);
        assert_eq!(answer["code"], "forbidden", "{:?}: {answer}", v.kind);
    }
    // Nor may a publisher outside `scores/`.
    let answer = publishers[0]
        .request(
            json!({"type": "publish", "topic": "user/viewer0", "data": 1}),
            8,
        )
        .await;
    assert_eq!(answer["code"], "forbidden", "{answer}");
    assert_eq!(s.hub.stats().published, 0);

    // Each publisher publishes once, in turn; every subscriber gets all three, in order.
    for (i, p) in publishers.iter_mut().enumerate() {
        let answer = p
            .request(
                json!({"type": "publish", "topic": "scores/final", "data": {"by": i}}),
                9,
            )
            .await;
        assert_eq!(answer["type"], "reply", "{:?}: {answer}", p.kind);
        assert_eq!(answer["data"]["offset"], i as u64 + 1, "{answer}");
    }
    for c in &mut subscribers {
        for i in 0..3u64 {
            let m = next_message(c).await;
            assert_eq!(m["topic"], "scores/final", "{:?}: {m}", c.kind);
            assert_eq!(m["offset"], i + 1, "{:?}: {m}", c.kind);
            assert_eq!(m["data"], json!({"by": i}), "{:?}: {m}", c.kind);
        }
    }
    assert_eq!(s.hub.stats().published, 3);
}

// ---------------------------------------------------------------------------------------------
// Session binding: one user's session with another user's credentials.

#[tokio::test]
async fn an_sse_command_with_another_users_credentials_is_refused() {
    let s = Server::start().await;
    let ana = s.token("ana", Role::Publisher);
    let bo = s.token("bo", Role::Publisher);
    let mut c = Client::open(s.addr, Kind::Sse, &Cred::Bearer(ana.clone())).await;
    let Conn::Sse { url, token, .. } = &c.conn else {
        unreachable!()
    };
    let (url, token) = (url.clone(), token.clone());
    let frame = json!({"type": "subscribe", "topic": "user/ana", "id": 1}).to_string();
    let attempts = [
        (
            "bo's bearer",
            url.clone(),
            vec![("authorization", format!("Bearer {bo}"))],
        ),
        ("bo's ?token=", format!("{url}&token={bo}"), vec![]),
    ];
    for (what, uri, mut headers) in attempts {
        headers.push(("hub-session-token", token.clone()));
        let r = http(s.addr, "POST", &uri, &headers, frame.clone()).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{what}: {:?}", r.body);
        assert_eq!(r.json()["code"], "forbidden", "{what}");
    }
    // The session token with no credentials at all is not enough either.
    let r = http(
        s.addr,
        "POST",
        &url,
        &[("hub-session-token", token.clone())],
        frame.clone(),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{:?}", r.body);
    // Nothing of that ran; ana's own command does.
    let answer = c
        .request(json!({"type": "subscribe", "topic": "user/ana"}), 2)
        .await;
    assert_eq!(answer["type"], "reply", "{answer}");
    assert_eq!(s.hub.topic_members("user/ana").len(), 1);
}

#[tokio::test]
async fn a_poll_request_with_another_users_bearer_token_is_refused() {
    let s = Server::start().await;
    let ana = s.token("ana", Role::Publisher);
    let bo = s.token("bo", Role::Publisher);
    let mut c = Client::open(s.addr, Kind::Poll, &Cred::Bearer(ana)).await;
    let Conn::Poll { session, .. } = &c.conn else {
        unreachable!()
    };
    let session = session.clone();
    let bo_header = [("authorization", format!("Bearer {bo}"))];
    let r = http(
        s.addr,
        "GET",
        &format!("/poll?session={session}&cursor=1&wait=0"),
        &bo_header,
        "",
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{:?}", r.body);
    assert_eq!(r.json()["code"], "forbidden");
    let frame = json!({"type": "subscribe", "topic": "user/ana", "id": 1}).to_string();
    let r = http(
        s.addr,
        "POST",
        &format!("/poll?session={session}"),
        &bo_header,
        frame,
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{:?}", r.body);
    assert_eq!(r.json()["code"], "forbidden");
    // Nothing of that ran; ana's own command does.
    let answer = c
        .request(json!({"type": "subscribe", "topic": "user/ana"}), 2)
        .await;
    assert_eq!(answer["type"], "reply", "{answer}");
}

#[tokio::test]
async fn a_poll_request_with_another_users_query_token_is_refused() {
    let s = Server::start().await;
    let ana = s.token("ana", Role::Publisher);
    let bo = s.token("bo", Role::Publisher);
    // Opened the way a browser page would: the token in the URL.
    let mut c = Client::open(s.addr, Kind::Poll, &Cred::Query(ana)).await;
    let Conn::Poll { session, .. } = &c.conn else {
        unreachable!()
    };
    let session = session.clone();
    let r = http(
        s.addr,
        "GET",
        &format!("/poll?session={session}&cursor=1&wait=0&token={bo}"),
        &[],
        "",
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{:?}", r.body);
    assert_eq!(r.json()["code"], "forbidden");
    let frame = json!({"type": "subscribe", "topic": "user/ana", "id": 1}).to_string();
    let r = http(
        s.addr,
        "POST",
        &format!("/poll?session={session}&token={bo}"),
        &[],
        frame,
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{:?}", r.body);
    assert_eq!(r.json()["code"], "forbidden");
    let answer = c
        .request(json!({"type": "subscribe", "topic": "user/ana"}), 2)
        .await;
    assert_eq!(answer["type"], "reply", "{answer}");
}

// ---------------------------------------------------------------------------------------------
// Origins.

#[tokio::test]
async fn a_websocket_upgrade_from_a_foreign_origin_is_refused() {
    let s = Server::start().await;
    let cred = Cred::Query(s.token("ana", Role::Viewer));
    for kind in KINDS {
        for origin in ["https://evil.example", "http://app.example", "null"] {
            let r = Client::connect(s.addr, kind, &cred, Some(origin)).await;
            assert_refused(
                r,
                403,
                "origin_not_allowed",
                &format!("{kind:?} from {origin}"),
            );
        }
    }
    assert_eq!(s.hub.stats().sessions_opened, 0);
    // The page's own origin, and clients that send no Origin (not browsers), are let in.
    for kind in KINDS {
        let c = Client::connect(s.addr, kind, &cred, Some(APP_ORIGIN)).await;
        assert!(c.is_ok(), "{kind:?} from {APP_ORIGIN}");
        Client::open(s.addr, kind, &cred).await;
    }
    assert_eq!(s.hub.stats().sessions_opened, 6);
}
