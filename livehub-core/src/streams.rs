//! The local subscriber index: which local sessions follow which topic, what the engine hands
//! the node, and how a subscription catches up with a stream.
//!
//! ## Subscribe with recovery (every engine)
//!
//! 1. The session is registered on the topic as *pending*: from then on the node keeps what it
//!    delivers for that session in a small buffer instead of its queue.
//! 2. The node makes sure it hears the topic's channel on the engine.
//! 3. It reads the stream's top and, with `since`, the history after that position.
//! 4. Under the topic's lock: the reply, then the history after `since` and the buffered
//!    frames, merged by offset (a duplicate is dropped, a hole becomes a `gap`), and the session
//!    goes live. Nothing live can slip in between: deliveries take the same lock.
//!
//! ## Every delivery is checked
//!
//! The node keeps the last position it delivered per topic. A message at or before it is a
//! duplicate (dropped); one that skips ahead means the node missed some: it holds what comes
//! next and repairs the hole from the engine's history, or, if the history no longer holds
//! it, tells every subscriber with a `gap`. A message of another epoch means the stream was
//! recreated (the engine lost it, or it expired): subscribers get a `gap` with reason `epoch`
//! and the new stream from its start. Each subscription also keeps the next offset it
//! expects, so a message the subscription already has (recovered from history) is not
//! delivered twice.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dashmap::DashMap;

use crate::broker::{BrokerError, Channel, EngineEvent, HistoryFrom, Position, Publication};
use crate::error::{DisconnectReason, ErrorCode};
use crate::frame::{Frame, GapReason, Scope, Shared};
use crate::node::{Inner, Tally};
use crate::presence::{LocalPresence, PresenceEvents, ScopeName, Watchers};
use crate::session::{lock, SessionId, SessionState};
use crate::stats::Stats;

/// A failed client operation: the code and message of its `error` frame.
pub(crate) type OpError = (ErrorCode, String);

/// One topic that local sessions follow.
pub(crate) struct LocalTopic {
    pub(crate) name: Arc<str>,
    pub(crate) state: Mutex<TopicState>,
}

pub(crate) struct TopicState {
    /// Changed only by [`TopicState::add_sub`] and [`TopicState::remove_sub`], which keep
    /// `watching` right.
    pub(crate) subs: HashMap<SessionId, Sub>,
    /// How many of `subs` asked for session (`[0]`) and user (`[1]`) presence events: a
    /// `join` or `leave` nobody watches costs nothing, instead of a pass over every
    /// subscriber (which made each subscribe O(subscribers)).
    watching: [usize; 2],
    /// The live subscribers in session order and their users' session counts.
    pub(crate) presence: LocalPresence,
    /// The last position this node delivered; `None` until the engine's first answer.
    cursor: Option<(Arc<str>, u64)>,
    /// A hole is being repaired: what the engine delivers meanwhile waits here, in order.
    repair: Option<Box<Held>>,
    /// Removed from the node's table: whoever finds it dead looks the topic up again.
    pub(crate) dead: bool,
}

impl TopicState {
    /// Adds (or replaces) a subscription.
    fn add_sub(&mut self, id: SessionId, sub: Sub) {
        self.watch(sub.presence, true);
        if let Some(old) = self.subs.insert(id, sub) {
            self.watch(old.presence, false);
        }
    }

    /// Removes a subscription.
    fn remove_sub(&mut self, id: &SessionId) -> Option<Sub> {
        let sub = self.subs.remove(id)?;
        self.watch(sub.presence, false);
        Some(sub)
    }

    fn watch(&mut self, mode: PresenceEvents, add: bool) {
        let slot = match mode {
            PresenceEvents::None => return,
            PresenceEvents::Sessions => &mut self.watching[0],
            PresenceEvents::Users => &mut self.watching[1],
        };
        *slot = if add {
            *slot + 1
        } else {
            slot.saturating_sub(1)
        };
    }

    /// Whether any subscription gets presence events for `to`.
    fn watched(&self, to: Watchers) -> bool {
        (to.sessions && self.watching[0] > 0) || (to.users && self.watching[1] > 0)
    }
}

pub(crate) struct Sub {
    pub(crate) session: Arc<SessionState>,
    /// Which `join`/`leave` events of the topic it wants.
    pub(crate) presence: PresenceEvents,
    /// Conflated: when behind, only the newest message per key is kept.
    conflate: bool,
    /// The next offset this subscription expects (in the node's current epoch).
    next: u64,
    /// Still catching up: what is delivered meanwhile waits here.
    pending: Option<Box<Held>>,
}

impl Sub {
    pub(crate) fn is_live(&self) -> bool {
        self.pending.is_none()
    }
}

/// Frames held for a subscription or a topic while it catches up; bounded.
#[derive(Default)]
struct Held {
    frames: Vec<Arc<Shared>>,
    /// Frames were dropped because the buffer was full: read the history again.
    overflow: bool,
}

impl Held {
    fn hold(&mut self, frame: &Arc<Shared>, cap: usize) {
        if self.frames.len() < cap {
            self.frames.push(frame.clone());
        } else {
            self.overflow = true;
        }
    }
}

/// What a subscribe asks for.
pub(crate) struct SubscribeReq {
    pub(crate) id: Option<u64>,
    /// Where to start: now, after a position (recovery), or with the last messages held.
    pub(crate) from: HistoryFrom,
    pub(crate) presence: PresenceEvents,
    /// Keep only the newest message per key when behind (and when recovering).
    pub(crate) conflate: bool,
    /// A pattern of the session brings the topic (a `psubscribe` resuming it).
    pub(crate) via_pattern: bool,
}

