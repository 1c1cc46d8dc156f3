//! The driver: starts the server under test in its own process, spawns load processes, runs a
//! scenario, reads the server's CPU and memory from `/proc`, and reports one JSON line (stdout)
//! and a readable table (stderr) per run. Every child is killed when the run ends, even on
//! error (`kill_on_drop`), and every child also exits on its own when its stdin closes.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

use crate::load::{Endpoint, Publisher};
use crate::msg::{Codec, Enc};
use crate::util::{err, median, proc_cpu, proc_mem, Hist, Opts, Res};

/// What is measured: our hub over WebSocket in one encoding, our hub's SSE streams (published
/// to over WebSocket), or the Node `ws` peer.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// The name in reports (`ws-json`, `ws-msgpack`, `sse`, `node-ws`).
    pub(crate) name: String,
    /// The encoding of the bench's frames.
    pub(crate) enc: Enc,
    /// Whether it is the hub (else the Node peer).
    pub(crate) hub: bool,
    /// Subscribers use server-sent events.
    pub(crate) sse: bool,
    /// SSE streams over HTTP/2 (cleartext, prior knowledge), many per connection.
    pub(crate) h2: bool,
    /// Subscribers use long-polling.
    pub(crate) poll: bool,
}

impl Target {
    /// Parses a target name.
    pub(crate) fn parse(name: &str) -> Res<Target> {
        let (enc, hub) = match name {
            "ws-json" | "sse" | "sse-h2" | "poll" => (Enc::Json, true),
            "ws-msgpack" => (Enc::MsgPack, true),
            "node-ws" => (Enc::Json, false),
            "node-ws-msgpack" => (Enc::MsgPack, false),
            _ => return Err(err(format!("unknown target {name}"))),
        };
        Ok(Target {
            name: name.to_owned(),
            enc,
            hub,
            sse: name == "sse" || name == "sse-h2",
            h2: name == "sse-h2",
            poll: name == "poll",
        })
    }
}

/// Settings shared by every run of one invocation.
#[derive(Debug, Clone)]
pub(crate) struct Env {
    exe: PathBuf,
    /// Pin the server to CPU 0 and the load (driver and load processes) to CPU 1.
    pin: bool,
    peer_dir: PathBuf,
    node: String,
    queue: usize,
    per_child: usize,
    timeout: f64,
    threads: Option<usize>,
    /// Extra `--name value` options for our server (`ws-read-buffer`).
    server_extra: Vec<String>,
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
        Ok(Env {
            exe,
            pin,
            peer_dir: opts
                .str("peer-dir")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/peer"))),
            node: opts.str("node").unwrap_or("node").to_owned(),
            queue: opts.get("queue", 1024)?,
            per_child: opts.get("per-child", 5000)?,
            timeout: opts.get("timeout", 120.0)?,
            threads: opts.str("threads").and_then(|t| t.parse().ok()),
            server_extra: ["ws-read-buffer"]
                .iter()
                .filter_map(|k| opts.str(k).map(|v| [format!("--{k}"), v.to_owned()]))
                .flatten()
                .collect(),
        })
    }

    /// Says what pinning does, and pins this process (the driver is load) to CPU 1.
    pub(crate) fn pin_self(&self) {
        if !self.pin {
            eprintln!("hub-bench: no CPU pinning (server and load share the CPUs)");
            return;
        }
        let pid = std::process::id().to_string();
        let ok = std::process::Command::new("taskset")
            .args(["-a", "-p", "-c", "1", &pid])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        eprintln!(
            "hub-bench: server pinned to CPU 0 (taskset -c 0); driver and load processes to CPU 1 (taskset -c 1){}",
            if ok { "" } else { " [pinning the driver failed]" }
        );
    }
}

/// A child process: killed when dropped.
struct Proc {
    child: Child,
    pid: u32,
    stdin: Option<ChildStdin>,
}

impl Proc {
    async fn send(&mut self, line: &str) {
        if let Some(stdin) = &mut self.stdin {
            let _ = stdin.write_all(format!("{line}\n").as_bytes()).await;
            let _ = stdin.flush().await;
        }
    }

    async fn kill(mut self) {
        self.stdin = None;
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
    }
}

/// Spawns `program args` (pinned to `core` if set), forwarding its JSON stdout lines as
/// `(index, value)` to `tx` (other lines go to stderr).
fn spawn(
    env: &Env,
    core: Option<usize>,
    program: &std::ffi::OsStr,
    args: &[String],
    envs: &[(&str, &str)],
    index: usize,
    tx: mpsc::UnboundedSender<(usize, Value)>,
) -> Res<Proc> {
    let mut cmd = match core.filter(|_| env.pin) {
        Some(c) => {
            let mut cmd = Command::new("taskset");
            cmd.arg("-c").arg(c.to_string()).arg(program);
            cmd
        }
        None => Command::new(program),
    };
    cmd.args(args)
        .envs(envs.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .map_err(|e| err(format!("spawning {program:?}: {e}")))?;
    let pid = child.id().ok_or_else(|| err("child has no pid"))?;
    let stdin = child.stdin.take();
    if let Some(out) = child.stdout.take() {
        tokio::task::spawn_local(async move {
            let mut lines = BufReader::new(out).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                match serde_json::from_str::<Value>(&line) {
                    Ok(v) => {
                        let _ = tx.send((index, v));
                    }
                    Err(_) => eprintln!("[child {index}] {line}"),
                }
            }
        });
    }
    Ok(Proc { child, pid, stdin })
}

