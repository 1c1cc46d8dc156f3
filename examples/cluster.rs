//! Live sports scores on several hub nodes at once, over Redis.
//!
//! Two or three nodes (default three), each its own `Hub` with its own `RedisEngine` and its
//! own port, against one Redis. Node 1 runs the simulated feed of the `sports_scores` example
//! and publishes every update through its hub; the scoreboard page works on **every** node:
//! a page on node 2 or 3 subscribes there, and the updates reach it through Redis. Positions
//! are the cluster's, so a page that reconnects to another node resumes where it was.
//!
//! ```text
//! redis-server --port 6379 --save "" --appendonly no &       # any Redis 6.2 or later
//! cargo run --release --example cluster                      # nodes on 3011, 3012, 3013
//! cargo run --release --example cluster -- --redis redis://10.0.0.5:6379 --nodes 2 --port 8080
//! ```
//!
//! `--port 0` picks free ports; the lines printed at start name the real ones. `--prefix`
//! names the hub's keys in Redis (default `sports-cluster`): nodes with the same Redis and
//! prefix are one hub.
//!
//! The nodes share one process here, for a one-command demo; each has its own engine, its
//! own connections to Redis and its own listener, exactly as separate processes or machines
//! would. One shortcut: every node's `GET /matches` (the board the page starts from) reads
//! the feed's state in this process. Separate processes would serve it from the topics'
//! history (`hub.recent`) or from the service's own database; the live updates and the
//! positions they carry are the hub's either way.
//!
//! The page is the `sports_scores` page, on hub.js: a page that loses its node (a proxy in
//! front sends it to another, or the node restarts) resumes on its own from the last position
//! it showed, wherever it reconnects; nothing in the page resumes by hand. Ctrl-C shuts every
//! node down gracefully ([`livehub::shutdown_signal`]): each node's pages are told (close 1001
//! `shutdown`) before its server stops.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use livehub::Hub;
use livehub_redis::RedisEngine;

#[allow(dead_code)] // the example's `main`, argument parsing and the like
#[path = "sports_scores.rs"]
pub(crate) mod sports;

/// The Redis the nodes share, unless `--redis` says otherwise.
pub(crate) const DEFAULT_REDIS: &str = "redis://127.0.0.1:6379";

/// The key prefix, unless `--prefix` says otherwise.
pub(crate) const DEFAULT_PREFIX: &str = "sports-cluster";

/// One node: a hub over its own Redis engine, serving the sports routes.
pub(crate) struct Node {
    /// The node's hub (it holds the engine: `hub.engine_stats()` shows it).
    pub(crate) hub: Hub,
    /// Where it listens.
    pub(crate) addr: SocketAddr,
}

/// How long a node's shutdown waits for its pages to get their last frames.
const GRACE: Duration = Duration::from_secs(5);

/// The nodes, and the feed node 1 publishes (not ticked yet: see [`sports::run_feed`]).
pub(crate) struct Cluster {
    pub(crate) nodes: Vec<Node>,
    pub(crate) feed: sports::Feed,
    /// Stops every node (gracefully: [`livehub::shutdown_signal`]); so does dropping it.
    stop: tokio::sync::watch::Sender<bool>,
    /// The nodes' servers, done once they have shut down.
    servers: Vec<tokio::task::JoinHandle<()>>,
}

impl Cluster {
    /// Shuts every node down gracefully and waits for their servers to finish.
    pub(crate) async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        for s in self.servers.drain(..) {
            let _ = s.await;
        }
    }
}

/// A hub whose engine is a fresh connection to the Redis at `redis`, keys under `prefix`.
pub(crate) async fn hub_over_redis(redis: &str, prefix: &str) -> Result<Hub, String> {
    let engine = RedisEngine::builder(redis)
        .prefix(prefix)
        .build()
        .await
        .map_err(|e| e.to_string())?;
    let hub = Hub::builder()
        .history_len(sports::HISTORY)
        .broker(Arc::new(engine.clone()))
        .presence_store(Arc::new(engine.clone()))
        .build();
    // Its own routes are heard from now on (direct sends, disconnects from other nodes).
    engine.ready().await;
    Ok(hub)
}

