//! Client commands: decoding a client's frame, running it, answering it.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use serde_json::json;

use crate::broker::{HistoryFrom, Message};
use crate::codec::Payload;
use crate::error::{DisconnectReason, ErrorCode, RoomError};
use crate::frame::Frame;
use crate::hooks::{Action, EventContext};
use crate::hub::Hub;
use crate::names::{check_name, truncate, valid_event, valid_key};
use crate::node::Inner;
use crate::presence::Scope;
use crate::session::{lock, Rate, SessionState};
use crate::stats::Stats;
use crate::streams::{OpError, SubscribeReq};
use livehub_protocol::{ClientFrame, ClientOp, Scope as WireScope};

/// A client's publishes waiting for the engine at once; beyond, the next frame is read only
/// once one is answered.
const PUBLISHES_IN_FLIGHT: usize = 64;

impl Hub {
    /// Publishes a client's message. The engine fixes its place in the stream at once (the
    /// first poll of its publish); its answer may come later: meanwhile the client's next
    /// frames are read and run (up to [`PUBLISHES_IN_FLIGHT`] publishes waiting), so that a
    /// client publishing through a shared engine is not held to one round trip per message.
    /// Its `reply` (or `error`) is queued when the engine answers.
    async fn publish_pipelined(
        &self,
        s: &Arc<SessionState>,
        id: Option<u64>,
        topic: String,
        message: Message,
    ) {
        let inner = self.inner.clone();
        let session = s.clone();
        let start = std::time::Instant::now();
        let broker = inner.broker.clone();
        let mut publish = Box::pin(async move { broker.publish(&topic, message).await });
        let first =
            std::future::poll_fn(|cx| std::task::Poll::Ready(publish.as_mut().poll(cx))).await;
        match first {
            std::task::Poll::Ready(result) => finish_publish(&inner, &session, id, start, result),
            std::task::Poll::Pending => {
                let waiting = session.publishes_waiting.fetch_add(1, Ordering::AcqRel);
                if waiting >= PUBLISHES_IN_FLIGHT || tokio::runtime::Handle::try_current().is_err()
                {
                    let result = publish.await;
                    session.publishes_waiting.fetch_sub(1, Ordering::AcqRel);
                    finish_publish(&inner, &session, id, start, result);
                } else {
                    let (inner, session) = (inner.clone(), session.clone());
                    tokio::spawn(async move {
                        let result = publish.await;
                        session.publishes_waiting.fetch_sub(1, Ordering::AcqRel);
                        finish_publish(&inner, &session, id, start, result);
                    });
                }
            }
        }
        // Reading this client's next frame waits while fan-out is congested.
        inner.pace().await;
    }
}

/// Answers a client's publish: its position, or the engine's refusal.
fn finish_publish(
    inner: &Inner,
    s: &Arc<SessionState>,
    id: Option<u64>,
    start: std::time::Instant,
    result: Result<crate::broker::Position, crate::broker::BrokerError>,
) {
    match result {
        Ok(pos) => {
            inner.stats.publish_latency.since(start);
            Stats::add(&inner.stats.published, 1);
            if let Some(id) = id {
                let reply = json!({"epoch": &*pos.epoch, "offset": pos.offset});
                match Payload::from_value(&reply) {
                    Ok(data) => inner.push_one(s, Frame::Reply { id, data }),
                    Err(e) => inner.send_error(s, Some(id), ErrorCode::Internal, e.to_string()),
                }
            }
        }
        Err(e) => inner.send_error(s, id, e.code(), e.to_string()),
    }
}

/// A client's message with its key, checked.
fn message(
    data: Payload,
    key: Option<String>,
    delete: bool,
    max: usize,
) -> Result<Message, OpError> {
    match key {
        Some(key) if valid_key(&key, max) => {
            let m = Message::keyed(data, key);
            Ok(if delete { m.deleting() } else { m })
        }
        Some(_) => Err((
            ErrorCode::BadKey,
            format!("a key is 1 to {max} bytes without control characters"),
        )),
        None if delete => Err((ErrorCode::BadKey, "`delete` needs a `key`".to_owned())),
        None => Ok(Message::new(data)),
    }
}

fn internal(e: impl std::fmt::Display) -> OpError {
    (ErrorCode::Internal, e.to_string())
}

