//! `livehub-bench`: measures the hub over real sockets (fan-out, bursts, latency, idle memory,
//! connect rate, host publishes) against the Node `ws` and Bun broadcast servers as peers, in
//! one run; also the hub over Redis (one node, and several nodes as one hub), and the hub as
//! README serves it (axum, defaults). See BENCHMARKS.md.
//!
//! ```text
//! livehub-bench suite  [--preset full|quick|scale] [--runs 3] [--targets ws-json,ws-msgpack,sse,poll,node-ws]
//! livehub-bench run    --scenario fanout|latency|conns|burst|publish [--targets ...] [--runs 1] [case options]
//! livehub-bench smoke  (CI: tiny runs against our server, every transport; exits non-zero on any loss or error)
//! livehub-bench server --addr 127.0.0.1:0 [--queue 1024] [--runtime current|multi] [--threads N]
//!                  [--redis URL --prefix P] [--http axum]              (spawned by the driver)
//! livehub-bench load   --addr A --subs N --mode fanout|latency|idle|burst ... (spawned by the driver)
//! ```

mod deploy;
mod driver;
mod load;
mod msg;
mod poll;
mod server;
mod sse;
mod util;
mod ws;

use driver::{Case, Env, Target};
use util::{err, Opts, Res};

/// The usage text.
const USAGE: &str = "\
livehub-bench: benchmarks for the hub (server in its own process, load in others)

USAGE:
  livehub-bench suite  [--preset full|quick|scale] [--runs 3] [--targets ws-json,ws-msgpack,node-ws]
                   targets: ws-json, ws-msgpack (our hub over WebSocket, tuned server), sse
                   and poll (our hub's SSE streams / long-polling, JSON, published to over
                   WebSocket), sse-h2 (SSE streams over HTTP/2, 100 per connection),
                   ws-axum (the hub as README serves it: axum, #[tokio::main], defaults),
                   ws-redis (one node over Redis), ws-cluster (--nodes nodes over Redis:
                   publisher on the first, subscribers spread over the others), node-ws,
                   node-ws-msgpack (the Node ws peer), bun-ws, bun-ws-msgpack (the Bun peer).
                   Our tuned server's runtime per target: ws-json@current, ws-json@multi,
                   ws-json@multi:N (N workers); default multi with --threads
                   presets: full, quick (the WebSocket suite), scale (fan-out, latencies,
                   burst and host publishes against ws-json, ws-redis, ws-cluster)
  livehub-bench run    --scenario fanout|latency|conns|burst|publish [--targets ws-json] [--runs 1]
                   [--subs 1000] [--msgs N] [--secs 5] [--bytes 100] [--window W]
                   [--rate 50] [--conns 10000] [--tasks 64] [--topics 1] [--publishers 1]
    fanout:  publish as fast as the server takes it, at most --msgs messages or --secs
             seconds, with at most W messages in flight (default min(queue/2, 500000/subs));
             --publishers clients share the publishing (each its share of the numbers)
    burst:   --msgs messages (default 2000) published at once, no window, to --subs
             subscribers: deliveries, loss, slow-consumer closes, paced publishes
    latency: --subs subscribers, --rate msg/s for --secs seconds, publisher in the same process
    conns:   --conns idle (subscribed) connections, held --secs seconds: connect rate, RSS/conn
    publish: host publishes/s inside our server (hub.publish, history kept, no subscribers):
             one task, then --tasks tasks over --topics topics; each at most --msgs or --secs
  livehub-bench smoke  tiny runs against our server, every transport and scenario (CI); the Redis
                   targets when redis-server is installed (always with HUB_REQUIRE_REDIS=1)
  livehub-bench server --addr 127.0.0.1:0 [--queue 1024] [--runtime current|multi] [--threads N]
                   [--redis URL --prefix P] [--http axum]
  livehub-bench load   (spawned by the driver)

COMMON OPTIONS (suite, run, smoke):
  --pin auto|on|off   server on CPU 0, load on CPU 1 (taskset); auto = when 2+ CPUs
  --queue N           the hub's per-session queue capacity (default 1024)
  --per-child N       connections per load process (default 5000; 20000 fds per process)
  --timeout S         bound of every phase (default 120)
  --threads N         the server's tokio worker threads (default: CPUs it may use)
  --peer-dir DIR      where the Node peer lives (default livehub-bench/peer)
  --bun-dir DIR       where the Bun peer lives (default livehub-bench/peer-bun)
  --pacing-ms N       the hub's pacing bound (HubBuilder::pacing) for our tuned server; 0: off
  --conflate 1        our tuned server conflates every topic (HubBuilder::conflate_topics)
  --keys N            fan-out/burst publishers key their messages over N keys (k0..k<N-1>)
  --redis URL         a shared Redis for ws-redis/ws-cluster (keys under a prefix of the
                      run's own, deleted after it); default: a redis-server of the run's own
                      on a free port (--redis-server PROGRAM), pinned to --redis-cpu (1|none)
  --redis-pid PID     the shared Redis's pid, to report its CPU
  --nodes N           nodes of ws-cluster (default 3)
  --alt-exe PATH      another build of livehub-bench: targets with the suffix +alt (ws-json+alt,
                      ws-json@current+alt) run their server from it (A/B of two builds)

Each run prints one JSON line on stdout and a table on stderr; suite adds a table of medians.
";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = match real_main(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("livehub-bench: {e}");
            2
        }
    };
    std::process::exit(code);
}

