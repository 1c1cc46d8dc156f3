//! Run-time counters, readable as a [`StatsSnapshot`].
//!
//! Counters are relaxed atomics bumped once per operation (a fan-out adds its delivery count in
//! one step), so reading them costs the hot path almost nothing.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};

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
    /// Bytes of client frames handed to the hub, and of encoded frames handed to transports.
    pub(crate) bytes_in: AtomicU64,
    pub(crate) bytes_out: AtomicU64,
    /// How long publishes (the host's and clients') took to get their position.
    pub(crate) publish_latency: Latency,
    /// Requests the transports refused, by code. Codes are `&'static str`s of the program
    /// (the hub's, the transports', the host's hooks'), so the map stays small.
    refusals: Mutex<BTreeMap<&'static str, u64>>,
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

    pub(crate) fn count_refusal(&self, code: &'static str) {
        *crate::session::lock(&self.refusals)
            .entry(code)
            .or_default() += 1;
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
            bytes_in: self.bytes_in.load(Relaxed),
            bytes_out: self.bytes_out.load(Relaxed),
            publish_latency: self.publish_latency.snapshot(),
            refusals: crate::session::lock(&self.refusals).clone(),
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
    /// Bytes of frames received from clients (as the transports handed them to the hub).
    pub bytes_in: u64,
    /// Bytes of encoded frames handed to the transports to write (without the transports' own
    /// framing: WebSocket headers, SSE lines, poll batches).
    pub bytes_out: u64,
    /// Frames queued for sessions now, all sessions together (not yet taken by their
    /// transports).
    pub queued_frames: u64,
    /// The longest session queue now, in frames (the slow-consumer policy applies at
    /// [`crate::HubBuilder::queue_capacity`]).
    pub max_queue: u64,
    /// How long publishes took to get their position from the engine (the host's
    /// [`crate::Hub::publish`] and clients' `publish` frames; refused ones are not timed).
    pub publish_latency: LatencyHistogram,
    /// Requests the transports refused with an HTTP error answer, by code (`forbidden`,
    /// `origin_not_allowed`, `too_many_connections`, `bad_request`, ...; only codes seen so far).
    /// See [`crate::Hub::record_refusal`].
    pub refusals: BTreeMap<&'static str, u64>,
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

/// Upper bounds of the publish latency buckets: 100 µs to 2.5 s, roughly 1-2.5-5 per decade
/// (an in-process publish takes microseconds; one through a remote engine, a network round trip).
const LATENCY_BOUNDS: [Duration; 14] = [
    Duration::from_micros(100),
    Duration::from_micros(250),
    Duration::from_micros(500),
    Duration::from_millis(1),
    Duration::from_micros(2_500),
    Duration::from_millis(5),
    Duration::from_millis(10),
    Duration::from_millis(25),
    Duration::from_millis(50),
    Duration::from_millis(100),
    Duration::from_millis(250),
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_micros(2_500_000),
];

/// A histogram of durations with fixed buckets, recorded with relaxed atomics (no lock).
#[derive(Debug, Default)]
pub(crate) struct Latency {
    /// Observations per bucket (not cumulative); the last slot is past every bound.
    buckets: [AtomicU64; LATENCY_BOUNDS.len() + 1],
    sum_ns: AtomicU64,
}

impl Latency {
    /// Records the time since `start`.
    pub(crate) fn since(&self, start: Instant) {
        let took = start.elapsed();
        let slot = LATENCY_BOUNDS
            .iter()
            .position(|b| took <= *b)
            .unwrap_or(LATENCY_BOUNDS.len());
        self.buckets[slot].fetch_add(1, Relaxed);
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.sum_ns.fetch_add(ns, Relaxed);
    }

    fn snapshot(&self) -> LatencyHistogram {
        let mut total = 0;
        let buckets = LATENCY_BOUNDS
            .iter()
            .zip(&self.buckets)
            .map(|(bound, n)| {
                total += n.load(Relaxed);
                (*bound, total)
            })
            .collect();
        // The count is the buckets' total (not a counter of its own), so that it always
        // equals the `+Inf` bucket, even while publishes are being recorded.
        let past_last = self.buckets[LATENCY_BOUNDS.len()].load(Relaxed);
        LatencyHistogram {
            buckets,
            sum: Duration::from_nanos(self.sum_ns.load(Relaxed)),
            count: total + past_last,
        }
    }
}

/// A histogram of durations ([`StatsSnapshot::publish_latency`]), shaped as Prometheus
/// histograms are: cumulative counts per upper bound.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LatencyHistogram {
    /// `(upper bound, observations at or under it)`, bounds increasing. Observations over the
    /// last bound are counted in [`LatencyHistogram::count`] only (the `+Inf` bucket).
    pub buckets: Vec<(Duration, u64)>,
    /// The sum of every observation.
    pub sum: Duration,
    /// The number of observations.
    pub count: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_land_in_cumulative_buckets_and_the_count_is_the_inf_bucket() {
        let l = Latency::default();
        let now = Instant::now();
        // Nothing recorded yet: every bucket 0.
        assert!(l.snapshot().buckets.iter().all(|(_, n)| *n == 0));
        l.since(now);
        let s = l.snapshot();
        assert_eq!(s.count, 1);
        assert_eq!(s.buckets.len(), LATENCY_BOUNDS.len());
        // Cumulative: never decreasing, the last at most the count.
        assert!(s.buckets.windows(2).all(|w| w[0].1 <= w[1].1));
        assert!(s.buckets.last().is_some_and(|(_, n)| *n <= s.count));
        // An observation past every bound counts in `count` only.
        l.buckets[LATENCY_BOUNDS.len()].fetch_add(1, Relaxed);
        let s = l.snapshot();
        assert_eq!(s.count, 2);
        assert!(s.buckets.last().is_some_and(|(_, n)| *n == 1));
    }
}
