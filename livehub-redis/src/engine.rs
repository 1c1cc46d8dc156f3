//! [`RedisEngine`] and its [`Broker`] side.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use livehub_core::broker::{
    Broker, BrokerError, BrokerInfo, Channel, EngineStats, History, HistoryFrom, Message, Node,
    Position, Publication, Retention, Route,
};
use livehub_core::Payload;
use redis::{IntoConnectionInfo, ProtocolVersion, PushInfo, Value};
use tokio::sync::{mpsc, watch, Mutex};
use tokio::task::AbortHandle;

use crate::builder::{BuildError, RedisEngineBuilder, Settings};
use crate::inbound::Counters;
use crate::keys::Keys;
use crate::link::Link;
use crate::scripts;
use crate::wire;

/// Topics per pipeline in `tops` and `tick`.
const TOPICS_PER_PIPELINE: usize = 1000;

/// Control messages written per pipeline by the writer.
const WRITE_BATCH: usize = 64;

/// The longest topic ttl passed to Redis (ten years): keeps the number exact in Lua.
const MAX_TTL_MS: u128 = 10 * 365 * 24 * 3600 * 1000;

/// The engine for several hub nodes over Redis: a [`Broker`] (topic streams, routes between
/// nodes) and a [`PresenceStore`](livehub_core::PresenceStore).
///
/// Cheap to clone (one shared engine); a host passes it to the hub twice, as broker and as
/// presence store. The engine's tasks stop when the last clone is dropped. See the crate docs
/// for the key layout, the failure behaviour and the bounds.
#[derive(Clone)]
pub struct RedisEngine {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    tasks: Vec<AbortHandle>,
}

impl Inner {
    fn close(&self) {
        self.shared.closed.store(true, Ordering::Release);
        for task in &self.tasks {
            task.abort();
        }
        self.shared.link.close();
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.close();
    }
}

/// A channel this node hears, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Sub {
    /// A topic's channel (its ttl is refreshed by `tick`).
    Topic(String),
    /// A room's channel.
    Room,
    /// The node's own channel or the all-nodes channel.
    Own,
    /// A pattern's glob (`PSUBSCRIBE`), and the hub patterns that share it (`scores/*` and
    /// `scores/**` have the same glob: it goes when the last of them goes).
    Pattern(std::collections::BTreeSet<String>),
}

/// A control message on its way to the writer.
pub(crate) struct Outgoing {
    channel: String,
    body: Vec<u8>,
}

/// Publishes waiting at most for the publisher task; beyond, a publish fails at once
/// (`engine_unavailable`: Redis is not keeping up).
const PUBLISH_QUEUE: usize = 16_384;
/// Publishes sent to Redis in one pipeline (one round trip).
const PUBLISH_BATCH: usize = 256;
/// Pipelines of publishes in flight at once.
const PIPELINES_IN_FLIGHT: usize = 2;
/// Publishes of one topic in one script call, at most (a call holds Redis for its length).
const PUBLISH_GROUP: usize = 64;
/// Payload bytes in one script call, at most (beyond, the next publish starts a new call; a
/// larger message goes alone). A call is one channel message, so this also bounds what one
/// entry of a node's inbound queue holds, as one large message did.
const PUBLISH_GROUP_BYTES: usize = 64 * 1024;

/// One publish, waiting for the publisher task.
struct PublishJob {
    topic: Arc<str>,
    message: Message,
    reply: tokio::sync::oneshot::Sender<Result<Position, BrokerError>>,
}

