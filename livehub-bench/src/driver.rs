//! The driver: starts the server under test in its own process, spawns load processes, runs a
//! scenario, reads the server's CPU and memory from `/proc`, and reports one JSON line (stdout)
//! and a readable table (stderr) per run. Every child is killed when the run ends, even on
//! error (`kill_on_drop`), and every child also exits on its own when its stdin closes.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::deploy::{spawn, Deployment, Proc};
use crate::load::{Endpoint, Publisher};
use crate::msg::{Codec, Enc};
use crate::util::{err, median, proc_cpu, Hist, Opts, Res};

/// What serves a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `livehub-bench server`, tuned (see server.rs).
    Hub,
    /// `livehub-bench server --http axum`: the hub as README shows it.
    Axum,
    /// The Node `ws` peer.
    Node,
    /// The Bun peer (`Bun.serve` with its topic pub/sub).
    Bun,
}

/// The engine behind our server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Engine {
    /// The in-process engine (one node).
    Memory,
    /// One node over Redis.
    Redis,
    /// Several nodes over Redis: the publisher on node 0, subscribers on the others.
    Cluster,
}

/// What is measured: our hub over WebSocket in one encoding, our hub's SSE streams (published
/// to over WebSocket), the hub over Redis (one node or several), the hub as README serves it,
/// or a peer (Node `ws`, Bun).
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// The name in reports (`ws-json`, `ws-msgpack`, `sse`, `node-ws`, `ws-json@current`).
    pub(crate) name: String,
    /// The encoding of the bench's frames.
    pub(crate) enc: Enc,
    /// What serves it.
    pub(crate) kind: Kind,
    /// Subscribers use server-sent events.
    pub(crate) sse: bool,
    /// SSE streams over HTTP/2 (cleartext, prior knowledge), many per connection.
    pub(crate) h2: bool,
    /// Subscribers use long-polling.
    pub(crate) poll: bool,
    /// The engine (our server only).
    pub(crate) engine: Engine,
    /// The server's runtime, from a `@current`, `@multi` or `@multi:N` suffix (`N` workers):
    /// our tuned server only; none: multi-thread with `--threads` (default: its CPUs).
    pub(crate) runtime: Option<(String, Option<usize>)>,
    /// The server is started from `--alt-exe` (suffix `+alt`: an A/B of two builds of our
    /// server, driven and loaded by this one).
    pub(crate) alt: bool,
}

impl Target {
    /// Parses a target name, with an optional runtime suffix (`ws-json@multi:2`).
    pub(crate) fn parse(name: &str) -> Res<Target> {
        let (plain, alt) = match name.strip_suffix("+alt") {
            Some(p) => (p, true),
            None => (name, false),
        };
        let (base, rt) = match plain.split_once('@') {
            Some((b, r)) => (b, Some(r)),
            None => (plain, None),
        };
        let (enc, kind, engine) = match base {
            "ws-json" | "sse" | "sse-h2" | "poll" => (Enc::Json, Kind::Hub, Engine::Memory),
            "ws-msgpack" => (Enc::MsgPack, Kind::Hub, Engine::Memory),
            "ws-redis" => (Enc::Json, Kind::Hub, Engine::Redis),
            "ws-cluster" => (Enc::Json, Kind::Hub, Engine::Cluster),
            "ws-axum" => (Enc::Json, Kind::Axum, Engine::Memory),
            "node-ws" => (Enc::Json, Kind::Node, Engine::Memory),
            "node-ws-msgpack" => (Enc::MsgPack, Kind::Node, Engine::Memory),
            "bun-ws" => (Enc::Json, Kind::Bun, Engine::Memory),
            "bun-ws-msgpack" => (Enc::MsgPack, Kind::Bun, Engine::Memory),
            _ => return Err(err(format!("unknown target {name}"))),
        };
        let runtime = match rt {
            None => None,
            Some(_) if kind != Kind::Hub => {
                return Err(err(format!(
                    "{name}: a runtime suffix applies to our tuned server only (ws-axum is \
                     always #[tokio::main])"
                )))
            }
            Some("current") => Some(("current".to_owned(), None)),
            Some("multi") => Some(("multi".to_owned(), None)),
            Some(r) => match r.strip_prefix("multi:").map(str::parse::<usize>) {
                Some(Ok(n)) if n > 0 => Some(("multi".to_owned(), Some(n))),
                _ => {
                    return Err(err(format!(
                        "{name}: runtime suffix @current, @multi or @multi:N"
                    )))
                }
            },
        };
        Ok(Target {
            name: name.to_owned(),
            enc,
            kind,
            sse: base == "sse" || base == "sse-h2",
            h2: base == "sse-h2",
            poll: base == "poll",
            engine,
            runtime,
            alt,
        })
    }

    /// Whether it is our hub (it speaks the protocol and answers `stats`).
    pub(crate) fn hub(&self) -> bool {
        matches!(self.kind, Kind::Hub | Kind::Axum)
    }
}

/// Settings shared by every run of one invocation.
#[derive(Debug, Clone)]
pub(crate) struct Env {
    pub(crate) exe: PathBuf,
    /// Another build of livehub-bench whose `server` the `+alt` targets run (`--alt-exe`).
    pub(crate) alt_exe: Option<PathBuf>,
    /// Pin the server to CPU 0 and the load (driver and load processes) to CPU 1.
    pub(crate) pin: bool,
    pub(crate) peer_dir: PathBuf,
    pub(crate) bun_dir: PathBuf,
    pub(crate) node: String,
    pub(crate) queue: usize,
    per_child: usize,
    timeout: f64,
    pub(crate) threads: Option<usize>,
    /// Extra `--name value` options for our server (`pacing-ms`).
    pub(crate) server_extra: Vec<String>,
    /// A shared Redis for the Redis targets (`--redis`); none: a `redis-server` per run.
    pub(crate) redis_url: Option<String>,
    /// The shared Redis's pid, to read its CPU (`--redis-pid`).
    pub(crate) redis_pid: Option<u32>,
    /// The program to start Redis with (`--redis-server`, default `redis-server`).
    pub(crate) redis_server: String,
    /// The CPU the driver's own Redis is pinned to (`--redis-cpu N|none`, default 1).
    pub(crate) redis_cpu: Option<usize>,
    /// Nodes of a `ws-cluster` (`--nodes`, default 3: the publisher's and two for
    /// subscribers).
    pub(crate) cluster_nodes: usize,
}

