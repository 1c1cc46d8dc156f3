// hub.js's newer protocol features in headless Chromium, against the real hub of the
// `protocol` fixture (examples/e2e_server.rs) over each transport: subscribe's `last`,
// conflation with keys and deletions, a `since` ahead of the stream, events that ask for an
// answer (the host's emit_with_ack) and the client's own acked emit with its timeout. Then the
// reconnect hints (`retry_ms`) with a tiny server inside the test (Playwright's routes play it):
// a WebSocket close reason `shutdown;retry_ms=...`, and the `close` frame of SSE and
// long-polling with a `retry_ms` field.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { launch, startServer, openPage, until } from "./harness.mjs";

let browser, server;
before(async () => {
  browser = await launch();
  server = await startServer("protocol");
});
after(async () => {
  await server?.stop();
  await browser?.close();
});

/** A page with a connected `window.hub` over `transport`. */
async function connected(transport) {
  const p = await openPage(browser, server.url);
  await p.page.evaluate((transport) => {
    window.hub = new Hub({ transport, minDelay: 50, maxDelay: 500 });
    window.errors = [];
    hub.on("error", (e) => errors.push(e.code));
  }, transport);
  await until(p.page, `connected over ${transport}`, () => hub.state === "connected" && hub.session);
  return p;
}

/** Publishes `{n}` from the host; resolves with the position. */
async function publish(topic, n, extra = "") {
  const r = await server.call(`/publish?topic=${topic}&n=${n}${extra}`);
  assert.ok(!r.error, r.error);
  return r;
}

let unique = 0;
const topicName = (what) => `${what}-${process.pid}-${++unique}`;

