// The newer protocol bits in hub.js, on fakes: subscribe's `last`, conflation (`conflate`, a
// message's `key`/`delete`, the `conflated` gap as a notice), the gap reasons `ahead`, `epoch`
// while following and unknown ones, events that ask for an answer, and reconnect hints
// (`retry_ms` in a close reason or a `close` frame).
import { test } from "node:test";
import assert from "node:assert/strict";
import { Hub, flush, fakeClock, fakeGlobal, setup } from "./helpers.mjs";

const message = (offset, epoch = "E", extra = {}) => ({ type: "message", topic: "t", epoch, offset, data: { n: offset }, ...extra });
const reply = (id, epoch, offset) => ({ type: "reply", id, data: { topic: "t", epoch, offset } });

test("last: a first subscribe asks for the newest n; they arrive before live ones; a reconnect resumes from what was delivered", async () => {
  const { hub, clock, made } = await setup();
  const got = [], gaps = [];
  const sub = hub.subscribe("t", (d, m) => got.push(m.offset), { last: 3 });
  sub.on("gap", (g) => gaps.push(g));
  made[0].open();
  assert.deepEqual(made[0].sent[0], { type: "subscribe", topic: "t", last: 3, id: 1 });
  made[0].frame(reply(1, "E", 10));
  assert.equal(sub.state, "subscribed");
  for (const o of [8, 9, 10, 11]) made[0].frame(message(o));
  assert.deepEqual(got, [8, 9, 10, 11], "the newest held are not taken for duplicates");
  assert.deepEqual(gaps, []);
  made[0].lost();
  await clock.advance(clock.pending()[0]);
  made[1].open();
  assert.deepEqual(made[1].sent[0], { type: "subscribe", topic: "t", since: { epoch: "E", offset: 11 }, id: 2 }, "since, not last, once something was delivered");
});

test("last: a reconnect before any message asks for the newest again; a first message past the reply's offset + 1 is a hole", async () => {
  const { hub, clock, made } = await setup();
  const got = [], gaps = [];
  const sub = hub.subscribe("t", (d, m) => got.push(m.offset), { last: 2 });
  sub.on("gap", (g) => gaps.push([g.from, g.to, g.reason]));
  made[0].open();
  made[0].frame(reply(1, "E", 0));
  made[0].lost();
  await clock.advance(clock.pending()[0]);
  made[1].open();
  assert.deepEqual(made[1].sent[0], { type: "subscribe", topic: "t", last: 2, id: 2 });
  made[1].frame(reply(2, "E", 5));
  made[1].frame(message(8));
  assert.deepEqual(gaps, [[6, 7, "hole"]]);
  assert.deepEqual(got, [8]);
  // `since` wins over `last`.
  const other = hub.subscribe("u", () => {}, { since: { epoch: "E", offset: 1 }, last: 5 });
  assert.deepEqual(made[1].last(), { type: "subscribe", topic: "u", since: { epoch: "E", offset: 1 }, id: 3 });
  other.unsubscribe();
});

test("conflate: asked for in every subscribe; a conflated gap is a notice, not a loss; key and delete reach the callback", async () => {
  const { hub, clock, made } = await setup();
  const got = [], gaps = [], notices = [], hubNotices = [], infos = [];
  const sub = hub.subscribe("t", (d, m) => got.push([m.offset, m.key, m.delete]), { conflate: true, since: { epoch: "E", offset: 2 } });
  sub.on("gap", (g) => gaps.push(g));
  sub.on("conflated", (c) => notices.push([c.from, c.to]));
  sub.on("subscribed", (i) => infos.push(i));
  hub.on("conflated", (c) => hubNotices.push(c.topic));
  made[0].open();
  assert.deepEqual(made[0].sent[0], { type: "subscribe", topic: "t", since: { epoch: "E", offset: 2 }, conflate: true, id: 1 });
  made[0].frame(reply(1, "E", 9));
  made[0].frame({ type: "gap", topic: "t", epoch: "E", from: 3, to: 8, reason: "conflated" });
  made[0].frame(message(5, "E", { key: "match:1" }));
  made[0].frame(message(7, "E", { key: "match:2", delete: true }));
  made[0].frame(message(9, "E", { key: "match:3" }));
  assert.deepEqual(got, [[5, "match:1", undefined], [7, "match:2", true], [9, "match:3", undefined]]);
  assert.deepEqual(notices, [[3, 8]]);
  assert.deepEqual(hubNotices, ["t"]);
  assert.deepEqual(gaps, [], "superseded offsets are no hole");
  assert.equal(infos[0].recovered, true, "a conflated resume recovered everything that matters");
  // Live: a conflated window, then a real hole after it is still found.
  made[0].frame({ type: "gap", topic: "t", epoch: "E", from: 10, to: 14, reason: "conflated" });
  made[0].frame(message(12, "E", { key: "k" }));
  made[0].frame(message(17));
  assert.deepEqual(gaps.map((g) => [g.from, g.to, g.reason]), [[15, 16, "hole"]]);
  // `conflate: false` is said too; no option says nothing.
  hub.subscribe("u", () => {}, { conflate: false });
  assert.equal(made[0].last().conflate, false);
  hub.subscribe("v", () => {});
  assert.equal("conflate" in made[0].last(), false);
  made[0].lost();
  await clock.advance(clock.pending()[0]);
  made[1].open();
  const again = made[1].sent.find((f) => f.topic === "t");
  assert.deepEqual([again.since, again.conflate], [{ epoch: "E", offset: 17 }, true]);
});

