//! `livehub-bench load`: a load process (spawned by the driver) holding up to a few thousand
//! subscriber connections, and in latency mode the publisher too (one clock for both ends).
//!
//! Talks to the driver in JSON lines. Commands on stdin: `connect` (open the connections),
//! `start` (latency mode: publish), `stop` (report and exit); EOF exits;
//! `last N` (fan-out: the driver stopped publishing at N), ...; events on stdout:
//! `connected` (all connections are up and subscribed, or failed), `progress` (fan-out: every
//! message up to `low` reached every subscriber of this process), `settled` (burst: every
//! subscriber has every message or has been closed) and `done` (final counts).
//!
//! The hot path is per read, not per frame: each subscriber reads into its own reused buffer,
//! takes the clock once per read, and parses every complete frame in it in place.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{mpsc, Notify, Semaphore};

use crate::msg::{Codec, Enc};
use crate::poll::{self, HttpConn};
use crate::sse::{self, SseConn};
use crate::util::{err, Hist, Opts, Res};
use crate::ws::{self, WsConn};

/// What the load process does once connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Receive as fast as possible, reporting progress for the driver's publisher window.
    Fanout,
    /// Publish at a fixed rate from this process and measure latency.
    Latency,
    /// Receive a burst (published by the driver with no window): report when every
    /// subscriber has all of it or has been closed.
    Burst,
    /// Hold the connections.
    Idle,
}

/// Where and how to connect.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    /// The server's address (the publisher's node).
    pub(crate) addr: SocketAddr,
    /// Where subscribers connect, subscriber `i` to `sub_addrs[i % len]` (the nodes of a
    /// cluster other than the publisher's); empty: `addr`.
    pub(crate) sub_addrs: Vec<SocketAddr>,
    /// The request path (with the query).
    pub(crate) path: String,
    /// Whether the server is the hub (speaks the protocol: welcome, subscribe, reply), or a
    /// plain broadcast server (the Node peer: connecting is subscribing).
    pub(crate) hub: bool,
    /// The local address to connect from (loopback has all of 127.0.0.0/8).
    pub(crate) src: Option<std::net::IpAddr>,
    /// Subscribers use server-sent events (`path` is the stream's URL) instead of WebSocket.
    pub(crate) sse: bool,
    /// SSE streams over HTTP/2 (cleartext, prior knowledge), [`H2_STREAMS`] per connection.
    pub(crate) h2: bool,
    /// Subscribers use long-polling (`path` opens a session).
    pub(crate) poll: bool,
    /// The publisher's WebSocket path (with the query).
    pub(crate) pub_path: String,
}

/// The load process's settings.
struct Cfg {
    ep: Endpoint,
    codec: Codec,
    subs: usize,
    msgs: u64,
    mode: Mode,
    rate: f64,
    step: u64,
    /// Publishers the messages come from (see [`Next`]).
    publishers: usize,
    concurrency: usize,
    rbuf: usize,
    subscribe: bool,
    timeout: Duration,
}

/// Per-message latency bookkeeping (latency mode only).
struct Lat {
    hist: Hist,
    send: Vec<u64>,
    first: Vec<u64>,
    last: Vec<u64>,
}

/// Counters shared by the subscribers of this process (one thread: `Rc<RefCell>`).
struct State {
    /// How many subscribers got each sequence number.
    counts: Vec<u32>,
    /// Every message up to `low` reached every ready subscriber.
    low: u64,
    /// Subscribers counted for `low` (those ready when publishing starts).
    nsubs: u32,
    last_reported: u64,
    step: u64,
    msgs: u64,
    report_progress: bool,
    received: u64,
    disorder: u64,
    errors: u64,
    samples: Vec<String>,
    ready: usize,
    failed: usize,
    closed: usize,
    lat: Option<Lat>,
    /// Subscribers that got the last message (`msgs`).
    complete: usize,
    /// Subscribers closed by the server with 1008 `slow_consumer` (WebSocket close code and
    /// reason, or the SSE `close` event's reason).
    slow_closes: usize,
    /// Burst mode: report `settled` once every ready subscriber is complete or closed.
    report_settled: bool,
}