/// Builds a subscription's catch-up: frames in offset order from `next`, a `gap` for each
/// hole, duplicates dropped.
struct Catchup {
    topic: Arc<str>,
    epoch: Arc<str>,
    next: u64,
    out: Vec<Arc<Shared>>,
}

impl Catchup {
    fn new(topic: Arc<str>, epoch: Arc<str>, next: u64) -> Catchup {
        Catchup {
            topic,
            epoch,
            next,
            out: Vec::new(),
        }
    }

    fn gap(&self, from: u64, to: u64, reason: GapReason) -> Arc<Shared> {
        Shared::new(Frame::Gap {
            topic: self.topic.clone(),
            epoch: self.epoch.clone(),
            from,
            to,
            reason,
        })
    }

    /// Keeps only the newest message per key of what was gathered (messages without a key,
    /// and deletions, all stay), after a `gap` with reason `conflated` that says what was
    /// superseded.
    fn conflate(&mut self) {
        let mut newest: HashMap<&Arc<str>, usize> = HashMap::new();
        let mut dropped = vec![false; self.out.len()];
        let mut range: Option<(u64, u64)> = None;
        for (i, f) in self.out.iter().enumerate() {
            if let Frame::Message {
                key: Some(key),
                delete: false,
                ..
            } = f.frame()
            {
                if let Some(j) = newest.insert(key, i) {
                    dropped[j] = true;
                    if let Frame::Message { offset, .. } = self.out[j].frame() {
                        range = Some(match range {
                            Some((from, to)) => (from.min(*offset), to.max(*offset)),
                            None => (*offset, *offset),
                        });
                    }
                }
            }
        }
        let Some((from, to)) = range else {
            return;
        };
        let mut kept = Vec::with_capacity(self.out.len() + 1);
        kept.push(self.gap(from, to, GapReason::Conflated));
        kept.extend(
            std::mem::take(&mut self.out)
                .into_iter()
                .zip(dropped)
                .filter(|(_, d)| !d)
                .map(|(f, _)| f),
        );
        self.out = kept;
    }

    fn add(&mut self, f: &Arc<Shared>) {
        match f.frame() {
            Frame::Message { epoch, offset, .. } => {
                if *epoch != self.epoch {
                    // The stream was recreated while this subscription caught up.
                    self.epoch = epoch.clone();
                    self.out.push(self.gap(0, 0, GapReason::Epoch));
                    self.next = 1;
                }
                if *offset < self.next {
                    return;
                }
                if *offset > self.next {
                    self.out
                        .push(self.gap(self.next, offset - 1, GapReason::History));
                }
                self.out.push(f.clone());
                self.next = offset + 1;
            }
            Frame::Gap {
                epoch,
                from,
                to,
                reason: GapReason::History,
                ..
            } if *epoch == self.epoch => {
                if *to >= self.next {
                    self.out
                        .push(self.gap((*from).max(self.next), *to, GapReason::History));
                    self.next = to + 1;
                }
            }
            Frame::Gap {
                epoch,
                reason: GapReason::Epoch,
                ..
            } => {
                if *epoch != self.epoch {
                    self.epoch = epoch.clone();
                    self.next = 1;
                    self.out.push(f.clone());
                }
            }
            _ => self.out.push(f.clone()),
        }
    }
}

/// This node's subscriptions to the engine's channels. Each channel has an async lock, held
/// only while its subscribe or unsubscribe call is under way (never on the delivery path), so
/// that a subscribe after an unsubscribe is never overtaken by it.
#[derive(Default)]
pub(crate) struct Channels {
    map: DashMap<ChannelKey, Arc<tokio::sync::Mutex<bool>>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum ChannelKey {
    Topic(Arc<str>),
    Room(Arc<str>),
    Pattern(Arc<str>),
}

impl ChannelKey {
    fn channel(&self) -> Channel<'_> {
        match self {
            ChannelKey::Topic(t) => Channel::Topic(t),
            ChannelKey::Room(r) => Channel::Room(r),
            ChannelKey::Pattern(p) => Channel::Pattern(p),
        }
    }
}

/// How long a failed repair waits before it tries again (doubling up to the ceiling).
const REPAIR_RETRY: Duration = Duration::from_millis(100);
const REPAIR_RETRY_MAX: Duration = Duration::from_secs(5);
/// How many times a subscription reads the history again when its catch-up buffer overflowed.
const CATCHUP_ROUNDS: usize = 4;

impl Inner {
    /// Frames held per catching-up subscription or repairing topic.
    fn hold_cap(&self) -> usize {
        self.config.queue_capacity.max(64)
    }

    /// The local topic named `name`, created if needed (`max_topics` bounds the index).
    fn local_topic(&self, name: &str) -> Result<Arc<LocalTopic>, OpError> {
        if let Some(t) = self.topics.get(name) {
            return Ok(t.clone());
        }
        if self.topics.len() >= self.config.max_topics {
            return Err((
                ErrorCode::TooManyTopics,
                format!("the hub follows at most {} topics", self.config.max_topics),
            ));
        }
        Ok(self
            .topics
            .entry(Arc::from(name))
            .or_insert_with(|| {
                Arc::new(LocalTopic {
                    name: Arc::from(name),
                    state: Mutex::new(TopicState {
                        subs: HashMap::new(),
                        watching: [0; 2],
                        presence: LocalPresence::default(),
                        cursor: None,
                        repair: None,
                        dead: false,
                    }),
                })
            })
            .clone())
    }

