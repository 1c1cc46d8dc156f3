//! Room-based chat: rooms, send-to-everyone-but-the-sender, presence, and custom events with
//! acknowledgements, socket.io style, over the hub's plain WebSocket protocol.
//!
//! Clients may not publish or join rooms by themselves (the hub's default hooks refuse both),
//! so everything a client does goes through custom events the server handles:
//!
//! | client event | data | server does | reply (the ack) |
//! | --- | --- | --- | --- |
//! | `join-room` | `{"room"}` | joins the sender to the room | `{"room", "history": [message, ...]}` |
//! | `leave-room` | `{"room"}` | removes the sender from the room | `null` |
//! | `chat-message` | `{"room", "text"}` | emits `new-message` to the room's other members | the stored message |
//! | `typing` | `{"room"}` | emits `typing` to the room's other members | `null` |
//!
//! A message is `{"id", "room", "from": {"session", "name"}, "text", "ts"}` (`ts`: Unix ms).
//! Rooms have presence events on: members get `join` / `leave` frames as people come and go,
//! and the page asks for the member list with a `presence` frame. The user's display name
//! comes from the WebSocket URL (`/ws?name=Ana`), read by the authenticate hook.
//!
//! ```text
//! cargo run --release --example chat                  # http://127.0.0.1:3001/
//! cargo run --release --example chat -- --addr 127.0.0.1:0
//! ```

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use axum::http::{header, HeaderValue};
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use axum::Router;
use hub::ws::WsService;
use hub::{
    async_trait, ConnectRequest, EventContext, HandlerError, HandlerResult, Hooks, Hub, Identity,
    Payload, Rejection,
};
use serde::{Deserialize, Serialize};

/// The chat page, served at `/`.
const PAGE: &str = include_str!("assets/chat.html");

/// The address served when `--addr` is not given.
const DEFAULT_ADDR: &str = "127.0.0.1:3001";

/// The rooms there are. A fixed list keeps the server's memory bounded.
const ROOMS: [&str; 4] = ["general", "random", "rust", "help"];

/// Messages kept per room for people who join later.
const HISTORY: usize = 50;

/// Longest message, in characters.
const MAX_TEXT: usize = 500;

/// Longest display name, in characters.
const MAX_NAME: usize = 20;

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
    /// The room it was said in.
    room: String,
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

/// `chat-message`: stores the message, sends it to everyone else in the room, and acks it to
/// the sender (who shows its own copy from the ack).
fn chat_message(chat: &Chat, ctx: &EventContext, data: &Payload) -> HandlerResult {
    let req: SendRequest = data.decode()?;
    let room = room(&req.room)?;
    if !in_room(ctx, room) {
        return Err(HandlerError::new(format!("join {room} first")));
    }
    let text = req.text.trim();
    if text.is_empty() {
        return Err(HandlerError::new("empty message"));
    }
    if text.chars().count() > MAX_TEXT {
        return Err(HandlerError::new(format!(
            "messages are at most {MAX_TEXT} characters"
        )));
    }
    let msg = ChatMessage {
        id: chat.next_id.fetch_add(1, Ordering::Relaxed) + 1,
        room: room.to_owned(),
        from: From {
            session: ctx.session_id().to_string(),
            name: name_of(ctx),
        },
        text: text.to_owned(),
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

/// Names each session from the `name` query parameter of its WebSocket URL.
struct NameFromQuery {
    guests: AtomicU64,
}

#[async_trait]
impl Hooks for NameFromQuery {
    async fn authenticate(&self, req: &ConnectRequest) -> Result<Identity, Rejection> {
        let wanted = req.query("name").unwrap_or_default();
        let mut name: String = wanted
            .trim()
            .chars()
            .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_' | '.'))
            .take(MAX_NAME)
            .collect();
        name = name.trim().to_owned();
        if name.is_empty() {
            let n = self.guests.fetch_add(1, Ordering::Relaxed) + 1;
            name = format!("guest-{n}");
        }
        let meta = serde_json::json!({ "name": name });
        Ok(Identity::user(name).with_meta(meta))
    }
}

/// The chat's hub: the name hook, room presence events, and the event handlers.
fn build_hub() -> Hub {
    let chat = Arc::new(Chat::default());
    let (c1, c2) = (chat.clone(), chat);
    Hub::builder()
        .hooks(NameFromQuery {
            guests: AtomicU64::new(0),
        })
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
        .on_event("typing", |ctx: EventContext, data: Payload| async move {
            typing(&ctx, &data)
        })
        .build()
}

/// The HTTP routes, all in one place.
fn router(hub: &Hub) -> Router {
    Router::new()
        .route("/", get(page))
        .route_service("/ws", WsService::new(hub.clone()))
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
    let hub = build_hub();
    if let Err(e) = axum::serve(listener, router(&hub)).await {
        eprintln!("chat: server error: {e}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
