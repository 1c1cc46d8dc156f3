//! The Broker seam: where a topic's stream lives, and how the nodes of one hub reach each other.
//!
//! A hub is one or more **nodes** (processes) sharing one **engine**. The split:
//!
//! - **The engine owns each topic's stream**: its epoch, the next offset, the bounded history.
//!   A [`Broker::publish`] is one atomic step in the engine (create the epoch if absent, take
//!   the next offset, append to the history, hand the message to every subscribed node) and
//!   answers the message's [`Position`]. A position issued on one node is valid on every node.
//! - **A node owns its sessions**: the local subscriber index, the session queues, the
//!   transports. It [subscribes](Broker::subscribe) to a topic's channel when its first local
//!   session follows the topic and unsubscribes after the last; whatever the engine hands it
//!   ([`Node::deliver`]) goes to its local subscribers, encoded once.
//! - **Rooms, direct sends, disconnects and presence events** travel as opaque control messages
//!   ([`Broker::send`]) along a [`Route`]; livehub-core writes and reads them, the engine only
//!   carries the bytes.
//!
//! The in-process engine, [`MemoryBroker`](crate::MemoryBroker), is the default: one node, no
//! network, the same semantics. `livehub-redis` is the engine for several nodes.
//!
//! # What an engine must guarantee
//!
//! - Positions: within an epoch, offsets are 1, 2, 3, ... with no holes and no reuse. A stream
//!   that is lost or forgotten comes back in a **new** epoch (never a reused one).
//! - Order: a node gets a topic's messages in offset order (a message may be missing, never
//!   reordered: the node finds holes by offset and repairs them from
//!   [`Broker::history`]).
//! - History: a contiguous suffix of the stream, bounded by [`Retention`].
//! - Never waits without bound: an engine that cannot be reached fails fast with
//!   [`BrokerError::Unavailable`], and [`Broker::send`] never waits at all.
//! - After it lost and regained its connection, it resubscribes every channel it had, then
//!   calls [`Node::engine_event`] with [`EngineEvent::Reconnected`]: the node then compares
//!   what it delivered with each stream's top ([`Broker::tops`]) and repairs what it missed.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::codec::Payload;
use crate::error::ErrorCode;
use crate::frame::{Frame, Shared};
use crate::session::SessionId;

pub use livehub_protocol::Position;

/// A node's id: the high 32 bits of every [`SessionId`] it issues, so that a session can be
/// reached from any node. Random per hub (per process).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub u32);

impl NodeId {
    /// The node that holds a session.
    pub fn of(session: SessionId) -> NodeId {
        NodeId(session.node())
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08x}", self.0)
    }
}

/// What a publish hands the engine: the data, and the message's key for conflation.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Message {
    /// The application data.
    pub data: Payload,
    /// The message's key (`match:7`): on a conflated subscription that falls behind, only the
    /// newest message per key is kept.
    pub key: Option<Arc<str>>,
    /// The message deletes its key (it is never conflated away).
    pub delete: bool,
}

impl Message {
    /// A message without a key.
    pub fn new(data: Payload) -> Message {
        Message {
            data,
            key: None,
            delete: false,
        }
    }

    /// A message with a key.
    pub fn keyed(data: Payload, key: impl Into<Arc<str>>) -> Message {
        Message {
            data,
            key: Some(key.into()),
            delete: false,
        }
    }

    /// The same message, marked as the deletion of its key.
    #[must_use]
    pub fn deleting(mut self) -> Message {
        self.delete = true;
        self
    }
}

/// A topic's message with its position, as the engine hands it to a node: built once per node
/// and shared by every local subscriber (each encoding is made at most once). Cheap to clone.
#[derive(Clone)]
pub struct Publication(pub(crate) Arc<Shared>);

impl Publication {
    /// A publication of `topic` at `position`, without a key.
    pub fn new(topic: Arc<str>, position: Position, data: Payload) -> Publication {
        Publication::of(topic, position, Message::new(data))
    }

    /// A publication of `topic` at `position` of a message (with its key, if any).
    pub fn of(topic: Arc<str>, position: Position, message: Message) -> Publication {
        Publication(Shared::new(Frame::Message {
            topic,
            epoch: position.epoch,
            offset: position.offset,
            data: message.data,
            key: message.key,
            delete: message.delete,
        }))
    }

    fn parts(&self) -> (&Arc<str>, &Arc<str>, u64, &Payload) {
        match self.0.frame() {
            Frame::Message {
                topic,
                epoch,
                offset,
                data,
                ..
            } => (topic, epoch, *offset, data),
            // Only `of` builds a Publication, always from a message.
            _ => unreachable!("a publication is always a message"),
        }
    }

    /// The topic.
    pub fn topic(&self) -> &Arc<str> {
        self.parts().0
    }

    /// The stream's epoch.
    pub fn epoch(&self) -> &Arc<str> {
        self.parts().1
    }

    /// The offset within the epoch.
    pub fn offset(&self) -> u64 {
        self.parts().2
    }

