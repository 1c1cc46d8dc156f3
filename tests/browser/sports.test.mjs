// The sports page on hub.js, over each transport: live updates; a connection dropped
// mid-stream; the whole server restarted; fallbacks when transports are refused; a kick; a
// dead connection found by missed heartbeats; malformed frames.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { launch, startServer, openPage, shot, until, eventually, checkSequence, redisFor } from "./harness.mjs";

const NAMES = { ws: "WebSocket", sse: "SSE", poll: "long-polling" };
const TICK = ["--tick-ms", "100"]; // six matches: up to 60 updates a second

let browser;
before(async () => { browser = await launch(); });
after(async () => { await browser?.close(); });

/** Opens the board (over `transport`, or auto) and waits until it is live. */
async function board(server, transport) {
  const q = transport ? "?transport=" + transport : "";
  const p = await openPage(browser, server.url + q);
  await until(p.page, "the page to be connected", () => window.matchday && matchday.hub && matchday.hub.state === "connected");
  return p;
}

const logLength = (page) => page.evaluate(() => matchday.log.length);

/** Stops the feed, waits until the page has the last update, and checks that the board shows
 * exactly what the server's /matches says (each card's teams, score, minute and status).
 * Returns the page's log. */
async function settle(page, server) {
  const last = await server.call("/pause");
  await until(page, `the page to reach ${last.epoch}:${last.offset}`,
    (l) => matchday.log.length > 0 && matchday.log[matchday.log.length - 1] === l.epoch + ":" + l.offset, last);
  const res = await server.get("/matches");
  const matches = await res.json();
  const want = Object.fromEntries(matches.map((m) => [m.id, `${m.home} ${m.home_score}-${m.away_score} ${m.minute} ${m.status} ${m.away}`]));
  // The board as the page shows it, in the same form.
  await page.evaluate(() => {
    window.e2eCards = () => Object.fromEntries([...document.querySelectorAll("#grid .card")].map((c) => [c.dataset.id,
      `${c.querySelector(".home .tname").textContent} ${c.dataset.state} ${c.querySelector(".away .tname").textContent}`]));
  });
  // The page may still be drawing the last update: wait for the board to agree.
  const got = await until(page, "the board to match /matches", (w) => {
    const have = e2eCards();
    return JSON.stringify(Object.keys(have).sort().map((k) => [k, have[k]])) === JSON.stringify(Object.keys(w).sort().map((k) => [k, w[k]])) && have;
  }, want).catch(async (e) => {
    const have = await page.evaluate(() => e2eCards());
    assert.deepEqual(have, want, e.message);
  });
  if (got) assert.deepEqual(got, want);
  return page.evaluate(() => matchday.log.slice());
}

function assertNoPageErrors(p) {
  assert.deepEqual(p.errors.map(String), [], "no uncaught exception in the page");
}

