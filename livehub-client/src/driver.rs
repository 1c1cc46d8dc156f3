//! The client's one background task: it owns the connection, reconnects, resubscribes, and
//! routes every frame. The application talks to it through a bounded command queue; it never
//! waits on the application (deliveries are `try_send` into bounded buffers).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use livehub_protocol::{
    ClientFrame, ClientOp, Code, DisconnectReason, ErrorCode, Payload, Position, Scope,
    ServerFrame, SessionId,
};
use serde::Deserialize;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::backoff::{self, Backoff};
use crate::connection::{self, Config, Welcome, Ws};
use crate::error::Error;
use crate::events::{Ack, ConnectionEvent, ConnectionState, DisconnectCause, ServerEvent};
use crate::feed::Shared;
use crate::pattern::{self, PatEntry, PatPhase, PatternEvent, PatternOptions};
use crate::subscription::{
    Delivered, Gap, Message, ResumeCause, SubEntry, SubEvent, SubscribeOptions,
};

/// What the application asks of the driver.
#[derive(Debug)]
pub(crate) enum Command {
    /// A request answered by a `reply` (publish, event, presence, join, leave, ping).
    Request {
        op: ClientOp,
        reply: oneshot::Sender<Result<Payload, Error>>,
    },
    Subscribe {
        topic: Arc<str>,
        sub: u64,
        opts: SubscribeOptions,
        tx: mpsc::Sender<SubEvent>,
        shared: Arc<Shared>,
        reply: oneshot::Sender<Result<Position, Error>>,
    },
    Unsubscribe {
        topic: Arc<str>,
        sub: u64,
        reply: Option<oneshot::Sender<Result<(), Error>>>,
    },
    /// A pattern subscription (`psubscribe`).
    PSubscribe {
        pattern: Arc<str>,
        sub: u64,
        opts: PatternOptions,
        tx: mpsc::Sender<PatternEvent>,
        shared: Arc<Shared>,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    PUnsubscribe {
        pattern: Arc<str>,
        sub: u64,
        reply: Option<oneshot::Sender<Result<(), Error>>>,
    },
    /// A lagging pattern subscription has room again: resubscribe it from its positions.
    PRepair {
        pattern: Arc<str>,
        sub: u64,
    },
    /// The answer to a server event that asked for one, on the session that asked.
    Ack {
        ack: u64,
        session: SessionId,
        data: Payload,
        reply: oneshot::Sender<Result<Payload, Error>>,
    },
    /// A lagging subscription has room again: resubscribe it from its last position.
    Repair {
        topic: Arc<str>,
        sub: u64,
    },
    Close {
        done: oneshot::Sender<()>,
    },
}

/// A request in flight on the current connection, by id.
#[derive(Debug)]
enum Pending {
    Request {
        reply: oneshot::Sender<Result<Payload, Error>>,
        /// A client `join`/`leave`: remembered on success, to join again after a reconnect.
        room: Option<(bool, String)>,
    },
    Subscribe {
        topic: Arc<str>,
        sub: u64,
    },
    Unsubscribe {
        reply: Option<oneshot::Sender<Result<(), Error>>>,
    },
    PSubscribe {
        pattern: Arc<str>,
        sub: u64,
    },
    /// The `punsubscribe` of a lag repair: once answered, nothing more of the old pattern
    /// subscription arrives, and it is subscribed again from its positions.
    PDrain {
        pattern: Arc<str>,
        sub: u64,
    },
    /// Sent by the driver itself (a rejoin, a repair's unsubscribe): failures are reported as
    /// connection events.
    Internal,
}

/// How a connection ended.
enum End {
    /// The application closed the client.
    Closed,
    /// For good (kicked).
    Stop(DisconnectCause, Error),
    /// Lost: reconnect, the backoff starting at the given step.
    Lost(DisconnectCause, u32),
}

/// What waiting while offline gave.
enum Wait<T> {
    Done(T),
    Closed,
}

/// The reply of a `subscribe`: the topic's position now.
#[derive(Deserialize)]
struct SubscribeReply {
    epoch: Arc<str>,
    offset: u64,
}

pub(crate) struct Driver {
    cfg: Arc<Config>,
    cmds: mpsc::Receiver<Command>,
    /// For the [`Ack`]s of events that ask for an answer (weak: they must not keep the
    /// command queue open once every `Client` is gone).
    weak_cmds: mpsc::WeakSender<Command>,
    /// The session of the open connection.
    session: Option<SessionId>,
    subs: HashMap<Arc<str>, SubEntry>,
    /// Pattern subscriptions, by pattern.
    patterns: HashMap<Arc<str>, PatEntry>,
    /// Rooms this client joined itself (server-managed rooms are the server's to restore).
    rooms: BTreeSet<String>,
    pending: HashMap<u64, Pending>,
    /// Requests made while offline, sent once connected. At most `cfg.offline_queue`.
    offline: VecDeque<(ClientOp, oneshot::Sender<Result<Payload, Error>>)>,
    next_id: u64,
    backoff: Backoff,
    state: watch::Sender<ConnectionState>,
    events: broadcast::Sender<ConnectionEvent>,
    server_events: broadcast::Sender<ServerEvent>,
    closers: Vec<oneshot::Sender<()>>,
}

impl Driver {
    pub(crate) fn new(
        cfg: Arc<Config>,
        cmds: mpsc::Receiver<Command>,
        weak_cmds: mpsc::WeakSender<Command>,
        state: watch::Sender<ConnectionState>,
        events: broadcast::Sender<ConnectionEvent>,
        server_events: broadcast::Sender<ServerEvent>,
    ) -> Driver {
        Driver {
            backoff: Backoff::new(cfg.floor, cfg.ceiling),
            cfg,
            cmds,
            weak_cmds,
            session: None,
            subs: HashMap::new(),
            patterns: HashMap::new(),
            rooms: BTreeSet::new(),
            pending: HashMap::new(),
            offline: VecDeque::new(),
            next_id: 1,
            state,
            events,
            server_events,
            closers: Vec::new(),
        }
    }