for (const transport of ["ws", "sse", "poll"]) {
  test(`protocol over ${transport}: last gives the newest messages, then live ones`, async (t) => {
    const { page, context, errors } = await connected(transport);
    t.after(() => context.close());
    const topic = topicName("last");
    for (let n = 1; n <= 5; n++) await publish(topic, n);
    await page.evaluate((topic) => {
      window.got = [];
      window.sub = hub.subscribe(topic, (d, m) => got.push([m.offset, d.n]), { last: 2 });
      return sub.ready;
    }, topic);
    await until(page, "the newest two", () => got.length >= 2);
    await publish(topic, 6);
    await until(page, "the live one", () => got.length >= 3);
    assert.deepEqual(await page.evaluate(() => got), [[4, 4], [5, 5], [6, 6]]);
    assert.deepEqual(await page.evaluate(() => errors), []);
    assert.deepEqual(errors.map(String), []);
  });

  test(`protocol over ${transport}: conflate with last: the conflated notice, the newest value per key, keys and deletions`, async (t) => {
    const { page, context } = await connected(transport);
    t.after(() => context.close());
    const topic = topicName("scores");
    await publish(topic, 1, "&key=match:1"); // 1
    await publish(topic, 2, "&key=match:2"); // 2
    await publish(topic, 3, "&key=match:1"); // 3
    await publish(topic, 0, "&key=match:3&delete=1"); // 4
    await publish(topic, 5, "&key=match:1"); // 5
    await page.evaluate((topic) => {
      window.got = []; window.notices = []; window.gaps = [];
      window.sub = hub.subscribe(topic, (d, m) => got.push([m.offset, m.key, !!m.delete, d && d.n]), { last: 100, conflate: true });
      sub.on("conflated", (c) => notices.push([c.from, c.to]));
      sub.on("gap", (g) => gaps.push(g.reason));
      return sub.ready;
    }, topic);
    await until(page, "the newest per key", () => got.length >= 3);
    assert.deepEqual(await page.evaluate(() => notices), [[1, 3]]);
    assert.deepEqual(await page.evaluate(() => got), [[2, "match:2", false, 2], [4, "match:3", true, null], [5, "match:1", false, 5]]);
    // The page's own keyed publish reaches it with its key.
    const pos = await page.evaluate(() => hub.publish(sub.topic, { n: 9 }, { key: "match:9" }));
    assert.equal(pos.offset, 6);
    await until(page, "the page's own keyed message", () => got.length >= 4);
    assert.deepEqual(await page.evaluate(() => got[3]), [6, "match:9", false, 9]);
    assert.deepEqual(await page.evaluate(() => gaps), [], "no loss reported");
  });

  test(`protocol over ${transport}: a since ahead of the stream goes back, and the new messages of those offsets arrive`, async (t) => {
    const { page, context } = await connected(transport);
    t.after(() => context.close());
    const topic = topicName("ahead");
    const top = await publish(topic, 1);
    const info = await page.evaluate(({ topic, epoch }) => {
      window.got = []; window.gaps = [];
      window.sub = hub.subscribe(topic, (d, m) => got.push(m.offset), { since: { epoch, offset: 10 } });
      sub.on("gap", (g) => gaps.push([g.from, g.to, g.reason]));
      return sub.ready;
    }, { topic, epoch: top.epoch });
    assert.equal(info.recovered, false);
    assert.equal(info.gap.reason, "ahead");
    assert.deepEqual(await page.evaluate(() => gaps), [[2, 10, "ahead"]]);
    assert.deepEqual(await page.evaluate(() => sub.position), { epoch: top.epoch, offset: 1 });
    await publish(topic, 2);
    await until(page, "offset 2, given again", () => got.length >= 1);
    assert.deepEqual(await page.evaluate(() => got), [2]);
  });

  test(`protocol over ${transport}: events that ask for an answer, answered by a returned value and by reply(); a late answer is unknown_ack`, async (t) => {
    const { page, context } = await connected(transport);
    t.after(() => context.close());
    const session = await page.evaluate(() => {
      hub.onEvent("confirm", (d) => ({ accepted: d.n === 1 }));
      window.replies = [];
      hub.onEvent("later", (d, reply) => { replies.push(reply); });
      hub.onEvent("async", async (d) => { await new Promise((r) => setTimeout(r, 50)); return "thought about it"; });
      return hub.session;
    });
    assert.deepEqual(await server.call(`/ask?session=${session}&event=confirm`), { answer: { accepted: true } });
    assert.deepEqual(await server.call(`/ask?session=${session}&event=async`), { answer: "thought about it" });
    // The server stops waiting after 100 ms; the page answers after that.
    assert.deepEqual(await server.call(`/ask?session=${session}&event=later&timeout_ms=100`), { error: "timeout" });
    const late = await page.evaluate(() => replies[0]("too late").then(() => "sent", (e) => e.code));
    assert.equal(late, "unknown_ack");
    // Answered in time by reply().
    const asked = server.call(`/ask?session=${session}&event=later`);
    await until(page, "the second ask", () => replies.length === 2);
    assert.equal(await page.evaluate(() => replies[1]("in time").then(() => "sent", (e) => e.code)), "sent");
    assert.deepEqual(await asked, { answer: "in time" });
    assert.equal(await page.evaluate(() => replies[1]("twice").then(() => "sent", (e) => e.code)), "already_answered");
    // Nobody listens: reported, and the server's wait times out.
    assert.deepEqual(await server.call(`/ask?session=${session}&event=nobody&timeout_ms=100`), { error: "timeout" });
    assert.ok((await page.evaluate(() => errors)).includes("no_handler"));
  });

  test(`protocol over ${transport}: the page's own emit gets the handler's answer, or times out`, async (t) => {
    const { page, context } = await connected(transport);
    t.after(() => context.close());
    assert.deepEqual(await page.evaluate(() => hub.emit("echo", { a: [1, 2] })), { a: [1, 2] });
    assert.equal(await page.evaluate(() => hub.emit("nope", 1).then(() => "answered", (e) => e.code)), "unknown_event");
    // Last: the server runs a session's frames one at a time, so a handler that never answers
    // holds up everything this session sends after it.
    assert.equal(await page.evaluate(() => hub.emit("hang", 1, { timeout: 300 }).then(() => "answered", (e) => e.code)), "timeout");
    assert.equal(await page.evaluate(() => hub.state), "connected");
  });
}

// ---------------------------------------------------------------------------------------------
// Reconnect hints, with the server played by the test.
// ---------------------------------------------------------------------------------------------

const WELCOME = { type: "welcome", session: "5f0e8c1d2a3b4c6d", protocol: 1, encoding: "json", heartbeat_ms: 25000, timeout_ms: 60000 };


