//! [`HubBuilder`]: the hub's settings, and the engine it runs on.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::broker::{Broker, Retention};
use crate::config::{Config, RateLimit, SlowConsumerPolicy};
use crate::hooks::{EventHandler, Hooks};
use crate::hub::Hub;
use crate::memory::MemoryBroker;
use crate::node::{Inner, NodeLink};
use crate::presence::{PresenceEvents, PresenceStore};

/// Builds a [`Hub`]. Every setting has a default suited to a public-facing service.
#[derive(Default)]
#[must_use]
pub struct HubBuilder {
    config: Config,
    handlers: HashMap<String, Arc<dyn EventHandler>>,
    broker: Option<Arc<dyn Broker>>,
    presence: Option<Arc<dyn PresenceStore>>,
}

impl HubBuilder {
    /// Heartbeat interval (pings sent) and timeout (a silent session is closed). Defaults 25 s
    /// and 60 s. A silent session is closed between `timeout` and `timeout` + 1 s (or + the
    /// interval, if that is shorter than a second) after it was last heard from.
    pub fn heartbeat(mut self, interval: Duration, timeout: Duration) -> Self {
        self.config.heartbeat_interval = interval.max(Duration::from_millis(1));
        self.config.heartbeat_timeout = timeout;
        self
    }

    /// Frames a session may have queued before the slow-consumer policy applies. Default 1024.
    pub fn queue_capacity(mut self, frames: usize) -> Self {
        self.config.queue_capacity = frames.max(1);
        self
    }

    /// Bytes a session may have queued (what its frames weigh: payloads and names) before the
    /// slow-consumer policy applies, besides [`HubBuilder::queue_capacity`]'s frames. A single
    /// frame larger than this still goes through an empty queue. Default 1 MiB.
    pub fn queue_bytes(mut self, bytes: usize) -> Self {
        self.config.queue_bytes = bytes.max(1);
        self
    }

    /// The longest one publish waits while fan-out is congested: when more than one in
    /// sixteen sessions have queues past half their bound (and at least two), or when a
    /// session that fell behind less than a second ago has a queue three quarters full. The
    /// publish then waits for them to drain before it returns: a burst slows its publisher
    /// (the host's `publish` waits; a publishing client's next frame is read later) instead of
    /// overflowing the queues of subscribers that keep up, or that fell behind for a moment.
    /// A session still behind after a second is stalled and no longer holds publishers back:
    /// the slow-consumer policy deals with it. Default 500 ms; `Duration::ZERO` turns pacing
    /// off.
    pub fn pacing(mut self, max_wait: Duration) -> Self {
        self.config.pace_max = max_wait;
        self
    }

    /// Over how long [`crate::Hub::shutdown`] ends the sessions: in batches spread evenly over
    /// `window` (one batch every 50 ms at most), in random order, so that the clients of a node
    /// that goes away do not all land on the others in the same instant (as Phoenix's drainer
    /// does). The `grace` given to `shutdown` starts after the last batch. Default
    /// `Duration::ZERO`: every session ends at once (clients still spread their returns by the
    /// [`HubBuilder::reconnect_spread`] hint).
    pub fn shutdown_drain(mut self, window: Duration) -> Self {
        self.config.shutdown_drain = window;
        self
    }

    /// The spread of the reconnection delays a shutdown hints at: every session ended by
    /// [`crate::Hub::shutdown`] is told to wait a random delay in `0..spread` before it comes
    /// back (WebSocket: close reason `shutdown;retry_ms=N`; SSE and poll: `retry_ms` in the
    /// `close` frame, and an SSE `retry:` line that a browser's `EventSource` obeys). Default
    /// 5 s; `Duration::ZERO` sends no hint.
    pub fn reconnect_spread(mut self, spread: Duration) -> Self {
        self.config.reconnect_spread = spread;
        self
    }

