//! What the driver starts for one run: the server under test (one process, or one per node of
//! a cluster), and the Redis that cluster targets use. Every process is a child of the
//! driver, killed when the run ends (`kill_on_drop`), and exits on its own when its stdin
//! closes; a Redis of the driver's own is started per run and killed after it, and the keys a
//! run wrote to a shared Redis (`--redis URL`) are deleted after it.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

use crate::driver::{Engine, Env, Kind, Target};
use crate::util::{err, proc_cpu, proc_mem, Res};

/// A child process: killed when dropped.
pub(crate) struct Proc {
    child: Child,
    pub(crate) pid: u32,
    stdin: Option<ChildStdin>,
}

impl Proc {
    /// Sends one line on the child's stdin.
    pub(crate) async fn send(&mut self, line: &str) {
        if let Some(stdin) = &mut self.stdin {
            let _ = stdin.write_all(format!("{line}\n").as_bytes()).await;
            let _ = stdin.flush().await;
        }
    }

    /// Closes its stdin, kills it and waits (bounded) for it.
    pub(crate) async fn kill(mut self) {
        self.stdin = None;
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
    }
}

/// Spawns `program args` (pinned to `core` if set and pinning is on), forwarding its JSON
/// stdout lines as `(index, value)` to `tx` (other lines go to stderr).
pub(crate) fn spawn(
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

/// One server process (a node), with its event channel.
pub(crate) struct Server {
    pub(crate) proc: Proc,
    pub(crate) addr: SocketAddr,
    events: mpsc::UnboundedReceiver<(usize, Value)>,
}

impl Server {
    /// The first event that has `key`, within `timeout` (other events are dropped).
    pub(crate) async fn wait_for(&mut self, key: &str, timeout: Duration) -> Option<Value> {
        let wait = async {
            while let Some((_, v)) = self.events.recv().await {
                if let Some(s) = v.get(key) {
                    return Some(s.clone());
                }
            }
            None
        };
        tokio::time::timeout(timeout, wait).await.ok().flatten()
    }

    /// The hub's counters (`null` on timeout).
    async fn stats(&mut self) -> Value {
        self.proc.send("stats").await;
        self.wait_for("stats", Duration::from_secs(3))
            .await
            .unwrap_or(Value::Null)
    }
}

/// The Redis of a run: one the driver started (its pid known, killed after the run), or a
/// shared one given with `--redis URL` (the run's keys deleted after it).
pub(crate) struct Redis {
    proc: Option<Proc>,
    pub(crate) url: String,
    /// The run's key prefix (unique per run).
    pub(crate) prefix: String,
    /// The server's pid, to read its CPU time (`--redis-pid` for a shared one).
    pub(crate) pid: Option<u32>,
}

/// Runs per driver process, for unique key prefixes.
static RUN: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Connects to the Redis at `url` and checks that it answers `PING`.
async fn redis_conn(url: &str) -> Res<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(url)?;
    let mut con = tokio::time::timeout(
        Duration::from_secs(2),
        client.get_multiplexed_async_connection(),
    )
    .await
    .map_err(|_| err("connect timed out"))??;
    let _: String = redis::cmd("PING").query_async(&mut con).await?;
    Ok(con)
}