test("reconnect hint over ws: a close reason shutdown;retry_ms=1500 waits exactly that, then reconnects", async (t) => {
  const context = await browser.newContext();
  t.after(() => context.close());
  const page = await context.newPage();
  let connections = 0;
  await page.routeWebSocket(/\/fake-ws/, (ws) => {
    connections++;
    ws.send(JSON.stringify({ ...WELCOME, session: "s" + connections }));
    if (connections === 1) setTimeout(() => ws.close({ code: 1001, reason: "shutdown;retry_ms=1500" }), 100);
  });
  await page.goto(server.url);
  await page.evaluate(() => {
    window.states = [];
    window.hub = new Hub({ transport: "ws", ws: "/fake-ws", minDelay: 100, maxDelay: 5000 });
    hub.on("error", () => {});
    hub.on("state", (s) => states.push({ state: s.state, reason: s.reason, retryIn: s.retryIn, at: performance.now() }));
  });
  await until(page, "the second connection", () => hub.state === "connected" && hub.session === "s2", null, 10000);
  const states = await page.evaluate(() => states);
  const waiting = states.find((s) => s.retryIn !== undefined);
  assert.equal(waiting.reason, "shutdown", "the reason without its parameters");
  assert.equal(waiting.retryIn, 1500);
  const back = states.filter((s) => s.state === "connected").at(-1);
  const waited = back.at - waiting.at;
  assert.ok(waited >= 1450 && waited < 4000, `reconnected after ${waited} ms`);
  // The ceiling caps the hint.
  await page.evaluate(() => hub.close());
  connections = 0;
  await page.evaluate(() => { window.states = []; window.hub = new Hub({ transport: "ws", ws: "/fake-ws", minDelay: 100, maxDelay: 300 }); hub.on("error", () => {}); hub.on("state", (s) => states.push({ retryIn: s.retryIn })); });
  await until(page, "the capped wait", () => states.some((s) => s.retryIn !== undefined), null, 10000);
  assert.equal(await page.evaluate(() => states.find((s) => s.retryIn !== undefined).retryIn), 300);
});

test("reconnect hint over sse and poll: the close frame's retry_ms", async (t) => {
  for (const transport of ["sse", "poll"]) {
    const context = await browser.newContext();
    t.after(() => context.close());
    const page = await context.newPage();
    const close = { type: "close", code: 1001, reason: "shutdown", retry_ms: 1200 };
    await page.route(/\/fake-events/, (route) => {
      const req = route.request();
      if (req.method() === "POST") return route.fulfill({ status: 202, body: "" });
      const ev = (f) => `event: ${f.type}\ndata: ${JSON.stringify(f)}\n\n`;
      return route.fulfill({
        status: 200, headers: { "content-type": "text/event-stream; charset=utf-8" },
        body: "retry: 3000\n\n" + ev(WELCOME) + ev({ type: "session", session: WELCOME.session, token: "ab".repeat(32), commands: "/fake-events?session=" + WELCOME.session }) + ev(close),
      });
    });
    await page.route(/\/fake-poll/, (route) => {
      const req = route.request();
      const json = (v) => route.fulfill({ status: 200, headers: { "content-type": "application/json" }, body: JSON.stringify(v) });
      if (req.method() === "POST" && !req.url().includes("session=")) return json({ session: WELCOME.session + ".s3cret", cursor: "0", encoding: "json", wait_ms: 1000, timeout_ms: 60000 });
      if (req.method() === "GET" && req.url().includes("cursor=0")) return json({ cursor: "2", frames: [WELCOME, close] });
      if (req.method() === "GET") return route.fulfill({ status: 404, headers: { "content-type": "application/json" }, body: JSON.stringify({ code: "unknown_session", message: "gone" }) });
      return route.fulfill({ status: 204, body: "" });
    });
    await page.goto(server.url);
    await page.evaluate((transport) => {
      window.states = [];
      window.hub = new Hub({ transport, sse: "/fake-events", poll: "/fake-poll", minDelay: 100, maxDelay: 5000 });
      hub.on("error", () => {});
      hub.on("state", (s) => states.push({ state: s.state, reason: s.reason, retryIn: s.retryIn }));
    }, transport);
    await until(page, `the hint over ${transport}`, () => states.some((s) => s.retryIn !== undefined), null, 10000);
    const waiting = await page.evaluate(() => states.find((s) => s.retryIn !== undefined));
    assert.equal(waiting.reason, "shutdown", transport);
    assert.equal(waiting.retryIn, 1200, transport);
    await page.evaluate(() => hub.close());
  }
});
