//! Presence: who is in a topic or a room, and the store that shares it between nodes.
//!
//! On one node (the default) the local tables are the truth: a topic's members are its
//! subscribers, a room's members are the sessions in it, and no store is involved. With
//! several nodes, a [`PresenceStore`] in the engine holds every node's members. Each node adds
//! and removes its own sessions, and refreshes them every [`PresenceStore::refresh_interval`];
//! a node that dies without a goodbye stops refreshing, so its members expire and any node's
//! [`PresenceStore::expire`] removes them, exactly once, and emits their `leave`.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;

use crate::broker::BrokerError;
use crate::session::SessionId;

pub use hub_protocol::Member;

/// Where presence is kept: a topic's subscribers or a room's members.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope<'a> {
    /// A topic.
    Topic(&'a str),
    /// A room.
    Room(&'a str),
}

impl Scope<'_> {
    /// The topic or room name.
    pub fn name(&self) -> &str {
        match self {
            Scope::Topic(n) | Scope::Room(n) => n,
        }
    }

    /// Whether this is a room.
    pub fn is_room(&self) -> bool {
        matches!(self, Scope::Room(_))
    }
}

impl fmt::Display for Scope<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Topic(n) => write!(f, "topic {n}"),
            Scope::Room(n) => write!(f, "room {n}"),
        }
    }
}

/// An owned [`Scope`], for what a store hands back.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ScopeName {
    /// A topic.
    Topic(String),
    /// A room.
    Room(String),
}

impl ScopeName {
    /// The borrowed form.
    pub fn as_scope(&self) -> Scope<'_> {
        match self {
            ScopeName::Topic(n) => Scope::Topic(n),
            ScopeName::Room(n) => Scope::Room(n),
        }
    }
}

impl From<Scope<'_>> for ScopeName {
    fn from(s: Scope<'_>) -> Self {
        match s {
            Scope::Topic(n) => ScopeName::Topic(n.to_owned()),
            Scope::Room(n) => ScopeName::Room(n.to_owned()),
        }
    }
}

/// Presence shared by several nodes, in the engine. Every method is one round trip at most
/// and fails fast when the engine cannot be reached.
#[async_trait]
pub trait PresenceStore: Send + Sync + 'static {
    /// How often the node refreshes its members ([`PresenceStore::refresh`]) and asks for the
    /// expired ones ([`PresenceStore::expire`]). A member not refreshed for a few intervals
    /// expires; the store documents the bound.
    fn refresh_interval(&self) -> Duration;

    /// Adds (or updates) a member.
    async fn add(&self, scope: Scope<'_>, member: &Member) -> Result<(), BrokerError>;

    /// Removes a member. `Ok(true)` if it was there: the caller then emits its `leave`.
    async fn remove(&self, scope: Scope<'_>, session: SessionId) -> Result<bool, BrokerError>;

    /// Every member of a scope, on every node.
    async fn members(&self, scope: Scope<'_>) -> Result<Vec<Member>, BrokerError>;

    /// Keeps this node's members alive (adding those the store lost, e.g. after an outage).
    async fn refresh(&self, members: &[(ScopeName, Member)]) -> Result<(), BrokerError>;

    /// Removes the members whose node stopped refreshing them and returns them. Each expired
    /// member is returned to exactly one caller, whichever node asks first, which emits its
    /// `leave`.
    async fn expire(&self) -> Result<Vec<(ScopeName, Member)>, BrokerError>;
}

// ---------------------------------------------------------------------------------------------
// The node's side: keeping the store in step with the local tables.

use std::collections::VecDeque;
use std::sync::{Mutex, OnceLock, Weak};

use crate::broker::{NodeId, Route};
use crate::node::{Control, Inner};
use crate::session::lock;
use crate::stats::Stats;

/// Presence operations waiting for the worker; beyond this many, one is dropped (counted) and
/// the next refresh puts the store right.
const OPS_QUEUE: usize = 65_536;
/// Removals that failed (engine away) and are retried once it is back; beyond this many the
/// members are left to expire.
const RETRY_MAX: usize = 10_000;
/// Members per refresh call.
const REFRESH_BATCH: usize = 1_000;

enum Op {
    Add(ScopeName, Member),
    Remove(ScopeName, Member),
    Reconnected,
}

/// Keeps a [`PresenceStore`] in step with this node's members, in order, from places that
/// cannot wait: adds and removes are queued (bounded) for one task, which also refreshes the
/// node's members and collects the expired ones of dead nodes.
pub(crate) struct PresenceWorker {
    enabled: bool,
    tx: OnceLock<tokio::sync::mpsc::Sender<Op>>,
    retry: Mutex<VecDeque<(ScopeName, Member)>>,
}

impl PresenceWorker {
    pub(crate) fn new(enabled: bool) -> PresenceWorker {
        PresenceWorker {
            enabled,
            tx: OnceLock::new(),
            retry: Mutex::new(VecDeque::new()),
        }
    }

    fn queue(&self, inner: &Inner, op: Op) {
        if !self.enabled {
            return;
        }
        let tx = self.tx.get_or_init(|| {
            let (tx, rx) = tokio::sync::mpsc::channel(OPS_QUEUE);
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(run(inner.me.clone(), rx));
            }
            tx
        });
        if tx.try_send(op).is_err() {
            Stats::add(&inner.stats.presence_dropped, 1);
            tracing::warn!(
                "presence queue full: an update was dropped (the next refresh repairs the store)"
            );
        }
    }

    /// A local member joined a scope: into the store, then its `join` to the other nodes.
    pub(crate) fn add(&self, inner: &Inner, scope: ScopeName, member: Member) {
        self.queue(inner, Op::Add(scope, member));
    }

    /// A local member left a scope (its local `leave` is already out): out of the store, then
    /// its `leave` to the other nodes, once.
    pub(crate) fn remove(&self, inner: &Inner, scope: ScopeName, member: Member) {
        self.queue(inner, Op::Remove(scope, member));
    }

    /// The engine is back: retry what failed, refresh at once.
    pub(crate) fn reconnected(&self, inner: &Inner) {
        self.queue(inner, Op::Reconnected);
    }
}

fn route(scope: &ScopeName) -> Route<'_> {
    match scope {
        ScopeName::Topic(t) => Route::Topic(t),
        ScopeName::Room(r) => Route::Room(r),
    }
}