    /// Makes sure this node hears `key` on the engine (rooms need nothing on a single node).
    pub(crate) async fn engine_hold(&self, key: ChannelKey) -> Result<(), BrokerError> {
        if !self.clustered() && matches!(key, ChannelKey::Room(_)) {
            return Ok(());
        }
        loop {
            let m = self.channels.map.entry(key.clone()).or_default().clone();
            let mut subscribed = m.lock().await;
            // Released and forgotten while this waited: start again with the current entry.
            let current = self
                .channels
                .map
                .get(&key)
                .is_some_and(|e| Arc::ptr_eq(e.value(), &m));
            if !current {
                continue;
            }
            if !*subscribed {
                self.broker.subscribe(key.channel()).await?;
                *subscribed = true;
            }
            return Ok(());
        }
    }

    /// Stops hearing `key` on the engine if nothing local needs it any more (in a task: this
    /// is called from places that cannot wait).
    pub(crate) fn engine_release(&self, key: ChannelKey) {
        if !self.clustered() && matches!(key, ChannelKey::Room(_)) {
            return;
        }
        let (Some(inner), Ok(rt)) = (self.me.upgrade(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        rt.spawn(async move {
            let Some(m) = inner.channels.map.get(&key).map(|e| e.value().clone()) else {
                return;
            };
            let mut subscribed = m.lock().await;
            let needed = match &key {
                ChannelKey::Topic(t) => inner.topics.contains_key(t),
                ChannelKey::Room(r) => inner.rooms.contains_key(r),
                ChannelKey::Pattern(p) => inner.patterns.holds(p),
            };
            if needed {
                return;
            }
            if *subscribed {
                if let Err(e) = inner.broker.unsubscribe(key.channel()).await {
                    // The engine forgets this node's channels when it loses the connection;
                    // a late message for an unfollowed topic is dropped anyway.
                    tracing::debug!(channel = ?key, error = %e, "engine unsubscribe failed");
                }
                *subscribed = false;
            }
            inner
                .channels
                .map
                .remove_if(&key, |_, v| Arc::ptr_eq(v, &m) && !needed);
        });
    }

    /// Subscribes a session to a topic (see the module docs). `Ok` once the subscription is
    /// live and its reply queued.
    pub(crate) async fn subscribe(
        &self,
        s: &Arc<SessionState>,
        name: &str,
        req: SubscribeReq,
    ) -> Result<(), OpError> {
        // 1. Register the pending subscription (membership, then topic: the lock order).
        let t = {
            let mut m = lock(&s.membership);
            if m.closed {
                return Ok(());
            }
            if m.topics.contains(name) {
                return Err((
                    ErrorCode::AlreadySubscribed,
                    format!("already subscribed to {name}"),
                ));
            }
            if m.topics.len() >= self.config.max_subscriptions {
                return Err((
                    ErrorCode::TooManySubscriptions,
                    format!("at most {} subscriptions", self.config.max_subscriptions),
                ));
            }
            let t = loop {
                let t = self.local_topic(name)?;
                let mut st = lock(&t.state);
                if st.dead {
                    continue;
                }
                st.add_sub(
                    s.id,
                    Sub {
                        session: s.clone(),
                        presence: req.presence,
                        conflate: req.conflate,
                        next: 0,
                        pending: Some(Box::default()),
                    },
                );
                drop(st);
                break t;
            };
            m.topics.insert(t.name.clone());
            if req.via_pattern {
                m.via_pattern.insert(t.name.clone());
            }
            t
        };
        // Sessions whose patterns match a topic this node starts to follow get it too.
        self.materialize_patterns(&t);

        // 2 and 3. The engine: hear the channel, read the top (and the history after `since`).
        let mut from = match &req.from {
            HistoryFrom::Last(n) => HistoryFrom::Last((*n).min(self.config.history_len)),
            other => other.clone(),
        };
        if let Err(e) = self.engine_hold(ChannelKey::Topic(t.name.clone())).await {
            self.undo_subscribe(s, &t);
            return Err((e.code(), e.to_string()));
        }
        let mut first = true;
        let mut catchup: Option<Catchup> = None;
        for round in 0..CATCHUP_ROUNDS {
            let history = match self.broker.history(name, from.clone()).await {
                Ok(h) => h,
                Err(e) => {
                    self.undo_subscribe(s, &t);
                    return Err((e.code(), e.to_string()));
                }
            };
            // 4. Merge under the topic's lock and go live.
            let mut overflow = Vec::new();
            let done = {
                let mut st = lock(&t.state);
                if st.cursor.is_none() {
                    st.cursor = Some((history.top.epoch.clone(), history.top.offset));
                } else if let Some((epoch, _)) = &st.cursor {
                    if *epoch != history.top.epoch {
                        self.epoch_changed(
                            &mut st,
                            &t.name,
                            &history.top,
                            Some(s.id),
                            &mut overflow,
                        );
                    }
                }
                let Some(sub) = st.subs.get_mut(&s.id) else {
                    // Unsubscribed or closed meanwhile.
                    drop(st);
                    if first {
                        self.reply_subscribed(s, &t.name, req.id, &history.top);
                    }
                    return Ok(());
                };
                let held = sub.pending.take().unwrap_or_default();
                let mut c = match catchup.take() {
                    Some(c) => c,
                    None => {
                        let top = &history.top;
                        let mut c = Catchup::new(t.name.clone(), top.epoch.clone(), top.offset + 1);
                        match &req.from {
                            HistoryFrom::After(since)
                                if since.epoch == top.epoch && since.offset <= top.offset =>
                            {
                                c.next = since.offset + 1;
                            }
                            HistoryFrom::After(since) if since.epoch == top.epoch => {
                                // Ahead of the stream: positions it never gave (or lost and
                                // gives again). New messages take those offsets.
                                c.out
                                    .push(c.gap(top.offset + 1, since.offset, GapReason::Ahead));
                            }
                            HistoryFrom::After(_) => c.out.push(c.gap(0, 0, GapReason::Epoch)),
                            HistoryFrom::Last(_) => {
                                // The last messages held, then live ones: no gap before them
                                // (none was asked for).
                                if let Some(p) = history.publications.first() {
                                    c.next = p.offset();
                                }
                            }
                            HistoryFrom::Top => {}
                        }
                        c
                    }
                };
                if first {
                    let start = match &req.from {
                        HistoryFrom::After(since)
                            if since.epoch == history.top.epoch
                                && since.offset <= history.top.offset =>
                        {
                            since.clone()
                        }
                        _ => history.top.clone(),
                    };
                    // The marker first, so that a transport keeping positions (SSE) can put
                    // the new one on the reply already.
                    let mut tally = Tally::default();
                    // Not a delivery (nothing is written), so not counted as one; it never
                    // overflows a queue.
                    s.queue.push_marker(t.name.clone(), start);
                    if let Some(id) = req.id {
                        let reply = subscribe_reply(id, &t.name, &history.top);
                        tally.push(s, &reply, &mut overflow);
                    }
                    tally.count(&self.stats);
                }
                for p in &history.publications {
                    c.add(&p.0);
                }
                for f in &held.frames {
                    c.add(f);
                }
                if req.conflate {
                    c.conflate();
                }
                let retry = held.overflow && round + 1 < CATCHUP_ROUNDS;
                if retry {
                    // Frames were dropped while catching up: read on from where this got to.
                    from = HistoryFrom::After(Position::new(
                        c.epoch.clone(),
                        c.next.saturating_sub(1),
                    ));
                    sub.pending = Some(Box::default());
                    let mut tally = Tally::default();
                    for f in c.out.drain(..) {
                        tally.push(s, &f, &mut overflow);
                    }
                    tally.count(&self.stats);
                    catchup = Some(c);
                    false
                } else {
                    if held.overflow {
                        // Still overflowing: whatever was dropped after `next` is told as lost
                        // by the next delivery's check.
                        tracing::debug!(session = %s.id, topic = %t.name, "catch-up kept overflowing");
                    }
                    let mut tally = Tally::default();
                    for f in &c.out {
                        tally.push(s, f, &mut overflow);
                    }
                    tally.count(&self.stats);
                    sub.next = c.next;
                    let member = s.member();
                    let first = st.presence.insert(&member);
                    // The others' `join`, now that this one is live (it gets no join of its own):
                    // for session watchers, and for user watchers if it is its user's first
                    // session here. With a presence store, only the store knows that: user
                    // watchers wait for its answer (the presence worker).
                    let join = Shared::new(Frame::Presence {
                        join: true,
                        scope: Scope::Topic(t.name.clone()),
                        member: member.clone(),
                    });
                    let to = Watchers::sessions_and(first && self.presence_store.is_none());
                    self.fan_out_presence(&mut st, &join, Some(s.id), to, &mut overflow);
                    if self.clustered() {
                        // Under the topic's lock: see the presence worker's refresh.
                        self.presence_worker.add(
                            self,
                            ScopeName::Topic(t.name.to_string()),
                            member,
                        );
                    }
                    drop(st);
                    true
                }
            };
            self.close_all(overflow, DisconnectReason::SlowConsumer);
            if done {
                return Ok(());
            }
            first = false;
        }
        Ok(())
    }

    /// Queues the reply of a subscribe that was undone before it finished.
    fn reply_subscribed(
        &self,
        s: &Arc<SessionState>,
        topic: &Arc<str>,
        id: Option<u64>,
        top: &Position,
    ) {
        if let Some(id) = id {
            let reply = subscribe_reply(id, topic, top);
            let mut overflow = Vec::new();
            self.fan_out(std::iter::once(s), &reply, &mut overflow);
            self.close_all(overflow, DisconnectReason::SlowConsumer);
        }
    }

    /// Takes back a subscription the engine refused.
    fn undo_subscribe(&self, s: &Arc<SessionState>, t: &Arc<LocalTopic>) {
        let mut overflow = Vec::new();
        {
            let mut m = lock(&s.membership);
            if m.topics.remove(&*t.name) {
                m.via_pattern.remove(&*t.name);
                m.pattern_full_told = false;
                self.remove_from_topic(s, &t.name, &mut overflow);
            }
        }
        self.close_all(overflow, DisconnectReason::SlowConsumer);
    }

    pub(crate) fn unsubscribe(&self, s: &Arc<SessionState>, name: &str) -> Result<(), OpError> {
        let mut overflow = Vec::new();
        {
            let mut m = lock(&s.membership);
            if m.via_pattern.contains(name) {
                return Err((
                    ErrorCode::NotSubscribed,
                    format!("{name} comes through a pattern: punsubscribe the pattern"),
                ));
            }
            if !m.topics.remove(name) {
                return Err((
                    ErrorCode::NotSubscribed,
                    format!("not subscribed to {name}"),
                ));
            }
            m.pattern_full_told = false;
            self.remove_from_topic(s, name, &mut overflow);
        }
        self.close_all(overflow, DisconnectReason::SlowConsumer);
        Ok(())
    }

    /// Removes `s` from a topic's subscribers; the watchers get its `leave` if it was live.
    pub(crate) fn remove_from_topic(
        &self,
        s: &Arc<SessionState>,
        name: &str,
        overflow: &mut Vec<Arc<SessionState>>,
    ) {
        let Some(t) = self.topics.get(name).map(|t| t.clone()) else {
            return;
        };
        let (live, empty) = {
            let mut st = lock(&t.state);
            let live = match st.remove_sub(&s.id) {
                Some(sub) if sub.is_live() => {
                    let member = s.member();
                    let last = st.presence.remove(&member);
                    let leave = Shared::new(Frame::Presence {
                        join: false,
                        scope: Scope::Topic(t.name.clone()),
                        member,
                    });
                    let to = Watchers::sessions_and(last && self.presence_store.is_none());
                    self.fan_out_presence(&mut st, &leave, None, to, overflow);
                    true
                }
                _ => false,
            };
            (live, st.subs.is_empty())
        };
        if live && self.clustered() {
            self.presence_worker
                .remove(self, ScopeName::Topic(name.to_owned()), s.member());
        }
        if empty {
            self.release_if_idle(&t);
        }
    }

    /// Forgets a topic nobody here follows any more, and lets its channel go.
    fn release_if_idle(&self, t: &Arc<LocalTopic>) {
        let removed = self
            .topics
            .remove_if(&t.name, |_, t| {
                let mut st = lock(&t.state);
                let idle = st.subs.is_empty();
                if idle {
                    st.dead = true;
                }
                idle
            })
            .is_some();
        if removed {
            self.engine_release(ChannelKey::Topic(t.name.clone()));
        }
    }

    /// Presence frames go to the subscribers among `to` that asked for them (held for those
    /// catching up).
    fn fan_out_presence(
        &self,
        st: &mut TopicState,
        frame: &Arc<Shared>,
        skip: Option<SessionId>,
        to: Watchers,
        overflow: &mut Vec<Arc<SessionState>>,
    ) {
        if !st.watched(to) {
            return;
        }
        let cap = self.hold_cap();
        let mut tally = Tally::default();
        for (id, sub) in st.subs.iter_mut() {
            if !to.want(sub.presence) || Some(*id) == skip {
                continue;
            }
            match &mut sub.pending {
                Some(held) => held.hold(frame, cap),
                None => tally.push(&sub.session, frame, overflow),
            }
        }
        tally.count(&self.stats);
    }

    /// A topic's `join`/`leave` from another node (or, for user watchers, from the store),
    /// for this node's watchers among `to`. The member's own session gets none.
    pub(crate) fn topic_presence_local(
        &self,
        join: bool,
        topic: &str,
        member: crate::presence::Member,
        to: Watchers,
    ) {
        let Some(t) = self.topics.get(topic).map(|t| t.clone()) else {
            return;
        };
        let skip = Some(member.session);
        let frame = Shared::new(Frame::Presence {
            join,
            scope: Scope::Topic(t.name.clone()),
            member,
        });
        let mut overflow = Vec::new();
        {
            let mut st = lock(&t.state);
            self.fan_out_presence(&mut st, &frame, skip, to, &mut overflow);
        }
        self.close_all(overflow, DisconnectReason::SlowConsumer);
    }

    /// A message the engine hands this node (see the module docs for the checks).
    pub(crate) fn deliver(&self, p: Publication) {
        let t = match self.topics.get(&**p.topic()).map(|t| t.clone()) {
            Some(t) => t,
            // Nobody here follows the topic: a pattern may want it (the engine hands the node
            // every topic while a pattern is held, or a superset of what the patterns match).
            None if !self.patterns.is_empty() => match self.topic_for_patterns(p.topic()) {
                Some(t) => t,
                None => return,
            },
            None => return,
        };
        let mut overflow = Vec::new();
        {
            let mut st = lock(&t.state);
            if st.dead {
                return;
            }
            let offset = p.offset();
            if let Some(held) = &mut st.repair {
                held.hold(&p.0, self.config.queue_capacity.max(64));
                return;
            }
            match &st.cursor {
                Some((epoch, last)) if Arc::ptr_eq(epoch, p.epoch()) || epoch == p.epoch() => {
                    if offset <= *last {
                        Stats::add(&self.stats.engine_duplicates, 1);
                        return;
                    }
                    if offset > *last + 1 {
                        self.start_repair(&t, &mut st, Some(&p));
                        return;
                    }
                }
                Some(_) => {
                    let top = Position::new(p.epoch().clone(), 0);
                    self.epoch_changed(&mut st, &t.name, &top, None, &mut overflow);
                    if offset > 1 {
                        self.start_repair(&t, &mut st, Some(&p));
                        drop(st);
                        self.close_all(overflow, DisconnectReason::SlowConsumer);
                        return;
                    }
                }
                None => {}
            }
            self.fan_out_message(&mut st, &p.0, &mut overflow);
        }
        Stats::add(&self.stats.published_in, 1);
        self.close_all(overflow, DisconnectReason::SlowConsumer);
    }

    /// Delivers a message (or a node-level gap) to every subscriber, in order: the hot path.
    fn fan_out_message(
        &self,
        st: &mut TopicState,
        frame: &Arc<Shared>,
        overflow: &mut Vec<Arc<SessionState>>,
    ) {
        let cap = self.hold_cap();
        let mut tally = Tally::default();
        match frame.frame() {
            Frame::Message { epoch, offset, .. } => {
                let offset = *offset;
                match &mut st.cursor {
                    Some((e, last)) if Arc::ptr_eq(e, epoch) => *last = offset,
                    cursor => *cursor = Some((epoch.clone(), offset)),
                }
                for sub in st.subs.values_mut() {
                    if let Some(held) = &mut sub.pending {
                        held.hold(frame, cap);
                        continue;
                    }
                    if offset < sub.next {
                        continue;
                    }
                    if offset > sub.next && sub.next > 0 {
                        // Never expected (the node delivers without holes); told, not hidden.
                        let gap = Shared::new(Frame::Gap {
                            topic: topic_of(frame),
                            epoch: epoch.clone(),
                            from: sub.next,
                            to: offset - 1,
                            reason: GapReason::History,
                        });
                        tally.push(&sub.session, &gap, overflow);
                    }
                    if sub.conflate {
                        tally.push_conflating(&sub.session, frame, overflow);
                    } else {
                        tally.push(&sub.session, frame, overflow);
                    }
                    sub.next = offset + 1;
                }
            }
            Frame::Gap { epoch, to, .. } => {
                if let Some((e, last)) = &mut st.cursor {
                    if e == epoch && *to > *last {
                        *last = *to;
                    }
                }
                for sub in st.subs.values_mut() {
                    if let Some(held) = &mut sub.pending {
                        held.hold(frame, cap);
                        continue;
                    }
                    if *to >= sub.next {
                        tally.push(&sub.session, frame, overflow);
                        sub.next = to + 1;
                    }
                }
            }
            _ => {}
        }
        tally.count(&self.stats);
    }

    /// The stream of a topic was recreated (`top` is in the new epoch): every subscriber but
    /// `skip` gets a `gap` with reason `epoch`; the node then follows the new stream.
    fn epoch_changed(
        &self,
        st: &mut TopicState,
        topic: &Arc<str>,
        top: &Position,
        skip: Option<SessionId>,
        overflow: &mut Vec<Arc<SessionState>>,
    ) {
        tracing::info!(%topic, epoch = %top.epoch, "a topic's stream was recreated");
        let gap = Shared::new(Frame::Gap {
            topic: topic.clone(),
            epoch: top.epoch.clone(),
            from: 0,
            to: 0,
            reason: GapReason::Epoch,
        });
        let cap = self.hold_cap();
        let mut tally = Tally::default();
        for (id, sub) in st.subs.iter_mut() {
            if Some(*id) == skip {
                continue;
            }
            match &mut sub.pending {
                Some(held) => held.hold(&gap, cap),
                None => {
                    tally.push(&sub.session, &gap, overflow);
                    sub.next = 1;
                }
            }
        }
        tally.count(&self.stats);
        st.cursor = Some((top.epoch.clone(), 0));
    }

    /// Starts repairing a hole after the node's cursor (`first`: the message that showed it,
    /// held until the hole is filled).
    fn start_repair(&self, t: &Arc<LocalTopic>, st: &mut TopicState, first: Option<&Publication>) {
        let cap = self.hold_cap();
        if let Some(held) = &mut st.repair {
            if let Some(p) = first {
                held.hold(&p.0, cap);
            }
            return;
        }
        let (Some(inner), Ok(rt)) = (self.me.upgrade(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        let mut held = Box::<Held>::default();
        if let Some(p) = first {
            held.hold(&p.0, cap);
        }
        st.repair = Some(held);
        Stats::add(&self.stats.engine_repairs, 1);
        rt.spawn(repair(inner, t.clone()));
    }

    /// Checks one topic against its stream's top now (e.g. after an undecodable message).
    pub(crate) fn check_topic(&self, topic: &str) {
        let Some(t) = self.topics.get(topic).map(|t| t.clone()) else {
            return;
        };
        let mut st = lock(&t.state);
        if st.cursor.is_some() && !st.dead {
            self.start_repair(&t, &mut st, None);
        }
    }

    /// Compares what this node delivered with every followed stream's top, and repairs what it
    /// missed (after an engine outage, and periodically).
    pub(crate) async fn check_streams(&self) {
        if !self.clustered() {
            return;
        }
        let followed: Vec<Arc<LocalTopic>> =
            self.topics.iter().map(|e| e.value().clone()).collect();
        for chunk in followed.chunks(256) {
            let names: Vec<Arc<str>> = chunk.iter().map(|t| t.name.clone()).collect();
            let tops = match self.broker.tops(&names).await {
                Ok(tops) => tops,
                Err(e) => {
                    tracing::debug!(error = %e, "checking streams: the engine did not answer");
                    return;
                }
            };
            for (t, top) in chunk.iter().zip(tops) {
                let Some(top) = top else { continue };
                let mut overflow = Vec::new();
                {
                    let mut st = lock(&t.state);
                    if st.dead || st.repair.is_some() {
                        continue;
                    }
                    match &st.cursor {
                        Some((epoch, last)) if *epoch == top.epoch && top.offset > *last => {
                            self.start_repair(t, &mut st, None);
                        }
                        Some((epoch, _)) if *epoch == top.epoch => {}
                        Some(_) => {
                            let start = Position::new(top.epoch.clone(), 0);
                            self.epoch_changed(&mut st, &t.name, &start, None, &mut overflow);
                            if top.offset > 0 {
                                self.start_repair(t, &mut st, None);
                            }
                        }
                        None => {}
                    }
                }
                self.close_all(overflow, DisconnectReason::SlowConsumer);
            }
        }
    }

    pub(crate) fn on_engine_event(&self, event: EngineEvent) {
        match event {
            EngineEvent::Disconnected => {
                Stats::add(&self.stats.engine_disconnects, 1);
                tracing::warn!(
                    engine = self.broker_info.name,
                    "lost the engine: publishing fails until it is back"
                );
            }
            EngineEvent::Reconnected => {
                tracing::info!(
                    engine = self.broker_info.name,
                    "the engine is back: checking every followed topic"
                );
                let Some(inner) = self.me.upgrade() else {
                    return;
                };
                if let Ok(rt) = tokio::runtime::Handle::try_current() {
                    rt.spawn(async move {
                        inner.check_streams().await;
                        inner.presence_worker.reconnected(&inner);
                    });
                }
            }
        }
    }
}

/// Fills the hole after a topic's cursor from the engine's history (or tells it as a `gap`),
/// then delivers what was held meanwhile.
async fn repair(inner: Arc<Inner>, t: Arc<LocalTopic>) {
    let mut wait = REPAIR_RETRY;
    loop {
        let from = {
            let st = lock(&t.state);
            if st.dead {
                return;
            }
            match &st.cursor {
                Some((epoch, last)) => Position::new(epoch.clone(), *last),
                None => return,
            }
        };
        let history = match inner
            .broker
            .history(&t.name, HistoryFrom::After(from.clone()))
            .await
        {
            Ok(h) => h,
            Err(e) => {
                tracing::debug!(topic = %t.name, error = %e, "repair: the engine did not answer; trying again");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(REPAIR_RETRY_MAX);
                continue;
            }
        };
        let mut overflow = Vec::new();
        let done = {
            let mut st = lock(&t.state);
            if st.dead {
                return;
            }
            let held = st.repair.take().unwrap_or_default();
            let mut c = Catchup::new(t.name.clone(), from.epoch.clone(), from.offset + 1);
            if history.top.epoch != from.epoch {
                let start = Position::new(history.top.epoch.clone(), 0);
                inner.epoch_changed(&mut st, &t.name, &start, None, &mut overflow);
                // Read the new stream from its start on the next round.
                st.repair = Some(held);
                false
            } else {
                for p in &history.publications {
                    c.add(&p.0);
                }
                // What was delivered meanwhile, after the history read: duplicates drop.
                for f in &held.frames {
                    c.add(f);
                }
                if c.next <= history.top.offset {
                    // Not even the buffer reaches the top: the rest is lost.
                    let gap = c.gap(c.next, history.top.offset, GapReason::History);
                    c.out.push(gap);
                    c.next = history.top.offset + 1;
                }
                for f in &c.out {
                    inner.fan_out_message(&mut st, f, &mut overflow);
                }
                if held.overflow {
                    st.repair = Some(Box::default());
                    false
                } else {
                    true
                }
            }
        };
        inner.close_all(overflow, DisconnectReason::SlowConsumer);
        if done {
            return;
        }
        wait = REPAIR_RETRY;
    }
}

fn topic_of(frame: &Shared) -> Arc<str> {
    match frame.frame() {
        Frame::Message { topic, .. } | Frame::Gap { topic, .. } => topic.clone(),
        _ => Arc::from(""),
    }
}

/// The reply to a subscribe: the topic's position when the subscription began.
fn subscribe_reply(id: u64, topic: &str, top: &Position) -> Arc<Shared> {
    let data = crate::codec::Payload::from_value(&serde_json::json!({
        "topic": topic, "epoch": &*top.epoch, "offset": top.offset,
    }))
    .unwrap_or_default();
    Shared::new(Frame::Reply { id, data })
}

/// Wildcard subscriptions (see [`crate::patterns`]).
impl Inner {
    /// `psubscribe`: holds `pattern` for `s`; every topic it matches that this node follows
    /// becomes a subscription of `s` at once, every other one when the node starts to follow
    /// it. `positions` resume topics of the pattern after a position (each one as a
    /// `subscribe` with `since`).
    pub(crate) async fn psubscribe(
        &self,
        s: &Arc<SessionState>,
        pattern: crate::patterns::Pattern,
        positions: Vec<(String, Position)>,
    ) -> Result<(), OpError> {
        if positions.len() > self.config.max_subscriptions {
            return Err((
                ErrorCode::TooManySubscriptions,
                format!("at most {} subscriptions", self.config.max_subscriptions),
            ));
        }
        for (topic, _) in &positions {
            crate::names::check_name(topic, self.config.max_name_len, ErrorCode::BadTopic)?;
            if !pattern.matches(topic) {
                return Err((
                    ErrorCode::BadField,
                    format!("positions: {topic} does not match {}", pattern.text),
                ));
            }
        }
        {
            let mut m = lock(&s.membership);
            if m.closed {
                return Ok(());
            }
            if m.patterns.iter().any(|p| p.text == pattern.text) {
                return Err((
                    ErrorCode::AlreadySubscribed,
                    format!("already subscribed to {}", pattern.text),
                ));
            }
            if m.patterns.len() >= self.config.max_patterns {
                return Err((
                    ErrorCode::TooManyPatterns,
                    format!("at most {} patterns", self.config.max_patterns),
                ));
            }
            m.patterns.push(pattern.clone());
        }
        self.patterns.add(&pattern, s);
        if let Err(e) = self
            .engine_hold(ChannelKey::Pattern(pattern.text.clone()))
            .await
        {
            self.drop_pattern(s, &pattern.text);
            return Err((e.code(), e.to_string()));
        }
        // Closed meanwhile: what the close did not see, undo here.
        if lock(&s.membership).closed {
            self.drop_pattern(s, &pattern.text);
            return Ok(());
        }
        // The resumed topics first (with recovery), then every other followed topic (live).
        for (topic, since) in positions {
            let req = SubscribeReq {
                id: None,
                from: HistoryFrom::After(since),
                presence: PresenceEvents::None,
                conflate: self.conflates(&topic),
                via_pattern: true,
            };
            match self.subscribe(s, &topic, req).await {
                Ok(()) => {}
                // Brought by another pattern already, or subscribed on its own: it goes on.
                Err((ErrorCode::AlreadySubscribed, _)) => {}
                Err((code, message)) => self.send_error(s, None, code, message),
            }
        }
        let followed: Vec<Arc<LocalTopic>> = self
            .topics
            .iter()
            .filter(|t| pattern.matches(&t.value().name))
            .map(|t| t.value().clone())
            .collect();
        for t in followed {
            self.materialize(s, &t);
        }
        Ok(())
    }

    /// `punsubscribe`: drops the pattern and every topic it brought that no other pattern of
    /// the session matches.
    pub(crate) fn punsubscribe(&self, s: &Arc<SessionState>, text: &str) -> Result<(), OpError> {
        let mut overflow = Vec::new();
        {
            let mut m = lock(&s.membership);
            let Some(i) = m.patterns.iter().position(|p| &*p.text == text) else {
                return Err((
                    ErrorCode::NotSubscribed,
                    format!("not subscribed to {text}"),
                ));
            };
            m.patterns.remove(i);
            let orphans: Vec<Arc<str>> = m
                .via_pattern
                .iter()
                .filter(|t| !m.patterns.iter().any(|p| p.matches(t)))
                .cloned()
                .collect();
            for topic in orphans {
                m.via_pattern.remove(&topic);
                m.topics.remove(&topic);
                self.remove_from_topic(s, &topic, &mut overflow);
            }
            m.pattern_full_told = false;
        }
        if self.patterns.remove(text, s.id) {
            self.engine_release(ChannelKey::Pattern(text.into()));
        }
        self.close_all(overflow, DisconnectReason::SlowConsumer);
        Ok(())
    }

    /// Takes back a pattern (its engine subscription failed, or the session closed).
    pub(crate) fn drop_pattern(&self, s: &Arc<SessionState>, text: &str) {
        lock(&s.membership).patterns.retain(|p| &*p.text != text);
        if self.patterns.remove(text, s.id) {
            self.engine_release(ChannelKey::Pattern(text.into()));
        }
    }

    /// The local topic for a message nobody here follows yet, if a pattern wants it: the
    /// sessions whose patterns match become its subscribers.
    fn topic_for_patterns(&self, topic: &Arc<str>) -> Option<Arc<LocalTopic>> {
        let sessions = self.patterns.sessions_for(topic);
        if sessions.is_empty() {
            return None;
        }
        let t = self.local_topic(topic).ok()?;
        let mut any = false;
        for s in &sessions {
            any |= self.materialize(s, &t);
        }
        if !any {
            // Every one of them was full or closing: nobody holds the topic.
            self.release_if_idle(&t);
            return None;
        }
        Some(t)
    }

    /// Every session with a pattern matching `t` that does not follow it yet does now.
    fn materialize_patterns(&self, t: &Arc<LocalTopic>) {
        if self.patterns.is_empty() {
            return;
        }
        for s in self.patterns.sessions_for(&t.name) {
            self.materialize(&s, t);
        }
    }

    /// Makes `t` a subscription of `s` brought by its patterns, live from the next message the
    /// node delivers. Returns whether `s` now follows `t` (it may have already).
    fn materialize(&self, s: &Arc<SessionState>, t: &Arc<LocalTopic>) -> bool {
        let mut m = lock(&s.membership);
        if m.closed {
            return false;
        }
        if m.topics.contains(&t.name) {
            return true;
        }
        if m.topics.len() >= self.config.max_subscriptions {
            if !m.pattern_full_told {
                m.pattern_full_told = true;
                drop(m);
                self.send_error(
                    s,
                    None,
                    ErrorCode::TooManySubscriptions,
                    format!(
                        "{} matches your pattern, but you have {} subscriptions (the limit): its messages do not reach you",
                        t.name, self.config.max_subscriptions
                    ),
                );
            }
            return false;
        }
        let mut st = lock(&t.state);
        if st.dead {
            return false;
        }
        let next = st.cursor.as_ref().map_or(0, |(_, last)| last + 1);
        st.add_sub(
            s.id,
            Sub {
                session: s.clone(),
                presence: PresenceEvents::None,
                conflate: self.conflates(&t.name),
                next,
                pending: None,
            },
        );
        // A member like any subscriber (it leaves like one): counted, listed, and its
        // `join` told, as when a subscription goes live.
        let member = s.member();
        let first = st.presence.insert(&member);
        let join = Shared::new(Frame::Presence {
            join: true,
            scope: Scope::Topic(t.name.clone()),
            member: member.clone(),
        });
        let mut overflow = Vec::new();
        let to = Watchers::sessions_and(first && self.presence_store.is_none());
        self.fan_out_presence(&mut st, &join, Some(s.id), to, &mut overflow);
        if self.clustered() {
            // Under the topic's lock: see the presence worker's refresh.
            self.presence_worker
                .add(self, ScopeName::Topic(t.name.to_string()), member);
        }
        drop(st);
        m.topics.insert(t.name.clone());
        m.via_pattern.insert(t.name.clone());
        drop(m);
        self.close_all(overflow, DisconnectReason::SlowConsumer);
        true
    }
}
