// The chat page on hub.js, over each transport: two pages in one room see each other's
// presence, chat with acked events, see each other typing, write privately and get
// notifications in their own rooms; a taken name is refused by the authenticate hook with a
// clear message; a message written offline is sent when the network is back.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { launch, startServer, openPage, shot, until } from "./harness.mjs";

let browser;
before(async () => { browser = await launch(); });
after(async () => { await browser?.close(); });

/** Opens the chat as `name` (over `transport`, or auto) and waits until it is in its room. */
async function join(server, name, transport) {
  const q = new URLSearchParams({ name });
  if (transport) q.set("transport", transport);
  const p = await openPage(browser, server.url + "?" + q, { viewport: { width: 1100, height: 720 } });
  await until(p.page, `${name} connected`, () => window.chat && chat.hub.state === "connected");
  await until(p.page, `${name} in the room`, () => document.querySelector("#people li.me") !== null);
  return p;
}

const people = (page) => page.$$eval("#people li .name", (els) => els.map((e) => e.textContent).sort());
const messages = (page) => page.$$eval("#log .msg .text", (els) => els.map((e) => e.textContent));

for (const transport of ["ws", "sse", "poll"]) {
  test(`chat over ${transport}: two pages chat in one room, with presence, acks, typing, private messages and notifications`, async (t) => {
    const server = await startServer("chat");
    t.after(() => server.stop());
    const ana = await join(server, "ana", transport);
    t.after(() => ana.context.close());
    const bo = await join(server, "bo", transport);
    t.after(() => bo.context.close());
    assert.equal(await ana.page.evaluate(() => chat.hub.transport), transport);
    assert.equal(await bo.page.evaluate(() => chat.hub.transport), transport);

    // Presence: each sees the other (ana by bo's `join` event, bo by the presence answer).
    await until(ana.page, "ana to see bo", () => [...document.querySelectorAll("#people .name")].some((e) => e.textContent === "bo"));
    assert.deepEqual(await people(ana.page), ["ana", "bo"]);
    assert.deepEqual(await people(bo.page), ["ana", "bo"]);
    await until(ana.page, "the join line", () => document.querySelector("#log").textContent.includes("bo joined"));

    // Typing: bo types, ana sees it.
    await bo.page.fill("#text", "h");
    await bo.page.dispatchEvent("#text", "input");
    await until(ana.page, "bo is typing", () => document.querySelector("#typing").textContent === "bo is typing…");

    // A message, acked by the server's handler; the other page gets it.
    await ana.page.fill("#text", "hello bo");
    await ana.page.press("#text", "Enter");
    await until(ana.page, "the ack", () => { const s = document.querySelector("#log .msg.mine .state"); return s && s.textContent.includes("✓ delivered"); });
    await until(bo.page, "bo to get it", () => [...document.querySelectorAll("#log .msg .text")].some((e) => e.textContent === "hello bo"));
    assert.equal(await bo.page.textContent("#log .msg:not(.mine) .who"), "ana" + (await bo.page.textContent("#log .msg:not(.mine) .who time")));

    // A private message: ana clicks bo, writes; bo gets it and a notification (its user room).
    await ana.page.click("#people li:not(.me)");
    assert.equal(await ana.page.textContent("#dm-name"), "bo");
    await ana.page.fill("#text", "psst, just you");
    await ana.page.press("#text", "Enter");
    await until(ana.page, "the private ack", () => { const s = document.querySelector("#log .msg.private.mine .state"); return s && s.textContent.includes("✓ delivered"); });
    await until(bo.page, "the private message", () => { const m = document.querySelector("#log .msg.private .text"); return m && m.textContent === "psst, just you"; });
    await until(bo.page, "the notification", () => document.querySelector("#notes li") && document.querySelector("#notes li").textContent.startsWith("ana wrote to you privately"));
    assert.equal(await bo.page.textContent("#bell-count"), "1");

    // A mention: bo names @ana in the room; ana is notified.
    await bo.page.fill("#text", "hi @ana!");
    await bo.page.press("#text", "Enter");
    await until(ana.page, "the mention", () => [...document.querySelectorAll("#notes li")].some((li) => li.textContent.startsWith("bo mentioned you in #general")));
    assert.deepEqual(await messages(ana.page), ["hello bo", "psst, just you", "hi @ana!"]);

    await shot(ana.page, `chat-${transport}-ana`);
    await shot(bo.page, `chat-${transport}-bo`);

    // bo leaves: ana sees it once.
    await bo.context.close();
    await until(ana.page, "bo to leave", () => document.querySelector("#log").textContent.includes("bo left"), null, 30000);
    assert.deepEqual(await people(ana.page), ["ana"]);
    assert.deepEqual(ana.errors.map(String), []);
  });
}

