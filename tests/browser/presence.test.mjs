// Presence at scale from hub.js in headless Chromium, against the real hub of the `protocol`
// fixture over each transport: counts without the member list (`presenceCount`), the member
// list gathered page by page (`presence`), and per-user join/leave (`presence: "users"`;
// anonymous sessions are users of their own).
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

let unique = 0;

for (const transport of ["ws", "sse", "poll"]) {
  test(`presence over ${transport}: counts, every member, a join and a leave per user`, async (t) => {
    const topic = `presence-${process.pid}-${++unique}`;
    const a = await connected(transport);
    t.after(() => a.context.close());
    await a.page.evaluate((topic) => {
      window.events = [];
      const sub = hub.subscribe(topic, () => {}, { presence: "users" });
      sub.on("join", (m) => events.push(["join", m.session]));
      sub.on("leave", (m) => events.push(["leave", m.session]));
      return sub.ready;
    }, topic);
    const b = await connected(transport);
    const bSession = await b.page.evaluate((topic) => hub.subscribe(topic, () => {}).ready.then(() => hub.session), topic);
    await until(a.page, "b's join", () => events.length >= 1);
    assert.deepEqual(await a.page.evaluate(() => events), [["join", bSession]]);
    assert.deepEqual(await a.page.evaluate((topic) => hub.presenceCount(topic), topic), { count: 2, users: 2 });
    const members = await a.page.evaluate((topic) => hub.presence(topic).then((ms) => ms.map((m) => m.session).sort()), topic);
    const aSession = await a.page.evaluate(() => hub.session);
    assert.deepEqual(members, [aSession, bSession].sort());
    // The client closes (long-polling: a DELETE ends the session at once).
    await b.page.evaluate(() => hub.close());
    await b.context.close();
    await until(a.page, "b's leave", () => events.length >= 2);
    assert.deepEqual(await a.page.evaluate(() => events), [["join", bSession], ["leave", bSession]]);
    assert.deepEqual(await a.page.evaluate((topic) => hub.presenceCount(topic), topic), { count: 1, users: 1 });
    assert.deepEqual(await a.page.evaluate(() => errors), []);
  });
}
