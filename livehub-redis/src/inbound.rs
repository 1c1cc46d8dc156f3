//! What Redis sends: from the pub/sub connection, through one bounded queue, to the node.
//!
//! The connection's reader calls [`Inbox::send`] for every push message and must never wait:
//! the inbox only counts and queues (`try_send`). When the queue is full the message is
//! dropped and counted (`dropped_in`): the node sees a hole by offset, or finds it against the
//! stream's top, and repairs it from history or sends a `gap`. One task drains the queue in
//! order, decodes and hands each message to the node.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use livehub_core::broker::{self, Node, Position, Publication};
use livehub_core::Payload;
use redis::aio::{AsyncPushSender, SendError};
use redis::{PushInfo, PushKind, Value};
use tokio::sync::mpsc;

use crate::engine::Shared;
use crate::keys::ChannelName;
use crate::link::Watch;
use crate::wire::{self, Message};

/// The engine's counters (see `EngineStats`).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) reconnects: AtomicU64,
    pub(crate) messages_in: AtomicU64,
    pub(crate) messages_out: AtomicU64,
    pub(crate) dropped_in: AtomicU64,
    pub(crate) undecodable: AtomicU64,
}

/// The push sender of the pub/sub connection.
pub(crate) struct Inbox {
    pub(crate) watch: Watch,
    pub(crate) tx: mpsc::Sender<PushInfo>,
    pub(crate) counters: Arc<Counters>,
}

impl AsyncPushSender for Inbox {
    fn send(&self, info: PushInfo) -> Result<(), SendError> {
        match info.kind {
            PushKind::Message | PushKind::SMessage | PushKind::PMessage => {
                self.counters.messages_in.fetch_add(1, Ordering::Relaxed);
                if self.tx.try_send(info).is_err() {
                    // Full (or the engine is closing): never wait in Redis's reader.
                    self.counters.dropped_in.fetch_add(1, Ordering::Relaxed);
                }
            }
            PushKind::Disconnection => self.watch.send(info)?,
            _ => {}
        }
        Ok(())
    }
}

fn into_bytes(v: Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.into_bytes()),
        _ => None,
    }
}

impl Shared {
    /// Drains the inbound queue for the engine's life.
    pub(crate) async fn dispatch(self: Arc<Self>, mut rx: mpsc::Receiver<PushInfo>) {
        while let Some(info) = rx.recv().await {
            // Before attach nothing is subscribed; a stray message has nowhere to go.
            if let Some(node) = self.node.get() {
                self.handle(&**node, info);
            }
        }
    }

    fn handle(&self, node: &dyn Node, info: PushInfo) {
        let mut data = info.data.into_iter();
        if info.kind == PushKind::PMessage {
            // [pattern, channel, body]: the channel names the topic.
            data.next();
        }
        let (Some(channel), Some(body)) = (
            data.next().and_then(into_bytes),
            data.next().and_then(into_bytes),
        ) else {
            return self.undecodable(node, None, "a push message without channel and body");
        };
        let Some(channel) = self.keys.parse_channel(&channel) else {
            return self.undecodable(node, None, "a message on a channel outside the layout");
        };
        let topic = match channel {
            ChannelName::Topic(t) => Some(t),
            _ => None,
        };
        match wire::decode(body) {
            Err(e) => self.undecodable(node, topic, &e.to_string()),
            Ok(Message::Control { origin, message }) => {
                // The sender does not hear itself.
                if origin != node.id() {
                    node.control(&message);
                }
            }
            Ok(Message::Publication {
                codec,
                epoch,
                offset,
                key,
                data,
            }) => {
                let Some(topic) = self.publication_topic(node, topic) else {
                    return;
                };
                self.deliver(node, &topic, Position { epoch, offset }, codec, key, data);
            }
            Ok(Message::Batch {
                epoch,
                first,
                items,
            }) => {
                let Some(topic) = self.publication_topic(node, topic) else {
                    return;
                };
                // Counted per publication, like single ones (the push was counted once).
                let more = items.len().saturating_sub(1) as u64;
                self.counters.messages_in.fetch_add(more, Ordering::Relaxed);
                for (offset, item) in (first..).zip(items) {
                    let at = Position::new(epoch.clone(), offset);
                    self.deliver(node, &topic, at, item.codec, item.key, item.data);
                }
            }
        }
    }

    /// Hands one publication to the node (or counts it undecodable: the node sends a `gap`).
    fn deliver(
        &self,
        node: &dyn Node,
        topic: &Arc<str>,
        at: Position,
        codec: livehub_core::Codec,
        key: Option<(Arc<str>, bool)>,
        data: bytes::Bytes,
    ) {
        match Payload::from_encoded(codec, data) {
            Ok(payload) => {
                let message = match key {
                    Some((key, false)) => broker::Message::keyed(payload, key),
                    Some((key, true)) => broker::Message::keyed(payload, key).deleting(),
                    None => broker::Message::new(payload),
                };
                node.deliver(Publication::of(topic.clone(), at, message));
            }
            Err(e) => {
                let error = format!("publication data does not decode: {e}");
                self.undecodable(node, Some(topic), &error);
            }
        }
    }

    /// The topic a publication came for; one on any other kind of channel is undecodable.
    fn publication_topic(&self, node: &dyn Node, topic: Option<&str>) -> Option<Arc<str>> {
        if topic.is_none() {
            self.undecodable(node, None, "a publication on a non-topic channel");
        }
        topic.map(Arc::from)
    }

    fn undecodable(&self, node: &dyn Node, topic: Option<&str>, error: &str) {
        self.counters.undecodable.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(topic, error, "undecodable message from redis");
        node.undecodable(topic, error);
    }
}
