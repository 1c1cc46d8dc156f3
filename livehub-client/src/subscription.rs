//! Subscriptions: a stream of a topic's messages that survives reconnects (see
//! [`Subscription`]).

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::Stream;
use livehub_protocol::{GapReason, Member, Payload, Position, PresenceEvents};
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, oneshot};

use crate::error::Error;
use crate::feed::{Feed, Shared};

/// One message of a topic.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// The topic.
    pub topic: Arc<str>,
    /// The message's position in the topic's stream.
    pub position: Position,
    /// The application data.
    pub data: Payload,
    /// The key its publisher gave (`match:7`): what the message is the latest value of. On a
    /// conflated subscription only the newest message per key is kept when it falls behind.
    pub key: Option<Arc<str>>,
    /// The publisher marked it as the deletion of its `key` (never conflated away).
    pub delete: bool,
}

impl Message {
    /// Decodes the data into `T`.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, Error> {
        Ok(self.data.decode()?)
    }
}

/// Messages of a topic that will not arrive: offsets `from..=to` of `epoch`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    /// The epoch the offsets belong to.
    pub epoch: Arc<str>,
    /// The first lost offset (0 when the whole earlier epoch is lost: [`GapReason::Epoch`]).
    pub from: u64,
    /// The last lost offset (0 with [`GapReason::Epoch`]).
    pub to: u64,
    /// The server's reason; `None` for a hole the server did not announce, found by the client
    /// (offsets that skip ahead, e.g. after an `undeliverable` error). What the client did with
    /// its position, by reason (PROTOCOL.md, "Server to client"):
    ///
    /// - [`GapReason::History`], [`GapReason::Lagged`], and any reason this version does not
    ///   know ([`GapReason::Other`], taken as loss): it moves past `to`;
    /// - [`GapReason::Epoch`]: answering a `since` of another epoch, live messages follow the
    ///   topic's position of the reply; while following (the stream was recreated), the new
    ///   epoch's messages follow from the start of what its history holds: the position is
    ///   the new epoch's offset 0, and its first message is taken wherever it starts;
    /// - [`GapReason::Ahead`]: the position held was ahead of the stream; it goes back to
    ///   `from - 1` (new messages take the offsets after it): forget what you held after it.
    ///
    /// [`GapReason::Conflated`] is not a loss and never comes as a `Gap` of
    /// [`SubEvent::Gap`] or [`Resumed::gap`]: see [`SubEvent::Conflated`].
    pub reason: Option<GapReason>,
}

/// Why a subscription was subscribed again from its last position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ResumeCause {
    /// The subscription was opened with [`SubscribeOptions::since`].
    Since,
    /// The connection was lost and is back.
    Reconnect,
    /// The application read too slowly (see "Lagging" above).
    Lagged,
}

/// The outcome of subscribing again from a position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resumed {
    /// Why it happened.
    pub cause: ResumeCause,
    /// `true`: nothing was lost, the missed messages follow. `false`: `gap` was lost; what the
    /// history still held follows it.
    pub recovered: bool,
    /// What was lost, when `recovered` is `false`.
    pub gap: Option<Gap>,
}

/// What a [`Subscription`] yields.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum SubEvent {
    /// A message.
    Message(Message),
    /// Messages were lost while subscribed (the server dropped them for a slow reader, or a
    /// hole the server did not announce).
    Gap(Gap),
    /// The subscription was subscribed again from its last position (see [`Resumed`]).
    Resumed(Resumed),
    /// On a conflated subscription ([`SubscribeOptions::conflate`]): messages of offsets
    /// `from..=to` were superseded by newer ones of the same key, which follow (the `Gap`'s
    /// `reason` is [`GapReason::Conflated`]). Not a loss: the newest value of every key still
    /// arrives. The offsets of that range may be missing from what follows without a [`Gap`].
    Conflated(Gap),
    /// Someone joined the topic (with [`SubscribeOptions::presence`]).
    Join(Member),
    /// Someone left the topic (with [`SubscribeOptions::presence`]).
    Leave(Member),
    /// The subscription ended, and why. The last item.
    Closed(Error),
}