impl State {
    /// Burst mode: says `settled` (once) when no subscriber is still waiting for messages.
    fn check_settled(&mut self) {
        if self.report_settled && self.complete + self.closed >= self.ready {
            self.report_settled = false;
            println!(
                "{}",
                json!({"ev": "settled", "complete": self.complete, "closed": self.closed,
                       "slow_closes": self.slow_closes, "received": self.received})
            );
        }
    }

    /// The subscriber to this address (cluster: the nodes in turn).
    fn sub_addr(ep: &Endpoint, i: usize) -> SocketAddr {
        if ep.sub_addrs.is_empty() {
            ep.addr
        } else {
            ep.sub_addrs[i % ep.sub_addrs.len()]
        }
    }

    fn error(&mut self, what: String) {
        self.errors += 1;
        if self.samples.len() < 5 {
            self.samples.push(what);
        }
    }

    /// A subscriber could not connect or subscribe: failed, and the driver's wait is woken.
    fn failed_to_open(&mut self, what: String, notify: &Notify) {
        self.failed += 1;
        self.error(what);
        notify.notify_one();
    }

    /// A subscriber's connection ended: closed if it had become ready, else failed.
    /// `complete`: it had received every message (burst mode).
    fn ended(&mut self, ready: bool, complete: bool, what: String, notify: &Notify) {
        if what.contains("slow_consumer") {
            self.slow_closes += 1;
        }
        if ready {
            if !complete {
                self.closed += 1;
                self.check_settled();
            }
        } else {
            self.failed += 1;
            notify.notify_one();
        }
        self.error(what);
    }

    /// One bench message reached a subscriber that expects `next`.
    #[inline]
    fn deliver(&mut self, next: &mut Next, seq: u64, ts: u64, now: u64) {
        let lanes = next.0.len() as u64;
        let Some(expected) = usize::try_from(seq.saturating_sub(1) % lanes)
            .ok()
            .and_then(|lane| next.0.get_mut(lane))
        else {
            return;
        };
        if seq != *expected {
            self.disorder += 1;
            if seq < *expected {
                return;
            }
        }
        *expected = seq + lanes;
        self.received += 1;
        let Ok(i) = usize::try_from(seq) else { return };
        if i >= self.counts.len() {
            return;
        }
        self.counts[i] += 1;
        if seq == self.msgs && self.report_settled {
            self.complete += 1;
            self.check_settled();
        }
        if let Some(lat) = &mut self.lat {
            let d = now.saturating_sub(ts);
            lat.hist.record(d / 1000);
            if lat.first[i] == 0 || now < lat.first[i] {
                lat.first[i] = now;
            }
            lat.last[i] = lat.last[i].max(now);
            lat.send[i] = ts;
        }
        if seq == self.low + 1 {
            while self.low < self.msgs
                && self.counts[usize::try_from(self.low + 1).unwrap_or(usize::MAX)] >= self.nsubs
            {
                self.low += 1;
            }
            if self.report_progress
                && (self.low >= self.last_reported + self.step
                    || (self.low == self.msgs && self.last_reported < self.msgs))
            {
                self.last_reported = self.low;
                println!("{}", json!({"ev": "progress", "low": self.low}));
            }
        }
    }
}

/// The numbers a subscriber expects next, one per publisher: with P publishers, publisher `p`
/// sends the numbers `n` with `(n - 1) % P == p`, in order (messages of different publishers
/// may interleave in any order).
#[derive(Debug, Clone)]
struct Next(Vec<u64>);

impl Next {
    fn new(publishers: usize) -> Next {
        Next((1..=publishers.max(1) as u64).collect())
    }

    /// Whether every message up to `msgs` has arrived.
    fn done(&self, msgs: u64) -> bool {
        self.0.iter().all(|&n| n > msgs)
    }
}

/// Runs the load process.
pub(crate) fn main(opts: &Opts) -> Res<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, run(opts))
}

