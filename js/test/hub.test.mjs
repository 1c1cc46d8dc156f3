// hub.js's logic on fakes: resume and dedupe, gaps, malformed frames, the offline queue,
// timeouts, close reasons, fallback, heartbeats, the browser's online/offline events.
import { test } from "node:test";
import assert from "node:assert/strict";
import { Hub, flush, fakeClock, fakeGlobal, setup } from "./helpers.mjs";

const message = (offset, epoch = "E", topic = "t") => ({ type: "message", topic, epoch, offset, data: { n: offset } });

test("backoff: full jitter between the floor and a cap that doubles up to the ceiling", () => {
  for (let attempt = 0; attempt < 40; attempt++) {
    const cap = Math.min(20000, 500 * 2 ** (attempt + 1));
    assert.equal(Hub.backoff(attempt, 500, 20000, () => 0), 500);
    assert.equal(Hub.backoff(attempt, 500, 20000, () => 0.999999), 500 + 0.999999 * (cap - 500));
    for (let i = 0; i < 50; i++) {
      const d = Hub.backoff(attempt, 500, 20000);
      assert.ok(d >= 500 && d <= cap && d <= 20000, `attempt ${attempt}: ${d}`);
    }
  }
  assert.equal(Hub.backoff(1000, 500, 20000, () => 1), 20000, "never past the ceiling");
});

test("subscribe: every message once and in order, across a reconnection that resumes from the last position", async () => {
  const { hub, clock, made } = await setup();
  const got = [], infos = [];
  const sub = hub.subscribe("t", (data, m) => got.push([m.offset, data.n, m.recovered]));
  sub.on("subscribed", (i) => infos.push(i));
  const t1 = made[0];
  assert.equal(t1.name, "ws");
  assert.equal(hub.state, "connecting");
  t1.open("s1");
  assert.equal(hub.state, "connected");
  assert.deepEqual(t1.sent, [{ type: "subscribe", topic: "t", id: 1 }]);
  t1.frame({ type: "reply", id: 1, data: { topic: "t", epoch: "E", offset: 4 } });
  assert.deepEqual(infos[0], { topic: "t", resumed: false, recovered: true, missed: 0, gap: null, gaps: [], position: { epoch: "E", offset: 4 } });
  for (const o of [5, 6, 6, 7]) t1.frame(message(o));
  assert.deepEqual(got.map((g) => g[0]), [5, 6, 7]);
  assert.equal(sub.duplicates, 1);

  t1.lost("abnormal");
  assert.equal(hub.state, "reconnecting");
  const [delay] = clock.pending();
  assert.ok(delay >= 500 && delay <= 1000, `first retry after ${delay} ms`);
  await clock.advance(delay);
  const t2 = made[1];
  assert.equal(t2.name, "ws");
  t2.open("s2");
  assert.deepEqual(t2.sent[0], { type: "subscribe", topic: "t", since: { epoch: "E", offset: 7 }, id: 2 });
  t2.frame({ type: "reply", id: 2, data: { topic: "t", epoch: "E", offset: 10 } });
  for (const o of [6, 7, 8, 9, 10, 11]) t2.frame(message(o));
  assert.deepEqual(got.map((g) => g[0]), [5, 6, 7, 8, 9, 10, 11]);
  assert.deepEqual(got.filter((g) => g[2]).map((g) => g[0]), [8, 9, 10], "the recovered ones say so");
  assert.equal(infos[1].resumed, true);
  assert.equal(infos[1].recovered, true);
  assert.equal(infos[1].missed, 3);
  assert.equal(hub.reconnects, 1);
  assert.equal(sub.state, "subscribed");
});

test("resume into another epoch: recovered false with the gap, then the new stream", async () => {
  const { hub, made } = await setup();
  const got = [], infos = [], gaps = [];
  const sub = hub.subscribe("t", (d, m) => got.push(`${m.epoch}:${m.offset}`), { since: { epoch: "E", offset: 7 } });
  sub.on("subscribed", (i) => infos.push(i));
  sub.on("gap", (g) => gaps.push(g));
  made[0].open();
  assert.deepEqual(made[0].sent[0].since, { epoch: "E", offset: 7 });
  made[0].frame({ type: "reply", id: 1, data: { topic: "t", epoch: "F", offset: 3 } });
  assert.equal(infos.length, 0, "not done before the server's gap");
  made[0].frame({ type: "gap", topic: "t", epoch: "F", from: 0, to: 0, reason: "epoch" });
  made[0].frame(message(3, "F")); // before the position: already reflected, dropped
  made[0].frame(message(4, "F"));
  assert.deepEqual(got, ["F:4"]);
  assert.equal(infos[0].recovered, false);
  assert.equal(infos[0].gap.reason, "epoch");
  assert.deepEqual(infos[0].gap.previous, { epoch: "E", offset: 7 });
  assert.equal(gaps.length, 1);
  assert.deepEqual(sub.position, { epoch: "F", offset: 4 });
});