fn real_main(args: &[String]) -> Res<i32> {
    let Some(cmd) = args.first() else {
        eprint!("{USAGE}");
        return Ok(2);
    };
    let opts = Opts::parse(&args[1..])?;
    match cmd.as_str() {
        "server" => server::main(&opts).map(|()| 0),
        "load" => load::main(&opts).map(|()| 0),
        "suite" | "run" | "smoke" => drive(cmd, &opts),
        "help" | "--help" | "-h" => {
            print!("{USAGE}");
            Ok(0)
        }
        other => Err(err(format!("unknown command {other:?}\n{USAGE}"))),
    }
}

/// A case with the defaults of a preset.
fn case(scenario: &str, n: usize, msgs: u64, rate: f64, secs: f64) -> Case {
    Case {
        scenario: scenario.to_owned(),
        n,
        msgs,
        bytes: 100,
        window: 0,
        rate,
        secs,
        tasks: 64,
        topics: 1,
        publishers: 1,
        keys: 0,
    }
}

/// The cases of a suite preset.
fn preset(name: &str) -> Res<Vec<Case>> {
    Ok(match name {
        "full" => vec![
            case("fanout", 1000, 1_000_000, 0.0, 5.0),
            case("fanout", 10_000, 1_000_000, 0.0, 5.0),
            case("latency", 1000, 0, 50.0, 10.0),
            case("latency", 100, 0, 200.0, 10.0),
            case("conns", 10_000, 0, 0.0, 2.0),
            case("conns", 19_000, 0, 0.0, 2.0),
        ],
        "quick" => vec![
            case("fanout", 1000, 1_000_000, 0.0, 2.0),
            case("fanout", 10_000, 1_000_000, 0.0, 2.0),
            case("latency", 1000, 0, 50.0, 4.0),
            case("latency", 100, 0, 200.0, 4.0),
            case("conns", 10_000, 0, 0.0, 1.0),
        ],
        "scale" => vec![
            case("fanout", 1000, 1_000_000, 0.0, 5.0),
            case("latency", 1000, 0, 50.0, 10.0),
            case("latency", 100, 0, 200.0, 10.0),
            case("burst", 1000, 2000, 0.0, 0.0),
            case("publish", 0, 1_000_000, 0.0, 5.0),
        ],
        p => return Err(err(format!("unknown preset {p}"))),
    })
}

