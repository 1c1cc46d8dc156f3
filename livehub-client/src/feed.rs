//! What a topic's [`crate::Subscription`] and a [`crate::PatternSubscription`] share: the
//! channel the driver fills, the lag flag, and the commands that end or repair them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::{mpsc, oneshot};

use crate::driver::Command;
use crate::error::Error;

/// What a subscription's handle and the driver share.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    /// Set by the driver when the buffer was full and it dropped something; taken by the
    /// handle when it asks for the repair.
    pub(crate) lagging: AtomicBool,
}

/// Whether a feed follows one topic or a pattern (which commands end and repair it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Topic,
    Pattern,
}

/// The application's end of one subscription: it reads the events, asks for a repair once a
/// lagging buffer has room again, and unsubscribes when dropped.
#[derive(Debug)]
pub(crate) struct Feed<E> {
    kind: Kind,
    /// The topic, or the pattern.
    pub(crate) name: Arc<str>,
    id: u64,
    rx: mpsc::Receiver<E>,
    capacity: usize,
    shared: Arc<Shared>,
    cmds: mpsc::Sender<Command>,
    /// Ended (the channel is closed) or unsubscribed: nothing to send when dropped.
    done: bool,
}

impl<E> Feed<E> {
    /// The handle of subscription `id` (its channel holds at most `capacity` events).
    pub(crate) fn new(
        kind: Kind,
        name: Arc<str>,
        id: u64,
        rx: mpsc::Receiver<E>,
        capacity: usize,
        shared: Arc<Shared>,
        cmds: mpsc::Sender<Command>,
    ) -> Feed<E> {
        Feed {
            kind,
            name,
            id,
            rx,
            capacity,
            shared,
            cmds,
            done: false,
        }
    }

    /// The next event, if one is there; `Ready(None)` once the subscription has ended.
    pub(crate) fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<E>> {
        let polled = self.rx.poll_recv(cx);
        if let Poll::Ready(None) = polled {
            self.done = true;
        }
        self.repair_if_lagging(cx);
        polled
    }

    /// Unsubscribes, and waits for the server's answer.
    pub(crate) async fn unsubscribe(&mut self) -> Result<(), Error> {
        self.done = true;
        let (tx, rx) = oneshot::channel();
        let cmd = self.unsubscribe_command(Some(tx));
        self.cmds.send(cmd).await.map_err(|_| Error::Closed)?;
        rx.await.unwrap_or(Err(Error::Closed))
    }

    fn unsubscribe_command(&self, reply: Option<oneshot::Sender<Result<(), Error>>>) -> Command {
        let (name, sub) = (self.name.clone(), self.id);
        match self.kind {
            Kind::Topic => Command::Unsubscribe {
                topic: name,
                sub,
                reply,
            },
            Kind::Pattern => Command::PUnsubscribe {
                pattern: name,
                sub,
                reply,
            },
        }
    }

    /// Asks the driver to subscribe again from the last position, once a lagging
    /// subscription has room again (half its buffer read).
    fn repair_if_lagging(&mut self, cx: &mut Context<'_>) {
        if !self.shared.lagging.load(Ordering::Acquire) || self.rx.len() > self.capacity / 2 {
            return;
        }
        let (name, sub) = (self.name.clone(), self.id);
        let cmd = match self.kind {
            Kind::Topic => Command::Repair { topic: name, sub },
            Kind::Pattern => Command::PRepair { pattern: name, sub },
        };
        match self.cmds.try_send(cmd) {
            Ok(()) => self.shared.lagging.store(false, Ordering::Release),
            // The driver is busy: try again soon.
            Err(mpsc::error::TrySendError::Full(_)) => cx.waker().wake_by_ref(),
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
}

impl<E> Drop for Feed<E> {
    fn drop(&mut self) {
        if !self.done {
            // Best effort: should the driver's queue be full, the driver also notices the
            // closed channel at the next delivery.
            let _ = self.cmds.try_send(self.unsubscribe_command(None));
        }
    }
}