impl Env {
    /// Reads the shared options.
    pub(crate) fn from_opts(opts: &Opts) -> Res<Env> {
        let exe = std::env::current_exe()?;
        let can_pin = std::thread::available_parallelism().map_or(1, |n| n.get()) >= 2
            && std::process::Command::new("taskset")
                .arg("-V")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
        let pin = match opts.str("pin").unwrap_or("auto") {
            "auto" => can_pin,
            "on" | "true" => true,
            _ => false,
        };
        let dir = |opt: &str, default: &str| {
            opts.str(opt)
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(default))
        };
        Ok(Env {
            exe,
            alt_exe: opts.str("alt-exe").map(PathBuf::from),
            pin,
            peer_dir: dir("peer-dir", "peer"),
            bun_dir: dir("bun-dir", "peer-bun"),
            node: opts.str("node").unwrap_or("node").to_owned(),
            queue: opts.get("queue", 1024)?,
            per_child: opts.get("per-child", 5000)?,
            timeout: opts.get("timeout", 120.0)?,
            threads: opts.str("threads").and_then(|t| t.parse().ok()),
            server_extra: ["pacing-ms", "conflate"]
                .iter()
                .filter_map(|k| opts.str(k).map(|v| [format!("--{k}"), v.to_owned()]))
                .flatten()
                .collect(),
            redis_url: opts.str("redis").map(str::to_owned),
            redis_pid: opts.str("redis-pid").and_then(|p| p.parse().ok()),
            redis_server: opts
                .str("redis-server")
                .unwrap_or("redis-server")
                .to_owned(),
            redis_cpu: match opts.str("redis-cpu") {
                Some("none" | "off") => None,
                Some(c) => Some(c.parse().map_err(|_| err("--redis-cpu N|none"))?),
                None => Some(1),
            },
            cluster_nodes: opts.get("nodes", 3)?,
        })
    }

    /// Says what pinning does, and pins this process (the driver is load) to CPU 1.
    pub(crate) fn pin_self(&self) {
        if !self.pin {
            eprintln!("livehub-bench: no CPU pinning (server and load share the CPUs)");
            return;
        }
        let pid = std::process::id().to_string();
        let ok = std::process::Command::new("taskset")
            .args(["-a", "-p", "-c", "1", &pid])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        eprintln!(
            "livehub-bench: server pinned to CPU 0 (taskset -c 0; every node of a cluster too); \
             driver and load processes to CPU 1 (taskset -c 1); a Redis of the driver's own to {}{}",
            self.redis_cpu.map_or("no CPU in particular".to_owned(), |c| format!("CPU {c}")),
            if ok { "" } else { " [pinning the driver failed]" }
        );
    }
}

/// The next second octet of load processes' source addresses (127.N.child.1), starting from
/// the process id so that back-to-back invocations use different ones.
static SRC_NET: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Seeds [`SRC_NET`] (once per driver process).
pub(crate) fn seed_src_net() {
    SRC_NET.store(
        std::process::id().wrapping_mul(7),
        std::sync::atomic::Ordering::Relaxed,
    );
}

/// The load processes of one run.
struct Loads {
    procs: Vec<Proc>,
    events: mpsc::UnboundedReceiver<(usize, Value)>,
}

impl Loads {
    async fn spawn(env: &Env, n: usize, args: impl Fn(usize) -> Vec<String>) -> Res<Loads> {
        let (tx, events) = mpsc::unbounded_channel();
        let mut procs = Vec::new();
        for i in 0..n {
            let mut a = vec!["load".to_owned()];
            a.extend(args(i));
            // Each load process connects from its own loopback address (see ws.rs), a fresh
            // one per run: the previous run's closed connections hold their ports in
            // TIME_WAIT for a minute, which slows the kernel's search for free ports.
            let net = SRC_NET.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            a.extend([
                "--src".to_owned(),
                format!("127.{}.{}.1", 2 + net % 250, 1 + i % 250),
            ]);
            procs.push(spawn(
                env,
                Some(1),
                env.exe.as_os_str(),
                &a,
                &[],
                i,
                tx.clone(),
            )?);
        }
        Ok(Loads { procs, events })
    }

    async fn send_all(&mut self, line: &str) {
        for p in &mut self.procs {
            p.send(line).await;
        }
    }

    /// Waits until every load process has sent an event `ev` (or the deadline passes); other
    /// events go to `other`.
    async fn wait_all(
        &mut self,
        ev: &str,
        timeout: Duration,
        mut other: impl FnMut(usize, &Value),
    ) -> Vec<Option<Value>> {
        let mut got: Vec<Option<Value>> = vec![None; self.procs.len()];
        let deadline = tokio::time::Instant::now() + timeout;
        while got.iter().any(Option::is_none) {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some((i, v))) => {
                    if v.get("ev").and_then(Value::as_str) == Some(ev) {
                        got[i] = Some(v);
                    } else {
                        other(i, &v);
                    }
                }
                _ => break,
            }
        }
        got
    }

    fn cpu(&self) -> f64 {
        self.procs.iter().map(|p| proc_cpu(p.pid)).sum::<f64>() + proc_cpu(std::process::id())
    }

    async fn kill(self) {
        for p in self.procs {
            p.kill().await;
        }
    }
}

