// What every browser test shares: the fixture server (examples/e2e_server.rs), headless
// Chromium (Debian's /usr/bin/chromium, driven by playwright-core; no browser is downloaded),
// screenshots, and waiting for conditions (never sleeping for them).
import { execFile, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { once } from "node:events";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
export const SERVER = process.env.HUB_E2E_SERVER || path.join(ROOT, "target/debug/examples/e2e_server");
export const SHOTS = process.env.HUB_E2E_SHOTS || path.join(ROOT, "target/browser-screenshots");
export const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
/** The shared Redis of the tests that run the fixture on the Redis engine (as the Rust tests:
 * `HUB_REDIS_URL`, default 127.0.0.1:6379). Each such test keeps its keys under a prefix of its
 * own and deletes them at the end. */
export const REDIS_URL = process.env.HUB_REDIS_URL || "redis://127.0.0.1:6379";
/** `HUB_REQUIRE_REDIS=1` (CI): a missing Redis fails those tests instead of skipping them. */
export const REDIS_REQUIRED = process.env.HUB_REQUIRE_REDIS === "1";

/** Chromium's flags: nothing that phones home, a fresh profile (playwright makes one per
 * launch), no sandbox (CI runs as root). */
const FLAGS = [
  "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
  "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
  "--disable-dev-shm-usage",
];

export async function launch() {
  if (!fs.existsSync(CHROMIUM)) throw new Error(`no Chromium at ${CHROMIUM}: apt-get install chromium chromium-driver`);
  if (!fs.existsSync(SERVER)) throw new Error(`no fixture server at ${SERVER}: cargo build --example e2e_server`);
  return chromium.launch({ executablePath: CHROMIUM, headless: true, args: FLAGS, timeout: 60000 });
}

/** A running fixture server: `example` with `args`, on `addr` (default: a free port). */
export async function startServer(example, args = [], addr = null) {
  const argv = [example, ...args];
  if (addr) argv.push("--addr", addr);
  const proc = spawn(SERVER, argv, { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, RUST_LOG: process.env.RUST_LOG || "warn" } });
  let stderr = "";
  proc.stderr.on("data", (d) => { stderr = (stderr + d).slice(-20000); });
  const line = await new Promise((resolve, reject) => {
    let out = "";
    const timer = setTimeout(() => reject(new Error("the fixture server did not start: " + stderr)), 20000);
    proc.stdout.on("data", (d) => {
      out += d;
      const nl = out.indexOf("\n");
      if (nl >= 0) { clearTimeout(timer); resolve(out.slice(0, nl)); }
    });
    proc.on("exit", (code) => { clearTimeout(timer); reject(new Error(`the fixture server exited (${code}): ${stderr}`)); });
  });
  const info = JSON.parse(line);
  const server = {
    example, args, proc, url: info.url, admin: info.admin, pid: info.pid,
    port: new URL(info.url).port,
    get stderr() { return stderr; },
    /** Calls an admin route; resolves with its JSON. */
    async call(route, method = "POST") {
      const res = await fetch(new URL(route, info.admin), { method });
      if (!res.ok) throw new Error(`${method} ${route}: ${res.status}`);
      return res.json();
    },
    async get(route) {
      return fetch(new URL(route, info.url), { cache: "no-store" });
    },
    /** Stops it (SIGTERM: the hub shuts down gracefully) and waits for the exit. */
    async stop(signal = "SIGTERM") {
      if (proc.exitCode !== null || proc.signalCode !== null) return;
      const exited = once(proc, "exit");
      proc.kill(signal);
      const timer = setTimeout(() => proc.kill("SIGKILL"), 10000);
      await exited;
      clearTimeout(timer);
    },
  };
  return server;
}

