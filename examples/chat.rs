//! Room-based chat on hub.js: rooms, send-to-everyone-but-the-sender, presence, typing,
//! private messages and a notification room per user, with acknowledgements, socket.io style.
//!
//! The page (`/`) uses hub.js (`/hub.js`): WebSocket, or server-sent events, or long-polling
//! (`?transport=ws|sse|poll` forces one). Clients may not publish or join rooms by themselves
//! (the hub's default hooks refuse both), so everything a client does goes through custom
//! events the server handles:
//!
//! | client event | data | server does | reply (the ack) |
//! | --- | --- | --- | --- |
//! | `join-room` | `{"room"}` | joins the sender to the room | `{"room", "history": [message, ...]}` |
//! | `leave-room` | `{"room"}` | removes the sender from the room | `null` |
//! | `chat-message` | `{"room", "text"}` | emits `new-message` to the room's other members; a `notification` to each `@name` mentioned | the stored message |
//! | `typing` | `{"room"}` | emits `typing` to the room's other members | `null` |
//! | `private-message` | `{"to", "text"}` | emits `private-message` to every session of `to` (and of the sender but this one), and a `notification` to `to` | the message |
//!
//! A message is `{"id", "room", "from": {"session", "name"}, "text", "ts"}` (`ts`: Unix ms); a
//! private message has `to` instead of `room`. A notification is `{"kind": "private" |
//! "mention", "from", "text", "room"?, "ts"}`.
//!
//! **Names.** The page connects with `?name=<name>&key=<key>`: the key is a random string the
//! page keeps for the tab, so that its reconnections keep the name. The authenticate hook
//! checks the name on every connection (and on every SSE or long-polling request): 1 to 20
//! letters, digits, spaces, `-`, `_` or `.` (else 403 `forbidden`, "names are ..."), and not
//! held by another key while that one is connected (else 403 `forbidden`, "the name ... is
//! taken"). A name is held from the first session that uses it until its last ends.
//!
//! **Per-user room.** Every session of user `ana` is in the room `user:ana` from its start (the
//! `on_connect` hook joins it), so that private messages and notifications reach all of Ana's
//! tabs, on any transport.
//!
//! Rooms have presence events on: members get `join` / `leave` frames as people come and go,
//! and the page asks for the member list with a `presence` frame.
//!
//! ```text
//! cargo run --release --example chat                  # http://127.0.0.1:3001/
//! cargo run --release --example chat -- --addr 127.0.0.1:0
//! ```

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use axum::http::{header, HeaderValue};
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use axum::Router;
use livehub::js::HubJs;
use livehub::poll::PollService;
use livehub::sse::SseService;
use livehub::ws::WsService;
use livehub::{
    async_trait, ConnectRequest, DisconnectReason, EventContext, HandlerError, HandlerResult,
    Hooks, Hub, HubBuilder, Identity, Payload, Rejection, SessionInfo,
};
use serde::{Deserialize, Serialize};

/// The chat page, served at `/`.
const PAGE: &str = include_str!("assets/chat.html");

/// The address served when `--addr` is not given.
const DEFAULT_ADDR: &str = "127.0.0.1:3001";

/// How long a shutdown waits for clients to get their last frames.
const GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// The rooms there are. A fixed list keeps the server's memory bounded.
const ROOMS: [&str; 4] = ["general", "random", "rust", "help"];

/// Messages kept per room for people who join later.
const HISTORY: usize = 50;

/// Longest message, in characters.
const MAX_TEXT: usize = 500;

/// Longest display name, in characters.
const MAX_NAME: usize = 20;

/// Longest name key (the page's random per-tab secret), in bytes.
const MAX_KEY: usize = 64;

/// Who sent a message.
#[derive(Debug, Clone, Serialize)]
struct From {
    /// The sender's session (as presence shows it).
    session: String,
    /// The sender's display name.
    name: String,
}

/// One chat message, as stored and sent.
#[derive(Debug, Clone, Serialize)]
struct ChatMessage {
    /// Server-assigned, increasing.
    id: u64,
    /// The room it was said in (absent for a private message).
    #[serde(skip_serializing_if = "Option::is_none")]
    room: Option<String>,
    /// Whom it was said to (a private message only).
    #[serde(skip_serializing_if = "Option::is_none")]
    to: Option<String>,
    /// Who said it.
    from: From,
    /// What was said.
    text: String,
    /// When, in Unix milliseconds.
    ts: u64,
}

/// The `data` of `join-room`, `leave-room` and `typing`.
#[derive(Debug, Deserialize)]
struct RoomRequest {
    room: String,
}