/// CPU times at the start of a measured phase: every node's and Redis's.
struct Cpu {
    at: Instant,
    nodes: Vec<f64>,
    redis: Option<f64>,
}

/// What the server side used during a phase (seconds of CPU, and of wall clock).
struct Side {
    /// All nodes together.
    server_s: f64,
    nodes_s: Vec<f64>,
    redis_s: Option<f64>,
    secs: f64,
}

impl Cpu {
    fn read(dep: &Deployment) -> Cpu {
        Cpu {
            at: Instant::now(),
            nodes: dep.cpus(),
            redis: dep.redis_cpu(),
        }
    }

    fn since(&self, dep: &Deployment) -> Side {
        let nodes_s: Vec<f64> = dep
            .cpus()
            .iter()
            .zip(&self.nodes)
            .map(|(now, then)| now - then)
            .collect();
        Side {
            server_s: nodes_s.iter().sum(),
            nodes_s,
            redis_s: dep
                .redis_cpu()
                .zip(self.redis)
                .map(|(now, then)| now - then),
            secs: self.at.elapsed().as_secs_f64(),
        }
    }
}

/// Adds the server side's figures to a report.
trait WithServer {
    fn with_server(self, side: &Side, stats: &[Value]) -> Value;
}

impl WithServer for Value {
    /// `server_stats` (one node's counters, or every node's as a list), the counters of
    /// interest summed over the nodes (`slow_consumer_closes`, `paced`, `pace_timeouts`,
    /// `dropped`; null for a peer), Redis's CPU (`redis_cpu_pct`, when its pid is known) and
    /// each node's CPU in a cluster (`node_cpu_pct`).
    fn with_server(mut self, side: &Side, stats: &[Value]) -> Value {
        let Value::Object(m) = &mut self else {
            return self;
        };
        let total = |f: &dyn Fn(&Value) -> Option<u64>| -> Value {
            if stats.is_empty() || stats.iter().all(Value::is_null) {
                Value::Null
            } else {
                json!(stats.iter().filter_map(f).sum::<u64>())
            }
        };
        m.insert(
            "slow_consumer_closes".into(),
            total(&|s| Some(s["disconnects"]["slow_consumer"].as_u64().unwrap_or(0))),
        );
        for k in ["paced", "pace_timeouts", "dropped"] {
            m.insert(k.into(), total(&|s| s[k].as_u64()));
        }
        let pct = |cpu: f64| 100.0 * cpu / side.secs.max(1e-9);
        m.insert("redis_cpu_pct".into(), json!(side.redis_s.map(pct)));
        if side.nodes_s.len() > 1 {
            m.insert("nodes".into(), json!(side.nodes_s.len()));
            let per: Vec<f64> = side.nodes_s.iter().map(|&c| pct(c)).collect();
            m.insert("node_cpu_pct".into(), json!(per));
        }
        m.insert(
            "server_stats".into(),
            match stats {
                [] => Value::Null,
                [one] => one.clone(),
                all => json!(all),
            },
        );
        self
    }
}

fn sum(vals: &[Option<Value>], key: &str) -> u64 {
    vals.iter()
        .flatten()
        .filter_map(|v| v.get(key).and_then(Value::as_u64))
        .sum()
}

fn samples(vals: &[Option<Value>]) -> Vec<String> {
    vals.iter()
        .flatten()
        .filter_map(|v| v.get("samples").and_then(Value::as_array))
        .flatten()
        .filter_map(|s| s.as_str().map(str::to_owned))
        .take(5)
        .collect()
}

fn endpoint(dep: &Deployment, target: &Target) -> Endpoint {
    let ws_path = if target.hub() {
        format!("/ws?encoding={}", target.enc.name())
    } else {
        "/".to_owned()
    };
    Endpoint {
        addr: dep.addr(),
        sub_addrs: dep.sub_addrs(),
        path: if target.sse {
            "/sse?topic=bench".to_owned()
        } else if target.poll {
            "/poll?encoding=json".to_owned()
        } else {
            ws_path.clone()
        },
        hub: target.hub(),
        src: None,
        sse: target.sse,
        h2: target.h2,
        poll: target.poll,
        pub_path: ws_path,
    }
}

fn load_args(ep: &Endpoint, target: &Target, extra: &[(&str, String)]) -> Vec<String> {
    let mut a = vec![
        "--addr".to_owned(),
        ep.addr.to_string(),
        "--path".to_owned(),
        ep.path.clone(),
        "--server".to_owned(),
        if ep.hub { "hub" } else { "plain" }.to_owned(),
        "--encoding".to_owned(),
        target.enc.name().to_owned(),
        "--pub-path".to_owned(),
        ep.pub_path.clone(),
        "--transport".to_owned(),
        if ep.h2 {
            "sse-h2"
        } else if ep.sse {
            "sse"
        } else if ep.poll {
            "poll"
        } else {
            "ws"
        }
        .to_owned(),
    ];
    if !ep.sub_addrs.is_empty() {
        let addrs: Vec<String> = ep.sub_addrs.iter().map(ToString::to_string).collect();
        a.extend(["--sub-addrs".to_owned(), addrs.join(",")]);
    }
    for (k, v) in extra {
        a.push(format!("--{k}"));
        a.push(v.clone());
    }
    a
}

fn split(total: usize, per: usize) -> Vec<usize> {
    let n = total.div_ceil(per.max(1)).max(1);
    (0..n)
        .map(|i| total / n + usize::from(i < total % n))
        .collect()
}

