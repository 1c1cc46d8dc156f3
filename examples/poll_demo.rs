//! The XMLHttpRequest-only scoreboard (`assets/sports_poll.html`) on the long-polling
//! transport, with a few fake matches: a small demo of mounting livehub-poll.
//!
//! ```text
//! cargo run --example poll_demo                       # http://127.0.0.1:3003/
//! cargo run --example poll_demo -- --addr 127.0.0.1:0 # any free port
//! ```
//!
//! Three matches, each its own: kicked off at another time (so their clocks differ), with its
//! own attack rates (so their scores differ), replaced by a new pairing after full time. The
//! full sports demo is `sports_scores`; this one only exercises the page and the transport.
//! `GET /matches` is the board now (with the position of `scores/all` it reflects in
//! `x-scores-epoch` / `x-scores-offset`), which the page draws before it follows the updates.
//! Ctrl-C shuts the hub down gracefully ([`livehub::shutdown_signal`]): every waiting poll gets
//! its last frames and a `close` (`shutdown`).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use axum::Router;
use livehub::poll::PollService;
use livehub::{Hub, Position};
use serde_json::{json, Value};

const PAGE: &str = include_str!("assets/sports_poll.html");

/// The address served when `--addr` is not given (the chat example has 3001).
const DEFAULT_ADDR: &str = "127.0.0.1:3003";

/// How long a shutdown waits for the polls to get their last frames.
const GRACE: Duration = Duration::from_secs(5);

/// Team names the pairings are drawn from.
const TEAMS: [&str; 10] = [
    "Lions", "Tigers", "Eagles", "Wolves", "Sharks", "Falcons", "Bears", "Owls", "Rams", "Foxes",
];

/// The board: every match's last state, and the position of `scores/all` it reflects.
#[derive(Clone, Default)]
struct Board(Arc<Mutex<(Vec<Value>, Option<Position>)>>);

#[tokio::main]
async fn main() -> std::io::Result<()> {
    // `--addr <ip:port>` (or `--addr=<ip:port>`), as every example takes it; a bare address
    // is accepted too.
    let mut addr = DEFAULT_ADDR.to_owned();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        addr = match arg.strip_prefix("--addr") {
            Some("") => args.next().unwrap_or_default(),
            Some(v) => v.trim_start_matches('=').to_owned(),
            None => arg,
        };
    }
    let hub = Hub::builder().history_len(200).build();
    let board = Board::default();
    let app = Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route("/matches", get(matches))
        .with_state(board.clone())
        .route_service("/poll", PollService::new(hub.clone()));
    tokio::spawn(feed(hub.clone(), board));
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("poll demo on http://{}/", listener.local_addr()?);
    let stop = livehub::shutdown_signal(&hub, tokio::signal::ctrl_c(), GRACE);
    axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await
}

/// `GET /matches`: the board, with its position in headers (none before the first update).
async fn matches(State(board): State<Board>) -> impl IntoResponse {
    let (list, pos) = board
        .0
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let mut headers = HeaderMap::new();
    if let Some(p) = pos {
        if let Ok(epoch) = HeaderValue::from_str(&p.epoch) {
            headers.insert("x-scores-epoch", epoch);
            headers.insert("x-scores-offset", HeaderValue::from(p.offset));
        }
    }
    headers.insert("cache-control", HeaderValue::from_static("no-store"));
    // axum's `json` feature is off in this workspace: the body is written here.
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    (headers, Value::Array(list).to_string())
}

/// A small xorshift generator: the demo needs variety, not cryptography.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// True with probability `p` (0..=1).
    fn chance(&mut self, p: f64) -> bool {
        let unit = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        unit < p
    }
}

/// One match: its teams, score, clock and how often each side scores (per simulated minute).
pub(crate) struct Match {
    pub(crate) id: &'static str,
    pub(crate) home: &'static str,
    pub(crate) away: &'static str,
    pub(crate) home_score: u32,
    pub(crate) away_score: u32,
    pub(crate) minute: u32,
    home_rate: f64,
    away_rate: f64,
    /// Minutes left at full time before a new pairing kicks off.
    rest: u32,
}

