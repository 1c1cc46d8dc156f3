//! The engine's settings and its builder.

use std::time::Duration;

use crate::engine::RedisEngine;

/// The engine's settings (see [`RedisEngineBuilder`] for each one's meaning and default).
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) prefix: String,
    pub(crate) command_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) ping_interval: Duration,
    pub(crate) backoff_min: Duration,
    pub(crate) backoff_max: Duration,
    pub(crate) inbound_queue: usize,
    pub(crate) outbound_queue: usize,
    pub(crate) presence_ttl: Duration,
    pub(crate) presence_refresh: Duration,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            prefix: "hub".to_owned(),
            command_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(2),
            ping_interval: Duration::from_secs(1),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            inbound_queue: 16 * 1024,
            outbound_queue: 4 * 1024,
            presence_ttl: Duration::from_secs(30),
            presence_refresh: Duration::from_secs(10),
        }
    }
}

impl Settings {
    fn check(&self) -> Result<(), BuildError> {
        let bad = |what: &str| Err(BuildError::Setting(what.to_owned()));
        if self.prefix.is_empty() || self.prefix.contains(['{', '}']) {
            return bad("the key prefix must be non-empty, without `{` or `}`");
        }
        if self.command_timeout.is_zero() || self.connect_timeout.is_zero() {
            return bad("timeouts must be longer than zero");
        }
        if self.ping_interval.is_zero() {
            return bad("the ping interval must be longer than zero");
        }
        if self.backoff_min.is_zero() || self.backoff_max < self.backoff_min {
            return bad("the reconnect backoff needs 0 < min <= max");
        }
        if self.inbound_queue == 0 || self.outbound_queue == 0 {
            return bad("queues must hold at least one message");
        }
        if self.presence_refresh.is_zero() || self.presence_ttl <= self.presence_refresh {
            return bad("presence needs 0 < refresh interval < ttl");
        }
        Ok(())
    }
}

/// Why [`RedisEngineBuilder::build`] failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The Redis URL does not parse.
    #[error("invalid redis url: {0}")]
    Url(String),
    /// A setting is out of range (the message says which).
    #[error("invalid setting: {0}")]
    Setting(String),
    /// The first connection to Redis failed (unreachable, refused, authentication, or no
    /// RESP3 support: Redis 6.2 or later is needed).
    #[error("cannot connect to redis: {0}")]
    Connect(String),
}

/// Builds a [`RedisEngine`]: `RedisEngine::builder(url).prefix("hub").build().await?`.
///
/// The URL is a `redis://[user:password@]host[:port][/db]` URL (`rediss://` is not supported
/// by this build). The connections always speak RESP3, whatever the URL says.
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `build` is awaited"]
pub struct RedisEngineBuilder {
    pub(crate) url: String,
    pub(crate) settings: Settings,
}

impl RedisEngineBuilder {
    pub(crate) fn new(url: impl Into<String>) -> RedisEngineBuilder {
        RedisEngineBuilder {
            url: url.into(),
            settings: Settings::default(),
        }
    }

    /// The prefix of every key and channel (default `hub`). Hubs sharing one Redis with
    /// different prefixes do not see each other. No `{` or `}`.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.settings.prefix = prefix.into();
        self
    }

    /// How long any command may take before it fails with `engine_unavailable` (default 2 s).
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.settings.command_timeout = timeout;
        self
    }

    /// How long one connection attempt may take (default 2 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.settings.connect_timeout = timeout;
        self
    }

    /// How often the connections are checked with a `PING` (default 1 s): a Redis that stops
    /// answering without closing the connection is found within this plus the command
    /// timeout.
    pub fn ping_interval(mut self, interval: Duration) -> Self {
        self.settings.ping_interval = interval;
        self
    }

    /// The reconnect delays: exponential from `min`, capped at `max`, each drawn uniformly
    /// from zero to that bound ("full jitter", so that nodes do not come back in step).
    /// Default 100 ms .. 5 s.
    pub fn reconnect_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.settings.backoff_min = min;
        self.settings.backoff_max = max;
        self
    }

    /// Received messages waiting to be handed to the node (default 16,384). A message is one
    /// publication, or up to 64 publications of one topic (at most 64 KiB of payloads) that
    /// reached Redis together. When the queue is full, what arrives is dropped and counted ([`EngineStats::dropped_in`]); the node finds the
    /// holes by offset or against the streams' tops and repairs them, or sends a `gap`.
    ///
    /// [`EngineStats::dropped_in`]: livehub_core::broker::EngineStats::dropped_in
    pub fn inbound_queue(mut self, messages: usize) -> Self {
        self.settings.inbound_queue = messages;
        self
    }

    /// Control messages waiting to be written to Redis (default 4,096). When it is full,
    /// [`Broker::send`](livehub_core::Broker::send) refuses with `engine_unavailable`.
    pub fn outbound_queue(mut self, messages: usize) -> Self {
        self.settings.outbound_queue = messages;
        self
    }

    /// How long a presence entry lives without a refresh (default 30 s). Every node of a hub
    /// must use the same value.
    pub fn presence_ttl(mut self, ttl: Duration) -> Self {
        self.settings.presence_ttl = ttl;
        self
    }

    /// How often nodes refresh their members and collect the expired ones (default 10 s;
    /// shorter than the ttl). A member of a node that died leaves at most ttl + this after
    /// its last refresh: 40 s by default.
    pub fn presence_refresh(mut self, interval: Duration) -> Self {
        self.settings.presence_refresh = interval;
        self
    }

    /// Connects (both connections, loading the scripts) and starts the engine's tasks on the
    /// current tokio runtime.
    pub async fn build(self) -> Result<RedisEngine, BuildError> {
        self.settings.check()?;
        RedisEngine::start(&self.url, self.settings).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_settings_are_refused() {
        let ok = Settings::default();
        assert_eq!(ok.check(), Ok(()));
        let cases: [fn(&mut Settings); 6] = [
            |s| s.prefix = "a{b".into(),
            |s| s.prefix = String::new(),
            |s| s.command_timeout = Duration::ZERO,
            |s| s.backoff_max = Duration::from_millis(1),
            |s| s.inbound_queue = 0,
            |s| s.presence_refresh = s.presence_ttl,
        ];
        for change in cases {
            let mut s = ok.clone();
            change(&mut s);
            assert!(matches!(s.check(), Err(BuildError::Setting(_))), "{s:?}");
        }
    }
}
