//! Presence: who is in a topic or a room, and the store that shares it between nodes.
//!
//! On one node (the default) the local tables are the truth: a topic's members are its
//! subscribers, a room's members are the sessions in it, and no store is involved. With
//! several nodes, a [`PresenceStore`] in the engine holds every node's members. Each node adds
//! and removes its own sessions, and refreshes them every [`PresenceStore::refresh_interval`];
//! a node that dies without a goodbye stops refreshing, so its members expire and any node's
//! [`PresenceStore::expire`] removes them, exactly once, and emits their `leave`.
//!
//! ## At scale: counts, pages, users
//!
//! Every scope keeps, beside its members, the number of sessions of each user in it, on one
//! node in its tables and with several nodes in the store, updated in the same step as
//! the members. So:
//!
//! - a count ([`PresenceCount`]: sessions and distinct users) costs O(1) however many members
//!   there are: the sizes of two maps, never a walk;
//! - members are listed a page at a time, in the order of their session ids (16 hex digits,
//!   so numeric and text order agree): a page is at most the size asked for, and its cursor
//!   is the last session id it holds. Paging from no cursor to the end lists every member
//!   present throughout exactly once; one that came or went meanwhile may be in it or not;
//! - a user is in a scope while it has at least one session there, on any node: the store's
//!   answers to [`PresenceStore::add`] (the user's first session), [`PresenceStore::remove`]
//!   and [`PresenceStore::expire`] (its last) say when a user comes and goes, for the
//!   subscriptions that asked for `join`/`leave` per user ([`PresenceEvents::Users`]).
//!   A node that dies leaves its users' sessions to expire; the user leaves, once, with the
//!   last of them. A session without a user id (anonymous) is a user of its own.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;

use crate::broker::BrokerError;
use crate::error::ErrorCode;
use crate::session::SessionId;

pub use livehub_protocol::{Member, MemberPage, PresenceCount, PresenceEvents};

/// The key a member's user is counted under in a scope: `u:<user id>`, or `s:<session>` for
/// a session without a user id (each anonymous session is a user of its own). Stores count
/// sessions per user key.
pub fn user_key(member: &Member) -> String {
    if member.user.is_empty() {
        format!("s:{}", member.session)
    } else {
        format!("u:{}", member.user)
    }
}

/// What [`PresenceStore::remove`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    /// The member was not there (another node removed or expired it first): no `leave`.
    Absent,
    /// Removed; its user still has other sessions in the scope.
    Session,
    /// Removed, and it was its user's last session in the scope: the user left too.
    User,
}

/// A member that [`PresenceStore::expire`] removed.
#[derive(Debug, Clone, PartialEq)]
pub struct Expired {
    /// Where it was.
    pub scope: ScopeName,
    /// Who.
    pub member: Member,
    /// It was its user's last session in the scope: the user left too.
    pub user_left: bool,
}

/// A `presence` page request that cannot be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PresenceError {
    /// The page size is 0 or over the hub's largest page
    /// ([`crate::HubBuilder::presence_page_max`]).
    #[error("a page holds 1 to {0} members")]
    BadLimit(usize),
    /// The cursor is not one a page handed out.
    #[error("not a presence cursor")]
    BadCursor,
    /// The engine could not be asked.
    #[error(transparent)]
    Engine(#[from] BrokerError),
}

impl PresenceError {
    /// The stable code of the `error` frame (`bad_limit`, `bad_cursor`, or the engine's).
    pub fn code(&self) -> ErrorCode {
        match self {
            PresenceError::BadLimit(_) => ErrorCode::BadLimit,
            PresenceError::BadCursor => ErrorCode::BadCursor,
            PresenceError::Engine(e) => e.code(),
        }
    }
}

/// Reads a page cursor: the session id it names.
pub(crate) fn parse_cursor(cursor: Option<&str>) -> Result<Option<SessionId>, PresenceError> {
    cursor
        .map(|c| SessionId::parse(c).ok_or(PresenceError::BadCursor))
        .transpose()
}

/// One scope's presence on this node: its live members in session order (for pages) and
/// the sessions of each user (for counts and per-user `join`/`leave`). O(log n) to change,
/// O(1) to count.
#[derive(Debug, Default)]
pub(crate) struct LocalPresence {
    order: BTreeSet<SessionId>,
    users: HashMap<String, u32>,
}

impl LocalPresence {
    /// Adds a member; `true` if it is its user's first session here.
    pub(crate) fn insert(&mut self, member: &Member) -> bool {
        if !self.order.insert(member.session) {
            return false;
        }
        let n = self.users.entry(user_key(member)).or_insert(0);
        *n += 1;
        *n == 1
    }