    fn emit(&self, event: ConnectionEvent) {
        // No receiver is not a failure: nobody asked.
        let _ = self.events.send(event);
    }

    fn set_state(&self, state: ConnectionState) {
        self.state.send_replace(state);
    }

    fn next_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        id
    }

    /// Runs until the client is closed, from a first connection opened by the caller.
    pub(crate) async fn run(mut self, ws: Ws, welcome: Welcome) {
        let mut conn = Some((ws, welcome));
        // Where the backoff is: 0 after a plain loss, further after a shutdown or a flood.
        let mut step = 0u32;
        let mut reconnect = false;
        // Failed attempts in a row, and the last one's error.
        let mut failures = 0u32;
        let mut last_error: Option<Error> = None;
        // The server's reconnect hint (`retry_ms`), for the next delay only.
        let mut hint: Option<Duration> = None;
        let error = loop {
            if let Some((ws, welcome)) = conn.take() {
                failures = 0;
                last_error = None;
                let end = self.online(ws, welcome, reconnect).await;
                reconnect = true;
                self.connection_lost();
                match end {
                    End::Closed => break None,
                    End::Stop(cause, error) => {
                        self.emit(ConnectionEvent::Disconnected { cause });
                        break Some(error);
                    }
                    End::Lost(cause, start) => {
                        tracing::debug!(?cause, "connection lost");
                        if let DisconnectCause::Server {
                            retry_after: Some(after),
                            ..
                        } = &cause
                        {
                            hint = Some(*after);
                        }
                        self.emit(ConnectionEvent::Disconnected { cause });
                        step = start;
                    }
                }
            }
            if let (Some(max), Some(e)) = (self.cfg.max_attempts, &last_error) {
                if failures >= max {
                    break Some(e.clone());
                }
            }
            let delay = match hint.take() {
                Some(after) => after.min(self.cfg.ceiling),
                None => self.backoff.delay(step),
            };
            let n = failures.saturating_add(1);
            self.set_state(ConnectionState::Reconnecting { attempt: n, delay });
            self.emit(ConnectionEvent::Reconnecting { attempt: n, delay });
            if let Wait::Closed = self.offline_wait(tokio::time::sleep(delay)).await {
                break None;
            }
            self.set_state(ConnectionState::Connecting { attempt: n });
            let cfg = self.cfg.clone();
            match self
                .offline_wait(async move { connection::open(&cfg).await })
                .await
            {
                Wait::Closed => break None,
                Wait::Done(Ok(c)) => conn = Some(c),
                Wait::Done(Err(error)) => {
                    tracing::debug!(%error, attempt = n, "reconnect failed");
                    self.emit(ConnectionEvent::ConnectFailed {
                        attempt: n,
                        error: error.clone(),
                    });
                    if error.is_permanent_refusal() {
                        break Some(error);
                    }
                    last_error = Some(error);
                    failures = n;
                    step = step.saturating_add(1);
                }
            }
        };
        self.finish(error);
    }

    /// Waits for `fut` while serving the application as an offline client.
    async fn offline_wait<F: Future>(&mut self, fut: F) -> Wait<F::Output> {
        tokio::pin!(fut);
        loop {
            tokio::select! {
                out = &mut fut => return Wait::Done(out),
                cmd = self.cmds.recv() => match cmd {
                    None => return Wait::Closed,
                    Some(Command::Close { done }) => {
                        self.closers.push(done);
                        return Wait::Closed;
                    }
                    Some(cmd) => self.offline_command(cmd),
                },
            }
        }
    }