/// How to subscribe.
///
/// ```
/// use livehub_client::{Position, SubscribeOptions};
/// let opts = SubscribeOptions::new().since(Position::new("9f1c2a7d3b4e5f60", 41)).presence(true);
/// # drop(opts);
/// ```
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct SubscribeOptions {
    pub(crate) since: Option<Position>,
    pub(crate) presence: PresenceEvents,
    pub(crate) last: Option<u64>,
    pub(crate) conflate: Option<bool>,
}

impl SubscribeOptions {
    /// Live messages only, no presence events.
    pub fn new() -> SubscribeOptions {
        SubscribeOptions::default()
    }

    /// Start after `position` (a position this topic gave before, e.g. saved by the
    /// application): the first item is a [`SubEvent::Resumed`], then what came after it.
    pub fn since(mut self, position: Position) -> SubscribeOptions {
        self.since = Some(position);
        self
    }

    /// Also yield the topic's [`SubEvent::Join`] and [`SubEvent::Leave`], one per session.
    pub fn presence(mut self, on: bool) -> SubscribeOptions {
        self.presence = if on {
            PresenceEvents::Sessions
        } else {
            PresenceEvents::None
        };
        self
    }

    /// Also yield [`SubEvent::Join`] and [`SubEvent::Leave`], one per user: a join when a
    /// user's first session arrives (on any node), a leave when its last one goes, however many
    /// tabs and devices it has (`presence: "users"`).
    pub fn presence_users(mut self) -> SubscribeOptions {
        self.presence = PresenceEvents::Users;
        self
    }

    /// Start with the newest `n` messages the topic's history holds (oldest first), then live
    /// ones: the current state for a first-time reader (`last(1)`: the latest message). Only
    /// while the subscription holds no position: with [`SubscribeOptions::since`], or once a
    /// message was delivered, it resumes from that position instead (after a reconnect too).
    /// `0` asks for nothing.
    pub fn last(mut self, n: u64) -> SubscribeOptions {
        self.last = (n > 0).then_some(n);
        self
    }

    /// Ask for latest-value conflation (`true`), or against a topic's default (`false`): when
    /// this subscription falls behind, the server keeps only the newest message per key, and a
    /// `since` or `last` recovers only the newest per key (PROTOCOL.md, "Conflation"). What was
    /// superseded is told by [`SubEvent::Conflated`]. Without this call, the topic's default.
    pub fn conflate(mut self, on: bool) -> SubscribeOptions {
        self.conflate = Some(on);
        self
    }
}

/// A topic's messages, as a [`Stream`] of [`SubEvent`]s.
///
/// ## Delivery
///
/// A [`Subscription`] yields the topic's messages in offset order, each once. The client keeps
/// the position of the last message it handed over; after a reconnect it subscribes again
/// with `since` = that position, so the server sends exactly what was missed (from its
/// history), and says so with a [`SubEvent::Resumed`]: `recovered: true` when nothing was lost,
/// `false` with the [`Gap`] the server reported (history too short, or the topic's stream
/// restarted in a new epoch). A message at or before the last position is a duplicate and is
/// dropped; a hole the server did not announce is reported as a [`Gap`] without a reason.
///
/// ## Lagging
///
/// Each subscription buffers at most [`crate::ClientBuilder::subscription_buffer`] events. If
/// the application does not read and the buffer fills, the subscription is **lagging**: the
/// client drops what arrives for it (nothing grows), remembers the last position it handed
/// over, and once the application has read half the buffer it subscribes again from that
/// position. What the application then reads is a [`SubEvent::Resumed`] (cause
/// [`ResumeCause::Lagged`]) and the missed messages, or the gap that could not be recovered:
/// the same guarantee as a reconnect. Presence events (`join`/`leave`) dropped while lagging
/// are not recovered (ask [`crate::Client::presence`]); others see this client leave and
/// join the topic again.
///
/// ## Ending
///
/// Dropping a `Subscription`, or [`Subscription::unsubscribe`], ends it. When it ends for
/// another reason (the client closed, the server kicked it, a subscribe after a reconnect was
/// refused) its last item is [`SubEvent::Closed`] with why, when there is room for it, and
/// then the stream ends.
#[derive(Debug)]
#[must_use = "a subscription that is dropped unsubscribes"]
pub struct Subscription {
    pub(crate) feed: Feed<SubEvent>,
    /// The position when it was subscribed, then of the last message read.
    pub(crate) position: Position,
}