/// Everything the engine's tasks share.
pub(crate) struct Shared {
    pub(crate) settings: Settings,
    pub(crate) keys: Keys,
    pub(crate) client: redis::Client,
    pub(crate) runtime: tokio::runtime::Handle,
    pub(crate) link: Link,
    pub(crate) counters: Arc<Counters>,
    pub(crate) node: OnceLock<Arc<dyn Node>>,
    retention: OnceLock<Retention>,
    /// The channels this node hears (channel name -> why), resubscribed after a reconnect.
    /// An async lock: held across the `SUBSCRIBE` so that the set and Redis agree (not a hot
    /// path: taken on a topic's first subscriber and after its last).
    pub(crate) subs: Mutex<HashMap<String, Sub>>,
    /// Whether the node's own channels are subscribed now (see [`RedisEngine::ready`]).
    pub(crate) own_ready: watch::Sender<bool>,
    pub(crate) inbound_tx: mpsc::Sender<PushInfo>,
    outbound_tx: mpsc::Sender<Outgoing>,
    /// Publishes waiting for the publisher task, in the order they were made.
    publish_tx: mpsc::Sender<PublishJob>,
    /// A `tick` is refreshing ttls now (one at a time).
    ticking: AtomicBool,
    /// Closed ([`RedisEngine::close`], or the last handle dropped): loops stop.
    closed: AtomicBool,
}

pub(crate) fn random_u64() -> u64 {
    getrandom::u64().unwrap_or_else(|_| {
        // No OS randomness: the clock (an epoch must only differ, a jitter only spread).
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
    })
}

/// A fresh epoch candidate: 16 random hex digits.
fn new_epoch() -> String {
    format!("{:016x}", random_u64())
}

/// The `{epoch, offset}` the publish script answers.
fn position(reply: Value) -> Result<Position, BrokerError> {
    let Value::Array(items) = reply else {
        return Err(unexpected("a publish"));
    };
    let mut items = items.into_iter();
    match (items.next().and_then(text), items.next().and_then(number)) {
        (Some(epoch), Some(offset)) => Ok(Position::new(epoch, offset)),
        _ => Err(unexpected("a publish")),
    }
}

fn unexpected(what: &str) -> BrokerError {
    BrokerError::Engine(format!("unexpected reply from redis to {what}"))
}

fn text(v: Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b).ok(),
        Value::SimpleString(s) => Some(s),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

fn number(v: Value) -> Option<u64> {
    match v {
        Value::Int(i) => u64::try_from(i).ok(),
        other => text(other)?.parse().ok(),
    }
}

/// The offset of a stream entry id, `<offset>-0`.
fn entry_offset(id: &str) -> Option<u64> {
    id.split('-').next()?.parse().ok()
}

impl RedisEngine {
    /// Starts building an engine for the Redis at `url` (`redis://host:port`).
    pub fn builder(url: impl Into<String>) -> RedisEngineBuilder {
        RedisEngineBuilder::new(url)
    }

    pub(crate) async fn start(url: &str, settings: Settings) -> Result<RedisEngine, BuildError> {
        let info = url
            .into_connection_info()
            .map_err(|e| BuildError::Url(e.to_string()))?;
        // RESP3 always: pub/sub arrives as push messages on a connection that also answers
        // commands (PING).
        let redis_settings = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        let info = info.set_redis_settings(redis_settings);
        let client = redis::Client::open(info).map_err(|e| BuildError::Url(e.to_string()))?;
        let (inbound_tx, inbound_rx) = mpsc::channel(settings.inbound_queue);
        let (outbound_tx, outbound_rx) = mpsc::channel(settings.outbound_queue);
        let (publish_tx, publish_rx) = mpsc::channel(PUBLISH_QUEUE);
        let shared = Arc::new(Shared {
            keys: Keys::new(&settings.prefix),
            settings,
            client,
            runtime: tokio::runtime::Handle::current(),
            link: Link::new(),
            counters: Arc::new(Counters::default()),
            node: OnceLock::new(),
            retention: OnceLock::new(),
            subs: Mutex::new(HashMap::new()),
            own_ready: watch::Sender::new(false),
            inbound_tx,
            outbound_tx,
            publish_tx,
            ticking: AtomicBool::new(false),
            closed: AtomicBool::new(false),
        });
        let limit = shared.settings.connect_timeout * 2 + shared.settings.command_timeout;
        match tokio::time::timeout(limit, shared.connect_first()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(BuildError::Connect(e.to_string())),
            Err(_) => return Err(BuildError::Connect(format!("no answer within {limit:?}"))),
        }
        let tasks = vec![
            tokio::spawn(shared.clone().supervise()).abort_handle(),
            tokio::spawn(shared.clone().dispatch(inbound_rx)).abort_handle(),
            tokio::spawn(shared.clone().write(outbound_rx)).abort_handle(),
            tokio::spawn(shared.clone().publisher(publish_rx)).abort_handle(),
        ];
        Ok(RedisEngine {
            inner: Arc::new(Inner { shared, tasks }),
        })
    }

