//! `hub-bench`: measures the hub over real sockets (fan-out, latency, idle memory, connect
//! rate) against the Node `ws` broadcast server as a peer, in one run. See BENCHMARKS.md.
//!
//! ```text
//! hub-bench suite  [--preset full|quick] [--runs 3] [--targets ws-json,ws-msgpack,sse,poll,node-ws]
//! hub-bench run    --scenario fanout|latency|conns [--targets ...] [--runs 1] [case options]
//! hub-bench smoke  (CI: tiny runs against our server, every transport; exits non-zero on any loss or error)
//! hub-bench server --addr 127.0.0.1:0 [--queue 1024] [--threads N]   (spawned by the driver)
//! hub-bench load   --addr A --subs N --mode fanout|latency|idle ...  (spawned by the driver)
//! ```

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
hub-bench: benchmarks for the hub (server in its own process, load in others)

USAGE:
  hub-bench suite  [--preset full|quick] [--runs 3] [--targets ws-json,ws-msgpack,node-ws]
                   targets: ws-json, ws-msgpack (our hub over WebSocket), sse and poll (our
                   hub's SSE streams / long-polling, JSON, published to over WebSocket),
                   sse-h2 (SSE streams over HTTP/2, 100 per connection), node-ws (the
                   Node ws peer)
  hub-bench run    --scenario fanout|latency|conns [--targets ws-json] [--runs 1]
                   [--subs 1000] [--msgs 1000000] [--secs 5] [--bytes 100] [--window W]
                   [--rate 50] [--conns 10000]
    fanout:  publish as fast as the server takes it, at most --msgs messages or --secs
             seconds, with at most W messages in flight (default min(queue/2, 500000/subs))
    latency: --subs subscribers, --rate msg/s for --secs seconds, publisher in the same process
    conns:   --conns idle (subscribed) connections, held --secs seconds: connect rate, RSS/conn
  hub-bench smoke  tiny fan-out, latency and conns runs against our server (CI)
  hub-bench server --addr 127.0.0.1:0 [--queue 1024] [--threads N]
  hub-bench load   (spawned by the driver)

COMMON OPTIONS (suite, run, smoke):
  --pin auto|on|off   server on CPU 0, load on CPU 1 (taskset); auto = when 2+ CPUs
  --queue N           the hub's per-session queue capacity (default 1024)
  --per-child N       connections per load process (default 5000; 20000 fds per process)
  --timeout S         bound of every phase (default 120)
  --threads N         the server's tokio worker threads (default: CPUs it may use)
  --peer-dir DIR      where the Node peer lives (default hub-bench/peer)
  --ws-read-buffer N  hub-ws's read buffer (bytes) for our server

Each run prints one JSON line on stdout and a table on stderr; suite adds a table of medians.
";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = match real_main(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("hub-bench: {e}");
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

/// The cases of a suite preset.
fn preset(name: &str) -> Res<Vec<Case>> {
    let case = |scenario: &str, n: usize, msgs: u64, rate: f64, secs: f64| Case {
        scenario: scenario.to_owned(),
        n,
        msgs,
        bytes: 100,
        window: 0,
        rate,
        secs,
    };
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
        "smoke" => vec![
            case("fanout", 20, 200, 0.0, 60.0),
            case("latency", 10, 0, 100.0, 0.5),
            case("conns", 50, 0, 0.0, 0.2),
        ],
        p => return Err(err(format!("unknown preset {p}"))),
    })
}

fn drive(cmd: &str, opts: &Opts) -> Res<i32> {
    let mut opts = opts.clone();
    if cmd == "smoke" && opts.str("pin").is_none() {
        opts = Opts::parse(&["--pin".to_owned(), "off".to_owned()])?.merged(&opts);
    }
    let env = Env::from_opts(&opts)?;
    let (cases, default_targets, default_runs) = match cmd {
        "run" => (vec![Case::from_opts(&opts)?], "ws-json", 1),
        "smoke" => (preset("smoke")?, "ws-json,ws-msgpack,sse,sse-h2,poll", 1),
        _ => (
            preset(opts.str("preset").unwrap_or("full"))?,
            "ws-json,ws-msgpack,node-ws",
            3,
        ),
    };
    let targets = opts
        .list("targets", opts.str("target").unwrap_or(default_targets))
        .iter()
        .map(|t| Target::parse(t))
        .collect::<Res<Vec<_>>>()?;
    let runs: usize = opts.get("runs", default_runs)?;
    env.pin_self();
    driver::seed_src_net();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    let reports = local.block_on(&rt, driver::suite(&env, &cases, &targets, runs.max(1)));
    let failures = reports.iter().filter(|r| driver::failed(r)).count();
    if failures > 0 {
        eprintln!("hub-bench: {failures} run(s) with loss or errors");
    }
    Ok(if cmd == "smoke" && failures > 0 { 1 } else { 0 })
}
