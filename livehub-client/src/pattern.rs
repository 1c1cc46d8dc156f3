//! Wildcard subscriptions: one stream of the messages of every topic that matches a pattern
//! (`scores/*`, `scores/**`), each topic with its own positions (see [`PatternSubscription`]).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::Stream;
use livehub_protocol::{GapReason, Position};
use tokio::sync::{mpsc, oneshot};

use crate::error::Error;
use crate::feed::{Feed, Shared};
use crate::subscription::{check_next, Delivered, Duplicate, Gap, Message, ResumeCause, Window};

/// The topics whose positions one pattern subscription keeps at most. A topic past this is
/// still delivered, without a position kept (no resume, no duplicate check): the server's own
/// limit of subscriptions per session (each topic a pattern brings counts as one) is far lower
/// by default, so only a misbehaving server gets there.
pub(crate) const MAX_PATTERN_TOPICS: usize = 4096;

/// What a [`PatternSubscription`] yields.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum PatternEvent {
    /// A message of a topic that matches the pattern ([`Message::topic`] says which, and
    /// [`Message::position`] where it is in that topic's stream).
    Message(Message),
    /// Messages of `topic` that will not arrive (see [`Gap::reason`] for what the client did
    /// with the topic's position). Also told during a resume, before its
    /// [`PatternEvent::Resumed`].
    Gap {
        /// The topic.
        topic: Arc<str>,
        /// What is lost.
        gap: Gap,
    },
    /// Messages of `topic` (offsets `from..=to`) were superseded by newer ones of the same
    /// key, which follow (a topic that conflates by default): not a loss.
    Conflated {
        /// The topic.
        topic: Arc<str>,
        /// The superseded offsets (reason [`GapReason::Conflated`]).
        gap: Gap,
    },
    /// The pattern was subscribed again with the last position of every topic it had
    /// delivered (`positions`), and the server has answered: the messages missed, and the
    /// [`PatternEvent::Gap`]s of what could not be recovered, came before this event.
    Resumed(PatternResumed),
    /// The subscription ended, and why. The last item.
    Closed(Error),
}

/// The end of a resume of a pattern subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatternResumed {
    /// Why it was subscribed again.
    pub cause: ResumeCause,
    /// `true`: no topic lost anything (no [`PatternEvent::Gap`] since the resume began).
    pub recovered: bool,
    /// How many topics were resumed from a position.
    pub topics: usize,
}

/// How to subscribe to a pattern.
///
/// ```
/// use livehub_client::{PatternOptions, Position};
/// let opts = PatternOptions::new().position("scores/live", Position::new("9f1c2a7d3b4e5f60", 41));
/// # drop(opts);
/// ```
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct PatternOptions {
    pub(crate) positions: Vec<(Arc<str>, Position)>,
}

impl PatternOptions {
    /// Live messages of every matching topic.
    pub fn new() -> PatternOptions {
        PatternOptions::default()
    }

    /// Resume `topic` (it must match the pattern, or the server answers `bad_field`) after
    /// `position` (one this topic gave before, e.g. saved by the application): its missed
    /// messages, or a gap, come before the call returns; the first event after them is a
    /// [`PatternEvent::Resumed`] with cause [`ResumeCause::Since`].
    pub fn position(mut self, topic: &str, position: Position) -> PatternOptions {
        self.positions.retain(|(t, _)| &**t != topic);
        self.positions.push((Arc::from(topic), position));
        self
    }
}