impl Subscription {
    /// The topic.
    pub fn topic(&self) -> &str {
        &self.feed.name
    }

    /// Where a later subscription should resume from (its `since`): the position of the last
    /// message read; before any, the topic's position when this subscription began (or the
    /// `since` it was opened with).
    pub fn position(&self) -> &Position {
        &self.position
    }

    /// The next event; `None` once the subscription has ended.
    pub async fn next(&mut self) -> Option<SubEvent> {
        std::future::poll_fn(|cx| Pin::new(&mut *self).poll_next(cx)).await
    }

    /// Unsubscribes, and waits for the server's answer.
    pub async fn unsubscribe(mut self) -> Result<(), Error> {
        self.feed.unsubscribe().await
    }
}

impl Stream for Subscription {
    type Item = SubEvent;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<SubEvent>> {
        let this = self.get_mut();
        let polled = this.feed.poll_next(cx);
        if let Poll::Ready(Some(SubEvent::Message(m))) = &polled {
            this.position = m.position.clone();
        }
        polled
    }
}

/// Where a subscription is, as the driver sees it.
#[derive(Debug)]
pub(crate) enum Phase {
    /// Its `subscribe` is sent (or will be, once connected); no answer yet.
    Subscribing,
    /// Subscribed again from `last`; the first event after the reply says whether the
    /// recovery is whole.
    Recovering { top: Position, cause: ResumeCause },
    /// Delivering live messages.
    Live,
}

/// What a delivery did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Delivered {
    Yes,
    /// Dropped: the subscription is lagging (now or already).
    Lagging,
    /// The application dropped the subscription.
    Gone,
}

/// The driver's side of one subscription: its channel, its last delivered position, and the
/// rules of "no duplicate, no silent hole".
#[derive(Debug)]
pub(crate) struct SubEntry {
    pub(crate) id: u64,
    pub(crate) presence: PresenceEvents,
    /// `last`: how many of the newest messages to ask for while no position is held.
    pub(crate) last_n: Option<u64>,
    /// `conflate`, sent with every subscribe when set.
    pub(crate) conflate: Option<bool>,
    /// The last subscribe asked for `last` (so its reply's position is not where the
    /// messages start).
    sent_last: bool,
    /// After a `last` reply: the topic's position then, to check the first message against.
    expect: Option<Position>,
    /// Offsets that may be missing without it being a hole (see [`Window`]).
    window: Option<Window>,
    tx: mpsc::Sender<SubEvent>,
    shared: Arc<Shared>,
    /// The position of the last message (or gap) handed to the application, or the `since` it
    /// asked for: what a resubscribe resumes from.
    pub(crate) last: Option<Position>,
    pub(crate) phase: Phase,
    /// The cause to report when the next reply comes (`None`: a first subscribe without
    /// `since`, which reports nothing).
    pub(crate) resume: Option<ResumeCause>,
    pub(crate) lagging: bool,
    /// Answers the application's `subscribe` call, until the first reply.
    pub(crate) waiter: Option<oneshot::Sender<Result<Position, Error>>>,
}

/// Offsets of an epoch that may be missing from what follows without it being a hole.
#[derive(Debug, Clone)]
pub(crate) struct Window {
    pub(crate) epoch: Arc<str>,
    /// Through this offset (a `conflated` gap's `to`); `None`: the next message, wherever it
    /// starts (the first of a recreated stream).
    pub(crate) to: Option<u64>,
}

/// A message at or before the last one handed over: dropped.
pub(crate) struct Duplicate;