    fn offline_command(&mut self, cmd: Command) {
        match cmd {
            Command::Request { op, reply } => {
                if self.offline.len() >= self.cfg.offline_queue {
                    self.offline.retain(|(_, r)| !r.is_closed());
                }
                if self.offline.len() >= self.cfg.offline_queue {
                    let _ = reply.send(Err(Error::QueueFull));
                } else {
                    self.offline.push_back((op, reply));
                }
            }
            Command::Subscribe {
                topic,
                sub,
                opts,
                tx,
                shared,
                reply,
            } => {
                // Registered now, subscribed when connected.
                let _ = self.register(topic, sub, &opts, tx, shared, reply);
            }
            Command::Unsubscribe { topic, sub, reply } => {
                self.remove(&topic, sub);
                if let Some(r) = reply {
                    let _ = r.send(Ok(()));
                }
            }
            Command::PSubscribe {
                pattern,
                sub,
                opts,
                tx,
                shared,
                reply,
            } => {
                let _ = self.register_pattern(pattern, sub, &opts, tx, shared, reply);
            }
            Command::PUnsubscribe {
                pattern,
                sub,
                reply,
            } => {
                self.remove_pattern(&pattern, sub);
                if let Some(r) = reply {
                    let _ = r.send(Ok(()));
                }
            }
            // Every subscription resumes from its last position when connected.
            Command::Repair { .. } | Command::PRepair { .. } => {}
            // The session that asked is gone: the server no longer waits for this answer.
            Command::Ack { reply, .. } => {
                let _ = reply.send(Err(Error::ConnectionLost));
            }
            Command::Close { done } => self.closers.push(done),
        }
    }

    /// Adds a subscription; `None` (and the caller answered) if the topic is taken.
    fn register(
        &mut self,
        topic: Arc<str>,
        sub: u64,
        opts: &SubscribeOptions,
        tx: mpsc::Sender<SubEvent>,
        shared: Arc<Shared>,
        reply: oneshot::Sender<Result<Position, Error>>,
    ) -> Option<Arc<str>> {
        if let Some(old) = self.subs.get(&topic) {
            if !old.abandoned() {
                let _ = reply.send(Err(Error::Server {
                    code: ErrorCode::AlreadySubscribed.into(),
                    message: format!("already subscribed to {topic} on this client"),
                }));
                return None;
            }
        }
        let entry = SubEntry::new(sub, opts, tx, shared, reply);
        self.subs.insert(topic.clone(), entry);
        Some(topic)
    }

    /// Adds a pattern subscription; `None` (and the caller answered) if the pattern is taken.
    fn register_pattern(
        &mut self,
        pattern: Arc<str>,
        sub: u64,
        opts: &PatternOptions,
        tx: mpsc::Sender<PatternEvent>,
        shared: Arc<Shared>,
        reply: oneshot::Sender<Result<(), Error>>,
    ) -> Option<Arc<str>> {
        if let Some(old) = self.patterns.get(&pattern) {
            if !old.abandoned() {
                let _ = reply.send(Err(Error::Server {
                    code: ErrorCode::AlreadySubscribed.into(),
                    message: format!("already subscribed to the pattern {pattern} on this client"),
                }));
                return None;
            }
        }
        let entry = PatEntry::new(sub, opts, tx, shared, reply);
        self.patterns.insert(pattern.clone(), entry);
        Some(pattern)
    }

    /// Removes the pattern subscription `sub` of `pattern`; whether it was there.
    fn remove_pattern(&mut self, pattern: &Arc<str>, sub: u64) -> Option<PatEntry> {
        if self.patterns.get(pattern).is_some_and(|e| e.id == sub) {
            self.patterns.remove(pattern)
        } else {
            None
        }
    }

    /// Removes the subscription `sub` of `topic`; whether it was there.
    fn remove(&mut self, topic: &Arc<str>, sub: u64) -> bool {
        self.remove_entry(topic, sub).is_some()
    }

    /// Everything in flight on a lost connection fails; subscriptions wait to resume.
    fn connection_lost(&mut self) {
        self.session = None;
        self.fail_pending(Error::ConnectionLost);
    }

    /// Answers every request in flight with `error`. An unsubscribe succeeds: no later
    /// session has the subscription.
    fn fail_pending(&mut self, error: Error) {
        for (_, p) in self.pending.drain() {
            match p {
                Pending::Request { reply, .. } => {
                    let _ = reply.send(Err(error.clone()));
                }
                Pending::Unsubscribe { reply: Some(r) } => {
                    let _ = r.send(Ok(()));
                }
                _ => {}
            }
        }
    }

    /// The end: every waiter and subscription learns why.
    fn finish(mut self, error: Option<Error>) {
        let why = error.clone().unwrap_or(Error::Closed);
        for (_, reply) in self.offline.drain(..) {
            let _ = reply.send(Err(Error::Closed));
        }
        self.fail_pending(Error::Closed);
        for (_, entry) in self.subs.drain() {
            entry.close(why.clone());
        }
        for (_, entry) in self.patterns.drain() {
            entry.close(why.clone());
        }
        self.set_state(ConnectionState::Closed {
            error: error.clone(),
        });
        self.emit(ConnectionEvent::Closed { error });
        // Later commands find the queue closed and answer `Closed` themselves.
        self.cmds.close();
        while let Ok(cmd) = self.cmds.try_recv() {
            refuse(cmd);
        }
        for done in self.closers.drain(..) {
            let _ = done.send(());
        }
    }