test("publish with a key, and a deletion", async () => {
  const { hub, made } = await setup();
  made[0].open();
  hub.publish("t", { v: 1 }, { key: "match:7" });
  assert.deepEqual(made[0].last(), { type: "publish", topic: "t", data: { v: 1 }, key: "match:7", id: 1 });
  hub.publish("t", null, { key: "match:7", delete: true });
  assert.deepEqual(made[0].last(), { type: "publish", topic: "t", data: null, key: "match:7", delete: true, id: 2 });
});

test("ahead: the position goes back to from - 1, the messages that take those offsets are delivered", async () => {
  const { hub, made } = await setup();
  const got = [], gaps = [], infos = [];
  const sub = hub.subscribe("t", (d, m) => got.push(m.offset), { since: { epoch: "E", offset: 10 } });
  sub.on("gap", (g) => gaps.push(g));
  sub.on("subscribed", (i) => infos.push(i));
  made[0].open();
  made[0].frame(reply(1, "E", 4));
  made[0].frame({ type: "gap", topic: "t", epoch: "E", from: 5, to: 10, reason: "ahead" });
  assert.deepEqual(sub.position, { epoch: "E", offset: 4 });
  made[0].frame(message(5));
  made[0].frame(message(6));
  assert.deepEqual(got, [5, 6], "not taken for duplicates of what was held");
  assert.equal(gaps.length, 1);
  assert.deepEqual([gaps[0].from, gaps[0].to, gaps[0].reason, gaps[0].recovered], [5, 10, "ahead", false]);
  assert.deepEqual(gaps[0].previous, { epoch: "E", offset: 10 });
  assert.equal(infos.length, 1);
  assert.equal(infos[0].recovered, false);
  assert.equal(infos[0].gap.reason, "ahead");
});

test("epoch while following: the new stream from the start of what it holds; a reconnect resumes in the new epoch", async () => {
  const { hub, clock, made } = await setup();
  const got = [], gaps = [];
  const sub = hub.subscribe("t", (d, m) => got.push(`${m.epoch}:${m.offset}`));
  sub.on("gap", (g) => gaps.push([g.epoch, g.from, g.to, g.reason, g.previous]));
  made[0].open();
  made[0].frame(reply(1, "E", 5));
  made[0].frame(message(6));
  made[0].frame({ type: "gap", topic: "t", epoch: "F", from: 0, to: 0, reason: "epoch" });
  assert.deepEqual(sub.position, { epoch: "F", offset: 0 });
  made[0].frame(message(3, "F")); // its history no longer holds 1 and 2: already told by the gap
  made[0].frame(message(4, "F"));
  assert.deepEqual(got, ["E:6", "F:3", "F:4"]);
  assert.deepEqual(gaps, [["F", 0, 0, "epoch", { epoch: "E", offset: 6 }]], "one gap, no hole on top");
  // Recreated again, and the connection drops before any message of the newest epoch.
  made[0].frame({ type: "gap", topic: "t", epoch: "G", from: 0, to: 0, reason: "epoch" });
  made[0].lost();
  await clock.advance(clock.pending()[0]);
  made[1].open();
  assert.deepEqual(made[1].sent[0].since, { epoch: "G", offset: 0 }, "everything of the new epoch is asked for");
  made[1].frame(reply(2, "G", 2));
  made[1].frame(message(1, "G"));
  made[1].frame(message(2, "G"));
  assert.deepEqual(got.slice(3), ["G:1", "G:2"]);
});