/// "No duplicate, no silent hole", for a topic's subscription and for each topic of a
/// pattern's: checks the next message's `position` against `last` (the last message or gap
/// handed over) and `window` (offsets that may be missing; cleared once passed, or at another
/// epoch). `Ok(Some(gap))` is a hole the server did not announce, or another epoch without a
/// `gap` from the server (whatever the old one still had is lost, and so is the new one's
/// start); `Ok(None)`: in order, or no `last` (the caller checks a first message).
pub(crate) fn check_next(
    last: Option<&Position>,
    window: &mut Option<Window>,
    position: &Position,
) -> Result<Option<Gap>, Duplicate> {
    // Offsets a window allows to be missing are no hole; past a conflated window, the next
    // expected offset is after it.
    let mut lenient = false;
    let mut base = last.map(|p| p.offset);
    if let Some((same_epoch, to)) = window.as_ref().map(|w| (*w.epoch == *position.epoch, w.to)) {
        match to {
            _ if !same_epoch => *window = None,
            None => {
                lenient = true;
                *window = None;
            }
            Some(to) if position.offset <= to => lenient = true,
            Some(to) => {
                base = base.map(|b| b.max(to));
                *window = None;
            }
        }
    }
    match last {
        Some(last) if *last.epoch == *position.epoch => {
            if position.offset <= last.offset {
                return Err(Duplicate);
            }
            let base = base.unwrap_or(last.offset);
            Ok((!lenient && position.offset > base + 1).then(|| Gap {
                epoch: position.epoch.clone(),
                from: base + 1,
                to: position.offset - 1,
                reason: None,
            }))
        }
        Some(_) => Ok(Some(Gap {
            epoch: position.epoch.clone(),
            from: 0,
            to: 0,
            reason: None,
        })),
        None => Ok(None),
    }
}

impl SubEntry {
    pub(crate) fn new(
        id: u64,
        opts: &SubscribeOptions,
        tx: mpsc::Sender<SubEvent>,
        shared: Arc<Shared>,
        waiter: oneshot::Sender<Result<Position, Error>>,
    ) -> SubEntry {
        SubEntry {
            id,
            presence: opts.presence,
            last_n: opts.last,
            conflate: opts.conflate,
            sent_last: false,
            expect: None,
            window: None,
            tx,
            shared,
            last: opts.since.clone(),
            phase: Phase::Subscribing,
            resume: opts.since.as_ref().map(|_| ResumeCause::Since),
            lagging: false,
            waiter: Some(waiter),
        }
    }

    /// The application no longer waits for this subscription (it dropped it, or gave up on
    /// its `subscribe` call).
    pub(crate) fn abandoned(&self) -> bool {
        self.tx.is_closed() || self.waiter.as_ref().is_some_and(|w| w.is_closed())
    }

    /// Prepares a (re)subscribe: returns the `since` to send, or else the `last` to ask for.
    pub(crate) fn resubscribe(&mut self, cause: ResumeCause) -> (Option<Position>, Option<u64>) {
        self.phase = Phase::Subscribing;
        self.lagging = false;
        self.expect = None;
        self.window = None;
        let last = if self.last.is_none() {
            self.last_n
        } else {
            None
        };
        self.sent_last = last.is_some();
        if self.last.is_some() && self.waiter.is_none() {
            // A reconnect wins over a lag repair: both resume from `last`.
            self.resume = match (self.resume, cause) {
                (Some(ResumeCause::Reconnect), _) => Some(ResumeCause::Reconnect),
                _ => Some(cause),
            };
        }
        (self.last.clone(), last)
    }

    /// The server's reply to the subscribe: the topic's position now.
    pub(crate) fn on_reply(&mut self, top: Position) -> Delivered {
        if let Some(w) = self.waiter.take() {
            let _ = w.send(Ok(top.clone()));
        }
        if self.sent_last && self.last.is_none() {
            // The newest messages held (up to `top`) follow, then live ones: the first one
            // sets the position.
            self.resume = None;
            self.expect = Some(top);
            self.phase = Phase::Live;
            return Delivered::Yes;
        }
        let (Some(last), Some(cause)) = (self.last.clone(), self.resume.take()) else {
            self.last = Some(top);
            self.phase = Phase::Live;
            return Delivered::Yes;
        };
        if last == top {
            self.phase = Phase::Live;
            return self.deliver(
                SubEvent::Resumed(Resumed {
                    cause,
                    recovered: true,
                    gap: None,
                }),
                None,
            );
        }
        // Either the missed messages follow, or a gap (epoch or history) does.
        self.phase = Phase::Recovering { top, cause };
        Delivered::Yes
    }