fn cfg(opts: &Opts) -> Res<Cfg> {
    let enc = Enc::parse(opts.str("encoding").unwrap_or("json"))
        .ok_or_else(|| err("--encoding must be json or msgpack"))?;
    let addr: SocketAddr = opts
        .str("addr")
        .ok_or_else(|| err("--addr is required"))?
        .parse()?;
    let mode = match opts.str("mode").unwrap_or("fanout") {
        "fanout" => Mode::Fanout,
        "latency" => Mode::Latency,
        "idle" => Mode::Idle,
        "burst" => Mode::Burst,
        m => return Err(err(format!("unknown --mode {m}"))),
    };
    Ok(Cfg {
        ep: Endpoint {
            addr,
            sub_addrs: opts
                .list("sub-addrs", "")
                .iter()
                .map(|a| a.parse())
                .collect::<Result<_, _>>()?,
            path: opts.str("path").unwrap_or("/ws").to_owned(),
            hub: opts.str("server").unwrap_or("hub") == "hub",
            src: opts.str("src").map(str::parse).transpose()?,
            sse: matches!(opts.str("transport"), Some("sse" | "sse-h2")),
            h2: opts.str("transport") == Some("sse-h2"),
            poll: opts.str("transport") == Some("poll"),
            pub_path: opts
                .str("pub-path")
                .or(opts.str("path"))
                .unwrap_or("/ws")
                .to_owned(),
        },
        codec: Codec::new(
            enc,
            opts.get("bytes", 100)?,
            opts.str("topic").unwrap_or("bench"),
        ),
        subs: opts.get("subs", 10)?,
        msgs: opts.get("msgs", 1000)?,
        mode,
        rate: opts.get("rate", 50.0)?,
        step: opts.get("step", 32)?,
        publishers: opts.get("publishers", 1)?,
        concurrency: opts.get("concurrency", 128)?,
        rbuf: opts.get("rbuf", 16 * 1024)?,
        subscribe: opts.get("subscribe", true)?,
        timeout: Duration::from_secs_f64(opts.get("timeout", 60.0)?),
    })
}

