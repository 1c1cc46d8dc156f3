//! Live sports scores: the hub's flagship demo.
//!
//! A simulated feed plays six football matches at once, one simulated minute per second, with
//! random goals, half time and the final whistle; when a match has been over for a few seconds
//! a new one kicks off in its place, so the board never goes quiet. Every change of a match is
//! published twice: to `scores/<match-id>` (followers of one match) and to `scores/all` (the
//! board). Each message's `data` is the match's whole current state:
//!
//! ```json
//! {"id": "m1", "home": "Lions", "away": "Tigers", "home_score": 1, "away_score": 0,
//!  "minute": 37, "status": "live", "event": "GOAL Lions"}
//! ```
//!
//! `status` is `live`, `ht` or `ft`; `event` is `"GOAL <team>"` on the update that carries a
//! goal and `null` otherwise.
//!
//! The server (axum) serves:
//!
//! | route | what |
//! | --- | --- |
//! | `GET /` | the scoreboard page: plain HTML/CSS/JS on hub.js, with a transport switch (`?transport=auto\|ws\|sse\|poll`) |
//! | `GET /legacy` | the same board with nothing but `XMLHttpRequest` long-polling (no library) |
//! | `GET /matches` | the current state of every match, a JSON array; the headers `x-scores-epoch` and `x-scores-offset` give the position of `scores/all` it reflects |
//! | `GET /hub.js`, `GET /hub.mjs` | hub.js, the browser client ([`livehub::js::HubJs`]), as a script and as an ES module |
//! | `GET /ws` | the hub's WebSocket endpoint (PROTOCOL.md) |
//! | `GET /events` | server-sent events, commands by `POST` |
//! | `/poll` | long-polling |
//!
//! The page renders `/matches`, then subscribes to `scores/all` with `since` = that position,
//! so it gets exactly the updates after the snapshot. hub.js connects over WebSocket (or SSE,
//! or long-polling, when the one before cannot connect); when the connection drops it
//! reconnects with backoff and resumes from the last position it delivered: nothing is
//! missed, and the page notes how many updates it caught up on; or the hub says what was lost
//! (`recovered: false`, e.g. after the server restarted) and the page reloads `/matches`. The
//! line in the header shows the state, the transport and the reconnections.
//!
//! ```text
//! cargo run --release --example sports_scores               # http://127.0.0.1:3000/
//! cargo run --release --example sports_scores -- --addr 0.0.0.0:8080
//! ```
//!
//! `--addr 127.0.0.1:0` picks a free port; the line printed at start names the real one.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use std::time::Duration;
use tokio::sync::{Mutex, MutexGuard};

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use axum::Router;
use livehub::js::HubJs;
use livehub::poll::PollService;
use livehub::sse::SseService;
use livehub::ws::WsService;
use livehub::{Hub, Position, SendError};
use serde::{Deserialize, Serialize};

/// The scoreboard page, served at `/`.
pub(crate) const PAGE: &str = include_str!("assets/sports_ws.html");

/// The same scoreboard for legacy clients: `XMLHttpRequest` long-polling only.
pub(crate) const LEGACY_PAGE: &str = include_str!("assets/sports_poll.html");

/// The topic every match update goes to.
pub(crate) const ALL_TOPIC: &str = "scores/all";

/// The address served when `--addr` is not given.
const DEFAULT_ADDR: &str = "127.0.0.1:3000";

/// How long a shutdown waits for pages to get their last frames.
const GRACE: Duration = Duration::from_secs(5);

/// Matches on the board at once.
pub(crate) const MATCHES: usize = 6;

/// Real time per simulated minute.
pub(crate) const TICK: Duration = Duration::from_secs(1);

/// Messages the hub keeps per topic for resuming clients: at six updates a second, well over a
/// minute and a half of `scores/all`, and every update of a whole match on `scores/<id>`.
pub(crate) const HISTORY: usize = 600;

/// Ticks a match stays at half time.
const HT_TICKS: u32 = 8;

/// Ticks a finished match stays on the board before the next one kicks off in its place.
const FT_TICKS: u32 = 10;