/// The `data` of `chat-message`.
#[derive(Debug, Deserialize)]
struct SendRequest {
    room: String,
    text: String,
}

/// The `data` of `private-message`.
#[derive(Debug, Deserialize)]
struct PrivateRequest {
    to: String,
    text: String,
}

/// The server's chat state: the recent messages of each room.
#[derive(Default)]
struct Chat {
    next_id: AtomicU64,
    history: Mutex<HashMap<&'static str, VecDeque<ChatMessage>>>,
}

impl Chat {
    fn history(&self) -> std::sync::MutexGuard<'_, HashMap<&'static str, VecDeque<ChatMessage>>> {
        self.history.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The room named `name`, if it exists.
fn room(name: &str) -> Result<&'static str, HandlerError> {
    ROOMS
        .into_iter()
        .find(|r| *r == name)
        .ok_or_else(|| HandlerError::new(format!("no room {name:?}; rooms: {}", ROOMS.join(", "))))
}

/// The sender's display name (set at connect).
fn name_of(ctx: &EventContext) -> String {
    ctx.identity().user_id().to_owned()
}

fn in_room(ctx: &EventContext, room: &str) -> bool {
    ctx.hub()
        .rooms_of(ctx.session_id())
        .iter()
        .any(|r| r == room)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// `join-room`: joins the room; the ack carries its recent messages.
async fn join_room(chat: &Chat, ctx: &EventContext, data: &Payload) -> HandlerResult {
    let req: RoomRequest = data.decode()?;
    let room = room(&req.room)?;
    ctx.join(room)
        .await
        .map_err(|e| HandlerError::new(format!("cannot join {room}: {e}")))?;
    let history: Vec<ChatMessage> = chat
        .history()
        .get(room)
        .map(|h| h.iter().cloned().collect())
        .unwrap_or_default();
    let ack = serde_json::json!({ "room": room, "history": history });
    Ok(Some(Payload::from_value(&ack)?))
}

/// `leave-room`: leaves the room.
fn leave_room(ctx: &EventContext, data: &Payload) -> HandlerResult {
    let req: RoomRequest = data.decode()?;
    let room = room(&req.room)?;
    ctx.leave(room)
        .map_err(|e| HandlerError::new(format!("cannot leave {room}: {e}")))?;
    Ok(None)
}

/// Checks a message's text: trimmed, not empty, at most [`MAX_TEXT`] characters.
fn text_of(text: &str) -> Result<String, HandlerError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(HandlerError::new("empty message"));
    }
    if text.chars().count() > MAX_TEXT {
        return Err(HandlerError::new(format!(
            "messages are at most {MAX_TEXT} characters"
        )));
    }
    Ok(text.to_owned())
}

/// The per-user room of `name`: every session of that user is in it.
fn user_room(name: &str) -> String {
    format!("user:{name}")
}

/// `chat-message`: stores the message, sends it to everyone else in the room, notifies the
/// users it mentions (`@name`), and acks it to the sender (who shows its own copy from the
/// ack).
fn chat_message(chat: &Chat, ctx: &EventContext, data: &Payload) -> HandlerResult {
    let req: SendRequest = data.decode()?;
    let room = room(&req.room)?;
    if !in_room(ctx, room) {
        return Err(HandlerError::new(format!("join {room} first")));
    }
    let text = text_of(&req.text)?;
    let from = From {
        session: ctx.session_id().to_string(),
        name: name_of(ctx),
    };
    let msg = ChatMessage {
        id: chat.next_id.fetch_add(1, Ordering::Relaxed) + 1,
        room: Some(room.to_owned()),
        to: None,
        from: from.clone(),
        text: text.clone(),
        ts: now_ms(),
    };
    {
        let mut history = chat.history();
        let h = history.entry(room).or_default();
        h.push_back(msg.clone());
        while h.len() > HISTORY {
            h.pop_front();
        }
    }
    ctx.hub()
        .to(room)
        .except(ctx.session_id())
        .emit("new-message", &msg)?;
    // Mentions: a notification in each mentioned user's room (once per user).
    let mut told: Vec<&str> = Vec::new();
    for word in text.split_whitespace() {
        let Some(name) = word.strip_prefix('@') else {
            continue;
        };
        let name = name.trim_end_matches(|c: char| !c.is_alphanumeric());
        if name.is_empty() || name == from.name || told.contains(&name) {
            continue;
        }
        told.push(name);
        let note = serde_json::json!({
            "kind": "mention", "from": &from, "room": room, "text": &text, "ts": msg.ts,
        });
        ctx.hub().to(user_room(name)).emit("notification", &note)?;
    }
    Ok(Some(Payload::from_value(&msg)?))
}