test("resume past the history: the lost range, then the rest", async () => {
  const { hub, made } = await setup();
  const got = [], infos = [];
  const sub = hub.subscribe("t", (d, m) => got.push(m.offset), { since: { epoch: "E", offset: 7 } });
  sub.on("subscribed", (i) => infos.push(i));
  made[0].open();
  made[0].frame({ type: "reply", id: 1, data: { topic: "t", epoch: "E", offset: 20 } });
  made[0].frame({ type: "gap", topic: "t", epoch: "E", from: 8, to: 14, reason: "history" });
  for (let o = 15; o <= 21; o++) made[0].frame(message(o));
  assert.deepEqual(got, [15, 16, 17, 18, 19, 20, 21]);
  assert.equal(infos.length, 1);
  assert.equal(infos[0].recovered, false);
  assert.deepEqual([infos[0].gap.from, infos[0].gap.to, infos[0].gap.reason], [8, 14, "history"]);
  assert.equal(infos[0].missed, 6);
});

test("a hole the server did not announce is reported as a gap; a lagged gap while live too", async () => {
  const { hub, made } = await setup();
  const gaps = [];
  const sub = hub.subscribe("t", () => {});
  sub.on("gap", (g) => gaps.push(g));
  made[0].open();
  made[0].frame({ type: "reply", id: 1, data: { topic: "t", epoch: "E", offset: 0 } });
  made[0].frame(message(1));
  made[0].frame(message(4));
  made[0].frame({ type: "gap", topic: "t", epoch: "E", from: 5, to: 9, reason: "lagged" });
  made[0].frame(message(10));
  assert.deepEqual(gaps.map((g) => [g.from, g.to, g.reason, g.recovered]), [[2, 3, "hole", false], [5, 9, "lagged", false]]);
  assert.deepEqual(sub.position, { epoch: "E", offset: 10 });
});

test("malformed and unknown frames: an error event each, never a throw, the connection stays", async () => {
  const { hub, made, errors } = await setup();
  const got = [];
  hub.subscribe("t", (d, m) => got.push(m.offset));
  const t = made[0];
  t.open();
  t.frame({ type: "reply", id: 1, data: { topic: "t", epoch: "E", offset: 0 } });
  const junk = [null, 42, "text", [1, 2], {}, { type: 7 }, { type: "message" }, { type: "message", topic: "t", epoch: "E", offset: -1 },
    { type: "message", topic: "t", epoch: "E", offset: 1.5 }, { type: "reply", id: "x" }, { type: "error" }, { type: "gap", topic: "t" },
    { type: "event" }, { type: "join", topic: "t" }, { type: "dropped", count: "many" }, { type: "brand-new", x: 1 }];
  for (const f of junk) t.frame(f);
  assert.equal(errors.length, junk.length);
  assert.deepEqual(errors.map((e) => e.code), [...junk.slice(0, -1).map(() => "bad_frame"), "unknown_frame"]);
  assert.ok(errors.every((e) => e instanceof Error && typeof e.message === "string"));
  t.ctx.cb.bad(Hub.HubError("bad_frame", "undecodable"));
  assert.equal(errors.length, junk.length + 1);
  assert.equal(t.closed, false, "the connection stays");
  t.frame(message(1));
  assert.deepEqual(got, [1]);
  assert.equal(hub.state, "connected");
});

test("a callback that throws is reported; the others and later messages still run", async () => {
  const { hub, made, errors } = await setup();
  const got = [];
  hub.subscribe("t", (d, m) => { got.push(m.offset); if (m.offset === 1) throw new Error("boom"); });
  hub.on("state", () => { throw new Error("listener boom"); });
  const seen = [];
  hub.on("state", (s) => seen.push(s.state));
  made[0].open();
  made[0].frame({ type: "reply", id: 1, data: { topic: "t", epoch: "E", offset: 0 } });
  made[0].frame(message(1));
  made[0].frame(message(2));
  assert.deepEqual(got, [1, 2]);
  assert.deepEqual(seen, ["connected"]);
  assert.deepEqual(errors.map((e) => e.code), ["callback_threw", "callback_threw"]);
});