impl Redis {
    /// The shared Redis (`--redis`), or a `redis-server` of the run's own on a free port,
    /// pinned to `--redis-cpu` (default 1, with the load: the hub's core stays the hub's).
    async fn start(env: &Env) -> Res<Redis> {
        let run = RUN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let prefix = format!("livehub-bench-{}-{run}", std::process::id());
        if let Some(url) = &env.redis_url {
            redis_conn(url)
                .await
                .map_err(|e| err(format!("redis at {url}: {e}")))?;
            return Ok(Redis {
                proc: None,
                url: url.clone(),
                prefix,
                pid: env.redis_pid,
            });
        }
        let mut last = String::new();
        for _ in 0..3 {
            // A free port now; taken by someone else before Redis binds it, rarely: retried.
            let port = std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port();
            let args: Vec<String> = [
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--logfile",
                "/dev/null",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            let (tx, _rx) = mpsc::unbounded_channel();
            let proc = spawn(
                env,
                env.redis_cpu,
                std::ffi::OsStr::new(&env.redis_server),
                &args,
                &[],
                0,
                tx,
            )?;
            let url = format!("redis://127.0.0.1:{port}");
            for _ in 0..100 {
                match redis_conn(&url).await {
                    Ok(_) => {
                        // `taskset` execs redis-server: the child's pid is Redis's.
                        let pid = Some(proc.pid);
                        return Ok(Redis {
                            proc: Some(proc),
                            url,
                            prefix,
                            pid,
                        });
                    }
                    Err(e) => last = e.to_string(),
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            proc.kill().await;
        }
        Err(err(format!(
            "could not start {} (is it installed?): {last}",
            env.redis_server
        )))
    }

    /// Redis's CPU time so far (seconds), if its pid is known.
    pub(crate) fn cpu(&self) -> Option<f64> {
        self.pid.map(proc_cpu)
    }

    /// Ends the run's use of Redis: kills the driver's own, or deletes the run's keys from a
    /// shared one.
    async fn finish(self) {
        if let Some(p) = self.proc {
            p.kill().await;
            return;
        }
        if let Err(e) = self.delete_keys().await {
            eprintln!(
                "livehub-bench: deleting the keys {{{}:* from {}: {e}",
                self.prefix, self.url
            );
        }
    }

    async fn delete_keys(&self) -> Res<()> {
        let mut con = redis_conn(&self.url).await?;
        let p = &self.prefix;
        for pattern in [format!("{{{p}:*"), format!("{{{p}}}*")] {
            let mut keys: Vec<String> = Vec::new();
            {
                let mut it =
                    redis::AsyncCommands::scan_match::<_, String>(&mut con, &pattern).await?;
                while let Some(k) = it.next_item().await {
                    keys.push(k?);
                }
            }
            for chunk in keys.chunks(500) {
                redis::cmd("DEL")
                    .arg(chunk)
                    .query_async::<()>(&mut con)
                    .await?;
            }
        }
        Ok(())
    }
}

/// The server side of one run: one process, or one per node of a cluster (node 0 is the
/// publisher's), and the Redis they share.
pub(crate) struct Deployment {
    pub(crate) nodes: Vec<Server>,
    pub(crate) redis: Option<Redis>,
    /// The server is the hub (it answers `stats`).
    hub: bool,
}

impl Deployment {
    /// Starts what `target` needs.
    pub(crate) async fn start(env: &Env, target: &Target) -> Res<Deployment> {
        let redis = match target.engine {
            Engine::Memory => None,
            Engine::Redis | Engine::Cluster => Some(Redis::start(env).await?),
        };
        let count = match target.engine {
            Engine::Cluster => env.cluster_nodes.max(2),
            _ => 1,
        };
        let mut nodes = Vec::with_capacity(count);
        for i in 0..count {
            nodes.push(start_node(env, target, redis.as_ref(), i).await?);
        }
        Ok(Deployment {
            nodes,
            redis,
            hub: matches!(target.kind, Kind::Hub | Kind::Axum),
        })
    }

    /// Where the publisher connects (node 0).
    pub(crate) fn addr(&self) -> SocketAddr {
        self.nodes[0].addr
    }

    /// Where subscribers connect, in turn: the nodes other than the publisher's in a cluster,
    /// else none (the publisher's node).
    pub(crate) fn sub_addrs(&self) -> Vec<SocketAddr> {
        self.nodes.iter().skip(1).map(|n| n.addr).collect()
    }

    /// CPU time of each node so far (seconds).
    pub(crate) fn cpus(&self) -> Vec<f64> {
        self.nodes.iter().map(|n| proc_cpu(n.proc.pid)).collect()
    }

    /// Redis's CPU time so far (seconds), when known.
    pub(crate) fn redis_cpu(&self) -> Option<f64> {
        self.redis.as_ref().and_then(Redis::cpu)
    }

    /// VmRSS and VmHWM (KiB), summed over the nodes.
    pub(crate) fn mem(&self) -> (u64, u64) {
        self.nodes
            .iter()
            .map(|n| proc_mem(n.proc.pid))
            .fold((0, 0), |(r, h), (r2, h2)| (r + r2, h + h2))
    }

    /// Every node's counters (empty for a peer).
    pub(crate) async fn stats(&mut self) -> Vec<Value> {
        let mut all = Vec::new();
        if self.hub {
            for n in &mut self.nodes {
                all.push(n.stats().await);
            }
        }
        all
    }

    /// Stops every process of the run (and cleans Redis up).
    pub(crate) async fn stop(self) {
        for n in self.nodes {
            n.proc.kill().await;
        }
        if let Some(r) = self.redis {
            r.finish().await;
        }
    }
}

/// Starts node `index` of `target` (pinned to CPU 0) and waits for its port.
async fn start_node(
    env: &Env,
    target: &Target,
    redis: Option<&Redis>,
    index: usize,
) -> Res<Server> {
    let (tx, mut events) = mpsc::unbounded_channel();
    let exe = match (&env.alt_exe, target.alt) {
        (_, false) => env.exe.as_os_str(),
        (Some(alt), true) => alt.as_os_str(),
        (None, true) => return Err(err(format!("{}: needs --alt-exe PATH", target.name))),
    };
    let proc = match target.kind {
        Kind::Hub => {
            let mut args: Vec<String> = ["server", "--addr", "127.0.0.1:0", "--queue"]
                .iter()
                .map(|s| s.to_string())
                .collect();
            args.push(env.queue.to_string());
            let (runtime, threads) = match &target.runtime {
                Some((rt, t)) => (Some(rt.clone()), t.or(env.threads)),
                None => (None, env.threads),
            };
            if let Some(rt) = runtime {
                args.extend(["--runtime".to_owned(), rt]);
            }
            if let Some(t) = threads {
                args.extend(["--threads".to_owned(), t.to_string()]);
            }
            if let Some(r) = redis {
                args.extend([
                    "--redis".to_owned(),
                    r.url.clone(),
                    "--prefix".to_owned(),
                    r.prefix.clone(),
                ]);
            }
            args.extend(env.server_extra.iter().cloned());
            spawn(env, Some(0), exe, &args, &[], index, tx)?
        }
        Kind::Axum => {
            let args: Vec<String> = ["server", "--addr", "127.0.0.1:0", "--http", "axum"]
                .iter()
                .map(|s| s.to_string())
                .collect();
            spawn(env, Some(0), exe, &args, &[], index, tx)?
        }
        Kind::Node | Kind::Bun => {
            let (dir, program, check) = if target.kind == Kind::Node {
                (
                    &env.peer_dir,
                    env.node.clone(),
                    env.peer_dir.join("node_modules/ws"),
                )
            } else {
                let bun = env.bun_dir.join("node_modules/.bin/bun");
                (&env.bun_dir, bun.display().to_string(), bun)
            };
            if !check.exists() {
                return Err(err(format!(
                    "the {} peer is not installed: run {}",
                    if target.kind == Kind::Node {
                        "Node"
                    } else {
                        "Bun"
                    },
                    dir.join("install.sh").display()
                )));
            }
            let args = vec![dir.join("server.js").display().to_string()];
            spawn(
                env,
                Some(0),
                std::ffi::OsStr::new(&program),
                &args,
                &[("PORT", "0")],
                index,
                tx,
            )?
        }
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