/// `private-message`: to every session of the addressee (and the sender's other sessions),
/// with a notification for the addressee. Refused when the addressee is not connected.
fn private_message(
    chat: &Chat,
    names: &Names,
    ctx: &EventContext,
    data: &Payload,
) -> HandlerResult {
    let req: PrivateRequest = data.decode()?;
    let text = text_of(&req.text)?;
    let me = name_of(ctx);
    if req.to == me {
        return Err(HandlerError::new("that is you"));
    }
    if !names.online(&req.to) {
        return Err(HandlerError::new(format!("{} is not online", req.to)));
    }
    let msg = ChatMessage {
        id: chat.next_id.fetch_add(1, Ordering::Relaxed) + 1,
        room: None,
        to: Some(req.to.clone()),
        from: From {
            session: ctx.session_id().to_string(),
            name: me.clone(),
        },
        text,
        ts: now_ms(),
    };
    ctx.hub()
        .to(user_room(&req.to))
        .to(user_room(&me))
        .except(ctx.session_id())
        .emit("private-message", &msg)?;
    let note = serde_json::json!({
        "kind": "private", "from": &msg.from, "text": &msg.text, "ts": msg.ts,
    });
    ctx.hub()
        .to(user_room(&req.to))
        .emit("notification", &note)?;
    Ok(Some(Payload::from_value(&msg)?))
}

/// `typing`: tells the room's other members that the sender is typing.
fn typing(ctx: &EventContext, data: &Payload) -> HandlerResult {
    let req: RoomRequest = data.decode()?;
    let room = room(&req.room)?;
    if in_room(ctx, room) {
        let who = serde_json::json!({
            "room": room, "session": ctx.session_id().to_string(), "name": name_of(ctx),
        });
        ctx.hub()
            .to(room)
            .except(ctx.session_id())
            .emit("typing", &who)?;
    }
    Ok(None)
}

/// Who holds a name: the key of the page that took it, and how many of its sessions are open.
struct Claim {
    key: String,
    sessions: usize,
}

/// The names in use. Bounded by the hub's session limit: an entry lives while one of its
/// sessions does.
#[derive(Default)]
pub(crate) struct Names {
    held: Mutex<HashMap<String, Claim>>,
}

impl Names {
    fn held(&self) -> MutexGuard<'_, HashMap<String, Claim>> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether `name` is free, or held by `key`.
    fn available(&self, name: &str, key: &str) -> bool {
        self.held().get(name).is_none_or(|c| c.key == key)
    }

    /// Takes `name` for `key` (one more session); false if another key holds it.
    fn take(&self, name: &str, key: &str) -> bool {
        let mut held = self.held();
        let claim = held.entry(name.to_owned()).or_insert_with(|| Claim {
            key: key.to_owned(),
            sessions: 0,
        });
        if claim.key != key {
            return false;
        }
        claim.sessions += 1;
        true
    }

    /// One session of `name` (held by `key`) ended.
    fn release(&self, name: &str, key: &str) {
        let mut held = self.held();
        if let Some(claim) = held.get_mut(name) {
            if claim.key == key {
                claim.sessions = claim.sessions.saturating_sub(1);
                if claim.sessions == 0 {
                    held.remove(name);
                }
            }
        }
    }

    fn online(&self, name: &str) -> bool {
        self.held().contains_key(name)
    }
}

/// The key a session's name was taken with, kept in its identity (server-side only).
struct NameKey(String);

/// The chat's hooks: names from the query, checked against the names in use; every session
/// joins its user's room.
pub(crate) struct ChatHooks {
    names: Arc<Names>,
}

/// Checks a wanted name: the cleaned name, or why not.
fn check_name(wanted: &str) -> Result<String, Rejection> {
    let name = wanted.trim();
    if name.is_empty() {
        return Err(Rejection::unauthorized("pick a name first"));
    }
    let ok = name.chars().count() <= MAX_NAME
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_' | '.'));
    if !ok {
        return Err(Rejection::forbidden(format!(
            "names are 1 to {MAX_NAME} letters, digits, spaces, '-', '_' or '.'"
        )));
    }
    Ok(name.to_owned())
}