test("the offline queue is bounded; what waited is sent after the subscriptions, in order", async () => {
  const { hub, made } = await setup({ maxQueue: 2 });
  const p1 = hub.publish("t", { a: 1 });
  const p2 = hub.emit("hello", { b: 2 });
  await assert.rejects(hub.publish("t", 3), (e) => e.code === "queue_full");
  assert.equal(hub.queued, 2);
  hub.subscribe("t", () => {});
  made[0].open();
  assert.deepEqual(made[0].sent.map((f) => f.type), ["subscribe", "publish", "event"]);
  const [, pub, ev] = made[0].sent;
  made[0].frame({ type: "reply", id: pub.id, data: { epoch: "E", offset: 9 } });
  made[0].frame({ type: "error", id: ev.id, code: "handler_error", message: "no" });
  assert.deepEqual(await p1, { epoch: "E", offset: 9 });
  await assert.rejects(p2, (e) => e.code === "handler_error" && e.message === "no");
  assert.equal(hub.queued, 0);
});

test("emit: the timeout counts queued time; a request in flight when the connection drops is rejected", async () => {
  const { hub, clock, made } = await setup();
  const late = assert.rejects(hub.emit("x", 1, { timeout: 100 }), (e) => e.code === "timeout");
  await clock.advance(100);
  await late;
  assert.equal(hub.queued, 0);
  made[0].open();
  assert.equal(made[0].sent.length, 0, "a timed-out request is not sent");
  const inflight = hub.emit("y", 2);
  assert.equal(made[0].last().event, "y");
  made[0].lost();
  await assert.rejects(inflight, (e) => e.code === "disconnected");
});

test("close reasons: kicked stops; shutdown reconnects after a random spread; slow_consumer soon", async () => {
  {
    const { hub, clock, made, errors } = await setup();
    made[0].open();
    const pending = hub.emit("x");
    made[0].lost("kicked");
    assert.equal(hub.state, "closed");
    assert.deepEqual(clock.pending(), [], "no reconnection planned");
    assert.equal(errors.at(-1).code, "kicked");
    await assert.rejects(pending, (e) => e.code === "kicked");
    await assert.rejects(hub.publish("t", 1), (e) => e.code === "closed");
  }
  for (const [reason, lo, hi] of [["shutdown", 500, 5500], ["slow_consumer", 500, 1000], ["heartbeat_timeout", 500, 1000]]) {
    for (const r of [0, 0.999]) {
      const { hub, clock, made } = await setup({ clock: fakeClock(() => r) });
      made[0].open();
      made[0].lost(reason);
      const [d] = clock.pending();
      assert.ok(d >= lo && d <= hi, `${reason}: ${d}`);
      assert.equal(hub.state, "reconnecting");
    }
  }
});

test("an authentication refusal stops with its error; other failures fall back WS -> SSE -> poll, then wait", async () => {
  {
    const { hub, clock, made } = await setup();
    made[0].fail();
    assert.equal(made[1].name, "sse");
    made[1].fail({ auth: Hub.HubError("forbidden", "the name is taken") });
    assert.equal(hub.state, "closed");
    assert.deepEqual(clock.pending(), []);
  }
  const global = fakeGlobal();
  const { hub, clock, made } = await setup({ global });
  made[0].fail();
  made[1].fail();
  assert.deepEqual(made.map((t) => t.name), ["ws", "sse", "poll"]);
  made[2].fail();
  assert.equal(made.length, 3);
  assert.equal(hub.state, "connecting");
  await clock.advance(clock.pending()[0]);
  assert.equal(made[3].name, "ws", "a new round starts from the top");
  made[3].fail();
  made[4].open();
  assert.equal(hub.transport, "sse");
  // Lost: the next attempt goes straight to what worked.
  made[4].lost();
  await clock.advance(clock.pending()[0]);
  assert.equal(made[5].name, "sse");
  // And a new page (same tab) starts with it.
  const again = await setup({ global });
  assert.equal(again.made[0].name, "sse");
});

test("a forced transport is the only one tried", async () => {
  const { hub, clock, made } = await setup({ transport: "poll" });
  assert.equal(made[0].name, "poll");
  made[0].fail();
  assert.equal(made.length, 1);
  await clock.advance(clock.pending()[0]);
  assert.equal(made[1].name, "poll");
  hub.setTransport("sse");
  assert.equal(made[2].name, "sse");
  assert.equal(made[1].closed, true);
});

test("heartbeats: a ping after one interval of silence, a reconnection after two", async () => {
  const { hub, clock, made, errors } = await setup();
  made[0].open("s", { livenessMs: 1000, ping: true });
  await clock.advance(999);
  assert.equal(made[0].sent.length, 0);
  made[0].frame({ type: "pong" }); // heard: the silence starts again
  await clock.advance(1200);
  assert.deepEqual(made[0].sent.map((f) => f.type), ["ping"]);
  assert.equal(hub.state, "connected");
  await clock.advance(2000);
  assert.equal(made[0].closed, true, "given up after 2 intervals + 1 s of silence");
  assert.equal(hub.state, "reconnecting");
  assert.equal(errors.at(-1).code, "heartbeat_missed");
});