for (const transport of ["ws", "sse", "poll"]) {
  test(`sports over ${transport}: the page shows live updates`, async (t) => {
    const server = await startServer("sports", TICK);
    t.after(() => server.stop());
    const p = await board(server, transport);
    t.after(() => p.context.close());
    const { page } = p;
    assert.equal(await page.evaluate(() => matchday.hub.transport), transport);
    await until(page, "30 live updates", () => matchday.log.length >= 30);
    assert.equal(await page.locator("#grid .card").count(), 6);
    const line = await page.textContent("#conn");
    assert.match(line, /Live/);
    assert.match(line, new RegExp(NAMES[transport]));
    assert.match(line, /0 reconnects/);
    assert.equal(await page.getAttribute(`#switch button[data-mode="${transport}"]`, "aria-pressed"), "true");
    const log = await settle(page, server);
    assert.equal(checkSequence(log, assert).length, 1, "one epoch");
    await shot(page, `sports-${transport}-live`);
    assertNoPageErrors(p);
  });

  test(`sports over ${transport}: the server drops the connection mid-stream`, async (t) => {
    const server = await startServer("sports", TICK);
    t.after(() => server.stop());
    const p = await board(server, transport);
    t.after(() => p.context.close());
    const { page } = p;
    await until(page, "20 updates", () => matchday.log.length >= 20);
    // Every connection cut, and new ones refused for a second: a short network outage.
    const { dropped } = await server.call("/drop?down_ms=1000");
    assert.ok(dropped >= 1, "the page had a connection to drop");
    const before = await logLength(page);
    await until(page, "a reconnection", () => matchday.hub.reconnects >= 1 && matchday.hub.state === "connected");
    assert.equal(await page.evaluate(() => matchday.hub.transport), transport, "the same transport again");
    await until(page, "more updates after the reconnection", (n) => matchday.log.length >= n + 20, before);
    const log = await settle(page, server);
    assert.equal(checkSequence(log, assert).length, 1, "every score in order, no duplicate, one epoch");
    const notes = await page.evaluate(() => matchday.notes);
    if (transport === "poll") {
      // The session outlived the cut: the same poll is repeated with its cursor; nothing to resume.
      assert.ok(!notes.some((n) => /could not|reloaded/.test(n)), notes.join(" | "));
    } else {
      const note = notes.find((n) => n.startsWith("Reconnected"));
      assert.match(note || "", new RegExp(`Reconnected over ${NAMES[transport]}: recovered \\d+ missed update`), notes.join(" | "));
    }
    assert.match(await page.textContent("#conn"), /1 reconnect\b/);
    await shot(page, `sports-${transport}-dropped`);
    assertNoPageErrors(p);
  });

  test(`sports over ${transport}: the whole server process restarts (in-process engine): a new epoch, the page is told and reloads its board`, async (t) => {
    const first = await startServer("sports", TICK);
    let second = null;
    t.after(() => Promise.all([first.stop(), second && second.stop()]));
    const p = await board(first, transport);
    t.after(() => p.context.close());
    const { page } = p;
    await until(page, "20 updates", () => matchday.log.length >= 20);
    const epoch1 = (await page.evaluate(() => matchday.log[0])).split(":")[0];
    await first.stop(); // SIGTERM: sessions end with reason `shutdown`
    await until(page, "the page to notice", () => matchday.hub.state !== "connected");
    second = await startServer("sports", [...TICK, "--seed", "2"], `127.0.0.1:${first.port}`); // other matches
    await until(page, "a reconnection to the new process", () => matchday.hub.state === "connected" && matchday.hub.reconnects >= 1, null, 30000);
    await until(page, "updates from the new process", (e) => matchday.log.some((x) => !x.startsWith(e + ":")), epoch1);
    const log = await settle(page, second);
    const epochs = checkSequence(log, assert);
    const notes = await page.evaluate(() => matchday.notes);
    // The in-process engine loses its streams with the process: a new epoch. The page is told
    // (`recovered: false`, gap reason `epoch`) and reloads its state: no silent loss.
    assert.equal(epochs.length, 2, "the old epoch, then the new one");
    assert.ok(notes.some((n) => /the feed restarted: the board was reloaded/.test(n)), notes.join(" | "));
    assert.ok(await page.evaluate(() => matchday.snapshots) >= 2, "the board was reloaded from /matches");
    await shot(page, `sports-${transport}-restarted`);
    assertNoPageErrors(p);
  });

  // On Redis the streams outlive the process. The process is killed (SIGKILL), not stopped:
  // that the page loses nothing must not lean on a goodbye (no close frame, no last publish, a
  // tick maybe cut between its two publishes, presence left to expire), and a crash is the
  // case a shared engine is for; the graceful path (SIGTERM, reason `shutdown`) is the test
  // above. Before the kill the page's connection is stalled while the feed goes on, so that the
  // page has missed updates that only the first process published: the second one must hand
  // them over from Redis.
  test(`sports over ${transport} on Redis: the whole server process restarts: the page recovers with every score in order and no duplicate`, async (t) => {
    const redis = await redisFor(t, transport);
    if (!redis) return;
    const args = [...TICK, ...redis.args];
    const first = await startServer("sports", args);
    let second = null;
    t.after(async () => {
      await Promise.all([first.stop("SIGKILL"), second && second.stop()]);
      await redis.clean();
    });
    const p = await board(first, transport);
    t.after(() => p.context.close());
    const { page } = p;
    await until(page, "the subscription", () => matchday.sub && matchday.sub.state === "subscribed");
    await page.evaluate(() => { window.subscribed = []; matchday.sub.on("subscribed", (info) => subscribed.push(info)); });
    await until(page, "20 updates", () => matchday.log.length >= 20);
    const epoch = (await page.evaluate(() => matchday.log[0])).split(":")[0];

    // The page hears nothing more from the first process; its feed goes on.
    assert.ok((await first.call("/stall")).stalled >= 1);
    const heard = async () => Number((await page.evaluate(() => matchday.log[matchday.log.length - 1])).split(":")[1]);
    const top = async (server) => Number((await server.get("/matches")).headers.get("x-scores-offset"));
    const published = await eventually("20 updates the page does not get", async () => {
      const [h, o] = [await heard(), await top(first)];
      return o >= h + 20 && o;
    });
    await first.stop("SIGKILL");
    const last = await heard(); // all the page got from the first process
    assert.ok(published >= last + 20, `the page stopped at ${last}, the first process published up to ${published} at least`);
    await until(page, "the page to notice", () => matchday.hub.state !== "connected");

    second = await startServer("sports", [...args, "--seed", "2"], `127.0.0.1:${first.port}`); // other dice, the same board
    await until(page, "a reconnection to the new process", () => matchday.hub.state === "connected" && matchday.hub.reconnects >= 1, null, 30000);
    await until(page, "the resubscription", () => subscribed.length >= 1);
    await until(page, "updates from the new process", (n) => Number(matchday.log[matchday.log.length - 1].split(":")[1]) > n, published);
    const log = await settle(page, second); // the board equals the new process's /matches
    const epochs = checkSequence(log, assert); // no duplicate, no hole, in order
    assert.deepEqual(epochs, [epoch], "one epoch across the restart");
    const infos = await page.evaluate(() => subscribed);
    assert.equal(infos.length, 1, JSON.stringify(infos));
    assert.equal(infos[0].recovered, true, JSON.stringify(infos[0]));
    assert.equal(infos[0].resumed, true);
    assert.ok(infos[0].missed >= published - last, `recovered ${infos[0].missed}, missed ${published - last} at least`);
    const notes = await page.evaluate(() => matchday.notes);
    const note = notes.find((n) => n.startsWith("Reconnected"));
    assert.match(note || "", new RegExp(`Reconnected over ${NAMES[transport]}: recovered ${infos[0].missed} missed updates`), notes.join(" | "));
    assert.ok(!notes.some((n) => /reloaded|could not/i.test(n)), notes.join(" | "));
    assert.equal(await page.evaluate(() => matchday.snapshots), 1, "the board was never reloaded: it is made of the updates alone");
    assert.equal(await page.evaluate(() => matchday.hub.transport), transport);
    await shot(page, `sports-${transport}-redis-restarted`);
    assertNoPageErrors(p);
    // Its keys, and nothing else, are deleted; some there were (the fixture used the prefix).
    await p.context.close();
    await second.stop();
    assert.ok((await redis.clean()) > 0, "the servers kept their streams under the test's prefix");
  });
}