    /// Serves one connection until it ends.
    async fn online(&mut self, ws: Ws, welcome: Welcome, reconnect: bool) -> End {
        let session = welcome.session;
        self.session = Some(session);
        tracing::debug!(%session, reconnect, "connected");
        self.set_state(ConnectionState::Connected { session });
        self.emit(ConnectionEvent::Connected { session, reconnect });
        let liveness = self
            .cfg
            .liveness
            .unwrap_or(Duration::from_millis(welcome.timeout_ms.max(1)));
        let mut conn = Conn {
            ws,
            codec: self.cfg.codec,
            write_timeout: liveness,
        };
        if let Err(end) = self.resume_all(&mut conn).await {
            return end;
        }
        let mut deadline = Instant::now() + liveness;
        loop {
            tokio::select! {
                msg = conn.ws.next() => {
                    deadline = Instant::now() + liveness;
                    let end = match msg {
                        Some(Ok(msg)) => self.on_message(&mut conn, msg).await,
                        Some(Err(e)) => Some(End::Lost(DisconnectCause::Network(e.to_string()), 0)),
                        None => Some(End::Lost(
                            DisconnectCause::Network("closed without a close frame".into()),
                            0,
                        )),
                    };
                    if let Some(end) = end {
                        return end;
                    }
                }
                cmd = self.cmds.recv() => {
                    let cmd = match cmd {
                        None => {
                            conn.close().await;
                            return End::Closed;
                        }
                        Some(Command::Close { done }) => {
                            self.closers.push(done);
                            conn.close().await;
                            return End::Closed;
                        }
                        Some(cmd) => cmd,
                    };
                    if let Err(end) = self.online_command(&mut conn, cmd).await {
                        return end;
                    }
                }
                () = tokio::time::sleep_until(deadline) => {
                    return End::Lost(DisconnectCause::Silent, 0);
                }
            }
        }
    }

    /// After (re)connecting: every subscription from its last position, the rooms joined, then
    /// the requests queued while offline.
    async fn resume_all(&mut self, conn: &mut Conn) -> Result<(), End> {
        self.subs.retain(|_, e| !e.abandoned());
        let topics: Vec<Arc<str>> = self.subs.keys().cloned().collect();
        for topic in topics {
            self.send_subscribe(conn, &topic, ResumeCause::Reconnect)
                .await?;
        }
        self.patterns.retain(|_, e| !e.abandoned());
        let patterns: Vec<Arc<str>> = self.patterns.keys().cloned().collect();
        for pattern in patterns {
            self.send_psubscribe(conn, &pattern, ResumeCause::Reconnect)
                .await?;
        }
        let rooms: Vec<String> = self.rooms.iter().cloned().collect();
        for room in rooms {
            let id = self.next_id();
            self.pending.insert(id, Pending::Internal);
            conn.send(&ClientFrame::new(ClientOp::Join { room }).with_id(id))
                .await?;
        }
        while let Some((op, reply)) = self.offline.pop_front() {
            if !reply.is_closed() {
                self.send_request(conn, op, reply).await?;
            }
        }
        Ok(())
    }

    async fn send_subscribe(
        &mut self,
        conn: &mut Conn,
        topic: &Arc<str>,
        cause: ResumeCause,
    ) -> Result<(), End> {
        let Some(entry) = self.subs.get_mut(topic) else {
            return Ok(());
        };
        let (since, last) = entry.resubscribe(cause);
        let (sub, presence, conflate) = (entry.id, entry.presence, entry.conflate);
        let id = self.next_id();
        self.pending.insert(
            id,
            Pending::Subscribe {
                topic: topic.clone(),
                sub,
            },
        );
        let op = ClientOp::Subscribe {
            topic: topic.to_string(),
            since,
            last,
            presence,
            conflate,
        };
        conn.send(&ClientFrame::new(op).with_id(id)).await
    }

    async fn send_psubscribe(
        &mut self,
        conn: &mut Conn,
        pattern: &Arc<str>,
        cause: ResumeCause,
    ) -> Result<(), End> {
        let Some(entry) = self.patterns.get_mut(pattern) else {
            return Ok(());
        };
        let positions = entry.resubscribe(cause);
        let sub = entry.id;
        let id = self.next_id();
        self.pending.insert(
            id,
            Pending::PSubscribe {
                pattern: pattern.clone(),
                sub,
            },
        );
        let op = ClientOp::PSubscribe {
            pattern: pattern.to_string(),
            positions,
        };
        conn.send(&ClientFrame::new(op).with_id(id)).await
    }

    async fn send_request(
        &mut self,
        conn: &mut Conn,
        op: ClientOp,
        reply: oneshot::Sender<Result<Payload, Error>>,
    ) -> Result<(), End> {
        if self.pending.len() >= self.cfg.max_in_flight {
            // Requests whose callers gave up (timed out) never hear their answer.
            self.pending.retain(|_, p| match p {
                Pending::Request { reply, .. } => !reply.is_closed(),
                _ => true,
            });
        }
        if self.pending.len() >= self.cfg.max_in_flight {
            let _ = reply.send(Err(Error::QueueFull));
            return Ok(());
        }
        let room = match &op {
            ClientOp::Join { room } => Some((true, room.clone())),
            ClientOp::Leave { room } => Some((false, room.clone())),
            _ => None,
        };
        let id = self.next_id();
        let frame = ClientFrame::new(op).with_id(id);
        let bytes = match frame.encode(self.cfg.codec) {
            Ok(b) => b,
            Err(e) => {
                let _ = reply.send(Err(Error::Encode(e)));
                return Ok(());
            }
        };
        self.pending.insert(id, Pending::Request { reply, room });
        conn.send_bytes(bytes).await
    }

