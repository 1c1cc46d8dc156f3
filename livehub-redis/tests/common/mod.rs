//! Test helpers: a Redis to talk to (shared, or started by the test: `servers.rs`, shared
//! with the root crate's cluster tests), a recording node, and engines attached to it.

#![allow(dead_code)]

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use livehub_core::broker::{Broker, EngineEvent, Message, Node, NodeId, Publication, Retention};
use livehub_core::Payload;
use livehub_redis::{RedisEngine, RedisEngineBuilder};
use tokio::sync::mpsc::{self, error::TryRecvError, UnboundedReceiver, UnboundedSender};

mod servers;
pub(crate) use servers::*;

/// The safety net for every wait on an event.
/// (Generous: a busy machine runs these tests too; only a failing test waits this long.)
pub(crate) const WAIT: Duration = Duration::from_secs(60);

/// Holds `deliver` until opened (to fill the inbound queue).
#[derive(Default)]
pub(crate) struct Gate {
    open: Mutex<bool>,
    cv: Condvar,
}

impl Gate {
    pub(crate) fn open(&self) {
        *self.open.lock().unwrap() = true;
        self.cv.notify_all();
    }

    /// Blocks until the gate opens (at most `2 * WAIT`). Called from the engine's dispatch
    /// task, so on a multi-thread runtime it hands the worker's other tasks to another thread
    /// first (`block_in_place`): a task woken into this worker's LIFO slot would otherwise
    /// wait for the gate too, and with it whatever awaits that task.
    fn wait(&self) {
        let block = || {
            let open = self.open.lock().unwrap();
            let _unused = self
                .cv
                .wait_timeout_while(open, 2 * WAIT, |open| !*open)
                .unwrap();
        };
        match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
            Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(block),
            _ => block(),
        }
    }
}

/// A node that records everything the engine hands it.
pub(crate) struct Recorder {
    id: NodeId,
    deliveries: UnboundedSender<Publication>,
    controls: UnboundedSender<Vec<u8>>,
    events: UnboundedSender<EngineEvent>,
    undecodable: UnboundedSender<(Option<String>, String)>,
    gate: Option<Arc<Gate>>,
}

impl Node for Recorder {
    fn id(&self) -> NodeId {
        self.id
    }

    fn deliver(&self, publication: Publication) {
        if let Some(gate) = &self.gate {
            gate.wait();
        }
        let _ = self.deliveries.send(publication);
    }

    fn control(&self, message: &[u8]) {
        let _ = self.controls.send(message.to_vec());
    }

    fn engine_event(&self, event: EngineEvent) {
        let _ = self.events.send(event);
    }

    fn undecodable(&self, topic: Option<&str>, error: &str) {
        let _ = self
            .undecodable
            .send((topic.map(str::to_owned), error.to_owned()));
    }
}

async fn next<T>(rx: &mut UnboundedReceiver<T>, what: &str) -> T {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .unwrap_or_else(|_| panic!("no {what} within {WAIT:?}"))
        .expect("recorder alive")
}

/// What a [`Recorder`] heard, to await in order.
pub(crate) struct Heard {
    pub(crate) deliveries: UnboundedReceiver<Publication>,
    pub(crate) controls: UnboundedReceiver<Vec<u8>>,
    pub(crate) events: UnboundedReceiver<EngineEvent>,
    pub(crate) undecodable: UnboundedReceiver<(Option<String>, String)>,
}

impl Heard {
    pub(crate) async fn delivery(&mut self) -> Publication {
        next(&mut self.deliveries, "delivery").await
    }

    pub(crate) async fn control(&mut self) -> Vec<u8> {
        next(&mut self.controls, "control message").await
    }

    pub(crate) async fn event(&mut self) -> EngineEvent {
        next(&mut self.events, "engine event").await
    }

    pub(crate) async fn undecodable(&mut self) -> (Option<String>, String) {
        next(&mut self.undecodable, "undecodable report").await
    }

    /// Control messages until (and with) `last`.
    pub(crate) async fn controls_until(&mut self, last: &[u8]) -> Vec<Vec<u8>> {
        let mut seen = Vec::new();
        loop {
            let m = self.control().await;
            let done = m == last;
            seen.push(m);
            if done {
                return seen;
            }
        }
    }

    pub(crate) fn nothing_delivered_yet(&mut self) -> bool {
        matches!(self.deliveries.try_recv(), Err(TryRecvError::Empty))
    }
}

pub(crate) fn recorder(gate: Option<Arc<Gate>>) -> (Arc<Recorder>, Heard) {
    let (d, deliveries) = mpsc::unbounded_channel();
    let (c, controls) = mpsc::unbounded_channel();
    let (e, events) = mpsc::unbounded_channel();
    let (u, undecodable) = mpsc::unbounded_channel();
    let node = Recorder {
        id: NodeId(random_u64() as u32),
        deliveries: d,
        controls: c,
        events: e,
        undecodable: u,
        gate,
    };
    (
        Arc::new(node),
        Heard {
            deliveries,
            controls,
            events,
            undecodable,
        },
    )
}

/// An engine attached to a recording node.
pub(crate) struct TestNode {
    pub(crate) engine: RedisEngine,
    pub(crate) heard: Heard,
    pub(crate) id: NodeId,
}

pub(crate) struct NodeOptions {
    pub(crate) retention: Retention,
    pub(crate) gate: Option<Arc<Gate>>,
    pub(crate) builder: fn(RedisEngineBuilder) -> RedisEngineBuilder,
}

impl Default for NodeOptions {
    fn default() -> Self {
        NodeOptions {
            retention: Retention::default(),
            gate: None,
            builder: |b| b,
        }
    }
}

pub(crate) async fn node(url: &str, prefix: &str, options: NodeOptions) -> TestNode {
    let builder = RedisEngine::builder(url).prefix(prefix);
    let engine = (options.builder)(builder)
        .build()
        .await
        .expect("the engine connects");
    let (recorder, heard) = recorder(options.gate);
    let id = recorder.id();
    engine.attach(recorder, options.retention);
    tokio::time::timeout(WAIT, engine.ready())
        .await
        .expect("the node's own channels are subscribed");
    TestNode { engine, heard, id }
}

/// A message (without a key) of a JSON value.
pub(crate) fn json(value: serde_json::Value) -> Message {
    Message::new(Payload::from_value(&value).unwrap())
}

pub(crate) fn value(p: &Publication) -> serde_json::Value {
    p.data().decode().unwrap()
}
