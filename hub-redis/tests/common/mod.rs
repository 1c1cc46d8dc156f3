//! Test helpers: a Redis to talk to (shared, or started by the test), a recording node, and
//! engines attached to it.
//!
//! Without Redis (no server reachable, no `redis-server` installed) a test prints that it
//! skipped and passes, unless `HUB_REQUIRE_REDIS=1`: then it fails.

#![allow(dead_code)]

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use hub_core::broker::{Broker, EngineEvent, Node, NodeId, Publication, Retention};
use hub_core::Payload;
use hub_redis::{RedisEngine, RedisEngineBuilder};
use tokio::sync::mpsc::{self, error::TryRecvError, UnboundedReceiver, UnboundedSender};

/// The safety net for every wait on an event.
pub(crate) const WAIT: Duration = Duration::from_secs(15);

pub(crate) fn required() -> bool {
    std::env::var("HUB_REQUIRE_REDIS").as_deref() == Ok("1")
}

/// Says why the test does not run; fails instead when Redis is required.
pub(crate) fn skip(why: &str) {
    assert!(!required(), "HUB_REQUIRE_REDIS=1, but {why}");
    eprintln!("skipped: {why}");
}

fn ping(url: &str) -> Result<(), String> {
    let client = redis::Client::open(url).map_err(|e| e.to_string())?;
    let mut conn = client
        .get_connection_with_timeout(Duration::from_secs(2))
        .map_err(|e| e.to_string())?;
    redis::cmd("PING")
        .query::<String>(&mut conn)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

pub(crate) fn random_u64() -> u64 {
    getrandom::u64().expect("os randomness")
}

/// The shared Redis (`HUB_REDIS_URL`, default 127.0.0.1:6379) with a key prefix unique to
/// this test; its keys are deleted when this is dropped.
pub(crate) struct SharedRedis {
    pub(crate) url: String,
    pub(crate) prefix: String,
}

impl SharedRedis {
    pub(crate) fn get() -> Option<SharedRedis> {
        let url = std::env::var("HUB_REDIS_URL").unwrap_or("redis://127.0.0.1:6379".into());
        match ping(&url) {
            Ok(()) => Some(SharedRedis {
                url,
                prefix: format!("hubtest-{:016x}", random_u64()),
            }),
            Err(e) => {
                skip(&format!("no redis at {url}: {e}"));
                None
            }
        }
    }

    pub(crate) fn cli(&self) -> redis::Connection {
        connect(&self.url)
    }

    /// This prefix's keys (for checks).
    pub(crate) fn keys(&self) -> Vec<String> {
        prefix_keys(&mut self.cli(), &self.prefix)
    }
}

impl Drop for SharedRedis {
    fn drop(&mut self) {
        let Ok(client) = redis::Client::open(self.url.as_str()) else {
            return;
        };
        let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_secs(2)) else {
            return;
        };
        let keys = prefix_keys(&mut conn, &self.prefix);
        for chunk in keys.chunks(500) {
            let _: Result<(), _> = redis::cmd("DEL").arg(chunk).query(&mut conn);
        }
    }
}

fn connect(url: &str) -> redis::Connection {
    redis::Client::open(url)
        .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(2)))
        .expect("a plain connection to redis")
}

fn prefix_keys(conn: &mut redis::Connection, prefix: &str) -> Vec<String> {
    // `{<prefix>:...` and `{<prefix>}:...`, and nothing of a longer prefix.
    let pattern = format!("{{{prefix}[:}}]*");
    let mut cursor = 0u64;
    let mut keys = Vec::new();
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1000)
            .query(conn)
            .unwrap_or((0, Vec::new()));
        keys.extend(batch);
        if next == 0 {
            return keys;
        }
        cursor = next;
    }
}

/// A `redis-server` of the test's own, on a free port, killed (by pid) when dropped.
pub(crate) struct RedisServer {
    child: Option<Child>,
    pub(crate) port: u16,
}

impl RedisServer {
    pub(crate) fn start() -> Option<RedisServer> {
        if Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_err()
        {
            skip("redis-server is not installed");
            return None;
        }
        for _ in 0..5 {
            let port = RedisServer::free_port();
            let mut server = RedisServer { child: None, port };
            if server.spawn() {
                return Some(server);
            }
        }
        panic!("redis-server did not start");
    }

    /// A port nothing listens on (as far as anyone can know).
    pub(crate) fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port()
    }

    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn spawn(&mut self) -> bool {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(["--dir", &std::env::temp_dir().to_string_lossy()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server spawns");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if ping(&self.url()).is_ok() {
                return true;
            }
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        false
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub(crate) fn cli(&self) -> redis::Connection {
        connect(&self.url())
    }

    /// Kills the server (SIGKILL by pid): no goodbye to its clients, nothing saved.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again, empty, on the same port.
    pub(crate) fn restart(&mut self) {
        self.kill();
        assert!(self.spawn(), "redis-server restarts on port {}", self.port);
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

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

    fn wait(&self) {
        let open = self.open.lock().unwrap();
        let _unused = self
            .cv
            .wait_timeout_while(open, WAIT, |open| !*open)
            .unwrap();
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

pub(crate) fn json(value: serde_json::Value) -> Payload {
    Payload::from_value(&value).unwrap()
}

pub(crate) fn value(p: &Publication) -> serde_json::Value {
    p.data().decode().unwrap()
}