    async fn online_command(&mut self, conn: &mut Conn, cmd: Command) -> Result<(), End> {
        match cmd {
            Command::Request { op, reply } => self.send_request(conn, op, reply).await,
            Command::Ack {
                ack,
                session,
                data,
                reply,
            } => {
                if self.session != Some(session) {
                    let _ = reply.send(Err(Error::ConnectionLost));
                    return Ok(());
                }
                self.send_request(conn, ClientOp::Ack { ack, data }, reply)
                    .await
            }
            Command::Subscribe {
                topic,
                sub,
                opts,
                tx,
                shared,
                reply,
            } => {
                let replaced = self.subs.contains_key(&topic);
                let Some(topic) = self.register(topic, sub, &opts, tx, shared, reply) else {
                    return Ok(());
                };
                if replaced {
                    // An abandoned subscription of the same topic: the server still has it.
                    self.unsubscribe_internal(conn, &topic).await?;
                }
                self.send_subscribe(conn, &topic, ResumeCause::Since).await
            }
            Command::Unsubscribe { topic, sub, reply } => {
                if !self.remove(&topic, sub) {
                    if let Some(r) = reply {
                        let _ = r.send(Ok(()));
                    }
                    return Ok(());
                }
                let id = self.next_id();
                self.pending.insert(id, Pending::Unsubscribe { reply });
                let op = ClientOp::Unsubscribe {
                    topic: topic.to_string(),
                };
                conn.send(&ClientFrame::new(op).with_id(id)).await
            }
            Command::Repair { topic, sub } => {
                let lagging = self
                    .subs
                    .get(&topic)
                    .is_some_and(|e| e.id == sub && e.lagging);
                if !lagging {
                    return Ok(());
                }
                tracing::debug!(%topic, "resubscribing a lagging subscription");
                self.unsubscribe_internal(conn, &topic).await?;
                self.send_subscribe(conn, &topic, ResumeCause::Lagged).await
            }
            Command::PSubscribe {
                pattern,
                sub,
                opts,
                tx,
                shared,
                reply,
            } => {
                let replaced = self.patterns.contains_key(&pattern);
                let Some(pattern) = self.register_pattern(pattern, sub, &opts, tx, shared, reply)
                else {
                    return Ok(());
                };
                if replaced {
                    // An abandoned subscription of the same pattern: the server still has it.
                    self.punsubscribe_internal(conn, &pattern).await?;
                }
                self.send_psubscribe(conn, &pattern, ResumeCause::Since)
                    .await
            }
            Command::PUnsubscribe {
                pattern,
                sub,
                reply,
            } => {
                if self.remove_pattern(&pattern, sub).is_none() {
                    if let Some(r) = reply {
                        let _ = r.send(Ok(()));
                    }
                    return Ok(());
                }
                let id = self.next_id();
                self.pending.insert(id, Pending::Unsubscribe { reply });
                let op = ClientOp::PUnsubscribe {
                    pattern: pattern.to_string(),
                };
                conn.send(&ClientFrame::new(op).with_id(id)).await
            }
            Command::PRepair { pattern, sub } => {
                let Some(entry) = self
                    .patterns
                    .get_mut(&pattern)
                    .filter(|e| e.id == sub && e.lagging && e.phase != PatPhase::Draining)
                else {
                    return Ok(());
                };
                tracing::debug!(%pattern, "resubscribing a lagging pattern subscription");
                entry.drain();
                let id = self.next_id();
                self.pending.insert(
                    id,
                    Pending::PDrain {
                        pattern: pattern.clone(),
                        sub,
                    },
                );
                let op = ClientOp::PUnsubscribe {
                    pattern: pattern.to_string(),
                };
                conn.send(&ClientFrame::new(op).with_id(id)).await
            }
            Command::Close { done } => {
                // Handled by the caller; kept for completeness.
                self.closers.push(done);
                Ok(())
            }
        }
    }

    async fn send_internal(&mut self, conn: &mut Conn, op: ClientOp) -> Result<(), End> {
        let id = self.next_id();
        self.pending.insert(id, Pending::Internal);
        conn.send(&ClientFrame::new(op).with_id(id)).await
    }

    /// Tells the server this client no longer follows `topic` (the answer is not awaited).
    async fn unsubscribe_internal(&mut self, conn: &mut Conn, topic: &str) -> Result<(), End> {
        let op = ClientOp::Unsubscribe {
            topic: topic.to_owned(),
        };
        self.send_internal(conn, op).await
    }

    /// Tells the server this client no longer follows `pattern` (the answer is not awaited).
    async fn punsubscribe_internal(&mut self, conn: &mut Conn, pattern: &str) -> Result<(), End> {
        let op = ClientOp::PUnsubscribe {
            pattern: pattern.to_owned(),
        };
        self.send_internal(conn, op).await
    }