    /// Topics whose subscriptions conflate by default (a subscribe's `conflate` says otherwise
    /// for itself): when such a subscriber falls behind, its queue keeps only the newest
    /// message per key, and a `since` or `last` recovers only the newest per key. For topics
    /// of latest values: scores, dashboards, prices. Default: none.
    ///
    /// ```
    /// let hub = livehub_core::Hub::builder()
    ///     .conflate_topics(|topic| topic.starts_with("scores/"))
    ///     .build();
    /// # drop(hub);
    /// ```
    pub fn conflate_topics(mut self, which: impl Fn(&str) -> bool + Send + Sync + 'static) -> Self {
        self.config.conflate = Some(Arc::new(which));
        self
    }

    /// Largest frame (and message) a client may send, in bytes. Default 64 KiB.
    pub fn max_frame_size(mut self, bytes: usize) -> Self {
        self.config.max_frame_size = bytes;
        self
    }

    /// Messages kept per topic for resuming clients. Default 100; 0 keeps none.
    pub fn history_len(mut self, messages: usize) -> Self {
        self.config.history_len = messages;
        self
    }

    /// Payload bytes kept per topic for resuming clients (the oldest messages go first when
    /// either this or [`HubBuilder::history_len`] is exceeded). Default 1 MiB.
    pub fn history_bytes(mut self, bytes: usize) -> Self {
        self.config.history_bytes = bytes;
        self
    }

    /// What to do with a session whose queue is full. Default [`SlowConsumerPolicy::Disconnect`].
    pub fn slow_consumer(mut self, policy: SlowConsumerPolicy) -> Self {
        self.config.slow_consumer = policy;
        self
    }

    /// Longest topic, room or event name in bytes. Default 128.
    pub fn max_name_len(mut self, bytes: usize) -> Self {
        self.config.max_name_len = bytes;
        self
    }

    /// Topics one session may follow at once. Default 256.
    pub fn max_subscriptions(mut self, n: usize) -> Self {
        self.config.max_subscriptions = n;
        self
    }

    /// Patterns a session may hold (`psubscribe`, e.g. `scores/*`). Default 16. The topics a
    /// session's patterns bring count against [`HubBuilder::max_subscriptions`].
    pub fn max_patterns(mut self, n: usize) -> Self {
        self.config.max_patterns = n;
        self
    }

    /// Rooms one session may be in at once. Default 256.
    pub fn max_rooms_per_session(mut self, n: usize) -> Self {
        self.config.max_rooms_per_session = n;
        self
    }

    /// Topics the hub holds at once (a publish or subscribe that would create one more is
    /// refused with `too_many_topics`). A topic lives while it has subscribers, and for
    /// [`HubBuilder::topic_ttl`] after its last message once it has none. Default 100,000.
    pub fn max_topics(mut self, n: usize) -> Self {
        self.config.max_topics = n;
        self
    }

    /// How long a topic that has no subscribers is kept, with its position and history, after
    /// its last message (or after its last subscriber left, whichever is later). Default 5
    /// minutes; `Duration::MAX` keeps every topic for the hub's life.
    ///
    /// A forgotten topic frees its history. If it is used again, its stream starts over in a
    /// new epoch (offsets from 1 again), so a client that resumes from a position of the old
    /// stream gets a `gap` with reason `epoch` (nothing recovered), never another stream's
    /// messages. Within the TTL a returning client recovers exactly what it missed (as far as
    /// the history holds). Checked at every heartbeat interval, so a topic may outlive its TTL
    /// by up to one interval.
    pub fn topic_ttl(mut self, ttl: Duration) -> Self {
        self.config.topic_ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        self
    }

    /// Send `join`/`leave` events to a room's members when members come and go. Default off.
    /// The same as [`HubBuilder::room_presence`] with [`PresenceEvents::Sessions`] (on) or
    /// [`PresenceEvents::None`] (off).
    pub fn room_presence_events(mut self, on: bool) -> Self {
        self.config.room_presence = PresenceEvents::from(on);
        self
    }