    pub(crate) fn shared(&self) -> &Shared {
        &self.inner.shared
    }

    /// Stops the engine: its tasks end, its connections close, and every operation fails
    /// with `engine_unavailable` from now on (the node gets no more events). Dropping the
    /// last handle does the same; this is for a host whose node and engine keep each other
    /// alive.
    pub fn close(&self) {
        self.inner.close();
    }

    /// Waits until this node hears its own routes ([`Route::Node`] and [`Route::All`]): they
    /// are subscribed right after [`Broker::attach`], and again after every reconnect. A host
    /// that must not miss a direct message sent right after startup awaits this once (with a
    /// timeout of its choice: it waits for as long as Redis is unreachable).
    pub async fn ready(&self) {
        let mut rx = self.shared().own_ready.subscribe();
        // An error means the sender is gone, which cannot happen while `self` lives.
        let _ = rx.wait_for(|ready| *ready).await;
    }
}

impl Shared {
    fn retention(&self) -> Retention {
        self.retention.get().copied().unwrap_or_default()
    }

    /// The topic ttl in ms as the scripts take it (`0`: none).
    fn ttl_ms(&self) -> String {
        match self.retention().topic_ttl {
            Some(ttl) => ttl.as_millis().clamp(1, MAX_TTL_MS).to_string(),
            None => "0".to_owned(),
        }
    }

    /// Whether `subs` holds the node's own channels (it does from attach on).
    pub(crate) fn own_channels_in(&self, subs: &HashMap<String, Sub>) -> bool {
        subs.get(self.keys.all_channel()) == Some(&Sub::Own)
    }

    async fn script(
        &self,
        invocation: redis::ScriptInvocation<'static>,
    ) -> Result<Value, BrokerError> {
        let mut conn = self.command_conn()?;
        // `invoke_async` answers NOSCRIPT by loading the script and calling it again.
        self.timed(async move { invocation.invoke_async::<Value>(&mut conn).await })
            .await
    }

    /// Subscribes the node's own channels, retrying until they are (a reconnect also does).
    async fn subscribe_own(self: Arc<Self>, names: [String; 2]) {
        loop {
            if *self.own_ready.borrow() || self.closed.load(Ordering::Acquire) {
                return;
            }
            if let Ok(mut conn) = self.sub_conn() {
                let subs = self.subs.lock().await;
                let exchange = conn.subscribe(&names);
                match tokio::time::timeout(self.settings.command_timeout, exchange).await {
                    Ok(Ok(())) => {
                        self.own_ready.send_replace(true);
                        drop(subs);
                        return;
                    }
                    Ok(Err(e)) => tracing::debug!(error = %e, "subscribing the node's channels"),
                    Err(_) => tracing::debug!("subscribing the node's channels timed out"),
                }
            }
            tokio::time::sleep(self.settings.backoff_min).await;
        }
    }

