//! The in-process engine: every topic's stream in this process's memory, for one node.
//!
//! The default engine and the fast path. A publish takes the stream's lock, gives the message
//! the next offset, keeps it in the bounded history and hands it to the node, all before it
//! returns: so every local subscriber gets a topic's messages in offset order, whoever
//! publishes them, and nothing is lost between the engine and the node. The history holds
//! the very frames the subscribers got, so a recovering client shares their encodings too.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use async_trait::async_trait;
use bytes::Bytes;
use dashmap::DashMap;

use crate::broker::{
    Broker, BrokerError, BrokerInfo, Channel, EngineStats, History, HistoryFrom, Message, Node,
    Position, Publication, Retention, Route,
};
use crate::node::random_hex;
use crate::session::lock;

/// The in-process engine (see the module docs). [`crate::HubBuilder::build`] makes one when no
/// other engine is given.
pub struct MemoryBroker {
    attached: OnceLock<(Arc<dyn Node>, Retention)>,
    streams: DashMap<Arc<str>, Arc<Stream>>,
    /// The epoch of this engine's streams: random per engine, so positions from another run of
    /// the service are recognised as foreign and answered with a `gap`. A stream created after
    /// `forgotten` streams (ones that had messages) were dropped for their TTL gets
    /// `<epoch>.<forgotten>`: a topic name used again never restarts its offsets in an epoch a
    /// client may have seen.
    epoch: Arc<str>,
    /// Streams with messages forgotten so far (see `epoch`). Incremented under the table's
    /// shard lock before the stream leaves the table, so a stream created afterwards sees it.
    forgotten: AtomicU64,
    start: tokio::time::Instant,
    /// Patterns the node holds: while there is one, every publication goes to the node.
    patterns_held: AtomicUsize,
}

struct Stream {
    name: Arc<str>,
    epoch: Arc<str>,
    state: Mutex<StreamState>,
}

struct StreamState {
    last_offset: u64,
    history: VecDeque<Publication>,
    /// Payload bytes held in `history`.
    history_bytes: usize,
    /// The node follows the topic (it has local subscribers): the stream is never forgotten.
    followed: bool,
    /// Removed from the table: whoever finds it dead looks the topic up again.
    dead: bool,
    /// When the stream last had a message or lost its node's interest (ms since the engine's
    /// start): unfollowed, it is forgotten [`Retention::topic_ttl`] after this.
    idle_since: u64,
}

impl Default for MemoryBroker {
    fn default() -> Self {
        MemoryBroker::new()
    }
}

impl std::fmt::Debug for MemoryBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBroker")
            .field("streams", &self.streams.len())
            .finish()
    }
}

impl MemoryBroker {
    /// A new engine with no streams.
    pub fn new() -> MemoryBroker {
        MemoryBroker {
            attached: OnceLock::new(),
            streams: DashMap::new(),
            epoch: Arc::from(random_hex().as_str()),
            forgotten: AtomicU64::new(0),
            patterns_held: AtomicUsize::new(0),
            start: tokio::time::Instant::now(),
        }
    }

    fn retention(&self) -> Retention {
        match self.attached.get() {
            Some((_, r)) => *r,
            None => Retention {
                max_messages: 0,
                max_bytes: 0,
                topic_ttl: None,
                max_topics: usize::MAX,
            },
        }
    }

    fn now_ms(&self) -> u64 {
        let elapsed = tokio::time::Instant::now().saturating_duration_since(self.start);
        u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
    }

    /// The stream of `name`, created if needed.
    fn stream(&self, name: &str) -> Result<Arc<Stream>, BrokerError> {
        if let Some(s) = self.streams.get(name) {
            return Ok(s.clone());
        }
        if self.streams.len() >= self.retention().max_topics {
            return Err(BrokerError::TooManyTopics);
        }
        Ok(self
            .streams
            .entry(Arc::from(name))
            .or_insert_with(|| {
                let epoch = match self.forgotten.load(Ordering::Acquire) {
                    0 => self.epoch.clone(),
                    n => Arc::from(format!("{}.{n}", self.epoch).as_str()),
                };
                Arc::new(Stream {
                    name: Arc::from(name),
                    epoch,
                    state: Mutex::new(StreamState {
                        last_offset: 0,
                        history: VecDeque::new(),
                        history_bytes: 0,
                        followed: false,
                        dead: false,
                        idle_since: self.now_ms(),
                    }),
                })
            })
            .clone())
    }

    /// Forgets the streams nobody follows whose TTL has passed since their last message.
    fn forget_idle(&self) {
        let Some(ttl) = self.retention().topic_ttl else {
            return;
        };
        let ttl = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        let now = self.now_ms();
        let expired = |st: &StreamState| !st.followed && now.saturating_sub(st.idle_since) > ttl;
        // Collect first: removing while iterating the table would deadlock on its shard.
        let idle: Vec<Arc<str>> = self
            .streams
            .iter()
            .filter(|e| expired(&lock(&e.value().state)))
            .map(|e| e.key().clone())
            .collect();
        for name in idle {
            self.streams.remove_if(&name, |_, s| {
                let mut st = lock(&s.state);
                // Checked again: a subscriber or a message may have come since.
                if !expired(&st) {
                    return false;
                }
                st.dead = true;
                if st.last_offset > 0 {
                    self.forgotten.fetch_add(1, Ordering::AcqRel);
                }
                true
            });
        }
    }