test("chat: a taken name is refused by the authenticate hook, with a clear message", async (t) => {
  const server = await startServer("chat");
  t.after(() => server.stop());
  const ana = await join(server, "ana", null);
  t.after(() => ana.context.close());
  // Another tab (its own key) wants the same name: WebSocket's refusal is invisible to a
  // page, so hub.js falls back to SSE, whose 403 says why, and stops.
  const other = await openPage(browser, server.url + "?name=ana", { viewport: { width: 1100, height: 720 } });
  t.after(() => other.context.close());
  await until(other.page, "the refusal", () => !document.querySelector("#overlay").hidden && document.querySelector("#name-error").textContent.length > 0);
  assert.equal(await other.page.textContent("#name-error"), "the name \"ana\" is taken: pick another");
  assert.equal(await other.page.evaluate(() => chat.hub.state), "closed");
  await shot(other.page, "chat-name-taken");
  // An invalid name, then a good one.
  await other.page.fill("#name-input", "<script>");
  await other.page.press("#name-input", "Enter");
  await until(other.page, "the second refusal", () => document.querySelector("#name-error").textContent.startsWith("names are"));
  await other.page.fill("#name-input", "ana2");
  await other.page.press("#name-input", "Enter");
  await until(other.page, "connected as ana2", () => chat.hub.state === "connected" && document.querySelector("#people li.me .name") && document.querySelector("#people li.me .name").textContent === "ana2");
  await until(ana.page, "ana to see ana2", () => [...document.querySelectorAll("#people .name")].some((e) => e.textContent === "ana2"));
  assert.deepEqual(other.errors.map(String), []);
});

test("chat: a message written while offline is sent, and acked, when the network is back", async (t) => {
  const server = await startServer("chat");
  t.after(() => server.stop());
  const ana = await join(server, "ana", "ws");
  t.after(() => ana.context.close());
  const bo = await join(server, "bo", "ws");
  t.after(() => bo.context.close());
  await ana.context.setOffline(true);
  await until(ana.page, "ana offline", () => chat.hub.state === "offline");
  assert.match(await ana.page.textContent("#conn"), /Offline/);
  await ana.page.fill("#text", "written offline");
  await ana.page.press("#text", "Enter");
  assert.equal(await ana.page.textContent("#log .msg.mine .state"), "waiting for the connection…");
  assert.equal(await ana.page.evaluate(() => chat.hub.queued), 1, "kept in the bounded queue");
  await shot(ana.page, "chat-offline");
  await ana.context.setOffline(false);
  await until(ana.page, "the ack after the reconnection", () => { const s = document.querySelector("#log .msg.mine .state"); return s && s.textContent.includes("✓ delivered"); });
  await until(bo.page, "bo to get it", () => [...document.querySelectorAll("#log .msg .text")].some((e) => e.textContent === "written offline"));
  assert.equal(await ana.page.evaluate(() => chat.hub.reconnects), 1);
  assert.deepEqual(ana.errors.map(String), []);
});

test("dashboard: live charts over SSE", async (t) => {
  const server = await startServer("dashboard");
  t.after(() => server.stop());
  const p = await openPage(browser, server.url);
  t.after(() => p.context.close());
  await until(p.page, "connected", () => window.dashboard && dashboard.hub.state === "connected");
  assert.equal(await p.page.evaluate(() => dashboard.hub.transport), "sse");
  await until(p.page, "100 points", () => Number(document.querySelector("#count").textContent) >= 100);
  assert.equal(await p.page.textContent("#status"), "live");
  assert.deepEqual(p.errors.map(String), []);
  await shot(p.page, "dashboard");

  // A page opened now starts with the recent points (subscribe's `last`), not an empty chart:
  // its first points are older than the page.
  await until(p.page, "30 points per service on the first page", () => Object.values(dashboard.cards).every((c) => c.points.length >= 30));
  const fresh = await openPage(browser, server.url);
  t.after(() => fresh.context.close());
  const opened = await fresh.page.evaluate(() => Date.now());
  await until(fresh.page, "the history of every service", () => window.dashboard && Object.values(dashboard.cards).every((c) => c.points.length >= 30));
  const oldest = await fresh.page.evaluate(() => Math.max(...Object.values(dashboard.cards).map((c) => c.points[0].ts)));
  assert.ok(oldest < opened - 5000, `the first points are from before the page (${opened - oldest} ms)`);
  // The sparklines span their canvas: something is drawn near its left edge.
  await until(fresh.page, "drawn charts", () => [...document.querySelectorAll("canvas")].every((c) => {
    const g = c.getContext("2d"), h = c.height;
    const column = g.getImageData(Math.round(3 * (window.devicePixelRatio || 1)), 0, 1, h).data;
    for (let i = 3; i < column.length; i += 4) if (column[i] > 0) return true;
    return false;
  }));
  // The header says when, not where: no raw position.
  const header = await fresh.page.textContent("header");
  assert.match(await fresh.page.textContent("#updated"), /\d{1,2}:\d{2}:\d{2}/);
  assert.ok(!/metrics\/|@ \d/.test(header), header);
  await shot(fresh.page, "dashboard-fresh-page");
  assert.deepEqual(fresh.errors.map(String), []);
});