impl Match {
    /// A new pairing for slot `id`, kicking off at `minute`, of two teams not in `busy` (a
    /// team plays one match at a time).
    fn new(id: &'static str, rng: &mut Rng, minute: u32, busy: &[&str]) -> Match {
        let free: Vec<&'static str> = TEAMS
            .iter()
            .copied()
            .filter(|t| !busy.contains(t))
            .collect();
        let pick = |rng: &mut Rng| free[(rng.next() % free.len() as u64) as usize];
        let home = pick(rng);
        let mut away = home;
        while away == home {
            away = pick(rng);
        }
        // Between about one goal in 90 minutes and one in 25, each side its own.
        let rate = |rng: &mut Rng| 0.01 + (rng.next() % 30) as f64 / 1000.0;
        Match {
            id,
            home,
            away,
            home_score: 0,
            away_score: 0,
            minute,
            home_rate: rate(rng),
            away_rate: rate(rng),
            rest: 0,
        }
    }

    fn status(&self) -> &'static str {
        match self.minute {
            45 if self.rest == 0 => "ht",
            m if m >= 90 => "ft",
            _ => "live",
        }
    }

    /// One simulated minute; `Some` with the update to publish, `None` when nothing changed.
    pub(crate) fn step(&mut self, rng: &mut Rng) -> Option<Value> {
        let mut event = None;
        if self.minute >= 90 {
            if self.rest == 0 {
                return None;
            }
            self.rest -= 1;
            return None;
        }
        self.minute += 1;
        if rng.chance(self.home_rate) {
            self.home_score += 1;
            event = Some(format!("GOAL {} {}'", self.home, self.minute));
        } else if rng.chance(self.away_rate) {
            self.away_score += 1;
            event = Some(format!("GOAL {} {}'", self.away, self.minute));
        }
        match self.minute {
            1 => event = Some("Kick-off".to_owned()),
            46 => event = event.or(Some("Second half".to_owned())),
            90 => {
                event = Some(format!(
                    "Full time {} {}-{} {}",
                    self.home, self.home_score, self.away_score, self.away
                ));
                self.rest = 8;
            }
            _ => {}
        }
        Some(json!({
            "id": self.id, "home": self.home, "away": self.away,
            "home_score": self.home_score, "away_score": self.away_score,
            "minute": self.minute, "status": self.status(), "event": event,
        }))
    }
}

/// The teams of `matches` (ten teams, at most three matches: two are always free).
pub(crate) fn playing(matches: &[Match]) -> Vec<&'static str> {
    matches.iter().flat_map(|m| [m.home, m.away]).collect()
}

/// The first three matches: kicked off at 0', 31' and 62' (the later ones with the score they
/// have by then), six different teams.
pub(crate) fn kick_off(rng: &mut Rng) -> Vec<Match> {
    let mut matches: Vec<Match> = Vec::with_capacity(3);
    for (id, minute) in [("m1", 0), ("m2", 31), ("m3", 62)] {
        let busy = playing(&matches);
        let mut m = Match::new(id, rng, minute, &busy);
        for _ in 0..minute {
            m.home_score += u32::from(rng.chance(m.home_rate));
            m.away_score += u32::from(rng.chance(m.away_rate));
        }
        matches.push(m);
    }
    matches
}

/// One simulated minute of match `i` (a finished one is first replaced by a new pairing of
/// teams not playing); the update to publish, if any.
pub(crate) fn advance(matches: &mut [Match], i: usize, rng: &mut Rng) -> Option<Value> {
    if matches[i].minute >= 90 && matches[i].rest == 0 {
        let busy = playing(matches);
        matches[i] = Match::new(matches[i].id, rng, 0, &busy);
    }
    matches[i].step(rng)
}

/// Three matches, one simulated minute a second, kicked off at different times; a finished
/// one is replaced by a new pairing a few seconds after full time.
async fn feed(hub: Hub, board: Board) {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0x9e37_79b9_7f4a_7c15);
    let mut rng = Rng(seed | 1);
    let mut matches = kick_off(&mut rng);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        for i in 0..matches.len() {
            let Some(state) = advance(&mut matches, i, &mut rng) else {
                continue;
            };
            let m = &matches[i];
            if let Ok(pos) = hub.publish("scores/all", &state).await {
                let mut b = board.0.lock().unwrap_or_else(PoisonError::into_inner);
                match b.0.iter_mut().find(|s| s["id"] == state["id"]) {
                    Some(slot) => *slot = state.clone(),
                    None => b.0.push(state.clone()),
                }
                b.1 = Some(pos);
            }
            let _ = hub.publish(&format!("scores/{}", m.id), &state).await;
        }
    }
}
