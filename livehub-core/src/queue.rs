//! A session's outgoing queue: bounded, shared frames, drained in batches by the transport.
//!
//! Fan-out pushes an `Arc<Shared>` (never a copy of the bytes) without waiting; the
//! transport's writer takes everything queued at once ([`crate::Outbox::next_batch`]). When the
//! queue is full the hub's [`SlowConsumerPolicy`] applies to that session alone.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Waker;

use tokio::sync::Notify;

use crate::broker::Position;
use crate::config::SlowConsumerPolicy;
use crate::error::DisconnectReason;
use crate::frame::{weight, Frame, GapReason, Item, Shared};
use crate::session::lock;

/// What happened to a push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pushed {
    Queued,
    /// Dropped under the `Drop` policy, or because the session is closing.
    Dropped,
    /// The queue overflowed under the `Disconnect` policy: the caller must close the session.
    Overflow,
}

/// Frames lost to a lagging session under the `Drop` policy, reported once it catches up.
#[derive(Debug, Default)]
pub(crate) struct Lag {
    /// Per topic: epoch and the first and last dropped offsets (contiguous: once lagging, every
    /// frame is dropped until the writer drains the queue).
    topics: HashMap<Arc<str>, (Arc<str>, u64, u64)>,
    others: u64,
}

/// How many of a node's session queues are past their high-water mark (half their frame or
/// byte bound), how many of those fell behind only just now and are nearly full (critical),
/// and a signal when one drains: what publishers pace themselves by.
#[derive(Debug, Default)]
pub(crate) struct Congestion {
    pub(crate) queues: AtomicUsize,
    /// Queues past three quarters of their bound that crossed their high-water mark less than
    /// [`EPISODE`] ago: a session that just fell behind, which a publisher waits for (briefly)
    /// rather than cut it. One still behind after that is stalled and no longer counted here.
    pub(crate) critical: AtomicUsize,
    pub(crate) drained: Notify,
}

/// How long a queue that fell behind may hold publishers back (see [`Congestion::critical`]).
pub(crate) const EPISODE: std::time::Duration = std::time::Duration::from_secs(1);

/// What a drained (or closed) queue gives back to the node's [`Congestion`].
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Relief {
    high: bool,
    critical: bool,
}

impl Congestion {
    fn rise(&self) {
        self.queues.fetch_add(1, Ordering::AcqRel);
    }