/// Chance, per team and simulated minute, of a goal (about 2.7 goals a team per match: a
/// demo wants goals).
const GOAL_CHANCE: f64 = 0.03;

/// Ticks each slot is fast-forwarded at start, so the board opens on matches at every stage
/// (one of them at half time, one near the end).
const STAGGER: [u32; MATCHES] = [2, 21, 40, 50, 75, 98];

/// Team names the simulator draws from.
const TEAMS: [&str; 20] = [
    "Lions", "Tigers", "Eagles", "Wolves", "Bears", "Sharks", "Falcons", "Hawks", "Panthers",
    "Foxes", "Rhinos", "Stags", "Badgers", "Owls", "Cobras", "Bulls", "Jaguars", "Ravens",
    "Dragons", "Hornets",
];

// Every kick-off must find two teams not on the board.
const _: () = assert!(TEAMS.len() >= 2 * MATCHES + 2);

/// A match's status, as the wire shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Status {
    /// Being played.
    Live,
    /// Half time.
    Ht,
    /// Full time: over.
    Ft,
}

/// One match's current state: the `data` of every message on `scores/all` and
/// `scores/<id>`, and an element of `/matches`. Other pages depend on this exact shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct MatchState {
    /// The match id, also the topic suffix (`scores/m1`).
    pub(crate) id: String,
    /// Home team.
    pub(crate) home: String,
    /// Away team.
    pub(crate) away: String,
    /// Home goals.
    pub(crate) home_score: u32,
    /// Away goals.
    pub(crate) away_score: u32,
    /// Minute of play (0 at kick-off, 45 at half time, 90 at full time).
    pub(crate) minute: u32,
    /// Live, half time or full time.
    pub(crate) status: Status,
    /// What happened in this update (`"GOAL Lions"`), or `null`.
    pub(crate) event: Option<String>,
}

/// A board position: the match in it and how long it has been idle (at half or full time).
struct Slot {
    state: MatchState,
    /// 1 or 2.
    half: u8,
    /// Ticks spent at half time or full time so far.
    idle: u32,
}

/// A small deterministic generator (xorshift64*): the demo needs dice, not cryptography.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        // Scramble the seed (splitmix64 step) and keep it non-zero: xorshift sticks at zero.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Rng((z ^ (z >> 31)) | 1)
    }

    fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `0..n` (`n > 0`).
    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

struct FeedState {
    slots: Vec<Slot>,
    rng: Rng,
    /// Matches created so far: match `n` is `m<n>`, its own topic `scores/m<n>`. Ids are never
    /// reused; the hub forgets a finished match's topic once nobody follows it (its
    /// `topic_ttl`), so a demo left running for days holds only recent matches.
    created: u64,
    /// The position of the last update published to `scores/all`.
    last: Option<Position>,
}

impl FeedState {
    /// A fresh 0-0 match between two teams not on the board.
    fn kick_off(&mut self) -> Slot {
        let busy: Vec<&str> = self
            .slots
            .iter()
            .flat_map(|s| [s.state.home.as_str(), s.state.away.as_str()])
            .collect();
        let free: Vec<&str> = TEAMS.into_iter().filter(|t| !busy.contains(t)).collect();
        let home = free[self.rng.below(free.len())];
        let away = loop {
            let t = free[self.rng.below(free.len())];
            if t != home {
                break t;
            }
        };
        self.created += 1;
        Slot {
            state: MatchState {
                id: format!("m{}", self.created),
                home: home.to_owned(),
                away: away.to_owned(),
                home_score: 0,
                away_score: 0,
                minute: 0,
                status: Status::Live,
                event: None,
            },
            half: 1,
            idle: 0,
        }
    }