async fn run(opts: &Opts) -> Res<()> {
    let cfg = Rc::new(cfg(opts)?);
    let base = Instant::now();
    let (cmd_tx, mut cmds) = mpsc::unbounded_channel::<String>();
    tokio::task::spawn_local(async move {
        let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let _ = cmd_tx.send(line.trim().to_owned());
        }
        let _ = cmd_tx.send("eof".to_owned());
    });

    match next_cmd(&mut cmds).await.as_str() {
        "connect" => {}
        _ => return Ok(()),
    }
    let msgs = usize::try_from(cfg.msgs).unwrap_or(0);
    let st = Rc::new(RefCell::new(State {
        counts: vec![0; msgs + 1],
        low: 0,
        nsubs: u32::MAX,
        last_reported: 0,
        step: cfg.step.max(1),
        msgs: cfg.msgs,
        report_progress: cfg.mode == Mode::Fanout,
        received: 0,
        disorder: 0,
        errors: 0,
        samples: Vec::new(),
        ready: 0,
        failed: 0,
        closed: 0,
        lat: (cfg.mode == Mode::Latency).then(|| Lat {
            hist: Hist::new(),
            send: vec![0; msgs + 1],
            first: vec![0; msgs + 1],
            last: vec![0; msgs + 1],
        }),
        complete: 0,
        slow_closes: 0,
        report_settled: false,
    }));
    let notify = Rc::new(Notify::new());
    let sem = Arc::new(Semaphore::new(cfg.concurrency.max(1)));
    let t0 = Instant::now();
    if cfg.ep.h2 {
        for first in (0..cfg.subs).step_by(H2_STREAMS) {
            let n = H2_STREAMS.min(cfg.subs - first);
            tokio::task::spawn_local(sse_h2_connection(
                first,
                n,
                cfg.clone(),
                st.clone(),
                sem.clone(),
                notify.clone(),
                base,
            ));
        }
    }
    for i in 0..cfg.subs {
        if cfg.ep.h2 {
            break;
        }
        if cfg.ep.poll {
            tokio::task::spawn_local(poll_subscriber(
                i,
                cfg.clone(),
                st.clone(),
                sem.clone(),
                notify.clone(),
                base,
            ));
            continue;
        }
        if cfg.ep.sse {
            tokio::task::spawn_local(sse_subscriber(
                i,
                cfg.clone(),
                st.clone(),
                sem.clone(),
                notify.clone(),
                base,
            ));
            continue;
        }
        tokio::task::spawn_local(subscriber(
            i,
            cfg.clone(),
            st.clone(),
            sem.clone(),
            notify.clone(),
            base,
        ));
    }
    let deadline = tokio::time::Instant::now() + cfg.timeout;
    loop {
        let notified = notify.notified();
        {
            let s = st.borrow();
            if s.ready + s.failed >= cfg.subs {
                break;
            }
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            break;
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    {
        let mut s = st.borrow_mut();
        s.nsubs = u32::try_from(s.ready).unwrap_or(u32::MAX);
        s.report_settled = cfg.mode == Mode::Burst;
        println!(
            "{}",
            json!({"ev": "connected", "ready": s.ready, "failed": s.failed, "secs": secs,
                   "samples": s.samples})
        );
    }

    let mut sent = 0;
    loop {
        match next_cmd(&mut cmds).await.as_str() {
            "start" if cfg.mode == Mode::Latency => {
                match publish_at_rate(&cfg, &st, base).await {
                    Ok(n) => sent = n,
                    Err(e) => st.borrow_mut().error(format!("publisher: {e}")),
                }
                print_done(&st.borrow(), sent);
            }
            "stop" | "eof" => break,
            cmd => {
                // `last N`: the driver published only up to N; report reaching it.
                if let Some(n) = cmd.strip_prefix("last ").and_then(|n| n.parse().ok()) {
                    let mut s = st.borrow_mut();
                    s.msgs = n;
                    if s.low >= n {
                        s.last_reported = s.low;
                        println!("{}", json!({"ev": "progress", "low": s.low}));
                    }
                }
            }
        }
    }
    if cfg.mode != Mode::Latency {
        print_done(&st.borrow(), sent);
    }
    std::process::exit(0);
}

/// The next command from the driver (`eof` once stdin is closed).
async fn next_cmd(cmds: &mut mpsc::UnboundedReceiver<String>) -> String {
    cmds.recv().await.unwrap_or_else(|| "eof".to_owned())
}

fn print_done(s: &State, sent: u64) {
    let lat = s.lat.as_ref().map(|lat| {
        let n = usize::try_from(sent).unwrap_or(0).min(lat.send.len() - 1);
        let ttf: Vec<u64> = (1..=n)
            .filter(|&i| lat.send[i] > 0)
            .map(|i| lat.first[i].saturating_sub(lat.send[i]) / 1000)
            .collect();
        let ttl: Vec<u64> = (1..=n)
            .filter(|&i| lat.send[i] > 0)
            .map(|i| lat.last[i].saturating_sub(lat.send[i]) / 1000)
            .collect();
        json!({"hist": lat.hist.to_sparse(), "ttf": ttf, "ttl": ttl})
    });
    println!(
        "{}",
        json!({
            "ev": "done", "ready": s.ready, "failed": s.failed, "closed": s.closed,
            "received": s.received, "disorder": s.disorder, "errors": s.errors,
            "samples": s.samples, "low": s.low, "sent": sent, "lat": lat,
            "complete": s.complete, "slow_closes": s.slow_closes,
        })
    );
}

/// One subscriber: connect (bounded concurrency), subscribe, then count what arrives.
async fn subscriber(
    i: usize,
    cfg: Rc<Cfg>,
    st: Rc<RefCell<State>>,
    sem: Arc<Semaphore>,
    notify: Rc<Notify>,
    base: Instant,
) {
    let mut permit = sem.acquire_owned().await.ok();
    let subproto = None;
    let conn = tokio::time::timeout(
        cfg.timeout,
        WsConn::connect(
            State::sub_addr(&cfg.ep, i),
            cfg.ep.src,
            &cfg.ep.path,
            subproto,
            cfg.rbuf,
        ),
    )
    .await;
    let mut conn = match conn {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            st.borrow_mut()
                .failed_to_open(format!("sub {i}: connect: {e}"), &notify);
            return;
        }
        Err(_) => {
            st.borrow_mut()
                .failed_to_open(format!("sub {i}: connect timed out"), &notify);
            return;
        }
    };
    let mut ready = false;
    if cfg.ep.hub && cfg.subscribe {
        let frame = cfg.codec.subscribe();
        if let Err(e) = conn.send(cfg.codec.enc().opcode(), &frame).await {
            st.borrow_mut()
                .failed_to_open(format!("sub {i}: subscribe: {e}"), &notify);
            return;
        }
    } else {
        ready = true;
        st.borrow_mut().ready += 1;
        notify.notify_one();
        permit = None;
    }
    let mut next = Next::new(cfg.publishers);
    let mut pongs: Vec<Vec<u8>> = Vec::new();
    let why = 'outer: loop {
        match conn.fill().await {
            Ok(0) => break "closed by the server".to_owned(),
            Ok(_) => {}
            Err(e) => break format!("read: {e}"),
        }
        let now = u64::try_from(base.elapsed().as_nanos()).unwrap_or(u64::MAX);
        {
            let mut s = st.borrow_mut();
            loop {
                let f = match conn.next_frame() {
                    Ok(Some(f)) => f,
                    Ok(None) => break,
                    Err(e) => break 'outer format!("bad frame: {e}"),
                };
                let p = &conn.buf[f.payload.clone()];
                match f.op {
                    ws::OP_TEXT | ws::OP_BINARY if f.fin => {
                        if let Some((seq, ts)) = cfg.codec.message(p) {
                            s.deliver(&mut next, seq, ts, now);
                            continue;
                        }
                        match cfg.codec.frame_type(p) {
                            Some(b"reply") if !ready => {
                                ready = true;
                                s.ready += 1;
                                notify.notify_one();
                                permit = None;
                            }
                            Some(b"welcome" | b"reply" | b"pong") => {}
                            _ => {
                                let text: String =
                                    String::from_utf8_lossy(p).chars().take(200).collect();
                                s.error(format!("sub {i}: unexpected frame {text}"));
                            }
                        }
                    }
                    ws::OP_PING => pongs.push(p.to_vec()),
                    ws::OP_PONG => {}
                    ws::OP_CLOSE => break 'outer ws::close_info(p),
                    op => break 'outer format!("unsupported frame opcode {op} fin {}", f.fin),
                }
            }
        }
        for p in pongs.drain(..) {
            if let Err(e) = conn.send(ws::OP_PONG, &p).await {
                break 'outer format!("pong: {e}");
            }
        }
    };
    drop(permit);
    st.borrow_mut().ended(
        ready,
        next.done(cfg.msgs),
        format!("sub {i}: {why}"),
        &notify,
    );
}