    /// Hands a message or gap of `topic` to every pattern subscription that matches it; those
    /// whose application went away are unsubscribed.
    async fn deliver_to_patterns(
        &mut self,
        conn: &mut Conn,
        topic: &Arc<str>,
        mut deliver: impl FnMut(&mut PatEntry) -> Delivered,
    ) -> Option<End> {
        if self.patterns.is_empty() {
            return None;
        }
        let mut gone = Vec::new();
        for (p, entry) in self.patterns.iter_mut() {
            if pattern::matches(p, topic) && deliver(entry) == Delivered::Gone {
                gone.push(p.clone());
            }
        }
        for p in gone {
            self.patterns.remove(&p);
            if let Err(end) = self.punsubscribe_internal(conn, &p).await {
                return Some(end);
            }
        }
        None
    }

    /// One WebSocket message from the server. `Some` ends the connection.
    async fn on_message(&mut self, conn: &mut Conn, msg: WsMessage) -> Option<End> {
        let (codec, bytes) = match msg {
            WsMessage::Close(close) => {
                let (code, reason) = close
                    .map(|c| (u16::from(c.code), c.reason.to_string()))
                    .unwrap_or((1005, String::new()));
                return Some(close_end(code, reason));
            }
            other => connection::frame_bytes(other)?,
        };
        let frame = match ServerFrame::decode(codec, &bytes) {
            Ok(f) => f,
            Err(e) => {
                self.emit(ConnectionEvent::ProtocolError {
                    message: format!("an unreadable frame ({} bytes): {e}", bytes.len()),
                });
                return None;
            }
        };
        self.on_frame(conn, frame).await
    }

    async fn on_frame(&mut self, conn: &mut Conn, frame: ServerFrame) -> Option<End> {
        match frame {
            ServerFrame::Message {
                topic,
                epoch,
                offset,
                data,
                key,
                delete,
            } => {
                let message = Message {
                    topic: topic.clone(),
                    position: Position { epoch, offset },
                    data,
                    key,
                    delete,
                };
                if let Some(end) = self
                    .deliver_to_patterns(conn, &topic, |e| e.on_message(message.clone()))
                    .await
                {
                    return Some(end);
                }
                let outcome = self.subs.get_mut(&topic)?.on_message(message);
                self.after_delivery(conn, &topic, outcome).await
            }
            ServerFrame::Gap {
                topic,
                epoch,
                from,
                to,
                reason,
            } => {
                let gap = Gap {
                    epoch,
                    from,
                    to,
                    reason: Some(reason),
                };
                if let Some(end) = self
                    .deliver_to_patterns(conn, &topic, |e| e.on_gap(&topic, gap.clone()))
                    .await
                {
                    return Some(end);
                }
                let outcome = self.subs.get_mut(&topic)?.on_gap(gap);
                self.after_delivery(conn, &topic, outcome).await
            }
            ServerFrame::Presence {
                join,
                scope,
                member,
            } => match scope {
                Scope::Topic(topic) => {
                    let outcome = self.subs.get_mut(&topic)?.on_presence(join, member);
                    self.after_delivery(conn, &topic, outcome).await
                }
                Scope::Room(room) => {
                    let room = room.to_string();
                    let ev = if join {
                        ServerEvent::Join { room, member }
                    } else {
                        ServerEvent::Leave { room, member }
                    };
                    let _ = self.server_events.send(ev);
                    None
                }
            },
            ServerFrame::Event {
                event,
                data,
                ack: None,
            } => {
                let _ = self.server_events.send(ServerEvent::Event {
                    event: event.to_string(),
                    data,
                });
                None
            }
            ServerFrame::Event {
                event,
                data,
                ack: Some(number),
            } => {
                let session = self.session?;
                let ack = Ack::new(
                    number,
                    session,
                    self.cfg.codec,
                    self.weak_cmds.clone(),
                    self.cfg.ack_timeout,
                );
                let ev = ServerEvent::Ask {
                    event: event.to_string(),
                    data,
                    ack,
                };
                if self.server_events.send(ev).is_err() {
                    // Nobody listens: the server's wait times out; say why.
                    tracing::debug!(
                        ack = number,
                        "an event asks for an answer, and nothing listens"
                    );
                    self.emit(ConnectionEvent::ProtocolError {
                        message: format!(
                            "event {event} asks for an answer (ack {number}), and no ServerEvents receiver listens"
                        ),
                    });
                }
                None
            }
            ServerFrame::Dropped { count } => {
                let _ = self.server_events.send(ServerEvent::Dropped { count });
                None
            }
            ServerFrame::Reply { id, data } => self.on_reply(conn, id, data).await,
            ServerFrame::Pong { id: Some(id) } => self.on_reply(conn, id, Payload::null()).await,
            ServerFrame::Error {
                id: Some(id),
                code,
                message,
            } => {
                self.on_error(id, code, message);
                None
            }
            ServerFrame::Error {
                id: None,
                code,
                message,
            } => {
                self.emit(ConnectionEvent::ServerError { code, message });
                None
            }
            ServerFrame::Close {
                code,
                reason,
                retry_ms,
            } => Some(close_end_hinted(
                code,
                reason.into_owned(),
                retry_ms.map(Duration::from_millis),
            )),
            ServerFrame::Welcome { .. } => {
                self.emit(ConnectionEvent::ProtocolError {
                    message: "a second welcome".into(),
                });
                None
            }
            // Not for WebSocket clients, or of a newer protocol: ignored.
            _ => None,
        }
    }