    /// Plays one simulated minute of slot `i`. Returns whether its state changed (an update
    /// to publish).
    fn step(&mut self, i: usize) -> bool {
        let FeedState { slots, rng, .. } = self;
        let slot = &mut slots[i];
        let m = &mut slot.state;
        m.event = None;
        match m.status {
            Status::Live => {
                let end = if slot.half == 1 { 45 } else { 90 };
                if m.minute >= end {
                    m.status = if slot.half == 1 {
                        Status::Ht
                    } else {
                        Status::Ft
                    };
                    slot.idle = 0;
                    return true;
                }
                m.minute += 1;
                // At most one goal a minute; home or away asked first at random, so neither
                // side is favoured.
                let home_first = rng.below(2) == 0;
                for home in [home_first, !home_first] {
                    if rng.unit() < GOAL_CHANCE {
                        let team = if home {
                            m.home_score += 1;
                            &m.home
                        } else {
                            m.away_score += 1;
                            &m.away
                        };
                        m.event = Some(format!("GOAL {team}"));
                        break;
                    }
                }
                true
            }
            Status::Ht => {
                slot.idle += 1;
                if slot.idle < HT_TICKS {
                    return false;
                }
                slot.half = 2;
                m.status = Status::Live;
                m.minute = 46;
                true
            }
            Status::Ft => {
                slot.idle += 1;
                if slot.idle < FT_TICKS {
                    return false;
                }
                let next = self.kick_off();
                self.slots[i] = next;
                true
            }
        }
    }

    /// The board that `updates` (messages of `scores/all`, oldest first) leave behind, to go
    /// on from: see [`Feed::resume`].
    ///
    /// A match is on the board until a kick-off takes its place, and a kick-off takes the
    /// place of the match that has been over the longest (every match is idle at full time
    /// for the same [`FT_TICKS`], and the slots are played in order), which is what the page
    /// assumes too. So the board is every match whose last update is not full time, plus the
    /// finished ones that ended last, as many as the board has room for. That needs the
    /// last update of every match on the board in `updates`: a match is silent for at most
    /// [`FT_TICKS`], far less than [`HISTORY`] holds. With fewer matches than [`MATCHES`]
    /// (most of the history lost), the board is short: [`Feed::resume`] kicks off new ones.
    ///
    /// What the updates do not say is taken as fresh: time spent so far at half or full time
    /// (those matches rest for the whole pause again) and the slots' order (the matches in
    /// play by id, then the finished ones in the order they ended, which is the order they
    /// give their places up in, as the page expects).
    fn restore(updates: &[MatchState], seed: u64) -> FeedState {
        let number = |m: &MatchState| m.id.strip_prefix('m').and_then(|n| n.parse::<u64>().ok());
        // Each match's last state, and when it came (its index in `updates`).
        let mut last: HashMap<&str, (usize, &MatchState)> = HashMap::new();
        let mut created = 0;
        for (i, m) in updates.iter().enumerate() {
            created = created.max(number(m).unwrap_or(0));
            last.insert(m.id.as_str(), (i, m));
        }
        let (mut over, mut playing): (Vec<_>, Vec<_>) = last
            .into_values()
            .partition(|(_, m)| m.status == Status::Ft);
        playing.sort_by_key(|(_, m)| number(m));
        // More than a board in play cannot come from this feed: keep the newest.
        let extra = playing.len().saturating_sub(MATCHES);
        playing.drain(..extra);
        over.sort_by_key(|(i, _)| *i);
        let gone = over.len().saturating_sub(MATCHES - playing.len());
        over.drain(..gone);
        let slots = playing
            .into_iter()
            .chain(over)
            .map(|(_, m)| Slot {
                state: m.clone(),
                // The second half starts at minute 46; half time and kick-off are in the first.
                half: if m.status == Status::Ht || (m.status == Status::Live && m.minute <= 45) {
                    1
                } else {
                    2
                },
                idle: 0,
            })
            .collect();
        FeedState {
            slots,
            rng: Rng::new(seed),
            created,
            last: None,
        }
    }
}

/// The simulated feed: the matches on the board, and the hub it publishes to.
///
/// Updates are published while the feed's lock is held (an async lock: publishing waits for
/// the engine), so a snapshot ([`Feed::snapshot`]) and the position it reports always agree.
#[derive(Clone)]
pub(crate) struct Feed {
    hub: Hub,
    state: Arc<Mutex<FeedState>>,
}