/// Starts one node per address (the first one publishes the feed, drawn with `seed`), each
/// serving the sports routes from its own hub. Returns once every node listens.
pub(crate) async fn start(
    redis: &str,
    prefix: &str,
    addrs: &[SocketAddr],
    seed: u64,
) -> Result<Cluster, String> {
    let mut hubs = Vec::with_capacity(addrs.len());
    for _ in addrs {
        hubs.push(hub_over_redis(redis, prefix).await?);
    }
    let Some(first) = hubs.first() else {
        return Err("no node to start".to_owned());
    };
    let feed = sports::Feed::new(first.clone(), seed).await;
    let mut nodes = Vec::with_capacity(addrs.len());
    let mut servers = Vec::with_capacity(addrs.len());
    let (stop, stopped) = tokio::sync::watch::channel(false);
    for (hub, addr) in hubs.into_iter().zip(addrs) {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let app = sports::router(&hub, feed.clone());
        let mut stopped = stopped.clone();
        // Set, or the sender gone (the cluster dropped): either way, time to stop.
        let signal = async move {
            let _ = stopped.wait_for(|s| *s).await;
        };
        let graceful = livehub::shutdown_signal(&hub, signal, GRACE);
        servers.push(tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(graceful)
                .await
            {
                eprintln!("cluster: node on {addr}: server error: {e}");
            }
        }));
        nodes.push(Node { hub, addr });
    }
    Ok(Cluster {
        nodes,
        feed,
        stop,
        servers,
    })
}

/// What the command line asks for.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Args {
    pub(crate) redis: String,
    pub(crate) prefix: String,
    pub(crate) nodes: usize,
    /// Node `i` (from 1) listens on `port + i`; with 0, every node picks a free port.
    pub(crate) port: u16,
}

const USAGE: &str = "usage: cluster [--redis <url>] [--nodes <1-8>] [--port <base>] [--prefix <p>]
  --redis   the Redis every node uses (default redis://127.0.0.1:6379)
  --nodes   how many nodes (default 3); node 1 publishes the feed
  --port    node i listens on 127.0.0.1:<port + i> (default 3010; 0: free ports)
  --prefix  the hub's key prefix in Redis (default sports-cluster)";

/// Parses the arguments after the program name; `Ok(None)` for `--help`.
pub(crate) fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Option<Args>, String> {
    let mut out = Args {
        redis: DEFAULT_REDIS.to_owned(),
        prefix: DEFAULT_PREFIX.to_owned(),
        nodes: 3,
        port: 3010,
    };
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) => (n.to_owned(), Some(v.to_owned())),
            None => (arg, None),
        };
        if name == "-h" || name == "--help" {
            return Ok(None);
        }
        let value = match inline {
            Some(v) => v,
            None => args.next().ok_or_else(|| format!("{name} needs a value"))?,
        };
        match name.as_str() {
            "--redis" => out.redis = value,
            "--prefix" => out.prefix = value,
            "--nodes" => {
                out.nodes = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=8).contains(n))
                    .ok_or_else(|| format!("--nodes {value:?}: a number from 1 to 8"))?;
            }
            "--port" => {
                out.port = value
                    .parse()
                    .map_err(|_| format!("--port {value:?}: a port number"))?;
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if usize::from(out.port) + out.nodes > usize::from(u16::MAX) {
        return Err(format!(
            "--port {}: too high for {} nodes",
            out.port, out.nodes
        ));
    }
    Ok(Some(out))
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(Some(args)) => args,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("cluster: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let addrs: Vec<SocketAddr> = (1..=args.nodes)
        .map(|i| {
            let port = match args.port {
                0 => 0,
                base => base + i as u16,
            };
            SocketAddr::from(([127, 0, 0, 1], port))
        })
        .collect();
    let cluster = match start(
        &args.redis,
        &args.prefix,
        &addrs,
        getrandom::u64().unwrap_or(0x5EED),
    )
    .await
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cluster: {e} (is a Redis 6.2+ running at {}?)", args.redis);
            return ExitCode::FAILURE;
        }
    };
    tokio::spawn(sports::run_feed(cluster.feed.clone(), sports::TICK));
    println!(
        "{} nodes over {} (prefix {:?}):",
        args.nodes, args.redis, args.prefix
    );
    for (i, n) in cluster.nodes.iter().enumerate() {
        let role = if i == 0 {
            "  <- publishes the feed"
        } else {
            ""
        };
        println!(
            "  node {} ({}): http://{}/{role}",
            i + 1,
            n.hub.node_id(),
            n.addr
        );
    }

    // Every 30 s, what each node did and sees of Redis (RUST_LOG=info shows it).
    let mut every = tokio::time::interval(std::time::Duration::from_secs(30));
    every.tick().await;
    loop {
        tokio::select! {
            _ = every.tick() => {
                for (i, n) in cluster.nodes.iter().enumerate() {
                    let s = n.hub.stats();
                    tracing::info!(
                        node = i + 1,
                        sessions = s.sessions_total(),
                        published = s.published,
                        delivered_from_redis = s.node.published_in,
                        redis_connected = s.engine.connected,
                        redis_reconnects = s.engine.reconnects,
                        "node stats"
                    );
                }
            }
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    cluster.shutdown().await;
    ExitCode::SUCCESS
}