#[async_trait]
impl Hooks for ChatHooks {
    async fn authenticate(&self, req: &ConnectRequest) -> Result<Identity, Rejection> {
        let name = check_name(&req.query("name").unwrap_or_default())?;
        let key = req.query("key").unwrap_or_default().into_owned();
        if key.is_empty() || key.len() > MAX_KEY {
            return Err(Rejection::unauthorized("a key (1 to 64 bytes) is needed"));
        }
        if !self.names.available(&name, &key) {
            return Err(Rejection::forbidden(format!(
                "the name \"{name}\" is taken: pick another"
            )));
        }
        let meta = serde_json::json!({ "name": name });
        Ok(Identity::user(name).with_meta(meta).with_data(NameKey(key)))
    }

    async fn on_connect(&self, hub: &Hub, session: &SessionInfo) {
        let name = session.identity.user_id();
        let Some(NameKey(key)) = session.identity.data::<NameKey>() else {
            return;
        };
        if !self.names.take(name, key) {
            // Another page took the name between this one's check and now.
            hub.disconnect(session.id);
            return;
        }
        if let Err(e) = hub.join(session.id, &user_room(name)).await {
            tracing::warn!(error = %e, "cannot join the user's room");
        }
    }

    fn on_disconnect(&self, session: &SessionInfo, _reason: DisconnectReason) {
        if let Some(NameKey(key)) = session.identity.data::<NameKey>() {
            self.names.release(session.identity.user_id(), key);
        }
    }
}

/// The chat's hub: the name hook, room presence events, and the event handlers, on `builder`
/// (for its limits: `Hub::builder()` in the example).
pub(crate) fn build_hub(builder: HubBuilder) -> Hub {
    let chat = Arc::new(Chat::default());
    let names = Arc::new(Names::default());
    let (c1, c2, c3, n3) = (chat.clone(), chat.clone(), chat, names.clone());
    builder
        .hooks(ChatHooks { names })
        .room_presence_events(true)
        .on_event("join-room", move |ctx: EventContext, data: Payload| {
            let chat = c1.clone();
            async move { join_room(&chat, &ctx, &data).await }
        })
        .on_event(
            "leave-room",
            |ctx: EventContext, data: Payload| async move { leave_room(&ctx, &data) },
        )
        .on_event("chat-message", move |ctx: EventContext, data: Payload| {
            let chat = c2.clone();
            async move { chat_message(&chat, &ctx, &data) }
        })
        .on_event(
            "private-message",
            move |ctx: EventContext, data: Payload| {
                let (chat, names) = (c3.clone(), n3.clone());
                async move { private_message(&chat, &names, &ctx, &data) }
            },
        )
        .on_event("typing", |ctx: EventContext, data: Payload| async move {
            typing(&ctx, &data)
        })
        .build()
}

/// The HTTP routes, all in one place: the page, hub.js and the three transports.
pub(crate) fn router(hub: &Hub) -> Router {
    Router::new()
        .route("/", get(page))
        .route_service("/hub.js", HubJs::script())
        .route_service("/ws", WsService::new(hub.clone()))
        .route_service("/events", SseService::new(hub.clone()))
        .route_service("/poll", PollService::new(hub.clone()))
}

/// `GET /`: the chat page.
async fn page() -> impl IntoResponse {
    (
        [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
        Html(PAGE),
    )
}

/// Parses `--addr <ip:port>` / `--addr=<ip:port>`; `Ok(None)` for `--help`.
fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Option<SocketAddr>, String> {
    let mut addr = DEFAULT_ADDR.to_owned();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-h" | "--help" => return Ok(None),
            "--addr" => addr = args.next().ok_or("--addr needs a value (ip:port)")?,
            other => match other.strip_prefix("--addr=") {
                Some(value) => addr = value.to_owned(),
                None => return Err(format!("unknown argument {other:?}")),
            },
        }
    }
    addr.parse()
        .map(Some)
        .map_err(|e| format!("bad --addr {addr:?}: {e} (expected ip:port)"))
}

const USAGE: &str = "usage: chat [--addr <ip:port>]   (default 127.0.0.1:3001; port 0 picks one)";

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let addr = match parse_args(std::env::args().skip(1)) {
        Ok(Some(addr)) => addr,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("chat: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("chat: cannot listen on {addr}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let local = listener.local_addr().unwrap_or(addr);
    println!("chat: http://{local}/");
    let hub = build_hub(Hub::builder());
    // Ctrl-C: every session is told (close 1001 `shutdown`, a last SSE or poll `close`) before
    // the server stops.
    let stop = livehub::shutdown_signal(&hub, tokio::signal::ctrl_c(), GRACE);
    if let Err(e) = axum::serve(listener, router(&hub))
        .with_graceful_shutdown(stop)
        .await
    {
        eprintln!("chat: server error: {e}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