    /// A message of the topic.
    pub(crate) fn on_message(&mut self, message: Message) -> Delivered {
        if self.lagging {
            return Delivered::Lagging;
        }
        let position = message.position.clone();
        let resumed = match &self.phase {
            // Sent before the server took our subscribe (a repair unsubscribes first): the
            // recovery brings it again.
            Phase::Subscribing => return Delivered::Yes,
            Phase::Recovering { cause, .. } => Some(*cause),
            Phase::Live => None,
        };
        let expect = self.expect.take();
        let hole = match check_next(self.last.as_ref(), &mut self.window, &position) {
            Err(Duplicate) => return Delivered::Yes,
            Ok(hole) if self.last.is_some() => hole,
            // The first message after a `last` subscribe: one of the newest held (at or
            // before the reply's position) or the next live one; anything further skipped.
            Ok(_) => expect.and_then(|top| {
                (*top.epoch == *position.epoch && position.offset > top.offset + 1).then(|| Gap {
                    epoch: position.epoch.clone(),
                    from: top.offset + 1,
                    to: position.offset - 1,
                    reason: None,
                })
            }),
        };
        if let Some(cause) = resumed {
            self.phase = Phase::Live;
            let ev = SubEvent::Resumed(Resumed {
                cause,
                recovered: hole.is_none(),
                gap: hole,
            });
            if self.deliver(ev, None) != Delivered::Yes {
                return Delivered::Lagging;
            }
        } else if let Some(gap) = hole {
            match self.deliver(SubEvent::Gap(gap), None) {
                Delivered::Yes => {}
                other => return other,
            }
        }
        self.deliver(SubEvent::Message(message), Some(position))
    }

    /// A `gap` frame of the topic, by reason (see [`Gap::reason`]).
    pub(crate) fn on_gap(&mut self, gap: Gap) -> Delivered {
        if self.lagging {
            return Delivered::Lagging;
        }
        if matches!(self.phase, Phase::Subscribing) {
            // Sent before the server took our subscribe: the recovery tells it again.
            return Delivered::Yes;
        }
        self.expect = None;
        let same_epoch_past = |last: &Option<Position>, to: u64| {
            last.as_ref()
                .is_some_and(|l| *l.epoch == *gap.epoch && to <= l.offset)
        };
        // Where the stream continues.
        let next = match &gap.reason {
            Some(GapReason::Conflated) => {
                if same_epoch_past(&self.last, gap.to) {
                    return Delivered::Yes; // already past it
                }
                self.window = Some(Window {
                    epoch: gap.epoch.clone(),
                    to: Some(gap.to),
                });
                // A notice: the phase goes on (a resume reports on its first message).
                return self.deliver(SubEvent::Conflated(gap), None);
            }
            Some(GapReason::Epoch) => {
                let answer = match &self.phase {
                    Phase::Recovering { top, .. } => {
                        *top.epoch == *gap.epoch
                            && self.last.as_ref().is_none_or(|l| *l.epoch != *gap.epoch)
                    }
                    _ => false,
                };
                match &self.phase {
                    // A `since` of another epoch: live messages follow the reply's position.
                    Phase::Recovering { top, .. } if answer => {
                        self.window = None;
                        top.clone()
                    }
                    // Recreated while followed: the new stream from what its history holds.
                    _ => {
                        self.window = Some(Window {
                            epoch: gap.epoch.clone(),
                            to: None,
                        });
                        Position::new(gap.epoch.clone(), 0)
                    }
                }
            }
            Some(GapReason::Ahead) => {
                self.window = None;
                Position::new(gap.epoch.clone(), gap.from.saturating_sub(1))
            }
            // History, lagged, and what this version does not know: lost.
            _ => {
                if matches!(self.phase, Phase::Live) && same_epoch_past(&self.last, gap.to) {
                    return Delivered::Yes; // already past it
                }
                Position::new(gap.epoch.clone(), gap.to)
            }
        };
        match &self.phase {
            Phase::Subscribing => Delivered::Yes,
            Phase::Recovering { cause, .. } => {
                let ev = SubEvent::Resumed(Resumed {
                    cause: *cause,
                    recovered: false,
                    gap: Some(gap),
                });
                self.phase = Phase::Live;
                self.deliver(ev, Some(next))
            }
            Phase::Live => self.deliver(SubEvent::Gap(gap), Some(next)),
        }
    }

    /// A presence event of the topic.
    pub(crate) fn on_presence(&mut self, join: bool, member: Member) -> Delivered {
        if !self.presence.any() || self.lagging {
            return Delivered::Yes;
        }
        let ev = if join {
            SubEvent::Join(member)
        } else {
            SubEvent::Leave(member)
        };
        self.deliver(ev, None)
    }