/// Whether the smoke run includes the Redis targets: when `redis-server` runs here, and
/// always with `HUB_REQUIRE_REDIS=1` (as in CI; then a missing one fails the run).
fn smoke_redis() -> bool {
    std::env::var("HUB_REQUIRE_REDIS").as_deref() == Ok("1")
        || std::process::Command::new("redis-server")
            .arg("--version")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
}

/// The smoke plan: tiny runs of every scenario against our server, each over the targets
/// that need no external install (the peers do): every transport of the tuned server, the
/// current-thread runtime, the axum server, and (see [`smoke_redis`]) one node and a cluster
/// over Redis; and a fan-out from 3 publishers. A burst stays below the queue's capacity, so it never depends on timing.
fn smoke_plan() -> Res<Vec<(Case, Vec<Target>)>> {
    let redis = smoke_redis();
    if !redis {
        eprintln!("livehub-bench smoke: no redis-server here: ws-redis and ws-cluster skipped");
    }
    let targets = |names: &str, with_redis: &str| -> Res<Vec<Target>> {
        let mut all: Vec<&str> = names.split(',').collect();
        if redis {
            all.extend(with_redis.split(',').filter(|s| !s.is_empty()));
        }
        all.iter().map(|t| Target::parse(t)).collect()
    };
    let mut publish = case("publish", 0, 2000, 0.0, 5.0);
    publish.tasks = 8;
    let mut shared = case("fanout", 20, 200, 0.0, 60.0);
    shared.publishers = 3;
    Ok(vec![
        (
            case("fanout", 20, 200, 0.0, 60.0),
            targets(
                "ws-json,ws-msgpack,sse,sse-h2,poll,ws-axum",
                "ws-redis,ws-cluster",
            )?,
        ),
        (
            case("latency", 10, 0, 100.0, 0.5),
            targets(
                "ws-json,ws-msgpack,sse,sse-h2,poll,ws-axum",
                "ws-redis,ws-cluster",
            )?,
        ),
        (
            case("conns", 50, 0, 0.0, 0.2),
            targets("ws-json,ws-msgpack,sse,sse-h2,poll", "")?,
        ),
        (
            case("burst", 20, 300, 0.0, 0.0),
            targets(
                "ws-json,ws-json@current,ws-json@multi:2,ws-axum",
                "ws-redis,ws-cluster",
            )?,
        ),
        (publish, targets("ws-json", "ws-redis")?),
        (shared, targets("ws-json", "ws-cluster")?),
    ])
}

fn drive(cmd: &str, opts: &Opts) -> Res<i32> {
    let mut opts = opts.clone();
    if cmd == "smoke" && opts.str("pin").is_none() {
        opts = Opts::parse(&["--pin".to_owned(), "off".to_owned()])?.merged(&opts);
    }
    let env = Env::from_opts(&opts)?;
    let plan = if cmd == "smoke" {
        smoke_plan()?
    } else {
        let (cases, default_targets) = match cmd {
            "run" => (vec![Case::from_opts(&opts)?], "ws-json"),
            _ => {
                let name = opts.str("preset").unwrap_or("full");
                let default = if name == "scale" {
                    "ws-json,ws-redis,ws-cluster"
                } else {
                    "ws-json,ws-msgpack,node-ws"
                };
                (preset(name)?, default)
            }
        };
        let targets = opts
            .list("targets", opts.str("target").unwrap_or(default_targets))
            .iter()
            .map(|t| Target::parse(t))
            .collect::<Res<Vec<_>>>()?;
        cases.into_iter().map(|c| (c, targets.clone())).collect()
    };
    let runs: usize = opts.get("runs", if cmd == "suite" { 3 } else { 1 })?;
    env.pin_self();
    driver::seed_src_net();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    let reports = local.block_on(&rt, driver::suite(&env, &plan, runs.max(1)));
    let failures = reports.iter().filter(|r| driver::failed(r)).count();
    if failures > 0 {
        eprintln!("livehub-bench: {failures} run(s) with loss or errors");
    }
    Ok(if cmd == "smoke" && failures > 0 { 1 } else { 0 })
}