test("epoch answering a since of another epoch: live messages after the reply's offset", async () => {
  const { hub, made } = await setup();
  const got = [];
  const sub = hub.subscribe("t", (d, m) => got.push(`${m.epoch}:${m.offset}`), { since: { epoch: "E", offset: 7 } });
  made[0].open();
  made[0].frame(reply(1, "F", 3));
  made[0].frame({ type: "gap", topic: "t", epoch: "F", from: 0, to: 0, reason: "epoch" });
  assert.deepEqual(sub.position, { epoch: "F", offset: 3 });
  made[0].frame(message(3, "F"));
  made[0].frame(message(4, "F"));
  assert.deepEqual(got, ["F:4"]);
});

test("an unknown gap reason is loss: reported as a gap, the position moves past it", async () => {
  const { hub, made } = await setup();
  const gaps = [], infos = [];
  const sub = hub.subscribe("t", () => {});
  sub.on("gap", (g) => gaps.push([g.from, g.to, g.reason, g.recovered]));
  made[0].open();
  made[0].frame(reply(1, "E", 2));
  made[0].frame({ type: "gap", topic: "t", epoch: "E", from: 3, to: 6, reason: "meteor" });
  assert.deepEqual(gaps, [[3, 6, "meteor", false]]);
  assert.deepEqual(sub.position, { epoch: "E", offset: 6 });
  // During a resume too: recovered false.
  const sub2 = hub.subscribe("u", () => {}, { since: { epoch: "E", offset: 1 } });
  sub2.on("subscribed", (i) => infos.push(i));
  made[0].frame({ type: "reply", id: 2, data: { topic: "u", epoch: "E", offset: 9 } });
  made[0].frame({ type: "gap", topic: "u", epoch: "E", from: 2, to: 9, reason: "solar_flare" });
  assert.equal(infos[0].recovered, false);
  assert.equal(infos[0].gap.reason, "solar_flare");
});

test("events that ask for an answer: a returned value, a promise, reply(); once only; unknown_ack; no listener", async () => {
  const { hub, made, errors } = await setup();
  made[0].open();
  hub.onEvent("confirm", (d) => ({ accepted: d.order === 7 }));
  made[0].frame({ type: "event", event: "confirm", data: { order: 7 }, ack: 12 });
  assert.deepEqual(made[0].last(), { type: "ack", ack: 12, data: { accepted: true }, id: 1 });
  made[0].frame({ type: "reply", id: 1, data: null });

  let later;
  hub.onEvent("slow", () => new Promise((r) => { later = r; }));
  made[0].frame({ type: "event", event: "slow", data: null, ack: 13 });
  assert.equal(made[0].sent.length, 1, "not before the promise settles");
  later("done");
  await flush();
  assert.deepEqual(made[0].last(), { type: "ack", ack: 13, data: "done", id: 2 });

  let replyFn;
  hub.onEvent("manual", (d, r) => { replyFn = r; });
  const calls = [];
  const off = hub.on("event", (name, d, r) => calls.push([name, typeof r]));
  made[0].frame({ type: "event", event: "manual", data: 1, ack: 14 });
  assert.deepEqual(calls.at(-1), ["manual", "function"]);
  const receipt = replyFn("ok");
  assert.deepEqual(made[0].last(), { type: "ack", ack: 14, data: "ok", id: 3 });
  await assert.rejects(replyFn("again"), (e) => e.code === "already_answered");
  made[0].frame({ type: "error", id: 3, code: "unknown_ack", message: "nothing waits for ack 14" });
  await assert.rejects(receipt, (e) => e.code === "unknown_ack");
  assert.equal(errors.at(-1).code, "unknown_ack", "reported too");

  // An event without ack gets no reply function.
  made[0].frame({ type: "event", event: "manual", data: 2 });
  assert.deepEqual(calls.at(-1), ["manual", "object"]);
  // Nobody listens: reported, nothing sent.
  off();
  const before = made[0].sent.length;
  made[0].frame({ type: "event", event: "nobody", data: 1, ack: 15 });
  assert.equal(errors.at(-1).code, "no_handler");
  assert.equal(made[0].sent.length, before);
  // A bad ack number is a bad frame.
  made[0].frame({ type: "event", event: "confirm", data: 1, ack: "x" });
  assert.equal(errors.at(-1).code, "bad_frame");
});

