// The cluster example (examples/cluster.rs) in headless Chromium: the sports page on node 2 of
// two nodes over Redis, then moved to node 1 (the proxy in front sends it there and drops its
// connection). hub.js resumes by itself on the other node, from the last position the page
// showed: every update once, in order, in one epoch; the page resumes nothing by hand.
// Needs the shared Redis (skipped without it, unless HUB_REQUIRE_REDIS=1).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { launch, startServer, openPage, shot, until, checkSequence, redisFor } from "./harness.mjs";

let browser;
before(async () => { browser = await launch(); });
after(async () => { await browser?.close(); });

const stats = async (server) => (await fetch(new URL("/stats", server.admin))).json();

for (const transport of ["ws", "sse", "poll"]) {
  test(`cluster over ${transport}: a page moved from node 2 to node 1 resumes there with hub.js's own resume`, async (t) => {
    const redis = await redisFor(t, "cluster-" + transport);
    if (!redis) return;
    const server = await startServer("cluster", ["--tick-ms", "100", ...redis.args]);
    t.after(async () => { await server.stop(); await redis.clean(); });
    const p = await openPage(browser, server.url + "?transport=" + transport);
    t.after(() => p.context.close());
    const { page } = p;
    await until(page, "the page to be live", () => window.matchday && matchday.sub && matchday.sub.state === "subscribed");
    await page.evaluate(() => { window.subscribed = []; matchday.sub.on("subscribed", (info) => subscribed.push(info)); });
    await until(page, "20 updates through node 2", () => matchday.log.length >= 20);
    const before = await stats(server);
    assert.deepEqual(before.node_sessions, [0, 1], "the page is on node 2 (node 1 publishes the feed)");

    const moved = await server.call("/move?node=1");
    assert.ok(moved.dropped >= 1, JSON.stringify(moved));
    const at = await page.evaluate(() => matchday.log.length);
    await until(page, "the page back, on node 1", () => matchday.hub.state === "connected" && matchday.hub.reconnects >= 1 && subscribed.length >= 1, null, 30000);
    await until(page, "20 more updates through node 1", (n) => matchday.log.length >= n + 20, at, 30000);
    const after = await stats(server);
    assert.equal(after.node_sessions[0], 1, JSON.stringify(after));
    // A long-polling session on node 2 is not told (its connection just went to node 1): it
    // lingers there until its timeout. The other transports' sessions ended with their
    // connection.
    if (transport !== "poll") assert.equal(after.node_sessions[1], 0, JSON.stringify(after));

    const log = await page.evaluate(() => matchday.log.slice());
    const epochs = checkSequence(log, assert); // no duplicate, no hole, in order
    assert.equal(epochs.length, 1, "one epoch on both nodes: positions are the cluster's");
    const infos = await page.evaluate(() => subscribed);
    assert.equal(infos[0].resumed, true, JSON.stringify(infos[0]));
    assert.equal(infos[0].recovered, true, JSON.stringify(infos[0]));
    assert.equal(await page.evaluate(() => matchday.snapshots), 1, "the board was never reloaded");
    assert.equal(await page.evaluate(() => matchday.hub.transport), transport);
    await shot(page, `cluster-${transport}-moved-to-node-1`);
    assert.deepEqual(p.errors.map(String), []);
  });
}