    /// The position (epoch and offset).
    pub fn position(&self) -> Position {
        let (_, epoch, offset, _) = self.parts();
        Position {
            epoch: epoch.clone(),
            offset,
        }
    }

    /// The application data.
    pub fn data(&self) -> &Payload {
        self.parts().3
    }

    /// The message's key, if it has one.
    pub fn key(&self) -> Option<&Arc<str>> {
        match self.0.frame() {
            Frame::Message { key, .. } => key.as_ref(),
            _ => None,
        }
    }

    /// Whether the message deletes its key.
    pub fn is_delete(&self) -> bool {
        matches!(self.0.frame(), Frame::Message { delete: true, .. })
    }
}

impl fmt::Debug for Publication {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (topic, epoch, offset, data) = self.parts();
        f.debug_struct("Publication")
            .field("topic", topic)
            .field("epoch", epoch)
            .field("offset", &offset)
            .field("bytes", &data.as_bytes().len())
            .finish()
    }
}

/// How much of each topic's stream the engine keeps. Set once, from the hub's settings, when
/// the engine is attached ([`Broker::attach`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Retention {
    /// Messages kept per topic (0: none).
    pub max_messages: usize,
    /// Payload bytes kept per topic (the oldest messages go first when either bound is passed).
    pub max_bytes: usize,
    /// How long a stream that no node subscribes to is kept after its last message; `None`:
    /// for the engine's life. A stream forgotten and used again starts in a new epoch.
    pub topic_ttl: Option<Duration>,
    /// Streams the engine holds at once, where it has such a bound (the in-process engine);
    /// a publish that would create one more fails with [`BrokerError::TooManyTopics`].
    pub max_topics: usize,
}

impl Default for Retention {
    /// The hub's defaults: 100 messages, 1 MiB, five minutes, 100,000 topics. `Retention` is
    /// `#[non_exhaustive]`, so an engine's own tests (outside livehub-core) start from this and set
    /// the public fields.
    fn default() -> Retention {
        Retention {
            max_messages: 100,
            max_bytes: 1024 * 1024,
            topic_ttl: Some(Duration::from_secs(5 * 60)),
            max_topics: 100_000,
        }
    }
}

/// What part of a topic's history to read ([`Broker::history`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HistoryFrom {
    /// No messages: only the stream's top.
    Top,
    /// The messages after a position (none if the position names another epoch).
    After(Position),
    /// The last `n` messages held.
    Last(usize),
}

/// A read of a topic's history.
#[derive(Debug, Clone)]
pub struct History {
    /// The stream's position now: its epoch, and the offset of its last message (0 if none).
    /// Reading a topic that has no stream creates an empty one, so that the reader gets an
    /// epoch it can resume from.
    pub top: Position,
    /// The messages asked for that the history still holds, in ascending offset order, up to
    /// `top`. With [`HistoryFrom::After`] they may start later than the position's next offset
    /// (the ones between were trimmed): the reader turns that into a `gap`.
    pub publications: Vec<Publication>,
}

/// A channel a node subscribes to on the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel<'a> {
    /// A topic's messages, and the control messages routed to it ([`Route::Topic`]).
    Topic(&'a str),
    /// The control messages routed to a room ([`Route::Room`]).
    Room(&'a str),
    /// The messages of every topic that matches a pattern (`scores/*`: one segment,
    /// `scores/**`: one or more). An engine may hand the node more (a superset: the node
    /// filters), never less.
    Pattern(&'a str),
}

/// Where a control message goes ([`Broker::send`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route<'a> {
    /// Every node subscribed to the topic's channel.
    Topic(&'a str),
    /// Every node subscribed to the room's channel.
    Room(&'a str),
    /// One node (it hears its own route from the moment it is attached).
    Node(NodeId),
    /// Every node.
    All,
}

/// A change in the engine's connection, reported with [`Node::engine_event`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum EngineEvent {
    /// The connection to the engine is lost: publishes fail fast until it is back.
    Disconnected,
    /// The connection is back and every channel is subscribed again. The node checks every
    /// topic it follows against the stream's top and repairs what it missed.
    Reconnected,
}

/// What an engine can do, for the node to know what it needs to check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct BrokerInfo {
    /// A short name for traces and stats (`memory`, `redis`).
    pub name: &'static str,
    /// The engine serves this one node only and delivers synchronously inside `publish`: it
    /// never loses a delivery, never needs checking, and carries no control messages.
    pub local: bool,
}

impl BrokerInfo {
    /// An engine shared by several nodes.
    pub const fn shared(name: &'static str) -> BrokerInfo {
        BrokerInfo { name, local: false }
    }
}

/// The engine's counters ([`Broker::stats`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct EngineStats {
    /// The engine's name.
    pub name: &'static str,
    /// Connected now.
    pub connected: bool,
    /// Connections lost and regained since the start.
    pub reconnects: u64,
    /// Messages received from the engine (publications and control messages).
    pub messages_in: u64,
    /// Messages sent to the engine (publishes and control messages).
    pub messages_out: u64,
    /// Received messages dropped because the node's inbound queue was full (each becomes a
    /// hole that the node repairs from history, or a `gap`).
    pub dropped_in: u64,
    /// Received messages that could not be decoded (logged; the topic is checked).
    pub undecodable: u64,
    /// Received messages waiting to be handed to the node now.
    pub pending_in: u64,
    /// Streams the engine holds now, where it counts them cheaply (the in-process engine);
    /// 0 otherwise.
    pub topics: u64,
}

