//! The connections to Redis, and what keeps them: connect, watch, reconnect, resubscribe.
//!
//! Two RESP3 multiplexed connections: one for commands and scripts, one for pub/sub (its push
//! messages go to the [inbox](crate::inbound::Inbox)). Both are replaced together. While
//! they are down, every command fails at once with `Unavailable`; the supervisor reconnects
//! with exponential backoff and full jitter, resubscribes every channel, and only then says
//! it is connected and tells the node ([`EngineEvent::Reconnected`]).

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use livehub_core::broker::{BrokerError, EngineEvent};
use redis::aio::{AsyncPushSender, MultiplexedConnection, SendError};
use redis::{AsyncConnectionConfig, ErrorKind, PushInfo, PushKind, RedisError, ServerErrorKind};
use tokio::sync::Notify;

use crate::engine::Shared;
use crate::inbound::Inbox;
use crate::scripts;

/// Channels per `SUBSCRIBE` when resubscribing everything.
const SUBSCRIBE_CHUNK: usize = 512;

/// The live connections, replaced together.
#[derive(Clone)]
pub(crate) struct Conns {
    pub(crate) cmd: MultiplexedConnection,
    pub(crate) sub: MultiplexedConnection,
}

/// The connection state shared by the engine's tasks.
pub(crate) struct Link {
    /// The live connections (`None` while down). A std lock: held only to clone or swap.
    conns: RwLock<Option<Conns>>,
    /// Connected and subscribed: commands go through. Set after resubscribing.
    connected: AtomicBool,
    pub(crate) signals: Arc<Signals>,
}

/// What the connections' push senders tell the supervisor (no reference to the engine, so
/// that the connections do not keep it alive).
pub(crate) struct Signals {
    /// The generation of the connections being installed (one per connect).
    generation: AtomicU64,
    /// The highest generation whose connection reported its end.
    dead: AtomicU64,
    /// Replace the connections even though they answer (a `READONLY` replica).
    force: AtomicBool,
    /// Wakes the supervisor to check the connections now.
    pub(crate) wake: Notify,
}

impl Signals {
    /// The connection of `generation` ended.
    pub(crate) fn dead(&self, generation: u64) {
        self.dead.fetch_max(generation, Ordering::AcqRel);
        self.wake.notify_one();
    }
}

/// The push sender of the command connection: it only reports the connection's end.
pub(crate) struct Watch {
    pub(crate) signals: Arc<Signals>,
    pub(crate) generation: u64,
}

impl AsyncPushSender for Watch {
    fn send(&self, info: PushInfo) -> Result<(), SendError> {
        if info.kind == PushKind::Disconnection {
            self.signals.dead(self.generation);
        }
        Ok(())
    }
}

impl Link {
    pub(crate) fn new() -> Link {
        Link {
            conns: RwLock::new(None),
            connected: AtomicBool::new(false),
            signals: Arc::new(Signals {
                generation: AtomicU64::new(0),
                dead: AtomicU64::new(0),
                force: AtomicBool::new(false),
                wake: Notify::new(),
            }),
        }
    }

    pub(crate) fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    fn current(&self) -> Option<Conns> {
        self.conns.read().ok().and_then(|c| c.clone())
    }

    /// The current connection has reported its end, or must be replaced.
    fn must_replace(&self) -> bool {
        let s = &self.signals;
        s.dead.load(Ordering::Acquire) >= s.generation.load(Ordering::Acquire)
            || s.force.load(Ordering::Acquire)
    }

    fn install(&self, conns: Option<Conns>) {
        if let Ok(mut slot) = self.conns.write() {
            *slot = conns;
        }
    }

    /// Closed for good (the supervisor is stopped first, so nothing reconnects).
    pub(crate) fn close(&self) {
        self.connected.store(false, Ordering::Release);
        self.install(None);
    }

    /// Something failed in a way that may mean the connection is gone: check it now.
    pub(crate) fn suspect(&self) {
        self.signals.wake.notify_one();
    }
}

/// A Redis error in Redis's own words where it answered (`OOM command not allowed ...`,
/// `READONLY You can't write ...`).
fn describe(e: &RedisError) -> String {
    match (e.code(), e.detail()) {
        (Some(code), Some(detail)) => format!("redis answered {code} {detail}"),
        _ => format!("redis: {e}"),
    }
}

fn not_connected() -> BrokerError {
    BrokerError::Unavailable("not connected to redis (reconnecting)".to_owned())
}