    fn relieve(&self, r: Relief) {
        if r.high {
            self.queues.fetch_sub(1, Ordering::AcqRel);
        }
        if r.critical {
            self.critical.fetch_sub(1, Ordering::AcqRel);
        }
        if r.high || r.critical {
            self.drained.notify_waiters();
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct QueueState {
    pub(crate) items: VecDeque<Item>,
    pub(crate) waker: Option<Waker>,
    pub(crate) ping: bool,
    pub(crate) closing: Option<DisconnectReason>,
    pub(crate) close_sent: bool,
    pub(crate) lag: Option<Box<Lag>>,
    /// `Subscribed` markers among `items` (they do not count against the capacity).
    pub(crate) markers: usize,
    /// What `items` weigh ([`Shared::weight`]).
    pub(crate) bytes: usize,
    /// Past the high-water mark (counted in the node's [`Congestion`]), since when.
    pub(crate) high: bool,
    high_since: Option<tokio::time::Instant>,
    /// Counted in [`Congestion::critical`].
    critical: bool,
    /// The sequence number of `items[0]` (items keep theirs while they wait).
    head: u64,
    /// Superseded messages among `items` (they do not count against the bounds).
    superseded: usize,
    /// The newest queued message per topic and key of conflated subscriptions, while the
    /// queue is behind; what was superseded, per topic, to be told when it is written.
    pub(crate) conflation: Option<Box<Conflation>>,
}

/// A behind queue's conflation (see [`Queue::push_conflating`]).
#[derive(Debug, Default)]
pub(crate) struct Conflation {
    /// (topic, key) -> sequence number of the newest queued message of that key.
    latest: HashMap<(Arc<str>, Arc<str>), u64>,
    /// Topics whose queued messages are indexed in `latest` already.
    indexed: std::collections::HashSet<Arc<str>>,
    /// Per topic: its epoch and the first and last superseded offsets.
    pub(crate) superseded: HashMap<Arc<str>, (Arc<str>, u64, u64)>,
}

impl Conflation {
    /// The `gap`s (reason `conflated`) that tell what was superseded, written before the rest.
    pub(crate) fn notices(self) -> Vec<Arc<Shared>> {
        self.superseded
            .into_iter()
            .map(|(topic, (epoch, from, to))| {
                Shared::new(Frame::Gap {
                    topic,
                    epoch,
                    from,
                    to,
                    reason: GapReason::Conflated,
                })
            })
            .collect()
    }
}

impl QueueState {
    /// Empties the queue's accounting once its items were taken; what it gives back to the
    /// node's congestion (the caller tells the node, after releasing the lock).
    pub(crate) fn drained(&mut self, taken: usize) -> Relief {
        self.head += taken as u64;
        self.markers = 0;
        self.bytes = 0;
        self.superseded = 0;
        self.conflation = None;
        self.relief()
    }

    /// No longer congested: what that gives back to the node.
    fn relief(&mut self) -> Relief {
        self.high_since = None;
        Relief {
            high: std::mem::take(&mut self.high),
            critical: std::mem::take(&mut self.critical),
        }
    }
}

#[derive(Debug)]
pub(crate) struct Queue {
    pub(crate) state: Mutex<QueueState>,
    /// At most this many frames...
    capacity: usize,
    /// ...and this many bytes (a single frame larger than this is still taken when the queue
    /// is empty: the bound delays nobody's one big message).
    max_bytes: usize,
    policy: SlowConsumerPolicy,
    pub(crate) congestion: Arc<Congestion>,
}

impl Queue {
    pub(crate) fn new(
        capacity: usize,
        max_bytes: usize,
        policy: SlowConsumerPolicy,
        congestion: Arc<Congestion>,
    ) -> Queue {
        Queue {
            state: Mutex::new(QueueState::default()),
            capacity: capacity.max(1),
            max_bytes: max_bytes.max(1),
            policy,
            congestion,
        }
    }

    /// Says the queue drained (its writer took everything): no longer congested.
    pub(crate) fn drained(&self, relief: Relief) {
        self.congestion.relieve(relief);
    }

    /// The session is over for good: it no longer counts as congested.
    pub(crate) fn settle(&self) {
        let relief = lock(&self.state).relief();
        self.congestion.relieve(relief);
    }

    /// A queue that has been behind for [`EPISODE`] no longer holds publishers back: it is
    /// stalled, and meets the slow-consumer policy when full. (Run by the sweeper.)
    pub(crate) fn expire_episode(&self, now: tokio::time::Instant) {
        let stalled = {
            let mut st = lock(&self.state);
            match st.high_since {
                Some(since) if st.critical && now.saturating_duration_since(since) >= EPISODE => {
                    st.critical = false;
                    true
                }
                _ => false,
            }
        };
        if stalled {
            self.congestion.relieve(Relief {
                high: false,
                critical: true,
            });
        }
    }

    /// Queues a frame without waiting. O(1); wakes the writer only if it sleeps.
    pub(crate) fn push(&self, frame: &Arc<Shared>) -> Pushed {
        let (pushed, waker) = {
            let mut st = lock(&self.state);
            self.push_locked(&mut st, frame)
        };
        if let Some(w) = waker {
            w.wake();
        }
        pushed
    }

    fn push_locked(&self, st: &mut QueueState, frame: &Arc<Shared>) -> (Pushed, Option<Waker>) {
        if st.closing.is_some() {
            return (Pushed::Dropped, None);
        }
        let weight = weight(frame.frame());
        let frames = st.items.len() - st.markers - st.superseded;
        let full = frames >= self.capacity || (frames > 0 && st.bytes + weight > self.max_bytes);
        if st.lag.is_some() || full {
            match self.policy {
                SlowConsumerPolicy::Disconnect => return (Pushed::Overflow, None),
                SlowConsumerPolicy::Drop => {
                    let lag = st.lag.get_or_insert_with(Box::default);
                    match frame.frame() {
                        Frame::Message {
                            topic,
                            epoch,
                            offset,
                            ..
                        } => {
                            lag.topics
                                .entry(topic.clone())
                                .and_modify(|e| e.2 = *offset)
                                .or_insert((epoch.clone(), *offset, *offset));
                        }
                        _ => lag.others += 1,
                    }
                    return (Pushed::Dropped, None);
                }
            }
        }
        st.items.push_back(Item::Frame(frame.clone()));
        st.bytes += weight;
        let frames = st.items.len() - st.markers - st.superseded;
        if !st.high && (frames >= self.capacity.div_ceil(2) || st.bytes >= self.max_bytes / 2) {
            st.high = true;
            st.high_since = Some(tokio::time::Instant::now());
            self.congestion.rise();
        }
        if st.high
            && !st.critical
            && (frames >= self.capacity - self.capacity / 4
                || st.bytes >= self.max_bytes - self.max_bytes / 4)
            && st.high_since.is_some_and(|since| since.elapsed() < EPISODE)
        {
            st.critical = true;
            self.congestion.critical.fetch_add(1, Ordering::AcqRel);
        }
        (Pushed::Queued, st.waker.take())
    }

    /// Queues a message of a conflated subscription. While the queue is behind (past its
    /// high-water mark), a message with a key supersedes the queued one of the same topic and
    /// key: that one is taken out (told as a `gap` with reason `conflated` when the queue is
    /// written), this one goes at the end, so the queue keeps the newest message per key in
    /// offset order. Messages without a key, and deletions, are never taken out. A queue that
    /// keeps up is not touched: every message is delivered.
    pub(crate) fn push_conflating(&self, frame: &Arc<Shared>) -> Pushed {
        let Frame::Message {
            topic,
            epoch,
            key: Some(key),
            delete: false,
            ..
        } = frame.frame()
        else {
            return self.push(frame);
        };
        let (pushed, waker) = {
            let mut guard = lock(&self.state);
            let st = &mut *guard;
            if st.closing.is_none() && st.high {
                self.supersede(st, topic, epoch, key);
            }
            let seq = st.head + st.items.len() as u64;
            let (pushed, waker) = self.push_locked(st, frame);
            if pushed == Pushed::Queued {
                if let Some(c) = &mut st.conflation {
                    c.latest.insert((topic.clone(), key.clone()), seq);
                }
            }
            (pushed, waker)
        };
        if let Some(w) = waker {
            w.wake();
        }
        pushed
    }

    /// Takes the queued message of `topic` and `key` out, if there is one (see
    /// [`Queue::push_conflating`]).
    fn supersede(&self, st: &mut QueueState, topic: &Arc<str>, epoch: &Arc<str>, key: &Arc<str>) {
        let head = st.head;
        let indexed = st
            .conflation
            .get_or_insert_with(Box::default)
            .indexed
            .contains(topic);
        if !indexed {
            // The first conflated push since the queue fell behind: what of this topic is queued
            // already is conflated too (only its newest per key stays), and indexed.
            let mut latest: HashMap<(Arc<str>, Arc<str>), u64> = HashMap::new();
            let mut older: Vec<usize> = Vec::new();
            for (i, item) in st.items.iter().enumerate() {
                if let Item::Frame(f) = item {
                    if let Frame::Message {
                        topic: t,
                        key: Some(k),
                        delete: false,
                        ..
                    } = f.frame()
                    {
                        if t == topic {
                            if let Some(prev) =
                                latest.insert((t.clone(), k.clone()), head + i as u64)
                            {
                                older.extend(usize::try_from(prev - head).ok());
                            }
                        }
                    }
                }
            }
            for i in older {
                Self::take_out(st, i, topic, epoch);
            }
            if let Some(c) = st.conflation.as_mut() {
                c.latest.extend(latest);
                c.indexed.insert(topic.clone());
            }
        }
        let seq = st
            .conflation
            .as_mut()
            .and_then(|c| c.latest.remove(&(topic.clone(), key.clone())));
        if let Some(i) = seq
            .and_then(|seq| seq.checked_sub(head))
            .and_then(|i| usize::try_from(i).ok())
        {
            Self::take_out(st, i, topic, epoch);
        }
    }

    /// Takes the message at `items[i]` out for a newer one of its key.
    fn take_out(st: &mut QueueState, i: usize, topic: &Arc<str>, epoch: &Arc<str>) {
        let Some(slot) = st.items.get_mut(i) else {
            return;
        };
        if let Item::Frame(old) = std::mem::replace(slot, Item::Superseded) {
            if let (Frame::Message { offset, .. }, Some(c)) = (old.frame(), &mut st.conflation) {
                c.superseded
                    .entry(topic.clone())
                    .and_modify(|e| {
                        e.1 = e.1.min(*offset);
                        e.2 = e.2.max(*offset);
                    })
                    .or_insert((epoch.clone(), *offset, *offset));
            }
            st.bytes = st.bytes.saturating_sub(weight(old.frame()));
            st.superseded += 1;
        }
    }

    /// Queues a `Subscribed` marker: it writes nothing and comes at most once per subscribe
    /// (their number is bounded by the subscription limit), so it never counts against the
    /// queue's bounds and is never refused while the session is open.
    pub(crate) fn push_marker(&self, topic: Arc<str>, position: Position) {
        let waker = {
            let mut st = lock(&self.state);
            if st.closing.is_some() {
                return;
            }
            st.items
                .push_back(Item::Subscribed(Arc::new((topic, position))));
            st.markers += 1;
            st.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    pub(crate) fn request_ping(&self) {
        let waker = {
            let mut st = lock(&self.state);
            if st.closing.is_some() {
                return;
            }
            st.ping = true;
            st.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Ends the queue: queued frames are kept (and written before the close) when the reason
    /// flushes, dropped otherwise. Returns how many frames were dropped.
    pub(crate) fn close(&self, reason: DisconnectReason) -> usize {
        let (waker, dropped, relief) = {
            let mut st = lock(&self.state);
            if st.closing.is_some() {
                return 0;
            }
            st.closing = Some(reason);
            let (dropped, relief) = if crate::error::flushes(reason) {
                (0, Relief::default())
            } else {
                let n = st.items.len() - st.markers - st.superseded;
                let taken = st.items.len();
                st.items = VecDeque::new();
                (n, st.drained(taken))
            };
            (st.waker.take(), dropped, relief)
        };
        self.congestion.relieve(relief);
        if let Some(w) = waker {
            w.wake();
        }
        dropped
    }

    /// Frames queued now (markers not counted).
    pub(crate) fn len(&self) -> usize {
        let st = lock(&self.state);
        st.items.len() - st.markers - st.superseded
    }

    /// Why the queue was closed, if it was.
    pub(crate) fn closing(&self) -> Option<DisconnectReason> {
        lock(&self.state).closing
    }
}

/// The frames that tell a lagging session what it lost.
pub(crate) fn lag_frames(lag: Lag) -> Vec<Arc<Shared>> {
    let mut frames: Vec<Arc<Shared>> = lag
        .topics
        .into_iter()
        .map(|(topic, (epoch, from, to))| {
            Shared::new(Frame::Gap {
                topic,
                epoch,
                from,
                to,
                reason: GapReason::Lagged,
            })
        })
        .collect();
    if lag.others > 0 {
        frames.push(Shared::new(Frame::Dropped { count: lag.others }));
    }
    frames
}