/// Parameters of one run.
#[derive(Debug, Clone)]
pub(crate) struct Case {
    /// `fanout`, `latency`, `conns`, `burst` or `publish`.
    pub(crate) scenario: String,
    /// Subscribers (fan-out, latency) or connections (conns).
    pub(crate) n: usize,
    /// Messages (fan-out: at most; burst: exactly; publish: at most, per phase).
    pub(crate) msgs: u64,
    /// Payload bytes.
    pub(crate) bytes: usize,
    /// In-flight window (fan-out).
    pub(crate) window: u64,
    /// Messages per second (latency).
    pub(crate) rate: f64,
    /// Seconds of publishing (fan-out: at most; latency: exactly; publish: at most, per
    /// phase) or of holding (conns).
    pub(crate) secs: f64,
    /// Concurrent host publishers (publish: the second phase; the first has one).
    pub(crate) tasks: usize,
    /// Topics the host publishers spread over (publish).
    pub(crate) topics: usize,
    /// Publishing clients (fan-out, burst), on the first node, sharing the stream's numbers.
    pub(crate) publishers: usize,
    /// The publishing clients key their messages over this many keys (0: no keys).
    pub(crate) keys: u64,
}

impl Case {
    /// Reads a case from options (`--scenario`, `--subs`/`--conns`, ...).
    pub(crate) fn from_opts(opts: &Opts) -> Res<Case> {
        let scenario = opts.str("scenario").unwrap_or("fanout").to_owned();
        let n_is_conns = matches!(scenario.as_str(), "conns" | "memory" | "connect");
        let n = match scenario.as_str() {
            "conns" | "memory" | "connect" => opts.get("conns", 10_000)?,
            _ => opts.get("subs", 1000)?,
        };
        let msgs = match scenario.as_str() {
            "burst" => 2000,
            _ => 1_000_000,
        };
        Ok(Case {
            tasks: opts.get("tasks", 64)?,
            topics: opts.get("topics", 1)?,
            publishers: opts.get("publishers", 1)?,
            keys: opts.get("keys", 0)?,
            scenario,
            n,
            msgs: opts.get("msgs", msgs)?,
            bytes: opts.get("bytes", 100)?,
            window: opts.get("window", 0)?,
            rate: opts.get("rate", 50.0)?,
            secs: opts.get("secs", if n_is_conns { 2.0 } else { 5.0 })?,
        })
    }

    /// A short label (`fanout n=1000`).
    pub(crate) fn label(&self) -> String {
        match self.scenario.as_str() {
            "fanout" if self.publishers > 1 => format!(
                "fanout {} subs, {} publishers, {} s",
                self.n, self.publishers, self.secs
            ),
            "fanout" => format!("fanout {} subs, {} s", self.n, self.secs),
            "latency" => format!("latency {} subs @ {} msg/s", self.n, self.rate),
            "burst" => format!("burst of {} to {} subs", self.msgs, self.n),
            "publish" => format!(
                "host publishes, 1 and {} tasks, {} topic(s)",
                self.tasks, self.topics
            ),
            _ => format!("conns {}", self.n),
        }
    }
}

/// Runs one case against one target; always returns a report (errors are in it).
pub(crate) async fn run_case(env: &Env, case: &Case, target: &Target) -> Value {
    let started = Instant::now();
    let mut report = match case.scenario.as_str() {
        "fanout" => fanout(env, case, target).await,
        "latency" => latency(env, case, target).await,
        "conns" | "memory" | "connect" => conns(env, case, target).await,
        "burst" => burst(env, case, target).await,
        "publish" => publish(env, case, target).await,
        s => Err(err(format!("unknown scenario {s}"))),
    }
    .unwrap_or_else(|e| json!({"errors": 1, "error": e.to_string()}));
    if let Value::Object(m) = &mut report {
        m.insert("scenario".into(), json!(case.scenario));
        m.insert("target".into(), json!(target.name));
        m.insert("pinned".into(), json!(env.pin));
        m.insert("wall_s".into(), json!(started.elapsed().as_secs_f64()));
    }
    report
}

/// The subscribers of a fan-out or a burst, connected, and the publisher.
struct Subscribed {
    loads: Loads,
    /// Subscribers per load process.
    parts: Vec<usize>,
    connected: Vec<Option<Value>>,
    ready: u64,
    errors: u64,
    connect_s: f64,
    /// The publishers (`case.publishers`, on the first node), each with its share of the
    /// numbers (see `Publisher::publish_lane`).
    publishers: Publishers,
}

/// Several publishers, sharing the numbers of one stream.
struct Publishers(Vec<Publisher>);

impl Publishers {
    /// Publishes `from..=to`: each publisher its own numbers, one write each.
    async fn publish(&mut self, from: u64, to: u64) -> Res<()> {
        let lanes = self.0.len() as u64;
        for (lane, p) in (0..).zip(self.0.iter_mut()) {
            p.publish_lane(from, to, lanes, lane, 0).await?;
        }
        Ok(())
    }

    async fn close(&mut self) {
        for p in &mut self.0 {
            p.close().await;
        }
    }

    fn errors(&self) -> u64 {
        self.0.iter().map(|p| p.errors.get()).sum()
    }

    fn samples(&self) -> Vec<String> {
        self.0
            .iter()
            .flat_map(|p| p.samples.borrow().clone())
            .collect()
    }
}

