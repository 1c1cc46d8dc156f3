//! The values frames carry: positions, session ids, presence members, scopes, gap reasons.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Where a message sits in its topic's stream: the stream's epoch and the message's offset.
///
/// An epoch is opaque (compare for equality only); offsets count 1, 2, 3, ... within it. A
/// topic's position "now" is the offset of its last message (0 for a stream with none). On the
/// wire (a `since`, a `publish` reply) it is the map `{"epoch": e, "offset": n}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Position {
    /// The stream's epoch.
    pub epoch: Arc<str>,
    /// The offset within the epoch.
    pub offset: u64,
}

impl Position {
    /// A position.
    pub fn new(epoch: impl Into<Arc<str>>, offset: u64) -> Position {
        Position {
            epoch: epoch.into(),
            offset,
        }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.epoch, self.offset)
    }
}

/// A session's public id: what other clients see in presence and what the server uses to send
/// to one session. Random, but not a credential. Its text form is 16 lower-case hex digits;
/// the high 32 bits name the node that issued it ([`SessionId::node`]).
///
/// ```
/// use livehub_protocol::SessionId;
/// let id = SessionId::parse("5f0e8c1d2a3b4c6d").unwrap();
/// assert_eq!(id.node(), 0x5f0e8c1d);
/// assert_eq!(id.to_string(), "5f0e8c1d2a3b4c6d");
/// assert_eq!(SessionId::parse("+f0e8c1d2a3b4c6d"), None);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(u64);

impl SessionId {
    /// The id with this numeric value.
    pub const fn from_u64(id: u64) -> SessionId {
        SessionId(id)
    }

    /// The id of session `local` of node `node`.
    pub const fn from_parts(node: u32, local: u32) -> SessionId {
        SessionId(((node as u64) << 32) | local as u64)
    }

    /// The numeric value.
    pub const fn as_u64(self) -> u64 {
        self.0
    }

    /// The node that issued the id: its high 32 bits.
    pub const fn node(self) -> u32 {
        (self.0 >> 32) as u32
    }

    /// Parses the id's text form (exactly 16 hex digits, either case), as clients see it.
    pub fn parse(s: &str) -> Option<SessionId> {
        // Exactly 16 hex digits: from_str_radix alone would accept a sign (`+123...`).
        if s.len() != 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        u64::from_str_radix(s, 16).ok().map(SessionId)
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// A string that is not a session id ([`SessionId`]'s `FromStr`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a session id is 16 hex digits")]
pub struct BadSessionId;

impl FromStr for SessionId {
    type Err = BadSessionId;

    fn from_str(s: &str) -> Result<SessionId, BadSessionId> {
        SessionId::parse(s).ok_or(BadSessionId)
    }
}

/// Serialized as its text form.
impl Serialize for SessionId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for SessionId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<SessionId, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        SessionId::parse(&text).ok_or_else(|| serde::de::Error::custom(BadSessionId))
    }
}

/// A member of a topic or room, as presence shows it: `{"session", "user", "meta"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Member {
    /// The member's session.
    pub session: SessionId,
    /// The session's user id.
    pub user: String,
    /// The session's presence metadata.
    pub meta: serde_json::Value,
}

/// Which `join`/`leave` events of a topic a subscription asks for: the `presence` field of
/// `subscribe` (absent or `false`: none; `true`: one per session; `"users"`: one per user).
///
/// With [`PresenceEvents::Users`], a user is in once however many sessions (tabs, devices,
/// nodes) it has there: its `join` comes with its first session (as `member`), its `leave`
/// with its last one. Sessions without a user id (anonymous) are each their own user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum PresenceEvents {
    /// No presence events (`presence` absent or `false`).
    #[default]
    None,
    /// A `join`/`leave` per session (`presence: true`).
    Sessions,
    /// A `join`/`leave` per user (`presence: "users"`).
    Users,
}

impl PresenceEvents {
    /// Whether any events are asked for.
    pub fn any(self) -> bool {
        self != PresenceEvents::None
    }
}

impl From<bool> for PresenceEvents {
    fn from(on: bool) -> PresenceEvents {
        if on {
            PresenceEvents::Sessions
        } else {
            PresenceEvents::None
        }
    }
}

