//! Hub configuration and its builder.

use std::sync::Arc;
use std::time::Duration;

use crate::hooks::{AllowSubscribe, EventHandler, Hooks};

/// What the hub does when a session's outgoing queue is full (the client reads too slowly).
///
/// Either way, other sessions never wait for the slow one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum SlowConsumerPolicy {
    /// Close the session with reason `slow_consumer` (WebSocket close 1008). The default: a
    /// client that resumes from its last position loses nothing.
    #[default]
    Disconnect,
    /// Drop frames for that session only; when it catches up, tell it exactly what it missed
    /// (`gap` with `reason: GapReason::Lagged` per topic, `dropped` for events without positions).
    Drop,
}

/// The hub's settings. Built with [`crate::HubBuilder`]; every limit a client can push against
/// is here.
#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) heartbeat_interval: Duration,
    pub(crate) heartbeat_timeout: Duration,
    pub(crate) queue_capacity: usize,
    /// The queue's bound in bytes (what its frames weigh).
    pub(crate) queue_bytes: usize,
    /// The longest a publish waits for congested queues to drain.
    pub(crate) pace_max: Duration,
    /// Over how long [`crate::Hub::shutdown`] spreads the ends of the sessions.
    pub(crate) shutdown_drain: Duration,
    /// The reconnection delays a shutdown hints at are spread over `0..reconnect_spread`.
    pub(crate) reconnect_spread: Duration,
    pub(crate) max_frame_size: usize,
    pub(crate) history_len: usize,
    pub(crate) history_bytes: usize,
    pub(crate) slow_consumer: SlowConsumerPolicy,
    pub(crate) max_name_len: usize,
    pub(crate) max_subscriptions: usize,
    /// Patterns (`psubscribe`) per session.
    pub(crate) max_patterns: usize,
    pub(crate) max_rooms_per_session: usize,
    pub(crate) max_topics: usize,
    /// How long a topic without subscribers is kept after its last message (ms).
    pub(crate) topic_ttl_ms: u64,
    /// Which `join`/`leave` events a room's members get (none by default).
    pub(crate) room_presence: livehub_protocol::PresenceEvents,
    /// The most members a `presence` page holds (and its size when none is asked).
    pub(crate) presence_page_max: usize,
    pub(crate) allowed_origins: Option<Arc<[String]>>,
    pub(crate) max_connections: usize,
    pub(crate) max_connections_per_ip: Option<usize>,
    /// Proxies whose forwarding headers name the client (none by default).
    pub(crate) trusted_proxies: Arc<[ipnet::IpNet]>,
    /// Which header a trusted proxy names the client in.
    pub(crate) forwarded_header: ForwardedHeader,
    pub(crate) rate_limit: Option<RateLimit>,
    /// With a shared engine: how often every followed stream is checked for silent loss.
    pub(crate) engine_check_interval: Duration,
    /// Topics whose subscriptions conflate unless they say otherwise.
    pub(crate) conflate: Option<TopicFilter>,
    pub(crate) hooks: Arc<dyn Hooks>,
    pub(crate) handlers: Arc<std::collections::HashMap<String, Arc<dyn EventHandler>>>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            heartbeat_interval: Duration::from_secs(25),
            heartbeat_timeout: Duration::from_secs(60),
            queue_capacity: 1024,
            queue_bytes: 1024 * 1024,
            pace_max: Duration::from_millis(500),
            shutdown_drain: Duration::ZERO,
            reconnect_spread: Duration::from_secs(5),
            max_frame_size: 64 * 1024,
            history_len: 100,
            history_bytes: 1024 * 1024,
            slow_consumer: SlowConsumerPolicy::Disconnect,
            max_name_len: 128,
            max_subscriptions: 256,
            max_patterns: 16,
            max_rooms_per_session: 256,
            max_topics: 100_000,
            topic_ttl_ms: 5 * 60 * 1000,
            room_presence: livehub_protocol::PresenceEvents::None,
            presence_page_max: 1000,
            allowed_origins: None,
            max_connections: 100_000,
            max_connections_per_ip: None,
            trusted_proxies: Arc::new([]),
            forwarded_header: ForwardedHeader::XForwardedFor,
            rate_limit: None,
            engine_check_interval: Duration::from_secs(10),
            conflate: None,
            hooks: Arc::new(AllowSubscribe),
            handlers: Arc::default(),
        }
    }
}

/// The header in which trusted proxies name the client ([`crate::HubBuilder::forwarded_header`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ForwardedHeader {
    /// `X-Forwarded-For`, which nginx, Caddy, HAProxy and most load balancers append to.
    #[default]
    XForwardedFor,
    /// `Forwarded` (RFC 7239), for proxies configured to write it.
    Forwarded,
}

/// Which topics a setting applies to.
pub(crate) type TopicFilter = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// A per-session token bucket on frames from the client ([`crate::HubBuilder::rate_limit`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct RateLimit {
    pub(crate) per_second: f64,
    pub(crate) burst: f64,
}