/// Spawns the load processes for `case.n` subscribers in `mode` (`step`: how often they
/// report progress), connects them, then the publisher (to the first node).
async fn subscribe(
    env: &Env,
    case: &Case,
    target: &Target,
    ep: &Endpoint,
    mode: &str,
    step: u64,
) -> Res<Subscribed> {
    let parts = split(case.n, env.per_child);
    let mut loads = Loads::spawn(env, parts.len(), |i| {
        load_args(
            ep,
            target,
            &[
                ("subs", parts[i].to_string()),
                ("msgs", case.msgs.to_string()),
                ("bytes", case.bytes.to_string()),
                ("mode", mode.into()),
                ("step", step.to_string()),
                ("publishers", case.publishers.to_string()),
                ("timeout", env.timeout.to_string()),
            ],
        )
    })
    .await?;
    let t_connect = Instant::now();
    loads.send_all("connect").await;
    let connected = loads
        .wait_all("connected", Duration::from_secs_f64(env.timeout), |_, _| {})
        .await;
    let connect_s = t_connect.elapsed().as_secs_f64();
    let ready = sum(&connected, "ready");
    let mut errors = sum(&connected, "failed");
    if connected.iter().any(Option::is_none) {
        errors += 1;
    }
    let codec = Codec::new(target.enc, case.bytes, "bench").with_keys(case.keys);
    let mut publishers = Vec::new();
    for _ in 0..case.publishers.max(1) {
        publishers.push(Publisher::connect(ep, codec.clone()).await?);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    Ok(Subscribed {
        loads,
        parts,
        connected,
        ready,
        errors,
        connect_s,
        publishers: Publishers(publishers),
    })
}

async fn fanout(env: &Env, case: &Case, target: &Target) -> Res<Value> {
    // In flight: below the hub's queue capacity (so no subscriber can overflow), and about
    // 500,000 deliveries at most (so that both servers hold similar amounts of data in flight).
    let window = if case.window > 0 {
        case.window
    } else {
        (env.queue as u64 / 2)
            .min((500_000 / case.n.max(1) as u64).max(16))
            .max(1)
    };
    let step = (window / 16).max(1);
    let mut dep = Deployment::start(env, target).await?;
    let ep = endpoint(&dep, target);
    let Subscribed {
        mut loads,
        parts,
        connected,
        ready,
        mut errors,
        connect_s,
        mut publishers,
    } = subscribe(env, case, target, &ep, "fanout", step).await?;
    let (rss_before, _) = dep.mem();

    let cpu0 = Cpu::read(&dep);
    let cpu_l0 = loads.cpu();
    let t0 = Instant::now();
    let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(env.timeout);
    let budget = Duration::from_secs_f64(case.secs);
    let mut lows = vec![0u64; loads.procs.len()];
    let mut next = 1u64;
    // The last message to publish: `case.msgs`, or fewer once the time budget is spent.
    let mut last = case.msgs;
    let mut timed_out = false;
    loop {
        let low = lows.iter().copied().min().unwrap_or(0);
        if low >= last || ready == 0 {
            break;
        }
        if last == case.msgs && t0.elapsed() >= budget {
            last = next - 1;
            loads.send_all(&format!("last {last}")).await;
            continue;
        }
        let allowed = last.min(low + window);
        if next <= allowed {
            publishers.publish(next, allowed).await?;
            next = allowed + 1;
        }
        match tokio::time::timeout_at(deadline, loads.events.recv()).await {
            Ok(Some((i, v))) => {
                if let Some(l) = v.get("low").and_then(Value::as_u64) {
                    lows[i] = lows[i].max(l);
                }
            }
            _ => {
                timed_out = true;
                break;
            }
        }
    }
    let published = next - 1;
    publishers.close().await;
    let elapsed = t0.elapsed().as_secs_f64();
    let side = cpu0.since(&dep);
    let cpu_s = side.server_s;
    let cpu_l = loads.cpu() - cpu_l0;
    let (rss, hwm) = dep.mem();
    let stats = dep.stats().await;

    loads.send_all("stop").await;
    let done = loads
        .wait_all("done", Duration::from_secs(20), |_, _| {})
        .await;
    loads.kill().await;
    dep.stop().await;

    let received = sum(&done, "received");
    let expected = ready * published;
    let loss = expected.saturating_sub(received) + (case.n as u64 - ready) * published;
    errors += sum(&done, "errors") + sum(&done, "disorder") + publishers.errors();
    if done.iter().any(Option::is_none) {
        errors += 1;
    }
    let mut errs = samples(&connected);
    errs.extend(samples(&done));
    errs.extend(publishers.samples());
    Ok(json!({
        "subs": case.n,
        "msgs": published,
        "max_msgs": case.msgs,
        "budget_s": case.secs,
        "bytes": case.bytes,
        "window": window,
        "publishers": case.publishers,
        "queue": env.queue,
        "load_procs": loads_len(&parts),
        "connect_s": connect_s,
        "elapsed_s": elapsed,
        "timed_out": timed_out,
        "deliveries": received,
        "expected": case.n as u64 * published,
        "loss": loss,
        "errors": errors,
        "error_samples": errs,
        "deliveries_per_s": received as f64 / elapsed.max(1e-9),
        "deliveries_per_server_cpu_s": received as f64 / cpu_s.max(1e-9),
        "msgs_per_s": published as f64 / elapsed.max(1e-9),
        "server_cpu_pct": 100.0 * cpu_s / elapsed.max(1e-9),
        "load_cpu_pct": 100.0 * cpu_l / elapsed.max(1e-9),
        "server_rss_before_kb": rss_before,
        "server_rss_kb": rss,
        "server_hwm_kb": hwm,
    })
    .with_server(&side, &stats))
}

fn loads_len(parts: &[usize]) -> usize {
    parts.len()
}

async fn latency(env: &Env, case: &Case, target: &Target) -> Res<Value> {
    if case.n > 18_000 {
        return Err(err(
            "latency runs keep all subscribers in one process: at most 18000",
        ));
    }
    let msgs = ((case.rate * case.secs).round() as u64).max(1);
    let mut dep = Deployment::start(env, target).await?;
    let ep = endpoint(&dep, target);
    let mut loads = Loads::spawn(env, 1, |_| {
        load_args(
            &ep,
            target,
            &[
                ("subs", case.n.to_string()),
                ("msgs", msgs.to_string()),
                ("bytes", case.bytes.to_string()),
                ("mode", "latency".into()),
                ("rate", case.rate.to_string()),
                ("timeout", env.timeout.to_string()),
            ],
        )
    })
    .await?;
    loads.send_all("connect").await;
    let connected = loads
        .wait_all("connected", Duration::from_secs_f64(env.timeout), |_, _| {})
        .await;
    let ready = sum(&connected, "ready");
    let mut errors = sum(&connected, "failed");
    let cpu0 = Cpu::read(&dep);
    let cpu_l0 = loads.cpu();
    let t0 = Instant::now();
    loads.send_all("start").await;
    let done = loads
        .wait_all(
            "done",
            Duration::from_secs_f64(case.secs * 2.0 + 30.0),
            |_, _| {},
        )
        .await;
    let elapsed = t0.elapsed().as_secs_f64();
    let side = cpu0.since(&dep);
    let cpu_s = side.server_s;
    let cpu_l = loads.cpu() - cpu_l0;
    let (rss, hwm) = dep.mem();
    let stats = dep.stats().await;
    loads.send_all("stop").await;
    loads.kill().await;
    dep.stop().await;

    let mut hist = Hist::new();
    let mut ttf = Hist::new();
    let mut ttl = Hist::new();
    for d in done.iter().flatten() {
        if let Some(lat) = d.get("lat") {
            let pairs: Vec<[u64; 2]> =
                serde_json::from_value(lat["hist"].clone()).unwrap_or_default();
            hist.add_sparse(&pairs);
            for (h, key) in [(&mut ttf, "ttf"), (&mut ttl, "ttl")] {
                for v in lat[key].as_array().into_iter().flatten() {
                    h.record(v.as_u64().unwrap_or(0));
                }
            }
        }
    }
    let sent = sum(&done, "sent");
    let received = sum(&done, "received");
    let expected = ready * msgs;
    let loss = expected.saturating_sub(received) + (case.n as u64 - ready) * msgs;
    errors += sum(&done, "errors") + sum(&done, "disorder");
    if done.iter().any(Option::is_none) {
        errors += 1;
    }
    let mut errs = samples(&connected);
    errs.extend(samples(&done));
    Ok(json!({
        "subs": case.n,
        "rate": case.rate,
        "msgs": msgs,
        "sent": sent,
        "bytes": case.bytes,
        "elapsed_s": elapsed,
        "deliveries": received,
        "expected": case.n as u64 * msgs,
        "loss": loss,
        "errors": errors,
        "error_samples": errs,
        "samples": hist.len(),
        "p50_us": hist.quantile(0.5),
        "p90_us": hist.quantile(0.9),
        "p99_us": hist.quantile(0.99),
        "max_us": hist.max(),
        "first_sub_p50_us": ttf.quantile(0.5),
        "first_sub_p99_us": ttf.quantile(0.99),
        "last_sub_p50_us": ttl.quantile(0.5),
        "last_sub_p99_us": ttl.quantile(0.99),
        "last_sub_max_us": ttl.max(),
        "server_cpu_pct": 100.0 * cpu_s / elapsed.max(1e-9),
        "load_cpu_pct": 100.0 * cpu_l / elapsed.max(1e-9),
        "server_rss_kb": rss,
        "server_hwm_kb": hwm,
    })
    .with_server(&side, &stats))
}

async fn conns(env: &Env, case: &Case, target: &Target) -> Res<Value> {
    let mut dep = Deployment::start(env, target).await?;
    let ep = endpoint(&dep, target);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (rss0, _) = dep.mem();
    let parts = split(case.n, env.per_child);
    let mut loads = Loads::spawn(env, parts.len(), |i| {
        load_args(
            &ep,
            target,
            &[
                ("subs", parts[i].to_string()),
                ("msgs", "0".into()),
                ("mode", "idle".into()),
                ("concurrency", "64".into()),
                ("rbuf", "4096".into()),
                ("timeout", env.timeout.to_string()),
            ],
        )
    })
    .await?;
    // Let the load processes start before the clock does.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let cpu0 = Cpu::read(&dep);
    let cpu_l0 = loads.cpu();
    let t0 = Instant::now();
    loads.send_all("connect").await;
    let connected = loads
        .wait_all("connected", Duration::from_secs_f64(env.timeout), |_, _| {})
        .await;
    let connect_s = t0.elapsed().as_secs_f64();
    let side = cpu0.since(&dep);
    let cpu_s = side.server_s;
    let cpu_l = loads.cpu() - cpu_l0;
    let ready = sum(&connected, "ready");
    let mut errors = sum(&connected, "failed");
    // Settle, then measure; then hold and check that every connection is still there.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (rss, hwm) = dep.mem();
    tokio::time::sleep(Duration::from_secs_f64(case.secs.min(600.0))).await;
    let stats = dep.stats().await;
    loads.send_all("stop").await;
    let done = loads
        .wait_all("done", Duration::from_secs(30), |_, _| {})
        .await;
    loads.kill().await;
    dep.stop().await;
    let closed = sum(&done, "closed");
    errors += sum(&done, "errors");
    if done.iter().any(Option::is_none) {
        errors += 1;
    }
    let mut errs = samples(&connected);
    errs.extend(samples(&done));
    let per_conn = (rss.saturating_sub(rss0) * 1024) as f64 / (ready.max(1)) as f64;
    Ok(json!({
        "conns": case.n,
        "load_procs": parts.len(),
        "ready": ready,
        "alive_after_hold": ready.saturating_sub(closed),
        "hold_s": case.secs,
        "loss": case.n as u64 - ready.saturating_sub(closed),
        "errors": errors,
        "error_samples": errs,
        "connect_s": connect_s,
        "connect_per_s": ready as f64 / connect_s.max(1e-9),
        "server_cpu_pct_connect": 100.0 * cpu_s / connect_s.max(1e-9),
        "load_cpu_pct_connect": 100.0 * cpu_l / connect_s.max(1e-9),
        "server_rss_idle_kb": rss0,
        "server_rss_kb": rss,
        "server_hwm_kb": hwm,
        "rss_per_conn_b": per_conn,
    })
    .with_server(&side, &stats))
}

/// A burst: every message published at once, with no window (as a publishing client that
/// sends as fast as its socket takes it), then wait until every subscriber has all of them or
/// has been closed. Reports deliveries, loss and slow-consumer closes.
async fn burst(env: &Env, case: &Case, target: &Target) -> Res<Value> {
    let mut dep = Deployment::start(env, target).await?;
    let ep = endpoint(&dep, target);
    let Subscribed {
        mut loads,
        parts,
        connected,
        ready,
        mut errors,
        mut publishers,
        ..
    } = subscribe(env, case, target, &ep, "burst", 1).await?;

    let cpu0 = Cpu::read(&dep);
    let cpu_l0 = loads.cpu();
    let t0 = Instant::now();
    // One write of every frame: as fast as the server reads the publisher's socket.
    publishers.publish(1, case.msgs).await?;
    let write_s = t0.elapsed().as_secs_f64();
    let settled = loads
        .wait_all("settled", Duration::from_secs_f64(env.timeout), |_, _| {})
        .await;
    let elapsed = t0.elapsed().as_secs_f64();
    let timed_out = settled.iter().any(Option::is_none);
    let side = cpu0.since(&dep);
    let cpu_l = loads.cpu() - cpu_l0;
    let (rss, hwm) = dep.mem();
    publishers.close().await;
    let stats = dep.stats().await;
    loads.send_all("stop").await;
    let done = loads
        .wait_all("done", Duration::from_secs(20), |_, _| {})
        .await;
    loads.kill().await;
    dep.stop().await;

    let received = sum(&done, "received");
    let expected = case.n as u64 * case.msgs;
    let loss = expected.saturating_sub(received);
    // Closed subscribers are counted as loss and by `closed`, not as errors of the tool.
    errors += sum(&done, "disorder") + publishers.errors();
    if done.iter().any(Option::is_none) {
        errors += 1;
    }
    let mut errs = samples(&connected);
    errs.extend(samples(&done));
    errs.extend(publishers.samples());
    Ok(json!({
        "subs": case.n,
        "ready": ready,
        "msgs": case.msgs,
        "bytes": case.bytes,
        "queue": env.queue,
        "load_procs": parts.len(),
        "publisher_write_s": write_s,
        "elapsed_s": elapsed,
        "timed_out": timed_out,
        "deliveries": received,
        "expected": expected,
        "loss": loss,
        "complete": sum(&done, "complete"),
        "closed": sum(&done, "closed"),
        "closes_slow_consumer_seen": sum(&done, "slow_closes"),
        "errors": errors,
        "error_samples": errs,
        "deliveries_per_s": received as f64 / elapsed.max(1e-9),
        "server_cpu_pct": 100.0 * side.server_s / elapsed.max(1e-9),
        "load_cpu_pct": 100.0 * cpu_l / elapsed.max(1e-9),
        "server_rss_kb": rss,
        "server_hwm_kb": hwm,
    })
    .with_server(&side, &stats))
}

/// Host publishes per second (`hub.publish` inside the server process, no subscribers):
/// first one task publishing sequentially, then `tasks` tasks at once, each phase at most
/// `msgs` publishes or `secs` seconds. Our server only.
async fn publish(env: &Env, case: &Case, target: &Target) -> Res<Value> {
    let mut dep = Deployment::start(env, target).await?;
    let mut report = json!({
        "tasks": case.tasks, "topics": case.topics, "bytes": case.bytes,
        "max_msgs": case.msgs, "budget_s": case.secs,
    });
    let mut errors = 0;
    let mut errs: Vec<Value> = Vec::new();
    // The last phase's (the concurrent one's) CPU goes into the common fields.
    let mut last_side = Cpu::read(&dep).since(&dep);
    for (phase, tasks) in [("seq", 1), ("conc", case.tasks)] {
        let cmd = json!({"tasks": tasks, "n": case.msgs, "secs": case.secs,
                         "topics": case.topics, "bytes": case.bytes});
        let cpu0 = Cpu::read(&dep);
        dep.nodes[0].proc.send(&format!("publish {cmd}")).await;
        let r = dep.nodes[0]
            .wait_for(
                "published",
                Duration::from_secs_f64(case.secs + env.timeout),
            )
            .await
            .ok_or_else(|| err("the server did not report its publishes"))?;
        let side = cpu0.since(&dep);
        errors += r["errors"].as_u64().unwrap_or(1);
        errs.extend(r["error_samples"].as_array().cloned().unwrap_or_default());
        let pct = |c: f64| 100.0 * c / side.secs.max(1e-9);
        report[format!("{phase}_tasks")] = json!(tasks);
        report[format!("{phase}_published")] = r["ok"].clone();
        report[format!("{phase}_per_s")] = r["per_s"].clone();
        report[format!("{phase}_elapsed_s")] = r["elapsed_s"].clone();
        report[format!("{phase}_server_cpu_pct")] = json!(pct(side.server_s));
        report[format!("{phase}_redis_cpu_pct")] = json!(side.redis_s.map(pct));
        last_side = side;
    }
    let stats = dep.stats().await;
    dep.stop().await;
    errs.truncate(5);
    report["errors"] = json!(errors);
    report["error_samples"] = json!(errs);
    report["loss"] = json!(0);
    Ok(report.with_server(&last_side, &stats))
}

/// Whether a scenario applies to a target (host publishes need our server).
pub(crate) fn applies(case: &Case, target: &Target) -> bool {
    case.scenario != "publish" || target.kind == Kind::Hub
}

/// Prints a report: one JSON line on stdout, a table on stderr.
pub(crate) fn print_report(r: &Value) {
    println!("{r}");
    let mut t = String::new();
    if let Value::Object(m) = r {
        t.push_str(&format!(
            "--- {} / {} ---\n",
            m.get("scenario").and_then(Value::as_str).unwrap_or("?"),
            m.get("target").and_then(Value::as_str).unwrap_or("?")
        ));
        for (k, v) in m {
            if matches!(k.as_str(), "scenario" | "target" | "server_stats") {
                continue;
            }
            let shown = match v {
                Value::Number(n) if n.is_f64() => format!("{:.3}", n.as_f64().unwrap_or(0.0)),
                Value::Array(a) if a.is_empty() => continue,
                _ => v.to_string(),
            };
            t.push_str(&format!("  {k:<24} {shown}\n"));
        }
    }
    eprint!("{t}");
}

/// Whether a report shows a failure (loss, errors, timeout).
pub(crate) fn failed(r: &Value) -> bool {
    r["loss"].as_u64() != Some(0)
        || r["errors"].as_u64() != Some(0)
        || r["timed_out"].as_bool() == Some(true)
}

/// The metrics summarized per scenario in the suite's table.
fn metrics(scenario: &str) -> &'static [&'static str] {
    match scenario {
        "fanout" => &[
            "deliveries_per_s",
            "deliveries_per_server_cpu_s",
            "loss",
            "server_hwm_kb",
            "server_cpu_pct",
            "load_cpu_pct",
            "redis_cpu_pct",
        ],
        "latency" => &[
            "p50_us",
            "p90_us",
            "p99_us",
            "max_us",
            "last_sub_p99_us",
            "loss",
            "server_cpu_pct",
            "redis_cpu_pct",
        ],
        "burst" => &[
            "deliveries",
            "loss",
            "slow_consumer_closes",
            "closed",
            "paced",
            "pace_timeouts",
            "publisher_write_s",
            "elapsed_s",
            "deliveries_per_s",
            "server_cpu_pct",
        ],
        "publish" => &[
            "seq_per_s",
            "conc_per_s",
            "seq_server_cpu_pct",
            "conc_server_cpu_pct",
            "seq_redis_cpu_pct",
            "conc_redis_cpu_pct",
            "errors",
        ],
        _ => &[
            "connect_per_s",
            "rss_per_conn_b",
            "server_rss_kb",
            "alive_after_hold",
            "errors",
        ],
    }
}

