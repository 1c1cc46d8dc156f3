// hub.js's wildcard subscriptions (`psubscribe`) in headless Chromium, against the real hub of
// the `protocol` fixture (examples/e2e_server.rs) over each transport: the messages of two
// topics through one pattern, then two interruptions with messages published meanwhile: the
// page going offline and back (a new session: the pattern is sent again with the positions of
// both topics, which recover what they missed), and the fixture's proxy dropping every
// connection and refusing new ones for a while (a network outage). Each message arrives once
// per topic, in order; a topic the pattern does not match never arrives.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { launch, startServer, openPage, until, shot } from "./harness.mjs";

let browser, server;
before(async () => {
  browser = await launch();
  server = await startServer("protocol");
});
after(async () => {
  await server?.stop();
  await browser?.close();
});

/** Publishes `{n}` to `topic` from the host; resolves with the position. */
async function publish(topic, n) {
  const r = await server.call(`/publish?topic=${topic}&n=${n}`);
  assert.ok(!r.error, r.error);
  return r;
}

/** The offsets delivered per topic, from the page's log of "topic|offset|n". */
function perTopic(log) {
  const out = {};
  for (const entry of log) {
    const [topic, offset, n] = entry.split("|");
    assert.equal(offset, n, `${entry}: the data of that offset`);
    (out[topic] ||= []).push(Number(offset));
  }
  return out;
}

const range = (a, b) => Array.from({ length: b - a + 1 }, (_, i) => a + i);

let unique = 0;
for (const transport of ["ws", "sse", "poll"]) {
  test(`patterns over ${transport}: two topics through one pattern, each message once per topic across a new session and a network outage`, async (t) => {
    const p = await openPage(browser, server.url);
    t.after(() => p.context.close());
    const { page } = p;
    const base = `pat-${process.pid}-${++unique}`;
    const [a, b] = [`${base}/a`, `${base}/b`];
    await page.evaluate(({ transport, pattern }) => {
      window.hub = new Hub({ transport, minDelay: 50, maxDelay: 500 });
      window.errors = [];
      hub.on("error", (e) => errors.push(e.code));
      window.got = []; window.infos = []; window.gaps = [];
      window.ps = hub.psubscribe(pattern, (d, m) => got.push(`${m.topic}|${m.offset}|${d.n}`));
      ps.on("subscribed", (i) => infos.push(i));
      ps.on("gap", (g) => gaps.push(g));
      return ps.ready.then(() => true);
    }, { transport, pattern: `${base}/*` });
    assert.equal(await page.evaluate(() => hub.transport), transport);

    await publish(a, 1);
    await publish(b, 1);
    await publish(`${base}/a/deep`, 1); // `*` is one segment: not this pattern's
    await publish(`other-${base}/a`, 1);
    await publish(a, 2);
    await until(page, "the first three", () => got.length >= 3);

    // Offline, then online: a new session, so the pattern is sent again with both positions.
    await page.evaluate(() => window.dispatchEvent(new Event("offline")));
    await until(page, "offline", () => hub.state === "offline");
    for (const n of [3, 4]) await publish(a, n);
    for (const n of [2, 3]) await publish(b, n);
    await page.evaluate(() => window.dispatchEvent(new Event("online")));
    await until(page, "resumed with both topics", () => infos.length >= 2 && hub.state === "connected");
    const resumed = await page.evaluate(() => infos[1]);
    assert.equal(resumed.resumed, true);
    assert.equal(resumed.recovered, true);
    assert.equal(resumed.topics, 2, "both topics resumed from their positions");
    assert.equal(resumed.missed, 4, "the four published while offline");
    await until(page, "the missed four", () => got.length >= 7);

    // The network goes away for a second: every connection cut, new ones refused.
    const { dropped } = await server.call("/drop?down_ms=1000");
    assert.ok(dropped >= 1, "the page had a connection to drop");
    for (const n of [5, 6]) await publish(a, n);
    await publish(b, 4);
    await until(page, "back after the outage", () => hub.state === "connected" && got.length >= 10);
    const all = await page.evaluate(() => infos);
    if (transport === "poll") {
      // The long-polling session outlived the cut: the same poll is repeated with its cursor,
      // the server kept the pattern, nothing to resume.
      assert.equal(all.length, 2, JSON.stringify(all));
    } else {
      assert.equal(all.length, 3, JSON.stringify(all));
      assert.deepEqual([all[2].resumed, all[2].recovered, all[2].topics, all[2].missed], [true, true, 2, 3]);
    }
    // Live again, and a third topic of the pattern.
    await publish(b, 5);
    await publish(`${base}/c`, 1);
    await until(page, "the live ones", () => got.length >= 12);

    const log = await page.evaluate(() => got);
    assert.equal(new Set(log).size, log.length, "no message twice");
    assert.deepEqual(perTopic(log), { [a]: range(1, 6), [b]: range(1, 5), [`${base}/c`]: [1] });
    assert.deepEqual(await page.evaluate(() => gaps), [], "nothing lost");
    const positions = await page.evaluate(() => ps.positions());
    assert.deepEqual(Object.fromEntries(Object.entries(positions).map(([k, v]) => [k, v.offset])), { [a]: 6, [b]: 5, [`${base}/c`]: 1 });
    assert.ok((await page.evaluate(() => hub.reconnects)) >= 1);
    assert.deepEqual(await page.evaluate(() => errors), []);
    assert.deepEqual(p.errors.map(String), []);
    await shot(page, `patterns-${transport}`);

    // punsubscribe: nothing more arrives, and the same pattern can be taken again.
    // (The echo's answer comes after the punsubscribe was taken: commands run in order.)
    await page.evaluate(() => { ps.unsubscribe(); return hub.emit("echo", 1); });
    await publish(a, 7);
    const again = await page.evaluate((pattern) => {
      window.got2 = [];
      window.ps2 = hub.psubscribe(pattern, (d, m) => got2.push(`${m.topic}|${m.offset}|${d.n}`));
      return ps2.ready.then((i) => i.resumed);
    }, `${base}/*`);
    assert.equal(again, false);
    await publish(a, 8);
    await until(page, "the new pattern's first", () => got2.length >= 1);
    assert.deepEqual(await page.evaluate(() => [got.length, got2]), [12, [`${a}|8|8`]]);
  });
}

test("patterns: a bad pattern is refused with its code", async (t) => {
  const p = await openPage(browser, server.url);
  t.after(() => p.context.close());
  const code = await p.page.evaluate(() => {
    window.hub = new Hub({ transport: "ws" });
    hub.on("error", () => {});
    return hub.psubscribe("a//*", () => {}).ready.then(() => "ok", (e) => e.code);
  });
  assert.equal(code, "bad_pattern");
});