test("sports auto: with WebSocket refused, the page falls back to SSE and remembers it", async (t) => {
  const server = await startServer("sports", [...TICK, "--refuse-ws"]);
  t.after(() => server.stop());
  const p = await board(server, null);
  t.after(() => p.context.close());
  const { page } = p;
  assert.equal(await page.evaluate(() => matchday.hub.transport), "sse");
  await until(page, "live updates over SSE", () => matchday.log.length >= 20);
  assert.match(await page.textContent("#conn"), /Live.*SSE/);
  const refused = (await server.call("/stats", "GET")).ws_refused;
  assert.ok(refused >= 1, "WebSocket was tried first");
  await shot(page, "sports-fallback-sse");
  // A reload starts with what worked for the page: WebSocket is not tried again.
  await page.reload();
  await until(page, "connected again", () => window.matchday && matchday.hub.state === "connected");
  assert.equal(await page.evaluate(() => matchday.hub.transport), "sse");
  assert.equal((await server.call("/stats", "GET")).ws_refused, refused, "WebSocket not tried after the reload");
  assertNoPageErrors(p);
});

test("sports auto: with WebSocket and SSE refused, the page falls back to long-polling", async (t) => {
  const server = await startServer("sports", [...TICK, "--refuse-ws", "--refuse-sse"]);
  t.after(() => server.stop());
  const p = await board(server, null);
  t.after(() => p.context.close());
  const { page } = p;
  assert.equal(await page.evaluate(() => matchday.hub.transport), "poll");
  await until(page, "live updates over long-polling", () => matchday.log.length >= 20);
  assert.match(await page.textContent("#conn"), /Live.*long-polling/);
  const stats = await server.call("/stats", "GET");
  assert.ok(stats.ws_refused >= 1 && stats.sse_refused >= 1, JSON.stringify(stats));
  const log = await settle(page, server);
  checkSequence(log, assert);
  await shot(page, "sports-fallback-poll");
  assertNoPageErrors(p);
});

test("sports: the transport switch moves the page between transports without a hole", async (t) => {
  const server = await startServer("sports", TICK);
  t.after(() => server.stop());
  const p = await board(server, "ws");
  t.after(() => p.context.close());
  const { page } = p;
  for (const mode of ["sse", "poll", "ws"]) {
    const n = await logLength(page);
    await page.click(`#switch button[data-mode="${mode}"]`);
    await until(page, `connected over ${mode}`, (m) => matchday.hub.state === "connected" && matchday.hub.transport === m, mode);
    await until(page, `updates over ${mode}`, (k) => matchday.log.length >= k + 10, n);
    assert.match(page.url(), new RegExp(`transport=${mode}`));
  }
  const log = await settle(page, server);
  assert.equal(checkSequence(log, assert).length, 1);
  await shot(page, "sports-switch");
  assertNoPageErrors(p);
});