    /// Which `join`/`leave` events a room's members get: none (the default), one per session
    /// ([`PresenceEvents::Sessions`]), or one per user ([`PresenceEvents::Users`]: when a
    /// user's first session, on any node, joins the room, and when its last one leaves).
    pub fn room_presence(mut self, events: PresenceEvents) -> Self {
        self.config.room_presence = events;
        self
    }

    /// The most members one `presence` page holds, and its size when the client asks none
    /// (default 1,000, at least 1). A client's `limit` over it is refused with `bad_limit`.
    /// A page is one reply frame: at about 100 bytes a member, the default page is ~100 KB,
    /// well within a session's queue (1 MiB by default).
    pub fn presence_page_max(mut self, members: usize) -> Self {
        self.config.presence_page_max = members.max(1);
        self
    }

    /// Browser origins allowed to connect (e.g. `https://example.com`). A request with an
    /// `Origin` header outside the list is refused with 403 `origin_not_allowed`; requests
    /// without `Origin` (non-browser clients) are not affected. Default: any origin.
    pub fn allowed_origins<I, S>(mut self, origins: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.config.allowed_origins = Some(origins.into_iter().map(Into::into).collect());
        self
    }

    /// Sessions the hub holds at once; more are refused with 503 `too_many_connections`.
    /// Default 100,000.
    pub fn max_connections(mut self, n: usize) -> Self {
        self.config.max_connections = n;
        self
    }

    /// Sessions one client address may hold at once; more are refused with 503
    /// `too_many_connections`. Default: no per-address limit (clients behind one NAT share an
    /// address).
    ///
    /// The limit needs the client's address: a connection whose transport cannot tell it is
    /// refused with 503 `peer_unknown` (and logged once as an error), never let in uncounted.
    /// The hub's transports find it under bare hyper (`with_peer`), under axum served with
    /// `into_make_service_with_connect_info::<SocketAddr>()`, and as a `SocketAddr` request
    /// extension; behind a proxy, see [`HubBuilder::trusted_proxies`].
    pub fn max_connections_per_ip(mut self, n: usize) -> Self {
        self.config.max_connections_per_ip = Some(n);
        self
    }

    /// Proxies (exact addresses as `/32` or `/128`, or networks, e.g. `10.0.0.0/8`) whose
    /// forwarding headers are believed: for a connection from one of them, the client's
    /// address (what the hooks see as the peer, and what [`HubBuilder::max_connections_per_ip`]
    /// counts) is read from `X-Forwarded-For` (or `Forwarded`: [`HubBuilder::forwarded_header`]):
    /// the nearest hop that is not a trusted proxy. From any other peer those headers are ignored, so a client cannot claim
    /// another address. Default: none (the connection's own peer is the client).
    ///
    /// ```
    /// use livehub_core::{Hub, IpNet};
    /// let proxies: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap(), "192.0.2.7/32".parse().unwrap()];
    /// let hub = Hub::builder().max_connections_per_ip(10).trusted_proxies(proxies).build();
    /// assert!(hub.is_trusted_proxy("10.1.2.3".parse().unwrap()));
    /// assert!(!hub.is_trusted_proxy("192.0.2.8".parse().unwrap()));
    /// ```
    pub fn trusted_proxies<I>(mut self, proxies: I) -> Self
    where
        I: IntoIterator<Item = ipnet::IpNet>,
    {
        self.config.trusted_proxies = proxies.into_iter().collect();
        self
    }

    /// The header in which the trusted proxies name the client: `X-Forwarded-For` (the
    /// default: what nginx, Caddy, HAProxy and most load balancers append to) or `Forwarded`
    /// (RFC 7239). Only that one is read: a proxy passes the other one on as the client sent
    /// it, so believing it would let a client claim any address.
    pub fn forwarded_header(mut self, header: crate::ForwardedHeader) -> Self {
        self.config.forwarded_header = header;
        self
    }

