//! The token-authentication example (`examples/auth.rs`) against its promises, on all three
//! transports, with real clients over loopback sockets: a tokio-tungstenite WebSocket client,
//! and a small HTTP/1.1 client over `TcpStream` for server-sent events and long-polling.
//!
//! - expired, forged, tampered and missing JWTs are refused (401/403) before any session
//!   exists, whether the token comes as `?token=` or `Authorization: Bearer`; so are tokens
//!   signed with the server's key but not as it signs (`alg: none`, HS512, another issuer or
//!   audience);
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

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use auth::{Keys, Role};
use common::{http, recv_json, send_json, send_request, serve_router, Conn, Kind, Polling, KINDS};
use http::StatusCode;
use livehub::Hub;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

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
        let keys = Keys::new(KEY);
        let hub = auth::build_hub(keys.clone(), &[APP_ORIGIN.to_owned()]);
        let addr = serve_router(auth::router(&hub)).await;
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

// ---------------------------------------------------------------------------------------------
// Clients: one type over the three transports, speaking JSON frames.

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
                    send_request(addr, "GET", &cred.uri("/sse"), &headers, b"", WAIT).await;
                if status != StatusCode::OK {
                    let body = body.collect().await;
                    return Err((status, serde_json::from_slice(&body).unwrap()));
                }
                Conn::sse(body)
            }
            Kind::Poll => {
                let resp = http(addr, "POST", &cred.uri("/poll"), &headers, "", WAIT).await;
                if resp.status != StatusCode::OK {
                    return Err((resp.status, resp.json()));
                }
                let open = resp.json();
                assert_eq!(open["cursor"], "0", "{open}");
                Conn::Poll(Polling::new(&open))
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
            (*url, *token) = stream.session().await;
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
            Conn::Ws(ws) => send_json(ws, frame).await,
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
                    WAIT,
                )
                .await;
                assert_eq!(resp.status, StatusCode::ACCEPTED, "{:?}", resp.body);
            }
            Conn::Poll(p) => {
                let uri = self.cred.uri(&format!("/poll?session={}", p.session));
                let resp = http(
                    self.addr,
                    "POST",
                    &uri,
                    &self.cred.headers(),
                    frame.to_string(),
                    WAIT,
                )
                .await;
                assert_eq!(resp.status, StatusCode::ACCEPTED, "{:?}", resp.body);
            }
        }
    }

    /// The next frame from the hub.
    async fn recv(&mut self) -> Value {
        match &mut self.conn {
            Conn::Ws(ws) => recv_json(ws, WAIT).await,
            Conn::Sse { stream, .. } => stream.next_frame().await,
            Conn::Poll(p) => {
                let deadline = tokio::time::Instant::now() + WAIT;
                loop {
                    if let Some(frame) = p.pop() {
                        return frame;
                    }
                    assert!(tokio::time::Instant::now() < deadline, "timed out polling");
                    let uri = self.cred.uri(&p.next_poll());
                    let resp = http(self.addr, "GET", &uri, &self.cred.headers(), "", WAIT).await;
                    p.take(&resp);
                }
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
    let keys = Keys::new(KEY);
    let other = Keys::new(b"k2: another key, not the server!");
    let now = 1_700_000_000;
    let t = keys.mint("ana", Role::Viewer, now + 10).unwrap();
    // A JWT: header, claims, signature.
    assert_eq!(t.split('.').count(), 3, "{t}");
    let claims = keys.verify(&t, now).unwrap();
    assert_eq!(claims.user, "ana");
    assert_eq!(claims.role, Role::Viewer);
    assert_eq!(claims.expiry, now + 10);
    // Valid while now < expiry.
    assert!(keys.verify(&t, now + 9).is_ok());
    assert_eq!(keys.verify(&t, now + 10), Err(auth::TokenError::Expired));
    // Another key's token, claims swapped under the same signature, garbage.
    let forged = other.mint("ana", Role::Publisher, now + 10).unwrap();
    assert_eq!(
        keys.verify(&forged, now),
        Err(auth::TokenError::BadSignature)
    );
    assert_eq!(
        keys.verify(&tampered(&t, "ana", "publisher"), now),
        Err(auth::TokenError::BadSignature)
    );
    assert_eq!(
        keys.verify("not-a-token", now),
        Err(auth::TokenError::Malformed)
    );
    assert_eq!(keys.verify("", now), Err(auth::TokenError::Malformed));
    // Signed with the server's key, but not as it signs: unsigned (`alg: none`), another
    // algorithm, another issuer or audience, a user id outside the rules.
    for token in foreign_tokens(now + 10) {
        assert_eq!(
            keys.verify(&token, now),
            Err(auth::TokenError::Malformed),
            "{token}"
        );
    }
    // User ids are checked when minting.
    assert!(keys.mint("a|b", Role::Viewer, now).is_none());
    assert!(keys.mint("", Role::Viewer, now).is_none());
}

/// The server's test key (see [`Server::start`]).
const KEY: &[u8] = b"the test key: 32 bytes or more!!";

/// Tokens signed with the server's key (or not signed at all) that are not tokens of the
/// server's: each must be refused as malformed.
fn foreign_tokens(exp: u64) -> Vec<String> {
    use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let claims = |sub: &str, iss: &str, aud: &str| auth::TokenClaims {
        sub: sub.to_owned(),
        role: Role::Publisher,
        exp,
        iat: exp - 10,
        iss: iss.to_owned(),
        aud: aud.to_owned(),
    };
    let key = EncodingKey::from_secret(KEY);
    let sign = |alg, c: &auth::TokenClaims| encode(&Header::new(alg), c, &key).unwrap();
    let ours = claims("ana", auth::ISSUER, auth::AUDIENCE);
    use base64::Engine as _;
    let unsigned = format!(
        "{}.{}.",
        b64.encode(r#"{"alg":"none","typ":"JWT"}"#),
        b64.encode(serde_json::to_vec(&ours).unwrap())
    );
    vec![
        unsigned,
        sign(Algorithm::HS512, &ours),
        sign(
            Algorithm::HS256,
            &claims("ana", "someone-else", auth::AUDIENCE),
        ),
        sign(
            Algorithm::HS256,
            &claims("ana", auth::ISSUER, "another-service"),
        ),
        sign(
            Algorithm::HS256,
            &claims("a|b", auth::ISSUER, auth::AUDIENCE),
        ),
    ]
}

/// `token` with its claims' user and role replaced, keeping the header and the signature.
fn tampered(token: &str, user: &str, role: &str) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut parts = token.split('.');
    let (header, claims, signature) = (
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap(),
    );
    let mut claims: Value = serde_json::from_slice(&b64.decode(claims).unwrap()).unwrap();
    claims["sub"] = json!(user);
    claims["role"] = json!(role);
    let claims = b64.encode(serde_json::to_vec(&claims).unwrap());
    format!("{header}.{claims}.{signature}")
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
    let other = Keys::new(b"an attacker's key, not the hub's");
    let forged = other
        .mint("ana", Role::Publisher, auth::unix_now() + 3600)
        .unwrap();
    let escalated = tampered(&s.token("ana", Role::Viewer), "ana", "publisher");
    let impersonated = tampered(&s.token("eve", Role::Viewer), "ana", "viewer");
    let mut bad = vec![forged, escalated, impersonated, "garbage.token".to_owned()];
    bad.extend(foreign_tokens(auth::unix_now() + 3600));
    for kind in KINDS {
        for token in &bad {
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
        assert!(
            s.hub.topic_members(topic).await.unwrap().is_empty(),
            "{topic}"
        );
    }
    assert_eq!(
        s.hub.topic_members("scores/match-1").await.unwrap().len(),
        3
    );

    // The server publishes to the refused topics first, then to what each may see: the first
    // message each client gets is its own, so nothing of the refused topics was queued.
    for topic in ["user/bo", "secret/plans", "scoresx/1"] {
        s.hub.publish(topic, &json!({"leak": topic})).await.unwrap();
    }
    for (user, _) in &clients {
        s.hub
            .publish(&format!("user/{user}"), &json!({"for": user}))
            .await
            .unwrap();
    }
    s.hub
        .publish("scores/match-1", &json!({"home": 1}))
        .await
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
        let r = http(
            s.addr,
            "GET",
            &format!("{path}&token={token}"),
            &[],
            "",
            WAIT,
        )
        .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{path}");
        assert_eq!(r.json()["code"], "forbidden", "{path}");
    }
    assert_eq!(s.hub.session_count(), 3);
    assert!(s
        .hub
        .topic_members("secret/plans")
        .await
        .unwrap()
        .is_empty());
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
        let r = http(s.addr, "POST", &uri, &headers, frame.clone(), WAIT).await;
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
        WAIT,
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{:?}", r.body);
    // Nothing of that ran; ana's own command does.
    let answer = c
        .request(json!({"type": "subscribe", "topic": "user/ana"}), 2)
        .await;
    assert_eq!(answer["type"], "reply", "{answer}");
    assert_eq!(s.hub.topic_members("user/ana").await.unwrap().len(), 1);
}

/// Opens a poll session as ana, with her token presented as `cred` makes it, then polls and
/// sends a command on it with bo's token presented the same way: both are refused with 403
/// `forbidden`, and ana's own command still runs.
async fn another_users_poll_requests_are_refused(cred: fn(String) -> Cred) {
    let s = Server::start().await;
    let ana = s.token("ana", Role::Publisher);
    let bo = s.token("bo", Role::Publisher);
    let mut c = Client::open(s.addr, Kind::Poll, &cred(ana)).await;
    let other = cred(bo);
    let Conn::Poll(p) = &c.conn else {
        unreachable!()
    };
    let session = p.session.clone();
    let frame = json!({"type": "subscribe", "topic": "user/ana", "id": 1}).to_string();
    for (method, path, body) in [
        (
            "GET",
            format!("/poll?session={session}&cursor=1&wait=0"),
            "",
        ),
        ("POST", format!("/poll?session={session}"), frame.as_str()),
    ] {
        let r = http(
            s.addr,
            method,
            &other.uri(&path),
            &other.headers(),
            body,
            WAIT,
        )
        .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{:?}", r.body);
        assert_eq!(r.json()["code"], "forbidden");
    }
    // Nothing of that ran; ana's own command does.
    let answer = c
        .request(json!({"type": "subscribe", "topic": "user/ana"}), 2)
        .await;
    assert_eq!(answer["type"], "reply", "{answer}");
}

#[tokio::test]
async fn a_poll_request_with_another_users_bearer_token_is_refused() {
    another_users_poll_requests_are_refused(Cred::Bearer).await;
}

#[tokio::test]
async fn a_poll_request_with_another_users_query_token_is_refused() {
    // Opened the way a browser page would: the token in the URL.
    another_users_poll_requests_are_refused(Cred::Query).await;
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