test("the browser going offline closes the connection and holds requests; online reconnects and sends them", async () => {
  const global = fakeGlobal();
  const { hub, made } = await setup({ global });
  made[0].open();
  global.dispatch("offline");
  assert.equal(hub.state, "offline");
  assert.equal(made[0].closed, true);
  const p = hub.publish("t", 1);
  assert.equal(hub.queued, 1);
  global.dispatch("online");
  assert.equal(made.length, 2);
  made[1].open();
  const f = made[1].last();
  assert.equal(f.type, "publish");
  made[1].frame({ type: "reply", id: f.id, data: { epoch: "E", offset: 1 } });
  assert.deepEqual(await p, { epoch: "E", offset: 1 });
  hub.close();
  assert.equal(global.listeners("online"), 0, "close removes the listeners");
});

test("unsubscribe tells the server, and the topic is not resumed on the next connection", async () => {
  const { hub, clock, made } = await setup();
  const sub = hub.subscribe("t", () => {});
  hub.subscribe("u", () => {});
  made[0].open();
  sub.unsubscribe();
  assert.deepEqual(made[0].last().type, "unsubscribe");
  assert.throws(() => hub.subscribe("u", () => {}), /already subscribed/);
  made[0].lost();
  await clock.advance(clock.pending()[0]);
  made[1].open();
  assert.deepEqual(made[1].sent.map((f) => f.topic), ["u"]);
});

test("a refused subscription fails with the server's error", async () => {
  const { hub, made, errors } = await setup();
  const sub = hub.subscribe("secret", () => {});
  made[0].open();
  made[0].frame({ type: "error", id: 1, code: "forbidden", message: "no" });
  await assert.rejects(sub.ready, (e) => e.code === "forbidden" && e.topic === "secret");
  assert.equal(sub.state, "failed");
  assert.equal(errors.at(-1).code, "forbidden");
  hub.subscribe("secret", () => {}); // may be tried again
});

test("presence and events", async () => {
  const { hub, made } = await setup();
  const joins = [], evs = [], named = [];
  hub.on("join", (j) => joins.push(j));
  hub.on("event", (n, d) => evs.push([n, d]));
  hub.onEvent("ping-me", (d) => named.push(d));
  made[0].open();
  const who = hub.presence({ room: "r" });
  assert.deepEqual(made[0].last(), { type: "presence", room: "r", id: 1 });
  made[0].frame({ type: "reply", id: 1, data: { members: [{ session: "a", user: "u", meta: null }] } });
  assert.deepEqual(await who, [{ session: "a", user: "u", meta: null }]);
  made[0].frame({ type: "join", room: "r", member: { session: "b", user: "v", meta: null } });
  made[0].frame({ type: "event", event: "ping-me", data: 5 });
  assert.deepEqual(joins, [{ room: "r", member: { session: "b", user: "v", meta: null } }]);
  assert.deepEqual(evs, [["ping-me", 5]]);
  assert.deepEqual(named, [5]);
});

test("presence at scale: every page is followed, counts, per-user events asked for", async () => {
  const { hub, made } = await setup();
  made[0].open();
  // presence() follows the cursor to the end.
  const who = hub.presence("lobby");
  assert.deepEqual(made[0].last(), { type: "presence", topic: "lobby", id: 1 });
  made[0].frame({ type: "reply", id: 1, data: { members: [{ session: "a", user: "u", meta: null }], cursor: "a" } });
  await flush();
  assert.deepEqual(made[0].last(), { type: "presence", topic: "lobby", cursor: "a", id: 2 });
  made[0].frame({ type: "reply", id: 2, data: { members: [{ session: "b", user: "v", meta: null }], cursor: null } });
  assert.deepEqual((await who).map((m) => m.session), ["a", "b"]);
  // One page, by hand.
  const page = hub.presencePage({ room: "r" }, { limit: 10 });
  assert.deepEqual(made[0].last(), { type: "presence", room: "r", limit: 10, id: 3 });
  made[0].frame({ type: "reply", id: 3, data: { members: [], cursor: null } });
  assert.deepEqual(await page, { members: [], cursor: null });
  // Counts without the list.
  const n = hub.presenceCount("lobby");
  assert.deepEqual(made[0].last(), { type: "presence_count", topic: "lobby", id: 4 });
  made[0].frame({ type: "reply", id: 4, data: { count: 7, users: 5 } });
  assert.deepEqual(await n, { count: 7, users: 5 });
  // Per-user presence events are asked for in the subscribe.
  hub.subscribe("lobby", () => {}, { presence: "users" });
  assert.equal(made[0].last().presence, "users");
  hub.subscribe("other", () => {}, { presence: true });
  assert.equal(made[0].last().presence, true);
});