impl Feed {
    /// A board of [`MATCHES`] matches at staggered stages, drawn with `seed`; publishes each
    /// match's initial state.
    pub(crate) async fn new(hub: Hub, seed: u64) -> Feed {
        let mut st = FeedState {
            slots: Vec::with_capacity(MATCHES),
            rng: Rng::new(seed),
            created: 0,
            last: None,
        };
        for (i, ticks) in STAGGER.into_iter().enumerate() {
            let slot = st.kick_off();
            st.slots.push(slot);
            for _ in 0..ticks {
                st.step(i);
            }
            st.slots[i].state.event = None;
        }
        let feed = Feed {
            hub,
            state: Arc::new(Mutex::new(st)),
        };
        {
            let mut st = feed.lock().await;
            for i in 0..st.slots.len() {
                feed.publish(&mut st, i).await;
            }
        }
        feed
    }

    /// Goes on with the feed whose updates `scores/all` already holds, or starts a new board
    /// ([`Feed::new`]) when it holds none. Publishes nothing that is already there.
    ///
    /// This is what a feed process does when it restarts over an engine that outlives it
    /// (Redis): the pages that follow the board keep their positions in the same stream, so
    /// the feed must continue the story they have, not tell a new one over it (a second
    /// "m1" with other teams, a seventh card). The board is rebuilt from the history of
    /// `scores/all`, as [`FeedState::restore`] says; the dice (`seed`) are new. On the
    /// in-process engine a new process has empty streams: a new board, as before.
    ///
    /// Fails when the engine cannot be read (`engine_unavailable`).
    #[allow(dead_code)] // not by this binary (its engine is in process): by e2e_server, tests
    pub(crate) async fn resume(hub: Hub, seed: u64) -> Result<Feed, SendError> {
        let recent = hub.recent(ALL_TOPIC, HISTORY).await?;
        let Some(top) = recent.last().map(|p| p.position()) else {
            return Ok(Feed::new(hub, seed).await);
        };
        let updates: Vec<MatchState> = recent
            .iter()
            .filter_map(|p| match p.data().decode() {
                Ok(m) => Some(m),
                Err(e) => {
                    tracing::warn!(offset = p.offset(), error = %e, "not a match update: skipped");
                    None
                }
            })
            .collect();
        let mut st = FeedState::restore(&updates, seed);
        st.last = Some(top);
        let feed = Feed {
            hub,
            state: Arc::new(Mutex::new(st)),
        };
        {
            // Places the history could not fill get new matches, published as kick-offs.
            let mut st = feed.lock().await;
            while st.slots.len() < MATCHES {
                let slot = st.kick_off();
                st.slots.push(slot);
                let i = st.slots.len() - 1;
                feed.publish(&mut st, i).await;
            }
        }
        Ok(feed)
    }

    async fn lock(&self) -> MutexGuard<'_, FeedState> {
        self.state.lock().await
    }

    /// Publishes slot `i`'s state to `scores/all` and to its own topic.
    ///
    /// `scores/all` first: it is the feed's record ([`Feed::resume`] continues from it), so
    /// a process that dies between the two leaves the match's own topic one state short
    /// (the next update carries the whole state), never a state that the record lacks and a
    /// resumed feed would publish again.
    async fn publish(&self, st: &mut FeedState, i: usize) {
        let m = &st.slots[i].state;
        match self.hub.publish(ALL_TOPIC, m).await {
            Ok(pos) => st.last = Some(pos),
            Err(e) => tracing::warn!(topic = ALL_TOPIC, error = %e, "publish failed"),
        }
        let own = format!("scores/{}", m.id);
        if let Err(e) = self.hub.publish(&own, m).await {
            tracing::warn!(topic = %own, error = %e, "publish failed");
        }
    }

    /// Plays one simulated minute on every match and publishes what changed. Returns how many
    /// updates were published.
    pub(crate) async fn tick(&self) -> usize {
        let mut st = self.lock().await;
        let mut n = 0;
        for i in 0..st.slots.len() {
            if st.step(i) {
                self.publish(&mut st, i).await;
                n += 1;
            }
        }
        n
    }

    /// Every match's current state, and the position of `scores/all` it reflects.
    pub(crate) async fn snapshot(&self) -> (Vec<MatchState>, Option<Position>) {
        let st = self.lock().await;
        let matches = st.slots.iter().map(|s| s.state.clone()).collect();
        (matches, st.last.clone())
    }
}