impl EngineStats {
    /// Stats with only a name, for an engine that counts nothing else.
    pub fn named(name: &'static str) -> EngineStats {
        EngineStats {
            name,
            connected: true,
            ..EngineStats::default()
        }
    }
}

/// An engine operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// The engine cannot be reached now (not connected, or no answer in time). Stable code
    /// `engine_unavailable`.
    #[error("engine unavailable: {0}")]
    Unavailable(String),
    /// The engine answered with an error (out of memory, read-only replica, ...). Stable code
    /// `engine_error`.
    #[error("engine error: {0}")]
    Engine(String),
    /// The engine's stream table is full (`too_many_topics`).
    #[error("too many topics")]
    TooManyTopics,
}

impl BrokerError {
    /// The stable code of this failure.
    pub fn code(&self) -> ErrorCode {
        match self {
            BrokerError::Unavailable(_) => ErrorCode::EngineUnavailable,
            BrokerError::Engine(_) => ErrorCode::EngineError,
            BrokerError::TooManyTopics => ErrorCode::TooManyTopics,
        }
    }
}

/// The node's side of the seam: what an engine calls with what it receives. livehub-core
/// implements it; an engine gets it in [`Broker::attach`]. Every method returns at once (a
/// delivery is a queue push per local subscriber).
pub trait Node: Send + Sync + 'static {
    /// The node's id (the high bits of its session ids, the address of [`Route::Node`]).
    fn id(&self) -> NodeId;

    /// A message of a topic this node subscribed to. Messages of one topic must come in the
    /// stream's order; one that skips ahead makes the node repair the hole from history, one
    /// already delivered is dropped.
    fn deliver(&self, publication: Publication);

    /// A control message that another node sent along a route this node hears.
    fn control(&self, message: &[u8]);

    /// The engine lost or regained its connection.
    fn engine_event(&self, event: EngineEvent);

    /// Something received for `topic` (if known) could not be decoded: counted and logged,
    /// and the topic is checked against its stream.
    fn undecodable(&self, topic: Option<&str>, error: &str);
}

/// An engine: the streams of every topic, and the routes between nodes. See the module docs
/// for what an implementation must guarantee.
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// What this engine is and can do.
    fn info(&self) -> BrokerInfo;

    /// Called once, when the hub is built: where to deliver, and how much history to keep.
    fn attach(&self, node: Arc<dyn Node>, retention: Retention);

    /// Publishes a message to `topic` in one atomic step and answers its position. Every node
    /// subscribed to the topic, this one included, gets it through [`Node::deliver`], with its
    /// key (and the history keeps the key too).
    ///
    /// The message takes its place in the order of publishes by the time the returned future
    /// is first polled (e.g. queued for the engine's connection, before any `.await` that
    /// waits for the engine): the node relies on it to let a client's publishes wait for
    /// their answers together while keeping their order.
    async fn publish(&self, topic: &str, message: Message) -> Result<Position, BrokerError>;

    /// Starts hearing a channel. Called by the node on its first local subscriber or member.
    async fn subscribe(&self, channel: Channel<'_>) -> Result<(), BrokerError>;

    /// Stops hearing a channel. Called by the node after its last local subscriber left.
    async fn unsubscribe(&self, channel: Channel<'_>) -> Result<(), BrokerError>;

    /// Reads a topic's history (see [`History`]).
    async fn history(&self, topic: &str, from: HistoryFrom) -> Result<History, BrokerError>;

    /// The tops of several topics' streams, in order (`None`: no stream). Used to find what a
    /// node missed after an outage, and periodically.
    async fn tops(&self, topics: &[Arc<str>]) -> Result<Vec<Option<Position>>, BrokerError>;

    /// Sends a control message along a route. Never waits: it is queued for the engine, or
    /// refused at once ([`BrokerError::Unavailable`] when the engine is not connected or the
    /// outgoing queue is full). The sending node does not hear its own message.
    fn send(&self, route: Route<'_>, message: Bytes) -> Result<(), BrokerError>;

    /// The engine's counters.
    fn stats(&self) -> EngineStats;

    /// Periodic housekeeping, called by the hub's sweeper at every heartbeat interval.
    fn tick(&self) {}
}

/// Checks at compile time that the seam's objects can be shared across tasks.
#[allow(dead_code)]
fn assert_send_sync() {
    fn is<T: Send + Sync + ?Sized>() {}
    is::<dyn Broker>();
    is::<dyn Node>();
    is::<Publication>();
    is::<SessionId>();
}