/// A delay drawn uniformly from zero to `min * 2^attempt` capped at `max` ("full jitter").
pub(crate) fn backoff(attempt: u32, min: Duration, max: Duration) -> Duration {
    let cap = min.saturating_mul(1u32 << attempt.min(20)).min(max);
    let nanos = u64::try_from(cap.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(crate::engine::random_u64() % nanos.saturating_add(1))
}

impl Shared {
    /// The command connection, or `Unavailable` at once when not connected.
    pub(crate) fn command_conn(&self) -> Result<MultiplexedConnection, BrokerError> {
        if !self.link.is_connected() {
            return Err(not_connected());
        }
        self.link.current().map(|c| c.cmd).ok_or_else(not_connected)
    }

    /// The pub/sub connection, or `Unavailable` at once when not connected.
    pub(crate) fn sub_conn(&self) -> Result<MultiplexedConnection, BrokerError> {
        if !self.link.is_connected() {
            return Err(not_connected());
        }
        self.link.current().map(|c| c.sub).ok_or_else(not_connected)
    }

    /// Runs one exchange with Redis under the command timeout, mapping its failure.
    pub(crate) async fn timed<T>(
        &self,
        exchange: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, BrokerError> {
        self.bounded(async { exchange.await.map_err(|e| self.map_error(e)) })
            .await
    }

    /// Runs `work` under the command timeout.
    pub(crate) async fn bounded<T>(
        &self,
        work: impl Future<Output = Result<T, BrokerError>>,
    ) -> Result<T, BrokerError> {
        let limit = self.settings.command_timeout;
        match tokio::time::timeout(limit, work).await {
            Ok(result) => result,
            Err(_) => {
                self.link.suspect();
                Err(BrokerError::Unavailable(format!(
                    "redis did not answer within {limit:?}"
                )))
            }
        }
    }

    /// Runs a pipeline on the command connection; on `NOSCRIPT` (Redis restarted or its
    /// scripts flushed) loads the scripts and runs it once more. Pipelines given here must be
    /// safe to repeat.
    pub(crate) async fn pipeline<T: redis::FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> Result<T, BrokerError> {
        let mut conn = self.command_conn()?;
        self.timed(async move {
            match pipe.query_async::<T>(&mut conn).await {
                Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                    tracing::info!("redis lost the hub's scripts: loading them again");
                    load_scripts(&mut conn).await?;
                    pipe.query_async::<T>(&mut conn).await
                }
                other => other,
            }
        })
        .await
    }

    /// A Redis error as the seam's error. Connection failures are `Unavailable` (and make the
    /// supervisor check the connection); answers from Redis are `Engine`, except the ones
    /// that mean "not now" (loading, master down, try again).
    pub(crate) fn map_error(&self, e: RedisError) -> BrokerError {
        match e.kind() {
            ErrorKind::Server(
                ServerErrorKind::BusyLoading
                | ServerErrorKind::MasterDown
                | ServerErrorKind::TryAgain
                | ServerErrorKind::ClusterDown,
            ) => BrokerError::Unavailable(describe(&e)),
            ErrorKind::Server(ServerErrorKind::ReadOnly) => {
                // A replica now (a failover): connect again, the address may lead to the new
                // primary.
                tracing::warn!("redis answers READONLY: reconnecting");
                self.link.signals.force.store(true, Ordering::Release);
                self.link.suspect();
                BrokerError::Engine(describe(&e))
            }
            ErrorKind::Server(_) | ErrorKind::Extension | ErrorKind::UnexpectedReturnType => {
                BrokerError::Engine(describe(&e))
            }
            _ => {
                self.link.suspect();
                BrokerError::Unavailable(format!("redis: {e}"))
            }
        }
    }

    /// Opens both connections (generation `generation`) and loads the scripts.
    pub(crate) async fn open(&self, generation: u64) -> redis::RedisResult<Conns> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.settings.connect_timeout))
            .set_response_timeout(Some(self.settings.command_timeout));
        let watch = Watch {
            signals: self.link.signals.clone(),
            generation,
        };
        let inbox = Inbox {
            watch: Watch {
                signals: self.link.signals.clone(),
                generation,
            },
            tx: self.inbound_tx.clone(),
            counters: self.counters.clone(),
        };
        let mut cmd = self
            .client
            .get_multiplexed_async_connection_with_config(&config.clone().set_push_sender(watch))
            .await?;
        let sub = self
            .client
            .get_multiplexed_async_connection_with_config(&config.set_push_sender(inbox))
            .await?;
        load_scripts(&mut cmd).await?;
        Ok(Conns { cmd, sub })
    }

    /// Makes the first connection (in `build`).
    pub(crate) async fn connect_first(&self) -> redis::RedisResult<()> {
        let generation = self.link.signals.generation.fetch_add(1, Ordering::AcqRel) + 1;
        let conns = self.open(generation).await?;
        self.link.install(Some(conns));
        self.link.connected.store(true, Ordering::Release);
        Ok(())
    }

    /// Keeps the connections: watches them, and replaces them when they fail. Runs for the
    /// engine's life.
    pub(crate) async fn supervise(self: Arc<Self>) {
        let mut attempt = 0u32;
        loop {
            if self.link.is_connected() {
                self.watch_health().await;
                self.go_down();
                attempt = 0;
            }
            let delay = backoff(
                attempt,
                self.settings.backoff_min,
                self.settings.backoff_max,
            );
            tokio::time::sleep(delay).await;
            attempt = attempt.saturating_add(1);
            match self.reconnect().await {
                Ok(()) => tracing::info!(attempt, "reconnected to redis"),
                Err(e) => tracing::debug!(attempt, error = %e, "reconnecting to redis failed"),
            }
        }
    }

    /// Returns when the connections must be replaced: one reported its end, or a `PING`
    /// failed (checked every ping interval, and at once when a command suspects it).
    async fn watch_health(&self) {
        let mut ticker = tokio::time::interval(self.settings.ping_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        loop {
            if self.link.must_replace() {
                return;
            }
            tokio::select! {
                _ = self.link.signals.wake.notified() => {}
                _ = ticker.tick() => {}
            }
            if self.link.must_replace() || !self.ping_both().await {
                return;
            }
        }
    }

    async fn ping_both(&self) -> bool {
        let Some(conns) = self.link.current() else {
            return false;
        };
        let (mut cmd, mut sub) = (conns.cmd, conns.sub);
        let limit = self.settings.command_timeout;
        let ping = |c: &mut MultiplexedConnection| {
            let c = c.clone();
            async move {
                let mut c = c;
                matches!(
                    tokio::time::timeout(limit, redis::cmd("PING").query_async::<String>(&mut c))
                        .await,
                    Ok(Ok(_))
                )
            }
        };
        let (a, b) = tokio::join!(ping(&mut cmd), ping(&mut sub));
        if !(a && b) {
            tracing::warn!(
                command = a,
                pubsub = b,
                "redis did not answer a PING in time"
            );
        }
        a && b
    }

    /// Marks the link down, drops the connections (in-flight commands fail) and tells the
    /// node.
    fn go_down(&self) {
        self.link.connected.store(false, Ordering::Release);
        self.link.signals.force.store(false, Ordering::Release);
        self.link.install(None);
        self.own_ready.send_replace(false);
        tracing::warn!("lost the connection to redis: publishing fails until it is back");
        if let Some(node) = self.node.get() {
            node.engine_event(EngineEvent::Disconnected);
        }
    }

    /// One reconnect attempt: connect, resubscribe every channel, then say connected.
    async fn reconnect(&self) -> Result<(), BrokerError> {
        let generation = self.link.signals.generation.fetch_add(1, Ordering::AcqRel) + 1;
        let limit = self.settings.connect_timeout * 2 + self.settings.command_timeout;
        let conns = match tokio::time::timeout(limit, self.open(generation)).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(BrokerError::Unavailable(e.to_string())),
            Err(_) => return Err(BrokerError::Unavailable("connect timed out".to_owned())),
        };
        // Under the subscription lock: a subscribe() now waits, then goes to the new
        // connection; what it added before is in the set resubscribed here.
        let subs = self.subs.lock().await;
        let names: Vec<&String> = subs
            .iter()
            .filter(|(_, s)| !matches!(s, crate::engine::Sub::Pattern(_)))
            .map(|(n, _)| n)
            .collect();
        let globs: Vec<&String> = subs
            .iter()
            .filter(|(_, s)| matches!(s, crate::engine::Sub::Pattern(_)))
            .map(|(n, _)| n)
            .collect();
        let mut sub = conns.sub.clone();
        let chunks = names
            .chunks(SUBSCRIBE_CHUNK)
            .map(|c| (false, c))
            .chain(globs.chunks(SUBSCRIBE_CHUNK).map(|c| (true, c)));
        for (glob, chunk) in chunks {
            let exchange = tokio::time::timeout(self.settings.command_timeout, async {
                if glob {
                    sub.psubscribe(chunk).await
                } else {
                    sub.subscribe(chunk).await
                }
            });
            match exchange.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(BrokerError::Unavailable(e.to_string())),
                Err(_) => {
                    return Err(BrokerError::Unavailable(
                        "resubscribing timed out".to_owned(),
                    ))
                }
            }
        }
        let own = self.own_channels_in(&subs);
        self.link.install(Some(conns));
        self.link.connected.store(true, Ordering::Release);
        drop(subs);
        self.counters.reconnects.fetch_add(1, Ordering::Relaxed);
        self.own_ready.send_replace(own);
        if let Some(node) = self.node.get() {
            node.engine_event(EngineEvent::Reconnected);
        }
        Ok(())
    }
}

/// Loads every script (`SCRIPT LOAD`; six round trips, on connect only).
pub(crate) async fn load_scripts(conn: &mut MultiplexedConnection) -> redis::RedisResult<()> {
    for script in scripts::all() {
        script.load_async(conn).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_bounded_and_grows() {
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(5));
        for attempt in 0..40 {
            let cap = min.saturating_mul(1 << attempt.min(20)).min(max);
            for _ in 0..50 {
                assert!(backoff(attempt, min, max) <= cap);
            }
        }
        // Full jitter: spread over the whole range, not stuck at a bound.
        let draws: Vec<_> = (0..200).map(|_| backoff(10, min, max)).collect();
        assert!(draws.iter().any(|d| *d < max / 2));
        assert!(draws.iter().any(|d| *d > max / 2));
    }
}