/// One SSE subscriber: open the stream (subscribed by its URL), then count what arrives.
async fn sse_subscriber(
    i: usize,
    cfg: Rc<Cfg>,
    st: Rc<RefCell<State>>,
    sem: Arc<Semaphore>,
    notify: Rc<Notify>,
    base: Instant,
) {
    let mut permit = sem.acquire_owned().await.ok();
    let conn = tokio::time::timeout(
        cfg.timeout,
        SseConn::connect(
            State::sub_addr(&cfg.ep, i),
            cfg.ep.src,
            &cfg.ep.path,
            cfg.rbuf,
        ),
    )
    .await;
    let mut conn = match conn {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            st.borrow_mut()
                .failed_to_open(format!("sse sub {i}: connect: {e}"), &notify);
            return;
        }
        Err(_) => {
            st.borrow_mut()
                .failed_to_open(format!("sse sub {i}: connect timed out"), &notify);
            return;
        }
    };
    let mut ready = false;
    let mut next = Next::new(cfg.publishers);
    let why = loop {
        match conn.fill().await {
            Ok(sse::Read::Data) => {}
            Ok(sse::Read::End) => break "stream ended".to_owned(),
            Err(e) => break format!("read: {e}"),
        }
        let now = u64::try_from(base.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let was_ready = ready;
        sse_events(
            i,
            &cfg,
            &st,
            &notify,
            &mut conn.body,
            &mut next,
            &mut ready,
            now,
        );
        if ready && !was_ready {
            permit = None;
        }
    };
    drop(permit);
    st.borrow_mut().ended(
        ready,
        next.done(cfg.msgs),
        format!("sse sub {i}: {why}"),
        &notify,
    );
}

