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
use serde::{Deserialize, Serialize};

use crate::broker::BrokerError;
use crate::session::SessionId;

/// A member of a topic or room, as presence shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Member {
    /// The member's session.
    #[serde(with = "session_text")]
    pub session: SessionId,
    /// The session's user id.
    pub user: String,
    /// The session's presence metadata.
    pub meta: serde_json::Value,
}

mod session_text {
    use crate::session::SessionId;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(id: &SessionId, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(id)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SessionId, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        SessionId::parse(&text).ok_or_else(|| serde::de::Error::custom("not a session id"))
    }
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
