//! Run-time counters, readable as a [`StatsSnapshot`].
//!
//! Counters are relaxed atomics bumped once per operation (a fan-out adds its delivery count in
//! one step), so reading them costs the hot path almost nothing.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::broker::EngineStats;
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
    /// Messages the engine handed this node (delivered to its subscribers).
    pub(crate) published_in: AtomicU64,
    /// Messages the engine handed this node twice (dropped).
    pub(crate) engine_duplicates: AtomicU64,
    /// Holes found in a topic's stream and repaired (from history, or told as a `gap`).
    pub(crate) engine_repairs: AtomicU64,
    /// Times the engine's connection was lost.
    pub(crate) engine_disconnects: AtomicU64,
    /// Messages from the engine that could not be decoded.
    pub(crate) engine_undecodable: AtomicU64,
    /// Control messages sent to and received from other nodes.
    pub(crate) control_out: AtomicU64,
    pub(crate) control_in: AtomicU64,
    /// Presence updates dropped because the presence queue was full.
    pub(crate) presence_dropped: AtomicU64,
    /// Publishes that waited for congested queues to drain, and those that gave up waiting.
    pub(crate) paced: AtomicU64,
    pub(crate) pace_timeouts: AtomicU64,
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
            paced: self.paced.load(Relaxed),
            pace_timeouts: self.pace_timeouts.load(Relaxed),
            node: NodeStats {
                published_in: self.published_in.load(Relaxed),
                duplicates: self.engine_duplicates.load(Relaxed),
                repairs: self.engine_repairs.load(Relaxed),
                engine_disconnects: self.engine_disconnects.load(Relaxed),
                undecodable: self.engine_undecodable.load(Relaxed),
                control_out: self.control_out.load(Relaxed),
                control_in: self.control_in.load(Relaxed),
                presence_dropped: self.presence_dropped.load(Relaxed),
            },
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
    /// Topics this node holds now: with the in-process engine every stream it keeps (with
    /// subscribers or history); with a shared engine, the topics local sessions follow.
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
    /// Publishes that waited because fan-out was congested ([`crate::HubBuilder::pacing`]).
    pub paced: u64,
    /// Of those, the ones that stopped waiting at the bound.
    pub pace_timeouts: u64,
    /// Frames encoded as JSON (each frame at most once, however many sessions got it).
    pub encodes_json: u64,
    /// Frames encoded as MessagePack.
    pub encodes_msgpack: u64,
    /// Sessions ended, by reason (only reasons seen so far).
    pub disconnects: BTreeMap<&'static str, u64>,
    /// This node's side of the engine: what it received, repaired, and sent to other nodes.
    pub node: NodeStats,
    /// The engine's own counters ([`crate::Hub::engine_stats`]).
    pub engine: EngineStats,
}

/// What a node counts of its traffic with the engine ([`StatsSnapshot::node`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct NodeStats {
    /// Messages the engine handed this node for its subscribers.
    pub published_in: u64,
    /// Messages handed over twice (dropped by offset).
    pub duplicates: u64,
    /// Holes found in a stream (an offset skipped, an outage, an undecodable message) and
    /// repaired from history, or told to subscribers as a `gap`.
    pub repairs: u64,
    /// Times the engine's connection was lost.
    pub engine_disconnects: u64,
    /// Messages from the engine that could not be decoded.
    pub undecodable: u64,
    /// Control messages (rooms, direct sends, presence) sent to other nodes.
    pub control_out: u64,
    /// Control messages received from other nodes.
    pub control_in: u64,
    /// Presence updates dropped because the node's presence queue was full.
    pub presence_dropped: u64,
}

impl StatsSnapshot {
    /// Sessions open now, all transports together.
    pub fn sessions_total(&self) -> u64 {
        self.sessions.values().sum()
    }
}