/// Handles every complete event in an SSE subscriber's `body` (HTTP/1.1 or HTTP/2).
#[allow(clippy::too_many_arguments)]
fn sse_events(
    i: usize,
    cfg: &Cfg,
    st: &RefCell<State>,
    notify: &Notify,
    body: &mut Vec<u8>,
    next: &mut Next,
    ready: &mut bool,
    now: u64,
) {
    let mut s = st.borrow_mut();
    sse::events(body, |name, data| match name {
        b"message" => match cfg.codec.message(data) {
            Some((seq, ts)) => s.deliver(next, seq, ts, now),
            None => s.error(format!("sse sub {i}: unexpected message")),
        },
        // The subscription is made when the stream opens, before `welcome`.
        b"welcome" if !*ready => {
            *ready = true;
            s.ready += 1;
            notify.notify_one();
        }
        b"error" | b"gap" | b"close" | b"dropped" => {
            if name == b"close" && memchr::memmem::find(data, b"slow_consumer").is_some() {
                s.slow_closes += 1;
            }
            let text: String = String::from_utf8_lossy(data).chars().take(200).collect();
            s.error(format!("sse sub {i}: {text}"));
        }
        _ => {}
    });
}

/// SSE streams per HTTP/2 connection (below hyper's default limit of 200 concurrent streams).
pub(crate) const H2_STREAMS: usize = 100;

/// `n` SSE subscribers (`first`, `first + 1`, ...) as streams of one HTTP/2 connection
/// (cleartext, prior knowledge), through hyper's client.
async fn sse_h2_connection(
    first: usize,
    n: usize,
    cfg: Rc<Cfg>,
    st: Rc<RefCell<State>>,
    sem: Arc<Semaphore>,
    notify: Rc<Notify>,
    base: Instant,
) {
    let fail = |why: String| {
        let mut s = st.borrow_mut();
        s.failed += n;
        s.error(format!("sse-h2 subs {first}..: {why}"));
        notify.notify_one();
    };
    let permit = sem.acquire_owned().await.ok();
    let tcp = match tokio::time::timeout(
        cfg.timeout,
        ws::tcp_connect(State::sub_addr(&cfg.ep, first), cfg.ep.src),
    )
    .await
    {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => return fail(format!("connect: {e}")),
        Err(_) => return fail("connect timed out".to_owned()),
    };
    let handshake = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    );
    let (send, conn) = match handshake.await {
        Ok(x) => x,
        Err(e) => return fail(format!("handshake: {e}")),
    };
    tokio::task::spawn_local(async move {
        let _ = conn.await;
    });
    drop(permit);
    let uri = format!("http://{}{}", State::sub_addr(&cfg.ep, first), cfg.ep.path);
    for i in first..first + n {
        let (mut send, cfg, st, notify, uri) = (
            send.clone(),
            cfg.clone(),
            st.clone(),
            notify.clone(),
            uri.clone(),
        );
        tokio::task::spawn_local(async move {
            let stream = async {
                let req = http::Request::get(uri.as_str())
                    .header("accept", "text/event-stream")
                    .body(http_body_util::Empty::<bytes::Bytes>::new())
                    .map_err(|e| e.to_string())?;
                send.ready().await.map_err(|e| e.to_string())?;
                let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
                if resp.status() != http::StatusCode::OK {
                    return Err(format!("stream refused: {}", resp.status()));
                }
                Ok(resp.into_body())
            };
            let mut body = match tokio::time::timeout(cfg.timeout, stream).await {
                Ok(Ok(b)) => b,
                Ok(Err(e)) => {
                    st.borrow_mut()
                        .failed_to_open(format!("sse-h2 sub {i}: {e}"), &notify);
                    return;
                }
                Err(_) => {
                    st.borrow_mut()
                        .failed_to_open(format!("sse-h2 sub {i}: open timed out"), &notify);
                    return;
                }
            };
            let (mut buf, mut next, mut ready) = (Vec::new(), Next::new(cfg.publishers), false);
            let why = loop {
                use http_body_util::BodyExt;
                match body.frame().await {
                    None => break "stream ended".to_owned(),
                    Some(Err(e)) => break format!("read: {e}"),
                    Some(Ok(frame)) => {
                        if let Ok(data) = frame.into_data() {
                            buf.extend_from_slice(&data);
                            let now = u64::try_from(base.elapsed().as_nanos()).unwrap_or(u64::MAX);
                            sse_events(i, &cfg, &st, &notify, &mut buf, &mut next, &mut ready, now);
                        }
                    }
                }
            };
            st.borrow_mut().ended(
                ready,
                next.done(cfg.msgs),
                format!("sse-h2 sub {i}: {why}"),
                &notify,
            );
        });
    }
}