    /// Forgets a stream that never had a message and nobody follows: it holds no position
    /// worth keeping (re-created, it starts again at offset 0 in the same epoch, which is
    /// exactly what its past readers saw).
    fn forget_if_empty(&self, name: &str) {
        self.streams.remove_if(name, |_, s| {
            let mut st = lock(&s.state);
            let idle = !st.followed && st.last_offset == 0;
            if idle {
                st.dead = true;
            }
            idle
        });
    }

    fn publish_now(&self, topic: &str, message: Message) -> Result<Position, BrokerError> {
        let retention = self.retention();
        let mut message = Some(message);
        loop {
            let s = self.stream(topic)?;
            let mut st = lock(&s.state);
            if st.dead {
                continue;
            }
            st.last_offset += 1;
            let offset = st.last_offset;
            if !st.followed {
                // Only a stream nobody follows can be forgotten: its clock starts now.
                st.idle_since = self.now_ms();
            }
            let position = Position {
                epoch: s.epoch.clone(),
                offset,
            };
            let Some(message) = message.take() else {
                // Taken only once: the loop goes round again only before it is.
                return Err(BrokerError::Engine("a message published twice".to_owned()));
            };
            let p = Publication::of(s.name.clone(), position.clone(), message);
            if retention.max_messages > 0 {
                st.history_bytes += p.data().as_bytes().len();
                st.history.push_back(p.clone());
                // Oldest first, until both bounds hold: the history stays a contiguous suffix
                // of the stream, which is what recovery relies on.
                while st.history.len() > retention.max_messages
                    || st.history_bytes > retention.max_bytes
                {
                    match st.history.pop_front() {
                        Some(old) => st.history_bytes -= old.data().as_bytes().len(),
                        None => break,
                    }
                }
            }
            // Delivered under the stream's lock: every local subscriber gets the topic's
            // messages in offset order, whoever publishes them. A delivery never waits.
            // With a pattern held, every topic's messages go to the node, which matches them.
            if st.followed || self.patterns_held.load(Ordering::Acquire) > 0 {
                if let Some((node, _)) = self.attached.get() {
                    node.deliver(p);
                }
            }
            return Ok(position);
        }
    }

    fn history_now(&self, topic: &str, from: HistoryFrom) -> Result<History, BrokerError> {
        loop {
            let s = self.stream(topic)?;
            let st = lock(&s.state);
            if st.dead {
                continue;
            }
            let top = Position {
                epoch: s.epoch.clone(),
                offset: st.last_offset,
            };
            let publications = match from {
                HistoryFrom::Top => Vec::new(),
                HistoryFrom::Last(n) => {
                    let skip = st.history.len().saturating_sub(n);
                    st.history.iter().skip(skip).cloned().collect()
                }
                HistoryFrom::After(ref p) if p.epoch == top.epoch => {
                    let held = st.history.len() as u64;
                    let first_held = st.last_offset + 1 - held;
                    let skip = usize::try_from((p.offset + 1).saturating_sub(first_held))
                        .unwrap_or(usize::MAX);
                    st.history.iter().skip(skip).cloned().collect()
                }
                HistoryFrom::After(_) => Vec::new(),
            };
            return Ok(History { top, publications });
        }
    }

    fn follow(&self, topic: &str, on: bool) -> Result<(), BrokerError> {
        loop {
            let s = self.stream(topic)?;
            let mut st = lock(&s.state);
            if st.dead {
                continue;
            }
            st.followed = on;
            if !on {
                st.idle_since = self.now_ms();
                drop(st);
                self.forget_if_empty(topic);
            }
            return Ok(());
        }
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    fn info(&self) -> BrokerInfo {
        BrokerInfo {
            name: "memory",
            local: true,
        }
    }

    fn attach(&self, node: Arc<dyn Node>, retention: Retention) {
        if self.attached.set((node, retention)).is_err() {
            tracing::warn!("a MemoryBroker serves one hub: attached again, ignored");
        }
    }

    async fn publish(&self, topic: &str, message: Message) -> Result<Position, BrokerError> {
        self.publish_now(topic, message)
    }

    async fn subscribe(&self, channel: Channel<'_>) -> Result<(), BrokerError> {
        match channel {
            Channel::Topic(t) => self.follow(t, true),
            Channel::Room(_) => Ok(()),
            Channel::Pattern(_) => {
                self.patterns_held.fetch_add(1, Ordering::AcqRel);
                Ok(())
            }
        }
    }

    async fn unsubscribe(&self, channel: Channel<'_>) -> Result<(), BrokerError> {
        match channel {
            Channel::Topic(t) => {
                if self.streams.contains_key(t) {
                    self.follow(t, false)?;
                }
                Ok(())
            }
            Channel::Room(_) => Ok(()),
            Channel::Pattern(_) => {
                // Never below zero: an unsubscribe without its subscribe does nothing.
                let _ = self
                    .patterns_held
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
                Ok(())
            }
        }
    }

    async fn history(&self, topic: &str, from: HistoryFrom) -> Result<History, BrokerError> {
        self.history_now(topic, from)
    }

    async fn tops(&self, topics: &[Arc<str>]) -> Result<Vec<Option<Position>>, BrokerError> {
        Ok(topics
            .iter()
            .map(|t| {
                self.streams.get(&**t).map(|s| Position {
                    epoch: s.epoch.clone(),
                    offset: lock(&s.state).last_offset,
                })
            })
            .collect())
    }

    fn send(&self, _route: Route<'_>, _message: Bytes) -> Result<(), BrokerError> {
        // One node: nobody else to tell.
        Ok(())
    }

    fn stats(&self) -> EngineStats {
        EngineStats {
            topics: self.streams.len() as u64,
            ..EngineStats::named("memory")
        }
    }

    fn tick(&self) {
        self.forget_idle();
    }
}
