//! A Redis to test against, for livehub-redis's tests and the root crate's cluster tests alike
//! (each includes this file with `#[path]`): the shared one with a key prefix of the test's
//! own, or a `redis-server` of the test's own on a free port, to kill and restart.
//!
//! Without Redis (no server reachable, no `redis-server` installed) a test prints that it
//! skipped and passes, unless `HUB_REQUIRE_REDIS=1` (as in CI): then it fails.

#![allow(dead_code)]

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Whether Redis must be there (`HUB_REQUIRE_REDIS=1`): a missing one fails the test.
pub(crate) fn required() -> bool {
    std::env::var("HUB_REQUIRE_REDIS").as_deref() == Ok("1")
}

/// Says why the test does not run; fails instead when Redis is required.
///
/// Written to the process's stderr itself, not with `eprintln!`, which the test harness
/// captures and shows only for failed tests: a skip must be visible in a passing run.
pub(crate) fn skip(why: &str) {
    use std::io::Write;
    assert!(!required(), "HUB_REQUIRE_REDIS=1, but {why}");
    let test = std::thread::current().name().unwrap_or("a test").to_owned();
    let _ = writeln!(std::io::stderr().lock(), "skipped ({test}): {why}");
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

    /// Runs one command that answers OK (`["CONFIG", "SET", "maxmemory", "1"]`,
    /// `["SCRIPT", "FLUSH"]`, `["REPLICAOF", "NO", "ONE"]`) on a connection of its own.
    pub(crate) fn run(&self, args: &[&str]) {
        let (name, rest) = args.split_first().expect("a command");
        let mut cmd = redis::cmd(name);
        for arg in rest {
            cmd.arg(*arg);
        }
        let _: () = cmd.query(&mut self.cli()).expect("the command succeeds");
    }

    /// Sends a signal to the server (`-STOP` to hang it, `-CONT` to resume it).
    pub(crate) fn signal(&self, sig: &str) {
        let pid = self.pid().expect("running");
        let status = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {sig} {pid}");
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