/// The server under test, with its event channel.
struct Server {
    proc: Proc,
    addr: SocketAddr,
    events: mpsc::UnboundedReceiver<(usize, Value)>,
}

impl Server {
    /// The hub's counters (hub only; `null` for the peer or on timeout).
    async fn stats(&mut self, hub: bool) -> Value {
        if !hub {
            return Value::Null;
        }
        self.proc.send("stats").await;
        let wait = tokio::time::timeout(Duration::from_secs(3), async {
            while let Some((_, v)) = self.events.recv().await {
                if let Some(s) = v.get("stats") {
                    return s.clone();
                }
            }
            Value::Null
        });
        wait.await.unwrap_or(Value::Null)
    }
}

async fn start_server(env: &Env, target: &Target) -> Res<Server> {
    let (tx, mut events) = mpsc::unbounded_channel();
    let proc = if target.hub {
        let mut args: Vec<String> = ["server", "--addr", "127.0.0.1:0", "--queue"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.push(env.queue.to_string());
        if let Some(t) = env.threads {
            args.extend(["--threads".to_owned(), t.to_string()]);
        }
        args.extend(env.server_extra.iter().cloned());
        spawn(env, Some(0), env.exe.as_os_str(), &args, &[], 0, tx)?
    } else {
        let script = env.peer_dir.join("server.js");
        if !env.peer_dir.join("node_modules/ws").exists() {
            return Err(err(format!(
                "the Node peer is not installed: run {}",
                env.peer_dir.join("install.sh").display()
            )));
        }
        let args = vec![script.display().to_string()];
        spawn(
            env,
            Some(0),
            std::ffi::OsStr::new(&env.node),
            &args,
            &[("PORT", "0")],
            0,
            tx,
        )?
    };
    let port = tokio::time::timeout(Duration::from_secs(15), async {
        while let Some((_, v)) = events.recv().await {
            if let Some(p) = v.get("port").and_then(Value::as_u64) {
                return Some(p);
            }
        }
        None
    })
    .await
    .ok()
    .flatten()
    .ok_or_else(|| err(format!("{}: server did not report its port", target.name)))?;
    let port = u16::try_from(port)?;
    Ok(Server {
        proc,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        events,
    })
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

fn endpoint(server: &Server, target: &Target) -> Endpoint {
    let ws_path = if target.hub {
        format!("/ws?encoding={}", target.enc.name())
    } else {
        "/".to_owned()
    };
    Endpoint {
        addr: server.addr,
        path: if target.sse {
            "/sse?topic=bench".to_owned()
        } else if target.poll {
            "/poll?encoding=json".to_owned()
        } else {
            ws_path.clone()
        },
        hub: target.hub,
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
    /// `fanout`, `latency` or `conns`.
    pub(crate) scenario: String,
    /// Subscribers (fan-out, latency) or connections (conns).
    pub(crate) n: usize,
    /// Messages (fan-out).
    pub(crate) msgs: u64,
    /// Payload bytes.
    pub(crate) bytes: usize,
    /// In-flight window (fan-out).
    pub(crate) window: u64,
    /// Messages per second (latency).
    pub(crate) rate: f64,
    /// Seconds of publishing (fan-out: at most; latency: exactly) or of holding (conns).
    pub(crate) secs: f64,
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
        Ok(Case {
            scenario,
            n,
            msgs: opts.get("msgs", 1_000_000)?,
            bytes: opts.get("bytes", 100)?,
            window: opts.get("window", 0)?,
            rate: opts.get("rate", 50.0)?,
            secs: opts.get("secs", if n_is_conns { 2.0 } else { 5.0 })?,
        })
    }

    /// A short label (`fanout n=1000`).
    pub(crate) fn label(&self) -> String {
        match self.scenario.as_str() {
            "fanout" => format!("fanout {} subs, {} s", self.n, self.secs),
            "latency" => format!("latency {} subs @ {} msg/s", self.n, self.rate),
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
    let mut server = start_server(env, target).await?;
    let ep = endpoint(&server, target);
    let parts = split(case.n, env.per_child);
    let mut loads = Loads::spawn(env, parts.len(), |i| {
        load_args(
            &ep,
            target,
            &[
                ("subs", parts[i].to_string()),
                ("msgs", case.msgs.to_string()),
                ("bytes", case.bytes.to_string()),
                ("mode", "fanout".into()),
                ("step", step.to_string()),
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
    let (rss_before, _) = proc_mem(server.proc.pid);

    let codec = Codec::new(target.enc, case.bytes, "bench");
    let mut publisher = Publisher::connect(&ep, codec).await?;
    tokio::time::sleep(Duration::from_millis(100)).await;

    let cpu_s0 = proc_cpu(server.proc.pid);
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
            publisher.publish(next, allowed, 0).await?;
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
    publisher.close().await;
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu_s = proc_cpu(server.proc.pid) - cpu_s0;
    let cpu_l = loads.cpu() - cpu_l0;
    let (rss, hwm) = proc_mem(server.proc.pid);
    let stats = server.stats(target.hub).await;

    loads.send_all("stop").await;
    let done = loads
        .wait_all("done", Duration::from_secs(20), |_, _| {})
        .await;
    loads.kill().await;
    server.proc.kill().await;

    let received = sum(&done, "received");
    let expected = ready * published;
    let loss = expected.saturating_sub(received) + (case.n as u64 - ready) * published;
    errors += sum(&done, "errors") + sum(&done, "disorder") + publisher.errors.get();
    if done.iter().any(Option::is_none) {
        errors += 1;
    }
    let mut errs = samples(&connected);
    errs.extend(samples(&done));
    errs.extend(publisher.samples.borrow().iter().cloned());
    Ok(json!({
        "subs": case.n,
        "msgs": published,
        "max_msgs": case.msgs,
        "budget_s": case.secs,
        "bytes": case.bytes,
        "window": window,
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
        "server_stats": stats,
    }))
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
    let mut server = start_server(env, target).await?;
    let ep = endpoint(&server, target);
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
    let cpu_s0 = proc_cpu(server.proc.pid);
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
    let cpu_s = proc_cpu(server.proc.pid) - cpu_s0;
    let cpu_l = loads.cpu() - cpu_l0;
    let (rss, hwm) = proc_mem(server.proc.pid);
    let stats = server.stats(target.hub).await;
    loads.send_all("stop").await;
    loads.kill().await;
    server.proc.kill().await;

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
        "server_stats": stats,
    }))
}

async fn conns(env: &Env, case: &Case, target: &Target) -> Res<Value> {
    let mut server = start_server(env, target).await?;
    let ep = endpoint(&server, target);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (rss0, _) = proc_mem(server.proc.pid);
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
    let cpu_s0 = proc_cpu(server.proc.pid);
    let cpu_l0 = loads.cpu();
    let t0 = Instant::now();
    loads.send_all("connect").await;
    let connected = loads
        .wait_all("connected", Duration::from_secs_f64(env.timeout), |_, _| {})
        .await;
    let connect_s = t0.elapsed().as_secs_f64();
    let cpu_s = proc_cpu(server.proc.pid) - cpu_s0;
    let cpu_l = loads.cpu() - cpu_l0;
    let ready = sum(&connected, "ready");
    let mut errors = sum(&connected, "failed");
    // Settle, then measure; then hold and check that every connection is still there.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (rss, hwm) = proc_mem(server.proc.pid);
    tokio::time::sleep(Duration::from_secs_f64(case.secs.min(600.0))).await;
    let stats = server.stats(target.hub).await;
    loads.send_all("stop").await;
    let done = loads
        .wait_all("done", Duration::from_secs(30), |_, _| {})
        .await;
    loads.kill().await;
    server.proc.kill().await;
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
        "server_stats": stats,
    }))
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
        ],
        "latency" => &[
            "p50_us",
            "p90_us",
            "p99_us",
            "max_us",
            "last_sub_p99_us",
            "loss",
            "server_cpu_pct",
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

/// Runs every case against every target, `runs` times, interleaved (one target after the
/// other within each run, so that machine noise hits all alike), and prints the medians.
pub(crate) async fn suite(
    env: &Env,
    cases: &[Case],
    targets: &[Target],
    runs: usize,
) -> Vec<Value> {
    let mut all: BTreeMap<(usize, usize), Vec<Value>> = BTreeMap::new();
    for run in 0..runs {
        for (ci, case) in cases.iter().enumerate() {
            for (ti, target) in targets.iter().enumerate() {
                eprintln!(
                    "hub-bench: run {}/{runs}: {} against {}",
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
    for (ci, case) in cases.iter().enumerate() {
        let keys = metrics(&case.scenario);
        table.push_str(&format!(
            "\n### {} ({runs} runs)\n\n| target | {} |\n|---|{}\n",
            case.label(),
            keys.join(" | "),
            "---|".repeat(keys.len())
        ));
        for (ti, target) in targets.iter().enumerate() {
            let rs = all.get(&(ci, ti)).cloned().unwrap_or_default();
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