/// Whether `topic` matches `pattern` (PROTOCOL.md, "Wildcard subscriptions"): `*` is exactly
/// one segment, a last `**` one or more. The server checks patterns; a malformed one (which it
/// refuses) matches what these rules say, nothing worse.
pub(crate) fn matches(pattern: &str, topic: &str) -> bool {
    let mut p = pattern.split('/');
    let mut t = topic.split('/');
    loop {
        match (p.next(), t.next()) {
            (Some("**"), Some(_)) => return p.next().is_none(),
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// The messages of every topic that matches a pattern, as a [`Stream`] of [`PatternEvent`]s.
/// Made by [`crate::Client::psubscribe`].
///
/// ## Delivery
///
/// The server starts to deliver a topic at the first message it sees of it after the
/// `psubscribe` (a topic it did not follow yet from its first message: nothing older is
/// replayed; to catch up on a topic, subscribe to it with `last`). Every topic keeps its own
/// positions: the client keeps the last one per topic, drops a message at or before it (a
/// duplicate) and reports a hole the server did not announce as a [`PatternEvent::Gap`]
/// without a reason. The messages of one topic come in offset order; topics interleave as the
/// server sends them.
///
/// ## Resuming
///
/// After a reconnect the client sends the pattern again with `positions`: the last position of
/// every topic it delivered. Each such topic recovers what it missed from the server's history
/// (or gets a [`PatternEvent::Gap`]), then a [`PatternEvent::Resumed`] says the resume is
/// complete. A topic the pattern had not delivered before the cut is live from its next
/// message, as for a first `psubscribe`.
///
/// ## Lagging and ending
///
/// As a [`crate::Subscription`]: a full buffer ([`crate::ClientBuilder::subscription_buffer`])
/// drops what arrives, and once the application has read half of it the pattern is
/// subscribed again from its positions ([`ResumeCause::Lagged`]). Dropping it, or
/// [`PatternSubscription::unsubscribe`], sends `punsubscribe`; when it ends for another reason
/// its last item is [`PatternEvent::Closed`].
#[derive(Debug)]
#[must_use = "a pattern subscription that is dropped unsubscribes"]
pub struct PatternSubscription {
    pub(crate) feed: Feed<PatternEvent>,
    /// The last position read, per topic (at most [`MAX_PATTERN_TOPICS`]).
    pub(crate) positions: HashMap<Arc<str>, Position>,
}

impl PatternSubscription {
    /// The pattern.
    pub fn pattern(&self) -> &str {
        &self.feed.name
    }

    /// The position of the last message read of `topic`, or the one it was opened with
    /// ([`PatternOptions::position`]); `None` for a topic not read yet.
    pub fn position(&self, topic: &str) -> Option<&Position> {
        self.positions.get(topic)
    }

    /// The last position read of every topic read so far: what a later
    /// [`crate::Client::psubscribe_with`] can resume from.
    pub fn positions(&self) -> impl Iterator<Item = (&str, &Position)> {
        self.positions.iter().map(|(t, p)| (&**t, p))
    }

    /// The next event; `None` once the subscription has ended.
    pub async fn next(&mut self) -> Option<PatternEvent> {
        std::future::poll_fn(|cx| Pin::new(&mut *self).poll_next(cx)).await
    }

    /// Sends `punsubscribe`, and waits for the server's answer.
    pub async fn unsubscribe(mut self) -> Result<(), Error> {
        self.feed.unsubscribe().await
    }
}

impl Stream for PatternSubscription {
    type Item = PatternEvent;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<PatternEvent>> {
        let this = self.get_mut();
        let polled = this.feed.poll_next(cx);
        if let Poll::Ready(Some(PatternEvent::Message(m))) = &polled {
            if this.positions.len() < MAX_PATTERN_TOPICS || this.positions.contains_key(&m.topic) {
                this.positions.insert(m.topic.clone(), m.position.clone());
            }
        }
        polled
    }
}

/// Where a pattern subscription is, as the driver sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PatPhase {
    /// Its `psubscribe` is sent (or will be, once connected); `cause` is what to report at
    /// the reply (`None`: a first psubscribe without positions), `lost` whether a gap came
    /// meanwhile.
    Subscribing {
        cause: Option<ResumeCause>,
        lost: bool,
    },
    /// Its `punsubscribe` is sent to repair a lag: what still arrives of it was sent before
    /// the server took it, and is dropped (the resume that follows recovers it).
    Draining,
    /// Delivering.
    Live,
}

/// One topic's position in a pattern subscription.
#[derive(Debug, Clone, Default)]
struct TopicPos {
    /// The last message (or gap) handed over; `None`: the next message, wherever it starts
    /// (a topic not seen yet, or a stream recreated in a new epoch).
    last: Option<Position>,
    /// Offsets of an epoch that may be missing: through `Some(to)` (a `conflated` gap's), or
    /// with `None` before its next message, wherever it starts (a stream recreated in a new
    /// epoch: its messages follow from what its history still holds).
    window: Option<Window>,
}

/// The driver's side of a pattern subscription.
#[derive(Debug)]
pub(crate) struct PatEntry {
    pub(crate) id: u64,
    tx: mpsc::Sender<PatternEvent>,
    shared: Arc<Shared>,
    topics: HashMap<Arc<str>, TopicPos>,
    pub(crate) phase: PatPhase,
    pub(crate) lagging: bool,
    /// Answers the application's `psubscribe` call, until the first reply.
    pub(crate) waiter: Option<oneshot::Sender<Result<(), Error>>>,
}

impl PatEntry {
    pub(crate) fn new(
        id: u64,
        opts: &PatternOptions,
        tx: mpsc::Sender<PatternEvent>,
        shared: Arc<Shared>,
        waiter: oneshot::Sender<Result<(), Error>>,
    ) -> PatEntry {
        let topics: HashMap<Arc<str>, TopicPos> = opts
            .positions
            .iter()
            .take(MAX_PATTERN_TOPICS)
            .map(|(t, p)| {
                let pos = TopicPos {
                    last: Some(p.clone()),
                    window: None,
                };
                (t.clone(), pos)
            })
            .collect();
        let cause = (!topics.is_empty()).then_some(ResumeCause::Since);
        PatEntry {
            id,
            tx,
            shared,
            topics,
            phase: PatPhase::Subscribing { cause, lost: false },
            lagging: false,
            waiter: Some(waiter),
        }
    }

    /// The application no longer waits for this subscription.
    pub(crate) fn abandoned(&self) -> bool {
        self.tx.is_closed() || self.waiter.as_ref().is_some_and(|w| w.is_closed())
    }

    /// Prepares a (re)psubscribe: the `positions` to send.
    pub(crate) fn resubscribe(&mut self, cause: ResumeCause) -> Vec<(String, Position)> {
        self.lagging = false;
        let positions: Vec<(String, Position)> = self
            .topics
            .iter()
            .filter_map(|(t, p)| p.last.clone().map(|l| (t.to_string(), l)))
            .collect();
        let cause = match self.phase {
            // Not answered yet: what the first call asked for is still to report.
            PatPhase::Subscribing { cause: first, .. } if self.waiter.is_some() => first,
            // A reconnect wins over a lag repair.
            PatPhase::Subscribing {
                cause: Some(ResumeCause::Reconnect),
                ..
            } => Some(ResumeCause::Reconnect),
            _ => Some(cause),
        };
        for p in self.topics.values_mut() {
            p.window = None;
        }
        self.phase = PatPhase::Subscribing { cause, lost: false };
        positions
    }

    /// The reply to the psubscribe: the resume, if one, is complete.
    pub(crate) fn on_reply(&mut self) -> Delivered {
        if let Some(w) = self.waiter.take() {
            let _ = w.send(Ok(()));
        }
        let PatPhase::Subscribing { cause, lost } = self.phase else {
            return Delivered::Yes;
        };
        self.phase = PatPhase::Live;
        match cause {
            Some(cause) if !self.lagging => {
                let topics = self.topics.values().filter(|p| p.last.is_some()).count();
                self.deliver(PatternEvent::Resumed(PatternResumed {
                    cause,
                    recovered: !lost,
                    topics,
                }))
            }
            _ => Delivered::Yes,
        }
    }

    /// Starts the repair of a lag: what arrives until the server takes the `punsubscribe` is
    /// dropped.
    pub(crate) fn drain(&mut self) {
        self.phase = PatPhase::Draining;
    }

    /// A message of a matching topic.
    pub(crate) fn on_message(&mut self, message: Message) -> Delivered {
        if self.lagging {
            return Delivered::Lagging;
        }
        if self.phase == PatPhase::Draining {
            return Delivered::Yes;
        }
        let room = self.topics.len() < MAX_PATTERN_TOPICS;
        let state = match self.topics.get(&message.topic) {
            Some(s) => s.clone(),
            None if room => TopicPos::default(),
            // Past the bound: delivered as it is, without a position kept.
            None => return self.deliver(PatternEvent::Message(message)),
        };
        let TopicPos {
            last: before,
            mut window,
        } = state;
        let hole = match check_next(before.as_ref(), &mut window, &message.position) {
            Err(Duplicate) => return Delivered::Yes,
            Ok(hole) => hole,
        };
        let topic = message.topic.clone();
        let last = message.position.clone();
        if let Some(gap) = hole {
            self.lost();
            let ev = PatternEvent::Gap {
                topic: topic.clone(),
                gap,
            };
            match self.deliver(ev) {
                Delivered::Yes => {}
                other => return other,
            }
        }
        let delivered = self.deliver(PatternEvent::Message(message));
        if delivered == Delivered::Yes {
            let pos = TopicPos {
                last: Some(last),
                window,
            };
            self.topics.insert(topic, pos);
        }
        delivered
    }

    /// A `gap` frame of a matching topic, by reason (see [`Gap::reason`]).
    pub(crate) fn on_gap(&mut self, topic: &Arc<str>, gap: Gap) -> Delivered {
        if self.lagging {
            return Delivered::Lagging;
        }
        if self.phase == PatPhase::Draining {
            return Delivered::Yes;
        }
        let state = self.topics.get(topic).cloned().unwrap_or_default();
        let past = |to: u64| {
            state
                .last
                .as_ref()
                .is_some_and(|l| *l.epoch == *gap.epoch && to <= l.offset)
        };
        let mut window = None;
        let next = match &gap.reason {
            Some(GapReason::Conflated) => {
                if past(gap.to) {
                    return Delivered::Yes;
                }
                let delivered = self.deliver(PatternEvent::Conflated {
                    topic: topic.clone(),
                    gap: gap.clone(),
                });
                if delivered == Delivered::Yes {
                    self.set(
                        topic,
                        TopicPos {
                            last: state.last.clone(),
                            window: Some(Window {
                                epoch: gap.epoch.clone(),
                                to: Some(gap.to),
                            }),
                        },
                    );
                }
                return delivered;
            }
            // A `since` of another epoch, or the stream recreated: the new epoch's messages
            // follow from what its history holds (a resume before the first asks from 0).
            Some(GapReason::Epoch) => {
                window = Some(Window {
                    epoch: gap.epoch.clone(),
                    to: None,
                });
                Some(Position::new(gap.epoch.clone(), 0))
            }
            Some(GapReason::Ahead) => {
                Some(Position::new(gap.epoch.clone(), gap.from.saturating_sub(1)))
            }
            _ => {
                if past(gap.to) {
                    return Delivered::Yes;
                }
                Some(Position::new(gap.epoch.clone(), gap.to))
            }
        };
        self.lost();
        let delivered = self.deliver(PatternEvent::Gap {
            topic: topic.clone(),
            gap,
        });
        if delivered == Delivered::Yes {
            self.set(topic, TopicPos { last: next, window });
        }
        delivered
    }

    fn set(&mut self, topic: &Arc<str>, pos: TopicPos) {
        if self.topics.len() < MAX_PATTERN_TOPICS || self.topics.contains_key(topic) {
            self.topics.insert(topic.clone(), pos);
        }
    }

    fn lost(&mut self) {
        if let PatPhase::Subscribing { lost, .. } = &mut self.phase {
            *lost = true;
        }
    }

    /// Ends the subscription with a last event (best effort).
    pub(crate) fn close(mut self, error: Error) {
        if let Some(w) = self.waiter.take() {
            let _ = w.send(Err(error));
            return;
        }
        let _ = self.tx.try_send(PatternEvent::Closed(error));
    }

    fn deliver(&mut self, event: PatternEvent) -> Delivered {
        match self.tx.try_send(event) {
            Ok(()) => Delivered::Yes,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.lagging = true;
                self.shared.lagging.store(true, Ordering::Release);
                Delivered::Lagging
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Delivered::Gone,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use livehub_protocol::Payload;

    #[test]
    fn patterns_match_as_the_protocol_says() {
        assert!(matches("scores/*", "scores/live"));
        assert!(!matches("scores/*", "scores/live/7"));
        assert!(!matches("scores/*", "scores"));
        assert!(matches("scores/**", "scores/live"));
        assert!(matches("scores/**", "scores/live/7"));
        assert!(!matches("scores/**", "scores"));
        assert!(matches("*/live/*", "a/live/b"));
        assert!(!matches("*/live/*", "a/dead/b"));
        assert!(!matches("scores/**/x", "scores/a/x"), "** only last");
        assert!(!matches("news/*", "scores/live"));
    }

    fn entry(cap: usize) -> (PatEntry, mpsc::Receiver<PatternEvent>) {
        let (tx, rx) = mpsc::channel(cap);
        let (w, _) = oneshot::channel();
        let mut e = PatEntry::new(1, &PatternOptions::new(), tx, Arc::default(), w);
        e.waiter = None;
        e.on_reply();
        (e, rx)
    }

    fn msg(topic: &str, epoch: &str, offset: u64) -> Message {
        Message {
            topic: topic.into(),
            position: Position::new(epoch, offset),
            data: Payload::null(),
            key: None,
            delete: false,
        }
    }

    fn seen(rx: &mut mpsc::Receiver<PatternEvent>) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(ev) = rx.try_recv() {
            out.push(match ev {
                PatternEvent::Message(m) => format!("{}:{}", m.topic, m.position.offset),
                PatternEvent::Gap { topic, gap } => format!("gap {topic} {}..{}", gap.from, gap.to),
                PatternEvent::Resumed(r) => format!("resumed {} {}", r.recovered, r.topics),
                other => format!("{other:?}"),
            });
        }
        out
    }

    #[test]
    fn each_topic_has_its_own_duplicates_and_holes() {
        let (mut e, mut rx) = entry(32);
        for (t, o) in [
            ("a", 5),
            ("b", 1),
            ("a", 6),
            ("a", 6),
            ("b", 1),
            ("b", 3),
            ("a", 5),
        ] {
            assert_eq!(e.on_message(msg(t, "e", o)), Delivered::Yes);
        }
        assert_eq!(seen(&mut rx), ["a:5", "b:1", "a:6", "gap b 2..2", "b:3"]);
        // A resume sends the last position of each topic, and says at the reply what it did.
        let mut positions = e.resubscribe(ResumeCause::Reconnect);
        positions.sort_by(|x, y| x.0.cmp(&y.0));
        assert_eq!(
            positions,
            [
                ("a".to_owned(), Position::new("e", 6)),
                ("b".to_owned(), Position::new("e", 3))
            ]
        );
        e.on_message(msg("a", "e", 6));
        e.on_message(msg("a", "e", 7));
        e.on_gap(
            &Arc::from("b"),
            Gap {
                epoch: "e".into(),
                from: 4,
                to: 9,
                reason: Some(GapReason::History),
            },
        );
        e.on_message(msg("b", "e", 10));
        e.on_reply();
        assert_eq!(
            seen(&mut rx),
            ["a:7", "gap b 4..9", "b:10", "resumed false 2"]
        );
    }

    #[test]
    fn a_recreated_stream_starts_wherever_its_history_does_then_holes_count_again() {
        let (mut e, mut rx) = entry(32);
        e.on_message(msg("a", "old", 4));
        let gap = Gap {
            epoch: "new".into(),
            from: 0,
            to: 0,
            reason: Some(GapReason::Epoch),
        };
        e.on_gap(&Arc::from("a"), gap.clone());
        e.on_message(msg("a", "new", 3));
        e.on_message(msg("a", "new", 5));
        assert_eq!(
            seen(&mut rx),
            ["a:4", "gap a 0..0", "a:3", "gap a 4..4", "a:5"]
        );
        // Resumed before its first message: from the start of the new epoch.
        e.on_message(msg("b", "old", 1));
        e.on_gap(&Arc::from("b"), gap);
        let mut positions = e.resubscribe(ResumeCause::Reconnect);
        positions.sort_by(|x, y| x.0.cmp(&y.0));
        assert_eq!(
            positions,
            [
                ("a".to_owned(), Position::new("new", 5)),
                ("b".to_owned(), Position::new("new", 0))
            ]
        );
    }

    #[test]
    fn a_full_buffer_lags_and_draining_drops_what_was_in_flight() {
        let (mut e, mut rx) = entry(2);
        assert_eq!(e.on_message(msg("a", "e", 1)), Delivered::Yes);
        assert_eq!(e.on_message(msg("b", "e", 1)), Delivered::Yes);
        assert_eq!(e.on_message(msg("a", "e", 2)), Delivered::Lagging);
        assert!(e.shared.lagging.load(Ordering::Acquire));
        assert_eq!(seen(&mut rx), ["a:1", "b:1"]);
        e.drain();
        e.on_message(msg("a", "e", 3));
        assert_eq!(
            seen(&mut rx),
            Vec::<String>::new(),
            "dropped while draining"
        );
        let positions = e.resubscribe(ResumeCause::Lagged);
        assert_eq!(positions.len(), 2);
        e.on_message(msg("a", "e", 2));
        e.on_reply();
        assert_eq!(seen(&mut rx), ["a:2", "resumed true 2"]);
    }
}