test("an answer after the connection that asked is gone is not sent", async () => {
  const { hub, clock, made } = await setup();
  made[0].open();
  let replyFn;
  hub.onEvent("q", (d, r) => { replyFn = r; });
  made[0].frame({ type: "event", event: "q", data: null, ack: 1 });
  made[0].lost();
  await clock.advance(clock.pending()[0]);
  made[1].open();
  await assert.rejects(replyFn(1), (e) => e.code === "disconnected");
  assert.equal(made[1].sent.length, 0);
});

test("reconnect hints: the reason before the first ';', retry_ms as an integer", () => {
  const p = Hub._internal.parseReason;
  assert.deepEqual([p("shutdown;retry_ms=2350").reason, p("shutdown;retry_ms=2350").retryMs], ["shutdown", 2350]);
  assert.deepEqual([p("shutdown").reason, p("shutdown").retryMs], ["shutdown", null]);
  assert.deepEqual([p("shutdown;x=1;retry_ms=5").reason, p("shutdown;x=1;retry_ms=5").retryMs, p("shutdown;x=1;retry_ms=5").params.x], ["shutdown", 5, "1"]);
  for (const bad of ["shutdown;retry_ms=", "shutdown;retry_ms=-1", "shutdown;retry_ms=1.5", "shutdown;retry_ms=abc", "shutdown;retry_ms"]) {
    assert.equal(p(bad).retryMs, null, bad);
    assert.equal(p(bad).reason, "shutdown", bad);
  }
  assert.equal(p("").reason, "");
  assert.equal(p(undefined).reason, "");
  const c = Hub._internal.closeFrameEvent;
  assert.deepEqual(c({ type: "close", code: 1001, reason: "shutdown", retry_ms: 2350 }), { opened: true, code: 1001, reason: "shutdown", retryMs: 2350 });
  assert.deepEqual(c({ type: "close", code: 1001, reason: "shutdown;retry_ms=10" }), { opened: true, code: 1001, reason: "shutdown", retryMs: 10 });
  assert.deepEqual(c({ type: "close", code: 1001, reason: "shutdown", retry_ms: "soon" }), { opened: true, code: 1001, reason: "shutdown", retryMs: null });
});

test("reconnect hints: the server's retry_ms replaces the jitter, capped at maxDelay; kicked still stops", async () => {
  for (const [reason, retryMs, want] of [["shutdown", 2350, 2350], ["shutdown", 99999, 20000], ["slow_consumer", 10, 10], ["shutdown", 0, 0]]) {
    const { hub, clock, made } = await setup({ clock: fakeClock(() => 0.9) });
    made[0].open();
    made[0].lost(reason, { retryMs });
    assert.deepEqual(clock.pending(), [want], `${reason} ${retryMs}`);
    assert.equal(hub.state, "reconnecting");
    await clock.advance(want);
    assert.equal(made.length, 2, "reconnected after exactly that");
  }
  const { hub, clock, made } = await setup();
  made[0].open();
  made[0].lost("kicked", { retryMs: 100 });
  assert.equal(hub.state, "closed");
  assert.deepEqual(clock.pending(), []);
});

/** A WebSocket double (as in wire.test.mjs). */
function fakeWebSocket() {
  const sockets = [];
  class FakeWS {
    constructor(url, protocol) { this.url = url; this.protocol = protocol; this.sent = []; sockets.push(this); }
    send(d) { this.sent.push(d); }
    close(code, reason) { this.closedWith = [code, reason]; }
    serve(f) { this.onmessage({ data: JSON.stringify(f) }); }
  }
  return { FakeWS, sockets };
}

test("reconnect hints over the real WebSocket transport: a close reason with retry_ms", async () => {
  const { FakeWS, sockets } = fakeWebSocket();
  const clock = fakeClock(() => 0.9);
  const states = [];
  const hub = new Hub({ ws: "/ws", base: "http://h/", global: fakeGlobal({ WebSocket: FakeWS }), clock });
  hub.on("state", (s) => states.push(s));
  await flush();
  sockets[0].serve({ type: "welcome", session: "s", protocol: 1, encoding: "json", heartbeat_ms: 25000, timeout_ms: 60000 });
  sockets[0].onclose({ code: 1001, reason: "shutdown;retry_ms=2350" });
  assert.equal(states.at(-1).reason, "shutdown", "the reason without its parameters");
  assert.equal(states.at(-1).retryIn, 2350);
  await clock.advance(2349);
  assert.equal(sockets.length, 1);
  await clock.advance(1);
  assert.equal(sockets.length, 2);
  hub.close();
});