    /// A subscription whose application went away is unsubscribed.
    async fn after_delivery(
        &mut self,
        conn: &mut Conn,
        topic: &Arc<str>,
        outcome: Delivered,
    ) -> Option<End> {
        if outcome != Delivered::Gone {
            return None;
        }
        self.subs.remove(topic);
        self.unsubscribe_internal(conn, topic).await.err()
    }

    async fn on_reply(&mut self, conn: &mut Conn, id: u64, data: Payload) -> Option<End> {
        match self.pending.remove(&id)? {
            Pending::Request { reply, room } => {
                match room {
                    Some((true, room)) => {
                        self.rooms.insert(room);
                    }
                    Some((false, room)) => {
                        self.rooms.remove(&room);
                    }
                    None => {}
                }
                let _ = reply.send(Ok(data));
                None
            }
            Pending::Subscribe { topic, sub } => {
                let entry = self.subs.get_mut(&topic).filter(|e| e.id == sub)?;
                let outcome = match data.decode::<SubscribeReply>() {
                    Ok(r) => entry.on_reply(Position::new(r.epoch, r.offset)),
                    Err(e) => {
                        let message = format!("a subscribe reply without a position: {e}");
                        self.emit(ConnectionEvent::ProtocolError {
                            message: message.clone(),
                        });
                        if let Some(entry) = self.subs.remove(&topic) {
                            entry.close(Error::Protocol(message));
                        }
                        return None;
                    }
                };
                let abandoned = self.subs.get(&topic).is_some_and(SubEntry::abandoned);
                let outcome = if abandoned { Delivered::Gone } else { outcome };
                self.after_delivery(conn, &topic, outcome).await
            }
            Pending::Unsubscribe { reply } => {
                if let Some(r) = reply {
                    let _ = r.send(Ok(()));
                }
                None
            }
            Pending::PSubscribe { pattern, sub } => {
                let entry = self.patterns.get_mut(&pattern).filter(|e| e.id == sub)?;
                let outcome = if entry.abandoned() {
                    Delivered::Gone
                } else {
                    entry.on_reply()
                };
                if outcome != Delivered::Gone {
                    return None;
                }
                self.patterns.remove(&pattern);
                self.punsubscribe_internal(conn, &pattern).await.err()
            }
            Pending::PDrain { pattern, sub } => {
                let draining = self
                    .patterns
                    .get(&pattern)
                    .is_some_and(|e| e.id == sub && e.phase == PatPhase::Draining);
                if !draining {
                    return None;
                }
                self.send_psubscribe(conn, &pattern, ResumeCause::Lagged)
                    .await
                    .err()
            }
            Pending::Internal => None,
        }
    }

    fn on_error(&mut self, id: u64, code: Code, message: String) {
        let error = Error::Server {
            code: code.clone(),
            message: message.clone(),
        };
        match self.pending.remove(&id) {
            Some(Pending::Request { reply, .. }) => {
                let _ = reply.send(Err(error));
            }
            Some(Pending::Subscribe { topic, sub }) => {
                if self
                    .remove_entry(&topic, sub)
                    .map(|e| e.close(error))
                    .is_none()
                {
                    tracing::debug!(%topic, "a refused subscribe of a subscription now gone");
                }
            }
            Some(Pending::Unsubscribe { reply }) => {
                if let Some(r) = reply {
                    let _ = r.send(Err(error));
                }
            }
            Some(Pending::PSubscribe { pattern, sub }) => {
                if let Some(e) = self.remove_pattern(&pattern, sub) {
                    e.close(error);
                }
            }
            Some(Pending::PDrain { pattern, sub }) => {
                // The server refused to let it go (it no longer had it): the subscription
                // ends, with why.
                if let Some(e) = self.remove_pattern(&pattern, sub) {
                    e.close(error);
                }
            }
            Some(Pending::Internal) | None => {
                self.emit(ConnectionEvent::ServerError { code, message });
            }
        }
    }

    fn remove_entry(&mut self, topic: &Arc<str>, sub: u64) -> Option<SubEntry> {
        if self.subs.get(topic).is_some_and(|e| e.id == sub) {
            self.subs.remove(topic)
        } else {
            None
        }
    }
}

/// What a close (frame or `close` frame) means for the client: kicked is for good; after a
/// shutdown or a flood, come back later and spread out; anything else, reconnect and resume.
fn close_end(code: u16, text: String) -> End {
    close_end_hinted(code, text, None)
}