/// Runs every case against each of its targets, `runs` times, interleaved (one target after
/// the other within each run, so that machine noise hits all alike), and prints the medians.
/// A case that does not apply to a target (host publishes on a peer) is skipped.
pub(crate) async fn suite(env: &Env, plan: &[(Case, Vec<Target>)], runs: usize) -> Vec<Value> {
    let mut all: BTreeMap<(usize, usize), Vec<Value>> = BTreeMap::new();
    for run in 0..runs {
        for (ci, (case, targets)) in plan.iter().enumerate() {
            for (ti, target) in targets.iter().enumerate() {
                if !applies(case, target) {
                    continue;
                }
                eprintln!(
                    "livehub-bench: run {}/{runs}: {} against {}",
                    run + 1,
                    case.label(),
                    target.name
                );
                let mut r = run_case(env, case, target).await;
                r["run"] = json!(run + 1);
                print_report(&r);
                all.entry((ci, ti)).or_default().push(r);
            }
        }
    }
    let mut table = String::from("\n## Medians\n");
    for (ci, (case, targets)) in plan.iter().enumerate() {
        let keys = metrics(&case.scenario);
        table.push_str(&format!(
            "\n### {} ({runs} runs)\n\n| target | {} |\n|---|{}\n",
            case.label(),
            keys.join(" | "),
            "---|".repeat(keys.len())
        ));
        for (ti, target) in targets.iter().enumerate() {
            let Some(rs) = all.get(&(ci, ti)) else {
                continue;
            };
            let cells: Vec<String> = keys
                .iter()
                .map(|k| {
                    let m = median(rs.iter().filter_map(|r| r[*k].as_f64()).collect());
                    if m.is_nan() {
                        "-".to_owned()
                    } else if m.abs() >= 100.0 {
                        format!("{m:.0}")
                    } else {
                        format!("{m:.2}")
                    }
                })
                .collect();
            table.push_str(&format!("| {} | {} |\n", target.name, cells.join(" | ")));
        }
    }
    eprintln!("{table}");
    all.into_values().flatten().collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_alt_suffix_marks_a_target_of_the_other_build_and_keeps_its_runtime() {
        let t = Target::parse("ws-json@current+alt").unwrap();
        assert!(t.alt);
        assert_eq!(t.name, "ws-json@current+alt");
        assert_eq!(t.runtime, Some(("current".to_owned(), None)));
        assert_eq!(t.kind, Kind::Hub);
        let t = Target::parse("ws-axum+alt").unwrap();
        assert!(t.alt && t.kind == Kind::Axum && t.runtime.is_none());
        let t = Target::parse("ws-json").unwrap();
        assert!(!t.alt);
        assert!(Target::parse("ws-nope+alt").is_err());
        assert!(Target::parse("ws-json+other").is_err());
    }
}