    /// Removes a member; `true` if it was its user's last session here.
    pub(crate) fn remove(&mut self, member: &Member) -> bool {
        if !self.order.remove(&member.session) {
            return false;
        }
        let key = user_key(member);
        match self.users.get_mut(&key) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            Some(_) => {
                self.users.remove(&key);
                true
            }
            None => false,
        }
    }

    /// Sessions and users, without a walk.
    pub(crate) fn count(&self) -> PresenceCount {
        PresenceCount {
            count: self.order.len() as u64,
            users: self.users.len() as u64,
        }
    }

    /// Up to `limit` session ids after `after`, and whether more follow.
    pub(crate) fn page(&self, after: Option<SessionId>, limit: usize) -> (Vec<SessionId>, bool) {
        use std::ops::Bound;
        let from = match after {
            Some(a) => Bound::Excluded(a),
            None => Bound::Unbounded,
        };
        let mut it = self.order.range((from, Bound::Unbounded));
        let page: Vec<SessionId> = it.by_ref().take(limit).copied().collect();
        (page, it.next().is_some())
    }
}

/// A page from members in session order: the cursor is the last one's id if more follow.
pub(crate) fn page_of(members: Vec<Member>, more: bool) -> MemberPage {
    let cursor = match (more, members.last()) {
        (true, Some(m)) => Some(m.session.to_string()),
        _ => None,
    };
    MemberPage { members, cursor }
}

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

    /// Adds (or updates) a member. `Ok(true)` if it is its user's first session in the scope
    /// ([`user_key`]), on any node: the caller emits the user's `join`.
    async fn add(&self, scope: Scope<'_>, member: &Member) -> Result<bool, BrokerError>;

    /// Removes a member, saying whether it was there and whether its user left with it.
    async fn remove(&self, scope: Scope<'_>, session: SessionId) -> Result<Removal, BrokerError>;

    /// Every member of a scope, on every node.
    async fn members(&self, scope: Scope<'_>) -> Result<Vec<Member>, BrokerError>;

    /// How many sessions and distinct users a scope has, on every node: O(1), whatever the
    /// number of members.
    async fn count(&self, scope: Scope<'_>) -> Result<PresenceCount, BrokerError>;

    /// Up to `limit` members of a scope whose session ids come after `after` (from the first
    /// if `None`), in session id order, with the cursor of the next page if more follow (the
    /// last session id read). A member present from the first page to the last is on exactly
    /// one page.
    async fn page(
        &self,
        scope: Scope<'_>,
        after: Option<SessionId>,
        limit: usize,
    ) -> Result<MemberPage, BrokerError>;

    /// Keeps this node's members alive (adding those the store lost, e.g. after an outage).
    async fn refresh(&self, members: &[(ScopeName, Member)]) -> Result<(), BrokerError>;

    /// Removes the members whose node stopped refreshing them and returns them. Each expired
    /// member is returned to exactly one caller, whichever node asks first, which emits its
    /// `leave` (and its user's, when it was the user's last session there).
    async fn expire(&self) -> Result<Vec<Expired>, BrokerError>;
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

/// A presence event for the other nodes; `user`: also its user's (first or last session).
fn event(join: bool, scope: &ScopeName, member: Member, user: bool) -> Control {
    let (room, name) = match scope {
        ScopeName::Topic(t) => (false, t.clone()),
        ScopeName::Room(r) => (true, r.clone()),
    };
    Control::Presence {
        join,
        room,
        scope: name,
        member,
        user,
    }
}

/// Which watchers a presence event is for: those of sessions' comings and goings, those of
/// users' (the event is its user's first or last session), or both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Watchers {
    pub(crate) sessions: bool,
    pub(crate) users: bool,
}

impl Watchers {
    /// Only the watchers of users (the store said the user came or went).
    pub(crate) const USERS: Watchers = Watchers {
        sessions: false,
        users: true,
    };

    /// Session watchers, and user watchers if `user_edge`.
    pub(crate) fn sessions_and(user_edge: bool) -> Watchers {
        Watchers {
            sessions: true,
            users: user_edge,
        }
    }

    /// Whether a subscription (or room) asking for `mode` gets the event.
    pub(crate) fn want(self, mode: PresenceEvents) -> bool {
        match mode {
            PresenceEvents::None => false,
            PresenceEvents::Sessions => self.sessions,
            PresenceEvents::Users => self.users,
        }
    }
}

/// This node's user watchers of a scope: a user came or went (the store says so).
fn user_event_local(inner: &Inner, join: bool, scope: &ScopeName, member: Member) {
    let (room, name) = match scope {
        ScopeName::Topic(t) => (false, t.as_str()),
        ScopeName::Room(r) => (true, r.as_str()),
    };
    inner.presence_event_local(join, room, name, member, Watchers::USERS);
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
        // Updates first: a refresh runs when none is waiting (see `refresh`).
        let op = tokio::select! {
            biased;
            op = rx.recv() => match op { Some(op) => Some(op), None => return },
            _ = tick.tick() => None,
        };
        let Some(inner) = me.upgrade() else { return };
        let Some(store) = inner.presence_store.clone() else {
            return;
        };
        match op {
            Some(Op::Reconnected) => {
                retry_removals(&inner, &*store).await;
                refresh(&inner, &*store, &mut rx).await;
            }
            Some(op) => {
                apply(&inner, &*store, op).await;
            }
            None => {
                refresh(&inner, &*store, &mut rx).await;
                expire(&inner, &*store).await;
            }
        }
    }
}

/// Runs one update; returns the membership it removed, if it was a removal.
async fn apply(inner: &Inner, store: &dyn PresenceStore, op: Op) -> Option<(ScopeName, SessionId)> {
    match op {
        Op::Add(scope, member) => {
            match store.add(scope.as_scope(), &member).await {
                Ok(first) => {
                    if first {
                        user_event_local(inner, true, &scope, member.clone());
                    }
                    let _ = inner.send_control(route(&scope), event(true, &scope, member, first));
                }
                Err(e) => tracing::debug!(%e, "presence add failed (the next refresh repairs it)"),
            }
            None
        }
        Op::Remove(scope, member) => {
            let session = member.session;
            remove(inner, store, scope.clone(), member).await;
            Some((scope, session))
        }
        Op::Reconnected => {
            retry_removals(inner, store).await;
            None
        }
    }
}

/// The removals that failed while the engine was away, again.
async fn retry_removals(inner: &Inner, store: &dyn PresenceStore) {
    let retry: Vec<_> = lock(&inner.presence_worker.retry).drain(..).collect();
    for (scope, member) in retry {
        remove(inner, store, scope, member).await;
    }
}

async fn remove(inner: &Inner, store: &dyn PresenceStore, scope: ScopeName, member: Member) {
    match store.remove(scope.as_scope(), member.session).await {
        Ok(Removal::Session) => {
            let _ = inner.send_control(route(&scope), event(false, &scope, member, false));
        }
        Ok(Removal::User) => {
            user_event_local(inner, false, &scope, member.clone());
            let _ = inner.send_control(route(&scope), event(false, &scope, member, true));
        }
        Ok(Removal::Absent) => {}
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
///
/// A refresh adds what the store lacks, which must not be a member whose own add is still
/// waiting: that add would then find it there, and its user's `join` (the store's answer to
/// the add) would be lost. A membership's add is queued under its topic's or room's lock as
/// it becomes live, and the refresh reads the memberships under the same locks, so every
/// membership it reads has its add queued already: those waiting are run before the refresh
/// is written. A removal run meanwhile takes its member out of the refresh (else the refresh
/// would bring it back).
async fn refresh(
    inner: &Inner,
    store: &dyn PresenceStore,
    rx: &mut tokio::sync::mpsc::Receiver<Op>,
) {
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
    let mut removed = HashSet::new();
    while let Ok(op) = rx.try_recv() {
        if let Some(gone) = apply(inner, store, op).await {
            removed.insert(gone);
        }
    }
    if !removed.is_empty() {
        all.retain(|(scope, m)| !removed.contains(&(scope.clone(), m.session)));
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
    for Expired {
        scope,
        member,
        user_left,
    } in expired
    {
        let (room, name) = match &scope {
            ScopeName::Topic(t) => (false, t.as_str()),
            ScopeName::Room(r) => (true, r.as_str()),
        };
        if NodeId::of(member.session) == inner.node {
            if inner.sessions.contains_key(&member.session) {
                // Still here: its refresh failed; the next one adds it back.
                continue;
            }
            // Its local session `leave` went out when it closed; its user's, if it was the
            // last, goes now; the others get theirs.
            if user_left {
                inner.presence_event_local(false, room, name, member.clone(), Watchers::USERS);
            }
        } else {
            let to = Watchers::sessions_and(user_left);
            inner.presence_event_local(false, room, name, member.clone(), to);
        }
        let _ = inner.send_control(route(&scope), event(false, &scope, member, user_left));
    }
}

impl Inner {
    /// A `join`/`leave` for this node's watchers of a topic, or members of a room, among `to`.
    pub(crate) fn presence_event_local(
        &self,
        join: bool,
        room: bool,
        scope: &str,
        member: Member,
        to: Watchers,
    ) {
        if room {
            self.room_presence_local(join, scope, member, to);
        } else {
            self.topic_presence_local(join, scope, member, to);
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

    /// A scope's sessions and users on every node: O(1).
    pub(crate) async fn presence_count(
        &self,
        scope: Scope<'_>,
    ) -> Result<PresenceCount, BrokerError> {
        if let Some(store) = &self.presence_store {
            return store.count(scope).await;
        }
        Ok(match scope {
            Scope::Topic(t) => self
                .topics
                .get(t)
                .map(|t| lock(&t.state).presence.count())
                .unwrap_or_default(),
            Scope::Room(r) => self
                .rooms
                .get(r)
                .map(|r| lock(&r.state).presence.count())
                .unwrap_or_default(),
        })
    }

    /// A page of a scope's members on every node (see the module docs); `limit` `None` is
    /// the largest page.
    pub(crate) async fn members_page(
        &self,
        scope: Scope<'_>,
        cursor: Option<&str>,
        limit: Option<usize>,
    ) -> Result<MemberPage, PresenceError> {
        let max = self.config.presence_page_max;
        let limit = limit.unwrap_or(max);
        if limit == 0 || limit > max {
            return Err(PresenceError::BadLimit(max));
        }
        let after = parse_cursor(cursor)?;
        if let Some(store) = &self.presence_store {
            return Ok(store.page(scope, after, limit).await?);
        }
        let (members, more) = match scope {
            Scope::Topic(t) => match self.topics.get(t).map(|t| t.clone()) {
                Some(t) => {
                    let st = lock(&t.state);
                    let (ids, more) = st.presence.page(after, limit);
                    let members = ids
                        .iter()
                        .filter_map(|id| st.subs.get(id).map(|s| s.session.member()))
                        .collect();
                    (members, more)
                }
                None => (Vec::new(), false),
            },
            Scope::Room(r) => match self.rooms.get(r).map(|r| r.clone()) {
                Some(r) => {
                    let st = lock(&r.state);
                    let (ids, more) = st.presence.page(after, limit);
                    let members = ids
                        .iter()
                        .filter_map(|id| st.members.get(id).map(|s| s.member()))
                        .collect();
                    (members, more)
                }
                None => (Vec::new(), false),
            },
        };
        Ok(page_of(members, more))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(session: u64, user: &str) -> Member {
        Member {
            session: SessionId::from_u64(session),
            user: user.to_owned(),
            meta: serde_json::Value::Null,
        }
    }

    #[test]
    fn a_user_counts_once_and_goes_with_its_last_session() {
        let mut p = LocalPresence::default();
        assert!(p.insert(&m(1, "ana")));
        assert!(!p.insert(&m(2, "ana")));
        assert!(!p.insert(&m(2, "ana")), "the same session twice is one");
        assert!(
            p.insert(&m(3, "")) && p.insert(&m(4, "")),
            "anonymous: one user each"
        );
        assert_eq!(p.count(), PresenceCount { count: 4, users: 3 });
        assert!(!p.remove(&m(1, "ana")));
        assert!(!p.remove(&m(1, "ana")), "not there: nothing left");
        assert!(p.remove(&m(2, "ana")));
        assert!(p.remove(&m(3, "")));
        assert_eq!(p.count(), PresenceCount { count: 1, users: 1 });
    }

    #[test]
    fn pages_go_in_session_order_and_end() {
        let mut p = LocalPresence::default();
        for s in [9, 3, 7, 1, 5] {
            p.insert(&m(s, "u"));
        }
        let ids = |v: Vec<SessionId>| v.into_iter().map(|s| s.as_u64()).collect::<Vec<_>>();
        let (page, more) = p.page(None, 2);
        assert_eq!((ids(page), more), (vec![1, 3], true));
        let (page, more) = p.page(Some(SessionId::from_u64(3)), 2);
        assert_eq!((ids(page), more), (vec![5, 7], true));
        // A cursor whose member left still works.
        p.remove(&m(7, "u"));
        let (page, more) = p.page(Some(SessionId::from_u64(7)), 2);
        assert_eq!((ids(page), more), (vec![9], false));
        let (page, more) = p.page(Some(SessionId::from_u64(5)), 1);
        assert_eq!((ids(page), more), (vec![9], false));
        assert_eq!(
            page_of(vec![m(1, "u")], true).cursor.as_deref(),
            Some("0000000000000001")
        );
        assert_eq!(page_of(vec![m(1, "u")], false).cursor, None);
    }

    #[test]
    fn events_go_to_the_watchers_asked() {
        use PresenceEvents::*;
        let session_only = Watchers::sessions_and(false);
        assert!(session_only.want(Sessions) && !session_only.want(Users));
        assert!(Watchers::sessions_and(true).want(Users));
        assert!(Watchers::USERS.want(Users) && !Watchers::USERS.want(Sessions));
        assert!(!Watchers::sessions_and(true).want(None));
    }
}
