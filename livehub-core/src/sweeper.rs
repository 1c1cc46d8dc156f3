//! The hub's one background task: heartbeats for every session, the engine's housekeeping
//! (topic TTLs), and, with a shared engine, the periodic check of every followed stream.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::error::DisconnectReason;
use crate::node::Inner;

impl Inner {
    /// Starts the sweeper if it is not running and a runtime is there to run it.
    pub(crate) fn ensure_sweeper(self: &Arc<Self>) {
        if self.sweeper.load(Ordering::Acquire) {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            // Published to outside a runtime: the first session (or publish in one) starts it.
            return;
        };
        if self.sweeper.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak = Arc::downgrade(self);
        let interval = self.config.heartbeat_interval;
        rt.spawn(sweep(weak, interval));
        if self.clustered() {
            rt.spawn(check(
                Arc::downgrade(self),
                self.config.engine_check_interval,
            ));
        }
    }
}

/// The heartbeat policy, run by one task for all sessions. Every second (or every interval,
/// if that is shorter) it closes the sessions silent past the timeout, so a silent session is
/// closed within a second of it; every interval it asks the others' transports for a ping and
/// runs the engine's housekeeping.
async fn sweep(weak: Weak<Inner>, interval: Duration) {
    let step = interval.min(LIVENESS_STEP);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + step, step);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next_ping = tokio::time::Instant::now() + interval;
    loop {
        tick.tick().await;
        let Some(inner) = weak.upgrade() else {
            return;
        };
        let now = inner.now_ms();
        let tick_at = tokio::time::Instant::now();
        let timeout = u64::try_from(inner.config.heartbeat_timeout.as_millis()).unwrap_or(u64::MAX);
        let ping = tick_at >= next_ping;
        if ping {
            next_ping += interval;
        }
        // Collect first: closing removes from `sessions`, which must not happen while iterating.
        let mut silent = Vec::new();
        for entry in inner.sessions.iter() {
            let s = entry.value();
            if s.transport.client_liveness && now.saturating_sub(s.last_seen()) > timeout {
                silent.push(s.clone());
            } else if ping && s.transport.pings {
                s.request_ping();
            }
            s.queue.expire_episode(tick_at);
        }
        inner.close_all(silent, DisconnectReason::HeartbeatTimeout);
        inner.expire_acks();
        if ping {
            inner.broker.tick();
        }
    }
}

/// How often silent sessions are looked for (at most).
const LIVENESS_STEP: Duration = Duration::from_secs(1);

/// Compares what this node delivered with the streams' tops, every `every`.
async fn check(weak: Weak<Inner>, every: Duration) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = weak.upgrade() else {
            return;
        };
        inner.check_streams().await;
    }
}