    /// Sends queued publishes to Redis, as many as are waiting (up to [`PUBLISH_BATCH`]) in one
    /// pipeline: one round trip for them all, and Redis runs them in the order they were made.
    /// Publishes of one topic queued next to each other go as one script call (up to
    /// [`PUBLISH_GROUP`]): Redis pays the topic's bookkeeping once for them. A call Redis
    /// refuses fails its publishes alone.
    ///
    /// Up to [`PIPELINES_IN_FLIGHT`] pipelines are in flight at once, so that Redis works on
    /// one while the answers of the other travel back. Their order holds: each pipeline takes
    /// its place in the connection's queue (first come, first served) before the next one is
    /// formed, and a pipeline that must run again (Redis lost the scripts) waits until the one
    /// before it is done.
    async fn publisher(self: Arc<Self>, mut rx: mpsc::Receiver<PublishJob>) {
        let slots = Arc::new(tokio::sync::Semaphore::new(PIPELINES_IN_FLIGHT));
        // Closed when the last batch is done.
        let mut last_done: Option<tokio::sync::oneshot::Receiver<()>> = None;
        loop {
            // A slot first: while both are busy, publishes gather into the next batch.
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            let mut batch = Vec::with_capacity(PUBLISH_BATCH);
            if rx.recv_many(&mut batch, PUBLISH_BATCH).await == 0 {
                return;
            }
            // Publishers woken by the last answers are about to publish again: let them, so
            // that they share this pipeline (and its script calls) instead of the next one.
            tokio::task::yield_now().await;
            while batch.len() < PUBLISH_BATCH {
                match rx.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            let (done, next_done) = tokio::sync::oneshot::channel();
            let after = last_done.replace(next_done);
            let mut run = Box::pin(self.clone().publish_batch(batch, slot, after, done));
            // Polled once here: the pipeline is queued on the connection before the next.
            let pending = std::future::poll_fn(|cx| {
                std::task::Poll::Ready(run.as_mut().poll(cx).is_pending())
            })
            .await;
            if pending {
                tokio::spawn(run);
            }
        }
    }

    /// Sends one batch of publishes as one pipeline and answers each (see [`Self::publisher`]);
    /// `_slot` is released and `_done` closed when the answers are in. `after` closes when
    /// the batch before this one is done.
    async fn publish_batch(
        self: Arc<Self>,
        mut batch: Vec<PublishJob>,
        _slot: tokio::sync::OwnedSemaphorePermit,
        after: Option<tokio::sync::oneshot::Receiver<()>>,
        _done: tokio::sync::oneshot::Sender<()>,
    ) {
        {
            let mut pipe = redis::pipe();
            pipe.ignore_errors();
            // The length of each call's run of jobs, in order.
            let mut groups: Vec<usize> = Vec::new();
            let mut start = 0;
            while start < batch.len() {
                let end = self.group_end(&batch, start);
                pipe.add_command(self.publish_call(&batch[start..end]));
                groups.push(end - start);
                start = end;
            }
            let answers = self.publish_pipeline(&pipe, after).await;
            match answers {
                Ok(answers) if answers.len() == groups.len() => {
                    let n = batch.len() as u64;
                    self.counters.messages_out.fetch_add(n, Ordering::Relaxed);
                    let mut jobs = batch.drain(..);
                    for (len, answer) in groups.into_iter().zip(answers) {
                        let first = answer.map_err(|e| self.map_error(e)).and_then(position);
                        for (i, job) in jobs.by_ref().take(len).enumerate() {
                            let _ = job.reply.send(
                                first
                                    .clone()
                                    .map(|p| Position::new(p.epoch.clone(), p.offset + i as u64)),
                            );
                        }
                    }
                }
                Ok(_) => {
                    for job in batch.drain(..) {
                        let _ = job.reply.send(Err(unexpected("a pipeline of publishes")));
                    }
                }
                Err(e) => {
                    for job in batch.drain(..) {
                        let _ = job.reply.send(Err(e.clone()));
                    }
                }
            }
        }
    }

    /// Where the run of publishes to `batch[start]`'s topic that can share its script call
    /// ends: the next job of another topic, [`PUBLISH_GROUP`] jobs or [`PUBLISH_GROUP_BYTES`].
    fn group_end(&self, batch: &[PublishJob], start: usize) -> usize {
        let topic = &batch[start].topic;
        let mut bytes = batch[start].message.data.as_bytes().len();
        let mut end = start + 1;
        while end < batch.len() && end - start < PUBLISH_GROUP && batch[end].topic == *topic {
            bytes += batch[end].message.data.as_bytes().len();
            if bytes > PUBLISH_GROUP_BYTES {
                break;
            }
            end += 1;
        }
        end
    }

    /// The script call that publishes `jobs` (all of one topic), in order.
    fn publish_call(&self, jobs: &[PublishJob]) -> redis::Cmd {
        let topic = &jobs[0].topic;
        let r = self.retention();
        let mut call = scripts::evalsha(
            &scripts::PUBLISH,
            &[&self.keys.topic_meta(topic), &self.keys.topic_stream(topic)],
        );
        call.arg(new_epoch())
            .arg(r.max_messages)
            .arg(r.max_bytes)
            .arg(self.ttl_ms())
            .arg(self.keys.topic_channel(topic));
        if jobs.len() > 1 {
            let items: Vec<wire::Item> = jobs
                .iter()
                .map(|job| wire::Item {
                    codec: job.message.data.codec(),
                    key: job.message.key.clone().map(|k| (k, job.message.delete)),
                    data: job.message.data.as_bytes().clone(),
                })
                .collect();
            call.arg(wire::batch_items(&items));
        } else {
            call.arg("");
        }
        for job in jobs {
            let data = &job.message.data;
            call.arg(&[wire::codec_tag(data.codec())][..])
                .arg(data.as_bytes().as_ref())
                .arg(job.message.key.as_deref().unwrap_or(""))
                .arg(if job.message.delete { "1" } else { "0" });
        }
        call
    }

    /// Runs a pipeline of publishes; when Redis lost the scripts (every call answered
    /// `NOSCRIPT`, so none ran), loads them and runs it once more, once the pipeline before it
    /// (`after`) is done: the publishes stay in order.
    async fn publish_pipeline(
        &self,
        pipe: &redis::Pipeline,
        after: Option<tokio::sync::oneshot::Receiver<()>>,
    ) -> Result<Vec<redis::RedisResult<Value>>, BrokerError> {
        let mut conn = self.command_conn()?;
        self.timed(async move {
            let answers: Vec<redis::RedisResult<Value>> = pipe.query_async(&mut conn).await?;
            let lost = !answers.is_empty()
                && answers.iter().all(|a| {
                    matches!(a, Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript))
                });
            if lost {
                tracing::info!("redis lost the hub's scripts: loading them again");
                if let Some(after) = after {
                    // Closed, never sent: either way the batch before is done.
                    let _ = after.await;
                }
                crate::link::load_scripts(&mut conn).await?;
                return pipe.query_async(&mut conn).await;
            }
            Ok(answers)
        })
        .await
    }