/// Ticks the feed every `every`, forever.
pub(crate) async fn run_feed(feed: Feed, every: Duration) {
    let mut clock = tokio::time::interval(every);
    clock.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    clock.tick().await; // the first tick is immediate: the board was just published
    loop {
        clock.tick().await;
        feed.tick().await;
    }
}

/// The HTTP routes of the demo, all in one place: hub.js and the three transports it may use
/// are one line each.
pub(crate) fn router(hub: &Hub, feed: Feed) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/legacy", get(legacy_page))
        .route("/matches", get(matches))
        .route_service("/hub.js", HubJs::script())
        .route_service("/hub.mjs", HubJs::module())
        .route_service("/ws", WsService::new(hub.clone()))
        .route_service("/events", SseService::new(hub.clone()))
        .route_service("/poll", PollService::new(hub.clone()))
        .with_state(feed)
}

/// `GET /`: the scoreboard page.
async fn page() -> impl IntoResponse {
    (
        [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
        Html(PAGE),
    )
}

/// `GET /legacy`: the scoreboard over long-polling, for clients without WebSocket.
async fn legacy_page() -> impl IntoResponse {
    (
        [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
        Html(LEGACY_PAGE),
    )
}

/// `GET /matches`: every match's state as a JSON array, with the position of `scores/all` it
/// reflects in `x-scores-epoch` / `x-scores-offset` (absent before the first publish).
async fn matches(State(feed): State<Feed>) -> impl IntoResponse {
    let (matches, last) = feed.snapshot().await;
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(pos) = last {
        if let Ok(epoch) = HeaderValue::from_str(&pos.epoch) {
            headers.insert("x-scores-epoch", epoch);
            headers.insert("x-scores-offset", HeaderValue::from(pos.offset));
        }
    }
    // A list of plain structs always serializes; "[]" is only a formality.
    let body = serde_json::to_string(&matches).unwrap_or_else(|_| "[]".to_owned());
    (headers, body)
}

/// What the command line asks for.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Command {
    /// Serve on this address.
    Serve(SocketAddr),
    /// Print the usage and exit.
    Help,
}

/// Parses the arguments after the program name: `--addr <ip:port>` (or `--addr=<ip:port>`),
/// `--help`.
pub(crate) fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Command, String> {
    let mut addr = DEFAULT_ADDR.to_owned();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "--addr" => {
                addr = args
                    .next()
                    .ok_or_else(|| "--addr needs a value, e.g. --addr 127.0.0.1:3000".to_owned())?;
            }
            other => match other.strip_prefix("--addr=") {
                Some(value) => addr = value.to_owned(),
                None => return Err(format!("unknown argument {other:?}")),
            },
        }
    }
    addr.parse()
        .map(Command::Serve)
        .map_err(|e| format!("bad --addr {addr:?}: {e} (expected ip:port)"))
}

const USAGE: &str =
    "usage: sports_scores [--addr <ip:port>]   (default 127.0.0.1:3000; port 0 picks one)";

/// A seed that differs from run to run.
fn clock_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0x5EED)
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let addr = match parse_args(std::env::args().skip(1)) {
        Ok(Command::Serve(addr)) => addr,
        Ok(Command::Help) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("sports_scores: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };

    let hub = Hub::builder().history_len(HISTORY).build();
    let feed = Feed::new(hub.clone(), clock_seed()).await;
    tokio::spawn(run_feed(feed.clone(), TICK));

    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("sports_scores: cannot listen on {addr}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let local = listener.local_addr().unwrap_or(addr);
    println!("sports scores: http://{local}/  (legacy long-polling page: http://{local}/legacy)");

    // Ctrl-C: every page is told (close 1001 `shutdown`, a last SSE or poll `close`) before the
    // server stops; hub.js comes back spread out once a server answers again.
    let stop = livehub::shutdown_signal(&hub, tokio::signal::ctrl_c(), GRACE);
    if let Err(e) = axum::serve(listener, router(&hub, feed))
        .with_graceful_shutdown(stop)
        .await
    {
        eprintln!("sports_scores: server error: {e}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