/// [`close_end`] with the `retry_ms` field of a `close` frame (a hint in the text wins).
fn close_end_hinted(code: u16, text: String, field: Option<Duration>) -> End {
    let (reason, hinted) = split_reason(&text);
    let retry_after = hinted.or(field);
    let reason = reason.to_owned();
    let known = DisconnectReason::from_close(code, &reason);
    let cause = DisconnectCause::Server {
        code,
        reason: reason.clone(),
        retry_after,
    };
    match known {
        Some(DisconnectReason::Kicked) => End::Stop(cause, Error::Kicked { code, reason }),
        Some(DisconnectReason::Shutdown) => End::Lost(cause, backoff::AFTER_SHUTDOWN),
        Some(DisconnectReason::RateLimited) => End::Lost(cause, backoff::AFTER_RATE_LIMIT),
        _ => End::Lost(cause, 0),
    }
}

/// A close reason text and its parameters (PROTOCOL.md, "The browser client", reconnect hints):
/// the reason is the part before the first `;`, then `name=value` pairs separated by `;`;
/// `retry_ms=<whole number>` is the server's reconnect hint. Other parameters, and a
/// `retry_ms` that is not a whole number, are ignored.
pub(crate) fn split_reason(text: &str) -> (&str, Option<Duration>) {
    let parsed = livehub_protocol::CloseText::parse(text);
    (parsed.reason, parsed.retry_ms.map(Duration::from_millis))
}

/// A command that arrives after the end.
fn refuse(cmd: Command) {
    match cmd {
        Command::Request { reply, .. } => {
            let _ = reply.send(Err(Error::Closed));
        }
        Command::Subscribe { reply, .. } => {
            let _ = reply.send(Err(Error::Closed));
        }
        Command::PSubscribe { reply, .. } => {
            let _ = reply.send(Err(Error::Closed));
        }
        Command::PUnsubscribe {
            reply: Some(reply), ..
        } => {
            let _ = reply.send(Ok(()));
        }
        Command::Unsubscribe {
            reply: Some(reply), ..
        } => {
            let _ = reply.send(Ok(()));
        }
        Command::Close { done } => {
            let _ = done.send(());
        }
        Command::Ack { reply, .. } => {
            let _ = reply.send(Err(Error::Closed));
        }
        _ => {}
    }
}

/// The open WebSocket and how to write to it.
struct Conn {
    ws: Ws,
    codec: livehub_protocol::Codec,
    /// A write that cannot finish within this is a dead connection.
    write_timeout: Duration,
}

impl Conn {
    async fn send(&mut self, frame: &ClientFrame) -> Result<(), End> {
        // Frames the driver builds itself hold no application data: encoding cannot fail.
        let bytes = frame
            .encode(self.codec)
            .map_err(|e| End::Lost(DisconnectCause::Network(format!("cannot encode: {e}")), 0))?;
        self.send_bytes(bytes).await
    }

    async fn send_bytes(&mut self, bytes: bytes::Bytes) -> Result<(), End> {
        let lost = |why: String| End::Lost(DisconnectCause::Network(why), 0);
        let msg = connection::to_message(self.codec, bytes).map_err(|e| lost(e.to_string()))?;
        match tokio::time::timeout(self.write_timeout, self.ws.send(msg)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(lost(e.to_string())),
            Err(_) => Err(lost(
                "a write did not finish within the liveness timeout".into(),
            )),
        }
    }

    /// A normal close, waiting a little for the server's answer.
    async fn close(&mut self) {
        let frame = CloseFrame {
            code: CloseCode::Normal,
            reason: "normal".into(),
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), self.ws.close(Some(frame))).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_reasons_split_from_their_parameters() {
        let ms = |n| Some(Duration::from_millis(n));
        assert_eq!(
            split_reason("shutdown;retry_ms=2350"),
            ("shutdown", ms(2350))
        );
        assert_eq!(split_reason("shutdown"), ("shutdown", None));
        assert_eq!(split_reason(""), ("", None));
        assert_eq!(
            split_reason("shutdown;x=1; retry_ms=5"),
            ("shutdown", ms(5))
        );
        for bad in [
            "shutdown;retry_ms=",
            "shutdown;retry_ms=-1",
            "shutdown;retry_ms=1.5",
            "shutdown;retry_ms=abc",
            "shutdown;retry_ms",
            "shutdown;retry_ms=99999999999999999999999",
        ] {
            assert_eq!(split_reason(bad), ("shutdown", None), "{bad}");
        }
        // The known reason is read from the part before the parameters.
        match close_end(1001, "shutdown;retry_ms=2350".into()) {
            End::Lost(
                DisconnectCause::Server {
                    code: 1001,
                    reason,
                    retry_after,
                },
                step,
            ) => {
                assert_eq!(reason, "shutdown");
                assert_eq!(retry_after, ms(2350));
                assert_eq!(step, backoff::AFTER_SHUTDOWN);
            }
            _ => panic!("a shutdown is a loss to come back from"),
        }
        assert!(matches!(
            close_end(1008, "kicked;retry_ms=10".into()),
            End::Stop(_, Error::Kicked { .. })
        ));
        // A `close` frame (SSE, poll) carries the hint as a field.
        match close_end_hinted(1001, "shutdown".into(), ms(700)) {
            End::Lost(DisconnectCause::Server { retry_after, .. }, _) => {
                assert_eq!(retry_after, ms(700));
            }
            _ => panic!("a shutdown is a loss to come back from"),
        }
    }
}