    /// Writes queued control messages, a pipeline at a time, for the engine's life.
    async fn write(self: Arc<Self>, mut rx: mpsc::Receiver<Outgoing>) {
        let mut batch = Vec::with_capacity(WRITE_BATCH);
        while rx.recv_many(&mut batch, WRITE_BATCH).await > 0 {
            let mut pipe = redis::pipe();
            for out in &batch {
                pipe.cmd("PUBLISH")
                    .arg(&out.channel)
                    .arg(&out.body)
                    .ignore();
            }
            match self.pipeline::<()>(&pipe).await {
                Ok(()) => {
                    let n = batch.len() as u64;
                    self.counters.messages_out.fetch_add(n, Ordering::Relaxed);
                }
                Err(e) => {
                    tracing::warn!(messages = batch.len(), error = %e, "control messages lost");
                }
            }
            batch.clear();
        }
    }

    /// Extends the ttl of every topic this node subscribes to.
    async fn refresh_ttls(&self) {
        let ttl = self.ttl_ms();
        let topics: Vec<String> = {
            let subs = self.subs.lock().await;
            subs.values()
                .filter_map(|s| match s {
                    Sub::Topic(t) => Some(t.clone()),
                    _ => None,
                })
                .collect()
        };
        for chunk in topics.chunks(TOPICS_PER_PIPELINE) {
            let mut pipe = redis::pipe();
            for topic in chunk {
                pipe.cmd("PEXPIRE")
                    .arg(self.keys.topic_meta(topic))
                    .arg(&ttl)
                    .ignore();
                pipe.cmd("PEXPIRE")
                    .arg(self.keys.topic_stream(topic))
                    .arg(&ttl)
                    .ignore();
            }
            if let Err(e) = self.pipeline::<()>(&pipe).await {
                tracing::warn!(error = %e, "refreshing topic ttls failed");
                return;
            }
        }
    }