fn event(join: bool, scope: &ScopeName, member: Member) -> Control {
    let (room, name) = match scope {
        ScopeName::Topic(t) => (false, t.clone()),
        ScopeName::Room(r) => (true, r.clone()),
    };
    Control::Presence {
        join,
        room,
        scope: name,
        member,
    }
}

async fn run(me: Weak<Inner>, mut rx: tokio::sync::mpsc::Receiver<Op>) {
    let Some(interval) = me
        .upgrade()
        .and_then(|i| i.presence_store.as_ref().map(|s| s.refresh_interval()))
    else {
        return;
    };
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let op = tokio::select! {
            op = rx.recv() => match op { Some(op) => Some(op), None => return },
            _ = tick.tick() => None,
        };
        let Some(inner) = me.upgrade() else { return };
        let Some(store) = inner.presence_store.clone() else {
            return;
        };
        match op {
            Some(Op::Add(scope, member)) => match store.add(scope.as_scope(), &member).await {
                Ok(()) => {
                    let _ = inner.send_control(route(&scope), event(true, &scope, member));
                }
                Err(e) => tracing::debug!(%e, "presence add failed (the next refresh repairs it)"),
            },
            Some(Op::Remove(scope, member)) => remove(&inner, &*store, scope, member).await,
            Some(Op::Reconnected) => {
                let retry: Vec<_> = lock(&inner.presence_worker.retry).drain(..).collect();
                for (scope, member) in retry {
                    remove(&inner, &*store, scope, member).await;
                }
                refresh(&inner, &*store).await;
            }
            None => {
                refresh(&inner, &*store).await;
                expire(&inner, &*store).await;
            }
        }
    }
}

async fn remove(inner: &Inner, store: &dyn PresenceStore, scope: ScopeName, member: Member) {
    match store.remove(scope.as_scope(), member.session).await {
        Ok(true) => {
            let _ = inner.send_control(route(&scope), event(false, &scope, member));
        }
        Ok(false) => {}
        Err(e) => {
            tracing::debug!(%e, "presence remove failed: retried when the engine is back");
            let mut retry = lock(&inner.presence_worker.retry);
            if retry.len() < RETRY_MAX {
                retry.push_back((scope, member));
            }
        }
    }
}

/// Every live local membership, refreshed in the store.
async fn refresh(inner: &Inner, store: &dyn PresenceStore) {
    let mut all: Vec<(ScopeName, Member)> = Vec::new();
    for t in inner.topics.iter() {
        let st = lock(&t.value().state);
        for sub in st.subs.values().filter(|s| s.is_live()) {
            all.push((ScopeName::Topic(t.key().to_string()), sub.session.member()));
        }
    }
    for r in inner.rooms.iter() {
        let st = lock(&r.value().state);
        for s in st.members.values() {
            all.push((ScopeName::Room(r.key().to_string()), s.member()));
        }
    }
    for batch in all.chunks(REFRESH_BATCH) {
        if let Err(e) = store.refresh(batch).await {
            tracing::debug!(%e, "presence refresh failed");
            return;
        }
    }
}

/// The members of dead nodes, removed once (by whichever node asks first): their `leave`.
async fn expire(inner: &Inner, store: &dyn PresenceStore) {
    let expired = match store.expire().await {
        Ok(e) => e,
        Err(e) => {
            tracing::debug!(%e, "presence expiry failed");
            return;
        }
    };
    for (scope, member) in expired {
        if NodeId::of(member.session) == inner.node {
            if inner.sessions.contains_key(&member.session) {
                // Still here: its refresh failed; the next one adds it back.
                continue;
            }
            // Its local `leave` went out when it closed; the others get theirs now.
        } else {
            let (room, name) = match &scope {
                ScopeName::Topic(t) => (false, t.as_str()),
                ScopeName::Room(r) => (true, r.as_str()),
            };
            inner.presence_event_local(false, room, name, member.clone());
        }
        let _ = inner.send_control(route(&scope), event(false, &scope, member));
    }
}

impl Inner {
    /// A `join`/`leave` for this node's watchers of a topic, or members of a room.
    pub(crate) fn presence_event_local(&self, join: bool, room: bool, scope: &str, member: Member) {
        if room {
            self.room_presence_local(join, scope, member);
        } else {
            self.topic_presence_local(join, scope, member);
        }
    }

    /// The local subscribers of a topic.
    pub(crate) fn topic_members_local(&self, name: &str) -> Vec<Member> {
        let Some(t) = self.topics.get(name).map(|t| t.clone()) else {
            return Vec::new();
        };
        let st = lock(&t.state);
        st.subs
            .values()
            .filter(|s| s.is_live())
            .map(|s| s.session.member())
            .collect()
    }

    /// The members of a scope on every node (from the store when there is one).
    pub(crate) async fn members(&self, scope: Scope<'_>) -> Result<Vec<Member>, BrokerError> {
        if let Some(store) = &self.presence_store {
            return store.members(scope).await;
        }
        Ok(match scope {
            Scope::Topic(t) => self.topic_members_local(t),
            Scope::Room(r) => self.room_members_local(r),
        })
    }
}