    /// Ends the subscription with a last event (best effort) and closes the stream.
    pub(crate) fn close(mut self, error: Error) {
        if let Some(w) = self.waiter.take() {
            let _ = w.send(Err(error));
            return;
        }
        let _ = self.tx.try_send(SubEvent::Closed(error));
    }

    /// Hands an event over; on success the last position becomes `position` (when given).
    fn deliver(&mut self, event: SubEvent, position: Option<Position>) -> Delivered {
        match self.tx.try_send(event) {
            Ok(()) => {
                if let Some(p) = position {
                    self.last = Some(p);
                }
                Delivered::Yes
            }
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

    fn entry(since: Option<Position>, cap: usize) -> (SubEntry, mpsc::Receiver<SubEvent>) {
        let (tx, rx) = mpsc::channel(cap);
        let (w, _) = oneshot::channel();
        let opts = SubscribeOptions {
            since,
            ..SubscribeOptions::default()
        };
        let mut e = SubEntry::new(1, &opts, tx, Arc::default(), w);
        e.waiter = None;
        (e, rx)
    }

    fn msg(epoch: &str, offset: u64) -> Message {
        Message {
            topic: "t".into(),
            position: Position::new(epoch, offset),
            data: Payload::null(),
            key: None,
            delete: false,
        }
    }

    fn offsets(rx: &mut mpsc::Receiver<SubEvent>) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(ev) = rx.try_recv() {
            out.push(match ev {
                SubEvent::Message(m) => m.position.offset.to_string(),
                SubEvent::Gap(g) => format!("gap {}..{}", g.from, g.to),
                SubEvent::Resumed(r) => format!("resumed {}", r.recovered),
                other => format!("{other:?}"),
            });
        }
        out
    }

    #[test]
    fn duplicates_are_dropped_and_holes_reported() {
        let (mut e, mut rx) = entry(None, 16);
        e.on_reply(Position::new("e", 0));
        for o in [1, 2, 2, 1, 3, 5, 6] {
            assert_eq!(e.on_message(msg("e", o)), Delivered::Yes);
        }
        assert_eq!(offsets(&mut rx), ["1", "2", "3", "gap 4..4", "5", "6"]);
        assert_eq!(e.last, Some(Position::new("e", 6)));
    }

    #[test]
    fn a_resume_reports_whether_it_recovered() {
        // Nothing missed.
        let (mut e, mut rx) = entry(Some(Position::new("e", 4)), 16);
        e.on_reply(Position::new("e", 4));
        e.on_message(msg("e", 5));
        assert_eq!(offsets(&mut rx), ["resumed true", "5"]);
        // Missed messages follow from history.
        let (mut e, mut rx) = entry(Some(Position::new("e", 4)), 16);
        e.on_reply(Position::new("e", 7));
        for o in [5, 6, 7] {
            e.on_message(msg("e", o));
        }
        assert_eq!(offsets(&mut rx), ["resumed true", "5", "6", "7"]);
        // History too short: the gap, then what is held.
        let (mut e, mut rx) = entry(Some(Position::new("e", 4)), 16);
        e.on_reply(Position::new("e", 9));
        e.on_gap(Gap {
            epoch: "e".into(),
            from: 5,
            to: 7,
            reason: Some(GapReason::History),
        });
        for o in [8, 9, 10] {
            e.on_message(msg("e", o));
        }
        assert_eq!(offsets(&mut rx), ["resumed false", "8", "9", "10"]);
        // Another epoch: the gap, then live messages after the new top.
        let (mut e, mut rx) = entry(Some(Position::new("old", 4)), 16);
        e.on_reply(Position::new("new", 2));
        e.on_gap(Gap {
            epoch: "new".into(),
            from: 0,
            to: 0,
            reason: Some(GapReason::Epoch),
        });
        e.on_message(msg("new", 3));
        assert_eq!(offsets(&mut rx), ["resumed false", "3"]);
    }

    #[test]
    fn a_full_buffer_lags_and_resumes_from_the_last_delivered() {
        let (mut e, mut rx) = entry(None, 2);
        e.on_reply(Position::new("e", 0));
        assert_eq!(e.on_message(msg("e", 1)), Delivered::Yes);
        assert_eq!(e.on_message(msg("e", 2)), Delivered::Yes);
        assert_eq!(e.on_message(msg("e", 3)), Delivered::Lagging);
        assert_eq!(e.on_message(msg("e", 4)), Delivered::Lagging);
        assert!(e.shared.lagging.load(Ordering::Acquire));
        assert_eq!(offsets(&mut rx), ["1", "2"]);
        assert_eq!(
            e.resubscribe(ResumeCause::Lagged),
            (Some(Position::new("e", 2)), None)
        );
        // Live messages sent before the server took the new subscribe: dropped.
        e.on_message(msg("e", 5));
        e.on_reply(Position::new("e", 5));
        for o in [3, 4, 5, 6] {
            e.on_message(msg("e", o));
        }
        let got = offsets(&mut rx);
        assert_eq!(got, ["resumed true", "3"], "the buffer holds two");
        assert!(e.lagging, "full again");
    }

    fn at(epoch: &str, offset: u64) -> Position {
        Position::new(epoch, offset)
    }

    /// Whether a duplicate, the hole (epoch, from, to), and the `to` of the window left.
    type Verdict = (bool, Option<(String, u64, u64)>, Option<Option<u64>>);

    /// A hole of `epoch`, as [`check`] reports it.
    fn hole(epoch: &str, from: u64, to: u64) -> Option<(String, u64, u64)> {
        Some((epoch.to_owned(), from, to))
    }

    /// `check_next`'s verdict, and the window it leaves.
    fn check(
        last: Option<Position>,
        window: Option<(&str, Option<u64>)>,
        next: Position,
    ) -> Verdict {
        let mut window = window.map(|(e, to)| Window {
            epoch: Arc::from(e),
            to,
        });
        let verdict = check_next(last.as_ref(), &mut window, &next);
        let left = window.map(|w| w.to);
        match verdict {
            Err(Duplicate) => (true, None, left),
            Ok(hole) => (
                false,
                hole.map(|g| (g.epoch.to_string(), g.from, g.to)),
                left,
            ),
        }
    }

    #[test]
    fn the_next_message_is_in_order_a_duplicate_or_after_a_hole() {
        // In order, a duplicate (the same or an older offset), a hole.
        assert_eq!(
            check(Some(at("e", 4)), None, at("e", 5)),
            (false, None, None)
        );
        assert_eq!(
            check(Some(at("e", 4)), None, at("e", 4)),
            (true, None, None)
        );
        assert_eq!(
            check(Some(at("e", 4)), None, at("e", 2)),
            (true, None, None)
        );
        assert_eq!(
            check(Some(at("e", 4)), None, at("e", 9)),
            (false, hole("e", 5, 8), None)
        );
        // Another epoch without a gap from the server: all of it is lost.
        assert_eq!(
            check(Some(at("e", 4)), None, at("f", 1)),
            (false, hole("f", 0, 0), None)
        );
        // Nothing handed over yet: the caller checks the first message.
        assert_eq!(check(None, None, at("e", 9)), (false, None, None));
    }

    #[test]
    fn a_window_allows_its_offsets_to_be_missing_until_it_is_passed() {
        let conflated = Some(("e", Some(10)));
        // Within a conflated window: no hole, and the window stays.
        assert_eq!(
            check(Some(at("e", 4)), conflated, at("e", 8)),
            (false, None, Some(Some(10)))
        );
        // Just past it: no hole; further past it: a hole from after the window.
        assert_eq!(
            check(Some(at("e", 4)), conflated, at("e", 11)),
            (false, None, None)
        );
        assert_eq!(
            check(Some(at("e", 4)), conflated, at("e", 14)),
            (false, hole("e", 11, 13), None)
        );
        // A window of another epoch is dropped and allows nothing.
        assert_eq!(
            check(Some(at("e", 4)), Some(("old", Some(10))), at("e", 8)),
            (false, hole("e", 5, 7), None)
        );
        // A recreated stream's window: its next message, wherever it starts, then cleared.
        assert_eq!(
            check(Some(at("e", 4)), Some(("e", None)), at("e", 30)),
            (false, None, None)
        );
        // A duplicate is still one inside a window.
        assert_eq!(
            check(Some(at("e", 4)), conflated, at("e", 3)),
            (true, None, Some(Some(10)))
        );
    }
}