    fn parse_history(&self, topic: &str, reply: Value) -> Result<History, BrokerError> {
        let Value::Array(items) = reply else {
            return Err(unexpected("a history read"));
        };
        let mut items = items.into_iter();
        let epoch: Arc<str> = items
            .next()
            .and_then(text)
            .ok_or_else(|| unexpected("a history read"))?
            .into();
        let top = items
            .next()
            .and_then(number)
            .ok_or_else(|| unexpected("a history read"))?;
        let topic: Arc<str> = Arc::from(topic);
        let mut publications = Vec::with_capacity(items.len() / 5);
        while let (Some(id), Some(codec), Some(data), Some(key), Some(delete)) = (
            items.next(),
            items.next(),
            items.next(),
            items.next(),
            items.next(),
        ) {
            let decoded = (|| {
                let offset = entry_offset(&text(id)?)?;
                let Value::BulkString(codec) = codec else {
                    return None;
                };
                let Value::BulkString(data) = data else {
                    return None;
                };
                let payload =
                    Payload::from_encoded(wire::codec_of(&codec)?, Bytes::from(data)).ok()?;
                let key = text(key)?;
                let message = if key.is_empty() {
                    Message::new(payload)
                } else {
                    let m = Message::keyed(payload, key);
                    if text(delete)? == "1" {
                        m.deleting()
                    } else {
                        m
                    }
                };
                Some((offset, message))
            })();
            match decoded {
                Some((offset, message)) => publications.push(Publication::of(
                    topic.clone(),
                    Position {
                        epoch: epoch.clone(),
                        offset,
                    },
                    message,
                )),
                None => {
                    // Keep the answer a contiguous suffix: what came before the bad entry is
                    // dropped too, and the reader sees a gap up to here.
                    self.counters.undecodable.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(topic = &*topic, "undecodable entry in a topic's history");
                    publications.clear();
                }
            }
        }
        Ok(History {
            top: Position { epoch, offset: top },
            publications,
        })
    }
}

#[async_trait]
impl Broker for RedisEngine {
    fn info(&self) -> BrokerInfo {
        BrokerInfo::shared("redis")
    }

    fn attach(&self, node: Arc<dyn Node>, retention: Retention) {
        let shared = &self.inner.shared;
        let id = node.id();
        if shared.node.set(node).is_err() {
            tracing::warn!("a redis engine is attached to one node only: second attach ignored");
            return;
        }
        let _ = shared.retention.set(retention);
        let names = [
            shared.keys.node_channel(id),
            shared.keys.all_channel().to_owned(),
        ];
        let task_shared = shared.clone();
        // attach is not async: the subscribe runs as a task (see `ready`).
        shared.runtime.spawn(async move {
            {
                let mut subs = task_shared.subs.lock().await;
                for name in &names {
                    subs.insert(name.clone(), Sub::Own);
                }
            }
            task_shared.subscribe_own(names).await;
        });
    }

