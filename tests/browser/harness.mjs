// What every browser test shares: the fixture server (examples/e2e_server.rs), headless
// Chromium (Debian's /usr/bin/chromium, driven by playwright-core; no browser is downloaded),
// screenshots, and waiting for conditions (never sleeping for them).
import { spawn } from "node:child_process";
import { once } from "node:events";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
export const SERVER = process.env.HUB_E2E_SERVER || path.join(ROOT, "target/debug/examples/e2e_server");
export const SHOTS = process.env.HUB_E2E_SHOTS || path.join(ROOT, "target/browser-screenshots");
export const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
/** The engine of the fixture's hub: `memory` (in process, the default) or, once hub-redis is
 * merged, `redis` (TODO(redis): the fixture's `--engine redis`). Decides what a server restart
 * must look like to the page. */
export const ENGINE = process.env.HUB_E2E_ENGINE || "memory";

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