    /// A token bucket on the frames each session sends: `per_second` refill, `burst` capacity.
    /// A frame over the limit is answered with `rate_limited` and not run; a client that sends
    /// another whole burst while limited is disconnected (reason `rate_limited`, close 1008).
    /// Default: no limit.
    pub fn rate_limit(mut self, per_second: f64, burst: u32) -> Self {
        self.config.rate_limit = Some(RateLimit {
            per_second: per_second.max(0.0),
            burst: f64::from(burst.max(1)),
        });
        self
    }

    /// The host's hooks (authentication, authorization, connect/disconnect).
    pub fn hooks(mut self, hooks: impl Hooks) -> Self {
        self.config.hooks = Arc::new(hooks);
        self
    }

    /// Routes the custom client event `name` to `handler`; what it returns is the `reply`.
    ///
    /// ```
    /// use livehub_core::{Hub, Payload};
    /// let hub = Hub::builder()
    ///     .on_event("chat-message", |ctx: livehub_core::EventContext, data: Payload| async move {
    ///         let msg: serde_json::Value = data.decode()?;
    ///         let room = msg["room"].as_str().unwrap_or("lobby").to_owned();
    ///         ctx.hub().to(room).except(ctx.session_id()).emit("new-message", &msg)?;
    ///         Ok(Some(Payload::from_value(&"delivered")?))
    ///     })
    ///     .build();
    /// # drop(hub);
    /// ```
    pub fn on_event(mut self, name: impl Into<String>, handler: impl EventHandler) -> Self {
        self.handlers.insert(name.into(), Arc::new(handler));
        self
    }

    /// The engine that owns the topics' streams and connects this node to the others
    /// (`livehub_redis::RedisEngine` for several nodes). Default: a new in-process
    /// [`MemoryBroker`], for one node.
    ///
    /// The hub's history settings ([`HubBuilder::history_len`], [`HubBuilder::history_bytes`],
    /// [`HubBuilder::topic_ttl`]) are handed to the engine, which keeps the history.
    pub fn broker(mut self, broker: Arc<dyn Broker>) -> Self {
        self.broker = Some(broker);
        self
    }

    /// Where presence is shared between nodes (with a shared engine, usually the same object
    /// as [`HubBuilder::broker`]). Default: none, the node's own tables are the truth, which is
    /// right for one node only.
    pub fn presence_store(mut self, store: Arc<dyn PresenceStore>) -> Self {
        self.presence = Some(store);
        self
    }

    /// How often a node with a shared engine compares what it delivered with every followed
    /// stream's top, to find loss no later message would reveal (it also does so after every
    /// reconnect to the engine). Default 10 s.
    pub fn engine_check_interval(mut self, every: Duration) -> Self {
        self.config.engine_check_interval = every.max(Duration::from_millis(10));
        self
    }

    /// Builds the hub. Needs no runtime; background work (heartbeats, topic TTLs) starts with
    /// the first session, or the first publish made inside a tokio runtime.
    pub fn build(mut self) -> Hub {
        self.config.handlers = Arc::new(self.handlers);
        let broker = self.broker.unwrap_or_else(|| Arc::new(MemoryBroker::new()));
        let retention = Retention {
            max_messages: self.config.history_len,
            max_bytes: self.config.history_bytes,
            topic_ttl: (self.config.topic_ttl_ms != u64::MAX)
                .then(|| Duration::from_millis(self.config.topic_ttl_ms)),
            max_topics: self.config.max_topics,
        };
        let config = self.config;
        let presence = self.presence;
        let inner = Arc::new_cyclic(|me| Inner::new(config, broker.clone(), presence, me.clone()));
        broker.attach(
            Arc::new(NodeLink {
                id: inner.node,
                inner: Arc::downgrade(&inner),
            }),
            retention,
        );
        Hub { inner }
    }
}