    async fn publish(&self, topic: &str, message: Message) -> Result<Position, BrokerError> {
        let shared = self.shared();
        // At once when down: no queueing for a Redis that is not there.
        shared.command_conn()?;
        if message
            .key
            .as_ref()
            .is_some_and(|k| k.len() > usize::from(u16::MAX))
        {
            // The channel message gives a key two bytes of length (the hub's name limit is
            // far below; a host that raised it past 65,535 gets this).
            return Err(BrokerError::Engine(
                "a message key longer than 65,535 bytes".to_owned(),
            ));
        }
        let (reply, answer) = tokio::sync::oneshot::channel();
        // Queued in call order: a node's publishes reach Redis in the order they were made.
        shared
            .publish_tx
            .try_send(PublishJob {
                topic: Arc::from(topic),
                message,
                reply,
            })
            .map_err(|_| {
                BrokerError::Unavailable("too many publishes waiting for redis".to_owned())
            })?;
        // The publisher task answers within the command timeout (or the engine is closing).
        match answer.await {
            Ok(result) => result,
            Err(_) => Err(BrokerError::Unavailable("the engine is closed".to_owned())),
        }
    }

    async fn subscribe(&self, channel: Channel<'_>) -> Result<(), BrokerError> {
        let shared = self.shared();
        let name = shared.keys.channel(channel);
        let sub = match channel {
            Channel::Topic(t) => Sub::Topic(t.to_owned()),
            Channel::Room(_) => Sub::Room,
            Channel::Pattern(p) => Sub::Pattern([p.to_owned()].into()),
        };
        // At once when down (not after waiting for the lock).
        shared.sub_conn()?;
        shared
            .bounded(async {
                let mut subs = shared.subs.lock().await;
                if let Some(held) = subs.get_mut(&name) {
                    if let (Sub::Pattern(held), Sub::Pattern(new)) = (held, &sub) {
                        held.extend(new.iter().cloned());
                    }
                    return Ok(());
                }
                // The connection of now: a reconnect may have happened while waiting.
                let mut conn = shared.sub_conn()?;
                // Added only once Redis confirmed: the set never claims a channel that is not
                // subscribed (a reconnect waits for this lock, then resubscribes the set).
                let done = if matches!(sub, Sub::Pattern(_)) {
                    conn.psubscribe(&name).await
                } else {
                    conn.subscribe(&name).await
                };
                done.map_err(|e| shared.map_error(e))?;
                subs.insert(name.clone(), sub);
                Ok(())
            })
            .await
    }

    async fn unsubscribe(&self, channel: Channel<'_>) -> Result<(), BrokerError> {
        let shared = self.shared();
        let name = shared.keys.channel(channel);
        shared
            .bounded(async {
                let mut subs = shared.subs.lock().await;
                if let (Some(Sub::Pattern(held)), Channel::Pattern(p)) =
                    (subs.get_mut(&name), channel)
                {
                    held.remove(p);
                    if !held.is_empty() {
                        // Another pattern of this node has the same glob.
                        return Ok(());
                    }
                }
                let Some(sub) = subs.remove(&name) else {
                    return Ok(());
                };
                // Disconnected: nothing to undo, a reconnect does not resubscribe it.
                match shared.sub_conn() {
                    Ok(mut conn) => {
                        let done = if matches!(sub, Sub::Pattern(_)) {
                            conn.punsubscribe(&name).await
                        } else {
                            conn.unsubscribe(&name).await
                        };
                        done.map_err(|e| shared.map_error(e))
                    }
                    Err(_) => Ok(()),
                }
            })
            .await
    }

    async fn history(&self, topic: &str, from: HistoryFrom) -> Result<History, BrokerError> {
        let shared = self.shared();
        let (mode, epoch, arg) = match &from {
            HistoryFrom::Top => ("t", "", String::new()),
            HistoryFrom::After(p) => match p.offset.checked_add(1) {
                Some(next) => ("a", &*p.epoch, format!("{next}-0")),
                None => ("t", "", String::new()),
            },
            HistoryFrom::Last(0) => ("t", "", String::new()),
            // Redis counts in i64.
            HistoryFrom::Last(n) => ("l", "", (*n).min(i64::MAX as usize).to_string()),
        };
        let mut invocation = scripts::HISTORY.prepare_invoke();
        invocation
            .key(shared.keys.topic_meta(topic))
            .key(shared.keys.topic_stream(topic))
            .arg(new_epoch())
            .arg(shared.ttl_ms())
            .arg(mode)
            .arg(epoch)
            .arg(arg);
        let reply = shared.script(invocation).await?;
        shared.parse_history(topic, reply)
    }