impl Hub {
    /// The scope of a `presence` or `presence_count`: a topic the session follows, or a room
    /// it is in.
    fn presence_scope<'a>(
        &self,
        s: &SessionState,
        scope: &'a WireScope,
    ) -> Result<Scope<'a>, OpError> {
        let max = self.inner.config.max_name_len;
        match scope {
            WireScope::Topic(topic) => {
                check_name(topic, max, ErrorCode::BadTopic)?;
                if !lock(&s.membership).topics.contains(&**topic) {
                    return Err((
                        ErrorCode::NotSubscribed,
                        format!("not subscribed to {topic}"),
                    ));
                }
                Ok(Scope::Topic(topic))
            }
            WireScope::Room(room) => {
                check_name(room, max, ErrorCode::BadRoom)?;
                if !lock(&s.membership).rooms.contains(&**room) {
                    return Err((ErrorCode::NotMember, format!("not in room {room}")));
                }
                Ok(Scope::Room(room))
            }
        }
    }

    pub(crate) async fn handle_frame(&self, s: &Arc<SessionState>, bytes: Bytes) {
        let inner = &self.inner;
        let now = inner.now_ms();
        s.touch(now);
        Stats::add(&inner.stats.frames_in, 1);
        Stats::add(&inner.stats.bytes_in, bytes.len() as u64);
        if let Some(limit) = &inner.config.rate_limit {
            match s.take_token(limit, now) {
                Rate::Ok => {}
                Rate::Limited => {
                    let msg = format!("at most {} frames per second", limit.per_second);
                    inner.send_error(s, None, ErrorCode::RateLimited, msg);
                    return;
                }
                Rate::Flood => {
                    inner.close_session(s, DisconnectReason::RateLimited);
                    return;
                }
            }
        }
        if bytes.len() > inner.config.max_frame_size {
            let msg = format!("frame over {} bytes", inner.config.max_frame_size);
            inner.send_error(s, None, ErrorCode::FrameTooLarge, msg);
            return;
        }
        let frame = match ClientFrame::decode(s.codec, &bytes) {
            Ok(f) => f,
            Err(e) => {
                inner.send_error(s, e.id(), e.code(), e.message().to_owned());
                return;
            }
        };
        let id = frame.id;
        match self.run(s, frame).await {
            Ok(None) => {}
            Ok(Some(data)) => {
                if let Some(id) = id {
                    inner.push_one(s, Frame::Reply { id, data });
                }
            }
            Err((code, message)) => inner.send_error(s, id, code, message),
        }
    }

    pub(crate) async fn subscribe_session(
        &self,
        s: &Arc<SessionState>,
        topic: &str,
        from: HistoryFrom,
    ) -> Result<(), crate::transport::CommandError> {
        let to_err = |(code, message): OpError| crate::transport::CommandError { code, message };
        check_name(topic, self.inner.config.max_name_len, ErrorCode::BadTopic).map_err(to_err)?;
        let hooks = &self.inner.config.hooks;
        if !hooks.authorize(&s.identity, Action::Subscribe(topic)).await {
            return Err(to_err((
                ErrorCode::Forbidden,
                format!("not allowed to subscribe to {topic}"),
            )));
        }
        self.inner
            .subscribe(
                s,
                topic,
                SubscribeReq {
                    id: None,
                    from,
                    presence: livehub_protocol::PresenceEvents::None,
                    conflate: self.inner.conflates(topic),
                    via_pattern: false,
                },
            )
            .await
            .map_err(to_err)
    }

    /// Runs one client operation. `Ok(None)`: nothing more to send (it answered itself).
    async fn run(&self, s: &Arc<SessionState>, f: ClientFrame) -> Result<Option<Payload>, OpError> {
        let inner = &self.inner;
        let hooks = &inner.config.hooks;
        let max = inner.config.max_name_len;
        match f.op {
            ClientOp::Subscribe {
                topic,
                since,
                last,
                presence,
                conflate,
            } => {
                check_name(&topic, max, ErrorCode::BadTopic)?;
                if !hooks
                    .authorize(&s.identity, Action::Subscribe(&topic))
                    .await
                {
                    return Err((
                        ErrorCode::Forbidden,
                        format!("not allowed to subscribe to {topic}"),
                    ));
                }
                inner
                    .subscribe(
                        s,
                        &topic,
                        SubscribeReq {
                            id: f.id,
                            from: match (since, last) {
                                (Some(p), _) => HistoryFrom::After(p),
                                (None, Some(n)) => {
                                    HistoryFrom::Last(usize::try_from(n).unwrap_or(usize::MAX))
                                }
                                (None, None) => HistoryFrom::Top,
                            },
                            presence,
                            conflate: conflate.unwrap_or_else(|| inner.conflates(&topic)),
                            via_pattern: false,
                        },
                    )
                    .await?;
                Ok(None)
            }
            ClientOp::Unsubscribe { topic } => {
                check_name(&topic, max, ErrorCode::BadTopic)?;
                inner.unsubscribe(s, &topic)?;
                Ok(Some(Payload::null()))
            }
            ClientOp::PSubscribe { pattern, positions } => {
                let pattern = crate::patterns::Pattern::parse(&pattern, max)?;
                if !hooks
                    .authorize(&s.identity, Action::SubscribePattern(&pattern.text))
                    .await
                {
                    return Err((
                        ErrorCode::Forbidden,
                        format!("not allowed to subscribe to {}", pattern.text),
                    ));
                }
                let text = pattern.text.clone();
                inner.psubscribe(s, pattern, positions).await?;
                Ok(Some(
                    Payload::from_value(&serde_json::json!({ "pattern": &*text }))
                        .unwrap_or_else(|_| Payload::null()),
                ))
            }
            ClientOp::PUnsubscribe { pattern } => {
                inner.punsubscribe(s, &pattern)?;
                Ok(Some(Payload::null()))
            }
            ClientOp::Publish {
                topic,
                data,
                key,
                delete,
            } => {
                check_name(&topic, max, ErrorCode::BadTopic)?;
                let message = message(data, key, delete, max)?;
                if !hooks.authorize(&s.identity, Action::Publish(&topic)).await {
                    return Err((
                        ErrorCode::Forbidden,
                        format!("not allowed to publish to {topic}"),
                    ));
                }
                self.publish_pipelined(s, f.id, topic, message).await;
                Ok(None)
            }
            ClientOp::Event { event, data } => {
                if !valid_event(&event, max) {
                    return Err((
                        ErrorCode::BadEvent,
                        format!("event name must be 1 to {max} bytes"),
                    ));
                }
                let Some(handler) = inner.config.handlers.get(&event).cloned() else {
                    return Err((
                        ErrorCode::UnknownEvent,
                        format!("no handler for event {:?}", truncate(&event, 64)),
                    ));
                };
                let ctx = EventContext {
                    hub: self.clone(),
                    session: s.id,
                    identity: s.identity.clone(),
                    event: Arc::from(event.as_str()),
                };
                match handler.call(ctx, data).await {
                    Ok(reply) => Ok(Some(reply.unwrap_or_default())),
                    Err(e) => Err((ErrorCode::HandlerError, e.to_string())),
                }
            }
            ClientOp::Join { room } => {
                check_name(&room, max, ErrorCode::BadRoom)?;
                if !hooks.authorize(&s.identity, Action::Join(&room)).await {
                    return Err((ErrorCode::Forbidden, format!("not allowed to join {room}")));
                }
                match inner.join_room(s, &room).await {
                    Ok(()) => Ok(Some(Payload::null())),
                    Err(RoomError::TooManyRooms) => Err((
                        ErrorCode::TooManyRooms,
                        format!("at most {} rooms", inner.config.max_rooms_per_session),
                    )),
                    Err(RoomError::BadRoom) => Err((ErrorCode::BadRoom, "bad room name".into())),
                    Err(RoomError::NoSession) => Ok(None),
                    Err(RoomError::Engine(e)) => Err((e.code(), e.to_string())),
                }
            }
            ClientOp::Leave { room } => {
                check_name(&room, max, ErrorCode::BadRoom)?;
                if inner.leave_room(s, &room) {
                    Ok(Some(Payload::null()))
                } else {
                    Err((ErrorCode::NotMember, format!("not in room {room}")))
                }
            }
            ClientOp::Presence {
                scope,
                limit,
                cursor,
            } => {
                let scope = self.presence_scope(s, &scope)?;
                // A limit past `usize` is past any page maximum: `bad_limit` all the same.
                let limit = limit.map(|n| usize::try_from(n).unwrap_or(usize::MAX));
                let page = inner
                    .members_page(scope, cursor.as_deref(), limit)
                    .await
                    .map_err(|e| (e.code(), e.to_string()))?;
                Payload::from_value(&page).map(Some).map_err(internal)
            }
            ClientOp::PresenceCount(scope) => {
                let scope = self.presence_scope(s, &scope)?;
                let count = inner
                    .presence_count(scope)
                    .await
                    .map_err(|e| (e.code(), e.to_string()))?;
                Payload::from_value(&count).map(Some).map_err(internal)
            }
            ClientOp::Ping => {
                inner.push_one(s, Frame::Pong { id: f.id });
                Ok(None)
            }
            ClientOp::Ack { ack, data } => match inner.answer(s, ack, data) {
                Ok(()) => Ok(Some(Payload::null())),
                Err(code) => Err((code, format!("no event waits for ack {ack}"))),
            },
            other => Err((
                ErrorCode::UnknownType,
                format!("unknown frame type {:?}", other.kind()),
            )),
        }
    }
}