/** A new browser context (its own storage) with one page; page errors are collected. */
export async function openPage(browser, url, { viewport = { width: 1280, height: 860 } } = {}) {
  const context = await browser.newContext({ viewport });
  const page = await context.newPage();
  const errors = [];
  const console = [];
  page.on("pageerror", (e) => errors.push(e));
  page.on("console", (m) => { console.push(`${m.type()}: ${m.text()}`); if (console.length > 500) console.shift(); });
  await page.goto(url);
  return { context, page, errors, console };
}

/** Saves a screenshot under target/browser-screenshots/<name>.png. */
export async function shot(page, name) {
  fs.mkdirSync(SHOTS, { recursive: true });
  const file = path.join(SHOTS, name + ".png");
  await page.screenshot({ path: file });
  return file;
}

/** Waits until `fn` (in the page) returns something truthy; fails with `what` after `timeout`. */
export async function until(page, what, fn, arg, timeout = 20000) {
  try {
    return await (await page.waitForFunction(fn, arg, { timeout, polling: 50 })).jsonValue();
  } catch (e) {
    throw new Error(`waited ${timeout} ms for ${what}: ${e.message.split("\n")[0]}`);
  }
}

/** Checks a page's log of positions ("epoch:offset", in delivery order): no duplicate, and in
 * each epoch every offset one more than the one before. Returns the epochs, in order. */
export function checkSequence(log, assert) {
  assert.equal(new Set(log).size, log.length, "no position delivered twice");
  const epochs = [];
  let prev = null;
  for (const entry of log) {
    const [epoch, off] = entry.split(":");
    const offset = Number(off);
    if (!prev || prev.epoch !== epoch) {
      assert.ok(!epochs.includes(epoch), `epoch ${epoch} comes back after another`);
      epochs.push(epoch);
    } else {
      assert.equal(offset, prev.offset + 1, `after ${prev.epoch}:${prev.offset} comes ${entry}: a hole or a reordering`);
    }
    prev = { epoch, offset };
  }
  return epochs;
}

/** Deletes every key under `prefix` on the shared Redis (the fixture's `redis-clean`, which
 * touches the hub's key layout for that prefix and nothing else). Resolves with how many;
 * rejects when Redis cannot be reached. */
export function redisClean(prefix) {
  return new Promise((resolve, reject) => {
    execFile(SERVER, ["redis-clean", "--redis", REDIS_URL, "--prefix", prefix], { timeout: 15000 }, (err, stdout, stderr) => {
      if (err) return reject(new Error((stderr || err.message).trim()));
      try { resolve(JSON.parse(stdout).deleted); } catch (e) { reject(new Error(`redis-clean said ${JSON.stringify(stdout)}`)); }
    });
  });
}

/** A key prefix of test `t`'s own on the shared Redis (`name` makes it readable), with the
 * fixture's arguments for it and `clean()`. Without Redis: the test is marked skipped and this
 * resolves with null, unless HUB_REQUIRE_REDIS=1, where it throws (the test fails). */
export async function redisFor(t, name) {
  const prefix = `hub-e2e-${process.pid}-${randomBytes(6).toString("hex")}-${name}`;
  try {
    await redisClean(prefix); // nothing to delete: a unique prefix; this checks that Redis answers
  } catch (e) {
    if (REDIS_REQUIRED) throw new Error(`HUB_REQUIRE_REDIS=1, but no Redis at ${REDIS_URL}: ${e.message}`);
    t.skip(`no Redis at ${REDIS_URL} (${e.message}); HUB_REQUIRE_REDIS=1 makes this a failure`);
    return null;
  }
  return { prefix, args: ["--engine", "redis", "--redis", REDIS_URL, "--prefix", prefix], clean: () => redisClean(prefix) };
}

/** Waits until the async `fn` (in the test) resolves with something truthy, asking every 50 ms;
 * fails with `what` after `timeout`. */
export async function eventually(what, fn, timeout = 20000) {
  const end = Date.now() + timeout;
  for (;;) {
    const got = await fn();
    if (got) return got;
    if (Date.now() > end) throw new Error(`waited ${timeout} ms for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