/// `true`/`false`, `"sessions"` or `"users"`; anything else is refused (`bad_field`).
impl<'de> Deserialize<'de> for PresenceEvents {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<PresenceEvents, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = PresenceEvents;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a boolean, \"sessions\" or \"users\"")
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<PresenceEvents, E> {
                Ok(PresenceEvents::from(v))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<PresenceEvents, E> {
                match v {
                    "sessions" => Ok(PresenceEvents::Sessions),
                    "users" => Ok(PresenceEvents::Users),
                    _ => Err(E::invalid_value(serde::de::Unexpected::Str(v), &self)),
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// A page of a scope's members: at most the page size asked for, in the order of their
/// session ids, and the cursor of the next page (`None`: this was the last).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberPage {
    /// The members of this page.
    pub members: Vec<Member>,
    /// Where the next page starts (the last session id of this one); `None` at the end.
    pub cursor: Option<String>,
}

/// How many are in a topic or room: sessions, and distinct users (each anonymous session
/// counts as a user of its own). The `presence_count` reply: `{"count": n, "users": u}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PresenceCount {
    /// Sessions.
    pub count: u64,
    /// Distinct users.
    pub users: u64,
}

/// Where a presence event happened, or what a `presence` request asks about: a topic or a room
/// (on the wire, a `topic` or a `room` field).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scope {
    /// A topic.
    Topic(Arc<str>),
    /// A room.
    Room(Arc<str>),
}

impl Scope {
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

    /// The wire field that carries the name (`topic` or `room`).
    pub(crate) fn field(&self) -> &'static str {
        if self.is_room() {
            "room"
        } else {
            "topic"
        }
    }
}

/// Why a `gap` frame says messages will not arrive.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum GapReason {
    /// `history`: the messages are no longer held.
    History,
    /// `epoch`: the `since` named another epoch, or the stream was recreated while the
    /// session followed it: nothing was recovered, and `from`/`to` are 0; the frame's epoch is
    /// the stream's new one.
    Epoch,
    /// `lagged`: dropped because the session read too slowly.
    Lagged,
    /// `conflated`: on a conflated subscription that fell behind, messages of offsets in
    /// `from..=to` were superseded by newer messages of the same key. Not a loss: every
    /// message of that range that follows is the newest of its key (or has no key).
    Conflated,
    /// `ahead`: the `since` is ahead of the stream (its offsets `from..=to` were never given in
    /// this epoch, or the engine lost them and went back): nothing was recovered, and new
    /// messages will take those offsets. Forget what was held after `from - 1`.
    Ahead,
    /// A reason this version does not know, as it came.
    Other(Box<str>),
}

impl GapReason {
    /// Reads a wire string.
    pub fn parse(s: &str) -> GapReason {
        match s {
            "history" => GapReason::History,
            "epoch" => GapReason::Epoch,
            "lagged" => GapReason::Lagged,
            "ahead" => GapReason::Ahead,
            "conflated" => GapReason::Conflated,
            other => GapReason::Other(other.into()),
        }
    }

    /// The wire string.
    pub fn as_str(&self) -> &str {
        match self {
            GapReason::History => "history",
            GapReason::Epoch => "epoch",
            GapReason::Lagged => "lagged",
            GapReason::Ahead => "ahead",
            GapReason::Conflated => "conflated",
            GapReason::Other(s) => s,
        }
    }
}

impl fmt::Display for GapReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids_parse_strictly_and_carry_their_node() {
        let id = SessionId::from_parts(0xdead_beef, 7);
        assert_eq!(id.to_string(), "deadbeef00000007");
        assert_eq!(id.node(), 0xdead_beef);
        assert_eq!(SessionId::parse("DEADBEEF00000007"), Some(id));
        assert_eq!("deadbeef00000007".parse::<SessionId>(), Ok(id));
        for bad in [
            "",
            "deadbeef0000000",
            "deadbeef000000070",
            "-eadbeef00000007",
            "deadbeef0000000g",
        ] {
            assert_eq!(SessionId::parse(bad), None, "{bad:?}");
        }
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, "\"deadbeef00000007\"");
        assert_eq!(serde_json::from_str::<SessionId>(&json).unwrap(), id);
        assert!(serde_json::from_str::<SessionId>("\"nope\"").is_err());
        assert!(serde_json::from_str::<SessionId>("12").is_err());
    }

    #[test]
    fn positions_and_gap_reasons() {
        let p = Position::new("e1", 4);
        assert_eq!(p.to_string(), "e1:4");
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(json, r#"{"epoch":"e1","offset":4}"#);
        assert_eq!(serde_json::from_str::<Position>(&json).unwrap(), p);
        for r in [GapReason::History, GapReason::Epoch, GapReason::Lagged] {
            assert_eq!(GapReason::parse(r.as_str()), r);
        }
        assert_eq!(
            GapReason::parse("engine"),
            GapReason::Other("engine".into())
        );
    }
}
