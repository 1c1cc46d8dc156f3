//! Run-time counters, readable as a [`StatsSnapshot`].
//!
//! Counters are relaxed atomics bumped once per operation (a fan-out adds its delivery count in
//! one step), so reading them costs the hot path almost nothing.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::codec::Codec;
use crate::error::DisconnectReason;

#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) sessions_opened: AtomicU64,
    pub(crate) frames_in: AtomicU64,
    pub(crate) published: AtomicU64,
    pub(crate) deliveries: AtomicU64,
    pub(crate) dropped: AtomicU64,
    pub(crate) errors_sent: AtomicU64,
    encodes: [AtomicU64; 2],
    disconnects: [AtomicU64; DisconnectReason::ALL.len()],
}

impl Stats {
    pub(crate) fn count_encode(&self, codec: Codec) {
        self.encodes[codec.index()].fetch_add(1, Relaxed);
    }

    pub(crate) fn count_disconnect(&self, reason: DisconnectReason) {
        self.disconnects[reason.index()].fetch_add(1, Relaxed);
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    pub(crate) fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            sessions_opened: self.sessions_opened.load(Relaxed),
            frames_in: self.frames_in.load(Relaxed),
            published: self.published.load(Relaxed),
            deliveries: self.deliveries.load(Relaxed),
            dropped: self.dropped.load(Relaxed),
            errors_sent: self.errors_sent.load(Relaxed),
            encodes_json: self.encodes[Codec::Json.index()].load(Relaxed),
            encodes_msgpack: self.encodes[Codec::MsgPack.index()].load(Relaxed),
            disconnects: DisconnectReason::ALL
                .iter()
                .map(|r| (r.as_str(), self.disconnects[r.index()].load(Relaxed)))
                .filter(|(_, n)| *n > 0)
                .collect(),
            ..StatsSnapshot::default()
        }
    }
}

/// A point-in-time copy of the hub's counters ([`crate::Hub::stats`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StatsSnapshot {
    /// Sessions open now, by transport name.
    pub sessions: BTreeMap<&'static str, u64>,
    /// Sessions opened since the hub started.
    pub sessions_opened: u64,
    /// Topic subscriptions open now.
    pub subscriptions: u64,
    /// Topics that exist now.
    pub topics: u64,
    /// Rooms that exist now (a room exists while it has members).
    pub rooms: u64,
    /// Frames received from clients.
    pub frames_in: u64,
    /// Messages published to topics (by clients and by the server).
    pub published: u64,
    /// Frames queued for sessions (one per receiving session).
    pub deliveries: u64,
    /// Frames dropped for slow sessions (under the `drop` policy) or closed queues.
    pub dropped: u64,
    /// `error` frames sent to clients.
    pub errors_sent: u64,
    /// Frames encoded as JSON (each frame at most once, however many sessions got it).
    pub encodes_json: u64,
    /// Frames encoded as MessagePack.
    pub encodes_msgpack: u64,
    /// Sessions ended, by reason (only reasons seen so far).
    pub disconnects: BTreeMap<&'static str, u64>,
}

impl StatsSnapshot {
    /// Sessions open now, all transports together.
    pub fn sessions_total(&self) -> u64 {
        self.sessions.values().sum()
    }
}