    async fn tops(&self, topics: &[Arc<str>]) -> Result<Vec<Option<Position>>, BrokerError> {
        let shared = self.shared();
        let mut out = Vec::with_capacity(topics.len());
        for chunk in topics.chunks(TOPICS_PER_PIPELINE) {
            let mut pipe = redis::pipe();
            for topic in chunk {
                pipe.cmd("HMGET")
                    .arg(shared.keys.topic_meta(topic))
                    .arg("e")
                    .arg("o");
            }
            let replies: Vec<Value> = shared.pipeline(&pipe).await?;
            if replies.len() != chunk.len() {
                return Err(unexpected("HMGET"));
            }
            for reply in replies {
                let Value::Array(fields) = reply else {
                    return Err(unexpected("HMGET"));
                };
                let mut fields = fields.into_iter();
                let epoch = fields.next().and_then(text);
                let offset = fields.next().and_then(number);
                out.push(match (epoch, offset) {
                    (Some(epoch), Some(offset)) => Some(Position::new(epoch, offset)),
                    _ => None,
                });
            }
        }
        Ok(out)
    }

    fn send(&self, route: Route<'_>, message: Bytes) -> Result<(), BrokerError> {
        let shared = self.shared();
        let Some(node) = shared.node.get() else {
            return Err(BrokerError::Unavailable(
                "the engine is not attached to a node".to_owned(),
            ));
        };
        if !shared.link.is_connected() {
            return Err(BrokerError::Unavailable(
                "not connected to redis (reconnecting)".to_owned(),
            ));
        }
        let out = Outgoing {
            channel: shared.keys.route(route),
            body: wire::control(node.id(), &message),
        };
        shared.outbound_tx.try_send(out).map_err(|_| {
            BrokerError::Unavailable(format!(
                "the outgoing queue to redis is full ({} messages)",
                shared.settings.outbound_queue
            ))
        })
    }

    fn stats(&self) -> EngineStats {
        let shared = self.shared();
        let c = &shared.counters;
        let mut stats = EngineStats::named("redis");
        stats.connected = shared.link.is_connected();
        stats.reconnects = c.reconnects.load(Ordering::Relaxed);
        stats.messages_in = c.messages_in.load(Ordering::Relaxed);
        stats.messages_out = c.messages_out.load(Ordering::Relaxed);
        stats.dropped_in = c.dropped_in.load(Ordering::Relaxed);
        stats.undecodable = c.undecodable.load(Ordering::Relaxed);
        let pending = shared.settings.inbound_queue - shared.inbound_tx.capacity();
        stats.pending_in = pending as u64;
        stats
    }

    /// Extends the ttl of every topic this node subscribes to (in the background; one run at
    /// a time), so that a topic with subscribers never expires.
    fn tick(&self) {
        let shared = self.inner.shared.clone();
        if shared.retention().topic_ttl.is_none() || !shared.link.is_connected() {
            return;
        }
        if shared.ticking.swap(true, Ordering::AcqRel) {
            return;
        }
        shared.runtime.clone().spawn(async move {
            shared.refresh_ttls().await;
            shared.ticking.store(false, Ordering::Release);
        });
    }
}

impl std::fmt::Debug for RedisEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shared = self.shared();
        f.debug_struct("RedisEngine")
            .field("prefix", &shared.settings.prefix)
            .field("connected", &shared.link.is_connected())
            .finish()
    }
}

/// How long before a member of a dead node is gone, with these settings.
pub(crate) fn presence_bound(settings: &Settings) -> Duration {
    settings.presence_ttl + settings.presence_refresh
}