/// Opens a long-poll session and subscribes it: the connection, the session and the cursor.
async fn poll_open(cfg: &Cfg, i: usize) -> Res<(HttpConn, String, String)> {
    let mut c = HttpConn::connect(State::sub_addr(&cfg.ep, i), cfg.ep.src, cfg.rbuf).await?;
    let (status, body) = c.request("POST", &cfg.ep.path, b"").await?;
    let body = &c.buf[body];
    if status != 200 {
        return Err(err(format!(
            "open: {status} {}",
            String::from_utf8_lossy(body)
        )));
    }
    let session = poll::str_field(body, "session")
        .ok_or_else(|| err("open: no session"))?
        .to_owned();
    let cursor = poll::str_field(body, "cursor")
        .ok_or_else(|| err("open: no cursor"))?
        .to_owned();
    let (status, _) = c
        .request(
            "POST",
            &format!("/poll?session={session}"),
            &cfg.codec.subscribe(),
        )
        .await?;
    if status != 202 {
        return Err(err(format!("subscribe: {status}")));
    }
    Ok((c, session, cursor))
}

/// One long-polling subscriber: open a session, subscribe, then poll and count.
async fn poll_subscriber(
    i: usize,
    cfg: Rc<Cfg>,
    st: Rc<RefCell<State>>,
    sem: Arc<Semaphore>,
    notify: Rc<Notify>,
    base: Instant,
) {
    let mut permit = sem.acquire_owned().await.ok();
    let (mut c, session, mut cursor) =
        match tokio::time::timeout(cfg.timeout, poll_open(&cfg, i)).await {
            Ok(Ok(x)) => x,
            Ok(Err(e)) => {
                st.borrow_mut()
                    .failed_to_open(format!("poll sub {i}: {e}"), &notify);
                return;
            }
            Err(_) => {
                st.borrow_mut()
                    .failed_to_open(format!("poll sub {i}: open timed out"), &notify);
                return;
            }
        };
    let mut ready = false;
    let mut next = Next::new(cfg.publishers);
    let why = loop {
        let path = format!("/poll?session={session}&cursor={cursor}&wait=20000");
        let (status, range) = match c.request("GET", &path, b"").await {
            Ok(x) => x,
            Err(e) => break format!("poll: {e}"),
        };
        let now = u64::try_from(base.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let body = &c.buf[range];
        if status != 200 {
            break format!("poll: {status} {}", String::from_utf8_lossy(body));
        }
        if let Some(cur) = poll::str_field(body, "cursor") {
            cursor.clear();
            cursor.push_str(cur);
        }
        let mut s = st.borrow_mut();
        cfg.codec
            .messages_in(body, |seq, ts| s.deliver(&mut next, seq, ts, now));
        let mut closed = false;
        poll::frame_types(body, |t| match t {
            b"reply" if !ready => {
                ready = true;
                s.ready += 1;
                notify.notify_one();
                permit = None;
            }
            b"error" | b"gap" | b"dropped" => s.error(format!(
                "poll sub {i}: {} frame",
                String::from_utf8_lossy(t)
            )),
            b"close" => closed = true,
            _ => {}
        });
        if closed {
            break "closed by the server".to_owned();
        }
    };
    drop(permit);
    st.borrow_mut().ended(
        ready,
        next.done(cfg.msgs),
        format!("poll sub {i}: {why}"),
        &notify,
    );
}

/// The publisher's side of a connection: the write half, plus a reader task that counts what
/// the server answers with (errors, closes).
pub(crate) struct Publisher {
    wr: OwnedWriteHalf,
    codec: Codec,
    plain: Vec<u8>,
    out: Vec<u8>,
    mask: u32,
    /// Error frames, closes or read failures seen on the publisher's connection.
    pub(crate) errors: Rc<Cell<u64>>,
    /// The first few of them, as text.
    pub(crate) samples: Rc<RefCell<Vec<String>>>,
    /// The reader task (it ends when the server answers our close, or closes).
    reader: tokio::task::JoinHandle<()>,
}

impl Publisher {
    /// Connects a publisher (must run inside a `LocalSet`).
    pub(crate) async fn connect(ep: &Endpoint, codec: Codec) -> Res<Publisher> {
        let conn = WsConn::connect(ep.addr, ep.src, &ep.pub_path, None, 16 * 1024).await?;
        let (mut rd, wr, mask) = conn.split();
        let errors = Rc::new(Cell::new(0));
        let samples = Rc::new(RefCell::new(Vec::new()));
        let (e2, s2, c2) = (errors.clone(), samples.clone(), codec.clone());
        let reader = tokio::task::spawn_local(async move {
            let note = |what: String| {
                e2.set(e2.get() + 1);
                let mut s = s2.borrow_mut();
                if s.len() < 5 {
                    s.push(what);
                }
            };
            loop {
                match rd.fill().await {
                    Ok(0) => return,
                    Ok(_) => {}
                    Err(e) => return note(format!("publisher read: {e}")),
                }
                while let Ok(Some(f)) = rd.next_frame() {
                    let p = &rd.buf[f.payload.clone()];
                    match f.op {
                        // 1000: the answer to our own close.
                        ws::OP_CLOSE if p.starts_with(&1000u16.to_be_bytes()) => return,
                        ws::OP_CLOSE => return note(format!("publisher: {}", ws::close_info(p))),
                        ws::OP_TEXT | ws::OP_BINARY => match c2.frame_type(p) {
                            Some(b"welcome" | b"reply" | b"pong") => {}
                            _ if c2.message(p).is_some() => {}
                            _ => note(format!(
                                "publisher got {}",
                                String::from_utf8_lossy(p)
                                    .chars()
                                    .take(200)
                                    .collect::<String>()
                            )),
                        },
                        _ => {}
                    }
                }
            }
        });
        Ok(Publisher {
            wr,
            codec,
            plain: Vec::new(),
            out: Vec::new(),
            mask,
            errors,
            samples,
            reader,
        })
    }

    /// Ends the connection with a close frame (code 1000), as a polite client does, and
    /// waits (at most 2 s) for the server's answer, so that the server is not stopped with
    /// the close still unread (its socket would then be reset).
    pub(crate) async fn close(&mut self) {
        self.out.clear();
        let key = ws::mask_key(&mut self.mask);
        ws::encode_frame(&mut self.out, ws::OP_CLOSE, &1000u16.to_be_bytes(), key);
        let _ = self.wr.write_all(&self.out).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), &mut self.reader).await;
    }

    /// Publishes messages `from..=to` in one write, stamped with `ts_ns`.
    pub(crate) async fn publish(&mut self, from: u64, to: u64, ts_ns: u64) -> Res<()> {
        self.publish_lane(from, to, 1, 0, ts_ns).await
    }

    /// Publishes, in one write, the messages `n` of `from..=to` that are publisher `lane`'s
    /// of `lanes` (`(n - 1) % lanes == lane`, see [`Next`]).
    pub(crate) async fn publish_lane(
        &mut self,
        from: u64,
        to: u64,
        lanes: u64,
        lane: u64,
        ts_ns: u64,
    ) -> Res<()> {
        self.out.clear();
        let op = self.codec.enc().opcode();
        let lanes = lanes.max(1);
        for seq in (from..=to).filter(|n| (n - 1) % lanes == lane) {
            self.plain.clear();
            self.codec.publish(&mut self.plain, seq, ts_ns);
            let key = ws::mask_key(&mut self.mask);
            ws::encode_frame(&mut self.out, op, &self.plain, key);
        }
        if !self.out.is_empty() {
            self.wr.write_all(&self.out).await?;
        }
        Ok(())
    }
}

/// Latency mode: publish `msgs` messages at `rate` per second, then wait (bounded) until every
/// subscriber has them all. Returns how many were sent.
async fn publish_at_rate(cfg: &Cfg, st: &Rc<RefCell<State>>, base: Instant) -> Res<u64> {
    let mut publisher = Publisher::connect(&cfg.ep, cfg.codec.clone()).await?;
    // Let the publisher's welcome pass before the clock starts.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let period = Duration::from_secs_f64(1.0 / cfg.rate.max(0.001));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sent = 0;
    for seq in 1..=cfg.msgs {
        tick.tick().await;
        let now = u64::try_from(base.elapsed().as_nanos()).unwrap_or(u64::MAX);
        publisher.publish(seq, seq, now).await?;
        sent = seq;
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    while st.borrow().low < sent && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    publisher.close().await;
    if publisher.errors.get() > 0 {
        let samples = publisher.samples.borrow().clone();
        let mut s = st.borrow_mut();
        for e in samples {
            s.error(e);
        }
    }
    Ok(sent)
}