for (const transport of ["ws", "sse", "poll"]) {
  test(`sports over ${transport}: a kicked page stops and does not come back`, async (t) => {
    const server = await startServer("sports", TICK);
    t.after(() => server.stop());
    const p = await board(server, transport);
    t.after(() => p.context.close());
    const { page } = p;
    // Connected is not yet subscribed (over long-polling the subscribe takes a round trip
    // more): /kick finds the page by its subscription.
    await until(page, "the subscription", () => matchday.sub && matchday.sub.state === "subscribed");
    const { kicked } = await server.call("/kick");
    assert.equal(kicked, 1);
    await until(page, "the page to stop", () => matchday.hub.state === "closed");
    assert.match(await page.textContent("#conn"), /Disconnected: kicked/);
    // Longer than any backoff's first step: it must not have reconnected.
    await new Promise((r) => setTimeout(r, 1500));
    assert.equal(await page.evaluate(() => matchday.hub.state), "closed");
    assert.equal((await server.call("/stats", "GET")).sessions, 0, "no session came back");
    await shot(page, `sports-${transport}-kicked`);
    assertNoPageErrors(p);
  });
}

for (const transport of ["ws", "sse", "poll"]) {
  test(`sports over ${transport}: a dead connection is found by missed heartbeats`, async (t) => {
    // A slower feed: a reconnection may first meet a stalled keep-alive socket of the
    // browser's pool and wait out its connect timeout (10 s); the history (600 updates) must
    // outlast that for the resume to be exact.
    const server = await startServer("sports", ["--tick-ms", "250", "--heartbeat-ms", "500"]);
    t.after(() => server.stop());
    const p = await board(server, transport);
    t.after(() => p.context.close());
    const { page } = p;
    await until(page, "10 updates", () => matchday.log.length >= 10);
    const { stalled } = await server.call("/stall"); // connections stay open, nothing flows
    assert.ok(stalled >= 1);
    await until(page, "a reconnection after the silence", () => matchday.hub.reconnects >= 1 && matchday.hub.state === "connected", null, 30000);
    const n = await logLength(page);
    await until(page, "updates again", (k) => matchday.log.length >= k + 10, n);
    const log = await settle(page, server);
    assert.equal(checkSequence(log, assert).length, 1);
    await shot(page, `sports-${transport}-heartbeat`);
    assertNoPageErrors(p);
  });
}

test("sports over ws: malformed and unknown frames are reported, the connection stays", async (t) => {
  const server = await startServer("sports", TICK);
  t.after(() => server.stop());
  const context = await browser.newContext({ viewport: { width: 1280, height: 860 } });
  t.after(() => context.close());
  const page = await context.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(e));
  // Between the page and the server: pass everything, and inject garbage on demand.
  let toPage = null;
  await page.routeWebSocket(/\/ws/, (ws) => {
    const up = ws.connectToServer();
    toPage = ws;
    ws.onMessage((m) => up.send(m));
    up.onMessage((m) => ws.send(m));
  });
  await page.goto(server.url + "?transport=ws");
  await until(page, "connected", () => window.matchday && matchday.hub.state === "connected");
  await page.evaluate(() => { window.hubErrors = []; matchday.hub.on("error", (e) => hubErrors.push(e.code)); });
  const session = await page.evaluate(() => matchday.hub.session);
  for (const junk of ["not json", "[1,2,3]", "{\"no\":\"type\"}", "{\"type\":\"message\",\"topic\":\"scores/all\"}",
    "{\"type\":\"mystery\",\"x\":1}", "{\"type\":\"gap\",\"topic\":7}", "null", Buffer.from([0xc1, 0x00])]) toPage.send(junk);
  await until(page, "8 error events", () => hubErrors.length >= 8);
  const codes = await page.evaluate(() => hubErrors);
  assert.deepEqual(codes, ["bad_frame", "bad_frame", "bad_frame", "bad_frame", "unknown_frame", "bad_frame", "bad_frame", "bad_frame"]);
  const n = await logLength(page);
  await until(page, "updates after the junk", (k) => matchday.log.length >= k + 10, n);
  assert.equal(await page.evaluate(() => matchday.hub.session), session, "the same connection");
  assert.equal(await page.evaluate(() => matchday.hub.reconnects), 0);
  const log = await settle(page, server);
  checkSequence(log, assert);
  await shot(page, "sports-malformed-frames");
  assert.deepEqual(errors.map(String), []);
});

test("hub.mjs is the same client as an ES module, and sets no global", async (t) => {
  const server = await startServer("sports", TICK);
  t.after(() => server.stop());
  const p = await board(server, "ws");
  t.after(() => p.context.close());
  const got = await p.page.evaluate(async () => {
    const m = await import("/hub.mjs");
    return { type: typeof m.default, same: m.default === m.Hub, global: m.default === window.Hub, version: m.default.version, codecs: Object.keys(m.default.codecs) };
  });
  assert.deepEqual(got, { type: "function", same: true, global: false, version: 1, codecs: ["json", "msgpack"] });
  await shot(p.page, "sports-esm");
});
