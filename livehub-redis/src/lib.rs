//! The hub's engine for several nodes, over Redis: topic streams with positions and bounded
//! history, routes between nodes (rooms, direct sends, control messages) and presence, behind
//! livehub-core's [`Broker`] and [`PresenceStore`] seams.
//!
//! One type, [`RedisEngine`], implements both; a host builds it once and hands it to the hub
//! as broker and as presence store. Every node of one hub points at the same Redis with the
//! same [prefix](RedisEngineBuilder::prefix).
//!
//! # Example
//!
//! Publish on one node, receive on the other (this runs when a Redis is reachable at
//! `HUB_REDIS_URL` or `redis://127.0.0.1:6379`, and otherwise says it skipped).
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use livehub_core::broker::{
//!     Broker, Channel, EngineEvent, Message, Node, NodeId, Publication, Retention,
//! };
//! use livehub_core::Payload;
//! use livehub_redis::RedisEngine;
//! use tokio::sync::mpsc;
//!
//! /// A node that only collects what it is handed (livehub-core's node does much more).
//! struct Collect(NodeId, mpsc::UnboundedSender<Publication>);
//!
//! impl Node for Collect {
//!     fn id(&self) -> NodeId { self.0 }
//!     fn deliver(&self, p: Publication) { let _ = self.1.send(p); }
//!     fn control(&self, _message: &[u8]) {}
//!     fn engine_event(&self, _event: EngineEvent) {}
//!     fn undecodable(&self, _topic: Option<&str>, _error: &str) {}
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let url = std::env::var("HUB_REDIS_URL").unwrap_or("redis://127.0.0.1:6379".into());
//! // A prefix of its own, so that this example shares a Redis with anything.
//! let prefix = format!("hub-doc-{}", std::process::id());
//! let build = || RedisEngine::builder(&url).prefix(&prefix).build();
//! let (a, b) = match (build().await, build().await) {
//!     (Ok(a), Ok(b)) => (a, b),
//!     (Err(e), _) | (_, Err(e)) => {
//! #       if std::env::var("HUB_REQUIRE_REDIS").as_deref() == Ok("1") { panic!("{e}") }
//!         println!("skipped: no redis at {url}: {e}");
//!         return;
//!     }
//! };
//! // Keep the example's streams for ten seconds only.
//! let mut retention = Retention::default();
//! retention.topic_ttl = Some(Duration::from_secs(10));
//! let (tx, mut rx) = mpsc::unbounded_channel();
//! a.attach(Arc::new(Collect(NodeId(1), tx)), retention);
//! b.attach(Arc::new(Collect(NodeId(2), mpsc::unbounded_channel().0)), retention);
//!
//! a.subscribe(Channel::Topic("scores/all")).await.unwrap();
//! let data = Payload::from_value(&serde_json::json!({"home": 2})).unwrap();
//! let position = b.publish("scores/all", Message::new(data)).await.unwrap();
//!
//! let got = rx.recv().await.unwrap();
//! assert_eq!(got.position(), position);
//! assert_eq!(got.offset(), 1);
//! # }
//! ```
//!
//! # Why the `redis` crate
//!
//! `redis` (redis-rs) is the maintained Redis client of the Rust ecosystem, with tokio support,
//! multiplexed connections (many concurrent commands on one socket, pipelined), Lua scripts
//! by hash with `NOSCRIPT` handled, and RESP3 push messages delivered to a callback that must
//! not block, which is what a bounded inbound queue needs. Its `ConnectionManager` is not
//! used: a command issued while it reconnects waits for the reconnect, where this engine must
//! fail at once, and it reports no connection events. This crate keeps the two connections
//! itself (see below).
//!
//! # Connections
//!
//! Two RESP3 multiplexed connections: one for commands and scripts, one for pub/sub. Both are
//! checked with a `PING` every [ping interval](RedisEngineBuilder::ping_interval) and replaced
//! together when one fails. Redis 6.2 or later is needed (RESP3, `XTRIM MINID`, exclusive
//! `XRANGE`).
//!
//! # What happens when Redis goes away
//!
//! - The loss is found at once when the connection closes (Redis stopped or restarted), or
//!   within a ping interval plus the [command timeout](RedisEngineBuilder::command_timeout)
//!   when Redis stops answering. The node gets [`EngineEvent::Disconnected`].
//! - From then on every operation fails at once with [`BrokerError::Unavailable`]
//!   (`engine_unavailable`): publish, history, tops, presence, and [`Broker::send`]. An
//!   operation in flight fails within the command timeout. Nothing is buffered meanwhile.
//! - Local sessions stay open. They simply get nothing new while Redis is away.
//! - The engine reconnects with exponential backoff and full jitter (100 ms doubling up to
//!   5 s by default), loads its scripts, resubscribes every channel the node had, and only
//!   then reports [`EngineEvent::Reconnected`]. The node then compares what it delivered with
//!   each stream's top ([`Broker::tops`]) and recovers from history, or sends a `gap`. A Redis
//!   that restarted empty starts new epochs: positions from before get a `gap` (`epoch`).
//! - Errors that Redis answers become [`BrokerError::Engine`] (`engine_error`) with Redis's
//!   message: `OOM` (maxmemory reached), `READONLY` (a replica after a failover: the engine
//!   also reconnects, as the address may now lead to the new primary), and so on. `NOSCRIPT`
//!   (scripts lost) is handled: they are loaded again and the call repeated.
//! - A channel message that does not decode is counted ([`EngineStats::undecodable`]),
//!   logged and reported to [`Node::undecodable`], never a panic.
//! - Received messages go through one bounded queue
//!   ([inbound_queue](RedisEngineBuilder::inbound_queue)); when it is full they are dropped
//!   and counted ([`EngineStats::dropped_in`]), and the node repairs the holes.
//!
//! # Retention
//!
//! Set by [`Broker::attach`] from the hub's settings, for every topic: at most
//! `max_messages` messages and `max_bytes` payload bytes (oldest first until both hold; a
//! single message larger than `max_bytes` is not kept), and `topic_ttl` as the keys' ttl,
//! refreshed by every publish and, for every topic this node subscribes to, by
//! [`Broker::tick`]: a topic with subscribers never expires (so `topic_ttl` must be longer
//! than the interval of the hub's ticks, its heartbeat interval). A topic that expired (or that
//! Redis lost) starts a new epoch at its next publish or read, with offsets from 1.
//! `max_topics` is not enforced (Redis's memory is the bound). Offsets stay exact up to
//! 10^14 per topic.
//!
//! # Presence
//!
//! Every member is an entry with an expiry on the Redis clock, written by its node's
//! `add` and extended by its `refresh` (every [refresh
//! interval](RedisEngineBuilder::presence_refresh), 10 s by default, with a
//! [ttl](RedisEngineBuilder::presence_ttl) of 30 s). A member whose node died without a
//! goodbye is removed and returned by the first [`PresenceStore::expire`] after its expiry,
//! by whichever node asks first (one script per scope: never to two callers). With every
//! node calling `expire` each refresh interval, it is gone at most ttl + interval after its
//! last refresh: **40 s by default** ([`RedisEngine::presence_bound`]). A reply lost to a
//! timeout after Redis removed members loses their `leave` events (the removal is not
//! repeated).
//!
//! Each scope also keeps its members' session ids in lexical order (`pl`, for pages) and the
//! sessions of each user (`pu`), written by the same scripts as the members, so that a count
//! is `HLEN` twice (O(1)), a page one `ZRANGEBYLEX` and `HMGET` of at most its size, and a
//! user's first `add` and last removal (or expiry), whichever nodes they come from, are
//! known at once: the user's `join` and `leave`. A member is counted under its user while it
//! is in `pl`; members written by a version without `pl` are counted from their next
//! refresh.
//!
//! # Patterns
//!
//! A hub pattern (`scores/*`, `scores/**`) is one `PSUBSCRIBE` per glob on the pub/sub
//! connection (resubscribed after a reconnect like every channel): the topics' channel names
//! with each wildcard as Redis's `*`. Redis's `*` crosses `/`, so the glob hears a superset and
//! the node keeps only what the pattern matches; patterns with the same glob share it. This was
//! chosen over matching on every node behind one firehose channel, which would carry every
//! publication to every node.
//!
//! # Key layout
//!
//! `P` is the prefix (default `hub`). Every key of one topic or room carries the same Redis
//! Cluster hash tag (the part in braces), so every script touches one slot, and the channels
//! carry it too (ready for sharded pub/sub). The tests use one Redis, not a cluster.
//!
//! | key or channel | type | what |
//! |---|---|---|
//! | `{P:t:<topic>}:meta` | hash | `e` epoch, `o` last offset, `f` first offset in the stream, `t` payload bytes appended in this epoch |
//! | `{P:t:<topic>}:stream` | stream | history: entry id `<offset>-<t before it>`, fields `c` codec (`j`/`m`), `d` data, and for a keyed message `k` key, `x` `1` if it deletes it |
//! | `{P:t:<topic>}:ch` | channel | the topic's publications and control messages |
//! | `{P:t:<topic>}:pm` | hash | topic presence: session id -> member JSON |
//! | `{P:t:<topic>}:px` | sorted set | topic presence: session id -> expiry (ms, Redis clock) |
//! | `{P:t:<topic>}:pl` | sorted set | topic presence: session ids, every score 0 (pages, by `ZRANGEBYLEX`) |
//! | `{P:t:<topic>}:pu` | hash | topic presence: user key (`u:<user>`, `s:<session>` if anonymous) -> its sessions |
//! | `{P:r:<room>}:ch` | channel | control messages to the room |
//! | `{P:r:<room>}:pm`, `:px`, `:pl`, `:pu` | hash, sorted sets, hash | room presence, as for topics |
//! | `{P:n:<node id>}:ch` | channel | control messages to one node (`<node id>`: 8 hex digits) |
//! | `{P}:all` | channel | control messages to every node |
//! | `{P}:presence` | sorted set | scopes with presence (`t:<topic>`, `r:<room>`) -> next expiry, a lower bound |
//!
//! An entry's id carries the payload bytes appended before it, so the bytes a stream holds from
//! any entry on are `t` minus that number: the publish script checks the byte bound by reading
//! one entry, not every entry it drops.
//!
//! Channel messages (format 1): a version byte `0x01`, then a kind byte. A publication
//! (`0x01`) carries a codec byte, the epoch's length (one byte), the epoch, the offset (8
//! bytes, big-endian) and the data; a keyed one (`0x03`) also the key (its length in 2
//! bytes) and a delete flag. A batch (`0x04`) carries up to 64 publications of one topic at
//! consecutive offsets: the epoch, the first offset, the count (2 bytes), then each message's
//! codec, flags, key and data (its length in 4 bytes). A control message (`0x02`) carries the
//! sending node's id (4 bytes, big-endian) and the message. A node drops its own control
//! messages.
//!
//! # Publishing
//!
//! A node's publishes wait in one bounded queue (16,384; beyond, a publish fails at once with
//! `engine_unavailable`) and go to Redis as pipelines, up to two in flight on the command
//! connection, in the order they were made. The publishes of one topic that are next to each
//! other in a pipeline (up to 64, and 64 KiB of payloads) are one script call and one channel
//! message: Redis pays a topic's bookkeeping (epoch, offset, trim, ttl) once for them, and
//! every other node decodes one message for them. Each publish still gets its own position.

#![warn(missing_docs)]

mod builder;
mod engine;
mod inbound;
mod keys;
mod link;
mod presence;
mod scripts;
mod wire;

pub use builder::{BuildError, RedisEngineBuilder};
pub use engine::RedisEngine;

#[cfg(doc)]
use livehub_core::broker::{Broker, BrokerError, EngineEvent, EngineStats, Node};
#[cfg(doc)]
use livehub_core::presence::PresenceStore;
